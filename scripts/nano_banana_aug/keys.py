"""API keys, endpoints and model ids of the paid providers.

The key is read from ``api.api_key_file`` (default ``gemini.secret`` /
``openrouter.secret`` at the repo root, both git-ignored).  When that file
does not exist the environment is used: ``GEMINI_API_KEY`` then
``GOOGLE_API_KEY`` for Gemini, ``OPENROUTER_API_KEY`` for OpenRouter.  A
missing or empty key is a :class:`ConfigError` naming the file and the
variables, never the key itself.

``base_url`` must be HTTPS; plain HTTP is accepted only for a loopback host
(127.0.0.0/8, ::1, localhost), which is what the test stand-in uses.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from urllib.parse import urlsplit

from .errors import ConfigError

DEFAULT_BASE_URL = {
    "gemini": "https://generativelanguage.googleapis.com/v1beta",
    "openrouter": "https://openrouter.ai/api/v1/chat/completions",
}
DEFAULT_MODEL = {
    "gemini": "gemini-3-pro-image-preview",
    "openrouter": "google/gemini-3-pro-image-preview",
}
DEFAULT_KEY_FILE = {"gemini": "gemini.secret", "openrouter": "openrouter.secret"}
KEY_ENV_VARS = {"gemini": ("GEMINI_API_KEY", "GOOGLE_API_KEY"), "openrouter": ("OPENROUTER_API_KEY",)}


def _provider(cfg: dict) -> str:
    return (cfg.get("api") or {}).get("provider") or "gemini"


def _known(provider: str) -> None:
    if provider not in DEFAULT_BASE_URL:
        raise ConfigError(
            f"api.provider: {provider!r} does not use an API key or endpoint (expected gemini or openrouter)"
        )


def default_base_url(provider: str) -> str:
    """The service's documented endpoint (REFERENCE §3, §4)."""
    _known(provider)
    return DEFAULT_BASE_URL[provider]


def default_model(provider: str) -> str:
    """Nano Banana Pro under the provider's naming."""
    _known(provider)
    return DEFAULT_MODEL[provider]


def normalise_model(provider: str, model: str | None) -> str:
    """``api.model`` or the provider default; OpenRouter ids without a vendor get ``google/``."""
    model = (model or "").strip() or default_model(provider)
    if provider == "openrouter" and "/" not in model:
        model = "google/" + model
    if provider == "gemini" and model.startswith("models/"):
        model = model[len("models/") :]
    return model


def check_base_url(url: str, key: str = "api.base_url") -> str:
    """Return ``url`` if it is HTTPS, or HTTP to a loopback host; else ConfigError."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
    except ValueError as exc:
        raise ConfigError(f"{key}: {url!r} is not a valid URL ({exc})") from None
    if parts.scheme not in ("https", "http") or not host:
        raise ConfigError(f"{key}: {url!r} must be an https:// URL")
    if parts.username or parts.password:
        raise ConfigError(f"{key}: credentials in the URL are not allowed; put the key in api.api_key_file")
    if parts.scheme == "http" and not _is_loopback(host):
        raise ConfigError(
            f"{key}: {url!r} uses plain http, which would send the API key unencrypted; "
            "use https (http is allowed only for a loopback host: 127.0.0.1, ::1, localhost)"
        )
    return url


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resolve_key_source(cfg: dict, repo_root) -> tuple[Path, tuple[str, ...]]:
    """Where the key comes from: the key file (absolute) and the fallback variables."""
    provider = _provider(cfg)
    _known(provider)
    name = (cfg.get("api") or {}).get("api_key_file") or DEFAULT_KEY_FILE[provider]
    path = Path(os.path.expanduser(name))
    if not path.is_absolute():
        path = Path(repo_root) / path
    return path, KEY_ENV_VARS[provider]


def load_api_key(cfg: dict, repo_root, environ=None) -> str:
    """The API key of ``api.provider``, from the key file or else the environment.

    Raises ConfigError (naming the file and variables, never the key) when
    no usable key is found.
    """
    environ = os.environ if environ is None else environ
    path, env_vars = resolve_key_source(cfg, repo_root)
    either = " or ".join(env_vars)
    if path.exists():
        if not path.is_file():
            raise ConfigError(f"api.api_key_file: {path} is not a file")
        try:
            key = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"api.api_key_file: cannot read {path}: {type(exc).__name__}") from None
        if not key:
            raise ConfigError(
                f"api.api_key_file: {path} is empty; write the API key into it (or delete it and set {either})"
            )
        return _checked(key, f"the key in {path}")
    for var in env_vars:
        key = (environ.get(var) or "").strip()
        if key:
            return _checked(key, f"${var}")
    raise ConfigError(
        f"no API key for api.provider {_provider(cfg)!r}: create {path} containing the key "
        f"(or set api.api_key_file), or set {either} in the environment"
    )


def _checked(key: str, where: str) -> str:
    """Refuse keys that cannot go into an HTTP header (requests would quote them in its error)."""
    if not key.isascii() or not key.isprintable() or any(ch.isspace() for ch in key):
        raise ConfigError(
            f"{where} must be the key alone on one line (found spaces, line breaks or non-ASCII characters)"
        )
    return key
