"""What every job of the workflow does around its work: the log, one line for a failure.

A job's details (tracebacks included) go to its ``log:`` file; the terminal
gets one line when it fails: the target and the reason, said once (not in the
log too: Snakemake's logger may show a failed job's log).
Snakemake stops running jobs with SIGTERM: it exits through Python, so a
temporary file is removed (a half-written file never stays behind).

A job whose work is ``done()`` (a paid answer is stored) succeeds whatever
happens after: Snakemake removes the outputs of a failed job, and a paid
answer removed is bought again by the next run.
"""

from __future__ import annotations

import signal
import sys
import traceback

from .errors import UserError


_KEPT = " (after its work was stored: the job succeeds and keeps it)"


def job_main(snakemake, work, *, name: str | None = None, done=None) -> None:
    """Run ``work()`` for a Snakemake ``script:`` job; exit 1 with one line on failure (0 when
    ``done()`` says the work is kept anyway). A line ``work()`` returns is the job's report:
    printed on the terminal (and in the log)."""
    done = done or (lambda: False)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0 if done() else 128 + signum))
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
