"""What every job of the workflow does around its work: the log, one line for a failure.

A job's details (tracebacks included) go to its ``log:`` file; the terminal
gets one line when it fails: the target and the reason, said once (not in the
log too: Snakemake's logger may show a failed job's log).
Snakemake stops running jobs with SIGTERM: it exits through Python, so a
temporary file is removed (a half-written file never stays behind).

A job whose work is ``done()`` (a paid answer is stored) succeeds whatever
happens after: Snakemake removes the outputs of a failed job, and a paid
answer removed is bought again by the next run. Ctrl-C reaches the jobs too
(SIGINT to the terminal's process group): it is handled like SIGTERM.
A stop that comes while a paid answer arrives or is written waits until it
is stored (:func:`stops_deferred`, :func:`stops_held`).
"""

from __future__ import annotations

import signal
import sys
import traceback
from contextlib import contextmanager

from .errors import UserError


_KEPT = " (after its work was stored: the job succeeds and keeps it)"

#: how a job is told to stop: by Snakemake or a cluster (SIGTERM), by Ctrl-C (SIGINT)
STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


@contextmanager
def stops_deferred():
    """A stop that comes inside the block waits until the block has run."""
    with stops_held() as hold:
        hold()
        yield


@contextmanager
def stops_held():
    """Yields ``hold()``: once called, a stop waits until the block has run (e.g. from the moment a
    paid answer starts to arrive until it is stored). The mask before the block is restored after it,
    so a stop that came meanwhile lands then."""
    before = signal.pthread_sigmask(signal.SIG_BLOCK, ())
    try:
        yield lambda: signal.pthread_sigmask(signal.SIG_BLOCK, _stops())
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def stop_pending() -> bool:
    """A stop came while held: the job makes no further attempt."""
    return bool(_stops() & signal.sigpending())


def _stops() -> set:
    """The stop signals this process acts on (a job started with Ctrl-C ignored keeps ignoring it:
    blocked, an ignored signal would still be queued and read as a stop)."""
    return {s for s in STOP_SIGNALS if signal.getsignal(s) is not signal.SIG_IGN}


def job_main(snakemake, work, *, name: str | None = None, done=None) -> None:
    """Run ``work()`` for a Snakemake ``script:`` job; exit 1 with one line on failure (0 when
    ``done()`` says the work is kept anyway). A line ``work()`` returns is the job's report:
    printed on the terminal (and in the log)."""
    done = done or (lambda: False)
    for signum in STOP_SIGNALS:
        if signal.getsignal(signum) is not signal.SIG_IGN:  # a job started with Ctrl-C ignored keeps ignoring it
            signal.signal(signum, lambda signum, frame: sys.exit(0 if done() else 128 + signum))
    terminal = sys.stderr
    log = open(snakemake.log[0], "w", encoding="utf-8") if snakemake.log else None
    if log is not None:
        sys.stderr = log
    what = name or f"{snakemake.rule} {', '.join(f'{k}={v}' for k, v in snakemake.wildcards.items())}".strip()
    try:
        report = work()
        if isinstance(report, str) and report:
            print(report, file=terminal, flush=True)
            if log is not None:
                print(report, file=log)
    except UserError as exc:  # said once, on the terminal (a logger that shows failed jobs' logs does not repeat it)
        print(f"{what}: {exc}{_KEPT if done() else ''}", file=terminal, flush=True)
        sys.exit(0 if done() else 1)
    except Exception as exc:  # a bug or the machine (disk full): the traceback goes to the log
        traceback.print_exc(file=log or terminal)
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else f"{type(exc).__name__}: {exc}"
        where = f" (details: {snakemake.log[0]})" if log is not None else ""
        print(f"{what}: unexpected error: {reason}{where}{_KEPT if done() else ''}", file=terminal, flush=True)
        sys.exit(0 if done() else 1)
    finally:
        if log is not None:
            sys.stderr = terminal
            log.close()
