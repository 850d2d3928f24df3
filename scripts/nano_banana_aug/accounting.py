"""Cost estimates from reported token usage and the ``api.pricing`` table.

Rules, in order:

1. A cost reported by the service (OpenRouter's ``usage.cost``) wins.
2. The ``local`` provider is free: 0.0.
3. Otherwise, from tokens (USD per million tokens, ``api.pricing``):

   - input: ``prompt_tokens`` x ``input_usd_per_mtok`` (the 560 tokens of the
     input image are counted in ``promptTokenCount``; they are billed at the
     input rate);
   - output image: the image tokens of the answer x ``output_image_usd_per_mtok``;
   - output text and thinking: everything else the model produced x
     ``output_text_usd_per_mtok``.

   Image tokens are Gemini's ``candidatesTokensDetails`` entry with modality
   IMAGE (OpenRouter's ``completion_tokens_details.image_tokens``) when
   reported.  When not reported, every non-thought output token is assumed to
   be an image token: an edit answer is one image, and any caption is a few
   tokens at most, so this overestimates by cents at worst.  Thought tokens
   are billed as text.  Gemini reports ``thoughtsTokenCount`` *next to*
   ``candidatesTokenCount`` (total = prompt + candidates + thoughts), while
   OpenRouter's ``completion_tokens`` already *include* reasoning tokens
   (total = prompt + completion); which case applies is read from
   ``total_tokens`` when reported, and the Gemini convention is assumed
   otherwise.

4. None when nothing was reported (e.g. a dropped connection).
"""

from __future__ import annotations

from .providers.base import Usage

DEFAULT_PRICING = {
    "input_usd_per_mtok": 2.0,
    "output_text_usd_per_mtok": 12.0,
    "output_image_usd_per_mtok": 120.0,
}


#: output image tokens of one Gemini 3 Pro Image answer: $0.134 at 1K/2K, $0.24 at 4K (REFERENCE)
IMAGE_TOKENS = {"1K": 1120, "2K": 1120, "4K": 2000}


def price_per_call(cfg: dict, batch: bool | None = None) -> float:
    """The price one paid call is planned and reserved at: ``api.pricing.image_usd_per_call`` (a
    1K/2K answer's), plus the larger image's tokens when ``api.image_config`` asks for 4K; the
    Batch API's share of it in batch mode (``batch`` defaults to the configured mode)."""
    api = cfg["api"]
    pricing = api["pricing"]
    unit = float(pricing["image_usd_per_call"])
    size = next((v for k, v in (api.get("image_config") or {}).items() if k in ("imageSize", "image_size")), "")
    if str(size).upper() in IMAGE_TOKENS:
        extra = IMAGE_TOKENS[str(size).upper()] - IMAGE_TOKENS["1K"]
        unit += extra * _rate(pricing, "output_image_usd_per_mtok") / 1e6
    if api.get("mode") == "batch" if batch is None else batch:
        unit *= batch_price_factor(cfg)
    return unit


def batch_price_factor(cfg: dict) -> float:
    """The Batch API's price as a fraction of the standard one (``api.pricing.batch_factor``)."""
    return float(cfg["api"]["pricing"].get("batch_factor", 0.5))


def _rate(pricing: dict | None, key: str) -> float:
    value = (pricing or {}).get(key)
    return float(DEFAULT_PRICING[key] if value is None else value)


def output_split(usage: Usage) -> tuple[int, int]:
    """(image tokens, text+thought tokens) of the answer, per the rules above."""
    prompt = usage.prompt_tokens or 0
    cand = usage.candidates_tokens or 0
    thoughts = usage.thoughts_tokens or 0
    thoughts_inside = bool(
        thoughts and usage.total_tokens is not None and prompt + cand >= usage.total_tokens and cand >= thoughts
    )
    non_thought = cand - thoughts if thoughts_inside else cand
    image = max(0, non_thought if usage.output_image_tokens is None else usage.output_image_tokens)
    text = max(0, non_thought - image) + thoughts
    return image, text


def estimate_cost_usd(usage: Usage | None, pricing: dict | None, provider: str) -> float | None:
    """Estimated USD cost of one attempt's ``usage`` (None = unknown)."""
    if usage is not None and usage.cost_usd is not None:
        return float(usage.cost_usd)
    if provider == "local":
        return 0.0
    if usage is None or (
        usage.prompt_tokens is None and usage.candidates_tokens is None and usage.thoughts_tokens is None
    ):
        return None
    image, text = output_split(usage)
    cost = (
        (usage.prompt_tokens or 0) * _rate(pricing, "input_usd_per_mtok")
        + text * _rate(pricing, "output_text_usd_per_mtok")
        + image * _rate(pricing, "output_image_usd_per_mtok")
    ) / 1e6
    return round(cost, 6)
