"""OpenRouter ``chat/completions``: any image model, Nano Banana Pro by default.

One attempt = one ``POST {base_url}`` with ``Authorization: Bearer KEY``.
The image comes back as data URLs in ``choices[0].message.images[]`` (the
last one is taken).  OpenRouter can report errors with HTTP 200 (a top-level
``error``, or ``finish_reason: "error"``): those are failed attempts too,
carrying the service's message and the upstream provider's raw reason from
``error.metadata``.  Wire format: REFERENCE §4.
"""

from __future__ import annotations

import base64
import json
import re

import requests

from .. import keys
from ..errors import ConfigError
from . import transport
from .base import AttemptError, Generation, Request, Usage, image_config_for
from .gemini import decode_b64_image

# Statuses an HTTP-200 error body may carry that will not get better by retrying.
FINAL_CODES = frozenset({400, 401, 402, 403, 404, 413})
_REASON_TOKEN = re.compile(
    r"\b(IMAGE_SAFETY|IMAGE_PROHIBITED_CONTENT|IMAGE_RECITATION|IMAGE_OTHER|PROHIBITED_CONTENT|SAFETY|RECITATION|"
    r"BLOCKLIST|SPII|NO_IMAGE|MAX_TOKENS|RESOURCE_EXHAUSTED|UNAVAILABLE|DEADLINE_EXCEEDED|INTERNAL|INVALID_ARGUMENT)\b"
)
_REASON_KEYS = (
    "native_finish_reason",
    "finishReason",
    "finish_reason",
    "blockReason",
    "block_reason",
    "status",
    "reason",
)


class OpenRouterProvider:
    """``api.provider: openrouter``."""

    name = "openrouter"
    paid = True

    def __init__(
        self,
        *,
        api_key: str,
        model: str | None = None,
        base_url: str | None = None,
        timeout_s: float = 120.0,
        modalities=("image", "text"),
        image_config: dict | None = None,
        http_referer: str | None = None,
        x_title: str | None = None,
        extra_headers: dict | None = None,
        session: requests.Session | None = None,
    ):
        if not api_key:
            raise ConfigError("api.provider openrouter needs an API key (openrouter.secret or OPENROUTER_API_KEY)")
        modalities = list(modalities or ())
        if "image" not in modalities:
            raise ConfigError(
                f"api.modalities: {modalities} must include 'image' (without it the model answers with text only)"
            )
        extra_headers = dict(extra_headers or {})
        if any(k.lower() == "authorization" for k in extra_headers):
            raise ConfigError("api.extra_headers must not set Authorization; the key comes from api.api_key_file")
        self._api_key = api_key
        self.model = keys.normalise_model("openrouter", model)
        self.url = keys.check_base_url(base_url or keys.default_base_url("openrouter"))
        self.timeout_s = float(timeout_s)
        self.modalities = modalities
        self.image_config = image_config
        self.headers: dict = {}
        if http_referer:
            self.headers["HTTP-Referer"] = http_referer
        if x_title:
            self.headers["X-Title"] = x_title
        self.headers.update({str(k): str(v) for k, v in extra_headers.items()})
        self.session = session or requests.Session()
        self.on_200 = None  # called when a 200's headers arrive (see transport.post_json)

    @classmethod
    def from_config(cls, cfg: dict, api_key: str | None) -> "OpenRouterProvider":
        api = cfg.get("api") or {}
        return cls(
            api_key=api_key or "",
            model=api.get("model"),
            base_url=api.get("base_url"),
            timeout_s=api.get("timeout_s") or 120.0,
            modalities=api.get("modalities") or ("image", "text"),
            image_config=api.get("image_config"),
            http_referer=api.get("http_referer"),
            x_title=api.get("x_title"),
            extra_headers=api.get("extra_headers"),
        )

    def __repr__(self) -> str:  # never shows the key
        return f"OpenRouterProvider(model={self.model!r}, url={self.url!r})"

    def build_body(self, request: Request) -> dict:
        """The chat/completions body: the source image as a data URL, then the prompt."""
        mime = transport.source_mime(request)  # the bytes decide, not the file name or a label
        data_url = f"data:{mime};base64,{base64.b64encode(request.image_bytes).decode('ascii')}"
        body = {
            "model": self.model,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": data_url}},
                        {"type": "text", "text": request.prompt},
                    ],
                }
            ],
            "modalities": list(self.modalities),
            "stream": False,
        }
        image_config = image_config_for(self.image_config, request, ratio_key="aspect_ratio", size_key="image_size")
        if image_config:
            body["image_config"] = image_config
        return body

    def attempt(self, request: Request) -> Generation:
        """One chat/completions call; AttemptError on any failure."""
        body = self.build_body(request)
        resp = transport.post_json(
            self.session,
            self.url,
            headers={**self.headers, "Authorization": f"Bearer {self._api_key}"},
            body=body,
            timeout_s=self.timeout_s,
            secret=self._api_key,
            on_200=self.on_200,
        )
        payload = resp.json()
        if resp.status != 200:
            raise self._status_error(resp, payload)
        payload = transport.json_object(resp, payload)
        return parse_response(
            payload, secret=self._api_key, retry_after=transport.parse_retry_after(resp.headers.get("Retry-After"))
        )

    def _status_error(self, resp: transport.HttpResponse, payload) -> AttemptError:
        err = payload.get("error") if isinstance(payload, dict) else None
        if not isinstance(err, dict):
            return transport.status_error(
                resp, message=resp.body[:300].decode("utf-8", "replace"), secret=self._api_key
            )
        hint = {
            401: "- check the key in openrouter.secret / OPENROUTER_API_KEY",
            402: "- no credits left on the OpenRouter account (add credits; not retried)",
            403: "- the request was refused by moderation (not retried)",
            404: "- check api.model",
        }.get(resp.status, "")
        return transport.status_error(
            resp,
            message=str(err.get("message") or ""),
            detail=_describe_metadata(err.get("metadata")),
            hint=hint,
            secret=self._api_key,
        )


def provider_reason(metadata) -> str:
    """The upstream provider's raw reason (e.g. IMAGE_SAFETY) found in ``error.metadata``, or ''."""
    if not isinstance(metadata, dict):
        return ""
    for key in ("native_finish_reason", "finish_reason", "reason"):
        if isinstance(metadata.get(key), str) and metadata[key]:
            return metadata[key]
    reasons = metadata.get("reasons")
    if isinstance(reasons, list) and reasons:
        return ",".join(str(r) for r in reasons)
    raw = metadata.get("raw")
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            m = _REASON_TOKEN.search(raw)
            return m.group(1) if m else ""
    return _find_reason(raw, depth=0)


def _find_reason(obj, depth: int) -> str:
    if depth > 6:
        return ""
    if isinstance(obj, dict):
        for key in _REASON_KEYS:
            if isinstance(obj.get(key), str) and obj[key]:
                return obj[key]
        values = obj.values()
    elif isinstance(obj, list):
        values = obj
    else:
        return ""
    for value in values:
        found = _find_reason(value, depth + 1)
        if found:
            return found
    return ""


def _describe_metadata(metadata) -> str:
    """``provider X: REASON; raw: "..."`` from error.metadata (short)."""
    if not isinstance(metadata, dict):
        return ""
    bits = []
    if metadata.get("provider_name"):
        bits.append(f"provider {metadata['provider_name']}")
    reason = provider_reason(metadata)
    if reason:
        bits.append(f"reason {reason}")
    if metadata.get("raw") is not None:
        bits.append(f"raw: {transport.quote(metadata['raw'])}")
    return "; ".join(bits)


def parse_usage(payload: dict) -> Usage:
    """OpenRouter ``usage`` -> Usage (cost in USD when reported)."""
    u = payload.get("usage")
    if not isinstance(u, dict):
        return Usage()

    def num(d, key, cast=int):
        v = d.get(key) if isinstance(d, dict) else None
        return cast(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None

    details = u.get("completion_tokens_details")
    return Usage(
        prompt_tokens=num(u, "prompt_tokens"),
        candidates_tokens=num(u, "completion_tokens"),
        thoughts_tokens=num(details, "reasoning_tokens"),
        output_image_tokens=num(details, "image_tokens"),
        total_tokens=num(u, "total_tokens"),
        cost_usd=num(u, "cost", float),
    )


def _content_text(content) -> str:
    if isinstance(content, str):
        return content.strip()
    if isinstance(content, list):  # some providers answer with content parts
        return "\n".join(
            p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
        ).strip()
    return ""


def _data_url(url) -> tuple[str, str] | None:
    """``data:<mime>;base64,<data>`` -> (mime, data)."""
    if not isinstance(url, str) or not url.startswith("data:"):
        return None
    head, sep, data = url.partition(",")
    if not sep or not head.endswith(";base64"):
        return None
    return head[len("data:") : -len(";base64")].split(";")[0], data


def parse_response(payload: dict, *, secret: str | None = None, retry_after: float | None = None) -> Generation:
    """A chat/completions answer -> Generation, or AttemptError (HTTP-200 errors, refusals, no image)."""
    usage = parse_usage(payload)
    # an error inside a 200 without a usage object: nothing was generated, nothing billed
    error_billed = None if isinstance(payload.get("usage"), dict) else False

    def fail(message: str, reason: str, retryable: bool = True, billed: bool | None = None) -> AttemptError:
        return AttemptError(
            transport.redact(message, secret),
            retryable=retryable,
            status=200,
            reason=reason,
            retry_after=retry_after,
            usage=usage,
            billed=billed,
        )

    err = payload.get("error")
    if isinstance(err, dict):
        code = err.get("code")
        code_num = _code_number(code)
        detail = _describe_metadata(err.get("metadata"))
        reason = provider_reason(err.get("metadata")) or (f"ERROR_{code}" if code is not None else "ERROR")
        error = fail(
            f"HTTP 200 with error {code if code is not None else ''}: {transport.quote(err.get('message') or '')}"
            + (f" ({detail})" if detail else ""),
            reason,
            retryable=code_num not in FINAL_CODES,
            billed=error_billed,
        )
        error.code = code_num  # the status the error stands for (402 inside an HTTP 200, ...)
        raise error

    choices = payload.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise fail("answer has no choices", "NO_CHOICES")
    choice = choices[0]
    finish = str(choice.get("finish_reason") or "")
    native = str(choice.get("native_finish_reason") or "")
    message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
    text = _content_text(message.get("content"))
    said = f"; model text: {transport.quote(text)}" if text else ""
    if message.get("refusal"):
        said += f"; refusal: {transport.quote(message['refusal'])}"
    finish_note = f"finish_reason={finish or 'unset'}" + (f", native_finish_reason={native}" if native else "")

    if finish == "error":
        cerr = choice.get("error") if isinstance(choice.get("error"), dict) else {}
        detail = _describe_metadata(cerr.get("metadata"))
        reason = native or provider_reason(cerr.get("metadata")) or "FINISH_ERROR"
        raise fail(
            f"generation failed ({finish_note})"
            + (f": {transport.quote(cerr.get('message'))}" if cerr.get("message") else "")
            + (f" ({detail})" if detail else "")
            + said,
            reason,
            billed=error_billed,
        )
    if finish == "content_filter":
        raise fail(f"no usable image: blocked ({finish_note}){said}", native or "CONTENT_FILTER")

    images = message.get("images") if isinstance(message.get("images"), list) else []
    urls = [(img.get("image_url") or {}).get("url") for img in images if isinstance(img, dict)]
    urls = [u for u in urls if isinstance(u, str)]
    if not urls:
        reason = native if native and native.upper() not in ("STOP", "FINISH_REASON_UNSPECIFIED") else "NO_IMAGE"
        raise fail(f"answer without an image ({finish_note}){said}", reason)
    parsed = _data_url(urls[-1])
    if parsed is None:
        # the model/provider answers with hosted URLs: asking again gives another URL, never data
        raise fail(
            f"image is not a base64 data URL (starts {transport.quote(urls[-1][:40])}); only data URLs are "
            "supported (not retried: this model answers with hosted URLs)",
            "IMAGE_URL",
            retryable=False,
        )
    label, data = parsed
    try:
        raw = decode_b64_image(data, label, secret=secret)
    except AttemptError as exc:
        exc.status, exc.usage = 200, usage
        raise
    return Generation(
        data=raw,
        mime_type=label,
        model_version=str(payload.get("model") or ""),
        response_id=str(payload.get("id") or ""),
        text=text,
        usage=usage,
        finish_reason=native or finish,
    )


def _code_number(code) -> int | None:
    """An error code as a number: ``402`` and ``"402"`` alike (OpenRouter sends both)."""
    if isinstance(code, bool):
        return None
    if isinstance(code, int):
        return code
    if isinstance(code, str) and code.strip().isdigit():
        return int(code.strip())
    return None
