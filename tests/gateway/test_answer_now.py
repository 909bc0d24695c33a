"""``answer_now`` (PreAuthenticator and the OAuth wrapper): the synchronous answer is exactly the
one ``await authenticate(...)`` gives — status, reason, headers, identity, close, the
connection's state afterwards and the log lines (the auth trace included) — and it answers
whenever no waiting is needed, and never when it is.

The property tests build twin authenticators (same random bytes, same clock) and twin
connections brought to the same state by the same requests, then ask one ``answer_now`` and the
other ``authenticate``. ``answer_now`` returning None must have done nothing (state and log
unchanged), and its twin must then have waited for something: the id service, the Kerberos
acceptor, or (an AUTHENTICATE leg) its structural checks before them.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime as dt
import logging
import random
from dataclasses import dataclass, field

import pytest
import spnego
import spnego.channel_bindings as cb
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from ucgate.config import AuthMethod, TraceLevel
from ucgate.gateway.connection import ClientConnection, Identity
from ucgate.gateway.kerberos import KerberosError
from ucgate.gateway.oauth import BearerAuthenticator, TokenMap, TokenRecord
from ucgate.gateway.preauth import (
    MAX_BASIC_HEADER,
    MAX_NTLM_HEADER,
    PreAuthenticator,
    PreAuthSettings,
    _BasicMemo,
    _NtlmHandshake,
)
from ucgate.id.api import NtlmVerdict, Verdict
from ucgate.protocols import spnego as spnego_proto
from ucgate.protocols.http1 import parse_request_head, request_special_re
from ucgate.protocols.sfb import Service

CBD = b"tls-server-end-point:" + bytes(range(32))
T0 = 1_700_000_000.0
UCWA = Service("ucwa", "/ucwa/")
EAS = Service("eas", "/microsoft-server-activesync")
SIGNED_IN = Identity("alice", "ntlm", signed_in_at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
MEMO_USER = Identity("bob", "basic", credential_id="7", signed_in_at=dt.datetime(2026, 1, 2, tzinfo=dt.UTC))
OTHER_DEVICE = Identity(
    "bob", "basic", device_id="other", credential_id="7", signed_in_at=dt.datetime(2026, 1, 2, tzinfo=dt.UTC)
)
MEMO_HEADER = base64.b64encode(b"bob:abcd-efgh-jkmn-pqrs")
PROP = settings(
    max_examples=400,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@dataclass
class FakeCredentials:
    """Records what reached the id service; refuses everything (the floor is 0 in these tests)."""

    calls: list[str] = field(default_factory=list)

    async def verify_password(self, name, password, ctx):
        self.calls.append("password")
        return Verdict(False, "wrong-password")

    async def verify_ntlm(self, handshake, ctx):
        self.calls.append("ntlm")
        return NtlmVerdict(Verdict(False, "wrong-password"))


@dataclass
class FakeKerberos:
    calls: list[bytes] = field(default_factory=list)

    def accept(self, token):
        self.calls.append(token)
        raise KerberosError("kerberos-refused", "a test ticket")


def twin(seed: int, *, trace: str, methods: tuple[str, ...], kerberos: bool, device: str | None):
    rng = random.Random(seed)
    creds, krb = FakeCredentials(), FakeKerberos() if kerberos else None
    auth = PreAuthenticator(
        creds,
        PreAuthSettings(
            netbios_domain="LAB",
            failure_floor=0.0,
            trace=TraceLevel(trace),
            methods=tuple(AuthMethod(m) for m in methods),
        ),
        rand=rng.randbytes,
        wallclock=lambda: T0,
        device_id_of=lambda req, service: device,
        kerberos=krb,
    )
    return auth, creds, krb


def head(authz: bytes | None, *, common: bool) -> object:
    raw = b"GET /ucwa/oauth/v1/applications HTTP/1.1\r\nHost: gw.lab.test\r\nUser-Agent: test\r\n"
    if authz is not None:
        raw += b"Authorization: " + authz + b"\r\n"
    raw += b"\r\n"
    return parse_request_head(raw, special=request_special_re(frozenset()) if common else None)


def ntlm_client(kind: str):
    return spnego.client(
        "LAB\\alice",
        "abcd-efgh-jkmn-pqrs",
        hostname="gw.lab.test",
        service="HTTP",
        protocol="ntlm" if kind == "ntlm" else "negotiate",
        channel_bindings=cb.GssChannelBindings(application_data=CBD),
        options=spnego.NegotiateOptions.use_ntlm,
    )


_NTLM_TYPE1 = ntlm_client("ntlm").step()
_NEGOTIATE_INIT = ntlm_client("negotiate").step()
_KERBEROS_INIT = spnego_proto.encode_neg_token_init(
    [spnego_proto.KRB5_OID, spnego_proto.NTLM_OID], mech_token=b"\x60\x05\x06\x03\x2a\x03\x04"
)


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


# Authorization values, by what they are (``None``: no field)
AUTHZ = st.one_of(
    st.sampled_from(
        [
            None,
            b"Basic " + MEMO_HEADER,  # the memo's credential (a hit when the memo is there)
            b"basic  " + MEMO_HEADER + b" ",
            b"Basic " + b64(b"carol:abcd-efgh-jkmn-pqrs"),  # a new credential: the id service
            b"Basic " + b64("dörte:pässword".encode()),
            b"Basic " + b64("dörte:pässword".encode("latin-1")),
            b"Basic " + b64(b"nocolon"),
            b"Basic " + b64(b":nouser"),
            b"Basic " + b64(b"ctl\x01user:pw"),
            b"Basic " + b64(b"u:" + b"p" * 257),
            b"Basic " + b64(b"u" * 257 + b":p"),
            b"Basic not*base64",
            b"Basic " + b"A" * (MAX_BASIC_HEADER + 4),
            b"Basic",
            b"NTLM " + b64(_NTLM_TYPE1),
            b"ntlm " + b64(_NTLM_TYPE1),
            b"NTLM " + b64(b"NTLMSSP\x00\x03\x00\x00\x00" + bytes(80)),  # an AUTHENTICATE (truncated)
            b"NTLM " + b64(b"NTLMSSP\x00\x02\x00\x00\x00" + bytes(40)),  # a CHALLENGE from the client
            b"NTLM " + b64(b"garbage"),
            b"NTLM %%%",
            b"NTLM " + b"A" * (MAX_NTLM_HEADER + 4),
            b"NTLM",
            b"Negotiate " + b64(_NEGOTIATE_INIT),
            b"Negotiate " + b64(_NTLM_TYPE1),
            b"Negotiate " + b64(_KERBEROS_INIT),
            b"Negotiate " + b64(b"\xa1\x03\x30\x01\x00"),
            b"Negotiate " + b64(b"\x30\x00"),
            b"Bearer cwt=abc",
            b"Digest username=x",
            b"Kerberos abc",
        ]
    ),
)
# What happened on the connection before: (steps to replay with authenticate, extra state)
STATE = st.sampled_from(["fresh", "signed-in", "memo", "memo-other-device", "ntlm-challenged", "negotiate-challenged"])


def prepare(auth: PreAuthenticator, conn: ClientConnection, state: str) -> None:
    """Bring ``conn`` to ``state`` (an NTLM handshake: by its NEGOTIATE, through authenticate)."""
    if state == "signed-in":
        conn.identity = SIGNED_IN
    elif state in ("memo", "memo-other-device"):
        ident = MEMO_USER if state == "memo" else OTHER_DEVICE
        conn.auth_state = _BasicMemo(auth._memo_digest(MEMO_HEADER), ident)
    elif state in ("ntlm-challenged", "negotiate-challenged"):
        token = _NTLM_TYPE1 if state == "ntlm-challenged" else _NEGOTIATE_INIT
        scheme = b"NTLM " if state == "ntlm-challenged" else b"Negotiate "
        if scheme.strip().lower().decode() not in auth.settings.methods:
            assume(False)  # no such handshake without the scheme
        out = asyncio.run(auth.authenticate(conn, head(scheme + b64(token), common=False), UCWA))
        assert out.reason == "ntlm-challenge", out


def conn_state(conn: ClientConnection) -> tuple:
    st_ = conn.auth_state
    if isinstance(st_, _NtlmHandshake):
        inner = st_.acceptor.ntlm if isinstance(st_.acceptor, spnego_proto.SpnegoNtlmAcceptor) else st_.acceptor
        auth_state: object = (
            "ntlm",
            st_.scheme,
            type(st_.acceptor).__name__,
            inner.state,
            inner.server_challenge,
            inner._challenge_raw,
            st_.started,
        )
    elif isinstance(st_, _BasicMemo):
        auth_state = ("memo", st_.digest, st_.identity)
    else:
        auth_state = st_
    return (conn.identity, conn.principal, auth_state, conn.closed_reason)


def outcome_tuple(o) -> tuple:
    return (o.status, o.reason, list(o.headers), o.identity, o.close, o.allowed)


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[tuple[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((record.levelname, record.getMessage()))


@pytest.fixture
def lines():
    h = Lines()
    lg = logging.getLogger("ucgate.gateway.auth")
    old = lg.level
    lg.setLevel(logging.DEBUG)
    lg.addHandler(h)
    yield h
    lg.removeHandler(h)
    lg.setLevel(old)


def new_conn(tls: bool) -> ClientConnection:
    return ClientConnection("192.0.2.7", 50000, tls, CBD if tls else None, 0.0)


def compare(lines, seed, trace, methods, kerberos, device, tls, state, authz, common, wrap=None):
    """answer_now on one twin, authenticate on the other: returns what answer_now said."""
    a, _, _ = twin(seed, trace=trace, methods=methods, kerberos=kerberos, device=device)
    b, creds_b, krb_b = twin(seed, trace=trace, methods=methods, kerberos=kerberos, device=device)
    k, creds_k, _ = twin(seed, trace=trace, methods=methods, kerberos=kerberos, device=device)
    if wrap is not None:
        a, b, k = wrap(a), wrap(b), wrap(k)
    ca, cb_, ck = new_conn(tls), new_conn(tls), new_conn(tls)
    prepare(getattr(a, "inner", a), ca, state)
    prepare(getattr(b, "inner", b), cb_, state)
    prepare(getattr(k, "inner", k), ck, state)
    assert conn_state(ca) == conn_state(cb_) == conn_state(ck)
    before = conn_state(ca)
    req_a, req_b = head(authz, common=common), head(authz, common=common)

    # known_now: answer_now's answer or None, and in both cases nothing logged or changed
    lines.lines.clear()
    known = k.known_now(ck, head(authz, common=common), UCWA)
    assert lines.lines == [] and conn_state(ck) == before and not creds_k.calls

    lines.lines.clear()
    now = a.answer_now(ca, req_a, UCWA)
    said_a, after_a = list(lines.lines), conn_state(ca)
    lines.lines.clear()
    later = asyncio.run(b.authenticate(cb_, req_b, UCWA))
    said_b, after_b = list(lines.lines), conn_state(cb_)

    if now is None:
        assert after_a == before and said_a == [], "answer_now did something and then said None"
        waited = bool(creds_b.calls) or bool(krb_b and krb_b.calls)
        # an AUTHENTICATE for the handshake on the connection (identify may refuse it before the id service)
        authenticate_leg = authz is not None and state == authz.partition(b" ")[0].lower().decode() + "-challenged"
        assert waited or authenticate_leg, f"answer_now said None for {later} that needed no waiting"
    else:
        assert outcome_tuple(now) == outcome_tuple(later)
        assert after_a == after_b
        assert said_a == said_b
        assert not creds_b.calls and not (krb_b and krb_b.calls), "answer_now answered what needed the id service"
    if known is not None:
        assert now is not None and known.allowed and outcome_tuple(known) == outcome_tuple(now)
        assert after_a == before and said_a == [], "known_now answered a request whose answer logs or changes state"
    return now


METHODS = st.sampled_from(
    [
        ("negotiate", "ntlm", "basic"),
        ("negotiate", "ntlm", "basic"),
        ("negotiate", "ntlm", "basic"),
        ("ntlm", "basic"),
        ("basic",),
        ("negotiate", "ntlm"),
        ("ntlm",),
        ("negotiate",),
    ]
)


@PROP
@given(
    seed=st.integers(0, 2**32),
    trace=st.sampled_from(["none", "low", "verbose"]),
    methods=METHODS,
    kerberos=st.booleans(),
    device=st.sampled_from([None, "dev1"]),
    tls=st.sampled_from([True, True, False]),
    state=STATE,
    authz=AUTHZ,
    common=st.booleans(),
)
def test_answer_now_is_authenticate(lines, seed, trace, methods, kerberos, device, tls, state, authz, common):
    note(compare(lines, seed, trace, methods, kerberos, device, tls, state, authz, common))


def note(now) -> None:
    event("waits" if now is None else "allows" if now.allowed else f"answers {now.status} {now.reason}")


def wrapped(tokens: TokenMap):
    return lambda inner: BearerAuthenticator(inner, tokens, published_name="gw.lab.test")


@PROP
@given(
    seed=st.integers(0, 2**32),
    trace=st.sampled_from(["none", "low"]),
    tls=st.booleans(),
    state=STATE,
    authz=st.one_of(AUTHZ, st.sampled_from([b"Bearer cwt=known", b"bearer  cwt=known ", b"Bearer cwt=unknown"])),
)
def test_oauth_answer_now_is_authenticate(lines, seed, trace, tls, state, authz):
    def tokens() -> TokenMap:
        m = TokenMap(clock=lambda: T0)
        m.add(b"cwt=known", TokenRecord("dave", "s1", T0 + 3600, dt.datetime(2026, 1, 3, tzinfo=dt.UTC)))
        return m

    # a fresh map per twin: TokenMap.get moves the entry (an LRU), so the twins must not share one
    made = [tokens(), tokens(), tokens()]
    wrap = lambda inner: BearerAuthenticator(inner, made.pop(), published_name="gw.lab.test")  # noqa: E731
    note(compare(lines, seed, trace, ("negotiate", "ntlm", "basic"), False, None, tls, state, authz, True, wrap))


# --- what it answers and what it leaves (examples) ---------------------------------------------


def example(lines, state, authz, *, tls=True, trace="none", methods=("negotiate", "ntlm", "basic"), kerberos=False):
    return compare(lines, 7, trace, methods, kerberos, None, tls, state, authz, True)


def test_known_identities_and_the_memo(lines):
    assert example(lines, "signed-in", None).identity == SIGNED_IN
    assert example(lines, "memo", b"Basic " + MEMO_HEADER).identity == MEMO_USER
    assert example(lines, "memo", b"Basic " + MEMO_HEADER, trace="verbose").identity == MEMO_USER
    assert example(lines, "memo-other-device", b"Basic " + MEMO_HEADER) is None  # another device: verified


def test_the_challenge_legs(lines):
    ntlm = example(lines, "fresh", b"NTLM " + b64(_NTLM_TYPE1), trace="low")
    assert (ntlm.status, ntlm.reason) == (401, "ntlm-challenge")
    assert ntlm.headers[0][1].startswith(b"NTLM TlRMTVNTUAACAAAA")
    neg = example(lines, "signed-in", b"Negotiate " + b64(_NEGOTIATE_INIT))  # re-authenticates
    assert (neg.status, neg.reason) == (401, "ntlm-challenge")
    assert example(lines, "ntlm-challenged", b"NTLM " + b64(_NTLM_TYPE1)).reason == "ntlm-challenge"  # starts over


@pytest.mark.parametrize(
    "state, authz, tls, status, reason",
    [
        ("fresh", None, True, 401, "no-credentials"),
        ("fresh", b"Basic " + MEMO_HEADER, False, 403, "basic-requires-tls"),
        ("fresh", b"Basic not*base64", True, 400, "basic-bad-base64"),
        ("fresh", b"Basic " + b64(b"nocolon"), True, 400, "basic-malformed"),
        ("fresh", b"Basic " + b"A" * (MAX_BASIC_HEADER + 1), True, 400, "basic-too-large"),
        ("fresh", b"NTLM %%%", True, 400, "token-bad-base64"),
        ("ntlm-challenged", b"NTLM " + b"A" * (MAX_NTLM_HEADER + 1), True, 400, "token-too-large"),
        ("fresh", b"NTLM " + b64(b"garbage"), True, 401, "ntlm-malformed"),
        ("fresh", b"Digest username=x", True, 401, "unsupported-scheme"),
    ],
)
def test_refusals_without_the_store(lines, state, authz, tls, status, reason):
    got = example(lines, state, authz, tls=tls, trace="low")
    assert (got.status, got.reason) == (status, reason)


@pytest.mark.parametrize(
    "state, authz, kerberos",
    [
        ("fresh", b"Basic " + b64(b"carol:abcd-efgh-jkmn-pqrs"), False),  # a new credential
        ("memo", b"Basic " + b64(b"carol:abcd-efgh-jkmn-pqrs"), False),  # another one than the memo's
        ("ntlm-challenged", b"NTLM " + b64(b"NTLMSSP\x00\x03\x00\x00\x00" + bytes(80)), False),  # AUTHENTICATE
        ("negotiate-challenged", b"Negotiate " + b64(b"\xa1\x03\x30\x01\x00"), False),
        ("fresh", b"Negotiate " + b64(_KERBEROS_INIT), True),  # a ticket
    ],
)
def test_what_must_wait(lines, state, authz, kerberos):
    assert example(lines, state, authz, kerberos=kerberos, trace="verbose") is None


def test_a_negotiate_kerberos_token_without_kerberos_is_ntlms(lines):
    # no Kerberos acceptor: Negotiate is NTLM only and the token is refused at once
    got = example(lines, "fresh", b"Negotiate " + b64(_KERBEROS_INIT), kerberos=False)
    assert got is not None and got.status == 401 and got.reason.startswith("ntlm-")


def test_bearer(lines):
    tokens = TokenMap(clock=lambda: T0)
    tokens.add(b"cwt=known", TokenRecord("dave", "s1", T0 + 3600, dt.datetime(2026, 1, 3, tzinfo=dt.UTC)))
    inner, _, _ = twin(1, trace="none", methods=("ntlm", "basic"), kerberos=False, device=None)
    auth = BearerAuthenticator(inner, tokens, published_name="gw.lab.test")
    conn = new_conn(True)
    assert auth.answer_now(conn, head(b"Bearer cwt=known", common=True), UCWA).identity.user == "dave"
    unknown = auth.answer_now(conn, head(b"Bearer cwt=other", common=True), UCWA)
    assert (unknown.status, unknown.reason) == (401, "bearer-unknown")
    # not a Bearer service: the inner authenticator's (an unsupported scheme there)
    assert auth.answer_now(conn, head(b"Bearer cwt=known", common=True), EAS).reason == "unsupported-scheme"
    challenge = auth.answer_now(conn, head(None, common=True), UCWA)  # a 401 with the OAuth challenges
    assert [v.split(b" ")[0] for _, v in challenge.headers] == [b"NTLM", b"Basic", b"Bearer", b"MsRtcOAuth"]
    assert auth.answer_now(conn, head(b"Basic " + b64(b"carol:abcd-efgh-jkmn-pqrs"), common=True), UCWA) is None


def test_an_inner_authenticator_without_answer_now():
    class Plain:
        async def authenticate(self, conn, req, service):
            raise AssertionError("not called by answer_now")

    auth = BearerAuthenticator(Plain(), TokenMap())
    assert auth.answer_now(new_conn(True), head(None, common=True), UCWA) is None


def test_a_bearer_token_known_again_on_its_connection_is_the_maps_record():
    """``known_now`` keeps the token last found on the connection (``conn.bearer``) so that
    the keep-alive requests that repeat it are not hashed again; it must still answer what
    the map answers now: an event that drops the token, its expiry, a device bound to it,
    another token on the same connection."""
    now = [T0]
    tokens = TokenMap(clock=lambda: now[0])
    rec = TokenRecord("dave", "s1", T0 + 60, dt.datetime(2026, 1, 3, tzinfo=dt.UTC))
    tokens.add(b"cwt=known", rec)
    tokens.add(b"cwt=erin", TokenRecord("erin", "s2", T0 + 60, dt.datetime(2026, 1, 3, tzinfo=dt.UTC)))
    inner, _, _ = twin(1, trace="none", methods=("ntlm", "basic"), kerberos=False, device=None)
    auth = BearerAuthenticator(inner, tokens, published_name="gw.lab.test")
    conn = new_conn(True)

    def known(authz: bytes):
        return auth.known_now(conn, head(authz, common=True), UCWA)

    first = known(b"Bearer cwt=known")
    assert first.identity.user == "dave" and conn.bearer is not None
    assert known(b"Bearer cwt=known") is first  # known again: the same answer, made once
    assert known(b"Bearer cwt=erin").identity.user == "erin"  # another token: not the kept one
    assert known(b"Bearer cwt=known").identity.user == "dave"
    tokens.bind_device(b"cwt=known", "dev-1")  # the device gate bound it: the identity names it
    assert known(b"Bearer cwt=known").identity.device_id == "dev-1"
    assert tokens.drop(lambda r: r.user == "dave") == 1  # UserBlocked, from any process's event
    assert known(b"Bearer cwt=known") is None
    refused = auth.answer_now(conn, head(b"Bearer cwt=known", common=True), UCWA)
    assert (refused.status, refused.reason) == (401, "bearer-unknown")
    tokens.add(b"cwt=known", TokenRecord("dave", "s3", T0 + 60, dt.datetime(2026, 1, 3, tzinfo=dt.UTC)))
    assert known(b"Bearer cwt=known").identity.user == "dave"
    now[0] = T0 + 61  # expired: refused on the next request, not kept
    assert known(b"Bearer cwt=known") is None
    assert known(b"Bearer cwt=erin") is None


def test_the_bearer_backend_credentials_are_the_requests_token():
    """The Bearer token goes to the front end as the request sent it; the credentials made
    for the last one are reused only for the same token."""
    from ucgate.gateway.exchange import Exchange
    from ucgate.gateway.forward import Forwarder

    conn = new_conn(True)
    identity = Identity("dave", "bearer")

    def backend(authz: bytes):
        ex = Exchange(conn, head(authz, common=True), None, 1.0)  # type: ignore[arg-type]
        ex.identity = identity
        assert Forwarder.prepare_backend_now(None, ex) is None  # type: ignore[arg-type]
        return ex.auth

    a = backend(b"Bearer cwt=one")
    assert a.headers == [(b"Authorization", b"Bearer cwt=one")] and a.lines() == b"\r\nAuthorization: Bearer cwt=one"
    assert backend(b"Bearer cwt=one") is a
    b = backend(b"Bearer cwt=two")
    assert b.headers == [(b"Authorization", b"Bearer cwt=two")] and b.lines() == b"\r\nAuthorization: Bearer cwt=two"


# --- with an id service that answers on the loop (an in-process one) -------------------------

CAROL = (b"Basic " + b64(b"carol:abcd-efgh-jkmn-pqrs"), Verdict(True, "ok", user="carol", credential_id="9"))


@dataclass
class LoopCredentials(FakeCredentials):
    """Answers carol's right ASP on the loop (as ``IdService.verify_password_now`` answers a
    cached success) and every NTLM AUTHENTICATE with None (as when SQLite's lock is held):
    the AUTHENTICATE is then left on the connection for authenticate."""

    now_calls: list[str] = field(default_factory=list)

    def verify_password_now(self, name, password, ctx):
        self.now_calls.append("password")
        return CAROL[1] if (name, password) == ("carol", "abcd-efgh-jkmn-pqrs") else None

    async def verify_password(self, name, password, ctx):
        self.calls.append("password")
        return CAROL[1] if (name, password) == ("carol", "abcd-efgh-jkmn-pqrs") else Verdict(False, "wrong-password")

    def verify_ntlm_now(self, handshake, ctx):
        self.now_calls.append("ntlm")
        return None


def _timeless(x):
    """Identities without their sign-in time (made by each twin when it allows)."""
    if isinstance(x, Identity):
        return dataclasses.replace(x, signed_in_at=SIGNED_IN.signed_in_at)
    if isinstance(x, tuple):
        return tuple(_timeless(v) for v in x)
    if isinstance(x, list):
        return [_timeless(v) for v in x]
    return x


@PROP
@given(
    seed=st.integers(0, 2**32),
    trace=st.sampled_from(["none", "low", "verbose"]),
    tls=st.sampled_from([True, True, False]),
    state=STATE,
    authz=st.one_of(AUTHZ, st.just(CAROL[0])),
)
def test_answer_now_then_authenticate_is_authenticate(lines, seed, trace, tls, state, authz):
    """answer_now, and authenticate when it said None, give exactly what authenticate alone gives
    (outcome, connection state, log lines), with an id service that answers on the loop."""
    made = []
    for _ in range(2):
        auth, _, _ = twin(seed, trace=trace, methods=("negotiate", "ntlm", "basic"), kerberos=False, device=None)
        creds = LoopCredentials()
        auth.credentials = creds
        auth._password_now, auth._ntlm_now = creds.verify_password_now, creds.verify_ntlm_now
        made.append((auth, creds))
    (a, creds_a), (b, creds_b) = made
    ca, cb_ = new_conn(tls), new_conn(tls)
    prepare(a, ca, state)
    prepare(b, cb_, state)
    req_a, req_b = head(authz, common=True), head(authz, common=True)
    lines.lines.clear()
    now = a.answer_now(ca, req_a, UCWA)
    if now is None:
        now = asyncio.run(a.authenticate(ca, req_a, UCWA))
        event("waits")
    else:
        assert not creds_a.calls, "answered on the loop after calling the worker thread's verify"
        event("allows" if now.allowed else "answers")
    said_a, after_a = list(lines.lines), conn_state(ca)
    lines.lines.clear()
    later = asyncio.run(b.authenticate(cb_, req_b, UCWA))
    assert _timeless(outcome_tuple(now)) == _timeless(outcome_tuple(later))
    assert _timeless(after_a) == _timeless(conn_state(cb_))
    assert said_a == list(lines.lines)
    assert creds_a.calls == creds_b.calls or creds_a.calls == [], (creds_a.calls, creds_b.calls)


def test_carol_is_answered_on_the_loop(lines):
    auth, _, _ = twin(3, trace="none", methods=("basic",), kerberos=False, device=None)
    creds = LoopCredentials()
    auth.credentials, auth._password_now = creds, creds.verify_password_now
    conn = new_conn(True)
    out = auth.answer_now(conn, head(CAROL[0], common=True), UCWA)
    assert out is not None and out.identity is not None and out.identity.user == "carol"
    assert creds.now_calls == ["password"] and creds.calls == []
    assert isinstance(conn.auth_state, _BasicMemo)  # the memo: the keep-alive requests know it
    wrong = b"Basic " + b64(b"carol:abcd-efgh-jkmn-pqrx")
    assert auth.answer_now(new_conn(True), head(wrong, common=True), UCWA) is None
