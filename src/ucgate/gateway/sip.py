"""The SIP relay: a SIP-over-TLS listener in front of the Access Edge that inspects, decides and
relays every message unchanged (issue 18).

MS-SIPAE signs SIP messages end to end between the client and the Edge (the signature covers
Call-ID, CSeq, From, To, Expires... as sent, MS-SIPAE 3.2.5.2), so the relay never rewrites a
message: each one is framed by :class:`~ucgate.protocols.sip.SipFramer` and its exact bytes
(``SipMessage.raw``) go on, or the relay answers it itself (a refusal with an ``ms-diagnostics``
reason, :func:`local_answer`) and closes the connection. Nothing it cannot frame strictly reaches
the Edge, and nothing the Edge sends that it cannot frame reaches the client.

One client connection, one Edge connection (opened with the first message to forward; TLS,
chain, expiry and name verified). What is decided, per message from the client:

* **framing** (``protocols/sip.py``): bare CR/LF, folding, NUL or controls, a second
  Content-Length, oversized heads, lines or messages... → logged and audited (``sip-refused``),
  the connection closed (no answer: a message that does not frame has no Via to answer to);
* **who**: a REGISTER names its user in From and To (``registered_user``: the same address, a
  SIP URI with a user); one user per connection; on a registered connection every request's
  From is that user. The NTLM user inside a Type 3 must be the *same account* as the From's
  address (both resolved through the id service, as the web side resolves names), else 403
  ``ntlm-user-mismatch``. An unknown authentication scheme, or two credentials in one
  message, are refused (``sipauth.py``);
* **the failure budget**: a REGISTER whose credentials can be checked against the directory by
  the Edge — an NTLM Type 3, a Kerberos token, a TLS-DSK leg — reserves one failure
  (``begin_sip``, method ``sip``: :class:`ucgate.id.sipattempts.SipAttempts` in-process, ``POST
  /v1/sip/attempt`` with ``[id_service] url``) *before* it is forwarded; over budget, or the id
  service unreachable, it is answered here (503 + Retry-After + ms-diagnostics) and never
  reaches the Edge or AD. The Edge's answer settles the reservation's token (``settle_sip``,
  ``POST /v1/sip/settle``): 2xx a success, 401/403/407 a failure — except a
  401 that continues a Kerberos or TLS-DSK handshake (a new token of that scheme), which gives
  the unit back — 5xx not a guess. An attempt never answered (the client left, the Edge
  closed) stays a failure. A refused account (unknown, disabled, locked, expired, must change
  its password, not in the group) is refused here, whatever the scheme;
* **which device**: ``sip_device_facts`` (``+sip.instance``, checked against the epid; the
  client kind from User-Agent). When the Edge answers a REGISTER with 2xx on a connection not
  yet admitted, that answer is held while the device is decided
  (``DeviceService.check_async`` or, split, ``RemoteDeviceChecker``, service ``sip``: the web side's partnerships,
  rules, quarantine, approval, max devices and trust lifetime, in the same store); anything but
  allow replaces the Edge's 200 by our 403 with the reason (``new-device-quarantined``,
  ``device-blocked``, ``device-limit``, ``trust-expired...``) and closes both connections (the
  Edge drops a registration with its connection). Admitted connections are re-decided on a
  refresh REGISTER at least every :data:`RECHECK_SECONDS`. A REGISTER's device must stay the
  connection's;
* **live blocking**: :meth:`SipRelay.on_event` (the store's events through the bus, as
  ``Gateway.on_event``) closes a user's connections (``UserBlocked``: a disable, a sign-out, the
  account monitor's lock/disable/expiry/password change) or one device's (``DeviceBlocked``)
  within a second; :meth:`SipRelay.live_users` feeds the account monitor. With ``[id_service]
  url`` the events come over the id service's stream and the users go in the gateway's session
  report (``app.build_node``).

Keep-alives (RFC 5626 CRLF ping/pong) go through both ways; before an Edge connection exists a
ping is answered here.

``ms-diagnostics`` codes of our answers (``source="ucgate"``; the reason text names the code
of the log and audit): 1000 who (framing of identity, NTLM user, scheme), 1001 the account (a
refused sign-in), 1002 the device, 1003 the failure budget or a dependency down (with
Retry-After).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import logging
import re
import secrets
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .. import metrics
from ..errors import UcgateError
from ..id.api import AttemptContext, Method, SipAttemptRequest, SipOutcome, SipSettle
from ..logs import begin_request
from ..protocols.devices import DeviceFacts
from ..protocols.sip import KeepAlive, SipError, SipFramer, SipMessage, sip_device_facts
from ..protocols.sipauth import SipAuth, auth_fields, ntlm_identity
from .connection import call_on_loop
from .stream import Stream
from .tls import server_context, upstream_context
from .tlstransport import TLSServer, start_tls_server

log = logging.getLogger("ucgate.sip")

READ_SIZE = 64 * 1024
# An admitted device is decided again at most this long after its last decision (on the next
# refresh REGISTER), as the web side re-checks an allowed device (gateway.devices.RECHECK_SECONDS).
RECHECK_SECONDS = 60.0
# REGISTERs of one connection waiting for the Edge's answer (a client sends one at a time).
MAX_PENDING_REGISTERS = 4
# The Edge's read buffer threshold (Stream pauses reading past twice this).
_EDGE_READ_LIMIT = 1 << 17

DIAG_WHO, DIAG_ACCOUNT, DIAG_DEVICE, DIAG_BUDGET = 1000, 1001, 1002, 1003
STATUS_TEXT = {
    400: "Bad Request",
    403: "Forbidden",
    500: "Server Internal Error",
    503: "Service Unavailable",
    505: "Version Not Supported",
    513: "Message Too Large",
}
# What a refused sign-in shows the client: never which of unknown user, wrong password or a
# disabled account it was (the log and the audit have the reason).
_SIGN_IN_TEXT = "sign-in refused"
_DEVICE_TEXT = {
    "new-device-quarantined": "this device is new: it is quarantined until an administrator approves it",
    "device-quarantined": "this device is quarantined until an administrator approves it",
    "new-device-approval-required": "this device is new: it needs an administrator's approval",
    "trust-expired-approval-required": "this device's trust expired: it needs an administrator's approval",
    "device-blocked": "this device is blocked",
    "new-device-blocked": "this device is blocked",
    "device-limit": "too many devices for this user",
    "device-wipe-pending": "this device is blocked (wipe requested)",
    "device-user-mismatch": "the SIP address is not the signed-in user's",
}
_QUOTE_UNSAFE = re.compile(r'["\\\x00-\x1f\x7f]')
_CREDENTIAL_FIELDS = frozenset({"authorization", "proxy-authorization"})
_SCHEME_RE = re.compile(rb"(?i)(?:NTLM|Kerberos|TLS-DSK)[ \t]")


class Refusal(UcgateError):
    """What the relay answers (or, without a message to answer, just closes with)."""

    def __init__(
        self,
        status: int,
        reason: str,
        text: str = "",
        *,
        diag: int = DIAG_WHO,
        retry_after: float = 0.0,
        audited: bool = False,
        detail: str = "",
    ) -> None:
        super().__init__(reason, detail, message=f"{status} {reason}")
        self.status, self.text, self.diag = status, text or reason, diag
        self.retry_after, self.audited = retry_after, audited


def local_answer(
    request: SipMessage,
    status: int,
    text: str,
    *,
    diag: int = DIAG_WHO,
    retry_after: float = 0.0,
    to_tag: str | None = None,
) -> bytes:
    """Our own response to ``request`` (RFC 3261 8.2.6): its Via, From, To (with a tag of ours
    when it had none), Call-ID and CSeq lines copied as sent, an ``ms-diagnostics`` field with
    the reason (as the Edge's own refusals carry one), Retry-After when given, no body."""
    lines = [b"SIP/2.0 %d %s" % (status, STATUS_TEXT.get(status, "Refused").encode())]
    for f in request.headers:
        if f.canonical == "via" or f.canonical in ("from", "call-id", "cseq"):
            lines.append(f.raw)
        elif f.canonical == "to":
            lines.append(
                f.raw if request.to.tag is not None else f.raw + b";tag=" + (to_tag or secrets.token_hex(8)).encode()
            )
    safe = _QUOTE_UNSAFE.sub("", text)[:200]
    lines.append(b'ms-diagnostics: %d;reason="%s";source="ucgate"' % (diag, safe.encode("utf-8")))
    if retry_after > 0:
        lines.append(b"Retry-After: %d" % max(1, int(retry_after + 0.999)))
    lines.append(b"Content-Length: 0")
    return b"\r\n".join(lines) + b"\r\n\r\n"


@dataclass
class _Attempt:
    """A credential leg forwarded to the Edge, holding one unit of the failure budget."""

    user: str | None  # the account (canonical name)
    token: str  # the reservation, held by the id service (id.sipattempts)
    scheme: str  # NTLM, Kerberos, TLS-DSK
    final: bool  # an NTLM Type 3: the Edge's 401 is a failure, never a continuation


@dataclass
class _Register:
    """A REGISTER waiting for the Edge's final answer."""

    request: SipMessage
    aor: str
    facts: DeviceFacts
    attempt: _Attempt | None


_session_ids = itertools.count(1)


class SipSession:
    """One client connection and its Edge connection."""

    def __init__(self, relay: SipRelay, client: Stream, peer: tuple) -> None:
        self.relay = relay
        self.client = client
        self.id = next(_session_ids)
        self.peer_host, self.peer_port = str(peer[0]), int(peer[1])
        self.edge: Stream | None = None
        self.edge_task: asyncio.Task | None = None
        self.framer = SipFramer(relay.settings.limits)
        self.user: str | None = None  # the admitted user (canonical account name)
        self.aor: str | None = None  # the address of record of the connection's REGISTERs
        self.device_id: str | None = None
        self.scheme: str | None = None
        self.signed_in_at: dt.datetime | None = None
        self.decided_at = 0.0  # monotonic time of the last device decision
        self.trusted_until: dt.datetime | None = None
        self.pending: dict[tuple[str, int], _Register] = {}
        self.messages = 0
        self.closed_reason: str | None = None
        self.task: asyncio.Task | None = None
        self._log_ctx: dict[str, Any] | None = None

    # --- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        self.task = self.client.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        self._log_ctx = begin_request(b"sip-%d" % self.id, self.peer_host)
        self._log_ctx["service"] = "sip"
        try:
            await self._client_loop()
        except (ConnectionError, ssl.SSLError, OSError):
            pass
        except Exception:
            log.exception("SIP connection from %s failed", self.peer_host)
        finally:
            await self._teardown()

    def cut_off(self, reason: str) -> None:
        """Close both connections now (a block, a disable, shutdown)."""
        self.closed_reason = self.closed_reason or reason
        for s in (self.client, self.edge):
            t = getattr(s, "transport", None) if s is not None else None
            if t is not None:
                t.abort()

    async def _teardown(self) -> None:
        self.relay.sessions.discard(self)
        self.client.close()
        if self.edge is not None:
            self.edge.close()
        if self.edge_task is not None and not self.edge_task.done():
            self.edge_task.cancel()
        pending, self.pending = list(self.pending.values()), {}
        for p in pending:  # never answered: the unit stays charged
            if p.attempt is not None:
                await self._settle(p.attempt, SipOutcome.FAILURE, "sip-no-answer")

    # --- client → Edge ---------------------------------------------------------------------
    async def _client_loop(self) -> None:
        s = self.relay.settings
        client, framer, loop = self.client, self.framer, self.client.loop
        first_until = loop.time() + s.handshake_timeout
        partial_since: float | None = None
        while True:
            now = loop.time()
            if framer.buffered:
                partial_since = partial_since if partial_since is not None else now
                until, why = partial_since + s.message_timeout, "message-timeout"
            else:
                partial_since = None
                until, why = now + s.idle_timeout, "idle-timeout"
            if self.messages == 0 and first_until < until:
                until, why = first_until, "first-message-timeout"
            try:
                data = await client.read(READ_SIZE, until)
            except TimeoutError:
                await self._refuse(
                    None, Refusal(408, why, detail="no complete message in time"), quiet=why == "idle-timeout"
                )
                return
            if not data:
                if not framer.at_boundary:
                    log.info("SIP client %s closed inside a message", self.peer_host)
                return
            framer.feed(data)
            while True:
                try:
                    event = framer.next_event()
                except SipError as e:
                    await self._refuse(None, Refusal(e.status, e.reason, detail=e.detail))
                    return
                if event is None:
                    break
                try:
                    await self._from_client(event)
                except Refusal as r:
                    await self._refuse(event if isinstance(event, SipMessage) else None, r)
                    return

    async def _from_client(self, event: SipMessage | KeepAlive) -> None:
        if isinstance(event, KeepAlive):
            if self.edge is not None:
                self.edge.write(event.raw)
            elif event.completes_ping:
                self.client.write(b"\r\n")  # the pong (RFC 5626 3.5.1)
            return
        self.messages += 1
        msg = event
        if not msg.is_request:
            if self.user is None:
                raise Refusal(403, "not-registered", "answer before registration")
            await self._forward(msg)
            return
        if msg.method == "REGISTER":
            await self._register(msg, self._credentials(msg))
            return
        self._check_schemes(msg)
        if self.user is None:
            raise Refusal(403, "not-registered", "REGISTER first")
        frm = msg.from_.sip
        if frm is None or frm.user is None or frm.aor.casefold() != (self.aor or "").casefold():
            raise Refusal(403, "from-not-registered-user", "From is not the registered user")
        await self._forward(msg)

    @staticmethod
    def _check_schemes(msg: SipMessage) -> None:
        """Outside a REGISTER the credentials are a signature only the Edge checks: their scheme
        must be one of MS-SIPAE's (and one field at most), the parameters are not parsed here (a
        full parse costs ~60 us a message; the Edge refuses what does not verify)."""
        seen = 0
        for f in msg.headers:
            if f.canonical in _CREDENTIAL_FIELDS:
                seen += 1
                if seen > 1:
                    raise Refusal(400, "several-credentials", "one Authorization per message")
                if _SCHEME_RE.match(f.value) is None:
                    raise Refusal(
                        400,
                        "unknown-auth-scheme",
                        "only NTLM, Kerberos, TLS-DSK",
                        detail=f.value[:24].decode("latin-1"),
                    )

    @staticmethod
    def _credentials(msg: SipMessage) -> list[SipAuth]:
        try:
            creds = auth_fields(msg, "Authorization") + auth_fields(msg, "Proxy-Authorization")
        except SipError as e:
            raise Refusal(e.status, e.reason, detail=e.detail) from None
        if len(creds) > 1:
            raise Refusal(400, "several-credentials", "one Authorization per message")
        return creds

    async def _register(self, msg: SipMessage, creds: list[SipAuth]) -> None:
        try:
            aor = msg.registered_user().aor
        except SipError as e:
            raise Refusal(e.status, e.reason, detail=e.detail) from None
        if self.aor is not None and aor.casefold() != self.aor.casefold():
            raise Refusal(403, "register-other-user", "one user per connection")
        facts = sip_device_facts(msg, self.relay.ua_rules)
        if self.user is not None and facts.device_id != self.device_id:
            raise Refusal(403, "device-changed", "one device per connection", diag=DIAG_DEVICE)
        if len(self.pending) >= MAX_PENDING_REGISTERS:
            raise Refusal(403, "too-many-pending", "one REGISTER at a time")
        if self._log_ctx is not None:
            self._log_ctx["user"] = self._log_ctx.get("user") or aor
        attempt = None
        cred = creds[0] if creds else None
        if cred is not None and cred.gssapi_data:
            identity = None
            if cred.scheme == "NTLM":
                try:
                    identity = ntlm_identity(cred)
                except SipError as e:
                    raise Refusal(e.status, e.reason, detail=e.detail) from None
            if cred.scheme != "NTLM" or identity is not None:
                attempt = await self._begin(aor, cred, identity, facts, msg.get("user-agent"))
        self.aor = self.aor or aor
        self.pending[(msg.call_id, msg.cseq.number)] = _Register(msg, aor, facts, attempt)
        try:
            await self._forward(msg)
        except Refusal:
            self.pending.pop((msg.call_id, msg.cseq.number), None)
            if attempt is not None:  # it never reached the Edge
                await self._settle(attempt, SipOutcome.CONTINUED, "not-forwarded")
            raise

    async def _begin(
        self, aor: str, cred: SipAuth, identity: Any, facts: DeviceFacts, user_agent: str | None
    ) -> _Attempt:
        """Reserve the budget for a credential leg and refuse what must not reach the Edge (the
        id service decides, in-process or over ``POST /v1/sip/attempt``, and audits)."""
        started = time.monotonic()
        ctx = AttemptContext(
            client_ip=self.peer_host,
            method=Method.SIP,
            service="sip",
            device_id=facts.device_id,
            user_agent=(user_agent or "")[:256] or None,
        )
        req = SipAttemptRequest(
            f"sip:{aor}",
            ctx,
            identity.user if identity is not None else None,
            (identity.domain or None) if identity is not None and identity.user else None,
        )
        answer = await self.relay.ids.begin_sip(req)
        verdict = answer.verdict
        if verdict.ok and answer.token is not None:
            return _Attempt(verdict.user, answer.token, cred.scheme, final=identity is not None)
        if verdict.retry_after > 0:  # throttled, or a dependency (the id service) down
            metrics.count_auth("sip", "throttled" if verdict.reason == "throttled" else "unavailable", verdict.reason)
            text = (
                "too many failed sign-ins: try again later"
                if verdict.reason == "throttled"
                else "sign-in unavailable: try again later"
            )
            raise Refusal(
                503, verdict.reason, text, diag=DIAG_BUDGET, retry_after=max(verdict.retry_after, 1.0), audited=True
            )
        metrics.count_auth("sip", "deny", verdict.reason)
        await asyncio.sleep(max(0.0, self.relay.failure_floor - (time.monotonic() - started)))
        if verdict.reason == "ntlm-user-mismatch":
            raise Refusal(403, verdict.reason, "the NTLM user is not the SIP user", audited=True)
        raise Refusal(403, "sign-in-refused", _SIGN_IN_TEXT, diag=DIAG_ACCOUNT, audited=True, detail=verdict.reason)

    async def _settle(self, attempt: _Attempt, outcome: SipOutcome, reason: str) -> None:
        if outcome is not SipOutcome.CONTINUED:
            metrics.count_auth("sip", "allow" if outcome is SipOutcome.SUCCESS else "deny", reason)
        await self.relay.ids.settle_sip(SipSettle(attempt.token, outcome, reason))

    async def _forward(self, msg: SipMessage) -> None:
        if self.edge is None:
            try:
                self.edge = await self.relay.connect_edge()
            except (OSError, ssl.SSLError, TimeoutError) as e:
                log.error(
                    "SIP: the Access Edge %s:%d is unreachable: %s",
                    self.relay.settings.edge_host,
                    self.relay.settings.edge_port,
                    e,
                )
                raise Refusal(
                    503,
                    "edge-unavailable",
                    "the server is unavailable: try again later",
                    diag=DIAG_BUDGET,
                    retry_after=30.0,
                ) from None
            self.edge_task = asyncio.get_running_loop().create_task(self._edge_loop())
        self.edge.write(msg.raw)
        metrics.SIP_MESSAGES.inc(("client",))
        await self.edge.drain()

    # --- Edge → client -----------------------------------------------------------------------
    async def _edge_loop(self) -> None:
        edge = self.edge
        assert edge is not None
        framer = SipFramer(self.relay.settings.limits)
        try:
            while True:
                data = await edge.read(READ_SIZE)
                if not data:
                    break
                framer.feed(data)
                while True:
                    try:
                        event = framer.next_event()
                    except SipError as e:
                        log.error(
                            "SIP: the Access Edge sent a message we refuse (%s: %s); closing %s's connection",
                            e.reason,
                            e.detail,
                            self.peer_host,
                        )
                        return
                    if event is None:
                        break
                    if not await self._from_edge(event):
                        return
        except (ConnectionError, ssl.SSLError, OSError):
            pass
        except Exception:
            log.exception("SIP: relaying from the Access Edge failed")
        finally:
            self.closed_reason = self.closed_reason or "edge-closed"
            if not self.client.is_closing():  # else our own answer is being written: let it go out
                self.cut_off(self.closed_reason)

    async def _from_edge(self, event: SipMessage | KeepAlive) -> bool:
        if isinstance(event, SipMessage) and not event.is_request and event.cseq.method == "REGISTER":
            key = (event.call_id, event.cseq.number)
            p = self.pending.get(key)
            if p is not None and event.status is not None and event.status >= 200:
                del self.pending[key]
                if not await self._register_answer(p, event):
                    return False
        self.client.write(event.raw)
        if isinstance(event, SipMessage):
            metrics.SIP_MESSAGES.inc(("edge",))
        await self.client.drain()
        return True

    async def _register_answer(self, p: _Register, answer: SipMessage) -> bool:
        """Settle the budget with the Edge's final answer to a REGISTER; admit the connection on
        its first 2xx. False: refused (our answer is sent, the connections close)."""
        status = answer.status or 0
        a = p.attempt
        if a is not None:
            if 200 <= status < 300:
                await self._settle(a, SipOutcome.SUCCESS, "ok")
            elif status in (401, 407) and not a.final and self._continues(answer, a.scheme):
                await self._settle(a, SipOutcome.CONTINUED, "continued")
            elif status >= 500:
                await self._settle(a, SipOutcome.NOT_A_GUESS, "registrar-unavailable")
            else:
                await self._settle(a, SipOutcome.FAILURE, "wrong-password" if a.final else "registrar-refused")
        if not 200 <= status < 300 or _expires(p.request, answer) == 0:
            return True
        if (
            self.user is None
            or time.monotonic() - self.decided_at >= RECHECK_SECONDS
            or (self.trusted_until is not None and dt.datetime.now(dt.UTC) >= self.trusted_until)
        ):
            try:
                await self._admit(p)
            except Refusal as r:
                await self._refuse(p.request, r)
                return False
        return True

    @staticmethod
    def _continues(answer: SipMessage, scheme: str) -> bool:
        """A 401/407 that carries a new token of ``scheme``: the handshake goes on."""
        for name in ("WWW-Authenticate", "Proxy-Authenticate"):
            try:
                if any(c.scheme == scheme and c.gssapi_data for c in auth_fields(answer, name)):
                    return True
            except SipError:
                return False
        return False

    async def _admit(self, p: _Register) -> None:
        """The account and the device of an accepted REGISTER; raises Refusal."""
        relay = self.relay
        user = p.attempt.user if p.attempt is not None else self.user
        if user is None:  # accepted without a credential leg through us (a signed REGISTER)
            ctx = AttemptContext(
                self.peer_host, Method.SIP, "sip", p.facts.device_id, (p.request.get("user-agent") or "")[:256] or None
            )
            verdict = await relay.ids.check_account(f"sip:{p.aor}", ctx)
            if not verdict.ok:
                raise Refusal(
                    503 if verdict.retry_after else 403,
                    verdict.reason if verdict.retry_after else "sign-in-refused",
                    _SIGN_IN_TEXT,
                    diag=DIAG_ACCOUNT,
                    retry_after=verdict.retry_after,
                    audited=True,
                    detail=verdict.reason,
                )
            user = verdict.user
        assert user is not None
        if relay.devices is not None:
            check = await relay.devices.check_async(
                user, p.facts, service="sip", second_factor_ok=False, client_address=self.peer_host
            )
            metrics.count_device("sip", {"deny": "block"}.get(check.outcome, check.outcome))
            if not check.allowed:
                status = 503 if check.outcome == "unavailable" else 403
                raise Refusal(
                    status,
                    check.reason,
                    _DEVICE_TEXT.get(check.reason, f"device refused: {check.reason}"),
                    diag=DIAG_DEVICE,
                    retry_after=check.retry_after,
                    audited=True,
                )
            self.trusted_until = check.trusted_until
            device_id = check.device_id
        else:
            device_id = p.facts.device_id
        self.decided_at = time.monotonic()
        if self.user is None:
            self.user, self.device_id = user, device_id
            self.signed_in_at = dt.datetime.now(dt.UTC)
            self.scheme = p.attempt.scheme if p.attempt is not None else None
            if self._log_ctx is not None:
                self._log_ctx["user"], self._log_ctx["device"] = user, device_id
            log.info("SIP: %s registered from %s (device %s)", user, self.peer_host, device_id or "-")

    # --- refusing -------------------------------------------------------------------------
    async def _refuse(self, msg: SipMessage | None, r: Refusal, *, quiet: bool = False) -> None:
        """Answer ``msg`` (when it is a request we can answer) with ``r``, log, audit, close."""
        self.closed_reason = r.reason
        metrics.count_sip_refusal(r.reason)
        (log.info if quiet else log.warning)(
            "SIP: refused %s from %s: %s%s",
            _what(msg),
            self.peer_host,
            r.reason,
            f" ({r.detail})" if r.detail else "",
            extra={"reason": r.reason},
        )
        if msg is not None and msg.is_request and msg.method != "ACK":
            self.client.write(local_answer(msg, r.status, r.text, diag=r.diag, retry_after=r.retry_after))
        self.client.close()  # after our answer is written
        if self.edge is not None:
            t = self.edge.transport
            if t is not None:
                t.abort()
        if not r.audited and not quiet and self.relay.audit is not None:
            await asyncio.to_thread(self.relay.audit_refusal, self, r)


def _what(msg: SipMessage | None) -> str:
    if msg is None:
        return "a connection"
    return msg.method or f"a {msg.status} answer"


def _expires(request: SipMessage, answer: SipMessage) -> int | None:
    """The registration's lifetime: the answer's Expires, else the request's (RFC 3261 10.2.4)."""
    for m in (answer, request):
        v = m.get("expires")
        if v is not None and v.isdigit():
            return int(v)
    return None


class SipRelay:
    """The SIP listener, its sessions and the Edge connections.

    Args:
        settings: ``[sip]`` (``gateway.sipconfig.SipConfig``).
        ids: the budget and account state: the in-process id service (``id.service.IdService``,
            wrapped in an ``id.sipattempts.SipAttempts``), or anything with the same
            ``begin_sip`` / ``settle_sip`` / ``check_account`` — with ``[id_service] url``,
            ``gateway.idclient.RemoteCredentials`` (fails closed: 503 + Retry-After).
        audit: the ``AuditLog`` for the relay's own refusals (``sip-refused``); None with a remote
            id service (those are logged; sign-ins are audited by the id service).
        devices: a ``DeviceService`` or a ``RemoteDeviceChecker`` (``check_async``; None: no
            device decisions on SIP).
        trusted_proxies: the balancers whose PROXY header is read (with ``proxy_protocol``).
        ua_rules: extra (regex, client kind) rules for User-Agent ([devices] user_agents).
        failure_floor: seconds a refused sign-in takes at least ([auth] failure_floor).
    """

    def __init__(
        self,
        settings: Any,
        ids: Any,
        audit: Any,
        *,
        devices: Any = None,
        trusted_proxies: Sequence[Any] = (),
        ua_rules: Sequence[tuple[str, str]] = (),
        failure_floor: float = 0.25,
    ) -> None:
        self.settings = settings
        if not hasattr(ids, "begin_sip"):
            # lazy: SipAttempts needs the store (SQLAlchemy, ~0.1 s to import): in-process id only
            from ..id.sipattempts import SipAttempts

            ids = SipAttempts(ids)
        self.ids = ids
        self.audit = audit
        self.devices = devices
        self.trusted_proxies = tuple(trusted_proxies)
        self.ua_rules = tuple(ua_rules)
        self.failure_floor = failure_floor
        self.sessions: set[SipSession] = set()
        self.ssl = server_context(settings.tls_cert, settings.tls_key)
        self._edge_ssl = upstream_context(settings.verify, settings.ca_bundle)
        self._server: TLSServer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        metrics.watch_sip_relay(self)

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.sockets[0].getsockname()[1]

    async def start(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        s = self.settings
        self._server = await start_tls_server(
            loop,
            lambda: Stream(loop, READ_SIZE, self._on_connection),
            s.listen_host,
            s.listen_port,
            self.ssl,
            backlog=1024,
            handshake_timeout=s.handshake_timeout,
            proxy_from=self._is_trusted_proxy if s.proxy_protocol else None,
        )
        log.info(
            "SIP relay listening on %s:%d (TLS) → Access Edge %s:%d", s.listen_host, self.port, s.edge_host, s.edge_port
        )

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        tasks = [x.task for x in self.sessions if x.task is not None]
        for x in list(self.sessions):
            x.cut_off("shutdown")
        if tasks:
            await asyncio.wait(tasks, timeout=5)

    def set_tls(self, context: ssl.SSLContext) -> None:
        self.ssl = context
        if self._server is not None:
            self._server.set_ssl_context(context)

    def _is_trusted_proxy(self, host: str) -> bool:
        import ipaddress

        try:
            addr = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(addr in net for net in self.trusted_proxies)

    def _on_connection(self, client: Stream) -> None:
        peer = client.get_extra_info("peername") or ("?", 0)
        if len(self.sessions) >= self.settings.max_connections:
            log.warning("SIP connection from %s refused: max_connections reached", peer[0])
            client.close()
            return
        session = SipSession(self, client, peer)
        self.sessions.add(session)
        session.start()

    async def connect_edge(self) -> Stream:
        s = self.settings
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(s.edge_connect_timeout):
            _, stream = await loop.create_connection(
                lambda: Stream(loop, _EDGE_READ_LIMIT),
                s.edge_host,
                s.edge_port,
                ssl=self._edge_ssl,
                server_hostname=s.server_name or s.edge_host,
            )
        return stream

    # --- who is on it, and cutting off --------------------------------------------------------
    def live_users(self) -> dict[str, dt.datetime]:
        """{user: earliest admission} of the admitted connections (the account monitor's input)."""
        out: dict[str, dt.datetime] = {}
        for x in self.sessions:
            at = x.signed_in_at
            if x.user is not None and at is not None and (x.user not in out or at < out[x.user]):
                out[x.user] = at
        return out

    def cut_off(self, predicate: Callable[[SipSession], bool], reason: str) -> int:
        n = 0
        for x in list(self.sessions):
            if predicate(x):
                x.cut_off(reason)
                n += 1
        if n:
            log.warning("SIP: closed %d connection(s): %s", n, reason)
        return n

    def post_event(self, event: object) -> None:
        """:meth:`on_event` from any thread (the store's event follower runs in its own)."""
        call_on_loop(self._loop, self.on_event, event)

    def on_event(self, event: object) -> None:
        """``UserBlocked`` closes the user's connections (admitted before ``signed_in_before``, if
        set), ``DeviceBlocked`` only that device's; ``CredentialRevoked`` (an ASP) does not
        concern SIP, whose credentials the Edge checks."""
        user = getattr(event, "user", None)
        if user is None or getattr(event, "credential_id", None) is not None:
            return
        reason = getattr(event, "reason", "blocked")
        device_id = getattr(event, "device_id", None)
        if device_id is not None:
            device = device_id.lower()
            self.cut_off(
                lambda x: x.user == user and (x.device_id or "").lower() == device,
                f"{user} device {device_id}: {reason}",
            )
            return
        before = getattr(event, "signed_in_before", None)
        self.cut_off(
            lambda x: x.user == user and x.signed_in_at is not None and (before is None or x.signed_in_at < before),
            f"{user}: {reason}",
        )

    # --- audit ----------------------------------------------------------------------------------
    def audit_refusal(self, session: SipSession, r: Refusal) -> None:
        try:
            self.audit.record(
                "sip-refused",
                actor="ucgate",
                result="deny",
                user=session.user or session.aor,
                device=session.device_id,
                service="sip",
                client_address=session.peer_host,
                reason=r.reason,
                status=r.status,
                detail=r.detail[:200] or None,
            )
        except Exception as e:  # noqa: BLE001 - the store down: the log line stands
            log.error("SIP: cannot audit a refusal (%s)", type(e).__name__)


def relay_from_config(config: Any, ids: Any, devices: Any = None, *, remote: Any = None) -> SipRelay:
    """The relay of ``[sip]`` over the in-process id services (``app.build_node``), or with
    ``remote`` (a ``RemoteCredentials``: ``[id_service] url``) over the id service's API."""
    s = config.sip
    if remote is not None:
        return SipRelay(
            s,
            remote,
            None,
            devices=devices if s.devices else None,
            trusted_proxies=config.gateway.trusted_proxies,
            ua_rules=config.devices.user_agents,
            failure_floor=config.auth.failure_floor,
        )
    return SipRelay(
        s,
        ids.credentials,
        ids.audit,
        devices=devices if s.devices else None,
        trusted_proxies=config.gateway.trusted_proxies,
        ua_rules=config.devices.user_agents,
        failure_floor=config.auth.failure_floor,
    )


__all__ = ["Refusal", "SipRelay", "SipSession", "local_answer", "relay_from_config"]
