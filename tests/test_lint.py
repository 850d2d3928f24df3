"""`snakemake --lint` reports only the lints docs/development.md justifies; `snakefmt --check` is clean."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.helpers import ROOT

SCRIPT_RULES = (
    "targets",
    "settings",
    "answer",
    "generate",
    "manifest_part",
    "manifest",
    "summary",
    "batch",
    "cancel_batches",
    "report_gallery",
    "prune_answers",
)
NO_ENV = "Specify a conda environment or container for each rule."

# (rule, lint title) -> the line of docs/development.md that justifies it (section "Lint and formatting")
JUSTIFIED = {(rule, NO_ENV): "No conda environment or container for the script rules" for rule in SCRIPT_RULES}

HEADER = re.compile(r"^Lints for (?:rule (?P<rule>\S+) \(line \d+, .*\)|snakefile (?P<file>.+)):$")
ITEM = re.compile(r"^    \* (?P<title>.+):$")


def lints(configfile: str) -> set[tuple[str, str]]:
    """(rule or snakefile, title) of every lint `snakemake --lint` prints."""
    env = {k: v for k, v in os.environ.items() if k not in ("GEMINI_API_KEY", "GOOGLE_API_KEY", "OPENROUTER_API_KEY")}
    res = subprocess.run(
        [sys.executable, "-m", "snakemake", "--lint", "--configfile", configfile],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    out = res.stdout + res.stderr
    assert res.returncode in (0, 1), out[-3000:]
    assert not any(s in out for s in ("ERROR", "WorkflowError", "Traceback")), out[-3000:]  # it was parsed
    found, item = set(), None
    for line in out.splitlines():
        if m := HEADER.match(line):
            item = m["rule"] or f"snakefile {m['file']}"
        elif (m := ITEM.match(line)) and item:
            found.add((item, m["title"]))
    assert found or "Congratulations" in out, out[-3000:]
    return found


@pytest.mark.parametrize("configfile", ["configs/sample.yaml", "configs/nano_banana_pro_augment.yaml"])
def test_lint_reports_only_the_justified_lints(configfile):
    found = lints(configfile)
    assert sorted(found - JUSTIFIED.keys()) == []  # fix these, or justify them in docs/development.md and here
    assert sorted(JUSTIFIED.keys() - found) == []  # gone: drop them here and from docs/development.md


def test_every_justified_lint_has_its_documented_reason():
    doc = (ROOT / "docs" / "development.md").read_text(encoding="utf-8")
    section = doc.split("## Lint and formatting", 1)[1].split("\n## ", 1)[0]
    for why in set(JUSTIFIED.values()):
        assert f"* {why}" in section, why


def test_snakefmt_check_is_clean():
    pytest.importorskip("snakefmt", reason="snakefmt is in the test extra: pip install -e '.[test]'")
    res = subprocess.run(
        [sys.executable, "-m", "snakefmt", "--check", "Snakefile", "rules/"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stdout + res.stderr
