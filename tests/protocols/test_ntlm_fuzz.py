"""Fuzzing: whatever bytes arrive, only NtlmError / SpnegoError may escape.

Bounded for CI (whole file < 20 s); set UCGATE_FUZZ_EXAMPLES=5000 (say) to run longer.
"""

from __future__ import annotations

import os

import spnego
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from spnego.channel_bindings import GssChannelBindings

from ucgate.protocols.ntlm import (
    AuthenticateMessage,
    ChallengeMessage,
    NegotiateMessage,
    NtlmError,
    TargetInfo,
    nt_hash,
)
from ucgate.protocols.spnego import SpnegoError, SpnegoNtlmAcceptor, parse_negotiate_token

from .test_ntlm import NOW, TLS_BINDING, make_acceptor

EXAMPLES = int(os.environ.get("UCGATE_FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)
PASSWORD_HASH = nt_hash("Password")


def _valid_ntlm_exchange() -> tuple[bytes, bytes]:
    """A NEGOTIATE and an AUTHENTICATE from pyspnego for make_acceptor()'s fixed challenge."""
    client = spnego.client(
        "EXAMPLE\\alice",
        "Password",
        hostname="gw1.example.test",
        service="HTTP",
        protocol="ntlm",
        channel_bindings=GssChannelBindings(application_data=TLS_BINDING),
    )
    negotiate = client.step()
    auth = client.step(make_acceptor().challenge(negotiate))
    return negotiate, auth


def _valid_spnego_exchange() -> tuple[bytes, bytes]:
    client = spnego.client(
        "EXAMPLE\\alice",
        "Password",
        hostname="gw1.example.test",
        service="HTTP",
        protocol="negotiate",
        channel_bindings=GssChannelBindings(application_data=TLS_BINDING),
    )
    init = client.step()
    resp = client.step(SpnegoNtlmAcceptor(make_acceptor()).step(init))
    return init, resp


NEGOTIATE, AUTHENTICATE = _valid_ntlm_exchange()
SPNEGO_INIT, SPNEGO_RESP = _valid_spnego_exchange()
CHALLENGE = make_acceptor().challenge(NEGOTIATE)


@st.composite
def mutated(draw, seed: bytes) -> bytes:
    """Flip, overwrite, insert, delete or truncate a few bytes of a valid message."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "word"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[pos] = draw(st.integers(0, 255))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete" and data:
            del data[pos : pos + draw(st.integers(1, 8))]
        elif op == "truncate":
            del data[pos:]
        elif op == "word" and len(data) >= 4:
            # offsets and lengths are 16/32-bit words: hit them with boundary values
            value = draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF, 0xFFFF, 0x10000, 0xFFFFFFFF]))
            pos = min(pos, len(data) - 4)
            data[pos : pos + 4] = value.to_bytes(4, "little")
    return bytes(data)


def ntlm_only(fn, *args):
    try:
        fn(*args)
    except NtlmError:
        pass


def any_refusal(fn, *args):
    try:
        return fn(*args)
    except (NtlmError, SpnegoError):
        return None


@FUZZ
@given(st.binary(max_size=600))
def test_random_bytes_ntlm_parsers(data):
    for parser in (NegotiateMessage.unpack, ChallengeMessage.unpack, AuthenticateMessage.unpack, TargetInfo.unpack):
        ntlm_only(parser, data)
        ntlm_only(parser, b"NTLMSSP\x00" + data)


@FUZZ
@given(st.binary(max_size=200).map(lambda d: b"NTLMSSP\x00\x03\x00\x00\x00" + d))
def test_random_authenticate_through_acceptor(data):
    acceptor = make_acceptor()
    acceptor.challenge(NEGOTIATE)
    try:
        acceptor.identify(data)
        acceptor.verify([PASSWORD_HASH], NOW)
    except NtlmError:
        pass


@FUZZ
@given(mutated(NEGOTIATE))
def test_mutated_negotiate(data):
    ntlm_only(NegotiateMessage.unpack, data)
    ntlm_only(make_acceptor().challenge, data)


@FUZZ
@given(mutated(AUTHENTICATE))
def test_mutated_authenticate_never_verifies_unless_unchanged(data):
    acceptor = make_acceptor()
    acceptor.challenge(NEGOTIATE)
    try:
        acceptor.identify(data)
        result = acceptor.verify([PASSWORD_HASH, nt_hash("other")], NOW)
    except NtlmError:
        return
    # Anything that still verifies must carry the same authenticated content (the MIC covers
    # the whole message; only bytes outside every field, e.g. trailing padding, may differ).
    assert result.channel_binding == "verified"
    original = AuthenticateMessage.unpack(AUTHENTICATE)
    parsed = AuthenticateMessage.unpack(data)
    assert parsed == original


@FUZZ
@given(mutated(CHALLENGE))
def test_mutated_challenge(data):
    ntlm_only(ChallengeMessage.unpack, data)


@FUZZ
@given(st.binary(max_size=400))
def test_random_bytes_negotiate_token(data):
    for candidate in (data, b"\x60" + data, b"\xa1" + data, b"\x60" + bytes([len(data) & 0x7F]) + data):
        try:
            parse_negotiate_token(candidate)
        except SpnegoError:
            pass


@FUZZ
@given(st.one_of(mutated(SPNEGO_INIT), mutated(SPNEGO_RESP)))
def test_mutated_spnego_tokens(data):
    try:
        parse_negotiate_token(data)
    except SpnegoError:
        pass


@FUZZ
@given(mutated(SPNEGO_INIT), mutated(SPNEGO_RESP), st.booleans())
def test_spnego_acceptor_with_mutations(init, resp, keep_init):
    acc = SpnegoNtlmAcceptor(make_acceptor())
    if any_refusal(acc.step, SPNEGO_INIT if keep_init else init) is None:
        return
    if any_refusal(acc.identify, resp) is None:
        return
    if any_refusal(acc.verify, [PASSWORD_HASH], NOW) is None:
        return
    assert any_refusal(acc.final_token) is not None
