"""The review decisions of an output directory: ``{output_dir}/review.json``.

    {"version": 1, "decisions": {"<stem>": {"decision": "keep" | "reject",
                                            "answer_id": "v2", "by": "ann", "ts": 1764...}}}

Written by the review server (:mod:`nano_banana_aug.review`) or exported
from the review page; read by the manifest (its ``review`` columns), the
plan (``regenerate=rejected``) and the training join (human rejects left
out). A decision belongs to the answer the output was made from: a new
answer (a regeneration) starts undecided.
"""

from __future__ import annotations

import json
from pathlib import Path

from . import layout
from .errors import UserError
from .fileio import atomic_write_text

FILE = "review.json"
DECISIONS = ("keep", "reject")


def path(output_dir) -> Path:
    return Path(output_dir) / FILE


def load(output_dir) -> dict:
    """stem -> {"decision", "answer_id", "by", "ts"}; {} when there is no file."""
    try:
        data = json.loads(path(output_dir).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise UserError(f"{path(output_dir)}: cannot be read ({exc}); fix or remove it") from None
    decisions = data.get("decisions") if isinstance(data, dict) else None
    if not isinstance(decisions, dict):
        raise UserError(f"{path(output_dir)}: no 'decisions' object; it is not a review file of this workflow")
    return {s: d for s, d in decisions.items() if isinstance(d, dict) and d.get("decision") in DECISIONS}


def save(output_dir, decisions: dict) -> None:
    atomic_write_text(path(output_dir), json.dumps({"version": 1, "decisions": decisions}, indent=1, sort_keys=True))


def applies(decision: dict | None, answer_id: str) -> bool:
    """A decision counts for the output made from the answer it was made on (an adopted
    output, made by the original tool, has none: ``""``)."""
    return bool(decision) and str(decision.get("answer_id") or "") == str(answer_id or "")


def rejected(decisions: dict, stem: str, answer_id: str) -> bool:
    """A person rejected the output of ``stem`` made from ``answer_id``."""
    d = decisions.get(stem)
    return applies(d, answer_id) and d["decision"] == "reject"


def apply_to_rows(rows: list[dict], decisions: dict) -> None:
    """Fill the manifest's review columns (in place)."""
    for row in rows:
        stem = layout.stem(row["image_id"], row["aug_name"], int(row["variant_idx"]))
        d = decisions.get(stem)
        if applies(d, row.get("answer_id") or ""):
            row["review"], row["review_by"], row["review_ts"] = d["decision"], d.get("by", ""), d.get("ts", "")
        else:
            row["review"] = row["review_by"] = row["review_ts"] = ""
