"""The identity of one Snakemake invocation (a *run*).

The Snakefile gives every invocation a new id in the environment variable
``NANO_BANANA_RUN_ID`` (kept when it is already set: a cluster job step
re-reads the Snakefile with the id of the run that submitted it, passed on
through the rule's ``envvars:``).  The run's budget ledger and its shared
API state (stop, cool-down, rate limit) live in
``{output_dir}/.pipeline/runs/<run id>/``; each answer records the run
that bought it.  No rule has a run-specific input or parameter, so a new
id never makes Snakemake run anything.
"""

from __future__ import annotations

import os
import secrets
import shutil
import time
from pathlib import Path

from . import layout

ENV = "NANO_BANANA_RUN_ID"


def ensure_run_id() -> str:
    """The current run's id, made (and exported to the jobs) when there is none yet."""
    rid = os.environ.get(ENV)
    if not rid:
        rid = time.strftime("%Y%m%dT%H%M%S") + f"-{os.getpid()}-{secrets.token_hex(2)}"
        os.environ[ENV] = rid
    return rid


def current() -> str:
    return os.environ.get(ENV) or "adhoc"


def directory(output_dir, run_id: str | None = None) -> Path:
    return layout.run_dir(output_dir, run_id or current())


def prune_old(output_dir, keep_days: float = 14.0) -> int:
    """Remove the state of runs older than ``keep_days`` (their answers stay); how many."""
    root = layout.pipeline_dir(output_dir) / "runs"
    cutoff = time.time() - keep_days * 86400
    removed = 0
    try:
        entries = list(os.scandir(root))
    except FileNotFoundError:
        return 0
    for entry in entries:
        try:
            if entry.is_dir() and entry.stat().st_mtime < cutoff:
                shutil.rmtree(entry.path, ignore_errors=True)
                removed += 1
        except FileNotFoundError:
            continue
    return removed
