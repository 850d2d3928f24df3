# The start of a run. RUN_MARK is a new path every run, so this job always
# runs; the manifest (and the gallery) depend on it and are rebuilt every run,
# and it triggers the generate jobs that must be redone although their output
# exists (get_generate_trigger). The run's config is written by the onstart
# hook (start_run), before any job.


rule run_start:
    output:
        RUN_MARK,
    localrule: True
    run:
        write_start_mark(output[0])
