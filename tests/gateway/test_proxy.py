"""The gateway as a reverse proxy, driven by real clients (httpx, curl) over TLS."""

from __future__ import annotations

import json
import shutil
import subprocess

import httpx
import pytest

from ..support import AllowAs, start_gateway


@pytest.fixture
def gw(loop_thread, tls_files, upstream):
    g = start_gateway(loop_thread, *tls_files, upstream.port)
    yield g
    g.stop()


@pytest.fixture
def gw_allow(loop_thread, tls_files, upstream):
    g = start_gateway(loop_thread, *tls_files, upstream.port, authenticator=AllowAs("alice"))
    yield g
    g.stop()


def client(g, **kw) -> httpx.Client:
    return httpx.Client(base_url=g.url, verify=g.ssl_context(), **kw)


def test_anonymous_autodiscover_passes_through(gw, upstream):
    with client(gw) as c:
        r = c.get("/Autodiscover/AutodiscoverService.svc/root?originalDomain=contoso.com")
    assert r.status_code == 200
    seen = upstream.received[-1]
    assert seen.target == "/Autodiscover/AutodiscoverService.svc/root?originalDomain=contoso.com"
    assert seen.header("X-Forwarded-For") == "127.0.0.1"
    assert seen.header("X-Forwarded-Proto") == "https"
    assert seen.header("X-Forwarded-Host") == f"127.0.0.1:{gw.port}"
    assert seen.header("X-Ucgate-User") is None


@pytest.mark.parametrize(
    "method,path",
    [
        ("GET", "/ucwa/oauth/v1/applications"),
        ("POST", "/WebTicket/WebTicketService.svc"),
        ("POST", "/WebTicket/oauthtoken"),
        ("POST", "/CertProv/CertProvisioningService.svc"),
        ("POST", "/Mcx/McxService.svc"),
        ("GET", "/Autodiscover/AutodiscoverService.svc/root/oauth/user"),
        ("GET", "/abs/handler"),
        ("POST", "/Microsoft-Server-ActiveSync?Cmd=Sync&User=a&DeviceId=X&DeviceType=iPhone"),
        ("GET", "/UCWA/oauth/v1/applications"),  # IIS paths are case-insensitive
    ],
)
def test_protected_paths_get_401_and_never_reach_upstream(gw, upstream, method, path):
    with client(gw) as c:
        r = c.request(method, path, content=b"x" * 10)
    assert r.status_code == 401
    assert "WWW-Authenticate" in r.headers
    assert upstream.received == []


def test_unpublished_path_is_404(gw, upstream):
    with client(gw) as c:
        assert c.get("/").status_code == 404
        assert c.get("/owa/").status_code == 404
        assert c.get("/Autodiscover/AutodiscoverService.svc/rootx").status_code == 401  # protected
    assert upstream.received == []


def test_client_cannot_assert_identity_or_forwarding(gw_allow, upstream):
    with client(gw_allow) as c:
        r = c.get(
            "/ucwa/me",
            headers={
                "X-Ucgate-User": "administrator",
                "X-Forwarded-For": "10.0.0.1",
                "Forwarded": "for=10.0.0.1",
                "Connection": "X-Secret",
                "X-Secret": "hop",
            },
        )
    assert r.status_code == 200
    seen = upstream.received[-1]
    assert [v for k, v in seen.headers if k.lower() == "x-ucgate-user"] == ["alice"]
    assert seen.header("X-Forwarded-For") == "127.0.0.1"
    assert seen.header("Forwarded") is None
    assert seen.header("X-Secret") is None  # named in Connection: hop-by-hop


def test_keep_alive_reuses_client_and_upstream_connections(gw_allow, upstream):
    with client(gw_allow) as c:
        for i in range(20):
            r = c.get(f"/ucwa/x{i}")
            assert r.status_code == 200
    assert len(upstream.received) == 20
    assert upstream.raw_connections == 1


def test_chunked_request_is_rechunked_and_body_intact(gw_allow, upstream):
    def gen():
        for i in range(100):
            yield bytes([i % 256]) * 1000

    with client(gw_allow) as c:
        r = c.post("/ucwa/upload", content=gen())
    assert r.status_code == 200
    seen = upstream.received[-1]
    assert seen.body_len == 100_000
    assert seen.header("Transfer-Encoding") == "chunked"


def test_expect_100_continue_with_curl(gw_allow, upstream, tmp_path):
    if not shutil.which("curl"):
        pytest.skip("curl not installed")
    body = tmp_path / "body"
    body.write_bytes(b"a" * 200_000)
    out = subprocess.run(
        [
            "curl",
            "-sS",
            "--cacert",
            str(gw_allow.cert),
            "-H",
            "Expect: 100-continue",
            "--data-binary",
            f"@{body}",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            f"https://localhost:{gw_allow.port}/ucwa/upload",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    *resp, code = out.stdout.rsplit("\n", 1)
    assert code == "200", out.stderr
    assert json.loads(resp[0])["body_len"] == 200_000


def test_curl_anonymous_and_protected(gw, upstream):
    if not shutil.which("curl"):
        pytest.skip("curl not installed")
    base = f"https://localhost:{gw.port}"
    codes = subprocess.run(
        [
            "curl",
            "-sS",
            "--cacert",
            str(gw.cert),
            "-o",
            "/dev/null",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} ",
            f"{base}/Autodiscover/AutodiscoverService.svc/root",
            f"{base}/ucwa/oauth/v1/applications",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout.split()
    assert codes == ["200", "401"]


def test_tls_below_1_2_refused(gw):
    import socket
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    except (ValueError, ssl.SSLError):
        pytest.skip("this OpenSSL cannot even offer TLS 1.1")
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
        with pytest.raises(ssl.SSLError):
            ctx.wrap_socket(s).do_handshake()


def test_upstream_down_gives_502_quickly(loop_thread, tls_files):
    import time

    from ..support import free_port

    g = start_gateway(loop_thread, *tls_files, free_port())
    try:
        with client(g) as c:
            t = time.monotonic()
            r = c.get("/Autodiscover/AutodiscoverService.svc/root")
            assert r.status_code == 502
            assert time.monotonic() - t < 2
            # the client connection survives a 502 (body was complete)
            assert c.get("/Autodiscover/AutodiscoverService.svc/root").status_code == 502
    finally:
        g.stop()


def test_upstream_tls_verification(loop_thread, tls_files, tmp_path):
    """An upstream whose certificate does not verify gets 502, never a silent downgrade; with
    the right CA bundle it works."""
    import asyncio
    import ssl as _ssl

    from ucgate.config import from_dict
    from ucgate.gateway.server import Gateway
    from ucgate.gateway.tls import make_self_signed

    from ..support import RecordingUpstream, RunningGateway, gateway_config

    up_cert, up_key = tmp_path / "up.crt", tmp_path / "up.key"
    make_self_signed(up_cert, up_key, ["fe01.lab.test", "127.0.0.1"])
    upstream = RecordingUpstream()

    async def start_tls_upstream():
        ctx = _ssl.SSLContext(_ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(up_cert, up_key)
        upstream.server = await asyncio.start_server(upstream._conn, "127.0.0.1", 0, ssl=ctx)
        upstream.port = upstream.server.sockets[0].getsockname()[1]

    loop_thread.run(start_tls_upstream())

    def run(up_cfg):
        raw = gateway_config(*tls_files, upstream.port)
        raw["upstreams"] = {"frontend": up_cfg}
        cfg = from_dict(raw)

        async def _start():
            g = Gateway(cfg)
            await g.start()
            return g

        g = RunningGateway(loop_thread, loop_thread.run(_start()), tls_files[0])
        try:
            with client(g) as c:
                codes = {c.get(f"/Autodiscover/AutodiscoverService.svc/root?n={i}").status_code for i in range(3)}
            assert len(codes) == 1
            if codes == {200}:  # the 2nd and 3rd went over the pooled TLS connection, fast path
                assert g.gateway.fast_requests == 2
            return codes.pop()
        finally:
            g.stop()

    url = f"https://127.0.0.1:{upstream.port}"
    assert run({"url": url}) == 502  # unknown CA
    assert run({"url": url, "ca_bundle": str(up_cert), "server_name": "wrong.lab.test"}) == 502
    assert run({"url": url, "ca_bundle": str(up_cert), "server_name": "fe01.lab.test"}) == 200
    assert run({"url": url, "verify": False}) == 200
    loop_thread.run(upstream.stop())


def test_large_response_streams(gw_allow, upstream):
    n = 20 * 1024 * 1024
    total = 0
    with client(gw_allow, timeout=60) as c:
        with c.stream("GET", f"/ucwa/download?n={n}") as r:
            assert r.status_code == 200
            for chunk in r.iter_bytes():
                total += len(chunk)
    assert total == n


def test_expired_upstream_certificate_refused(loop_thread, tls_files, tmp_path):
    import asyncio
    import datetime as dt
    import ssl as _ssl

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from ..support import RecordingUpstream

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fe01.lab.test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=400))
        .not_valid_after(now - dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("fe01.lab.test")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cpath, kpath = tmp_path / "old.crt", tmp_path / "old.key"
    cpath.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    kpath.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    upstream = RecordingUpstream()

    async def start():
        ctx = _ssl.SSLContext(_ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cpath, kpath)
        upstream.server = await asyncio.start_server(upstream._conn, "127.0.0.1", 0, ssl=ctx)
        upstream.port = upstream.server.sockets[0].getsockname()[1]

    loop_thread.run(start())
    from ucgate.config import from_dict
    from ucgate.gateway.server import Gateway

    from ..support import RunningGateway, gateway_config

    raw = gateway_config(*tls_files, upstream.port)
    raw["upstreams"] = {
        "frontend": {
            "url": f"https://127.0.0.1:{upstream.port}",
            "ca_bundle": str(cpath),
            "server_name": "fe01.lab.test",
        }
    }

    async def _start():
        gw = Gateway(from_dict(raw))
        await gw.start()
        return gw

    g = RunningGateway(loop_thread, loop_thread.run(_start()), tls_files[0])
    try:
        with client(g) as c:
            assert c.get("/Autodiscover/AutodiscoverService.svc/root").status_code == 502  # expired
        assert upstream.received == []
    finally:
        g.stop()
        loop_thread.run(upstream.stop())
