"""Checkpoint `targets`: selection from train.csv and source checks."""

import os

import pytest

from nano_banana_aug.errors import UserError
from nano_banana_aug.targets import build_targets, read_targets, write_targets

from .helpers import HEADER, make_dataset


def test_selection_sorted_one_row_per_image(tmp_path):
    root = make_dataset(tmp_path / "data", n=4, missing_total=("ID1002",))
    targets = build_targets(root / "train.csv", root, ["Dry_Total_g"])
    assert [t.image_id for t in targets] == ["ID1000", "ID1001", "ID1003"]
    t = targets[0]
    assert t.image_path == "train/ID1000.jpg" and t.problem == "" and (t.width, t.height) == (200, 100)
    assert t.row == 2  # first train.csv line of the image (header is line 1)


def test_every_primary_target_required(tmp_path):
    root = make_dataset(tmp_path / "data", n=3, missing_total=("ID1001",))
    got = build_targets(root / "train.csv", root, ["Dry_Total_g", "GDM_g"])
    assert [t.image_id for t in got] == ["ID1000", "ID1002"]
    got = build_targets(root / "train.csv", root, ["GDM_g"])
    assert [t.image_id for t in got] == ["ID1000", "ID1001", "ID1002"]


def test_image_id_is_sample_id_up_to_first_double_underscore(tmp_path):
    root = make_dataset(
        tmp_path / "data",
        n=1,
        extra_rows=[
            "IDX__Dry_Total_g__extra,train/ID1000.jpg,,,,,,Dry_Total_g,3",
        ],
    )
    ids = [t.image_id for t in build_targets(root / "train.csv", root, ["Dry_Total_g"])]
    assert ids == ["ID1000", "IDX"]


def test_bad_sources_are_recorded_not_read(tmp_path):
    root = make_dataset(tmp_path / "data", n=1)
    (tmp_path / "secret.jpg").write_bytes(b"\xff\xd8\xff not for sending")
    (root / "train" / "broken.jpg").write_bytes(b"not an image")
    rows = [
        "IDout__Dry_Total_g,../secret.jpg,,,,,,Dry_Total_g,1",
        "IDabs__Dry_Total_g,/etc/hostname,,,,,,Dry_Total_g,1",
        "IDmiss__Dry_Total_g,train/nope.jpg,,,,,,Dry_Total_g,1",
        "IDbroken__Dry_Total_g,train/broken.jpg,,,,,,Dry_Total_g,1",
    ]
    with open(root / "train.csv", "a") as fh:
        fh.write("\n".join(rows) + "\n")
    by_id = {t.image_id: t for t in build_targets(root / "train.csv", root, ["Dry_Total_g"])}
    assert "outside data_root" in by_id["IDout"].problem
    assert "outside data_root" in by_id["IDabs"].problem
    assert "missing" in by_id["IDmiss"].problem
    assert "unreadable" in by_id["IDbroken"].problem
    assert by_id["ID1000"].problem == ""


def test_symlink_escaping_data_root_is_refused(tmp_path):
    root = make_dataset(tmp_path / "data", n=1)
    outside = tmp_path / "outside.jpg"
    outside.write_bytes((root / "train" / "ID1000.jpg").read_bytes())
    os.symlink(outside, root / "train" / "link.jpg")
    with open(root / "train.csv", "a") as fh:
        fh.write("IDlink__Dry_Total_g,train/link.jpg,,,,,,Dry_Total_g,1\n")
    by_id = {t.image_id: t for t in build_targets(root / "train.csv", root, ["Dry_Total_g"])}
    assert "train/link.jpg is a symlink (or lies below one) leading outside data_root" in by_id["IDlink"].problem
    assert f"to {outside}" in by_id["IDlink"].problem


def test_round_trip(tmp_path):
    root = make_dataset(tmp_path / "data", n=2)
    targets = build_targets(root / "train.csv", root, ["Dry_Total_g"])
    write_targets(targets, tmp_path / "t.csv")
    assert read_targets(tmp_path / "t.csv") == targets


def test_missing_columns_named(tmp_path):
    (tmp_path / "train.csv").write_text("sample_id,target\nA__x,1\n")
    with pytest.raises(UserError, match=r"train.csv: missing column\(s\) image_path, target_name"):
        build_targets(tmp_path / "train.csv", tmp_path, ["Dry_Total_g"])


def test_missing_file_named(tmp_path):
    with pytest.raises(UserError, match="not found"):
        build_targets(tmp_path / "nope.csv", tmp_path, ["Dry_Total_g"])


def test_header_only(tmp_path):
    (tmp_path / "train.csv").write_text(HEADER + "\n")
    assert build_targets(tmp_path / "train.csv", tmp_path, ["Dry_Total_g"]) == []
