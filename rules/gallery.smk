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
    log:
        runs.run_dir(OUT, RUN_ID) / "gallery.log",
    localrule: True
    params:
        python=PYTHON,
        manifest_script=entry_point("build_manifest.py"),
        gallery_script=entry_point("build_gallery.py"),
        run_config=Path(RUN_CONFIG),
    message:
        f"Writing the review gallery {OUT}/gallery/index.html"
    shell:
        logged(
            "({params.python:q} {params.manifest_script:q} --config-json {params.run_config:q}"
            " && {params.python:q} {params.gallery_script:q} --config-json {params.run_config:q})"
        )
