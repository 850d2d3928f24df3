# manifest.csv from the sidecars. The end-of-run hooks rebuild it too, so it
# is current even when some generate jobs failed (this rule then cannot run).


rule manifest:
    input:
        run=RUN_STAMP,  # touched at the start of every run: the manifest is always rebuilt
        targets=TARGETS_CSV,
        outputs=get_all_outputs,
    output:
        MANIFEST,
    localrule: True
    message:
        "Rebuilding {output} from the sidecars"
    shell:
        "python {workflow.basedir}/scripts/build_manifest.py --config-json {CONFIG_JSON:q}"
