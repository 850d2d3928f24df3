"""Buying one answer (rule answer's code, no Snakemake) against the stand-in: what is stored, what
is counted, and what is not -- a call that never got a call slot is no paid call."""

from __future__ import annotations

import copy
import fcntl
import hashlib
import os
import stat
import time
from pathlib import Path

import pytest

from nano_banana_aug import answer as answer_job
from nano_banana_aug import answers, budget, generate, layout, paying, targets
from nano_banana_aug import config as config_mod
from nano_banana_aug.pipeline import Pipeline
from nano_banana_aug.plan import BLOCKED, BUILD, BUY

from .helpers import log_text, make_dataset, wait_for
from .standin.server import B
from .test_config import checked

pytest_plugins = ["tests.standin.fixtures"]

RUN_ID = "20260101T000000-1-test"
PREFIX = "Change only imaging conditions."
AUG = {"name": "overcast", "prompt": "Make it overcast.", "num_images": 1}
STEM = "ID1000__overcast__v0"
INPUT_IMAGE_TOKENS, OUTPUT_IMAGE_TOKENS = 560, 1120  # what the stand-in reports (tests/standin/server.py)


class Paid:
    """One image, a gemini config whose base URL is the stand-in, the key in a file of its own."""

    def __init__(self, root: Path, standin, **api):
        self.root = root
        self.data = make_dataset(root / "data", n=1)
        self.out = root / "out"
        self.key_file = root / "gemini.secret"
        self.key_file.write_text(standin.api_key + "\n")
        self.cfg = checked(
            {
                "api": {
                    "provider": "gemini",
                    "base_url": standin.gemini_base_url,
                    "api_key_file": str(self.key_file),
                    "concurrency": 1,
                    "timeout_s": 10,
                    "retry_backoff_s": 0.05,
                    "match_aspect": False,
                    **api,
                },
                "data": {"data_root": str(self.data), "output_dir": str(self.out)},
                "prompt_prefix": PREFIX,
                "augmentations": [copy.deepcopy(AUG)],
            }
        )
        self.table = Path(Pipeline(self.cfg).table)
        targets.make_table(self.cfg, self.table)
        self.source = (self.data / "train" / "ID1000.jpg").read_bytes()

    def buy(self, version: int = 1):
        return answer_job.run(self.cfg, STEM, version, str(self.table))

    def ledger(self) -> dict:
        return budget.for_config(self.cfg).read()

    def build(self, version: int):
        """Rule generate's code: the output (or a refusal's placeholder) from answer ``version``."""
        return generate.run(
            self.cfg,
            layout.answer_path(self.out, STEM, version),
            layout.output_path(self.out, STEM, "png"),
            layout.sidecar_path(self.out, STEM),
            str(self.table),
        )

    def decision(self):
        return Pipeline(self.cfg).decisions()[STEM]

    def answer_files(self) -> list[str]:
        d = layout.answer_dir(self.out, STEM)
        return sorted(os.listdir(d)) if d.is_dir() else []


@pytest.fixture
def paid(tmp_path, standin, monkeypatch):
    monkeypatch.setenv("NANO_BANANA_RUN_ID", RUN_ID)  # this run's ledger: .pipeline/runs/<id>/ledger.json
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    return lambda **api: Paid(tmp_path, standin, **api)


def files_containing(root: Path, needle: str, skip: Path) -> list[str]:
    hits = []
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            p = Path(dirpath) / name
            if p != skip and needle.encode() in p.read_bytes():
                hits.append(str(p.relative_to(root)))
    return hits


def temp_files(root: Path) -> list[str]:
    return [str(p.relative_to(root)) for p in root.rglob("*") if p.name.endswith(".tmp")]


def prompt_tokens(prompt: str) -> int:
    """The stand-in's promptTokenCount for a request with one input image."""
    return max(1, len(prompt) // 4) + INPUT_IMAGE_TOKENS


# ---------------------------------------------------------------- the key regression


def test_a_slot_wait_that_times_out_is_no_paid_call(paid, standin, monkeypatch):
    p = paid(max_calls=1)  # a run that may pay exactly one call
    monkeypatch.setattr(paying, "slot_wait_s", lambda cfg: 0.3)  # normally 2 x timeout_s + 60 s
    slots = p.out / ".pipeline" / "slots"
    slots.mkdir(parents=True)
    holder = os.open(slots / "slot-0.lock", os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another process's call in flight: the one slot
    try:
        assert p.ledger() == budget.EMPTY
        with pytest.raises(answer_job.StopBuying, match=r"not bought: no API call slot freed within 0\.3 s"):
            p.buy()
        assert standin.count == 0  # no request went out
        assert p.ledger() == budget.EMPTY  # nothing reserved is left, nothing billed, nothing refused
        assert budget.spent_in_directory(p.out) == 0.0
        assert answers.versions(p.out, STEM) == [] and p.answer_files() == [".lock"]
        assert list(answers.iter_all(p.out)) == []
        assert temp_files(p.out) == []
        # not blocked, not failed: the target is simply still to buy
        d = p.decision()
        assert (d.action, d.version, d.why) == (BUY, 1, "new")
        assert "SLOT_TIMEOUT" in log_text(p.root, "out")
    finally:
        os.close(holder)
    # the slot free again, the same job buys the answer -- within max_calls=1: the wait cost nothing
    bought = p.buy()
    assert bought is not None and bought.status == answers.IMAGE and bought.calls == 1
    assert standin.count == 1
    ledger = p.ledger()
    assert (ledger["calls"], ledger["billable"], ledger["refused"]) == (1, 1, 0)


# ---------------------------------------------------------------- a paid answer


def test_a_paid_answer_is_stored_once_with_what_was_asked_and_paid(paid, standin):
    p = paid()
    bought = p.buy()
    (rec,) = standin.requests
    assert (rec.kind, rec.status, rec.model) == ("ok", 200, "gemini-3-pro-image-preview")
    assert rec.prompt == f"{PREFIX}\n\n{AUG['prompt']}" and rec.image_bytes == p.source

    # exactly one answer: its record and its image bytes, each under its final name (no temp file)
    assert p.answer_files() == [".lock", "v1.json", "v1.png"]
    assert temp_files(p.out) == []
    assert answers.versions(p.out, STEM) == [(1, True)]
    stored = answers.read(p.out, STEM, 1)
    assert stored == bought
    assert (stored.status, stored.version, stored.calls, stored.attempts) == (answers.IMAGE, 1, 1, [])
    assert (stored.source, stored.run_id, stored.image_file) == ("call", RUN_ID, "v1.png")

    # what was asked: the fingerprint and the request key the plan compares with the config
    assert stored.fingerprint == {
        "provider": "gemini",
        "model": "gemini-3-pro-image-preview",
        "prompt_sha256": hashlib.sha256(rec.prompt.encode()).hexdigest(),
        "image_config": None,
        "match_aspect": False,
        "local": None,
        "source_sha256": hashlib.sha256(p.source).hexdigest(),
    }
    settings = config_mod.request_settings(p.cfg, p.cfg["augmentations"][0])
    assert stored.request_key == config_mod.request_key(settings)

    # what the service said: its response id and usage, and what that costs
    assert stored.response_id.startswith(f"standin-{rec.index:06d}-")
    assert stored.model_version == "gemini-3-pro-image-preview" and stored.finish_reason == "STOP"
    tokens = prompt_tokens(rec.prompt)
    assert stored.usage == {
        "prompt_tokens": tokens,
        "candidates_tokens": OUTPUT_IMAGE_TOKENS,
        "output_image_tokens": OUTPUT_IMAGE_TOKENS,
        "total_tokens": tokens + OUTPUT_IMAGE_TOKENS,
    }
    cost = round((tokens * 2.0 + OUTPUT_IMAGE_TOKENS * 120.0) / 1e6, 6)
    assert stored.est_cost_usd == pytest.approx(cost) and stored.cost_usd is None

    # the image bytes as received, read-only, matching the record
    image = layout.answer_dir(p.out, STEM) / "v1.png"
    data = image.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and stored.mime_type == "image/png"
    assert (hashlib.sha256(data).hexdigest(), len(data)) == (stored.image_sha256, stored.image_bytes)
    assert stat.S_IMODE(image.stat().st_mode) & 0o222 == 0

    # counted once: one billable call at its estimated cost (the reservation replaced, not added)
    ledger = p.ledger()
    assert (ledger["calls"], ledger["billable"], ledger["refused"]) == (1, 1, 0)
    assert ledger["cost_usd"] == pytest.approx(cost)
    assert budget.spent_in_directory(p.out) == pytest.approx(cost)

    # the key travelled only in its header and is in no file written
    assert standin.key_leaks(standin.api_key) == []
    assert files_containing(p.root, standin.api_key, skip=p.key_file) == []

    # the same job again (a second run, an orphan): nothing bought, nothing changed
    before = (layout.answer_path(p.out, STEM, 1).stat().st_mtime_ns, image.stat().st_mtime_ns)
    assert p.buy() is None
    assert standin.count == 1 and p.ledger() == ledger
    assert (layout.answer_path(p.out, STEM, 1).stat().st_mtime_ns, image.stat().st_mtime_ns) == before
    assert (p.decision().action, p.decision().version) == (BUILD, 1)


# ---------------------------------------------------------------- a refused answer


@pytest.mark.parametrize("attempts", [1, 2])
def test_a_safety_block_is_stored_as_a_refusal_and_counted_once(paid, standin, attempts):
    p = paid(max_retries=attempts)
    standin.set_default("gemini", B("image_safety"))
    refused = p.buy()
    assert [r.kind for r in standin.requests] == ["image_safety"] * attempts
    assert p.answer_files() == [".lock", "v1.json"]  # no image
    assert temp_files(p.out) == []
    stored = answers.read(p.out, STEM, 1)
    assert stored == refused
    assert (stored.status, stored.reason, stored.calls) == (answers.REFUSED, "IMAGE_SAFETY", attempts)
    assert stored.message.startswith(f"after {attempts} attempt(s): no usable image: finishReason=IMAGE_SAFETY")
    assert (stored.image_file, stored.image_sha256) == ("", "")
    tokens = prompt_tokens(standin.requests[0].prompt)
    assert stored.usage == {"prompt_tokens": tokens, "candidates_tokens": 0, "total_tokens": tokens}
    # every attempt is kept with its usage and cost (such answers can be billed)
    assert [(a["reason"], a["status"], a["usage"]["prompt_tokens"]) for a in stored.attempts] == [
        ("IMAGE_SAFETY", 200, tokens)
    ] * attempts
    per_call = round(tokens * 2.0 / 1e6, 6)
    assert [a["est_cost_usd"] for a in stored.attempts] == [pytest.approx(per_call)] * attempts
    assert stored.est_cost_usd == pytest.approx(per_call * attempts)

    # counted once: one answer, its calls, its cost -- in the answers and in the ledger alike
    assert answers.totals(answers.iter_all(p.out)) == {
        "answers": 1,
        "images": 0,
        "refused": 1,
        "calls": attempts,
        "cost_usd": pytest.approx(per_call * attempts),
    }
    ledger = p.ledger()
    assert (ledger["calls"], ledger["billable"], ledger["refused"]) == (attempts, attempts, 0)
    assert ledger["cost_usd"] == pytest.approx(per_call * attempts)
    assert files_containing(p.root, standin.api_key, skip=p.key_file) == []

    # bought once: the same job again makes no request; the plan builds its placeholder next
    assert p.buy() is None and standin.count == attempts
    assert (p.decision().action, p.decision().version) == (BUILD, 1)


def test_a_200_whose_body_is_lost_is_counted_as_billed(paid, standin):
    """Attempt 1: the 200's headers arrive, then the body stops for longer than timeout_s (the
    answer was made and billed, but never seen); attempt 2 answers. Before, attempt 1 was booked
    as not billable with no cost: the budgets did not see it."""
    p = paid(max_retries=2, timeout_s=2)
    standin.script("gemini", B("slow_body", pieces=2, stall=True), "ok")
    bought = p.buy()
    assert bought.status == answers.IMAGE and bought.calls == 2
    lost = bought.attempts[0]
    assert (lost["status"], lost["reason"], lost["est_cost_usd"]) == (200, "TIMEOUT", 0.1345)
    ledger = p.ledger()
    assert (ledger["calls"], ledger["billable"]) == (2, 2)
    assert ledger["cost_usd"] == pytest.approx(bought.est_cost_usd) and bought.est_cost_usd > 0.1345 * 2


def test_a_request_whose_headers_do_not_come_in_time_is_counted_as_billed(paid, standin):
    """Attempt 1: the request is sent, no headers within timeout_s (the model may still make, and
    bill, the answer: a 4K edit near the timeout); attempt 2 answers. Before, attempt 1 was booked
    as not billed: a directory could buy such answers again and again at $0 in its books."""
    p = paid(max_retries=2, timeout_s=0.5)
    standin.script("gemini", B("slow", delay=3), "ok")
    bought = p.buy()
    assert bought.status == answers.IMAGE and bought.calls == 2
    lost = bought.attempts[0]
    assert (lost["status"], lost["reason"], lost["est_cost_usd"]) == (None, "TIMEOUT", 0.1345)
    assert answers.billed_calls(bought) == 2
    ledger = p.ledger()
    assert (ledger["calls"], ledger["billable"]) == (2, 2)
    assert ledger["cost_usd"] == pytest.approx(bought.est_cost_usd) and bought.est_cost_usd > 0.1345 * 2


def test_a_connection_dropped_after_the_request_was_sent_is_counted_as_billed(paid, standin):
    """Like a request whose headers do not come in time, a connection the service closes after the
    request was sent may have made, and billed, the answer. Before, it was counted as not billed,
    so max_calls=1 let a second request go out."""
    p = paid(max_retries=2, max_calls=1)
    standin.script("gemini", B("slow", delay=0.5, then="drop"), "ok")
    kept = p.buy()
    assert standin.count == 1 and p.ledger()["calls"] == 1
    assert (kept.status, kept.reason, answers.billed_calls(kept)) == (answers.REFUSED, "DROPPED", 1)
    assert kept.est_cost_usd == pytest.approx(0.1345)


def test_a_billed_refusal_before_a_stop_is_kept_and_counted(paid, standin, capsys):
    """Attempt 1 is a billed safety block, attempt 2 is stopped by the budget: the run stops
    buying, and the job ends with the billed attempt stored as its answer (a failing job's
    outputs are removed by Snakemake), so it is counted from the answer files
    (max_total_cost_usd, the summary) and not bought blind again."""
    p = paid(max_retries=2, max_calls=1)
    standin.set_default("gemini", B("image_safety"))
    kept = p.buy()
    assert (kept.status, kept.reason) == (answers.REFUSED, "IMAGE_SAFETY")
    assert "stopped buying: budget reached" in capsys.readouterr().err
    assert standin.count == 1
    assert p.answer_files() == [".lock", "v1.json"] and temp_files(p.out) == []
    stored = answers.read(p.out, STEM, 1)
    tokens = prompt_tokens(standin.requests[0].prompt)
    per_call = round(tokens * 2.0 / 1e6, 6)
    assert (stored.status, stored.reason, stored.calls) == (answers.REFUSED, "IMAGE_SAFETY", 1)
    assert stored.est_cost_usd == pytest.approx(per_call)
    assert budget.spent_in_directory(p.out) == pytest.approx(per_call)
    ledger = p.ledger()
    assert (ledger["calls"], ledger["billable"]) == (1, 1)
    # a stop before any billed attempt stores nothing (the slot test above); the next plan
    # builds the refusal's placeholder and retries it as a new version
    assert (p.decision().action, p.decision().version) == (BUILD, 1)


def test_a_ledger_that_cannot_be_written_after_the_call_does_not_lose_the_paid_image(paid, standin, monkeypatch):
    """The 200 arrived, then the ledger cannot take its cost (the disk filled up meanwhile). Before,
    the OSError left the call loop and the paid image was never stored: the next run paid again.
    Now the answer is stored first; the next reservation, failing the same way, stops the run."""
    import errno

    p = paid()
    real, writes = budget.atomic_write_text, []

    def full_after_the_reservation(path, text, **kw):
        writes.append(path)
        if len(writes) >= 2:  # 1st: the reservation before the call; 2nd: its settlement after the 200
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, text, **kw)

    monkeypatch.setattr(budget, "atomic_write_text", full_after_the_reservation)
    bought = p.buy()
    assert standin.count == 1 and standin.requests[0].status == 200
    assert bought.status == answers.IMAGE and answers.read(p.out, STEM, 1).status == answers.IMAGE
    assert p.ledger()["calls"] == 1  # the call stays at its reservation
    assert (p.decision().action, p.decision().version) == (BUILD, 1)  # never bought again
    p.cfg["augmentations"][0]["num_images"] = 2  # one more output: its reservation cannot be written
    with pytest.raises(answer_job.StopBuying, match=r"ledger\.json cannot be written \(No space left on device\)"):
        answer_job.run(p.cfg, "ID1000__overcast__v1", 1, str(p.table))
    assert standin.count == 1


def test_another_runs_damaged_ledger_stops_buying_but_keeps_the_answer_in_flight(paid, standin):
    """With api.max_total_cost_usd every settlement reads the other runs' ledgers. One becomes
    unreadable while this call is in flight: the paid image is stored (before, it was lost), and
    the run stops buying, naming the damaged file (it fails closed)."""
    p = paid(max_total_cost_usd=100.0)
    other = layout.pipeline_dir(p.out) / "runs" / "20260101T000000-9-other" / "ledger.json"

    def damage_the_other_ledger(request):
        other.parent.mkdir(parents=True, exist_ok=True)
        other.write_text("{not json")

    standin.set_rule(damage_the_other_ledger)
    bought = p.buy()
    assert standin.count == 1 and bought.status == answers.IMAGE
    assert answers.read(p.out, STEM, 1).status == answers.IMAGE
    p.cfg["augmentations"][0]["num_images"] = 2
    with pytest.raises(answer_job.StopBuying, match=r"9-other/ledger\.json is damaged"):
        answer_job.run(p.cfg, "ID1000__overcast__v1", 1, str(p.table))
    assert standin.count == 1 and answers.versions(p.out, "ID1000__overcast__v1") == []


def test_a_4k_answer_is_never_bought_past_the_cost_cap(paid, standin):
    """Defect: the reservation was at the 1K/2K price, so max_cost_usd=0.20 bought a 4K answer
    (2,000 image tokens, ~$0.24). Now it is reserved at a 4K answer's price and refused."""
    p = paid(max_cost_usd=0.20, image_config={"imageSize": "4K"})
    with pytest.raises(answer_job.StopBuying, match=r"one more call \(\$0.2401\) would pass api.max_cost_usd=\$0.20"):
        p.buy()
    assert standin.count == 0
    p = paid(max_cost_usd=0.25, image_config={"imageSize": "4K"})
    bought = p.buy()
    assert standin.count == 1 and bought.usage["output_image_tokens"] == 2000
    assert p.ledger()["cost_usd"] == pytest.approx(bought.est_cost_usd)
    assert 0.24 < bought.est_cost_usd <= 0.25


def test_a_job_makes_no_more_billed_failed_attempts_than_max_total_attempts_leaves(paid, standin):
    """Defect: every job made api.max_retries attempts whatever the target had left of
    api.max_total_attempts: with 4 and 3 retries, the second answer made 3 billed failed
    attempts (6 in all). Now it stops after the 4th; a 503 (not billed) does not count."""
    p = paid(max_total_attempts=4, max_retries=3)
    standin.set_default("gemini", B("image_safety"))
    assert p.buy(1).calls == 3
    p.build(1)
    assert (p.decision().action, p.decision().version) == (BUY, 2)
    standin.script("gemini", B("overloaded"))  # not billed: does not use up what is left
    second = p.buy(2)
    assert [r.kind for r in standin.requests] == ["image_safety"] * 3 + ["overloaded", "image_safety"]
    assert (second.status, second.reason, second.calls) == (answers.REFUSED, "IMAGE_SAFETY", 2)
    assert answers.billed_calls(second) == 1
    p.build(2)
    assert p.decision().action == BLOCKED


def test_an_openrouter_answer_costs_every_billed_attempt_also_one_without_a_reported_cost(paid, standin):
    """Defect: what an answer cost (summaries, max_total_cost_usd once the ledger is pruned) was
    the sum of OpenRouter's reported costs, which misses an attempt that timed out (billed, no
    usage.cost): the directory's total dropped by ~$0.13 when its ledger was pruned."""
    import shutil

    p = paid(
        provider="openrouter",
        model="google/gemini-3-pro-image-preview",
        base_url=standin.openrouter_url,
        timeout_s=1,
        max_retries=2,
    )
    standin.script("openrouter", B("slow", delay=2.5), "ok")
    bought = p.buy()
    assert answers.billed_calls(bought) == 2 and bought.cost_usd is not None  # the second reported its cost
    assert bought.est_cost_usd == pytest.approx(0.1345 + bought.cost_usd)  # the first at the reserved price
    assert answers.spent_usd(bought) == pytest.approx(bought.est_cost_usd)
    with_ledger = budget.spent_in_directory(p.out)
    shutil.rmtree(layout.pipeline_dir(p.out) / "runs")  # what pruning does to a run 14 days old
    assert budget.spent_in_directory(p.out) == pytest.approx(with_ledger) == pytest.approx(bought.est_cost_usd)


def test_two_runs_sharing_a_directory_see_each_others_calls_under_the_cap(paid, standin, monkeypatch):
    """api.max_total_cost_usd is checked at every reservation against what every run of the
    directory has spent and holds in flight, not against a figure read at a run's first call: run
    B, started first, cannot buy what run A spent meanwhile. A's stored answer counts once."""
    unit = 0.1345
    p = paid(max_total_cost_usd=round(2.5 * unit, 4))
    monkeypatch.setenv("NANO_BANANA_RUN_ID", "20260101T000000-2-runB")
    b = budget.for_config(p.cfg)
    b.reserve()  # B's first call is in flight
    monkeypatch.setenv("NANO_BANANA_RUN_ID", RUN_ID)  # run A buys one answer meanwhile
    bought = p.buy()
    assert bought is not None and bought.status == answers.IMAGE and standin.count == 1
    a_cost = answers.spent_usd(bought)
    assert budget.spent_in_directory(p.out) == pytest.approx(unit + a_cost)  # A's answer once, B in flight
    with pytest.raises(budget.BudgetExceeded, match=r"would pass api.max_total_cost_usd=\$0.34"):
        b.reserve()  # B's second call: A's answer + B's call in flight + this one > the cap
    b.settle(None, billable=False)  # B's call ended without a bill: its reservation goes back
    assert budget.spent_in_directory(p.out) == pytest.approx(a_cost)
    b.reserve()  # now it fits
    assert b.read()["calls"] == 1 and b.read()["refused"] == 1


def test_an_overloaded_service_neither_blocks_an_output_nor_uses_up_the_budget(paid, standin):
    """api.max_total_attempts and api.max_calls count what may be billed: 503 overloads (not
    billed) leave an output to be tried again by the next run and the run's budget untouched;
    billed refusals count, also when they follow a 503 in one answer."""
    p = paid(max_retries=2, max_total_attempts=2, max_calls=3)
    standin.set_default("gemini", B("overloaded"))
    for version in (1, 2, 3):
        failed = p.buy(version)
        assert (failed.status, failed.reason, failed.calls) == ("failed", "HTTP_503", 2)
        assert answers.billed_calls(failed) == 0 and answers.spent_usd(failed) == 0.0
        assert p.build(version).status == "failed"
        d = p.decision()
        assert (d.action, d.version) == (BUY, version + 1)
    assert standin.count == 6
    assert p.ledger() == budget.EMPTY  # 6 requests, none billed: nothing counted against max_calls
    assert answers.totals(answers.iter_all(p.out))["answers"] == 0  # nothing was bought
    standin.script("gemini", B("overloaded"), B("image_safety"))
    refused = p.buy(4)
    assert (refused.status, refused.calls, answers.billed_calls(refused)) == (answers.REFUSED, 2, 1)
    p.build(4)
    assert (p.decision().action, p.decision().version) == (BUY, 5)  # 1 billed failed attempt of 2
    standin.set_default("gemini", B("image_safety"))
    assert p.buy(5).calls == 1  # what max_total_attempts leaves: one more billed failed attempt
    p.build(5)
    d = p.decision()
    assert (d.action, d.version) == (BLOCKED, 5)
    assert d.why == "2 billed failed attempts (api.max_total_attempts=2)"
    assert p.ledger()["calls"] == 2 and standin.count == 9


def test_calls_queued_behind_the_slots_keep_the_rate_limit(paid, standin):
    """Defect: a call claimed its rate-limit start time before it waited for a call slot; after a
    long wait those times had passed and the queued calls started together, past
    api.max_requests_per_minute. The start time is claimed with the slot held. Three jobs
    (processes) queue behind a slot another run holds."""
    import multiprocessing

    from nano_banana_aug.providers.base import Request

    p = paid(max_requests_per_minute=300, concurrency=1)  # one start per 0.2 s
    slot_dir = p.out / ".pipeline" / "slots"
    slot_dir.mkdir(parents=True, exist_ok=True)
    held = os.open(slot_dir / "slot-0.lock", os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(held, fcntl.LOCK_EX)  # another run's call in flight
    request = Request(p.source, "image/jpeg", PREFIX + "\n\n" + AUG["prompt"], "ID1000", "overcast", 0)

    def job(version):
        os.close(held)  # the fork's copy of the other run's lock
        purchase = paying.Buyer(p.cfg).buy(request, stem=STEM, version=version, fp={}, key="", max_pixels=10**8)
        os._exit(0 if purchase.answer.status == answers.IMAGE else 1)

    ctx = multiprocessing.get_context("fork")
    jobs = [ctx.Process(target=job, args=(v,)) for v in (1, 2, 3)]
    try:
        for j in jobs:
            j.start()
        wait_for(lambda: p.ledger()["calls"] == 3, "three calls reserved, waiting for the slot")
        time.sleep(1.0)  # five start times pass while they wait
    finally:
        os.close(held)
    for j in jobs:
        j.join(timeout=60)
    assert [j.exitcode for j in jobs] == [0, 0, 0]
    starts = sorted(r.started for r in standin.requests)
    assert len(starts) == 3
    gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    # never two starts within one interval (less the request's way to the stand-in, which varies)
    assert min(gaps) >= 0.15, gaps


@pytest.mark.parametrize("provider", ["gemini", "openrouter"])
def test_an_error_inside_a_200_without_usage_is_not_billed(paid, standin, provider):
    """An error object inside an HTTP 200 with no usage: nothing was generated. Before, it was
    booked at the planning price ($0.1345 per attempt) and its answer kept as a billed refusal,
    counted against the budgets and api.max_total_attempts."""
    extra = {}
    if provider == "openrouter":  # the same key: the stand-in checks one
        extra = {"provider": provider, "model": "google/gemini-3-pro-image-preview", "base_url": standin.openrouter_url}
    p = paid(max_retries=2, max_total_attempts=1, max_calls=1, **extra)
    standin.set_default(provider, B("http200_error"))
    failed = p.buy()
    assert [(r.protocol, r.kind) for r in standin.requests] == [(provider, "http200_error")] * 2
    assert (failed.status, failed.calls, failed.est_cost_usd) == ("failed", 2, None)
    assert [a["billed"] for a in failed.attempts] == [False, False]
    assert answers.billed_calls(failed) == 0 and answers.spent_usd(failed) == 0.0
    assert p.ledger() == budget.EMPTY  # two requests, max_calls=1 untouched
    p.build(1)
    assert (p.decision().action, p.decision().version) == (BUY, 2)  # not blocked
