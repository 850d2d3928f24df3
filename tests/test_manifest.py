"""Manifest rows from the files (sidecars, answers, the targets table), shards, and adoption of
legacy output directories."""

import csv

from snakemake.utils import validate

from nano_banana_aug import answers, layout, manifest, sidecar
from nano_banana_aug import config as cfgmod
from nano_banana_aug.answers import Answer
from nano_banana_aug.sidecar import SEED_COLUMNS, Record
from nano_banana_aug.targets import Target

from .helpers import textured


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def config(data_root, out, augs=("a",), **extra):
    cfg = {
        "data": {"data_root": str(data_root), "output_dir": str(out)},
        "augmentations": [{"name": n, "prompt": "p"} for n in augs],
        **extra,
    }
    return cfgmod.prepare(cfg, validate, say=lambda m: None)


def table(tmp_path, *ids, problem=""):
    return [
        Target(i, f"train/{i}.jpg", str(tmp_path / f"train/{i}.jpg"), n + 2, problem=problem) for n, i in enumerate(ids)
    ]


def test_seed_columns_first_in_order_and_failed_error_cut(tmp_path):
    out = tmp_path / "data" / "aug"
    out.mkdir(parents=True)
    textured(30, 15, 0).save(out / "ID1__a__v0.png")
    sidecar.write(
        Record(
            "ID1",
            "a",
            0,
            "train/ID1.jpg",
            "",
            "success",
            ts=5.0,
            orig_w=30,
            orig_h=15,
            aspect_w=30,
            aspect_h=15,
            out_w=30,
            out_h=15,
            qc={"ssim": 0.9},
        ),
        layout.sidecar_path(out, "ID1__a__v0"),
    )
    (out / "ID0__a__v0.png").write_bytes(b"")  # the placeholder of a target without an image
    sidecar.write(
        Record("ID0", "a", 0, "train/ID0.jpg", "", "failed", error="x" * 900), layout.sidecar_path(out, "ID0__a__v0")
    )
    path = manifest.rebuild(config(tmp_path / "data", out), table(tmp_path, "ID0", "ID1"))
    with open(path) as fh:
        header = next(csv.reader(fh))
    assert header[:16] == SEED_COLUMNS
    assert "qc_ssim" in header and "provider" in header
    rows = _rows(path)
    assert [r["image_id"] for r in rows] == ["ID0", "ID1"]  # sorted
    assert rows[0]["status"] == "failed" and len(rows[0]["error"]) == 500
    assert rows[1]["status"] == "success" and rows[1]["qc_ssim"] == "0.9" and rows[1]["area_scale"] == "1.0"
    assert rows[1]["image_path"] == "aug/ID1__a__v0.png"  # relative to data_root


def test_success_without_file_is_missing(tmp_path):
    out = tmp_path / "aug"
    sidecar.write(Record("ID1", "a", 0, status="success"), layout.sidecar_path(out, "ID1__a__v0"))
    rows = _rows(manifest.rebuild(config(tmp_path, out), table(tmp_path, "ID1")))
    assert rows[0]["status"] == "missing"


def test_rows_of_targets_without_output_come_from_their_answers_and_the_table(tmp_path):
    out = tmp_path / "aug"
    for v, calls in ((1, 3), (2, 3)):
        answers.write(
            out,
            Answer(
                stem="ID1__a__v0",
                version=v,
                status="refused",
                reason="IMAGE_SAFETY",
                message="no usable image",
                calls=calls,
                est_cost_usd=0.1,
            ),
        )
    answers.write(
        out, Answer(stem="ID2__a__v0", version=1, status="refused", reason="NO_IMAGE", message="text only", calls=2)
    )
    cfg = config(tmp_path, out)
    targets = table(tmp_path, "ID1", "ID2") + [Target("ID3", "train/ID3.jpg", "", 9, problem="source image missing: x")]
    rows = {r["image_id"]: r for r in _rows(manifest.rebuild(cfg, targets))}
    assert (
        rows["ID1"]["status"] == "blocked"
        and rows["ID1"]["attempts_total"] == "6"
        and "raise it" in rows["ID1"]["error"]
    )
    assert (
        rows["ID2"]["status"] == "failed"
        and rows["ID2"]["error_reason"] == "NO_IMAGE"
        and rows["ID2"]["attempts_total"] == "2"
    )
    assert (
        rows["ID3"]["status"] == "failed"
        and rows["ID3"]["error_reason"] == "BAD_SOURCE"
        and "line 9" in rows["ID3"]["error"]
    )


def test_a_newer_answer_without_image_is_a_regen_error_of_the_kept_output(tmp_path):
    out = tmp_path / "aug"
    out.mkdir()
    textured(30, 15, 0).save(out / "ID1__a__v0.png")
    answers.write(out, Answer(stem="ID1__a__v0", version=1, status="image"), b"\x89PNG\r\n\x1a\n")
    sidecar.write(Record("ID1", "a", 0, status="success", answer_id="v1"), layout.sidecar_path(out, "ID1__a__v0"))
    answers.write(out, Answer(stem="ID1__a__v0", version=2, status="refused", message="IMAGE_SAFETY", ts=7.0))
    (row,) = _rows(manifest.rebuild(config(tmp_path, out), table(tmp_path, "ID1")))
    assert row["status"] == "success" and row["answer_id"] == "v1"
    assert row["regen_error"] == "answer v2: IMAGE_SAFETY" and row["regen_error_ts"] == "7.0"


def test_stale_and_orphaned_follow_the_config(tmp_path):
    out = tmp_path / "aug"
    out.mkdir()
    cfg = config(tmp_path, out, augs=("a",))
    key_now = cfgmod.request_key(cfgmod.request_settings(cfg, cfg["augmentations"][0]))
    for stem, key in (("ID1__a__v0", key_now), ("ID2__a__v0", "older"), ("ID1__gone__v0", key_now)):
        textured(30, 15, 0).save(out / f"{stem}.png")
        sidecar.write(
            Record(*layout.parse_stem(stem), status="success", generation_key=f"{key}/x"),
            layout.sidecar_path(out, stem),
        )
    sidecar.write(  # an orphan whose own error is already as long as the manifest allows
        Record("ID2", "gone", 0, status="failed", error="x" * 600), layout.sidecar_path(out, "ID2__gone__v0")
    )
    rows = {(r["image_id"], r["aug_name"]): r for r in _rows(manifest.rebuild(cfg, table(tmp_path, "ID1", "ID2")))}
    assert rows[("ID1", "a")]["stale"] == "" and rows[("ID2", "a")]["stale"] == "model/prompt"
    assert rows[("ID1", "gone")]["status"] == "orphaned" and "no longer in the config" in rows[("ID1", "gone")]["error"]
    long = rows[("ID2", "gone")]["error"]
    assert long.startswith("orphaned: augmentation 'gone'") and len(long) == 500  # cut as the original tool cut


def test_outputs_outside_data_root_are_still_relative_to_data_root(tmp_path):
    """The original tool's image_path is relative to data_root "as far as possible": outside it,
    with '..', so that data_root / image_path finds the file for any reader of the manifest."""
    out = tmp_path / "elsewhere" / "aug"
    out.mkdir(parents=True)
    textured(30, 15, 0).save(out / "ID1__a__v0.png")
    sidecar.write(Record("ID1", "a", 0, status="success"), layout.sidecar_path(out, "ID1__a__v0"))
    (row,) = _rows(manifest.rebuild(config(tmp_path / "data", out), table(tmp_path, "ID1")))
    assert row["image_path"] == "../elsewhere/aug/ID1__a__v0.png"
    assert (tmp_path / "data" / row["image_path"]).resolve() == (out / "ID1__a__v0.png").resolve()
    assert manifest.resolve_output(row["image_path"], tmp_path / "data", out) == out / "ID1__a__v0.png"


def test_parts_concatenate_to_the_same_manifest(tmp_path):
    out = tmp_path / "aug"
    out.mkdir()
    ids = [f"ID{i}" for i in range(40)]
    for i in ids:
        textured(20, 10, 1).save(out / f"{i}__a__v0.png")
        sidecar.write(Record(i, "a", 0, status="success"), layout.sidecar_path(out, f"{i}__a__v0"))
    cfg = config(tmp_path, out)
    targets = table(tmp_path, *ids)
    whole = _rows(manifest.rebuild(cfg, targets))
    shards = sorted({layout.shard_of(i) for i in ids})
    parts = [layout.manifest_part(out, s, "k1") for s in shards]
    for s, p in zip(shards, parts, strict=True):
        layout.manifest_part(out, s, "old").parent.mkdir(parents=True, exist_ok=True)
        layout.manifest_part(out, s, "old").write_text("stale")
        manifest.write_part(cfg, targets, s, p)
    assert len(parts) > 5 and sum(len(_rows(p)) for p in parts) == 40
    assert sorted(out.glob(".pipeline/manifest/part-*.csv")) == sorted(parts)  # an older part of a shard goes
    assert manifest.concatenate(parts, tmp_path / "again.csv", {}) == 40 and _rows(tmp_path / "again.csv") == whole


LEGACY_HEADER = "image_id,aug_name,variant_idx,src_image_path,image_path,status,error,ts"


def test_legacy_manifest_adopted_with_defaults_and_last_success_row(tmp_path):
    data = tmp_path / "data"
    out = data / "nano_banana_pro" / "train"
    out.mkdir(parents=True)
    textured(40, 20, 1).save(out / "ID1__sun__v0.png")
    textured(40, 20, 2).save(out / "ID2__sun__v0.png")
    textured(40, 20, 3).save(out / "ID3__sun__v0.png")  # no manifest row at all
    (out / "manifest.csv").write_text(
        "\n".join(
            [
                LEGACY_HEADER,
                "ID1,sun,0,train/ID1.jpg,nano_banana_pro/train/ID1__sun__v0.png,success,,100",
                "ID1,sun,0,train/ID1.jpg,nano_banana_pro/train/ID1__sun__v0.png,success,,200",  # --force re-run
                "ID1,sun,0,train/ID1.jpg,nano_banana_pro/train/ID1__sun__v0.png,failed,HTTP 503,300",  # failed later, file kept
                "ID2,sun,0,train/ID2.jpg,nano_banana_pro/train/ID2__sun__v0.png,success,,150",
                "ID4,sun,0,train/ID4.jpg,nano_banana_pro/train/ID4__sun__v0.png,failed,blocked,160",
            ]
        )
        + "\n"
    )
    cfg = config(data, out, augs=("sun",), qc={"enabled": False})
    path = manifest.rebuild(cfg, table(tmp_path, "ID1", "ID2", "ID3"))
    rows = {r["image_id"]: r for r in _rows(path)}
    assert set(rows) == {"ID1", "ID2", "ID3", "ID4"}
    assert rows["ID1"]["status"] == "success" and rows["ID1"]["ts"] == "200.0"
    assert rows["ID1"]["orig_w"] == "0" and rows["ID1"]["area_scale"] == "1.0" and rows["ID1"]["pad_area_px"] == "0"
    assert rows["ID3"]["status"] == "success" and rows["ID3"]["out_w"] == "40"
    assert rows["ID3"]["image_path"] == "nano_banana_pro/train/ID3__sun__v0.png"
    assert rows["ID4"]["status"] == "failed" and rows["ID4"]["error"] == "blocked"
    assert all(r["origin"] == "adopted" for r in rows.values())
    # adoption wrote sidecars: the manifest can be rebuilt without the old file
    (out / "manifest.csv").unlink()
    manifest._LEGACY_ROWS.clear()
    again = {r["image_id"]: r["status"] for r in _rows(manifest.rebuild(cfg, table(tmp_path, "ID1", "ID2", "ID3")))}
    assert again == {i: r["status"] for i, r in rows.items()}


def test_legacy_area_scale_kept_when_present(tmp_path):
    out = tmp_path / "aug"
    out.mkdir()
    textured(40, 20, 1).save(out / "ID1__sun__v0.png")
    (out / "manifest.csv").write_text(
        LEGACY_HEADER + ",orig_w,orig_h,aspect_w,aspect_h,out_w,out_h,pad_area_px,area_scale\n"
        f"ID1,sun,0,train/ID1.jpg,{out}/ID1__sun__v0.png,success,,1,1376,768,1536,768,1536,768,122880,1.1162790697674418\n"
    )
    cfg = config(tmp_path, out, augs=("sun",), qc={"enabled": False})
    (row,) = _rows(manifest.rebuild(cfg, table(tmp_path, "ID1")))
    assert float(row["area_scale"]) == 1.1162790697674418 and row["pad_area_px"] == "122880"


def test_review_decisions_in_the_manifest_follow_the_answer(tmp_path):
    """A rebuilt manifest carries review.json's decisions in review / review_by / review_ts, for
    the output made from the answer the decision was made on."""
    from nano_banana_aug import decisions as review_decisions

    out = tmp_path / "aug"
    out.mkdir()
    for i, made_from in (("ID1", "v1"), ("ID2", "v2")):
        textured(30, 15, 0).save(out / f"{i}__a__v0.png")
        sidecar.write(Record(i, "a", 0, status="success", answer_id=made_from), layout.sidecar_path(out, f"{i}__a__v0"))
    review_decisions.save(
        out,
        {
            "ID1__a__v0": {"decision": "reject", "answer_id": "v1", "by": "ann", "ts": 7.5},
            "ID2__a__v0": {"decision": "keep", "answer_id": "v1", "by": "ann", "ts": 7.5},
        },
    )
    got = {r["image_id"]: r for r in _rows(manifest.rebuild(config(tmp_path, out), table(tmp_path, "ID1", "ID2")))}
    assert (got["ID1"]["review"], got["ID1"]["review_by"], got["ID1"]["review_ts"]) == ("reject", "ann", "7.5")
    assert (got["ID2"]["review"], got["ID2"]["review_ts"]) == ("", "")  # decided on v1, the output is made from v2
