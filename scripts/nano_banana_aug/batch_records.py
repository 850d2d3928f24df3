"""Batch mode's records: what was submitted to the Gemini Batch API and what came of it.

    {output_dir}/.pipeline/batches/<display name>.json    a submission (see :class:`Submission`)
    {output_dir}/.pipeline/batches/<display name>.jsonl   its requests, kept until the batch exists
    {output_dir}/.pipeline/batches/round-<key>.json       the batch checkpoint's outcome per target

Read by the workflow while it builds the DAG (the checkpoint's key, the
summary) and written by the ``batch`` job (:mod:`nano_banana_aug.batch`).
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import layout
from .fileio import atomic_write_text

MAX_FILE_BYTES = 1_900_000_000  # under the Files API's 2 GB per file
OPEN_STATES = ("prepared", "uploaded", "creating", "created")


def batches_dir(output_dir) -> Path:
    return layout.pipeline_dir(output_dir) / "batches"


@dataclass
class Submission:
    """One batch job, from before its upload until its results are collected."""

    display_name: str
    model: str
    keys: dict  # stem -> {"version": n, "fingerprint": {...}, "request_key": "..."}
    run_id: str = ""
    created_ts: float = 0.0
    state: str = "prepared"  # prepared -> uploaded -> creating -> created -> collected | lost
    file_name: str = ""  # files/… once uploaded
    batch_name: str = ""  # batches/… once created
    batch_state: str = ""  # the service's last word (short form)
    reserved_usd: float = 0.0
    outcome: dict = field(default_factory=dict)  # stem -> {"status", "reason", "message"} once collected
    updated_ts: float = 0.0

    @property
    def path(self) -> Path:  # set by load/save
        return self._path

    @property
    def jsonl_path(self) -> Path:
        return self._path.with_suffix(".jsonl")

    def save(self) -> None:
        self.updated_ts = time.time()
        atomic_write_text(self._path, json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, path: Path) -> "Submission":
        data = json.loads(path.read_text(encoding="utf-8"))
        known = set(cls.__dataclass_fields__)
        sub = cls(**{k: v for k, v in data.items() if k in known})
        sub._path = path
        return sub

    @classmethod
    def new(cls, output_dir, run_id: str, model: str, keys: dict) -> "Submission":
        name = f"nbaug-{run_id}-{secrets.token_hex(4)}"
        sub = cls(display_name=name, model=model, keys=keys, run_id=run_id, created_ts=time.time())
        sub._path = batches_dir(output_dir) / f"{name}.json"
        return sub


def load_submissions(output_dir) -> list[Submission]:
    out = []
    d = batches_dir(output_dir)
    for p in sorted(d.glob("nbaug-*.json")) if d.is_dir() else ():
        try:
            out.append(Submission.load(p))
        except (OSError, ValueError, TypeError) as exc:
            raise BatchError(
                f"batch record {p} cannot be read ({exc}); it may describe a paid batch - "
                "fix or move it before running batch mode again"
            ) from None
    return out


def open_stems(output_dir) -> set[str]:
    """Targets in batches submitted but not collected yet (paid; the answers are coming)."""
    try:
        return {s for sub in load_submissions(output_dir) if sub.state in OPEN_STATES for s in sub.keys}
    except BatchError:
        return set()


def open_state(output_dir, wanted) -> list:
    """What the ``batch`` checkpoint's key depends on besides the answers it buys: every open
    submission and every one holding one of them, with its state and the time it was last polled.
    A batch still running (``api.batch.wait: false``), or one that ended without some answers,
    so gives the next run a new key, and the checkpoint polls, collects or resubmits (also when
    the run buys nothing else: paid results expire); a finished directory has a stable key."""
    try:
        subs = load_submissions(output_dir)
    except BatchError:
        return ["unreadable"]  # the job itself says which record and why
    return [
        [sub.display_name, sub.state, sub.batch_state, sub.updated_ts]
        for sub in subs
        if sub.state in OPEN_STATES or any(stem in wanted for stem in sub.keys)
    ]


class BatchError(Exception):
    """Batch mode cannot go on (a clear message for the user)."""


def write_outcome(path, outcome: dict) -> None:
    atomic_write_text(path, json.dumps(outcome, indent=1, sort_keys=True))


def read_outcome(path) -> dict:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
