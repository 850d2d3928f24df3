# manifest.csv: one part per shard of outputs (an aggregate over 10^5 files in
# one job is slow in Snakemake), concatenated. The end-of-run hook rebuilds it
# too when some job failed (these rules cannot run then).


rule manifest_part:
    input:
        shard_outputs,
        table=ancient(PIPE.table),
        settings=PIPE.manifest_settings,  # the rows' marks (stale, orphaned, blocked) follow the config
    output:
        f"{OUT}/.pipeline/manifest/part-{{shard}}-{{part_key}}.csv",
    log:
        LOGS / "manifest" / "part-{shard}-{part_key}.log",
    localrule: True
    script:
        "../scripts/manifest_part.py"


rule manifest:
    input:
        parts=manifest_parts,
        settings=PIPE.manifest_settings,
        review=review_decisions,
    output:
        MANIFEST,
    log:
        LOGS / "manifest.log",
    localrule: True
    message:
        "Writing {output}"
    script:
        "../scripts/manifest.py"


# The run summary for `snakemake --report report.html`: counts, cost, QC score
# distributions, failures by reason, a sample of outputs beside their sources.
rule summary:
    input:
        MANIFEST,
    output:
        report(SUMMARY, category="Run summary", caption="../report/summary.rst"),
    log:
        LOGS / "summary.log",
    localrule: True
    script:
        "../scripts/summary.py"
