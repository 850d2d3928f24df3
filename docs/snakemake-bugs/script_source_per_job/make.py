from pathlib import Path

Path(snakemake.output[0]).touch()  # noqa: F821 (snakemake is injected by script:)
