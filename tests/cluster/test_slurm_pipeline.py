"""The real pipeline through profiles/slurm on a real single-node SLURM.

Start the cluster first: bash tests/cluster/start_slurm.sh (as root; .ci/run does).
"""

from __future__ import annotations

import csv
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.helpers import copy_workflow, make_dataset, snakemake
from tests.standin.server import B

from .test_slurm_smoke import slurm  # noqa: F401  (fixture: fails in CI without SLURM)

pytestmark = [pytest.mark.slurm, pytest.mark.e2e]
pytest_plugins = ["tests.standin.fixtures"]

REPO = Path(__file__).resolve().parents[2]
VOLATILE = {"ts", "seconds", "api_seconds", "qc_seconds", "host", "slurm_job_id"}
# generate jobs grouped 7 to a cluster job (what the README recommends at scale)
GROUPING = ["--groups", "generate=gen", "--group-components", "gen=7", "--set-resources", "generate:runtime=10"]


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _sample_copy(dest: Path) -> Path:
    wf = copy_workflow(dest)
    shutil.copytree(REPO / "data" / "sample", wf / "data" / "sample",
                    ignore=shutil.ignore_patterns("nano_banana_pro"))
    return wf


def test_sample_pipeline_through_slurm_matches_local_run(tmp_path, slurm):  # noqa: F811
    local = _sample_copy(tmp_path / "local")
    res = snakemake(local, "-j", "2", "--configfile", "configs/sample.yaml", timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]

    cluster = _sample_copy(tmp_path / "cluster")
    res = snakemake(cluster, "--workflow-profile", str(cluster / "profiles" / "slurm"),
                    "--configfile", "configs/sample.yaml", *GROUPING, timeout=900)
    assert res.returncode == 0, res.stderr[-4000:]

    out_l = local / "data" / "sample" / "nano_banana_pro" / "train"
    out_c = cluster / "data" / "sample" / "nano_banana_pro" / "train"
    rows_l, rows_c = _rows(out_l / "manifest.csv"), _rows(out_c / "manifest.csv")
    assert len(rows_c) == len(rows_l) == 28
    # every generate job ran inside a SLURM job; the light rules ran here
    job_ids = {r["slurm_job_id"] for r in rows_c}
    assert "" not in job_ids and len(job_ids) == 4  # 28 targets in groups of 7
    assert all(r["slurm_job_id"] == "" for r in rows_l)
    seen = subprocess.run(["squeue", "--states=all", "-h", "-o", "%i %j %T"], capture_output=True, text=True).stdout
    for job in job_ids:
        assert f"{job} nanobanana_" in seen and "COMPLETED" in seen
    # same outputs (bytes) and same manifest, timestamps and timings aside
    for rl, rc in zip(rows_l, rows_c):
        assert {k: v for k, v in rl.items() if k not in VOLATILE} == {k: v for k, v in rc.items() if k not in VOLATILE}
        assert _digest(out_l / Path(rl["image_path"]).name) == _digest(out_c / Path(rc["image_path"]).name)


def test_api_key_never_reaches_slurm_job_scripts_or_logs(tmp_path, slurm, standin):  # noqa: F811
    wf = copy_workflow(tmp_path / "wf")
    make_dataset(wf / "data", n=2, size=(200, 100))
    cfg = {
        "api": {"provider": "gemini", "base_url": standin.gemini_base_url, "concurrency": 1,
                "max_retries": 2, "retry_backoff_s": 0.1, "timeout_s": 20},
        "data": {"data_root": "data", "output_dir": "data/aug"},
        "augmentations": [{"name": "overcast", "prompt": "Overcast.", "num_images": 2}],
    }
    (wf / "run.yaml").write_text(yaml.safe_dump(cfg))
    (wf / "gemini.secret").write_text(standin.api_key)
    standin.script("gemini", B("overloaded"))  # one retried call inside a cluster job
    res = snakemake(wf, "--workflow-profile", str(wf / "profiles" / "slurm"), "--configfile", "run.yaml",
                    "--groups", "generate=gen", "--group-components", "gen=4",
                    "--set-resources", "generate:runtime=10", timeout=900)
    assert res.returncode == 0, res.stderr[-4000:]
    rows = _rows(wf / "data" / "aug" / "manifest.csv")
    assert len(rows) == 4 and {r["status"] for r in rows} == {"success"}
    job_ids = {r["slurm_job_id"] for r in rows}
    assert "" not in job_ids
    assert len(standin.requests) == 5 and standin.max_in_flight == 1  # api.concurrency across the cluster
    key = standin.api_key.encode()
    for job in job_ids:  # the job scripts SLURM kept
        script = subprocess.run(["scontrol", "write", "batch_script", job, "-"], capture_output=True)
        assert script.returncode == 0 and b"snakemake" in script.stdout
        assert key not in script.stdout
    leaks = []
    for dirpath, _dirs, names in os.walk(wf):
        for name in names:
            p = Path(dirpath) / name
            if p.name != "gemini.secret" and key in p.read_bytes():
                leaks.append(str(p))
    for logdir in (Path("/var/log/slurm"),):
        for p in logdir.rglob("*"):
            if p.is_file() and key in p.read_bytes():
                leaks.append(str(p))
    assert leaks == [] and standin.api_key not in res.stderr + res.stdout
    assert standin.key_leaks(standin.api_key) == []


def test_failed_group_member_keeps_finished_outputs(tmp_path, slurm):  # noqa: F811
    """A failing member ends its group job; finished members' outputs survive and are never redone."""
    wf = copy_workflow(tmp_path / "wf")
    make_dataset(wf / "data", n=3, size=(200, 100))
    with open(wf / "data" / "train.csv", "a") as fh:
        fh.write("ID0500__Dry_Total_g,train/ID0500.jpg,,,,,,Dry_Total_g,3\n")  # source missing (for now)
    cfg = {"api": {"provider": "local", "model": "recipes-v1"},
           "data": {"data_root": "data", "output_dir": "data/aug"},
           "augmentations": [{"name": "sun", "prompt": "p", "num_images": 1, "local": {"exposure": 0.3}}]}
    (wf / "run.yaml").write_text(yaml.safe_dump(cfg))
    args = ["--workflow-profile", str(wf / "profiles" / "slurm"), "--configfile", "run.yaml",
            "--groups", "generate=gen", "--group-components", "gen=4", "--set-resources", "generate:runtime=10"]
    res = snakemake(wf, *args, timeout=900)
    assert res.returncode != 0
    out = wf / "data" / "aug"
    first = {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")}
    # the source appears; the next run generates only what is missing
    import shutil as _sh

    _sh.copy(wf / "data" / "train" / "ID1000.jpg", wf / "data" / "train" / "ID0500.jpg")
    res = snakemake(wf, *args, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    final = {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")}
    assert len(final) == 4 and all(final[n] == first[n] for n in first)
    log = (out / "augment.log").read_text().splitlines()
    ok_lines = [line.split()[2] for line in log if line.split()[1:2] == ["ok"]]
    assert sorted(ok_lines) == sorted(n[: -len('.png')] for n in final)  # each output produced exactly once
