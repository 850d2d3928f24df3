"""The start and end of a real run (Snakemake's ``onstart`` / ``onsuccess`` / ``onerror``).

At the start the plan goes into ``augment.log``.  At the end, also after a
failed or interrupted run, the manifest and the summary page are current
(the rules that build them cannot run when a job failed, so the hook builds
them then), and one summary line says what this run bought and made, from
the answers and sidecars themselves.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from . import answers as answers_mod
from . import config as config_mod
from . import layout, runlog, runs

STARTED = time.time()


def on_start(cfg: dict) -> None:
    runs.prune_old(config_mod.output_dir(cfg))


def buy_problem(cfg: dict, pipe, local_exec: bool = True) -> str:
    """Why answers cannot be bought ("" = they can, or nothing is to be bought): said once, by
    the run, before its first job (the answer jobs check the key again where they run): no key,
    an endpoint that would get the key unencrypted, file locks that do not work in the output
    directory or (on a cluster) do not reach the other nodes."""
    from . import locks
    from .errors import UserError
    from .plan import BUY

    if not config_mod.is_paid(cfg) or not pipe.counts().get(BUY):
        return ""
    try:
        from .keys import check_base_url, load_api_key

        check_base_url(cfg["api"]["base_url"])
        load_api_key(cfg, Path.cwd())
        locks.probe(layout.pipeline_dir(config_mod.output_dir(cfg)))
    except UserError as exc:
        return str(exc)
    short = space_problem(cfg, pipe.counts().get(BUY, 0), pipe.counts().get("build", 0))
    if short:
        return short
    reason = "" if local_exec else locks.node_local_reason(config_mod.output_dir(cfg))
    if reason:
        return (
            f"{reason}: jobs on different nodes could not see each other's target locks, call slots and "
            "budget and could pay twice. Put data.output_dir on a filesystem with cluster-wide locks, or "
            "run on one machine"
        )
    return ""


def log_plan(cfg: dict, plan_lines) -> None:
    if plan_lines:
        runlog.message(cfg, "\n".join(plan_lines))


def _recent(directory, since: float):
    """Entries of ``directory`` changed since ``since``."""
    try:
        with os.scandir(directory) as it:
            return [e for e in it if e.stat().st_mtime >= since - 1]
    except FileNotFoundError:
        return []


def answers_stored_this_run(output_dir) -> list:
    """The answers stored since this run started (read from the answer directories changed since)."""
    found = []
    for entry in _recent(layout.answers_root(output_dir), STARTED):
        stem = entry.name
        for version, _ in answers_mod.versions(output_dir, stem):
            a = answers_mod.try_read(output_dir, stem, version)
            if a is not None and a.ts >= STARTED - 1 and a.status != answers_mod.UNUSABLE:
                found.append(a)
    return found


def bought_this_run(output_dir) -> list:
    """The answers this run paid for: each answer counts once, for the run that bought it (a batch
    answer for the run that submitted the batch, whichever run collected it)."""
    rid = runs.current()
    return [a for a in answers_stored_this_run(output_dir) if a.run_id == rid]


def made_this_run(output_dir) -> dict:
    """Statuses of the sidecars written by this run."""
    from . import sidecar

    counts: dict = {}
    for entry in _recent(layout.sidecar_dir(output_dir), STARTED):
        try:
            rec = sidecar.read(entry.path)
        except (OSError, ValueError, TypeError):
            continue
        if rec.ts >= STARTED - 1:
            counts[rec.status] = counts.get(rec.status, 0) + 1
    return counts


def batch_words(cfg: dict, pipe) -> str:
    """Batch mode: the answers still awaited from running batches, and the lines that failed."""
    from .batch_records import OPEN_STATES, open_stems

    from .batch_records import load_submissions

    out, rid, parts = config_mod.output_dir(cfg), runs.current(), []
    waiting = len(open_stems(out))
    if waiting:
        mine = [s for s in load_submissions(out) if s.state in OPEN_STATES and s.run_id == rid]
        paid = (
            f", {sum(len(s.keys) for s in mine)} of them submitted by this run: ${sum(s.reserved_usd for s in mine):.2f}"
            if mine
            else ""
        )
        parts.append(
            f"{waiting} answers awaited from running batches{paid} (run the same command again to collect them)"
        )
    earlier = [a for a in answers_stored_this_run(out) if a.source == "batch" and a.run_id != rid]
    if earlier:
        parts.append(
            f"{len(earlier)} answers collected from batches submitted earlier "
            f"(${sum(answers_mod.spent_usd(a) for a in earlier):.2f}, counted by the run that submitted them)"
        )
    failed: dict = {}
    for o in pipe.batch_outcome().values():
        if o.get("status") in ("failed", "over_budget"):
            failed[o.get("reason", "")] = failed.get(o.get("reason", ""), 0) + 1
    if failed:
        what = ", ".join(f"{n} {reason}" for reason, n in sorted(failed.items()))
        again = "sent synchronously" if cfg["api"]["batch"]["fallback"] == "sync" else "left for the next run's batch"
        parts.append(f"batch answers not received: {what} ({again})")
    return "; ".join(parts)


def summary_line(cfg: dict, failed: bool, pipe=None) -> str:
    from . import governor

    out = config_mod.output_dir(cfg)
    made = made_this_run(out)
    line = (
        f"summary: {made.get('success', 0)} generated, {made.get('rejected', 0)} rejected by QC, "
        f"{made.get('failed', 0)} failed in {time.time() - STARTED:.0f}s"
    )
    if config_mod.is_paid(cfg):
        t = answers_mod.totals(bought_this_run(out))
        line += (
            f"; {t['answers']} answers bought ({t['images']} with an image, {t['refused']} without; "
            f"{t['calls']} calls), ${t['cost_usd']:.2f}"
        )
        if pipe is not None and cfg["api"].get("mode") == "batch":
            words = batch_words(cfg, pipe)
            line += f"; {words}" if words else ""
        stop = governor.for_config(cfg).stopped()
        if stop:
            line += f"; stopped buying: {stop.get('message') or stop.get('reason', '')}"
    manifest = out / cfg["data"]["manifest"]
    if manifest.is_file():
        from .manifest import count_by_status, read_csv_rows

        rows = read_csv_rows(manifest)
        counts = count_by_status(rows)
        line += (
            f"; {manifest}: {sum(counts.values())} rows ({', '.join(f'{v} {k}' for k, v in sorted(counts.items()))})"
        )
        line += differ_words(rows, counts.get("orphaned", 0))
    if failed:
        line += (
            "; some jobs failed (each said why above; details in .pipeline/logs/): fix that, then run the same command"
        )
    return line


def differ_words(rows, orphaned: int) -> str:
    """The outputs that differ from the config, and what each kind costs to bring in line."""
    stale = sum(1 for r in rows if r.get("stale") == "model/prompt")
    if not stale and not orphaned:
        return ""
    return (
        f"; outputs that differ from the config: {stale} made with another provider/model/prompt "
        f"(kept, left out of training until regenerate=stale pays for new ones), {orphaned} of augmentations or variants no longer in the config "
        "(orphaned: kept, never joined into training)"
    )


#: what one answer and one output take when the directory has none yet to measure (a 2K PNG, generous)
ANSWER_BYTES_GUESS = 8_000_000


def typical_answer_bytes(output_dir, sample: int = 50) -> int:
    """The median size of the answer images already in the directory (a guess when there are none)."""
    import statistics

    sizes = []
    for stem in answers_mod.stems(output_dir)[:sample]:
        for entry in os.scandir(layout.answer_dir(output_dir, stem)):
            if not entry.name.endswith((".json", ".lock")) and not entry.name.startswith("."):
                sizes.append(entry.stat().st_size)
    return int(statistics.median(sizes)) if sizes else ANSWER_BYTES_GUESS


def space_problem(cfg: dict, to_buy: int, to_build: int, free_bytes: int | None = None) -> str:
    """Why the output filesystem cannot hold what this run writes ("" = it can): each bought answer
    is stored and becomes an output of about its size; each rebuild writes one output."""
    import shutil

    out = config_mod.output_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    per = typical_answer_bytes(out)
    needed = int((2 * to_buy + to_build) * per * 1.1) + 100_000_000
    free = shutil.disk_usage(out).free if free_bytes is None else free_bytes
    if free >= needed:
        return ""
    return (
        f"{out} has {free / 1e9:.1f} GB free; this run writes about {needed / 1e9:.1f} GB ({to_buy} answers "
        f"and their outputs, {to_build} rebuilt outputs, ~{per / 1e6:.1f} MB each): free some space, or buy "
        "fewer answers per run (limit, api.max_calls)"
    )


def on_end(cfg: dict, pipe, failed: bool) -> None:
    """Manifest and summary current (rebuilt here after a failure), then the summary line."""
    out = config_mod.output_dir(cfg)
    if failed:
        try:
            from . import manifest, report

            path = manifest.rebuild(cfg, pipe.load() if Path(pipe.table).is_file() else [])
            report.build(cfg, path, out / "report" / "summary.html")
        except Exception as exc:  # never hide the run's own error behind this one
            print(f"note: could not rebuild the manifest after the failure: {exc}", file=sys.stderr)
    line = summary_line(cfg, failed, pipe)
    print(line, file=sys.stderr)
    runlog.message(cfg, line)
