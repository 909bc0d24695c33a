"""SIP framing and fields (sans-I/O), with RFC 3261 sections and the MS-SIPAE / MS-SIP / MS-PRES /
MS-OCPSTN protocol examples as vectors.

The examples are quoted as the specifications print them, with two editorial marks undone: the
pages render the hyphen of "WWW-Authenticate" as U+2011 (a non-breaking hyphen; kept in one
test, where it must be refused) and wrap long lines. Where an example is cut short in our copy
of the page the rest is marked "abbreviated" and holds only what RFC 3261 requires.
"""

from __future__ import annotations

import pytest

from ucgate.protocols import sip
from ucgate.protocols.sip import (
    KeepAlive,
    Limits,
    SipError,
    SipFramer,
    SipMessage,
    instance_from_epid,
    parse_contacts,
    parse_message,
    parse_name_addr,
    parse_sip_uri,
    parse_via,
    sip_client,
    sip_device_facts,
)


def msg(*lines: str | bytes, body: bytes = b"") -> bytes:
    raw = [line.encode() if isinstance(line, str) else line for line in lines]
    return b"\r\n".join(raw) + b"\r\n\r\n" + body


def frame(data: bytes, limits: Limits = sip.DEFAULT_LIMITS) -> list:
    framer = SipFramer(limits)
    framer.feed(data)
    out = framer.events()
    framer.close()
    return out


def refused(data: bytes, limits: Limits = sip.DEFAULT_LIMITS) -> SipError:
    with pytest.raises(SipError) as e:
        frame(data, limits)
    return e.value


# --- vectors: MS-SIPAE 4.1 (NTLM) and 4.2 (Kerberos), steps 1 and 2 -----------------------------

# MS-SIPAE 4.1 step 1. "UserAgent:" is as printed (a misprint of User-Agent, but a valid field).
SIPAE_41_REGISTER = msg(
    "REGISTER sip:contoso.com SIP/2.0",
    "Via: SIP/2.0/TLS 192.0.2.1:4320",
    "From: <sip:alice@contoso.com>;tag=4a2b44d131;epid=8248ca9ebb",
    "To: <sip:alice@contoso.com>",
    "Call-ID: d5f2b95d5be64c2cbfb38aa5d3a87ae7",
    "CSeq: 169 REGISTER",
    'Contact: <sip:192.0.2.1:4320;transport=tls>;proxy=replace;+sip.instance="<urn:uuid:4233FD41-093B-5FD6-B5D2-651ED55969E6>"',
    "UserAgent: UCCP/2.0.6362.0 OC/2.0.6362.0 (Microsoft Office Communicator)",
    "Supported: gruu-10",
    "Content-Length: 0",
)
# MS-SIPAE 4.1 step 2 (abbreviated from Via on: our copy of the page is cut there).
SIPAE_41_CHALLENGE = msg(
    "SIP/2.0 401 Unauthorized",
    "Date: Thu, 31 Jan 2008 00:01:56 GMT",
    'WWW-Authenticate: NTLM realm="SIP Communications Service", targetname="server.contoso.com", version=3',
    'WWW-Authenticate: Kerberos realm="SIP Communications Service", targetname="sip/server.contoso.com", version=3',
    "From: <sip:alice@contoso.com>;tag=4a2b44d131;epid=8248ca9ebb",
    "To: <sip:alice@contoso.com>;tag=0858513FA91D3AAE1A5840DDB99599DF",
    "Call-ID: d5f2b95d5be64c2cbfb38aa5d3a87ae7",
    "CSeq: 169 REGISTER",
    "Via: SIP/2.0/TLS 192.0.2.1:4320",
    "Content-Length: 0",
)
# MS-SIPAE 4.2 step 1.
SIPAE_42_REGISTER = msg(
    "REGISTER sip:contoso.com SIP/2.0",
    "Via: SIP/2.0/TLS 192.0.2.1:4849",
    "From: <sip:alice@contoso.com>;tag=604168c9c0;epid=2ebb6f264f",
    "To: <sip:alice@contoso.com>",
    "Call-ID: c7142b90f8c94668807a382f552a6770",
    "CSeq: 1 REGISTER",
    'Contact: <sip:192.0.2.1:4849;transport=tls>;proxy=replace;+sip.instance="<urn:uuid:124841E4-264D-52E8-96C5-D22AA8CDC316>"',
    "UserAgent: UCCP/2.0.6362.0 OC/2.0.6362.0 (Microsoft Office Communicator)",
    "Supported: gruu-10",
    "Content-Length: 0",
)
# MS-PRES 4.14.3.1: the Presence Server's 488 to a SUBSCRIBE, signed with TLS-DSK (version 4).
PRES_488 = msg(
    "SIP/2.0 488 Not acceptable here",
    'Authentication-Info: TLS-DSK qop="auth", opaque="4671A717", srand="FA78E074", snum="5", '
    'rspauth="0f99e36e9009f0fff70a32c0524bd59cc5ae5cd9", targetname="SERVER.contoso.com", '
    'realm="SIP Communications Service", version=4',
    'From: "User 5"<sip:user5@contoso.com>;tag=6705176eed;epid=a8716485d4',
    "To: <sip:user5@contoso.com>;tag=DD687A6743502E056B92FABCF6DC7140",
    "Call-ID: 112629f5c5f346b09e647523d70ea03b",
    "CSeq: 1 SUBSCRIBE",
    "Via: SIP/2.0/TLS 192.168.0.244:51649;ms-received-port=51649;ms-received-cid=82100",
    "ms-diagnostics: 2165;reason=\"Contact subscription is not allowed as the user's contact list has "
    'migrated to Exchange.";source="SERVER.contoso.com"',
    "Server: RTC/5.0",
    "Content-Length: 0",
)
# MS-OCPSTN 4.7.2.1: a Mediation Server's 200 OK to an INVITE, field names in capitals, seven
# Supported fields. The 422-byte SDP body is cut short in our copy: a stand-in of that length.
OCPSTN_200_BODY = b"v=0\r\no=Gateway 1303417666 1303417345 IN IP4 10.1.2.12\r\ns=session\r\n".ljust(422, b"a")
OCPSTN_200 = msg(
    "SIP/2.0 200 OK",
    'Authentication-Info: TLS-DSK qop="auth", opaque="F755045D", srand="1D9666D9", snum="17", '
    'rspauth="3359c8ac2e6229b2eb9738ac707dc8c3e54f65f0", targetname="PROXY.company1", '
    'realm="SIP Communications Service", version=4',
    "Via: SIP/2.0/TLS 192.168.1.114:4535;ms-received-port=4535;ms-received-cid=475300",
    'FROM: "user112"<sip:user112@company1>;tag=ed04066c4a;epid=54dd5867e8',
    "TO: <sip:+14258901234@company1;user=phone>;tag=201fec487e;epid=CDCFEF8F18",
    "CSEQ: 1 INVITE",
    "CALL-ID: e571df11a45947f1a5b90da8d957b8ae",
    "RECORD-ROUTE: <sip:PROXY.company1:5061;transport=tls;opaque=state:F:Ci.R475300;lr;"
    "ms-route-sig=dcw0SbeehYaHu9dRxfcQNPNLaiGM-c5DzikYU7AfKG2hHch3QtgY3jngAA>",
    "CONTACT: <sip:ms5.company1@company1;gruu;opaque=srvr:MediationServer:XzRY6u68aVipMcYVfYs0hQAA;"
    "grid=46236573d0ae4a339d83726b2bf7f7ab>;isGateway",
    "CONTENT-LENGTH: 422",
    "SUPPORTED: replaces",
    "SUPPORTED: ms-safe-transfer",
    "SUPPORTED: ms-bypass",
    "SUPPORTED: ms-dialog-route-set-update",
    "SUPPORTED: gruu-10",
    "SUPPORTED: timer",
    "SUPPORTED: 100rel",
    "CONTENT-TYPE: application/gw-sdp",
    "ALLOW: ACK",
    "P-ASSERTED-IDENTITY: <sip:+14258901234@company1;user=phone>",
    "SERVER: Mediation Server",
    "Ms-Accepted-Content-ID: <3d45476919eb4c81be0c4e19c730c655>",
    'ms-trunking-peer: gateway.company1.com;trunk=trunk1;User-Agent="Gateway 1.0"',
    "Allow: CANCEL,BYE,INVITE,REFER,NOTIFY,PRACK,UPDATE",
    "Session-Expires: 1800;refresher=uas",
    "Min-SE: 90",
    body=OCPSTN_200_BODY,
)
SPEC_VECTORS = [SIPAE_41_REGISTER, SIPAE_41_CHALLENGE, SIPAE_42_REGISTER, PRES_488, OCPSTN_200]


def test_sipae_41_register():
    m = parse_message(SIPAE_41_REGISTER)
    assert (m.method, m.request_uri, m.status) == ("REGISTER", "sip:contoso.com", None)
    assert m.raw == SIPAE_41_REGISTER and m.serialize() == m.raw and m.body == b""
    assert m.call_id == "d5f2b95d5be64c2cbfb38aa5d3a87ae7"
    assert (m.cseq.number, m.cseq.method) == (169, "REGISTER")
    assert (m.from_.tag, m.from_.epid, m.from_.sip.aor) == ("4a2b44d131", "8248ca9ebb", "alice@contoso.com")
    assert m.registered_user().aor == "alice@contoso.com"
    (via,) = m.vias()
    assert (via.transport, via.host, via.port) == ("TLS", "192.0.2.1", 4320)
    (contact,) = m.contacts()
    assert contact.sip.host == "192.0.2.1" and contact.sip.param("transport") == "tls"
    assert contact.param("proxy") == "replace"
    assert contact.param("+sip.instance") == "<urn:uuid:4233FD41-093B-5FD6-B5D2-651ED55969E6>"
    assert m.get("UserAgent").startswith("UCCP/") and m.get("user-agent") is None


def test_sipae_41_challenge_response():
    m = parse_message(SIPAE_41_CHALLENGE)
    assert (m.status, m.reason, m.method) == (401, "Unauthorized", None)
    assert [v.split()[0] for v in m.get_all("www-authenticate")] == ["NTLM", "Kerberos"]
    assert m.to.tag == "0858513FA91D3AAE1A5840DDB99599DF"


def test_pres_and_ocpstn_responses():
    m = parse_message(PRES_488)
    assert (m.status, m.reason) == (488, "Not acceptable here")
    assert m.from_.display_name == "User 5" and m.from_.epid == "a8716485d4"
    m = parse_message(OCPSTN_200)
    assert m.status == 200 and m.body == OCPSTN_200_BODY and len(m.get_all("supported")) == 7
    assert m.to.sip.user == "+14258901234" and m.to.sip.param("user") == "phone"
    assert m.cseq.method == "INVITE" and m.get("Call-ID") == m.call_id  # CALL-ID in capitals
    assert m.get("l") == "422"  # compact name asks for the full one


@pytest.mark.parametrize("vector", SPEC_VECTORS, ids=["41-register", "41-401", "42-register", "pres-488", "ocpstn-200"])
def test_every_split_of_the_spec_vectors_frames_the_same(vector):
    stream = b"\r\n\r\n" + vector + vector + b"\r\n"
    whole = frame(stream)
    assert [type(e) for e in whole] == [KeepAlive, KeepAlive, SipMessage, SipMessage, KeepAlive]
    assert whole[2].raw == whole[3].raw == vector
    for cut in range(len(stream) + 1):
        framer = SipFramer()
        framer.feed(stream[:cut])
        got = framer.events()
        framer.feed(stream[cut:])
        got += framer.events()
        framer.close()
        assert got == whole


def test_byte_at_a_time():
    framer = SipFramer()
    events = []
    for i in range(len(SIPAE_42_REGISTER)):
        framer.feed(SIPAE_42_REGISTER[i : i + 1])
        events += framer.events()
        assert bool(events) == (i == len(SIPAE_42_REGISTER) - 1)
    assert events[0].raw == SIPAE_42_REGISTER


# --- keep-alive (RFC 5626 3.5.1) ----------------------------------------------------------------


def test_keep_alive_crlfs_are_reported_one_by_one():
    events = frame(b"\r\n\r\n" + b"\r\n" + SIPAE_41_REGISTER + b"\r\n\r\n")
    assert [e.run for e in events if isinstance(e, KeepAlive)] == [1, 2, 3, 1, 2]
    assert [e.completes_ping for e in events if isinstance(e, KeepAlive)] == [False, True, False, False, True]


def test_a_lone_cr_waits_for_its_lf():
    framer = SipFramer()
    framer.feed(b"\r")
    assert framer.next_event() is None
    framer.feed(b"\n")
    assert framer.next_event() == KeepAlive(1)


@pytest.mark.parametrize("data", [b"\n", b"\r\r\n", b"\rX", b"\r\n\n"])
def test_bare_cr_or_lf_between_messages(data):
    assert refused(data).reason == "bare-cr-or-lf"


# --- refusals -----------------------------------------------------------------------------------

BASE = [
    "REGISTER sip:contoso.com SIP/2.0",
    "Via: SIP/2.0/TLS 192.0.2.1:4320",
    "From: <sip:alice@contoso.com>;tag=1;epid=8248ca9ebb",
    "To: <sip:alice@contoso.com>",
    "Call-ID: d5f2b95d5be64c2cbfb38aa5d3a87ae7",
    "CSeq: 1 REGISTER",
    "Content-Length: 0",
]


def edited(
    replace: dict[int, str] | None = None, add: list[str] | tuple[str, ...] = (), drop: int | None = None
) -> bytes:
    lines = list(BASE)
    for i, line in (replace or {}).items():
        lines[i] = line
    if drop is not None:
        del lines[drop]
    return msg(*lines, *add)


def test_base_is_accepted():
    assert parse_message(edited()).raw == edited()


@pytest.mark.parametrize(
    "data,reason,status",
    [
        # RFC 3261 18.3: Content-Length is the only framing on a stream; exactly one, compact too
        (edited(drop=6), "missing-content-length", 400),
        (edited(add=["Content-Length: 0"]), "duplicate-content-length", 400),
        (edited(add=["l: 0"]), "duplicate-content-length", 400),
        (edited(replace={6: "Content-Length: +0"}), "bad-content-length", 400),
        (edited(replace={6: "Content-Length: 0x10"}), "bad-content-length", 400),
        (edited(replace={6: "Content-Length: 12345678901"}), "bad-content-length", 400),
        # RFC 3261 7.3.1 folding and whitespace before the colon: legal there, refused here
        (edited(add=["Subject: a", " continued"]), "obs-fold", 400),
        (edited(add=["Subject: a", "\tcontinued"]), "obs-fold", 400),
        (edited(add=["Subject : a"]), "bad-header-name", 400),
        (edited(add=[": a"]), "bad-header-name", 400),
        (edited(add=["Sub\x00ject: a"]), "bad-header-name", 400),
        (edited(add=['WWW\u2011Authenticate: NTLM realm="x"']), "bad-header-name", 400),  # as the page prints it
        (edited(add=["Subject: a\x00b"]), "bad-header-value", 400),
        (edited(add=["Subject: a\x7fb"]), "bad-header-value", 400),
        (edited(add=["Subject: a\x1bb"]), "bad-header-value", 400),
        (edited(add=[b"Subject: \xc0\xaf"]), "bad-utf8-in-header", 400),
        # RFC 3261 8.1.1: the fields that say who and what
        (edited(drop=1), "missing-via", 400),
        (edited(drop=2), "missing-from", 400),
        (edited(drop=3), "missing-to", 400),
        (edited(drop=4), "missing-call-id", 400),
        (edited(drop=5), "missing-cseq", 400),
        (edited(add=["f: <sip:mallory@contoso.com>;tag=2"]), "duplicate-from", 400),
        (edited(add=["t: <sip:mallory@contoso.com>"]), "duplicate-to", 400),
        (edited(add=["i: other"]), "duplicate-call-id", 400),
        (edited(add=["CSeq: 2 REGISTER"]), "duplicate-cseq", 400),
        (edited(add=["User-Agent: a", "User-Agent: b"]), "duplicate-user-agent", 400),
        (edited(replace={5: "CSeq: 1 INVITE"}), "cseq-method-mismatch", 400),
        (edited(replace={5: "CSeq: 4294967296 REGISTER"}), "bad-cseq", 400),
        (edited(replace={5: "CSeq: REGISTER"}), "bad-cseq", 400),
        (edited(replace={4: "Call-ID: a b"}), "bad-call-id", 400),
        (edited(replace={2: 'From: "Alice" sip:alice@contoso.com'}), "bad-from", 400),
        (edited(replace={3: "To: <sip:alice@contoso.com"}), "bad-to", 400),
        (edited(replace={2: "From: <sip:alice%40evil.com@contoso.com>"}), "bad-from", 400),
        (edited(replace={2: "From: <sip:alice@contoso.com>;tag=1;tag=2"}), "bad-from", 400),
        (edited(replace={2: "From: *"}), "bad-from", 400),
        # RFC 3261 7.1 start lines
        (edited(replace={0: "REGISTER sip:contoso.com SIP/3.0"}), "unsupported-version", 505),
        (edited(replace={0: "REGISTER sip:contoso.com sip/2.0"}), "unsupported-version", 505),
        (edited(replace={0: "REGISTER  sip:contoso.com SIP/2.0"}), "bad-request-line", 400),
        (edited(replace={0: "REGISTER contoso.com SIP/2.0"}), "bad-request-line", 400),
        (edited(replace={0: "REG\x00ISTER sip:contoso.com SIP/2.0"}), "bad-request-line", 400),
        (edited(replace={0: "SIP/2.0 99 Odd"}), "bad-status-line", 400),
        (edited(replace={0: "SIP/2.0 200"}), "bad-status-line", 400),
        (edited(replace={0: "SIP/2.1 200 OK"}), "unsupported-version", 505),
    ],
)
def test_refusals(data, reason, status):
    e = refused(data)
    assert (e.reason, e.status) == (reason, status)


@pytest.mark.parametrize("bad", [b"\r\nX: y\n", b"\nX: y\r\n", b"\rX: y\r\n"])
def test_bare_cr_or_lf_in_a_head(bad):
    data = edited().replace(b"\r\nSupported", b"")
    data = data[:-4] + bad + b"\r\n\r\n" if bad.startswith(b"\r\n") else data[:-2] + bad + b"\r\n"
    assert refused(data).reason == "bare-cr-or-lf"


def test_bare_lf_is_refused_as_soon_as_it_arrives():
    framer = SipFramer()
    framer.feed(b"REGISTER sip:contoso.com SIP/2.0\r\nVia: x\n")
    with pytest.raises(SipError, match="bare-cr-or-lf"):
        framer.next_event()
    with pytest.raises(SipError, match="bare-cr-or-lf"):  # and the framer stays failed
        framer.feed(b"more")


def test_events_before_an_error_are_returned_first():
    framer = SipFramer()
    framer.feed(SIPAE_41_REGISTER + b"\r\n" + b"\n")
    assert [type(e) for e in framer.events()] == [SipMessage, KeepAlive]
    with pytest.raises(SipError, match="bare-cr-or-lf"):
        framer.events()


def test_truncated_stream():
    framer = SipFramer()
    framer.feed(SIPAE_41_REGISTER[:-1])
    assert framer.events() == []
    with pytest.raises(SipError, match="truncated-message"):
        framer.close()
    with pytest.raises(SipError, match="truncated-message"):
        parse_message(SIPAE_41_REGISTER[:-1])
    with pytest.raises(SipError, match="trailing-bytes"):
        parse_message(SIPAE_41_REGISTER + b"\r\n")


def test_body_framed_by_content_length_only():
    body = b"<xml>\r\n\r\nREGISTER sip:x SIP/2.0\r\n</xml>"  # a head inside a body is body
    data = edited(replace={6: f"Content-Length: {len(body)}"}) + body
    events = frame(data + SIPAE_41_REGISTER)
    assert events[0].body == body and events[1].raw == SIPAE_41_REGISTER


# --- limits: both sides of each ------------------------------------------------------------------

SMALL = Limits(
    max_message_bytes=1000, max_head_bytes=600, max_line_bytes=100, max_auth_line_bytes=300, max_header_count=10
)


def test_message_limit():
    head = edited(replace={6: "Content-Length: 000"})
    room = SMALL.max_message_bytes - len(head)
    ok = edited(replace={6: f"Content-Length: {room:03d}"}) + b"x" * room
    assert frame(ok, SMALL)[0].body == b"x" * room
    e = refused(edited(replace={6: f"Content-Length: {room + 1:03d}"}) + b"x" * (room + 1), SMALL)
    assert (e.reason, e.status) == ("message-too-large", 513)


def test_message_limit_is_checked_before_the_body_arrives():
    framer = SipFramer(SMALL)
    framer.feed(edited(replace={6: "Content-Length: 999999"}))
    with pytest.raises(SipError, match="message-too-large"):
        framer.next_event()


def test_head_limit():
    base = edited()
    pad = SMALL.max_head_bytes - len(base) - len("X: \r\n")
    assert frame(edited(add=["X: " + "a" * pad]), Limits(max_head_bytes=SMALL.max_head_bytes))
    e = refused(edited(add=["X: " + "a" * (pad + 1)]), Limits(max_head_bytes=SMALL.max_head_bytes))
    assert (e.reason, e.status) == ("head-too-large", 513)


def test_head_limit_before_the_head_ends():
    framer = SipFramer(SMALL)
    framer.feed(b"REGISTER sip:contoso.com SIP/2.0\r\n" + b"X: y\r\n" * 200)
    with pytest.raises(SipError, match="head-too-large"):
        framer.next_event()


def test_line_limit_and_the_auth_fields():
    line = "X: " + "a" * (SMALL.max_line_bytes - 3)
    assert frame(edited(add=[line]), SMALL)
    assert refused(edited(add=[line + "a"]), SMALL).reason == "line-too-long"
    auth = 'Authorization: NTLM realm="r", targetname="t", gssapi-data="'
    auth_ok = auth + "A" * (SMALL.max_auth_line_bytes - len(auth) - 1) + '"'
    assert frame(edited(add=[auth_ok]), SMALL)
    assert refused(edited(add=[auth_ok[:-1] + 'A"']), SMALL).reason == "line-too-long"
    # an auth field's allowance is not the start line's
    assert refused(edited(replace={0: "REGISTER sip:" + "a" * 100 + " SIP/2.0"}), SMALL).reason == "line-too-long"


def test_line_limit_before_the_line_ends():
    framer = SipFramer(SMALL)
    framer.feed(b"REGISTER sip:contoso.com SIP/2.0\r\nX: " + b"a" * 97)
    assert framer.next_event() is None
    framer.feed(b"a")
    with pytest.raises(SipError, match="line-too-long"):
        framer.next_event()
    framer = SipFramer(SMALL)  # a long authorization line may grow to its own limit
    framer.feed(b"REGISTER sip:contoso.com SIP/2.0\r\nProxy-Authorization: " + b"a" * 250)
    assert framer.next_event() is None
    framer.feed(b"a" * 50)
    with pytest.raises(SipError, match="line-too-long"):
        framer.next_event()


def test_header_count_limit():
    fields = ["X: y"] * (SMALL.max_header_count - len(BASE) + 1)
    assert frame(edited(add=fields), Limits(max_header_count=10))
    assert refused(edited(add=[*fields, "X: y"]), Limits(max_header_count=10)).reason == "too-many-headers"


def test_default_limits_take_a_kerberos_token():
    # KB 327825: MaxTokenSize 48000 bytes -> 64000 base64 characters in one gssapi-data
    token = "A" * 64000
    line = f'Proxy-Authorization: Kerberos qop="auth", realm="SIP Communications Service", targetname="sip/server.contoso.com", gssapi-data="{token}", version=4'
    assert frame(edited(add=[line]))[0].get("proxy-authorization").endswith("version=4")


# --- fields ------------------------------------------------------------------------------------


def test_compact_forms_map_to_full_names():
    data = msg(
        "REGISTER sip:contoso.com SIP/2.0",
        "v: SIP/2.0/TLS 192.0.2.1:4320",
        "f: <sip:alice@contoso.com>;tag=1",
        "t: <sip:alice@contoso.com>",
        "i: abc",
        "CSeq: 1 REGISTER",
        "m: <sip:192.0.2.1>",
        "k: gruu-10",
        "l: 0",
    )
    m = parse_message(data)
    assert [f.canonical for f in m.headers] == [
        "via",
        "from",
        "to",
        "call-id",
        "cseq",
        "contact",
        "supported",
        "content-length",
    ]
    assert m.get("Supported") == "gruu-10" and m.get("K") == "gruu-10" and m.call_id == "abc"
    assert sip.canonical_name("X-Custom") == "x-custom"


@pytest.mark.parametrize(
    "text,display,uri,params",
    [
        (
            '"Alice" <sip:alice@contoso.com>;tag=354354535;epid=6534555',
            "Alice",
            "sip:alice@contoso.com",
            (("tag", "354354535"), ("epid", "6534555")),
        ),  # MS-SIP 4.2 step 1 From
        ('"user112"<sip:user112@company1>;tag=ed04066c4a', "user112", "sip:user112@company1", (("tag", "ed04066c4a"),)),
        ("Alice Smith <sip:alice@contoso.com>", "Alice Smith", "sip:alice@contoso.com", ()),
        ("sip:alice@contoso.com;tag=1", None, "sip:alice@contoso.com", (("tag", "1"),)),
        ('"A \\"B\\" C" <sips:alice@contoso.com:5061>', 'A "B" C', "sips:alice@contoso.com:5061", ()),
        ("<sip:alice@contoso.com> ; tag = 1", None, "sip:alice@contoso.com", (("tag", "1"),)),
        ("<tel:+14255550100>", None, "tel:+14255550100", ()),
        ('"Ünïcode" <sip:u@contoso.com>', "Ünïcode", "sip:u@contoso.com", ()),
    ],
)
def test_name_addr(text, display, uri, params):
    n = parse_name_addr(text)
    assert (n.display_name, n.uri, n.params) == (display, uri, params)


@pytest.mark.parametrize(
    "text,reason",
    [
        ('"Alice" sip:alice@contoso.com', "bad-name-addr"),  # MS-SIP 4.2 step 1's To, as printed
        ("Al@ce <sip:alice@contoso.com>", "bad-name-addr"),
        ('"unterminated <sip:a@b>', "bad-quoted-string"),
        ("<sip:alice@contoso.com>;tag=1;TAG=2", "duplicate-parameter"),
        ("<sip:alice@contoso.com>tag=1", "bad-parameter"),
        ("<sip:alice@contoso.com>;=1", "bad-parameter"),
        ("<sip:alice@contoso.com>;tag=", "bad-parameter"),
        ("sip:a@b,c", "bad-name-addr"),
        ("<not a uri>", "bad-name-addr"),
        ("<sip:alice:secret@contoso.com>", "password-in-uri"),
        ("<sip:a;b@contoso.com>", "bad-sip-user"),
        ("<sip:alice%40evil@contoso.com>", "bad-sip-user"),
        ("<sip:alice@-contoso.com>", "bad-sip-host"),
        ("<sip:alice@contoso.com:65536>", "bad-sip-host"),
        ("<sip:alice@contoso.com;transport=tls;transport=tcp>", "duplicate-uri-parameter"),
        ("<sip:alice@contoso.com;a b>", "bad-name-addr"),
    ],
)
def test_name_addr_refusals(text, reason):
    with pytest.raises(SipError) as e:
        parse_name_addr(text)
    assert e.value.reason == reason


def test_sip_uri():
    u = parse_sip_uri("SIP:Alice@Contoso.COM:5061;transport=TLS;lr?Subject=x")
    assert (u.scheme, u.user, u.host, u.port, u.headers) == ("sip", "Alice", "contoso.com", 5061, "Subject=x")
    assert u.params == (("transport", "TLS"), ("lr", None)) and u.aor == "Alice@contoso.com"
    assert parse_sip_uri("sip:[2001:db8::1]:5061").host == "[2001:db8::1]"
    assert parse_sip_uri("sip:contoso.com").aor == "contoso.com"
    with pytest.raises(SipError, match="not-a-sip-uri"):
        parse_sip_uri("tel:+1")


def test_contacts_and_vias():
    two = parse_contacts(
        '"A, B" <sip:a@h>;+sip.instance="<urn:uuid:00000000-0000-0000-0000-000000000000>", <sip:b@h>;q=0.5'
    )
    assert [c.uri for c in two] == ["sip:a@h", "sip:b@h"] and two[0].display_name == "A, B"
    assert parse_contacts(" * ")[0].uri == "*"
    for bad in ("<sip:a@h>,", "*, <sip:a@h>", "<sip:a@h", ",<sip:a@h>"):
        with pytest.raises(SipError):
            parse_contacts(bad)
    vias = parse_via(
        "SIP/2.0/TLS 192.0.2.1:4320;branch=z9hG4bK7;received=2001:db8::1, SIP / 2.0 / tcp [2001:db8::2]:5060"
    )
    assert [(v.transport, v.host, v.port) for v in vias] == [("TLS", "192.0.2.1", 4320), ("TCP", "[2001:db8::2]", 5060)]
    assert vias[0].param("branch") == "z9hG4bK7" and vias[0].param("received") == "2001:db8::1"
    for bad in ("SIP/2.0 192.0.2.1", "SIP/3.0/TLS h", "SIP/2.0/TLS h;;x"):
        with pytest.raises(SipError):
            parse_via(bad)


# --- who: the REGISTER's user --------------------------------------------------------------------


def test_registered_user():
    assert parse_message(SIPAE_42_REGISTER).registered_user().aor == "alice@contoso.com"
    third_party = edited(replace={2: "From: <sip:bob@contoso.com>;tag=1"})
    e = pytest.raises(SipError, parse_message(third_party).registered_user).value
    assert (e.reason, e.status) == ("register-from-to-mismatch", 403)
    same_user_other_case = edited(replace={2: "From: <sip:ALICE@Contoso.com>;tag=1"})
    assert parse_message(same_user_other_case).registered_user().user == "alice"
    with pytest.raises(SipError, match="not-register"):
        parse_message(PRES_488).registered_user()
    no_user = edited(replace={2: "From: <sip:contoso.com>;tag=1", 3: "To: <sip:contoso.com>"})
    with pytest.raises(SipError, match="not-a-sip-user"):
        parse_message(no_user).registered_user()


# --- which device: +sip.instance, epid (MS-SIPRE 3.2, MS-SIPAE 3.3.5.2) -------------------------


def test_instance_from_epid_vectors():
    # MS-SIPRE's own test epid, as pidgin-sipe's tests reproduce it
    assert instance_from_epid("01010101") == "4b1682a8-f968-5701-83fc-7c6741dc6697"
    # the REGISTERs of MS-SIPAE 4.1 and 4.2: each +sip.instance is its From's epid's
    assert instance_from_epid("8248ca9ebb") == "4233fd41-093b-5fd6-b5d2-651ed55969e6"
    assert instance_from_epid("2ebb6f264f") == "124841e4-264d-52e8-96c5-d22aa8cdc316"


def test_device_facts_of_the_spec_registers():
    f = sip_device_facts(parse_message(SIPAE_41_REGISTER))
    assert (f.device_id, f.source, f.problem) == ("4233fd41-093b-5fd6-b5d2-651ed55969e6", "sip-instance", None)
    assert (f.claimed_user, f.command) == ("alice@contoso.com", "REGISTER")
    assert f.client_kind == "unknown" and f.user_agent is None  # the example's "UserAgent:" is not User-Agent
    fixed = SIPAE_41_REGISTER.replace(b"UserAgent:", b"User-Agent:")
    f = sip_device_facts(parse_message(fixed))
    assert (f.client_kind, f.device_type, f.model) == ("pc-external", "OC", "Office Communicator 2007")
    assert sip_device_facts(parse_message(SIPAE_42_REGISTER)).device_id == "124841e4-264d-52e8-96c5-d22aa8cdc316"


def test_device_facts_refusals():
    instance = '+sip.instance="<urn:uuid:{}>"'
    ok = instance.format("4233FD41-093B-5FD6-B5D2-651ED55969E6")

    def facts(contact: str, epid: str = "8248ca9ebb"):
        data = edited(replace={2: f"From: <sip:alice@contoso.com>;tag=1;epid={epid}"}, add=[f"Contact: {contact}"])
        return sip_device_facts(parse_message(data))

    assert facts(f"<sip:h>;{ok}").device_id == "4233fd41-093b-5fd6-b5d2-651ed55969e6"
    other = instance.format("124841E4-264D-52E8-96C5-D22AA8CDC316")
    assert facts(f"<sip:h>;{other}").detail == "sip-instance-not-from-epid"
    assert facts(f"<sip:h>;{ok}, <sip:g>;{other}").detail == "sip-instance-ambiguous"
    assert facts(f"<sip:h>;{ok}, <sip:g>;{ok}").device_id == "4233fd41-093b-5fd6-b5d2-651ed55969e6"
    assert facts('<sip:h>;+sip.instance="<urn:foo:1>"').detail == "sip-instance-not-uuid-urn"
    assert facts('<sip:h>;+sip.instance="4233FD41-093B-5FD6-B5D2-651ED55969E6"').detail == "sip-instance-not-uuid-urn"
    assert facts("<sip:h>;a=1;a=2").detail == "sip-contact-duplicate-parameter"
    assert facts("<sip:h>", epid="Ab12").device_id == "ab12"  # no instance: the epid, lower case
    assert facts("<sip:h>", epid="Ab12").source == "sip-epid"
    assert facts("<sip:h>", epid="a" * 65).problem == "bad-characters"


def test_device_facts_without_contact_or_epid():
    f = sip_device_facts(parse_message(edited(replace={2: "From: <sip:alice@contoso.com>;tag=1"})))
    assert (f.device_id, f.problem, f.source) == (None, "absent", "none")


def test_ms_sip_42_register_as_printed_is_refused_and_as_meant_is_read():
    lines = [
        "REGISTER sip:registrar.contoso.com SIP/2.0",
        "Via: SIP/2.0/TLS alice1.contoso.com;branch=z9hG4bK7",
        'From: "Alice" <sip:alice@contoso.com>;tag=354354535;epid=6534555',
        'To: "Alice" sip:alice@contoso.com',
        "Call-ID: 123213@alice1.contoso.com",
        "CSeq: 12345 REGISTER",
        "Max-Forwards: 70",
        "User-Agent: Windows RTC/1.1.2600",
        'Contact: "Alice" sip:alice@alice1.contoso.com',
        "Content-Length: 0",
    ]
    assert refused(msg(*lines)).reason == "bad-to"  # MS-SIP 4.2 step 1, as printed
    lines[3] = 'To: "Alice" <sip:alice@contoso.com>'
    m = parse_message(msg(*lines))
    assert m.registered_user().aor == "alice@contoso.com" and m.call_id == "123213@alice1.contoso.com"
    f = sip_device_facts(m)  # its Contact is printed without <> too
    assert (f.device_id, f.problem, f.detail) == (None, "malformed", "sip-contact-bad-name-addr")
    lines[8] = 'Contact: "Alice" <sip:alice@alice1.contoso.com>'
    f = sip_device_facts(parse_message(msg(*lines)))
    assert (f.device_id, f.source, f.client_kind) == ("6534555", "sip-epid", "unknown")


@pytest.mark.parametrize(
    "ua,kind,product,version",
    [
        (
            "UCCAPI/16.0.4849.1000 OC/16.0.4849.1000 (Skype for Business)",
            "pc-external",
            "Skype for Business",
            "16.0.4849.1000",
        ),
        (
            "UCCAPI/15.0.3419.3001 OC/15.0.3419.3003 (AppName)",
            "pc-external",
            "Lync 2013",
            "15.0.3419.3003",
        ),  # MS-PRES 4.14.3.1
        ("UCCAPI/15.0.4481.1000 OC/15.0.4481.1000 (Microsoft Lync)", "pc-external", "Lync 2013", "15.0.4481.1000"),
        (
            "UCCP/2.0.6362.0 OC/2.0.6362.0 (Microsoft Office Communicator)",
            "pc-external",
            "Office Communicator 2007",
            "2.0.6362.0",
        ),
        ("UCCAPI/4.0.7577.0 OC/4.0.7577.0 (Microsoft Lync 2010)", "pc-external", "Lync 2010", "4.0.7577.0"),
        ("UCCAPI/17.0.1 OC/17.0.1 (Microsoft Future)", "pc-external", "Future", "17.0.1"),
        ("Lync/15.0 x", "pc-external", None, None),
        ("Windows RTC/1.1.2600", "unknown", None, None),  # MS-SIP 4.2
        ("RTC/5.0", "unknown", None, None),
        (None, "unknown", None, None),
    ],
)
def test_client_kind_from_user_agent(ua, kind, product, version):
    assert sip_client(ua) == sip.SipClient(kind, product, version)


def test_client_rules_from_configuration_come_first():
    assert sip_client("Windows RTC/1.1.2600", [(r"^Windows RTC/", "pc-internal")]).kind == "pc-internal"
    with pytest.raises(ValueError):
        sip_client("x", [("(", "pc-internal")])
