#!/usr/bin/env python
"""Throughput of the pipeline against the API stand-in, next to a thread-pool baseline.

    python bench/throughput.py                      # N=96, L=5 s, C=8, -j 16, 3 repeats
    python bench/throughput.py --quick              # N=32, L=2 s, 1 repeat
    python bench/throughput.py --write-results      # also update bench/RESULTS.md
    python bench/throughput.py --load 2             # the same with 2 busy processes beside it

The physical limit of a paid run is ``concurrency / latency`` calls per
second, so the efficiency of a run of N calls is ``N*L/C / wall`` (1.0 = the
limit).  The baseline is the original tool's shape: one process, a pool of C
threads, each doing the same call, decode, pad, PNG encode and write, and no
label-safety QC (the original tool had none).  So the pipeline runs twice per
repeat: as configured (QC on, the default) and with ``qc.enabled: false``, the
baseline's processing (the pipeline still checks that each answer decodes and
writes sidecars and the manifest).  Also measured: when the API was left idle
(the stand-in's record of each call: before the first call, empty call places
in between, after the last answer), where a job's time goes (CPU per process
kind, per-stage profile), and the `local` provider's images/s against the same
operations in a plain loop.  ``--load K`` runs K busy processes (one
CPU-bound loop each) through every timed run, pipeline and baseline alike:
how each degrades on a machine that is doing other work.
"""

from __future__ import annotations

import argparse
import compileall
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

from tests.helpers import copy_workflow, make_dataset  # noqa: E402
from tests.standin.launch import start_process  # noqa: E402

KEY = "bench-key-not-secret"
NO_QC = "run_noqc.yaml"  # the same run without the QC gate: the baseline's processing


def setup(workdir: Path, n: int, variants: int, url: str, concurrency: int, provider: str, png_level: int) -> Path:
    wf = copy_workflow(workdir / "wf")
    # Job processes import the package from this copy. Byte-compile it once, as any checkout is
    # after its first run; otherwise, where PYTHONDONTWRITEBYTECODE is set (this machine sets it),
    # every job would compile the package from source again.
    compileall.compile_dir(wf / "scripts", quiet=1)
    n_images = -(-n // variants)
    make_dataset(wf / "data", n=n_images, size=(2000, 1000))
    cfg = {
        "api": {
            "provider": provider,
            "model": "recipes-v1" if provider == "local" else None,
            "base_url": f"{url}/v1beta" if provider == "gemini" else None,
            "concurrency": concurrency,
            "max_retries": 1,
            "timeout_s": 60,
            "match_aspect": False,
        },
        "data": {"data_root": "data", "output_dir": "data/aug"},
        "postprocess": {"enforce_aspect_ratio": 2.0, "mode": "pad", "png_compress_level": png_level},
        "augmentations": [
            {
                "name": "overcast",
                "prompt": "Overcast.",
                "num_images": variants,
                "local": {"exposure": -0.3, "white_balance": 7000, "gaussian_noise": 0.01},
            }
        ],
    }
    (wf / "run.yaml").write_text(yaml.safe_dump(cfg))
    (wf / NO_QC).write_text(yaml.safe_dump({**cfg, "qc": {"enabled": False}}))
    (wf / "gemini.secret").write_text(KEY)
    return wf


def clear_outputs(wf: Path):
    shutil.rmtree(wf / "data" / "aug", ignore_errors=True)
    shutil.rmtree(wf / ".snakemake", ignore_errors=True)


def run_pipeline(
    wf: Path, jobs: int, limit_images: int | None = None, env: dict | None = None, configfile: str = "run.yaml"
) -> float:
    args = [sys.executable, "-m", "snakemake", "-j", str(jobs), "--configfile", configfile, "--quiet", "all"]
    if limit_images:
        args += ["--config", f"limit={limit_images}"]
    t0 = time.monotonic()
    res = subprocess.run(args, cwd=wf, capture_output=True, text=True, env=env)
    wall = time.monotonic() - t0
    if res.returncode != 0:
        raise RuntimeError(res.stderr[-3000:])
    return wall


def baseline(wf: Path, threads: int, concurrency: int, url: str, png_level: int) -> float:
    """The original tool's shape: C threads in one process, same call + post-processing + write."""
    from nano_banana_aug import imaging, postprocess
    from nano_banana_aug.providers.base import Request
    from nano_banana_aug.providers.gemini import GeminiProvider

    cfg = yaml.safe_load((wf / "run.yaml").read_text())
    variants = cfg["augmentations"][0]["num_images"]
    pp = {
        "enforce_aspect_ratio": 2.0,
        "mode": "pad",
        "pad_mode": "reflect",
        "target_size": None,
        "resample": "bicubic",
        "png_compress_level": png_level,
    }
    out = wf / "baseline_out"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    sources = sorted((wf / "data" / "train").glob("*.jpg"))
    jobs = [(src, k) for src in sources for k in range(variants)]
    provider = GeminiProvider(api_key=KEY, base_url=f"{url}/v1beta", timeout_s=60)

    def one(job):
        src, k = job
        data = src.read_bytes()
        gen = provider.attempt(Request(data, "image/jpeg", "Overcast.", src.stem, "overcast", k))
        image = imaging.decode(gen.data, max_pixels=50_000_000)
        geo = postprocess.plan(image.width, image.height, pp)
        png = imaging.encode(postprocess.apply(image, geo, pp), "png", pp)
        (out / f"{src.stem}__overcast__v{k}.png").write_bytes(png)
        (out / f"{src.stem}__overcast__v{k}.json").write_text(json.dumps(geo.record()))

    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(one, jobs))
    return time.monotonic() - t0


SITECUSTOMIZE = """
import atexit, os, resource, sys
def _report():
    r = resource.getrusage(resource.RUSAGE_SELF)
    with open(os.environ["NB_BENCH_CPU_LOG"], "a") as f:
        f.write(f"{r.ru_utime + r.ru_stime:.4f}\\t{' '.join(sys.argv)[:200]}\\n")
atexit.register(_report)
"""


def job_cpu(wf: Path, jobs: int) -> dict:
    """CPU seconds per process kind in one pipeline run (each Python process reports its own
    getrusage at exit through a sitecustomize on PYTHONPATH): where a target's CPU goes."""
    import re
    from collections import defaultdict

    hook = wf / "cpu_hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(SITECUSTOMIZE)
    log = wf / "cpu.log"
    log.unlink(missing_ok=True)
    clear_outputs(wf)
    env = {**os.environ, "PYTHONPATH": str(hook), "NB_BENCH_CPU_LOG": str(log)}
    wall = run_pipeline(wf, jobs, env=env)
    kinds = defaultdict(list)
    for line in log.read_text().splitlines():
        cpu, argv = line.split("\t", 1)
        m = re.search(r"tmp\w+\.(\w+)\.py", argv)
        kinds[m.group(1) + " job" if m else "snakemake (main process)"].append(float(cpu))
    out = {"wall (s)": wall}
    for kind, cpus in sorted(kinds.items(), key=lambda kv: -sum(kv[1])):
        out[f"{kind}: {len(cpus)} process(es), CPU s total / each"] = f"{sum(cpus):.1f} / {statistics.median(cpus):.3f}"
    return out


def call_timeline(url: str, t0: float, wall: float, concurrency: int) -> dict:
    """Where the calls of one pipeline run (started at wall-clock ``t0``) left the API idle, from the
    stand-in's record of each request: seconds until the first call, the call places left empty
    between the first call and the last answer (slot-seconds / C: wall seconds at full concurrency)
    and the seconds after the last answer. Ideal + these + latency overhead = the run's wall time."""
    import requests

    calls = [
        (r["started"] - t0, r["finished"] - t0)
        for r in requests.get(f"{url}/_standin/requests", timeout=30).json()
        if r.get("finished") and t0 <= r["started"] <= t0 + wall
    ]
    first, last = min(s for s, _ in calls), max(e for _, e in calls)
    idle, in_flight, prev = 0.0, 0, first
    for t, step in sorted([(s, 1) for s, _ in calls] + [(e, -1) for _, e in calls]):
        idle += (concurrency - in_flight) * (t - prev)
        in_flight, prev = in_flight + step, t
    return {"first call": first, "call places empty": idle / concurrency, "after the last answer": wall - last}


def _stats(url: str) -> dict:
    import requests

    return requests.get(f"{url}/_standin/stats", timeout=10).json()


def stage_profile(wf: Path, png_levels=(1, 6), repeats: int = 5) -> dict:
    """Seconds per stage of one target, measured in isolation (medians)."""
    from PIL import Image

    from nano_banana_aug import imaging, postprocess

    def med(fn, n=repeats):
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    def start(modules: str):
        code = f"import sys; sys.path.insert(0, {str(wf / 'scripts')!r}); import {modules}"
        return med(lambda: subprocess.run([sys.executable, "-c", code], capture_output=True, check=True))

    src = sorted((wf / "data" / "train").glob("*.jpg"))[0]
    answer = io.BytesIO()
    Image.open(src).convert("RGB").resize((1376, 768)).save(answer, "PNG")
    answer = answer.getvalue()
    pp = {"enforce_aspect_ratio": 2.0, "mode": "pad", "pad_mode": "reflect", "target_size": None, "resample": "bicubic"}
    image = imaging.decode(answer, max_pixels=50_000_000)
    geo = postprocess.plan(*image.size, pp)
    padded = postprocess.apply(image, geo, pp)
    from nano_banana_aug import qc

    qc_cfg = {}
    reference = image.resize((geo.out_w, geo.out_h)).reduce(2)
    reference.save(wf / "qc_reference.png")
    padded.save(wf / "qc_output.png")
    out = {
        "answer job: process start + imports": start("snakemake.script, nano_banana_aug.answer"),
        "generate job: process start + imports": start("snakemake.script, nano_banana_aug.generate"),
        "QC of one output, repeated in one process": med(lambda: qc.check(reference, padded, qc_cfg)),
        "QC of one output, first in a new process (a generate job's case; CPU s)": statistics.median(
            first_qc_cpu(wf) for _ in range(repeats)
        ),
        "read source + base64": med(lambda: __import__("base64").b64encode(src.read_bytes())),
        "decode 1376x768 PNG answer": med(lambda: imaging.decode(answer, max_pixels=50_000_000)),
        "pad to 1536x768": med(lambda: postprocess.apply(image, geo, pp)),
    }
    for level in png_levels:
        out[f"PNG encode, level {level}"] = med(
            lambda level=level: imaging.encode(padded, "png", {"png_compress_level": level})
        )
        out[f"PNG size, level {level} (KB)"] = len(imaging.encode(padded, "png", {"png_compress_level": level})) / 1024
    return out


FIRST_QC = """
import sys, time
sys.path.insert(0, sys.argv[1])
from PIL import Image
from nano_banana_aug import qc
reference, output = Image.open(sys.argv[2]), Image.open(sys.argv[3])
reference.load()
output.load()
t0 = time.process_time()
qc.check(reference, output, {})
print(time.process_time() - t0)
"""


def first_qc_cpu(wf: Path) -> float:
    """CPU seconds of the first QC in a fresh process (the workflow copy's package): lazy imports
    and per-source set-up included, as each generate job pays them (a repeated call costs less).
    With one BLAS thread, as Snakemake runs a job of ``threads: 1`` (OPENBLAS_NUM_THREADS=1 &c.):
    spare BLAS threads spin after each matrix product and would add ~0.1 CPU-s here."""
    args = [
        sys.executable,
        "-c",
        FIRST_QC,
        str(wf / "scripts"),
        str(wf / "qc_reference.png"),
        str(wf / "qc_output.png"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return float(subprocess.run(args, capture_output=True, text=True, check=True, env=env).stdout)


def local_rate(wf: Path, repeats: int) -> dict:
    """Local provider: images/s in the pipeline vs. the same operations in a loop."""
    from nano_banana_aug import imaging, local_ops, postprocess

    cfg = yaml.safe_load((wf / "run.yaml").read_text())
    cfg["api"]["provider"] = "local"
    cfg["api"]["model"] = "recipes-v1"
    (wf / "run.yaml").write_text(yaml.safe_dump(cfg))
    n = len(list((wf / "data" / "train").glob("*.jpg"))) * cfg["augmentations"][0]["num_images"]
    walls = []
    for _ in range(repeats):
        clear_outputs(wf)
        walls.append(run_pipeline(wf, jobs=2))
    recipe = cfg["augmentations"][0]["local"]
    pp = {"enforce_aspect_ratio": 2.0, "mode": "pad", "png_compress_level": cfg["postprocess"]["png_compress_level"]}
    sources = sorted((wf / "data" / "train").glob("*.jpg"))

    def loop(with_recipe: bool) -> float:
        t0 = time.monotonic()
        for i in range(n):
            data = sources[i % len(sources)].read_bytes()
            img = imaging.decode(data, max_pixels=50_000_000)
            if with_recipe:
                params = local_ops.sample_params(recipe, "x", "a", i, 0)
                img = local_ops.apply_recipe(img, params, i)
            geo = postprocess.plan(*img.size, pp)
            imaging.encode(postprocess.apply(img, geo, pp), "png", pp)
        return time.monotonic() - t0

    loop_full = loop(True)
    loop_io = loop(False)
    return {
        "targets": n,
        "pipeline wall (s, -j 2)": statistics.median(walls),
        "pipeline images/s": n / statistics.median(walls),
        "same ops in one loop, images/s (1 core)": n / loop_full,
        "decode + encode only, images/s (1 core)": n / loop_io,
    }


@contextmanager
def busy(k: int):
    """K CPU-bound processes for the duration of the block: a machine doing other work."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(k)]
    try:
        yield
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def machine() -> str:
    cpu = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import snakemake

    return (
        f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, Snakemake {snakemake.__version__}, "
        f"load average at start {os.getloadavg()[0]:.2f}"
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=96, help="targets")
    ap.add_argument("--latency", type=float, default=5.0, help="stand-in answer latency L (s)")
    ap.add_argument("--concurrency", type=int, default=8, help="api.concurrency C")
    ap.add_argument("--jobs", type=int, default=16, help="snakemake -j")
    ap.add_argument("--threads", type=int, default=8, help="baseline threads")
    ap.add_argument("--png-level", type=int, default=6, help="postprocess.png_compress_level")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="N=32, L=2, 1 repeat")
    ap.add_argument("--load", type=int, default=0, help="busy processes running beside every timed run")
    ap.add_argument("--write-results", action="store_true", help="update the Throughput section of bench/RESULTS.md")
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.latency, args.repeats = 32, 2.0, 1
    variants = 8
    work = Path(tempfile.mkdtemp(prefix="nbthroughput-"))
    info = machine()  # before the runs: their own load is not the machine's "at start"
    print(info)
    proc, url = start_process(work / "standin.url", api_key=KEY, latency=args.latency)
    try:
        wf = setup(work, args.n, variants, url, args.concurrency, "gemini", args.png_level)
        n = len(list((wf / "data" / "train").glob("*.jpg"))) * variants
        ideal = n * args.latency / args.concurrency
        pipe, pipe_no_qc, base, timelines = [], [], [], []
        for r in range(args.repeats):
            clear_outputs(wf)
            with busy(args.load):
                t0 = time.time()
                pipe.append(run_pipeline(wf, args.jobs))
            timelines.append(call_timeline(url, t0, pipe[-1], args.concurrency))
            clear_outputs(wf)
            with busy(args.load):
                pipe_no_qc.append(run_pipeline(wf, args.jobs, configfile=NO_QC))
            with busy(args.load):
                base.append(baseline(wf, args.threads, args.concurrency, url, args.png_level))
            print(
                f"repeat {r + 1}: pipeline {pipe[-1]:.1f}s, without QC {pipe_no_qc[-1]:.1f}s, "
                f"baseline {base[-1]:.1f}s (ideal {ideal:.1f}s)",
                flush=True,
            )
        stats = _stats(url)
        # a re-run over the finished outputs (those of the last run) must make no call at all
        run_pipeline(wf, args.jobs, configfile=NO_QC)
        repeat_calls = _stats(url).get("count", 0) - stats.get("count", 0)
        # the per-process and per-stage figures are the quiet machine's (a --load run compares walls)
        cpu = {} if args.load else job_cpu(wf, args.jobs)
        profile = {} if args.load else stage_profile(wf)
        local = {} if args.load else local_rate(wf, max(1, args.repeats - 1))
    finally:
        proc.terminate()
        proc.wait()
    p, p0, b = statistics.median(pipe), statistics.median(pipe_no_qc), statistics.median(base)
    lines = [
        f"Machine: {info}",
        "",
        f"N = {n} targets, L = {args.latency:g} s, C = {args.concurrency}, snakemake -j {args.jobs}, "
        f"baseline {args.threads} threads, PNG level {args.png_level}, {args.repeats} repeat(s), "
        + (f"{args.load} busy process(es) beside every timed run, " if args.load else "")
        + "medians:",
        "",
        "| run | wall (s) | efficiency N·L/C / wall | vs. baseline |",
        "|---|---|---|---|",
        f"| ideal (C calls always in flight) | {ideal:.1f} | 1.00 | |",
        f"| pipeline (snakemake), QC on (default) | {p:.1f} | {ideal / p:.2f} | {b / p:.2f}x as fast |",
        f"| pipeline, `qc.enabled: false` (no QC, as the baseline) | {p0:.1f} | {ideal / p0:.2f} | {b / p0:.2f}x as fast |",
        f"| thread-pool baseline (no QC) | {b:.1f} | {ideal / b:.2f} | 1.00 |",
        "",
        f"Stand-in max calls in flight: {stats.get('max_in_flight', 'n/a')} (cap {args.concurrency}); "
        f"calls made by a re-run over the finished outputs: {repeat_calls}.",
        "",
        "Where the pipeline (QC on) leaves the API idle, from the stand-in's record of each call (medians, s):",
        "",
        "| span | seconds |",
        "|---|---|",
        *[f"| {k} | {statistics.median(t[k] for t in timelines):.1f} |" for k in timelines[0]],
    ]
    if not args.load:
        lines += extras_lines(cpu, profile, local)
    text = "\n".join(lines)
    print(text)
    if args.write_results:
        loaded = f", {args.load} busy processes beside it" if args.load else ""
        write_section(
            ROOT / "bench" / "RESULTS.md",
            f"## Throughput at L = {args.latency:g} s, C = {args.concurrency}{loaded}",
            text,
            f"python bench/throughput.py --n {args.n} --latency {args.latency:g} --concurrency {args.concurrency} "
            f"--jobs {args.jobs} --threads {args.threads}"
            + (f" --load {args.load}" if args.load else "")
            + " --write-results",
        )
    shutil.rmtree(work, ignore_errors=True)
    return 0


def extras_lines(cpu: dict, profile: dict, local: dict) -> list[str]:
    return [
        "",
        "CPU by process kind in one more pipeline run (getrusage of each process at its exit):",
        "",
        "| process | value |",
        "|---|---|",
        *[f"| {k} | {v:.1f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in cpu.items()],
        "",
        "Per-target stages (medians, seconds, one process alone):",
        "",
        "| stage | value |",
        "|---|---|",
        *[f"| {k} | {v:.3f} |" for k, v in profile.items()],
        "",
        "`local` provider, 2000x1000 inputs:",
        "",
        "| measure | value |",
        "|---|---|",
        *[f"| {k} | {v:.2f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in local.items()],
    ]


def write_section(path: Path, heading: str, body: str, command: str) -> None:
    """Replace (or append) one '## ' section of RESULTS.md."""
    old = path.read_text() if path.exists() else "# Benchmark results\n"
    block = f"{heading}\n\nReproduce: `{command}`\n\n{body}\n"
    if f"{heading}\n" in old:  # the whole heading line: one heading may begin another
        start = old.index(f"{heading}\n")
        nxt = old.find("\n## ", start + len(heading))
        new = old[:start] + block + (old[nxt + 1 :] if nxt != -1 else "")
    else:
        new = old.rstrip("\n") + "\n\n" + block
    path.write_text(new)


if __name__ == "__main__":
    sys.exit(main())
