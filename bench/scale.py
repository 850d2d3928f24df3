#!/usr/bin/env python
"""Scale benchmark: the workflow at 10^4-10^5 targets next to plain Snakemake.

    python bench/scale.py                         # sizes 2500,10000 images (x4 = 10^4, 4*10^4 targets)
    python bench/scale.py --sizes 2500,10000,25000 --repeats 3
    python bench/scale.py --quick                 # one small size, one repeat (smoke test)
    python bench/scale.py --profile 2500          # + cProfile of the dry-run and the no-op run
    python bench/scale.py --patches stamp,ckpt,outputs,nosrc   # the recommended changes, on the copy

For every size N (images) it builds, in a temporary directory, a copy of the
workflow (tests.helpers.copy_workflow: Snakefile, rules, scripts, configs,
profiles — so profiles/default applies, as for a user) and a CSIRO-style
train.csv of N images x 5 target rows; every image file is a hard link to one
16x8 JPEG (the checkpoint reads only headers).  The run config has 4
augmentations with an identity `local: {}` recipe and `api.provider: local`
("instant provider"), so N images = 4N targets.  Measured:

  a. checkpoint: make_targets.py on N images (direct), and `snakemake <targets.csv>`
     (the checkpoint through Snakemake: start-up + parse + job);
  b. `snakemake -n` after the checkpoint ran (a dry-run cannot see past it
     otherwise): wall time and peak RSS;
  c. no-op re-run: every output exists (PNG hard links + success sidecars
     written with the package's sidecar.Record, i.e. what generate writes), then
     `snakemake` (profile default, -j 8).  Our workflow always rebuilds the
     manifest (by design, run.stamp), so this is plan + manifest + end hook;
  d. dispatch: a real run of D targets (--dispatch-targets, separate work dir
     of D/4 images, checkpoint done beforehand), targets/s = D / wall.

The same for plain Snakemake on a trivial workflow of the same size: a
checkpoint listing N ids, one rule `touch`-ing 4N files, an aggregate rule
(and a variant without checkpoint, the 4N file names expanded statically).
For dispatch also a plain variant whose jobs start a Python interpreter that
imports PIL + numpy (what every generate job pays before its own work).

Peak memory is the maximum RSS of the snakemake process (os.wait4 rusage;
includes the largest waited child) and the peak sum over the process tree
(psutil, polled every 50 ms).  Other people use this machine: the load
average is recorded before/after each size; medians of --repeats are shown.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import json
import os
import platform
import pstats
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from tests.helpers import HEADER, TARGET_NAMES, copy_workflow  # noqa: E402

AUGS = ["a0", "a1", "a2", "a3"]  # 4 augmentations x num_images 1 = 4 targets per image
PY = sys.executable
SNAKEMAKE = [PY, "-m", "snakemake"]


# ---------------------------------------------------------------- measuring
def measure(cmd, cwd, log, timeout=3600, env=None) -> dict:
    """Run cmd; wall seconds, max RSS (MB) of the process (wait4) and peak RSS of its tree (psutil)."""
    with open(log, "w") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=env)
        peak = [0]
        done = threading.Event()

        def poll():
            try:
                root = psutil.Process(proc.pid)
            except psutil.Error:
                return
            while not done.is_set():
                total = 0
                try:
                    procs = [root] + root.children(recursive=True)
                except psutil.Error:
                    break
                for p in procs:
                    try:
                        total += p.memory_info().rss
                    except psutil.Error:
                        pass
                peak[0] = max(peak[0], total)
                done.wait(0.05)

        th = threading.Thread(target=poll, daemon=True)
        th.start()
        deadline = t0 + timeout
        while True:
            pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
            time.sleep(0.01)
        wall = time.perf_counter() - t0
        done.set()
        th.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
    res = {
        "wall": wall,
        "cpu": ru.ru_utime + ru.ru_stime,
        "rss_mb": ru.ru_maxrss / 1024,
        "tree_mb": peak[0] / 2**20,
        "rc": proc.returncode,
    }
    if proc.returncode != 0:
        tail = Path(log).read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{' '.join(map(str, cmd))} (cwd {cwd}) failed rc={proc.returncode}:\n{tail}")
    return res


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def med(values):
    return statistics.median(values) if values else float("nan")


# ---------------------------------------------------------------- data sets
def make_images(root: Path, n: int) -> None:
    """train.csv (long format, 5 rows per image) + train/<id>.jpg, all hard links to one 16x8 JPEG."""
    from PIL import Image

    train = root / "train"
    train.mkdir(parents=True, exist_ok=True)
    one = root / ".one.jpg"
    Image.new("RGB", (16, 8), (90, 140, 60)).save(one, quality=90)
    lines = [HEADER]
    for i in range(n):
        iid = f"ID{1000000 + i}"
        os.link(one, train / f"{iid}.jpg")
        for t in TARGET_NAMES:
            lines.append(f"{iid}__{t},train/{iid}.jpg,2015/09/04,Tas,Ryegrass,0.62,4.0,{t},{10 + i % 50}.5")
    (root / "train.csv").write_text("\n".join(lines) + "\n")


BENCH_CONFIG = {
    "api": {"provider": "local", "model": "recipes-v1"},
    "data": {
        "data_root": "data",
        "train_csv": "train.csv",
        "primary_targets": ["Dry_Total_g"],
        "output_dir": "data/out",
        "output_ext": "png",
        "manifest": "manifest.csv",
        "log_file": "augment.log",
    },
    "postprocess": {"png_compress_level": 1},
    "augmentations": [{"name": a, "prompt": "identity", "num_images": 1, "local": {}} for a in AUGS],
}


APPLY_PATCHES: list[str] = []  # --patches: measure the recommended changes on the copy


def make_ours(work: Path, n: int) -> Path:
    copy_workflow(work)
    apply_patches(work, APPLY_PATCHES)
    make_images(work / "data", n)
    (work / "bench.yaml").write_text(json.dumps(BENCH_CONFIG, indent=1))  # JSON is YAML
    return work


# ---------------------------------------------------------------- recommended changes (measured on a copy)
# The changes proposed in RESULTS.md, applied to the *copy* of the workflow only
# (rules/ and scripts/ of the repository are not touched).  Each is a plain text
# substitution; a substitution that no longer applies is reported, not silently skipped.
PATCHES = {
    # generate's stamp input: a wildcard pattern instead of an input function per job
    "stamp": ("rules/generate.smk", "stamp=get_regenerate_stamp,", 'stamp=str(PIPE / "regenerate") + "/{aug}.stamp",'),
    # load_targets: skip checkpoints.targets.get() (re-expands the checkpoint's output on every call)
    # once the checkpoint output is known to be complete in this process
    "ckpt": (
        "rules/common.smk",
        "    path = checkpoints.targets.get().output[0]\n",
        "    path = TARGETS_CSV if TARGETS_CSV in checkpoints.created_output else checkpoints.targets.get().output[0]\n",
    ),
    # get_all_outputs: plain string formatting (no Path per output)
    "outputs": (
        "rules/common.smk",
        "        str(layout.output_path(OUT, t.image_id, aug, k, EXT))\n",
        '        f"{OUT}/{t.image_id}__{aug}__v{k}.{EXT}"\n',
    ),
    # no `src` input at all: the source path is in targets.csv (checked by the checkpoint, read by generate.py)
    "nosrc": ("rules/generate.smk", "        src=get_source_image,\n", ""),
}


def apply_patches(work: Path, names) -> list[str]:
    applied = []
    for name in names:
        rel, old, new = PATCHES[name]
        path = work / rel
        text = path.read_text()
        if old not in text:
            raise RuntimeError(f"patch {name!r} no longer applies to {rel} (the rules changed); update bench/scale.py")
        path.write_text(text.replace(old, new, 1))
        applied.append(name)
    return applied


PLAIN_SNAKEFILE = (
    r"""
# Plain Snakemake, same shape as the pipeline: checkpoint -> 4 outputs per id -> aggregate.
N = int(config["nimg"])
K = 4
JOB = config.get("job", "touch")
CMD = {"touch": "touch {output}",
       "python": "%s -c 'import PIL.Image, numpy' && touch {output}"}[JOB]

if config.get("checkpoint", True):
    checkpoint ids:
        input: "train.csv"
        output: "ids.txt"
        shell: "cut -d, -f2 {input} | tail -n +2 | sort -u > {output}"

    def all_outputs(wildcards):
        with open(checkpoints.ids.get().output[0]) as fh:
            ids = [line.split("/")[-1].split(".")[0] for line in fh if line.strip()]
        return [f"out/{i}__a{k}.txt" for i in ids for k in range(K)]
else:
    def all_outputs(wildcards):
        return [f"out/ID{1000000 + i}__a{k}.txt" for i in range(N) for k in range(K)]

rule all:
    default_target: True
    input: "agg.txt"

rule agg:
    input: all_outputs
    output: "agg.txt"
    shell: "find out -name '*.txt' | wc -l > {output}"

rule gen:
    output: "out/{id}__a{k}.txt"
    shell: CMD
"""
    % PY
)


def make_plain(work: Path, n: int) -> Path:
    work.mkdir(parents=True, exist_ok=True)
    (work / "Snakefile").write_text(PLAIN_SNAKEFILE)
    # the same execution settings as ours (greedy scheduler, subsample, rerun-triggers mtime, jobs 8)
    shutil.copytree(ROOT / "profiles" / "default", work / "profiles" / "default", dirs_exist_ok=True)
    make_images(work, n)
    return work


def fabricate_outputs(work: Path, n: int) -> int:
    """Every output + its success sidecar, as generate writes them (PNG hard links, Record JSON)."""
    from PIL import Image

    from nano_banana_aug import layout
    from nano_banana_aug.sidecar import Record

    out = work / "data" / "out"
    sdir = layout.sidecar_dir(out)
    sdir.mkdir(parents=True, exist_ok=True)
    ones = []

    def new_one():  # a file takes at most 65,000 hard links (ext4): a fresh one every 60,000
        one = out / f".one{len(ones)}.png"
        Image.new("RGB", (16, 8), (90, 140, 60)).save(one, compress_level=1)
        ones.append(one)
        return one

    one = new_one()
    size = one.stat().st_size
    now = time.time()
    count = 0
    for i in range(n):
        iid = f"ID{1000000 + i}"
        for aug in AUGS:
            png = layout.output_path(out, iid, aug, 0, "png")
            if not png.exists():
                if count and count % 60000 == 0:
                    one = new_one()
                os.link(one, png)
            rec = Record(
                iid,
                aug,
                0,
                src_image_path=f"train/{iid}.jpg",
                image_path=f"out/{png.name}",
                status="success",
                ts=now,
                orig_w=16,
                orig_h=8,
                aspect_w=16,
                aspect_h=8,
                out_w=16,
                out_h=8,
                provider="local",
                model="recipes-v1",
                attempts=1,
                seconds=0.1,
                api_seconds=0.01,
                output_bytes=size,
            )
            layout.sidecar_path(out, iid, aug, 0).write_text(rec.to_json())
            count += 1
    for one in ones:
        one.unlink()
    return count


def fabricate_plain(work: Path, n: int) -> None:
    out = work / "out"
    out.mkdir(exist_ok=True)
    for i in range(n):
        for k in range(4):
            (out / f"ID{1000000 + i}__a{k}.txt").touch()
    (work / "agg.txt").write_text(f"{4 * n}\n")


def latest_run_config(work: Path) -> str:
    """The effective config of the newest run in ``work`` (each run writes its own)."""
    found = sorted((work / "data/out/.pipeline/runs").glob("*/config.json"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise RuntimeError(f"no run config under {work}/data/out/.pipeline/runs: run the workflow first")
    return str(found[-1].relative_to(work))


def clear_outputs(out: Path) -> None:
    """Remove outputs, sidecars and manifest of a run (keep .pipeline/targets.csv)."""
    if not out.is_dir():
        return
    for p in out.iterdir():
        if p.name in (".pipeline",):
            continue
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink()


# ---------------------------------------------------------------- one size
def bench_size(
    base: Path,
    n: int,
    repeats: int,
    jobs: int,
    logs: Path,
    profile: bool,
    lean: bool = False,
    dag_batches: int = 0,
    only_dry: bool = False,
    skip_plain_noop: bool = False,
) -> dict:
    r: dict = {"n_images": n, "targets": 4 * n, "load_before": loadavg()}
    print(f"\n=== {n} images ({4 * n} targets), load {r['load_before']}", flush=True)
    t = time.perf_counter()
    ours = make_ours(base / f"ours_{n}", n)
    plain = make_plain(base / f"plain_{n}", n)
    plain_static = make_plain(base / f"plainstatic_{n}", n)
    r["build_s"] = time.perf_counter() - t
    print(f"  data sets built in {r['build_s']:.1f}s", flush=True)
    cfg = ["--configfile", "bench.yaml"]
    targets_csv = "data/out/.pipeline/targets.csv"
    L = lambda name: logs / f"{name}_{n}.log"  # noqa: E731

    # a. checkpoint
    sm_ck, direct, plain_ck, direct_cpu = [], [], [], []
    for _ in range(repeats):
        (ours / targets_csv).unlink(missing_ok=True)
        sm_ck.append(measure([*SNAKEMAKE, targets_csv, "-j", "1", *cfg], ours, L("ours_checkpoint"))["wall"])
        res = measure(
            [
                PY,
                "scripts/make_targets.py",
                "--config-json",
                latest_run_config(ours),
                "--output",
                "/tmp/_bench_targets.csv",
            ],
            ours,
            L("ours_make_targets"),
        )
        direct.append(res["wall"])
        direct_cpu.append(res["cpu"])
        (plain / "ids.txt").unlink(missing_ok=True)
        plain_ck.append(
            measure([*SNAKEMAKE, "ids.txt", "-j", "1", "--config", f"nimg={n}"], plain, L("plain_checkpoint"))["wall"]
        )
    r["ckpt_direct_s"], r["ckpt_sm_s"], r["plain_ckpt_sm_s"] = med(direct), med(sm_ck), med(plain_ck)
    r["ckpt_direct_cpu"] = med(direct_cpu)
    print(
        f"  a. checkpoint: make_targets {r['ckpt_direct_s']:.2f}s, via snakemake {r['ckpt_sm_s']:.2f}s; "
        f"plain {r['plain_ckpt_sm_s']:.2f}s",
        flush=True,
    )

    # b. dry-run planning (checkpoint already ran, nothing generated yet)
    def dry(work, extra, name):
        runs = [measure([*SNAKEMAKE, "-n", *extra], work, L(name)) for _ in range(repeats)]
        return (
            med([x["wall"] for x in runs]),
            max(x["rss_mb"] for x in runs),
            max(x["tree_mb"] for x in runs),
            med([x["cpu"] for x in runs]),
        )

    r["dry_s"], r["dry_rss"], r["dry_tree"], r["dry_cpu"] = dry(ours, cfg, "ours_dry")
    r["plain_dry_s"], r["plain_dry_rss"], r["plain_dry_tree"], r["plain_dry_cpu"] = dry(
        plain, ["--config", f"nimg={n}"], "plain_dry"
    )
    if lean:
        r["plainst_dry_s"] = r["plainst_dry_rss"] = r["plainst_dry_cpu"] = float("nan")
    else:
        r["plainst_dry_s"], r["plainst_dry_rss"], _, r["plainst_dry_cpu"] = dry(
            plain_static, ["--config", f"nimg={n}", "checkpoint=False"], "plainstatic_dry"
        )
    check = Path(L("ours_dry")).read_text()
    m = re.search(r"generate\s+(\d+)", check)
    r["dry_generate_jobs"] = int(m.group(1)) if m else -1
    print(
        f"  b. dry-run: ours {r['dry_s']:.1f}s (cpu {r['dry_cpu']:.1f}s) {r['dry_rss']:.0f}MB ({r['dry_generate_jobs']} generate jobs); "
        f"plain {r['plain_dry_s']:.1f}s (cpu {r['plain_dry_cpu']:.1f}s) {r['plain_dry_rss']:.0f}MB; plain static {r['plainst_dry_s']:.1f}s "
        f"{r['plainst_dry_rss']:.0f}MB",
        flush=True,
    )
    if dag_batches:
        # one slice of a run batched with Snakemake's --batch (the README's way for very large data sets):
        # ours over `all_outputs`, plain static over its aggregate (plain's checkpoint cannot be batched)
        spec = f"1/{dag_batches}"
        r["dag_batches"] = dag_batches
        r["batch_dry_s"], r["batch_dry_rss"], _, r["batch_dry_cpu"] = dry(
            ours, [*cfg, "--batch", f"all_outputs={spec}"], "ours_batch_dry"
        )
        m = re.search(r"generate\s+(\d+)", Path(L("ours_batch_dry")).read_text())
        r["batch_generate_jobs"] = int(m.group(1)) if m else -1
        r["plain_batch_dry_s"], r["plain_batch_dry_rss"], _, r["plain_batch_dry_cpu"] = dry(
            plain_static, ["--config", f"nimg={n}", "checkpoint=False", "--batch", f"agg={spec}"], "plain_batch_dry"
        )
        print(
            f"  b'. dry-run of batch {spec}: ours {r['batch_dry_s']:.1f}s (cpu {r['batch_dry_cpu']:.1f}s) "
            f"{r['batch_dry_rss']:.0f}MB ({r['batch_generate_jobs']} generate jobs); plain static "
            f"{r['plain_batch_dry_s']:.1f}s (cpu {r['plain_batch_dry_cpu']:.1f}s) {r['plain_batch_dry_rss']:.0f}MB",
            flush=True,
        )
    if profile:
        prof = logs / f"ours_dry_{n}.prof"
        measure([PY, "-m", "cProfile", "-o", str(prof), "-m", "snakemake", "-n", *cfg], ours, L("ours_dry_prof"))
        r["profile_dry"] = str(prof)

    if only_dry:
        r["load_after"] = loadavg()
        return r
    # c. no-op re-run over existing outputs
    t = time.perf_counter()
    r["fabricated"] = fabricate_outputs(ours, n)
    fabricate_plain(plain, n)
    fabricate_plain(plain_static, n)
    r["fabricate_s"] = time.perf_counter() - t
    print(f"  c. {r['fabricated']} outputs + sidecars written in {r['fabricate_s']:.1f}s", flush=True)
    # first run adopts nothing (every output has a sidecar) and writes the manifest; count it too
    first = measure([*SNAKEMAKE, "-j", str(jobs), *cfg], ours, L("ours_noop_first"))
    r["noop_first_s"] = first["wall"]
    runs = [measure([*SNAKEMAKE, "-j", str(jobs), *cfg], ours, L("ours_noop")) for _ in range(repeats)]
    r["noop_s"], r["noop_rss"] = med([x["wall"] for x in runs]), max(x["rss_mb"] for x in runs)
    r["noop_cpu"] = med([x["cpu"] for x in runs])
    log = Path(L("ours_noop")).read_text()
    r["noop_generate_jobs"] = len(re.findall(r"rule generate:", log))
    m = re.search(r"plan: .*", log)
    r["noop_plan_line"] = m.group(0) if m else ""
    manifest_rows = sum(1 for _ in open(ours / "data/out/manifest.csv")) - 1
    r["manifest_rows"] = manifest_rows
    # --skip-plain-noop: plain's no-op was measured in an earlier run of the same size (long at 10^5): nan here
    plain_runs = 0 if skip_plain_noop else repeats
    runs = [
        measure([*SNAKEMAKE, "-j", str(jobs), "--config", f"nimg={n}"], plain, L("plain_noop"))
        for _ in range(plain_runs)
    ]
    r["plain_noop_s"], r["plain_noop_rss"] = (
        med([x["wall"] for x in runs]),
        max((x["rss_mb"] for x in runs), default=float("nan")),
    )
    r["plain_noop_cpu"] = med([x["cpu"] for x in runs])
    runs = [
        measure([*SNAKEMAKE, "-j", str(jobs), "--config", f"nimg={n}", "-R", "agg"], plain, L("plain_noop_agg"))
        for _ in range(plain_runs)
    ]
    r["plain_noop_agg_s"] = med([x["wall"] for x in runs])
    r["plain_noop_agg_cpu"] = med([x["cpu"] for x in runs])
    runs = (
        []
        if lean
        else [
            measure(
                [*SNAKEMAKE, "-j", str(jobs), "--config", f"nimg={n}", "checkpoint=False"],
                plain_static,
                L("plainstatic_noop"),
            )
            for _ in range(plain_runs)
        ]
    )
    r["plainst_noop_s"] = med([x["wall"] for x in runs])
    print(
        f"     no-op: ours {r['noop_s']:.1f}s cpu {r['noop_cpu']:.1f}s (first {r['noop_first_s']:.1f}s, {r['noop_generate_jobs']} generate "
        f"jobs, manifest {manifest_rows} rows) {r['noop_rss']:.0f}MB; plain {r['plain_noop_s']:.1f}s, "
        f"plain+aggregate {r['plain_noop_agg_s']:.1f}s cpu {r['plain_noop_agg_cpu']:.1f}s, plain static {r['plainst_noop_s']:.1f}s",
        flush=True,
    )
    if profile:
        prof = logs / f"ours_noop_{n}.prof"
        measure(
            [PY, "-m", "cProfile", "-o", str(prof), "-m", "snakemake", "-j", str(jobs), *cfg], ours, L("ours_noop_prof")
        )
        r["profile_noop"] = str(prof)
    r["load_after"] = loadavg()
    return r


# ---------------------------------------------------------------- dispatch
def bench_dispatch(base: Path, d: int, repeats: int, jobs: int, logs: Path) -> dict:
    n = max(1, d // 4)
    r: dict = {"dispatch_targets": 4 * n, "jobs": jobs, "load_before": loadavg()}
    print(f"\n=== dispatch: {4 * n} targets, -j {jobs}, load {r['load_before']}", flush=True)
    ours = make_ours(base / "dispatch_ours", n)
    cfg = ["--configfile", "bench.yaml"]
    measure([*SNAKEMAKE, "data/out/.pipeline/targets.csv", "-j", "1", *cfg], ours, logs / "dispatch_ckpt.log")
    walls = []
    for _ in range(repeats):
        clear_outputs(ours / "data/out")
        res = measure([*SNAKEMAKE, "-j", str(jobs), *cfg], ours, logs / "dispatch_ours.log")
        made = len(list((ours / "data/out").glob("*.png")))
        if made != 4 * n:
            raise RuntimeError(f"dispatch run made {made} outputs, expected {4 * n}")
        walls.append(res["wall"])
    r["ours_s"] = med(walls)
    r["ours_tps"] = 4 * n / r["ours_s"]
    # one generate job alone (what each job costs before Snakemake's share)
    one = measure(
        [
            PY,
            "scripts/generate.py",
            "--config-json",
            latest_run_config(ours),
            "--targets",
            "data/out/.pipeline/targets.csv",
            "--image-id",
            "ID1000000",
            "--aug",
            "a0",
            "--variant",
            "0",
            "--output",
            "/tmp/_bench_one.png",
        ],
        ours,
        logs / "dispatch_one.log",
    )
    r["one_job_s"] = one["wall"]
    for job in ("touch", "python"):
        plain = make_plain(base / f"dispatch_plain_{job}", n)
        measure([*SNAKEMAKE, "ids.txt", "-j", "1", "--config", f"nimg={n}"], plain, logs / "dispatch_pckpt.log")
        walls = []
        for _ in range(repeats):
            shutil.rmtree(plain / "out", ignore_errors=True)
            (plain / "agg.txt").unlink(missing_ok=True)
            walls.append(
                measure(
                    [*SNAKEMAKE, "-j", str(jobs), "--config", f"nimg={n}", f"job={job}"],
                    plain,
                    logs / f"dispatch_plain_{job}.log",
                )["wall"]
            )
        r[f"plain_{job}_s"] = med(walls)
        r[f"plain_{job}_tps"] = 4 * n / r[f"plain_{job}_s"]
    r["load_after"] = loadavg()
    print(
        f"  ours {r['ours_tps']:.1f} targets/s ({r['ours_s']:.1f}s; one generate.py alone {r['one_job_s']:.2f}s); "
        f"plain touch {r['plain_touch_tps']:.1f}/s; plain python+PIL/numpy {r['plain_python_tps']:.1f}/s",
        flush=True,
    )
    return r


# ---------------------------------------------------------------- profiles
def profile_summary(path: str, top: int = 25) -> str:
    """Cumulative time of our code (Snakefile, rules/*.smk, nano_banana_aug) and the top Snakemake functions."""
    st = pstats.Stats(path)
    total = st.total_tt
    rows = []
    for (fname, line, func), (_cc, nc, tt, ct, _callers) in st.stats.items():
        rows.append((ct, tt, nc, fname, line, func))
    ours = [x for x in rows if ("/rules/" in x[3] or x[3].endswith("Snakefile") or "nano_banana_aug" in x[3])]
    ours.sort(reverse=True)
    sm = [x for x in rows if "snakemake" in x[3] and "nano_banana" not in x[3]]
    sm.sort(key=lambda x: -x[1])
    out = [f"total {total:.2f}s (profiled; cProfile slows Python code ~1.5-2x)", "our code (cumulative):"]
    for ct, tt, nc, f, line, func in ours[:top]:
        out.append(f"  {ct:7.2f}s cum {tt:6.2f}s self {nc:>8} calls  {Path(f).name}:{line} {func}")
    out.append("Snakemake functions by own time:")
    for ct, tt, nc, f, line, func in sm[:top]:
        out.append(f"  {tt:7.2f}s self {ct:6.2f}s cum {nc:>8} calls  {'/'.join(Path(f).parts[-2:])}:{line} {func}")
    return "\n".join(out)


# ---------------------------------------------------------------- report
def machine() -> dict:
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    sm = subprocess.run(SNAKEMAKE + ["--version"], capture_output=True, text=True).stdout.strip()
    head = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "rules", "scripts", "Snakefile", "profiles/default"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "ram_gb": psutil.virtual_memory().total / 2**30,
        "python": platform.python_version(),
        "snakemake": sm,
        "kernel": platform.release(),
        "commit": head + (" (rules/scripts modified in the working tree)" if dirty else ""),
        "date": dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
    }


def table(sizes: list[dict], disp: dict | None) -> str:
    def ratio(a, b):
        return f"{a / b:.2f}x" if b else "n/a"

    lines = [
        "| images | targets | checkpoint make_targets.py s (CPU s) | checkpoint via snakemake s: ours / plain "
        "| dry-run wall s: ours / plain / plain static | dry-run CPU s: ours / plain | dry-run peak RSS MB: ours / plain "
        "| no-op wall s: ours / plain / plain + aggregate | no-op CPU s: ours / plain + aggregate "
        "| ours / plain: dry wall, dry CPU, no-op wall, no-op CPU "
        "| dry-run of one `--batch` slice: wall s / peak RSS MB, ours / plain static |",
        "|---:|---:|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sizes:
        r = collections.defaultdict(lambda: float("nan"), r)  # --only-dry: no no-op numbers
        lines.append(
            f"| {r['n_images']:,} | {r['targets']:,} | {r['ckpt_direct_s']:.1f} ({r['ckpt_direct_cpu']:.1f}) "
            f"| {r['ckpt_sm_s']:.1f} / {r['plain_ckpt_sm_s']:.1f} "
            f"| {r['dry_s']:.1f} / {r['plain_dry_s']:.1f} / {r['plainst_dry_s']:.1f} "
            f"| {r['dry_cpu']:.1f} / {r['plain_dry_cpu']:.1f} | {r['dry_rss']:.0f} / {r['plain_dry_rss']:.0f} "
            f"| {r['noop_s']:.1f} / {r['plain_noop_s']:.1f} / {r['plain_noop_agg_s']:.1f} "
            f"| {r['noop_cpu']:.1f} / {r['plain_noop_agg_cpu']:.1f} "
            f"| {ratio(r['dry_s'], r['plain_dry_s'])}, {ratio(r['dry_cpu'], r['plain_dry_cpu'])}, "
            f"{ratio(r['noop_s'], r['plain_noop_agg_s'])}, {ratio(r['noop_cpu'], r['plain_noop_agg_cpu'])} "
            + (
                f"| 1/{r['dag_batches']}: {r['batch_dry_s']:.1f} / {r['batch_dry_rss']:.0f}, "
                f"{r['plain_batch_dry_s']:.1f} / {r['plain_batch_dry_rss']:.0f} |"
                if r.get("dag_batches", 0) > 0
                else "| |"
            )
        )
    if disp:
        lines += [
            "",
            f"Dispatch ({disp['dispatch_targets']:,} targets, -j {disp['jobs']}, instant `local` provider): "
            f"ours **{disp['ours_tps']:.1f} targets/s** ({disp['ours_s']:.0f} s); plain Snakemake `touch` "
            f"{disp['plain_touch_tps']:.1f}/s ({ratio(disp['plain_touch_tps'], disp['ours_tps'])} faster); plain "
            f"Snakemake with jobs that start Python and import PIL+numpy {disp['plain_python_tps']:.1f}/s "
            f"(ours is {ratio(disp['plain_python_tps'], disp['ours_tps'])} slower than that); one "
            f"`scripts/generate.py` alone {disp['one_job_s']:.2f} s. Load {disp['load_before']} -> {disp['load_after']}.",
        ]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="2500,10000", help="images per size, comma separated (targets = 4x)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=8)
    ap.add_argument("--dispatch-targets", type=int, default=1000, help="0 = skip the dispatch measurement")
    ap.add_argument("--dispatch-repeats", type=int, default=None, help="default: --repeats")
    ap.add_argument("--lean", action="store_true", help="skip the plain static variant (saves time at large sizes)")
    ap.add_argument("--patches", default="", help="apply recommended changes to the copy: stamp,ckpt,outputs,nosrc")
    ap.add_argument(
        "--dag-batches",
        type=int,
        default=0,
        help="also time the dry-run of one slice of `--batch all_outputs=1/K` (K slices)",
    )
    ap.add_argument("--skip-plain-noop", action="store_true", help="no no-op measurement of plain Snakemake")
    ap.add_argument("--only-dry", action="store_true", help="stop after the dry-runs (no no-op measurement)")
    ap.add_argument("--quick", action="store_true", help="sizes 500, 1 repeat, 200 dispatch targets")
    ap.add_argument("--profile", type=int, default=0, help="also cProfile dry-run and no-op at this size")
    ap.add_argument("--workdir", default=None, help="default: a new temp dir (kept with --keep)")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--json", default=None, help="write raw results here")
    ap.add_argument("--markdown", default=None, help="write the markdown section here")
    args = ap.parse_args(argv)
    if args.quick:
        args.sizes, args.repeats, args.dispatch_targets = "500", 1, 200
    sizes = [int(s) for s in args.sizes.split(",") if s]
    APPLY_PATCHES[:] = [p for p in args.patches.split(",") if p]
    unknown = set(APPLY_PATCHES) - set(PATCHES)
    if unknown:
        ap.error(f"unknown patch(es) {', '.join(sorted(unknown))}; known: {', '.join(PATCHES)}")
    if args.profile and args.profile not in sizes:
        sizes.append(args.profile)
    base = Path(args.workdir or tempfile.mkdtemp(prefix="nb_scale_"))
    base.mkdir(parents=True, exist_ok=True)
    logs = base / "logs"
    logs.mkdir(exist_ok=True)
    info = machine()
    info["load_start"] = loadavg()
    print(json.dumps(info), flush=True)
    print(f"work dir {base}", flush=True)
    results = []
    disp = None
    try:
        for n in sizes:
            results.append(
                bench_size(
                    base,
                    n,
                    args.repeats,
                    args.jobs,
                    logs,
                    profile=(n == args.profile),
                    lean=args.lean,
                    dag_batches=args.dag_batches,
                    only_dry=args.only_dry,
                    skip_plain_noop=args.skip_plain_noop,
                )
            )
            for key in ("profile_dry", "profile_noop"):
                if key in results[-1]:
                    summary = profile_summary(results[-1][key])
                    results[-1][key + "_summary"] = summary
                    print(f"\n--- {key} ({n} images)\n{summary}", flush=True)
            shutil.rmtree(base / f"plain_{n}", ignore_errors=True)
            shutil.rmtree(base / f"plainstatic_{n}", ignore_errors=True)
            if not args.keep:
                shutil.rmtree(base / f"ours_{n}", ignore_errors=True)
        if args.dispatch_targets:
            disp = bench_dispatch(base, args.dispatch_targets, args.dispatch_repeats or args.repeats, args.jobs, logs)
    finally:
        info["load_end"] = loadavg()
        if args.json:
            Path(args.json).write_text(json.dumps({"machine": info, "sizes": results, "dispatch": disp}, indent=1))
    md = table(results, disp)
    print("\n" + md)
    if args.markdown:
        Path(args.markdown).write_text(md + "\n")
    if not args.keep and not args.workdir:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
