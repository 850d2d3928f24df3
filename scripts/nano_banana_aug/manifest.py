"""manifest.csv: derived from the sidecars, rebuilt at the end of every run.

Legacy output directories (PNGs and an old ``manifest.csv`` from the original
``augment_train.py``, possibly lacking the size columns and possibly with
several rows per target from ``--force``) are *adopted*: each target without a
sidecar gets one made from its manifest row (the last ``success`` row when the
file exists, else the last row), or from the file itself when no row names it.
Missing columns take the original tool's defaults (0 for sizes, 1.0 for
``area_scale``, empty strings otherwise).  After adoption the manifest can
always be rebuilt from the sidecars alone.
"""

from __future__ import annotations

import csv
import io
import os
import time
from pathlib import Path

from . import layout, sidecar
from .fileio import atomic_write_text
from .sidecar import Record

IMAGE_EXTS = ("png", "jpg", "jpeg", "webp")


def _int(value, default=0) -> int:
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return default


def _float(value, default=1.0) -> float:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return default
    return default if f != f else f  # NaN -> default


def read_csv_rows(path) -> list[dict]:
    """Rows of an existing manifest.csv (any column set); [] if absent."""
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh))
    except FileNotFoundError:
        return []


def record_from_row(row: dict) -> Record:
    """A legacy (or our own) manifest row -> Record, defaults for missing columns."""
    rec = Record(
        image_id=str(row.get("image_id", "")),
        aug_name=str(row.get("aug_name", "")),
        variant_idx=_int(row.get("variant_idx")),
        src_image_path=row.get("src_image_path") or "",
        image_path=row.get("image_path") or "",
        status=row.get("status") or "",
        error=row.get("error") or "",
        ts=_float(row.get("ts"), 0.0),
        area_scale=_float(row.get("area_scale"), 1.0),
    )
    for name in ("orig_w", "orig_h", "aspect_w", "aspect_h", "out_w", "out_h", "pad_area_px"):
        setattr(rec, name, _int(row.get(name)))
    for name in ("provider", "model", "model_version", "response_id", "error_reason", "prompt_sha256", "source_sha256"):
        setattr(rec, name, row.get(name) or "")
    rec.attempts = _int(row.get("attempts"))
    rec.seconds = _float(row.get("seconds"), 0.0)
    rec.qc = {k: v for k, v in row.items() if k.startswith("qc_") and v not in (None, "")}
    rec.origin = "adopted"
    return rec


def resolve_output(image_path: str, data_root) -> Path:
    p = Path(image_path)
    return p if p.is_absolute() else Path(data_root) / p


def _existing_outputs(output_dir) -> dict[tuple[str, str, int], Path]:
    found = {}
    try:
        entries = os.scandir(output_dir)
    except FileNotFoundError:
        return found
    with entries:
        for entry in entries:
            if not entry.is_file() or entry.name.startswith("."):
                continue
            ext = entry.name.rsplit(".", 1)[-1].lower()
            key = layout.parse_stem(entry.name) if ext in IMAGE_EXTS else None
            if key and entry.stat().st_size > 0:
                found[key] = Path(entry.path)
    return found


def adopt_legacy(output_dir, data_root, manifest_path, qc_cfg: dict | None = None, sources: dict | None = None) -> int:
    """Write sidecars for targets that have an output or a manifest row but no sidecar.

    With ``qc_cfg`` (enabled) and ``sources`` (image_id -> image_path as in
    train.csv), every adopted ``success`` output is put through the label-safety
    QC against its source first; one that fails is adopted as ``rejected``.
    Returns the number of sidecars written.
    """
    output_dir = Path(output_dir)
    sdir = layout.sidecar_dir(output_dir)
    have = {p.stem for p in sdir.glob("*.json")} if sdir.is_dir() else set()
    files = _existing_outputs(output_dir)
    rows_by_key: dict[tuple[str, str, int], list[dict]] = {}
    for row in read_csv_rows(manifest_path):
        key = (str(row.get("image_id", "")), str(row.get("aug_name", "")), _int(row.get("variant_idx"), -1))
        if key[0] and key[1] and key[2] >= 0:
            rows_by_key.setdefault(key, []).append(row)
    written = 0
    for key in sorted(set(rows_by_key) | set(files)):
        if layout.stem(*key) in have:
            continue
        rows = rows_by_key.get(key, [])
        if rows:
            ok = [r for r in rows if (r.get("status") or "") == "success"]
            rec = record_from_row(ok[-1] if key in files and ok else rows[-1])
        else:
            rec = _record_from_file(key, files[key], data_root)
        if qc_cfg and qc_cfg.get("enabled", True) and rec.status == "success" and key in files:
            _qc_adopted(rec, files[key], data_root, qc_cfg, sources or {})
        sidecar.write(rec, layout.sidecar_path(output_dir, *key))
        written += 1
    return written


def _qc_adopted(rec: Record, output: Path, data_root, qc_cfg: dict, sources: dict) -> None:
    """The label-safety QC of an adopted output against its source (the original tool never checked)."""
    from PIL import Image

    from . import postprocess, qc

    src_path = rec.src_image_path or sources.get(rec.image_id, "")
    if not src_path:
        return
    if not rec.src_image_path:
        rec.src_image_path = src_path
    try:
        with Image.open(Path(data_root) / src_path) as im:
            source = im.convert("RGB")
        with Image.open(output) as im:
            out = im.convert("RGB")
    except OSError:
        return
    reference = source
    if rec.orig_w and rec.orig_h and rec.aspect_w and rec.aspect_h and (rec.aspect_w, rec.aspect_h) != (rec.orig_w, rec.orig_h):
        mode = "pad" if rec.aspect_w * rec.aspect_h > rec.orig_w * rec.orig_h else "crop"
        geo = postprocess.Geometry(rec.orig_w, rec.orig_h, rec.aspect_w, rec.aspect_h,
                                   abs(rec.aspect_w - rec.orig_w) // 2, abs(rec.aspect_h - rec.orig_h) // 2, mode,
                                   out.width, out.height)
        reference = postprocess.apply(source.resize((rec.orig_w, rec.orig_h)), geo, {"pad_mode": "reflect"})
    scores, passed, reasons = qc.check(reference, out, qc_cfg)
    rec.qc = {**scores.to_columns(), "qc_passed": passed, "qc_reasons": "; ".join(reasons)}
    if not passed:
        rec.status, rec.error_reason = "rejected", "QC_REJECTED"
        rec.error = "label-safety QC at adoption: " + "; ".join(reasons)


def _record_from_file(key, path: Path, data_root) -> Record:
    from PIL import Image

    try:
        with Image.open(path) as im:
            w, h = im.size
    except OSError as exc:
        return Record(*key, image_path=layout.relative_to_root(path, data_root), status="failed",
                      error=f"adopted output is not a readable image: {exc}", ts=path.stat().st_mtime, origin="adopted")
    return Record(*key, image_path=layout.relative_to_root(path, data_root), status="success",
                  ts=path.stat().st_mtime, out_w=w, out_h=h, output_bytes=path.stat().st_size, origin="adopted")


def collect(output_dir, data_root) -> list[Record]:
    """All sidecars of ``output_dir``; a success whose file is gone becomes ``missing``."""
    sdir = layout.sidecar_dir(output_dir)
    records = []
    if not sdir.is_dir():
        return records
    for path in sorted(sdir.glob("*.json")):
        try:
            rec = sidecar.read(path)
        except (OSError, ValueError, TypeError) as exc:
            key = layout.parse_stem(path.name) or (path.stem, "", 0)
            rec = Record(*key, status="failed", error=f"unreadable sidecar {path}: {exc}")
        if rec.status == "success" and not resolve_output(rec.image_path, data_root).is_file():
            rec.status = "missing"
            rec.error = f"output file missing: {rec.image_path}"
        records.append(rec)
    records.sort(key=lambda r: (r.image_id, r.aug_name, r.variant_idx))
    return records


def to_csv(records: list[Record]) -> str:
    rows = [r.to_row() for r in records]
    qc_cols = sorted({k for row in rows for k in row if k.startswith("qc_")})
    columns = sidecar.COLUMNS + qc_cols
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return buf.getvalue()


def mark_current(records: list[Record], cfg: dict) -> None:
    """Against the config: outputs of augmentations or variants no longer in it become
    ``orphaned`` (never joined into training); ``stale`` says how a kept output differs."""
    from . import config as config_mod

    augs = {a["name"]: a for a in cfg["augmentations"]}
    keys = {name: config_mod.generation_key(cfg, a) for name, a in augs.items()}
    for r in records:
        aug = augs.get(r.aug_name)
        if aug is None or not 0 <= int(r.variant_idx) < int(aug.get("num_images", 1)):
            what = (f"augmentation '{r.aug_name}' is no longer in the config" if aug is None
                    else f"variant v{r.variant_idx} is beyond num_images={aug.get('num_images', 1)}")
            r.error = f"orphaned: {what} (was {r.status})" + (f"; {r.error}" if r.error else "")
            r.status = "orphaned"
            continue
        r.stale = config_mod.staleness(r.generation_key, keys[r.aug_name])


def build(output_dir, data_root, manifest_name: str = "manifest.csv", cfg: dict | None = None) -> tuple[Path, list[Record]]:
    """Adopt legacy outputs, then (re)write ``output_dir/manifest_name`` (marked against ``cfg``)."""
    output_dir = Path(output_dir)
    path = output_dir / manifest_name
    adopt_legacy(output_dir, data_root, path)
    records = collect(output_dir, data_root)
    if cfg is not None:
        mark_current(records, cfg)
    atomic_write_text(path, to_csv(records))
    return path, records


def is_stale(output_dir, manifest_name: str = "manifest.csv") -> bool:
    """True when a sidecar was added or replaced after the manifest was written
    (renames into sidecars/ update the directory's mtime)."""
    path = Path(output_dir) / manifest_name
    sdir = layout.sidecar_dir(output_dir)
    if not path.exists():
        return sdir.is_dir() or any(_existing_outputs(output_dir))
    return sdir.is_dir() and sdir.stat().st_mtime >= path.stat().st_mtime


def count_by_status(records: list[Record], since: float | None = None) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in records:
        if since is None or r.ts >= since:
            counts[r.status] = counts.get(r.status, 0) + 1
    return counts


def main(argv=None) -> int:
    """Entry point of rule `manifest`: build_manifest.py --config-json C [--output O]."""
    import argparse

    from . import config as config_mod

    ap = argparse.ArgumentParser(description="Rebuild manifest.csv from the sidecars.")
    ap.add_argument("--config-json", required=True)
    args = ap.parse_args(argv)
    cfg = config_mod.read_effective_config(args.config_json)
    started = time.monotonic()
    path, records = build(cfg["data"]["output_dir"], cfg["data"]["data_root"], cfg["data"]["manifest"], cfg=cfg)
    counts = ", ".join(f"{v} {k}" for k, v in sorted(count_by_status(records).items())) or "empty"
    print(f"manifest: {path} ({len(records)} rows: {counts}) in {time.monotonic() - started:.1f}s")
    return 0
