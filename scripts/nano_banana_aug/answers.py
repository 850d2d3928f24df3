"""The answer store: every paid answer, on disk before anything else happens to it.

    {output_dir}/answers/<stem>/000001.png     the image bytes exactly as received
    {output_dir}/answers/<stem>/000001.json    what the service said about them (+ request fingerprint)
    {output_dir}/.pipeline/recheck/<stem>      "look at this target again": an answer not yet turned
                                               into its output, or an output being replaced

An answer is written (image, then its JSON; each durable and atomic) by the
job that paid for it, under the target's lock, right after the HTTP answer
arrived — before decoding, QC or post-processing — so a crash, ``kill -9``
or a bug later in the job never loses it.  Numbers only grow: answers are
never overwritten (a regeneration, an automatic QC regeneration or a forced
run adds a new one).

Which answers a target has *used* is recorded in its sidecar
(``answer_seq_seen``: every answer up to that number has been looked at).
A later answer is *unconsumed*: the next generate job of that target builds
the output from it instead of calling (crash recovery, results of a batch
job).  The *recheck* markers are a cheap index of such targets for the plan
(the job itself always lists the directory): one is created after an answer
is complete, and before an existing output is replaced, and removed once the
output and its sidecar agree again; a marker may be stale (the job then finds
nothing to do), never missing.

Space: a 2K answer is 1.5-8 MB.  :func:`prune` deletes answers that were
used or superseded; it never deletes an unconsumed one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from . import layout
from .fileio import atomic_write_bytes, atomic_write_text, fsync_dir
from .imaging import sniff_format

ANSWERS_DIR = "answers"
_SEQ_RE = re.compile(r"^(\d{6,})\.(json|png|jpg|jpeg|webp|gif|heic|heif|bin)$")
_EXT = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp", "GIF": "gif", "HEIC": "heic", "HEIF": "heif"}


@dataclass
class Answer:
    """One stored answer (the JSON next to the image)."""

    answer_id: str  # zero-padded sequence number within the target, e.g. "000003"
    stem: str
    image_file: str  # file name next to the JSON
    image_sha256: str
    image_bytes: int
    mime_type: str  # detected from the bytes
    mime_label: str = ""  # as labelled by the service (may be wrong)
    response_id: str = ""
    model_version: str = ""
    usage: dict = field(default_factory=dict)
    est_cost_usd: float | None = None
    finish_reason: str = ""
    text: str = ""  # the model's words next to the image (cut)
    attempt: int = 0  # attempt number within the job that paid for it
    ts: float = 0.0  # when it arrived (unix time)
    source: str = "call"  # call (synchronous request) | batch
    batch: str = ""  # the batch job it came from (batches/…)
    fingerprint: dict = field(default_factory=dict)  # provider, model, source_sha256, prompt_sha256, image_config
    satisfies: list = field(default_factory=list)  # ids of the regeneration requests it was bought for
    run_id: str = ""
    host: str = ""
    slurm_job_id: str = ""

    @property
    def seq(self) -> int:
        return int(self.answer_id)

    @classmethod
    def from_dict(cls, data: dict) -> "Answer":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


class AnswerStore:
    def __init__(self, output_dir):
        self.root = Path(output_dir) / ANSWERS_DIR

    # --- paths
    def target_dir(self, stem: str) -> Path:
        return self.root / stem

    def image_path(self, answer: Answer) -> Path:
        return self.target_dir(answer.stem) / answer.image_file

    # --- reading
    def list(self, stem: str) -> list[Answer]:
        """The complete answers of ``stem`` (JSON present and readable), oldest first."""
        d = self.target_dir(stem)
        try:
            names = os.listdir(d)
        except FileNotFoundError:
            return []
        found = []
        for name in names:
            m = _SEQ_RE.match(name)
            if not m or m.group(2) != "json":
                continue
            try:
                with open(d / name, encoding="utf-8") as fh:
                    found.append(Answer.from_dict(json.load(fh)))
            except (OSError, ValueError, TypeError):
                continue  # a damaged record is not an answer
        return sorted(found, key=lambda a: a.seq)

    def get(self, stem: str, answer_id: str) -> Answer | None:
        for a in self.list(stem):
            if a.answer_id == answer_id:
                return a
        return None

    def read_image(self, answer: Answer) -> bytes:
        """The image bytes, checked against the recorded SHA-256."""
        data = self.image_path(answer).read_bytes()
        if hashlib.sha256(data).hexdigest() != answer.image_sha256:
            raise ValueError(f"stored answer {answer.stem}/{answer.image_file} is damaged (SHA-256 differs)")
        return data

    def stems(self) -> set[str]:
        """Targets with at least an answer directory."""
        try:
            return {e.name for e in os.scandir(self.root) if e.is_dir()}
        except FileNotFoundError:
            return set()

    # --- writing (the caller holds the target's lock)
    def _next_seq(self, stem: str) -> int:
        try:
            names = os.listdir(self.target_dir(stem))
        except FileNotFoundError:
            return 1
        seqs = [int(m.group(1)) for m in map(_SEQ_RE.match, names) if m]
        return max(seqs, default=0) + 1

    def add(self, stem: str, data: bytes, **meta) -> Answer:
        """Store one answer durably: image first, then its JSON (which makes it count)."""
        fmt = sniff_format(data)
        seq = self._next_seq(stem)
        answer_id = f"{seq:06d}"
        ext = _EXT.get(fmt[0], "bin") if fmt else "bin"
        answer = Answer(
            answer_id=answer_id, stem=stem, image_file=f"{answer_id}.{ext}",
            image_sha256=hashlib.sha256(data).hexdigest(), image_bytes=len(data),
            mime_type=fmt[1] if fmt else "", **meta,
        )
        d = self.target_dir(stem)
        new_dir = not d.is_dir()
        atomic_write_bytes(d / answer.image_file, data)
        atomic_write_text(d / f"{answer_id}.json", json.dumps(asdict(answer), indent=1))
        if new_dir:
            fsync_dir(self.root)
        mark_recheck(self.root.parent, stem)
        return answer


def recheck_dir(output_dir) -> Path:
    return layout.pipeline_dir(output_dir) / "recheck"


def mark_recheck(output_dir, stem: str) -> None:
    marker = recheck_dir(output_dir) / stem
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()
    fsync_dir(marker.parent)


def clear_recheck(output_dir, stem: str) -> None:
    (recheck_dir(output_dir) / stem).unlink(missing_ok=True)


def recheck_stems(output_dir) -> set[str]:
    try:
        return set(os.listdir(recheck_dir(output_dir)))
    except FileNotFoundError:
        return set()


def unconsumed(answers: list[Answer], seen: int) -> list[Answer]:
    """Answers newer than the sidecar's watermark."""
    return [a for a in answers if a.seq > seen]


def disk_usage(output_dir) -> tuple[int, int]:
    """(number of stored answers, bytes of their images)."""
    root = Path(output_dir) / ANSWERS_DIR
    count = size = 0
    if not root.is_dir():
        return 0, 0
    for d in os.scandir(root):
        if not d.is_dir():
            continue
        for e in os.scandir(d.path):
            m = _SEQ_RE.match(e.name)
            if m and m.group(2) != "json":
                count += 1
                size += e.stat().st_size
    return count, size


def prune(output_dir, *, mode: str = "superseded", lock_timeout_s: float = 600.0) -> tuple[int, int]:
    """Delete stored answers that were used; returns (answers deleted, bytes freed).

    ``superseded``: every used answer except the one each output was made from
    (``rederive`` keeps working).  ``used``: every used answer (those outputs can
    no longer be rebuilt without a new call).  An answer a target has not used
    yet is never deleted, nor any answer of a target without a sidecar.
    """
    from . import locks, sidecar

    store = AnswerStore(output_dir)
    deleted = freed = 0
    for stem in sorted(store.stems()):
        key = layout.parse_stem(stem)
        if key is None:
            continue
        with locks.exclusive(layout.target_lock(output_dir, stem), timeout_s=lock_timeout_s, what=f"target {stem}"):
            try:
                rec = sidecar.read(layout.sidecar_path(output_dir, *key))
            except (OSError, ValueError, TypeError):
                continue
            for a in store.list(stem):
                if a.seq > rec.answer_seq_seen or (mode == "superseded" and a.answer_id == rec.answer_id):
                    continue
                image = store.image_path(a)
                try:
                    freed += image.stat().st_size
                except FileNotFoundError:
                    pass
                (store.target_dir(stem) / f"{a.answer_id}.json").unlink(missing_ok=True)  # first: it makes it count
                image.unlink(missing_ok=True)
                deleted += 1
    return deleted, freed


def main(argv=None) -> int:
    """Entry point of rule `prune_answers`: prune_answers.py --config-json C."""
    import argparse

    from . import config as config_mod

    ap = argparse.ArgumentParser(description="Delete stored answers that were used (never unused ones).")
    ap.add_argument("--config-json", required=True)
    args = ap.parse_args(argv)
    cfg = config_mod.read_effective_config(args.config_json)
    out = cfg["data"]["output_dir"]
    before = disk_usage(out)
    deleted, freed = prune(out, mode=cfg.get("prune_mode", "superseded"))
    after = disk_usage(out)
    print(f"answers: {deleted} deleted ({freed / 1e6:.1f} MB freed; prune_mode={cfg.get('prune_mode', 'superseded')}); "
          f"{after[0]} kept ({after[1] / 1e6:.1f} MB), was {before[0]} ({before[1] / 1e6:.1f} MB)")
    return 0
