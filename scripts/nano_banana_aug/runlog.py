"""augment.log: one line per target event, plus the run's plan and summary.

Lines are appended with single O_APPEND writes, so parallel jobs (also on
other nodes of a shared filesystem) never interleave within a line.  Nothing
here ever sees the API key.
"""

from __future__ import annotations

import time
from pathlib import Path

from .fileio import append_line


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def log_path(cfg: dict) -> Path:
    return Path(cfg["data"]["output_dir"]) / cfg["data"]["log_file"]


def event(cfg: dict, what: str, target: str, **fields) -> None:
    """``<time>  <what>  <target>  key=value ...`` (what: started / ok / failed / rejected)."""
    extras = "  ".join(f"{k}={_fmt(v)}" for k, v in fields.items() if v not in (None, ""))
    append_line(log_path(cfg), f"{_now()}  {what:<8} {target}  {extras}".rstrip())


def message(cfg: dict, text: str) -> None:
    """A free-form line (plan, summary)."""
    for line in text.splitlines():
        append_line(log_path(cfg), f"{_now()}  {line}")


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.2f}"
    text = str(value).replace("\n", " ")
    return f'"{text}"' if " " in text else text
