#!/usr/bin/env python
"""A per-minute quota: the run-wide rate limit against 429 storms, in the same run.

    python bench/rate_limit.py                    # N=60, quota 30/min, C=8, L=3 s
    python bench/rate_limit.py --write-results    # also update bench/RESULTS.md

The stand-in answers 429 (QuotaFailure ...PerMinute..., RetryInfo until a
place frees) to a 31st accepted request within any 60 s, like Google's
per-minute quota.  Two runs of the same N targets:

- ``limited``:  ``api.max_requests_per_minute`` = the quota (spaced starts, run-wide)
- ``baseline``: no limit (every job sends at once and relies on 429 + RetryInfo,
  which every job then honours through the shared cool-down)

The ideal wall time is N / quota minutes (60 targets at 30/min: 120 s); the
report gives each run's wall time, its ratio to the ideal, and the 429s.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

from bench.throughput import machine, write_section  # noqa: E402
from tests.helpers import copy_workflow, make_dataset  # noqa: E402
from tests.standin.server import StandinServer  # noqa: E402

KEY = "bench-key-not-secret"


def one_run(work: Path, server: StandinServer, n: int, quota: int, concurrency: int, limit: int | None) -> dict:
    wf = copy_workflow(work / "wf")
    make_dataset(wf / "data", n=n, size=(400, 200))
    cfg = {
        "api": {
            "provider": "gemini",
            "base_url": server.gemini_base_url,
            "concurrency": concurrency,
            "max_retries": 8,
            "retry_backoff_s": 1.0,
            "timeout_s": 60,
            "max_requests_per_minute": limit,
            "match_aspect": False,
        },
        "data": {"data_root": "data", "output_dir": "data/aug"},
        "postprocess": {"enforce_aspect_ratio": 2.0, "mode": "pad", "png_compress_level": 1},
        "augmentations": [{"name": "overcast", "prompt": "Overcast.", "num_images": 1}],
    }
    (wf / "run.yaml").write_text(yaml.safe_dump(cfg))
    (wf / "gemini.secret").write_text(KEY)
    server.reset()
    server.set_quota(per_minute=quota)
    t0 = time.monotonic()
    res = subprocess.run(
        [sys.executable, "-m", "snakemake", "-j", str(2 * concurrency), "--configfile", "run.yaml", "--quiet", "all"],
        cwd=wf,
        capture_output=True,
        text=True,
    )
    wall = time.monotonic() - t0
    reqs = server.requests
    return {
        "ok": res.returncode == 0,
        "wall": wall,
        "requests": len(reqs),
        "answers": sum(1 for r in reqs if r.status == 200),
        "r429": sum(1 for r in reqs if r.status == 429),
        "tail": res.stderr[-1500:] if res.returncode else "",
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=60)
    ap.add_argument("--quota", type=int, default=30, help="stand-in requests per minute")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--latency", type=float, default=3.0)
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--write-results", action="store_true")
    args = ap.parse_args(argv)
    ideal = args.n / args.quota * 60
    server = StandinServer(api_key=KEY, latency=args.latency).start()
    results = {}
    try:
        for name, limit in (("limited", args.quota), ("baseline", None)):
            if name == "baseline" and args.no_baseline:
                continue
            with tempfile.TemporaryDirectory(prefix=f"nbaug-rate-{name}-") as tmp:
                r = one_run(Path(tmp), server, args.n, args.quota, args.concurrency, limit)
            results[name] = r
            print(
                f"{name:9s} ok={r['ok']} wall={r['wall']:.1f}s ({r['wall'] / ideal:.2f}x the {ideal:.0f} s ideal) "
                f"requests={r['requests']} answers={r['answers']} 429s={r['r429']}",
                flush=True,
            )
            if r["tail"]:
                print(r["tail"])
    finally:
        server.stop()
    if args.write_results:
        lines = [
            f"{args.n} targets, stand-in quota {args.quota} requests/min (429 + QuotaFailure + RetryInfo past it), "
            f"api.concurrency {args.concurrency}, answer latency {args.latency:g} s; ideal {ideal:.0f} s. "
            f"Machine: {machine()}.",
            "",
            "| run | api.max_requests_per_minute | wall | / ideal | requests | 429 answers |",
            "|---|---|---|---|---|---|",
        ]
        for name, r in results.items():
            lines.append(
                f"| {name} | {args.quota if name == 'limited' else 'null'} | {r['wall']:.1f} s | "
                f"{r['wall'] / ideal:.2f} | {r['requests']} | {r['r429']} |"
            )
        write_section(
            ROOT / "bench" / "RESULTS.md",
            "## Rate limit (per-minute quota)",
            "\n".join(lines),
            "python bench/rate_limit.py --write-results",
        )
    return 0 if all(r["ok"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
