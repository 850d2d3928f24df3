#!/usr/bin/env python
"""Scale: planning and a no-op re-run at 10^4-10^5 targets, next to plain Snakemake.

    python bench/scale.py                           # 25,000 images x 4 augmentations = 10^5 targets
    python bench/scale.py --images 2500 --repeats 3 # 10^4 targets
    python bench/scale.py --images 250 --repeats 1  # smoke test (1,000 targets)
    python bench/scale.py --write-results           # also update the Scale section of bench/RESULTS.md

For N images it builds, in a temporary directory, a copy of the workflow
(profiles/default applies, as for a user) and a CSIRO-style train.csv of N
images x 5 target rows, every image a hard link to one 16x8 JPEG; 4
augmentations of one variant each, `api.provider: local`: 4N targets.
Measured, each as the wall time of one `snakemake` command (medians):

  checkpoint  `snakemake --until targets`: start-up, parse, the targets table;
  planning    `snakemake -n` with the table there: what the run would do (4N
              answer jobs + 4N generate jobs + the aggregate);
  no-op       `snakemake` on a finished directory (every answer, output and
              sidecar present, the manifest built): must say "Nothing to be done".

The finished directory is made from one real target: a 1-image run of the
same config makes its answer, output and sidecar, which are copied to every
other target with the image id replaced (all sources are the same bytes, so
the answers' fingerprints hold), answers older than outputs; one `snakemake`
run then builds the manifest parts, the manifest and the summary (reported
as "aggregate"), and the no-op is the run after it.

Plain Snakemake, same shape: a checkpoint listing the N ids, a rule making
each of the 4N files (`touch`), a second rule per file (the pair answer ->
generate), an aggregate over all 4N; the same profile settings.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from tests.helpers import HEADER, TARGET_NAMES, copy_workflow  # noqa: E402

AUGS = ["a0", "a1", "a2", "a3"]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
CONFIG = {
    "api": {"provider": "local", "model": "recipes-v1"},
    "data": {"data_root": "data", "output_dir": "data/out"},
    "postprocess": {"png_compress_level": 1},
    "qc": {"enabled": False},
    "augmentations": [{"name": a, "prompt": "identity", "num_images": 1, "local": {}} for a in AUGS],
}
FIRST = 1000000  # image ids ID1000000, ID1000001, ...


def run(cmd, cwd, log: Path, expect: str | None = None) -> float:
    """Wall seconds of one command; its output goes to ``log``; fails loudly."""
    t0 = time.perf_counter()
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    log.write_text(res.stdout + res.stderr)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} in {cwd} failed:\n{(res.stdout + res.stderr)[-3000:]}")
    if expect is not None and not re.search(expect, res.stdout + res.stderr):
        raise RuntimeError(f"{' '.join(map(str, cmd))}: {expect!r} not in its output (see {log})")
    return wall


def make_images(root: Path, n: int) -> None:
    from PIL import Image

    (root / "train").mkdir(parents=True, exist_ok=True)
    one = root / ".one.jpg"
    Image.new("RGB", (16, 8), (90, 140, 60)).save(one, quality=90)
    lines = [HEADER]
    for i in range(n):
        iid = f"ID{FIRST + i}"
        os.link(one, root / "train" / f"{iid}.jpg")
        lines += [
            f"{iid}__{t},train/{iid}.jpg,2015/09/04,Tas,Ryegrass,0.62,4.0,{t},{10 + i % 50}.5" for t in TARGET_NAMES
        ]
    (root / "train.csv").write_text("\n".join(lines) + "\n")


def make_ours(work: Path, n: int) -> Path:
    copy_workflow(work)
    make_images(work / "data", n)
    (work / "bench.yaml").write_text(json.dumps(CONFIG, indent=1))  # JSON is YAML
    return work


def finish(work: Path, n: int, logs: Path) -> float:
    """Every target of ``work`` answered and built, from one real target; then the aggregate
    run (manifest parts, manifest, summary). Returns the aggregate run's wall time."""
    from nano_banana_aug import layout

    seed = make_ours(work.parent / "seed", 1)
    run([*SNAKEMAKE, "-j", "2", "--configfile", "bench.yaml"], seed, logs / "seed.log")
    src, dst = seed / "data" / "out", work / "data" / "out"
    t_answer, t_output = time.time() - 3600, time.time() - 1800
    for p in (src / ".pipeline" / "settings").iterdir():  # the derive settings: an input of every generate job
        target = dst / p.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(p, target)
        os.utime(target, (t_answer, t_answer))
    old = f"ID{FIRST}"
    for aug in AUGS:
        stem0 = layout.stem(old, aug, 0)
        answer_files = [p for p in layout.answer_dir(src, stem0).iterdir() if p.name != ".lock"]
        png = layout.output_path(src, stem0, "png").read_bytes()
        sidecar = layout.sidecar_path(src, stem0).read_text()
        layout.sidecar_dir(dst).mkdir(parents=True, exist_ok=True)
        texts = {p.name: p.read_text() for p in answer_files if p.suffix == ".json"}
        blobs = {p.name: p.read_bytes() for p in answer_files if p.suffix != ".json"}
        for i in range(n):
            iid = f"ID{FIRST + i}"
            stem = layout.stem(iid, aug, 0)
            d = layout.answer_dir(dst, stem)
            d.mkdir(parents=True, exist_ok=True)
            for name, text in texts.items():
                (d / name).write_text(text.replace(old, iid))
            for name, blob in blobs.items():
                (d / name).write_bytes(blob)
            for p in d.iterdir():
                os.utime(p, (t_answer, t_answer))
            out = layout.output_path(dst, stem, "png")
            out.write_bytes(png)
            side = layout.sidecar_path(dst, stem)
            side.write_text(sidecar.replace(old, iid))
            os.utime(out, (t_output, t_output))
            os.utime(side, (t_output, t_output))
    return run([*SNAKEMAKE, "-j", "2", "--configfile", "bench.yaml"], work, logs / "ours_aggregate.log")


PLAIN_SNAKEFILE = """
# Plain Snakemake, the pipeline's shape: checkpoint -> answer -> generate per target -> aggregate.
checkpoint ids:
    input: "train.csv"
    output: "ids.txt"
    shell: "cut -d, -f2 {input} | tail -n +2 | sort -u | sed 's#train/##; s#.jpg##' > {output}"

def all_outputs(wildcards):
    with open(checkpoints.ids.get().output[0]) as fh:
        ids = [line.strip() for line in fh if line.strip()]
    return [f"out/{i}__a{k}.txt" for i in ids for k in range(4)]

rule all:
    default_target: True
    input: "agg.txt"

rule agg:
    input: all_outputs
    output: "agg.txt"
    shell: "ls out | wc -l > {output}"

rule answer:
    output: "answers/{id}__a{k}.txt"
    shell: "touch {output}"

rule generate:
    input: "answers/{id}__a{k}.txt"
    output: "out/{id}__a{k}.txt"
    shell: "touch {output}"
"""


def make_plain(work: Path, n: int) -> Path:
    work.mkdir(parents=True)
    (work / "Snakefile").write_text(PLAIN_SNAKEFILE)
    shutil.copytree(ROOT / "profiles" / "default", work / "profiles" / "default")
    make_images(work, n)
    return work


def finish_plain(work: Path, n: int) -> None:
    for d in ("answers", "out"):
        (work / d).mkdir(exist_ok=True)
    t_answer, t_output = time.time() - 3600, time.time() - 1800
    for i in range(n):
        for k in range(4):
            a, o = work / "answers" / f"ID{FIRST + i}__a{k}.txt", work / "out" / f"ID{FIRST + i}__a{k}.txt"
            a.touch()
            o.touch()
            os.utime(a, (t_answer, t_answer))
            os.utime(o, (t_output, t_output))
    (work / "agg.txt").write_text(f"{4 * n}\n")


def bench(base: Path, n: int, repeats: int) -> dict:
    logs = base / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    targets = 4 * n
    ours = make_ours(base / "ours", n)
    plain = make_plain(base / "plain", n)
    cfg = ["--configfile", "bench.yaml"]
    r: dict = {"images": n, "targets": targets, "load": os.getloadavg()[0]}
    m = {k: [] for k in ("ours_ckpt", "plain_ckpt", "ours_plan", "plain_plan", "ours_noop", "plain_noop")}
    for _ in range(repeats):
        shutil.rmtree(ours / "data" / "out" / ".pipeline", ignore_errors=True)
        m["ours_ckpt"].append(run([*SNAKEMAKE, "-j", "1", *cfg, "--until", "targets"], ours, logs / "ours_ckpt.log"))
        (plain / "ids.txt").unlink(missing_ok=True)
        m["plain_ckpt"].append(run([*SNAKEMAKE, "-j", "1", "ids.txt"], plain, logs / "plain_ckpt.log"))
    for _ in range(repeats):
        m["ours_plan"].append(
            run([*SNAKEMAKE, "-n", *cfg], ours, logs / "ours_plan.log", expect=rf"answer\s+{targets}\b")
        )
        m["plain_plan"].append(run([*SNAKEMAKE, "-n"], plain, logs / "plain_plan.log", expect=rf"answer\s+{targets}\b"))
    r["aggregate"] = finish(ours, n, logs)
    finish_plain(plain, n)
    for _ in range(repeats):
        m["ours_noop"].append(
            run([*SNAKEMAKE, "-j", "8", *cfg], ours, logs / "ours_noop.log", expect="Nothing to be done")
        )
        m["plain_noop"].append(
            run([*SNAKEMAKE, "-j", "8"], plain, logs / "plain_noop.log", expect="Nothing to be done")
        )
    r.update({k: statistics.median(v) for k, v in m.items()})
    r["load_after"] = os.getloadavg()[0]
    return r


def report(r: dict, repeats: int) -> str:
    def row(what, ours, plain):
        return f"| {what} | {r[ours]:.1f} | {r[plain]:.1f} | {r[ours] / r[plain]:.2f} |"

    import snakemake

    return "\n".join(
        [
            f"{os.cpu_count()} cores, Python {platform.python_version()}, Snakemake {snakemake.__version__}; "
            f"load average {r['load']:.2f} before, {r['load_after']:.2f} after; medians of {repeats}.",
            "",
            f"{r['images']:,} images x 4 augmentations = {r['targets']:,} targets (no patch of Snakemake):",
            "",
            "| step | this workflow (s) | plain two-rule Snakemake (s) | ratio |",
            "|---|---|---|---|",
            row("checkpoint (`--until targets` / `ids.txt`)", "ours_ckpt", "plain_ckpt"),
            row("planning (`snakemake -n`, table there)", "ours_plan", "plain_plan"),
            row('no-op re-run ("Nothing to be done")', "ours_noop", "plain_noop"),
            "",
            f"The aggregate after the outputs were made (manifest parts, manifest, summary over "
            f"{r['targets']:,} outputs): {r['aggregate']:.1f} s.",
        ]
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=25000, help="images (targets = 4 x images)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--write-results", action="store_true", help="update the Scale section of bench/RESULTS.md")
    args = ap.parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="nbscale-"))
    try:
        r = bench(base, args.images, args.repeats)
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    text = report(r, args.repeats)
    print(text)
    if args.write_results:
        from throughput import write_section

        write_section(
            ROOT / "bench" / "RESULTS.md",
            "## Scale",
            text,
            f"python bench/scale.py --images {args.images} --repeats {args.repeats} --write-results",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
