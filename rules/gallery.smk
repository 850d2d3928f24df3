# Visual review: {output_dir}/gallery/index.html (thumbnails, statuses, QC scores,
# errors; filters) and gallery/contact_sheet.png. Not part of the default target:
#   snakemake report_gallery --configfile configs/sample.yaml
# It reviews the output directory as it is: it never generates (never pays);
# the manifest is refreshed from the sidecars first. Thumbnails are only
# remade when missing or older than their image.


rule report_gallery:
    input:
        run=RUN_MARK,
    output:
        # a new path every run: the gallery is rebuilt whenever asked for
        # ({OUT}/gallery/index.html and contact_sheet.png are written beside)
        touch(str(runs.run_dir(OUT, RUN_ID) / "gallery.done")),
    localrule: True
    message:
        f"Writing the review gallery {OUT}/gallery/index.html"
    shell:
        "{PYTHON:q} {workflow.basedir:q}/scripts/build_manifest.py --config-json {RUN_CONFIG:q}"
        " && {PYTHON:q} {workflow.basedir:q}/scripts/build_gallery.py --config-json {RUN_CONFIG:q}"
