"""The repository contract, run identically on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from ucgate.store import AuditRecord, DuplicateError, NewAsp, NotFoundError, open_repository
from ucgate.store.engine import StoreError

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def add_alice(repo, **kw):
    args = dict(
        upn="alice@contoso.com", sip_uri="sip:alice@contoso.com", display_name="Alice", source="local", created_at=T0
    )
    args.update(kw)
    return repo.add_user("alice", **args)


def new_asp(user_id, asp_id="a1", **kw):
    args = dict(
        id=asp_id, user_id=user_id, label="phone", ciphertext=b"\x01ct", nonce=b"n" * 12, device_id=None, created_at=T0
    )
    args.update(kw)
    return NewAsp(**args)


def test_user_round_trip(repo):
    u = add_alice(repo)
    assert u.id > 0 and u.enabled and u.source == "local"
    got = repo.get_user("alice")
    assert got == u
    assert got.created_at == T0 and got.created_at.tzinfo is not None
    assert repo.get_user_by_id(u.id) == u
    assert repo.get_user_by_upn("alice@contoso.com") == u
    assert repo.get_user("bob") is None


def test_duplicate_user_and_upn(repo):
    add_alice(repo)
    with pytest.raises(DuplicateError):
        add_alice(repo, upn=None)
    with pytest.raises(DuplicateError):
        repo.add_user("alice2", upn="alice@contoso.com", sip_uri=None, display_name=None, source="local", created_at=T0)


def test_bad_source_refused(repo):
    with pytest.raises(ValueError):
        add_alice(repo, source="ldap")


def test_list_and_enable(repo):
    repo.add_user("zoe", upn=None, sip_uri=None, display_name=None, source="directory", created_at=T0)
    add_alice(repo)
    assert [u.username for u in repo.list_users()] == ["alice", "zoe"]
    assert repo.set_user_enabled("alice", False)
    assert not repo.get_user("alice").enabled
    assert repo.set_user_enabled("alice", True)
    assert repo.get_user("alice").enabled
    assert not repo.set_user_enabled("nobody", False)


def test_asp_round_trip(repo):
    u = add_alice(repo)
    repo.add_asp(new_asp(u.id, "a1", device_id="DEV1"))
    repo.add_asp(new_asp(u.id, "a2", created_at=T0 + timedelta(seconds=1)))
    a1 = repo.get_asp("a1")
    assert a1.ciphertext == b"\x01ct" and a1.nonce == b"n" * 12 and a1.device_id == "DEV1"
    assert a1.active and a1.last_used_at is None
    assert [a.id for a in repo.list_asps(u.id)] == ["a1", "a2"]
    assert "ct" not in repr(a1)  # secrets (even encrypted) stay out of reprs and logs


def test_asp_needs_existing_user_and_unique_id(repo):
    u = add_alice(repo)
    with pytest.raises(NotFoundError):
        repo.add_asp(new_asp(u.id + 100))
    repo.add_asp(new_asp(u.id))
    with pytest.raises(DuplicateError):
        repo.add_asp(new_asp(u.id))


def test_revoke_is_idempotent_and_filters(repo):
    u = add_alice(repo)
    repo.add_asp(new_asp(u.id, "a1"))
    repo.add_asp(new_asp(u.id, "a2"))
    assert repo.revoke_asp("a1", T0 + timedelta(hours=1))
    assert repo.revoke_asp("a1", T0 + timedelta(hours=2))
    assert repo.get_asp("a1").revoked_at == T0 + timedelta(hours=1)
    assert not repo.revoke_asp("nope", T0)
    assert [a.id for a in repo.list_asps(u.id, include_revoked=False)] == ["a2"]
    assert len(repo.list_asps(u.id)) == 2


def test_mark_used_and_replace_ciphertext(repo):
    u = add_alice(repo)
    repo.add_asp(new_asp(u.id))
    assert repo.mark_asp_used("a1", T0 + timedelta(minutes=5))
    assert repo.get_asp("a1").last_used_at == T0 + timedelta(minutes=5)
    assert not repo.mark_asp_used("zz", T0)
    assert repo.replace_asp_ciphertext("a1", b"\x01new", b"m" * 12)
    assert repo.get_asp("a1").ciphertext == b"\x01new"
    assert repo.all_asp_ids() == ["a1"]


def test_naive_datetimes_are_refused(repo):
    with pytest.raises(Exception, match="naive"):
        add_alice(repo, created_at=datetime(2025, 1, 1))


def test_audit_append_and_tail(repo):
    for i in range(5):
        repo.add_audit(
            AuditRecord(
                id=None,
                at=T0 + timedelta(seconds=i),
                actor="gateway",
                action="signin",
                result="ok" if i % 2 else "fail",
                username="alice",
                device="DEV",
                service="eas",
                client_address="192.0.2.1",
                reason=None,
                details={"i": i, "nested": {"k": [1, 2]}},
            )
        )
    tail = repo.tail_audit(3)
    assert [e.details["i"] for e in tail] == [2, 3, 4]
    assert tail[0].details["nested"] == {"k": [1, 2]}
    assert tail[-1].at == T0 + timedelta(seconds=4)
    assert repo.tail_audit(0) == []
    assert len(repo.tail_audit(100)) == 5


def test_deleting_user_cascades_to_asps(repo):
    u = add_alice(repo)
    repo.add_asp(new_asp(u.id))
    with repo.engine.begin() as c:
        c.execute(text("DELETE FROM users WHERE id = :i"), {"i": u.id})
    assert repo.get_asp("a1") is None


def test_concurrent_writers(repo):
    """Threads writing at once (asyncio.to_thread callers) all succeed: no 'database is locked'."""
    u = add_alice(repo)
    errors = []

    def work(k):
        try:
            for i in range(20):
                repo.add_asp(new_asp(u.id, f"t{k}-{i}"))
                repo.mark_asp_used(f"t{k}-{i}", T0)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(repo.list_asps(u.id)) == 120


def test_reopen_keeps_data(store_url):
    r = open_repository(store_url)
    add_alice(r)
    r.close()
    r = open_repository(store_url, migrate_schema=False)
    assert r.get_user("alice") is not None
    r.close()


def test_unmigrated_database_is_refused_with_advice(store_url):
    with pytest.raises(StoreError, match="ucgate db upgrade"):
        open_repository(store_url, migrate_schema=False)
