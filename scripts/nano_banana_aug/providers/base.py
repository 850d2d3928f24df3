"""The provider interface: one small class per backend, one call per attempt.

A provider turns a :class:`Request` (source image bytes + prompt + the
augmentation's local recipe) into a :class:`Generation` (image bytes or an
already decoded image, plus accounting), or raises :class:`AttemptError`
saying whether another attempt may help.  Retrying, waiting and counting
attempts live in :func:`call_with_retries`, the same loop for every provider,
so no provider re-implements them and the core never branches on a
provider's name.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol


@dataclass
class Request:
    """Everything a provider may need to produce one output image."""

    image_bytes: bytes  # the source file's original bytes
    mime_type: str  # detected from the bytes, e.g. "image/jpeg"
    prompt: str  # prompt_prefix + blank line + the augmentation's prompt
    image_id: str
    aug_name: str
    variant_idx: int
    seed: int = 0  # for deterministic providers (local)
    recipe: dict | None = None  # the augmentation's `local:` recipe
    source_path: str = ""  # for messages only; never sent anywhere
    aspect_ratio: str | None = None  # api.match_aspect: the ratio the (padded) source was padded to


def image_config_for(base: dict | None, request: "Request", *, ratio_key: str, size_key: str) -> dict | None:
    """``api.image_config`` with the request's aspect ratio (match_aspect) put in, in the provider's
    spelling; the size defaults to 2K then (REFERENCE §3: only Gemini 3 Pro Image honours it)."""
    cfg = dict(base or {})
    if not request.aspect_ratio:
        return cfg or None
    for k in ("aspectRatio", "aspect_ratio"):
        cfg.pop(k, None)
    cfg[ratio_key] = request.aspect_ratio
    if not any(k in cfg for k in ("imageSize", "image_size")):
        cfg[size_key] = "2K"
    return cfg


@dataclass
class Usage:
    """Token usage as reported by the service (None = not reported)."""

    prompt_tokens: int | None = None
    candidates_tokens: int | None = None  # completion tokens for OpenRouter
    thoughts_tokens: int | None = None
    output_image_tokens: int | None = None  # image part of the output, if broken down
    total_tokens: int | None = None
    cost_usd: float | None = None  # cost reported by the service (OpenRouter)


@dataclass
class Generation:
    """A successful answer: an image plus what the service said about it."""

    data: bytes | None = None  # encoded image as returned by the service
    image: Any = None  # or an already decoded PIL image (local provider)
    mime_type: str = ""  # as labelled by the service (may be wrong)
    model_version: str = ""  # Gemini modelVersion / OpenRouter model
    response_id: str = ""  # Gemini responseId / OpenRouter id
    text: str = ""  # any text the model returned next to the image
    usage: Usage = field(default_factory=Usage)
    finish_reason: str = ""  # Gemini finishReason / OpenRouter native_finish_reason
    # filled by call_with_retries:
    attempts: int = 0
    seconds: float = 0.0
    result: Any = None  # what on_answer returned (e.g. the decoded image)


class AttemptError(Exception):
    """One attempt failed.

    ``retryable`` says whether a new attempt may succeed (429, 5xx, timeouts,
    safety blocks, text-only answers) or not (400/401/403/404, 402 no
    credits).  ``retry_after`` is the server's requested wait in seconds
    (RetryInfo.retryDelay / Retry-After), if any.  The message must never
    contain the API key.
    """

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        status: int | None = None,
        reason: str = "",
        retry_after: float | None = None,
        usage: Usage | None = None,
        billed: bool | None = None,
    ):
        super().__init__(message)
        self._billed = billed  # None: decided by may_be_billed
        self.message = message
        self.retryable = retryable
        self.status = status  # HTTP status, if there was one
        self.reason = reason  # short machine-readable reason, e.g. IMAGE_SAFETY, HTTP_429
        self.retry_after = retry_after
        self.usage = usage  # blocked answers may still be billed

    @property
    def billed(self) -> bool:
        if self._billed is not None:
            return self._billed
        return may_be_billed(self.status, self.reason, self.usage is not None)


def may_be_billed(status: int | None, reason: str, has_usage: bool) -> bool:
    """Whether the service may bill a failed attempt: it reported usage, it answered 200 (a
    refusal, an undecodable image, a body lost after its headers), or the request was sent and no
    headers came (``TIMEOUT``: none within the timeout; ``DROPPED``: the connection was closed
    first): the model may have made, and billed, the answer. A 429/5xx status, a redirect or a
    refused connection is not billed."""
    return bool(has_usage) or status == 200 or (status is None and reason in ("TIMEOUT", "DROPPED"))


class GenerationFailed(Exception):
    """All attempts failed (or a non-retryable error ended them)."""

    def __init__(self, last: AttemptError, attempts: int, seconds: float):
        super().__init__(last.message)
        self.last = last
        self.attempts = attempts
        self.seconds = seconds


class Provider(Protocol):
    """What every backend implements."""

    name: str  # "gemini", "openrouter", "local"
    model: str  # model id, for sidecars ("local" uses a recipe engine version)
    paid: bool  # whether an attempt costs money (budget guard, plan)

    def attempt(self, request: Request) -> Generation:
        """Make exactly one attempt; raise AttemptError on failure."""
        ...


@dataclass
class RetryPolicy:
    max_attempts: int = 3  # api.max_retries: total attempts
    backoff_s: float = 5.0  # api.retry_backoff_s: wait backoff_s * attempt (+ jitter)
    max_wait_s: float = 120.0  # cap for server-requested waits
    jitter: float = 0.25  # +/- fraction of the computed wait


def backoff_delay(policy: RetryPolicy, attempt: int, err: AttemptError, rng=random) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
    base = policy.backoff_s * attempt
    wait = base * (1.0 + rng.uniform(-policy.jitter, policy.jitter)) if base > 0 else 0.0
    if err.retry_after is not None and err.retry_after > wait:
        wait = err.retry_after
    return max(0.0, min(wait, policy.max_wait_s))


def call_with_retries(
    provider: Provider,
    request: Request,
    policy: RetryPolicy,
    *,
    before_attempt: Callable[[int], None] | None = None,
    after_attempt: Callable[[int, Generation | None, AttemptError | None], None] | None = None,
    on_answer: Callable[[int, Generation], Any] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Generation:
    """Run ``provider.attempt`` until it succeeds, a non-retryable error
    occurs, or ``policy.max_attempts`` attempts were made.

    ``before_attempt(n)`` runs before attempt n (budget guard): an
    AttemptError it raises stops the loop with GenerationFailed counting only
    the attempts really made.  ``on_answer(n, gen)`` runs on every answer as
    soon as it arrived (store it, decode it); its return value becomes
    ``gen.result`` and an AttemptError it raises makes that answer a failed
    attempt (e.g. an image that does not decode), retried like any other.
    ``after_attempt`` sees each outcome (accounting, logging).
    """
    started = time.monotonic()
    attempts = 0
    last: AttemptError | None = None
    while attempts < max(1, policy.max_attempts):
        if before_attempt is not None:
            try:
                before_attempt(attempts + 1)
            except AttemptError as err:  # e.g. the budget: this attempt is not made
                raise GenerationFailed(err, attempts, time.monotonic() - started) from None
        attempts += 1
        gen = None
        try:
            gen = provider.attempt(request)
            if on_answer is not None:
                gen.result = on_answer(attempts, gen)
        except AttemptError as err:
            if gen is not None and err.usage is None:
                err.usage = gen.usage  # an answer that arrived but cannot be used was billed
            last = err
            if after_attempt is not None:
                after_attempt(attempts, None, err)
            if not err.retryable or attempts >= policy.max_attempts:
                break
            sleep(backoff_delay(policy, attempts, err))
            continue
        gen.attempts = attempts
        gen.seconds = time.monotonic() - started
        if after_attempt is not None:
            after_attempt(attempts, gen, None)
        return gen
    assert last is not None
    raise GenerationFailed(last, attempts, time.monotonic() - started)
