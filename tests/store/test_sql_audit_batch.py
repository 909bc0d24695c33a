"""The sign-in writer's audit batch on SQLite goes through the driver (``SqlRepository.
_insert_audit_sqlite``): the rows it writes are the ones SQLAlchemy's insert writes — the same
text in every column, read back as the same records — and the ids it returns are the rows'."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from ucgate.store import AuditRecord, open_repository
from ucgate.store.sql import _AUDIT_INSERT

TEXT = st.one_of(st.none(), st.text(max_size=40))
DETAILS = st.one_of(
    st.none(),
    st.dictionaries(
        st.text(max_size=10),
        st.recursive(
            st.one_of(st.none(), st.booleans(), st.integers(-(2**40), 2**40), st.text(max_size=20)),
            lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
            max_leaves=6,
        ),
        max_size=4,
    ),
)
WHEN = st.datetimes(
    min_value=dt.datetime(2000, 1, 1),
    max_value=dt.datetime(2100, 1, 1),
    timezones=st.sampled_from([dt.UTC, dt.timezone(dt.timedelta(hours=-5))]),
)
EVENT = st.builds(
    AuditRecord,
    id=st.none(),
    at=WHEN,
    actor=st.text(min_size=1, max_size=30),
    action=st.sampled_from(["sign-in", "asp-revoke"]),
    result=st.sampled_from(["allow", "deny"]),
    username=TEXT,
    device=TEXT,
    service=TEXT,
    client_address=TEXT,
    reason=TEXT,
    details=DETAILS,
)


@pytest.fixture
def two(tmp_path):
    a = open_repository(f"sqlite:///{tmp_path / 'driver.db'}")
    b = open_repository(f"sqlite:///{tmp_path / 'sqlalchemy.db'}")
    yield a, b
    a.close()
    b.close()


def _raw(repo) -> list[tuple]:
    with repo.engine.connect() as c:
        return [tuple(r) for r in c.execute(text("SELECT * FROM audit ORDER BY id"))]


def _clear(repo) -> None:
    with repo.engine.begin() as c:
        c.execute(text("DELETE FROM audit"))


def _sqlalchemy_batch(repo, events) -> list[int]:
    with repo._write() as c:
        rows = c.execute(_AUDIT_INSERT, [{k: getattr(ev, k) for k in _columns()} for ev in events])
        return [r[0] for r in rows]


def _columns() -> tuple[str, ...]:
    from ucgate.store.sql import _AUDIT_COLUMNS

    return _AUDIT_COLUMNS


@settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=st.lists(st.lists(EVENT, min_size=1, max_size=6), min_size=1, max_size=3))
def test_the_driver_batch_writes_what_sqlalchemy_writes(two, batches):
    driver, alchemy = two
    for repo in two:
        _clear(repo)
    for events in batches:
        ids = driver.write_batch(events, [])
        want = _sqlalchemy_batch(alchemy, events)
        assert ids == want  # both files had the same rows before: the same ids, in order
    assert _raw(driver) == _raw(alchemy)
    assert driver.tail_audit(100) == alchemy.tail_audit(100)


def test_a_naive_time_is_refused_and_nothing_is_written(two):
    driver, _ = two
    _clear(driver)
    ok = AuditRecord(None, dt.datetime(2026, 1, 1, tzinfo=dt.UTC), "a", "sign-in", "allow")
    naive = AuditRecord(None, dt.datetime(2026, 1, 1), "a", "sign-in", "allow")
    with pytest.raises(ValueError, match="naive"):
        driver.write_batch([ok, naive], [])
    assert _raw(driver) == []  # the transaction was rolled back, the first row with it
