#!/usr/bin/env python
"""Example: add the successful AIGC augmentations to a training split.

    python scripts/example_training_join.py                       # bundled sample
    python scripts/example_training_join.py --data-root data      # the real data
    python scripts/example_training_join.py --data-root /tmp/d --manifest-dir /tmp/d/out

What a DataModule's ``setup()`` does, without PyTorch: load ``train.csv``,
split it into train/val **by image** (every row of an image on one side), then
call ``add_aigc_samples`` on the training split only, print what entered and
what was skipped, and check that no validation image's augmentation entered.

The join is switched on here whatever ``data.aigc_aug.enabled`` says in the
config (showing it is the point); ``subdir``, ``manifest`` and ``types`` are
taken from the config unless overridden.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from nano_banana_aug.errors import UserError
from nano_banana_aug.training import image_ids_of, join_aigc, load_train_config

REPO = Path(__file__).resolve().parents[1]


def grouped_split(df: pd.DataFrame, val_fraction: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split by image: a seeded random ``val_fraction`` of the images goes to validation."""
    ids = image_ids_of(df)
    images = np.sort(ids.unique())
    n_val = int(round(val_fraction * len(images)))
    if len(images) > 1:
        n_val = min(max(n_val, 1), len(images) - 1)  # both sides non-empty
    val_ids = set(np.random.default_rng(seed).permutation(images)[:n_val])
    is_val = ids.isin(val_ids).to_numpy()
    return df[~is_val].reset_index(drop=True), df[is_val].reset_index(drop=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--config", type=Path, default=REPO / "configs" / "train.yaml", help="training config (default: %(default)s)"
    )
    p.add_argument(
        "--data-root",
        type=Path,
        default=REPO / "data" / "sample",
        help="data root with train.csv (default: %(default)s)",
    )
    p.add_argument(
        "--manifest-dir",
        type=Path,
        default=None,
        help="directory holding the manifest (default: <data-root>/<data.aigc_aug.subdir>)",
    )
    p.add_argument("--types", nargs="*", default=None, help="only these aug_names (default: data.aigc_aug.types)")
    p.add_argument("--val-fraction", type=float, default=None, help="default: training.val_fraction")
    p.add_argument("--seed", type=int, default=None, help="default: training.seed")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the example; a UserError (bad config, missing manifest) is one line on stderr, exit 2."""
    args = parse_args(argv)
    try:
        return run(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def check(ok: bool, message: str) -> None:
    """Like assert, but not stripped by python -O."""
    if not ok:
        raise SystemExit(f"check failed: {message}")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    _, _, aigc_cfg, base_area_m2 = load_train_config(args.config)  # validates the config
    raw = yaml.safe_load(args.config.read_text(encoding="utf-8"))
    training = raw.get("training") or {}
    val_fraction = args.val_fraction if args.val_fraction is not None else training.get("val_fraction", 0.2)
    seed = args.seed if args.seed is not None else training.get("seed", 0)
    if not 0 <= val_fraction < 1:
        raise UserError(f"val_fraction must be in [0, 1), got {val_fraction}")

    data_root = args.data_root  # data.train_csv is relative to it (or absolute)
    train_csv = data_root / raw["data"].get("train_csv", "train.csv")
    changes = {"enabled": True}
    if args.manifest_dir is not None:
        changes["subdir"] = os.path.abspath(args.manifest_dir)
    if args.types is not None:
        changes["types"] = tuple(args.types) or None
    aigc_cfg = dataclasses.replace(aigc_cfg, **changes)

    df = pd.read_csv(train_csv)
    train_df, val_df = grouped_split(df, val_fraction, seed)
    join = join_aigc(train_df, data_root, aigc_cfg, base_area_m2)  # add_aigc_samples + counts
    out = join.frame

    train_ids, val_ids = set(image_ids_of(train_df)), set(image_ids_of(val_df))
    print(f"train.csv: {train_csv} ({len(df)} rows, {len(train_ids | val_ids)} images)")
    print(
        f"split (val_fraction={val_fraction}, seed={seed}): "
        f"train {len(train_df)} rows / {len(train_ids)} images, val {len(val_df)} rows / {len(val_ids)} images"
    )
    print(f"manifest: {join.manifest_path}")
    print(
        f"train rows: {len(train_df)} before, {len(out)} after "
        f"(+{join.added_rows} rows from {join.added_files} augmented images)"
    )
    print("added per aug_name:")
    aigc = out[out["is_aigc"]]
    for aug, rows in aigc.groupby("aug_name", sort=True):
        print(
            f"  {aug}: {join.per_aug[aug]} augmented images of {rows['src_image_path'].nunique()} "
            f"source images, {len(rows)} rows"
        )
    if aigc.empty:
        print("  (none)")
    print("skipped manifest rows:", ", ".join(f"{k}={v}" for k, v in join.skipped.items()) or "none")

    # the guarantees a grouped training set relies on
    prefix = aigc["sample_id"].str.split("__", n=1).str[0]
    leaked = set(prefix) & val_ids
    check(not leaked, f"validation images' augmentations entered training: {sorted(leaked)[:5]}")
    check(set(prefix) <= train_ids, "added rows of images outside the training split")
    originals = out.loc[~out["is_aigc"], "sample_id"]
    check(aigc["sample_id"].is_unique and not aigc["sample_id"].isin(originals).any(), "added sample_ids not unique")
    if join.added_files == 0:
        print("error: no augmented image entered the training split (see the skipped rows above)", file=sys.stderr)
        return 1
    print("OK: no validation image's augmentation entered the training split")
    return 0


if __name__ == "__main__":
    sys.exit(main())
