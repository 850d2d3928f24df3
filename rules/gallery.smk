# Visual review: {output_dir}/gallery/index.html (thumbnails, statuses, QC scores,
# errors; filters) and gallery/contact_sheet.png. Not part of the default target:
#   snakemake --configfile configs/sample.yaml report_gallery
# The manifest is rebuilt by every run, so this reruns whenever it is asked for;
# thumbnails are only remade when missing or older than their image.


rule report_gallery:
    input:
        manifest=MANIFEST,
        config=CONFIG_JSON,
    output:
        f"{OUT}/gallery/index.html",
    localrule: True
    message:
        "Writing the review gallery {output}"
    shell:
        "python {workflow.basedir}/scripts/build_gallery.py --config-json {CONFIG_JSON:q}"
