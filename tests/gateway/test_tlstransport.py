"""TLSTransport and start_tls_server against real clients on loopback, on uvloop and asyncio.

Every test runs its server on an event loop in a thread and talks to it with blocking stdlib
``ssl`` sockets (or curl). The loop's exception handler records what reaches it: nothing may
(``no_loop_errors``), and no log line may mention a bad file descriptor.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import logging
import random
import select
import shutil
import socket
import ssl
import struct
import subprocess
import threading
import time
from typing import ClassVar

import pytest
import uvloop

from ucgate.gateway import tlstransport
from ucgate.gateway.tls import server_context
from ucgate.gateway.tlstransport import TLSTransport, start_tls_server


# --- an event loop per kind, in a thread --------------------------------------------------
class Loop:
    """A loop running in a daemon thread; records what reaches its exception handler."""

    def __init__(self, factory) -> None:
        self.loop = factory()
        self.errors: list[dict] = []
        self.loop.set_exception_handler(lambda loop, ctx: self.errors.append(ctx))
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float = 10):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn, *args, timeout: float = 5):
        """Run ``fn(*args)`` on the loop thread and return its result."""

        async def _call():
            return fn(*args)

        return self.run(_call(), timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture(scope="module", params=["uvloop", "asyncio"])
def lp(request):
    lt = Loop(uvloop.new_event_loop if request.param == "uvloop" else asyncio.new_event_loop)
    yield lt
    lt.close()


@pytest.fixture(autouse=True)
def no_loop_errors(request, caplog):
    caplog.set_level(logging.DEBUG, logger="ucgate.gateway.tlstransport")
    lt = request.getfixturevalue("lp") if "lp" in request.fixturenames else None
    if lt is not None:
        lt.errors.clear()
    yield
    if lt is not None:
        time.sleep(0.05)  # let pending callbacks run
        assert lt.errors == []
    bad = [
        r.getMessage()
        for r in caplog.records
        if "bad file descriptor" in r.getMessage().lower() or "EBADF" in r.getMessage()
    ]
    assert bad == []


@pytest.fixture(scope="module")
def server_ctx(tls_files):
    return server_context(*tls_files)  # TLS 1.2+, ALPN http/1.1


@pytest.fixture(scope="module")
def client_ctx(tls_files):
    return ssl.create_default_context(cafile=str(tls_files[0]))


# --- protocols ----------------------------------------------------------------------------
class Recorder(asyncio.Protocol):
    """Records every callback (thread-safe enough: appends from the loop thread only)."""

    instances: ClassVar[list[Recorder]] = []

    def __init__(self) -> None:
        self.transport: TLSTransport | None = None
        self.events: list[str] = []
        self.data = bytearray()
        self.chunks: list[int] = []
        self.lost_exc: BaseException | None = None
        self.lost = threading.Event()
        self.got_data = threading.Event()
        Recorder.instances.append(self)

    def connection_made(self, transport):
        self.transport = transport
        self.events.append("made")

    def data_received(self, data):
        assert type(data) is bytes
        self.events.append("data")
        self.chunks.append(len(data))
        self.data += data
        self.got_data.set()

    def eof_received(self):
        self.events.append("eof")
        return True  # asks to stay half-open: TLS must close anyway

    def pause_writing(self):
        self.events.append("pause_writing")

    def resume_writing(self):
        self.events.append("resume_writing")

    def connection_lost(self, exc):
        self.events.append("lost")
        self.lost_exc = exc
        self.lost.set()

    def wait_lost(self, timeout: float = 5) -> None:
        assert self.lost.wait(timeout), self.events
        time.sleep(0.02)  # a second connection_lost would come now
        assert self.events.count("lost") == 1, self.events


class Echo(Recorder):
    def data_received(self, data):
        super().data_received(data)
        self.transport.write(data)


def serve(lp: Loop, ctx, factory=Echo, **kw):
    async def _start():
        return await start_tls_server(lp.loop, factory, "127.0.0.1", 0, ctx, **kw)

    srv = lp.run(_start())
    return srv, srv.sockets[0].getsockname()[1]


def stop(lp: Loop, srv) -> None:
    lp.call(srv.close)
    lp.run(srv.wait_closed())


def connect(port: int, ctx: ssl.SSLContext, timeout: float = 5) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    # ragged EOFs raise: a clean close_notify reads as b""
    return ctx.wrap_socket(raw, server_hostname="localhost", suppress_ragged_eofs=False)


def recv_exactly(s: ssl.SSLSocket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = s.recv(min(65536, n - len(out)))
        assert chunk, f"EOF after {len(out)} of {n} bytes"
        out += chunk
    return bytes(out)


def wait_for(pred, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


def last_protocol(before: int) -> Recorder:
    wait_for(lambda: len(Recorder.instances) > before)
    return Recorder.instances[-1]


# --- what the design relies on ------------------------------------------------------------
def _blocked_pair(server_ctx, client_ctx, n: int):
    """A handshaken (server, client) pair on a socketpair, the server non-blocking, after an
    ``n``-byte SSL_write that got SSLWantWriteError."""
    a, b = socket.socketpair()
    b.settimeout(5)
    srv = server_ctx.wrap_socket(a, server_side=True, do_handshake_on_connect=False)
    box = {}
    t = threading.Thread(target=lambda: box.setdefault("c", client_ctx.wrap_socket(b, server_hostname="localhost")))
    t.start()
    srv.do_handshake()
    t.join()
    srv.setblocking(False)
    with pytest.raises(ssl.SSLWantWriteError):
        srv._sslobj.write(b"a" * n)
    return srv, box["c"]


def test_openssl_write_retry_needs_the_same_bytes(server_ctx, client_ctx):
    """After SSLWantWriteError, OpenSSL has encrypted part of the buffer: a shorter retry is a
    fatal error, a same-length retry with other bytes is silently mixed in, and a retry
    completes with the full length (CPython sets no SSL_MODE_ENABLE_PARTIAL_WRITE)."""
    n = 1_000_000
    srv, cli = _blocked_pair(server_ctx, client_ctx, n)
    with pytest.raises(ssl.SSLError, match="BAD_LENGTH"):
        srv._sslobj.write(b"a" * 10)
    srv.close()
    cli.close()

    srv, cli = _blocked_pair(server_ctx, client_ctx, n)
    got = bytearray()

    def read_all():
        while len(got) < n and (chunk := cli.recv(65536)):
            got.extend(chunk)

    reader = threading.Thread(target=read_all, daemon=True)
    reader.start()
    while True:
        select.select([], [srv], [], 5)
        try:
            assert srv._sslobj.write(b"b" * n) == n  # other bytes, same length: accepted!
            break
        except ssl.SSLWantWriteError:
            pass
    reader.join(5)
    assert len(got) == n and 0 < got.count(b"a") < n and got.count(b"a") + got.count(b"b") == n
    srv.close()
    cli.close()


def test_the_loop_polls_level_triggered(lp):
    """A reader that consumes one byte per callback is called again while bytes remain: the
    transport may leave further TLS records in the kernel after one SSL_read."""
    a, b = socket.socketpair()
    a.setblocking(False)
    calls = []
    done = threading.Event()

    def on_readable():
        calls.append(a.recv(1))
        if len(calls) == 10:
            lp.loop.remove_reader(a.fileno())
            done.set()

    b.sendall(b"0123456789")
    lp.call(lp.loop.add_reader, a.fileno(), on_readable)
    assert done.wait(2), calls
    assert b"".join(calls) == b"0123456789"
    a.close()
    b.close()


# --- data in, data out --------------------------------------------------------------------
def test_keep_alive_echo_and_extra_info(lp, server_ctx, client_ctx):
    srv, port = serve(lp, server_ctx)
    before = len(Recorder.instances)
    with connect(port, client_ctx) as c:
        p = last_protocol(before)
        rnd = random.Random(1)
        for i in range(300):
            msg = rnd.randbytes(rnd.choice([1, 17, 300, 5000, 20000]))
            c.sendall(msg)
            assert recv_exactly(c, len(msg)) == msg, i
        t = p.transport
        info = lp.call(
            lambda: (
                {
                    k: t.get_extra_info(k)
                    for k in (
                        "peername",
                        "sockname",
                        "sslcontext",
                        "ssl_object",
                        "socket",
                        "peercert",
                        "cipher",
                        "compression",
                    )
                }
                | {"nope": t.get_extra_info("nope", 42)}
            )
        )
        assert info["peername"] == c.getsockname()
        assert info["sockname"] == ("127.0.0.1", port)
        assert info["sslcontext"] is server_ctx
        assert info["ssl_object"].version() == c.version() == "TLSv1.3"
        assert info["ssl_object"].selected_alpn_protocol() is None  # the client offered none
        assert info["socket"] is info["ssl_object"]
        assert info["peercert"] is None  # no client certificate
        assert info["cipher"][0] == c.cipher()[0]
        assert info["compression"] is None and info["nope"] == 42
        assert lp.call(t.is_reading) and not lp.call(t.is_closing)
        assert lp.call(t.get_write_buffer_size) == 0
        c.unwrap()  # close_notify: the server answers with its own
    p.wait_lost()
    assert p.events[0] == "made" and p.events[-2:] == ["eof", "lost"]
    assert p.lost_exc is None
    stop(lp, srv)


def test_curl_keep_alive(lp, server_ctx, tls_files):
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")

    class Http(Recorder):
        def data_received(self, data):
            super().data_received(data)
            while b"\r\n\r\n" in self.data:
                head, _, rest = bytes(self.data).partition(b"\r\n\r\n")
                self.data[:] = rest
                body = head.split(b" ")[1]
                self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))

    srv, port = serve(lp, server_ctx, Http)
    urls = [f"https://localhost:{port}/r{i}" for i in range(5)]
    out = subprocess.run(
        ["curl", "-sS", "-v", "--cacert", str(tls_files[0]), *urls],
        capture_output=True,
        timeout=10,
        text=True,
        check=False,
    )
    assert out.stdout == "".join(f"/r{i}" for i in range(5)), out.stderr
    assert out.stderr.count("Re-using existing connection") == 4  # one TLS connection
    assert "ALPN: server accepted http/1.1" in out.stderr
    stop(lp, srv)


def test_one_byte_records(lp, server_ctx, client_ctx):
    srv, port = serve(lp, server_ctx)
    msg = bytes(range(256)) + b"end"
    with connect(port, client_ctx) as c:
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(len(msg)):
            c.sendall(msg[i : i + 1])  # one TLS record each
        assert recv_exactly(c, len(msg)) == msg
    stop(lp, srv)


def _memory_bio_client(port: int, ctx: ssl.SSLContext):
    """A client whose TLS records we assemble ourselves, to send several in one segment."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname="localhost")
    while True:
        try:
            obj.do_handshake()
            break
        except ssl.SSLWantReadError:
            if out.pending:
                sock.sendall(out.read())
            data = sock.recv(65536)
            assert data
            inc.write(data)
    if out.pending:
        sock.sendall(out.read())
    return sock, obj, inc, out


@pytest.mark.parametrize("sizes", [[40] * 50, [16384] * 10], ids=["50-small", "10-full"])
def test_many_records_in_one_segment(lp, server_ctx, client_ctx, sizes):
    """All records of one send arrive, though one readiness event covers them all."""
    srv, port = serve(lp, server_ctx, Recorder)
    before = len(Recorder.instances)
    sock, obj, _, out = _memory_bio_client(port, client_ctx)
    p = last_protocol(before)
    rnd = random.Random(2)
    payload = rnd.randbytes(sum(sizes))
    off = 0
    for n in sizes:
        obj.write(payload[off : off + n])  # one record per write
        off += n
    wire = out.read()
    assert len(wire) > sum(sizes) + 20 * len(sizes)  # several records' framing
    sock.sendall(wire)
    wait_for(lambda: len(p.data) == len(payload))
    assert bytes(p.data) == payload
    sock.close()
    p.wait_lost()
    stop(lp, srv)


def test_plaintext_pending_in_openssl_is_read(lp, server_ctx, client_ctx, monkeypatch):
    """With reads smaller than a record, the rest of the record waits decrypted inside OpenSSL,
    where epoll cannot see it: the transport reads on while a read fills the buffer (OpenSSL
    returns one record at most, so that is when ``pending()`` is non-zero), and after
    resume_reading (call_soon), although no byte is left in the kernel."""
    monkeypatch.setattr(tlstransport, "READ_SIZE", 1000)

    class PauseOnce(Recorder):
        def data_received(self, data):
            super().data_received(data)
            if len(self.chunks) == 3:
                self.transport.pause_reading()
                self.events.append("paused")

    srv, port = serve(lp, server_ctx, PauseOnce)
    before = len(Recorder.instances)
    payload = random.Random(3).randbytes(16000)
    with connect(port, client_ctx) as c:
        p = last_protocol(before)
        c.sendall(payload)  # one record
        wait_for(lambda: "paused" in p.events)
        time.sleep(0.1)
        assert len(p.data) == 3000 and p.chunks == [1000] * 3
        lp.call(p.transport.resume_reading)
        wait_for(lambda: len(p.data) == len(payload))
        assert bytes(p.data) == payload and max(p.chunks) == 1000
    stop(lp, srv)


def test_pause_and_resume_reading(lp, server_ctx, client_ctx):
    srv, port = serve(lp, server_ctx, Recorder)
    before = len(Recorder.instances)
    with connect(port, client_ctx) as c:
        p = last_protocol(before)
        c.sendall(b"first")
        wait_for(lambda: bytes(p.data) == b"first")
        lp.call(p.transport.pause_reading)
        assert not lp.call(p.transport.is_reading)
        c.sendall(b"second")
        time.sleep(0.15)
        assert bytes(p.data) == b"first"
        lp.call(p.transport.resume_reading)
        assert lp.call(p.transport.is_reading)
        wait_for(lambda: bytes(p.data) == b"firstsecond")
    stop(lp, srv)


def test_a_read_that_wants_to_write_is_retried_when_writable(lp, server_ctx, client_ctx):
    """SSL_read may need to send (a TLS 1.3 KeyUpdate answer): the transport waits for
    writability, not readability, and then repeats the read."""
    srv, port = serve(lp, server_ctx, Echo)
    before = len(Recorder.instances)
    with connect(port, client_ctx) as c:
        t = last_protocol(before).transport
        real, calls = t._ssl_read, []

        def wants_write_once(n, buf):
            calls.append(n)
            if len(calls) == 1:
                raise ssl.SSLWantWriteError()
            return real(n, buf)

        lp.call(setattr, t, "_ssl_read", wants_write_once)
        c.sendall(b"abc")
        assert recv_exactly(c, 3) == b"abc"
        assert len(calls) >= 2
        assert lp.call(lambda: (t._reader_on, t._writer_on, t._read_wants_write)) == (True, False, False)
        c.sendall(b"more")
        assert recv_exactly(c, 4) == b"more"
    stop(lp, srv)


def test_a_write_that_wants_to_read_is_retried_when_readable(lp, server_ctx, client_ctx):
    """SSL_write may need the peer's handshake data (TLS 1.2 renegotiation, refused by our
    contexts): the same bytes are written again once the socket is readable."""
    srv, port = serve(lp, server_ctx, Recorder)
    before = len(Recorder.instances)
    with connect(port, client_ctx) as c:
        p = last_protocol(before)
        t = p.transport
        real, calls = t._ssl_write, []

        def wants_read_once(data):
            calls.append(bytes(data))
            if len(calls) == 1:
                raise ssl.SSLWantReadError()
            return real(data)

        lp.call(setattr, t, "_ssl_write", wants_read_once)
        lp.call(t.write, bytearray(b"hello"))
        lp.call(t.write, b" world")  # queued behind
        assert lp.call(t.get_write_buffer_size) == 11
        c.settimeout(0.2)
        with pytest.raises(TimeoutError):
            c.recv(100)
        c.settimeout(5)
        c.sendall(b"x")  # readable: the write is retried, then the read done
        assert recv_exactly(c, 11) == b"hello world"
        assert calls[:2] == [b"hello", b"hello"]
        wait_for(lambda: bytes(p.data) == b"x")
        assert lp.call(t.get_write_buffer_size) == 0
    stop(lp, srv)


# --- writing ------------------------------------------------------------------------------
def _slow_read_all(c: ssl.SSLSocket, delay: float) -> tuple[bytes, int]:
    """Read until close_notify (a ragged EOF would raise), after ``delay``."""
    time.sleep(delay)
    h, n = hashlib.sha256(), 0
    while chunk := c.recv(65536):
        h.update(chunk)
        n += len(chunk)
    return h.digest(), n


@pytest.mark.parametrize("mode", ["one-write", "drain-loop"])
def test_large_write_to_a_slow_reader(lp, server_ctx, client_ctx, mode):
    """20 MB to a client that starts reading late: the protocol is paused above the high-water
    mark and resumed at the low one, close() flushes everything and ends with close_notify."""
    total = 20 * 1024 * 1024
    block = random.Random(4).randbytes(1 << 20)
    blocks = [block[i:] + block[:i] for i in range(20)]  # every MiB different
    expected = hashlib.sha256(b"".join(blocks)).digest()

    class Producer(Recorder):
        paused = False
        at_pause: ClassVar[list[int]] = []
        at_resume: ClassVar[list[int]] = []

        def data_received(self, data):
            super().data_received(data)
            self.left = list(blocks)
            if mode == "one-write":
                self.transport.write(b"".join(self.left))
                self.queued = self.transport.get_write_buffer_size()
                self.transport.close()
                self.transport.write(b"ignored")  # after close: dropped
            else:
                self.produce()

        def produce(self):
            while self.left and not self.paused:
                self.transport.write(bytearray(self.left.pop(0)))  # mutable: must be copied
            if not self.left:
                self.transport.close()

        def pause_writing(self):
            super().pause_writing()
            self.paused = True
            self.at_pause.append(self.transport.get_write_buffer_size())

        def resume_writing(self):
            super().resume_writing()
            self.paused = False
            self.at_resume.append(self.transport.get_write_buffer_size())
            if mode == "drain-loop":
                self.produce()

    srv, port = serve(lp, server_ctx, Producer)
    before = len(Recorder.instances)
    with connect(port, client_ctx) as c:
        c.sendall(b"go")
        digest, n = _slow_read_all(c, 0.3)
    p = last_protocol(before)
    p.wait_lost()
    assert n == total and digest == expected
    assert p.lost_exc is None
    pauses, resumes = p.events.count("pause_writing"), p.events.count("resume_writing")
    assert pauses >= 1 and resumes == pauses
    assert p.events.index("pause_writing") < p.events.index("resume_writing")
    if mode == "one-write":
        assert pauses == 1 and p.queued > total // 2  # most of it was queued
    else:
        assert pauses >= 2  # 20 blocks of 1 MiB, each over the high-water mark
    assert all(s > tlstransport.HIGH_WATER for s in p.at_pause)
    assert all(s <= tlstransport.LOW_WATER for s in p.at_resume)
    stop(lp, srv)


def test_write_buffer_limits(lp, server_ctx, client_ctx):
    srv, port = serve(lp, server_ctx, Recorder)
    before = len(Recorder.instances)
    with connect(port, client_ctx) as c:
        t = last_protocol(before).transport
        assert lp.call(t.get_write_buffer_limits) == (16384, 65536)
        lp.call(t.set_write_buffer_limits, 1000)
        assert lp.call(t.get_write_buffer_limits) == (250, 1000)
        lp.call(t.set_write_buffer_limits, None, 100)
        assert lp.call(t.get_write_buffer_limits) == (100, 400)
        with pytest.raises(ValueError):
            lp.call(t.set_write_buffer_limits, 10, 20)
        assert lp.call(t.can_write_eof) is False
        with pytest.raises(NotImplementedError):
            lp.call(t.write_eof)
        with pytest.raises(TypeError):
            lp.call(t.write, "text")
        lp.call(t.writelines, [b"a", bytearray(b"b"), memoryview(b"c")])
        assert recv_exactly(c, 3) == b"abc"
    stop(lp, srv)


def test_close_flushes_then_sends_close_notify(lp, server_ctx, client_ctx):
    class Answer(Recorder):
        def data_received(self, data):
            super().data_received(data)
            self.transport.write(b"bye " * 1000)
            self.transport.close()
            self.transport.close()  # idempotent
            assert self.transport.is_closing() and not self.transport.is_reading()

    srv, port = serve(lp, server_ctx, Answer)
    before = len(Recorder.instances)
    with connect(port, client_ctx) as c:
        c.sendall(b"x")
        assert recv_exactly(c, 4000) == b"bye " * 1000
        assert c.recv(10) == b""  # close_notify (a bare FIN would raise SSLEOFError)
    p = last_protocol(before)
    p.wait_lost()
    assert p.lost_exc is None and "eof" not in p.events
    stop(lp, srv)


def test_close_gives_up_on_a_peer_that_does_not_read(lp, server_ctx, client_ctx):
    srv, port = serve(lp, server_ctx, Recorder, close_timeout=0.3)
    before = len(Recorder.instances)
    with connect(port, client_ctx):
        p = last_protocol(before)
        lp.call(p.transport.write, b"z" * (8 << 20))
        t0 = time.monotonic()
        lp.call(p.transport.close)
        p.wait_lost()
        assert 0.25 < time.monotonic() - t0 < 2
        assert isinstance(p.lost_exc, TimeoutError)
    stop(lp, srv)


def test_abort_drops_queued_data(lp, server_ctx, client_ctx):
    class Abort(Recorder):
        def data_received(self, data):
            super().data_received(data)
            self.transport.write(b"q" * (5 << 20))
            self.queued = self.transport.get_write_buffer_size()
            self.transport.abort()
            self.after = self.transport.get_write_buffer_size()
            self.transport.write(b"ignored")
            self.transport.abort()
            self.transport.close()

    srv, port = serve(lp, server_ctx, Abort)
    before = len(Recorder.instances)
    with connect(port, client_ctx) as c:
        c.sendall(b"x")
        p = last_protocol(before)
        p.wait_lost()
        got = 0
        with pytest.raises((ssl.SSLEOFError, ConnectionResetError)):  # no close_notify
            while chunk := c.recv(65536):
                got += len(chunk)
            raise AssertionError("clean close_notify after abort()")
    assert p.queued > 0 and p.after == 0 and got < 5 << 20
    assert p.lost_exc is None and p.events.count("lost") == 1
    stop(lp, srv)


# --- connection_lost, exactly once, whoever ends it ----------------------------------------
@pytest.mark.parametrize("how", ["fin", "rst", "close_notify"])
def test_client_goes_away(lp, server_ctx, client_ctx, how):
    srv, port = serve(lp, server_ctx, Recorder)
    before = len(Recorder.instances)
    c = connect(port, client_ctx)
    c.sendall(b"hello")
    p = last_protocol(before)
    wait_for(lambda: p.got_data.is_set())
    if how == "rst":
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.close()
    elif how == "fin":
        c.close()  # no close_notify: OpenSSL's unexpected EOF, still an EOF
    else:
        c.unwrap()
        c.close()
    p.wait_lost()
    if how == "rst":
        assert p.events[-1] == "lost" and isinstance(p.lost_exc, (ConnectionResetError, ssl.SSLError, type(None)))
    else:
        assert p.events[-2:] == ["eof", "lost"] and p.lost_exc is None
    assert lp.call(p.transport.is_closing)
    stop(lp, srv)


def test_protocol_errors_abort_the_connection(lp, server_ctx, client_ctx, caplog):
    class Broken(Recorder):
        def data_received(self, data):
            super().data_received(data)
            raise RuntimeError("bug in the protocol")

    srv, port = serve(lp, server_ctx, Broken)
    before = len(Recorder.instances)
    with connect(port, client_ctx) as c:
        c.sendall(b"x")
        p = last_protocol(before)
        p.wait_lost()
        assert isinstance(p.lost_exc, RuntimeError)
        with pytest.raises((ssl.SSLEOFError, ConnectionResetError)):
            c.recv(10)
    assert any("data_received() failed" in r.getMessage() and r.levelno == logging.ERROR for r in caplog.records)
    stop(lp, srv)


# --- handshakes that never become connections ---------------------------------------------
def test_silent_client_is_closed_after_the_handshake_timeout(lp, server_ctx):
    made = []
    srv, port = serve(lp, server_ctx, lambda: made.append(1) or Recorder(), handshake_timeout=0.3)
    with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
        t0 = time.monotonic()
        assert s.recv(10) == b""
        assert 0.25 < time.monotonic() - t0 < 2
    assert made == [] and lp.call(lambda: len(srv._handshakes)) == 0
    stop(lp, srv)


def _partial_client_hello(port: int, ctx: ssl.SSLContext) -> bytes:
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return out.read()


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
def test_bad_clients_never_reach_a_protocol(lp, server_ctx, client_ctx, caplog):
    made = []
    srv, port = serve(lp, server_ctx, lambda: made.append(1) or Echo(), handshake_timeout=2)
    hello = _partial_client_hello(port, client_ctx)

    # plain HTTP instead of a ClientHello
    with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        try:  # nothing or a TLS alert; a reset when the rest of the request was left unread
            assert s.recv(100)[:1] in (b"", b"\x15")
        except ConnectionResetError:
            pass
    # a TLS 1.1-only client: the server requires 1.2
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.check_hostname, old.verify_mode = False, ssl.CERT_NONE
    old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_1
    old.set_ciphers("DEFAULT:@SECLEVEL=0")
    with pytest.raises(ssl.SSLError), socket.create_connection(("127.0.0.1", port), timeout=3) as s:
        old.wrap_socket(s)
    # half a ClientHello, then FIN; the whole ClientHello, then FIN; then RST
    for data, rst in ((hello[:20], False), (hello, False), (hello, True)):
        s = socket.create_connection(("127.0.0.1", port), timeout=3)
        s.sendall(data)
        time.sleep(0.05)
        if rst:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
    wait_for(lambda: lp.call(lambda: len(srv._handshakes)) == 0)
    assert made == []
    failures = [r for r in caplog.records if "handshake" in r.getMessage()]
    assert len(failures) == 5 and all(r.levelno == logging.DEBUG for r in failures)
    reasons = " ".join(r.getMessage() for r in failures)
    assert "HTTP_REQUEST" in reasons and "UNSUPPORTED_PROTOCOL" in reasons  # 1.1 reached us
    assert not any(r.levelno >= logging.WARNING for r in caplog.records if r.name.startswith("ucgate"))
    # and the server still serves
    with connect(port, client_ctx) as c:
        c.sendall(b"ok?")
        assert recv_exactly(c, 3) == b"ok?"
    assert made == [1]
    stop(lp, srv)


# --- the listener -------------------------------------------------------------------------
def test_server_close(lp, server_ctx, client_ctx):
    srv, port = serve(lp, server_ctx, Echo, handshake_timeout=30)
    before = len(Recorder.instances)
    live = connect(port, client_ctx)
    p = last_protocol(before)
    silent = socket.create_connection(("127.0.0.1", port), timeout=3)
    wait_for(lambda: lp.call(lambda: len(srv._handshakes)) == 1)
    assert lp.call(srv.is_serving)
    stop(lp, srv)
    assert not lp.call(srv.is_serving) and srv.sockets == []
    assert silent.recv(10) == b""  # its handshake was closed
    silent.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=3)
    live.sendall(b"still here")  # established connections are their owners' business
    assert recv_exactly(live, 10) == b"still here"
    assert "lost" not in p.events
    live.close()
    p.wait_lost()


@pytest.mark.parametrize("host", ["", "0.0.0.0", "::", "127.0.0.1", "localhost"])
def test_bind_addresses(lp, server_ctx, client_ctx, host):
    async def _start():
        return await start_tls_server(lp.loop, Echo, host, 0, server_ctx)

    srv = lp.run(_start())
    names = [(s.family, s.getsockname()) for s in srv.sockets]
    assert names
    for s in srv.sockets:
        assert s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) and s.gettimeout() == 0.0
        if s.family == socket.AF_INET6:
            assert s.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
    fam, addr = names[0]
    target = "::1" if fam == socket.AF_INET6 else "127.0.0.1"
    raw = socket.create_connection((target, addr[1]), timeout=3)
    with client_ctx.wrap_socket(raw, server_hostname="localhost") as c:
        c.sendall(b"ping")
        assert recv_exactly(c, 4) == b"ping"
    stop(lp, srv)


def test_emfile_pauses_accepting(lp, server_ctx, client_ctx, caplog, monkeypatch):
    """Out of descriptors, the listener backs off instead of spinning on a readable socket."""
    monkeypatch.setattr(tlstransport, "ACCEPT_RETRY_DELAY", 0.3)
    srv, port = serve(lp, server_ctx)
    lsock = srv.sockets[0]

    class Exhausted:
        calls = 0

        def fileno(self):
            return lsock.fileno()

        def accept(self):
            Exhausted.calls += 1
            if Exhausted.calls == 1:
                raise OSError(errno.EMFILE, "Too many open files")
            return lsock.accept()

    fake = Exhausted()
    fd = lsock.fileno()
    lp.call(lambda: (lp.loop.remove_reader(fd), lp.loop.add_reader(fd, srv._accept_ready, fake)))
    t0 = time.monotonic()
    with connect(port, client_ctx) as c:  # the handshake waits for the retry
        c.sendall(b"hi")
        assert recv_exactly(c, 2) == b"hi"
    assert 0.25 < time.monotonic() - t0 < 3
    assert Exhausted.calls >= 2
    assert any(r.levelno == logging.WARNING and "EMFILE" in r.getMessage() for r in caplog.records)
    stop(lp, srv)


def test_churn_reuses_descriptors_safely(lp, server_ctx, client_ctx):
    """Connections ending every way while new ones open (fd numbers get reused at once)."""
    srv, port = serve(lp, server_ctx)
    for i in range(40):
        c = connect(port, client_ctx)
        c.sendall(b"%d" % i)
        assert recv_exactly(c, len(b"%d" % i)) == b"%d" % i
        if i % 3 == 0:
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        elif i % 3 == 1:
            c.unwrap()
        c.close()
        raw = socket.create_connection(("127.0.0.1", port), timeout=3)  # dies mid-handshake
        raw.close()
    stop(lp, srv)
