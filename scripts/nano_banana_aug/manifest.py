"""manifest.csv: a view derived from the files, rebuilt by the workflow.

One row per target that has a result, from the files that hold its state:

* an output with its sidecar: the sidecar's row (``success`` / ``rejected``,
  or ``failed`` for an empty placeholder); ``missing`` when the output file
  is gone; ``regen_error`` when a newer answer of the target has no image
  (the output of the older answer is kept); ``stale`` when its answer was
  asked otherwise (provider, model, prompt, image config) than the config
  says now; ``orphaned`` when its augmentation or variant left the config;
* no output yet, but an answer without image (refused, failed): ``failed``,
  or ``blocked`` once the billed failed attempts since the last image reached
  ``api.max_total_attempts``;
* an image the targets table found unusable: ``failed`` rows for its outputs.

``image_path`` is relative to ``data_root`` as in the original tool (with ``..``
when the output directory lies outside it); readers here also find an output
beside its manifest when both were moved (e.g. attached as a Kaggle dataset).

Legacy output directories (PNGs and a ``manifest.csv`` from the original
``augment_train.py``, possibly lacking the size columns, possibly with
several rows per target from ``--force``) are *adopted*: each output without
a sidecar and without answers gets a sidecar from its last ``success`` row
(or its last row, or the file itself), with the original tool's defaults for
missing columns (0 for sizes, 1.0 for ``area_scale``, empty strings
otherwise), and is checked by the label-safety QC against its source.

The manifest is built in shards (``.pipeline/manifest/part-NN.csv``, an
image's outputs always in the same one) and then concatenated: Snakemake
handles jobs with a few thousand inputs well and jobs with 10⁵ inputs badly.
"""

from __future__ import annotations

import csv
import io
import os
import sys
import time
from pathlib import Path

from . import answers as answers_mod
from . import config as config_mod
from . import decisions as review_decisions
from . import layout, sidecar
from .fileio import atomic_write_text
from .sidecar import Record
from .targets import BAD_ID_PROBLEM, read_targets


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


def portable_path(path, data_root) -> str:
    """``path`` relative to ``data_root``, as the original tool wrote ``image_path``: with ``..``
    when the output directory lies outside data_root, so ``data_root / image_path`` finds it for
    any reader of the manifest."""
    return Path(os.path.relpath(Path(path).resolve(), Path(data_root).resolve())).as_posix()


def resolve_output(image_path: str, data_root, manifest_dir=None) -> Path:
    """Where a manifest's ``image_path`` points: absolute, under ``data_root``, under the manifest's
    folder, or the file of that name beside the manifest (outputs moved with their manifest)."""
    candidates = [Path(data_root) / c for c in layout.image_path_candidates(image_path, manifest_dir)]
    return next((c for c in candidates if c.exists()), candidates[0])


# ---------------------------------------------------------------- one target


class Rows:
    """Builds the rows of one output directory for a config."""

    def __init__(self, cfg: dict):
        self.cfg = cfg
        self.out = config_mod.output_dir(cfg)
        self.data_root = cfg["data"]["data_root"]
        self.ext = cfg["data"]["output_ext"]
        self.max_total = int(cfg["api"]["max_total_attempts"])
        self.augs = {a["name"]: a for a in cfg["augmentations"]}
        self.keys = {n: config_mod.request_key(config_mod.request_settings(cfg, a)) for n, a in self.augs.items()}

    def for_stem(self, stem: str, target=None) -> Record | None:
        side_path = layout.sidecar_path(self.out, stem)
        versions = answers_mod.versions(self.out, stem)
        try:
            rec = sidecar.read(side_path)
        except FileNotFoundError:
            rec = None
        except (OSError, ValueError, TypeError) as exc:
            rec = Record(*layout.parse_stem(stem), status="failed", error=f"unreadable sidecar {side_path}: {exc}")
        if rec is None:
            rec = self._without_output(stem, versions, target)
            if rec is None:
                return None
        else:
            self._with_output(rec, stem, versions)
        self._mark(rec)
        return rec

    def _with_output(self, rec: Record, stem: str, versions) -> None:
        output = layout.output_path(self.out, stem, self.ext)
        rec.image_path = portable_path(output, self.data_root)
        if rec.status in ("success", "rejected") and not (output.is_file() and output.stat().st_size > 0):
            rec.status, rec.error = "missing", f"output file missing: {rec.image_path}"
        made = _version(rec.answer_id)
        newer = [v for v, img in versions if v > made and not img]
        if newer and rec.status in ("success", "rejected", "missing"):
            answer = answers_mod.try_read(self.out, stem, newer[-1])
            if answer is not None:
                rec.regen_error, rec.regen_error_ts = f"answer v{answer.version}: {answer.message}", answer.ts
        if rec.status == "failed":
            self._attempts(rec, stem, versions)

    def _without_output(self, stem: str, versions, target) -> Record | None:
        key = layout.parse_stem(stem)
        if versions and not versions[-1][1]:
            answer = answers_mod.try_read(self.out, stem, versions[-1][0])
            if answer is None:
                return None
            rec = Record(
                *key,
                src_image_path=target.image_path if target else "",
                status="failed",
                error=answer.message,
                error_reason=answer.reason,
                ts=answer.ts,
                attempts=answer.calls,
                est_cost_usd=answer.est_cost_usd,
                cost_usd=answer.cost_usd,
                answer_id=answer.answer_id,
                answer_source=answer.source,
            )
            self._attempts(rec, stem, versions)
            return rec
        if target is not None and target.problem:
            reason = "BAD_IMAGE_ID" if target.problem.startswith(BAD_ID_PROBLEM) else "BAD_SOURCE"
            return Record(
                *key,
                src_image_path=target.image_path,
                status="failed",
                error_reason=reason,
                error=f"train.csv line {target.row}, image {target.image_id}: {target.problem}",
            )
        return None

    def _attempts(self, rec: Record, stem: str, versions) -> None:
        total = answers_mod.failed_attempts(versions, lambda v: answers_mod.try_read(self.out, stem, v))
        rec.attempts_total = total
        if total >= self.max_total:
            rec.status, rec.error_reason = "blocked", rec.error_reason or "BLOCKED"
            rec.error = (
                f"blocked after {total} billed failed attempts (api.max_total_attempts={self.max_total}); "
                f"raise it to try again. Last: {rec.error}"
            )

    def _mark(self, rec: Record) -> None:
        aug = self.augs.get(rec.aug_name)
        if aug is None or not 0 <= int(rec.variant_idx) < int(aug.get("num_images", 1)):
            what = (
                f"augmentation '{rec.aug_name}' is no longer in the config"
                if aug is None
                else f"variant v{rec.variant_idx} is beyond num_images={aug.get('num_images', 1)}"
            )
            rec.error = f"orphaned: {what} (was {rec.status})" + (f"; {rec.error}" if rec.error else "")
            rec.status = "orphaned"
            return
        made = (rec.generation_key or "").split("/")[0]
        rec.stale = "model/prompt" if made and made != self.keys[rec.aug_name] else ""


def _version(answer_id) -> int:
    try:
        return int(str(answer_id or "").lstrip("v") or 0)
    except ValueError:
        return 0


# ---------------------------------------------------------------- shards and the whole


def shard_rows(cfg: dict, targets, shard: int) -> list[Record]:
    """Rows of every target of one shard, and of sidecars of that shard no target names (orphans)."""
    rows = Rows(cfg)
    out = rows.out
    augs = {a["name"]: int(a["num_images"]) for a in cfg["augmentations"]}
    seen, records = set(), []
    for t in targets:
        if layout.shard_of(t.image_id) != shard:
            continue
        for aug, n in augs.items():
            for k in range(n):
                stem = layout.stem(t.image_id, aug, k)
                seen.add(stem)
                adopt_if_legacy(cfg, stem, t)
                rec = rows.for_stem(stem, t)
                if rec is not None:
                    records.append(rec)
    for key in _legacy_rows(out / cfg["data"]["manifest"]):
        stem = layout.stem(*key)
        if layout.shard_of(key[0]) == shard and stem not in seen:
            adopt_if_legacy(cfg, stem, None)  # picked up with the sidecars below
    for name in _listdir(layout.sidecar_dir(out)):
        key = layout.parse_stem(name)
        if key and name.endswith(".json") and layout.shard_of(key[0]) == shard and layout.stem(*key) not in seen:
            rec = rows.for_stem(layout.stem(*key))
            if rec is not None:
                records.append(rec)
    return sorted(records, key=lambda r: (r.image_id, r.aug_name, int(r.variant_idx)))


def to_csv(records: list[Record], header: bool = True) -> str:
    rows = [r.to_row() for r in records]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns(rows), lineterminator="\n", extrasaction="ignore")
    if header:
        writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return buf.getvalue()


def columns(rows: list[dict]) -> list[str]:
    return sidecar.COLUMNS + sorted({k for row in rows for k in row if k.startswith("qc_")})


def write_part(cfg: dict, targets, shard: int, dest) -> list[Record]:
    """One shard's rows; an older part of the same shard (another name) is removed."""
    records = shard_rows(cfg, targets, shard)
    dest = Path(dest)
    atomic_write_text(dest, to_csv(records), durable=False)
    for old in dest.parent.glob(f"part-{shard:02d}-*.csv"):
        if old != dest:
            old.unlink(missing_ok=True)
    return records


def concatenate(parts, dest, decisions: dict) -> int:
    """manifest.csv from its parts (each with a header; the qc_* columns are the union), with
    the review decisions (``review.json``) in its review columns."""
    rows = []
    for p in parts:
        rows.extend(read_csv_rows(p))
    return _write_rows(rows, dest, decisions)


def _write_rows(rows: list[dict], dest, decisions: dict) -> int:
    review_decisions.apply_to_rows(rows, decisions)
    rows.sort(key=lambda r: (r.get("image_id", ""), r.get("aug_name", ""), _int(r.get("variant_idx"))))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns(rows), lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in rows)
    atomic_write_text(dest, buf.getvalue())
    return len(rows)


def rebuild(cfg: dict, targets) -> Path:
    """manifest.csv from every shard at once (the end-of-run hook after a failure, tests). The
    parts are left alone: a shard whose part is missing is made by the next run."""
    out = config_mod.output_dir(cfg)
    shards = {layout.shard_of(t.image_id) for t in targets}
    shards |= {layout.shard_of(k[0]) for k in map(layout.parse_stem, _listdir(layout.sidecar_dir(out))) if k}
    shards |= {layout.shard_of(k[0]) for k in legacy_keys(out / cfg["data"]["manifest"])}
    records = [r for s in sorted(shards) for r in shard_rows(cfg, targets, s)]
    dest = out / cfg["data"]["manifest"]
    _write_rows([r.to_row() for r in records], dest, review_decisions.load(out))
    return dest


# ---------------------------------------------------------------- legacy directories


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


_LEGACY_ROWS: dict = {}


def _legacy_rows(manifest_path) -> dict:
    """(image_id, aug_name, k) -> rows of a manifest.csv written by the original tool (read once;
    empty for one of this workflow's, which carries the column ``origin``)."""
    key = str(manifest_path)
    if key not in _LEGACY_ROWS:
        found: dict = {}
        rows = read_csv_rows(manifest_path) if _written_by_original_tool(manifest_path) else []
        for row in rows:
            k = (str(row.get("image_id", "")), str(row.get("aug_name", "")), _int(row.get("variant_idx"), -1))
            if k[0] and k[1] and k[2] >= 0:
                found.setdefault(k, []).append(row)
        _LEGACY_ROWS[key] = found
    return _LEGACY_ROWS[key]


def _written_by_original_tool(manifest_path) -> bool:
    """A manifest.csv without this workflow's column ``origin`` (its header alone is read)."""
    try:
        with open(manifest_path, newline="", encoding="utf-8") as fh:
            header = next(csv.reader(fh), [])
    except FileNotFoundError:
        return False
    return bool(header) and "origin" not in header


def legacy_keys(manifest_path) -> set:
    """(image_id, aug_name, k) of each output a manifest of the original tool names (empty for one
    of this workflow's): its rows are carried into this workflow's manifest, shard by shard."""
    return set(_legacy_rows(manifest_path))


def adopt_if_legacy(cfg: dict, stem: str, target) -> bool:
    """Write the sidecar of a target this workflow never worked on (no sidecar, no answers) from
    the original tool's manifest row, or from its output file; True if adopted."""
    out = config_mod.output_dir(cfg)
    output = layout.output_path(out, stem, cfg["data"]["output_ext"])
    side = layout.sidecar_path(out, stem)
    if side.exists() or answers_mod.versions(out, stem):
        return False
    key = layout.parse_stem(stem)
    rows = _legacy_rows(out / cfg["data"]["manifest"]).get(key, [])
    has_file = output.is_file() and output.stat().st_size > 0
    if rows:
        ok = [r for r in rows if (r.get("status") or "") == "success"]
        rec = record_from_row(ok[-1] if ok and has_file else rows[-1])
    elif has_file:
        rec = _record_from_file(key, output, cfg["data"]["data_root"])
    else:
        return False
    if target is not None and not rec.src_image_path:
        rec.src_image_path = target.image_path
    if cfg["qc"].get("enabled", True) and rec.status == "success" and has_file:
        _qc_adopted(rec, output, cfg["data"]["data_root"], cfg["qc"], cfg["postprocess"])
    sidecar.write(rec, side)
    return True


def _qc_adopted(rec: Record, output: Path, data_root, qc_cfg: dict, pp_cfg: dict) -> None:
    """The label-safety QC of an adopted output against its source (the original tool never checked),
    padded as the config's ``postprocess`` pads (the original tool's keys: ``pad_mode``, ``pad_color``).
    Judged once, when adopted: there is no answer to judge again from."""
    from PIL import Image

    from . import postprocess, qc

    if not rec.src_image_path:
        return
    try:
        with Image.open(Path(data_root) / rec.src_image_path) as im:
            source = im.convert("RGB")
        with Image.open(output) as im:
            out = im.convert("RGB")
    except OSError:
        return
    reference = source
    if (
        rec.orig_w
        and rec.orig_h
        and rec.aspect_w
        and rec.aspect_h
        and (rec.aspect_w, rec.aspect_h) != (rec.orig_w, rec.orig_h)
    ):
        mode = "pad" if rec.aspect_w * rec.aspect_h > rec.orig_w * rec.orig_h else "crop"
        geo = postprocess.Geometry(
            rec.orig_w,
            rec.orig_h,
            rec.aspect_w,
            rec.aspect_h,
            abs(rec.aspect_w - rec.orig_w) // 2,
            abs(rec.aspect_h - rec.orig_h) // 2,
            mode,
            out.width,
            out.height,
        )
        reference = postprocess.apply(source.resize((rec.orig_w, rec.orig_h)), geo, pp_cfg)
    scores, passed, reasons = qc.check(reference, out, qc_cfg)
    rec.qc = {**scores.to_columns(), "qc_passed": passed, "qc_reasons": "; ".join(reasons)}
    if not passed:
        rec.status, rec.error_reason = "rejected", "QC_REJECTED"
        rec.error = "label-safety QC at adoption: " + "; ".join(reasons)


def _record_from_file(key, path: Path, data_root) -> Record:
    from PIL import Image

    st = path.stat()
    try:
        with Image.open(path) as im:
            w, h = im.size
    except OSError as exc:
        return Record(
            *key,
            status="failed",
            error=f"adopted output is not a readable image: {exc}",
            ts=st.st_mtime,
            origin="adopted",
        )
    return Record(*key, status="success", ts=st.st_mtime, out_w=w, out_h=h, output_bytes=st.st_size, origin="adopted")


def _listdir(path) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except FileNotFoundError:
        return []


def count_by_status(rows) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in rows:
        status = r.get("status", "") if isinstance(r, dict) else r.status
        counts[status] = counts.get(status, 0) + 1
    return counts


# ---------------------------------------------------------------- Snakemake scripts


def part_main(snakemake) -> None:
    """Entry point of rule ``manifest_part``."""
    from .jobs import job_main

    def work():
        started = time.monotonic()
        records = write_part(
            snakemake.config, read_targets(snakemake.input.table), int(snakemake.wildcards.shard), snakemake.output[0]
        )
        print(
            f"manifest part {snakemake.wildcards.shard}: {len(records)} rows in {time.monotonic() - started:.1f}s",
            file=sys.stderr,
        )

    job_main(snakemake, work, name=f"manifest part {snakemake.wildcards.shard}")


def main(snakemake) -> None:
    """Entry point of rule ``manifest``."""
    from .jobs import job_main

    def work():
        decisions = review_decisions.load(config_mod.output_dir(snakemake.config))
        n = concatenate(snakemake.input.parts, snakemake.output[0], decisions)
        print(f"manifest: {snakemake.output[0]} ({n} rows)", file=sys.stderr)

    job_main(snakemake, work, name="manifest")
