"""A cross-process cap on API calls in flight: ``api.concurrency`` slot files.

Each call holds an exclusive ``flock`` on one of N files in
``{output_dir}/.pipeline/slots/`` for exactly as long as the HTTP request is
in flight (not while waiting between retries, not while post-processing), so
the cap holds across every job of a run, whatever ``-j`` is, and across the
nodes of a cluster that share the output directory (Linux NFS clients map
flock to POSIX locks).  A crashed job's locks are released by the kernel.
"""

from __future__ import annotations

import fcntl
import os
import random
import time
from contextlib import contextmanager
from pathlib import Path


class CallSlots:
    def __init__(self, directory, n: int, poll_s: float = 0.02):
        self.directory = Path(directory)
        self.n = max(1, int(n))
        self.poll_s = poll_s
        self.directory.mkdir(parents=True, exist_ok=True)

    def _try(self, i: int) -> int | None:
        fd = os.open(self.directory / f"slot-{i}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return fd

    @contextmanager
    def hold(self):
        """Block until a slot is free; hold it for the ``with`` body."""
        start = random.randrange(self.n)
        while True:
            for j in range(self.n):
                fd = self._try((start + j) % self.n)
                if fd is not None:
                    try:
                        yield
                    finally:
                        fcntl.flock(fd, fcntl.LOCK_UN)
                        os.close(fd)
                    return
            time.sleep(self.poll_s * (0.5 + random.random()))


class SlotLimited:
    """Wrap a provider so each attempt runs while holding one call slot."""

    def __init__(self, provider, slots: CallSlots):
        self.provider = provider
        self.slots = slots
        self.name, self.model, self.paid = provider.name, provider.model, provider.paid

    def attempt(self, request):
        with self.slots.hold():
            return self.provider.attempt(request)
