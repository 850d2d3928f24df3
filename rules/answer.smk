# Rule `answer`: buy answer version {version} of one output (the only paid step).
# The record is never deleted by Snakemake (update): a forced or triggered rerun
# finds it and buys nothing. Its image bytes are read-only. No input: nothing
# but a request for a version it does not have makes it run (the job reads
# its image's row of the targets table).


rule answer:
    output:
        update(f"{OUT}/answers/{STEM}/v{{version}}.json"),
    log:
        LOGS / "answer" / f"{STEM}.v{{version}}.log",
    resources:
        api=1,
        runtime=answer_runtime_min(),  # minutes, for cluster schedulers
        mem_mb=1000,
    script:
        "../scripts/answer.py"
