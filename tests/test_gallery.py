"""The visual review gallery (nano_banana_aug.gallery, rule report_gallery):
HTML structure and escaping on a synthetic manifest, thumbnails, contact sheet,
a real headless Chromium (page loads, no broken image, tile counts, filters),
and the rule end to end on the bundled sample."""

from __future__ import annotations

import csv
import html
import os
import re
import shutil
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml
from PIL import Image

from nano_banana_aug import gallery

from .browser import find_chromium, run_chromium, selftest
from .helpers import ROOT, copy_workflow, snakemake, textured

EVIL_ID = "ID<b>&\"x'"  # an image id that must be escaped everywhere (no '/', no '__')
EVIL_ERROR = "<script>alert('x')</script> HTTP 503 & model overloaded"
COLUMNS = ["image_id", "aug_name", "variant_idx", "src_image_path", "image_path", "status", "error", "ts"]
QC_COLUMNS = ["qc_ssim", "qc_shift_px", "qc_mirror", "qc_veg_cover_delta", "qc_passed", "qc_reasons"]


# ------------------------------------------------------------------ fixtures
def write_manifest(path: Path, rows: list[dict], qc: bool) -> None:
    cols = COLUMNS + (QC_COLUMNS if qc else [])
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({c: r.get(c, "") for c in cols})


def make_synthetic(tmp_path: Path, qc: bool = True) -> dict:
    """Two sources, seven variants: success, failed, rejected, success whose file was
    deleted, missing, success at an absolute path outside data_root, success."""
    root = tmp_path / "data"
    out = root / "aug"
    (root / "train").mkdir(parents=True)
    out.mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    textured(400, 200, 1).save(root / "train" / "IDa.jpg", quality=90)
    textured(400, 200, 2).save(root / "train" / f"{EVIL_ID}.jpg", quality=90)
    textured(400, 200, 3).save(out / "IDa__overcast__v0.png")
    textured(400, 200, 4).save(out / "IDa__sun__v0.png")
    textured(400, 200, 5).save(elsewhere / f"{EVIL_ID}__sun__v0.png")
    textured(400, 200, 6).save(out / f"{EVIL_ID}__sun__v1.png")
    ok_qc = {
        "qc_ssim": "0.9312",
        "qc_shift_px": "0.4",
        "qc_mirror": "0.03",
        "qc_veg_cover_delta": "0.004",
        "qc_passed": "True",
        "qc_reasons": "",
    }
    rows = [
        dict(
            image_id="IDa",
            aug_name="overcast",
            variant_idx=0,
            src_image_path="train/IDa.jpg",
            image_path="aug/IDa__overcast__v0.png",
            status="success",
            **ok_qc,
        ),
        dict(
            image_id="IDa",
            aug_name="overcast",
            variant_idx=1,
            src_image_path="train/IDa.jpg",
            image_path="aug/IDa__overcast__v1.png",
            status="failed",
            error=EVIL_ERROR,
        ),
        dict(
            image_id="IDa",
            aug_name="sun",
            variant_idx=0,
            src_image_path="train/IDa.jpg",
            image_path="aug/IDa__sun__v0.png",
            status="rejected",
            error="qc: shift 41 px > 8",
            qc_ssim="0.41",
            qc_shift_px="41.2",
            qc_mirror="0.05",
            qc_veg_cover_delta="0.2",
            qc_passed="False",
            qc_reasons="shift_px>8",
        ),
        dict(
            image_id="IDa",
            aug_name="sun",
            variant_idx=1,
            src_image_path="train/IDa.jpg",
            image_path="aug/IDa__sun__v1.png",
            status="success",
        ),  # file deleted after the manifest
        dict(
            image_id=EVIL_ID,
            aug_name="overcast",
            variant_idx=0,
            src_image_path=f"train/{EVIL_ID}.jpg",
            image_path=f"aug/{EVIL_ID}__overcast__v0.png",
            status="missing",
        ),
        dict(
            image_id=EVIL_ID,
            aug_name="sun",
            variant_idx=1,
            src_image_path=f"train/{EVIL_ID}.jpg",
            image_path=f"aug/{EVIL_ID}__sun__v1.png",
            status="success",
            **ok_qc,
        ),
        dict(
            image_id=EVIL_ID,
            aug_name="sun",
            variant_idx=0,
            src_image_path=f"train/{EVIL_ID}.jpg",
            image_path=str(elsewhere / f"{EVIL_ID}__sun__v0.png"),
            status="success",
            **ok_qc,
        ),  # absolute
    ]
    write_manifest(out / "manifest.csv", rows, qc)
    return {"root": root, "out": out, "manifest": out / "manifest.csv", "gallery": out / "gallery"}


@pytest.fixture
def synth(tmp_path):
    return make_synthetic(tmp_path)


class PageParser(HTMLParser):
    """Figures (class, data-*), sections, <img> srcs, <script> count of a gallery page."""

    def __init__(self):
        super().__init__()
        self.figures, self.sections, self.imgs, self.scripts, self.placeholders = [], [], [], 0, 0
        self.links = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "figure":
            self.figures.append(a)
        elif tag == "section":
            self.sections.append(a)
        elif tag == "img":
            self.imgs.append(a["src"])
        elif tag == "script":
            self.scripts += 1
        elif tag == "div" and "placeholder" in a.get("class", ""):
            self.placeholders += 1
        if tag in ("a", "link", "script", "img") and (a.get("href") or a.get("src")):
            self.links.append(a.get("href") or a.get("src"))

    def variants(self):
        return [f for f in self.figures if "var" in f["class"].split()]

    def sources(self):
        return [f for f in self.figures if "src" in f["class"].split()]


def parse(index: Path) -> tuple[str, PageParser]:
    text = index.read_text(encoding="utf-8")
    p = PageParser()
    p.feed(text)
    return text, p


# ------------------------------------------------------------------ unit tests
def test_page_tiles_statuses_and_order(synth):
    index = gallery.build_gallery(synth["manifest"], synth["root"], synth["gallery"])
    assert index == synth["gallery"] / "index.html"
    text, page = parse(index)
    assert [s["data-image-id"] for s in page.sections] == [EVIL_ID, "IDa"]  # sorted by image_id
    assert len(page.sources()) == 2 and len(page.variants()) == 7
    statuses = [f["data-status"] for f in page.variants()]
    assert sorted(statuses) == sorted(["success", "failed", "rejected", "success", "missing", "success", "success"])
    # within a row: sorted by (aug_name, variant_idx)
    row_ida = [(f["data-aug"], f["data-status"]) for f in page.variants()[3:]]
    assert row_ida == [("overcast", "success"), ("overcast", "failed"), ("sun", "rejected"), ("sun", "success")]
    # 3 placeholders: the failed one, the deleted success, the missing one
    assert page.placeholders == 3
    assert "file not found" in text and "no image: generation failed" in text
    # filters with counts
    assert re.search(r'name="status" value="failed" checked> failed <span class="n">\(1\)</span>', text)
    assert re.search(r'name="aug" value="sun" checked> sun <span class="n">\(4\)</span>', text)
    assert "all 2 source images" in text  # contact sheet note


def test_everything_is_escaped(synth):
    text, page = parse(gallery.build_gallery(synth["manifest"], synth["root"], synth["gallery"]))
    assert "<script>alert" not in text and "<b>" not in text
    assert html.escape(EVIL_ERROR) in text  # the failed tile's error text, escaped
    assert html.escape(EVIL_ID) in text
    assert page.scripts == 1  # ours only
    # the attribute survives a round trip through the parser unchanged
    assert page.sections[0]["data-image-id"] == EVIL_ID


def test_qc_scores_and_errors_shown(synth):
    text, _ = parse(gallery.build_gallery(synth["manifest"], synth["root"], synth["gallery"]))
    assert "<th>ssim</th><td>0.41</td>" in text and "<th>shift_px</th><td>41.2</td>" in text
    assert "<tr class=bad><th>passed</th><td>False</td></tr>" in text
    assert "qc: shift 41 px &gt; 8" in text  # the rejected one's error
    assert "<th>reasons</th><td>shift_px&gt;8</td>" in text


def test_without_qc_columns(tmp_path):
    s = make_synthetic(tmp_path, qc=False)
    text, page = parse(gallery.build_gallery(s["manifest"], s["root"], s["gallery"]))
    assert len(page.variants()) == 7 and 'class="qc"' not in text


def test_thumbnails_small_local_and_incremental(synth):
    stats = gallery.build_gallery_stats(synth["manifest"], synth["root"], synth["gallery"], thumb_width=160)
    _, page = parse(stats.index)
    thumbs = sorted((synth["gallery"] / "thumbs").glob("*.jpg"))
    # 2 sources + 4 existing outputs (incl. the absolute-path one); never a full-size image in the page
    assert stats.thumbs_made == 6 and len(thumbs) == 6 and len(page.imgs) == 6
    assert all(src.startswith("thumbs/") for src in page.imgs)
    for t in thumbs:
        with Image.open(t) as im:
            assert im.format == "JPEG" and im.width <= 160 and im.height <= 160
        assert t.stat().st_size < 30_000
    # no external fetch: no http(s) anywhere in src/href, no <link>, no @import / url()
    assert not [u for u in page.links if re.match(r"(?i)\s*(https?:)?//", u)]
    text = stats.index.read_text()
    assert "<link" not in text and "@import" not in text and "url(" not in text
    # unchanged images: every thumbnail reused; a newer image: only its thumbnail remade
    before = {t.name: t.stat().st_mtime_ns for t in thumbs}
    again = gallery.build_gallery_stats(synth["manifest"], synth["root"], synth["gallery"], thumb_width=160)
    assert (again.thumbs_made, again.thumbs_reused) == (0, 6)
    img = synth["out"] / "IDa__sun__v0.png"
    future = time.time() + 5
    os.utime(img, (future, future))
    third = gallery.build_gallery_stats(synth["manifest"], synth["root"], synth["gallery"], thumb_width=160)
    assert (third.thumbs_made, third.thumbs_reused) == (1, 5)
    after = {t.name: t.stat().st_mtime_ns for t in (synth["gallery"] / "thumbs").glob("*.jpg")}
    changed = [n for n in after if after[n] != before[n]]
    assert len(changed) == 1 and changed[0].startswith("IDa__sun__v0-")


def test_contact_sheet_grid_and_row_cap(synth):
    stats = gallery.build_gallery_stats(synth["manifest"], synth["root"], synth["gallery"])
    sheet = synth["gallery"] / "contact_sheet.png"
    with Image.open(sheet) as im:
        full = im.size
    # columns: source + (overcast v0, overcast v1, sun v0, sun v1)
    cw = gallery.CONTACT_CELL_W + 6
    assert full[0] == 5 * cw
    capped = gallery.build_gallery_stats(synth["manifest"], synth["root"], synth["gallery"], contact_max_rows=1)
    with Image.open(sheet) as im:
        # the first row (sorted: EVIL_ID) has no overcast v1: 1 + 3 columns, one row fewer
        assert im.width == 4 * cw and im.height < full[1]
    assert "first 1 of 2 source images" in capped.index.read_text()
    assert stats.rows == 2 and stats.tiles == 7


def test_entry_point_writes_the_gallery_and_one_line_without_a_manifest(synth, capsys, tmp_path):
    from types import SimpleNamespace

    cfg = {"data": {"output_dir": str(synth["out"]), "data_root": str(synth["root"]), "manifest": "manifest.csv"}}
    job = SimpleNamespace(
        config=cfg,
        input=[str(synth["manifest"])],
        output=[str(synth["out"] / "gallery" / "index.html")],
        log=[str(tmp_path / "gallery.log")],
        rule="report_gallery",
        wildcards={},
    )
    gallery.main(job)
    assert (synth["out"] / "gallery" / "index.html").is_file()
    assert (synth["out"] / "gallery" / "contact_sheet.png").is_file()
    assert "gallery:" in (tmp_path / "gallery.log").read_text() and "gallery:" in capsys.readouterr().err
    synth["manifest"].unlink()
    with pytest.raises(SystemExit) as stop:
        gallery.main(job)
    assert stop.value.code == 1
    assert (
        capsys.readouterr().err.strip()
        == f"report_gallery: {synth['manifest']}: manifest not found; run the pipeline first"
    )


# ------------------------------------------------------------------ headless Chromium
@pytest.mark.browser
def test_browser_loads_without_broken_images_and_filters(tmp_path):
    exe = find_chromium()
    s = make_synthetic(tmp_path)
    index = gallery.build_gallery(s["manifest"], s["root"], s["gallery"])

    rep = selftest(exe, index, "&status=failed")
    assert rep["js_errors"] == []
    assert rep["images"] == 6 and rep["broken"] == []
    assert (rep["tiles_total"], rep["source_tiles"], rep["variant_tiles"], rep["placeholders"]) == (9, 2, 7, 3)
    assert (rep["before"]["tiles"], rep["before"]["rows"]) == (7, 2)
    assert rep["after"]["by_status"] == {"failed": 1} and rep["after"]["rows"] == 1  # only the failed tile
    assert rep["after"]["summary"] == "showing 1 of 7 outputs in 1 of 2 source images"

    # the decision aids: rows sorted by QC risk (the row with a rejected output first), and a compare
    # control on every output that has a source thumbnail (flip to the source and back; wipe slider)
    risks = [r for _, r in rep["order"]]
    assert risks == sorted(risks, reverse=True) and risks[0] >= 3.0
    assert rep["flip"] == {"shows_source": True, "back": True}
    assert rep["wipe"] == {"overlay": True, "clip": "inset(0px 50% 0px 0px)"}

    rep = selftest(exe, index, "&aug=sun&status=success&status=rejected")
    assert rep["after"]["by_aug"] == {"sun": 4} and rep["after"]["by_status"] == {"success": 3, "rejected": 1}
    assert rep["after"]["rows"] == 2

    rep = selftest(exe, index, "&status=missing&aug=sun")  # no tile matches: every row hidden
    assert (rep["after"]["tiles"], rep["after"]["rows"]) == (0, 0)

    # the broken-image check is not vacuous: delete one thumbnail
    victim = sorted((s["gallery"] / "thumbs").glob("IDa__sun__v0-*.jpg"))[0]
    victim.unlink()
    rep = selftest(exe, index, "")
    assert rep["broken"] == [f"thumbs/{victim.name}"]


@pytest.mark.browser
def test_browser_screenshot(tmp_path):
    exe = find_chromium()
    s = make_synthetic(tmp_path)
    index = gallery.build_gallery(s["manifest"], s["root"], s["gallery"])
    shot = tmp_path / "gallery.png"
    run_chromium(exe, index.resolve().as_uri(), f"--screenshot={shot}", "--window-size=1400,900")
    with Image.open(shot) as im:
        assert im.size == (1400, 900)
        lo, hi = im.convert("L").getextrema()
        assert hi - lo > 100  # something was drawn


# ------------------------------------------------------------------ end to end
@pytest.mark.e2e
@pytest.mark.slow
def test_report_gallery_rule_on_the_sample(tmp_path):
    """The real snakemake on a copy of the workflow and of data/sample (images
    downscaled to 400x200 to keep it fast): report_gallery after the pipeline."""
    wf = copy_workflow(tmp_path / "wf")
    src = ROOT / "data" / "sample"
    dst = wf / "data" / "sample"
    (dst / "train").mkdir(parents=True)
    shutil.copy2(src / "train.csv", dst / "train.csv")
    for jpg in sorted((src / "train").glob("*.jpg")):
        with Image.open(jpg) as im:
            im.reduce(5).save(dst / "train" / jpg.name, quality=90)
    res = snakemake(wf, "-j", "4", "--configfile", "configs/sample.yaml", timeout=240)
    assert res.returncode == 0, res.stderr[-4000:]
    res = snakemake(wf, "report_gallery", "-j", "4", "--configfile", "configs/sample.yaml", timeout=240)
    assert res.returncode == 0, res.stderr[-4000:]
    assert "Rule: generate" not in res.stdout + res.stderr  # reviewing never generates
    gal = dst / "nano_banana_pro" / "train" / "gallery"
    text, page = parse(gal / "index.html")
    assert "gallery:" in res.stdout + res.stderr
    assert len(page.sections) == 7  # 8 sample images, one without Dry_Total_g
    assert len(page.sources()) == 7 and len(page.variants()) == 28
    for section in re.findall(r'<section class="row".*?</section>', text, re.S):
        assert section.count('<figure class="tile') == 5  # source + 4 augmentations
    # the page shows the manifest's statuses; every output is on disk (success or
    # rejected by the QC gate, which keeps the file), so every tile has a thumbnail
    with open(dst / "nano_banana_pro" / "train" / "manifest.csv", newline="") as fh:
        statuses = sorted(r["status"] for r in csv.DictReader(fh))
    assert sorted(f["data-status"] for f in page.variants()) == statuses
    assert set(statuses) <= {"success", "rejected"}
    assert len(list((gal / "thumbs").glob("*.jpg"))) == 35 == len(page.imgs)
    assert page.placeholders == 0
    assert (gal / "contact_sheet.png").is_file()


# ------------------------------------------------------------------ snakemake --report
@pytest.mark.e2e
@pytest.mark.browser
@pytest.mark.slow
def test_snakemake_report_shows_the_run_summary(tmp_path):
    """`snakemake --report` works from the install and carries the summary page
    (counts, cost, QC histograms, outputs beside sources); the HTML report renders in Chromium."""
    import zipfile

    from .helpers import make_dataset

    wf = copy_workflow(tmp_path / "wf")
    make_dataset(wf / "data", n=3, size=(200, 100))
    (wf / "run.yaml").write_text(
        yaml.safe_dump(
            {
                "api": {"provider": "local", "model": "recipes-v1"},
                "data": {"data_root": "data", "output_dir": "data/aug"},
                "augmentations": [{"name": "sun", "prompt": "p", "local": {"exposure": 0.3}}],
            }
        )
    )
    res = snakemake(wf, "-j", "4", "--configfile", "run.yaml", timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = (wf / "data" / "aug" / "report" / "summary.html").read_text()
    assert (
        "Outputs per status and augmentation" in summary and "<svg" in summary and "data:image/jpeg;base64," in summary
    )
    res = snakemake(wf, "--configfile", "run.yaml", "--report", "report.zip", timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    with zipfile.ZipFile(wf / "report.zip") as z:
        names = z.namelist()
        page = next(n for n in names if n.endswith("summary.html"))
        assert b"QC scores" in z.read(page)
    res = snakemake(wf, "--configfile", "run.yaml", "--report", "report.html", timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    exe = find_chromium()
    dom = run_chromium(exe, (wf / "report.html").resolve().as_uri(), "--dump-dom", "--virtual-time-budget=5000").stdout
    assert "Run summary" in dom, dom[-2000:]
