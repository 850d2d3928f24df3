# Snakemake script of rule settings (rules/targets.smk): the settings outputs depend on.
import sys

sys.path.insert(0, snakemake.scriptdir)  # this checkout's package
from nano_banana_aug.config import settings_main

settings_main(snakemake)
