"""The paid job's handling of a full disk: nothing bought without room, a paid answer never lost to ENOSPC."""

import errno
import os
from types import SimpleNamespace

import pytest

import signal
import types

from nano_banana_aug import answer, answers, hooks
from nano_banana_aug import jobs as jobs_mod
from nano_banana_aug import paying as paying_mod
from nano_banana_aug.providers import base
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


# ---------------------------------------------------------------- a stop held from a paid 200 (review of c32d6cc)


def main_thread_gets(signum) -> None:
    """The signal, to the main thread: the one that holds stops (a signal sent to the process may go to
    another thread of the test process, e.g. a server's, and be handled at once instead of held)."""
    import threading

    signal.pthread_kill(threading.main_thread().ident, signum)


class _Refuses200ThenAnswers:
    """Attempt 1: a 200 (on_200 -> hold) that is a billed refusal; attempt 2 would be paid again."""

    def __init__(self, hold):
        self.hold, self.calls = hold, 0

    def attempt(self, request):
        self.calls += 1
        if self.calls == 1:
            self.hold()  # what transport.post_json does via provider.on_200
            raise base.AttemptError("IMAGE_SAFETY", retryable=True, status=200, reason="IMAGE_SAFETY")
        raise base.AttemptError("second paid attempt", retryable=False, status=200, reason="IMAGE_SAFETY")


def test_a_stop_during_the_backoff_after_a_billed_200_makes_no_further_attempt():
    got = []
    previous = signal.signal(signal.SIGTERM, lambda s, f: got.append(s))
    try:
        buyer = types.SimpleNamespace(governor=None, ledger=None, estimate=lambda usage: None)
        tally = paying_mod._Tally(buyer, max_pixels=10**7)
        with jobs_mod.stops_held() as hold:
            provider = _Refuses200ThenAnswers(hold)

            def sleep(_s):  # the stop comes while the job waits between attempts (backoff, cool-down, slot)
                main_thread_gets(signal.SIGTERM)

            with pytest.raises(base.GenerationFailed):
                base.call_with_retries(
                    provider,
                    None,
                    base.RetryPolicy(max_attempts=3, backoff_s=0),
                    before_attempt=tally.before,
                    after_attempt=tally.after,
                    sleep=sleep,
                )
        assert got == [signal.SIGTERM]  # delivered once the block ends
        assert provider.calls == 1, "a paid attempt was made after the stop (it came during the backoff)"
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_an_ignored_ctrl_c_is_not_a_stop():
    """job_main leaves SIGINT ignored when the job was started so; hold() still blocks it, and a
    blocked signal is queued even when ignored (Linux), so stop_pending() reports a stop."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with jobs_mod.stops_held() as hold:
            hold()
            main_thread_gets(signal.SIGINT)
            pending = jobs_mod.stop_pending()
        assert not pending, "an ignored SIGINT ends the job's attempts as 'INTERRUPTED'"
    finally:
        signal.signal(signal.SIGINT, previous)
