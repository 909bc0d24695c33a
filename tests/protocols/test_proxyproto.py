"""The PROXY protocol parser against HAProxy's doc/proxy-protocol.txt: its examples, its limits,
a header HAProxy sends, and fuzzing (only ProxyError escapes; the incremental rule holds).

Bounded for CI; UCGATE_FUZZ_EXAMPLES=5000 runs longer.
"""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ucgate.protocols.proxyproto import (
    MAX_HEADER_BYTES,
    MAX_V1_BYTES,
    SIGNATURE_V2,
    Command,
    Family,
    ProxyError,
    Tlv,
    TlvType,
    Transport,
    build_v1,
    build_v2,
    client_address,
    detect,
    parse,
)

FUZZ = settings(
    max_examples=int(os.environ.get("UCGATE_FUZZ_EXAMPLES", "300")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    database=None,
)
PEER = ("10.0.0.5", 40000)  # the balancer


def _v2(ver_cmd: int, fam: int, body: bytes) -> bytes:
    return SIGNATURE_V2 + struct.pack("!BBH", ver_cmd, fam, len(body)) + body


# --- version 1 (§2.1) -------------------------------------------------------------------------


def test_spec_v1_example_before_an_http_request():
    data = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\nGET / HTTP/1.1\r\nHost: 192.168.0.11\r\n\r\n"
    h = parse(data)
    assert h is not None
    assert (h.version, h.command, h.family, h.transport) == (1, Command.PROXY, Family.INET, Transport.STREAM)
    assert h.source == ("192.168.0.1", 56324) and h.destination == ("192.168.0.11", 443)
    assert data[h.length :].startswith(b"GET / HTTP/1.1")
    assert client_address(h, PEER) == ("192.168.0.1", 56324)


def test_spec_v1_maximum_lengths():
    v4 = b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n"
    assert len(v4) == 56 and parse(v4).length == 56
    six = "ffff:" * 7 + "ffff"
    v6 = f"PROXY TCP6 {six} {six} 65535 65535\r\n".encode()
    assert len(v6) == 104 and parse(v6).source == (six, 65535)
    worst = f"PROXY UNKNOWN {six} {six} 65535 65535\r\n".encode()
    assert len(worst) == MAX_V1_BYTES == 107
    h = parse(worst)
    assert h.length == 107 and h.source is None


def test_spec_v1_unknown_uses_the_real_connection():
    h = parse(b"PROXY UNKNOWN\r\n")
    assert h.length == 15 and h.family is Family.UNSPEC and h.source is None
    assert client_address(h, PEER) == PEER
    # "the receiver must ignore anything presented before the CRLF"
    assert parse(b"PROXY UNKNOWN whatever 1 2\r\n").source is None


def test_v1_ipv6_and_ipv4_mapped():
    h = parse(b"PROXY TCP6 2001:db8::1 2001:db8::2 1 443\r\n")
    assert h.source == ("2001:db8::1", 1) and h.family is Family.INET6
    mapped = parse(b"PROXY TCP6 ::ffff:203.0.113.9 ::ffff:10.0.0.1 5000 443\r\n")
    assert client_address(mapped, PEER) == ("203.0.113.9", 5000)


@pytest.mark.parametrize(
    "line,reason",
    [
        (b"PROXY TCP4 192.168.0.01 192.168.0.11 56324 443\r\n", "v1-bad-address"),  # leading zero
        (b"PROXY TCP4 256.1.1.1 1.1.1.1 1 2\r\n", "v1-bad-address"),
        (b"PROXY TCP4 ::1 1.1.1.1 1 2\r\n", "v1-bad-address"),
        (b"PROXY TCP6 1.1.1.1 ::1 1 2\r\n", "v1-bad-address"),
        (b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", "v1-bad-address"),
        (b"PROXY TCP4 1.1.1.1 1.1.1.1 01 2\r\n", "v1-bad-port"),
        (b"PROXY TCP4 1.1.1.1 1.1.1.1 65536 2\r\n", "v1-bad-port"),
        (b"PROXY TCP4 1.1.1.1 1.1.1.1 1\r\n", "v1-bad-fields"),
        (b"PROXY TCP4  1.1.1.1 1.1.1.1 1 2\r\n", "v1-bad-fields"),  # two spaces
        (b"PROXY TCP4 1.1.1.1 1.1.1.1 1 2 \r\n", "v1-bad-fields"),
        (b"PROXY UDP4 1.1.1.1 1.1.1.1 1 2\r\n", "v1-bad-protocol"),
        (b"PROXY tcp4 1.1.1.1 1.1.1.1 1 2\r\n", "v1-bad-protocol"),
        (b"PROXY TCP4 1.1.1.1 1.1.1.1 1 2\n", "v1-bare-lf"),  # "must not tolerate a single CR or LF"
        (b"PROXY TCP4 1.1.1.1 1.1.1.1 1 2\rX", "v1-bare-cr"),
        (b"PROXY TCP4 1.1.1.1\t1.1.1.1 1 2\r\n", "v1-bad-character"),
        (b"PROXY TCP4 1.1.1.1 1.1.1.1 1 2\x00\r\n", "v1-bad-character"),
        (b"PROXY UNKNOWN " + b"x" * 100, "v1-line-too-long"),  # no CRLF in the first 107 bytes
        (b"GET / HTTP/1.1\r\n\r\n", "not-proxy-protocol"),
        (b"\x16\x03\x01\x02\x00", "not-proxy-protocol"),  # a TLS ClientHello
    ],
)
def test_v1_malformed_is_refused(line, reason):
    with pytest.raises(ProxyError) as e:
        parse(line)
    assert e.value.reason == reason


def test_v1_incremental_every_prefix_is_header_bytes():
    line = b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 443\r\n"
    for i in range(len(line)):
        assert parse(line[:i]) is None, i
    assert parse(line).length == len(line)


# --- version 2 (§2.2) -------------------------------------------------------------------------


def test_spec_v2_tcp4_as_haproxy_sends_it():
    # a header HAProxy sent with send-proxy-v2 (a published capture: TCP over IPv4, no TLVs)
    data = bytes.fromhex("0d0a0d0a000d0a515549540a2111000cac130001ac130003a6520050")
    h = parse(data + b"GET / HTTP/1.1\r\n")
    assert (h.version, h.command, h.family, h.transport) == (2, Command.PROXY, Family.INET, Transport.STREAM)
    assert h.source == ("172.19.0.1", 42578) and h.destination == ("172.19.0.3", 80)
    assert h.length == 28 and h.tlvs == ()


def test_v2_tcp6_with_tlvs():
    tlvs = (
        Tlv(TlvType.ALPN, b"http/1.1"),
        Tlv(TlvType.AUTHORITY, b"lyncext.contoso.com"),
        Tlv(TlvType.UNIQUE_ID, b"x" * 128),
        Tlv(0xE0, b""),
    )
    data = build_v2(Command.PROXY, ("2001:db8::7", 5555), ("2001:db8::1", 443), tlvs)
    h = parse(data + b"\x16\x03\x01")
    assert h.source == ("2001:db8::7", 5555) and h.tlvs == tlvs and h.length == len(data)


def test_v2_local_is_the_balancers_own_connection():
    h = parse(_v2(0x20, 0x00, b""))
    assert h.command is Command.LOCAL and h.source is None and h.length == 16
    assert client_address(h, PEER) == PEER
    # "Receivers MUST always consider this field to skip the appropriate number of bytes and
    # must not assume zero is presented for LOCAL connections"
    body = bytes(12) + b"junk"
    h = parse(_v2(0x20, 0x11, body) + b"rest")
    assert h.command is Command.LOCAL and h.length == 16 + len(body)
    assert client_address(h, PEER) == PEER


def test_v2_unspec_carries_no_address():
    h = parse(_v2(0x21, 0x00, b"ignored"))
    assert h.family is Family.UNSPEC and h.source is None
    assert client_address(h, PEER) == PEER


@pytest.mark.parametrize(
    "data,reason",
    [
        (_v2(0x11, 0x11, bytes(12)), "v2-bad-version"),
        (_v2(0x31, 0x11, bytes(12)), "v2-bad-version"),
        (_v2(0x22, 0x11, bytes(12)), "v2-bad-command-or-family"),
        (_v2(0x21, 0x41, bytes(12)), "v2-bad-command-or-family"),
        (_v2(0x21, 0x13, bytes(12)), "v2-bad-command-or-family"),
        (_v2(0x21, 0x31, bytes(216)), "unix-family"),
        (_v2(0x21, 0x12, bytes(12)), "not-stream"),
        (_v2(0x21, 0x11, bytes(11)), "v2-address-too-short"),
        (_v2(0x21, 0x21, bytes(35)), "v2-address-too-short"),
        (_v2(0x21, 0x11, bytes(12) + b"\x01\x00"), "v2-bad-tlv"),  # two stray bytes
        (_v2(0x21, 0x11, bytes(12) + b"\x01\x00\x05abc"), "v2-bad-tlv"),  # runs past the header
    ],
)
def test_v2_malformed_is_refused(data, reason):
    with pytest.raises(ProxyError) as e:
        parse(data)
    assert e.value.reason == reason


def test_v2_length_is_bounded_before_the_rest_arrives():
    fixed = SIGNATURE_V2 + struct.pack("!BBH", 0x21, 0x11, MAX_HEADER_BYTES - 16 + 1)
    with pytest.raises(ProxyError) as e:
        parse(fixed)  # refused on the 16 fixed bytes, not after reading 4 KiB
    assert e.value.reason == "v2-too-long"
    ok = build_v2(Command.PROXY, ("1.2.3.4", 1), tlvs=(Tlv(TlvType.NOOP, bytes(MAX_HEADER_BYTES - 16 - 12 - 3)),))
    assert len(ok) == MAX_HEADER_BYTES and parse(ok).length == MAX_HEADER_BYTES


def test_v2_incremental_every_prefix_is_header_bytes():
    data = build_v2(Command.PROXY, ("203.0.113.7", 51000), ("10.0.0.1", 443), (Tlv(1, b"h2"),))
    for i in range(len(data)):
        assert parse(data[:i]) is None, i
    assert parse(data).length == len(data)


def test_detect():
    assert detect(b"") is None and detect(b"\r\n\r") is None and detect(b"PROX") is None
    assert detect(SIGNATURE_V2) == 2 and detect(b"PROXY TCP4") == 1
    assert detect(b"\x16\x03\x01") == 0 and detect(b"GET / ") == 0 and detect(b"\r\nGET") == 0


# --- fuzzing ------------------------------------------------------------------------------------


def _check(data: bytes) -> None:
    """parse() refuses with ProxyError or answers; a header never claims bytes it was not given,
    and while it says "more", every prefix also says "more" (so a peeking reader may consume)."""
    try:
        h = parse(data)
    except ProxyError:
        return
    if h is None:
        for i in range(len(data)):
            try:
                assert parse(data[:i]) is None
            except ProxyError:
                pytest.fail(f"a prefix of an incomplete header was refused: {data[:i]!r}")
        return
    assert 0 < h.length <= len(data) and h.length <= MAX_HEADER_BYTES
    assert parse(data[: h.length]) == h


@FUZZ
@given(st.binary(max_size=300))
def test_fuzz_any_bytes(data):
    _check(data)


@FUZZ
@given(st.binary(max_size=200))
def test_fuzz_after_the_v2_signature(rest):
    _check(SIGNATURE_V2 + rest)


@FUZZ
@given(st.text(alphabet="PROXY TCP46UNKOW0123456789abcdef:.\r\n ", max_size=120))
def test_fuzz_v1_like_lines(text):
    _check(b"PROXY " + text.encode())


@FUZZ
@given(
    st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)),
    st.integers(0, 65535),
    st.integers(0, 65535),
    st.booleans(),
    st.lists(st.tuples(st.integers(0, 255), st.binary(max_size=40)), max_size=4),
    st.binary(max_size=20),
)
def test_fuzz_round_trip(addr, sport, dport, v1, tlvs, after):
    dst = ("10.0.0.1" if addr.version == 4 else "2001:db8::1", dport)
    if v1:
        data = build_v1((str(addr), sport), dst)
        expected_tlvs: tuple[Tlv, ...] = ()
    else:
        expected_tlvs = tuple(Tlv(t, v) for t, v in tlvs)
        data = build_v2(Command.PROXY, (str(addr), sport), dst, expected_tlvs)
    h = parse(data + after)
    assert h.length == len(data) and h.source == (str(addr), sport) and h.tlvs == expected_tlvs
    assert client_address(h, PEER)[1] == sport
