"""NTLM acceptor against captured bytes: pyspnego and impacket exchanges (tests/protocols/
ntlm_captures.py), the MS-NLMP 4.2.4 example messages, and the hand-over of a handshake to the
id service (messages -> from_messages -> verify -> adopt) replayed on those bytes."""

from __future__ import annotations

import struct

import pytest
from Crypto.Cipher import ARC4

from ucgate.protocols.ntlm import (
    AuthenticateMessage,
    AvId,
    AvPair,
    ChallengeMessage,
    NegotiateFlags,
    NegotiateMessage,
    NtlmAcceptor,
    NtlmError,
    TargetInfo,
    VerifyResult,
    Version,
    hmac_md5,
    nt_hash,
    ntowfv2,
)

from .ntlm_captures import CAPTURE_ACCEPTOR, CAPTURES, CLIENT_MESSAGE, PASSWORD, SERVER_MESSAGE, TLS_BINDING

NF = NegotiateFlags
NOW = CAPTURE_ACCEPTOR["now"]
SECOND = 10_000_000
OTHER_BINDING = b"tls-server-end-point:" + bytes(32)


def cap(name: str) -> dict[str, bytes]:
    return {k: bytes.fromhex(v) for k, v in CAPTURES[name].items()}


def acceptor(binding: bytes | None = TLS_BINDING, mode: str = "require", **kw) -> NtlmAcceptor:
    return NtlmAcceptor(**{**CAPTURE_ACCEPTOR, **kw}, channel_binding_data=binding, extended_protection=mode)


def reason(fn, *args, **kw) -> str:
    with pytest.raises(NtlmError) as err:
        fn(*args, **kw)
    assert err.value.message  # every refusal says why, for the log
    return err.value.reason


def replay(name: str, binding: bytes | None = TLS_BINDING, mode: str = "require", **kw) -> NtlmAcceptor:
    """An acceptor that answered the captured NEGOTIATE and identified the AUTHENTICATE."""
    c = cap(name)
    acc = acceptor(binding, mode, **kw)
    assert acc.challenge(c["negotiate"]) == c["challenge"]  # our CHALLENGE is pinned byte for byte
    acc.identify(c["authenticate"])
    return acc


# --- our CHALLENGE, byte for byte ---------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CAPTURES))
def test_our_challenge_is_the_captured_one(name):
    c = cap(name)
    acc = acceptor()
    assert acc.state == "initial"
    assert acc.challenge(c["negotiate"]) == c["challenge"]
    assert acc.state == "challenged" and not acc.complete
    assert acc.server_challenge == CAPTURE_ACCEPTOR["server_challenge"]
    assert acc.challenge_time == NOW


def test_pyspnego_challenge_fields():
    c = cap("pyspnego-cbt")
    negotiate = NegotiateMessage.unpack(c["negotiate"])
    assert negotiate.flags == 0xE2088237
    assert negotiate.version == Version(0, 12, 4, 15)
    assert negotiate.domain_name is None and negotiate.workstation is None
    assert negotiate.pack() == c["negotiate"]
    challenge = ChallengeMessage.unpack(c["challenge"])
    # echoed: UNICODE, REQUEST_TARGET(+TARGET_TYPE_DOMAIN), SIGN, NTLM, ALWAYS_SIGN, ESS,
    # TARGET_INFO, VERSION, 128, KEY_EXCH, 56; not OEM, SEAL? (asked: 0x20 yes), LM_KEY? no.
    assert challenge.flags == 0xE2898235
    assert challenge.server_challenge == CAPTURE_ACCEPTOR["server_challenge"]
    assert challenge.target_name == "EXAMPLE"
    assert challenge.version == Version()
    assert [(p.av_id, p.value) for p in challenge.target_info.pairs] == [
        (AvId.MsvAvNbDomainName, "EXAMPLE".encode("utf-16-le")),
        (AvId.MsvAvNbComputerName, "GW1".encode("utf-16-le")),
        (AvId.MsvAvDnsDomainName, "example.test".encode("utf-16-le")),
        (AvId.MsvAvDnsComputerName, "gw1.example.test".encode("utf-16-le")),
        (AvId.MsvAvDnsTreeName, "example.test".encode("utf-16-le")),
        (AvId.MsvAvTimestamp, struct.pack("<Q", NOW)),
    ]
    assert challenge.pack() == c["challenge"]


def test_impacket_challenge_fields():
    c = cap("impacket-no-sign")
    negotiate = NegotiateMessage.unpack(c["negotiate"])
    assert negotiate.version is None
    challenge = ChallengeMessage.unpack(c["challenge"])
    assert challenge.flags & NF.NEGOTIATE_UNICODE and challenge.flags & NF.NEGOTIATE_TARGET_INFO
    assert challenge.flags & NF.NEGOTIATE_NTLM
    assert not challenge.flags & (NF.NEGOTIATE_LM_KEY | NF.NEGOTIATE_DATAGRAM | NF.NEGOTIATE_OEM)
    assert (
        not challenge.flags
        & ~(negotiate.flags | NF.NEGOTIATE_NTLM | NF.NEGOTIATE_TARGET_INFO | NF.TARGET_TYPE_DOMAIN)
        & 0xFFFFFFFF
    )
    assert challenge.pack() == c["challenge"]


# --- the captured AUTHENTICATE messages verify, with the clients' keys ----------------------------


@pytest.mark.parametrize(
    "name, user, domain, mic, binding",
    [
        ("pyspnego-cbt", "alice", "EXAMPLE", True, "verified"),
        ("pyspnego-no-cbt", "alice", "EXAMPLE", True, "absent"),
        ("pyspnego-upn", "alice@example.test", "", True, "verified"),
        ("impacket-sign-cbt", "bob", "EXAMPLE", False, "verified"),
        ("impacket-no-sign", "bob", "EXAMPLE", False, "absent"),
    ],
)
def test_captured_authenticate_verifies(name, user, domain, mic, binding):
    c = cap(name)
    acc = acceptor(mode="allow")
    acc.challenge(c["negotiate"])
    identity = acc.identify(c["authenticate"])
    assert (identity.user, identity.domain) == (user, domain)
    assert acc.state == "identified"
    result = acc.verify([nt_hash("not it"), nt_hash(PASSWORD)], NOW + 5 * SECOND)
    assert result.candidate_index == 1
    assert result.exported_session_key == c["session_key"]
    assert result.mic_present is mic
    assert result.channel_binding == binding
    assert result.target_name == "HTTP/gw1.example.test"
    auth = AuthenticateMessage.unpack(c["authenticate"])
    key = ntowfv2(nt_hash(PASSWORD), user, domain)
    assert result.session_base_key == hmac_md5(key, auth.nt_challenge_response[:16])
    # agreed flags: what the client sent, less session-security flags our CHALLENGE did not echo
    challenge_flags = ChallengeMessage.unpack(c["challenge"]).flags
    assert result.flags == auth.flags & (challenge_flags | ~0xE2188030 & 0xFFFFFFFF)
    assert acc.complete and acc.state == "complete"
    assert acc.session.flags == result.flags


@pytest.mark.parametrize("name", ["pyspnego-cbt", "pyspnego-no-cbt", "pyspnego-upn"])
def test_captured_session_signatures(name):
    c = cap(name)
    acc = replay(name, mode="allow")
    acc.verify([nt_hash(PASSWORD)], NOW)
    acc.session.verify_mic(CLIENT_MESSAGE, c["client_sig"])
    assert acc.session.sign(SERVER_MESSAGE) == c["server_sig"]


def test_captured_client_signature_tampered_or_replayed_is_refused():
    c = cap("pyspnego-cbt")
    for position in (0, 4, 11, 12, 15):
        acc = replay("pyspnego-cbt")
        acc.verify([nt_hash(PASSWORD)], NOW)
        bad = bytearray(c["client_sig"])
        bad[position] ^= 0x01
        assert reason(acc.session.verify_mic, CLIENT_MESSAGE, bytes(bad)) == "bad-mic"
    acc = replay("pyspnego-cbt")
    acc.verify([nt_hash(PASSWORD)], NOW)
    assert reason(acc.session.verify_mic, CLIENT_MESSAGE + b"!", c["client_sig"]) == "bad-mic"
    acc = replay("pyspnego-cbt")
    acc.verify([nt_hash(PASSWORD)], NOW)
    acc.session.verify_mic(CLIENT_MESSAGE, c["client_sig"])
    # the same signature again has the wrong sequence number
    assert reason(acc.session.verify_mic, CLIENT_MESSAGE, c["client_sig"]) == "bad-mic"


@pytest.mark.parametrize("name", ["pyspnego-cbt", "impacket-sign-cbt"])
def test_captured_channel_binding_refusals(name):
    assert replay(name).verify([nt_hash(PASSWORD)], NOW).channel_binding == "verified"
    acc = replay(name, binding=OTHER_BINDING)
    assert reason(acc.verify, [nt_hash(PASSWORD)], NOW) == "channel-binding-mismatch"
    assert acc.state == "failed"
    acc = replay(name, binding=None)
    assert reason(acc.verify, [nt_hash(PASSWORD)], NOW) == "channel-binding-mismatch"
    assert (
        replay(name, binding=OTHER_BINDING, mode="off").verify([nt_hash(PASSWORD)], NOW).channel_binding
        == "not-checked"
    )


@pytest.mark.parametrize("name", ["pyspnego-no-cbt", "impacket-no-sign"])
def test_captured_without_binding(name):
    acc = replay(name)
    assert reason(acc.verify, [nt_hash(PASSWORD)], NOW) == "channel-binding-missing"
    assert replay(name, binding=None).verify([nt_hash(PASSWORD)], NOW).channel_binding == "absent"
    assert replay(name, mode="allow").verify([nt_hash(PASSWORD)], NOW).channel_binding == "absent"


def test_require_mic_accepts_pyspnego_refuses_impacket():
    assert replay("pyspnego-cbt", require_mic=True).verify([nt_hash(PASSWORD)], NOW).mic_present
    acc = replay("impacket-sign-cbt", require_mic=True)
    assert reason(acc.verify, [nt_hash(PASSWORD)], NOW) == "mic-missing"


@pytest.mark.parametrize("name", ["pyspnego-cbt", "impacket-sign-cbt"])
def test_captured_wrong_password(name):
    acc = replay(name)
    assert reason(acc.verify, [nt_hash("password"), nt_hash("Password ")], NOW) == "wrong-password"
    assert acc.state == "identified"
    assert reason(acc.verify, [], NOW) == "wrong-password"
    assert acc.verify([nt_hash(PASSWORD)], NOW).candidate_index == 0


# --- the MIC covers the bytes as received ---------------------------------------------------------

_FIELD_POSITIONS = {"lm": 12, "nt": 20, "domain": 28, "user": 36, "workstation": 44, "key": 52}


def relayout(raw: bytes, order: list[str], gap: bytes = b"", trailer: bytes = b"") -> bytes:
    """The same AUTHENTICATE with its payload fields in ``order`` (Windows puts the names first),
    ``gap`` between the header and the payload and ``trailer`` after it; MIC left as it was."""
    header = bytearray(raw[:88])
    values = {}
    for name, pos in _FIELD_POSITIONS.items():
        length, _, offset = struct.unpack_from("<HHI", raw, pos)
        values[name] = raw[offset : offset + length]
    payload = b""
    offset = 88 + len(gap)
    for name in order:
        struct.pack_into("<HHI", header, _FIELD_POSITIONS[name], len(values[name]), len(values[name]), offset)
        payload += values[name]
        offset += len(values[name])
    return bytes(header) + gap + payload + trailer


def with_mic(negotiate: bytes, challenge: bytes, raw: bytes, exported: bytes) -> bytes:
    zeroed = raw[:72] + bytes(16) + raw[88:]
    return raw[:72] + hmac_md5(exported, negotiate + challenge + zeroed) + raw[88:]


WINDOWS_ORDER = ["domain", "user", "workstation", "lm", "nt", "key"]


@pytest.mark.parametrize("gap, trailer", [(b"", b""), (b"\x00" * 6, b""), (b"", b"\x00\x00")])
def test_mic_over_a_windows_layout_verifies(gap, trailer):
    c = cap("pyspnego-cbt")
    raw = with_mic(
        c["negotiate"], c["challenge"], relayout(c["authenticate"], WINDOWS_ORDER, gap, trailer), c["session_key"]
    )
    parsed = AuthenticateMessage.unpack(raw)
    assert parsed.pack() != raw  # our packer would lay it out differently
    assert parsed.zeroed_mic_bytes() == raw[:72] + bytes(16) + raw[88:]
    acc = acceptor()
    acc.challenge(c["negotiate"])
    acc.identify(raw)
    result = acc.verify([nt_hash(PASSWORD)], NOW)
    assert result.mic_present and result.exported_session_key == c["session_key"]
    # the relaid message with the original MIC (computed over the other layout) does not verify
    acc = acceptor()
    acc.challenge(c["negotiate"])
    acc.identify(relayout(c["authenticate"], WINDOWS_ORDER, gap, trailer))
    assert reason(acc.verify, [nt_hash(PASSWORD)], NOW) == "bad-mic"


def test_mic_covers_negotiate_and_challenge_as_exchanged():
    c = cap("pyspnego-cbt")
    # the id service rebuilt with the right messages verifies...
    args = dict(
        server_challenge=CAPTURE_ACCEPTOR["server_challenge"], challenge_time=NOW, channel_binding_data=TLS_BINDING
    )
    acc = NtlmAcceptor.from_messages(negotiate=c["negotiate"], challenge=c["challenge"], **args)
    acc.identify(c["authenticate"])
    acc.verify([nt_hash(PASSWORD)], NOW)
    # ...with a CHALLENGE naming other servers (not checked by from_messages) the MIC fails,
    other = NtlmAcceptor(**{**CAPTURE_ACCEPTOR, "netbios_computer": "GW2"}, channel_binding_data=None)
    challenge2 = other.challenge(c["negotiate"])
    assert challenge2 != c["challenge"]
    acc = NtlmAcceptor.from_messages(negotiate=c["negotiate"], challenge=challenge2, **args)
    acc.identify(c["authenticate"])
    assert reason(acc.verify, [nt_hash(PASSWORD)], NOW) == "bad-mic"
    # and so it does with a NEGOTIATE padded by one byte (same flags, other bytes).
    acc = NtlmAcceptor.from_messages(negotiate=c["negotiate"] + b"\x00", challenge=c["challenge"], **args)
    acc.identify(c["authenticate"])
    assert reason(acc.verify, [nt_hash(PASSWORD)], NOW) == "bad-mic"


@pytest.mark.parametrize("position", [60, 62, 64, 70, 100, 300, -20, -1])
def test_any_byte_flip_outside_the_mic_is_refused(position):
    c = cap("pyspnego-cbt")
    token = bytearray(c["authenticate"])
    token[position] ^= 0x01
    acc = acceptor()
    acc.challenge(c["negotiate"])
    try:
        acc.identify(bytes(token))
        acc.verify([nt_hash(PASSWORD)], NOW)
    except NtlmError as exc:
        assert exc.reason in ("bad-mic", "wrong-password", "malformed")
    else:
        pytest.fail("a changed AUTHENTICATE verified")


# --- hand-over to the id service (messages, from_messages, adopt) -----------------------------


@pytest.mark.parametrize("name", ["pyspnego-cbt", "impacket-sign-cbt"])
def test_split_exchange_on_captured_bytes(name):
    c = cap(name)
    gateway = acceptor()
    with pytest.raises(NtlmError) as err:
        gateway.messages()
    assert err.value.reason == "unexpected-message"
    gateway.challenge(c["negotiate"])
    assert reason(gateway.messages) == "unexpected-message"
    gateway.identify(c["authenticate"])
    negotiate, challenge, authenticate = gateway.messages()
    assert (negotiate, challenge, authenticate) == (c["negotiate"], c["challenge"], c["authenticate"])

    verifier = NtlmAcceptor.from_messages(
        negotiate=negotiate,
        challenge=challenge,
        server_challenge=gateway.server_challenge,
        challenge_time=gateway.challenge_time,
        channel_binding_data=TLS_BINDING,
    )
    assert verifier.state == "challenged"
    verifier.identify(authenticate)
    assert verifier.messages() == (negotiate, challenge, authenticate)
    result = verifier.verify([nt_hash(PASSWORD)], NOW + 60 * SECOND)
    assert result.exported_session_key == c["session_key"]
    assert result.channel_binding == "verified"

    gateway.adopt(result)
    assert gateway.complete
    assert gateway.session.flags == result.flags
    if "client_sig" in c:
        gateway.session.verify_mic(CLIENT_MESSAGE, c["client_sig"])
        assert gateway.session.sign(SERVER_MESSAGE) == c["server_sig"]
    assert reason(gateway.adopt, result) == "unexpected-message"


def test_adopt_refusals():
    c = cap("pyspnego-cbt")
    gateway = acceptor()
    good = VerifyResult(0, bytes(16), c["session_key"], "verified", NegotiateFlags(0xE2898235), True)
    assert reason(gateway.adopt, good) == "unexpected-message"  # not identified yet
    gateway.challenge(c["negotiate"])
    assert reason(gateway.adopt, good) == "unexpected-message"
    gateway.identify(c["authenticate"])
    for key in (b"", bytes(15), bytes(17)):
        bad = VerifyResult(0, bytes(16), key, "verified", NegotiateFlags(0xE2898235))
        assert reason(gateway.adopt, bad) == "bad-argument"
        assert gateway.state == "identified"
    gateway.adopt(good)
    assert gateway.state == "complete"
    gateway.session.verify_mic(CLIENT_MESSAGE, c["client_sig"])


def from_messages_args(name: str = "pyspnego-cbt", **kw) -> dict:
    c = cap(name)
    args = dict(
        negotiate=c["negotiate"],
        challenge=c["challenge"],
        server_challenge=CAPTURE_ACCEPTOR["server_challenge"],
        challenge_time=NOW,
        channel_binding_data=TLS_BINDING,
    )
    args.update(kw)
    return args


def _challenge_without_target_info() -> bytes:
    c = ChallengeMessage.unpack(cap("pyspnego-cbt")["challenge"])
    c.target_info = None
    return c.pack()


def _challenge_without_timestamp() -> bytes:
    c = ChallengeMessage.unpack(cap("pyspnego-cbt")["challenge"])
    c.target_info = TargetInfo(tuple(p for p in c.target_info.pairs if p.av_id != AvId.MsvAvTimestamp))
    return c.pack()


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"negotiate": cap("impacket-no-sign")["negotiate"]}, "bad-argument"),  # other flags
        ({"challenge": cap("impacket-no-sign")["challenge"]}, "bad-argument"),
        ({"server_challenge": bytes.fromhex("0123456789abcdee")}, "bad-argument"),
        ({"server_challenge": b"short"}, "bad-argument"),
        ({"challenge_time": NOW + 1}, "bad-argument"),
        ({"challenge_time": NOW - 1}, "bad-argument"),
        ({"challenge": _challenge_without_target_info()}, "bad-argument"),
        ({"challenge": _challenge_without_timestamp()}, "bad-argument"),
        ({"negotiate": b"NTLMSSP\x00\x01\x00\x00\x00"}, "malformed"),
        ({"negotiate": cap("pyspnego-cbt")["challenge"]}, "unexpected-message"),
        ({"challenge": cap("pyspnego-cbt")["negotiate"]}, "unexpected-message"),
        ({"challenge": b"NTLMSSP\x00\x02\x00\x00\x00" + bytes(20)}, "malformed"),
        ({"negotiate": NegotiateMessage(NF.NEGOTIATE_NTLM).pack()}, "unsupported"),
        ({"extended_protection": "sometimes"}, "bad-argument"),
        ({"max_clock_skew": -1}, "bad-argument"),
    ],
)
def test_from_messages_refusals(change, expected):
    assert reason(NtlmAcceptor.from_messages, **from_messages_args(**change)) == expected


def test_from_messages_passes_the_settings_on():
    args = from_messages_args()
    acc = NtlmAcceptor.from_messages(**{**args, "channel_binding_data": OTHER_BINDING})
    acc.identify(cap("pyspnego-cbt")["authenticate"])
    assert reason(acc.verify, [nt_hash(PASSWORD)], NOW) == "channel-binding-mismatch"
    acc = NtlmAcceptor.from_messages(**{**args, "channel_binding_data": OTHER_BINDING, "extended_protection": "off"})
    acc.identify(cap("pyspnego-cbt")["authenticate"])
    assert acc.verify([nt_hash(PASSWORD)], NOW).channel_binding == "not-checked"
    acc = NtlmAcceptor.from_messages(**{**from_messages_args("pyspnego-no-cbt"), "extended_protection": "allow"})
    acc.identify(cap("pyspnego-no-cbt")["authenticate"])
    assert acc.verify([nt_hash(PASSWORD)], NOW).channel_binding == "absent"
    acc = NtlmAcceptor.from_messages(**from_messages_args("pyspnego-no-cbt"))  # default: require
    acc.identify(cap("pyspnego-no-cbt")["authenticate"])
    assert reason(acc.verify, [nt_hash(PASSWORD)], NOW) == "channel-binding-missing"
    # default skew 300 s; a smaller one is passed on
    acc = NtlmAcceptor.from_messages(**args)
    acc.identify(cap("pyspnego-cbt")["authenticate"])
    assert acc.verify([nt_hash(PASSWORD)], NOW + 300 * SECOND).candidate_index == 0
    acc = NtlmAcceptor.from_messages(**args)
    acc.identify(cap("pyspnego-cbt")["authenticate"])
    assert reason(acc.verify, [nt_hash(PASSWORD)], NOW + 300 * SECOND + 1) == "stale-timestamp"
    acc = NtlmAcceptor.from_messages(**{**args, "max_clock_skew": 10})
    acc.identify(cap("pyspnego-cbt")["authenticate"])
    assert reason(acc.verify, [nt_hash(PASSWORD)], NOW + 11 * SECOND) == "stale-timestamp"
    impacket = from_messages_args("impacket-sign-cbt")
    acc = NtlmAcceptor.from_messages(**impacket)
    acc.identify(cap("impacket-sign-cbt")["authenticate"])
    assert acc.verify([nt_hash(PASSWORD)], NOW).mic_present is False
    acc = NtlmAcceptor.from_messages(**{**impacket, "require_mic": True})
    acc.identify(cap("impacket-sign-cbt")["authenticate"])
    assert reason(acc.verify, [nt_hash(PASSWORD)], NOW) == "mic-missing"


# --- MS-NLMP 4.2.4 NTLMv2 example ----------------------------------------------------------------

# 4.2.4.3 CHALLENGE_MESSAGE: flags 0xe28a8233, Version 6.0.6000, TargetName "Server",
# TargetInfo MsvAvNbDomainName "Domain", MsvAvNbComputerName "Server".
MS_CHALLENGE = bytes.fromhex(
    "4e544c4d53535000020000000c000c003800000033828ae20123456789abcdef00000000000000002400240044000000"
    "060070170000000f53006500720076006500720002000c0044006f006d00610069006e0001000c005300650072007600"
    "6500720000000000"
)


def test_ms_nlmp_4_2_4_3_challenge_byte_for_byte():
    msg = ChallengeMessage.unpack(MS_CHALLENGE)
    assert msg.flags == 0xE28A8233
    assert msg.server_challenge == bytes.fromhex("0123456789abcdef")
    assert msg.target_name == "Server"
    assert msg.version == Version(6, 0, 6000, 15)
    assert msg.target_info == TargetInfo(
        (
            AvPair(AvId.MsvAvNbDomainName, "Domain".encode("utf-16-le")),
            AvPair(AvId.MsvAvNbComputerName, "Server".encode("utf-16-le")),
        )
    )
    assert msg.target_info.timestamp() is None
    assert msg.pack() == MS_CHALLENGE
    rebuilt = ChallengeMessage(
        NegotiateFlags(0xE28A8233),
        bytes.fromhex("0123456789abcdef"),
        "Server",
        msg.target_info,
        Version(6, 0, 6000, 15),
    )
    assert rebuilt.pack() == MS_CHALLENGE


def test_ms_nlmp_4_2_4_ntlmv2_response_and_keys():
    from .test_ntlm import MS_AUTHENTICATE, MS_AV_PAIRS

    auth = AuthenticateMessage.unpack(MS_AUTHENTICATE)
    key = ntowfv2(nt_hash("Password"), "User", "Domain")
    # 4.2.4.2.2: temp = 0x0101 Z(6) Time(0) ClientChallenge(aa*8) Z(4) ServerName Z(4)
    temp = auth.nt_challenge_response[16:]
    assert temp == bytes.fromhex("01010000000000000000000000000000aaaaaaaaaaaaaaaa00000000") + MS_AV_PAIRS + bytes(4)
    proof = hmac_md5(key, bytes.fromhex("0123456789abcdef") + temp)
    assert proof.hex() == "68cd0ab851e51c96aabc927bebef6a1c"
    # 4.2.4.2.1 LMv2 response = HMAC_MD5(NTOWFv2, server || client challenge) || client challenge
    lmv2 = hmac_md5(key, bytes.fromhex("0123456789abcdef") + b"\xaa" * 8) + b"\xaa" * 8
    assert lmv2 == auth.lm_challenge_response
    # 4.2.4.1.2 SessionBaseKey, 4.2.4.2.3 EncryptedSessionKey = RC4K(KeyExchangeKey, RandomSessionKey)
    base = hmac_md5(key, proof)
    assert base.hex() == "8de40ccadbc14a82f15cb0ad0de95ca3"
    assert ARC4.new(base).encrypt(b"\x55" * 16) == auth.encrypted_random_session_key
    # verified against the 4.2.4.3 CHALLENGE itself through from_messages
    negotiate = NegotiateMessage(NegotiateFlags(0xE28A8233) & ~NF.REQUEST_TARGET).pack()
    with pytest.raises(NtlmError) as err:
        NtlmAcceptor.from_messages(
            negotiate=negotiate,
            challenge=MS_CHALLENGE,
            server_challenge=bytes.fromhex("0123456789abcdef"),
            challenge_time=0,
            channel_binding_data=None,
        )
    assert err.value.reason == "bad-argument"  # its flags are not what we would answer
