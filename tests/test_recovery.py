"""Recovery helpers: stale locks, incomplete markers of finished outputs, temporaries."""

import base64
import json
import os
import socket
import time

from nano_banana_aug import layout, recovery, sidecar
from nano_banana_aug.sidecar import Record


def test_stale_locks_removed_only_when_owner_is_dead(tmp_path):
    locks = tmp_path / ".snakemake" / "locks"
    locks.mkdir(parents=True)
    (locks / "0.input.lock").write_text("x")
    assert not recovery.clear_stale_locks(tmp_path)  # no owner record: not ours to judge
    owner = tmp_path / ".snakemake" / recovery.PID_FILE
    owner.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))
    assert not recovery.clear_stale_locks(tmp_path)  # alive
    owner.write_text(json.dumps({"host": "another-host", "pid": 999999}))
    assert not recovery.clear_stale_locks(tmp_path)  # cannot tell on another host
    owner.write_text(json.dumps({"host": socket.gethostname(), "pid": 2**22 + 12345}))
    assert recovery.clear_stale_locks(tmp_path) and not list(locks.iterdir())


def test_incomplete_markers_of_done_outputs_settled(tmp_path):
    out = tmp_path / "aug"
    out.mkdir()
    marks = tmp_path / ".snakemake" / "incomplete"
    marks.mkdir(parents=True)
    done, partial = out / "ID1__a__v0.png", out / "ID2__a__v0.png"
    done.write_bytes(b"png")
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
