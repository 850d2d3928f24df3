"""End to end against the stand-in: the full pipeline with the gemini and
openrouter providers, the real `snakemake`, and the stand-in on 127.0.0.1."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest
import yaml

from .helpers import make_paid_run, snakemake
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


@pytest.mark.parametrize("provider", ["gemini", "openrouter"])
def test_retries_recovered_accounting_and_no_key_anywhere(tmp_path, standin, provider):
    wf = make_run(tmp_path, standin, provider)
    if provider == "gemini":
        standin.script("gemini", B("rate_limit", retry_delay="0.2s"), B("overloaded"), B("ok", thoughts=2))
    else:
        standin.script("openrouter", B("rate_limit", retry_after="0.2"), B("http200_error"), B("ok"))
    res = run(wf)
    assert "plan: 4 paid calls (more if retried), estimated $0.54" in res.stderr
    got = rows(wf)
    assert len(got) == 4 and {r["status"] for r in got} == {"success"}
    assert sum(int(r["attempts"]) for r in got) == 6  # two failed attempts were retried
    r = got[0]
    assert r["provider"] == provider and r["model"].endswith("gemini-3-pro-image-preview")
    assert (r["orig_w"], r["orig_h"], r["aspect_w"], r["aspect_h"]) == ("1376", "768", "1536", "768")
    assert r["pad_area_px"] == "122880" and float(r["area_scale"]) == pytest.approx(1536 / 1376)
    assert r["response_id"] and r["prompt_tokens"] and float(r["est_cost_usd"]) > 0.1
    # 6 calls made; billable: the 4 answers (+ the HTTP-200 error, which reports usage, on OpenRouter)
    billable = 5 if provider == "openrouter" else 4
    assert f"6 calls made ({billable} billable answers, 1.50 calls per successful output)" in res.stderr
    # the key: only in the request header, never in any file the run wrote
    assert standin.key_leaks(standin.api_key) == []
    assert files_containing(wf, standin.api_key, skip={f"{provider}.secret"}) == []
    assert standin.api_key not in res.stderr + res.stdout

    # resume: no call for finished outputs; --forcerun generate repeats them
    before = len(standin.requests)
    run(wf)
    assert len(standin.requests) == before
    run(wf, "--forcerun", "generate")
    assert len(standin.requests) == before + 4


def test_blocks_are_failed_rows_and_run_fails(tmp_path, standin):
    wf = make_run(tmp_path, standin)
    standin.set_default("gemini", B("image_safety"), match="sensor noise")
    res = run(wf, check=False)
    assert res.returncode != 0
    by_aug = {}
    for r in rows(wf):
        by_aug.setdefault(r["aug_name"], []).append(r)
    assert {r["status"] for r in by_aug["overcast"]} == {"success"}
    failed = by_aug["noise"]
    assert {r["status"] for r in failed} == {"failed"} and all(r["attempts"] == "3" for r in failed)
    assert all("IMAGE_SAFETY" in r["error"] and r["error_reason"] == "IMAGE_SAFETY" for r in failed)
    assert not list((wf / "data" / "aug").glob("*__noise__*.png"))
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
    # an account error stops the run (issue 11): the target is left as it is, the cause said once
    assert rows(wf) == [] and "stopped dispatching calls: HTTP 402" in res.stderr
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


def test_key_from_environment(tmp_path, standin):
    wf = make_run(tmp_path, standin, n_images=1, augs=AUGS[:1], write_key=False)
    env = dict(os.environ, GEMINI_API_KEY=standin.api_key)
    res = run(wf, env=env)
    assert rows(wf)[0]["status"] == "success"
    assert files_containing(wf, standin.api_key) == [] and standin.api_key not in res.stderr


def test_plain_http_to_a_remote_host_is_refused(tmp_path, standin):
    wf = make_run(tmp_path, standin, base_url="http://example.com/v1beta")
    res = run(wf, check=False)
    assert res.returncode != 0 and "api.base_url" in res.stderr and "https" in res.stderr
    assert standin.requests == []


def test_plan_only_calls_nothing(tmp_path, standin):
    wf = make_run(tmp_path, standin, n_images=3)
    res = run(wf, "--config", "plan_only=true")
    assert "plan: 6 targets (3 images x 2 augmentations), 0 already done, 6 to generate" in res.stderr
    assert "plan: 6 paid calls (more if retried), estimated $0.81" in res.stderr
    assert standin.requests == []
    assert not list((wf / "data" / "aug").glob("*.png"))
    assert "estimated $0.81" in (wf / "data" / "aug" / "augment.log").read_text()


def test_budget_guard_stops_paid_calls_and_resumes(tmp_path, standin):
    augs = [{"name": "overcast", "prompt": "Overcast.", "num_images": 3}]
    wf = make_run(tmp_path, standin, n_images=2, augs=augs, concurrency=2, max_calls=4)
    res = run(wf, check=False)
    assert res.returncode != 0
    assert len(standin.requests) == 4  # never more than api.max_calls, across parallel jobs
    got = rows(wf)
    assert sorted(r["status"] for r in got) == ["over_budget"] * 2 + ["success"] * 4
    assert all("budget reached" in r["error"] and "api.max_calls=4" in r["error"] for r in got if r["status"] == "over_budget")
    assert "2 not generated: budget reached" in res.stderr
    assert "over_budget" in (wf / "data" / "aug" / "augment.log").read_text()
    # the next run has its own budget and pays only for what is missing
    run(wf)
    assert len(standin.requests) == 6
    assert {r["status"] for r in rows(wf)} == {"success"}


def test_cost_budget(tmp_path, standin):
    augs = [{"name": "overcast", "prompt": "Overcast.", "num_images": 3}]
    wf = make_run(tmp_path, standin, n_images=1, augs=augs, concurrency=1, max_cost_usd=0.30)
    run(wf, check=False)
    assert len(standin.requests) == 2
    assert sorted(r["status"] for r in rows(wf)) == ["over_budget", "success", "success"]


def _mirrored_answer(source: Path) -> dict:
    """A well-formed Gemini answer whose image is the source mirrored (a label-changing edit)."""
    import base64
    import io

    from PIL import Image, ImageOps

    buf = io.BytesIO()
    ImageOps.mirror(Image.open(source).convert("RGB").resize((1376, 768))).save(buf, "PNG")
    part = {"inlineData": {"mimeType": "image/png", "data": base64.b64encode(buf.getvalue()).decode()}}
    return {"candidates": [{"content": {"role": "model", "parts": [part]}, "finishReason": "STOP", "index": 0}],
            "usageMetadata": {"promptTokenCount": 600, "candidatesTokenCount": 1120, "totalTokenCount": 1720},
            "modelVersion": "gemini-3-pro-image-preview", "responseId": "mirrored"}


def test_qc_rejects_mirrored_answer_and_training_never_sees_it(tmp_path, standin):
    from nano_banana_aug.training import add_aigc_samples

    augs = [{"name": "overcast", "prompt": "Make it overcast.", "num_images": 1}]
    wf = make_run(tmp_path, standin, n_images=2, augs=augs)
    standin.script("gemini", B("raw", status=200, body=_mirrored_answer(wf / "data" / "train" / "ID1000.jpg")),
                   match="overcast")
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

    # redo_rejected regenerates only the rejected output
    before = len(standin.requests)
    run(wf, "--config", "redo_rejected=true")
    assert len(standin.requests) - before == 1
    assert {r["status"] for r in rows(wf)} == {"success"}


def test_qc_auto_regenerate(tmp_path, standin):
    augs = [{"name": "overcast", "prompt": "Make it overcast.", "num_images": 1}]
    wf = make_run(tmp_path, standin, n_images=1, augs=augs)
    cfg = yaml.safe_load((wf / "run.yaml").read_text())
    cfg["qc"] = {"auto_regenerate": 1}
    (wf / "run.yaml").write_text(yaml.safe_dump(cfg))
    standin.script("gemini", B("raw", status=200, body=_mirrored_answer(wf / "data" / "train" / "ID1000.jpg")), B("ok"))
    run(wf)
    (r,) = rows(wf)
    assert r["status"] == "success" and r["attempts"] == "2" and len(standin.requests) == 2
    assert " regen " in (wf / "data" / "aug" / "augment.log").read_text()
