"""NTLM acceptor, one rule at a time: every refusal with its exact reason, the boundary on each
side of every limit, the flags echoed and agreed, channel-binding and clock-skew tables, and
session security against pyspnego's implementation as an oracle. Clocks start far from 0."""

from __future__ import annotations

import hashlib
import struct

import pytest
from Crypto.Cipher import ARC4
from spnego._ntlm_raw import crypto as their_crypto
from spnego._ntlm_raw import security as their_security

from ucgate.protocols.ntlm import (
    MAX_AV_PAIRS,
    MAX_CANDIDATES,
    MAX_MESSAGE_SIZE,
    AuthenticateMessage,
    AvFlags,
    AvId,
    AvPair,
    ChallengeMessage,
    NegotiateFlags,
    NegotiateMessage,
    NtlmAcceptor,
    NtlmError,
    NtlmSession,
    NtlmV2ClientChallenge,
    TargetInfo,
    Version,
    channel_bindings_hash,
    filetime,
    hmac_md5,
    nt_hash,
    ntowfv2,
    sealkey,
    signkey,
)

NF = NegotiateFlags
SECOND = 10_000_000
T0 = filetime(1_987_654_321.1234567)  # not 0, not round
SERVER_CHALLENGE = bytes.fromhex("f00dfeedc0ffee42")
BINDING = b"tls-server-end-point:" + bytes(range(100, 132))
OTHER = b"tls-server-end-point:" + bytes(range(32))
PASSWORD = "Sommer2024!"
RANDOM_KEY = bytes(range(0xA0, 0xB0))

# Flags we echo when asked (MS-NLMP 3.2.5.1.1) and every other flag, as the spec names them.
ECHOED = [
    NF.NEGOTIATE_SIGN,
    NF.NEGOTIATE_SEAL,
    NF.NEGOTIATE_ALWAYS_SIGN,
    NF.NEGOTIATE_EXTENDED_SESSIONSECURITY,
    NF.NEGOTIATE_VERSION,
    NF.NEGOTIATE_128,
    NF.NEGOTIATE_56,
    NF.NEGOTIATE_KEY_EXCH,
    NF.NEGOTIATE_IDENTIFY,
]
NOT_ECHOED = [
    NF.NEGOTIATE_DATAGRAM,
    NF.NEGOTIATE_LM_KEY,
    NF.NEGOTIATE_ANONYMOUS,
    NF.NEGOTIATE_OEM_DOMAIN_SUPPLIED,
    NF.NEGOTIATE_OEM_WORKSTATION_SUPPLIED,
    NF.TARGET_TYPE_DOMAIN,
    NF.TARGET_TYPE_SERVER,
    NF.REQUEST_NON_NT_SESSION_KEY,
]
ECHO_MASK = 0
for _f in ECHOED:
    ECHO_MASK |= int(_f)
FULL = (
    NF.NEGOTIATE_UNICODE
    | NF.REQUEST_TARGET
    | NF.NEGOTIATE_SIGN
    | NF.NEGOTIATE_SEAL
    | NF.NEGOTIATE_NTLM
    | NF.NEGOTIATE_ALWAYS_SIGN
    | NF.NEGOTIATE_EXTENDED_SESSIONSECURITY
    | NF.NEGOTIATE_TARGET_INFO
    | NF.NEGOTIATE_VERSION
    | NF.NEGOTIATE_128
    | NF.NEGOTIATE_KEY_EXCH
    | NF.NEGOTIATE_56
)


def reason(fn, *args, **kw) -> str:
    with pytest.raises(NtlmError) as err:
        fn(*args, **kw)
    assert err.value.message and str(err.value).startswith(err.value.reason + ": ")
    return err.value.reason


def new_acceptor(binding: bytes | None = BINDING, mode: str = "require", **kw) -> NtlmAcceptor:
    args = dict(
        server_challenge=SERVER_CHALLENGE,
        now=T0,
        netbios_domain="CORP",
        netbios_computer="EDGE",
        dns_domain="corp.example",
        dns_computer="edge.corp.example",
        channel_binding_data=binding,
        extended_protection=mode,
    )
    args.update(kw)
    return NtlmAcceptor(**args)


def blob(timestamp: int, pairs: list[AvPair], *, resp=(1, 1)) -> bytes:
    """NTLMv2_CLIENT_CHALLENGE (MS-NLMP 2.2.2.7) with Z(4) after the AV pairs (3.3.2 temp)."""
    return (
        bytes(resp)
        + bytes(6)
        + struct.pack("<Q", timestamp)
        + b"\x5a" * 8
        + bytes(4)
        + TargetInfo(tuple(pairs)).pack()
        + bytes(4)
    )


def build(
    negotiate: bytes,
    challenge: bytes,
    *,
    flags: int = FULL,
    password: str = PASSWORD,
    user: str = "dora",
    domain: str = "CORP",
    workstation: str = "LAPTOP7",
    client_time: int | None = None,
    mic_flag: bool = True,
    mic_field: bool = True,
    mic: bytes | None = None,
    cb_hash: bytes | None = channel_bindings_hash(BINDING),
    extra_pairs: tuple[AvPair, ...] = (),
    random_key: bytes | None = RANDOM_KEY,
    enc_key: bytes | None = None,
    nt_response: bytes | None = None,
    lm: bytes = bytes(24),
) -> bytes:
    """An NTLMv2 AUTHENTICATE_MESSAGE per MS-NLMP 3.1.5.1.2 / 3.3.2 written independently of
    the acceptor: key exchange when KEY_EXCH and SIGN or SEAL are agreed, MIC per 3.1.5.1.2."""
    chal = ChallengeMessage.unpack(challenge)
    pairs = list(chal.target_info.pairs)
    if mic_flag:
        pairs.append(AvPair(AvId.MsvAvFlags, struct.pack("<I", AvFlags.MIC_PROVIDED)))
    if cb_hash is not None:
        pairs.append(AvPair(AvId.MsvAvChannelBindings, cb_hash))
    pairs.extend(extra_pairs)
    temp = blob(chal.target_info.timestamp() if client_time is None else client_time, pairs)
    key = ntowfv2(nt_hash(password), user, domain)
    proof = hmac_md5(key, chal.server_challenge + temp)
    base = hmac_md5(key, proof)
    agreed = flags & (int(chal.flags) | ~ECHO_MASK & 0xFFFFFFFF)
    exported = base
    if enc_key is None:
        enc_key = b""
        if agreed & NF.NEGOTIATE_KEY_EXCH and agreed & (NF.NEGOTIATE_SIGN | NF.NEGOTIATE_SEAL) and random_key:
            enc_key = ARC4.new(base).encrypt(random_key)
            exported = random_key
    auth = AuthenticateMessage(
        flags=NegotiateFlags(flags),
        lm_challenge_response=lm,
        nt_challenge_response=proof + temp if nt_response is None else nt_response,
        domain_name=domain,
        user_name=user,
        workstation=workstation,
        encrypted_random_session_key=enc_key,
        version=Version() if mic_field else None,
        mic=bytes(16) if mic_field else None,
    )
    raw = auth.pack()
    if mic_field:
        value = mic if mic is not None else hmac_md5(exported, negotiate + challenge + raw)
        raw = raw[:72] + value + raw[88:]
    return raw


def exchange(acc: NtlmAcceptor | None = None, negotiate_flags: int = FULL, **kw) -> tuple[NtlmAcceptor, bytes]:
    acc = acc or new_acceptor()
    negotiate = NegotiateMessage(NegotiateFlags(negotiate_flags)).pack()
    challenge = acc.challenge(negotiate)
    return acc, build(negotiate, challenge, **kw)


def refusal(acc: NtlmAcceptor, token: bytes, now: int = T0, candidates=None) -> str:
    def run():
        acc.identify(token)
        acc.verify(candidates or [nt_hash(PASSWORD)], now)

    r = reason(run)
    assert acc.state == "failed" or r == "wrong-password"
    return r


def accepted(acc: NtlmAcceptor, token: bytes, now: int = T0):
    acc.identify(token)
    result = acc.verify([nt_hash(PASSWORD)], now)
    assert acc.complete
    return result


# --- CHALLENGE: which flags are echoed --------------------------------------------------------------


@pytest.mark.parametrize("flag", ECHOED)
def test_echoed_flags(flag):
    acc = new_acceptor()
    challenge = ChallengeMessage.unpack(acc.challenge(NegotiateMessage(NF.NEGOTIATE_UNICODE | flag).pack()))
    assert challenge.flags == NF.NEGOTIATE_UNICODE | NF.NEGOTIATE_NTLM | NF.NEGOTIATE_TARGET_INFO | flag


@pytest.mark.parametrize("flag", NOT_ECHOED)
def test_flags_never_echoed(flag):
    acc = new_acceptor()
    challenge = ChallengeMessage.unpack(acc.challenge(NegotiateMessage(NF.NEGOTIATE_UNICODE | flag).pack()))
    assert challenge.flags == NF.NEGOTIATE_UNICODE | NF.NEGOTIATE_NTLM | NF.NEGOTIATE_TARGET_INFO


def test_charset_and_target_request():
    def answer(flags):
        return ChallengeMessage.unpack(new_acceptor().challenge(NegotiateMessage(NegotiateFlags(flags)).pack()))

    both = answer(NF.NEGOTIATE_UNICODE | NF.NEGOTIATE_OEM)
    assert both.flags & NF.NEGOTIATE_UNICODE and not both.flags & NF.NEGOTIATE_OEM
    oem = answer(NF.NEGOTIATE_OEM | NF.REQUEST_TARGET)
    assert oem.flags == (
        NF.NEGOTIATE_OEM | NF.REQUEST_TARGET | NF.TARGET_TYPE_DOMAIN | NF.NEGOTIATE_NTLM | NF.NEGOTIATE_TARGET_INFO
    )
    assert oem.target_name == "CORP" and oem.version is None
    raw = new_acceptor().challenge(NegotiateMessage(NF.NEGOTIATE_OEM | NF.REQUEST_TARGET).pack())
    assert raw[48:52] == b"CORP"  # OEM TargetName, one byte per character
    uni = answer(NF.NEGOTIATE_UNICODE | NF.REQUEST_TARGET | NF.NEGOTIATE_VERSION)
    assert uni.target_name == "CORP" and uni.version == Version()
    assert answer(NF.NEGOTIATE_UNICODE).target_name is None
    acc = new_acceptor()
    assert reason(acc.challenge, NegotiateMessage(NF.NEGOTIATE_NTLM | NF.REQUEST_TARGET).pack()) == "unsupported"
    assert acc.state == "failed"


def test_challenge_target_info_and_timestamp():
    info = ChallengeMessage.unpack(new_acceptor().challenge(NegotiateMessage(FULL).pack())).target_info
    assert (
        info.pack()
        == TargetInfo(
            (
                AvPair(AvId.MsvAvNbDomainName, "CORP".encode("utf-16-le")),
                AvPair(AvId.MsvAvNbComputerName, "EDGE".encode("utf-16-le")),
                AvPair(AvId.MsvAvDnsDomainName, "corp.example".encode("utf-16-le")),
                AvPair(AvId.MsvAvDnsComputerName, "edge.corp.example".encode("utf-16-le")),
                AvPair(AvId.MsvAvDnsTreeName, "corp.example".encode("utf-16-le")),
                AvPair(AvId.MsvAvTimestamp, struct.pack("<Q", T0)),
            )
        ).pack()
    )
    assert info.timestamp() == T0


# --- AUTHENTICATE: agreed flags and key exchange -------------------------------------------------------


def test_agreed_flags_drop_what_the_challenge_did_not_echo():
    asked = NF.NEGOTIATE_UNICODE | NF.NEGOTIATE_NTLM | NF.NEGOTIATE_EXTENDED_SESSIONSECURITY | NF.NEGOTIATE_128
    sent = FULL | NF.NEGOTIATE_IDENTIFY | NF.NEGOTIATE_OEM_DOMAIN_SUPPLIED
    acc, token = exchange(negotiate_flags=asked, flags=sent)
    result = accepted(acc, token)
    dropped = (
        NF.NEGOTIATE_SIGN
        | NF.NEGOTIATE_SEAL
        | NF.NEGOTIATE_ALWAYS_SIGN
        | NF.NEGOTIATE_VERSION
        | NF.NEGOTIATE_KEY_EXCH
        | NF.NEGOTIATE_56
        | NF.NEGOTIATE_IDENTIFY
    )
    assert result.flags == sent & ~dropped
    assert result.flags & NF.NEGOTIATE_UNICODE and result.flags & NF.REQUEST_TARGET
    assert result.flags & NF.NEGOTIATE_OEM_DOMAIN_SUPPLIED  # not a session-security flag: as sent
    # no KEY_EXCH agreed: the exported key is the session base key, the sent key is ignored
    assert result.exported_session_key == result.session_base_key
    assert acc.session.flags == result.flags


def test_agreed_flags_keep_every_echoed_flag_the_client_confirms():
    acc, token = exchange(negotiate_flags=FULL | NF.NEGOTIATE_IDENTIFY, flags=FULL | NF.NEGOTIATE_IDENTIFY)
    result = accepted(acc, token)
    assert result.flags == FULL | NF.NEGOTIATE_IDENTIFY
    assert result.exported_session_key == RANDOM_KEY
    # a flag the client asked for but does not confirm is not agreed either
    acc, token = exchange(flags=FULL & ~NF.NEGOTIATE_56)
    assert accepted(acc, token).flags == FULL & ~NF.NEGOTIATE_56


@pytest.mark.parametrize("security", [NF.NEGOTIATE_SIGN, NF.NEGOTIATE_SEAL, NF.NEGOTIATE_SIGN | NF.NEGOTIATE_SEAL])
def test_key_exchange_with_sign_or_seal(security):
    flags = (FULL & ~(NF.NEGOTIATE_SIGN | NF.NEGOTIATE_SEAL)) | security
    acc, token = exchange(negotiate_flags=flags, flags=flags)
    result = accepted(acc, token)
    assert result.exported_session_key == RANDOM_KEY != result.session_base_key


def test_key_exch_without_sign_or_seal_is_no_key_exchange():
    flags = FULL & ~(NF.NEGOTIATE_SIGN | NF.NEGOTIATE_SEAL)
    acc, token = exchange(negotiate_flags=flags, flags=flags, enc_key=bytes(16))
    result = accepted(acc, token)
    assert result.exported_session_key == result.session_base_key


def test_key_exch_agreed_without_a_key_is_malformed():
    acc, token = exchange(enc_key=b"")
    assert refusal(acc, token) == "malformed"


# --- identify(): refused before any password is looked up ----------------------------------------------


def _identify_reason(**kw) -> str:
    acc, token = exchange(**kw)
    r = reason(acc.identify, token)
    assert acc.state == "failed"
    assert reason(acc.verify, [nt_hash(PASSWORD)], T0) == "unexpected-message"
    return r


@pytest.mark.parametrize(
    "kw, expected",
    [
        ({"user": ""}, "anonymous"),
        ({"flags": FULL | NF.NEGOTIATE_ANONYMOUS}, "anonymous"),
        ({"nt_response": b"", "lm": b""}, "anonymous"),
        ({"nt_response": b"", "lm": b"\x00"}, "anonymous"),
        ({"nt_response": b"", "lm": b"\x00\x00"}, "lm-only"),
        ({"nt_response": b"", "lm": b"\x01"}, "lm-only"),
        ({"nt_response": b"", "lm": bytes(24)}, "lm-only"),
        ({"nt_response": b"\x01" * 24}, "ntlmv1"),
        ({"nt_response": b"\x01"}, "malformed"),
        ({"nt_response": b"\x01" * 23}, "malformed"),
        ({"nt_response": b"\x01" * 25}, "malformed"),
        ({"nt_response": bytes(16) + blob(T0, [])[:31]}, "malformed"),  # 47 bytes
        ({"nt_response": bytes(16) + blob(T0, [], resp=(2, 1))}, "malformed"),
        ({"nt_response": bytes(16) + blob(T0, [], resp=(1, 2))}, "malformed"),
        ({"nt_response": bytes(16) + blob(T0, [], resp=(0, 1))}, "malformed"),
        ({"nt_response": bytes(16) + blob(T0, [])[:-8]}, "malformed"),  # AV list without EOL
        ({"enc_key": bytes(15)}, "malformed"),
        ({"enc_key": bytes(17)}, "malformed"),
    ],
)
def test_identify_refusals(kw, expected):
    assert _identify_reason(**kw) == expected


def test_identify_boundaries_that_pass():
    # the smallest NTLMv2 response: NTProofStr + 28-byte fixed part + MsvAvEOL = 48 bytes
    acc, token = exchange(nt_response=bytes(16) + blob(T0, [])[:32])
    assert len(AuthenticateMessage.unpack(token).nt_challenge_response) == 48
    identity = acc.identify(token)
    assert (identity.user, identity.domain, identity.workstation) == ("dora", "CORP", "LAPTOP7")
    assert reason(acc.verify, [nt_hash(PASSWORD)], T0) == "wrong-password"
    for enc in (b"", bytes(16)):
        acc, token = exchange(enc_key=enc, flags=FULL & ~NF.NEGOTIATE_KEY_EXCH)
        acc.identify(token)
        assert acc.state == "identified"


def test_client_challenge_fields():
    data = blob(T0 + 7, [AvPair(AvId.MsvAvFlags, struct.pack("<I", 2))])
    cc = NtlmV2ClientChallenge.unpack(data)
    assert cc.timestamp == T0 + 7 and cc.challenge_from_client == b"\x5a" * 8
    assert cc.av_pairs.flags() == AvFlags.MIC_PROVIDED and cc.raw == data
    assert reason(NtlmV2ClientChallenge.unpack, data[:31]) == "malformed"
    assert NtlmV2ClientChallenge.unpack(data[:28] + bytes(4)).av_pairs == TargetInfo(())


# --- verify(): candidates ---------------------------------------------------------------------------


def test_candidate_limit_and_order():
    acc, token = exchange()
    acc.identify(token)
    assert reason(acc.verify, [nt_hash("x")] * (MAX_CANDIDATES + 1), T0) == "bad-argument"
    assert acc.state == "identified"
    candidates = [nt_hash(f"wrong{i}") for i in range(MAX_CANDIDATES - 1)] + [nt_hash(PASSWORD)]
    assert len(candidates) == 32
    assert acc.verify(candidates, T0).candidate_index == 31


def test_first_matching_candidate_wins():
    acc, token = exchange()
    acc.identify(token)
    assert acc.verify([nt_hash("a"), nt_hash(PASSWORD), nt_hash(PASSWORD)], T0).candidate_index == 1


def test_verify_bad_hash_length():
    acc, token = exchange()
    acc.identify(token)
    assert reason(acc.verify, [bytes(15)], T0) == "bad-argument"
    assert reason(ntowfv2, bytes(17), "u", "d") == "bad-argument"


# --- clock skew: both sides of every boundary -----------------------------------------------------


@pytest.mark.parametrize("skew_s", [300, 17, 0])
def test_clock_skew_boundaries(skew_s):
    skew = skew_s * SECOND
    kw = {} if skew_s == 300 else {"max_clock_skew": skew_s}  # 300 s is the default
    ok_now = [T0, T0 + skew, T0 - skew]
    bad_now = [T0 + skew + 1, T0 - skew - 1, T0 + 10 * skew + SECOND, T0 - 10 * skew - SECOND]
    for now in ok_now:
        acc, token = exchange(new_acceptor(**kw))
        accepted(acc, token, now)
    for now in bad_now:
        acc, token = exchange(new_acceptor(**kw))
        assert refusal(acc, token, now) == "stale-timestamp", now - T0
    for client_time in ok_now:
        acc, token = exchange(new_acceptor(**kw), client_time=client_time)
        accepted(acc, token, T0)
    for client_time in bad_now:
        acc, token = exchange(new_acceptor(**kw), client_time=client_time)
        assert refusal(acc, token, T0) == "stale-timestamp", client_time - T0


def test_clock_skew_is_measured_from_the_challenge_time():
    # client and verifier agree with each other but not with when the challenge was sent
    acc, token = exchange(client_time=T0 + 400 * SECOND)
    assert refusal(acc, token, T0 + 400 * SECOND) == "stale-timestamp"
    acc, token = exchange(client_time=T0 + 200 * SECOND)
    accepted(acc, token, T0 + 250 * SECOND)


def test_bad_skew_and_challenge_arguments():
    assert reason(new_acceptor, max_clock_skew=-1) == "bad-argument"
    assert new_acceptor(max_clock_skew=0).state == "initial"
    for sc in (b"", bytes(7), bytes(9), bytearray(8), "01234567"):
        assert reason(new_acceptor, server_challenge=sc) == "bad-argument"
    for mode in ("", "REQUIRE", "on"):
        assert reason(new_acceptor, mode=mode) == "bad-argument"


# --- MIC -------------------------------------------------------------------------------------------


def test_mic_rules():
    acc, token = exchange()
    assert accepted(acc, token).mic_present
    acc, token = exchange(mic=bytes(16))
    assert refusal(acc, token) == "bad-mic"
    acc, token = exchange(mic_field=False)
    assert refusal(acc, token) == "mic-missing"
    acc, token = exchange(mic_flag=False, mic_field=False)
    assert accepted(acc, token).mic_present is False
    acc, token = exchange(mic_flag=False, mic=bytes(16))  # no MIC announced: the field is not checked
    assert accepted(acc, token).mic_present is False
    acc, token = exchange(new_acceptor(require_mic=True), mic_flag=False, mic_field=False)
    assert refusal(acc, token) == "mic-missing"
    acc, token = exchange(new_acceptor(require_mic=True))
    assert accepted(acc, token).mic_present


def test_mic_is_keyed_with_the_exported_key():
    # a MIC computed with the session base key although a key was exchanged
    negotiate = NegotiateMessage(FULL).pack()
    acc = new_acceptor()
    challenge = acc.challenge(negotiate)
    token = build(negotiate, challenge)
    good = accepted(acc, token)
    acc2 = new_acceptor()
    acc2.challenge(negotiate)
    raw = build(negotiate, challenge, mic=bytes(16))
    wrong = hmac_md5(good.session_base_key, negotiate + challenge + raw)
    assert refusal(acc2, raw[:72] + wrong + raw[88:]) == "bad-mic"


def test_mic_and_version_position_in_the_message():
    acc, token = exchange()
    auth = AuthenticateMessage.unpack(token)
    assert auth.mic == token[72:88] and auth.version == Version()
    assert auth.zeroed_mic_bytes() == token[:72] + bytes(16) + token[88:]
    built = AuthenticateMessage(NF.NEGOTIATE_UNICODE, user_name="u", mic=b"\x07" * 16)
    assert built.pack()[64:72] == bytes(8)  # a MIC without a Version gets a zero Version
    assert built.zeroed_mic_bytes() == built.pack()[:72] + bytes(16) + built.pack()[88:]
    assert reason(AuthenticateMessage(NF.NEGOTIATE_UNICODE, mic=bytes(15)).pack) == "bad-argument"


# --- channel binding: the whole table --------------------------------------------------------------

ZERO = bytes(16)
ALMOST_ZERO = bytes(15) + b"\x01"


@pytest.mark.parametrize(
    "mode, ours, theirs, expected",
    [
        ("require", BINDING, channel_bindings_hash(BINDING), "verified"),
        ("require", BINDING, None, "channel-binding-missing"),
        ("require", BINDING, ZERO, "channel-binding-missing"),
        ("require", BINDING, ALMOST_ZERO, "channel-binding-mismatch"),
        ("require", BINDING, channel_bindings_hash(OTHER), "channel-binding-mismatch"),
        ("require", None, None, "absent"),
        ("require", None, ZERO, "absent"),
        ("require", None, channel_bindings_hash(BINDING), "channel-binding-mismatch"),
        ("allow", BINDING, channel_bindings_hash(BINDING), "verified"),
        ("allow", BINDING, None, "absent"),
        ("allow", BINDING, ZERO, "absent"),
        ("allow", BINDING, ALMOST_ZERO, "channel-binding-mismatch"),
        ("allow", BINDING, channel_bindings_hash(OTHER), "channel-binding-mismatch"),
        ("allow", None, None, "absent"),
        ("allow", None, channel_bindings_hash(BINDING), "channel-binding-mismatch"),
        ("off", BINDING, channel_bindings_hash(OTHER), "not-checked"),
        ("off", BINDING, None, "not-checked"),
        ("off", None, channel_bindings_hash(BINDING), "not-checked"),
    ],
)
def test_channel_binding_table(mode, ours, theirs, expected):
    acc, token = exchange(new_acceptor(ours, mode), cb_hash=theirs)
    if expected.startswith("channel-binding"):
        assert refusal(acc, token) == expected
    else:
        assert accepted(acc, token).channel_binding == expected


def test_channel_bindings_hash_layout():
    data = b"tls-server-end-point:" + b"\x42" * 48
    packed = bytes(16) + struct.pack("<I", len(data)) + data
    assert channel_bindings_hash(data) == hashlib.md5(packed).digest()
    assert channel_bindings_hash(b"") == hashlib.md5(bytes(20)).digest()


# --- target name -----------------------------------------------------------------------------------


def test_target_name():
    spn = AvPair(AvId.MsvAvTargetName, "HTTP/edge.corp.example".encode("utf-16-le"))
    acc, token = exchange(extra_pairs=(spn,))
    assert accepted(acc, token).target_name == "HTTP/edge.corp.example"
    acc, token = exchange()
    assert accepted(acc, token).target_name is None
    acc, token = exchange(extra_pairs=(AvPair(AvId.MsvAvTargetName, b"abc"),))
    assert refusal(acc, token) == "malformed"


# --- state machine --------------------------------------------------------------------------------


def test_states_and_out_of_order_calls():
    acc = new_acceptor()
    assert acc.state == "initial" and not acc.complete and repr(acc) == "NtlmAcceptor(state='initial')"
    assert reason(lambda: acc.session) == "unexpected-message"
    assert reason(acc.identify, b"") == "unexpected-message"
    acc, token = exchange(acc)
    assert acc.state == "challenged"
    assert reason(acc.challenge, NegotiateMessage(FULL).pack()) == "unexpected-message"
    assert reason(acc.verify, [nt_hash(PASSWORD)], T0) == "unexpected-message"
    acc.identify(token)
    assert acc.state == "identified" and not acc.complete
    assert reason(acc.identify, token) == "unexpected-message"
    assert reason(acc.verify, [nt_hash("no")], T0) == "wrong-password"
    assert acc.state == "identified"
    acc.verify([nt_hash(PASSWORD)], T0)
    assert acc.state == "complete" and acc.complete and "complete" in repr(acc)
    assert reason(acc.verify, [nt_hash(PASSWORD)], T0) == "unexpected-message"


def test_a_refused_verification_is_final():
    acc, token = exchange(mic=bytes(16))
    acc.identify(token)
    assert reason(acc.verify, [nt_hash(PASSWORD)], T0) == "bad-mic"
    assert acc.state == "failed" and not acc.complete
    assert reason(acc.verify, [nt_hash(PASSWORD)], T0) == "unexpected-message"
    assert reason(lambda: acc.session) == "unexpected-message"


def test_result_and_errors_keep_secrets_out():
    acc, token = exchange()
    result = accepted(acc, token)
    text = repr(result) + repr(acc) + repr(acc.session)
    for secret in (result.session_base_key, result.exported_session_key):
        assert secret.hex() not in text and repr(secret) not in text
    assert repr(acc.session) == f"NtlmSession(flags={result.flags!r})"
    err = NtlmError("bad-mic", "text")
    assert (err.reason, err.message, str(err)) == ("bad-mic", "text", "bad-mic: text")
    assert isinstance(err, ValueError)


# --- wire structures: sizes, offsets, overlaps --------------------------------------------------


def _field(data: bytes, pos: int, length: int, offset: int) -> bytes:
    out = bytearray(data)
    struct.pack_into("<HHI", out, pos, length, length, offset)
    return bytes(out)


def test_message_size_limit_boundary():
    ok = NegotiateMessage(FULL).pack()
    at_limit = ok + bytes(MAX_MESSAGE_SIZE - len(ok))
    assert NegotiateMessage.unpack(at_limit).flags == FULL
    assert reason(NegotiateMessage.unpack, at_limit + b"\x00") == "too-large"
    assert NegotiateMessage.unpack(bytearray(ok)).flags == FULL
    assert NegotiateMessage.unpack(memoryview(ok)).flags == FULL
    for wrong in ("NTLMSSP", None, 7, [1, 2]):
        assert reason(NegotiateMessage.unpack, wrong) == "bad-argument"
        assert reason(AuthenticateMessage.unpack, wrong) == "bad-argument"
        assert reason(ChallengeMessage.unpack, wrong) == "bad-argument"


def test_header_lengths():
    negotiate = NegotiateMessage(FULL).pack()
    assert NegotiateMessage.unpack(negotiate[:16]) == NegotiateMessage(FULL)
    assert NegotiateMessage.unpack(negotiate[:31]) == NegotiateMessage(FULL)  # fields absent
    for cut in (11, 12, 15):
        assert reason(NegotiateMessage.unpack, negotiate[:cut]) == "malformed"
    challenge = ChallengeMessage(NF.NEGOTIATE_UNICODE, bytes(8)).pack()
    assert len(challenge) == 48
    assert ChallengeMessage.unpack(challenge).target_info is None
    assert reason(ChallengeMessage.unpack, challenge[:47]) == "malformed"
    auth = AuthenticateMessage(NF.NEGOTIATE_UNICODE).pack()
    assert len(auth) == 64
    parsed = AuthenticateMessage.unpack(auth)
    assert parsed.mic is None and parsed.version is None and parsed.user_name == ""
    assert reason(AuthenticateMessage.unpack, auth[:63]) == "malformed"
    assert reason(AuthenticateMessage.unpack, b"NTLMSSP\x00") == "malformed"
    assert reason(AuthenticateMessage.unpack, b"NTLMSSP\x01\x03\x00\x00\x00" + auth[12:]) == "malformed"


def test_version_and_mic_follow_the_first_payload_offset():
    flags = NF.NEGOTIATE_UNICODE | NF.NEGOTIATE_VERSION
    base = AuthenticateMessage(flags, user_name="u", version=Version(6, 1, 7601, 15), mic=b"\x33" * 16).pack()
    assert AuthenticateMessage.unpack(base).mic == b"\x33" * 16
    assert AuthenticateMessage.unpack(base).version == Version(6, 1, 7601, 15)
    body = base[:88] + b"uu"  # user at 88 (2 bytes)
    for start, mic, version in [
        (88, True, True),
        (87, False, True),
        (72, False, True),
        (71, False, False),
        (64, False, False),
    ]:
        data = _field(base[:start] + body[start:88] + b"uu", 36, 2, start)
        data = data[:start] + b"uu"
        parsed = AuthenticateMessage.unpack(data)
        assert (parsed.mic is not None, parsed.version is not None) == (mic, version), start
    no_flag = _field(base, 60, 0, 0)[:60] + struct.pack("<I", NF.NEGOTIATE_UNICODE) + base[64:]
    assert AuthenticateMessage.unpack(no_flag).version is None  # Version only with NEGOTIATE_VERSION
    assert AuthenticateMessage.unpack(no_flag).mic == b"\x33" * 16


def test_payload_field_boundaries():
    negotiate = NegotiateMessage(NF.NEGOTIATE_UNICODE, "DOMAIN", "WS").pack()  # header 32, payload 32..40
    assert len(negotiate) == 40
    ok = _field(negotiate, 16, 6, 32)
    assert NegotiateMessage.unpack(ok).domain_name == "DOMAIN"
    assert reason(NegotiateMessage.unpack, _field(negotiate, 16, 6, 31)) == "malformed"  # into the header
    assert NegotiateMessage.unpack(_field(negotiate, 24, 2, 38)).workstation == "WS"  # ends at the end
    assert reason(NegotiateMessage.unpack, _field(negotiate, 24, 2, 39)) == "malformed"  # one past
    assert reason(NegotiateMessage.unpack, _field(negotiate, 24, 3, 38)) == "malformed"
    # adjacent fields are fine, one byte of overlap is not (either way round)
    adjacent = _field(_field(negotiate, 16, 4, 32), 24, 4, 36)
    parsed = NegotiateMessage.unpack(adjacent)
    assert (parsed.domain_name, parsed.workstation) == ("DOMA", "INWS")
    assert reason(NegotiateMessage.unpack, _field(_field(negotiate, 16, 4, 32), 24, 4, 35)) == "malformed"
    assert reason(NegotiateMessage.unpack, _field(_field(negotiate, 16, 4, 35), 24, 4, 32)) == "malformed"
    assert reason(NegotiateMessage.unpack, _field(_field(negotiate, 16, 8, 32), 24, 2, 34)) == "malformed"
    assert reason(NegotiateMessage.unpack, _field(_field(negotiate, 16, 2, 34), 24, 8, 32)) == "malformed"
    # an empty field may point anywhere
    assert NegotiateMessage.unpack(_field(negotiate, 24, 0, 0xFFFFFFFF)).workstation is None
    assert NegotiateMessage.unpack(_field(negotiate, 24, 0, 3)).workstation is None


def test_negotiate_version_field():
    with_version = NegotiateMessage(NF.NEGOTIATE_UNICODE | NF.NEGOTIATE_VERSION, "D", None, Version(5, 2, 3790, 15))
    raw = with_version.pack()
    assert raw[32:40] == bytes.fromhex("0502ce0e0000000f") and raw[40:] == b"D"
    assert NegotiateMessage.unpack(raw) == with_version
    # Version only when the flag is set and the header is long enough for it
    no_flag = raw[:12] + struct.pack("<I", NF.NEGOTIATE_UNICODE) + raw[16:]
    assert NegotiateMessage.unpack(no_flag).version is None
    short = NegotiateMessage(NF.NEGOTIATE_UNICODE | NF.NEGOTIATE_VERSION).pack()[:32] + b"abcdefg"
    assert NegotiateMessage.unpack(short).version is None
    assert NegotiateMessage(NF.NEGOTIATE_UNICODE).pack() == (
        b"NTLMSSP\x00\x01\x00\x00\x00\x01\x00\x00\x00" + struct.pack("<HHIHHI", 0, 0, 32, 0, 0, 32)
    )
    assert NegotiateMessage.unpack(NegotiateMessage(NF.NEGOTIATE_OEM, "DÖM", "WS").pack()).domain_name == "DÖM"


def test_version_bytes():
    assert Version().pack() == bytes.fromhex("0a0063450000000f")
    assert Version.unpack(bytes.fromhex("0601b11d0000000f")) == Version(6, 1, 7601, 15)
    assert Version.unpack(Version(255, 254, 65535, 1).pack()) == Version(255, 254, 65535, 1)


def test_challenge_pack_layout():
    info = TargetInfo((AvPair(AvId.MsvAvNbDomainName, b"D\x00"),))
    msg = ChallengeMessage(NF.NEGOTIATE_UNICODE | NF.NEGOTIATE_VERSION, b"\x01" * 8, "Tn", info, Version())
    raw = msg.pack()
    assert raw[:12] == b"NTLMSSP\x00\x02\x00\x00\x00"
    assert raw[12:20] == struct.pack("<HHI", 4, 4, 56) and raw[56:60] == "Tn".encode("utf-16-le")
    assert raw[20:24] == struct.pack("<I", NF.NEGOTIATE_UNICODE | NF.NEGOTIATE_VERSION)
    assert raw[24:32] == b"\x01" * 8 and raw[32:40] == bytes(8)
    assert raw[40:48] == struct.pack("<HHI", 10, 10, 60) and raw[48:56] == Version().pack()
    assert ChallengeMessage.unpack(raw) == msg
    assert reason(ChallengeMessage(NF.NEGOTIATE_UNICODE, bytes(7)).pack) == "bad-argument"
    oem = ChallengeMessage(NF.NEGOTIATE_OEM, bytes(8), "Ĝé").pack()
    assert oem[48:] == b"?\xe9" and ChallengeMessage.unpack(oem).target_name == "?é"
    assert ChallengeMessage(NF.NEGOTIATE_UNICODE, bytes(8), "").pack()[12:20] == struct.pack("<HHI", 0, 0, 48)


def test_authenticate_pack_layout():
    msg = AuthenticateMessage(NF.NEGOTIATE_UNICODE, b"L", b"NN", "D", "U", "W", b"K" * 16)
    raw = msg.pack()
    spans = [struct.unpack_from("<HHI", raw, p) for p in (12, 20, 28, 36, 44, 52)]
    assert spans == [(1, 1, 64), (2, 2, 65), (2, 2, 67), (2, 2, 69), (2, 2, 71), (16, 16, 73)]
    assert raw[60:64] == struct.pack("<I", NF.NEGOTIATE_UNICODE) and len(raw) == 89
    assert AuthenticateMessage.unpack(raw) == msg
    oem = AuthenticateMessage(NF.NEGOTIATE_OEM, user_name="Jörg", domain_name="Ĝ").pack()
    parsed = AuthenticateMessage.unpack(oem)
    assert (parsed.user_name, parsed.domain_name) == ("Jörg", "?")
    assert reason(AuthenticateMessage(NF.NEGOTIATE_UNICODE, b"x" * 65536).pack) == "bad-argument"
    assert len(AuthenticateMessage(NF.NEGOTIATE_UNICODE, b"x" * 65535).pack()) == 64 + 65535


def test_text_fields():
    data = AuthenticateMessage(NF.NEGOTIATE_UNICODE, user_name="Ünïcødé€").pack()
    assert AuthenticateMessage.unpack(data).user_name == "Ünïcødé€"
    lone_surrogate = _field(data, 36, 2, 64)[:64] + b"\x00\xd8"
    assert reason(AuthenticateMessage.unpack, lone_surrogate) == "malformed"
    odd = _field(data, 36, 3, 64)[:67]
    assert reason(AuthenticateMessage.unpack, odd) == "malformed"
    assert AvPair(AvId.MsvAvNbDomainName, "Dom".encode("utf-16-le")).text() == "Dom"
    assert reason(AvPair(AvId.MsvAvNbDomainName, b"abc").text) == "malformed"


def test_target_info_rules():
    eol = bytes(4)
    at_limit = b"".join(struct.pack("<HH", 0x100 + i, 0) for i in range(MAX_AV_PAIRS)) + eol
    assert len(TargetInfo.unpack(at_limit).pairs) == MAX_AV_PAIRS == 64
    over = b"".join(struct.pack("<HH", 0x100 + i, 0) for i in range(MAX_AV_PAIRS + 1)) + eol
    assert reason(TargetInfo.unpack, over) == "malformed"
    for av_id, size in [(AvId.MsvAvFlags, 4), (AvId.MsvAvTimestamp, 8), (AvId.MsvAvChannelBindings, 16)]:
        assert TargetInfo.unpack(struct.pack("<HH", av_id, size) + bytes(size) + eol).get(av_id) == bytes(size)
        for wrong in (size - 1, size + 1):
            assert reason(TargetInfo.unpack, struct.pack("<HH", av_id, wrong) + bytes(wrong) + eol) == "malformed"
    assert reason(TargetInfo.unpack, b"\x00\x00\x01\x00\x00") == "malformed"
    assert reason(TargetInfo.unpack, b"") == "malformed"
    assert reason(TargetInfo.unpack, b"\x00\x00\x00") == "malformed"
    assert TargetInfo.unpack(eol) == TargetInfo(())
    assert reason(TargetInfo.unpack, b"\x01\x00\x02\x00a") == "malformed"  # value past the end
    assert TargetInfo.unpack(b"\x01\x00\x02\x00ab" + eol).get(1) == b"ab"
    parsed = TargetInfo.unpack(b"\x01\x00\x02\x00ab\x99\x00\x00\x00" + eol)
    assert parsed.pairs[0].av_id is AvId.MsvAvNbComputerName and type(parsed.pairs[1].av_id) is int
    assert parsed.get(AvId.MsvAvTimestamp) is None and parsed.timestamp() is None and parsed.flags() == 0
    ti = TargetInfo(
        (
            AvPair(AvId.MsvAvFlags, struct.pack("<I", 6)),
            AvPair(AvId.MsvAvEOL, b""),
            AvPair(AvId.MsvAvTimestamp, struct.pack("<Q", T0)),
        )
    )
    assert ti.pack() == (struct.pack("<HHI", 6, 4, 6) + struct.pack("<HHQ", 7, 8, T0) + eol)
    assert ti.flags() == AvFlags.MIC_PROVIDED | AvFlags.UNTRUSTED_SPN_SOURCE and ti.timestamp() == T0


# --- hashing -----------------------------------------------------------------------------------------


def test_hashes_against_pyspnego():
    for password in ("Password", "pässwörd€", "", "x" * 127):
        assert nt_hash(password) == their_crypto.ntowfv1(password)
    for user, domain in [("User", "Domain"), ("élodie", "CORP"), ("dora", "")]:
        assert ntowfv2(nt_hash("pw"), user, domain) == their_crypto.ntowfv2(user, nt_hash("pw"), domain)
    # one code unit to one when upper-casing, like Windows: "ß" stays
    key = hmac_md5(nt_hash("pw"), "STRAßE".encode("utf-16-le") + b"D\x00")
    assert ntowfv2(nt_hash("pw"), "straße", "D") == key


def test_filetime():
    assert filetime(0) == 116_444_736_000_000_000
    assert filetime(1_987_654_321.5) == 116_444_736_000_000_000 + 19_876_543_215_000_000
    assert filetime(-1.5) == 116_444_736_000_000_000 - 15_000_000
    assert filetime(1e-7) == 116_444_736_000_000_001


# --- session security: keys and signatures against pyspnego --------------------------------------------

KEY = bytes(range(16))
KEY_FLAG_SETS = [
    NF.NEGOTIATE_EXTENDED_SESSIONSECURITY | NF.NEGOTIATE_128,
    NF.NEGOTIATE_EXTENDED_SESSIONSECURITY | NF.NEGOTIATE_128 | NF.NEGOTIATE_56,
    NF.NEGOTIATE_EXTENDED_SESSIONSECURITY | NF.NEGOTIATE_56,
    NF.NEGOTIATE_EXTENDED_SESSIONSECURITY,
    NF.NEGOTIATE_LM_KEY | NF.NEGOTIATE_56,
    NF.NEGOTIATE_LM_KEY,
    NF.NEGOTIATE_DATAGRAM | NF.NEGOTIATE_56,
    NF.NEGOTIATE_DATAGRAM,
    NF.NEGOTIATE_128,
    NegotiateFlags(0),
]


@pytest.mark.parametrize("flags", KEY_FLAG_SETS)
def test_seal_and_sign_keys_against_pyspnego(flags):
    for ours, theirs in (("client", "initiate"), ("server", "accept")):
        assert sealkey(flags, KEY, ours) == their_crypto.sealkey(flags, KEY, theirs)
        expected_sign = (
            their_crypto.signkey(flags, KEY, theirs) if flags & NF.NEGOTIATE_EXTENDED_SESSIONSECURITY else None
        )
        assert signkey(flags, KEY, ours) == expected_sign


def test_seal_key_lengths_56_and_40_bit():
    ess = NF.NEGOTIATE_EXTENDED_SESSIONSECURITY
    magic = b"session key to client-to-server sealing key magic constant\x00"
    assert sealkey(ess | NF.NEGOTIATE_56, KEY, "client") == hashlib.md5(KEY[:7] + magic).digest()
    assert sealkey(ess, KEY, "client") == hashlib.md5(KEY[:5] + magic).digest()
    assert sealkey(ess | NF.NEGOTIATE_128, KEY, "client") == hashlib.md5(KEY + magic).digest()
    assert sealkey(NF.NEGOTIATE_LM_KEY | NF.NEGOTIATE_56, KEY, "client") == KEY[:7] + b"\xa0"
    assert sealkey(NF.NEGOTIATE_LM_KEY, KEY, "server") == KEY[:5] + b"\xe5\x38\xb0"
    assert sealkey(NF.NEGOTIATE_56, KEY, "server") == KEY
    assert sealkey(ess, KEY, "client") != sealkey(ess, KEY, "server")
    assert signkey(ess, KEY, "client") != signkey(ess, KEY, "server")


SIGNING_FLAG_SETS = [
    NF.NEGOTIATE_SIGN | NF.NEGOTIATE_EXTENDED_SESSIONSECURITY | NF.NEGOTIATE_128 | NF.NEGOTIATE_KEY_EXCH,
    NF.NEGOTIATE_SIGN | NF.NEGOTIATE_EXTENDED_SESSIONSECURITY | NF.NEGOTIATE_56 | NF.NEGOTIATE_KEY_EXCH,
    NF.NEGOTIATE_SIGN | NF.NEGOTIATE_EXTENDED_SESSIONSECURITY | NF.NEGOTIATE_KEY_EXCH,
    NF.NEGOTIATE_SIGN | NF.NEGOTIATE_EXTENDED_SESSIONSECURITY | NF.NEGOTIATE_128,
    NF.NEGOTIATE_SIGN | NF.NEGOTIATE_128,
    NF.NEGOTIATE_SIGN | NF.NEGOTIATE_LM_KEY | NF.NEGOTIATE_56,
]


def _their_signatures(flags, mode: str, messages, seqs):
    usage = "initiate" if mode == "client" else "accept"
    handle = their_crypto.rc4init(their_crypto.sealkey(flags, KEY, usage))
    key = their_crypto.signkey(flags, KEY, usage) if flags & NF.NEGOTIATE_EXTENDED_SESSIONSECURITY else None
    return [their_security.sign(flags, handle, key, seq, m) for m, seq in zip(messages, seqs, strict=True)]


@pytest.mark.parametrize("flags", SIGNING_FLAG_SETS)
def test_signatures_against_pyspnego(flags):
    messages = [b"one", b"two", b"", b"x" * 1000]
    ess = bool(flags & NF.NEGOTIATE_EXTENDED_SESSIONSECURITY)
    session = NtlmSession(flags, KEY)
    assert [session.sign(m) for m in messages] == _their_signatures(flags, "server", messages, [0, 1, 2, 3])
    # incoming: own counter from 0 with ESS, the shared counter (now at 4) without
    seqs = [0, 1, 2, 3] if ess else [4, 5, 6, 7]
    for message, signature in zip(messages, _their_signatures(flags, "client", messages, seqs), strict=True):
        session.verify_mic(message, signature)


@pytest.mark.parametrize("flags", SIGNING_FLAG_SETS)
def test_bad_signatures_are_refused(flags):
    good = _their_signatures(flags, "client", [b"msg"], [0])[0]
    for position in range(16):
        bad = bytearray(good)
        bad[position] ^= 0x80
        session = NtlmSession(flags, KEY)
        if bytes(bad) == good:
            continue
        assert reason(session.verify_mic, b"msg", bytes(bad)) == "bad-mic", position
    for bad in (good[:15], good + b"\x00", b"", good.hex(), None, list(good)):
        assert reason(NtlmSession(flags, KEY).verify_mic, b"msg", bad) == "bad-mic"
    assert reason(NtlmSession(flags, KEY).verify_mic, b"msh", good) == "bad-mic"
    session = NtlmSession(flags, KEY)
    session.verify_mic(b"msg", bytearray(good))
    assert reason(session.verify_mic, b"msg", good) == "bad-mic"  # replayed: next sequence number


def test_signature_without_sign_flag_is_the_sspi_dummy():
    session = NtlmSession(NF.NEGOTIATE_ALWAYS_SIGN | NF.NEGOTIATE_EXTENDED_SESSIONSECURITY, KEY)
    dummy = b"\x01" + bytes(15)
    assert session.sign(b"anything") == dummy
    session.verify_mic(b"anything", dummy)
    assert reason(session.verify_mic, b"x", bytes(16)) == "bad-mic"


def test_reset_rc4_restarts_one_direction():
    flags = SIGNING_FLAG_SETS[0]
    session = NtlmSession(flags, KEY)
    first = session.sign(b"m")
    session.reset_rc4(incoming=False)
    restarted = session.sign(b"m")
    fresh = NtlmSession(flags, KEY)
    fresh._next_seq(incoming=False)
    assert restarted == fresh.sign(b"m") and restarted != first
    assert restarted[12:] == struct.pack("<I", 1)  # the counter was not reset
    # incoming: verify, reset, the client's next signature made with a fresh key stream verifies
    client = _their_signatures(flags, "client", [b"a"], [0])[0]
    session.verify_mic(b"a", client)
    session.reset_rc4(incoming=True)
    session.verify_mic(b"b", _their_signatures(flags, "client", [b"b"], [1])[0])
    # resetting the incoming stream leaves the outgoing one alone
    s1, s2 = NtlmSession(flags, KEY), NtlmSession(flags, KEY)
    s1.sign(b"m"), s2.sign(b"m")
    s1.reset_rc4(incoming=True)
    assert s1.sign(b"n") == s2.sign(b"n")
    with pytest.raises(TypeError):
        session.reset_rc4(True)  # keyword only


# --- boundaries found by mutation testing -------------------------------------------------------


def test_twelve_bytes_are_enough_to_tell_the_message_type():
    assert reason(NegotiateMessage.unpack, b"NTLMSSP\x00\x02\x00\x00\x00") == "unexpected-message"
    assert reason(ChallengeMessage.unpack, b"NTLMSSP\x00\x03\x00\x00\x00") == "unexpected-message"
    assert reason(AuthenticateMessage.unpack, b"NTLMSSP\x00\x01\x00\x00\x00") == "unexpected-message"
    assert reason(NegotiateMessage.unpack, b"NTLMSSP\x00\x01\x00\x00") == "malformed"


def test_negotiate_of_exactly_32_bytes_reads_its_fields():
    raw = NegotiateMessage(NF.NEGOTIATE_UNICODE).pack()
    assert len(raw) == 32
    assert reason(NegotiateMessage.unpack, _field(raw, 16, 2, 32)) == "malformed"  # past the end
    assert NegotiateMessage.unpack(raw[:31] + b"\x00").flags == NF.NEGOTIATE_UNICODE


def test_challenge_version_boundaries():
    flags = NF.NEGOTIATE_UNICODE | NF.NEGOTIATE_VERSION
    exact = ChallengeMessage(flags, bytes(8), version=Version(6, 3, 9600, 15)).pack()
    assert len(exact) == 56 and ChallengeMessage.unpack(exact).version == Version(6, 3, 9600, 15)
    bare = ChallengeMessage(NF.NEGOTIATE_UNICODE, bytes(8)).pack()
    with_flag = bare[:20] + struct.pack("<I", flags) + bare[24:]
    assert len(with_flag) == 48 and ChallengeMessage.unpack(with_flag).version is None
    named = ChallengeMessage(flags, bytes(8), "T", version=Version()).pack()
    assert ChallengeMessage.unpack(named).target_name == "T"
    for into_version in (48, 52, 55):
        assert reason(ChallengeMessage.unpack, _field(named, 12, 2, into_version)) == "malformed"
    no_version = ChallengeMessage(NF.NEGOTIATE_UNICODE, bytes(8), "T").pack()
    assert ChallengeMessage.unpack(_field(no_version, 12, 2, 48)).target_name == "T"


def test_sign_without_key_exch_keeps_the_base_key_even_with_a_sent_key():
    flags = FULL & ~NF.NEGOTIATE_KEY_EXCH
    acc, token = exchange(negotiate_flags=flags, flags=FULL, enc_key=b"\x99" * 16)
    result = accepted(acc, token)
    assert not result.flags & NF.NEGOTIATE_KEY_EXCH
    assert result.exported_session_key == result.session_base_key


def test_av_flags_with_high_bits():
    pairs = (AvPair(AvId.MsvAvFlags, struct.pack("<I", 0x80000002)),)
    acc, token = exchange(mic_flag=False, extra_pairs=pairs)
    assert accepted(acc, token).mic_present
    assert TargetInfo(pairs).flags() & AvFlags.MIC_PROVIDED


def test_target_info_pack_full_16_bit_range():
    big = TargetInfo((AvPair(0x8001, b"\x01" * 40000),))
    assert TargetInfo.unpack(big.pack()) == big
    assert big.pack()[:4] == struct.pack("<HH", 0x8001, 40000)


def test_lone_surrogates_are_encoded_not_refused():
    # Windows strings are UTF-16 code units; an unpaired surrogate still has an encoding.
    from Crypto.Hash import MD4

    assert nt_hash("\ud800") == MD4.new(b"\x00\xd8").digest()
    assert ntowfv2(nt_hash("pw"), "u\udc00", "D") == hmac_md5(nt_hash("pw"), b"U\x00\x00\xdcD\x00")
    raw = AuthenticateMessage(NF.NEGOTIATE_UNICODE, user_name="\udc00x").pack()
    assert raw[64:68] == b"\x00\xdcx\x00"


def test_filetime_is_unsigned_64_bit():
    # FILETIME is a 64-bit unsigned count; the top bit is a valid (far-future) time, not a sign
    late = 2**63 + 12_345 * SECOND
    acc = new_acceptor(now=late)
    negotiate = NegotiateMessage(FULL).pack()
    challenge = acc.challenge(negotiate)
    assert ChallengeMessage.unpack(challenge).target_info.timestamp() == late
    assert accepted(acc, build(negotiate, challenge), late + 5 * SECOND).mic_present
    rebuilt = NtlmAcceptor.from_messages(
        negotiate=negotiate,
        challenge=challenge,
        server_challenge=SERVER_CHALLENGE,
        challenge_time=late,
        channel_binding_data=BINDING,
    )
    assert rebuilt.challenge_time == late
