# Snakemake script of rule settings (rules/targets.smk): the settings outputs depend on.
# ruff: noqa: F821 (Snakemake puts `snakemake` into the script's globals)
import sys

sys.path.insert(0, snakemake.scriptdir)  # this checkout's package
from nano_banana_aug.pipeline import settings_main

settings_main(snakemake)
