"""A person's decisions on the outputs: keep or reject, saved in ``{output_dir}/review.json``.

    python -m nano_banana_aug.review --configfile configs/sample.yaml

serves the review page (``gallery/index.html``, built first when needed) on
127.0.0.1 and saves every mark the moment it is made (atomically: stopping
the server at any time loses nothing). Without the server, the page keeps the
marks in the browser and exports them as a ``review.json`` to put into the
output directory.

A decision belongs to the answer the output was made from (``answer_id``): it
shows in the manifest (``review``, ``review_by``, ``review_ts``) as long as the
output is made from that answer, so it survives re-runs, ``--forcerun
generate`` and manifest rebuilds; a new answer (a regeneration) starts
undecided. The training join leaves human rejects out, and
``--config regenerate=rejected`` buys one new answer for each of them (and
for the outputs the QC gate rejected).
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from . import layout
from .decisions import DECISIONS, load, path, save
from .errors import UserError


class Store:
    """The decisions of one output directory, for the server (one writer, a lock around each change)."""

    def __init__(self, output_dir):
        self.output_dir = Path(output_dir)
        self.lock = threading.Lock()

    def all(self) -> dict:
        with self.lock:
            return load(self.output_dir)

    def mark(self, stem: str, decision: str, answer_id: str, by: str) -> dict:
        if layout.parse_stem(stem) is None:
            raise ValueError(f"not an output: {stem!r}")
        if decision not in (*DECISIONS, ""):
            raise ValueError(f"decision must be keep, reject or empty, not {decision!r}")
        with self.lock:
            decisions = load(self.output_dir)
            if decision:
                decisions[stem] = {"decision": decision, "answer_id": answer_id, "by": by, "ts": round(time.time(), 3)}
            else:
                decisions.pop(stem, None)
            save(self.output_dir, decisions)
            return decisions.get(stem, {})


def make_handler(store: Store, root: Path, user: str):
    """Serves the output directory (the gallery and its thumbnails) and the decisions."""

    class Handler(SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, fmt, *args):  # quiet: the terminal shows one line per mark instead
            pass

        def _json(self, status: int, payload) -> None:
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            if self.path.split("?")[0] == "/review.json":
                return self._json(200, {"decisions": store.all(), "server": True})
            if self.path in ("/", ""):
                self.send_response(302)
                self.send_header("Location", "/gallery/index.html")
                self.end_headers()
                return None
            return super().do_GET()

        def do_POST(self):
            if self.path != "/review":
                return self._json(404, {"error": "no such endpoint"})
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                saved = store.mark(
                    str(body.get("stem", "")),
                    str(body.get("decision", "")),
                    str(body.get("answer_id", "")),
                    str(body.get("by") or user),
                )
            except (ValueError, TypeError, AttributeError) as exc:
                return self._json(400, {"error": str(exc)})
            print(f"review: {body.get('stem')}: {body.get('decision') or 'undecided'}", file=sys.stderr, flush=True)
            return self._json(200, {"stem": body.get("stem"), **saved})

    return Handler


def serve(output_dir, port: int = 8766, user: str | None = None, ready=None) -> None:
    """Serve until interrupted; ``ready(url)`` is called once it listens (127.0.0.1 only)."""
    output_dir = Path(output_dir)
    server = ThreadingHTTPServer(("127.0.0.1", port), make_handler(Store(output_dir), output_dir, user or _user()))
    url = f"http://127.0.0.1:{server.server_address[1]}/gallery/index.html"
    (ready or (lambda u: None))(url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "reviewer"


def _config(configfiles: list[str]) -> dict:
    """The workflow's config as Snakemake would read it (the default config file first)."""
    import yaml
    from snakemake.utils import validate

    from . import config as config_mod

    root = Path(__file__).resolve().parents[2]
    cfg: dict = {}
    for name in [str(root / "configs" / "nano_banana_pro_augment.yaml"), *configfiles]:
        with open(name, encoding="utf-8") as fh:
            for key, value in (yaml.safe_load(fh) or {}).items():
                cfg[key] = (
                    {**cfg[key], **value} if isinstance(value, dict) and isinstance(cfg.get(key), dict) else value
                )
    return config_mod.prepare(cfg, validate, say=lambda m: None)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Review the outputs: keep or reject each one (saved in review.json).")
    ap.add_argument("--configfile", nargs="+", default=[], help="the workflow config(s), as for snakemake")
    ap.add_argument("--port", type=int, default=8766, help="0 = any free port")
    ap.add_argument("--by", default=None, help="who decides (default: the login name)")
    args = ap.parse_args(argv)
    try:
        cfg = _config(args.configfile)
        out = Path(cfg["data"]["output_dir"])
        manifest = out / cfg["data"]["manifest"]
        if not manifest.is_file():
            raise UserError(f"{manifest}: no manifest yet; run the workflow first")
        from .gallery import build_gallery_stats

        build_gallery_stats(manifest, cfg["data"]["data_root"], out / "gallery")
        serve(
            out,
            args.port,
            args.by,
            ready=lambda url: print(
                f"review: {url} (marks are saved to {path(out)} as you make them; Ctrl-C to stop)",
                file=sys.stderr,
                flush=True,
            ),
        )
    except UserError as exc:
        print(f"review: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"review: cannot serve on 127.0.0.1:{args.port}: {exc.strerror}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
