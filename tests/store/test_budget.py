"""The failure budget in the store: the lockout model, atomic across threads and processes."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading

import pytest

from ucgate.policy.lockout import BudgetConfig, BudgetDecision, FailureBudget, Outcome, Reservation
from ucgate.store.budget import StoreBudget

CFG = BudgetConfig(user_failures=5, ip_failures=20, window=900)
T0 = 1_780_000_000.0  # a real epoch time: nothing about the model may assume a clock at 0


@pytest.fixture
def budget(repo):
    return StoreBudget(repo.engine, CFG)


def test_reserve_fits_the_limit_then_refuses_with_retry_after(budget):
    for i in range(5):
        r = budget.reserve("g:1", "198.51.100.1", T0 + i)
        assert isinstance(r, Reservation) and not r.familiar and r.charged_ip
        budget.settle(r, Outcome.FAILURE, T0 + i)
    d = budget.reserve("g:1", "198.51.100.2", T0 + 5)
    assert isinstance(d, BudgetDecision) and d.reason == "user-throttled"
    # five units charged one second apart, draining 1/180 per second: at T0+5 the level is
    # 5 - 5/180; one more fits once it is <= 4, i.e. 180 - 5 seconds later
    assert d.retry_after == pytest.approx(175, abs=0.01)
    assert isinstance(budget.reserve("g:1", "198.51.100.2", T0 + 5 + 175.01), Reservation)


def test_ip_bucket_throttles_a_sprayer_and_rolls_back_the_account_charge(budget):
    for i in range(20):
        r = budget.reserve(f"g:{i}", "203.0.113.9", T0)
        assert isinstance(r, Reservation)
    d = budget.reserve("g:victim", "203.0.113.9", T0)
    assert d == BudgetDecision(False, "ip-throttled", d.retry_after) and d.retry_after > 0
    # the refused attempt did not charge the victim's account
    for i in range(5):
        assert isinstance(budget.reserve("g:victim", f"192.0.2.{i}", T0), Reservation)


def test_success_refunds_resets_and_makes_the_ip_familiar(budget):
    for _ in range(4):
        budget.settle(budget.reserve("g:2", "192.0.2.7", T0), Outcome.FAILURE, T0)
    r = budget.reserve("g:2", "192.0.2.7", T0 + 1)
    budget.settle(r, Outcome.SUCCESS, T0 + 1)
    assert budget.familiar("g:2", "192.0.2.7", T0 + 2)
    assert not budget.familiar("g:2", "192.0.2.8", T0 + 2)
    # a sprayer fills the unfamiliar bucket; the user at the familiar IP still gets in
    for _ in range(5):
        budget.settle(budget.reserve("g:2", "203.0.113.1", T0 + 3), Outcome.FAILURE, T0 + 3)
    assert budget.reserve("g:2", "203.0.113.1", T0 + 3).reason == "user-throttled"
    r = budget.reserve("g:2", "192.0.2.7", T0 + 4)
    assert isinstance(r, Reservation) and r.familiar and not r.charged_ip


def test_not_a_guess_gives_both_units_back(budget):
    for _ in range(10):
        budget.settle(budget.reserve("g:3", "192.0.2.1", T0), Outcome.NOT_A_GUESS, T0)
    assert budget.check("g:3", "192.0.2.1", T0).allowed
    for _ in range(5):
        assert isinstance(budget.reserve("g:3", "192.0.2.1", T0), Reservation)


def test_familiar_ips_survive_a_restart(store_url):
    from ucgate.store import open_repository

    repo = open_repository(store_url)
    b = StoreBudget(repo.engine, CFG)
    b.settle(b.reserve("g:4", "192.0.2.50", T0), Outcome.SUCCESS, T0)
    repo.close()
    repo = open_repository(store_url)
    try:
        assert StoreBudget(repo.engine, CFG).familiar("g:4", "192.0.2.50", T0 + 86400)
        assert not StoreBudget(repo.engine, CFG).familiar("g:4", "192.0.2.50", T0 + 31 * 86400)
    finally:
        repo.close()


def test_store_budget_agrees_with_the_in_memory_model(budget):
    mem = FailureBudget(CFG)
    script = (
        [("a", "192.0.2.1", Outcome.FAILURE)] * 3
        + [("a", "192.0.2.1", Outcome.SUCCESS)]
        + [("a", "203.0.113.5", Outcome.FAILURE)] * 6
        + [("b", "203.0.113.5", Outcome.FAILURE)] * 16
        + [("a", "192.0.2.1", Outcome.FAILURE)] * 6
        + [("c", "203.0.113.5", Outcome.NOT_A_GUESS)] * 3
    )
    for i, (acct, ip, outcome) in enumerate(script):
        now = T0 + i * 7.5
        got, want = budget.reserve(acct, ip, now), mem.reserve(acct, ip, now)
        assert type(got) is type(want), (i, got, want)
        if isinstance(want, BudgetDecision):
            assert got.reason == want.reason and got.retry_after == pytest.approx(want.retry_after, abs=1e-3)
        else:
            assert got == want
            budget.settle(got, outcome, now)
            mem.settle(want, outcome, now)


def test_prune_deletes_only_drained_buckets(budget):
    budget.reserve("g:old", "192.0.2.1", T0)
    budget.reserve("g:new", "192.0.2.2", T0 + 2000)
    assert budget.prune(T0 + 2000) == 2  # g:old's account and IP buckets
    assert budget.sizes()["buckets"] == 2


def test_concurrent_threads_never_overspend(budget):
    got: list[object] = []
    barrier = threading.Barrier(12)

    def attempt(i: int) -> None:
        barrier.wait()
        got.append(budget.reserve("g:race", f"198.51.100.{i}", T0))

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(isinstance(g, Reservation) for g in got) == CFG.user_failures


_CHILD = textwrap.dedent("""
    import sys, threading
    from ucgate.store import open_repository
    from ucgate.store.budget import StoreBudget
    from ucgate.policy.lockout import BudgetConfig, Reservation
    repo = open_repository(sys.argv[1], migrate_schema=False)
    b = StoreBudget(repo.engine, BudgetConfig(user_failures=5, ip_failures=20, window=900))
    out = []
    def go(i):
        out.append(isinstance(b.reserve("g:two-processes", f"10.9.{sys.argv[2]}.{i}", 1780000000.0), Reservation))
    ts = [threading.Thread(target=go, args=(i,)) for i in range(8)]
    print("ready", flush=True); sys.stdin.readline()
    [t.start() for t in ts]; [t.join() for t in ts]
    print(sum(out), flush=True)
""")


def test_two_processes_share_one_budget(repo, store_url):
    """Two processes, eight threads each, released together: five units in all, not ten."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CHILD, store_url, str(n)], text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        for n in (1, 2)
    ]
    for p in procs:
        assert p.stdout.readline().strip() == "ready"
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    counts = [int(p.stdout.readline()) for p in procs]
    for p in procs:
        p.wait(timeout=30)
    assert sum(counts) == CFG.user_failures, counts
