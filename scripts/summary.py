# Snakemake script of rule summary (rules/manifest.smk): the run summary page.
# ruff: noqa: F821 (Snakemake puts `snakemake` into the script's globals)
import sys

sys.path.insert(0, snakemake.scriptdir)  # this checkout's package
from nano_banana_aug.report import main

main(snakemake)
