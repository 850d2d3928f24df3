# Nano Banana Pro augmentation pipeline.
#   snakemake -j 8 --configfile configs/nano_banana_pro_augment.yaml
#   snakemake -j 8 --configfile configs/sample.yaml      (offline sample, no key)
# train.csv -> checkpoint `targets` -> one `generate` job per output -> `manifest`.

from snakemake.utils import min_version

min_version("9.14.1")


configfile: "configs/nano_banana_pro_augment.yaml"


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/run.smk"
include: "rules/targets.smk"
include: "rules/batch.smk"
include: "rules/generate.smk"
include: "rules/manifest.smk"
include: "rules/gallery.smk"
include: "rules/answers.smk"


rule all:
    default_target: True
    input:
        get_final_targets,


onstart:
    start_run()


onsuccess:
    finish_run(failed=False)


onerror:
    finish_run(failed=True)
