# Snakemake script of rule generate (rules/generate.smk): build one output from its answer.
# ruff: noqa: F821 (Snakemake puts `snakemake` into the script's globals)
import sys

sys.path.insert(0, snakemake.scriptdir)  # this checkout's package
from nano_banana_aug.generate import main

main(snakemake)
