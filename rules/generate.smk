# Rule `generate`: an answer and its source become the output and its sidecar.
# Free: `--forcerun generate` rebuilds every output from its answer, and a change
# of postprocess / qc / output_ext does so by itself (the settings file is new).


rule generate:
    input:
        answer=answer_of,
        settings=PIPE.derive_settings,
    output:
        image=f"{OUT}/{STEM}.{EXT}",
        sidecar=f"{OUT}/sidecars/{STEM}.json",
    log:
        LOGS / "generate" / f"{STEM}.log",
    priority: 1  # a ready output is made before another answer job takes a job place
    resources:
        mem_mb=1500,
    script:
        "../scripts/generate.py"
