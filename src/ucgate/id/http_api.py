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
* ``GET /v1/events`` — Server-Sent Events: ``user-blocked`` (close that user's live sessions)
  and ``device-blocked`` (close one device's connections of that user: blocked, wiped,
  deleted) events as they are published, a comment every :data:`HEARTBEAT` seconds, and replay
  of missed events after a reconnect (``Last-Event-ID``) from a small ring buffer.
* ``PUT /v1/sessions`` — a gateway's report of its live signed-in users, so that the account
  monitor (which runs here, next to the directory) knows whom to re-check.
* ``GET /v1/health`` — liveness, no secret needed; ``GET /v1/openapi.json`` — this API.
* ``GET /healthz``, ``GET /readyz`` — a balancer's checks, no secret needed: alive, and ready
  (503 with the reason while the store is unreachable; :mod:`ucgate.id.health`).

Errors are JSON: 400 ``{"error": "bad-request", "field": "context.client_ip", "message": ...}``,
401 ``unauthorized``, 404, 405, 413 ``too-large``. Secrets (the bearer, passwords, messages,
session keys) are never logged.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime as dt
import hmac
import ipaddress
import json
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

from ..protocols.devices import MAX_DEVICE_ID_CHARS, MAX_USER_AGENT_CHARS, DeviceFacts
from ..store.outbox import EventRow
from ..store.schema import live_sessions
from .api import (
    AttemptContext,
    ContextError,
    Method,
    NtlmHandshake,
    NtlmVerdict,
    SipAttemptRequest,
    SipOutcome,
    SipSettle,
    Verdict,
)
from .events import EventBus, to_wire
from .health import Readiness, health_routes

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
MAX_NAME = 256  # user names, as in the gateway's Basic check
_EXTENDED_PROTECTION = ("require", "allow", "off")


class BadRequest(Exception):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field, self.message = field, message


def _error(status: int, error: str, message: str, **extra: Any) -> JSONResponse:
    headers = {"WWW-Authenticate": 'Bearer realm="ucgate-id"'} if status == 401 else None
    return JSONResponse({"error": error, **extra, "message": message}, status_code=status, headers=headers)


# --- request parsing ---------------------------------------------------------------------


async def _read_json(request: Request, limit: int) -> dict[str, Any]:
    """The body as a JSON object; 413 past ``limit`` bytes (declared or streamed)."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise HTTPException(413)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise HTTPException(413)
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("body", "not valid JSON") from None
    if not isinstance(obj, dict):
        raise BadRequest("body", "expected a JSON object")
    return obj


def _get(obj: dict, key: str, prefix: str, kind: type | tuple, *, required: bool = True) -> Any:
    name = f"{prefix}{key}"
    if key not in obj or obj[key] is None:
        if required:
            raise BadRequest(name, "required")
        return None
    v = obj[key]
    if isinstance(v, bool) and kind is not bool:
        raise BadRequest(name, "expected a " + getattr(kind, "__name__", "value") + ", got a boolean")
    if not isinstance(v, kind):
        raise BadRequest(name, f"expected {getattr(kind, '__name__', kind)}, got {type(v).__name__}")
    return v


def _text(obj: dict, key: str, prefix: str = "", *, required: bool = True, max_len: int = MAX_NAME) -> Any:
    v = _get(obj, key, prefix, str, required=required)
    if v is not None and (len(v) > max_len or any(ord(c) < 0x20 or c == "\x7f" for c in v)):
        raise BadRequest(f"{prefix}{key}", f"at most {max_len} characters, no control characters")
    return v


def _b64(obj: dict, key: str, prefix: str = "", *, required: bool = True, size: int | None = None) -> Any:
    v = _get(obj, key, prefix, str, required=required)
    if v is None:
        return None
    try:
        raw = base64.b64decode(v, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"{prefix}{key}", "not base64") from None
    if size is not None and len(raw) != size:
        raise BadRequest(f"{prefix}{key}", f"expected {size} bytes")
    return raw


def _context(obj: dict) -> AttemptContext:
    try:
        return AttemptContext.from_json(_get(obj, "context", "", dict))
    except ContextError as e:
        raise BadRequest(e.field, e.message) from None


def parse_ntlm_request(obj: dict) -> NtlmHandshake:
    ep = _text(obj, "extended_protection", required=False) or "require"
    if ep not in _EXTENDED_PROTECTION:
        raise BadRequest("extended_protection", f"expected one of {', '.join(_EXTENDED_PROTECTION)}")
    skew = _get(obj, "max_clock_skew", "", int, required=False)
    if skew is not None and not 0 <= skew <= 3600:
        raise BadRequest("max_clock_skew", "expected 0..3600 seconds")
    when = _get(obj, "challenge_time", "", int)
    if not 0 < when < 2**63:
        raise BadRequest("challenge_time", "expected a FILETIME")
    return NtlmHandshake(
        negotiate=_b64(obj, "negotiate"), challenge=_b64(obj, "challenge"),
        authenticate=_b64(obj, "authenticate"), server_challenge=_b64(obj, "server_challenge", size=8),
        challenge_time=when, channel_binding_data=_b64(obj, "channel_binding", required=False),
        extended_protection=ep, max_clock_skew=300 if skew is None else skew,
    )


# DeviceFacts fields on the wire: (name, required, max length); the gateway extracted them.
_FACT_FIELDS = (
    ("device_id", False, MAX_DEVICE_ID_CHARS), ("device_type", False, MAX_NAME),
    ("model", False, MAX_NAME), ("os", False, MAX_NAME), ("user_agent", False, MAX_USER_AGENT_CHARS),
    ("client_kind", True, 64), ("source", True, 64), ("problem", False, 64),
    ("claimed_user", False, MAX_NAME * 2), ("command", False, 64), ("detail", False, MAX_NAME),
)


def parse_device_check(obj: dict) -> tuple[str, DeviceFacts, dict[str, Any]]:
    """(user, facts, keyword arguments of ``DeviceService.check``) from a device-check call."""
    user = _text(obj, "user")
    if not user:
        raise BadRequest("user", "must not be empty")
    d = _get(obj, "device", "", dict)
    values = {name: _text(d, name, "device.", required=required, max_len=limit)
              for name, required, limit in _FACT_FIELDS}
    values["detail"] = values["detail"] or ""
    if values["device_id"] is None and values["problem"] is None:
        raise BadRequest("device.problem", "required when device.device_id is null")
    service = _text(obj, "service", max_len=64)
    second = _get(obj, "second_factor_ok", "", bool, required=False)
    client = _text(obj, "client_address", required=False, max_len=64)
    if client is not None:
        try:
            ipaddress.ip_address(client)
        except ValueError:
            raise BadRequest("client_address", "not an IP address") from None
    return user, DeviceFacts(**values), {
        "service": service, "second_factor_ok": bool(second),
        "credential_id": _text(obj, "credential_id", required=False, max_len=128),
        "client_address": client,
    }


def device_check_json(check: Any) -> dict[str, Any]:
    until = check.trusted_until
    return {"outcome": check.outcome, "reason": check.reason, "device_id": check.device_id,
            "wipe": bool(check.wipe), "trusted_until": until.isoformat() if until else None,
            "rule": getattr(check, "rule", "") or None,
            "partnership_id": getattr(check, "partnership_id", None)}


def verdict_json(v: Verdict) -> dict[str, Any]:
    return {"ok": v.ok, "reason": v.reason, "user": v.user, "credential_id": v.credential_id,
            "retry_after": v.retry_after}


def ntlm_verdict_json(answer: NtlmVerdict) -> dict[str, Any]:
    out = verdict_json(answer.verdict)
    r = answer.result
    out["session"] = None if r is None or not answer.verdict.ok else {
        "exported_session_key": base64.b64encode(r.exported_session_key).decode(),
        "flags": int(r.flags),
        "mic_present": r.mic_present,
        "channel_binding": r.channel_binding,
        "target_name": r.target_name,
    }
    return out


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
        after, out = int(last_event_id), []
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

    def __init__(self, engine: Any = None, ttl: float = SESSION_REPORT_TTL,
                 clock: Callable[[], float] = time.time) -> None:
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
                c.execute(t.insert(), [dict(gateway=gateway, username=u, signed_in_at=at,
                                            reported_at=now) for u, at in users.items()])

    def live_users(self) -> dict[str, dt.datetime]:
        now = self.clock()
        out: dict[str, dt.datetime] = {}
        if self.engine is not None:
            t = live_sessions
            with self.engine.connect() as c:
                c.execute(t.delete().where(t.c.reported_at < now - self.ttl * 10))
                c.commit()
                rows = c.execute(select(t.c.username, func.min(t.c.signed_in_at))
                                 .where(t.c.reported_at >= now - self.ttl).group_by(t.c.username)).all()
            return {r[0]: r[1] for r in rows}
        for gw, (at, users) in list(self._reports.items()):
            if now - at > self.ttl:
                del self._reports[gw]
                continue
            for user, since in users.items():
                if user not in out or since < out[user]:
                    out[user] = since
        return out


def _parse_sessions(obj: dict) -> tuple[str, dict[str, dt.datetime]]:
    gateway = _text(obj, "gateway", max_len=128)
    users = _get(obj, "users", "", dict)
    out: dict[str, dt.datetime] = {}
    for name, since in users.items():
        field = f"users.{name[:64]}"
        if not isinstance(since, str):
            raise BadRequest(field, "expected an ISO 8601 time")
        try:
            when = dt.datetime.fromisoformat(since)
        except ValueError:
            raise BadRequest(field, "expected an ISO 8601 time") from None
        if when.tzinfo is None:
            raise BadRequest(field, "time without a UTC offset")
        out[name[:MAX_NAME]] = when
    return gateway, out


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
                log.warning("id API: refused %s %s from %s: bad or missing secret", request.method,
                            request.url.path, request.client.host if request.client else "?")
                return _error(401, "unauthorized", "missing or wrong shared secret")
            try:
                return await handler(request)
            except BadRequest as e:
                return _error(400, "bad-request", e.message, field=e.field)

        return wrapped

    async def password(request: Request) -> Response:
        obj = await _read_json(request, max_body)
        user = _text(obj, "user")
        pw = _get(obj, "password", "", str)
        if len(pw) > MAX_NAME:
            raise BadRequest("password", f"at most {MAX_NAME} characters")
        if not user:
            raise BadRequest("user", "must not be empty")
        verdict = await credentials.verify_password(user, pw, _context(obj))
        return JSONResponse(verdict_json(verdict))

    async def account(request: Request) -> Response:
        obj = await _read_json(request, max_body)
        user = _text(obj, "user")
        if not user:
            raise BadRequest("user", "must not be empty")
        verdict = await credentials.check_account(user, _context(obj))
        return JSONResponse(verdict_json(verdict))

    async def ntlm(request: Request) -> Response:
        obj = await _read_json(request, max_body)
        handshake = parse_ntlm_request(obj)
        answer = await credentials.verify_ntlm(handshake, _context(obj))
        return JSONResponse(ntlm_verdict_json(answer))

    async def device_check(request: Request) -> Response:
        user, facts, kw = parse_device_check(await _read_json(request, max_body))
        if devices is None:
            return JSONResponse({"outcome": "allow", "reason": "devices-disabled",
                                 "device_id": facts.device_id, "wipe": False, "trusted_until": None,
                                 "rule": None, "partnership_id": None})
        return JSONResponse(device_check_json(await devices.check_async(user, facts, **kw)))

    async def sip_attempt(request: Request) -> Response:
        obj = await _read_json(request, max_body)
        try:
            req = SipAttemptRequest.from_json(obj)
        except ContextError as e:
            raise BadRequest(e.field, e.message) from None
        if sip is None:
            raise HTTPException(404)
        return JSONResponse((await sip.begin_sip(req)).to_json())

    async def sip_settle(request: Request) -> Response:
        obj = await _read_json(request, max_body)
        try:
            s = SipSettle.from_json(obj)
        except ContextError as e:
            raise BadRequest(e.field, e.message) from None
        if sip is None:
            raise HTTPException(404)
        settled = await asyncio.to_thread(sip.settle, s)
        return JSONResponse({"settled": settled})

    async def events(request: Request) -> Response:
        return StreamingResponse(
            feed.stream(request.headers.get("last-event-id"), heartbeat),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    async def report_sessions(request: Request) -> Response:
        gateway, users = _parse_sessions(await _read_json(request, max_body))
        sessions.report(gateway, users)
        return Response(status_code=204)

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def openapi(request: Request) -> Response:
        return JSONResponse(OPENAPI)

    async def http_error(request: Request, exc: HTTPException) -> Response:
        if exc.status_code == 413:
            return _error(413, "too-large", f"request body over {max_body} bytes")
        return _error(exc.status_code, "not-found" if exc.status_code == 404 else "http-error",
                      str(exc.detail))

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


# --- the OpenAPI document ------------------------------------------------------------------

_B64 = {"type": "string", "format": "byte"}
_ERR = {"$ref": "#/components/schemas/Error"}
_STATUS = {"type": "object", "required": ["status"],
           "properties": {"status": {"type": "string"}, "reason": {"type": "string"}}}


def _json(schema: dict) -> dict:
    return {"application/json": {"schema": schema}}


def _errors(*codes: int) -> dict:
    text = {400: "Malformed call; `field` names the offending field", 401: "Missing or wrong shared secret",
            413: "Request body too large"}
    return {str(c): {"description": text[c], "content": _json(_ERR)} for c in codes}


OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {
        "title": "ucgate id service",
        "version": "1",
        "description": "What gateways in the DMZ ask the id service on the LAN. Every call but "
                       "/v1/health needs `Authorization: Bearer <shared secret>`.",
    },
    "paths": {
        "/v1/auth/password": {"post": {
            "summary": "Check a user name and password (an ASP)",
            "operationId": "verifyPassword",
            "requestBody": {"required": True, "content": _json({
                "type": "object", "required": ["user", "password", "context"],
                "properties": {"user": {"type": "string", "maxLength": MAX_NAME},
                               "password": {"type": "string", "maxLength": MAX_NAME},
                               "context": {"$ref": "#/components/schemas/Context"}}})},
            "responses": {"200": {"description": "The verdict", "content": _json({"$ref": "#/components/schemas/Verdict"})},
                          **_errors(400, 401, 413)},
        }},
        "/v1/auth/account": {"post": {
            "summary": "Check that an account verified elsewhere (a Kerberos ticket) may still sign in",
            "description": "Account state read fresh from the directory (disabled, locked, expired, "
                           "password must change) and the group gate; audited as a sign-in.",
            "operationId": "checkAccount",
            "requestBody": {"required": True, "content": _json({
                "type": "object", "required": ["user", "context"],
                "properties": {"user": {"type": "string", "maxLength": MAX_NAME},
                               "context": {"$ref": "#/components/schemas/Context"}}})},
            "responses": {"200": {"description": "The verdict", "content": _json({"$ref": "#/components/schemas/Verdict"})},
                          **_errors(400, 401, 413)},
        }},
        "/v1/auth/ntlm": {"post": {
            "summary": "Verify one NTLMv2 exchange the gateway ran",
            "description": "Messages verbatim (the MIC covers them). The verdict carries the exported "
                           "session key for the gateway's SPNEGO mechListMIC; NT hashes never leave the id service.",
            "operationId": "verifyNtlm",
            "requestBody": {"required": True, "content": _json({
                "type": "object",
                "required": ["negotiate", "challenge", "authenticate", "server_challenge", "challenge_time", "context"],
                "properties": {
                    "negotiate": _B64, "challenge": _B64, "authenticate": _B64,
                    "server_challenge": {**_B64, "description": "8 bytes"},
                    "challenge_time": {"type": "integer", "format": "int64",
                                       "description": "FILETIME of the CHALLENGE's MsvAvTimestamp"},
                    "channel_binding": {**_B64, "nullable": True,
                                        "description": "tls-server-end-point application data (RFC 5929)"},
                    "extended_protection": {"type": "string", "enum": list(_EXTENDED_PROTECTION), "default": "require"},
                    "max_clock_skew": {"type": "integer", "minimum": 0, "maximum": 3600, "default": 300},
                    "context": {"$ref": "#/components/schemas/Context"},
                }})},
            "responses": {"200": {"description": "The verdict", "content": _json({"allOf": [
                {"$ref": "#/components/schemas/Verdict"},
                {"type": "object", "properties": {"session": {"$ref": "#/components/schemas/NtlmSession"}}}]})},
                **_errors(400, 401, 413)},
        }},
        "/v1/devices/check": {"post": {
            "summary": "Decide the user/device partnership for one request",
            "description": "The device facts as the gateway extracted them from the request; the id "
                           "service applies its [devices] policy, stores the partnership, audits and "
                           "notifies. `allow` may be cached by the gateway until `trusted_until`.",
            "operationId": "checkDevice",
            "requestBody": {"required": True, "content": _json({
                "type": "object", "required": ["user", "device", "service"],
                "properties": {
                    "user": {"type": "string", "maxLength": MAX_NAME},
                    "device": {"$ref": "#/components/schemas/DeviceFacts"},
                    "service": {"type": "string", "maxLength": 64, "description": "eas, ucwa, certprov, ..."},
                    "second_factor_ok": {"type": "boolean", "default": False},
                    "credential_id": {"type": "string", "nullable": True,
                                      "description": "the ASP's id, for an ASP bound to a device"},
                    "client_address": {"type": "string", "nullable": True, "description": "the device's IP address"},
                }})},
            "responses": {"200": {"description": "The decision",
                                  "content": _json({"$ref": "#/components/schemas/DeviceDecision"})},
                          **_errors(400, 401, 413)},
        }},
        "/v1/sip/attempt": {"post": {
            "summary": "Reserve the failure budget for a SIP REGISTER credential leg",
            "description": "Before the relay forwards an NTLM Type 3, Kerberos or TLS-DSK leg to the "
                           "Access Edge. ok: a token holding one unit (settle it with /v1/sip/settle "
                           "within expires_in seconds, else it is charged as a failure; only this id "
                           "service can settle it). Not ok: retry_after > 0 is throttled or unavailable "
                           "(answer 503), else the account is refused or the NTLM user is not the "
                           "From's account (answer 403); settled and audited already.",
            "operationId": "beginSipAttempt",
            "requestBody": {"required": True, "content": _json({
                "type": "object", "required": ["user", "context"],
                "properties": {
                    "user": {"type": "string", "maxLength": 2 * MAX_NAME, "description": "the From's address, sip:user@domain"},
                    "ntlm_user": {"type": "string", "nullable": True, "maxLength": MAX_NAME},
                    "ntlm_domain": {"type": "string", "nullable": True, "maxLength": MAX_NAME,
                                    "description": "only with ntlm_user"},
                    "context": {"$ref": "#/components/schemas/Context",
                                "description": "method must be sip"}}})},
            "responses": {"200": {"description": "The reservation or the refusal", "content": _json({"allOf": [
                {"$ref": "#/components/schemas/Verdict"},
                {"type": "object", "properties": {
                    "token": {"type": "string", "nullable": True, "maxLength": 128},
                    "expires_in": {"type": "number"}}}]})},
                **_errors(400, 401, 413)},
        }},
        "/v1/sip/settle": {"post": {
            "summary": "Settle a SIP reservation with the Access Edge's answer",
            "description": "success: 2xx; failure: a final 401/403/407 or no answer; not-a-guess: 5xx; "
                           "continued: a 401 that continues a Kerberos/TLS-DSK handshake (the unit comes "
                           "back, not audited). settled false: unknown token (settled, expired, or "
                           "another id service's).",
            "operationId": "settleSipAttempt",
            "requestBody": {"required": True, "content": _json({
                "type": "object", "required": ["token", "outcome", "reason"],
                "properties": {
                    "token": {"type": "string", "maxLength": 128},
                    "outcome": {"type": "string", "enum": [o.value for o in SipOutcome]},
                    "reason": {"type": "string", "maxLength": 64, "description": "for the audit"}}})},
            "responses": {"200": {"description": "Whether a reservation was settled", "content": _json({
                "type": "object", "required": ["settled"], "properties": {"settled": {"type": "boolean"}}})},
                **_errors(400, 401, 413)},
        }},
        "/v1/events": {"get": {
            "summary": "Server-Sent Events: user-blocked, device-blocked",
            "operationId": "events",
            "parameters": [{"name": "Last-Event-ID", "in": "header", "required": False, "schema": {"type": "string"}}],
            "responses": {"200": {"description": "`event: user-blocked`, `data:` a UserBlocked object; "
                                                 "`event: device-blocked`, `data:` a DeviceBlocked object",
                                  "content": {"text/event-stream": {"schema": {"type": "string"}}}},
                          **_errors(401)},
        }},
        "/v1/sessions": {"put": {
            "summary": "A gateway's live signed-in users, for the account monitor",
            "operationId": "reportSessions",
            "requestBody": {"required": True, "content": _json({
                "type": "object", "required": ["gateway", "users"],
                "properties": {"gateway": {"type": "string"},
                               "users": {"type": "object", "additionalProperties": {"type": "string", "format": "date-time"}}}})},
            "responses": {"204": {"description": "Recorded"}, **_errors(400, 401, 413)},
        }},
        "/v1/health": {"get": {
            "summary": "Liveness (no secret needed)", "operationId": "health", "security": [],
            "responses": {"200": {"description": "Up", "content": _json({"type": "object", "properties": {"status": {"type": "string"}}})}},
        }},
        "/healthz": {"get": {
            "summary": "Alive, for a balancer's check (no secret needed)", "operationId": "healthz", "security": [],
            "responses": {"200": {"description": "Alive", "content": _json(_STATUS)}},
        }},
        "/readyz": {"get": {
            "summary": "Ready, for a balancer's check: 503 while the store is unreachable (no secret needed)",
            "operationId": "readyz", "security": [],
            "responses": {"200": {"description": "Ready", "content": _json(_STATUS)},
                          "503": {"description": "Not ready; `reason` says why", "content": _json(_STATUS)}},
        }},
        "/v1/openapi.json": {"get": {
            "summary": "This document", "operationId": "openapi",
            "responses": {"200": {"description": "OpenAPI 3.0", "content": _json({"type": "object"})}, **_errors(401)},
        }},
    },
    "components": {
        "securitySchemes": {"sharedSecret": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "Context": {"type": "object", "required": ["client_ip", "method", "service"], "properties": {
                "client_ip": {"type": "string"},
                "method": {"type": "string", "enum": [m.value for m in Method]},
                "service": {"type": "string"},
                "device_id": {"type": "string", "nullable": True},
                "user_agent": {"type": "string", "nullable": True}}},
            "Verdict": {"type": "object", "required": ["ok", "reason", "retry_after"], "properties": {
                "ok": {"type": "boolean"},
                "reason": {"type": "string", "description": "A code for logs and audit"},
                "user": {"type": "string", "nullable": True},
                "credential_id": {"type": "string", "nullable": True},
                "retry_after": {"type": "number", "description": "> 0: throttled or unavailable, seconds"}}},
            "NtlmSession": {"type": "object", "nullable": True, "properties": {
                "exported_session_key": _B64,
                "flags": {"type": "integer", "format": "int64"},
                "mic_present": {"type": "boolean"},
                "channel_binding": {"type": "string", "enum": ["verified", "absent", "not-checked"]},
                "target_name": {"type": "string", "nullable": True}}},
            "DeviceFacts": {"type": "object", "required": ["client_kind", "source"], "properties": {
                "device_id": {"type": "string", "nullable": True, "maxLength": MAX_DEVICE_ID_CHARS,
                              "description": "normalised; null when `problem` says why"},
                "device_type": {"type": "string", "nullable": True},
                "model": {"type": "string", "nullable": True},
                "os": {"type": "string", "nullable": True},
                "user_agent": {"type": "string", "nullable": True, "maxLength": MAX_USER_AGENT_CHARS},
                "client_kind": {"type": "string"},
                "source": {"type": "string"},
                "problem": {"type": "string", "nullable": True},
                "claimed_user": {"type": "string", "nullable": True,
                                 "description": "the user the request names (EAS User=, CertProv Entity)"},
                "command": {"type": "string", "nullable": True},
                "detail": {"type": "string", "nullable": True}}},
            "DeviceDecision": {"type": "object", "required": ["outcome", "reason", "wipe"], "properties": {
                "outcome": {"type": "string", "enum": ["allow", "quarantine", "deny", "challenge"]},
                "reason": {"type": "string", "description": "A code for logs and audit"},
                "device_id": {"type": "string", "nullable": True},
                "wipe": {"type": "boolean", "description": "answer with the EAS remote wipe"},
                "trusted_until": {"type": "string", "format": "date-time", "nullable": True},
                "rule": {"type": "string", "nullable": True},
                "partnership_id": {"type": "integer", "nullable": True}}},
            "DeviceBlocked": {"type": "object", "properties": {
                "user": {"type": "string"}, "device_id": {"type": "string"}, "reason": {"type": "string"}}},
            "UserBlocked": {"type": "object", "properties": {
                "user": {"type": "string"}, "reason": {"type": "string"},
                "signed_in_before": {"type": "string", "format": "date-time", "nullable": True}}},
            "Error": {"type": "object", "required": ["error", "message"], "properties": {
                "error": {"type": "string"}, "field": {"type": "string"}, "message": {"type": "string"}}},
        },
    },
    "security": [{"sharedSecret": []}],
}
