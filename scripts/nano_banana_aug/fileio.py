"""Durable atomic file writes.

Every file the pipeline writes goes to a temporary name in the same
directory, is flushed to disk (``fsync``), and is then renamed over the final
name; the directory is fsync'd after the rename.  A crash, ``kill -9`` or a
power cut therefore never leaves a half-written file under a final name, and
a file that exists under its final name survives a crash of the machine.

Files get the permissions a plain ``open(..., "w")`` would give them (``0666``
minus the umask), not ``mkstemp``'s ``0600``: a training job running as
another user of the group must be able to read the outputs.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

_UMASK: int | None = None


def umask() -> int:
    """The process umask (read once; from /proc without changing it, where possible)."""
    global _UMASK
    if _UMASK is None:
        try:
            with open("/proc/self/status", encoding="ascii") as fh:
                for line in fh:
                    if line.startswith("Umask:"):
                        _UMASK = int(line.split()[1], 8)
                        break
        except OSError:
            pass
        if _UMASK is None:  # no /proc: the classic read-by-setting dance
            _UMASK = os.umask(0o022)
            os.umask(_UMASK)
    return _UMASK


def file_mode() -> int:
    """Permissions of a new regular file: 0666 minus the umask."""
    return 0o666 & ~umask()


def fsync_dir(directory) -> None:
    """Make a rename (or a new file) in ``directory`` durable."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path, data: bytes, *, durable: bool = True, mode: int | None = None) -> None:
    """Write ``data`` to ``path`` atomically (temporary name, fsync, rename, fsync of the directory).

    ``durable=False`` skips both fsyncs (caches and other derived files that
    can always be rebuilt); ``mode`` replaces the umask-derived permissions
    (0o444: a read-only paid answer).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fchmod(fh.fileno(), file_mode() if mode is None else mode & ~umask())
            if durable:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    if durable:
        fsync_dir(path.parent)


def atomic_write_text(path, text: str, **kw) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), **kw)


def append_line(path, line: str, *, durable: bool = False) -> None:
    """Append one line with a single O_APPEND write (lines from parallel jobs do not interleave)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = (line.rstrip("\n") + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, file_mode())
    try:
        os.write(fd, data)
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
