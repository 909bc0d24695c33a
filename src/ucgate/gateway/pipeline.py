"""The request pipeline: the stages one request goes through, in their order (``STAGES``).

    parse (protocols.http1, in gateway/session.py) → recognise → OAuth intercept → device facts
    → authenticate → decide → backend credentials → forward

Each stage is a ``Stage`` with two forms of the same step, taking the gateway and the
``Exchange`` (gateway/exchange.py):

- ``now(gw, ex)``, synchronous: answers ``None`` to go on, a ``Refusal``, or ``WAIT`` when it
  cannot decide without waiting (the id service, a KDC, a body to read, an upstream connection
  to open) — and then it has done nothing;
- ``run(gw, ex)``, a coroutine: the whole step, waiting where it must. It answers ``None``, a
  ``Refusal``, or a bool when it answered the request itself (whether to keep the connection:
  the OAuth grant's own answers, the forwarded response).

Every stage is tried synchronously first, by one runner for both paths. A connection's driver
(gateway/session.py) runs the chain inside its protocol callbacks (``run_inline``): the common
request (an anonymous service or a sender already known, an allowed device verdict cached on
the connection, backend mode ``none`` or a Bearer token, an idle upstream connection) passes
every stage's ``now`` and the forward stage's ``now`` sends it upstream from there (``INLINE``);
the first stage that answers ``WAIT`` hands the exchange to a task that goes on from that stage
with its ``run`` (``resume``) — no stage runs twice, so their bookkeeping (metrics, the
connection's principal) happens once whichever path took the request. A ``Refusal`` is answered
in one place (``Gateway.answer``; synchronously when there is no body to drain,
``Gateway.refuse_now``). Envoy's HTTP filters, which may stop and continue the chain, and
mitmproxy's layers have this shape. The stages reach the gateway only through its public names,
so they run in tests with fakes (tests/gateway/test_pipeline.py).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from .. import metrics
from ..logs import new_request_id, request_context
from ..protocols.http1 import HttpError, RequestHead
from ..protocols.sfb import Service
from .auth import AuthOutcome
from .body import ClientBodyError
from .exchange import INLINE, WAIT, Driver, Exchange, Refusal

if TYPE_CHECKING:
    from .connection import ClientConnection
    from .devices import Verdict
    from .server import Gateway
    from .stream import Stream

log = logging.getLogger("ucgate.gateway")
access_log = logging.getLogger("ucgate.access")

Outcome = Refusal | bool | None
Now = Callable[["Gateway", Exchange], object]  # Outcome without the bools, or WAIT / INLINE
Run = Callable[["Gateway", Exchange], Awaitable[Outcome]]


class Stage:
    """One step of the pipeline: its synchronous form ``now``, its coroutine ``run``, and
    ``applies(gw, service)``: False when the step does nothing for any request to ``service``
    on ``gw`` (both forms then answer None at once), so that the inline chain can leave it out
    (``plan``)."""

    __slots__ = ("name", "now", "run", "applies")

    def __init__(
        self, name: str, now: Now, run: Run, applies: Callable[[Gateway, Service], bool] | None = None
    ) -> None:
        self.name = name
        self.now = now
        self.run = run
        self.applies = applies

    def __repr__(self) -> str:
        return f"Stage({self.name})"


# --- recognise ----------------------------------------------------------------------------
def recognise_now(gw: Gateway, ex: Exchange) -> Refusal | None:
    """The published service of the path, its method, Host and upstream; the body's limit.
    Never waits."""
    req = ex.req
    try:
        ex.path, ex.query, service = gw.service_map.route(req.target)  # split_target, recognise
    except HttpError as e:
        return Refusal.protocol(e)
    except UnicodeDecodeError:  # the parser admits obs-text only in field values, not here
        return Refusal.protocol(HttpError(400, "bad-target"))
    ex.service = service
    if service is not None and ex.ctx is not None:
        ex.ctx["service"] = service.name
    if service is None or not service.enabled:
        return Refusal(404, "not-published", b"not found\n")
    if req.method not in service.methods:  # before authentication: costs no failure budget
        return Refusal(405, "method-not-allowed", b"method not allowed\n", [(b"Allow", b", ".join(service.methods))])
    if not req.host:  # HTTP/1.0 without Host: it goes upstream as HTTP/1.1, which needs one
        if gw.default_host is None:
            return Refusal.protocol(
                HttpError(400, "missing-host", "HTTP/1.0 without Host and no [gateway] published_name")
            )
        req.host = gw.default_host
        req.headers.append((b"Host", req.host))
    pool = ex.pool = gw.pools.get(service.upstream)
    if pool is None:
        log.warning(
            "service %s is routed to upstream %r, which is not configured",
            service.name,
            service.upstream,
            extra=ex.log_fields(),
        )
        return Refusal(404, "upstream-not-configured", b"not found\n")
    limit = service.max_body_bytes  # else the gateway's
    ex.max_body = max_body = limit if limit is not None else gw.max_body_bytes
    if req.prefix is None and req.framing.kind == "length" and req.framing.length > max_body:
        return Refusal.protocol(HttpError(413, "body-too-large"))  # (the common route has no body)
    return None


async def recognise(gw: Gateway, ex: Exchange) -> Outcome:
    return recognise_now(gw, ex)


# --- OAuth intercept ----------------------------------------------------------------------
def oauth_intercept_now(gw: Gateway, ex: Exchange) -> object:
    """The OAuth password grant is verified here (gateway/oauth.py): that waits."""
    oauth = gw.oauth
    if oauth is None or not oauth.intercepts(ex.service, ex.req):
        return None
    return WAIT


async def oauth_intercept(gw: Gateway, ex: Exchange) -> Outcome:
    """The OAuth password grant: verified here, the token obtained by the backend mode
    (gateway/oauth.py). Other grants go on with the form already read (``ex.body.data``)."""
    oauth = gw.oauth
    if oauth is None or not oauth.intercepts(ex.service, ex.req):
        return None
    return await oauth.handle(gw, ex)


# --- device facts -------------------------------------------------------------------------
def device_facts_now(gw: Gateway, ex: Exchange) -> object:
    """Recognise the device (the decide stage's facts); WAIT when they are in a body still to
    be read (UCWA application create, CertProv)."""
    gate = gw.devices
    if gate is None:
        return None
    req, service, path, query = ex.req, ex.service, ex.path, ex.query
    assert service is not None and path is not None and query is not None  # set by recognise
    if not gate.applies(service, req):
        return None
    if ex.body.pending and gate.body_limit(req, path, service) is not None:
        return WAIT
    token = request_context.set(ex.context())  # the device gate's lines carry this request's context
    try:
        ex.facts = gate.facts_for(ex.conn, req, path, query, service, ex.body.data)
    finally:
        request_context.reset(token)
    ex.gate = gate  # from here on, ``gate.done(req)`` when the request is over
    return None


async def device_facts(gw: Gateway, ex: Exchange) -> Outcome:
    """Recognise the device (UCWA/CertProv: a bounded body read first)."""
    gate, req, service, path = gw.devices, ex.req, ex.service, ex.path
    assert service is not None and path is not None  # set by recognise
    if gate is not None and gate.applies(service, req):
        limit = gate.body_limit(req, path, service)
        if limit is not None and ex.body.pending:
            try:  # consumed: a refusal does not drain it again, forwarding sends it
                await ex.body.read(min(limit, ex.max_body))
            except ClientBodyError as e:
                return Refusal.protocol(HttpError(e.status, e.reason))
    return device_facts_now(gw, ex)  # type: ignore[return-value]  # the body is read: never WAIT


# --- authenticate -------------------------------------------------------------------------
def authenticated(ex: Exchange, outcome: AuthOutcome) -> Refusal | None:
    """The authenticator's ``outcome`` for ``ex``: the refusal, or the identity kept (on the
    exchange, as the connection's principal, in the log context) and counted."""
    req = ex.req  # the common route found the one Authorization field already
    authz = req.authorization if req.prefix is not None else req.get(b"authorization")
    if outcome.identity is None:
        metrics.count_auth(
            metrics.auth_method(authz), metrics.auth_result(outcome.status, outcome.reason), outcome.reason
        )
        body = b"authentication required\n" if outcome.status == 401 else b"access denied\n"
        return Refusal(outcome.status, outcome.reason or "unauthenticated", body, outcome.headers, close=outcome.close)
    identity = ex.identity = outcome.identity
    ex.conn.principal = identity
    if authz is not None:  # credentials presented (not a request riding an NTLM connection)
        metrics.count_auth(identity.method, "allow", "ok")
    if ex.ctx is not None:
        ex.ctx["user"] = identity.user
    ex.response_headers = outcome.headers  # e.g. Negotiate's final token
    return None


def authenticate_now(gw: Gateway, ex: Exchange) -> object:
    """Who sent it, when the authenticator knows without waiting (``Gateway.auth_now``: an
    NTLM- or Kerberos-authenticated connection, the Basic memo, a Bearer token we issued, a
    handshake leg or a refusal that needs no store); anonymous services skip this."""
    service = ex.service
    assert service is not None  # set by the recognise stage
    if service.anonymous:
        return None
    known = gw.auth_known
    if known is not None:  # the keep-alive request of a known sender: answered without a log context
        outcome = known(ex.conn, ex.req, service)
        if outcome is not None:
            return authenticated(ex, outcome)
    answer = gw.auth_now
    if answer is None:
        return WAIT
    if ex.req.get(b"authorization") is None:  # a known identity or the 401: no log line
        outcome = answer(ex.conn, ex.req, service)
    else:  # the authenticator's own lines (the trace, a malformed token) carry this request's context
        token = request_context.set(ex.context())
        try:
            outcome = answer(ex.conn, ex.req, service)
        finally:
            request_context.reset(token)
    if outcome is None:
        return WAIT
    return authenticated(ex, outcome)


async def authenticate(gw: Gateway, ex: Exchange) -> Outcome:
    """Who sent it (gateway/auth.py)."""
    service = ex.service
    assert service is not None  # set by the recognise stage
    if service.anonymous:
        return None
    return authenticated(ex, await gw.authenticator.authenticate(ex.conn, ex.req, service))


# --- decide -------------------------------------------------------------------------------
def decided(gw: Gateway, ex: Exchange, verdict: Verdict) -> Refusal | None:
    """The device gate's ``verdict`` for ``ex``: the refusal, or the identity it names adopted."""
    conn = ex.conn
    if not verdict.forward:
        if verdict.reset_auth:
            conn.identity = None
            conn.auth_state = None
        return Refusal(verdict.status, verdict.reason, verdict.body, verdict.headers)
    if verdict.identity is not None:
        identity = ex.identity = verdict.identity
        gw.adopt(conn, ex.req, identity)
        if identity.device_id:
            ex.device = identity.device_id
            if ex.ctx is not None:
                ex.ctx["device"] = identity.device_id
    ex.observe = verdict.observe
    return None


def decide_now(gw: Gateway, ex: Exchange) -> object:
    """The user/device partnership when the connection has an allowed verdict cached
    (``DeviceGate.decide_now``); else WAIT (the id service decides)."""
    gate = ex.gate
    if gate is None:
        return None
    identity, facts = ex.identity, ex.facts
    if identity is None or facts is None:
        return None
    service = ex.service
    assert service is not None  # set by the recognise stage
    token = request_context.set(ex.context())
    try:
        verdict = gate.decide_now(ex.conn, ex.req, service, identity, facts)
    finally:
        request_context.reset(token)
    if verdict is None:
        return WAIT
    metrics.count_device(service.name, "allow")  # as DeviceGate.decide counts its decisions
    return decided(gw, ex, verdict)


async def decide(gw: Gateway, ex: Exchange) -> Outcome:
    """The user/device partnership (issue 6); account state is the id service's."""
    gate, identity, facts = ex.gate, ex.identity, ex.facts
    if gate is None or identity is None or facts is None:
        return None
    path, service = ex.path, ex.service
    assert path is not None and service is not None  # set by the recognise stage
    return decided(gw, ex, await gate.decide(ex.conn, ex.req, path, service, identity, facts))


# --- backend credentials ------------------------------------------------------------------
def backend_credentials_now(gw: Gateway, ex: Exchange) -> object:
    """What the front end gets to know the user by (issue 7): a Bearer token as it is, or
    nothing (mode ``none``); WAIT for a mode that prepares credentials."""
    if ex.identity is None:  # an anonymous service
        return None
    return gw.prepare_backend_now(ex)


async def backend_credentials(gw: Gateway, ex: Exchange) -> Outcome:
    """What the front end gets to know the user by (issue 7; gateway/backend.py)."""
    return await gw.prepare_backend(ex)


# --- forward ------------------------------------------------------------------------------
def forward_now(gw: Gateway, ex: Exchange) -> object:
    """Send the request from the connection's protocol callbacks (``INLINE``: its driver
    answers it) when the driver can (an idle upstream connection, no body ...); else WAIT."""
    driver = ex.driver
    if driver is None:
        return WAIT
    return driver.forward_now(ex)


async def forward(gw: Gateway, ex: Exchange) -> Outcome:
    """To the upstream and the response back (``Gateway.forward``); the access log line."""
    keep = await gw.forward(ex)
    log_access(gw, ex)
    return keep


def _oauth_applies(gw: Gateway, service: Service) -> bool:
    return gw.oauth is not None and gw.oauth.applies(service)


def _devices_apply(gw: Gateway, service: Service) -> bool:
    gate = gw.devices
    return gate is not None and gate.applies(service)  # (and not for EAS OPTIONS: per request)


def _protected(gw: Gateway, service: Service) -> bool:
    return not service.anonymous


STAGES: tuple[Stage, ...] = (
    Stage("recognise", recognise_now, recognise),
    Stage("oauth_intercept", oauth_intercept_now, oauth_intercept, _oauth_applies),
    Stage("device_facts", device_facts_now, device_facts, _devices_apply),
    Stage("authenticate", authenticate_now, authenticate, _protected),
    Stage("decide", decide_now, decide, _devices_apply),  # it needs the device facts
    Stage("backend_credentials", backend_credentials_now, backend_credentials, _protected),  # an identity
    Stage("forward", forward_now, forward),
)
_RECOGNISE = recognise_now
_FORWARD = len(STAGES) - 1  # always the last, and it always answers


def plan(gw: Gateway, service: Service) -> tuple[tuple[int, Now], ...]:
    """The stages between recognise and forward that apply to ``service`` on ``gw`` (index,
    ``now``), for the inline chain; kept per service object while the gateway's OAuth and
    device gate stay the same objects (``gw.stage_plans``, keyed by ``id(service)``; the
    entry holds the service, so a reused id is never taken for another service)."""
    found = gw.stage_plans.get(id(service))
    if found is not None and found[0] is service and found[1] is gw.oauth and found[2] is gw.devices:
        return found[3]
    return _make_plan(gw, service)


def _make_plan(gw: Gateway, service: Service) -> tuple[tuple[int, Now], ...]:
    steps = tuple(
        (i, stage.now)
        for i, stage in enumerate(STAGES)
        if 0 < i < _FORWARD and (stage.applies is None or stage.applies(gw, service))
    )
    gw.stage_plans[id(service)] = (service, gw.oauth, gw.devices, steps)
    return steps


def log_access(gw: Gateway, ex: Exchange) -> None:
    """The access log line of a forwarded request (when the access log is on: ``ex.started``)."""
    started = ex.started
    if started is None:
        return
    conn, identity, service = ex.conn, ex.identity, ex.service
    assert service is not None  # set by the recognise stage
    access_log.info(
        "client=%s conn=%d request_id=%s method=%s path=%s service=%s user=%s ms=%.1f",
        conn.peer_host,
        conn.id,
        conn.request_id.decode(),
        ex.req.method.decode(),
        ex.path,
        service.name,
        identity.user if identity is not None else "-",
        (gw.clock() - started) * 1000,
        extra=ex.log_fields(),
    )
    ex.started = None


# --- running the stages -------------------------------------------------------------------
def begin(
    gw: Gateway, conn: ClientConnection, req: RequestHead, client: Stream, driver: Driver | None = None
) -> Exchange:
    """A new request on ``conn``: counted, its request id, its Exchange (``driver``: the
    connection's, when the stages run inline)."""
    conn.requests += 1
    conn.request_id = new_request_id()
    started = gw.clock() if access_log.isEnabledFor(logging.INFO) else None
    return Exchange(conn, req, client, gw.gw.timeouts.body_read, None, None, started, driver)  # positional: cheaper


def run_inline(gw: Gateway, ex: Exchange) -> tuple[int, object]:
    """Every stage's ``now`` in order, until one answers: ``(index, outcome)`` — ``INLINE``
    (the forward stage sent it from the driver), ``WAIT`` (go on with ``resume(gw, ex,
    index)`` in a task) or a ``Refusal`` (``refuse``). The stages that cannot apply to the
    recognised service are left out (``plan``: they would answer None)."""
    refusal = _RECOGNISE(gw, ex)
    if refusal is not None:
        return 0, refusal
    service = ex.service
    assert service is not None  # recognised
    found = gw.stage_plans.get(id(service))  # plan(gw, service), without its frame
    if found is not None and found[0] is service and found[1] is gw.oauth and found[2] is gw.devices:
        steps = found[3]
    else:
        steps = _make_plan(gw, service)
    for i, now in steps:
        outcome = now(gw, ex)
        if outcome is not None:
            return i, outcome
    driver = ex.driver  # the forward stage's now (forward_now), called without its frame
    return _FORWARD, WAIT if driver is None else driver.forward_now(ex)


def task_context(ex: Exchange) -> None:
    """This task's log context (ucgate.logs): the exchange's own (the driver made it when the
    stages began inline, and they filled it in), or a new one with what the stages learnt."""
    request_context.set(ex.context())


async def run_stages(gw: Gateway, ex: Exchange, start: int = 0, *, waiting: bool = False) -> bool:
    """Run ``ex`` through the stages from ``start`` until one answers (each synchronously
    first, its coroutine when that answers WAIT; ``waiting``: the first one's ``now`` already
    answered WAIT). Returns whether to keep the connection."""
    try:
        stages = STAGES
        n = len(stages)
        i = start
        while i < n:
            stage = stages[i]
            i += 1
            outcome = WAIT if waiting else stage.now(gw, ex)
            waiting = False
            if outcome is WAIT:
                outcome = await stage.run(gw, ex)
            if outcome is None:
                continue
            if outcome is True or outcome is False:
                return outcome
            assert isinstance(outcome, Refusal), outcome  # INLINE needs a driver: not in a task
            return await gw.answer(ex, outcome)
        return False  # no stage answered (cannot happen: forward always does)
    finally:
        if ex.gate is not None:
            ex.gate.done(ex.req)


async def resume(gw: Gateway, ex: Exchange, start: int) -> bool:
    """Go on in a task with stage ``start``, whose ``now`` answered WAIT inline."""
    ex.driver = None
    task_context(ex)
    return await run_stages(gw, ex, start, waiting=True)


async def refuse(gw: Gateway, ex: Exchange, refusal: Refusal) -> bool:
    """Answer a refusal made inline that needs waiting (a body to drain) in a task."""
    ex.driver = None
    task_context(ex)
    try:
        return await gw.answer(ex, refusal)
    finally:
        if ex.gate is not None:
            ex.gate.done(ex.req)


async def run(gw: Gateway, conn: ClientConnection, req: RequestHead, client: Stream) -> bool:
    """One request through the pipeline, in a task. Returns whether to keep the connection."""
    ex = begin(gw, conn, req, client)
    task_context(ex)
    return await run_stages(gw, ex)


async def send(gw: Gateway, ex: Exchange) -> bool:
    """Backend credentials, then forward, without the access line: for a request whose
    earlier stages ran elsewhere (the OAuth grant with its identity)."""
    refusal = await gw.prepare_backend(ex)
    if refusal is not None:
        return await gw.answer(ex, refusal)
    return await gw.forward(ex)


__all__ = [
    "INLINE",
    "STAGES",
    "WAIT",
    "Exchange",
    "Refusal",
    "Stage",
    "authenticate",
    "backend_credentials",
    "begin",
    "decide",
    "device_facts",
    "forward",
    "log_access",
    "oauth_intercept",
    "recognise",
    "refuse",
    "resume",
    "run",
    "run_inline",
    "run_stages",
    "send",
]
