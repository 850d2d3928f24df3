"""The Gemini Batch API and Files API on the wire (REFERENCE §3b).

- upload:   resumable ``POST {root}/upload/v1beta/files`` (start), then the bytes
            to the ``X-Goog-Upload-URL`` it answers (``upload, finalize``)
- create:   ``POST {base}/models/{model}:batchGenerateContent`` with the file name
- get:      ``GET {base}/batches/{id}``
- list:     ``GET {base}/batches?pageSize=&pageToken=`` (every page; no filter exists)
- cancel:   ``POST {base}/batches/{id}:cancel``
- download: ``GET {root}/download/v1beta/files/batch-…:download?alt=media``,
            streamed to a file (result ids are too long for ``files.get``)

The key goes only into the ``x-goog-api-key`` header; redirects are never
followed (the header would go with them).  Reads (get, list, download) are
retried on transient failures; ``create`` is not idempotent and is never
retried here (the caller looks the batch up by its display name instead).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote as url_quote, urlsplit

import requests

from .. import keys
from . import transport

# metadata.state (REST) and the SDK's JOB_STATE_* spelling
TERMINAL = {"SUCCEEDED", "FAILED", "CANCELLED", "EXPIRED"}


class BatchApiError(Exception):
    """An API call failed; ``ambiguous`` = the request may have been carried out (no answer seen)."""

    def __init__(self, message: str, *, status: int | None = None, retryable: bool = False, ambiguous: bool = False):
        super().__init__(message)
        self.message, self.status, self.retryable, self.ambiguous = message, status, retryable, ambiguous


def short_state(state) -> str:
    """``BATCH_STATE_RUNNING`` / ``JOB_STATE_RUNNING`` -> ``RUNNING``."""
    s = str(state or "")
    for prefix in ("BATCH_STATE_", "JOB_STATE_"):
        if s.startswith(prefix):
            return s[len(prefix) :]
    return s or "UNKNOWN"


@dataclass
class BatchStatus:
    """What a get/list says about one batch."""

    name: str
    display_name: str
    state: str  # short: PENDING, RUNNING, SUCCEEDED, FAILED, CANCELLED, EXPIRED
    done: bool
    responses_file: str | None
    counts: (
        dict  # requestCount, successfulRequestCount, failedRequestCount, pendingRequestCount -> int (absent = missing)
    )
    error: str

    @property
    def terminal(self) -> bool:
        return self.done or self.state in TERMINAL

    @classmethod
    def from_operation(cls, op: dict) -> "BatchStatus":
        meta = op.get("metadata") if isinstance(op.get("metadata"), dict) else {}
        response = op.get("response") if isinstance(op.get("response"), dict) else {}
        output = meta.get("output") if isinstance(meta.get("output"), dict) else {}
        stats = meta.get("batchStats") or meta.get("batch_stats") or {}
        counts = {}
        for k, v in stats.items() if isinstance(stats, dict) else ():
            try:
                counts[k] = int(v)  # int64 counts arrive as strings
            except (TypeError, ValueError):
                pass
        err = op.get("error") or meta.get("error") or {}
        return cls(
            name=str(op.get("name") or meta.get("name") or ""),
            display_name=str(meta.get("displayName") or meta.get("display_name") or ""),
            state=short_state(meta.get("state")),
            done=bool(op.get("done")),
            responses_file=(
                output.get("responsesFile")
                or output.get("responses_file")
                or response.get("responsesFile")
                or response.get("responses_file")
                or None
            ),
            counts=counts,
            error=(f"{err.get('code', '')} {err.get('message', '')}".strip() if isinstance(err, dict) else str(err)),
        )


class BatchClient:
    """Plain-requests client of the calls batch mode needs."""

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str,
        timeout_s: float = 120.0,
        retries: int = 4,
        backoff_s: float = 2.0,
        session: requests.Session | None = None,
    ):
        if not api_key:
            raise BatchApiError(
                "api.mode batch needs a Gemini API key (gemini.secret, GEMINI_API_KEY or GOOGLE_API_KEY)"
            )
        self._key = api_key
        self.base_url = keys.check_base_url(base_url.rstrip("/"))  # …/v1beta
        parts = urlsplit(self.base_url)
        self.root = f"{parts.scheme}://{parts.netloc}"
        self.version = parts.path.strip("/").split("/")[-1] or "v1beta"
        self.timeout_s = float(timeout_s)
        self.retries = max(1, int(retries))
        self.backoff_s = float(backoff_s)
        self.session = session or requests.Session()

    def __repr__(self) -> str:  # never shows the key
        return f"BatchClient(base_url={self.base_url!r})"

    # --- plumbing
    def _request(
        self, method: str, url: str, *, what: str, json_body=None, data=None, headers=None, stream=False, retry=True
    ):
        """One HTTP exchange (retried on transient failures when ``retry``); the response."""
        send = {"x-goog-api-key": self._key, **(headers or {})}
        if json_body is not None:
            data = json.dumps(json_body).encode("utf-8")
            send.setdefault("Content-Type", "application/json")
        attempts = self.retries if retry else 1
        for n in range(1, attempts + 1):
            try:
                resp = self.session.request(
                    method,
                    url,
                    data=data,
                    headers=send,
                    stream=stream,
                    timeout=(min(self.timeout_s, 30.0), self.timeout_s),
                    allow_redirects=False,
                )
            except requests.RequestException as exc:
                err = BatchApiError(
                    transport.redact(f"{what}: connection failed: {transport._describe(exc, self._key)}", self._key),
                    retryable=True,
                    ambiguous=True,
                )
            else:
                if 200 <= resp.status_code < 300:
                    return resp
                err = self._status_error(resp, what)
                resp.close()
            if not (retry and err.retryable) or n == attempts:
                raise err
            time.sleep(self.backoff_s * n)
        raise AssertionError("unreachable")

    def _status_error(self, resp, what: str) -> BatchApiError:
        status = resp.status_code
        if 300 <= status < 400:
            return BatchApiError(
                f"{what}: HTTP {status} redirect to {resp.headers.get('Location', '?')!r} not followed "
                "(the API key would go with it); check api.base_url",
                status=status,
            )
        try:
            payload = json.loads(resp.content[:65536].decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            payload = None
        err = payload.get("error") if isinstance(payload, dict) else None
        if isinstance(err, dict):
            reasons = [d.get("reason") for d in err.get("details") or [] if isinstance(d, dict) and d.get("reason")]
            text = f"HTTP {status} {err.get('status', '')}: {transport.quote(err.get('message', ''))[1:-1]}"
            if reasons:
                text += f" ({', '.join(map(str, reasons))})"
            if "API_KEY_INVALID" in reasons:
                text += " - check the key in gemini.secret / GEMINI_API_KEY"
        else:
            text = f"HTTP {status}: {transport.quote(resp.content[:200].decode('utf-8', 'replace'))[1:-1]}"
        return BatchApiError(
            transport.redact(f"{what}: {text}", self._key),
            status=status,
            retryable=transport.retryable_status(status),
            ambiguous=status >= 500,
        )

    def _json(self, resp, what: str) -> dict:
        try:
            payload = resp.json()
        except ValueError:
            payload = None
        finally:
            resp.close()
        if not isinstance(payload, dict):
            raise BatchApiError(f"{what}: the answer is not a JSON object", retryable=True, ambiguous=True)
        return payload

    # --- calls
    def upload(self, path, display_name: str, mime_type: str = "application/jsonl") -> str:
        """Upload a file with the resumable protocol; its name (``files/…``)."""
        path = Path(path)
        size = path.stat().st_size
        start = self._request(
            "POST",
            f"{self.root}/upload/{self.version}/files",
            what="upload (start)",
            json_body={"file": {"display_name": display_name}},
            headers={
                "X-Goog-Upload-Protocol": "resumable",
                "X-Goog-Upload-Command": "start",
                "X-Goog-Upload-Header-Content-Length": str(size),
                "X-Goog-Upload-Header-Content-Type": mime_type,
            },
        )
        upload_url = start.headers.get("X-Goog-Upload-URL") or start.headers.get("x-goog-upload-url")
        start.close()
        if not upload_url:
            raise BatchApiError("upload (start): no X-Goog-Upload-URL in the answer", retryable=True)
        if urlsplit(upload_url).netloc != urlsplit(self.root).netloc:
            raise BatchApiError(f"upload (start): upload URL on another host ({urlsplit(upload_url).netloc}); refused")
        with open(path, "rb") as fh:
            resp = self._request(
                "POST",
                upload_url,
                what="upload",
                data=fh,
                retry=False,
                headers={
                    "X-Goog-Upload-Command": "upload, finalize",
                    "X-Goog-Upload-Offset": "0",
                    "Content-Length": str(size),
                    "Content-Type": mime_type,
                },
            )
        payload = self._json(resp, "upload")
        name = (payload.get("file") or {}).get("name") if isinstance(payload.get("file"), dict) else payload.get("name")
        if not name:
            raise BatchApiError("upload: the answer names no file", retryable=True)
        return str(name)

    def create(self, model: str, display_name: str, file_name: str) -> BatchStatus:
        """Create a batch job (NOT idempotent: never retried here)."""
        url = f"{self.base_url}/models/{url_quote(model, safe='-._~')}:batchGenerateContent"
        body = {"batch": {"display_name": display_name, "input_config": {"file_name": file_name}}}
        resp = self._request("POST", url, what="create batch", json_body=body, retry=False)
        status = BatchStatus.from_operation(self._json(resp, "create batch"))
        if not status.name:
            raise BatchApiError("create batch: the answer names no batch", ambiguous=True)
        return status

    def get(self, name: str) -> BatchStatus:
        resp = self._request("GET", f"{self.base_url}/{name}", what=f"get {name}")
        return BatchStatus.from_operation(self._json(resp, f"get {name}"))

    def list_all(self, page_size: int = 100):
        """Every batch of the project, page by page."""
        token = None
        while True:
            url = f"{self.base_url}/batches?pageSize={page_size}" + (f"&pageToken={url_quote(token)}" if token else "")
            payload = self._json(self._request("GET", url, what="list batches"), "list batches")
            for op in payload.get("operations") or payload.get("batches") or []:
                if isinstance(op, dict):
                    yield BatchStatus.from_operation(op)
            token = payload.get("nextPageToken")
            if not token:
                return

    def cancel(self, name: str) -> None:
        self._request("POST", f"{self.base_url}/{name}:cancel", what=f"cancel {name}", json_body={}).close()

    def download(self, file_name: str, dest) -> int:
        """Stream a (result) file to ``dest`` via a temporary name; the number of bytes."""
        file_id = file_name.split("/", 1)[1] if file_name.startswith("files/") else file_name
        url = f"{self.root}/download/{self.version}/files/{url_quote(file_id, safe='-._~')}:download?alt=media"
        dest = Path(dest)
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.part")
        for n in range(1, self.retries + 1):
            resp = self._request("GET", url, what=f"download {file_name}", stream=True)
            size = 0
            try:
                with open(tmp, "wb") as fh:
                    for chunk in resp.iter_content(chunk_size=1024 * 1024):
                        fh.write(chunk)
                        size += len(chunk)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, dest)
                return size
            except requests.RequestException as exc:
                if n == self.retries:
                    raise BatchApiError(
                        transport.redact(
                            f"download {file_name}: transfer failed: {transport._describe(exc, self._key)}", self._key
                        ),
                        retryable=True,
                    ) from None
                time.sleep(self.backoff_s * n)
            finally:
                resp.close()
                if tmp.exists():
                    tmp.unlink()
        raise AssertionError("unreachable")
