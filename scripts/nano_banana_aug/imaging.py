"""Image bytes: format detection from magic numbers, safe decoding, encoding.

Formats are always detected from the bytes, never from a file extension or a
MIME label (services have been seen to label JPEG data as PNG).
"""

from __future__ import annotations

import io

from .errors import UserError

# (magic test, format name, MIME type)
_MAGIC = (
    (lambda b: b.startswith(b"\x89PNG\r\n\x1a\n"), "PNG", "image/png"),
    (lambda b: b.startswith(b"\xff\xd8\xff"), "JPEG", "image/jpeg"),
    (lambda b: b[:4] == b"RIFF" and b[8:12] == b"WEBP", "WEBP", "image/webp"),
    (lambda b: b[:6] in (b"GIF87a", b"GIF89a"), "GIF", "image/gif"),
    (lambda b: b[4:8] == b"ftyp" and b[8:12] in (b"heic", b"heix", b"hevc", b"hevx"), "HEIC", "image/heic"),
    (lambda b: b[4:8] == b"ftyp" and b[8:12] in (b"mif1", b"msf1"), "HEIF", "image/heif"),
)


def sniff_format(data: bytes) -> tuple[str, str] | None:
    """Return (format, mime_type) detected from the leading bytes, or None."""
    head = bytes(data[:16])
    for test, fmt, mime in _MAGIC:
        if test(head):
            return fmt, mime
    return None


def sniff_mime(data: bytes) -> str | None:
    """MIME type detected from the bytes (e.g. ``image/jpeg``), or None."""
    found = sniff_format(data)
    return found[1] if found else None


class DecodeError(UserError):
    """Image bytes that cannot (or must not) be decoded."""


def decode(data: bytes, *, max_pixels: int, what: str = "image"):
    """Decode image bytes into an RGB PIL image.

    Refuses unknown formats, truncated data and images over ``max_pixels``
    (checked from the header, before any pixel is decoded).
    """
    from PIL import Image

    found = sniff_format(data)
    if found is None:
        raise DecodeError(f"{what}: not a recognised image (first bytes {bytes(data[:8])!r})")
    fmt = found[0]
    try:
        with Image.open(io.BytesIO(data), formats=[fmt]) as im:
            w, h = im.size
            if w <= 0 or h <= 0 or w * h > max_pixels:
                raise DecodeError(
                    f"{what}: {w}x{h} = {w * h} pixels exceeds the limit of {max_pixels} (postprocess.max_pixels)"
                )
            im.load()
            return to_rgb(im)
    except DecodeError:
        raise
    except Exception as exc:  # PIL raises many types for corrupt data
        raise DecodeError(f"{what}: cannot decode {fmt} data: {exc}") from exc


EXT_FORMAT = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP"}


def encode(image, ext: str, pp: dict) -> bytes:
    """Encode a PIL image as a real file of type ``ext`` with the configured quality."""
    fmt = EXT_FORMAT[ext.lower()]
    buf = io.BytesIO()
    if fmt == "PNG":
        image.save(buf, format="PNG", compress_level=int(pp.get("png_compress_level", 6)))
    elif fmt == "JPEG":
        image.save(buf, format="JPEG", quality=int(pp.get("jpeg_quality", 95)))
    else:
        image.save(buf, format="WEBP", quality=int(pp.get("webp_quality", 90)))
    return buf.getvalue()


def to_rgb(im):
    """8-bit RGB of any Pillow image: 16-/32-bit grey is scaled (Pillow's own convert clips
    it to white), CMYK, palette and grey are converted, an alpha channel is dropped."""
    from PIL import Image

    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        import numpy as np

        arr = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        if im.mode == "F":
            top = max(1.0, float(arr.max(initial=1.0)))
        grey = np.clip(arr * (255.0 / top) + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    return im.convert("RGB") if im.mode != "RGB" else im.copy()
