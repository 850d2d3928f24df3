"""Pay once, lose nothing: every way a review found to pay twice or lose a paid
output, end to end (the real `snakemake` against the stand-in), counting the
stand-in's paid answers per target.

Nothing here waits for a time to pass: the stand-in holds answers until the
test releases them, and the tests act when a request, a log line or a file
appears.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from .helpers import make_paid_run, snakemake
from .standin.server import B

pytestmark = [pytest.mark.e2e, pytest.mark.slow]  # CI: pytest -m slow
pytest_plugins = ["tests.standin.fixtures"]

ONE = [{"name": "overcast", "prompt": "Make it overcast.", "num_images": 1}]
PREFIX = "Change only imaging conditions."


def run(wf, *args, check=True, profile=True, target=None):
    extra = () if profile else ("--workflow-profile", "none")
    res = snakemake(wf, *([target] if target else []), *extra, "-j", "8", "--configfile", "run.yaml", *args)
    if check and res.returncode != 0:
        raise AssertionError(f"snakemake failed ({res.returncode}):\n{res.stderr[-4000:]}")
    return res


def start(wf, *args, log_name="bg.log"):
    """A run in the background (its own process group), stderr into a file."""
    log = open(wf / log_name, "w")
    proc = subprocess.Popen([sys.executable, "-m", "snakemake", "-j", "8", "--configfile", "run.yaml", *args],
                            cwd=wf, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
    proc.log_path = wf / log_name
    return proc


def wait_for(predicate, what, timeout=180):
    """Until ``predicate()`` holds (files and logs written by other processes)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def held(standin):
    return sum(1 for r in standin.requests if r.held)


def per_target(standin) -> Counter:
    """Paid answers per target (source image x prompt; every test target has one variant)."""
    return Counter((hashlib.sha256(r.image_bytes).hexdigest(), r.prompt) for r in standin.answers())


def rows(wf):
    with open(wf / "data" / "aug" / "manifest.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def pngs(wf) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((wf / "data" / "aug").glob("*.png"))}


def log_text(wf) -> str:
    p = wf / "data" / "aug" / "augment.log"
    return p.read_text() if p.exists() else ""


def plan_lines(wf) -> list[str]:
    return [line for line in log_text(wf).splitlines() if "  plan: " in line and " targets (" in line]


def paid_in_plan(stderr: str) -> int:
    import re

    m = re.search(r"plan: (\d+) paid calls", stderr)
    return int(m.group(1)) if m else 0


# ---------------------------------------------------------------- 1. locks

def test_other_invocations_never_steal_a_live_runs_lock(tmp_path, standin):
    wf = make_paid_run(tmp_path, standin, n_images=8, augs=ONE, concurrency=8, timeout_s=600)
    standin.set_default("gemini", B("hold"))
    a = start(wf, log_name="a.log")
    standin.wait_until(lambda s: sum(1 for r in s.requests if r.held) == 8)
    for args in (["-n"], ["--summary"], ["--dag"], ["--lint"], ["-n", "--config", "prompt_prefix=Repaint every plant."]):
        run(wf, *args, check=False)
    gallery = run(wf, target="report_gallery")  # a real run of its own (it never pays)
    assert (wf / "data" / "aug" / "gallery" / "index.html").is_file(), gallery.stderr[-2000:]
    second = run(wf, check=False)  # a second real run: Snakemake's lock stops it
    assert second.returncode != 0 and "cannot be locked" in second.stderr
    assert len(standin.requests) == 8
    # The user removes the lock by hand and starts again: both runs now work on the
    # same directory at once; the per-target locks make the second one wait and find
    # every target done.
    run(wf, "--unlock")
    b = start(wf, log_name="b.log")
    wait_for(lambda: " waiting " in log_text(wf), "the second run's jobs to wait for the first run's targets")
    standin.release()
    assert a.wait(timeout=300) == 0, a.log_path.read_text()[-3000:]
    assert b.wait(timeout=300) == 0, b.log_path.read_text()[-3000:]
    assert len(standin.requests) == 8 and set(per_target(standin).values()) == {1}
    assert all(r.prompt.startswith(PREFIX) for r in standin.requests)
    assert len(rows(wf)) == 8 and {r["status"] for r in rows(wf)} == {"success"}
    assert len(plan_lines(wf)) == 2  # the two real runs; dry-runs, --summary, --dag, --lint log nothing


# ---------------------------------------------------------------- 2. a run's config is its own

def test_dry_runs_during_a_run_change_neither_its_prompt_nor_its_budget(tmp_path, standin):
    wf = make_paid_run(tmp_path, standin, n_images=8, augs=ONE, concurrency=2, max_calls=4, timeout_s=600)
    standin.set_default("gemini", B("hold"))
    a = start(wf)
    standin.wait_until(lambda s: sum(1 for r in s.requests if r.held) == 2)
    run(wf, "-n", "--config", "prompt_prefix=Repaint every plant.", check=False)
    run(wf, "-n", check=False)
    run(wf, "--summary", check=False)
    standin.release()
    assert a.wait(timeout=300) != 0  # 4 targets over budget
    assert len(standin.requests) == 4
    assert all(r.prompt.startswith(PREFIX) for r in standin.requests)
    assert sorted(r["status"] for r in rows(wf)) == ["over_budget"] * 4 + ["success"] * 4
    assert len(plan_lines(wf)) == 1


# ---------------------------------------------------------------- 3 + 5. regeneration

def test_unfinished_regeneration_keeps_old_outputs_and_resumes_without_paying_twice(tmp_path, standin):
    wf = make_paid_run(tmp_path, standin, n_images=6, augs=ONE)
    run(wf)
    first = pngs(wf)
    assert len(first) == 6 and len(standin.answers()) == 6
    # a budget of 2 calls for a regeneration of 6 (the nested --config value is typed by the schema)
    res = run(wf, "--config", "regenerate=overcast", 'api={"max_calls": 2}', check=False)
    assert res.returncode != 0
    assert paid_in_plan(res.stderr) == 6 and "6 outputs to regenerate (a new request)" in res.stderr
    assert len(standin.answers()) == 8
    now = pngs(wf)
    assert set(now) == set(first)  # no paid output was lost
    got = rows(wf)
    assert {r["status"] for r in got} == {"success"}
    # (the stand-in answers the same request with the same image: the answer numbers tell them apart)
    assert sorted(r["answer_id"] for r in got) == ["000001"] * 4 + ["000002"] * 2
    kept = [r for r in got if r["regen_error"]]
    assert len(kept) == 4 and all("budget reached" in r["regen_error"] for r in kept)
    assert "4 regenerations not done, their old outputs kept" in res.stderr
    # the same request again: only the 4 not yet regenerated are paid for
    res = run(wf, "--config", "regenerate=overcast")
    assert "resuming the request" in res.stderr and "(2 of 6 outputs already regenerated" in res.stderr
    assert paid_in_plan(res.stderr) == 4
    assert len(standin.answers()) == 12 and set(per_target(standin).values()) == {2}
    assert {r["answer_id"] for r in rows(wf)} == {"000002"}
    assert not any(r["regen_error"] for r in rows(wf))
    # the request is finished: asking again is a new request and pays for all 6
    res = run(wf, "--config", "regenerate=overcast")
    assert "6 outputs to regenerate (a new request)" in res.stderr and paid_in_plan(res.stderr) == 6
    assert len(standin.answers()) == 18 and {r["answer_id"] for r in rows(wf)} == {"000003"}
    # files follow the umask (here 022): readable by a training job of another user
    out = wf / "data" / "aug"
    for p in [next(out.glob("*.png")), next((out / "sidecars").glob("*.json")), next((out / "answers").rglob("*.png"))]:
        assert p.stat().st_mode & 0o777 == 0o644, p


def test_interrupted_forcerun_resumes_like_a_regeneration(tmp_path, standin):
    wf = make_paid_run(tmp_path, standin, n_images=4, augs=ONE)
    run(wf)
    res = run(wf, "--forcerun", "generate", "--config", 'api={"max_calls": 1}', check=False)
    assert res.returncode != 0 and len(standin.answers()) == 5 and len(pngs(wf)) == 4
    res = run(wf, "--forcerun", "generate")
    assert paid_in_plan(res.stderr) == 3 and len(standin.answers()) == 8
    assert set(per_target(standin).values()) == {2}


# ---------------------------------------------------------------- 4. kill -9 of Snakemake alone

def test_next_run_after_killing_snakemake_never_repeats_the_orphans_calls(tmp_path, standin):
    wf = make_paid_run(tmp_path, standin, n_images=4, augs=ONE, concurrency=4, timeout_s=600)
    standin.set_default("gemini", B("hold"))
    a = start(wf, log_name="a.log")
    standin.wait_until(lambda s: sum(1 for r in s.requests if r.held) == 4)
    os.kill(a.pid, signal.SIGKILL)  # Snakemake only: its four jobs go on, calls in flight
    a.wait()
    b = start(wf, log_name="b.log")
    wait_for(lambda: "still running" in b.log_path.read_text(), "the next run to notice the orphaned jobs")
    standin.release()
    assert b.wait(timeout=300) == 0, b.log_path.read_text()[-3000:]
    assert len(standin.requests) == 4 and set(per_target(standin).values()) == {1}
    assert {r["status"] for r in rows(wf)} == {"success"} and len(pngs(wf)) == 4


# ---------------------------------------------------------------- 6. kill -9 of everything

def test_answers_that_arrived_before_a_kill_are_not_bought_again(tmp_path, standin):
    wf = make_paid_run(tmp_path, standin, n_images=4, augs=ONE, concurrency=4, size=(1600, 800))
    a = start(wf)
    answers = wf / "data" / "aug" / "answers"
    wait_for(lambda: len(list(answers.glob("*/*.json"))) == 4, "four stored answers")
    os.killpg(a.pid, signal.SIGKILL)  # the whole run, post-processing included
    a.wait()
    res = run(wf)
    assert len(standin.requests) == 4, res.stderr[-2000:]
    assert "plan: 0 paid calls" not in res.stderr and paid_in_plan(res.stderr) == 0
    got = rows(wf)
    assert len(got) == 4 and {r["status"] for r in got} == {"success"}
    assert len(pngs(wf)) == 4


# ---------------------------------------------------------------- 7. nothing sent that cannot be used

def test_truncated_source_is_never_sent(tmp_path, standin):
    wf = make_paid_run(tmp_path, standin, n_images=2, augs=ONE, size=(400, 200))
    src = wf / "data" / "train" / "ID1001.jpg"
    data = src.read_bytes()
    src.write_bytes(data[: len(data) * 2 // 3])  # the header is fine, the picture is cut
    res = run(wf, check=False)
    assert res.returncode != 0
    assert "unusable source" in res.stderr and "truncated" in res.stderr
    assert len(standin.requests) == 1  # only ID1000
    bad = next(r for r in rows(wf) if r["image_id"] == "ID1001")
    assert bad["status"] == "failed" and bad["error_reason"] == "BAD_SOURCE" and bad["attempts"] == "0"


# ---------------------------------------------------------------- protection without the profile

def test_edited_rules_and_all_rerun_triggers_never_pay_again(tmp_path, standin):
    wf = make_paid_run(tmp_path, standin, n_images=2)
    run(wf)
    before, calls = pngs(wf), len(standin.requests)
    rule = wf / "rules" / "generate.smk"
    rule.write_text(rule.read_text().replace("--variant {wildcards.k}", "--variant {wildcards.k} "))
    res = run(wf, "--rerun-triggers", "code", "params", "input", "mtime", profile=False)
    assert "Rule: generate" in res.stderr + res.stdout or "rule generate" in res.stderr + res.stdout  # Snakemake reran them
    assert len(standin.requests) == calls and pngs(wf) == before
    assert log_text(wf).count(" checked ") == 4


# ---------------------------------------------------------------- the plan is the truth

def test_the_plan_counts_what_forced_runs_really_pay(tmp_path, standin):
    wf = make_paid_run(tmp_path, standin, n_images=3)
    res = run(wf)
    assert paid_in_plan(res.stderr) == 6 == len(standin.requests)
    for args, expected in ((["--forcerun", "generate"], 6), (["-f", "data/aug/ID1000__noise__v0.png"], 1),
                           (["--config", "regenerate=noise"], 3), ([], 0)):
        before = len(standin.requests)
        res = run(wf, *args)
        assert paid_in_plan(res.stderr) == expected == len(standin.requests) - before, (args, res.stderr[-2000:])
    res = run(wf, "-n", "--forcerun", "generate")
    assert paid_in_plan(res.stderr) == 6 and len(standin.requests) == 16


# ---------------------------------------------------------------- the answer store

def test_rederive_rebuilds_outputs_from_stored_answers_without_calls(tmp_path, standin):
    wf = make_paid_run(tmp_path, standin, n_images=2)
    run(wf)
    calls = len(standin.requests)
    cfg = yaml.safe_load((wf / "run.yaml").read_text())
    cfg["postprocess"]["target_size"] = [400, 200]
    (wf / "run.yaml").write_text(yaml.safe_dump(cfg))
    res = run(wf, "--config", "rederive=true")
    assert "4 outputs built from stored answers (0 calls)" in res.stderr
    assert len(standin.requests) == calls
    from PIL import Image

    for p in (wf / "data" / "aug").glob("*.png"):
        assert Image.open(p).size == (400, 200)
    got = rows(wf)
    assert {(r["out_w"], r["out_h"], r["answer_source"]) for r in got} == {("400", "200", "store")}
    assert all(r["answer_id"] == "000001" for r in got)


def test_a_damaged_output_is_rebuilt_from_its_answer_for_free(tmp_path, standin):
    wf = make_paid_run(tmp_path, standin, n_images=2)
    run(wf)
    calls = len(standin.requests)
    out = wf / "data" / "aug"
    empty, cut = out / "ID1000__overcast__v0.png", out / "ID1001__noise__v0.png"
    empty.write_bytes(b"")
    cut.write_bytes(cut.read_bytes()[:1000])
    res = run(wf)
    assert "2 outputs built from stored answers (0 calls)" in res.stderr
    assert len(standin.requests) == calls
    from PIL import Image

    Image.open(empty).load()
    Image.open(cut).load()


def test_undecodable_answer_is_a_failed_attempt_retried_in_the_same_job(tmp_path, standin):
    import base64

    wf = make_paid_run(tmp_path, standin, n_images=1, augs=ONE)
    broken = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64  # a PNG signature with nothing decodable behind it
    part = {"inlineData": {"mimeType": "image/png", "data": base64.b64encode(broken).decode()}}
    body = {"candidates": [{"content": {"role": "model", "parts": [part]}, "finishReason": "STOP"}],
            "usageMetadata": {"promptTokenCount": 600, "candidatesTokenCount": 1120, "totalTokenCount": 1720}}
    standin.script("gemini", B("raw", status=200, body=body), "ok")
    run(wf)
    (r,) = rows(wf)
    assert r["status"] == "success" and r["attempts"] == "2" and r["answer_id"] == "000002"
    assert len(standin.requests) == 2


def test_repeated_failures_block_a_target_until_asked(tmp_path, standin):
    wf = make_paid_run(tmp_path, standin, n_images=1, augs=ONE, max_retries=3, max_total_attempts=6)
    standin.set_default("gemini", B("image_safety"))
    run(wf, check=False)
    run(wf, check=False)
    assert len(standin.requests) == 6
    (r,) = rows(wf)
    assert r["status"] == "blocked" and r["attempts_total"] == "6" and "retry_blocked=true" in r["error"]
    res = run(wf, check=False)
    assert res.returncode != 0 and len(standin.requests) == 6
    assert "1 outputs blocked after api.max_total_attempts" in res.stderr
    standin.set_default("gemini", B("ok"))
    run(wf, "--config", "retry_blocked=true")
    assert len(standin.requests) == 7 and rows(wf)[0]["status"] == "success"


def test_a_failure_after_the_paid_call_leaves_a_trace_and_the_answer(tmp_path, standin, monkeypatch):
    """An unexpected error in post-processing: a failed sidecar; the next run uses the stored answer."""
    from nano_banana_aug import generate, postprocess, sidecar

    wf = make_paid_run(tmp_path, standin, n_images=1, augs=ONE)
    cfg, targets = _job_setup(wf)
    output = wf / "data" / "aug" / "ID1000__overcast__v0.png"
    monkeypatch.chdir(wf)

    def broken(*a, **k):
        raise RuntimeError("simulated bug after the call")

    monkeypatch.setattr(postprocess, "apply", broken)
    with pytest.raises(generate.TargetFailed, match="simulated bug"):
        generate.run(cfg, targets, "ID1000", "overcast", 0, output)
    rec = sidecar.read(wf / "data" / "aug" / "sidecars" / "ID1000__overcast__v0.json")
    assert rec.status == "failed" and "simulated bug" in rec.error and rec.attempts == 1
    assert len(standin.requests) == 1 and not output.exists()
    monkeypatch.undo()
    monkeypatch.chdir(wf)
    rec = generate.run(cfg, targets, "ID1000", "overcast", 0, output)
    assert rec.status == "success" and rec.answer_source == "store" and output.is_file()
    assert len(standin.requests) == 1


def _job_setup(wf: Path):
    """The effective config and targets table of a run, made in-process (as the workflow does)."""
    from snakemake.utils import validate

    from nano_banana_aug import config as cfgmod
    from nano_banana_aug import targets as targets_mod

    cwd = os.getcwd()
    os.chdir(wf)
    try:
        cfg = yaml.safe_load((wf / "run.yaml").read_text())
        cfgmod.check_config(cfg)
        validate(cfg, str(cfgmod.SCHEMA_PATH))
        cfgmod.finalise(cfg)
        table = wf / "data" / "aug" / ".pipeline" / "targets.csv"
        targets_mod.write_targets(targets_mod.build_targets(wf / "data" / "train.csv", wf / "data", ["Dry_Total_g"]), table)
        cfg["_run"] = {"id": "test-run", "alive_lock": str(wf / "data" / "aug" / ".pipeline" / "alive.lock"),
                       "target_lock_timeout_s": 60, "requests": []}
        return json.loads(json.dumps(cfg)), str(table)
    finally:
        os.chdir(cwd)


def test_prune_answers_never_deletes_an_answer_not_yet_used(tmp_path, standin):
    from nano_banana_aug.answers import AnswerStore

    wf = make_paid_run(tmp_path, standin, n_images=2, augs=ONE)
    run(wf)
    run(wf, "--config", "regenerate=overcast")  # 2 answers per target, the second one in use
    out = wf / "data" / "aug"
    store = AnswerStore(out)
    # an answer that arrived but was not used yet (e.g. a run killed just after it was stored)
    extra = store.add("ID1000__overcast__v0", (out / "ID1000__overcast__v0.png").read_bytes(), source="call")
    calls = len(standin.requests)
    res = run(wf, target="prune_answers")
    assert "answers: 2 deleted" in res.stdout + res.stderr
    assert sorted(a.answer_id for a in store.list("ID1001__overcast__v0")) == ["000002"]
    assert sorted(a.answer_id for a in store.list("ID1000__overcast__v0")) == ["000002", extra.answer_id]
    res = run(wf, "--config", "prune_mode=used", target="prune_answers")
    assert [a.answer_id for a in store.list("ID1000__overcast__v0")] == [extra.answer_id]
    assert store.list("ID1001__overcast__v0") == []
    run(wf)  # the unused answer becomes ID1000's output, without a call
    assert len(standin.requests) == calls
    assert {r["image_id"]: r["answer_id"] for r in rows(wf)}["ID1000"] == extra.answer_id
