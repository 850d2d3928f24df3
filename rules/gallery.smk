# Visual review: {output_dir}/gallery/index.html (thumbnails, statuses, QC scores,
# errors; filters) and gallery/contact_sheet.png. Not part of the default target:
#   snakemake report_gallery --configfile configs/sample.yaml
# It reviews the output directory as it is: it never generates (never pays);
# the manifest is refreshed from the sidecars first. Thumbnails are only
# remade when missing or older than their image.


rule report_gallery:
    input:
        run=RUN_STAMP,  # new every run: the gallery is rebuilt whenever asked for
    output:
        f"{OUT}/gallery/index.html",
    localrule: True
    message:
        "Writing the review gallery {output}"
    shell:
        "python {workflow.basedir}/scripts/build_manifest.py --config-json {CONFIG_JSON:q}"
        " && python {workflow.basedir}/scripts/build_gallery.py --config-json {CONFIG_JSON:q}"
