"""Sign-ins answered on the gateway's event loop (``IdService.verify_password_now`` and
``verify_ntlm_now``): a success found in the sign-in cache is answered without a worker thread,
with the verdict, the budget's rows, the audit event and the ASP's last use the worker thread's
attempt makes; anything else — a cache miss, a wrong or revoked ASP, a disabled user, a second
factor, a spent account, a full writer queue, PostgreSQL, another process holding SQLite's
write lock for a charge — answers None having charged, audited and counted nothing, and the
worker thread's attempt then answers it as before."""

from __future__ import annotations

import subprocess
import sys

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import text

from tests.id.test_attempt_at_once import _ntlm
from tests.store.backends import postgres_database, postgres_url, store_url  # noqa: F401
from tests.store.test_budget_now import HOLD
from ucgate.config import LockoutConfig
from ucgate.id.api import AttemptContext
from ucgate.id.factory import open_services
from ucgate.store import open_repository

CTX = AttemptContext("192.0.2.30", "basic", "ucwa", device_id="dev1", user_agent="test")
NCTX = AttemptContext("192.0.2.30", "ntlm", "ucwa", device_id="dev1", user_agent="test")


def _db(tmp_path, name="ucgate") -> str:
    (tmp_path / "data").mkdir(mode=0o700, parents=True, exist_ok=True)
    return f"sqlite:///{tmp_path / 'data' / name}.db"


def _open(tmp_path, url, **kw):
    (tmp_path / "keys").mkdir(mode=0o700, parents=True, exist_ok=True)
    open_repository(url).close()
    return open_services(
        store_url=url,
        key_file=tmp_path / "keys" / "k",
        audit_file=None,
        lockout=LockoutConfig(user_failures=3, ip_failures=50, window=900),
        netbios_domains=("BENCH",),
        **kw,
    )


@pytest.fixture
def ids(tmp_path):
    s = _open(tmp_path, _db(tmp_path))
    yield s
    s.close()


def _user(ids, name="kim"):
    ids.users.add(name)
    return ids.asps.create(name, "phone")


def _budget_rows(ids) -> tuple:
    with ids.credentials.budget.engine.connect() as c:
        return (
            c.execute(text("SELECT bucket, level, at FROM budget_buckets ORDER BY bucket")).all(),
            c.execute(text("SELECT account, ip, at FROM familiar_ips ORDER BY account, ip")).all(),
        )


def _events(ids, n):
    ids.audit.writer.flush()
    return [
        (e.action, e.actor, e.username, e.result, e.reason, e.device, e.service, e.client_address, e.details)
        for e in ids.audit.tail(n)
    ]


def _sign_ins(method: str, result: str, reason: str) -> float:
    v = REGISTRY.get_sample_value("ucgate_id_sign_ins_total", {"method": method, "result": result, "reason": reason})
    return v or 0.0


def _nothing_done(ids, fn, *args):
    """``fn(*args)`` answers None and leaves the budget, the audit trail and the counter as they were."""
    rows, events = _budget_rows(ids), _events(ids, 50)
    counted = _sign_ins("basic", "allow", "ok") + _sign_ins("ntlm", "allow", "ok")
    assert fn(*args) is None
    assert _budget_rows(ids) == rows and _events(ids, 50) == events
    assert _sign_ins("basic", "allow", "ok") + _sign_ins("ntlm", "allow", "ok") == counted


def test_a_cached_success_is_the_worker_threads(ids):
    asp_id, asp = _user(ids)
    c = ids.credentials
    _nothing_done(ids, c.verify_password_now, "BENCH\\kim", asp, CTX)  # not cached yet: the thread reads
    first = c.verify_password_sync("BENCH\\kim", asp, CTX)
    rows_after_thread = _budget_rows(ids)
    counted = _sign_ins("basic", "allow", "ok")
    now = c.verify_password_now("BENCH\\kim", asp, CTX)
    assert now == first and now.ok and now.credential_id == asp_id
    assert _budget_rows(ids) == rows_after_thread  # a familiar IP, no failures: nothing to write
    assert _sign_ins("basic", "allow", "ok") == counted + 1
    thread_event, now_event = _events(ids, 2)
    assert now_event == thread_event  # the same event, the ASP named
    assert now_event[8]["credential"] == asp_id and now_event[8]["method"] == "basic"
    assert ids.asps.get(asp_id).last_used_at is not None


def test_a_stranger_ip_and_earlier_failures_are_written_as_the_thread_writes_them(ids, tmp_path):
    """The budget's rows after a now-answered success equal a twin service's after the thread's."""
    twin = _open(tmp_path / "twin", _db(tmp_path / "twin"))
    try:
        for s in (ids, twin):
            _, asp = _user(s)
            s.credentials.verify_password_sync("BENCH\\kim", asp, CTX)  # cached, 192.0.2.30 familiar
            s.credentials.verify_password_sync("BENCH\\kim", "wrong", CTX)  # a failure on the account
            s._asp = asp
        other = AttemptContext("203.0.113.5", "basic", "ucwa", device_id="dev1")  # not familiar
        for ctx in (CTX, other):
            assert ids.credentials.verify_password_now("BENCH\\kim", ids._asp, ctx).ok
            assert twin.credentials.verify_password_sync("BENCH\\kim", twin._asp, ctx).ok
            (b1, f1), (b2, f2) = _budget_rows(ids), _budget_rows(twin)
            assert [r[1] for r in b1] == [r[1] for r in b2]  # the levels (names hold the account key)
            assert [r[1] for r in f1] == [r[1] for r in f2]  # the familiar IPs
    finally:
        twin.close()


def test_what_is_not_a_cached_success_is_left_to_the_thread(ids, monkeypatch):
    asp_id, asp = _user(ids)
    c = ids.credentials
    c.verify_password_sync("kim", asp, CTX)  # cached now
    _nothing_done(ids, c.verify_password_now, "kim", "abcd-efgh-jkmn-pqrs", CTX)  # a wrong ASP
    _nothing_done(ids, c.verify_password_now, "nobody", asp, CTX)
    _nothing_done(ids, c.verify_password_now, "kim@bench.test", asp, CTX)  # a UPN: the store resolves it
    # the writer's queue is full
    monkeypatch.setattr(ids.audit.writer, "has_room", lambda: False)
    _nothing_done(ids, c.verify_password_now, "kim", asp, CTX)
    monkeypatch.undo()
    # a spent account: the right ASP is refused (by the thread, which says "throttled")
    for _ in range(3):
        assert c.verify_password_sync("kim", "wrong", CTX).reason == "wrong-password"
    _nothing_done(ids, c.verify_password_now, "kim", asp, CTX)
    assert c.verify_password_sync("kim", asp, CTX).reason == "throttled"


def test_a_revoke_or_a_disable_is_seen_by_the_next_sign_in(ids):
    asp_id, asp = _user(ids)
    c = ids.credentials
    c.verify_password_sync("kim", asp, CTX)
    assert c.verify_password_now("kim", asp, CTX).ok
    ids.asps.revoke(asp_id)  # the store's change event drops the cached entry (in-process: at once)
    _nothing_done(ids, c.verify_password_now, "kim", asp, CTX)
    assert c.verify_password_sync("kim", asp, CTX).reason == "wrong-password"
    asp2_id, asp2 = ids.asps.create("kim", "tablet")
    c.verify_password_sync("kim", asp2, CTX)
    assert c.verify_password_now("kim", asp2, CTX).ok
    ids.users.disable("kim")
    _nothing_done(ids, c.verify_password_now, "kim", asp2, CTX)
    assert c.verify_password_sync("kim", asp2, CTX).reason == "user-disabled"


def test_the_writer_queue_filling_meanwhile_leaves_it_to_the_thread(ids, monkeypatch):
    """The queue had room when asked, then a worker thread filled it: no event is lost, the
    sign-in is answered None (the budget's success, idempotent, is made again by the thread)."""
    from ucgate.id.writer import WriterBusy

    _, asp = _user(ids)
    c = ids.credentials
    c.verify_password_sync("kim", asp, CTX)
    w = ids.audit.writer

    def full(item, wait=True):
        assert wait is False  # the loop never waits for room
        raise WriterBusy("full")

    monkeypatch.setattr(w, "_put", full)
    _nothing_done(ids, c.verify_password_now, "kim", asp, CTX)


def test_another_process_holding_the_write_lock(ids, tmp_path):
    _, asp = _user(ids)
    c = ids.credentials
    c.verify_password_sync("kim", asp, CTX)
    stranger = AttemptContext("203.0.113.9", "basic", "ucwa", device_id="dev1")
    events = _events(ids, 50)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path / "data" / "ucgate.db")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
        assert c.verify_password_now("kim", asp, CTX).ok  # familiar: one read, past the lock
        rows = _budget_rows(ids)  # (a WAL reader: never waits)
        assert c.verify_password_now("kim", asp, stranger) is None  # a stranger's IP unit: a write
        assert _budget_rows(ids) == rows
    finally:
        holder.communicate(b"\n", timeout=10)
    after = _events(ids, 50)
    assert after[: len(events)] == events and len(after) == len(events) + 1  # the familiar success's alone
    assert c.verify_password_now("kim", asp, stranger).ok


def test_a_second_factor_is_left_to_the_thread(tmp_path):
    from ucgate.id.twofactor import TwoFactorSettings

    s = _open(tmp_path, _db(tmp_path), two_factor=TwoFactorSettings("otp-appended", (), 24.0))
    try:
        _, asp = _user(s)
        _nothing_done(s, s.credentials.verify_password_now, "kim", asp, CTX)
    finally:
        s.close()


def test_postgresql_is_left_to_the_thread(tmp_path, postgres_url):
    s = _open(tmp_path, postgres_url)
    try:
        _, asp = _user(s)
        assert s.credentials.verify_password_sync("kim", asp, CTX).ok
        _nothing_done(s, s.credentials.verify_password_now, "kim", asp, CTX)
    finally:
        s.close()


def test_ntlm_a_cached_success_and_what_is_not(ids):
    asp_id, asp = _user(ids)
    c = ids.credentials
    _nothing_done(ids, c.verify_ntlm_now, _ntlm("kim", asp, handed=True), NCTX)  # not cached
    first = c.verify_ntlm_sync(_ntlm("kim", asp, handed=True), NCTX)
    assert first.verdict.ok
    now = c.verify_ntlm_now(_ntlm("kim", asp, handed=True), NCTX)
    assert now is not None and now.verdict == first.verdict and now.verdict.credential_id == asp_id
    assert now.result is not None and now.result.flags == first.result.flags
    thread_event, now_event = _events(ids, 2)
    assert now_event == thread_event
    _nothing_done(ids, c.verify_ntlm_now, _ntlm("kim", "wrong-asp", handed=True), NCTX)  # refusals: the thread's
    _nothing_done(ids, c.verify_ntlm_now, _ntlm("kim", asp), NCTX)  # no parse handed over (a remote gateway)
    _nothing_done(ids, c.verify_ntlm_now, _ntlm("nobody", asp, handed=True), NCTX)
