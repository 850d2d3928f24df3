"""Where things live in an output directory, and how file names are built.

Per target (``stem = <image_id>__<aug_name>__v<k>``) there are three kinds of
files, and nothing else holds the target's state::

    {output_dir}/{stem}.{ext}                  the output (rule generate)
    {output_dir}/sidecars/{stem}.json          its sidecar (rule generate)
    {output_dir}/answers/{stem}/v{n}.json      answer n: what the service said (rule answer)
    {output_dir}/answers/{stem}/v{n}.{png|jpg|webp}   its image bytes as received, read-only

Run-wide files (not per target)::

    {output_dir}/.pipeline/targets-<key>.csv     checkpoint `targets` (key: the data settings)
    {output_dir}/.pipeline/settings/<kind>-<key>.json   settings outputs depend on
    {output_dir}/.pipeline/manifest/part-NN-K.csv  manifest shards
    {output_dir}/.pipeline/runs/<run id>/        one run's budget ledger and API governance
    {output_dir}/.pipeline/ledger.lock           the ledgers' one lock (the directory's cost cap)
    {output_dir}/.pipeline/slots/                API call slots (api.concurrency)
    {output_dir}/.pipeline/batches/              Gemini batch submissions (api.mode: batch)
    {output_dir}/.pipeline/logs/                 job logs
    {output_dir}/{manifest}, {log_file}, report/summary.html, gallery/, review.json

``image_id`` never contains ``__`` (it is ``sample_id`` up to the first
``__``) and augmentation names may not contain ``__`` (schema), so a stem
parses unambiguously.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import zlib
from pathlib import Path

KNOWN_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".json")
STEM_RE = re.compile(r"^(?P<image_id>(?:(?!__)[^/])+)__(?P<aug_name>(?:(?!__)[^/])+)__v(?P<variant_idx>\d+)$")
#: manifest shards: an image's outputs always fall into the same part (crc32 of the image id)
SHARDS = 100


def stem(image_id: str, aug_name: str, variant_idx: int) -> str:
    return f"{image_id}__{aug_name}__v{int(variant_idx)}"


def parse_stem(name: str) -> tuple[str, str, int] | None:
    """'ID1__blur__v0' (or a file name with an extension) -> (image_id, aug_name, k)."""
    base = Path(name).name
    for ext in KNOWN_EXTS:
        if base.lower().endswith(ext):
            base = base[: -len(ext)]
            break
    m = STEM_RE.match(base)
    if not m:
        return None
    return m["image_id"], m["aug_name"], int(m["variant_idx"])


def output_path(output_dir, stem_: str, ext: str) -> Path:
    return Path(output_dir) / f"{stem_}.{ext}"


def sidecar_dir(output_dir) -> Path:
    return Path(output_dir) / "sidecars"


def sidecar_path(output_dir, stem_: str) -> Path:
    return sidecar_dir(output_dir) / f"{stem_}.json"


def answers_root(output_dir) -> Path:
    return Path(output_dir) / "answers"


def answer_dir(output_dir, stem_: str) -> Path:
    return answers_root(output_dir) / stem_


def answer_path(output_dir, stem_: str, version: int) -> Path:
    """The answer record: the declared output of rule `answer`."""
    return answer_dir(output_dir, stem_) / f"v{int(version)}.json"


def pipeline_dir(output_dir) -> Path:
    return Path(output_dir) / ".pipeline"


def digest(obj) -> str:
    """A short, stable hash of a JSON-able value (names of settings-dependent files)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def targets_table(output_dir, key: str) -> Path:
    return pipeline_dir(output_dir) / f"targets-{key}.csv"


def settings_file(output_dir, kind: str, key: str) -> Path:
    return pipeline_dir(output_dir) / "settings" / f"{kind}-{key}.json"


def shard_of(image_id: str) -> int:
    return zlib.crc32(image_id.encode("utf-8")) % SHARDS


def manifest_part(output_dir, shard: int, key: str = "0") -> Path:
    return pipeline_dir(output_dir) / "manifest" / f"part-{int(shard):02d}-{key}.csv"


def run_dir(output_dir, run_id: str) -> Path:
    return pipeline_dir(output_dir) / "runs" / run_id


def log_dir(output_dir) -> Path:
    return pipeline_dir(output_dir) / "logs"


def relative_to_root(path, data_root) -> str:
    """``path`` relative to ``data_root`` when it lies under it, else as given (absolute)."""
    p = Path(path).resolve()
    root = Path(data_root).resolve()
    try:
        return p.relative_to(root).as_posix()
    except ValueError:
        return str(p)


def image_path_candidates(image_path: str, manifest_dir=None) -> list[str]:
    """Where a manifest's ``image_path`` may be, in this order, each to be joined to ``data_root``
    (an absolute one stays as it is): as written (relative to ``data_root``), under the manifest's
    folder (outputs kept outside data_root), the file of that name beside the manifest (outputs
    moved together with their manifest, e.g. as a Kaggle dataset)."""
    if os.path.isabs(image_path) or manifest_dir is None:
        return [image_path]
    beside = Path(manifest_dir)
    return [image_path, str((beside / image_path).resolve()), str((beside / Path(image_path).name).resolve())]
