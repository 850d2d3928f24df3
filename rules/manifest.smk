# manifest.csv from the sidecars, rebuilt by every run (it depends on the
# run's start mark). The end-of-run hooks rebuild it too, so it is current
# even when some generate jobs failed (this rule then cannot run).


rule manifest:
    input:
        run=RUN_MARK,
        targets=TARGETS_CSV,
        outputs=get_manifest_outputs,
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
