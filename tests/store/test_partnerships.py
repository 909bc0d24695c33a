"""The partnerships table and its store, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt

import pytest

from ucgate.policy.devices import PartnershipState
from ucgate.store import DuplicateError, PartnershipStore, migrate

T0 = dt.datetime(2025, 1, 1, 12, 0, tzinfo=dt.UTC)


@pytest.fixture
def store(repo):
    return PartnershipStore(repo.engine)


def _new(store, user="alice", device="ApplDEV1", **kw):
    values = dict(username=user, device_id=device, state="quarantined", client_kind="eas", created_at=T0, last_seen=T0)
    values.update(kw)
    return store.create(**values)


def test_create_get_case_insensitive_and_unique(store):
    p = _new(store, device_type="iPhone", user_agent="Apple-iPhone9C1/1402.100")
    assert p.device_id == "appldev1" and p.state == "quarantined"
    assert store.get("alice", "APPLDEV1") == p
    assert store.get("bob", "ApplDEV1") is None
    with pytest.raises(DuplicateError):
        _new(store, device="applDEV1")
    _new(store, user="bob")  # the same device id for another user is another partnership
    assert [r.username for r in store.list(username="bob")] == ["bob"]


def test_update_list_delete_and_policy_view(store):
    p = _new(store)
    until = T0 + dt.timedelta(hours=24)
    q = store.update(
        p.id,
        state=PartnershipState.ALLOWED,
        trusted_until=until,
        approved_by="cli:root",
        approved_at=T0,
        user_agent="x" * 2000,
    )
    assert q.state == "allowed" and q.trusted_until == until and len(q.user_agent) == 512
    assert [r.id for r in store.list(state="allowed")] == [p.id]
    assert store.list(state="blocked") == []
    view = q.to_policy()
    assert view.state is PartnershipState.ALLOWED and view.trusted_at(T0) and not view.wiped
    w = store.update(p.id, wipe_requested_at=T0)
    assert w.wipe_pending and w.to_policy().wiped
    assert store.update(9999, state="allowed") is None
    with pytest.raises(ValueError):
        store.update(p.id, state="maybe")
    assert store.delete(p.id) and not store.delete(p.id)
    assert store.get("alice", "ApplDEV1") is None


def test_state_check_constraint(store):
    from sqlalchemy import insert
    from sqlalchemy.exc import IntegrityError

    from ucgate.store.schema import partnerships

    with pytest.raises(IntegrityError), store.engine.begin() as c:
        c.execute(
            insert(partnerships).values(
                username="a", device_id="d", state="bogus", client_kind="eas", created_at=T0, last_seen=T0
            )
        )


def test_migration_0003_follows_0002(store_url):
    assert migrate.upgrade(store_url, "0002") == "0002"
    assert migrate.upgrade(store_url, "0003") == "0003"
    assert migrate.downgrade(store_url, "0002") == "0002"
