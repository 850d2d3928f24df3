"""Headless Chromium for the page tests: the review page writes a JSON report of what it
did into ``<pre id="selftest-result">`` when opened with ``#selftest&...``, read back with
``chromium --headless --dump-dom``."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--hide-scrollbars",
    "--virtual-time-budget=5000",
]
APT_LINE = "apt-get install -y --no-install-recommends chromium"


def find_chromium() -> str:
    """The Chromium binary, or skip (fail when CI=true: CI must install it)."""
    exe = os.environ.get("CHROMIUM") or next(
        (p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None
    )
    if exe is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"chromium not found and CI=true: .ci/run must install it ({APT_LINE})")
        pytest.skip(f"chromium not installed; the browser test needs it ({APT_LINE})")
    return exe


def run_chromium(exe: str, url: str, *args: str, profile: Path | None = None) -> subprocess.CompletedProcess:
    """One headless page load; ``profile`` keeps the browser's storage from one load to the next
    (a person reloading the page), else a fresh profile each time."""
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as fresh:
        res = subprocess.run(
            [exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile or fresh}", *args, url],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert res.returncode == 0, f"chromium failed ({res.returncode}): {res.stderr[-2000:]}"
    return res


def selftest(exe: str, page: Path | str, fragment: str, profile: Path | None = None) -> dict:
    """Load the page (a file or an http URL) with #selftest&..., return the JSON report the page
    wrote into the DOM."""
    url = page if isinstance(page, str) else page.resolve().as_uri()
    res = run_chromium(exe, url + "#selftest" + fragment, "--dump-dom", profile=profile)
    m = re.search(r'<pre id="selftest-result"[^>]*>(.*?)</pre>', res.stdout, re.S)
    assert m and m.group(1).strip(), f"no selftest report in the DOM:\n{res.stdout[-1500:]}\n{res.stderr[-1500:]}"
    return json.loads(html.unescape(m.group(1)))
