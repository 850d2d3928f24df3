"""Plain-``requests`` helpers shared by the HTTP providers.

One POST per attempt, bounded by ``timeout_s``; every way it can fail
(timeout, dropped connection, HTTP error status, unreadable body) becomes an
:class:`AttemptError` that says whether another attempt may help and how long
the server asked us to wait.  Nothing here retries: that is
:func:`nano_banana_aug.providers.base.call_with_retries`'s job.

No message built here contains the API key: callers pass it as ``secret`` and
every message goes through :func:`redact` as a last line of defence.
"""

from __future__ import annotations

import email.utils
import json
import re
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass

import requests
from urllib3.exceptions import NewConnectionError

from .base import AttemptError

# Statuses where a new attempt may succeed (REFERENCE §3, §4).
RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
# Anything larger than this is not an answer we want to hold in memory.
MAX_RESPONSE_BYTES = 256 * 1024 * 1024
QUOTE_CHARS = 200


@dataclass
class HttpResponse:
    """What one POST produced: status, headers and the raw body."""

    status: int
    headers: dict  # case-insensitive (requests' CaseInsensitiveDict)
    body: bytes
    seconds: float

    def json(self):
        """The body parsed as JSON, or None when it is not JSON."""
        try:
            return json.loads(self.body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return None


def redact(text: str, secret: str | None) -> str:
    """``text`` with every occurrence of ``secret`` replaced by ``***``."""
    if secret and secret in text:
        text = text.replace(secret, "***")
    return text


def quote(text, limit: int = QUOTE_CHARS) -> str:
    """A short, one-line, double-quoted rendering of a service message or model text."""
    if text is None:
        return '""'
    if not isinstance(text, str):
        text = json.dumps(text, ensure_ascii=False, separators=(",", ":"))
    one_line = " ".join(text.split())
    if len(one_line) > limit:
        one_line = one_line[: limit - 1].rstrip() + "…"
    return f'"{one_line}"'


def parse_duration(value) -> float | None:
    """Seconds from a protobuf Duration: ``"53s"``, ``"1.5s"``, ``"0.250s"``,
    or the object form ``{"seconds": 53, "nanos": 0}``.  None if unreadable."""
    if isinstance(value, dict):
        try:
            secs = float(value.get("seconds", 0) or 0) + float(value.get("nanos", 0) or 0) / 1e9
        except (TypeError, ValueError):
            return None
        return secs if secs >= 0 else None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value) if value >= 0 else None
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*s?\s*", value)
        if m:
            return float(m.group(1))
    return None


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header: delta-seconds or an HTTP-date."""
    if not value:
        return None
    value = value.strip()
    try:
        secs = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        secs = when.timestamp() - (time.time() if now is None else now)
        return max(0.0, secs)
    return secs if secs >= 0 else None


def retry_delay_from_details(details) -> float | None:
    """``retryDelay`` of a ``google.rpc.RetryInfo`` entry in a Google error's details."""
    if not isinstance(details, list):
        return None
    for item in details:
        if isinstance(item, dict) and str(item.get("@type", "")).endswith("google.rpc.RetryInfo"):
            found = parse_duration(item.get("retryDelay", item.get("retry_delay")))
            if found is not None:
                return found
    return None


def _causes(exc: BaseException):
    """The exception behind a requests/urllib3 error and the ones behind it, outermost first."""
    seen = set()
    cur: BaseException | None = exc
    while isinstance(cur, BaseException) and id(cur) not in seen:
        seen.add(id(cur))
        yield cur
        nxt = getattr(cur, "reason", None)
        if not isinstance(nxt, BaseException):
            nxt = next((a for a in getattr(cur, "args", ()) if isinstance(a, BaseException)), None)
        cur = nxt if isinstance(nxt, BaseException) else (cur.__cause__ or cur.__context__)


def _root_cause(exc: BaseException) -> BaseException:
    """The innermost exception behind a requests/urllib3 error (for short messages)."""
    *_, root = _causes(exc)
    return root


def _never_connected(exc: BaseException) -> bool:
    """The connection was never made (refused, no such host, TLS or proxy failed): nothing was sent."""
    never = (NewConnectionError, ConnectionRefusedError, socket.gaierror, ssl.SSLError)  # TLS: before any request
    return isinstance(exc, (requests.exceptions.SSLError, requests.exceptions.ProxyError)) or any(
        isinstance(c, never) for c in _causes(exc)
    )


def _describe(exc: BaseException, secret: str | None = None) -> str:
    root = _root_cause(exc)
    text = redact(str(root), secret)  # before cutting: a cut key would no longer be found
    return f"{type(root).__name__}: {quote(text, 160)[1:-1]}" if text else type(root).__name__


def post_json(
    session: requests.Session,
    url: str,
    *,
    headers: dict,
    body: dict,
    timeout_s: float,
    secret: str | None = None,
    on_200: Callable[[], None] | None = None,
) -> HttpResponse:
    """POST ``body`` as JSON and read the whole answer. ``on_200()`` runs as soon as a 200's headers
    are in, before its body: from there the answer is made and billed (the answer job defers a stop).

    The headers must arrive within ``timeout_s``. A 200's body then has
    ``timeout_s`` of its own: the answer was made (and billed) before its
    headers were sent, so a body cut short by a deadline counted from the
    request (the model's minutes of work) would throw a paid answer away and
    pay for it again. Any other status's body is given up ``timeout_s`` after
    the start (checked between reads; no read waits longer than ``timeout_s``).
    So an attempt ends within 2 x ``timeout_s`` (what the call slots' and locks'
    waits assume). Timeouts, refused or dropped connections and truncated
    bodies raise a retryable :class:`AttemptError` (with ``status=200`` when
    the 200's headers had arrived); HTTP statuses are returned as they are (see
    :func:`status_error`).
    """
    started = time.monotonic()
    deadline = started + timeout_s
    data = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    send_headers = {"Content-Type": "application/json", **headers}
    status = None  # once the headers are in
    try:
        # never follow a redirect: requests would send the key header along, even to another host over http
        resp = session.post(
            url,
            data=data,
            headers=send_headers,
            timeout=(min(timeout_s, 30.0), timeout_s),
            stream=True,
            allow_redirects=False,
        )
        if 300 <= resp.status_code < 400:
            location = resp.headers.get("Location", "?")
            resp.close()
            raise AttemptError(
                redact(
                    f"HTTP {resp.status_code} redirect to {quote(location)} not followed (the API key would go "
                    "with it); check api.base_url",
                    secret,
                ),
                retryable=False,
                status=resp.status_code,
                reason="REDIRECT",
            )
        status, resp_headers = resp.status_code, resp.headers
        if status == 200:
            deadline = time.monotonic() + timeout_s
            if on_200 is not None:
                on_200()
        try:
            chunks, size = [], 0
            for chunk in resp.iter_content(chunk_size=256 * 1024):
                chunks.append(chunk)
                size += len(chunk)
                if size > MAX_RESPONSE_BYTES:
                    raise AttemptError(
                        f"response larger than {MAX_RESPONSE_BYTES // (1024 * 1024)} MiB; refused",
                        retryable=False,
                        status=status,
                        reason="RESPONSE_TOO_LARGE",
                    )
                if time.monotonic() > deadline:
                    raise requests.Timeout("response body not complete within the timeout")
        finally:
            resp.close()
    except requests.RequestException as exc:
        after = " after HTTP 200 (the answer was made: billed)" if status == 200 else ""
        if isinstance(exc, requests.ConnectTimeout):  # nothing was sent: not billed
            message, reason = f"no connection within {min(timeout_s, 30.0):g} s", "CONNECTION"
        elif isinstance(exc, requests.Timeout) or isinstance(_root_cause(exc), TimeoutError):  # a read timeout
            # inside a body comes as ConnectionError(urllib3's ReadTimeoutError from the socket's TimeoutError).
            # Before the headers it may still be billed: the request was sent, the model may be making it
            message, reason = f"request timed out after {timeout_s:g} s (api.timeout_s){after}", "TIMEOUT"
        elif isinstance(exc, requests.ConnectionError) and (status is not None or _never_connected(exc)):
            message, reason = f"connection failed{after}", "CONNECTION"
        elif isinstance(exc, requests.ConnectionError):  # sent, then closed before any answer: like a timeout,
            # the model may have made, and billed, the answer
            message, reason = "connection dropped after the request was sent (may be billed)", "DROPPED"
        else:  # ChunkedEncodingError, ContentDecodingError, ...
            message, reason = f"transfer failed{after}", "TRANSFER"
        raise AttemptError(
            redact(f"{message}: {_describe(exc, secret)}", secret), retryable=True, status=status, reason=reason
        ) from None
    return HttpResponse(status=status, headers=resp_headers, body=b"".join(chunks), seconds=time.monotonic() - started)


def retryable_status(status: int) -> bool:
    """408, 429 and every 5xx may succeed later; other 4xx will not."""
    return status in RETRYABLE_STATUS or 500 <= status <= 599


def status_error(
    resp: HttpResponse,
    *,
    message: str,
    status_name: str = "",
    detail: str = "",
    retry_after: float | None = None,
    hint: str = "",
    secret: str | None = None,
) -> AttemptError:
    """The AttemptError for an HTTP error status.

    Message shape: ``HTTP 400 INVALID_ARGUMENT: <service message> (<detail>) <hint>``.
    ``retry_after`` defaults to the ``Retry-After`` header.
    """
    if retry_after is None:
        retry_after = parse_retry_after(resp.headers.get("Retry-After"))
    head = f"HTTP {resp.status}" + (f" {status_name}" if status_name else "")
    text = f"{head}: {quote(message)[1:-1]}" if message else head
    if detail:
        text += f" ({detail})"
    if hint:
        text += f" {hint}"
    return AttemptError(
        redact(text, secret),
        retryable=retryable_status(resp.status),
        status=resp.status,
        reason=f"HTTP_{resp.status}",
        retry_after=retry_after,
    )


def source_mime(request) -> str:
    """MIME type of the source from its bytes (not the file name); non-retryable error if unknown."""
    from ..imaging import sniff_mime
    from .base import AttemptError

    mime = sniff_mime(request.image_bytes)
    if mime is None:
        raise AttemptError(
            f"source image {request.source_path or request.image_id} is not a recognised image format",
            retryable=False,
            reason="BAD_INPUT_IMAGE",
        )
    return mime


def json_object(resp: "HttpResponse", payload):
    """The payload of an HTTP 200 answer, which must be a JSON object (retryable error otherwise)."""
    from .base import AttemptError

    if not isinstance(payload, dict):
        raise AttemptError(
            f"HTTP 200 with a body that is not a JSON object: {quote(resp.body[:200].decode('utf-8', 'replace'))}",
            retryable=True,
            status=200,
            reason="BAD_RESPONSE",
        )
    return payload
