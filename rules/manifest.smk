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
    localrule: True
    message:
        "Rebuilding {output} from the sidecars"
    shell:
        "{PYTHON:q} {workflow.basedir:q}/scripts/build_manifest.py --config-json {RUN_CONFIG:q}"


# The run summary for `snakemake --report report.html`: counts, cost, QC score
# distributions, a sample of outputs beside their sources. Rebuilt with the manifest.
rule summary:
    input:
        MANIFEST,
    output:
        report(SUMMARY, category="Run summary", caption="../report/summary.rst"),
    localrule: True
    shell:
        "{PYTHON:q} {workflow.basedir:q}/scripts/build_summary.py --config-json {RUN_CONFIG:q} --output {output:q}"
