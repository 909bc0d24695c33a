"""MS-SIPAE authentication fields: the specifications' examples as vectors, every refusal reason,
the NTLM user of a gssapi-data AUTHENTICATE and its check against the REGISTER's user."""

from __future__ import annotations

import base64

import pytest
import spnego
from spnego.channel_bindings import GssChannelBindings

from ucgate.protocols import ntlm, sipauth
from ucgate.protocols.ntlm import Identity, NegotiateFlags
from ucgate.protocols.sip import SipError, parse_message, parse_sip_uri
from ucgate.protocols.sipauth import (
    auth_fields,
    check_ntlm_user,
    ntlm_identity,
    parse_auth,
)

from .test_ntlm import TLS_BINDING, make_acceptor
from .test_sip import PRES_488, SIPAE_41_CHALLENGE, edited

REALM = "SIP Communications Service"


# --- vectors --------------------------------------------------------------------------------------


def test_sipae_41_and_42_challenges():
    # MS-SIPAE 4.1 and 4.2 step 2 (the same two fields in both)
    ntlm_c, krb_c = auth_fields(parse_message(SIPAE_41_CHALLENGE), "WWW-Authenticate")
    assert (ntlm_c.kind, ntlm_c.scheme, ntlm_c.realm, ntlm_c.targetname, ntlm_c.version) == (
        "challenge",
        "NTLM",
        REALM,
        "server.contoso.com",
        3,
    )
    assert (krb_c.scheme, krb_c.targetname, krb_c.version) == ("Kerberos", "sip/server.contoso.com", 3)
    assert ntlm_c.security_association() == ("NTLM", REALM, "server.contoso.com")
    assert ntlm_c.gssapi_data is None and not ntlm_c.signed and ntlm_c.other == ()


def test_pres_tls_dsk_credentials_and_info():
    # MS-PRES 4.14.3.1: a client's signed SUBSCRIBE (note the targetname's leading space, kept)
    c = parse_auth(
        'TLS-DSK qop="auth", realm="SIP Communications Service", opaque="0A9339AD", '
        'targetname=" exbox.exchange.corp.microsoft.com", crand="e8b69f85", cnum="3", '
        'response="98ccabbd2f338e344bcf43657094492c4460b932"',
        "credentials",
    )
    assert (c.scheme, c.opaque, c.targetname, c.crand, c.cnum, c.qop) == (
        "TLS-DSK",
        "0A9339AD",
        " exbox.exchange.corp.microsoft.com",
        "e8b69f85",
        3,
        "auth",
    )
    assert c.response == "98ccabbd2f338e344bcf43657094492c4460b932" and c.signed
    assert "98ccab" not in repr(c)  # signatures stay out of logs
    (info,) = auth_fields(parse_message(PRES_488), "authentication-info")
    assert (info.kind, info.srand, info.snum, info.version, info.targetname) == (
        "info",
        "FA78E074",
        5,
        4,
        "SERVER.contoso.com",
    )
    assert info.rspauth == "0f99e36e9009f0fff70a32c0524bd59cc5ae5cd9"
    # MS-OCPSTN 4.7.2.1
    info = parse_auth(
        'TLS-DSK qop="auth", opaque="F755045D", srand="1D9666D9", snum="17", '
        'rspauth="3359c8ac2e6229b2eb9738ac707dc8c3e54f65f0", targetname="PROXY.company1", '
        'realm="SIP Communications Service", version=4',
        "info",
    )
    assert (info.opaque, info.snum, info.targetname) == ("F755045D", 17, "PROXY.company1")


def test_first_ntlm_leg_and_the_server_challenge():
    # MS-SIPAE's NTLM is connectionless: the client opens with an empty gssapi-data and the
    # second 401 carries the CHALLENGE and the association's opaque
    first = parse_auth(
        f'NTLM qop="auth", realm="{REALM}", targetname="server.contoso.com", gssapi-data="", version=4', "credentials"
    )
    assert first.gssapi_data == b"" and ntlm_identity(first) is None
    challenge = make_acceptor().challenge(spnego.client("u", "p", protocol="ntlm").step())
    b64 = base64.b64encode(challenge).decode()
    leg2 = parse_auth(
        f'NTLM opaque="C1A2B3D4", gssapi-data="{b64}", targetname="server.contoso.com", realm="{REALM}", version=4',
        "challenge",
    )
    assert leg2.gssapi_data == challenge and leg2.opaque == "C1A2B3D4"


def test_spelling_freedoms():
    a = parse_auth('ntlm REALM = "r" ,TargetName=t,version="3", x-new="kept"', "challenge")
    assert (a.scheme, a.realm, a.targetname, a.version, a.other) == ("NTLM", "r", "t", 3, ("x-new",))
    assert a.params == (("realm", "r"), ("targetname", "t"), ("version", "3"), ("x-new", "kept"))
    assert parse_auth(r'Kerberos realm="a \"b\" \\ c", targetname="t"', "challenge").realm == 'a "b" \\ c'
    assert parse_auth(
        'TLS-DSK realm="r", targetname="t", sts-uri="https://pool.contoso.com/CertProv/CertProvisioningService.svc"',
        "challenge",
    ).sts_uri.startswith("https://")


@pytest.mark.parametrize(
    "value,kind,reason",
    [
        ('Digest realm="r", nonce="n"', "challenge", "unknown-auth-scheme"),
        ('Basic realm="r"', "challenge", "unknown-auth-scheme"),
        ("Negotiate TlRMTVNTUAABAAAA", "credentials", "unknown-auth-scheme"),
        ('NTLMX realm="r", targetname="t"', "challenge", "unknown-auth-scheme"),
        ('"NTLM" realm="r"', "challenge", "unknown-auth-scheme"),
        ("", "challenge", "unknown-auth-scheme"),
        ('NTLM,realm="r", targetname="t"', "challenge", "bad-auth-param"),
        ('NTLM realm="r", realm="s", targetname="t"', "challenge", "duplicate-auth-param"),
        ('NTLM realm="r", REALM="r", targetname="t"', "challenge", "duplicate-auth-param"),
        ('NTLM targetname="t"', "challenge", "missing-auth-param"),
        ('NTLM realm="r"', "credentials", "missing-auth-param"),
        ('NTLM realm="r", targetname="t", rspauth="00"', "credentials", "unexpected-auth-param"),
        ('NTLM realm="r", targetname="t", crand="00"', "info", "unexpected-auth-param"),
        ('NTLM realm="r", targetname="t", crand="00", cnum="1"', "credentials", "incomplete-signature"),
        ('NTLM realm="r", targetname="t", srand="00", rspauth="00"', "info", "incomplete-signature"),
        ('NTLM realm="r", targetname="t", crand="0x1", cnum="1", response="00"', "credentials", "bad-auth-param"),
        ('NTLM realm="r", targetname="t", crand="00", cnum="-1", response="00"', "credentials", "bad-auth-param"),
        ('NTLM realm="r", targetname="t", crand="00", cnum="1", response="zz"', "credentials", "bad-auth-param"),
        ('NTLM realm="r", targetname="t", opaque="not hex"', "challenge", "bad-auth-param"),
        ('NTLM realm="r", targetname="t", version=three', "challenge", "bad-auth-param"),
        ('NTLM realm="r", targetname="t", qop="auth-int"', "challenge", "bad-auth-param"),
        ('NTLM realm="r", targetname="t", gssapi-data="TlRMTVNTUAABAAAA="', "credentials", "bad-auth-param"),
        ('NTLM realm="r", targetname="t", gssapi-data="Tl RM"', "credentials", "bad-auth-param"),
        ('NTLM realm="", targetname="t"', "challenge", "bad-auth-param"),
        ('NTLM realm="r", targetname="t",', "challenge", "bad-auth-param"),
        ('NTLM realm="r" targetname="t"', "challenge", "bad-auth-param"),
        ('NTLM realm="r, targetname="t"', "challenge", "bad-auth-param"),
        ('NTLM realm=r s, targetname="t"', "challenge", "bad-auth-param"),
        ('NTLM realm="r\x00", targetname="t"', "challenge", "bad-auth-param"),
        (
            'NTLM realm="r", targetname="t", ' + ", ".join(f'x{i}="1"' for i in range(15)),
            "challenge",
            "too-many-auth-params",
        ),
        (
            f'NTLM realm="r", targetname="t", gssapi-data="{"A" * (sipauth.MAX_GSSAPI_DATA_CHARS + 4)}"',
            "credentials",
            "gssapi-data-too-large",
        ),
    ],
)
def test_refusals(value, kind, reason):
    with pytest.raises(SipError) as e:
        parse_auth(value, kind)
    assert e.value.reason == reason


def test_limits_both_sides():
    fifteen = 'NTLM realm="r", targetname="t", ' + ", ".join(f'x{i}="1"' for i in range(14))
    assert len(parse_auth(fifteen, "challenge").params) == sipauth.MAX_AUTH_PARAMS
    biggest = base64.b64encode(b"\x00" * sipauth.MAX_TOKEN_BYTES).decode()
    assert len(biggest) == sipauth.MAX_GSSAPI_DATA_CHARS
    assert len(
        parse_auth(f'Kerberos realm="r", targetname="t", gssapi-data="{biggest}"', "credentials").gssapi_data
    ) == (sipauth.MAX_TOKEN_BYTES)


def test_auth_fields_names():
    assert auth_fields(parse_message(PRES_488), "Proxy-Authentication-Info") == []
    with pytest.raises(ValueError):
        auth_fields(parse_message(PRES_488), "Subject")
    with pytest.raises(ValueError):
        parse_auth('NTLM realm="r", targetname="t"', "other")


# --- who: the NTLM user of a Type 3 and the REGISTER's user ----------------------------------------


def authenticate(user: str, domain: str, unicode: bool = True) -> bytes:
    flags = NegotiateFlags.NEGOTIATE_UNICODE if unicode else NegotiateFlags.NEGOTIATE_OEM
    return ntlm.AuthenticateMessage(flags, b"", b"\x00" * 48, domain, user, "WS1").pack()


def credentials(token: bytes, scheme: str = "NTLM") -> sipauth.SipAuth:
    b64 = base64.b64encode(token).decode()
    return parse_auth(
        f'{scheme} qop="auth", opaque="C1A2B3D4", realm="{REALM}", targetname="server.contoso.com", '
        f'gssapi-data="{b64}", version=4',
        "credentials",
    )


def test_ntlm_identity_of_a_real_authenticate():
    client = spnego.client(
        "CONTOSO\\alice",
        "Password",
        hostname="server.contoso.com",
        service="sip",
        protocol="ntlm",
        channel_bindings=GssChannelBindings(application_data=TLS_BINDING),
    )
    negotiate = client.step()
    token = client.step(make_acceptor().challenge(negotiate))
    assert ntlm_identity(credentials(token)) == Identity(
        "alice", "CONTOSO", ntlm_identity(credentials(token)).workstation
    )
    assert ntlm_identity(credentials(negotiate)) is None  # a NEGOTIATE names no one
    assert ntlm_identity(credentials(token, "Kerberos")) is None  # not NTLM: the acceptor knows


def test_ntlm_identity_refusals():
    with pytest.raises(SipError) as e:
        ntlm_identity(credentials(b"\x60\x82\x01\x00 not ntlm"))
    assert e.value.reason == "bad-gssapi-data"
    with pytest.raises(SipError) as e:
        ntlm_identity(credentials(authenticate("alice", "CONTOSO")[:70]))
    assert (e.value.reason, e.value.detail) == ("bad-gssapi-data", "malformed")
    assert ntlm_identity(credentials(authenticate("alice", "CONTOSO", unicode=False))).user == "alice"


ALICE = parse_sip_uri("sip:alice@contoso.com")


@pytest.mark.parametrize(
    "user,domain,netbios,reason",
    [
        ("alice", "CONTOSO", None, None),
        ("ALICE", "contoso", {"contoso.com": "CONTOSO"}, None),
        ("alice", "contoso.com", {"contoso.com": "CONTOSO"}, None),  # the DNS name as the domain
        ("alice@contoso.com", "", None, None),  # UPN logon
        ("Alice@Contoso.COM", "", {"contoso.com": "CONTOSO"}, None),
        ("CONTOSO\\alice", "", {"contoso.com": "CONTOSO"}, None),  # the domain inside the user name
        ("bob", "CONTOSO", None, "ntlm-user-mismatch"),
        ("bob@contoso.com", "", None, "ntlm-user-mismatch"),
        ("alice@fabrikam.com", "", None, "ntlm-user-mismatch"),
        ("alice", "FABRIKAM", {"contoso.com": "CONTOSO"}, "ntlm-domain-mismatch"),
        ("alice", "CONTOSO", {"fabrikam.com": "FABRIKAM"}, "sip-domain-unknown"),
        ("", "", None, "ntlm-anonymous"),
        ("CONTOSO\\", "", None, "ntlm-anonymous"),
    ],
)
def test_check_ntlm_user(user, domain, netbios, reason):
    assert check_ntlm_user(ALICE, Identity(user, domain, "WS1"), netbios) == reason


def test_check_ntlm_user_takes_uri_text():
    assert check_ntlm_user("sip:alice@contoso.com", Identity("alice", "CONTOSO", "")) is None
    assert check_ntlm_user("tel:+1", Identity("alice", "CONTOSO", "")) == "not-a-sip-user"
    assert check_ntlm_user("sip:contoso.com", Identity("alice", "CONTOSO", "")) == "not-a-sip-user"


def test_a_register_whose_from_user_is_not_the_ntlm_user():
    # the whole path of issue 18's "a From user that differs from the NTLM user"
    b64 = base64.b64encode(authenticate("alice", "CONTOSO")).decode()
    auth = (
        f'Authorization: NTLM qop="auth", opaque="C1A2B3D4", realm="{REALM}", '
        f'targetname="server.contoso.com", gssapi-data="{b64}", version=4'
    )
    for who, reason in (("alice", None), ("mallory", "ntlm-user-mismatch")):
        data = edited(
            replace={2: f"From: <sip:{who}@contoso.com>;tag=1", 3: f"To: <sip:{who}@contoso.com>"}, add=[auth]
        )
        m = parse_message(data)
        (cred,) = auth_fields(m, "authorization")
        assert check_ntlm_user(m.registered_user(), ntlm_identity(cred), {"contoso.com": "CONTOSO"}) == reason
