# manifest.csv from the sidecars, rebuilt by every run (it depends on the
# run's start mark). The end-of-run hooks rebuild it too, so it is current
# even when some generate jobs failed (this rule then cannot run).


# Every output of this run's plan (new every run). Snakemake's --batch slices the
# DAG over this rule's inputs: --batch all_outputs=1/N ... N/N (README "Very large
# data sets").
rule all_outputs:
    input:
        get_manifest_outputs,
    output:
        touch(ALL_OUTPUTS),
    localrule: True


rule manifest:
    input:
        run=RUN_MARK,
        targets=TARGETS_INPUT,
        outputs=ALL_OUTPUTS,
    output:
        MANIFEST,
    log:
        LOG_DIR / "manifest.log",
    localrule: True
    params:
        python=PYTHON,
        script=entry_point("build_manifest.py"),
        run_config=Path(RUN_CONFIG),
    message:
        "Rebuilding {output} from the sidecars"
    shell:
        logged(
            "{params.python:q} {params.script:q} --config-json {params.run_config:q}"
        )


# The run summary for `snakemake --report report.html`: counts, cost, QC score
# distributions, a sample of outputs beside their sources. Rebuilt with the manifest.
rule summary:
    input:
        MANIFEST,
    output:
        report(SUMMARY, category="Run summary", caption="../report/summary.rst"),
    log:
        LOG_DIR / "summary.log",
    localrule: True
    params:
        python=PYTHON,
        script=entry_point("build_summary.py"),
        run_config=Path(RUN_CONFIG),
    shell:
        logged(
            "{params.python:q} {params.script:q} --config-json {params.run_config:q}"
            " --output {output:q}"
        )
