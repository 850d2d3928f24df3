# Snakemake script of rule cancel_batches (rules/batch.smk): cancel open batch jobs.
import sys

sys.path.insert(0, snakemake.scriptdir)  # this checkout's package
from nano_banana_aug.batch import cancel_main

cancel_main(snakemake)
