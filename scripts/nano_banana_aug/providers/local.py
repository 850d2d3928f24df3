"""The offline ``local`` provider: classical imaging-domain augmentation.

No key, no network, no cost.  Each augmentation's ``local:`` recipe (see
:mod:`nano_banana_aug.local_ops`) is sampled deterministically per
``(image_id, aug_name, variant_idx, seed)`` and applied to the source image.
It is the demo of the pipeline and the classical baseline that generative
augmentation is compared against.
"""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path

from .. import local_ops
from .base import AttemptError, Generation, Request, Usage


class LocalProvider:
    """Applies a sampled ``local:`` recipe; an empty recipe gives an identical copy."""

    name = "local"
    paid = False

    def __init__(self, model: str = local_ops.ENGINE_VERSION):
        self.model = model

    @classmethod
    def from_config(cls, cfg: dict, api_key: str | None = None) -> "LocalProvider":
        """Build from the validated config; checks every augmentation's recipe values up front."""
        for i, aug in enumerate(cfg.get("augmentations") or []):
            local_ops.validate_recipe(aug.get("local"), where=f"augmentations[{i}] ({aug.get('name', '?')}).local")
        return cls(model=(cfg.get("api") or {}).get("model") or local_ops.ENGINE_VERSION)

    def attempt(self, request: Request) -> Generation:
        from PIL import Image

        hold_while(request)
        try:
            params = local_ops.sample_params(
                request.recipe, request.image_id, request.aug_name, request.variant_idx, request.seed
            )
        except local_ops.RecipeError as exc:
            raise AttemptError(str(exc), retryable=False, reason="BAD_RECIPE") from exc
        try:
            with Image.open(io.BytesIO(request.image_bytes)) as im:
                im.load()
                source = im.convert("RGB")
        except Exception as exc:  # PIL raises many types for corrupt data
            raise AttemptError(
                f"{request.source_path or request.image_id}: cannot decode the source image: {exc}",
                retryable=False,
                reason="UNDECODABLE_SOURCE",
            ) from exc
        rng_seed = local_ops.noise_seed(request.image_id, request.aug_name, request.variant_idx, request.seed)
        image = local_ops.apply_recipe(source, params, rng_seed)
        return Generation(
            image=image,
            mime_type="",
            model_version=local_ops.ENGINE_VERSION,
            response_id=local_ops.params_digest(params)[:16],
            text=json.dumps(params, sort_keys=False),
            usage=Usage(),
        )


HOLD_ENV = "NANO_BANANA_LOCAL_HOLD"


def hold_while(request: Request) -> None:
    """For tests that must act while a job is in the middle of its work (e.g. kill it): with
    ``NANO_BANANA_LOCAL_HOLD=<path>`` set, say so in ``<path>.<target>`` and wait while <path> exists."""
    hold = os.environ.get(HOLD_ENV)
    if not hold:
        return
    Path(f"{hold}.{request.image_id}__{request.aug_name}__v{request.variant_idx}").touch()
    while os.path.exists(hold):
        time.sleep(0.02)
