"""The TOTP part of the repository contract, run identically on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest

from ucgate.store import DuplicateError, NewOtpSecret, NotFoundError, migrate, open_repository

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def add_user(repo, name="alice"):
    return repo.add_user(name, upn=None, sip_uri=None, display_name=None, source="local", created_at=T0)


def pending(user_id, otp_id="e1"):
    return NewOtpSecret(id=otp_id, user_id=user_id, ciphertext=b"\x01sealed", nonce=b"n" * 12, created_at=T0)


def test_begin_get_confirm(repo):
    u = add_user(repo)
    assert repo.get_otp(u.id) is None
    repo.begin_otp(pending(u.id))
    rec = repo.get_otp(u.id)
    assert rec.id == "e1" and not rec.active and rec.last_step is None
    assert rec.ciphertext == b"\x01sealed" and "sealed" not in repr(rec)
    assert repo.confirm_otp(u.id, "e1", 100, T0, [b"h1", b"h2"])
    rec = repo.get_otp(u.id)
    assert rec.active and rec.confirmed_at == T0 and rec.last_step == 100
    assert repo.count_recovery_codes(u.id) == 2
    assert not repo.confirm_otp(u.id, "e1", 101, T0, [])  # only a pending one confirms


def test_begin_replaces_pending_but_not_active(repo):
    u = add_user(repo)
    repo.begin_otp(pending(u.id, "e1"))
    repo.begin_otp(pending(u.id, "e2"))
    assert repo.get_otp(u.id).id == "e2"
    assert not repo.confirm_otp(u.id, "e1", 1, T0, [])  # the replaced enrolment is gone
    assert repo.confirm_otp(u.id, "e2", 1, T0, [])
    with pytest.raises(DuplicateError):
        repo.begin_otp(pending(u.id, "e3"))
    with pytest.raises(NotFoundError):
        repo.begin_otp(pending(u.id + 1000))


def test_advance_step_is_monotonic(repo):
    u = add_user(repo)
    assert not repo.advance_otp_step(u.id, 5, T0)  # no secret
    repo.begin_otp(pending(u.id))
    assert not repo.advance_otp_step(u.id, 5, T0)  # pending: not usable
    repo.confirm_otp(u.id, "e1", 10, T0, [])
    assert not repo.advance_otp_step(u.id, 10, T0)  # the confirming step is spent
    assert not repo.advance_otp_step(u.id, 9, T0)
    t1 = T0 + timedelta(seconds=30)
    assert repo.advance_otp_step(u.id, 11, t1)
    rec = repo.get_otp(u.id)
    assert rec.last_step == 11 and rec.last_used_at == t1
    assert not repo.advance_otp_step(u.id, 11, t1)


def test_advance_step_survives_reopen(store_url):
    r = open_repository(store_url)
    u = add_user(r)
    r.begin_otp(pending(u.id))
    r.confirm_otp(u.id, "e1", 10, T0, [])
    assert r.advance_otp_step(u.id, 12, T0)
    r.close()
    r2 = open_repository(store_url)
    try:
        assert r2.get_otp(u.id).last_step == 12
        assert not r2.advance_otp_step(u.id, 12, T0)
    finally:
        r2.close()


def test_concurrent_advance_accepts_once(store_url):
    """Two gateways (two engines) race the same step: exactly one wins."""
    repos = [open_repository(store_url) for _ in range(2)]
    u = add_user(repos[0])
    repos[0].begin_otp(pending(u.id))
    repos[0].confirm_otp(u.id, "e1", 1, T0, [b"h"])
    try:
        for step in range(2, 12):
            steps, codes, barrier = [], [], threading.Barrier(8)

            def race(r, step=step, barrier=barrier, steps=steps, codes=codes):
                barrier.wait()
                steps.append(r.advance_otp_step(u.id, step, T0))
                codes.append(r.use_recovery_code(u.id, b"h", T0))

            threads = [threading.Thread(target=race, args=(repos[i % 2],)) for i in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert steps.count(True) == 1
            assert codes.count(True) == (1 if step == 2 else 0)  # the one code, spent once
    finally:
        for r in repos:
            r.close()


def test_recovery_codes(repo):
    u = add_user(repo)
    repo.begin_otp(pending(u.id))
    repo.confirm_otp(u.id, "e1", 1, T0, [b"a", b"b"])
    assert repo.use_recovery_code(u.id, b"a", T0)
    assert not repo.use_recovery_code(u.id, b"a", T0)  # once
    assert not repo.use_recovery_code(u.id, b"zz", T0)
    assert repo.count_recovery_codes(u.id) == 1
    repo.replace_recovery_codes(u.id, [b"c", b"d", b"e"], T0)
    assert repo.count_recovery_codes(u.id) == 3
    assert not repo.use_recovery_code(u.id, b"b", T0)  # the old set is gone
    other = add_user(repo, "bob")
    assert not repo.use_recovery_code(other.id, b"c", T0)  # another user's code


def test_delete_and_cascade(repo):
    u = add_user(repo)
    repo.begin_otp(pending(u.id))
    repo.confirm_otp(u.id, "e1", 1, T0, [b"a"])
    assert repo.replace_otp_ciphertext(u.id, b"\x01new", b"m" * 12)
    assert repo.get_otp(u.id).ciphertext == b"\x01new"
    assert list(repo.all_otp_user_ids()) == [u.id]
    assert repo.delete_otp(u.id)
    assert repo.get_otp(u.id) is None and repo.count_recovery_codes(u.id) == 0
    assert not repo.delete_otp(u.id)


def test_migration_0002_applies_on_top_of_0001(store_url):
    assert migrate.upgrade(store_url, "0001") == "0001"
    assert migrate.upgrade(store_url, "0002") == "0002"
    assert migrate.downgrade(store_url, "0001") == "0001"
    assert migrate.upgrade(store_url) == migrate.head()
