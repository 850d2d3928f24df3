"""A small synthetic stand-in for the CSIRO Image2Biomass training set.

``make_sample(out_dir)`` writes ``train.csv`` (the competition's long
format, 5 target rows per image) and ``train/<image_id>.jpg`` (2000x1000
top-down "pasture quadrat" photos) so the whole pipeline can run without
the real data, which cannot be redistributed.

The images are procedural but photo-like where the pipeline cares: soil
with multi-scale texture, straw-coloured dead material, tapered green grass
blades radiating from tussocks, trifoliate clover leaves in patches, cast
shadows, uneven light, sensor noise, and on about a quarter of the images an
orange camera timestamp.  Nothing is periodic, and top/bottom and
left/right differ, so QC checks for shifts, mirrors and crops have
something to lock on to.  Cover fractions differ per image and drive the
targets (Total = Green + Dead + Clover, GDM = Green + Clover).  One image
has an empty Dry_Total_g target (the row exists, the value is null), as
incomplete rows do occur in real tables: the pipeline must skip it.

Everything is derived from ``seed``: the same call gives the same table and
the same pixels.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from PIL import Image

DEFAULT_SEED = 20151
SIZE = (2000, 1000)  # W, H of the real images
JPEG_QUALITY = 80  # keeps the 8 images of data/sample/ under 5 MB (about 4 MB)
TARGETS = ("Dry_Clover_g", "Dry_Dead_g", "Dry_Green_g", "Dry_Total_g", "GDM_g")  # row order of the real train.csv
COLUMNS = [
    "sample_id",
    "image_path",
    "Sampling_Date",
    "State",
    "Species",
    "Pre_GSHH_NDVI",
    "Height_Ave_cm",
    "target_name",
    "target",
]
MISSING_TOTAL_INDEX = 5  # this image's Dry_Total_g target is empty
STATES = ("Tas", "Vic", "NSW", "WA")
GRASSES = ("Ryegrass", "Phalaris", "Fescue")


@dataclass
class Scene:
    """What one synthetic image shows (and what its targets derive from)."""

    image_id: str
    date: tuple[int, int, int]
    state: str
    species: str
    green: float  # relative densities 0..1
    dead: float
    clover: float
    height_cm: float
    timestamp: bool
    seed: int


# --------------------------------------------------------------------------
# the table
# --------------------------------------------------------------------------


def make_scenes(n_images: int = 8, seed: int = DEFAULT_SEED) -> list[Scene]:
    """The per-image settings, sorted by image_id; a pure function of the arguments."""
    rng = np.random.default_rng([seed, 0])
    ids = sorted({int(v) for v in rng.integers(1_000_000_000, 2_000_000_000, size=n_images * 2)})
    ids = [ids[i] for i in sorted(rng.choice(len(ids), size=n_images, replace=False))]
    # spread the looks: lush, dry, clover-rich, sparse, mixed ...
    looks = [
        (0.85, 0.15, 0.10),
        (0.30, 0.80, 0.00),
        (0.55, 0.25, 0.70),
        (0.25, 0.20, 0.05),
        (0.70, 0.45, 0.25),
        (0.95, 0.05, 0.35),
        (0.45, 0.55, 0.00),
        (0.60, 0.30, 0.45),
    ]
    n_stamps = max(1, round(n_images / 4))
    stamped = set(rng.choice(n_images, size=n_stamps, replace=False).tolist())
    scenes = []
    for i, image_id in enumerate(ids):
        g, d, c = looks[i % len(looks)]
        g, d, c = (float(np.clip(v + rng.normal(0, 0.05), 0, 1)) if v > 0 else 0.0 for v in (g, d, c))
        grass = GRASSES[int(rng.integers(len(GRASSES)))]
        scenes.append(
            Scene(
                image_id=f"ID{image_id}",
                date=(2015, int(rng.integers(1, 13)), int(rng.integers(1, 29))),
                state=STATES[int(rng.integers(len(STATES)))],
                species=f"{grass}_Clover" if c > 0 else grass,
                green=g,
                dead=d,
                clover=c,
                height_cm=float(1.5 + 14.0 * g * rng.uniform(0.5, 1.0) + 3.0 * d),
                timestamp=i in stamped,
                seed=int(rng.integers(2**31)),
            )
        )
    return scenes


def sample_table(scenes: list[Scene]) -> pd.DataFrame:
    """train.csv rows (long format, 5 per image, the real file's row order)."""
    rng = np.random.default_rng([len(scenes), 1] + [s.seed for s in scenes])
    rows = []
    for i, s in enumerate(scenes):
        size = s.height_cm / 8.0
        green = round(60.0 * s.green * size * rng.uniform(0.8, 1.2), 4)
        dead = round(35.0 * s.dead * rng.uniform(0.7, 1.3), 4)
        clover = round(30.0 * s.clover * size * rng.uniform(0.7, 1.3), 4) if s.clover > 0 else 0.0
        values = {
            "Dry_Clover_g": clover,
            "Dry_Dead_g": dead,
            "Dry_Green_g": green,
            "Dry_Total_g": round(green + dead + clover, 4),
            "GDM_g": round(green + clover, 4),
        }
        if i == MISSING_TOTAL_INDEX % len(scenes):
            values["Dry_Total_g"] = None
        ndvi = round(
            float(
                np.clip(0.25 + 0.55 * (s.green + 0.6 * s.clover) / (1 + 0.5 * s.dead) + rng.normal(0, 0.02), 0.15, 0.92)
            ),
            2,
        )
        date = f"{s.date[0]}/{s.date[1]}/{s.date[2]}"  # like the real file: 2015/9/4
        for name in TARGETS:
            rows.append(
                {
                    "sample_id": f"{s.image_id}__{name}",
                    "image_path": f"train/{s.image_id}.jpg",
                    "Sampling_Date": date,
                    "State": s.state,
                    "Species": s.species,
                    "Pre_GSHH_NDVI": ndvi,
                    "Height_Ave_cm": round(s.height_cm, 4),
                    "target_name": name,
                    "target": values[name],
                }
            )
    return pd.DataFrame(rows, columns=COLUMNS)


# --------------------------------------------------------------------------
# the images
# --------------------------------------------------------------------------


def fbm(
    rng: np.random.Generator, w: int, h: int, base: int = 4, octaves: int = 6, persistence: float = 0.55
) -> np.ndarray:
    """Fractal value noise in about [-1, 1], float32 (h, w): smooth random
    grids of doubling resolution, upsampled bicubically; never periodic."""
    from PIL import Image

    out = np.zeros((h, w), np.float32)
    amp, total = 1.0, 0.0
    for o in range(octaves):
        gw, gh = base * 2**o * 2, base * 2**o
        grid = rng.standard_normal((gh + 3, gw + 3)).astype(np.float32)
        up = Image.fromarray(grid, "F").resize((w, h), Image.BICUBIC, box=(1, 1, gw + 1, gh + 1))
        out += amp * np.asarray(up)
        total += amp
        amp *= persistence
    return out / np.float32(total * 0.9)


def _density_points(rng, density: np.ndarray, n: int, w: int, h: int) -> np.ndarray:
    """n points (x, y) distributed with probability proportional to ``density`` (a coarse map)."""
    dh, dw = density.shape
    p = density.ravel().astype(np.float64)
    p = p / p.sum()
    cells = rng.choice(p.size, size=n, p=p)
    x = (cells % dw + rng.random(n)) * (w / dw)
    y = (cells // dw + rng.random(n)) * (h / dh)
    return np.stack([x, y], axis=1)


def _blade(draw, rng, x, y, angle, length, width, colour, tip_colour=None, curl=0.6):
    """A tapered, gently curved blade: 3 line segments of decreasing width."""
    bend = rng.normal(0, curl) / max(length, 1.0)
    turns = rng.normal(0, 0.06, 3)
    pts = [(x, y)]
    a = angle
    seg = length / 3
    for i in range(3):
        a += bend * seg + turns[i]
        x, y = x + seg * math.cos(a), y + seg * math.sin(a)
        pts.append((x, y))
    for i in range(3):
        c = colour if tip_colour is None or i < 2 else tip_colour
        draw.line([pts[i], pts[i + 1]], fill=c, width=max(1, int(width * (1.0 - 0.3 * i) + 0.5)))
    return pts


def _jitter(rng, rgb, spread):
    """An opaque RGBA fill: ``rgb`` with a random brightness (sd ``spread`` %) and a little hue noise."""
    f = 1.0 + spread / 100.0 * rng.normal()
    r, g, b = rng.normal(0.0, spread / 4.0, 3)
    return (
        min(255, max(0, int(rgb[0] * f + r))),
        min(255, max(0, int(rgb[1] * f + g))),
        min(255, max(0, int(rgb[2] * f + b))),
        255,
    )


def _layer(w, h):
    from PIL import Image

    return Image.new("RGBA", (w, h), (0, 0, 0, 0))


def _composite(canvas, layer, shadow_px: tuple[float, float], shadow: float, shade: float):
    """Cast the layer's blurred, offset silhouette as a shadow on ``canvas``
    (RGB PIL image), then paint the layer on it, its colours times ``shade``."""
    from PIL import Image, ImageChops, ImageFilter

    alpha = layer.getchannel("A")
    dx, dy = shadow_px
    sil = alpha.rotate(0, translate=(int(round(dx)), int(round(dy)))).filter(
        ImageFilter.GaussianBlur(max(1.0, abs(dx) * 0.8))
    )
    keep = sil.point(lambda v: int(255 - v * shadow + 0.5))
    canvas = ImageChops.multiply(canvas, Image.merge("RGB", (keep, keep, keep)))
    canvas.paste(layer.convert("RGB").point(lambda v: min(255, int(v * shade + 0.5))), mask=alpha)
    return canvas


def render_scene(scene: Scene, size: tuple[int, int] = SIZE) -> "Image.Image":
    """Draw one synthetic top-down pasture photo (RGB PIL image)."""
    from PIL import Image, ImageDraw, ImageFilter, ImageFont

    w, h = size
    k = w / SIZE[0]  # drawing scale
    rng = np.random.default_rng([scene.seed, 2])

    # soil: warm brown with clods, pebbles and moisture variation
    soil_rgb = np.array([rng.uniform(95, 130), rng.uniform(72, 95), rng.uniform(50, 68)], np.float32)
    tex = fbm(rng, w, h, base=3, octaves=7, persistence=0.6)
    canvas = soil_rgb * (1.0 + 0.28 * tex)[..., None]
    canvas += (fbm(rng, w, h, base=2, octaves=3)[..., None] * np.float32(12.0)) * np.array([1.0, 0.6, 0.2], np.float32)
    soil = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8), "RGB")
    d = ImageDraw.Draw(soil)
    for _ in range(int(450 * k * k) + 20):
        x, y, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(1.5, 6.0) * k
        tone = rng.uniform(0.7, 1.25)
        c = tuple(int(np.clip(v * tone, 0, 255)) for v in soil_rgb)
        d.ellipse([x - r, y - r * rng.uniform(0.6, 1.0), x + r, y + r], fill=c)

    # where each component grows (patchy, different per component)
    cw, ch = max(8, w // 10), max(4, h // 10)  # density maps: 10 px cells
    green_map = np.clip(fbm(rng, cw, ch, base=2, octaves=4) * 1.2 + 1.6 * scene.green - 0.35, 0.02, None) ** 1.5
    dead_map = np.clip(fbm(rng, cw, ch, base=2, octaves=4) + 1.4 * scene.dead - 0.2, 0.02, None) ** 1.5
    clover_map = np.clip(fbm(rng, cw, ch, base=3, octaves=3) * 1.5 - 0.35, 0.0, None) ** 2 + 1e-4

    sun = rng.uniform(0, 2 * math.pi)
    shadow_px = (9.0 * k * math.cos(sun), 9.0 * k * math.sin(sun))
    blade_len = (110 + 18 * scene.height_cm) * k
    greens = [(rng.uniform(62, 100), rng.uniform(100, 142), rng.uniform(36, 66)) for _ in range(4)]
    straws = [(rng.uniform(150, 200), rng.uniform(130, 175), rng.uniform(80, 120)), (125, 112, 92), (165, 150, 118)]

    def dead_layer(canvas, n, shade):
        layer = _layer(w, h)
        dr = ImageDraw.Draw(layer)
        for x, y in _density_points(rng, dead_map, n, w, h):
            base = straws[int(rng.integers(len(straws)))]
            col = _jitter(rng, base, 12)
            _blade(
                dr,
                rng,
                x,
                y,
                rng.uniform(0, 2 * math.pi),
                blade_len * rng.uniform(0.5, 1.6),
                rng.uniform(4, 10) * k,
                col,
                curl=1.5,
            )
        return _composite(canvas, layer, shadow_px, 0.35, shade)

    def grass_layer(canvas, n_tussocks, blades_per, shade):
        layer = _layer(w, h)
        dr = ImageDraw.Draw(layer)
        for cx, cy in _density_points(rng, green_map, n_tussocks, w, h):
            base = greens[int(rng.integers(len(greens)))]
            spread = rng.uniform(4, 22) * k
            for _ in range(int(rng.integers(blades_per // 2, blades_per * 3 // 2 + 1))):
                col = _jitter(rng, base, 13)
                tip = _jitter(rng, (base[0] + 45, base[1] + 25, base[2] + 10), 10) if rng.random() < 0.2 else None
                x, y = cx + rng.normal(0, spread), cy + rng.normal(0, spread)
                pts = _blade(
                    dr,
                    rng,
                    x,
                    y,
                    rng.uniform(0, 2 * math.pi),
                    blade_len * rng.uniform(0.4, 1.3),
                    rng.uniform(5, 13) * k,
                    col,
                    tip,
                )
                if rng.random() < 0.25:  # light catching the midrib
                    hi = _jitter(rng, (base[0] + 60, base[1] + 55, base[2] + 30), 8)
                    dr.line(pts[:3], fill=hi, width=max(1, int(2 * k)))
        return _composite(canvas, layer, shadow_px, 0.45, shade)

    def clover_layer(canvas, n, shade):
        layer = _layer(w, h)
        dr = ImageDraw.Draw(layer)
        base = (rng.uniform(45, 70), rng.uniform(105, 135), rng.uniform(50, 75))
        for x, y in _density_points(rng, clover_map, n, w, h):
            r = rng.uniform(20, 42) * k
            rot = rng.uniform(0, 2 * math.pi)
            col = _jitter(rng, base, 10)
            mark = _jitter(rng, (base[0] + 70, base[1] + 70, base[2] + 55), 8)
            edge = _jitter(rng, (base[0] * 0.6, base[1] * 0.6, base[2] * 0.6), 5)
            dr.line(
                [(x, y), (x - 1.6 * r * math.cos(rot), y - 1.6 * r * math.sin(rot))],
                fill=_jitter(rng, (110, 130, 70), 10),
                width=max(1, int(2 * k)),
            )
            for j in range(3):
                a = rot + j * 2.0 * math.pi / 3 + rng.normal(0, 0.12)
                lx, ly = x + 0.62 * r * math.cos(a), y + 0.62 * r * math.sin(a)
                dr.polygon(_ellipse(lx, ly, 0.62 * r, 0.5 * r, a), fill=col, outline=edge)
                if rng.random() < 0.7:  # the pale chevron of white clover
                    mx, my = x + 0.5 * r * math.cos(a), y + 0.5 * r * math.sin(a)
                    dr.line(_chevron(mx, my, 0.3 * r, a), fill=mark, width=max(1, int(2.5 * k)))
        return _composite(canvas, layer, shadow_px, 0.4, shade)

    area = w * h / (SIZE[0] * SIZE[1])
    canvas = dead_layer(soil, int(2400 * scene.dead * area) + 20, 0.8)
    canvas = grass_layer(canvas, int(330 * scene.green * area) + 6, 18, 0.62)
    if scene.clover > 0:
        canvas = clover_layer(canvas, int(1000 * scene.clover * area), 0.95)
    canvas = grass_layer(canvas, int(220 * scene.green * area) + 4, 14, 1.0)
    canvas = dead_layer(canvas, int(450 * scene.dead * area) + 5, 1.05)

    # light: uneven sun and a gentle gradient, a per-photo tint, noise
    light = 1.0 + 0.18 * fbm(rng, w, h, base=2, octaves=3)
    gy, gx = np.mgrid[0:h, 0:w].astype(np.float32)
    light += np.float32(rng.uniform(0.05, 0.15)) * ((gx / w - 0.5) * math.cos(sun) + (gy / h - 0.5) * math.sin(sun))
    tint = np.array([rng.uniform(0.95, 1.08), 1.0, rng.uniform(0.88, 1.04)], np.float32) * np.float32(
        rng.uniform(0.95, 1.2)
    )
    canvas = np.asarray(canvas, dtype=np.float32) * (light[..., None] * tint)
    canvas += rng.standard_normal(canvas.shape, dtype=np.float32) * np.float32(2.5)
    img = Image.fromarray(np.clip(canvas + 0.5, 0, 255).astype(np.uint8), "RGB").filter(
        ImageFilter.GaussianBlur(0.6 * k)
    )

    if scene.timestamp:  # orange camera date stamp, bottom right
        font = ImageFont.load_default(size=max(8, int(54 * k)))
        y_, m_, d_ = scene.date
        text = f"{y_}/{m_:02d}/{d_:02d}  {int(rng.integers(8, 17)):02d}:{int(rng.integers(0, 60)):02d}"
        dr = ImageDraw.Draw(img)
        box = dr.textbbox((0, 0), text, font=font)
        pos = (w - (box[2] - box[0]) - int(60 * k), h - (box[3] - box[1]) - int(50 * k))
        dr.text(pos, text, font=font, fill=(255, 138, 32), stroke_width=max(1, int(2 * k)), stroke_fill=(150, 60, 10))
    return img


def _ellipse(cx, cy, a, b, angle, n=12):
    ca, sa = math.cos(angle), math.sin(angle)
    pts = []
    for i in range(n):
        t = 2 * math.pi * i / n
        x, y = a * math.cos(t), b * math.sin(t)
        pts.append((cx + x * ca - y * sa, cy + x * sa + y * ca))
    return pts


def _chevron(cx, cy, s, angle):
    ca, sa = math.cos(angle), math.sin(angle)
    pts = [(-0.2 * s, -s), (0.5 * s, 0.0), (-0.2 * s, s)]
    return [(cx + x * ca - y * sa, cy + x * sa + y * ca) for x, y in pts]


# --------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------


def make_sample(
    out_dir,
    n_images: int = 8,
    seed: int = DEFAULT_SEED,
    *,
    size: tuple[int, int] = SIZE,
    jpeg_quality: int = JPEG_QUALITY,
) -> pd.DataFrame:
    """Write ``out_dir/train.csv`` and ``out_dir/train/<image_id>.jpg``; return the table.

    Deterministic in (n_images, seed, size, jpeg_quality).  Existing files
    of the same names are overwritten; other files are left alone.
    """
    out = Path(out_dir)
    (out / "train").mkdir(parents=True, exist_ok=True)
    scenes = make_scenes(n_images, seed)
    table = sample_table(scenes)
    for scene in scenes:
        buf = io.BytesIO()
        render_scene(scene, size).save(buf, format="JPEG", quality=jpeg_quality, optimize=True)
        (out / "train" / f"{scene.image_id}.jpg").write_bytes(buf.getvalue())
    table.to_csv(out / "train.csv", index=False)
    return table
