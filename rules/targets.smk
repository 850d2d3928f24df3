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
    params:
        python=PYTHON,
        script=entry_point("make_targets.py"),
        run_config=Path(RUN_CONFIG),
    message:
        "Reading {input.csv}: images with every primary target"
    shell:
        "{params.python:q} {params.script:q} --config-json {params.run_config:q}"
        " --output {output:q} 2>&1 | tee {log:q}"
