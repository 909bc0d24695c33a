"""User/device partnerships end to end: real clients → the gateway (pre-authentication and the
decide stage) → the simulated SfB front end / Exchange (``ucgate.lab.frontend``), with the id
service in-process and a fake wall clock for trust expiry."""

from __future__ import annotations

import asyncio
import datetime as dt
import http.client
import ssl
import time

import httpx
import pytest
import uvicorn

from ucgate.config import LockoutConfig, from_dict
from ucgate.gateway.devices import DeviceGate
from ucgate.gateway.preauth import PreAuthenticator, PreAuthSettings
from ucgate.gateway.server import Gateway
from ucgate.id.devices import DeviceService
from ucgate.id.factory import open_services
from ucgate.lab.frontend import create_app
from ucgate.policy.devices import DeviceRule
from ucgate.policy.groups import GroupPolicy
from ucgate.protocols.activesync import encode_base64_query
from ucgate.protocols.wbxml import decode
from ucgate.store import PartnershipStore

from ..support import free_port, gateway_config

T0 = dt.datetime(2025, 3, 1, 9, 0, tzinfo=dt.UTC)


class WallClock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> dt.datetime:
        return self.now


class Notices:
    def __init__(self) -> None:
        self.sent = []

    def notify(self, notice) -> bool:
        self.sent.append(notice)
        return True


@pytest.fixture
def frontend(loop_thread):
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(users={}), host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )

    async def start():
        task = asyncio.ensure_future(server.serve())
        for _ in range(200):
            if server.started:
                return task
            await asyncio.sleep(0.01)
        raise RuntimeError("lab front end did not start")

    loop_thread.run(start())
    yield port
    server.should_exit = True
    time.sleep(0.2)


@pytest.fixture
def ids(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "keys").mkdir(mode=0o700)
    s = open_services(
        store_url=f"sqlite:///{tmp_path / 'data' / 'ucgate.db'}",
        key_file=tmp_path / "keys" / "ucgate.key",
        audit_file=tmp_path / "data" / "audit.jsonl",
        lockout=LockoutConfig(user_failures=50, ip_failures=500, window=900),
    )
    s.users.add("alice", upn="alice@contoso.com", sip_uri="sip:alice@contoso.com")
    s.users.add("bob", upn="bob@contoso.com", sip_uri="sip:bob@contoso.com")
    yield s
    s.close()


class Lab:
    def __init__(self, loop_thread, tls_files, frontend, ids, **policy):
        self.clock = WallClock()
        self.notices = Notices()
        self.groups = {"alice": {"sales"}}
        rules = policy.pop("rules", ())
        group_policies = policy.pop("group_policies", ())
        second_factor_available = policy.pop("second_factor_available", None)
        self.devices = DeviceService(
            PartnershipStore(ids.components.repo.engine),
            ids.audit,
            ids.bus,
            rules=rules,
            defaults=policy,
            group_policies=group_policies,
            is_member=lambda u, g: g in self.groups.get(u, ()),
            user_aliases=lambda u: [f"sip:{u}@contoso.com", f"{u}@contoso.com"],
            asp_device=lambda asp_id: ids.asps.get(asp_id).device_id if ids.asps.get(asp_id) else None,
            notifier=self.notices,
            clock=self.clock,
            second_factor_available=second_factor_available,
        )
        self.gate = DeviceGate(self.devices)
        cfg = from_dict(gateway_config(*tls_files, frontend))
        auth = PreAuthenticator(
            ids.credentials,
            PreAuthSettings(netbios_domain="CONTOSO", failure_floor=0),
            device_id_of=self.gate.device_id_of,
        )

        async def start():
            g = Gateway(cfg, auth, devices=self.gate)
            await g.start()
            return g

        self.lt = loop_thread
        self.gateway = loop_thread.run(start())
        ids.bus.subscribe(self.gateway.on_event)
        self.ids = ids
        self.cert = tls_files[0]
        self.url = f"https://127.0.0.1:{self.gateway.port}"

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, verify=ssl.create_default_context(cafile=str(self.cert)), trust_env=False, timeout=10
        )

    def asp(self, user="alice", device=None) -> str:
        return self.ids.asps.create(user, "phone", device)[1]

    def partnership(self, user, device):
        return self.devices.store.get(user, device)

    def stop(self):
        self.lt.run(self.gateway.stop())


@pytest.fixture
def make_lab(loop_thread, tls_files, frontend, ids):
    labs = []

    def make(**policy):
        lab = Lab(loop_thread, tls_files, frontend, ids, **policy)
        labs.append(lab)
        return lab

    yield make
    for lab in labs:
        lab.stop()


EAS = "/Microsoft-Server-ActiveSync"


def eas_target(device="ApplDEV1", user="alice", cmd="FolderSync", dtype="iPhone", base64=False):
    if base64:
        q = encode_base64_query(
            protocol_version="14.1", command=cmd, device_id=device, device_type=dtype, locale=0x0409
        )
        return f"{EAS}?{q}"
    return f"{EAS}?Cmd={cmd}&User={user}&DeviceId={device}&DeviceType={dtype}"


def eas(c, asp, user="alice", **kw):
    return c.post(
        eas_target(user=user, **kw),
        auth=(user, asp),
        headers={
            "MS-ASProtocolVersion": "14.1",
            "User-Agent": "Apple-iPhone9C1/1402.100",
            "Content-Type": "application/vnd.ms-sync.wbxml",
        },
    )


def eas_status(r) -> int | None:
    if r.headers.get("content-type", "").startswith("application/vnd.ms-sync.wbxml") and r.content:
        doc = decode(r.content)
        return int(doc.text("Status") or 0) if doc.text("Status") else None
    return None


def audit(ids, action="device-check"):
    return [e for e in ids.audit.tail(1000) if e.action == action]


# --- ActiveSync -------------------------------------------------------------------------------


@pytest.mark.parametrize("base64", [False, True], ids=["plain-query", "base64-query"])
def test_eas_new_device_quarantined_notified_then_approved(make_lab, base64):
    lab = make_lab()  # default: new devices are quarantined
    asp = lab.asp()
    with lab.client() as c:
        r = eas(c, asp, base64=base64)
        assert r.status_code == 200 and eas_status(r) == 129  # DeviceIsBlockedForThisUser
        assert r.headers["x-ucgate-reason"] == "new-device-quarantined"
        p = lab.partnership("alice", "ApplDEV1")
        assert p.state == "quarantined" and p.client_kind == "eas" and p.device_type == "iPhone"
        assert [n.event for n in lab.notices.sent] == ["device-quarantined"]
        assert eas_status(eas(c, asp, base64=base64)) == 129  # still, and no second notice
        assert len(lab.notices.sent) == 1
        lab.devices.approve(p.id, actor="cli:admin")
        r = eas(c, asp, base64=base64)
        assert r.status_code == 200 and eas_status(r) in (1, 142)  # the front end answered
    assert {e.reason for e in audit(lab.ids)} >= {"new-device-quarantined", "device-trusted"}


def test_eas_rules_and_device_limit(make_lab):
    lab = make_lab(
        default_action="allowed",
        require_second_factor=False,
        max_devices=1,
        rules=[DeviceRule(action="blocked", device_type="Android*", name="no-android")],
    )
    asp = lab.asp()
    with lab.client() as c:
        assert eas_status(eas(c, asp, device="ApplDEV1")) == 142  # allowed: the front end's "provision first"
        r = eas(c, asp, device="ApplDEV2")
        assert eas_status(r) == 129 and r.headers["x-ucgate-reason"] == "device-limit"
        r = eas(c, asp, device="AndroidX", dtype="Android")
        assert eas_status(r) == 129 and r.headers["x-ucgate-reason"] == "new-device-blocked"
    assert lab.partnership("alice", "ApplDEV2") is None and lab.partnership("alice", "AndroidX") is None
    assert any(e.details and e.details.get("rule") == "no-android" for e in audit(lab.ids))


def test_eas_old_protocol_gets_http_403(make_lab):
    lab = make_lab()
    asp = lab.asp()
    with lab.client() as c:
        r = c.post(eas_target(), auth=("alice", asp), headers={"MS-ASProtocolVersion": "12.1"})
        assert r.status_code == 403


def test_eas_user_of_someone_else_is_refused(make_lab):
    lab = make_lab(default_action="allowed", require_second_factor=False)
    asp = lab.asp()
    with lab.client() as c:
        r = c.post(
            f"{EAS}?Cmd=FolderSync&User=bob&DeviceId=ApplDEV1&DeviceType=iPhone",
            auth=("alice", asp),
            headers={"MS-ASProtocolVersion": "14.1"},
        )
        assert r.status_code == 403 and r.headers["x-ucgate-reason"] == "device-user-mismatch"
    assert lab.partnership("alice", "ApplDEV1") is None


def test_eas_stolen_device_bound_asp_from_another_device(make_lab):
    lab = make_lab(default_action="allowed", require_second_factor=False)
    asp = lab.asp(device="ApplDEV1")
    with lab.client() as c:
        assert eas(c, asp, device="ApplDEV1").status_code == 200
        assert eas(c, asp, device="EvilDEV2").status_code == 401  # the ASP does not match there


@pytest.mark.parametrize(
    "device",
    [
        "",
        "x" * 200,
        "bad%01id",
        "has space",
        "{not-a-guid",
    ],
)
def test_eas_bad_device_ids_are_quarantined_not_crashed(make_lab, device):
    lab = make_lab(default_action="allowed", require_second_factor=False)
    asp = lab.asp()
    with lab.client() as c:
        r = c.post(
            f"{EAS}?Cmd=FolderSync&User=alice&DeviceId={device}&DeviceType=iPhone",
            auth=("alice", asp),
            headers={"MS-ASProtocolVersion": "14.1"},
        )
        # quarantined by the problem rule: status 129 where the command is known, else 403
        assert r.status_code in (200, 403), r.status_code
        assert r.headers["x-ucgate-reason"].startswith("device-id-")
        if r.status_code == 200:
            assert eas_status(r) == 129
        assert c.get("/Autodiscover/AutodiscoverService.svc/root").status_code == 200
    assert lab.devices.store.list() == []


def test_eas_remote_wipe(make_lab):
    lab = make_lab(default_action="allowed", require_second_factor=False)
    asp = lab.asp()
    with lab.client() as c:
        assert eas(c, asp).status_code == 200
    lab.devices.wipe(lab.partnership("alice", "ApplDEV1").id, actor="cli:admin")  # cuts that connection
    with lab.client() as c:
        r = eas(c, asp, cmd="FolderSync")
        assert eas_status(r) == 140  # RemoteWipeRequested: the device provisions next
        r = eas(c, asp, cmd="Provision")
        doc = decode(r.content)
        assert doc.tag == "Provision:Provision" and doc.find("RemoteWipe") is not None


# --- block one device while connections are open ------------------------------------------------


def _keepalive(lab, asp, device):
    conn = http.client.HTTPSConnection(
        "127.0.0.1", lab.gateway.port, timeout=5, context=ssl.create_default_context(cafile=str(lab.cert))
    )
    import base64 as b64

    auth = "Basic " + b64.b64encode(f"alice:{asp}".encode()).decode()
    hdrs = {"Authorization": auth, "MS-ASProtocolVersion": "14.1"}

    def request():
        conn.request("POST", eas_target(device=device), headers=hdrs, body=b"")
        r = conn.getresponse()
        r.read()
        return r

    return conn, request


def test_block_closes_that_devices_live_connection_within_a_second(make_lab):
    lab = make_lab(default_action="allowed", require_second_factor=False)
    asp = lab.asp()
    phone, phone_req = _keepalive(lab, asp, "ApplPHONE")
    tablet, tablet_req = _keepalive(lab, asp, "ApplTABLET")
    assert phone_req().status == 200 and tablet_req().status == 200
    p = lab.partnership("alice", "ApplPHONE")
    started = time.monotonic()
    lab.devices.block(p.id, actor="cli:admin")
    phone.sock.settimeout(1.0)
    try:
        closed = phone.sock.recv(1) == b""
    except (ConnectionError, ssl.SSLError):
        closed = True
    assert closed and time.monotonic() - started < 1.0
    assert tablet_req().status == 200  # the user's other device keeps its connection
    with lab.client() as c:
        r = eas(c, asp, device="ApplPHONE")
        assert eas_status(r) == 129 and r.headers["x-ucgate-reason"] == "device-blocked"
    lab.devices.unblock(p.id, actor="cli:admin")
    with lab.client() as c:
        assert eas(c, asp, device="ApplPHONE").status_code == 200
    phone.close()
    tablet.close()


# --- trust lifetime -----------------------------------------------------------------------------


def test_trust_expiry_asks_for_the_second_factor_again(make_lab):
    lab = make_lab(default_action="allowed", trust_lifetime_hours=24)
    asp = lab.asp()
    with lab.client() as c:
        r = eas(c, asp)
        assert r.status_code == 401 and r.headers["x-ucgate-reason"] == "new-device-second-factor"
        assert r.headers["www-authenticate"].startswith("Basic")
        p = lab.partnership("alice", "ApplDEV1")
        lab.devices.approve(p.id, actor="portal:alice")  # the user passed 2FA in the portal
        assert eas(c, asp).status_code == 200
        lab.clock.now += dt.timedelta(hours=23)
        assert eas(c, asp).status_code == 200
        lab.clock.now += dt.timedelta(hours=2)
        r = eas(c, asp)
        assert r.status_code == 401 and r.headers["x-ucgate-reason"] == "trust-expired"
        lab.devices.approve(p.id, actor="portal:alice")
        assert eas(c, asp).status_code == 200


# --- SfB mobile (UCWA) ----------------------------------------------------------------------------

UCWA_UA = "RTCC/7.0.0.0 UCWA/7.0.0.0 AndroidLync/6.25.0.27 (SM-G930U Android 8.0.0)"


def create_app_req(c, asp, endpoint, user="alice"):
    return c.post(
        "/ucwa/oauth/v1/applications",
        auth=(user, asp),
        json={"userAgent": UCWA_UA, "endpointId": endpoint, "culture": "en-US"},
        headers={"User-Agent": UCWA_UA},
    )


def test_ucwa_application_then_requests_on_other_connections(make_lab):
    lab = make_lab(default_action="allowed", require_second_factor=False)
    asp = lab.asp()
    endpoint = "{A917C6F4-1F1B-4E2B-9C6B-5A1B2C3D4E5F}"
    with lab.client() as c:
        r = create_app_req(c, asp, endpoint)
        assert r.status_code == 201, r.text
        me = r.json()["_embedded"]["me"]["_links"]["self"]["href"]
    p = lab.partnership("alice", "a917c6f4-1f1b-4e2b-9c6b-5a1b2c3d4e5f")
    assert p.state == "allowed" and p.client_kind == "android" and p.device_type == "AndroidLync"
    with lab.client() as c2:  # a new connection: attributed to the device by the application id
        assert c2.get(me, auth=("alice", asp)).status_code == 200
        assert c2.get("/ucwa/oauth/v1/applications/101999/me", auth=("alice", asp)).status_code == 404
    lab.devices.block(p.id, actor="cli:admin")
    with lab.client() as c3:
        r = c3.get(me, auth=("alice", asp))
        assert r.status_code == 403 and r.json()["subcode"] == "DeviceBlocked"


def test_ucwa_quarantine_and_limit_and_stolen_asp(make_lab):
    lab = make_lab(max_devices=1)
    asp = lab.asp()
    with lab.client() as c:
        r = create_app_req(c, asp, "11111111-1111-1111-1111-111111111111")
        assert r.status_code == 403 and r.json()["subcode"] == "DeviceQuarantined"
        r = create_app_req(c, asp, "22222222-2222-2222-2222-222222222222")
        assert r.status_code == 403 and r.json()["reason"] == "device-limit"
        bound = lab.asp(device="33333333-3333-3333-3333-333333333333")
        r = create_app_req(c, bound, "44444444-4444-4444-4444-444444444444")
        assert r.status_code == 401  # the bound ASP is only good from its own endpointId
        r = c.post(
            "/ucwa/oauth/v1/applications",
            auth=("alice", asp),
            content=b"{not json",
            headers={"Content-Type": "application/json"},
        )
        assert r.status_code == 403 and r.json()["reason"] == "device-id-malformed"
        r = c.post(
            "/ucwa/oauth/v1/applications",
            auth=("alice", asp),
            content=b"x" * 20000,
            headers={"Content-Type": "application/json"},
        )
        assert r.status_code == 413


# --- CertProv -------------------------------------------------------------------------------------


def certprov_body(device="{B1B2C3D4-0000-4000-8000-000000000001}", entity="sip:alice@contoso.com"):
    return (
        '<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"><s:Body>'
        f'<GetAndPublishCert xmlns="http://schemas.microsoft.com/OCS/AuthWebServices/" '
        f'DeviceId="{device}" Entity="{entity}"><RequestSecurityToken '
        'xmlns="http://docs.oasis-open.org/ws-sx/ws-trust/200512"/></GetAndPublishCert>'
        "</s:Body></s:Envelope>"
    ).encode()


def certprov(c, asp, body):
    return c.post(
        "/CertProv/CertProvisioningService.svc",
        auth=("alice", asp),
        content=body,
        headers={
            "Content-Type": "application/soap+xml; charset=utf-8",
            "User-Agent": "UCCAPI/16.0.4849.1000 OC/16.0.4849.1000 (Skype for Business)",
        },
    )


def test_certprov_gated(make_lab):
    lab = make_lab(group_policies=[GroupPolicy("contractors", "contractors", {"certprov": "deny"})])
    asp = lab.asp()
    with lab.client() as c:
        r = certprov(c, asp, certprov_body())
        assert r.status_code == 403 and r.headers["x-ucgate-reason"] == "certprov-not-trusted"
        p = lab.partnership("alice", "b1b2c3d4-0000-4000-8000-000000000001")
        assert p.state == "quarantined" and p.client_kind == "pc-external"
        lab.devices.approve(p.id, actor="cli:admin")
        r = certprov(c, asp, certprov_body())
        assert r.status_code == 200 and b"BinarySecurityToken" in r.content
        r = certprov(c, asp, certprov_body(entity="sip:bob@contoso.com"))
        assert r.status_code == 403 and r.headers["x-ucgate-reason"] == "device-user-mismatch"
        lab.groups["alice"] = {"contractors"}
        r = certprov(c, asp, certprov_body())
        assert r.status_code == 403 and r.headers["x-ucgate-reason"] == "certprov-denied-by-policy"


# --- issue 13 -------------------------------------------------------------------------------------


def test_answers_of_the_gate_carry_one_content_type(make_lab):
    """Issue 13 item 7: the gate's own EAS (WBXML) and UCWA (JSON) answers had a second
    ``Content-Type: text/plain`` from the generic answer writer."""
    lab = make_lab()  # new devices are quarantined
    asp = lab.asp()
    with lab.client() as c:
        r = eas(c, asp)
        assert eas_status(r) == 129
        assert r.headers.get_list("content-type") == ["application/vnd.ms-sync.wbxml"]
        r = create_app_req(c, asp, "55555555-5555-5555-5555-555555555555")
        assert r.status_code == 403 and r.json()["subcode"] == "DeviceQuarantined"
        assert r.headers.get_list("content-type") == ["application/json; charset=utf-8"]
        r = c.get("/ucwa/oauth/v1/applications")  # a plain refusal keeps its text/plain
        assert r.status_code == 401 and r.headers.get_list("content-type") == ["text/plain; charset=utf-8"]


def test_allowed_by_default_without_a_second_factor_waits_for_approval(make_lab):
    """Issue 13 item 9: default_action = "allowed" with require_second_factor (the default) and
    a user who has no second factor: every new device was challenged for a code the user
    cannot give (new-device-second-factor, then trust-expired), with a message pointing to a
    portal that cannot approve an allowed device. Now: quarantined for approval, saying so."""
    lab = make_lab(default_action="allowed", second_factor_available=lambda user: False)
    asp = lab.asp()
    with lab.client() as c:
        r = eas(c, asp)
        assert eas_status(r) == 129 and r.headers["x-ucgate-reason"] == "new-device-approval-required"
        p = lab.partnership("alice", "appldev1")
        assert p.state == "quarantined"  # listed for approval (admin UI, portal, CLI)
        assert [n.reason for n in lab.notices.sent] == ["new-device-approval-required"]
        r = create_app_req(c, asp, "66666666-6666-6666-6666-666666666666")
        assert r.status_code == 403 and r.json()["reason"] == "new-device-approval-required"
        assert "approval" in r.json()["message"] and "second factor" in r.json()["message"]
        lab.devices.approve(p.id, actor="cli:admin")
        assert eas(c, asp).status_code == 200
        lab.clock.now += dt.timedelta(hours=25)  # the trust ends: quarantined again, told again
        r = eas(c, asp)
        assert eas_status(r) == 129 and r.headers["x-ucgate-reason"] == "trust-expired-approval-required"
        assert lab.partnership("alice", "appldev1").state == "quarantined"
        assert len(lab.notices.sent) == 3
    # a user who can give a code is still challenged, and told how
    lab2 = make_lab(default_action="allowed", second_factor_available=lambda user: True)
    with lab2.client() as c:
        r = eas(c, asp, device="ApplDEV9")
        assert r.status_code == 401 and r.headers["x-ucgate-reason"] == "new-device-second-factor"
        assert b"6-digit code" in r.content and b"portal" not in r.content


def test_device_ids_are_lower_case_in_store_and_audit(make_lab):
    """Issue 13 item 10: the store held "appldev1", the audit log "ApplDEV1"."""
    lab = make_lab(default_action="allowed", require_second_factor=False)
    asp = lab.asp()
    with lab.client() as c:
        assert eas(c, asp, device="ApplDEV1").status_code == 200
    assert lab.devices.store.list()[0].device_id == "appldev1"
    events = [e for e in lab.ids.audit.tail(100) if e.action in ("device-check", "sign-in")]
    assert {e.action for e in events} == {"device-check", "sign-in"}
    assert {e.device for e in events} == {"appldev1"}


def _utc(t):
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


def test_last_seen_follows_requests_on_a_keep_alive_connection(make_lab):
    """Issue 13 item 10: an allowed device was cached on its connection for 5 minutes and
    last_seen stayed at the connection's first request; now within a minute of the last."""
    lab = make_lab(default_action="allowed", require_second_factor=False)
    asp = lab.asp()
    conn, request = _keepalive(lab, asp, "ApplKEEP")
    try:
        assert request().status == 200
        assert _utc(lab.partnership("alice", "applkeep").last_seen) == T0
        for minutes in range(2, 12, 2):
            lab.clock.now = T0 + dt.timedelta(minutes=minutes)
            assert request().status == 200
        seen = _utc(lab.partnership("alice", "applkeep").last_seen)
        assert seen >= T0 + dt.timedelta(minutes=9), seen
    finally:
        conn.close()
