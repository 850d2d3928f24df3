# Configuration, paths, input functions and run hooks; the logic is in the
# package scripts/nano_banana_aug/ (pipeline.py decides which answer each
# output is built from). Nothing here writes a file while the workflow is
# read: dry-runs, --summary, --lint and --unlock change nothing.

import gc
import os
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "scripts"))

from snakemake.utils import validate

from nano_banana_aug import config as cfgmod
from nano_banana_aug import hooks, layout, runs
from nano_banana_aug.errors import UserError
from nano_banana_aug.pipeline import Pipeline

try:  # notes (old keys, settings that do nothing) once, by the process that plans
    cfgmod.prepare(
        config, validate, say=None if workflow.is_main_process else (lambda m: None)
    )
except UserError as exc:
    raise SystemExit(f"ERROR: {exc}")

# Snakemake's DAG holds millions of long-lived objects at 10^4-10^5 targets, and at CPython's
# default thresholds (700, 10, 10) the collector keeps rescanning them (a no-op at 10^4
# targets: 14 full collections, 2.2 s of 12 s). Collecting young objects every 10^5
# allocations instead: no-op -19 %, planning -10 %, same peak memory (bench/RESULTS.md, Scale).
gc.set_threshold(100_000, 10, 10)

RUN_ID = runs.ensure_run_id()  # new per invocation, passed to cluster jobs


envvars:
    runs.ENV,


PIPE = Pipeline(config)
ASKED = config["_asked"]
if (
    workflow.is_main_process
    and not ASKED.get("plan")
    and not os.path.exists(PIPE.table)
):
    print(
        "note: no targets table for these data settings and train.csv yet: it is made first, and "
        "a dry-run (-n) cannot list the answers to buy before it is there; `snakemake plan` makes "
        "it and prints the plan (nothing is paid)",
        file=sys.stderr,
    )
OUT = PIPE.out
EXT = PIPE.ext
LOGS = layout.log_dir(OUT)
BATCH = config["api"]["mode"] == "batch" and cfgmod.is_paid(config)
MANIFEST = f"{OUT}/{config['data']['manifest']}"
SUMMARY = f"{OUT}/report/summary.html"
REVIEW = f"{OUT}/review.json"
STEM = "{image_id}__{aug}__v{k}"


wildcard_constraints:
    image_id=r"(?:(?!__)[^/])+",
    aug="|".join(map(re.escape, PIPE.augs)),
    k=r"\d+",
    version=r"\d+",
    shard=r"\d\d",
    part_key=r"[0-9a-f]+",


# Answer jobs in flight: the `api` resource (2 x api.concurrency unless given with
# --resources api=N) bounds how many run or wait in a cluster queue; the call slots
# cap the requests in flight at api.concurrency.
if "api" not in workflow.global_resources:
    workflow.global_resources.update({"api": 2 * int(config["api"]["concurrency"])})


def answer_runtime_min():
    """Minutes an answer job may take (cluster schedulers): every attempt timing out after the
    longest wait, a wait for a call slot, and the rate limit's queue."""
    api = config["api"]
    calls = api["max_retries"] * (api["timeout_s"] + api["max_retry_wait_s"])
    slot_wait = 2 * api["timeout_s"] + 60
    queue = 60 * 2 * api["concurrency"] / (api["max_requests_per_minute"] or 1e9)
    return 5 + int((calls + slot_wait + queue) / 60)


# ---- input functions
def targets_table(wildcards=None):
    """The checkpoint's table (made first when it is not there)."""
    return checkpoints.targets.get().output[0]


def shard_outputs(wildcards):
    planned()
    return PIPE.shard_outputs(int(wildcards.shard))


def manifest_parts(wildcards=None):
    planned()
    return PIPE.parts()


def planned():
    """The targets table read, the plan made and reported; in batch mode, after the batch
    checkpoint bought this run's answers."""
    table = targets_table()
    try:
        PIPE.load(table)
        report_plan()  # the decisions read answers, sidecars and review.json
    except UserError as exc:
        raise SystemExit(f"ERROR: {exc}")
    key = PIPE.batch_key() if BATCH else None
    if key:
        from nano_banana_aug.batch_records import read_outcome

        PIPE.after_batch(read_outcome(checkpoints.batch.get(key=key).output[0]))


def answer_of(wildcards):
    """The answer an output is built from (rule answer makes it when it is not there)."""
    stem = layout.stem(wildcards.image_id, wildcards.aug, wildcards.k)
    try:
        return PIPE.answer_for(stem, wildcards.aug)
    except ValueError as exc:
        raise SystemExit(f"ERROR: {exc}")


def review_decisions(wildcards=None):
    """review.json when a person has reviewed outputs: a newer one rewrites the manifest."""
    return [REVIEW] if os.path.exists(REVIEW) else []


def settings_files(wildcards):
    """The settings every output and the manifest wait for. Asked for apart from the outputs
    (no checkpoint in the way), they are made at the start beside the targets table, before
    any answer job exists to compete for a job place (among many ready jobs the scheduler only
    looks at a sample of them, whatever their priority)."""
    if ASKED.get("plan") or ASKED.get("cancel_batches"):
        return []
    return [PIPE.derive_settings, PIPE.manifest_settings]


def get_final_targets(wildcards):
    """The manifest and the summary; the targets table and the manifest's parts themselves, so
    that a new table (other data settings, another train.csv) or a part that is missing (its
    shard did not finish) is made although an older manifest exists."""
    if ASKED.get("plan"):
        return plan_target()
    if ASKED.get("cancel_batches"):
        return [str(layout.run_dir(OUT, RUN_ID) / "batches_cancelled")]
    return [PIPE.table, *manifest_parts(), MANIFEST, SUMMARY]


def plan_target(wildcards=None):
    """`snakemake plan`: the targets table and the plan line; nothing else runs."""
    PIPE.load(targets_table())
    report_plan()
    return [PIPE.table]


_planned = []
_started = []


def report_plan():
    """The plan, printed once per invocation by the process that plans (not by cluster jobs),
    and logged when the run really executes (after the checkpoint, or at its start)."""
    if _planned or not workflow.is_main_process:
        return
    _planned.extend(PIPE.plan_lines())
    print("\n".join(_planned), file=sys.stderr)
    if _started:
        started_with_plan()


def started_with_plan():
    """A real run that knows its plan: logged; the key checked once if answers are to be bought."""
    hooks.log_plan(config, _planned)
    problem = hooks.buy_problem(config, PIPE, local_exec=workflow.local_exec)
    if problem:
        print(f"ERROR: {problem}", file=sys.stderr)
        raise SystemExit(1)


# ---- run hooks (real runs only; never on a dry-run)
def on_start():
    _started.append(True)
    hooks.on_start(config)
    if _planned:
        started_with_plan()


def on_end(failed):
    hooks.on_end(config, PIPE, failed=failed)
