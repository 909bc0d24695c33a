"""The SIP relay in split mode (``[id_service] url``): the relay in the DMZ reaches the id service
only over its HTTPS API (a real uvicorn id service over TLS, ``tests/id/test_http_api.IdServer``):
the failure budget (``POST /v1/sip/attempt|settle``), the account of a signed REGISTER, the
device decision (``POST /v1/devices/check``), live blocking over the event stream, the session
report, failing closed, and the contract (every call the relay makes is accepted)."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from ucgate.config import LockoutConfig, from_dict
from ucgate.gateway.idclient import RemoteCredentials, RemoteDeviceChecker
from ucgate.gateway.sip import SipRelay
from ucgate.gateway.sipconfig import SipConfig
from ucgate.id.api import AttemptContext, SipAttemptRequest, SipOutcome, SipSettle
from ucgate.id.factory import open_services
from ucgate.lab.registrar import Account, LabRegistrar
from ucgate.lab.sipclient import SipClient

from ..id.test_http_api import SECRET, IdServer
from ..support import free_port
from .test_sip_relay import ALLOW, BOB_PW, PW, SipLab, _config, _wait


class Recorder:
    """ASGI middleware: (method, path, status) of every call the id service answered."""

    def __init__(self, app) -> None:
        self.app, self.calls = app, []
        self.state = app.state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def recording(message):
            if message["type"] == "http.response.start":
                self.calls.append((scope["method"], scope["path"], message["status"]))
            await send(message)

        await self.app(scope, receive, recording)


class SplitLab:
    """The id service (store, devices, API under uvicorn) on one side; the relay with a
    RemoteCredentials and a RemoteDeviceChecker, and the lab registrar, on the other."""

    def __init__(self, tmp_path, loop_thread, tls_files, *, policy=None) -> None:
        self.lt, (self.cert, self.key) = loop_thread, tls_files
        (tmp_path / "data").mkdir(parents=True, exist_ok=True)
        (tmp_path / "keys").mkdir(mode=0o700, exist_ok=True)
        self.ids = open_services(
            store_url=f"sqlite:///{tmp_path / 'data' / 'ucgate.db'}",
            key_file=tmp_path / "keys" / "ucgate.key",
            audit_file=None,
            lockout=LockoutConfig(user_failures=3, ip_failures=50, window=900),
            netbios_domains=("CONTOSO",),
        )
        for name in ("alice", "bob"):
            self.ids.users.add(name, upn=f"{name}@contoso.com", sip_uri=f"sip:{name}@contoso.com")
        self.devices = SipLab.device_service(self.ids, policy if policy is not None else ALLOW)
        self.idsrv = IdServer(self.ids, self.cert, self.key, free_port(), devices=self.devices)
        self.recorder = self.idsrv.app = Recorder(self.idsrv.app)
        self.idsrv.start()
        self.registrar = LabRegistrar(
            self.cert,
            self.key,
            [Account("alice", PW, "alice@contoso.com"), Account("bob", BOB_PW, "bob@contoso.com")],
            tls_dsk={"alice-cert": "alice@contoso.com"},
        )
        loop_thread.run(self.registrar.start())
        settings = SipConfig(
            enabled=True,
            listen_host="127.0.0.1",
            listen_port=0,
            tls_cert=self.cert,
            tls_key=self.key,
            edge_host="127.0.0.1",
            edge_port=self.registrar.port,
            server_name="localhost",
            ca_bundle=self.cert,
            handshake_timeout=5,
        )

        async def build():
            self.remote = RemoteCredentials(self.idsrv.url, secret=SECRET, ca_file=self.cert, report_interval=0.2)
            self.relay = SipRelay(
                settings, self.remote, None, devices=RemoteDeviceChecker(self.remote), failure_floor=0.0
            )
            await self.relay.start()
            self.remote.start(self.relay.on_event, self.relay.live_users)
            await asyncio.wait_for(self.remote.events_connected.wait(), 10)

        loop_thread.run(build())
        self.clients: list[SipClient] = []

    def client(self, aor="alice@contoso.com", login="CONTOSO\\alice", password=PW, **kw) -> SipClient:
        c = SipClient(
            "127.0.0.1", self.relay.port, aor=aor, ca_file=str(self.cert), login=login, password=password, **kw
        )
        self.clients.append(c.connect())
        return c

    def audit(self, action=None):
        return [e for e in self.ids.audit.tail(200) if action is None or e.action == action]

    def budget_level(self, user="alice") -> float:
        """The account's failure buckets (both classes) on the id service's store."""
        key = self.ids.credentials.resolve_account(user).key
        with self.ids.components.repo.engine.connect() as c:
            rows = c.exec_driver_sql("SELECT bucket, level FROM budget_buckets").all()
        return sum(level for bucket, level in rows if bucket in (f"u0:{key}", f"u1:{key}"))

    def close(self) -> None:
        for c in self.clients:
            c.close()
        self.lt.run(self.relay.stop())
        self.lt.run(self.remote.aclose())
        self.lt.run(self.registrar.stop())
        self.idsrv.close()
        self.ids.close()


@pytest.fixture
def split(tmp_path, loop_thread, tls_files):
    labs = []

    def make(**kw) -> SplitLab:
        lab = SplitLab(tmp_path / f"lab{len(labs)}", loop_thread, tls_files, **kw)
        labs.append(lab)
        return lab

    yield make
    for lab in labs:
        lab.close()


def test_a_registered_pc_signs_in_through_a_remote_id_service(split):
    lab = split()
    c = lab.client()
    answer = c.register()
    assert answer is not None and answer.status == 200, answer and answer.raw
    assert (
        c.request(
            "MESSAGE", "sip:bob@contoso.com", to="sip:bob@contoso.com", body=b"hi", headers=["Content-Type: text/plain"]
        ).status
        == 200
    )
    assert c.register().status == 200  # a signed refresh
    assert lab.registrar.received == c.sent and lab.registrar.bad_signatures == 0
    # the id service audited the sign-in and decided the device; the reservation is settled
    assert any(
        e.result == "allow" and e.details.get("method") == "sip" and e.device == c.instance
        for e in lab.audit("sign-in")
    )
    assert any(e.service == "sip" and e.result == "allow" for e in lab.audit("device-check"))
    assert lab.recorder.state.sip.open == 0
    # the relay's users reach the id service's account monitor (PUT /v1/sessions)
    assert _wait(lambda: "alice" in lab.recorder.state.sessions.live_users())


def test_tls_dsk_handshake_legs_are_continued_not_charged(split):
    lab = split()
    c = lab.client(login=None, password=None, cert_token="alice-cert")
    assert c.register("TLS-DSK").status == 200
    signs = [e for e in lab.audit("sign-in") if e.details.get("method") == "sip"]
    assert [e.result for e in signs] == ["allow"]
    assert lab.recorder.state.sip.open == 0


def test_wrong_passwords_charge_the_shared_budget_on_the_id_service(split):
    lab = split()  # user_failures = 3
    for n in range(3):
        assert lab.client(password="wrong").register().status == 401  # the Edge's answer
        assert _wait(lambda n=n: lab.budget_level() > n + 0.9 and lab.recorder.state.sip.open == 0)
    assert [e.reason for e in lab.audit("sign-in") if e.details.get("method") == "sip"] == ["wrong-password"] * 3
    answer = lab.client(password="wrong").register()
    assert answer.status == 503 and int(answer.get("retry-after")) >= 1
    assert answer.get("ms-diagnostics").startswith("1003;")
    assert len(lab.registrar.ntlm_checks) == 3  # the 4th never reached the Edge
    # one budget with the web side: the right ASP is refused too now, on the id service
    ctx = AttemptContext("127.0.0.1", "basic", "ucwa")
    assert lab.ids.credentials.verify_password_sync("alice", "whatever", ctx).reason == "throttled"


def test_an_ntlm_user_other_than_the_from_user_is_refused_by_the_id_service(split):
    lab = split()
    answer = lab.client("alice@contoso.com", "CONTOSO\\bob", BOB_PW).register()
    assert answer.status == 403 and "NTLM user" in answer.get("ms-diagnostics")
    assert lab.registrar.ntlm_checks == []
    assert any(e.reason == "ntlm-user-mismatch" for e in lab.audit("sign-in"))


def test_blocking_a_pc_on_the_id_service_cuts_its_sip_connection_within_a_second(split):
    lab = split()
    pc1, pc2 = lab.client(epid="1111aaaa"), lab.client(epid="2222bbbb")
    assert pc1.register().status == 200 and pc2.register().status == 200
    [p] = [p for p in lab.devices.list(user="alice") if p.device_id == pc1.instance]
    started = time.monotonic()
    lab.devices.block(p.id, actor="web:admin")  # on the id service: the event goes down the stream
    assert pc1.is_closed_by_server(1.5)
    assert time.monotonic() - started < 1.0 + 0.2
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
    answer = lab.client(epid="1111aaaa").register()
    assert answer.status == 403 and "blocked" in answer.get("ms-diagnostics")
    # and disabling the user cuts the other one
    lab.ids.users.disable("alice", actor="cli:admin")
    assert pc2.is_closed_by_server(1.5)


def test_id_service_down_the_register_gets_a_local_503_fail_closed(split):
    lab = split()
    lab.idsrv.stop()
    c = lab.client()
    started = time.monotonic()
    answer = c.register()
    assert answer.status == 503 and int(answer.get("retry-after")) >= 1
    diag = answer.get("ms-diagnostics")
    assert diag.startswith("1003;") and 'source="ucgate"' in diag and "unavailable" in diag
    assert lab.registrar.ntlm_checks == []  # nothing reached the Edge
    assert c.is_closed_by_server(2.0)
    assert time.monotonic() - started < 5.0
    lab.idsrv.start()  # back: sign-ins work again
    deadline, status = time.monotonic() + 10, None
    while time.monotonic() < deadline:
        status = lab.client().register().status
        if status == 200:
            break
        time.sleep(0.3)
    assert status == 200


def test_every_call_the_relay_makes_is_accepted_by_the_id_service(split):
    """The contract: whatever the relay sends (success, wrong password, mismatch, unknown user,
    TLS-DSK continuation, Kerberos refused, a signed refresh, devices, sessions), the id service
    answers 200/204, never a 400 (which the client would turn into a 503)."""
    lab = split()
    c = lab.client()
    assert c.register().status == 200 and c.register().status == 200
    assert lab.client(password="wrong").register().status == 401
    assert lab.client("alice@contoso.com", "CONTOSO\\bob", BOB_PW).register().status == 403
    assert lab.client("mallory@contoso.com", "CONTOSO\\mallory", "x").register().status == 403
    assert lab.client(login="alice@contoso.com").register().status == 200
    assert lab.client(login=None, password=None, cert_token="alice-cert").register("TLS-DSK").status == 200
    k = lab.client()
    k.send(k.build("REGISTER", headers=[k._contact()]))
    assert k.answer().status == 401
    k.send(
        k.build(
            "REGISTER",
            headers=[k._contact()],
            auth=(
                'Authorization: Kerberos qop="auth", realm="SIP Communications Service", '
                'targetname="sip/edge.contoso.com", gssapi-data="YIIBhgYJKoZIhvcSAQICAQBuggF1MIIBcaADAgEFoQMCAQ4=", '
                "version=3"
            ),
        )
    )
    assert k.answer().status == 401
    assert _wait(lambda: lab.recorder.state.sip.open == 0)
    assert _wait(lambda: any(p == "/v1/sessions" for _, p, _ in lab.recorder.calls))
    calls = [x for x in lab.recorder.calls if x[1] != "/v1/events" and x[1] != "/v1/health"]
    paths = {p for _, p, _ in calls}
    assert {"/v1/sip/attempt", "/v1/sip/settle", "/v1/devices/check", "/v1/sessions"} <= paths
    assert all(status in (200, 204) for _, _, status in calls), calls
    outcomes = {e.reason for e in lab.audit("sign-in") if e.details.get("method") == "sip"}
    assert {"ok", "wrong-password", "ntlm-user-mismatch", "unknown-user", "registrar-refused"} <= outcomes


def test_settle_goes_to_the_issuer_and_unsettled_reservations_are_charged(split, loop_thread):
    lab = split()
    ctx = AttemptContext("192.0.2.9", "sip", "sip", device_id="dev", user_agent="ua")

    async def calls():
        a = await lab.remote.begin_sip(SipAttemptRequest("sip:bob@contoso.com", ctx, "bob", "CONTOSO"))
        b = await lab.remote.begin_sip(SipAttemptRequest("sip:bob@contoso.com", ctx))
        await lab.remote.settle_sip(SipSettle(a.token, SipOutcome.NOT_A_GUESS, "registrar-unavailable"))
        await lab.remote.settle_sip(SipSettle(a.token, SipOutcome.SUCCESS, "ok"))  # twice: unknown, logged
        return a, b

    a, _b = loop_thread.run(calls())
    assert a.verdict.ok and a.verdict.user == "bob" and a.token.startswith("0.") and a.expires_in > 0
    sip = lab.recorder.state.sip
    assert sip.open == 1  # b is held
    sip.clock = lambda: time.monotonic() + 3600
    assert sip.expire() == 1 and sip.open == 0
    reasons = [e.reason for e in lab.audit("sign-in") if e.username == "bob"]
    assert "sip-not-settled" in reasons and "registrar-unavailable" in reasons
    assert 0.9 < lab.budget_level("bob") < 1.1  # a's unit came back (not a guess), b's stays charged


@pytest.mark.parametrize(
    "path, body, field",
    [
        ("/v1/sip/attempt", {"context": {"client_ip": "192.0.2.1", "method": "sip", "service": "sip"}}, "user"),
        (
            "/v1/sip/attempt",
            {"user": "sip:a@b", "context": {"client_ip": "x", "method": "sip", "service": "sip"}},
            "context.client_ip",
        ),
        (
            "/v1/sip/attempt",
            {"user": "sip:a@b", "context": {"client_ip": "192.0.2.1", "method": "ntlm", "service": "sip"}},
            "context.method",
        ),
        (
            "/v1/sip/attempt",
            {
                "user": "sip:a@b",
                "ntlm_domain": "C",
                "context": {"client_ip": "192.0.2.1", "method": "sip", "service": "sip"},
            },
            "ntlm_domain",
        ),
        (
            "/v1/sip/attempt",
            {
                "user": "sip:a@b",
                "ntlm_user": 3,
                "context": {"client_ip": "192.0.2.1", "method": "sip", "service": "sip"},
            },
            "ntlm_user",
        ),
        ("/v1/sip/settle", {"outcome": "success", "reason": "ok"}, "token"),
        ("/v1/sip/settle", {"token": "t", "outcome": "maybe", "reason": "ok"}, "outcome"),
        ("/v1/sip/settle", {"token": "t", "outcome": "failure", "reason": "x" * 65}, "reason"),
    ],
)
def test_malformed_sip_calls_are_400_naming_the_field(split, tls_files, path, body, field):
    import ssl

    lab = split()
    with httpx.Client(
        base_url=lab.idsrv.url,
        verify=ssl.create_default_context(cafile=str(tls_files[0])),
        headers={"Authorization": "Bearer " + SECRET.decode()},
        timeout=10,
    ) as api:
        r = api.post(path, json=body)
        assert r.status_code == 400 and r.json()["field"] == field, r.text
        assert api.post(path, json=body, headers={"Authorization": "Bearer wrong-secret-xxxxxxxx"}).status_code == 401
        doc = api.get("/v1/openapi.json").json()
        assert path in doc["paths"]


def test_serve_wiring_split_mode_runs_the_relay_over_the_id_service(tmp_path, tls_files, loop_thread):
    """``build_node`` with ``[id_service] url`` and ``[sip]``: no store here, the relay over the
    remote client; a sign-out on the id service cuts the SIP connection (the event stream reaches
    the relay), and the relay's users are the node's live users."""
    from ucgate.app import build_node

    lab = SplitLab(tmp_path / "id", loop_thread, tls_files)  # its own relay is not used here
    try:
        raw = _config(tmp_path, tls_files, lab.registrar.port)
        secret = tmp_path / "id.secret"
        secret.write_bytes(SECRET)
        secret.chmod(0o600)
        raw["id_service"] = {"url": lab.idsrv.url, "ca_file": str(tls_files[0]), "secret_file": str(secret)}
        raw["store"] = {"key_file": str(tmp_path / "must-not-be-created.key")}
        node = build_node(from_dict(raw))
        assert node.ids is None and isinstance(node.sip.ids, RemoteCredentials)
        assert isinstance(node.sip.devices, RemoteDeviceChecker)
        assert not (tmp_path / "must-not-be-created.key").exists()
        loop_thread.run(node.start())
        try:

            async def connected():
                await asyncio.wait_for(node.remote.events_connected.wait(), 10)

            loop_thread.run(connected())
            c = SipClient(
                "127.0.0.1",
                node.sip.port,
                aor="alice@contoso.com",
                ca_file=str(tls_files[0]),
                login="CONTOSO\\alice",
                password=PW,
            ).connect()
            assert c.register().status == 200
            assert "alice" in node.live_users()
            lab.ids.users.sign_out("alice", actor="cli:admin")
            assert c.is_closed_by_server(1.5)
            c.close()
        finally:
            loop_thread.run(node.stop())
    finally:
        lab.close()


@pytest.mark.parametrize("outcome", list(SipOutcome), ids=str)
def test_every_outcome_the_relay_sends_is_settled_by_the_id_service(split, loop_thread, outcome, caplog):
    lab = split()
    ctx = AttemptContext("2001:db8::7", "sip", "sip", device_id="x" * 256, user_agent="UCCAPI/16.0 (é)")
    reason = {
        "success": "ok",
        "failure": "wrong-password",
        "not-a-guess": "registrar-unavailable",
        "continued": "continued",
    }[str(outcome)]

    async def calls():
        a = await lab.remote.begin_sip(SipAttemptRequest("sip:alice@contoso.com", ctx, "alice@contoso.com"))
        await lab.remote.settle_sip(SipSettle(a.token, outcome, reason))
        return a

    a = loop_thread.run(calls())
    assert a.verdict.ok, a
    sip = lab.recorder.state.sip
    assert sip.open == 0 and "unknown" not in caplog.text and "failed" not in caplog.text
    assert all(s in (200, 204) for _, p, s in lab.recorder.calls if p.startswith("/v1/sip/"))
    audited = [e.reason for e in lab.audit("sign-in") if e.details.get("method") == "sip"]
    assert audited == ([] if outcome is SipOutcome.CONTINUED else [reason])
