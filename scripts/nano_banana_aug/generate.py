"""One target: source image -> provider -> post-process -> output + sidecar.

Called once per output file by rule ``generate`` (``scripts/generate.py``).
Order of writes makes interruption safe: the image and the sidecar are
written under temporary names, the sidecar is renamed first and the image
last, so an output file that exists under its final name is always complete
and described.  A failure writes a ``failed`` sidecar (no image) and exits
non-zero, so Snakemake records the job as failed and the next run retries it.
"""

from __future__ import annotations

import hashlib
import io
import os
import signal
import socket
import sys
import time
from pathlib import Path

from . import config as config_mod
from . import imaging, layout, postprocess, runlog, sidecar
from .errors import UserError
from .sidecar import Record
from .targets import find_target


class TargetFailed(Exception):
    """This target could not be produced; the message goes into the sidecar."""

    def __init__(self, message: str, reason: str = "", status: str = "failed"):
        super().__init__(message)
        self.reason = reason
        self.status = status  # failed | over_budget


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read_source(target, data_root) -> bytes:
    """The source bytes, re-checking what the checkpoint found."""
    if target.problem:  # checked again: the user may have fixed it since the checkpoint ran
        from .targets import check_source

        resolved, problem, _w, _h = check_source(data_root, target.image_path)
        if problem:
            raise TargetFailed(f"train.csv line {target.row}, image {target.image_id}: {problem}", "BAD_SOURCE")
        target.source = resolved
    root = Path(data_root).resolve()
    source = Path(target.source).resolve()
    if not source.is_relative_to(root):
        raise TargetFailed(f"image {target.image_id}: path resolves outside data_root: {target.image_path}", "BAD_SOURCE")
    try:
        return source.read_bytes()
    except OSError as exc:
        raise TargetFailed(f"train.csv line {target.row}, image {target.image_id}: cannot read {source}: {exc.strerror}", "BAD_SOURCE") from exc


def _provider_and_policy(cfg: dict):
    from .providers import RetryPolicy, make_provider

    api_key = None
    if config_mod.is_paid(cfg):
        from .keys import load_api_key

        api_key = load_api_key(cfg, Path.cwd())
    api = cfg["api"]
    policy = RetryPolicy(
        max_attempts=int(api["max_retries"]),
        backoff_s=float(api["retry_backoff_s"]),
        max_wait_s=float(api["max_retry_wait_s"]),
    )
    provider = make_provider(cfg, api_key)
    if provider.paid:
        from .slots import CallSlots, SlotLimited

        slots = CallSlots(layout.pipeline_dir(cfg["data"]["output_dir"]) / "slots", int(api["concurrency"]))
        provider = SlotLimited(provider, slots)
    return provider, policy


def _ledger(cfg: dict):
    """This run's budget ledger, or None when no budget is set."""
    api = cfg["api"]
    if api.get("max_calls") is None and api.get("max_cost_usd") is None:
        return None
    from .budget import Ledger

    run_id = (cfg.get("_run") or {}).get("id", "adhoc")
    return Ledger(layout.pipeline_dir(cfg["data"]["output_dir"]) / "ledger", run_id,
                  max_calls=api.get("max_calls"), max_cost_usd=api.get("max_cost_usd"),
                  reserve_usd=float(api["pricing"]["image_usd_per_call"]))


def _estimate_cost(cfg: dict, attempts_usage: list) -> float | None:
    """Estimated USD of every attempt that reported usage (blocked answers can be billed too)."""
    if not config_mod.is_paid(cfg):
        return 0.0
    from .accounting import estimate_cost_usd

    total = None
    for u in attempts_usage:
        c = estimate_cost_usd(u, cfg["api"]["pricing"], cfg["api"]["provider"])
        if c is not None:
            total = (total or 0.0) + c
    return total


def _decode_answer(gen, max_pixels: int):
    """The model's image as RGB PIL, refusing oversize or undecodable answers."""
    if gen.image is not None:
        image = gen.image.convert("RGB") if gen.image.mode != "RGB" else gen.image
        if image.width * image.height > max_pixels:
            raise TargetFailed(f"model output {image.width}x{image.height} exceeds postprocess.max_pixels", "OVERSIZE")
        return image
    try:
        return imaging.decode(gen.data, max_pixels=max_pixels, what="model output")
    except imaging.DecodeError as exc:
        raise TargetFailed(str(exc), "UNDECODABLE") from None


def _source_for_qc(source_bytes: bytes, qc_cfg: dict):
    """The source decoded at reduced size (JPEG draft mode): QC works on a small grid."""
    from PIL import Image

    im = Image.open(io.BytesIO(source_bytes))
    w, h = qc_cfg.get("work_size", [512, 256])
    im.draft("RGB", (2 * int(w), 2 * int(h)))
    return im.convert("RGB")


def _quality_check(source_image, image, qc_cfg: dict, record: Record) -> bool:
    """Label-safety QC of the raw model answer; fills record.qc, sets status/error when rejected."""
    from . import qc

    t0 = time.monotonic()
    scores, passed, reasons = qc.check(source_image, image, qc_cfg)
    record.qc = {**scores.to_columns(), "qc_passed": passed, "qc_reasons": "; ".join(reasons),
                 "qc_seconds": round(time.monotonic() - t0, 3)}
    record.status = "success" if passed else "rejected"
    record.error = "" if passed else "label-safety QC: " + "; ".join(reasons)
    record.error_reason = "" if passed else "QC_REJECTED"
    return passed


def produce(cfg: dict, target, aug: dict, variant_idx: int, output: Path, record: Record) -> tuple[bytes, object]:
    """Call the provider (with retries) and post-process; returns (encoded bytes, final image)."""
    from .budget import BudgetExceeded
    from .providers import GenerationFailed, Request, call_with_retries

    data_root = cfg["data"]["data_root"]
    source_bytes = _read_source(target, data_root)
    record.source_sha256 = _sha256(source_bytes)
    prompt = config_mod.full_prompt(cfg, aug)
    record.prompt_sha256 = _sha256(prompt.encode("utf-8"))
    mime = imaging.sniff_mime(source_bytes)
    if mime is None:
        raise TargetFailed(f"train.csv line {target.row}, image {target.image_id}: source is not a recognised image: {target.source}", "BAD_SOURCE")
    provider, policy = _provider_and_policy(cfg)
    record.provider, record.model = provider.name, provider.model
    request = Request(
        image_bytes=source_bytes, mime_type=mime, prompt=prompt, image_id=target.image_id,
        aug_name=aug["name"], variant_idx=variant_idx, seed=int(cfg.get("seed", 0)),
        recipe=aug.get("local") or {}, source_path=target.image_path,
    )
    usages = []
    ledger = _ledger(cfg) if provider.paid else None

    def before_attempt(n):
        if ledger is not None:
            ledger.reserve()

    def after_attempt(n, gen, err):
        u = gen.usage if gen is not None else (err.usage if err is not None else None)
        if u is not None:
            usages.append(u)
        if ledger is not None:
            ledger.settle(_estimate_cost(cfg, [u]) if u is not None else None)
        if err is not None:
            runlog.event(cfg, "retry" if err.retryable and n < policy.max_attempts else "attempt", output.stem,
                         attempt=n, reason=err.reason, error=err.message[:200])

    def answer():
        """One generation (with retries), decoded; accounting into ``record``."""
        t0 = time.monotonic()
        try:
            gen = call_with_retries(provider, request, policy, before_attempt=before_attempt, after_attempt=after_attempt)
        except BudgetExceeded as exc:
            record.api_seconds += time.monotonic() - t0
            record.est_cost_usd = _estimate_cost(cfg, usages)
            raise TargetFailed(f"not generated: {exc.message} (run again to continue)", "BUDGET", status="over_budget") from None
        except GenerationFailed as failed:
            record.api_seconds += time.monotonic() - t0
            record.attempts += failed.attempts
            record.est_cost_usd = _estimate_cost(cfg, usages)
            raise TargetFailed(f"after {failed.attempts} attempt(s): {failed.last.message}", failed.last.reason) from None
        record.api_seconds += time.monotonic() - t0
        record.attempts += gen.attempts
        record.model_version, record.response_id = gen.model_version, gen.response_id
        u = gen.usage
        record.prompt_tokens, record.candidates_tokens = u.prompt_tokens, u.candidates_tokens
        record.thoughts_tokens, record.total_tokens, record.cost_usd = u.thoughts_tokens, u.total_tokens, u.cost_usd
        record.est_cost_usd = _estimate_cost(cfg, usages)
        return _decode_answer(gen, int(pp["max_pixels"]))

    pp = cfg["postprocess"]
    image = answer()
    qc_cfg = cfg.get("qc") or {"enabled": False}
    if qc_cfg.get("enabled", True):
        source_image = _source_for_qc(source_bytes, qc_cfg)
        for extra in range(int(qc_cfg.get("auto_regenerate", 0)) + 1):
            passed = _quality_check(source_image, image, qc_cfg, record)
            if passed or extra == int(qc_cfg.get("auto_regenerate", 0)):
                break
            runlog.event(cfg, "regen", output.stem, why="qc rejected", qc=record.error[:200])
            rejected = image
            try:
                image = answer()
            except TargetFailed as exc:  # keep the rejected answer for review
                record.error += f"; automatic regeneration failed: {exc}"
                image = rejected
                break
    geo = postprocess.plan(image.width, image.height, pp)
    for key, value in geo.record().items():
        setattr(record, key, value)
    final = postprocess.apply(image, geo, pp)
    return imaging.encode(final, cfg["data"]["output_ext"], pp), final


def run(cfg: dict, targets_csv, image_id: str, aug_name: str, variant_idx: int, output) -> Record:
    """Produce one output and its sidecar; raises TargetFailed after writing a failed sidecar."""
    started = time.monotonic()
    output = Path(output)
    out_dir = config_mod.output_dir(cfg)
    data_root = cfg["data"]["data_root"]
    record = Record(image_id, aug_name, variant_idx, image_path=layout.relative_to_root(output, data_root),
                    host=socket.gethostname(), slurm_job_id=os.environ.get("SLURM_JOB_ID", ""))
    side = layout.sidecar_path(out_dir, image_id, aug_name, variant_idx)
    runlog.event(cfg, "started", output.stem, provider=cfg["api"]["provider"], model=cfg["api"]["model"])
    try:
        target = find_target(targets_csv, image_id)
        if target is None:
            raise TargetFailed(f"image {image_id} is not in {targets_csv} (not in train.csv, or lacks a primary target)", "UNKNOWN_IMAGE")
        record.src_image_path = target.image_path
        aug = config_mod.augmentation(cfg, aug_name)
        if not 0 <= variant_idx < int(aug.get("num_images", 1)):
            raise TargetFailed(f"variant v{variant_idx} is outside num_images={aug.get('num_images', 1)} of '{aug_name}'", "UNKNOWN_VARIANT")
        data, _final = produce(cfg, target, aug, variant_idx, output, record)
    except (TargetFailed, UserError) as exc:
        record.status = getattr(exc, "status", "failed")
        record.error = str(exc)
        record.error_reason = getattr(exc, "reason", "") or exc.__class__.__name__
        record.ts = time.time()
        record.seconds = time.monotonic() - started
        sidecar.write(record, side)
        runlog.event(cfg, record.status, output.stem, attempts=record.attempts, secs=record.seconds, reason=record.error_reason, error=record.error[:300])
        raise TargetFailed(record.error, record.error_reason, record.status) from None

    record.status = record.status or "success"  # "rejected" when the QC gate said so
    record.output_bytes = len(data)
    record.ts = time.time()
    record.seconds = time.monotonic() - started
    from .fileio import atomic_write_bytes

    sidecar.write(record, side)
    atomic_write_bytes(output, data)  # last: the output's existence means "done"
    runlog.event(cfg, "ok" if record.status == "success" else record.status, output.stem,
                 attempts=record.attempts, secs=record.seconds, size=f"{record.out_w}x{record.out_h}",
                 bytes=record.output_bytes, qc=record.error[:200])
    return record


def main(argv=None) -> int:
    """scripts/generate.py --config-json C --targets T --image-id I --aug A --variant K --output O"""
    import argparse

    ap = argparse.ArgumentParser(description="Produce one augmented image and its JSON sidecar.")
    ap.add_argument("--config-json", required=True, help="effective config written by the Snakefile")
    ap.add_argument("--targets", required=True, help="targets.csv of checkpoint `targets`")
    ap.add_argument("--image-id", required=True)
    ap.add_argument("--aug", required=True)
    ap.add_argument("--variant", required=True, type=int)
    ap.add_argument("--output", required=True)
    args = ap.parse_args(argv)
    # Snakemake stops running jobs with SIGTERM: exit through Python so that
    # temporary files are removed (a half-written file never stays behind).
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        cfg = config_mod.read_effective_config(args.config_json)
        run(cfg, args.targets, args.image_id, args.aug, args.variant, args.output)
    except (TargetFailed, UserError) as exc:
        print(f"generate {Path(args.output).name}: FAILED: {exc}", file=sys.stderr)
        return 1
    return 0
