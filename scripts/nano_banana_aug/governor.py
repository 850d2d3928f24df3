"""Run-wide API governance: one rate limit, one cool-down and one stop for
every job of a run, on every node that shares the output directory.

State lives in the run's directory (``.pipeline/runs/<run id>/api/``) and is
built only from operations that are atomic on NFS, Lustre and BeeGFS
(``O_CREAT|O_EXCL`` and ``rename``), never from ``flock``, so it holds where
``flock`` is node-local:

``stop.json``     created once (``O_EXCL``: the first writer wins): no new call
                  is dispatched for the rest of the run — an invalid key, no
                  credits, a model that does not exist, a daily quota that ran
                  out, a quota of 0.  The job that meets it fails, which ends
                  the run (Snakemake starts no further job); jobs already
                  waiting for a call find it and leave their target as it is.
``pause_until``   a shared cool-down: a per-minute 429 with ``RetryInfo``
                  (or ``Retry-After``) pauses every job's next call until then.
``ticks/<k>``     the sliding-window rate limit (``api.max_requests_per_minute``
                  = R): call k of the run may start at ``k * 60/R`` seconds
                  (absolute time) and claims its tick with ``O_EXCL``, so no 60 s
                  window ever holds more than R call starts, across processes
                  and nodes (with clocks kept by NTP).

Waits are sleeps until a known time, never polling loops.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

from .fileio import atomic_write_text
from .providers.base import AttemptError

# Quota ids (google.rpc.QuotaFailure violations[].quotaId) look like
# GenerateRequestsPerMinutePerProjectPerModel / ...PerDay... (REFERENCE §3b).


class DispatchStopped(AttemptError):
    """The run stopped dispatching calls; this attempt is not made."""

    def __init__(self, message: str, reason: str):
        super().__init__(message, retryable=False, reason=reason)


@dataclass
class Verdict:
    action: str  # "retry" (the job's own back-off), "cooldown" (everyone waits), "stop" (no new calls)
    reason: str = ""
    message: str = ""
    until: float | None = None
    first: bool = False  # a stop: this attempt's job is the one that stopped the run (it says why)


def _pacific_midnight_after(now: float) -> float:
    """Next midnight in America/Los_Angeles (daily quotas reset then)."""
    try:
        from datetime import datetime, timedelta
        from zoneinfo import ZoneInfo

        tz = ZoneInfo("America/Los_Angeles")
        local = datetime.fromtimestamp(now, tz)
        nxt = (local + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
        return nxt.timestamp()
    except Exception:  # no tz database: 08:00 UTC is midnight PST
        day = 86400.0
        return (math.floor((now - 8 * 3600) / day) + 1) * day + 8 * 3600


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M %Z", time.localtime(ts))


def classify(err: AttemptError, provider: str, max_retry_wait_s: float, now: float | None = None) -> Verdict:
    """What one failed attempt means for the whole run."""
    now = time.time() if now is None else now
    status, reason = err.status, err.reason or ""
    if status == 200 and getattr(err, "code", None):  # an error inside an HTTP 200 answer (OpenRouter)
        status = err.code
    quota = getattr(err, "quota", None) or []
    if status == 429 or reason == "RATE_LIMIT":
        ids = [str(q.get("quotaId", "")) for q in quota]
        values = [str(q.get("quotaValue", "")) for q in quota]
        named = ", ".join(i for i in ids if i) or "a request quota"
        if "0" in values:
            return Verdict(
                "stop",
                "QUOTA_ZERO",
                f"the API answers 429 with a quota of 0 for {named}: this key's project is not entitled "
                "to this model (enable billing / check the model's tier), then run again",
            )
        if any("PerDay" in i or "per_day" in i.lower() for i in ids):
            reset = _pacific_midnight_after(now)
            return Verdict(
                "stop",
                "QUOTA_DAY",
                f"daily quota {named} ran out; it resets at midnight Pacific time ({_when(reset)}): "
                "run the same command again after that",
                until=reset,
            )
        delay = err.retry_after
        if delay is not None and delay > max_retry_wait_s:
            return Verdict(
                "stop",
                "QUOTA_WAIT",
                f"the API asks to wait {delay:.0f} s ({named}), more than api.max_retry_wait_s="
                f"{max_retry_wait_s:g}: run the same command again after {_when(now + delay)}",
                until=now + delay,
            )
        if delay is not None:
            return Verdict("cooldown", "QUOTA_MINUTE", f"{named}: every job pauses {delay:.0f} s", until=now + delay)
        return Verdict("retry")
    if status == 402:
        return Verdict(
            "stop",
            "NO_CREDITS",
            "HTTP 402 payment required: the account is out of credits or the key reached its limit; "
            "add credits or raise the key's limit, then run again",
        )
    if status == 401 or "API_KEY_INVALID" in err.message:
        where = (
            "openrouter.secret / OPENROUTER_API_KEY" if provider == "openrouter" else "gemini.secret / GEMINI_API_KEY"
        )
        return Verdict("stop", "BAD_KEY", f"the API key is not valid ({err.message[:160]}): check {where}")
    if status == 403 and provider == "gemini":
        return Verdict(
            "stop",
            "PERMISSION_DENIED",
            f"HTTP 403 PERMISSION_DENIED: the key may not use this API or model ({err.message[:160]}): "
            "check the key's project and the model",
        )
    if status == 404:
        return Verdict(
            "stop",
            "NO_MODEL",
            f"HTTP 404: the model does not exist for this API ({err.message[:160]}): check api.model",
        )
    if status is not None and 300 <= status < 400:
        return Verdict("stop", "REDIRECT", err.message)
    return Verdict("retry")


class Governor:
    """The run's shared API state (see the module docstring)."""

    def __init__(
        self,
        directory,
        *,
        per_minute: int | None = None,
        max_retry_wait_s: float = 120.0,
        provider: str = "gemini",
        say=None,
    ):
        self.dir = Path(directory)
        self.per_minute = int(per_minute) if per_minute else None
        self.max_retry_wait_s = float(max_retry_wait_s)
        self.provider = provider
        self.say = say or (lambda m: None)
        self.dir.mkdir(parents=True, exist_ok=True)

    # --- stop
    @property
    def stop_path(self) -> Path:
        return self.dir / "stop.json"

    def stopped(self) -> dict | None:
        try:
            return json.loads(self.stop_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def stop(self, verdict: Verdict) -> bool:
        """Record the stop; True for the first writer."""
        data = json.dumps(
            {"reason": verdict.reason, "message": verdict.message, "until": verdict.until, "ts": time.time()}
        ).encode()
        try:
            fd = os.open(self.stop_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            return False
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        return True

    def check_stop(self) -> None:
        stop = self.stopped()
        if stop is not None:
            raise DispatchStopped(f"the run stopped buying ({stop.get('reason', '')})", "RUN_STOPPED")

    # --- cool-down
    @property
    def pause_path(self) -> Path:
        return self.dir / "pause_until"

    def paused_until(self) -> float:
        try:
            return float(self.pause_path.read_text().strip() or 0)
        except (OSError, ValueError):
            return 0.0

    def pause(self, until: float) -> None:
        if until > self.paused_until():
            atomic_write_text(self.pause_path, f"{until:.3f}\n", durable=False)

    # --- rate limit
    def _claim_tick(self) -> float:
        """Claim the next free start time; returns it."""
        interval = 60.0 / self.per_minute
        ticks = self.dir / "ticks"
        ticks.mkdir(exist_ok=True)
        hint_path = self.dir / "next_tick"
        try:
            hint = int(hint_path.read_text().strip() or 0)
        except (OSError, ValueError):
            hint = 0
        k = max(hint, math.ceil(time.time() / interval))
        while True:
            try:
                os.close(os.open(ticks / str(k), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
                break
            except FileExistsError:
                k += 1
        atomic_write_text(hint_path, f"{k + 1}\n", durable=False)
        old = ticks / str(k - 4 * self.per_minute)  # keep the directory small
        try:
            old.unlink()
        except FileNotFoundError:
            pass
        return k * interval

    def may_dispatch(self) -> bool:
        """Right before the request goes out (the call slot held): False when a cool-down began
        meanwhile (the caller gives the slot back and waits); DispatchStopped when the run stopped."""
        self.check_stop()
        return self.paused_until() <= time.time()

    def before_call(self, sleep=time.sleep) -> None:
        """Wait for the cool-down (no call slot held); DispatchStopped when the run stopped."""
        self.check_stop()
        while True:
            wait = self.paused_until() - time.time()
            if wait <= 0:
                break
            sleep(min(wait, 60.0))
            self.check_stop()

    def pace(self, sleep=time.sleep) -> None:
        """Wait for this call's rate-limit tick, claimed once the call holds its slot (a tick
        claimed before a long wait for a slot would have passed by then: the calls queued
        behind the slots would start together, past api.max_requests_per_minute)."""
        if self.per_minute:
            wait = self._claim_tick() - time.time()
            if wait > 0:
                sleep(wait)

    def after_error(self, err: AttemptError) -> Verdict:
        """Share what a failed attempt means; the verdict (stop / cooldown / retry)."""
        verdict = classify(err, self.provider, self.max_retry_wait_s)
        err.verdict = verdict
        if verdict.action == "stop":
            verdict.first = self.stop(verdict)
            if verdict.first:
                self.say(f"run stopped buying: {verdict.message}")
        elif verdict.action == "cooldown" and verdict.until:
            self.pause(verdict.until)
        return verdict


def for_config(cfg: dict, say=None) -> Governor:
    from . import config as config_mod
    from . import runs

    api = cfg["api"]
    return Governor(
        runs.directory(config_mod.output_dir(cfg)) / "api",
        per_minute=api.get("max_requests_per_minute"),
        max_retry_wait_s=float(api["max_retry_wait_s"]),
        provider=api["provider"],
        say=say,
    )
