"""The id service's HTTP API on a real uvicorn server over TLS, and a real gateway that reaches
it through RemoteCredentials: Basic and NTLM (pyspnego, with channel binding) sign-ins, the
shared secret, malformed calls, the id service going away and coming back, UserBlocked events
closing live connections, and the OpenAPI document."""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import os
import ssl
import time

import httpx
import pytest
import requests
import uvicorn
from requests_ntlm import HttpNtlmAuth

from ucgate.config import ConfigError, LockoutConfig, from_dict
from ucgate.gateway.idclient import RemoteCredentials
from ucgate.gateway.preauth import PreAuthenticator, PreAuthSettings
from ucgate.gateway.tls import certificate_der
from ucgate.id.events import UserBlocked
from ucgate.id.factory import open_services
from ucgate.id.http_api import create_id_api
from ucgate.protocols.ntlm import tls_server_end_point

from ..support import LoopThread, free_port, gateway_config, start_gateway

DOMAIN = "LAB"
SECRET = b"s3cret-" + b"x" * 40


class IdServer:
    """The id service's API under uvicorn with TLS, in its own event loop thread (as on its own
    host); ``stop``/``start`` again on the same port."""

    def __init__(self, ids, cert, key, port: int, devices=None) -> None:
        self.ids, self.cert, self.key, self.port = ids, cert, key, port
        self.app = create_id_api(ids.credentials, secret=SECRET, bus=ids.bus, heartbeat=2.0, devices=devices)
        self.lt = LoopThread()
        self.url = f"https://localhost:{port}"
        self.server = self.future = None

    def start(self) -> None:
        cfg = uvicorn.Config(
            self.app,
            host="127.0.0.1",
            port=self.port,
            ssl_certfile=str(self.cert),
            ssl_keyfile=str(self.key),
            log_level="warning",
            lifespan="off",
            timeout_graceful_shutdown=1,
        )
        self.server = uvicorn.Server(cfg)
        self.future = asyncio.run_coroutine_threadsafe(self.server.serve(), self.lt.loop)
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline and not self.future.done(), "uvicorn did not start"
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.future.result(15)

    def close(self) -> None:
        if self.future is not None and not self.future.done():
            self.stop()
        self.lt.close()


@pytest.fixture
def ids(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "keys").mkdir(mode=0o700)
    s = open_services(
        store_url=f"sqlite:///{tmp_path / 'data' / 'ucgate.db'}",
        key_file=tmp_path / "keys" / "ucgate.key",
        audit_file=tmp_path / "data" / "audit.jsonl",
        lockout=LockoutConfig(user_failures=5, ip_failures=50, window=900),
    )
    s.users.add("alice", upn="alice@lab.ucgate.test")
    s.users.add("bob", upn="bob@lab.ucgate.test")
    yield s
    s.close()


@pytest.fixture
def asp(ids):
    return ids.asps.create("alice", "phone")[1]


@pytest.fixture
def idsrv(ids, tls_files):
    srv = IdServer(ids, *tls_files, free_port())
    srv.start()
    yield srv
    srv.close()


class RemoteGateway:
    def __init__(self, lt, tls_files, upstream, idsrv, **settings) -> None:
        self.lt = lt
        self.remote = RemoteCredentials(idsrv.url, secret=SECRET, ca_file=tls_files[0], **settings)
        auth = PreAuthenticator(self.remote, PreAuthSettings(netbios_domain=DOMAIN))
        self.gw = start_gateway(lt, *tls_files, upstream.port, authenticator=auth)

        async def link():
            self.remote.start(self.gw.gateway.on_event, self.gw.gateway.live_users)

        lt.run(link())

    def wait_events(self, timeout: float = 5) -> None:
        async def wait():
            await asyncio.wait_for(self.remote.events_connected.wait(), timeout)

        self.lt.run(wait())

    def close(self) -> None:
        self.gw.stop()
        self.lt.run(self.remote.aclose())


@pytest.fixture
def rgw(loop_thread, tls_files, upstream, idsrv):
    g = RemoteGateway(loop_thread, tls_files, upstream, idsrv)
    yield g
    g.close()


def api(idsrv, tls_files, secret=SECRET):
    headers = {"Authorization": "Bearer " + secret.decode()} if secret else {}
    verify = ssl.create_default_context(cafile=str(tls_files[0]))
    return httpx.Client(base_url=idsrv.url, verify=verify, headers=headers, timeout=10)


def ctx(**kw):
    return {"client_ip": "192.0.2.7", "method": "basic", "service": "ucwa", **kw}


# --- sign-ins through a gateway that uses the remote id service ------------------------------


def test_basic_through_remote_id_service(rgw, upstream, ids, asp):
    with httpx.Client(verify=rgw.gw.ssl_context()) as c:
        assert c.get(f"{rgw.gw.url}/ucwa/a", auth=("alice", asp)).status_code == 200
        assert c.get(f"{rgw.gw.url}/ucwa/b", auth=("alice", "wrong-asp")).status_code == 401
        assert c.get(f"{rgw.gw.url}/ucwa/c", auth=("mallory", asp)).status_code == 401
    assert upstream.received[-1].header("X-Ucgate-User") == "alice"
    events = [e for e in ids.audit.tail(100) if e.action == "sign-in"]
    assert [e.result for e in events] == ["allow", "deny", "deny"]
    assert all(e.client_address == "127.0.0.1" for e in events)  # the device's address, not the gateway's


def _cbt(cert):
    import spnego.channel_bindings as cb

    return cb.GssChannelBindings(application_data=tls_server_end_point(certificate_der(cert)))


def test_ntlm_with_channel_binding_through_remote_id_service(rgw, upstream, ids, asp):
    s = requests.Session()
    s.trust_env = False
    s.verify = str(rgw.gw.cert)
    s.auth = HttpNtlmAuth(f"{DOMAIN}\\alice", asp, send_cbt=True)
    with s:
        assert s.get(f"https://localhost:{rgw.gw.port}/ucwa/n1").status_code == 200
        assert s.get(f"https://localhost:{rgw.gw.port}/ucwa/n2").status_code == 200
    assert upstream.received[-1].header("X-Ucgate-User") == "alice"
    # without channel binding Extended Protection ("require") refuses it, on the id service
    s = requests.Session()
    s.trust_env = False
    s.verify = str(rgw.gw.cert)
    s.auth = HttpNtlmAuth(f"{DOMAIN}\\alice", asp, send_cbt=False)
    with s:
        assert s.get(f"https://localhost:{rgw.gw.port}/ucwa/n3").status_code == 401
    reasons = [e.reason for e in ids.audit.tail(100) if e.action == "sign-in"]
    assert reasons == ["ok", "channel-binding-missing"]


def test_negotiate_with_mech_list_mic_through_remote_id_service(rgw, upstream, asp):
    """SPNEGO's mechListMIC is computed on the gateway with the session key the id service
    returned: pyspnego checks ours and completes."""
    import spnego

    ctx_ = spnego.client(
        "alice",
        asp,
        hostname="localhost",
        service="HTTP",
        protocol="negotiate",
        channel_bindings=_cbt(rgw.gw.cert),
        options=spnego.NegotiateOptions.use_ntlm,
    )
    conn = http.client.HTTPSConnection("localhost", rgw.gw.port, context=rgw.gw.ssl_context())
    token, status = ctx_.step(), None
    for _ in range(3):
        conn.request("GET", "/ucwa/neg", headers={"Authorization": "Negotiate " + base64.b64encode(token).decode()})
        r = conn.getresponse()
        r.read()
        status, hdr = r.status, r.getheader("WWW-Authenticate")
        if status != 401:
            if hdr and hdr.startswith("Negotiate "):
                ctx_.step(base64.b64decode(hdr.split(" ", 1)[1]))
            break
        token = ctx_.step(base64.b64decode(hdr.split(" ", 1)[1]))
    conn.close()
    assert status == 200 and ctx_.complete
    assert upstream.received[-1].header("X-Ucgate-User") == "alice"


# --- the API itself -----------------------------------------------------------------------------


def test_wrong_or_missing_secret_is_401(idsrv, tls_files, asp):
    body = {"user": "alice", "password": asp, "context": ctx()}
    for secret in (b"wrong-" + b"y" * 40, None, SECRET + b"x"):
        with api(idsrv, tls_files, secret) as c:
            r = c.post("/v1/auth/password", json=body)
            assert r.status_code == 401
            assert r.json()["error"] == "unauthorized"
            assert c.get("/v1/events").status_code == 401
    with api(idsrv, tls_files, None) as c:
        assert c.get("/v1/health").json() == {"status": "ok"}  # health needs no secret
    with api(idsrv, tls_files) as c:
        assert c.post("/v1/auth/password", json=body).json()["ok"] is True


def test_account_check(idsrv, tls_files, asp):
    """For sign-ins verified elsewhere (Kerberos): the account must still be usable."""
    with api(idsrv, tls_files) as c:
        r = c.post("/v1/auth/account", json={"user": "alice", "context": ctx(method="kerberos")})
        assert r.status_code == 200 and r.json()["ok"] is True and r.json()["user"] == "alice"
        r = c.post("/v1/auth/account", json={"user": "nobody", "context": ctx(method="kerberos")})
        assert r.json()["ok"] is False
        r = c.post("/v1/auth/account", json={"context": ctx()})
        assert r.status_code == 400 and r.json()["field"] == "user"


def _ntlm_body(**overrides):
    body = {
        "negotiate": "TlRMTVNTUAAB",
        "challenge": "AA==",
        "authenticate": "AA==",
        "server_challenge": base64.b64encode(b"12345678").decode(),
        "challenge_time": 133_000_000_000_000_000,
        "channel_binding": None,
        "extended_protection": "require",
        "context": ctx(method="ntlm"),
    }
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not ...}


@pytest.mark.parametrize(
    "path,body,field",
    [
        ("/v1/auth/password", b"{not json", "body"),
        ("/v1/auth/password", b"[1, 2]", "body"),
        ("/v1/auth/password", {"password": "x", "context": ctx()}, "user"),
        ("/v1/auth/password", {"user": "alice", "context": ctx()}, "password"),
        ("/v1/auth/password", {"user": "alice", "password": "x"}, "context"),
        (
            "/v1/auth/password",
            {"user": "alice", "password": "x", "context": ctx(client_ip="not-an-ip")},
            "context.client_ip",
        ),
        (
            "/v1/auth/password",
            {"user": "alice", "password": "x", "context": {"client_ip": "192.0.2.1", "method": "basic"}},
            "context.service",
        ),
        ("/v1/auth/password", {"user": "alice", "password": 5, "context": ctx()}, "password"),
        ("/v1/auth/password", {"user": "a\x00b", "password": "x", "context": ctx()}, "user"),
        ("/v1/auth/ntlm", _ntlm_body(negotiate=...), "negotiate"),
        ("/v1/auth/ntlm", _ntlm_body(authenticate="!!!"), "authenticate"),
        ("/v1/auth/ntlm", _ntlm_body(server_challenge="AAAA"), "server_challenge"),
        ("/v1/auth/ntlm", _ntlm_body(challenge_time="soon"), "challenge_time"),
        ("/v1/auth/ntlm", _ntlm_body(extended_protection="maybe"), "extended_protection"),
        ("/v1/auth/ntlm", _ntlm_body(context=ctx(method="carrier-pigeon")), "context.method"),
    ],
)
def test_malformed_calls_are_400_naming_the_field(idsrv, tls_files, path, body, field):
    with api(idsrv, tls_files) as c:
        if isinstance(body, bytes):
            r = c.post(path, content=body, headers={"Content-Type": "application/json"})
        else:
            r = c.post(path, json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "bad-request"
    assert r.json()["field"] == field


def test_garbage_ntlm_messages_are_a_refusal_not_an_error(idsrv, tls_files):
    with api(idsrv, tls_files) as c:
        r = c.post("/v1/auth/ntlm", json=_ntlm_body())
    assert r.status_code == 200
    assert r.json()["ok"] is False and r.json()["reason"].startswith("ntlm-") and r.json()["session"] is None


def test_oversized_body_is_413(idsrv, tls_files):
    with api(idsrv, tls_files) as c:
        r = c.post("/v1/auth/password", json={"user": "alice", "password": "x" * 70_000, "context": ctx()})
        assert r.status_code == 413 and r.json()["error"] == "too-large"

        def chunks():  # no Content-Length: the limit holds while streaming too
            for _ in range(20):
                yield b" " * 8192

        r = c.post("/v1/auth/password", content=chunks())
        assert r.status_code == 413


def test_unknown_path_and_method_are_json(idsrv, tls_files):
    with api(idsrv, tls_files) as c:
        assert c.get("/v1/nope").status_code == 404
        r = c.get("/v1/auth/password")
        assert r.status_code == 405 and "error" in r.json()


def test_openapi_document_validates(idsrv, tls_files):
    from openapi_spec_validator import validate

    with api(idsrv, tls_files) as c:
        doc = c.get("/v1/openapi.json").json()
    validate(doc)
    routes = {r.path for r in idsrv.app.routes}
    assert routes == set(doc["paths"])


def test_secrets_are_not_logged(rgw, idsrv, asp, caplog):
    import logging

    caplog.set_level(logging.DEBUG)
    with httpx.Client(verify=rgw.gw.ssl_context()) as c:
        c.get(f"{rgw.gw.url}/ucwa/a", auth=("alice", asp))
    with api(idsrv, (idsrv.cert, idsrv.key), b"wrong-" + b"z" * 40) as c:
        c.post("/v1/auth/password", json={"user": "alice", "password": asp, "context": ctx()})
    text = caplog.text
    assert SECRET.decode() not in text and "wrong-zzzz" not in text and asp not in text


# --- failure, recovery and events -------------------------------------------------------------


def test_id_service_down_fails_closed_fast_then_recovers(rgw, idsrv, asp):
    with httpx.Client(verify=rgw.gw.ssl_context(), timeout=10) as c:
        assert c.get(f"{rgw.gw.url}/ucwa/a", auth=("alice", asp)).status_code == 200
        idsrv.stop()
        t = time.monotonic()
        r = c.get(f"{rgw.gw.url}/ucwa/b", auth=("bob", "whatever"))
        assert r.status_code == 503 and int(r.headers["Retry-After"]) >= 1
        assert time.monotonic() - t < 1.0
        # NTLM too
        s = requests.Session()
        s.trust_env = False
        s.verify = str(rgw.gw.cert)
        s.auth = HttpNtlmAuth(f"{DOMAIN}\\alice", asp)
        with s:
            assert s.get(f"https://localhost:{rgw.gw.port}/ucwa/n").status_code == 503
        idsrv.start()
        deadline, status = time.monotonic() + 10, None
        while time.monotonic() < deadline:
            status = c.get(f"{rgw.gw.url}/ucwa/c", auth=("alice", asp)).status_code
            if status == 200:
                break
            time.sleep(0.2)
        assert status == 200


def test_user_blocked_on_the_id_side_closes_live_connection_within_1s(rgw, ids, asp):
    rgw.wait_events()
    conn = http.client.HTTPSConnection("localhost", rgw.gw.port, context=rgw.gw.ssl_context(), timeout=5)
    hdr = {"Authorization": "Basic " + base64.b64encode(f"alice:{asp}".encode()).decode()}
    conn.request("GET", "/ucwa/live", headers=hdr)
    r = conn.getresponse()
    r.read()
    assert r.status == 200 and "alice" in rgw.gw.gateway.live_users()
    t = time.monotonic()
    ids.bus.publish(UserBlocked("alice", "blocked-by-admin"))
    while "alice" in rgw.gw.gateway.live_users() and time.monotonic() - t < 2:
        time.sleep(0.01)
    elapsed = time.monotonic() - t
    assert elapsed < 1.0, f"took {elapsed:.3f}s"
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError, OSError)):
        conn.request("GET", "/ucwa/after", headers=hdr)
        conn.getresponse()


def test_events_missed_during_a_break_are_replayed(rgw, idsrv, ids, asp):
    rgw.wait_events()
    with httpx.Client(verify=rgw.gw.ssl_context()) as c:
        assert c.get(f"{rgw.gw.url}/ucwa/a", auth=("alice", asp)).status_code == 200
    ids.bus.publish(UserBlocked("nobody", "warm-up"))  # gives the client an event id
    time.sleep(0.3)
    idsrv.stop()
    ids.bus.publish(UserBlocked("alice", "blocked-while-the-stream-was-down"))
    conn = http.client.HTTPSConnection("localhost", rgw.gw.port, context=rgw.gw.ssl_context(), timeout=5)
    # alice is still signed in on a keep-alive connection from before
    idsrv.start()
    deadline = time.monotonic() + 10
    users = rgw.gw.gateway.live_users
    while time.monotonic() < deadline and "alice" in users():
        time.sleep(0.05)
    assert "alice" not in users()
    conn.close()


def test_gateway_reports_live_sessions_for_the_account_monitor(loop_thread, tls_files, upstream, idsrv, asp):
    g = RemoteGateway(loop_thread, tls_files, upstream, idsrv, report_interval=0.2)
    try:
        conn = http.client.HTTPSConnection("localhost", g.gw.port, context=g.gw.ssl_context(), timeout=5)
        conn.request(
            "GET", "/ucwa/x", headers={"Authorization": "Basic " + base64.b64encode(f"alice:{asp}".encode()).decode()}
        )
        assert conn.getresponse().status == 200
        deadline = time.monotonic() + 5
        while "alice" not in idsrv.app.state.sessions.live_users() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "alice" in idsrv.app.state.sessions.live_users()
        conn.close()
    finally:
        g.close()


# --- configuration and wiring -------------------------------------------------------------------


def _secret_file(tmp_path, mode=0o600, value=SECRET):
    p = tmp_path / f"id-{mode:o}.secret"
    p.write_bytes(value + b"\n")
    os.chmod(p, mode)
    return p


def test_config_id_service_section(tmp_path, tls_files, upstream):
    secret = _secret_file(tmp_path)
    raw = gateway_config(*tls_files, upstream.port)
    raw["id_service"] = {"url": "https://id.lab:8444", "ca_file": str(tls_files[0]), "secret_file": str(secret)}
    cfg = from_dict(raw, path=tmp_path / "gw.toml")
    assert cfg.id_service.url == "https://id.lab:8444" and cfg.id_service.secret == SECRET
    assert SECRET.decode() not in repr(cfg)
    for bad, key in (
        ({"url": "http://id.lab"}, "id_service.url"),
        ({"url": "https://id.lab"}, "id_service.secret_file"),
        ({"url": "https://id.lab", "secret_file": str(_secret_file(tmp_path, 0o644))}, "id_service.secret_file"),
        ({"listen": "nope"}, "id_service.listen"),
        ({"urll": "https://x"}, "id_service.urll"),
    ):
        raw["id_service"] = bad
        with pytest.raises(ConfigError) as e:
            from_dict(raw, path=tmp_path / "gw.toml")
        assert str(e.value).startswith(f"{tmp_path / 'gw.toml'}: {key}:"), str(e.value)
    # the id service's own file needs no [gateway] certificate and no upstreams, but TLS here
    idcfg = {"id_service": {"listen": "127.0.0.1:8444", "secret_file": str(secret)}}
    with pytest.raises(ConfigError, match="id_service.tls_cert"):
        from_dict(idcfg, path=tmp_path / "id.toml", role="id-service")
    idcfg["id_service"].update(tls_cert=str(tls_files[0]), tls_key=str(tls_files[1]))
    assert from_dict(idcfg, path=tmp_path / "id.toml", role="id-service").id_service.listen_port == 8444


def test_build_node_with_url_uses_remote_credentials(tmp_path, tls_files, upstream):
    from ucgate.app import build_node

    raw = gateway_config(*tls_files, upstream.port)
    raw["id_service"] = {
        "url": "https://localhost:1",
        "ca_file": str(tls_files[0]),
        "secret_file": str(_secret_file(tmp_path)),
    }
    raw["store"] = {"key_file": str(tmp_path / "must-not-be-created.key")}
    node = build_node(from_dict(raw, path=tmp_path / "gw.toml"))
    assert isinstance(node.remote, RemoteCredentials) and node.ids is None
    assert not (tmp_path / "must-not-be-created.key").exists()  # no store or keys in the DMZ

    async def close():
        await node.remote.aclose()

    asyncio.run(close())


def test_every_route_is_in_the_document_and_every_model_validates_its_example(idsrv, tls_files):
    from starlette.routing import Route

    from ucgate.id.api import EventBody, parse_wire
    from ucgate.id.http_api import EXAMPLES
    from ucgate.id.openapi import schema_name

    with api(idsrv, tls_files) as c:
        doc = c.get("/v1/openapi.json").json()
    served = {
        (r.path, m.lower()) for r in idsrv.app.routes if isinstance(r, Route) for m in (r.methods or ()) if m != "HEAD"
    }
    assert served == {(p, m) for p, ops in doc["paths"].items() for m in ops}
    by_name = {schema_name(m): m for m in EXAMPLES}
    seen = set()
    for ops in doc["paths"].values():
        for op in ops.values():
            contents = [op["requestBody"]["content"]] if "requestBody" in op else []
            contents += [r["content"] for r in op["responses"].values() if "content" in r]
            for content in contents:
                media = content.get("application/json")
                if media is None or "$ref" not in media["schema"]:
                    continue
                model = by_name[media["schema"]["$ref"].rsplit("/", 1)[1]]
                assert media["example"] == EXAMPLES[model]
                parse_wire(model, json.dumps(media["example"]))  # the model accepts its example
                assert media["schema"]["$ref"].rsplit("/", 1)[1] in doc["components"]["schemas"]
                seen.add(model)
    assert seen == set(EXAMPLES) - {EventBody}  # every model is in the document: in an operation,
    assert schema_name(EventBody) in doc["components"]["schemas"]  # or the events' data
    parse_wire(EventBody, json.dumps(EXAMPLES[EventBody]))
