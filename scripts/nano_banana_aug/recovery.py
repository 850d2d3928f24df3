"""Starting again after a hard interruption (kill -9, power loss, closed terminal).

A killed Snakemake leaves its lock files (``.snakemake/locks/``) and the
"incomplete" markers of the jobs it was running; the next run would refuse to
start until ``--unlock`` / ``--rerun-incomplete``.  Before Snakemake looks at
them, :func:`recover` (called while the Snakefile is parsed, in the main
process) clears what provably belongs to nobody:

* **Locks** are removed only for a run whose owner record
  (:mod:`nano_banana_aug.runs`, written by the lock-holding run's ``onstart``)
  names a process that is gone, and only the lock files that record lists
  (same inode, time and size).  A live run's locks, and locks nobody recorded,
  are never touched.  If jobs of the dead run are still running (orphans
  keep its *alive* lock), recovery waits for them to finish before removing
  anything: their calls are paid and their results are kept.
* **Incomplete markers** of outputs that are complete (atomic rename, a
  ``success``/``rejected`` sidecar) are dropped, so they are not paid for
  again; this only happens when no run holds any lock in this directory.

Dry-runs go through this too; it never removes anything a live run uses.
"""

from __future__ import annotations

import base64
import glob
import os
import time
from pathlib import Path
from typing import Callable

from . import locks, runs
from .errors import UserError

SNAKEMAKE_LOCKS = Path(".snakemake") / "locks"


def recover(output_dir, *, orphan_wait_s: float, say: Callable[[str], None]) -> None:
    """Clear the locks of dead runs (after their orphaned jobs finished) and settle markers."""
    live = 0
    for owner in runs.load_owners():
        alive = owner.is_alive()
        if alive is not False:  # alive, or on another host (cannot tell)
            live += 1
            continue
        if locks.is_held(owner.alive_lock):
            say(f"note: run {owner.run_id} (pid {owner.pid}) was killed, but some of its generate jobs are still "
                f"running; waiting up to {orphan_wait_s / 60:.0f} min for them to finish (their calls are paid, "
                "their results are kept)")
            if not locks.wait_until_free(owner.alive_lock, orphan_wait_s):
                raise UserError(
                    f"jobs of the killed run {owner.run_id} are still running after {orphan_wait_s / 60:.0f} min; "
                    f"stop them (pkill -f 'runs/{owner.run_id}/') or wait, then run again"
                )
        removed = remove_lockfiles(owner.lockfiles)
        runs.forget_owner(owner.run_id)
        if removed:
            say(f"note: removed the locks of run {owner.run_id}, which was killed (pid {owner.pid} is gone)")
    if live == 0 and not _any_lockfile():
        settled = settle_incomplete(".", lambda p: output_is_done(p, output_dir))
        if settled:
            say(f"note: {len(settled)} output(s) finished after an interruption are kept")


def remove_lockfiles(recorded: dict) -> int:
    """Remove the recorded lock files that are still the same files; returns how many."""
    n = 0
    for path, ident in recorded.items():
        if ident and runs.lockfile_identity(path) == list(ident):
            Path(path).unlink(missing_ok=True)
            n += 1
    return n


def _any_lockfile() -> bool:
    try:
        return any(name.endswith(".lock") for name in os.listdir(SNAKEMAKE_LOCKS))
    except FileNotFoundError:
        return False


def settle_incomplete(workdir, is_done: Callable[[str], bool]) -> list[str]:
    """Drop incomplete markers of outputs that ``is_done`` confirms; returns their paths."""
    marks = Path(workdir) / ".snakemake" / "incomplete"
    settled = []
    if not marks.is_dir():
        return settled
    for mark in marks.iterdir():
        try:
            path = base64.urlsafe_b64decode(mark.name.encode()).decode()
        except (ValueError, UnicodeDecodeError):
            continue
        if is_done(path):
            mark.unlink(missing_ok=True)
            settled.append(path)
    return settled


def output_is_done(path: str, output_dir) -> bool:
    """An output is done when it looks complete and its sidecar says success or rejected."""
    from . import layout, sidecar
    from .planning import output_looks_ok

    p = Path(path)
    if Path(os.path.abspath(p.parent)) != Path(os.path.abspath(output_dir)):
        return False
    key = layout.parse_stem(p.name)
    if key is None or not output_looks_ok(p):
        return False
    try:
        return sidecar.read(layout.sidecar_path(output_dir, *key)).status in ("success", "rejected")
    except (OSError, ValueError, TypeError):
        return False


def remove_stale_temporaries(directories, older_than_s: float = 600.0) -> int:
    """Delete temporary files (``.<name>.*.tmp``) that killed jobs left behind.

    They never count as outputs (only the final name does); the age guard
    leaves alone a file an orphaned job is still writing.
    """
    removed = 0
    cutoff = time.time() - older_than_s
    for directory in directories:
        try:
            entries = list(os.scandir(directory))
        except FileNotFoundError:
            continue
        for entry in entries:
            if entry.name.startswith(".") and entry.name.endswith(".tmp") and entry.is_file():
                if entry.stat().st_mtime < cutoff:
                    Path(entry.path).unlink(missing_ok=True)
                    removed += 1
    return removed


def remove_own_temporaries(paths) -> int:
    """Delete the temporaries (``.<name>.*.tmp``) of these files, whatever their age.

    For a job that holds its target's lock: no one else can be writing them, so
    what is there was left by a killed job (the age guard of
    remove_stale_temporaries is for the run-wide sweep, which holds no lock)."""
    removed = 0
    for path in paths:
        path = Path(path)
        for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
            tmp.unlink(missing_ok=True)
            removed += 1
    return removed
