"""The gateway's side of the id service's HTTP API (:mod:`ucgate.id.http_api`).

:class:`RemoteCredentials` implements :class:`ucgate.id.api.CredentialService` over HTTPS
(httpx: one keep-alive pool, the id service's certificate verified against a CA file, short
timeouts). It fails closed: when the id service cannot be reached, times out, refuses our secret
or answers nonsense, the verdict is ``id-service-unavailable`` with ``retry_after`` > 0, which
the pre-authenticator turns into 503 with Retry-After. After a failure to connect, calls fail
fast for :data:`FAIL_FAST` seconds instead of each waiting for a connect timeout.

It also keeps the gateway's two background links to the id service (:meth:`start`):

* the event stream (``GET /v1/events``, Server-Sent Events): ``user-blocked`` and
  ``device-blocked`` events are handed to the gateway's ``on_event`` as
  :class:`ucgate.id.events.UserBlocked` / :class:`~ucgate.id.events.DeviceBlocked`; the stream reconnects
  with ``Last-Event-ID`` so that nothing published during a short break is lost. If the stream
  stays down for longer than ``outage_grace``, the gateway can no longer learn about blocked
  users, so live sessions are cut with reason ``id-service-unavailable`` (as the account
  monitor does when the directory is down);
* the session report (``PUT /v1/sessions``): the users signed in here, for the account monitor
  that runs next to the directory.

:class:`RemoteDeviceChecker` is the device gate's checker over ``POST /v1/devices/check``, on
the same connection pool and fail-fast state: the partnership policy (``[devices]`` defaults,
rules, ``[[policy]]``, notices) lives on the id service; the gateway only extracts the facts
(``[devices] services`` and ``user_agents``). It fails closed too: no answer is outcome
``unavailable`` with ``retry_after``, which the gate answers with 503 and Retry-After.

The SIP relay's budget calls (:meth:`RemoteCredentials.begin_sip` / :meth:`~RemoteCredentials.settle_sip`,
``POST /v1/sip/attempt|settle``) fail closed the same way; a reservation's token carries the
index of the id service that issued it, and its settle goes there only.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import logging
import secrets
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from .. import metrics
from ..errors import UcgateError, reason_of
from ..id.api import (
    AccountBody,
    AttemptContext,
    ContextError,
    DeviceCheckBody,
    DeviceDecisionBody,
    DeviceFactsBody,
    NtlmAnswerBody,
    NtlmBody,
    NtlmHandshake,
    NtlmVerdict,
    PasswordBody,
    SessionsBody,
    SettledBody,
    SipAttemptAnswer,
    SipAttemptAnswerBody,
    SipAttemptRequest,
    SipSettle,
    Verdict,
    VerdictBody,
    W,
    Wire,
    dump_wire,
    parse_wire,
)
from ..id.devices import DeviceCheck
from ..id.events import UserBlocked, event_of, from_wire
from ..logs import request_context
from ..protocols.devices import DeviceFacts

log = logging.getLogger("ucgate.gateway.idclient")
_JSON = {"Content-Type": "application/json"}

UNAVAILABLE = "id-service-unavailable"
RETRY_AFTER = 5.0  # what the 503 tells clients; the id service is usually back within seconds
FAIL_FAST = 1.0
CONNECT_TIMEOUT = 2.0
# A sign-in may wait for the directory on the id side (its LDAP timeout is 5 s by default).
CALL_TIMEOUT = 8.0
RECONNECT_MIN, RECONNECT_MAX = 0.2, 5.0


class IdServiceError(UcgateError):
    """The id service could not answer (transport, status, or body); ``reason`` for the log."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)


def _answer(model: type[W], r: httpx.Response) -> W:
    """An answer body as ``model`` (:mod:`ucgate.id.api`'s wire models); bad-response otherwise."""
    try:
        return parse_wire(model, r.content)
    except ContextError:
        raise IdServiceError("bad-response") from None


class RemoteCredentials:
    """``CredentialService`` over the id service's HTTP API.

    Args:
        url: the id service's base URL, ``https://id.contoso.local:8444``, or a list of the
            pool's id services: each call goes to the current one and, if it cannot be reached
            (or answers 5xx), to the next; one that failed is skipped for :data:`FAIL_FAST`
            seconds. All of them down: ``id-service-unavailable`` (fail closed).
        secret: the shared secret (from the ``secret_file``).
        ca_file: CA certificate(s) that the id service's certificate must chain to; None uses the
            system store. The host name is verified too.
        transport: an httpx transport, for tests.
    """

    def __init__(
        self,
        url: str | list[str] | tuple[str, ...],
        *,
        secret: bytes,
        ca_file: Path | None = None,
        timeout: float = CALL_TIMEOUT,
        connect_timeout: float = CONNECT_TIMEOUT,
        retry_after: float = RETRY_AFTER,
        outage_grace: float = 300.0,
        report_interval: float = 10.0,
        gateway_id: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        verify: ssl.SSLContext | bool = True
        if ca_file is not None:
            verify = ssl.create_default_context(cafile=str(ca_file))
            verify.minimum_version = ssl.TLSVersion.TLSv1_2
        self.urls = tuple(u.rstrip("/") for u in ([url] if isinstance(url, str) else url))
        if not self.urls:
            raise ValueError("no id service URL")
        self._current = 0
        self._down: dict[int, float] = {}  # url index -> monotonic time until which it is skipped
        self._ok_at: dict[int, float] = {}  # url index -> last answer (for readiness)
        self._fail_at: dict[int, float] = {}  # url index -> last failure
        self.retry_after = retry_after
        self.outage_grace = outage_grace
        self.report_interval = report_interval
        self.gateway_id = gateway_id or f"gw-{secrets.token_hex(4)}"
        self.clock = clock
        self._timeout = httpx.Timeout(timeout, connect=connect_timeout, pool=connect_timeout)
        self._client = httpx.AsyncClient(
            verify=verify,
            timeout=self._timeout,
            transport=transport,
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=16, keepalive_expiry=60),
            headers={"Authorization": "Bearer " + secret.decode("ascii")},
            trust_env=False,
        )
        self._tasks: list[asyncio.Task] = []
        self._last_event_id: str | None = None
        self.events_connected = asyncio.Event()

    def __repr__(self) -> str:  # never the secret
        return f"RemoteCredentials({', '.join(self.urls)!r})"

    @property
    def url(self) -> str:
        """The id service the next call goes to first."""
        return self.urls[self._current]

    def _order(self) -> list[int]:
        """URL indexes to try: the current one first, those that failed recently last."""
        now = self.clock()
        n = len(self.urls)
        idx = [(self._current + k) % n for k in range(n)]
        return [i for i in idx if self._down.get(i, 0.0) <= now] or []

    def _failed(self, i: int, reason: str) -> None:
        if self._down.get(i, 0.0) <= self.clock():
            log.warning(
                "id service %s failed (%s)%s", self.urls[i], reason, "; trying the next" if len(self.urls) > 1 else ""
            )
        self._down[i] = self.clock() + FAIL_FAST
        self._fail_at[i] = self.clock()
        if i == self._current and len(self.urls) > 1:
            self._current = (i + 1) % len(self.urls)

    def _answered(self, i: int) -> None:
        self._ok_at[i] = self.clock()

    def ready(self) -> tuple[bool, str]:
        """For ``/readyz``: ready while the event stream is connected or an id service answered
        after its last failure; not ready while every one of them failed last."""
        if self.events_connected.is_set():
            return True, "ok"
        if any(self._ok_at.get(i, 0.0) > self._fail_at.get(i, 0.0) for i in range(len(self.urls))):
            return True, "ok"
        return False, f"no id service answers ({', '.join(self.urls)})"

    # --- calls ---------------------------------------------------------------------------
    async def _request(self, method: str, path: str, body: Wire, ok: int = 200) -> httpx.Response:
        """One call, failing over along the URL list."""
        return (await self._call(method, path, body, ok))[0]

    async def _call(
        self, method: str, path: str, body: Wire, ok: int = 200, at: int | None = None
    ) -> tuple[httpx.Response, int]:
        """One call, failing over along the URL list (only to ``urls[at]`` when given: a call
        that only that id service can answer); the answer and the index that gave it."""
        last = IdServiceError("recently-down")
        ctx = request_context.get()  # the gateway's request id goes along, for the id service's log
        headers = _JSON if ctx is None else {**_JSON, "X-Ucgate-Request-Id": ctx["request_id"]}
        content = dump_wire(body)
        for i in self._order() if at is None else [at]:
            started = time.monotonic()
            try:
                r = await self._client.request(method, self.urls[i] + path, content=content, headers=headers)
                metrics.ID_SERVICE_LATENCY.labels(path).observe(time.monotonic() - started)
            except httpx.TimeoutException as e:
                last = IdServiceError(f"timeout ({type(e).__name__})")
                self._failed(i, last.reason)
                continue
            except httpx.TransportError as e:
                last = IdServiceError(f"unreachable ({type(e).__name__})")
                self._failed(i, last.reason)
                continue
            if r.status_code >= 500:  # that one is unwell (its store, say): the next may not be
                last = IdServiceError(f"HTTP {r.status_code}")
                self._failed(i, last.reason)
                continue
            if r.status_code != ok:
                if r.status_code == 401:
                    log.error(
                        "the id service %s refused our shared secret: check [id_service] secret_file on both sides",
                        self.urls[i],
                    )
                raise IdServiceError(f"HTTP {r.status_code}")
            if at is None:
                self._current = i
            self._answered(i)
            return r, i
        raise last

    async def _post(self, path: str, body: Wire, answer: type[W]) -> W:
        return _answer(answer, await self._request("POST", path, body))

    def _unavailable(self, what: str, e: IdServiceError) -> Verdict:
        log.error("id service %s: %s call failed: %s; failing closed", ", ".join(self.urls), what, e.reason)
        return Verdict(False, UNAVAILABLE, retry_after=self.retry_after)

    async def verify_password(self, name: str, password: str, ctx: AttemptContext) -> Verdict:
        body = PasswordBody.build(user=name, password=password, context=ctx.to_wire())
        try:
            return (await self._post("/v1/auth/password", body, VerdictBody)).verdict()
        except IdServiceError as e:
            return self._unavailable("password", e)

    async def check_account(self, name: str, ctx: AttemptContext) -> Verdict:
        body = AccountBody.build(user=name, context=ctx.to_wire())
        try:
            return (await self._post("/v1/auth/account", body, VerdictBody)).verdict()
        except IdServiceError as e:
            return self._unavailable("account", e)

    async def verify_ntlm(self, handshake: NtlmHandshake, ctx: AttemptContext) -> NtlmVerdict:
        try:
            answer = await self._post("/v1/auth/ntlm", NtlmBody.of(handshake, ctx), NtlmAnswerBody)
        except IdServiceError as e:
            return NtlmVerdict(self._unavailable("ntlm", e))
        return answer.ntlm_verdict()

    # --- the SIP relay's calls (gateway.sip; id.sipattempts on the other side) ------------------
    async def begin_sip(self, req: SipAttemptRequest) -> SipAttemptAnswer:
        """``POST /v1/sip/attempt``. The token handed to the relay is ``<url index>.<token>``:
        the settle goes to the id service that holds the reservation. Fails closed:
        ``id-service-unavailable`` with ``retry_after`` (the relay answers 503)."""
        try:
            r, i = await self._call("POST", "/v1/sip/attempt", req.to_wire())
            answer = SipAttemptAnswer.from_wire(_answer(SipAttemptAnswerBody, r))
        except IdServiceError as e:
            return SipAttemptAnswer(None, self._unavailable("sip attempt", e))
        if answer.token is not None:
            answer = SipAttemptAnswer(f"{i}.{answer.token}", answer.verdict, answer.expires_in)
        return answer

    async def settle_sip(self, s: SipSettle) -> None:
        """``POST /v1/sip/settle`` to the issuer of the token, never failed over (another id
        service does not hold the reservation). If the issuer cannot be reached the unit stays
        charged there (it expires as a failure): logged, never raised."""
        index, _, token = s.token.partition(".")
        if not index.isdigit() or int(index) >= len(self.urls) or not token:
            log.error("SIP: cannot settle a malformed reservation token")
            return
        try:
            r, _ = await self._call(
                "POST", "/v1/sip/settle", SipSettle(token, s.outcome, s.reason).to_wire(), at=int(index)
            )
            settled = _answer(SettledBody, r).settled
        except IdServiceError as e:
            log.error(
                "id service %s: SIP settle (%s) failed: %s; the unit stays charged",
                self.urls[int(index)],
                s.outcome,
                reason_of(e),
            )
            return
        if settled is not True:
            log.warning(
                "id service %s: SIP reservation unknown (expired?) at settle (%s)", self.urls[int(index)], s.outcome
            )

    # --- background links ----------------------------------------------------------------
    def start(
        self, on_event: Callable[[object], None], live_users: Callable[[], dict[str, dt.datetime]] | None = None
    ) -> None:
        """Subscribe to the id service's events and, with ``live_users``, report sessions.
        Call from the gateway's event loop."""
        self._tasks.append(asyncio.create_task(self._probe(), name="ucgate-id-probe"))
        self._tasks.append(asyncio.create_task(self._events(on_event, live_users), name="ucgate-id-events"))
        if live_users is not None:
            self._tasks.append(asyncio.create_task(self._report(live_users), name="ucgate-id-sessions"))

    async def aclose(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            try:
                await t
            except asyncio.CancelledError:
                pass
        self._tasks.clear()
        await self._client.aclose()

    async def _probe(self) -> None:
        """Name, at start-up, the id services of the list that do not answer (the gateway starts
        anyway and fails over to the others)."""

        async def one(i: int) -> None:
            try:
                r = await self._client.get(self.urls[i] + "/v1/health", timeout=self._timeout.connect or 2.0)
                if r.status_code != 200:
                    raise IdServiceError(f"HTTP {r.status_code}")
                self._answered(i)
            except (httpx.HTTPError, IdServiceError, OSError) as e:
                log.warning(
                    "id service %s does not answer at start-up (%s); using the others until it does",
                    self.urls[i],
                    reason_of(e),
                )
                self._failed(i, "unreachable at start-up")

        await asyncio.gather(*(one(i) for i in range(len(self.urls))))

    async def _events(
        self, on_event: Callable[[object], None], live_users: Callable[[], dict[str, dt.datetime]] | None
    ) -> None:
        delay = RECONNECT_MIN
        last_ok = self.clock()
        cut_for_outage = False
        while True:
            i = self._current
            try:
                await self._follow(on_event, i)
                reason = "stream ended"
            except IdServiceError as e:
                reason = e.reason
            except (httpx.HTTPError, ssl.SSLError, OSError) as e:
                reason = type(e).__name__
            self._failed(i, f"event stream: {reason}")  # the next attempt goes to the next one
            if self.events_connected.is_set():
                log.warning("id service %s event stream lost (%s); reconnecting", self.urls[i], reason)
                self.events_connected.clear()
                last_ok, delay, cut_for_outage = self.clock(), RECONNECT_MIN, False
                if len(self.urls) > 1:
                    continue  # straight to the next id service
            if live_users is not None and not cut_for_outage and self.clock() - last_ok > self.outage_grace:
                users = live_users()
                log.error(
                    "no events from the id service for %.0fs: closing %d live user(s)", self.outage_grace, len(users)
                )
                for user in users:
                    on_event(UserBlocked(user, UNAVAILABLE))
                cut_for_outage = True
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX)

    async def _follow(self, on_event: Callable[[object], None], i: int) -> None:
        headers = {"Accept": "text/event-stream"}
        if self._last_event_id:
            headers["Last-Event-ID"] = self._last_event_id
        # The server sends a comment every 15 s; three missed ones mean a dead peer.
        timeout = httpx.Timeout(10.0, connect=self._timeout.connect, read=45.0)
        async with self._client.stream("GET", self.urls[i] + "/v1/events", headers=headers, timeout=timeout) as r:
            if r.status_code != 200:
                if r.status_code == 401:
                    log.error("the id service refused our shared secret for the event stream")
                raise IdServiceError(f"HTTP {r.status_code}")
            self.events_connected.set()
            self._answered(i)
            event_id = kind = None
            data: list[str] = []
            async for line in r.aiter_lines():
                if line == "":
                    if data:
                        self._dispatch(event_id, kind, "\n".join(data), on_event)
                        if event_id and event_id.isdigit():  # the store's row id: any id service resumes
                            self._last_event_id = event_id
                    event_id = kind = None
                    data = []
                    continue
                if line.startswith(":"):
                    continue
                name, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if name == "id":
                    event_id = value
                elif name == "event":
                    kind = value
                elif name == "data":
                    data.append(value)

    @staticmethod
    def _dispatch(event_id: str | None, kind: str | None, data: str, on_event: Callable[[object], None]) -> None:
        try:
            row = from_wire(event_id, kind, data)
        except ValueError:
            log.warning("ignoring a malformed %s event from the id service", str(kind)[:32])
            return
        event = event_of(row)  # None (logged) for a kind this version does not know
        if event is not None:
            metrics.observe_event_lag(row.at, "stream")
            on_event(event)

    async def _report(self, live_users: Callable[[], dict[str, dt.datetime]]) -> None:
        failing = False
        while True:
            body = SessionsBody.build(gateway=self.gateway_id, users=live_users())
            try:
                await self._request("PUT", "/v1/sessions", body, ok=204)
                ok = True
            except (IdServiceError, httpx.HTTPError):
                ok = False
            if not ok and not failing:
                log.warning("could not report live sessions to the id service")
            failing = not ok
            await asyncio.sleep(self.report_interval)


# --- the device gate's checker -------------------------------------------------------------


def _wire_text(value: str | None, limit: int) -> str | None:
    """Free text from a client request as the API takes it: control characters replaced and
    bounded, so that an odd header is decided on (a mismatch, say), never a 400 and a 503."""
    if value is None:
        return None
    clean = "".join("\ufffd" if ord(c) < 0x20 or c == "\x7f" else c for c in value)
    return clean[:limit]


def facts_wire(facts: DeviceFacts) -> DeviceFactsBody:
    """The facts as ``POST /v1/devices/check``'s ``device``, bounded to what the id service takes."""
    out: dict[str, Any] = {
        name: _wire_text(getattr(facts, name), limit) for name, limit in DeviceFactsBody.LIMITS.items()
    }
    if out["device_id"] is None and out["problem"] is None:
        out["problem"] = "absent"
    return DeviceFactsBody.build(**out)


def facts_json(facts: DeviceFacts) -> dict[str, Any]:
    return facts_wire(facts).model_dump(mode="json")


def _device_check(answer: DeviceDecisionBody, facts: DeviceFacts) -> DeviceCheck:
    device_id = answer.device_id if "device_id" in answer.model_fields_set else facts.device_id
    return DeviceCheck(
        answer.outcome,
        answer.reason,
        device_id,
        wipe=answer.wipe,
        trusted_until=answer.trusted_until,
        partnership_id=answer.partnership_id,
        rule=answer.rule or "",
    )


class RemoteDeviceChecker:
    """The :class:`ucgate.gateway.devices.DeviceGate` checker over ``POST /v1/devices/check``.

    Uses ``remote``'s connection pool, secret and fail-fast window. Never raises and never
    allows on failure: the answer is then ``DeviceCheck("unavailable", "id-service-unavailable",
    retry_after=...)``, which the gate turns into 503 with Retry-After. (No ``clock`` attribute:
    the gate then caches allowed decisions by the wall clock.)
    """

    def __init__(self, remote: RemoteCredentials) -> None:
        self.remote = remote
        self._disabled_logged = False

    def __repr__(self) -> str:
        return f"RemoteDeviceChecker({self.remote.url!r})"

    async def check_async(
        self,
        user: str,
        facts: DeviceFacts,
        *,
        service: str,
        second_factor_ok: bool = False,
        credential_id: str | None = None,
        client_address: str | None = None,
    ) -> DeviceCheck:
        try:
            ipaddress.ip_address(client_address or "")
        except ValueError:
            client_address = None  # not an IP (a test transport, a Unix socket): not sent
        body = DeviceCheckBody.build(
            user=user,
            device=facts_wire(facts),
            service=service,
            second_factor_ok=bool(second_factor_ok),
            credential_id=credential_id,
            client_address=client_address,
        )
        try:
            check = _device_check(await self.remote._post("/v1/devices/check", body, DeviceDecisionBody), facts)
        except IdServiceError as e:
            log.error("id service %s: device call failed: %s; failing closed", self.remote.url, e.reason)
            return DeviceCheck("unavailable", UNAVAILABLE, facts.device_id, retry_after=self.remote.retry_after)
        if check.reason == "devices-disabled" and not self._disabled_logged:
            self._disabled_logged = True
            log.warning("the id service has [devices] enabled = false: every device is allowed")
        return check
