# Targets run on request, not part of the default run:
#   snakemake plan             the plan (answers to buy, cost); calls nothing
#   snakemake report_gallery   gallery/index.html: every output beside its source
#   snakemake prune_answers    delete answer images no output is made from


rule plan:
    input:
        plan_target,
    localrule: True


rule report_gallery:
    input:
        MANIFEST,
    output:
        f"{OUT}/gallery/index.html",
    log:
        LOGS / "gallery.log",
    localrule: True
    message:
        "Writing the review gallery {output}"
    script:
        "../scripts/gallery.py"


rule prune_answers:
    output:
        touch(layout.run_dir(OUT, RUN_ID) / "pruned"),  # an action: runs whenever asked for
    log:
        layout.run_dir(OUT, RUN_ID) / "prune_answers.log",
    localrule: True
    message:
        f"Deleting answer images that no output of {OUT} is made from"
    script:
        "../scripts/prune_answers.py"
