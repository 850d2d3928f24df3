# Snakemake script of rule manifest_part (rules/manifest.smk): the rows of one shard.
import sys

sys.path.insert(0, snakemake.scriptdir)  # this checkout's package
from nano_banana_aug.manifest import part_main

part_main(snakemake)
