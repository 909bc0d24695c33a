"""``StoreBudget.attempt`` on SQLite reads its rows once under the write lock and writes only what
the outcome changes (``_attempt_locked``). Held to the conditional-upsert path it replaces
(``one_read = False``, what PostgreSQL runs): for generated scripts of attempts — accounts, IPs,
outcomes, a check that raises, clocks that jump forward past the window and the familiar time
and back (another process's clock) — the same answers, the same checks run, and the same rows,
float for float."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from ucgate.policy.lockout import BudgetConfig, BudgetDecision, Outcome
from ucgate.store import open_repository
from ucgate.store.budget import StoreBudget

CFG = BudgetConfig(user_failures=3, ip_failures=5, window=60, familiar_for=300, max_familiar_per_user=2)
T0 = 1_780_000_000.0


class Boom(Exception):
    pass


@pytest.fixture
def twins(tmp_path):
    made = []
    for name, one_read in (("locked", True), ("upserts", False)):
        repo = open_repository(f"sqlite:///{tmp_path / name}.db")
        b = StoreBudget(repo.engine, CFG)
        b.one_read = one_read
        made.append((repo, b))
    yield made
    for repo, b in made:
        b.close()
        repo.close()


def rows(budget: StoreBudget) -> tuple:
    with budget.engine.connect() as c:
        buckets = c.execute(text("SELECT bucket, level, at FROM budget_buckets ORDER BY bucket")).all()
        familiar = c.execute(text("SELECT account, ip, at FROM familiar_ips ORDER BY account, ip")).all()
    return [tuple(r) for r in buckets], [tuple(r) for r in familiar]


def clear(budget: StoreBudget) -> None:
    with budget.engine.begin() as c:
        c.execute(text("DELETE FROM budget_buckets"))
        c.execute(text("DELETE FROM familiar_ips"))


STEP = st.tuples(
    st.sampled_from(["g:a", "g:b", "n:c"]),
    st.sampled_from(["192.0.2.1", "192.0.2.2", "198.51.100.7", "2001:db8::1", "2001:db8::2"]),
    st.sampled_from(["success", "failure", "not-a-guess", "raises"]),
    st.sampled_from([0.0, 0.5, 3.0, 20.0, 60.0, 61.0, 300.0, 301.0, -2.0]),  # seconds since the last attempt
)


@settings(max_examples=120, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(script=st.lists(STEP, min_size=1, max_size=30))
def test_one_read_under_the_lock_is_the_upserts(twins, script):
    run(twins, script)


@pytest.mark.parametrize(
    "script",
    [
        # familiar for exactly familiar_for seconds, then no longer
        [("g:a", "192.0.2.1", "success", 0.0), ("g:a", "192.0.2.1", "failure", 300.0)],
        [("g:a", "192.0.2.1", "success", 0.0), ("g:a", "192.0.2.1", "failure", 300.5)],
        # a full bucket drains to exactly one free unit after window / limit seconds
        [("g:a", "192.0.2.1", "failure", 0.0)] * 3 + [("g:a", "192.0.2.1", "failure", 20.0)],
        [("g:a", "192.0.2.1", "failure", 0.0)] * 3 + [("g:a", "192.0.2.1", "failure", 19.5)],
        # the IP's budget, over accounts
        [(f"n:{i}", "198.51.100.7", "failure", 0.0) for i in range(6)] + [("g:b", "198.51.100.7", "success", 0.0)],
    ],
)
def test_boundaries(twins, script):
    run(twins, script)


def run(twins, script) -> None:
    (_, locked), (_, upserts) = twins
    for b in (locked, upserts):
        clear(b)
    now = T0
    for i, (account, ip, what, dt) in enumerate(script):
        now += dt
        answers = []
        for b in (locked, upserts):
            ran: list[int] = []

            def check(ran=ran, what=what) -> Outcome:
                ran.append(1)
                if what == "raises":
                    raise Boom
                return {"success": Outcome.SUCCESS, "failure": Outcome.FAILURE}.get(what, Outcome.NOT_A_GUESS)

            try:
                got = b.attempt(account, ip, now, check)
            except Boom:
                got = "raised"
            answers.append((got, ran))
        (a, ran_a), (u, ran_u) = answers
        assert ran_a == ran_u, (i, a, u)
        assert type(a) is type(u), (i, a, u)
        if isinstance(a, BudgetDecision):
            assert (a.allowed, a.reason) == (u.allowed, u.reason) and a.retry_after == u.retry_after, i
        else:
            assert a == u, i
        assert rows(locked) == rows(upserts), (i, script[: i + 1])


def _statements(b: StoreBudget, now: float) -> list[str]:
    seen: list[str] = []
    real = b._run

    def counting(cur, sql, params):
        seen.append(sql.split()[0].upper())
        real(cur, sql, params)

    b._run = counting  # type: ignore[method-assign]
    try:
        b.attempt("g:a", "192.0.2.1", now, lambda: Outcome.SUCCESS)
    finally:
        del b._run
    return seen


def test_the_steady_success_writes_nothing(twins):
    """A familiar IP's success on an account without failures: BEGIN, the read, COMMIT — the
    familiar time is rewritten only once it is ``familiar_refresh`` old (then four statements;
    the upserts' path runs six, its familiar upsert a no-op while the time is fresh)."""
    (_, locked), (_, upserts) = twins
    for b in (locked, upserts):
        assert b.attempt("g:a", "192.0.2.1", T0, lambda: Outcome.SUCCESS) is not None  # makes the IP familiar
    fresh = T0 + CFG.familiar_refresh - 1
    assert _statements(locked, fresh) == ["BEGIN", "SELECT", "COMMIT"]
    assert _statements(upserts, fresh) == ["BEGIN", "SELECT", "INSERT", "DELETE", "INSERT", "COMMIT"]
    assert rows(locked) == rows(upserts)
    assert rows(locked)[1] == [("g:a", "192.0.2.1", T0)]  # the time stays that of the first success
    old = T0 + CFG.familiar_refresh
    assert _statements(locked, old) == ["BEGIN", "SELECT", "INSERT", "COMMIT"]
    assert _statements(upserts, old) == ["BEGIN", "SELECT", "INSERT", "DELETE", "INSERT", "COMMIT"]
    assert rows(locked) == rows(upserts)
    assert rows(locked)[1] == [("g:a", "192.0.2.1", old)]


def test_connections_are_kept_between_transactions(twins):
    (_, locked), _ = twins
    locked.attempt("g:a", "192.0.2.1", T0, lambda: Outcome.SUCCESS)
    assert len(locked._idle) == 1
    kept = locked._idle[0]
    locked.attempt("g:a", "192.0.2.1", T0 + 1, lambda: Outcome.FAILURE)
    assert locked._idle == [kept]  # the same driver connection, not a pool checkout

    class Down(Exception):
        pass

    def broken(cur, sql, params):
        raise Down

    locked._run = broken  # type: ignore[method-assign]
    with pytest.raises(Down):
        locked.attempt("g:a", "192.0.2.1", T0 + 2, lambda: Outcome.FAILURE)
    assert locked._idle == []  # a failed transaction's connection goes back to the pool
