"""Starting again after a hard interruption (kill -9, power loss, closed terminal).

Two things Snakemake leaves behind would otherwise cost money or need a
manual step:

* **Stale locks.**  A killed Snakemake leaves ``.snakemake/locks/*`` and the
  next run refuses to start until ``--unlock``.  Each run records its host and
  PID in ``.snakemake/nano_banana_aug.pid``; when that process is gone (same
  host), its locks are stale and are removed.  A live run's locks are left
  alone, so two runs never work on the same directory at once.
* **Incomplete markers of finished outputs.**  Jobs started by the killed run
  may still finish after it died.  Our outputs are renamed into place only
  when complete and described by a ``success`` sidecar, so such an output is
  done; its marker is removed instead of letting ``--rerun-incomplete`` pay
  for it again.  An output that is missing stays marked and is redone.
"""

from __future__ import annotations

import base64
import json
import os
import socket
from pathlib import Path
from typing import Callable

PID_FILE = "nano_banana_aug.pid"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clear_stale_locks(workdir=".") -> bool:
    """Remove Snakemake's locks if the run that held them is dead. Returns True if removed."""
    meta = Path(workdir) / ".snakemake"
    pidfile = meta / PID_FILE
    locks = meta / "locks"
    if not locks.is_dir() or not any(locks.iterdir()):
        return False
    try:
        owner = json.loads(pidfile.read_text())
    except (FileNotFoundError, ValueError):
        return False  # not ours to judge
    if owner.get("host") != socket.gethostname() or _alive(int(owner.get("pid", 0))):
        return False
    for lock in locks.iterdir():
        lock.unlink(missing_ok=True)
    return True


def record_owner(workdir=".") -> None:
    meta = Path(workdir) / ".snakemake"
    meta.mkdir(exist_ok=True)
    (meta / PID_FILE).write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))


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
    """An output is done when it exists, is non-empty and its sidecar says success."""
    from . import layout, sidecar

    p = Path(path)
    if Path(os.path.abspath(p.parent)) != Path(os.path.abspath(output_dir)):
        return False
    key = layout.parse_stem(p.name)
    if key is None or not p.is_file() or p.stat().st_size == 0:
        return False
    try:
        return sidecar.read(layout.sidecar_path(output_dir, *key)).status == "success"
    except (OSError, ValueError, TypeError):
        return False


def remove_stale_temporaries(directories, older_than_s: float = 600.0) -> int:
    """Delete temporary files (``.<name>.*.tmp``) that killed jobs left behind.

    They never count as outputs (only the final name does); the age guard
    leaves alone a file an orphaned job is still writing.
    """
    import time

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
