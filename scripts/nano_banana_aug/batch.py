"""Batch mode (``api.mode: batch``): the targets that need a paid answer go to
the Gemini Batch API at half price; the answers land in the answer store and
each output is then made by its own ``generate`` job with no call.

One job per run does all of this (the ``batch`` checkpoint, a local rule: on
SLURM it runs on the submit host).  Every batch has a *submission record*
under ``{output_dir}/.pipeline/batches/``, written before anything is paid::

    <display name>.json    keys (stem -> request fingerprint), the JSONL file,
                           the uploaded file name, the batch name, the state
    <display name>.jsonl   the requests (kept until the batch exists)

A batch is never created twice for the same targets: creation is not
idempotent and ``display_name`` is neither unique nor filterable, so

1. the record (unique display name, keys) is written before the upload,
2. ``state: creating`` is written right before the create call, and the batch
   name the moment it is known,
3. every later run polls recorded batches instead of resubmitting, and a
   record left in ``creating`` (killed between create and write, or the
   create answer lost) is resolved by listing every page of batches and
   matching the display name before anything is created,
4. targets in an open record are never submitted again, and one batch job
   per directory works at a time (``.pipeline/batches/.lock``).

Results are streamed to disk and split per key into the answer store
(``source: batch``).  Failed lines and ``FAILED`` / ``CANCELLED`` /
``EXPIRED`` batches put their targets back: the run's outcome file says why,
their ``generate`` jobs write ``failed`` rows, and the next run resubmits
only them (or sends them synchronously with ``api.batch.fallback: sync``).
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import config as config_mod
from . import imaging, layout, locks, regen, runlog
from .answers import AnswerStore, unconsumed
from .fileio import atomic_write_text
from .providers.base import AttemptError, Request
from .providers.gemini_batch import BatchApiError, BatchClient, BatchStatus

MAX_FILE_BYTES = 1_900_000_000  # under the Files API's 2 GB per file
OPEN_STATES = ("prepared", "uploaded", "creating", "created")


def batches_dir(output_dir) -> Path:
    return layout.pipeline_dir(output_dir) / "batches"


@dataclass
class Submission:
    """One batch job, from before its upload until its results are collected."""

    display_name: str
    model: str
    keys: dict  # stem -> {"fingerprint": {...}, "satisfies": [...]}
    run_id: str = ""
    created_ts: float = 0.0
    state: str = "prepared"  # prepared -> uploaded -> creating -> created -> collected | lost
    file_name: str = ""  # files/… once uploaded
    batch_name: str = ""  # batches/… once created
    batch_state: str = ""  # the service's last word (short form)
    reserved_usd: float = 0.0
    outcome: dict = field(default_factory=dict)  # stem -> {"status", "reason", "message"} once collected
    updated_ts: float = 0.0

    @property
    def path(self) -> Path:  # set by load/save
        return self._path

    @property
    def jsonl_path(self) -> Path:
        return self._path.with_suffix(".jsonl")

    def save(self) -> None:
        self.updated_ts = time.time()
        atomic_write_text(self._path, json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, path: Path) -> "Submission":
        data = json.loads(path.read_text(encoding="utf-8"))
        known = set(cls.__dataclass_fields__)
        sub = cls(**{k: v for k, v in data.items() if k in known})
        sub._path = path
        return sub

    @classmethod
    def new(cls, output_dir, run_id: str, model: str, keys: dict) -> "Submission":
        name = f"nbaug-{run_id}-{secrets.token_hex(4)}"
        sub = cls(display_name=name, model=model, keys=keys, run_id=run_id, created_ts=time.time())
        sub._path = batches_dir(output_dir) / f"{name}.json"
        return sub


def load_submissions(output_dir) -> list[Submission]:
    out = []
    d = batches_dir(output_dir)
    for p in sorted(d.glob("nbaug-*.json")) if d.is_dir() else ():
        try:
            out.append(Submission.load(p))
        except (OSError, ValueError, TypeError) as exc:
            raise BatchError(f"batch record {p} cannot be read ({exc}); it may describe a paid batch - "
                             "fix or move it before running batch mode again") from None
    return out


def open_stems(output_dir) -> set[str]:
    """Targets in batches submitted but not collected yet (paid; the answers are coming)."""
    try:
        return {s for sub in load_submissions(output_dir) if sub.state in OPEN_STATES for s in sub.keys}
    except BatchError:
        return set()


class BatchError(Exception):
    """Batch mode cannot go on (a clear message for the user)."""


def batch_price_factor(cfg: dict) -> float:
    return float(cfg["api"]["pricing"].get("batch_factor", 0.5))


def batch_call_usd(cfg: dict) -> float:
    return float(cfg["api"]["pricing"]["image_usd_per_call"]) * batch_price_factor(cfg)


# ---------------------------------------------------------------- the batch job

class BatchRun:
    """What the ``batch`` checkpoint does in one run."""

    def __init__(self, cfg: dict, targets_csv, *, client: BatchClient | None = None, say=None):
        self.cfg = cfg
        self.api = cfg["api"]
        self.bcfg = self.api["batch"]
        self.out = config_mod.output_dir(cfg)
        self.targets_csv = targets_csv
        self.run_id = (cfg.get("_run") or {}).get("id", "adhoc")
        self.store = AnswerStore(self.out)
        self.say = say or (lambda m: print(m, file=sys.stderr, flush=True))
        self._client = client
        self.outcome: dict = {}  # stem -> {"status", "reason", "message", "batch"}

    @property
    def client(self) -> BatchClient:
        if self._client is None:
            from .keys import load_api_key

            self._client = BatchClient(api_key=load_api_key(self.cfg, Path.cwd()), base_url=self.api["base_url"],
                                       timeout_s=float(self.api["timeout_s"]))
        return self._client

    def log(self, text: str) -> None:
        self.say(text)
        runlog.message(self.cfg, text)

    # --- entry point
    def run(self, wanted: dict) -> dict:
        """``wanted``: stem -> regeneration request ids, the plan's paid targets. The run's outcome."""
        batches_dir(self.out).mkdir(parents=True, exist_ok=True)
        lock = batches_dir(self.out) / ".lock"
        with locks.exclusive(lock, timeout_s=float(self.bcfg.get("lock_timeout_s", 24 * 3600)),
                             what="batch submissions of this output directory",
                             on_wait=lambda: self.say("batch: another run is submitting or collecting batches "
                                                      "in this directory; waiting for it")):
            subs = load_submissions(self.out)
            if self.cfg.get("batch_cancel"):
                self.cancel_all(subs)
            else:
                for sub in subs:
                    if sub.state in ("prepared", "uploaded", "creating"):
                        self.finish_creation(sub)
                covered = {s for sub in subs if sub.state in OPEN_STATES for s in sub.keys}
                todo = {s: r for s, r in wanted.items() if s not in covered and not self._answered(s)}
                subs += self.submit(todo)
                self.collect(subs, wait=bool(self.bcfg["wait"]))
            for sub in subs:
                if sub.state in OPEN_STATES:
                    for s in sub.keys:
                        self.outcome.setdefault(s, {"status": "pending", "batch": sub.batch_name or sub.display_name,
                                                    "reason": f"BATCH_{sub.batch_state or 'SUBMITTED'}"})
        return self.outcome

    def _answered(self, stem: str) -> bool:
        """An answer came in since the plan (another run, or a batch collected meanwhile)."""
        try:
            from . import sidecar

            seen = sidecar.read(layout.sidecar_path(self.out, *layout.parse_stem(stem))).answer_seq_seen
        except (OSError, ValueError, TypeError):
            seen = 0
        return bool(unconsumed(self.store.list(stem), int(seen or 0)))

    # --- submitting
    def _line(self, stem: str, target, provider) -> tuple[bytes, dict | None]:
        """The JSONL line of one target (the body a synchronous call would send) and its match_aspect region."""
        from .generate import TargetFailed, _read_source, source_request

        image_id, aug_name, k = layout.parse_stem(stem)
        aug = config_mod.augmentation(self.cfg, aug_name)
        try:
            data, image = _read_source(target, self.cfg["data"]["data_root"], int(self.cfg["postprocess"]["max_pixels"]))
        except TargetFailed as exc:
            raise AttemptError(str(exc), retryable=False, reason="BAD_SOURCE") from None
        send, region = source_request(self.cfg, data, image)
        req = Request(image_bytes=send, mime_type=imaging.sniff_mime(send) or "", prompt=config_mod.full_prompt(self.cfg, aug),
                      image_id=image_id, aug_name=aug_name, variant_idx=k, source_path=target.image_path,
                      aspect_ratio=region["ratio"] if region else None)
        line = (json.dumps({"key": stem, "request": provider.build_body(req)}, separators=(",", ":")) + "\n").encode()
        return line, region

    def _fingerprint(self, stem: str, target, provider) -> dict:
        import hashlib

        _i, aug_name, _k = layout.parse_stem(stem)
        prompt = config_mod.full_prompt(self.cfg, config_mod.augmentation(self.cfg, aug_name))
        h = hashlib.sha256()
        with open(target.source, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        return {"provider": "gemini", "model": provider.model, "source_sha256": h.hexdigest(),
                "prompt_sha256": hashlib.sha256(prompt.encode("utf-8")).hexdigest(),
                "image_config": self.api.get("image_config")}

    def submit(self, todo: dict) -> list[Submission]:
        """Chunks of at most api.batch.max_requests lines (and < 2 GB), each reserved in the budget first."""
        if not todo:
            return []
        from .generate import _ledger
        from .providers.gemini import GeminiProvider
        from .targets import read_targets

        by_id = {t.image_id: t for t in read_targets(self.targets_csv)}
        provider = GeminiProvider(api_key="unused-for-bodies", model=self.api["model"], base_url=self.api["base_url"],
                                  image_config=self.api.get("image_config"))
        ledger = _ledger(self.cfg)
        unit = batch_call_usd(self.cfg)
        max_req, max_bytes = int(self.bcfg["max_requests"]), int(self.bcfg.get("max_file_bytes", MAX_FILE_BYTES))
        stems = sorted(todo)
        made, i = [], 0
        while i < len(stems):
            granted = ledger.reserve_up_to(min(max_req, len(stems) - i), unit)
            if granted == 0:
                for s in stems[i:]:
                    self.outcome[s] = {"status": "over_budget", "reason": "BUDGET",
                                       "message": "not submitted: the budget of this run is used up (run again to continue)"}
                self.log(f"batch: budget reached; {len(stems) - i} targets not submitted (next run)")
                break
            keys, lines, size = {}, [], 0
            while i < len(stems) and len(keys) < granted:
                stem = stems[i]
                target = by_id.get(layout.parse_stem(stem)[0])
                i += 1
                if target is None:
                    continue
                try:
                    line, region = self._line(stem, target, provider)
                    fp = self._fingerprint(stem, target, provider)
                    if region:
                        fp["region"] = region
                except (AttemptError, OSError) as exc:
                    self.outcome[stem] = {"status": "failed", "reason": "BAD_SOURCE", "message": str(exc)}
                    continue
                if lines and size + len(line) > max_bytes:
                    i -= 1
                    break
                keys[stem] = {"fingerprint": fp, "satisfies": list(todo[stem] or [])}
                lines.append(line)
                size += len(line)
            unused = granted - len(keys)
            if unused:
                ledger.release(unused, unit)
            if not keys:
                continue
            sub = Submission.new(self.out, self.run_id, provider.model, keys)
            sub.reserved_usd = len(keys) * unit
            tmp = sub.jsonl_path.with_name(sub.jsonl_path.name + ".tmp")
            with open(tmp, "wb") as fh:
                for line in lines:
                    fh.write(line)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, sub.jsonl_path)
            sub.save()  # the record exists before anything is uploaded or created
            self.log(f"batch: {sub.display_name}: {len(keys)} requests ({size / 1e6:.1f} MB), "
                     f"reserved ${sub.reserved_usd:.2f} at batch price")
            self.finish_creation(sub)
            made.append(sub)
        return made

    def finish_creation(self, sub: Submission) -> None:
        """Upload (if needed) and create the batch - exactly once."""
        try:
            if sub.state == "creating":
                found = self.find_by_display_name(sub.display_name)
                if found is not None:
                    self._created(sub, found, "found by its display name (the create answer had been lost)")
                    return
            if sub.state == "prepared" or (sub.state == "creating" and not sub.file_name):
                if not sub.jsonl_path.is_file():
                    sub.state = "lost"
                    sub.outcome = {s: {"status": "failed", "reason": "BATCH_LOST",
                                       "message": "the batch's request file is gone; resubmitted next run"} for s in sub.keys}
                    sub.save()
                    return
                sub.file_name = self.client.upload(sub.jsonl_path, sub.display_name)
                sub.state = "uploaded"
                sub.save()
            sub.state = "creating"
            sub.save()  # from here on, a crash is resolved by the display name
            try:
                status = self.client.create(sub.model, sub.display_name, sub.file_name)
            except BatchApiError as exc:
                if not exc.ambiguous:
                    raise
                found = self.find_by_display_name(sub.display_name)
                if found is None:
                    raise
                status = found
            self._created(sub, status, "created")
        except BatchApiError as exc:
            if sub.state == "creating" and not exc.ambiguous and exc.status is not None and 400 <= exc.status < 500 \
                    and exc.status not in (408, 429):
                # refused (bad request, key, model): no batch exists; the record is closed
                self._close(sub, "lost", f"HTTP_{exc.status}", f"batch not created: {exc.message}")
            raise BatchError(f"{sub.display_name}: {exc.message} (submission state '{sub.state}'; nothing is paid "
                             "twice: the next run goes on from here)") from None

    def _created(self, sub: Submission, status: BatchStatus, how: str) -> None:
        sub.batch_name, sub.batch_state, sub.state = status.name, status.state, "created"
        sub.save()
        try:
            sub.jsonl_path.unlink()
        except FileNotFoundError:
            pass
        self.log(f"batch: {sub.display_name}: {how}: {sub.batch_name} ({len(sub.keys)} requests)")

    def find_by_display_name(self, display_name: str) -> BatchStatus | None:
        for status in self.client.list_all():
            if status.display_name == display_name:
                return status
        return None

    # --- collecting
    def collect(self, subs: list[Submission], wait: bool) -> None:
        started = time.monotonic()
        poll_s = float(self.bcfg["poll_s"])
        last_line = ""
        while True:
            open_subs = [s for s in subs if s.state == "created"]
            progress = []
            for sub in open_subs:
                try:
                    status = self.client.get(sub.batch_name)
                except BatchApiError as exc:
                    if exc.status == 404:
                        self._close(sub, "lost", "BATCH_NOT_FOUND", f"batch {sub.batch_name} no longer exists")
                        continue
                    self.log(f"batch: {sub.batch_name}: {exc.message}")
                    progress.append(f"{sub.batch_name}: ?")
                    continue
                if status.state != sub.batch_state:
                    sub.batch_state = status.state
                    sub.save()
                if status.terminal:
                    self.finish(sub, status)
                else:
                    c = status.counts
                    done = c.get("successfulRequestCount", 0) + c.get("failedRequestCount", 0) if c else None
                    progress.append(f"{sub.batch_name} {status.state} "
                                    + (f"{done}/{c.get('requestCount', len(sub.keys))} done, "
                                       f"{c.get('failedRequestCount', 0)} failed" if done is not None
                                       else f"?/{len(sub.keys)} done"))
            if not progress:
                return
            line = f"batch: waiting ({_elapsed(time.monotonic() - started)}): " + "; ".join(progress)
            if not wait:
                n = sum(len(s.keys) for s in subs if s.state == "created")
                self.log(f"batch: {len(progress)} batch(es) with {n} targets still running "
                         "(api.batch.wait=false); run the same command again to collect them")
                return
            if line != last_line:
                self.log(line)
                last_line = line
            else:
                self.say(line)
            time.sleep(poll_s)

    def finish(self, sub: Submission, status: BatchStatus) -> None:
        if status.state == "SUCCEEDED" and status.responses_file:
            self.collect_results(sub, status)
            return
        reason = f"BATCH_{status.state}"
        why = {"EXPIRED": "the batch expired (not finished within 48 h; no partial results)",
               "CANCELLED": "the batch was cancelled", "FAILED": f"the batch failed: {status.error or 'no reason given'}"}
        self._close(sub, "collected", reason, why.get(status.state, f"the batch ended in state {status.state}")
                    + "; resubmitted on the next run")

    def _close(self, sub: Submission, state: str, reason: str, message: str) -> None:
        sub.state = state
        sub.outcome = {s: {"status": "failed", "reason": reason, "message": message, "batch": sub.batch_name}
                       for s in sub.keys}
        sub.save()
        self.outcome.update(sub.outcome)
        self._release_reservation(sub, paid=0)
        self.log(f"batch: {sub.batch_name or sub.display_name}: {message}")

    def _release_reservation(self, sub: Submission, paid: int, cost: float | None = None) -> None:
        from .generate import _ledger

        unit = batch_call_usd(self.cfg)
        unpaid = len(sub.keys) - paid
        ledger = _ledger(self.cfg)
        if sub.run_id == self.run_id:
            if unpaid:
                ledger.release(unpaid, unit)
            ledger.adjust((cost - paid * unit) if cost is not None else 0.0, billable=paid)
        elif paid:  # reserved by an earlier run: what it cost is counted in this run's ledger
            ledger.count(paid, cost if cost is not None else paid * unit)

    def collect_results(self, sub: Submission, status: BatchStatus) -> None:
        from .generate import _estimate_cost
        from .providers.gemini import parse_response

        results = sub.path.with_suffix(".results.jsonl")
        if not results.is_file():
            size = self.client.download(status.responses_file, results)
            self.log(f"batch: {sub.batch_name}: results downloaded ({size / 1e6:.1f} MB)")
        outcome, paid, cost = {}, 0, 0.0
        factor = batch_price_factor(self.cfg)
        lines = 0
        with open(results, "rb") as fh:
            for raw in fh:
                raw = raw.strip()
                if not raw:
                    continue
                lines += 1
                try:
                    item = json.loads(raw)
                    stem = str(item.get("key"))
                except (ValueError, AttributeError):
                    continue
                if stem not in sub.keys:
                    continue
                if isinstance(item.get("error"), dict) or "response" not in item:
                    err = item.get("error") or {}
                    outcome[stem] = {"status": "failed", "reason": f"BATCH_LINE_{err.get('code', 'ERROR')}",
                                     "message": f"batch line failed: {err.get('code', '')} {err.get('status', '')} "
                                                f"{str(err.get('message', ''))[:200]}".strip()}
                    continue
                try:
                    gen = parse_response(item["response"])
                except AttemptError as err:
                    outcome[stem] = {"status": "failed", "reason": err.reason or "NO_IMAGE",
                                     "message": f"batch answer without a usable image: {err.message}"}
                    u = err.usage
                    if u is not None:
                        c = _estimate_cost(self.cfg, u)
                        cost += (c or 0.0) * factor
                    paid += 1  # a refusal is billed like an answer
                    continue
                c = _estimate_cost(self.cfg, gen.usage)
                cost += (c or 0.0) * factor
                paid += 1
                self._store(sub, stem, gen, None if c is None else c * factor)
                outcome[stem] = {"status": "answered"}
        for stem in sub.keys:
            outcome.setdefault(stem, {"status": "failed", "reason": "BATCH_NO_RESULT",
                                      "message": "the batch's results have no line for this target"})
            outcome[stem]["batch"] = sub.batch_name
        sub.outcome, sub.state = outcome, "collected"
        sub.save()
        self.outcome.update(outcome)
        self._release_reservation(sub, paid, cost)
        answered = sum(1 for o in outcome.values() if o["status"] == "answered")
        self.log(f"batch: {sub.batch_name}: {lines} result lines, {answered} answers stored, "
                 f"{len(sub.keys) - answered} failed; estimated ${cost:.2f}")
        try:
            results.unlink()
        except FileNotFoundError:
            pass

    def _store(self, sub: Submission, stem: str, gen, est_cost) -> None:
        """One answer into the store (under the target's lock), unless this batch's answer is there already."""
        key = sub.keys[stem]
        with locks.exclusive(layout.target_lock(self.out, stem), timeout_s=3600, what=f"target {stem}"):
            if any(a.batch == sub.batch_name for a in self.store.list(stem)):
                return  # collected before a crash
            u = gen.usage
            self.store.add(
                stem, gen.data, mime_label=gen.mime_type, response_id=gen.response_id, model_version=gen.model_version,
                usage={k: v for k, v in vars(u).items() if v is not None}, est_cost_usd=est_cost,
                finish_reason=gen.finish_reason, text=(gen.text or "")[:500], attempt=1, ts=time.time(),
                source="batch", batch=sub.batch_name, fingerprint=key.get("fingerprint") or {},
                satisfies=list(key.get("satisfies") or []), run_id=self.run_id,
            )
        if key.get("satisfies"):
            regen.record_done(self.out, key["satisfies"], stem)

    # --- cancelling
    def cancel_all(self, subs: list[Submission]) -> None:
        open_subs = [s for s in subs if s.state in OPEN_STATES]
        if not open_subs:
            self.log("batch: no outstanding batches to cancel")
            return
        for sub in open_subs:
            if sub.state == "creating":
                found = self.find_by_display_name(sub.display_name)
                if found is not None:
                    self._created(sub, found, "found by its display name")
            if sub.state != "created":  # never created: nothing to cancel
                self._close(sub, "collected", "BATCH_CANCELLED", "cancelled before the batch was created")
                continue
            try:
                self.client.cancel(sub.batch_name)
                self.log(f"batch: {sub.batch_name}: cancel requested")
            except BatchApiError as exc:
                self.log(f"batch: {sub.batch_name}: cancel failed: {exc.message}")
        # a cancelled batch may still deliver what it finished: collect what there is
        self.collect([s for s in open_subs if s.state == "created"], wait=True)


def _elapsed(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


# ---------------------------------------------------------------- the outcome file

def write_outcome(path, outcome: dict) -> None:
    atomic_write_text(path, json.dumps(outcome, indent=1, sort_keys=True))


def read_outcome(path) -> dict:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def main(argv=None) -> int:
    import argparse

    from .errors import UserError

    ap = argparse.ArgumentParser(description="Submit, poll and collect Gemini batch jobs for this run's targets.")
    ap.add_argument("--config-json", required=True)
    ap.add_argument("--targets", required=True)
    ap.add_argument("--output", required=True, help="the run's outcome file (stem -> status)")
    args = ap.parse_args(argv)
    try:
        cfg = config_mod.read_effective_config(Path(args.config_json))
        from .planning import plan_for_run

        plan = plan_for_run(cfg, args.targets)  # the plan again, as of now: what still needs a paid answer
        wanted = {s: d.requests for s, d in plan.actions.items() if d.action == "call"}
        outcome = BatchRun(cfg, args.targets).run(wanted)
        write_outcome(args.output, outcome)
    except (BatchError, BatchApiError, UserError, locks.LockTimeout) as exc:
        print(f"batch: {getattr(exc, 'message', None) or exc}", file=sys.stderr)
        return 1
    return 0
