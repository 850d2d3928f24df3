"""Errors a user can act on.

A :class:`UserError` is printed as one line (no traceback) by the entry
points and by the Snakefile: it names the file, row, key or HTTP status and
what to do.  Its text must never contain a secret.
"""


class UserError(Exception):
    """A mistake in the user's input or set-up, reported as one clear line."""


class ConfigError(UserError):
    """A bad configuration value (named by its dotted key)."""
