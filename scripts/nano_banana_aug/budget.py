"""The run's ledger of paid calls, and the budget guard.

Every paid attempt first *reserves* its place in the ledger of this run
(``{output_dir}/.pipeline/runs/<run id>/ledger.json``) under an exclusive
lock, so parallel jobs — also on other nodes of a shared filesystem — never
start more calls than ``api.max_calls`` or spend past ``api.max_cost_usd``.
A reservation counts one call at the planning price
(``pricing.image_usd_per_call``); after the call the estimate from the
reported usage replaces it.  When the budget is used up the job ends without
a call; its target is recorded as ``over_budget`` and the next run (with a new
budget) picks it up.  The ledger is kept without a budget too: the end-of-run
summary reports its counts.

It fails closed: a ledger that exists but cannot be read stops every paid
call (the run cannot know what it has spent), with a message naming the file.
"""

from __future__ import annotations

import fcntl
import json
import os
from contextlib import contextmanager
from pathlib import Path

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
    def __init__(self, path, *, max_calls=None, max_cost_usd=None, reserve_usd: float = 0.0):
        self.path = Path(path)
        self.lock_path = self.path.with_suffix(".lock")
        self.max_calls = max_calls
        self.max_cost_usd = max_cost_usd
        self.reserve_usd = float(reserve_usd)

    @contextmanager
    def _locked(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, file_mode())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            state = self.read()
            yield state
            atomic_write_text(self.path, json.dumps(state))
        finally:
            os.close(fd)

    def read(self) -> dict:
        """The ledger's counts; zeros when it does not exist yet; LedgerUnreadable when damaged."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return dict(EMPTY)
        except OSError as exc:
            raise LedgerUnreadable(f"budget ledger {self.path} cannot be read ({exc.strerror}); "
                                   "no paid call is made without knowing what this run has spent") from None
        try:
            state = json.loads(text)
            if not isinstance(state, dict):
                raise ValueError("not an object")
            state = {**EMPTY, **state}
            state["calls"], state["cost_usd"] = int(state["calls"]), float(state["cost_usd"])
        except (ValueError, TypeError) as exc:
            raise LedgerUnreadable(f"budget ledger {self.path} is damaged ({exc}); "
                                   "no paid call is made without knowing what this run has spent") from None
        return state

    def reserve(self) -> None:
        """Count one paid call, or raise BudgetExceeded without counting it."""
        refusal = ""
        with self._locked() as state:
            if self.max_calls is not None and state["calls"] >= self.max_calls:
                refusal = f"budget reached: {state['calls']} paid calls of api.max_calls={self.max_calls} in this run"
            elif self.max_cost_usd is not None and state["cost_usd"] + self.reserve_usd > self.max_cost_usd + 1e-12:
                refusal = (f"budget reached: ${state['cost_usd']:.2f} estimated of "
                           f"api.max_cost_usd=${self.max_cost_usd:.2f} in this run")
            if refusal:
                state["refused"] = state.get("refused", 0) + 1
            else:
                state["calls"] += 1
                state["cost_usd"] += self.reserve_usd
        if refusal:
            raise BudgetExceeded(refusal)

    def reserve_up_to(self, n: int, unit_usd: float) -> int:
        """Count up to ``n`` paid calls at ``unit_usd`` each (a batch chunk); how many fit the budget."""
        with self._locked() as state:
            k = int(n)
            if self.max_calls is not None:
                k = min(k, max(0, self.max_calls - state["calls"]))
            if self.max_cost_usd is not None and unit_usd > 0:
                k = min(k, max(0, int((self.max_cost_usd - state["cost_usd"] + 1e-9) // unit_usd)))
            state["calls"] += k
            state["cost_usd"] += k * unit_usd
            if k < n:
                state["refused"] = state.get("refused", 0) + (n - k)
        return k

    def release(self, n: int, unit_usd: float) -> None:
        """Give back ``n`` reserved calls that were not made."""
        with self._locked() as state:
            state["calls"] = max(0, state["calls"] - int(n))
            state["cost_usd"] = max(0.0, state["cost_usd"] - n * unit_usd)

    def adjust(self, delta_usd: float, billable: int = 0) -> None:
        """Correct the estimated cost (reservations replaced by what the answers report)."""
        with self._locked() as state:
            state["cost_usd"] = max(0.0, state["cost_usd"] + float(delta_usd))
            state["billable"] = state.get("billable", 0) + int(billable)

    def count(self, n: int, usd: float) -> None:
        """Calls paid outside this run's reservations (a batch submitted by an earlier run)."""
        with self._locked() as state:
            state["calls"] += int(n)
            state["billable"] = state.get("billable", 0) + int(n)
            state["cost_usd"] += float(usd)

    def settle(self, actual_usd: float | None, billable: bool = True) -> None:
        """Replace the reservation of one call by its estimated cost; count it as billable
        (an answer, also a refused one) or not (an HTTP error, a lost connection: made, not billed)."""
        with self._locked() as state:
            state["billable"] = state.get("billable", 0) + (1 if billable else 0)
            if actual_usd is not None:
                state["cost_usd"] += float(actual_usd) - self.reserve_usd
            elif not billable:
                state["cost_usd"] = max(0.0, state["cost_usd"] - self.reserve_usd)
