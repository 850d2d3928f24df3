"""What is written is what was checked: label-safe geometry (resize, match_aspect),
QC of the final image, and no stale outputs in training.  End to end against the
stand-in, which answers with Gemini 3 Pro Image's real pixel sizes per aspect
ratio (21:9 at 2K = 3168x1344, 16:9 at 1K = 1376x768)."""

from __future__ import annotations

import base64
import csv
import io

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from nano_banana_aug import postprocess, qc, training

from .helpers import make_paid_run, snakemake
from .standin.server import B

pytestmark = [pytest.mark.e2e, pytest.mark.slow]  # CI: pytest -m slow
pytest_plugins = ["tests.standin.fixtures"]

ONE = [{"name": "overcast", "prompt": "Make it overcast.", "num_images": 1}]
SIZE = (1000, 500)  # 2:1 like the CSIRO photos, smaller


def run(wf, *args, check=True):
    res = snakemake(wf, "-j", "4", "--configfile", "run.yaml", *args)
    if check and res.returncode != 0:
        raise AssertionError(res.stderr[-4000:])
    return res


def rows(wf):
    with open(wf / "data" / "aug" / "manifest.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def aligned(wf, row):
    """(shift as a fraction of the size, correlation of the outer 8 % columns) output vs source."""
    src = Image.open(wf / "data" / row["src_image_path"]).convert("RGB")
    out = Image.open(wf / "data" / row["image_path"]).convert("RGB")
    assert out.size == src.size
    scores = qc.score(src, out)
    a = np.asarray(src.convert("L"), dtype=float)
    b = np.asarray(out.convert("L"), dtype=float)
    edge = max(2, a.shape[1] * 8 // 100)
    corr = min(
        np.corrcoef(a[:, :edge].ravel(), b[:, :edge].ravel())[0, 1],
        np.corrcoef(a[:, -edge:].ravel(), b[:, -edge:].ravel())[0, 1],
    )
    return scores.shift_frac, corr


@pytest.mark.parametrize("provider", ["gemini", "openrouter"])
def test_match_aspect_writes_an_output_aligned_with_the_source(tmp_path, standin, provider):
    wf = make_paid_run(
        tmp_path,
        standin,
        provider=provider,
        n_images=2,
        augs=ONE,
        size=SIZE,
        match_aspect=True,
        extra={"postprocess": {"mode": "resize", "png_compress_level": 1}},
    )
    run(wf)
    req = standin.requests[0]
    if provider == "gemini":
        part = req.json["contents"][0]["parts"][0]["inlineData"]["data"]
        cfg = req.json["generationConfig"]["imageConfig"]
        assert cfg == {"aspectRatio": "21:9", "imageSize": "2K"}
    else:
        url = req.json["messages"][0]["content"][0]["image_url"]["url"]
        part = url.split(",", 1)[1]
        assert req.json["image_config"] == {"aspect_ratio": "21:9", "image_size": "2K"}
    sent = Image.open(io.BytesIO(base64.b64decode(part)))
    assert sent.size == (1167, 500)  # 2:1 padded to 21:9
    for r in rows(wf):
        assert r["status"] == "success", r["error"]
        assert (int(r["orig_w"]), int(r["orig_h"])) == (3168, 1344)  # 21:9 at 2K
        assert (int(r["out_w"]), int(r["out_h"])) == SIZE and float(r["area_scale"]) == 1.0
        assert r["geometry"].startswith("match_aspect 21:9") and r["pad_area_px"] == "0"
        shift, edge_corr = aligned(wf, r)
        assert shift < 0.005, shift  # pixel-aligned with the source
        assert edge_corr > 0.95, edge_corr  # the borders are the photo's, not mirrored strips


def test_an_aspect_ratio_in_image_config_is_passed_through_as_it_is(tmp_path, standin):
    """Defect: match_aspect (on by default) replaced the user's image_config.aspectRatio with its
    own 21:9, padded the source and ignored the pad geometry; the answer record said 4:3."""
    wf = make_paid_run(
        tmp_path,
        standin,
        n_images=1,
        augs=ONE,
        size=SIZE,
        match_aspect=True,
        image_config={"aspectRatio": "4:3", "imageSize": "1K"},
    )  # mode: pad, enforce 2.0
    run(wf)
    (req,) = standin.requests
    assert req.json["generationConfig"]["imageConfig"] == {"aspectRatio": "4:3", "imageSize": "1K"}
    part = req.json["contents"][0]["parts"][0]["inlineData"]["data"]
    assert Image.open(io.BytesIO(base64.b64decode(part))).size == SIZE  # the source as it is
    (r,) = rows(wf)
    assert r["status"] == "success" and r["geometry"].startswith("pad "), r
    assert int(r["aspect_w"]) == 2 * int(r["aspect_h"])


def test_resize_maps_the_16_9_answer_back_onto_the_source(tmp_path, standin):
    wf = make_paid_run(
        tmp_path,
        standin,
        n_images=2,
        augs=ONE,
        size=SIZE,
        extra={"postprocess": {"mode": "resize", "png_compress_level": 1}},
    )
    run(wf)
    assert "imageConfig" not in standin.requests[0].json["generationConfig"]
    for r in rows(wf):
        assert (int(r["orig_w"]), int(r["orig_h"])) == (1376, 768)
        assert (int(r["out_w"]), int(r["out_h"])) == SIZE and float(r["area_scale"]) == 1.0
        assert r["geometry"] == "resize 1376x768 -> 1000x500"
        shift, edge_corr = aligned(wf, r)
        assert shift < 0.005 and edge_corr > 0.95


def test_the_original_pad_geometry_stays_exact_for_configs_that_ask_for_it(tmp_path, standin):
    wf = make_paid_run(tmp_path, standin, n_images=1, augs=ONE, size=SIZE)  # mode: pad, enforce 2.0
    run(wf)
    (r,) = rows(wf)
    assert (r["aspect_w"], r["aspect_h"], r["pad_area_px"]) == ("1536", "768", "122880")
    assert float(r["area_scale"]) == pytest.approx(1536 / 1376)
    assert r["geometry"] == "pad 1376x768 -> 1536x768 -> 1536x768"


@pytest.mark.parametrize("edit", ["mirror", "shift"])
def test_qc_judges_the_final_image(tmp_path, standin, edit):
    wf = make_paid_run(
        tmp_path,
        standin,
        n_images=1,
        augs=ONE,
        size=SIZE,
        match_aspect=True,
        extra={"postprocess": {"mode": "resize", "png_compress_level": 1}},
    )
    standin.set_default("gemini", B("ok", edit=edit))
    run(wf, check=False)
    (r,) = rows(wf)
    assert r["status"] == "rejected" and r["error_reason"] == "QC_REJECTED", r


def test_removed_augmentations_are_orphaned_and_never_joined(tmp_path, standin):
    two = ONE + [{"name": "noise", "prompt": "Add sensor noise.", "num_images": 1}]
    wf = make_paid_run(tmp_path, standin, n_images=2, augs=two, size=(400, 200))
    run(wf)
    cfg = yaml.safe_load((wf / "run.yaml").read_text())
    cfg["augmentations"] = ONE
    (wf / "run.yaml").write_text(yaml.safe_dump(cfg))
    res = run(wf)
    assert "2 of augmentations or variants no longer in the config" in res.stderr
    got = {r["aug_name"]: r["status"] for r in rows(wf)}
    assert got == {"overcast": "success", "noise": "orphaned"}
    manifest = pd.read_csv(wf / "data" / "aug" / "manifest.csv", dtype=str, keep_default_na=False)
    selected, skipped = training.select_manifest_rows(manifest, ["ID1000", "ID1001"], None)
    assert set(selected["aug_name"]) == {"overcast"} and skipped["status:orphaned"] == 2


def test_stale_outputs_are_counted_and_regenerate_stale_pays_only_for_them(tmp_path, standin):
    wf = make_paid_run(
        tmp_path,
        standin,
        n_images=2,
        augs=ONE + [{"name": "noise", "prompt": "Add noise.", "num_images": 1}],
        size=(400, 200),
    )
    run(wf)
    assert len(standin.requests) == 4
    cfg = yaml.safe_load((wf / "run.yaml").read_text())
    cfg["augmentations"][0]["prompt"] = "Make it overcast and grey."
    cfg["postprocess"]["target_size"] = [600, 300]
    (wf / "run.yaml").write_text(yaml.safe_dump(cfg))
    res = run(wf)
    assert (
        "2 made with another provider/model/prompt (kept, left out of training until regenerate=stale pays for new ones)"
        in res.stderr
    )
    assert len(standin.requests) == 4  # nothing is paid unless asked
    # a post-processing change rebuilds every output from its answer, for free
    assert {(r["out_w"], r["out_h"]) for r in rows(wf)} == {("600", "300")}
    stale = {r["aug_name"]: r["stale"] for r in rows(wf)}
    assert stale == {"overcast": "model/prompt", "noise": ""}
    manifest = pd.read_csv(wf / "data" / "aug" / "manifest.csv", dtype=str, keep_default_na=False)
    selected, skipped = training.select_manifest_rows(manifest, ["ID1000", "ID1001"], None)
    assert set(selected["aug_name"]) == {"noise"} and skipped["stale"] == 2
    res = run(wf, "--config", "regenerate=stale")
    assert len(standin.requests) == 6  # the two stale overcast outputs, nothing else
    assert all(r["stale"] == "" for r in rows(wf))
    assert {(r["out_w"], r["out_h"]) for r in rows(wf)} == {("600", "300")}


def test_match_aspect_request_geometry():
    r = postprocess.match_aspect_request(2000, 1000)
    assert r["ratio"] == "21:9" and r["padded"] == [2333, 1000] and r["offset"] == [166, 0]
    assert postprocess.match_aspect_request(1000, 1000)["ratio"] == "1:1"
    tall = postprocess.match_aspect_request(500, 1000)  # 1:2 -> 9:16 (0.5625), columns added
    assert tall["ratio"] == "9:16" and tall["padded"] == [562, 1000]
    wide = postprocess.match_aspect_request(3000, 1000)  # wider than 21:9: rows added
    assert wide["ratio"] == "21:9" and wide["padded"] == [3000, 1286]
    g = postprocess.plan(3168, 1344, {}, source_size=(2000, 1000), region=r)
    assert (g.left, g.aspect_w, g.out_w, g.out_h, g.area_scale) == (225, 2716, 2000, 1000, 1.0)


@pytest.mark.parametrize(
    "pad", [{"pad_mode": "reflect"}, {"pad_mode": "constant", "pad_color": [0, 0, 0]}], ids=["reflect", "constant"]
)
def test_legacy_outputs_are_qc_checked_at_adoption(tmp_path, standin, pad):
    from nano_banana_aug import postprocess as pp

    postprocess = {"enforce_aspect_ratio": 2.0, "mode": "pad", "png_compress_level": 1, **pad}
    wf = make_paid_run(tmp_path, standin, n_images=2, augs=ONE, size=(400, 200), extra={"postprocess": postprocess})
    out = wf / "data" / "aug"
    out.mkdir(parents=True)
    # what the original tool wrote: the 16:9 answer padded to 2:1 as the config says; one of them mirrored
    for image_id, flip in (("ID1000", False), ("ID1001", True)):
        src = Image.open(wf / "data" / "train" / f"{image_id}.jpg").convert("RGB").resize((344, 192))
        geo = pp.plan(344, 192, {"enforce_aspect_ratio": 2.0, "mode": "pad"})
        img = pp.apply(src, geo, pad)
        (img.transpose(Image.FLIP_LEFT_RIGHT) if flip else img).save(out / f"{image_id}__overcast__v0.png")
    (out / "manifest.csv").write_text(
        "image_id,aug_name,variant_idx,src_image_path,image_path,status,error,ts,orig_w,orig_h,aspect_w,aspect_h\n"
        "ID1000,overcast,0,train/ID1000.jpg,aug/ID1000__overcast__v0.png,success,,100,344,192,384,192\n"
        "ID1001,overcast,0,train/ID1001.jpg,aug/ID1001__overcast__v0.png,success,,100,344,192,384,192\n"
    )
    run(wf, check=False)
    got = {r["image_id"]: r for r in rows(wf)}
    assert got["ID1000"]["status"] == "success" and got["ID1000"]["origin"] == "adopted"
    assert got["ID1001"]["status"] == "rejected" and "at adoption" in got["ID1001"]["error"]
    assert len(standin.requests) == 0  # adopted outputs are done: nothing paid
