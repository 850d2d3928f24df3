"""Call slots (``api.concurrency``): a call takes any free slot, waits for the first one freed,
gives up after its wait limit holding nothing, and the cap holds across processes -- also when
a holder is killed with SIGKILL (the kernel releases its flock).

Other processes are real ``python`` children; every ordering is decided by an event (a line on
a pipe, a lock seen held, a line in a shared file), timeouts are only safety nets."""

from __future__ import annotations

import fcntl
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nano_banana_aug.slots import CallSlots, SlotTimeout

from .helpers import blocked_on, wait_for

SAFETY_S = 60  # only ever reached when something is broken

# One child script, three roles (argv[1]):
#   hold DIR I...        flock slot files I..., say "held", then "release I" on stdin closes one
#   wait DIR N TIMEOUT   CallSlots(DIR, N).acquire(), say "got I" (or "timeout"), hold until stdin ends
#   work DIR N LOG NAME  "start NAME" to LOG; holding a slot: "enter NAME", wait for a stdin line, "exit NAME"
CHILD = r"""
import fcntl, os, sys
from pathlib import Path
from nano_banana_aug.slots import CallSlots, SlotTimeout

def say(text):
    sys.stdout.write(text + "\n")
    sys.stdout.flush()

def log(path, text):
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (text + "\n").encode())
    finally:
        os.close(fd)

def slot_index(directory, n, fd):
    ino = os.fstat(fd).st_ino
    for i in range(n):
        if os.stat(Path(directory) / f"slot-{i}.lock").st_ino == ino:
            return i
    return -1

role, directory = sys.argv[1], sys.argv[2]
if role == "hold":
    fds = {}
    for i in map(int, sys.argv[3:]):
        fd = os.open(Path(directory) / f"slot-{i}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fds[i] = fd
    say("held")
    for line in sys.stdin:
        cmd, _, arg = line.strip().partition(" ")
        if cmd == "release":
            os.close(fds.pop(int(arg)))
            say(f"released {arg}")
elif role == "wait":
    n, timeout = int(sys.argv[3]), float(sys.argv[4])
    try:
        fd = CallSlots(directory, n, wait_timeout_s=timeout).acquire()
    except SlotTimeout:
        say("timeout")
        sys.exit(3)
    say(f"got {slot_index(directory, n, fd)}")
    sys.stdin.read()
    os.close(fd)
elif role == "work":
    n, path, name = int(sys.argv[3]), sys.argv[4], sys.argv[5]
    slots = CallSlots(directory, n, wait_timeout_s=float(sys.argv[6]))
    log(path, f"start {name}")
    with slots.hold():
        log(path, f"enter {name}")
        sys.stdin.readline()
        log(path, f"exit {name}")
"""


class Child:
    """A child process speaking lines on its stdin/stdout."""

    def __init__(self, *args):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, *map(str, args)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            bufsize=0,
        )
        self._buf = b""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def send(self, line: str) -> None:
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def line(self, timeout: float = SAFETY_S) -> str:
        """The next line the child says ("" when it ended without one)."""
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"child {self.proc.args[3:]} said nothing within {timeout} s")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 4096)
                if not chunk:
                    return ""
                self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line.decode()

    def close(self) -> int:
        """End the child (stdin closed) and return its exit code."""
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
            except BrokenPipeError:
                pass
            try:
                self.proc.wait(timeout=SAFETY_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except (BrokenPipeError, OSError):
                pass
        return self.proc.returncode


@pytest.fixture
def children():
    started: list[Child] = []

    def start(*args) -> Child:
        child = Child(*args)
        started.append(child)
        return child

    yield start
    for child in started:
        child.close()


def slot_file(directory: Path, i: int) -> Path:
    return directory / f"slot-{i}.lock"


def is_locked(path: Path) -> bool:
    """Someone holds an exclusive flock on ``path`` (tried without waiting, released at once)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # also drops the lock when the try took it
    return False


def hold_here(path: Path) -> int:
    """Hold ``path``'s flock from this process on an fd of its own (conflicts with any other fd)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


# ---------------------------------------------------------------- in one process, other fds


def test_a_call_takes_the_one_free_slot_whichever_it_is(tmp_path):
    slots = CallSlots(tmp_path / "slots", 3, wait_timeout_s=5)
    held = [hold_here(slot_file(slots.directory, i)) for i in (0, 2)]
    try:
        assert not is_locked(slot_file(slots.directory, 1))
        fd = slots.acquire()
        try:
            assert os.fstat(fd).st_ino == os.stat(slot_file(slots.directory, 1)).st_ino
            assert is_locked(slot_file(slots.directory, 1))  # the lock is on the file of slot 1
        finally:
            os.close(fd)
        assert not is_locked(slot_file(slots.directory, 1))  # closing the fd gives the slot back
    finally:
        for fd in held:
            os.close(fd)
    assert sorted(p.name for p in slots.directory.iterdir()) == ["slot-0.lock", "slot-1.lock", "slot-2.lock"]


def test_hold_releases_its_slot_also_on_an_exception(tmp_path):
    slots = CallSlots(tmp_path / "slots", 1, wait_timeout_s=5)
    with pytest.raises(RuntimeError, match="in flight"):
        with slots.hold():
            assert is_locked(slot_file(slots.directory, 0))
            raise RuntimeError("in flight")
    assert not is_locked(slot_file(slots.directory, 0))


def test_all_slots_held_times_out_holding_nothing(tmp_path):
    directory = tmp_path / "slots"
    directory.mkdir()
    held = [hold_here(slot_file(directory, i)) for i in range(3)]
    slots = CallSlots(directory, 3, wait_timeout_s=0.2, poll_s=0.01)
    fds_before = open_fds()
    try:
        with pytest.raises(SlotTimeout, match=r"no API call slot freed within 0\.2 s"):
            slots.acquire()
        assert open_fds() == fds_before  # no slot fd, no turnstile fd left open
        assert not is_locked(directory / "turnstile.lock")  # the queue is free for the next waiter
    finally:
        for fd in held:
            os.close(fd)
    assert [is_locked(slot_file(directory, i)) for i in range(3)] == [False, False, False]
    # and every slot can be taken again by three calls at once
    fds = [slots.acquire() for _ in range(3)]
    try:
        assert sorted(os.fstat(fd).st_ino for fd in fds) == sorted(
            os.stat(slot_file(directory, i)).st_ino for i in range(3)
        )
    finally:
        for fd in fds:
            os.close(fd)


# ---------------------------------------------------------------- across processes


@pytest.mark.parametrize("freed", [0, 1, 2])
def test_a_waiter_takes_the_slot_of_whichever_holder_releases(tmp_path, children, freed):
    directory = tmp_path / "slots"
    directory.mkdir()
    holders = [children("hold", directory, i) for i in range(3)]
    assert [h.line() for h in holders] == ["held"] * 3
    waiter = children("wait", directory, 3, SAFETY_S)
    # the waiter is in the queue once it holds the turnstile (it found every slot taken)
    wait_for(lambda: is_locked(directory / "turnstile.lock"), "the waiter to queue", timeout=SAFETY_S)
    holders[freed].send(f"release {freed}")
    assert holders[freed].line() == f"released {freed}"
    assert waiter.line() == f"got {freed}"
    # the other two holders never let go: the waiter did not wait for all of them
    others = [i for i in range(3) if i != freed]
    assert all(holders[i].proc.poll() is None for i in others)
    assert [is_locked(slot_file(directory, i)) for i in range(3)] == [True, True, True]
    assert not is_locked(directory / "turnstile.lock")  # it left the queue
    assert waiter.close() == 0
    assert not is_locked(slot_file(directory, freed))


def test_a_long_queue_is_no_reason_to_give_up(tmp_path, children):
    """Defect: the wait limit counted the time in the queue, so with more jobs queued than slots
    (--resources api above api.concurrency, two runs) a waiter gave up -- and stopped its job's
    buying -- although calls kept ending. Only the front of the queue has a limit: for a slot
    to be freed."""
    directory = tmp_path / "slots"
    directory.mkdir()
    holder = children("hold", directory, 0, 1)
    assert holder.line() == "held"
    first = children("wait", directory, 2, SAFETY_S)
    wait_for(lambda: is_locked(directory / "turnstile.lock"), "the first waiter to queue", timeout=SAFETY_S)
    second = children("wait", directory, 2, 2.0)  # its limit passes while it is queued
    wait_for(lambda: blocked_on(directory / "turnstile.lock") == 1, "the second waiter to queue", timeout=SAFETY_S)
    time.sleep(2.5)
    assert second.proc.poll() is None  # still in the queue
    holder.send("release 0")
    assert holder.line() == "released 0"
    assert first.line() == "got 0"  # and keeps it; the second is at the front now
    holder.send("release 1")
    assert holder.line() == "released 1"
    assert second.line() == "got 1"
    assert first.close() == 0 and second.close() == 0


def test_a_holder_killed_with_sigkill_frees_its_slot(tmp_path, children):
    directory = tmp_path / "slots"
    directory.mkdir()
    holder = children("hold", directory, 0)
    assert holder.line() == "held"
    waiter = children("wait", directory, 1, SAFETY_S)
    wait_for(lambda: is_locked(directory / "turnstile.lock"), "the waiter to queue", timeout=SAFETY_S)
    assert holder.proc.poll() is None and waiter.proc.poll() is None
    os.kill(holder.pid, signal.SIGKILL)  # no clean-up runs in the holder: the kernel drops its flock
    assert holder.proc.wait(timeout=SAFETY_S) == -signal.SIGKILL
    assert waiter.line() == "got 0"
    assert waiter.close() == 0
    # once the waiter is gone too, a call here takes the slot at once
    fd = CallSlots(directory, 1, wait_timeout_s=0.2).acquire()
    os.close(fd)


def concurrency(events: list[tuple[str, str]]) -> tuple[int, set]:
    """(highest number inside at once, who is inside now) from ordered enter/exit events."""
    inside, most = set(), 0
    for what, name in events:
        if what == "enter":
            assert name not in inside, f"{name} entered twice"
            inside.add(name)
            most = max(most, len(inside))
        elif what == "exit":
            assert name in inside, f"{name} left without entering"
            inside.remove(name)
    return most, inside


def read_events(path: Path) -> list[tuple[str, str]]:
    """Complete lines only (a line being appended right now is left for the next look)."""
    if not path.exists():
        return []
    *lines, _partial = path.read_text().split("\n")
    return [tuple(line.split(" ", 1)) for line in lines]


def test_the_cap_holds_across_processes(tmp_path, children):
    n, m = 2, 5
    directory, log = tmp_path / "slots", tmp_path / "events.log"
    workers = {f"w{i}": children("work", directory, n, log, f"w{i}", SAFETY_S) for i in range(m)}

    def events():
        return read_events(log)

    # every worker asks for a slot; n of them get one, the others wait (one at the turnstile)
    wait_for(lambda: sum(1 for e in events() if e[0] == "start") == m, "every worker to start", timeout=SAFETY_S)
    wait_for(lambda: len(concurrency(events())[1]) == n, f"{n} workers inside", timeout=SAFETY_S)
    wait_for(lambda: is_locked(directory / "turnstile.lock"), "a worker to queue", timeout=SAFETY_S)
    most, inside = concurrency(events())
    assert most == n and len(inside) == n

    released = []
    while len(released) < m:
        remaining = m - len(released)
        wait_for(
            lambda remaining=remaining: len(concurrency(events())[1]) >= min(n, remaining),
            "the next worker inside",
            timeout=SAFETY_S,
        )
        most, inside = concurrency(events())
        assert most <= n, f"{most} workers held a slot at once with {n} slots: {events()}"
        name = sorted(inside)[0]
        workers[name].send("go")  # it leaves: exactly one slot frees up
        wait_for(lambda name=name: ("exit", name) in events(), f"{name} to leave", timeout=SAFETY_S)
        assert workers[name].close() == 0
        released.append(name)

    final = events()
    most, inside = concurrency(final)
    assert (most, inside) == (n, set())
    assert sorted(name for what, name in final if what == "enter") == sorted(workers)
    assert sorted(released) == sorted(workers)
