"""The REST API's answers are what its OpenAPI document says (issue 15: the answers' schemas are
generated from ``ucgate.web.answers``, not written by hand).

Every operation is called on a store with real data in it — users with and without an
authenticator app, active and revoked ASPs, devices allowed, quarantined and wiped, the
configuration file's rules and policies beside the store's, audit events — and every JSON answer
is validated against the schema the document publishes for that operation and status (JSON
Schema 2020-12, as OpenAPI 3.1 uses it). An answer that its model does not describe is never
sent: the client gets a 500 and the log names the field, not its value.
"""

from __future__ import annotations

import base64
import csv
import datetime as dt
import io
import json
import logging
import time

import jsonschema
import pytest
from starlette.testclient import TestClient

from ucgate.config import LockoutConfig, from_dict
from ucgate.id.devices import open_device_service
from ucgate.id.directory import AccountState, DirectoryUser
from ucgate.id.factory import open_services
from ucgate.id.otp import OtpService, totp
from ucgate.protocols.devices import device_from_request
from ucgate.web.api import OPENAPI, OPERATIONS
from ucgate.web.app import create_web_app, make_context
from ucgate.web.settings import WebConfig

SINCE = dt.datetime(2026, 12, 4, 8, 0, tzinfo=dt.UTC)


def _facts(user: str, device: str, kind: str = "iPhone"):
    return device_from_request(
        "eas", "POST", f"/Microsoft-Server-ActiveSync?Cmd=Sync&User={user}&DeviceId={device}&DeviceType={kind}", {}
    )


class Directory:
    """The directory's answer for the user page (the directory itself is tested against Samba AD
    in tests/id); ``fail``: the directory cannot be read."""

    fail = False

    def resolve(self, name: str) -> DirectoryUser | None:
        if self.fail:
            raise OSError("ldap://dc1: connection refused")
        if name != "alice":
            return None
        return DirectoryUser(
            dn="CN=Alice,OU=Staff,DC=contoso,DC=com",
            sam_account_name="alice",
            upn="alice@contoso.com",
            sip_uri=None,
            mail=None,
            display_name="Alice",
            object_guid=None,
            object_sid=None,
            groups=frozenset({"CN=Mobile,DC=contoso,DC=com"}),
            state=AccountState(),
        )


@pytest.fixture
def web(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "keys").mkdir(mode=0o700)
    cfg = from_dict(
        {
            "gateway": {"listen": "127.0.0.1:0", "plain_http": True},
            "upstreams": {"frontend": {"url": "http://127.0.0.1:9"}},
            "auth": {"two_factor": "otp-appended", "two_factor_groups": {"mobile": "off"}},
            "devices": {
                "default_action": "quarantined",
                "rules": [
                    {"name": "file-allow-iphone", "action": "allowed", "device_type": "iPhone*"},
                    {"name": "file-block-wp", "action": "blocked", "device_type": "WP*", "groups": ["sales"]},
                ],
            },
            "policy": [{"group": "sales", "max_devices": 2, "certprov": "deny"}],
        },
        path=tmp_path / "ucgate.toml",
    )
    ids = open_services(
        store_url=f"sqlite:///{tmp_path / 'data' / 'ucgate.db'}",
        key_file=tmp_path / "keys" / "ucgate.key",
        audit_file=None,
        lockout=LockoutConfig(user_failures=50, ip_failures=500, window=900),
    )
    for name in ("alice", "bob", "carol"):
        ids.users.add(name, upn=f"{name}@contoso.com")
    devices = open_device_service(cfg, ids)
    ctx = make_context(
        ids,
        config=cfg,
        devices=devices,
        web=WebConfig(user_roles={"alice": "admin"}, api_tokens_file=tmp_path / "api-tokens.json"),
        live_users=lambda: {"alice": SINCE, "bob": SINCE},
    )
    ctx.console.directory = Directory()
    # alice: an authenticator app, two ASPs (one revoked), an allowed iPhone and a quarantined tablet
    otp = OtpService(ids.components.repo, ids.components.keyring, users=ids.users)
    e = otp.begin_enrolment("alice")
    assert otp.confirm_enrolment(
        "alice", totp(base64.b32decode(e.secret_b32 + "=" * (-len(e.secret_b32) % 8)), time.time())
    )
    ids.asps.create("alice", "iPhone mail", "ApplDEV1")
    old, _ = ids.asps.create("alice", "old laptop", None)
    ids.asps.revoke(old)
    devices.check(
        "alice", _facts("alice", "ApplDEV1"), service="eas", second_factor_ok=True, client_address="192.0.2.7"
    )
    devices.check("alice", _facts("alice", "TAB1", "Android"), service="eas", client_address="192.0.2.7")
    # bob: a device wiped and waiting for the phone's acknowledgement
    wiped = devices.check("bob", _facts("bob", "BOB1"), service="eas", second_factor_ok=True)
    assert wiped.outcome == "allow"
    devices.wipe(devices.store.get("bob", "bob1").id, actor="test")
    yield ctx, create_web_app(ctx)
    ids.close()


def _answer_schema(path: str, method: str, status: int) -> dict | None:
    """The schema the document gives the JSON answer of (path, method, status), refs resolvable."""
    answer = OPENAPI["paths"][path][method]["responses"].get(str(status))
    assert answer is not None, f"{method.upper()} {path}: status {status} is not in the document"
    media = answer.get("content", {}).get("application/json")
    return None if media is None else {**media["schema"], "components": OPENAPI["components"]}


def _check(r, path: str, method: str) -> None:
    schema = _answer_schema(path, method, r.status_code)
    if r.headers.get("content-type", "").startswith("text/csv"):
        assert "text/csv" in OPENAPI["paths"][path][method]["responses"][str(r.status_code)]["content"]
        return
    if schema is None:
        assert not r.content, (path, r.status_code)
        return
    jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker()).validate(r.json())


def test_every_answer_validates_against_the_document(web):
    ctx, app = web
    c = TestClient(app, base_url="https://testserver")
    h = {"Authorization": f"Bearer {ctx.tokens.create('admin', 'answers')[1]}"}
    alice_device = ctx.console.devices.store.get("alice", "tab1").id
    called: set[tuple[str, str]] = set()

    def call(method: str, path: str, template: str, status: int, **kw):
        r = c.request(method, "/api/v1" + path, headers=h, **kw)
        assert r.status_code == status, (method, path, r.status_code, r.text[:300])
        _check(r, "/api/v1" + template, method.lower())
        called.add(("/api/v1" + template, method.lower()))
        return r

    call("GET", "/dashboard", "/dashboard", 200)
    assert c.get("/api/v1/dashboard", headers=h).json()["live_sessions"] == {
        "alice": SINCE.isoformat(),
        "bob": SINCE.isoformat(),
    }
    assert {u["username"] for u in call("GET", "/users", "/users", 200).json()} == {"alice", "bob", "carol"}
    user = call("GET", "/users/alice", "/users/{username}", 200).json()
    assert user["totp"]["state"] == "active" and user["directory"]["dn"].startswith("CN=Alice")
    assert {a["active"] for a in user["asps"]} == {True, False}
    assert {d["state"] for d in user["devices"]} == {"allowed", "quarantined"}
    ctx.console.directory.fail = True
    assert "error" in call("GET", "/users/alice", "/users/{username}", 200).json()["directory"]
    ctx.console.directory.fail = False
    call("GET", "/users/nobody", "/users/{username}", 404)
    call("PUT", "/users/carol/state", "/users/{username}/state", 200, json={"enabled": False})
    call("PUT", "/users/carol/state", "/users/{username}/state", 400, json={"enabled": "no"})
    call("POST", "/users/carol/sign-out", "/users/{username}/sign-out", 200)
    asp = call("POST", "/users/carol/asps", "/users/{username}/asps", 201, json={"label": "mail"}).json()
    call("DELETE", f"/asps/{asp['id']}", "/asps/{asp_id}", 200)
    call("DELETE", "/asps/nope", "/asps/{asp_id}", 404)
    assert call("DELETE", "/users/alice/otp", "/users/{username}/otp", 200).json()["reset"] is True
    devices = call("GET", "/devices", "/devices", 200).json()
    assert any(d["wipe_pending"] for d in devices)
    call("GET", "/devices?state=nope", "/devices", 400)
    call("GET", f"/devices/{alice_device}", "/devices/{id}", 200)
    call("POST", f"/devices/{alice_device}/approve", "/devices/{id}/{action}", 200)
    call("POST", f"/devices/{alice_device}/block", "/devices/{id}/{action}", 200)
    call("DELETE", f"/devices/{alice_device}", "/devices/{id}", 204)
    call("GET", f"/devices/{alice_device}", "/devices/{id}", 404)
    events = call("GET", "/audit", "/audit", 200).json()
    assert {"device-check", "asp.create", "asp.revoke", "device.wipe", "user.disable"} <= {e["action"] for e in events}
    export = call("GET", "/audit?format=csv", "/audit", 200).text
    assert export.startswith("id,at,")
    rows = list(csv.DictReader(io.StringIO(export)))
    with_details = [r for r in rows if r["details"]]
    assert with_details and all(isinstance(json.loads(r["details"]), dict) for r in with_details)  # JSON, not repr
    call("GET", "/audit?limit=x", "/audit", 400)
    rule = call(
        "POST", "/rules", "/rules", 201, json={"name": "no-android", "action": "blocked", "client_kind": "android"}
    )
    call("POST", f"/rules/{rule.json()['id']}/move", "/rules/{id}/move", 200, json={"position": 1})
    policy = call(
        "POST", "/policies", "/policies", 201, json={"group": "mobile", "settings": {"trust_lifetime_hours": 8.5}}
    )
    call("POST", f"/policies/{policy.json()['id']}/move", "/policies/{id}/move", 200, json={"position": 1})
    rules = call("GET", "/rules", "/rules", 200).json()
    assert [r["source"] for r in rules["device_rules"]] == ["file", "file", "store"]
    assert [p["source"] for p in rules["group_policies"]] == ["file", "store"] and rules["two_factor"]["groups"]
    call("GET", "/policies", "/policies", 200)
    call("DELETE", f"/rules/{rule.json()['id']}", "/rules/{id}", 204)
    call("DELETE", f"/policies/{policy.json()['id']}", "/policies/{id}", 204)
    call("DELETE", "/policies/999", "/policies/{id}", 404)
    call("GET", "/settings", "/settings", 200)
    call("GET", "/openapi.json", "/openapi.json", 200)
    assert called >= {(op.path, op.method) for op in OPERATIONS}, "an operation was not called"


def test_an_answer_its_model_does_not_describe_is_not_sent(web, caplog):
    """A field the console adds without declaring it in ``ucgate.web.answers`` (and the
    document) is a 500 with a log line naming the field, never a silent leak to API clients."""
    ctx, app = web
    c = TestClient(app, base_url="https://testserver", raise_server_exceptions=False)
    h = {"Authorization": f"Bearer {ctx.tokens.create('admin', 'answers')[1]}"}
    detail = ctx.console.user_detail

    def leaky(name):
        return {**detail(name), "nt_hash": "8846f7eaee8fb117ad06bdd830b7586c"}

    ctx.console.user_detail = leaky
    with caplog.at_level(logging.ERROR, logger="ucgate.web.api"):
        r = c.get("/api/v1/users/alice", headers=h)
    assert r.status_code == 500 and r.json()["error"] == "internal"
    assert "8846f7" not in r.text
    line = next(rec.getMessage() for rec in caplog.records if rec.name == "ucgate.web.api")
    assert "nt_hash (extra_forbidden)" in line and "GET /api/v1/users/alice" in line and "8846f7" not in line
    # a missing field or a wrong type is refused the same way
    ctx.console.user_detail = lambda name: {k: v for k, v in detail(name).items() if k != "role"}
    assert c.get("/api/v1/users/alice", headers=h).status_code == 500
    ctx.console.user_detail = lambda name: {**detail(name), "enabled": "yes"}
    assert c.get("/api/v1/users/alice", headers=h).status_code == 500


def test_the_document_has_no_hand_written_answer_schema():
    """Every JSON answer of the document is a model's schema ($ref), an array of them, or the two
    free-form ones: the settings (the configuration's tables) and the document itself."""
    free = {("/api/v1/settings", "get"), ("/api/v1/openapi.json", "get")}
    for path, ops in OPENAPI["paths"].items():
        for method, op in ops.items():
            for answer in op["responses"].values():
                schema = answer.get("content", {}).get("application/json", {}).get("schema")
                if schema is None:
                    continue
                if (path, method) in free and schema == {"type": "object"}:
                    continue
                ref = schema.get("$ref") or schema.get("items", {}).get("$ref")
                assert ref and ref.rsplit("/", 1)[1] in OPENAPI["components"]["schemas"], (path, method, schema)
