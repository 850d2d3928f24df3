# Snakemake script of rule answer (rules/answer.smk): buy one answer.
# ruff: noqa: F821 (Snakemake puts `snakemake` into the script's globals)
import sys

sys.path.insert(0, snakemake.scriptdir)  # this checkout's package
from nano_banana_aug.answer import main

main(snakemake)
