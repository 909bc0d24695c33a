"""The SfB mobile sign-in through the gateway (issue 7): autodiscover → 401 MsRtcOAuth → the
OAuth password grant with an ASP (+ one-time code) intercepted and verified by the gateway →
Bearer ``cwt=`` token from the simulated front end (``ucgate.lab.frontend``) → UCWA application
creation → requests. httpx is the client; the front end validates its own tokens."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import ssl
import time
from urllib.parse import urlencode

import httpx
import pytest
import uvicorn

from ucgate.config import LockoutConfig, from_dict
from ucgate.gateway.backend import BackendAuth
from ucgate.gateway.devices import DeviceGate
from ucgate.gateway.oauth import OAuthGrants, OAuthSettings
from ucgate.gateway.preauth import PreAuthenticator, PreAuthSettings
from ucgate.gateway.server import Gateway
from ucgate.id.devices import DeviceService
from ucgate.id.events import UserBlocked
from ucgate.id.factory import open_services
from ucgate.id.otp import OtpService, totp
from ucgate.id.twofactor import TwoFactorSettings
from ucgate.id.vault import VaultService
from ucgate.lab.frontend import create_app
from ucgate.store import PartnershipStore

from ..support import free_port, gateway_config

AUTODISCOVER = "/Autodiscover/AutodiscoverService.svc/root"
USER_DOC = AUTODISCOVER + "/oauth/user"
TOKEN = "/WebTicket/oauthtoken"
APPS = "/ucwa/oauth/v1/applications"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
DOMAIN_PASSWORD = "Domain-Pass-1!"


def start_frontend(loop_thread, **kwargs):
    port = free_port()
    app = create_app(**kwargs)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))

    async def start():
        task = asyncio.ensure_future(server.serve())
        for _ in range(200):
            if server.started:
                return task
            await asyncio.sleep(0.01)
        raise RuntimeError("lab front end did not start")

    loop_thread.run(start())
    return port, app.state.lab, server


@pytest.fixture
def frontend(loop_thread):
    port, lab, server = start_frontend(loop_thread, users={"alice": DOMAIN_PASSWORD})
    yield port, lab
    server.should_exit = True
    time.sleep(0.2)


def make_ids(tmp_path, **kw):
    (tmp_path / "data").mkdir(exist_ok=True)
    (tmp_path / "keys").mkdir(mode=0o700, exist_ok=True)
    s = open_services(
        store_url=f"sqlite:///{tmp_path / 'data' / 'ucgate.db'}",
        key_file=tmp_path / "keys" / "ucgate.key",
        audit_file=None,
        lockout=LockoutConfig(user_failures=4, ip_failures=500, window=900),
        **kw,
    )
    s.users.add("alice", upn="alice@contoso.com", sip_uri="sip:alice@contoso.com")
    s.users.add("bob", upn="bob@contoso.com", sip_uri="sip:bob@contoso.com")
    return s


@pytest.fixture
def ids(tmp_path):
    s = make_ids(tmp_path)
    yield s
    s.close()


class Lab:
    """The gateway (pre-authentication, device gate, OAuth interception) before ``port``."""

    def __init__(
        self,
        loop_thread,
        tls_files,
        port,
        ids,
        *,
        services=None,
        backends=None,
        vault=None,
        identity_header=None,
        devices=True,
        device_policy=None,
    ):
        self.ids = ids
        self.devices = DeviceService(
            PartnershipStore(ids.components.repo.engine),
            ids.audit,
            ids.bus,
            defaults=device_policy or {"default_action": "allowed", "require_second_factor": False},
            user_aliases=lambda u: [f"sip:{u}@contoso.com"],
        )
        self.gate = DeviceGate(self.devices) if devices else None
        overrides = {"identity_header": identity_header} if identity_header else {}
        cfg = from_dict(gateway_config(*tls_files, port, services=services or {}, **overrides))
        auth = PreAuthenticator(
            ids.credentials,
            PreAuthSettings(netbios_domain="CONTOSO", failure_floor=0),
            device_id_of=self.gate.device_id_of if self.gate else None,
        )
        self.oauth = OAuthGrants(
            ids.credentials, settings=OAuthSettings(netbios_domain="CONTOSO", failure_floor=0), vault=vault
        )

        async def start():
            g = Gateway(cfg, auth, devices=self.gate, backends=backends, oauth=self.oauth)
            await g.start()
            return g

        self.lt = loop_thread
        self.gateway = loop_thread.run(start())
        ids.bus.subscribe(self.gateway.on_event)
        self.cert = tls_files[0]
        self.url = f"https://127.0.0.1:{self.gateway.port}"

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, verify=ssl.create_default_context(cafile=str(self.cert)), trust_env=False, timeout=10
        )

    def stop(self):
        self.lt.run(self.gateway.stop())


@pytest.fixture
def make_lab(loop_thread, tls_files):
    labs = []

    def make(port, ids, **kw):
        lab = Lab(loop_thread, tls_files, port, ids, **kw)
        labs.append(lab)
        return lab

    yield make
    for lab in labs:
        lab.stop()


def grant(c: httpx.Client, user: str, password: str) -> httpx.Response:
    return c.post(
        TOKEN, content=urlencode({"grant_type": "password", "username": user, "password": password}), headers=FORM
    )


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def create_application(c, token, endpoint="3f2a8c1e-52b4-4b4e-9d0a-0c1f5e7a9b11"):
    return c.post(
        APPS,
        headers={
            **bearer(token),
            "Content-Type": "application/json",
            "User-Agent": "Skype for Business/6.25 (iPhone; iOS 16.5)",
        },
        content=json.dumps({"userAgent": "SfB iPhone", "endpointId": endpoint, "culture": "en-US"}),
    )


def sign_ins(ids, user):
    return [e for e in ids.audit.tail(500) if e.action == "sign-in" and e.username == user]


def mobile_sign_in(c: httpx.Client, password: str, user="alice@contoso.com") -> str:
    """Steps 1-3 of the SfB mobile sign-in; returns the token."""
    root = c.get(AUTODISCOVER)
    assert root.status_code == 200
    user_href = root.json()["_links"]["user"]["href"]
    assert "/oauth/user" in user_href
    r = c.get(USER_DOC)
    assert r.status_code == 401
    challenges = r.headers.get_list("www-authenticate")
    oauth = [v for v in challenges if v.startswith("MsRtcOAuth ")]
    assert oauth == [
        f'MsRtcOAuth href="https://127.0.0.1:{c.base_url.port}/WebTicket/oauthtoken",'
        'grant_type="urn:microsoft.rtc:windows,urn:microsoft.rtc:anonmeeting,password"'
    ]
    r = grant(c, user, password)
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["token_type"] == "Bearer" and doc["access_token"].startswith("cwt=")
    return doc["access_token"]


# --- the flow ---------------------------------------------------------------------------------


def test_sfb_mobile_flow_with_asp(frontend, ids, make_lab):
    port, fe = frontend
    lab = make_lab(port, ids)
    asp = ids.asps.create("alice", "iPhone")[1]
    with lab.client() as c:
        token = mobile_sign_in(c, asp)
        # root/oauth/user takes only a Bearer token at the front end: a 200 proves it was forwarded
        r = c.get(USER_DOC, headers=bearer(token))
        assert r.status_code == 200, r.text
        assert r.json()["_links"]["applications"]["href"].endswith(APPS)
        r = create_application(c, token)
        assert r.status_code == 201, r.text
        app_href = r.headers["location"]
        r = c.get(app_href + "/me", headers=bearer(token))
        assert r.status_code == 200 and r.json()["uri"] == "sip:alice@contoso.com"
        assert c.get(app_href + "/people/search", headers=bearer(token)).status_code == 200
    # the front end issued the token to alice; it never saw the ASP
    assert fe.tokens[token].user == "alice"
    allowed = [e for e in sign_ins(ids, "alice") if e.result == "allow"]
    assert len(allowed) == 1 and allowed[0].service == "oauth"  # one check, then the token
    # the device partnership was made at application creation, and the token is bound to it
    assert lab.devices.store.get("alice", "3f2a8c1e-52b4-4b4e-9d0a-0c1f5e7a9b11") is not None
    assert lab.oauth.tokens.get(token.encode()).device_id == "3f2a8c1e-52b4-4b4e-9d0a-0c1f5e7a9b11"
    assert "alice" in lab.gateway.live_users()  # the account monitor re-checks token holders


def test_unauthenticated_ucwa_gets_every_challenge(frontend, ids, make_lab):
    port, _ = frontend
    lab = make_lab(port, ids)
    with lab.client() as c:
        r = c.get(APPS)
    assert r.status_code == 401
    schemes = [v.split(" ")[0] for v in r.headers.get_list("www-authenticate")]
    assert schemes[:3] == ["Negotiate", "NTLM", "Basic"]
    assert "Bearer" in schemes and "MsRtcOAuth" in schemes


def test_wrong_asp_is_invalid_grant_and_counts(frontend, ids, make_lab):
    port, fe = frontend
    lab = make_lab(port, ids)
    ids.asps.create("alice", "iPhone")
    with lab.client() as c:
        r = grant(c, "alice@contoso.com", "wrong-asp-wrong-asp")
        assert r.status_code == 400 and r.json() == {"error": "invalid_grant"}
        assert r.headers["cache-control"] == "no-store"
        # the domain password is not accepted either (allow_domain_passwords is off)
        assert grant(c, "alice", DOMAIN_PASSWORD).status_code == 400
        assert grant(c, "mallory", "x").json() == {"error": "invalid_grant"}  # unknown: same answer
        for _ in range(3):
            r = grant(c, "alice", "again-wrong")
        assert r.status_code == 429 and "retry-after" in r.headers  # the failure budget (4)
        # malformed grants
        r = c.post(TOKEN, content="grant_type=password&username=alice", headers=FORM)
        assert r.status_code == 400 and r.json() == {"error": "invalid_request"}
        r = c.post(TOKEN, content="grant_type=password&" + "x" * 9000, headers=FORM)
        assert r.status_code == 413
    reasons = [e.reason for e in sign_ins(ids, "alice") if e.result == "deny"]
    assert reasons.count("wrong-password") == 4 and "throttled" in reasons
    assert not fe.tokens  # nothing reached the front end's token endpoint


def test_unknown_bearer_is_refused_with_the_oauth_challenge(frontend, ids, make_lab, loop_thread):
    port, fe = frontend
    lab = make_lab(port, ids)
    # a genuine token of the front end, but not obtained through the gateway
    real = httpx.post(
        f"http://127.0.0.1:{port}{TOKEN}",
        headers=FORM,
        trust_env=False,
        content=urlencode({"grant_type": "password", "username": "alice", "password": DOMAIN_PASSWORD}),
    ).json()["access_token"]
    with lab.client() as c:
        for token in (real, "cwt=AAEBHAEFAAAAAAAFFQAAAforged"):
            r = c.get(USER_DOC, headers=bearer(token))
            assert r.status_code == 401
            hs = r.headers.get_list("www-authenticate")
            assert any(v.startswith('Bearer trusted_issuers=""') for v in hs)
            assert any(v.startswith("MsRtcOAuth href=") for v in hs)
            assert create_application(c, token).status_code == 401
    assert not fe.applications


def test_token_dropped_on_device_block(frontend, ids, make_lab):
    port, _ = frontend
    lab = make_lab(port, ids)
    asp = ids.asps.create("alice", "iPhone")[1]
    with lab.client() as c:
        token = mobile_sign_in(c, asp)
        assert create_application(c, token).status_code == 201
        other = mobile_sign_in(c, asp)  # a second device of alice
        assert create_application(c, other, endpoint="aa2a8c1e-52b4-4b4e-9d0a-0c1f5e7a9b22").status_code == 201
        rec = lab.devices.store.get("alice", "3f2a8c1e-52b4-4b4e-9d0a-0c1f5e7a9b11")
        lab.devices.block(rec.id, actor="test")
    with lab.client() as c:  # the block closed the device's live connections
        r = c.get(USER_DOC, headers=bearer(token))
        assert r.status_code == 401 and "MsRtcOAuth" in r.headers["www-authenticate"] + " ".join(
            r.headers.get_list("www-authenticate")
        )
        assert c.get(USER_DOC, headers=bearer(other)).status_code == 200  # the other device goes on


def test_token_dropped_on_account_cut_off(frontend, ids, make_lab):
    port, _ = frontend
    lab = make_lab(port, ids)
    asp = ids.asps.create("alice", "iPhone")[1]
    bob_asp = ids.asps.create("bob", "iPhone")[1]
    with lab.client() as c:
        token = mobile_sign_in(c, asp)
        bob = mobile_sign_in(c, bob_asp, user="bob")
        assert c.get(USER_DOC, headers=bearer(token)).status_code == 200
        # what the account monitor publishes when AD says alice is locked/disabled: her live
        # connections are closed, and her token is gone
        ids.bus.publish(UserBlocked("alice", "account-disabled"))
    with lab.client() as c:
        assert c.get(USER_DOC, headers=bearer(token)).status_code == 401
        assert c.get(USER_DOC, headers=bearer(bob)).status_code == 200
        # disabled in ucgate: no new token either
        ids.users.disable("alice")
        assert grant(c, "alice", asp).status_code == 400


def test_token_expires_with_the_front_ends_lifetime(loop_thread, ids, make_lab):
    port, fe, server = start_frontend(loop_thread, users={}, token_lifetime=1)
    try:
        lab = make_lab(port, ids)
        asp = ids.asps.create("alice", "iPhone")[1]
        with lab.client() as c:
            token = mobile_sign_in(c, asp)
            assert c.get(USER_DOC, headers=bearer(token)).status_code == 200
            time.sleep(1.2)
            assert c.get(USER_DOC, headers=bearer(token)).status_code == 401
    finally:
        server.should_exit = True


def test_otp_appended_user_needs_the_code(frontend, tmp_path, make_lab):
    port, _ = frontend
    ids = make_ids(tmp_path, two_factor=TwoFactorSettings("otp-appended", (), 24.0))
    try:
        lab = make_lab(port, ids, device_policy={"default_action": "allowed", "require_second_factor": True})
        asp = ids.asps.create("alice", "iPhone")[1]
        otp = OtpService(ids.components.repo, ids.components.keyring, users=ids.users)
        e = otp.begin_enrolment("alice")
        secret = base64.b32decode(e.secret_b32 + "=" * (-len(e.secret_b32) % 8))
        if time.time() % 30 > 20:
            time.sleep(30 - time.time() % 30 + 0.2)
        step = int(time.time() // 30)
        assert otp.confirm_enrolment("alice", totp(secret, (step - 1) * 30))
        with lab.client() as c:
            r = grant(c, "alice", asp)
            assert r.status_code == 400 and r.json() == {"error": "invalid_grant"}
            token = mobile_sign_in(c, asp + totp(secret, step * 30))
            assert c.get(USER_DOC, headers=bearer(token)).status_code == 200
            # the code was spent: the same ASP + code again is a replay
            assert grant(c, "alice", asp + totp(secret, step * 30)).status_code == 400
            # the second factor travels with the token: the new device is trusted at once
            assert create_application(c, token).status_code == 201
        assert any(e.reason == "ok-otp" for e in sign_ins(ids, "alice"))
        assert lab.oauth.tokens.get(token.encode()).second_factor
    finally:
        ids.close()


# --- what reaches the front end, per backend mode ----------------------------------------------


def _upstream_form(upstream) -> dict:
    return {k.lower(): v for k, v in upstream.received[-1].headers}


def test_none_mode_blanks_the_password(upstream, ids, make_lab):
    lab = make_lab(upstream.port, ids, devices=False)
    asp = ids.asps.create("alice", "iPhone")[1]
    with lab.client() as c:
        r = c.post(
            TOKEN,
            content=urlencode(
                {"grant_type": "password", "username": "alice@contoso.com", "password": asp, "client_id": "x"}
            ),
            headers={**FORM, "Accept-Encoding": "gzip"},
        )
    assert r.status_code == 502  # the recording upstream's 200 carries no access_token
    seen = upstream.received[-1]
    want = urlencode({"grant_type": "password", "username": "alice", "password": "", "client_id": "x"})
    assert seen.body_sha256 == hashlib.sha256(want.encode()).hexdigest()
    assert seen.header("X-Ucgate-User") == "alice" and seen.header("Authorization") is None
    assert seen.header("Accept-Encoding") is None  # the token must be readable


class FakeKcd:
    name = "kcd"

    async def prepare(self, identity, service, req):
        return BackendAuth(
            [(b"Authorization", b"Negotiate " + base64.b64encode(b"ticket-for-" + identity.user.encode()))]
        )


def test_kcd_mode_asks_for_the_windows_grant(upstream, ids, make_lab):
    lab = make_lab(
        upstream.port, ids, devices=False, services={"oauth": {"backend": "kcd"}}, backends={"kcd": FakeKcd()}
    )
    asp = ids.asps.create("alice", "iPhone")[1]
    with lab.client() as c:
        r = grant(c, "alice", asp)
    assert r.status_code == 502  # the recording upstream's 200 carries no access_token
    seen = upstream.received[-1]
    assert seen.body_sha256 == hashlib.sha256(b"grant_type=urn%3Amicrosoft.rtc%3Awindows").hexdigest()
    assert seen.header("Authorization") == "Negotiate " + base64.b64encode(b"ticket-for-alice").decode()


def test_vault_mode_swaps_in_the_domain_password(frontend, ids, make_lab):
    """The lab front end checks the password itself when no identity header reaches it (we
    rename the gateway's): only the vaulted domain password gets a token."""
    port, fe = frontend
    vault = VaultService(ids.components.repo, ids.components.keyring, users=ids.users, audit=ids.audit)
    lab = make_lab(
        port,
        ids,
        vault=vault,
        identity_header="X-Not-Trusted",
        services={"oauth": {"backend": "vault"}},
        backends={
            "vault": __import__("ucgate.gateway.backend", fromlist=["VaultBackend"]).VaultBackend(
                vault, domain="CONTOSO"
            )
        },
    )
    asp = ids.asps.create("alice", "iPhone")[1]
    with lab.client() as c:
        r = grant(c, "alice", asp)
        assert r.status_code == 403 and r.json() == {"error": "server_error"}  # nothing enrolled
        vault.set_password("alice", "not-the-password", actor="test")
        r = grant(c, "alice", asp)
        assert r.status_code == 400 and r.json() == {"error": "invalid_grant"}  # the FE's refusal
        vault.set_password("alice", DOMAIN_PASSWORD, actor="test")
        token = mobile_sign_in(c, asp)
        assert fe.tokens[token].user == "alice"
        assert c.get(USER_DOC, headers=bearer(token)).status_code == 200


# --- issue 13 -----------------------------------------------------------------------------------


def test_password_grant_is_refused_over_plain_http(frontend, ids, loop_thread, caplog):
    """Issue 13 item 5: Basic is refused on a plain-HTTP listener, so is the password grant —
    before the password is checked (no audit of a sign-in, no budget) and before the front end."""
    port, fe = frontend
    lab = Lab(loop_thread, (None, None), port, ids)
    try:
        asp = ids.asps.create("alice", "iPhone")[1]
        with httpx.Client(base_url=f"http://127.0.0.1:{lab.gateway.port}", trust_env=False, timeout=10) as c:
            for _ in range(6):  # more than the failure budget (4): none of it counts
                r = grant(c, "alice", asp)
                assert r.status_code == 403 and r.json()["error"] == "invalid_request"
                assert r.headers["x-ucgate-reason"] == "password-grant-requires-tls"
    finally:
        lab.stop()
    assert "password-grant-requires-tls" in caplog.text
    assert not fe.tokens and sign_ins(ids, "alice") == []
    with make_lab_tls(loop_thread, port, ids) as c:  # the same ASP over TLS: the budget is whole
        assert grant(c, "alice", asp).status_code == 200


class make_lab_tls:
    def __init__(self, loop_thread, port, ids):
        import tempfile
        from pathlib import Path

        from ucgate.gateway.tls import make_self_signed

        self.dir = tempfile.TemporaryDirectory()
        d = Path(self.dir.name)
        make_self_signed(d / "c.pem", d / "k.pem", ["127.0.0.1"])
        self.lab = Lab(loop_thread, (d / "c.pem", d / "k.pem"), port, ids)

    def __enter__(self):
        self.c = self.lab.client()
        return self.c

    def __exit__(self, *exc):
        self.c.close()
        self.lab.stop()
        self.dir.cleanup()


async def _token_server(answer: bytes):
    async def handle(reader, writer):
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            n = int(
                next(
                    (ln.split(b":")[1] for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length:")), b"0"
                )
            )
            await reader.readexactly(n)
            writer.write(answer)
            await writer.drain()
        finally:
            writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 26\r\n\r\n"
        b'{"token_type":"Bearer","x"',  # not JSON
        b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 15\r\n\r\n{"error":"odd"}',
        b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'1f\r\n{"access_token":"cwt=streamed"}\r\n0\r\n\r\n',  # streamed: not readable here
    ],
    ids=["not-json", "no-access-token", "empty", "chunked"],
)
def test_token_answer_without_a_readable_token_is_502(ids, make_lab, loop_thread, caplog, answer):
    """Issue 13 item 5: a front end's 200 without a readable access_token was passed to the
    client; now 502 with the reason logged, and no token is remembered."""
    server = loop_thread.run(_token_server(answer))
    try:
        lab = make_lab(server.sockets[0].getsockname()[1], ids, devices=False)
        asp = ids.asps.create("alice", "iPhone")[1]
        with lab.client() as c:
            r = grant(c, "alice", asp)
        assert r.status_code == 502 and r.json() == {"error": "server_error"}
        assert r.headers["x-ucgate-reason"].startswith("oauth-")
        assert b"odd" not in r.content and b"streamed" not in r.content
        assert "no usable access_token" in caplog.text and len(lab.oauth.tokens) == 0
    finally:
        server.close()


def test_recovery_code_in_the_password_grant(frontend, tmp_path, make_lab):
    """Issue 13 item 8: the OAuth grant verifies as Basic does, so ASP + recovery code (dashes
    or not) signs in once per code; a spent code is invalid_grant."""
    port, _ = frontend
    ids = make_ids(tmp_path, two_factor=TwoFactorSettings("otp-appended", (), 24.0))
    try:
        lab = make_lab(port, ids)
        asp = ids.asps.create("alice", "iPhone")[1]
        otp = OtpService(ids.components.repo, ids.components.keyring, users=ids.users)
        e = otp.begin_enrolment("alice")
        secret = base64.b32decode(e.secret_b32 + "=" * (-len(e.secret_b32) % 8))
        codes = otp.confirm_enrolment("alice", totp(secret, time.time() - 30))
        with lab.client() as c:
            token = mobile_sign_in(c, asp + codes[0])
            assert c.get(USER_DOC, headers=bearer(token)).status_code == 200
            assert grant(c, "alice", asp + codes[0]).status_code == 400  # spent
            assert grant(c, "alice", asp.replace("-", "") + codes[1].replace("-", "")).status_code == 200
        got = [e.reason for e in sign_ins(ids, "alice")]
        assert got.count("ok-recovery-code") == 2 and "recovery-code-wrong" in got
        assert lab.oauth.tokens.get(token.encode()).second_factor
    finally:
        ids.close()


def test_demo_token_endpoint_keeps_the_port(tmp_path, loop_thread, frontend):
    """Issue 13 item 10: the demo publishes "localhost" and listens on 8443; its MsRtcOAuth
    href was https://localhost/WebTicket/oauthtoken (a client would go to 443)."""
    from ucgate.app import build_node
    from ucgate.lab.demo import demo_config, ensure_demo_certificate

    port, _ = frontend
    cert, _ = ensure_demo_certificate(tmp_path)
    (tmp_path / "keys").mkdir(mode=0o700)
    (tmp_path / "data").mkdir()
    node = build_node(from_dict(demo_config(tmp_path, "127.0.0.1", 0, port), path=tmp_path / "u.toml"))
    loop_thread.run(node.start())
    try:
        gport = node.gateway.port
        with httpx.Client(verify=ssl.create_default_context(cafile=str(cert)), trust_env=False) as c:
            r = c.get(f"https://127.0.0.1:{gport}{USER_DOC}")
        assert r.status_code == 401
        href = [v for v in r.headers.get_list("www-authenticate") if v.startswith("MsRtcOAuth ")]
        assert href == [
            f'MsRtcOAuth href="https://localhost:{gport}/WebTicket/oauthtoken",'
            'grant_type="urn:microsoft.rtc:windows,urn:microsoft.rtc:anonmeeting,password"'
        ]
    finally:
        loop_thread.run(node.stop())


def test_token_endpoint_port_rules():
    from ucgate.gateway.oauth import _token_endpoint
    from ucgate.protocols.http1 import Framing, RequestHead

    def href(host, published):
        req = RequestHead(b"GET", b"/ucwa", (1, 1), [(b"Host", host)], Framing("none"), host, True)
        return _token_endpoint(req, published).decode()

    assert href(b"lyncext.contoso.com", "lyncext.contoso.com") == "https://lyncext.contoso.com/WebTicket/oauthtoken"
    assert href(b"lyncext.contoso.com:443", "lyncext.contoso.com") == "https://lyncext.contoso.com/WebTicket/oauthtoken"
    assert href(b"10.0.0.5:4443", "lyncext.contoso.com") == "https://lyncext.contoso.com:4443/WebTicket/oauthtoken"
    assert href(b"[::1]:8443", "localhost") == "https://localhost:8443/WebTicket/oauthtoken"
    assert href(b"x:1", "name.example:9443") == "https://name.example:9443/WebTicket/oauthtoken"
    assert href(b"bad host\x00", "localhost") == "https://localhost/WebTicket/oauthtoken"
    assert href(b"127.0.0.1:8443", None) == "https://127.0.0.1:8443/WebTicket/oauthtoken"
