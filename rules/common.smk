# Config validation, paths, input functions and end-of-run hooks.
# All logic lives in the package scripts/nano_banana_aug/.

import os
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "scripts"))

from snakemake.utils import validate

from nano_banana_aug import config as cfgmod
from nano_banana_aug import layout, manifest as manifest_mod, recovery, runlog
from nano_banana_aug.errors import UserError
from nano_banana_aug.targets import check_source, read_targets

RUN_START = time.time()
MAIN = workflow.is_main_process


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
    if MAIN and cfgmod.is_paid(config):
        from nano_banana_aug.keys import check_base_url, load_api_key

        check_base_url(config["api"]["base_url"])
        load_api_key(config, Path.cwd())  # fails early naming the file/variable; the key is not kept
except UserError as exc:
    stop(str(exc))

OUT = config["data"]["output_dir"].rstrip("/")
EXT = config["data"]["output_ext"]
DATA_ROOT = config["data"]["data_root"]
TRAIN_CSV = str(cfgmod.train_csv_path(config))
PIPE = layout.pipeline_dir(OUT)
LOG_DIR = PIPE / "logs"
CONFIG_JSON = str(layout.effective_config(OUT))
TARGET_SETTINGS = str(PIPE / "target_settings.json")
TARGETS_CSV = str(layout.targets_table(OUT))
RUN_STAMP = str(PIPE / "run.stamp")
MANIFEST = f"{OUT}/{config['data']['manifest']}"
AUG_NAMES = [a["name"] for a in config["augmentations"]]
NUM_IMAGES = {a["name"]: int(a["num_images"]) for a in config["augmentations"]}

# Calls in flight are capped at api.concurrency by slot locks held only during
# each HTTP call (nano_banana_aug.slots), across all jobs and nodes. The `api`
# resource bounds how many paid jobs run (or sit queued on a cluster) at once:
# 2 x concurrency lets post-processing overlap other calls' waiting.
# Override with --resources api=N.
API_SLOTS_PER_JOB = 1 if cfgmod.is_paid(config) else 0
# worst case of one generate job: every attempt times out after the longest wait
_api = config["api"]
GENERATE_RUNTIME_MIN = 5 + int(
    (1 + int(config["qc"]["auto_regenerate"])) * _api["max_retries"] * (_api["timeout_s"] + _api["max_retry_wait_s"]) / 60
)
if "api" not in workflow.global_resources:
    workflow.global_resources.update({"api": 2 * int(config["api"]["concurrency"])})

wildcard_constraints:
    image_id=r"(?:(?!__)[^/])+",
    aug="|".join(map(re.escape, AUG_NAMES)),
    k=r"\d+",


def regenerate_stamp(aug):
    return str(PIPE / "regenerate" / f"{aug}.stamp")


if MAIN:
    if not Path(TRAIN_CSV).is_file():
        stop(f"{TRAIN_CSV}: train.csv not found (data.data_root={DATA_ROOT!r}, data.train_csv={config['data']['train_csv']!r})")
    # the run's identity (budget ledger) travels with the effective config
    cfgmod.write_effective_config({**config, "_run": {"id": f"{int(RUN_START)}-{os.getpid()}"}}, CONFIG_JSON)
    cfgmod.write_effective_config(
        {k: config["data"][k] for k in ("data_root", "train_csv", "primary_targets")}, TARGET_SETTINGS
    )
    # After a hard kill: remove locks of a dead run, keep finished outputs.
    if not workflow.dryrun:
        if recovery.clear_stale_locks():
            print("note: removed the locks of an earlier run that was killed", file=sys.stderr)
        recovery.record_owner()
        settled = recovery.settle_incomplete(".", lambda p: recovery.output_is_done(p, OUT))
        if settled:
            print(f"note: {len(settled)} output(s) finished after an interruption are kept", file=sys.stderr)
        recovery.remove_stale_temporaries([OUT, layout.sidecar_dir(OUT)])
    # Adopt a legacy manifest before any rule can replace it.
    manifest_mod.adopt_legacy(OUT, DATA_ROOT, MANIFEST)
    # The manifest is rebuilt by every run: its `run` stamp is always newer.
    # (Without this Snakemake would not even schedule the missing outputs of
    # an existing manifest, e.g. after `limit` was raised or a job failed, nor
    # re-read an edited train.csv through checkpoint `targets`.)
    # (Its content changes too: Snakemake ignores a newer mtime of a small
    # input whose checksum is unchanged.)
    Path(RUN_STAMP).parent.mkdir(parents=True, exist_ok=True)
    Path(RUN_STAMP).write_text(f"{RUN_START!r} {os.getpid()}\n")
    # Regeneration stamps: an input of every generate job, dated 1970 unless
    # this run regenerates the augmentation (then dated now: outputs are older).
    for aug in AUG_NAMES:
        stamp = Path(regenerate_stamp(aug))
        stamp.parent.mkdir(parents=True, exist_ok=True)
        if aug in config["regenerate"]:
            stamp.write_text(f"regenerate {aug} {RUN_START!r}\n")  # new content and mtime: outputs are older
        else:
            stamp.touch()
            os.utime(stamp, (0, 0))


# ---- input functions ----
_targets_cache = {}


def load_targets():
    """The checkpoint's table, read once per Snakemake process (after the
    checkpoint has run, its output is final for this run)."""
    if "list" not in _targets_cache:
        path = checkpoints.targets.get().output[0]
        targets = read_targets(path)
        _targets_cache.update(list=targets, by_id={t.image_id: t for t in targets})
    return _targets_cache


def selected_targets():
    targets = load_targets()["list"]
    limit = int(config["limit"])
    return targets[:limit] if limit > 0 else targets


_rejected = {}


def rejected_stems():
    """Stems the QC gate rejected (read from the sidecars once, only with redo_rejected)."""
    if "stems" not in _rejected:
        records = manifest_mod.collect(OUT, DATA_ROOT) if config["redo_rejected"] else []
        _rejected["stems"] = {layout.stem(r.image_id, r.aug_name, r.variant_idx) for r in records if r.status == "rejected"}
    return _rejected["stems"]


def get_redo_stamp(wildcards):
    """With redo_rejected=true: this run's stamp for an output the QC gate rejected."""
    if config["redo_rejected"] and f"{wildcards.image_id}__{wildcards.aug}__v{wildcards.k}" in rejected_stems():
        return [RUN_STAMP]
    return []


# generate's inputs: a plain pattern unless redo_rejected needs a function per job
REGENERATE_STAMP = str(PIPE / "regenerate") + "/{aug}.stamp"
REDO_STAMP = get_redo_stamp if config["redo_rejected"] else []


def get_all_outputs(wildcards):
    """Every output of the selected images x augmentations x variants (built once)."""
    if "all" not in _outputs:
        _outputs["all"] = [
            f"{OUT}/{t.image_id}__{aug}__v{k}.{EXT}"
            for t in selected_targets()
            for aug in AUG_NAMES
            for k in range(NUM_IMAGES[aug])
        ]
        if MAIN:
            report_plan(_outputs["all"])
    return _outputs["all"]


_outputs = {}


def get_final_targets(wildcards):
    """The manifest; with plan_only=true just the checkpoint (and the plan it prints)."""
    if config["plan_only"]:
        get_all_outputs(wildcards)  # reports the plan
        return [TARGETS_CSV]
    return [MANIFEST]


def report_plan(outputs):
    regen = set(config["regenerate"])
    done = sum(1 for o in outputs if os.path.exists(o) and layout.parse_stem(o)[1] not in regen)
    todo = len(outputs) - done
    # sources found unusable by the checkpoint, checked again (they may have been fixed since)
    bad = [t for t in selected_targets() if t.problem and check_source(DATA_ROOT, t.image_path)[1]]
    lines = [
        f"plan: {len(outputs)} targets ({len(selected_targets())} images x {len(AUG_NAMES)} augmentations), "
        f"{done} already done, {todo} to generate"
        + (f" (regenerating: {', '.join(sorted(regen))})" if regen else "")
        + f"; provider {config['api']['provider']}, model {config['api']['model']}",
    ]
    if cfgmod.is_paid(config) and todo:
        est = todo * float(config["api"]["pricing"]["image_usd_per_call"])
        lines.append(f"plan: {todo} paid calls (more if retried), estimated ${est:.2f}")
        api = config["api"]
        if api["max_calls"] is not None or api["max_cost_usd"] is not None:
            limits = [f"max_calls={api['max_calls']}" if api["max_calls"] is not None else "",
                      f"max_cost_usd=${api['max_cost_usd']:.2f}" if api["max_cost_usd"] is not None else ""]
            lines.append(f"plan: budget of this run: {' '.join(x for x in limits if x)}; "
                         "targets past it are recorded as over_budget and left for the next run")
    if config["plan_only"]:
        lines.append("plan: plan_only=true: nothing is generated")
    for t in bad:
        lines.append(f"plan: unusable source, train.csv line {t.row}, image {t.image_id}: {t.problem}")
    for line in lines:
        print(line, file=sys.stderr)
    if not workflow.dryrun:
        runlog.message(config, "\n".join(lines))


# ---- end of run ----
def finish_run(failed):
    """Rebuild the manifest when stale (always after failures) and log a summary."""
    try:
        if failed or manifest_mod.is_stale(OUT, config["data"]["manifest"]):
            _, records = manifest_mod.build(OUT, DATA_ROOT, config["data"]["manifest"])
            rows = [r.to_row() for r in records]
        else:  # the manifest job just wrote it: read one file, not every sidecar again
            rows = manifest_mod.read_csv_rows(MANIFEST)
    except (OSError, UserError) as exc:
        print(f"ERROR: could not rebuild {MANIFEST}: {exc}", file=sys.stderr)
        return
    num = lambda v: float(v) if v not in (None, "") else 0.0
    this_run = [r for r in rows if num(r["ts"]) >= RUN_START and r["origin"] == "generated"]
    counts, total = {}, {}
    for r in this_run:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    for r in rows:
        total[r["status"]] = total.get(r["status"], 0) + 1
    paid = int(sum(num(r["attempts"]) for r in this_run)) if cfgmod.is_paid(config) else 0
    cost = sum(num(r["est_cost_usd"]) for r in this_run)
    ok = counts.get("success", 0)
    summary = (
        f"summary: {counts.get('success', 0)} generated, {counts.get('rejected', 0)} rejected by QC,"
        f" {counts.get('failed', 0)} failed this run in {time.time() - RUN_START:.0f}s;"
        f" manifest {MANIFEST}: {len(rows)} rows"
        f" ({', '.join(f'{v} {k}' for k, v in sorted(total.items())) or 'empty'})"
    )
    if cfgmod.is_paid(config):
        per = f"{paid / ok:.2f}" if ok else "n/a"
        summary += f"; {paid} paid calls ({per} per successful output), estimated ${cost:.2f}"
    if counts.get("over_budget"):
        summary += f"; {counts['over_budget']} not generated: budget reached (run again to continue)"
    if failed:
        summary += "; failed targets are listed in the manifest (status failed); run the same command again to retry only them"
    print(summary, file=sys.stderr)
    runlog.message(config, summary)
