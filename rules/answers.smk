# Reclaiming disk space of the answer store (not part of the default target):
#   snakemake prune_answers --configfile configs/nano_banana_pro_augment.yaml [--config prune_mode=used]
# Deletes stored answers that were used: by default all but the one each
# output was made from (rederive keeps working); never an answer not yet used.


rule prune_answers:
    input:
        run=RUN_MARK,
    output:
        touch(str(runs.run_dir(OUT, RUN_ID) / "pruned.done")),  # a new path every run: runs whenever asked for
    log:
        runs.run_dir(OUT, RUN_ID) / "prune_answers.log",
    localrule: True
    params:
        python=PYTHON,
        script=entry_point("prune_answers.py"),
        run_config=Path(RUN_CONFIG),
    message:
        f"Deleting used answers in {OUT}/answers (prune_mode={config['prune_mode']})"
    shell:
        logged(
            "{params.python:q} {params.script:q} --config-json {params.run_config:q}"
        )
