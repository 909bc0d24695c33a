"""The authenticated fast path (gateway/session.py, issue 16): keep-alive requests on an NTLM
connection, with the Basic header the connection's memo holds, or with a Bearer token the gateway
issued — and, with the device gate, an allowed verdict cached on the connection — are forwarded
inside protocol callbacks. They must get exactly what the pipeline (``Gateway._handle``) gives
them, and a connection an event cut off (``Gateway.on_event``) is never served again.

The property tests send generated request heads twice, on twin connections signed in the same
way, once with the fast path on and once with it forced off (``Gateway.fast_path``), and compare
what reached the front end (the forwarded head: start line and fields in order — the fast path
forwards a field line as it came, the pipeline re-serialises it as ``Name: value``, so values are
compared OWS-stripped; byte for byte when the client's lines were already canonical), the answer
to the client (status line, fields, body), the metrics (requests, sign-in attempts, device
decisions, upstream latency counts), the log lines (access log, dropped client headers,
refusals) and the connection's principal.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import logging
import os
import re
import socket
import ssl
import time

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from ucgate import metrics
from ucgate.config import LockoutConfig, from_dict
from ucgate.gateway.devices import RECHECK_SECONDS, DeviceGate
from ucgate.gateway.oauth import OAuthGrants, OAuthSettings, TokenRecord
from ucgate.gateway.preauth import PreAuthenticator, PreAuthSettings
from ucgate.gateway.server import Gateway
from ucgate.id.devices import DeviceCheck
from ucgate.id.events import CredentialRevoked, DeviceBlocked, UserBlocked
from ucgate.id.factory import open_services
from ucgate.logs import JsonFormatter

from ..support import gateway_config
from .test_fastpath import ScriptedUpstream

TOKEN = b"cwt=AAEBHAEFAAAAAAAFFQAAAEgS9N1ZVm5xTdhw2w9EAAAB"
DEVICE_TOKEN = b"cwt=BOUNDtoDEVICEdev1AAAAAFFQAAAEgS9N1ZVm5x"
UCWA = "/ucwa/oauth/v1/applications"
EAS = "/Microsoft-Server-ActiveSync?Cmd=Sync&User=alice&DeviceId=dev1&DeviceType=iPhone"


class Upstream(ScriptedUpstream):
    """test_fastpath's scripted upstream, with the answer chosen by ``case=`` in any query."""

    async def _answer(self, head: bytes, w: asyncio.StreamWriter) -> bool:
        target = head.split(b" ", 2)[1]
        m = re.search(rb"[?&]case=([a-z-]+)", target)
        if m is not None:
            head = head.replace(target, b"/meet/" + m.group(1), 1)
        elif target.startswith(b"/meet/"):
            head = head.replace(target, b"/x", 1)
        return await super()._answer(head, w)


class Checker:
    """The device gate's id service: allows every device, counts the questions."""

    def __init__(self) -> None:
        self.calls = 0

    async def check_async(self, user, facts, **kw) -> DeviceCheck:
        self.calls += 1
        return DeviceCheck("allow", "ok", facts.device_id)


class Lab:
    """A TLS gateway (pre-authentication, OAuth, optionally the device gate) in front of
    :class:`Upstream`, the in-process id service with alice and her ASP, and raw keep-alive
    client connections signed in on demand, one per (sign-in kind, fast path on/off)."""

    def __init__(self, loop_thread, tls_files, tmp, *, gate: bool, services: dict | None = None) -> None:
        self.lt = loop_thread
        self.cert = tls_files[0]
        (tmp / "data").mkdir()
        (tmp / "keys").mkdir(mode=0o700)
        self.ids = open_services(
            store_url=f"sqlite:///{tmp / 'data' / 'ucgate.db'}",
            key_file=tmp / "keys" / "ucgate.key",
            audit_file=None,
            lockout=LockoutConfig(user_failures=100_000, ip_failures=100_000, window=900),
        )
        self.ids.users.add("alice", upn="alice@lab.test")
        self.asp_id, self.asp = self.ids.asps.create("alice", "phone")
        self.up = Upstream()
        loop_thread.run(self.up.start())
        self.wall = [time.time()]
        self.checker = Checker()
        self.gate = DeviceGate(self.checker, wallclock=lambda: self.wall[0]) if gate else None
        cfg = from_dict(
            gateway_config(*tls_files, self.up.port, timeouts={"upstream_read": 2}, services=services or {})
        )
        auth = PreAuthenticator(
            self.ids.credentials,
            PreAuthSettings(netbios_domain="LAB", failure_floor=0),
            device_id_of=self.gate.device_id_of if self.gate else None,
        )
        self.oauth = OAuthGrants(self.ids.credentials, settings=OAuthSettings(failure_floor=0))
        now = dt.datetime.now(dt.UTC)
        self.oauth.tokens.add(TOKEN, TokenRecord("alice", "s1", time.time() + 3600, now, credential_id=self.asp_id))
        self.oauth.tokens.add(DEVICE_TOKEN, TokenRecord("alice", "s2", time.time() + 3600, now, device_id="dev1"))

        async def start() -> Gateway:
            g = Gateway(cfg, auth, devices=self.gate, oauth=self.oauth)
            await g.start()
            return g

        self.gateway: Gateway = loop_thread.run(start())
        self.port = self.gateway.port
        self.basic = b"Basic " + base64.b64encode(b"alice:" + self.asp.encode())
        self.conns: dict[tuple[str, bool], Client] = {}

    def stop(self) -> None:
        for c in self.conns.values():
            c.close()
        self.lt.run(self.gateway.stop())
        self.lt.run(self.up.stop())
        self.ids.close()

    def sync(self) -> None:
        """Let the loop finish what it was doing (a pipeline task logs after its answer)."""
        for _ in range(3):
            self.lt.run(asyncio.sleep(0))

    def connect(self) -> Client:
        return Client(self.port, self.cert)

    def signed_in(self, kind: str, fast: bool) -> Client:
        """The (kind, fast) connection, opened and signed in if it is new or was closed."""
        c = self.conns.get((kind, fast))
        if c is not None and not c.dead:
            return c
        if c is not None:
            c.close()
        c = self.conns[(kind, fast)] = self.connect()
        self.gateway.fast_path = fast
        if kind == "ntlm":
            ntlm_sign_in(c, self.asp, self.cert)
        elif kind == "basic":
            status, _, _ = c.exchange(request("GET", UCWA, [(b"Authorization", self.basic)]))
            assert status.startswith(b"HTTP/1.1 200"), status
        elif kind == "bearer":
            status, _, _ = c.exchange(request("GET", UCWA, [(b"Authorization", b"Bearer " + TOKEN)]))
            assert status.startswith(b"HTTP/1.1 200"), status
        # warm: a second request on the connection, so that a pooled upstream connection is idle
        c.exchange(request("GET", "/meet/warm"))
        return c

    def conn_of(self, c: Client):
        port = c.sock.getsockname()[1]
        found = [conn for conn in self.gateway.connections if conn.peer_port == port]
        return found[0] if found else None


def request(
    method: str,
    target: str,
    fields: list[tuple[bytes, bytes]] = (),
    version: bytes = b"HTTP/1.1",
    host: bytes | None = b"gw.example",
    sep: bytes = b": ",
) -> bytes:
    lines = [method.encode() + b" " + target.encode() + b" " + version]
    if host is not None:
        lines.append(b"Host" + sep + host)
    lines += [k + sep + v for k, v in fields]
    return b"\r\n".join(lines) + b"\r\n\r\n"


class Client:
    """A raw TLS keep-alive connection reading one answer per request (any framing)."""

    def __init__(self, port: int, cert) -> None:
        ctx = ssl.create_default_context(cafile=str(cert))
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.sock = ctx.wrap_socket(sock, server_hostname="localhost")
        self.buf = b""
        self.dead = False

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
        self.dead = True

    def _fill(self) -> bool:
        try:
            chunk = self.sock.recv(65536)
        except (ConnectionError, ssl.SSLError, TimeoutError):
            chunk = b""
        if not chunk:
            self.dead = True
            return False
        self.buf += chunk
        return True

    def exchange(self, data: bytes) -> tuple[bytes, list[tuple[bytes, bytes]], bytes]:
        """Send a request; its answer as (status line, fields, body); (b"", [], b"") when the
        connection closed without one."""
        try:
            self.sock.sendall(data)
        except (ConnectionError, ssl.SSLError, OSError):
            self.dead = True
            return b"", [], b""
        head_only = data.split(b" ", 1)[0] == b"HEAD"
        while b"\r\n\r\n" not in self.buf:
            if not self._fill():
                return b"", [], b""
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.split(b"\r\n")
        fields = [(k.strip().lower(), v.strip()) for k, _, v in (line.partition(b":") for line in lines[1:])]
        d = dict(fields)
        status = lines[0]
        code = int(status.split()[1])
        body = b""
        if head_only:  # whatever follows (the gateway's own answers carry their body even to HEAD)
            self.sock.settimeout(0.05)
            while self._fill():
                pass
            self.sock.settimeout(5)
            body, self.buf = self.buf, b""
            self.close()  # the stream cannot be read on with certainty
        elif code in (204, 304) or code < 200:
            pass
        elif b"content-length" in d:
            n = int(d[b"content-length"])
            while len(self.buf) < n and self._fill():
                pass
            body, self.buf = self.buf[:n], self.buf[n:]
        elif d.get(b"transfer-encoding") == b"chunked":
            while True:
                while b"\r\n" not in self.buf:
                    if not self._fill():
                        return status, fields, body
                line, self.buf = self.buf.split(b"\r\n", 1)
                size = int(line, 16)
                while len(self.buf) < size + 2 and self._fill():
                    pass
                body += self.buf[:size]
                self.buf = self.buf[size + 2 :]
                if size == 0:
                    break
        else:
            while self._fill():
                pass
            body, self.buf = self.buf, b""
        if d.get(b"connection", b"").lower() == b"close":
            self.close()
        return status, fields, body

    def closed(self, timeout: float = 3.0) -> bool:
        """True when the server closes the connection within ``timeout`` (nothing else sent)."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(1)
        except (ConnectionError, ssl.SSLError):
            return True
        except TimeoutError:
            return False
        finally:
            self.sock.settimeout(5)
        self.buf += data
        return data == b""


def ntlm_sign_in(c: Client, asp: str, cert) -> None:
    import spnego
    import spnego.channel_bindings as cb

    from ucgate.gateway.tls import certificate_der
    from ucgate.protocols.ntlm import tls_server_end_point

    cbt = cb.GssChannelBindings(application_data=tls_server_end_point(certificate_der(cert)))
    ctx = spnego.client("alice", asp, protocol="ntlm", channel_bindings=cbt)
    status, fields, _ = c.exchange(request("GET", UCWA, [(b"Authorization", b"NTLM " + base64.b64encode(ctx.step()))]))
    assert status.startswith(b"HTTP/1.1 401"), status
    challenge = next(v for k, v in fields if k == b"www-authenticate" and v.startswith(b"NTLM "))
    t3 = ctx.step(base64.b64decode(challenge[5:]))
    status, _, _ = c.exchange(request("GET", UCWA, [(b"Authorization", b"NTLM " + base64.b64encode(t3))]))
    assert status.startswith(b"HTTP/1.1 200"), status


# --- what is compared ----------------------------------------------------------------------
_RID = re.compile(rb"(X-Ucgate-Request-Id: )[0-9a-f]{16}")


def forwarded(head: bytes) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """A forwarded head as its start line and (name as sent, value OWS-stripped) fields."""
    lines = _RID.sub(rb"\1-", head).split(b"\r\n")[:-2]
    return lines[0], [(k, v.strip(b" \t")) for k, _, v in (line.partition(b":") for line in lines[1:])]


def answer(status: bytes, fields: list[tuple[bytes, bytes]], body: bytes):
    # the fast path passes the upstream's Content-Length line where it was; the pipeline writes
    # its own after the other fields: the same fields, in another order
    return status, sorted(fields), body


def metric_state(gateway: Gateway) -> dict:
    out: dict = {("requests",) + k: v for k, v in metrics.REQUESTS.values.items()}
    for fam in (metrics.AUTH_ATTEMPTS, metrics.DEVICE_DECISIONS):
        for m in fam.collect():
            for s in m.samples:
                if s.name.endswith("_total"):
                    out[(s.name,) + tuple(sorted(s.labels.items()))] = s.value
    for label, (counts, _) in metrics.UPSTREAM_LATENCY.data.items():
        out[("upstream-latency-count", label)] = sum(counts)
    return out


def delta(before: dict, after: dict) -> dict:
    return {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}


class Lines(logging.Handler):
    """Log lines of the gateway, with what differs between two connections masked."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if not record.name.startswith("ucgate.gateway") and record.name != "ucgate.access":
            return
        # as a JSON log line shows it: the record's fields, else the logging task's context
        obj = json.loads(JsonFormatter().format(record))
        del obj["time"]
        obj["request_id"] = "-" if "request_id" in obj else None
        msg = obj["message"]
        msg = re.sub(r"request_id=[0-9a-f]{16}", "request_id=-", msg)
        msg = re.sub(r"conn=\d+", "conn=-", msg)
        msg = re.sub(r"ms=[0-9.]+", "ms=-", msg)
        obj["message"] = re.sub(r"connection \d+", "connection -", msg)
        self.lines.append(json.dumps(obj, sort_keys=True))


@pytest.fixture
def logs():
    h = Lines()
    loggers = [logging.getLogger(n) for n in ("ucgate.gateway", "ucgate.access")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.INFO)
        lg.addHandler(h)
    yield h
    for lg, level in zip(loggers, levels, strict=True):
        lg.removeHandler(h)
        lg.setLevel(level)


def run_both(lab: Lab, kind: str, data: bytes, logs: Lines) -> dict:
    """``data`` on the (kind, on) and (kind, off) connections; what each side saw."""
    seen = {}
    for fast in (True, False):
        c = lab.signed_in(kind, fast)
        lab.gateway.fast_path = fast
        lab.sync()
        n_heads = len(lab.up.heads)
        m0 = metric_state(lab.gateway)
        fast0 = lab.gateway.fast_requests
        checks0 = lab.checker.calls
        logs.lines.clear()
        status, fields, body = c.exchange(data)
        lab.sync()
        conn = lab.conn_of(c) if not c.dead else None
        principal = conn.principal if conn is not None else None
        seen[fast] = {
            "upstream": [forwarded(h) for _, h in lab.up.heads[n_heads:]],
            "raw": [_RID.sub(rb"\1-", h) for _, h in lab.up.heads[n_heads:]],
            "answer": answer(status, fields, body),
            "metrics": delta(m0, metric_state(lab.gateway)),
            "logs": list(logs.lines),
            "principal": None
            if principal is None
            else (principal.user, principal.method, principal.device_id, principal.credential_id),
            "open": not c.dead and not c.closed(timeout=0.01),
            "checks": lab.checker.calls - checks0,
            "fast": lab.gateway.fast_requests - fast0,
        }
        if not seen[fast]["open"]:
            c.close()
    assert seen[False]["fast"] == 0
    event(f"{kind}: fast path" if seen[True]["fast"] else f"{kind}: pipeline")
    return seen


def assert_same(seen: dict, canonical: bool) -> None:
    on, off = seen[True], seen[False]
    for key in ("upstream", "answer", "metrics", "logs", "principal", "open", "checks"):
        assert on[key] == off[key], f"{key} differs (fast path on / off)"
    if canonical:  # "Name: value" lines with nothing to strip: the very same bytes
        assert on["raw"] == off["raw"]


# --- the generated requests ------------------------------------------------------------------
KINDS = ("ntlm", "basic", "bearer", "none")
_TARGETS = [
    UCWA,
    UCWA + "?case=hop",
    UCWA + "?case=chunked",
    UCWA + "?case=interim",
    UCWA + "?case=nocontent",
    UCWA + "?case=large",
    "/ucwa/oauth/v1/applications/123/people",
    "/WebTicket/WebTicketService.svc",
    "/Mcx/McxService.svc",
    "/abs/handler/x.lsabs",
    EAS,
    "/Autodiscover/AutodiscoverService.svc/root/oauth/user",
    "/Autodiscover/AutodiscoverService.svc/root",
    "/meet/x",
    "/owa/",
    "/ucwa/../x",
    "/WebTicket/oauthtoken",
    "/UCWA/oauth/v1/applications",
    "/ucwa/oauth%2fv1",
]
_METHODS = ["GET", "GET", "GET", "HEAD", "OPTIONS", "POST", "PUT", "DELETE", "get", "TRACE", "PROPFIND"]
_FIELD_NAMES = [
    b"User-Agent",
    b"Accept",
    b"Cookie",
    b"X-Ucgate-User",
    b"X_Ucgate_User",
    b"x.forwarded.for",
    b"X-Forwarded-For",
    b"Forwarded",
    b"X-Real-IP",
    b"X-Original-URL",
    b"X-HTTP-Method-Override",
    b"X-Ucgate-Request-Id",
    b"Connection",
    b"Expect",
    b"Content-Length",
    b"Keep-Alive",
    b"X-Users",
]
_FIELD_VALUES = {
    b"Connection": [b"keep-alive", b"close", b"Keep-Alive", b"x-a"],
    b"Expect": [b"100-continue"],
    b"Content-Length": [b"0"],
    b"Keep-Alive": [b"timeout=5"],
}


@st.composite
def requests(draw, kinds=KINDS):
    kind = draw(st.sampled_from(kinds))
    if draw(st.booleans()):  # a signed-in client's usual request: what the fast path is for
        method = draw(st.sampled_from(["GET", "GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS"]))
        target = draw(st.sampled_from(_TARGETS[:11]))
        version, host, authz = b"HTTP/1.1", b"gw.example", "own"
        names = draw(st.lists(st.sampled_from([b"User-Agent", b"Accept", b"Cookie", b"Connection"]), max_size=3))
    else:
        method = draw(st.sampled_from(_METHODS))
        target = draw(st.sampled_from(_TARGETS))
        version = draw(st.sampled_from([b"HTTP/1.1"] * 6 + [b"HTTP/1.0"]))
        host = draw(st.sampled_from([b"gw.example", b"gw.example", b"GW.example:8443", None]))
        # the credentials: the connection's own, another spelling of them, wrong ones, none
        authz = draw(st.sampled_from(["own", "own", "none", "spaced", "lower", "twice", "other", "empty"]))
        names = draw(st.lists(st.sampled_from(_FIELD_NAMES), max_size=4))
    fields: list[tuple[bytes, bytes]] = []
    for name in names:
        value = draw(st.sampled_from(_FIELD_VALUES.get(name, [b"1.2.3.4", b"alice", b"*/*", b"caf\xc3\xa9"])))
        fields.append((name, value))
    sep = draw(st.sampled_from([b": ", b": ", b":", b":\t", b":  "]))
    return kind, method, target, version, host, fields, authz, sep


def build(lab: Lab, kind, method, target, version, host, fields, authz, sep) -> tuple[bytes, bool]:
    own = {"basic": lab.basic, "bearer": b"Bearer " + TOKEN}.get(kind)
    creds: list[tuple[bytes, bytes]] = []
    if authz == "own" and own is not None:
        creds = [(b"Authorization", own)]
    elif authz == "spaced" and own is not None:
        creds = [(b"Authorization", own.replace(b" ", b"  ", 1) + b" ")]
    elif authz == "lower" and own is not None:
        creds = [(b"authorization", own.split(b" ", 1)[0].lower() + b" " + own.split(b" ", 1)[1])]
    elif authz == "twice" and own is not None:
        creds = [(b"Authorization", own), (b"Authorization", own)]
    elif authz == "other":  # a Bearer token the gateway never issued, or Basic with another password
        creds = [
            (
                b"Authorization",
                b"Bearer cwt=NEVERISSUED" if kind != "basic" else b"Basic " + base64.b64encode(b"alice:not-the-asp"),
            )
        ]
    elif authz == "empty":
        creds = [(b"Authorization", b"")]
    data = request(method, target, fields + creds, version=version, host=host, sep=sep)
    canonical = sep == b": " and all(v == v.strip(b" \t") for _, v in fields + creds)
    return data, canonical


@pytest.fixture(scope="module")
def lab(loop_thread, tls_files, tmp_path_factory):
    lab = Lab(loop_thread, tls_files, tmp_path_factory.mktemp("fastauth"), gate=False)
    yield lab
    lab.stop()


@pytest.fixture(scope="module")
def gated(loop_thread, tls_files, tmp_path_factory):
    lab = Lab(loop_thread, tls_files, tmp_path_factory.mktemp("fastauth-gate"), gate=True)
    yield lab
    lab.stop()


_PROPERTY = settings(
    max_examples=int(os.environ.get("UCGATE_FUZZ_EXAMPLES", "300")) // 2,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@_PROPERTY
@given(requests())
def test_authenticated_fast_path_applies_the_pipelines_rules(lab, logs, r):
    data, canonical = build(lab, *r)
    assert_same(run_both(lab, r[0], data, logs), canonical)


@_PROPERTY
@given(requests(kinds=("ntlm", "basic", "bearer")))
def test_with_the_device_gate_the_fast_path_applies_the_pipelines_rules(gated, logs, r):
    data, canonical = build(gated, *r)
    assert_same(run_both(gated, r[0], data, logs), canonical)


# --- which path runs -------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["ntlm", "basic", "bearer"])
def test_signed_in_keep_alive_requests_take_the_fast_path(lab, logs, kind):
    own = {"basic": [(b"Authorization", lab.basic)], "bearer": [(b"Authorization", b"Bearer " + TOKEN)]}
    c = lab.signed_in(kind, True)
    lab.gateway.fast_path = True
    lab.sync()
    logs.lines.clear()  # a new connection's warm-up request is anonymous
    sign_ins = len([e for e in lab.ids.audit.tail(1000) if e.action == "sign-in"])
    before = lab.gateway.fast_requests
    for i in range(5):
        status, _, body = c.exchange(request("GET", f"{UCWA}?i={i}", own.get(kind, [])))
        assert status == b"HTTP/1.1 200 OK" and body == b'{"ok":true}'
    assert lab.gateway.fast_requests == before + 5
    _, head = lab.up.heads[-1]
    assert b"\r\nX-Ucgate-User: alice\r\n" in head
    assert (b"\r\nAuthorization: Bearer " + TOKEN + b"\r\n" in head) == (kind == "bearer")
    if kind == "basic":
        assert b"Basic" not in head
    # memoised and connection-authenticated requests are no sign-ins (no audit event), as in the pipeline
    time.sleep(0.2)
    assert len([e for e in lab.ids.audit.tail(1000) if e.action == "sign-in"]) == sign_ins
    lab.sync()
    access = [json.loads(line) for line in logs.lines if '"logger": "ucgate.access"' in line]
    assert access and all("user=alice" in a["message"] for a in access)


def test_what_is_not_known_yet_goes_to_the_pipeline(lab):
    lab.gateway.fast_path = True
    c = lab.signed_in("basic", True)
    before = lab.gateway.fast_requests
    # another Basic header (verified by the id service), an unknown token, no credentials, a 405
    c.exchange(request("GET", UCWA, [(b"Authorization", b"Basic " + base64.b64encode(b"alice:nope"))]))
    c.exchange(request("GET", UCWA, [(b"Authorization", b"Bearer cwt=NEVERISSUED")]))
    c2 = lab.connect()
    try:
        assert c2.exchange(request("GET", UCWA))[0] == b"HTTP/1.1 401 Unauthorized"
    finally:
        c2.close()
    assert c.exchange(request("PATCH", UCWA, [(b"Authorization", lab.basic)]))[0] == b"HTTP/1.1 405 Method Not Allowed"
    assert lab.gateway.fast_requests == before
    assert c.exchange(request("GET", UCWA, [(b"Authorization", lab.basic)]))[0] == b"HTTP/1.1 200 OK"
    assert lab.gateway.fast_requests == before + 1


def test_device_gate_verdicts_cached_on_the_connection(gated):
    gated.gateway.fast_path = True
    c = gated.connect()
    try:
        eas = [(b"Authorization", gated.basic), (b"MS-ASProtocolVersion", b"14.1")]
        assert c.exchange(request("POST", EAS, eas + [(b"Content-Length", b"0")]))[0] == b"HTTP/1.1 200 OK"
        assert gated.checker.calls >= 1
        calls, before = gated.checker.calls, gated.gateway.fast_requests
        for _ in range(3):  # allowed and cached: answered without asking, on the fast path
            assert c.exchange(request("POST", EAS, eas))[0] == b"HTTP/1.1 200 OK"
        assert gated.checker.calls == calls and gated.gateway.fast_requests == before + 3
        conn = gated.conn_of(c)
        assert conn.principal.device_id == "dev1"
        gated.wall[0] += RECHECK_SECONDS + 1  # the cached verdict expired: asked again (the pipeline)
        assert c.exchange(request("POST", EAS, eas))[0] == b"HTTP/1.1 200 OK"
        assert gated.checker.calls == calls + 1 and gated.gateway.fast_requests == before + 3
        assert c.exchange(request("POST", EAS, eas))[0] == b"HTTP/1.1 200 OK"
        assert gated.gateway.fast_requests == before + 4
    finally:
        c.close()


def test_backend_modes_other_than_none_take_the_pipeline(loop_thread, tls_files, tmp_path):
    lab = Lab(loop_thread, tls_files, tmp_path, gate=False, services={"ucwa": {"backend": "passthrough"}})
    try:
        c = lab.signed_in("basic", True)
        lab.gateway.fast_path = True
        before = lab.gateway.fast_requests
        for _ in range(2):
            assert c.exchange(request("GET", UCWA, [(b"Authorization", lab.basic)]))[0] == b"HTTP/1.1 200 OK"
            _, head = lab.up.heads[-1]
            assert b"\r\nAuthorization: " + lab.basic + b"\r\n" in head  # the client's own, passed through
        assert lab.gateway.fast_requests == before
        # a service still on backend none goes on taking the fast path on the same connection
        assert (
            c.exchange(request("GET", "/Mcx/McxService.svc", [(b"Authorization", lab.basic)]))[0] == b"HTTP/1.1 200 OK"
        )
        assert lab.gateway.fast_requests == before + 1
    finally:
        lab.stop()


# --- cut off by an event ---------------------------------------------------------------------
def _post(lab: Lab, ev) -> None:
    async def post():
        lab.gateway.on_event(ev)

    lab.lt.run(post())


@pytest.mark.parametrize(
    "kind,make",
    [
        ("ntlm", lambda lab: UserBlocked("alice", "disabled")),
        (
            "basic",
            lambda lab: UserBlocked(
                "alice", "signed out", signed_in_before=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)
            ),
        ),
        ("basic", lambda lab: CredentialRevoked("alice", lab.asp_id, "revoked")),
        ("bearer", lambda lab: CredentialRevoked("alice", lab.asp_id, "revoked")),
        ("bearer", lambda lab: UserBlocked("alice", "locked")),
    ],
)
def test_a_connection_cut_by_an_event_is_never_served_again(loop_thread, tls_files, tmp_path, kind, make):
    lab = Lab(loop_thread, tls_files, tmp_path, gate=False)
    try:
        own = {"basic": [(b"Authorization", lab.basic)], "bearer": [(b"Authorization", b"Bearer " + TOKEN)]}
        c = lab.signed_in(kind, True)
        lab.gateway.fast_path = True
        before = lab.gateway.fast_requests
        assert c.exchange(request("GET", UCWA, own.get(kind, [])))[0] == b"HTTP/1.1 200 OK"
        assert lab.gateway.fast_requests == before + 1
        heads = len(lab.up.heads)
        _post(lab, make(lab))
        assert c.closed()
        assert c.exchange(request("GET", UCWA, own.get(kind, [])))[0] == b""
        assert len(lab.up.heads) == heads and lab.gateway.fast_requests == before + 1
        if kind == "bearer":  # the token is gone too: a new connection with it is refused
            c2 = lab.connect()
            try:
                assert c2.exchange(request("GET", UCWA, own["bearer"]))[0] == b"HTTP/1.1 401 Unauthorized"
            finally:
                c2.close()
            assert len(lab.up.heads) == heads
    finally:
        lab.stop()


def test_a_device_block_cuts_the_bearer_connection_of_that_device(loop_thread, tls_files, tmp_path):
    lab = Lab(loop_thread, tls_files, tmp_path, gate=False)
    try:
        bound = [(b"Authorization", b"Bearer " + DEVICE_TOKEN)]
        c, other = lab.connect(), lab.signed_in("bearer", True)  # DEVICE_TOKEN is dev1's; TOKEN no device's
        lab.gateway.fast_path = True
        for _ in range(2):
            assert c.exchange(request("GET", UCWA, bound))[0] == b"HTTP/1.1 200 OK"
        assert lab.conn_of(c).principal.device_id == "dev1"
        heads = len(lab.up.heads)
        _post(lab, DeviceBlocked("alice", "DEV1", "blocked"))
        assert c.closed()
        assert len(lab.up.heads) == heads
        # the user's other connection goes on, on the fast path
        before = lab.gateway.fast_requests
        assert other.exchange(request("GET", UCWA, [(b"Authorization", b"Bearer " + TOKEN)]))[0] == b"HTTP/1.1 200 OK"
        assert lab.gateway.fast_requests == before + 1
    finally:
        lab.stop()


def test_an_event_while_the_request_is_upstream_drops_its_answer(loop_thread, tls_files, tmp_path):
    lab = Lab(loop_thread, tls_files, tmp_path, gate=False)
    try:
        c = lab.signed_in("ntlm", True)
        lab.gateway.fast_path = True
        before = lab.gateway.fast_requests
        c.sock.sendall(request("GET", UCWA + "?case=slow"))  # answered after 0.3 s
        time.sleep(0.1)
        assert lab.gateway.fast_requests == before + 1  # in flight on the fast path
        _post(lab, UserBlocked("alice", "disabled"))
        assert c.closed()
        assert c.buf == b""  # never the answer
    finally:
        lab.stop()
