"""NTLM (MS-NLMP) acceptor, sans-I/O: message parsing, NTLMv2 verification, session security.

The gateway terminates NTLM itself, so this module is the part that reads the most hostile bytes
the gateway ever sees. It is deliberately stricter than Windows:

* only NTLMv2 is accepted; NTLMv1, LM-only and anonymous AUTHENTICATE messages are refused by
  :meth:`NtlmAcceptor.identify` before any password is looked up;
* every message is capped at :data:`MAX_MESSAGE_SIZE` before anything is decoded, and every
  payload field (Len, MaxLen, Offset) is checked: a non-empty field must lie wholly inside the
  message, behind the fixed header (never inside the Version or MIC fields), and must not
  overlap any other non-empty field. Overlaps are refused everywhere, not only where they would
  be harmful: no encoder we know of (Windows SSPI, pyspnego, impacket, Samba, browsers) emits
  them, and allowing one byte range to be read as two fields only helps an attacker. Empty
  fields are ignored whatever their offset (Windows and others put arbitrary offsets there).
  Gaps and trailing bytes are allowed (the spec permits padding);
* the MIC (MS-NLMP 3.1.5.1.2) is checked whenever the client's MsvAvFlags say one is present,
  and the MsvAvChannelBindings hash (Extended Protection, RFC 5929 ``tls-server-end-point``)
  is enforced per :class:`NtlmAcceptor`'s ``extended_protection`` setting.

No sockets, clocks or randomness here: the caller passes the server challenge bytes and the
current time (as a FILETIME, see :func:`filetime`). Every refusal of untrusted bytes is an
:class:`NtlmError` with a short machine ``reason``; nothing else escapes the parsers. Secrets
(hashes, keys, responses, MICs) never appear in exception messages or reprs.

References: [MS-NLMP] NT LAN Manager (NTLM) Authentication Protocol, sections cited per class;
RFC 2744 §3.11 and RFC 5929 §4 for channel bindings; [MS-SPNG] 3.3.5.1 for the RC4 reset around
the SPNEGO mechListMIC.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import hmac
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from Crypto.Cipher import ARC4
from Crypto.Hash import MD4

from ..errors import UcgateError

if TYPE_CHECKING:
    _md5 = hashlib.md5
else:
    try:  # CPython's own MD5: ~2.5x faster than OpenSSL 3's EVP for the short inputs hashed here
        from _md5 import md5 as _md5
    except ImportError:  # pragma: no cover - a CPython built without its own hashes
        _md5 = hashlib.md5

__all__ = [
    "MAX_MESSAGE_SIZE",
    "AvFlags",
    "AvId",
    "AvPair",
    "AuthenticateMessage",
    "ChallengeMessage",
    "Identity",
    "NegotiateFlags",
    "NegotiateMessage",
    "NtlmAcceptor",
    "NtlmError",
    "NtlmSession",
    "Parsed",
    "NtlmV2ClientChallenge",
    "TargetInfo",
    "VerifyResult",
    "Version",
    "channel_bindings_hash",
    "filetime",
    "nt_hash",
    "ntowfv2",
    "tls_server_end_point",
]

# --- limits -------------------------------------------------------------------------------
# Real AUTHENTICATE messages are 300-1500 bytes (Windows with a long TargetInfo echo and an SPN
# stays under 2 KiB). Payload lengths are 16-bit fields, so six fields could address ~384 KiB;
# we cap the whole token at 64 KiB, the same budget as one HTTP header line (http1.py), and
# check it before decoding anything.
MAX_MESSAGE_SIZE = 64 * 1024
# Windows sends 6-10 AV pairs (names, timestamp, flags, single host, channel bindings, SPN);
# 64 bounds the loop without refusing any client we know of.
MAX_AV_PAIRS = 64
# The gateway passes "a few" candidate NT hashes (an ASP in a few spellings, ASP+OTP for the
# current OTP window); each costs two HMAC-MD5. 32 is far above any real use and bounds CPU.
MAX_CANDIDATES = 32
# FILETIME ticks (100 ns) per second, and the FILETIME of the Unix epoch (1970-01-01).
FILETIME_TICKS_PER_SECOND = 10_000_000
FILETIME_UNIX_EPOCH = 116_444_736_000_000_000
# NTLMv2 response = NTProofStr (16) + NTLMv2_CLIENT_CHALLENGE fixed part (28) + MsvAvEOL (4).
_NTLMV2_MIN_RESPONSE = 16 + 28 + 4
_NTLMV1_RESPONSE_LEN = 24

SIGNATURE = b"NTLMSSP\x00"
_NEGOTIATE, _CHALLENGE, _AUTHENTICATE = 1, 2, 3

_CLIENT_SIGN_MAGIC = b"session key to client-to-server signing key magic constant\x00"
_SERVER_SIGN_MAGIC = b"session key to server-to-client signing key magic constant\x00"
_CLIENT_SEAL_MAGIC = b"session key to client-to-server sealing key magic constant\x00"
_SERVER_SEAL_MAGIC = b"session key to server-to-client sealing key magic constant\x00"


class NtlmError(UcgateError, ValueError):
    """A refused NTLM message or exchange.

    ``reason`` is a short machine code for the audit log and metrics: ``malformed``,
    ``too-large``, ``unsupported``, ``ntlmv1``, ``lm-only``, ``anonymous``, ``stale-timestamp``,
    ``bad-mic``, ``mic-missing``, ``channel-binding-missing``, ``channel-binding-mismatch``,
    ``wrong-password``, ``unexpected-message``, ``bad-argument`` (a caller bug, not the peer's).
    ``message`` is for humans and never contains secrets.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(reason, message, message=f"{reason}: {message}")
        self.message = message


class NegotiateFlags(enum.IntFlag):
    """NegotiateFlags, MS-NLMP 2.2.2.5 (names without the ``NTLMSSP_`` prefix)."""

    NEGOTIATE_UNICODE = 0x00000001
    NEGOTIATE_OEM = 0x00000002
    REQUEST_TARGET = 0x00000004
    NEGOTIATE_SIGN = 0x00000010
    NEGOTIATE_SEAL = 0x00000020
    NEGOTIATE_DATAGRAM = 0x00000040
    NEGOTIATE_LM_KEY = 0x00000080
    NEGOTIATE_NTLM = 0x00000200
    NEGOTIATE_ANONYMOUS = 0x00000800
    NEGOTIATE_OEM_DOMAIN_SUPPLIED = 0x00001000
    NEGOTIATE_OEM_WORKSTATION_SUPPLIED = 0x00002000
    NEGOTIATE_ALWAYS_SIGN = 0x00008000
    TARGET_TYPE_DOMAIN = 0x00010000
    TARGET_TYPE_SERVER = 0x00020000
    NEGOTIATE_EXTENDED_SESSIONSECURITY = 0x00080000
    NEGOTIATE_IDENTIFY = 0x00100000
    REQUEST_NON_NT_SESSION_KEY = 0x00400000
    NEGOTIATE_TARGET_INFO = 0x00800000
    NEGOTIATE_VERSION = 0x02000000
    NEGOTIATE_128 = 0x20000000
    NEGOTIATE_KEY_EXCH = 0x40000000
    NEGOTIATE_56 = 0x80000000


NF = NegotiateFlags

# Flags the acceptor echoes back when the client asks for them (MS-NLMP 3.2.5.1.1). Never LM_KEY
# or DATAGRAM (weak/connectionless), never ANONYMOUS, never REQUEST_NON_NT_SESSION_KEY.
_ECHOED_FLAGS = (
    NF.NEGOTIATE_SIGN
    | NF.NEGOTIATE_SEAL
    | NF.NEGOTIATE_ALWAYS_SIGN
    | NF.NEGOTIATE_EXTENDED_SESSIONSECURITY
    | NF.NEGOTIATE_VERSION
    | NF.NEGOTIATE_128
    | NF.NEGOTIATE_56
    | NF.NEGOTIATE_KEY_EXCH
    | NF.NEGOTIATE_IDENTIFY
)

# The same flags as plain ints, for the arithmetic inside this module: an IntFlag's & and | make
# a new member through enum's __call__ each time (~1-2 us apiece, ~80 per sign-in); the public
# attributes stay NegotiateFlags.
_UNICODE = int(NF.NEGOTIATE_UNICODE)
_OEM = int(NF.NEGOTIATE_OEM)
_REQUEST_TARGET = int(NF.REQUEST_TARGET)
_SIGN = int(NF.NEGOTIATE_SIGN)
_SEAL = int(NF.NEGOTIATE_SEAL)
_DATAGRAM = int(NF.NEGOTIATE_DATAGRAM)
_LM_KEY = int(NF.NEGOTIATE_LM_KEY)
_NTLM = int(NF.NEGOTIATE_NTLM)
_ANONYMOUS = int(NF.NEGOTIATE_ANONYMOUS)
_TARGET_TYPE_DOMAIN = int(NF.TARGET_TYPE_DOMAIN)
_ESS = int(NF.NEGOTIATE_EXTENDED_SESSIONSECURITY)
_TARGET_INFO = int(NF.NEGOTIATE_TARGET_INFO)
_VERSION = int(NF.NEGOTIATE_VERSION)
_128 = int(NF.NEGOTIATE_128)
_KEY_EXCH = int(NF.NEGOTIATE_KEY_EXCH)
_56 = int(NF.NEGOTIATE_56)
_ECHOED = int(_ECHOED_FLAGS)
# the agreed session-security flags keep the rest of the client's word as it sent it
_NOT_ECHOED = ~_ECHOED & 0xFFFFFFFF


class AvId(enum.IntEnum):
    """AvId values of an AV_PAIR, MS-NLMP 2.2.2.1."""

    MsvAvEOL = 0x0000
    MsvAvNbComputerName = 0x0001
    MsvAvNbDomainName = 0x0002
    MsvAvDnsComputerName = 0x0003
    MsvAvDnsDomainName = 0x0004
    MsvAvDnsTreeName = 0x0005
    MsvAvFlags = 0x0006
    MsvAvTimestamp = 0x0007
    MsvAvSingleHost = 0x0008
    MsvAvTargetName = 0x0009
    MsvAvChannelBindings = 0x000A


class AvFlags(enum.IntFlag):
    """Value of MsvAvFlags, MS-NLMP 2.2.2.1."""

    CONSTRAINED_AUTHENTICATION = 0x00000001
    MIC_PROVIDED = 0x00000002
    UNTRUSTED_SPN_SOURCE = 0x00000004


# AV pairs whose value has a fixed size (MS-NLMP 2.2.2.1); anything else is malformed.
_AV_FIXED_SIZE = {
    AvId.MsvAvEOL: 0,
    AvId.MsvAvFlags: 4,
    AvId.MsvAvTimestamp: 8,
    AvId.MsvAvChannelBindings: 16,
}
_AV_FIXED_SIZE_INT = {int(k): v for k, v in _AV_FIXED_SIZE.items()}
_AV_MEMBERS: dict[int, AvId] = {int(m): m for m in AvId}  # an AvId by value, without enum's __call__
_MIC_PROVIDED = int(AvFlags.MIC_PROVIDED)


# --- small helpers ------------------------------------------------------------------------


def _malformed(message: str) -> NtlmError:
    return NtlmError("malformed", message)


def _check_size(data: object, what: str) -> bytes:
    """Bound an untrusted token before touching it; returns it as ``bytes``."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise NtlmError("bad-argument", f"{what} must be bytes")
    if len(data) > MAX_MESSAGE_SIZE:
        raise NtlmError("too-large", f"{what} is {len(data)} bytes, limit {MAX_MESSAGE_SIZE}")
    return bytes(data)


def _check_header(data: bytes, msg_type: int, min_len: int, what: str) -> None:
    if len(data) < 12 or data[:8] != SIGNATURE:
        raise _malformed(f"{what}: no NTLMSSP signature")
    (found,) = struct.unpack_from("<I", data, 8)
    if found != msg_type:
        raise NtlmError("unexpected-message", f"expected {what}, got NTLM message type {found}")
    if len(data) < min_len:
        raise _malformed(f"{what} truncated: {len(data)} bytes, header needs {min_len}")


def _read_fields(data: bytes, positions: Sequence[int], header_end: int, what: str) -> tuple[list[bytes], int]:
    """Read payload fields (Len, MaxLen, Offset; MS-NLMP 2.2.1) at ``positions``.

    Empty fields are returned as ``b""`` whatever their offset. A non-empty field must start at or
    after ``header_end``, end inside ``data`` and not overlap another non-empty field. Returns the
    values and the lowest offset of a non-empty field (``len(data)`` if there is none).
    """
    values: list[bytes] = []
    spans: list[tuple[int, int]] = []
    for pos in positions:
        length, _max_length, offset = struct.unpack_from("<HHI", data, pos)
        if length == 0:
            values.append(b"")
            continue
        end = offset + length  # Python ints: no overflow; offset < 2**32, length < 2**16.
        if offset < header_end:
            raise _malformed(f"{what}: a payload field points into the fixed header")
        if end > len(data):
            raise _malformed(f"{what}: a payload field runs past the end of the message")
        for start2, end2 in spans:
            if offset < end2 and start2 < end:
                raise _malformed(f"{what}: payload fields overlap")
        spans.append((offset, end))
        values.append(data[offset:end])
    payload_start = min((s for s, _ in spans), default=len(data))
    return values, payload_start


def _pack_fields(header_size: int, values: Sequence[bytes]) -> tuple[list[bytes], bytes]:
    """Lay ``values`` out one after another behind a header of ``header_size`` bytes."""
    descriptors: list[bytes] = []
    payload = b""
    offset = header_size
    for value in values:
        if len(value) > 0xFFFF:
            raise NtlmError("bad-argument", "payload field longer than 65535 bytes")
        descriptors.append(struct.pack("<HHI", len(value), len(value), offset))
        payload += value
        offset += len(value)
    return descriptors, payload


def _decode(value: bytes, unicode: bool, what: str) -> str:
    """Decode a name field: UTF-16LE when NEGOTIATE_UNICODE, else OEM (read as Latin-1, which
    maps every byte and so never fails; non-ASCII OEM names then just fail to verify)."""
    if not unicode:
        return value.decode("latin-1")
    if len(value) % 2:
        raise _malformed(f"{what} has an odd number of bytes for UTF-16LE")
    try:
        return value.decode("utf-16-le")
    except UnicodeDecodeError:
        raise _malformed(f"{what} is not valid UTF-16LE") from None


def _encode(value: str, unicode: bool) -> bytes:
    if unicode:
        return value.encode("utf-16-le", "surrogatepass")
    return value.encode("latin-1", "replace")


_IPAD = bytes(x ^ 0x36 for x in range(256))
_OPAD = bytes(x ^ 0x5C for x in range(256))


def hmac_md5(key: bytes, data: bytes) -> bytes:
    """HMAC-MD5 (RFC 2104) over :data:`_md5`: the same digest as ``hmac.new(key, data,
    hashlib.md5)`` at less than half its cost here (OpenSSL 3's HMAC set-up dominates for the
    short messages of NTLM)."""
    if len(key) > 64:
        key = _md5(key).digest()
    key = bytes(key).ljust(64, b"\x00")
    return _md5(key.translate(_OPAD) + _md5(key.translate(_IPAD) + data).digest()).digest()


def _rc4(key: bytes, data: bytes) -> bytes:
    return ARC4.new(key).encrypt(data)


def _upper(value: str) -> str:
    """Upper-case like Windows (RtlUpcaseUnicodeString): one code unit to one, so characters
    whose Python upper case is longer ("ß" -> "SS") stay as they are."""
    out = []
    for ch in value:
        up = ch.upper()
        out.append(up if len(up) == 1 else ch)
    return "".join(out)


# --- wire structures ----------------------------------------------------------------------


@dataclass(frozen=True)
class Version:
    """VERSION, MS-NLMP 2.2.2.10: debugging information only, never used for decisions."""

    major: int = 10
    minor: int = 0
    build: int = 17763
    revision: int = 15  # NTLMSSP_REVISION_W2K3

    @classmethod
    def unpack(cls, data: bytes) -> Version:
        major, minor, build, revision = struct.unpack_from("<BBH3xB", data)
        return cls(major, minor, build, revision)

    def pack(self) -> bytes:
        return struct.pack("<BBH3xB", self.major, self.minor, self.build, self.revision)


@dataclass(frozen=True)
class AvPair:
    """AV_PAIR, MS-NLMP 2.2.2.1: ``av_id`` (an :class:`AvId` or an unknown int) and raw value."""

    av_id: int
    value: bytes

    def text(self) -> str:
        """The value as UTF-16LE text (names, SPN); malformed text raises NtlmError."""
        return _decode(self.value, True, f"AV pair {self.av_id}")


@dataclass(frozen=True)
class TargetInfo:
    """A list of AV_PAIR ending in MsvAvEOL (MS-NLMP 2.2.2.1), as in CHALLENGE_MESSAGE
    TargetInfo and NTLMv2_CLIENT_CHALLENGE AvPairs.

    Parsing refuses duplicates (no client sends them; a duplicate MsvAvChannelBindings or
    MsvAvFlags could be read two ways), wrong sizes of fixed-size values, more than
    :data:`MAX_AV_PAIRS` pairs and a missing MsvAvEOL. Bytes after MsvAvEOL are allowed: the
    NTLMv2 ``temp`` of MS-NLMP 3.3.2 ends with Z(4), and they are covered by the NTProofStr.
    """

    pairs: tuple[AvPair, ...] = ()

    @classmethod
    def unpack(cls, data: bytes) -> TargetInfo:
        pairs: list[AvPair] = []
        seen: set[int] = set()
        pos = 0
        size = len(data)
        fixed_sizes, members, unpack_from = _AV_FIXED_SIZE_INT, _AV_MEMBERS, struct.unpack_from
        while True:
            if len(pairs) > MAX_AV_PAIRS:
                raise _malformed(f"more than {MAX_AV_PAIRS} AV pairs")
            if pos + 4 > size:
                raise _malformed("AV pair list without MsvAvEOL")
            av_id, length = unpack_from("<HH", data, pos)
            pos += 4
            if pos + length > size:
                raise _malformed("AV pair runs past the end of its list")
            fixed = fixed_sizes.get(av_id)
            if fixed is not None and length != fixed:
                raise _malformed(f"AV pair {av_id} has length {length}, expected {fixed}")
            if av_id == 0:  # MsvAvEOL
                return cls(tuple(pairs))
            if av_id in seen:
                raise _malformed(f"duplicate AV pair {av_id}")
            seen.add(av_id)
            pairs.append(AvPair(members.get(av_id, av_id), data[pos : pos + length]))
            pos += length

    def pack(self) -> bytes:
        out = b""
        for pair in self.pairs:
            if pair.av_id == AvId.MsvAvEOL:
                continue
            out += struct.pack("<HH", int(pair.av_id), len(pair.value)) + pair.value
        return out + struct.pack("<HH", AvId.MsvAvEOL, 0)

    def get(self, av_id: int) -> bytes | None:
        for pair in self.pairs:
            if pair.av_id == av_id:
                return pair.value
        return None

    def flags(self) -> AvFlags:
        return AvFlags(self._flags())

    def _flags(self) -> int:
        value = self.get(AvId.MsvAvFlags)
        return struct.unpack("<I", value)[0] if value is not None else 0

    def timestamp(self) -> int | None:
        value = self.get(AvId.MsvAvTimestamp)
        return struct.unpack("<Q", value)[0] if value is not None else None


@dataclass
class NegotiateMessage:
    """NEGOTIATE_MESSAGE (type 1), MS-NLMP 2.2.1.1.

    The 16-byte form without DomainNameFields/WorkstationFields (old clients) is accepted. The
    OEM domain and workstation strings are informational only and decoded as Latin-1.
    """

    flags: NegotiateFlags
    domain_name: str | None = None
    workstation: str | None = None
    version: Version | None = None

    HEADER_SIZE = 32

    @classmethod
    def unpack(cls, data: bytes) -> NegotiateMessage:
        data = _check_size(data, "NEGOTIATE_MESSAGE")
        _check_header(data, _NEGOTIATE, 16, "NEGOTIATE_MESSAGE")
        raw_flags = struct.unpack_from("<I", data, 12)[0]
        flags = NegotiateFlags(raw_flags)
        if len(data) < cls.HEADER_SIZE:
            return cls(flags)
        has_version = bool(raw_flags & _VERSION) and len(data) >= cls.HEADER_SIZE + 8
        header_end = cls.HEADER_SIZE + (8 if has_version else 0)
        (domain, workstation), _ = _read_fields(data, (16, 24), header_end, "NEGOTIATE_MESSAGE")
        return cls(
            flags,
            domain.decode("latin-1") if domain else None,
            workstation.decode("latin-1") if workstation else None,
            Version.unpack(data[32:40]) if has_version else None,
        )

    def pack(self) -> bytes:
        header = self.HEADER_SIZE + (8 if self.version is not None else 0)
        descriptors, payload = _pack_fields(
            header,
            [(self.domain_name or "").encode("latin-1"), (self.workstation or "").encode("latin-1")],
        )
        return (
            SIGNATURE
            + struct.pack("<II", _NEGOTIATE, int(self.flags))
            + b"".join(descriptors)
            + (self.version.pack() if self.version is not None else b"")
            + payload
        )


@dataclass
class ChallengeMessage:
    """CHALLENGE_MESSAGE (type 2), MS-NLMP 2.2.1.2.

    TargetName is decoded per NEGOTIATE_UNICODE; TargetInfo is an AV_PAIR list (always UTF-16LE).
    """

    flags: NegotiateFlags
    server_challenge: bytes
    target_name: str | None = None
    target_info: TargetInfo | None = None
    version: Version | None = None

    HEADER_SIZE = 48

    @classmethod
    def unpack(cls, data: bytes) -> ChallengeMessage:
        data = _check_size(data, "CHALLENGE_MESSAGE")
        _check_header(data, _CHALLENGE, cls.HEADER_SIZE, "CHALLENGE_MESSAGE")
        raw_flags = struct.unpack_from("<I", data, 20)[0]
        flags = NegotiateFlags(raw_flags)
        server_challenge = data[24:32]
        has_version = bool(raw_flags & _VERSION) and len(data) >= cls.HEADER_SIZE + 8
        header_end = cls.HEADER_SIZE + (8 if has_version else 0)
        (name, info), _ = _read_fields(data, (12, 40), header_end, "CHALLENGE_MESSAGE")
        unicode = bool(raw_flags & _UNICODE)
        return cls(
            flags,
            server_challenge,
            _decode(name, unicode, "TargetName") if name else None,
            TargetInfo.unpack(info) if info else None,
            Version.unpack(data[48:56]) if has_version else None,
        )

    def pack(self) -> bytes:
        if len(self.server_challenge) != 8:
            raise NtlmError("bad-argument", "server challenge must be 8 bytes")
        unicode = bool(int(self.flags) & _UNICODE)
        header = self.HEADER_SIZE + (8 if self.version is not None else 0)
        name = _encode(self.target_name, unicode) if self.target_name else b""
        info = self.target_info.pack() if self.target_info is not None else b""
        (name_d, info_d), payload = _pack_fields(header, [name, info])
        return (
            SIGNATURE
            + struct.pack("<I", _CHALLENGE)
            + name_d
            + struct.pack("<I", int(self.flags))
            + self.server_challenge
            + b"\x00" * 8
            + info_d
            + (self.version.pack() if self.version is not None else b"")
            + payload
        )


@dataclass
class AuthenticateMessage:
    """AUTHENTICATE_MESSAGE (type 3), MS-NLMP 2.2.1.3.

    The fixed part is 64 bytes, then Version (8) and MIC (16). The MIC is taken to be present
    when no non-empty payload field starts before byte 88 (the layout every MIC-sending client
    uses: Windows, pyspnego); it then sits at bytes 72..88. Whether the client *claims* a MIC is
    decided by MsvAvFlags inside the NTProofStr-protected NTLMv2 response, not by this layout.
    """

    flags: NegotiateFlags
    lm_challenge_response: bytes = field(default=b"", repr=False)
    nt_challenge_response: bytes = field(default=b"", repr=False)
    domain_name: str = ""
    user_name: str = ""
    workstation: str = ""
    encrypted_random_session_key: bytes = field(default=b"", repr=False)
    version: Version | None = None
    mic: bytes | None = field(default=None, repr=False)
    # The bytes this message was parsed from (needed for the MIC); None for built messages.
    raw: bytes | None = field(default=None, repr=False, compare=False)

    HEADER_SIZE = 64
    MIC_OFFSET = 72

    @classmethod
    def unpack(cls, data: bytes) -> AuthenticateMessage:
        data = _check_size(data, "AUTHENTICATE_MESSAGE")
        _check_header(data, _AUTHENTICATE, cls.HEADER_SIZE, "AUTHENTICATE_MESSAGE")
        raw_flags = struct.unpack_from("<I", data, 60)[0]
        flags = NegotiateFlags(raw_flags)
        values, payload_start = _read_fields(data, (12, 20, 28, 36, 44, 52), cls.HEADER_SIZE, "AUTHENTICATE_MESSAGE")
        lm, nt, domain, user, workstation, enc_key = values
        version = None
        mic = None
        if payload_start >= cls.MIC_OFFSET + 16:
            mic = data[cls.MIC_OFFSET : cls.MIC_OFFSET + 16]
        if payload_start >= cls.HEADER_SIZE + 8 and raw_flags & _VERSION:
            version = Version.unpack(data[64:72])
        unicode = bool(raw_flags & _UNICODE)
        return cls(
            flags=flags,
            lm_challenge_response=lm,
            nt_challenge_response=nt,
            domain_name=_decode(domain, unicode, "DomainName"),
            user_name=_decode(user, unicode, "UserName"),
            workstation=_decode(workstation, unicode, "Workstation"),
            encrypted_random_session_key=enc_key,
            version=version,
            mic=mic,
            raw=data,
        )

    def pack(self) -> bytes:
        """Serialise. Version is written when set or when there is a MIC (then zero if unset);
        the MIC, when set, at 72..88."""
        unicode = bool(int(self.flags) & _UNICODE)
        tail = b""
        if self.version is not None or self.mic is not None:
            tail = (self.version or Version(0, 0, 0, 0)).pack()
        if self.mic is not None:
            if len(self.mic) != 16:
                raise NtlmError("bad-argument", "MIC must be 16 bytes")
            tail += self.mic
        header = self.HEADER_SIZE + len(tail)
        descriptors, payload = _pack_fields(
            header,
            [
                self.lm_challenge_response,
                self.nt_challenge_response,
                _encode(self.domain_name, unicode),
                _encode(self.user_name, unicode),
                _encode(self.workstation, unicode),
                self.encrypted_random_session_key,
            ],
        )
        return (
            SIGNATURE
            + struct.pack("<I", _AUTHENTICATE)
            + b"".join(descriptors)
            + struct.pack("<I", int(self.flags))
            + tail
            + payload
        )

    def zeroed_mic_bytes(self) -> bytes:
        """The message as received with the MIC field set to zero (MS-NLMP 3.1.5.1.2)."""
        raw = self.raw if self.raw is not None else self.pack()
        return raw[: self.MIC_OFFSET] + b"\x00" * 16 + raw[self.MIC_OFFSET + 16 :]


@dataclass(frozen=True)
class NtlmV2ClientChallenge:
    """NTLMv2_CLIENT_CHALLENGE, MS-NLMP 2.2.2.7 (the blob after the NTProofStr in an
    NTLMv2_RESPONSE, 2.2.2.8). ``raw`` is the whole blob as hashed by the NTProofStr."""

    timestamp: int
    challenge_from_client: bytes
    av_pairs: TargetInfo
    raw: bytes = field(repr=False)

    @classmethod
    def unpack(cls, data: bytes) -> NtlmV2ClientChallenge:
        if len(data) < 28 + 4:
            raise _malformed("NTLMv2 client challenge truncated")
        resp_type, hi_resp_type = data[0], data[1]
        if resp_type != 1 or hi_resp_type != 1:
            raise _malformed("NTLMv2 client challenge has an unknown RespType")
        (timestamp,) = struct.unpack_from("<Q", data, 8)
        return cls(timestamp, data[16:24], TargetInfo.unpack(data[28:]), data)


# --- hashing and channel binding ------------------------------------------------------------


def nt_hash(password: str) -> bytes:
    """NTOWFv1 = MD4(UNICODE(password)), MS-NLMP 3.3.1."""
    # MD4Hash(data), not MD4.new(data): new() makes a hash object and then a second one
    return MD4.MD4Hash(password.encode("utf-16-le", "surrogatepass")).digest()


def ntowfv2(nt_hash: bytes, user: str, domain: str) -> bytes:
    """NTOWFv2 = HMAC_MD5(NT hash, UNICODE(Uppercase(user) + domain)), MS-NLMP 3.3.2."""
    if len(nt_hash) != 16:
        raise NtlmError("bad-argument", "an NT hash is 16 bytes")
    return hmac_md5(nt_hash, _ntowfv2_data(user, domain))


def _ntowfv2_data(user: str, domain: str) -> bytes:
    """What NTOWFv2 MACs: UNICODE(Uppercase(user) + domain)."""
    return (_upper(user) + domain).encode("utf-16-le", "surrogatepass")


def filetime(unix_seconds: float) -> int:
    """FILETIME (100 ns ticks since 1601-01-01 UTC) of a Unix time, e.g. ``time.time()``."""
    return FILETIME_UNIX_EPOCH + round(unix_seconds * FILETIME_TICKS_PER_SECOND)


def tls_server_end_point(cert_der: bytes) -> bytes:
    """``tls-server-end-point`` channel binding data of our certificate, RFC 5929 §4.1.

    Hash is the certificate's signature hash, except MD5 and SHA-1 become SHA-256 (§4.1). For
    signature algorithms without a separate hash (Ed25519/Ed448) the RFC leaves it undefined;
    SHA-256 is used, as Windows and pyspnego do. Raises ValueError on an unreadable certificate.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    cert = x509.load_der_x509_certificate(bytes(cert_der))
    algorithm = cert.signature_hash_algorithm
    if algorithm is None or isinstance(algorithm, (hashes.MD5, hashes.SHA1)):
        algorithm = hashes.SHA256()
    digest = hashes.Hash(algorithm)
    digest.update(bytes(cert_der))
    return b"tls-server-end-point:" + digest.finalize()


def channel_bindings_hash(application_data: bytes) -> bytes:
    """MD5 of a gss_channel_bindings_struct (RFC 2744 §3.11; MS-NLMP 2.2.2.1 MsvAvChannelBindings):
    initiator and acceptor address types and addresses zero/empty, lengths as 32-bit
    little-endian (the SSPI/Windows layout), then ``application_data``."""
    packed = struct.pack("<IIII", 0, 0, 0, 0) + struct.pack("<I", len(application_data))
    return _md5(packed + bytes(application_data)).digest()


# --- session security (MS-NLMP 3.4) --------------------------------------------------------


def signkey(flags: int, exported_session_key: bytes, mode: str) -> bytes | None:
    """SIGNKEY, MS-NLMP 3.4.5.2; None without extended session security."""
    if not int(flags) & _ESS:
        return None
    magic = _CLIENT_SIGN_MAGIC if mode == "client" else _SERVER_SIGN_MAGIC
    return _md5(exported_session_key + magic).digest()


def sealkey(flags: int, exported_session_key: bytes, mode: str) -> bytes:
    """SEALKEY, MS-NLMP 3.4.5.3."""
    flags = int(flags)
    key = exported_session_key
    if flags & _ESS:
        if flags & _128:
            key = key[:16]
        elif flags & _56:
            key = key[:7]
        else:
            key = key[:5]
        magic = _CLIENT_SEAL_MAGIC if mode == "client" else _SERVER_SEAL_MAGIC
        return _md5(key + magic).digest()
    if flags & (_LM_KEY | _DATAGRAM):
        if flags & _56:
            return key[:7] + b"\xa0"
        return key[:5] + b"\xe5\x38\xb0"
    return key


class _Direction:
    """One direction's sealing state: RC4 handle, signing key (ESS only). The keys and the RC4
    handle are made on first use: most sessions never sign (plain NTLM over HTTP has no use for
    session security; the id service verifies and hands the key over), and an RC4 set-up is
    ~8 us. A handle made later is the same key stream as one made at once."""

    __slots__ = ("_flags", "_key", "_mode", "_seal_key", "_sign_key", "_handle", "_keyed")

    def __init__(self, flags: int, exported_session_key: bytes, mode: str) -> None:
        self._flags, self._key, self._mode = flags, exported_session_key, mode
        self._seal_key = b""
        self._sign_key: bytes | None = None
        self._handle: ARC4.ARC4Cipher | None = None
        self._keyed = False

    def _derive(self) -> None:
        self._seal_key = sealkey(self._flags, self._key, self._mode)
        self._sign_key = signkey(self._flags, self._key, self._mode)
        self._keyed = True

    @property
    def sign_key(self) -> bytes | None:
        if not self._keyed:
            self._derive()
        return self._sign_key

    @property
    def handle(self) -> ARC4.ARC4Cipher:
        handle = self._handle
        if handle is None:
            if not self._keyed:
                self._derive()
            handle = self._handle = ARC4.new(self._seal_key)
        return handle

    def reset(self) -> None:
        self._handle = None  # a new key stream from the seal key, at the next use


class NtlmSession:
    """NTLM session security for a completed context, acceptor side (MS-NLMP 3.4).

    Only message integrity is offered (GSS_GetMIC / GSS_VerifyMIC, 3.4.4 MAC with and without
    extended session security, with key exchange), which is what SPNEGO's mechListMIC needs.

    Sequence numbers follow SSPI as pyspnego reproduces it: with extended session security
    each direction counts from 0 on its own; without it one counter is shared by both
    directions. The counter advances on every sign/verify; :meth:`reset_rc4` (MS-SPNG 3.3.5.1)
    only restarts the RC4 key stream, not the counters.
    """

    def __init__(self, flags: int, exported_session_key: bytes) -> None:
        self.flags = NegotiateFlags(flags)
        raw = self._flags = int(flags)
        self._ess = bool(raw & _ESS)
        key = exported_session_key
        self._in = _Direction(raw, key, "client")
        self._out = _Direction(raw, key, "server")
        self._seq_in = 0
        self._seq_out = 0

    def __repr__(self) -> str:
        return f"NtlmSession(flags={self.flags!r})"

    def _next_seq(self, incoming: bool) -> int:
        if self._ess and incoming:
            seq, self._seq_in = self._seq_in, self._seq_in + 1
        else:
            seq, self._seq_out = self._seq_out, self._seq_out + 1
        return seq

    def _mac(self, direction: _Direction, seq: int, message: bytes) -> bytes:
        if not self._flags & _SIGN:
            # SSPI's answer to GSS_GetMIC when only ALWAYS_SIGN was negotiated (a dummy token).
            return b"\x01" + b"\x00" * 15
        if self._ess:
            sign_key = direction.sign_key
            assert sign_key is not None
            checksum = hmac_md5(sign_key, struct.pack("<I", seq) + message)[:8]
            if self._flags & _KEY_EXCH:
                checksum = direction.handle.encrypt(checksum)
            return struct.pack("<I", 1) + checksum + struct.pack("<I", seq)
        # MS-NLMP 3.4.4.1, MAC without extended session security.
        crc = struct.pack("<I", zlib.crc32(message) & 0xFFFFFFFF)
        direction.handle.encrypt(b"\x00" * 4)  # RandomPad, consumed then sent as zero
        checksum = direction.handle.encrypt(crc)
        seq_field = direction.handle.encrypt(b"\x00" * 4)
        seq_xor = struct.unpack("<I", seq_field)[0] ^ seq
        return struct.pack("<I", 1) + b"\x00" * 4 + checksum + struct.pack("<I", seq_xor)

    def sign(self, message: bytes) -> bytes:
        """GSS_GetMIC: the 16-byte NTLMSSP_MESSAGE_SIGNATURE of ``message`` (server to client)."""
        return self._mac(self._out, self._next_seq(incoming=False), message)

    def verify_mic(self, message: bytes, signature: bytes) -> None:
        """GSS_VerifyMIC of a client signature; raises NtlmError("bad-mic")."""
        expected = self._mac(self._in, self._next_seq(incoming=True), message)
        if not isinstance(signature, (bytes, bytearray)) or not hmac.compare_digest(expected, bytes(signature)):
            raise NtlmError("bad-mic", "message signature does not verify")

    def reset_rc4(self, *, incoming: bool) -> None:
        """Restart one direction's RC4 key stream (MS-SPNG 3.3.5.1, after a mechListMIC)."""
        (self._in if incoming else self._out).reset()


# --- the acceptor ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    """Who the AUTHENTICATE_MESSAGE claims to be (not yet verified)."""

    user: str
    domain: str
    workstation: str


@dataclass(frozen=True)
class VerifyResult:
    """A verified NTLMv2 AUTHENTICATE_MESSAGE.

    ``channel_binding`` is ``"verified"`` (client hash matched our TLS binding), ``"absent"``
    (client sent none or all-zero, and that was allowed) or ``"not-checked"``
    (``extended_protection="off"``). ``target_name`` is the client's MsvAvTargetName (SPN) if any.
    """

    candidate_index: int
    session_base_key: bytes = field(repr=False)
    exported_session_key: bytes = field(repr=False)
    channel_binding: str
    flags: NegotiateFlags = NegotiateFlags(0)
    mic_present: bool = False
    target_name: str | None = None


@dataclass(frozen=True, slots=True)
class Parsed:
    """An exchange as :class:`NtlmAcceptor` parsed and checked it up to a successful
    :meth:`~NtlmAcceptor.identify` (:meth:`NtlmAcceptor.parsed`): handed to
    :meth:`NtlmAcceptor.from_messages` in the same process, which then takes it instead of
    parsing the same bytes again. It never crosses a process boundary (a remote id service
    gets the messages and parses them itself)."""

    negotiate: bytes = field(repr=False)
    challenge: bytes = field(repr=False)
    authenticate: bytes = field(repr=False)
    server_challenge: bytes = field(repr=False)
    challenge_time: int
    challenge_flags: int  # the CHALLENGE's flag word
    message: AuthenticateMessage = field(repr=False)
    client_challenge: NtlmV2ClientChallenge = field(repr=False)

    def answers(self, negotiate: bytes, challenge: bytes, server_challenge: bytes, challenge_time: int) -> bool:
        """Whether this is the parse of that NEGOTIATE answered by that CHALLENGE (same bytes,
        same server challenge and time)."""
        return (
            self.challenge_time == challenge_time
            and hmac.compare_digest(self.server_challenge, server_challenge)
            and self.negotiate == negotiate
            and self.challenge == challenge
        )


@functools.lru_cache(maxsize=64)
def _target_names(names: tuple[str, str, str, str]) -> bytes:
    """The CHALLENGE TargetInfo's name pairs for (NetBIOS domain, NetBIOS computer, DNS domain,
    DNS computer), as :meth:`TargetInfo.pack` lays them out: the same for every CHALLENGE of a
    gateway, so packed once."""
    nb_domain, nb_computer, dns_domain, dns_computer = names
    return TargetInfo(
        (
            AvPair(AvId.MsvAvNbDomainName, nb_domain.encode("utf-16-le")),
            AvPair(AvId.MsvAvNbComputerName, nb_computer.encode("utf-16-le")),
            AvPair(AvId.MsvAvDnsDomainName, dns_domain.encode("utf-16-le")),
            AvPair(AvId.MsvAvDnsComputerName, dns_computer.encode("utf-16-le")),
            AvPair(AvId.MsvAvDnsTreeName, dns_domain.encode("utf-16-le")),
        )
    ).pack()[:-4]  # without its MsvAvEOL


_TIMESTAMP_PAIR = struct.pack("<HH", AvId.MsvAvTimestamp, 8)
_EOL_PAIR = struct.pack("<HH", AvId.MsvAvEOL, 0)
_VERSION_BYTES = Version().pack()


def _challenge_bytes(flags: int, server_challenge: bytes, names: tuple[str, str, str, str], now: int) -> bytes:
    """Our CHALLENGE_MESSAGE: byte for byte ``ChallengeMessage(flags, server_challenge,
    target_name=<NetBIOS domain> if REQUEST_TARGET, target_info=<the names, MsvAvTimestamp now>,
    version=Version() if NEGOTIATE_VERSION).pack()``, without building those objects."""
    info = _target_names(names) + _TIMESTAMP_PAIR + struct.pack("<Q", now) + _EOL_PAIR
    nb_domain = names[0]
    name = _encode(nb_domain, bool(flags & _UNICODE)) if flags & _REQUEST_TARGET and nb_domain else b""
    if len(name) > 0xFFFF or len(info) > 0xFFFF:
        raise NtlmError("bad-argument", "payload field longer than 65535 bytes")
    header = ChallengeMessage.HEADER_SIZE + (8 if flags & _VERSION else 0)
    return b"".join(
        (
            SIGNATURE,
            struct.pack("<IHHI", _CHALLENGE, len(name), len(name), header),
            struct.pack("<I", flags),
            server_challenge,
            b"\x00" * 8,
            struct.pack("<HHI", len(info), len(info), header + len(name)),
            _VERSION_BYTES if flags & _VERSION else b"",
            name,
            info,
        )
    )


class ExtendedProtection(enum.StrEnum):
    """NTLM channel binding (EPA): the ``extended_protection`` of [auth] and of the acceptors."""

    REQUIRE = "require"  # absent or mismatching binding refused when we have binding data
    ALLOW = "allow"  # absent accepted, mismatch refused
    OFF = "off"  # not checked


_EXTENDED_PROTECTION = tuple(e.value for e in ExtendedProtection)


class NtlmAcceptor:
    """Server side of one NTLM exchange (MS-NLMP 3.2.5), one instance per connection attempt.

    ``challenge(NEGOTIATE) -> CHALLENGE``, then ``identify(AUTHENTICATE) -> Identity`` (structural
    checks only; the caller looks up the password candidates for that identity), then
    ``verify(candidates, now) -> VerifyResult``. Out-of-order calls raise
    NtlmError("unexpected-message"). After "wrong-password" ``verify`` may be called again with
    other candidates; any other refusal ends the exchange.

    Split across processes (the gateway holds no NT hashes): the gateway runs ``challenge`` and
    ``identify``, sends :meth:`messages` to the id service, which rebuilds the acceptor with
    :meth:`from_messages` and runs ``identify`` and ``verify`` there; the gateway then
    :meth:`adopt` takes the returned result (flags and exported session key) for session security.

    Args:
        server_challenge: 8 random bytes from the caller's CSPRNG.
        now: current time as FILETIME; becomes the CHALLENGE's MsvAvTimestamp.
        channel_binding_data: ``tls_server_end_point(our cert)`` on TLS, None on plain HTTP.
        extended_protection: "require" (absent or mismatching binding refused when we have
            binding data), "allow" (absent accepted, mismatch refused), "off" (not checked).
        max_clock_skew: seconds allowed between the challenge time, the client's timestamp and
            the verification time.
        require_mic: refuse clients whose MsvAvFlags do not announce a MIC ("mic-missing").
            Every current client sends one because our CHALLENGE carries MsvAvTimestamp.
    """

    def __init__(
        self,
        *,
        server_challenge: bytes,
        now: int,
        netbios_domain: str,
        netbios_computer: str,
        dns_domain: str,
        dns_computer: str,
        channel_binding_data: bytes | None,
        extended_protection: str = ExtendedProtection.REQUIRE,
        max_clock_skew: int = 300,
        require_mic: bool = False,
    ) -> None:
        if not isinstance(server_challenge, bytes) or len(server_challenge) != 8:
            raise NtlmError("bad-argument", "server_challenge must be 8 bytes")
        if extended_protection not in _EXTENDED_PROTECTION:
            raise NtlmError("bad-argument", f"extended_protection must be one of {_EXTENDED_PROTECTION}")
        if max_clock_skew < 0:
            raise NtlmError("bad-argument", "max_clock_skew must be >= 0")
        self._server_challenge = server_challenge
        self._challenge_time = int(now)
        self._names = (netbios_domain, netbios_computer, dns_domain, dns_computer)
        self._binding_hash = channel_bindings_hash(channel_binding_data) if channel_binding_data is not None else None
        self._extended_protection = extended_protection
        self._max_skew_ticks = int(max_clock_skew) * FILETIME_TICKS_PER_SECOND
        self._require_mic = require_mic
        self._state = "initial"
        self._negotiate_raw = b""
        self._challenge_raw = b""
        self._challenge_flags = 0  # the CHALLENGE's flag word, an int (see _UNICODE...)
        # what from_messages was handed (see Parsed): the AUTHENTICATE's bytes and their parse
        self._handed: tuple[bytes, AuthenticateMessage, NtlmV2ClientChallenge] | None = None
        self._auth: AuthenticateMessage | None = None
        self._client_challenge: NtlmV2ClientChallenge | None = None
        self._session: NtlmSession | None = None

    def __repr__(self) -> str:
        return f"NtlmAcceptor(state={self._state!r})"

    @property
    def state(self) -> str:
        """ "initial", "challenged", "identified", "complete" or "failed"."""
        return self._state

    @property
    def complete(self) -> bool:
        return self._state == "complete"

    @property
    def session(self) -> NtlmSession:
        """Session security of the completed context."""
        if self._session is None:
            raise NtlmError("unexpected-message", "no completed NTLM context")
        return self._session

    def _expect(self, *states: str) -> None:
        if self._state not in states:
            raise NtlmError("unexpected-message", f"NTLM acceptor is {self._state}")

    def _fail(self, error: NtlmError) -> NtlmError:
        self._state = "failed"
        return error

    # -- leg 1 --------------------------------------------------------------------------------

    @staticmethod
    def _challenge_flags_for(negotiate_token: bytes) -> int:
        """Parse a NEGOTIATE_MESSAGE; the flags our CHALLENGE answers it with (3.2.5.1.1)."""
        offered = int(NegotiateMessage.unpack(negotiate_token).flags)
        if offered & _UNICODE:
            flags = _UNICODE
        elif offered & _OEM:
            flags = _OEM
        else:
            raise NtlmError("unsupported", "client offers neither Unicode nor OEM strings")
        flags |= offered & _ECHOED
        flags |= _NTLM | _TARGET_INFO
        if offered & _REQUEST_TARGET:
            flags |= _REQUEST_TARGET | _TARGET_TYPE_DOMAIN
        return flags

    def challenge(self, negotiate_token: bytes) -> bytes:
        """Parse the NEGOTIATE_MESSAGE and return our CHALLENGE_MESSAGE (MS-NLMP 3.2.5.1.1)."""
        self._expect("initial")
        try:
            flags = self._challenge_flags_for(negotiate_token)
        except NtlmError as exc:
            raise self._fail(exc) from None
        self._challenge_raw = _challenge_bytes(flags, self._server_challenge, self._names, self._challenge_time)
        self._negotiate_raw = bytes(negotiate_token)
        self._challenge_flags = flags
        self._state = "challenged"
        return self._challenge_raw

    # -- verifying elsewhere ------------------------------------------------------------------

    @classmethod
    def from_messages(
        cls,
        *,
        negotiate: bytes,
        challenge: bytes,
        server_challenge: bytes,
        challenge_time: int,
        channel_binding_data: bytes | None,
        extended_protection: str = ExtendedProtection.REQUIRE,
        max_clock_skew: int = 300,
        require_mic: bool = False,
        parsed: Parsed | None = None,
    ) -> NtlmAcceptor:
        """Rebuild, in state "challenged", the acceptor that answered ``negotiate`` with
        ``challenge`` — so that another process can verify the AUTHENTICATE (the id service
        verifies handshakes the gateway relays; the gateway never holds NT hashes).

        ``parsed``: what the sending acceptor parsed (:meth:`parsed`), when it is in this process.
        Taken when it is of these very messages (same bytes, server challenge and time): the
        NEGOTIATE and CHALLENGE are then not parsed again, nor is an AUTHENTICATE with the
        bytes it was parsed from (:meth:`identify` still makes its refusals on that parse).
        Anything else is parsed and checked as without it.

        The two messages are kept verbatim (the MIC covers the exact bytes). The CHALLENGE must
        be the one this class would have sent for that NEGOTIATE with ``server_challenge`` at
        ``challenge_time``: same flags, same server challenge, same MsvAvTimestamp. The server
        names in its TargetInfo are not checked (they are the sender's configuration). Then
        :meth:`identify` and :meth:`verify` run exactly as in the process that sent it.

        Raises:
            NtlmError: ``malformed``/``too-large``/``unsupported`` for an unusable NEGOTIATE or
                CHALLENGE, ``bad-argument`` when the CHALLENGE does not match the other
                arguments (or they are out of range, as for ``__init__``).
        """
        acceptor = cls(
            server_challenge=server_challenge,
            now=challenge_time,
            netbios_domain="",
            netbios_computer="",
            dns_domain="",
            dns_computer="",
            channel_binding_data=channel_binding_data,
            extended_protection=extended_protection,
            max_clock_skew=max_clock_skew,
            require_mic=require_mic,
        )
        if parsed is not None and parsed.answers(negotiate, challenge, server_challenge, int(challenge_time)):
            # the same bytes, already parsed and checked by the acceptor that sent the CHALLENGE
            flags = parsed.challenge_flags
            acceptor._handed = (parsed.authenticate, parsed.message, parsed.client_challenge)
        else:
            flags = cls._challenge_flags_for(negotiate)
            sent = ChallengeMessage.unpack(challenge)
            if sent.flags != flags:
                raise NtlmError("bad-argument", "CHALLENGE_MESSAGE flags are not the answer to this NEGOTIATE")
            if not hmac.compare_digest(sent.server_challenge, server_challenge):
                raise NtlmError("bad-argument", "CHALLENGE_MESSAGE carries another server challenge")
            if sent.target_info is None or sent.target_info.timestamp() != int(challenge_time):
                raise NtlmError("bad-argument", "CHALLENGE_MESSAGE MsvAvTimestamp is not challenge_time")
        acceptor._negotiate_raw = bytes(negotiate)
        acceptor._challenge_raw = bytes(challenge)
        acceptor._challenge_flags = flags
        acceptor._state = "challenged"
        return acceptor

    def parsed(self) -> Parsed:
        """This exchange as parsed and checked so far (after :meth:`identify`), for
        :meth:`from_messages` in the *same process* (``parsed=``): the id service in the
        gateway's process then reads none of the three messages again."""
        if self._auth is None or self._auth.raw is None or self._client_challenge is None:
            raise NtlmError("unexpected-message", "no AUTHENTICATE_MESSAGE yet")
        return Parsed(
            negotiate=self._negotiate_raw,
            challenge=self._challenge_raw,
            authenticate=self._auth.raw,
            server_challenge=self._server_challenge,
            challenge_time=self._challenge_time,
            challenge_flags=self._challenge_flags,
            message=self._auth,
            client_challenge=self._client_challenge,
        )

    @property
    def server_challenge(self) -> bytes:
        return self._server_challenge

    @property
    def challenge_time(self) -> int:
        """The FILETIME our CHALLENGE carried as MsvAvTimestamp."""
        return self._challenge_time

    def messages(self) -> tuple[bytes, bytes, bytes]:
        """NEGOTIATE, CHALLENGE and AUTHENTICATE exactly as exchanged (after :meth:`identify`),
        for :meth:`from_messages` in the process that verifies."""
        if self._auth is None or self._auth.raw is None:
            raise NtlmError("unexpected-message", "no AUTHENTICATE_MESSAGE yet")
        return self._negotiate_raw, self._challenge_raw, self._auth.raw

    def adopt(self, result: VerifyResult) -> None:
        """Complete the exchange with a result verified elsewhere (by the id service, from
        :meth:`messages`): sets up session security from its flags and exported session key."""
        self._expect("identified")
        if len(result.exported_session_key) != 16:
            raise NtlmError("bad-argument", "an exported session key is 16 bytes")
        self._session = NtlmSession(result.flags, result.exported_session_key)
        self._state = "complete"

    # -- leg 2 --------------------------------------------------------------------------------

    def identify(self, authenticate_token: bytes) -> Identity:
        """Parse the AUTHENTICATE_MESSAGE and refuse what can never verify, before any password
        is looked up: anonymous, LM-only, NTLMv1, malformed NTLMv2 responses."""
        self._expect("challenged")
        handed, self._handed = self._handed, None
        try:
            if handed is not None and handed[0] == authenticate_token:
                auth = handed[1]
            else:
                handed = None
                auth = AuthenticateMessage.unpack(authenticate_token)
            nt, lm = auth.nt_challenge_response, auth.lm_challenge_response
            if not auth.user_name or int(auth.flags) & _ANONYMOUS:
                raise NtlmError("anonymous", "anonymous NTLM logon refused")
            if not nt:
                if not lm or lm == b"\x00":
                    raise NtlmError("anonymous", "anonymous NTLM logon refused")
                raise NtlmError("lm-only", "LM-only response refused; NTLMv2 required")
            if len(nt) == _NTLMV1_RESPONSE_LEN:
                raise NtlmError("ntlmv1", "NTLMv1 response refused; NTLMv2 required")
            if len(nt) < _NTLMV2_MIN_RESPONSE:
                raise _malformed(f"NtChallengeResponse of {len(nt)} bytes is neither v1 nor v2")
            client_challenge = handed[2] if handed is not None else NtlmV2ClientChallenge.unpack(nt[16:])
            if auth.encrypted_random_session_key and len(auth.encrypted_random_session_key) != 16:
                raise _malformed("EncryptedRandomSessionKey must be 16 bytes")
        except NtlmError as exc:
            raise self._fail(exc) from None
        self._auth = auth
        self._client_challenge = client_challenge
        self._state = "identified"
        return Identity(auth.user_name, auth.domain_name, auth.workstation)

    # -- verification -------------------------------------------------------------------------

    def verify(self, nt_hash_candidates: Sequence[bytes], now: int) -> VerifyResult:
        """Check the NTLMv2 response against each candidate NT hash (MS-NLMP 3.2.5.1.2), then the
        timestamp, MIC and channel binding for the matching one."""
        self._expect("identified")
        if len(nt_hash_candidates) > MAX_CANDIDATES:
            raise NtlmError("bad-argument", f"more than {MAX_CANDIDATES} candidate hashes")
        auth, blob = self._auth, self._client_challenge
        assert auth is not None and blob is not None
        nt_proof = auth.nt_challenge_response[:16]
        identity = _ntowfv2_data(auth.user_name, auth.domain_name)  # the same for every candidate
        temp = self._server_challenge + blob.raw
        for index, candidate in enumerate(nt_hash_candidates):
            if len(candidate) != 16:
                raise NtlmError("bad-argument", "an NT hash is 16 bytes")
            key = hmac_md5(candidate, identity)  # NTOWFv2
            expected = hmac_md5(key, temp)
            if hmac.compare_digest(expected, nt_proof):
                try:
                    return self._accept(index, key, nt_proof, int(now))
                except NtlmError as exc:
                    raise self._fail(exc) from None
        raise NtlmError("wrong-password", "no candidate password matches the NTLMv2 response")

    def _accept(self, index: int, response_key: bytes, nt_proof: bytes, now: int) -> VerifyResult:
        auth, blob = self._auth, self._client_challenge
        assert auth is not None and blob is not None
        self._check_time(blob.timestamp, now)

        session_base_key = hmac_md5(response_key, nt_proof)
        # Session-security flags are those both sides agreed to; the rest is taken as the client sent it.
        flags = int(auth.flags) & (self._challenge_flags | _NOT_ECHOED)
        exported = session_base_key  # KXKEY for NTLMv2 is the SessionBaseKey (3.4.5.1)
        if flags & _KEY_EXCH and flags & (_SIGN | _SEAL):
            if len(auth.encrypted_random_session_key) != 16:
                raise _malformed("KEY_EXCH without a 16-byte EncryptedRandomSessionKey")
            exported = _rc4(session_base_key, auth.encrypted_random_session_key)

        mic_present = bool(blob.av_pairs._flags() & _MIC_PROVIDED)
        if mic_present:
            if auth.mic is None:
                raise NtlmError("mic-missing", "MsvAvFlags announce a MIC but the message has none")
            mic = hmac_md5(exported, self._negotiate_raw + self._challenge_raw + auth.zeroed_mic_bytes())
            if not hmac.compare_digest(mic, auth.mic):
                raise NtlmError("bad-mic", "AUTHENTICATE_MESSAGE MIC does not verify")
        elif self._require_mic:
            raise NtlmError("mic-missing", "client did not send a MIC")

        binding = self._check_channel_binding(blob.av_pairs.get(AvId.MsvAvChannelBindings))
        target = blob.av_pairs.get(AvId.MsvAvTargetName)
        target_name = _decode(target, True, "MsvAvTargetName") if target is not None else None
        self._session = NtlmSession(flags, exported)
        self._state = "complete"
        return VerifyResult(
            candidate_index=index,
            session_base_key=session_base_key,
            exported_session_key=exported,
            channel_binding=binding,
            flags=NegotiateFlags(flags),
            mic_present=mic_present,
            target_name=target_name,
        )

    def _check_time(self, client_time: int, now: int) -> None:
        skew = self._max_skew_ticks
        if abs(now - self._challenge_time) > skew:
            raise NtlmError("stale-timestamp", "the challenge is older than the allowed skew")
        if abs(client_time - self._challenge_time) > skew:
            raise NtlmError("stale-timestamp", "client timestamp is outside the allowed skew")

    def _check_channel_binding(self, client_hash: bytes | None) -> str:
        if self._extended_protection == ExtendedProtection.OFF:
            return "not-checked"
        if client_hash is None or client_hash == b"\x00" * 16:
            if self._extended_protection == ExtendedProtection.REQUIRE and self._binding_hash is not None:
                raise NtlmError(
                    "channel-binding-missing",
                    "client sent no channel binding; Extended Protection requires one",
                )
            return "absent"
        if self._binding_hash is None or not hmac.compare_digest(client_hash, self._binding_hash):
            raise NtlmError(
                "channel-binding-mismatch",
                "client channel binding is not our TLS certificate (relayed or intercepted?)",
            )
        return "verified"
