"""The budget ledger: exact caps under parallel reservation from many processes."""

import multiprocessing as mp

import pytest

from nano_banana_aug.budget import BudgetExceeded, Ledger


def _worker(directory, n, q):
    ledger = Ledger(directory, "run1", max_calls=37)
    ok = 0
    for _ in range(n):
        try:
            ledger.reserve()
            ok += 1
        except BudgetExceeded:
            pass
    q.put(ok)


def test_max_calls_exact_across_processes(tmp_path):
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(tmp_path, 20, q)) for _ in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    assert sum(q.get() for _ in procs) == 37
    state = Ledger(tmp_path, "run1").read()
    assert state["calls"] == 37 and state["refused"] == 6 * 20 - 37


def test_cost_cap_reserves_then_settles(tmp_path):
    ledger = Ledger(tmp_path, "r", max_cost_usd=0.30, reserve_usd=0.1345)
    ledger.reserve()
    ledger.settle(0.1355)
    ledger.reserve()
    ledger.settle(0.1355)
    with pytest.raises(BudgetExceeded, match=r"budget reached: \$0.27 estimated of api.max_cost_usd=\$0.30"):
        ledger.reserve()
    assert ledger.read()["cost_usd"] == pytest.approx(0.271)


def test_runs_have_separate_ledgers(tmp_path):
    Ledger(tmp_path, "a", max_calls=1).reserve()
    Ledger(tmp_path, "b", max_calls=1).reserve()
    with pytest.raises(BudgetExceeded):
        Ledger(tmp_path, "a", max_calls=1).reserve()
