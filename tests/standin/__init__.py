"""Local stand-in for the Gemini API and OpenRouter (see ``server.py``)."""

from .server import DEFAULT_API_KEY, KINDS, B, RecordedRequest, StandinServer, as_behaviour

__all__ = ["DEFAULT_API_KEY", "KINDS", "B", "RecordedRequest", "StandinServer", "as_behaviour"]
