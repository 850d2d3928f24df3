#!/usr/bin/env python
"""Thin entry point: (re)generate the synthetic sample data set (see nano_banana_aug.sample_data).

python scripts/make_sample_data.py                  # writes data/sample/train.csv + data/sample/train/*.jpg
python scripts/make_sample_data.py --out /tmp/s -n 4
"""

from __future__ import annotations

import argparse
import sys
import time

from nano_banana_aug.sample_data import DEFAULT_SEED, make_sample


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="data/sample", help="output directory (default data/sample)")
    ap.add_argument("-n", "--n-images", type=int, default=8, help="number of images (default 8)")
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"seed (default {DEFAULT_SEED})")
    args = ap.parse_args(argv)
    started = time.monotonic()
    table = make_sample(args.out, n_images=args.n_images, seed=args.seed)
    n = table["sample_id"].str.split("__").str[0].nunique()
    print(f"wrote {args.out}/train.csv ({len(table)} rows) and {n} images in {time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
