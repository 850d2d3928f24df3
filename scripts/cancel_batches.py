# Snakemake script of rule cancel_batches (rules/batch.smk): cancel open batch jobs.
# ruff: noqa: F821 (Snakemake puts `snakemake` into the script's globals)
import sys

sys.path.insert(0, snakemake.scriptdir)  # this checkout's package
from nano_banana_aug.batch import cancel_main

cancel_main(snakemake)
