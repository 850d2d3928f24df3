"""The plan's one decision per output, from the files alone (no Snakemake): buy, build, done,
blocked, adopted, deferred; regeneration requests; the budget of a run.

The state of a target is made with the package's own writers: answers bought by rule answer's
code with the offline ``local`` provider (or ``answers.write`` for a refusal), outputs and
sidecars written by rule generate's code, review decisions by ``decisions.save``."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import os
from pathlib import Path

import pytest
from snakemake.utils import validate

from nano_banana_aug import answer as answer_job
from nano_banana_aug import answers, decisions, generate, layout, paying, plan, sidecar, targets
from nano_banana_aug import config as config_mod
from nano_banana_aug.pipeline import Pipeline
from nano_banana_aug.plan import ADOPTED, BLOCKED, BUILD, BUY, DEFERRED, DONE, Decision, apply_budget

from .helpers import make_dataset
from .test_config import checked

AUGS = [
    {"name": "bright", "prompt": "Brighter.", "num_images": 1, "local": {"exposure": 0.4}},
    {"name": "blur", "prompt": "Blur.", "num_images": 1, "local": {"gaussian_blur": 1.0}},
]
BRIGHT, BLUR = "ID1000__bright__v0", "ID1000__blur__v0"


class Workspace:
    """A data set of one image, an output directory and a config made like the workflow's."""

    def __init__(self, root: Path):
        self.root = root
        self.data = make_dataset(root / "data", n=1)
        self.out = root / "out"
        self.raw = {
            "api": {"provider": "local", "model": "recipes-v1"},
            "data": {"data_root": str(self.data), "output_dir": str(self.out)},
            "qc": {"enabled": False},
            "augmentations": copy.deepcopy(AUGS),
        }
        self.cfg = self.config()
        self.table = Path(Pipeline(self.cfg).table)
        targets.make_table(self.cfg, self.table)

    def config(self, edit=None, **top) -> dict:
        """The config after ``edit(raw)`` and with top-level keys, validated and defaulted."""
        raw = copy.deepcopy(self.raw)
        if edit is not None:
            edit(raw)
        raw.update(copy.deepcopy(top))
        return checked(raw)

    def decisions(self, cfg=None) -> dict:
        return Pipeline(cfg or self.cfg).decisions()

    def buy(self, stem: str, version: int, cfg=None) -> answers.Answer:
        """Rule answer's code: buys ``version`` of ``stem`` (local provider: nothing is paid)."""
        bought = answer_job.run(cfg or self.cfg, stem, version, str(self.table))
        assert bought is not None and bought.version == version
        return bought

    def build(self, stem: str, version: int, cfg=None) -> sidecar.Record:
        """Rule generate's code: the output and its sidecar from answer ``version``."""
        return generate.run(
            cfg or self.cfg,
            layout.answer_path(self.out, stem, version),
            layout.output_path(self.out, stem, "png"),
            layout.sidecar_path(self.out, stem),
            str(self.table),
        )

    def refusal(self, stem: str, version: int, calls: int, cfg=None) -> answers.Answer:
        """A stored refused answer (a safety block after ``calls`` paid attempts), as rule answer stores it."""
        cfg = cfg or self.cfg
        _image_id, aug_name, _k = layout.parse_stem(stem)
        source = (self.data / "train" / "ID1000.jpg").read_bytes()
        fp, key = paying.fingerprint(cfg, config_mod.augmentation(cfg, aug_name), source, None)
        refused = answers.Answer(
            stem=stem,
            version=version,
            status=answers.REFUSED,
            fingerprint=fp,
            request_key=key,
            reason="IMAGE_SAFETY",
            message=f"after {calls} attempt(s): no usable image: finishReason=IMAGE_SAFETY",
            calls=calls,
            source="call",
        )
        return answers.write(self.out, refused)

    def time_passes(self) -> None:
        """Move every file of the output directory 10 s into the past (their order is kept), so
        what is written next is newer than all of it, whatever the clock's granularity."""
        for dirpath, _dirs, names in os.walk(self.out):
            for name in names:
                p = Path(dirpath) / name
                st = p.stat()
                os.utime(p, ns=(st.st_atime_ns - 10**10, st.st_mtime_ns - 10**10))

    def finished(self, cfg=None) -> None:
        """Both targets bought and built from version 1."""
        for stem in (BRIGHT, BLUR):
            self.buy(stem, 1, cfg)
            self.build(stem, 1, cfg)
        self.time_passes()


@pytest.fixture
def ws(tmp_path) -> Workspace:
    return Workspace(tmp_path)


def actions(found: dict) -> dict:
    return {stem: (d.action, d.version) for stem, d in found.items()}


def edited_prompt(raw):
    raw["augmentations"][0]["prompt"] = "Much brighter, as at noon."


# ---------------------------------------------------------------- buy, build, done


def test_a_new_target_is_bought(ws):
    assert actions(ws.decisions()) == {BRIGHT: (BUY, 1), BLUR: (BUY, 1)}
    assert ws.decisions()[BRIGHT].why == "new"


def test_an_answer_that_matches_the_config_without_output_is_built(ws):
    bought = ws.buy(BRIGHT, 1)
    settings = config_mod.request_settings(ws.cfg, config_mod.augmentation(ws.cfg, "bright"))
    assert bought.request_key == config_mod.request_key(settings)  # asked the way the config says
    assert bought.fingerprint["prompt_sha256"] == hashlib.sha256(b"Brighter.").hexdigest()
    found = ws.decisions(ws.config(regenerate="stale"))  # even asked for stale answers: nothing to buy
    assert actions(found) == {BRIGHT: (BUILD, 1), BLUR: (BUY, 1)}
    assert found[BRIGHT].why == "answer not yet in the output"


def test_an_output_with_its_sidecar_from_the_current_answer_is_done(ws):
    ws.finished()
    for stem in (BRIGHT, BLUR):
        assert layout.output_path(ws.out, stem, "png").stat().st_size > 0
        assert sidecar.read(layout.sidecar_path(ws.out, stem)).answer_id == "v1"
    assert actions(ws.decisions()) == {BRIGHT: (DONE, 1), BLUR: (DONE, 1)}
    assert actions(ws.decisions(ws.config(regenerate="stale"))) == {BRIGHT: (DONE, 1), BLUR: (DONE, 1)}


def test_an_answer_newer_than_its_output_is_built_again(ws):
    ws.finished()
    ws.buy(BRIGHT, 2)  # e.g. the run was killed between rule answer and rule generate
    assert actions(ws.decisions()) == {BRIGHT: (BUILD, 2), BLUR: (DONE, 1)}
    ws.build(BRIGHT, 2)
    assert actions(ws.decisions()) == {BRIGHT: (DONE, 2), BLUR: (DONE, 1)}


# ---------------------------------------------------------------- stale answers


def test_after_a_prompt_edit_regenerate_stale_buys_exactly_the_stale_output(ws):
    ws.finished()
    edited = ws.config(edited_prompt)
    # the edit alone buys nothing: the outputs are kept until a regeneration is asked for
    assert actions(ws.decisions(edited)) == {BRIGHT: (DONE, 1), BLUR: (DONE, 1)}
    stale = ws.config(edited_prompt, regenerate="stale")
    found = ws.decisions(stale)
    assert actions(found) == {BRIGHT: (BUY, 2), BLUR: (DONE, 1)}
    assert found[BRIGHT].why == "regenerate=stale"
    # the same command after the new answer arrived (interrupted before generate): build it, buy nothing
    ws.buy(BRIGHT, 2, stale)
    assert actions(ws.decisions(stale)) == {BRIGHT: (BUILD, 2), BLUR: (DONE, 1)}
    ws.build(BRIGHT, 2, stale)
    assert actions(ws.decisions(stale)) == {BRIGHT: (DONE, 2), BLUR: (DONE, 1)}


def test_the_answers_own_fingerprint_decides_staleness_not_the_sidecar(ws):
    ws.finished()
    stale = ws.config(edited_prompt, regenerate="stale")
    new_key = config_mod.request_key(config_mod.request_settings(stale, config_mod.augmentation(stale, "bright")))
    derive = generate.derive_key(stale)
    # the stale output's sidecar claims the current request key; the current one's an old key
    for stem, key in ((BRIGHT, new_key), (BLUR, "0123456789ab")):
        path = layout.sidecar_path(ws.out, stem)
        record = sidecar.read(path)
        assert record.generation_key.split("/")[0] == answers.read(ws.out, stem, 1).request_key
        record.generation_key = f"{key}/{derive}"
        sidecar.write(record, path)
    ws.time_passes()
    assert answers.read(ws.out, BRIGHT, 1).request_key != new_key
    assert actions(ws.decisions(stale)) == {BRIGHT: (BUY, 2), BLUR: (DONE, 1)}


# ---------------------------------------------------------------- review decisions


def test_a_rejected_output_is_bought_again_only_with_regenerate_rejected(ws):
    ws.finished()
    decisions.save(
        ws.out,
        {
            BRIGHT: {"decision": "reject", "answer_id": "v1", "by": "ann", "ts": 1764000000.0},
            BLUR: {"decision": "keep", "answer_id": "v1", "by": "ann", "ts": 1764000000.0},
        },
    )
    assert actions(ws.decisions()) == {BRIGHT: (DONE, 1), BLUR: (DONE, 1)}
    assert actions(ws.decisions(ws.config(regenerate="stale"))) == {BRIGHT: (DONE, 1), BLUR: (DONE, 1)}
    rejected = ws.config(regenerate="rejected")
    found = ws.decisions(rejected)
    assert actions(found) == {BRIGHT: (BUY, 2), BLUR: (DONE, 1)}
    assert found[BRIGHT].why == "regenerate=rejected"
    # the new answer answers the rejection (it was made on v1): nothing more to buy
    ws.buy(BRIGHT, 2, rejected)
    ws.build(BRIGHT, 2, rejected)
    assert actions(ws.decisions(rejected)) == {BRIGHT: (DONE, 2), BLUR: (DONE, 1)}


def test_a_rejection_of_another_answer_does_not_count(ws):
    ws.finished()
    decisions.save(ws.out, {BRIGHT: {"decision": "reject", "answer_id": "v7", "by": "ann", "ts": 1.0}})
    assert actions(ws.decisions(ws.config(regenerate="rejected"))) == {BRIGHT: (DONE, 1), BLUR: (DONE, 1)}


# ---------------------------------------------------------------- refused and blocked


def test_a_refused_answer_is_retried_until_the_attempts_run_out(ws):
    ws.refusal(BRIGHT, 1, calls=3)
    assert actions(ws.decisions())[BRIGHT] == (BUILD, 1)  # its placeholder first
    record = ws.build(BRIGHT, 1)
    assert (record.status, record.error_reason) == ("failed", "IMAGE_SAFETY")
    assert layout.output_path(ws.out, BRIGHT, "png").stat().st_size == 0
    ws.time_passes()
    found = ws.decisions()
    assert (found[BRIGHT].action, found[BRIGHT].version, found[BRIGHT].why) == (
        BUY,
        2,
        "retry after a refused answer",
    )
    ws.refusal(BRIGHT, 2, calls=3)
    ws.build(BRIGHT, 2)
    ws.time_passes()
    found = ws.decisions()
    assert (found[BRIGHT].action, found[BRIGHT].version) == (BLOCKED, 2)
    assert found[BRIGHT].why == "6 billed failed attempts (api.max_total_attempts=6)"
    assert actions(ws.decisions()) == actions(found)  # and again: never bought by itself


def test_a_blocked_output_is_bought_again_only_when_asked(ws):
    for version in (1, 2):
        ws.refusal(BRIGHT, version, calls=3)
        ws.build(BRIGHT, version)
        ws.time_passes()
    for cfg in (ws.cfg, *(ws.config(regenerate=r) for r in ("stale", "rejected", "bright", "all"))):
        assert actions(ws.decisions(cfg))[BRIGHT] == (BLOCKED, 2)
    # the documented way: raise api.max_total_attempts
    raised = ws.config(lambda raw: raw["api"].update(max_total_attempts=7))
    assert actions(ws.decisions(raised))[BRIGHT] == (BUY, 3)
    # the key of earlier releases (retry_blocked: true) still retries blocked outputs in this run
    notes = []
    old = copy.deepcopy(ws.raw)
    old["retry_blocked"] = True
    retry = config_mod.prepare(old, validate, say=notes.append)
    assert notes == ["note: config key 'retry_blocked' is deprecated: " + config_mod.DEPRECATED["retry_blocked"]]
    assert actions(ws.decisions(retry))[BRIGHT] == (BUY, 3)


def test_a_refused_regeneration_keeps_the_older_image(ws):
    ws.finished()
    ws.refusal(BRIGHT, 2, calls=3)
    record = ws.build(BRIGHT, 2)  # rule generate keeps building from v1
    assert (record.status, record.answer_id) == ("success", "v1")
    ws.time_passes()
    found = ws.decisions()
    assert (found[BRIGHT].action, found[BRIGHT].version) == (DONE, 2)
    assert found[BRIGHT].why == "a regeneration failed; the output of an older answer is kept"


# ---------------------------------------------------------------- adopted outputs


def test_an_output_without_answers_is_adopted_unless_its_augmentation_is_regenerated(ws):
    layout.output_path(ws.out, BRIGHT, "png").parent.mkdir(parents=True, exist_ok=True)
    layout.output_path(ws.out, BRIGHT, "png").write_bytes(b"\x89PNG\r\n\x1a\n made by the original tool")
    assert actions(ws.decisions()) == {BRIGHT: (ADOPTED, None), BLUR: (BUY, 1)}
    found = ws.decisions(ws.config(regenerate="bright"))
    assert actions(found) == {BRIGHT: (BUY, 1), BLUR: (BUY, 1)}
    assert found[BRIGHT].why == "regenerate=bright"


# ---------------------------------------------------------------- the budget


def some_decisions() -> dict:
    """Inserted out of order: the budget goes by target order, not by insertion."""
    return {
        "e": Decision(BUY, 1, "new"),
        "b": Decision(BUY, 3, "regenerate=stale"),
        "a": Decision(DONE, 1),
        "d": Decision(BUY, 1, "new"),
        "c": Decision(BUILD, 2, "answer not yet in the output"),
        "f": Decision(BUY, 2, "retry after a refused answer"),
    }


def test_the_budget_keeps_the_first_answers_in_target_order():
    found = some_decisions()
    assert apply_budget(found, 2) == 2
    assert actions(found) == {
        "a": (DONE, 1),
        "b": (BUY, 3),
        "c": (BUILD, 2),  # building is free: never deferred
        "d": (BUY, 1),
        "e": (DEFERRED, None),
        "f": (DEFERRED, None),
    }
    assert found["e"].why == found["f"].why == "budget of this run"


def test_answers_paid_already_are_not_this_runs_budget():
    found = some_decisions()
    assert apply_budget(found, 1, paid_already=frozenset({"b", "d"})) == 1
    assert actions(found) == {
        "a": (DONE, 1),
        "b": (BUY, 3),  # paid by an earlier run's batch: kept, not counted
        "c": (BUILD, 2),
        "d": (BUY, 1),
        "e": (BUY, 1),  # the one answer this run may buy
        "f": (DEFERRED, None),
    }
    found = some_decisions()
    assert apply_budget(found, 0, paid_already={"f"}) == 3
    assert {s for s, d in found.items() if d.action == BUY} == {"f"}
    assert {s for s, d in found.items() if d.action == DEFERRED} == {"b", "d", "e"}


def test_no_budget_defers_nothing():
    found = some_decisions()
    assert apply_budget(found, None) == 0
    assert actions(found) == actions(some_decisions())
    found = some_decisions()
    assert apply_budget(found, 10) == 0
    assert actions(found) == actions(some_decisions())


def test_the_plan_prices_an_answer_at_what_calls_cost_here_when_that_is_more(ws):
    """Defect: the plan priced every answer at api.pricing.image_usd_per_call ($0.1345) while the
    budget guard adds up each call's estimate from its usage (prompt text and thinking billed too,
    ~$0.1358): `max_cost_usd: 3.5` planned 26 answers, the guard refused the 26th and the run failed."""
    paid = ws.config(lambda raw: raw["api"].update(provider="gemini", model=None, max_cost_usd=3.5))
    assert plan.budget_limit(paid, lambda: 0.0, lambda: None) == (26, "api.max_cost_usd")  # nothing bought yet
    refused = ws.refusal(BRIGHT, 1, calls=2, cfg=paid)
    answers.write(ws.out, dataclasses.replace(refused, est_cost_usd=2 * 0.1358))
    pipe = Pipeline(paid)
    assert pipe.cost_per_call_seen() == pytest.approx(0.1358)
    assert plan.budget_limit(paid, lambda: 0.0, pipe.cost_per_call_seen) == (25, "api.max_cost_usd")
    assert plan.unit_price(paid, 0.1) == 0.1345  # never below the configured price
    assert "plan: 1 answers to buy, estimated $0.14 ($0.1358 each; more if retried)" in pipe.plan_lines()


def test_a_4k_answer_is_planned_and_reserved_at_its_price(ws):
    """Defect: with api.image_config imageSize 4K every call was planned and reserved at the 1K/2K
    price ($0.1345) while it costs ~$0.24 (2,000 image tokens, REFERENCE): max_cost_usd=0.20
    bought a $0.24 answer. The 880 extra image tokens are priced in (half of it in batch mode)."""
    from nano_banana_aug import budget
    from nano_banana_aug.accounting import price_per_call

    def sized(size, **more):
        return ws.config(
            lambda raw: raw["api"].update(provider="gemini", model=None, image_config={"imageSize": size}, **more)
        )

    assert price_per_call(sized("4K")) == pytest.approx(0.1345 + 880 * 120 / 1e6)  # $0.2401
    assert price_per_call(sized("2K")) == price_per_call(sized("1K")) == 0.1345
    assert price_per_call(sized("4K", mode="batch")) == pytest.approx((0.1345 + 0.1056) / 2)
    assert price_per_call(sized("4K", mode="batch"), batch=False) == pytest.approx(0.2401)
    capped = sized("4K", max_cost_usd=0.5)
    assert plan.budget_limit(capped, lambda: 0.0, lambda: None) == (2, "api.max_cost_usd")
    assert plan.unit_price(capped) == pytest.approx(0.2401)
    assert budget.for_config(capped).reserve_usd == pytest.approx(0.2401)


def test_the_plan_of_a_paid_run_applies_its_max_calls(ws):
    paid = ws.config(lambda raw: raw["api"].update(provider="gemini", model=None, max_calls=1))
    unneeded = lambda: pytest.fail("not needed for max_calls")  # noqa: E731
    assert plan.budget_limit(paid, unneeded, unneeded) == (1, "api.max_calls")
    found = ws.decisions(paid)
    assert actions(found) == {BLUR: (BUY, 1), BRIGHT: (DEFERRED, None)}  # ID1000__blur < ID1000__bright
    lines = Pipeline(paid).plan_lines()
    assert "plan: 1 answers to buy, estimated $0.13 ($0.1345 each; more if retried)" in lines
    assert any(line.startswith("plan: 1 answers left for the next run") for line in lines)
