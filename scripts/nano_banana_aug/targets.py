"""Checkpoint `targets`: which images of train.csv get augmented.

``image_id`` is ``sample_id`` up to the first ``__``.  An image is kept when
every ``data.primary_targets`` entry has a row with a non-null ``target``.
Each kept image's source file is checked here, once: a path that resolves
outside ``data_root`` is never opened; a missing, unreadable or undecodable
file is recorded with its reason, and such an image gets no job (nothing is
read or sent; the manifest lists its outputs as failed).  The table's file
name carries a hash of everything it depends on (``data_root``,
``train_csv``, ``primary_targets``, ``limit`` and the content of
train.csv), so it is made again whenever one of them changes.
"""

from __future__ import annotations

import csv
import io
import os
import re
import sys
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
        raise UserError(f"{path}: cannot be read as CSV: {' '.join(str(exc).split())}") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise UserError(
            f"{path}: missing column(s) {', '.join(missing)}; found {', '.join(map(str, df.columns))}; "
            "train.csv must be in the long format (sample_id, image_path, target_name, target)"
        )

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


def check_source(
    data_root, image_path: str, *, decode: bool = False, cache: dict | None = None
) -> tuple[str, str, int, int]:
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
        if Path(os.path.normpath(root / image_path)).is_relative_to(root):
            problem = (
                f"{image_path} is a symlink (or lies below one) leading outside data_root ({root}) "
                f"to {resolved}: sources are read only inside data_root (move or copy the images "
                "under it, or make data_root the directory that holds them and train.csv)"
            )
        else:
            problem = f"path resolves outside data_root ({root}): {image_path}"
        return str(resolved), problem, 0, 0
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
        return (
            f"{BAD_ID_PROBLEM} ({image_id!r}: no '{{', '}}', '/', '\\', whitespace or '__', "
            "and no leading '-'); rename it in train.csv"
        )
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
    return Target(
        r["image_id"], r["image_path"], r["source"], int(r["row"]), int(r["width"]), int(r["height"]), r["problem"]
    )


def read_targets(path) -> list[Target]:
    """Read targets.csv (plain csv module: cheap enough to call from every job)."""
    with open(path, newline="", encoding="utf-8") as fh:
        return [_target_from_row(r) for r in csv.DictReader(fh)]


def find_target(path, image_id: str) -> Target | None:
    try:
        fh = open(path, newline="", encoding="utf-8")
    except FileNotFoundError:
        raise UserError(
            f"{path}: targets table not found; run the whole pipeline (checkpoint `targets`) first"
        ) from None
    with fh:
        for r in csv.DictReader(fh):
            if r["image_id"] == image_id:
                return _target_from_row(r)
    return None


def make_table(cfg: dict, output) -> list[Target]:
    """Checkpoint `targets`: every image with the primary targets, with its source check."""
    from . import config as config_mod
    from . import layout

    targets = build_targets(
        config_mod.train_csv_path(cfg),
        config_mod.data_root(cfg),
        cfg["data"]["primary_targets"],
        cache_path=layout.pipeline_dir(cfg["data"]["output_dir"]) / "source_checks.json",
    )
    write_targets(targets, output)
    return targets


def describe(targets: list[Target], primary_targets) -> list[str]:
    """The checkpoint's report: one line, then one per unusable image."""
    bad = [t for t in targets if t.problem]
    lines = [f"targets: {len(targets)} images with {', '.join(primary_targets)}; {len(bad)} unusable"]
    lines += [f"  train.csv line {t.row}, image {t.image_id}: {t.problem}" for t in bad]
    return lines


def checkpoint_main(snakemake) -> None:
    """Entry point of checkpoint ``targets`` (``script:``)."""
    from .jobs import job_main

    def work():
        cfg = snakemake.config
        targets = make_table(cfg, snakemake.output[0])
        if not targets:
            if read_train_csv(snakemake.input[0]).empty:
                raise UserError(f"{snakemake.input[0]}: has a header and no rows: nothing to augment")
            raise UserError(
                f"{snakemake.input[0]}: no image has every primary target "
                f"({', '.join(cfg['data']['primary_targets'])}): nothing to augment; "
                "check data.primary_targets and the target_name / target columns"
            )
        print("\n".join(describe(targets, cfg["data"]["primary_targets"])), file=sys.stderr)

    job_main(snakemake, work, name="targets")
