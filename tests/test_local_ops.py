"""The offline `local` provider: recipe sampling, each operation's effect, determinism, geometry."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from nano_banana_aug import local_ops as L
from nano_banana_aug.providers import AttemptError, Request, make_provider
from nano_banana_aug.providers.local import LocalProvider

W, H = 400, 200

FULL = {
    "white_balance": 5200.0,
    "exposure": 0.4,
    "brightness": 0.02,
    "contrast": 1.15,
    "gamma": 0.9,
    "saturation": 0.9,
    "vignette": 0.3,
    "gaussian_blur": 1.2,
    "poisson_noise": 60.0,
    "gaussian_noise": 0.01,
    "jpeg_quality": 40,
}


def textured(w=W, h=H, lo=0.15, hi=0.6, seed=3) -> Image.Image:
    """A colourful, non-periodic test image with values in [lo, hi] (no clipping nearby)."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray((rng.random((h // 8, w // 8, 3)) * 255).astype(np.uint8)).resize((w, h), Image.BICUBIC)
    fine = rng.random((h, w, 3)) * 0.25
    x = np.asarray(coarse, dtype=np.float64) / 255 * 0.75 + fine
    x = lo + (hi - lo) * (x - x.min()) / (x.max() - x.min())
    return Image.fromarray((x * 255 + 0.5).astype(np.uint8), "RGB")


def flat(value: float, w=W, h=H) -> Image.Image:
    return Image.new("RGB", (w, h), (round(value * 255),) * 3)


def apply(img, params, seed=1) -> np.ndarray:
    return L.to_float(L.apply_recipe(img, params, seed))


def lin(x: np.ndarray) -> np.ndarray:
    return L.srgb_to_linear(x.astype(np.float32)).astype(np.float64)


def luminance(x_lin: np.ndarray) -> np.ndarray:
    return x_lin @ np.array([0.2126, 0.7152, 0.0722])


def shift_of(a: np.ndarray, b: np.ndarray) -> tuple[int, int]:
    """(dy, dx) by which b is shifted relative to a, by phase correlation of the grey images."""
    ga, gb = a.mean(axis=2), b.mean(axis=2)
    fa, fb = np.fft.fft2(ga - ga.mean()), np.fft.fft2(gb - gb.mean())
    r = np.fft.ifft2(fb * np.conj(fa) / (np.abs(fb * np.conj(fa)) + 1e-12)).real
    dy, dx = np.unravel_index(np.argmax(r), r.shape)
    return (
        int(dy if dy <= r.shape[0] // 2 else dy - r.shape[0]),
        int(dx if dx <= r.shape[1] // 2 else dx - r.shape[1]),
    )


# ---------------------------------------------------------------- sampling


def test_sample_params_deterministic_per_key_and_in_range():
    recipe = {"exposure": [-1.0, 1.0], "white_balance": [4000, 8000], "jpeg_quality": [20, 60], "gamma": 1.1}
    a = L.sample_params(recipe, "ID1011485656", "harsh_sun", 0, 0)
    assert a == L.sample_params(recipe, "ID1011485656", "harsh_sun", 0, 0)
    assert list(a) == ["white_balance", "exposure", "gamma", "jpeg_quality"]  # ORDER, not recipe order
    assert -1 <= a["exposure"] <= 1 and 4000 <= a["white_balance"] <= 8000
    assert isinstance(a["jpeg_quality"], int) and 20 <= a["jpeg_quality"] <= 60
    assert a["gamma"] == 1.1
    others = [
        L.sample_params(recipe, "ID1011485656", "harsh_sun", 1, 0),
        L.sample_params(recipe, "ID1011485656", "harsh_sun", 0, 1),
        L.sample_params(recipe, "ID1011485657", "harsh_sun", 0, 0),
        L.sample_params(recipe, "ID1011485656", "overcast", 0, 0),
    ]
    for b in others:
        assert b["exposure"] != a["exposure"] and b["white_balance"] != a["white_balance"]
    json.dumps(a)  # plain numbers


def test_sample_params_spread_and_independent_streams():
    values = [L.sample_params({"exposure": [0, 1]}, "ID1", "x", k, 0)["exposure"] for k in range(400)]
    assert 0.4 < np.mean(values) < 0.6 and min(values) < 0.05 and max(values) > 0.95
    # adding an op to a recipe does not change what the others draw
    one = L.sample_params({"exposure": [0, 1]}, "ID1", "x", 3, 0)
    two = L.sample_params({"exposure": [0, 1], "saturation": [0.5, 1.5]}, "ID1", "x", 3, 0)
    assert one["exposure"] == two["exposure"]
    assert L.sample_params({"exposure": [1, 0]}, "ID1", "x", 3, 0)["exposure"] == one["exposure"]  # reversed range


def test_sample_params_stable_across_processes():
    code = (
        "import json; from nano_banana_aug import local_ops as L; "
        "print(json.dumps(L.sample_params({'exposure': [-2, 2], 'jpeg_quality': [10, 90]}, 'ID1', 'a', 2, 7)), L.noise_seed('ID1', 'a', 2, 7))"
    )
    outs = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": s},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for s in ("1", "2")
    }
    assert len(outs) == 1  # sha256, not the salted hash()


@pytest.mark.parametrize(
    "recipe, word",
    [
        ({"exposure": 5}, "exposure"),
        ({"poisson_noise": 0}, "poisson_noise"),
        ({"jpeg_quality": [0, 50]}, "jpeg_quality"),
        ({"vignette": "x"}, "vignette"),
    ],
)
def test_bad_recipe_values_are_named(recipe, word):
    with pytest.raises(L.RecipeError, match=word):
        L.sample_params(recipe, "ID1", "x", 0, 0)


# ---------------------------------------------------------------- identity, determinism, geometry


def test_identity_returns_the_same_pixels():
    img = textured()
    src = np.asarray(img)
    assert np.array_equal(np.asarray(L.apply_recipe(img, {}, 5)), src)
    neutral = {
        "white_balance": 6500.0,
        "exposure": 0.0,
        "brightness": 0.0,
        "contrast": 1.0,
        "gamma": 1.0,
        "saturation": 1.0,
        "vignette": 0.0,
        "gaussian_blur": 0.0,
        "gaussian_noise": 0.0,
    }
    assert np.array_equal(np.asarray(L.apply_recipe(img, neutral, 5)), src)
    # a lossless linear round trip
    assert np.array_equal(L.to_uint8(L.linear_to_srgb(L.srgb_to_linear(L.to_float(src)))), src)


def test_recipe_is_deterministic_and_noise_depends_on_the_seed():
    img = textured()
    a = np.asarray(L.apply_recipe(img, FULL, 11))
    assert np.array_equal(a, np.asarray(L.apply_recipe(img, FULL, 11)))
    assert not np.array_equal(a, np.asarray(L.apply_recipe(img, FULL, 12)))


def test_fast_path_equals_composition_of_the_per_op_functions():
    img = textured()
    params = {k: v for k, v in FULL.items() if k != "jpeg_quality"}
    fast = np.asarray(L.apply_recipe(img, params, 4)).astype(int)
    ref = L.to_uint8(L.apply_array(L.to_float(img), params, 4)).astype(int)
    assert np.abs(fast - ref).max() <= 1 and (fast != ref).mean() < 0.01


@pytest.mark.parametrize("op", L.ORDER)
def test_no_op_moves_the_image(op):
    img = textured()
    params = {op: FULL[op]} if op != "gaussian_blur" else {op: 3.0}
    out = apply(img, params)
    assert out.shape == (H, W, 3)
    assert shift_of(L.to_float(img), out) == (0, 0)


def test_full_recipe_keeps_geometry_and_a_shift_is_detected():
    img = textured(seed=8)
    out = apply(img, FULL)
    assert out.shape == (H, W, 3) and shift_of(L.to_float(img), out) == (0, 0)
    moved = np.roll(out, (3, -5), axis=(0, 1))
    assert shift_of(L.to_float(img), moved) == (3, -5)  # the check itself works


# ---------------------------------------------------------------- each op moves its statistic


def test_exposure_scales_linear_light():
    img = textured(lo=0.1, hi=0.55)  # 2x stays below clipping (linear < 0.27)
    base = luminance(lin(L.to_float(img))).mean()
    assert luminance(lin(apply(img, {"exposure": 1.0}))).mean() / base == pytest.approx(2.0, rel=0.02)
    assert luminance(lin(apply(img, {"exposure": -1.0}))).mean() / base == pytest.approx(0.5, rel=0.03)


def test_white_balance_direction_and_luminance():
    img = textured()
    x = lin(L.to_float(img))
    rb = x[..., 0].mean() / x[..., 2].mean()
    warm, cool = lin(apply(img, {"white_balance": 3500})), lin(apply(img, {"white_balance": 10000}))
    assert warm[..., 0].mean() / warm[..., 2].mean() > 1.5 * rb  # lower kelvin = warmer light
    assert cool[..., 0].mean() / cool[..., 2].mean() < rb / 1.2
    for y in (warm, cool):
        assert luminance(y).mean() == pytest.approx(luminance(x).mean(), rel=0.03)
    assert np.allclose(L.white_balance_gains(6500), 1.0)
    g = L.white_balance_gains(2856)  # CIE illuminant A vs D65-ish: a strong orange cast
    assert g[0] > 1.5 and g[2] < 0.4


def test_tone_ops():
    img = textured()
    x = L.to_float(img)
    assert apply(img, {"brightness": 0.1}).mean() == pytest.approx(x.mean() + 0.1, abs=0.005)
    assert apply(img, {"contrast": 1.5}).std() > 1.4 * x.std()
    assert apply(img, {"contrast": 0.5}).std() < 0.6 * x.std()
    assert apply(img, {"gamma": 2.0}).mean() < x.mean() - 0.1
    assert apply(img, {"gamma": 0.5}).mean() > x.mean() + 0.1


def test_saturation():
    img = textured()
    x = L.to_float(img)

    def chroma(y):
        return (y.max(axis=2) - y.min(axis=2)).mean()

    grey = apply(img, {"saturation": 0.0})
    assert chroma(grey) < 1.5 / 255
    assert chroma(apply(img, {"saturation": 1.5})) > 1.3 * chroma(x)
    assert apply(img, {"saturation": 0.5}).mean() == pytest.approx(x.mean(), abs=0.01)


def test_vignette_darkens_corners_not_centre():
    img = flat(0.5, 401, 201)
    out = lin(apply(img, {"vignette": 0.6}))
    centre, corner = out[100, 200].mean(), out[0, 0].mean()
    assert centre == pytest.approx(lin(np.full(3, 0.5)).mean(), rel=0.02)
    assert corner / centre == pytest.approx(0.4, rel=0.05)  # 1 - strength at the corners


def hf_energy(x):
    g = x.mean(axis=2)
    return np.mean((4 * g[1:-1, 1:-1] - g[:-2, 1:-1] - g[2:, 1:-1] - g[1:-1, :-2] - g[1:-1, 2:]) ** 2)


def test_blur_lowers_high_frequencies_and_scales_with_width():
    img = textured()
    assert hf_energy(apply(img, {"gaussian_blur": 10.0})) < 0.1 * hf_energy(L.to_float(img))  # sigma 2 px at width 400
    assert hf_energy(apply(img, {"gaussian_blur": 2.0})) < 0.7 * hf_energy(L.to_float(img))
    assert L.blur_sigma_px(2.0, 1000) == pytest.approx(1.0) and L.blur_sigma_px(2.0, 2000) == pytest.approx(2.0)
    # the blur is a Gaussian of the stated sigma: an impulse spreads with variance sigma**2
    dot = np.zeros((201, 201, 3), np.uint8)
    dot[95:106, 95:106] = 255
    spread = L.to_float(L.apply_recipe(Image.fromarray(dot), {"gaussian_blur": 4.0 * 2000 / 201}, 0))[..., 0].astype(
        np.float64
    )
    ys = np.arange(201)
    var = (spread.sum(axis=1) * (ys - 100) ** 2).sum() / spread.sum() - (11**2 - 1) / 12  # minus the 11 px square's own
    assert np.sqrt(var) == pytest.approx(4.0, rel=0.1)


@pytest.mark.parametrize("photons", [30.0, 200.0])
def test_poisson_noise_has_shot_noise_statistics(photons):
    img = flat(0.6)
    v = float(lin(np.full(3, 0.6))[0])
    out = lin(apply(img, {"poisson_noise": photons}, seed=9))
    assert out.mean() == pytest.approx(v, rel=0.02)
    assert out.std() == pytest.approx(np.sqrt(v / photons), rel=0.08)  # variance = signal / N
    assert hf_energy(out) > 0


def test_gaussian_noise_adds_read_noise_of_given_sigma():
    img = flat(0.6)
    out = lin(apply(img, {"gaussian_noise": 0.02}, seed=9))
    assert out.std() == pytest.approx(0.02, rel=0.08)
    assert out.mean() == pytest.approx(float(lin(np.full(3, 0.6))[0]), abs=0.003)


def test_standard_normal_is_standard():
    z = L.standard_normal(np.random.default_rng(0), (400_000,)).astype(np.float64)
    assert abs(z.mean()) < 0.01 and z.std() == pytest.approx(1.0, abs=0.01)
    assert np.mean(z**4) == pytest.approx(3.0, abs=0.05) and np.mean(np.abs(z) > 2) == pytest.approx(0.0455, abs=0.003)


def test_jpeg_quality_lowers_fidelity():
    img = textured()
    x = L.to_float(img)

    def err(q):  # luma error: 4:2:0 chroma subsampling alone costs this noisy image ~5 levels of colour
        return np.abs(apply(img, {"jpeg_quality": q}) @ L._LUMA - x @ L._LUMA).mean()

    assert err(10) > err(40) > err(95) and err(95) < 2.5 / 255


# ---------------------------------------------------------------- the provider


def jpeg_bytes(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def request(data: bytes, recipe, k=0) -> Request:
    return Request(
        image_bytes=data,
        mime_type="image/jpeg",
        prompt="p",
        image_id="ID1011485656",
        aug_name="harsh_sun",
        variant_idx=k,
        seed=0,
        recipe=recipe,
    )


def test_provider_applies_the_sampled_recipe():
    cfg = {
        "api": {"provider": "local", "model": None},
        "augmentations": [{"name": "harsh_sun", "prompt": "p", "local": {"exposure": [0.2, 0.5]}}],
    }
    provider = make_provider(cfg, None)
    assert (
        isinstance(provider, LocalProvider)
        and provider.name == "local"
        and provider.paid is False
        and provider.model == "recipes-v1"
    )
    data = jpeg_bytes(textured())
    gen = provider.attempt(request(data, {"exposure": [0.2, 0.5]}))
    params = json.loads(gen.text)
    assert params == L.sample_params({"exposure": [0.2, 0.5]}, "ID1011485656", "harsh_sun", 0, 0)
    assert gen.image.mode == "RGB" and gen.image.size == (W, H)
    assert gen.model_version == "recipes-v1" and len(gen.response_id) == 16 and int(gen.response_id, 16) >= 0
    assert gen.usage.cost_usd is None and gen.data is None
    again = provider.attempt(request(data, {"exposure": [0.2, 0.5]}))
    assert np.array_equal(np.asarray(again.image), np.asarray(gen.image)) and again.response_id == gen.response_id
    other = provider.attempt(request(data, {"exposure": [0.2, 0.5]}, k=1))
    assert other.response_id != gen.response_id
    src = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    for recipe in (None, {}):
        assert np.array_equal(np.asarray(provider.attempt(request(data, recipe)).image), src)


def test_provider_errors_are_not_retried():
    provider = LocalProvider()
    with pytest.raises(AttemptError) as err:
        provider.attempt(request(b"\xff\xd8\xffnot really a jpeg", {"exposure": 1}))
    assert not err.value.retryable
    with pytest.raises(AttemptError) as err:
        provider.attempt(request(jpeg_bytes(textured()), {"exposure": 9}))
    assert not err.value.retryable and "exposure" in err.value.message
    with pytest.raises(L.RecipeError, match=r"augmentations\[0\] \(a\)\.local\.gamma"):
        LocalProvider.from_config({"api": {}, "augmentations": [{"name": "a", "prompt": "p", "local": {"gamma": 50}}]})
