"""Sign-ins answered on the event loop, through the running gateway with real clients: once the
id service's sign-in cache holds the user, a Basic credential and an NTLM AUTHENTICATE are
answered without a worker thread (``IdService.verify_password_now`` / ``verify_ntlm_now``,
``PreAuthenticator.answer_now``); a refusal, a cold cache and a store that would make the loop
wait go to the worker thread as before, with the same answers and the same audit trail."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import httpx
import pytest

from tests.store.backends import postgres_database, postgres_url  # noqa: F401
from tests.store.test_budget_now import HOLD
from ucgate.config import LockoutConfig
from ucgate.gateway.preauth import PreAuthenticator, PreAuthSettings
from ucgate.id.factory import open_services
from ucgate.store import open_repository

from ..support import start_gateway
from .test_preauth import requests_session, tampered_mech_list_mic

DOMAIN = "LAB"


def _open(tmp_path, url=None):
    (tmp_path / "data").mkdir(exist_ok=True)
    (tmp_path / "keys").mkdir(mode=0o700, exist_ok=True)
    if url is not None:
        open_repository(url).close()  # the schema (SQLite's file is made by open_services)
    s = open_services(
        store_url=url or f"sqlite:///{tmp_path / 'data' / 'ucgate.db'}",
        key_file=tmp_path / "keys" / "ucgate.key",
        audit_file=tmp_path / "data" / "audit.jsonl",
        lockout=LockoutConfig(user_failures=5, ip_failures=50, window=900),
        netbios_domains=(DOMAIN,),
    )
    s.users.add("alice", upn="alice@lab.ucgate.test")
    s.users.add("bob")
    return s


@pytest.fixture
def ids(tmp_path):
    s = _open(tmp_path)
    yield s
    s.close()


class Threads:
    """Counts the sign-ins that reached a worker thread."""

    def __init__(self, monkeypatch, ids) -> None:
        self.calls: list[str] = []
        creds = ids.credentials
        for name in ("verify_password_sync", "verify_ntlm_sync"):
            real = getattr(creds, name)

            def counting(*a, real=real, name=name):
                self.calls.append(name)
                return real(*a)

            monkeypatch.setattr(creds, name, counting)


@pytest.fixture
def gw(loop_thread, tls_files, upstream, ids):
    auth = PreAuthenticator(ids.credentials, PreAuthSettings(netbios_domain=DOMAIN, extended_protection="require"))
    g = start_gateway(loop_thread, *tls_files, upstream.port, authenticator=auth)
    yield g
    g.stop()


def _basic(g, user, pw) -> int:
    with httpx.Client(verify=g.ssl_context()) as c:  # a new connection each time
        return c.get(f"{g.url}/ucwa/basic", auth=(user, pw)).status_code


def _ntlm(g, user, pw) -> int:
    with requests_session(g, user, pw) as s:
        return s.get(f"https://localhost:{g.port}/ucwa/ntlm").status_code


def test_basic_once_cached_is_answered_on_the_loop(gw, ids, upstream, monkeypatch):
    _, asp = ids.asps.create("alice", "phone")
    t = Threads(monkeypatch, ids)
    assert _basic(gw, "alice", asp) == 200
    assert t.calls == ["verify_password_sync"]  # the cache was cold: the worker thread read the store
    for user in ("alice", "LAB\\alice"):
        assert _basic(gw, user, asp) == 200
    assert t.calls == ["verify_password_sync"], "a cached success went to a worker thread"
    assert upstream.received[-1].header("X-Ucgate-User") == "alice"
    # refusals are the worker thread's, as before: a wrong ASP, a UPN (read from the store)
    assert _basic(gw, "alice", asp[:-1]) == 401
    assert _basic(gw, "alice@lab.ucgate.test", asp) == 200
    assert t.calls == ["verify_password_sync"] * 3
    ids.audit.writer.flush()
    assert [e.reason for e in ids.audit.tail(5)] == ["ok", "ok", "ok", "wrong-password", "ok"]


def test_ntlm_once_cached_is_answered_on_the_loop(gw, ids, upstream, monkeypatch):
    asp_id, asp = ids.asps.create("alice", "phone")
    t = Threads(monkeypatch, ids)
    assert _ntlm(gw, f"{DOMAIN}\\alice", asp) == 200
    assert _ntlm(gw, f"{DOMAIN}\\alice", asp) == 200
    assert _ntlm(gw, "alice", asp) == 200
    assert t.calls == ["verify_ntlm_sync"], "a cached success went to a worker thread"
    assert _ntlm(gw, f"{DOMAIN}\\alice", "wrong-asp-1234") == 401
    assert t.calls == ["verify_ntlm_sync"] * 2
    ids.audit.writer.flush()
    got = [(e.reason, (e.details or {}).get("credential")) for e in ids.audit.tail(4)]
    assert got == [("ok", asp_id)] * 3 + [("wrong-password", None)]
    assert upstream.received[-1].header("X-Ucgate-User") == "alice"


def test_a_revoke_is_refused_on_the_next_sign_in(gw, ids, monkeypatch):
    asp_id, asp = ids.asps.create("alice", "phone")
    assert _basic(gw, "alice", asp) == 200 and _ntlm(gw, "alice", asp) == 200  # cached
    ids.asps.revoke(asp_id)
    assert _basic(gw, "alice", asp) == 401
    assert _ntlm(gw, "alice", asp) == 401


def test_a_sign_in_that_would_wait_on_the_store_goes_on_in_a_task(gw, ids, monkeypatch, tmp_path):
    """bob's first attempt fails (cached, his IP not familiar): while another process holds
    SQLite's write lock, his right ASP cannot be charged on the loop — the AUTHENTICATE, taken off
    the handshake by answer_now, goes on in a task whose worker thread waits for the lock."""
    _, asp = ids.asps.create("bob", "phone")
    t = Threads(monkeypatch, ids)
    assert _ntlm(gw, "bob", "wrong-asp-1234") == 401
    ids.audit.writer.flush()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path / "data" / "ucgate.db")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
    release = threading.Timer(0.5, lambda: holder.communicate(b"\n", timeout=10))
    release.start()
    try:
        started = time.monotonic()
        assert _ntlm(gw, "bob", asp) == 200
        assert time.monotonic() - started >= 0.4  # it waited for the lock, in the worker thread
    finally:
        release.join()
    assert t.calls == ["verify_ntlm_sync"] * 2
    ids.audit.writer.flush()
    assert [e.reason for e in ids.audit.tail(2)] == ["wrong-password", "ok"]


def test_a_tampered_mech_list_mic_after_a_loop_answer_is_refused_and_audited(gw, upstream, ids):
    """The id service allowed the AUTHENTICATE on the loop, the acceptor refused its mechListMIC:
    the task answers 401 after the failure floor and corrects the audit trail, as before."""
    _, asp = ids.asps.create("alice", "phone")
    assert _ntlm(gw, "alice", asp) == 200  # cached
    assert tampered_mech_list_mic(gw, "alice", asp) == 401
    assert all(rec.target != "/ucwa/neg" for rec in upstream.received)
    ids.audit.writer.flush()
    tail = [(e.result, e.reason) for e in ids.audit.tail(2)]
    assert tail[0] == ("allow", "ok") and tail[1][0] == "deny" and "mic" in tail[1][1], tail


def test_postgresql_sign_ins_stay_in_the_worker_thread(
    loop_thread, tls_files, upstream, tmp_path, postgres_url, monkeypatch
):
    s = _open(tmp_path, postgres_url)
    try:
        auth = PreAuthenticator(s.credentials, PreAuthSettings(netbios_domain=DOMAIN, extended_protection="require"))
        g = start_gateway(loop_thread, *tls_files, upstream.port, authenticator=auth)
        try:
            _, asp = s.asps.create("alice", "phone")
            t = Threads(monkeypatch, s)
            assert _basic(g, "alice", asp) == 200 and _basic(g, "alice", asp) == 200
            assert _ntlm(g, "alice", asp) == 200 and _ntlm(g, "alice", asp) == 200
            assert t.calls == ["verify_password_sync"] * 2 + ["verify_ntlm_sync"] * 2
        finally:
            g.stop()
    finally:
        s.close()


def test_concurrent_sign_ins_on_the_loop_and_in_threads(gw, ids, monkeypatch):
    """Eight right ASPs at once are all answered on the loop and all audited; then ten wrong ones
    at once (worker threads) spend the account's budget exactly, and the right ASP is refused
    on the loop's path too while it is spent."""
    from concurrent.futures import ThreadPoolExecutor

    asp_id, asp = ids.asps.create("alice", "phone")
    assert _basic(gw, "alice", asp) == 200  # cached, 127.0.0.1 familiar
    t = Threads(monkeypatch, ids)
    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(lambda _: _basic(gw, "alice", asp), range(8))) == [200] * 8
    assert t.calls == [], "a cached success went to a worker thread"
    with ThreadPoolExecutor(10) as pool:
        codes = list(pool.map(lambda _: _basic(gw, "alice", "abcd-efgh-jkmn-pqrs"), range(10)))
    assert 200 not in codes
    assert _basic(gw, "alice", asp) != 200  # spent: refused, not answered from the cache
    ids.audit.writer.flush()
    reasons = [e.reason for e in ids.audit.tail(20)]
    assert reasons[:9] == ["ok"] * 9
    assert sorted(reasons[9:19]) == ["throttled"] * 5 + ["wrong-password"] * 5
    assert reasons[19] == "throttled"
