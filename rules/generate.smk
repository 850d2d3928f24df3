# One job per output image: provider call, post-processing, output + sidecar.
# No input can trigger a rerun by its timestamp and there are no params, so
# editing train.csv, the sources, the config, the prompts or the code never
# reruns a finished output; `regenerate`, `redo_rejected` or --forcerun does.
# The source image is read (and checked again) by generate.py itself.


rule generate:
    input:
        targets=ancient(TARGETS_CSV),  # the checkpoint's table (the job reads its row; never a rerun trigger)
        stamp=REGENERATE_STAMP,
        redo=REDO_STAMP,
    output:
        f"{OUT}/{{image_id}}__{{aug}}__v{{k}}.{EXT}",
    resources:
        api=API_SLOTS_PER_JOB,
        runtime=GENERATE_RUNTIME_MIN,  # minutes, for cluster schedulers
        mem_mb=1500,
    shell:
        "python {workflow.basedir}/scripts/generate.py --config-json {CONFIG_JSON:q} --targets {TARGETS_CSV:q}"
        " --image-id {wildcards.image_id:q} --aug {wildcards.aug:q} --variant {wildcards.k} --output {output:q}"
