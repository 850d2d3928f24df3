"""A local stand-in for the Gemini API and OpenRouter, for tests and benchmarks.

One stdlib ``ThreadingHTTPServer`` on 127.0.0.1 speaks both protocols:

- Gemini:     ``POST /v1beta/models/{model}:generateContent``  (key: ``x-goog-api-key``)
- OpenRouter: ``POST /api/v1/chat/completions``                 (key: ``Authorization: Bearer``)
- Gemini Files API and Batch API (``batch.py`` has the wire details), key ``x-goog-api-key``:
  ``POST /upload/v1beta/files`` (resumable start; the returned ``X-Goog-Upload-URL`` takes
  the chunks: ``upload``, ``upload, finalize``, ``query``, ``cancel``),
  ``GET|DELETE /v1beta/files/{id}``, ``GET /v1beta/files``,
  ``GET /download/v1beta/files/{id}:download?alt=media`` (also ``/v1beta/files/{id}:download``),
  ``POST /v1beta/models/{model}:batchGenerateContent``, ``GET /v1beta/batches[?pageSize&pageToken]``,
  ``GET|DELETE /v1beta/batches/{id}``, ``POST /v1beta/batches/{id}:cancel``.

Like the real services it checks the key first (Gemini: missing -> 403,
wrong -> 400 API_KEY_INVALID; OpenRouter: 401), then the request shape
(unknown model, misplaced ``aspectRatio``, unsupported image config,
undecodable input image -> 400/404), and only then answers with a
**behaviour**: by default ``ok``, an image derived from the input (decoded,
resized to the nearest supported Gemini size, e.g. 1376x768 for a 2:1 input
at 1K, slightly brightened).  Behaviours are scripted per protocol:

    server.script("gemini", "rate_limit", B("slow", delay=3), "ok")   # consumed one per request
    server.set_default("openrouter", "image_safety", match="harsh")    # every request whose prompt contains "harsh"
    server.set_rule(lambda req: B("drop") if req.index == 0 else None)

A behaviour is a kind name, ``B(kind, **params)`` or a dict ``{"kind": ..., **params}``
(see ``KINDS`` for the names and their parameters).  Every request is recorded
(headers and body kept, so tests can check where the key went) and the
maximum number of requests in flight is tracked.

Batch jobs.  Each JSONL line of a batch is answered (when the job succeeds) by the
same behaviours as a synchronous ``gemini`` call -- scripts, defaults, rules and
``match=`` apply per line, error kinds give error lines -- but the line records
(``batch=True``, ``batch_name``, ``key``) are kept apart: ``server.batch_lines``,
``server.batch_answers()``; ``requests_for("gemini")``, ``answers()`` and the
in-flight counters see synchronous calls only.  The Files/Batch HTTP requests
themselves are in ``requests`` with protocol ``gemini_batch`` and ``kind`` naming the
operation (``file_upload_start``, ``file_upload``, ``file_upload_finalize``, ``file_get``,
``file_delete``, ``file_list``, ``file_download``, ``batch_create``, ``batch_get``,
``batch_list``, ``batch_cancel``, ``batch_delete``).  The job's life is scripted, never timed:

    server.set_batch_behaviour("succeed", polls=2)       # RUNNING for 2 gets, SUCCEEDED on the 3rd
    server.script_batches("hold", {"kind": "fail", "code": 8}, "expire")   # one per created batch
    server.finish_batches()                              # end held batches now
    server.set_batch_stats("omit")                       # no batchStats (real | full | omit)
    server.hold_batch_step("create")                     # upload | create | poll | download
    server.wait_until(lambda s: any(r.held for r in s.requests)); ...; server.release()
    server.batches, server.uploads                       # BatchRecord / FileRecord, oldest first

Standalone (pipeline end-to-end tests, benchmarks)::

    python -m tests.standin.server --port 0 --latency 0.5 --api-key KEY [--script FILE] [--ready-file F]

prints ``STANDIN_URL=http://127.0.0.1:PORT`` and serves until SIGTERM/SIGINT.
It is controlled over HTTP: ``GET /_standin/stats``, ``GET /_standin/requests``,
``POST /_standin/script`` ``{"protocol", "behaviours", "match"}``,
``POST /_standin/default`` ``{"protocol", "behaviour", "match"}``,
``POST /_standin/reset``, ``POST /_standin/config`` ``{"latency"}``,
``POST /_standin/key_leaks`` ``{"key"}``, ``GET /_standin/batches`` (batches, uploads, lines),
``POST /_standin/batch`` ``{"behaviour", "script", "stats", "granularity", "hold": [steps],
"release": [steps] | true, "finish": true | [names], "outcome"}``.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import itertools
import json
import math
import os
import signal
import socket
import sys
import threading
import time
import zlib
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable
from urllib.parse import parse_qs, unquote, urlsplit

DEFAULT_API_KEY = "standin-test-key-7f3a9c1e5b"

GEMINI_MODELS = frozenset({
    "gemini-3-pro-image-preview", "gemini-2.5-flash-image", "gemini-3.1-flash-image-preview",
})
OPENROUTER_MODELS = frozenset({
    "google/gemini-3-pro-image-preview", "google/gemini-2.5-flash-image", "google/gemini-3.1-flash-image-preview",
    "openai/gpt-5-image", "black-forest-labs/flux.2-pro",
})

# Gemini 3 Pro Image output sizes at 1K (2K = x2, 4K = x4), REFERENCE §3.
SIZES_1K = {
    "1:1": (1024, 1024), "2:3": (848, 1264), "3:2": (1264, 848), "3:4": (896, 1200), "4:3": (1200, 896),
    "4:5": (928, 1152), "5:4": (1152, 928), "9:16": (768, 1376), "16:9": (1376, 768), "21:9": (1584, 672),
}
SIZE_SCALE = {"1K": 1, "2K": 2, "4K": 4}
OUTPUT_IMAGE_TOKENS = {"1K": 1120, "2K": 1120, "4K": 2000}
INPUT_IMAGE_TOKENS = 560

GOOGLE_STATUS = {
    400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
    408: "DEADLINE_EXCEEDED", 409: "ABORTED", 413: "INVALID_ARGUMENT", 429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED", 500: "INTERNAL", 501: "UNIMPLEMENTED", 502: "UNAVAILABLE", 503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}

# kind -> (HTTP status, Gemini message, OpenRouter message) for the error behaviours
ERROR_KINDS = {
    "rate_limit": (429, "You exceeded your current quota, please check your plan and billing details. "
                   "For more information on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits.",
                   "Rate limit exceeded: google/gemini-3-pro-image-preview"),
    "server_error": (500, "An internal error has occurred. Please retry or report in "
                     "https://developers.generativeai.google/guide/troubleshooting", "Internal Server Error"),
    "bad_gateway": (502, "Bad Gateway", "Provider returned error"),
    "overloaded": (503, "The model is overloaded. Please try again later.", "The model is overloaded. Please try again later."),
    "gateway_timeout": (504, "Deadline expired before operation could complete.", "Gateway Timeout"),
    "request_timeout": (408, "Request timed out.", "Request timed out"),
    "bad_request": (400, "Request contains an invalid argument.", "Bad Request"),
    "bad_key": (400, "API key not valid. Please pass a valid API key.", "User not found."),
    "unauthorized": (401, "Request had invalid authentication credentials. Expected OAuth 2 access token, "
                     "login cookie or other valid authentication credential.", "No auth credentials found"),
    "no_credits": (402, "Payment required.", "Insufficient credits. Add more using https://openrouter.ai/settings/credits"),
    "forbidden": (403, "The caller does not have permission", "Your input was flagged by moderation"),
    "not_found": (404, "Requested entity was not found.", "No endpoints found for this model"),
    "too_large": (413, "Request payload size exceeds the limit: 20971520 bytes.", "Request too large"),
}

KINDS = {
    "ok": "image derived from the input; params: thoughts (0-2 interim thought images), fmt (PNG|JPEG), "
          "edit (mirror|shift: a label-breaking answer), "
          "label (MIME label), size ([w,h]), tweak (brightness factor, default 1.05), text (caption), "
          "usage (bool), image_details (bool), cost (OpenRouter usage.cost; None = omit)",
    "jpeg_as_png": "ok, but JPEG bytes labelled image/png",
    "slow": "wait `delay` seconds (default 5), then answer as `then` (default ok)",
    "slow_body": "answer as `then` (default ok) after `delay` seconds (default 0), its body sent in `pieces` "
                 "(default 8) with `pause` seconds (default 0.3) before each (a slow link); with `stall` the body "
                 "stops after its first piece until the stand-in is reset (a connection that hangs after the headers); "
                 "with `hold` it stops there (held) until the test calls release()",
    "hold": "hold the answer until the test calls release() (or the server stops), then answer as `then` "
            "(default ok); lets a test act while calls are in flight without timing anything",
    "drop": "close the connection without any response",
    "prompt_blocked": "Gemini: promptFeedback.blockReason=`reason` (default PROHIBITED_CONTENT), no candidates; "
                      "OpenRouter: finish_reason content_filter, native_finish_reason=`reason`",
    "image_safety": "Gemini: finishReason=`reason` (default IMAGE_SAFETY) with finishMessage, no image; "
                    "OpenRouter: finish_reason content_filter, native_finish_reason=`reason`, no images",
    "text_only": "a STOP answer with only `text`",
    "only_thoughts": "Gemini: interim thought images but no final image",
    "no_candidates": "Gemini: no candidates and no block reason / OpenRouter: no choices",
    "http200_error": "HTTP 200 with a top-level error (`code`, default 502; OpenRouter metadata.raw from the provider, `reason`)",
    "finish_error": "OpenRouter: finish_reason error with a choice-level error, native_finish_reason=`reason`",
    "garbage_base64": "an image part whose data is not base64",
    "not_an_image": "valid base64 of bytes that are no image format",
    "oversize": "a 9000x9000 PNG (solid, tiny)",
    "raw": "exactly `status`, `body` (dict -> JSON, str -> text) and `headers`",
    "redirect": "HTTP `status` (default 302) with `Location` = `location` (another host by default)",
    **{k: f"HTTP {v[0]}; params: message, retry_delay (Gemini RetryInfo, e.g. '53s'), retry_after (header)"
          + ("; rate_limit: quota_id, quota_value, quota_metric (QuotaFailure), quota_failure=False (no details)"
             if k == "rate_limit" else "")
       for k, v in ERROR_KINDS.items()},
}


@dataclass
class B:
    """A scripted behaviour: kind name plus parameters."""

    kind: str = "ok"
    params: dict = field(default_factory=dict)

    def __init__(self, kind: str = "ok", **params):
        if kind not in KINDS:
            raise ValueError(f"unknown stand-in behaviour {kind!r}; known: {', '.join(sorted(KINDS))}")
        self.kind, self.params = kind, params

    def get(self, name, default=None):
        return self.params.get(name, default)


def as_behaviour(spec) -> B:
    """A kind name, a dict {"kind": ..., **params} or a B -> B."""
    if isinstance(spec, B):
        return spec
    if isinstance(spec, str):
        return B(spec)
    if isinstance(spec, dict):
        spec = dict(spec)
        return B(spec.pop("kind", "ok"), **spec)
    raise TypeError(f"not a behaviour: {spec!r}")


@dataclass
class Reply:
    """What the handler sends (or not, when ``drop``)."""

    status: int = 200
    body: object = None  # dict/list -> JSON, str/bytes -> as is
    headers: dict = field(default_factory=dict)
    delay: float = 0.0
    drop: bool = False
    stream: object = None  # an iterable of bytes chunks: sent with Transfer-Encoding: chunked


@dataclass
class RecordedRequest:
    """One API request as received (control requests are not recorded)."""

    index: int
    protocol: str  # gemini | openrouter | unknown
    method: str
    path: str  # without query
    query: str
    headers: dict  # name -> value, as received
    body: bytes
    started: float
    json: object = None
    model: str = ""
    prompt: str = ""
    image_bytes: bytes = b""
    image_mime: str = ""
    kind: str = ""  # behaviour applied (or auth/validation outcome)
    status: int | None = None  # None = dropped
    finished: float | None = None
    cancel: threading.Event | None = field(default=None, repr=False)
    held: bool = False  # waiting in behaviour ``hold`` (or at a held batch step)
    batch: bool = False  # one JSONL line of a batch job (not in ``requests``; see ``batch_lines``)
    batch_name: str = ""  # batches/<id> of a batch line or of a Batch API request
    key: str = ""  # the JSONL line's key (batch lines)
    file_name: str = ""  # files/<id> a Files API request concerned

    def header(self, name: str, default=None):
        for k, v in self.headers.items():
            if k.lower() == name.lower():
                return v
        return default

    def summary(self) -> dict:
        return {
            "index": self.index, "protocol": self.protocol, "path": self.path, "query": self.query,
            "headers": self.headers, "model": self.model, "prompt": self.prompt[:300], "kind": self.kind,
            "status": self.status, "image_bytes": len(self.image_bytes), "body_bytes": len(self.body),
            "started": self.started, "finished": self.finished, "held": self.held, "batch": self.batch,
            "batch_name": self.batch_name, "key": self.key, "file_name": self.file_name,
        }


class BadRequest(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request"):
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


# ---------------------------------------------------------------- images

_cache_lock = threading.Lock()
_cache: OrderedDict = OrderedDict()
_CACHE_SIZE = 64


def _cached(key, make):
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    value = make()
    with _cache_lock:
        _cache[key] = value
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return value


def snapped_size(width: int, height: int, image_size: str = "1K", aspect_ratio: str | None = None) -> tuple[int, int]:
    """Gemini's output size: the requested ratio, else the nearest supported one, at 1K/2K/4K."""
    if aspect_ratio is None:
        ratio = math.log(width / height)
        aspect_ratio = min(SIZES_1K, key=lambda r: abs(math.log(SIZES_1K[r][0] / SIZES_1K[r][1]) - ratio))
    w, h = SIZES_1K[aspect_ratio]
    s = SIZE_SCALE[image_size]
    return w * s, h * s


def _encode(im, fmt: str) -> bytes:
    buf = io.BytesIO()
    if fmt == "JPEG":
        im.save(buf, format="JPEG", quality=90)
    else:
        im.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def open_input(data: bytes):
    """Decode an input image (RGB); BadRequest when it cannot be read."""
    from PIL import Image

    try:
        im = Image.open(io.BytesIO(data))
        im.load()
        return im.convert("RGB")
    except Exception as exc:  # PIL raises many kinds for bad data
        raise BadRequest(400, f"Unable to process input image. Please retry or report in "
                              f"https://developers.generativeai.google/guide/troubleshooting ({type(exc).__name__})",
                         "bad_input_image") from None


def derive_image(data: bytes, *, image_size="1K", aspect_ratio=None, size=None, fmt="PNG", tweak=1.05,
                 thought: int = 0, edit: str | None = None) -> tuple[bytes, tuple[int, int]]:
    """The edited image: input resized to the snapped size, mildly brightened
    (``edit``: "mirror" flips it, "shift" moves the scene 5 % to the right: label-breaking answers).

    Interim thought images (``thought`` = 1, 2) are a quarter of the size and
    strongly tinted, so tests can tell them from the final image.
    """
    from PIL import Image, ImageEnhance

    digest = hashlib.sha1(data).hexdigest() if data else "none"
    key = (digest, image_size, aspect_ratio, tuple(size) if size else None, fmt, tweak, thought, edit)

    def make():
        im = open_input(data) if data else Image.new("RGB", (1024, 1024), (96, 128, 64))
        w, h = tuple(size) if size else snapped_size(im.width, im.height, image_size, aspect_ratio)
        if thought:
            w, h = max(1, w // 4), max(1, h // 4)
        out = im.resize((w, h), Image.BILINEAR)
        if thought:
            out = Image.blend(out, Image.new("RGB", out.size, (255, 0, 255) if thought == 1 else (0, 255, 255)), 0.5)
        elif tweak and tweak != 1:
            out = ImageEnhance.Brightness(out).enhance(float(tweak))
        if edit == "mirror":
            out = out.transpose(Image.FLIP_LEFT_RIGHT)
        elif edit == "shift":
            dx = max(1, w // 20)
            shifted = out.copy()
            shifted.paste(out.crop((0, 0, w - dx, h)), (dx, 0))
            out = shifted
        return _encode(out, fmt), (w, h)

    return _cached(key, make)


def oversize_png(side: int = 9000) -> bytes:
    """A valid side x side 1-bit grey PNG, all white: a few kB, built without PIL."""

    def make():
        def chunk(tag: bytes, payload: bytes) -> bytes:
            return len(payload).to_bytes(4, "big") + tag + payload + zlib.crc32(tag + payload).to_bytes(4, "big")

        row = b"\x00" + b"\xff" * ((side + 7) // 8)
        comp = zlib.compressobj(9)
        idat = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
        ihdr = side.to_bytes(4, "big") * 2 + bytes([1, 0, 0, 0, 0])  # bit depth 1, greyscale
        return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")

    return _cached(("oversize", side), make)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def decode_proto_bytes(text: str) -> bytes:
    """A proto3 JSON ``bytes`` value: standard or URL-safe base64, padded or not
    (the google-genai SDK sends URL-safe).  ValueError when it is neither."""
    if not isinstance(text, str):
        raise ValueError("not a string")
    text = text.rstrip("=")
    if "-" in text or "_" in text:
        text = text.replace("-", "+").replace("_", "/")
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def _get(d: dict, *names, default=None):
    """First present key among camelCase / snake_case spellings."""
    if not isinstance(d, dict):
        return default
    for n in names:
        if n in d:
            return d[n]
    return default


# ---------------------------------------------------------------- Gemini protocol

GEN_CONFIG_FIELDS = {
    "stopSequences", "responseMimeType", "responseSchema", "responseJsonSchema", "responseModalities", "candidateCount",
    "maxOutputTokens", "temperature", "topP", "topK", "seed", "presencePenalty", "frequencyPenalty", "responseLogprobs",
    "logprobs", "enableEnhancedCivicAnswers", "speechConfig", "thinkingConfig", "imageConfig", "mediaResolution",
    "_responseJsonSchema",
}
TOP_FIELDS = {"contents", "generationConfig", "safetySettings", "systemInstruction", "tools", "toolConfig", "cachedContent"}
IMAGE_CONFIG_FIELDS = {"aspectRatio", "imageSize"}


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def _unknown(d: dict, allowed: set, where: str):
    for k in d:
        if _camel(k) not in allowed:
            raise BadRequest(400, f'Invalid JSON payload received. Unknown name "{k}" at \'{where}\': Cannot find field.')


class GeminiProtocol:
    name = "gemini"

    def __init__(self, server: "StandinServer"):
        self.server = server

    # --- auth and validation (before any behaviour, like the real service)
    def auth(self, rec: RecordedRequest) -> Reply | None:
        key = rec.header("x-goog-api-key") or (parse_qs(rec.query).get("key") or [None])[0]
        if not key:
            return self.error(403, "Method doesn't allow unregistered callers (callers without established identity). "
                                   "Please use API Key or other form of API consumer identity to call this API.",
                              details=[self._error_info("CREDENTIALS_MISSING")])
        if self.server.api_key is not None and key != self.server.api_key:
            return self.error(400, "API key not valid. Please pass a valid API key.",
                              details=[self._error_info("API_KEY_INVALID"),
                                       {"@type": "type.googleapis.com/google.rpc.LocalizedMessage", "locale": "en-US",
                                        "message": "API key not valid. Please pass a valid API key."}])
        return None

    @staticmethod
    def _error_info(reason: str) -> dict:
        return {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": reason, "domain": "googleapis.com",
                "metadata": {"service": "generativelanguage.googleapis.com"}}

    def parse(self, rec: RecordedRequest) -> dict:
        body = rec.json
        if not isinstance(body, dict):
            raise BadRequest(400, "Invalid JSON payload received. Expected an object.")
        _unknown(body, TOP_FIELDS, "")
        if rec.model not in self.server.gemini_models:
            raise BadRequest(404, f"models/{rec.model} is not found for API version v1beta, or is not supported for "
                                  "generateContent. Call ListModels to see the list of available models and their "
                                  "supported methods.", "unknown_model")
        contents = body.get("contents")
        if not isinstance(contents, list) or not contents:
            raise BadRequest(400, "* GenerateContentRequest.contents: contents is not specified\n")
        texts, image, mime = [], b"", ""
        for content in contents:
            for part in (content.get("parts") or []) if isinstance(content, dict) else []:
                if not isinstance(part, dict):
                    continue
                if isinstance(part.get("text"), str):
                    texts.append(part["text"])
                blob = _get(part, "inlineData", "inline_data")
                if isinstance(blob, dict):
                    try:
                        image = decode_proto_bytes(blob.get("data") or "")
                    except ValueError:
                        raise BadRequest(400, "Invalid value at 'contents[0].parts[0].inline_data.data' (TYPE_BYTES), "
                                              "Base64 decoding failed") from None
                    mime = _get(blob, "mimeType", "mime_type", default="")
        rec.prompt, rec.image_bytes, rec.image_mime = "\n".join(texts), image, mime
        gen = _get(body, "generationConfig", "generation_config", default={}) or {}
        if not isinstance(gen, dict):
            raise BadRequest(400, "Invalid JSON payload received. 'generation_config' must be an object.")
        _unknown(gen, GEN_CONFIG_FIELDS, "generation_config")
        img_cfg = _get(gen, "imageConfig", "image_config", default={}) or {}
        _unknown(img_cfg, IMAGE_CONFIG_FIELDS, "generation_config.image_config")
        aspect = _get(img_cfg, "aspectRatio", "aspect_ratio")
        size = _get(img_cfg, "imageSize", "image_size", default="1K")
        if aspect is not None and aspect not in SIZES_1K:
            raise BadRequest(400, f"Unsupported aspect ratio: {aspect}. Supported: {', '.join(SIZES_1K)}")
        if size not in SIZE_SCALE:
            raise BadRequest(400, f"Unsupported image size: {size}. Supported: 1K, 2K, 4K")
        modalities = _get(gen, "responseModalities", "response_modalities")
        wants_image = modalities is None or any(str(m).upper() == "IMAGE" for m in modalities)
        if image and mime not in ("image/png", "image/jpeg", "image/webp", "image/heic", "image/heif"):
            raise BadRequest(400, f"Unsupported MIME type: {mime}")
        if image:
            open_input(image)  # 400 for undecodable input, like the service
        return {"aspect": aspect, "size": size, "wants_image": wants_image}

    # --- answers
    def error(self, status: int, message: str, *, details=None, retry_after=None, status_name=None) -> Reply:
        err = {"code": status, "message": message, "status": status_name or GOOGLE_STATUS.get(status, "UNKNOWN")}
        if details:
            err["details"] = details
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
        return Reply(status, {"error": err}, headers)

    def usage(self, rec, b: B, info, *, candidates: int, thoughts: int = 0, image_tokens: int | None = None) -> dict:
        prompt_text = max(1, len(rec.prompt) // 4)
        prompt = prompt_text + (INPUT_IMAGE_TOKENS if rec.image_bytes else 0)
        meta = {"promptTokenCount": prompt, "candidatesTokenCount": candidates,
                "totalTokenCount": prompt + candidates + thoughts,
                "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt_text}]}
        if rec.image_bytes:
            meta["promptTokensDetails"].append({"modality": "IMAGE", "tokenCount": INPUT_IMAGE_TOKENS})
        if thoughts:
            meta["thoughtsTokenCount"] = thoughts
        if image_tokens and b.get("image_details", True):
            meta["candidatesTokensDetails"] = [{"modality": "IMAGE", "tokenCount": image_tokens}]
            if candidates > image_tokens:
                meta["candidatesTokensDetails"].append({"modality": "TEXT", "tokenCount": candidates - image_tokens})
        return meta

    def envelope(self, rec, b: B, info, *, candidates=None, prompt_feedback=None, usage=None) -> dict:
        out = {}
        if candidates is not None:
            out["candidates"] = candidates
        if prompt_feedback is not None:
            out["promptFeedback"] = prompt_feedback
        if usage is not None and b.get("usage", True):
            out["usageMetadata"] = usage
        out["modelVersion"] = rec.model
        out["responseId"] = f"standin-{rec.index:06d}-{hashlib.sha1(str(rec.started).encode()).hexdigest()[:10]}"
        return out

    def image_answer(self, rec, b: B, info, *, final_part=None, final_tokens=None) -> Reply:
        fmt = str(b.get("fmt", "PNG")).upper()
        parts, thoughts = [], int(b.get("thoughts", 0))
        if thoughts:
            parts.append({"text": "**Planning the edit**\n\nAdjusting the lighting only; keeping the vegetation.",
                          "thought": True})
        for i in range(1, min(thoughts, 2) + 1):
            data, _ = derive_image(rec.image_bytes, image_size=info["size"], aspect_ratio=info["aspect"], thought=i)
            parts.append({"inlineData": {"mimeType": "image/png", "data": _b64(data)}, "thought": True})
        if final_part is None:
            data, _ = derive_image(rec.image_bytes, image_size=info["size"], aspect_ratio=info["aspect"],
                                   size=b.get("size"), fmt=fmt, tweak=b.get("tweak", 1.05), edit=b.get("edit"))
            label = b.get("label") or ("image/jpeg" if fmt == "JPEG" else "image/png")
            final_part = {"inlineData": {"mimeType": label, "data": _b64(data)}}
        if thoughts:
            final_part["thoughtSignature"] = _b64(b"standin-signature-%d" % rec.index)
        parts.append(final_part)
        caption_tokens = 0
        if b.get("text"):
            parts.append({"text": b.get("text")})
            caption_tokens = max(1, len(b.get("text")) // 4)
        image_tokens = OUTPUT_IMAGE_TOKENS[info["size"]] if final_tokens is None else final_tokens
        usage = self.usage(rec, b, info, candidates=image_tokens + caption_tokens,
                           thoughts=150 * thoughts if thoughts else 0, image_tokens=image_tokens)
        cand = {"content": {"role": "model", "parts": parts}, "finishReason": "STOP", "index": 0}
        return Reply(200, self.envelope(rec, b, info, candidates=[cand], usage=usage))

    def answer(self, rec: RecordedRequest, b: B, info: dict) -> Reply:
        k = b.kind
        if k in ERROR_KINDS:
            status, message, _ = ERROR_KINDS[k]
            status = int(b.get("status", status))
            details = []
            if k == "bad_key":
                details.append(self._error_info("API_KEY_INVALID"))
            if k == "rate_limit" and b.get("quota_failure", True):
                violation = {
                    "quotaMetric": b.get("quota_metric", "generativelanguage.googleapis.com/generate_content_paid_tier_input_token_count"),
                    "quotaId": b.get("quota_id", "GenerateContentPaidTierInputTokensPerModelPerMinute"),
                    "quotaDimensions": {"location": "global", "model": rec.model}}
                if b.get("quota_value") is not None:
                    violation["quotaValue"] = str(b.get("quota_value"))
                details.append({"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [violation]})
                details.append({"@type": "type.googleapis.com/google.rpc.Help", "links": [
                    {"description": "Learn more about Gemini API quotas",
                     "url": "https://ai.google.dev/gemini-api/docs/rate-limits"}]})
            delay = b.get("retry_delay", "53s" if k == "rate_limit" and b.get("quota_failure", True) else None)
            if delay is not None:
                details.append({"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay})
            if k == "not_found":
                message = f"models/{rec.model} is not found for API version v1beta, or is not supported for generateContent."
            return self.error(status, b.get("message", message), details=details, retry_after=b.get("retry_after"))
        if k == "raw":
            return Reply(int(b.get("status", 200)), b.get("body"), dict(b.get("headers") or {}))
        if k == "redirect":
            return Reply(int(b.get("status", 302)), "", {"Location": b.get("location", "http://127.0.0.2:9/elsewhere")})
        if not info["wants_image"] or k == "text_only":
            text = b.get("text", "I can't edit this image, but here is a description: a pasture quadrat with grass.")
            n = max(1, len(text) // 4)
            cand = {"content": {"role": "model", "parts": [{"text": text}]}, "finishReason": "STOP", "index": 0}
            return Reply(200, self.envelope(rec, b, info, candidates=[cand], usage=self.usage(rec, b, info, candidates=n)))
        if k == "ok":
            return self.image_answer(rec, b, info)
        if k == "jpeg_as_png":
            return self.image_answer(rec, B("ok", **{**b.params, "fmt": "JPEG", "label": "image/png"}), info)
        if k == "garbage_base64":
            return self.image_answer(rec, b, info, final_part={"inlineData": {"mimeType": "image/png",
                                                                               "data": "!!not*base64~~" * 8}})
        if k == "not_an_image":
            junk = b"<html>this is not an image</html>" * 4
            return self.image_answer(rec, b, info, final_part={"inlineData": {"mimeType": "image/png", "data": _b64(junk)}})
        if k == "oversize":
            return self.image_answer(rec, b, info, final_part={"inlineData": {"mimeType": "image/png",
                                                                               "data": _b64(oversize_png())}})
        if k == "prompt_blocked":
            fb = {"blockReason": b.get("reason", "PROHIBITED_CONTENT")}
            usage = {"promptTokenCount": INPUT_IMAGE_TOKENS + len(rec.prompt) // 4,
                     "totalTokenCount": INPUT_IMAGE_TOKENS + len(rec.prompt) // 4}
            return Reply(200, self.envelope(rec, b, info, prompt_feedback=fb, usage=usage))
        if k == "image_safety":
            cand = {"finishReason": b.get("reason", "IMAGE_SAFETY"), "index": 0,
                    "finishMessage": b.get("message", "Unable to show the generated image. The image was filtered out "
                                                      "because it violated Google's Generative AI Prohibited Use policy.")}
            if b.get("text"):
                cand["content"] = {"role": "model", "parts": [{"text": b.get("text")}]}
            return Reply(200, self.envelope(rec, b, info, candidates=[cand],
                                            usage=self.usage(rec, b, info, candidates=0)))
        if k == "only_thoughts":
            parts = []
            for i in (1, 2):
                data, _ = derive_image(rec.image_bytes, image_size=info["size"], aspect_ratio=info["aspect"], thought=i)
                parts.append({"inlineData": {"mimeType": "image/png", "data": _b64(data)}, "thought": True})
            cand = {"content": {"role": "model", "parts": parts}, "finishReason": "STOP", "index": 0}
            return Reply(200, self.envelope(rec, b, info, candidates=[cand],
                                            usage=self.usage(rec, b, info, candidates=0, thoughts=300)))
        if k == "no_candidates":
            return Reply(200, self.envelope(rec, b, info, usage={"promptTokenCount": 600, "totalTokenCount": 600}))
        if k == "http200_error":
            code = int(b.get("code", 503))
            return Reply(200, {"error": {"code": code, "message": b.get("message", "The model is overloaded."),
                                         "status": GOOGLE_STATUS.get(code, "UNKNOWN")}})
        if k == "finish_error":
            return self.answer(rec, B("image_safety", reason=b.get("reason", "OTHER")), info)
        raise ValueError(f"behaviour {k!r} has no Gemini form")

    def invalid(self, exc: BadRequest) -> Reply:
        return self.error(exc.status, exc.message)


# ---------------------------------------------------------------- OpenRouter protocol

class OpenRouterProtocol:
    name = "openrouter"

    def __init__(self, server: "StandinServer"):
        self.server = server

    def auth(self, rec: RecordedRequest) -> Reply | None:
        value = rec.header("Authorization") or ""
        scheme, _, key = value.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            return self.error(401, "No auth credentials found")
        if self.server.api_key is not None and key.strip() != self.server.api_key:
            return self.error(401, "User not found.")
        return None

    def parse(self, rec: RecordedRequest) -> dict:
        body = rec.json
        if not isinstance(body, dict):
            raise BadRequest(400, "Invalid JSON body")
        model = body.get("model")
        rec.model = model if isinstance(model, str) else ""
        if rec.model not in self.server.openrouter_models:
            raise BadRequest(400, f"{rec.model or '(none)'} is not a valid model ID", "unknown_model")
        if body.get("stream"):
            raise BadRequest(400, "stand-in: streaming is not supported")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadRequest(400, "Input required: specify \"prompt\" or \"messages\"")
        texts, image, mime = [], b"", ""
        for msg in messages:
            if not isinstance(msg, dict) or msg.get("role") not in ("user", "system", "assistant", "developer", "tool"):
                raise BadRequest(400, "Invalid message: each needs a role")
            content = msg.get("content")
            if isinstance(content, str):
                texts.append(content)
                continue
            for part in content or []:
                if not isinstance(part, dict) or part.get("type") not in ("text", "image_url", "file", "input_audio"):
                    raise BadRequest(400, f"Invalid content part: {json.dumps(part)[:100]}")
                if part["type"] == "text":
                    texts.append(str(part.get("text", "")))
                elif part["type"] == "image_url":
                    url = (part.get("image_url") or {}).get("url", "")
                    head, sep, data = url.partition(",")
                    if not (url.startswith("data:") and sep and head.endswith(";base64")):
                        raise BadRequest(400, "stand-in: only base64 data URLs are supported for image_url")
                    try:
                        image = base64.b64decode(data, validate=True)
                    except ValueError:
                        raise BadRequest(400, "Invalid base64 image data") from None
                    mime = head[5:-7]
        rec.prompt, rec.image_bytes, rec.image_mime = "\n".join(texts), image, mime
        img_cfg = body.get("image_config") or {}
        aspect = img_cfg.get("aspect_ratio", img_cfg.get("aspectRatio")) if isinstance(img_cfg, dict) else None
        size = img_cfg.get("image_size", img_cfg.get("imageSize", "1K")) if isinstance(img_cfg, dict) else "1K"
        if aspect is not None and aspect not in SIZES_1K:
            raise BadRequest(400, f"Unsupported aspect_ratio: {aspect}")
        if size not in SIZE_SCALE:
            raise BadRequest(400, f"Unsupported image_size: {size}")
        modalities = body.get("modalities")
        wants_image = isinstance(modalities, list) and "image" in modalities
        if image:
            open_input(image)
        return {"aspect": aspect, "size": size, "wants_image": wants_image}

    def error(self, status: int, message: str, metadata=None, retry_after=None) -> Reply:
        err = {"code": status, "message": message}
        if metadata:
            err["metadata"] = metadata
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
        return Reply(status, {"error": err, "user_id": "user_standin"}, headers)

    def invalid(self, exc: BadRequest) -> Reply:
        return self.error(exc.status, exc.message)

    def completion(self, rec, b: B, info, *, message: dict, finish="stop", native="STOP",
                   completion_tokens=0, image_tokens=None, reasoning=0, extra_choice=None) -> dict:
        prompt = max(1, len(rec.prompt) // 4) + (INPUT_IMAGE_TOKENS if rec.image_bytes else 0)
        usage = {"prompt_tokens": prompt, "completion_tokens": completion_tokens,
                 "total_tokens": prompt + completion_tokens,
                 "completion_tokens_details": {"reasoning_tokens": reasoning},
                 "prompt_tokens_details": {"cached_tokens": 0}}
        if image_tokens is not None and b.get("image_details", True):
            usage["completion_tokens_details"]["image_tokens"] = image_tokens
        cost = b.get("cost", "auto")
        if cost == "auto":
            cost = round(prompt * 2e-6 + (completion_tokens - (image_tokens or 0)) * 12e-6 + (image_tokens or 0) * 120e-6, 6)
        if cost is not None:
            usage["cost"] = cost
        choice = {"logprobs": None, "finish_reason": finish, "native_finish_reason": native, "index": 0,
                  "message": {"role": "assistant", "refusal": None, "reasoning": None, **message}}
        if extra_choice:
            choice.update(extra_choice)
        out = {"id": f"gen-{int(rec.started)}-standin{rec.index:06d}", "provider": "Google", "model": rec.model,
               "object": "chat.completion", "created": int(rec.started), "choices": [choice]}
        if b.get("usage", True):
            out["usage"] = usage
        return out

    def image_answer(self, rec, b: B, info, *, url=None) -> Reply:
        fmt = str(b.get("fmt", "PNG")).upper()
        thoughts = int(b.get("thoughts", 0))
        images = []
        # Interim images, when a provider passes them through, come before the final one.
        for i in range(1, min(thoughts, 2) + 1):
            data, _ = derive_image(rec.image_bytes, image_size=info["size"], aspect_ratio=info["aspect"], thought=i)
            images.append({"type": "image_url", "image_url": {"url": f"data:image/png;base64,{_b64(data)}"}, "index": i - 1})
        if url is None:
            data, _ = derive_image(rec.image_bytes, image_size=info["size"], aspect_ratio=info["aspect"],
                                   size=b.get("size"), fmt=fmt, tweak=b.get("tweak", 1.05), edit=b.get("edit"))
            label = b.get("label") or ("image/jpeg" if fmt == "JPEG" else "image/png")
            url = f"data:{label};base64,{_b64(data)}"
        images.append({"type": "image_url", "image_url": {"url": url}, "index": len(images)})
        text = b.get("text") or ""
        image_tokens = OUTPUT_IMAGE_TOKENS[info["size"]]
        message = {"content": text, "images": images}
        if thoughts:
            message["reasoning"] = "**Planning the edit** Adjusting the lighting only; keeping the vegetation."
        body = self.completion(rec, b, info, message=message, completion_tokens=image_tokens + len(text) // 4 + 150 * thoughts,
                               image_tokens=image_tokens, reasoning=150 * thoughts)
        return Reply(200, body)

    def answer(self, rec: RecordedRequest, b: B, info: dict) -> Reply:
        k = b.kind
        if k in ERROR_KINDS:
            status, _, message = ERROR_KINDS[k]
            status = int(b.get("status", 401 if k == "bad_key" else status))
            metadata = None
            if k == "forbidden":
                metadata = {"reasons": ["violence"], "flagged_input": rec.prompt[:100], "provider_name": "Google",
                            "model_slug": rec.model}
            elif status in (429, 500, 502, 503, 504):
                raw = {"error": {"code": status, "message": ERROR_KINDS[k][1], "status": GOOGLE_STATUS.get(status, "UNKNOWN")}}
                metadata = {"raw": json.dumps(raw), "provider_name": "Google"}
            return self.error(status, b.get("message", message), metadata, retry_after=b.get("retry_after"))
        if k == "raw":
            return Reply(int(b.get("status", 200)), b.get("body"), dict(b.get("headers") or {}))
        if k == "redirect":
            return Reply(int(b.get("status", 302)), "", {"Location": b.get("location", "http://127.0.0.2:9/elsewhere")})
        if not info["wants_image"] or k == "text_only":
            text = b.get("text", "I can't edit this image, but here is a description: a pasture quadrat with grass.")
            return Reply(200, self.completion(rec, b, info, message={"content": text}, completion_tokens=max(1, len(text) // 4)))
        if k == "ok":
            return self.image_answer(rec, b, info)
        if k == "jpeg_as_png":
            return self.image_answer(rec, B("ok", **{**b.params, "fmt": "JPEG", "label": "image/png"}), info)
        if k == "garbage_base64":
            return self.image_answer(rec, b, info, url="data:image/png;base64," + "!!not*base64~~" * 8)
        if k == "not_an_image":
            return self.image_answer(rec, b, info, url="data:image/png;base64," + _b64(b"<html>not an image</html>" * 4))
        if k == "oversize":
            return self.image_answer(rec, b, info, url="data:image/png;base64," + _b64(oversize_png()))
        if k in ("prompt_blocked", "image_safety"):
            reason = b.get("reason", "PROHIBITED_CONTENT" if k == "prompt_blocked" else "IMAGE_SAFETY")
            return Reply(200, self.completion(rec, b, info, message={"content": b.get("text", "")},
                                              finish="content_filter", native=reason))
        if k == "only_thoughts":
            return Reply(200, self.completion(rec, b, info, message={"content": "", "reasoning": "thinking..."},
                                              completion_tokens=300, reasoning=300))
        if k == "no_candidates":
            body = self.completion(rec, b, info, message={"content": ""})
            body.pop("choices")
            return Reply(200, body)
        if k == "http200_error":
            code = int(b.get("code", 502))
            reason = b.get("reason", "IMAGE_SAFETY")
            raw = {"candidates": [{"finishReason": reason, "index": 0}]} if reason else {"error": {"code": 503}}
            return Reply(200, {"id": f"gen-{int(rec.started)}-standin{rec.index:06d}",
                               "error": {"code": code, "message": b.get("message", "Provider returned error"),
                                         "metadata": {"raw": json.dumps(raw), "provider_name": "Google AI Studio"}},
                               "user_id": "user_standin"})
        if k == "finish_error":
            reason = b.get("reason", "OTHER")
            return Reply(200, self.completion(
                rec, b, info, message={"content": ""}, finish="error", native=reason,
                extra_choice={"error": {"code": 502, "message": b.get("message", "Provider returned error"),
                                        "metadata": {"raw": json.dumps({"finishReason": reason}),
                                                     "provider_name": "Google"}}}))
        raise ValueError(f"behaviour {k!r} has no OpenRouter form")


# ---------------------------------------------------------------- server

class StandinServer:
    """The stand-in: start(), .url, script()/set_default()/set_rule(), .requests, stop()."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, api_key: str | None = DEFAULT_API_KEY,
                 latency: float = 0.0, gemini_models=GEMINI_MODELS, openrouter_models=OPENROUTER_MODELS, quiet=True):
        self.host, self.port = host, port
        self.api_key = api_key
        self.latency = float(latency)
        self.gemini_models = set(gemini_models)
        self.openrouter_models = set(openrouter_models)
        self.quiet = quiet
        self.protocols = {"gemini": GeminiProtocol(self), "openrouter": OpenRouterProtocol(self)}
        self._lock = threading.RLock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.batch = None
        self.reset()
        from .batch import BatchService  # Files + Batch API state (batch.py)

        self.batch = BatchService(self)

    # --- lifecycle
    def start(self) -> "StandinServer":
        handler = type("Handler", (_Handler,), {"standin": self})
        self._httpd = _HTTPServer((self.host, self.port), handler)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"standin:{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._lock:
            self._cancel.set()  # wakes slow answers and latency waits
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def gemini_base_url(self) -> str:
        return f"{self.url}/v1beta"

    @property
    def openrouter_url(self) -> str:
        return f"{self.url}/api/v1/chat/completions"

    # --- scripting
    def reset(self) -> None:
        """Forget scripts, defaults, rules, recorded requests and counters."""
        with self._lock:
            # Requests still running from before a reset (slow answers) are woken
            # and no longer counted in the concurrency numbers.
            old = getattr(self, "_cancel", None)
            if old is not None:
                old.set()
            self._cancel = threading.Event()
            self._release = threading.Event()
            self._changed = threading.Condition(self._lock)
            self._queues: dict = {}  # (protocol, match) -> deque[B]
            self._defaults: dict = {}  # (protocol, match) -> B
            self._rule: Callable | None = None
            self._quota_cfg = None
            self._requests: list[RecordedRequest] = []
            self._counter = itertools.count()
            self.in_flight = 0
            self.max_in_flight = 0
        if self.batch is not None:  # outside the server lock (lock order: batch, then server)
            self.batch.reset()

    def script(self, protocol: str, *behaviours, match: str | None = None) -> None:
        """Queue behaviours for the next requests of ``protocol`` ("gemini", "openrouter" or "*")
        whose prompt contains ``match`` (None = any)."""
        self._check_protocol(protocol)
        items = [as_behaviour(b) for b in behaviours]
        with self._lock:
            self._queues.setdefault((protocol, match), deque()).extend(items)

    def set_default(self, protocol: str, behaviour="ok", match: str | None = None) -> None:
        """The behaviour used when no scripted one is left (per protocol and prompt match)."""
        self._check_protocol(protocol)
        with self._lock:
            self._defaults[(protocol, match)] = as_behaviour(behaviour)

    def set_rule(self, rule: Callable[[RecordedRequest], object] | None) -> None:
        """``rule(request) -> behaviour or None``, consulted before the scripts."""
        with self._lock:
            self._rule = rule

    def pending(self, protocol: str | None = None) -> int:
        """Scripted behaviours not yet consumed."""
        with self._lock:
            return sum(len(q) for (p, _), q in self._queues.items() if protocol in (None, p))

    @staticmethod
    def _check_protocol(protocol: str) -> None:
        if protocol not in ("gemini", "openrouter", "*"):
            raise ValueError(f"protocol must be gemini, openrouter or *, not {protocol!r}")

    def _choose(self, rec: RecordedRequest) -> B:
        with self._lock:
            rule = self._rule
        if rule is not None:
            chosen = rule(rec)
            if chosen is not None:
                return as_behaviour(chosen)
        with self._lock:
            for table, take in ((self._queues, lambda q: q.popleft() if q else None), (self._defaults, lambda b: b)):
                # specific matches first, then protocol-wide, then "*"
                keys = sorted(table, key=lambda pm: (pm[1] is None, pm[0] == "*"))
                for proto, match in keys:
                    if proto not in (rec.protocol, "*") or (match is not None and match not in rec.prompt):
                        continue
                    found = take(table[(proto, match)])
                    if found is not None:
                        return found
        return B("ok")

    def set_quota(self, per_minute: int | None = None, per_day: int | None = None, window_s: float = 60.0) -> None:
        """Google-like quotas on generateContent: more than ``per_minute`` accepted requests in any
        60 s window answer 429 (QuotaFailure ...PerMinute..., quotaValue, RetryInfo until a place
        frees); past ``per_day`` accepted requests every request answers 429 (...PerDay..., no RetryInfo).
        ``window_s`` shortens the minute for tests that check spacing, not wall time."""
        with self._lock:
            self._quota_cfg = {"per_minute": per_minute, "per_day": per_day, "window_s": float(window_s)}
            self._accepted = deque()
            self._accepted_total = 0

    def _quota(self, rec: RecordedRequest) -> B | None:
        with self._lock:
            cfg = getattr(self, "_quota_cfg", None)
            if not cfg or not (cfg["per_minute"] or cfg["per_day"]):
                return None
            now = time.monotonic()
            if cfg["per_day"] and self._accepted_total >= cfg["per_day"]:
                return B("rate_limit", quota_id="GenerateRequestsPerDayPerProjectPerModel", quota_value=cfg["per_day"],
                         quota_metric="generativelanguage.googleapis.com/generate_requests_per_model_per_day",
                         retry_delay=None, _quota="day")
            window, span = self._accepted, cfg.get("window_s", 60.0)
            while window and window[0] <= now - span:
                window.popleft()
            if cfg["per_minute"] and len(window) >= cfg["per_minute"]:
                wait = max(1, math.ceil(window[0] + span - now))
                return B("rate_limit", quota_id="GenerateRequestsPerMinutePerProjectPerModel",
                         quota_value=cfg["per_minute"], retry_delay=f"{wait}s",
                         quota_metric="generativelanguage.googleapis.com/generate_requests_per_model", _quota="minute")
            window.append(now)
            self._accepted_total += 1
            return None

    def release(self) -> None:
        """Let every held answer (behaviour ``hold``) go, now and from now on; also every held
        batch step (those are disarmed: ``hold_batch_step`` arms them again)."""
        self._release.set()
        if self.batch is not None:
            self.batch.release_step()

    def wait_until(self, predicate: Callable[["StandinServer"], bool], timeout: float = 120.0) -> None:
        """Block until ``predicate(server)`` is true (re-checked whenever a request starts or ends,
        and on batch events: uploads, creates, polls, state changes, holds)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"stand-in: condition not met within {timeout:g} s ({self.stats()})")
                self._changed.wait(min(left, 1.0))

    def answers(self) -> list[RecordedRequest]:
        """Requests answered with an image (each one a paid answer at the real service).
        Synchronous calls only: batch lines are in ``batch_answers()``."""
        return [r for r in self.requests if r.status == 200 and r.kind in ("ok", "hold", "slow", "jpeg_as_png")]

    # --- Batch API + Files API (state and logic in batch.py)
    def set_batch_behaviour(self, kind: str = "succeed", **params) -> None:
        """How batches created from now on live (when ``script_batches`` has none queued):
        ``succeed`` (default; ``polls`` = how many gets still see it unfinished, default 1;
        0 = finished at creation), ``hold`` (RUNNING until ``finish_batches()``; ``then``),
        ``fail`` (FAILED + operation ``error``: ``code``, ``message``), ``expire`` (EXPIRED, no
        results).  Every kind also takes ``stats`` (real | full | omit) and ``polls``."""
        self.batch.set_behaviour(kind, **params)

    def script_batches(self, *behaviours) -> None:
        """Queue batch behaviours (kind, dict or ``BatchBehaviour``), one per batch created."""
        self.batch.script(*behaviours)

    def finish_batches(self, *names, outcome: str | None = None) -> list[str]:
        """End unfinished batches now (all, or those named) as ``outcome`` (succeed | fail | expire;
        default: the batch's own, ``then`` for ``hold``); answers their lines.  Returns the names."""
        return self.batch.finish(*names, outcome=outcome)

    def hold_batch_step(self, *steps: str) -> None:
        """Hold the answers of ``upload`` (finalize; the file is stored), ``create`` (the job
        exists and is listed), ``poll`` (GET batches/{id}) or ``download`` until
        ``release_batch_step`` / ``release()``.  Held requests have ``held=True``."""
        self.batch.hold_step(*steps)

    def release_batch_step(self, *steps: str) -> None:
        """Let held batch steps go (all when none named) and stop holding them."""
        self.batch.release_step(*steps)

    def set_batch_stats(self, mode: str) -> None:
        """``real`` (default: int64 strings, zero counts left out like proto3 JSON), ``full``
        (all four counts) or ``omit`` (no ``batchStats`` at all, as the service sometimes does)."""
        self.batch.set_stats(mode)

    def set_upload_granularity(self, size: int) -> None:
        """``X-Goog-Upload-Chunk-Granularity`` (default 8 MiB): non-final chunks must be multiples."""
        if int(size) <= 0:
            raise ValueError("granularity must be positive")
        self.batch.granularity = int(size)

    @property
    def batches(self) -> list:
        """Every batch ever created (``BatchRecord``: name, display_name, model, keys, state, polls,
        behaviour, responses_file, line_requests, deleted, create_answered ...), oldest first."""
        return self.batch.batches

    @property
    def uploads(self) -> list:
        """Every uploaded file (``FileRecord``: name, display_name, mime_type, data, size, deleted ...)."""
        return self.batch.uploads

    @property
    def batch_lines(self) -> list[RecordedRequest]:
        """Every batch line answered so far (protocol gemini, ``batch=True``); not in ``requests``."""
        return self.batch.lines

    def batch_answers(self) -> list[RecordedRequest]:
        """Batch lines answered with an image (each one a paid answer, at the batch price)."""
        return self.batch.answers()

    # --- observation
    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def requests_for(self, protocol: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.protocol == protocol]

    @property
    def count(self) -> int:
        with self._lock:
            return len(self._requests)

    def stats(self) -> dict:
        with self._lock:
            reqs = list(self._requests)
            by_kind: dict = {}
            for r in reqs:
                by_kind[r.kind] = by_kind.get(r.kind, 0) + 1
            return {"count": len(reqs), "in_flight": self.in_flight, "max_in_flight": self.max_in_flight,
                    "by_protocol": {p: sum(1 for r in reqs if r.protocol == p)
                                    for p in ("gemini", "openrouter", "gemini_batch")},
                    "by_kind": by_kind, "pending": sum(len(q) for q in self._queues.values()),
                    "latency": self.latency,
                    "batches": len(self.batch.batches) if self.batch is not None else 0,
                    "uploads": len(self.batch.uploads) if self.batch is not None else 0,
                    "batch_lines": len(self.batch.lines) if self.batch is not None else 0}

    def key_leaks(self, key: str) -> list[str]:
        """Where ``key`` appears other than in the protocol's auth header (empty = nowhere)."""
        leaks = []
        auth_header = {"gemini": "x-goog-api-key", "gemini_batch": "x-goog-api-key", "openrouter": "authorization"}
        for r in self.requests:
            if key in r.path or key in unquote(r.query) or key in r.query:
                leaks.append(f"request {r.index}: URL")
            if key.encode() in r.body:
                leaks.append(f"request {r.index}: body")
            for name, value in r.headers.items():
                if key in value and name.lower() != auth_header.get(r.protocol):
                    leaks.append(f"request {r.index}: header {name}")
        return leaks

    # --- request handling (called by the handler thread)
    def _enter(self, rec: RecordedRequest) -> None:
        with self._lock:
            rec.cancel = self._cancel
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self._changed.notify_all()

    def _leave(self, rec: RecordedRequest) -> None:
        with self._lock:
            if rec.cancel is self._cancel:  # else counted before a reset
                self.in_flight -= 1
            self._changed.notify_all()

    def _notify(self) -> None:
        with self._lock:
            self._changed.notify_all()

    def _record(self, rec_args: dict) -> RecordedRequest:
        with self._lock:
            rec = RecordedRequest(index=next(self._counter), **rec_args)
            self._requests.append(rec)
            return rec

    @staticmethod
    def wait(rec: RecordedRequest, seconds: float) -> None:
        """Sleep, unless the server is stopped or reset meanwhile."""
        if seconds > 0 and rec.cancel is not None:
            rec.cancel.wait(seconds)

    def handle_api(self, rec: RecordedRequest) -> Reply:
        proto = self.protocols.get(rec.protocol)
        if proto is None:
            rec.kind = "unknown_path"
            return Reply(404, {"error": {"code": 404, "message": f"stand-in: no such endpoint {rec.path}",
                                         "status": "NOT_FOUND"}})
        self.wait(rec, self.latency)
        denied = proto.auth(rec)
        if denied is not None:
            rec.kind = "auth_failed"
            return denied
        try:
            info = proto.parse(rec)
        except BadRequest as exc:
            rec.kind = exc.kind
            return proto.invalid(exc)
        limited = self._quota(rec) if rec.protocol == "gemini" else None
        if limited is not None:
            rec.kind = limited.kind
            return proto.answer(rec, limited, info)
        b = self._choose(rec)
        rec.kind = b.kind
        delay = 0.0
        if b.kind == "slow":
            delay = float(b.get("delay", 5.0))
            then = as_behaviour(b.get("then", "ok"))
            b = then
        elif b.kind == "hold":
            rec.held = True
            self._notify()
            release = self._release
            while not release.is_set() and not (rec.cancel is not None and rec.cancel.is_set()):
                release.wait(0.5)
            rec.held = False
            b = as_behaviour(b.get("then", "ok"))
        if b.kind == "slow_body":
            reply = proto.answer(rec, as_behaviour(b.get("then", "ok")), info)
            stall = rec.cancel if b.get("stall") else None
            if b.get("hold"):
                stall = _HeldBody(self, rec)
            reply.stream = _pieces(json.dumps(reply.body).encode(), int(b.get("pieces", 8)), float(b.get("pause", 0.3)),
                                   stall)
            reply.headers = {**reply.headers, "Content-Type": "application/json; charset=UTF-8"}
            reply.delay += float(b.get("delay", 0.0))
            return reply
        if b.kind == "drop":
            return Reply(drop=True, delay=delay)
        reply = proto.answer(rec, b, info)
        reply.delay += delay
        return reply


class _HeldBody:
    """A body held after its first piece (the 200's headers are out) until release(): ``held`` meanwhile."""

    def __init__(self, server: "StandinServer", rec: "RecordedRequest"):
        self.server, self.rec = server, rec

    def wait(self, _timeout: float) -> None:
        self.rec.held = True
        self.server._notify()
        while not self.server._release.is_set() and not (self.rec.cancel is not None and self.rec.cancel.is_set()):
            self.server._release.wait(0.5)
        self.rec.held = False


def _pieces(data: bytes, n: int, pause: float, stall=None):
    step = -(-len(data) // n)
    for i in range(0, len(data), step):
        if i and stall is not None:
            stall.wait(60)  # until the stand-in is reset (the client has long given up)
        else:
            time.sleep(pause)
        yield data[i : i + step]


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # benchmarks open many connections at once


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "standin/1"
    standin: StandinServer  # set on the subclass

    def log_message(self, fmt, *args):  # quiet unless asked
        if not self.standin.quiet:
            sys.stderr.write("standin: " + (fmt % args) + "\n")

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            out = bytearray()
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0] or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body, headers: dict | None = None) -> None:
        if isinstance(body, (dict, list)):
            data, ctype = json.dumps(body).encode("utf-8"), "application/json; charset=UTF-8"
        elif isinstance(body, str):
            data, ctype = body.encode("utf-8"), "text/plain; charset=UTF-8"
        else:
            data, ctype = (body or b""), "application/octet-stream"
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def _send_stream(self, status: int, chunks, headers: dict | None = None) -> None:
        self.send_response(status)
        headers = dict(headers or {})
        headers.setdefault("Content-Type", "application/octet-stream")
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for chunk in chunks:
            if chunk:
                self.wfile.write(b"%x\r\n" % len(chunk) + bytes(chunk) + b"\r\n")
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def do_GET(self):
        parts = urlsplit(self.path)
        if not parts.path.startswith("/_standin/") and self._batch_api("GET", parts):
            return
        self._control("GET")

    def do_DELETE(self):
        parts = urlsplit(self.path)
        if self._batch_api("DELETE", parts):
            return
        self._read_body()
        self._send(404, {"error": {"code": 404, "message": f"stand-in: no such endpoint DELETE {parts.path}",
                                   "status": "NOT_FOUND"}})

    def _batch_api(self, method: str, parts) -> bool:
        """Files API / Batch API requests (batch.py); False when the path is none of theirs."""
        st = self.standin
        routed = st.batch.route(method, parts.path, parts.query)
        if routed is None:
            return False
        op, args = routed
        body = self._read_body()
        parsed = None
        if op != "file_upload" and body:
            try:
                parsed = json.loads(body.decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                parsed = None
        rec = st._record(dict(protocol="gemini_batch", method=method, path=parts.path, query=parts.query,
                              headers={k: v for k, v in self.headers.items()}, body=body, started=time.time(),
                              json=parsed, model=args.get("model", ""), kind=op))
        rec.cancel = st._cancel
        st._notify()
        try:
            reply = st.batch.handle(rec, op, args)
        except Exception as exc:  # a bug in the stand-in: answer 500 and say so
            rec.kind = "standin_bug"
            reply = Reply(500, {"error": {"code": 500, "message": f"stand-in bug: {type(exc).__name__}: {exc}",
                                          "status": "INTERNAL"}})
        rec.finished = time.time()
        rec.status = reply.status
        st._notify()
        try:
            if reply.stream is not None:
                self._send_stream(reply.status, reply.stream, reply.headers)
            else:
                self._send(reply.status, reply.body, reply.headers)
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            self.close_connection = True
        return True

    def do_POST(self):
        parts = urlsplit(self.path)
        if parts.path.startswith("/_standin/"):
            return self._control("POST")
        if self._batch_api("POST", parts):
            return
        body = self._read_body()
        protocol, model = "unknown", ""
        if parts.path.startswith("/v1beta/models/") and parts.path.endswith(":generateContent"):
            protocol, model = "gemini", unquote(parts.path[len("/v1beta/models/"):-len(":generateContent")])
        elif parts.path == "/api/v1/chat/completions":
            protocol = "openrouter"
        try:
            parsed = json.loads(body.decode("utf-8")) if body else None
        except (UnicodeDecodeError, ValueError):
            parsed = None
        st = self.standin
        rec = st._record(dict(protocol=protocol, method="POST", path=parts.path, query=parts.query,
                              headers={k: v for k, v in self.headers.items()}, body=body, started=time.time(),
                              json=parsed, model=model))
        st._enter(rec)
        try:
            try:
                reply = st.handle_api(rec)
            except Exception as exc:  # a bug in the stand-in: answer 500 and say so
                rec.kind = "standin_bug"
                reply = Reply(500, {"error": {"code": 500, "message": f"stand-in bug: {type(exc).__name__}: {exc}",
                                              "status": "INTERNAL"}})
            st.wait(rec, reply.delay)
        finally:
            # Out of flight *before* the answer goes out: a client that has its
            # answer never sees its own request still counted.
            rec.finished = time.time()
            st._leave(rec)
        if reply.drop:
            rec.status = None
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        rec.status = reply.status
        st._notify()
        try:
            if reply.stream is not None:
                self._send_stream(reply.status, reply.stream, reply.headers)
            else:
                self._send(reply.status, reply.body, reply.headers)
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            self.close_connection = True  # the client gave up (timeout)

    def _control(self, method: str):
        st = self.standin
        parts = urlsplit(self.path)
        body = self._read_body() if method == "POST" else b""
        try:
            payload = json.loads(body.decode("utf-8")) if body else {}
            action = parts.path[len("/_standin/"):] if parts.path.startswith("/_standin/") else ""
            if method == "GET" and action == "health":
                return self._send(200, {"ok": True})
            if method == "GET" and action == "stats":
                return self._send(200, st.stats())
            if method == "GET" and action == "requests":
                return self._send(200, [r.summary() for r in st.requests])
            if method == "POST" and action == "script":
                st.script(payload.get("protocol", "*"), *payload.get("behaviours", []), match=payload.get("match"))
                return self._send(200, {"ok": True, "pending": st.pending()})
            if method == "POST" and action == "default":
                st.set_default(payload.get("protocol", "*"), payload.get("behaviour", "ok"), match=payload.get("match"))
                return self._send(200, {"ok": True})
            if method == "POST" and action == "reset":
                st.reset()
                return self._send(200, {"ok": True})
            if method == "POST" and action == "config":
                if "latency" in payload:
                    st.latency = float(payload["latency"])
                return self._send(200, {"ok": True})
            if method == "POST" and action == "key_leaks":
                return self._send(200, {"leaks": st.key_leaks(str(payload.get("key", "")))})
            if method == "GET" and action == "batches":
                return self._send(200, {"batches": [b.summary() for b in st.batches],
                                        "uploads": [{"name": f.name, "display_name": f.display_name,
                                                     "size": f.size, "deleted": f.deleted} for f in st.uploads],
                                        "batch_lines": [r.summary() for r in st.batch_lines]})
            if method == "POST" and action == "batch":
                # {"behaviour": kind | {"kind", ...}, "script": [...], "stats": mode, "hold": [steps],
                #  "release": [steps] | true, "finish": true | [names], "outcome": ..., "granularity": n}
                if "behaviour" in payload:
                    spec = payload["behaviour"]
                    st.set_batch_behaviour(**spec) if isinstance(spec, dict) else st.set_batch_behaviour(spec)
                if payload.get("script"):
                    st.script_batches(*payload["script"])
                if payload.get("stats"):
                    st.set_batch_stats(payload["stats"])
                if payload.get("granularity"):
                    st.set_upload_granularity(int(payload["granularity"]))
                if payload.get("hold"):
                    st.hold_batch_step(*payload["hold"])
                if payload.get("release"):
                    rel = payload["release"]
                    st.release_batch_step(*(rel if isinstance(rel, list) else []))
                finished = []
                if payload.get("finish"):
                    fin = payload["finish"]
                    finished = st.finish_batches(*(fin if isinstance(fin, list) else []),
                                                 outcome=payload.get("outcome"))
                return self._send(200, {"ok": True, "finished": finished})
            return self._send(404, {"error": f"no control action {method} {parts.path}"})
        except (ValueError, TypeError) as exc:
            return self._send(400, {"error": str(exc)})


def load_script_file(server: StandinServer, path: str) -> None:
    """Apply a JSON script file: {"gemini": [...], "openrouter": [...], "*": [...],
    "defaults": {"gemini": behaviour, ...}, "match": [{"protocol", "match", "behaviours"|"default"}],
    "batch_default": batch behaviour, "batches": [batch behaviours]}."""
    with open(path, encoding="utf-8") as fh:
        spec = json.load(fh)
    for proto in ("gemini", "openrouter", "*"):
        if spec.get(proto):
            server.script(proto, *spec[proto])
    for proto, beh in (spec.get("defaults") or {}).items():
        server.set_default(proto, beh)
    for entry in spec.get("match") or []:
        proto = entry.get("protocol", "*")
        if entry.get("behaviours"):
            server.script(proto, *entry["behaviours"], match=entry.get("match"))
        if entry.get("default"):
            server.set_default(proto, entry["default"], match=entry.get("match"))
    if spec.get("batch_default"):
        beh = spec["batch_default"]
        server.set_batch_behaviour(**beh) if isinstance(beh, dict) else server.set_batch_behaviour(beh)
    if spec.get("batches"):
        server.script_batches(*spec["batches"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.standin.server", description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="0 = any free port (see --ready-file)")
    ap.add_argument("--latency", type=float, default=0.0, help="seconds added to every API request")
    ap.add_argument("--api-key", default=None,
                    help=f"the key to accept (default: env STANDIN_API_KEY, else {DEFAULT_API_KEY}); '*' = any key")
    ap.add_argument("--script", help="JSON script file (see load_script_file)")
    ap.add_argument("--ready-file", help="write the base URL here once listening")
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args(argv)
    key = args.api_key or os.environ.get("STANDIN_API_KEY") or DEFAULT_API_KEY
    server = StandinServer(args.host, args.port, api_key=None if key == "*" else key, latency=args.latency,
                           quiet=not args.verbose)
    if args.script:
        load_script_file(server, args.script)
    server.start()
    print(f"STANDIN_URL={server.url}", flush=True)
    if args.ready_file:
        tmp = args.ready_file + ".tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(server.url + "\n")
        os.replace(tmp, args.ready_file)
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    try:
        while not done.wait(0.5):
            pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
