"""Fuzzing with oracles: not only "no foreign exception" (test_ntlm_fuzz.py) but what must hold
for whatever the parsers accept: a canonical re-encoding parses to the same message, every field
lies where its descriptor says and overlaps nothing, the CHALLENGE never offers a flag it must
not, and a changed AUTHENTICATE never verifies. Bounded like test_ntlm_fuzz.py."""

from __future__ import annotations

import itertools
import os
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ucgate.protocols import ntlm as ntlm_proto
from ucgate.protocols.ntlm import (
    AuthenticateMessage,
    ChallengeMessage,
    NegotiateFlags,
    NegotiateMessage,
    NtlmAcceptor,
    NtlmError,
    TargetInfo,
    nt_hash,
)

from .ntlm_captures import CAPTURE_ACCEPTOR, CAPTURES, PASSWORD, TLS_BINDING
from .test_ntlm_fuzz import mutated

NF = NegotiateFlags
EXAMPLES = int(os.environ.get("UCGATE_FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
CAP = {k: bytes.fromhex(v) for k, v in CAPTURES["pyspnego-cbt"].items()}
IMPACKET = {k: bytes.fromhex(v) for k, v in CAPTURES["impacket-sign-cbt"].items()}
NOW = CAPTURE_ACCEPTOR["now"]


def acceptor() -> NtlmAcceptor:
    return NtlmAcceptor(**CAPTURE_ACCEPTOR, channel_binding_data=TLS_BINDING)


def parsed_or_none(parser, data):
    try:
        return parser(data)
    except NtlmError as exc:
        assert exc.reason in ("malformed", "too-large", "unexpected-message"), exc.reason
        return None


def check_fields(data: bytes, positions, header_end: int) -> None:
    """Independent re-reading of the payload descriptors of an accepted message."""
    spans = []
    for pos in positions:
        length, _, offset = struct.unpack_from("<HHI", data, pos)
        if length:
            assert header_end <= offset and offset + length <= len(data)
            spans.append((offset, offset + length))
    spans.sort()
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert end <= start


@FUZZ
@given(st.one_of(mutated(CAP["authenticate"]), mutated(IMPACKET["authenticate"])))
def test_accepted_authenticate_is_well_formed_and_round_trips(data):
    msg = parsed_or_none(AuthenticateMessage.unpack, data)
    if msg is None:
        return
    check_fields(data, (12, 20, 28, 36, 44, 52), 64)
    assert msg.flags == struct.unpack_from("<I", data, 60)[0] and msg.raw == data
    if msg.mic is not None:
        assert msg.mic == data[72:88]
        assert msg.zeroed_mic_bytes() == data[:72] + bytes(16) + data[88:]
    again = AuthenticateMessage.unpack(msg.pack())
    assert (again.user_name, again.domain_name, again.workstation) == (msg.user_name, msg.domain_name, msg.workstation)
    assert again.nt_challenge_response == msg.nt_challenge_response
    assert again.encrypted_random_session_key == msg.encrypted_random_session_key and again.mic == msg.mic


@FUZZ
@given(st.one_of(mutated(CAP["negotiate"]), mutated(IMPACKET["negotiate"])))
def test_accepted_negotiate_round_trips_and_challenge_offers_only_allowed_flags(data):
    msg = parsed_or_none(NegotiateMessage.unpack, data)
    if msg is None:
        return
    assert msg.flags == struct.unpack_from("<I", data, 12)[0]
    assert NegotiateMessage.unpack(msg.pack()) == msg
    acc = acceptor()
    try:
        challenge = ChallengeMessage.unpack(acc.challenge(data))
    except NtlmError as exc:
        assert exc.reason == "unsupported" and not msg.flags & (NF.NEGOTIATE_UNICODE | NF.NEGOTIATE_OEM)
        return
    flags = challenge.flags
    assert bool(flags & NF.NEGOTIATE_UNICODE) != bool(flags & NF.NEGOTIATE_OEM)
    assert not flags & (
        NF.NEGOTIATE_LM_KEY
        | NF.NEGOTIATE_DATAGRAM
        | NF.NEGOTIATE_ANONYMOUS
        | NF.REQUEST_NON_NT_SESSION_KEY
        | NF.TARGET_TYPE_SERVER
    )
    allowed = msg.flags | NF.NEGOTIATE_NTLM | NF.NEGOTIATE_TARGET_INFO | NF.TARGET_TYPE_DOMAIN
    assert not flags & ~allowed & 0xFFFFFFFF
    assert challenge.server_challenge == CAPTURE_ACCEPTOR["server_challenge"]
    assert challenge.target_info.timestamp() == NOW


@FUZZ
@given(mutated(CAP["challenge"]))
def test_accepted_challenge_round_trips(data):
    msg = parsed_or_none(ChallengeMessage.unpack, data)
    if msg is None:
        return
    assert msg.server_challenge == data[24:32] and msg.flags == struct.unpack_from("<I", data, 20)[0]
    check_fields(data, (12, 40), 48)
    again = ChallengeMessage.unpack(msg.pack())
    assert (again.flags, again.server_challenge, again.target_info) == (
        msg.flags,
        msg.server_challenge,
        msg.target_info,
    )


@FUZZ
@given(st.binary(max_size=300))
def test_accepted_target_info_round_trips(data):
    info = parsed_or_none(TargetInfo.unpack, data)
    if info is None:
        return
    assert TargetInfo.unpack(info.pack()) == info
    assert len({p.av_id for p in info.pairs}) == len(info.pairs)


@FUZZ
@given(
    st.one_of(
        mutated(CAP["authenticate"]).map(lambda d: (d, True)),
        mutated(IMPACKET["authenticate"]).map(lambda d: (d, False)),
    )
)
def test_a_changed_authenticate_never_verifies_to_another_identity(case):
    data, pyspnego = case
    source = CAP if pyspnego else IMPACKET
    original = AuthenticateMessage.unpack(source["authenticate"])
    acc = acceptor()
    acc.challenge(source["negotiate"])
    try:
        acc.identify(data)
        result = acc.verify([nt_hash(PASSWORD)], NOW)
    except NtlmError:
        assert not acc.complete
        return
    got = AuthenticateMessage.unpack(data)
    # what verifies is the authenticated content: same names, same response
    assert (got.user_name.upper(), got.domain_name) == (original.user_name.upper(), original.domain_name)
    assert got.nt_challenge_response == original.nt_challenge_response
    if pyspnego:  # the MIC covers every byte of the message, the key exchange included
        assert got == original
        assert result.exported_session_key == source["session_key"]
    else:  # without a MIC a changed key exchange only yields a key nobody holds
        assert (result.exported_session_key == source["session_key"]) == (
            _key_exchange(acc, got.flags) == _key_exchange(acc, original.flags)
            and got.encrypted_random_session_key == original.encrypted_random_session_key
        )


def _key_exchange(acc, flags) -> bool:
    """Whether the acceptor decrypts the EncryptedRandomSessionKey (MS-NLMP 3.2.5.1.2): KEY_EXCH
    with SIGN or SEAL, of the flags both sides agreed to (the echoed ones as the challenge offered
    them). A mutated flag word may turn it off, and then the exported key is the session base key."""
    nf = ntlm_proto.NegotiateFlags
    f = int(flags) & (int(acc._challenge_flags) | ~int(ntlm_proto._ECHOED_FLAGS) & 0xFFFFFFFF)
    return bool(f & nf.NEGOTIATE_KEY_EXCH) and bool(f & (nf.NEGOTIATE_SIGN | nf.NEGOTIATE_SEAL))


@FUZZ
@given(st.binary(min_size=0, max_size=300))
def test_random_authenticate_never_verifies(data):
    acc = acceptor()
    acc.challenge(CAP["negotiate"])
    token = b"NTLMSSP\x00\x03\x00\x00\x00" + data
    try:
        acc.identify(token)
        acc.verify([nt_hash(PASSWORD), bytes(16)], NOW)
    except NtlmError as exc:
        assert exc.reason != "bad-argument"
    else:
        raise AssertionError("random bytes verified")
