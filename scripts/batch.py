# Snakemake script of checkpoint batch (rules/batch.smk): answers through the Gemini Batch API.
import sys

sys.path.insert(0, snakemake.scriptdir)  # this checkout's package
from nano_banana_aug.batch import main

main(snakemake)
