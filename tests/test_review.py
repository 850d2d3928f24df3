"""Review decisions: a person keeps or rejects outputs; the decisions go into review.json,
the manifest's review columns, the training join and regenerate=rejected."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from nano_banana_aug import decisions as review_decisions
from nano_banana_aug import plan, review
from nano_banana_aug.errors import UserError
from nano_banana_aug.training import add_aigc_samples, join_aigc

from .browser import find_chromium, selftest
from .helpers import clone, make_paid_run, rows, run, said

pytest_plugins = ["tests.standin.fixtures"]

JOIN_CFG = {"enabled": True, "subdir": "aug", "manifest": "manifest.csv", "types": None}


# ------------------------------------------------------------------ the store and its server
@pytest.fixture
def server(tmp_path):
    """The review server on 127.0.0.1 (a free port) over tmp_path, in a thread."""
    from http.server import ThreadingHTTPServer

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), review.make_handler(review.Store(tmp_path), tmp_path, "ann"))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", tmp_path
    httpd.shutdown()
    httpd.server_close()


def _post(url: str, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(
        url + "/review", data=json.dumps(body).encode(), method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _get(url: str) -> dict:
    with urllib.request.urlopen(url + "/review.json", timeout=10) as resp:
        return json.loads(resp.read())


def test_server_saves_each_mark_and_refuses_what_is_not_an_output(server):
    url, out = server
    assert _get(url) == {"decisions": {}, "server": True}
    status, saved = _post(url, {"stem": "IDa__sun__v0", "decision": "reject", "answer_id": "v2"})
    assert status == 200 and saved["decision"] == "reject" and saved["by"] == "ann"
    _post(url, {"stem": "IDb__sun__v1", "decision": "keep", "answer_id": "v1", "by": "bob"})
    on_disk = json.loads((out / "review.json").read_text())["decisions"]  # written at once, whole
    assert {s: (d["decision"], d["answer_id"], d["by"]) for s, d in on_disk.items()} == {
        "IDa__sun__v0": ("reject", "v2", "ann"),
        "IDb__sun__v1": ("keep", "v1", "bob"),
    }
    assert _get(url)["decisions"] == on_disk
    assert _post(url, {"stem": "IDa__sun__v0", "decision": ""})[0] == 200  # undecided again: the mark goes
    assert set(review_decisions.load(out)) == {"IDb__sun__v1"}
    assert _post(url, {"stem": "../etc/passwd", "decision": "keep"})[0] == 400
    status, err = _post(url, {"stem": "IDa__sun__v0", "decision": "maybe"})
    assert status == 400 and "keep, reject or empty" in err["error"]
    assert list(out.glob("*.tmp*")) == [] and set(review_decisions.load(out)) == {"IDb__sun__v1"}


def test_an_unreadable_review_file_is_one_clear_error(tmp_path):
    (tmp_path / "review.json").write_text("{not json")
    with pytest.raises(UserError, match=r"review.json: cannot be read .*fix or remove it"):
        review_decisions.load(tmp_path)
    (tmp_path / "review.json").write_text('{"something": 1}')
    with pytest.raises(UserError, match="not a review file"):
        review_decisions.load(tmp_path)


def test_a_decision_belongs_to_the_answer_it_was_made_on():
    decisions = {
        "IDa__sun__v0": {"decision": "reject", "answer_id": "v1", "by": "ann", "ts": 5.0},
        "IDb__sun__v0": {"decision": "keep", "answer_id": "", "by": "ann", "ts": 6.0},
    }
    rows_ = [
        {"image_id": "IDa", "aug_name": "sun", "variant_idx": "0", "answer_id": "v1"},
        {"image_id": "IDb", "aug_name": "sun", "variant_idx": "0", "answer_id": ""},  # adopted output
        {"image_id": "IDa", "aug_name": "sun", "variant_idx": "1", "answer_id": "v1"},
    ]
    review_decisions.apply_to_rows(rows_, decisions)
    assert [(r["review"], r["review_by"]) for r in rows_] == [("reject", "ann"), ("keep", "ann"), ("", "")]
    rows_[0]["answer_id"] = "v2"  # regenerated: the new output starts undecided
    rows_[1]["answer_id"] = "v1"  # an adopted output regenerated: the same
    review_decisions.apply_to_rows(rows_, decisions)
    assert [r["review"] for r in rows_] == ["", "", ""]


def test_planner_buys_once_for_a_human_reject_when_asked(local_finished, tmp_path):
    """regenerate=rejected: an output a person rejected gets one new answer; once it has it,
    the rejection is answered (it was made on the older answer)."""
    wf = clone(local_finished, tmp_path / "wf")
    out = wf / "data" / "aug"
    stem = "ID1001__blur__v0"
    made_on = json.loads((out / "sidecars" / f"{stem}.json").read_text())["answer_id"]
    review_decisions.save(
        out,
        {
            stem: {"decision": "reject", "answer_id": made_on, "by": "ann", "ts": 1.0},
            "ID1000__blur__v0": {"decision": "keep", "answer_id": "v1", "by": "ann", "ts": 1.0},
        },
    )

    def decide(regenerate):
        planner = plan.Planner(out, "png", plan.Ask(regenerate=set(regenerate)), {})
        return {s: planner.decide(s, s.split("__")[1]).action for s in (stem, "ID1000__blur__v0", "ID1002__blur__v0")}

    assert decide([]) == {stem: "done", "ID1000__blur__v0": "done", "ID1002__blur__v0": "done"}
    got = decide(["rejected"])
    assert got == {stem: "buy", "ID1000__blur__v0": "done", "ID1002__blur__v0": "done"}
    # a decision made on another answer than the output's does not count
    review_decisions.save(out, {stem: {"decision": "reject", "answer_id": "v7", "by": "ann", "ts": 1.0}})
    assert decide(["rejected"])[stem] == "done"


# ------------------------------------------------------------------ end to end, in Chromium
def _start_server(wf: Path) -> tuple[subprocess.Popen, str]:
    """`python -m nano_banana_aug.review` as a user starts it; returns (process, page URL)."""
    env = {**os.environ, "PYTHONPATH": str(wf / "scripts")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "nano_banana_aug.review", "--configfile", "run.yaml", "--port", "0", "--by", "ann"],
        cwd=wf,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = proc.stderr.readline()  # "review: http://127.0.0.1:PORT/gallery/index.html (...)"
    if "http://127.0.0.1:" not in line:
        proc.kill()
        raise AssertionError(f"the review server did not start: {line}{proc.stderr.read()}")
    return proc, line.split()[1]


@pytest.mark.e2e
@pytest.mark.browser
@pytest.mark.slow
def test_review_in_the_browser_flows_into_manifest_join_and_regeneration(tmp_path, standin):
    exe = find_chromium()
    wf = make_paid_run(tmp_path, standin, n_images=2)
    run(wf)
    assert len(standin.requests) == 4 and {r["status"] for r in rows(wf)} == {"success"}
    keep, reject = "ID1000__overcast__v0", "ID1001__overcast__v0"

    proc, url = _start_server(wf)
    try:
        marked = selftest(exe, url, f"&mark={keep}:keep&mark={reject}:reject")  # through the keyboard: y, n
        assert marked["server"] is True and marked["saved"] == ["saved", "saved"] and marked["js_errors"] == []
        assert marked["marks"] == {keep: "keep", reject: "reject"}
        reloaded = selftest(exe, url, "&review=reject")  # a new page load: the marks come from the server
        assert reloaded["marks"] == {keep: "keep", reject: "reject"}
        assert reloaded["after"]["tiles"] == 1  # the review filter shows the rejected output only
        assert reloaded["review_counts"] == {"keep": 1, "reject": 1, "undecided": 2}  # the filter's counts too
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    decisions = review_decisions.load(wf / "data" / "aug")
    assert {s: (d["decision"], d["by"], d["answer_id"]) for s, d in decisions.items()} == {
        keep: ("keep", "ann", "v1"),
        reject: ("reject", "ann", "v1"),
    }

    # the training join leaves the rejected output out at once (review.json beside the manifest) ...
    train = pd.read_csv(wf / "data" / "train.csv")
    joined = join_aigc(train, wf / "data", JOIN_CFG, 0.21)
    assert joined.added_files == 3 and joined.skipped.get("review:reject") == 1
    added = joined.frame[joined.frame["is_aigc"]]
    assert not added["image_path"].str.contains(reject).any() and added["image_path"].str.contains(keep).any()

    # ... the next run writes the decisions into the manifest and buys nothing
    res = run(wf)
    assert len(standin.requests) == 4
    got = {f"{r['image_id']}__{r['aug_name']}__v{r['variant_idx']}": r for r in rows(wf)}
    assert (got[keep]["review"], got[reject]["review"], got[reject]["review_by"]) == ("keep", "reject", "ann")
    assert {got[s]["review"] for s in got if s not in (keep, reject)} == {""}
    assert float(got[reject]["review_ts"]) > 0, said(res)[-2000:]

    # a free rebuild of every output keeps the decisions (they belong to the answers)
    run(wf, "--forcerun", "generate")
    assert len(standin.requests) == 4 and {r["review"] for r in rows(wf)} == {"keep", "reject", ""}

    # regenerate=rejected pays for exactly the rejected output, once
    res = run(wf, "--config", "regenerate=rejected")
    assert len(standin.requests) == 5, said(res)[-3000:]
    assert "regenerate=rejected: 1 outputs get a new answer" in res.stderr
    got = {f"{r['image_id']}__{r['aug_name']}__v{r['variant_idx']}": r for r in rows(wf)}
    assert (got[reject]["answer_id"], got[reject]["review"]) == ("v2", "")  # a new output starts undecided
    assert got[keep]["review"] == "keep"
    run(wf, "--config", "regenerate=rejected")
    assert len(standin.requests) == 5
    assert len(add_aigc_samples(train, wf / "data", JOIN_CFG, 0.21).query("is_aigc")) == 4 * 5


@pytest.mark.e2e
@pytest.mark.browser
@pytest.mark.slow
def test_review_without_the_server_exports_a_file_the_user_drops_in(local_finished, tmp_path):
    """The page opened from disk: marks stay in the browser across reloads; "export decisions"
    gives a review.json that, put into the output directory, counts like the server's."""
    exe = find_chromium()
    wf = clone(local_finished, tmp_path / "wf")
    run(wf, target="report_gallery")
    page = wf / "data" / "aug" / "gallery" / "index.html"
    profile = tmp_path / "browser-profile"
    reject = "ID1002__bright__v1"
    marked = selftest(exe, page, f"&mark={reject}:reject", profile=profile)
    assert marked["server"] is False and marked["marks"] == {reject: "reject"}
    again = selftest(exe, page, "&export", profile=profile)  # reloaded: the mark is still there
    assert again["marks"] == {reject: "reject"}
    exported = json.loads(again["export"])
    (wf / "data" / "aug" / "review.json").write_text(json.dumps(exported))

    res = run(wf)
    marks = {(r["image_id"], r["aug_name"], r["variant_idx"]): r["review"] for r in rows(wf)}
    assert marks[("ID1002", "bright", "1")] == "reject" and list(marks.values()).count("") == 8, said(res)[-2000:]
    manifest_rows = [r for r in rows(wf) if r["review"] == "reject"]
    assert manifest_rows[0]["answer_id"] == "v1"
    # a manifest written again from its parts keeps the decision (it lives in review.json)
    (wf / "data" / "aug" / "manifest.csv").unlink()
    run(wf)
    assert [(r["image_id"], r["review"]) for r in rows(wf) if r["review"]] == [("ID1002", "reject")]
    joined = join_aigc(pd.read_csv(wf / "data" / "train.csv"), wf / "data", JOIN_CFG, 0.21)
    assert joined.added_files == 8 and joined.skipped.get("review:reject") == 1
