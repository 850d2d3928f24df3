# Batch mode (api.mode: batch): one job per run submits the targets that need a
# paid answer to the Gemini Batch API (half price), polls, and puts the answers
# into the answer store; every output is then made by its own generate job from
# the stored answer (0 calls). A local rule: on a cluster it runs on the submit
# host and never holds a compute node while a batch is waiting.
# The checkpoint's outcome decides which generate jobs run: targets whose batch
# is still running (api.batch.wait: false) wait for the next run.


checkpoint batch:
    input:
        targets=TARGETS_CSV,
        run=RUN_MARK,
    output:
        BATCH_OUTCOME,
    log:
        runs.run_dir(OUT, RUN_ID) / "batch.log",
    localrule: True
    params:
        python=PYTHON,
        script=entry_point("batch.py"),
        run_config=Path(RUN_CONFIG),
    message:
        "Gemini Batch API: submitting, polling and collecting (see augment.log)"
    shell:
        logged(
            "{params.python:q} {params.script:q} --config-json {params.run_config:q}"
            " --targets {input.targets:q} --output {output:q}"
        )
