"""The documentation that is generated stays in step with its source."""

from nano_banana_aug import schema_doc

from .helpers import ROOT


def test_configuration_reference_is_generated_from_the_schema():
    text = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert text == schema_doc.render(), "run: python -m nano_banana_aug.schema_doc > docs/configuration.md"


def test_readme_first_screen_is_short_and_has_the_two_commands():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 150
    first_screen = "\n## ".join(readme.split("\n## ", 2)[:2])  # the title and the quick start
    assert "snakemake -j 8 --configfile configs/sample.yaml" in first_screen and "pytest" in first_screen
