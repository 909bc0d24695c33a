"""The request pipeline: the stages one request goes through, in their order (``STAGES``).

    parse (protocols.http1, in gateway/session.py) → recognise → OAuth intercept → device facts
    → authenticate → decide → backend credentials → forward

Each stage takes the gateway and the ``Exchange`` (gateway/exchange.py) and answers ``None``
to go on, a ``Refusal`` (answered in one place, ``Gateway.answer``: logged, counted, the body
drained when that keeps the connection) or a bool when it answered the request itself
(whether to keep the connection: the OAuth grant's own answers, the forwarded response).
Envoy's HTTP filters and mitmproxy's layers have this shape. The stages reach the gateway only
through its public names (its service map, pools, authenticator, device gate, OAuth grants,
``adopt``, ``prepare_backend``, ``forward``), so they run in tests with
fakes (tests/gateway/test_pipeline.py).

The fast path (gateway/session.py, ``ClientSession._forward_fast``) answers the same stages
synchronously for the common request (``authenticate_now``, ``DeviceGate.decide_now``) and
hands any other request to ``run``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from .. import metrics
from ..logs import begin_request, new_request_id
from ..protocols.http1 import HttpError, RequestHead
from ..protocols.sfb import split_target
from .body import ClientBodyError, RequestBody
from .exchange import Exchange, Refusal

if TYPE_CHECKING:
    from .connection import ClientConnection
    from .server import Gateway
    from .stream import Stream

log = logging.getLogger("ucgate.gateway")
access_log = logging.getLogger("ucgate.access")

Outcome = Refusal | bool | None
Stage = Callable[["Gateway", Exchange], Awaitable[Outcome]]


async def recognise(gw: Gateway, ex: Exchange) -> Outcome:
    """The published service of the path, its method, Host and upstream; the body's limit."""
    req = ex.req
    try:
        ex.path, ex.query = split_target(req.target.decode("ascii"))
    except HttpError as e:
        return Refusal.protocol(e)
    service = ex.service = gw.service_map.recognise(ex.path)
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
        log.warning("service %s is routed to upstream %r, which is not configured", service.name, service.upstream)
        return Refusal(404, "upstream-not-configured", b"not found\n")
    ex.max_body = max_body = gw.max_body_of(service)
    if req.framing.kind == "length" and req.framing.length > max_body:
        return Refusal.protocol(HttpError(413, "body-too-large"))
    return None


async def oauth_intercept(gw: Gateway, ex: Exchange) -> Outcome:
    """The OAuth password grant: verified here, the token obtained by the backend mode
    (gateway/oauth.py). Other grants go on with the form already read (``ex.body.data``)."""
    oauth = gw.oauth
    if oauth is None or not oauth.intercepts(ex.service, ex.req):
        return None
    return await oauth.handle(gw, ex)


async def device_facts(gw: Gateway, ex: Exchange) -> Outcome:
    """Recognise the device (the decide stage's facts; UCWA/CertProv: a bounded body read)."""
    gate, req, service, path, query = gw.devices, ex.req, ex.service, ex.path, ex.query
    assert service is not None and path is not None and query is not None  # set by recognise
    if gate is None or not gate.applies(service, req):
        return None
    limit = gate.body_limit(req, path, service)
    if limit is not None and ex.body.pending:
        try:  # consumed: a refusal does not drain it again, forwarding sends it
            await ex.body.read(min(limit, ex.max_body))
        except ClientBodyError as e:
            return Refusal.protocol(HttpError(e.status, e.reason))
    ex.facts = gate.facts_for(ex.conn, req, path, query, service, ex.body.data)
    ex.gate = gate  # from here on, ``gate.done(req)`` when the request is over (``run``)
    return None


async def authenticate(gw: Gateway, ex: Exchange) -> Outcome:
    """Who sent it (gateway/auth.py); anonymous services skip this."""
    service, req, conn = ex.service, ex.req, ex.conn
    assert service is not None  # set by the recognise stage
    if service.anonymous:
        return None
    outcome = await gw.authenticator.authenticate(conn, req, service)
    authz = req.get(b"authorization")
    if outcome.identity is None:
        metrics.count_auth(
            metrics.auth_method(authz), metrics.auth_result(outcome.status, outcome.reason), outcome.reason
        )
        body = b"authentication required\n" if outcome.status == 401 else b"access denied\n"
        return Refusal(outcome.status, outcome.reason or "unauthenticated", body, outcome.headers, close=outcome.close)
    identity = ex.identity = outcome.identity
    conn.principal = identity
    if authz is not None:  # credentials presented (not a request riding an NTLM connection)
        metrics.count_auth(identity.method, "allow", "ok")
    if ex.ctx is not None:
        ex.ctx["user"] = identity.user
    ex.response_headers = outcome.headers  # e.g. Negotiate's final token
    return None


async def decide(gw: Gateway, ex: Exchange) -> Outcome:
    """The user/device partnership (issue 6); account state is the id service's."""
    gate, identity = ex.gate, ex.identity
    if gate is None or identity is None or ex.facts is None:
        return None
    conn, path, service = ex.conn, ex.path, ex.service
    assert path is not None and service is not None  # set by the recognise stage
    verdict = await gate.decide(conn, ex.req, path, service, identity, ex.facts)
    if not verdict.forward:
        if verdict.reset_auth:
            conn.identity = None
            conn.auth_state = None
        return Refusal(verdict.status, verdict.reason, verdict.body, verdict.headers)
    if verdict.identity is not None:
        identity = ex.identity = verdict.identity
        gw.adopt(conn, ex.req, identity)
        if ex.ctx is not None and identity.device_id:
            ex.ctx["device"] = identity.device_id
    ex.observe = verdict.observe
    return None


async def backend_credentials(gw: Gateway, ex: Exchange) -> Outcome:
    """What the front end gets to know the user by (issue 7; gateway/backend.py)."""
    return await gw.prepare_backend(ex)


async def forward(gw: Gateway, ex: Exchange) -> Outcome:
    """To the upstream and the response back (``Gateway.forward``); the access log line."""
    keep = await gw.forward(ex)
    if ex.started is not None:
        conn, req, identity, service = ex.conn, ex.req, ex.identity, ex.service
        assert service is not None  # set by the recognise stage
        access_log.info(
            "client=%s conn=%d request_id=%s method=%s path=%s service=%s user=%s ms=%.1f",
            conn.peer_host,
            conn.id,
            conn.request_id.decode(),
            req.method.decode(),
            ex.path,
            service.name,
            identity.user if identity else "-",
            (gw.clock() - ex.started) * 1000,
        )
    return keep


STAGES: tuple[Stage, ...] = (
    recognise,
    oauth_intercept,
    device_facts,
    authenticate,
    decide,
    backend_credentials,
    forward,
)


async def send(gw: Gateway, ex: Exchange) -> bool:
    """Backend credentials, then forward, without the access line: for a request whose
    earlier stages ran elsewhere (the OAuth grant with its identity, the fast path's retry on
    a new upstream connection)."""
    refusal = await gw.prepare_backend(ex)
    if refusal is not None:
        return await gw.answer(ex, refusal)
    return await gw.forward(ex)


async def run_stages(gw: Gateway, ex: Exchange, stages: tuple[Stage, ...] = STAGES) -> bool:
    """Run ``ex`` through ``stages`` until one answers. Returns whether to keep the connection."""
    try:
        for stage in stages:
            outcome = await stage(gw, ex)
            if outcome is None:
                continue
            if outcome is True or outcome is False:
                return outcome
            return await gw.answer(ex, outcome)
        return False  # no stage answered (a list of stages without ``forward``)
    finally:
        if ex.gate is not None:
            ex.gate.done(ex.req)


async def run(gw: Gateway, conn: ClientConnection, req: RequestHead, client: Stream) -> bool:
    """One request through the pipeline. Returns whether to keep the connection."""
    conn.requests += 1
    rid = conn.request_id = new_request_id()
    ctx = begin_request(rid, conn.peer_host)  # this task's log lines carry it (ucgate.logs)
    started = gw.clock() if access_log.isEnabledFor(logging.INFO) else None
    body = RequestBody(req, client, gw.gw.timeouts.body_read)
    return await run_stages(gw, Exchange(conn, req, client, body, ctx, started))


__all__ = [
    "STAGES",
    "Exchange",
    "Refusal",
    "authenticate",
    "backend_credentials",
    "decide",
    "device_facts",
    "forward",
    "oauth_intercept",
    "recognise",
    "run",
    "run_stages",
    "send",
]
