"""One target: decide, maybe pay, keep the answer, post-process, write output + sidecar.

Called once per output file by rule ``generate`` (``scripts/generate.py``).
Money rules, in the order they act:

1. **One process per target.**  The job holds the target's lock for its whole
   life, then decides (:func:`nano_banana_aug.planning.decide`) from what is
   on disk *now*: a second process for the same target (an orphan of a
   killed run, a run started after ``--unlock``) waits and then finds the
   work done.  Snakemake may also rerun the job for reasons of its own
   (edited rules, ``--rerun-triggers``): the decision is then ``done`` and
   nothing is paid or changed.
2. **The source is checked before paying**: fully decoded, so a truncated
   JPEG is never sent.
3. **Every paid answer is stored** (:mod:`nano_banana_aug.answers`) the
   moment it arrives, before decoding, QC or post-processing.  A later crash,
   ``kill -9`` or bug loses nothing: the next run builds the output from it
   with zero calls.
4. **The old output stays until its replacement is complete.**  The output is
   declared ``update()`` (Snakemake does not delete it before the job), and a
   regeneration that fails leaves the old output and its sidecar as they
   were, only noting why (``regen_error``).
5. **Every failure leaves a trace**: a ``failed`` / ``over_budget`` /
   ``blocked`` sidecar (or the ``regen_error`` note), also for unexpected
   errors after a paid call.

Commit order: when an existing output is replaced a *recheck* marker is set
first; then the sidecar, then the image (atomic, durable renames); then the
marker is cleared.  A crash in between is found and repaired by the next run
from the stored answer, at no cost.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import sys
import time
import traceback
from pathlib import Path

from . import config as config_mod
from . import governor, imaging, layout, locks, planning, postprocess, recovery, regen, runlog, sidecar
from .answers import AnswerStore, clear_recheck, mark_recheck, unconsumed
from .errors import UserError
from .sidecar import Record
from .targets import find_target


class TargetFailed(Exception):
    """This target could not be produced; the message goes into the sidecar."""

    def __init__(self, message: str, reason: str = "", status: str = "failed"):
        super().__init__(message)
        self.reason = reason
        self.status = status  # failed | over_budget | blocked


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------- the source

def _recheck_source(target, data_root) -> None:
    """A source the checkpoint found unusable is checked again (it may have been fixed)."""
    if target.problem:
        from .targets import check_source

        resolved, problem, _w, _h = check_source(data_root, target.image_path, decode=True)
        target.problem = f"train.csv line {target.row}, image {target.image_id}: {problem}" if problem else ""
        if not problem:
            target.source = resolved


def _read_source(target, data_root, max_pixels: int):
    """(bytes, fully decoded RGB image) of the source; TargetFailed before anything is sent."""
    root = Path(data_root).resolve()
    source = Path(target.source).resolve()
    where = f"train.csv line {target.row}, image {target.image_id}"
    if not source.is_relative_to(root):
        raise TargetFailed(f"{where}: path resolves outside data_root: {target.image_path}", "BAD_SOURCE")
    try:
        data = source.read_bytes()
    except OSError as exc:
        raise TargetFailed(f"{where}: cannot read {source}: {exc.strerror}", "BAD_SOURCE") from None
    try:
        image = imaging.decode(data, max_pixels=max_pixels, what=f"{where}: source {source}")
    except imaging.DecodeError as exc:
        raise TargetFailed(str(exc), "BAD_SOURCE") from None
    return data, image


def _small(image, work_size):
    """The source reduced to about twice QC's working grid (QC resizes it further)."""
    w, h = (int(v) for v in work_size)
    factor = max(1, min(image.width // (2 * w), image.height // (2 * h)))
    return image.reduce(factor) if factor > 1 else image


# ---------------------------------------------------------------- paying

def _provider_and_policy(cfg: dict):
    from .providers import RetryPolicy, make_provider

    api_key = None
    if config_mod.is_paid(cfg):
        from .keys import load_api_key

        api_key = load_api_key(cfg, Path.cwd())
    api = cfg["api"]
    policy = RetryPolicy(
        max_attempts=int(api["max_retries"]),
        backoff_s=float(api["retry_backoff_s"]),
        max_wait_s=float(api["max_retry_wait_s"]),
    )
    provider = make_provider(cfg, api_key)
    if provider.paid:
        from .slots import CallSlots, SlotLimited

        slots = CallSlots(layout.pipeline_dir(cfg["data"]["output_dir"]) / "slots", int(api["concurrency"]),
                          wait_timeout_s=2 * float(api["timeout_s"]) + 60)
        gov = governor.for_config(cfg, say=lambda m: runlog.message(cfg, m))
        provider = SlotLimited(provider, slots, gate=gov.at_dispatch, on_error=gov.after_error)
    return provider, policy


def _ledger(cfg: dict):
    """This run's ledger of paid calls (with the budget, if one is set)."""
    from .budget import Ledger
    from .runs import run_dir

    api = cfg["api"]
    run_id = (cfg.get("_run") or {}).get("id", "adhoc")
    return Ledger(run_dir(cfg["data"]["output_dir"], run_id) / "ledger.json",
                  max_calls=api.get("max_calls"), max_cost_usd=api.get("max_cost_usd"),
                  reserve_usd=float(api["pricing"]["image_usd_per_call"]))


def _estimate_cost(cfg: dict, usage) -> float | None:
    """Estimated USD of one attempt's usage (blocked answers can be billed too)."""
    if not config_mod.is_paid(cfg):
        return 0.0
    if usage is None:
        return None
    from .accounting import estimate_cost_usd

    return estimate_cost_usd(usage, cfg["api"]["pricing"], cfg["api"]["provider"])


def _add(total, value):
    return total if value is None else (total or 0.0) + value


def _decode(data: bytes, max_pixels: int, what: str):
    try:
        return imaging.decode(data, max_pixels=max_pixels, what=what)
    except imaging.DecodeError as exc:
        raise TargetFailed(str(exc), "UNDECODABLE") from None


class Job:
    """The state of one generate job while it holds its target's lock."""

    def __init__(self, cfg: dict, target, aug: dict, variant_idx: int, output: Path, record: Record):
        self.cfg, self.target, self.aug, self.k, self.output, self.record = cfg, target, aug, variant_idx, output, record
        self.out_dir = config_mod.output_dir(cfg)
        self.stem = layout.stem(target.image_id, aug["name"], variant_idx)
        self.paid = config_mod.is_paid(cfg)
        self.store = AnswerStore(self.out_dir) if self.paid else None
        self.pp = cfg["postprocess"]
        self.max_pixels = int(self.pp["max_pixels"])
        self.calls = 0  # attempts made by this job (each one billed or refused by the service)
        self.cost = None  # estimated USD of this job's attempts
        self.seen = 0  # highest answer number looked at
        self.usable = []  # numbers of answers that decoded but are not in an output yet

    # --- one paid generation (with retries); every answer stored on arrival
    def buy(self, source_bytes: bytes, source_image, prompt: str, satisfies: list[str]):
        """A new paid answer: (decoded image, stored Answer, match_aspect region or None)."""
        from .budget import BudgetExceeded
        from .providers import AttemptError, GenerationFailed, Request, call_with_retries

        cfg, record = self.cfg, self.record
        provider, policy = _provider_and_policy(cfg)
        send, region = source_request(cfg, source_bytes, source_image)
        request = Request(
            image_bytes=send, mime_type=imaging.sniff_mime(send) or "", prompt=prompt,
            image_id=self.target.image_id, aug_name=self.aug["name"], variant_idx=self.k,
            seed=int(cfg.get("seed", 0)), recipe=self.aug.get("local") or {}, source_path=self.target.image_path,
            aspect_ratio=region["ratio"] if region else None,
        )
        ledger = _ledger(cfg) if provider.paid else None
        gov = governor.for_config(cfg) if provider.paid else None
        fingerprint = {
            "provider": provider.name, "model": provider.model, "source_sha256": record.source_sha256,
            "prompt_sha256": record.prompt_sha256, "image_config": cfg["api"].get("image_config"),
        }
        if region:
            fingerprint["region"] = region  # the padded request: which part of the answer shows the source
        run = cfg.get("_run") or {}

        def before_attempt(n):
            if gov is not None:
                gov.before_call()  # the run's cool-down, rate limit and stop
            if ledger is not None:
                ledger.reserve()

        def on_answer(n, gen):
            stored = None
            if self.store is not None and gen.data is not None:
                u = gen.usage
                stored = self.store.add(
                    self.stem, gen.data, mime_label=gen.mime_type, response_id=gen.response_id,
                    model_version=gen.model_version, usage={k: v for k, v in vars(u).items() if v is not None},
                    est_cost_usd=_estimate_cost(cfg, u), finish_reason=gen.finish_reason, text=(gen.text or "")[:500],
                    attempt=n, ts=time.time(), source="call", fingerprint=fingerprint, satisfies=list(satisfies),
                    run_id=run.get("id", ""), host=record.host, slurm_job_id=record.slurm_job_id,
                )
                self.seen = max(self.seen, stored.seq)
                if satisfies:
                    regen.record_done(self.out_dir, satisfies, self.stem)
            if gen.image is not None:
                image = gen.image.convert("RGB") if gen.image.mode != "RGB" else gen.image
                if image.width * image.height > self.max_pixels:
                    raise AttemptError(f"model output {image.width}x{image.height} exceeds postprocess.max_pixels",
                                       retryable=True, reason="OVERSIZE")
                return image, stored
            try:
                image = imaging.decode(gen.data, max_pixels=self.max_pixels, what="model output")
            except imaging.DecodeError as exc:  # a failed attempt: retried like any other
                raise AttemptError(str(exc), retryable=True, status=200, reason="UNDECODABLE") from None
            if stored is not None:
                self.usable.append(stored.seq)
            return image, stored

        def after_attempt(n, gen, err):
            if isinstance(err, governor.DispatchStopped):  # stopped while waiting for a slot: no call made
                if ledger is not None:
                    ledger.release(1, ledger.reserve_usd)
                return
            self.calls += 1
            u = gen.usage if gen is not None else err.usage
            cost = _estimate_cost(cfg, u)
            self.cost = _add(self.cost, cost)
            # billable: an answer (also a blocked one); HTTP refusals and lost connections are not
            billable = gen is not None or (err is not None and err.usage is not None)
            if ledger is not None:
                ledger.settle(cost, billable=billable)
            verdict = getattr(err, "verdict", None)  # decided by the governor while the call slot was held
            if verdict is not None:
                if verdict.action == "stop":
                    err.retryable = False
                    err.reason = verdict.reason
                    err.stop = True
            if err is not None:
                runlog.event(cfg, "retry" if err.retryable and n < policy.max_attempts else "attempt", self.stem,
                             attempt=n, reason=err.reason, error=err.message[:200])

        t0 = time.monotonic()
        try:
            gen = call_with_retries(provider, request, policy, before_attempt=before_attempt,
                                    after_attempt=after_attempt, on_answer=on_answer)
        except GenerationFailed as failed:
            if isinstance(failed.last, governor.DispatchStopped) or getattr(failed.last, "stop", False):
                raise TargetFailed(failed.last.message, failed.last.reason, status="stopped") from None
            if isinstance(failed.last, BudgetExceeded):
                raise TargetFailed(f"not generated: {failed.last.message} (run again to continue)", "BUDGET",
                                   status="over_budget") from None
            raise TargetFailed(f"after {failed.attempts} attempt(s): {failed.last.message}", failed.last.reason) from None
        finally:
            record.api_seconds += time.monotonic() - t0
        image, stored = gen.result
        record.model_version, record.response_id = gen.model_version, gen.response_id
        u = gen.usage
        record.prompt_tokens, record.candidates_tokens = u.prompt_tokens, u.candidates_tokens
        record.thoughts_tokens, record.total_tokens, record.cost_usd = u.thoughts_tokens, u.total_tokens, u.cost_usd
        record.provider, record.model = provider.name, provider.model
        return image, stored, region

    def reuse(self, answer):
        """The decoded image of a stored answer (0 calls); the record describes that answer."""
        record = self.record
        try:
            data = self.store.read_image(answer)
        except (OSError, ValueError) as exc:
            raise TargetFailed(f"stored answer {answer.stem}/{answer.image_file} cannot be used: {exc}",
                               "STORED_ANSWER") from None
        image = _decode(data, self.max_pixels, f"stored answer {answer.stem}/{answer.image_file}")
        fp = answer.fingerprint or {}
        record.provider, record.model = fp.get("provider", ""), fp.get("model", "")
        record.source_sha256 = fp.get("source_sha256", record.source_sha256)
        record.prompt_sha256 = fp.get("prompt_sha256", record.prompt_sha256)
        record.model_version, record.response_id = answer.model_version, answer.response_id
        u = answer.usage or {}
        record.prompt_tokens, record.candidates_tokens = u.get("prompt_tokens"), u.get("candidates_tokens")
        record.thoughts_tokens, record.total_tokens = u.get("thoughts_tokens"), u.get("total_tokens")
        record.cost_usd = u.get("cost_usd")
        return image


def _quality_check(source_image, image, qc_cfg: dict, record: Record) -> bool:
    """Label-safety QC of the model's answer; fills record.qc, sets status/error when rejected."""
    from . import qc

    t0 = time.monotonic()
    scores, passed, reasons = qc.check(source_image, image, qc_cfg)
    record.qc = {**scores.to_columns(), "qc_passed": passed, "qc_reasons": "; ".join(reasons),
                 "qc_seconds": round(time.monotonic() - t0, 3)}
    record.status = "success" if passed else "rejected"
    record.error = "" if passed else "label-safety QC: " + "; ".join(reasons)
    record.error_reason = "" if passed else "QC_REJECTED"
    return passed


def source_request(cfg: dict, source_bytes: bytes, source_image):
    """What is sent for a source: (bytes, region). With ``api.match_aspect`` the source padded to
    the nearest supported aspect ratio (JPEG, quality 95) and the region that shows the source."""
    if not cfg["api"].get("match_aspect") or cfg["api"]["provider"] == "local":
        return source_bytes, None
    region = postprocess.match_aspect_request(source_image.width, source_image.height)
    padded = postprocess.pad_source(source_image, region)
    if padded.size == source_image.size:
        return source_bytes, {**region, "box": [0.0, 0.0, 1.0, 1.0]}
    return imaging.encode(padded, "jpg", {"jpeg_quality": 95}), region


def _final(job: Job, image, source_image, region):
    """(geometry, final image) of one answer."""
    geo = postprocess.plan(image.width, image.height, job.pp, source_size=source_image.size, region=region)
    return geo, postprocess.apply(image, geo, job.pp)


def _qc_reference(source_image, geo, pp: dict):
    """What the final image must match: the source itself when the geometry maps the answer
    onto it (resize, match_aspect); else the source put through the same pad/crop."""
    from PIL import Image

    if geo.mode in ("resize", "match_aspect", "none") and (geo.out_w, geo.out_h) == source_image.size:
        return source_image
    if geo.mode in ("resize", "match_aspect"):
        return source_image.resize((geo.out_w, geo.out_h), Image.Resampling.BILINEAR)
    return postprocess.apply(source_image.resize((geo.orig_w, geo.orig_h), Image.Resampling.BILINEAR), geo, pp)


def produce(job: Job, decision: planning.Decision, fresh: list, current) -> bytes:
    """Get the answer the decision asks for, map it onto the source, check it; the encoded output.

    QC judges the final image (after the geometry, before encoding): what is
    written is what was checked."""
    cfg, record, target = job.cfg, job.record, job.target
    pp, qc_cfg = job.pp, cfg.get("qc") or {"enabled": False}
    source_bytes, source_image = _read_source(target, cfg["data"]["data_root"], job.max_pixels)
    record.source_sha256 = _sha256(source_bytes)
    prompt = config_mod.full_prompt(cfg, job.aug)
    record.prompt_sha256 = _sha256(prompt.encode("utf-8"))

    if decision.action == "call":
        image, answer, region = job.buy(source_bytes, source_image, prompt, decision.requests)
        record.answer_source = "call" if job.paid else ""
    else:
        answer = fresh[-1] if decision.action == "store" else current
        image = job.reuse(answer)
        region = (answer.fingerprint or {}).get("region")
        if decision.action == "store":
            job.usable.append(answer.seq)
        record.answer_source = "batch" if answer.source == "batch" and decision.action == "store" else "store"
        record.attempts, record.est_cost_usd = answer.attempt, answer.est_cost_usd  # what the output cost
        runlog.event(cfg, "reuse", job.stem, answer=answer.answer_id, why=decision.why)
    if answer is not None:
        record.answer_id = answer.answer_id
        job.seen = max(job.seen, answer.seq)

    geo, final = _final(job, image, source_image, region)
    if qc_cfg.get("enabled", True):
        work = qc_cfg.get("work_size", [512, 256])
        # automatic QC regeneration pays: only where this job was asked to pay anyway
        extra = int(qc_cfg.get("auto_regenerate", 0)) if decision.action == "call" else 0
        for n in range(extra + 1):
            reference = _small(_qc_reference(source_image, geo, pp), work)
            if _quality_check(reference, final, qc_cfg, record) or n == extra:
                break
            runlog.event(cfg, "regen", job.stem, why="qc rejected", qc=record.error[:200])
            rejected = (geo, final, answer)
            try:
                image, answer, region = job.buy(source_bytes, source_image, prompt, [])
            except TargetFailed as exc:  # keep the rejected answer for review
                record.error += f"; automatic regeneration failed: {exc}"
                geo, final, answer = rejected
                break
            geo, final = _final(job, image, source_image, region)
            if answer is not None:
                record.answer_id = answer.answer_id
    else:
        record.status = "success"
    for key, value in geo.record().items():
        setattr(record, key, value)
    record.geometry = geo.describe()
    record.generation_key = config_mod.generation_key(cfg, job.aug)
    return imaging.encode(final, cfg["data"]["output_ext"], pp)


# ---------------------------------------------------------------- one target

def _inspect(job: Job, old: Record | None):
    """(TargetState, fresh answers, the output's current answer) under the lock."""
    answers = job.store.list(job.stem) if job.store else []
    seen = old.answer_seq_seen if old else 0
    job.seen = seen
    fresh = unconsumed(answers, seen)
    current = next((a for a in answers if old and old.answer_id and a.answer_id == old.answer_id), None)
    output_ok = planning.output_looks_ok(job.output)
    if output_ok and old is not None and old.output_sha256:
        output_ok = _file_sha256(job.output) == old.output_sha256  # replaced by someone else, or damaged
    state = planning.TargetState(
        stem=job.stem, aug=job.aug["name"], output_ok=output_ok, output_exists=job.output.exists(),
        status=old.status if old else "", has_answer=current is not None, unconsumed=bool(fresh),
        attempts_total=int(old.attempts_total or 0) if old else 0, problem=job.target.problem,
    )
    return state, fresh, current, answers


def _intent_for(job: Job, answers) -> planning.RunIntent:
    intent = planning.intent_from_config(job.cfg)
    for a in answers:  # the answers say which requests this target was already regenerated for
        for rid in a.satisfies or ():
            intent.done.setdefault(rid, set()).add(job.stem)
    return intent


def _commit(job: Job, data: bytes, replacing: bool) -> None:
    """Write the sidecar and the image; once done, the job reports success whatever happens."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    record = job.record
    if replacing:
        mark_recheck(job.out_dir, job.stem)
    record.output_bytes = len(data)
    record.output_sha256 = _sha256(data)
    sidecar.write(record, layout.sidecar_path(job.out_dir, record.image_id, record.aug_name, record.variant_idx))
    from .fileio import atomic_write_bytes

    atomic_write_bytes(job.output, data)
    if not job.store or not unconsumed(job.store.list(job.stem), record.answer_seq_seen):
        clear_recheck(job.out_dir, job.stem)


def run(cfg: dict, targets_csv, image_id: str, aug_name: str, variant_idx: int, output) -> Record | None:
    """Produce one output and its sidecar; raises TargetFailed after leaving a trace of the failure."""
    output = Path(output)
    out_dir = config_mod.output_dir(cfg)
    stem = layout.stem(image_id, aug_name, variant_idx)
    run_info = cfg.get("_run") or {}
    timeout = float(run_info.get("target_lock_timeout_s", 3600))
    alive = run_info.get("alive_lock") or str(layout.pipeline_dir(out_dir) / "alive.lock")
    with locks.shared(alive):
        with locks.exclusive(layout.target_lock(out_dir, stem), timeout_s=timeout, what=f"target {stem}",
                             on_wait=lambda: runlog.event(cfg, "waiting", stem, why="another process works on this target")):
            return _run_locked(cfg, targets_csv, image_id, aug_name, variant_idx, output)


def _run_locked(cfg, targets_csv, image_id, aug_name, variant_idx, output: Path) -> Record | None:
    started = time.monotonic()
    out_dir = config_mod.output_dir(cfg)
    data_root = cfg["data"]["data_root"]
    stem = layout.stem(image_id, aug_name, variant_idx)
    side = layout.sidecar_path(out_dir, image_id, aug_name, variant_idx)
    recovery.remove_own_temporaries([output, side])  # left by a job killed while writing them
    record = Record(image_id, aug_name, variant_idx, image_path=layout.relative_to_root(output, data_root),
                    host=socket.gethostname(), slurm_job_id=os.environ.get("SLURM_JOB_ID", ""))
    try:
        old = sidecar.read(side)
    except FileNotFoundError:
        old = None
    except (OSError, ValueError, TypeError):
        old = None  # unreadable: as if there were none (the output, if any, is judged by its file)
    job, state = None, None
    try:
        target = find_target(targets_csv, image_id)
        if target is None:
            raise TargetFailed(f"image {image_id} is not in {targets_csv} (not in train.csv, or lacks a primary target)",
                               "UNKNOWN_IMAGE")
        record.src_image_path = target.image_path
        aug = config_mod.augmentation(cfg, aug_name)
        if not 0 <= variant_idx < int(aug.get("num_images", 1)):
            raise TargetFailed(f"variant v{variant_idx} is outside num_images={aug.get('num_images', 1)} of '{aug_name}'",
                               "UNKNOWN_VARIANT")
        _recheck_source(target, data_root)
        job = Job(cfg, target, aug, variant_idx, output, record)
        state, fresh, current, answers = _inspect(job, old)
        decision = planning.decide(state, _intent_for(job, answers))
        if decision.action == "done":
            if not fresh:
                clear_recheck(out_dir, stem)
            runlog.event(cfg, "checked", stem, result="output kept, nothing to do")
            return None
        runlog.event(cfg, "started", stem, action=decision.action, why=decision.why,
                     provider=cfg["api"]["provider"], model=cfg["api"]["model"])
        if decision.action == "blocked":
            raise TargetFailed(f"not retried: {decision.why}; run with --config retry_blocked=true to try again",
                               "BLOCKED", status="blocked")
        if decision.action == "unusable":
            raise TargetFailed(decision.why, "BAD_SOURCE")
        if decision.action == "call" and cfg["api"].get("mode") == "batch":
            _batch_gate(cfg, stem)
        data = produce(job, decision, fresh, current)
    except (TargetFailed, UserError, Exception) as exc:  # every failure leaves a trace
        if not isinstance(exc, (TargetFailed, UserError)):
            traceback.print_exc(file=sys.stderr)
        _record_failure(cfg, job, record, old, state, side, exc, time.monotonic() - started)
        raise TargetFailed(str(exc), getattr(exc, "reason", "") or exc.__class__.__name__,
                           getattr(exc, "status", "failed")) from None

    if decision.action == "call":
        record.attempts, record.est_cost_usd = job.calls, job.cost
    record.answer_seq_seen = job.seen
    record.attempts_total = 0
    record.ts = time.time()
    record.seconds = time.monotonic() - started
    _commit(job, data, replacing=state.output_exists)
    try:
        runlog.event(cfg, "ok" if record.status == "success" else record.status, stem,
                     attempts=job.calls, source=record.answer_source or None, secs=record.seconds,
                     size=f"{record.out_w}x{record.out_h}", bytes=record.output_bytes, qc=record.error[:200])
    except OSError:
        pass
    return record


def _batch_gate(cfg: dict, stem: str) -> None:
    """Batch mode: a target with no stored answer gets no synchronous call, unless
    api.batch.fallback is sync and its batch line or batch failed (TargetFailed otherwise)."""
    from .batch import read_outcome
    from .runs import run_dir

    run_id = (cfg.get("_run") or {}).get("id", "adhoc")
    out = read_outcome(run_dir(config_mod.output_dir(cfg), run_id) / "batch_outcome.json").get(stem)
    if out is None:
        raise TargetFailed("not submitted to a batch in this run (it needed an answer only after the batch job "
                           "had run); the next run submits it", "BATCH_NOT_SUBMITTED")
    if out.get("status") == "over_budget":
        raise TargetFailed(out.get("message") or "not submitted: budget reached", "BUDGET", status="over_budget")
    if out.get("status") == "pending":
        raise TargetFailed("its batch is still running; the next run collects it", "BATCH_PENDING")
    if cfg["api"]["batch"].get("fallback") == "sync" and out.get("status") == "failed":
        runlog.event(cfg, "fallback", stem, why=out.get("message", "")[:200])
        return
    raise TargetFailed(out.get("message") or "no answer from the batch", out.get("reason") or "BATCH_FAILED")


def _record_failure(cfg, job, record: Record, old, state, side, exc, seconds) -> None:
    """The trace of a failure: a failed sidecar, or a note on the old output when one is kept."""
    status = getattr(exc, "status", "failed")
    if status == "stopped":  # the run stopped dispatching (account, key, quota): the target is left as it is
        runlog.event(cfg, "stopped", layout.stem(record.image_id, record.aug_name, record.variant_idx),
                     attempts=job.calls if job else 0, reason=getattr(exc, "reason", ""))
        return
    reason = getattr(exc, "reason", "") or exc.__class__.__name__
    message = str(exc) if isinstance(exc, (TargetFailed, UserError)) else f"unexpected {type(exc).__name__}: {exc}"
    calls = job.calls if job else 0
    seen = job.seen if job else (old.answer_seq_seen if old else 0)
    if job and job.usable:  # answers that decoded stay unused: the next run builds the output from them
        seen = min(seen, min(job.usable) - 1)
    max_total = int(cfg["api"].get("max_total_attempts", 6))
    if state is not None and state.output_ok and old is not None and old.status in ("success", "rejected"):
        # a regeneration failed: the old output (restored by Snakemake if needed) and its record stay
        old.regen_error, old.regen_error_ts = message, time.time()
        old.answer_seq_seen = max(old.answer_seq_seen, seen)
        sidecar.write(old, side)
    else:
        record.status = status
        record.error = message
        record.error_reason = reason
        record.attempts = calls
        record.est_cost_usd = job.cost if job else None
        record.answer_seq_seen = seen
        record.attempts_total = (int(old.attempts_total or 0) if old else 0) + calls
        if status == "failed" and calls and record.attempts_total >= max_total:
            record.status, record.error_reason = "blocked", "BLOCKED"
            record.error = (f"blocked after {record.attempts_total} failed attempts (api.max_total_attempts="
                            f"{max_total}); retry with --config retry_blocked=true. Last: {message}")
        record.ts = time.time()
        record.seconds = seconds
        sidecar.write(record, side)
    stem = layout.stem(record.image_id, record.aug_name, record.variant_idx)
    runlog.event(cfg, record.status if record.status != "success" else "failed", stem,
                 attempts=calls, secs=seconds, reason=reason, error=message[:300])


def main(argv=None) -> int:
    """scripts/generate.py --config-json C --targets T --image-id I --aug A --variant K --output O"""
    import argparse

    ap = argparse.ArgumentParser(description="Produce one augmented image and its JSON sidecar.")
    ap.add_argument("--config-json", required=True, help="the run's effective config (written at the run's start)")
    ap.add_argument("--targets", required=True, help="targets.csv of checkpoint `targets`")
    ap.add_argument("--image-id", required=True)
    ap.add_argument("--aug", required=True)
    ap.add_argument("--variant", required=True, type=int)
    ap.add_argument("--output", required=True)
    args = ap.parse_args(argv)
    # Snakemake stops running jobs with SIGTERM: exit through Python so that
    # temporary files are removed (a half-written file never stays behind).
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        cfg = config_mod.read_effective_config(args.config_json)
        run(cfg, args.targets, args.image_id, args.aug, args.variant, args.output)
    except (TargetFailed, UserError) as exc:
        if getattr(exc, "status", "") == "stopped":  # the cause is said once, at the end of the run
            print(f"generate {Path(args.output).name}: not done: the run stopped dispatching calls", file=sys.stderr)
        else:
            print(f"generate {Path(args.output).name}: FAILED: {exc}", file=sys.stderr)
        return 1
    return 0
