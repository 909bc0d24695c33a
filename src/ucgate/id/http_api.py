"""The id service's HTTP API on the LAN side: what gateways in the DMZ call (issue 5).

Versioned JSON over HTTPS, one shared secret (``Authorization: Bearer <secret>``, compared in
constant time) for every call except ``GET /v1/health``:

* ``POST /v1/auth/password`` — a user name and password (an ASP) with the attempt's context;
* ``POST /v1/auth/account`` — is an account verified elsewhere (a Kerberos ticket) still usable;
  answers a verdict ``{ok, reason, user, credential_id, retry_after}``.
* ``POST /v1/auth/ntlm`` — one NTLM exchange as the gateway ran it: the NEGOTIATE, CHALLENGE
  and AUTHENTICATE messages verbatim, the server challenge and the challenge's timestamp, the
  channel-binding application data and the extended-protection mode. The id service rebuilds
  the acceptor (``NtlmAcceptor.from_messages``), looks up the candidates, verifies and records
  the outcome; the verdict carries, when ok, the negotiated flags and the exported session key
  the gateway's SPNEGO acceptor needs for the mechListMIC. NT hashes never leave the LAN: an
  ASP's NT hash is a password equivalent. The session key is per connection and short-lived —
  what Netlogon pass-through (NetrLogonSamLogon) hands an IIS server, too.
* ``POST /v1/devices/check`` — the user/device partnership decision for one request (the
  gateway's decide stage, :class:`ucgate.gateway.devices.DeviceGate`): the signed-in user, the
  request's :class:`~ucgate.protocols.devices.DeviceFacts` as the gateway extracted them, the
  service, whether a second factor came with the sign-in, the credential (ASP) id and the
  client's address → :meth:`ucgate.id.devices.DeviceService.check`'s answer ``{outcome, reason,
  device_id, wipe, trusted_until, rule, partnership_id}``. The policy (``[devices]`` defaults,
  rules, ``[[policy]]``, notices) lives here; the gateway only extracts facts. With
  ``[devices] enabled = false`` on the id service every device is ``allow`` /
  ``devices-disabled``: the id service's configuration is the policy.
* ``POST /v1/sip/attempt`` — the SIP relay is about to forward a REGISTER credential leg
  (NTLM Type 3, Kerberos, TLS-DSK) to the Access Edge: the From's address as typed, the NTLM
  user and domain (if NTLM) and the context → a reservation ``{token, expires_in, ok: true,
  user}`` of one unit of the account's failure budget, or the refusal (``retry_after`` > 0:
  throttled / a dependency down; else a refused account or ``ntlm-user-mismatch``, settled and
  audited here). ``POST /v1/sip/settle`` — ``{token, outcome, reason}``: the Edge's answer
  (:class:`~ucgate.id.api.SipOutcome`) → ``{settled}``. The reservation stays on this id
  service; unsettled after ``expires_in`` it is charged as a failure
  (:mod:`ucgate.id.sipattempts`; a pool: settle goes to the issuer).
* ``GET /v1/events`` — Server-Sent Events: the rows of the store's outbox as they are
  written (``event:`` the kind, ``id:`` the row id, ``data:`` an :class:`~ucgate.id.api.EventBody`;
  the kinds are :data:`~ucgate.id.api.EVENT_KINDS`), a comment every :data:`HEARTBEAT` seconds,
  and the missed rows after a reconnect (``Last-Event-ID``), read from the table.
* ``PUT /v1/sessions`` — a gateway's report of its live signed-in users, so that the account
  monitor (which runs here, next to the directory) knows whom to re-check.
* ``GET /v1/health`` — liveness, no secret needed; ``GET /v1/openapi.json`` — this API
  (OpenAPI 3.1, built by :mod:`ucgate.id.openapi` from :data:`_OPERATIONS` and the bodies'
  models in :mod:`ucgate.id.api`, which both sides validate with; no schema written by hand).
* ``GET /healthz``, ``GET /readyz`` — a balancer's checks, no secret needed: alive, and ready
  (503 with the reason while the store is unreachable; :mod:`ucgate.id.health`).

Errors are JSON: 400 ``{"error": "bad-request", "field": "context.client_ip", "message": ...}``,
401 ``unauthorized``, 404, 405, 413 ``too-large``. Secrets (the bearer, passwords, messages,
session keys) are never logged.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import hmac
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from sqlalchemy import func, select
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ..store.outbox import EventRow
from ..store.schema import live_sessions
from .api import (
    EVENT_KINDS,
    MAX_NAME,
    AccountBody,
    AttemptContext,
    ContextError,
    DeviceCheckBody,
    DeviceDecisionBody,
    ErrorBody,
    EventBody,
    HealthBody,
    NtlmAnswerBody,
    NtlmBody,
    PasswordBody,
    SessionsBody,
    SettledBody,
    SipAttemptAnswerBody,
    SipAttemptBody,
    SipAttemptRequest,
    SipSettle,
    SipSettleBody,
    StatusBody,
    VerdictBody,
    W,
    Wire,
    dump_wire,
    parse_wire,
)
from .events import EventBus, to_wire
from .health import Readiness, health_routes
from .openapi import Operation, document

log = logging.getLogger("ucgate.id.api")

# A sign-in call is < 1 KiB; an NTLM one carries three messages (each < 2 KiB, see ntlm.py) in
# base64. 64 KiB is far above both and bounds what an unauthenticated peer can make us read.
MAX_BODY = 64 * 1024
# SSE comment interval: keeps NAT/firewall state alive and lets the client notice a dead peer
# within a few intervals (its read timeout is a multiple of this).
HEARTBEAT = 15.0
# Events kept for replay after a reconnect; UserBlocked is rare (an admin or the monitor).
REPLAY_EVENTS = 1024
# A gateway's session report is forgotten after this long without a new one.
SESSION_REPORT_TTL = 120.0


class BadRequest(Exception):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field, self.message = field, message


def _error(status: int, error: str, message: str, **extra: Any) -> JSONResponse:
    headers = {"WWW-Authenticate": 'Bearer realm="ucgate-id"'} if status == 401 else None
    return JSONResponse({"error": error, **extra, "message": message}, status_code=status, headers=headers)


# --- request parsing: the models of ucgate.id.api ------------------------------------------


async def _read_body(request: Request, limit: int) -> bytes:
    """The body; 413 past ``limit`` bytes (declared or streamed)."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise HTTPException(413)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise HTTPException(413)
    return bytes(body)


def _parse(model: type[W], body: bytes) -> W:
    """``body`` as ``model``; BadRequest naming the first offending field."""
    try:
        return parse_wire(model, body)
    except ContextError as e:
        raise BadRequest(e.field, e.message) from None


def _answer(body: Wire) -> Response:
    return Response(dump_wire(body), media_type="application/json")


def device_decision(check: Any) -> DeviceDecisionBody:
    return DeviceDecisionBody.build(
        outcome=check.outcome,
        reason=check.reason,
        device_id=check.device_id,
        wipe=bool(check.wipe),
        trusted_until=check.trusted_until,
        rule=getattr(check, "rule", "") or None,
        partnership_id=getattr(check, "partnership_id", None),
    )


# --- events ------------------------------------------------------------------------------


class EventFeed:
    """Streams the store's event rows (``ucgate.id.events``) to SSE clients. The SSE id is the
    row id, the same on every id service of the pool, so a gateway resumes with
    ``Last-Event-ID`` here or on any other: the missed rows are read from the table. Rows reach
    the feed from the bus (written here, or followed from the store), from any thread."""

    def __init__(self, bus: EventBus, *, keep: int = REPLAY_EVENTS) -> None:
        self.bus = bus
        self.keep = keep
        self._streams: set[tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = set()
        self._lock = threading.Lock()
        bus.subscribe_rows(self.publish)

    @staticmethod
    def frame(row: EventRow) -> bytes:
        return f"id: {row.id}\nevent: {row.kind}\ndata: {to_wire(row)}\n\n".encode()

    def publish(self, row: EventRow) -> None:
        with self._lock:
            streams = list(self._streams)
        for loop, queue in streams:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, row)
            except RuntimeError:  # that stream's loop is gone
                pass

    async def _missed(self, last_event_id: str | None) -> list[EventRow]:
        outbox = self.bus.outbox
        if outbox is None or last_event_id is None or not last_event_id.isdigit():
            return []
        after, out = int(last_event_id), list[EventRow]()
        while len(out) < self.keep:
            rows = await asyncio.to_thread(outbox.since, after)
            if not rows:
                break
            out.extend(rows)
            after = rows[-1].id
        return out

    async def stream(self, last_event_id: str | None, heartbeat: float) -> AsyncIterator[bytes]:
        queue: asyncio.Queue[EventRow] = asyncio.Queue()
        entry = (asyncio.get_running_loop(), queue)
        with self._lock:
            self._streams.add(entry)  # before reading the missed rows: nothing falls between
        try:
            yield b"retry: 1000\n\n"
            sent = int(last_event_id) if last_event_id and last_event_id.isdigit() else 0
            for row in await self._missed(last_event_id):
                sent = max(sent, row.id)
                yield self.frame(row)
            while True:
                try:
                    row = await asyncio.wait_for(queue.get(), heartbeat)
                except TimeoutError:
                    yield b": keep-alive\n\n"
                    continue
                if row.id and row.id <= sent:
                    continue  # already replayed
                sent = max(sent, row.id)
                yield self.frame(row)
        finally:
            with self._lock:
                self._streams.discard(entry)

    @property
    def subscribers(self) -> int:
        return len(self._streams)


class LiveSessions:
    """Who is signed in on which gateway, from the gateways' reports: the account monitor's
    ``live_users`` when the gateways run elsewhere. In the store (``live_sessions``) when given
    an engine, so that every id service of the pool sees every gateway's report; in memory
    otherwise (tests)."""

    def __init__(
        self, engine: Any = None, ttl: float = SESSION_REPORT_TTL, clock: Callable[[], float] = time.time
    ) -> None:
        self.ttl, self.clock = ttl, clock
        self.engine = engine
        self._reports: dict[str, tuple[float, dict[str, dt.datetime]]] = {}

    def report(self, gateway: str, users: dict[str, dt.datetime]) -> None:
        if self.engine is None:
            self._reports[gateway] = (self.clock(), users)
            return
        t = live_sessions
        now = self.clock()
        with self.engine.connect().execution_options(ucgate_write=True) as c, c.begin():
            c.execute(t.delete().where(t.c.gateway == gateway))
            if users:
                c.execute(
                    t.insert(),
                    [dict(gateway=gateway, username=u, signed_in_at=at, reported_at=now) for u, at in users.items()],
                )

    def live_users(self) -> dict[str, dt.datetime]:
        now = self.clock()
        out: dict[str, dt.datetime] = {}
        if self.engine is not None:
            t = live_sessions
            with self.engine.connect() as c:
                c.execute(t.delete().where(t.c.reported_at < now - self.ttl * 10))
                c.commit()
                rows = c.execute(
                    select(t.c.username, func.min(t.c.signed_in_at))
                    .where(t.c.reported_at >= now - self.ttl)
                    .group_by(t.c.username)
                ).all()
            return {r[0]: r[1] for r in rows}
        for gw, (at, users) in list(self._reports.items()):
            if now - at > self.ttl:
                del self._reports[gw]
                continue
            for user, since in users.items():
                if user not in out or since < out[user]:
                    out[user] = since
        return out


def _parse_sessions(body: bytes) -> tuple[str, dict[str, dt.datetime]]:
    report = _parse(SessionsBody, body)
    return report.gateway, {name[:MAX_NAME]: when for name, when in report.users.items()}


# --- the application -------------------------------------------------------------------------


def create_id_api(
    credentials: Any,
    *,
    secret: bytes,
    bus: EventBus,
    sessions: LiveSessions | None = None,
    devices: Any = None,
    max_body: int = MAX_BODY,
    heartbeat: float = HEARTBEAT,
    readiness: Readiness | None = None,
    sip: Any = None,
) -> Starlette:
    """The id service's API as an ASGI app (serve it with uvicorn over TLS).

    Args:
        credentials: an :class:`ucgate.id.service.IdService` (``verify_password``, ``verify_ntlm``).
        secret: the shared secret gateways send as ``Authorization: Bearer``.
        bus: the id service's event bus; its ``UserBlocked`` and ``DeviceBlocked`` events go
            to ``/v1/events``.
        sessions: where gateways' session reports go (the account monitor reads it).
        devices: the :class:`ucgate.id.devices.DeviceService` that answers
            ``/v1/devices/check``; None (``[devices] enabled = false``) allows every device.
        readiness: what ``GET /readyz`` asks (``ucgate.id.health``: the store's ``SELECT 1``);
            None: always ready. ``/healthz`` and ``/readyz`` need no secret (a balancer's checks).
        sip: the :class:`ucgate.id.sipattempts.SipAttempts` behind ``/v1/sip/...``; by default
            one over ``credentials``.
    """
    if len(secret) < 16:
        raise ValueError("the shared secret must be at least 16 bytes")
    expected = b"Bearer " + secret
    feed = EventFeed(bus)
    sessions = sessions if sessions is not None else LiveSessions()
    if sip is None and hasattr(credentials, "begin_attempt"):
        from .sipattempts import SipAttempts

        sip = SipAttempts(credentials)

    def authorized(request: Request) -> bool:
        got = request.headers.get("authorization", "").encode("latin-1", "replace")
        return hmac.compare_digest(got, expected)

    def endpoint(handler: Callable, *, public: bool = False) -> Callable:
        async def wrapped(request: Request) -> Response:
            if not public and not authorized(request):
                log.warning(
                    "id API: refused %s %s from %s: bad or missing secret",
                    request.method,
                    request.url.path,
                    request.client.host if request.client else "?",
                )
                return _error(401, "unauthorized", "missing or wrong shared secret")
            try:
                return await handler(request)
            except BadRequest as e:
                return _error(400, "bad-request", e.message, field=e.field)

        return wrapped

    async def password(request: Request) -> Response:
        req = _parse(PasswordBody, await _read_body(request, max_body))
        verdict = await credentials.verify_password(req.user, req.password, AttemptContext.from_wire(req.context))
        return _answer(VerdictBody.of(verdict))

    async def account(request: Request) -> Response:
        req = _parse(AccountBody, await _read_body(request, max_body))
        verdict = await credentials.check_account(req.user, AttemptContext.from_wire(req.context))
        return _answer(VerdictBody.of(verdict))

    async def ntlm(request: Request) -> Response:
        req = _parse(NtlmBody, await _read_body(request, max_body))
        answer = await credentials.verify_ntlm(req.handshake(), AttemptContext.from_wire(req.context))
        return _answer(NtlmAnswerBody.of(answer))

    async def device_check(request: Request) -> Response:
        req = _parse(DeviceCheckBody, await _read_body(request, max_body))
        facts = req.device.facts()
        if devices is None:
            return _answer(
                DeviceDecisionBody.build(
                    outcome="allow",
                    reason="devices-disabled",
                    device_id=facts.device_id,
                    wipe=False,
                    trusted_until=None,
                    rule=None,
                    partnership_id=None,
                )
            )
        return _answer(device_decision(await devices.check_async(req.user, facts, **req.check_kwargs())))

    async def sip_attempt(request: Request) -> Response:
        req = SipAttemptRequest.from_wire(_parse(SipAttemptBody, await _read_body(request, max_body)))
        if sip is None:
            raise HTTPException(404)
        return _answer((await sip.begin_sip(req)).to_wire())

    async def sip_settle(request: Request) -> Response:
        s = SipSettle.from_wire(_parse(SipSettleBody, await _read_body(request, max_body)))
        if sip is None:
            raise HTTPException(404)
        settled = await asyncio.to_thread(sip.settle, s)
        return _answer(SettledBody.build(settled=settled))

    async def events(request: Request) -> Response:
        return StreamingResponse(
            feed.stream(request.headers.get("last-event-id"), heartbeat),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    async def report_sessions(request: Request) -> Response:
        gateway, users = _parse_sessions(await _read_body(request, max_body))
        await asyncio.to_thread(sessions.report, gateway, users)
        return Response(status_code=204)

    async def health(request: Request) -> Response:
        return _answer(HealthBody.build(status="ok"))

    async def openapi(request: Request) -> Response:
        return JSONResponse(openapi_document())

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)  # registered for HTTPException only
        if exc.status_code == 413:
            return _error(413, "too-large", f"request body over {max_body} bytes")
        return _error(exc.status_code, "not-found" if exc.status_code == 404 else "http-error", str(exc.detail))

    app = Starlette(
        routes=[
            Route("/v1/auth/password", endpoint(password), methods=["POST"]),
            Route("/v1/auth/ntlm", endpoint(ntlm), methods=["POST"]),
            Route("/v1/auth/account", endpoint(account), methods=["POST"]),
            Route("/v1/devices/check", endpoint(device_check), methods=["POST"]),
            Route("/v1/sip/attempt", endpoint(sip_attempt), methods=["POST"]),
            Route("/v1/sip/settle", endpoint(sip_settle), methods=["POST"]),
            Route("/v1/events", endpoint(events), methods=["GET"]),
            Route("/v1/sessions", endpoint(report_sessions), methods=["PUT"]),
            Route("/v1/health", endpoint(health, public=True), methods=["GET"]),
            Route("/v1/openapi.json", endpoint(openapi), methods=["GET"]),
            *health_routes(readiness),
        ],
        exception_handlers={HTTPException: http_error},
    )
    app.state.feed = feed
    app.state.sessions = sessions
    app.state.devices = devices
    app.state.sip = sip
    return app


# --- the OpenAPI document: the operations in a table, the schemas from the models --------------

_OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "/v1/auth/password",
        "post",
        "verifyPassword",
        "Check a user name and password (an ASP)",
        "",
        PasswordBody,
        ("200", "The verdict", VerdictBody),
        (400, 401, 413),
        False,
    ),
    Operation(
        "/v1/auth/account",
        "post",
        "checkAccount",
        "Check that an account verified elsewhere (a Kerberos ticket) may still sign in",
        "Account state read fresh from the directory (disabled, locked, expired, password must change) and "
        "the group gate; audited as a sign-in.",
        AccountBody,
        ("200", "The verdict", VerdictBody),
        (400, 401, 413),
        False,
    ),
    Operation(
        "/v1/auth/ntlm",
        "post",
        "verifyNtlm",
        "Verify one NTLMv2 exchange the gateway ran",
        "Messages verbatim (the MIC covers them). The verdict carries the exported session key for the "
        "gateway's SPNEGO mechListMIC; NT hashes never leave the id service.",
        NtlmBody,
        ("200", "The verdict", NtlmAnswerBody),
        (400, 401, 413),
        False,
    ),
    Operation(
        "/v1/devices/check",
        "post",
        "checkDevice",
        "Decide the user/device partnership for one request",
        "The device facts as the gateway extracted them from the request; the id service applies its "
        "[devices] policy, stores the partnership, audits and notifies. `allow` may be cached by the "
        "gateway until `trusted_until`.",
        DeviceCheckBody,
        ("200", "The decision", DeviceDecisionBody),
        (400, 401, 413),
        False,
    ),
    Operation(
        "/v1/sip/attempt",
        "post",
        "beginSipAttempt",
        "Reserve the failure budget for a SIP REGISTER credential leg",
        "Before the relay forwards an NTLM Type 3, Kerberos or TLS-DSK leg to the Access Edge. ok: a token "
        "holding one unit (settle it with /v1/sip/settle within expires_in seconds, else it is charged as a "
        "failure; only this id service can settle it). Not ok: retry_after > 0 is throttled or unavailable "
        "(answer 503), else the account is refused or the NTLM user is not the From's account (answer 403); "
        "settled and audited already.",
        SipAttemptBody,
        ("200", "The reservation or the refusal", SipAttemptAnswerBody),
        (400, 401, 413),
        False,
    ),
    Operation(
        "/v1/sip/settle",
        "post",
        "settleSipAttempt",
        "Settle a SIP reservation with the Access Edge's answer",
        "success: 2xx; failure: a final 401/403/407 or no answer; not-a-guess: 5xx; continued: a 401 that "
        "continues a Kerberos/TLS-DSK handshake (the unit comes back, not audited). settled false: unknown "
        "token (settled, expired, or another id service's).",
        SipSettleBody,
        ("200", "Whether a reservation was settled", SettledBody),
        (400, 401, 413),
        False,
    ),
    Operation(
        "/v1/events",
        "get",
        "events",
        "Server-Sent Events: " + ", ".join(EVENT_KINDS),
        "Each event's `event:` is its kind, its `id:` the row id of the store's outbox (send it back as "
        "`Last-Event-ID` to any id service of the pool after a reconnect), its `data:` an Event object.",
        None,
        ("200", "The stream, open until the client leaves", "text/event-stream"),
        (401,),
        parameters=({"name": "Last-Event-ID", "in": "header", "required": False, "schema": {"type": "string"}},),
    ),
    Operation(
        "/v1/sessions",
        "put",
        "reportSessions",
        "A gateway's live signed-in users, for the account monitor",
        "",
        SessionsBody,
        ("204", "Recorded", None),
        (400, 401, 413),
        False,
    ),
    Operation(
        "/v1/health", "get", "health", "Liveness (no secret needed)", "", None, ("200", "Up", HealthBody), (), True
    ),
    Operation(
        "/healthz",
        "get",
        "healthz",
        "Alive, for a balancer's check (no secret needed)",
        "",
        None,
        ("200", "Alive", StatusBody),
        (),
        True,
    ),
    Operation(
        "/readyz",
        "get",
        "readyz",
        "Ready, for a balancer's check: 503 while the store is unreachable (no secret needed)",
        "",
        None,
        ("200", "Ready", StatusBody),
        (),
        True,
        more=(("503", "Not ready; `reason` says why", StatusBody),),
    ),
    Operation(
        "/v1/openapi.json", "get", "openapi", "This document", "", None, ("200", "OpenAPI 3.1", "object"), (401,), False
    ),
)

_CTX = {
    "client_ip": "192.0.2.7",
    "method": "basic",
    "service": "eas",
    "device_id": "ApplDEV1",
    "user_agent": "Apple-iPhone9C1/1402.100",
}
_B = "TlRMTVNTUAAB"  # base64 of the start of an NTLM message
# One example body per model, in the document (media type ``example``) and validated by the tests.
EXAMPLES: dict[type[Wire], dict[str, Any]] = {
    PasswordBody: {"user": "alice", "password": "abcd efgh ijkl mnop", "context": _CTX},
    AccountBody: {"user": "alice@contoso.com", "context": {**_CTX, "method": "kerberos"}},
    VerdictBody: {"ok": True, "reason": "ok", "user": "alice", "credential_id": "asp-3f2a", "retry_after": 0.0},
    NtlmBody: {
        "negotiate": _B,
        "challenge": _B,
        "authenticate": _B,
        "server_challenge": "MTIzNDU2Nzg=",
        "challenge_time": 133_000_000_000_000_000,
        "channel_binding": None,
        "extended_protection": "require",
        "max_clock_skew": 300,
        "context": {**_CTX, "method": "ntlm"},
    },
    NtlmAnswerBody: {
        "ok": True,
        "reason": "ok",
        "user": "alice",
        "credential_id": "asp-3f2a",
        "retry_after": 0.0,
        "session": {
            "exported_session_key": "AAECAwQFBgcICQoLDA0ODw==",
            "flags": 3800728117,
            "mic_present": True,
            "channel_binding": "verified",
            "target_name": "HTTP/mail",
        },
    },
    DeviceCheckBody: {
        "user": "alice",
        "service": "eas",
        "second_factor_ok": False,
        "credential_id": None,
        "client_address": "192.0.2.7",
        "device": {
            "device_id": "ApplDEV1",
            "device_type": "iPhone",
            "model": None,
            "os": None,
            "user_agent": "Apple-iPhone9C1/1402.100",
            "client_kind": "ios",
            "source": "eas-query",
            "problem": None,
            "claimed_user": "alice",
            "command": "FolderSync",
            "detail": "",
        },
    },
    DeviceDecisionBody: {
        "outcome": "allow",
        "reason": "trusted",
        "device_id": "ApplDEV1",
        "wipe": False,
        "trusted_until": "2030-01-01T00:00:00+00:00",
        "rule": None,
        "partnership_id": 7,
    },
    SipAttemptBody: {
        "user": "sip:alice@contoso.com",
        "ntlm_user": "alice",
        "ntlm_domain": "CONTOSO",
        "context": {**_CTX, "method": "sip", "service": "sip"},
    },
    SipAttemptAnswerBody: {
        "ok": True,
        "reason": "ok",
        "user": "alice",
        "credential_id": None,
        "retry_after": 0.0,
        "token": "0f3c9a",
        "expires_in": 30.0,
    },
    SipSettleBody: {"token": "0f3c9a", "outcome": "success", "reason": "ok"},
    SettledBody: {"settled": True},
    SessionsBody: {"gateway": "gw-1", "users": {"alice": "2025-03-01T09:00:00+00:00"}},
    HealthBody: {"status": "ok"},
    StatusBody: {"status": "not-ready", "reason": "store-unavailable"},
    EventBody: {
        "user": "alice",
        "reason": "device-blocked",
        "device_id": "ApplDEV1",
        "credential": None,
        "signed_in_before": None,
        "at": "2026-12-02T08:00:00Z",
    },
    ErrorBody: {"error": "bad-request", "field": "context.client_ip", "message": "not an IP address"},
}

_ERROR_TEXT = {
    400: "Malformed call; `field` names the offending field",
    401: "Missing or wrong shared secret",
    413: "Request body too large",
}


@functools.cache
def openapi_document(operations: tuple[Operation, ...] = _OPERATIONS) -> dict[str, Any]:
    """The id service's OpenAPI 3.1 document (built once, on the first ``GET /v1/openapi.json``)."""
    return document(
        title="ucgate id service",
        description="What gateways in the DMZ ask the id service on the LAN. Every call but "
        "/v1/health and the balancer checks needs `Authorization: Bearer <shared secret>`.",
        operations=operations,
        security="sharedSecret",
        error_model=ErrorBody,
        error_text=_ERROR_TEXT,
        examples=EXAMPLES,
        models=(EventBody,),
    )
