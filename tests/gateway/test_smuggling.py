"""Request smuggling and header injection: each vector gets a 4xx, the connection is closed,
and no request reaches the upstream.

The gateway authenticates everyone here (AllowAs), so parsing is the only barrier under test.
For vectors whose head is valid but whose chunked body is not, the gateway has already started
streaming to the upstream when the bad chunk arrives: it re-frames bodies with its own chunking
(so the malformed bytes never reach the upstream) and drops that upstream connection mid-body,
so the upstream never completes — and never acts on — a request. ``received`` records only
complete requests, which is what "reaches the upstream" means for a server.
"""

from __future__ import annotations

import time

import pytest

from ..support import AllowAs, start_gateway

H = b"Host: lyncext.contoso.com\r\n"

VECTORS = {
    # CL.TE / TE.CL: both framings present
    "cl-te": (
        b"POST /ucwa/x HTTP/1.1\r\n" + H + b"Content-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG",
        400,
    ),
    "te-cl": (
        b"POST /ucwa/x HTTP/1.1\r\n"
        + H
        + b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n5c\r\nGPOST / HTTP/1.1\r\n\r\n0\r\n\r\n",
        400,
    ),
    # TE.TE obfuscations
    "te-xchunked": (b"POST /ucwa/x HTTP/1.1\r\n" + H + b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", 501),
    "te-space-before-colon": (b"POST /ucwa/x HTTP/1.1\r\n" + H + b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n", 400),
    "te-duplicate": (
        b"POST /ucwa/x HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n\r\n0\r\n\r\n",
        400,
    ),
    "te-list": (b"POST /ucwa/x HTTP/1.1\r\n" + H + b"Transfer-Encoding: identity, chunked\r\n\r\n0\r\n\r\n", 400),
    "te-chunked-twice": (
        b"POST /ucwa/x HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    "te-quoted": (b"POST /ucwa/x HTTP/1.1\r\n" + H + b'Transfer-Encoding: "chunked"\r\n\r\n0\r\n\r\n', 501),
    "te-obs-fold": (b"POST /ucwa/x HTTP/1.1\r\n" + H + b"Transfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n", 400),
    "te-vertical-tab": (b"POST /ucwa/x HTTP/1.1\r\n" + H + b"Transfer-Encoding: \x0bchunked\r\n\r\n0\r\n\r\n", 400),
    "te-nul": (b"POST /ucwa/x HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\x00\r\n\r\n0\r\n\r\n", 400),
    "te-bare-lf": (b"POST /ucwa/x HTTP/1.1\r\n" + H + b"X: y\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    "te-http10": (b"POST /ucwa/x HTTP/1.0\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    "first-header-folded": (b"POST /ucwa/x HTTP/1.1\r\n Transfer-Encoding: chunked\r\n" + H + b"\r\n0\r\n\r\n", 400),
    # Content-Length games
    "cl-duplicate": (b"POST /ucwa/x HTTP/1.1\r\n" + H + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", 400),
    "cl-duplicate-same": (
        b"POST /ucwa/x HTTP/1.1\r\n" + H + b"Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
        400,
    ),
    "cl-list": (b"POST /ucwa/x HTTP/1.1\r\n" + H + b"Content-Length: 5, 5\r\n\r\nhello", 400),
    "cl-plus": (b"POST /ucwa/x HTTP/1.1\r\n" + H + b"Content-Length: +5\r\n\r\nhello", 400),
    "cl-negative": (b"POST /ucwa/x HTTP/1.1\r\n" + H + b"Content-Length: -1\r\n\r\n", 400),
    "cl-hex": (b"POST /ucwa/x HTTP/1.1\r\n" + H + b"Content-Length: 0x5\r\n\r\nhello", 400),
    "cl-huge": (b"POST /ucwa/x HTTP/1.1\r\n" + H + b"Content-Length: 99999999999999999999\r\n\r\n", 400),
    "cl-space-before-colon": (b"POST /ucwa/x HTTP/1.1\r\n" + H + b"Content-Length : 5\r\n\r\nhello", 400),
    # invalid chunk sizes (valid head, bad body)
    "chunk-not-hex": (
        b"POST /ucwa/x HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\nG\r\nxxxx\r\n0\r\n\r\n",
        400,
    ),
    "chunk-0x": (
        b"POST /ucwa/x HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n",
        400,
    ),
    "chunk-negative": (
        b"POST /ucwa/x HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n-1\r\n\r\n0\r\n\r\n",
        400,
    ),
    "chunk-leading-space": (
        b"POST /ucwa/x HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n 5\r\nhello\r\n0\r\n\r\n",
        400,
    ),
    "chunk-trailing-space": (
        b"POST /ucwa/x HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n5 \r\nhello\r\n0\r\n\r\n",
        400,
    ),
    "chunk-overflow": (
        b"POST /ucwa/x HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n1FFFFFFFFFFFFFFFF\r\nhello\r\n0\r\n\r\n",
        400,
    ),
    "chunk-bare-lf": (
        b"POST /ucwa/x HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n",
        400,
    ),
    "chunk-missing-crlf": (
        b"POST /ucwa/x HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhelloX0\r\n\r\n",
        400,
    ),
    "chunk-size-lies": (
        b"POST /ucwa/x HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n3\r\nhello\r\n0\r\n\r\n",
        400,
    ),
    "chunk-bad-trailer": (
        b"POST /ucwa/x HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-Bad : y\r\n\r\n",
        400,
    ),
    # header injection via CR/LF and friends
    "bare-cr-in-value": (b"GET /ucwa/x HTTP/1.1\r\n" + H + b"X-A: foo\rX-Ucgate-User: admin\r\n\r\n", 400),
    "lf-in-value": (b"GET /ucwa/x HTTP/1.1\r\n" + H + b"X-A: foo\nX-Ucgate-User: admin\r\n\r\n", 400),
    "encoded-crlf-in-path": (b"GET /ucwa/a%0d%0aX-Injected:%20y HTTP/1.1\r\n" + H + b"\r\n", 400),
    "nul-in-name": (b"GET /ucwa/x HTTP/1.1\r\n" + H + b"X-\x00A: b\r\n\r\n", 400),
    "space-in-name": (b"GET /ucwa/x HTTP/1.1\r\n" + H + b"Content Length: 5\r\n\r\n", 400),
    "space-in-target": (b"GET /ucwa/a b HTTP/1.1\r\n" + H + b"\r\n", 400),
    "tab-separator": (b"GET\t/ucwa/x HTTP/1.1\r\n" + H + b"\r\n", 400),
    # request line / host
    "http2-version": (b"GET /ucwa/x HTTP/2.0\r\n" + H + b"\r\n", 505),
    "http09": (b"GET /ucwa/x\r\n\r\n", 400),
    "missing-host": (b"GET /ucwa/x HTTP/1.1\r\n\r\n", 400),
    "two-hosts": (b"GET /ucwa/x HTTP/1.1\r\n" + H + b"Host: evil\r\n\r\n", 400),
    "absolute-form": (b"GET http://fe01/ucwa/x HTTP/1.1\r\n" + H + b"\r\n", 400),
    # paths that would turn anonymous autodiscover into something else
    "dot-segments": (b"GET /Autodiscover/AutodiscoverService.svc/root/../../../ucwa/x HTTP/1.1\r\n" + H + b"\r\n", 400),
    "encoded-dots": (
        b"GET /Autodiscover/AutodiscoverService.svc/root/%2e%2e/%2E%2E/ucwa HTTP/1.1\r\n" + H + b"\r\n",
        400,
    ),
    "encoded-slash": (b"GET /Autodiscover/AutodiscoverService.svc/root%2f..%2fucwa HTTP/1.1\r\n" + H + b"\r\n", 400),
    "backslash": (b"GET /Autodiscover/AutodiscoverService.svc/root\\..\\ucwa HTTP/1.1\r\n" + H + b"\r\n", 400),
    "double-encoding": (b"GET /meet/%252e%252e/ucwa HTTP/1.1\r\n" + H + b"\r\n", 400),
    "empty-segment": (b"GET /meet//ucwa/x HTTP/1.1\r\n" + H + b"\r\n", 400),
    "bad-escape": (b"GET /meet/%zz HTTP/1.1\r\n" + H + b"\r\n", 400),
    "expect-other": (b"POST /ucwa/x HTTP/1.1\r\n" + H + b"Expect: 200-ok\r\nContent-Length: 1\r\n\r\nx", 417),
}


@pytest.fixture(scope="module")
def env(loop_thread, tls_files):
    from ..support import RecordingUpstream

    up = RecordingUpstream()
    loop_thread.run(up.start())
    g = start_gateway(loop_thread, *tls_files, up.port, authenticator=AllowAs("alice"))
    yield g, up
    g.stop()
    loop_thread.run(up.stop())


@pytest.mark.parametrize("name", sorted(VECTORS))
def test_vector_refused_and_nothing_forwarded(env, name):
    g, up = env
    raw, status = VECTORS[name]
    before = len(up.received)
    t = time.monotonic()
    resp = g.raw(raw)
    elapsed = time.monotonic() - t
    assert resp.startswith(b"HTTP/1.1 %d " % status), resp[:200]
    assert b"\r\nConnection: close\r\n" in resp
    assert resp.count(b"HTTP/1.1 ") == 1, "exactly one response: nothing smuggled behind it"
    assert elapsed < 3, "the gateway closes the connection after a refused request"
    assert len(up.received) == before, f"{name} reached the upstream: {up.received[before:]}"


def test_pipelined_second_request_refused_first_served(env):
    g, up = env
    before = len(up.received)
    good = b"GET /ucwa/first HTTP/1.1\r\n" + H + b"\r\n"
    bad = b"POST /ucwa/x HTTP/1.1\r\n" + H + b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    resp = g.raw(good + bad)
    assert resp.startswith(b"HTTP/1.1 200 ")
    assert b"HTTP/1.1 400 " in resp
    assert [r.target for r in up.received[before:]] == ["/ucwa/first"]


def test_valid_framings_still_work(env):
    """The strictness does not refuse what real clients send."""
    g, up = env
    ok = [
        b"POST /ucwa/x HTTP/1.1\r\n" + H + b"Transfer-Encoding: Chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nX-T: y\r\n\r\n",
        b"POST /ucwa/x HTTP/1.1\r\n" + H + b"Content-Length:   5  \r\nConnection: close\r\n\r\nhello",
        b"\r\nGET /ucwa/x HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n",  # leading CRLF (RFC 9112 2.2)
    ]
    for raw in ok:
        before = len(up.received)
        if b"Connection: close" not in raw:
            raw = raw.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1)
        resp = g.raw(raw)
        assert resp.startswith(b"HTTP/1.1 200 "), resp[:300]
        assert len(up.received) == before + 1


def test_header_limits(env):
    g, up = env
    before = len(up.received)
    big = b"GET /ucwa/x HTTP/1.1\r\n" + H + b"X-Big: " + b"a" * 70000 + b"\r\n\r\n"
    assert g.raw(big).startswith(b"HTTP/1.1 431 ")
    many = b"GET /ucwa/x HTTP/1.1\r\n" + H + b"".join(b"X-%d: y\r\n" % i for i in range(150)) + b"\r\n"
    assert g.raw(many).startswith(b"HTTP/1.1 431 ")
    long_target = b"GET /ucwa/" + b"a" * 9000 + b" HTTP/1.1\r\n" + H + b"\r\n"
    assert g.raw(long_target).startswith(b"HTTP/1.1 414 ")
    assert len(up.received) == before


def test_garbage_never_kills_the_gateway(env):
    import os

    g, up = env
    for i in range(50):
        resp = g.raw(os.urandom(200 + i * 37) + b"\r\n\r\n", read_timeout=2)
        assert resp[:12] in (b"HTTP/1.1 400", b"HTTP/1.1 505", b"HTTP/1.1 431"), resp[:100]
    assert g.raw(b"GET /ucwa/alive HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n").startswith(b"HTTP/1.1 200 ")


def test_slow_header_is_cut_off(loop_thread, tls_files, upstream):
    """Slowloris: a head that does not complete within header_read gets 408 and is closed."""
    g = start_gateway(loop_thread, *tls_files, upstream.port, timeouts={"header_read": 0.5})
    try:
        t = time.monotonic()
        resp = g.raw(b"GET /ucwa/x HTTP/1.1\r\nHost: a\r\nX-Slow: ", read_timeout=5)
        assert resp.startswith(b"HTTP/1.1 408 ")
        assert time.monotonic() - t < 2
    finally:
        g.stop()
