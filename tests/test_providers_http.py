"""Gemini and OpenRouter clients against the local stand-in: every scripted
behaviour maps to the right Generation or AttemptError, retries honour the
server's waits, and the API key only ever travels in the auth header."""

from __future__ import annotations

import base64
import io
import threading
import time

import pytest
import requests
from PIL import Image

from nano_banana_aug.errors import ConfigError
from nano_banana_aug.imaging import DecodeError, decode, sniff_format
from nano_banana_aug.providers import make_provider
from nano_banana_aug.providers.transport import parse_duration, parse_retry_after, quote, retry_delay_from_details
from nano_banana_aug.providers.base import AttemptError, GenerationFailed, Request, RetryPolicy, call_with_retries
from nano_banana_aug.providers.gemini import GeminiProvider
from nano_banana_aug.providers.openrouter import OpenRouterProvider
from tests.standin import DEFAULT_API_KEY, B
from tests.standin.launch import start_process

pytest_plugins = ["tests.standin.fixtures"]

KEY = DEFAULT_API_KEY
PROMPT = "Edit this photograph of a pasture quadrat.\n\nRe-light the scene as under an overcast sky."


def source_jpeg(w=2000, h=1000) -> bytes:
    im = Image.linear_gradient("L").resize((w, h)).convert("RGB")
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


JPEG = source_jpeg()


def make_request(data: bytes = JPEG) -> Request:
    return Request(
        image_bytes=data,
        mime_type="image/jpeg",
        prompt=PROMPT,
        image_id="ID1011485656",
        aug_name="overcast",
        variant_idx=0,
        source_path="train/ID1011485656.jpg",
    )


def api_cfg(provider: str, standin, **api) -> dict:
    base = standin.gemini_base_url if provider == "gemini" else standin.openrouter_url
    defaults = {
        "provider": provider,
        "model": None,
        "api_key_file": None,
        "base_url": base,
        "http_referer": None,
        "x_title": None,
        "extra_headers": {},
        "modalities": ["image", "text"],
        "concurrency": 1,
        "timeout_s": 10,
        "max_retries": 3,
        "retry_backoff_s": 1.0,
        "max_retry_wait_s": 30,
        "image_config": None,
    }
    return {"api": {**defaults, **api}}


@pytest.fixture(params=["gemini", "openrouter"])
def provider_name(request):
    return request.param


@pytest.fixture
def make(standin):
    def build(provider: str, key: str = KEY, **api):
        return make_provider(api_cfg(provider, standin, **api), key)

    return build


def attempt_error(provider, request=None) -> AttemptError:
    with pytest.raises(AttemptError) as err:
        provider.attempt(request or make_request())
    assert KEY not in str(err.value) and KEY not in repr(err.value)
    return err.value


# ---------------------------------------------------------------- normal answers


def test_gemini_request_wire_format(standin, make):
    gen = make("gemini").attempt(make_request())
    (rec,) = standin.requests
    assert rec.path == "/v1beta/models/gemini-3-pro-image-preview:generateContent"
    assert rec.query == ""  # never ?key=
    assert rec.header("x-goog-api-key") == KEY
    assert rec.header("Authorization") is None
    body = rec.json
    assert body["contents"][0]["role"] == "user"
    image_part, text_part = body["contents"][0]["parts"]
    assert image_part == {"inlineData": {"mimeType": "image/jpeg", "data": base64.b64encode(JPEG).decode()}}
    assert text_part == {"text": PROMPT}
    assert body["generationConfig"] == {"responseModalities": ["IMAGE"]}
    assert gen.model_version == "gemini-3-pro-image-preview" and gen.response_id.startswith("standin-")


def test_openrouter_request_wire_format(standin, make):
    prov = make(
        "openrouter",
        model="gemini-2.5-flash-image",
        http_referer="https://example.org/app",
        x_title="pasture-aug",
        extra_headers={"X-Extra": "1"},
        image_config={"aspect_ratio": "16:9"},
    )
    gen = prov.attempt(make_request())
    (rec,) = standin.requests
    assert rec.path == "/api/v1/chat/completions"
    assert rec.header("Authorization") == f"Bearer {KEY}"
    assert rec.header("HTTP-Referer") == "https://example.org/app"
    assert rec.header("X-Title") == "pasture-aug" and rec.header("X-Extra") == "1"
    body = rec.json
    assert body["model"] == "google/gemini-2.5-flash-image"
    assert body["modalities"] == ["image", "text"] and body["stream"] is False
    assert body["image_config"] == {"aspect_ratio": "16:9"}
    (msg,) = body["messages"]
    assert msg["role"] == "user"
    assert msg["content"][0] == {
        "type": "image_url",
        "image_url": {"url": "data:image/jpeg;base64," + base64.b64encode(JPEG).decode()},
    }
    assert msg["content"][1] == {"type": "text", "text": PROMPT}
    assert gen.model_version == "google/gemini-2.5-flash-image" and gen.response_id.startswith("gen-")


def test_answer_is_derived_image_with_usage(standin, make, provider_name):
    gen = make(provider_name).attempt(make_request())
    assert sniff_format(gen.data) == ("PNG", "image/png") and gen.mime_type == "image/png"
    assert decode(gen.data, max_pixels=50_000_000).size == (1376, 768)  # 2:1 snapped to 16:9 at 1K
    u = gen.usage
    assert u.prompt_tokens > 560 and u.candidates_tokens == 1120 and u.output_image_tokens == 1120
    assert u.total_tokens == u.prompt_tokens + u.candidates_tokens
    if provider_name == "openrouter":
        assert u.cost_usd is not None and u.cost_usd > 0.13
    else:
        assert u.cost_usd is None


def test_image_config_passthrough_changes_size(standin, make, provider_name):
    cfg = (
        {"aspectRatio": "21:9", "imageSize": "2K"}
        if provider_name == "gemini"
        else {"aspect_ratio": "21:9", "image_size": "2K"}
    )
    gen = make(provider_name, image_config=cfg).attempt(make_request())
    assert decode(gen.data, max_pixels=50_000_000).size == (3168, 1344)
    if provider_name == "gemini":
        assert standin.requests[0].json["generationConfig"]["imageConfig"] == cfg


def test_last_non_thought_image_is_taken(standin, make, provider_name):
    standin.script(provider_name, B("ok", thoughts=2, text="Here is the edited photo."))
    gen = make(provider_name).attempt(make_request())
    assert decode(gen.data, max_pixels=50_000_000).size == (1376, 768)  # thought images are 344x192
    assert gen.text == "Here is the edited photo."
    if provider_name == "gemini":
        assert gen.usage.thoughts_tokens == 300


def test_jpeg_labelled_png_keeps_label_bytes_tell_truth(standin, make, provider_name):
    standin.script(provider_name, "jpeg_as_png")
    gen = make(provider_name).attempt(make_request())
    assert gen.mime_type == "image/png"
    assert sniff_format(gen.data) == ("JPEG", "image/jpeg")
    assert decode(gen.data, max_pixels=50_000_000).size == (1376, 768)


def test_oversize_image_is_returned_and_refused_by_decode(standin, make, provider_name):
    standin.script(provider_name, "oversize")
    gen = make(provider_name).attempt(make_request())
    assert sniff_format(gen.data)[0] == "PNG" and len(gen.data) < 100_000
    with pytest.raises(DecodeError, match="9000x9000"):
        decode(gen.data, max_pixels=50_000_000)


def test_mime_type_of_request_comes_from_bytes(standin, make, provider_name):
    png = io.BytesIO()
    Image.new("RGB", (400, 200), (10, 120, 30)).save(png, format="PNG")
    req = make_request(png.getvalue())
    req.mime_type = "image/jpeg"  # wrong label: the bytes decide
    make(provider_name).attempt(req)
    body = standin.requests[0].json
    if provider_name == "gemini":
        assert body["contents"][0]["parts"][0]["inlineData"]["mimeType"] == "image/png"
    else:
        assert body["messages"][0]["content"][0]["image_url"]["url"].startswith("data:image/png;base64,")


# ---------------------------------------------------------------- failed attempts


@pytest.mark.parametrize(
    "kind, gemini_reason, openrouter_reason",
    [
        ("prompt_blocked", "PROHIBITED_CONTENT", "PROHIBITED_CONTENT"),
        ("image_safety", "IMAGE_SAFETY", "IMAGE_SAFETY"),
        ("text_only", "NO_IMAGE", "NO_IMAGE"),
        ("only_thoughts", "NO_IMAGE", "NO_IMAGE"),
        ("no_candidates", "NO_CANDIDATES", "NO_CHOICES"),
        ("garbage_base64", "BAD_IMAGE_DATA", "BAD_IMAGE_DATA"),
        ("not_an_image", "BAD_IMAGE_DATA", "BAD_IMAGE_DATA"),
        ("http200_error", "UNAVAILABLE", "IMAGE_SAFETY"),
        ("finish_error", "OTHER", "OTHER"),
    ],
)
def test_image_less_answers_are_retryable(standin, make, provider_name, kind, gemini_reason, openrouter_reason):
    standin.script(provider_name, kind)
    err = attempt_error(make(provider_name))
    # a blocked *input* (Gemini promptFeedback.blockReason) is refused again and again: not retried
    assert err.retryable is not (provider_name == "gemini" and kind == "prompt_blocked")
    assert err.reason == (gemini_reason if provider_name == "gemini" else openrouter_reason)
    assert err.status == 200


def test_block_messages_name_reason_and_quote_model_text(standin, make):
    long_text = "I cannot edit photos of this kind. " * 20
    standin.script("gemini", B("text_only", text=long_text), B("image_safety", text="Sorry."), "prompt_blocked")
    prov = make("gemini")
    err = attempt_error(prov)
    assert "text only" in err.message and "I cannot edit photos" in err.message
    assert len(err.message) < 320  # quoted text is cut to ~200 characters
    err = attempt_error(prov)
    assert "finishReason=IMAGE_SAFETY" in err.message and '"Sorry."' in err.message
    err = attempt_error(prov)
    assert "blockReason=PROHIBITED_CONTENT" in err.message
    assert err.usage is not None and err.usage.prompt_tokens > 0  # blocked answers may still be billed


def test_openrouter_http200_error_carries_message_and_raw_reason(standin, make):
    standin.script(
        "openrouter",
        "http200_error",
        B("http200_error", code=402, message="Insufficient credits"),
        B("finish_error", reason="IMAGE_SAFETY"),
        B("image_safety", text="No."),
    )
    prov = make("openrouter")
    err = attempt_error(prov)
    assert "Provider returned error" in err.message and "IMAGE_SAFETY" in err.message and err.retryable
    err = attempt_error(prov)
    assert err.retryable is False and "Insufficient credits" in err.message
    err = attempt_error(prov)
    assert err.reason == "IMAGE_SAFETY" and "finish_reason=error" in err.message
    err = attempt_error(prov)
    assert err.reason == "IMAGE_SAFETY" and "content_filter" in err.message and '"No."' in err.message


def test_openrouter_error_code_as_text_is_final(standin, make):
    """OpenRouter has been seen to send error codes as strings: "402" is as final as 402."""
    body = {"error": {"code": "402", "message": "Insufficient credits"}}
    standin.script("openrouter", B("raw", status=200, body=body))
    err = attempt_error(make("openrouter"))
    assert err.retryable is False and "Insufficient credits" in err.message


def test_openrouter_hosted_image_url_is_not_retried(standin, make):
    """A model that answers with a hosted URL does so every time: a deterministic failure."""
    body = {
        "id": "gen-1",
        "model": "google/gemini-3-pro-image-preview",
        "choices": [
            {
                "finish_reason": "stop",
                "native_finish_reason": "STOP",
                "message": {
                    "role": "assistant",
                    "content": "",
                    "images": [{"type": "image_url", "image_url": {"url": "https://cdn.example/img.png"}}],
                },
            }
        ],
    }
    standin.script("openrouter", B("raw", status=200, body=body))
    err = attempt_error(make("openrouter"))
    assert err.retryable is False and err.reason == "IMAGE_URL" and "data URL" in err.message


@pytest.mark.parametrize(
    "kind, status",
    [
        ("rate_limit", 429),
        ("server_error", 500),
        ("bad_gateway", 502),
        ("overloaded", 503),
        ("gateway_timeout", 504),
        ("request_timeout", 408),
    ],
)
def test_retryable_statuses(standin, make, provider_name, kind, status):
    standin.script(provider_name, kind)
    err = attempt_error(make(provider_name))
    assert err.retryable is True and err.status == status and err.reason == f"HTTP_{status}"
    assert err.message.startswith(f"HTTP {status}")
    if kind == "overloaded":
        assert "overloaded" in err.message


@pytest.mark.parametrize(
    "kind, status",
    [
        ("bad_request", 400),
        ("unauthorized", 401),
        ("no_credits", 402),
        ("forbidden", 403),
        ("not_found", 404),
        ("too_large", 413),
    ],
)
def test_final_statuses(standin, make, provider_name, kind, status):
    standin.script(provider_name, kind)
    err = attempt_error(make(provider_name))
    assert err.retryable is False and err.status == status


def test_gemini_retry_info_and_retry_after(standin, make):
    standin.script(
        "gemini",
        "rate_limit",
        B("rate_limit", retry_delay="1.5s"),
        B("overloaded", retry_after="7"),
        B("rate_limit", retry_delay=None),
    )
    prov = make("gemini")
    assert attempt_error(prov).retry_after == 53.0
    assert attempt_error(prov).retry_after == 1.5
    assert attempt_error(prov).retry_after == 7.0
    assert attempt_error(prov).retry_after is None


def test_openrouter_retry_after(standin, make):
    standin.script("openrouter", B("rate_limit", retry_after="12"), "rate_limit")
    prov = make("openrouter")
    assert attempt_error(prov).retry_after == 12.0
    assert attempt_error(prov).retry_after is None


def test_wrong_key_is_final_with_service_message(standin, make):
    err = attempt_error(make("gemini", key="AIza-wrong-key-000"))
    assert err.retryable is False and err.status == 400
    assert err.message.startswith("HTTP 400 INVALID_ARGUMENT: API key not valid") and "API_KEY_INVALID" in err.message
    assert "AIza-wrong-key-000" not in err.message
    err = attempt_error(make("openrouter", key="sk-or-wrong"))
    assert err.retryable is False and err.status == 401 and "sk-or-wrong" not in err.message


def test_unknown_model(standin, make):
    err = attempt_error(make("gemini", model="gemini-9-ultra"))
    assert err.status == 404 and not err.retryable and "models/gemini-9-ultra is not found" in err.message
    err = attempt_error(make("openrouter", model="acme/nope"))
    assert err.status == 400 and not err.retryable and "not a valid model ID" in err.message


def test_timeout_and_dropped_connection_are_retryable_and_may_be_billed(standin, make, provider_name):
    standin.script(provider_name, B("slow", delay=3), "drop")
    prov = make(provider_name, timeout_s=0.4)
    t0 = time.monotonic()
    err = attempt_error(prov)
    assert err.reason == "TIMEOUT" and err.retryable and err.status is None
    assert time.monotonic() - t0 < 2.5
    err = attempt_error(prov)
    # sent, then closed before any answer: like a timeout, the model may have made (and billed) it
    assert (err.reason, err.retryable, err.status, err.billed) == ("DROPPED", True, None, True)
    assert err.message.startswith("connection dropped after the request was sent (may be billed): RemoteDisconnected")
    assert prov.attempt(make_request()).data  # the session recovers


def test_a_200_whose_body_arrives_slowly_is_read_to_the_end(standin, make, provider_name):
    """Defect: a 200's body had to be complete timeout_s after the request was sent; an answer the
    model took long to make (headers late) was thrown away as a TIMEOUT and bought again, 3 times
    per run. The headers here come within timeout_s, the body within timeout_s after them."""
    standin.script(provider_name, B("slow_body", delay=2.0, pieces=4, pause=0.3))
    prov = make(provider_name, timeout_s=3.0)
    t0 = time.monotonic()
    gen = prov.attempt(make_request())
    assert gen.data and time.monotonic() - t0 > 3.0
    # a body that stops after its headers is given up, as made and billed (status 200)
    standin.script(provider_name, B("slow_body", pieces=2, stall=True))
    err = attempt_error(make(provider_name, timeout_s=2.0))
    assert (err.retryable, err.status, err.reason) == (True, 200, "TIMEOUT")
    assert "after HTTP 200 (the answer was made: billed)" in err.message


def test_connection_refused_is_retryable():
    with socket_port() as port:
        pass  # closed again: nothing listens there
    prov = GeminiProvider(api_key=KEY, base_url=f"http://127.0.0.1:{port}/v1beta", timeout_s=2)
    err = attempt_error(prov)
    assert err.reason == "CONNECTION" and err.retryable and not err.billed  # nothing was sent


def test_a_tls_handshake_that_fails_is_not_billed(standin):
    """https to a plain-HTTP port (as a certificate or proxy failure): no request reaches the
    service, so it is CONNECTION (not billed), not DROPPED."""
    prov = GeminiProvider(api_key=KEY, base_url=standin.gemini_base_url.replace("http://", "https://"), timeout_s=2)
    err = attempt_error(prov)
    assert err.reason == "CONNECTION" and err.retryable and not err.billed
    assert len(standin.requests) == 0


def socket_port():
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))

    class Ctx:
        def __enter__(self):
            return sock.getsockname()[1]

        def __exit__(self, *exc):
            sock.close()

    return Ctx()


def test_undecodable_source_is_final(standin, make, provider_name):
    err = attempt_error(make(provider_name), make_request(b"not an image at all"))
    assert err.retryable is False and err.reason == "BAD_INPUT_IMAGE"
    assert standin.requests == []


# ---------------------------------------------------------------- retries


def run_with_retries(provider, policy):
    waits = []
    try:
        gen = call_with_retries(provider, make_request(), policy, sleep=waits.append)
    except GenerationFailed as failed:
        return failed, waits
    return gen, waits


def test_retries_honour_server_waits(standin, make, provider_name):
    first = B("rate_limit", retry_delay="7s") if provider_name == "gemini" else B("rate_limit", retry_after="7")
    standin.script(provider_name, first, "overloaded", "ok")
    gen, waits = run_with_retries(make(provider_name), RetryPolicy(max_attempts=3, backoff_s=1.0, jitter=0.0))
    assert gen.attempts == 3 and gen.data
    assert waits == [7.0, 2.0]  # server's 7 s, then backoff 1 s x attempt 2
    assert len(standin.requests) == 3


def test_server_wait_is_capped(standin, make):
    standin.script("gemini", B("rate_limit", retry_delay="3600s"), "ok")
    gen, waits = run_with_retries(
        make("gemini"), RetryPolicy(max_attempts=3, backoff_s=1.0, max_wait_s=30.0, jitter=0.0)
    )
    assert waits == [30.0] and gen.attempts == 2


@pytest.mark.parametrize("kind", ["bad_request", "unauthorized", "no_credits", "forbidden", "not_found"])
def test_final_errors_are_not_retried(standin, make, provider_name, kind):
    standin.script(provider_name, kind, "ok")
    failed, waits = run_with_retries(make(provider_name), RetryPolicy(max_attempts=3, backoff_s=1.0))
    assert isinstance(failed, GenerationFailed) and failed.attempts == 1 and waits == []
    assert len(standin.requests) == 1


def test_timeouts_drops_and_blocks_are_retried(standin, make, provider_name):
    standin.script(provider_name, B("slow", delay=2), "drop", "image_safety", "text_only", "ok")
    gen, waits = run_with_retries(
        make(provider_name, timeout_s=0.4), RetryPolicy(max_attempts=5, backoff_s=0.5, jitter=0.0)
    )
    assert gen.attempts == 5 and waits == [0.5, 1.0, 1.5, 2.0]


def test_all_attempts_failing(standin, make):
    standin.set_default("gemini", "overloaded")
    failed, waits = run_with_retries(make("gemini"), RetryPolicy(max_attempts=3, backoff_s=1.0, jitter=0.0))
    assert failed.attempts == 3 and failed.last.status == 503 and waits == [1.0, 2.0]


# ---------------------------------------------------------------- the key


def test_key_only_in_auth_header(standin, make, provider_name):
    prov = make(provider_name, timeout_s=0.4)
    standin.script(provider_name, "ok", "rate_limit", "drop", "bad_request", "image_safety", B("slow", delay=2))
    for _ in range(6):
        try:
            prov.attempt(make_request())
        except AttemptError as err:
            assert KEY not in str(err) and KEY not in repr(err) and KEY not in err.message
    assert KEY not in repr(prov) and KEY not in str(vars(prov).get("url", "")) + getattr(prov, "base_url", "")
    assert standin.key_leaks(KEY) == []
    assert all(
        (r.header("x-goog-api-key") if provider_name == "gemini" else r.header("Authorization"))
        in (KEY, f"Bearer {KEY}")
        for r in standin.requests
    )


def test_key_echoed_by_service_is_redacted(standin, make, provider_name):
    body = {"error": {"code": 400, "message": f"bad key {KEY} given", "status": "INVALID_ARGUMENT"}}
    standin.script(provider_name, B("raw", status=400, body=body))
    err = attempt_error(make(provider_name))
    assert "***" in err.message


def test_missing_key_and_plain_http_refused(standin):
    with pytest.raises(ConfigError):
        make_provider(api_cfg("gemini", standin), None)
    with pytest.raises(ConfigError):
        make_provider(api_cfg("openrouter", standin), "")
    with pytest.raises(ConfigError, match="https"):
        GeminiProvider(api_key=KEY, base_url="http://example.com/v1beta")
    with pytest.raises(ConfigError, match="https"):
        OpenRouterProvider(api_key=KEY, base_url="http://example.com/api/v1/chat/completions")
    with pytest.raises(ConfigError, match="image"):
        make_provider(api_cfg("openrouter", standin, modalities=["text"]), KEY)
    with pytest.raises(ConfigError, match="Authorization"):
        make_provider(api_cfg("openrouter", standin, extra_headers={"authorization": "Bearer x"}), KEY)


def test_defaults_from_config():
    cfg = {"api": {"provider": "gemini", "model": None, "base_url": None, "timeout_s": 120, "image_config": None}}
    g = make_provider(cfg, KEY)
    assert g.url == "https://generativelanguage.googleapis.com/v1beta/models/gemini-3-pro-image-preview:generateContent"
    o = make_provider({"api": {**cfg["api"], "provider": "openrouter", "modalities": ["image", "text"]}}, KEY)
    assert o.url == "https://openrouter.ai/api/v1/chat/completions" and o.model == "google/gemini-3-pro-image-preview"
    assert g.paid and o.paid and g.name == "gemini" and o.name == "openrouter"


# ---------------------------------------------------------------- helpers and the stand-in itself


def test_http_helpers():
    assert parse_duration("53s") == 53.0 and parse_duration("1.5s") == 1.5 and parse_duration("0.250s") == 0.25
    assert parse_duration({"seconds": 2, "nanos": 500_000_000}) == 2.5 and parse_duration("soon") is None
    assert parse_retry_after("12") == 12.0 and parse_retry_after("") is None and parse_retry_after("-3") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == 10.0
    details = [
        {"@type": "type.googleapis.com/google.rpc.Help"},
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "9s"},
    ]
    assert retry_delay_from_details(details) == 9.0 and retry_delay_from_details(None) is None
    q = quote("a\n  b" + "x" * 500)
    assert q.startswith('"a b') and len(q) <= 202 and q.endswith('…"')


def test_standin_rejects_misplaced_aspect_ratio_and_tracks_concurrency(standin):
    url = f"{standin.gemini_base_url}/models/gemini-3-pro-image-preview:generateContent"
    body = {
        "contents": [{"role": "user", "parts": [{"text": "x"}]}],
        "generationConfig": {"responseModalities": ["IMAGE"], "aspectRatio": "16:9"},
    }
    r = requests.post(url, json=body, headers={"x-goog-api-key": KEY}, timeout=5)
    assert r.status_code == 400 and "aspectRatio" in r.json()["error"]["message"]
    r = requests.post(url, json=body, timeout=5)
    assert r.status_code == 403  # no key
    standin.reset()
    standin.latency = 0.3
    prov = GeminiProvider(api_key=KEY, base_url=standin.gemini_base_url, timeout_s=5)
    threads = [threading.Thread(target=prov.attempt, args=(make_request(),)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert standin.max_in_flight == 4 and standin.in_flight == 0


def test_standin_match_rules(standin, make):
    standin.set_default("*", "image_safety", match="harsh")
    prov = make("gemini")
    req = make_request()
    req.prompt = "harsh midday sun"
    assert attempt_error(prov, req).reason == "IMAGE_SAFETY"
    assert prov.attempt(make_request()).data


def test_standin_cli_subprocess(tmp_path):
    proc, url = start_process(tmp_path / "url", api_key=KEY, latency=0.05)
    try:
        assert requests.get(f"{url}/_standin/health", timeout=5).json() == {"ok": True}
        requests.post(
            f"{url}/_standin/script", json={"protocol": "openrouter", "behaviours": [{"kind": "no_credits"}]}, timeout=5
        ).raise_for_status()
        prov = OpenRouterProvider(api_key=KEY, base_url=f"{url}/api/v1/chat/completions", timeout_s=5)
        assert attempt_error(prov).status == 402
        assert prov.attempt(make_request()).data
        stats = requests.get(f"{url}/_standin/stats", timeout=5).json()
        assert stats["count"] == 2 and stats["by_kind"] == {"no_credits": 1, "ok": 1}
        leaks = requests.post(f"{url}/_standin/key_leaks", json={"key": KEY}, timeout=5).json()
        assert leaks == {"leaks": []}
    finally:
        proc.terminate()
        proc.wait(timeout=10)
