"""Which answer each output is built from, decided from the files alone.

This is the one decision of the workflow.  The input function of rule
``generate`` asks :meth:`Planner.decide` which answer version an output
needs; Snakemake does the rest: a version that does not exist yet is made
by rule ``answer`` (paid), an output older than its answer is rebuilt by
rule ``generate`` (free).  So ``snakemake -n`` lists exactly the answers
that will be bought, and a finished directory has nothing to do.

For one target, from its answers (``answers/<stem>/v<n>.json``, see
:mod:`nano_banana_aug.answers`) and its output:

1. no answer: a new target (version 1 is bought), unless an output is
   there already (made by the original tool, or its answers were deleted):
   it is kept as it is (*adopted*);
2. an answer newer than the output (or no output): the output is built from
   that answer (a crash before the output was written, a batch result, a
   new answer bought in this run);
3. the newest answer has an image and made the output: done, unless a
   regeneration is asked for (``regenerate=``) and not yet done for this
   target: then the next version is bought;
4. the newest answer was refused (no usable image) and the output knows it:
   the next version is bought (a retry), unless the billed failed attempts
   since the last image reached ``api.max_total_attempts`` (*blocked*), or the
   target has an image already and nothing asks for a new one.

A regeneration request is satisfied by an answer, never by a record of
having asked: ``stale`` by an image answer asked the way the config says
now (its request key), ``rejected`` by an image answer newer than the one
the rejected output was made from, ``<aug>`` / ``all`` by an image answer
of the current round (see :func:`rounds`).  So the same command run again
after an interruption buys only what is still missing, and a run that
changed the state in the middle (a cluster job re-reading the files)
reaches the same decision.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from . import answers as answers_mod
from . import decisions as review_decisions
from . import layout
from .accounting import price_per_call

BUY, BUILD, DONE, BLOCKED, ADOPTED, DEFERRED = "buy", "build", "done", "blocked", "adopted", "deferred"


@dataclass
class Decision:
    action: str  # buy | build | done | blocked | adopted | deferred
    version: int | None  # the answer the output is (to be) built from
    why: str = ""


@dataclass
class Observed:
    """What the files say about one target (cheap: a listing and two stats)."""

    stem: str
    aug: str
    versions: list  # [(version, has image)], oldest first
    output_size: int | None  # None = no output file
    output_mtime: float = 0.0
    newest_mtime: float = 0.0  # of the newest answer record

    @classmethod
    def look(cls, output_dir, stem: str, aug: str, ext: str) -> "Observed":
        vers = answers_mod.versions(output_dir, stem)
        try:
            st = os.stat(layout.output_path(output_dir, stem, ext))
            size, mtime = st.st_size, st.st_mtime
        except FileNotFoundError:
            size, mtime = None, 0.0
        newest = 0.0
        if vers:
            try:
                newest = os.stat(layout.answer_path(output_dir, stem, vers[-1][0])).st_mtime
            except FileNotFoundError:
                pass
        return cls(stem, aug, vers, size, mtime, newest)

    @property
    def newest(self) -> int:
        return self.versions[-1][0] if self.versions else 0

    @property
    def newest_image(self) -> int:
        return max((v for v, img in self.versions if img), default=0)

    @property
    def consumed(self) -> bool:
        """The output exists and is not older than the newest answer."""
        return self.output_size is not None and self.output_mtime >= self.newest_mtime


@dataclass
class Ask:
    """What the config asks beyond the settings."""

    regenerate: set = field(default_factory=set)  # augmentation names, "stale", "rejected"
    max_total_attempts: int = 6
    retry_blocked: bool = False
    auto_regenerate: int = 0  # qc.auto_regenerate: new answers for a QC-rejected output, at most this many

    @classmethod
    def from_config(cls, cfg: dict) -> "Ask":
        asked = cfg.get("_asked") or {}
        return cls(
            regenerate=set(cfg.get("regenerate") or ()),
            max_total_attempts=int(cfg["api"].get("max_total_attempts", 6)),
            retry_blocked=bool(asked.get("retry_blocked")),
            auto_regenerate=int((cfg.get("qc") or {}).get("auto_regenerate", 0) or 0),
        )


class Planner:
    """Decisions for the targets of one output directory, with the reads they need done once.

    ``request_keys``: augmentation -> the request key the config gives its answers
    (:func:`nano_banana_aug.config.request_key`); ``scope``: augmentation -> stems
    (for regeneration rounds)."""

    def __init__(self, output_dir, ext: str, ask: Ask, request_keys: dict, scope: dict | None = None):
        self.out, self.ext, self.ask = output_dir, ext, ask
        self.request_keys = request_keys
        self.scope = scope or {}
        self._rounds: dict = {}
        self._answers: dict = {}
        self._review: dict | None = None

    def answer(self, stem: str, version: int):
        key = (stem, version)
        if key not in self._answers:
            self._answers[key] = answers_mod.try_read(self.out, stem, version)
        return self._answers[key]

    def observe(self, stem: str, aug: str) -> Observed:
        return Observed.look(self.out, stem, aug, self.ext)

    def decide(self, stem: str, aug: str, obs: Observed | None = None) -> Decision:
        obs = obs or self.observe(stem, aug)
        if not obs.versions:
            if obs.output_size:  # an output nobody here paid for: kept unless a new answer is asked for
                why = self._asked_for_adopted(stem, aug)
                return Decision(BUY, 1, why) if why else Decision(ADOPTED, None, "output without answers")
            return Decision(BUY, 1, "new")
        newest = obs.newest
        if not obs.consumed:
            return Decision(BUILD, newest, "answer not yet in the output")
        why = self._unsatisfied(stem, aug, obs)
        if obs.versions[-1][1]:
            return Decision(BUY, newest + 1, why) if why else Decision(DONE, newest)
        # the newest answer has no image, and the output (or its placeholder) knows it
        if obs.newest_image and not why:
            return Decision(DONE, newest, "a regeneration failed; the output of an older answer is kept")
        failed = self.failed_calls(stem, obs)
        if failed >= self.ask.max_total_attempts and not self.ask.retry_blocked:
            return Decision(
                BLOCKED,
                newest,
                f"{failed} billed failed attempts (api.max_total_attempts={self.ask.max_total_attempts})",
            )
        return Decision(BUY, newest + 1, why or "retry after a refused answer")

    def failed_calls(self, stem: str, obs: Observed) -> int:
        """Billed attempts of the answers since the last image (see answers.failed_attempts)."""
        return answers_mod.failed_attempts(obs.versions, lambda version: self.answer(stem, version))

    # --- regeneration requests
    def _asked_for_adopted(self, stem: str, aug: str) -> str:
        regen = self.ask.regenerate
        if aug in regen:
            return f"regenerate={aug}"
        if "rejected" in regen and self._rejected(stem, None):
            return "regenerate=rejected"
        return ""

    def _unsatisfied(self, stem: str, aug: str, obs: Observed) -> str:
        """Why this target needs a new answer now ("" = it does not)."""
        regen = self.ask.regenerate
        if not obs.newest_image or not (regen or self.ask.auto_regenerate):
            return ""
        image = self.answer(stem, obs.newest_image)
        if "stale" in regen and image is not None and image.request_key != self.request_keys.get(aug):
            return "regenerate=stale"
        if "rejected" in regen and self._rejected(stem, obs):
            return "regenerate=rejected"
        if aug in regen and self._behind(stem, aug, obs):
            return f"regenerate={aug}"
        if self.ask.auto_regenerate:
            side = self._sidecar(stem)
            images = sum(1 for _v, img in obs.versions if img)
            if (
                side is not None
                and side.status == "rejected"
                and _version(side.answer_id) >= obs.newest_image
                and images <= self.ask.auto_regenerate
            ):
                return "qc.auto_regenerate"
        return ""

    def _behind(self, stem: str, aug: str, obs: Observed) -> bool:
        round_no, started = self.rounds(aug)
        if obs.newest_image < round_no:
            image = self.answer(stem, obs.newest_image)
            return image is None or image.ts < started
        return obs.newest_image == round_no and self._round_is_new(aug)

    def rounds(self, aug: str) -> tuple[int, float]:
        """(round, when it started) of ``regenerate=<aug>``: the highest image version among the
        augmentation's targets and the time its first answer arrived."""
        if aug not in self._rounds:
            best, started = 0, 0.0
            for stem in self.scope.get(aug, ()):
                n = max((v for v, img in answers_mod.versions(self.out, stem) if img), default=0)
                a = self.answer(stem, n) if n else None
                ts = a.ts if a is not None else 0.0
                if n > best:
                    best, started = n, ts
                elif n == best and n and ts < started:
                    started = ts
            self._rounds[aug] = (best, started)
        return self._rounds[aug]

    def _round_is_new(self, aug: str) -> bool:
        """Every target of the augmentation reached the current round: asking again starts the next."""
        key = ("new", aug)
        if key not in self._rounds:
            round_no, started = self.rounds(aug)
            behind = False
            for stem in self.scope.get(aug, ()):
                n = max((v for v, img in answers_mod.versions(self.out, stem) if img), default=0)
                if n and n < round_no:
                    a = self.answer(stem, n)
                    if a is None or a.ts < started:
                        behind = True
                        break
            self._rounds[key] = not behind
        return self._rounds[key]

    def _sidecar(self, stem: str):
        from . import sidecar

        try:
            return sidecar.read(layout.sidecar_path(self.out, stem))
        except (OSError, ValueError, TypeError):
            return None

    def _rejected(self, stem: str, obs: Observed | None) -> bool:
        """The output was rejected -- by the QC gate or by a person (review.json) -- and is made
        from the newest image answer (``obs`` None: an adopted output, made from no answer)."""
        side = self._sidecar(stem)
        made_from = side.answer_id if side is not None else ""
        if obs is not None and _version(made_from) < obs.newest_image:
            return False  # a newer image answer has come since: the rejection is answered
        if side is not None and side.status == "rejected":
            return True
        if self._review is None:
            self._review = review_decisions.load(self.out)
        return review_decisions.rejected(self._review, stem, made_from)


def _version(answer_id: str) -> int:
    try:
        return int(str(answer_id).lstrip("v") or 0)
    except ValueError:
        return 0


OVER_BUDGET = "budget of this run"
IN_BATCH = "held by an open batch"  # a sync-mode run does not buy what a batch submitted earlier will deliver


def apply_budget(decisions: dict, limit: int | None, paid_already=frozenset()) -> int:
    """Keep the first ``limit`` answers to buy (in target order); the rest wait for a later run.
    ``paid_already``: answers in batches an earlier run submitted (and paid for): not this run's
    budget. Returns how many were deferred."""
    if limit is None:
        return 0
    deferred = 0
    for stem in sorted(decisions):
        d = decisions[stem]
        if d.action != BUY or stem in paid_already:
            continue
        if limit > 0:
            limit -= 1
        else:
            decisions[stem] = Decision(DEFERRED, None, OVER_BUDGET)
            deferred += 1
    return deferred


def budget_limit(cfg: dict, spent_before_usd, per_call_seen=lambda: None) -> tuple[int | None, str]:
    """How many answers this run may buy and the key that sets it ((None, "") = no budget set).
    ``spent_before_usd()`` is called only when the cumulative cap is set, ``per_call_seen()`` (see
    :func:`unit_price`) only when a cost cap is."""
    from . import config as config_mod

    if not config_mod.is_paid(cfg):
        return None, ""
    api = cfg["api"]
    limits = []
    if api.get("max_calls") is not None:
        limits.append((int(api["max_calls"]), "api.max_calls"))
    if api.get("max_cost_usd") is not None or api.get("max_total_cost_usd") is not None:
        unit = unit_price(cfg, per_call_seen())
        if api.get("max_cost_usd") is not None and unit > 0:
            limits.append((int(float(api["max_cost_usd"]) / unit + 1e-9), "api.max_cost_usd"))
        if api.get("max_total_cost_usd") is not None and unit > 0:
            left = float(api["max_total_cost_usd"]) - spent_before_usd()
            limits.append((max(0, int(left / unit + 1e-9)), "api.max_total_cost_usd"))
    return min(limits) if limits else (None, "")


def unit_price(cfg: dict, per_call_seen: float | None = None) -> float:
    """The planning price of one answer: the configured one (batch price in batch mode), or what a
    call has cost in this output directory so far when that is more (``per_call_seen``, see
    :func:`nano_banana_aug.answers.cost_per_call`): the prompt's text and the model's thinking are
    billed too, and the budget guard counts them, so a plan at the configured price alone could
    promise one answer more than the guard then lets a run buy."""
    return max(price_per_call(cfg), per_call_seen or 0.0)
