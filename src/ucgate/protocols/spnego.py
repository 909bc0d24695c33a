"""SPNEGO (RFC 4178, MS-SPNG) token recognition and the NTLM-through-SPNEGO acceptor, sans-I/O.

What an ``Authorization: Negotiate <base64>`` header carries is one of:

* a GSS-API InitialContextToken (RFC 2743 §3.1, ``[APPLICATION 0]``) whose mechanism is SPNEGO
  and whose inner token is a NegTokenInit (or MS-SPNG's NegTokenInit2) — Windows, browsers;
* a GSS-API InitialContextToken of Kerberos (1.2.840.113554.1.2.2, or Microsoft's
  1.2.840.48018.1.2.2) — a raw AP-REQ, recognised but not decoded here;
* a bare NegTokenResp (``[1]``) — every later leg of a SPNEGO exchange;
* a raw ``NTLMSSP\\0`` token — clients that skip SPNEGO when they only have NTLM.

The DER reader is small and strict: single-byte tags, definite minimal lengths of at most four
length octets, no trailing bytes anywhere, context tags in increasing order, a fixed schema (so
nesting depth is bounded by construction, no recursion) and :data:`MAX_TOKEN_SIZE` checked
before decoding. Every refusal is a :class:`SpnegoError` with a short ``reason``.

:class:`SpnegoNtlmAcceptor` drives :class:`ucgate.protocols.ntlm.NtlmAcceptor` through SPNEGO,
including the mechListMIC exchange of MS-SPNG 3.1.5.1 / 3.3.5.1 (see its docstring).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import UcgateError
from .ntlm import Identity, NtlmAcceptor, NtlmError, VerifyResult

__all__ = [
    "KRB5_OID",
    "MAX_TOKEN_SIZE",
    "MS_KRB5_OID",
    "NEGOEX_OID",
    "NTLM_OID",
    "SPNEGO_OID",
    "NegState",
    "NegTokenInit",
    "NegTokenResp",
    "RawKerberos",
    "RawNtlm",
    "SpnegoError",
    "SpnegoNtlmAcceptor",
    "encode_mech_type_list",
    "encode_neg_token_init",
    "encode_neg_token_resp",
    "parse_negotiate_token",
]

NTLM_OID = "1.3.6.1.4.1.311.2.2.10"
KRB5_OID = "1.2.840.113554.1.2.2"
MS_KRB5_OID = "1.2.840.48018.1.2.2"  # Windows 2000's mistyped krb5 OID, still sent first by Windows
NEGOEX_OID = "1.3.6.1.4.1.311.2.2.30"
SPNEGO_OID = "1.3.6.1.5.5.2"

# --- limits -------------------------------------------------------------------------------
# Kerberos AP-REQs reach MaxTokenSize (48000 bytes default, 65535 max on current Windows);
# the HTTP layer caps a header at 64 KiB (base64), so a decoded token is below this anyway.
MAX_TOKEN_SIZE = 64 * 1024
# Windows offers 4 mechanisms (MS-KRB5, KRB5, NEGOEX, NTLM); 16 is generous.
MAX_MECH_TYPES = 16
# The longest OID we care about is 10 bytes; 32 allows any sane OID, bounds arc parsing.
MAX_OID_BYTES = 32
# At most 4 length octets (lengths < 4 GiB; tokens are far smaller anyway).
_MAX_LENGTH_OCTETS = 4

_SEQUENCE, _OID, _OCTET_STRING, _BIT_STRING, _ENUMERATED = 0x30, 0x06, 0x04, 0x03, 0x0A
_GSS_INITIAL = 0x60  # [APPLICATION 0] IMPLICIT SEQUENCE
_NEG_TOKEN_INIT, _NEG_TOKEN_RESP = 0xA0, 0xA1


class SpnegoError(UcgateError, ValueError):
    """A refused SPNEGO token or exchange; ``reason`` is a short machine code: ``malformed``,
    ``too-large``, ``unsupported-mech``, ``unexpected-message``, ``bad-mic``, ``mic-missing``,
    ``bad-argument``. NTLM-level refusals surface as :class:`NtlmError` (also a ValueError with
    a ``reason``)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(reason, message, message=f"{reason}: {message}")
        self.message = message


class NegState(enum.IntEnum):
    """negState of NegTokenResp, RFC 4178 §4.2.2."""

    ACCEPT_COMPLETED = 0
    ACCEPT_INCOMPLETE = 1
    REJECT = 2
    REQUEST_MIC = 3


@dataclass
class NegTokenInit:
    """NegTokenInit, RFC 4178 §4.2.1 (also MS-SPNG 2.2.1 NegTokenInit2, whose negHints are
    skipped). ``raw_mech_types`` is the DER MechTypeList exactly as received, which is what the
    mechListMIC covers."""

    mech_types: list[str]
    mech_token: bytes | None = None
    mech_list_mic: bytes | None = None
    raw_mech_types: bytes = b""


@dataclass
class NegTokenResp:
    """NegTokenResp, RFC 4178 §4.2.2."""

    neg_state: int | None = None
    supported_mech: str | None = None
    response_token: bytes | None = None
    mech_list_mic: bytes | None = None


@dataclass
class RawNtlm:
    """A bare NTLMSSP token sent under the Negotiate scheme."""

    token: bytes


@dataclass
class RawKerberos:
    """A GSS-API Kerberos token (RFC 4121 §4.1; usually an AP-REQ); ``token`` is the whole
    InitialContextToken, ``mech`` its OID. Not decoded here."""

    token: bytes
    mech: str


# --- DER reader -----------------------------------------------------------------------------


def _malformed(message: str) -> SpnegoError:
    return SpnegoError("malformed", message)


def _read_tlv(data: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """Read one DER TLV in ``data[pos:end]``; returns (tag, content start, content end)."""
    if pos + 2 > end:
        raise _malformed("truncated DER element")
    tag = data[pos]
    if tag & 0x1F == 0x1F:
        raise _malformed("multi-byte DER tags are not used by SPNEGO")
    first = data[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0:
            raise _malformed("indefinite length is not DER")
        if count > _MAX_LENGTH_OCTETS:
            raise _malformed("DER length too long")
        if pos + count > end:
            raise _malformed("truncated DER length")
        raw = data[pos : pos + count]
        if raw[0] == 0:
            raise _malformed("non-minimal DER length")
        length = int.from_bytes(raw, "big")
        if length < 0x80:
            raise _malformed("non-minimal DER length")
        pos += count
    if length > end - pos:
        raise _malformed("DER element runs past its container")
    return tag, pos, pos + length


def _expect(data: bytes, pos: int, end: int, tag: int, what: str) -> tuple[int, int]:
    found, start, stop = _read_tlv(data, pos, end)
    if found != tag:
        raise _malformed(f"{what}: expected tag 0x{tag:02x}, found 0x{found:02x}")
    return start, stop


def _decode_oid(content: bytes) -> str:
    if not content or len(content) > MAX_OID_BYTES:
        raise _malformed("OID length out of range")
    if content[-1] & 0x80:
        raise _malformed("unterminated OID")
    arcs: list[int] = []
    value = 0
    fresh = True
    for byte in content:
        if fresh and byte == 0x80:
            raise _malformed("non-minimal OID arc")
        value = (value << 7) | (byte & 0x7F)
        fresh = not byte & 0x80
        if fresh:
            arcs.append(value)
            value = 0
    first = arcs[0]
    head = [0, first] if first < 40 else [1, first - 40] if first < 80 else [2, first - 80]
    return ".".join(str(a) for a in head + arcs[1:])


def _encode_oid(oid: str) -> bytes:
    try:
        arcs = [int(a) for a in oid.split(".")]
    except ValueError:
        raise SpnegoError("bad-argument", f"not an OID: {oid!r}") from None
    if len(arcs) < 2 or arcs[0] > 2 or min(arcs) < 0:
        raise SpnegoError("bad-argument", f"not an OID: {oid!r}")
    out = b""
    for arc in [arcs[0] * 40 + arcs[1], *arcs[2:]]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        out += bytes(reversed(chunk))
    return _tlv(_OID, out)


def _tlv(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        length = bytes([n])
    else:
        raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
        length = bytes([0x80 | len(raw)]) + raw
    return bytes([tag]) + length + content


def _context_fields(data: bytes, start: int, end: int, allowed: set[int]) -> dict[int, tuple[int, int]]:
    """Read the ``[n]`` context-tagged fields of a SEQUENCE body, in increasing order."""
    fields: dict[int, tuple[int, int]] = {}
    last = -1
    pos = start
    while pos < end:
        tag, inner_start, inner_end = _read_tlv(data, pos, end)
        number = tag - 0xA0
        if not 0 <= number <= 30 or number not in allowed:
            raise _malformed(f"unexpected field tag 0x{tag:02x}")
        if number <= last:
            raise _malformed("SPNEGO fields out of order or repeated")
        last = number
        fields[number] = (inner_start, inner_end)
        pos = inner_end
    return fields


def _single(data: bytes, span: tuple[int, int], tag: int, what: str) -> tuple[int, int]:
    """The content of the only element inside an explicitly tagged field."""
    start, stop = _expect(data, span[0], span[1], tag, what)
    if stop != span[1]:
        raise _malformed(f"{what}: trailing bytes")
    return start, stop


def _parse_neg_token_init(data: bytes, start: int, end: int) -> NegTokenInit:
    seq_start, seq_end = _expect(data, start, end, _SEQUENCE, "NegTokenInit")
    if seq_end != end:
        raise _malformed("NegTokenInit: trailing bytes")
    fields = _context_fields(data, seq_start, seq_end, {0, 1, 2, 3, 4})
    if 0 not in fields:
        raise _malformed("NegTokenInit without mechTypes")
    list_span = fields[0]
    list_start, list_end = _single(data, list_span, _SEQUENCE, "mechTypes")
    mech_types: list[str] = []
    pos = list_start
    while pos < list_end:
        if len(mech_types) >= MAX_MECH_TYPES:
            raise _malformed(f"more than {MAX_MECH_TYPES} mechTypes")
        oid_start, oid_end = _expect(data, pos, list_end, _OID, "mechType")
        mech_types.append(_decode_oid(data[oid_start:oid_end]))
        pos = oid_end
    if not mech_types:
        raise _malformed("empty mechTypes")
    if 1 in fields:
        _single(data, fields[1], _BIT_STRING, "reqFlags")
    mech_token = None
    if 2 in fields:
        s, e = _single(data, fields[2], _OCTET_STRING, "mechToken")
        mech_token = data[s:e]
    mic = None
    if 3 in fields:
        # NegTokenInit: [3] mechListMIC OCTET STRING. NegTokenInit2: [3] negHints SEQUENCE.
        tag = data[fields[3][0]] if fields[3][0] < fields[3][1] else -1
        if tag == _OCTET_STRING:
            if 4 in fields:
                raise _malformed("NegTokenInit has both [3] mechListMIC and [4]")
            s, e = _single(data, fields[3], _OCTET_STRING, "mechListMIC")
            mic = data[s:e]
        else:
            _single(data, fields[3], _SEQUENCE, "negHints")
    if 4 in fields:
        s, e = _single(data, fields[4], _OCTET_STRING, "mechListMIC")
        mic = data[s:e]
    return NegTokenInit(mech_types, mech_token, mic, data[list_span[0] : list_span[1]])


def _parse_neg_token_resp(data: bytes, start: int, end: int) -> NegTokenResp:
    seq_start, seq_end = _expect(data, start, end, _SEQUENCE, "NegTokenResp")
    if seq_end != end:
        raise _malformed("NegTokenResp: trailing bytes")
    fields = _context_fields(data, seq_start, seq_end, {0, 1, 2, 3})
    resp = NegTokenResp()
    if 0 in fields:
        s, e = _single(data, fields[0], _ENUMERATED, "negState")
        if e - s != 1 or data[s] > NegState.REQUEST_MIC:
            raise _malformed("negState out of range")
        resp.neg_state = data[s]
    if 1 in fields:
        s, e = _single(data, fields[1], _OID, "supportedMech")
        resp.supported_mech = _decode_oid(data[s:e])
    if 2 in fields:
        s, e = _single(data, fields[2], _OCTET_STRING, "responseToken")
        resp.response_token = data[s:e]
    if 3 in fields:
        s, e = _single(data, fields[3], _OCTET_STRING, "mechListMIC")
        resp.mech_list_mic = data[s:e]
    return resp


def parse_negotiate_token(data: bytes) -> NegTokenInit | NegTokenResp | RawNtlm | RawKerberos:
    """Recognise what an ``Authorization: Negotiate`` header carries (see the module docstring).

    Raises:
        SpnegoError: ``too-large``, ``malformed`` or ``unsupported-mech`` (a GSS token of a
            mechanism other than SPNEGO or Kerberos).
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise SpnegoError("bad-argument", "token must be bytes")
    if len(data) > MAX_TOKEN_SIZE:
        raise SpnegoError("too-large", f"token is {len(data)} bytes, limit {MAX_TOKEN_SIZE}")
    data = bytes(data)
    if data.startswith(b"NTLMSSP\x00"):
        return RawNtlm(data)
    if not data:
        raise _malformed("empty token")
    tag, start, end = _read_tlv(data, 0, len(data))
    if end != len(data):
        raise _malformed("trailing bytes after the token")
    if tag == _NEG_TOKEN_RESP:
        return _parse_neg_token_resp(data, start, end)
    if tag != _GSS_INITIAL:
        raise _malformed(f"not a GSS-API or SPNEGO token (tag 0x{tag:02x})")
    oid_start, oid_end = _expect(data, start, end, _OID, "thisMech")
    mech = _decode_oid(data[oid_start:oid_end])
    if mech in (KRB5_OID, MS_KRB5_OID):
        return RawKerberos(data, mech)
    if mech != SPNEGO_OID:
        raise SpnegoError("unsupported-mech", f"GSS-API token of mechanism {mech}")
    inner_tag, inner_start, inner_end = _read_tlv(data, oid_end, end)
    if inner_end != end:
        raise _malformed("trailing bytes inside the InitialContextToken")
    if inner_tag != _NEG_TOKEN_INIT:
        raise _malformed("InitialContextToken of SPNEGO must hold a NegTokenInit")
    return _parse_neg_token_init(data, inner_start, inner_end)


# --- DER writer -----------------------------------------------------------------------------


def encode_neg_token_resp(
    neg_state: int | None,
    supported_mech: str | None = None,
    response_token: bytes | None = None,
    mech_list_mic: bytes | None = None,
) -> bytes:
    """DER NegTokenResp ``[1]`` (RFC 4178 §4.2.2), as sent in ``WWW-Authenticate: Negotiate``."""
    body = b""
    if neg_state is not None:
        body += _tlv(0xA0, _tlv(_ENUMERATED, bytes([int(neg_state)])))
    if supported_mech is not None:
        body += _tlv(0xA1, _encode_oid(supported_mech))
    if response_token is not None:
        body += _tlv(0xA2, _tlv(_OCTET_STRING, bytes(response_token)))
    if mech_list_mic is not None:
        body += _tlv(0xA3, _tlv(_OCTET_STRING, bytes(mech_list_mic)))
    return _tlv(_NEG_TOKEN_RESP, _tlv(_SEQUENCE, body))


def encode_mech_type_list(mech_types: Sequence[str]) -> bytes:
    """DER MechTypeList (what a mechListMIC signs)."""
    return _tlv(_SEQUENCE, b"".join(_encode_oid(m) for m in mech_types))


def encode_neg_token_init(
    mech_types: Sequence[str], mech_token: bytes | None = None, mech_list_mic: bytes | None = None
) -> bytes:
    """GSS-API InitialContextToken holding a NegTokenInit (RFC 4178 §4.2.1); for tests/clients."""
    body = _tlv(0xA0, encode_mech_type_list(mech_types))
    if mech_token is not None:
        body += _tlv(0xA2, _tlv(_OCTET_STRING, bytes(mech_token)))
    if mech_list_mic is not None:
        body += _tlv(0xA3, _tlv(_OCTET_STRING, bytes(mech_list_mic)))
    inner = _tlv(_NEG_TOKEN_INIT, _tlv(_SEQUENCE, body))
    return _tlv(_GSS_INITIAL, _encode_oid(SPNEGO_OID) + inner)


# --- NTLM through SPNEGO --------------------------------------------------------------------


class SpnegoNtlmAcceptor:
    """NTLM acceptor behind ``Negotiate`` (RFC 4178 + MS-SPNG), one per connection attempt.

    Legs::

        out = acc.step(token1)          # NegTokenInit (or raw NTLMSSP) -> NegTokenResp/CHALLENGE
        [out = acc.step(token2)]        # only when NTLM was not the client's first mechanism:
                                        # the first reply asked for it (request-mic), this one
                                        # answers the client's NTLM NEGOTIATE with the CHALLENGE
        who = acc.identify(token3)      # NegTokenResp carrying the AUTHENTICATE (+ mechListMIC)
        res = acc.verify(candidates, now)
        out = acc.final_token()         # accept-completed (+ our mechListMIC), or None (raw NTLM)

    ``step`` always returns a token to send; ``identify`` must follow the CHALLENGE leg.
    Out-of-order calls raise SpnegoError("unexpected-message"); after NtlmError("wrong-password")
    ``verify`` may be retried, any other refusal ends the exchange.

    mechListMIC (MS-SPNG 3.1.5.1, 3.3.5.1): it is required when the client's AV pairs announce
    an NTLM MIC or when NTLM was not the client's preferred mechanism (downgrade protection),
    and verified whenever sent. It is the NTLM GSS_GetMIC (MS-NLMP 3.4.4) of the client's DER
    MechTypeList: the client's with the client signing/sealing key and its first sequence
    number (0), ours with the server keys and *our* first sequence number (0 with extended
    session security; without it the counter is shared, so ours is 1). After each mechListMIC
    the RC4 state of that direction is reset (3.3.5.1) so the first application message reuses
    the key stream; sequence numbers are not reset. This is MS-SPNG 3.3.5.1 as pyspnego implements
    it (interop-tested in tests/protocols/test_spnego.py, including messages signed afterwards).
    """

    def __init__(self, ntlm: NtlmAcceptor) -> None:
        self._ntlm = ntlm
        self._state = "initial"
        self._raw = False
        self._mech_types = b""
        self._mic_required = False
        self._client_mic: bytes | None = None
        self._final: bytes | None = None
        self._result: VerifyResult | None = None

    def __repr__(self) -> str:
        return f"SpnegoNtlmAcceptor(state={self._state!r}, raw={self._raw})"

    @property
    def ntlm(self) -> NtlmAcceptor:
        return self._ntlm

    @property
    def raw_ntlm(self) -> bool:
        """True when the client sent bare NTLMSSP tokens (replies are bare too)."""
        return self._raw

    def _expect(self, *states: str) -> None:
        if self._state not in states:
            raise SpnegoError("unexpected-message", f"SPNEGO acceptor is {self._state}")

    def _fail(self, exc: Exception) -> Exception:
        self._state = "failed"
        return exc

    def step(self, token: bytes) -> bytes:
        """Process a leg before the AUTHENTICATE; returns the token to send back."""
        self._expect("initial", "wait-negotiate")
        try:
            parsed = parse_negotiate_token(token)
            if self._state == "initial":
                return self._first(parsed)
            if not isinstance(parsed, NegTokenResp) or not parsed.response_token:
                raise SpnegoError("unexpected-message", "expected a NegTokenResp with the NTLM NEGOTIATE")
            challenge = self._ntlm.challenge(parsed.response_token)
            self._state = "challenged"
            return encode_neg_token_resp(NegState.ACCEPT_INCOMPLETE, None, challenge)
        except (SpnegoError, NtlmError) as exc:
            raise self._fail(exc) from None

    def _first(self, parsed: NegTokenInit | NegTokenResp | RawNtlm | RawKerberos) -> bytes:
        if isinstance(parsed, RawNtlm):
            self._raw = True
            challenge = self._ntlm.challenge(parsed.token)
            self._state = "challenged"
            return challenge
        if isinstance(parsed, RawKerberos):
            raise SpnegoError("unsupported-mech", "Kerberos token offered to the NTLM acceptor")
        if not isinstance(parsed, NegTokenInit):
            raise SpnegoError("unexpected-message", "expected a NegTokenInit first")
        if NTLM_OID not in parsed.mech_types:
            raise SpnegoError("unsupported-mech", "client does not offer NTLM")
        self._mech_types = parsed.raw_mech_types
        if parsed.mech_types[0] != NTLM_OID:
            # Not the preferred mechanism: ignore the optimistic token, ask for NTLM and demand
            # the mechListMIC that proves the mechanism list was not tampered with.
            self._mic_required = True
            self._state = "wait-negotiate"
            return encode_neg_token_resp(NegState.REQUEST_MIC, NTLM_OID)
        if not parsed.mech_token:
            self._state = "wait-negotiate"
            return encode_neg_token_resp(NegState.ACCEPT_INCOMPLETE, NTLM_OID)
        challenge = self._ntlm.challenge(parsed.mech_token)
        self._state = "challenged"
        return encode_neg_token_resp(NegState.ACCEPT_INCOMPLETE, NTLM_OID, challenge)

    def identify(self, token: bytes) -> Identity:
        """Process the leg carrying the NTLM AUTHENTICATE; returns the claimed identity."""
        self._expect("challenged")
        try:
            parsed = parse_negotiate_token(token)
            if self._raw:
                if not isinstance(parsed, RawNtlm):
                    raise SpnegoError("unexpected-message", "expected a raw NTLM AUTHENTICATE")
                auth = parsed.token
            else:
                if not isinstance(parsed, NegTokenResp) or not parsed.response_token:
                    raise SpnegoError("unexpected-message", "expected a NegTokenResp with the AUTHENTICATE")
                auth = parsed.response_token
                self._client_mic = parsed.mech_list_mic
            identity = self._ntlm.identify(auth)
        except (SpnegoError, NtlmError) as exc:
            raise self._fail(exc) from None
        self._state = "identified"
        return identity

    def verify(self, nt_hash_candidates: Sequence[bytes], now: int) -> VerifyResult:
        """Verify the NTLM response (see :meth:`NtlmAcceptor.verify`) and the mechListMIC."""
        self._expect("identified")
        try:
            result = self._ntlm.verify(nt_hash_candidates, now)
        except NtlmError as exc:
            if exc.reason != "wrong-password":
                self._state = "failed"
            raise
        if not self._raw:
            try:
                self._check_mech_list_mic(result)
            except SpnegoError as exc:
                raise self._fail(exc) from None
        self._result = result
        self._state = "complete"
        return result

    def adopt(self, result: VerifyResult) -> None:
        """Like :meth:`verify` for a result verified elsewhere (see :meth:`NtlmAcceptor.adopt`):
        the mechListMIC is checked here, with the session key the verifier returned."""
        self._expect("identified")
        try:
            self._ntlm.adopt(result)
            if not self._raw:
                self._check_mech_list_mic(result)
        except (SpnegoError, NtlmError) as exc:
            raise self._fail(exc) from None
        self._result = result
        self._state = "complete"

    def _check_mech_list_mic(self, result: VerifyResult) -> None:
        session = self._ntlm.session
        if result.mic_present:
            self._mic_required = True
        if self._client_mic is None:
            if self._mic_required:
                raise SpnegoError("mic-missing", "client sent no mechListMIC")
            return
        self._mic_required = True  # a client that sends one expects ours back
        try:
            session.verify_mic(self._mech_types, self._client_mic)
        except NtlmError:
            raise SpnegoError("bad-mic", "client mechListMIC does not verify") from None
        session.reset_rc4(incoming=True)

    def final_token(self) -> bytes | None:
        """The accept-completed NegTokenResp (with our mechListMIC when one is due); None for a
        raw NTLM exchange, which has no final token."""
        self._expect("complete")
        if self._raw:
            return None
        if self._final is None:
            mic = None
            if self._mic_required:
                session = self._ntlm.session
                mic = session.sign(self._mech_types)
                session.reset_rc4(incoming=False)
            self._final = encode_neg_token_resp(NegState.ACCEPT_COMPLETED, None, None, mic)
        return self._final
