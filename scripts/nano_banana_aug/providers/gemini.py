"""Gemini API (native ``generateContent``): Nano Banana Pro and other image models.

One attempt = one ``POST {base_url}/models/{model}:generateContent`` with the
key in the ``x-goog-api-key`` header (never ``?key=``, which would put it in
every logged URL).  The answer's image is the **last image part without
``thought: true``** (Gemini 3 Pro Image may send up to two interim thought
images first).  Wire format: REFERENCE §3.
"""

from __future__ import annotations

import base64
import binascii
from urllib.parse import quote as url_quote

import requests

from .. import keys
from ..errors import ConfigError
from ..imaging import sniff_format
from . import transport
from .base import AttemptError, Generation, Request, Usage, image_config_for

# finishReason values that are not a refusal: the answer is judged by its parts.
OK_FINISH = frozenset({"", "STOP", "FINISH_REASON_UNSPECIFIED"})


class GeminiProvider:
    """``api.provider: gemini``."""

    name = "gemini"
    paid = True

    def __init__(
        self,
        *,
        api_key: str,
        model: str | None = None,
        base_url: str | None = None,
        timeout_s: float = 120.0,
        image_config: dict | None = None,
        session: requests.Session | None = None,
    ):
        if not api_key:
            raise ConfigError("api.provider gemini needs an API key (gemini.secret, GEMINI_API_KEY or GOOGLE_API_KEY)")
        self._api_key = api_key
        self.model = keys.normalise_model("gemini", model)
        self.base_url = keys.check_base_url((base_url or keys.default_base_url("gemini")).rstrip("/"))
        self.timeout_s = float(timeout_s)
        self.image_config = image_config
        self.session = session or requests.Session()
        self.on_200 = None  # called when a 200's headers arrive (see transport.post_json)
        self.url = f"{self.base_url}/models/{url_quote(self.model, safe='-._~')}:generateContent"

    @classmethod
    def from_config(cls, cfg: dict, api_key: str | None) -> "GeminiProvider":
        api = cfg.get("api") or {}
        return cls(
            api_key=api_key or "",
            model=api.get("model"),
            base_url=api.get("base_url"),
            timeout_s=api.get("timeout_s") or 120.0,
            image_config=api.get("image_config"),
        )

    def __repr__(self) -> str:  # never shows the key
        return f"GeminiProvider(model={self.model!r}, url={self.url!r})"

    def build_body(self, request: Request) -> dict:
        """The generateContent body: source image inline, then the prompt."""
        mime = transport.source_mime(request)  # the bytes decide, not the file name or a label
        generation_config: dict = {"responseModalities": ["IMAGE"]}
        image_config = image_config_for(self.image_config, request, ratio_key="aspectRatio", size_key="imageSize")
        if image_config:
            generation_config["imageConfig"] = image_config
        return {
            "contents": [
                {
                    "role": "user",
                    "parts": [
                        {
                            "inlineData": {
                                "mimeType": mime,
                                "data": base64.b64encode(request.image_bytes).decode("ascii"),
                            }
                        },
                        {"text": request.prompt},
                    ],
                }
            ],
            "generationConfig": generation_config,
        }

    def attempt(self, request: Request) -> Generation:
        """One generateContent call; AttemptError on any failure."""
        body = self.build_body(request)
        resp = transport.post_json(
            self.session,
            self.url,
            headers={"x-goog-api-key": self._api_key},
            body=body,
            timeout_s=self.timeout_s,
            secret=self._api_key,
            on_200=self.on_200,
        )
        payload = resp.json()
        if resp.status != 200:
            raise self._status_error(resp, payload)
        payload = transport.json_object(resp, payload)
        if isinstance(payload.get("error"), dict):  # not documented for 200, but never take it for an answer
            err = payload["error"]
            raise AttemptError(
                transport.redact(
                    f"error in an HTTP 200 answer: {err.get('status', '')} {transport.quote(err.get('message', ''))}",
                    self._api_key,
                ),
                retryable=True,
                status=200,
                reason=str(err.get("status") or "ERROR"),
                billed=False if "usageMetadata" not in payload else None,  # nothing generated
            )
        return parse_response(payload, secret=self._api_key)

    def _status_error(self, resp: transport.HttpResponse, payload) -> AttemptError:
        err = payload.get("error") if isinstance(payload, dict) else None
        if not isinstance(err, dict):
            text = resp.body[:300].decode("utf-8", "replace")
            return transport.status_error(resp, message=text, secret=self._api_key)
        details = err.get("details") or []
        reasons = [d.get("reason") for d in details if isinstance(d, dict) and d.get("reason")]
        hint = ""
        if "API_KEY_INVALID" in reasons:
            hint = "- check the key in gemini.secret / GEMINI_API_KEY"
        elif resp.status == 404:
            hint = "- check api.model"
        violations = [
            v
            for d in details
            if isinstance(d, dict) and str(d.get("@type", "")).endswith("QuotaFailure")
            for v in (d.get("violations") or [])
            if isinstance(v, dict)
        ]
        if violations:
            ids = ", ".join(f"{v.get('quotaId', '?')}={v.get('quotaValue', '?')}" for v in violations)
            reasons.append(f"quota {ids}")
        error = transport.status_error(
            resp,
            message=str(err.get("message") or ""),
            status_name=str(err.get("status") or ""),
            detail=", ".join(str(r) for r in reasons),
            retry_after=transport.retry_delay_from_details(details),
            hint=hint,
            secret=self._api_key,
        )
        error.quota = violations  # QuotaFailure: which quota (per minute / per day / value 0), for the governor
        return error


def parse_usage(payload: dict) -> Usage:
    """``usageMetadata`` -> Usage (image tokens from candidatesTokensDetails)."""
    meta = payload.get("usageMetadata") or payload.get("usage_metadata") or {}
    if not isinstance(meta, dict):
        return Usage()

    def get(*names):
        for n in names:
            v = meta.get(n)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                return int(v)
        return None

    image_tokens = None
    for d in meta.get("candidatesTokensDetails") or meta.get("candidates_tokens_details") or []:
        if isinstance(d, dict) and d.get("modality") == "IMAGE":
            image_tokens = (image_tokens or 0) + int(d.get("tokenCount", d.get("token_count", 0)) or 0)
    return Usage(
        prompt_tokens=get("promptTokenCount", "prompt_token_count"),
        candidates_tokens=get("candidatesTokenCount", "candidates_token_count"),
        thoughts_tokens=get("thoughtsTokenCount", "thoughts_token_count"),
        output_image_tokens=image_tokens,
        total_tokens=get("totalTokenCount", "total_token_count"),
    )


def _inline(part: dict):
    blob = part.get("inlineData") or part.get("inline_data")
    return blob if isinstance(blob, dict) else None


def decode_b64_image(data, label: str, *, secret: str | None = None) -> bytes:
    """Base64 image data -> bytes whose format is recognised; else a retryable AttemptError."""
    if not isinstance(data, str) or not data:
        raise AttemptError("image part has no data", retryable=True, reason="BAD_IMAGE_DATA")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        try:
            raw = base64.urlsafe_b64decode(data)
            if base64.urlsafe_b64encode(raw).rstrip(b"=") != data.encode("ascii", "replace").rstrip(b"="):
                raise ValueError("not canonical url-safe base64")
        except (binascii.Error, ValueError):
            raise AttemptError(
                transport.redact(
                    f"image data labelled {label or '?'} is not valid base64 (starts {transport.quote(data[:40])})",
                    secret,
                ),
                retryable=True,
                reason="BAD_IMAGE_DATA",
            ) from None
    if sniff_format(raw) is None:
        raise AttemptError(
            f"image data labelled {label or '?'} is not a recognised image format ({len(raw)} bytes, first bytes {raw[:8]!r})",
            retryable=True,
            reason="BAD_IMAGE_DATA",
        )
    return raw


def parse_response(payload: dict, *, secret: str | None = None) -> Generation:
    """A generateContent answer -> Generation, or AttemptError for a block or an image-less answer."""
    usage = parse_usage(payload)
    model_version = str(payload.get("modelVersion") or payload.get("model_version") or "")
    response_id = str(payload.get("responseId") or payload.get("response_id") or "")

    def fail(message: str, reason: str, retryable: bool = True) -> AttemptError:
        return AttemptError(
            transport.redact(message, secret), retryable=retryable, status=200, reason=reason, usage=usage
        )

    feedback = payload.get("promptFeedback") or payload.get("prompt_feedback") or {}
    if not isinstance(feedback, dict):
        feedback = {}
    block = feedback.get("blockReason") or feedback.get("block_reason")
    if block:
        note = feedback.get("blockReasonMessage") or feedback.get("block_reason_message") or ""
        # the input itself was refused: asking again with the same input gets the same answer
        raise fail(
            f"prompt blocked: promptFeedback.blockReason={block}"
            + (f" {transport.quote(note)}" if note else "")
            + " (the input is refused; not retried)",
            str(block),
            retryable=False,
        )

    candidates = payload.get("candidates") or []
    if not isinstance(candidates, list) or not candidates or not isinstance(candidates[0], dict):
        raise fail("answer has no candidates (and no promptFeedback.blockReason)", "NO_CANDIDATES")
    cand = candidates[0]
    finish = str(cand.get("finishReason") or cand.get("finish_reason") or "")
    finish_message = cand.get("finishMessage") or cand.get("finish_message") or ""
    content = cand.get("content") or {}
    parts = [p for p in (content.get("parts") or []) if isinstance(p, dict)] if isinstance(content, dict) else []
    final_parts = [p for p in parts if not p.get("thought")]
    text = "\n".join(p["text"] for p in final_parts if isinstance(p.get("text"), str) and p["text"].strip())
    said = f"; model text: {transport.quote(text)}" if text else ""
    if finish_message:
        said += f"; finishMessage: {transport.quote(finish_message)}"

    if finish not in OK_FINISH:
        raise fail(f"no usable image: finishReason={finish}{said}", finish)
    images = [_inline(p) for p in final_parts if _inline(p) is not None]
    if not images:
        thoughts = sum(1 for p in parts if p.get("thought") and _inline(p) is not None)
        what = f"only {thoughts} interim thought image(s)" if thoughts else ("text only" if text else "no image")
        raise fail(f"answer without a final image ({what}, finishReason={finish or 'unset'}){said}", "NO_IMAGE")
    blob = images[-1]
    label = str(blob.get("mimeType") or blob.get("mime_type") or "")
    try:
        data = decode_b64_image(blob.get("data"), label, secret=secret)
    except AttemptError as err:
        err.status, err.usage = 200, usage
        raise
    return Generation(
        data=data,
        mime_type=label,
        model_version=model_version,
        response_id=response_id,
        text=text,
        usage=usage,
        finish_reason=finish,
    )
