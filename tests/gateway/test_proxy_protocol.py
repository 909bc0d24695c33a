"""The PROXY protocol on the gateway's listener ([gateway] proxy_protocol): the header from a
trusted balancer gives the client address to everything (X-Forwarded-For here; the budget and
the audit read the same ClientConnection.peer_host), a header from anyone else or a malformed
one closes the connection with a log line, a direct client is served as itself.

The "balancer" here is a raw socket from 127.0.0.1 (the trusted_proxies entry); other peers
bind 127.0.0.23. tests/gateway/test_haproxy.py does the same through a real HAProxy.
"""

from __future__ import annotations

import json
import logging
import socket
import ssl
import time

import pytest

from ucgate.protocols.proxyproto import Command, Tlv, build_v1, build_v2

from ..support import start_gateway

BALANCER = "127.0.0.1"
OTHER = "127.0.0.23"
CLIENT = ("203.0.113.7", 51000)
ANON = (
    b"GET /Autodiscover/AutodiscoverService.svc/root HTTP/1.1\r\nHost: lyncext.contoso.com\r\nConnection: close\r\n\r\n"
)


@pytest.fixture
def tls_gw(loop_thread, tls_files, upstream):
    g = start_gateway(
        loop_thread,
        *tls_files,
        upstream.port,
        proxy_protocol=True,
        trusted_proxies=[f"{BALANCER}/32"],
        timeouts={"header_read": 1.0},
    )
    yield g
    g.stop()


@pytest.fixture
def plain_gw(loop_thread, upstream):
    g = start_gateway(
        loop_thread,
        None,
        None,
        upstream.port,
        proxy_protocol=True,
        trusted_proxies=[f"{BALANCER}/32"],
        timeouts={"header_read": 1.0},
    )
    yield g
    g.stop()


def _connect(g, source: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", g.port), timeout=5, source_address=(source, 0))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _read_all(sock) -> bytes:
    out = b""
    try:
        while chunk := sock.recv(65536):
            out += chunk
    except (ConnectionResetError, ssl.SSLError, TimeoutError, OSError):
        pass
    return out


def request(g, source: str, preamble: bytes = b"", data: bytes = ANON, *, trickle: bool = False) -> bytes:
    """Connect from ``source``, send ``preamble`` (byte by byte with ``trickle``), then ``data``
    over TLS (if the gateway has it); the answer, b"" when the connection was closed."""
    sock = _connect(g, source)
    try:
        if trickle:
            for b in preamble:
                sock.send(bytes([b]))
                time.sleep(0.002)
        else:
            sock.sendall(preamble)
        if g.cert is not None:
            try:
                sock = g.ssl_context().wrap_socket(sock, server_hostname="localhost")
            except (ssl.SSLError, ConnectionError, OSError):
                return b""
        sock.sendall(data)
        return _read_all(sock)
    finally:
        sock.close()


def forwarded_for(upstream) -> str | None:
    return upstream.received[-1].header("X-Forwarded-For")


@pytest.mark.parametrize(
    "header",
    [
        build_v2(Command.PROXY, CLIENT, ("10.0.0.1", 443)),
        build_v2(Command.PROXY, CLIENT, ("10.0.0.1", 443), (Tlv(1, b"http/1.1"), Tlv(5, b"id-1"))),
        build_v1(CLIENT, ("10.0.0.1", 443)),
    ],
    ids=["v2", "v2-tlvs", "v1"],
)
@pytest.mark.parametrize("trickle", [False, True], ids=["at-once", "byte-by-byte"])
def test_tls_header_from_the_balancer_gives_the_client_address(tls_gw, upstream, header, trickle):
    answer = request(tls_gw, BALANCER, header, trickle=trickle)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert forwarded_for(upstream) == CLIENT[0]


def test_plain_header_and_request_in_one_segment(plain_gw, upstream):
    answer = request(plain_gw, BALANCER, build_v1(CLIENT) + ANON)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert forwarded_for(upstream) == CLIENT[0]
    answer = request(plain_gw, BALANCER, build_v2(Command.PROXY, ("2001:db8::5", 1)), trickle=True)
    assert answer.startswith(b"HTTP/1.1 200") and forwarded_for(upstream) == "2001:db8::5"


@pytest.mark.parametrize("gw_fixture", ["tls_gw", "plain_gw"])
def test_local_command_keeps_the_balancers_address(request_fixture, gw_fixture, upstream):
    g = request_fixture(gw_fixture)
    answer = request(g, BALANCER, build_v2(Command.LOCAL))
    assert answer.startswith(b"HTTP/1.1 200") and forwarded_for(upstream) == BALANCER


@pytest.mark.parametrize("gw_fixture", ["tls_gw", "plain_gw"])
def test_balancer_without_header_is_refused(request_fixture, gw_fixture, upstream, caplog):
    g = request_fixture(gw_fixture)
    with caplog.at_level(logging.WARNING):
        assert request(g, BALANCER) == b""
    assert "PROXY protocol: not-proxy-protocol" in caplog.text
    assert upstream.received == []


@pytest.mark.parametrize("gw_fixture", ["tls_gw", "plain_gw"])
@pytest.mark.parametrize("header", [build_v2(Command.PROXY, CLIENT), build_v1(CLIENT)], ids=["v2", "v1"])
def test_header_from_an_untrusted_peer_is_refused(request_fixture, gw_fixture, header, upstream, caplog):
    g = request_fixture(gw_fixture)
    with caplog.at_level(logging.WARNING):
        assert request(g, OTHER, header) == b""
    assert f"connection from {OTHER}" in caplog.text and "untrusted-proxy-header" in caplog.text
    assert upstream.received == []


@pytest.mark.parametrize("gw_fixture", ["tls_gw", "plain_gw"])
def test_direct_client_is_served_as_itself(request_fixture, gw_fixture, upstream):
    g = request_fixture(gw_fixture)
    answer = request(g, OTHER)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert forwarded_for(upstream) == OTHER


@pytest.mark.parametrize("gw_fixture", ["tls_gw", "plain_gw"])
@pytest.mark.parametrize(
    "header,reason",
    [
        (b"PROXY TCP4 203.0.113.07 10.0.0.1 1 443\r\n", "v1-bad-address"),
        (build_v2(Command.PROXY, CLIENT)[:12] + b"\x21\x31\x00\xd8" + bytes(216), "unix-family"),
        (b"PROXY TCP4 1.2.3.4 10.0.0.1 1 443\n", "v1-bare-lf"),
    ],
    ids=["leading-zero", "af-unix", "bare-lf"],
)
def test_malformed_header_is_refused(request_fixture, gw_fixture, header, reason, upstream, caplog):
    g = request_fixture(gw_fixture)
    with caplog.at_level(logging.WARNING):
        assert request(g, BALANCER, header) == b""
    assert f"PROXY protocol: {reason}" in caplog.text
    assert upstream.received == []


@pytest.mark.parametrize("gw_fixture", ["tls_gw", "plain_gw"])
def test_header_read_is_bounded_by_header_read(request_fixture, gw_fixture, caplog):
    g = request_fixture(gw_fixture)
    sock = _connect(g, BALANCER)
    try:
        sock.sendall(b"PROXY TCP4 ")  # and then nothing
        started = time.monotonic()
        with caplog.at_level(logging.INFO):
            assert _read_all(sock) == b""
        assert 0.5 < time.monotonic() - started < 4  # header_read = 1 s
    finally:
        sock.close()
    assert "no PROXY header within 1.0s" in caplog.text


def test_the_client_address_reaches_the_authenticator(loop_thread, tls_files, upstream):
    """Not only X-Forwarded-For: the connection the authenticator (budget, familiar addresses,
    audit) and the access log see is the client's."""
    seen = []

    class Recording:
        async def authenticate(self, conn, req, service):
            from ucgate.gateway.auth import AuthOutcome
            from ucgate.gateway.connection import Identity

            seen.append(conn.peer_host)
            return AuthOutcome(identity=Identity("tester", "test"))

    g = start_gateway(
        loop_thread,
        *tls_files,
        upstream.port,
        authenticator=Recording(),
        proxy_protocol=True,
        trusted_proxies=[f"{BALANCER}/32"],
    )
    try:
        answer = request(
            g,
            BALANCER,
            build_v2(Command.PROXY, CLIENT),
            b"GET /ucwa/oauth/v1/applications HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        assert answer.startswith(b"HTTP/1.1 200")
        assert seen == [CLIENT[0]]
        assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["headers"]
    finally:
        g.stop()


def test_proxy_protocol_needs_trusted_proxies():
    from ucgate.config import ConfigError, from_dict

    with pytest.raises(ConfigError, match="gateway.proxy_protocol: needs trusted_proxies"):
        from_dict(
            {
                "gateway": {"plain_http": True, "proxy_protocol": True},
                "upstreams": {"frontend": {"url": "http://127.0.0.1:1"}},
            }
        )


@pytest.fixture
def request_fixture(request):
    return request.getfixturevalue
