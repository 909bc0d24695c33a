"""Issue 17, running it like an edge service: Prometheus metrics (/metrics on the health
listener, read back through a real Prometheus), request ids from the client to the gateway's
log and the front end on both request paths, JSON logs, and SIGHUP reloads of a real
``ucgate serve`` (certificate, device rules, a bad configuration refused)."""

from __future__ import annotations

import asyncio
import base64
import http.client
import io
import json
import logging
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ucgate.config import ConfigError, from_dict
from ucgate.gateway.server import Gateway
from ucgate.gateway.tls import make_self_signed
from ucgate.logs import JsonFormatter, begin_request

from ..lab.fixtures import _in_ci
from ..support import AllowAs, RunningGateway, free_port, gateway_config

UCGATE = [sys.executable, "-m", "ucgate"]
RID = re.compile(r"[0-9a-f]{16}")
ANON = "/Autodiscover/AutodiscoverService.svc/root"


def start(lt, cert, key, upstream_port, authenticator=None, metrics=None, **overrides) -> RunningGateway:
    raw = gateway_config(cert, key, upstream_port, health_listen="127.0.0.1:0", **overrides)
    if metrics is not None:
        raw["metrics"] = metrics
    cfg = from_dict(raw)

    async def _start() -> Gateway:
        g = Gateway(cfg, authenticator)
        await g.start()
        return g

    return RunningGateway(lt, lt.run(_start()), cert)


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    r = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    out = {}
    for fam in text_string_to_metric_families(r.text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


# --- metrics --------------------------------------------------------------------------------------


def test_metrics_count_requests_auth_and_upstream_latency_with_closed_labels(loop_thread, upstream):
    g = start(loop_thread, None, None, upstream.port)
    try:
        port = g.gateway.health.port
        before = scrape(port)
        with httpx.Client(base_url=g.url, timeout=5) as c:
            for _ in range(3):  # the first connects (the pipeline), then the fast path
                assert c.get(ANON, headers={"User-Agent": "Evil/1.0 (label me)"}).status_code == 200
            assert c.get("/nope/secret-path").status_code == 404
            assert c.get("/ucwa/x", headers={"Authorization": "Basic Zm9vOmJhcg=="}).status_code == 401
            after = scrape(port)
        assert g.gateway.fast_requests >= 1
        d = lambda name, **kw: value(after, name, **kw) - value(before, name, **kw)  # noqa: E731
        assert d("ucgate_requests_total", service="autodiscover", code="200") == 3
        assert d("ucgate_requests_total", service="unknown", code="404") == 1
        assert d("ucgate_requests_total", service="ucwa", code="401") == 1
        # DenyAll refuses every credential: counted by the scheme presented, the reason from the list
        assert d("ucgate_auth_attempts_total", method="basic", result="deny", reason="no-authenticator") == 1
        assert d("ucgate_upstream_response_seconds_count", upstream="frontend") == 3
        assert value(after, "ucgate_connections") >= 0
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        assert "secret-path" not in text and "Evil" not in text  # no request data in labels
        for line in text.splitlines():  # every sample is ucgate_'s, Python's or the process's
            if line and not line.startswith("#"):
                assert line.startswith(("ucgate_", "python_", "process_")), line
    finally:
        g.stop()


def test_tls_handshake_failures_and_live_connection_gauges(loop_thread, tls_files, upstream):
    g = start(loop_thread, *tls_files, upstream.port, authenticator=AllowAs("alice"))
    try:
        port = g.gateway.health.port
        before = scrape(port)
        with socket.create_connection(("127.0.0.1", g.port), timeout=5) as s:  # HTTP to the TLS port
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            try:
                s.recv(100)
            except ConnectionResetError:
                pass
        time.sleep(0.2)
        sock = g.ssl_context().wrap_socket(
            socket.create_connection(("127.0.0.1", g.port), timeout=5), server_hostname="localhost"
        )
        assert _raw_get(sock, "/ucwa/oauth/me").startswith(b"HTTP/1.1 200")
        during = scrape(port)
        sock.close()
        assert (
            value(during, "ucgate_tls_handshake_failures_total", reason="http-request")
            - value(before, "ucgate_tls_handshake_failures_total", reason="http-request")
            == 1
        )
        assert value(during, "ucgate_connections") >= 1
        assert value(during, "ucgate_signed_in_connections") >= 1 and value(during, "ucgate_signed_in_users") >= 1
    finally:
        g.stop()


def test_metrics_only_for_the_allowed_addresses(loop_thread, upstream):
    g = start(loop_thread, None, None, upstream.port, metrics={"allow": ["10.9.9.0/24"]})
    try:
        r = httpx.get(f"http://127.0.0.1:{g.gateway.health.port}/metrics", timeout=5)
        assert r.status_code == 403 and "ucgate_" not in r.text
        assert httpx.get(f"http://127.0.0.1:{g.gateway.health.port}/healthz", timeout=5).status_code == 200
    finally:
        g.stop()
    g = start(loop_thread, None, None, upstream.port, metrics={"enabled": False})
    try:
        assert httpx.get(f"http://127.0.0.1:{g.gateway.health.port}/metrics", timeout=5).status_code == 404
    finally:
        g.stop()


def test_metrics_config_errors_name_the_key(upstream):
    raw = gateway_config(None, None, upstream.port)
    with pytest.raises(ConfigError, match=r"metrics\.allow\[1\]: not an address"):
        from_dict({**raw, "metrics": {"allow": ["127.0.0.1", "everyone"]}})
    with pytest.raises(ConfigError, match=r"log\.format: expected \"text\" or \"json\""):
        from_dict({**raw, "log": {"format": "xml"}})
    with pytest.raises(ConfigError, match=r"metrics\.allowed: unknown setting"):
        from_dict({**raw, "metrics": {"allowed": []}})


def test_a_scrape_that_hangs_does_not_slow_the_proxy(loop_thread, tls_files, upstream):
    g = start(loop_thread, *tls_files, upstream.port, timeouts={"header_read": 2})
    hung = []
    try:
        port = g.gateway.health.port
        for i in range(20):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)  # and never reads
            s.connect(("127.0.0.1", port))
            # half of them never finish the request, half never read the answer
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n" + (b"\r\n" if i % 2 else b""))
            hung.append(s)
        ctx = ssl.create_default_context(cafile=str(tls_files[0]))
        slowest = 0.0
        with httpx.Client(base_url=g.url, verify=ctx, timeout=5) as c:
            for _ in range(50):
                t0 = time.monotonic()
                assert c.get(ANON).status_code == 200
                slowest = max(slowest, time.monotonic() - t0)
        assert slowest < 1.0, f"a proxied request took {slowest:.3f}s while scrapes hung"
        assert scrape(port)  # and a scraper that reads still gets its answer
        time.sleep(2.5)  # the hung ones are closed at header_read
        for s in hung:
            s.settimeout(2)
            try:
                while s.recv(65536):
                    pass
            except (ConnectionResetError, TimeoutError):
                pytest.fail("a hung scrape was not closed")
    finally:
        for s in hung:
            s.close()
        g.stop()


# --- request ids ------------------------------------------------------------------------------


@pytest.fixture
def json_log():
    """The gateway's log lines as the JSON formatter writes them, formatted where they are
    emitted (so the request context of the task that logs is there)."""
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("ucgate")
    old_level = root.level
    root.setLevel(logging.INFO)
    root.addHandler(handler)
    yield lambda: [json.loads(line) for line in buf.getvalue().splitlines()]
    root.removeHandler(handler)
    root.setLevel(old_level)


def _raw_get(sock, path: str, extra: bytes = b"", method: bytes = b"GET", body: bytes = b"") -> bytes:
    head = b"%b %b HTTP/1.1\r\nHost: gw\r\n%b" % (method, path.encode(), extra)
    if body:
        head += b"Content-Length: %d\r\n" % len(body)
    sock.sendall(head + b"\r\n" + body)
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += sock.recv(65536)
    head, rest = buf.split(b"\r\n\r\n", 1)
    n = int(re.search(rb"(?i)\r\ncontent-length: *(\d+)", head).group(1))
    while len(rest) < n:
        rest += sock.recv(65536)
    return head


@pytest.mark.parametrize("tls", [True, False], ids=["tls", "plain"])
def test_request_id_reaches_the_front_end_and_the_log_on_both_paths(loop_thread, tls_files, upstream, json_log, tls):
    """Each request gets its own id, in the access log line and as X-Ucgate-Request-Id at the
    front end; a client's own (any spelling) is dropped, on the fast path and in the pipeline."""
    cert, key = tls_files if tls else (None, None)
    g = start(loop_thread, cert, key, upstream.port, authenticator=AllowAs("alice"))
    try:
        sock = socket.create_connection(("127.0.0.1", g.port), timeout=5)
        if tls:
            sock = g.ssl_context().wrap_socket(sock, server_hostname="localhost")
        forged = b"X-Ucgate-Request-Id: 0123456789abcdef\r\nx_ucgate_request_id: forged\r\n"
        cases = [
            ("pipeline, connects", ANON + "?warm", b"", b"GET", b""),
            ("fast path, simple head", ANON + "?simple", b"", b"GET", b""),
            ("fast path, forged ids", ANON + "?forged", forged, b"GET", b""),
            ("pipeline, a body", "/meet/upload", forged, b"POST", b"x" * 10),
            ("pipeline, authenticated", "/ucwa/oauth/me", forged, b"GET", b""),
        ]
        fast_before = g.gateway.fast_requests
        for label, path, extra, method, body in cases:
            head = _raw_get(sock, path, extra, method, body)
            assert head.startswith(b"HTTP/1.1 200"), (label, head)
        sock.close()
        assert g.gateway.fast_requests - fast_before == 2
        seen = upstream.received[-len(cases) :]
        ids = []
        for (label, path, *_), rec in zip(cases, seen, strict=True):
            assert rec.target == path
            ours = [
                (k, v) for k, v in rec.headers if re.sub(r"[^a-z0-9]", "", k.lower()).startswith("xucgaterequestid")
            ]
            assert len(ours) == 1 and ours[0][0].lower() == "x-ucgate-request-id", (label, rec.headers)
            assert RID.fullmatch(ours[0][1]) and ours[0][1] != "0123456789abcdef", label
            ids.append(ours[0][1])
        assert len(set(ids)) == len(ids)
        time.sleep(0.1)
        access = [r for r in json_log() if r["logger"] == "ucgate.access"]
        for rid, (label, _path, *_) in zip(ids, cases, strict=True):
            line = [r for r in access if r.get("request_id") == rid]
            assert len(line) == 1, (label, rid, access)
            assert line[0]["client"] == "127.0.0.1" and line[0]["level"] == "info"
            assert line[0]["service"] in ("autodiscover", "meet", "ucwa")
            assert f"request_id={rid}" in line[0]["message"]
        auth_line = [r for r in access if r.get("request_id") == ids[-1]][0]
        assert auth_line["user"] == "alice"
        dropped = [r for r in json_log() if "client-header-dropped" in r["message"]]
        assert dropped and all(RID.fullmatch(r["request_id"]) for r in dropped)
    finally:
        g.stop()


def test_json_formatter_fields():
    f = JsonFormatter()
    rec = logging.LogRecord("ucgate.x", logging.WARNING, __file__, 1, "refused %s", ("a\nb",), None)
    rec.reason = "wrong-password"
    rec.user = "alice"
    obj = json.loads(f.format(rec))
    assert obj["level"] == "warning" and obj["logger"] == "ucgate.x" and obj["message"] == "refused a\nb"
    assert obj["reason"] == "wrong-password" and obj["user"] == "alice" and "request_id" not in obj
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", obj["time"])
    try:
        raise ValueError("boom")
    except ValueError:
        rec = logging.LogRecord("ucgate", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    out = f.format(rec)
    assert "\n" not in out and "ValueError: boom" in json.loads(out)["exception"]

    # the task's request context fills in what the record does not say, unless the record is
    # about another request
    async def in_a_task() -> tuple[dict, dict]:
        begin_request(b"00000000000000aa", "192.0.2.1")["user"] = "alice"
        plain = logging.LogRecord("ucgate", logging.INFO, __file__, 1, "m", (), None)
        other = logging.LogRecord("ucgate", logging.INFO, __file__, 1, "m", (), None)
        other.request_id = "00000000000000bb"
        return json.loads(f.format(plain)), json.loads(f.format(other))

    # in a thread of its own: a browser test earlier in the session may have left an event loop
    # running in this one (Playwright), where asyncio.run refuses to start
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        plain, other = pool.submit(asyncio.run, in_a_task()).result()
    assert plain["request_id"] == "00000000000000aa" and plain["user"] == "alice" and plain["client"] == "192.0.2.1"
    assert other["request_id"] == "00000000000000bb" and "user" not in other and "client" not in other


# --- real processes -------------------------------------------------------------------------------


def _need(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        if _in_ci():
            pytest.fail(f"{binary} is not installed (scripts/bootstrap --test installs it)", pytrace=False)
        pytest.skip(f"{binary} is not installed (scripts/bootstrap --test installs it)")
    return path


def _wait_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"process exited: {log.read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port}: {log.read_text()}")


class Serve:
    """A real ``ucgate serve -c FILE``, its stderr in a file."""

    def __init__(self, tmp: Path, body: str) -> None:
        self.tmp, self.port, self.health = tmp, free_port(), free_port()
        (tmp / "data").mkdir(exist_ok=True)
        (tmp / "keys").mkdir(mode=0o700, exist_ok=True)
        self.cfg = tmp / "ucgate.toml"
        self.write(body)
        self.log = tmp / "serve.log"
        with open(self.log, "w") as err:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                [*UCGATE, "serve", "-c", str(self.cfg)], stdout=subprocess.DEVNULL, stderr=err, text=True
            )
        _wait_port(self.port, self.proc, self.log)

    def write(self, body: str) -> None:
        self.cfg.write_text(
            f'[gateway]\nlisten = "127.0.0.1:{self.port}"\nhealth_listen = "127.0.0.1:{self.health}"\n' + body
        )

    def lines(self) -> list[str]:
        return self.log.read_text().splitlines()

    def wait_for(self, needle: str, after: int = 0, timeout: float = 10) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines()[after:]:
                if needle in line:
                    return line
            time.sleep(0.05)
        raise AssertionError(f"{needle!r} not in the log:\n" + "\n".join(self.lines()))

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _common(tmp: Path, upstream_port: int) -> str:
    return (
        f'[upstreams.frontend]\nurl = "http://127.0.0.1:{upstream_port}"\n'
        f'[upstreams.exchange]\nurl = "http://127.0.0.1:{upstream_port}"\n'
        f'[data]\ndir = "{tmp / "data"}"\n[store]\nkey_file = "{tmp / "keys" / "ucgate.key"}"\n'
    )


def test_json_logs_of_ucgate_serve_carry_the_request_id_to_the_front_end(tmp_path, tls_files, upstream):
    cert, key = tls_files
    srv = Serve(
        tmp_path,
        f'tls_cert = "{cert}"\ntls_key = "{key}"\n'
        + _common(tmp_path, upstream.port)
        + '[log]\nformat = "json"\nlevel = "info"\n',
    )
    try:
        ctx = ssl.create_default_context(cafile=str(cert))
        with httpx.Client(base_url=f"https://127.0.0.1:{srv.port}", verify=ctx, timeout=5) as c:
            for _ in range(2):
                assert c.get(ANON, headers={"X-Ucgate-Request-Id": "ffffffffffffffff"}).status_code == 200
            assert c.post("/meet/x", content=b"body").status_code == 200
        rids = [rec.header("X-Ucgate-Request-Id") for rec in upstream.received[-3:]]
        assert all(RID.fullmatch(r) for r in rids) and "ffffffffffffffff" not in rids
        srv.wait_for(rids[-1])
    finally:
        srv.stop()
    objs = [json.loads(line) for line in srv.lines() if line.strip()]  # every line is one object
    assert all({"time", "level", "logger", "message"} <= set(o) for o in objs)
    access = {o.get("request_id"): o for o in objs if o["logger"] == "ucgate.access"}
    for rid in rids:
        assert access[rid]["client"] == "127.0.0.1", access


def test_prometheus_reads_a_gateway_metric(tmp_path, tls_files, upstream):
    prometheus = _need("prometheus")
    cert, key = tls_files
    srv = Serve(
        tmp_path,
        f'tls_cert = "{cert}"\ntls_key = "{key}"\n' + _common(tmp_path, upstream.port) + '[log]\nlevel = "warning"\n',
    )
    web = free_port()
    (tmp_path / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
        "scrape_configs:\n  - job_name: ucgate\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{srv.health}']\n"
    )
    plog = tmp_path / "prometheus.log"
    with open(plog, "w") as err:  # the child keeps its own descriptor
        prom = subprocess.Popen(
            [
                prometheus,
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{web}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        ctx = ssl.create_default_context(cafile=str(cert))
        with httpx.Client(base_url=f"https://127.0.0.1:{srv.port}", verify=ctx, timeout=5) as c:
            for _ in range(3):
                assert c.get(ANON).status_code == 200
        _wait_port(web, prom, plog, timeout=30)
        query = 'ucgate_requests_total{job="ucgate",service="autodiscover",code="200"}'
        url = f"http://127.0.0.1:{web}/api/v1/query?" + urllib.parse.urlencode({"query": query})
        deadline = time.monotonic() + 40
        got = None
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    doc = json.load(r)
            except OSError:
                time.sleep(0.5)
                continue
            assert doc["status"] == "success", doc
            if doc["data"]["result"]:
                got = doc["data"]["result"][0]
                break
            time.sleep(0.5)
        assert got is not None, f"Prometheus has no {query}:\n{plog.read_text()[-3000:]}"
        assert float(got["value"][1]) == 3.0 and got["metric"]["instance"] == f"127.0.0.1:{srv.health}"
    finally:
        prom.terminate()
        try:
            prom.wait(10)
        except subprocess.TimeoutExpired:
            prom.kill()
        srv.stop()


# --- SIGHUP -----------------------------------------------------------------------------------------


def _peer_der(port: int, ca: Path) -> tuple[bytes, ssl.SSLSocket]:
    ctx = ssl.create_default_context(cafile=str(ca))
    s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=5), server_hostname="localhost")
    return s.getpeercert(binary_form=True), s


def _keepalive(s: ssl.SSLSocket, path: str = ANON) -> bytes:
    return _raw_get(s, path)


def _eas(port: int, ca: Path, asp: str, device: str) -> tuple[int, bytes]:
    ctx = ssl.create_default_context(cafile=str(ca))
    c = http.client.HTTPSConnection("localhost", port, context=ctx, timeout=5)
    auth = "Basic " + base64.b64encode(f"alice:{asp}".encode()).decode()
    c.request(
        "POST",
        f"/Microsoft-Server-ActiveSync?Cmd=FolderSync&User=alice&DeviceId={device}&DeviceType=TestPhone",
        body=b"",
        headers={
            "Authorization": auth,
            "MS-ASProtocolVersion": "14.1",
            "Content-Length": "0",
            "User-Agent": "TestPhone/1.0",
        },
    )
    r = c.getresponse()
    body = r.read()
    c.close()
    return r.status, body


def _run(cfg: Path, *args: str) -> str:
    r = subprocess.run([*UCGATE, *args, "-c", str(cfg)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, (args, r.stdout, r.stderr)
    return r.stdout


@pytest.mark.slow
def test_sighup_swaps_the_certificate_and_device_rules_and_refuses_a_bad_configuration(tmp_path, upstream):
    certs = tmp_path / "tls"
    certs.mkdir()
    cert, key = certs / "gw.crt", certs / "gw.key"
    make_self_signed(cert, key, ["localhost", "127.0.0.1"])
    ca_a = tmp_path / "a.pem"
    ca_a.write_bytes(cert.read_bytes())

    def body(action: str, cert_path: Path = cert) -> str:
        return (
            f'tls_cert = "{cert_path}"\ntls_key = "{key}"\n'
            + _common(tmp_path, upstream.port)
            + '[log]\nlevel = "info"\n[devices]\nrequire_second_factor = false\n'
            f'[[devices.rules]]\nname = "test phones"\naction = "{action}"\ndevice_type = "TestPhone"\n'
        )

    srv = Serve(tmp_path, body("allowed"))
    try:
        _run(srv.cfg, "user", "add", "alice")
        asp = _run(srv.cfg, "asp", "create", "alice", "-l", "phone").split()[-1]
        n = len(upstream.received)
        status, _ = _eas(srv.port, ca_a, asp, "PHONE1")
        assert status == 200 and len(upstream.received) == n + 1  # allowed: forwarded
        der_a, old = _peer_der(srv.port, ca_a)
        assert _keepalive(old).startswith(b"HTTP/1.1 200")

        # a renewal: new certificate and key files in place, and the rule now blocks
        make_self_signed(cert, key, ["localhost", "127.0.0.1"])
        ca_b = tmp_path / "b.pem"
        ca_b.write_bytes(cert.read_bytes())
        srv.write(body("blocked"))
        mark = len(srv.lines())
        srv.proc.send_signal(signal.SIGHUP)
        line = srv.wait_for("configuration reloaded", mark)
        assert "gateway.tls_cert" in line and "devices" in line, line
        der_b, new = _peer_der(srv.port, ca_b)
        assert der_b != der_a and der_b == ssl.PEM_cert_to_DER_cert(cert.read_text())
        new.close()
        assert _keepalive(old).startswith(b"HTTP/1.1 200")  # the open connection keeps working
        assert old.getpeercert(binary_form=True) == der_a
        n = len(upstream.received)
        status, payload = _eas(srv.port, ca_b, asp, "PHONE2")  # a new device of the type: blocked
        assert len(upstream.received) == n, "a blocked device reached the front end"
        assert status in (200, 403), (status, payload)

        # a bad configuration: refused with the file and key, the running one stays
        srv.cfg.write_text(srv.cfg.read_text() + "[gateway.limits]\nmax_header_bytes = -1\n")
        mark = len(srv.lines())
        srv.proc.send_signal(signal.SIGHUP)
        line = srv.wait_for("configuration reload refused", mark)
        assert str(srv.cfg) in line and "gateway.limits.max_header_bytes" in line, line
        # a key that does not fit the certificate: refused too, naming the key
        other = certs / "other.key"
        make_self_signed(certs / "other.crt", other, ["localhost"])
        srv.write(body("blocked").replace(f'tls_key = "{key}"', f'tls_key = "{other}"'))
        mark = len(srv.lines())
        srv.proc.send_signal(signal.SIGHUP)
        line = srv.wait_for("configuration reload refused", mark)
        assert "gateway.tls_cert" in line and str(other) in line, line
        assert _peer_der(srv.port, ca_b)[0] == der_b  # still the certificate in force
        assert _keepalive(old).startswith(b"HTTP/1.1 200")
        # a change that needs a restart is named, the rest applied
        srv.write(body("blocked") + "[gateway.timeouts]\nidle = 30\n")
        mark = len(srv.lines())
        srv.proc.send_signal(signal.SIGHUP)
        warn = srv.wait_for("needs a restart", mark)
        assert "gateway.timeouts" in warn
        srv.wait_for("configuration reloaded", mark)
        metrics = httpx.get(f"http://127.0.0.1:{srv.health}/metrics", timeout=5).text
        assert 'ucgate_config_reloads_total{result="ok"} 2.0' in metrics
        assert 'ucgate_config_reloads_total{result="refused"} 2.0' in metrics
        assert re.search(r'ucgate_device_decisions_total\{action="block",service="eas"\} 1\.0', metrics)
        old.close()
    finally:
        srv.stop()
    assert srv.proc.returncode == 0, "\n".join(srv.lines())
