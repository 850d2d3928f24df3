"""Shared test helpers: tiny CSIRO-style data sets, workflow copies, the snakemake CLI."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
TARGET_NAMES = ["Dry_Green_g", "Dry_Dead_g", "Dry_Clover_g", "GDM_g", "Dry_Total_g"]
HEADER = "sample_id,image_path,Sampling_Date,State,Species,Pre_GSHH_NDVI,Height_Ave_cm,target_name,target"
WORKFLOW = ("Snakefile", "rules", "scripts", "configs", "profiles", "report")
LOCAL_AUGS = [
    {"name": "bright", "prompt": "Brighter.", "num_images": 2, "local": {"exposure": [0.3, 0.6]}},
    {"name": "blur", "prompt": "Blur.", "num_images": 1, "local": {"gaussian_blur": 1.0}},
]


def textured(w: int, h: int, seed: int) -> Image.Image:
    """A non-periodic textured RGB image (cheap stand-in for a pasture photo)."""
    rng = np.random.default_rng(seed)
    small = rng.random((max(2, h // 8), max(2, w // 8), 3))
    img = Image.fromarray((small * 255).astype(np.uint8)).resize((w, h), Image.Resampling.BICUBIC)
    arr = np.asarray(img).astype(np.float32) + rng.normal(0, 12, (h, w, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def make_dataset(root: Path, n: int = 4, size=(200, 100), missing_total=(), extra_rows=()) -> Path:
    """data_root with train/<id>.jpg and a long-format train.csv; returns data_root."""
    (root / "train").mkdir(parents=True, exist_ok=True)
    lines = [HEADER]
    for i in range(n):
        iid = f"ID{1000 + i}"
        textured(*size, seed=i).save(root / "train" / f"{iid}.jpg", quality=90)
        for t in TARGET_NAMES:
            value = "" if (iid in missing_total and t == "Dry_Total_g") else f"{10 + i}.5"
            lines.append(f"{iid}__{t},train/{iid}.jpg,2015/09/04,Tas,Ryegrass,0.62,4.0,{t},{value}")
    lines.extend(extra_rows)
    (root / "train.csv").write_text("\n".join(lines) + "\n")
    return root


def copy_workflow(dest: Path) -> Path:
    """A copy of the workflow (Snakefile, rules, scripts, configs, profiles) to run in."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in WORKFLOW:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
        else:
            shutil.copy2(src, dest / name)
    return dest


def clone(src: Path, dest: Path) -> Path:
    """A copy of a workflow directory with its data, outputs and Snakemake metadata (times kept)."""
    shutil.copytree(src, dest, symlinks=True, ignore=shutil.ignore_patterns("__pycache__", "locks", "incomplete"))
    return dest


def write_config(wf: Path, cfg: dict, name: str = "run.yaml") -> Path:
    (wf / name).write_text(yaml.safe_dump(cfg))
    return wf / name


def edit_config(wf: Path, edit, name: str = "run.yaml") -> dict:
    cfg = yaml.safe_load((wf / name).read_text())
    edit(cfg)
    write_config(wf, cfg, name)
    return cfg


def make_run(tmp_path: Path, n_images=3, augs=None, size=(200, 100), **extra) -> Path:
    """A workflow copy with a tiny data set and the offline `local` provider."""
    wf = copy_workflow(tmp_path / "wf")
    make_dataset(wf / "data", n=n_images, size=size, missing_total=extra.pop("missing_total", ()))
    cfg = {
        "api": {"provider": "local", "model": "recipes-v1"},
        "data": {"data_root": "data", "output_dir": "data/aug"},
        "postprocess": {"enforce_aspect_ratio": 2.0, "mode": "pad", "png_compress_level": 1},
        "augmentations": augs or LOCAL_AUGS,
    }
    cfg.update(extra)
    write_config(wf, cfg)
    return wf


def make_paid_run(
    tmp_path: Path,
    standin,
    provider="gemini",
    n_images=2,
    augs=None,
    write_key=True,
    size=(200, 100),
    extra=None,
    **api,
) -> Path:
    """A workflow copy with a tiny data set whose paid provider is the stand-in."""
    wf = copy_workflow(tmp_path / "wf")
    make_dataset(wf / "data", n=n_images, size=size)
    base = standin.gemini_base_url if provider == "gemini" else standin.openrouter_url
    cfg = {
        "api": {
            "provider": provider,
            "model": None,
            "base_url": base,
            "max_retries": 3,
            "retry_backoff_s": 0.05,
            "timeout_s": 10,
            "concurrency": 2,
            "match_aspect": False,
            **api,
        },
        "data": {"data_root": "data", "output_dir": "data/aug"},
        "postprocess": {"enforce_aspect_ratio": 2.0, "mode": "pad", "png_compress_level": 1},
        "prompt_prefix": "Change only imaging conditions.",
        "augmentations": augs
        or [
            {"name": "overcast", "prompt": "Make it overcast.", "num_images": 1},
            {"name": "noise", "prompt": "Add sensor noise.", "num_images": 1},
        ],
        **(extra or {}),
    }
    write_config(wf, cfg)
    if write_key:
        (wf / f"{provider}.secret").write_text(standin.api_key + "\n")
    return wf


def snakemake(workdir: Path, *args, timeout=300, env=None) -> subprocess.CompletedProcess:
    """Run the real snakemake CLI in ``workdir``."""
    cmd = [sys.executable, "-m", "snakemake", *args]
    return subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=timeout, env=env)


def run(wf: Path, *args, check=True, jobs="8", config="run.yaml", target=None, profile=True, timeout=300, env=None):
    """``snakemake [target] -j N --configfile run.yaml *args`` in a workflow copy."""
    extra = () if profile else ("--workflow-profile", "none")
    res = snakemake(
        wf, *([target] if target else []), *extra, "-j", jobs, "--configfile", config, *args, timeout=timeout, env=env
    )
    if check and res.returncode != 0:
        raise AssertionError(f"snakemake failed ({res.returncode}):\n{res.stderr[-4000:]}")
    return res


def like_a_terminal_job() -> None:
    """``preexec_fn``: Ctrl-C (SIGINT) acts as in a terminal's foreground job. A shell without job
    control starts background commands with SIGINT ignored, and that is inherited (the test suite
    itself may run so, e.g. ``bash .ci/run &``); Python then never raises KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(wf: Path, *args, log_name="bg.log", jobs="8", env=None) -> subprocess.Popen:
    """A run in the background (its own process group, Ctrl-C as in a terminal), stderr into a file."""
    log = open(wf / log_name, "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "snakemake", "-j", jobs, "--configfile", "run.yaml", *args],
        cwd=wf,
        stdout=subprocess.DEVNULL,
        stderr=log,
        start_new_session=True,
        preexec_fn=like_a_terminal_job,
        env=env,
    )
    proc.log_path = wf / log_name
    return proc


def wait_for(predicate, what, timeout=180):
    """Until ``predicate()`` holds (files and logs written by other processes)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def rows(wf: Path, out="data/aug") -> list[dict]:
    path = wf / out / "manifest.csv"
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def outputs(wf: Path, out="data/aug") -> dict[str, tuple[int, int]]:
    """name -> (inode, mtime_ns) of every output image."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted((wf / out).glob("*.png"))}


def log_text(wf: Path, out="data/aug") -> str:
    p = wf / out / "augment.log"
    return p.read_text() if p.exists() else ""


def said(res: subprocess.CompletedProcess) -> str:
    """Everything a snakemake call printed (a dry-run writes to stdout)."""
    return res.stdout + res.stderr


def jobs_run(res: subprocess.CompletedProcess, rule: str) -> int:
    """How many jobs of ``rule`` Snakemake's job table lists (0 when absent)."""
    import re

    name = rule.replace("_", "[ _]")  # the rich logger writes "manifest part"
    counts = [int(m.group(1)) for m in re.finditer(rf"^\s*{name}\s+(\d+)\s*$", res.stdout + res.stderr, re.M)]
    return counts[-1] if counts else 0


def local_hold_env(hold: Path) -> dict:
    """Environment that makes every local-provider job wait while ``hold`` exists (see providers/local.py)."""
    return {**os.environ, "NANO_BANANA_LOCAL_HOLD": str(hold)}


def blocked_on(path: Path) -> int:
    """How many processes wait in flock() for ``path`` (the kernel's own list, /proc/locks)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return 0
    dev = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    return sum(1 for line in Path("/proc/locks").read_text().splitlines() if "->" in line and dev in line)
