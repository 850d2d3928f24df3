"""Batch mode end to end: the real `snakemake` against the stand-in's Gemini
Batch and Files API.  Counts batches created, batch answers per target and
synchronous calls.  Kills happen when the stand-in holds a step (an upload, a
create, a running batch), never after a time."""

from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import sys
from collections import Counter

import pytest

from .helpers import make_paid_run, snakemake

pytestmark = [pytest.mark.e2e, pytest.mark.slow]  # CI: pytest -m slow
pytest_plugins = ["tests.standin.fixtures"]

ONE = [{"name": "overcast", "prompt": "Make it overcast.", "num_images": 1}]
TWO = [
    {"name": "overcast", "prompt": "Make it overcast.", "num_images": 1},
    {"name": "noise", "prompt": "Add sensor noise.", "num_images": 1},
]


def batch_run(tmp_path, standin, n_images=3, augs=TWO, **batch):
    return make_paid_run(tmp_path, standin, n_images=n_images, augs=augs, mode="batch", batch={"poll_s": 0.05, **batch})


def run(wf, *args, check=True):
    res = snakemake(wf, "-j", "4", "--configfile", "run.yaml", *args)
    if check and res.returncode != 0:
        raise AssertionError(f"snakemake failed ({res.returncode}):\n{res.stderr[-4000:]}")
    return res


def start(wf, *args):
    log = open(wf / "bg.log", "w")
    return subprocess.Popen(
        [sys.executable, "-m", "snakemake", "-j", "4", "--configfile", "run.yaml", *args],
        cwd=wf,
        stdout=subprocess.DEVNULL,
        stderr=log,
        start_new_session=True,
    )


def kill_run(proc, wf):
    """kill -9 of the run and all its jobs; then `--unlock`, as after any killed Snakemake run."""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    run(wf, "--unlock")


def rows(wf):
    with open(wf / "data" / "aug" / "manifest.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def pngs(wf):
    return sorted(p.name for p in (wf / "data" / "aug").glob("*.png"))


def per_key(standin) -> Counter:
    return Counter(r.key for r in standin.batch_answers())


def assert_paid_once(standin, n_targets):
    assert len(standin.answers()) == 0  # no synchronous call
    got = per_key(standin)
    assert len(got) == n_targets and set(got.values()) == {1}, got


def test_a_batch_run_pays_batch_prices_and_makes_no_synchronous_call(tmp_path, standin):
    wf = batch_run(tmp_path, standin)
    res = run(wf)
    assert "plan: 6 answers to buy through the Gemini Batch API, estimated $0.40" in res.stderr
    assert len(standin.batches) == 1 and len(standin.batches[0].keys) == 6
    assert_paid_once(standin, 6)
    got = rows(wf)
    assert len(got) == 6 and {r["status"] for r in got} == {"success"}
    assert {r["answer_source"] for r in got} == {"batch"}
    # the JSONL went through the Files API; no inline requests
    assert standin.uploads and standin.batches[0].display_name.startswith("nbaug-")
    # a second run: nothing to do, nothing submitted
    res = run(wf)
    assert len(standin.batches) == 1 and "plan: 0 answers to buy through the Gemini Batch API" in res.stderr
    assert "Nothing to be done" in res.stderr
    # the key never left its header
    assert standin.key_leaks(standin.api_key) == []


def test_chunks_follow_max_requests(tmp_path, standin):
    wf = batch_run(tmp_path, standin, n_images=5, max_requests=4)
    run(wf)
    assert sorted(len(b.keys) for b in standin.batches) == [2, 4, 4]
    assert_paid_once(standin, 10)


@pytest.mark.parametrize("step", ["upload", "create"])
def test_kill_during_upload_or_create_never_makes_a_second_batch(tmp_path, standin, step):
    wf = batch_run(tmp_path, standin)
    standin.hold_batch_step(step)
    a = start(wf)
    standin.wait_until(lambda s: any(r.held for r in s.requests))
    kill_run(a, wf)  # upload: the file is stored, its name never recorded; create: the batch exists, unnamed locally
    standin.release()
    res = run(wf)
    assert len(standin.batches) == 1, [b.display_name for b in standin.batches]
    if step == "create":
        assert "found by its display name" in res.stderr
    assert_paid_once(standin, 6)
    assert {r["status"] for r in rows(wf)} == {"success"} and len(pngs(wf)) == 6


def test_kill_while_polling_then_the_next_run_collects_the_same_batch(tmp_path, standin):
    wf = batch_run(tmp_path, standin)
    standin.set_batch_behaviour("hold")
    a = start(wf)
    standin.wait_until(lambda s: s.batches and s.batches[0].polls >= 1)
    kill_run(a, wf)
    standin.finish_batches()
    res = run(wf)
    assert len(standin.batches) == 1
    assert "6 answers awaited from batches submitted earlier" in res.stderr
    assert_paid_once(standin, 6)
    assert len(pngs(wf)) == 6


def test_wait_false_submits_and_a_later_run_collects(tmp_path, standin):
    wf = batch_run(tmp_path, standin, wait=False)
    standin.set_batch_behaviour("hold")
    res = run(wf)
    assert "run the same command again to collect them" in res.stderr
    # the submitting run counts what it bought (reserved at batch price), once
    assert "6 answers awaited from running batches, 6 of them submitted by this run: $0.40" in res.stderr
    assert pngs(wf) == [] and len(standin.batches) == 1
    res = run(wf)  # still running: nothing new submitted, nothing made
    assert len(standin.batches) == 1 and pngs(wf) == []
    assert "0 answers bought" in res.stderr and "submitted by this run" not in res.stderr
    standin.finish_batches()
    # the collecting run is not charged again: its budget of one call does not stop it
    res = run(wf, "--config", 'api={"max_calls": 1}')
    assert len(standin.batches) == 1 and len(pngs(wf)) == 6
    assert "0 answers bought" in res.stderr, res.stderr[-2000:]
    # the cost said is the answers' own (from their usage), close to what was reserved
    assert re.search(
        r"6 answers collected from batches submitted earlier \(\$0\.4\d, counted by the run that submitted them\)",
        res.stderr,
    ), res.stderr[-2000:]
    assert_paid_once(standin, 6)


def test_a_synchronous_run_never_buys_what_an_open_batch_holds(tmp_path, standin):
    """api.mode switched to sync while a batch (wait: false) still runs: its answers are paid and
    coming. Before, the sync run bought all six again."""
    wf = batch_run(tmp_path, standin, wait=False)
    standin.set_batch_behaviour("hold")
    run(wf)
    res = run(wf, "--config", 'api={"mode": "sync"}')
    assert "plan: 6 answers are not bought: open Gemini batches hold them (paid)" in res.stderr, res.stderr[-3000:]
    assert len(standin.answers()) == 0 and pngs(wf) == []
    standin.finish_batches()
    run(wf)  # batch mode collects them
    assert_paid_once(standin, 6)
    assert len(pngs(wf)) == 6


def test_an_open_batch_is_collected_when_the_run_buys_nothing_else(tmp_path, standin):
    """A regeneration round submitted with api.batch.wait: false; the next runs ask for no
    regeneration, so nothing is to buy. Before, no run collected the batch (its paid results
    expire after 48 h); now every run polls it and the one after it finished stores its answers."""
    wf = batch_run(tmp_path, standin, wait=False)
    standin.set_batch_behaviour("succeed", polls=0)
    run(wf)
    run(wf)  # collects the first batch: six outputs
    assert len(pngs(wf)) == 6 and len(standin.batches) == 1
    standin.set_batch_behaviour("hold")
    run(wf, "--config", "regenerate=overcast")
    assert len(standin.batches) == 2 and len(standin.batches[1].keys) == 3
    res = run(wf)
    assert standin.batches[1].polls >= 2, res.stderr[-3000:]  # polled again although nothing is to buy
    standin.finish_batches()
    run(wf)
    answers = wf / "data" / "aug" / "answers"
    assert sorted(p.parent.name for p in answers.glob("*/v2.json")) == [f"ID100{i}__overcast__v0" for i in range(3)]
    assert len(standin.batches) == 2 and len(standin.answers()) == 0


def test_a_lookup_refused_with_a_4xx_never_gives_up_a_batch_that_may_exist(tmp_path, standin):
    """Killed between create and the record of its name; the next run's key is refused (rotated):
    its lookup by display name gets HTTP 400. Before, the record was closed as lost and the run
    after bought a second batch; now it stays open and is found once the key works again."""
    wf = batch_run(tmp_path, standin)
    standin.hold_batch_step("create")
    a = start(wf)
    standin.wait_until(lambda s: any(r.held for r in s.requests))
    kill_run(a, wf)
    standin.release()
    key = standin.api_key
    standin.api_key = "a-rotated-key"  # the workflow's key is refused now (HTTP 400 API_KEY_INVALID)
    res = run(wf, check=False)
    assert res.returncode != 0 and "HTTP 400" in res.stderr, res.stderr[-3000:]
    standin.api_key = key
    res = run(wf)
    assert len(standin.batches) == 1 and "found by its display name" in res.stderr
    assert_paid_once(standin, 6)
    assert len(pngs(wf)) == 6


def spent(wf) -> tuple[float, float]:
    """(the directory's spend as the budget sees it, the sum over its answer files)."""
    from nano_banana_aug import answers, budget

    out = wf / "data" / "aug"
    return budget.spent_in_directory(out), sum(answers.spent_usd(a) for a in answers.iter_all(out))


def test_the_budget_ledger_holds_what_collected_batches_cost(tmp_path, standin):
    """Reserved at the batch price, settled at the answers' own cost (their usage). Before, the
    reservation stayed: the directory's total ($0.4035) was not what the answers cost ($0.4066)."""
    wf = batch_run(tmp_path, standin)
    run(wf)
    budget_sees, answers_cost = spent(wf)
    assert answers_cost > 0.40 and budget_sees == pytest.approx(answers_cost, abs=1e-9)


def test_a_batch_that_expires_gives_its_reservation_back_whoever_closes_it(tmp_path, standin):
    """Submitted (and reserved) by one run, found expired by the next: nothing was billed. Before,
    the submitting run's reservation stayed, and the directory cap counted $0.40 never spent."""
    wf = batch_run(tmp_path, standin, wait=False)
    standin.set_batch_behaviour("hold")
    run(wf)
    assert spent(wf)[0] == pytest.approx(6 * 0.06725)  # reserved while the batch runs
    standin.finish_batches(outcome="expire")
    res = run(wf)
    assert "the batch expired" in res.stderr
    assert spent(wf) == (0.0, 0.0)


def test_the_directory_cap_counts_batches_still_running(tmp_path, standin):
    """api.batch.wait: false, run again while the batch runs: the cumulative cap counts the batch
    an earlier run submitted (paid when created), so the next run submits nothing past it."""
    wf = batch_run(tmp_path, standin, wait=False)
    standin.set_batch_behaviour("hold")
    cap = ("--config", 'api={"max_total_cost_usd": 0.15}')  # 2 answers at batch price ($0.0667 each)
    run(wf, *cap)
    assert [len(b.keys) for b in standin.batches] == [2]
    res = run(wf, *cap)
    assert [len(b.keys) for b in standin.batches] == [2], res.stderr[-3000:]
    assert "api.max_total_cost_usd=$0.15 lets this output directory buy 0 more" in res.stderr
    standin.finish_batches()
    run(wf, *cap)
    assert [len(b.keys) for b in standin.batches] == [2] and len(pngs(wf)) == 2
    assert_paid_once(standin, 2)


def test_an_expired_batch_is_resubmitted_by_the_next_run(tmp_path, standin):
    wf = batch_run(tmp_path, standin)
    standin.script_batches("expire")
    res = run(wf)  # no answer arrived: nothing is made, and the run says why
    assert "batch answers not received: 6 BATCH_EXPIRED (left for the next run's batch)" in res.stderr
    assert "the batch expired" in (wf / "data" / "aug" / "augment.log").read_text()
    assert rows(wf) == [] and pngs(wf) == []
    run(wf)
    assert len(standin.batches) == 2 and len(standin.batches[1].keys) == 6
    assert_paid_once(standin, 6)
    assert {r["status"] for r in rows(wf)} == {"success"}


def test_failed_lines_are_resubmitted_alone(tmp_path, standin):
    wf = batch_run(tmp_path, standin)
    standin.set_default("gemini", "server_error", match="overcast")
    res = run(wf)
    assert "batch answers not received: 3 BATCH_LINE_13" in res.stderr, res.stderr[-3000:]
    made = {p.rsplit(".", 1)[0] for p in pngs(wf)}
    failed = sorted(
        f"ID100{i}__{a}__v0" for i in range(3) for a in ("overcast", "noise") if f"ID100{i}__{a}__v0" not in made
    )
    assert failed == [f"ID100{i}__overcast__v0" for i in range(3)]
    standin.set_default("gemini", "ok", match="overcast")
    run(wf)
    assert len(standin.batches) == 2 and sorted(standin.batches[1].keys) == failed
    assert_paid_once(standin, 6)


def test_fallback_sync_sends_only_the_failed_lines_synchronously(tmp_path, standin):
    wf = batch_run(tmp_path, standin, fallback="sync")
    standin.set_rule(lambda req: "server_error" if getattr(req, "batch", False) and "overcast" in req.prompt else None)
    run(wf)
    assert len(standin.batches) == 1
    assert len(standin.answers()) == 3 and all("overcast" in r.prompt for r in standin.answers())
    assert {r["answer_source"] for r in rows(wf)} == {"batch", "call"}


def test_batch_cancel_cancels_outstanding_batches(tmp_path, standin):
    wf = batch_run(tmp_path, standin, wait=False)
    standin.set_batch_behaviour("hold")
    run(wf)
    res = snakemake(wf, "cancel_batches", "-j", "4", "--configfile", "run.yaml")  # a target: before --configfile
    assert standin.batches[0].state.endswith("CANCELLED"), res.stderr[-2000:]
    assert "cancel requested" in res.stderr
    standin.set_batch_behaviour("succeed", polls=0)  # done when first polled (wait=false collects it now)
    run(wf)
    assert len(standin.batches) == 2 and len(pngs(wf)) == 6
    assert_paid_once(standin, 6)


def test_the_budget_reserves_a_chunk_before_it_is_submitted(tmp_path, standin):
    wf = batch_run(tmp_path, standin)
    res = run(wf, "--config", 'api={"max_calls": 2}')
    assert "plan: 4 answers left for the next run" in res.stderr
    assert len(standin.batches) == 1 and len(standin.batches[0].keys) == 2
    assert sorted(r["status"] for r in rows(wf)) == ["success"] * 2
    run(wf)  # the next run submits the rest, once
    assert len(standin.batches) == 2 and len(standin.batches[1].keys) == 4
    assert_paid_once(standin, 6)


def test_batch_mode_needs_the_gemini_provider(tmp_path, standin):
    wf = make_paid_run(tmp_path, standin, provider="openrouter", mode="batch")
    res = snakemake(wf, "-j", "1", "--configfile", "run.yaml")
    assert res.returncode != 0
    assert "api.mode" in res.stderr and "OpenRouter's batch API returns text only" in res.stderr
    assert len(standin.requests) == 0
