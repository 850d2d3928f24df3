# One job per output image: decide, maybe pay, keep the answer, post-process,
# write output + sidecar (nano_banana_aug.generate).
#
# Paying is decided by the job itself, under the target's lock, so that no
# rerun Snakemake decides on for its own reasons (edited rules, changed
# parameters, --rerun-triggers, a duplicate run) can pay twice: such a job
# finds its output done and changes nothing. The output is update(): Snakemake
# never deletes it before the job, so an old paid output stays until its
# replacement is complete (and is restored if the job fails).


rule generate:
    input:
        # the checkpoint's table (the job reads its row; never a rerun trigger)
        targets=TARGETS_INPUT,
        trigger=GENERATE_TRIGGER,  # this run's start mark, for outputs that must be redone now
    output:
        update(f"{OUT}/{{image_id}}__{{aug}}__v{{k}}.{EXT}"),
    log:
        f"{LOG_DIR}/generate/{{image_id}}__{{aug}}__v{{k}}.log",
    resources:
        api=API_SLOTS_PER_JOB,
        runtime=GENERATE_RUNTIME_MIN,  # minutes, for cluster schedulers
        mem_mb=1500,
    params:
        python=PYTHON,
        script=entry_point("generate.py"),
        run_config=Path(RUN_CONFIG),
        table=Path(TARGETS_CSV),
    shell:
        logged(
            "{params.python:q} {params.script:q} --config-json {params.run_config:q}"
            " --targets {params.table:q} --image-id {wildcards.image_id:q} --aug {wildcards.aug:q}"
            " --variant {wildcards.k} --output {output:q}"
        )
