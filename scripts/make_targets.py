# Snakemake script of checkpoint targets (rules/targets.smk): the images to augment.
# ruff: noqa: F821 (Snakemake puts `snakemake` into the script's globals)
import sys

sys.path.insert(0, snakemake.scriptdir)  # this checkout's package
from nano_banana_aug.targets import checkpoint_main

checkpoint_main(snakemake)
