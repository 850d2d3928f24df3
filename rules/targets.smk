# Checkpoint `targets`: the table of images to augment (one row per image_id).


checkpoint targets:
    input:
        csv=TRAIN_CSV,
        settings=TARGET_SETTINGS,
    output:
        TARGETS_CSV,
    log:
        LOG_DIR / "targets.log",
    localrule: True
    message:
        "Reading {input.csv}: images with every primary target"
    shell:
        "python {workflow.basedir}/scripts/make_targets.py --config-json {CONFIG_JSON:q} --output {output:q} 2>&1 | tee {log:q}"
