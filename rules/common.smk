# Config validation, paths, input functions and run hooks.
# All logic lives in the package scripts/nano_banana_aug/.
#
# Nothing here writes a file while the Snakefile is parsed: dry-runs,
# --summary, --lint, --unlock and runs that fail to get Snakemake's lock
# change nothing a live run uses. The run that holds the lock writes its
# private config, its owner record and its regeneration requests in
# `onstart` (start_run), before any job. The one exception is recovery after
# a hard kill (recovery.recover): it only removes what provably belongs to a
# dead run.

import os
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "scripts"))

from snakemake.utils import validate

from nano_banana_aug import config as cfgmod
from nano_banana_aug import (
    layout,
    manifest as manifest_mod,
    planning,
    recovery,
    regen,
    runlog,
    runs,
)
from nano_banana_aug.errors import UserError
from nano_banana_aug import targets as targets_mod
from nano_banana_aug.snakemake_patches import fast_pipe_input_lookup
from nano_banana_aug.targets import BAD_ID_PROBLEM, check_source, read_targets

RUN_START = time.time()
MAIN = workflow.is_main_process
# `snakemake --lint` only inspects the rules (Snakemake skips its own envvars check then):
# no key, no train.csv and no recovery needed
INSPECT_ONLY = not getattr(workflow, "check_envvars", True)
# new in the main process; inherited by cluster job steps
RUN_ID = runs.run_id_for(MAIN)
# Jobs run with the interpreter that runs Snakemake: one environment for the workflow
# and its jobs (no per-rule conda/container; README "Lint and formatting").
# Shell commands get it, their entry point and the run's config through params:, as
# pathlib.Path objects: Snakemake records no such value as a parameter, so a new
# run's config file (or a moved checkout or venv) is never a "changed parameter",
# whatever --rerun-triggers says.
PYTHON = Path(sys.executable)


def entry_point(name):
    """scripts/<name> of this checkout, for a rule's params."""
    return Path(workflow.basedir) / "scripts" / name


def logged(command):
    """`command` with its stderr also written to the job's log file. Its output still
    reaches the terminal as before (stdout as stdout, stderr as stderr), and the job
    ends when the command ends (a pipeline, not a background process)."""
    return f"exec 3>&1; {command} 2>&1 >&3 3>&- | tee {{log:q}} >&2"


def stop(message):
    """A user mistake: one line, no traceback, nothing has run yet."""
    print(f"ERROR: {message}", file=sys.stderr)
    sys.exit(1)


# ---- configuration: one clear line for a bad key, then defaults filled ----
try:
    cfgmod.coerce_command_line(config)
    cfgmod.check_config(config)
    validate(config, str(cfgmod.SCHEMA_PATH))
    cfgmod.finalise(config)
    if MAIN and not INSPECT_ONLY and cfgmod.is_paid(config):
        from nano_banana_aug.keys import check_base_url, load_api_key

        check_base_url(config["api"]["base_url"])
        # fails early naming the file/variable; the key is not kept
        load_api_key(config, Path.cwd())
except UserError as exc:
    stop(str(exc))

PAID = cfgmod.is_paid(config)
OUT = config["data"]["output_dir"].rstrip("/")
EXT = config["data"]["output_ext"]
DATA_ROOT = config["data"]["data_root"]
TRAIN_CSV = str(cfgmod.train_csv_path(config))
PIPE = layout.pipeline_dir(OUT)
LOG_DIR = PIPE / "logs"
# this run's effective config, written by start_run
RUN_CONFIG = str(runs.config_path(OUT, RUN_ID))
# new every run: what must run every time depends on it
RUN_MARK = str(runs.start_mark(OUT, RUN_ID))
BATCH = PAID and config["api"]["mode"] == "batch"
# the batch checkpoint's output
BATCH_OUTCOME = str(runs.run_dir(OUT, RUN_ID) / "batch_outcome.json")
TARGETS_CSV = str(layout.targets_table(OUT))
# Snakemake's --batch all_outputs=i/n (a very large data set in slices): it drops the
# jobs behind a checkpoint when it batches, so a batched run takes the targets table an
# earlier run made (checked at start) instead of depending on the checkpoint.
DAG_BATCH = targets_mod.dag_batch_arg(sys.argv) if MAIN else None
TARGETS_INPUT = [] if DAG_BATCH is not None else ancient(TARGETS_CSV)
# the aggregate over every output: new every run, so each --batch slice has one to make
ALL_OUTPUTS = str(runs.run_dir(OUT, RUN_ID) / "all_outputs.done")
TARGET_SETTINGS = {
    k: config["data"][k] for k in ("data_root", "train_csv", "primary_targets")
}
# a new file when they change
SETTINGS_JSON = str(layout.settings_file(OUT, TARGET_SETTINGS))
MANIFEST = f"{OUT}/{config['data']['manifest']}"
SUMMARY = f"{OUT}/report/summary.html"  # for snakemake --report
AUG_NAMES = [a["name"] for a in config["augmentations"]]
NUM_IMAGES = {a["name"]: int(a["num_images"]) for a in config["augmentations"]}

# Calls in flight are capped at api.concurrency by slot locks held only during
# each HTTP call (nano_banana_aug.slots), across all jobs and nodes. The `api`
# resource bounds how many paid jobs run (or sit queued on a cluster) at once:
# 2 x concurrency lets post-processing overlap other calls' waiting.
# Override with --resources api=N.
API_SLOTS_PER_JOB = 1 if PAID else 0
# worst case of one generate job: every attempt times out after the longest wait
_api = config["api"]
GENERATE_RUNTIME_MIN = 5 + int(
    (1 + int(config["qc"]["auto_regenerate"]))
    * _api["max_retries"]
    * (_api["timeout_s"] + _api["max_retry_wait_s"])
    / 60
)
API_RESOURCE_SET_BY_USER = "api" in workflow.global_resources
if not API_RESOURCE_SET_BY_USER:
    workflow.global_resources.update({"api": 2 * int(config["api"]["concurrency"])})


def cap_cluster_jobs():
    """On a cluster executor, at most api.concurrency paid jobs run at once: Snakemake on the
    submit host enforces it, whatever the shared filesystem's locks do (called while the DAG
    is built: the executor is known then, the scheduler not made yet)."""
    if PAID and not workflow.local_exec and not API_RESOURCE_SET_BY_USER:
        workflow.global_resources.update({"api": int(config["api"]["concurrency"])})


wildcard_constraints:
    image_id=r"(?:(?!__)[^/])+",
    aug="|".join(map(re.escape, AUG_NAMES)),
    k=r"\d+",


if MAIN and not INSPECT_ONLY:
    # Snakemake would delete a live run's locks when this invocation ends
    runs.keep_other_runs_locks()
    # Snakemake's job preparation is quadratic in a job's inputs (the aggregate over 10^5 outputs)
    fast_pipe_input_lookup()
    if not Path(TRAIN_CSV).is_file():
        stop(
            f"{TRAIN_CSV}: train.csv not found (data.data_root={DATA_ROOT!r}, data.train_csv={config['data']['train_csv']!r})"
        )
    try:  # after a hard kill: locks of a dead run, once its orphaned jobs are gone
        recovery.recover(
            OUT,
            orphan_wait_s=60 * GENERATE_RUNTIME_MIN,
            say=lambda m: print(m, file=sys.stderr),
        )
    except UserError as exc:
        stop(str(exc))
    if DAG_BATCH is not None:
        try:
            targets_mod.check_dag_batch(
                DAG_BATCH,
                TARGETS_CSV,
                TRAIN_CSV,
                SETTINGS_JSON,
                " ".join(
                    f"--configfile {layout.relative_to_root(c, os.getcwd())}"
                    for c in workflow.overwrite_configfiles
                ),
                api_batch=BATCH,
            )
        except UserError as exc:
            stop(str(exc))


# ---- what this run was asked to regenerate (read-only until start_run) ----
_state = {"started": False, "plan_lines": None}


def forced_stems():
    """Outputs named by -f / --forcerun FILE (Snakemake's own options)."""
    ds = workflow.dag_settings
    named = set(ds.forcerun or ()) | (
        set(ds.targets or ()) if ds.forcetargets else set()
    )
    out = os.path.abspath(OUT)
    stems = []
    for name in named:
        key = (
            layout.parse_stem(name)
            if os.path.dirname(os.path.abspath(name)) == out
            else None
        )
        if key is not None and str(name).endswith(f".{EXT}"):
            stems.append(layout.stem(*key))
    return stems


def active_requests():
    """The regeneration requests of this run: asked for now, resumed when still open (regen.py)."""
    if "requests" not in _state:
        ds = workflow.dag_settings
        rejected, stale = [], []
        if config["redo_rejected"] or "stale" in config["regenerate"]:
            records = manifest_mod.collect(OUT, DATA_ROOT)
            rejected = [
                layout.stem(r.image_id, r.aug_name, r.variant_idx)
                for r in records
                if r.status == "rejected"
            ]
            manifest_mod.mark_current(records, config)
            stale = [
                layout.stem(r.image_id, r.aug_name, r.variant_idx)
                for r in records
                if r.stale == "model/prompt" and r.status in ("success", "rejected")
            ]
        asked = regen.wanted(
            regenerate=[a for a in config["regenerate"] if a != "stale"],
            redo_rejected=config["redo_rejected"],
            rejected_stems=rejected,
            forceall=ds.forceall,
            forcerun=ds.forcerun,
            forced_stems=forced_stems(),
            stale_stems=stale if "stale" in config["regenerate"] else None,
        )
        _state["requests"] = regen.resolve(OUT, asked)
    return _state["requests"]


def run_intent():
    reqs = active_requests()
    return planning.RunIntent(
        paid=PAID,
        requests=reqs,
        done={r.id: regen.done_stems(OUT, r) for r in reqs if r.id},
        rederive=config["rederive"],
        retry_blocked=config["retry_blocked"],
        max_total_attempts=int(config["api"]["max_total_attempts"]),
    )


# ---- input functions ----
_targets_cache = {}


def load_targets():
    """The checkpoint's table, read once per Snakemake process (after the
    checkpoint has run, its output is final for this run)."""
    if "list" not in _targets_cache:
        if workflow.touch and not (
            Path(TARGETS_CSV).is_file() and Path(TARGETS_CSV).stat().st_size > 0
        ):
            stop(
                f"--touch only marks outputs that exist as up to date; {TARGETS_CSV} (checkpoint `targets`) "
                "was never made here: run the pipeline once without --touch first"
            )
        if DAG_BATCH is not None:
            path = TARGETS_CSV  # checked by check_dag_batch at start
        else:
            path = checkpoints.targets.get().output[0]
        targets = read_targets(path)
        _targets_cache.update(list=targets, by_id={t.image_id: t for t in targets})
    return _targets_cache


def selected_targets():
    targets = load_targets()["list"]
    limit = int(config["limit"])
    return targets[:limit] if limit > 0 else targets


_outputs = {}


def get_all_outputs(wildcards=None):
    """Every output of the selected images x augmentations x variants; decides and reports the plan (once)."""
    if "all" not in _outputs:
        targets = selected_targets()
        # an image id that cannot name a file gets no job (the checkpoint recorded failed rows for it)
        named = [t for t in targets if not t.problem.startswith(BAD_ID_PROBLEM)]
        # sources found unusable by the checkpoint are checked again (they may be fixed)
        for t in named:
            if t.problem:
                t.problem = check_source(DATA_ROOT, t.image_path, decode=True)[1]
        _outputs["all"] = [
            f"{OUT}/{t.image_id}__{aug}__v{k}.{EXT}"
            for t in named
            for aug in AUG_NAMES
            for k in range(NUM_IMAGES[aug])
        ]
        if MAIN:
            cap_cluster_jobs()
            plan, trigger = planning.survey(
                OUT, EXT, named, NUM_IMAGES, run_intent(), read_sidecar
            )
            _outputs.update(plan=plan, trigger=trigger)
            report_plan(plan, targets)
    return _outputs["all"]


def get_manifest_outputs(wildcards=None):
    """The outputs the manifest waits for; in batch mode after the batch checkpoint,
    without the targets whose batch is still running (collected by a later run)."""
    outputs = get_all_outputs(wildcards)
    if not BATCH:
        return outputs
    from nano_banana_aug.batch import read_outcome

    outcome = read_outcome(checkpoints.batch.get().output[0])
    pending = {s for s, o in outcome.items() if o.get("status") == "pending"}
    if not pending:
        return outputs
    return [
        p
        for p in outputs
        if Path(p).name.rsplit(".", 1)[0] not in pending or Path(p).exists()
    ]


def read_sidecar(stem):
    from nano_banana_aug import sidecar

    key = layout.parse_stem(stem)
    try:
        return sidecar.read(layout.sidecar_path(OUT, *key))
    except (OSError, ValueError, TypeError):
        return None


def get_generate_trigger(wildcards):
    """This run's start mark for outputs that exist but must be redone now (a regeneration
    request, rederive, a stored answer not used yet, a damaged file); Snakemake itself only
    runs missing outputs and those forced with -R / -f / -F."""
    if not MAIN:
        return []
    get_all_outputs()
    stem = layout.stem(wildcards.image_id, wildcards.aug, wildcards.k)
    if stem not in _outputs.get("trigger", ()):
        return []
    # an existing output whose new answer is still in a running batch: keep it for now
    if BATCH:
        from nano_banana_aug.batch import read_outcome

        if (
            read_outcome(checkpoints.batch.get().output[0]).get(stem, {}).get("status")
            == "pending"
        ):
            return []
    return [RUN_MARK]


# generate's trigger input: a function for paid providers (stored answers, damaged
# outputs) or when the config asks for regeneration; else nothing (faster planning)
GENERATE_TRIGGER = (
    get_generate_trigger
    if PAID or config["regenerate"] or config["redo_rejected"] or config["rederive"]
    else []
)


def get_final_targets(wildcards):
    """The manifest; with plan_only=true just the checkpoint (and the plan it prints).

    The run's start mark, which never exists before the run, makes Snakemake
    look at the whole DAG every time: it only looks for missing intermediate
    files (our outputs) below jobs that must run, and with `rerun-triggers:
    [mtime]` nothing else would make the manifest's job run."""
    if config["plan_only"]:
        get_all_outputs(wildcards)  # reports the plan
        return [TARGETS_CSV, RUN_MARK]
    return [MANIFEST, SUMMARY, RUN_MARK]


def report_plan(plan, targets):
    n = len(plan.actions)
    done = plan.count("done")
    # every job that will run: paid, rebuilt from the store, or failing without a call
    todo = n - done
    calls, free = plan.count("call"), plan.count("store", "rederive")
    waiting = 0
    if BATCH:  # already submitted by an earlier run: collected, not paid again
        from nano_banana_aug.batch import open_stems

        waiting = len(plan.stems("call") & open_stems(OUT))
        calls -= waiting
    regen_names = sorted(config["regenerate"])
    lines = [
        f"plan: {n} targets ({len(targets)} images x {len(AUG_NAMES)} augmentations), "
        f"{done} already done, {todo} to generate"
        + (f" (regenerating: {', '.join(regen_names)})" if regen_names else "")
        + f"; provider {config['api']['provider']}, model {config['api']['model']}",
    ]
    intent = run_intent()
    for r in intent.requests:
        scope = [
            s for s, d in plan.actions.items() if r.matches(s, layout.parse_stem(s)[1])
        ]
        if r.id:
            already = len(intent.done.get(r.id, set()) & set(scope))
            lines.append(
                f"plan: {r.what}: resuming the request of {time.strftime('%Y-%m-%d %H:%M', time.localtime(r.created))}"
                f" ({already} of {len(scope)} outputs already regenerated, not paid again)"
            )
        else:
            lines.append(
                f"plan: {r.what}: {len(scope)} outputs to regenerate (a new request)"
            )
    if PAID:
        unit = float(config["api"]["pricing"]["image_usd_per_call"])
        if BATCH:
            unit *= float(config["api"]["pricing"]["batch_factor"])
        est = calls * unit
        if calls and BATCH:
            lines.append(
                f"plan: {calls} paid answers through the Gemini Batch API, estimated ${est:.2f} "
                f"(${unit:.4f} each; ${calls * float(config['api']['pricing']['image_usd_per_call']):.2f} synchronously)"
            )
        elif calls:
            lines.append(
                f"plan: {calls} paid calls (more if retried), estimated ${est:.2f}"
            )
        if waiting:
            lines.append(
                f"plan: {waiting} answers awaited from batches submitted earlier (paid once, collected now)"
            )
        if free:
            lines.append(f"plan: {free} outputs built from stored answers (0 calls)")
        api = config["api"]
        if calls and (api["max_calls"] is not None or api["max_cost_usd"] is not None):
            limits = [
                f"max_calls={api['max_calls']}" if api["max_calls"] is not None else "",
                (
                    f"max_cost_usd=${api['max_cost_usd']:.2f}"
                    if api["max_cost_usd"] is not None
                    else ""
                ),
            ]
            lines.append(
                f"plan: budget of this run: {' '.join(x for x in limits if x)}; "
                "targets past it are recorded as over_budget and left for the next run"
            )
    stale = stale_counts()
    if stale.get("model/prompt") or stale.get("postprocess") or stale.get("orphaned"):
        lines.append(
            f"plan: outputs that differ from the config: {stale.get('model/prompt', 0)} made with another "
            f"provider/model/prompt (regenerate=stale pays for them), {stale.get('postprocess', 0)} only in "
            f"post-processing (rederive=true rebuilds them for free), {stale.get('orphaned', 0)} of "
            "augmentations or variants no longer in the config (orphaned: kept, never joined into training)"
        )
    blocked = plan.count("blocked")
    if blocked:
        lines.append(
            f"plan: {blocked} outputs blocked after api.max_total_attempts failed attempts, not retried "
            "(--config retry_blocked=true to try again)"
        )
    if config["plan_only"]:
        lines.append("plan: plan_only=true: nothing is generated")
    for t in targets:
        if t.problem.startswith(BAD_ID_PROBLEM):
            lines.append(
                f"plan: train.csv line {t.row}: {t.problem} (recorded as failed rows, no job)"
            )
    for t in sorted(
        {t.image_id: t for t in plan.problems.values()}.values(), key=lambda t: t.row
    ):
        lines.append(
            f"plan: unusable source, train.csv line {t.row}, image {t.image_id}: {t.problem}"
        )
    for line in lines:
        print(line, file=sys.stderr)
    if _state["started"]:
        runlog.message(config, "\n".join(lines))
    else:  # logged by start_run: only the run that holds the lock writes to augment.log
        _state["plan_lines"] = lines


# ---- start and end of a run (only the run that holds Snakemake's lock) ----
def start_run():
    """onstart: this run's private config, owner record and requests; legacy adoption."""
    # locks that do not hold where the jobs run: refuse before anything is paid
    if PAID:
        from nano_banana_aug import locks

        try:
            locks.probe(PIPE)
        except UserError as exc:
            stop(str(exc))
        reason = "" if workflow.local_exec else locks.node_local_reason(OUT)
        if reason:
            stop(
                f"{reason}: jobs on different nodes could not see each other's target locks and budget ledger "
                "and could pay twice. Put data.output_dir on a filesystem with cluster-wide locks, or run on one "
                "machine (the local executor)"
            )
    reqs = regen.save_new(OUT, active_requests(), RUN_ID, now=RUN_START)
    effective = {
        **config,
        "_run": {
            "id": RUN_ID,
            "started": RUN_START,
            "alive_lock": str(runs.alive_lock(OUT, RUN_ID)),
            "target_lock_timeout_s": 60 * GENERATE_RUNTIME_MIN,
            "requests": [vars(r) for r in reqs],
        },
    }
    runs.write_run_config(effective, RUN_CONFIG)
    lockfiles = getattr(workflow.persistence, "_lockfile", {}).values()
    runs.record_owner(RUN_ID, OUT, lockfiles)
    manifest_mod.adopt_legacy(
        OUT, DATA_ROOT, MANIFEST, qc_cfg=config["qc"], sources=legacy_sources()
    )
    recovery.remove_stale_temporaries([OUT, layout.sidecar_dir(OUT)])
    _state["started"] = True
    if _state["plan_lines"]:
        runlog.message(config, "\n".join(_state["plan_lines"]))


def legacy_sources():
    """image_id -> image_path of train.csv, for QC of adopted legacy outputs (only read when there are any)."""
    if not Path(MANIFEST).exists() and not any(
        p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp")
        for p in Path(OUT).glob("*__*__v*.*")
    ):
        return {}
    from nano_banana_aug.targets import read_train_csv

    try:
        df = read_train_csv(TRAIN_CSV)
    except UserError:
        return {}
    return dict(
        zip(df["sample_id"].astype(str).str.split("__").str[0], df["image_path"])
    )


def write_start_mark(path):
    Path(path).write_text(f"{RUN_ID} {RUN_START!r}\n")


def write_target_settings(path):
    import json

    Path(path).write_text(json.dumps(TARGET_SETTINGS, sort_keys=True) + "\n")


def finish_run(failed):
    """Rebuild the manifest when stale (always after failures), close finished requests, log a summary."""
    runs.forget_owner(RUN_ID)
    try:
        if failed or manifest_mod.is_stale(OUT, config["data"]["manifest"]):
            _, records = manifest_mod.build(
                OUT, DATA_ROOT, config["data"]["manifest"], cfg=config
            )
            rows = [r.to_row() for r in records]
        else:  # the manifest job just wrote it: read one file, not every sidecar again
            rows = manifest_mod.read_csv_rows(MANIFEST)
    except (OSError, UserError) as exc:
        print(f"ERROR: could not rebuild {MANIFEST}: {exc}", file=sys.stderr)
        return
    close_requests(rows)
    num = lambda v: float(v) if v not in (None, "") else 0.0
    this_run = [
        r for r in rows if num(r["ts"]) >= RUN_START and r["origin"] == "generated"
    ]
    counts, total = {}, {}
    for r in this_run:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    for r in rows:
        total[r["status"]] = total.get(r["status"], 0) + 1
    ok = counts.get("success", 0)
    summary = (
        f"summary: {ok} generated, {counts.get('rejected', 0)} rejected by QC,"
        f" {counts.get('failed', 0)} failed this run in {time.time() - RUN_START:.0f}s;"
        f" manifest {MANIFEST}: {len(rows)} rows"
        f" ({', '.join(f'{v} {k}' for k, v in sorted(total.items())) or 'empty'})"
    )
    if PAID:
        ledger = run_ledger()
        per = f"{ledger['calls'] / ok:.2f}" if ok else "n/a"
        reused = sum(1 for r in this_run if r.get("answer_source") == "store")
        if BATCH:
            summary += f"; {ledger['calls']} paid answers (Gemini Batch API; {per} per successful output)"
        else:
            summary += (
                f"; {ledger['calls']} calls made ({ledger.get('billable', 0)} billable answers,"
                f" {per} calls per successful output)"
            )
        summary += f", estimated ${ledger['cost_usd']:.2f}"
        if reused:
            summary += f"; {reused} built from stored answers (0 calls)"
    stop = api_stop()
    if stop:
        summary += f"; stopped dispatching calls: {stop.get('message', stop.get('reason', ''))}"
    if counts.get("over_budget"):
        summary += f"; {counts['over_budget']} not generated: budget reached (run again to continue)"
    if counts.get("blocked"):
        summary += f"; {counts['blocked']} blocked after repeated failures (--config retry_blocked=true to retry)"
    kept = sum(1 for r in rows if num(r.get("regen_error_ts")) >= RUN_START)
    if kept:
        summary += f"; {kept} regenerations not done, their old outputs kept (run the same command again to continue)"
    if failed and not stop:
        if counts.get("failed") or counts.get("blocked"):
            summary += "; failed targets are listed in the manifest (status failed); run the same command again to retry only them"
        else:
            summary += (
                "; some jobs did not finish; run the same command again to continue"
            )
    print(summary, file=sys.stderr)
    runlog.message(config, summary)


def stale_counts():
    """Rows of the current manifest that differ from this config (read from manifest.csv: one file)."""
    if not Path(MANIFEST).is_file():
        return {}
    try:
        rows = manifest_mod.read_csv_rows(MANIFEST)
    except (OSError, UserError, ValueError):
        return {}
    augs = {a["name"]: a for a in config["augmentations"]}
    keys = {n: cfgmod.generation_key(config, a) for n, a in augs.items()}
    counts = {}
    for r in rows:
        if r.get("status") not in ("success", "rejected", "orphaned"):
            continue
        aug = augs.get(r.get("aug_name"))
        try:
            k = int(r.get("variant_idx") or 0)
        except ValueError:
            k = 0
        if aug is None or k >= int(aug.get("num_images", 1)):
            what = "orphaned"
        else:
            what = cfgmod.staleness(r.get("generation_key", ""), keys[r["aug_name"]])
        if what:
            counts[what] = counts.get(what, 0) + 1
    return counts


def api_stop():
    """Why this run stopped dispatching calls (governor), or None."""
    from nano_banana_aug.governor import Governor

    return Governor(runs.run_dir(OUT, RUN_ID) / "api").stopped() if PAID else None


def run_ledger():
    from nano_banana_aug.budget import Ledger, LedgerUnreadable

    try:
        return Ledger(runs.run_dir(OUT, RUN_ID) / "ledger.json").read()
    except LedgerUnreadable:
        return {"calls": 0, "cost_usd": 0.0}


def close_requests(rows):
    """Requests of this run whose every target was regenerated once are finished."""
    reqs = [r for r in _state.get("requests") or () if r.id and r.finished is None]
    if not reqs or "list" not in _targets_cache:
        return
    stems = {
        layout.stem(t.image_id, a, k)
        for t in selected_targets()
        for a in AUG_NAMES
        for k in range(NUM_IMAGES[a])
    }
    by_stem = {
        layout.stem(r["image_id"], r["aug_name"], int(r["variant_idx"])): r
        for r in rows
    }
    excused = {
        s
        for s, r in by_stem.items()
        if r["status"] == "blocked" or r.get("error_reason") == "BAD_SOURCE"
    }
    for req in reqs:
        scope = {s for s in stems if req.matches(s, layout.parse_stem(s)[1])}
        regen.finish_if_complete(OUT, req, scope, excused)
