"""What the NTLM acceptor does to be cheaper, held to what it did before:

* the hand-over of the gateway's parse to an id service in the same process
  (``NtlmAcceptor.parsed`` -> ``from_messages(parsed=...)``): the same results and refusals as
  parsing the messages again, and a parse of other messages is never taken;
* our CHALLENGE built from bytes (``_challenge_bytes``) is ``ChallengeMessage(...).pack()``;
* ``hmac_md5`` over CPython's MD5 is ``hmac.new(key, data, hashlib.md5)``;
* session keys and RC4 handles made on first use give the eager ones' signatures.
"""

from __future__ import annotations

import hashlib
import hmac

import pytest
from Crypto.Cipher import ARC4
from hypothesis import given, settings
from hypothesis import strategies as st

from ucgate.protocols import ntlm
from ucgate.protocols.ntlm import (
    AvId,
    AvPair,
    ChallengeMessage,
    NegotiateFlags,
    NtlmAcceptor,
    NtlmError,
    NtlmSession,
    Parsed,
    TargetInfo,
    Version,
    hmac_md5,
    nt_hash,
    sealkey,
    signkey,
)

from .ntlm_captures import CAPTURE_ACCEPTOR, CAPTURES, CLIENT_MESSAGE, PASSWORD, SERVER_MESSAGE, TLS_BINDING

NOW = CAPTURE_ACCEPTOR["now"]
SECOND = 10_000_000
HYP = settings(max_examples=200, deadline=None, database=None)


def cap(name: str) -> dict[str, bytes]:
    return {k: bytes.fromhex(v) for k, v in CAPTURES[name].items()}


def identified(name: str) -> NtlmAcceptor:
    c = cap(name)
    acc = NtlmAcceptor(**CAPTURE_ACCEPTOR, channel_binding_data=TLS_BINDING)
    acc.challenge(c["negotiate"])
    acc.identify(c["authenticate"])
    return acc


def reason(fn, *args, **kw) -> str:
    with pytest.raises(NtlmError) as err:
        fn(*args, **kw)
    return err.value.reason


def args_of(name: str, **kw) -> dict:
    c = cap(name)
    return {
        "negotiate": c["negotiate"],
        "challenge": c["challenge"],
        "server_challenge": CAPTURE_ACCEPTOR["server_challenge"],
        "challenge_time": NOW,
        "channel_binding_data": TLS_BINDING,
        **kw,
    }


def outcome(acc: NtlmAcceptor, authenticate: bytes, candidates: list[bytes], now: int) -> tuple:
    """identify + verify as one comparable value: the result's fields or the refusal."""
    try:
        who = acc.identify(authenticate)
        r = acc.verify(candidates, now)
    except NtlmError as e:
        return ("refused", e.reason, acc.state)
    return (
        who,
        r.candidate_index,
        r.session_base_key,
        r.exported_session_key,
        r.channel_binding,
        int(r.flags),
        type(r.flags),
        r.mic_present,
        r.target_name,
        acc.state,
        int(acc.session.flags),
    )


# --- the hand-over ---------------------------------------------------------------------------


def test_parsed_needs_an_identified_exchange():
    c = cap("pyspnego-cbt")
    acc = NtlmAcceptor(**CAPTURE_ACCEPTOR, channel_binding_data=TLS_BINDING)
    assert reason(acc.parsed) == "unexpected-message"
    acc.challenge(c["negotiate"])
    assert reason(acc.parsed) == "unexpected-message"
    acc.identify(c["authenticate"])
    p = acc.parsed()
    assert (p.negotiate, p.challenge, p.authenticate) == acc.messages()
    assert p.server_challenge == acc.server_challenge and p.challenge_time == acc.challenge_time
    assert "authenticate" not in repr(p) and p.authenticate.hex() not in repr(p)  # no message bytes in reprs


@pytest.mark.parametrize("name", sorted(CAPTURES))
@pytest.mark.parametrize(
    "candidates, at",
    [
        ([nt_hash(PASSWORD)], NOW + 60 * SECOND),
        ([nt_hash("wrong"), nt_hash(PASSWORD)], NOW),
        ([nt_hash("wrong")], NOW),
        ([nt_hash(PASSWORD)], NOW + 301 * SECOND),  # stale
    ],
)
def test_handed_parse_gives_the_same_outcome(name, candidates, at):
    gateway = identified(name)
    handed = NtlmAcceptor.from_messages(**args_of(name), parsed=gateway.parsed())
    fresh = NtlmAcceptor.from_messages(**args_of(name))
    authenticate = cap(name)["authenticate"]
    assert outcome(handed, authenticate, candidates, at) == outcome(fresh, authenticate, candidates, at)


def test_handed_parse_is_taken():
    gateway = identified("pyspnego-cbt")
    p = gateway.parsed()
    verifier = NtlmAcceptor.from_messages(**args_of("pyspnego-cbt"), parsed=p)
    verifier.identify(p.authenticate)
    assert verifier._auth is p.message and verifier._client_challenge is p.client_challenge
    result = verifier.verify([nt_hash(PASSWORD)], NOW)
    assert result.exported_session_key == cap("pyspnego-cbt")["session_key"]
    gateway.adopt(result)
    gateway.session.verify_mic(CLIENT_MESSAGE, cap("pyspnego-cbt")["client_sig"])
    assert gateway.session.sign(SERVER_MESSAGE) == cap("pyspnego-cbt")["server_sig"]


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"negotiate": cap("impacket-no-sign")["negotiate"]}, "bad-argument"),
        ({"challenge": cap("impacket-no-sign")["challenge"]}, "bad-argument"),
        ({"server_challenge": bytes.fromhex("0123456789abcdee")}, "bad-argument"),
        ({"server_challenge": b"short"}, "bad-argument"),
        ({"challenge_time": NOW + 1}, "bad-argument"),
        ({"negotiate": b"NTLMSSP\x00\x01\x00\x00\x00"}, "malformed"),
        ({"challenge": cap("pyspnego-cbt")["negotiate"]}, "unexpected-message"),
        ({"extended_protection": "sometimes"}, "bad-argument"),
        ({"max_clock_skew": -1}, "bad-argument"),
    ],
)
def test_a_parse_of_other_messages_is_not_taken(change, expected):
    """The same refusals as without a hand-over (test_ntlm_captures.test_from_messages_refusals)."""
    p = identified("pyspnego-cbt").parsed()
    assert reason(NtlmAcceptor.from_messages, **args_of("pyspnego-cbt", **change), parsed=p) == expected
    assert reason(NtlmAcceptor.from_messages, **args_of("pyspnego-cbt", **change)) == expected


def test_a_parse_of_another_exchange_is_not_taken():
    other = identified("impacket-sign-cbt").parsed()
    acc = NtlmAcceptor.from_messages(**args_of("pyspnego-cbt"), parsed=other)
    authenticate = cap("pyspnego-cbt")["authenticate"]
    acc.identify(authenticate)
    assert acc._auth is not other.message and acc._auth.raw == authenticate
    assert acc.verify([nt_hash(PASSWORD)], NOW).exported_session_key == cap("pyspnego-cbt")["session_key"]


def test_another_authenticate_is_parsed_itself():
    """The hand-over is of the AUTHENTICATE's bytes: other bytes are parsed and refused as ever."""
    name = "pyspnego-cbt"
    p = identified(name).parsed()
    authenticate = cap(name)["authenticate"]
    broken = authenticate[:12] + b"\xff\xff" + authenticate[14:]  # LmChallengeResponse past the end
    for parsed in (p, None):
        acc = NtlmAcceptor.from_messages(**args_of(name), parsed=parsed)
        assert reason(acc.identify, broken) == "malformed"
        assert acc.state == "failed"
    # a changed byte inside the NTLMv2 response: parsed anew, and it no longer verifies
    i = authenticate.index(p.client_challenge.raw) + 20
    changed = authenticate[:i] + bytes([authenticate[i] ^ 1]) + authenticate[i + 1 :]
    acc = NtlmAcceptor.from_messages(**args_of(name), parsed=p)
    acc.identify(changed)
    assert acc._auth is not p.message
    assert reason(acc.verify, [nt_hash(PASSWORD)], NOW) == "wrong-password"


def test_a_forged_parse_of_the_same_bytes_is_checked_like_any():
    """``Parsed`` carries the sender's parse; the refusals of identify run on it again (a
    refused message can never get through a hand-over)."""
    p = identified("pyspnego-cbt").parsed()
    anonymous = Parsed(
        negotiate=p.negotiate,
        challenge=p.challenge,
        authenticate=p.authenticate,
        server_challenge=p.server_challenge,
        challenge_time=p.challenge_time,
        challenge_flags=p.challenge_flags,
        message=ntlm.AuthenticateMessage(flags=p.message.flags, user_name=""),
        client_challenge=p.client_challenge,
    )
    acc = NtlmAcceptor.from_messages(**args_of("pyspnego-cbt"), parsed=anonymous)
    assert reason(acc.identify, p.authenticate) == "anonymous"


# --- the CHALLENGE built from bytes ------------------------------------------------------------

NAME = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)


@HYP
@given(
    flags=st.integers(0, 2**32 - 1),
    server_challenge=st.binary(min_size=8, max_size=8),
    names=st.tuples(NAME, NAME, NAME, NAME),
    now=st.integers(0, 2**64 - 1),
)
def test_challenge_bytes_are_the_packed_message(flags, server_challenge, names, now):
    nb_domain, nb_computer, dns_domain, dns_computer = names
    info = TargetInfo(
        (
            AvPair(AvId.MsvAvNbDomainName, nb_domain.encode("utf-16-le")),
            AvPair(AvId.MsvAvNbComputerName, nb_computer.encode("utf-16-le")),
            AvPair(AvId.MsvAvDnsDomainName, dns_domain.encode("utf-16-le")),
            AvPair(AvId.MsvAvDnsComputerName, dns_computer.encode("utf-16-le")),
            AvPair(AvId.MsvAvDnsTreeName, dns_domain.encode("utf-16-le")),
            AvPair(AvId.MsvAvTimestamp, now.to_bytes(8, "little")),
        )
    )
    expected = ChallengeMessage(
        flags=NegotiateFlags(flags),
        server_challenge=server_challenge,
        target_name=nb_domain if flags & NegotiateFlags.REQUEST_TARGET else None,
        target_info=info,
        version=Version() if flags & NegotiateFlags.NEGOTIATE_VERSION else None,
    ).pack()
    assert ntlm._challenge_bytes(flags, server_challenge, names, now) == expected


def test_challenge_bytes_bound_the_payload_as_pack_does():
    names = ("D" * 20000, "C" * 20000, "d", "c")  # each pair fits, the TargetInfo does not
    info = TargetInfo(tuple(AvPair(AvId.MsvAvNbDomainName + i, n.encode("utf-16-le")) for i, n in enumerate(names)))
    assert reason(ChallengeMessage(NegotiateFlags(1), bytes(8), None, info).pack) == "bad-argument"
    assert reason(ntlm._challenge_bytes, 0x1, bytes(8), names, NOW) == "bad-argument"


# --- HMAC-MD5 and the lazy session keys --------------------------------------------------------


@HYP
@given(key=st.binary(max_size=200), data=st.binary(max_size=300))
def test_hmac_md5_is_hmac_new(key, data):
    assert hmac_md5(key, data) == hmac.new(key, data, hashlib.md5).digest()


def test_hmac_md5_of_other_buffers():
    assert hmac_md5(bytearray(b"k" * 16), memoryview(b"data")) == hmac.new(b"k" * 16, b"data", hashlib.md5).digest()


OPS = st.lists(
    st.one_of(
        st.tuples(st.just("sign"), st.binary(max_size=40)),
        st.tuples(st.just("mac-in"), st.binary(max_size=40)),
        st.tuples(st.sampled_from(["reset-in", "reset-out"]), st.just(b"")),
    ),
    max_size=8,
)


@HYP
@given(flags=st.integers(0, 2**32 - 1), key=st.binary(min_size=16, max_size=16), ops=OPS)
def test_lazy_session_signs_as_an_eager_one(flags, key, ops):
    """Keys and RC4 handles made on first use give what ones made at once (and at each reset)
    give: the same signatures, the same expected client signatures, whatever the order."""
    lazy, eager = NtlmSession(flags, key), NtlmSession(flags, key)

    def touch(s: NtlmSession) -> None:  # what the session did before: everything at once
        s._in.handle, s._out.handle  # noqa: B018

    touch(eager)
    assert eager._in.sign_key == signkey(flags, key, "client") and eager._out.sign_key == signkey(flags, key, "server")
    for op, message in ops:
        if op == "sign":
            assert lazy.sign(message) == eager.sign(message)
        elif op == "mac-in":  # what verify_mic compares a client's signature with
            a = lazy._mac(lazy._in, lazy._next_seq(incoming=True), message)
            assert a == eager._mac(eager._in, eager._next_seq(incoming=True), message)
        else:
            lazy.reset_rc4(incoming=op == "reset-in")
            eager.reset_rc4(incoming=op == "reset-in")
            touch(eager)
    # and the handles are RC4 under the SEALKEYs
    for mode, d in (("client", lazy._in), ("server", lazy._out)):
        lazy.reset_rc4(incoming=mode == "client")
        assert d.handle.encrypt(bytes(8)) == ARC4.new(sealkey(flags, key, mode)).encrypt(bytes(8))
