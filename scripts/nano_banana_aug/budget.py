"""The budget guard: no paid call starts past the run's or the directory's limit.

What was paid is read from the answers (:mod:`nano_banana_aug.answers`);
this module only keeps what is *in flight*.  Before each paid attempt a job
reserves one call at the planning price (``pricing.image_usd_per_call``, a
4K answer's when ``api.image_config`` asks for 4K), or at the most a call of
this run has cost when that is more, in
the run's ledger (``.pipeline/runs/<run id>/ledger.json``, under an
exclusive lock, so parallel jobs — also on other nodes of a shared
filesystem — never start more calls than ``api.max_calls`` or spend past
``api.max_cost_usd``); after the call the estimate from the reported usage
replaces the reservation.  A call can cost more than was reserved (a long
thought): the cap is then passed by that difference on the calls in flight at
most, and later reservations of the run take the higher price.
``api.max_total_cost_usd`` caps the whole output directory, checked at every reservation against what every run has spent
(:func:`spent_in_directory`): a run's ledger holds what it paid and what it
has in flight (its batches still running included), so two runs sharing the
directory see each other's calls as they are made; the answers of runs
without a ledger (pruned after 14 days, the original tool) are summed once.
The ledgers of one directory share one lock, so the check and the
reservation are one step for every run.

The plan already asks for no more answers than the budget allows; the guard
catches retries and concurrent runs.  It fails closed: a ledger that exists
but cannot be read stops every paid call, with a message naming the file.
"""

from __future__ import annotations

import fcntl
import json
import os
from contextlib import contextmanager
from pathlib import Path

from . import layout
from .accounting import price_per_call
from .fileio import atomic_write_text, file_mode
from .providers.base import AttemptError

EMPTY = {"calls": 0, "billable": 0, "cost_usd": 0.0, "refused": 0}


class BudgetExceeded(AttemptError):
    def __init__(self, message: str):
        super().__init__(message, retryable=False, reason="BUDGET")


class LedgerUnreadable(AttemptError):
    def __init__(self, message: str):
        super().__init__(message, retryable=False, reason="LEDGER")


class Ledger:
    def __init__(
        self,
        path,
        *,
        max_calls=None,
        max_cost_usd=None,
        max_total_cost_usd=None,
        reserve_usd: float = 0.0,
        spent_outside=None,
        other_runs=None,
        lock_path=None,
    ):
        self.path = Path(path)
        self.lock_path = Path(lock_path) if lock_path is not None else self.path.with_suffix(".lock")
        self.max_calls = max_calls
        self.max_cost_usd = max_cost_usd
        self.max_total_cost_usd = max_total_cost_usd
        self.reserve_usd = float(reserve_usd)
        self.reserved_usd = self.reserve_usd  # what the last reservation of this process counted
        # USD of the answers of runs without a ledger: they do not change during a run (every paid
        # call reserves in a ledger first), so summed once per run, kept in the ledger
        self.spent_outside = spent_outside or (lambda: 0.0)
        # USD the directory's other runs have spent and hold in flight now: read at every reservation
        self.other_runs = other_runs or (lambda: 0.0)
        self._elsewhere_usd = 0.0

    @contextmanager
    def _locked(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, file_mode())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            state = self.read()
            if self.max_total_cost_usd is not None:
                if state.get("outside_usd") is None:
                    state["outside_usd"] = float(self.spent_outside())
                self._elsewhere_usd = state["outside_usd"] + float(self.other_runs())
            yield state
            atomic_write_text(self.path, json.dumps(state))
        finally:
            os.close(fd)

    def read(self) -> dict:
        """The ledger; zeros when it does not exist yet; LedgerUnreadable when damaged."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return dict(EMPTY)
        except OSError as exc:
            raise LedgerUnreadable(
                f"budget ledger {self.path} cannot be read ({exc.strerror}); "
                "no paid call is made without knowing what this run has spent"
            ) from None
        try:
            state = {**EMPTY, **json.loads(text)}
            state["calls"], state["cost_usd"] = int(state["calls"]), float(state["cost_usd"])
        except (ValueError, TypeError, AttributeError) as exc:
            raise LedgerUnreadable(
                f"budget ledger {self.path} is damaged ({exc}); "
                "no paid call is made without knowing what this run has spent"
            ) from None
        return state

    def _refusal(self, state: dict, n: int, unit_usd: float) -> str:
        if self.max_calls is not None and state["calls"] + n > self.max_calls:
            return f"budget reached: {state['calls']} paid calls of api.max_calls={self.max_calls} in this run"
        cost = state["cost_usd"] + n * unit_usd
        if self.max_cost_usd is not None and cost > self.max_cost_usd + 1e-9:
            return (
                f"budget reached: ${state['cost_usd']:.2f} estimated in this run; one more call "
                f"(${unit_usd:.4f}) would pass api.max_cost_usd=${self.max_cost_usd:.2f}"
            )
        before = self._elsewhere_usd
        if self.max_total_cost_usd is not None and before + cost > self.max_total_cost_usd + 1e-9:
            return (
                f"budget reached: ${before + state['cost_usd']:.2f} spent in this output directory; "
                f"one more call (${unit_usd:.4f}) would pass api.max_total_cost_usd=${self.max_total_cost_usd:.2f}"
            )
        return ""

    def reserve(self) -> float:
        """Count one paid call, or raise BudgetExceeded without counting it; the USD reserved: the
        planning price, or the most a call of this run has cost when that is more."""
        with self._locked() as state:
            unit = max(self.reserve_usd, float(state.get("unit_usd", 0.0)))
            refusal = self._refusal(state, 1, unit)
            if refusal:
                state["refused"] += 1
            else:
                state["calls"] += 1
                state["cost_usd"] += unit
                self.reserved_usd = unit
        if refusal:
            raise BudgetExceeded(refusal)
        return unit

    def reserve_up_to(self, n: int, unit_usd: float) -> int:
        """Count up to ``n`` paid answers at ``unit_usd`` each (a batch chunk); how many fit."""
        with self._locked() as state:
            k = int(n)
            while k > 0 and self._refusal(state, k, unit_usd):
                k -= 1
            state["refused"] += n - k
            state["calls"] += k
            state["cost_usd"] += k * unit_usd
        return k

    def release(self, n: int, unit_usd: float) -> None:
        """Give back ``n`` reserved calls that were not made."""
        with self._locked() as state:
            state["calls"] = max(0, state["calls"] - int(n))
            state["cost_usd"] = max(0.0, state["cost_usd"] - n * unit_usd)

    def settle_batch(self, reserved_usd: float, unpaid: int, paid_usd: float) -> None:
        """A batch's reservation (``reserved_usd`` for all its lines) becomes what it billed
        (``paid_usd``); its ``unpaid`` lines (failed, or the whole batch expired) give their calls back."""
        with self._locked() as state:
            state["calls"] = max(0, state["calls"] - int(unpaid))
            state["cost_usd"] = max(0.0, state["cost_usd"] - float(reserved_usd) + float(paid_usd))

    def settle(self, actual_usd: float | None, billable: bool = True) -> None:
        """Replace the reservation of the call just made (:meth:`reserve`) by its estimated cost,
        which later reservations of the run take as their price when it is more. A call the service
        does not bill (an HTTP error, a refused connection) gives its reservation back:
        ``api.max_calls`` counts paid calls, so an overloaded service does not use up a run's budget."""
        if not billable:
            self.release(1, self.reserved_usd)
            return
        with self._locked() as state:
            state["billable"] += 1
            if actual_usd is not None:
                state["cost_usd"] = max(0.0, state["cost_usd"] + float(actual_usd) - self.reserved_usd)
                state["unit_usd"] = max(float(state.get("unit_usd", 0.0)), float(actual_usd))


def for_config(cfg: dict) -> Ledger:
    """This run's ledger with the config's limits."""
    from . import config as config_mod
    from . import runs

    out = config_mod.output_dir(cfg)
    api = cfg["api"]
    run_id = runs.current()

    return Ledger(
        runs_ledger(out, run_id),
        max_calls=api.get("max_calls"),
        max_cost_usd=api.get("max_cost_usd"),
        max_total_cost_usd=api.get("max_total_cost_usd"),
        reserve_usd=price_per_call(cfg, batch=False),
        spent_outside=lambda: _answers_outside(out, _ledgers(out), exclude_run=run_id),
        other_runs=lambda: sum(_ledger_usd(p) for rid, p in _ledgers(out).items() if rid != run_id),
        lock_path=layout.pipeline_dir(out) / "ledger.lock",
    )


def settle_batch(output_dir, run_id: str, reserved_usd: float, unpaid: int, paid_usd: float) -> None:
    """Settle a closed batch in the ledger of the run that submitted (and reserved) it, whichever
    run collects it. No ledger (pruned): that run's answers are counted from the answer files."""
    path = runs_ledger(output_dir, run_id)
    if path.is_file():
        Ledger(path, lock_path=layout.pipeline_dir(output_dir) / "ledger.lock").settle_batch(
            reserved_usd, unpaid, paid_usd
        )


def runs_ledger(output_dir, run_id: str) -> Path:
    return layout.run_dir(output_dir, run_id) / "ledger.json"


def spent_in_directory(output_dir) -> float:
    """USD spent in the output directory, over every run: each run's ledger (what it paid and
    holds in flight, batches still running included) plus the answers of runs without one."""
    ledgers = _ledgers(output_dir)
    return _answers_outside(output_dir, ledgers) + sum(_ledger_usd(p) for p in ledgers.values())


def _ledgers(output_dir) -> dict:
    """run id -> ledger path, of every run of the directory that reserved a paid call."""
    try:
        entries = list(os.scandir(layout.pipeline_dir(output_dir) / "runs"))
    except FileNotFoundError:
        return {}
    found = {}
    for entry in entries:
        path = runs_ledger(output_dir, entry.name)
        if entry.is_dir() and path.is_file():
            found[entry.name] = path
    return found


def _ledger_usd(path: Path) -> float:
    return Ledger(path).read()["cost_usd"]  # a damaged one stops the paid calls (fails closed)


def _answers_outside(output_dir, ledgers: dict, exclude_run: str | None = None) -> float:
    from . import answers

    return sum(
        answers.spent_usd(a)
        for a in answers.iter_all(output_dir)
        if a.run_id not in ledgers and a.run_id != exclude_run
    )
