"""Audit events to a SIEM: the JSON schema of an event, RFC 5424 over TCP (RFC 6587 octet
counting) and TLS (RFC 5425) into Debian's real rsyslog (imtcp, the gtls driver), and a
receiver that is away or slow never delaying a sign-in (bounded queue, counted drops)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest

from tests.audit_schema import SCHEMA, problems
from tests.lab.rsyslog import RsyslogLab, make_ca
from ucgate.config import ConfigError, LockoutConfig, from_dict
from ucgate.id import audit_syslog
from ucgate.id.api import AttemptContext
from ucgate.id.audit import SCHEMA_VERSION, AuditLog, to_json
from ucgate.id.audit_syslog import SyslogConfig, SyslogSink, format_message, frame
from ucgate.id.factory import open_services
from ucgate.store import open_repository

from ..support import free_port


@pytest.fixture
def repo(tmp_path):
    r = open_repository(f"sqlite:///{tmp_path / 'data' / 'ucgate.db'}")
    yield r
    r.close()


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    d = tmp_path_factory.mktemp("syslog-pki")
    out = make_ca(d, {"server": ["localhost", "127.0.0.1"], "client": ["gw1.contoso.test"]})
    (d / "other").mkdir()
    out["other-ca"] = make_ca(d / "other", {"server": ["127.0.0.1"]})["ca"]
    return out


@pytest.fixture
def rsyslog():
    labs: list[RsyslogLab] = []

    def make(**kw) -> RsyslogLab:
        lab = RsyslogLab(**kw)
        labs.append(lab)
        return lab.start()

    yield make
    for lab in labs:
        lab.close()


@pytest.fixture
def fast_backoff(monkeypatch):
    monkeypatch.setattr(audit_syslog, "BACKOFF_FIRST", 0.1)
    monkeypatch.setattr(audit_syslog, "BACKOFF_MAX", 0.2)


def sign_in(audit: AuditLog, n: int = 0):
    return audit.record(
        "sign-in",
        actor="alice",
        user="alice",
        device="appldev1",
        service="eas",
        client_address="192.0.2.7",
        result="deny" if n % 2 else "allow",
        reason="wrong-password" if n % 2 else "ok",
        method="basic",
        attempt=n,
    )


# --- the schema -------------------------------------------------------------------------------
def test_every_event_carries_the_schema_version_and_the_schema_names_every_field(repo, tmp_path):
    a = AuditLog(repo, tmp_path / "audit.jsonl")
    ev = sign_in(a)
    a.close()
    [line] = [json.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert line["schema_version"] == SCHEMA_VERSION == SCHEMA["properties"]["schema_version"]["const"]
    assert line == to_json(ev) and problems(line) == []
    assert set(line) == set(SCHEMA["required"]) == set(SCHEMA["properties"])


def test_the_suite_hook_refuses_events_that_break_the_schema(audit_schema_hook):
    good = {
        "schema_version": 1,
        "id": 3,
        "at": "2025-03-01T09:00:00+00:00",
        "actor": "cli:root",
        "action": "device.block",
        "user": "alice",
        "device": None,
        "service": None,
        "client_address": None,
        "result": "ok",
        "reason": None,
        "details": {},
    }
    assert problems(good) == []
    assert audit_schema_hook.checked > 0  # the suite's events went through the hook
    for change, where in (
        ({"schema_version": 2}, "schema_version"),
        ({"at": "yesterday"}, "at"),
        ({"action": "Sign In"}, "action"),
        ({"id": None}, "id"),
        ({"surprise": 1}, "<event>"),
        ({"details": []}, "details"),
    ):
        found = problems({**good, **change})
        assert found and found[0].startswith(where), (change, found)


# --- the message --------------------------------------------------------------------------------
def test_rfc5424_message_and_octet_counting_frame():
    ev = {
        "schema_version": 1,
        "id": 9,
        "at": "2025-03-01T09:00:01.5+00:00",
        "action": "sign-in",
        "result": "deny",
        "user": "zoë",
    }
    msg = format_message(ev, facility=10, hostname="gw 1", app_name="ucgate", procid=42)
    header, _, body = msg.partition(b" {")
    # authpriv (10) * 8 + warning (4); time in UTC with microseconds; spaces cut from HOSTNAME
    assert header == b"<84>1 2025-03-01T09:00:01.500000Z gw1 ucgate 42 sign-in -"
    assert json.loads(b"{" + body) == ev
    assert frame(msg) == str(len(msg)).encode() + b" " + msg  # octets, not characters (the ë)
    ok = format_message({**ev, "result": "ok"}, facility=4, hostname="h", app_name="a", procid=1)
    assert ok.startswith(b"<38>1 ")  # auth (4) * 8 + info (6)
    q = format_message(
        {**ev, "result": "quarantine", "action": "x" * 40, "at": None}, facility=4, hostname="", app_name="a", procid=1
    )
    assert q.startswith(b"<37>1 - - a 1 " + b"x" * 32 + b" - {")  # NILVALUEs; MSGID is 32 at most


# --- into rsyslog -------------------------------------------------------------------------------
def _ids_with(tmp_path, cfg: SyslogConfig):
    (tmp_path / "keys").mkdir(mode=0o700, exist_ok=True)
    ids = open_services(
        store_url=f"sqlite:///{tmp_path / 'data' / 'ucgate.db'}",
        key_file=tmp_path / "keys" / "ucgate.key",
        audit_file=tmp_path / "data" / "audit.jsonl",
        lockout=LockoutConfig(user_failures=50, ip_failures=500, window=900),
        audit_syslog=cfg,
    )
    ids.users.add("alice", upn="alice@contoso.com")
    return ids


def test_a_sign_in_reaches_rsyslog_over_plain_tcp_as_the_jsonl_line(rsyslog, tmp_path):
    lab = rsyslog()
    ids = _ids_with(tmp_path, SyslogConfig(host="127.0.0.1", port=lab.port, tls=False, hostname="gw1"))
    try:
        asp = ids.asps.create("alice", "phone")[1]
        ctx = AttemptContext(client_ip="192.0.2.7", method="basic", service="eas", device_id="appldev1")
        assert ids.credentials.verify_password_sync("alice", asp, ctx).ok
        assert not ids.credentials.verify_password_sync("alice", "wrong", ctx).ok
        got = lab.wait_for(2)
    finally:
        ids.close()
    lines = [json.loads(x) for x in (tmp_path / "data" / "audit.jsonl").read_text().splitlines()]
    events = [json.loads(m["msg"]) for m in got]
    assert events == lines[-2:]  # the same objects as the JSON-lines file, in order
    for m, ev in zip(got, events, strict=True):
        assert problems(ev) == []
        assert (m["protocol"], m["hostname"], m["app_name"], m["msgid"], m["structured_data"]) == (
            "1",
            "gw1",
            "ucgate",
            "sign-in",
            "-",
        )
        assert m["timestamp"].startswith(ev["at"][:19])
    assert [e["result"] for e in events] == ["allow", "deny"]
    assert [m["pri"] for m in got] == ["86", "84"]  # authpriv.info, authpriv.warning


@pytest.mark.parametrize("authmode", ["anon", "x509/certvalid"], ids=["server-auth", "mutual-tls"])
def test_events_reach_rsyslog_over_tls(rsyslog, certs, repo, authmode):
    lab = rsyslog(tls=True, authmode=authmode, ca=certs["ca"][0], cert=certs["server"][0], key=certs["server"][1])
    client = {} if authmode == "anon" else {"cert_file": certs["client"][0], "key_file": certs["client"][1]}
    sink = SyslogSink(SyslogConfig(host="127.0.0.1", port=lab.port, ca_file=certs["ca"][0], **client))
    a = AuditLog(repo, None, syslog=sink)
    evs = [sign_in(a, i) for i in range(5)]
    got = lab.wait_for(5)
    a.close()
    assert [json.loads(m["msg"])["id"] for m in got] == [e.id for e in evs]
    assert sink.sent == 5 and sink.dropped == 0


def test_a_receiver_with_a_certificate_from_another_ca_gets_nothing(rsyslog, certs, repo, fast_backoff, caplog):
    lab = rsyslog(tls=True, ca=certs["ca"][0], cert=certs["server"][0], key=certs["server"][1])
    sink = SyslogSink(SyslogConfig(host="127.0.0.1", port=lab.port, ca_file=certs["other-ca"][0], queue_size=2))
    a = AuditLog(repo, None, syslog=sink)
    with caplog.at_level(logging.WARNING, "ucgate.audit.syslog"):
        for i in range(6):
            sign_in(a, i)
        time.sleep(0.5)
        a.close()
    assert lab.received() == [] and sink.sent == 0
    assert sink.dropped == 6  # 3 or 4 for the full queue, the rest when closed unsent
    assert "CERTIFICATE_VERIFY_FAILED" in caplog.text or "certificate verify failed" in caplog.text


def test_receiver_away_never_delays_a_sign_in_drops_are_counted_then_delivery_resumes(
    rsyslog, repo, fast_backoff, caplog
):
    port = free_port()  # nothing listens yet
    sink = SyslogSink(SyslogConfig(host="127.0.0.1", port=port, tls=False, queue_size=3, timeout=2))
    a = AuditLog(repo, None, syslog=sink)
    with caplog.at_level(logging.WARNING, "ucgate.audit.syslog"):
        t0 = time.monotonic()
        evs = [sign_in(a, i) for i in range(20)]
        elapsed = time.monotonic() - t0
        assert sink.dropped >= 16 and sink.queued <= 3  # one held by the sender, 3 queued
        assert "dropped so far" in caplog.text and "cannot connect" in caplog.text
    assert elapsed < 5.0  # 20 table writes; a sink that waited for the receiver would take 40 s
    assert len(repo.tail_audit(100)) == 20  # the store has every event
    kept = 20 - sink.dropped
    lab = rsyslog(port=port)
    got = lab.wait_for(kept)
    # the oldest were kept (the one the sender held and the queue); the newest were dropped
    assert [json.loads(m["msg"])["id"] for m in got] == [e.id for e in evs[:kept]]
    # the receiver restarts: the sender notices the closed connection and reconnects
    lab.stop()
    lab.start()
    later = sign_in(a, 99)
    got = lab.wait_for(kept + 1)
    assert json.loads(got[-1]["msg"])["id"] == later.id
    a.close()
    assert sink.dropped == 20 - kept


def test_audit_syslog_configuration(tmp_path, certs):
    base = {"gateway": {"plain_http": True}, "upstreams": {"frontend": {"url": "http://127.0.0.1:1"}}}
    cfg = from_dict(
        {**base, "audit": {"syslog": {"address": "siem.contoso.local:6514", "ca_file": str(certs["ca"][0])}}}
    )
    s = cfg.audit.syslog
    assert (s.host, s.port, s.tls, s.facility, s.queue_size) == ("siem.contoso.local", 6514, True, "authpriv", 10000)
    assert cfg.audit_syslog is s
    assert from_dict(base).audit.syslog is None
    v6 = from_dict({**base, "audit": {"syslog": {"address": "[2001:db8::5]:601", "tls": False}}})
    assert (v6.audit.syslog.host, v6.audit.syslog.port) == ("2001:db8::5", 601)
    for bad, key in (
        ({"tls": False}, "audit.syslog.address"),
        ({"address": "siem"}, "audit.syslog.address"),
        ({"address": "siem:6514", "facility": "nope"}, "audit.syslog.facility"),
        ({"address": "siem:6514", "tls": False, "ca_file": str(certs["ca"][0])}, "audit.syslog.tls"),
        ({"address": "siem:6514", "ca_file": str(tmp_path / "none.pem")}, "audit.syslog.ca_file"),
        (
            {"address": "siem:6514", "cert_file": str(certs["client"][0]), "key_file": str(certs["server"][1])},
            "audit.syslog.cert_file",
        ),
        ({"address": "siem:6514", "queue_size": 0}, "audit.syslog.queue_size"),
        ({"address": "siem:6514", "port": 1}, "audit.syslog.port"),
    ):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            from_dict({**base, "audit": {"syslog": {**bad}}})
    with pytest.raises(ConfigError, match=r"audit\.nope"):
        from_dict({**base, "audit": {"nope": 1}})
    assert Path(certs["ca"][0]).is_file()


def test_close_does_not_wait_for_a_receiver_that_never_answers(repo, certs):
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts (the kernel does), never answers the TLS ClientHello
    try:
        sink = SyslogSink(
            SyslogConfig(host="127.0.0.1", port=silent.getsockname()[1], ca_file=certs["ca"][0], timeout=30)
        )
        a = AuditLog(repo, None, syslog=sink)
        for i in range(3):
            sign_in(a, i)
        time.sleep(0.2)  # the sender is in the handshake now
        t0 = time.monotonic()
        a.close()
        assert time.monotonic() - t0 < 3.5  # 2 s to deliver, then it is left behind
        assert sink.sent == 0 and sink.dropped == 3
    finally:
        silent.close()
