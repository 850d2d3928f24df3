"""The paid job's handling of a full disk: nothing bought without room, a paid answer never lost to ENOSPC."""

import errno
import os
from types import SimpleNamespace

import pytest

from nano_banana_aug import answer, answers, hooks
from nano_banana_aug.answers import Answer


def purchase(stem="ID1__a__v0"):
    return SimpleNamespace(
        answer=Answer(stem=stem, version=1, status="image", calls=1, est_cost_usd=0.13),
        data=b"\x89PNG\r\n\x1a\n" + b"x" * 100,
    )


def test_a_paid_answer_waits_in_memory_for_disk_space(tmp_path, monkeypatch):
    """Defect: 8 answers came back, 6 were lost to ENOSPC and bought again by the next run."""
    real, failures, said = answers.write, [], []

    def full_twice(*args, **kwargs):
        if len(failures) < 2:
            failures.append(1)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(answers, "write", full_twice)
    stored = answer.store(tmp_path, purchase(), wait_s=60, pause_s=0.01, say=said.append)
    assert stored.image_file == "v1.png" and (tmp_path / "answers" / "ID1__a__v0" / "v1.json").is_file()
    assert len(failures) == 2 and len(said) == 1 and "the disk is full" in said[0]


def test_a_disk_that_stays_full_stops_the_run(tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(answers, "write", full)
    with pytest.raises(answer.StopBuying, match="the disk is full: the paid answer v1 of ID1__a__v0"):
        answer.store(tmp_path, purchase(), wait_s=0.05, pause_s=0.01, say=lambda m: None)


def test_other_write_errors_are_not_waited_for(tmp_path, monkeypatch):
    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(answers, "write", denied)
    with pytest.raises(PermissionError):
        answer.store(tmp_path, purchase(), wait_s=60, pause_s=0.01, say=lambda m: None)


def test_no_answer_is_bought_without_room_for_it(tmp_path, monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "disk_usage", lambda p: SimpleNamespace(total=10**12, used=10**12, free=50_000_000))
    with pytest.raises(answer.StopBuying, match="only 50 MB free"):
        answer.check_space(tmp_path)


def test_the_run_checks_the_space_it_needs_before_paying(tmp_path):
    cfg = {"data": {"output_dir": str(tmp_path / "out")}}
    assert hooks.space_problem(cfg, to_buy=10, to_build=0, free_bytes=10**12) == ""
    problem = hooks.space_problem(cfg, to_buy=1000, to_build=50, free_bytes=2 * 10**9)
    assert "has 2.0 GB free; this run writes about 18.1 GB (1000 answers and their outputs, 50 rebuilt" in problem


# ---------------------------------------------------------------- a stored answer is never removed by Snakemake

JOB = """
import os, signal, sys
from types import SimpleNamespace
from nano_banana_aug import answer, answers, jobs
from nano_banana_aug.answers import Answer

out, when = sys.argv[1], sys.argv[2]
path = os.path.join(out, "answers", "ID1__a__v0", "v1.json")
snakemake = SimpleNamespace(log=[os.path.join(out, "job.log")], rule="answer", wildcards={}, output=[path])
real = answers.write

def write(*args, **kwargs):
    if when == "while storing":
        os.kill(os.getpid(), signal.SIGTERM)  # Snakemake stops its jobs while the answer is written
    return real(*args, **kwargs)

answers.write = write

def work():
    if when == "before storing":
        os.kill(os.getpid(), signal.SIGTERM)
    answer.store(out, SimpleNamespace(
        answer=Answer(stem="ID1__a__v0", version=1, status="image", calls=1, est_cost_usd=0.13),
        data=b"\\x89PNG\\r\\n\\x1a\\n" + b"x" * 100,
    ))
    if when == "after storing":
        os.kill(os.getpid(), signal.SIGTERM)
    if when == "error after storing":
        raise OSError(28, "No space left on device")  # e.g. the augment.log line
    return "stored"

jobs.job_main(snakemake, work, name="answer ID1__a__v0 v1", done=lambda: os.path.exists(path))
"""


@pytest.mark.parametrize(
    ("when", "code", "kept"),
    [
        ("before storing", 128 + 15, False),
        ("while storing", 0, True),
        ("after storing", 0, True),
        ("error after storing", 0, True),
    ],
)
def test_a_stored_answer_makes_the_job_succeed_whatever_comes_after(tmp_path, when, code, kept):
    """Snakemake removes the outputs of a failed job (rule answer's are update(): no backup when the
    file is new), and the next run buys a removed answer again. So once the paid answer is stored
    the job exits 0: on SIGTERM (Snakemake stopping its jobs, also while the answer is being
    written) and on any error after it. Before, each of these exited non-zero."""
    import subprocess
    import sys

    from pathlib import Path

    scripts = str(Path(__file__).resolve().parents[1] / "scripts")  # this checkout's code, not an installed one
    env = {**os.environ, "PYTHONPATH": scripts}
    res = subprocess.run(
        [sys.executable, "-c", JOB, str(tmp_path), when], capture_output=True, text=True, timeout=60, env=env
    )
    assert res.returncode == code, res.stderr
    assert (tmp_path / "answers" / "ID1__a__v0" / "v1.json").is_file() == kept
    if when == "error after storing":
        assert res.stderr.strip() == (
            "answer ID1__a__v0 v1: unexpected error: No space left on device (details: "
            f"{tmp_path / 'job.log'}) (after its work was stored: the job succeeds and keeps it)"
        )
