"""Smoke test of profiles/slurm against a real (single-node) SLURM.

Start the cluster first (as root):  bash tests/cluster/start_slurm.sh
Then:                               pytest -m slurm tests/cluster -s

A tiny workflow runs with `--workflow-profile profiles/slurm`: the remote jobs
write $SLURM_JOB_ID into their outputs, so the test sees that they ran inside
SLURM jobs, and asks squeue (sacct is unusable without an accounting database)
what SLURM recorded for them. A localrule must run on this host, outside SLURM.
Two rules share a `group:` (as the workflow's answer and generate do) and
`--group-components pair=2` bundles both pairs: all four jobs must run in one
SLURM job. A run id made by the Snakefile and declared in `envvars:` (as
rules/common.smk does with NANO_BANANA_RUN_ID) must reach every cluster job.
An exported variable (an API key's stand-in) must reach the jobs without
appearing in their job scripts, Snakemake's output or .snakemake/.
A second run makes a job fail and checks that its SLURM log is kept where the
error message points, and that the failure is detected without sacct.

Without a running SLURM the tests skip, except in CI (CI=true), where they fail:
a CI run must never pass because the scheduler silently was not there.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[2]
PROFILE = REPO / "profiles" / "slurm"
START_HINT = "start it with: bash tests/cluster/start_slurm.sh (as root)"
# Generous: the profile polls every 20-50 s, each cluster job starts two
# Snakemake processes (sbatch step and srun step) on a 2-core machine, and
# other test runs may share the machine.
RUN_TIMEOUT_S = 900
# Stands in for an API key exported in the submitting shell.
SECRET = "smoke-secret-4f9c1e27"


def _slurm_unavailable_reason() -> str | None:
    """Why no usable SLURM is reachable, or None when a node is up."""
    if shutil.which("sinfo") is None:
        return "SLURM client tools (sinfo) are not installed"
    try:
        out = subprocess.run(
            ["sinfo", "-h", "-o", "%t"],
            capture_output=True,
            text=True,
            timeout=15,
        )
    except subprocess.TimeoutExpired:
        return "sinfo did not answer within 15 s (slurmctld not running?)"
    if out.returncode != 0:
        return f"sinfo failed: {out.stderr.strip() or out.stdout.strip()}"
    states = out.stdout.split()
    if not any(s in ("idle", "mix", "alloc") for s in states):
        return f"no SLURM node is up (node states: {states or 'none'})"
    return None


@pytest.fixture(scope="module")
def slurm() -> None:
    reason = _slurm_unavailable_reason()
    if reason is None:
        return
    message = f"SLURM is not usable: {reason}; {START_HINT}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"[CI] {message}", pytrace=False)
    pytest.skip(message)


SMOKE_SNAKEFILE = textwrap.dedent(
    """
    import os, secrets, time

    # One id per invocation, made by the process that reads the Snakefile first
    # and kept by the cluster jobs (they find it in their environment).
    os.environ.setdefault("SMOKE_RUN_ID", f"run-{os.getpid()}-{secrets.token_hex(4)}")

    envvars: "SMOKE_RUN_ID"

    localrules: all, summary

    rule all:
        input: "summary.txt"

    # Two shell jobs and one Python job on the cluster; each records the
    # SLURM job it ran in and when its own work started and ended.
    rule gen:
        output: "out/gen_{i}.txt"
        shell:
            "start=$(date +%s.%N); sleep 1; "
            "echo ${{SLURM_JOB_ID:-none}} $start $(date +%s.%N) > {output}; "
            "echo ${{SMOKE_SECRET:+secret-seen}} > {output}.env"

    # A pair per i in one group (like answer + generate): one SLURM job per
    # pair, or per N pairs with --group-components pair=N.
    rule buy:
        output: "out/buy_{i}.txt"
        group: "pair"
        shell: "echo ${{SLURM_JOB_ID:-none}} $SMOKE_RUN_ID > {output}"

    rule make:
        input: "out/buy_{i}.txt"
        output: "out/make_{i}.txt"
        group: "pair"
        shell: "cat {input} > {output}; echo ${{SLURM_JOB_ID:-none}} $SMOKE_RUN_ID >> {output}"

    rule combine:
        input: expand("out/gen_{i}.txt", i=range(2)), expand("out/make_{i}.txt", i=range(2))
        output: "out/combined.txt"
        run:
            start = time.time()
            lines = [open(f).read().strip() for f in input[:2]]
            with open(output[0], "w") as fh:
                fh.write("\\n".join(lines) + "\\n")
                fh.write(f"{os.environ.get('SLURM_JOB_ID', 'none')} {start} {time.time()}\\n")

    # Light rule: must run here, in the Snakemake process, not on the cluster.
    rule summary:
        input: "out/combined.txt"
        output: "summary.txt"
        shell: "cat {input} > {output}; echo local ${{SLURM_JOB_ID:-none}} $SMOKE_RUN_ID >> {output}"
    """
)

FAILING_SNAKEFILE = textwrap.dedent(
    """
    rule all:
        input: "out/broken_7.txt"

    rule broken:
        output: "out/broken_{n}.txt"
        shell: "echo 'deliberate failure of job {wildcards.n}' >&2; exit 3"
    """
)


def _run_snakemake(
    workdir: Path, *extra: str, env_extra: dict[str, str] | None = None
) -> tuple[subprocess.CompletedProcess, float]:
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--workflow-profile",
        str(PROFILE),
        "-j",
        "4",
        *extra,
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(env_extra or {})
    t0 = time.monotonic()
    proc = subprocess.run(
        cmd,
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    elapsed = time.monotonic() - t0
    (workdir / "snakemake.out").write_text(proc.stdout + proc.stderr)
    return proc, elapsed


def _squeue_jobs(job_ids: list[str]) -> dict[str, dict[str, str]]:
    """What SLURM's controller still knows about these jobs (kept for MinJobAge)."""
    out = subprocess.run(
        [
            "squeue",
            "--states=all",
            "--noheader",
            "--jobs",
            ",".join(job_ids),
            "--format=%i|%j|%T|%k",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    jobs = {}
    for line in out.splitlines():
        job_id, name, state, comment = line.split("|", 3)
        jobs[job_id.strip()] = {"name": name, "state": state, "comment": comment}
    return jobs


def _job_times(job_id: str) -> dict[str, str]:
    """SubmitTime, StartTime and EndTime of a job, as scontrol prints them."""
    out = subprocess.run(
        ["scontrol", "show", "job", job_id],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return dict(re.findall(r"(SubmitTime|StartTime|EndTime)=(\S+)", out))


def _batch_script(job_id: str, dest: Path) -> str:
    """The job script SLURM stored for a job (what sbatch sent)."""
    subprocess.run(
        ["scontrol", "write", "batch_script", job_id, str(dest)],
        capture_output=True,
        check=True,
    )
    return dest.read_text()


def _epoch(slurm_time: str) -> float:
    return time.mktime(time.strptime(slurm_time, "%Y-%m-%dT%H:%M:%S"))


def test_jobs_run_through_slurm_and_localrule_runs_here(slurm, tmp_path):
    (tmp_path / "Snakefile").write_text(SMOKE_SNAKEFILE)

    # A stand-in for an API key: exported, it must reach the jobs, and appear
    # neither in a job script nor in Snakemake's output. Both pairs of the
    # group go into one SLURM job.
    proc, elapsed = _run_snakemake(tmp_path, "--group-components", "pair=2", env_extra={"SMOKE_SECRET": SECRET})

    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"snakemake failed:\n{log[-4000:]}"

    # Remote jobs ran inside SLURM jobs, each in its own.
    records = {}
    for name in ("gen_0", "gen_1"):
        job_id, start, end = (tmp_path / "out" / f"{name}.txt").read_text().split()
        records[name] = (job_id, float(start), float(end))
    *_, combine_line = (tmp_path / "out" / "combined.txt").read_text().splitlines()
    job_id, start, end = combine_line.split()
    records["combine"] = (job_id, float(start), float(end))
    job_ids = [r[0] for r in records.values()]
    assert all(j.isdigit() for j in job_ids), f"a job ran outside SLURM: {records}"
    assert len(set(job_ids)) == 3, f"jobs share a SLURM job: {records}"

    # The localrule ran in this process's environment, not on the cluster;
    # it says the run id the Snakefile made in this process.
    summary = (tmp_path / "summary.txt").read_text().splitlines()
    where, slurm_job, run_id = summary[-1].split()
    assert (where, slurm_job) == ("local", "none"), summary
    assert run_id.startswith("run-"), summary

    # The group: buy and make of both pairs ran in one SLURM job (not one of
    # the others), and every one of them saw this run's id.
    pair_lines = [
        line.split() for i in range(2) for line in (tmp_path / "out" / f"make_{i}.txt").read_text().splitlines()
    ]
    assert len(pair_lines) == 4, pair_lines
    pair_jobs = {job for job, _rid in pair_lines}
    assert len(pair_jobs) == 1 and pair_jobs.isdisjoint(job_ids), (pair_lines, records)
    assert {rid for _job, rid in pair_lines} == {run_id}, (pair_lines, run_id)
    job_ids += sorted(pair_jobs)

    # The exported variable reached the jobs, but no job script carries it.
    for i in range(2):
        assert (tmp_path / "out" / f"gen_{i}.txt.env").read_text().strip() == "secret-seen"
    for job_id in job_ids:
        script = _batch_script(job_id, tmp_path / f"batch_{job_id}.sh")
        assert "snakemake" in script and SECRET not in script
    assert SECRET not in log
    for path in (tmp_path / ".snakemake").rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path

    # SLURM's controller saw exactly these jobs, finished, named after the run.
    seen = _squeue_jobs(job_ids)
    assert set(seen) == set(job_ids), f"squeue does not know all jobs: {seen}"
    for job_id, info in seen.items():
        assert info["state"] == "COMPLETED", (job_id, info)
        assert info["name"].startswith("nanobanana_"), info
    comments = sorted(info["comment"] for info in seen.values())
    assert comments == ["rule_combine", "rule_gen_wildcards_0", "rule_gen_wildcards_1", "rule_pair_buy_make"]
    run_ids = {info["name"] for info in seen.values()}
    assert len(run_ids) == 1 and f"SLURM run ID: {run_ids.pop()}" in log

    # Successful jobs leave no SLURM logs behind (failed ones would).
    assert not list((tmp_path / ".snakemake" / "slurm_logs").rglob("*.log"))

    # Timing: record what each SLURM job cost around its own ~1 s of work
    # (printed and kept in timings.json, not asserted: the machine may be busy).
    timings = {}
    for name, (job_id, work_start, work_end) in records.items():
        t = _job_times(job_id)
        submit, begin, finish = (_epoch(t[k]) for k in ("SubmitTime", "StartTime", "EndTime"))
        timings[name] = {
            "slurm_job": job_id,
            "queued_s": begin - submit,
            "job_s": finish - begin,
            "work_s": round(work_end - work_start, 2),
            "submit_to_end_s": finish - submit,
        }
    report = {"snakemake_wall_s": round(elapsed, 1), "jobs": timings}
    (tmp_path / "timings.json").write_text(json.dumps(report, indent=2))
    print(f"\nSLURM smoke timings: {json.dumps(report)}")


def test_failed_job_is_detected_and_its_log_kept(slurm, tmp_path):
    (tmp_path / "Snakefile").write_text(FAILING_SNAKEFILE)

    # One attempt (the profile's retries: 0, given here too so that the test
    # does not depend on it).
    proc, _ = _run_snakemake(tmp_path, "--retries", "0")

    log = proc.stdout + proc.stderr
    assert proc.returncode != 0, f"a failing job was reported as success:\n{log[-4000:]}"
    logs = list((tmp_path / ".snakemake" / "slurm_logs" / "rule_broken" / "7").glob("*.log"))
    assert len(logs) == 1, f"expected one kept SLURM log, found {logs}"
    slurm_log = logs[0]
    assert "deliberate failure of job 7" in slurm_log.read_text()
    # The error message names the SLURM job and points at its log.
    job_id = slurm_log.stem
    assert f"SLURM-job '{job_id}' failed" in log, log[-4000:]
    assert str(slurm_log) in log, log[-4000:]
    assert not (tmp_path / "out" / "broken_7.txt").exists()
