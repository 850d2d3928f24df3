"""End to end: the real `snakemake` on temporary copies of the workflow, offline
(`local` provider) on a tiny CSIRO-style data set.

Most tests start from one finished run made per session (``local_finished``)
and copy it; nothing waits for time to pass except where an mtime must move."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .helpers import (
    ROOT,
    clone,
    copy_workflow,
    edit_config,
    jobs_run,
    local_hold_env,
    log_text,
    make_run,
    outputs,
    rows,
    run,
    said,
    start,
    textured,
    wait_for,
)

pytestmark = pytest.mark.e2e


def answers_bought(wf) -> int:
    return len(list((wf / "data" / "aug" / "answers").glob("*/v*.json")))


def made(wf) -> int:
    """Outputs written so far (augment.log: one `ok` line per output built)."""
    return log_text(wf).count(" ok ")


def test_full_run_then_nothing_to_do(local_finished, tmp_path):
    wf = clone(local_finished, tmp_path / "wf")
    files = outputs(wf)
    assert len(files) == 9 and "ID1000__bright__v1.png" in files
    got = rows(wf)
    assert len(got) == 9 and {r["status"] for r in got} == {"success"}
    row = next(r for r in got if r["image_id"] == "ID1001" and r["aug_name"] == "blur")
    assert row["src_image_path"] == "train/ID1001.jpg"
    assert row["image_path"] == "aug/ID1001__blur__v0.png"  # relative to data_root
    assert (row["orig_w"], row["aspect_w"], row["out_w"], row["pad_area_px"], row["area_scale"]) == (
        "200",
        "200",
        "200",
        "0",
        "1.0",
    )
    assert (row["answer_id"], row["answer_source"]) == ("v1", "local")
    assert (wf / "data" / "aug" / "sidecars" / "ID1001__blur__v0.json").is_file()
    log = log_text(wf)
    assert "plan: 9 targets (3 images x 2 augmentations), 0 already done, 9 to generate" in log
    assert log.count(" ok ") == 9 and "summary: 9 generated, 0 rejected by QC, 0 failed" in log
    again = run(wf)
    assert "Nothing to be done" in said(again) and "9 already done, 0 to generate" in again.stderr
    assert outputs(wf) == files
    dry = run(wf, "-n")
    assert "Nothing to be done" in said(dry)


def test_the_settings_every_output_waits_for_come_before_answer_jobs(tmp_path):
    """Every generate job (and every manifest part) needs a settings file. Tied with the answer
    jobs, it ran whenever the scheduler happened to pick it: a paid run of 96 targets (L = 5 s,
    C = 8, -j 16) bought answers for 33 s before the first output could be made, then spent 10 s
    with every job place making outputs and no call in flight. So they are asked for at the
    start, beside the targets checkpoint, before any answer job exists (among many ready jobs the
    scheduler looks at a sample of 300, whatever their priority), and they outrank answer jobs.
    With one job place the order of Snakemake's choice shows directly."""
    import re

    wf = make_run(tmp_path)
    first = run(wf, "-n")
    assert jobs_run(first, "settings") == 2 and jobs_run(first, "targets") == 1 and not jobs_run(first, "answer")
    run(wf, jobs="1")
    log = next((wf / ".snakemake" / "log").glob("*.snakemake.log")).read_text()
    order = re.findall(r"^(?:local)?rule (\w+):", log, re.M)
    assert order.count("settings") == 2 and order.count("answer") == 9 and order.count("generate") == 9
    assert order.index("answer") > max(i for i, rule in enumerate(order) if rule == "settings"), order
    # a ready output is made before the next answer is bought
    assert order[order.index("answer") :][:6] == ["answer", "generate"] * 3, order


def test_edits_never_regenerate(local_finished, tmp_path):
    wf = clone(local_finished, tmp_path / "wf")
    files = outputs(wf)
    time.sleep(1.1)  # mtimes must be able to move
    data = wf / "data"
    for p in [data / "train.csv", *sorted((data / "train").glob("*.jpg"))]:
        p.touch()

    def edit(cfg):
        cfg["augmentations"][0]["prompt"] = "Much brighter, with a new prompt."
        cfg["augmentations"][0]["local"] = {"exposure": 1.0}
        cfg["prompt_prefix"] = "Edited prefix."

    edit_config(wf, edit)
    (wf / "scripts" / "nano_banana_aug" / "generate.py").touch()  # "edited code"
    with open(wf / "rules" / "generate.smk", "a") as fh:
        fh.write("\n# an edit to the rules\n")
    res = run(wf)
    assert made(wf) == 9 and answers_bought(wf) == 9, res.stderr[-3000:]
    assert outputs(wf) == files
    # only the manifest is rebuilt: it says which outputs were asked otherwise than the config says
    # now (the prefix is part of every prompt: all 9), so that they stay out of training
    assert [r["stale"] for r in rows(wf)] == ["model/prompt"] * 9, res.stderr[-3000:]
    res = run(wf, "--forcerun", "targets")  # re-running the checkpoint regenerates nothing either
    assert outputs(wf) == files and answers_bought(wf) == 9


@pytest.mark.slow  # CI: pytest -m slow
def test_train_csv_edits_add_new_images_only(tmp_path):
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


def test_a_new_train_csv_with_an_old_mtime_is_followed(tmp_path):
    """Defect: the targets table followed train.csv's mtime only; data arriving with an older mtime
    (as unzip leaves it) was not seen. The table follows data_root, train_csv, primary_targets,
    limit and the content of train.csv."""
    wf = make_run(tmp_path, n_images=2)
    res = run(wf, "-n")  # no table yet: a dry-run cannot see past the checkpoint
    assert jobs_run(res, "targets") == 1 and "plan:" not in res.stderr
    assert "note: no targets table for these data settings and train.csv yet" in res.stderr
    run(wf, "--until", "targets")
    res = run(wf, "-n")
    assert "plan: 6 targets (2 images x 2 augmentations)" in res.stderr and jobs_run(res, "answer") == 6
    assert "note: no targets table" not in res.stderr
    csv_path = wf / "data" / "train.csv"
    old = csv_path.stat().st_mtime
    csv_path.write_text(csv_path.read_text() + "ID2000__Dry_Total_g,train/ID1000.jpg,,,,,,Dry_Total_g,1\n")
    os.utime(csv_path, (old - 3600, old - 3600))  # older than the table
    res = run(wf, "-n")
    assert jobs_run(res, "targets") == 1  # the table is made again
    assert "`snakemake plan` makes it and prints the plan" in res.stderr
    run(wf, "--until", "targets")
    res = run(wf, "-n")
    assert "plan: 9 targets (3 images x 2 augmentations)" in res.stderr and jobs_run(res, "answer") == 9
    # the selection follows limit (taken from the table while the DAG is built)
    res = run(wf, "-n", "--config", "limit=1")
    assert "plan: 3 targets (1 images x 2 augmentations)" in res.stderr and jobs_run(res, "answer") == 3
    # and data_root: another data set is another table
    shutil.copytree(wf / "data", wf / "other")
    res = run(wf, "-n", "--config", 'data={"data_root": "other", "output_dir": "data/aug"}')
    assert jobs_run(res, "targets") == 1


def test_regenerate_one_augmentation_and_free_rebuilds(local_finished, tmp_path):
    wf = clone(local_finished, tmp_path / "wf")
    first = outputs(wf)
    res = run(wf, "--config", "regenerate=blur")
    assert answers_bought(wf) == 12 and "regenerate=blur: 3 outputs get a new answer" in res.stderr
    second = outputs(wf)
    assert {n for n in first if first[n] != second[n]} == {n for n in first if "__blur__" in n}
    assert {r["answer_id"] for r in rows(wf) if r["aug_name"] == "blur"} == {"v2"}
    res = run(wf)  # without the option: nothing again
    assert "Nothing to be done" in said(res) and outputs(wf) == second
    # --forcerun generate rebuilds every output from its answer: no answer is bought
    res = run(wf, "--forcerun", "generate")
    assert made(wf) == 9 + 3 + 9 and answers_bought(wf) == 12
    # a change of the post-processing rebuilds every output by itself, for free
    edit_config(wf, lambda cfg: cfg["postprocess"].update(target_size=[100, 50]))
    res = run(wf)
    assert made(wf) == 9 + 3 + 9 + 9 and answers_bought(wf) == 12
    assert {(r["out_w"], r["out_h"]) for r in rows(wf)} == {("100", "50")}


def test_limit_first_n_images(local_finished, tmp_path):
    wf = clone(local_finished, tmp_path / "wf")
    res = run(wf, "-n", "--config", "limit=1")
    assert "plan: 3 targets (1 images x 2 augmentations), 3 already done" in res.stderr


def test_unusable_sources_get_failed_rows_and_no_job(tmp_path):
    wf = make_run(tmp_path, n_images=3)
    with open(wf / "data" / "train.csv", "a") as fh:
        fh.write("ID0999__Dry_Total_g,train/ID0999.jpg,,,,,,Dry_Total_g,3\n")  # source missing
        fh.write("ID2000__Dry_Total_g,../../outside.jpg,,,,,,Dry_Total_g,3\n")  # outside data_root
    res = run(wf)
    assert "unusable source, train.csv line 17, image ID0999: source image missing" in res.stderr
    assert len(outputs(wf)) == 9  # the others went on
    got = rows(wf)
    failed = {(r["image_id"], r["aug_name"], r["variant_idx"]): r for r in got if r["status"] == "failed"}
    assert len(failed) == 6 and len(got) == 15
    err = failed[("ID2000", "blur", "0")]["error"]
    assert "outside data_root" in err and "train.csv line 18" in err
    assert {r["error_reason"] for r in failed.values()} == {"BAD_SOURCE"}
    assert answers_bought(wf) == 9  # nothing was asked for the unusable ones


def test_config_typo_stops_before_anything(tmp_path):
    wf = make_run(tmp_path)
    edit_config(wf, lambda cfg: cfg["postprocess"].update(mdoe="pad"))
    res = run(wf, check=False)
    assert res.returncode != 0
    assert (
        "ERROR: unknown config key 'postprocess.mdoe'; did you mean 'postprocess.mode'? (allowed keys here:"
        in res.stderr
    )
    assert "Traceback" not in res.stderr
    assert not (wf / "data" / "aug").exists()


@pytest.mark.parametrize("how", ["SIGKILL process group", pytest.param("Ctrl-C", marks=pytest.mark.slow)])
def test_kill_mid_run_then_resume(tmp_path, how):
    wf = make_run(tmp_path, n_images=3)
    hold = tmp_path / "hold"
    hold.touch()
    proc = start(wf, env=local_hold_env(hold), jobs="2")
    wait_for(lambda: len(list(tmp_path.glob("hold.*"))) >= 2, "two answer jobs in the middle of their work")
    (wf / "data" / "aug").mkdir(exist_ok=True)
    if how == "Ctrl-C":
        os.killpg(proc.pid, signal.SIGINT)  # what the terminal sends to the foreground group
        proc.wait(timeout=120)
    else:
        os.killpg(proc.pid, signal.SIGKILL)  # the whole process group, like a lost terminal
        proc.wait()
        refused = run(wf, check=False)  # Snakemake's own lock stays after a kill -9: as in every workflow
        assert refused.returncode != 0 and "cannot be locked" in refused.stderr
        run(wf, "--unlock")
    hold.unlink()
    done = outputs(wf)
    res = run(wf)
    final = outputs(wf)
    assert len(final) == 9 and all(final[n] == done[n] for n in done)
    assert f"{len(done)} already done" in res.stderr
    out = wf / "data" / "aug"
    assert not [p for p in out.rglob(".*.tmp")]
    assert len(rows(wf)) == 9 and answers_bought(wf) == 9  # no answer bought twice


def test_killed_snakemake_alone_orphans_finish_and_nothing_is_made_twice(tmp_path):
    """kill -9 of Snakemake only: its running jobs finish; after `--unlock` the next run keeps their
    answers and outputs."""
    wf = make_run(tmp_path, n_images=3)
    hold = tmp_path / "hold"
    hold.touch()
    proc = start(wf, env=local_hold_env(hold), jobs="2")
    wait_for(lambda: len(list(tmp_path.glob("hold.*"))) >= 2, "two answer jobs at work")
    proc.send_signal(signal.SIGKILL)  # Snakemake only: the two jobs go on
    proc.wait()
    held = {p.name.split(".", 1)[1] for p in tmp_path.glob("hold.*")}
    hold.unlink()
    answers = wf / "data" / "aug" / "answers"
    wait_for(lambda: all((answers / s / "v1.json").exists() for s in held), "the orphaned jobs to store their answers")
    res = run(wf, check=False)
    if "cannot be locked" in res.stderr:
        run(wf, "--unlock")
        res = run(wf)
    assert res.returncode == 0, res.stderr[-3000:]
    assert len(outputs(wf)) == 9 and answers_bought(wf) == 9
    assert log_text(wf).count(" started ") == 9  # every answer was made once


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
    assert "1 outputs without answers (made by the original tool) are kept" in res.stderr
    assert answers_bought(wf) == 1  # ID1001 only
    assert outputs(wf)["ID1000__sun__v0.png"] == before["ID1000__sun__v0.png"]
    got = {r["image_id"]: r for r in rows(wf)}
    assert (
        got["ID1000"]["ts"] == "200.0" and got["ID1000"]["origin"] == "adopted" and got["ID1000"]["area_scale"] == "1.0"
    )
    assert got["ID1001"]["status"] == "success" and got["ID1001"]["origin"] == "generated"
    assert "Nothing to be done" in said(run(wf))


def test_a_limited_run_keeps_every_row_of_the_original_tools_manifest(tmp_path):
    """`limit` on a directory of the original tool: the images outside the limit keep their
    manifest rows (and the values only those rows hold), also in the full run after it."""
    wf = make_run(tmp_path, n_images=3, augs=[{"name": "sun", "prompt": "p", "local": {"exposure": 0.3}}])
    out = wf / "data" / "aug"
    out.mkdir(parents=True)
    lines = ["image_id,aug_name,variant_idx,src_image_path,image_path,status,error,ts,pad_area_px,area_scale"]
    for i in range(3):
        textured(172, 96, 7 + i).save(out / f"ID100{i}__sun__v0.png")
        lines.append(f"ID100{i},sun,0,train/ID100{i}.jpg,aug/ID100{i}__sun__v0.png,success,,100,1234,1.05")
    (out / "manifest.csv").write_text("\n".join(lines) + "\n")
    for args in (("--config", "limit=1"), ()):
        run(wf, *args)
        got = {r["image_id"]: r for r in rows(wf)}
        assert sorted(got) == ["ID1000", "ID1001", "ID1002"], args
        assert {(r["origin"], r["area_scale"], r["pad_area_px"]) for r in got.values()} == {("adopted", "1.05", "1234")}
    assert answers_bought(wf) == 0


@pytest.mark.slow  # CI: pytest -m slow (the README's first command, twice)
def test_bundled_sample_twice(tmp_path):
    """The README's first command on the bundled sample; the second run has nothing to do."""
    wf = copy_workflow(tmp_path / "wf")
    shutil.copytree(ROOT / "data" / "sample", wf / "data" / "sample", ignore=shutil.ignore_patterns("nano_banana_pro"))
    first = run(wf, config="configs/sample.yaml", timeout=600)
    assert "plan: 28 targets (7 images x 4 augmentations), 0 already done, 28 to generate" in first.stderr
    out = wf / "data" / "sample" / "nano_banana_pro" / "train"
    got = rows(wf, "data/sample/nano_banana_pro/train")
    assert len(got) == 28 and {r["status"] for r in got} <= {"success", "rejected"}
    assert {r["image_id"] for r in got}.isdisjoint({"ID1591513760"})  # the image without Dry_Total_g
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")}
    second = run(wf, config="configs/sample.yaml", timeout=600)
    assert "Nothing to be done" in said(second)
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")} == before


def test_image_ids_that_cannot_name_a_file_are_recorded_as_bad_rows(tmp_path):
    from .helpers import TARGET_NAMES

    wf = make_run(tmp_path, n_images=2)
    csv_path = wf / "data" / "train.csv"
    lines = csv_path.read_text().splitlines()
    for bad in ("ID{x}", "-ID9"):
        lines += [f"{bad}__{t},train/ID1000.jpg,2015/09/04,Tas,Ryegrass,0.62,4.0,{t},1.5" for t in TARGET_NAMES]
    csv_path.write_text("\n".join(lines) + "\n")
    res = run(wf)
    assert "image id cannot name an output file" in res.stderr
    got = rows(wf)
    bad = [r for r in got if r["error_reason"] == "BAD_IMAGE_ID"]
    assert sorted({r["image_id"] for r in bad}) == ["-ID9", "ID{x}"] and {r["status"] for r in bad} == {"failed"}
    assert {r["status"] for r in got if r["error_reason"] != "BAD_IMAGE_ID"} <= {"success", "rejected"}


@pytest.mark.parametrize(
    "content, says",
    [
        ("sample_id,image_path,target_name,target\n", "has a header and no rows"),
        (
            "sample_id,image,target_name,target\nID1__Dry_Total_g,train/a.jpg,Dry_Total_g,1\n",
            "missing column(s) image_path",
        ),
        ('a,b\n"unterminated\n', "cannot be read as CSV"),
    ],
)
def test_bad_train_csv_is_one_clear_line(tmp_path, content, says):
    wf = make_run(tmp_path, n_images=1)
    (wf / "data" / "train.csv").write_text(content)
    res = run(wf, check=False)
    assert res.returncode != 0
    lines = [line for line in res.stderr.splitlines() if says in line]
    assert len(lines) == 1 and lines[0].startswith("targets: ") and "Traceback" not in res.stderr, res.stderr[-2000:]


def test_touch_in_a_fresh_directory_says_what_to_do(tmp_path):
    wf = make_run(tmp_path, n_images=1)
    res = run(wf, "--touch", check=False)
    assert "Traceback" not in res.stderr
    assert not list((wf / "data").glob("aug/*.png"))


def test_a_path_with_spaces_and_snakemake_from_a_venv_that_is_not_activated(tmp_path):
    """`/path with spaces/.venv/bin/snakemake …` without activating the venv: the jobs run with
    the interpreter that runs Snakemake."""
    exe = Path(sys.executable).parent / "snakemake"
    if not exe.exists():
        pytest.skip("no snakemake script next to the interpreter")
    wf = make_run(tmp_path / "dir with spaces", n_images=2)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = "/usr/bin:/bin"  # no venv on PATH
    res = subprocess.run(
        [str(exe), "-j", "2", "--configfile", "run.yaml"], cwd=wf, capture_output=True, text=True, env=env, timeout=300
    )
    assert res.returncode == 0, res.stderr[-3000:]
    got = rows(wf)
    assert len(got) == 6 and {r["status"] for r in got} <= {"success", "rejected"}


def test_an_output_or_sidecar_deleted_by_hand_is_rebuilt_from_its_answer(local_finished, tmp_path):
    wf = clone(local_finished, tmp_path / "wf")
    out = wf / "data" / "aug"
    (out / "ID1000__blur__v0.png").unlink()
    (out / "sidecars" / "ID1001__bright__v1.json").unlink()
    res = run(wf)
    assert (out / "ID1000__blur__v0.png").is_file() and (out / "sidecars" / "ID1001__bright__v1.json").is_file()
    assert made(wf) == 9 + 2 and answers_bought(wf) == 9, res.stderr[-2000:]
    run(wf)  # the shard's manifest part follows once more
    assert "Nothing to be done" in said(run(wf))
