# Snakemake script of rule prune_answers (rules/extras.smk): delete superseded answer images.
# ruff: noqa: F821 (Snakemake puts `snakemake` into the script's globals)
import sys

sys.path.insert(0, snakemake.scriptdir)  # this checkout's package
from nano_banana_aug.prune import main

main(snakemake)
