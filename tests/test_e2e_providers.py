"""End to end against the stand-in: the full pipeline with the gemini and
openrouter providers, the real `snakemake`, and the stand-in on 127.0.0.1."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
import yaml

from .helpers import make_paid_run, said, snakemake
from .standin.server import B

pytestmark = pytest.mark.e2e
pytest_plugins = ["tests.standin.fixtures"]

AUGS = [
    {"name": "overcast", "prompt": "Make it overcast.", "num_images": 1},
    {"name": "noise", "prompt": "Add sensor noise.", "num_images": 1},
]


def make_run(tmp_path: Path, standin, provider="gemini", n_images=2, augs=AUGS, write_key=True, **api) -> Path:
    return make_paid_run(tmp_path, standin, provider, n_images=n_images, augs=augs, write_key=write_key, **api)


def run(wf, *args, check=True, env=None):
    res = snakemake(wf, "-j", "8", "--configfile", "run.yaml", *args, env=env)
    if check and res.returncode != 0:
        raise AssertionError(f"snakemake failed ({res.returncode}):\n{res.stderr[-4000:]}")
    return res


def rows(wf):
    with open(wf / "data" / "aug" / "manifest.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def files_containing(root: Path, needle: str, skip=()) -> list[str]:
    hits = []
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            p = Path(dirpath) / name
            if p.name in skip:
                continue
            try:
                if needle.encode() in p.read_bytes():
                    hits.append(str(p.relative_to(root)))
            except OSError:
                pass
    return hits


@pytest.mark.parametrize("provider", ["gemini", pytest.param("openrouter", marks=pytest.mark.slow)])
def test_retries_recovered_accounting_and_no_key_anywhere(tmp_path, standin, provider):
    wf = make_run(tmp_path, standin, provider)
    if provider == "gemini":
        standin.script("gemini", B("rate_limit", retry_delay="0.2s"), B("overloaded"), B("ok", thoughts=2))
    else:
        standin.script("openrouter", B("rate_limit", retry_after="0.2"), B("http200_error"), B("ok"))
    res = run(wf)
    assert "plan: 4 answers to buy, estimated $0.54" in res.stderr
    got = rows(wf)
    assert len(got) == 4 and {r["status"] for r in got} == {"success"}
    assert sum(int(r["attempts"]) for r in got) == 6  # two failed attempts were retried
    r = got[0]
    assert r["provider"] == provider and r["model"].endswith("gemini-3-pro-image-preview")
    assert (r["orig_w"], r["orig_h"], r["aspect_w"], r["aspect_h"]) == ("1376", "768", "1536", "768")
    assert r["pad_area_px"] == "122880" and float(r["area_scale"]) == pytest.approx(1536 / 1376)
    assert r["response_id"] and r["prompt_tokens"] and float(r["est_cost_usd"]) > 0.1
    # 6 calls made for 4 answers; the cost of every attempt is in the answers (OpenRouter's HTTP-200
    # error reports usage, and is billed)
    assert "4 answers bought (4 with an image, 0 without; 6 calls)" in res.stderr
    answers = [json.loads(p.read_text()) for p in (wf / "data" / "aug" / "answers").glob("*/v1.json")]
    answered = [att for a in answers for att in a["attempts"] if att["status"] == 200]
    assert len(answered) == (1 if provider == "openrouter" else 0)
    # the key: only in the request header, never in any file the run wrote
    assert standin.key_leaks(standin.api_key) == []
    assert files_containing(wf, standin.api_key, skip={f"{provider}.secret"}) == []
    assert standin.api_key not in res.stderr + res.stdout

    # resume: no call for finished outputs; --forcerun generate rebuilds them for free;
    # regenerate=all buys a new answer for each
    before = len(standin.requests)
    assert "Nothing to be done" in said(run(wf))
    run(wf, "--forcerun", "generate")
    assert len(standin.requests) == before
    run(wf, "--config", "regenerate=all")
    assert len(standin.requests) == before + 4


def test_blocks_are_failed_rows_not_job_errors(tmp_path, standin):
    wf = make_run(tmp_path, standin)
    standin.set_default("gemini", B("image_safety"), match="sensor noise")
    res = run(wf)  # a safety block is a result row: the run goes through, no job fails
    assert "Error in rule" not in res.stderr
    by_aug = {}
    for r in rows(wf):
        by_aug.setdefault(r["aug_name"], []).append(r)
    assert {r["status"] for r in by_aug["overcast"]} == {"success"}
    failed = by_aug["noise"]
    assert {r["status"] for r in failed} == {"failed"} and all(r["attempts"] == "3" for r in failed)
    assert all("IMAGE_SAFETY" in r["error"] and r["error_reason"] == "IMAGE_SAFETY" for r in failed)
    assert {p.stat().st_size for p in (wf / "data" / "aug").glob("*__noise__*.png")} == {0}  # no image: a placeholder
    # next run retries only the failed ones
    standin.set_default("gemini", B("ok"), match="sensor noise")
    before = len(standin.requests)
    run(wf)
    assert len(standin.requests) - before == 2
    assert {r["status"] for r in rows(wf)} == {"success"}


def test_non_retryable_error_fails_at_once(tmp_path, standin):
    wf = make_run(tmp_path, standin, provider="openrouter", n_images=1, augs=AUGS[:1])
    standin.set_default("openrouter", B("no_credits"))
    res = run(wf, check=False)
    assert res.returncode != 0
    assert len(standin.requests) == 1  # not retried
    # an account error stops the run: the target is left as it is (no answer, no row); the cause is
    # said when it happens and in the summary
    assert rows(wf) == [] and "stopped buying: HTTP 402" in res.stderr
    assert "402" in (wf / "data" / "aug" / "augment.log").read_text()


def test_concurrency_cap_holds_while_calls_overlap(tmp_path, standin):
    augs = [{"name": "overcast", "prompt": "Overcast.", "num_images": 4}]
    wf = make_run(tmp_path, standin, n_images=2, augs=augs, concurrency=2)
    standin.latency = 1.0
    run(wf)
    assert len(rows(wf)) == 8
    assert standin.max_in_flight == 2  # never more than api.concurrency, and calls did overlap


def test_missing_key_stops_before_any_job(tmp_path, standin):
    wf = make_run(tmp_path, standin, write_key=False)
    env = {k: v for k, v in os.environ.items() if k not in ("GEMINI_API_KEY", "GOOGLE_API_KEY")}
    res = run(wf, check=False, env=env)
    assert res.returncode != 0
    assert "gemini.secret" in res.stderr and "GEMINI_API_KEY" in res.stderr
    assert "Traceback" not in res.stderr
    assert standin.requests == [] and not (wf / "data" / "aug" / "sidecars").exists()
    # said once, by the first job that would call, before any call
    assert sum(1 for line in res.stderr.splitlines() if "no API key for api.provider 'gemini'" in line) == 1


def test_key_from_environment(tmp_path, standin):
    wf = make_run(tmp_path, standin, n_images=1, augs=AUGS[:1], write_key=False)
    env = dict(os.environ, GEMINI_API_KEY=standin.api_key)
    res = run(wf, env=env)
    assert rows(wf)[0]["status"] == "success"
    assert files_containing(wf, standin.api_key) == [] and standin.api_key not in res.stderr


def test_nothing_that_calls_nothing_needs_a_key(tmp_path, standin):
    wf = make_run(tmp_path, standin, write_key=False, n_images=3)
    env = {k: v for k, v in os.environ.items() if k not in ("GEMINI_API_KEY", "GOOGLE_API_KEY")}
    run(wf, "--until", "targets", env=env)
    for args in (["-n"], ["--summary"], ["--dag"], ["--unlock"], ["--lint"]):
        res = run(wf, *args, env=env, check=args != ["--lint"])  # --lint exits 1 while it reports anything
        assert "API key" not in res.stderr and "Traceback" not in res.stderr, (args, res.stderr[-1000:])
    res = snakemake(wf, "plan", "-j", "1", "--configfile", "run.yaml", env=env)
    assert res.returncode == 0 and "plan: 6 answers to buy, estimated $0.81" in res.stderr
    assert standin.requests == []


def test_plain_http_to_a_remote_host_is_refused(tmp_path, standin):
    wf = make_run(tmp_path, standin, base_url="http://example.com/v1beta")
    res = run(wf, check=False)
    assert res.returncode != 0 and "api.base_url" in res.stderr and "https" in res.stderr
    assert standin.requests == []


def test_plan_calls_nothing(tmp_path, standin):
    wf = make_run(tmp_path, standin, n_images=3)
    res = snakemake(wf, "plan", "-j", "1", "--configfile", "run.yaml")
    assert "plan: 6 targets (3 images x 2 augmentations), 0 already done, 6 to generate" in res.stderr
    assert "plan: 6 answers to buy, estimated $0.81" in res.stderr
    res = run(wf, "--config", "plan_only=true")  # the spelling of earlier releases
    assert "note: config key 'plan_only' is deprecated" in res.stderr and "plan: 6 answers to buy" in res.stderr
    assert standin.requests == []
    assert not list((wf / "data" / "aug").glob("*.png"))


def test_budget_plans_what_fits_and_the_guard_holds_under_retries(tmp_path, standin):
    augs = [{"name": "overcast", "prompt": "Overcast.", "num_images": 3}]
    wf = make_run(tmp_path, standin, n_images=2, augs=augs, concurrency=2, max_calls=4)
    run(wf, "--until", "targets")
    res = run(wf)  # the plan buys what the budget allows; the rest waits for the next run
    assert "plan: 4 answers to buy" in res.stderr
    assert "plan: 2 answers left for the next run: api.max_calls=4 lets this run buy 4" in res.stderr
    assert len(standin.requests) == 4  # never more than api.max_calls, across parallel jobs
    assert sorted(r["status"] for r in rows(wf)) == ["success"] * 4
    # the next run has its own budget and pays only for what is missing
    run(wf)
    assert len(standin.requests) == 6
    assert {r["status"] for r in rows(wf)} == {"success"}
    # retries are guarded too: a budget of 2 paid calls for one answer that needs 3 billed attempts
    wf2 = make_run(tmp_path / "b", standin, n_images=1, augs=augs[:1] and [{**augs[0], "num_images": 1}], max_calls=2)
    standin.script("gemini", B("image_safety"), B("image_safety"), B("ok"))
    before = len(standin.requests)
    res = run(wf2, check=False)
    log = (wf2 / "data" / "aug" / "augment.log").read_text()
    assert "stopped buying: budget reached: 2 paid calls of api.max_calls=2 in this run" in log, log[-3000:]
    assert len(standin.requests) - before == 2
    assert [(r["status"], r["attempts"]) for r in rows(wf2)] == [("failed", "2")]  # the billed refusal, kept
    # unbilled attempts (503 overloads) are not paid calls: the same budget gets the answer
    wf3 = make_run(tmp_path / "c", standin, n_images=1, augs=[{**augs[0], "num_images": 1}], max_calls=2)
    standin.reset()
    standin.script("gemini", B("overloaded"), B("overloaded"), B("ok"))
    before = len(standin.requests)
    run(wf3)
    assert len(standin.requests) - before == 3 and [r["status"] for r in rows(wf3)] == ["success"]


def test_cost_budget(tmp_path, standin):
    augs = [{"name": "overcast", "prompt": "Overcast.", "num_images": 3}]
    wf = make_run(tmp_path, standin, n_images=1, augs=augs, concurrency=1, max_cost_usd=0.30)
    run(wf)
    assert len(standin.requests) == 2
    assert sorted(r["status"] for r in rows(wf)) == ["success", "success"]


def test_cumulative_budget_of_the_output_directory(tmp_path, standin):
    """Defect: the budget was per invocation only; "run it again until done" could spend without limit."""
    augs = [{"name": "overcast", "prompt": "Overcast.", "num_images": 3}]
    wf = make_run(tmp_path, standin, n_images=2, augs=augs, concurrency=1, max_total_cost_usd=0.40)
    run(wf)
    run(wf)
    res = run(wf)
    assert len(standin.requests) == 2  # $0.27 of answers bought; a third at the planning price would pass $0.40
    assert "plan: 4 answers left: api.max_total_cost_usd=$0.40 lets this output directory buy 0 more" in res.stderr


def _mirrored_answer(source: Path) -> dict:
    """A well-formed Gemini answer whose image is the source mirrored (a label-changing edit)."""
    import base64
    import io

    from PIL import Image, ImageOps

    buf = io.BytesIO()
    ImageOps.mirror(Image.open(source).convert("RGB").resize((1376, 768))).save(buf, "PNG")
    part = {"inlineData": {"mimeType": "image/png", "data": base64.b64encode(buf.getvalue()).decode()}}
    return {
        "candidates": [{"content": {"role": "model", "parts": [part]}, "finishReason": "STOP", "index": 0}],
        "usageMetadata": {"promptTokenCount": 600, "candidatesTokenCount": 1120, "totalTokenCount": 1720},
        "modelVersion": "gemini-3-pro-image-preview",
        "responseId": "mirrored",
    }


def test_qc_rejects_mirrored_answer_and_training_never_sees_it(tmp_path, standin):
    from nano_banana_aug.training import add_aigc_samples

    augs = [{"name": "overcast", "prompt": "Make it overcast.", "num_images": 1}]
    wf = make_run(tmp_path, standin, n_images=2, augs=augs)
    standin.script(
        "gemini", B("raw", status=200, body=_mirrored_answer(wf / "data" / "train" / "ID1000.jpg")), match="overcast"
    )
    res = run(wf)  # a rejected output is not a failed job
    got = {r["image_id"]: r for r in rows(wf)}
    statuses = sorted(r["status"] for r in got.values())
    assert statuses == ["rejected", "success"], res.stderr[-2000:]
    bad = next(r for r in got.values() if r["status"] == "rejected")
    assert bad["qc_passed"] == "False" and "mirror" in bad["error"] and bad["error_reason"] == "QC_REJECTED"
    assert (wf / "data" / bad["image_path"]).is_file()  # kept for review
    good = next(r for r in got.values() if r["status"] == "success")
    assert float(good["qc_ssim"]) > 0.9 and good["qc_passed"] == "True"
    import pandas as pd

    train = pd.read_csv(wf / "data" / "train.csv")
    cfg = {"enabled": True, "subdir": "aug", "manifest": "manifest.csv", "types": None}
    joined = add_aigc_samples(train, wf / "data", cfg, 0.21)
    added = joined[joined["is_aigc"]]
    assert set(added["image_path"]) == {good["image_path"]}

    # regenerate=rejected buys a new answer for the rejected output only (once)
    before = len(standin.requests)
    run(wf, "--config", "regenerate=rejected")
    assert len(standin.requests) - before == 1
    assert {r["status"] for r in rows(wf)} == {"success"}
    run(wf, "--config", "redo_rejected=true")  # the spelling of earlier releases: nothing is rejected now
    assert len(standin.requests) - before == 1


@pytest.mark.slow  # CI: pytest -m slow
def test_qc_auto_regenerate(tmp_path, standin):
    augs = [{"name": "overcast", "prompt": "Make it overcast.", "num_images": 1}]
    wf = make_run(tmp_path, standin, n_images=1, augs=augs)
    cfg = yaml.safe_load((wf / "run.yaml").read_text())
    cfg["qc"] = {"auto_regenerate": 1}
    (wf / "run.yaml").write_text(yaml.safe_dump(cfg))
    standin.script(
        "gemini",
        B("raw", status=200, body=_mirrored_answer(wf / "data" / "train" / "ID1000.jpg")),
        B("raw", status=200, body=_mirrored_answer(wf / "data" / "train" / "ID1000.jpg")),
        B("ok"),
    )
    run(wf)
    assert rows(wf)[0]["status"] == "rejected" and len(standin.requests) == 1
    res = run(wf)  # the rejected output gets a new answer by itself (qc.auto_regenerate: 1) ...
    assert "qc.auto_regenerate: 1 outputs get a new answer" in res.stderr
    (r,) = rows(wf)
    assert r["status"] == "rejected" and r["answer_id"] == "v2" and len(standin.requests) == 2
    res = run(wf)  # ... once: rejected again, it stays rejected
    assert len(standin.requests) == 2 and "Nothing to be done" in said(res)


@pytest.mark.slow  # CI: pytest -m slow
def test_a_report_after_a_failed_run(tmp_path, standin):
    """Defect: after a failed target the summary was not rewritten and `snakemake --report` aborted."""
    wf = make_run(tmp_path, standin, n_images=3)
    standin.script("gemini", "ok", "ok", "bad_key")  # the third call finds the key refused: the run stops
    res = run(wf, check=False)
    assert res.returncode != 0
    summary = wf / "data" / "aug" / "report" / "summary.html"
    page = summary.read_text()
    assert "Failures by reason" in page and "qc.max_veg_changed_frac" in page and "qc.max_detail_changed_frac" in page
    assert f"for {len(list((wf / 'data' / 'aug' / 'answers').glob('*/v1.json')))} answers" in page
    rep = snakemake(wf, "--configfile", "run.yaml", "--report", "report.html")
    assert rep.returncode == 0, rep.stderr[-2000:]
    assert (wf / "report.html").stat().st_size > 10_000
