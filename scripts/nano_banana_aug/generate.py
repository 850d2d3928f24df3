"""Rule ``generate``: an answer and its source become the output and its sidecar.

No network, no money: it can run again at any time (``--forcerun generate``,
a change of ``postprocess`` / ``qc`` / ``output_ext``) and gives the same
file for the same answer and settings.

* An answer with an image: its geometry is mapped back onto the source
  (``postprocess``), the label-safety QC judges the final image against the
  source (what is written is what was checked), the image is encoded as a
  real file of ``data.output_ext``; a rejected image is written too (status
  ``rejected``), never used for training.
* An answer without an image (refused, failed, unusable source): if an older
  answer of the target has an image, the output is rebuilt from that one and
  the sidecar says why the newer one could not be used (a regeneration that
  did not work keeps the old output); otherwise the output is an empty
  placeholder and the sidecar says ``failed``: Snakemake sees the target as
  done for this run, and the next run buys a new answer for it (a retry,
  until ``api.max_total_attempts``).  An empty file is never an image: the
  manifest says ``failed`` and the training join takes ``success`` rows only.

The sidecar is written before the output (each atomically): an output under
its final name always has its sidecar.
"""

from __future__ import annotations

import hashlib
import os
import socket
import time

from . import answers as answers_mod
from . import config as config_mod
from . import imaging, layout, postprocess, qc, runlog, sidecar
from .answers import Answer
from .errors import UserError
from .fileio import atomic_write_bytes
from .paying import UnusableSource, read_source, source_of
from .sidecar import Record
from .targets import find_target


def _small(image, work_size):
    """The source reduced to about twice QC's working grid (QC resizes it further)."""
    w, h = (int(v) for v in work_size)
    factor = max(1, min(image.width // (2 * w), image.height // (2 * h)))
    return image.reduce(factor) if factor > 1 else image


def _qc_reference(source_image, geo, pp: dict):
    """What the final image must match: the source itself when the geometry maps the answer
    onto it (resize, match_aspect); else the source put through the same pad/crop."""
    from PIL import Image

    if geo.mode in ("resize", "match_aspect", "none") and (geo.out_w, geo.out_h) == source_image.size:
        return source_image
    if geo.mode in ("resize", "match_aspect"):
        return source_image.resize((geo.out_w, geo.out_h), Image.Resampling.BILINEAR)
    return postprocess.apply(source_image.resize((geo.orig_w, geo.orig_h), Image.Resampling.BILINEAR), geo, pp)


def derive_key(cfg: dict) -> str:
    return config_mod.request_key(config_mod.derive_settings(cfg))


def describe_answer(record: Record, answer: Answer) -> None:
    """The sidecar fields that come from the answer the output is made from."""
    fp = answer.fingerprint or {}
    record.provider, record.model = fp.get("provider", ""), fp.get("model", "")
    record.prompt_sha256, record.source_sha256 = fp.get("prompt_sha256", ""), fp.get("source_sha256", "")
    record.model_version, record.response_id = answer.model_version, answer.response_id
    u = answer.usage or {}
    record.prompt_tokens, record.candidates_tokens = u.get("prompt_tokens"), u.get("candidates_tokens")
    record.thoughts_tokens, record.total_tokens = u.get("thoughts_tokens"), u.get("total_tokens")
    record.cost_usd, record.est_cost_usd = answer.cost_usd, answer.est_cost_usd
    record.attempts, record.api_seconds = int(answer.calls or 0), float(answer.api_seconds or 0.0)
    record.answer_id, record.answer_source = answer.answer_id, answer.source


def build_image(cfg: dict, answer: Answer, source_image, record: Record) -> bytes:
    """The encoded output of an image answer; fills the record's geometry and QC columns."""
    out = config_mod.output_dir(cfg)
    pp, qc_cfg = cfg["postprocess"], cfg["qc"]
    try:
        data = answers_mod.image_data(out, answer)
    except (OSError, ValueError) as exc:
        raise UserError(
            f"answer {answer.stem}/{answer.image_file} cannot be used: {exc}; delete "
            f"{layout.answer_path(out, answer.stem, answer.version)} to buy it again"
        ) from None
    image = imaging.decode(data, max_pixels=int(pp["max_pixels"]), what=f"answer {answer.stem}/{answer.image_file}")
    region = (answer.fingerprint or {}).get("region")
    geo = postprocess.plan(image.width, image.height, pp, source_size=source_image.size, region=region)
    final = postprocess.apply(image, geo, pp)
    record.status = "success"
    if qc_cfg.get("enabled", True):
        reference = _small(_qc_reference(source_image, geo, pp), qc_cfg.get("work_size", [512, 256]))
        t0 = time.monotonic()
        scores, passed, reasons = qc.check(reference, final, qc_cfg)
        record.qc = {
            **scores.to_columns(),
            "qc_passed": passed,
            "qc_reasons": "; ".join(reasons),
            "qc_seconds": round(time.monotonic() - t0, 3),
        }
        if not passed:
            record.status, record.error_reason = "rejected", "QC_REJECTED"
            record.error = "label-safety QC: " + "; ".join(reasons)
    for key, value in geo.record().items():
        setattr(record, key, value)
    record.geometry = geo.describe()
    record.generation_key = f"{answer.request_key}/{derive_key(cfg)}"
    return imaging.encode(final, cfg["data"]["output_ext"], pp)


def older_image(output_dir, stem: str, version: int) -> Answer | None:
    """The newest answer with an image older than ``version``."""
    for v, has_image in reversed(answers_mod.versions(output_dir, stem)):
        if v < version and has_image:
            return answers_mod.try_read(output_dir, stem, v)
    return None


def run(cfg: dict, answer_path, output, sidecar_path, targets_table) -> Record:
    started = time.monotonic()
    out = config_mod.output_dir(cfg)
    data_root = cfg["data"]["data_root"]
    answer = answers_mod.read_path(answer_path)
    image_id, aug_name, k = layout.parse_stem(answer.stem)
    target = find_target(targets_table, image_id)
    if target is None:
        raise UserError(f"image {image_id} is not in {targets_table} (not in train.csv, or lacks a primary target)")
    record = Record(
        image_id,
        aug_name,
        k,
        src_image_path=target.image_path,
        image_path=layout.relative_to_root(output, data_root),
        host=socket.gethostname(),
        slurm_job_id=os.environ.get("SLURM_JOB_ID", ""),
    )
    made_from = answer if answer.has_image else older_image(out, answer.stem, answer.version)
    if made_from is None:  # no image at all: a placeholder the manifest calls failed
        describe_answer(record, answer)
        record.status, record.error, record.error_reason = "failed", answer.message, answer.reason
        data = b""
    else:
        where = f"train.csv line {target.row}, image {image_id}"
        try:
            _bytes, source_image = read_source(
                source_of(cfg, target), data_root, int(cfg["postprocess"]["max_pixels"]), where
            )
        except UnusableSource as exc:
            raise UserError(f"{exc} (needed to build the output from its answer; nothing was paid)") from None
        describe_answer(record, made_from)
        data = build_image(cfg, made_from, source_image, record)
    record.output_bytes = len(data)
    record.output_sha256 = hashlib.sha256(data).hexdigest()
    record.ts = time.time()
    record.seconds = round(time.monotonic() - started, 3)
    sidecar.write(record, sidecar_path)
    atomic_write_bytes(output, data)
    runlog.event(
        cfg,
        "ok" if record.status == "success" else record.status,
        answer.stem,
        answer=record.answer_id,
        size=f"{record.out_w}x{record.out_h}" if data else None,
        reason=record.error_reason or None,
        secs=record.seconds,
    )
    return record


def main(snakemake) -> None:
    """Entry point of rule ``generate`` (``script:``): one line on the terminal for a failure."""
    from .jobs import job_main

    from .pipeline import Pipeline

    table = Pipeline(snakemake.config).table
    job_main(
        snakemake,
        lambda: run(snakemake.config, snakemake.input.answer, snakemake.output.image, snakemake.output.sidecar, table),
    )
