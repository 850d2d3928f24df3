"""Contract tests: the official SDKs keep the stand-in (and our request bodies) honest.

1. google-genai talks to the stand-in and gets typed answers that parse as the
   real service's would; every Gemini answer the stand-in can give validates
   against ``types.GenerateContentResponse`` (pydantic, extra fields forbidden).
2. openai talks to the stand-in's OpenRouter side: images survive as
   ``message.images``, an HTTP-200 error body gives ``choices=None``.
3. The bodies OUR clients send validate against the SDKs' own request types and
   match what the SDKs themselves send for the same input.

Test-only dependencies (pyproject ``[test]`` extra): google-genai, openai.
"""

from __future__ import annotations

import base64
import io
import typing

import openai
import pytest
import requests
from google import genai
from google.genai import errors as genai_errors
from google.genai import types
from openai.types.chat import ChatCompletion, ChatCompletionContentPartTextParam, ChatCompletionUserMessageParam
from openai.types.chat import chat_completion_content_part_image_param as image_param
from openai.types.chat import completion_create_params
from PIL import Image
from pydantic import TypeAdapter

from nano_banana_aug.providers.base import Request
from nano_banana_aug.providers.gemini import GeminiProvider
from nano_banana_aug.providers.openrouter import OpenRouterProvider
from tests.standin import DEFAULT_API_KEY, KINDS, B

pytest_plugins = ["tests.standin.fixtures"]

KEY = DEFAULT_API_KEY
MODEL = "gemini-3-pro-image-preview"
PROMPT = "Edit this photograph.\n\nRe-light the scene as under an overcast sky."


def _jpeg(w=2000, h=1000) -> bytes:
    buf = io.BytesIO()
    Image.linear_gradient("L").resize((w, h)).convert("RGB").save(buf, format="JPEG", quality=85)
    return buf.getvalue()


JPEG = _jpeg()
REQUEST = Request(
    image_bytes=JPEG, mime_type="image/jpeg", prompt=PROMPT, image_id="ID1", aug_name="overcast", variant_idx=0
)


def size_of(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as im:
        return im.size


@pytest.fixture
def gclient(standin):
    return genai.Client(api_key=KEY, http_options=types.HttpOptions(base_url=standin.url, api_version="v1beta"))


@pytest.fixture
def oclient(standin):
    return openai.OpenAI(api_key=KEY, base_url=f"{standin.url}/api/v1", max_retries=0, timeout=10)


def sdk_contents():
    return [types.Part.from_bytes(data=JPEG, mime_type="image/jpeg"), PROMPT]


# ---------------------------------------------------------------- 1. google-genai


def test_genai_answer_with_thought_images(standin, gclient):
    standin.script("gemini", B("ok", thoughts=2, text="Done."))
    r = gclient.models.generate_content(
        model=MODEL, contents=sdk_contents(), config=types.GenerateContentConfig(response_modalities=["IMAGE"])
    )
    assert isinstance(r, types.GenerateContentResponse)
    cand = r.candidates[0]
    assert cand.finish_reason == types.FinishReason.STOP
    parts = cand.content.parts
    assert [bool(p.thought) for p in parts] == [True, True, True, False, False]
    images = [p for p in parts if p.inline_data is not None]
    assert [bool(p.thought) for p in images] == [True, True, False]
    final = [p for p in images if not p.thought][-1]
    assert final.inline_data.mime_type == "image/png" and final.thought_signature
    assert size_of(final.inline_data.data) == (1376, 768)
    assert size_of(images[0].inline_data.data) == (344, 192)
    u = r.usage_metadata
    assert u.prompt_token_count > 560 and u.thoughts_token_count == 300
    assert u.total_token_count == u.prompt_token_count + u.candidates_token_count + u.thoughts_token_count
    assert [(d.modality, d.token_count) for d in u.candidates_tokens_details][0] == (types.MediaModality.IMAGE, 1120)
    assert r.model_version == MODEL and r.response_id


def test_genai_image_config_is_honoured(standin, gclient):
    cfg = types.GenerateContentConfig(
        response_modalities=["IMAGE"], image_config=types.ImageConfig(aspect_ratio="16:9", image_size="2K")
    )
    r = gclient.models.generate_content(model=MODEL, contents=sdk_contents(), config=cfg)
    assert size_of(r.candidates[0].content.parts[-1].inline_data.data) == (2752, 1536)
    assert standin.requests[0].json["generationConfig"]["imageConfig"] == {"aspectRatio": "16:9", "imageSize": "2K"}


def test_genai_blocks_and_text_only(standin, gclient):
    standin.script("gemini", "prompt_blocked", "image_safety", "text_only")
    r = gclient.models.generate_content(model=MODEL, contents=sdk_contents())
    assert r.prompt_feedback.block_reason == types.BlockedReason.PROHIBITED_CONTENT and not r.candidates
    r = gclient.models.generate_content(model=MODEL, contents=sdk_contents())
    assert r.candidates[0].finish_reason == types.FinishReason.IMAGE_SAFETY and r.candidates[0].content is None
    r = gclient.models.generate_content(model=MODEL, contents=sdk_contents())
    assert r.candidates[0].finish_reason == types.FinishReason.STOP and "can't edit" in r.text


@pytest.mark.parametrize(
    "kind, status, exc",
    [
        ("rate_limit", 429, genai_errors.ClientError),
        ("overloaded", 503, genai_errors.ServerError),
        ("server_error", 500, genai_errors.ServerError),
        ("not_found", 404, genai_errors.ClientError),
    ],
)
def test_genai_error_statuses(standin, gclient, kind, status, exc):
    standin.script("gemini", kind)
    with pytest.raises(exc) as err:
        gclient.models.generate_content(model=MODEL, contents=sdk_contents())
    assert err.value.code == status
    if kind == "rate_limit":
        assert err.value.status == "RESOURCE_EXHAUSTED"
        retry = [d for d in err.value.details["error"]["details"] if d["@type"].endswith("RetryInfo")]
        assert retry == [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "53s"}]
    assert len(standin.requests) == 1  # the SDK does not retry by itself


def test_genai_wrong_key(standin):
    client = genai.Client(
        api_key="AIza-wrong", http_options=types.HttpOptions(base_url=standin.url, api_version="v1beta")
    )
    with pytest.raises(genai_errors.ClientError) as err:
        client.models.generate_content(model=MODEL, contents=["hi"])
    assert err.value.code == 400 and err.value.status == "INVALID_ARGUMENT"
    assert "API key not valid" in err.value.message


# drop/slow/hold/raw/redirect send no answer of their own; garbage_base64 is invalid on purpose (checked below)
GEMINI_ANSWER_KINDS = [k for k in KINDS if k not in ("drop", "slow", "hold", "raw", "redirect", "garbage_base64")]


@pytest.mark.parametrize("kind", GEMINI_ANSWER_KINDS)
def test_every_standin_gemini_answer_validates_against_sdk_types(standin, kind):
    """Each 200 answer must be a valid GenerateContentResponse (no unknown fields,
    right enums); each error body must have the google.rpc.Status shape."""
    standin.script("gemini", kind)
    body = GeminiProvider(api_key=KEY, base_url=standin.gemini_base_url).build_body(REQUEST)
    r = requests.post(
        f"{standin.gemini_base_url}/models/{MODEL}:generateContent",
        json=body,
        headers={"x-goog-api-key": KEY},
        timeout=10,
    )
    payload = r.json()
    if r.status_code == 200 and "error" not in payload:
        parsed = types.GenerateContentResponse.model_validate(payload)
        assert parsed.model_version == MODEL
    else:
        err = payload["error"]
        assert set(err) <= {"code", "message", "status", "details"}
        assert isinstance(err["code"], int) and isinstance(err["message"], str) and err["status"].isupper()
        for d in err.get("details", []):
            assert d["@type"].startswith("type.googleapis.com/google.rpc.")


def test_garbage_base64_is_the_only_invalid_field(standin):
    standin.script("gemini", "garbage_base64")
    body = GeminiProvider(api_key=KEY, base_url=standin.gemini_base_url).build_body(REQUEST)
    payload = requests.post(
        f"{standin.gemini_base_url}/models/{MODEL}:generateContent",
        json=body,
        headers={"x-goog-api-key": KEY},
        timeout=10,
    ).json()
    with pytest.raises(ValueError) as err:
        types.GenerateContentResponse.model_validate(payload)
    assert [e["loc"] for e in err.value.errors()] == [("candidates", 0, "content", "parts", 0, "inlineData", "data")]


# ---------------------------------------------------------------- 2. openai (OpenRouter)


def sdk_messages():
    url = "data:image/jpeg;base64," + base64.b64encode(JPEG).decode()
    return [
        {
            "role": "user",
            "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": PROMPT}],
        }
    ]


def test_openai_answer_has_images(standin, oclient):
    standin.script("openrouter", B("ok", thoughts=1))
    r = oclient.chat.completions.create(
        model="google/gemini-3-pro-image-preview", messages=sdk_messages(), extra_body={"modalities": ["image", "text"]}
    )
    assert isinstance(r, ChatCompletion) and r.id.startswith("gen-") and r.model == "google/gemini-3-pro-image-preview"
    choice = r.choices[0]
    assert choice.finish_reason == "stop" and choice.native_finish_reason == "STOP"
    images = choice.message.images
    assert isinstance(images, list) and all(isinstance(i, dict) for i in images)
    url = images[-1]["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    assert size_of(base64.b64decode(url.split(",", 1)[1])) == (1376, 768)
    assert r.usage.prompt_tokens > 560 and r.usage.completion_tokens > 1120 and r.usage.cost > 0.13
    # the successful body is also a *valid* ChatCompletion, not just constructible
    ChatCompletion.model_validate(standin_last_json(standin, oclient))


def standin_last_json(standin, oclient):
    resp = oclient.chat.completions.with_raw_response.create(
        model="google/gemini-3-pro-image-preview", messages=sdk_messages(), extra_body={"modalities": ["image", "text"]}
    )
    return resp.http_response.json()


def test_openai_http200_error_gives_no_choices(standin, oclient):
    standin.script("openrouter", "http200_error", "finish_error", "image_safety")
    create = lambda: oclient.chat.completions.create(
        model="google/gemini-3-pro-image-preview",  # noqa: E731
        messages=sdk_messages(),
        extra_body={"modalities": ["image", "text"]},
    )
    r = create()
    assert (
        r.choices is None
        and r.error["message"] == "Provider returned error"
        and "IMAGE_SAFETY" in r.error["metadata"]["raw"]
    )
    r = create()
    assert r.choices[0].finish_reason == "error" and r.choices[0].error["code"] == 502
    r = create()
    assert r.choices[0].finish_reason == "content_filter" and r.choices[0].native_finish_reason == "IMAGE_SAFETY"
    assert not getattr(r.choices[0].message, "images", None)


@pytest.mark.parametrize(
    "kind, status, exc",
    [
        ("no_credits", 402, openai.APIStatusError),
        ("rate_limit", 429, openai.RateLimitError),
        ("unauthorized", 401, openai.AuthenticationError),
        ("forbidden", 403, openai.PermissionDeniedError),
        ("overloaded", 503, openai.InternalServerError),
    ],
)
def test_openai_error_statuses(standin, oclient, kind, status, exc):
    standin.script("openrouter", B(kind, retry_after="4") if status in (429, 503) else kind)
    with pytest.raises(exc) as err:
        oclient.chat.completions.create(
            model="google/gemini-3-pro-image-preview",
            messages=sdk_messages(),
            extra_body={"modalities": ["image", "text"]},
        )
    assert err.value.status_code == status
    assert isinstance(err.value.body, dict) and err.value.body["code"] == status
    if status in (429, 503):
        assert err.value.response.headers["retry-after"] == "4"


def test_openai_without_image_modality_gets_text(standin, oclient):
    r = oclient.chat.completions.create(model="google/gemini-3-pro-image-preview", messages=sdk_messages())
    assert r.choices[0].message.content and not getattr(r.choices[0].message, "images", None)


# ---------------------------------------------------------------- 3. our request bodies


def test_our_gemini_body_validates_and_matches_the_sdk(standin, gclient):
    image_config = {"aspectRatio": "16:9", "imageSize": "2K"}
    GeminiProvider(api_key=KEY, base_url=standin.gemini_base_url, image_config=image_config).attempt(REQUEST)
    gclient.models.generate_content(
        model=MODEL,
        contents=sdk_contents(),
        config=types.GenerateContentConfig(
            response_modalities=["IMAGE"], image_config=types.ImageConfig(aspect_ratio="16:9", image_size="2K")
        ),
    )
    ours, sdk = (r.json for r in standin.requests)
    assert set(ours) == {"contents", "generationConfig"}
    (content,) = ours["contents"]
    parsed = types.Content.model_validate(content)  # pydantic, extra fields forbidden, camelCase aliases
    assert parsed.role == "user" and parsed.parts[0].inline_data.data == JPEG
    assert parsed.parts[0].inline_data.mime_type == "image/jpeg" and parsed.parts[1].text == PROMPT
    config = types.GenerateContentConfig.model_validate(ours["generationConfig"])
    assert config.response_modalities == ["IMAGE"] and config.image_config.image_size == "2K"
    # same structure as the SDK's own request, up to base64 flavour (the SDK sends URL-safe)
    sdk_part = sdk["contents"][0]["parts"][0]["inlineData"]
    assert base64.urlsafe_b64decode(sdk_part["data"] + "==") == JPEG
    # (the SDK itself mixes spellings: inlineData with mime_type; the service accepts both)
    assert normalised(ours) == normalised(sdk)
    assert standin.requests[0].path == standin.requests[1].path


def normalised(obj):
    """camelCase keys everywhere and inline data replaced by a marker."""
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            head, *rest = k.split("_")
            key = head + "".join(w[:1].upper() + w[1:] for w in rest)
            out[key] = "<bytes>" if key == "data" else normalised(v)
        return out
    if isinstance(obj, list):
        return [normalised(v) for v in obj]
    return obj


def _td_keys(td) -> set:
    return set(td.__required_keys__) | set(td.__optional_keys__)


def test_our_openrouter_body_validates_and_matches_the_sdk(standin, oclient):
    prov = OpenRouterProvider(api_key=KEY, base_url=standin.openrouter_url, image_config={"aspect_ratio": "16:9"})
    prov.attempt(REQUEST)
    oclient.chat.completions.create(
        model="google/gemini-3-pro-image-preview",
        messages=sdk_messages(),
        stream=False,
        extra_body={"modalities": ["image", "text"], "image_config": {"aspect_ratio": "16:9"}},
    )
    ours, sdk = (r.json for r in standin.requests)
    openrouter_extras = {"modalities", "image_config"}
    assert set(ours) <= _td_keys(completion_create_params.CompletionCreateParamsNonStreaming) | openrouter_extras
    standard = {k: v for k, v in ours.items() if k not in openrouter_extras}
    validated = TypeAdapter(completion_create_params.CompletionCreateParamsNonStreaming).validate_python(standard)
    assert validated["stream"] is False
    TypeAdapter(typing.List[ChatCompletionUserMessageParam]).validate_python(ours["messages"])
    (msg,) = ours["messages"]
    assert set(msg) <= _td_keys(ChatCompletionUserMessageParam)
    img, text = msg["content"]
    assert set(img) <= _td_keys(image_param.ChatCompletionContentPartImageParam)
    assert set(img["image_url"]) <= _td_keys(image_param.ImageURL)
    assert set(text) <= _td_keys(ChatCompletionContentPartTextParam)
    assert set(ours["modalities"]) <= {"image", "text"} and "image" in ours["modalities"]
    assert ours == sdk
