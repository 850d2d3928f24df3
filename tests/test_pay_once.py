"""Pay once, lose nothing: every way a review found to pay twice or lose a paid
output, end to end (the real `snakemake` against the stand-in), counting the
stand-in's paid answers per target.

Nothing here waits for a time to pass: the stand-in holds answers until the
test releases them, and the tests act when a request, a log line or a file
appears.
"""

from __future__ import annotations

import hashlib
import os
import signal
from collections import Counter
from pathlib import Path

import pytest

from .helpers import edit_config, log_text, make_paid_run, rows, run, said, start, wait_for
from .standin.server import B

pytestmark = [pytest.mark.e2e, pytest.mark.slow]  # CI: pytest -m slow
pytest_plugins = ["tests.standin.fixtures"]

ONE = [{"name": "overcast", "prompt": "Make it overcast.", "num_images": 1}]
PREFIX = "Change only imaging conditions."


def held(standin):
    return sum(1 for r in standin.requests if r.held)


def per_target(standin) -> Counter:
    """Paid answers per target (source image x prompt; every test target has one variant)."""
    return Counter((hashlib.sha256(r.image_bytes).hexdigest(), r.prompt) for r in standin.answers())


def pngs(wf) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((wf / "data" / "aug").glob("*.png"))}


def plan_lines(wf) -> list[str]:
    return [line for line in log_text(wf).splitlines() if "  plan: " in line and " targets (" in line]


def to_buy(res) -> int:
    """The answers the plan line says this invocation buys."""
    import re

    m = re.search(r"plan: (\d+) answers to buy", res.stderr)
    return int(m.group(1)) if m else 0


def job_log(wf, stem="ID1000__overcast__v0", version=1) -> str:
    p = wf / "data" / "aug" / ".pipeline" / "logs" / "answer" / f"{stem}.v{version}.log"
    return p.read_text() if p.exists() else ""


def answer_jobs(res) -> int:
    """Answer jobs in a dry-run's job table (Snakemake's own count)."""
    import re

    found = re.findall(r"^\s*answer\s+(\d+)\s*$", said(res), re.M)
    return int(found[-1]) if found else 0


# ---------------------------------------------------------------- 1. locks and other invocations


def test_other_invocations_never_disturb_a_live_run(tmp_path, standin):
    wf = make_paid_run(tmp_path, standin, n_images=8, augs=ONE, concurrency=8, timeout_s=600)
    standin.set_default("gemini", B("hold"))
    a = start(wf, log_name="a.log")
    standin.wait_until(lambda s: held(s) == 8)
    for args in (
        ["-n"],
        ["--summary"],
        ["--dag"],
        ["--lint"],
        ["-n", "--config", "prompt_prefix=Repaint every plant."],
    ):
        run(wf, *args, check=False)
    second = run(wf, check=False)  # a second real run: Snakemake's lock stops it
    assert second.returncode != 0 and "cannot be locked" in second.stderr
    assert len(standin.requests) == 8
    # The user removes the lock by hand and starts again: both runs now work on the same directory
    # at once; the per-target locks make the second one wait and find every answer bought.
    run(wf, "--unlock")
    b = start(wf, log_name="b.log")
    wait_for(lambda: " waiting " in log_text(wf), "the second run's jobs to wait for the first run's targets")
    standin.release()
    assert a.wait(timeout=300) == 0, a.log_path.read_text()[-3000:]
    assert b.wait(timeout=300) == 0, b.log_path.read_text()[-3000:]
    assert len(standin.requests) == 8 and set(per_target(standin).values()) == {1}
    assert all(r.prompt.startswith(PREFIX) for r in standin.requests)  # the dry-run's prompt went nowhere
    assert len(rows(wf)) == 8 and {r["status"] for r in rows(wf)} == {"success"}
    assert len(plan_lines(wf)) == 2  # the two real runs; dry-runs, --summary, --dag, --lint log nothing


def test_a_dry_run_with_another_budget_changes_nothing_of_a_live_run(tmp_path, standin):
    wf = make_paid_run(tmp_path, standin, n_images=8, augs=ONE, concurrency=2, max_calls=4, timeout_s=600)
    standin.set_default("gemini", B("hold"))
    a = start(wf)
    standin.wait_until(lambda s: held(s) == 2)
    run(wf, "-n", "--config", "prompt_prefix=Repaint every plant.", 'api={"max_calls": 100}', check=False)
    run(wf, "--summary", check=False)
    standin.release()
    assert a.wait(timeout=300) == 0, a.log_path.read_text()[-3000:]
    assert len(standin.requests) == 4 and all(r.prompt.startswith(PREFIX) for r in standin.requests)
    assert "4 answers left for the next run" in a.log_path.read_text()
    assert sorted(r["status"] for r in rows(wf)) == ["success"] * 4
    run(wf)  # the next run buys the rest, within its own budget
    assert len(standin.requests) == 8 and set(per_target(standin).values()) == {1}


# ---------------------------------------------------------------- 2. regeneration


def test_unfinished_regeneration_keeps_old_outputs_and_resumes_without_paying_twice(tmp_path, standin):
    wf = make_paid_run(tmp_path, standin, n_images=6, augs=ONE)
    run(wf)
    first = pngs(wf)
    assert len(first) == 6 and len(standin.answers()) == 6
    # a budget of 2 calls for a regeneration of 6 (the nested --config value is typed by the schema)
    res = run(wf, "--config", "regenerate=overcast", 'api={"max_calls": 2}')
    assert to_buy(res) == 2 and "4 answers left for the next run" in res.stderr
    assert len(standin.answers()) == 8
    assert set(pngs(wf)) == set(first)  # no paid output was lost
    got = rows(wf)
    assert {r["status"] for r in got} == {"success"}
    assert sorted(r["answer_id"] for r in got) == ["v1"] * 4 + ["v2"] * 2
    # the same request again: only the 4 not yet regenerated are paid for
    res = run(wf, "--config", "regenerate=overcast")
    assert to_buy(res) == 4
    assert len(standin.answers()) == 12 and set(per_target(standin).values()) == {2}
    assert {r["answer_id"] for r in rows(wf)} == {"v2"}
    # the regeneration is finished: asking again starts a new one and pays for all 6
    res = run(wf, "--config", "regenerate=overcast")
    assert to_buy(res) == 6
    assert len(standin.answers()) == 18 and {r["answer_id"] for r in rows(wf)} == {"v3"}
    # files follow the umask (here 022): readable by a training job of another user; answers read-only
    out = wf / "data" / "aug"
    for p in [
        next(out.glob("*.png")),
        next((out / "sidecars").glob("*.json")),
        next((out / "answers").rglob("*.json")),
    ]:
        assert p.stat().st_mode & 0o777 == 0o644, p
    assert next((out / "answers").rglob("v1.png")).stat().st_mode & 0o777 == 0o444


def test_interrupted_full_regeneration_resumes_and_forcerun_generate_is_free(tmp_path, standin):
    wf = make_paid_run(tmp_path, standin, n_images=4, augs=ONE)
    run(wf)
    run(wf, "--forcerun", "generate")  # rebuilds every output from its answer: free
    assert len(standin.answers()) == 4
    res = run(wf, "--config", "regenerate=all", 'api={"max_calls": 1}')
    assert len(standin.answers()) == 5 and len(pngs(wf)) == 4
    res = run(wf, "--config", "regenerate=all")
    assert to_buy(res) == 3 and len(standin.answers()) == 8
    assert set(per_target(standin).values()) == {2}
    run(wf, "-F")  # forcing every job: the answers are there, none is bought again
    assert len(standin.answers()) == 8


# ---------------------------------------------------------------- 3. kill -9


def test_next_run_after_killing_snakemake_never_repeats_the_orphans_calls(tmp_path, standin):
    wf = make_paid_run(tmp_path, standin, n_images=4, augs=ONE, concurrency=4, timeout_s=600)
    standin.set_default("gemini", B("hold"))
    a = start(wf, log_name="a.log")
    standin.wait_until(lambda s: held(s) == 4)
    os.kill(a.pid, signal.SIGKILL)  # Snakemake only: its four jobs go on, calls in flight
    a.wait()
    res = run(wf, check=False)
    assert res.returncode != 0 and "cannot be locked" in res.stderr  # Snakemake's own lock, as in every workflow
    run(wf, "--unlock")
    b = start(wf, log_name="b.log")
    wait_for(lambda: log_text(wf).count(" waiting ") >= 1, "the next run's jobs to wait for the orphans")
    standin.release()
    assert b.wait(timeout=300) == 0, b.log_path.read_text()[-3000:]
    assert len(standin.requests) == 4 and set(per_target(standin).values()) == {1}
    assert {r["status"] for r in rows(wf)} == {"success"} and len(pngs(wf)) == 4


def test_answers_that_arrived_before_a_kill_are_not_bought_again(tmp_path, standin):
    wf = make_paid_run(tmp_path, standin, n_images=4, augs=ONE, concurrency=4)
    a = start(wf)
    answers = wf / "data" / "aug" / "answers"
    wait_for(lambda: len(list(answers.glob("*/v1.json"))) == 4, "four stored answers")
    os.killpg(a.pid, signal.SIGKILL)  # the whole run, post-processing included
    a.wait()
    run(wf, "--unlock")
    res = run(wf)
    assert len(standin.requests) == 4 and to_buy(res) == 0, res.stderr[-2000:]
    got = rows(wf)
    assert len(got) == 4 and {r["status"] for r in got} == {"success"} and len(pngs(wf)) == 4


# ---------------------------------------------------------------- 4. nothing sent that cannot be used


def test_truncated_source_is_never_sent(tmp_path, standin):
    wf = make_paid_run(tmp_path, standin, n_images=2, augs=ONE, size=(400, 200))
    src = wf / "data" / "train" / "ID1001.jpg"
    data = src.read_bytes()
    src.write_bytes(data[: len(data) * 2 // 3])  # the header is fine, the picture is cut
    res = run(wf)
    assert "unusable source" in res.stderr and "truncated" in res.stderr
    assert len(standin.requests) == 1  # only ID1000
    bad = next(r for r in rows(wf) if r["image_id"] == "ID1001")
    assert bad["status"] == "failed" and bad["error_reason"] == "BAD_SOURCE" and bad["attempts"] == "0"


# ---------------------------------------------------------------- 5. protection without the profile


def test_edited_rules_and_all_rerun_triggers_never_pay_again(tmp_path, standin):
    wf = make_paid_run(tmp_path, standin, n_images=2)
    run(wf)
    before, calls = pngs(wf), len(standin.requests)
    for name in ("answer.smk", "generate.smk"):
        rule = wf / "rules" / name
        rule.write_text(rule.read_text() + "\n# an edit\n")
    (wf / "scripts" / "answer.py").write_text((wf / "scripts" / "answer.py").read_text() + "\n# an edit\n")
    res = run(wf, "--rerun-triggers", "code", "params", "input", "mtime", "software-env", profile=False)
    assert "rule answer:" in said(res) and "Code has changed" in said(res)  # Snakemake reran the answer jobs ...
    assert len(standin.requests) == calls and pngs(wf) == before  # ... which found their answers and bought nothing


# ---------------------------------------------------------------- 6. the plan is the truth


def test_a_dry_run_lists_exactly_the_answers_the_run_buys(tmp_path, standin):
    wf = make_paid_run(tmp_path, standin, n_images=3)
    run(wf, "--until", "targets")
    dry = run(wf, "-n")
    assert answer_jobs(dry) == to_buy(dry) == 6
    res = run(wf)
    assert to_buy(res) == 6 == len(standin.requests)
    assert "Nothing to be done" in said(run(wf, "-n"))
    cases = (
        (["--config", "regenerate=noise"], 3),
        (["--forcerun", "generate"], 0),
        (["-f", "data/aug/ID1000__noise__v0.png"], 0),
        ([], 0),
    )
    for args, expected in cases:
        dry = run(wf, "-n", *args)
        assert answer_jobs(dry) == to_buy(dry) == expected, (args, said(dry)[-2000:])
        before = len(standin.requests)
        run(wf, *args)
        assert len(standin.requests) - before == expected, args
    # a new answer for one output, asked for by name (its next version)
    target = "data/aug/answers/ID1000__noise__v0/v3.json"
    assert answer_jobs(run(wf, "-n", target=target)) == 1
    run(wf, target=target)
    assert len(standin.requests) == 10
    dry = run(wf, "-n")
    assert answer_jobs(dry) == to_buy(dry) == 0
    run(wf)  # the output follows its newest answer, for free
    assert {r["answer_id"] for r in rows(wf) if r["image_id"] == "ID1000" and r["aug_name"] == "noise"} == {"v3"}
    assert len(standin.requests) == 10


# ---------------------------------------------------------------- 7. answers are the store


def test_free_rebuilds_never_call_and_keep_the_answers_fingerprint(tmp_path, standin):
    """Defect: a free rebuild stamped the current config's generation key onto outputs bought with an
    older prompt, so regenerate=stale found nothing. "Current" comes from the answer's own request key."""
    wf = make_paid_run(tmp_path, standin, n_images=2, augs=ONE)
    run(wf)
    edit_config(wf, lambda cfg: cfg.update(prompt_prefix="A new prefix."))
    edit_config(wf, lambda cfg: cfg["postprocess"].update(target_size=[400, 200]))
    res = run(wf)  # the postprocess change rebuilds both outputs from their answers
    assert len(standin.requests) == 2
    got = rows(wf)
    assert {(r["out_w"], r["out_h"], r["stale"]) for r in got} == {("400", "200", "model/prompt")}
    res = run(wf, "-n", "--config", "regenerate=stale")
    assert answer_jobs(res) == to_buy(res) == 2
    run(wf, "--config", "regenerate=stale")
    assert len(standin.requests) == 4 and {r["stale"] for r in rows(wf)} == {""}
    assert all(r.prompt.startswith("A new prefix.") for r in standin.requests[2:])
    res = run(wf, "--config", "regenerate=stale")  # nothing is stale any more
    assert len(standin.requests) == 4


def test_a_deleted_output_is_rebuilt_from_its_answer_for_free(tmp_path, standin):
    wf = make_paid_run(tmp_path, standin, n_images=2)
    run(wf)
    calls = len(standin.requests)
    out = wf / "data" / "aug"
    (out / "ID1000__overcast__v0.png").unlink()
    cut = out / "ID1001__noise__v0.png"
    cut.write_bytes(cut.read_bytes()[:1000])  # damaged by hand: -f rebuilds it, free
    run(wf, "-f", str(cut.relative_to(wf)))
    run(wf)
    assert len(standin.requests) == calls
    from PIL import Image

    Image.open(out / "ID1000__overcast__v0.png").load()
    Image.open(cut).load()


def test_undecodable_answer_is_a_failed_attempt_retried_in_the_same_job(tmp_path, standin):
    import base64

    wf = make_paid_run(tmp_path, standin, n_images=1, augs=ONE)
    broken = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64  # a PNG signature with nothing decodable behind it
    part = {"inlineData": {"mimeType": "image/png", "data": base64.b64encode(broken).decode()}}
    body = {
        "candidates": [{"content": {"role": "model", "parts": [part]}, "finishReason": "STOP"}],
        "usageMetadata": {"promptTokenCount": 600, "candidatesTokenCount": 1120, "totalTokenCount": 1720},
    }
    standin.script("gemini", B("raw", status=200, body=body), "ok")
    run(wf)
    (r,) = rows(wf)
    assert r["status"] == "success" and r["attempts"] == "2" and r["answer_id"] == "v1"
    assert len(standin.requests) == 2
    assert float(r["est_cost_usd"]) > 0.2  # both attempts were billed


def test_refused_targets_are_rows_not_job_errors_and_block_until_asked(tmp_path, standin):
    wf = make_paid_run(tmp_path, standin, n_images=2, augs=ONE, max_retries=3, max_total_attempts=6)
    standin.set_default("gemini", B("image_safety"))
    res = run(wf)  # every target refused: the run finishes (a result row per target), nothing is a job error
    assert res.returncode == 0, res.stderr[-3000:]
    assert len(standin.requests) == 6
    assert {r["status"] for r in rows(wf)} == {"failed"} and {r["error_reason"] for r in rows(wf)} == {"IMAGE_SAFETY"}
    run(wf)  # the next run retries them (a new answer version each)
    assert len(standin.requests) == 12
    got = rows(wf)
    assert {r["status"] for r in got} == {"blocked"} and {r["attempts_total"] for r in got} == {"6"}
    assert all("raise it to try again" in r["error"] for r in got)
    res = run(wf)
    assert len(standin.requests) == 12 and "2 outputs blocked after api.max_total_attempts=6" in res.stderr
    standin.set_default("gemini", B("ok"))
    run(wf, "--config", 'api={"max_total_attempts": 7}')
    assert len(standin.requests) == 14 and {r["status"] for r in rows(wf)} == {"success"}


def test_a_failure_after_the_paid_call_leaves_the_answer_for_a_free_rebuild(tmp_path, standin):
    """An error while the output is built (a bug, a full disk): the answer is stored already; the
    next run builds the output from it with 0 calls."""
    wf = make_paid_run(tmp_path, standin, n_images=1, augs=ONE)
    (wf / "scripts" / "nano_banana_aug" / "postprocess.py").write_text(
        (wf / "scripts" / "nano_banana_aug" / "postprocess.py").read_text()
        + "\n\ndef apply(*args, **kwargs):\n    raise RuntimeError('simulated bug after the call')\n"
    )
    res = run(wf, check=False)
    assert res.returncode != 0 and "simulated bug after the call" in res.stderr
    # one line of the job on the terminal; the traceback is in the job's log (which the rich logger
    # shows for a failed job)
    said_by_job = [line for line in res.stderr.splitlines() if line.startswith("generate ") and "simulated bug" in line]
    assert len(said_by_job) == 1 and "unexpected error: RuntimeError: simulated bug after the call" in said_by_job[0]
    log = wf / "data" / "aug" / ".pipeline" / "logs" / "generate" / "ID1000__overcast__v0.log"
    assert "Traceback" in log.read_text() and "simulated bug after the call" in log.read_text()
    assert len(standin.requests) == 1 and not (wf / "data" / "aug" / "ID1000__overcast__v0.png").exists()
    (wf / "scripts" / "nano_banana_aug" / "postprocess.py").write_text(
        (Path(__file__).resolve().parents[1] / "scripts" / "nano_banana_aug" / "postprocess.py").read_text()
    )
    run(wf)
    (r,) = rows(wf)
    assert r["status"] == "success" and r["answer_id"] == "v1" and len(standin.requests) == 1


def test_a_failure_right_after_the_answer_is_stored_never_removes_it(tmp_path, standin):
    """The answer job fails after its answer is stored (here augment.log cannot take the line that
    says so, as on a full disk). Snakemake removes a failed job's outputs, so before, the paid
    answer was deleted and the next run paid again. Now the job succeeds and keeps it."""
    wf = make_paid_run(tmp_path, standin, n_images=1, augs=ONE)
    log = wf / "data" / "aug" / "augment.log"

    def log_cannot_be_written(request):
        log.unlink(missing_ok=True)
        log.mkdir()  # every later append to augment.log fails

    standin.set_rule(log_cannot_be_written)
    res = run(wf, check=False)
    assert len(standin.requests) == 1
    assert (wf / "data" / "aug" / "answers" / "ID1000__overcast__v0" / "v1.json").is_file()
    assert "(after its work was stored: the job succeeds and keeps it)" in res.stderr
    standin.set_rule(None)
    log.rmdir()
    run(wf)
    (r,) = rows(wf)
    assert r["status"] == "success" and r["answer_id"] == "v1" and len(standin.requests) == 1


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["Ctrl-C", "SIGTERM"])
def test_a_stop_while_the_paid_answer_arrives_waits_until_it_is_stored(tmp_path, standin, signum):
    """Ctrl-C (SIGINT to the terminal's process group) or SIGTERM (a cluster cancelling the job)
    after the 200's headers, while the body still comes: the answer is made and billed. Before, the
    answer job died in the download and the next run paid again; now the stop waits until the
    answer is stored, and the next run only builds its output."""
    wf = make_paid_run(tmp_path, standin, n_images=1, augs=ONE, timeout_s=600)
    standin.set_default("gemini", B("slow_body", pieces=4, pause=0, hold=True))
    a = start(wf, jobs="1")
    standin.wait_until(lambda s: held(s) == 1)  # the headers are out, the body holds after its first piece
    wait_for(lambda: "HTTP 200, the paid answer arrives" in job_log(wf), "the job to have the 200's headers")
    os.killpg(a.pid, signum)
    standin.release()
    a.wait(timeout=300)
    answer = wf / "data" / "aug" / "answers" / "ID1000__overcast__v0" / "v1.json"
    assert answer.is_file(), a.log_path.read_text()[-3000:]
    res = run(wf)
    assert len(standin.requests) == 1 and to_buy(res) == 0, res.stderr[-2000:]
    (r,) = rows(wf)
    assert r["status"] == "success" and r["answer_id"] == "v1"


def test_a_stop_while_a_billed_refusal_arrives_keeps_it_and_makes_no_further_attempt(tmp_path, standin):
    """The held 200 is a billed refusal (IMAGE_SAFETY): before, the retry that followed was made
    while the stop waited, or the refusal was lost; now it is stored and no attempt follows."""
    import json

    wf = make_paid_run(tmp_path, standin, n_images=1, augs=ONE, timeout_s=600)
    standin.script("gemini", B("slow_body", pieces=4, pause=0, hold=True, then="image_safety"), "ok")
    a = start(wf, jobs="1")
    wait_for(lambda: "HTTP 200, the paid answer arrives" in job_log(wf), "the job to have the 200's headers")
    assert held(standin) == 1
    os.killpg(a.pid, signal.SIGTERM)
    standin.release()
    a.wait(timeout=300)
    answer = wf / "data" / "aug" / "answers" / "ID1000__overcast__v0" / "v1.json"
    assert answer.is_file(), a.log_path.read_text()[-3000:]
    kept = json.loads(answer.read_text())
    assert kept["status"] == "refused" and kept["calls"] == 1 and len(standin.requests) == 1
    assert "the job is being stopped (SIGTERM or Ctrl-C)" in log_text(wf)


def test_prune_answers_never_deletes_an_answer_an_output_needs(tmp_path, standin):
    wf = make_paid_run(tmp_path, standin, n_images=2, augs=ONE)
    run(wf)
    run(wf, "--config", "regenerate=overcast")  # 2 answers per target, the second one in use
    out = wf / "data" / "aug"
    calls = len(standin.requests)
    res = run(wf, target="prune_answers")
    assert "answers: 2 images deleted" in said(res)
    for stem in ("ID1000__overcast__v0", "ID1001__overcast__v0"):
        assert sorted(p.name for p in (out / "answers" / stem).iterdir() if not p.name.startswith(".")) == [
            "v1.json",
            "v2.json",
            "v2.png",
        ]
    run(wf, "--forcerun", "generate")  # every output can still be rebuilt from its own answer
    assert len(standin.requests) == calls and {r["answer_id"] for r in rows(wf)} == {"v2"}
