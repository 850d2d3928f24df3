"""Batch mode (``api.mode: batch``): the targets that need a paid answer go to
the Gemini Batch API at half price; the answers land in the answer store and
each output is then made by its own ``generate`` job with no call.

One job per run does all of this (the ``batch`` checkpoint, a local rule: on
SLURM it runs on the submit host).  Every batch has a *submission record*
under ``{output_dir}/.pipeline/batches/``, written before anything is paid::

    <display name>.json    keys (stem -> request fingerprint), the JSONL file,
                           the uploaded file name, the batch name, the state
    <display name>.jsonl   the requests (kept until the batch exists)

A batch is never created twice for the same targets: creation is not
idempotent and ``display_name`` is neither unique nor filterable, so

1. the record (unique display name, keys) is written before the upload,
2. ``state: creating`` is written right before the create call, and the batch
   name the moment it is known,
3. every later run polls recorded batches instead of resubmitting, and a
   record left in ``creating`` (killed between create and write, or the
   create answer lost) is resolved by listing every page of batches and
   matching the display name before anything is created,
4. targets in an open record are never submitted again, and one batch job
   per directory works at a time (``.pipeline/batches/.lock``).

Results are streamed to disk and each line becomes the answer file the
synchronous ``answer`` rule would have written (:mod:`nano_banana_aug.answers`,
``source: batch``, the submitting run's id and the batch price): the plan,
the outputs, the cost and the counts then come from the answer files alone,
so a run that collects a batch another run submitted does not count it
again.  Failed lines and ``FAILED`` / ``CANCELLED`` / ``EXPIRED`` batches
leave their targets without an answer: the checkpoint's outcome file says
why, the run says so at its end, and the next run resubmits only them (or,
with ``api.batch.fallback: sync``, rule ``answer`` buys them now).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from . import answers as answers_mod
from . import config as config_mod
from . import imaging, layout, locks, paying, runlog, runs
from .answers import Answer
from .accounting import batch_price_factor, price_per_call
from .batch_records import (
    MAX_FILE_BYTES,
    OPEN_STATES,
    BatchError,
    Submission,
    batches_dir,
    load_submissions,
    write_outcome,
)
from .providers.base import AttemptError
from .providers.gemini_batch import BatchApiError, BatchClient, BatchStatus


def batch_call_usd(cfg: dict) -> float:
    return price_per_call(cfg, batch=True)


# ---------------------------------------------------------------- the batch job


class BatchRun:
    """What the ``batch`` checkpoint does in one run."""

    def __init__(self, cfg: dict, targets_table, *, client: BatchClient | None = None, say=None):
        self.cfg = cfg
        self.api = cfg["api"]
        self.bcfg = self.api["batch"]
        self.out = config_mod.output_dir(cfg)
        self.targets_table = targets_table
        self.run_id = runs.current()
        # on the terminal (a job's own stderr goes to its log): a batch job runs for minutes to hours
        self.say = say or (lambda m: print(m, file=sys.__stderr__, flush=True))
        self._client = client
        self.outcome: dict = {}  # stem -> {"status", "reason", "message", "batch"}

    @property
    def client(self) -> BatchClient:
        if self._client is None:
            from .keys import load_api_key

            self._client = BatchClient(
                api_key=load_api_key(self.cfg, Path.cwd()),
                base_url=self.api["base_url"],
                timeout_s=float(self.api["timeout_s"]),
            )
        return self._client

    def log(self, text: str) -> None:
        self.say(text)
        runlog.message(self.cfg, text)

    # --- entry point
    def run(self, wanted: dict) -> dict:
        """``wanted``: stem -> the answer version this run buys (the plan). The run's outcome."""
        batches_dir(self.out).mkdir(parents=True, exist_ok=True)
        lock = batches_dir(self.out) / ".lock"
        with locks.exclusive(
            lock,
            timeout_s=24 * 3600.0,
            what="batch submissions of this output directory",
            on_wait=lambda: self.say(
                "batch: another run is submitting or collecting batches in this directory; waiting for it"
            ),
        ):
            subs = load_submissions(self.out)
            for sub in subs:
                if sub.state in ("prepared", "uploaded", "creating"):
                    self.finish_creation(sub)
            covered = {s for sub in subs if sub.state in OPEN_STATES for s in sub.keys}
            earlier = len(covered & set(wanted))
            if earlier:
                self.log(f"batch: {earlier} answers awaited from batches submitted earlier; polling them")
            todo = {s: v for s, v in wanted.items() if s not in covered and not self._answered(s, v)}
            subs += self.submit(todo)
            self.collect(subs, wait=bool(self.bcfg["wait"]))
            self._pending(subs)
        return self.outcome

    def cancel(self) -> None:
        """Cancel every open batch of the directory (``snakemake cancel_batches``)."""
        batches_dir(self.out).mkdir(parents=True, exist_ok=True)
        with locks.exclusive(batches_dir(self.out) / ".lock", timeout_s=600.0, what="batch submissions"):
            self.cancel_all(load_submissions(self.out))

    def _pending(self, subs: list[Submission]) -> None:
        for sub in subs:
            if sub.state in OPEN_STATES:
                for s in sub.keys:
                    self.outcome.setdefault(
                        s,
                        {
                            "status": "pending",
                            "batch": sub.batch_name or sub.display_name,
                            "reason": f"BATCH_{sub.batch_state or 'SUBMITTED'}",
                        },
                    )

    def _answered(self, stem: str, version: int) -> bool:
        """The answer came in since the plan (another run, or a batch collected meanwhile)."""
        return layout.answer_path(self.out, stem, version).exists()

    # --- submitting
    def _line(self, stem: str, version: int, target, provider) -> tuple[bytes, dict]:
        """The JSONL line of one target (the body a synchronous call would send) and its key entry
        (version, fingerprint, request key). An unreadable source becomes an ``unusable`` answer
        (nothing is sent, as in rule ``answer``) and raises UnusableSource."""
        _image_id, aug_name, k = layout.parse_stem(stem)
        aug = config_mod.augmentation(self.cfg, aug_name)
        where = f"train.csv line {target.row}, image {target.image_id}"
        try:
            data, image = paying.read_source(
                paying.source_of(self.cfg, target),
                self.cfg["data"]["data_root"],
                int(self.cfg["postprocess"]["max_pixels"]),
                where,
            )
        except paying.UnusableSource as exc:
            with locks.exclusive(layout.answer_dir(self.out, stem) / ".lock", timeout_s=3600, what=f"target {stem}"):
                if not self._answered(stem, version):
                    answers_mod.write(
                        self.out,
                        Answer(
                            stem=stem,
                            version=version,
                            status=answers_mod.UNUSABLE,
                            reason="BAD_SOURCE",
                            message=str(exc)[:500],
                            source="none",
                            run_id=self.run_id,
                            ts=time.time(),
                        ),
                    )
            raise
        send, region = paying.source_request(self.cfg, data, image)
        fp, key = paying.fingerprint(self.cfg, aug, data, region)
        request = paying.build_request(self.cfg, aug, target, send, region, k)
        line = (
            json.dumps({"key": stem, "request": provider.build_body(request)}, separators=(",", ":")) + "\n"
        ).encode()
        return line, {"version": int(version), "fingerprint": fp, "request_key": key}

    def submit(self, todo: dict) -> list[Submission]:
        """Chunks of at most api.batch.max_requests lines (and < 2 GB), each reserved in the budget first."""
        if not todo:
            return []
        from . import budget
        from .providers.gemini import GeminiProvider
        from .targets import read_targets

        by_id = {t.image_id: t for t in read_targets(self.targets_table)}
        provider = GeminiProvider(
            api_key="unused-for-bodies",
            model=self.api["model"],
            base_url=self.api["base_url"],
            image_config=self.api.get("image_config"),
        )
        ledger = budget.for_config(self.cfg)
        unit = batch_call_usd(self.cfg)
        max_req, max_bytes = int(self.bcfg["max_requests"]), MAX_FILE_BYTES
        stems = sorted(todo)
        made, i = [], 0
        while i < len(stems):
            granted = ledger.reserve_up_to(min(max_req, len(stems) - i), unit)
            if granted == 0:
                for s in stems[i:]:
                    self.outcome[s] = {
                        "status": "over_budget",
                        "reason": "BUDGET",
                        "message": "not submitted: the budget is used up (the next run goes on)",
                    }
                self.log(f"batch: budget reached; {len(stems) - i} answers not submitted (left for the next run)")
                break
            keys, lines, size = {}, [], 0
            while i < len(stems) and len(keys) < granted:
                stem = stems[i]
                target = by_id.get(layout.parse_stem(stem)[0])
                i += 1
                if target is None:
                    continue
                try:
                    line, entry = self._line(stem, todo[stem], target, provider)
                except paying.UnusableSource as exc:
                    self.outcome[stem] = {"status": "unusable", "reason": "BAD_SOURCE", "message": str(exc)}
                    continue
                if lines and size + len(line) > max_bytes:
                    i -= 1
                    break
                keys[stem] = entry
                lines.append(line)
                size += len(line)
            unused = granted - len(keys)
            if unused:
                ledger.release(unused, unit)
            if not keys:
                continue
            sub = Submission.new(self.out, self.run_id, provider.model, keys)
            sub.reserved_usd = len(keys) * unit
            tmp = sub.jsonl_path.with_name(sub.jsonl_path.name + ".tmp")
            with open(tmp, "wb") as fh:
                for line in lines:
                    fh.write(line)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, sub.jsonl_path)
            sub.save()  # the record exists before anything is uploaded or created
            self.log(
                f"batch: {sub.display_name}: {len(keys)} requests ({size / 1e6:.1f} MB), "
                f"reserved ${sub.reserved_usd:.2f} at batch price"
            )
            self.finish_creation(sub)
            made.append(sub)
        return made

    def finish_creation(self, sub: Submission) -> None:
        """Upload (if needed) and create the batch - exactly once."""
        try:
            if sub.state == "creating":
                found = self.find_by_display_name(sub.display_name)
                if found is not None:
                    self._created(sub, found, "found by its display name (the create answer had been lost)")
                    return
            if sub.state == "prepared" or (sub.state == "creating" and not sub.file_name):
                if not sub.jsonl_path.is_file():  # never created: its reservation goes back
                    self._close(sub, "lost", "BATCH_LOST", "the batch's request file is gone; resubmitted next run")
                    return
                sub.file_name = self.client.upload(sub.jsonl_path, sub.display_name)
                sub.state = "uploaded"
                sub.save()
            sub.state = "creating"
            sub.save()  # from here on, a crash is resolved by the display name
            try:
                status = self.client.create(sub.model, sub.display_name, sub.file_name)
            except BatchApiError as exc:
                if _refused(exc):  # this create was refused (bad request, key, model): no batch exists
                    self._close(sub, "lost", f"HTTP_{exc.status}", f"batch not created: {exc.message}")
                    raise
                if not exc.ambiguous:
                    raise
                found = self.find_by_display_name(sub.display_name)
                if found is None:
                    raise
                status = found
            self._created(sub, status, "created")
        except BatchApiError as exc:
            # a lookup or upload that failed (even with a 4xx: a rotated key) leaves the record as it
            # is: a batch may exist, and the next run looks for it again before creating anything
            raise BatchError(
                f"{sub.display_name}: {exc.message} (submission state '{sub.state}'; nothing is paid "
                "twice: the next run goes on from here)"
            ) from None

    def _created(self, sub: Submission, status: BatchStatus, how: str) -> None:
        sub.batch_name, sub.batch_state, sub.state = status.name, status.state, "created"
        sub.save()
        try:
            sub.jsonl_path.unlink()
        except FileNotFoundError:
            pass
        self.log(f"batch: {sub.display_name}: {how}: {sub.batch_name} ({len(sub.keys)} requests)")

    def find_by_display_name(self, display_name: str) -> BatchStatus | None:
        for status in self.client.list_all():
            if status.display_name == display_name:
                return status
        return None

    # --- collecting
    def collect(self, subs: list[Submission], wait: bool) -> None:
        started = time.monotonic()
        poll_s = float(self.bcfg["poll_s"])
        last_line = ""
        while True:
            open_subs = [s for s in subs if s.state == "created"]
            progress = []
            for sub in open_subs:
                try:
                    status = self.client.get(sub.batch_name)
                except BatchApiError as exc:
                    if exc.status == 404:
                        self._close(sub, "lost", "BATCH_NOT_FOUND", f"batch {sub.batch_name} no longer exists")
                        continue
                    self.log(f"batch: {sub.batch_name}: {exc.message}")
                    progress.append(f"{sub.batch_name}: ?")
                    continue
                if status.state != sub.batch_state:
                    sub.batch_state = status.state
                    sub.save()
                if status.terminal:
                    self.finish(sub, status)
                else:
                    c = status.counts
                    done = c.get("successfulRequestCount", 0) + c.get("failedRequestCount", 0) if c else None
                    progress.append(
                        f"{sub.batch_name} {status.state} "
                        + (
                            f"{done}/{c.get('requestCount', len(sub.keys))} done, "
                            f"{c.get('failedRequestCount', 0)} failed"
                            if done is not None
                            else f"?/{len(sub.keys)} done"
                        )
                    )
            if not progress:
                return
            line = f"batch: waiting ({_elapsed(time.monotonic() - started)}): " + "; ".join(progress)
            if not wait:
                for sub in open_subs:
                    sub.save()  # polled: the next run's checkpoint key changes, so it polls again
                n = sum(len(s.keys) for s in subs if s.state == "created")
                self.log(
                    f"batch: {len(progress)} batch(es) with {n} targets still running "
                    "(api.batch.wait=false); run the same command again to collect them"
                )
                return
            if line != last_line:
                self.log(line)
                last_line = line
            else:
                self.say(line)
            time.sleep(poll_s)

    def finish(self, sub: Submission, status: BatchStatus) -> None:
        if status.state == "SUCCEEDED" and status.responses_file:
            self.collect_results(sub, status)
            return
        reason = f"BATCH_{status.state}"
        why = {
            "EXPIRED": "the batch expired (not finished within 48 h; no partial results)",
            "CANCELLED": "the batch was cancelled",
            "FAILED": f"the batch failed: {status.error or 'no reason given'}",
        }
        self._close(
            sub,
            "collected",
            reason,
            why.get(status.state, f"the batch ended in state {status.state}") + "; resubmitted on the next run",
        )

    def _close(self, sub: Submission, state: str, reason: str, message: str) -> None:
        sub.state = state
        sub.outcome = {
            s: {"status": "failed", "reason": reason, "message": message, "batch": sub.batch_name} for s in sub.keys
        }
        sub.save()
        self.outcome.update(sub.outcome)
        self._settle(sub, 0, 0.0)
        self.log(f"batch: {sub.batch_name or sub.display_name}: {message}")

    def _settle(self, sub: Submission, paid: int, paid_usd: float) -> None:
        """The batch's reservation becomes what it billed, in the ledger of the run that submitted
        it (this run or an earlier one): failed lines and a batch that ended without results give
        theirs back. Called once, after the record is saved closed (a crash in between keeps the
        reservation: never given back twice)."""
        from . import budget

        try:
            budget.settle_batch(self.out, sub.run_id, sub.reserved_usd, len(sub.keys) - paid, paid_usd)
        except (OSError, budget.LedgerUnreadable) as exc:  # the answers are stored: they count anyway
            self.log(f"batch: {sub.batch_name or sub.display_name}: the budget ledger is not settled: {exc}")

    def collect_results(self, sub: Submission, status: BatchStatus) -> None:
        """Download the results once, store each line as the answer it is, then close the record
        (a crash before that: the next run reads the same results file and stores what is missing)."""
        results = sub.path.with_suffix(".results.jsonl")
        if not results.is_file():
            size = self.client.download(status.responses_file, results)
            self.log(f"batch: {sub.batch_name}: results downloaded ({size / 1e6:.1f} MB)")
        outcome, lines = {}, 0
        with open(results, "rb") as fh:
            for raw in fh:
                raw = raw.strip()
                if not raw:
                    continue
                lines += 1
                try:
                    item = json.loads(raw)
                    stem = str(item.get("key"))
                except (ValueError, AttributeError):
                    continue
                if stem in sub.keys:
                    outcome[stem] = self._result_line(sub, stem, item)
        for stem in sub.keys:
            outcome.setdefault(
                stem,
                {
                    "status": "failed",
                    "reason": "BATCH_NO_RESULT",
                    "message": "the batch's results have no line for this target",
                },
            )
            outcome[stem]["batch"] = sub.batch_name
        sub.outcome, sub.state = outcome, "collected"
        sub.save()
        self.outcome.update(outcome)
        billed = [o for o in outcome.values() if o["status"] in ("answered", "refused")]
        paid = len(billed)
        self._settle(sub, paid, sum(o["usd"] for o in billed))
        answered = sum(1 for o in outcome.values() if o["status"] == "answered")
        self.log(
            f"batch: {sub.batch_name}: {lines} result lines, {answered} answers with an image stored, "
            f"{paid - answered} without, {len(sub.keys) - paid} failed"
        )
        try:
            results.unlink()
        except FileNotFoundError:
            pass

    def _result_line(self, sub: Submission, stem: str, item: dict) -> dict:
        """One line of the results: a failed line (not billed, no answer), or an answer stored."""
        from .accounting import estimate_cost_usd
        from .providers.gemini import parse_response

        if isinstance(item.get("error"), dict) or "response" not in item:
            err = item.get("error") or {}
            return {
                "status": "failed",
                "reason": f"BATCH_LINE_{err.get('code', 'ERROR')}",
                "message": f"batch line failed: {err.get('code', '')} {err.get('status', '')} "
                f"{str(err.get('message', ''))[:200]}".strip(),
            }
        key = sub.keys[stem]
        answer = Answer(
            stem=stem,
            version=int(key.get("version", 1)),
            status=answers_mod.IMAGE,
            fingerprint=key.get("fingerprint") or {},
            request_key=key.get("request_key", ""),
            calls=1,
            source="batch",
            batch=sub.batch_name,
            run_id=sub.run_id,  # the run that paid for it (its budget reserved it)
            ts=time.time(),
        )
        factor = batch_price_factor(self.cfg)
        data = None
        try:
            gen = parse_response(item["response"])
            usage = gen.usage
            imaging.decode(gen.data, max_pixels=int(self.cfg["postprocess"]["max_pixels"]), what="batch answer")
            data = gen.data
            answer.mime_label, answer.response_id, answer.model_version = (
                gen.mime_type,
                gen.response_id,
                gen.model_version,
            )
            answer.finish_reason, answer.text = gen.finish_reason, (gen.text or "")[:500]
        except (AttemptError, imaging.DecodeError) as err:  # billed like an answer: kept as a refusal
            usage = getattr(err, "usage", None)
            answer.status = answers_mod.REFUSED
            answer.reason = getattr(err, "reason", None) or "UNDECODABLE"
            answer.message = f"batch answer without a usable image: {getattr(err, 'message', None) or err}"[:500]
        cost = estimate_cost_usd(usage, self.cfg["api"]["pricing"], "gemini") if usage is not None else None
        answer.est_cost_usd = cost * factor if cost is not None else batch_call_usd(self.cfg)
        answer.usage = {k: v for k, v in vars(usage).items() if v is not None} if usage is not None else {}
        self._store(answer, data)
        return {
            "status": "answered" if data is not None else "refused",
            "reason": answer.reason,
            "usd": answer.est_cost_usd,
        }

    def _store(self, answer: Answer, data: bytes | None) -> None:
        """One answer file (under the target's lock), unless that version is there already (stored
        before a crash, or bought meanwhile)."""
        lock = layout.answer_dir(self.out, answer.stem) / ".lock"
        with locks.exclusive(lock, timeout_s=3600, what=f"target {answer.stem}"):
            if not self._answered(answer.stem, answer.version):
                answers_mod.write(self.out, answer, data)

    # --- cancelling
    def cancel_all(self, subs: list[Submission]) -> None:
        open_subs = [s for s in subs if s.state in OPEN_STATES]
        if not open_subs:
            self.log("batch: no outstanding batches to cancel")
            return
        for sub in open_subs:
            if sub.state == "creating":
                found = self.find_by_display_name(sub.display_name)
                if found is not None:
                    self._created(sub, found, "found by its display name")
            if sub.state != "created":  # never created: nothing to cancel
                self._close(sub, "collected", "BATCH_CANCELLED", "cancelled before the batch was created")
                continue
            try:
                self.client.cancel(sub.batch_name)
                self.log(f"batch: {sub.batch_name}: cancel requested")
            except BatchApiError as exc:
                self.log(f"batch: {sub.batch_name}: cancel failed: {exc.message}")
        # a cancelled batch may still deliver what it finished: collect what there is
        self.collect([s for s in open_subs if s.state == "created"], wait=True)


def _refused(exc: BatchApiError) -> bool:
    """A definite refusal of the request (a 4xx other than 408/429): nothing was made."""
    return not exc.ambiguous and exc.status is not None and 400 <= exc.status < 500 and exc.status not in (408, 429)


def _elapsed(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def main(snakemake) -> None:
    """Entry point of checkpoint ``batch`` (``script:``): submit, poll and collect this run's answers."""
    from .errors import UserError
    from .jobs import job_main
    from .pipeline import Pipeline

    def work():
        pipe = Pipeline(snakemake.config)
        pipe.load(snakemake.input.table)
        wanted = pipe.batch_wanted()  # the plan as of now: what still needs a paid answer
        try:
            outcome = BatchRun(snakemake.config, snakemake.input.table).run(wanted)
        except (BatchError, BatchApiError, locks.LockTimeout) as exc:
            raise UserError(getattr(exc, "message", None) or str(exc)) from None
        write_outcome(snakemake.output[0], outcome)

    job_main(snakemake, work, name="batch")


def cancel_main(snakemake) -> None:
    """Entry point of rule ``cancel_batches``."""
    from .errors import UserError
    from .jobs import job_main

    def work():
        try:
            BatchRun(snakemake.config, None).cancel()
        except (BatchError, BatchApiError, locks.LockTimeout) as exc:
            raise UserError(getattr(exc, "message", None) or str(exc)) from None
        Path(snakemake.output[0]).touch()

    job_main(snakemake, work, name="cancel_batches")
