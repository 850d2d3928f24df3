"""File locks: one process at a time per target, and where such locks hold.

:func:`exclusive` — an ``answer`` job holds its target's lock
(``answers/<stem>/.lock``) from the check "is this answer bought already?"
until the answer is stored.  A second process for the same target (an orphan
of a killed run, a run started after ``snakemake --unlock``) waits, then
finds the answer there and pays nothing.

The locks are ``flock`` locks, released by the kernel when the holder dies
(also ``kill -9``).  Waiting is a blocking ``flock`` (the kernel wakes the
waiter, no polling), bounded by a timeout delivered with ``SIGALRM``.
"""

from __future__ import annotations

import fcntl
import os
import signal
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from .errors import UserError
from .fileio import file_mode


class LockTimeout(UserError):
    """A lock could not be taken within its timeout."""


class _Alarm(Exception):
    pass


def _open(path) -> int:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_RDWR | os.O_CREAT, file_mode())


def _raise_alarm(signum, frame):
    raise _Alarm()


def _wait(fd: int, mode: int, timeout_s: float | None) -> bool:
    """Block until ``flock(fd, mode)`` succeeds; False when ``timeout_s`` passed first."""
    if timeout_s is None:
        fcntl.flock(fd, mode)
        return True
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGALRM, _raise_alarm)
        signal.setitimer(signal.ITIMER_REAL, max(0.001, float(timeout_s)))
        try:
            fcntl.flock(fd, mode)
            return True
        except _Alarm:
            return False
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
    # not the main thread (no signals here): back off up to 1 s between tries
    deadline, pause = time.monotonic() + timeout_s, 0.05
    while True:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
            pause = min(1.0, pause * 2)


@contextmanager
def _held(path, mode: int, timeout_s: float | None, what: str, on_wait=None):
    fd = _open(path)
    try:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            if not _wait(fd, mode, timeout_s):
                raise LockTimeout(
                    f"{what}: still held by another process after {timeout_s:g} s ({path}); "
                    "is another run or an orphaned job of a killed run working on it?"
                ) from None
        yield
    finally:
        os.close(fd)  # releases the lock


def exclusive(path, *, timeout_s: float | None, what: str, on_wait=None):
    """Hold an exclusive lock on ``path`` for the ``with`` body (waiting up to ``timeout_s``)."""
    return _held(path, fcntl.LOCK_EX, timeout_s, what, on_wait)


# ---------------------------------------------------------------- where locks hold


def _mount_of(path, mountinfo: str) -> tuple[str, str, str]:
    """(mount point, fs type, mount + super options) of the mount holding ``path``."""
    real = os.path.realpath(path)
    best = ("/", "", "")
    for line in mountinfo.splitlines():
        left, _, right = line.partition(" - ")
        f, r = left.split(), right.split()
        if len(f) < 6 or len(r) < 2:
            continue
        point = f[4].replace("\\040", " ")
        if (real == point or real.startswith(point.rstrip("/") + "/")) and len(point) >= len(best[0]):
            best = (point, r[0], f"{f[5]},{r[2] if len(r) > 2 else ''}")
    return best


def node_local_reason(path, mountinfo: str | None = None, beegfs_conf: str = "/etc/beegfs/beegfs-client.conf") -> str:
    """Why flock on ``path`` would not be seen by other nodes ("" = it would, as far as we can tell)."""
    if mountinfo is None:
        try:
            mountinfo = Path("/proc/self/mountinfo").read_text()
        except OSError:
            return ""
    point, fstype, opts = _mount_of(path, mountinfo)
    options = set(opts.split(","))
    if fstype == "lustre" and "localflock" in options:
        return f"{point} is Lustre mounted with localflock (flock is per node)"
    if fstype.startswith("nfs") and ({"nolock", "local_lock=all", "local_lock=flock"} & options):
        return f"{point} is NFS mounted with {sorted({'nolock', 'local_lock=all', 'local_lock=flock'} & options)[0]} (flock is per node)"
    if fstype == "beegfs" or fstype.startswith("fuse.beegfs"):
        try:
            conf = Path(beegfs_conf).read_text()
        except OSError:
            conf = ""
        if not any(
            l.split("=", 1)[0].strip() == "tuneUseGlobalFileLocks" and l.split("=", 1)[1].strip().lower() == "true"
            for l in conf.splitlines()
            if "=" in l and not l.lstrip().startswith("#")
        ):
            return f"{point} is BeeGFS without tuneUseGlobalFileLocks=true (flock is per node)"
    return ""


def probe(directory) -> None:
    """Check that flock works in ``directory``; UserError naming the mount otherwise."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    test = d / ".lock-probe"
    fd = os.open(test, os.O_RDWR | os.O_CREAT, file_mode())
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
    except OSError as exc:
        if isinstance(exc, BlockingIOError):
            return
        point, fstype, _ = _mount_of(
            d, Path("/proc/self/mountinfo").read_text() if Path("/proc/self/mountinfo").exists() else ""
        )
        raise UserError(
            f"file locks do not work in {d} ({fstype or 'unknown filesystem'} at {point}: {exc.strerror}); "
            "the per-target locks and the budget ledger need them. Use a data.output_dir on a filesystem "
            "with locks (e.g. Lustre mounted with flock, NFS without nolock)"
        ) from None
    finally:
        os.close(fd)
