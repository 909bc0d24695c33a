"""The fast path (gateway/session.py): requests proxied inside protocol callbacks, and every way
it hands a request to the coroutine pipeline. Each test checks which path ran
(``Gateway.fast_requests``) as well as what the client and the upstream saw.

The upstream here is scripted at the byte level (what it answers is chosen by the request's
path), so interim responses, split bodies, stalls, dropped connections and malformed answers
can be produced on purpose; tests/support.py's h11 upstream covers well-formed traffic.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time

import pytest

from ..support import start_gateway

BODY = b'{"ok":true}'
OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%b" % (len(BODY), BODY)


class ScriptedUpstream:
    """Answers each request head by the first path segment after /meet/ (see ``_answer``);
    records (connection number, request head) of every request."""

    def __init__(self) -> None:
        self.heads: list[tuple[int, bytes]] = []
        self.connections = 0
        self.dropped_once = False
        self.server: asyncio.Server | None = None
        self.port = 0
        self.writers: list[asyncio.StreamWriter] = []
        self.tasks: set[asyncio.Task] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._conn, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for w in self.writers:
            w.close()
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        n = self.connections
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        self.writers.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.heads.append((n, head))
                if not await self._answer(head, writer):
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            self.tasks.discard(task)

    async def _answer(self, head: bytes, w: asyncio.StreamWriter) -> bool:
        target = head.split(b" ", 2)[1]
        case = target.split(b"/")[2].split(b"?")[0] if target.startswith(b"/meet/") else b"ok"
        if case == b"interim":
            w.write(
                b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\nHTTP/1.1 100 Continue\r\n\r\n" + OK
            )
        elif case == b"chunked":
            w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
        elif case == b"large":
            body = bytes(range(256)) * 4096  # 1 MiB
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        elif case == b"split":  # the body follows the head 50 ms later
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(BODY))
            await w.drain()
            await asyncio.sleep(0.05)
            w.write(BODY)
        elif case == b"head":
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n")
        elif case == b"nocontent":
            w.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        elif case == b"closedelimited":
            w.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end")
            await w.drain()
            return False
        elif case == b"drop-once" and not self.dropped_once:
            self.dropped_once = True  # a pooled connection the front end closed meanwhile
            return False
        elif case == b"stall":
            await asyncio.sleep(3600)
        elif case == b"garbage":
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxx")
        elif case == b"barelf":  # a head that never has CRLF CRLF, then silence
            w.write(b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok")
        elif case == b"barelf-late":  # CRLF lines, then one ending in a bare LF
            w.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\n\r\nok")
        elif case == b"barecr":
            w.write(b"HTTP/1.1 200 OK\r\nX: a\rContent-Length: 2\r\n")
        elif case == b"slow":
            await asyncio.sleep(0.3)
            w.write(OK)
        elif case == b"hop":  # hop-by-hop and Connection-named fields must not reach the client
            w.write(
                b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Secret\r\nKeep-Alive: timeout=5\r\n"
                b"X-Secret: 1\r\nX-Kept: 2\r\nContent-Length: 2\r\n\r\nok"
            )
        else:
            w.write(OK)
        await w.drain()
        return True


@pytest.fixture
def scripted(loop_thread):
    up = ScriptedUpstream()
    loop_thread.run(up.start())
    yield up
    loop_thread.run(up.stop())


@pytest.fixture(params=["tls", "plain"])
def env(request, loop_thread, tls_files, scripted):
    cert, key = tls_files if request.param == "tls" else (None, None)
    g = start_gateway(loop_thread, cert, key, scripted.port, timeouts={"upstream_read": 0.5})
    yield g, scripted
    g.stop()


class Client:
    """One raw keep-alive connection that reads responses one at a time (Content-Length or
    chunked framing, enough for these tests)."""

    def __init__(self, g) -> None:
        sock = socket.create_connection(("127.0.0.1", g.port), timeout=5)
        if g.cert is not None:
            sock = g.ssl_context().wrap_socket(sock, server_hostname="localhost")
        self.sock = sock
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def get(self, path: str, method: str = "GET") -> tuple[bytes, dict[bytes, bytes], bytes]:
        self.send(f"{method} {path} HTTP/1.1\r\nHost: gw\r\n\r\n".encode())
        return self.response(head_only=method == "HEAD")

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError(self.buf)
        self.buf += chunk

    def response(self, head_only: bool = False) -> tuple[bytes, dict[bytes, bytes], bytes]:
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.split(b"\r\n")
        status = lines[0]
        fields = {k.lower(): v.strip() for k, _, v in (line.partition(b":") for line in lines[1:])}
        body = b""
        if head_only or status.split()[1] in (b"204", b"304"):
            return status, fields, body
        if b"content-length" in fields:
            n = int(fields[b"content-length"])
            while len(self.buf) < n:
                self._fill()
            body, self.buf = self.buf[:n], self.buf[n:]
        else:
            assert fields.get(b"transfer-encoding") == b"chunked", head
            while True:
                while b"\r\n" not in self.buf:
                    self._fill()
                line, self.buf = self.buf.split(b"\r\n", 1)
                size = int(line, 16)
                while len(self.buf) < size + 2:
                    self._fill()
                body += self.buf[:size]
                self.buf = self.buf[size + 2 :]
                if size == 0:
                    break
        return status, fields, body

    def closed(self, timeout: float = 3.0) -> bool:
        """True when the server closes the connection within ``timeout`` (nothing else sent)."""
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(1) == b""
        except (ConnectionResetError, ssl.SSLError):
            return True
        except TimeoutError:
            return False

    def close(self) -> None:
        self.sock.close()


def test_keep_alive_requests_take_the_fast_path(env):
    g, up = env
    c = Client(g)
    try:
        for i in range(20):
            status, fields, body = c.get(f"/meet/ok?i={i}")
            assert status == b"HTTP/1.1 200 OK" and body == BODY
            assert fields[b"content-length"] == str(len(BODY)).encode()
    finally:
        c.close()
    # the first request connects upstream (the pipeline); the other 19 reuse that connection
    assert g.gateway.fast_requests == 19
    assert up.connections == 1
    assert [h.split(b" ", 2)[1] for _, h in up.heads] == [f"/meet/ok?i={i}".encode() for i in range(20)]
    # the fast path builds the same forwarded head as the pipeline
    last = up.heads[-1][1]
    assert b"\r\nX-Forwarded-For: 127.0.0.1\r\n" in last
    assert b"\r\nHost: gw\r\n" in last and b"\r\nX-Forwarded-Host: gw\r\n" in last


@pytest.mark.parametrize(
    "case,expect_body",
    [
        ("interim", BODY),  # 103 and 100 dropped, then the 200: all in callbacks
        ("hop", b"ok"),
        ("chunked", b"hello world"),  # these three are streamed by the pipeline's _deliver
        ("large", bytes(range(256)) * 4096),
        ("split", BODY),
    ],
)
def test_responses_on_a_warm_connection(env, case, expect_body):
    g, up = env
    c = Client(g)
    try:
        assert c.get("/meet/ok")[2] == BODY  # warms the pool
        before = g.gateway.fast_requests
        status, fields, body = c.get(f"/meet/{case}")
        assert status == b"HTTP/1.1 200 OK"
        assert body == expect_body
        if case == "hop":
            assert b"x-secret" not in fields and b"keep-alive" not in fields
            assert fields[b"x-kept"] == b"2"
        # the request itself was sent by the fast path; only the response went to the pipeline
        assert g.gateway.fast_requests == before + 1
        # and the connection goes on, on the fast path again
        assert c.get("/meet/ok")[2] == BODY
        assert g.gateway.fast_requests == before + 2
    finally:
        c.close()
    assert up.connections == 1, "the upstream connection was reused throughout"


def test_head_204_and_close_delimited(env):
    g, up = env
    c = Client(g)
    try:
        c.get("/meet/ok")
        status, fields, _ = c.get("/meet/head", method="HEAD")
        assert status == b"HTTP/1.1 200 OK" and fields[b"content-length"] == b"1234"
        status, fields, _ = c.get("/meet/nocontent")
        assert status == b"HTTP/1.1 204 No Content" and b"content-length" not in fields
        status, fields, body = c.get("/meet/closedelimited")
        assert body == b"until the end" and fields[b"transfer-encoding"] == b"chunked"
        assert c.get("/meet/ok")[2] == BODY  # on a new upstream connection
    finally:
        c.close()
    assert up.connections == 2


def test_pooled_connection_closed_under_the_request_is_retried(env):
    g, up = env
    c = Client(g)
    try:
        c.get("/meet/ok")
        status, _, body = c.get("/meet/drop-once")
        assert status == b"HTTP/1.1 200 OK" and body == BODY
        assert c.get("/meet/ok")[2] == BODY
    finally:
        c.close()
    targets = [(n, h.split(b" ", 2)[1]) for n, h in up.heads]
    assert targets[:3] == [(1, b"/meet/ok"), (1, b"/meet/drop-once"), (2, b"/meet/drop-once")]


def test_upstream_silence_is_504_and_the_client_connection_stays(env, caplog):
    g, up = env
    c = Client(g)
    try:
        c.get("/meet/ok")
        t = time.monotonic()
        with caplog.at_level(logging.ERROR, logger="ucgate.gateway"):
            status, _, body = c.get("/meet/stall")
        took = time.monotonic() - t
        assert status == b"HTTP/1.1 504 Gateway Timeout" and body == b"upstream unavailable\n"
        assert 0.4 < took < 2.5
        assert any("upstream-read-timeout" in r.getMessage() for r in caplog.records)
        assert c.get("/meet/ok")[2] == BODY  # a new upstream connection; the stalled one is closed
    finally:
        c.close()
    assert up.connections == 2


def test_malformed_upstream_answer_is_502(env, caplog):
    g, up = env
    c = Client(g)
    try:
        c.get("/meet/ok")
        with caplog.at_level(logging.ERROR, logger="ucgate.gateway"):
            status, _, _ = c.get("/meet/garbage")
        assert status == b"HTTP/1.1 502 Bad Gateway"
        assert any("bad-upstream" in r.getMessage() for r in caplog.records)
        assert c.get("/meet/ok")[2] == BODY
    finally:
        c.close()
    assert up.connections == 2  # the desynchronised connection was not pooled again


@pytest.mark.parametrize("case", ["barelf", "barelf-late", "barecr"])
@pytest.mark.parametrize("warm", [True, False], ids=["fast-path", "pipeline"])
def test_upstream_head_with_bare_lf_is_502_at_once(loop_thread, scripted, caplog, case, warm):
    """Issue 13 item 4: an answer whose lines end in a bare LF never has CRLF CRLF; it is a 502
    as soon as the bare LF arrives, not a 504 after upstream_read (30 s here)."""
    g = start_gateway(loop_thread, None, None, scripted.port, timeouts={"upstream_read": 30})
    try:
        c = Client(g)
        try:
            if warm:
                c.get("/meet/ok")  # a pooled connection: the fast path reads the answer
            before = g.gateway.fast_requests
            t = time.monotonic()
            with caplog.at_level(logging.ERROR, logger="ucgate.gateway"):
                status, _, body = c.get(f"/meet/{case}")
            assert status == b"HTTP/1.1 502 Bad Gateway" and body == b"upstream unavailable\n"
            assert time.monotonic() - t < 3
            assert g.gateway.fast_requests == before + (1 if warm else 0)
            assert any(
                "bad-upstream-response" in r.getMessage() and "bare-cr-or-lf" in r.getMessage() for r in caplog.records
            )
            assert c.get("/meet/ok")[2] == BODY  # the client connection goes on
        finally:
            c.close()
    finally:
        g.stop()


def test_pipelined_requests_are_answered_in_order(env):
    g, up = env
    c = Client(g)
    try:
        c.get("/meet/ok")
        # fast, pipeline (protected: 401), fast with a chunked answer, refused (404), fast
        c.send(
            b"GET /meet/ok?n=1 HTTP/1.1\r\nHost: gw\r\n\r\n"
            b"GET /ucwa/oauth/v1/applications HTTP/1.1\r\nHost: gw\r\n\r\n"
            b"GET /meet/chunked HTTP/1.1\r\nHost: gw\r\n\r\n"
            b"GET /owa/ HTTP/1.1\r\nHost: gw\r\n\r\n"
            b"GET /meet/ok?n=5 HTTP/1.1\r\nHost: gw\r\n\r\n"
        )
        got = [c.response() for _ in range(5)]
    finally:
        c.close()
    assert [s for s, _, _ in got] == [
        b"HTTP/1.1 200 OK",
        b"HTTP/1.1 401 Unauthorized",
        b"HTTP/1.1 200 OK",
        b"HTTP/1.1 404 Not Found",
        b"HTTP/1.1 200 OK",
    ]
    assert got[2][2] == b"hello world"
    assert [h.split(b" ", 2)[1] for _, h in up.heads[1:]] == [b"/meet/ok?n=1", b"/meet/chunked", b"/meet/ok?n=5"]


def test_client_gone_while_its_request_is_upstream(env, loop_thread):
    g, up = env
    c = Client(g)
    c.get("/meet/ok")
    c.send(b"GET /meet/slow HTTP/1.1\r\nHost: gw\r\n\r\n")
    time.sleep(0.05)
    c.sock.close()  # before the answer (0.3 s)
    deadline = time.monotonic() + 3
    while g.gateway.connections and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not g.gateway.connections
    time.sleep(0.4)
    # a new client gets the answer to its own request, never the one left behind
    c2 = Client(g)
    try:
        assert c2.get("/meet/ok?after=1")[2] == BODY
    finally:
        c2.close()
    n, head = up.heads[-1]
    assert head.startswith(b"GET /meet/ok?after=1 ")
    if g.cert is not None:
        # TLS has no half-close: the gateway saw the connection end, dropped the upstream
        # exchange in flight (its answer unread) and closed that upstream connection
        assert n == 2
    # plain TCP: the client's FIN may be a half-close, so the answer was still read in full
    # and written (then the connection closed); the upstream connection stayed usable


def test_head_arriving_byte_by_byte(env):
    g, _ = env
    c = Client(g)
    try:
        c.get("/meet/ok")
        for b in b"GET /meet/ok?slow=1 HTTP/1.1\r\nHost: gw\r\n\r\n":
            c.send(bytes([b]))
        status, _, body = c.response()
        assert status == b"HTTP/1.1 200 OK" and body == BODY
    finally:
        c.close()


def test_oversized_head_on_a_keep_alive_connection_is_431(env):
    g, up = env
    c = Client(g)
    try:
        c.get("/meet/ok")
        c.send(b"GET /meet/ok HTTP/1.1\r\nHost: gw\r\nX-Big: " + b"a" * (70 * 1024))
        status, _, _ = c.response()
        assert status == b"HTTP/1.1 431 Request Header Fields Too Large"
        assert c.closed()
    finally:
        c.close()
    assert len(up.heads) == 1


def test_idle_timeout_closes_between_requests(loop_thread, scripted):
    g = start_gateway(loop_thread, None, None, scripted.port, timeouts={"idle": 0.3})
    try:
        c = Client(g)
        try:
            c.get("/meet/ok")
            c.get("/meet/ok")
            t = time.monotonic()
            assert c.closed(timeout=3)  # closed without a 408: the client was between requests
            assert 0.2 < time.monotonic() - t < 2
        finally:
            c.close()
    finally:
        g.stop()


def test_half_closed_plain_client_still_gets_its_answer(loop_thread, scripted):
    g = start_gateway(loop_thread, None, None, scripted.port)
    try:
        c = Client(g)
        try:
            c.get("/meet/ok")
            c.send(b"GET /meet/slow HTTP/1.1\r\nHost: gw\r\n\r\n")
            c.sock.shutdown(socket.SHUT_WR)
            status, _, body = c.response()
            assert status == b"HTTP/1.1 200 OK" and body == BODY
            assert c.closed()
        finally:
            c.close()
        assert g.gateway.fast_requests == 1
    finally:
        g.stop()


def test_access_log_names_fast_requests(env, caplog):
    g, _ = env
    c = Client(g)
    try:
        c.get("/meet/ok")
        with caplog.at_level(logging.INFO, logger="ucgate.access"):
            c.get("/meet/ok?logged=1")
    finally:
        c.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "ucgate.access"]
    assert len(lines) == 1
    assert "path=/meet/ok service=meet user=-" in lines[0]


def test_our_own_answers_to_head_have_no_body(env):
    """A refusal of a HEAD request (401, 404, 405 inline; 502 from the upstream's failure)
    keeps the connection and sends the Content-Length the body would have but no body: body
    bytes after a HEAD answer would be read as the next response."""
    g, up = env
    c = Client(g)
    try:
        for path, status, length in [
            ("/ucwa/oauth/v1/applications", b"HTTP/1.1 401 Unauthorized", b"24"),  # authentication required\n
            ("/owa/", b"HTTP/1.1 404 Not Found", b"10"),  # not found\n
        ]:
            got, fields, _ = c.get(path, method="HEAD")
            assert got == status and fields[b"content-length"] == length, (got, fields)
            # the very next bytes are the next answer's: nothing was left of a body
            got, _, body = c.get("/meet/ok")
            assert got == b"HTTP/1.1 200 OK" and body == BODY
        assert not c.buf
    finally:
        c.close()
