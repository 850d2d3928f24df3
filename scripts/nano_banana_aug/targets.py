"""Checkpoint `targets`: which images of train.csv get augmented.

``image_id`` is ``sample_id`` up to the first ``__``.  An image is kept when
every ``data.primary_targets`` entry has a row with a non-null ``target``.
Each kept image's source file is checked here, once: a path that resolves
outside ``data_root`` is never opened; a missing or unreadable file is
recorded with its reason so its generate jobs fail with a clear message
instead of reading (or sending) anything.
"""

from __future__ import annotations

import csv
import io
import os
import re
from dataclasses import dataclass, fields
from pathlib import Path

from .errors import UserError
from .fileio import atomic_write_text

REQUIRED_COLUMNS = ("sample_id", "image_path", "target_name", "target")


@dataclass
class Target:
    """One source image to augment (a row of targets.csv)."""

    image_id: str
    image_path: str  # as written in train.csv (relative to data_root)
    source: str  # resolved path of the file (absolute)
    row: int  # first train.csv line (1-based, header = line 1) of this image
    width: int = 0
    height: int = 0
    problem: str = ""  # empty when the source is usable


COLUMNS = [f.name for f in fields(Target)]


def read_train_csv(path):
    """Read train.csv with pandas and check its columns (clear error naming the file)."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: train.csv not found (data.data_root / data.train_csv)")
    try:
        df = pd.read_csv(path, dtype={"sample_id": str, "image_path": str, "target_name": str})
    except Exception as exc:  # pandas raises several parser error types
        raise UserError(f"{path}: cannot be read as CSV: {exc}") from exc
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise UserError(f"{path}: missing column(s) {', '.join(missing)}; found {', '.join(map(str, df.columns))}")
    df["target"] = pd.to_numeric(df["target"], errors="coerce")
    return df


def select_images(df, primary_targets) -> list[tuple[str, str, int]]:
    """(image_id, image_path, first line) of images having every primary target, sorted by image_id."""
    import pandas as pd

    df = df.assign(_line=range(2, len(df) + 2))
    bad = df["sample_id"].isna() | df["image_path"].isna()
    if bad.any():
        line = int(df.loc[bad, "_line"].iloc[0])
        raise UserError(f"train.csv line {line}: empty sample_id or image_path")
    df = df.assign(image_id=df["sample_id"].str.split("__", n=1).str[0])
    have = df[df["target_name"].isin(primary_targets) & df["target"].notna()]
    counts = have.groupby("image_id")["target_name"].nunique()
    keep = set(counts[counts == len(set(primary_targets))].index)
    first = df[df["image_id"].isin(keep)].groupby("image_id", sort=True).first()
    return [(str(i), str(r.image_path), int(r._line)) for i, r in first.iterrows() if not pd.isna(r.image_path)]


def check_source(data_root, image_path: str, *, decode: bool = False, cache: dict | None = None) -> tuple[str, str, int, int]:
    """Resolve and check one source image.

    With ``decode`` the whole file is decoded (JPEG at reduced scale, which
    still reads every byte of the compressed data), so a truncated or corrupt
    file is found here and never sent; ``cache`` maps a resolved path to the
    verdict for a (size, mtime) already checked.  Without ``decode`` only the
    header is read.  Returns (resolved path, problem, width, height); problem
    is "" when usable.
    """
    root = Path(data_root).resolve()
    resolved = (root / image_path).resolve()
    if not resolved.is_relative_to(root):
        return str(resolved), f"path resolves outside data_root ({root}): {image_path}", 0, 0
    if not resolved.is_file():
        return str(resolved), f"source image missing: {resolved}", 0, 0
    if not os.access(resolved, os.R_OK):
        return str(resolved), f"source image unreadable (permission denied): {resolved}", 0, 0
    from PIL import Image, UnidentifiedImageError

    st = resolved.stat()
    stamp = [st.st_size, st.st_mtime_ns]
    if decode and cache is not None and cache.get(str(resolved), [None])[:2] == stamp:
        _size, _mtime, problem, w, h = cache[str(resolved)]
        return str(resolved), problem, w, h
    try:
        with Image.open(resolved) as im:
            w, h = im.size
            if decode:
                im.draft("RGB", (max(1, w // 8), max(1, h // 8)))
                im.load()
        problem = ""
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        problem, w, h = f"source image unreadable ({exc.__class__.__name__}: {exc}): {resolved}", 0, 0
    if decode and cache is not None:
        cache[str(resolved)] = [*stamp, problem, int(w), int(h)]
    return str(resolved), problem, int(w), int(h)


_BAD_ID = re.compile(r"^-|[{}/\\\s]|__")
BAD_ID_PROBLEM = "image id cannot name an output file"


def id_problem(image_id: str) -> str:
    """Why an image id cannot be part of output file names ("" = it can): braces (Snakemake
    wildcards), '/', whitespace, '__' (the stem separator) or a leading '-' (an option)."""
    if _BAD_ID.search(image_id) or not image_id:
        return (f"{BAD_ID_PROBLEM} ({image_id!r}: no '{{', '}}', '/', '\\', whitespace or '__', "
                "and no leading '-'); rename it in train.csv")
    return ""


def build_targets(train_csv, data_root, primary_targets, cache_path=None) -> list[Target]:
    """The checkpoint's rows; every source decoded once (verdicts cached by size and mtime)."""
    import json

    df = read_train_csv(train_csv)
    cache = {}
    if cache_path is not None:
        try:
            cache = json.loads(Path(cache_path).read_text())
        except (OSError, ValueError):
            cache = {}
    out = []
    for image_id, image_path, line in select_images(df, list(primary_targets)):
        bad_id = id_problem(image_id)
        if bad_id:
            out.append(Target(image_id, image_path, "", line, 0, 0, bad_id))
            continue
        source, problem, w, h = check_source(data_root, image_path, decode=True, cache=cache)
        out.append(Target(image_id, image_path, source, line, w, h, problem))
    if cache_path is not None:
        atomic_write_text(cache_path, json.dumps(cache), durable=False)
    return out


def write_targets(targets: list[Target], path) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for t in targets:
        writer.writerow(t.__dict__)
    atomic_write_text(path, buf.getvalue())


def _target_from_row(r: dict) -> Target:
    return Target(r["image_id"], r["image_path"], r["source"], int(r["row"]), int(r["width"]), int(r["height"]), r["problem"])


def read_targets(path) -> list[Target]:
    """Read targets.csv (plain csv module: cheap enough to call from every job)."""
    with open(path, newline="", encoding="utf-8") as fh:
        return [
            _target_from_row(r)
            for r in csv.DictReader(fh)
        ]


def find_target(path, image_id: str) -> Target | None:
    try:
        fh = open(path, newline="", encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: targets table not found; run the whole pipeline (checkpoint `targets`) first") from None
    with fh:
        for r in csv.DictReader(fh):
            if r["image_id"] == image_id:
                return _target_from_row(r)
    return None


def main(argv=None) -> int:
    """Entry point of the checkpoint: make_targets.py --config-json C --output O."""
    import argparse

    from . import config as config_mod

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config-json", required=True)
    ap.add_argument("--output", required=True)
    args = ap.parse_args(argv)
    cfg = config_mod.read_effective_config(args.config_json)
    from . import layout

    targets = build_targets(config_mod.train_csv_path(cfg), config_mod.data_root(cfg), cfg["data"]["primary_targets"],
                            cache_path=layout.pipeline_dir(cfg["data"]["output_dir"]) / "source_checks.json")
    write_targets(targets, args.output)
    record_bad_ids(cfg, targets)
    bad = [t for t in targets if t.problem]
    print(f"targets: {len(targets)} images with {', '.join(cfg['data']['primary_targets'])}; {len(bad)} unusable")
    for t in bad:
        print(f"  train.csv line {t.row}, image {t.image_id}: {t.problem}")
    return 0


def record_bad_ids(cfg: dict, targets: list[Target]) -> None:
    """Targets whose image id cannot name a file get no job: a failed sidecar per output
    records them (the manifest lists them, nothing is lost silently)."""
    import time

    from . import config as config_mod
    from . import layout, sidecar

    out = config_mod.output_dir(cfg)
    for t in targets:
        if not t.problem.startswith(BAD_ID_PROBLEM):
            continue
        for aug in cfg["augmentations"]:
            for k in range(int(aug.get("num_images", 1))):
                rec = sidecar.Record(t.image_id, aug["name"], k, src_image_path=t.image_path, status="failed",
                                     error=f"train.csv line {t.row}: {t.problem}", error_reason="BAD_IMAGE_ID",
                                     ts=time.time())
                path = layout.sidecar_dir(out) / f"{layout.stem(t.image_id, aug['name'], k).replace('/', '%2F')}.json"
                sidecar.write(rec, path)


# ---- Snakemake's --batch over a large data set ----
#: The rule to batch over: it aggregates every output and its output is new every
#: run (a batch whose aggregate output already exists would run nothing).
BATCH_RULE = "all_outputs"


def dag_batch_arg(argv) -> str | None:
    """The value of Snakemake's ``--batch RULE=i/n`` on this command line, or None.

    The rules are shaped before Snakemake hands the workflow its DAG settings, so
    the command line is the only place this can be known that early."""
    argv = list(argv)
    for i, arg in enumerate(argv):
        if arg == "--batch":
            return argv[i + 1] if i + 1 < len(argv) else ""
        if arg.startswith("--batch="):
            return arg.split("=", 1)[1]
    return None


def check_dag_batch(spec: str, table, train_csv, settings, configfiles: str = "", api_batch: bool = False) -> None:
    """A batched run (``--batch all_outputs=i/n``) reads the targets table an earlier run
    made: Snakemake drops the jobs behind a checkpoint when it batches. The table must
    exist and be current (newer than train.csv, made with the current data settings)."""
    rule = spec.split("=", 1)[0]
    if rule != BATCH_RULE:
        raise UserError(f"--batch {spec}: batch over the rule {BATCH_RULE!r} (--batch {BATCH_RULE}=1/N, then 2/N ... N/N); "
                        f"it collects every output and is new every run")
    if api_batch:
        raise UserError(f"--batch {spec} does not combine with api.mode: batch (the Gemini Batch API has its own "
                        "checkpoint, which Snakemake's --batch cannot follow); run without --batch, or with api.mode: call")
    table, train_csv, settings = Path(table), Path(train_csv), Path(settings)
    first = f"make it first with: snakemake {table} {configfiles}".rstrip()
    if not table.is_file() or table.stat().st_size == 0:
        raise UserError(f"--batch needs the targets table (checkpoint `targets`), which is not there: {first}")
    if not settings.is_file():
        raise UserError(f"--batch: {table} was made with other data settings (data_root, train_csv or "
                        f"primary_targets changed): {first}")
    if train_csv.is_file() and train_csv.stat().st_mtime > table.stat().st_mtime:
        raise UserError(f"--batch: {train_csv} is newer than the targets table {table}: {first}")
