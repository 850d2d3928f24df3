"""The documentation that is generated stays in step with its source."""

import re

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


def test_relative_links_in_readme_and_docs_lead_to_files():
    broken = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text(encoding="utf-8")):
            path = target.split("#")[0]
            if path and not re.match(r"[a-z]+:", path) and not (page.parent / path).exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert broken == []
