"""Answers: what the service said, one file per paid request, never rewritten.

    {output_dir}/answers/<stem>/v1.json    answer 1 of the target: request fingerprint, usage,
                                           response id, time, and either the image or why not
    {output_dir}/answers/<stem>/v1.png     its image bytes exactly as received (read-only)

An answer is one *version* of a target.  Version 1 is the first answer
bought; a new version is bought only when asked for (a retry after a
refused answer, a regeneration): the old ones stay, so the output that was
made from one is never lost before its replacement exists.  The record is
written after its image (each atomically and durably), so a record that
exists is complete; the record is the declared output of rule ``answer``.

Kinds of answer (``status``):

``image``     an image that decoded: the output is built from it
``refused``   the service answered without a usable image (a safety block,
              text only, an undecodable image, an error inside HTTP 200);
              such answers can be billed, so they are kept like any other
``failed``    every attempt failed without being billed (503 overload, 429,
              refused connections): nothing was bought; the next run tries again
``unusable``  the source image could not be read when the answer was to be
              bought: nothing was sent

Everything the pipeline reports about money comes from these files: what
was paid (a record exists), what it cost (``est_cost_usd``, summed), which
run paid it (``run_id``).
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
from .providers.base import may_be_billed

_VERSION_RE = re.compile(r"^v(\d+)\.(json|png|jpg|webp|gif|heic|heif|bin)$")
_EXT = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp", "GIF": "gif", "HEIC": "heic", "HEIF": "heif"}
IMAGE = "image"
REFUSED = "refused"
UNUSABLE = "unusable"


@dataclass
class Answer:
    """One answer record (``v<n>.json``)."""

    stem: str
    version: int
    status: str  # image | refused | unusable
    fingerprint: dict = field(
        default_factory=dict
    )  # what was asked: provider, model, prompt/source sha, image config, region
    request_key: str = ""  # hash of the parts of the fingerprint the config decides (stale = differs from the config)
    image_file: str = ""  # v<n>.<ext> next to the record (status image)
    image_sha256: str = ""
    image_bytes: int = 0
    mime_type: str = ""  # detected from the bytes
    mime_label: str = ""  # as labelled by the service (may be wrong)
    reason: str = ""  # refused / unusable: short machine-readable reason (IMAGE_SAFETY, NO_IMAGE, BAD_SOURCE, ...)
    message: str = ""  # refused / unusable: what went wrong, for people
    response_id: str = ""
    model_version: str = ""
    finish_reason: str = ""
    text: str = ""  # the model's words next to the image (cut)
    usage: dict = field(default_factory=dict)  # of the final attempt
    calls: int = 0  # attempts made for this answer (each one a request to the service)
    attempts: list = field(
        default_factory=list
    )  # every failed attempt (a refused answer's last one too): reason, message, status, usage, cost
    est_cost_usd: float | None = None  # every attempt of this answer, from api.pricing (or the service's own figure)
    cost_usd: float | None = None  # reported by the service (OpenRouter), every attempt
    api_seconds: float = 0.0
    source: str = "call"  # call | batch | local
    batch: str = ""  # the batch job it came from
    run_id: str = ""
    ts: float = 0.0
    host: str = ""
    slurm_job_id: str = ""

    @property
    def answer_id(self) -> str:
        return f"v{self.version}"

    @property
    def has_image(self) -> bool:
        return self.status == IMAGE

    @classmethod
    def from_dict(cls, data: dict) -> "Answer":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def versions(output_dir, stem: str) -> list[tuple[int, bool]]:
    """(version, has its image file) of every complete answer of ``stem``, oldest first.

    Cheap (one directory listing): an answer counts once its record exists."""
    try:
        names = os.listdir(layout.answer_dir(output_dir, stem))
    except FileNotFoundError:
        return []
    records, images = set(), set()
    for name in names:
        m = _VERSION_RE.match(name)
        if m:
            (records if m.group(2) == "json" else images).add(int(m.group(1)))
    return [(v, v in images) for v in sorted(records)]


def read(output_dir, stem: str, version: int) -> Answer:
    with open(layout.answer_path(output_dir, stem, version), encoding="utf-8") as fh:
        return Answer.from_dict(json.load(fh))


def read_path(path) -> Answer:
    with open(path, encoding="utf-8") as fh:
        return Answer.from_dict(json.load(fh))


def try_read(output_dir, stem: str, version: int) -> Answer | None:
    try:
        return read(output_dir, stem, version)
    except (OSError, ValueError, TypeError):
        return None


def image_path(output_dir, answer: Answer) -> Path:
    return layout.answer_dir(output_dir, answer.stem) / answer.image_file


def image_data(output_dir, answer: Answer) -> bytes:
    """The image bytes, checked against the recorded SHA-256."""
    data = image_path(output_dir, answer).read_bytes()
    if hashlib.sha256(data).hexdigest() != answer.image_sha256:
        raise ValueError(f"answer {answer.stem}/{answer.image_file} is damaged (SHA-256 differs)")
    return data


def write(output_dir, answer: Answer, data: bytes | None = None) -> Answer:
    """Store one answer durably: its image first (read-only), then the record (which makes it count).

    The caller holds the target's lock and has checked that this version does not exist."""
    directory = layout.answer_dir(output_dir, answer.stem)
    new_dir = not directory.is_dir()
    if data is not None:
        fmt = sniff_format(data)
        answer.status = IMAGE
        answer.image_file = f"v{answer.version}.{_EXT.get(fmt[0], 'bin') if fmt else 'bin'}"
        answer.image_sha256 = hashlib.sha256(data).hexdigest()
        answer.image_bytes = len(data)
        answer.mime_type = fmt[1] if fmt else ""
        target = directory / answer.image_file
        if target.exists():  # left by a job killed between the image and the record
            os.chmod(target, 0o644)
        atomic_write_bytes(target, data, mode=0o444)
    atomic_write_text(layout.answer_path(output_dir, answer.stem, answer.version), json.dumps(asdict(answer), indent=1))
    if new_dir:
        fsync_dir(directory.parent)
    return answer


def remove_image(output_dir, answer: Answer) -> int:
    """Delete an answer's image bytes (the record stays: it says what was paid); bytes freed."""
    path = image_path(output_dir, answer)
    try:
        size = path.stat().st_size
        path.unlink()
    except FileNotFoundError:
        return 0
    return size


def stems(output_dir) -> list[str]:
    """Targets with an answer directory."""
    try:
        return sorted(e.name for e in os.scandir(layout.answers_root(output_dir)) if e.is_dir())
    except FileNotFoundError:
        return []


def iter_all(output_dir):
    """Every readable answer record of the directory."""
    for stem in stems(output_dir):
        for version, _ in versions(output_dir, stem):
            answer = try_read(output_dir, stem, version)
            if answer is not None:
                yield answer


def billed_calls(answer: Answer) -> int:
    """The calls of an answer the service may have billed: the one that brought its image, and
    the failed attempts it may bill (see :func:`~nano_banana_aug.providers.base.may_be_billed`);
    a batch's refusal is one. A 503, a per-minute 429 or a refused connection is not one."""
    billed = sum(
        1
        for r in answer.attempts
        if r.get("billed", may_be_billed(r.get("status"), r.get("reason", ""), bool(r.get("usage"))))
    )
    if answer.status == IMAGE:
        billed += 1
    elif answer.status == REFUSED and not answer.attempts:  # a batch's (or one stored without them)
        billed += int(answer.calls or 0)
    return billed


def failed_attempts(versions, read) -> int:
    """Billed attempts of the answers since the last image, oldest last (``versions`` as
    :func:`versions` gives them, ``read(version)`` an Answer or None): what
    ``api.max_total_attempts`` counts. An overloaded service does not block an output."""
    total = 0
    for version, has_image in reversed(versions):
        if has_image:
            break
        answer = read(version)
        total += billed_calls(answer) if answer is not None else 0
    return total


def cost_per_call(output_dir, source: str, sample: int = 500) -> float | None:
    """What one billed call has cost in this directory (USD, from the answers bought by
    ``source``, "call" or "batch", among the first ``sample`` answers read); None before the first."""
    usd, calls = 0.0, 0
    for n, answer in enumerate(iter_all(output_dir), 1):
        billed = billed_calls(answer) if answer.source == source else 0
        if billed:
            usd, calls = usd + spent_usd(answer), calls + billed
        if n >= sample:
            break
    return usd / calls if calls else None


def spent_usd(answer: Answer) -> float:
    """What one answer cost: the sum over its attempts of the service's figure where it gave one
    (OpenRouter's ``usage.cost``), else the estimate (``est_cost_usd``). ``cost_usd`` alone sums
    only the reported figures, and misses a billed attempt that reported none (a timeout)."""
    if answer.est_cost_usd is not None:
        return float(answer.est_cost_usd)
    return float(answer.cost_usd or 0.0)


def totals(answers) -> dict:
    """Counts and cost of a set of answers: bought ones (an image or a billed refusal) and the
    calls made for them and for the attempts nothing came of (503, per-minute 429: not bought)."""
    out = {"answers": 0, "images": 0, "refused": 0, "calls": 0, "cost_usd": 0.0}
    for a in answers:
        if a.status == UNUSABLE:
            continue
        out["answers"] += a.status in (IMAGE, REFUSED)
        out["images"] += a.status == IMAGE
        out["refused"] += a.status == REFUSED
        out["calls"] += int(a.calls or 0)
        out["cost_usd"] += spent_usd(a)
    return out


def disk_usage(output_dir) -> tuple[int, int]:
    """(answer images stored, bytes)."""
    count = size = 0
    for stem in stems(output_dir):
        for entry in os.scandir(layout.answer_dir(output_dir, stem)):
            m = _VERSION_RE.match(entry.name)
            if m and m.group(2) != "json":
                count += 1
                size += entry.stat().st_size
    return count, size
