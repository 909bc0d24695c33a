"""The PROXY protocol (HAProxy's ``send-proxy`` / ``send-proxy-v2``), receiver side, sans-I/O.

A TCP balancer in front of the gateways connects from its own address; the PROXY protocol puts
the client's real address in front of the first byte the client sent (before the TLS
ClientHello), so the failure budget, familiar addresses, the audit and ``X-Forwarded-For`` see
the client and not the balancer. Spec: HAProxy's ``doc/proxy-protocol.txt`` (revision
2020/03/05), sections cited per function.

What this module decides, and where it is stricter than the spec allows:

* version 1 (§2.1): one US-ASCII line ``PROXY TCP4|TCP6 <src> <dst> <sport> <dport>\\r\\n`` or
  ``PROXY UNKNOWN ...\\r\\n``, at most :data:`MAX_V1_BYTES` bytes; addresses and ports in their
  canonical form (no leading zeros), the family's address form, exactly one space between
  fields, no lone CR or LF;
* version 2 (§2.2): the 12-byte :data:`SIGNATURE_V2`, version nibble 2, command LOCAL or PROXY,
  family UNSPEC / INET / INET6 / UNIX, transport UNSPEC / STREAM / DGRAM, the 16-bit length,
  bounded by :data:`MAX_HEADER_BYTES` before anything else is read; the address block must fit
  the length; the TLVs after it (§2.2.1-2.2.8) must tile the rest exactly and are returned
  uninterpreted (CRC32C is not verified: the spec makes that optional for receivers);
* AF_UNIX and DGRAM are refused (``unix-family``, ``not-stream``): the spec's fallback for an
  unsupported family is the connection's own address, which would charge every such client to
  the balancer's budget; a gateway listens on TCP and has no use for either;
* LOCAL (a balancer's own health check), v1 ``UNKNOWN`` and v2 UNSPEC carry no client address:
  the connection's own address stands (:func:`client_address`), as the spec says.

Incremental use: :func:`parse` takes the bytes received so far. While it returns None, *every*
byte given belongs to the header (both versions are longer than any prefix it accepts), so a
caller that peeks at a socket may consume all it peeked and read again; once it returns a
:class:`ProxyHeader`, exactly ``header.length`` bytes are the header and the rest is the
client's. Anything that is not a valid header raises :class:`ProxyError`.

Only accept this protocol from configured balancers (§5: "accepting the header only from a
number of known sources should be safe"); :func:`detect` lets a listener recognise a header
sent by anyone else, to refuse it by name.
"""

from __future__ import annotations

import enum
import ipaddress
import re
import struct
from dataclasses import dataclass
from typing import Any

from ..errors import UcgateError

__all__ = [
    "MAX_HEADER_BYTES",
    "MAX_V1_BYTES",
    "SIGNATURE_V2",
    "V1_PREFIX",
    "Command",
    "Family",
    "ProxyError",
    "ProxyHeader",
    "Tlv",
    "TlvType",
    "Transport",
    "build_v1",
    "build_v2",
    "client_address",
    "detect",
    "parse",
]

# --- limits and constants -----------------------------------------------------------------
# §2.2: the binary header's constant 12-byte block; it "contains a null byte at the 5th
# position" and was chosen to fail fast on HTTP, TLS, SMTP and others (§6).
SIGNATURE_V2 = b"\r\n\r\n\x00\r\nQUIT\n"
# §2.1: "PROXY" and exactly one space.
V1_PREFIX = b"PROXY "
# §2.1: the worst case, "PROXY UNKNOWN <IPv6> <IPv6> 65535 65535\r\n", is 107 bytes; "If the
# CRLF sequence is not found in the first 107 characters, the receiver should declare the line
# invalid" (nginx: NGX_PROXY_PROTOCOL_V1_MAX_HEADER 107).
MAX_V1_BYTES = 107
# §2.2: signature, ver_cmd, fam, len.
V2_FIXED_BYTES = 16
# §2.2: the whole binary header is 16 + len (a 16-bit field: up to 64 KiB). HAProxy sends the
# addresses (12 or 36 bytes) and a few TLVs (ALPN, authority <= 255 bytes, unique id <= 128,
# SSL); nginx refuses headers over 4096 bytes (NGX_PROXY_PROTOCOL_MAX_HEADER), so do we, and
# before reading the rest.
MAX_HEADER_BYTES = 4096
# §2.2: address block sizes per family (two addresses, then two 16-bit ports for INET/INET6).
_ADDRESS_BYTES = {1: 12, 2: 36, 3: 216}
# §2.2: a TLV is type (1 byte) + length (2 bytes, big-endian) + value.
_TLV_HEAD = 3

_V1_IPV4_RE = re.compile(rb"(?:0|[1-9][0-9]{0,2})(?:\.(?:0|[1-9][0-9]{0,2})){3}")
# hex groups and colons; inet_ntop writes IPv4-mapped addresses with a dotted tail
_V1_IPV6_RE = re.compile(rb"[0-9A-Fa-f:]{2,39}|[0-9A-Fa-f:]{2,29}:(?:0|[1-9][0-9]{0,2})(?:\.(?:0|[1-9][0-9]{0,2})){3}")
_V1_PORT_RE = re.compile(rb"0|[1-9][0-9]{0,4}")
_V1_LINE_CHARS_RE = re.compile(rb"[\x20-\x7e]*")


class ProxyError(UcgateError):
    """Bytes that are not a valid PROXY header: close the connection. ``reason`` is a short
    code for the log line, ``detail`` what was wrong (never more than a few header bytes)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason, detail)


class Command(enum.IntEnum):
    """§2.2, the low nibble of the 13th byte."""

    LOCAL = 0x0  # the balancer's own connection (a health check): use the real endpoints
    PROXY = 0x1  # relayed on behalf of a client: the addresses are the client's


class Family(enum.IntEnum):
    """§2.2, the high nibble of the 14th byte."""

    UNSPEC = 0x0
    INET = 0x1
    INET6 = 0x2
    UNIX = 0x3


class Transport(enum.IntEnum):
    """§2.2, the low nibble of the 14th byte."""

    UNSPEC = 0x0
    STREAM = 0x1
    DGRAM = 0x2


class TlvType(enum.IntEnum):
    """§2.2: the registered TLV types (others, e.g. 0xE0-0xEF custom, are kept as ints)."""

    ALPN = 0x01
    AUTHORITY = 0x02
    CRC32C = 0x03
    NOOP = 0x04
    UNIQUE_ID = 0x05
    SSL = 0x20
    NETNS = 0x30


@dataclass(frozen=True, slots=True)
class Tlv:
    """§2.2: one type-length-value vector after the address block, not interpreted here."""

    type: int
    value: bytes

    def pack(self) -> bytes:
        return struct.pack("!BH", self.type, len(self.value)) + self.value


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """A parsed PROXY header.

    ``source`` and ``destination`` are ``(address, port)`` as the balancer saw them, or None
    when the header carries none (LOCAL, v1 UNKNOWN, v2 UNSPEC). ``length`` is how many bytes
    of the stream the header took.
    """

    version: int  # 1 or 2
    command: Command
    family: Family
    transport: Transport
    source: tuple[str, int] | None
    destination: tuple[str, int] | None
    length: int
    tlvs: tuple[Tlv, ...] = ()


# --- detection ----------------------------------------------------------------------------
def detect(data: bytes) -> int | None:
    """Which PROXY version ``data`` (a connection's first bytes) starts with: 1 or 2; 0 when it
    is not a PROXY header; None while ``data`` is a proper prefix of a signature (§2.2's
    identification rules, on the signatures alone: enough to refuse a header by name)."""
    if data.startswith(SIGNATURE_V2):
        return 2
    if data.startswith(V1_PREFIX):
        return 1
    if not data or SIGNATURE_V2.startswith(data) or V1_PREFIX.startswith(data):
        return None
    return 0


def parse(data: bytes) -> ProxyHeader | None:
    """The PROXY header at the start of ``data``, or None while ``data`` is a valid start of
    one (then all of ``data`` belongs to the header; see the module docstring).

    Raises:
        ProxyError: ``data`` does not start with a valid header (``not-proxy-protocol`` when it
            starts with neither signature).
    """
    kind = detect(data)
    if kind is None:
        return None
    if kind == 2:
        return _parse_v2(data)
    if kind == 1:
        return _parse_v1(data)
    raise ProxyError("not-proxy-protocol", _show(data[:8]))


def client_address(header: ProxyHeader | None, peer: tuple[Any, ...]) -> tuple[str, int]:
    """The address to treat as the client's: the header's source for a relayed connection,
    else the connection's own ``peer`` (LOCAL, UNKNOWN, UNSPEC, or no header). An IPv4-mapped
    IPv6 source (a balancer listening on a dual-stack socket) is given as the IPv4 address, so
    that it compares with IPv4 networks (trusted_proxies, the budget's familiar addresses)."""
    if header is None or header.command is not Command.PROXY or header.source is None:
        return (str(peer[0]), int(peer[1]))
    host, port = header.source
    if ":" in host:
        mapped = ipaddress.IPv6Address(host).ipv4_mapped
        if mapped is not None:
            host = str(mapped)
    return (host, port)


# --- version 1 ----------------------------------------------------------------------------
def _parse_v1(data: bytes) -> ProxyHeader | None:
    """§2.1. The line ends at the first CR, which must be followed by LF."""
    window = data[:MAX_V1_BYTES]
    cr = window.find(b"\r")
    lf = window.find(b"\n")
    if lf != -1 and (cr == -1 or lf < cr):
        raise ProxyError("v1-bare-lf")
    if cr == -1 or cr + 1 == len(window):  # no CR yet, or CR the last byte so far
        if len(data) >= MAX_V1_BYTES:
            raise ProxyError("v1-line-too-long", f"no CRLF in the first {MAX_V1_BYTES} bytes")
        end = len(window) if cr == -1 else cr
        if not _V1_LINE_CHARS_RE.fullmatch(window, 0, end):
            raise ProxyError("v1-bad-character")
        return None
    if window[cr + 1] != 0x0A:
        raise ProxyError("v1-bare-cr")
    line = window[:cr]
    if not _V1_LINE_CHARS_RE.fullmatch(line):
        raise ProxyError("v1-bad-character")
    fields = line.split(b" ")
    length = cr + 2
    if fields[1] == b"UNKNOWN":
        # "the receiver must ignore anything presented before the CRLF is found"
        return ProxyHeader(1, Command.PROXY, Family.UNSPEC, Transport.UNSPEC, None, None, length)
    if fields[1] == b"TCP4":
        family, addr_re = Family.INET, _V1_IPV4_RE
    elif fields[1] == b"TCP6":
        family, addr_re = Family.INET6, _V1_IPV6_RE
    else:
        raise ProxyError("v1-bad-protocol", _show(fields[1][:8]))
    if len(fields) != 6:
        raise ProxyError("v1-bad-fields", f"{len(fields)} space-separated fields, expected 6")
    _, _, src, dst, sport, dport = fields
    source = (_v1_address(src, addr_re, family), _v1_port(sport))
    destination = (_v1_address(dst, addr_re, family), _v1_port(dport))
    return ProxyHeader(1, Command.PROXY, family, Transport.STREAM, source, destination, length)


def _v1_address(raw: bytes, addr_re: re.Pattern[bytes], family: Family) -> str:
    if not addr_re.fullmatch(raw):
        raise ProxyError("v1-bad-address", _show(raw[:40]))
    try:
        addr = ipaddress.ip_address(raw.decode("ascii"))
    except ValueError:
        raise ProxyError("v1-bad-address", _show(raw[:40])) from None
    if (addr.version == 4) != (family is Family.INET):
        raise ProxyError("v1-family-mismatch", _show(raw[:40]))
    return str(addr)


def _v1_port(raw: bytes) -> int:
    if not _V1_PORT_RE.fullmatch(raw) or int(raw) > 0xFFFF:
        raise ProxyError("v1-bad-port", _show(raw[:8]))
    return int(raw)


# --- version 2 ----------------------------------------------------------------------------
def _parse_v2(data: bytes) -> ProxyHeader | None:
    """§2.2. The fixed part is checked as soon as it is there; the length before the rest."""
    if len(data) < V2_FIXED_BYTES:
        return None
    ver_cmd, fam, size = struct.unpack_from("!BBH", data, 12)
    if ver_cmd >> 4 != 2:
        raise ProxyError("v2-bad-version", f"version {ver_cmd >> 4}")
    try:
        command = Command(ver_cmd & 0x0F)
        family = Family(fam >> 4)
        transport = Transport(fam & 0x0F)
    except ValueError:
        raise ProxyError("v2-bad-command-or-family", f"ver_cmd=0x{ver_cmd:02x} fam=0x{fam:02x}") from None
    length = V2_FIXED_BYTES + size
    if length > MAX_HEADER_BYTES:
        raise ProxyError("v2-too-long", f"{length} bytes (at most {MAX_HEADER_BYTES})")
    if command is Command.PROXY and family is Family.UNIX:
        raise ProxyError("unix-family", "a client on a UNIX socket has no address to budget")
    if command is Command.PROXY and transport is Transport.DGRAM:
        raise ProxyError("not-stream", "a DGRAM (UDP) connection on a TCP listener")
    if len(data) < length:
        return None
    block = data[V2_FIXED_BYTES:length]
    if command is Command.LOCAL or family is Family.UNSPEC or transport is Transport.UNSPEC:
        # "discard the protocol block including the family"; "ignore address information"
        return ProxyHeader(2, command, family, transport, None, None, length)
    need = _ADDRESS_BYTES[family]
    if size < need:
        raise ProxyError("v2-address-too-short", f"{size} bytes for {family.name} (needs {need})")
    if family is Family.INET:
        src, dst, sport, dport = struct.unpack_from("!4s4sHH", block)
        source = (str(ipaddress.IPv4Address(src)), sport)
        destination = (str(ipaddress.IPv4Address(dst)), dport)
    else:
        src, dst, sport, dport = struct.unpack_from("!16s16sHH", block)
        source = (str(ipaddress.IPv6Address(src)), sport)
        destination = (str(ipaddress.IPv6Address(dst)), dport)
    return ProxyHeader(2, command, family, transport, source, destination, length, _parse_tlvs(block[need:]))


def _parse_tlvs(data: bytes) -> tuple[Tlv, ...]:
    """§2.2: TLVs must tile the rest of the header exactly (a TLV running past the header's
    length, or a stray byte or two, is a malformed header)."""
    out = []
    i = 0
    while i < len(data):
        if len(data) - i < _TLV_HEAD:
            raise ProxyError("v2-bad-tlv", f"{len(data) - i} stray byte(s) after the TLVs")
        kind, size = struct.unpack_from("!BH", data, i)
        i += _TLV_HEAD
        if i + size > len(data):
            raise ProxyError("v2-bad-tlv", f"TLV 0x{kind:02x} of {size} bytes runs past the header")
        out.append(Tlv(kind, data[i : i + size]))
        i += size
    return tuple(out)


# --- the sender's side (tests, the lab) -----------------------------------------------------
def build_v1(source: tuple[str, int] | None, destination: tuple[str, int] | None = None) -> bytes:
    """A version 1 line (§2.1); ``source`` None gives ``PROXY UNKNOWN\\r\\n``."""
    if source is None:
        return b"PROXY UNKNOWN\r\n"
    src = ipaddress.ip_address(source[0])
    dst_addr, dport = destination or (("0.0.0.0" if src.version == 4 else "::"), 0)
    proto = "TCP4" if src.version == 4 else "TCP6"
    return f"PROXY {proto} {src} {ipaddress.ip_address(dst_addr)} {source[1]} {dport}\r\n".encode()


def build_v2(
    command: Command,
    source: tuple[str, int] | None = None,
    destination: tuple[str, int] | None = None,
    tlvs: tuple[Tlv, ...] = (),
) -> bytes:
    """A version 2 header (§2.2): PROXY over TCP with ``source``, or LOCAL / UNSPEC without."""
    if source is None:
        body = b"".join(t.pack() for t in tlvs)
        return SIGNATURE_V2 + struct.pack("!BBH", 0x20 | command, 0x00, len(body)) + body
    src = ipaddress.ip_address(source[0])
    dst_addr, dport = destination or (("0.0.0.0" if src.version == 4 else "::"), 0)
    dst = ipaddress.ip_address(dst_addr)
    fam = 0x11 if src.version == 4 else 0x21
    body = src.packed + dst.packed + struct.pack("!HH", source[1], dport) + b"".join(t.pack() for t in tlvs)
    return SIGNATURE_V2 + struct.pack("!BBH", 0x20 | command, fam, len(body)) + body


def _show(raw: bytes) -> str:
    """A few header bytes for a log line, printable."""
    return repr(raw)[2:-1]
