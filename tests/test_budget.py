"""The budget ledger: exact caps under parallel reservation from many processes; fails closed."""

import multiprocessing as mp

import pytest

from nano_banana_aug.budget import BudgetExceeded, Ledger, LedgerUnreadable


def _worker(path, n, q):
    ledger = Ledger(path, max_calls=37)
    ok = 0
    try:
        for _ in range(n):
            try:
                ledger.reserve()
                ok += 1
            except BudgetExceeded:
                pass
    finally:
        q.put(ok)


def test_max_calls_exact_across_processes(tmp_path):
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    path = tmp_path / "run1" / "ledger.json"
    procs = [ctx.Process(target=_worker, args=(path, 20, q)) for _ in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert sum(q.get(timeout=10) for _ in procs) == 37
    state = Ledger(path).read()
    assert state["calls"] == 37 and state["refused"] == 6 * 20 - 37


def test_cost_cap_reserves_then_settles(tmp_path):
    ledger = Ledger(tmp_path / "r.json", max_cost_usd=0.30, reserve_usd=0.1345)
    ledger.reserve()
    ledger.settle(0.1355)
    ledger.reserve()
    ledger.settle(0.1355)
    with pytest.raises(
        BudgetExceeded,
        match=r"budget reached: \$0.27 estimated in this run; one more call \(\$0.1355\) would pass api.max_cost_usd=\$0.30",
    ):
        ledger.reserve()
    assert ledger.read()["cost_usd"] == pytest.approx(0.271)


def test_reservations_take_the_most_a_call_of_the_run_has_cost(tmp_path):
    """Defect: every reservation was at the planning price while a call can cost more (a 4K answer
    at ~$0.24, a long thought), so jobs reserving side by side passed the cap: three $0.24 calls
    under max_cost_usd=0.55. Now a reservation is at the most a settled call of the run has cost."""
    path = tmp_path / "ledger.json"
    first = Ledger(path, max_cost_usd=0.55, reserve_usd=0.1345)
    assert first.reserve() == 0.1345
    first.settle(0.24)
    b, c = (Ledger(path, max_cost_usd=0.55, reserve_usd=0.1345) for _ in range(2))  # two jobs, side by side
    assert b.reserve() == 0.24
    with pytest.raises(BudgetExceeded, match=r"one more call \(\$0.2400\) would pass api.max_cost_usd=\$0.55"):
        c.reserve()
    b.settle(0.24)
    assert first.read()["cost_usd"] == pytest.approx(0.48) and first.read()["calls"] == 2
    roomy = Ledger(path, max_cost_usd=1.0, reserve_usd=0.1345)
    assert roomy.reserve() == 0.24
    roomy.settle(None, billable=False)  # not billed: exactly what was reserved goes back
    assert first.read()["cost_usd"] == pytest.approx(0.48) and first.read()["calls"] == 2


def test_runs_have_separate_ledgers(tmp_path):
    Ledger(tmp_path / "a" / "ledger.json", max_calls=1).reserve()
    Ledger(tmp_path / "b" / "ledger.json", max_calls=1).reserve()
    with pytest.raises(BudgetExceeded):
        Ledger(tmp_path / "a" / "ledger.json", max_calls=1).reserve()


@pytest.mark.parametrize("content", ["{not json", "[]", '{"calls": "many"}'])
def test_damaged_ledger_refuses_every_call(tmp_path, content):
    path = tmp_path / "ledger.json"
    path.write_text(content)
    with pytest.raises(LedgerUnreadable, match=r"ledger.json is damaged.*no paid call is made"):
        Ledger(path, max_calls=100).reserve()
    with pytest.raises(LedgerUnreadable):  # also without a budget: the run must know what it spent
        Ledger(path).reserve()
    assert path.read_text() == content  # left for the user to look at


def test_missing_ledger_starts_at_zero(tmp_path):
    ledger = Ledger(tmp_path / "new" / "ledger.json", max_calls=1)
    assert ledger.read() == {"calls": 0, "billable": 0, "cost_usd": 0.0, "refused": 0}
    ledger.reserve()
    assert ledger.read()["calls"] == 1


def test_a_call_the_service_did_not_bill_gives_its_reservation_back(tmp_path):
    """api.max_calls and max_cost_usd count paid calls: a 503, a per-minute 429 or a refused
    connection (not billed) leaves the run's budget as it was."""
    ledger = Ledger(tmp_path / "r" / "ledger.json", max_calls=1, max_cost_usd=0.2, reserve_usd=0.1345)
    ledger.reserve()
    ledger.settle(None, billable=False)
    assert ledger.read() == {"calls": 0, "billable": 0, "cost_usd": 0.0, "refused": 0}
    ledger.reserve()
    ledger.settle(0.1355)
    assert ledger.read() == {
        "calls": 1,
        "billable": 1,
        "cost_usd": pytest.approx(0.1355),
        "refused": 0,
        "unit_usd": 0.1355,
    }
    with pytest.raises(BudgetExceeded, match=r"1 paid calls of api.max_calls=1"):
        ledger.reserve()
