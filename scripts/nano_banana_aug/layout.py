"""Where things live in an output directory, and how file names are built.

    {output_dir}/{image_id}__{aug_name}__v{k}.{ext}    the outputs (rule targets)
    {output_dir}/sidecars/{image_id}__{aug_name}__v{k}.json   one per target
    {output_dir}/.pipeline/targets.csv                 checkpoint `targets`
    {output_dir}/.pipeline/runs/<run id>/              one run's private config, ledger, locks
    {output_dir}/answers/<stem>/                       every paid answer (answers.py)
    {output_dir}/{manifest}, {output_dir}/{log_file}   derived, rebuilt each run

``image_id`` never contains ``__`` (it is ``sample_id`` up to the first
``__``) and augmentation names may not contain ``__`` (schema), so a stem
parses unambiguously.
"""

from __future__ import annotations

import re
from pathlib import Path

KNOWN_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".json")
STEM_RE = re.compile(r"^(?P<image_id>(?:(?!__)[^/])+)__(?P<aug_name>(?:(?!__)[^/])+)__v(?P<variant_idx>\d+)$")


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


def output_path(output_dir, image_id: str, aug_name: str, variant_idx: int, ext: str) -> Path:
    return Path(output_dir) / f"{stem(image_id, aug_name, variant_idx)}.{ext}"


def sidecar_dir(output_dir) -> Path:
    return Path(output_dir) / "sidecars"


def sidecar_path(output_dir, image_id: str, aug_name: str, variant_idx: int) -> Path:
    return sidecar_dir(output_dir) / f"{stem(image_id, aug_name, variant_idx)}.json"


def pipeline_dir(output_dir) -> Path:
    return Path(output_dir) / ".pipeline"


def targets_table(output_dir) -> Path:
    return pipeline_dir(output_dir) / "targets.csv"


def settings_file(output_dir, settings: dict) -> Path:
    """The checkpoint's settings, under a name that changes with them (so it reruns)."""
    import hashlib
    import json

    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    return pipeline_dir(output_dir) / "settings" / f"targets-{digest}.json"


def relative_to_root(path, data_root) -> str:
    """``path`` relative to ``data_root`` when it lies under it, else as given (absolute)."""
    p = Path(path).resolve()
    root = Path(data_root).resolve()
    try:
        return p.relative_to(root).as_posix()
    except ValueError:
        return str(p)


def target_lock(output_dir, stem: str) -> Path:
    """Held by the one process working on a target (generate, answer pruning)."""
    return pipeline_dir(output_dir) / "locks" / f"{stem}.lock"
