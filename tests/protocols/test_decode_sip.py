"""``ucgate decode`` of SIP's MS-SIPAE fields: the parameters, the gssapi-data token decoded one
level down, never a signature or token bytes (decode.py's rule for every scheme)."""

from __future__ import annotations

import base64

import pytest

from ucgate.protocols import ntlm
from ucgate.protocols.decode import (
    DecodeError,
    decode_header,
    render_text,
    summary,
    to_json,
)

REALM = "SIP Communications Service"
TYPE3 = ntlm.AuthenticateMessage(
    ntlm.NegotiateFlags.NEGOTIATE_UNICODE, b"", b"\x00" * 48, "CONTOSO", "alice", "WS1"
).pack()
B64 = base64.b64encode(TYPE3).decode()
SIGNATURE = "98ccabbd2f338e344bcf43657094492c4460b932"


def test_ntlm_credentials_show_the_user_and_no_secret():
    d = decode_header(
        f'Proxy-Authorization: NTLM qop="auth", opaque="C1A2B3D4", realm="{REALM}", '
        f'targetname="server.contoso.com", gssapi-data="{B64}", version=4'
    )
    m = d["message"]
    assert (d["scheme"], m["kind"], m["realm"], m["opaque"], m["version"]) == (
        "NTLM",
        "MS-SIPAE NTLM credentials",
        REALM,
        "C1A2B3D4",
        4,
    )
    assert m["gssapi_data"]["kind"] == "NTLM AUTHENTICATE" and m["gssapi_data"]["user"] == "alice"
    assert (
        summary(d)
        == 'scheme=NTLM message="MS-SIPAE NTLM credentials > NTLM AUTHENTICATE" user=alice domain=CONTOSO workstation=WS1'
    )
    assert B64 not in to_json(d) and B64 not in render_text(d)


def test_signed_tls_dsk_fields_show_signatures_by_length():
    # MS-PRES 4.14.3.1
    d = decode_header(
        f'TLS-DSK qop="auth", realm="{REALM}", opaque="0A9339AD", targetname=" exbox.exchange.corp.microsoft.com", '
        f'crand="e8b69f85", cnum="3", response="{SIGNATURE}"'
    )
    assert d["message"]["response"] == "present (40 hex digits)" and d["message"]["cnum"] == 3
    assert SIGNATURE not in to_json(d)
    d = decode_header(
        'Authentication-Info: TLS-DSK qop="auth", opaque="F755045D", srand="1D9666D9", snum="17", '
        f'rspauth="{SIGNATURE}", targetname="PROXY.company1", realm="{REALM}", version=4'
    )  # MS-OCPSTN 4.7.2.1
    assert (d["message"]["kind"], d["message"]["snum"]) == ("MS-SIPAE TLS-DSK info", 17)
    assert SIGNATURE not in render_text(d)


def test_challenges_and_tokens():
    # MS-SIPAE 4.1 step 2, with the header name (so it is read as a challenge)
    d = decode_header(f'WWW-Authenticate: Kerberos realm="{REALM}", targetname="sip/server.contoso.com", version=3')
    assert d["message"] == {
        "kind": "MS-SIPAE Kerberos challenge",
        "realm": REALM,
        "targetname": "sip/server.contoso.com",
        "version": 3,
    }
    d = decode_header(f'NTLM qop="auth", realm="{REALM}", targetname="t", gssapi-data="", version=4')
    assert d["message"]["gssapi_data"] == {"kind": "empty"}
    tls = base64.b64encode(b"\x16\x03\x01\x00\x05hello").decode()
    d = decode_header(f'TLS-DSK realm="{REALM}", targetname="t", gssapi-data="{tls}"')
    assert d["message"]["gssapi_data"] == {"kind": "TLS records", "length": 10}
    d = decode_header(f'Kerberos realm="{REALM}", targetname="t", gssapi-data="{base64.b64encode(b"junk").decode()}"')
    assert d["message"]["gssapi_data"]["kind"] == "unknown"


def test_http_ntlm_tokens_are_still_tokens():
    assert decode_header(f"NTLM {B64}")["message"]["kind"] == "NTLM AUTHENTICATE"
    assert decode_header("Authorization: NTLM TlRMTVNTUAABAAAAB4IIAA==")["message"]["kind"] == "NTLM NEGOTIATE"


@pytest.mark.parametrize(
    "value",
    [
        f'NTLM realm="{REALM}"',
        'NTLM realm="r", targetname="t", crand="zz", cnum="1", response="00"',
        'Authentication-Info: NTLM realm="r", targetname="t", crand="00", cnum="1", response="00"',
    ],
)
def test_refused_fields_never_quote_the_input(value):
    with pytest.raises(DecodeError) as e:
        decode_header(value)
    assert e.value.reason == "malformed" and "zz" not in str(e.value)
