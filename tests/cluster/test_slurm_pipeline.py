"""The real pipeline through profiles/slurm on a real single-node SLURM.

Start the cluster first: bash tests/cluster/start_slurm.sh (as root; .ci/run does).

Rules `answer` (paid) and `generate` (free) form the group "target" (the profile's
`groups:`), so one
target's answer and output are made in one SLURM job, and
`--group-components target=N` puts N targets into one SLURM job. The light
rules are localrules and run in the Snakemake process. Checked here: a run
through SLURM makes what a local run makes; every answer and its output were
made in the same SLURM job; the run id reaches the cluster jobs; the API key
reaches no job script, SLURM log or workflow file; api.concurrency holds
across SLURM jobs; a stop met by one member of a group job ends the run
without losing (or paying again for) what the other members finished.

Nothing here depends on how fast the machine is: waits are for events
(files, the stand-in's held requests), and timeouts are only there to end a
hung run.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from tests.helpers import copy_workflow, like_a_terminal_job, make_dataset, snakemake, wait_for
from tests.standin.server import B

from .test_slurm_smoke import slurm  # noqa: F401  (fixture: fails in CI without SLURM)

pytestmark = [pytest.mark.slurm, pytest.mark.e2e]
pytest_plugins = ["tests.standin.fixtures"]

REPO = Path(__file__).resolve().parents[2]
VOLATILE = {"ts", "seconds", "api_seconds", "qc_seconds", "host", "slurm_job_id"}
# Generous: each SLURM job starts two Snakemake processes (sbatch step and srun
# step) on a 2-core machine that other test runs may share; the profile polls
# job states every 20-50 s.
RUN_TIMEOUT_S = 1800
WAIT_S = 900


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _env() -> dict:
    """This environment without a SLURM job's variables (pytest may run inside one) and without a
    run id (each invocation must make its own)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") and k != "NANO_BANANA_RUN_ID"}


def _cluster(wf: Path, *args, timeout=RUN_TIMEOUT_S) -> subprocess.CompletedProcess:
    """``snakemake --workflow-profile profiles/slurm --configfile run.yaml *args`` in ``wf``."""
    return snakemake(
        wf,
        "--workflow-profile",
        str(wf / "profiles" / "slurm"),
        "--configfile",
        "run.yaml",
        *args,
        timeout=timeout,
        env=_env(),
    )


def _answer(out: Path, stem: str, version: int = 1) -> dict:
    return json.loads((out / "answers" / stem / f"v{version}.json").read_text())


def _stem(row: dict) -> str:
    return f"{row['image_id']}__{row['aug_name']}__v{row['variant_idx']}"


def _squeue(job_ids) -> dict[str, dict]:
    """What SLURM's controller still knows about these jobs (kept for MinJobAge)."""
    out = subprocess.run(
        ["squeue", "--states=all", "-h", "--jobs", ",".join(sorted(job_ids)), "-o", "%i|%j|%T|%k"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    jobs = {}
    for line in out.splitlines():
        job, name, state, comment = line.split("|", 3)
        jobs[job.strip()] = {"name": name, "state": state, "comment": comment}
    return jobs


def _sample_copy(dest: Path) -> Path:
    wf = copy_workflow(dest)
    shutil.copytree(REPO / "data" / "sample", wf / "data" / "sample", ignore=shutil.ignore_patterns("nano_banana_pro"))
    return wf


def _paid_copy(dest: Path, standin, n_images: int, num_images: int) -> Path:
    """A workflow copy whose paid provider is the stand-in; api.concurrency 1, so that requests
    come one at a time, whatever runs where. timeout_s is long: a held request must not time out
    while the test waits for cluster jobs."""
    wf = copy_workflow(dest)
    make_dataset(wf / "data", n=n_images, size=(200, 100))
    cfg = {
        "api": {
            "provider": "gemini",
            "base_url": standin.gemini_base_url,
            "concurrency": 1,
            "max_retries": 2,
            "retry_backoff_s": 0.1,
            "timeout_s": 600,
        },
        "data": {"data_root": "data", "output_dir": "data/aug"},
        "augmentations": [{"name": "overcast", "prompt": "Overcast.", "num_images": num_images}],
    }
    (wf / "run.yaml").write_text(yaml.safe_dump(cfg))
    (wf / "gemini.secret").write_text(standin.api_key)
    return wf


class _Background:
    """A cluster run in the background (its own process group), for tests that act while it runs."""

    def __init__(self, wf: Path, *args):
        self.log = wf / "bg.log"
        cmd = [
            sys.executable,
            "-m",
            "snakemake",
            "--workflow-profile",
            str(wf / "profiles" / "slurm"),
            "--configfile",
            "run.yaml",
            *args,
        ]
        with open(self.log, "w") as fh:
            self.proc = subprocess.Popen(
                cmd,
                cwd=wf,
                stdout=fh,
                stderr=subprocess.STDOUT,
                env=_env(),
                start_new_session=True,
                preexec_fn=like_a_terminal_job,
            )

    def alive(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"the run ended early ({self.proc.returncode}):\n{self.text()[-4000:]}")
        return True

    def wait(self) -> int:
        return self.proc.wait(timeout=RUN_TIMEOUT_S)

    def text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def stop(self) -> None:
        """Ends the run if the test failed before it ended (SIGINT, as Ctrl-C: Snakemake cancels its
        SLURM jobs)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def _key_leaks(key: bytes, roots, skip=("gemini.secret",)) -> list[str]:
    """Files under ``roots`` that contain the key."""
    leaks = []
    for root in roots:
        for dirpath, _dirs, names in os.walk(root):
            for name in names:
                p = Path(dirpath) / name
                try:
                    if name not in skip and p.is_file() and key in p.read_bytes():
                        leaks.append(str(p))
                except OSError:  # vanished or unreadable (a daemon's socket)
                    continue
    return leaks


def _batch_script(job: str) -> bytes:
    """The job script SLURM stored for a job (what sbatch sent)."""
    script = subprocess.run(["scontrol", "write", "batch_script", job, "-"], capture_output=True)
    assert script.returncode == 0, script.stderr
    return script.stdout


def test_sample_pipeline_through_slurm_matches_local_run(tmp_path, slurm):  # noqa: F811
    local = _sample_copy(tmp_path / "local")
    res = snakemake(local, "-j", "2", "--configfile", "configs/sample.yaml", timeout=RUN_TIMEOUT_S, env=_env())
    assert res.returncode == 0, res.stderr[-3000:]

    cluster = _sample_copy(tmp_path / "cluster")
    res = snakemake(
        cluster,
        "--workflow-profile",
        str(cluster / "profiles" / "slurm"),
        "--configfile",
        "configs/sample.yaml",
        "--group-components",
        "target=14",  # 2 SLURM jobs, one after the other (api.concurrency 1): the first stays in
        timeout=RUN_TIMEOUT_S,  # squeue (MinJobAge 300 s) until the checks below, on a slow machine too
        env=_env(),
    )
    assert res.returncode == 0, res.stderr[-4000:]

    out_l = local / "data" / "sample" / "nano_banana_pro" / "train"
    out_c = cluster / "data" / "sample" / "nano_banana_pro" / "train"
    rows_l, rows_c = _rows(out_l / "manifest.csv"), _rows(out_c / "manifest.csv")
    assert len(rows_c) == len(rows_l) == 28
    assert {r["status"] for r in rows_c} == {"success"}

    # every answer and its output were made inside a SLURM job, both in the same one; 28 targets
    # in groups of 14 are 2 SLURM jobs; the light rules ran here
    job_of = {_stem(r): r["slurm_job_id"] for r in rows_c}
    assert "" not in job_of.values()
    assert sorted(Counter(job_of.values()).values()) == [14, 14], job_of
    answers_c = {stem: _answer(out_c, stem) for stem in job_of}
    assert {stem: a["slurm_job_id"] for stem, a in answers_c.items()} == job_of
    assert all(r["slurm_job_id"] == "" for r in rows_l)
    answers_l = {_stem(r): _answer(out_l, _stem(r)) for r in rows_l}
    assert all(a["slurm_job_id"] == "" for a in answers_l.values())
    seen = _squeue(set(job_of.values()))
    assert set(seen) == set(job_of.values()), seen
    for job, info in seen.items():
        assert info["state"] == "COMPLETED" and info["name"].startswith("nanobanana_"), (job, info)
        assert info["comment"] == "rule_target_answer_generate", (job, info)
    assert len({info["name"] for info in seen.values()}) == 1  # one Snakemake run submitted them all

    # the run id reached every cluster job: one id across the 4 SLURM jobs (a job that had not
    # got it would have made its own), as in the local run, and another than the local run's
    run_ids_c = {a["run_id"] for a in answers_c.values()}
    run_ids_l = {a["run_id"] for a in answers_l.values()}
    assert len(run_ids_c) == 1 and len(run_ids_l) == 1 and run_ids_c != run_ids_l, (run_ids_c, run_ids_l)
    assert run_ids_c != {"adhoc"}

    # same outputs (bytes) and same manifest, timestamps, timings, host and SLURM job aside
    for rl, rc in zip(rows_l, rows_c, strict=True):
        assert {k: v for k, v in rl.items() if k not in VOLATILE} == {k: v for k, v in rc.items() if k not in VOLATILE}
        assert _digest(out_l / Path(rl["image_path"]).name) == _digest(out_c / Path(rc["image_path"]).name)


def test_api_key_never_reaches_slurm_job_scripts_or_logs(tmp_path, slurm, standin):  # noqa: F811
    """4 targets, one SLURM job each (no --group-components); api.concurrency 1 holds while two
    of those jobs buy at the same time; the key stays in gemini.secret."""
    wf = _paid_copy(tmp_path / "wf", standin, n_images=2, num_images=2)
    out = wf / "data" / "aug"
    # the first call is held until a second SLURM job has started its answer (it then waits for
    # the one call slot), and is answered 503: one retried call inside a cluster job
    standin.script("gemini", B("hold", then="overloaded"))
    run = _Background(wf)
    try:
        standin.wait_until(lambda s: any(r.held for r in s.requests) and run.alive(), timeout=WAIT_S)
        wait_for(
            lambda: run.alive() and len(list((out / ".pipeline" / "logs" / "answer").glob("*.log"))) >= 2,
            "a second answer job while the first call is held",
            timeout=WAIT_S,
        )
        assert len(standin.requests) == 1 and standin.max_in_flight == 1
        standin.release()
        rc = run.wait()
    finally:
        standin.release()
        run.stop()
    said = run.text()
    assert rc == 0, said[-4000:]

    rows = _rows(out / "manifest.csv")
    assert len(rows) == 4 and {r["status"] for r in rows} == {"success"}
    job_of = {_stem(r): r["slurm_job_id"] for r in rows}
    assert "" not in job_of.values() and len(set(job_of.values())) == 4  # one SLURM job per target
    answers = {stem: _answer(out, stem) for stem in job_of}
    assert {stem: a["slurm_job_id"] for stem, a in answers.items()} == job_of  # answer and output: same job
    assert len(standin.requests) == 5 and standin.max_in_flight == 1  # api.concurrency across the cluster
    assert len(standin.answers()) == 4

    # the run id: the run's own directory (the main process makes it at the end) is the only one,
    # and every answer, bought in 4 SLURM jobs, names it; the summary counts them as this run's
    run_dirs = [p.name for p in (out / ".pipeline" / "runs").iterdir()]
    assert len(run_dirs) == 1, run_dirs
    assert {a["run_id"] for a in answers.values()} == set(run_dirs)
    assert "4 answers bought" in said, said[-3000:]

    key = standin.api_key.encode()
    for job in set(job_of.values()):  # the job scripts SLURM kept
        script = _batch_script(job)
        assert b"snakemake" in script and key not in script
    assert _key_leaks(key, [wf, Path("/var/log/slurm")]) == []
    assert standin.api_key not in said
    assert standin.key_leaks(standin.api_key) == []


def test_stop_in_a_group_keeps_finished_members_and_pays_nothing_twice(tmp_path, slurm, standin):  # noqa: F811
    """4 targets in one group job. The first call is answered, the second says the key is invalid
    (a run-level stop) -- after the first target's output is made. The group job fails and ends
    the run; the finished member's answer and output stay; the next run buys the 3 others only."""
    wf = _paid_copy(tmp_path / "wf", standin, n_images=4, num_images=1)
    out = wf / "data" / "aug"
    args = ("--group-components", "target=4")
    standin.script("gemini", "ok", B("hold", then="bad_key"))
    run = _Background(wf, *args)
    try:
        # the second call is held until the first target's output exists (its generate job runs in
        # the same SLURM job, beside the held answer job)
        standin.wait_until(lambda s: any(r.held for r in s.requests) and run.alive(), timeout=WAIT_S)
        wait_for(
            lambda: run.alive() and any(p.stat().st_size for p in out.glob("*.png")),
            "the first target's output",
            timeout=WAIT_S,
        )
        standin.release()
        rc = run.wait()
    finally:
        standin.release()
        run.stop()
    said = run.text()
    assert rc != 0, said[-4000:]
    assert "API key is not valid" in said, said[-4000:]
    assert len(standin.requests) == 2 and len(standin.answers()) == 1  # nothing called after the stop

    # the finished member's paid answer and its output are kept (not removed as outputs of a failed
    # job); the other targets are left as they were: no answer, no output, no failed row
    bought = sorted(p.parent.name for p in (out / "answers").glob("*/v1.json"))
    assert len(bought) == 1, bought
    first_answer = out / "answers" / bought[0] / "v1.json"
    assert json.loads(first_answer.read_text())["status"] == "image"
    made = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("*.png")}
    assert list(made) == [f"{bought[0]}.png"], made
    assert [r for r in _rows(out / "manifest.csv") if r["status"] == "failed"] == []
    answer_before = (first_answer.stat().st_ino, first_answer.stat().st_mtime_ns, first_answer.read_bytes())
    # the group job failed inside SLURM: its log is kept, and neither it nor its job script holds the key
    key = standin.api_key.encode()
    kept = list((wf / ".snakemake" / "slurm_logs").rglob("*.log"))
    assert len(kept) == 1 and kept[0].parent.name == "group_target_answer_generate", kept
    assert key not in _batch_script(kept[0].stem)
    assert _key_leaks(key, [wf, Path("/var/log/slurm")]) == [] and standin.api_key not in said

    # the next run (a new run id: the stop was the last run's) buys the 3 missing answers only
    res = _cluster(wf, *args)
    assert res.returncode == 0, res.stderr[-4000:]
    assert len(standin.requests) == 5 and len(standin.answers()) == 4
    assert (first_answer.stat().st_ino, first_answer.stat().st_mtime_ns, first_answer.read_bytes()) == answer_before
    final = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("*.png")}
    assert len(final) == 4 and all(final[n] == made[n] for n in made)
    rows = _rows(out / "manifest.csv")
    assert len(rows) == 4 and {r["status"] for r in rows} == {"success"}
    log = (out / "augment.log").read_text().splitlines()
    ok_lines = [line.split()[2] for line in log if line.split()[1:2] == ["ok"]]
    assert sorted(ok_lines) == sorted(n[: -len(".png")] for n in final)  # each output produced exactly once
    assert "3 answers bought" in res.stderr, res.stderr[-3000:]
    assert standin.key_leaks(standin.api_key) == []
