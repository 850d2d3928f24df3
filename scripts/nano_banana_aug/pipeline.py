"""The workflow's view of an output directory while Snakemake builds the DAG.

``rules/common.smk`` keeps one :class:`Pipeline` and asks it, from small
input functions, for: the targets table's path (named after everything the
table depends on), the outputs of a manifest shard, the answer version an
output is built from (:mod:`nano_banana_aug.plan`), and the plan line.
Nothing here writes a file: dry-runs, ``--summary``, ``--lint`` and
``--unlock`` change nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

from . import config as config_mod
from . import answers as answers_mod
from . import layout, plan
from .manifest import legacy_keys
from .plan import ADOPTED, BLOCKED, BUILD, BUY, DEFERRED, Decision
from .targets import BAD_ID_PROBLEM, read_targets


class Pipeline:
    def __init__(self, cfg: dict):
        self.cfg = cfg
        self.out = cfg["data"]["output_dir"].rstrip("/")
        self.ext = cfg["data"]["output_ext"]
        self.augs = {a["name"]: int(a["num_images"]) for a in cfg["augmentations"]}
        self.paid = config_mod.is_paid(cfg)
        train_csv = config_mod.train_csv_path(cfg)
        sha = config_mod.file_sha256(train_csv) if train_csv.is_file() else "missing"
        self.table = str(layout.targets_table(self.out, layout.digest(config_mod.data_settings(cfg, sha))))
        self.derive_settings = str(
            layout.settings_file(self.out, "derive", layout.digest(config_mod.derive_settings(cfg)))
        )
        self.manifest_settings = str(layout.settings_file(self.out, "manifest", layout.digest(self.manifest_view())))
        self._targets = None
        self._decisions = None
        self._planner = None
        self._by_shard = None  # shard -> outputs and sidecars (manifest part inputs)
        self._budget_key = ""  # the budget key that sets how many answers this run buys
        self._awaited = 0  # answers to buy that batches an earlier run submitted already hold
        self._per_call = None

    def manifest_view(self) -> dict:
        """What the manifest's marks depend on besides the outputs (stale, orphaned, blocked)."""
        keys = {
            a["name"]: config_mod.request_key(config_mod.request_settings(self.cfg, a))
            for a in self.cfg["augmentations"]
        }
        return {
            "augs": self.augs,
            "keys": keys,
            "max_total_attempts": self.cfg["api"]["max_total_attempts"],
            "data_root": self.cfg["data"]["data_root"],
            "table": self.table,
        }

    # --- the targets
    def load(self, table_path: str | None = None) -> list:
        """The selected rows of the targets table: the first ``limit`` images (all when 0)."""
        if self._targets is None:
            path = Path(table_path or self.table)
            if not path.is_file():
                from .errors import UserError

                raise UserError(
                    f"{path} (checkpoint targets) was never made here: run the workflow once without --touch first"
                )
            targets = read_targets(path)
            limit = int(self.cfg.get("limit") or 0)
            self._targets = targets[:limit] if limit > 0 else targets
        return self._targets

    def stems(self, target) -> list[tuple[str, str]]:
        return [(layout.stem(target.image_id, aug, k), aug) for aug, n in self.augs.items() for k in range(n)]

    def usable(self) -> list:
        return [t for t in self.load() if not t.problem]

    # --- decisions
    @property
    def planner(self) -> plan.Planner:
        if self._planner is None:
            scope = {}
            if self._targets is not None or Path(self.table).is_file():  # regeneration rounds look at every output
                for t in self.usable():
                    for stem, aug in self.stems(t):
                        scope.setdefault(aug, []).append(stem)
            keys = {
                a["name"]: config_mod.request_key(config_mod.request_settings(self.cfg, a))
                for a in self.cfg["augmentations"]
            }
            self._planner = plan.Planner(self.out, self.ext, plan.Ask.from_config(self.cfg), keys, scope)
        return self._planner

    def decisions(self) -> dict:
        """Every selected output's decision, the budget applied (computed once)."""
        if self._decisions is None:
            planner = self.planner
            found, self._repair = {}, set()
            for t in self.usable():
                for stem, aug in self.stems(t):
                    obs = planner.observe(stem, aug)
                    found[stem] = planner.decide(stem, aug, obs)
                    if obs.versions and (obs.output_size is None or not layout.sidecar_path(self.out, stem).exists()):
                        self._repair.add(stem)  # an output (or sidecar) gone although its answer is there
            from .budget import spent_in_directory

            from .batch_records import open_stems

            awaited = open_stems(self.out)  # paid: in batches submitted earlier, their answers to come
            if awaited and self.cfg["api"].get("mode") != "batch":  # only batch mode collects them
                for stem in awaited:
                    if stem in found and found[stem].action == BUY:
                        found[stem] = Decision(DEFERRED, None, plan.IN_BATCH)
                awaited = set()
            limit, self._budget_key = plan.budget_limit(
                self.cfg, lambda: spent_in_directory(self.out), self.cost_per_call_seen
            )
            plan.apply_budget(found, limit, awaited)
            self._awaited = sum(1 for s in awaited if found.get(s) is not None and found[s].action == BUY)
            self._decisions = found
        return self._decisions

    def cost_per_call_seen(self) -> float | None:
        """What one call has cost in this directory so far (the plan's price when it is more than
        the configured one)."""
        if self._per_call is None:
            source = "batch" if self.cfg["api"].get("mode") == "batch" else "call"
            self._per_call = [answers_mod.cost_per_call(self.out, source)]
        return self._per_call[0]

    def decision(self, stem: str, aug: str) -> Decision:
        """For the input function of rule generate: the shared decision, or (a cluster job step,
        an output asked for by name) one made now for this output alone."""
        if self._decisions is not None and stem in self._decisions:
            return self._decisions[stem]
        return self.planner.decide(stem, aug)

    def answer_for(self, stem: str, aug: str) -> str:
        d = self.decision(stem, aug)
        if d.version is None:
            what = (
                "it was made without this pipeline's answers (adopted); regenerate=<name> buys one"
                if d.action == ADOPTED
                else "the budget of this run does not reach it"
            )
            raise ValueError(f"output {stem}: no answer to build it from: {what}")
        return str(layout.answer_path(self.out, stem, d.version))

    # --- batch mode (api.mode: batch): the answers to buy go through one batch checkpoint
    def batch_wanted(self) -> dict:
        """stem -> answer version of every answer this run buys."""
        return {stem: d.version for stem, d in self.decisions().items() if d.action == BUY}

    def batch_key(self) -> str | None:
        """The batch checkpoint's key: the answers it buys and the state of the open batches
        (so it runs again while one of them is still pending); None when nothing is to buy or
        collect."""
        if not hasattr(self, "_batch_key"):  # fixed for the invocation: the checkpoint changes the state
            wanted = self.batch_wanted()
            from .batch_records import open_state

            state = open_state(self.out, wanted)
            self._batch_key = (
                layout.digest({"wanted": sorted(wanted.items()), "open": state}) if wanted or state else None
            )
        return self._batch_key

    def batch_outcome(self) -> dict:
        """What this run's batch checkpoint said per target ({} before it ran, or without one)."""
        key = getattr(self, "_batch_key", None)
        if not key:
            return {}
        from .batch_records import read_outcome

        return read_outcome(layout.pipeline_dir(self.out) / "batches" / f"round-{key}.json")

    def after_batch(self, outcome: dict) -> None:
        """Once the batch checkpoint ran: outputs whose answer arrived are built; the others wait
        (a batch still running, a failed line) unless api.batch.fallback is sync."""
        fallback = self.cfg["api"]["batch"]["fallback"] == "sync"
        self._by_shard = None
        for stem, d in list(self.decisions().items()):
            if d.action != BUY:
                continue
            if layout.answer_path(self.out, stem, d.version).exists():
                self._decisions[stem] = Decision(BUILD, d.version, "answer from the batch")
            elif not (fallback and outcome.get(stem, {}).get("status") == "failed"):
                self._decisions[stem] = Decision(DEFERRED, None, outcome.get(stem, {}).get("status", "pending"))

    # --- the manifest shards
    def shard_outputs(self, shard: int) -> list[str]:
        """Outputs and sidecars of one shard that this run makes or keeps (not adopted or
        deferred): the manifest part's inputs. Both, not the sidecar alone: Snakemake remakes a
        missing file only when a job asks for it."""
        return self._shard_index().get(shard, [])

    def _shard_index(self) -> dict[int, list[str]]:
        if self._by_shard is None:
            decisions = self.decisions()
            index: dict[int, list[str]] = {}
            for t in self.usable():
                paths = index.setdefault(layout.shard_of(t.image_id), [])
                for stem, _aug in self.stems(t):
                    if decisions[stem].action not in (ADOPTED, DEFERRED):
                        paths.append(str(layout.output_path(self.out, stem, self.ext)))
                        paths.append(str(layout.sidecar_path(self.out, stem)))
            self._by_shard = index
        return self._by_shard

    def part(self, shard: int) -> str:
        """The manifest part of a shard. Its name changes when an output or sidecar of the shard is
        gone although its answer is there (deleted by hand): the part is then made again, and with
        it the missing output (Snakemake looks for missing files only below a job that runs)."""
        self.decisions()
        gone = sorted(s for s in self._repair if layout.shard_of(layout.parse_stem(s)[0]) == shard)
        return str(layout.manifest_part(self.out, shard, layout.digest(gone)[:8] if gone else "0"))

    def parts(self) -> list[str]:
        return [self.part(s) for s in self.shards()]

    def shards(self) -> list[int]:
        """Shards of the targets, of the sidecars there are, and of the rows of a manifest the
        original tool wrote (adopted shard by shard: with `limit` no target names them)."""
        found = {layout.shard_of(t.image_id) for t in self.load()}
        found |= {layout.shard_of(k[0]) for k in legacy_keys(Path(self.out) / self.cfg["data"]["manifest"])}
        side = layout.sidecar_dir(self.out)
        if side.is_dir():
            for name in _listdir(side):
                key = layout.parse_stem(name)
                if key is not None:
                    found.add(layout.shard_of(key[0]))
        return sorted(found)

    # --- the plan
    def counts(self) -> dict:
        c = {k: 0 for k in (BUY, BUILD, "done", BLOCKED, ADOPTED, DEFERRED)}
        for d in self.decisions().values():
            c[d.action] = c.get(d.action, 0) + 1
        return c

    def plan_lines(self) -> list[str]:
        targets = self.load()
        c = self.counts()
        n = sum(c.values())
        todo = c[BUY] + c[BUILD]
        lines = [
            f"plan: {n} targets ({len(self.usable())} images x {len(self.augs)} augmentations), "
            f"{n - todo - c[DEFERRED] - c[BLOCKED]} already done, {todo} to generate; "
            f"provider {self.cfg['api']['provider']}, model {self.cfg['api']['model']}"
        ]
        new = c[BUY] - self._awaited  # not those in batches an earlier run submitted (paid then)
        if self.paid:
            unit = plan.unit_price(self.cfg, self.cost_per_call_seen() if new else None)
            how = " through the Gemini Batch API" if self.cfg["api"].get("mode") == "batch" else ""
            lines.append(
                f"plan: {new} answers to buy{how}, estimated ${new * unit:.2f} (${unit:.4f} each; more if retried)"
                + (f"; {self._awaited} more awaited from batches submitted earlier" if self._awaited else "")
            )
        regen = sorted(
            {
                d.why
                for d in self.decisions().values()
                if d.action == BUY and d.why.startswith(("regenerate", "qc.auto_regenerate"))
            }
        )
        for why in regen:
            k = sum(1 for d in self.decisions().values() if d.action == BUY and d.why == why)
            lines.append(
                f"plan: {why}: {k} outputs get a new answer (their old answers and outputs are kept until then)"
            )
        if c[BUILD]:
            lines.append(f"plan: {c[BUILD]} outputs built from answers already bought (0 calls)")
        over = sum(1 for d in self.decisions().values() if d.action == DEFERRED and d.why == plan.OVER_BUDGET)
        if over:
            key = self._budget_key
            value = self.cfg["api"][key.split(".")[1]]
            shown = f"{key}={value}" if key == "api.max_calls" else f"{key}=${float(value):.2f}"
            lines.append(
                f"plan: {over} answers left for the next run: {shown} lets this run buy {new}"
                if key != "api.max_total_cost_usd"
                else f"plan: {over} answers left: {shown} lets this output directory buy {new} more "
                "(raise it to buy the rest)"
            )
        held = sum(1 for d in self.decisions().values() if d.action == DEFERRED and d.why == plan.IN_BATCH)
        if held:
            lines.append(
                f"plan: {held} answers are not bought: open Gemini batches hold them (paid); run with "
                "api.mode: batch to collect them, or `snakemake cancel_batches` to give them up"
            )
        if c[BLOCKED]:
            lines.append(
                f"plan: {c[BLOCKED]} outputs blocked after api.max_total_attempts="
                f"{self.cfg['api']['max_total_attempts']} billed failed attempts (raise it to try again)"
            )
        if c[ADOPTED]:
            lines.append(f"plan: {c[ADOPTED]} outputs without answers (made by the original tool) are kept as they are")
        for t in targets:
            if t.problem:
                kind = "train.csv line" if t.problem.startswith(BAD_ID_PROBLEM) else "unusable source, train.csv line"
                lines.append(
                    f"plan: {kind} {t.row}, image {t.image_id}: {t.problem} (no job; failed rows in the manifest)"
                )
        return lines


def _listdir(path) -> list[str]:
    import os

    try:
        return os.listdir(path)
    except FileNotFoundError:
        return []


def settings_main(snakemake) -> None:
    """Entry point of rule ``settings``: the current settings of one kind, under their hash
    (the older file of that kind is removed, so going back to it makes it new again)."""
    from .jobs import job_main

    def work():
        from .fileio import atomic_write_text

        out = Path(snakemake.output[0])
        kind = snakemake.wildcards.kind
        pipe = Pipeline(snakemake.config)
        settings = config_mod.derive_settings(snakemake.config) if kind == "derive" else pipe.manifest_view()
        for old in out.parent.glob(f"{kind}-*.json"):
            if old != out:
                old.unlink(missing_ok=True)
        atomic_write_text(out, json.dumps(settings, sort_keys=True, indent=1, default=str))

    job_main(snakemake, work, name=f"settings {snakemake.wildcards.kind}")
