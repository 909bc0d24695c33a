"""SPNEGO token recognition, DER strictness and NTLM through SPNEGO against pyspnego."""

from __future__ import annotations

import pytest
import spnego
from spnego.channel_bindings import GssChannelBindings

from ucgate.protocols.ntlm import NtlmError, nt_hash
from ucgate.protocols.spnego import (
    KRB5_OID,
    MAX_TOKEN_SIZE,
    MS_KRB5_OID,
    NEGOEX_OID,
    NTLM_OID,
    NegState,
    NegTokenInit,
    NegTokenResp,
    RawKerberos,
    RawNtlm,
    SpnegoError,
    SpnegoNtlmAcceptor,
    encode_mech_type_list,
    encode_neg_token_init,
    encode_neg_token_resp,
    parse_negotiate_token,
)

from .test_ntlm import NOW, OTHER_BINDING, TLS_BINDING, make_acceptor


def spnego_reason(data: bytes) -> str:
    with pytest.raises(SpnegoError) as err:
        parse_negotiate_token(data)
    return err.value.reason


def negotiate_client(password="Password", cbt=TLS_BINDING):
    bindings = GssChannelBindings(application_data=cbt) if cbt is not None else None
    return spnego.client(
        "EXAMPLE\\alice",
        password,
        hostname="gw1.example.test",
        service="HTTP",
        protocol="negotiate",
        channel_bindings=bindings,
    )


# --- token recognition ----------------------------------------------------------------------


def test_pyspnego_neg_token_init():
    token = parse_negotiate_token(negotiate_client().step())
    assert isinstance(token, NegTokenInit)
    assert token.mech_types == [NTLM_OID]
    assert token.mech_token.startswith(b"NTLMSSP\x00\x01")
    assert token.raw_mech_types == encode_mech_type_list([NTLM_OID])


def test_windows_style_mech_list_and_mic():
    mechs = [MS_KRB5_OID, KRB5_OID, NEGOEX_OID, NTLM_OID]
    data = encode_neg_token_init(mechs, b"\x60\x01\x00", b"mic!")
    token = parse_negotiate_token(data)
    assert token == NegTokenInit(mechs, b"\x60\x01\x00", b"mic!", encode_mech_type_list(mechs))


def test_neg_token_init2_with_neg_hints():
    # MS-SPNG 2.2.1 NegTokenInit2: [3] negHints SEQUENCE { [0] hintName }, [4] mechListMIC
    mech_list = encode_mech_type_list([NTLM_OID])
    hint = bytes([0xA0, 0x0B, 0x1B, 0x09]) + b"not_defined"[:9]
    hints = bytes([0xA3, len(hint) + 2, 0x30, len(hint)]) + hint
    mic = bytes([0xA4, 0x05, 0x04, 0x03]) + b"abc"
    body = bytes([0xA0, len(mech_list)]) + mech_list + hints + mic
    seq = bytes([0x30, len(body)]) + body
    inner = bytes([0xA0, len(seq)]) + seq
    oid = bytes.fromhex("06062b0601050502")
    data = bytes([0x60, len(oid) + len(inner)]) + oid + inner
    token = parse_negotiate_token(data)
    assert token.mech_types == [NTLM_OID] and token.mech_list_mic == b"abc"


def test_raw_ntlm_and_kerberos():
    assert isinstance(parse_negotiate_token(b"NTLMSSP\x00\x01\x00\x00\x00"), RawNtlm)
    krb_oid = bytes.fromhex("06092a864886f712010202")
    ap_req = b"\x01\x00" + bytes([0x6E, 0x03, 0x30, 0x01, 0x00])
    data = bytes([0x60, len(krb_oid) + len(ap_req)]) + krb_oid + ap_req
    token = parse_negotiate_token(data)
    assert token == RawKerberos(data, KRB5_OID)
    ms_oid = bytes.fromhex("06092a864882f712010202")
    data = bytes([0x60, len(ms_oid) + len(ap_req)]) + ms_oid + ap_req
    assert parse_negotiate_token(data).mech == MS_KRB5_OID


def test_neg_token_resp_roundtrip():
    for args in [
        (NegState.ACCEPT_INCOMPLETE, NTLM_OID, b"NTLMSSP\x00\x02", None),
        (NegState.ACCEPT_COMPLETED, None, None, b"\x01" + b"\x00" * 15),
        (NegState.REQUEST_MIC, NTLM_OID, None, None),
        (None, None, b"x" * 300, None),  # long-form length
    ]:
        token = parse_negotiate_token(encode_neg_token_resp(*args))
        assert token == NegTokenResp(*args)


def test_encoding_matches_pyspnego():
    from spnego._spnego import NegTokenResp as TheirResp
    from spnego._spnego import unpack_token

    ours = encode_neg_token_resp(NegState.ACCEPT_INCOMPLETE, NTLM_OID, b"abc", b"mic")
    theirs = unpack_token(ours)
    assert isinstance(theirs, TheirResp)
    assert theirs.supported_mech == NTLM_OID and theirs.response_token == b"abc"
    assert theirs.mech_list_mic == b"mic"


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "malformed"),
        (b"\xa1", "malformed"),
        (b"\xa1\x80\x30\x00\x00\x00", "malformed"),  # indefinite length
        (b"\xa1\x81\x02\x30\x00", "malformed"),  # non-minimal length
        (b"\xa1\x82\x00\x02\x30\x00", "malformed"),  # non-minimal, leading zero
        (b"\xa1\x85\x00\x00\x00\x00\x02\x30\x00", "malformed"),  # too many length octets
        (b"\xa1\x02\x30\x00\x00", "malformed"),  # trailing bytes
        (b"\xa1\x04\x30\x05\x00\x00", "malformed"),  # inner runs past outer
        (b"\xa1\x02\x31\x00", "malformed"),  # not a SEQUENCE
        (b"\xbf\x1f\x00", "malformed"),  # multi-byte tag
        (b"\x30\x00", "malformed"),  # not a GSS/SPNEGO token
        (b"\xa0\x02\x30\x00", "malformed"),  # bare NegTokenInit is not allowed
        (b"\xa1\x0a\x30\x08\xa2\x02\x04\x00\xa0\x02\x0a\x00", "malformed"),  # fields out of order
        (b"\xa1\x0a\x30\x08\xa2\x02\x04\x00\xa2\x02\x04\x00", "malformed"),  # repeated field
        (b"\xa1\x06\x30\x04\xa5\x02\x04\x00", "malformed"),  # unknown field
        (b"\xa1\x07\x30\x05\xa0\x03\x0a\x01\x07", "malformed"),  # negState out of range
        (b"\xa1\x08\x30\x06\xa1\x04\x06\x02\x2b\x80", "malformed"),  # unterminated OID
        (b"\xa1\x08\x30\x06\xa1\x04\x06\x02\x80\x01", "malformed"),  # non-minimal OID arc
        (b"\xa1\x06\x30\x04\xa1\x02\x06\x00", "malformed"),  # empty OID
        (bytes.fromhex("600806062a0304050607"), "unsupported-mech"),  # GSS of another mech
        (bytes.fromhex("600a06062b0601050502a100"), "malformed"),  # SPNEGO holding a resp
    ],
)
def test_malformed_tokens(data, reason):
    assert spnego_reason(data) == reason


def test_mech_types_errors():
    assert spnego_reason(encode_neg_token_init([])) == "malformed"
    assert spnego_reason(encode_neg_token_init([NTLM_OID] * 17)) == "malformed"
    truncated = encode_neg_token_init([NTLM_OID], b"tok")[:-1]
    assert spnego_reason(truncated) == "malformed"


def test_oversize_token():
    assert spnego_reason(b"\xa1" + b"\x00" * MAX_TOKEN_SIZE) == "too-large"


# --- NTLM through SPNEGO --------------------------------------------------------------------


def run_negotiate(acceptor, client):
    spnego_acc = SpnegoNtlmAcceptor(acceptor)
    out = spnego_acc.step(client.step())
    auth = client.step(out)
    return spnego_acc, auth


def test_pyspnego_negotiate_full_exchange_with_mech_list_mic():
    client = negotiate_client()
    acc, auth = run_negotiate(make_acceptor(), client)
    assert isinstance(parse_negotiate_token(auth), NegTokenResp)
    assert parse_negotiate_token(auth).mech_list_mic is not None
    assert acc.identify(auth).user == "alice"
    result = acc.verify([nt_hash("Password")], NOW)
    assert result.channel_binding == "verified"
    final = acc.final_token()
    assert final == acc.final_token()  # idempotent
    resp = parse_negotiate_token(final)
    assert resp.neg_state == NegState.ACCEPT_COMPLETED and resp.mech_list_mic
    assert client.step(final) is None and client.complete  # pyspnego verified our mechListMIC
    # sequence numbers and RC4 state line up for application messages afterwards
    session = acc.ntlm.session
    session.verify_mic(b"app 1", client.sign(b"app 1"))
    client.verify(b"app 2", session.sign(b"app 2"))
    session.verify_mic(b"app 3", client.sign(b"app 3"))


def test_pyspnego_negotiate_wrong_password_and_cbt():
    acc, auth = run_negotiate(make_acceptor(), negotiate_client(password="bad"))
    acc.identify(auth)
    with pytest.raises(NtlmError, match="wrong-password"):
        acc.verify([nt_hash("Password")], NOW)
    acc, auth = run_negotiate(make_acceptor(), negotiate_client(cbt=OTHER_BINDING))
    acc.identify(auth)
    with pytest.raises(NtlmError, match="channel-binding-mismatch"):
        acc.verify([nt_hash("Password")], NOW)
    acc, auth = run_negotiate(make_acceptor(), negotiate_client(cbt=None))
    acc.identify(auth)
    with pytest.raises(NtlmError, match="channel-binding-missing"):
        acc.verify([nt_hash("Password")], NOW)
    acc, auth = run_negotiate(make_acceptor(mode="allow"), negotiate_client(cbt=None))
    acc.identify(auth)
    assert acc.verify([nt_hash("Password")], NOW).channel_binding == "absent"


def _replace_mic(token: bytes, mic: bytes | None) -> bytes:
    resp = parse_negotiate_token(token)
    return encode_neg_token_resp(resp.neg_state, resp.supported_mech, resp.response_token, mic)


def test_bad_and_missing_mech_list_mic():
    acc, auth = run_negotiate(make_acceptor(), negotiate_client())
    mic = bytearray(parse_negotiate_token(auth).mech_list_mic)
    mic[5] ^= 1
    acc.identify(_replace_mic(auth, bytes(mic)))
    with pytest.raises(SpnegoError) as err:
        acc.verify([nt_hash("Password")], NOW)
    assert err.value.reason == "bad-mic"
    with pytest.raises(SpnegoError, match="unexpected-message"):
        acc.final_token()

    acc, auth = run_negotiate(make_acceptor(), negotiate_client())
    acc.identify(_replace_mic(auth, None))
    with pytest.raises(SpnegoError) as err:
        acc.verify([nt_hash("Password")], NOW)
    assert err.value.reason == "mic-missing"


def test_ntlm_not_preferred_requests_mic():
    """Windows lists Kerberos first; we answer request-mic + NTLM, then run NTLM (RFC 4178 §5)."""
    ntlm_client = spnego.client(
        "EXAMPLE\\alice",
        "Password",
        hostname="gw1.example.test",
        service="HTTP",
        protocol="ntlm",
        channel_bindings=GssChannelBindings(application_data=TLS_BINDING),
    )
    mechs = [MS_KRB5_OID, KRB5_OID, NTLM_OID]
    acc = SpnegoNtlmAcceptor(make_acceptor())
    first = parse_negotiate_token(acc.step(encode_neg_token_init(mechs, b"\x60\x00")))
    assert first == NegTokenResp(NegState.REQUEST_MIC, NTLM_OID, None, None)
    second = parse_negotiate_token(acc.step(encode_neg_token_resp(None, None, ntlm_client.step())))
    assert second.neg_state == NegState.ACCEPT_INCOMPLETE and second.response_token
    auth = ntlm_client.step(second.response_token)
    mech_list = encode_mech_type_list(mechs)
    client_mic = ntlm_client.sign(mech_list)
    ntlm_client._reset_ntlm_crypto_state()
    acc.identify(encode_neg_token_resp(None, None, auth, client_mic))
    acc.verify([nt_hash("Password")], NOW)
    final = parse_negotiate_token(acc.final_token())
    ntlm_client.verify(mech_list, final.mech_list_mic)


def test_raw_ntlm_under_negotiate():
    client = spnego.client(
        "EXAMPLE\\alice",
        "Password",
        hostname="gw1.example.test",
        service="HTTP",
        protocol="ntlm",
        channel_bindings=GssChannelBindings(application_data=TLS_BINDING),
    )
    acc = SpnegoNtlmAcceptor(make_acceptor())
    challenge = acc.step(client.step())
    assert challenge.startswith(b"NTLMSSP\x00\x02") and acc.raw_ntlm
    acc.identify(client.step(challenge))
    assert acc.verify([nt_hash("Password")], NOW).channel_binding == "verified"
    assert acc.final_token() is None


def test_spnego_acceptor_refusals():
    acc = SpnegoNtlmAcceptor(make_acceptor())
    with pytest.raises(SpnegoError, match="unexpected-message"):
        acc.identify(b"NTLMSSP\x00\x03")
    krb = bytes.fromhex("600f06092a864886f71201020201006e00")
    with pytest.raises(SpnegoError, match="unsupported-mech"):
        SpnegoNtlmAcceptor(make_acceptor()).step(krb)
    with pytest.raises(SpnegoError, match="unsupported-mech"):
        SpnegoNtlmAcceptor(make_acceptor()).step(encode_neg_token_init([KRB5_OID], b"x"))
    with pytest.raises(SpnegoError, match="unexpected-message"):
        SpnegoNtlmAcceptor(make_acceptor()).step(encode_neg_token_resp(1, None, b"x"))
    acc = SpnegoNtlmAcceptor(make_acceptor())
    with pytest.raises(NtlmError, match="malformed"):
        acc.step(encode_neg_token_init([NTLM_OID], b"NTLMSSP\x00\x01\x00\x00\x00"))
    with pytest.raises(SpnegoError, match="unexpected-message"):
        acc.step(encode_neg_token_init([NTLM_OID], b"x"))  # failed is terminal


def test_neg_token_init_without_mech_token():
    client = negotiate_client()
    init = parse_negotiate_token(client.step())
    acc = SpnegoNtlmAcceptor(make_acceptor())
    first = parse_negotiate_token(acc.step(encode_neg_token_init(init.mech_types)))
    assert first == NegTokenResp(NegState.ACCEPT_INCOMPLETE, NTLM_OID, None, None)
    second = acc.step(encode_neg_token_resp(None, None, init.mech_token))
    assert parse_negotiate_token(second).response_token.startswith(b"NTLMSSP\x00\x02")
