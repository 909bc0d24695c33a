"""Two gateways behind a real HAProxy (TCP mode, send-proxy-v2, option httpchk GET /readyz on
each gateway's health listener), as examples/haproxy/haproxy.cfg sets them up: the client's
own address reaches the front end's X-Forwarded-For and the audit, not HAProxy's; a gateway
that stops, or says it is not ready, leaves the pool and new connections go to the other.

Clients bind 127.0.0.23, HAProxy connects to the gateways from 127.0.0.1 (trusted_proxies).
"""

from __future__ import annotations

import re
import shutil
import ssl
import subprocess
from pathlib import Path

import httpx
import pytest

from ucgate.config import LockoutConfig, load
from ucgate.gateway.preauth import PreAuthenticator, PreAuthSettings
from ucgate.id.factory import open_services

from ..lab.haproxy import HAPROXY, Backend, haproxy_lab  # noqa: F401  (fixture)
from ..support import RecordingUpstream, start_gateway

CLIENT = "127.0.0.23"
ANON = "/Autodiscover/AutodiscoverService.svc/root"


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
    yield s
    s.close()


class Ready:
    def __init__(self) -> None:
        self.state = (True, "ok")

    async def __call__(self):
        return self.state


@pytest.fixture
def pool(loop_thread, tls_files, ids, haproxy_lab):
    """Two gateways (each with its own recording front end, to see who served) behind HAProxy."""
    ups, gws, ready = [], [], []
    auth = PreAuthenticator(ids.credentials, PreAuthSettings(netbios_domain="LAB"))
    for _ in range(2):
        up = RecordingUpstream()
        loop_thread.run(up.start())
        g = start_gateway(
            loop_thread,
            *tls_files,
            up.port,
            authenticator=auth,
            proxy_protocol=True,
            trusted_proxies=["127.0.0.1/32"],
            health_listen="127.0.0.1:0",
        )
        r = Ready()
        g.gateway.health.readiness = r
        ups.append(up)
        gws.append(g)
        ready.append(r)
    lb = haproxy_lab([Backend(f"gw{i + 1}", g.port, g.gateway.health.port) for i, g in enumerate(gws)])
    lb.wait_status({"gw1": "UP", "gw2": "UP"})
    yield lb, gws, ups, ready
    for g in gws:
        if g.gateway._server is not None and g.gateway._server.is_serving():
            g.stop()
    for up in ups:
        loop_thread.run(up.stop())


def client(lb, tls_files, **kw) -> httpx.Client:
    """A client from 127.0.0.23; a new connection per request (``Connection: close``)."""
    verify = ssl.create_default_context(cafile=str(tls_files[0]))
    return httpx.Client(
        base_url=f"https://127.0.0.1:{lb.port}",
        timeout=10,
        transport=httpx.HTTPTransport(local_address=CLIENT, verify=verify),
        headers={"Connection": "close"},
        **kw,
    )


def served(ups) -> list[int]:
    return [len(up.received) for up in ups]


def test_real_client_address_reaches_front_end_and_audit(pool, tls_files, ids):
    lb, gws, ups, _ = pool
    _, asp = ids.asps.create("alice", "phone")
    with client(lb, tls_files) as c:
        r = c.get("/ucwa/oauth/v1/applications", auth=("alice", asp))
        assert r.status_code == 200, r.text
        assert c.get(ANON).status_code == 200
        assert c.get("/ucwa/oauth/v1/applications", auth=("alice", "wrong")).status_code == 401
    seen = [rec for up in ups for rec in up.received]
    assert len(seen) == 2
    assert {rec.header("X-Forwarded-For") for rec in seen} == {CLIENT}
    events = [e for e in ids.audit.tail(100) if e.action == "sign-in"]
    assert {e.result for e in events} == {"allow", "deny"}
    assert {e.client_address for e in events} == {CLIENT}  # not HAProxy's 127.0.0.1


def test_both_gateways_serve_then_one_stops(pool, tls_files):
    lb, gws, ups, _ = pool
    with client(lb, tls_files) as c:
        for _ in range(4):
            assert c.get(ANON).status_code == 200
    assert served(ups) == [2, 2]  # roundrobin over both
    gws[0].stop()  # gw1 goes away: its listener and its health listener close
    with client(lb, tls_files) as c:
        for _ in range(6):  # at once: a refused connection is redispatched to gw2
            assert c.get(ANON).status_code == 200
    assert served(ups) == [2, 8]
    lb.wait_status({"gw1": "DOWN", "gw2": "UP"})


def test_a_gateway_that_is_not_ready_is_drained(pool, tls_files):
    lb, gws, ups, ready = pool
    ready[1].state = (False, "id service https://id1:9443: unreachable")
    lb.wait_status({"gw1": "UP", "gw2": "DOWN"})
    with client(lb, tls_files) as c:
        for _ in range(4):
            assert c.get(ANON).status_code == 200
    assert served(ups) == [4, 0]
    ready[1].state = (True, "ok")
    lb.wait_status({"gw2": "UP"})
    with client(lb, tls_files) as c:
        for _ in range(4):
            assert c.get(ANON).status_code == 200
    assert served(ups)[1] > 0


def test_send_proxy_v1_too(loop_thread, tls_files, haproxy_lab, upstream):
    g = start_gateway(loop_thread, *tls_files, upstream.port, proxy_protocol=True, trusted_proxies=["127.0.0.1/32"])
    try:
        lb = haproxy_lab([Backend("gw1", g.port)], send_proxy="send-proxy")  # a TCP check
        lb.wait_status({"gw1": "UP"})
        with client(lb, tls_files) as c:
            assert c.get(ANON).status_code == 200
        assert upstream.received[-1].header("X-Forwarded-For") == CLIENT
    finally:
        g.stop()


EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "haproxy"


def test_example_haproxy_cfg_is_valid(haproxy_lab):
    r = subprocess.run([HAPROXY, "-c", "-f", str(EXAMPLES / "haproxy.cfg")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("name,role", [("gateway.toml", "gateway"), ("id-service.toml", "id-service")])
def test_example_configs_load(tmp_path, tls_files, name, role):
    """The examples pass ucgate's validation, with their /etc/ucgate files made up here."""
    text = (EXAMPLES / name).read_text()
    for ref in sorted(set(re.findall(r'"/etc/ucgate/([^"]+)"', text))):
        f = tmp_path / ref
        if ref.endswith(".secret"):
            f.write_text("x" * 44)
            f.chmod(0o600)
        elif ref.endswith(".key") and ref != "ucgate.key":
            shutil.copy(tls_files[1], f)
        elif ref != "ucgate.key":
            shutil.copy(tls_files[0], f)
    (tmp_path / name).write_text(text.replace("/etc/ucgate/", f"{tmp_path}/"))
    cfg = load(tmp_path / name, role=role)
    if role == "gateway":
        assert cfg.gateway.proxy_protocol and cfg.gateway.health_listen == ("10.0.1.11", 8081)
        assert [str(n) for n in cfg.gateway.trusted_proxies] == ["10.0.1.5/32"]
    else:
        assert cfg.store.url.startswith("postgresql+psycopg://")
