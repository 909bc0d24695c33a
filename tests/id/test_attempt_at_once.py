"""Local sign-ins run reserve, check and settle in one budget transaction (IdService._attempt,
StoreBudget.attempt): the outcomes are the two-call path's — failures charge the account, the
right ASP is refused while the budget is spent (the check never runs), a success resets it, a
store that fails answers store-unavailable without charging, all audited."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import OperationalError

from tests.store.backends import postgres_database, postgres_url, store_url  # noqa: F401
from ucgate.config import LockoutConfig
from ucgate.id.api import AttemptContext
from ucgate.id.factory import open_services

CTX = AttemptContext("192.0.2.20", "basic", "ucwa")


@pytest.fixture
def ids(tmp_path, store_url):
    (tmp_path / "keys").mkdir(mode=0o700, exist_ok=True)
    from ucgate.store import open_repository

    open_repository(store_url).close()
    s = open_services(
        store_url=store_url,
        key_file=tmp_path / "keys" / "k",
        audit_file=None,
        lockout=LockoutConfig(user_failures=3, ip_failures=50, window=900),
    )
    yield s
    s.close()


def _reasons(ids, n):
    return [e.reason for e in ids.audit.tail(n)]


def test_failures_charge_then_the_right_asp_is_throttled_unchecked(ids, monkeypatch):
    ids.users.add("erin")
    _, asp = ids.asps.create("erin", "phone")
    c = ids.credentials
    assert [c.verify_password_sync("erin", "wrong-wrong-wrong", CTX).reason for _ in range(3)] == ["wrong-password"] * 3
    checked = []
    real = c._check_password
    monkeypatch.setattr(c, "_check_password", lambda *a: checked.append(1) or real(*a))
    v = c.verify_password_sync("erin", asp, CTX)
    assert (v.ok, v.reason) == (False, "throttled") and v.retry_after > 0
    assert not checked, "the credential was checked although the budget was spent"
    assert _reasons(ids, 4) == ["wrong-password"] * 3 + ["throttled"]


def test_a_success_resets_the_account_and_is_audited_with_the_asp(ids, monkeypatch):
    ids.users.add("fred")
    asp_id, asp = ids.asps.create("fred", "phone")
    c = ids.credentials
    # the one-transaction path, not the two calls: reserve/settle must not be reached
    budget = c.budget
    monkeypatch.setattr(budget, "reserve", lambda *a, **k: pytest.fail("reserve called: not one transaction"))
    monkeypatch.setattr(budget, "settle", lambda *a, **k: pytest.fail("settle called: not one transaction"))
    for _ in range(2):
        assert c.verify_password_sync("fred", "nope", CTX).reason == "wrong-password"
    v = c.verify_password_sync("fred", asp, CTX)
    assert v.ok and v.credential_id == asp_id
    # reset: three more failures fit again before the budget refuses
    assert [c.verify_password_sync("fred", "nope", CTX).reason for _ in range(4)] == ["wrong-password"] * 3 + [
        "throttled"
    ]
    ev = ids.audit.tail(5)[0]
    assert (ev.result, ev.reason, ev.details["credential"]) == ("allow", "ok", asp_id)
    ids.audit.writer.flush()
    assert ids.asps.get(asp_id).last_used_at is not None


def test_unknown_user_is_charged_by_its_name(ids):
    c = ids.credentials
    assert [c.verify_password_sync("BENCH\\nobody", "x", CTX).reason for _ in range(4)] == ["unknown-user"] * 3 + [
        "throttled"
    ]
    assert c.verify_password_sync("nobody", "x", CTX).reason == "throttled"  # the same budget


def test_a_store_failure_in_the_transaction_charges_nothing(ids, monkeypatch):
    ids.users.add("gina")
    _, asp = ids.asps.create("gina", "phone")
    c = ids.credentials
    budget = c.budget
    real = budget._tx

    def failing(write):
        raise OperationalError("BEGIN IMMEDIATE", {}, Exception("database is locked"))

    monkeypatch.setattr(budget, "_tx", failing)
    for _ in range(5):
        v = c.verify_password_sync("gina", "nope", CTX)
        assert (v.ok, v.reason) == (False, "store-unavailable") and v.retry_after > 0
    monkeypatch.setattr(budget, "_tx", real)
    assert c.verify_password_sync("gina", asp, CTX).ok  # nothing was charged meanwhile
    assert _reasons(ids, 6) == ["store-unavailable"] * 5 + ["ok"]


def _ntlm(user: str, password: str, *, handed: bool = False):
    """One NTLM exchange as the gateway runs it (Type 1 -> 2 -> 3), for the id service; with
    ``handed``, with the gateway's parse as an in-process gateway passes it on."""
    import os
    import time

    import spnego
    import spnego.channel_bindings as cb

    from ucgate.id.api import NtlmHandshake
    from ucgate.protocols import ntlm as P

    cbd = b"tls-server-end-point:" + b"\x07" * 32  # a stand-in, the same on both sides
    cli = spnego.client(
        f"BENCH\\{user}", password, protocol="ntlm", channel_bindings=cb.GssChannelBindings(application_data=cbd)
    )
    acc = P.NtlmAcceptor(
        server_challenge=os.urandom(8),
        now=P.filetime(time.time()),
        netbios_domain="BENCH",
        netbios_computer="GW",
        dns_domain="bench.test",
        dns_computer="gw.bench.test",
        channel_binding_data=cbd,
        extended_protection="require",
        max_clock_skew=300,
    )
    t3 = cli.step(acc.challenge(cli.step()))
    acc.identify(t3)
    n, ch, au = acc.messages()
    return NtlmHandshake(
        negotiate=n,
        challenge=ch,
        authenticate=au,
        server_challenge=acc.server_challenge,
        challenge_time=acc.challenge_time,
        channel_binding_data=cbd,
        extended_protection="require",
        max_clock_skew=300,
        parsed=acc.parsed() if handed else None,
    )


def test_ntlm_outcomes_in_one_transaction(ids):
    ids.users.add("hana")
    asp_id, asp = ids.asps.create("hana", "phone")
    c = ids.credentials
    ctx = AttemptContext("192.0.2.21", "ntlm", "ucwa")
    ok = c.verify_ntlm_sync(_ntlm("hana", asp), ctx)
    assert ok.verdict.ok and ok.verdict.credential_id == asp_id and ok.result is not None
    assert [c.verify_ntlm_sync(_ntlm("hana", "wrong-asp"), ctx).verdict.reason for _ in range(4)] == [
        "wrong-password"
    ] * 3 + ["throttled"]
    assert c.verify_ntlm_sync(_ntlm("hana", asp), ctx).verdict.reason == "throttled"
    assert [c.verify_ntlm_sync(_ntlm("nobody", "x"), ctx).verdict.reason for _ in range(4)] == ["unknown-user"] * 3 + [
        "throttled"
    ]
    assert _reasons(ids, 10) == ["ok"] + ["wrong-password"] * 3 + ["throttled"] * 2 + ["unknown-user"] * 3 + [
        "throttled"
    ]


def test_ntlm_with_the_gateways_parse(ids, monkeypatch):
    """An in-process gateway hands its parse over (NtlmHandshake.parsed): the id service parses
    none of the messages again and answers as it does from the bytes alone."""
    from ucgate.protocols import ntlm as P

    ids.users.add("ivan")
    asp_id, asp = ids.asps.create("ivan", "phone")
    c = ids.credentials
    ctx = AttemptContext("192.0.2.22", "ntlm", "ucwa")
    handshakes = [_ntlm("ivan", asp, handed=True), _ntlm("ivan", "wrong-asp", handed=True), _ntlm("ivan", asp)]

    def no_parse(*a, **k):
        raise AssertionError("parsed again")

    for cls in (P.NegotiateMessage, P.ChallengeMessage, P.AuthenticateMessage):
        monkeypatch.setattr(cls, "unpack", classmethod(no_parse))
    ok = c.verify_ntlm_sync(handshakes[0], ctx)
    assert ok.verdict.ok and ok.verdict.credential_id == asp_id and ok.result is not None
    assert c.verify_ntlm_sync(handshakes[1], ctx).verdict.reason == "wrong-password"
    with pytest.raises(AssertionError, match="parsed again"):  # without it, the messages are parsed
        c.verify_ntlm_sync(handshakes[2], ctx)
    monkeypatch.undo()
    again = c.verify_ntlm_sync(handshakes[2], ctx)
    assert again.verdict.ok and again.result is not None
    assert again.result.flags == ok.result.flags and again.result.channel_binding == ok.result.channel_binding
    assert _reasons(ids, 3) == ["ok", "wrong-password", "ok"]


def test_a_success_hands_its_event_and_asp_use_over_at_once(ids):
    """With the sign-in writer, a successful sign-in with an ASP is one queue item (the event
    and the last use); a refusal is its event alone."""
    ids.users.add("gus")
    asp_id, asp = ids.asps.create("gus", "phone")
    w = ids.audit.writer
    items = []
    real = w._put
    w._put = lambda item, wait=True: items.append(item) or real(item, wait)
    assert ids.credentials.verify_password_sync("gus", "nope", CTX).reason == "wrong-password"
    assert ids.credentials.verify_password_sync("gus", asp, CTX).ok
    assert [kind for kind, _, _ in items] == ["audit", "audit+used"]
    assert items[1][2][1][0] == asp_id
    w.flush()
    assert ids.asps.get(asp_id).last_used_at is not None
    assert [e.reason for e in ids.audit.tail(2)] == ["wrong-password", "ok"]
