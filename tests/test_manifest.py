"""Manifest building from sidecars, and adoption of legacy output directories."""

import csv

from nano_banana_aug import layout, manifest, sidecar
from nano_banana_aug.sidecar import SEED_COLUMNS, Record

from .helpers import textured


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_seed_columns_first_in_order_and_failed_error_cut(tmp_path):
    out = tmp_path / "data" / "aug"
    textured(30, 15, 0).save(out / "ID1__a__v0.png") if out.mkdir(parents=True) is None else None
    sidecar.write(Record("ID1", "a", 0, "train/ID1.jpg", "aug/ID1__a__v0.png", "success", ts=5.0,
                         orig_w=30, orig_h=15, aspect_w=30, aspect_h=15, out_w=30, out_h=15, qc={"ssim": 0.9}),
                  layout.sidecar_path(out, "ID1", "a", 0))
    sidecar.write(Record("ID0", "a", 0, "train/ID0.jpg", "aug/ID0__a__v0.png", "failed", error="x" * 900),
                  layout.sidecar_path(out, "ID0", "a", 0))
    path, records = manifest.build(out, tmp_path / "data")
    with open(path) as fh:
        header = next(csv.reader(fh))
    assert header[:16] == SEED_COLUMNS
    assert "qc_ssim" in header and "provider" in header
    rows = _rows(path)
    assert [r["image_id"] for r in rows] == ["ID0", "ID1"]  # sorted
    assert rows[0]["status"] == "failed" and len(rows[0]["error"]) == 500
    assert rows[1]["status"] == "success" and rows[1]["qc_ssim"] == "0.9" and rows[1]["area_scale"] == "1.0"


def test_success_without_file_is_missing(tmp_path):
    out = tmp_path / "aug"
    sidecar.write(Record("ID1", "a", 0, image_path=str(out / "ID1__a__v0.png"), status="success"),
                  layout.sidecar_path(out, "ID1", "a", 0))
    _, records = manifest.build(out, tmp_path)
    assert records[0].status == "missing"


LEGACY_HEADER = "image_id,aug_name,variant_idx,src_image_path,image_path,status,error,ts"


def test_legacy_manifest_adopted_with_defaults_and_last_success_row(tmp_path):
    data = tmp_path / "data"
    out = data / "nano_banana_pro" / "train"
    out.mkdir(parents=True)
    textured(40, 20, 1).save(out / "ID1__sun__v0.png")
    textured(40, 20, 2).save(out / "ID2__sun__v0.png")
    textured(40, 20, 3).save(out / "ID3__sun__v0.png")  # no manifest row at all
    (out / "manifest.csv").write_text("\n".join([
        LEGACY_HEADER,
        "ID1,sun,0,train/ID1.jpg,nano_banana_pro/train/ID1__sun__v0.png,success,,100",
        "ID1,sun,0,train/ID1.jpg,nano_banana_pro/train/ID1__sun__v0.png,success,,200",  # --force re-run
        "ID1,sun,0,train/ID1.jpg,nano_banana_pro/train/ID1__sun__v0.png,failed,HTTP 503,300",  # failed later, file kept
        "ID2,sun,0,train/ID2.jpg,nano_banana_pro/train/ID2__sun__v0.png,success,,150",
        "ID4,sun,0,train/ID4.jpg,nano_banana_pro/train/ID4__sun__v0.png,failed,blocked,160",
    ]) + "\n")
    path, records = manifest.build(out, data)
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
    _, again = manifest.build(out, data)
    assert [(r.image_id, r.status) for r in again] == [(r.image_id, r.status) for r in records]


def test_legacy_area_scale_kept_when_present(tmp_path):
    out = tmp_path / "aug"
    out.mkdir()
    textured(40, 20, 1).save(out / "ID1__sun__v0.png")
    (out / "manifest.csv").write_text(
        LEGACY_HEADER + ",orig_w,orig_h,aspect_w,aspect_h,out_w,out_h,pad_area_px,area_scale\n"
        f"ID1,sun,0,train/ID1.jpg,{out}/ID1__sun__v0.png,success,,1,1376,768,1536,768,1536,768,122880,1.1162790697674418\n"
    )
    _, records = manifest.build(out, tmp_path)
    assert records[0].area_scale == 1.1162790697674418 and records[0].pad_area_px == 122880


def test_staleness_follows_sidecar_directory(tmp_path):
    out = tmp_path / "aug"
    sidecar.write(Record("ID1", "a", 0, status="failed"), layout.sidecar_path(out, "ID1", "a", 0))
    assert manifest.is_stale(out)
    manifest.build(out, tmp_path)
    assert not manifest.is_stale(out)
    sidecar.write(Record("ID2", "a", 0, status="failed"), layout.sidecar_path(out, "ID2", "a", 0))
    assert manifest.is_stale(out)
