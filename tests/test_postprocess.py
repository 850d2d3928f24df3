"""Post-processing arithmetic (REFERENCE §2) and its application to pixels."""

import numpy as np
import pytest
from PIL import Image

from nano_banana_aug.postprocess import apply, plan

PAD = {
    "enforce_aspect_ratio": 2.0,
    "mode": "pad",
    "pad_mode": "reflect",
    "pad_color": [0, 0, 0],
    "target_size": None,
    "resample": "bicubic",
}
CROP = dict(PAD, mode="crop")


def test_no_enforcement_keeps_everything():
    g = plan(1376, 768, {"enforce_aspect_ratio": None, "target_size": None})
    assert (g.aspect_w, g.aspect_h, g.out_w, g.out_h, g.pad_area_px, g.area_scale, g.mode) == (
        1376,
        768,
        1376,
        768,
        0,
        1.0,
        "none",
    )


def test_pad_too_tall_model_output_16_9_to_2_1():
    # Gemini answers 1376x768 for a 2000x1000 input: pad the width to 2*768.
    g = plan(1376, 768, PAD)
    assert (g.aspect_w, g.aspect_h) == (1536, 768)
    assert (g.left, g.top) == (80, 0)
    assert g.pad_area_px == 1536 * 768 - 1376 * 768 == 122880
    assert g.area_scale == pytest.approx(1536 / 1376)
    assert g.area_scale >= 1


def test_pad_too_wide_adds_rows_odd_pixel_at_bottom():
    g = plan(2101, 1000, PAD)  # new_h = round(1050.5) = 1050 (half to even)
    assert (g.aspect_w, g.aspect_h) == (2101, 1050)
    assert g.top == 25  # 50 rows: 25 top, 25 bottom
    g = plan(2103, 1000, PAD)  # round(1051.5) = 1052: 52 rows
    assert g.aspect_h == 1052 and g.top == 26
    g = plan(2000, 997, {**PAD, "enforce_aspect_ratio": 1.0})  # too wide: 3 rows: 1 top, 2 bottom
    assert (g.aspect_w, g.aspect_h, g.top, g.left) == (2000, 2000, 501, 0)


def test_pad_odd_split_goes_bottom_right():
    g = plan(1377, 768, PAD)  # too tall: new_w = 1536, 159 columns: 79 left, 80 right
    assert g.aspect_w == 1536 and g.left == 79
    img = Image.new("RGB", (1377, 768), (200, 10, 10))
    out = apply(img, g, {**PAD, "pad_mode": "constant", "pad_color": [0, 255, 0]})
    arr = np.asarray(out)
    assert out.size == (1536, 768)
    assert (arr[:, :79] == [0, 255, 0]).all() and (arr[:, 79] == [200, 10, 10]).all()
    assert (arr[:, 79 + 1377 :] == [0, 255, 0]).all() and arr[:, 79 + 1377 :].shape[1] == 80


def test_crop_mirror_of_pad():
    g = plan(1376, 768, CROP)  # too tall: keep rows new_h = round(1376/2) = 688, centred
    assert (g.aspect_w, g.aspect_h, g.top, g.left) == (1376, 688, 40, 0)
    assert g.pad_area_px == 0
    assert g.area_scale == pytest.approx(688 / 768) and g.area_scale <= 1
    g = plan(2400, 1000, CROP)  # too wide: keep columns round(2*1000) = 2000, 200 each side
    assert (g.aspect_w, g.aspect_h, g.left, g.top) == (2000, 1000, 200, 0)
    g = plan(2001, 999, CROP)  # too wide: new_w = 1998, 3 cut: left 1, right 2
    assert (g.aspect_w, g.left) == (1998, 1)


def test_crop_keeps_the_centre_pixels():
    arr = np.arange(8 * 5 * 3, dtype=np.uint8).reshape(5, 8, 3)
    img = Image.fromarray(arr)
    g = plan(8, 5, {**CROP, "enforce_aspect_ratio": 1.0})  # keep 5x5, cut 3: left 1, right 2
    out = np.asarray(apply(img, g, CROP))
    assert out.shape == (5, 5, 3)
    assert (out == arr[:, 1:6]).all()


def test_already_right_aspect_is_untouched_even_with_rounding():
    assert plan(2000, 1000, PAD).mode == "none"
    assert plan(2001, 1000, PAD).mode == "none"  # round(1000.5) = 1000


def test_target_size_after_pad_records_sizes():
    g = plan(1376, 768, {**PAD, "target_size": [2000, 1000]})
    assert (g.aspect_w, g.aspect_h, g.out_w, g.out_h) == (1536, 768, 2000, 1000)
    rec = g.record()
    assert rec["out_w"] == 2000 and rec["orig_w"] == 1376 and rec["pad_area_px"] == 122880
    out = apply(Image.new("RGB", (1376, 768)), g, {**PAD, "target_size": [2000, 1000]})
    assert out.size == (2000, 1000)


def test_reflect_and_edge_padding_values():
    arr = np.zeros((4, 4, 3), np.uint8)
    arr[:, 0] = 10
    arr[:, 1] = 20
    img = Image.fromarray(arr)
    g = plan(4, 4, {**PAD, "enforce_aspect_ratio": 2.0})  # 8x4: 2 columns each side
    refl = np.asarray(apply(img, g, PAD))
    assert list(refl[0, :4, 0]) == [0, 20, 10, 20]  # reflect (no edge repeat): x[2], x[1], x[0], x[1]
    edge = np.asarray(apply(img, g, {**PAD, "pad_mode": "edge"}))
    assert list(edge[0, :3, 0]) == [10, 10, 10]


def test_reflect_pad_wider_than_image():
    g = plan(3, 10, PAD)  # 20x10 from 3x10: pads far wider than the image
    out = apply(Image.new("RGB", (3, 10), (5, 6, 7)), g, PAD)
    assert out.size == (20, 10)


def test_invalid_size():
    with pytest.raises(ValueError):
        plan(0, 10, PAD)


def test_16_bit_and_cmyk_sources_decode_to_faithful_rgb():
    import io

    import numpy as np
    from PIL import Image

    from nano_banana_aug import imaging

    ramp = np.linspace(0, 65535, 200 * 100).reshape(100, 200).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(ramp).save(buf, "PNG")
    rgb = imaging.decode(buf.getvalue(), max_pixels=10**7, what="16-bit")
    assert rgb.mode == "RGB" and 120 < np.asarray(rgb).mean() < 135  # scaled, not clipped to white
    buf = io.BytesIO()
    Image.new("CMYK", (64, 32), (0, 255, 255, 0)).save(buf, "JPEG", quality=95)
    red = imaging.decode(buf.getvalue(), max_pixels=10**7, what="cmyk").getpixel((10, 10))
    assert red[0] > 200 and red[1] < 60 and red[2] < 60
