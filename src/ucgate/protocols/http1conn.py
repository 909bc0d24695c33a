"""An HTTP/1.1 connection as a sans-I/O state machine (h11's ``Connection`` is the model), and the
body framing it uses on its own (:class:`BodyReader`).

The connection owns both halves of reading a message: the head (``http1.parse_request_head`` /
``parse_response_head``, so the same strict rules and the same common route) and the body
(Content-Length, chunked with chunk-size lines, extensions and trailers, and read-until-close for
a response), with the refuse-never-repair rules of ``protocols/http1.py`` in one place. Nothing
here does I/O: bytes go in with :meth:`Connection.receive_data`, events come out of
:meth:`Connection.next_event`. A refusal is an :class:`~ucgate.protocols.http1.HttpError` with
the status to answer and the reason code for the log line; after one, the connection is broken
(every further call raises the same error) and the caller answers and closes.

Server side (requests from a client)::

    conn = Connection(SERVER, limits, special=request_special_re(drop, owned), max_body=limit)
    conn.receive_data(data)            # b"" when the client closed
    while True:
        event = conn.next_event()      # HttpError: answer event.status, log event.reason, close
        if event is NEED_DATA:
            break                      # read more, then receive_data() again
        if isinstance(event, Request):
            req = event.head           # a RequestHead; req.prefix is not None: the common route
        elif isinstance(event, Data):
            upstream.write(event.data) # the payload, de-chunked (re-frame it: http1.encode_chunk)
        elif isinstance(event, EndOfMessage):
            ...                        # event.trailers: [(name, value)], checked, not forwarded
        elif event is PAUSED or isinstance(event, ConnectionClosed):
            break                      # not keep-alive, or the client closed between requests

Client side (responses from the upstream): call ``conn.send_request(method)`` for each request
written, in order; a response to HEAD, a 1xx, 204 or 304 has no body (RFC 9112 §6.3), a
response without Content-Length or Transfer-Encoding is read until close (``receive_data(b"")``
ends it). 1xx responses are events of their own (``event.head.status < 200``), then the final
one follows; after a 101 the connection is PAUSED (the bytes after it are ``trailing_data``).
Client-side refusals have status 502.

The connection is three parts, each the one rule for its step: :func:`head_end` finds the
head, ``http1.parse_request_head`` / ``parse_response_head`` parse it, :class:`BodyReader`
frames the body. The gateway uses the same three over its streams' own buffers rather than
this object's events (gateway/stream.py and session.py answer a request inline from the bytes
the loop handed over, without copying them into a second buffer or making an event per step):
``Stream.take_head`` is :func:`head_end`; the heads are parsed by ``http1.common_request`` /
``common_response`` (the common route of ``parse_request_head`` / ``parse_response_head``,
whose heads have ``.prefix`` set) and the full route when that gives None; and every body is
copied with a :class:`BodyReader` (gateway/body.py), in this shape::

    reader = BodyReader(req.framing, limit=max_body)        # HttpError(413) when over it
    while True:
        out, done = reader.feed(await client.read(65536))   # b"" at EOF: 400 body-incomplete
        upstream.write(out)            # decoded payload (raw=True: the wire bytes, checked)
        if done:
            break
    client.unread(reader.unused)       # bytes after the body: the next request's
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, field

from ucgate.protocols.http1 import (
    BARE_CR_OR_LF,
    BARE_CR_OR_LF_DETAIL,
    DEFAULT_LIMITS,
    MAX_CHUNK_LINE_BYTES,
    Framing,
    HttpError,
    Limits,
    RequestHead,
    ResponseHead,
    check_trailer_line,
    parse_chunk_size_line,
    parse_request_head,
    parse_response_head,
)

__all__ = [
    "CLIENT",
    "NEED_DATA",
    "PAUSED",
    "SERVER",
    "MAX_TRAILER_BYTES",
    "BodyReader",
    "Connection",
    "ConnectionClosed",
    "Data",
    "EndOfMessage",
    "Request",
    "Response",
    "head_end",
]

SERVER = "server"  # we are the server: the peer sends requests
CLIENT = "client"  # we are the client: the peer sends responses
# The whole trailer section (the limit of every body copy: gateway/body.py reads with BodyReader).
MAX_TRAILER_BYTES = MAX_CHUNK_LINE_BYTES * 4


class _Sentinel(type):
    def __repr__(cls) -> str:
        return cls.__name__


class NEED_DATA(metaclass=_Sentinel):
    """No event without more bytes (h11's sentinel): the class itself is the value."""


class PAUSED(metaclass=_Sentinel):
    """No more messages on this connection: the last one closes it, or it switched protocols
    (101), and the bytes after it are ``trailing_data``."""


@dataclass(frozen=True, slots=True)
class Request:
    head: RequestHead


@dataclass(frozen=True, slots=True)
class Response:
    head: ResponseHead


@dataclass(frozen=True, slots=True)
class Data:
    data: bytes


@dataclass(frozen=True, slots=True)
class EndOfMessage:
    trailers: list[tuple[bytes, bytes]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The peer closed between messages."""


# BodyReader states
_LENGTH, _SIZE, _CHUNK, _CRLF, _TRAILER, _CLOSE, _DONE = range(7)
# Connection states
_HEAD, _BODY, _PAUSED = range(3)


class BodyReader:
    """The body of one message, by its :class:`~ucgate.protocols.http1.Framing`.

    ``feed(data)`` takes the next bytes of the stream and returns ``(out, done)``: ``out`` the
    payload they complete (chunked: de-chunked; with ``raw=True`` the wire bytes themselves,
    chunk lines and trailers included, once checked) and ``done`` whether the body ended. Bytes
    after the end stay in ``unused``. ``feed(b"")`` is the end of the stream: it ends a
    read-until-close body, and is ``HttpError(400, "body-incomplete")`` in any other.
    ``trailers`` holds the trailer fields of a chunked body once done.

    >>> r = BodyReader(Framing("chunked"))
    >>> r.feed(b"3\\r\\nabc\\r\\n0\\r\\nX: 1\\r\\n")
    (b'abc', False)
    >>> r.feed(b"\\r\\nGET /next")
    (b'', True)
    >>> r.trailers, r.unused
    ([(b'X', b'1')], b'GET /next')

    Refusals (``HttpError``; the gateway's ClientBodyError reasons): 413 ``body-too-large`` over
    ``limit`` (a Content-Length over it at once), 400 ``chunk-line-too-long``,
    ``bad-chunk-size``, ``bad-chunk-terminator``, ``trailer-too-large``, ``bad-trailer``,
    ``obs-fold``, ``body-incomplete``.
    """

    __slots__ = ("_state", "_left", "_buf", "_total", "_limit", "_raw", "_trailer_bytes", "trailers", "unused")
    _left: int  # bytes of the body (length) or of the chunk (chunked) still to come

    def __init__(self, framing: Framing, *, limit: int | None = None, raw: bool = False) -> None:
        self._limit = limit
        self._raw = raw
        self._buf = b""  # a chunk-size or trailer line not complete yet
        self._total = 0
        self._trailer_bytes = 0
        self.trailers: list[tuple[bytes, bytes]] = []
        self.unused = b""
        kind = framing.kind
        if kind == "length":
            if limit is not None and framing.length > limit:
                raise HttpError(413, "body-too-large")
            self._left = framing.length
            self._state = _LENGTH if framing.length else _DONE
        elif kind == "chunked":
            self._state = _SIZE
        elif kind == "close":
            self._state = _CLOSE
        elif kind == "none":
            self._state = _DONE
        else:
            raise ValueError(f"unknown framing {kind!r}")

    @property
    def done(self) -> bool:
        return self._state == _DONE

    def feed(self, data: bytes) -> tuple[bytes, bool]:
        if self._state == _DONE:
            self.unused += data
            return b"", True
        if not data:
            if self._state == _CLOSE:
                self._state = _DONE
                return b"", True
            raise HttpError(400, "body-incomplete")
        out: list[bytes] = []
        if self._state == _LENGTH:
            n = self._left
            if len(data) < n:
                self._left = n - len(data)
                return data, False
            self._state = _DONE
            self.unused = data[n:]
            return data[:n], True
        if self._state == _CLOSE:
            self._total += len(data)
            if self._limit is not None and self._total > self._limit:
                raise HttpError(413, "body-too-large")
            return data, False
        buf = self._buf + data  # (b"" + data is data itself, no copy)
        pos = self._chunked(buf, out)
        if self._state == _DONE:
            self.unused = buf[pos:]
        else:
            self._buf = buf[pos:]
        return b"".join(out), self._state == _DONE

    def _chunked(self, buf: bytes, out: list[bytes]) -> int:
        """Decode what ``buf`` holds; the position of the first byte not consumed."""
        pos = 0
        raw = self._raw
        end = len(buf)
        while pos < end:
            state = self._state
            if state == _CHUNK:
                n = min(self._left, end - pos)
                out.append(buf[pos : pos + n])
                pos += n
                self._left -= n
                if not self._left:
                    self._state = _CRLF
            elif state == _CRLF:
                if end - pos < 2:
                    if buf[pos] != 0x0D:
                        raise HttpError(400, "bad-chunk-terminator")
                    return pos
                if buf[pos : pos + 2] != b"\r\n":
                    raise HttpError(400, "bad-chunk-terminator")
                if raw:
                    out.append(b"\r\n")
                pos += 2
                self._state = _SIZE
            else:  # a line: a chunk-size line or a trailer line
                i = buf.find(b"\r\n", pos)
                if i < 0:
                    partial = end - pos
                    least = partial + (1 if buf[end - 1] == 0x0D else 2)  # the line's length at least
                    if state == _TRAILER:
                        if self._trailer_bytes + least > MAX_TRAILER_BYTES:
                            raise HttpError(400, "trailer-too-large")
                    elif least > MAX_CHUNK_LINE_BYTES:
                        raise HttpError(400, "chunk-line-too-long")
                    return pos
                line = buf[pos : i + 2]
                pos = i + 2
                if raw:
                    out.append(line)
                if state == _TRAILER:
                    self._trailer_bytes += len(line)
                    if self._trailer_bytes > MAX_TRAILER_BYTES:
                        raise HttpError(400, "trailer-too-large")
                    if check_trailer_line(line):
                        self._state = _DONE
                        return pos
                    name, _, value = line[:-2].partition(b":")
                    self.trailers.append((name, value.strip(b" \t")))
                    continue
                size = parse_chunk_size_line(line)  # state == _SIZE
                if size == 0:
                    self._state = _TRAILER
                    continue
                self._total += size
                if self._limit is not None and self._total > self._limit:
                    raise HttpError(413, "body-too-large")
                self._left = size
                self._state = _CHUNK
        return pos

    def eof(self) -> bool:
        """``feed(b"")[1]``: the stream ended; True when that ends the body."""
        return self.feed(b"")[1]


def head_end(buf: bytes | bytearray, scan: int, limit: int) -> tuple[int, int]:
    """Where the message head at the start of ``buf`` ends: ``(end, scan)``, ``end`` the index
    just past its empty line, or -1 while it is not all there, and then ``scan``, where the
    next search resumes (the end may begin in the last 3 bytes: a head that trickles in byte by
    byte costs linear time). The one rule for finding a head, for :class:`Connection` and for
    the gateway's streams (gateway/stream.py), which keep the bytes in their own buffer.

    Raises ``HttpError(431, "header-too-large")`` once the head is longer than ``limit`` bytes
    (found or not), and ``HttpError(400, "bare-cr-or-lf")`` as soon as a CR or LF outside a
    CRLF is there: such a head can never end, and waiting would hold the peer until a timeout.
    A client side answers both with its own 502."""
    i = buf.find(b"\r\n\r\n", scan)
    if i >= 0:
        if i > limit:
            raise HttpError(431, "header-too-large")
        return i + 4, 0
    if BARE_CR_OR_LF.search(buf, scan) is not None:  # the bytes not searched yet
        raise HttpError(400, "bare-cr-or-lf", BARE_CR_OR_LF_DETAIL)
    n = len(buf) - 3
    if n > limit:
        raise HttpError(431, "header-too-large")
    return -1, n if n > 0 else 0


class Connection:
    """One side of an HTTP/1.1 connection: ``role`` is SERVER (the peer sends requests) or
    CLIENT (the peer sends responses to the requests given to :meth:`send_request`).

    ``limits`` as for the head parsers; ``special`` (server side) a pattern from
    ``http1.request_special_re`` for the common route of ``parse_request_head``; ``max_body``
    the largest request body (server side; 413 over it). See the module docstring for the loop.
    """

    __slots__ = (
        "role",
        "limits",
        "special",
        "max_body",
        "_buf",
        "_scan",
        "_eof",
        "_reader",
        "_methods",
        "_state",
        "_error",
        "_keep_alive",
    )
    _reader: BodyReader  # the message being read (set with its head)
    _keep_alive: bool  # whether another message may follow it

    def __init__(
        self,
        role: str,
        limits: Limits = DEFAULT_LIMITS,
        *,
        special: re.Pattern[bytes] | None = None,
        max_body: int | None = None,
    ) -> None:
        if role not in (SERVER, CLIENT):
            raise ValueError(f"role must be {SERVER!r} or {CLIENT!r}")
        self.role = role
        self.limits = limits
        self.special = special
        self.max_body = max_body
        self._buf = b""
        self._scan = 0  # _head: where the search for the end of the head resumes
        self._eof = False
        self._methods: deque[bytes] = deque()
        self._state = _HEAD
        self._error: HttpError | None = None

    def send_request(self, method: bytes) -> None:
        """Client side: a request with ``method`` was written; its response is read next."""
        if self.role != CLIENT:
            raise RuntimeError("send_request is for the client side")
        self._methods.append(method)

    def receive_data(self, data: bytes) -> None:
        """Bytes from the peer; ``b""`` when it closed its side."""
        if self._eof:
            if data:
                raise RuntimeError("data after the end of the stream")
            return
        if data:
            self._buf += data
        else:
            self._eof = True

    @property
    def trailing_data(self) -> tuple[bytes, bool]:
        """The bytes received and not used (after a 101, or after a message that closes), and
        whether the peer closed."""
        return self._buf, self._eof

    def next_event(self) -> object:
        """The next event: Request or Response (a head), Data, EndOfMessage, NEED_DATA, PAUSED
        or ConnectionClosed. Raises HttpError on anything refused (and again on every call
        after that)."""
        if self._error is not None:
            raise self._error
        try:
            state = self._state
            if state == _HEAD:
                return self._head()
            if state == _BODY:
                return self._body()
            return PAUSED
        except HttpError as e:
            self._error = e
            raise

    def _head(self) -> object:
        buf = self._buf
        server = self.role == SERVER
        if not server and not self._methods:
            if buf:
                raise HttpError(502, "unsolicited-response")
            return ConnectionClosed() if self._eof else NEED_DATA
        try:
            end, self._scan = head_end(buf, self._scan, self.limits.max_header_bytes)
        except HttpError as e:
            if server:
                raise
            raise HttpError(
                502,
                "upstream-header-too-large" if e.status == 431 else "bad-upstream-response",
                e.reason if e.status == 400 else "",
            ) from None
        if end < 0:
            if not self._eof:
                return NEED_DATA
            if not buf:
                return ConnectionClosed()
            raise HttpError(400, "incomplete-head") if server else HttpError(502, "upstream-incomplete-head")
        head = buf[:end]
        self._buf = buf[end:]
        if server:
            req = parse_request_head(head, self.limits, self.special)
            self._reader = BodyReader(req.framing, limit=self.max_body)
            self._keep_alive = req.keep_alive
            self._state = _BODY
            return Request(req)
        resp = parse_response_head(head, self._methods[0], self.limits)
        if resp.status < 200:  # interim: the final response follows, but not after a 101
            if resp.status == 101:
                self._methods.popleft()
                self._state = _PAUSED
            return Response(resp)
        self._methods.popleft()
        self._reader = BodyReader(resp.framing)
        self._keep_alive = resp.keep_alive
        self._state = _BODY
        return Response(resp)

    def _body(self) -> object:
        reader = self._reader
        if not reader.done:
            if self._buf:
                data, self._buf = self._buf, b""
                out, done = self._feed(data)
            elif self._eof:
                out, done = b"", self._feed(b"")[1]  # refused unless read until close
            else:
                return NEED_DATA
            if done:
                self._buf = reader.unused
            if out:
                return Data(out)  # and EndOfMessage on the next call when done
            if not done:
                return NEED_DATA
        self._state = _HEAD if self._keep_alive else _PAUSED
        return EndOfMessage(reader.trailers)

    def _feed(self, data: bytes) -> tuple[bytes, bool]:
        if self.role == SERVER:
            return self._reader.feed(data)
        try:
            return self._reader.feed(data)
        except HttpError as e:  # the upstream's body: 502 with the body's reason
            raise HttpError(502, e.reason) from None
