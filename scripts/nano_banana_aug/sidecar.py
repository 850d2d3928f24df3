"""The result of one target: written as a JSON sidecar by rule ``generate``,
aggregated into manifest rows by the ``manifest`` rules.

:class:`Record` is the single representation of a result: generate fills it,
the manifest flattens it, the gallery and the training join read its columns.
Its first 16 fields are the original tool's manifest columns, in order.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields

from .fileio import atomic_write_text

ERROR_MAX_CHARS = 500  # as the original tool

SEED_COLUMNS = [
    "image_id",
    "aug_name",
    "variant_idx",
    "src_image_path",
    "image_path",
    "status",
    "error",
    "ts",
    "orig_w",
    "orig_h",
    "aspect_w",
    "aspect_h",
    "out_w",
    "out_h",
    "pad_area_px",
    "area_scale",
]


@dataclass
class Record:
    # --- the original manifest columns (order matters) ---
    image_id: str
    aug_name: str
    variant_idx: int
    src_image_path: str = ""  # train.csv's image_path
    image_path: str = ""  # output, relative to data_root when under it
    status: str = ""  # success | rejected | failed | blocked | missing | orphaned
    error: str = ""
    ts: float = 0.0  # unix time the result was written
    orig_w: int = 0
    orig_h: int = 0
    aspect_w: int = 0
    aspect_h: int = 0
    out_w: int = 0
    out_h: int = 0
    pad_area_px: int = 0
    area_scale: float = 1.0
    # --- the pipeline's own columns ---
    provider: str = ""
    model: str = ""
    model_version: str = ""
    response_id: str = ""
    attempts: int = 0
    seconds: float = 0.0  # whole job: read, calls incl. waits, post-process, write
    api_seconds: float = 0.0  # in provider calls, waits between attempts included
    error_reason: str = ""  # short machine-readable reason (HTTP_429, IMAGE_SAFETY, ...)
    prompt_sha256: str = ""
    source_sha256: str = ""
    output_bytes: int = 0
    output_sha256: str = ""  # of the output file as written (tells a replaced or damaged file apart)
    prompt_tokens: int | None = None
    candidates_tokens: int | None = None
    thoughts_tokens: int | None = None
    total_tokens: int | None = None
    cost_usd: float | None = None  # reported by the service (OpenRouter)
    est_cost_usd: float | None = None  # from the config's price table
    origin: str = "generated"  # generated | adopted (legacy output without sidecar)
    answer_source: str = ""  # call | batch | local: how the answer the output was made from was bought
    answer_id: str = ""  # that answer: answers/<stem>/<answer_id>.json, e.g. "v2"
    attempts_total: int = 0  # manifest only: billed failed attempts since the last image (api.max_total_attempts)
    regen_error: str = ""  # manifest only: why a newer answer of this (kept) output has no image
    regen_error_ts: float = 0.0  # manifest only: when that answer arrived
    geometry: str = ""  # how the answer was mapped onto the source (postprocess.Geometry.describe)
    generation_key: str = ""  # <request key of the answer>/<derive key>: what asked for the answer, what made the file
    stale: str = ""  # manifest only: "model/prompt" when the answer was asked otherwise than the config says now
    host: str = ""  # where the job ran
    slurm_job_id: str = ""  # set when it ran inside a SLURM job
    review: str = ""  # manifest only: keep | reject | "" -- a person's decision (review.json, nano_banana_aug.review)
    review_by: str = ""  # manifest only: who decided
    review_ts: float | None = None  # manifest only: when
    qc: dict = field(default_factory=dict)  # qc_* scores (flattened into columns)

    def __post_init__(self):
        self.error = (self.error or "")[:ERROR_MAX_CHARS]
        self.regen_error = (self.regen_error or "")[:ERROR_MAX_CHARS]

    def to_json(self) -> str:
        self.__post_init__()
        return json.dumps(asdict(self), indent=1, sort_keys=False)

    def to_row(self) -> dict:
        """A flat manifest row: the fields, then qc_* columns (errors cut again: the manifest's
        marks -- orphaned, blocked -- put words before an error already cut)."""
        self.__post_init__()
        row = asdict(self)
        qc = row.pop("qc") or {}
        row.update({k if k.startswith("qc_") else f"qc_{k}": v for k, v in qc.items()})
        return row

    @classmethod
    def from_dict(cls, data: dict) -> "Record":
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        return cls(**kwargs)


COLUMNS = [f.name for f in fields(Record) if f.name != "qc"]
assert COLUMNS[:16] == SEED_COLUMNS


def write(record: Record, path) -> None:
    atomic_write_text(path, record.to_json())


def read(path) -> Record:
    with open(path, encoding="utf-8") as fh:
        return Record.from_dict(json.load(fh))
