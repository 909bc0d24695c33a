"""The REST API (/api/v1): tokens and roles, JSON errors, the OpenAPI document, and
schemathesis against it for a bounded time (no 500s)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings
from openapi_spec_validator import validate
from starlette.testclient import TestClient

from ucgate.config import LockoutConfig
from ucgate.id.factory import open_services
from ucgate.web.api import OPENAPI
from ucgate.web.app import create_web_app, make_context
from ucgate.web.settings import WebConfig


@pytest.fixture
def web(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "keys").mkdir(mode=0o700)
    ids = open_services(
        store_url=f"sqlite:///{tmp_path / 'data' / 'ucgate.db'}",
        key_file=tmp_path / "keys" / "ucgate.key",
        audit_file=None,
        lockout=LockoutConfig(user_failures=50, ip_failures=500, window=900),
    )
    ids.users.add("alice", upn="alice@contoso.com")
    ctx = make_context(ids, web=WebConfig(user_roles={"alice": "admin"}, api_tokens_file=tmp_path / "api-tokens.json"))
    yield ctx, create_web_app(ctx)
    ids.close()


def bearer(ctx, role):
    return {"Authorization": f"Bearer {ctx.tokens.create(role, 'test')[1]}"}


def test_openapi_document_is_valid():
    validate(OPENAPI)


def test_unauthorised_calls_get_401_or_403_json(web):
    ctx, app = web
    c = TestClient(app, base_url="https://testserver")
    r = c.get("/api/v1/devices")
    assert r.status_code == 401 and r.json()["error"] == "unauthorized"
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert c.get("/api/v1/devices", headers={"Authorization": "Bearer ucg_nope_nope"}).status_code == 401
    r = c.get("/api/v1/settings", headers=bearer(ctx, "helpdesk"))
    assert r.status_code == 403 and r.json()["error"] == "forbidden"
    r = c.post("/api/v1/users/alice/asps", json={"label": "x"}, headers=bearer(ctx, "auditor"))
    assert r.status_code == 403


def test_tokens_are_hashed_at_rest_and_revocable(web):
    ctx, app = web
    tok, plain = ctx.tokens.create("admin", "automation")
    stored = ctx.tokens.path.read_text()
    secret = plain.split("_", 2)[2]  # "ucg_<id>_<secret>"; the secret itself may contain "_"
    assert plain not in stored and secret not in stored
    assert oct(ctx.tokens.path.stat().st_mode & 0o777) == "0o600"
    c = TestClient(app, base_url="https://testserver")
    h = {"Authorization": f"Bearer {plain}"}
    assert c.get("/api/v1/users", headers=h).status_code == 200
    ctx.tokens.revoke(tok.id)
    assert c.get("/api/v1/users", headers=h).status_code == 401


def test_asp_via_api_is_shown_once_and_bad_input_names_the_field(web):
    ctx, app = web
    c = TestClient(app, base_url="https://testserver")
    h = bearer(ctx, "admin")
    r = c.post("/api/v1/users/alice/asps", json={"label": ""}, headers=h)
    assert r.status_code == 400 and r.json()["field"] == "label"
    r = c.post("/api/v1/users/alice/asps", content=b"[", headers=h)
    assert r.status_code == 400 and r.json()["field"] == "body"
    r = c.post("/api/v1/users/alice/asps", json={"label": "mail"}, headers=h)
    assert r.status_code == 201
    pw = r.json()["password"]
    assert pw not in c.get("/api/v1/users/alice", headers=h).text
    assert ctx.console.ids.asps.verify_password("alice", pw) is not None
    r = c.get("/api/v1/devices?state=nope", headers=h)
    assert r.status_code == 400 and r.json()["field"] == "state"
    assert c.get("/api/v1/devices/999", headers=h).status_code == 404


def test_settings_are_masked(tmp_path, web):
    ctx, app = web
    from ucgate.config import from_dict

    secret = tmp_path / "secret"
    secret.write_text("s3cr3t-shared-secret-value-0123456789")
    secret.chmod(0o600)
    cfg = from_dict(
        {
            "gateway": {"plain_http": True},
            "upstreams": {"frontend": {"url": "http://fe"}},
            "id_service": {"url": "https://id.example:8444", "secret_file": str(secret)},
        }
    )
    ctx.console.config = cfg
    c = TestClient(app, base_url="https://testserver")
    r = c.get("/api/v1/settings", headers=bearer(ctx, "auditor"))
    assert r.status_code == 200 and "s3cr3t" not in r.text
    assert r.json()["id_service"]["secret"] == "••••••••"


def test_schemathesis_no_server_errors(web):
    import schemathesis
    from hypothesis import given
    from schemathesis.checks import content_type_conformance, response_schema_conformance, status_code_conformance

    ctx, app = web
    headers = bearer(ctx, "admin")
    schema = schemathesis.openapi.from_asgi("/api/v1/openapi.json", app)

    failures, calls = [], []
    for result in schema.get_all_operations():
        op = result.ok()

        @settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def run(case):  # runs to the end in this iteration (given(...)() below): op is this one
            case.headers = {**(case.headers or {}), **headers}
            r = case.call()
            calls.append(op.label)  # noqa: B023
            if r.status_code >= 500:  # schemathesis' not_a_server_error, collecting every failure
                failures.append((op.label, r.status_code, r.text[:200]))  # noqa: B023
            try:  # the answer is what the document says: its status code, media type and schema
                case.validate_response(
                    r, checks=(status_code_conformance, content_type_conformance, response_schema_conformance)
                )
            except Exception as e:
                failures.append((op.label, r.status_code, str(e)[:300]))  # noqa: B023

        given(op.as_strategy())(run)()
    assert not failures, failures
    assert len(set(calls)) >= 14  # every operation was exercised


def test_every_route_is_in_the_document_and_the_examples_validate(web):
    import json

    from starlette.routing import Mount

    from ucgate.id.api import parse_wire
    from ucgate.web.api import EXAMPLES

    ctx, app = web
    mount = next(r for r in app.routes if isinstance(r, Mount) and r.path == "/api/v1")
    served = {
        (f"/api/v1{r.path}".replace(":int", ""), m.lower())
        for r in mount.routes
        for m in (r.methods or ())
        if m != "HEAD"
    }
    documented = {(p, m) for p, ops in OPENAPI["paths"].items() for m in ops}
    assert served == documented
    names = {}
    for model, example in EXAMPLES.items():
        parse_wire(model, json.dumps(example))  # raises for an example the model refuses
        names[model.__name__] = model
    for ops in OPENAPI["paths"].values():
        for op in ops.values():
            body = op.get("requestBody", {}).get("content", {}).get("application/json")
            if body is not None and "$ref" in body["schema"]:
                model = names[body["schema"]["$ref"].rsplit("/", 1)[1]]
                assert body["example"] == EXAMPLES[model]


def test_malformed_bodies_are_400_naming_the_field(web):
    ctx, app = web
    c = TestClient(app, base_url="https://testserver")
    h = bearer(ctx, "admin")
    r = c.put("/api/v1/users/alice/state", json={"enabled": "yes"}, headers=h)
    assert r.status_code == 400 and r.json()["field"] == "enabled"
    r = c.post("/api/v1/users/alice/asps", json={"label": "x" * 129}, headers=h)
    assert r.status_code == 400 and r.json()["field"] == "label"
    r = c.post("/api/v1/users/alice/asps", json={"label": "mail", "device_id": 5}, headers=h)
    assert r.status_code == 400 and r.json()["field"] == "device_id"
    r = c.post("/api/v1/users/alice/asps", content=b"x" * 20_000, headers=h)
    assert r.status_code == 400 and r.json()["field"] == "body"
    r = c.post("/api/v1/rules", json={"name": "x", "action": "blocked", "colour": "red"}, headers=h)
    assert r.status_code == 400 and (r.json()["field"], r.json()["message"]) == ("colour", "unknown field")
    r = c.post("/api/v1/policies", json={"group": "g", "settings": {"max_devices": "1"}}, headers=h)
    assert r.status_code == 400 and r.json()["field"] == "settings.max_devices"
    r = c.put("/api/v1/users/alice/state", json={"enabled": False, "note": "ignored, as before"}, headers=h)
    assert r.status_code == 200 and r.json()["enabled"] is False


def test_the_token_is_checked_before_the_body_is_read(web):
    """A call without a valid token is answered 401/403 without reading its body (an
    unauthenticated client cannot make the API buffer MAX_BODY bytes first)."""
    import asyncio

    ctx, app = web

    async def call(headers: list[tuple[bytes, bytes]]) -> tuple[int, int]:
        reads = 0
        sent: list[dict] = []

        async def receive() -> dict:
            nonlocal reads
            reads += 1
            return {"type": "http.request", "body": b'{"label": "x"}', "more_body": False}

        async def send(message: dict) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "https",
            "path": "/api/v1/users/alice/asps",
            "raw_path": b"/api/v1/users/alice/asps",
            "query_string": b"",
            "headers": [(b"host", b"testserver"), (b"content-type", b"application/json"), *headers],
            "client": ("127.0.0.1", 5000),
            "server": ("testserver", 443),
        }
        await app(scope, receive, send)
        return sent[0]["status"], reads

    assert asyncio.run(call([])) == (401, 0)
    auditor = bearer(ctx, "auditor")["Authorization"].encode()
    assert asyncio.run(call([(b"authorization", auditor)])) == (403, 0)
    admin = bearer(ctx, "admin")["Authorization"].encode()
    status, reads = asyncio.run(call([(b"authorization", admin)]))
    assert status == 201 and reads >= 1
