# Checkpoint `targets`: the table of images to augment (one row per image_id).
# It reruns when train.csv is newer or data_root / train_csv / primary_targets
# change (they name the settings file).


rule target_settings:
    output:
        SETTINGS_JSON,
    localrule: True
    run:
        write_target_settings(output[0])


checkpoint targets:
    input:
        csv=TRAIN_CSV,
        settings=SETTINGS_JSON,
    output:
        TARGETS_CSV,
    log:
        LOG_DIR / "targets.log",
    localrule: True
    message:
        "Reading {input.csv}: images with every primary target"
    shell:
        "{PYTHON:q} {workflow.basedir:q}/scripts/make_targets.py --config-json {RUN_CONFIG:q} --output {output:q} 2>&1 | tee {log:q}"
