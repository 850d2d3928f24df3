# Batch mode (api.mode: batch): one local job submits every answer this run
# needs to the Gemini Batch API (half price), polls, and stores the answers as
# rule `answer` would; each output is then built by its own generate job. Its
# file name carries the set of answers it waits for and the state of open
# batches, so it runs again only while something is missing or pending.


checkpoint batch:
    input:
        table=ancient(PIPE.table),
    output:
        f"{OUT}/.pipeline/batches/round-{{key}}.json",
    log:
        LOGS / "batch-{key}.log",
    localrule: True
    message:
        "Gemini Batch API: submitting, polling and collecting (see augment.log)"
    script:
        "../scripts/batch.py"


rule cancel_batches:
    output:
        touch(layout.run_dir(OUT, RUN_ID) / "batches_cancelled"),  # an action: runs whenever asked for
    log:
        layout.run_dir(OUT, RUN_ID) / "cancel_batches.log",
    localrule: True
    message:
        f"Cancelling the open Gemini batch jobs of {OUT}"
    script:
        "../scripts/cancel_batches.py"
