"""``StoreBudget.attempt_now``: the attempt of an outcome known already, made on the event loop's
thread without ever waiting. Held to ``attempt`` (the worker thread's): for generated scripts of
outcomes the same answers and the same rows, float for float; and when another process holds
SQLite's write lock it answers None at once, charging nothing — except for the usual success
(a familiar IP, no failures on the account), which writes nothing and is read past the lock."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from tests.store.backends import postgres_database, postgres_url  # noqa: F401
from tests.store.test_budget_one_read import CFG, T0, clear, rows
from ucgate.policy.lockout import BudgetDecision, Outcome, Reservation
from ucgate.store import budget as budget_mod
from ucgate.store import open_repository
from ucgate.store.budget import StoreBudget

OUTCOMES = {"success": Outcome.SUCCESS, "failure": Outcome.FAILURE, "not-a-guess": Outcome.NOT_A_GUESS}


@pytest.fixture
def pair(tmp_path):
    """(now, thread): two budgets over two files, one answered by attempt_now, one by attempt."""
    made = []
    for name in ("now", "thread"):
        repo = open_repository(f"sqlite:///{tmp_path / name}.db")
        made.append((repo, StoreBudget(repo.engine, CFG)))
    yield made[0][1], made[1][1]
    for repo, b in made:
        b.close()
        repo.close()


@pytest.fixture
def one(tmp_path):
    path = tmp_path / "one.db"
    repo = open_repository(f"sqlite:///{path}")
    b = StoreBudget(repo.engine, CFG)
    yield b, path
    b.close()
    repo.close()


STEP = st.tuples(
    st.sampled_from(["g:a", "g:b", "n:c"]),
    st.sampled_from(["192.0.2.1", "192.0.2.2", "198.51.100.7", "2001:db8::1"]),
    st.sampled_from(["success", "success", "failure", "not-a-guess"]),
    st.sampled_from([0.0, 0.5, 3.0, 20.0, 59.0, 60.0, 61.0, 300.0, 301.0, -2.0]),
)


def run(now_b: StoreBudget, thread_b: StoreBudget, script) -> None:
    for b in (now_b, thread_b):
        clear(b)
        b._count = 0  # the examples share the fixture: no prune falls due within one script
    t = T0
    for i, (account, ip, what, dt) in enumerate(script):
        t += dt
        outcome = OUTCOMES[what]
        a = now_b.attempt_now(account, ip, t, outcome)
        b = thread_b.attempt(account, ip, t, lambda outcome=outcome: outcome)
        assert a is not None, (i, "attempt_now waited with nobody holding the lock")
        assert type(a) is type(b), (i, a, b)
        if isinstance(a, BudgetDecision):
            assert (a.allowed, a.reason, a.retry_after) == (b.allowed, b.reason, b.retry_after), i
        else:
            assert a == b, i
        assert rows(now_b) == rows(thread_b), (i, script[: i + 1])


@settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(script=st.lists(STEP, min_size=1, max_size=30))
def test_attempt_now_is_attempt(pair, script):
    run(*pair, script)


@pytest.mark.parametrize(
    "script",
    [
        # the familiar time: rewritten exactly when familiar_refresh old (the quiet read must not skip it)
        [("g:a", "192.0.2.1", "success", 0.0), ("g:a", "192.0.2.1", "success", CFG.familiar_refresh - 0.5)]
        + [("g:a", "192.0.2.1", "success", 0.5)],
        # familiar for exactly familiar_for seconds, then a stranger again (an IP unit charged)
        [("g:a", "192.0.2.1", "success", 0.0), ("g:a", "192.0.2.1", "success", 300.0)],
        [("g:a", "192.0.2.1", "success", 0.0), ("g:a", "192.0.2.1", "success", 300.5)],
        # a failure from a familiar IP: the next success must delete its row (not the quiet read)
        [("g:a", "192.0.2.1", "success", 0.0), ("g:a", "192.0.2.1", "failure", 1.0)]
        + [("g:a", "192.0.2.1", "success", 1.0)],
        # the account spent from a familiar IP: the right password is refused, nothing written
        [("g:a", "192.0.2.1", "success", 0.0)]
        + [("g:a", "192.0.2.1", "failure", 0.0)] * 3
        + [("g:a", "192.0.2.1", "success", 0.0)],
    ],
)
def test_boundaries(pair, script):
    run(*pair, script)


def test_a_spent_account_refuses_the_right_password(one):
    b, _ = one
    for _ in range(CFG.user_failures):
        assert isinstance(b.attempt_now("g:z", "192.0.2.9", T0, Outcome.FAILURE), Reservation)
    before = rows(b)
    got = b.attempt_now("g:z", "192.0.2.9", T0, Outcome.SUCCESS)
    assert isinstance(got, BudgetDecision) and (got.allowed, got.reason) == (False, "user-throttled")
    assert rows(b) == before


HOLD = """
import sqlite3, sys, time
c = sqlite3.connect(sys.argv[1], isolation_level=None)
c.execute("BEGIN IMMEDIATE")
print("held", flush=True)
sys.stdin.readline()
c.execute("ROLLBACK")
"""


def test_another_processs_write_lock_is_not_waited_for(one):
    """Another process holds the write lock (a second gateway's attempt, the audit writer's
    commit): a charge answers None at once — nothing written, the busy timeout (5 s) not
    waited — and the usual success still answers, from its one read."""
    b, path = one
    assert isinstance(b.attempt_now("g:q", "192.0.2.3", T0, Outcome.SUCCESS), Reservation)  # familiar now
    before = rows(b)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
        t = time.monotonic()
        assert b.attempt_now("g:q", "192.0.2.3", T0 + 1, Outcome.FAILURE) is None
        assert b.attempt_now("g:r", "192.0.2.3", T0 + 1, Outcome.SUCCESS) is None  # a stranger: writes
        assert time.monotonic() - t < 1.0, "attempt_now waited for the lock"
        quiet = b.attempt_now("g:q", "192.0.2.3", T0 + 2, Outcome.SUCCESS)
        assert quiet == Reservation("g:q", "192.0.2.3", True, False)
    finally:
        holder.communicate(b"\n", timeout=10)
    assert rows(b) == before
    # the lock is free again: the same connection charges (it was kept, rolled back)
    kept = b._now_raw
    assert isinstance(b.attempt_now("g:q", "192.0.2.3", T0 + 3, Outcome.FAILURE), Reservation)
    assert b._now_raw is kept and rows(b) != before


def test_its_connection_never_waits_and_never_reaches_the_pool(one):
    b, _ = one
    b.attempt_now("g:a", "192.0.2.1", T0, Outcome.FAILURE)
    cur = b._now_raw.cursor()
    assert cur.execute("PRAGMA busy_timeout").fetchone()[0] == 0
    assert cur.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    cur.close()
    b.attempt("g:a", "192.0.2.1", T0 + 1, lambda: Outcome.FAILURE)  # the worker thread's path
    for raw in b._idle:
        c = raw.cursor()
        assert c.execute("PRAGMA busy_timeout").fetchone()[0] > 0
        c.close()
    with b.engine.connect() as c:
        assert c.execute(text("PRAGMA busy_timeout")).scalar_one() > 0


def test_a_due_prune_is_left_to_the_worker_thread(one, monkeypatch):
    b, _ = one
    monkeypatch.setattr(budget_mod, "PRUNE_EVERY", 3)
    assert b.attempt_now("g:a", "192.0.2.1", T0, Outcome.FAILURE) is not None
    assert b.attempt_now("g:a", "192.0.2.1", T0, Outcome.FAILURE) is not None
    assert b.attempt_now("g:a", "192.0.2.1", T0, Outcome.FAILURE) is None  # the third prunes: a thread's
    b.attempt("g:a", "192.0.2.1", T0, lambda: Outcome.NOT_A_GUESS)
    assert b.attempt_now("g:a", "192.0.2.1", T0, Outcome.NOT_A_GUESS) is not None


def test_a_lost_connection_is_dropped_and_remade(one):
    b, _ = one
    b.attempt_now("g:a", "192.0.2.1", T0, Outcome.FAILURE)
    lost = b._now_raw
    lost.dbapi_connection.close()  # as if the file went away under it
    assert b.attempt_now("g:a", "192.0.2.1", T0, Outcome.FAILURE) is None
    assert b._now_raw is None
    assert isinstance(b.attempt_now("g:a", "192.0.2.1", T0, Outcome.FAILURE), Reservation)
    assert b._now_raw is not lost


def test_postgresql_waits_for_the_worker_thread(postgres_url):
    repo = open_repository(postgres_url)
    b = StoreBudget(repo.engine, CFG)
    try:
        assert b.attempt_now("g:a", "192.0.2.1", T0, Outcome.SUCCESS) is None
        assert rows(b) == ([], [])
    finally:
        b.close()
        repo.close()


RACE = """
import sys
from ucgate.policy.lockout import BudgetConfig, Outcome, Reservation
from ucgate.store import open_repository
from ucgate.store.budget import StoreBudget
repo = open_repository(sys.argv[1])
b = StoreBudget(repo.engine, BudgetConfig(user_failures=3, ip_failures=5, window=60, familiar_for=300,
                                          max_familiar_per_user=2))
print("ready", flush=True)
sys.stdin.readline()
n = sum(isinstance(b.attempt("g:x", "192.0.2.50", float(sys.argv[2]), lambda: Outcome.FAILURE), Reservation)
        for _ in range(30))
print(n, flush=True)
b.close()
repo.close()
"""


def test_failures_from_the_loop_threads_and_another_process_never_overspend(one):
    """Wrong guesses at once from another process (attempt, a worker thread's) and from four
    threads of this one (attempt_now, retried while it would wait): the account's charges stay
    within user_failures, whoever won the write lock."""
    import threading

    b, path = one
    other = subprocess.Popen(
        [sys.executable, "-c", RACE, f"sqlite:///{path}", repr(T0)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert other.stdout is not None and other.stdout.readline() == "ready\n"
    here: list[int] = []
    go = threading.Event()

    def guesses() -> None:
        go.wait()
        n = 0
        for _ in range(30):
            while (r := b.attempt_now("g:x", "192.0.2.50", T0, Outcome.FAILURE)) is None:
                time.sleep(0.001)
            n += isinstance(r, Reservation)
        here.append(n)

    threads = [threading.Thread(target=guesses) for _ in range(4)]
    for t in threads:
        t.start()
    assert other.stdin is not None
    other.stdin.write("\n")
    other.stdin.flush()
    go.set()
    for t in threads:
        t.join(30)
    there = int(other.communicate(timeout=30)[0].strip())
    assert sum(here) + there == CFG.user_failures, (here, there)
    buckets, _ = rows(b)
    assert [lvl for name, lvl, _ in buckets if name.startswith("u")] == [float(CFG.user_failures)]
