"""Issue 13, items 1-4: what a lenient front end would read differently never reaches it.

Each table names classes of spelling or encoding, not single examples. Every vector is sent
through the running gateway to tests/support.py's RecordingUpstream (h11), on the fast path
(an anonymous bodiless request on a warm pool), on the anonymous pipeline (the same with a body)
and, where it matters, authenticated (AllowAs); the test checks what the front end received —
also as a CGI/WSGI or PHP server would map it to variables (``HTTP_X_UCGATE_USER``) — or that
nothing reached it, the status, the reason code in the log, and that the authenticator (where
the failure budget is counted) was never asked.
"""

from __future__ import annotations

import logging
import re
import socket
import time

import pytest

from ..support import AllowAs, RecordingUpstream, start_gateway

PUBLISHED = "lyncext.contoso.com"
ANON = "/meet/alice/ABC123"
PROTECTED = "/ucwa/oauth/v1/applications"


class CountingAllow(AllowAs):
    """AllowAs that counts how often it was asked (the failure budget is counted there)."""

    def __init__(self) -> None:
        super().__init__("alice")
        self.calls = 0

    async def authenticate(self, conn, request, service):
        self.calls += 1
        return await super().authenticate(conn, request, service)


@pytest.fixture(scope="module")
def env(loop_thread):
    up = RecordingUpstream()
    loop_thread.run(up.start())
    auth = CountingAllow()
    g = start_gateway(loop_thread, None, None, up.port, authenticator=auth, published_name=PUBLISHED)
    yield g, up, auth
    g.stop()
    loop_thread.run(up.stop())


def send(g, raw: bytes, timeout: float = 5.0) -> bytes:
    """One request on a new connection; the answer up to the server's close."""
    return g.raw(raw, read_timeout=timeout)


def status_of(resp: bytes) -> int:
    assert resp.startswith(b"HTTP/1.1 "), resp[:200]
    return int(resp[9:12])


def request(
    method: str,
    target: str,
    headers: list[tuple[str, str]] = (),
    body: bytes = b"",
    version: str = "1.1",
    host: str | None = "gw",
) -> bytes:
    lines = [f"{method} {target} HTTP/{version}"]
    if host is not None:
        lines.append(f"Host: {host}")
    lines += [f"{k}: {v}" for k, v in headers]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def cgi_env(headers: list[tuple[str, str]]) -> dict[str, str]:
    """The variables a CGI/WSGI server (wsgiref) makes of header fields: '-' to '_', upper case,
    repeated names joined with ','."""
    env: dict[str, str] = {}
    for k, v in headers:
        key = "HTTP_" + k.upper().replace("-", "_")
        env[key] = env[key] + "," + v if key in env else v
    return env


def php_env(headers: list[tuple[str, str]]) -> dict[str, str]:
    """PHP's mapping: every non-alphanumeric character to '_' (the last copy wins)."""
    return {"HTTP_" + re.sub(r"[^A-Z0-9]", "_", k.upper()): v for k, v in headers}


def squash(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


# the names the gateway sets itself, and the client look-alikes of them it must drop
OURS = {"x-ucgate-user", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"}
OWNED = (
    "xucgateuser",
    "xforwarded",
    "forwarded",
    "xrealip",
    "xmsforwarded",
    "xoriginal",
    "xrewrite",
    "xhttpmethod",
    "xmethodoverride",
    "xclientip",
    "trueclientip",
    "xclusterclientip",
)


def spellings(name: str) -> dict[str, str]:
    """One spelling of ``name`` (words joined by '-') per class of look-alike that CGI, WSGI,
    PHP or a lenient framework maps to the same variable, or to one starting with it."""
    words = name.split("-")
    return {
        "lower": name.lower(),
        "upper": name.upper(),
        "underscore": "_".join(words),
        "mixed-separators": words[0] + "_" + "-".join(words[1:]),
        "dot": ".".join(words),
        "other-punctuation": "~".join(words),
        "no-separator": "".join(words),
        "doubled-separator": "--".join(words),
        "leading-punctuation": "_" + name,
        "trailing-underscore": name + "_",
        "trailing-dash": name + "-",
        "trailing-word": name + "-Extra",
        "trailing-digit": name + "2",
    }


IDENTITY_NAMES = ["X-Ucgate-User"]
FORWARDING_NAMES = ["X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host", "Forwarded"]
ROUTING_NAMES = [
    "X-Original-URL",
    "X-Rewrite-URL",
    "X-HTTP-Method-Override",
    "X-HTTP-Method",
    "X-Method-Override",
    "X-Real-IP",
    "X-MS-Forwarded-Client-IP",
    "X-Client-IP",
    "True-Client-IP",
    "X-Cluster-Client-IP",
]
VALUES = {
    "X-Ucgate-User": "CONTOSO\\administrator",
    "X-Original-URL": PROTECTED,
    "X-Rewrite-URL": PROTECTED,
    "X-HTTP-Method-Override": "DELETE",
    "X-HTTP-Method": "DELETE",
    "X-Method-Override": "DELETE",
}


def header_vectors(names):
    return [(n, cls, spelled) for n in names for cls, spelled in spellings(n).items()]


def check_forwarded(seen, user: str | None) -> None:
    """What reached the front end holds only the gateway's own identity/forwarding fields."""
    for k, _ in seen.headers:
        assert k.lower() in OURS or not squash(k).startswith(OWNED), f"{k} reached the front end"
    for env in (cgi_env(seen.headers), php_env(seen.headers)):
        assert env.get("HTTP_X_UCGATE_USER") == user
        assert env.get("HTTP_X_FORWARDED_FOR") == "127.0.0.1"
        assert env.get("HTTP_X_FORWARDED_PROTO") == "http"
        assert env.get("HTTP_X_FORWARDED_HOST") == "gw"
        for var in (
            "HTTP_FORWARDED",
            "HTTP_X_REAL_IP",
            "HTTP_X_ORIGINAL_URL",
            "HTTP_X_REWRITE_URL",
            "HTTP_X_HTTP_METHOD_OVERRIDE",
            "HTTP_X_MS_FORWARDED_CLIENT_IP",
        ):
            assert var not in env


def _send_header_vector(env, caplog, name, spelled):
    g, up, _ = env
    value = VALUES.get(name, "10.6.6.6")
    hs = [("Accept", "*/*"), (spelled, value), ("User-Agent", "t")]
    send(g, request("GET", ANON + "?warm=1"))  # an idle pooled connection: the fast path can run
    cases = [
        ("fast path", request("GET", ANON, hs), None),
        ("anonymous pipeline", request("POST", ANON, hs, body=b"x"), None),
        ("authenticated", request("GET", PROTECTED, hs), "alice"),
    ]
    for label, raw, user in cases:
        before = len(up.received)
        with caplog.at_level(logging.INFO, logger="ucgate.gateway"):
            caplog.clear()
            resp = send(g, raw)
        assert status_of(resp) == 200, (label, resp[:200])
        assert len(up.received) == before + 1, label
        check_forwarded(up.received[-1], user)
        assert any(
            "client-header-dropped" in r.getMessage() and spelled.lower() in r.getMessage().lower()
            for r in caplog.records
        ), (label, [r.getMessage() for r in caplog.records])


@pytest.mark.parametrize(
    "name,cls,spelled",
    header_vectors(IDENTITY_NAMES + FORWARDING_NAMES),
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_identity_and_forwarding_lookalikes_are_dropped(env, caplog, name, cls, spelled):
    """Item 1: a client spelling of X-Ucgate-User or X-Forwarded-*/Forwarded that a front end
    maps to the same variable never reaches it; the gateway's own value is the only one."""
    _send_header_vector(env, caplog, name, spelled)


@pytest.mark.parametrize(
    "name,cls,spelled", header_vectors(ROUTING_NAMES), ids=lambda v: v if isinstance(v, str) else None
)
def test_routing_and_override_headers_are_dropped(env, caplog, name, cls, spelled):
    """Item 3: routing (IIS URL Rewrite's X-Original-URL...), method-override and client-IP
    headers, in every spelling class, are dropped."""
    _send_header_vector(env, caplog, name, spelled)


def test_ordinary_headers_pass_unchanged(env):
    g, up, _ = env
    hs = [
        ("X-Ms-Namespace", "internal"),
        ("X-Forward", "kept"),
        ("X-Users", "kept"),
        ("Forwarding-Note", "k"),
        ("X-Request-Id", "1"),
    ]
    assert status_of(send(g, request("GET", ANON, hs))) == 200
    seen = up.received[-1]
    for k, v in hs:
        assert seen.header(k) == v


# --- item 2: paths ----------------------------------------------------------------------------

ANON_PREFIXES = ["/meet/", "/dialin/", "/lwa/", "/Autodiscover/XFrame/"]
# a segment a lenient server (IIS/Windows, Tomcat, a Unicode-normalising framework) reads as
# "." or "..", or as a separator, by class; each is put between an anonymous prefix and UCWA
PATH_VECTORS = {
    # overlong UTF-8 of "." / "/" / "\" (IIS 4/5 decoded these), and other invalid UTF-8
    "overlong-2-dot": ("%c0%ae%c0%ae", "bad-utf8-in-path"),
    "overlong-3-dot": ("%e0%80%ae%e0%80%ae", "bad-utf8-in-path"),
    "overlong-4-dot": ("%f0%80%80%ae", "bad-utf8-in-path"),
    "overlong-slash": ("..%c0%af..", "bad-utf8-in-path"),
    "overlong-3-slash": ("..%e0%80%af", "bad-utf8-in-path"),
    "overlong-backslash": ("..%c1%9c", "bad-utf8-in-path"),
    "lone-continuation": ("%80", "bad-utf8-in-path"),
    "truncated-sequence": ("%c3", "bad-utf8-in-path"),
    "surrogate": ("%ed%a0%80", "bad-utf8-in-path"),
    "beyond-unicode": ("%f4%90%80%80", "bad-utf8-in-path"),
    "latin1-byte": ("%ff", "bad-utf8-in-path"),
    # dots with a path parameter (Tomcat/Jetty strip ";...") or an NTFS stream name (":...")
    "dotdot-semicolon": ("..;", "dot-segment-in-path"),
    "dotdot-parameter": ("..;jsessionid=1", "dot-segment-in-path"),
    "dot-semicolon": (".;", "dot-segment-in-path"),
    "dotdot-stream": ("..::$INDEX_ALLOCATION", "dot-segment-in-path"),
    # more dots (Windows strips trailing dots)
    "three-dots": ("...", "dot-segment-in-path"),
    "four-dots": ("....", "dot-segment-in-path"),
    # whitespace around dots (Windows strips trailing spaces; some frameworks trim)
    "dotdot-space": ("..%20", "dot-segment-in-path"),
    "dot-space": (".%20", "dot-segment-in-path"),
    "space-dotdot": ("%20..", "dot-segment-in-path"),
    "dotdot-nbsp": ("..%c2%a0", "dot-segment-in-path"),
    "dot-space-dot": (".%20.", "dot-segment-in-path"),
    "dotdot-space-semicolon": ("..%20;x", "dot-segment-in-path"),
    # Unicode dot look-alikes (NFKC or best-fit map them to ".")
    "fullwidth-dots": ("%ef%bc%8e%ef%bc%8e", "unicode-lookalike-in-path"),
    "one-dot-leaders": ("%e2%80%a4%e2%80%a4", "unicode-lookalike-in-path"),
    "two-dot-leader": ("%e2%80%a5", "unicode-lookalike-in-path"),
    "ellipsis": ("%e2%80%a6", "unicode-lookalike-in-path"),
    "small-full-stop": ("%ef%b9%92%ef%b9%92", "unicode-lookalike-in-path"),
    "ideographic-full-stop": ("%e3%80%82%e3%80%82", "unicode-lookalike-in-path"),
    "halfwidth-ideographic": ("%ef%bd%a1%ef%bd%a1", "unicode-lookalike-in-path"),
    "dot-and-fullwidth": (".%ef%bc%8e", "unicode-lookalike-in-path"),
    # Unicode separator look-alikes
    "fullwidth-solidus": ("x%ef%bc%8f..", "unicode-lookalike-in-path"),
    "division-slash": ("x%e2%88%95..", "unicode-lookalike-in-path"),
    "fraction-slash": ("x%e2%81%84..", "unicode-lookalike-in-path"),
    "fullwidth-backslash": ("x%ef%bc%bc..", "unicode-lookalike-in-path"),
    "small-reverse-solidus": ("x%ef%b9%a8..", "unicode-lookalike-in-path"),
    "set-minus": ("x%e2%88%96..", "unicode-lookalike-in-path"),
    "fullwidth-percent": ("%ef%bc%85%32%65%ef%bc%85%32%65", "unicode-lookalike-in-path"),
}


@pytest.mark.parametrize("prefix", ANON_PREFIXES)
@pytest.mark.parametrize("cls", sorted(PATH_VECTORS))
def test_dot_lookalike_segments_through_anonymous_prefixes_are_refused(env, caplog, prefix, cls):
    g, up, auth = env
    segment, reason = PATH_VECTORS[cls]
    send(g, request("GET", ANON + "?warm=1"))
    before, calls = len(up.received), auth.calls
    for method, body in (("GET", b""), ("POST", b"x")):  # fast path and pipeline
        target = prefix + segment + "/ucwa/oauth/v1/applications"
        with caplog.at_level(logging.INFO, logger="ucgate.gateway"):
            caplog.clear()
            t = time.monotonic()
            resp = send(g, request(method, target, body=body))
        assert status_of(resp) == 400, (target, resp[:200])
        assert time.monotonic() - t < 3
        assert any(f"reason={reason}" in r.getMessage() for r in caplog.records), [
            r.getMessage() for r in caplog.records
        ]
    assert len(up.received) == before, f"{cls} reached the front end: {up.received[before:]}"
    assert auth.calls == calls, "a refused path must not reach the authenticator (failure budget)"


@pytest.mark.parametrize(
    "path",
    [
        "/meet/alice/ABC123",
        "/meet/a.b/c",
        "/meet/.well-known",
        "/lwa/a..b",
        "/meet/x;y",
        "/meet/caf%c3%a9",
        "/meet/%e4%bc%9a%e8%ad%b0",
        "/meet/a%20b",
        "/dialin/%20",
        "/lwa/..x",
        "/meet/a.:b",
    ],
)
def test_ordinary_paths_still_pass(env, path):
    g, up, _ = env
    assert status_of(send(g, request("GET", path))) == 200
    assert up.received[-1].target == path


# --- item 3: methods and Expect ---------------------------------------------------------------

EAS = "/Microsoft-Server-ActiveSync?Cmd=Ping&User=alice&DeviceId=A1&DeviceType=iPhone"
# (class, method, target, allowed)
METHOD_VECTORS = [
    ("tunnel", "CONNECT", ANON, False),
    ("diagnostic", "TRACE", ANON, False),
    ("diagnostic", "TRACK", "/dialin/", False),
    ("diagnostic", "DEBUG", "/lwa/x", False),
    ("webdav", "PROPFIND", "/Autodiscover/XFrame/XFrame.html", False),
    ("webdav", "MKCOL", ANON, False),
    ("webdav", "MOVE", ANON, False),
    ("write-on-static", "PUT", ANON, False),
    ("write-on-static", "DELETE", "/Autodiscover/AutodiscoverService.svc/root", False),
    ("write-on-static", "PATCH", ANON, False),
    ("case", "get", ANON, False),
    ("unknown", "FOO", ANON, False),
    ("protected-tunnel", "CONNECT", PROTECTED, False),
    ("protected-diagnostic", "TRACE", PROTECTED, False),
    ("ucwa-patch", "PATCH", PROTECTED, False),
    ("eas-get", "GET", EAS, False),
    ("eas-put", "PUT", EAS, False),
    ("eas-head", "HEAD", EAS, False),
    ("allowed", "GET", ANON, True),
    ("allowed", "HEAD", ANON, True),
    ("allowed", "POST", ANON, True),
    ("allowed", "OPTIONS", ANON, True),
    ("allowed", "PUT", PROTECTED, True),
    ("allowed", "DELETE", PROTECTED, True),
    ("allowed", "OPTIONS", EAS, True),
    ("allowed", "POST", EAS, True),
]


@pytest.mark.parametrize(
    "cls,method,target,allowed", METHOD_VECTORS, ids=[f"{c}-{m}-{t.split('?')[0]}" for c, m, t, _ in METHOD_VECTORS]
)
def test_methods_are_allowed_per_service(env, caplog, cls, method, target, allowed):
    g, up, auth = env
    send(g, request("GET", ANON + "?warm=1"))
    before, calls = len(up.received), auth.calls
    with caplog.at_level(logging.INFO, logger="ucgate.gateway"):
        resp = send(g, request(method, target))
    if allowed:
        assert status_of(resp) == 200
        assert len(up.received) == before + 1 and up.received[-1].method == method
        return
    assert status_of(resp) == 405, resp[:300]
    assert re.search(rb"\r\nAllow: [A-Z, ]+\r\n", resp)
    assert len(up.received) == before, f"{method} {target} reached the front end"
    assert auth.calls == calls, "a refused method must not reach the authenticator (failure budget)"
    assert any("reason=method-not-allowed" in r.getMessage() for r in caplog.records)


def test_405_keeps_the_connection_and_names_the_service_methods(env):
    g, up, _ = env
    sock = socket.create_connection(("127.0.0.1", g.port), timeout=5)
    try:
        sock.sendall(
            b"TRACE /meet/x HTTP/1.1\r\nHost: gw\r\n\r\nGET /meet/x HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n"
        )
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
    finally:
        sock.close()
    assert out.startswith(b"HTTP/1.1 405 ")
    assert b"\r\nAllow: GET, HEAD, POST, OPTIONS\r\n" in out
    assert b"HTTP/1.1 200 " in out
    eas = send(g, request("PUT", EAS))
    assert b"\r\nAllow: OPTIONS, POST\r\n" in eas


@pytest.mark.parametrize("case", ["http11-body", "http11-no-body", "http10-body", "anonymous-body"])
def test_expect_is_not_forwarded_once_answered(env, case):
    g, up, _ = env
    target = ANON if case == "anonymous-body" else PROTECTED
    version = "1.0" if case == "http10-body" else "1.1"
    method = "GET" if case == "http11-no-body" else "POST"
    head = f"{method} {target} HTTP/{version}\r\nHost: gw\r\nExpect: 100-continue\r\n"
    if method == "POST":
        head += "Content-Length: 5\r\n"
    head += "Connection: close\r\n\r\n"
    before = len(up.received)
    sock = socket.create_connection(("127.0.0.1", g.port), timeout=5)
    try:
        sock.sendall(head.encode())
        if case in ("http11-body", "anonymous-body"):
            got = sock.recv(65536)
            assert got.startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        if method == "POST":
            sock.sendall(b"hello")
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
    finally:
        sock.close()
    assert b"HTTP/1.1 200 " in out
    assert len(up.received) == before + 1
    seen = up.received[-1]
    assert seen.header("Expect") is None, "the gateway answered 100 itself; the front end must not wait for a body"
    assert seen.body_len == (5 if method == "POST" else 0)


# --- item 4: HTTP/1.0 without Host, bare LF ---------------------------------------------------


@pytest.mark.parametrize("target,method", [(ANON, "GET"), (ANON, "POST"), (PROTECTED, "GET")])
def test_http10_without_host_goes_upstream_with_the_published_name(env, target, method):
    g, up, _ = env
    send(g, request("GET", ANON + "?warm=1"))
    before = len(up.received)
    resp = send(g, request(method, target, version="1.0", host=None, body=b"x" if method == "POST" else b""))
    assert status_of(resp) == 200, resp[:200]
    assert len(up.received) == before + 1
    seen = up.received[-1]
    assert seen.header("Host") == PUBLISHED
    assert seen.header("X-Forwarded-Host") == PUBLISHED


def test_http10_without_host_and_no_published_name_is_400(loop_thread, caplog):
    up = RecordingUpstream()
    loop_thread.run(up.start())
    auth = CountingAllow()
    g = start_gateway(loop_thread, None, None, up.port, authenticator=auth)
    try:
        for target in (ANON, PROTECTED):
            with caplog.at_level(logging.INFO, logger="ucgate.gateway"):
                resp = send(g, request("GET", target, version="1.0", host=None))
            assert status_of(resp) == 400
        assert up.received == [] and auth.calls == 0
        assert any("reason=missing-host" in r.getMessage() for r in caplog.records)
    finally:
        g.stop()
        loop_thread.run(up.stop())


@pytest.mark.parametrize(
    "raw",
    [
        b"GET /meet/x HTTP/1.1\nHost: gw\n\n",
        b"GET /meet/x HTTP/1.1\r\nHost: gw\n\n",
        b"GET /meet/x HTTP/1.1\r\nHost: gw\r\n\n",
        b"GET /meet/x HTTP/1.1\r\nHost: gw\n\r\n",
    ],
    ids=["all-lf", "lf-lf", "crlf-lf", "lf-crlf"],
)
def test_client_head_with_bare_lf_is_refused_at_once(loop_thread, raw):
    up = RecordingUpstream()
    loop_thread.run(up.start())
    g = start_gateway(loop_thread, None, None, up.port, timeouts={"header_read": 30})
    try:
        t = time.monotonic()
        resp = send(g, raw, timeout=10)
        assert status_of(resp) == 400, resp
        assert b"bare-cr-or-lf" in resp
        assert time.monotonic() - t < 3, "refused when the bare LF arrives, not at header_read"
        assert up.received == []
    finally:
        g.stop()
        loop_thread.run(up.stop())


def test_methods_are_a_per_service_setting(loop_thread, tmp_path):
    from ucgate.config import ConfigError, from_dict

    from ..support import gateway_config

    up = RecordingUpstream()
    loop_thread.run(up.start())
    g = start_gateway(loop_thread, None, None, up.port, services={"meet": {"methods": ["GET", "PROPFIND"]}})
    try:
        assert status_of(send(g, request("PROPFIND", ANON))) == 200
        resp = send(g, request("POST", ANON, body=b"x"))
        assert status_of(resp) == 405 and b"\r\nAllow: GET, PROPFIND\r\n" in resp
        assert status_of(send(g, request("POST", "/dialin/", body=b"x"))) == 200  # other services keep theirs
        assert [r.method for r in up.received] == ["PROPFIND", "POST"]
    finally:
        g.stop()
        loop_thread.run(up.stop())
    for bad, key in (
        ([], "services.meet.methods"),
        (["GET", "get"], "services.meet.methods[1]"),
        (["G T"], "services.meet.methods[0]"),
        ("GET", "services.meet.methods"),
    ):
        with pytest.raises(ConfigError, match=re.escape(key)):
            from_dict(gateway_config(None, None, 1, services={"meet": {"methods": bad}}))
