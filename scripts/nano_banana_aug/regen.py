"""Regeneration requests: paying again for outputs that exist, exactly once.

A request to regenerate (``--config regenerate=overcast``, ``redo_rejected=true``,
``--forcerun generate`` / ``-R generate``, ``-F``, or ``-f`` / ``--forcerun``
naming output files) has an identity (its *key*) and a creation time.  It is
*finished* once each of its targets was regenerated once, i.e. a new answer was
bought for it.  Until then it stays open, and asking for the same thing again
resumes it: targets it already regenerated are not paid for again, only the
rest are.  Once finished, asking again starts a new request.

    {output_dir}/.pipeline/requests/<id>.json    the request (key, what, created, finished)
    {output_dir}/.pipeline/requests/<id>.done    one line per target regenerated for it

The answers themselves record which requests they were bought for
(``satisfies``); the ``.done`` lines are the plan's cheap index of them.
Requests are written only by the run that holds Snakemake's lock (onstart) and
by its jobs.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from . import layout
from .fileio import append_line, atomic_write_text

KINDS = ("forceall", "forcerun", "files", "regenerate", "redo_rejected", "stale")


@dataclass
class RegenRequest:
    key: str  # identity: "forcerun", "regenerate:overcast", "files:<sha>", "redo_rejected", "forceall"
    kind: str
    what: str  # for people: "regenerate=overcast", "--forcerun generate", ...
    aug: str = ""  # kind regenerate
    stems: list = field(default_factory=list)  # kinds files, redo_rejected
    id: str = ""  # assigned when saved
    created: float = 0.0
    run_id: str = ""
    finished: float | None = None

    def matches(self, stem: str, aug: str) -> bool:
        if self.kind in ("forceall", "forcerun"):
            return True
        if self.kind == "regenerate":
            return aug == self.aug
        return stem in set(self.stems)

    @classmethod
    def from_dict(cls, data: dict) -> "RegenRequest":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def requests_dir(output_dir) -> Path:
    return layout.pipeline_dir(output_dir) / "requests"


def load_all(output_dir) -> list[RegenRequest]:
    d = requests_dir(output_dir)
    found = []
    try:
        names = sorted(os.listdir(d))
    except FileNotFoundError:
        return found
    for name in names:
        if not name.endswith(".json"):
            continue
        try:
            with open(d / name, encoding="utf-8") as fh:
                found.append(RegenRequest.from_dict(json.load(fh)))
        except (OSError, ValueError, TypeError):
            continue
    return found


def open_requests(output_dir) -> dict[str, RegenRequest]:
    """Unfinished requests by key (the newest one per key)."""
    out: dict[str, RegenRequest] = {}
    for r in sorted(load_all(output_dir), key=lambda r: r.created):
        if r.finished is None:
            out[r.key] = r
    return out


def wanted(*, regenerate, redo_rejected: bool, rejected_stems, forceall: bool, forcerun, forced_stems,
           stale_stems=None) -> list[RegenRequest]:
    """The requests this invocation asks for (not yet matched against open ones)."""
    out = []
    if forceall:
        out.append(RegenRequest(key="forceall", kind="forceall", what="--forceall (-F)"))
    elif "generate" in set(forcerun or ()):
        out.append(RegenRequest(key="forcerun", kind="forcerun", what="--forcerun generate"))
    elif forced_stems:
        stems = sorted(set(forced_stems))
        digest = hashlib.sha256("\n".join(stems).encode()).hexdigest()[:12]
        what = f"--forcerun/-f of {len(stems)} output file(s)" if len(stems) > 1 else f"--forcerun/-f {stems[0]}"
        out.append(RegenRequest(key=f"files:{digest}", kind="files", what=what, stems=stems))
    for aug in regenerate or ():
        out.append(RegenRequest(key=f"regenerate:{aug}", kind="regenerate", what=f"regenerate={aug}", aug=aug))
    if stale_stems is not None:
        stems = sorted(set(stale_stems))
        digest = hashlib.sha256("\n".join(stems).encode()).hexdigest()[:12]
        out.append(RegenRequest(key=f"stale:{digest}", kind="stale", what="regenerate=stale", stems=stems))
    if redo_rejected:
        out.append(RegenRequest(key="redo_rejected", kind="redo_rejected", what="redo_rejected=true",
                                stems=sorted(set(rejected_stems))))
    return out


def resolve(output_dir, asked: list[RegenRequest]) -> list[RegenRequest]:
    """Each asked-for request, or the open one with the same key (resumed).

    A resumed redo_rejected request also takes targets rejected since it began.
    Nothing is written here (dry-runs call this too).
    """
    existing = open_requests(output_dir)
    out = []
    for req in asked:
        old = existing.get(req.key)
        if old is None:
            out.append(req)
            continue
        if req.kind == "redo_rejected":
            old.stems = sorted(set(old.stems) | set(req.stems))
        out.append(old)
    return out


def save_new(output_dir, reqs: list[RegenRequest], run_id: str, now: float | None = None) -> list[RegenRequest]:
    """Give the new requests an id and write them (the lock-holding run, at its start)."""
    now = time.time() if now is None else now
    for r in reqs:
        if not r.id:
            r.id = time.strftime("r%Y%m%dT%H%M%S", time.gmtime(now)) + f"-{secrets.token_hex(3)}"
            r.created, r.run_id = now, run_id
        write(output_dir, r)
    return reqs


def write(output_dir, req: RegenRequest) -> None:
    atomic_write_text(requests_dir(output_dir) / f"{req.id}.json", json.dumps(asdict(req), indent=1))


def record_done(output_dir, request_ids, stem: str) -> None:
    for rid in request_ids:
        append_line(requests_dir(output_dir) / f"{rid}.done", stem, durable=True)


def done_stems(output_dir, req: RegenRequest) -> set[str]:
    if not req.id:
        return set()
    try:
        with open(requests_dir(output_dir) / f"{req.id}.done", encoding="utf-8") as fh:
            return {line.strip() for line in fh if line.strip()}
    except FileNotFoundError:
        return set()


def finish_if_complete(output_dir, req: RegenRequest, scope: set[str], excused: set[str], now=None) -> bool:
    """Mark ``req`` finished when every target in ``scope`` was regenerated (or cannot be)."""
    if req.finished is not None or not req.id:
        return req.finished is not None
    if scope - excused - done_stems(output_dir, req):
        return False
    req.finished = time.time() if now is None else now
    write(output_dir, req)
    return True
