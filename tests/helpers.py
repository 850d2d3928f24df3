"""Shared test helpers: tiny CSIRO-style data sets and workflow copies."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
TARGET_NAMES = ["Dry_Green_g", "Dry_Dead_g", "Dry_Clover_g", "GDM_g", "Dry_Total_g"]
HEADER = "sample_id,image_path,Sampling_Date,State,Species,Pre_GSHH_NDVI,Height_Ave_cm,target_name,target"


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
    for name in ("Snakefile", "rules", "scripts", "configs", "profiles", "report"):
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(src, dest / name)
    return dest


def snakemake(workdir: Path, *args, timeout=300, env=None) -> subprocess.CompletedProcess:
    """Run the real snakemake CLI in ``workdir``."""
    cmd = [sys.executable, "-m", "snakemake", *args]
    return subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=timeout, env=env)


def make_paid_run(tmp_path: Path, standin, provider="gemini", n_images=2, augs=None, write_key=True,
                  size=(200, 100), extra=None, **api) -> Path:
    """A workflow copy with a tiny data set whose paid provider is the stand-in."""
    import yaml

    wf = copy_workflow(tmp_path / "wf")
    make_dataset(wf / "data", n=n_images, size=size)
    base = standin.gemini_base_url if provider == "gemini" else standin.openrouter_url
    cfg = {
        "api": {"provider": provider, "model": None, "base_url": base, "max_retries": 3, "retry_backoff_s": 0.05,
                "timeout_s": 10, "concurrency": 2, "match_aspect": False, **api},
        "data": {"data_root": "data", "output_dir": "data/aug"},
        "postprocess": {"enforce_aspect_ratio": 2.0, "mode": "pad", "png_compress_level": 1},
        "prompt_prefix": "Change only imaging conditions.",
        "augmentations": augs or [
            {"name": "overcast", "prompt": "Make it overcast.", "num_images": 1},
            {"name": "noise", "prompt": "Add sensor noise.", "num_images": 1},
        ],
        **(extra or {}),
    }
    (wf / "run.yaml").write_text(yaml.safe_dump(cfg))
    if write_key:
        (wf / f"{provider}.secret").write_text(standin.api_key + "\n")
    return wf
