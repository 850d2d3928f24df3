"""Provider registry: ``api.provider`` -> class, imported lazily.

Each class has ``from_config(cfg: dict, api_key: str | None)`` and implements
:class:`nano_banana_aug.providers.base.Provider`.
"""

from __future__ import annotations

import importlib

from .base import AttemptError, Generation, GenerationFailed, Provider, Request, RetryPolicy, Usage, call_with_retries

_REGISTRY = {
    "gemini": "nano_banana_aug.providers.gemini:GeminiProvider",
    "openrouter": "nano_banana_aug.providers.openrouter:OpenRouterProvider",
    "local": "nano_banana_aug.providers.local:LocalProvider",
}

NAMES = tuple(_REGISTRY)


def provider_class(name: str):
    module, _, cls = _REGISTRY[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def make_provider(cfg: dict, api_key: str | None) -> Provider:
    """Build the provider selected by ``cfg['api']['provider']``."""
    return provider_class(cfg["api"]["provider"]).from_config(cfg, api_key)


__all__ = [
    "AttemptError",
    "Generation",
    "GenerationFailed",
    "Provider",
    "Request",
    "RetryPolicy",
    "Usage",
    "call_with_retries",
    "make_provider",
    "provider_class",
    "NAMES",
]
