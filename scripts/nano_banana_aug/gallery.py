"""Visual review: a self-contained static HTML gallery and a PNG contact sheet.

    {output_dir}/gallery/index.html          one row per source image: the source and
                                             every variant, status, QC scores, errors;
                                             filters by augmentation and status
    {output_dir}/gallery/thumbs/*.jpg        JPEG thumbnails (the page never loads a
                                             full-size image; tiles link to them)
    {output_dir}/gallery/contact_sheet.png   grid of the first CONTACT_MAX_ROWS sources

The page has inline CSS and JS only (no CDN, no external fetch) and opens fast
with thousands of outputs: thumbnails are small and lazily loaded.  Thumbnails
are incremental: one is (re)made only when it is missing or older than its
image (mtime), so a rerun after a few new outputs costs a few decodes.

Opening the page with ``#selftest&status=failed`` (any ``aug=``/``status=``
values, repeatable) makes it load every image eagerly, check that none is
broken, apply that filter through the checkboxes and write a JSON report into
``<pre id="selftest-result">`` (read back by the headless-browser test via
``chromium --headless --dump-dom``).

Entry point of rule ``report_gallery``: :func:`main` (``scripts/gallery.py``).
"""

from __future__ import annotations

import csv
import hashlib
import html
import io
import os
import re
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from PIL import Image, ImageDraw, ImageOps

from .errors import UserError
from .fileio import atomic_write_bytes, atomic_write_text

CONTACT_MAX_ROWS = 50
CONTACT_CELL_W = 160
THUMB_QUALITY = 82
ERROR_SHOW_CHARS = 500
KNOWN_STATUSES = ("success", "rejected", "failed", "missing")  # filter order; others follow


# ---------------------------------------------------------------- data model
@dataclass
class Tile:
    image_id: str
    aug_name: str  # "" for the source tile
    variant_idx: int
    status: str
    error: str = ""
    qc: dict = field(default_factory=dict)
    path: Path | None = None  # the full-size image (may not exist)
    thumb: str | None = None  # file name in thumbs/ when an image could be shown
    thumb_size: tuple[int, int] = (0, 0)
    note: str = ""  # why there is no image (file not found, unreadable)
    answer_id: str = ""  # the answer the output was made from (a review decision belongs to it)
    review: str = ""  # keep | reject | "" (a person's decision, manifest column review)

    @property
    def is_source(self) -> bool:
        return self.aug_name == ""


@dataclass
class Row:
    image_id: str
    source: Tile
    variants: list[Tile]


@dataclass
class GalleryStats:
    index: Path
    rows: int = 0
    tiles: int = 0  # variant tiles
    thumbs_made: int = 0
    thumbs_reused: int = 0
    seconds_thumbs: float = 0.0
    seconds_contact: float = 0.0
    seconds_total: float = 0.0


def _int(value, default=0) -> int:
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return default


def _resolve(path_text: str, data_root: Path, manifest_dir: Path | None = None) -> Path | None:
    if not path_text:
        return None
    from .manifest import resolve_output

    return resolve_output(path_text, data_root, manifest_dir)


def read_rows(manifest_csv, data_root) -> list[Row]:
    """Manifest -> one Row per source image (sorted by image_id), variants sorted
    by (aug_name, variant_idx); if a target appears in several rows the last counts."""
    manifest_csv, data_root = Path(manifest_csv), Path(data_root)
    try:
        with open(manifest_csv, newline="", encoding="utf-8") as fh:
            records = list(csv.DictReader(fh))
    except FileNotFoundError:
        raise UserError(f"{manifest_csv}: manifest not found; run the pipeline first") from None
    by_image: dict[str, dict[tuple[str, int], Tile]] = {}
    sources: dict[str, str] = {}
    for rec in records:
        image_id = (rec.get("image_id") or "").strip()
        aug = (rec.get("aug_name") or "").strip()
        if not image_id or not aug:
            continue
        k = _int(rec.get("variant_idx"))
        qc = {key: val for key, val in rec.items() if key and key.startswith("qc_") and val not in (None, "")}
        tile = Tile(
            image_id=image_id,
            aug_name=aug,
            variant_idx=k,
            status=(rec.get("status") or "").strip() or "unknown",
            error=(rec.get("error") or "").strip(),
            qc=qc,
            path=_resolve((rec.get("image_path") or "").strip(), data_root, manifest_csv.parent),
            answer_id=(rec.get("answer_id") or "").strip(),
            review=(rec.get("review") or "").strip(),
        )
        by_image.setdefault(image_id, {})[(aug, k)] = tile
        if rec.get("src_image_path"):
            sources[image_id] = rec["src_image_path"].strip()
    rows = []
    for image_id in sorted(by_image):
        src = Tile(
            image_id=image_id,
            aug_name="",
            variant_idx=0,
            status="source",
            path=_resolve(sources.get(image_id, ""), data_root),
        )
        variants = [by_image[image_id][key] for key in sorted(by_image[image_id])]
        rows.append(Row(image_id, src, variants))
    return rows


# ---------------------------------------------------------------- thumbnails
def _thumb_name(path: Path, width: int) -> str:
    digest = hashlib.sha1(str(path.resolve()).encode("utf-8")).hexdigest()[:10]
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", path.stem)[:80]
    return f"{safe}-{digest}-w{width}.jpg"


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode == "RGB":
        return im
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        bg = Image.new("RGB", im.size, (255, 255, 255))
        bg.paste(im, mask=im.getchannel("A"))
        return bg
    if im.mode.startswith("I;16") or im.mode in ("I", "F"):
        return ImageOps.autocontrast(im.convert("I").point(lambda v: v / 256).convert("L")).convert("RGB")
    return im.convert("RGB")


def make_thumbnail(src: Path, dest: Path, width: int) -> tuple[int, int]:
    """Write a JPEG thumbnail fitting width x width (a 2:1 image gets width x width/2).

    JPEG sources are decoded at a reduced scale (draft mode); Image.thumbnail
    then reduces by an integer factor (Image.reduce) before the final resample.
    PNG/WebP have no reduced decode: a 2000x1000 PNG costs ~0.1 s, mostly zlib.
    Written atomically; returns the thumbnail's size.
    """
    box = (width, width)
    with Image.open(src) as im:
        scale = min(box[0] / im.width, box[1] / im.height, 1.0)
        if im.format == "JPEG":  # decode at 1/2, 1/4 or 1/8 scale, still >= 1.25 x the thumbnail
            im.draft("RGB", (max(1, round(im.width * scale * 1.25)), max(1, round(im.height * scale * 1.25))))
        im.thumbnail(box, Image.Resampling.BICUBIC, reducing_gap=2.0)
        im = _to_rgb(im)
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=THUMB_QUALITY)
        atomic_write_bytes(dest, buf.getvalue())
        return im.size


def _plan_thumb(tile: Tile, thumbs_dir: Path, width: int) -> Path | None:
    """Fill tile.thumb / thumb_size from an up-to-date thumbnail, or tile.note when
    there is no image; returns the thumbnail path to (re)make, else None."""
    if tile.path is None:
        tile.note = "no image path in the manifest"
        return None
    try:
        src_mtime = tile.path.stat().st_mtime_ns
    except OSError:
        tile.note = f"file not found: {tile.path}"
        return None
    dest = thumbs_dir / _thumb_name(tile.path, width)
    try:
        if dest.stat().st_mtime_ns >= src_mtime:
            with Image.open(dest) as im:  # reads the header only
                tile.thumb, tile.thumb_size = dest.name, im.size
            return None
    except OSError:
        pass  # missing, older than the image or unreadable: (re)make it
    return dest


def _make_one(args) -> tuple[tuple[int, int] | None, str]:
    src, dest, width = args
    try:
        return make_thumbnail(src, dest, width), ""
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        return None, f"cannot read image: {exc}"


def make_thumbnails(tiles: list[Tile], thumbs_dir: Path, width: int, workers: int | None = None) -> dict[str, int]:
    """Thumbnails for all tiles: only missing or outdated ones are made, in worker
    processes when there are many (PNG decoding holds the GIL).  Thumbnails no
    tile refers to are removed.  Returns counts of made / reused / no image."""
    thumbs_dir.mkdir(parents=True, exist_ok=True)
    todo = [(t, dest) for t in tiles if (dest := _plan_thumb(t, thumbs_dir, width)) is not None]
    counts = {"made": 0, "reused": sum(1 for t in tiles if t.thumb), "none": 0}
    unique = {dest: t.path for t, dest in todo}  # an image named by several rows is decoded once
    jobs = [(src, dest, width) for dest, src in unique.items()]
    workers = workers or min(8, os.cpu_count() or 1)
    if workers > 1 and len(jobs) >= 8:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(_make_one, jobs, chunksize=max(1, len(jobs) // (4 * workers))))
    else:
        results = [_make_one(job) for job in jobs]
    done = {job[1]: result for job, result in zip(jobs, results, strict=True)}
    counts["made"] = sum(1 for size, _ in results if size is not None)
    for tile, dest in todo:
        size, error = done[dest]
        if size is None:
            tile.note = error
        else:
            tile.thumb, tile.thumb_size = dest.name, size
    counts["none"] = sum(1 for t in tiles if not t.thumb)
    keep = {t.thumb for t in tiles if t.thumb}
    for p in thumbs_dir.glob("*.jpg"):
        if p.name not in keep:
            try:
                p.unlink()
            except OSError:
                pass
    return counts


# ---------------------------------------------------------------- HTML
def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _fmt(value: str) -> str:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return str(value)
    if re.fullmatch(r"[+-]?\d+", str(value).strip()):
        return str(value).strip()
    return f"{f:.4g}"


def _status_class(status: str) -> str:
    return status if status in KNOWN_STATUSES or status == "source" else "other"


def _href(path: Path | None, out_dir: Path) -> str | None:
    if path is None:
        return None
    try:
        rel = os.path.relpath(path.resolve(), out_dir.resolve())
    except ValueError:
        return path.resolve().as_uri()
    return quote(Path(rel).as_posix())


STATUS_RISK = {"rejected": 3.0, "failed": 2.0, "missing": 2.0, "orphaned": 1.5}


def risk(tile: Tile) -> float:
    """How much a person should look at an output: rejected first, then failed, then the
    closest calls of the QC gate (low structure similarity, large shift or changed area)."""
    base = STATUS_RISK.get(tile.status, 0.0)

    def num(key, default):
        try:
            return float(tile.qc.get(key, default))
        except (TypeError, ValueError):
            return default

    closeness = max(
        1.0 - num("qc_ssim", 1.0),
        10 * num("qc_shift_frac", 0.0),
        5 * num("qc_changed_frac", 0.0),
        5 * abs(num("qc_veg_cover_delta", 0.0)),
    )
    return round(base + min(closeness, 0.99), 4)


def _tile_html(tile: Tile, out_dir: Path, source_thumb: str | None = None) -> str:
    if tile.is_source:
        attrs = 'class="tile src"'
        title = "source"
        sub = ""
    else:
        stem = f"{tile.image_id}__{tile.aug_name}__v{tile.variant_idx}"
        attrs = (
            f'class="tile var st-{_e(_status_class(tile.status))}" tabindex="0" data-stem="{_e(stem)}" '
            f'data-answer="{_e(tile.answer_id)}" data-review="{_e(tile.review or "undecided")}" '
            f'data-aug="{_e(tile.aug_name)}" data-status="{_e(tile.status)}" data-risk="{risk(tile)}"'
        )
        title = tile.aug_name
        sub = f"v{tile.variant_idx}"
    parts = [f"<figure {attrs}>"]
    if tile.thumb:
        w, h = tile.thumb_size
        img = (
            f'<img src="thumbs/{quote(tile.thumb)}" width="{w}" height="{h}" loading="lazy" decoding="async" '
            f'alt="{_e(tile.image_id)} {_e(title)} {_e(sub)}">'
        )
        href = _href(tile.path, out_dir)
        parts.append(f'<a class="pic" href="{_e(href)}" target="_blank" rel="noopener">{img}</a>' if href else img)
        if source_thumb and not tile.is_source:
            # compare with the source: a slider wipes the source over the output; "flip" swaps them
            parts.append(
                f'<div class="cmp" data-out="thumbs/{quote(tile.thumb)}" data-src="thumbs/{quote(source_thumb)}">'
                '<button type="button" class="flip" title="show the source in place of the output">flip</button>'
                '<input type="range" class="wipe" min="0" max="100" value="0" '
                'title="wipe the source over the output" aria-label="source over output, percent"></div>'
            )
    else:
        text = "no image: generation failed" if tile.status == "failed" else (tile.note or "no image")
        parts.append(f'<div class="pic placeholder"><span>{_e(text)}</span></div>')
    parts.append("<figcaption>")
    parts.append(
        f'<div class="cap"><span class="name">{_e(title)}</span> <span class="vk">{_e(sub)}</span>'
        f' <span class="badge">{_e(tile.status)}</span></div>'
    )
    if tile.is_source:
        parts.append(f'<div class="path" title="{_e(tile.path or "")}">{_e(tile.path.name if tile.path else "")}</div>')
    if not tile.is_source:
        parts.append(
            '<div class="rv"><button type="button" class="rv-keep" data-d="keep" title="keep (y)">keep</button>'
            '<button type="button" class="rv-reject" data-d="reject" title="reject (n)">reject</button>'
            '<button type="button" class="rv-clear" data-d="" title="undecided (u)">?</button>'
            '<span class="rv-state"></span></div>'
        )
    if tile.error and tile.status != "success":  # the reason first: the QC's own reasons before anything else
        reasons = tile.qc.get("qc_reasons", "")
        text = f"{reasons} — {tile.error}" if reasons and reasons not in tile.error else tile.error
        parts.append(f'<div class="err">{_e(text[:ERROR_SHOW_CHARS])}</div>')
    if tile.qc:
        rows = []
        for key, val in tile.qc.items():
            bad = key == "qc_passed" and str(val).strip().lower() in ("false", "0", "no")
            rows.append(f"<tr{' class=bad' if bad else ''}><th>{_e(key[3:])}</th><td>{_e(_fmt(val))}</td></tr>")
        parts.append(
            f'<details class="scores"><summary>QC scores</summary><table class="qc">{"".join(rows)}</table></details>'
        )
    parts.append("</figcaption></figure>")
    return "".join(parts)


def _checkboxes(name: str, counts: dict[str, int], order: list[str]) -> str:
    items = []
    for value in order:
        cls = f' class="st-{_e(_status_class(value))}"' if name == "status" else ""
        items.append(
            f'<label{cls}><input type="checkbox" name="{name}" value="{_e(value)}" checked> '
            f'{_e(value)} <span class="n">({counts[value]})</span></label>'
        )
    return "".join(items)


CSS = """
:root{--tile-w:230px;--ok:#2e7d32;--rej:#e65100;--fail:#c62828;--miss:#757575;--other:#6a1b9a;--src:#1565c0}
*{box-sizing:border-box}[hidden]{display:none!important}
body{margin:0;font:13px/1.35 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;background:#f4f5f7;color:#222}
header{position:sticky;top:0;z-index:2;background:#fff;border-bottom:1px solid #ddd;padding:8px 16px;box-shadow:0 1px 4px rgba(0,0,0,.06)}
h1{font-size:17px;margin:0 0 4px}
.meta{color:#666;font-size:12px;margin-bottom:6px}
.filters{display:flex;flex-wrap:wrap;gap:8px 20px;align-items:flex-start}
fieldset{border:1px solid #ddd;border-radius:6px;padding:3px 8px 5px;margin:0}
legend{font-weight:600;padding:0 4px}
fieldset label{margin-right:10px;white-space:nowrap;cursor:pointer}
fieldset button{font-size:11px;padding:0 5px;margin-left:2px}
.n{color:#777}
#visible-count{font-weight:600;align-self:center}
main{padding:10px 16px}
section.row{background:#fff;border:1px solid #e0e0e0;border-radius:8px;margin:0 0 12px;padding:8px 10px}
section.row h2{font-size:14px;margin:0 0 6px;font-family:ui-monospace,Menlo,Consolas,monospace}
section.row h2 .counts{font:12px system-ui,sans-serif;color:#666;margin-left:8px}
.tiles{display:flex;flex-wrap:wrap;gap:8px}
figure.tile{margin:0;width:var(--tile-w);border:1px solid #ddd;border-top:4px solid var(--other);border-radius:5px;background:#fafafa;overflow:hidden;display:flex;flex-direction:column}
figure.tile img{display:block;width:100%;height:auto;background:#ddd}
.pic.placeholder{aspect-ratio:2/1;display:flex;align-items:center;justify-content:center;padding:8px;background:repeating-linear-gradient(45deg,#fbe9e9,#fbe9e9 8px,#f6dede 8px,#f6dede 16px);color:#7f1d1d;font-size:11px;overflow:hidden;word-break:break-word;text-align:center}
figcaption{padding:4px 6px 6px}
.cap{display:flex;align-items:center;gap:4px;flex-wrap:wrap}
.cap .name{font-weight:600;word-break:break-all}.cap .vk{color:#555}
.badge{margin-left:auto;border-radius:9px;padding:0 7px;color:#fff;font-size:11px;background:var(--other)}
.path{color:#666;font-size:11px;word-break:break-all}
table.qc{border-collapse:collapse;font-size:11px;margin-top:3px;width:100%;table-layout:fixed}
table.qc th{overflow-wrap:anywhere}
table.qc th{text-align:left;font-weight:normal;color:#555;padding:0 6px 0 0}table.qc td{text-align:right;font-family:ui-monospace,monospace}
table.qc tr.bad td,table.qc tr.bad th{color:var(--fail);font-weight:600}
.err{margin-top:3px;color:#8b1a1a;font-size:11px;white-space:pre-wrap;word-break:break-word}
.st-success{border-top-color:var(--ok)!important}.st-success .badge{background:var(--ok)}label.st-success input{accent-color:var(--ok)}
.st-rejected{border-top-color:var(--rej)!important}.st-rejected .badge{background:var(--rej)}label.st-rejected input{accent-color:var(--rej)}
.st-failed{border-top-color:var(--fail)!important}.st-failed .badge{background:var(--fail)}label.st-failed input{accent-color:var(--fail)}
.st-missing{border-top-color:var(--miss)!important}.st-missing .badge{background:var(--miss)}label.st-missing input{accent-color:var(--miss)}
.tile.src{border-top-color:var(--src)}.tile.src .badge{background:var(--src)}
#selftest-result{white-space:pre-wrap;font-size:11px}
.pic{position:relative;display:block}.pic img.srcover{position:absolute;inset:0;width:100%;height:100%;pointer-events:none}
.cmp{display:flex;gap:4px;align-items:center;padding:2px 6px 0}.cmp .wipe{flex:1;min-width:0}.cmp .flip{font-size:11px;padding:0 5px}
details.scores summary{cursor:pointer;color:#555;font-size:11px}
.rv{display:flex;gap:4px;align-items:center;margin-top:4px}.rv button{font-size:11px;padding:1px 6px;cursor:pointer}
.rv-state{font-size:11px;font-weight:600;margin-left:auto}
figure.tile.rv-k{outline:3px solid var(--ok)}figure.tile.rv-r{outline:3px solid var(--fail)}
figure.tile.rv-k .rv-state{color:var(--ok)}figure.tile.rv-r .rv-state{color:var(--fail)}
figure.tile.var:focus{box-shadow:0 0 0 3px #1565c0}
.reviewbar{margin:4px 0 2px;font-size:12px;color:#444}.reviewbar kbd{border:1px solid #bbb;border-radius:3px;padding:0 3px;background:#f7f7f7}
#review-status{font-weight:600;margin-left:8px}
"""

JS = r"""
(function(){
  "use strict";
  var jsErrors = [];
  window.addEventListener('error', function(e){ if(!(e.target && e.target.tagName === 'IMG')) jsErrors.push(String(e.message)); }, true);
  var rows = Array.prototype.slice.call(document.querySelectorAll('section.row'));
  var tiles = Array.prototype.slice.call(document.querySelectorAll('figure.tile.var'));
  function checked(name){
    var s = {};
    document.querySelectorAll('input[name="' + name + '"]:checked').forEach(function(i){ s[i.value] = true; });
    return s;
  }
  var riskMin = document.getElementById('risk-min');
  function apply(){
    var a = checked('aug'), s = checked('status'), rv = checked('review'), nt = 0, nr = 0;
    var minRisk = riskMin ? parseFloat(riskMin.value) : 0;
    if(riskMin) document.getElementById('risk-min-value').textContent = minRisk.toFixed(1);
    rows.forEach(function(r){
      var v = 0;
      r.querySelectorAll('figure.tile.var').forEach(function(t){
        var show = !!(a[t.getAttribute('data-aug')] && s[t.getAttribute('data-status')] && rv[t.getAttribute('data-review')]
                      && parseFloat(t.getAttribute('data-risk')) >= minRisk);
        t.hidden = !show; if(show) v++;
      });
      r.hidden = (v === 0);
      if(v){ nr++; nt += v; }
    });
    document.getElementById('visible-count').textContent =
      'showing ' + nt + ' of ' + tiles.length + ' outputs in ' + nr + ' of ' + rows.length + ' source images';
    var rc = reviewCounts();  // the review filter's counts follow the marks
    document.querySelectorAll('input[name="review"]').forEach(function(i){
      var n = i.parentNode.querySelector('.n'); if(n) n.textContent = '(' + (rc[i.value] || 0) + ')';
    });
  }
  function reviewCounts(){
    var rc = {};
    tiles.forEach(function(t){ var d = t.getAttribute('data-review') || 'undecided'; rc[d] = (rc[d] || 0) + 1; });
    return rc;
  }
  document.querySelectorAll('.filters input[type=checkbox]').forEach(function(i){ i.addEventListener('change', apply); });
  if(riskMin) riskMin.addEventListener('input', apply);
  document.querySelectorAll('.filters button[data-set]').forEach(function(b){
    b.addEventListener('click', function(){
      var on = b.getAttribute('data-set') === 'all';
      document.querySelectorAll('input[name="' + b.getAttribute('data-group') + '"]').forEach(function(i){ i.checked = on; });
      apply();
    });
  });
  // ---- sort: QC risk first (default) or image id ----
  var main = document.querySelector('main'), anchor = document.getElementById('selftest-result');
  function sortRows(){
    var by = document.getElementById('sort').value;
    rows.slice().sort(function(a, b){
      if(by === 'risk'){
        var d = parseFloat(b.getAttribute('data-risk')) - parseFloat(a.getAttribute('data-risk'));
        if(d) return d;
      }
      return a.getAttribute('data-image-id') < b.getAttribute('data-image-id') ? -1 : 1;
    }).forEach(function(r){ main.insertBefore(r, anchor); });
  }
  var sortSel = document.getElementById('sort');
  if(sortSel){ sortSel.addEventListener('change', sortRows); sortRows(); }
  // ---- compare an output with its source: wipe slider and flip ----
  function overlay(fig){
    var pic = fig.querySelector('.pic'), o = pic.querySelector('.srcover');
    if(!o){
      o = document.createElement('img'); o.className = 'srcover'; o.alt = 'source';
      o.src = fig.querySelector('.cmp').getAttribute('data-src');
      pic.appendChild(o);
    }
    return o;
  }
  document.querySelectorAll('.cmp').forEach(function(c){
    var fig = c.closest('figure'), wipe = c.querySelector('.wipe'), flip = c.querySelector('.flip');
    wipe.addEventListener('input', function(){
      var v = parseInt(wipe.value, 10), o = overlay(fig);
      o.style.clipPath = 'inset(0 ' + (100 - v) + '% 0 0)'; o.hidden = (v === 0);
    });
    flip.addEventListener('click', function(){
      var img = fig.querySelector('img'), showingSrc = img.getAttribute('src') === c.getAttribute('data-src');
      img.setAttribute('src', showingSrc ? c.getAttribute('data-out') : c.getAttribute('data-src'));
      flip.textContent = showingSrc ? 'flip' : 'output';
      fig.classList.toggle('flipped', !showingSrc);
    });
  });
  var size = document.getElementById('tile-size');
  if(size) size.addEventListener('input', function(){ document.documentElement.style.setProperty('--tile-w', size.value + 'px'); });

  // ---- review: keep / reject each output; saved by the review server, else kept in this browser ----
  var server = /^https?:/.test(location.protocol);
  var store = 'nbaug-review:' + document.body.getAttribute('data-dir');
  var marks = {}, statusEl = document.getElementById('review-status'), pending = [];
  function say(text){ if(statusEl) statusEl.textContent = text; }
  function show(t, d){
    t.setAttribute('data-review', d || 'undecided');
    t.classList.toggle('rv-k', d === 'keep'); t.classList.toggle('rv-r', d === 'reject');
    t.querySelector('.rv-state').textContent = d === 'keep' ? 'kept' : (d === 'reject' ? 'rejected' : '');
  }
  function mark(t, d){
    var stem = t.getAttribute('data-stem'), ans = t.getAttribute('data-answer');
    show(t, d);
    if(d) marks[stem] = {decision: d, answer_id: ans, ts: Date.now() / 1000}; else delete marks[stem];
    apply();
    var done;
    if(server){
      done = fetch('/review', {method: 'POST', headers: {'Content-Type': 'application/json'},
                               body: JSON.stringify({stem: stem, decision: d || '', answer_id: ans})})
        .then(function(r){ if(!r.ok) throw new Error('not saved: HTTP ' + r.status); say('saved: ' + stem + ' ' + (d || 'undecided')); })
        .catch(function(e){ say(e.message + ' (is the review server still running?)'); throw e; });
    } else {
      try { localStorage.setItem(store, JSON.stringify(marks)); } catch(e) {}
      say('kept in this browser: use "export decisions" to save them');
      done = Promise.resolve();
    }
    pending.push(done);
    return done;
  }
  function current(){ var a = document.activeElement; return a && a.matches && a.matches('figure.tile.var') ? a : null; }
  function visibleTiles(){ return tiles.filter(function(t){ return t.offsetParent !== null; }); }
  function step(by){
    var v = visibleTiles(), i = v.indexOf(current());
    var next = v[Math.max(0, Math.min(v.length - 1, i < 0 ? 0 : i + by))];
    if(next){ next.focus(); next.scrollIntoView({block: 'nearest'}); }
  }
  document.addEventListener('keydown', function(e){
    if(e.target.matches && e.target.matches('input, select, textarea')) return;
    var t = current(), key = e.key;
    if(key === 'j' || key === 'ArrowRight') { step(1); e.preventDefault(); }
    else if(key === 'k' || key === 'ArrowLeft') { step(-1); e.preventDefault(); }
    else if(t && (key === 'y' || key === 'n' || key === 'u')) {
      mark(t, key === 'y' ? 'keep' : (key === 'n' ? 'reject' : '')); e.preventDefault();
      if(key !== 'u') step(1);
    }
  });
  document.querySelectorAll('.rv button').forEach(function(b){
    b.addEventListener('click', function(){ mark(b.closest('figure'), b.getAttribute('data-d')); });
  });
  function exported(){
    var by = {};
    tiles.forEach(function(t){
      var d = t.getAttribute('data-review');
      if(d === 'keep' || d === 'reject')
        by[t.getAttribute('data-stem')] = marks[t.getAttribute('data-stem')] ||
          {decision: d, answer_id: t.getAttribute('data-answer'), ts: Date.now() / 1000};
    });
    return JSON.stringify({version: 1, decisions: by}, null, 1);
  }
  var exportButton = document.getElementById('export');
  if(exportButton) exportButton.addEventListener('click', function(){
    var a = document.createElement('a');
    a.href = URL.createObjectURL(new Blob([exported()], {type: 'application/json'}));
    a.download = 'review.json'; document.body.appendChild(a); a.click(); a.remove();
    say('exported: put review.json into the output directory (next to manifest.csv)');
  });
  function loadLocal(){
    try {
      var kept = JSON.parse(localStorage.getItem(store) || '{}');
      Object.keys(kept).forEach(function(stem){
        var t = document.querySelector('figure.tile.var[data-stem="' + stem.replace(/"/g, '') + '"]');
        if(t && (kept[stem].answer_id || '') === t.getAttribute('data-answer')){
          marks[stem] = kept[stem]; show(t, kept[stem].decision);
        }
      });
    } catch(e) {}
    say('marks are kept in this browser until you export them');
  }
  function loadMarks(){
    tiles.forEach(function(t){ var d = t.getAttribute('data-review'); if(d === 'keep' || d === 'reject') show(t, d); });
    if(!server){ loadLocal(); return Promise.resolve(); }
    // served over http: by the review server (it answers /review.json with server: true) or by anything else
    return fetch('/review.json', {cache: 'no-store'}).then(function(r){ return r.json(); }).then(function(j){
      if(!j || j.server !== true) throw new Error('not the review server');
      tiles.forEach(function(t){
        var d = (j.decisions || {})[t.getAttribute('data-stem')];
        show(t, d && (d.answer_id || '') === t.getAttribute('data-answer') ? d.decision : '');
      });
      say('marks are saved as you make them');
    }).catch(function(){ server = false; loadLocal(); });
  }
  var ready = loadMarks().then(apply);

  // ---- test mode: #selftest&status=failed&aug=overcast&mark=STEM:reject&export (values repeatable) ----
  var hash = location.hash.replace(/^#/, '');
  if(!/^selftest(=|&|$)/.test(hash)) return;
  var params = new URLSearchParams(hash);
  function visible(){
    var vt = tiles.filter(function(t){ return t.offsetParent !== null; });
    var st = {}, au = {};
    vt.forEach(function(t){
      var s = t.getAttribute('data-status'), g = t.getAttribute('data-aug');
      st[s] = (st[s] || 0) + 1; au[g] = (au[g] || 0) + 1;
    });
    return {tiles: vt.length, rows: rows.filter(function(r){ return r.offsetParent !== null; }).length,
            by_status: st, by_aug: au, summary: document.getElementById('visible-count').textContent};
  }
  var imgs = Array.prototype.slice.call(document.images);
  imgs.forEach(function(i){ i.loading = 'eager'; });
  ready.then(function(){ return Promise.all(imgs.map(function(i){
    if(i.complete && i.naturalWidth > 0) return null;
    return new Promise(function(res){
      i.addEventListener('load', res, {once: true}); i.addEventListener('error', res, {once: true});
      setTimeout(res, 4000);
    });
  })); }).then(function(){
    // marks through the keyboard, as a person makes them: focus the tile, y / n
    params.getAll('mark').forEach(function(m){
      var i = m.lastIndexOf(':'), t = document.querySelector('figure.tile.var[data-stem="' + m.slice(0, i) + '"]');
      if(!t) return;
      t.focus();
      document.dispatchEvent(new KeyboardEvent('keydown', {key: m.slice(i + 1) === 'keep' ? 'y' : 'n', bubbles: true}));
    });
    return Promise.all(pending.map(function(p){ return p.then(function(){ return 'saved'; }, function(e){ return String(e); }); }));
  }).then(function(saved){
    var report = {images: imgs.length, saved: saved, server: server,
      broken: imgs.filter(function(i){ return !(i.complete && i.naturalWidth > 0); }).map(function(i){ return i.getAttribute('src'); }),
      tiles_total: document.querySelectorAll('figure.tile').length,
      source_tiles: document.querySelectorAll('figure.tile.src').length,
      variant_tiles: tiles.length,
      placeholders: document.querySelectorAll('.pic.placeholder').length,
      before: visible(), review_counts: reviewCounts(), filter: {}};
    ['aug', 'status', 'review'].forEach(function(group){
      var want = params.getAll(group);
      if(!want.length) return;
      report.filter[group] = want;
      document.querySelectorAll('input[name="' + group + '"]').forEach(function(cb){
        cb.checked = want.indexOf(cb.value) >= 0;
        cb.dispatchEvent(new Event('change', {bubbles: true}));
      });
    });
    report.after = visible();
    report.order = Array.prototype.slice.call(document.querySelectorAll('section.row')).map(function(r){
      return [r.getAttribute('data-image-id'), parseFloat(r.getAttribute('data-risk'))]; });
    var cmp = document.querySelector('.cmp');
    if(cmp){
      var fig = cmp.closest('figure'), img = fig.querySelector('img');
      cmp.querySelector('.flip').click();
      report.flip = {shows_source: img.getAttribute('src') === cmp.getAttribute('data-src')};
      cmp.querySelector('.flip').click();
      report.flip.back = img.getAttribute('src') === cmp.getAttribute('data-out');
      var w = cmp.querySelector('.wipe'); w.value = 50; w.dispatchEvent(new Event('input'));
      var o = fig.querySelector('.srcover');
      report.wipe = {overlay: !!o && !o.hidden, clip: o ? o.style.clipPath : ''};
    }
    report.marks = {};
    tiles.forEach(function(t){
      var d = t.getAttribute('data-review');
      if(d !== 'undecided') report.marks[t.getAttribute('data-stem')] = d;
    });
    if(params.has('export')) report.export = exported();
    report.js_errors = jsErrors;
    var out = document.getElementById('selftest-result');
    out.hidden = false;
    out.textContent = JSON.stringify(report);
    document.documentElement.setAttribute('data-selftest', 'done');
  });
})();
"""


def render_html(rows: list[Row], out_dir: Path, *, title: str, manifest_csv: Path, contact_note: str) -> str:
    tiles = [t for r in rows for t in r.variants]
    aug_counts: dict[str, int] = {}
    status_counts: dict[str, int] = {}
    review_counts = {"undecided": 0, "keep": 0, "reject": 0}
    for t in tiles:
        aug_counts[t.aug_name] = aug_counts.get(t.aug_name, 0) + 1
        status_counts[t.status] = status_counts.get(t.status, 0) + 1
        review_counts[t.review if t.review in review_counts else "undecided"] += 1
    status_order = [s for s in KNOWN_STATUSES if s in status_counts] + sorted(
        s for s in status_counts if s not in KNOWN_STATUSES
    )
    summary = ", ".join(f"{status_counts[s]} {s}" for s in status_order) or "no outputs"
    body = []
    for row in rows:
        counts: dict[str, int] = {}
        for t in row.variants:
            counts[t.status] = counts.get(t.status, 0) + 1
        row_counts = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        row_risk = max((risk(t) for t in row.variants), default=0.0)
        body.append(
            f'<section class="row" data-image-id="{_e(row.image_id)}" data-risk="{row_risk}">'
            f'<h2>{_e(row.image_id)}<span class="counts">{_e(row_counts)}</span></h2><div class="tiles">'
        )
        body.append(_tile_html(row.source, out_dir))
        body.extend(_tile_html(t, out_dir, row.source.thumb) for t in row.variants)
        body.append("</div></section>")
    filters = (
        "<fieldset><legend>Augmentation</legend>"
        + _checkboxes("aug", aug_counts, sorted(aug_counts))
        + '<button type="button" data-group="aug" data-set="all">all</button>'
        + '<button type="button" data-group="aug" data-set="none">none</button></fieldset>'
        + "<fieldset><legend>Status</legend>"
        + _checkboxes("status", status_counts, status_order)
        + '<button type="button" data-group="status" data-set="all">all</button>'
        + '<button type="button" data-group="status" data-set="none">none</button></fieldset>'
        + "<fieldset><legend>Review</legend>"
        + _checkboxes("review", review_counts, ["undecided", "keep", "reject"])
        + "</fieldset>"
        + '<label>QC risk ≥ <input id="risk-min" type="range" min="0" max="4" step="0.1" value="0"> '
        + '<span id="risk-min-value">0.0</span></label>'
        + '<label>sort <select id="sort"><option value="risk">QC risk first</option>'
        + '<option value="id">image id</option></select></label>'
        + '<label>tile size <input id="tile-size" type="range" min="140" max="480" step="10" value="230"></label>'
        + '<span id="visible-count"></span>'
    )
    generated = time.strftime("%Y-%m-%d %H:%M:%S")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{_e(title)}</title><style>{CSS}</style></head>"
        f'<body data-dir="{_e(out_dir.resolve())}">'
        f"<header><h1>{_e(title)}</h1>"
        f'<div class="meta">{len(rows)} source images, {len(tiles)} outputs ({_e(summary)}) · '
        f"manifest {_e(manifest_csv)} · generated {_e(generated)} · "
        f'<a href="contact_sheet.png" target="_blank">contact sheet</a> ({_e(contact_note)}) · '
        "click a thumbnail for the full-size image</div>"
        f'<div class="filters">{filters}</div>'
        '<div class="reviewbar">review: focus a tile (click it, or <kbd>j</kbd>/<kbd>k</kbd> to move), '
        "<kbd>y</kbd> keep, <kbd>n</kbd> reject, <kbd>u</kbd> undecided · "
        '<button type="button" id="export" title="download the decisions as review.json">export decisions</button>'
        '<span id="review-status"></span></div></header>'
        f"<main>{''.join(body) or '<p>The manifest has no rows.</p>'}"
        '<pre id="selftest-result" hidden></pre></main>'
        f"<script>{JS}</script></body></html>\n"
    )


# ---------------------------------------------------------------- contact sheet
_RGB = {
    "success": (46, 125, 50),
    "rejected": (230, 81, 0),
    "failed": (198, 40, 40),
    "missing": (117, 117, 117),
    "source": (21, 101, 192),
    "other": (106, 27, 154),
}


def _fit(draw: ImageDraw.ImageDraw, text: str, width: int) -> str:
    if draw.textlength(text) <= width:
        return text
    while text and draw.textlength(text + "…") > width:
        text = text[:-1]
    return text + "…"


def make_contact_sheet(
    rows: list[Row], thumbs_dir: Path, dest: Path, *, max_rows: int = CONTACT_MAX_ROWS, cell_w: int = CONTACT_CELL_W
) -> Path:
    """PNG grid from the thumbnails: rows = source images (first max_rows), columns =
    source + every (aug_name, variant) seen in those rows."""
    rows = rows[:max_rows]
    columns = sorted({(t.aug_name, t.variant_idx) for r in rows for t in r.variants})
    aspects = [
        t.thumb_size[0] / t.thumb_size[1] for r in rows for t in [r.source, *r.variants] if t.thumb and t.thumb_size[1]
    ]
    aspect = min(4.0, max(0.5, statistics.median(aspects))) if aspects else 2.0
    pad, label_h, head_h = 3, 13, 16
    img_h = round(cell_w / aspect)
    cw, ch = cell_w + 2 * pad, img_h + label_h + 2 * pad
    sheet = Image.new("RGB", (max(1, cw * (1 + len(columns))), head_h + ch * max(1, len(rows))), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for c, name in enumerate(["source"] + [f"{a} v{k}" for a, k in columns]):
        draw.text((c * cw + pad, 2), _fit(draw, name, cell_w), fill=(0, 0, 0))
    for r, row in enumerate(rows):
        by_col = {(t.aug_name, t.variant_idx): t for t in row.variants}
        cells = [(0, row.source)] + [(1 + i, by_col.get(col)) for i, col in enumerate(columns)]
        for c, tile in cells:
            if tile is None:
                continue
            x0, y0 = c * cw + pad, head_h + r * ch + pad
            colour = _RGB.get(_status_class(tile.status), _RGB["other"])
            draw.rectangle([x0 - 2, y0 - 2, x0 + cell_w + 1, y0 + img_h + 1], outline=colour, width=2)
            if tile.thumb:
                try:
                    with Image.open(thumbs_dir / tile.thumb) as im:
                        im = ImageOps.contain(im.convert("RGB"), (cell_w, img_h))
                        sheet.paste(im, (x0 + (cell_w - im.width) // 2, y0 + (img_h - im.height) // 2))
                except OSError:
                    pass
            else:
                draw.rectangle([x0, y0, x0 + cell_w - 1, y0 + img_h - 1], fill=(246, 222, 222))
                why = tile.error if tile.status == "failed" and tile.error else (tile.note or "no image")
                words, line, y = why.split(), "", y0 + 3
                for word in words:  # wrap the reason into the cell
                    if draw.textlength((line + " " + word).strip()) > cell_w - 6 and line:
                        draw.text((x0 + 3, y), line, fill=(127, 29, 29))
                        y, line = y + 12, word
                        if y > y0 + img_h - 14:
                            line = ""
                            break
                    else:
                        line = (line + " " + word).strip()
                if line:
                    draw.text((x0 + 3, y), _fit(draw, line, cell_w - 6), fill=(127, 29, 29))
            label = row.image_id if tile.is_source else tile.status
            if not tile.is_source and tile.qc.get("qc_ssim"):
                label += f"  ssim {_fmt(tile.qc['qc_ssim'])}"
            draw.text((x0, y0 + img_h + 2), _fit(draw, label, cell_w), fill=colour)
    buf = io.BytesIO()
    sheet.save(buf, "PNG", compress_level=6)
    atomic_write_bytes(dest, buf.getvalue())
    return dest


# ---------------------------------------------------------------- entry points
def build_gallery_stats(
    manifest_csv,
    data_root,
    out_dir,
    *,
    thumb_width: int = 320,
    contact_max_rows: int = CONTACT_MAX_ROWS,
    title: str | None = None,
) -> GalleryStats:
    started = time.monotonic()
    manifest_csv, data_root, out_dir = Path(manifest_csv), Path(data_root), Path(out_dir)
    rows = read_rows(manifest_csv, data_root)
    out_dir.mkdir(parents=True, exist_ok=True)
    thumbs_dir = out_dir / "thumbs"
    all_tiles = [t for r in rows for t in [r.source, *r.variants]]
    counts = make_thumbnails(all_tiles, thumbs_dir, thumb_width)
    t_thumbs = time.monotonic() - started
    shown = min(len(rows), contact_max_rows)
    note = (
        f"first {shown} of {len(rows)} source images"
        if len(rows) > contact_max_rows
        else f"all {len(rows)} source images"
    )
    t0 = time.monotonic()
    make_contact_sheet(rows, thumbs_dir, out_dir / "contact_sheet.png", max_rows=contact_max_rows)
    t_contact = time.monotonic() - t0
    index = out_dir / "index.html"
    title = title or f"Augmentation review: {manifest_csv.parent.name}"
    atomic_write_text(index, render_html(rows, out_dir, title=title, manifest_csv=manifest_csv, contact_note=note))
    return GalleryStats(
        index=index,
        rows=len(rows),
        tiles=sum(len(r.variants) for r in rows),
        thumbs_made=counts["made"],
        thumbs_reused=counts["reused"],
        seconds_thumbs=t_thumbs,
        seconds_contact=t_contact,
        seconds_total=time.monotonic() - started,
    )


def build_gallery(manifest_csv, data_root, out_dir, *, thumb_width: int = 320) -> Path:
    """Write out_dir/index.html, out_dir/thumbs/, out_dir/contact_sheet.png; returns index.html."""
    return build_gallery_stats(manifest_csv, data_root, out_dir, thumb_width=thumb_width).index


def main(snakemake) -> None:
    """Entry point of rule ``report_gallery`` (``script:``)."""
    from .jobs import job_main

    def work():
        cfg = snakemake.config
        stats = build_gallery_stats(snakemake.input[0], cfg["data"]["data_root"], Path(snakemake.output[0]).parent)
        return (
            f"gallery: {stats.index} ({stats.rows} source images, {stats.tiles} outputs; thumbnails "
            f"{stats.thumbs_made} made, {stats.thumbs_reused} reused in {stats.seconds_thumbs:.1f}s; "
            f"contact sheet {stats.seconds_contact:.1f}s) in {stats.seconds_total:.1f}s"
        )

    job_main(snakemake, work, name="report_gallery")
