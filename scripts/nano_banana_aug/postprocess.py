"""Post-processing of a model output: the geometry that maps the model's
answer onto the source, and the exact size/area bookkeeping of the original
tool.

Modes (``postprocess.mode``):

* ``resize`` — the whole answer is resized to the source's size (or
  ``target_size``): the model keeps the whole scene in whatever shape it
  answers (a 2:1 source comes back 16:9), so resizing back restores the
  source's geometry; ``area_scale`` 1.0.  Label-safe.
* ``match_aspect`` (``api.match_aspect: true``, whatever ``mode`` says) — the
  source was padded to a supported aspect ratio before the call
  (:func:`match_aspect_request`); the answer's part that shows the source is
  cropped out (by the same fractions) and resized to the source: pixel-aligned
  with the source whatever the model does to an unusual ratio; ``area_scale``
  1.0.  Label-safe.
* ``pad`` / ``crop`` (the original tool) — enforce
  ``enforce_aspect_ratio`` by a centred pad or crop, then ``target_size``.
  The scene keeps the model's squeeze, and pad adds strips that are not in the
  photo: ``area_scale`` says by how much the area grew (see the README for
  what that does to g vs g/m² labels).

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
    mode: str  # "none", "pad", "crop", "resize" or "match_aspect" (crop of the source's region)
    out_w: int
    out_h: int
    ratio: str = ""  # match_aspect: the aspect ratio requested from the model

    @property
    def pad_area_px(self) -> int:
        return self.aspect_w * self.aspect_h - self.orig_w * self.orig_h if self.mode == "pad" else 0

    @property
    def area_scale(self) -> float:
        if self.mode in ("resize", "match_aspect"):
            return 1.0  # the output shows exactly the source's field of view
        return (self.aspect_w * self.aspect_h) / (self.orig_w * self.orig_h)

    def describe(self) -> str:
        """One word-ish summary for the manifest's ``geometry`` column."""
        size = f"{self.orig_w}x{self.orig_h}"
        if self.mode == "match_aspect":
            return (
                f"match_aspect {self.ratio}: crop {self.aspect_w}x{self.aspect_h}+{self.left}+{self.top} of {size}"
                f" -> {self.out_w}x{self.out_h}"
            )
        if self.mode in ("pad", "crop"):
            return f"{self.mode} {size} -> {self.aspect_w}x{self.aspect_h} -> {self.out_w}x{self.out_h}"
        return f"{self.mode} {size} -> {self.out_w}x{self.out_h}"

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


def plan(w: int, h: int, pp: dict, source_size=None, region=None) -> Geometry:
    """Compute the geometry for a ``w`` x ``h`` model output under config ``pp``.

    ``source_size``: (W, H) of the source (``resize`` and ``match_aspect`` map
    onto it); ``region``: {"ratio", "box": [l, t, r, b] fractions of the padded
    request that show the source} for ``match_aspect``."""
    if w <= 0 or h <= 0:
        raise ValueError(f"image size must be positive, got {w}x{h}")
    target = pp.get("target_size")
    if region:
        l, t, r, b = region["box"]
        x0, y0 = round(l * w), round(t * h)
        x1, y1 = max(x0 + 1, round(r * w)), max(y0 + 1, round(b * h))
        sw, sh = source_size or (x1 - x0, y1 - y0)
        out_w, out_h = (int(target[0]), int(target[1])) if target else (int(sw), int(sh))
        return Geometry(
            w, h, x1 - x0, y1 - y0, x0, y0, "match_aspect", out_w, out_h, ratio=str(region.get("ratio", ""))
        )
    mode = pp.get("mode", "pad")
    if mode == "resize":
        sw, sh = source_size or (w, h)
        out_w, out_h = (int(target[0]), int(target[1])) if target else (int(sw), int(sh))
        return Geometry(w, h, w, h, 0, 0, "resize", out_w, out_h)
    aspect = pp.get("enforce_aspect_ratio")
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
    out_w, out_h = (int(target[0]), int(target[1])) if target else (new_w, new_h)
    return Geometry(w, h, new_w, new_h, left, top, done, out_w, out_h)


RESAMPLE = {"nearest": 0, "bilinear": 2, "bicubic": 3, "lanczos": 1}  # PIL.Image.Resampling values


def apply(image, geo: Geometry, pp: dict):
    """Apply ``geo`` to a PIL RGB image; returns a new PIL image of size (out_w, out_h)."""
    from PIL import Image

    if image.size != (geo.orig_w, geo.orig_h):
        raise ValueError(f"image is {image.size}, geometry planned for {(geo.orig_w, geo.orig_h)}")
    if geo.mode in ("crop", "match_aspect"):
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


# Gemini image models' aspect ratios (REFERENCE §3): "W:H" -> W/H
SUPPORTED_RATIOS = {
    r: int(r.split(":")[0]) / int(r.split(":")[1])
    for r in ("1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9")
}


def match_aspect_request(w: int, h: int) -> dict:
    """How to pad a ``w`` x ``h`` source before the call: the nearest supported ratio at or
    above its own (2:1 -> 21:9; wider than 21:9 -> 21:9 with rows added), the padded size,
    the offsets, and the source's box as fractions of the padded image."""
    s = w / h
    wider = [(v, r) for r, v in SUPPORTED_RATIOS.items() if v >= s - 1e-9]
    v, ratio = min(wider) if wider else max((v, r) for r, v in SUPPORTED_RATIOS.items())
    if v >= s:  # columns added left and right
        pw, ph = max(w, round(h * v)), h
    else:  # rows added top and bottom
        pw, ph = w, max(h, round(w / v))
    left, top = (pw - w) // 2, (ph - h) // 2
    return {
        "ratio": ratio,
        "padded": [pw, ph],
        "offset": [left, top],
        "box": [left / pw, top / ph, (left + w) / pw, (top + h) / ph],
    }


def pad_source(image, req: dict):
    """The source padded as ``req`` says (reflected content: a natural continuation the
    model can re-light; it is cropped away from the answer)."""
    import numpy as np
    from PIL import Image

    pw, ph = req["padded"]
    left, top = req["offset"]
    if (pw, ph) == image.size:
        return image
    arr = np.asarray(image.convert("RGB"))
    widths = ((top, ph - image.height - top), (left, pw - image.width - left), (0, 0))
    mode = "reflect" if min(arr.shape[:2]) >= 2 and max(widths[0] + widths[1]) < min(arr.shape[:2]) else "edge"
    return Image.fromarray(np.pad(arr, widths, mode=mode))
