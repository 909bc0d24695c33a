"""SPNEGO, rule by rule: DER boundaries (lengths, OIDs, tags), the encoder byte for byte against
pyspnego's, and every leg and refusal of SpnegoNtlmAcceptor with its exact reason, including the
mechListMIC rules and adopt() of a result verified elsewhere."""

from __future__ import annotations

import pytest
import spnego
import spnego._spnego as theirs
from impacket import ntlm as impacket_ntlm
from spnego._ntlm_raw import crypto as their_crypto
from spnego._ntlm_raw import security as their_security
from spnego.channel_bindings import GssChannelBindings

from ucgate.protocols.ntlm import NtlmAcceptor, NtlmError, VerifyResult, channel_bindings_hash, nt_hash
from ucgate.protocols.spnego import (
    KRB5_OID,
    MAX_MECH_TYPES,
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

from .test_ntlm import NOW, TLS_BINDING, make_acceptor

SPNEGO_OID_DER = bytes.fromhex("06062b0601050502")


def reason(fn, *args, exc=SpnegoError) -> str:
    with pytest.raises(exc) as err:
        fn(*args)
    assert err.value.message and str(err.value) == f"{err.value.reason}: {err.value.message}"
    return err.value.reason


def parse_reason(data: bytes) -> str:
    return reason(parse_negotiate_token, data)


def tlv(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        return bytes([tag, n]) + content
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(raw)]) + raw + content


def resp_with(*fields: bytes) -> bytes:
    return tlv(0xA1, tlv(0x30, b"".join(fields)))


def init_with(*fields: bytes, oid: bytes = SPNEGO_OID_DER) -> bytes:
    return tlv(0x60, oid + tlv(0xA0, tlv(0x30, b"".join(fields))))


MECHS = tlv(0xA0, encode_mech_type_list([NTLM_OID]))


# --- encoder == pyspnego's encoder --------------------------------------------------------------


@pytest.mark.parametrize(
    "mechs, token, mic",
    [
        ([NTLM_OID], None, None),
        ([KRB5_OID, NTLM_OID], b"tok", b"mic"),
        ([MS_KRB5_OID, KRB5_OID, NEGOEX_OID, NTLM_OID], b"t" * 300, None),
        ([NTLM_OID], None, b"m" * 200),
    ],
)
def test_encode_neg_token_init_matches_pyspnego(mechs, token, mic):
    ours = encode_neg_token_init(mechs, token, mic)
    assert ours == theirs.NegTokenInit(mechs, None, token, None, None, mic).pack()
    assert parse_negotiate_token(ours) == NegTokenInit(mechs, token, mic, encode_mech_type_list(mechs))


@pytest.mark.parametrize(
    "args",
    [
        (NegState.ACCEPT_COMPLETED, None, None, None),
        (NegState.ACCEPT_INCOMPLETE, NTLM_OID, b"x" * 130, None),
        (NegState.REJECT, None, None, None),
        (NegState.REQUEST_MIC, NTLM_OID, None, b"m" * 16),
        (None, None, b"tok", b"mic"),
        (None, KRB5_OID, None, None),
        (None, None, None, None),
    ],
)
def test_encode_neg_token_resp_matches_pyspnego(args):
    ours = encode_neg_token_resp(*args)
    state = theirs.NegState(args[0]) if args[0] is not None else None
    assert ours == theirs.NegTokenResp(state, *args[1:]).pack()
    assert parse_negotiate_token(ours) == NegTokenResp(*args)


def test_mech_type_list_and_oids():
    assert encode_mech_type_list([MS_KRB5_OID]) == theirs.pack_mech_type_list([MS_KRB5_OID])
    assert encode_mech_type_list([KRB5_OID]) == bytes.fromhex("300b06092a864886f712010202")
    for oid in (
        "0.0",
        "0.39",
        "1.0",
        "1.39",
        "2.0",
        "2.47",
        "2.999.3",
        "1.2.840.113554.1.2.2",
        "1.3.6.1.4.1.311.2.2.10",
        "2.25.340282366920938463463374607431768211455",
    ):
        der = encode_mech_type_list([oid])
        if not oid.startswith("2.999"):  # pyspnego cannot write a first arc over 255
            assert der == theirs.pack_mech_type_list([oid]), oid
        assert parse_negotiate_token(encode_neg_token_init([oid])).mech_types == [oid]
    assert encode_mech_type_list(["2.999.3"]) == bytes.fromhex("3005060388 3703".replace(" ", ""))
    assert encode_mech_type_list(["1.2.840.113554"]) == bytes.fromhex("300806062a864886f712")
    for bad in ("", "1", "3.1", "1.-2", "1.x", "a.b", "1..2"):
        with pytest.raises(SpnegoError) as err:
            encode_mech_type_list([bad])
        assert err.value.reason == "bad-argument", bad


# --- DER reader boundaries ------------------------------------------------------------------------


def test_length_forms():
    for size in (0, 1, 0x7F, 0x80, 0xFF, 0x100, 0x1234):
        token = encode_neg_token_resp(None, None, b"\x07" * size)
        assert parse_negotiate_token(token).response_token == b"\x07" * size, size
    # 0x81 0x7f is a non-minimal long form; 0x82 0x00 0xff too; 0x81 0x80 is minimal
    content = tlv(0x30, tlv(0xA2, tlv(0x04, b"a" * 0x7A)))
    assert len(content) == 0x80
    assert isinstance(parse_negotiate_token(b"\xa1\x81\x80" + content), NegTokenResp)
    small = tlv(0x30, b"")
    assert parse_reason(b"\xa1\x81\x02" + small) == "malformed"
    assert parse_reason(b"\xa1\x82\x00\x80" + content) == "malformed"
    assert parse_reason(b"\xa1\x80" + small + b"\x00\x00") == "malformed"
    assert parse_reason(b"\xa1\x85\x01\x00\x00\x00\x00" + small) == "malformed"
    assert parse_reason(b"\xa1\x84\x01\x00\x00\x00" + small) == "malformed"  # runs past the end
    assert parse_reason(b"\xa1\x82\x01") == "malformed"  # truncated length octets
    assert parse_reason(b"\xa1") == "malformed"
    assert parse_reason(b"\xa1\x03" + small) == "malformed"  # one byte short
    assert parse_reason(b"\xa1\x01" + small) == "malformed"  # inner runs past its container


def test_tags():
    assert parse_reason(b"\x1f\x00") == "malformed"  # multi-byte tag form
    assert parse_reason(resp_with(b"\xbf\x00")) == "malformed"
    assert parse_reason(b"\x61\x02\x30\x00") == "malformed"  # neither [APPLICATION 0] nor [1]
    assert parse_reason(b"\xa2\x02\x30\x00") == "malformed"
    assert parse_reason(tlv(0xA1, tlv(0x31, b""))) == "malformed"  # SET, not SEQUENCE
    assert parse_reason(tlv(0xA1, tlv(0x30, b"") + b"\x00")) == "malformed"  # trailing in [1]
    assert parse_reason(resp_with(tlv(0xA0, tlv(0x0A, b"\x00")) + b"\x30")) == "malformed"
    assert parse_reason(resp_with(tlv(0x80, b""))) == "malformed"  # primitive context tag
    assert parse_reason(resp_with(tlv(0xBF - 0x1F + 0x1E, b""))) == "malformed"  # [30] not allowed


def test_oid_rules():
    def with_oid(content: bytes) -> bytes:
        return resp_with(tlv(0xA1, tlv(0x06, content)))

    assert parse_negotiate_token(with_oid(b"\x2b" * 32)).supported_mech.startswith("1.3.43")
    assert parse_reason(with_oid(b"\x2b" * 33)) == "malformed"  # over MAX_OID_BYTES
    assert parse_reason(with_oid(b"")) == "malformed"
    assert parse_reason(with_oid(b"\x2b\x86")) == "malformed"  # unterminated last arc
    assert parse_reason(with_oid(b"\x80\x01")) == "malformed"  # non-minimal first arc
    assert parse_reason(with_oid(b"\x2b\x80\x01")) == "malformed"  # non-minimal later arc
    assert parse_negotiate_token(with_oid(b"\x2b\x81\x00")).supported_mech == "1.3.128"
    assert parse_negotiate_token(with_oid(b"\x27")).supported_mech == "0.39"
    assert parse_negotiate_token(with_oid(b"\x28")).supported_mech == "1.0"
    assert parse_negotiate_token(with_oid(b"\x4f")).supported_mech == "1.39"
    assert parse_negotiate_token(with_oid(b"\x50")).supported_mech == "2.0"
    assert parse_negotiate_token(with_oid(b"\x88\x37")).supported_mech == "2.999"
    assert parse_reason(resp_with(tlv(0xA1, tlv(0x04, b"\x2b")))) == "malformed"  # not an OID


# --- NegTokenResp ------------------------------------------------------------------------------------


@pytest.mark.parametrize("state", [0, 1, 2, 3])
def test_neg_state_values(state):
    assert parse_negotiate_token(resp_with(tlv(0xA0, tlv(0x0A, bytes([state]))))).neg_state == state


@pytest.mark.parametrize(
    "fields",
    [
        tlv(0xA0, tlv(0x0A, b"\x04")),
        tlv(0xA0, tlv(0x0A, b"\xff")),
        tlv(0xA0, tlv(0x0A, b"")),
        tlv(0xA0, tlv(0x0A, b"\x00\x00")),
        tlv(0xA0, tlv(0x02, b"\x00")),  # INTEGER, not ENUMERATED
        tlv(0xA0, tlv(0x0A, b"\x00") + b"\x00"),  # trailing inside [0]
        tlv(0xA2, tlv(0x03, b"ab")),  # responseToken not an OCTET STRING
        tlv(0xA3, tlv(0x30, b"")),  # mechListMIC not an OCTET STRING
        tlv(0xA4, tlv(0x04, b"")),  # no [4] in a NegTokenResp
        tlv(0xA2, tlv(0x04, b"")) + tlv(0xA1, tlv(0x06, b"\x2b")),  # out of order
        tlv(0xA3, tlv(0x04, b"")) + tlv(0xA3, tlv(0x04, b"")),  # repeated
    ],
)
def test_neg_token_resp_refusals(fields):
    assert parse_reason(resp_with(fields)) == "malformed"


def test_neg_token_resp_empty_and_partial():
    assert parse_negotiate_token(resp_with()) == NegTokenResp()
    assert parse_negotiate_token(resp_with(tlv(0xA3, tlv(0x04, b"mic")))) == NegTokenResp(None, None, None, b"mic")
    assert parse_negotiate_token(resp_with(tlv(0xA2, tlv(0x04, b"")))).response_token == b""


# --- InitialContextToken / NegTokenInit --------------------------------------------------------------


def test_initial_context_token_rules():
    assert parse_negotiate_token(init_with(MECHS)) == NegTokenInit(
        [NTLM_OID], None, None, encode_mech_type_list([NTLM_OID])
    )
    assert parse_reason(init_with(MECHS) + b"\x00") == "malformed"  # trailing after the token
    inner = tlv(0xA0, tlv(0x30, MECHS))
    assert parse_reason(tlv(0x60, SPNEGO_OID_DER + inner + b"\x00")) == "malformed"  # trailing inside
    assert parse_reason(tlv(0x60, SPNEGO_OID_DER + tlv(0xA1, tlv(0x30, b"")))) == "malformed"
    assert parse_reason(tlv(0x60, SPNEGO_OID_DER)) == "malformed"  # no inner token
    assert parse_reason(tlv(0x60, tlv(0x04, b"\x2b") + inner)) == "malformed"  # thisMech not an OID
    assert parse_reason(tlv(0x60, tlv(0x06, b"\x2a\x03") + inner)) == "unsupported-mech"
    assert (
        parse_reason(tlv(0x60, tlv(0x06, bytes.fromhex("2b0601040182370202 0a".replace(" ", ""))) + inner))
        == "unsupported-mech"
    )
    assert parse_reason(tlv(0x60, SPNEGO_OID_DER + tlv(0xA0, tlv(0x30, MECHS) + b"\x00"))) == "malformed"
    assert parse_reason(tlv(0x60, SPNEGO_OID_DER + tlv(0xA0, tlv(0x31, MECHS)))) == "malformed"


def test_kerberos_tokens_are_recognised_not_decoded():
    for oid, der in ((KRB5_OID, "06092a864886f712010202"), (MS_KRB5_OID, "06092a864882f712010202")):
        data = tlv(0x60, bytes.fromhex(der) + b"\x01\x00garbage")
        assert parse_negotiate_token(data) == RawKerberos(data, oid)


def test_raw_ntlm_and_argument_checks():
    assert parse_negotiate_token(b"NTLMSSP\x00") == RawNtlm(b"NTLMSSP\x00")
    assert parse_negotiate_token(bytearray(b"NTLMSSP\x00\x01")) == RawNtlm(b"NTLMSSP\x00\x01")
    assert type(parse_negotiate_token(memoryview(b"NTLMSSP\x00\x01")).token) is bytes
    assert parse_reason(b"NTLMSSP\x01") == "malformed"
    assert parse_reason(b"") == "malformed"
    for bad in ("NTLMSSP\x00", None, 0x60):
        assert parse_reason(bad) == "bad-argument"
    at_limit = b"NTLMSSP\x00" + bytes(MAX_TOKEN_SIZE - 8)
    assert isinstance(parse_negotiate_token(at_limit), RawNtlm)
    assert parse_reason(at_limit + b"\x00") == "too-large"


@pytest.mark.parametrize(
    "fields, expected",
    [
        ((), "malformed"),  # no mechTypes
        ((tlv(0xA0, tlv(0x30, b"")),), "malformed"),  # empty mechTypes
        ((tlv(0xA0, tlv(0x31, b"")),), "malformed"),
        ((tlv(0xA0, tlv(0x30, tlv(0x04, b"\x2b"))),), "malformed"),  # mechType not an OID
        ((tlv(0xA0, encode_mech_type_list([NTLM_OID]) + b"\x00"),), "malformed"),  # trailing in [0]
        ((MECHS, tlv(0xA1, tlv(0x04, b"\x00"))), "malformed"),  # reqFlags not a BIT STRING
        ((MECHS, tlv(0xA2, tlv(0x03, b"\x00"))), "malformed"),  # mechToken not an OCTET STRING
        ((MECHS, tlv(0xA3, tlv(0x04, b"m")), tlv(0xA4, tlv(0x04, b"m"))), "malformed"),
        ((MECHS, tlv(0xA3, b"")), "malformed"),  # [3] neither mechListMIC nor negHints
        ((MECHS, tlv(0xA3, tlv(0x02, b"\x00"))), "malformed"),
        ((MECHS, tlv(0xA4, tlv(0x30, b""))), "malformed"),  # [4] mechListMIC not an OCTET STRING
        ((MECHS, tlv(0xA5, tlv(0x04, b""))), "malformed"),
        ((tlv(0xA2, tlv(0x04, b"t")), MECHS), "malformed"),  # out of order
    ],
)
def test_neg_token_init_refusals(fields, expected):
    assert parse_reason(init_with(*fields)) == expected


def test_neg_token_init_optional_fields():
    req_flags = tlv(0xA1, tlv(0x03, b"\x01\x00"))
    token = parse_negotiate_token(init_with(MECHS, req_flags, tlv(0xA2, tlv(0x04, b"tok"))))
    assert token.mech_token == b"tok" and token.mech_list_mic is None
    assert token.raw_mech_types == encode_mech_type_list([NTLM_OID])
    hinted = theirs.NegTokenInit([NTLM_OID], None, b"tok", b"not_defined_in_RFC4178@please_ignore", None, b"mic")
    token = parse_negotiate_token(hinted.pack())
    assert (token.mech_token, token.mech_list_mic) == (b"tok", b"mic")
    only_hints = parse_negotiate_token(init_with(MECHS, tlv(0xA3, tlv(0x30, b""))))
    assert only_hints.mech_list_mic is None
    assert parse_negotiate_token(init_with(MECHS, tlv(0xA3, tlv(0x04, b"m")))).mech_list_mic == b"m"


def test_mech_type_count_boundary():
    assert len(parse_negotiate_token(encode_neg_token_init([NTLM_OID] * MAX_MECH_TYPES)).mech_types) == 16
    assert parse_reason(encode_neg_token_init([NTLM_OID] * (MAX_MECH_TYPES + 1))) == "malformed"


# --- the acceptor ------------------------------------------------------------------------------------


def negotiate_client(cbt=TLS_BINDING, password="Password"):
    return spnego.client(
        "EXAMPLE\\alice",
        password,
        hostname="gw1.example.test",
        service="HTTP",
        protocol="negotiate",
        channel_bindings=GssChannelBindings(application_data=cbt) if cbt is not None else None,
    )


def ntlm_client(cbt=TLS_BINDING):
    return spnego.client(
        "EXAMPLE\\alice",
        "Password",
        hostname="gw1.example.test",
        service="HTTP",
        protocol="ntlm",
        channel_bindings=GssChannelBindings(application_data=cbt) if cbt is not None else None,
    )


def test_acceptor_states_and_properties():
    ntlm = make_acceptor()
    acc = SpnegoNtlmAcceptor(ntlm)
    assert acc.ntlm is ntlm and acc.raw_ntlm is False
    assert repr(acc) == "SpnegoNtlmAcceptor(state='initial', raw=False)"
    for call, args in ((acc.identify, (b"x",)), (acc.verify, ([], NOW)), (acc.final_token, ())):
        assert reason(call, *args) == "unexpected-message"
    assert reason(acc.adopt, VerifyResult(0, bytes(16), bytes(16), "absent")) == "unexpected-message"
    client = negotiate_client()
    acc.step(client.step())
    assert reason(acc.step, b"\xa1\x02\x30\x00") == "unexpected-message"  # challenged already
    assert reason(acc.final_token) == "unexpected-message"


@pytest.mark.parametrize(
    "token, expected",
    [
        (tlv(0x60, bytes.fromhex("06092a864886f712010202") + b"\x01\x00"), "unsupported-mech"),
        (encode_neg_token_init([KRB5_OID, NEGOEX_OID]), "unsupported-mech"),
        (encode_neg_token_resp(NegState.ACCEPT_INCOMPLETE, None, b"NTLMSSP\x00"), "unexpected-message"),
        (b"\x30\x00", "malformed"),
    ],
)
def test_first_leg_refusals(token, expected):
    acc = SpnegoNtlmAcceptor(make_acceptor())
    assert reason(acc.step, token) == expected
    assert reason(acc.step, encode_neg_token_init([NTLM_OID])) == "unexpected-message"  # failed


def test_first_leg_ntlm_errors_fail_the_exchange():
    acc = SpnegoNtlmAcceptor(make_acceptor())
    assert (
        reason(acc.step, encode_neg_token_init([NTLM_OID], b"NTLMSSP\x00\x02\x00\x00\x00"), exc=NtlmError)
        == "unexpected-message"
    )
    assert reason(acc.step, encode_neg_token_init([NTLM_OID], b"x")) == "unexpected-message"
    raw = SpnegoNtlmAcceptor(make_acceptor())
    assert reason(raw.step, b"NTLMSSP\x00\x01\x00\x00\x00", exc=NtlmError) == "malformed"
    assert reason(raw.step, b"NTLMSSP\x00") == "unexpected-message"


def test_second_leg_refusals():
    for token, expected in [
        (encode_neg_token_resp(None, None, None), "unexpected-message"),
        (encode_neg_token_resp(None, None, b""), "unexpected-message"),
        (encode_neg_token_init([NTLM_OID], b"NTLMSSP\x00"), "unexpected-message"),
        (b"NTLMSSP\x00\x01\x00\x00\x00" + bytes(8), "unexpected-message"),
        (b"\xa1\x00", "malformed"),
    ]:
        acc = SpnegoNtlmAcceptor(make_acceptor())
        acc.step(encode_neg_token_init([NTLM_OID]))
        assert reason(acc.step, token) == expected
        assert reason(acc.step, encode_neg_token_resp(None, None, b"NTLMSSP")) == "unexpected-message"


def test_identify_refusals():
    client = negotiate_client()
    acc = SpnegoNtlmAcceptor(make_acceptor())
    acc.step(client.step())
    assert reason(acc.identify, b"NTLMSSP\x00\x03\x00\x00\x00") == "unexpected-message"  # raw in SPNEGO
    for token in (
        encode_neg_token_resp(None, None, None, b"mic"),
        encode_neg_token_resp(None, None, b""),
        encode_neg_token_init([NTLM_OID], b"tok"),
    ):
        acc = SpnegoNtlmAcceptor(make_acceptor())
        acc.step(negotiate_client().step())
        assert reason(acc.identify, token) == "unexpected-message"
        assert reason(acc.identify, token) == "unexpected-message"
    raw = SpnegoNtlmAcceptor(make_acceptor())
    raw.step(ntlm_client().step())
    assert raw.raw_ntlm and "raw=True" in repr(raw)
    assert reason(raw.identify, encode_neg_token_resp(None, None, b"NTLMSSP\x00\x03")) == "unexpected-message"
    raw = SpnegoNtlmAcceptor(make_acceptor())
    raw.step(ntlm_client().step())
    assert reason(raw.identify, b"NTLMSSP\x00\x03\x00\x00\x00", exc=NtlmError) == "malformed"
    assert reason(raw.verify, [], NOW) == "unexpected-message"


def run_negotiate(acceptor=None, client=None):
    client = client or negotiate_client()
    acc = SpnegoNtlmAcceptor(acceptor or make_acceptor())
    auth = client.step(acc.step(client.step()))
    return acc, client, auth


def test_verify_failures_end_the_exchange_except_wrong_password():
    acc, client, auth = run_negotiate()
    acc.identify(auth)
    assert reason(acc.verify, [nt_hash("nope")], NOW, exc=NtlmError) == "wrong-password"
    result = acc.verify([nt_hash("Password")], NOW)
    assert result.candidate_index == 0
    acc, client, auth = run_negotiate()
    acc.identify(auth)
    assert reason(acc.verify, [nt_hash("Password")], NOW + 3600 * 10_000_000, exc=NtlmError) == "stale-timestamp"
    assert reason(acc.verify, [nt_hash("Password")], NOW) == "unexpected-message"
    assert reason(acc.final_token) == "unexpected-message"


def test_final_token_with_and_without_mech_list_mic():
    acc, client, auth = run_negotiate()
    acc.identify(auth)
    acc.verify([nt_hash("Password")], NOW)
    final = acc.final_token()
    assert parse_negotiate_token(final).neg_state == NegState.ACCEPT_COMPLETED
    assert client.step(final) is None and client.complete
    assert acc.final_token() is final


def _impacket_spnego(mech_list_mic: bool):
    """impacket's NTLM (no MIC in its AV pairs) wrapped in SPNEGO, with or without a
    mechListMIC the client computes with its own keys (pyspnego's functions as the oracle)."""
    ntlm = make_acceptor()
    acc = SpnegoNtlmAcceptor(ntlm)
    type1 = impacket_ntlm.getNTLMSSPType1("WS01", "", signingRequired=True)
    out = parse_negotiate_token(acc.step(encode_neg_token_init([NTLM_OID], type1.getData())))
    type3, key = impacket_ntlm.getNTLMSSPType3(
        type1,
        out.response_token,
        "bob",
        "Password",
        "EXAMPLE",
        channel_binding_value=channel_bindings_hash(TLS_BINDING),
    )
    flags = type3["flags"]
    mic = None
    if mech_list_mic:
        handle = their_crypto.rc4init(their_crypto.sealkey(flags, key, "initiate"))
        mic = their_security.sign(
            flags, handle, their_crypto.signkey(flags, key, "initiate"), 0, encode_mech_type_list([NTLM_OID])
        )
    acc.identify(encode_neg_token_resp(None, None, type3.getData(), mic))
    return acc, key, flags


def test_no_mech_list_mic_when_neither_side_needs_one():
    acc, _, _ = _impacket_spnego(False)
    assert acc.verify([nt_hash("Password")], NOW).mic_present is False
    assert parse_negotiate_token(acc.final_token()) == NegTokenResp(NegState.ACCEPT_COMPLETED)


def test_a_client_mech_list_mic_is_verified_and_answered():
    acc, key, flags = _impacket_spnego(True)
    acc.verify([nt_hash("Password")], NOW)
    final = parse_negotiate_token(acc.final_token())
    handle = their_crypto.rc4init(their_crypto.sealkey(flags, key, "accept"))
    expected = their_security.sign(
        flags, handle, their_crypto.signkey(flags, key, "accept"), 0, encode_mech_type_list([NTLM_OID])
    )
    assert final.mech_list_mic == expected
    # the incoming RC4 stream was reset after the client's mechListMIC: its first message verifies
    handle = their_crypto.rc4init(their_crypto.sealkey(flags, key, "initiate"))
    message = their_security.sign(flags, handle, their_crypto.signkey(flags, key, "initiate"), 1, b"app")
    acc.ntlm.session.verify_mic(b"app", message)
    # and the outgoing one after ours
    handle = their_crypto.rc4init(their_crypto.sealkey(flags, key, "accept"))
    assert acc.ntlm.session.sign(b"srv") == their_security.sign(
        flags, handle, their_crypto.signkey(flags, key, "accept"), 1, b"srv"
    )


def test_bad_client_mech_list_mic():
    acc, key, flags = _impacket_spnego(False)
    acc._client_mic = bytes(16)
    assert reason(acc.verify, [nt_hash("Password")], NOW) == "bad-mic"
    assert reason(acc.final_token) == "unexpected-message"


def test_ntlm_not_first_requires_the_mech_list_mic():
    client = ntlm_client()
    mechs = [MS_KRB5_OID, NTLM_OID]
    acc = SpnegoNtlmAcceptor(make_acceptor())
    first = acc.step(encode_neg_token_init(mechs, b"optimistic kerberos token"))
    assert parse_negotiate_token(first) == NegTokenResp(NegState.REQUEST_MIC, NTLM_OID)
    second = parse_negotiate_token(acc.step(encode_neg_token_resp(None, None, client.step())))
    assert (second.neg_state, second.supported_mech) == (NegState.ACCEPT_INCOMPLETE, None)
    auth = client.step(second.response_token)
    acc.identify(encode_neg_token_resp(None, None, auth))  # no mechListMIC
    assert reason(acc.verify, [nt_hash("Password")], NOW) == "mic-missing"


def test_neg_token_init_without_a_token_then_negotiate():
    client = ntlm_client()
    acc = SpnegoNtlmAcceptor(make_acceptor())
    first = parse_negotiate_token(acc.step(encode_neg_token_init([NTLM_OID], b"")))
    assert first == NegTokenResp(NegState.ACCEPT_INCOMPLETE, NTLM_OID)
    second = parse_negotiate_token(acc.step(encode_neg_token_resp(None, None, client.step())))
    auth = client.step(second.response_token)
    acc.identify(encode_neg_token_resp(None, None, auth))
    # pyspnego's NTLM announces a MIC in its AV pairs, so a mechListMIC is due and missing
    assert reason(acc.verify, [nt_hash("Password")], NOW) == "mic-missing"


def test_first_leg_answer_carries_the_challenge():
    client = negotiate_client()
    acc = SpnegoNtlmAcceptor(make_acceptor())
    out = parse_negotiate_token(acc.step(client.step()))
    assert (out.neg_state, out.supported_mech) == (NegState.ACCEPT_INCOMPLETE, NTLM_OID)
    assert out.response_token.startswith(b"NTLMSSP\x00\x02\x00\x00\x00") and out.mech_list_mic is None


# --- adopt: the id service verified, the gateway checks the mechListMIC -------------------------


def _split(client=None):
    gateway, client, auth = run_negotiate(client=client)
    gateway.identify(auth)
    negotiate, challenge, authenticate = gateway.ntlm.messages()
    verifier = NtlmAcceptor.from_messages(
        negotiate=negotiate,
        challenge=challenge,
        server_challenge=gateway.ntlm.server_challenge,
        challenge_time=gateway.ntlm.challenge_time,
        channel_binding_data=TLS_BINDING,
    )
    verifier.identify(authenticate)
    return gateway, client, verifier.verify([nt_hash("Password")], NOW)


def test_adopt_checks_the_mech_list_mic_with_the_returned_key():
    gateway, client, result = _split()
    gateway.adopt(result)
    assert gateway.ntlm.complete
    assert client.step(gateway.final_token()) is None and client.complete
    assert reason(gateway.adopt, result) == "unexpected-message"


def test_adopt_with_a_wrong_key_is_bad_mic():
    gateway, client, result = _split()
    forged = VerifyResult(
        result.candidate_index,
        result.session_base_key,
        bytes(16),
        result.channel_binding,
        result.flags,
        result.mic_present,
    )
    assert reason(gateway.adopt, forged) == "bad-mic"
    assert reason(gateway.final_token) == "unexpected-message"


def test_adopt_with_a_bad_key_length_fails_the_exchange():
    gateway, client, result = _split()
    short = VerifyResult(0, bytes(16), bytes(8), "verified", result.flags, True)
    assert reason(gateway.adopt, short, exc=NtlmError) == "bad-argument"
    assert reason(gateway.adopt, result) == "unexpected-message"


def test_adopt_raw_ntlm_has_no_mech_list_mic():
    client = ntlm_client()
    gateway = SpnegoNtlmAcceptor(make_acceptor())
    gateway.identify_ok = None
    auth = client.step(gateway.step(client.step()))
    gateway.identify(auth)
    negotiate, challenge, authenticate = gateway.ntlm.messages()
    verifier = NtlmAcceptor.from_messages(
        negotiate=negotiate,
        challenge=challenge,
        server_challenge=gateway.ntlm.server_challenge,
        challenge_time=gateway.ntlm.challenge_time,
        channel_binding_data=TLS_BINDING,
    )
    verifier.identify(authenticate)
    gateway.adopt(verifier.verify([nt_hash("Password")], NOW))
    assert gateway.final_token() is None
    gateway.ntlm.session.verify_mic(b"hello", client.sign(b"hello"))


# --- found by mutation testing ------------------------------------------------------------------


def test_indefinite_length_is_refused_even_with_128_bytes_behind_it():
    content = tlv(0x30, tlv(0xA2, tlv(0x04, b"a" * 0x7A)))
    assert len(content) == 0x80
    assert parse_reason(b"\xa1\x80" + content) == "malformed"


def test_length_octets_missing():
    for data in (b"\xa1\x81", b"\xa1\x82\x01", b"\xa1\x84\x01\x02\x03"):
        assert parse_reason(data) == "malformed"


def test_a_field_longer_than_its_container_is_refused():
    # [1] { SEQUENCE { [2] len 12 { OCTET STRING len 10 'abcde' } } }: the [2] claims 12 bytes
    # but its SEQUENCE (and the token) end after 7
    inner = b"\xa2\x0c\x04\x0a" + b"abcde"
    data = b"\xa1" + bytes([len(inner) + 2]) + b"\x30" + bytes([len(inner)]) + inner
    assert parse_reason(data) == "malformed"


def test_failed_state_is_visible():
    acc = SpnegoNtlmAcceptor(make_acceptor())
    with pytest.raises(SpnegoError):
        acc.step(b"\x30\x00")
    assert repr(acc) == "SpnegoNtlmAcceptor(state='failed', raw=False)"
    acc, client, auth = run_negotiate()
    acc.identify(auth)
    with pytest.raises(NtlmError):
        acc.verify([nt_hash("Password")], NOW + 3600 * 10_000_000)
    assert "state='failed'" in repr(acc)
    acc, client, auth = run_negotiate()
    acc.identify(auth)
    with pytest.raises(NtlmError):
        acc.verify([nt_hash("nope")], NOW)
    assert "state='identified'" in repr(acc)


def test_ntlm_not_first_requires_the_mech_list_mic_even_without_an_ntlm_mic():
    acc = SpnegoNtlmAcceptor(make_acceptor())
    first = acc.step(encode_neg_token_init([KRB5_OID, NTLM_OID], b"kerberos"))
    assert parse_negotiate_token(first).neg_state == NegState.REQUEST_MIC
    type1 = impacket_ntlm.getNTLMSSPType1("WS01", "", signingRequired=True)
    out = parse_negotiate_token(acc.step(encode_neg_token_resp(None, None, type1.getData())))
    type3, _ = impacket_ntlm.getNTLMSSPType3(
        type1,
        out.response_token,
        "bob",
        "Password",
        "EXAMPLE",
        channel_binding_value=channel_bindings_hash(TLS_BINDING),
    )
    acc.identify(encode_neg_token_resp(None, None, type3.getData()))
    assert reason(acc.verify, [nt_hash("Password")], NOW) == "mic-missing"
