"""Issue 17 on the LAN side: /metrics and request ids on the id service's app (ucgate.id.observe),
event propagation lag (the store row's time to its delivery), sign-in and budget counters, and
label values that never leave their closed sets."""

from __future__ import annotations

import asyncio
import datetime as dt
import re

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ucgate import metrics
from ucgate.config import LockoutConfig, MetricsConfig
from ucgate.id.api import AttemptContext
from ucgate.id.events import EventBus, UserBlocked, from_wire, to_wire
from ucgate.id.factory import open_services
from ucgate.id.http_api import create_id_api
from ucgate.id.observe import observe_app
from ucgate.store.outbox import EventRow

SECRET = b"s3cret-" + b"x" * 40


@pytest.fixture
def ids(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "keys").mkdir(mode=0o700)
    s = open_services(
        store_url=f"sqlite:///{tmp_path / 'data' / 'ucgate.db'}",
        key_file=tmp_path / "keys" / "ucgate.key",
        audit_file=None,
        lockout=LockoutConfig(user_failures=2, ip_failures=50, window=900),
    )
    yield s
    s.close()


def samples() -> dict[tuple[str, tuple], float]:
    out = {}
    for fam in text_string_to_metric_families(metrics.render().decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def get(name: str, **labels) -> float:
    return samples().get((name, tuple(sorted(labels.items()))), 0.0)


def _call(app, client_ip: str, method: str, path: str, **kw) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, client=(client_ip, 40000))
        async with httpx.AsyncClient(transport=transport, base_url="https://id.test") as c:
            return await c.request(method, path, **kw)

    return asyncio.run(go())


def test_id_api_metrics_by_address_and_request_ids(ids):
    app = create_id_api(ids.credentials, secret=SECRET, bus=ids.bus)
    observe_app(app, MetricsConfig(), trust_request_ids=True)
    before = get("ucgate_requests_total", service="id-api", code="401")
    r = _call(app, "10.1.2.3", "GET", "/metrics")
    assert r.status_code == 403 and "ucgate_" not in r.text
    r = _call(app, "127.0.0.1", "GET", "/metrics")
    assert r.status_code == 200 and "ucgate_requests_total" in r.text
    r = _call(app, "::1", "POST", "/v1/auth/password", json={})
    assert r.status_code == 401
    assert get("ucgate_requests_total", service="id-api", code="401") == before + 1
    assert get("ucgate_requests_total", service="metrics", code="403") >= 1
    # a gateway's request id (16 hex digits) is kept on /v1/; anything else is replaced
    r = _call(app, "10.1.2.3", "GET", "/v1/health", headers={"X-Ucgate-Request-Id": "00112233aabbccdd"})
    assert r.headers["x-ucgate-request-id"] == "00112233aabbccdd"
    for forged in ("00112233AABBCCDD", "x" * 16, "00112233aabbccdd0", 'a"b'):
        r = _call(app, "10.1.2.3", "GET", "/v1/health", headers={"X-Ucgate-Request-Id": forged})
        assert (
            re.fullmatch(r"[0-9a-f]{16}", r.headers["x-ucgate-request-id"])
            and r.headers["x-ucgate-request-id"] != forged.lower()
        )
    r = _call(app, "10.1.2.3", "GET", "/healthz", headers={"X-Ucgate-Request-Id": "00112233aabbccdd"})
    assert r.headers["x-ucgate-request-id"] != "00112233aabbccdd"  # only the id API's callers


def test_metrics_can_be_turned_off(ids):
    app = create_id_api(ids.credentials, secret=SECRET, bus=ids.bus)
    observe_app(app, MetricsConfig(enabled=False))
    assert _call(app, "127.0.0.1", "GET", "/metrics").status_code in (401, 404)


def test_event_lag_is_measured_from_the_rows_time():
    bus = EventBus()
    got = []
    bus.subscribe(got.append)
    n = get("ucgate_event_propagation_seconds_count", via="store")
    slow = get("ucgate_event_propagation_seconds_bucket", via="store", le="1.0")
    at = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=3)
    bus.deliver_row(
        EventRow(id=7, at=at.replace(tzinfo=None), kind="user-blocked", username="alice", reason="user-disabled")
    )  # SQLite gives the time back naive (UTC)
    assert got == [UserBlocked("alice", "user-disabled")]
    assert get("ucgate_event_propagation_seconds_count", via="store") == n + 1
    assert get("ucgate_event_propagation_seconds_bucket", via="store", le="1.0") == slow  # > 1 s
    assert get("ucgate_event_propagation_seconds_bucket", via="store", le="5.0") >= n + 1
    # the SSE wire carries the row's time, so a gateway in the DMZ measures the same lag
    row = from_wire(
        "7", "user-blocked", to_wire(EventRow(id=7, at=at, kind="user-blocked", username="alice", reason="r"))
    )
    assert abs((row.at - at).total_seconds()) < 1e-3
    legacy = from_wire("8", "user-blocked", '{"user": "bob", "reason": "r"}')  # an older id service
    assert abs((legacy.at - dt.datetime.now(dt.UTC)).total_seconds()) < 5
    with pytest.raises(ValueError):
        from_wire("9", "user-blocked", '{"user": "bob", "at": "yesterday"}')


def test_sign_ins_and_budget_throttles_are_counted(ids):
    ids.users.add("alice")
    ctx = AttemptContext(client_ip="192.0.2.7", method="basic", service="eas")
    wrong = get("ucgate_id_sign_ins_total", method="basic", result="deny", reason="wrong-password")
    throttled = get("ucgate_budget_throttles_total", scope="user")
    for _ in range(3):  # user_failures = 2: the third is refused by the budget
        v = asyncio.run(ids.credentials.verify_password("alice", "nope", ctx))
    assert v.reason == "throttled"
    assert get("ucgate_id_sign_ins_total", method="basic", result="deny", reason="wrong-password") == wrong + 2
    assert get("ucgate_budget_throttles_total", scope="user") == throttled + 1


def test_label_values_stay_in_their_closed_sets():
    metrics.count_auth("ntlm", "deny", "alice@contoso.com")  # a reason that is not a code
    metrics.count_auth("Digest", "weird", "ok")
    metrics.count_request("meet", 299)
    metrics.count_device("eas", "explode")
    metrics.tls_failure(type("E", (Exception,), {"reason": "SOMETHING_NEW"})())
    text = metrics.render().decode()
    assert "alice" not in text and "Digest" not in text and "weird" not in text and "explode" not in text
    assert 'ucgate_auth_attempts_total{method="ntlm",reason="other",result="deny"}' in text
    assert 'ucgate_auth_attempts_total{method="other",reason="ok",result="deny"}' in text
    assert 'ucgate_requests_total{code="2xx",service="meet"}' in text
    assert 'ucgate_tls_handshake_failures_total{reason="other"}' in text
    assert metrics.auth_method(b"NTLM TlRMTVNTUAAB") == "ntlm" and metrics.auth_method(b"x") == "other"
    assert metrics.app_part("/api/v1/users") == "rest-api" and metrics.app_part("/x") == "other"
