"""A cross-process cap on API calls in flight: ``api.concurrency`` slot files.

Each call holds an exclusive ``flock`` on one of N files in
``{output_dir}/.pipeline/slots/`` for exactly as long as the HTTP request is
in flight (not while waiting between retries, not while post-processing), so
the cap holds across every job of a run on one machine, whatever ``-j`` is.
A crashed job's locks are released by the kernel.

Waiting never polls: when every slot is taken the caller blocks in the kernel
on one slot (chosen at random) until it is released, bounded by a timeout.
On a cluster the cap across nodes comes from Snakemake's ``api`` resource on
the submit host (see rules/common.smk); the slots are a second, per-node guard.
"""

from __future__ import annotations

import fcntl
import os
import random
from contextlib import contextmanager
from pathlib import Path

from . import locks
from .fileio import file_mode
from .providers.base import AttemptError


class CallSlots:
    def __init__(self, directory, n: int, wait_timeout_s: float = 3600.0):
        self.directory = Path(directory)
        self.n = max(1, int(n))
        self.wait_timeout_s = float(wait_timeout_s)
        self.directory.mkdir(parents=True, exist_ok=True)

    def _path(self, i: int) -> Path:
        return self.directory / f"slot-{i}.lock"

    def _try(self, i: int) -> int | None:
        fd = os.open(self._path(i), os.O_RDWR | os.O_CREAT, file_mode())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return fd

    @contextmanager
    def hold(self):
        """Hold one slot for the ``with`` body (blocking, without polling, when all are taken)."""
        start = random.randrange(self.n)
        for j in range(self.n):
            fd = self._try((start + j) % self.n)
            if fd is not None:
                try:
                    yield
                finally:
                    os.close(fd)
                return
        try:
            held = locks.exclusive(self._path(start), timeout_s=self.wait_timeout_s, what="API call slot")
            held.__enter__()
        except locks.LockTimeout as exc:
            raise AttemptError(f"no API call slot free within {self.wait_timeout_s:g} s ({exc})",
                               retryable=True, reason="SLOT_TIMEOUT") from None
        try:
            yield
        finally:
            held.__exit__(None, None, None)


class SlotLimited:
    """Wrap a provider so each attempt runs while holding one call slot."""

    def __init__(self, provider, slots: CallSlots, gate=None, on_error=None):
        self.provider = provider
        self.slots = slots
        self.gate = gate  # called once the slot is held ("has the run stopped meanwhile?")
        self.on_error = on_error  # called with a failed attempt's error while the slot is still held,
        # so a stop it decides on is visible before the next job gets this slot
        self.name, self.model, self.paid = provider.name, provider.model, provider.paid

    def attempt(self, request):
        with self.slots.hold():
            if self.gate is not None:
                self.gate()
            try:
                return self.provider.attempt(request)
            except AttemptError as err:
                if self.on_error is not None:
                    self.on_error(err)
                raise
