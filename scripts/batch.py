# Snakemake script of checkpoint batch (rules/batch.smk): answers through the Gemini Batch API.
# ruff: noqa: F821 (Snakemake puts `snakemake` into the script's globals)
import sys

sys.path.insert(0, snakemake.scriptdir)  # this checkout's package
from nano_banana_aug.batch import main

main(snakemake)
