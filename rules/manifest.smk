# manifest.csv from the sidecars. The end-of-run hooks rebuild it too, so it
# is current even when some generate jobs failed (this rule then cannot run).


rule manifest:
    input:
        targets=TARGETS_CSV,  # keeps the checkpoint in the DAG: an edited train.csv is re-read
        outputs=get_all_outputs,
    output:
        MANIFEST,
    localrule: True
    message:
        "Rebuilding {output} from the sidecars"
    shell:
        "python {workflow.basedir}/scripts/build_manifest.py --config-json {CONFIG_JSON:q}"
