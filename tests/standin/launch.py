"""Start the stand-in as its own process (``python -m tests.standin.server``) and wait until it listens.

Used where the caller must not share a process with the stand-in: benchmarks (its CPU is
not the measured run's) and the test of the command line itself.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def start_process(ready_file: Path, *, api_key: str, latency: float = 0.0, timeout_s: float = 30):
    """(process, base URL) of a stand-in on a free port of 127.0.0.1; its output goes to
    ``<ready_file>.log``. Raises RuntimeError when it does not come up (the process is stopped)."""
    log = ready_file.with_name(ready_file.name + ".log")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "scripts")])}
    cmd = [sys.executable, "-m", "tests.standin.server", "--port", "0", "--latency", str(latency)]
    cmd += ["--api-key", api_key, "--ready-file", str(ready_file)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout_s
    while not ready_file.exists():
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            proc.wait()
            raise RuntimeError(
                f"stand-in did not start within {timeout_s:g} s (exit status {proc.returncode}; see {log})"
            )
        time.sleep(0.05)
    return proc, ready_file.read_text().strip()
