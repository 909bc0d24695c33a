"""``StoreBudget.attempt``: reserve, check and settle in one transaction give the same results
as the two calls (the model's script, throttling, the IP rollback), never run the check when
the unit does not fit, and keep the unit charged when the check raises."""

from __future__ import annotations

import threading

import pytest

from ucgate.policy.lockout import BudgetConfig, BudgetDecision, FailureBudget, Outcome, Reservation
from ucgate.store.budget import StoreBudget

from .test_budget import CFG, T0


@pytest.fixture
def budget(repo):
    return StoreBudget(repo.engine, CFG)


def test_attempt_agrees_with_the_in_memory_model(budget):
    mem = FailureBudget(CFG)
    script = (
        [("a", "192.0.2.1", Outcome.FAILURE)] * 3
        + [("a", "192.0.2.1", Outcome.SUCCESS)]
        + [("a", "203.0.113.5", Outcome.FAILURE)] * 6
        + [("b", "203.0.113.5", Outcome.FAILURE)] * 16
        + [("a", "192.0.2.1", Outcome.FAILURE)] * 6
        + [("c", "203.0.113.5", Outcome.NOT_A_GUESS)] * 3
        + [("a", "192.0.2.1", Outcome.SUCCESS), ("d", "198.51.100.3", Outcome.SUCCESS)]
    )
    for i, (acct, ip, outcome) in enumerate(script):
        now = T0 + i * 7.5
        ran = []
        got = budget.attempt(acct, ip, now, lambda: ran.append(1) or outcome)  # noqa: B023 - called in this iteration
        want = mem.reserve(acct, ip, now)
        assert type(got) is type(want), (i, got, want)
        if isinstance(want, BudgetDecision):
            assert not ran, "the check ran although the unit did not fit"
            assert got.reason == want.reason and got.retry_after == pytest.approx(want.retry_after, abs=1e-3)
        else:
            assert ran == [1] and got == want
            mem.settle(want, outcome, now)
        assert budget.familiar(acct, ip, now) == mem.familiar(acct, ip, now), i


def test_a_refused_attempt_rolls_the_account_charge_back(budget):
    for i in range(20):
        assert isinstance(budget.attempt(f"g:{i}", "203.0.113.9", T0, lambda: Outcome.FAILURE), Reservation)
    d = budget.attempt("g:victim", "203.0.113.9", T0, lambda: pytest.fail("checked"))
    assert isinstance(d, BudgetDecision) and d.reason == "ip-throttled"
    for i in range(5):  # the victim's account was not charged by the refusal
        assert isinstance(budget.reserve("g:victim", f"192.0.2.{i}", T0), Reservation)


def test_a_check_that_raises_keeps_the_unit_and_reraises(budget):
    class Boom(Exception):
        pass

    def check():
        raise Boom

    for i in range(5):
        with pytest.raises(Boom):
            budget.attempt("g:7", "198.51.100.7", T0 + i, check)
    d = budget.reserve("g:7", "198.51.100.8", T0 + 5)
    assert isinstance(d, BudgetDecision) and d.reason == "user-throttled"  # five failures kept


def test_concurrent_attempts_never_overspend(repo):
    b = StoreBudget(repo.engine, BudgetConfig(user_failures=5, ip_failures=20, window=900))
    results: list[object] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        for j in range(5):
            r = b.attempt("g:shared", f"192.0.2.{n * 5 + j}", T0, lambda: Outcome.FAILURE)
            with lock:
                results.append(r)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(isinstance(r, Reservation) for r in results) == 5  # the account's limit, exactly
