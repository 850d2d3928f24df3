# Snakemake script of rule manifest_part (rules/manifest.smk): the rows of one shard.
# ruff: noqa: F821 (Snakemake puts `snakemake` into the script's globals)
import sys

sys.path.insert(0, snakemake.scriptdir)  # this checkout's package
from nano_banana_aug.manifest import part_main

part_main(snakemake)
