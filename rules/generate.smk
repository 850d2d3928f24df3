# One job per output image: provider call, post-processing, output + sidecar.
# Inputs are existence-only (ancient) and there are no params, so editing
# train.csv, the config, the prompts or the code never reruns a finished
# output; `regenerate` (config) or --forcerun does.


rule generate:
    input:
        src=get_source_image,
        stamp=get_regenerate_stamp,
    output:
        f"{OUT}/{{image_id}}__{{aug}}__v{{k}}.{EXT}",
    resources:
        api=API_SLOTS_PER_JOB,
        runtime=GENERATE_RUNTIME_MIN,  # minutes, for cluster schedulers
        mem_mb=1500,
    shell:
        "python {workflow.basedir}/scripts/generate.py --config-json {CONFIG_JSON:q} --targets {TARGETS_CSV:q}"
        " --image-id {wildcards.image_id:q} --aug {wildcards.aug:q} --variant {wildcards.k} --output {output:q}"
