"""SPNEGO fuzzing with oracles: DER is canonical, so an accepted NegTokenResp re-encodes to the
very same bytes and an accepted NegTokenInit to a token that parses the same; the acceptor never
completes on a changed AUTHENTICATE leg. Bounded like test_ntlm_fuzz.py."""

from __future__ import annotations

import os

import spnego
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from spnego.channel_bindings import GssChannelBindings

from ucgate.protocols.ntlm import NtlmError, nt_hash
from ucgate.protocols.spnego import (
    NegTokenInit,
    NegTokenResp,
    RawKerberos,
    RawNtlm,
    SpnegoError,
    SpnegoNtlmAcceptor,
    encode_neg_token_init,
    encode_neg_token_resp,
    parse_negotiate_token,
)

from .test_ntlm import NOW, TLS_BINDING, make_acceptor
from .test_ntlm_fuzz import mutated

EXAMPLES = int(os.environ.get("UCGATE_FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _exchange():
    client = spnego.client(
        "EXAMPLE\\alice",
        "Password",
        hostname="gw1.example.test",
        service="HTTP",
        protocol="negotiate",
        channel_bindings=GssChannelBindings(application_data=TLS_BINDING),
    )
    init = client.step()
    acc = SpnegoNtlmAcceptor(make_acceptor())
    challenge = acc.step(init)
    return init, challenge, client.step(challenge)


INIT, CHALLENGE, RESP = _exchange()


def parse(data):
    try:
        return parse_negotiate_token(data)
    except SpnegoError as exc:
        assert exc.reason in ("malformed", "too-large", "unsupported-mech")
        return None


@FUZZ
@given(st.one_of(mutated(INIT), mutated(CHALLENGE), mutated(RESP)))
def test_accepted_tokens_re_encode(data):
    token = parse(data)
    if token is None:
        return
    if isinstance(token, NegTokenResp):
        again = encode_neg_token_resp(token.neg_state, token.supported_mech, token.response_token, token.mech_list_mic)
        assert again == data
    elif isinstance(token, NegTokenInit):
        again = parse_negotiate_token(encode_neg_token_init(token.mech_types, token.mech_token, token.mech_list_mic))
        assert again == token
        assert token.raw_mech_types in data
    elif isinstance(token, RawNtlm):
        assert data.startswith(b"NTLMSSP\x00") and token.token == data
    else:
        assert isinstance(token, RawKerberos) and token.token == data


@FUZZ
@given(mutated(RESP))
def test_a_changed_authenticate_leg_never_completes_as_someone_else(data):
    acc = SpnegoNtlmAcceptor(make_acceptor())
    acc.step(INIT)
    try:
        acc.identify(data)
        acc.verify([nt_hash("Password")], NOW)
        final = acc.final_token()
    except (SpnegoError, NtlmError):
        return
    original, got = parse_negotiate_token(RESP), parse_negotiate_token(data)
    assert got.response_token == original.response_token  # the NTLM MIC covers the AUTHENTICATE
    assert got.mech_list_mic == original.mech_list_mic  # and the mechListMIC was verified
    assert parse_negotiate_token(final).neg_state == 0
