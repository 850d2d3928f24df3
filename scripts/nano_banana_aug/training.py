"""The training-side join: add successful AIGC augmentations to a training split.

Call :func:`add_aigc_samples` on the **training split, after the split** (never
on the full table, never on the validation split).  For every manifest row
that survives the filters below, each row of ``train_df`` that belongs to the
row's ``image_id`` is copied once with ``image_path`` pointing at the
augmented file; labels and every other column are copied unchanged.

Which manifest rows enter, in this order (each skipped row is counted once,
under the first reason that applies; see :class:`AigcJoin.skipped`):

1. ``superseded`` -- only the **last** row (in file order) of each
   ``(image_id, aug_name, variant_idx)`` triple counts.  The original tool's
   ``--force`` appended a new row for the same output file, which it
   overwrote on disk only with a new image, so the last row describes the file
   that is there now -- except a ``failed`` row after a ``success``: that
   retry left the earlier file in place, which still counts (the failed row is
   counted as ``status:failed``); a later ``rejected`` row removes the triple.
   File order, not ``ts``, decides: rows are appended, and clocks can step.
2. ``status:<status>`` -- only ``status == "success"`` enters; ``failed``,
   ``rejected`` (failed the label-safety QC), ``orphaned`` (its augmentation or
   variant is no longer in the workflow's config) and any other status never do;
   ``stale`` -- a row whose ``stale`` column says ``model/prompt`` (made by another
   provider, model or prompt than the config now asks for) does not either;
   ``review:reject`` -- an output a person rejected (manifest column ``review``,
   or ``review.json`` beside the manifest when there is one: the decisions of the
   review page count at once, before the next run rewrites the manifest).
3. ``type_filtered`` -- ``aug_name`` not in ``types`` (null/empty = all).
4. ``not_in_train`` -- ``image_id`` is not an image of ``train_df``
   (validation images, images dropped from the table).
5. ``missing_file`` / ``empty_file`` -- the output file is not on disk (or
   has zero bytes).

Columns of the result (a new frame with a fresh ``RangeIndex``; the original
rows first in their order, then the added rows sorted by ``image_id``,
``aug_name``, ``variant_idx`` and original row order, so a seeded training run
does not depend on the order parallel jobs wrote the manifest in):

- ``image_path`` -- for added rows the augmented file, relative to
  ``data_root`` when it lies under it (an absolute manifest path under
  ``data_root`` is made relative); a file outside ``data_root`` keeps its
  absolute path.  Read images with ``Path(data_root) / image_path``, which
  also works for absolute paths.
- ``sample_id`` -- long format (a ``target_name`` column):
  ``<image_id>__<aug_name>__v<k>__<target_name>``; wide format:
  ``<image_id>__<aug_name>__v<k>``.  Both start with ``<image_id>__``, so a
  grouped split on the prefix keeps an image and its augmentations together.
  A frame without ``sample_id`` gets one (``<image_id>__<target_name>`` or
  ``<image_id>`` for the original rows).
- lineage: ``aug_name`` (NA for originals), ``variant_idx`` (nullable
  ``Int64``, NA for originals), ``src_image_path`` (the source photograph;
  for originals their own ``image_path``, so grouping by it works on every
  row) and ``is_aigc`` (False for originals).
- ``sample_area_m2`` -- originals: ``base_area_m2`` (an existing
  ``sample_area_m2`` column is kept, its missing values filled); added rows:
  the original row's area x the manifest's ``area_scale`` (1.0 when the
  manifest has no ``area_scale`` column or the cell is empty).

No PyTorch here: the module works on pandas frames only.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from . import layout
import yaml

from . import decisions as review_decisions
from .errors import ConfigError, UserError

log = logging.getLogger(__name__)

#: The manifest's first 16 columns, in order (more may follow: provider, qc_* ...).
MANIFEST_COLUMNS = (
    "image_id", "aug_name", "variant_idx", "src_image_path", "image_path", "status",
    "error", "ts", "orig_w", "orig_h", "aspect_w", "aspect_h", "out_w", "out_h",
    "pad_area_px", "area_scale",
)  # fmt: skip
#: Columns the join cannot work without.
REQUIRED_MANIFEST_COLUMNS = ("image_id", "aug_name", "variant_idx", "image_path", "status")
#: Columns added to every row of the result.
LINEAGE_COLUMNS = ("aug_name", "variant_idx", "src_image_path", "is_aigc")
SUCCESS = "success"


class ManifestNotFoundError(UserError):
    """``data.aigc_aug.enabled`` is true but the manifest file does not exist."""


class ManifestError(UserError):
    """The manifest exists but cannot be used (missing columns, bad values)."""


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class AigcConfig:
    """The ``data.aigc_aug`` block of ``configs/train.yaml`` (the seed's contract)."""

    enabled: bool = False
    subdir: str = "nano_banana_pro/train"  # under data_root (or absolute)
    manifest: str = "manifest.csv"  # file name in subdir
    types: tuple[str, ...] | None = None  # None = every aug_name

    @classmethod
    def from_mapping(cls, cfg: Mapping | AigcConfig | None, key: str = "data.aigc_aug") -> AigcConfig:
        """Validate a config mapping (as read from YAML); unknown keys are errors."""
        if isinstance(cfg, AigcConfig):
            return cfg
        if cfg is None:
            return cls()
        if not isinstance(cfg, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {type(cfg).__name__}")
        unknown = sorted(set(cfg) - {"enabled", "subdir", "manifest", "types"})
        if unknown:
            raise ConfigError(f"{key}: unknown key(s) {unknown}; allowed: enabled, subdir, manifest, types")
        enabled = cfg.get("enabled", False)
        if not isinstance(enabled, bool):
            raise ConfigError(f"{key}.enabled: expected true or false, got {enabled!r}")
        for name in ("subdir", "manifest"):
            value = cfg.get(name, getattr(cls, name))
            if not isinstance(value, str) or not value:
                raise ConfigError(f"{key}.{name}: expected a non-empty string, got {value!r}")
        return cls(
            enabled=enabled,
            subdir=cfg.get("subdir", cls.subdir),
            manifest=cfg.get("manifest", cls.manifest),
            types=_parse_types(cfg.get("types"), f"{key}.types"),
        )

    def manifest_path(self, data_root: str | os.PathLike) -> Path:
        """``<data_root>/<subdir>/<manifest>`` (absolute parts win, as in ``Path``)."""
        return Path(data_root) / self.subdir / self.manifest


def _parse_types(types: Any, key: str) -> tuple[str, ...] | None:
    """null / [] / "" -> None (all types); "a" -> ("a",); [a, b] -> ("a", "b")."""
    if types is None or types == "" or types == []:
        return None
    if isinstance(types, str):
        return (types,)
    if isinstance(types, Iterable) and not isinstance(types, Mapping):
        items = tuple(types)
        if all(isinstance(t, str) and t for t in items):
            return items
    raise ConfigError(f"{key}: expected null or a list of augmentation names, got {types!r}")


class TrainConfig(NamedTuple):
    """What :func:`load_train_config` returns; unpacks as a 4-tuple."""

    data_root: Path  # as written (relative paths: to the working directory)
    train_csv: Path  # data_root / data.train_csv (an absolute train_csv wins)
    aigc_cfg: AigcConfig
    base_area_m2: float  # data.quadrat.width_m * data.quadrat.length_m


def load_train_config(path: str | os.PathLike) -> TrainConfig:
    """Read ``configs/train.yaml``: ``(data_root, train_csv, aigc_cfg, base_area_m2)``.

    Relative ``data.root`` is kept relative (to the working directory, as in the
    workflow's config); ``train_csv`` is returned joined to it.
    """
    path = Path(path)
    try:
        cfg = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"training config not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    data = cfg.get("data") if isinstance(cfg, Mapping) else None
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: missing the 'data' mapping")
    root = data.get("root", "data")
    train_csv = data.get("train_csv", "train.csv")
    for key, value in (("data.root", root), ("data.train_csv", train_csv)):
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{path}: {key}: expected a non-empty string, got {value!r}")
    # the original tool's train.yaml block names only data.root and data.aigc_aug: without a
    # quadrat, the CSIRO frame (70 cm x 30 cm); one side alone is a mistake
    quadrat = data.get("quadrat") or {"width_m": 0.7, "length_m": 0.3}
    sides = []
    for side in ("width_m", "length_m"):
        value = quadrat.get(side) if isinstance(quadrat, Mapping) else None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ConfigError(f"{path}: data.quadrat.{side}: expected a positive number, got {value!r}")
        sides.append(float(value))
    data_root = Path(root)
    return TrainConfig(
        data_root=data_root,
        train_csv=data_root / train_csv,
        aigc_cfg=AigcConfig.from_mapping(data.get("aigc_aug")),
        base_area_m2=sides[0] * sides[1],
    )


# --------------------------------------------------------------------------- manifest


def read_manifest(path: str | os.PathLike) -> pd.DataFrame:
    """Read ``manifest.csv`` as text, with the join's columns normalised.

    Every column is read as a string (ids such as ``007`` stay intact, empty
    cells are ``""``).  Added: ``variant_idx`` as nullable ``Int64``,
    ``area_scale`` as float (1.0 when the column is missing or the cell is
    empty; NaN when unparsable -- an error only if that row would be used),
    ``src_image_path`` ("" when missing) and ``manifest_line`` (the row's line
    number in the file, for messages).
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestNotFoundError(
            f"AIGC manifest not found: {path} (data.aigc_aug.enabled is true). Generate the "
            "augmentations first (snakemake), point data.root / data.aigc_aug.subdir / "
            "data.aigc_aug.manifest at it, or set data.aigc_aug.enabled: false."
        )
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise ManifestError(f"{path}: empty file (no header row)") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path}: not a readable CSV: {exc}") from None
    missing = [c for c in REQUIRED_MANIFEST_COLUMNS if c not in df.columns]
    if missing:
        raise ManifestError(f"{path}: missing column(s) {missing}; found {list(df.columns)}")
    for col in ("image_id", "aug_name", "variant_idx", "image_path", "status"):
        df[col] = df[col].str.strip()
    df["variant_idx"] = _to_int(df["variant_idx"])
    if "src_image_path" not in df.columns:
        df["src_image_path"] = ""
    if "area_scale" in df.columns:
        text = df["area_scale"].str.strip()
        df["area_scale"] = pd.to_numeric(text.where(text != "", "1.0"), errors="coerce").astype(float)
    else:
        df["area_scale"] = 1.0
    df["manifest_line"] = np.arange(2, len(df) + 2)
    _apply_review(df, path.parent)
    return df


def _apply_review(df: pd.DataFrame, output_dir: Path) -> None:
    """The ``review`` column from ``review.json`` beside the manifest when there is one, also when
    it holds no decision (a person's decisions, and their undoing, count before the next run
    rewrites the manifest); else as the manifest says (e.g. a manifest moved without it)."""
    if "review" not in df.columns:
        df["review"] = ""
    if not review_decisions.path(output_dir).exists():
        return
    decisions = review_decisions.load(output_dir)
    answer_ids = df["answer_id"] if "answer_id" in df.columns else pd.Series("", index=df.index)
    df["review"] = [
        decisions[stem]["decision"] if review_decisions.applies(decisions.get(stem), aid) else ""
        for stem, aid in zip(
            df["image_id"] + "__" + df["aug_name"] + "__v" + df["variant_idx"].astype(str), answer_ids, strict=True
        )
    ]


def _to_int(text: pd.Series) -> pd.Series:
    """'3' / '3.0' -> 3; anything else -> NA (nullable Int64)."""
    num = pd.to_numeric(text, errors="coerce")
    num = num.where(num == np.floor(num))
    return num.astype("Int64")


# --------------------------------------------------------------------------- pure logic


def image_ids_of(df: pd.DataFrame) -> pd.Series:
    """The image each row of a training frame belongs to (aligned to ``df.index``).

    Precedence, per row: an ``image_id`` column; else the ``sample_id`` up to
    its first ``"__"`` (the data set's ``<image_id>__<target_name>``, and our
    added rows); else the stem of ``image_path`` (``train/ID123.jpg`` ->
    ``ID123``; wide frames without ids).  A ``sample_id`` without ``"__"``
    falls through to ``image_path``, since it may be any per-row key.
    """
    if "image_id" in df.columns:
        ids = df["image_id"].astype("str").replace("", pd.NA)
    else:
        ids = pd.Series(pd.NA, index=df.index, dtype="str")
    if "sample_id" in df.columns:
        sid = df["sample_id"].astype("str")
        has_sep = sid.str.contains("__", regex=False, na=False)
        ids = ids.fillna(sid.str.split("__", n=1).str[0].where(has_sep))
    if "image_path" in df.columns:
        stems = df["image_path"].astype("str").map(lambda p: Path(p).stem if isinstance(p, str) and p else pd.NA)
        ids = ids.fillna(stems.astype("str"))
    bad = ids.isna() | (ids == "")
    if bad.any():
        raise UserError(
            f"train_df: cannot tell the image of {int(bad.sum())} row(s) (e.g. index "
            f"{list(df.index[bad][:3])}): give it an image_id column, sample_ids like "
            "<image_id>__<target_name>, or an image_path column"
        )
    return ids


def normalise_image_path(path: str, data_root: str | os.PathLike) -> str:
    """A manifest ``image_path`` as the training frame stores it.

    Relative paths are relative to ``data_root`` and only tidied (``./a//b`` ->
    ``a/b``).  Absolute paths under ``data_root`` become relative to it
    (also through symlinks); absolute paths elsewhere are kept absolute, since
    ``Path(data_root) / image_path`` still finds them.
    """
    if not os.path.isabs(path):
        return Path(os.path.normpath(path)).as_posix()
    for resolve in (os.path.abspath, os.path.realpath):
        root, target = resolve(data_root), resolve(path)
        if os.path.commonpath([root, target]) == root:
            return Path(os.path.relpath(target, root)).as_posix()
    return os.path.normpath(path)


def select_manifest_rows(
    manifest: pd.DataFrame, train_image_ids: Iterable[str], types: tuple[str, ...] | None
) -> tuple[pd.DataFrame, Counter]:
    """Apply filters 1-4 of the module docstring (all but the file check).

    Returns the surviving rows sorted by ``(image_id, aug_name, variant_idx)``
    and a Counter of skipped rows by reason.  Pure: no file system access.
    """
    skipped: Counter = Counter()
    rows = manifest
    # 1. last row per triple (an unparsable variant_idx keys as "?"; such a row
    #    fails _check_usable if it is the one that would enter); a failed retry
    #    after a success left that success's file in place
    variant_key = rows["variant_idx"].astype("str").fillna("?")
    triple = [rows["image_id"], rows["aug_name"], variant_key]
    success = rows["status"] == SUCCESS
    successes_before = success.astype(int).groupby(triple).cumsum() - success.astype(int)
    failed_retry = ((rows["status"] == "failed") & (successes_before > 0)).to_numpy()
    skipped["status:failed"] = int(failed_retry.sum())
    rows = rows[~failed_retry]
    triple = pd.DataFrame({"i": rows["image_id"], "a": rows["aug_name"], "v": variant_key[~failed_retry]})
    latest = ~triple.duplicated(keep="last").to_numpy()
    skipped["superseded"] = int((~latest).sum())
    rows = rows[latest]
    # 2. status
    ok = (rows["status"] == SUCCESS).to_numpy()
    for status, n in rows.loc[~ok, "status"].value_counts().items():
        skipped[f"status:{status or '(empty)'}"] += int(n)
    rows = rows[ok]
    # 2b. made by another provider, model or prompt than the current config (manifest column `stale`)
    if "stale" in rows.columns:
        current = (rows["stale"].fillna("").astype(str) != "model/prompt").to_numpy()
        skipped["stale"] = int((~current).sum())
        rows = rows[current]
    # 2c. rejected by a person (the review page)
    if "review" in rows.columns:
        kept = (rows["review"] != "reject").to_numpy()
        skipped["review:reject"] = int((~kept).sum())
        rows = rows[kept]
    # 3. types
    if types is not None:
        unknown = sorted(set(types) - set(manifest["aug_name"]))
        if unknown:
            log.warning("data.aigc_aug.types: %s never appear(s) in the manifest's aug_name", unknown)
        keep = rows["aug_name"].isin(types).to_numpy()
        skipped["type_filtered"] = int((~keep).sum())
        rows = rows[keep]
    # 4. only images of the training split
    keep = rows["image_id"].isin(set(train_image_ids)).to_numpy()
    skipped["not_in_train"] = int((~keep).sum())
    rows = rows[keep]
    return rows.sort_values(["image_id", "aug_name", "variant_idx"], kind="stable"), +skipped


def _check_usable(rows: pd.DataFrame, manifest_path: Path) -> None:
    """Rows about to enter training must have a usable variant_idx, area_scale, path."""
    problems = [
        (rows["variant_idx"].isna(), "variant_idx is not an integer"),
        (~(rows["area_scale"] > 0) | ~np.isfinite(rows["area_scale"]), "area_scale is not a positive number"),
        (rows["image_path"] == "", "image_path is empty"),
    ]
    for bad, what in problems:
        if bad.any():
            lines = rows.loc[bad, "manifest_line"].tolist()[:5]
            raise ManifestError(f"{manifest_path}: success row(s) at line(s) {lines}: {what}")


def _locate(path: str, data_root: str | os.PathLike, manifest_dir: Path) -> tuple[str, str | None]:
    """(the path the training frame stores, None if the file is usable else the skip reason).

    A relative ``image_path`` is looked for under ``data_root`` first, then under the manifest's
    own folder (outputs kept outside data_root), then as the file of that name beside the manifest
    (outputs moved together with their manifest, e.g. as a Kaggle dataset: the workflow writes
    each output beside its manifest); found there, the absolute path is stored."""
    for candidate in layout.image_path_candidates(path, manifest_dir):
        try:
            size = os.stat(os.path.join(data_root, candidate)).st_size
        except OSError:
            continue
        return candidate, (None if size > 0 else "empty_file")
    return path, "missing_file"


def _with_lineage(train_df: pd.DataFrame, image_ids: pd.Series, base_area_m2: float) -> pd.DataFrame:
    """A copy of ``train_df`` with the lineage and area columns for original rows."""
    out = train_df.copy()
    if "sample_id" not in out.columns:
        if "target_name" in out.columns:
            out["sample_id"] = image_ids + "__" + out["target_name"].astype("str")
        else:
            out["sample_id"] = image_ids
    out["aug_name"] = pd.Series(pd.NA, index=out.index, dtype="str")
    out["variant_idx"] = pd.Series(pd.NA, index=out.index, dtype="Int64")
    out["src_image_path"] = out["image_path"]
    out["is_aigc"] = False
    if "sample_area_m2" in out.columns:
        out["sample_area_m2"] = out["sample_area_m2"].astype(float).fillna(base_area_m2)
    else:
        out["sample_area_m2"] = float(base_area_m2)
    return out


def build_aigc_rows(originals: pd.DataFrame, image_ids: pd.Series, selected: pd.DataFrame) -> pd.DataFrame:
    """One copy of each original row per selected manifest row of its image.

    ``originals`` is the output of :func:`_with_lineage`; ``selected`` holds
    manifest rows with ``image_path`` already normalised.  Pure.
    """
    left = pd.DataFrame({"key": image_ids.to_numpy(), "pos": np.arange(len(originals))})
    right = pd.DataFrame({"key": selected["image_id"].to_numpy(), "m": np.arange(len(selected))})
    pairs = right.merge(left, on="key", how="inner").sort_values(["m", "pos"], kind="stable")
    rows = originals.iloc[pairs["pos"].to_numpy()].reset_index(drop=True)
    m = selected.iloc[pairs["m"].to_numpy()].reset_index(drop=True)
    stem = m["image_id"] + "__" + m["aug_name"] + "__v" + m["variant_idx"].astype("str")
    long_format = "target_name" in rows.columns
    rows["sample_id"] = stem + "__" + rows["target_name"].astype("str") if long_format else stem
    rows["image_path"] = m["image_path"]
    rows["aug_name"] = m["aug_name"]
    rows["variant_idx"] = m["variant_idx"].astype("Int64")
    src = m["src_image_path"].str.strip()
    rows["src_image_path"] = src.where(src != "", rows["src_image_path"].astype("str"))
    rows["is_aigc"] = True
    rows["sample_area_m2"] = rows["sample_area_m2"].to_numpy() * m["area_scale"].to_numpy()
    return rows


# --------------------------------------------------------------------------- the join


@dataclass
class AigcJoin:
    """The result of :func:`join_aigc`: the frame plus what happened."""

    frame: pd.DataFrame
    manifest_path: Path | None = None
    added_rows: int = 0
    added_files: int = 0  # manifest rows (augmented images) that entered
    per_aug: dict[str, int] = field(default_factory=dict)  # added files per aug_name
    skipped: dict[str, int] = field(default_factory=dict)  # manifest rows by reason

    def summary(self) -> str:
        if self.manifest_path is None:
            return "AIGC join disabled (data.aigc_aug.enabled: false)"
        skipped = ", ".join(f"{k}={v}" for k, v in sorted(self.skipped.items())) or "none"
        return (
            f"AIGC join from {self.manifest_path}: +{self.added_rows} rows from "
            f"{self.added_files} augmented images {self.per_aug}; skipped manifest rows: {skipped}"
        )


def join_aigc(
    train_df: pd.DataFrame,
    data_root: str | os.PathLike,
    aigc_cfg: Mapping | AigcConfig | None,
    base_area_m2: float,
) -> AigcJoin:
    """:func:`add_aigc_samples` plus counts (added per aug_name, skipped by reason)."""
    cfg = AigcConfig.from_mapping(aigc_cfg)
    if not cfg.enabled:
        return AigcJoin(frame=train_df)
    if isinstance(base_area_m2, bool) or not np.isfinite(base_area_m2) or not base_area_m2 > 0:
        raise UserError(f"base_area_m2 must be a positive number of m², got {base_area_m2!r}")
    if "image_path" not in train_df.columns:
        raise UserError("train_df has no image_path column")
    if "is_aigc" in train_df.columns and train_df["is_aigc"].fillna(False).astype(bool).any():
        raise UserError(
            "train_df already contains AIGC rows (is_aigc == True): call add_aigc_samples once, "
            "on the original rows of the training split"
        )
    manifest_path = cfg.manifest_path(data_root)
    manifest = read_manifest(manifest_path)

    image_ids = image_ids_of(train_df)
    selected, skipped = select_manifest_rows(manifest, image_ids, cfg.types)
    _check_usable(selected, manifest_path)
    selected = selected.assign(image_path=[normalise_image_path(p, data_root) for p in selected["image_path"]])
    located = [_locate(p, data_root, manifest_path.parent) for p in selected["image_path"]]
    selected = selected.assign(image_path=[p for p, _ in located])
    state = [reason for _, reason in located]
    for reason in filter(None, state):
        skipped[reason] += 1
    absent = np.array([s is not None for s in state], dtype=bool)
    if absent.any():
        examples = selected.loc[absent, "image_path"].tolist()[:3]
        if absent.all():
            raise ManifestError(
                f"AIGC join: none of the {len(selected)} augmented images of {manifest_path} was found (looked "
                f"under data_root {data_root} and under the manifest's folder), e.g. {examples}: point "
                "data.root / data.aigc_aug.subdir at where the outputs are now"
            )
        log.warning(
            "AIGC join: %d output file(s) missing or empty (relative paths are under data_root %s or the "
            "manifest's folder), e.g. %s", absent.sum(), data_root, examples,
        )  # fmt: skip
    selected = selected.loc[~absent]

    originals = _with_lineage(train_df, image_ids, float(base_area_m2))
    added = build_aigc_rows(originals, image_ids.reset_index(drop=True), selected)
    clash = added["sample_id"].duplicated(keep=False) | added["sample_id"].isin(originals["sample_id"])
    if clash.any():
        raise UserError(
            f"AIGC join: added sample_ids are not unique, e.g. {added.loc[clash, 'sample_id'].tolist()[:3]}; "
            "a wide frame needs one row per image, a long frame one row per (image, target_name)"
        )
    frame = pd.concat([originals, added], ignore_index=True)
    result = AigcJoin(
        frame=frame,
        manifest_path=manifest_path,
        added_rows=len(added),
        added_files=len(selected),
        per_aug={str(k): int(v) for k, v in selected["aug_name"].value_counts().sort_index().items()},
        skipped=dict(sorted(skipped.items())),
    )
    log.info("%s", result.summary())
    return result


def add_aigc_samples(
    train_df: pd.DataFrame,
    data_root: str | os.PathLike,
    aigc_cfg: Mapping | AigcConfig | None,
    base_area_m2: float,
) -> pd.DataFrame:
    """Return ``train_df`` plus one copy of its rows per usable augmented image.

    ``aigc_cfg`` is the ``data.aigc_aug`` mapping of ``configs/train.yaml`` (or
    an :class:`AigcConfig`).  With ``enabled: false`` the very same object is
    returned, untouched (not a copy) and the manifest is not read.  With
    ``enabled: true`` a new frame is returned (see the module docstring for
    its columns); a missing manifest raises :class:`ManifestNotFoundError`.
    Works on long (one row per target) and wide (one row per image) frames.
    Counts of added and skipped rows are logged; :func:`join_aigc` returns them.
    """
    return join_aigc(train_df, data_root, aigc_cfg, base_area_m2).frame
