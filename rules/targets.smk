# Checkpoint `targets`: the images to augment, one row per image_id, with
# their source checks. Its file name carries a hash of data_root, train_csv,
# primary_targets, limit and the content of train.csv: it is made again
# when any of them changes, and only then.


checkpoint targets:
    input:
        ancient(cfgmod.train_csv_path(config)),
    output:
        PIPE.table,
    log:
        LOGS / "targets.log",
    localrule: True
    message:
        "Reading {input}: images with every primary target"
    script:
        "../scripts/make_targets.py"


# The settings an output is derived with (postprocess, qc, output_ext) and those
# the manifest marks depend on: a new file when they change, so Snakemake
# rebuilds what depends on them (free: no answer is bought again).
rule settings:
    output:
        layout.settings_file(OUT, "{kind}", "{key}"),
    log:
        LOGS / "settings-{kind}-{key}.log",
    wildcard_constraints:
        kind="derive|manifest",
    priority: 2  # every output waits for it: made before any answer job (also with -j 1)
    localrule: True
    script:
        "../scripts/write_settings.py"
