"""The run summary page for ``snakemake --report``: one self-contained HTML file.

``{output_dir}/report/summary.html`` is rebuilt by every run (rule
``summary``, flagged ``report()``): counts per status and augmentation, cost,
QC score distributions (inline SVG histograms), and a sample of outputs beside
their sources (embedded thumbnails).  No JavaScript, no external resources.
"""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path

from .fileio import atomic_write_text
from .manifest import read_csv_rows, resolve_output

QC_METRICS = [  # every check of the gate, with the threshold it is judged by
    ("qc_ssim", "structure similarity (higher = closer to the source)", "min_ssim"),
    ("qc_shift_frac", "shift, fraction of the size", "max_shift_frac"),
    ("qc_warp_frac", "warp: corner displacement of an affine fit, fraction of the size", "max_warp_frac"),
    ("qc_changed_frac", "area whose structure collapsed (repaint)", "max_changed_frac"),
    ("qc_detail_changed_frac", "area whose fine detail was smeared or replaced", "max_detail_changed_frac"),
    ("qc_veg_cover_delta", "vegetation cover change", "max_veg_cover_delta"),
    ("qc_veg_changed_frac", "area whose vegetation colour changed locally", "max_veg_changed_frac"),
    ("qc_aspect_change", "|ln(output aspect / source aspect)|", "max_aspect_change"),
    ("qc_mirror_score", "mirror score (> 1: a flipped or rotated output matches better)", None),
]
PROBLEMS = ("failed", "blocked", "rejected", "missing")


def _e(x) -> str:
    return html.escape(str(x), quote=True)


def _num(v):
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def histogram_svg(
    values: list[float], threshold: float | None, *, bins: int = 20, width: int = 320, height: int = 120
) -> str:
    """A small inline SVG histogram with the QC threshold as a red line."""
    if not values:
        return "<p>no values</p>"
    lo, hi = (
        min(values + ([threshold] if threshold is not None else [])),
        max(values + ([threshold] if threshold is not None else [])),
    )
    if hi <= lo:
        hi = lo + 1e-9
    counts = [0] * bins
    for v in values:
        counts[min(bins - 1, int((v - lo) / (hi - lo) * bins))] += 1
    top = max(counts)
    bw = width / bins
    bars = "".join(
        f'<rect x="{i * bw:.1f}" y="{height - 18 - c / top * (height - 24):.1f}" width="{bw - 1:.1f}" '
        f'height="{c / top * (height - 24):.1f}" fill="#4a7fb5"><title>{c}</title></rect>'
        for i, c in enumerate(counts)
        if c
    )
    line = ""
    if threshold is not None:
        x = (threshold - lo) / (hi - lo) * width
        line = f'<line x1="{x:.1f}" y1="0" x2="{x:.1f}" y2="{height - 18}" stroke="#c62828" stroke-width="2"/>'
    labels = (
        f'<text x="0" y="{height - 4}" font-size="10">{lo:.3g}</text>'
        f'<text x="{width}" y="{height - 4}" font-size="10" text-anchor="end">{hi:.3g}</text>'
    )
    return f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">{bars}{line}{labels}</svg>'


def _thumb(path: Path, width: int = 240) -> str | None:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            im.thumbnail((width, width))
            buf = io.BytesIO()
            im.save(buf, "JPEG", quality=80)
    except OSError:
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def build(cfg: dict, manifest_path, dest, *, samples: int = 6) -> Path:
    rows = read_csv_rows(manifest_path) if Path(manifest_path).exists() else []
    data_root = Path(cfg["data"]["data_root"])
    qc_cfg = cfg.get("qc") or {}
    statuses = sorted({r.get("status", "") for r in rows})
    augs = sorted({r.get("aug_name", "") for r in rows})
    table = ["<table><tr><th>augmentation</th>" + "".join(f"<th>{_e(s)}</th>" for s in statuses) + "<th>all</th></tr>"]
    for a in augs:
        cells = [sum(1 for r in rows if r.get("aug_name") == a and r.get("status") == s) for s in statuses]
        table.append(f"<tr><td>{_e(a)}</td>" + "".join(f"<td>{c}</td>" for c in cells) + f"<td>{sum(cells)}</td></tr>")
    table.append("</table>")
    cost = sum(_num(r.get("est_cost_usd")) or 0.0 for r in rows)
    billed = [_num(r.get("cost_usd")) for r in rows if _num(r.get("cost_usd")) is not None]
    sources = {}
    for r in rows:
        sources[r.get("answer_source") or "(none)"] = sources.get(r.get("answer_source") or "(none)", 0) + 1
    hists = []
    for key, what, tkey in QC_METRICS:
        vals = [_num(r.get(key)) for r in rows if _num(r.get(key)) is not None]
        if key == "qc_veg_cover_delta":
            vals = [abs(v) for v in vals]
        limit = _num(qc_cfg.get(tkey)) if tkey else (1.0 if qc_cfg.get("reject_mirror", True) else None)
        name = f"qc.{tkey}" if tkey else "qc.reject_mirror"
        hists.append(
            f"<figure><figcaption><b>{_e(key[3:])}</b>: {_e(what)} ({len(vals)} outputs; red = "
            f"<code>{_e(name)}</code>)</figcaption>{histogram_svg(vals, limit)}</figure>"
        )

    # a sample: the riskiest first (rejected, then lowest ssim), then successes
    def risk(r):
        return (r.get("status") != "rejected", _num(r.get("qc_ssim")) if _num(r.get("qc_ssim")) is not None else 1.0)

    sample_html = []
    for r in sorted((r for r in rows if r.get("status") in ("success", "rejected")), key=risk)[:samples]:
        out = (
            _thumb(resolve_output(r["image_path"], data_root, Path(manifest_path).parent))
            if r.get("image_path")
            else None
        )
        src = _thumb(data_root / r.get("src_image_path", "")) if r.get("src_image_path") else None
        if not out:
            continue
        sample_html.append(
            f'<div class="pair"><div><img alt="source" src="{src or ""}"><br>source {_e(r.get("image_id"))}</div>'
            f'<div><img alt="output" src="{out}"><br>{_e(r.get("aug_name"))} v{_e(r.get("variant_idx"))}: '
            f"<b>{_e(r.get('status'))}</b> {_e((r.get('error') or '')[:160])}</div></div>"
        )
    failures = _failures(rows)
    spent = _spent(cfg)
    page = f"""<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>Augmentation run summary</title>
<style>body{{font:13px system-ui,sans-serif;margin:16px}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;
padding:2px 8px;text-align:right}}td:first-child{{text-align:left}}figure{{display:inline-block;margin:6px 12px 6px 0}}
.pair{{display:flex;gap:8px;margin:6px 0}}.pair img{{width:240px;height:auto;background:#ddd}}</style></head><body>
<h1>Augmentation run summary</h1>
<p>{len(rows)} outputs in <code>{_e(manifest_path)}</code>; provider <code>{_e(cfg["api"]["provider"])}</code>,
model <code>{_e(cfg["api"]["model"])}</code>, mode <code>{_e(cfg["api"].get("mode", "sync"))}</code>.</p>
<h2>Outputs per status and augmentation</h2>{"".join(table)}
<h2>Cost</h2><p>Spent in this output directory (every answer bought, also those without an image):
<b>${spent["cost_usd"]:.2f}</b> for {spent["answers"]} answers ({spent["calls"]} calls); the outputs listed
were made from answers that cost ${cost:.2f}{f" (reported by the service: ${sum(billed):.2f})" if billed else ""}.
{_e(spent["plan"])} Where outputs came from: {_e(", ".join(f"{v} {k}" for k, v in sorted(sources.items())))}.</p>
<h2>Failures by reason</h2>{failures}
<h2>QC scores</h2>{"".join(hists)}
<h2>A sample of outputs beside their sources</h2>{"".join(sample_html) or "<p>no outputs yet</p>"}
</body></html>
"""
    dest = Path(dest)
    atomic_write_text(dest, page)
    return dest


def _failures(rows) -> str:
    """One line per reason: how many outputs, and one example (target and message)."""
    groups: dict = {}
    for r in rows:
        if r.get("status") in PROBLEMS:
            groups.setdefault((r.get("status"), r.get("error_reason") or r.get("status")), []).append(r)
    if not groups:
        return "<p>none</p>"
    items = []
    for (status, reason), members in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        ex = members[0]
        items.append(
            f"<tr><td>{_e(status)}</td><td>{_e(reason)}</td><td>{len(members)}</td><td>{_e(ex.get('image_id'))} "
            f"{_e(ex.get('aug_name'))} v{_e(ex.get('variant_idx'))}: {_e((ex.get('error') or '')[:240])}</td></tr>"
        )
    return (
        "<table><tr><th>status</th><th>reason</th><th>outputs</th><th>one example</th></tr>"
        + "".join(items)
        + "</table>"
    )


def _spent(cfg: dict) -> dict:
    """What the directory's answers cost, and the last plan written to augment.log."""
    from . import answers

    out = Path(cfg["data"]["output_dir"])
    t = answers.totals(answers.iter_all(out))
    plan = ""
    log = out / cfg["data"]["log_file"]
    if log.is_file():
        lines = [
            line.split("  ", 1)[-1] for line in log.read_text(encoding="utf-8").splitlines() if "answers to buy" in line
        ]
        plan = f"The last run planned: {lines[-1].removeprefix('plan: ')}." if lines else ""
    return {**t, "plan": plan}


def main(snakemake) -> None:
    """Entry point of rule ``summary`` (``script:``)."""
    from .jobs import job_main

    job_main(snakemake, lambda: build(snakemake.config, snakemake.input[0], snakemake.output[0]), name="summary")
