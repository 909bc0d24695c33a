"""The SIP relay (issue 18) end to end: a SIP client on pyspnego's NTLM initiator
(``ucgate.lab.sipclient``) → the relay (``ucgate.gateway.sip``) → the lab registrar
(``ucgate.lab.registrar``: a real NTLM acceptor, signed messages), with the id service, the
device partnerships and the store's events in-process (local users; the Samba AD versions are in
``test_sip_samba.py``)."""

from __future__ import annotations

import logging
import socket
import ssl
import time

import pytest

from ucgate.config import LockoutConfig, from_dict
from ucgate.gateway.sip import SipRelay, local_answer
from ucgate.gateway.sipconfig import SipConfig
from ucgate.id.api import AttemptContext
from ucgate.id.devices import DeviceService
from ucgate.id.events import EventFollower
from ucgate.id.factory import open_services
from ucgate.id.monitor import AccountMonitor
from ucgate.lab.registrar import Account, LabRegistrar
from ucgate.lab.sipclient import SipClient
from ucgate.protocols.sip import parse_message
from ucgate.store import PartnershipStore

PW = "Passw0rd!"
BOB_PW = "B0b-Passw0rd!"
ALLOW = {"default_action": "allowed", "require_second_factor": False}


class SipLab:
    """ids + devices + lab registrar + relay, on the test loop thread."""

    def __init__(
        self,
        tmp_path,
        loop_thread,
        tls_files,
        *,
        policy=None,
        lockout=None,
        devices=True,
        ca_bundle=None,
        follow=False,
        **sip,
    ) -> None:
        self.lt, self.cert, self.key = loop_thread, *tls_files
        (tmp_path / "data").mkdir(parents=True, exist_ok=True)
        (tmp_path / "keys").mkdir(mode=0o700, exist_ok=True)
        self.store = f"sqlite:///{tmp_path / 'data' / 'ucgate.db'}"
        self.key_file = tmp_path / "keys" / "ucgate.key"
        self.ids = open_services(
            store_url=self.store,
            key_file=self.key_file,
            audit_file=None,
            lockout=lockout or LockoutConfig(user_failures=3, ip_failures=50, window=900),
            netbios_domains=("CONTOSO",),
        )
        for name in ("alice", "bob"):
            self.ids.users.add(name, upn=f"{name}@contoso.com", sip_uri=f"sip:{name}@contoso.com")
        self.devices = self.device_service(self.ids, policy if policy is not None else ALLOW) if devices else None
        self.registrar = LabRegistrar(
            self.cert,
            self.key,
            [Account("alice", PW, "alice@contoso.com"), Account("bob", BOB_PW, "bob@contoso.com")],
            tls_dsk={"alice-cert": "alice@contoso.com"},
        )
        loop_thread.run(self.registrar.start())
        self.settings = SipConfig(
            enabled=True,
            listen_host="127.0.0.1",
            listen_port=0,
            tls_cert=self.cert,
            tls_key=self.key,
            edge_host="127.0.0.1",
            edge_port=self.registrar.port,
            server_name="localhost",
            ca_bundle=ca_bundle or self.cert,
            handshake_timeout=5,
            **sip,
        )
        self.relay = SipRelay(
            self.settings, self.ids.credentials, self.ids.audit, devices=self.devices, failure_floor=0.0
        )
        self.ids.bus.subscribe(self.relay.post_event)
        self.follower = None
        if follow:  # events other processes write reach this one through the store
            self.follower = EventFollower(self.ids.bus, self.ids.bus.outbox)
            self.follower.start()
        loop_thread.run(self.relay.start())
        self.clients: list[SipClient] = []

    @staticmethod
    def device_service(ids, policy):
        def aliases(user):
            rec = ids.users.get(user)
            return [a for a in ((rec.upn, rec.sip_uri) if rec else ()) if a]

        return DeviceService(
            PartnershipStore(ids.components.repo.engine), ids.audit, ids.bus, defaults=policy, user_aliases=aliases
        )

    def client(self, aor="alice@contoso.com", login="CONTOSO\\alice", password=PW, **kw) -> SipClient:
        c = SipClient(
            "127.0.0.1", self.relay.port, aor=aor, ca_file=str(self.cert), login=login, password=password, **kw
        )
        self.clients.append(c.connect())
        return c

    def audit(self, action=None, n=200):
        return [e for e in self.ids.audit.tail(n) if action is None or e.action == action]

    def raw(self, data: bytes, timeout: float = 3.0) -> bytes:
        """Send bytes on a new connection; what comes back until the relay closes it."""
        ctx = ssl.create_default_context(cafile=str(self.cert))
        with (
            socket.create_connection(("127.0.0.1", self.relay.port), timeout=timeout) as raw,
            ctx.wrap_socket(raw, server_hostname="localhost") as s,
        ):
            s.sendall(data)
            out = b""
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                try:
                    chunk = s.recv(65536)
                except TimeoutError:
                    raise AssertionError(f"the relay kept the connection open; got {out[:200]!r}") from None
                except (ConnectionError, ssl.SSLError):
                    break
                if not chunk:
                    break
                out += chunk
            return out

    def close(self) -> None:
        for c in self.clients:
            c.close()
        self.lt.run(self.relay.stop())
        self.lt.run(self.registrar.stop())
        if self.follower is not None:
            self.follower.stop()
        self.ids.close()


@pytest.fixture
def make_lab(tmp_path, loop_thread, tls_files):
    labs = []

    def make(**kw) -> SipLab:
        lab = SipLab(tmp_path / f"lab{len(labs)}", loop_thread, tls_files, **kw)
        labs.append(lab)
        return lab

    yield make
    for lab in labs:
        lab.close()


def _wait(predicate, timeout=3.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


# --- a registered PC ---------------------------------------------------------------------------
def test_registered_pc_stays_registered_and_every_message_passes_unchanged(make_lab):
    lab = make_lab()
    c = lab.client()
    answer = c.register()
    assert answer is not None and answer.status == 200, answer and answer.raw
    assert "alice" in lab.relay.live_users()
    for _ in range(2):
        assert (
            c.request(
                "SUBSCRIBE",
                headers=["Event: vnd-microsoft-roaming-self", "Accept: application/vnd-microsoft-roaming-self+xml"],
            ).status
            == 200
        )
        assert (
            c.request(
                "MESSAGE",
                "sip:bob@contoso.com",
                to="sip:bob@contoso.com",
                headers=["Content-Type: text/plain; charset=UTF-8"],
                body="héllo ✓".encode(),
            ).status
            == 200
        )
        c.send_raw(b"\r\n\r\n")  # a keep-alive ping: the Edge's pong comes back
        assert c.register().status == 200  # a signed refresh
    assert len(c.notifies) == 2  # the Edge's NOTIFYs came through, and our 200s went back
    # byte for byte: what the client sent is what the registrar received (signatures verified)
    assert lab.registrar.received == c.sent
    assert lab.registrar.bad_signatures == 0 and c.server_signatures_verified == 7
    reg = lab.registrar.registrations["alice@contoso.com"]
    assert reg.device_id == c.instance
    signs = lab.audit("sign-in")
    assert any(
        e.result == "allow" and e.details.get("method") == "sip" and e.service == "sip" and e.device == c.instance
        for e in signs
    )
    checks = lab.audit("device-check")
    assert checks and checks[0].service == "sip" and checks[0].result == "allow"
    assert checks[0].details.get("client_kind") == "pc-external"


def test_tls_dsk_registration_passes(make_lab):
    lab = make_lab()
    c = lab.client(login=None, password=None, cert_token="alice-cert")
    assert c.register("TLS-DSK").status == 200
    assert (
        c.request(
            "MESSAGE", "sip:bob@contoso.com", to="sip:bob@contoso.com", body=b"x", headers=["Content-Type: text/plain"]
        ).status
        == 200
    )
    assert lab.registrar.received == c.sent and lab.registrar.bad_signatures == 0
    # the ClientHello leg's 401 continued the handshake: only the final leg counted, as a success
    signs = [e for e in lab.audit("sign-in") if e.details.get("method") == "sip"]
    assert [e.result for e in signs] == ["allow"]


# --- devices -----------------------------------------------------------------------------------
def test_a_new_pc_is_quarantined_until_approved(make_lab):
    lab = make_lab(policy={"default_action": "quarantined", "require_second_factor": False})
    c = lab.client(epid="0a1b2c3d4e")
    answer = c.register()
    assert answer is not None and answer.status == 403
    assert "quarantined" in answer.get("ms-diagnostics") and 'source="ucgate"' in answer.get("ms-diagnostics")
    assert c.is_closed_by_server(2.0)
    assert _wait(lambda: "alice@contoso.com" not in lab.registrar.registrations)  # dropped with its connection
    assert "alice" not in lab.relay.live_users()
    [p] = lab.devices.list(user="alice")
    assert p.state == "quarantined" and p.device_id == c.instance
    # still quarantined on the next try
    c2 = lab.client(epid="0a1b2c3d4e")
    assert c2.register().status == 403
    lab.devices.approve(p.id, actor="cli:admin")
    c3 = lab.client(epid="0a1b2c3d4e")
    assert c3.register().status == 200
    assert (
        c3.request(
            "MESSAGE", "sip:bob@contoso.com", to="sip:bob@contoso.com", body=b"x", headers=["Content-Type: text/plain"]
        ).status
        == 200
    )


def test_max_devices_applies_to_sip(make_lab):
    lab = make_lab(policy={**ALLOW, "max_devices": 1})
    assert lab.client(epid="aaaa1").register().status == 200
    answer = lab.client(epid="bbbb2").register()
    assert answer.status == 403 and "too many devices" in answer.get("ms-diagnostics")


def test_blocking_a_pc_closes_its_sip_connection_within_a_second_the_other_stays(make_lab, tmp_path):
    lab = make_lab(follow=True)
    pc1, pc2 = lab.client(epid="1111aaaa"), lab.client(epid="2222bbbb")
    assert pc1.register().status == 200 and pc2.register().status == 200
    # the admin blocks pc1 from another process (the CLI, the admin UI): a row in the store's outbox
    admin = open_services(store_url=lab.store, key_file=lab.key_file, audit_file=None, lockout=LockoutConfig())
    try:
        devices = SipLab.device_service(admin, ALLOW)
        [p] = [p for p in devices.list(user="alice") if p.device_id == pc1.instance]
        started = time.monotonic()
        devices.block(p.id, actor="web:admin")
        assert pc1.is_closed_by_server(1.5)
        assert time.monotonic() - started < 1.0 + 0.2
    finally:
        admin.close()
    assert (
        pc2.request(
            "MESSAGE",
            "sip:bob@contoso.com",
            to="sip:bob@contoso.com",
            body=b"still here",
            headers=["Content-Type: text/plain"],
        ).status
        == 200
    )
    # and the blocked PC cannot come back
    again = lab.client(epid="1111aaaa")
    answer = again.register()
    assert answer.status == 403 and "blocked" in answer.get("ms-diagnostics")


def test_a_register_cannot_switch_device_or_user_on_a_connection(make_lab):
    lab = make_lab()
    c = lab.client(epid="1111aaaa")
    assert c.register().status == 200
    c.epid, c.instance = "2222bbbb", "00000000-0000-5000-8000-000000000000"
    raw = c.signed("REGISTER", headers=[c._contact()])
    c.send(raw)
    answer = c.answer()
    assert answer.status == 403 and answer.get("ms-diagnostics").startswith("1002;")
    assert raw not in lab.registrar.received


# --- account state -----------------------------------------------------------------------------
def test_disabling_the_user_closes_sip_and_refuses_every_scheme(make_lab):
    lab = make_lab()
    ntlm, dsk = (
        lab.client(epid="1111aaaa"),
        lab.client(login=None, password=None, cert_token="alice-cert", epid="2222bbbb"),
    )
    assert ntlm.register().status == 200 and dsk.register("TLS-DSK").status == 200
    bob = lab.client("bob@contoso.com", "CONTOSO\\bob", BOB_PW)
    assert bob.register().status == 200
    lab.ids.users.disable("alice", actor="cli:admin")
    assert ntlm.is_closed_by_server(1.5) and dsk.is_closed_by_server(1.5)
    checks = len(lab.registrar.ntlm_checks)
    for again in (lab.client(), lab.client(login=None, password=None, cert_token="alice-cert")):
        answer = again.register("NTLM" if again.login else "TLS-DSK")
        assert answer.status == 403 and "sign-in refused" in answer.get("ms-diagnostics")
    assert len(lab.registrar.ntlm_checks) == checks  # the Type 3 never reached the Edge
    assert not any(b"client-cert:" in m for m in lab.registrar.received[-3:])
    assert (
        bob.request(
            "MESSAGE",
            "sip:alice@contoso.com",
            to="sip:alice@contoso.com",
            body=b"x",
            headers=["Content-Type: text/plain"],
        ).status
        == 200
    )
    denied = [e for e in lab.audit("sign-in") if e.result == "deny" and e.details.get("method") == "sip"]
    assert {e.reason for e in denied} == {"user-disabled"}


class FakeDirectory:
    """What the account monitor reads: every user fine until told otherwise."""

    def __init__(self) -> None:
        from ucgate.id.directory import AccountState

        self.state = {}
        self.fine = AccountState(exists=True)

    def resolve(self, name):
        return name

    def account_state(self, user):
        return self.state.get(user, self.fine)


def test_the_account_monitor_sees_sip_registrations_and_cuts_a_locked_account(make_lab, loop_thread):
    from ucgate.id.directory import AccountState

    lab = make_lab()
    c = lab.client()
    assert c.register().status == 200
    directory = FakeDirectory()
    monitor = AccountMonitor(directory, lab.relay.live_users, lab.ids.bus, lab.ids.audit, interval=3600)
    assert loop_thread.run(monitor.check_once()) == 0
    directory.state["alice"] = AccountState(exists=True, locked=True)
    assert loop_thread.run(monitor.check_once()) == 1
    assert c.is_closed_by_server(1.5)
    assert _wait(lambda: "alice" not in lab.relay.live_users())


# --- the failure budget ------------------------------------------------------------------------
def test_wrong_passwords_over_sip_spend_the_budget_then_never_reach_the_edge(make_lab):
    lab = make_lab()  # user_failures = 3
    for _ in range(3):
        answer = lab.client(password="wrong").register()
        assert answer.status == 401  # the Edge's own answer
    assert [ok for _, ok in lab.registrar.ntlm_checks] == [False] * 3
    answer = lab.client(password="wrong").register()
    assert answer.status == 503
    assert answer.get("retry-after") and int(answer.get("retry-after")) >= 1
    assert answer.get("ms-diagnostics").startswith("1003;")
    assert len(lab.registrar.ntlm_checks) == 3  # the 4th Type 3 stayed here
    throttled = [e for e in lab.audit("sign-in") if e.reason == "throttled"]
    assert throttled and throttled[0].details.get("method") == "sip"


def test_one_budget_for_web_and_sip(make_lab):
    lab = make_lab()
    ctx = AttemptContext(client_ip="127.0.0.1", method="basic", service="ucwa")
    for _ in range(3):  # three wrong ASPs on the web side
        assert not lab.ids.credentials.verify_password_sync("alice", "WRONG-ASP", ctx).ok
    answer = lab.client().register()  # the right password, but the account's budget is spent
    assert answer.status == 503 and lab.registrar.ntlm_checks == []


def test_an_unknown_user_is_refused_here_and_charged(make_lab):
    lab = make_lab()
    c = lab.client("mallory@contoso.com", "CONTOSO\\mallory", "x")
    answer = c.register()
    assert answer.status == 403 and lab.registrar.ntlm_checks == []
    assert any(e.reason == "unknown-user" and e.details.get("method") == "sip" for e in lab.audit("sign-in"))


def test_a_kerberos_leg_the_edge_refuses_is_a_failure(make_lab):
    lab = make_lab()
    c = lab.client()
    c.send(c.build("REGISTER", headers=[c._contact()]))
    assert c.answer().status == 401
    token = "YIIBhgYJKoZIhvcSAQICAQBuggF1MIIBcaADAgEFoQMCAQ4="
    c.send(
        c.build(
            "REGISTER",
            headers=[c._contact()],
            auth=(
                'Authorization: Kerberos qop="auth", realm="SIP Communications Service", '
                f'targetname="sip/edge.contoso.com", gssapi-data="{token}", version=3'
            ),
        )
    )
    assert c.answer().status == 401
    assert _wait(lambda: any(e.reason == "registrar-refused" for e in lab.audit("sign-in")))


# --- who -----------------------------------------------------------------------------------------
def test_an_ntlm_user_other_than_the_from_user_is_refused(make_lab):
    lab = make_lab()
    c = lab.client("alice@contoso.com", "CONTOSO\\bob", BOB_PW)  # bob's password, alice's address
    answer = c.register()
    assert answer.status == 403 and "NTLM user" in answer.get("ms-diagnostics")
    assert c.is_closed_by_server(2.0)
    assert lab.registrar.ntlm_checks == []
    assert any(e.reason == "ntlm-user-mismatch" for e in lab.audit("sign-in"))


def test_a_upn_ntlm_user_of_the_same_account_passes(make_lab):
    lab = make_lab()
    assert lab.client(login="alice@contoso.com").register().status == 200


def test_requests_before_registration_or_from_someone_else_are_refused(make_lab):
    lab = make_lab()
    c = lab.client()
    c.send(c.build("MESSAGE", "sip:bob@contoso.com", to="sip:bob@contoso.com"))
    answer = c.answer()
    assert answer.status == 403 and lab.registrar.received == []
    c2 = lab.client()
    assert c2.register().status == 200
    c2.aor = "bob@contoso.com"  # a MESSAGE claiming to be from bob on alice's connection
    c2.send(c2.build("MESSAGE", "sip:carol@contoso.com", to="sip:carol@contoso.com"))
    assert c2.answer().status == 403


# --- bad input ---------------------------------------------------------------------------------------
def _register(extra: str = "", *, cl: str = "Content-Length: 0", body: bytes = b"") -> bytes:
    head = (
        "REGISTER sip:contoso.com SIP/2.0\r\n"
        "Via: SIP/2.0/TLS 127.0.0.1:5061;branch=z9hG4bK1\r\n"
        "From: <sip:alice@contoso.com>;tag=1;epid=0a1b2c3d4e\r\n"
        "To: <sip:alice@contoso.com>\r\nCall-ID: 1\r\nCSeq: 1 REGISTER\r\n" + extra + cl + "\r\n\r\n"
    )
    return head.encode() + body


BAD_INPUT = {
    "oversized-message": (_register(cl="Content-Length: 2000000"), "message-too-large"),
    "oversized-head": (
        _register("X-Pad: " + "a" * 8000 + "\r\n" + ("X-Pad2: " + "b" * 8000 + "\r\n") * 13),
        "head-too-large",
    ),
    "second-content-length": (_register("l: 0\r\n"), "duplicate-content-length"),
    "folded-header": (_register("Subject: one\r\n two\r\n"), "obs-fold"),
    "nul-in-header": (_register("Subject: a\x00b\r\n"), "bad-header-value"),
    "bare-lf": (_register("Subject: a\nb\r\n"), "bare-cr-or-lf"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_input_is_refused_logged_audited_and_never_reaches_the_edge(make_lab, case, caplog):
    lab = make_lab()
    data, reason = BAD_INPUT[case]
    with caplog.at_level(logging.INFO, logger="ucgate.sip"):
        out = lab.raw(data)
        assert _wait(lambda: any(e.reason == reason for e in lab.audit("sip-refused")))
    assert out == b""  # nothing to answer: a message that does not frame has no Via to answer to
    assert any(reason in r.getMessage() for r in caplog.records)
    assert lab.registrar.received == [] and lab.registrar.connections == 0


@pytest.mark.parametrize(
    "auth, reason",
    [
        (
            'Authorization: Digest username="alice", realm="x", nonce="1", uri="sip:x", response="ab"\r\n',
            "unknown-auth-scheme",
        ),
        (
            'Authorization: NTLM realm="a", targetname="b"\r\nProxy-Authorization: NTLM realm="a", targetname="b"\r\n',
            "several-credentials",
        ),
        ('Authorization: NTLM realm="a", targetname="b", gssapi-data="bm90IG50bG0="\r\n', "bad-gssapi-data"),
    ],
)
def test_bad_credentials_get_a_local_answer_and_a_close(make_lab, auth, reason, caplog):
    lab = make_lab()
    with caplog.at_level(logging.INFO, logger="ucgate.sip"):
        out = lab.raw(_register(auth))
        assert _wait(lambda: any(e.reason == reason for e in lab.audit("sip-refused")))
    answer = parse_message(out)
    assert answer.status in (400, 403) and answer.call_id == "1" and answer.to.tag
    assert answer.get("ms-diagnostics").startswith("1000;")
    assert any(reason in r.getMessage() for r in caplog.records)
    assert lab.registrar.received == []


def test_an_unknown_scheme_on_a_registered_connection_is_refused(make_lab):
    lab = make_lab()
    c = lab.client()
    assert c.register().status == 200
    bad = c.build("MESSAGE", "sip:bob@contoso.com", to="sip:bob@contoso.com", auth="Authorization: Basic YWxpY2U6eA==")
    c.send_raw(bad)
    answer = c.answer()
    assert answer.status == 400 and answer.get("ms-diagnostics").startswith("1000;")
    assert c.is_closed_by_server(2.0) and bad not in lab.registrar.received


def test_a_from_to_mismatch_in_register_is_refused(make_lab):
    lab = make_lab()
    out = lab.raw(_register().replace(b"To: <sip:alice@", b"To: <sip:bob@"))
    assert parse_message(out).status == 403 and lab.registrar.received == []


def test_an_idle_client_that_sends_nothing_is_closed(make_lab, loop_thread):
    lab = make_lab()
    ctx = ssl.create_default_context(cafile=str(lab.cert))
    with (
        socket.create_connection(("127.0.0.1", lab.relay.port), timeout=8) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost") as s,
    ):
        started = time.monotonic()
        assert s.recv(10) == b""
        assert time.monotonic() - started < 7  # handshake_timeout = 5
    assert lab.registrar.connections == 0


def test_keepalive_before_registration_is_answered_here(make_lab):
    lab = make_lab()
    c = lab.client()
    c.send_raw(b"\r\n\r\n")
    ev = c.recv(2)
    assert ev is not None and getattr(ev, "raw", None) == b"\r\n"
    assert lab.registrar.connections == 0


def test_behind_haproxy_the_proxy_header_is_the_client_address(make_lab):
    import ipaddress

    lab = make_lab(proxy_protocol=True)
    lab.relay.trusted_proxies = (ipaddress.ip_network("127.0.0.1/32"),)
    header = b"PROXY TCP4 203.0.113.7 127.0.0.1 40000 5061\r\n"
    c = lab.client(password="wrong", preamble=header)
    assert c.register().status == 401
    assert _wait(
        lambda: any(
            e.client_address == "203.0.113.7" and e.details.get("method") == "sip" for e in lab.audit("sign-in")
        )
    )


# --- the Edge's side ----------------------------------------------------------------------------------
def test_an_edge_whose_certificate_does_not_verify_is_not_used(make_lab, tmp_path):
    from ucgate.gateway.tls import make_self_signed

    other_cert, other_key = tmp_path / "other.crt", tmp_path / "other.key"
    make_self_signed(other_cert, other_key, ["localhost"])
    lab = make_lab(ca_bundle=other_cert)
    answer = lab.client().register()
    assert answer.status == 503 and answer.get("retry-after")
    assert lab.registrar.received == []


def test_local_answer_copies_the_transaction_fields_and_parses_back():
    req = parse_message(_register())
    out = parse_message(local_answer(req, 403, 'the "reason"\x00', retry_after=2.2))
    assert out.status == 403 and out.call_id == req.call_id and out.cseq == req.cseq
    assert out.from_ == req.from_ and out.to.uri == req.to.uri and out.to.tag
    assert out.get("ms-diagnostics") == '1000;reason="the reason";source="ucgate"'
    assert out.get("retry-after") == "3" and out.body == b""
    assert [v.raw for v in out.fields("via")] == [v.raw for v in req.fields("via")]


# --- configuration and wiring -----------------------------------------------------------------------
def _config(tmp_path, tls_files, registrar_port, **sip):
    cert, key = tls_files
    (tmp_path / "data").mkdir(exist_ok=True)
    (tmp_path / "keys").mkdir(mode=0o700, exist_ok=True)
    return {
        "gateway": {"listen": "127.0.0.1:0", "tls_cert": str(cert), "tls_key": str(key)},
        "upstreams": {"frontend": {"url": "http://127.0.0.1:9"}},
        "data": {"dir": str(tmp_path / "data")},
        "store": {"key_file": str(tmp_path / "keys" / "ucgate.key")},
        "auth": {"netbios_domain": "CONTOSO", "dns_domain": "contoso.com", "failure_floor": 0},
        "devices": {"default_action": "allowed", "require_second_factor": False},
        "sip": {
            "enabled": True,
            "listen": "127.0.0.1:0",
            "edge": f"127.0.0.1:{registrar_port}",
            "server_name": "localhost",
            "ca_bundle": str(cert),
            **sip,
        },
    }


@pytest.mark.parametrize(
    "change, key",
    [
        ({"edge": ""}, "sip.edge"),
        ({"edge": "nohost"}, "sip.edge"),
        ({"proxy_protocol": True}, "sip.proxy_protocol"),
        ({"ca_bundle": "/nonexistent"}, "sip.ca_bundle"),
        ({"idle_timeout": 0}, "sip.idle_timeout"),
        ({"bogus": 1}, "sip.bogus"),
    ],
)
def test_sip_configuration_errors_name_the_key(tmp_path, tls_files, change, key):
    from ucgate.config import ConfigError

    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        from_dict(_config(tmp_path, tls_files, 5061, **change))


def test_ucgate_serve_wiring_runs_the_relay_with_the_gateway(tmp_path, tls_files, loop_thread):
    from ucgate.app import build_node

    cert, key = tls_files
    registrar = LabRegistrar(cert, key, [Account("alice", PW, "alice@contoso.com")])
    loop_thread.run(registrar.start())
    config = from_dict(_config(tmp_path, tls_files, registrar.port))
    assert config.sip.tls_cert == cert  # the gateway's certificate by default
    node = build_node(config)
    node.ids.users.add("alice", upn="alice@contoso.com", sip_uri="sip:alice@contoso.com")
    loop_thread.run(node.start())
    try:
        c = SipClient(
            "127.0.0.1", node.sip.port, aor="alice@contoso.com", ca_file=str(cert), login="CONTOSO\\alice", password=PW
        ).connect()
        assert c.register().status == 200
        assert node.sip.live_users().keys() == {"alice"}
        node.ids.users.sign_out("alice", actor="cli:admin")  # an event: the SIP connection goes too
        assert c.is_closed_by_server(1.5)
        c.close()
    finally:
        loop_thread.run(node.stop())
        loop_thread.run(registrar.stop())


def test_the_relay_runs_over_a_remote_id_service(tmp_path, tls_files):
    """[sip] with [id_service] url: the relay over the id service's API (end to end in
    test_sip_split.py)."""
    import asyncio

    from ucgate.app import build_node
    from ucgate.gateway.idclient import RemoteCredentials

    raw = _config(tmp_path, tls_files, 5061)
    secret = tmp_path / "id.secret"
    secret.write_text("x" * 40)
    secret.chmod(0o600)
    raw["id_service"] = {"url": "https://127.0.0.1:9443", "secret_file": str(secret)}
    node = build_node(from_dict(raw))
    assert node.ids is None and node.sip is not None and node.sip.ids is node.remote
    assert isinstance(node.remote, RemoteCredentials) and node.sip.audit is None
    asyncio.run(node.remote.aclose())


def test_sip_metrics_count_messages_and_refusals(make_lab):
    from ucgate import metrics

    lab = make_lab()
    before = metrics.SIP_MESSAGES.values.get(("client",), 0)
    c = lab.client()
    assert c.register().status == 200
    assert metrics.SIP_MESSAGES.values.get(("client",), 0) >= before + 3
    lab.raw(_register("l: 0\r\n"))
    text = metrics.render().decode()
    assert 'ucgate_sip_refusals_total{reason="duplicate-content-length"}' in text
    assert "ucgate_sip_registered_connections" in text
    assert 'ucgate_id_sign_ins_total{method="sip",reason="ok",result="allow"}' in text


def test_asyncio_is_not_blocked_by_a_slow_edge(make_lab):
    """A client whose Edge answer is pending does not hold up another client."""
    lab = make_lab()
    a, b = lab.client(), lab.client("bob@contoso.com", "CONTOSO\\bob", BOB_PW)
    a.send(a.build("REGISTER", headers=[a._contact()]))
    assert b.register().status == 200
    assert a.answer().status == 401
