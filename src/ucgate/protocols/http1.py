"""Strict HTTP/1.1 message-head parsing and body framing, sans-I/O.

The gateway sits at the edge of the network, so this parser is deliberately stricter than
RFC 9112 allows a recipient to be: wherever the RFC permits a recipient to "reject or repair",
we reject, because a repaired message may be read differently by the front end behind us
(request smuggling). Everything here works on bytes the caller already read; nothing does I/O.

Rejections raise :class:`HttpError` with the status to answer (400, 413, 431, 501, 505) and a
short reason code that goes to the log line. The caller then answers and closes the connection.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from ..errors import UcgateError

# --- limits -------------------------------------------------------------------------------
# Kerberos tickets of users in many groups reach MaxTokenSize 48000 bytes, 64000 in base64
# (Microsoft KB 327825 raises IIS MaxFieldLength/MaxRequestBytes to 65534 for this); nginx's
# large_client_header_buffers default (4×8k) would refuse them. 64 KiB covers one such header.
DEFAULT_MAX_HEADER_BYTES = 64 * 1024
# Apache LimitRequestFields defaults to 100; real SfB/EAS clients send < 25.
DEFAULT_MAX_HEADER_COUNT = 100
# IIS MaxUrl is 4096 and MaxQueryString 2048 (http.sys allows 16 KiB overall); UCWA and the EAS
# query are far below. 8 KiB leaves room without inviting abuse.
DEFAULT_MAX_TARGET_BYTES = 8 * 1024
# A chunk-size line: 16 hex digits cover 2**64; extensions are dropped, cap the whole line.
MAX_CHUNK_LINE_BYTES = 4096
MAX_CHUNK_SIZE_DIGITS = 16
# Content-Length above 2**63 is nonsense; 19 digits keeps int() cheap and bounded.
MAX_CONTENT_LENGTH_DIGITS = 19


class HttpError(UcgateError):
    """A message we refuse. ``status`` is what to answer, ``reason`` a short code for logs."""

    def __init__(self, status: int, reason: str, detail: str = "") -> None:
        super().__init__(reason, detail, message=f"{status} {reason}: {detail}" if detail else f"{status} {reason}")
        self.status = status


# RFC 9110 §5.6.2 token; RFC 9112 §3 request-line; field-value chars (§5.5) without obs-text
# controls. obs-text (0x80-0xFF) is allowed in values (Lync clients send UTF-8 display names in
# some headers) but never CR, LF, NUL or other controls.
_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_TOKEN_RE = re.compile(_TOKEN)
_FIELD_VALUE_RE = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")
_TARGET_RE = re.compile(rb"[\x21-\x7e]+")
_REQUEST_LINE_RE = re.compile(rb"(" + _TOKEN + rb") ([^ ]+) HTTP/(\d)\.(\d)")
_STATUS_LINE_RE = re.compile(rb"HTTP/(\d)\.(\d) ([1-9]\d\d)(?: ([\t\x20-\x7e\x80-\xff]*))?")
_CHUNK_LINE_RE = re.compile(
    rb"([0-9A-Fa-f]{1,%d})" % MAX_CHUNK_SIZE_DIGITS
    + rb"((?:[ \t]*;[ \t]*"
    + _TOKEN
    + rb"(?:[ \t]*=[ \t]*(?:"
    + _TOKEN
    + rb'|"(?:[\t\x20\x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t\x20-\x7e\x80-\xff])*"))?)*)'
)
# The fast path: every field line of a well-formed header block, by the same rules as
# _parse_fields, in one findall (linear time): a match starts at a line start (MULTILINE ^),
# spans exactly one line (values cannot hold CR or LF) and yields (name, value without OWS); so
# the block is well-formed exactly when there are as many matches as lines.
_FIELD_LINE_RE = re.compile(
    rb"^(" + _TOKEN + rb"):[\t ]*((?:[\t\x20-\x7e\x80-\xff]*[\x21-\x7e\x80-\xff])?)[\t ]*\r\n", re.M
)
# The request line with a well-formed target (checked apart only to name an error).
_REQUEST_LINE_TARGET_RE = re.compile(rb"(" + _TOKEN + rb") ([\x21-\x7e]+) HTTP/(\d)\.(\d)")
_FRAMING_FIELDS = frozenset((b"content-length", b"transfer-encoding", b"host", b"connection", b"expect"))
_HOST_RE = re.compile(rb"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~!$&'()*+,;=%-]*)(?::\d{1,5})?")

# RFC 9110 §7.6.1 hop-by-hop fields, plus the non-standard ones proxies must not pass on.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)


@dataclass(slots=True)
class Framing:
    """How a message body is delimited (RFC 9112 §6)."""

    kind: str  # "none" | "length" | "chunked" | "close"
    length: int = 0


class _Fields:
    """The field list of a head, read from the head itself on first access when the common
    route parsed it (``_raw``; ``_headers`` None until then). Shared by both heads."""

    __slots__ = ("_headers", "_raw")
    _headers: list[tuple[bytes, bytes]] | None
    _raw: bytes | None

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        h = self._headers
        if h is None:
            h = self._headers = _common_fields(self._raw)
        return h

    @headers.setter
    def headers(self, value: list[tuple[bytes, bytes]]) -> None:
        self._headers = value


class RequestHead(_Fields):
    """A parsed request line and header section (RFC 9112 §3, §5).

    ``prefix``, ``authorization`` and ``prefix_authenticated`` are the common route's facts
    (see :func:`parse_request_head`): set when the head had the common shape, else None.
    ``headers`` (name as sent, value with OWS stripped) is read from the head on first access
    when the common route parsed it."""

    __slots__ = (
        "method",
        "target",
        "version",
        "_framing",
        "host",
        "keep_alive",
        "expect_continue",
        "connection_tokens",
        "prefix",
        "authorization",
        "prefix_authenticated",
    )

    def __init__(
        self,
        method: bytes,
        target: bytes,
        version: tuple[int, int],
        headers: list[tuple[bytes, bytes]] | None,
        framing: Framing | None,
        host: bytes,
        keep_alive: bool,
        expect_continue: bool = False,
        connection_tokens: frozenset[bytes] = frozenset(),
        prefix: bytes | None = None,
        authorization: bytes | None = None,
        prefix_authenticated: bytes | None = None,
        raw: bytes | None = None,
    ) -> None:
        self.method = method
        self.target = target
        self.version = version
        self._headers = headers
        self._framing = framing  # None: the common route's, no body (made on first access)
        self.host = host
        self.keep_alive = keep_alive
        self.expect_continue = expect_continue
        self.connection_tokens = connection_tokens
        # the head to forward, without its final empty line and without the Connection field
        self.prefix = prefix
        # the one Authorization field's value (OWS stripped), and ``prefix`` without that field
        self.authorization = authorization
        self.prefix_authenticated = prefix_authenticated
        self._raw = raw  # the head, for ``headers`` on first access (common route only)

    @property
    def framing(self) -> Framing:
        f = self._framing
        if f is None:
            f = self._framing = Framing("none")
        return f

    @framing.setter
    def framing(self, value: Framing) -> None:
        self._framing = value

    def _key(self) -> tuple[object, ...]:
        return (
            self.method,
            self.target,
            self.version,
            self.headers,
            self.framing,
            self.host,
            self.keep_alive,
            self.expect_continue,
            self.connection_tokens,
            self.prefix,
            self.authorization,
            self.prefix_authenticated,
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RequestHead):
            return NotImplemented
        return self._key() == other._key()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"RequestHead{self._key()!r}"

    def get(self, name: bytes) -> bytes | None:
        """First value of header ``name`` (lower-case), or None."""
        if name == b"authorization" and self.prefix is not None:
            return self.authorization
        if name == b"host" and self.prefix is not None:
            return self.host
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None

    def get_all(self, name: bytes) -> list[bytes]:
        return [v for k, v in self.headers if k.lower() == name]


class ResponseHead(_Fields):
    """A parsed status line and header section (RFC 9112 §4).

    ``prefix`` (the head to send on, without its final empty line and without Connection; the
    upstream's Content-Length line stays) and ``length`` are the common route's facts (see
    :func:`parse_response_head`): set when the head had the common shape, else None."""

    __slots__ = (
        "version",
        "status",
        "reason",
        "_framing",
        "keep_alive",
        "connection_tokens",
        "prefix",
        "length",
    )

    def __init__(
        self,
        version: tuple[int, int],
        status: int,
        reason: bytes,
        headers: list[tuple[bytes, bytes]] | None,
        framing: Framing | None,
        keep_alive: bool,
        connection_tokens: frozenset[bytes] = frozenset(),
        prefix: bytes | None = None,
        length: int | None = None,
        raw: bytes | None = None,
    ) -> None:
        self.version = version
        self.status = status
        self.reason = reason
        self._headers = headers
        self._framing = framing  # None: the common route's, ``length`` (made on first access)
        self.keep_alive = keep_alive
        self.connection_tokens = connection_tokens
        self.prefix = prefix
        self.length = length
        self._raw = raw

    @property
    def framing(self) -> Framing:
        f = self._framing
        if f is None:
            assert self.length is not None
            f = self._framing = Framing("length", self.length)
        return f

    @framing.setter
    def framing(self, value: Framing) -> None:
        self._framing = value

    def _key(self) -> tuple[object, ...]:
        return (
            self.version,
            self.status,
            self.reason,
            self.headers,
            self.framing,
            self.keep_alive,
            self.connection_tokens,
            self.prefix,
            self.length,
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ResponseHead):
            return NotImplemented
        return self._key() == other._key()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"ResponseHead{self._key()!r}"

    def get(self, name: bytes) -> bytes | None:
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None


def _common_fields(raw: bytes | None) -> list[tuple[bytes, bytes]]:
    """The field list of a head the common route accepted (every line well-formed; its start
    line never matches: a method is followed by a space, "HTTP/1.1" holds a "/")."""
    assert raw is not None
    return _FIELD_LINE_RE.findall(raw)


@dataclass(frozen=True, slots=True)
class Limits:
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
    max_header_count: int = DEFAULT_MAX_HEADER_COUNT
    max_target_bytes: int = DEFAULT_MAX_TARGET_BYTES


DEFAULT_LIMITS = Limits()


def _split_lines(head: bytes) -> list[bytes]:
    """Split a header block that ends with CRLF CRLF into lines; bare CR or LF is an error.

    RFC 9112 §2.2 lets a recipient accept a bare LF as a line terminator; a front end that does
    not would see different header boundaries than we do, so we refuse it (and bare CR, which
    §2.2 says MUST be rejected or replaced).
    """
    if not head.endswith(b"\r\n\r\n"):
        raise HttpError(400, "bad-line-ending", "header section must end with CRLF CRLF")
    lines = head[:-4].split(b"\r\n")
    for line in lines:
        if b"\n" in line or b"\r" in line:
            raise HttpError(400, "bare-cr-or-lf", BARE_CR_OR_LF_DETAIL)
    return lines


# A CR not followed by LF, or an LF not preceded by CR: refused in a header section (RFC 9112
# §2.2). The streams search for it as bytes arrive, so that a bare one is refused at once
# (gateway/stream.py, protocols/http1conn.py), not at the header timeout.
BARE_CR_OR_LF = re.compile(rb"(?<!\r)\n|\r(?=[^\n])")
BARE_CR_OR_LF_DETAIL = "bare CR or LF in the header section"


def _head_lines(head: bytes) -> tuple[bytes, bytes]:
    """Split a head into its start line and its field block (every field line with its CRLF),
    with the checks of :func:`_split_lines` done by counting: every CR and LF is in a CRLF."""
    n = head.count(b"\r\n")
    if head.endswith(b"\r\n\r\n") and head.count(b"\r") == n and head.count(b"\n") == n:
        eol = head.index(b"\r\n")
        return head[:eol], head[eol + 2 : -2]
    lines = _split_lines(head)  # raises, naming what is wrong
    return lines[0], b"".join(line + b"\r\n" for line in lines[1:])


def _parse_field_block(block: bytes, limits: Limits) -> tuple[list[tuple[bytes, bytes]], dict[bytes, list[bytes]]]:
    """:func:`_parse_fields` of a field block, in one pass when the block is well-formed (the
    line-by-line checks then run only to name the error)."""
    n = block.count(b"\r\n")
    if n > limits.max_header_count:
        raise HttpError(431, "too-many-headers", f"more than {limits.max_header_count} header fields")
    headers = _FIELD_LINE_RE.findall(block)
    if len(headers) != n:
        return _parse_fields(block[:-2].split(b"\r\n") if block else [], limits)
    framing_fields: dict[bytes, list[bytes]] = {}
    for name, value in headers:
        lname = name.lower()
        if lname in _FRAMING_FIELDS:
            if lname in framing_fields:
                framing_fields[lname].append(value)
            else:
                framing_fields[lname] = [value]
    return headers, framing_fields


def _parse_fields(lines: list[bytes], limits: Limits) -> tuple[list[tuple[bytes, bytes]], dict[bytes, list[bytes]]]:
    if len(lines) > limits.max_header_count:
        raise HttpError(431, "too-many-headers", f"more than {limits.max_header_count} header fields")
    headers: list[tuple[bytes, bytes]] = []
    framing_fields: dict[bytes, list[bytes]] = {}
    for line in lines:
        if not line:
            raise HttpError(400, "empty-header-line")
        if line[0] in b" \t":
            # RFC 9112 §5.2: obs-fold; a server MUST reject it (or replace it) — we reject.
            raise HttpError(400, "obs-fold", "obsolete line folding in header section")
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN_RE.fullmatch(name):
            # Also catches whitespace between the name and the colon (RFC 9112 §5.1 MUST 400).
            raise HttpError(400, "bad-header-name", "malformed header field name")
        value = value.strip(b" \t")
        if not _FIELD_VALUE_RE.fullmatch(value):
            raise HttpError(400, "bad-header-value", f"control character in {name[:40]!r}")
        lname = name.lower()
        if lname in (b"content-length", b"transfer-encoding", b"host", b"connection", b"expect"):
            framing_fields.setdefault(lname, []).append(value)
        headers.append((name, value))
    return headers, framing_fields


_NO_TOKENS: frozenset[bytes] = frozenset()
# the values nearly every Connection field has
_COMMON_TOKENS = {
    v: frozenset((v.lower(),)) for v in (b"keep-alive", b"Keep-Alive", b"close", b"Close", b"upgrade", b"Upgrade")
}


def _connection_tokens(values: list[bytes]) -> frozenset[bytes]:
    if not values:
        return _NO_TOKENS
    if len(values) == 1:
        common = _COMMON_TOKENS.get(values[0])
        if common is not None:
            return common
        if _TOKEN_RE.fullmatch(values[0]):  # one token
            return frozenset((values[0].lower(),))
    tokens: set[bytes] = set()
    for v in values:
        for t in v.split(b","):
            t = t.strip(b" \t").lower()
            if t:
                if not _TOKEN_RE.fullmatch(t):
                    raise HttpError(400, "bad-connection-header")
                tokens.add(t)
    return frozenset(tokens)


def _content_length(values: list[bytes]) -> int:
    # RFC 9112 §6.3: several or comma-separated values may be collapsed if identical — we refuse
    # them outright: a front end that picks another copy would frame the body differently.
    if len(values) != 1:
        raise HttpError(400, "duplicate-content-length")
    v = values[0]
    # bytes.isdigit() is ASCII 0-9 only, as \d in a bytes pattern
    if not v.isdigit() or len(v) > MAX_CONTENT_LENGTH_DIGITS:
        raise HttpError(400, "bad-content-length")
    return int(v)


def _request_framing(method: bytes, version: tuple[int, int], fields: dict[bytes, list[bytes]]) -> Framing:
    te = fields.get(b"transfer-encoding")
    cl = fields.get(b"content-length")
    if te is not None:
        if cl is not None:
            # RFC 9112 §6.1: "ought to be handled as an error"; the classic CL.TE/TE.CL vector.
            raise HttpError(400, "content-length-and-transfer-encoding")
        if version < (1, 1):
            raise HttpError(400, "transfer-encoding-in-http10")
        if len(te) != 1 or te[0].lower() != b"chunked":
            # Only a lone "chunked" is accepted; "gzip, chunked", "chunked, chunked", "xchunked",
            # "chunked;" or a second TE header are the TE.TE obfuscations.
            if any(t.strip(b" \t").lower() == b"chunked" for v in te for t in v.split(b",")):
                raise HttpError(400, "bad-transfer-encoding")
            raise HttpError(501, "unsupported-transfer-encoding")
        return Framing("chunked")
    if cl is not None:
        n = _content_length(cl)
        return Framing("length", n) if n else Framing("none")
    return Framing("none")


_V11 = (1, 1)
_VERSIONS = {b"1": _V11, b"0": (1, 0)}  # minor version -> (1, minor), shared tuples


def parse_request_head(
    head: bytes,
    limits: Limits = DEFAULT_LIMITS,
    special: re.Pattern[bytes] | None = None,
    *,
    full: bool = False,
) -> RequestHead:
    """Parse a request head (request line + fields + the empty line).

    Args:
        head: bytes up to and including the CRLF CRLF that ends the header section. Leading
            CRLFs (RFC 9112 §2.2 "SHOULD ignore at least one empty line") are skipped.
        limits: size and count limits.
        special: with a pattern from :func:`request_special_re`, a head in the common shape
            (an origin-form HTTP/1.1 request with one valid Host, no body, no Expect, no
            hop-by-hop field but one Connection of "keep-alive" or "close", none of the fields
            ``special`` adds, at most one Authorization) takes the common route: one regex
            checks it by the same rules, the result has ``prefix`` (and ``authorization``,
            ``prefix_authenticated`` with an Authorization field) set and its ``headers`` are
            read on first access. Any other head takes the full route (``prefix`` None).
        full: the full route for every head (the tests hold the two routes to one result).
    Returns:
        the :class:`RequestHead`.
    Raises:
        HttpError: on anything malformed, ambiguous or over a limit.
    """
    if special is not None and not full:
        common = common_request(head, limits, special)
        if common is not None:
            return common
    if len(head) > limits.max_header_bytes:
        raise HttpError(431, "header-too-large")
    while head.startswith(b"\r\n"):
        head = head[2:]
    start_line, block = _head_lines(head)
    m = _REQUEST_LINE_TARGET_RE.fullmatch(start_line) or _REQUEST_LINE_RE.fullmatch(start_line)
    if m is None:
        raise HttpError(400, "bad-request-line")
    method, target, major, minor = m.groups()
    if major != b"1":
        raise HttpError(505, "http-version-not-supported")
    version = _VERSIONS.get(minor) or (1, int(minor))
    if len(target) > limits.max_target_bytes:
        raise HttpError(414, "uri-too-long")
    if m.re is _REQUEST_LINE_RE and not _TARGET_RE.fullmatch(target):
        raise HttpError(400, "bad-request-target")
    headers, fields = _parse_field_block(block, limits)
    hosts = fields.get(b"host")
    if version >= (1, 1) and (not hosts or len(hosts) != 1):
        raise HttpError(400, "missing-or-duplicate-host")  # RFC 9112 §3.2
    host = hosts[0] if hosts else b""
    if hosts and (len(hosts) != 1 or not _HOST_RE.fullmatch(host)):
        raise HttpError(400, "bad-host")
    framing = _request_framing(method, version, fields)
    conn = _connection_tokens(fields.get(b"connection", []))
    keep_alive = (b"close" not in conn) if version >= (1, 1) else (b"keep-alive" in conn)
    expect = fields.get(b"expect")
    expect_continue = False
    if expect:
        if len(expect) != 1 or expect[0].lower() != b"100-continue":
            raise HttpError(417, "unsupported-expectation")
        expect_continue = version >= (1, 1)
    # positional: keyword arguments cost measurably on this per-request path
    return RequestHead(method, target, version, headers, framing, host, keep_alive, expect_continue, conn)


def parse_response_head(
    head: bytes, request_method: bytes, limits: Limits = DEFAULT_LIMITS, *, full: bool = False
) -> ResponseHead:
    """Parse a response head from the upstream.

    The upstream is on our side of the network but we still refuse ambiguity: a response that
    frames its body two ways could desynchronise the pooled connection.

    A head in the common shape (a 2xx-5xx HTTP/1.1 response, not 204 or 304, not to HEAD, with a
    reason phrase, one canonical Content-Length, no hop-by-hop field but one Connection of
    "keep-alive" or "close") takes the common route: ``prefix`` and ``length`` are set and
    ``headers`` is read on first access. Otherwise (or with ``full``) the full route, where
    ``prefix`` and ``length`` are None.

    Raises:
        HttpError: status 502 for anything malformed.
    """
    if not full:
        common = common_response(head, request_method, limits)
        if common is not None:
            return common
    try:
        if len(head) > limits.max_header_bytes:
            raise HttpError(502, "upstream-header-too-large")
        start_line, block = _head_lines(head)
        m = _STATUS_LINE_RE.fullmatch(start_line)
        if m is None:
            raise HttpError(502, "bad-status-line")
        major, minor, status_b, reason = m.groups()
        if major != b"1":
            raise HttpError(502, "bad-upstream-version")
        version = _VERSIONS.get(minor) or (1, int(minor))
        status = int(status_b)
        if reason is None:
            reason = b""
        headers, fields = _parse_field_block(block, limits)
    except HttpError as e:
        raise HttpError(502, "bad-upstream-response", e.reason) from None
    conn = _connection_tokens(fields.get(b"connection", []))
    keep_alive = (b"close" not in conn) if version >= (1, 1) else (b"keep-alive" in conn)
    te = fields.get(b"transfer-encoding")
    cl = fields.get(b"content-length")
    if request_method == b"HEAD" or status < 200 or status in (204, 304):
        framing = Framing("none")
    elif te is not None:
        if cl is not None or len(te) != 1 or te[0].lower() != b"chunked":
            raise HttpError(502, "bad-upstream-framing")
        framing = Framing("chunked")
    elif cl is not None:
        try:
            framing = Framing("length", _content_length(cl))
        except HttpError:
            raise HttpError(502, "bad-upstream-content-length") from None
    else:
        framing = Framing("close")
        keep_alive = False
    return ResponseHead(version, status, reason, headers, framing, keep_alive, conn)


def parse_chunk_size_line(line: bytes) -> int:
    """Parse ``chunk-size [ chunk-ext ] CRLF`` (RFC 9112 §7.1); extensions are ignored.

    Args:
        line: the line including its CRLF.
    Raises:
        HttpError(400, "bad-chunk-size"): anything but hex digits and well-formed extensions —
        "0x10", "+10", " 10", "10 ", a bare LF, an empty size or more than 16 digits.
    """
    if len(line) > MAX_CHUNK_LINE_BYTES:
        raise HttpError(400, "chunk-line-too-long")
    if not line.endswith(b"\r\n"):
        raise HttpError(400, "bad-chunk-size", "chunk-size line must end with CRLF")
    m = _CHUNK_LINE_RE.fullmatch(line[:-2])
    if m is None:
        raise HttpError(400, "bad-chunk-size")
    return int(m.group(1), 16)


def check_trailer_line(line: bytes) -> bool:
    """Validate one trailer line (with CRLF). Returns True when it is the final empty line."""
    if line == b"\r\n":
        return True
    if not line.endswith(b"\r\n") or b"\r" in line[:-2] or b"\n" in line[:-2]:
        raise HttpError(400, "bad-trailer")
    body = line[:-2]
    if body[:1] in (b" ", b"\t"):
        raise HttpError(400, "obs-fold")
    name, colon, value = body.partition(b":")
    if not colon or not _TOKEN_RE.fullmatch(name):
        raise HttpError(400, "bad-trailer")
    if not _FIELD_VALUE_RE.fullmatch(value.strip(b" \t")):
        raise HttpError(400, "bad-trailer")
    return False


# --- field names the gateway owns -----------------------------------------------------------
# A front end does not always compare field names as HTTP does: CGI, WSGI and PHP map a name to a
# variable (HTTP_X_UCGATE_USER) with "-" and other punctuation turned into "_", and repeated
# variables are joined with ","; other frameworks trim or ignore punctuation. So a client field is
# taken for one of the gateway's own when its *squashed* name — lower-cased, every character that
# is not a letter or digit removed — starts with the squashed name of one of them: X_Ucgate_User,
# x.ucgate.user, XUcgateUser, X-Ucgate-User-2 are all X-Ucgate-User. Removing (not mapping to "_")
# also covers doubled, leading and missing separators. Such fields are dropped, never forwarded.

# Forwarding, client-address, routing and method-override fields: the gateway sets the first
# ones itself; the others are what IIS URL Rewrite, ARR and other front ends route or trust on.
OWNED_FIELDS = (
    b"forwarded",  # RFC 7239, and Forwarded-For/-Host...
    b"x-forwarded-",  # X-Forwarded-For/-Proto/-Host/-Server/-Port/-Prefix...
    b"x-ms-forwarded-",  # X-MS-Forwarded-Client-IP (Exchange, ARR)
    b"x-real-ip",
    b"x-client-ip",
    b"x-cluster-client-ip",
    b"true-client-ip",
    b"x-original-",  # X-Original-URL/-Host/-Method (IIS URL Rewrite, ARR)
    b"x-rewrite-",  # X-Rewrite-URL
    b"x-http-method",  # X-HTTP-Method and X-HTTP-Method-Override
    b"x-method-override",
)
_NOT_ALNUM = bytes(c for c in range(256) if not (0x30 <= c <= 0x39 or 0x61 <= c <= 0x7A))


def squash_field_name(name: bytes) -> bytes:
    """``name`` lower-cased, with every character but ASCII letters and digits removed."""
    return name.lower().translate(None, _NOT_ALNUM)


class OwnedFields:
    """The client field names the gateway drops as its own: those whose squashed name starts with
    the squashed form of one of ``names`` (see OWNED_FIELDS). ``name in owned`` for one name (as
    sent); :meth:`pattern` for a lower-cased head (:func:`request_special_re`)."""

    __slots__ = ("prefixes", "_seen")

    def __init__(self, names: Iterable[bytes]) -> None:
        prefixes = {squash_field_name(n) for n in names}
        if b"" in prefixes:
            raise ValueError("an owned field name needs a letter or digit")
        self.prefixes = tuple(sorted(prefixes))
        self._seen: dict[bytes, bool] = {}  # name as sent -> owned; names repeat across requests

    def __contains__(self, name: bytes) -> bool:
        hit = self._seen.get(name)
        if hit is None:
            hit = squash_field_name(name).startswith(self.prefixes)
            if len(self._seen) >= 4096:
                self._seen.clear()
            self._seen[name] = hit
        return hit

    def pattern(self) -> bytes:
        """A regex (for a lower-cased head, right after a line's LF) matching exactly the field
        names ``in`` this set: each prefix's letters with any token punctuation around them."""
        gap = rb"[^a-z0-9:\r\n]*"

        def trie(words: list[bytes]) -> bytes:  # one alternative per next letter: fails fast
            if any(not w for w in words):  # a shorter prefix already covers the longer ones
                return b""
            alts = [
                re.escape(bytes([c])) + trie([w[1:] for w in words if w[0] == c]) for c in sorted({w[0] for w in words})
            ]
            return gap + (alts[0] if len(alts) == 1 else b"(?:" + b"|".join(alts) + b")")

        return trie(list(self.prefixes)) + rb"[^:\r\n]*"


def forwardable_headers(
    headers: list[tuple[bytes, bytes]], connection_tokens: frozenset[bytes], drop: frozenset[bytes]
) -> list[tuple[bytes, bytes]]:
    """Headers to pass on: minus hop-by-hop (RFC 9110 §7.6.1), those named in Connection,
    framing (we re-frame), and anything in ``drop`` (lower-case names)."""
    out = []
    for name, value in headers:
        lname = name.lower()
        if lname in HOP_BY_HOP or lname in connection_tokens or lname == b"content-length" or lname in drop:
            continue
        out.append((name, value))
    return out


def not_forwarded(drop: frozenset[bytes] = frozenset()) -> frozenset[bytes]:
    """The names :func:`forwardable_headers` removes besides Connection's tokens: hop-by-hop,
    Content-Length and ``drop`` (lower-case). For :func:`serialize_forwarded`."""
    return HOP_BY_HOP | {b"content-length"} | drop


def serialize_forwarded(
    start_line: bytes,
    headers: list[tuple[bytes, bytes]],
    connection_tokens: frozenset[bytes],
    skip: frozenset[bytes],
    extra: list[tuple[bytes, bytes]],
) -> bytes:
    """``serialize_head(start_line, forwardable_headers(headers, connection_tokens, drop) +
    extra)`` in one pass, where ``skip`` is ``not_forwarded(drop)``."""
    parts = [start_line]
    for name, value in headers:
        lname = name.lower()
        if lname not in skip and lname not in connection_tokens:
            parts.append(name + b": " + value)
    for name, value in extra:
        parts.append(name + b": " + value)
    parts.append(b"\r\n")
    return b"\r\n".join(parts)


# --- the fast path's heads -------------------------------------------------------------------
# The common request and response heads are checked and rewritten here without materialising its field list
# (gateway/session.py's fast path; parsing and re-serialising both heads was ~60% of its Python
# time). One regex validates the whole head by the rules the full parser applies (start line,
# tokens, field-value characters, CRLF only); the fields that decide framing are then
# found in a lower-cased copy, where b"\nname:" can only match at the start of a line (no value
# holds a LF). Anything not in the common shape returns None and the caller runs the full
# parser, which also names the error. tests/protocols/test_http1.py holds the two to the same
# results on generated heads.

_SIMPLE_RESPONSE_RE = re.compile(
    rb"HTTP/1\.1 ([2-5]\d\d) ([\t\x20-\x7e\x80-\xff]+)\r\n"
    rb"(?:" + _TOKEN + rb":[\t\x20-\x7e\x80-\xff]*\r\n)*\r\n"
)
# every field that frames the body or is hop-by-hop, with its value (OWS on the left dropped)
_RESPONSE_SPECIAL_RE = re.compile(
    rb"\n("
    + b"|".join(re.escape(n) for n in sorted(HOP_BY_HOP | {b"content-length"}, key=len, reverse=True))
    + rb"):[\t ]*([^\r]*)"
)


_SIMPLE_REQUEST_RE = re.compile(
    rb"(" + _TOKEN + rb") (/[\x21-\x7e]*) HTTP/1\.1\r\n"
    rb"(?:" + _TOKEN + rb":[\t\x20-\x7e\x80-\xff]*\r\n)*\r\n"
)


def request_special_re(drop: frozenset[bytes], owned: OwnedFields | None = None) -> re.Pattern[bytes]:
    """The pattern :func:`common_request` finds the fields that matter with: framing, Host,
    Expect, Authorization, hop-by-hop, ``drop`` (lower-case names the caller never forwards) and
    any name in ``owned`` (the caller drops those too)."""
    names = HOP_BY_HOP | {b"content-length", b"host", b"expect", b"authorization"} | drop
    alts = b"|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
    if owned is not None:
        alts += b"|" + owned.pattern()
    return re.compile(rb"\n(" + alts + rb"):[\t ]*([^\r]*)")


def common_request(head: bytes, limits: Limits, special: re.Pattern[bytes]) -> RequestHead | None:
    """The common route of :func:`parse_request_head`, for a caller that falls back to the full
    route itself (the gateway's fast path: no second call frame on the hottest path). ``head``
    as a :class:`RequestHead` with ``prefix`` set when it is an origin-form HTTP/1.1 request with one
    valid Host, no body, no Expect, no hop-by-hop field but one Connection of "keep-alive" or
    "close", and none of the fields ``special`` (from :func:`request_special_re`) adds; else None
    (then ``parse_request_head`` decides). One Authorization field is allowed: its value and the
    prefix without it are kept for an authenticated forward."""
    if len(head) > limits.max_header_bytes:
        return None
    m = _SIMPLE_REQUEST_RE.fullmatch(head)
    if m is None:
        return None
    raw = head
    method, target = m.groups()
    if len(target) > limits.max_target_bytes or head.count(b"\r\n") - 2 > limits.max_header_count:
        return None
    low = head.lower()
    host = False
    close = connection = False
    authz: bytes | None = None
    conn_tokens = _NO_TOKENS
    for name, value in special.findall(low):
        if name == b"host" and not host:
            host = True
        elif name == b"authorization" and authz is None:
            authz = value  # lower-cased: the value as sent is taken from head below
        elif name == b"connection" and not connection:
            tokens = _COMMON_TOKENS.get(value.rstrip(b" \t"))
            if tokens is None:
                return None
            close = b"close" in tokens
            conn_tokens = tokens
            connection = True
        else:  # a second copy, a body, Expect, a field the caller drops...: the full parser
            return None
    if not host:
        return None
    i = low.index(b"\nhost:") + 6
    host_value = head[i : head.index(b"\r", i)].strip(b" \t")  # as sent: lower() was for finding
    if not _HOST_RE.fullmatch(host_value):
        return None
    without_authz = None
    if authz is not None:
        a = low.index(b"\nauthorization:") + 1
        a_end = head.index(b"\r\n", a) + 2
        authz = head[a + 14 : a_end - 2].strip(b" \t")
    if connection:
        i = low.index(b"\nconnection:") + 1
        end = head.index(b"\r\n", i) + 2
        if authz is not None and a > i:
            a, a_end = a - (end - i), a_end - (end - i)
        head = head[:i] + head[end:]
    if authz is not None:
        without_authz = head[:a] + head[a_end:-2]
    return RequestHead(
        method,
        target,
        _V11,
        None,
        None,
        host_value,
        not close,
        False,
        conn_tokens,
        head[:-2],
        authz,
        without_authz,
        raw,
    )


def common_response(head: bytes, request_method: bytes, limits: Limits = DEFAULT_LIMITS) -> ResponseHead | None:
    """The common route of :func:`parse_response_head`, for a caller that falls back itself:
    ``head`` as a :class:`ResponseHead` with ``prefix`` and ``length`` set when it is a 2xx-5xx HTTP/1.1 response (not 204 or
    304, not to HEAD) with a reason phrase, one Content-Length, no hop-by-hop field but one
    Connection of "keep-alive" or "close"; else None (then ``parse_response_head`` decides)."""
    if request_method == b"HEAD" or len(head) > limits.max_header_bytes:
        return None
    m = _SIMPLE_RESPONSE_RE.fullmatch(head)
    if m is None:
        return None
    raw = head
    status_b, reason = m.groups()
    status = int(status_b)
    if status == 204 or status == 304 or head.count(b"\r\n") - 2 > limits.max_header_count:
        return None
    low = head.lower()
    length = -1
    close = connection = False
    conn_tokens = _NO_TOKENS
    for name, value in _RESPONSE_SPECIAL_RE.findall(low):
        value = value.rstrip(b" \t")
        if name == b"content-length" and length < 0:
            # canonical digits only: the line is passed on as it is
            if not value.isdigit() or len(value) > MAX_CONTENT_LENGTH_DIGITS or (value[0] == 0x30 and len(value) > 1):
                return None
            length = int(value)
        elif name == b"connection" and not connection:
            tokens = _COMMON_TOKENS.get(value)
            if tokens is None:
                return None
            close = b"close" in tokens
            conn_tokens = tokens
            connection = True
        else:  # a second copy, Keep-Alive, Transfer-Encoding, Upgrade...: the full parser
            return None
    if length < 0:
        return None
    if connection:
        i = low.index(b"\nconnection:") + 1
        head = head[:i] + head[head.index(b"\r\n", i) + 2 :]
    return ResponseHead(_V11, status, reason, None, None, not close, conn_tokens, head[:-2], length, raw)


def serialize_head(start_line: bytes, headers: list[tuple[bytes, bytes]]) -> bytes:
    parts = [start_line]
    for name, value in headers:
        parts.append(name + b": " + value)
    parts.append(b"")
    parts.append(b"")
    return b"\r\n".join(parts)


def encode_chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"

REASONS = {
    100: b"Continue",
    200: b"OK",
    400: b"Bad Request",
    401: b"Unauthorized",
    403: b"Forbidden",
    404: b"Not Found",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    413: b"Content Too Large",
    414: b"URI Too Long",
    417: b"Expectation Failed",
    429: b"Too Many Requests",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    501: b"Not Implemented",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
    505: b"HTTP Version Not Supported",
}
