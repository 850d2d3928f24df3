"""Cost estimates from usage (nano_banana_aug.accounting)."""

import pytest

from nano_banana_aug.accounting import estimate_cost_usd, output_split
from nano_banana_aug.providers.base import Usage

PRICING = {
    "input_usd_per_mtok": 2.0,
    "output_text_usd_per_mtok": 12.0,
    "output_image_usd_per_mtok": 120.0,
    "image_usd_per_call": 0.1345,
}


def test_gemini_with_image_breakdown():
    # 560 image + 40 text prompt tokens, 1120 image tokens out, 200 thought tokens
    u = Usage(
        prompt_tokens=600, candidates_tokens=1120, thoughts_tokens=200, output_image_tokens=1120, total_tokens=1920
    )
    assert output_split(u) == (1120, 200)
    assert estimate_cost_usd(u, PRICING, "gemini") == pytest.approx((600 * 2 + 200 * 12 + 1120 * 120) / 1e6)


def test_gemini_one_1k_image_costs_about_the_documented_price():
    u = Usage(prompt_tokens=560, candidates_tokens=1120, output_image_tokens=1120, total_tokens=1680)
    assert estimate_cost_usd(u, PRICING, "gemini") == pytest.approx(0.1344 + 0.00112)


def test_without_breakdown_non_thought_output_counts_as_image():
    u = Usage(prompt_tokens=600, candidates_tokens=1130, thoughts_tokens=100, total_tokens=1830)
    assert output_split(u) == (1130, 100)
    # OpenRouter convention: completion tokens include the reasoning tokens
    u = Usage(prompt_tokens=600, candidates_tokens=1220, thoughts_tokens=100, total_tokens=1820)
    assert output_split(u) == (1120, 100)


def test_caption_tokens_are_text_when_image_tokens_known():
    u = Usage(prompt_tokens=10, candidates_tokens=1150, output_image_tokens=1120, total_tokens=1160)
    assert output_split(u) == (1120, 30)


def test_reported_cost_wins():
    u = Usage(prompt_tokens=600, candidates_tokens=1120, total_tokens=1720, cost_usd=0.5)
    assert estimate_cost_usd(u, PRICING, "openrouter") == 0.5


def test_missing_usage_and_local():
    assert estimate_cost_usd(Usage(), PRICING, "gemini") is None
    assert estimate_cost_usd(None, PRICING, "gemini") is None
    assert estimate_cost_usd(Usage(), PRICING, "local") == 0.0


def test_pricing_defaults_when_keys_missing():
    u = Usage(prompt_tokens=1_000_000, candidates_tokens=0, total_tokens=1_000_000)
    assert estimate_cost_usd(u, {}, "gemini") == pytest.approx(2.0)
    assert estimate_cost_usd(u, {"input_usd_per_mtok": 1.0}, "gemini") == pytest.approx(1.0)


def test_blocked_prompt_costs_input_only():
    u = Usage(prompt_tokens=600, total_tokens=600)
    assert estimate_cost_usd(u, PRICING, "gemini") == pytest.approx(600 * 2 / 1e6)
