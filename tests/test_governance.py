"""Run-wide API governance: fatal errors stop the run, quotas are classified,
429 cool-downs are shared, the rate limit holds across processes, redirects are
never followed, and the filesystem's locks are checked.  End-to-end tests run
the real `snakemake` against the stand-in; nothing here depends on how fast
the machine is (waits are only checked from below: a sleep never ends early)."""

from __future__ import annotations

import csv
import multiprocessing
import re
import time

import pytest

from nano_banana_aug import governor, locks
from nano_banana_aug.providers.base import AttemptError

from .helpers import make_paid_run, said, snakemake
from .standin.server import B, StandinServer

pytest_plugins = ["tests.standin.fixtures"]

ONE = [{"name": "overcast", "prompt": "Make it overcast.", "num_images": 1}]


def run(wf, *args):
    return snakemake(wf, "-j", "8", "--configfile", "run.yaml", *args)


def rows(wf):
    path = wf / "data" / "aug" / "manifest.csv"
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


# ---------------------------------------------------------------- classification (unit)


def err(status, message="", retry_after=None, quota=None, reason=""):
    e = AttemptError(message, retryable=True, status=status, retry_after=retry_after, reason=reason)
    e.quota = quota or []
    return e


@pytest.mark.parametrize(
    "e, provider, action, reason",
    [
        (
            err(
                429,
                retry_after=20,
                quota=[{"quotaId": "GenerateRequestsPerMinutePerProjectPerModel", "quotaValue": "20"}],
            ),
            "gemini",
            "cooldown",
            "QUOTA_MINUTE",
        ),
        (
            err(429, quota=[{"quotaId": "GenerateRequestsPerDayPerProjectPerModel", "quotaValue": "250"}]),
            "gemini",
            "stop",
            "QUOTA_DAY",
        ),
        (
            err(
                429,
                retry_after=20,
                quota=[{"quotaId": "GenerateRequestsPerMinutePerProjectPerModel", "quotaValue": "0"}],
            ),
            "gemini",
            "stop",
            "QUOTA_ZERO",
        ),
        (err(429, retry_after=3600), "gemini", "stop", "QUOTA_WAIT"),
        (err(429), "gemini", "retry", ""),
        (err(400, "HTTP 400 INVALID_ARGUMENT: API key not valid. (API_KEY_INVALID)"), "gemini", "stop", "BAD_KEY"),
        (err(400, "HTTP 400 INVALID_ARGUMENT: Request contains an invalid argument."), "gemini", "retry", ""),
        (err(401), "openrouter", "stop", "BAD_KEY"),
        (err(402), "openrouter", "stop", "NO_CREDITS"),
        (err(403), "gemini", "stop", "PERMISSION_DENIED"),
        (err(403), "openrouter", "retry", ""),  # OpenRouter 403 = this input was flagged by moderation
        (err(404), "gemini", "stop", "NO_MODEL"),
        (err(302, "HTTP 302 redirect"), "gemini", "stop", "REDIRECT"),
        (err(503), "gemini", "retry", ""),
    ],
)
def test_classify(e, provider, action, reason):
    v = governor.classify(e, provider, max_retry_wait_s=120)
    assert (v.action, v.reason) == (action, reason)
    if action == "stop":
        assert v.message


def test_daily_quota_names_the_reset_time():
    v = governor.classify(
        err(429, quota=[{"quotaId": "GenerateRequestsPerDayPerProjectPerModel"}]), "gemini", 120, now=1_800_000_000
    )
    assert v.until > 1_800_000_000 and "midnight Pacific" in v.message


def test_the_first_stop_wins_and_every_job_sees_it(tmp_path):
    g1, g2 = governor.Governor(tmp_path), governor.Governor(tmp_path)
    assert g1.stop(governor.Verdict("stop", "BAD_KEY", "first")) is True
    assert g2.stop(governor.Verdict("stop", "NO_CREDITS", "second")) is False
    assert g2.stopped()["message"] == "first"
    with pytest.raises(governor.DispatchStopped):
        g2.before_call()


def test_a_cooldown_is_shared_and_only_moves_forward(tmp_path):
    g1, g2 = governor.Governor(tmp_path), governor.Governor(tmp_path)
    until = time.time() + 30
    g1.pause(until)
    g1.pause(until - 10)  # an earlier end never shortens it
    assert g2.paused_until() == pytest.approx(until, abs=0.01)
    slept = []

    def fake_sleep(seconds):  # records the wait, then the run stops (ends the loop)
        slept.append(seconds)
        g1.stop(governor.Verdict("stop", "BAD_KEY", "stop"))

    with pytest.raises(governor.DispatchStopped):
        g2.before_call(sleep=fake_sleep)
    assert slept and 25 <= slept[0] <= 30.001  # the shared file keeps milliseconds: at most 0.5 ms later


def _claim(args):
    directory, n = args
    g = governor.Governor(directory, per_minute=600)
    return [g._claim_tick() for _ in range(n)]


def test_rate_limit_ticks_are_unique_across_processes(tmp_path):
    with multiprocessing.get_context("fork").Pool(4) as pool:
        got = sum(pool.map(_claim, [(str(tmp_path), 15)] * 4), [])
    interval = 60 / 600
    ticks = sorted(round(t / interval) for t in got)
    assert len(set(ticks)) == 60  # no start time handed out twice
    # so no 60 s window can hold more than 600 starts: consecutive starts are >= one interval apart
    assert all(b - a >= 1 for a, b in zip(ticks, ticks[1:], strict=False))


# ---------------------------------------------------------------- where locks hold (unit)

MOUNTS = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
40 22 0:50 / /lustre rw,relatime shared:20 - lustre 10.0.0.1@tcp:/fs rw,localflock,lazystatfs
41 22 0:51 / /nfs rw,relatime shared:21 - nfs4 srv:/export rw,vers=4.2,local_lock=none
42 22 0:52 / /nfs3 rw,relatime shared:22 - nfs srv:/old rw,vers=3,nolock
43 22 0:53 / /beegfs rw,relatime shared:23 - beegfs beegfs_nodev rw,cfgFile=/etc/beegfs/beegfs-client.conf
44 22 0:54 / /lustre2 rw,relatime shared:24 - lustre 10.0.0.1@tcp:/fs2 rw,flock
"""


@pytest.mark.parametrize(
    "path, node_local",
    [
        ("/data/x", False),
        ("/lustre/proj/out", True),
        ("/nfs/out", False),
        ("/nfs3/out", True),
        ("/beegfs/out", True),
        ("/lustre2/out", False),
    ],
)
def test_node_local_locks_are_recognised(tmp_path, path, node_local):
    reason = locks.node_local_reason(path, mountinfo=MOUNTS, beegfs_conf=str(tmp_path / "missing.conf"))
    assert bool(reason) == node_local, reason


def test_beegfs_with_global_locks_is_fine(tmp_path):
    conf = tmp_path / "beegfs-client.conf"
    conf.write_text("# client\ntuneUseGlobalFileLocks = true\n")
    assert locks.node_local_reason("/beegfs/out", mountinfo=MOUNTS, beegfs_conf=str(conf)) == ""


def test_probe_passes_where_flock_works(tmp_path):
    locks.probe(tmp_path / "pipe")


# ---------------------------------------------------------------- end to end


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.parametrize(
    "provider, kind, cause",
    [
        ("gemini", "bad_key", "API key is not valid"),
        ("gemini", "not_found", "model does not exist"),
        ("openrouter", "unauthorized", "API key is not valid"),
        ("openrouter", "no_credits", "add credits or raise the key's limit"),
    ],
)
def test_a_fatal_error_stops_the_run_after_the_calls_in_flight(tmp_path, standin, provider, kind, cause):
    wf = make_paid_run(tmp_path, standin, provider=provider, n_images=30, augs=ONE, concurrency=3)
    standin.set_default(provider, kind)
    res = run(wf)
    assert res.returncode != 0
    assert len(standin.requests) <= 3, len(standin.requests)  # at most the calls in flight with the first
    # said when it happened (the job that met it) and in the summary, nowhere else
    assert res.stderr.count(cause) == 2, res.stderr[-3000:]
    assert [line for line in res.stderr.splitlines() if cause in line][-1].startswith("summary: ")
    assert "stopped buying: " in res.stderr
    # no further job starts: only the answer jobs already running when the first one failed (the
    # `api` resource lets 2 x concurrency run at once), not one per remaining target
    started = list((wf / "data" / "aug" / ".pipeline" / "logs" / "answer").glob("*.log"))
    assert len(started) <= 6 and res.stderr.count("Error in rule answer") <= 6, len(started)
    assert [r for r in rows(wf) if r["status"] == "failed"] == []  # targets left as they were
    assert "0 answers bought" in res.stderr


@pytest.mark.e2e
@pytest.mark.slow
def test_a_daily_quota_stops_dispatching(tmp_path, standin):
    wf = make_paid_run(tmp_path, standin, n_images=20, augs=ONE, concurrency=2)
    standin.set_quota(per_day=5)
    res = run(wf)
    assert res.returncode != 0
    refused = [r for r in standin.requests if r.status == 429]
    assert refused
    first = min(r.finished for r in refused)
    later = [r for r in standin.requests if r.started > first]
    assert len(later) <= 1, len(later)  # only what another job had already started (concurrency 2)
    assert res.stderr.count("GenerateRequestsPerDayPerProjectPerModel") == 2  # when it happened, in the summary
    assert "resets at midnight Pacific" in res.stderr
    got = rows(wf)
    # 5 answers bought (the outputs of those whose jobs were running are built, the others by the next
    # run, for free); the rest untouched, not failed
    assert len(list((wf / "data" / "aug" / "answers").glob("*/v1.png"))) == 5
    assert {r["status"] for r in got} == {"success"} and 1 <= len(got) <= 5
    # the next run (after the reset) does the rest
    standin.set_quota()
    res = run(wf)
    assert res.returncode == 0 and len(rows(wf)) == 20


@pytest.mark.e2e
@pytest.mark.slow
def test_a_429_pauses_every_job(tmp_path, standin):
    wf = make_paid_run(tmp_path, standin, n_images=8, augs=ONE, concurrency=3, retry_backoff_s=0)
    standin.script(
        "gemini",
        B("rate_limit", retry_delay="3s", quota_id="GenerateRequestsPerMinutePerProjectPerModel", quota_value="20"),
    )
    res = run(wf)
    assert res.returncode == 0, res.stderr[-3000:]
    limited = next(r for r in standin.requests if r.status == 429)
    # After the 429 was answered, only calls already past their last check (at most the other
    # concurrency - 1 jobs) may still go out; every other call waits for the shared cool-down
    # (a sleep never ends early, so this holds however slow the machine is).
    after = [r.started - limited.finished for r in standin.requests if r.started > limited.finished]
    early = [d for d in after if d < 2.5]
    assert len(early) <= 2 and len(after) - len(early) >= 3, [round(d, 2) for d in after]


@pytest.mark.e2e
@pytest.mark.slow
def test_a_redirect_is_not_followed_and_the_key_stays_home(tmp_path, standin):
    other = StandinServer(api_key=None).start()
    try:
        wf = make_paid_run(tmp_path, standin, n_images=3, augs=ONE, concurrency=1)
        standin.set_default("gemini", B("redirect", location=f"{other.url}/v1beta/models/x:generateContent"))
        res = run(wf)
        assert res.returncode != 0
        assert other.requests == []  # nothing (and so no key) reached the other host
        assert len(standin.requests) == 1
        assert "redirect to" in res.stderr and other.url in res.stderr
    finally:
        other.stop()


@pytest.mark.e2e
@pytest.mark.slow
def test_per_minute_quota_with_the_run_wide_rate_limit(tmp_path, standin):
    """40 targets, C = 8, a quota of 30 requests in any 15 s (the stand-in's minute shortened: the point
    is the spacing, not the wall time) and api.max_requests_per_minute: 120 (one start every 0.5 s):
    the quota is (almost) never hit."""
    wf = make_paid_run(
        tmp_path,
        standin,
        n_images=40,
        augs=ONE,
        concurrency=8,
        max_requests_per_minute=120,
        retry_backoff_s=1,
        max_retries=5,
    )
    standin.set_quota(per_minute=30, window_s=15.0)
    res = snakemake(wf, "-j", "16", "--configfile", "run.yaml", timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert sum(1 for r in standin.requests if r.status == 429) <= 2
    assert len(rows(wf)) == 40
    starts = sorted(r.started for r in standin.requests)
    assert starts[-1] - starts[0] >= 39 * 0.5 * 0.95  # the ticks: one start every 0.5 s


def test_an_answer_jobs_time_limit_covers_every_wait(tmp_path, standin):
    """SLURM kills a job at its time limit, and a job killed mid-call loses a billed answer:
    an answer job's `runtime` covers every attempt timing out after the longest retry wait,
    a wait for a call slot and the rate limit's queue (minutes, rounded down, plus 5)."""
    api = dict(timeout_s=100, max_retries=3, max_retry_wait_s=60, concurrency=4, max_requests_per_minute=10)
    wf = make_paid_run(tmp_path, standin, n_images=1, **api)
    run(wf, "--until", "targets")
    dry = run(wf, "-n", "--workflow-profile", "none")  # Snakemake's own job blocks show resources
    calls = 3 * (100 + 60)  # every attempt times out, then waits the longest retry wait
    slot = 2 * 100 + 60  # a wait for a free call slot
    queue = 60 * 2 * 4 / 10  # the rate limit's queue of the jobs allowed in flight (api resource)
    expected = 5 + int((calls + slot + queue) / 60)
    limits = re.findall(r"rule answer:.*?resources: [^\n]*\bruntime=(\d+)\b", said(dry), re.S)
    assert limits == [str(expected)] * 2, said(dry)[-3000:]
    assert expected == 18 and standin.count == 0


@pytest.mark.e2e
@pytest.mark.slow
def test_a_billed_refusal_before_a_stop_is_kept_by_the_run(tmp_path, standin):
    """A refusal with usage (billed), then a daily quota stops the run: the refusal's answer record
    stays on disk and is counted (Snakemake removes the outputs of a job that fails)."""
    wf = make_paid_run(tmp_path, standin, n_images=1, augs=ONE, concurrency=1, retry_backoff_s=0)
    standin.script(
        "gemini",
        B("image_safety"),
        B("rate_limit", quota_id="GenerateRequestsPerDayPerProjectPerModel", quota_value="250"),
    )
    res = run(wf)
    assert "resets at midnight Pacific" in res.stderr, res.stderr[-3000:]
    records = list((wf / "data" / "aug" / "answers").glob("*/v1.json"))
    assert len(records) == 1 and '"IMAGE_SAFETY"' in records[0].read_text(), res.stderr[-3000:]
    assert "1 answers bought (0 with an image, 1 without" in res.stderr, res.stderr[-3000:]
