"""pytest fixtures for the stand-in server.

Use from a conftest (``from tests.standin.fixtures import *``) or as a plugin
(``pytest -p tests.standin.fixtures`` / ``pytest_plugins = ["tests.standin.fixtures"]``).

- ``standin_server``: one server per test session (cheap to share; reset between tests).
- ``standin``: that server, reset before each test: ``.url``, ``.gemini_base_url``,
  ``.openrouter_url``, ``.api_key``, ``.script(protocol, *behaviours, match=None)``,
  ``.set_default(...)``, ``.set_rule(fn)``, ``.requests``, ``.requests_for(p)``,
  ``.max_in_flight``, ``.key_leaks(key)``, ``.reset()``; latency back to 0.
  Gemini Files + Batch API (``batch.py``): ``.set_batch_behaviour(kind, **params)``,
  ``.script_batches(*kinds)``, ``.finish_batches(*names, outcome=None)``,
  ``.hold_batch_step(*steps)`` / ``.release_batch_step(*steps)`` (``.release()`` too),
  ``.set_batch_stats(mode)``, ``.set_upload_granularity(n)``, ``.batches``, ``.uploads``,
  ``.batch_lines``, ``.batch_answers()``; all cleared by the reset.
- ``standin_key``: the key the stand-in accepts.
"""

from __future__ import annotations

import pytest

from .server import DEFAULT_API_KEY, B, StandinServer

__all__ = ["standin_server", "standin", "standin_key", "B"]


@pytest.fixture(scope="session")
def standin_server():
    server = StandinServer(api_key=DEFAULT_API_KEY).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def standin(standin_server):
    standin_server.reset()
    standin_server.latency = 0.0
    standin_server.api_key = DEFAULT_API_KEY
    yield standin_server
    standin_server.reset()


@pytest.fixture
def standin_key() -> str:
    return DEFAULT_API_KEY
