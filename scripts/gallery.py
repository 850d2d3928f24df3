# Snakemake script of rule report_gallery (rules/extras.smk): the review page.
# ruff: noqa: F821 (Snakemake puts `snakemake` into the script's globals)
import sys

sys.path.insert(0, snakemake.scriptdir)  # this checkout's package
from nano_banana_aug.gallery import main

main(snakemake)
