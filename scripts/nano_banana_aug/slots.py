"""A cross-process cap on API calls in flight: ``api.concurrency`` slot files.

Each call holds an exclusive ``flock`` on one of N files in
``{output_dir}/.pipeline/slots/`` for exactly as long as the HTTP request is
in flight (not while waiting between retries or through a cool-down, not
while the answer is stored), so the cap holds across every job and every
run in the directory, whatever ``-j`` is.  A crashed job's locks are
released by the kernel.

A job that finds every slot taken queues on a *turnstile* lock (the kernel
wakes waiters one at a time, no polling by the others); the one waiter at
the front takes the first slot that frees up, checking all of them every
``poll_s``.  So a free slot is taken within ``poll_s`` of being freed,
whichever slot it is.  Only the front gives up: when no slot is freed for
``wait_timeout_s`` (every call ends within twice its timeout, so a slot
held longer belongs to a stuck process).
"""

from __future__ import annotations

import fcntl
import os
import time
from contextlib import contextmanager
from pathlib import Path

from . import locks
from .fileio import file_mode


class SlotTimeout(Exception):
    """No slot became free within the wait limit (no call was made)."""


class CallSlots:
    def __init__(self, directory, n: int, wait_timeout_s: float = 3600.0, poll_s: float = 0.02):
        self.directory = Path(directory)
        self.n = max(1, int(n))
        self.wait_timeout_s = float(wait_timeout_s)
        self.poll_s = float(poll_s)
        self.directory.mkdir(parents=True, exist_ok=True)

    def _path(self, i: int) -> Path:
        return self.directory / f"slot-{i}.lock"

    def _try_any(self) -> int | None:
        """A held slot's file descriptor, or None when all are taken."""
        for i in range(self.n):
            fd = os.open(self._path(i), os.O_RDWR | os.O_CREAT, file_mode())
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                os.close(fd)
        return None

    def acquire(self) -> int:
        """Hold one slot (its fd); SlotTimeout when, at the front of the queue, none frees up
        within the wait limit. The place in the queue has no limit: a long queue (many jobs, few
        slots) is progress, each call ending within its own timeout; only slots that stay held
        while no call ends mean something is stuck."""
        fd = self._try_any()
        if fd is not None:
            return fd
        with locks.exclusive(self.directory / "turnstile.lock", timeout_s=None, what="API call slot queue"):
            deadline = time.monotonic() + self.wait_timeout_s
            while True:
                fd = self._try_any()
                if fd is not None:
                    return fd
                if time.monotonic() >= deadline:
                    raise SlotTimeout(f"no API call slot freed within {self.wait_timeout_s:g} s")
                time.sleep(self.poll_s)

    @contextmanager
    def hold(self):
        fd = self.acquire()
        try:
            yield
        finally:
            os.close(fd)
