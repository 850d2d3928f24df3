"""API key loading, endpoint and model defaults (nano_banana_aug.keys)."""

import pytest

from nano_banana_aug import keys
from nano_banana_aug.errors import ConfigError

SECRET = "AIzaSy-test-secret-0123456789"


def cfg(provider="gemini", **api):
    return {"api": {"provider": provider, "api_key_file": None, "base_url": None, "model": None, **api}}


def test_default_key_file_is_at_repo_root(tmp_path):
    path, env = keys.resolve_key_source(cfg(), tmp_path)
    assert path == tmp_path / "gemini.secret"
    assert env == ("GEMINI_API_KEY", "GOOGLE_API_KEY")
    path, env = keys.resolve_key_source(cfg("openrouter"), tmp_path)
    assert path == tmp_path / "openrouter.secret"
    assert env == ("OPENROUTER_API_KEY",)


def test_relative_key_file_is_relative_to_repo_root_and_absolute_kept(tmp_path):
    assert keys.resolve_key_source(cfg(api_key_file="keys/g.txt"), tmp_path)[0] == tmp_path / "keys/g.txt"
    absolute = tmp_path / "elsewhere.secret"
    assert keys.resolve_key_source(cfg(api_key_file=str(absolute)), "/nonexistent")[0] == absolute


def test_key_file_is_read_and_stripped(tmp_path):
    (tmp_path / "gemini.secret").write_text(f"  {SECRET}\n")
    assert keys.load_api_key(cfg(), tmp_path, environ={"GEMINI_API_KEY": "other"}) == SECRET


def test_env_fallback_order_when_file_missing(tmp_path):
    env = {"GOOGLE_API_KEY": "google-key", "GEMINI_API_KEY": "gemini-key"}
    assert keys.load_api_key(cfg(), tmp_path, environ=env) == "gemini-key"
    assert (
        keys.load_api_key(cfg(), tmp_path, environ={"GOOGLE_API_KEY": "google-key", "GEMINI_API_KEY": ""})
        == "google-key"
    )
    assert keys.load_api_key(cfg("openrouter"), tmp_path, environ={"OPENROUTER_API_KEY": "sk-or-1"}) == "sk-or-1"


def test_missing_key_names_file_and_variables(tmp_path):
    with pytest.raises(ConfigError) as err:
        keys.load_api_key(cfg(), tmp_path, environ={})
    msg = str(err.value)
    assert str(tmp_path / "gemini.secret") in msg and "GEMINI_API_KEY" in msg and "GOOGLE_API_KEY" in msg
    with pytest.raises(ConfigError, match="OPENROUTER_API_KEY"):
        keys.load_api_key(cfg("openrouter"), tmp_path, environ={"GEMINI_API_KEY": SECRET})


def test_empty_key_file_is_an_error_even_with_env(tmp_path):
    (tmp_path / "gemini.secret").write_text("\n  \n")
    with pytest.raises(ConfigError, match="is empty") as err:
        keys.load_api_key(cfg(), tmp_path, environ={"GEMINI_API_KEY": SECRET})
    assert "GEMINI_API_KEY" in str(err.value)


@pytest.mark.parametrize("content", [f"{SECRET} extra", f"{SECRET}\nsecond line", "kéy"])
def test_malformed_key_refused_without_quoting_it(tmp_path, content):
    (tmp_path / "gemini.secret").write_text(content)
    with pytest.raises(ConfigError) as err:
        keys.load_api_key(cfg(), tmp_path, environ={})
    assert SECRET not in str(err.value) and "kéy" not in str(err.value)


def test_key_file_that_is_a_directory(tmp_path):
    (tmp_path / "gemini.secret").mkdir()
    with pytest.raises(ConfigError, match="not a file"):
        keys.load_api_key(cfg(), tmp_path, environ={"GEMINI_API_KEY": SECRET})


@pytest.mark.parametrize(
    "url",
    [
        "https://generativelanguage.googleapis.com/v1beta",
        "https://openrouter.ai/api/v1/chat/completions",
        "http://127.0.0.1:8080/v1beta",
        "http://127.5.6.7/x",
        "http://localhost:1234/api/v1/chat/completions",
        "http://[::1]:9000/v1beta",
    ],
)
def test_base_url_accepted(url):
    assert keys.check_base_url(url) == url


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com/v1beta",
        "http://10.0.0.1/v1beta",
        "http://[::2]/x",
        "ftp://127.0.0.1/x",
        "127.0.0.1:80",
        "https://user:pw@example.com/x",
        "http://localhost.evil.com/x",
    ],
)
def test_base_url_refused(url):
    with pytest.raises(ConfigError, match="api.base_url"):
        keys.check_base_url(url)


def test_defaults_and_model_normalisation():
    assert keys.default_base_url("gemini") == "https://generativelanguage.googleapis.com/v1beta"
    assert keys.default_base_url("openrouter") == "https://openrouter.ai/api/v1/chat/completions"
    assert keys.default_model("gemini") == "gemini-3-pro-image-preview"
    assert keys.default_model("openrouter") == "google/gemini-3-pro-image-preview"
    assert keys.normalise_model("openrouter", "gemini-2.5-flash-image") == "google/gemini-2.5-flash-image"
    assert keys.normalise_model("openrouter", "openai/gpt-5-image") == "openai/gpt-5-image"
    assert keys.normalise_model("openrouter", None) == "google/gemini-3-pro-image-preview"
    assert keys.normalise_model("gemini", "models/gemini-2.5-flash-image") == "gemini-2.5-flash-image"
    assert keys.check_base_url(keys.default_base_url("gemini")) == "https://generativelanguage.googleapis.com/v1beta"
    with pytest.raises(ConfigError):
        keys.check_base_url("http://example.org")
    with pytest.raises(ConfigError):
        keys.default_model("local")
