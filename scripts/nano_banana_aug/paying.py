"""Buying one answer: the source as sent, the request, the call with its guards.

Shared by the synchronous ``answer`` job (:mod:`nano_banana_aug.answer`)
and batch mode (:mod:`nano_banana_aug.batch`), which must send exactly the
same request for a target.

Guards around every paid attempt, in order: the run's shared API state
(stop, cool-down, rate limit: :mod:`nano_banana_aug.governor`), the budget
(:mod:`nano_banana_aug.budget`), one of ``api.concurrency`` call slots
(:mod:`nano_banana_aug.slots`), held only while the request is in flight.
"""

from __future__ import annotations

import hashlib
import io
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from . import config as config_mod
from . import governor, imaging, jobs, postprocess
from .accounting import estimate_cost_usd
from .answers import Answer
from .budget import BudgetExceeded, LedgerUnreadable
from .providers import AttemptError, GenerationFailed, Request, RetryPolicy, call_with_retries, make_provider
from .slots import CallSlots, SlotTimeout


class AttemptsUsedUp(AttemptError):
    """The target's billed failed attempts reached ``api.max_total_attempts``: no further attempt."""

    def __init__(self):
        super().__init__(
            "api.max_total_attempts billed failed attempts since the last image", retryable=False, reason="BLOCKED"
        )


class UnusableSource(Exception):
    """The source image cannot be read or decoded: nothing is sent."""


class RunStopped(AttemptError):
    """The run stops buying answers (an account problem, a daily quota, the budget, no free slot):
    this target is left as it is and the job fails, which ends the run."""

    def __init__(self, message: str, reason: str):
        super().__init__(message, retryable=False, reason=reason)
        self.purchase: Purchase | None = None  # billed attempts before the stop, to be stored


def read_source(source_path: str, data_root, max_pixels: int, where: str):
    """(bytes, fully decoded RGB image) of a source; UnusableSource before anything is sent."""
    root = Path(data_root).resolve()
    source = Path(source_path).resolve()
    if not source.is_relative_to(root):
        raise UnusableSource(f"{where}: path resolves outside data_root: {source_path}")
    try:
        data = source.read_bytes()
    except OSError as exc:
        raise UnusableSource(f"{where}: cannot read {source}: {exc.strerror}") from None
    try:
        image = imaging.decode(data, max_pixels=max_pixels, what=f"{where}: source {source}")
    except imaging.DecodeError as exc:
        raise UnusableSource(str(exc)) from None
    return data, image


def source_of(cfg: dict, target) -> Path:
    """A target's source file: its train.csv path under the configured data_root (the table keeps
    it relative, so the directory can move)."""
    return Path(cfg["data"]["data_root"]) / target.image_path


def source_request(cfg: dict, source_bytes: bytes, source_image):
    """What is sent for a source: (bytes, region). With ``api.match_aspect`` the source padded to
    the nearest supported aspect ratio (JPEG, quality 95) and the region that shows the source."""
    if not config_mod.matches_aspect(cfg):
        return source_bytes, None
    region = postprocess.match_aspect_request(source_image.width, source_image.height)
    padded = postprocess.pad_source(source_image, region)
    if padded.size == source_image.size:
        return source_bytes, {**region, "box": [0.0, 0.0, 1.0, 1.0]}
    return imaging.encode(padded, "jpg", {"jpeg_quality": 95}), region


def fingerprint(cfg: dict, aug: dict, source_bytes: bytes, region: dict | None) -> tuple[dict, str]:
    """(what the answer is asked with, its request key)."""
    settings = config_mod.request_settings(cfg, aug)
    fp = {**settings, "source_sha256": hashlib.sha256(source_bytes).hexdigest()}
    if region:
        fp["region"] = region  # the padded request: which part of the answer shows the source
    return fp, config_mod.request_key(settings)


def build_request(cfg: dict, aug: dict, target, send: bytes, region: dict | None, variant_idx: int) -> Request:
    return Request(
        image_bytes=send,
        mime_type=imaging.sniff_mime(send) or "",
        prompt=config_mod.full_prompt(cfg, aug),
        image_id=target.image_id,
        aug_name=aug["name"],
        variant_idx=variant_idx,
        seed=int(cfg.get("seed", 0)),
        recipe=aug.get("local") or {},
        source_path=target.image_path,
        aspect_ratio=region["ratio"] if region else None,
    )


def retry_policy(cfg: dict) -> RetryPolicy:
    api = cfg["api"]
    return RetryPolicy(
        max_attempts=int(api["max_retries"]),
        backoff_s=float(api["retry_backoff_s"]),
        max_wait_s=float(api["max_retry_wait_s"]),
    )


def load_provider(cfg: dict):
    """The configured provider, with its key (read here, only by a job that calls)."""
    api_key = None
    if config_mod.is_paid(cfg):
        from .keys import load_api_key

        api_key = load_api_key(cfg, Path.cwd())
    return make_provider(cfg, api_key)


def slot_wait_s(cfg: dict) -> float:
    """How long a call waits for a free slot before the run gives up (all slots stuck)."""
    return 2 * float(cfg["api"]["timeout_s"]) + 60


@dataclass
class Purchase:
    """What a paid request produced: the answer record (not stored yet) and its image bytes."""

    answer: Answer
    data: bytes | None = None


def _attempt_record(err: AttemptError, cost) -> dict:
    usage = err.usage
    return {
        "reason": err.reason,
        "message": err.message[:300],
        "status": err.status,
        "billed": err.billed,
        "usage": {k: v for k, v in vars(usage).items() if v is not None} if usage is not None else {},
        "est_cost_usd": cost,
        "ts": time.time(),
    }


def _add(total, value):
    return total if value is None else (total or 0.0) + value


class _Guarded:
    """The provider as call_with_retries sees it: each attempt through the buyer's slots and governor."""

    def __init__(self, buyer: "Buyer"):
        self.attempt = buyer._dispatch
        self.name, self.model, self.paid = buyer.provider.name, buyer.provider.model, buyer.provider.paid


class Buyer:
    """Buys answers for the jobs of one run (one provider, one governor, one ledger, one set of slots)."""

    def __init__(self, cfg: dict, provider=None, say=None):
        from . import budget, runs

        self.cfg = cfg
        self.provider = provider if provider is not None else load_provider(cfg)
        self.policy = retry_policy(cfg)
        self.paid = bool(self.provider.paid)
        out = config_mod.output_dir(cfg)
        self.governor = governor.for_config(cfg, say=say) if self.paid else None
        self.ledger = budget.for_config(cfg) if self.paid else None
        self.slots = (
            CallSlots(out / ".pipeline" / "slots", int(cfg["api"]["concurrency"]), wait_timeout_s=slot_wait_s(cfg))
            if self.paid
            else None
        )
        self.run_id = runs.current()

    def estimate(self, usage):
        if not self.paid:
            return 0.0
        return (
            None if usage is None else estimate_cost_usd(usage, self.cfg["api"]["pricing"], self.cfg["api"]["provider"])
        )

    def _dispatch(self, request: Request):
        """One attempt: a free slot, its rate-limit tick, a last look at the run's state, the request."""
        if self.slots is None:
            return self.provider.attempt(request)
        while True:
            try:
                fd = self.slots.acquire()
            except SlotTimeout as exc:
                raise RunStopped(
                    f"{exc}: calls in flight do not end (api.timeout_s={self.cfg['api']['timeout_s']}); "
                    "is another run using this directory's slots?",
                    "SLOT_TIMEOUT",
                ) from None
            try:
                self.governor.pace()
                _raise_if_stop_pending()  # came while this job waited for its slot or its rate-limit tick
                if self.governor.may_dispatch():
                    try:
                        return self.provider.attempt(request)
                    except AttemptError as err:
                        self.governor.after_error(err)  # decided while the slot is held: the next call sees it
                        raise
            finally:
                os.close(fd)
            self.governor.before_call()  # a cool-down began while this job waited for its slot

    def buy(
        self,
        request: Request,
        *,
        stem: str,
        version: int,
        fp: dict,
        key: str,
        max_pixels: int,
        billed_left: int | None = None,
    ) -> Purchase:
        """Make up to ``api.max_retries`` attempts, of which at most ``billed_left`` billed failed
        ones (what ``api.max_total_attempts`` leaves the target); the answer says what came back
        (image, refused, failed). Raises RunStopped when the run must stop buying; its ``purchase``
        holds the refusal to store when attempts before the stop were billed, else None."""
        tally = _Tally(self, max_pixels, billed_left)
        try:
            gen = call_with_retries(
                _Guarded(self),
                request,
                self.policy,
                before_attempt=tally.before,
                after_attempt=tally.after,
                on_answer=tally.decode,
            )
        except GenerationFailed as failed:
            try:
                _raise_if_stopped(failed.last)
            except RunStopped as stop:
                # attempts made before the stop may have been billed (a refusal with usage): their
                # answer is kept like any refusal, so the money is counted from the answer files
                billed = [e for e in tally.errors if e.billed]
                if billed:
                    made = GenerationFailed(billed[-1], len(tally.errors), failed.seconds)
                    stop.purchase = Purchase(tally.answer(self, stem, version, fp, key, failed=made), None)
                raise stop from None
            if isinstance(failed.last, AttemptsUsedUp) and tally.errors:  # the answer says what the last call said
                failed = GenerationFailed(tally.errors[-1], len(tally.errors), failed.seconds)
            return Purchase(tally.answer(self, stem, version, fp, key, failed=failed), None)
        return Purchase(tally.answer(self, stem, version, fp, key, gen=gen), gen.data)


def _raise_if_stop_pending() -> None:
    """A stop (SIGTERM, Ctrl-C) held since a paid answer began to arrive: this job makes no further attempt."""
    if jobs.stop_pending():
        raise RunStopped("the job is being stopped (SIGTERM or Ctrl-C)", "INTERRUPTED")


def _raise_if_stopped(last: AttemptError) -> None:
    """A failed call sequence that means "stop buying" (or that a stop is held) becomes RunStopped;
    any other returns."""
    if isinstance(last, RunStopped):
        raise last
    if isinstance(last, governor.DispatchStopped):
        raise RunStopped(last.message, last.reason)
    if isinstance(last, BudgetExceeded):
        raise RunStopped(f"{last.message}; the rest is left for the next run", "BUDGET")
    if isinstance(last, LedgerUnreadable):
        raise RunStopped(last.message, last.reason)
    stop = getattr(last, "stop", None)
    if stop is not None:  # the job that stopped the run says why; the others only that it stopped
        raise RunStopped(stop.message if stop.first else f"the run stopped buying ({stop.reason})", stop.reason)
    _raise_if_stop_pending()


def _usage_dict(usage) -> dict:
    return {k: v for k, v in vars(usage).items() if v is not None} if usage is not None else {}


class _Tally:
    """One answer's attempts: the guards before each, the accounting after each, the decoding."""

    def __init__(self, buyer: Buyer, max_pixels: int, billed_left: int | None = None):
        self.buyer, self.max_pixels, self.billed_left = buyer, max_pixels, billed_left
        self.calls, self.cost, self.reported = 0, None, None
        self.errors: list[AttemptError] = []
        self.records: list[dict] = []
        self.started = time.monotonic()

    def before(self, n: int) -> None:
        _raise_if_stop_pending()  # came after a paid 200 (held since), e.g. in the backoff: no further attempt
        if self.billed_left is not None and sum(e.billed for e in self.errors) >= self.billed_left:
            raise AttemptsUsedUp()
        if self.buyer.governor is not None:
            self.buyer.governor.before_call()  # the run's cool-down and stop (the rate limit: with the slot)
        if self.buyer.ledger is not None:
            try:
                self.buyer.ledger.reserve()
            except OSError as exc:  # no paid call without its reservation
                raise RunStopped(
                    f"budget ledger {self.buyer.ledger.path} cannot be written ({exc.strerror or exc})", "LEDGER"
                ) from None

    def decode(self, n: int, gen):
        """The answer's image, decoded (a failed attempt, retried, when it does not decode)."""
        if gen.image is not None:  # the local engine answers with a decoded image
            image = gen.image.convert("RGB") if gen.image.mode != "RGB" else gen.image
            buf = io.BytesIO()
            image.save(buf, format="PNG", compress_level=1)
            gen.data = buf.getvalue()
            return image
        try:
            return imaging.decode(gen.data, max_pixels=self.max_pixels, what="model output")
        except imaging.DecodeError as exc:  # billed like any answer
            raise AttemptError(str(exc), retryable=True, status=200, reason="UNDECODABLE") from None

    def after(self, n: int, gen, err) -> None:
        ledger = self.buyer.ledger
        if isinstance(err, (governor.DispatchStopped, RunStopped)):  # not made: the reservation goes back
            if ledger is not None:
                try:
                    ledger.release(1, ledger.reserved_usd)
                except (OSError, LedgerUnreadable) as exc:  # the billed attempts before it are still stored
                    print(f"a reservation is not given back to the budget ledger: {exc}", file=sys.stderr)
            return
        self.calls += 1
        usage = gen.usage if gen is not None else err.usage
        cost = self.buyer.estimate(usage)
        billable = gen is not None or err.billed
        if cost is None and billable and ledger is not None:  # billed, usage unknown: what was reserved
            cost = ledger.reserved_usd
        self.cost = _add(self.cost, cost)
        if usage is not None and usage.cost_usd is not None:
            self.reported = _add(self.reported, usage.cost_usd)
        if ledger is not None:
            try:
                ledger.settle(cost, billable=billable)
            except (OSError, LedgerUnreadable) as exc:
                # the answer comes first: it is stored, and the next reservation (which fails the same
                # way) stops the run; meanwhile the ledger keeps the call at its reservation
                print(f"the cost of a made call is not in the budget ledger: {exc}", file=sys.stderr)
        if err is not None:
            self.errors.append(err)
            self.records.append(_attempt_record(err, cost))
            if jobs.stop_pending():  # held since a paid 200: no further attempt (buy says why)
                err.retryable = False
            verdict = getattr(err, "verdict", None)  # the governor's, decided while the slot was held
            if verdict is not None and verdict.action == "stop":
                err.retryable = False
                err.stop = verdict

    def answer(self, buyer: Buyer, stem, version, fp, key, gen=None, failed: GenerationFailed | None = None) -> Answer:
        answer = Answer(
            stem=stem,
            version=version,
            status="image",
            fingerprint=fp,
            request_key=key,
            source="call" if buyer.paid else "local",
            run_id=buyer.run_id,
            calls=self.calls,
            attempts=self.records,
            est_cost_usd=self.cost,
            cost_usd=self.reported,
            api_seconds=round(time.monotonic() - self.started, 3),
            host=socket.gethostname(),
            slurm_job_id=os.environ.get("SLURM_JOB_ID", ""),
        )
        if gen is not None:
            answer.mime_label, answer.response_id, answer.model_version = (
                gen.mime_type,
                gen.response_id,
                gen.model_version,
            )
            answer.finish_reason, answer.text, answer.usage = (
                gen.finish_reason,
                (gen.text or "")[:500],
                _usage_dict(gen.usage),
            )
        else:
            last = failed.last
            billed = any(e.billed for e in self.errors)
            answer.status = "refused" if billed else "failed"
            answer.reason, answer.usage = last.reason or "FAILED", _usage_dict(last.usage)
            answer.message = f"after {failed.attempts} attempt(s): {last.message}"[:500]
        answer.ts = time.time()
        return answer
