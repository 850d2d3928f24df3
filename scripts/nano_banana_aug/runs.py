"""A run's identity, its private files, and who owns Snakemake's lock.

Every invocation of Snakemake gets a new run id while the Snakefile is
parsed (no file is written then).  Only the invocation that holds
Snakemake's lock and really executes — its ``onstart`` hook — writes:

    {output_dir}/.pipeline/runs/<run id>/config.json   the effective config of this run
                                                        (read-only; generate jobs read it)
    {output_dir}/.pipeline/runs/<run id>/alive.lock    held (shared) by every job of the run
    .snakemake/nano_banana_aug/owners/<run id>.json    pid, host, process start and the
                                                        Snakemake lock files this run holds

so a dry-run, ``--summary``, ``--lint``, ``--unlock`` or a run that fails to
get the lock can change nothing that a live run uses.  Cluster job steps
re-parse the Snakefile: they take the run id from the environment
(``NANO_BANANA_RUN_ID``, exported by the main process to the jobs it submits).
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import layout
from .fileio import atomic_write_text

ENV_RUN_ID = "NANO_BANANA_RUN_ID"
OWNERS_DIR = Path(".snakemake") / "nano_banana_aug" / "owners"


def new_run_id(now: float | None = None) -> str:
    now = time.time() if now is None else now
    return time.strftime("%Y%m%dT%H%M%S", time.localtime(now)) + f"-{os.getpid()}-{secrets.token_hex(2)}"


def run_id_for(is_main_process: bool) -> str:
    """A new id in the main process (exported to its jobs); the main process's id in a job step."""
    if is_main_process:
        rid = new_run_id()
        os.environ[ENV_RUN_ID] = rid
        return rid
    return os.environ.get(ENV_RUN_ID) or new_run_id()


def run_dir(output_dir, run_id: str) -> Path:
    return layout.pipeline_dir(output_dir) / "runs" / run_id


def config_path(output_dir, run_id: str) -> Path:
    return run_dir(output_dir, run_id) / "config.json"


def start_mark(output_dir, run_id: str) -> Path:
    return run_dir(output_dir, run_id) / "started"


def alive_lock(output_dir, run_id: str) -> Path:
    return run_dir(output_dir, run_id) / "alive.lock"


def write_run_config(cfg: dict, path) -> None:
    """The run's effective config, written once and then read-only."""
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path}: the config of run {path.parent.name} exists already")
    atomic_write_text(path, json.dumps(cfg, indent=1, sort_keys=True))
    os.chmod(path, 0o444)


# ---------------------------------------------------------------- owners

def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def process_start(pid: int) -> str:
    """The process's start time in clock ticks since boot ("" if unknown): tells a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]


@dataclass
class Owner:
    run_id: str
    pid: int
    host: str
    boot_id: str
    started: str  # process start (ticks since boot)
    output_dir: str
    alive_lock: str  # path of the run's alive lock
    lockfiles: dict = field(default_factory=dict)  # path -> [inode, mtime_ns, size]

    def is_alive(self) -> bool | None:
        """True/False on this host; None when it ran elsewhere (cannot tell)."""
        if self.host != socket.gethostname():
            return None
        if self.boot_id and self.boot_id != _boot_id():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return not self.started or process_start(self.pid) == self.started

    def path(self) -> Path:
        return OWNERS_DIR / f"{self.run_id}.json"


def lockfile_identity(path) -> list[int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_ino, st.st_mtime_ns, st.st_size]


def record_owner(run_id: str, output_dir, lockfiles) -> Owner:
    """Called by the lock-holding run: which Snakemake lock files are ours."""
    owner = Owner(
        run_id=run_id, pid=os.getpid(), host=socket.gethostname(), boot_id=_boot_id(),
        started=process_start(os.getpid()), output_dir=str(output_dir),
        alive_lock=str(alive_lock(output_dir, run_id)),
        lockfiles={str(p): lockfile_identity(p) for p in lockfiles if lockfile_identity(p)},
    )
    atomic_write_text(owner.path(), json.dumps(asdict(owner), indent=1))
    return owner


def load_owners() -> list[Owner]:
    owners = []
    try:
        names = sorted(os.listdir(OWNERS_DIR))
    except FileNotFoundError:
        return owners
    for name in names:
        if name.endswith(".json"):
            try:
                owners.append(Owner(**json.loads((OWNERS_DIR / name).read_text())))
            except (OSError, ValueError, TypeError):
                continue
    return owners


def forget_owner(run_id: str) -> None:
    (OWNERS_DIR / f"{run_id}.json").unlink(missing_ok=True)


def keep_other_runs_locks() -> None:
    """Make this Snakemake process remove only its own lock files when it ends.

    Snakemake 9's file persistence ends every locked invocation by deleting
    the whole ``.snakemake/locks`` directory — also the lock files of another,
    still running invocation in the same directory (a ``report_gallery`` run
    or a "Nothing to be done" run next to a paid run).  The next invocation
    then finds no lock and works on the live run's targets in parallel.

    After this call, ending a run removes the lock files this process wrote and
    the directory only if nothing else is in it.  ``snakemake --unlock`` (which
    wrote no lock of its own) still removes every lock, as documented.
    Snakemake's database persistence backend is left as it is.
    """
    try:
        from snakemake.persistence.file import FilePersistence
    except ImportError:  # another Snakemake layout: nothing to adjust
        return
    original = FilePersistence._delete_locks
    if getattr(original, "_keeps_other_runs_locks", False):
        return

    def _delete_locks(self) -> None:
        own = list(getattr(self, "_lockfile", {}).values())
        if not own:  # --unlock: the user asks to remove every lock
            return original(self)
        for path in own:
            try:
                os.remove(path)
            except FileNotFoundError:
                pass
        self._lockfile.clear()
        try:
            os.rmdir(self._lockdir)
        except OSError:  # not empty (another run's locks) or already gone
            pass

    _delete_locks._keeps_other_runs_locks = True
    FilePersistence._delete_locks = _delete_locks
