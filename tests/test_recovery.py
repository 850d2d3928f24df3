"""Recovery helpers: stale locks, incomplete markers of finished outputs, temporaries."""

import base64
import json
import os
import socket
import time

from pathlib import Path

import pytest

from nano_banana_aug import layout, locks, recovery, runs, sidecar
from nano_banana_aug.errors import UserError
from nano_banana_aug.sidecar import Record


def _owner(pid, host=None, lockfiles=(), alive_lock="alive.lock", run_id="r1"):
    owner = runs.Owner(run_id=run_id, pid=pid, host=host or socket.gethostname(), boot_id="", started="",
                       output_dir="aug", alive_lock=alive_lock,
                       lockfiles={str(p): runs.lockfile_identity(p) for p in lockfiles})
    runs.OWNERS_DIR.mkdir(parents=True, exist_ok=True)
    (runs.OWNERS_DIR / f"{run_id}.json").write_text(json.dumps(owner.__dict__))
    return owner


DEAD = 2**22 + 12345  # above the default pid_max: never a live process


def _locks(*names):
    d = Path(".snakemake/locks")
    d.mkdir(parents=True, exist_ok=True)
    for n in names:
        (d / n).write_text("aug/x.png\n")
    return [d / n for n in names]


def test_only_the_recorded_lock_files_of_a_dead_run_are_removed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    mine, other = _locks("0.input.lock", "1.output.lock")
    _owner(DEAD, lockfiles=[mine])
    notes = []
    recovery.recover("aug", orphan_wait_s=1, say=notes.append)
    assert not mine.exists() and other.exists()  # a lock nobody recorded is not ours to judge
    assert not list(runs.OWNERS_DIR.iterdir()) and "was killed" in notes[0]


def test_live_or_unknown_owners_keep_their_locks(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (lock,) = _locks("0.input.lock")
    _owner(os.getpid(), lockfiles=[lock], run_id="alive")
    _owner(DEAD, host="another-host", lockfiles=[lock], run_id="elsewhere")
    recovery.recover("aug", orphan_wait_s=1, say=lambda m: None)
    assert lock.exists() and len(list(runs.OWNERS_DIR.iterdir())) == 2


def test_a_lock_file_replaced_since_is_not_removed(tmp_path, monkeypatch):
    """Snakemake reuses lock file names: a new run's 0.input.lock is not the dead run's."""
    monkeypatch.chdir(tmp_path)
    (lock,) = _locks("0.input.lock")
    _owner(DEAD, lockfiles=[lock])
    lock.unlink()
    time.sleep(0.01)
    _locks("0.input.lock")
    recovery.recover("aug", orphan_wait_s=1, say=lambda m: None)
    assert lock.exists()


def test_orphaned_jobs_of_a_dead_run_are_waited_for(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (lock,) = _locks("0.input.lock")
    _owner(DEAD, lockfiles=[lock], alive_lock="alive.lock")
    notes = []
    with locks.shared("alive.lock"):  # an orphaned generate job is still running
        with pytest.raises(UserError, match=r"still running.*pkill -f 'runs/r1/'"):
            recovery.recover("aug", orphan_wait_s=0.2, say=notes.append)
        assert lock.exists() and "still running" in notes[0]
    recovery.recover("aug", orphan_wait_s=0.2, say=notes.append)
    assert not lock.exists()


def test_incomplete_markers_of_done_outputs_settled(tmp_path):
    out = tmp_path / "aug"
    out.mkdir()
    marks = tmp_path / ".snakemake" / "incomplete"
    marks.mkdir(parents=True)
    done, partial = out / "ID1__a__v0.png", out / "ID2__a__v0.png"
    from PIL import Image

    Image.new("RGB", (4, 2)).save(done)
    sidecar.write(Record("ID1", "a", 0, status="success"), layout.sidecar_path(out, "ID1", "a", 0))
    sidecar.write(Record("ID2", "a", 0, status="success"), layout.sidecar_path(out, "ID2", "a", 0))  # file missing
    for p in (done, partial):
        (marks / base64.urlsafe_b64encode(os.path.relpath(p, tmp_path).encode()).decode()).write_text("")
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        settled = recovery.settle_incomplete(".", lambda p: recovery.output_is_done(p, "aug"))
    finally:
        os.chdir(cwd)
    assert settled == ["aug/ID1__a__v0.png"] and len(list(marks.iterdir())) == 1


def test_stale_temporaries_removed(tmp_path):
    old, new = tmp_path / ".x.png.abc.tmp", tmp_path / ".y.png.def.tmp"
    old.write_bytes(b"1")
    new.write_bytes(b"2")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    (tmp_path / "keep.png").write_bytes(b"3")
    assert recovery.remove_stale_temporaries([tmp_path, tmp_path / "missing"]) == 1
    assert not old.exists() and new.exists() and (tmp_path / "keep.png").exists()


def test_a_locked_job_removes_its_own_temporaries_whatever_their_age(tmp_path):
    out = tmp_path / "ID1__sun__v0.png"
    fresh = tmp_path / ".ID1__sun__v0.png.abc123.tmp"  # a job killed a moment ago, mid-write
    other = tmp_path / ".ID1__sun__v1.png.abc123.tmp"  # another target's: not ours
    odd = tmp_path / "[x]"  # glob characters in a name are taken literally
    for p in (fresh, other):
        p.write_bytes(b"partial")
    (tmp_path / ".[x].q.tmp").write_bytes(b"partial")
    assert recovery.remove_own_temporaries([out, odd]) == 2
    assert not fresh.exists() and other.exists() and not (tmp_path / ".[x].q.tmp").exists()
