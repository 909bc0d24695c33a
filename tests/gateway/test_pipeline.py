"""The request pipeline's stages without sockets (gateway/pipeline.py): each stage's continue
and refusal cases with a fake gateway (only the public names the stages use), and the order."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ucgate.gateway import pipeline
from ucgate.gateway.auth import AuthOutcome
from ucgate.gateway.body import ClientBodyError
from ucgate.gateway.connection import ClientConnection, Identity
from ucgate.gateway.exchange import Exchange, Refusal
from ucgate.protocols import http1
from ucgate.protocols.sfb import Service, ServiceMap

SERVICES = (
    Service("oauth", "/webticket/oauthtoken", exact=True),
    Service("ucwa", "/ucwa/", methods=(b"GET", b"POST")),
    Service("meet", "/meet/", anonymous=True),
    Service("off", "/off/", enabled=False),
    Service("lost", "/lost/", upstream="nowhere"),
    Service("small", "/small/", max_body_bytes=10),
)
ALICE = Identity("alice", "basic")


def head(start: bytes, *headers: bytes) -> http1.RequestHead:
    return http1.parse_request_head(b"\r\n".join((start, *headers)) + b"\r\n\r\n")


class MemoryBody:
    """An in-memory body source with RequestBody's interface (gateway/body.py)."""

    def __init__(self, req: http1.RequestHead, content: bytes = b"") -> None:
        self.req = req
        self.content = content
        self.data: bytes | None = None
        self.reads: list[int] = []

    @property
    def pending(self) -> bool:
        return self.req.framing.kind != "none"

    async def read(self, limit: int) -> bytes:
        self.reads.append(limit)
        if len(self.content) > limit:
            raise ClientBodyError(413, "body-too-large")
        self.req.framing = http1.Framing("none")
        self.req.expect_continue = False
        self.data = self.content
        return self.data

    def replace(self, data: bytes) -> None:
        self.data = data


class Allow:
    def __init__(self, outcome: AuthOutcome | None = None) -> None:
        self.outcome = outcome or AuthOutcome(ALICE, headers=[(b"X-Auth", b"done")])
        self.calls = 0

    async def authenticate(self, conn, req, service) -> AuthOutcome:
        self.calls += 1
        return self.outcome


class FakeGate:
    """The device gate's interface as the stages use it."""

    def __init__(self, *, limit: int | None = None, verdict=None) -> None:
        self.limit = limit
        self.verdict = verdict or SimpleNamespace(forward=True, identity=None, observe=None)
        self.seen: list = []

    def applies(self, service, req=None) -> bool:
        return service.name == "ucwa"

    def body_limit(self, req, path, service):
        return self.limit

    def facts_for(self, conn, req, path, query, service, prebody):
        self.seen.append(("facts", path, query, prebody))
        return {"facts": prebody}

    async def decide(self, conn, req, path, service, identity, facts):
        self.seen.append(("decide", identity.user, facts))
        # as DeviceGate.decide: ucgate_device_decisions_total
        pipeline.metrics.count_device(service.name, "allow" if self.verdict.forward else "block")
        return self.verdict

    def decide_now(self, conn, req, service, identity, facts):
        return None  # nothing cached: the decide stage waits for decide()

    def done(self, req) -> None:
        self.seen.append("done")


class FakeGateway:
    """What the stages reach of the gateway (its public names), recorded."""

    def __init__(
        self,
        *,
        authenticator=None,
        devices=None,
        oauth=None,
        body: bytes = b"",
        default_host: bytes | None = b"gw.example",
        backend: Refusal | None = None,
    ) -> None:
        self.service_map = ServiceMap(SERVICES)
        self.pools = {"frontend": "POOL"}
        self.default_host = default_host
        self.authenticator = authenticator or Allow()
        self.devices = devices
        self.oauth = oauth
        self.body = body
        self.backend = backend
        self.calls: list = []
        self.answered: Refusal | None = None
        self.auth_now = None  # the authenticator's synchronous answer: none (always waits)
        self.auth_known = None
        self.stage_plans: dict = {}
        self.max_body_bytes = 1000  # a service's own max_body_bytes overrides it

    def clock(self) -> float:
        return 0.0

    def adopt(self, conn, req, identity) -> None:
        self.calls.append(("adopt", identity.user))

    def prepare_backend_now(self, ex: Exchange) -> object:
        return pipeline.WAIT  # recorded by prepare_backend

    async def prepare_backend(self, ex: Exchange) -> Refusal | None:
        self.calls.append("backend")
        return self.backend

    async def forward(self, ex: Exchange) -> bool:
        self.calls.append(("forward", ex.identity.user if ex.identity else None, ex.body.data))
        return True

    async def answer(self, ex: Exchange, refusal: Refusal) -> bool:
        self.answered = refusal
        return not refusal.close


def exchange(req: http1.RequestHead, body: bytes = b"") -> Exchange:
    conn = ClientConnection("192.0.2.1", 5000, True, None, 0.0)
    return Exchange(conn, req, None, 1.0, MemoryBody(req, body), ctx={})  # type: ignore[arg-type]


def run(gw: FakeGateway, req: http1.RequestHead) -> tuple[bool, Exchange]:
    ex = exchange(req, gw.body)
    keep = asyncio.run(pipeline.run_stages(gw, ex))  # type: ignore[arg-type]
    return keep, ex


def test_order_is_written_once():
    assert [s.name for s in pipeline.STAGES] == [
        "recognise",
        "oauth_intercept",
        "device_facts",
        "authenticate",
        "decide",
        "backend_credentials",
        "forward",
    ]


# --- recognise ------------------------------------------------------------------------------
def test_recognise_continues_with_service_pool_and_limit():
    gw = FakeGateway()
    ex = exchange(head(b"GET /ucwa/x?y=1 HTTP/1.1", b"Host: a"))
    assert asyncio.run(pipeline.recognise(gw, ex)) is None  # type: ignore[arg-type]
    assert (ex.path, ex.query, ex.service.name, ex.pool, ex.max_body) == ("/ucwa/x", "y=1", "ucwa", "POOL", 1000)
    assert ex.ctx == {"service": "ucwa"}


@pytest.mark.parametrize(
    "start,status,reason,error",
    [
        (b"GET /nothing HTTP/1.1", 404, "not-published", False),
        (b"GET /off/x HTTP/1.1", 404, "not-published", False),
        (b"DELETE /ucwa/x HTTP/1.1", 405, "method-not-allowed", False),
        (b"GET /lost/x HTTP/1.1", 404, "upstream-not-configured", False),
        (b"GET /ucwa/../x HTTP/1.1", 400, None, True),
    ],
)
def test_recognise_refuses(start, status, reason, error):
    gw = FakeGateway()
    keep, ex = run(gw, head(start, b"Host: a"))
    assert gw.answered is not None and gw.answered.status == status
    assert (gw.answered.error is not None) == error and (not error or not keep)
    if reason:
        assert gw.answered.reason == reason
    assert gw.calls == [] and gw.authenticator.calls == 0  # nothing after it ran


def test_recognise_405_names_the_allowed_methods():
    gw = FakeGateway()
    run(gw, head(b"PUT /ucwa/x HTTP/1.1", b"Host: a"))
    assert gw.answered.headers == [(b"Allow", b"GET, POST")]


def test_recognise_http10_without_host():
    gw = FakeGateway()
    _, ex = run(gw, head(b"GET /meet/x HTTP/1.0"))
    assert ex.req.host == b"gw.example" and (b"Host", b"gw.example") in ex.req.headers
    gw = FakeGateway(default_host=None)
    keep, _ = run(gw, head(b"GET /meet/x HTTP/1.0"))
    assert not keep and gw.answered.error.reason == "missing-host"


def test_recognise_body_over_the_service_limit_is_413_before_anything_else():
    gw = FakeGateway()
    keep, _ = run(gw, head(b"POST /small/x HTTP/1.1", b"Host: a", b"Content-Length: 11"))
    assert not keep and gw.answered.status == 413 and gw.answered.error is not None
    assert gw.authenticator.calls == 0


# --- OAuth intercept ----------------------------------------------------------------------------
class FakeOAuth:
    def __init__(self, answer) -> None:
        self.answer = answer

    def intercepts(self, service, req) -> bool:
        return service.name == "oauth"

    def applies(self, service) -> bool:
        return service.name == "oauth"

    async def handle(self, gw, ex):
        if self.answer is None:
            await ex.body.read(100)  # another grant type: the form read, the pipeline goes on
        return self.answer


def test_oauth_answers_itself():
    gw = FakeGateway(oauth=FakeOAuth(False))
    keep, _ = run(gw, head(b"POST /webticket/oauthtoken HTTP/1.1", b"Host: a", b"Content-Length: 0"))
    assert keep is False and gw.calls == [] and gw.authenticator.calls == 0


def test_oauth_other_grant_goes_on_with_the_form_read():
    gw = FakeGateway(oauth=FakeOAuth(None), body=b"grant_type=x")
    keep, ex = run(gw, head(b"POST /webticket/oauthtoken HTTP/1.1", b"Host: a", b"Content-Length: 12"))
    assert keep and gw.calls == ["backend", ("forward", "alice", b"grant_type=x")]


def test_oauth_not_intercepted_elsewhere():
    gw = FakeGateway(oauth=FakeOAuth(False))
    keep, _ = run(gw, head(b"GET /ucwa/x HTTP/1.1", b"Host: a"))
    assert keep and gw.calls[-1] == ("forward", "alice", None)


# --- device facts -------------------------------------------------------------------------------
def test_device_facts_read_the_body_within_both_limits():
    gate = FakeGate(limit=5000)
    gw = FakeGateway(devices=gate, body=b"<device/>")
    req = head(b"POST /ucwa/x?q HTTP/1.1", b"Host: a", b"Content-Length: 9", b"Expect: 100-continue")
    keep, ex = run(gw, req)
    assert keep and ex.body.reads == [1000]  # min(body_limit, the service's max body)
    assert req.framing.kind == "none" and not req.expect_continue  # consumed: not drained again
    assert gate.seen == [("facts", "/ucwa/x", "q", b"<device/>"), ("decide", "alice", {"facts": b"<device/>"}), "done"]
    assert gw.calls[-1] == ("forward", "alice", b"<device/>")


def test_device_facts_without_a_body_read():
    gate = FakeGate(limit=None)
    gw = FakeGateway(devices=gate)
    keep, ex = run(gw, head(b"POST /ucwa/x HTTP/1.1", b"Host: a", b"Content-Length: 3"))
    assert keep and ex.body.reads == [] and ex.req.framing.kind == "length"
    assert gate.seen[0] == ("facts", "/ucwa/x", "", None)


def test_device_facts_body_error_is_a_protocol_refusal_without_done():
    gate = FakeGate(limit=4)
    gw = FakeGateway(devices=gate, body=b"too long")
    keep, _ = run(gw, head(b"POST /ucwa/x HTTP/1.1", b"Host: a", b"Content-Length: 8"))
    assert not keep and gw.answered.status == 413 and gw.answered.error.reason == "body-too-large"
    assert gate.seen == []  # no facts, so no done


def test_device_gate_not_applying():
    gate = FakeGate()
    gw = FakeGateway(devices=gate)
    keep, _ = run(gw, head(b"GET /meet/x HTTP/1.1", b"Host: a"))
    assert keep and gate.seen == []


# --- authenticate -----------------------------------------------------------------------------
def test_authenticate_continues_with_identity_and_response_headers():
    gw = FakeGateway()
    keep, ex = run(gw, head(b"GET /ucwa/x HTTP/1.1", b"Host: a", b"Authorization: Basic eA=="))
    assert keep and ex.identity is ALICE and ex.conn.principal is ALICE
    assert ex.response_headers == [(b"X-Auth", b"done")] and ex.ctx["user"] == "alice"


@pytest.mark.parametrize(
    "outcome,body",
    [
        (AuthOutcome(None, 401, "no-credentials", [(b"WWW-Authenticate", b"Basic")]), b"authentication required\n"),
        (AuthOutcome(None, 403, "", close=True), b"access denied\n"),
    ],
)
def test_authenticate_refuses(outcome, body):
    gate = FakeGate()
    gw = FakeGateway(authenticator=Allow(outcome), devices=gate)
    keep, _ = run(gw, head(b"GET /ucwa/x HTTP/1.1", b"Host: a"))
    r = gw.answered
    assert (r.status, r.body, r.headers, r.close) == (outcome.status, body, outcome.headers, outcome.close)
    assert r.reason == (outcome.reason or "unauthenticated") and keep is not outcome.close
    assert gw.calls == [] and gate.seen[-1] == "done"  # the gate's facts were taken: done


def test_anonymous_service_is_not_authenticated():
    gw = FakeGateway()
    keep, ex = run(gw, head(b"GET /meet/x HTTP/1.1", b"Host: a"))
    assert keep and gw.authenticator.calls == 0 and ex.identity is None
    assert gw.calls == [("forward", None, None)]  # no identity: no backend credentials asked


# --- decide ----------------------------------------------------------------------------------
def test_decide_adopts_the_device_identity():
    bound = Identity("alice", "basic", device_id="dev1")
    observe = object()
    gate = FakeGate(verdict=SimpleNamespace(forward=True, identity=bound, observe=observe))
    gw = FakeGateway(devices=gate)
    keep, ex = run(gw, head(b"GET /ucwa/x HTTP/1.1", b"Host: a"))
    assert keep and ex.identity is bound and ex.observe is observe and ex.ctx["device"] == "dev1"
    assert gw.calls[0] == ("adopt", "alice")


@pytest.mark.parametrize("reset", [False, True])
def test_decide_refuses(reset):
    verdict = SimpleNamespace(
        forward=False,
        reset_auth=reset,
        status=403,
        reason="device-blocked",
        body=b"blocked\n",
        headers=[(b"X-Ms", b"1")],
    )
    gate = FakeGate(verdict=verdict)
    gw = FakeGateway(devices=gate)
    ex = exchange(head(b"GET /ucwa/x HTTP/1.1", b"Host: a"))
    ex.conn.identity, ex.conn.auth_state = ALICE, "state"
    keep = asyncio.run(pipeline.run_stages(gw, ex))  # type: ignore[arg-type]
    r = gw.answered
    assert keep and (r.status, r.reason, r.body, r.headers) == (403, "device-blocked", b"blocked\n", [(b"X-Ms", b"1")])
    assert (ex.conn.identity is None) == reset and (ex.conn.auth_state is None) == reset
    assert gw.calls == [] and gate.seen[-1] == "done"


# --- backend credentials and forward ---------------------------------------------------------
def test_backend_refusal_is_answered_and_nothing_forwarded():
    gw = FakeGateway(backend=Refusal(502, "backend-down", b"upstream credentials unavailable\n"))
    keep, _ = run(gw, head(b"GET /ucwa/x HTTP/1.1", b"Host: a"))
    assert keep and gw.answered.reason == "backend-down" and gw.calls == ["backend"]


def test_send_is_backend_then_forward():
    gw = FakeGateway()
    ex = exchange(head(b"GET /ucwa/x HTTP/1.1", b"Host: a"))
    ex.identity = ALICE
    assert asyncio.run(pipeline.send(gw, ex)) is True  # type: ignore[arg-type]
    assert gw.calls == ["backend", ("forward", "alice", None)]


def test_done_even_when_a_stage_raises():
    class Boom(FakeGateway):
        async def forward(self, ex):
            raise RuntimeError("boom")

    gate = FakeGate()
    gw = Boom(devices=gate)
    with pytest.raises(RuntimeError):
        run(gw, head(b"GET /ucwa/x HTTP/1.1", b"Host: a"))
    assert gate.seen[-1] == "done"


def test_refusal_repr_and_protocol():
    r = Refusal.protocol(http1.HttpError(400, "bad-target"))
    assert r.close and r.status == 400 and r.reason == "bad-target" and "close" in repr(r)


# --- the chain run inline (Stage.now), then resumed in a task ------------------------------------
class Driver:
    """A connection driver (gateway/session.py's role): forwards inline when it can."""

    def __init__(self, gw: FakeGateway, can: bool = True) -> None:
        self.gw, self.can = gw, can

    def forward_now(self, ex: Exchange) -> object:
        if not self.can:
            return pipeline.WAIT
        self.gw.calls.append(("forward", ex.identity.user if ex.identity else None, ex.body.data))
        return pipeline.INLINE


class Knowing(FakeGateway):
    """A gateway whose authenticator, device gate and backend can answer synchronously: the
    same answers their coroutines give (``known``: which of them know)."""

    def __init__(self, *, known: frozenset[str], **kw) -> None:
        super().__init__(**kw)
        self.known = known
        self.now_calls = 0
        if "auth" in known:
            self.auth_now = self._auth_now

    def _auth_now(self, conn, req, service):
        self.now_calls += 1
        return self.authenticator.outcome

    def prepare_backend_now(self, ex: Exchange) -> object:
        if "backend" in self.known:
            self.calls.append("backend")
            return self.backend
        return pipeline.WAIT


class KnowingGate(FakeGate):
    def __init__(self, *, cached: bool, **kw) -> None:
        super().__init__(**kw)
        self.cached = cached

    def decide_now(self, conn, req, service, identity, facts):
        if not self.cached or not self.verdict.forward:
            return None
        self.seen.append(("decide", identity.user, facts))
        return self.verdict


def inline_then_task(gw: FakeGateway, ex: Exchange, driver: Driver) -> tuple[object, int | None]:
    """What a connection driver does: the stages inline, then a task from the one that waited
    (or the refusal answered). Returns (keep or INLINE, the stage index that waited)."""
    ex.driver = driver  # type: ignore[assignment]
    i, outcome = pipeline.run_inline(gw, ex)  # type: ignore[arg-type]
    if outcome is pipeline.INLINE:
        if ex.gate is not None:
            ex.gate.done(ex.req)
        return outcome, None
    if outcome is pipeline.WAIT:
        return asyncio.run(pipeline.resume(gw, ex, i)), i  # type: ignore[arg-type]
    return asyncio.run(pipeline.refuse(gw, ex, outcome)), None  # type: ignore[arg-type]


def test_inline_chain_reaches_the_driver_without_any_coroutine():
    gw = Knowing(known=frozenset({"auth", "backend"}))
    ex = exchange(head(b"GET /ucwa/x HTTP/1.1", b"Host: a", b"Authorization: Basic eA=="))
    ex.ctx = None  # inline: no task context
    ex.driver = Driver(gw)  # type: ignore[assignment]
    assert pipeline.run_inline(gw, ex) == (6, pipeline.INLINE)  # type: ignore[arg-type]
    assert gw.authenticator.calls == 0 and gw.now_calls == 1
    assert ex.identity is ALICE and ex.conn.principal is ALICE
    assert gw.calls == ["backend", ("forward", "alice", None)]


@pytest.mark.parametrize(
    "known,waits_at",
    [
        (frozenset(), 3),  # the authenticator must ask: from authenticate on in a task
        (frozenset({"auth"}), 5),  # backend credentials to prepare
        (frozenset({"auth", "backend"}), 6),  # no idle upstream connection
    ],
)
def test_inline_wait_goes_on_from_that_stage_and_nothing_runs_twice(known, waits_at, monkeypatch):
    counted: list = []
    monkeypatch.setattr(pipeline.metrics, "count_auth", lambda *a: counted.append(a))
    gw = Knowing(known=known)
    recognised: list = []
    real = gw.service_map.recognise
    gw.service_map.recognise = lambda path: recognised.append(path) or real(path)  # type: ignore[method-assign]
    ex = exchange(head(b"GET /ucwa/x HTTP/1.1", b"Host: a", b"Authorization: Basic eA=="))
    keep, i = inline_then_task(gw, ex, Driver(gw, can=False))
    assert keep is True and i == waits_at
    assert recognised == ["/ucwa/x"] and gw.authenticator.calls + gw.now_calls == 1
    assert counted == [("basic", "allow", "ok")]  # the sign-in counted once
    assert gw.calls == ["backend", ("forward", "alice", None)]
    assert ex.ctx is not None and ex.ctx["user"] == "alice" and ex.ctx["service"] == "ucwa"


def test_inline_refusal_names_its_stage():
    gw = Knowing(known=frozenset({"auth"}), authenticator=Allow(AuthOutcome(None, 401, "no-credentials")))
    ex = exchange(head(b"GET /nothing HTTP/1.1", b"Host: a"))
    ex.driver = Driver(gw)  # type: ignore[assignment]
    i, r = pipeline.run_inline(gw, ex)  # type: ignore[arg-type]
    assert i == 0 and isinstance(r, Refusal) and (r.status, r.reason) == (404, "not-published")
    ex = exchange(head(b"GET /ucwa/x HTTP/1.1", b"Host: a"))
    ex.driver = Driver(gw)  # type: ignore[assignment]
    i, r = pipeline.run_inline(gw, ex)  # type: ignore[arg-type]
    assert (
        i == 3
        and isinstance(r, Refusal)
        and (r.status, r.reason, r.body)
        == (
            401,
            "no-credentials",
            b"authentication required\n",
        )
    )
    assert gw.authenticator.calls == 0 and gw.calls == []


def test_a_body_the_device_facts_need_waits_at_that_stage():
    gate = KnowingGate(cached=True, limit=5000)
    gw = Knowing(known=frozenset({"auth", "backend"}), devices=gate, body=b"<device/>")
    ex = exchange(head(b"POST /ucwa/x HTTP/1.1", b"Host: a", b"Content-Length: 9"), b"<device/>")
    ex.driver = Driver(gw)  # type: ignore[assignment]
    assert pipeline.run_inline(gw, ex) == (2, pipeline.WAIT)  # type: ignore[arg-type]
    assert gate.seen == [] and ex.facts is None  # nothing done before the wait


_VERDICTS = {
    "allow": SimpleNamespace(forward=True, identity=Identity("alice", "basic", device_id="d1"), observe=None),
    "block": SimpleNamespace(
        forward=False, reset_auth=False, status=403, reason="device-blocked", body=b"blocked\n", headers=[]
    ),
}


_ALL_KNOWN = {"auth", "backend", "cached", "driver"}


@settings(max_examples=400, deadline=None, database=None)
@example(b"/ucwa/x", b"GET", None, "allow", "allow", _ALL_KNOWN, False)
@example(b"/ucwa/x", b"POST", b"abc", "allow", "allow", _ALL_KNOWN, False)
@example(b"/ucwa/x", b"GET", None, "allow", "block", _ALL_KNOWN, False)
@example(b"/ucwa/x", b"GET", None, "deny401", "allow", _ALL_KNOWN, False)
@example(b"/ucwa/x", b"GET", None, "allow", None, _ALL_KNOWN, True)
@example(b"/meet/x", b"GET", None, "allow", "allow", _ALL_KNOWN, False)
@given(
    path=st.sampled_from([b"/ucwa/x", b"/ucwa/y", b"/meet/x", b"/nothing", b"/lost/x", b"/small/x", b"/ucwa/../x"]),
    method=st.sampled_from([b"GET", b"POST", b"DELETE"]),
    body=st.sampled_from([None, b"", b"abc", b"12345678901"]),
    auth=st.sampled_from(["allow", "deny401", "deny403close"]),
    gate=st.sampled_from([None, "allow", "block"]),
    known=st.sets(st.sampled_from(["auth", "backend", "cached", "driver"])),
    backend_refuses=st.booleans(),
)
def test_inline_then_task_gives_the_task_only_result(path, method, body, auth, gate, known, backend_refuses):
    """Whatever each stage can answer synchronously, the outcome (the answer, what was
    forwarded, what the stages did and counted) is the one of the whole chain in a task."""
    outcomes = {
        "allow": AuthOutcome(ALICE),
        "deny401": AuthOutcome(None, 401, "no-credentials", [(b"WWW-Authenticate", b"Basic")]),
        "deny403close": AuthOutcome(None, 403, "bad", close=True),
    }
    headers = [b"Host: a"] + ([] if body is None else [b"Content-Length: %d" % len(body)])
    seen = []
    for inline in (False, True):
        counted: list = []
        saved = pipeline.metrics.count_auth, pipeline.metrics.count_device
        pipeline.metrics.count_auth = lambda *a, c=counted: c.append(("auth", *a))  # type: ignore[assignment]
        pipeline.metrics.count_device = lambda *a, c=counted: c.append(("device", *a))  # type: ignore[assignment]
        try:
            g = KnowingGate(cached="cached" in known and inline, verdict=_VERDICTS[gate]) if gate else None
            gw = Knowing(
                known=frozenset(known) if inline else frozenset(),
                authenticator=Allow(outcomes[auth]),
                devices=g,
                body=body or b"",
                backend=Refusal(502, "backend-down") if backend_refuses else None,
            )
            ex = exchange(head(method + b" " + path + b" HTTP/1.1", *headers), body or b"")
            if inline:
                keep, _ = inline_then_task(gw, ex, Driver(gw, can="driver" in known))
                keep = True if keep is pipeline.INLINE else keep
            else:
                keep = asyncio.run(pipeline.run_stages(gw, ex))  # type: ignore[arg-type]
        finally:
            pipeline.metrics.count_auth, pipeline.metrics.count_device = saved
        a = gw.answered
        seen.append(
            (
                keep,
                None if a is None else (a.status, a.reason, a.body, a.headers, a.close, a.error is not None),
                gw.calls,
                None if g is None else g.seen,
                ex.identity,
                ex.conn.principal,
                counted,
            )
        )
    assert seen[0] == seen[1]


# --- the inline chain's plan --------------------------------------------------------------------
def _names(steps) -> list[str]:
    return [pipeline.STAGES[i].name for i, _ in steps]


def test_plan_leaves_out_the_stages_that_cannot_apply_and_follows_the_gateway():
    gw = FakeGateway()
    ucwa, meet, oauth = SERVICES[1], SERVICES[2], SERVICES[0]
    assert _names(pipeline.plan(gw, meet)) == []  # anonymous, no OAuth, no device gate
    assert _names(pipeline.plan(gw, ucwa)) == ["authenticate", "backend_credentials"]
    gw.devices = FakeGate()  # a device gate for ucwa: its plan is made again, not the one kept
    assert _names(pipeline.plan(gw, ucwa)) == ["device_facts", "authenticate", "decide", "backend_credentials"]
    gw.oauth = FakeOAuth(False)
    assert _names(pipeline.plan(gw, oauth)) == ["oauth_intercept", "authenticate", "backend_credentials"]
    assert _names(pipeline.plan(gw, ucwa)) == ["device_facts", "authenticate", "decide", "backend_credentials"]


def test_plan_kept_for_another_service_with_the_same_id_is_not_used():
    """Plans are keyed by ``id(service)``: a service map reloaded may give a new service the
    id of a dead one. The entry holds its service, so the new one gets its own plan — an
    anonymous plan kept for a dead service must never skip authentication for a protected one."""
    gw = FakeGateway()
    meet, ucwa = SERVICES[2], SERVICES[1]
    anonymous_plan = pipeline.plan(gw, meet)
    gw.stage_plans[id(ucwa)] = (meet, gw.oauth, gw.devices, anonymous_plan)  # as if ucwa had meet's id
    assert _names(pipeline.plan(gw, ucwa)) == ["authenticate", "backend_credentials"]
    gw.stage_plans[id(ucwa)] = (meet, gw.oauth, gw.devices, anonymous_plan)
    ex = exchange(head(b"GET /ucwa/x HTTP/1.1", b"Host: a"))
    ex.ctx = None
    i, outcome = pipeline.run_inline(gw, ex)  # type: ignore[arg-type]
    assert (pipeline.STAGES[i].name, outcome) == ("authenticate", pipeline.WAIT)  # not forwarded
