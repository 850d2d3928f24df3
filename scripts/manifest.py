# Snakemake script of rule manifest (rules/manifest.smk): manifest.csv from its parts.
# ruff: noqa: F821 (Snakemake puts `snakemake` into the script's globals)
import sys

sys.path.insert(0, snakemake.scriptdir)  # this checkout's package
from nano_banana_aug.manifest import main

main(snakemake)
