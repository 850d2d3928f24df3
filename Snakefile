# Nano Banana Pro augmentation pipeline.
#   snakemake -j 8 --configfile configs/nano_banana_pro_augment.yaml
#   snakemake -j 8 --configfile configs/sample.yaml      (offline sample, no key)
# train.csv -> checkpoint targets -> answer (paid) -> generate (free) -> manifest, summary.

import snakemake as _snakemake
from snakemake.utils import min_version

min_version("9.27.1")
# Tested with 9.27.x; others are refused rather than trusted with money.
if not _snakemake.__version__.startswith("9.27."):
    raise SystemExit(
        f"ERROR: this workflow is tested with Snakemake 9.27.x, not {_snakemake.__version__}: "
        "pip install 'snakemake>=9.27.1,<9.28' (or pip install -e . in this repository)"
    )


configfile: "configs/nano_banana_pro_augment.yaml"


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/targets.smk"
include: "rules/answer.smk"
include: "rules/generate.smk"
include: "rules/manifest.smk"
include: "rules/batch.smk"
include: "rules/extras.smk"


rule all:
    default_target: True
    input:
        settings_files,
        get_final_targets,


onstart:
    on_start()


onsuccess:
    on_end(failed=False)


onerror:
    on_end(failed=True)
