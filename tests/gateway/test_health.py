"""The gateway's health listener ([gateway] health_listen): /healthz, /readyz with the
readiness it is given, nothing else; the client listener never serves them; app.py's wiring
(the in-process store's probe; with [id_service] url, the id service's link)."""

from __future__ import annotations

import asyncio
import socket
import time

import httpx
import pytest

from ucgate.app import build_node, id_service_readiness
from ucgate.config import from_dict
from ucgate.id.health import StoreProbe

from ..support import gateway_config, start_gateway


class Switch:
    """A readiness check the test turns on and off."""

    def __init__(self) -> None:
        self.state = (True, "ok")

    async def __call__(self):
        return self.state


@pytest.fixture
def checked(loop_thread, tls_files, upstream):
    switch = Switch()
    g = start_gateway(loop_thread, *tls_files, upstream.port, health_listen="127.0.0.1:0")
    g.gateway.readiness = g.gateway.health.readiness = switch
    yield g, switch
    g.stop()


def health(g, path: str, method: str = "GET") -> httpx.Response:
    return httpx.request(method, f"http://127.0.0.1:{g.gateway.health.port}{path}", timeout=5)


def test_healthz_and_readyz(checked, upstream):
    g, switch = checked
    r = health(g, "/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    assert r.headers["cache-control"] == "no-store"
    r = health(g, "/readyz")
    assert r.status_code == 200 and r.json() == {"status": "ready"}
    switch.state = (False, "id service https://id1:9443: unreachable")
    r = health(g, "/readyz")
    assert r.status_code == 503
    assert r.json() == {"status": "not-ready", "reason": "id service https://id1:9443: unreachable"}
    assert health(g, "/healthz").status_code == 200  # alive all the same
    assert upstream.received == []


def test_health_listener_answers_only_its_two_paths(checked):
    g, _ = checked
    assert health(g, "/").status_code == 404
    assert health(g, "/Autodiscover/AutodiscoverService.svc/root").status_code == 404
    assert health(g, "/readyz", "POST").status_code == 405
    r = health(g, "/readyz", "HEAD")
    assert r.status_code == 200 and r.content == b""
    with socket.create_connection(("127.0.0.1", g.gateway.health.port), timeout=5) as s:
        s.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\nBad header\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 400")


def test_health_listener_reads_heads_with_the_connection_object(checked):
    """The listener reads with ``http1conn.Connection``: a bare LF is refused as soon as it
    arrives (not at the timeout), a head over 8 KiB is refused before it ends, a head in many
    pieces is served, and a peer that leaves mid-head gets nothing."""
    g, _ = checked
    port = g.gateway.health.port
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /healthz HTTP/1.1\nHost: x")  # no end of head: refused on the bare LF
        assert s.recv(100).startswith(b"HTTP/1.1 400")
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nX: " + b"a" * 9000)
        assert s.recv(100).startswith(b"HTTP/1.1 400")
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        for piece in (b"GET /hea", b"lthz HTTP/1.1\r", b"\nHost: x\r\n", b"\r\n"):
            s.sendall(piece)
            time.sleep(0.02)
        assert s.recv(100).startswith(b"HTTP/1.1 200")
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\n")
        s.shutdown(socket.SHUT_WR)
        assert s.recv(100) == b""


def test_haproxy_style_check(checked):
    """HAProxy's option httpchk sends an HTTP/1.0 request without Host and reads to close."""
    g, _ = checked
    with socket.create_connection(("127.0.0.1", g.gateway.health.port), timeout=5) as s:
        s.sendall(b"GET /readyz HTTP/1.0\r\n\r\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200") and data.endswith(b'{"status": "ready"}')


def test_a_failing_check_is_not_ready_not_an_error(checked):
    g, switch = checked

    async def broken():
        raise RuntimeError("bug")

    g.gateway.health.readiness = broken
    r = health(g, "/readyz")
    assert r.status_code == 503 and r.json()["reason"] == "readiness check failed (RuntimeError)"


def test_client_listener_does_not_serve_health_paths(checked, upstream):
    g, _ = checked
    with httpx.Client(verify=g.ssl_context(), timeout=5) as c:
        for path in ("/healthz", "/readyz"):
            r = c.get(f"https://localhost:{g.port}{path}")
            assert r.status_code == 404
    assert upstream.received == []


def test_app_wires_the_store_probe(loop_thread, tmp_path, tls_files, upstream):
    raw = gateway_config(*tls_files, upstream.port, health_listen="127.0.0.1:0")
    raw["data"] = {"dir": str(tmp_path / "data")}
    raw["store"] = {"key_file": str(tmp_path / "keys" / "ucgate.key")}
    node = build_node(from_dict(raw, path=tmp_path / "ucgate.toml"))
    assert isinstance(node.gateway.readiness, StoreProbe)
    loop_thread.run(node.gateway.start())
    try:
        r = httpx.get(f"http://127.0.0.1:{node.gateway.health.port}/readyz", timeout=5)
        assert r.status_code == 200 and r.json() == {"status": "ready"}
    finally:
        loop_thread.run(node.gateway.stop())
        node.ids.close()


def test_remote_id_service_readiness_follows_its_link():
    class Remote:
        url = "https://id1.contoso.local:9443"
        events_connected = asyncio.Event()

    ready = id_service_readiness(Remote())
    assert asyncio.run(ready()) == (
        False,
        "id service https://id1.contoso.local:9443: unreachable (event stream not connected)",
    )
    Remote.events_connected.set()
    assert asyncio.run(ready()) == (True, "ok")
