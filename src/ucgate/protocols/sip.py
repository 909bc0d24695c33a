"""SIP (RFC 3261) over a TLS stream: message framing, header parsing, who and which device. Sans-I/O.

The gateway relays SIP between clients and the Access Edge. MS-SIPAE signs messages end to end
(the signature covers Call-ID, CSeq, From, To, Expires... as they appear, MS-SIPAE 3.2.5.2), so
the relay may inspect and refuse a message but never rewrite one: every :class:`SipMessage`
keeps the exact bytes it was framed from (:attr:`SipMessage.raw`), and those bytes are what goes
on. That makes a parser differential the one thing to avoid: wherever RFC 3261 lets a recipient
accept something two parsers could read differently, we refuse it, as ``http1.py`` does:

* CRLF line endings only: a bare CR or LF anywhere in a head is refused as soon as it arrives
  (RFC 3261 7.5 leaves a bare LF to the lenient; a front end reading it as a line end would see
  other header boundaries than ours);
* ``Content-Length`` is required (RFC 3261 18.3: MUST over stream transports, and the only
  framing there is) and must appear exactly once, counting its compact form ``l``; digits only;
* no line folding (RFC 3261 7.3.1 allows it; we refuse it), no whitespace before the colon
  (7.3.1 allows it; no client we know sends it), header names are RFC 3261 25.1 tokens, values
  hold no NUL or other controls and are UTF-8 (RFC 3261 7.3.1 TEXT-UTF8);
* the fields that say who and what a message is — From, To, Call-ID, CSeq, Content-Length,
  Content-Type, Max-Forwards, Expires, User-Agent — appear at most once each (full and compact
  forms together), and Via, From, To, Call-ID and CSeq at least once (RFC 3261 8.1.1); From and
  To parse strictly (:func:`parse_name_addr`), and a request's CSeq method is its own
  (RFC 3261 8.1.1.5);
* size limits (:class:`Limits`) are checked as bytes arrive, before a message is complete.

Keep-alives (RFC 5626 3.5.1): between messages a client sends the "ping" CRLF CRLF and a server
answers with the "pong" CRLF (RFC 3261 7.5 also says CRLFs before a start line are ignored). The
framer reports **each CRLF between messages as one** :class:`KeepAlive` event, as soon as it
arrives, with ``run`` counting the CRLFs since the last message: so a ping is two events in a
row (``run`` 2, 4, ...), a pong one. Pairing them inside the framer would hold a pong back until
the next byte arrives; reporting them one by one keeps the events the same however the stream
is split. The relay answers or forwards them; the framer itself never writes.

Everything raises :class:`SipError` (a ``reason`` code for the log, the SIP ``status`` to
answer); nothing else escapes the parsers, whatever the bytes. After an error a framer stays
failed: the connection is to be answered (when possible) and closed.

The parts for *who* and *which device* follow the framer: :meth:`SipMessage.registered_user`
(the address of record a REGISTER names in From and To), and :func:`sip_device_facts` (the
device id from the Contact's ``+sip.instance``, checked against the From's ``epid`` as MS-SIPAE
3.3.5.2 requires, and the client kind from User-Agent). The MS-SIPAE authentication fields are
in :mod:`ucgate.protocols.sipauth`.

References: RFC 3261 (sections cited per rule), RFC 5626 3.5.1 (keep-alive), [MS-SIPRE] 2.2.5
and 3.2 (``+sip.instance``, epid), [MS-SIPAE] 3.3.5.2 (endpoint identifiers).
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import UcgateError
from .devices import DeviceFacts, classify_user_agent, normalise_device_id

__all__ = [
    "COMPACT_FORMS",
    "DEFAULT_LIMITS",
    "CSeq",
    "HeaderField",
    "KeepAlive",
    "Limits",
    "NameAddr",
    "SipClient",
    "SipError",
    "SipFramer",
    "SipMessage",
    "SipUri",
    "Via",
    "instance_from_epid",
    "parse_contacts",
    "parse_message",
    "parse_name_addr",
    "parse_sip_uri",
    "parse_via",
    "sip_client",
    "sip_device_facts",
]

# --- limits -------------------------------------------------------------------------------
# The largest SIP messages of an SfB deployment are the server's: the roaming-contacts NOTIFY of
# a user near Lync Server's 1000-contact maximum, in-band provisioning answers. The SER-lineage
# proxies (Kamailio, OpenSIPS) read one TCP message into a 65535-byte buffer (TCP_BUF_SIZE /
# BUF_SIZE), which is what such NOTIFYs outgrow (SIPp pull request 422 raised its buffers for
# exactly those "big RLS contact list" NOTIFYs over TLS). 1 MiB is far above them and bounds
# what one connection can make us buffer.
DEFAULT_MAX_MESSAGE_BYTES = 1024 * 1024
# One head may carry a Kerberos gssapi-data of a user in many groups: MaxTokenSize 48000 bytes
# is 64000 in base64 (Microsoft KB 327825, the same budget http1.py gives one HTTP header); the
# rest of a REGISTER head is < 2 KiB. 96 KiB holds one such token and ~30 KiB of other fields.
DEFAULT_MAX_HEAD_BYTES = 96 * 1024
# Any other line (start line, Via, Record-Route with Lync's ms-route-sig, ms-diagnostics) is
# < 1 KiB in practice; 8 KiB is Apache's LimitRequestFieldSize (8190) and nginx's
# large_client_header_buffers line size.
DEFAULT_MAX_LINE_BYTES = 8 * 1024
# The authentication fields carry gssapi-data: the 64000 base64 characters above plus realm,
# targetname, opaque, version and the signature parameters.
DEFAULT_MAX_AUTH_LINE_BYTES = 64 * 1024 + 1024
# Apache LimitRequestFields defaults to 100; a Lync REGISTER has ~15 fields, the busiest
# answers we know (MS-OCPSTN 4.7.2.1's 200 OK, seven Supported lines) ~30.
DEFAULT_MAX_HEADER_COUNT = 100
# Content-Length: 10 digits hold any length the message limit allows; int() stays cheap.
MAX_CONTENT_LENGTH_DIGITS = 10
# RFC 3261 8.1.1.5: "The sequence number value MUST be expressible as a 32-bit unsigned integer".
MAX_CSEQ = 2**32 - 1
# Parameters of one From/To/Contact entry (tag, epid, +sip.instance, proxy, methods...) and of one
# URI (transport, user, maddr, lr, gruu, opaque, ms-*); Lync sends < 8 of each.
MAX_PARAMETERS = 32
# Entries of one Contact or Via field (RFC 3261 lets a field hold a comma-separated list).
MAX_LIST_ENTRIES = 32


class SipError(UcgateError, ValueError):
    """A SIP message or field we refuse.

    ``reason`` is a short machine code for the log and the audit (``bare-cr-or-lf``,
    ``obs-fold``, ``duplicate-content-length``, ``missing-content-length``, ``head-too-large``,
    ``unknown-auth-scheme``...); ``status`` the SIP status to answer (400, 505, 513; 403 for an
    identity that does not match); ``detail`` is for humans and never holds a secret or more
    than a few characters of the input.
    """

    def __init__(self, reason: str, detail: str = "", status: int = 400) -> None:
        super().__init__(reason, detail, message=f"{status} {reason}: {detail}" if detail else f"{status} {reason}")
        self.status = status


def _short(value: bytes | str, limit: int = 40) -> str:
    """A bounded, printable rendering of input for an error detail."""
    text = value.decode("latin-1") if isinstance(value, (bytes, bytearray)) else value
    text = text[:limit]
    return "".join(c if 0x20 <= ord(c) < 0x7F else f"\\x{ord(c):02x}" for c in text)


@dataclass(frozen=True, slots=True)
class Limits:
    """Size limits of one connection's messages (see the module constants for the precedents)."""

    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_head_bytes: int = DEFAULT_MAX_HEAD_BYTES
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
    max_auth_line_bytes: int = DEFAULT_MAX_AUTH_LINE_BYTES
    max_header_count: int = DEFAULT_MAX_HEADER_COUNT


DEFAULT_LIMITS = Limits()

# --- grammar (RFC 3261 25.1) ------------------------------------------------------------------
# token = 1*(alphanum / "-" / "." / "!" / "%" / "*" / "_" / "+" / "`" / "'" / "~")
_TOKEN = rb"[A-Za-z0-9\-.!%*_+`'~]+"
_TOKEN_RE = re.compile(_TOKEN)
_REQUEST_LINE_RE = re.compile(rb"(" + _TOKEN + rb") ([A-Za-z][A-Za-z0-9+.\-]*:[\x21-\x7e]+) SIP/2\.0")
_STATUS_LINE_RE = re.compile(rb"SIP/2\.0 ([1-6][0-9][0-9]) ([\t\x20-\x7e\x80-\xff]*)")
_ANY_VERSION_RE = re.compile(rb"(?:SIP/[0-9]+\.[0-9]+ .*|.* SIP/[0-9]+\.[0-9]+)", re.IGNORECASE | re.DOTALL)
_FIELD_VALUE_RE = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")
# a CR not followed by LF, or a LF not preceded by CR (lookbehind sees before ``pos``)
_BARE_CR_LF_RE = re.compile(rb"\r(?!\n)|(?<!\r)\n")
# RFC 3261 25.1 callid = word [ "@" word ]
_WORD = rb"[A-Za-z0-9\-.!%*_+`'~()<>:\\\"/\[\]?{}]+"
_CALL_ID_RE = re.compile(_WORD + rb"(?:@" + _WORD + rb")?")
_CSEQ_RE = re.compile(rb"([0-9]{1,10})[ \t]+(" + _TOKEN + rb")")

# RFC 3261 7.3.3 and 20 (c e f i k l m s t v), and the IANA "Header Fields" registry's compact
# forms of later RFCs: a Accept-Contact, d Request-Disposition, j Reject-Contact (RFC 3841),
# b Referred-By (RFC 3892), o Event, u Allow-Events (RFC 6665), r Refer-To (RFC 3515),
# x Session-Expires (RFC 4028), y Identity, n Identity-Info (RFC 4474).
COMPACT_FORMS = {
    "a": "accept-contact",
    "b": "referred-by",
    "c": "content-type",
    "d": "request-disposition",
    "e": "content-encoding",
    "f": "from",
    "i": "call-id",
    "j": "reject-contact",
    "k": "supported",
    "l": "content-length",
    "m": "contact",
    "n": "identity-info",
    "o": "event",
    "r": "refer-to",
    "s": "subject",
    "t": "to",
    "u": "allow-events",
    "v": "via",
    "x": "session-expires",
    "y": "identity",
}
# Fields that say who and what a message is: one copy, or a relay and the server may read two.
SINGLE_FIELDS = frozenset(
    {
        "call-id",
        "cseq",
        "from",
        "to",
        "content-length",
        "content-type",
        "max-forwards",
        "expires",
        "user-agent",
    }
)
# RFC 3261 8.1.1 (requests) and 8.2.6.2 (responses copy them); Max-Forwards is left out: the
# REGISTER of MS-SIPAE 4.1 and 4.2, as Office Communicator sends it, has none.
REQUIRED_FIELDS = ("via", "from", "to", "call-id", "cseq", "content-length")
# The fields that may carry gssapi-data, and so get max_auth_line_bytes.
AUTH_FIELDS = frozenset({"authorization", "proxy-authorization", "www-authenticate", "proxy-authenticate"})


def canonical_name(name: bytes | str) -> str:
    """The lower-case full name of a header field: ``"l"`` and ``"Content-Length"`` are both
    ``"content-length"`` (RFC 3261 7.3.3)."""
    text = (name.decode("latin-1") if isinstance(name, (bytes, bytearray)) else name).lower()
    return COMPACT_FORMS.get(text, text)


# --- messages ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HeaderField:
    """One header field line (RFC 3261 7.3): ``name`` and ``value`` as sent (the value without
    surrounding whitespace), ``canonical`` the lower-case full name, ``raw`` the whole line
    without its CRLF."""

    name: bytes
    value: bytes
    canonical: str
    raw: bytes

    def text(self) -> str:
        """The value as text (the framer checked it is UTF-8)."""
        return self.value.decode("utf-8")


@dataclass(frozen=True, slots=True)
class CSeq:
    """CSeq (RFC 3261 20.16): sequence number and method."""

    number: int
    method: str


@dataclass(frozen=True, slots=True)
class KeepAlive:
    """One CRLF between messages (RFC 5626 3.5.1; see the module docstring): a ping is two in a
    row. ``run`` counts the CRLFs since the last message (or the start of the stream)."""

    run: int
    raw: bytes = b"\r\n"

    @property
    def completes_ping(self) -> bool:
        """True for the second CRLF of a CRLF CRLF ping (the first may be a pong)."""
        return self.run % 2 == 0


@dataclass(frozen=True, slots=True)
class SipMessage:
    """A framed SIP request or response (RFC 3261 7).

    ``raw`` is exactly the bytes the message was framed from — start line, header lines, the
    empty line and the body — and is what a relay forwards. ``method`` and ``request_uri`` are
    set for a request, ``status`` and ``reason`` for a response. ``from_``, ``to``, ``call_id``
    and ``cseq`` are already parsed (the framer refuses a message where they do not parse).
    """

    raw: bytes
    start_line: bytes
    headers: tuple[HeaderField, ...]
    body: bytes
    method: str | None
    request_uri: str | None
    status: int | None
    reason: str | None
    from_: NameAddr
    to: NameAddr
    call_id: str
    cseq: CSeq

    @property
    def is_request(self) -> bool:
        return self.method is not None

    def get(self, name: str) -> str | None:
        """The value of the first field ``name`` (full or compact, any case), or None."""
        want = canonical_name(name)
        for field in self.headers:
            if field.canonical == want:
                return field.text()
        return None

    def get_all(self, name: str) -> list[str]:
        """The values of every field ``name`` (full or compact, any case), in order."""
        want = canonical_name(name)
        return [f.text() for f in self.headers if f.canonical == want]

    def fields(self, name: str) -> list[HeaderField]:
        want = canonical_name(name)
        return [f for f in self.headers if f.canonical == want]

    def serialize(self) -> bytes:
        """The message rebuilt from its parts: always equal to :attr:`raw`."""
        lines = [self.start_line, *(f.raw for f in self.headers), b""]
        return b"\r\n".join(lines) + b"\r\n" + self.body

    def vias(self) -> list[Via]:
        """Every Via entry, topmost first (RFC 3261 20.42)."""
        out: list[Via] = []
        for value in self.get_all("via"):
            out.extend(parse_via(value))
        return out

    def contacts(self) -> list[NameAddr]:
        """Every Contact entry; ``[]`` for none. ``Contact: *`` gives one NameAddr with uri "*"."""
        out: list[NameAddr] = []
        for value in self.get_all("contact"):
            out.extend(parse_contacts(value))
            if len(out) > MAX_LIST_ENTRIES:
                raise SipError("too-many-contacts", f"more than {MAX_LIST_ENTRIES} Contact entries")
        return out

    def registered_user(self) -> SipUri:
        """The address of record a REGISTER registers: the To's SIP URI (RFC 3261 10.2), which
        must name the same user as the From — a third-party registration (10.2's "From ...
        responsible for the registration") is refused: the gateway signs in the From's user.

        Raises:
            SipError: not a REGISTER ("not-register"), From or To not a SIP URI with a user
            ("not-a-sip-user"), or From and To naming different users
            ("register-from-to-mismatch", status 403).
        """
        if self.method != "REGISTER":
            raise SipError("not-register", "only a REGISTER names a user to register")
        to, frm = self.to.sip, self.from_.sip
        if to is None or frm is None or to.user is None or frm.user is None:
            raise SipError("not-a-sip-user", "From and To of a REGISTER must be sip: URIs with a user")
        if to.aor.casefold() != frm.aor.casefold():
            raise SipError("register-from-to-mismatch", "From and To name different users", 403)
        return to


SipEvent = SipMessage | KeepAlive


# --- the framer -------------------------------------------------------------------------------


class SipFramer:
    """Frames one direction of a SIP stream (RFC 3261 18.3) into :class:`SipMessage` and
    :class:`KeepAlive` events. Sans-I/O: :meth:`feed` bytes in any chunks, then call
    :meth:`next_event` until it returns None. The events are the same however the stream is
    split. Errors raise :class:`SipError` from :meth:`next_event` once every event before the
    bad bytes has been returned; the framer then stays failed (every later call raises the
    same error).
    """

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self._limits = limits
        self._buf = bytearray()
        self._in_head = False
        self._scan = 0  # head bytes checked for bare CR/LF
        self._line_start = 0  # start of the first line not yet length-checked
        self._head: _Head | None = None
        self._run = 0
        self._error: SipError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received and not yet returned as an event."""
        return len(self._buf)

    @property
    def at_boundary(self) -> bool:
        """True between messages (nothing of a message buffered), e.g. before closing."""
        return not self._buf

    def feed(self, data: bytes) -> None:
        if self._error is not None:
            raise self._error
        self._buf += data

    def close(self) -> None:
        """The stream ended. Raises SipError("truncated-message") when it ended inside a message."""
        if self._error is not None:
            raise self._error
        if self._buf:
            self._error = SipError(
                "truncated-message", f"stream ended with {len(self._buf)} bytes of an unfinished message"
            )
            raise self._error

    def next_event(self) -> SipEvent | None:
        """The next complete event, or None until more bytes are fed."""
        if self._error is not None:
            raise self._error
        try:
            return self._next()
        except SipError as e:
            self._error = e
            raise

    def events(self) -> list[SipEvent]:
        """Every event available now. When bad bytes follow some events, those events are
        returned and the error is raised by the next call; with none before it, at once."""
        out: list[SipEvent] = []
        while True:
            try:
                event = self.next_event()
            except SipError:
                if out:
                    return out
                raise
            if event is None:
                return out
            out.append(event)

    def _next(self) -> SipEvent | None:
        buf = self._buf
        if self._head is None:
            if not self._in_head:
                if not buf:
                    return None
                if buf[0] == 0x0D:  # CR: a keep-alive CRLF, or its first half
                    if len(buf) == 1:
                        return None
                    if buf[1] != 0x0A:
                        raise SipError("bare-cr-or-lf", "bare CR between messages")
                    del buf[:2]
                    self._run += 1
                    return KeepAlive(self._run)
                if buf[0] == 0x0A:
                    raise SipError("bare-cr-or-lf", "bare LF between messages")
                self._in_head = True
                self._scan = self._line_start = 0
            end = buf.find(b"\r\n\r\n", max(self._scan - 3, 0))
            if end < 0:
                self._check_partial_head()
                return None
            head_length = end + 4
            if head_length > self._limits.max_head_bytes:
                raise SipError("head-too-large", f"header section over {self._limits.max_head_bytes} bytes", 513)
            self._head = _parse_head(bytes(buf[:head_length]), self._limits)
        head = self._head
        total = head.length + head.content_length
        if len(buf) < total:
            return None
        raw = bytes(buf[:total])
        del buf[:total]
        self._head = None
        self._in_head = False
        self._run = 0
        return head.message(raw)

    def _check_partial_head(self) -> None:
        """Refuse an unfinished head early: over the head limit, a bare CR/LF, an over-long line."""
        buf, limits = self._buf, self._limits
        if len(buf) > limits.max_head_bytes:
            raise SipError("head-too-large", f"header section over {limits.max_head_bytes} bytes", 513)
        stop = len(buf) - 1 if buf.endswith(b"\r") else len(buf)
        if _BARE_CR_LF_RE.search(buf, self._scan, stop):
            raise SipError("bare-cr-or-lf", "bare CR or LF in the header section")
        self._scan = stop
        pos = self._line_start
        while (eol := buf.find(b"\r\n", pos)) >= 0:
            _check_line_length(buf, pos, eol, limits)
            pos = eol + 2
        self._line_start = pos
        _check_line_length(buf, pos, stop, limits)


# the longest field name that matters for the auth-line limit, plus its colon
_AUTH_NAME_PREFIX = max(len(n) for n in AUTH_FIELDS) + 1


def _check_line_length(buf: bytearray, start: int, end: int, limits: Limits) -> None:
    """Bound the line buf[start:end] (start 0: the start line) without copying it: a peer that
    dribbles a long line byte by byte costs one comparison per byte."""
    length = end - start
    if length <= limits.max_line_bytes:
        return
    if start > 0 and length <= limits.max_auth_line_bytes:
        name = bytes(buf[start : start + _AUTH_NAME_PREFIX]).partition(b":")[0]
        if canonical_name(name) in AUTH_FIELDS:
            return
    raise SipError("line-too-long", f"a line over {limits.max_line_bytes} bytes", 513)


@dataclass(slots=True)
class _Head:
    length: int
    start_line: bytes
    headers: tuple[HeaderField, ...]
    content_length: int
    method: str | None
    request_uri: str | None
    status: int | None
    reason: str | None
    from_: NameAddr
    to: NameAddr
    call_id: str
    cseq: CSeq

    def message(self, raw: bytes) -> SipMessage:
        return SipMessage(
            raw,
            self.start_line,
            self.headers,
            raw[self.length :],
            self.method,
            self.request_uri,
            self.status,
            self.reason,
            self.from_,
            self.to,
            self.call_id,
            self.cseq,
        )


def _parse_start_line(line: bytes) -> tuple[str | None, str | None, int | None, str | None]:
    """(method, request_uri, status, reason) of a Request-Line or Status-Line (RFC 3261 7.1, 7.2)."""
    if line.startswith(b"SIP/"):
        m = _STATUS_LINE_RE.fullmatch(line)
        if m is None:
            if _ANY_VERSION_RE.fullmatch(line) and not line.startswith(b"SIP/2.0 "):
                raise SipError("unsupported-version", "only SIP/2.0", 505)
            raise SipError("bad-status-line", _short(line))
        try:
            reason = m.group(2).decode("utf-8")
        except UnicodeDecodeError:
            raise SipError("bad-status-line", "reason phrase is not UTF-8") from None
        return None, None, int(m.group(1)), reason
    m = _REQUEST_LINE_RE.fullmatch(line)
    if m is None:
        # RFC 3261 7.1: "SIP/2.0" is case-insensitive on the wire; we accept only the upper
        # case every implementation sends (it MUST be sent so), and no other version.
        if _ANY_VERSION_RE.fullmatch(line) and not line.endswith(b" SIP/2.0"):
            raise SipError("unsupported-version", "only SIP/2.0", 505)
        raise SipError("bad-request-line", _short(line))
    return m.group(1).decode("ascii"), m.group(2).decode("ascii"), None, None


def _parse_field_line(line: bytes, limits: Limits) -> HeaderField:
    if line[:1] in (b" ", b"\t"):
        raise SipError("obs-fold", "a folded header line (RFC 3261 7.3.1 LWS); refused")
    name, colon, value = line.partition(b":")
    if not colon or not _TOKEN_RE.fullmatch(name):
        # also a space or tab before the colon, which RFC 3261 7.3.1 allows and no client sends
        raise SipError("bad-header-name", _short(name))
    canonical = canonical_name(name)
    limit = (
        max(limits.max_auth_line_bytes, limits.max_line_bytes) if canonical in AUTH_FIELDS else limits.max_line_bytes
    )
    if len(line) > limit:
        raise SipError("line-too-long", f"{_short(name)} line over {limit} bytes", 513)
    value = value.strip(b" \t")
    if not _FIELD_VALUE_RE.fullmatch(value):
        raise SipError("bad-header-value", f"control character in {_short(name)}")
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        raise SipError("bad-utf8-in-header", f"{_short(name)} is not UTF-8") from None
    return HeaderField(name, value, canonical, line)


def _parse_head(head: bytes, limits: Limits) -> _Head:
    """Parse a complete head (start line to the empty line) and check framing and identity fields."""
    n = head.count(b"\r\n")
    if not head.endswith(b"\r\n\r\n") or head.count(b"\r") != n or head.count(b"\n") != n:
        raise SipError("bare-cr-or-lf", "bare CR or LF in the header section")
    if len(head) > limits.max_head_bytes:
        raise SipError("head-too-large", f"header section over {limits.max_head_bytes} bytes", 513)
    lines = head[:-4].split(b"\r\n")
    start_line = lines[0]
    if len(start_line) > limits.max_line_bytes:
        raise SipError("line-too-long", f"start line over {limits.max_line_bytes} bytes", 513)
    method, request_uri, status, reason = _parse_start_line(start_line)
    if len(lines) - 1 > limits.max_header_count:
        raise SipError("too-many-headers", f"more than {limits.max_header_count} header fields")
    headers = tuple(_parse_field_line(line, limits) for line in lines[1:])
    single: dict[str, HeaderField] = {}
    for field in headers:
        if field.canonical in SINGLE_FIELDS:
            if field.canonical in single:
                raise SipError(f"duplicate-{field.canonical}", f"a second {field.canonical} field")
            single[field.canonical] = field
    present = {f.canonical for f in headers}
    for name in REQUIRED_FIELDS:
        if name not in present:
            raise SipError(f"missing-{name}", f"no {name} field (RFC 3261 8.1.1, 18.3)")
    cl = single["content-length"].value
    if not cl.isdigit() or len(cl) > MAX_CONTENT_LENGTH_DIGITS:
        raise SipError("bad-content-length", _short(cl))
    content_length = int(cl)
    if len(head) + content_length > limits.max_message_bytes:
        raise SipError("message-too-large", f"message over {limits.max_message_bytes} bytes", 513)
    cseq = _parse_cseq(single["cseq"].value)
    if method is not None and cseq.method != method:
        raise SipError("cseq-method-mismatch", "CSeq names another method (RFC 3261 8.1.1.5)")
    call_id = single["call-id"].value
    if not _CALL_ID_RE.fullmatch(call_id):
        raise SipError("bad-call-id", _short(call_id))
    from_ = _identity_field(single["from"], "from")
    to = _identity_field(single["to"], "to")
    return _Head(
        len(head),
        start_line,
        headers,
        content_length,
        method,
        request_uri,
        status,
        reason,
        from_,
        to,
        call_id.decode("ascii"),
        cseq,
    )


def _parse_cseq(value: bytes) -> CSeq:
    m = _CSEQ_RE.fullmatch(value)
    if m is None or int(m.group(1)) > MAX_CSEQ:
        raise SipError("bad-cseq", _short(value))
    return CSeq(int(m.group(1)), m.group(2).decode("ascii"))


def _identity_field(field: HeaderField, name: str) -> NameAddr:
    try:
        return parse_name_addr(field.text())
    except SipError as e:
        raise SipError(f"bad-{name}", f"{e.reason}: {e.detail}") from None


def parse_message(data: bytes, limits: Limits = DEFAULT_LIMITS) -> SipMessage:
    """Parse exactly one complete message (no keep-alives before or bytes after it).

    Raises:
        SipError: as the framer would, or "truncated-message" / "trailing-bytes".
    """
    framer = SipFramer(limits)
    framer.feed(bytes(data))
    event = framer.next_event()
    if not isinstance(event, SipMessage):
        if event is None:
            framer.close()  # raises truncated-message (or the framer's error)
        raise SipError("not-a-message", "keep-alive CRLF where a message was expected")
    if framer.buffered:
        raise SipError("trailing-bytes", f"{framer.buffered} bytes after the message")
    return event


# --- field values: URIs and name-addr (RFC 3261 19.1, 20.10, 25.1) ---------------------------

# user = 1*( unreserved / escaped / user-unreserved ); we refuse escapes ("%") and the
# user-unreserved ";", "?", "/": SfB users are e-mail-like, the user is compared with directory
# names, and "%40" or ";" in it is how a lenient reader and a strict one come to see two users.
_USER_RE = re.compile(r"[A-Za-z0-9\-_.!~*'()&=+$,]+")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?"
_HOST_RE = re.compile(rf"(?:{_LABEL}\.)*{_LABEL}\.?|\[[0-9A-Fa-f:.]+\]")
_PARAM_CHARS_RE = re.compile(r"[A-Za-z0-9\-_.!~*'()\[\]/:&+$%]+")
_HEADERS_RE = re.compile(r"[A-Za-z0-9\-_.!~*'()\[\]/?:+$%=&]*")
_TOKEN_S = r"[A-Za-z0-9\-.!%*_+`'~]+"
_TOKEN_S_RE = re.compile(_TOKEN_S)
_ABSOLUTE_URI_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:[\x21-\x7e]+")
# gen-value = token / host / quoted-string (host: also a bare IPv6 address, as Via's received=)
_GEN_VALUE_RE = re.compile(rf"\[[0-9A-Fa-f:.]+\]|[0-9A-Fa-f]*:[0-9A-Fa-f:.]+|{_TOKEN_S}")


@dataclass(frozen=True, slots=True)
class SipUri:
    """A sip: or sips: URI (RFC 3261 19.1.1). ``host`` is lower-cased; ``user`` as sent (the user
    part is case-sensitive in RFC 3261 19.1.4; compare it case-insensitively with directory
    names); ``params`` has lower-cased names; ``headers`` the raw ``?...`` part."""

    scheme: str
    user: str | None
    host: str
    port: int | None
    params: tuple[tuple[str, str | None], ...] = ()
    headers: str = ""

    @property
    def aor(self) -> str:
        """``user@host`` (or ``host`` without a user): the address of record."""
        return f"{self.user}@{self.host}" if self.user is not None else self.host

    def param(self, name: str) -> str | None:
        for k, v in self.params:
            if k == name:
                return v
        return None


def parse_sip_uri(text: str) -> SipUri:
    """Parse a sip:/sips: URI strictly (RFC 3261 19.1.1, 25.1).

    Raises:
        SipError: "not-a-sip-uri", "password-in-uri", "bad-sip-user", "bad-sip-host",
        "bad-uri-parameter", "duplicate-uri-parameter".
    """
    scheme, colon, rest = text.partition(":")
    if not colon or scheme.lower() not in ("sip", "sips"):
        raise SipError("not-a-sip-uri", _short(text))
    rest, _, headers = rest.partition("?")
    if not _HEADERS_RE.fullmatch(headers):
        raise SipError("bad-uri-headers", _short(headers))
    hostport, *params = rest.split(";")
    user: str | None = None
    if "@" in hostport:
        user, _, hostport = hostport.rpartition("@")
        if ":" in user:
            raise SipError("password-in-uri", "a password in a SIP URI (RFC 3261 19.1.1 NOT RECOMMENDED)")
        if not _USER_RE.fullmatch(user):
            raise SipError("bad-sip-user", _short(user))
    elif any("@" in p for p in params):
        raise SipError("bad-sip-user", "a user after a ';' (user-unreserved ';' is refused)")
    host, port = _host_port(hostport)
    return SipUri(scheme.lower(), user, host, port, _uri_params(params), headers)


def _host_port(hostport: str) -> tuple[str, int | None]:
    host, port_text = hostport, None
    if hostport.startswith("["):
        close = hostport.find("]")
        if close < 0:
            raise SipError("bad-sip-host", _short(hostport))
        host, rest = hostport[: close + 1], hostport[close + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise SipError("bad-sip-host", _short(hostport))
            port_text = rest[1:]
    elif ":" in hostport:
        host, _, port_text = hostport.partition(":")
    if not _HOST_RE.fullmatch(host):
        raise SipError("bad-sip-host", _short(host))
    port = None
    if port_text is not None:
        if not (port_text.isascii() and port_text.isdigit()) or len(port_text) > 5 or int(port_text) > 65535:
            raise SipError("bad-sip-host", f"port {_short(port_text)}")
        port = int(port_text)
    return host.lower(), port


def _uri_params(params: list[str]) -> tuple[tuple[str, str | None], ...]:
    if len(params) > MAX_PARAMETERS:
        raise SipError("bad-uri-parameter", f"more than {MAX_PARAMETERS} URI parameters")
    out: list[tuple[str, str | None]] = []
    seen: set[str] = set()
    for p in params:
        name, eq, value = p.partition("=")
        if not _PARAM_CHARS_RE.fullmatch(name) or (eq and not _PARAM_CHARS_RE.fullmatch(value)):
            raise SipError("bad-uri-parameter", _short(p))
        lname = name.lower()
        if lname in seen:
            raise SipError("duplicate-uri-parameter", _short(lname))
        seen.add(lname)
        out.append((lname, value if eq else None))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class NameAddr:
    """One From/To/Contact entry (RFC 3261 20.10, 20.20, 20.39): the display name (unquoted,
    None when absent), the URI as sent, the parsed :class:`SipUri` for sip:/sips: (None for
    other schemes and for ``*``), and the header parameters (lower-cased names, unquoted values;
    None for a parameter without a value)."""

    display_name: str | None
    uri: str
    sip: SipUri | None
    params: tuple[tuple[str, str | None], ...] = ()

    def param(self, name: str) -> str | None:
        for k, v in self.params:
            if k == name:
                return v
        return None

    def has_param(self, name: str) -> bool:
        return any(k == name for k, _ in self.params)

    @property
    def tag(self) -> str | None:
        return self.param("tag")

    @property
    def epid(self) -> str | None:
        """The endpoint id of MS-SIPRE 3.2.3.1 (a From/To parameter)."""
        return self.param("epid")


_QUOTED_RE = re.compile(r'"((?:[^"\\\x00-\x08\x0a-\x1f\x7f]|\\[^\x00-\x08\x0a-\x1f\x7f])*)"')
_UNESCAPE_RE = re.compile(r"\\(.)")


def _quoted(text: str, pos: int) -> tuple[str, int]:
    """A quoted-string at ``pos`` (RFC 3261 25.1): its unescaped content and the end position."""
    m = _QUOTED_RE.match(text, pos)
    if m is None:
        raise SipError("bad-quoted-string", _short(text[pos:]))
    return _UNESCAPE_RE.sub(r"\1", m.group(1)), m.end()


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t":
        pos += 1
    return pos


def parse_name_addr(text: str) -> NameAddr:
    """Parse ``( name-addr / addr-spec ) *( SEMI generic-param )`` (RFC 3261 20.10, 25.1).

    ``"Alice" <sip:alice@contoso.com>;tag=1;epid=2``, ``<sip:alice@contoso.com>``,
    ``Alice Smith <sip:alice@contoso.com>`` and ``sip:alice@contoso.com;tag=1`` (in the
    addr-spec form the parameters belong to the header, 20.10). A display name must be followed
    by ``<``: ``"Alice" sip:alice@contoso.com`` (as MS-SIP 4.2's example prints a To) is not
    RFC 3261 syntax and is refused.

    Raises:
        SipError: "bad-name-addr", "bad-quoted-string", "bad-parameter", "duplicate-parameter",
        or what :func:`parse_sip_uri` raises for a sip: URI.
    """
    pos = _skip_ws(text, 0)
    display: str | None = None
    if text.startswith('"', pos):
        display, pos = _quoted(text, pos)
        pos = _skip_ws(text, pos)
        if not text.startswith("<", pos):
            raise SipError("bad-name-addr", "a display name not followed by <URI>")
    elif "<" in text[pos:]:
        lt = text.index("<", pos)
        words = text[pos:lt].split()
        if words and not all(_TOKEN_S_RE.fullmatch(w) for w in words):
            raise SipError("bad-name-addr", "display name is neither tokens nor a quoted string")
        display = " ".join(words) if words else None
        pos = lt
    if text.startswith("<", pos):
        gt = text.find(">", pos)
        if gt < 0:
            raise SipError("bad-name-addr", "no closing >")
        uri = text[pos + 1 : gt]
        pos = gt + 1
    else:
        end = text.find(";", pos)
        end = len(text) if end < 0 else end
        uri = text[pos:end].rstrip(" \t")
        if any(c in uri for c in ",?"):
            raise SipError("bad-name-addr", "',' or '?' in a URI outside <> (RFC 3261 20.10)")
        pos = end
    if not _ABSOLUTE_URI_RE.fullmatch(uri):
        raise SipError("bad-name-addr", f"not a URI: {_short(uri)}")
    sip = parse_sip_uri(uri) if uri.lower().startswith(("sip:", "sips:")) else None
    return NameAddr(display, uri, sip, _header_params(text, pos))


def _header_params(text: str, pos: int) -> tuple[tuple[str, str | None], ...]:
    """``*( SEMI generic-param )`` from ``pos`` to the end; SEMI = SWS ";" SWS."""
    out: list[tuple[str, str | None]] = []
    seen: set[str] = set()
    while True:
        pos = _skip_ws(text, pos)
        if pos == len(text):
            return tuple(out)
        if text[pos] != ";":
            raise SipError("bad-parameter", f"expected ';' at {_short(text[pos:])}")
        if len(out) >= MAX_PARAMETERS:
            raise SipError("bad-parameter", f"more than {MAX_PARAMETERS} parameters")
        pos = _skip_ws(text, pos + 1)
        m = _TOKEN_S_RE.match(text, pos)
        if m is None:
            raise SipError("bad-parameter", _short(text[pos:]))
        name = m.group(0).lower()
        pos = _skip_ws(text, m.end())
        value: str | None = None
        if text.startswith("=", pos):
            pos = _skip_ws(text, pos + 1)
            if text.startswith('"', pos):
                value, pos = _quoted(text, pos)
            else:
                v = _GEN_VALUE_RE.match(text, pos)
                if v is None:
                    raise SipError("bad-parameter", f"{name}={_short(text[pos:])}")
                value, pos = v.group(0), v.end()
        if name in seen:
            raise SipError("duplicate-parameter", _short(name))
        seen.add(name)
        out.append((name, value))


def _split_list(text: str) -> list[str]:
    """Split a field value at the commas outside quoted strings and <...> (RFC 3261 7.3.1)."""
    parts, start, quoted, angle, i = [], 0, False, False, 0
    while i < len(text):
        c = text[i]
        if quoted:
            if c == "\\":
                i += 1
            elif c == '"':
                quoted = False
        elif c == '"':
            quoted = True
        elif c == "<":
            angle = True
        elif c == ">":
            angle = False
        elif c == "," and not angle:
            parts.append(text[start:i])
            start = i + 1
            if len(parts) > MAX_LIST_ENTRIES:
                raise SipError("too-many-entries", f"more than {MAX_LIST_ENTRIES} list entries")
        i += 1
    parts.append(text[start:])
    if quoted or angle:
        raise SipError("bad-list", "an unterminated quoted string or <")
    if any(not p.strip(" \t") for p in parts):
        raise SipError("bad-list", "an empty list entry")
    return parts


def parse_contacts(value: str) -> list[NameAddr]:
    """The entries of one Contact field (RFC 3261 20.10): ``*`` or a comma-separated list."""
    if value.strip(" \t") == "*":
        return [NameAddr(None, "*", None)]
    entries = [parse_name_addr(p) for p in _split_list(value)]
    if any(e.uri == "*" for e in entries):
        raise SipError("bad-contact", "'*' among other contacts")
    return entries


@dataclass(frozen=True, slots=True)
class Via:
    """One Via entry (RFC 3261 20.42): ``SIP/2.0/TLS host:port;branch=...``."""

    transport: str
    host: str
    port: int | None
    params: tuple[tuple[str, str | None], ...] = ()

    def param(self, name: str) -> str | None:
        for k, v in self.params:
            if k == name:
                return v
        return None


_VIA_RE = re.compile(rf"[ \t]*SIP[ \t]*/[ \t]*2\.0[ \t]*/[ \t]*({_TOKEN_S})[ \t]+([^;]+?)[ \t]*(;.*)?", re.DOTALL)


def parse_via(value: str) -> list[Via]:
    """The entries of one Via field (RFC 3261 20.42, 25.1 via-parm), topmost first."""
    out = []
    for part in _split_list(value):
        m = _VIA_RE.fullmatch(part)
        if m is None:
            raise SipError("bad-via", _short(part))
        host, port = _host_port(m.group(2))
        params = _header_params(m.group(3) or "", 0)
        out.append(Via(m.group(1).upper(), host, port, params))
    return out


# --- which device (MS-SIPRE, MS-SIPAE 3.3.5.2) -----------------------------------------------

# MS-SIPRE 3.2: +sip.instance is a name-based (SHA-1, version 5) UUID of the epid under this
# namespace GUID, with the GUID fields hashed and read in Windows (little-endian) byte order.
# Checked against MS-SIPRE's test epid "01010101" -> 4b1682a8-f968-5701-83fc-7c6741dc6697 and
# the two REGISTERs of MS-SIPAE 4.1 and 4.2 (tests/protocols/test_sip.py).
SIP_INSTANCE_NAMESPACE = uuid.UUID("fcacfb03-8a73-46ef-91b1-e5ebeeaba4fe")
_INSTANCE_RE = re.compile(
    r"<urn:uuid:([0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12})>", re.IGNORECASE
)
# MS-SIPRE 3.2.3.1: the epid is a short string of hexadecimal digits (10 from Office
# Communicator, 7 in MS-SIP's examples); a token of at most 64 characters bounds it.
_EPID_RE = re.compile(r"[A-Za-z0-9\-_.]{1,64}")


def instance_from_epid(epid: str) -> str:
    """The ``+sip.instance`` GUID (lower case) an endpoint derives from its epid (MS-SIPRE 3.2)."""
    digest = hashlib.sha1(SIP_INSTANCE_NAMESPACE.bytes_le + epid.encode("utf-8")).digest()
    raw = bytearray(uuid.UUID(bytes_le=digest[:16]).bytes)
    raw[6] = (raw[6] & 0x0F) | 0x50  # version 5
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    return str(uuid.UUID(bytes=bytes(raw)))


@dataclass(frozen=True, slots=True)
class SipClient:
    """What a SIP User-Agent says: the client kind (``devices.ClientKind``), the product and its
    version (None when not recognised)."""

    kind: str
    product: str | None
    version: str | None


# "UCCAPI/16.0.4849.1000 OC/16.0.4849.1000 (Skype for Business)" (SfB 2016 desktop, as
# devices.py documents), "UCCAPI/15.0.3419.3001 OC/15.0.3419.3003 (AppName)" (MS-PRES 4.14.3.1),
# "UCCP/2.0.6362.0 OC/2.0.6362.0 (Microsoft Office Communicator)" (MS-SIPAE 4.1). The OC
# version names the product when the parenthesis does not: 2.0 Communicator 2007, 3.5
# Communicator 2007 R2, 4.0 Lync 2010, 15 Lync 2013, 16 Skype for Business 2016.
_OC_RE = re.compile(r"\bOC/(\d+)\.(\d+)\.?([0-9.]*)(?:\s+\(([^()]{1,64})\))?")
_OC_PRODUCTS = {
    ("2", "0"): "Office Communicator 2007",
    ("3", "5"): "Office Communicator 2007 R2",
    ("4", "0"): "Lync 2010",
    ("15", "0"): "Lync 2013",
    ("16", "0"): "Skype for Business",
}
# SIP-only user agents the HTTP rules of devices.py do not name: "Lync/15.0 ..." as issue 18
# lists it (no capture at hand), and Lync Phone Edition ("OCPHONE/4.0...", a desk phone: no
# kind of its own, so "unknown" and left to the rules by product).
SIP_UA_RULES: tuple[tuple[str, str], ...] = ((r"^(?:Lync|Skype for Business)/\d", "pc-external"),)


def sip_client(user_agent: str | None, extra_rules: Sequence[tuple[str, str]] = ()) -> SipClient:
    """Classify a SIP User-Agent (RFC 3261 20.41): ``extra_rules`` (configuration) first, then
    :data:`SIP_UA_RULES` and devices.py's rules; the product from the ``OC/x.y`` token.

    Raises:
        ValueError: only for bad ``extra_rules`` (devices.compile_ua_rules).
    """
    kind = classify_user_agent(user_agent, (*extra_rules, *SIP_UA_RULES))
    if not user_agent:
        return SipClient(kind, None, None)
    m = _OC_RE.search(user_agent[:512])
    if m is None:
        return SipClient(kind, None, None)
    major, minor, rest, label = m.groups()
    version = ".".join(p for p in (major, minor, rest) if p)
    product = _OC_PRODUCTS.get((major, minor))
    if product is None and label and label != "AppName":
        product = label.removeprefix("Microsoft ")
    return SipClient(kind, product, version)


def sip_device_facts(message: SipMessage, extra_rules: Sequence[tuple[str, str]] = ()) -> DeviceFacts:
    """Device facts of a SIP request (DESIGN.md: the device is the Contact's ``+sip.instance``
    and the From's ``epid``).

    * device id: the ``+sip.instance`` UUID (MS-SIPRE 2.2.5: ``"<urn:uuid:...>"``, normalised
      as devices.py does: lower case, no braces; ``source="sip-instance"``), else the epid
      (``source="sip-epid"``); with both, the instance must be the one the epid derives
      (MS-SIPAE 3.3.5.2: the server MUST validate it) — else ``problem="malformed"``,
      ``detail="sip-instance-not-from-epid"``; several different instances in one message are
      ``sip-instance-ambiguous``;
    * ``claimed_user``: the From's address of record; the caller checks it against the signed-in
      user; ``command``: the method;
    * client kind, product (as ``model``) from User-Agent (:func:`sip_client`).

    Never raises on message contents (as devices.py): problems come back in ``problem``/``detail``.
    """
    ua_text = message.get("user-agent")
    client = sip_client(ua_text, extra_rules)
    ua = ua_text[:512] if ua_text else None
    device_type = (
        "OC" if client.kind in ("pc-external", "pc-internal") else ("MacLync" if client.kind == "mac" else None)
    )
    claimed = message.from_.sip.aor if message.from_.sip is not None else None

    def facts(device_id: str | None, source: str, problem: str | None, detail: str) -> DeviceFacts:
        return DeviceFacts(
            device_id,
            device_type,
            client.product,
            None,
            ua,
            client.kind,
            source,
            problem,
            claimed,
            message.method,
            detail,
        )

    try:
        contacts = message.contacts()
    except SipError as e:
        return facts(None, "sip-instance", "malformed", f"sip-contact-{e.reason}")
    instances = {c.param("+sip.instance") for c in contacts if c.has_param("+sip.instance")}
    epid = message.from_.epid
    if epid is not None and not _EPID_RE.fullmatch(epid):
        return facts(None, "sip-epid", "bad-characters", "sip-epid-bad-characters")
    if len(instances) > 1:
        return facts(None, "sip-instance", "malformed", "sip-instance-ambiguous")
    if instances:
        (instance,) = instances
        m = _INSTANCE_RE.fullmatch(instance or "")
        if m is None:
            return facts(None, "sip-instance", "malformed", "sip-instance-not-uuid-urn")
        device_id, problem = normalise_device_id(m.group(1))
        if epid is not None and device_id != instance_from_epid(epid):
            return facts(None, "sip-instance", "malformed", "sip-instance-not-from-epid")
        return facts(device_id, "sip-instance", problem, "sip-instance")
    if epid is not None:
        device_id, problem = normalise_device_id(epid)
        return facts(device_id, "sip-epid", problem, "sip-epid" if problem is None else f"sip-epid-{problem}")
    return facts(None, "none", "absent", "sip-no-instance-or-epid")
