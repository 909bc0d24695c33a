"""A TLS server transport that drives a non-blocking ``ssl.SSLSocket`` directly, and its listener.

Why not ``loop.create_server(ssl=...)``: asyncio and uvloop do TLS in ``SSLProtocol``, which
feeds OpenSSL through two memory BIOs — every received segment is copied into the incoming BIO,
decrypted into a Python buffer, and every write is encrypted into the outgoing BIO, read back
out as bytes and handed to the TCP transport. Letting OpenSSL own the socket (its socket BIO
does the ``recv``/``send``) and watching the fd with ``loop.add_reader``/``add_writer`` does one
``SSL_read`` per readable event and one ``SSL_write`` (= one ``send``) per write.

Why it stays (issue 15 asked to keep it only if the gateway's CPU per request over TLS is >= 10 %
lower, and to measure it; bench/README.md, "TLS transport"): against the same source with
``loop.create_server(ssl=...)`` in the same run, on a quiet machine, it is 6-8 % less CPU per
keep-alive request over TLS (27.3 vs 29.1 us and 28.5 vs 30.9 us, ``bench/proxy.py --variant``)
— under the 10 % bar — but **41 % less memory per idle TLS connection** (18.6 vs 31.5 KiB,
``bench/idle.py -n 3000``): uvloop's ``SSLProtocol`` keeps its memory BIOs and a read buffer per
connection. At 10,000 idle phones that is 126 MiB, and the connection's memory is the other half
of issue 16; it also carries the PROXY-protocol preamble before the handshake and the handshake
failure metrics by reason, which the loop's TLS does not give.

The rules this module relies on, checked on CPython 3.11 / OpenSSL 3.0:

- **Write retry.** CPython sets ``SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER | SSL_MODE_AUTO_RETRY``
  on every SSL object (``Modules/_ssl.c``, ``newPySSLSocket``) but not
  ``SSL_MODE_ENABLE_PARTIAL_WRITE``. So a successful ``SSL_write`` always reports the whole
  length, and after ``SSLWantWriteError`` OpenSSL has already encrypted (and maybe sent) part of
  the buffer: the write must be retried with the same bytes — a copy at another address is
  allowed, a shorter buffer fails with ``BAD_LENGTH`` and different bytes of the same length are
  silently mixed into the stream (tested: ``tests/gateway/test_tlstransport.py``). The transport
  therefore keeps the exact chunk in flight (``_pending``) and queues later data behind it.
- **EOF.** ``_sslobj.read`` returns 0 on the peer's close_notify (CPython turns
  ``SSL_ERROR_ZERO_RETURN`` into an empty read) and raises ``SSLEOFError`` on a TCP FIN without
  close_notify (OpenSSL 3 reports the unexpected EOF). Both mean EOF: ``eof_received()``, then,
  as TLS has no half-close, ``close()``. After ``SSLEOFError`` (a fatal OpenSSL error) no
  close_notify is sent: ``SSL_shutdown`` would fail with ``SHUTDOWN_WHILE_IN_INIT``.
- **Closing.** ``close()`` flushes the queued data (bounded by ``close_timeout``), then sends
  one close_notify and closes the socket without waiting for the peer's (nginx's
  ``no_wait_shutdown`` for HTTP): CPython's ``shutdown()`` then raises ``SSLWantReadError``,
  which is ignored.
- **Readiness.** Both loops poll level-triggered (epoll without ``EPOLLET`` in libuv and in
  ``selectors``). OpenSSL (read-ahead off, CPython's default) takes one record per ``SSL_read``
  from the kernel, so further records of the same TCP segment stay in the socket and the fd stays
  readable; only bytes OpenSSL already decrypted (``pending()``) are invisible to epoll — hence
  the read loop's condition.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import ssl
import threading
from collections.abc import Callable, Iterable
from typing import Any, Self

from .. import metrics
from ..protocols import proxyproto

log = logging.getLogger("ucgate.gateway.tlstransport")

# One SSL_read returns at most one record (16 KiB of plaintext); 64 KiB leaves room and is what
# asyncio's selector transports read per call (max_size = 256 KiB there, 64 KiB in uvloop).
READ_SIZE = 64 * 1024
# The largest slice handed to one SSL_write: bounds the bytes OpenSSL holds encrypted-but-unsent
# after SSLWantWriteError, and the copy made when a big queued buffer is sliced.
WRITE_CHUNK = 256 * 1024
# asyncio's defaults (FlowControlMixin): pause the protocol above 64 KiB, resume at 16 KiB.
HIGH_WATER = 64 * 1024
LOW_WATER = HIGH_WATER // 4
# How long close() may wait for a peer to read what is queued before it gives up (asyncio has
# no bound; nginx bounds the same wait with send_timeout/lingering_timeout, 60 s and 5 s).
CLOSE_TIMEOUT = 30.0
# Connections accepted per readiness event of a listening socket (asyncio: backlog, max 100),
# so a SYN flood on one listener cannot starve the rest of the loop.
ACCEPT_BATCH = 64
# Pause before accepting again after EMFILE/ENFILE (nginx disables accept for 500 ms;
# asyncio waits 1 s).
ACCEPT_RETRY_DELAY = 0.5
_ACCEPT_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})

# Writes after close/abort are dropped; asyncio warns after this many, we log at debug.
_LOG_DROPPED_WRITES = 5

_SSLWantRead = ssl.SSLWantReadError
_SSLWantWrite = ssl.SSLWantWriteError
_SSLError = ssl.SSLError
_EOF_ERRORS = (ssl.SSLEOFError, ssl.SSLZeroReturnError)

_local = threading.local()


def _read_buffer() -> tuple[bytearray, memoryview]:
    """This thread's receive buffer. Shared by every transport of the thread's loop, since each
    read is copied out before ``data_received``; per thread, not per module, because
    ``SSL_read`` fills it with the GIL released (tests run loops in several threads)."""
    try:
        return _local.buf
    except AttributeError:
        buf = bytearray(READ_SIZE)
        _local.buf = (buf, memoryview(buf))
        return _local.buf


def _bytes_view(data: Any) -> memoryview:
    """A flat byte view of a bytes-like object (TypeError for anything else, as asyncio)."""
    if isinstance(data, str):
        raise TypeError("data argument must be a bytes-like object, not 'str'")
    view = memoryview(data)  # TypeError for what has no buffer
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


class TLSTransport(asyncio.Transport):
    """A server-side transport over an already handshaken, non-blocking ``ssl.SSLSocket``.

    It starts at once: ``protocol.connection_made(self)`` is called from the constructor, then
    the socket is watched for reading. ``connection_lost`` is called exactly once, via
    ``loop.call_soon``, whatever ends the connection (``close``, ``abort``, EOF, an error).
    Exceptions raised by the protocol's callbacks are logged and end the connection; none
    reaches the event loop.

    Args:
        loop: the running loop (uvloop's or asyncio's; both have ``add_reader``).
        sock: the socket; the transport owns it from now on and closes it.
        protocol: an ``asyncio.Protocol``.
        close_timeout: how long ``close()`` waits for queued data to be sent (a peer that does
            not read), after which the socket is closed anyway and ``connection_lost`` gets a
            ``TimeoutError``.
        extra: more ``get_extra_info`` values (the listener passes ``peername``).
    """

    _extra: dict[str, Any]  # asyncio.BaseTransport's slot (get_extra_info), not in typeshed

    # no instance dict: one of these per idle client connection (bench/idle.py)
    __slots__ = (
        "_loop",
        "_sock",
        "_ssl_sock",
        "_fd",
        "_protocol",
        "_close_timeout",
        "_ssl_read",
        "_ssl_write",
        "_ssl_pending",
        "_rbuf",
        "_rview",
        "_paused",
        "_reading",
        "_read_wants_write",
        "_pending",
        "_buffer",
        "_write_wants_read",
        "_write_idle",
        "_high_water",
        "_low_water",
        "_protocol_paused",
        "_closing",
        "_ssl_broken",
        "_close_timer",
        "_lost_called",
        "_dropped_writes",
        "_reader_on",
        "_writer_on",
        "__weakref__",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: ssl.SSLSocket,
        protocol: asyncio.BaseProtocol,
        *,
        close_timeout: float = CLOSE_TIMEOUT,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(extra)
        sslobj = sock._sslobj  # type: ignore[attr-defined]
        if sslobj is None:
            raise ValueError("TLSTransport needs a connected SSLSocket")
        self._loop = loop
        self._sock: ssl.SSLSocket | None = sock  # None once closed
        self._ssl_sock = sock  # for get_extra_info, also after close
        self._fd = sock.fileno()
        self._protocol = protocol
        self._close_timeout = close_timeout
        # bound methods of the SSL object: the hot path calls them directly, without
        # SSLSocket's Python wrappers (recv_into → read → _sslobj.read)
        self._ssl_read = sslobj.read
        self._ssl_write = sslobj.write
        self._ssl_pending = sslobj.pending
        self._rbuf, self._rview = _read_buffer()
        # reading
        self._paused = False  # pause_reading() in effect
        self._reading = True  # the protocol wants data: not paused, not closing, no EOF yet
        self._read_wants_write = False  # SSL_read said WANT_WRITE: retry it when writable
        # writing: ``_pending`` is the chunk OpenSSL may have half-written (retried as is),
        # ``_buffer`` what was written after it
        self._pending: bytes | memoryview | None = None
        self._buffer = bytearray()
        self._write_wants_read = False  # SSL_write said WANT_READ (renegotiation): retry it when readable
        self._write_idle = True  # nothing queued or blocked: write() may call SSL_write at once
        self._high_water = HIGH_WATER
        self._low_water = LOW_WATER
        self._protocol_paused = False
        # state
        self._closing = False
        self._ssl_broken = False  # a fatal SSL/OS error happened: no close_notify then
        self._close_timer: asyncio.TimerHandle | None = None
        self._lost_called = False
        self._dropped_writes = 0
        self._reader_on = False
        self._writer_on = False
        try:
            protocol.connection_made(self)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:  # noqa: BLE001 - as asyncio: a protocol bug ends the connection only
            self._protocol_failed(exc, "connection_made")
            return
        self._sync()
        if self._reading and self._ssl_pending():
            loop.call_soon(self._read_soon)

    def __repr__(self) -> str:
        state = "closed" if self._sock is None else "closing" if self._closing else "open"
        return f"<TLSTransport fd={self._fd} {state} buffered={self.get_write_buffer_size()}>"

    # --- fd watchers ------------------------------------------------------------------------
    def _sync(self) -> None:
        """Make the fd watchers and the write fast-path flag match the state. Called after any
        state change outside the hot paths (those change nothing)."""
        if self._sock is None:
            return
        queued = self._pending is not None or bool(self._buffer)
        want_read = (self._reading and not self._read_wants_write) or self._write_wants_read
        want_write = self._read_wants_write or (queued and not self._write_wants_read)
        self._write_idle = not (queued or self._closing or self._read_wants_write or self._write_wants_read)
        if want_read != self._reader_on:
            if want_read:
                self._loop.add_reader(self._fd, self._read_ready)
            else:
                self._loop.remove_reader(self._fd)
            self._reader_on = want_read
        if want_write != self._writer_on:
            if want_write:
                self._loop.add_writer(self._fd, self._write_ready)
            else:
                self._loop.remove_writer(self._fd)
            self._writer_on = want_write

    # --- reading ----------------------------------------------------------------------------
    def _read_soon(self) -> None:
        """``call_soon`` entry: decrypted bytes wait in OpenSSL, which epoll cannot see."""
        if self._sock is not None and self._reading and not self._read_wants_write:
            self._read_ready()

    def _read_ready(self) -> None:
        if self._write_wants_read:  # a write waits for the peer's handshake data
            self._write_wants_read = False
            self._flush()
            if self._sock is None or not self._reading:
                return
            self._sync()
        read, rbuf, rview = self._ssl_read, self._rbuf, self._rview
        while True:
            try:
                n = read(READ_SIZE, rbuf)
            except _SSLWantRead:
                return
            except _SSLWantWrite:  # e.g. an answer to a TLS 1.3 KeyUpdate must go out first
                self._read_wants_write = True
                self._sync()
                return
            except _EOF_ERRORS as exc:
                self._ssl_broken = isinstance(exc, ssl.SSLEOFError)
                self._eof()
                return
            except (_SSLError, OSError) as exc:
                self._fatal(exc, "read")
                return
            if not n:
                self._eof()
                return
            try:
                self._protocol.data_received(rview[:n].tobytes())  # type: ignore[attr-defined]
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:  # noqa: BLE001 - as asyncio: ends the connection only
                self._protocol_failed(exc, "data_received")
                return
            # Another read only if it may find something epoll would not report: a full
            # buffer, or plaintext OpenSSL already decrypted. Further records still in the
            # kernel make the (level-triggered) fd readable again.
            if not self._reading or (n < READ_SIZE and not self._ssl_pending()):
                return

    def _eof(self) -> None:
        self._reading = False
        self._sync()
        try:
            self._protocol.eof_received()  # type: ignore[attr-defined]
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:  # noqa: BLE001 - as asyncio: ends the connection only
            self._protocol_failed(exc, "eof_received")
            return
        # TLS has no half-close: whatever eof_received() answered, the connection ends here
        # (queued data is still flushed).
        self.close()

    def pause_reading(self) -> None:
        if self._closing or self._paused:
            return
        self._paused = True
        self._reading = False
        self._sync()

    def resume_reading(self) -> None:
        if self._closing or not self._paused or self._sock is None:
            return
        self._paused = False
        self._reading = True
        self._sync()
        if self._ssl_pending():
            self._loop.call_soon(self._read_soon)

    def is_reading(self) -> bool:
        return self._reading

    # --- writing ----------------------------------------------------------------------------
    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Encrypt and send ``data`` now if nothing is queued (the usual case: one SSL_write,
        one ``send``); else queue it behind what is waiting for the socket."""
        tp = type(data)
        if self._write_idle and (tp is bytes or tp is bytearray) and 0 < len(data) <= WRITE_CHUNK:
            try:
                self._ssl_write(data)
                return
            except _SSLWantWrite:
                # OpenSSL may hold part of it: retried with these bytes (a copy if mutable)
                self._pending = data if type(data) is bytes else bytes(data)
                self._sync()
                self._maybe_pause_protocol()
                return
            except _SSLWantRead:
                self._pending = data if type(data) is bytes else bytes(data)
                self._write_wants_read = True
                self._sync()
                self._maybe_pause_protocol()
                return
            except (_SSLError, OSError) as exc:
                self._fatal(exc, "write")
                return
        self._write_slow(data)

    def _write_slow(self, data: bytes | bytearray | memoryview) -> None:
        view = _bytes_view(data)
        if self._sock is None or self._closing:
            self._dropped_writes += 1
            if self._dropped_writes <= _LOG_DROPPED_WRITES:
                log.debug("write() after close(): %d bytes dropped", view.nbytes)
            return
        if not view.nbytes:
            return
        if not self._write_idle:
            self._buffer += view
            self._maybe_pause_protocol()
            return
        # Nothing queued: write straight from the caller's buffer, in slices.
        total, off = view.nbytes, 0
        write = self._ssl_write
        while off < total:
            chunk = view[off : off + WRITE_CHUNK]
            try:
                write(chunk)
            except (_SSLWantWrite, _SSLWantRead) as exc:
                # The retry must see the same bytes: copy them unless they are immutable
                # (a copy is fine — CPython allows a moving write buffer).
                self._pending = chunk if type(data) is bytes else chunk.tobytes()
                self._write_wants_read = isinstance(exc, _SSLWantRead)
                off += len(chunk)
                break
            except (_SSLError, OSError) as exc:
                self._fatal(exc, "write")
                return
            off += len(chunk)
        else:
            return
        if off < total:
            self._buffer += view[off:]
        self._sync()
        self._maybe_pause_protocol()

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        """One write of the joined pieces: one TLS record instead of one per piece."""
        self.write(b"".join(list_of_data))

    def _write_ready(self) -> None:
        if self._sock is None:
            return
        if self._read_wants_write:
            # The pending SSL_read has handshake bytes to send: finish it before any SSL_write
            # (OpenSSL refuses a write of another record type while they are buffered). Its
            # data is delivered even if reading was paused meanwhile (rare: it takes a TLS 1.3
            # KeyUpdate while the socket is full); the Stream tolerates that.
            self._read_wants_write = False
            self._sync()
            self._read_ready()
            if self._sock is None or self._read_wants_write:
                return
        self._flush()

    def _flush(self) -> None:
        """Write the pending chunk, then the queue in ``WRITE_CHUNK`` slices, until the socket
        is full; finish a requested close once everything is out."""
        write = self._ssl_write
        buf = self._buffer
        while True:
            chunk = self._pending
            if chunk is None:
                if not buf:
                    break
                chunk = self._pending = bytes(memoryview(buf)[:WRITE_CHUNK])
                del buf[:WRITE_CHUNK]
            try:
                write(chunk)
            except _SSLWantWrite:
                break
            except _SSLWantRead:
                self._write_wants_read = True
                break
            except (_SSLError, OSError) as exc:
                self._fatal(exc, "write")
                return
            self._pending = None
        self._sync()
        self._maybe_resume_protocol()
        if self._closing and self._pending is None and not buf and self._sock is not None:
            self._finish_close()

    def get_write_buffer_size(self) -> int:
        pending = self._pending
        return len(self._buffer) + (len(pending) if pending is not None else 0)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (self._low_water, self._high_water)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        """asyncio's rules: ``high`` defaults to 64 KiB (4 × ``low`` if only that is given),
        ``low`` to ``high // 4``; ValueError unless ``high >= low >= 0``."""
        if high is None:
            high = HIGH_WATER if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self._high_water, self._low_water = high, low
        self._maybe_pause_protocol()

    def _maybe_pause_protocol(self) -> None:
        if self._protocol_paused or self.get_write_buffer_size() <= self._high_water:
            return
        self._protocol_paused = True
        try:
            self._protocol.pause_writing()
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException:
            log.exception("protocol.pause_writing() failed")

    def _maybe_resume_protocol(self) -> None:
        if not self._protocol_paused or self.get_write_buffer_size() > self._low_water:
            return
        self._protocol_paused = False
        try:
            self._protocol.resume_writing()
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException:
            log.exception("protocol.resume_writing() failed")

    def can_write_eof(self) -> bool:
        return False  # TLS has no half-close

    def write_eof(self) -> None:
        raise NotImplementedError("TLS has no half-close: use close()")

    # --- closing ----------------------------------------------------------------------------
    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        """Stop reading, send what is queued (at most ``close_timeout`` seconds), then one
        close_notify, close the socket and call ``connection_lost(None)`` soon."""
        if self._closing:
            return
        self._closing = True
        self._reading = False
        self._read_wants_write = False  # nothing more will be read
        if self._pending is None and not self._buffer:
            self._finish_close()
            return
        self._sync()
        self._close_timer = self._loop.call_later(self._close_timeout, self._close_timed_out)

    def _close_timed_out(self) -> None:
        self._close_timer = None
        left = self.get_write_buffer_size()
        log.debug("TLS close: %d bytes still unsent after %.0f s, closing anyway", left, self._close_timeout)
        self._force_close(TimeoutError(f"the peer did not read the last {left} bytes in {self._close_timeout:g} s"))

    def _finish_close(self) -> None:
        if not self._ssl_broken:
            try:
                # Sends close_notify (one record, one send). CPython then tries to read the
                # peer's and raises SSLWantReadError: we do not wait for it.
                self._sock._sslobj.shutdown()  # type: ignore[union-attr]
            except (_SSLError, OSError, ValueError):
                pass
        self._force_close(None)

    def abort(self) -> None:
        """Drop what is queued, close the socket now (no close_notify), connection_lost(None)."""
        self._force_close(None)

    def _force_close(self, exc: BaseException | None) -> None:
        sock = self._sock
        if sock is None:
            return
        self._closing = True
        self._reading = False
        self._read_wants_write = self._write_wants_read = False
        self._pending = None
        self._buffer.clear()
        self._sync()  # removes both watchers: they must go before the fd is closed
        self._write_idle = False
        self._sock = None
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        try:
            sock.close()
        except OSError:
            pass
        self._loop.call_soon(self._call_connection_lost, exc)

    def _call_connection_lost(self, exc: BaseException | None) -> None:
        if self._lost_called:
            return
        self._lost_called = True
        try:
            # a BaseException too (a CancelledError a callback raised), as asyncio's transports pass it;
            # typeshed's BaseProtocol.connection_lost says Exception | None
            self._protocol.connection_lost(exc)  # type: ignore[arg-type]
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException:
            log.exception("protocol.connection_lost() failed")
        finally:
            self._ssl_read = self._ssl_write = self._ssl_pending = None
            # as asyncio's transports do: the protocol (which holds this transport) is no
            # longer ours, so the pair is freed by reference counting when the connection
            # ends, not by a later cyclic collection (with its SSL object and buffers)
            self._protocol = None  # type: ignore[assignment]

    def _fatal(self, exc: BaseException, during: str) -> None:
        """An SSL or socket error: the connection is gone (peers reset connections all the
        time, so this is a debug message; the SSL reason names no secret)."""
        self._ssl_broken = True
        log.debug("TLS connection fd=%d: %s failed: %r", self._fd, during, exc)
        self._force_close(exc)

    def _protocol_failed(self, exc: BaseException, callback: str) -> None:
        """The protocol raised: a bug on our side, logged with its traceback; the connection is
        aborted and the protocol told with that exception."""
        log.error("protocol.%s() failed; aborting the connection", callback, exc_info=exc)
        self._ssl_broken = True  # do not try a graceful close on a protocol we cannot trust
        self._force_close(exc)

    # --- the rest of asyncio.Transport ------------------------------------------------------
    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """``peername``, ``sockname``, ``socket`` and ``ssl_object`` (both the SSLSocket, which
        has getpeercert/cipher/version/selected_alpn_protocol), ``sslcontext``, ``peercert``,
        ``cipher``, ``compression``."""
        extra = self._extra
        if name in extra:
            return extra[name]
        sock = self._ssl_sock
        try:
            if name == "sslcontext":
                value: Any = sock.context
            elif name in ("ssl_object", "socket"):
                value = sock
            elif name == "peername":
                value = sock.getpeername()
            elif name == "sockname":
                value = sock.getsockname()
            elif name == "peercert":
                return sock.getpeercert()
            elif name == "cipher":
                return sock.cipher()
            elif name == "compression":
                return sock.compression()
            else:
                return default
        except (OSError, ValueError):
            return default
        extra[name] = value
        return value

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol


class _Handshake:
    """One accepted connection's TLS handshake: non-blocking, bounded by a deadline; on success
    the protocol and its transport are created, on failure the socket is closed and nobody
    else ever hears of it. ``client`` is the address a PROXY header gave (``_Preamble``): the
    transport's ``peername``, with the balancer's as ``proxy_peername``."""

    __slots__ = ("client", "fd", "peer", "server", "sock", "timer", "watching")

    def __init__(
        self, server: TLSServer, sock: ssl.SSLSocket, peer: Any, deadline: float, client: tuple[str, int] | None = None
    ) -> None:
        self.server = server
        self.sock: ssl.SSLSocket | None = sock
        self.fd = sock.fileno()
        self.peer = peer
        self.client = client
        self.timer = server._loop.call_at(deadline, self._expired)
        self.watching: str | None = None  # "r" or "w"

    def step(self) -> None:
        sock = self.sock
        if sock is None:
            return
        try:
            sock._sslobj.do_handshake()  # type: ignore[attr-defined]
        except _SSLWantRead:
            self._watch("r")
            return
        except _SSLWantWrite:
            self._watch("w")
            return
        except (_SSLError, OSError) as exc:
            # a scanner, a client that does not trust us, an old protocol version...
            log.debug("TLS handshake with %s failed: %s", _peer_str(self.peer), _ssl_reason(exc))
            metrics.tls_failure(exc)
            self.close()
            return
        except Exception:
            log.exception("TLS handshake with %s failed", _peer_str(self.peer))
            self.close()
            return
        self._done()

    def _watch(self, what: str) -> None:
        if self.watching == what:
            return
        loop = self.server._loop
        if self.watching == "r":
            loop.remove_reader(self.fd)
        elif self.watching == "w":
            loop.remove_writer(self.fd)
        if what == "r":
            loop.add_reader(self.fd, self.step)
        else:
            loop.add_writer(self.fd, self.step)
        self.watching = what

    def _unwatch(self) -> None:
        loop = self.server._loop
        if self.watching == "r":
            loop.remove_reader(self.fd)
        elif self.watching == "w":
            loop.remove_writer(self.fd)
        self.watching = None
        self.timer.cancel()
        self.server._handshakes.discard(self)

    def _expired(self) -> None:
        log.debug("TLS handshake with %s timed out", _peer_str(self.peer))
        metrics.tls_failure(None)
        self.close()

    def close(self) -> None:
        sock = self.sock
        if sock is None:
            return
        self._unwatch()  # before the fd is closed
        self.sock = None
        try:
            sock.close()
        except OSError:
            pass

    def _done(self) -> None:
        sock = self.sock
        assert sock is not None
        self._unwatch()
        self.sock = None
        server = self.server
        try:
            protocol = server._protocol_factory()
        except Exception:
            log.exception("protocol factory failed; closing the connection from %s", _peer_str(self.peer))
            sock.close()
            return
        extra = (
            {"peername": self.peer} if self.client is None else {"peername": self.client, "proxy_peername": self.peer}
        )
        try:  # the transport calls connection_made and handles the protocol's failures itself
            TLSTransport(server._loop, sock, protocol, close_timeout=server._close_timeout, extra=extra)
        except Exception:
            log.exception("could not start the transport for %s", _peer_str(self.peer))
            sock.close()


class _Preamble:
    """The PROXY protocol header of one accepted connection, read off the raw socket before the
    TLS handshake (HAProxy's ``send-proxy-v2`` sends it before the ClientHello), within the
    handshake's deadline. The socket is peeked (``MSG_PEEK``) and exactly the header's bytes are
    consumed, so OpenSSL's first read starts at the ClientHello: while ``proxyproto.parse`` wants
    more, every byte peeked belongs to the header and is consumed, so the level-triggered fd
    never spins on bytes we leave in place.

    From a trusted balancer the header is required (anything else closes the connection with a
    warning); from any other peer, a first byte that starts a PROXY signature closes it with a
    warning, a TLS record goes on to the handshake as a direct client (the PROXY protocol's
    spoofing risk is a header from an untrusted peer, which is refused, never read)."""

    __slots__ = ("deadline", "fd", "got", "peer", "server", "sock", "timer", "trusted", "watching")

    # enough to tell a TLS record (0x16) from a PROXY signature
    _SNIFF_BYTES = len(proxyproto.SIGNATURE_V2)

    def __init__(self, server: TLSServer, sock: socket.socket, peer: Any, trusted: bool, deadline: float) -> None:
        self.server = server
        self.sock: socket.socket | None = sock
        self.fd = sock.fileno()
        self.peer = peer
        self.trusted = trusted
        self.deadline = deadline
        self.got = b""  # header bytes consumed so far
        self.timer = server._loop.call_at(deadline, self._expired)
        self.watching = False

    def step(self) -> None:
        sock = self.sock
        if sock is None:
            return
        want = proxyproto.MAX_HEADER_BYTES - len(self.got) if self.trusted else self._SNIFF_BYTES
        try:
            data = sock.recv(want, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            self._watch()
            return
        except OSError as exc:
            log.debug("connection from %s lost before its PROXY header: %r", _peer_str(self.peer), exc)
            self.close()
            return
        if not data:  # a balancer's TCP check connects and closes: not worth a warning
            log.debug("connection from %s closed before a PROXY header", _peer_str(self.peer))
            self.close()
            return
        if not self.trusted:
            if data[0] != 0x16 and proxyproto.detect(data) != 0:
                self._refuse("untrusted-proxy-header", "the peer is not in trusted_proxies")
            else:
                self._done(None)
            return
        try:
            header = proxyproto.parse(self.got + data)
        except proxyproto.ProxyError as e:
            self._refuse(e.reason, e.detail)
            return
        take = len(data) if header is None else header.length - len(self.got)
        try:
            taken = sock.recv(take)  # peeked already: they are in the socket's buffer
        except OSError:
            taken = b""
        if len(taken) != take:
            self.close()
            return
        if header is None:
            self.got += taken
            self._watch()
            return
        self._done(proxyproto.client_address(header, self.peer))

    def _watch(self) -> None:
        if not self.watching:
            self.server._loop.add_reader(self.fd, self.step)
            self.watching = True

    def _unwatch(self) -> None:
        if self.watching:
            self.server._loop.remove_reader(self.fd)
            self.watching = False
        self.timer.cancel()
        self.server._handshakes.discard(self)

    def _refuse(self, reason: str, detail: str) -> None:
        log.warning(
            "connection from %s closed: PROXY protocol: %s%s",
            _peer_str(self.peer),
            reason,
            f" ({detail})" if detail else "",
        )
        self.close()

    def _expired(self) -> None:
        if self.trusted:
            log.info(
                "connection from %s closed: no PROXY header within %ss",
                _peer_str(self.peer),
                self.server._handshake_timeout,
            )
        else:  # as a TLS handshake that times out
            log.debug(
                "connection from %s sent nothing within %ss", _peer_str(self.peer), self.server._handshake_timeout
            )
        self.close()

    def close(self) -> None:
        sock = self.sock
        if sock is None:
            return
        self._unwatch()
        self.sock = None
        try:
            sock.close()
        except OSError:
            pass

    def _done(self, client: tuple[str, int] | None) -> None:
        sock = self.sock
        assert sock is not None
        self._unwatch()
        self.sock = None
        self.server._start_tls(sock, self.peer, self.deadline, client)


def _peer_str(peer: Any) -> str:
    try:
        return f"{peer[0]}:{peer[1]}"
    except (TypeError, IndexError):
        return repr(peer)


def _ssl_reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    return f"{type(exc).__name__}({reason})" if reason else repr(exc)


class TLSServer:
    """Listening sockets whose connections are handshaken and handed to ``TLSTransport``.

    ``close()`` stops accepting, closes the listening sockets and the handshakes in progress;
    established connections are left to their protocols, as ``asyncio.Server.close`` does.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        ssl_context: ssl.SSLContext,
        sockets: list[socket.socket],
        *,
        handshake_timeout: float,
        close_timeout: float,
        proxy_from: Callable[[str], bool] | None = None,
    ) -> None:
        self._loop = loop
        self._protocol_factory = protocol_factory
        self._ssl_context = ssl_context
        self._sockets = sockets
        self._handshake_timeout = handshake_timeout
        self._close_timeout = close_timeout
        self._proxy_from = proxy_from
        self._handshakes: set[_Handshake | _Preamble] = set()
        self._accepting: set[int] = set()  # fds with a reader installed
        self._retry_timers: list[asyncio.TimerHandle] = []
        self._serving = False
        self._closed = loop.create_future()

    def __repr__(self) -> str:
        names = [s.getsockname() for s in self._sockets]
        return f"<TLSServer {names} serving={self._serving}>"

    @property
    def sockets(self) -> list[socket.socket]:
        return list(self._sockets)

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def set_ssl_context(self, ssl_context: ssl.SSLContext) -> None:
        """Handshake new connections with ``ssl_context`` (a new certificate); connections
        already open keep the one they were handshaken with."""
        self._ssl_context = ssl_context

    def is_serving(self) -> bool:
        return self._serving

    def _start(self) -> None:
        self._serving = True
        for lsock in self._sockets:
            self._accept_on(lsock)

    def _accept_on(self, lsock: socket.socket) -> None:
        fd = lsock.fileno()
        if self._serving and fd >= 0 and fd not in self._accepting:
            self._loop.add_reader(fd, self._accept_ready, lsock)
            self._accepting.add(fd)

    def _accept_ready(self, lsock: socket.socket) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, peer = lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue  # the client gave up while queued: next one
            except OSError as exc:
                if exc.errno in _ACCEPT_RESOURCE_ERRNOS:
                    # Out of descriptors or memory: retrying at once would spin (the socket stays
                    # readable); stop accepting on this socket for a moment.
                    log.warning(
                        "accept() failed (%s); not accepting for %.1f s",
                        errno.errorcode.get(exc.errno or 0, exc.errno),
                        ACCEPT_RETRY_DELAY,
                    )
                    fd = lsock.fileno()
                    if fd in self._accepting:
                        self._loop.remove_reader(fd)
                        self._accepting.discard(fd)
                    self._retry_timers = [t for t in self._retry_timers if not t.cancelled()]
                    self._retry_timers.append(self._loop.call_later(ACCEPT_RETRY_DELAY, self._accept_on, lsock))
                else:
                    log.warning("accept() failed: %r", exc)
                return
            self._handshake(conn, peer)

    def _handshake(self, conn: socket.socket, peer: Any) -> None:
        deadline = self._loop.time() + self._handshake_timeout
        if self._proxy_from is None:
            self._start_tls(conn, peer, deadline)
            return
        try:
            conn.setblocking(False)
        except OSError:
            conn.close()
            return
        pre = _Preamble(self, conn, peer, self._proxy_from(peer[0]), deadline)
        self._handshakes.add(pre)
        pre.step()  # the header usually came with the connection: no wait for readiness

    def _start_tls(
        self, conn: socket.socket, peer: Any, deadline: float, client: tuple[str, int] | None = None
    ) -> None:
        try:
            conn.setblocking(False)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock = self._ssl_context.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
        except (OSError, ValueError) as exc:  # reset before we got to it
            log.debug("connection from %s lost before the TLS handshake: %r", _peer_str(peer), exc)
            conn.close()
            return
        if sock._sslobj is None:  # type: ignore[attr-defined]  # not connected any more
            sock.close()
            return
        hs = _Handshake(self, sock, peer, deadline, client)
        self._handshakes.add(hs)
        hs.step()  # the ClientHello is often there already: no wait for readiness

    def close(self) -> None:
        if self._closed.done():
            return
        self._serving = False
        for t in self._retry_timers:
            t.cancel()
        self._retry_timers.clear()
        for lsock in self._sockets:
            fd = lsock.fileno()
            if fd in self._accepting:
                self._loop.remove_reader(fd)
            lsock.close()
        self._accepting.clear()
        self._sockets = []
        for hs in list(self._handshakes):
            hs.close()
        self._closed.set_result(None)

    async def wait_closed(self) -> None:
        """Until ``close()`` was called (connections may outlive it)."""
        await asyncio.shield(self._closed)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()
        await self.wait_closed()


def _bind(host: str | None, port: int, backlog: int) -> list[socket.socket]:
    """Listening sockets for ``host`` (all interfaces for "" / None), as ``create_server`` binds
    them: one per getaddrinfo address, SO_REUSEADDR, IPV6_V6ONLY on IPv6 sockets so that
    "0.0.0.0" and "::" can both be bound."""
    infos = socket.getaddrinfo(
        host or None, port, family=socket.AF_UNSPEC, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    seen: set[tuple[int, Any]] = set()
    sockets: list[socket.socket] = []
    errors: list[OSError] = []
    try:
        for af, socktype, proto, _name, addr in infos:
            if (af, addr) in seen:
                continue
            seen.add((af, addr))
            try:
                sock = socket.socket(af, socktype, proto)
            except OSError as exc:  # a family this host lacks
                errors.append(exc)
                continue
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if af == socket.AF_INET6 and hasattr(socket, "IPPROTO_IPV6"):
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(addr)
            except OSError as exc:
                sock.close()
                # An IPv6 address a host without IPv6 cannot bind ("localhost" → ::1) is
                # skipped if another address works; any other failure is the caller's.
                if af == socket.AF_INET6 and exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
                    errors.append(exc)
                    continue
                msg = f"error while attempting to bind on address {addr!r}: {exc.strerror}"
                raise OSError(exc.errno, msg) from None
            sockets.append(sock)
            sock.listen(backlog)
            sock.setblocking(False)
        if not sockets:
            raise errors[0] if errors else OSError(f"no address to listen on for {host!r}")
    except BaseException:
        for s in sockets:
            s.close()
        raise
    return sockets


async def start_tls_server(
    loop: asyncio.AbstractEventLoop,
    protocol_factory: Callable[[], asyncio.BaseProtocol],
    host: str,
    port: int,
    ssl_context: ssl.SSLContext,
    *,
    backlog: int = 1024,
    handshake_timeout: float = 60.0,
    close_timeout: float = CLOSE_TIMEOUT,
    proxy_from: Callable[[str], bool] | None = None,
) -> TLSServer:
    """Listen on ``host:port`` and serve every connection over a ``TLSTransport``.

    Each accepted connection is handshaken without blocking, within ``handshake_timeout``
    seconds; only then is ``protocol_factory()`` called and ``connection_made`` delivered (a
    failed or timed-out handshake is logged at debug and never reaches a protocol).

    Args:
        loop: the running loop.
        protocol_factory: makes the ``asyncio.Protocol`` of each connection.
        host: an address or name; "" binds all interfaces (IPv4 and IPv6).
        port: the port; 0 picks a free one (per socket, as asyncio's create_server).
        ssl_context: a server-side context.
        backlog: the listen() backlog.
        handshake_timeout: seconds a client has to complete the TLS handshake (and, with
            ``proxy_from``, to send its PROXY header before it).
        close_timeout: passed to each ``TLSTransport``.
        proxy_from: None, or the PROXY protocol (``protocols/proxyproto.py``) is on: called
            with each peer's address, True for a trusted balancer, whose connection must start
            with a PROXY header (its source address becomes the transport's ``peername``, the
            balancer's is ``proxy_peername``); any other peer that sends one is refused, one
            that sends a ClientHello is served as a direct client (``_Preamble``).

    Raises:
        OSError: the address cannot be resolved or bound.
    """
    sockets = _bind(host, port, backlog)
    server = TLSServer(
        loop,
        protocol_factory,
        ssl_context,
        sockets,
        handshake_timeout=handshake_timeout,
        close_timeout=close_timeout,
        proxy_from=proxy_from,
    )
    server._start()
    return server
