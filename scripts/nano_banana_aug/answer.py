"""Rule ``answer``: buy answer version n of one target (the only step that costs money).

Under the target's lock (``answers/<stem>/.lock``), in this order:

1. the answer exists already: nothing to do, nothing paid (a second run
   after ``--unlock``, an orphaned job of a killed run, ``--forcerun``);
2. the source is read and fully decoded: an unreadable one is recorded as an
   ``unusable`` answer and nothing is sent;
3. the request is made (:class:`nano_banana_aug.paying.Buyer`: the run's
   stop, cool-down and rate limit, the budget, a call slot) with up to
   ``api.max_retries`` attempts; what came back is stored right away
   (:func:`nano_banana_aug.answers.write`): an image, or the refusal with
   every attempt's usage and cost.

Every per-target outcome is an answer and the job succeeds: rule
``generate`` turns it into the output or a ``failed`` row.  The job fails
(and with it the run: Snakemake starts no further job) only when buying must
stop: the key is refused, the account has no credits, a daily quota ran
out, the budget is used up, the call slots are stuck, the disk is full.
Once its answer is stored the job succeeds whatever happens after (an error,
Snakemake's SIGTERM, Ctrl-C): Snakemake would remove a failed job's answer,
and the next run would buy it again. A stop that comes once a paid answer
has begun to arrive (a 200's headers) waits until that answer is stored; no
attempt is made after it.
"""

from __future__ import annotations

import os
import sys

from . import answers as answers_mod
from . import config as config_mod
from . import jobs, layout, locks, runlog
from .answers import Answer
from .batch_records import open_stems
from .errors import UserError
from .paying import (
    Buyer,
    RunStopped,
    UnusableSource,
    build_request,
    fingerprint,
    read_source,
    source_of,
    source_request,
)
from .targets import find_target


class StopBuying(UserError):
    """This run buys no more answers (the reason is said once)."""


def lock_timeout_s(cfg: dict) -> float:
    """How long a job waits for another process working on the same target: its whole budget of attempts."""
    api = cfg["api"]
    return (
        60
        + int(api["max_retries"]) * (float(api["timeout_s"]) + float(api["max_retry_wait_s"]))
        + 2 * float(api["timeout_s"])
    )


def run(cfg: dict, stem: str, version: int, targets_table) -> Answer | None:
    """Buy answer ``version`` of ``stem`` unless it exists; the stored answer (None if it was there)."""
    out = config_mod.output_dir(cfg)
    path = layout.answer_path(out, stem, version)
    if path.exists():
        return None
    image_id, aug_name, k = layout.parse_stem(stem)
    aug = config_mod.augmentation(cfg, aug_name)
    target = find_target(targets_table, image_id)
    if target is None:
        raise UserError(f"image {image_id} is not in {targets_table} (not in train.csv, or lacks a primary target)")
    buyer = Buyer(cfg, say=lambda m: runlog.message(cfg, m))  # the job's own line says it on the terminal
    if buyer.governor is not None:
        stopped = buyer.governor.stopped()
        if stopped:
            raise StopBuying(f"not bought: the run stopped buying ({stopped.get('reason', '')})")
    lock = layout.answer_dir(out, stem) / ".lock"
    with locks.exclusive(
        lock,
        timeout_s=lock_timeout_s(cfg),
        what=f"target {stem}",
        on_wait=lambda: runlog.event(cfg, "waiting", stem, why="another process buys its answer"),
    ):
        if path.exists():  # bought meanwhile by the process we waited for
            runlog.event(cfg, "checked", stem, answer=f"v{version}", result="bought by another process")
            return None
        if stem in open_stems(out):  # submitted in a batch since the plan was made (another run)
            raise StopBuying(f"not bought: an open Gemini batch holds {stem}; api.mode: batch collects it")
        where = f"train.csv line {target.row}, image {image_id}"
        try:
            source_bytes, source_image = read_source(
                source_of(cfg, target), cfg["data"]["data_root"], int(cfg["postprocess"]["max_pixels"]), where
            )
        except UnusableSource as exc:
            answer = Answer(
                stem=stem,
                version=version,
                status=answers_mod.UNUSABLE,
                reason="BAD_SOURCE",
                message=str(exc)[:500],
                source="none",
            )
            runlog.event(cfg, "unusable", stem, error=str(exc)[:300])
            return answers_mod.write(out, answer)
        check_space(out)
        send, region = source_request(cfg, source_bytes, source_image)
        fp, key = fingerprint(cfg, aug, source_bytes, region)
        request = build_request(cfg, aug, target, send, region, k)
        runlog.event(
            cfg, "started", stem, answer=f"v{version}", provider=cfg["api"]["provider"], model=cfg["api"]["model"]
        )
        with jobs.stops_held() as hold:  # from the first paid answer's headers until it is stored

            def answer_arrives():
                hold()
                print(
                    f"{stem} v{version}: HTTP 200, the paid answer arrives; a stop waits until it is stored",
                    file=sys.stderr,
                    flush=True,
                )  # the job's log

            buyer.provider.on_200 = answer_arrives
            try:
                purchase = buyer.buy(
                    request,
                    stem=stem,
                    version=version,
                    fp=fp,
                    key=key,
                    max_pixels=int(cfg["postprocess"]["max_pixels"]),
                    billed_left=billed_left(cfg, out, stem),
                )
            except RunStopped as exc:
                runlog.event(cfg, "stopped", stem, reason=exc.reason, error=exc.message[:300])
                if exc.purchase is None:
                    raise StopBuying(f"not bought: {exc.message}") from None
                # what was billed before the stop is kept and counted: the job ends with its answer (a
                # failed job's outputs are removed by Snakemake); the stop holds for every other job
                kept = store(out, exc.purchase)
                runlog.event(cfg, kept.status, stem, answer=kept.answer_id, calls=kept.calls, reason=kept.reason)
                said = f"stopped buying: {exc.message} (the billed {kept.reason} answer of {stem} is kept)"
                runlog.message(cfg, said)
                print(said, file=sys.stderr)
                return kept
            answer = store(out, purchase)
        runlog.event(
            cfg,
            "answer" if answer.has_image else answer.status,
            stem,
            answer=answer.answer_id,
            calls=answer.calls,
            reason=answer.reason or None,
            secs=answer.api_seconds,
            error=answer.message[:300] or None,
        )
        return answer


def billed_left(cfg: dict, out, stem: str) -> int | None:
    """Billed failed attempts ``api.max_total_attempts`` leaves the target (None: no cap, the
    run retries blocked outputs)."""
    if (cfg.get("_asked") or {}).get("retry_blocked"):
        return None
    failed = answers_mod.failed_attempts(answers_mod.versions(out, stem), lambda v: answers_mod.try_read(out, stem, v))
    return max(0, int(cfg["api"]["max_total_attempts"]) - failed)


#: below this much free space no answer is bought (the run checked at its start that it has room)
MIN_FREE_BYTES = 100_000_000


def check_space(output_dir) -> None:
    import shutil

    free = shutil.disk_usage(output_dir).free
    if free < MIN_FREE_BYTES:
        raise StopBuying(f"not bought: {output_dir} has only {free / 1e6:.0f} MB free; free some space first")


#: how long a paid answer waits in memory for disk space to be stored
DISK_FULL_WAIT_S = 900.0


def store(output_dir, purchase, wait_s: float | None = None, pause_s: float = 5.0, say=None) -> Answer:
    """Write a paid answer; on a full disk keep it in memory and try again (every ``pause_s``, up to
    ``wait_s``), saying once what is waiting, so a paid answer is not lost to ENOSPC."""
    import errno
    import time

    wait_s = DISK_FULL_WAIT_S if wait_s is None else wait_s
    say = say or (lambda m: print(m, file=sys.__stderr__, flush=True))
    deadline, said = time.monotonic() + wait_s, False
    while True:
        try:
            with jobs.stops_deferred():  # a stop while the answer is written lands once it is stored
                return answers_mod.write(output_dir, purchase.answer, purchase.data)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT) or time.monotonic() >= deadline:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise StopBuying(
                        f"the disk is full: the paid answer v{purchase.answer.version} of "
                        f"{purchase.answer.stem} could not be stored within {wait_s:.0f} s"
                    ) from None
                raise
            if not said:
                say(
                    f"answer {purchase.answer.stem} v{purchase.answer.version}: the disk is full; the paid answer "
                    f"waits in memory up to {wait_s / 60:.0f} min for free space in {output_dir}"
                )
                said = True
            time.sleep(pause_s)


def main(snakemake) -> None:
    """Entry point of rule ``answer`` (``script:``)."""
    w = snakemake.wildcards
    stem = layout.stem(w.image_id, w.aug, int(w.k))
    from .pipeline import Pipeline

    table = Pipeline(snakemake.config).table
    jobs.job_main(
        snakemake,
        lambda: run(snakemake.config, stem, int(w.version), table),
        name=f"answer {stem} v{w.version}",
        done=lambda: os.path.exists(snakemake.output[0]),  # paid and stored: never removed by a failure after
    )
