"""``ucgate decode`` and the decoder behind the gateway's auth trace (protocols/decode.py).

Test vectors come from encoders nobody here wrote: pyspnego and impacket for NTLM and SPNEGO;
impacket's pyasn1 RFC 4120 schema for Kerberos AP-REQ / AP-REP / KRB-ERROR (no KDC needed:
the fields are known because we set them); and, with the Samba AD lab, a real AP-REQ for a
service ticket issued by Samba's KDC (impacket's Kerberos client, ``@pytest.mark.samba``).
Python-gssapi is not used: it is not a dependency, and the AP-REQ bytes are what matter.
"""

from __future__ import annotations

import base64
import json
import os
import re
import struct

import pytest
import spnego
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from spnego.channel_bindings import GssChannelBindings

from ucgate.cli import main
from ucgate.protocols import spnego as ours
from ucgate.protocols.decode import (
    MAX_HEADER_SIZE,
    MAX_TEXT,
    DecodeError,
    decode_header,
    decode_token,
    render_text,
    summary,
    to_json,
)
from ucgate.protocols.ntlm import AuthenticateMessage

from .test_ntlm import TLS_BINDING, make_acceptor

PASSWORD = "Correct-Horse-7"
SPN_HOST = "gw1.example.test"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def ntlm_exchange(**kwargs) -> tuple[bytes, bytes, bytes]:
    """NEGOTIATE, our CHALLENGE, AUTHENTICATE from pyspnego (NTLMv2, channel bindings, MIC)."""
    client = spnego.client(
        "EXAMPLE\\alice",
        PASSWORD,
        hostname=SPN_HOST,
        service="HTTP",
        protocol="ntlm",
        channel_bindings=GssChannelBindings(application_data=TLS_BINDING),
        **kwargs,
    )
    negotiate = client.step()
    challenge = make_acceptor().challenge(negotiate)
    return negotiate, challenge, client.step(challenge)


def secret_fragments(authenticate: bytes) -> list[str]:
    """Hex and base64 spellings of the AUTHENTICATE's secret-bearing fields."""
    msg = AuthenticateMessage.unpack(authenticate)
    out = []
    for value in (
        msg.nt_challenge_response[:16],
        msg.nt_challenge_response[16:40],
        msg.mic or b"",
        msg.encrypted_random_session_key,
        msg.lm_challenge_response,
    ):
        if value and any(value):
            out += [value.hex(), value.hex().upper(), b64(value)[:12]]
    return out


def assert_no_secrets(decoded: dict, *, token: bytes, extra: tuple[str, ...] = ()) -> None:
    text = to_json(decoded) + render_text(decoded) + summary(decoded)
    for fragment in extra:
        assert fragment not in text
    # No base64 or hex blob of any kind, least of all the token itself.
    assert b64(token)[:16] not in text
    assert not re.search(r"[A-Za-z0-9+/]{32,}", text), text
    assert not re.search(r"[0-9a-fA-F]{24,}", text), text


# --- NTLM (MS-NLMP 2.2.1) -----------------------------------------------------------------------


def test_ntlm_three_messages_from_pyspnego():
    negotiate, challenge, authenticate = ntlm_exchange()

    n = decode_header("NTLM " + b64(negotiate))
    assert n["scheme"] == "NTLM" and n["length"] == len(negotiate)
    assert n["message"]["kind"] == "NTLM NEGOTIATE"
    assert "NEGOTIATE_EXTENDED_SESSIONSECURITY" in n["message"]["flags"]

    c = decode_header("NTLM " + b64(challenge))["message"]
    assert c["kind"] == "NTLM CHALLENGE"
    assert c["target_name"] == "EXAMPLE"
    assert c["target_info"]["MsvAvDnsComputerName"] == "gw1.example.test"
    assert c["target_info"]["MsvAvTimestamp"].endswith("Z")

    decoded = decode_header("NTLM " + b64(authenticate))
    a = decoded["message"]
    assert (a["kind"], a["user"], a["domain"]) == ("NTLM AUTHENTICATE", "alice", "EXAMPLE")
    assert a["workstation"]
    assert a["nt_response"]["kind"] == "NTLMv2"
    assert a["nt_response"]["length"] == len(AuthenticateMessage.unpack(authenticate).nt_challenge_response)
    pairs = a["nt_response"]["av_pairs"]
    assert pairs["MsvAvTargetName"] == f"HTTP/{SPN_HOST}"
    assert pairs["MsvAvChannelBindings"] == "present"
    assert "MIC_PROVIDED" in pairs["MsvAvFlags"]
    assert a["mic"] == "present"
    assert a["encrypted_session_key"] is True
    assert summary(decoded) == (
        f'scheme=NTLM message="NTLM AUTHENTICATE" user=alice domain=EXAMPLE workstation={a["workstation"]}'
    )
    assert_no_secrets(decoded, token=authenticate, extra=(PASSWORD, *secret_fragments(authenticate)))


def test_impacket_ntlmv2_and_ntlmv1():
    from impacket import ntlm as imp

    t1 = imp.getNTLMSSPType1("WS01", "CORP", signingRequired=True)
    n = decode_token(t1.getData())
    assert n["kind"] == "NTLM NEGOTIATE"
    challenge = make_acceptor().challenge(t1.getData())
    for v2, kind in ((True, "NTLMv2"), (False, "NTLMv1")):
        t3, _ = imp.getNTLMSSPType3(t1, challenge, "bob", PASSWORD, "CORP", use_ntlmv2=v2)
        raw = t3.getData()
        a = decode_token(raw)
        assert (a["user"], a["domain"], a["nt_response"]["kind"]) == ("bob", "CORP", kind)
        assert_no_secrets({"message": a}, token=raw, extra=(PASSWORD, *secret_fragments(raw)))


def test_ntlm_without_channel_bindings_or_domain():
    client = spnego.client("alice", PASSWORD, hostname=SPN_HOST, protocol="ntlm")
    negotiate = client.step()
    a = decode_token(client.step(make_acceptor().challenge(negotiate)))
    assert "MsvAvChannelBindings" not in a["nt_response"]["av_pairs"]
    assert (a["user"], a["domain"]) == ("alice", "")


# --- SPNEGO (RFC 4178) --------------------------------------------------------------------------


def test_spnego_legs_with_ntlm_inside():
    client = spnego.client(
        "EXAMPLE\\alice",
        PASSWORD,
        hostname=SPN_HOST,
        service="HTTP",
        protocol="negotiate",
        channel_bindings=GssChannelBindings(application_data=TLS_BINDING),
    )
    acceptor = ours.SpnegoNtlmAcceptor(make_acceptor())
    init = client.step()
    d = decode_header("Negotiate " + b64(init))
    m = d["message"]
    assert m["kind"] == "SPNEGO NegTokenInit"
    assert m["mech_types"][0] == "NTLM (1.3.6.1.4.1.311.2.2.10)"
    assert m["mech_token"]["kind"] == "NTLM NEGOTIATE"
    assert summary(d) == 'scheme=Negotiate message="SPNEGO NegTokenInit > NTLM NEGOTIATE"'

    out = acceptor.step(init)
    r = decode_header("WWW-Authenticate: Negotiate " + b64(out))["message"]
    assert r["kind"] == "SPNEGO NegTokenResp"
    assert r["neg_state"] == "accept-incomplete (1)"
    assert r["supported_mech"].startswith("NTLM")
    assert r["response_token"]["kind"] == "NTLM CHALLENGE"

    resp = client.step(out)
    d = decode_header("Negotiate " + b64(resp))
    assert d["message"]["response_token"]["user"] == "alice"
    assert d["message"]["mech_list_mic"] is True
    inner = ours.parse_negotiate_token(resp).response_token
    assert_no_secrets(d, token=resp, extra=(PASSWORD, *secret_fragments(inner)))


def test_spnego_windows_style_mech_list_and_broken_inner_token():
    token = ours.encode_neg_token_init(
        [ours.MS_KRB5_OID, ours.KRB5_OID, ours.NEGOEX_OID, ours.NTLM_OID], b"NTLMSSP\x00\x01\x00\x00\x00"
    )
    m = decode_token(token)
    assert m["mech_types"] == [
        "Kerberos 5 (Microsoft OID) (1.2.840.48018.1.2.2)",
        "Kerberos 5 (1.2.840.113554.1.2.2)",
        "NEGOEX (1.3.6.1.4.1.311.2.2.30)",
        "NTLM (1.3.6.1.4.1.311.2.2.10)",
    ]
    # a broken inner token is reported in place; the SPNEGO fields still show
    assert m["mech_token"]["kind"] == "undecodable"
    assert m["mech_token"]["error"].startswith("malformed")


# --- Kerberos (RFC 4120 §5.5.1), built with impacket's ASN.1 schema -----------------------------


def ap_req(
    realm="LAB.UCGATE.TEST", sname=("HTTP", "gw.lab.ucgate.test"), etype=18, kvno=3, auth_etype=18, mutual=True
) -> bytes:
    from impacket.krb5 import constants
    from impacket.krb5.asn1 import AP_REQ, seq_set_iter
    from pyasn1.codec.der import encoder

    req = AP_REQ()
    req["pvno"] = 5
    req["msg-type"] = constants.ApplicationTagNumbers.AP_REQ.value
    req["ap-options"] = constants.encodeFlags([constants.APOptions.mutual_required.value] if mutual else [])
    ticket = req["ticket"]
    ticket["tkt-vno"] = 5
    ticket["realm"] = realm
    ticket["sname"]["name-type"] = constants.PrincipalNameType.NT_SRV_INST.value
    seq_set_iter(ticket["sname"], "name-string", list(sname))
    ticket["enc-part"]["etype"] = etype
    ticket["enc-part"]["kvno"] = kvno
    ticket["enc-part"]["cipher"] = CIPHER
    req["authenticator"]["etype"] = auth_etype
    req["authenticator"]["cipher"] = AUTH_CIPHER
    return encoder.encode(req)


CIPHER = bytes(range(256)) * 3
AUTH_CIPHER = bytes(range(255, 0, -1))


def gss_wrap(message: bytes, tok_id: bytes = b"\x01\x00", oid: str = ours.KRB5_OID) -> bytes:
    """RFC 2743 §3.1 InitialContextToken around a krb5 message (RFC 4121 §4.1)."""
    return ours._tlv(0x60, ours._encode_oid(oid) + tok_id + message)


def check_ap_req(m: dict, *, realm: str, spn: str, etype: str, kvno: int | None) -> None:
    assert m["kind"] == "Kerberos AP-REQ"
    assert (m["pvno"], m["msg_type"]) == (5, 14)
    assert m["ticket"]["realm"] == realm
    assert m["ticket"]["sname"] == spn
    assert m["ticket"]["enc_part"]["etype"] == etype
    assert m["ticket"]["enc_part"].get("kvno") == kvno
    assert "cipher" not in json.dumps(m).replace("cipher_length", "")


def test_kerberos_ap_req_raw_gss_and_inside_spnego():
    raw = ap_req()
    m = decode_token(raw)
    check_ap_req(
        m, realm="LAB.UCGATE.TEST", spn="HTTP/gw.lab.ucgate.test", etype="aes256-cts-hmac-sha1-96 (18)", kvno=3
    )
    assert m["framing"] == "raw (no GSS-API header)"
    assert m["ap_options"] == ["mutual-required"]
    assert m["ticket"]["sname_type"] == "NT-SRV-INST (2)"
    assert m["ticket"]["enc_part"]["cipher_length"] == len(CIPHER)
    assert m["authenticator"] == {"etype": "aes256-cts-hmac-sha1-96 (18)", "cipher_length": len(AUTH_CIPHER)}

    d = decode_header("Negotiate " + b64(gss_wrap(ap_req(etype=23, kvno=7, mutual=False))))
    m = d["message"]
    check_ap_req(m, realm="LAB.UCGATE.TEST", spn="HTTP/gw.lab.ucgate.test", etype="rc4-hmac (23)", kvno=7)
    assert m["framing"] == "GSS-API, mechanism Kerberos 5 (1.2.840.113554.1.2.2)"
    assert m["ap_options"] == []
    assert summary(d) == (
        'scheme=Negotiate message="Kerberos AP-REQ" spn=HTTP/gw.lab.ucgate.test '
        'realm=LAB.UCGATE.TEST etype="rc4-hmac (23)"'
    )

    # as Windows sends it: SPNEGO NegTokenInit, MS krb5 OID first, the AP-REQ as mechToken
    spnego_token = ours.encode_neg_token_init(
        [ours.MS_KRB5_OID, ours.KRB5_OID, ours.NTLM_OID], gss_wrap(ap_req(), oid=ours.KRB5_OID)
    )
    d = decode_header("Authorization: Negotiate " + b64(spnego_token))
    check_ap_req(
        d["message"]["mech_token"],
        realm="LAB.UCGATE.TEST",
        spn="HTTP/gw.lab.ucgate.test",
        etype="aes256-cts-hmac-sha1-96 (18)",
        kvno=3,
    )
    for decoded, token in ((m, raw), (d, spnego_token)):
        text = to_json(decoded) + render_text(decoded)
        assert CIPHER[:12].hex() not in text and b64(AUTH_CIPHER)[:12] not in text
        assert b64(token)[:16] not in text


def test_kerberos_ap_rep_and_krb_error_in_neg_token_resp():
    from impacket.krb5 import constants
    from impacket.krb5.asn1 import AP_REP, KRB_ERROR, seq_set_iter
    from pyasn1.codec.der import encoder

    rep = AP_REP()
    rep["pvno"], rep["msg-type"] = 5, constants.ApplicationTagNumbers.AP_REP.value
    rep["enc-part"]["etype"], rep["enc-part"]["cipher"] = 18, b"\x01" * 40
    token = ours.encode_neg_token_resp(
        ours.NegState.ACCEPT_COMPLETED, ours.KRB5_OID, gss_wrap(encoder.encode(rep), b"\x02\x00")
    )
    m = decode_token(token)
    assert m["neg_state"] == "accept-completed (0)"
    assert m["response_token"]["kind"] == "Kerberos AP-REP"
    assert m["response_token"]["enc_part"]["etype"] == "aes256-cts-hmac-sha1-96 (18)"

    err = KRB_ERROR()
    err["pvno"], err["msg-type"] = 5, constants.ApplicationTagNumbers.KRB_ERROR.value
    err["stime"], err["susec"] = "20250101120000Z", 0
    err["error-code"] = constants.ErrorCodes.KRB_AP_ERR_SKEW.value
    err["realm"] = "LAB.UCGATE.TEST"
    err["sname"]["name-type"] = 2
    seq_set_iter(err["sname"], "name-string", ["HTTP", "gw.lab.ucgate.test"])
    err["e-text"] = "clock skew too great"
    m = decode_token(gss_wrap(encoder.encode(err), b"\x03\x00"))
    assert m["error_code"] == "KRB_AP_ERR_SKEW (37)"
    assert (m["realm"], m["sname"], m["e_text"]) == (
        "LAB.UCGATE.TEST",
        "HTTP/gw.lab.ucgate.test",
        "clock skew too great",
    )


@pytest.mark.parametrize(
    "broken, reason",
    [
        (lambda t: t[:-1], "malformed"),  # truncated
        (lambda t: t + b"\x00", "malformed"),  # trailing byte
        (lambda t: gss_wrap(t, b"\x02\x00"), "malformed"),  # TOK_ID says AP-REP
        (lambda t: gss_wrap(t, oid="1.2.3.4"), "unsupported-mech"),
    ],
)
def test_kerberos_refusals(broken, reason):
    with pytest.raises(DecodeError) as info:
        decode_token(broken(ap_req()))
    assert info.value.reason == reason


@pytest.mark.samba
def test_real_ap_req_from_samba_kdc(samba_lab, tmp_path):
    """A service ticket issued by Samba's KDC to MIT kinit/kvno, then wrapped as an AP-REQ in
    SPNEGO by impacket's client, the way Windows sends it."""
    import shutil
    import subprocess

    from impacket.krb5.ccache import CCache
    from impacket.krb5.kerberosv5 import getKerberosType1

    if not (shutil.which("kinit") and shutil.which("kvno")):
        pytest.skip("MIT kinit/kvno not installed (scripts/install-kerberos-lab)")
    user = samba_lab.seed_users[0].name
    spn = f"cifs/dc1.{samba_lab.dns_domain}"
    env = {**os.environ, "KRB5_CONFIG": str(samba_lab.krb5_conf), "KRB5CCNAME": f"FILE:{tmp_path / 'cc'}"}
    subprocess.run(
        ["kinit", f"{user}@{samba_lab.realm}"],
        input=samba_lab.default_password + "\n",
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    )
    subprocess.run(["kvno", f"{spn}@{samba_lab.realm}"], env=env, check=True, capture_output=True, timeout=30)
    credential = CCache.loadFile(str(tmp_path / "cc")).getCredential(f"{spn}@{samba_lab.realm}", anySPN=False)
    tgs = credential.toTGS()
    _, _, blob = getKerberosType1(
        user,
        "",
        samba_lab.realm,
        b"",
        b"",
        "",
        TGT=None,
        TGS=tgs,
        targetName=f"dc1.{samba_lab.dns_domain}",
        kdcHost=samba_lab.kdc,
    )
    d = decode_header("Negotiate " + b64(blob))
    m = d["message"]["mech_token"]
    assert m["ticket"]["realm"] == samba_lab.realm
    assert m["ticket"]["sname"] == spn
    assert m["ticket"]["enc_part"]["etype"] in ("aes256-cts-hmac-sha1-96 (18)", "rc4-hmac (23)")
    assert isinstance(m["ticket"]["enc_part"]["kvno"], int)
    assert m["authenticator"]["etype"] == _etype_name(tgs["sessionKey"].enctype)
    assert_no_secrets(d, token=blob, extra=(samba_lab.default_password,))


def _etype_name(number: int) -> str:
    from ucgate.protocols.decode import ETYPES

    return f"{ETYPES[number]} ({number})"


# --- Basic, Bearer, header forms ------------------------------------------------------------------


def test_basic_shows_the_user_and_the_password_length_only():
    d = decode_header("Basic " + b64(f"LAB\\alice:{PASSWORD}".encode()))
    assert d["message"] == {"kind": "Basic credentials", "user": "LAB\\alice", "password_length": len(PASSWORD)}
    assert PASSWORD not in to_json(d) + render_text(d) + summary(d)
    # a colon in the password stays in the password (RFC 7617: the user id has none)
    assert decode_header("basic " + b64(b"bob:a:b:c"))["message"]["password_length"] == 5
    with pytest.raises(DecodeError, match="':'"):
        decode_header("Basic " + b64(b"no-colon-here"))


def test_bearer_kind_and_length_only():
    cwt = "cwt=AAEBHAEFAAAAAAAFFQAAAKz" + "A" * 200
    d = decode_header("Bearer " + cwt)
    assert d["message"] == {"kind": "Bearer token: SfB web ticket (cwt)", "length": len(cwt)}
    jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl"
    d = decode_header("Bearer " + jwt)
    assert d["message"]["kind"] == "Bearer token: JWT"
    assert "eyJ" not in to_json(d) + render_text(d)


def test_bare_base64_with_line_breaks_and_header_prefix():
    negotiate, _, _ = ntlm_exchange()
    wrapped = "\n".join(b64(negotiate)[i : i + 20] for i in range(0, len(b64(negotiate)), 20))
    assert decode_header(wrapped)["scheme"] is None
    assert decode_header(wrapped)["message"]["kind"] == "NTLM NEGOTIATE"
    assert decode_header(b"Proxy-Authorization: NTLM " + b64(negotiate).encode())["scheme"] == "NTLM"


def test_hostile_names_are_escaped_and_bounded():
    d = decode_header("Basic " + b64("eve\r\n2025-01-01 forged log line\u202e:x".encode()))
    user = d["message"]["user"]
    assert "\r" not in user and "\n" not in user and "\u202e" not in user
    assert user == "eve\\r\\n2025-01-01 forged log line\\u202e"
    assert "\n" not in summary(d) and "\n" not in to_json(d)
    long = decode_header("Basic " + b64(b"u" * 1000 + b":p"))["message"]["user"]
    assert long.startswith("u" * MAX_TEXT) and long.endswith(f"(+{1000 - MAX_TEXT} characters)")


@pytest.mark.parametrize(
    "value, reason",
    [
        ("", "empty"),
        ("NTLM", "empty"),
        ("NTLM not*base64", "bad-base64"),
        ("Digest username=alice", "unsupported-scheme"),
        ("NTLM " + b64(b"NTLMSSP\x00\x09\x00\x00\x00"), "unexpected-message"),
        ("Negotiate " + b64(b"\x30\x03\x02\x01\x05"), "malformed"),
        ("NTLM " + "A" * (MAX_HEADER_SIZE + 1), "too-large"),
        ("Negotiate " + b64(b"\xa1" * 70000), "too-large"),
    ],
)
def test_refusals(value, reason):
    with pytest.raises(DecodeError) as info:
        decode_header(value)
    assert info.value.reason == reason
    assert "A" * 40 not in str(info.value)  # the input is never quoted back


# --- the command line ---------------------------------------------------------------------------


def test_cli_text_json_and_stdin(capsys, monkeypatch):
    import io

    _, _, authenticate = ntlm_exchange()
    assert main(["decode", "NTLM", b64(authenticate)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("NTLM AUTHENTICATE  (NTLM header,")
    assert "  user: alice\n" in out and "MsvAvTargetName: HTTP/gw1.example.test" in out
    assert b64(authenticate)[:16] not in out

    assert main(["decode", "--json", "Negotiate " + b64(gss_wrap(ap_req()))]) == 0
    decoded = json.loads(capsys.readouterr().out)
    assert decoded["message"]["ticket"]["sname"] == "HTTP/gw.lab.ucgate.test"

    monkeypatch.setattr("sys.stdin", io.StringIO("Basic " + b64(b"carol:hunter2") + "\n"))
    assert main(["decode", "-"]) == 0
    out = capsys.readouterr().out
    assert "user: carol" in out and "hunter2" not in out

    assert main(["decode", "NTLM", "%%%"]) == 1
    assert capsys.readouterr().err == "ucgate decode: bad-base64: the token is not valid base64\n"


# --- fuzzing: only DecodeError, and no blobs in what comes out ------------------------------------

EXAMPLES = int(os.environ.get("UCGATE_FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
_NEG, _CHAL, _AUTH = ntlm_exchange()
SEEDS = [
    _NEG,
    _CHAL,
    _AUTH,
    ap_req(),
    gss_wrap(ap_req()),
    ours.encode_neg_token_init([ours.MS_KRB5_OID, ours.NTLM_OID], gss_wrap(ap_req())),
    ours.encode_neg_token_resp(1, ours.NTLM_OID, _AUTH, b"\x01" * 16),
]


def _decode_or_refuse(token: bytes) -> None:
    try:
        decoded = decode_token(token)
    except DecodeError:
        return
    text = to_json(decoded) + render_text(decoded) + summary(decoded)
    assert "\n" not in to_json(decoded)
    assert "\r" not in text


@FUZZ
@given(st.binary(max_size=2048))
def test_fuzz_random_bytes(data):
    _decode_or_refuse(data)
    _decode_or_refuse(b"NTLMSSP\x00" + data)
    _decode_or_refuse(b"\x60" + data)
    _decode_or_refuse(b"\x6e" + data)


@FUZZ
@given(
    st.sampled_from(SEEDS),
    st.lists(st.tuples(st.integers(0, 4095), st.integers(0, 255)), max_size=8),
    st.integers(0, 4096),
)
def test_fuzz_mutated_real_tokens(seed, flips, cut):
    token = bytearray(seed)
    for pos, value in flips:
        token[pos % len(token)] = value
    _decode_or_refuse(bytes(token[: max(cut, 1)] if cut < len(token) else token))


@FUZZ
@given(st.text(max_size=300))
def test_fuzz_header_text(text):
    for value in (text, "NTLM " + text, "Basic " + text, "Bearer " + text):
        try:
            decoded = decode_header(value)
        except DecodeError:
            continue
        assert "\n" not in summary(decoded)


@FUZZ
@given(st.binary(max_size=64), st.binary(max_size=64), st.text(max_size=40))
def test_fuzz_ntlm_fields_never_leak(lm, nt, user):
    """An AUTHENTICATE with arbitrary response bytes: never shown, whatever they hold."""
    msg = AuthenticateMessage(
        flags=_AUTHENTICATE_FLAGS,
        lm_challenge_response=lm,
        nt_challenge_response=nt,
        user_name=user,
        domain_name="D",
        workstation="W",
    )
    try:
        decoded = decode_token(msg.pack())
    except DecodeError:
        return
    text = to_json(decoded) + render_text(decoded)
    for value in (lm, nt):
        if len(value) >= 8 and len(set(value)) > 2:
            assert value.hex() not in text and b64(value)[:10] not in text


_AUTHENTICATE_FLAGS = struct.unpack("<I", _AUTH[60:64])[0]
