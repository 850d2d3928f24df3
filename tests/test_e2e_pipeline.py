"""End to end: the real `snakemake` on temporary copies of the workflow, offline
(`local` provider) on a tiny CSIRO-style data set."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from .helpers import copy_workflow, make_dataset, snakemake, textured

pytestmark = pytest.mark.e2e

AUGS = [
    {"name": "bright", "prompt": "Brighter.", "num_images": 2, "local": {"exposure": [0.3, 0.6]}},
    {"name": "blur", "prompt": "Blur.", "num_images": 1, "local": {"gaussian_blur": 1.0}},
]


def make_run(tmp_path: Path, n_images=3, augs=AUGS, size=(200, 100), **extra) -> Path:
    wf = copy_workflow(tmp_path / "wf")
    make_dataset(wf / "data", n=n_images, size=size, missing_total=extra.pop("missing_total", ()))
    cfg = {
        "api": {"provider": "local", "model": "recipes-v1"},
        "data": {"data_root": "data", "output_dir": "data/aug"},
        "postprocess": {"enforce_aspect_ratio": 2.0, "png_compress_level": 1},
        "augmentations": augs,
    }
    cfg.update(extra)
    (wf / "run.yaml").write_text(yaml.safe_dump(cfg))
    return wf


def run(wf: Path, *args, check=True):
    res = snakemake(wf, "-j", "4", "--configfile", "run.yaml", *args)
    if check and res.returncode != 0:
        raise AssertionError(f"snakemake failed ({res.returncode}):\n{res.stderr[-4000:]}")
    return res


def outputs(wf: Path) -> dict[str, tuple[int, int]]:
    """name -> (inode, mtime_ns) of every output image."""
    out = wf / "data" / "aug"
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted(out.glob("*.png"))}


def manifest_rows(wf: Path) -> list[dict]:
    with open(wf / "data" / "aug" / "manifest.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def started(wf: Path) -> list[str]:
    log = (wf / "data" / "aug" / "augment.log").read_text().splitlines()
    return [line.split()[2] for line in log if line.split()[1:2] == ["started"]]


def test_full_run_then_nothing_to_do(tmp_path):
    wf = make_run(tmp_path)
    res = run(wf)
    assert "plan: 9 targets (3 images x 2 augmentations), 0 already done, 9 to generate" in res.stderr
    files = outputs(wf)
    assert len(files) == 9 and "ID1000__bright__v1.png" in files
    rows = manifest_rows(wf)
    assert len(rows) == 9 and {r["status"] for r in rows} == {"success"}
    row = next(r for r in rows if r["image_id"] == "ID1001" and r["aug_name"] == "blur")
    assert row["src_image_path"] == "train/ID1001.jpg"
    assert row["image_path"] == "aug/ID1001__blur__v0.png"  # relative to data_root
    assert (row["orig_w"], row["aspect_w"], row["out_w"], row["pad_area_px"], row["area_scale"]) == ("200", "200", "200", "0", "1.0")
    assert (wf / "data" / "aug" / "sidecars" / "ID1001__blur__v0.json").is_file()
    log = (wf / "data" / "aug" / "augment.log").read_text()
    assert log.count(" ok ") == 9 and "summary: 9 generated, 0 rejected by QC, 0 failed" in log

    again = run(wf)
    assert "9 already done, 0 to generate" in again.stderr
    assert "Rule: generate" not in again.stderr + again.stdout  # only the manifest is rebuilt
    assert outputs(wf) == files and len(started(wf)) == 9


def test_edits_never_regenerate(tmp_path):
    wf = make_run(tmp_path)
    run(wf)
    files = outputs(wf)
    time.sleep(1.1)
    data = wf / "data"
    for p in [data / "train.csv", *sorted((data / "train").glob("*.jpg"))]:
        p.touch()
    cfg = yaml.safe_load((wf / "run.yaml").read_text())
    cfg["augmentations"][0]["prompt"] = "Much brighter, with a new prompt."
    cfg["augmentations"][0]["local"] = {"exposure": 1.0}
    cfg["prompt_prefix"] = "Edited prefix."
    (wf / "run.yaml").write_text(yaml.safe_dump(cfg))
    (wf / "scripts" / "nano_banana_aug" / "postprocess.py").touch()  # "edited code"
    with open(wf / "rules" / "generate.smk", "a") as fh:
        fh.write("\n# an edit to the rules\n")
    res = run(wf)
    assert "0 to generate" in res.stderr
    assert outputs(wf) == files
    # re-running the checkpoint (forced) regenerates nothing either
    res = run(wf, "--forcerun", "targets")
    assert outputs(wf) == files
    assert len(started(wf)) == 9


def test_train_csv_edit_adds_new_images_only(tmp_path):
    wf = make_run(tmp_path, n_images=3)
    run(wf, "--config", "limit=2")
    files = outputs(wf)
    assert len(files) == 6 and not any(n.startswith("ID1002") for n in files)
    res = run(wf)
    assert "6 already done, 3 to generate" in res.stderr
    now = outputs(wf)
    assert len(now) == 9 and all(now[n] == files[n] for n in files)
    # a new image appended to train.csv is picked up; nothing else is redone
    textured(200, 100, 99).save(wf / "data" / "train" / "ID5000.jpg")
    with open(wf / "data" / "train.csv", "a") as fh:
        fh.write("ID5000__Dry_Total_g,train/ID5000.jpg,,,,,,Dry_Total_g,7\n")
    res = run(wf)
    assert "9 already done, 3 to generate" in res.stderr
    last = outputs(wf)
    assert len(last) == 12 and all(last[n] == now[n] for n in now)


def test_forcerun_and_regenerate_one_augmentation(tmp_path):
    wf = make_run(tmp_path, n_images=2)
    run(wf)
    first = outputs(wf)
    run(wf, "--config", "regenerate=blur")
    second = outputs(wf)
    changed = {n for n in first if first[n] != second[n]}
    assert changed == {n for n in first if "__blur__" in n}
    run(wf)  # without the option: nothing again
    assert outputs(wf) == second
    run(wf, "--forcerun", "generate")
    third = outputs(wf)
    assert all(third[n] != second[n] for n in second)
    assert len(manifest_rows(wf)) == 6


def test_limit_first_n_images(tmp_path):
    wf = make_run(tmp_path, n_images=3)
    res = run(wf, "--config", "limit=1")
    assert "plan: 3 targets (1 images x 2 augmentations)" in res.stderr
    assert sorted(outputs(wf)) == ["ID1000__blur__v0.png", "ID1000__bright__v0.png", "ID1000__bright__v1.png"]


def test_failing_target_keep_going_manifest_lists_it(tmp_path):
    wf = make_run(tmp_path, n_images=3)
    with open(wf / "data" / "train.csv", "a") as fh:
        fh.write("ID0999__Dry_Total_g,train/ID0999.jpg,,,,,,Dry_Total_g,3\n")  # source missing
        fh.write("ID2000__Dry_Total_g,../../outside.jpg,,,,,,Dry_Total_g,3\n")  # outside data_root
    res = run(wf, check=False)
    assert res.returncode != 0
    assert "unusable source, train.csv line 17, image ID0999: source image missing" in res.stderr
    assert len(outputs(wf)) == 9  # the others went on
    rows = manifest_rows(wf)
    failed = {(r["image_id"], r["aug_name"], r["variant_idx"]): r for r in rows if r["status"] == "failed"}
    assert len(failed) == 6 and len(rows) == 15
    err = failed[("ID2000", "blur", "0")]["error"]
    assert "outside data_root" in err and "train.csv line 18" in err
    assert len(failed[("ID0999", "bright", "1")]["error"]) <= 500
    # the next run retries only what is missing
    before = len(started(wf))
    res = run(wf, check=False)
    assert res.returncode != 0 and "9 already done, 6 to generate" in res.stderr
    assert len(started(wf)) - before == 6


def test_config_typo_stops_before_anything(tmp_path):
    wf = make_run(tmp_path)
    cfg = yaml.safe_load((wf / "run.yaml").read_text())
    cfg["postprocess"]["mdoe"] = "pad"
    (wf / "run.yaml").write_text(yaml.safe_dump(cfg))
    res = run(wf, check=False)
    assert res.returncode != 0
    assert "ERROR: unknown config key 'postprocess.mdoe'; did you mean 'postprocess.mode'? (allowed keys here:" in res.stderr
    assert "Traceback" not in res.stderr
    assert not (wf / "data" / "aug").exists() or not list((wf / "data" / "aug").glob("*.png"))


@pytest.mark.parametrize("how", ["SIGKILL process group", "Ctrl-C"])
def test_kill_mid_run_then_resume(tmp_path, how):
    augs = [{"name": "bright", "prompt": "p", "num_images": 8, "local": {"exposure": 0.5, "gaussian_blur": 2.0}}]
    wf = make_run(tmp_path, n_images=3, augs=augs, size=(1600, 800))
    proc = subprocess.Popen(
        [sys.executable, "-m", "snakemake", "-j", "2", "--configfile", "run.yaml"],
        cwd=wf, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    out = wf / "data" / "aug"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(out.glob("*.png"))) < 3:
        time.sleep(0.05)
    if how == "Ctrl-C":
        os.killpg(proc.pid, signal.SIGINT)  # what the terminal sends to the foreground group
        proc.wait(timeout=120)
    else:
        os.killpg(proc.pid, signal.SIGKILL)  # the whole process group, like a lost terminal
        proc.wait()
    done = outputs(wf)
    assert 3 <= len(done) < 24, "the kill must land mid-run"
    res = run(wf)
    assert f"{len(done)} already done, {24 - len(done)} to generate" in res.stderr
    final = outputs(wf)
    assert len(final) == 24 and all(final[n] == done[n] for n in done)
    assert not [p for p in out.iterdir() if p.name.startswith(".") and p.suffix == ".tmp"]
    assert len(manifest_rows(wf)) == 24


def test_killed_snakemake_alone_orphans_finish_and_count(tmp_path):
    """kill -9 of Snakemake only: its running jobs finish; next run keeps them and needs no --unlock."""
    augs = [{"name": "bright", "prompt": "p", "num_images": 6, "local": {"exposure": 0.5, "gaussian_blur": 2.0}}]
    wf = make_run(tmp_path, n_images=2, augs=augs, size=(1600, 800))
    proc = subprocess.Popen([sys.executable, "-m", "snakemake", "-j", "2", "--configfile", "run.yaml"],
                            cwd=wf, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = wf / "data" / "aug" / "augment.log"
    deadline = time.time() + 120
    while time.time() < deadline and (not log.exists() or "started" not in log.read_text()):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(3)  # let the orphaned jobs finish
    done = outputs(wf)
    res = run(wf)
    assert "Directory cannot be locked" not in res.stderr
    final = outputs(wf)
    assert len(final) == 12 and all(final[n] == done[n] for n in done)
    assert len(started(wf)) == 12  # nothing was generated twice


def test_legacy_output_dir_adopted(tmp_path):
    wf = make_run(tmp_path, n_images=2, augs=[{"name": "sun", "prompt": "p", "local": {"exposure": 0.3}}])
    out = wf / "data" / "aug"
    out.mkdir(parents=True)
    textured(172, 96, 7).save(out / "ID1000__sun__v0.png")
    (out / "manifest.csv").write_text(
        "image_id,aug_name,variant_idx,src_image_path,image_path,status,error,ts\n"
        "ID1000,sun,0,train/ID1000.jpg,aug/ID1000__sun__v0.png,success,,100\n"
        "ID1000,sun,0,train/ID1000.jpg,aug/ID1000__sun__v0.png,success,,200\n"
    )
    before = outputs(wf)
    res = run(wf)
    assert "1 already done, 1 to generate" in res.stderr
    assert outputs(wf)["ID1000__sun__v0.png"] == before["ID1000__sun__v0.png"]
    rows = {r["image_id"]: r for r in manifest_rows(wf)}
    assert rows["ID1000"]["ts"] == "200.0" and rows["ID1000"]["origin"] == "adopted" and rows["ID1000"]["area_scale"] == "1.0"
    assert rows["ID1001"]["status"] == "success" and rows["ID1001"]["origin"] == "generated"


def test_bundled_sample_twice(tmp_path):
    """The README's first command on the bundled sample; the second run generates nothing."""
    import shutil

    from .helpers import ROOT

    wf = copy_workflow(tmp_path / "wf")
    shutil.copytree(ROOT / "data" / "sample", wf / "data" / "sample", ignore=shutil.ignore_patterns("nano_banana_pro"))
    first = snakemake(wf, "-j", "8", "--configfile", "configs/sample.yaml", timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "plan: 28 targets (7 images x 4 augmentations), 0 already done, 28 to generate" in first.stderr
    out = wf / "data" / "sample" / "nano_banana_pro" / "train"
    with open(out / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 28 and {r["status"] for r in rows} <= {"success", "rejected"}
    assert {r["image_id"] for r in rows}.isdisjoint({"ID1591513760"})  # the image without Dry_Total_g
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")}
    second = snakemake(wf, "-j", "8", "--configfile", "configs/sample.yaml", timeout=600)
    assert second.returncode == 0
    assert "28 already done, 0 to generate" in second.stderr and "Rule: generate" not in second.stderr + second.stdout
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")} == before


def test_image_ids_that_cannot_name_a_file_are_recorded_as_bad_rows(tmp_path):
    from .helpers import TARGET_NAMES

    wf = make_run(tmp_path, n_images=2)
    csv_path = wf / "data" / "train.csv"
    src = wf / "data" / "train" / "ID1000.jpg"
    lines = csv_path.read_text().splitlines()
    for bad in ("ID{x}", "-ID9"):
        lines += [f"{bad}__{t},train/ID1000.jpg,2015/09/04,Tas,Ryegrass,0.62,4.0,{t},1.5" for t in TARGET_NAMES]
    csv_path.write_text("\n".join(lines) + "\n")
    assert src.exists()
    res = run(wf, check=False)
    assert res.returncode == 0, res.stderr[-3000:]  # the other images are augmented; the run does not abort
    assert "image id cannot name an output file" in res.stderr
    rows = manifest_rows(wf)
    bad = [r for r in rows if r["error_reason"] == "BAD_IMAGE_ID"]
    assert sorted({r["image_id"] for r in bad}) == ["-ID9", "ID{x}"] and {r["status"] for r in bad} == {"failed"}
    assert {r["status"] for r in rows if r["error_reason"] != "BAD_IMAGE_ID"} <= {"success", "rejected"}


def test_touch_in_a_fresh_directory_says_what_to_do(tmp_path):
    wf = make_run(tmp_path, n_images=1)
    res = run(wf, "--touch", check=False)
    assert res.returncode != 0
    assert "--touch only marks outputs that exist as up to date" in res.stderr
    assert "Traceback" not in res.stderr
    assert not list((wf / "data").glob("aug/*.png"))


def test_a_path_with_spaces_and_snakemake_from_a_venv_that_is_not_activated(tmp_path):
    """`/path with spaces/.venv/bin/snakemake …` without activating the venv: the jobs run with
    the interpreter that runs Snakemake, and every path in a shell command is quoted."""
    exe = Path(sys.executable).parent / "snakemake"
    if not exe.exists():
        pytest.skip("no snakemake script next to the interpreter")
    wf = make_run(tmp_path / "dir with spaces", n_images=2)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = "/usr/bin:/bin"  # no venv on PATH
    res = subprocess.run([str(exe), "-j", "2", "--configfile", "run.yaml"], cwd=wf, capture_output=True, text=True,
                         env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = manifest_rows(wf)
    assert len(rows) == 6 and {r["status"] for r in rows} <= {"success", "rejected"}
