"""Tests of the training-side join (nano_banana_aug.training) and its example script."""

from __future__ import annotations

import csv
import importlib.util
import logging
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from nano_banana_aug.errors import ConfigError, UserError
from nano_banana_aug.training import (
    MANIFEST_COLUMNS,
    AigcConfig,
    ManifestError,
    ManifestNotFoundError,
    add_aigc_samples,
    image_ids_of,
    join_aigc,
    load_train_config,
    normalise_image_path,
)

REPO = Path(__file__).resolve().parents[1]
TARGETS = ["Dry_Green_g", "Dry_Dead_g", "Dry_Clover_g", "GDM_g", "Dry_Total_g"]
AREA = 0.7 * 0.3
SUBDIR = "nano_banana_pro/train"
ON = {"enabled": True, "subdir": SUBDIR, "manifest": "manifest.csv", "types": None}


# --------------------------------------------------------------------------- fixtures


def long_frame(image_ids) -> pd.DataFrame:
    """train.csv in the data set's long format (one row per image x target)."""
    rows = []
    for n, image_id in enumerate(image_ids):
        green, dead, clover = 10.0 + n, 5.0 + n, 1.0 + n
        values = [green, dead, clover, green + clover, green + dead + clover]
        for target_name, target in zip(TARGETS, values, strict=True):
            rows.append({
                "sample_id": f"{image_id}__{target_name}",
                "image_path": f"train/{image_id}.jpg",
                "Sampling_Date": "2015/9/4",
                "State": "Tas",
                "Species": "Ryegrass_Clover",
                "Pre_GSHH_NDVI": 0.62 + n / 100,
                "Height_Ave_cm": 4.5 + n,
                "target_name": target_name,
                "target": target,
            })  # fmt: skip
    return pd.DataFrame(rows)


def wide_frame(image_ids) -> pd.DataFrame:
    """One row per image, a column per target (no sample_id)."""
    long = long_frame(image_ids)
    wide = long.pivot(index="image_path", columns="target_name", values="target").reset_index()
    wide.columns.name = None
    return wide


def put_output(data_root: Path, image_id: str, aug: str, k: int = 0, content: bytes = b"\x89PNG fake") -> str:
    """Write an output file where the workflow would; return its path relative to data_root."""
    rel = f"{SUBDIR}/{image_id}__{aug}__v{k}.png"
    path = data_root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return rel


def mrow(image_id: str, aug: str, k: int = 0, status: str = "success", image_path: str | None = None, **extra) -> dict:
    row = {
        "image_id": image_id, "aug_name": aug, "variant_idx": k,
        "src_image_path": f"train/{image_id}.jpg",
        "image_path": f"{SUBDIR}/{image_id}__{aug}__v{k}.png" if image_path is None else image_path,
        "status": status, "error": "" if status == "success" else "boom", "ts": 1700000000.0,
        "orig_w": 2752, "orig_h": 1536, "aspect_w": 3072, "aspect_h": 1536, "out_w": 2000, "out_h": 1000,
        "pad_area_px": 491520, "area_scale": 1.0,
    }  # fmt: skip
    row.update(extra)
    return row


def write_manifest(data_root: Path, rows: list[dict], columns=None) -> Path:
    """manifest.csv with the 16 contract columns (+ provider, qc_ssim) or the given ones."""
    columns = list(columns or [*MANIFEST_COLUMNS, "provider", "qc_ssim"])
    path = data_root / SUBDIR / "manifest.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore", restval="")
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture
def root(tmp_path) -> Path:
    data_root = tmp_path / "data"
    (data_root / "train").mkdir(parents=True)
    return data_root


def aigc(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["is_aigc"]]


# --------------------------------------------------------------------------- long / wide


def test_long_format_adds_one_copy_of_each_row_per_augmented_image(root):
    train = long_frame(["ID1", "ID2"])
    for image_id, aug, k in [("ID1", "overcast", 0), ("ID1", "overcast", 1), ("ID2", "harsh_sun", 0)]:
        put_output(root, image_id, aug, k)
    write_manifest(root, [mrow("ID1", "overcast", 0), mrow("ID1", "overcast", 1), mrow("ID2", "harsh_sun", 0)])

    out = add_aigc_samples(train, root, ON, AREA)

    assert len(out) == 10 + 3 * 5
    assert list(out.columns[: len(train.columns)]) == list(train.columns)
    assert out.index.equals(pd.RangeIndex(len(out)))
    added = aigc(out)
    assert sorted(added["sample_id"])[:5] == sorted(f"ID1__overcast__v0__{t}" for t in TARGETS)
    row = added[added["sample_id"] == "ID2__harsh_sun__v0__GDM_g"].iloc[0]
    assert row["image_path"] == f"{SUBDIR}/ID2__harsh_sun__v0.png"
    assert row["src_image_path"] == "train/ID2.jpg"
    assert row["aug_name"] == "harsh_sun" and row["variant_idx"] == 0 and bool(row["is_aigc"])
    assert row["target_name"] == "GDM_g"
    # originals: first, unchanged, with lineage defaults
    orig = out[~out["is_aigc"]]
    pd.testing.assert_frame_equal(orig[train.columns].reset_index(drop=True), train)
    assert orig["aug_name"].isna().all() and orig["variant_idx"].isna().all()
    assert (orig["src_image_path"] == orig["image_path"]).all()
    assert out["is_aigc"].dtype == bool and str(out["variant_idx"].dtype) == "Int64"
    assert out["is_aigc"].tolist() == [False] * 10 + [True] * 15


def test_labels_and_other_columns_are_copied_unchanged(root):
    train = long_frame(["ID1", "ID2", "ID3"])
    put_output(root, "ID2", "overcast")
    write_manifest(root, [mrow("ID2", "overcast")])

    out = add_aigc_samples(train, root, ON, AREA)

    copied = aigc(out).drop(columns=["sample_id", "image_path"]).reset_index(drop=True)
    source = train[train["sample_id"].str.startswith("ID2__")].drop(columns=["sample_id", "image_path"])
    pd.testing.assert_frame_equal(copied[source.columns], source.reset_index(drop=True))
    # the input frame is not modified
    assert "is_aigc" not in train.columns and len(train) == 15


def test_wide_format_without_sample_id(root):
    train = wide_frame(["ID1", "ID2"])
    put_output(root, "ID1", "overcast")
    put_output(root, "ID1", "overcast", 1)
    write_manifest(root, [mrow("ID1", "overcast"), mrow("ID1", "overcast", 1)])

    out = add_aigc_samples(train, root, ON, AREA)

    assert len(out) == 2 + 2
    assert out["sample_id"].tolist() == ["ID1", "ID2", "ID1__overcast__v0", "ID1__overcast__v1"]
    added = aigc(out)
    for t in TARGETS:  # wide labels copied unchanged
        assert (added[t] == train.loc[0, t]).all()
    assert added["image_path"].tolist() == [f"{SUBDIR}/ID1__overcast__v0.png", f"{SUBDIR}/ID1__overcast__v1.png"]


def test_wide_format_with_image_id_column_and_own_sample_ids(root):
    train = wide_frame(["ID1", "ID2"]).assign(image_id=["ID1", "ID2"], sample_id=["s-1", "s-2"])
    put_output(root, "ID2", "overcast")
    write_manifest(root, [mrow("ID2", "overcast")])

    out = add_aigc_samples(train, root, ON, AREA)

    assert out["sample_id"].tolist() == ["s-1", "s-2", "ID2__overcast__v0"]
    assert out["image_id"].tolist() == ["ID1", "ID2", "ID2"]  # the group key is kept


def test_wide_frame_with_several_rows_per_image_is_a_clear_error(root):
    train = pd.concat([wide_frame(["ID1"])] * 2, ignore_index=True)
    put_output(root, "ID1", "overcast")
    write_manifest(root, [mrow("ID1", "overcast")])
    with pytest.raises(UserError, match="not unique"):
        add_aigc_samples(train, root, ON, AREA)


# --------------------------------------------------------------------------- filters


def test_only_success_enters_failed_and_rejected_never(root):
    train = long_frame(["ID1"])
    rows = []
    for aug, status in [("a", "success"), ("b", "failed"), ("c", "rejected"), ("d", "pending"), ("e", "")]:
        put_output(root, "ID1", aug)  # the file exists even for the rejected/failed ones
        rows.append(mrow("ID1", aug, status=status))
    write_manifest(root, rows)

    join = join_aigc(train, root, ON, AREA)

    assert set(aigc(join.frame)["aug_name"]) == {"a"}
    assert join.skipped == {"status:(empty)": 1, "status:failed": 1, "status:pending": 1, "status:rejected": 1}
    assert join.added_files == 1 and join.added_rows == 5 and join.per_aug == {"a": 1}


def test_missing_and_empty_files_are_skipped_and_counted(root, caplog):
    train = long_frame(["ID1", "ID2"])
    put_output(root, "ID1", "overcast")
    put_output(root, "ID2", "overcast", content=b"")  # truncated write
    write_manifest(root, [mrow("ID1", "overcast"), mrow("ID1", "harsh_sun"), mrow("ID2", "overcast")])

    with caplog.at_level(logging.WARNING, logger="nano_banana_aug.training"):
        join = join_aigc(train, root, ON, AREA)

    assert aigc(join.frame)["image_path"].unique().tolist() == [f"{SUBDIR}/ID1__overcast__v0.png"]
    assert join.skipped == {"empty_file": 1, "missing_file": 1}
    assert "missing or empty" in caplog.text


@pytest.mark.parametrize(
    ("types", "expected"),
    [(None, {"a", "b", "c"}), ([], {"a", "b", "c"}), ("", {"a", "b", "c"}), (["a", "c"], {"a", "c"}), ("b", {"b"})],
)
def test_types_filter(root, types, expected):
    train = long_frame(["ID1"])
    for aug in "abc":
        put_output(root, "ID1", aug)
    write_manifest(root, [mrow("ID1", aug) for aug in "abc"])

    join = join_aigc(train, root, {**ON, "types": types}, AREA)

    assert set(aigc(join.frame)["aug_name"]) == expected
    assert join.skipped.get("type_filtered", 0) == 3 - len(expected)


def test_unknown_types_warn_but_do_not_fail(root, caplog):
    train = long_frame(["ID1"])
    put_output(root, "ID1", "a")
    write_manifest(root, [mrow("ID1", "a")])
    with caplog.at_level(logging.WARNING, logger="nano_banana_aug.training"):
        out = add_aigc_samples(train, root, {**ON, "types": ["a", "no_such_aug"]}, AREA)
    assert len(aigc(out)) == 5
    assert "no_such_aug" in caplog.text and "never appear" in caplog.text


def test_validation_images_augmentations_never_enter(root):
    full = long_frame(["ID1", "ID2", "ID3", "ID4"])
    rows = []
    for image_id in ["ID1", "ID2", "ID3", "ID4"]:
        put_output(root, image_id, "overcast")
        rows.append(mrow(image_id, "overcast"))
    rows.append(mrow("ID9", "overcast"))  # an image not in train.csv at all
    write_manifest(root, rows)
    val_ids = {"ID2", "ID4"}
    train = full[~full["sample_id"].str.split("__").str[0].isin(val_ids)]

    join = join_aigc(train, root, ON, AREA)

    prefixes = set(aigc(join.frame)["sample_id"].str.split("__").str[0])
    assert prefixes == {"ID1", "ID3"} and not prefixes & val_ids
    assert join.skipped == {"not_in_train": 3}


def test_sample_ids_unique_and_grouped_by_image_prefix(root):
    train = long_frame(["ID1", "ID2", "ID3"])
    rows = []
    for image_id in ["ID1", "ID2", "ID3"]:
        for aug in ["overcast", "harsh_sun"]:
            for k in (0, 1):
                put_output(root, image_id, aug, k)
                rows.append(mrow(image_id, aug, k))
    write_manifest(root, rows)

    out = add_aigc_samples(train, root, ON, AREA)

    assert out["sample_id"].is_unique
    group = out["sample_id"].str.split("__", n=1).str[0]
    # the group of every row (original or augmented) is the image it shows, so
    # GroupKFold(groups=prefix) keeps an image and its augmentations together
    assert (group == out["src_image_path"].str.removeprefix("train/").str.removesuffix(".jpg")).all()
    assert (group == image_ids_of(out)).all()
    assert out.groupby(group).size().to_dict() == {"ID1": 25, "ID2": 25, "ID3": 25}


def test_result_order_does_not_depend_on_manifest_order(root):
    train = long_frame(["ID1", "ID2"])
    rows = []
    for image_id in ["ID1", "ID2"]:
        for aug in ["b", "a"]:
            put_output(root, image_id, aug)
            rows.append(mrow(image_id, aug))
    write_manifest(root, rows)
    first = add_aigc_samples(train, root, ON, AREA)
    write_manifest(root, rows[::-1])
    second = add_aigc_samples(train, root, ON, AREA)
    pd.testing.assert_frame_equal(first, second)
    assert aigc(first)["sample_id"].str.rsplit("__", n=1).str[0].unique().tolist() == [
        "ID1__a__v0", "ID1__b__v0", "ID2__a__v0", "ID2__b__v0",
    ]  # fmt: skip


# --------------------------------------------------------------------------- area


def test_area_scale_sets_sample_area_m2(root):
    train = long_frame(["ID1", "ID2"])
    put_output(root, "ID1", "pad")
    put_output(root, "ID2", "crop")
    write_manifest(root, [mrow("ID1", "pad", area_scale=1.5), mrow("ID2", "crop", area_scale=0.8)])

    out = add_aigc_samples(train, root, ON, AREA)

    assert out.loc[~out["is_aigc"], "sample_area_m2"].eq(AREA).all()
    by_aug = aigc(out).groupby("aug_name")["sample_area_m2"].unique()
    assert by_aug["pad"] == pytest.approx([AREA * 1.5]) and by_aug["crop"] == pytest.approx([AREA * 0.8])
    assert out["sample_area_m2"].dtype == "float64"


def test_old_manifest_without_size_columns_counts_area_scale_as_one(root):
    train = long_frame(["ID1"])
    put_output(root, "ID1", "overcast")
    put_output(root, "ID1", "harsh_sun")
    old_columns = ["image_id", "aug_name", "variant_idx", "src_image_path", "image_path", "status", "error", "ts"]
    write_manifest(root, [mrow("ID1", "overcast"), mrow("ID1", "harsh_sun")], columns=old_columns)

    out = add_aigc_samples(train, root, ON, AREA)

    assert len(aigc(out)) == 10
    assert out["sample_area_m2"].eq(AREA).all()


def test_empty_area_scale_cell_counts_as_one(root):
    train = long_frame(["ID1"])
    put_output(root, "ID1", "overcast")
    write_manifest(root, [mrow("ID1", "overcast", area_scale="")])
    out = add_aigc_samples(train, root, ON, AREA)
    assert aigc(out)["sample_area_m2"].eq(AREA).all()


def test_existing_sample_area_column_is_kept_and_scaled(root):
    train = long_frame(["ID1", "ID2"])
    train["sample_area_m2"] = [0.25] * 5 + [None] * 5
    put_output(root, "ID1", "pad")
    write_manifest(root, [mrow("ID1", "pad", area_scale=2.0)])
    out = add_aigc_samples(train, root, ON, AREA)
    assert out["sample_area_m2"].tolist() == pytest.approx([0.25] * 5 + [AREA] * 5 + [0.5] * 5)


def test_unusable_area_scale_in_a_used_row_is_an_error_with_the_line(root):
    train = long_frame(["ID1"])
    put_output(root, "ID1", "a")
    put_output(root, "ID1", "b")
    path = write_manifest(
        root, [mrow("ID1", "a", status="failed", area_scale="n/a"), mrow("ID1", "b", area_scale="-1")]
    )
    with pytest.raises(ManifestError, match=r"line\(s\) \[3\].*area_scale") as err:
        add_aigc_samples(train, root, ON, AREA)
    assert str(path) in str(err.value)


# --------------------------------------------------------------------------- duplicates


def test_duplicate_triples_use_the_last_row_but_a_failed_retry_keeps_the_earlier_file(root):
    train = long_frame(["ID1"])
    for aug in ["ok_then_failed", "failed_then_ok", "ok_twice", "ok_then_rejected"]:
        put_output(root, "ID1", aug)
    write_manifest(root, [
        mrow("ID1", "ok_then_failed"), mrow("ID1", "failed_then_ok", status="failed"),
        mrow("ID1", "ok_twice", area_scale=1.2), mrow("ID1", "ok_then_rejected"),
        mrow("ID1", "ok_then_failed", status="failed"), mrow("ID1", "failed_then_ok"),
        mrow("ID1", "ok_twice", area_scale=1.5), mrow("ID1", "ok_then_rejected", status="rejected"),
    ])  # fmt: skip

    join = join_aigc(train, root, ON, AREA)

    added = aigc(join.frame)
    # the original tool's --force overwrote the file only with a new image: a failed retry left it
    assert sorted(added["aug_name"].unique()) == ["failed_then_ok", "ok_then_failed", "ok_twice"]
    assert len(added) == 3 * 5  # each file once
    assert added.loc[added["aug_name"] == "ok_twice", "sample_area_m2"].tolist() == pytest.approx([AREA * 1.5] * 5)
    assert join.skipped == {"status:failed": 1, "status:rejected": 1, "superseded": 3}


def test_review_json_beside_the_manifest_decides_also_when_the_last_decision_was_undone(root):
    train = long_frame(["ID1"])
    put_output(root, "ID1", "a")
    write_manifest(
        root, [mrow("ID1", "a", answer_id="v1", review="reject")], [*MANIFEST_COLUMNS, "answer_id", "review"]
    )
    review = root / SUBDIR / "review.json"
    assert join_aigc(train, root, ON, AREA).skipped == {"review:reject": 1}  # no review.json: as the manifest says
    review.write_text('{"version": 1, "decisions": {"ID1__a__v0": {"decision": "reject", "answer_id": "v1"}}}')
    assert join_aigc(train, root, ON, AREA).skipped == {"review:reject": 1}
    review.write_text('{"version": 1, "decisions": {}}')  # the reject undone (the review page's `u`)
    join = join_aigc(train, root, ON, AREA)
    assert join.skipped == {} and join.added_files == 1


def test_variant_idx_written_as_float_is_the_same_triple(root):
    train = long_frame(["ID1"])
    put_output(root, "ID1", "a")
    write_manifest(root, [mrow("ID1", "a", k="0.0"), mrow("ID1", "a", k=0)])
    out = add_aigc_samples(train, root, ON, AREA)
    assert len(aigc(out)) == 5 and aigc(out)["sample_id"].str.contains("__a__v0__").all()


# --------------------------------------------------------------------------- switches and errors


def test_enabled_false_returns_the_same_object_without_reading(tmp_path):
    train = long_frame(["ID1"])
    assert add_aigc_samples(train, tmp_path / "nowhere", {**ON, "enabled": False}, AREA) is train
    assert add_aigc_samples(train, tmp_path / "nowhere", None, AREA) is train
    assert add_aigc_samples(train, tmp_path / "nowhere", AigcConfig(), AREA) is train
    assert join_aigc(train, tmp_path, {"enabled": False}, AREA).summary().startswith("AIGC join disabled")


def test_missing_manifest_while_enabled_is_a_user_error_naming_the_path(root):
    with pytest.raises(ManifestNotFoundError) as err:
        add_aigc_samples(long_frame(["ID1"]), root, ON, AREA)
    assert isinstance(err.value, UserError)
    assert str(root / SUBDIR / "manifest.csv") in str(err.value)
    assert "enabled" in str(err.value)


def test_manifest_without_required_columns_is_an_error(root):
    path = root / SUBDIR / "manifest.csv"
    path.parent.mkdir(parents=True)
    path.write_text("image_id,aug_name,image_path\nID1,a,x.png\n")
    with pytest.raises(ManifestError, match=r"missing column\(s\) \['variant_idx', 'status'\]"):
        add_aigc_samples(long_frame(["ID1"]), root, ON, AREA)
    path.write_text("")
    with pytest.raises(ManifestError, match="empty file"):
        add_aigc_samples(long_frame(["ID1"]), root, ON, AREA)


def test_header_only_manifest_adds_nothing(root):
    write_manifest(root, [])
    train = long_frame(["ID1"])
    out = add_aigc_samples(train, root, ON, AREA)
    assert len(out) == 5 and not out["is_aigc"].any()


def test_calling_twice_is_refused(root):
    put_output(root, "ID1", "a")
    write_manifest(root, [mrow("ID1", "a")])
    once = add_aigc_samples(long_frame(["ID1"]), root, ON, AREA)
    with pytest.raises(UserError, match="already contains AIGC rows"):
        add_aigc_samples(once, root, ON, AREA)


@pytest.mark.parametrize(
    ("cfg", "match"),
    [
        ({"enabled": "true"}, "enabled: expected true or false"),
        ({"enabled": True, "enable": True}, r"unknown key\(s\) \['enable'\]"),
        ({"enabled": True, "types": [1]}, "types: expected null or a list"),
        ({"enabled": True, "subdir": ""}, "subdir: expected a non-empty string"),
        ("yes", "expected a mapping"),
    ],
)
def test_bad_aigc_config_is_a_config_error(root, cfg, match):
    with pytest.raises(ConfigError, match=match):
        add_aigc_samples(long_frame(["ID1"]), root, cfg, AREA)


@pytest.mark.parametrize("area", [0, -0.21, float("nan")])
def test_bad_base_area_is_an_error(root, area):
    with pytest.raises(UserError, match="base_area_m2"):
        add_aigc_samples(long_frame(["ID1"]), root, ON, area)


# --------------------------------------------------------------------------- paths and ids


def test_absolute_image_path_under_data_root_becomes_relative(root):
    put_output(root, "ID1", "a")
    write_manifest(root, [mrow("ID1", "a", image_path=str((root / SUBDIR / "ID1__a__v0.png").resolve()))])
    out = add_aigc_samples(long_frame(["ID1"]), root, ON, AREA)
    assert aigc(out)["image_path"].unique().tolist() == [f"{SUBDIR}/ID1__a__v0.png"]


def test_absolute_image_path_outside_data_root_is_kept_absolute(root, tmp_path):
    elsewhere = tmp_path / "scratch" / "ID1__a__v0.png"
    elsewhere.parent.mkdir()
    elsewhere.write_bytes(b"png")
    write_manifest(root, [mrow("ID1", "a", image_path=str(elsewhere))])
    out = add_aigc_samples(long_frame(["ID1"]), root, ON, AREA)
    paths = aigc(out)["image_path"].unique().tolist()
    assert paths == [str(elsewhere)]
    assert (root / paths[0]).is_file()  # Path(data_root) / image_path still finds it


def test_relative_image_path_is_normalised(root):
    put_output(root, "ID1", "a")
    write_manifest(root, [mrow("ID1", "a", image_path="./nano_banana_pro//train/./ID1__a__v0.png")])
    out = add_aigc_samples(long_frame(["ID1"]), root, ON, AREA)
    assert aigc(out)["image_path"].unique().tolist() == [f"{SUBDIR}/ID1__a__v0.png"]


def test_relative_data_root_works_from_the_working_directory(root, monkeypatch):
    put_output(root, "ID1", "a")
    write_manifest(root, [mrow("ID1", "a", image_path=str(root / SUBDIR / "ID1__a__v0.png"))])
    monkeypatch.chdir(root.parent)
    out = add_aigc_samples(long_frame(["ID1"]), "data", ON, AREA)
    assert aigc(out)["image_path"].unique().tolist() == [f"{SUBDIR}/ID1__a__v0.png"]


def test_normalise_image_path_through_symlinked_root(tmp_path):
    real = tmp_path / "real"
    (real / "x").mkdir(parents=True)
    (tmp_path / "link").symlink_to(real)
    assert normalise_image_path(str(real / "x" / "f.png"), tmp_path / "link") == "x/f.png"
    assert normalise_image_path(str(tmp_path / "realx" / "f.png"), real) == str(tmp_path / "realx" / "f.png")


def test_string_ids_are_not_mangled(root):
    train = wide_frame(["007", "010"]).assign(image_id=["007", "010"])
    put_output(root, "007", "a")
    write_manifest(root, [mrow("007", "a")])
    out = add_aigc_samples(train, root, ON, AREA)
    assert aigc(out)["sample_id"].tolist() == ["007__a__v0"]


def test_image_ids_of_precedence():
    df = pd.DataFrame({
        "image_id": ["A", "B"], "sample_id": ["X__t", "Y__t"], "image_path": ["train/P.jpg", "train/Q.jpg"],
    })  # fmt: skip
    assert image_ids_of(df).tolist() == ["A", "B"]  # 1. image_id column
    assert image_ids_of(df.drop(columns="image_id")).tolist() == ["X", "Y"]  # 2. sample_id prefix
    assert image_ids_of(df.drop(columns=["image_id", "sample_id"])).tolist() == ["P", "Q"]  # 3. path stem
    mixed = pd.DataFrame({"sample_id": ["X__t", "row7"], "image_path": ["train/P.jpg", "train/Q.jpg"]})
    assert image_ids_of(mixed).tolist() == ["X", "Q"]  # a sample_id without "__" falls through
    partial = df.assign(image_id=["A", None])
    assert image_ids_of(partial).tolist() == ["A", "Y"]  # so does a missing image_id
    with pytest.raises(UserError, match="cannot tell the image"):
        image_ids_of(pd.DataFrame({"target": [1.0]}))


# --------------------------------------------------------------------------- config and example


def test_repo_train_yaml_has_the_seed_block():
    data_root, train_csv, aigc_cfg, base_area_m2 = load_train_config(REPO / "configs" / "train.yaml")
    assert data_root == Path("data") and train_csv == Path("data/train.csv")
    assert aigc_cfg == AigcConfig(enabled=False, subdir="nano_banana_pro/train", manifest="manifest.csv", types=None)
    assert base_area_m2 == pytest.approx(0.21)


def test_load_train_config_validates(tmp_path):
    cfg = tmp_path / "train.yaml"
    cfg.write_text(
        "data:\n  root: /d\n  train_csv: t.csv\n  quadrat: {width_m: 1, length_m: 0.5}\n"
        "  aigc_aug: {enabled: true, types: [overcast]}\n"
    )
    loaded = load_train_config(cfg)
    assert loaded.train_csv == Path("/d/t.csv") and loaded.base_area_m2 == 0.5
    assert loaded.aigc_cfg.enabled and loaded.aigc_cfg.types == ("overcast",)
    assert loaded.aigc_cfg.manifest_path(loaded.data_root) == Path("/d/nano_banana_pro/train/manifest.csv")
    cfg.write_text("data:\n  root: d\n  quadrat: {width_m: 0.7}\n")
    with pytest.raises(ConfigError, match="length_m"):
        load_train_config(cfg)
    # the block the original tool's README documents (no quadrat): the CSIRO frame
    cfg.write_text("data:\n  root: data\n  aigc_aug:\n    enabled: true\n    subdir: nano_banana_pro/train\n")
    assert load_train_config(cfg).base_area_m2 == pytest.approx(0.21)
    with pytest.raises(ConfigError, match="not found"):
        load_train_config(tmp_path / "missing.yaml")


def test_example_script_on_a_fixture(root, tmp_path):
    ids = [f"ID{n:03d}" for n in range(10)]
    long_frame(ids).to_csv(root / "train.csv", index=False)
    out_dir = tmp_path / "gen"  # a manifest directory outside the data root
    rows = []
    for image_id in ids:
        for aug in ["overcast", "harsh_sun"]:
            path = out_dir / f"{image_id}__{aug}__v0.png"
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(b"png")
            rows.append(mrow(image_id, aug, image_path=str(path)))
    rows.append(mrow("ID000", "jpeg_blur", status="rejected"))
    with (out_dir / "manifest.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=MANIFEST_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)

    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "example_training_join.py"),
         "--data-root", str(root), "--manifest-dir", str(out_dir), "--val-fraction", "0.3", "--seed", "1"],
        capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONWARNINGS": "error"},
    )  # fmt: skip

    assert proc.returncode == 0, proc.stderr
    assert "train rows: 35 before, 105 after (+70 rows from 14 augmented images)" in proc.stdout
    assert "harsh_sun: 7 augmented images of 7 source images, 35 rows" in proc.stdout
    assert "not_in_train=6" in proc.stdout and "status:rejected=1" in proc.stdout
    assert "OK: no validation image" in proc.stdout


def load_example():
    spec = importlib.util.spec_from_file_location(
        "example_training_join", REPO / "scripts" / "example_training_join.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_example_script_reports_a_missing_manifest_in_one_line(root, capsys):
    long_frame(["ID1", "ID2"]).to_csv(root / "train.csv", index=False)
    assert load_example().main(["--data-root", str(root)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: AIGC manifest not found:") and "Traceback" not in err


def test_example_split_is_grouped_by_image():
    example = load_example()
    df = long_frame([f"ID{n}" for n in range(20)])
    train, val = example.grouped_split(df, 0.25, seed=3)
    train_ids, val_ids = set(image_ids_of(train)), set(image_ids_of(val))
    assert len(val_ids) == 5 and len(train_ids) == 15 and not train_ids & val_ids
    assert len(train) + len(val) == len(df) and len(val) == 25
    again, _ = example.grouped_split(df, 0.25, seed=3)
    pd.testing.assert_frame_equal(train, again)


@pytest.mark.parametrize(
    "image_path",
    ["ID1__overcast__v0.png", f"{SUBDIR}/ID1__overcast__v0.png"],
    ids=["made-outside-data-root", "made-inside-data-root"],
)
def test_outputs_moved_with_their_manifest_are_found_relative_to_it(tmp_path, image_path):
    """Defect: outputs outside data_root were stored as absolute paths; after moving them (as when
    attaching them as a Kaggle dataset) the join added 0 rows with only a warning. The manifest says
    where they are relative to its own folder, or (made inside data_root) relative to data_root,
    and the files sit beside it: the join looks there too."""
    root = tmp_path / "input" / "csiro-biomass"
    (root / "train").mkdir(parents=True)
    moved = tmp_path / "input" / "my-augmentations"  # a separate dataset: outside data_root
    moved.mkdir(parents=True)
    (moved / "ID1__overcast__v0.png").write_bytes(b"\x89PNG fake")
    with (moved / "manifest.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[*MANIFEST_COLUMNS], extrasaction="ignore", restval="")
        w.writeheader()
        w.writerow(mrow("ID1", "overcast", image_path=image_path))
    cfg = {"enabled": True, "subdir": os.path.relpath(moved, root), "manifest": "manifest.csv", "types": None}
    out = add_aigc_samples(long_frame(["ID1"]), root, cfg, AREA)
    assert aigc(out)["image_path"].unique().tolist() == [str(moved / "ID1__overcast__v0.png")]


def test_none_of_the_augmented_files_found_is_a_loud_error(root):
    train = long_frame(["ID1", "ID2"])
    write_manifest(root, [mrow("ID1", "overcast"), mrow("ID2", "overcast")])  # files never written / moved away
    with pytest.raises(ManifestError, match=r"none of the 2 augmented images .* was found"):
        add_aigc_samples(train, root, ON, AREA)
