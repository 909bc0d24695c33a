"""The request pipeline's stages without sockets (gateway/pipeline.py): each stage's continue
and refusal cases with a fake gateway (only the public names the stages use), and the order."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

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

    def applies(self, service, req) -> bool:
        return service.name == "ucwa"

    def body_limit(self, req, path, service):
        return self.limit

    def facts_for(self, conn, req, path, query, service, prebody):
        self.seen.append(("facts", path, query, prebody))
        return {"facts": prebody}

    async def decide(self, conn, req, path, service, identity, facts):
        self.seen.append(("decide", identity.user, facts))
        return self.verdict

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

    def clock(self) -> float:
        return 0.0

    def max_body_of(self, service: Service) -> int:
        return service.max_body_bytes if service.max_body_bytes is not None else 1000

    def adopt(self, conn, req, identity) -> None:
        self.calls.append(("adopt", identity.user))

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
    return Exchange(conn, req, None, MemoryBody(req, body), ctx={})  # type: ignore[arg-type]


def run(gw: FakeGateway, req: http1.RequestHead, stages=pipeline.STAGES) -> tuple[bool, Exchange]:
    ex = exchange(req, gw.body)
    keep = asyncio.run(pipeline.run_stages(gw, ex, stages))  # type: ignore[arg-type]
    return keep, ex


def test_order_is_written_once():
    assert [s.__name__ for s in pipeline.STAGES] == [
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
    assert gw.calls == ["backend", ("forward", None, None)]


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
