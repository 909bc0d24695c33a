"""Device partnerships with the id service on its own host: a real gateway (DMZ) whose decide
stage asks the id service's ``POST /v1/devices/check`` (RemoteDeviceChecker) over TLS, and
whose live connections are cut by ``device-blocked`` Server-Sent Events. The policy and the
partnerships live on the id side (a DeviceService over the id service's store)."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import http.client
import ssl
import time

import httpx
import pytest

from ucgate.config import from_dict
from ucgate.gateway.devices import DeviceGate
from ucgate.gateway.idclient import RemoteCredentials, RemoteDeviceChecker, facts_json
from ucgate.gateway.preauth import PreAuthenticator, PreAuthSettings
from ucgate.gateway.server import Gateway
from ucgate.id.devices import DeviceService
from ucgate.id.events import DeviceBlocked
from ucgate.protocols.devices import DeviceFacts
from ucgate.protocols.wbxml import decode
from ucgate.store import PartnershipStore

from ..support import free_port, gateway_config
from . import test_http_api as http_api_tests
from .test_http_api import SECRET, IdServer, _secret_file, api

ids = http_api_tests.ids  # the same fixture: alice and bob in a fresh store

EAS = "/Microsoft-Server-ActiveSync"
EAS_HEADERS = {
    "MS-ASProtocolVersion": "14.1",
    "User-Agent": "Apple-iPhone9C1/1402.100",
    "Content-Type": "application/vnd.ms-sync.wbxml",
}


def eas_target(device="ApplDEV1", user="alice", cmd="FolderSync", dtype="iPhone"):
    return f"{EAS}?Cmd={cmd}&User={user}&DeviceId={device}&DeviceType={dtype}"


def eas_status(r) -> int | None:
    ctype = r.headers.get("content-type", "") if hasattr(r.headers, "get") else ""
    if ctype.startswith("application/vnd.ms-sync.wbxml") and r.content:
        text = decode(r.content).text("Status")
        return int(text) if text else None
    return None


def basic(user, password):
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def make_devices(ids, **policy) -> DeviceService:
    return DeviceService(
        PartnershipStore(ids.components.repo.engine),
        ids.audit,
        ids.bus,
        defaults=policy,
        user_aliases=lambda u: [f"{u}@lab.ucgate.test"],
        asp_device=lambda a: ids.asps.get(a).device_id if ids.asps.get(a) else None,
    )


class RemoteLab:
    """The id service (uvicorn, TLS, its own loop thread) with a DeviceService, and a gateway
    whose credentials and device checks are remote (or, with ``local_auth``, only the device
    checks: to reach the device check while the id service is down)."""

    def __init__(self, loop_thread, tls_files, upstream, ids, *, local_auth=False, **policy) -> None:
        self.ids, self.lt, self.cert = ids, loop_thread, tls_files[0]
        self.devices = make_devices(ids, **policy)
        self.idsrv = IdServer(ids, *tls_files, free_port(), devices=self.devices)
        self.idsrv.start()
        self.remote = RemoteCredentials(self.idsrv.url, secret=SECRET, ca_file=tls_files[0])
        self.gate = DeviceGate(RemoteDeviceChecker(self.remote))
        creds = ids.credentials if local_auth else self.remote
        auth = PreAuthenticator(
            creds, PreAuthSettings(netbios_domain="LAB", failure_floor=0), device_id_of=self.gate.device_id_of
        )
        cfg = from_dict(gateway_config(*tls_files, upstream.port))

        async def start():
            g = Gateway(cfg, auth, devices=self.gate)
            await g.start()
            self.remote.start(g.on_event, g.live_users)
            return g

        self.gateway = loop_thread.run(start())
        self.url = f"https://127.0.0.1:{self.gateway.port}"

    def wait_events(self, timeout: float = 5) -> None:
        async def wait():
            await asyncio.wait_for(self.remote.events_connected.wait(), timeout)

        self.lt.run(wait())

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cert))

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, verify=self.ssl_context(), trust_env=False, timeout=10)

    def eas(self, c, asp, **kw):
        return c.post(eas_target(**kw), auth=("alice", asp), headers=EAS_HEADERS)

    def keepalive(self, asp, device):
        conn = http.client.HTTPSConnection("127.0.0.1", self.gateway.port, timeout=5, context=self.ssl_context())
        hdrs = {"Authorization": basic("alice", asp), **EAS_HEADERS}

        def request():
            conn.request("POST", eas_target(device=device), headers=hdrs, body=b"")
            r = conn.getresponse()
            r.read()
            return r

        return conn, request

    def close(self) -> None:
        self.lt.run(self.gateway.stop())
        self.lt.run(self.remote.aclose())
        self.idsrv.close()


@pytest.fixture
def make_lab(loop_thread, tls_files, upstream, ids):
    labs = []

    def make(**kw):
        lab = RemoteLab(loop_thread, tls_files, upstream, ids, **kw)
        labs.append(lab)
        return lab

    yield make
    for lab in labs:
        lab.close()


def _closed_within(conn, seconds: float) -> bool:
    conn.sock.settimeout(seconds)
    try:
        return conn.sock.recv(1) == b""
    except (ConnectionError, ssl.SSLError):
        return True
    except TimeoutError:
        return False


# --- through the gateway ---------------------------------------------------------------------


def test_new_eas_device_quarantined_then_approved_on_the_id_side(make_lab, upstream):
    lab = make_lab()  # the id side's default: new devices are quarantined
    asp = lab.ids.asps.create("alice", "phone")[1]
    with lab.client() as c:
        r = lab.eas(c, asp)
        assert r.status_code == 200 and eas_status(r) == 129  # DeviceIsBlockedForThisUser
        assert r.headers["x-ucgate-reason"] == "new-device-quarantined"
        assert not any("ApplDEV1" in rec.target for rec in upstream.received)
        p = lab.devices.store.get("alice", "ApplDEV1")
        assert p is not None and p.state == "quarantined" and p.device_type == "iPhone"
        lab.devices.approve(p.id, actor="cli:admin")  # on the id service
        r = lab.eas(c, asp)
        assert r.status_code == 200 and r.headers.get("x-upstream") == "h11"  # forwarded
        assert "DeviceId=ApplDEV1" in upstream.received[-1].target
        assert upstream.received[-1].header("X-Ucgate-User") == "alice"
    checks = [e for e in lab.ids.audit.tail(200) if e.action == "device-check"]
    assert [e.result for e in checks][-2:] == ["quarantine", "allow"]
    assert all(e.client_address == "127.0.0.1" for e in checks)  # the device's address


def test_device_blocked_on_the_id_side_closes_that_connection_within_1s(make_lab):
    lab = make_lab(default_action="allowed", require_second_factor=False)
    asp = lab.ids.asps.create("alice", "phone")[1]
    lab.wait_events()
    phone, phone_req = lab.keepalive(asp, "ApplPHONE")
    tablet, tablet_req = lab.keepalive(asp, "ApplTABLET")
    assert phone_req().status == 200 and tablet_req().status == 200
    p = lab.devices.store.get("alice", "ApplPHONE")
    started = time.monotonic()
    lab.devices.block(p.id, actor="cli:admin")  # publishes DeviceBlocked on the id side's bus
    assert _closed_within(phone, 1.0)
    assert time.monotonic() - started < 1.0
    assert tablet_req().status == 200  # the user's other device keeps its connection
    with lab.client() as c:
        r = lab.eas(c, asp, device="ApplPHONE")
        assert eas_status(r) == 129 and r.headers["x-ucgate-reason"] == "device-blocked"
    phone.close()
    tablet.close()


def test_device_blocked_while_the_stream_is_down_is_replayed(make_lab):
    lab = make_lab(default_action="allowed", require_second_factor=False)
    asp = lab.ids.asps.create("alice", "phone")[1]
    lab.wait_events()
    phone, phone_req = lab.keepalive(asp, "ApplPHONE")
    assert phone_req().status == 200
    lab.ids.bus.publish(DeviceBlocked("nobody", "warm-up", "gives the client an event id"))
    time.sleep(0.3)
    lab.idsrv.stop()
    lab.devices.block(lab.devices.store.get("alice", "ApplPHONE").id, actor="cli:admin")
    assert not _closed_within(phone, 0.3)  # nobody told the gateway yet
    lab.idsrv.start()
    assert _closed_within(phone, 10.0)
    phone.close()


def test_id_service_down_device_check_is_503_never_allow(make_lab):
    # sign-ins verified in-process, so that the request reaches the (remote) device check
    lab = make_lab(local_auth=True, default_action="allowed", require_second_factor=False)
    asp = lab.ids.asps.create("alice", "phone")[1]
    with lab.client() as c:
        assert lab.eas(c, asp).status_code == 200
        lab.idsrv.stop()
        for device in ("ApplNEW1", "ApplNEW2"):  # the second fails fast (no connect wait)
            t = time.monotonic()
            r = lab.eas(c, asp, device=device)
            assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1
            assert r.headers["x-ucgate-reason"] == "id-service-unavailable"
            assert time.monotonic() - t < 2.0
        lab.idsrv.start()
        deadline, status = time.monotonic() + 10, None
        while time.monotonic() < deadline and status != 200:
            status = lab.eas(c, asp, device="ApplNEW1").status_code
            time.sleep(0.1)
        assert status == 200


def test_id_service_down_with_remote_sign_in_is_503(make_lab):
    lab = make_lab(default_action="allowed", require_second_factor=False)
    asp = lab.ids.asps.create("alice", "phone")[1]
    lab.idsrv.stop()
    with lab.client() as c:
        r = lab.eas(c, asp)
    assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1


# --- the checker on its own -----------------------------------------------------------------

FACTS = DeviceFacts(
    "ApplDEV1",
    "iPhone",
    None,
    None,
    "Apple-iPhone9C1/1402.100",
    "eas",
    "eas-query",
    None,
    claimed_user="alice",
    command="FolderSync",
)


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(500, json={"error": "boom"}),
        httpx.Response(401, json={"error": "unauthorized"}),
        httpx.Response(200, content=b"not json"),
        httpx.Response(200, json={"outcome": "maybe", "reason": "x", "wipe": False}),
        httpx.Response(200, json={"outcome": "allow", "wipe": False}),
        httpx.Response(200, json={"outcome": "allow", "reason": "x", "wipe": False, "trusted_until": "soon"}),
        httpx.Response(
            200, json={"outcome": "allow", "reason": "x", "wipe": False, "trusted_until": "2030-01-01T00:00:00"}
        ),  # no offset
        httpx.Response(200, json=[1, 2]),
    ],
)
def test_checker_fails_closed_on_bad_answers(answer):
    async def run():
        remote = RemoteCredentials(
            "https://id.invalid", secret=SECRET, transport=httpx.MockTransport(lambda req: answer)
        )
        try:
            return await RemoteDeviceChecker(remote).check_async("alice", FACTS, service="eas")
        finally:
            await remote.aclose()

    check = asyncio.run(run())
    assert check.outcome == "unavailable" and not check.allowed and check.retry_after > 0


def test_checker_sends_the_facts_and_reads_the_decision():
    seen = {}

    def handler(req: httpx.Request) -> httpx.Response:
        import json

        seen.update(json.loads(req.content), path=req.url.path)
        return httpx.Response(
            200,
            json={
                "outcome": "allow",
                "reason": "device-trusted",
                "device_id": "ApplDEV1",
                "wipe": False,
                "trusted_until": "2030-01-01T00:00:00+00:00",
                "rule": None,
                "partnership_id": 7,
            },
        )

    async def run():
        remote = RemoteCredentials("https://id.invalid", secret=SECRET, transport=httpx.MockTransport(handler))
        try:
            odd = DeviceFacts(None, None, None, None, "a\x01b", "eas", "eas-query", "absent", claimed_user="x" * 600)
            await RemoteDeviceChecker(remote).check_async("alice", odd, service="eas", client_address="?")
            return await RemoteDeviceChecker(remote).check_async(
                "alice", FACTS, service="eas", second_factor_ok=True, credential_id="asp-1", client_address="192.0.2.7"
            )
        finally:
            await remote.aclose()

    check = asyncio.run(run())
    assert check.allowed and check.partnership_id == 7
    assert check.trusted_until == dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    assert seen["path"] == "/v1/devices/check"
    assert seen["device"] == facts_json(FACTS) and seen["device"]["claimed_user"] == "alice"
    assert (seen["second_factor_ok"], seen["credential_id"], seen["client_address"]) == (True, "asp-1", "192.0.2.7")
    assert (
        facts_json(DeviceFacts(None, None, None, None, "a\x01b", "eas", "s", "absent", claimed_user="x" * 600))[
            "user_agent"
        ]
        == "a\ufffdb"
    )


# --- the API ------------------------------------------------------------------------------------


@pytest.fixture
def idsrv_devices(ids, tls_files):
    srv = IdServer(ids, *tls_files, free_port(), devices=make_devices(ids))
    srv.start()
    yield srv
    srv.close()


def check_body(**overrides):
    body = {
        "user": "alice",
        "device": facts_json(FACTS),
        "service": "eas",
        "second_factor_ok": False,
        "credential_id": None,
        "client_address": "192.0.2.7",
    }
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not ...}


def test_device_check_api(idsrv_devices, tls_files):
    with api(idsrv_devices, tls_files) as c:
        r = c.post("/v1/devices/check", json=check_body())
        assert r.status_code == 200, r.text
        obj = r.json()
        assert obj["outcome"] == "quarantine" and obj["reason"] == "new-device-quarantined"
        assert obj["device_id"] == "ApplDEV1" and obj["wipe"] is False and obj["partnership_id"] is not None
        r = c.post("/v1/devices/check", json=check_body(device={**facts_json(FACTS), "claimed_user": "bob"}))
        assert r.json()["outcome"] == "deny" and r.json()["reason"] == "device-user-mismatch"
    with api(idsrv_devices, tls_files, None) as c:
        r = c.post("/v1/devices/check", json=check_body())
        assert r.status_code == 401 and r.json()["error"] == "unauthorized"
    with api(idsrv_devices, tls_files) as c:
        r = c.post("/v1/devices/check", json=check_body(user="alice", service="x" * 70_000))
        assert r.status_code == 413 and r.json()["error"] == "too-large"


def test_device_check_with_devices_disabled_on_the_id_side(ids, tls_files):
    srv = IdServer(ids, *tls_files, free_port())  # devices=None: [devices] enabled = false
    srv.start()
    try:
        with api(srv, tls_files) as c:
            r = c.post("/v1/devices/check", json=check_body())
        assert r.json()["outcome"] == "allow" and r.json()["reason"] == "devices-disabled"
    finally:
        srv.close()


@pytest.mark.parametrize(
    "body,field",
    [
        (check_body(user=...), "user"),
        (check_body(user=""), "user"),
        (check_body(device=...), "device"),
        (check_body(device="ApplDEV1"), "device"),
        (check_body(device={**facts_json(FACTS), "client_kind": None}), "device.client_kind"),
        (check_body(device={**facts_json(FACTS), "device_id": 5}), "device.device_id"),
        (check_body(device={**facts_json(FACTS), "device_id": "x" * 65}), "device.device_id"),
        (check_body(device={**facts_json(FACTS), "user_agent": "a\x00b"}), "device.user_agent"),
        (check_body(device={**facts_json(FACTS), "device_id": None, "problem": None}), "device.problem"),
        (check_body(service=...), "service"),
        (check_body(second_factor_ok="yes"), "second_factor_ok"),
        (check_body(client_address="not-an-ip"), "client_address"),
        (check_body(credential_id=42), "credential_id"),
    ],
)
def test_device_check_malformed_is_400_naming_the_field(idsrv_devices, tls_files, body, field):
    with api(idsrv_devices, tls_files) as c:
        r = c.post("/v1/devices/check", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "bad-request" and r.json()["field"] == field


def test_openapi_document_validates_and_matches_routes(idsrv_devices, tls_files):
    from openapi_spec_validator import validate

    with api(idsrv_devices, tls_files) as c:
        doc = c.get("/v1/openapi.json").json()
    validate(doc)
    assert {r.path for r in idsrv_devices.app.routes} == set(doc["paths"])
    assert "/v1/devices/check" in doc["paths"]
    assert {"DeviceFacts", "DeviceDecision", "Event"} <= set(doc["components"]["schemas"])  # Event: the SSE data


# --- wiring ---------------------------------------------------------------------------------------


def test_build_node_with_url_has_a_remote_device_gate(tmp_path, tls_files, upstream, caplog):
    from ucgate.app import build_node

    raw = gateway_config(*tls_files, upstream.port)
    raw["id_service"] = {
        "url": "https://localhost:1",
        "ca_file": str(tls_files[0]),
        "secret_file": str(_secret_file(tmp_path)),
    }
    raw["devices"] = {
        "services": ["eas"],
        "default_action": "allowed",
        "user_agents": [{"match": "^Contoso", "client_kind": "ios"}],
    }
    node = build_node(from_dict(raw, path=tmp_path / "gw.toml"))
    gate = node.gateway.devices
    assert isinstance(gate, DeviceGate) and isinstance(gate.checker, RemoteDeviceChecker)
    assert gate.checker.remote is node.remote and gate.services == {"eas"}
    assert gate.extra_ua_rules == (("^Contoso", "ios"),)
    assert "ignored" in caplog.text  # default_action is the id service's
    raw["devices"] = {"enabled": False}
    node2 = build_node(from_dict(raw, path=tmp_path / "gw.toml"))
    assert node2.gateway.devices is None

    async def close():
        await node.remote.aclose()
        await node2.remote.aclose()

    asyncio.run(close())


def test_build_id_node_serves_device_checks(tmp_path, tls_files):
    from ucgate.app import build_id_node

    idcfg = {
        "id_service": {
            "listen": "127.0.0.1:8444",
            "secret_file": str(_secret_file(tmp_path)),
            "tls_cert": str(tls_files[0]),
            "tls_key": str(tls_files[1]),
        },
        "store": {"url": f"sqlite:///{tmp_path / 'data' / 'id.db'}", "key_file": str(tmp_path / "k" / "id.key")},
        "devices": {"default_action": "blocked"},
    }
    (tmp_path / "k").mkdir(mode=0o700)
    (tmp_path / "data").mkdir()
    node = build_id_node(from_dict(idcfg, path=tmp_path / "id.toml", role="id-service"))
    try:
        assert isinstance(node.app.state.devices, DeviceService)
        assert node.app.state.devices.defaults["default_action"] == "blocked"
        assert "/v1/devices/check" in {r.path for r in node.app.routes}
    finally:
        node.ids.close()
