"""Post-processing of a model output: enforce an aspect ratio (centred pad or
crop), optionally resize, and the exact size/area bookkeeping of the original
tool.

Arithmetic (``postprocess.enforce_aspect_ratio`` = a = W/H):

* too wide (w/h > a): pad -> new_h = round(w / a) rows added top/bottom;
  crop -> new_w = round(a * h) columns kept, centred.
* too tall (w/h < a): pad -> new_w = round(a * h) columns added left/right;
  crop -> new_h = round(w / a) rows kept, centred.
* the padding (or cut) is split evenly; the odd pixel goes to the bottom/right.
* ``pad_area_px`` = pixels added (0 for crop);
  ``area_scale`` = (aspect_w * aspect_h) / (orig_w * orig_h): >= 1 for pad,
  <= 1 for crop, 1.0 when nothing was enforced.

``round`` is Python's (round half to even), as in the original tool.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Geometry:
    """What post-processing does to one image, computed from sizes alone."""

    orig_w: int
    orig_h: int
    aspect_w: int
    aspect_h: int
    left: int  # pad: columns added on the left; crop: first kept column
    top: int  # pad: rows added on top; crop: first kept row
    mode: str  # "none", "pad" or "crop"
    out_w: int
    out_h: int

    @property
    def pad_area_px(self) -> int:
        return self.aspect_w * self.aspect_h - self.orig_w * self.orig_h if self.mode == "pad" else 0

    @property
    def area_scale(self) -> float:
        return (self.aspect_w * self.aspect_h) / (self.orig_w * self.orig_h)

    def record(self) -> dict:
        """The manifest's size columns."""
        return {
            "orig_w": self.orig_w,
            "orig_h": self.orig_h,
            "aspect_w": self.aspect_w,
            "aspect_h": self.aspect_h,
            "out_w": self.out_w,
            "out_h": self.out_h,
            "pad_area_px": self.pad_area_px,
            "area_scale": self.area_scale,
        }


def plan(w: int, h: int, pp: dict) -> Geometry:
    """Compute the geometry for a ``w`` x ``h`` model output under config ``pp``."""
    if w <= 0 or h <= 0:
        raise ValueError(f"image size must be positive, got {w}x{h}")
    aspect = pp.get("enforce_aspect_ratio")
    mode = pp.get("mode", "pad")
    new_w, new_h, left, top, done = w, h, 0, 0, "none"
    if aspect:
        if w / h > aspect:  # too wide
            if mode == "pad":
                new_h = round(w / aspect)
            else:
                new_w = max(1, round(aspect * h))
        elif w / h < aspect:  # too tall
            if mode == "pad":
                new_w = round(aspect * h)
            else:
                new_h = max(1, round(w / aspect))
        if (new_w, new_h) != (w, h):
            done = mode
            left = abs(new_w - w) // 2
            top = abs(new_h - h) // 2
    target = pp.get("target_size")
    out_w, out_h = (int(target[0]), int(target[1])) if target else (new_w, new_h)
    return Geometry(w, h, new_w, new_h, left, top, done, out_w, out_h)


RESAMPLE = {"nearest": 0, "bilinear": 2, "bicubic": 3, "lanczos": 1}  # PIL.Image.Resampling values


def apply(image, geo: Geometry, pp: dict):
    """Apply ``geo`` to a PIL RGB image; returns a new PIL image of size (out_w, out_h)."""
    from PIL import Image

    if image.size != (geo.orig_w, geo.orig_h):
        raise ValueError(f"image is {image.size}, geometry planned for {(geo.orig_w, geo.orig_h)}")
    if geo.mode == "crop":
        image = image.crop((geo.left, geo.top, geo.left + geo.aspect_w, geo.top + geo.aspect_h))
    elif geo.mode == "pad":
        image = _pad(image, geo, pp.get("pad_mode", "reflect"), pp.get("pad_color", [0, 0, 0]))
    if (geo.out_w, geo.out_h) != image.size:
        image = image.resize((geo.out_w, geo.out_h), Image.Resampling(RESAMPLE[pp.get("resample", "bicubic")]))
    return image


def _pad(image, geo: Geometry, pad_mode: str, pad_color):
    import numpy as np
    from PIL import Image

    right = geo.aspect_w - geo.orig_w - geo.left
    bottom = geo.aspect_h - geo.orig_h - geo.top
    if pad_mode == "constant":
        canvas = Image.new("RGB", (geo.aspect_w, geo.aspect_h), tuple(int(c) for c in pad_color))
        canvas.paste(image, (geo.left, geo.top))
        return canvas
    arr = np.asarray(image.convert("RGB"))
    widths = ((geo.top, bottom), (geo.left, right), (0, 0))
    # numpy's "reflect" needs at least 2 pixels along the padded axis
    mode = "edge" if pad_mode == "edge" or min(arr.shape[:2]) < 2 else "reflect"
    return Image.fromarray(np.pad(arr, widths, mode=mode))
