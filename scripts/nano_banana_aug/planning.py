"""What happens to each target: one decision, shared by the plan and the job.

:func:`decide` is the only place that says whether a target costs a call.
The plan printed at the start of a run applies it to every target (from
cheap observations: file sizes, markers), and every ``generate`` job applies
it again to its own target under the target's lock (from the sidecar and the
answer store), so the plan cannot announce "0 to generate" for a run that
then pays.

Actions:

``done``      the output is there; nothing happens (also when Snakemake reruns
              the job for its own reasons: edited rules, changed parameters,
              ``--rerun-triggers``)
``call``      a new, paid answer: a new target, a retry after a failure, or an
              open regeneration request this target has not been regenerated for
``store``     the output is built from a stored answer it has not used yet
              (crash recovery, batch results): 0 calls
``rederive``  the output is rebuilt from its own stored answer (``rederive=true``,
              or the output file was deleted or damaged): 0 calls
``blocked``   ``api.max_total_attempts`` failed attempts: not retried unless asked
``unusable``  the source image cannot be used (nothing is sent)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from . import imaging, layout
from .regen import RegenRequest

PAYING = ("call",)
FREE_REBUILDS = ("store", "rederive")


@dataclass
class TargetState:
    stem: str
    aug: str
    output_ok: bool  # exists, non-empty, not truncated
    output_exists: bool = False  # a file is there (Snakemake will not run the job by itself)
    status: str = ""  # sidecar status ("" = no sidecar)
    has_answer: bool = False  # the answer the output was made from is in the store
    unconsumed: bool = False  # a stored answer the target has not used yet (plan: a recheck marker)
    attempts_total: int = 0  # failed attempts since the last success
    problem: str = ""  # why the source is unusable ("" = usable)


@dataclass
class RunIntent:
    """What this run was asked to do (from its config and Snakemake's options)."""

    paid: bool = True
    requests: list = field(default_factory=list)  # [RegenRequest] active in this run
    done: dict = field(default_factory=dict)  # request id -> stems already regenerated for it
    rederive: bool = False
    retry_blocked: bool = False
    max_total_attempts: int = 6


def intent_from_config(cfg: dict) -> RunIntent:
    """The intent recorded in a run's effective config (``_run``, written at the run's start)."""
    from . import config as config_mod

    run = cfg.get("_run") or {}
    return RunIntent(
        paid=config_mod.is_paid(cfg),
        requests=[RegenRequest.from_dict(r) for r in run.get("requests", [])],
        rederive=bool(cfg.get("rederive")),
        retry_blocked=bool(cfg.get("retry_blocked")),
        max_total_attempts=int(cfg["api"].get("max_total_attempts", 6)),
    )


@dataclass
class Decision:
    action: str
    why: str = ""
    requests: list = field(default_factory=list)  # ids a call made now satisfies


def pending_requests(st: TargetState, run: RunIntent) -> list[RegenRequest]:
    return [r for r in run.requests if r.matches(st.stem, st.aug) and st.stem not in run.done.get(r.id or r.key, ())]


def decide(st: TargetState, run: RunIntent) -> Decision:
    """The action for one target (see the module docstring)."""
    pending = pending_requests(st, run)
    if pending:
        if st.problem:
            return Decision("unusable", st.problem)
        return Decision("call", "; ".join(r.what for r in pending), [r.id for r in pending if r.id])
    if not run.paid:
        if st.output_ok:
            return Decision("done")
        return Decision("unusable", st.problem) if st.problem else Decision("call", "missing output")
    if st.unconsumed:
        return Decision("store", "a stored answer not yet used")
    if run.rederive and st.has_answer:
        return Decision("rederive", "rederive=true")
    if st.output_ok:
        return Decision("done")
    if st.has_answer:
        return Decision("rederive", "output missing or damaged; its answer is stored")
    if st.problem:
        return Decision("unusable", st.problem)
    if st.attempts_total >= run.max_total_attempts and not run.retry_blocked:
        return Decision("blocked", f"{st.attempts_total} failed attempts (api.max_total_attempts={run.max_total_attempts})")
    return Decision("call", "retry after a failure" if st.status else "new")


def output_looks_ok(path, size: int | None = None) -> bool:
    """Exists, non-empty and not truncated (cheap: size and the format's trailer)."""
    try:
        if size is None:
            size = os.stat(path).st_size
        if size <= 0:
            return False
        return imaging.looks_complete(path, size)
    except OSError:
        return False


@dataclass
class Plan:
    """The decision for every target of the run, and the counts the plan prints."""

    actions: dict = field(default_factory=dict)  # stem -> Decision
    problems: dict = field(default_factory=dict)  # stem -> TargetState (unusable ones)

    def count(self, *actions) -> int:
        return sum(1 for d in self.actions.values() if d.action in actions)

    def stems(self, *actions) -> set[str]:
        return {s for s, d in self.actions.items() if d.action in actions}


def survey(output_dir, ext: str, targets, augs: dict, run: RunIntent, sidecar_reader) -> tuple[Plan, set[str]]:
    """Decide every target from cheap observations.

    ``targets``: the selected checkpoint rows; ``augs``: name -> num_images;
    ``sidecar_reader(stem)`` -> Record or None.  Returns the plan and the
    stems whose output exists although the run must (re)make it (Snakemake
    would not run those jobs by itself).
    """
    from .answers import AnswerStore, recheck_stems

    store = AnswerStore(output_dir)
    pending = recheck_stems(output_dir)
    with_answers = store.stems() if run.paid else set()
    plan, trigger = Plan(), set()
    for t in targets:
        for aug, n in augs.items():
            for k in range(n):
                stem = layout.stem(t.image_id, aug, k)
                path = Path(output_dir) / f"{stem}.{ext}"
                try:
                    size = os.stat(path).st_size
                    exists = True
                except OSError:
                    size, exists = 0, False
                st = TargetState(stem=stem, aug=aug, output_ok=exists and output_looks_ok(path, size),
                                 output_exists=exists, unconsumed=stem in pending, problem=t.problem)
                if not st.output_ok:
                    rec = sidecar_reader(stem)
                    if rec is not None:
                        st.status, st.attempts_total = rec.status, int(rec.attempts_total or 0)
                        st.has_answer = bool(rec.answer_id) and stem in with_answers
                elif run.rederive:
                    st.has_answer = stem in with_answers
                decision = decide(st, run)
                plan.actions[stem] = decision
                if decision.action == "unusable":
                    plan.problems[stem] = t
                if exists and decision.action != "done":
                    trigger.add(stem)
    return plan, trigger


def plan_for_run(cfg: dict, targets_csv) -> Plan:
    """The plan of a running run, decided again from its effective config (the batch job's view)."""
    from . import config as config_mod
    from . import regen, sidecar
    from .targets import BAD_ID_PROBLEM, check_source, read_targets

    out = config_mod.output_dir(cfg)
    targets = read_targets(targets_csv)
    limit = int(cfg.get("limit") or 0)
    if limit > 0:
        targets = targets[:limit]
    targets = [t for t in targets if not t.problem.startswith(BAD_ID_PROBLEM)]
    for t in targets:
        if t.problem:
            t.problem = check_source(cfg["data"]["data_root"], t.image_path, decode=True)[1]
    intent = intent_from_config(cfg)
    intent.done = {r.id: regen.done_stems(out, r) for r in intent.requests if r.id}
    augs = {a["name"]: int(a.get("num_images", 1)) for a in cfg["augmentations"]}

    def read_sidecar(stem):
        try:
            return sidecar.read(layout.sidecar_path(out, *layout.parse_stem(stem)))
        except (OSError, ValueError, TypeError):
            return None

    plan, _trigger = survey(out, cfg["data"]["output_ext"], targets, augs, intent, read_sidecar)
    return plan
