"""Gemini Batch API + Files API for the stand-in (the HTTP side lives in ``server.py``).

Wire format, as the real service answers (sources: the google-genai 3.6.1 SDK's
``batches.py``/``files.py``/``_api_client.py``, the Gemini API reference for
``batches``/``files``/``media.upload``, and captured real answers quoted in public
code and issues, see the notes in ``REFERENCE.md`` §3b):

Files
  ``POST /upload/v1beta/files`` with ``X-Goog-Upload-Protocol: resumable``,
  ``X-Goog-Upload-Command: start``, ``X-Goog-Upload-Header-Content-Length/-Type`` and
  an optional JSON body ``{"file": {"displayName"|"display_name", "name", ...}}``
  -> 200, empty body, headers ``X-Goog-Upload-URL`` (= ``X-Goog-Upload-Control-URL``,
  an absolute URL on this server: ``/upload/v1beta/files?upload_id=…&upload_protocol=resumable``),
  ``X-Goog-Upload-Status: active``, ``X-GUploader-UploadID``,
  ``X-Goog-Upload-Chunk-Granularity`` (8 MiB, see ``granularity``).
  The upload URL is a capability: like the real one it needs no API key (the SDK
  sends none there).  ``POST <upload url>`` with ``X-Goog-Upload-Command: upload`` /
  ``upload, finalize`` / ``finalize`` / ``query`` / ``cancel`` and ``X-Goog-Upload-Offset``
  (must equal the bytes received so far; non-final chunks must be a multiple of the
  granularity; the final size must equal the declared length) -> ``active`` chunks
  answer 200 with an empty body and ``X-Goog-Upload-Size-Received``; finalize answers
  ``X-Goog-Upload-Status: final`` and ``{"file": {"name": "files/<12 chars>",
  "displayName"?, "mimeType", "sizeBytes": "<int64 string>", "createTime", "updateTime",
  "expirationTime" (+48 h), "sha256Hash": base64(hex digest) (sic, as the real service),
  "uri", "state": "ACTIVE", "source": "UPLOADED"}}``.  A repeated finalize of a finished
  session answers the same file again (no second file).  Errors during an upload carry
  ``X-Goog-Upload-Status: final`` so the SDK stops (it retries answers without that header).
  ``GET /v1beta/files/{id}`` -> the File; ``DELETE`` -> ``{}``; ``GET /v1beta/files``
  (``pageSize`` default 10, max 100, ``pageToken``) -> ``{"files": [...], "nextPageToken"}``.
  An id over 40 characters -> 400 ``* GetFileRequest.name: File ID (name excluding
  'files/') cannot be more than 40 characters.`` (``DeleteFileRequest`` for delete); an
  unknown or deleted file -> 403 ``You do not have permission to access the File <id>
  or it may not exist.`` (both as the real service answers).

Batches
  ``POST /v1beta/models/{model}:batchGenerateContent`` ``{"batch": {"displayName"
  (required), "inputConfig": {"fileName": "files/…"} | {"requests": {"requests":
  [{"request": …, "metadata": {"key": …}}]}}, "priority"?}}`` -> an Operation
  ``{"name": "batches/<36 chars>", "metadata": {"@type": "type.googleapis.com/
  google.ai.generativelanguage.v1main.GenerateContentBatch", "model": "models/…",
  "displayName", "inputConfig" (file input only), "createTime", "updateTime",
  "batchStats": {"requestCount": "N", "pendingRequestCount": "N"}, "state":
  "BATCH_STATE_PENDING", "name"}}`` (no ``done``).
  The JSONL input is checked when the batch is created, like the real service
  ("Error on line 1: invalid JSON, near column 1032: no such field: 'thinking_config'"):
  a line that is not JSON, not an object, has an unknown field (also inside the request,
  its contents/parts, ``generationConfig`` and ``imageConfig`` -- so a misplaced
  ``aspectRatio``), lacks ``request``, or has an inline ``data`` that is not base64 makes
  the create fail with 400 and one "Error on line N: ..." per bad line.  A line that is
  well-formed but cannot be served (unsupported aspect ratio or size, MIME type,
  undecodable image, no contents) becomes an *error line* in the results, with the same
  message the synchronous call would give in its 400.
  ``GET /v1beta/batches/{id}`` -> the Operation; finished: ``"done": true`` and
  SUCCEEDED: ``metadata.output.responsesFile`` = ``response.responsesFile`` =
  ``files/batch-<batch id>`` (42 characters: over the Files API limit, as for real),
  ``response["@type"]`` ``…v1main.GenerateContentBatchOutput``, ``endTime``;
  FAILED: an operation ``error`` (google.rpc.Status, gRPC code); CANCELLED/EXPIRED: no
  results, no ``error``.  ``batchStats`` counts are int64 strings and, like proto3 JSON,
  zero counts are left out (a finished batch shows ``{"requestCount": "9",
  "successfulRequestCount": "9"}``); ``set_stats("full")`` shows all four, ``"omit"``
  drops ``batchStats``.
  ``GET /v1beta/batches?pageSize=&pageToken=`` -> ``{"operations": [...],
  "nextPageToken"}`` newest first (default page size 10, max 100; no filter).
  ``POST /v1beta/batches/{id}:cancel`` -> ``{}`` (400 FAILED_PRECONDITION when already
  finished); ``DELETE /v1beta/batches/{id}`` -> ``{}`` (the job is forgotten, not
  cancelled: later gets are 404).
  Results: ``GET /download/v1beta/files/batch-…:download?alt=media`` (also the SDK's
  ``/v1beta/files/batch-…:download?alt=media``) streams the JSONL (chunked), lines
  ``{"response": <GenerateContentResponse exactly as generateContent answers>, "key"}``
  or ``{"error": {"code": <gRPC code, e.g. 3, 8, 13>, "message", "details"?}, "key"}``
  -- a google.rpc.Status, which has *no* ``status`` string (real lines look like
  ``{'message': 'An internal error has occurred…', 'code': 13}``) -- in reversed input
  order (the real order is unspecified).  Uploaded files cannot be downloaded (400).
  Inline batches answer ``output.inlinedResponses.inlinedResponses`` in input order.

Each JSONL line is answered, when the batch succeeds, by the same machinery as a
synchronous call: a ``RecordedRequest`` (protocol ``gemini``, ``batch=True``,
``batch_name``, ``key``) goes through ``GeminiProtocol.parse`` and the server's
``_choose`` (scripts, defaults, rules, ``match=``); error behaviours give error lines,
``drop`` an INTERNAL error line, ``slow``/``hold`` answer as their ``then`` at once.
These line records are *not* in ``server.requests`` (see ``server.batch_lines``).
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import re
import secrets
import string
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote

from .server import GEN_CONFIG_FIELDS, IMAGE_CONFIG_FIELDS, TOP_FIELDS, _camel, _get, decode_proto_bytes

TYPE_BATCH = "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatch"
TYPE_OUTPUT = "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatchOutput"

PENDING, RUNNING, SUCCEEDED = "BATCH_STATE_PENDING", "BATCH_STATE_RUNNING", "BATCH_STATE_SUCCEEDED"
FAILED, CANCELLED, EXPIRED = "BATCH_STATE_FAILED", "BATCH_STATE_CANCELLED", "BATCH_STATE_EXPIRED"
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED, EXPIRED})

# HTTP status of a synchronous error -> the gRPC code a batch error line carries
GRPC_CODE = {400: 3, 401: 16, 403: 7, 404: 5, 408: 4, 409: 10, 413: 3, 429: 8, 499: 1, 500: 13, 501: 12,
             502: 14, 503: 14, 504: 4}
INTERNAL_MESSAGE = ("An internal error has occurred. Please retry or report in "
                    "https://developers.generativeai.google/guide/troubleshooting")

BATCH_KINDS = {
    "succeed": "PENDING on create; the first `polls` gets (default 1) see RUNNING, the next one SUCCEEDED "
               "with results (polls=0: finished at creation, the create answer still says PENDING)",
    "hold": "PENDING on create, RUNNING from the first get on, until finish_batches(); then ends as `then` "
            "(succeed | fail | expire, default succeed)",
    "fail": "like succeed, but ends BATCH_STATE_FAILED with an operation `error` (`code`: gRPC code, default 13; "
            "`message`); no results",
    "expire": "like succeed, but ends BATCH_STATE_EXPIRED; no results",
}
BATCH_PARAMS = {"polls", "stats", "then", "code", "message"}
STATS_MODES = ("real", "full", "omit")
BATCH_STEPS = ("upload", "create", "poll", "download")
GRANULARITY = 8 * 1024 * 1024
MAX_FILE_ID = 40
FILE_TTL_NS = 48 * 3600 * 10**9
_ALNUM = string.ascii_lowercase + string.digits
_FILE_ID_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?")

FILE_FIELDS = {"name", "displayName", "mimeType", "sizeBytes", "createTime", "updateTime", "expirationTime",
               "sha256Hash", "uri", "downloadUri", "state", "source", "error", "videoMetadata"}
BATCH_FIELDS = {"name", "model", "displayName", "inputConfig", "output", "createTime", "endTime", "updateTime",
                "batchStats", "state", "priority"}
REQUEST_FIELDS = TOP_FIELDS | {"model"}
CONTENT_FIELDS = {"role", "parts"}
PART_FIELDS = {"text", "inlineData", "fileData", "thought", "thoughtSignature", "functionCall", "functionResponse",
               "executableCode", "codeExecutionResult", "videoMetadata", "mediaResolution", "partMetadata"}
BLOB_FIELDS = {"mimeType", "data"}
LINE_FIELDS = {"key", "request", "metadata"}


# ---------------------------------------------------------------- records

@dataclass
class BatchBehaviour:
    """How a batch job lives: kind (see ``BATCH_KINDS``) plus parameters."""

    kind: str = "succeed"
    params: dict = field(default_factory=dict)

    def __init__(self, kind: str = "succeed", **params):
        if kind not in BATCH_KINDS:
            raise ValueError(f"unknown batch behaviour {kind!r}; known: {', '.join(BATCH_KINDS)}")
        unknown = set(params) - BATCH_PARAMS
        if unknown:
            raise ValueError(f"unknown batch behaviour parameter(s) {sorted(unknown)}; known: {sorted(BATCH_PARAMS)}")
        if params.get("stats") is not None and params["stats"] not in STATS_MODES:
            raise ValueError(f"stats must be one of {STATS_MODES}")
        if params.get("then", "succeed") not in ("succeed", "fail", "expire"):
            raise ValueError("then must be succeed, fail or expire")
        if int(params.get("polls", 1)) < 0:
            raise ValueError("polls must be >= 0")
        self.kind, self.params = kind, params

    def get(self, name, default=None):
        return self.params.get(name, default)

    @property
    def polls(self) -> int:
        return int(self.params.get("polls", 1))


def as_batch_behaviour(spec) -> BatchBehaviour:
    """A kind name, a dict {"kind": ..., **params} or a BatchBehaviour -> BatchBehaviour."""
    if isinstance(spec, BatchBehaviour):
        return spec
    if isinstance(spec, str):
        return BatchBehaviour(spec)
    if isinstance(spec, dict):
        spec = dict(spec)
        return BatchBehaviour(spec.pop("kind", "succeed"), **spec)
    raise TypeError(f"not a batch behaviour: {spec!r}")


@dataclass
class FileRecord:
    """A file of the Files API: uploaded (source UPLOADED) or a batch's results (GENERATED)."""

    name: str  # files/<id>
    display_name: str
    mime_type: str
    data: bytes = field(repr=False)
    source: str  # UPLOADED | GENERATED
    create_ns: int
    batch_name: str = ""  # GENERATED: the batch it holds the results of
    deleted: bool = False

    @property
    def id(self) -> str:
        return self.name[len("files/"):]

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    def resource(self, root: str) -> dict:
        out = {"name": self.name}
        if self.display_name:
            out["displayName"] = self.display_name
        out.update({"mimeType": self.mime_type, "sizeBytes": str(self.size), "createTime": rfc3339(self.create_ns, 6),
                    "updateTime": rfc3339(self.create_ns, 6),
                    "expirationTime": rfc3339(self.create_ns + FILE_TTL_NS, 9),
                    "sha256Hash": base64.b64encode(self.sha256.encode("ascii")).decode("ascii"),
                    "uri": f"{root}/v1beta/{self.name}"})
        if self.source == "GENERATED":
            out["downloadUri"] = f"{root}/download/v1beta/{self.name}:download?alt=media"
        out.update({"state": "ACTIVE", "source": self.source})
        return out


@dataclass
class UploadSession:
    upload_id: str
    declared: int | None
    mime_type: str
    display_name: str
    requested_name: str | None
    data: bytearray = field(default_factory=bytearray, repr=False)
    status: str = "active"  # active | final | cancelled
    file: FileRecord | None = None
    final_body: dict | None = field(default=None, repr=False)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


@dataclass
class BatchRecord:
    """One batch job as the stand-in sees it (``server.batches``)."""

    name: str  # batches/<36 chars>
    display_name: str
    model: str
    behaviour: BatchBehaviour
    lines: list = field(repr=False)  # [{"line": n, "key", "request", "raw", "metadata"}]
    input_file: str | None = None  # files/<id>; None = inline requests
    priority: int = 0
    state: str = PENDING
    polls: int = 0  # GET /v1beta/batches/{id} answered for it
    create_ns: int = 0
    update_ns: int = 0
    end_ns: int | None = None
    responses_file: str | None = None  # files/batch-<id> once SUCCEEDED (file input)
    results: list = field(default_factory=list, repr=False)  # output entries in input order
    line_requests: list = field(default_factory=list, repr=False)  # RecordedRequest per answered line
    error: dict | None = None  # FAILED: google.rpc.Status
    deleted: bool = False
    create_answered: bool = False  # the create reply left the stand-in (not held)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def id(self) -> str:
        return self.name[len("batches/"):]

    @property
    def keys(self) -> list:
        return [ln["key"] for ln in self.lines]

    @property
    def done(self) -> bool:
        return self.state in TERMINAL

    @property
    def request_count(self) -> int:
        return len(self.lines)

    @property
    def successful(self) -> int:
        return sum(1 for r in self.results if "response" in r)

    @property
    def failed(self) -> int:
        return sum(1 for r in self.results if "error" in r)

    def summary(self) -> dict:
        return {"name": self.name, "display_name": self.display_name, "model": self.model, "state": self.state,
                "polls": self.polls, "keys": self.keys, "input_file": self.input_file,
                "responses_file": self.responses_file, "behaviour": {"kind": self.behaviour.kind,
                                                                     **self.behaviour.params},
                "successful": self.successful, "failed": self.failed, "deleted": self.deleted,
                "create_answered": self.create_answered}


def rfc3339(ns: int, digits: int = 9) -> str:
    sec, frac = divmod(int(ns), 10**9)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
    return f"{stamp}.{str(frac).zfill(9)[:digits]}Z"


def _new_id(n: int) -> str:
    return "".join(secrets.choice(_ALNUM) for _ in range(n))


# ---------------------------------------------------------------- request structure (checked at create)

class _Malformed(Exception):
    def __init__(self, message: str, field_name: str | None = None):
        super().__init__(message)
        self.message, self.field_name = message, field_name


def _fields(obj, allowed: set, what: str) -> None:
    if not isinstance(obj, dict):
        raise _Malformed(f"{what} must be an object")
    for k in obj:
        if _camel(k) not in allowed:
            raise _Malformed(f"no such field: '{k}'", k)


def check_request_structure(req) -> None:
    """What the service rejects when it parses a JSONL line into a GenerateContentRequest
    (unknown fields anywhere, wrong JSON types, bytes that are not base64)."""
    _fields(req, REQUEST_FIELDS, "request")
    contents = _get(req, "contents")
    if contents is not None:
        if not isinstance(contents, list):
            raise _Malformed("invalid value for repeated field 'contents'", "contents")
        for content in contents:
            _fields(content, CONTENT_FIELDS, "content")
            parts = content.get("parts")
            if parts is None:
                continue
            if not isinstance(parts, list):
                raise _Malformed("invalid value for repeated field 'parts'", "parts")
            for part in parts:
                _fields(part, PART_FIELDS, "part")
                if "text" in part and not isinstance(part["text"], str):
                    raise _Malformed("invalid value for string field 'text'", "text")
                blob = _get(part, "inlineData", "inline_data")
                if blob is not None:
                    _fields(blob, BLOB_FIELDS, "inline_data")
                    try:
                        decode_proto_bytes(blob.get("data") or "")
                    except ValueError:
                        raise _Malformed("invalid value for bytes field 'data'", "data") from None
    gen = _get(req, "generationConfig", "generation_config")
    if gen is not None:
        _fields(gen, GEN_CONFIG_FIELDS, "generation_config")
        img = _get(gen, "imageConfig", "image_config")
        if img is not None:
            _fields(img, IMAGE_CONFIG_FIELDS, "image_config")


def parse_jsonl(data: bytes) -> tuple[list, list]:
    """(lines, errors): each line {"line", "key", "request", "raw", "metadata"}; errors are the
    service's "Error on line N: ..." strings."""
    lines, errors = [], []
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return [], [f"Error on line 1: invalid UTF-8 at byte {exc.start}"]
    for n, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except ValueError as exc:
            errors.append(f"Error on line {n}: invalid JSON, near column {getattr(exc, 'colno', 1)}: "
                          f"{getattr(exc, 'msg', str(exc))}")
            continue
        try:
            _fields(obj, LINE_FIELDS, "line")
            if "key" in obj and not isinstance(obj["key"], str):
                raise _Malformed("invalid value for string field 'key'", "key")
            if "request" not in obj:
                raise _Malformed("missing field 'request'")
            check_request_structure(obj["request"])
        except _Malformed as exc:
            col = raw.find(f'"{exc.field_name}"') + 1 if exc.field_name else 1
            errors.append(f"Error on line {n}: invalid JSON, near column {max(col, 1)}: {exc.message}")
            continue
        lines.append({"line": n, "key": obj.get("key"), "request": obj["request"], "raw": raw.encode("utf-8"),
                      "metadata": None})
    return lines, errors


# ---------------------------------------------------------------- the service

class BatchService:
    """Files + batches state of one StandinServer (``server.batch``)."""

    def __init__(self, server):
        self.server = server
        # the server's own module: its classes (B, BadRequest, Reply, RecordedRequest) even when
        # it runs as __main__ (python -m tests.standin.server)
        self.m = sys.modules[type(server).__module__]
        self._lock = threading.RLock()
        self._holds: dict = {}
        self.reset()

    # --- control
    def reset(self) -> None:
        with self._lock:
            self.release_step()
            self._files: dict = {}  # name -> FileRecord (also deleted ones)
            self._file_order: list = []
            self._sessions: dict = {}  # upload_id -> UploadSession
            self._batches: dict = {}  # name -> BatchRecord
            self._batch_order: list = []  # creation order
            self._lines: list = []  # every answered line (RecordedRequest)
            self._line_counter = itertools.count()
            self._default = BatchBehaviour("succeed")
            self._queue: deque = deque()
            self.stats_mode = "real"
            self.granularity = GRANULARITY

    def set_behaviour(self, kind="succeed", **params) -> None:
        b = as_batch_behaviour(kind) if not params else BatchBehaviour(kind, **params)
        with self._lock:
            self._default = b

    def script(self, *behaviours) -> None:
        items = [as_batch_behaviour(b) for b in behaviours]
        with self._lock:
            self._queue.extend(items)

    def set_stats(self, mode: str) -> None:
        if mode not in STATS_MODES:
            raise ValueError(f"stats mode must be one of {STATS_MODES}")
        self.stats_mode = mode

    def hold_step(self, *steps) -> None:
        for s in steps:
            if s not in BATCH_STEPS:
                raise ValueError(f"unknown batch step {s!r}; known: {', '.join(BATCH_STEPS)}")
        with self._lock:
            for s in steps:
                if s not in self._holds:
                    self._holds[s] = threading.Event()

    def release_step(self, *steps) -> None:
        with self._lock:
            for s in (steps or list(self._holds)):
                ev = self._holds.pop(s, None)
                if ev is not None:
                    ev.set()
        self.server._notify()

    def finish(self, *names, outcome: str | None = None) -> list[str]:
        """End unfinished batches now (all when no names): as ``outcome`` (succeed | fail | expire),
        default the batch's own (``then`` for hold).  Returns the names finished."""
        if outcome not in (None, "succeed", "fail", "expire"):
            raise ValueError("outcome must be succeed, fail or expire")
        wanted = [n if n.startswith("batches/") else f"batches/{n}" for n in names]
        done = []
        for b in list(self._batch_order):
            if wanted and b.name not in wanted:
                continue
            with b.lock:
                if b.done or b.deleted:
                    continue
                kind = outcome or (b.behaviour.get("then", "succeed") if b.behaviour.kind == "hold"
                                   else b.behaviour.kind)
                self._finish(b, kind)
                done.append(b.name)
        self.server._notify()
        return done

    # --- observation (lock-free snapshots: wait_until predicates call these under the server lock)
    @property
    def batches(self) -> list[BatchRecord]:
        return list(self._batch_order)

    @property
    def uploads(self) -> list[FileRecord]:
        return [f for f in list(self._file_order) if f.source == "UPLOADED"]

    @property
    def lines(self) -> list:
        return list(self._lines)

    def answers(self) -> list:
        return [r for r in list(self._lines) if r.status == 200 and r.kind in ("ok", "hold", "slow", "jpeg_as_png")]

    def file(self, name: str) -> FileRecord | None:
        return self._files.get(name if name.startswith("files/") else f"files/{name}")

    def batch(self, name: str) -> BatchRecord | None:
        return self._batches.get(name if name.startswith("batches/") else f"batches/{name}")

    # --- HTTP
    @staticmethod
    def route(method: str, path: str, query: str):
        """(operation, args) for a Files/Batch API request, else None."""
        if method == "POST" and path == "/upload/v1beta/files":
            return ("file_upload", {}) if "upload_id" in parse_qs(query) else ("file_upload_start", {})
        if method == "POST" and path.startswith("/v1beta/models/") and path.endswith(":batchGenerateContent"):
            return "batch_create", {"model": unquote(path[len("/v1beta/models/"):-len(":batchGenerateContent")])}
        if path == "/v1beta/batches":
            return ("batch_list", {}) if method == "GET" else None
        m = re.fullmatch(r"/v1beta/batches/([^/:]+)(:cancel)?", path)
        if m:
            bid = unquote(m.group(1))
            if m.group(2):
                return ("batch_cancel", {"id": bid}) if method == "POST" else None
            return {"GET": ("batch_get", {"id": bid}), "DELETE": ("batch_delete", {"id": bid})}.get(method)
        if path == "/v1beta/files":
            return ("file_list", {}) if method == "GET" else None
        m = re.fullmatch(r"(/download)?/v1beta/files/([^/:]+)(:download)?", path)
        if m:
            fid = unquote(m.group(2))
            if m.group(3):
                return ("file_download", {"id": fid}) if method == "GET" else None
            if m.group(1):
                return None
            return {"GET": ("file_get", {"id": fid}), "DELETE": ("file_delete", {"id": fid})}.get(method)
        return None

    def handle(self, rec, op: str, args: dict):
        """Answer one recorded Files/Batch API request (a server ``Reply``)."""
        srv = self.server
        srv.wait(rec, srv.latency)
        if op != "file_upload":  # the upload URL itself is the credential
            denied = srv.protocols["gemini"].auth(rec)
            if denied is not None:
                return denied
        return getattr(self, "_" + op)(rec, **args)

    # --- helpers
    def _error(self, status: int, message: str, status_name: str | None = None, headers: dict | None = None):
        reply = self.server.protocols["gemini"].error(status, message, status_name=status_name)
        reply.headers.update(headers or {})
        return reply

    def _root(self, rec) -> str:
        host = rec.header("Host")
        return f"http://{host}" if host else self.server.url

    def _hold(self, rec, step: str) -> None:
        ev = self._holds.get(step)
        if ev is None:
            return
        rec.held = True
        self.server._notify()
        while not ev.is_set() and not (rec.cancel is not None and rec.cancel.is_set()):
            ev.wait(0.5)
        rec.held = False
        self.server._notify()

    def _no_file(self, fid: str):
        return self._error(403, f"You do not have permission to access the File {fid} or it may not exist.")

    # --- Files API
    def _file_upload_start(self, rec):
        if (rec.header("X-Goog-Upload-Protocol") or "").strip().lower() != "resumable":
            return self._error(400, "stand-in: only resumable uploads are supported "
                                    "(X-Goog-Upload-Protocol: resumable, X-Goog-Upload-Command: start)")
        if (rec.header("X-Goog-Upload-Command") or "").strip().lower() != "start":
            return self._error(400, "Invalid X-Goog-Upload-Command for a new upload: expected 'start'.")
        meta = {}
        if rec.body.strip():
            if not isinstance(rec.json, dict):
                return self._error(400, "Invalid JSON payload received.")
            for k in rec.json:
                if k != "file":
                    return self._error(400, f'Invalid JSON payload received. Unknown name "{k}": Cannot find field.')
            meta = rec.json.get("file") or {}
            if not isinstance(meta, dict):
                return self._error(400, "Invalid JSON payload received. 'file' must be an object.")
            for k in meta:
                if _camel(k) not in FILE_FIELDS:
                    return self._error(400, f'Invalid JSON payload received. Unknown name "{k}" at \'file\': '
                                            "Cannot find field.")
        display = _get(meta, "displayName", "display_name", default="") or ""
        if not isinstance(display, str) or len(display) > 512:
            return self._error(400, "* CreateFileRequest.file.display_name: display_name must be at most 512 "
                                    "characters")
        requested = meta.get("name")
        if requested:
            fid = str(requested)[len("files/"):] if str(requested).startswith("files/") else str(requested)
            if len(fid) > MAX_FILE_ID or not _FILE_ID_RE.fullmatch(fid):
                return self._error(400, "* CreateFileRequest.file.name: File ID (name excluding 'files/') must be at "
                                        "most 40 characters, lowercase alphanumeric or dashes, and cannot start or "
                                        "end with a dash.\n")
            existing = self._files.get(f"files/{fid}")
            if existing is not None and not existing.deleted:
                return self._error(409, f"File files/{fid} already exists.", "ALREADY_EXISTS")
            requested = f"files/{fid}"
        declared = rec.header("X-Goog-Upload-Header-Content-Length")
        if declared is not None:
            try:
                declared = int(declared)
                if declared < 0:
                    raise ValueError
            except ValueError:
                return self._error(400, f"Invalid X-Goog-Upload-Header-Content-Length: {declared!r}")
        mime = (rec.header("X-Goog-Upload-Header-Content-Type") or _get(meta, "mimeType", "mime_type")
                or "application/octet-stream")
        uid = secrets.token_urlsafe(48)
        with self._lock:
            self._sessions[uid] = UploadSession(uid, declared, str(mime), display, requested)
        url = f"{self._root(rec)}/upload/v1beta/files?upload_id={uid}&upload_protocol=resumable"
        self.server._notify()
        return self.m.Reply(200, "", {"X-GUploader-UploadID": uid, "X-Goog-Upload-Status": "active",
                                      "X-Goog-Upload-URL": url, "X-Goog-Upload-Control-URL": url,
                                      "X-Goog-Upload-Chunk-Granularity": str(self.granularity)})

    def _file_upload(self, rec):
        uid = (parse_qs(rec.query).get("upload_id") or [""])[0]
        sess = self._sessions.get(uid)
        if sess is None:
            return self._error(404, "stand-in: no such upload session (unknown upload_id)",
                               headers={"X-Goog-Upload-Status": "final"})
        cmds = {c.strip().lower() for c in (rec.header("X-Goog-Upload-Command") or "").split(",") if c.strip()}
        rec.kind = ("file_upload_finalize" if "finalize" in cmds else "file_upload_query" if "query" in cmds
                    else "file_upload_cancel" if "cancel" in cmds else "file_upload")
        final_file = None
        with sess.lock:
            received = {"X-Goog-Upload-Size-Received": str(len(sess.data)), "X-GUploader-UploadID": uid}
            if "query" in cmds:
                return self.m.Reply(200, "", {"X-Goog-Upload-Status": sess.status, **received})
            if "cancel" in cmds:
                if sess.status == "active":
                    sess.status = "cancelled"
                return self.m.Reply(200, "", {"X-Goog-Upload-Status": sess.status, **received})
            if sess.status == "final":
                if "finalize" in cmds and sess.final_body is not None:  # a client repeating a lost finalize
                    final_file = sess.file
                    rec.file_name = final_file.name
                    reply = self.m.Reply(200, sess.final_body, {"X-Goog-Upload-Status": "final", **received})
                    return reply
                return self._error(400, "The upload session is already finalized.",
                                   headers={"X-Goog-Upload-Status": "final", **received})
            if sess.status == "cancelled":
                return self._error(499, "The upload session was cancelled.", "CANCELLED",
                                   headers={"X-Goog-Upload-Status": "cancelled", **received})
            if not cmds & {"upload", "finalize"}:
                return self._error(400, f"Invalid X-Goog-Upload-Command: {rec.header('X-Goog-Upload-Command')!r}",
                                   headers={"X-Goog-Upload-Status": "active", **received})
            if "upload" in cmds:
                try:
                    offset = int(rec.header("X-Goog-Upload-Offset"))
                except (TypeError, ValueError):
                    return self._error(400, "X-Goog-Upload-Offset is required with X-Goog-Upload-Command: upload",
                                       headers={"X-Goog-Upload-Status": "active", **received})
                if offset != len(sess.data):
                    return self._error(400, f"Invalid X-Goog-Upload-Offset {offset}: {len(sess.data)} bytes were "
                                            "received so far.", headers={"X-Goog-Upload-Status": "active", **received})
                if "finalize" not in cmds and len(rec.body) % self.granularity:
                    return self._error(400, f"Chunk size {len(rec.body)} is not a multiple of the upload granularity "
                                            f"{self.granularity} (only the last chunk may be smaller).",
                                       headers={"X-Goog-Upload-Status": "active", **received})
                if sess.declared is not None and len(sess.data) + len(rec.body) > sess.declared:
                    sess.status = "final"
                    return self._error(400, f"The uploaded data exceeds the declared size of {sess.declared} bytes.",
                                       headers={"X-Goog-Upload-Status": "final", **received})
                sess.data += rec.body
                received["X-Goog-Upload-Size-Received"] = str(len(sess.data))
            if "finalize" not in cmds:
                self.server._notify()
                return self.m.Reply(200, "", {"X-Goog-Upload-Status": "active", **received})
            if sess.declared is not None and len(sess.data) != sess.declared:
                sess.status = "final"
                return self._error(400, f"The upload was finalized with {len(sess.data)} bytes, but "
                                        f"X-Goog-Upload-Header-Content-Length declared {sess.declared}.",
                                   headers={"X-Goog-Upload-Status": "final", **received})
            with self._lock:
                name = sess.requested_name
                if name is None:
                    while name is None or name in self._files:
                        name = f"files/{_new_id(12)}"
                final_file = FileRecord(name=name, display_name=sess.display_name, mime_type=sess.mime_type,
                                        data=bytes(sess.data), source="UPLOADED", create_ns=time.time_ns())
                self._files[name] = final_file
                self._file_order.append(final_file)
            sess.status, sess.file = "final", final_file
            sess.final_body = {"file": final_file.resource(self._root(rec))}
            rec.file_name = name
            reply = self.m.Reply(200, sess.final_body, {"X-Goog-Upload-Status": "final", **received})
        self.server._notify()
        self._hold(rec, "upload")  # the file is stored; only the answer waits
        return reply

    def _check_file_id(self, fid: str, request: str):
        if len(fid) > MAX_FILE_ID:
            return self._error(400, f"* {request}.name: File ID (name excluding 'files/') cannot be more than "
                                    f"{MAX_FILE_ID} characters.\n")
        return None

    def _file_get(self, rec, id):
        rec.file_name = f"files/{id}"
        bad = self._check_file_id(id, "GetFileRequest")
        if bad is not None:
            return bad
        f = self._files.get(f"files/{id}")
        if f is None or f.deleted:
            return self._no_file(id)
        return self.m.Reply(200, f.resource(self._root(rec)))

    def _file_delete(self, rec, id):
        rec.file_name = f"files/{id}"
        bad = self._check_file_id(id, "DeleteFileRequest")
        if bad is not None:
            return bad
        f = self._files.get(f"files/{id}")
        if f is None or f.deleted:
            return self._no_file(id)
        f.deleted = True
        self.server._notify()
        return self.m.Reply(200, {})

    def _page(self, rec, items: list):
        q = parse_qs(rec.query)
        try:
            size = int((q.get("pageSize") or q.get("page_size") or ["10"])[0])
        except ValueError:
            return None, None, self._error(400, "Invalid value for pageSize")
        size = 10 if size <= 0 else min(size, 100)
        token = (q.get("pageToken") or q.get("page_token") or [""])[0]
        start = 0
        if token:
            try:
                start = int(base64.urlsafe_b64decode(token.encode() + b"==").decode().removeprefix("standin-offset:"))
            except (ValueError, UnicodeDecodeError):
                return None, None, self._error(400, "Invalid page token.")
        page = items[start:start + size]
        nxt = None
        if start + size < len(items):
            nxt = base64.urlsafe_b64encode(f"standin-offset:{start + size}".encode()).decode().rstrip("=")
        return page, nxt, None

    def _file_list(self, rec):
        files = [f for f in reversed(self._file_order) if f.source == "UPLOADED" and not f.deleted]
        page, nxt, err = self._page(rec, files)
        if err is not None:
            return err
        out = {}
        if page:
            out["files"] = [f.resource(self._root(rec)) for f in page]
        if nxt:
            out["nextPageToken"] = nxt
        return self.m.Reply(200, out)

    def _file_download(self, rec, id):
        rec.file_name = f"files/{id}"
        if "media" not in parse_qs(rec.query).get("alt", []):
            return self._error(400, "stand-in: a download needs ?alt=media")
        f = self._files.get(f"files/{id}")
        if f is None or f.deleted:
            return self._no_file(id)
        if f.source != "GENERATED":
            return self._error(400, "Only generated files can be downloaded; uploaded files cannot.")
        self._hold(rec, "download")
        data = f.data
        step = 64 * 1024
        return self.m.Reply(200, None, {"Content-Type": f.mime_type},
                            stream=(data[i:i + step] for i in range(0, len(data), step)))

    # --- Batch API
    def _batch_create(self, rec, model):
        body = rec.json
        if not isinstance(body, dict):
            return self._error(400, "Invalid JSON payload received. Expected an object.")
        for k in body:
            if k != "batch":
                return self._error(400, f'Invalid JSON payload received. Unknown name "{k}": Cannot find field.')
        batch = body.get("batch")
        if not isinstance(batch, dict):
            return self._error(400, "* BatchGenerateContentRequest.batch: batch is required\n")
        for k in batch:
            if _camel(k) not in BATCH_FIELDS:
                return self._error(400, f'Invalid JSON payload received. Unknown name "{k}" at \'batch\': '
                                        "Cannot find field.")
        if model not in self.server.gemini_models:
            return self._error(404, f"models/{model} is not found for API version v1beta, or is not supported for "
                                    "batchGenerateContent. Call ListModels to see the list of available models and "
                                    "their supported methods.")
        display = _get(batch, "displayName", "display_name")
        if not isinstance(display, str) or not display.strip():
            return self._error(400, "* GenerateContentBatch.display_name: display_name is required\n")
        try:
            priority = int(batch.get("priority", 0) or 0)
        except (TypeError, ValueError):
            return self._error(400, "Invalid value at 'batch.priority' (TYPE_INT64)")
        cfg = _get(batch, "inputConfig", "input_config")
        if not isinstance(cfg, dict):
            return self._error(400, "* GenerateContentBatch.input_config: input_config is required\n")
        for k in cfg:
            if _camel(k) not in ("fileName", "requests"):
                return self._error(400, f'Invalid JSON payload received. Unknown name "{k}" at '
                                        "'batch.input_config': Cannot find field.")
        file_name = _get(cfg, "fileName", "file_name")
        inline = cfg.get("requests")
        if (file_name is None) == (inline is None):
            return self._error(400, "* GenerateContentBatch.input_config: exactly one of file_name and requests "
                                    "must be set\n")
        if file_name is not None:
            fid = str(file_name)[len("files/"):] if str(file_name).startswith("files/") else None
            f = self._files.get(f"files/{fid}") if fid else None
            if f is None or f.deleted:
                return self._no_file(fid or str(file_name))
            lines, errors = parse_jsonl(f.data)
            if errors:
                shown = errors[:20] + ([f"... and {len(errors) - 20} more errors"] if len(errors) > 20 else [])
                return self._error(400, "\n".join(shown))
            file_name = f.name
        else:
            lines, err = self._inline_lines(inline)
            if err:
                return self._error(400, err)
        if not lines:
            return self._error(400, "The batch input contains no requests.")
        now = time.time_ns()
        with self._lock:
            behaviour = self._queue.popleft() if self._queue else self._default
            name = None
            while name is None or name in self._batches:
                name = f"batches/{_new_id(36)}"
            b = BatchRecord(name=name, display_name=display, model=model, behaviour=behaviour, lines=lines,
                            input_file=file_name, priority=priority, create_ns=now, update_ns=now)
            self._batches[name] = b
            self._batch_order.append(b)
        rec.batch_name = name
        with b.lock:
            reply = self.m.Reply(200, self._operation(b))  # the create answer always says PENDING
            if behaviour.kind != "hold" and behaviour.polls == 0:
                self._finish(b, behaviour.kind)
        self.server._notify()
        self._hold(rec, "create")  # the job exists; the client has not learned its name yet
        b.create_answered = True
        return reply

    @staticmethod
    def _inline_lines(inline):
        where = "batch.input_config.requests"
        if not isinstance(inline, dict) or set(inline) - {"requests"}:
            return [], f"Invalid JSON payload received at '{where}': expected {{\"requests\": [...]}}."
        items = inline.get("requests")
        if not isinstance(items, list):
            return [], f"Invalid JSON payload received at '{where}.requests': expected a list."
        lines = []
        for i, item in enumerate(items):
            try:
                _fields(item, {"request", "metadata"}, "requests[]")
                if "request" not in item:
                    raise _Malformed("missing field 'request'")
                check_request_structure(item["request"])
            except _Malformed as exc:
                return [], f"Invalid JSON payload received at '{where}.requests[{i}]': {exc.message}"
            meta = item.get("metadata") if isinstance(item.get("metadata"), dict) else None
            key = meta.get("key") if meta and isinstance(meta.get("key"), str) else None
            lines.append({"line": i + 1, "key": key, "request": item["request"],
                          "raw": json.dumps(item["request"]).encode("utf-8"), "metadata": meta})
        return lines, None

    def _find_batch(self, bid):
        b = self._batches.get(f"batches/{bid}")
        return None if b is None or b.deleted else b

    def _not_found(self):
        return self._error(404, "Requested entity was not found.")

    def _batch_get(self, rec, id):
        rec.batch_name = f"batches/{id}"
        b = self._find_batch(id)
        if b is None:
            return self._not_found()
        with b.lock:
            b.polls += 1
            if not b.done:
                if b.behaviour.kind != "hold" and b.polls > b.behaviour.polls:
                    self._finish(b, b.behaviour.kind)
                elif b.state == PENDING:
                    b.state, b.update_ns = RUNNING, time.time_ns()
            body = self._operation(b)
        self.server._notify()
        self._hold(rec, "poll")
        return self.m.Reply(200, body)

    def _batch_list(self, rec):
        items = [b for b in reversed(list(self._batch_order)) if not b.deleted]
        page, nxt, err = self._page(rec, items)
        if err is not None:
            return err
        out = {}
        if page:
            out["operations"] = [self._operation(b) for b in page]
        if nxt:
            out["nextPageToken"] = nxt
        return self.m.Reply(200, out)

    def _batch_cancel(self, rec, id):
        rec.batch_name = f"batches/{id}"
        b = self._find_batch(id)
        if b is None:
            return self._not_found()
        with b.lock:
            if b.done:
                return self._error(400, f"Batch {b.name} is already in a terminal state ({b.state}) and cannot be "
                                        "cancelled.", "FAILED_PRECONDITION")
            self._finish(b, "cancel")
        self.server._notify()
        return self.m.Reply(200, {})

    def _batch_delete(self, rec, id):
        rec.batch_name = f"batches/{id}"
        b = self._find_batch(id)
        if b is None:
            return self._not_found()
        b.deleted = True
        self.server._notify()
        return self.m.Reply(200, {})

    # --- lifecycle
    def _finish(self, b: BatchRecord, kind: str) -> None:
        """Move ``b`` (lock held) to its terminal state; ``succeed`` answers every line."""
        if kind == "succeed":
            results = [self._answer_line(b, ln) for ln in b.lines]
            b.results = results
            if b.input_file is not None:
                out_lines = [{**{k: v for k, v in r.items() if k != "metadata"},
                              **({"key": ln["key"]} if ln["key"] is not None else {})}
                             for r, ln in zip(results, b.lines)]
                data = "".join(json.dumps(x) + "\n" for x in reversed(out_lines)).encode("utf-8")
                f = FileRecord(name=f"files/batch-{b.id}", display_name="", mime_type="application/jsonl", data=data,
                               source="GENERATED", create_ns=time.time_ns(), batch_name=b.name)
                with self._lock:
                    self._files[f.name] = f
                    self._file_order.append(f)
                b.responses_file = f.name
            state = SUCCEEDED
        elif kind == "fail":
            b.error = {"code": int(b.behaviour.get("code", 13)),
                       "message": b.behaviour.get("message", "Batch failed: " + INTERNAL_MESSAGE)}
            state = FAILED
        elif kind == "expire":
            state = EXPIRED
        elif kind == "cancel":
            state = CANCELLED
        else:
            raise ValueError(f"no batch outcome {kind!r}")
        b.end_ns = b.update_ns = time.time_ns()
        b.state = state  # last: observers see results before the state

    def _answer_line(self, b: BatchRecord, ln: dict) -> dict:
        """One line through the synchronous machinery -> {"response": ...} or {"error": ...}."""
        m, srv = self.m, self.server
        request = dict(ln["request"])
        request.pop("model", None)
        rec = m.RecordedRequest(index=next(self._line_counter), protocol="gemini", method="POST",
                                path=f"/v1beta/models/{b.model}:generateContent", query="", headers={},
                                body=ln["raw"], started=time.time(), json=request, model=b.model,
                                batch=True, batch_name=b.name, key=ln["key"] or "")
        rec.cancel = srv._cancel
        with self._lock:
            self._lines.append(rec)
        b.line_requests.append(rec)
        extra = {"metadata": ln["metadata"]} if ln["metadata"] is not None else {}
        gem = srv.protocols["gemini"]
        try:
            info = gem.parse(rec)
        except m.BadRequest as exc:
            rec.kind, rec.status, rec.finished = exc.kind, exc.status, time.time()
            return {"error": self._status(exc.status, exc.message), **extra}
        beh = srv._choose(rec)
        rec.kind = beh.kind
        while beh.kind in ("slow", "hold"):
            beh = m.as_behaviour(beh.get("then", "ok"))
        rec.finished = time.time()
        if beh.kind == "drop":
            rec.status = None
            return {"error": {"code": 13, "message": INTERNAL_MESSAGE}, **extra}
        reply = gem.answer(rec, beh, info)
        body = reply.body
        if reply.status == 200 and isinstance(body, dict) and "error" not in body:
            rec.status = 200
            return {"response": body, **extra}
        err = body.get("error") if isinstance(body, dict) else None
        if isinstance(err, dict):
            http = reply.status if reply.status != 200 else int(err.get("code", 500) or 500)
            rec.status = http
            return {"error": self._status(http, str(err.get("message", "")), err.get("details")), **extra}
        rec.status = reply.status
        return {"error": self._status(reply.status if reply.status >= 400 else 500, INTERNAL_MESSAGE), **extra}

    @staticmethod
    def _status(http: int, message: str, details=None) -> dict:
        out = {"code": GRPC_CODE.get(int(http), 2), "message": message}
        if details:
            out["details"] = details
        return out

    def _stats(self, b: BatchRecord) -> dict | None:
        mode = b.behaviour.get("stats") or self.stats_mode
        if mode == "omit":
            return None
        n = b.request_count
        if b.state == SUCCEEDED:
            counts = {"requestCount": n, "successfulRequestCount": b.successful, "failedRequestCount": b.failed,
                      "pendingRequestCount": 0}
        else:  # nothing is answered before the job succeeds
            counts = {"requestCount": n, "successfulRequestCount": 0, "failedRequestCount": 0, "pendingRequestCount": n}
        return {k: str(v) for k, v in counts.items() if v or mode == "full"}

    def _operation(self, b: BatchRecord) -> dict:
        meta = {"@type": TYPE_BATCH, "model": f"models/{b.model}", "displayName": b.display_name}
        if b.input_file is not None:
            meta["inputConfig"] = {"fileName": b.input_file}
        output = None
        if b.state == SUCCEEDED:
            if b.responses_file is not None:
                output = {"responsesFile": b.responses_file}
            else:
                output = {"inlinedResponses": {"inlinedResponses": list(b.results)}}
            meta["output"] = output
        meta["createTime"] = rfc3339(b.create_ns)
        if b.end_ns is not None:
            meta["endTime"] = rfc3339(b.end_ns)
        meta["updateTime"] = rfc3339(b.update_ns)
        stats = self._stats(b)
        if stats is not None:
            meta["batchStats"] = stats
        meta["state"] = b.state
        if b.priority:
            meta["priority"] = str(b.priority)
        meta["name"] = b.name
        op = {"name": b.name, "metadata": meta}
        if b.done:
            op["done"] = True
            if output is not None:
                op["response"] = {"@type": TYPE_OUTPUT, **output}
            elif b.state == FAILED and b.error is not None:
                op["error"] = dict(b.error)
        return op
