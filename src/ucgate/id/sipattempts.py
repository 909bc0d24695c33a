"""The SIP relay's credential legs on the id service's side (``gateway.sip``; issue 18, split mode).

The relay reserves one unit of the account's failure budget before it forwards a REGISTER
credential leg to the Access Edge, and settles it with the Edge's answer. In-process the relay
calls :class:`SipAttempts` directly; with ``[id_service] url`` it calls the same object through
``POST /v1/sip/attempt`` and ``POST /v1/sip/settle`` (:mod:`ucgate.id.http_api`, the wire
shapes in :mod:`ucgate.id.api`): one decision path for both.

The reservation stays here: the relay holds an opaque random token that maps to it (the
budget's :class:`~ucgate.policy.lockout.Reservation`, the resolved account, the context). A
token not settled within :data:`RESERVATION_TTL` seconds (a gateway that died, or lost us) is
settled as a failure (``sip-not-settled``, audited) — an unsettled guess is a guess.

A pool: only the id service that issued a token can settle it (the reservation is in its
memory); the gateway's client sends the settle to the issuer, never fails it over. If the issuer
is gone, the unit stays charged (as any attempt in flight on an id service that dies): at worst
one failure per lost leg, never a free guess.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from .api import (
    AttemptContext,
    SipAttemptAnswer,
    SipAttemptRequest,
    SipOutcome,
    SipSettle,
    Verdict,
)

log = logging.getLogger("ucgate.id.sip")

RESERVATION_TTL = 60.0
# Reservations open at once; past it new legs are answered "throttled" (a gateway leaking tokens).
MAX_OPEN = 50_000
# Reasons that say the Edge did not decide (the budget's not-a-guess, ``id.service._NOT_A_GUESS``).
_NOT_A_GUESS_REASON = "registrar-unavailable"


@dataclass
class _Open:
    who: Any  # id.service.Resolved
    ctx: AttemptContext
    held: Any  # policy.lockout.Reservation
    expires: float


class SipAttempts:
    """Reservations of SIP credential legs over an :class:`ucgate.id.service.IdService`.

    The relay's interface (async): :meth:`begin_sip`, :meth:`settle_sip`, :meth:`check_account`;
    ``gateway.idclient.RemoteCredentials`` has the same three over HTTPS.
    """

    def __init__(
        self,
        ids: Any,
        *,
        ttl: float = RESERVATION_TTL,
        max_open: int = MAX_OPEN,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ids = ids
        self.ttl, self.max_open, self.clock = ttl, max_open, clock
        self._open: dict[str, _Open] = {}
        self._lock = threading.Lock()

    @property
    def open(self) -> int:
        return len(self._open)

    # --- blocking halves (the API's handlers run them in a thread) ----------------------------
    def begin(self, req: SipAttemptRequest) -> SipAttemptAnswer:
        self.expire()
        ids, ctx = self.ids, req.context
        if len(self._open) >= self.max_open:
            log.error("SIP: %d reservations open, none settled: refusing new legs", len(self._open))
            return SipAttemptAnswer(None, Verdict(False, "throttled", retry_after=5.0))
        who, held = ids.begin_attempt(req.user, ctx)
        if isinstance(held, Verdict):  # throttled, directory or store down: audited as a sign-in
            try:
                ids._audit(who.user or who.key[2:], ctx, held)
            except Exception as e:  # noqa: BLE001 - the store down: the verdict stands
                log.error("SIP: cannot audit a refused sign-in (%s)", type(e).__name__)
            return SipAttemptAnswer(None, held)
        verdict = who.refused
        if verdict is None and req.ntlm_user is not None:
            typed = f"{req.ntlm_domain}\\{req.ntlm_user}" if req.ntlm_domain else req.ntlm_user
            try:
                other = ids.resolve_account(typed) if req.ntlm_user else None
            except SQLAlchemyError:
                other, verdict = None, Verdict(False, "store-unavailable", retry_after=5.0)
            if verdict is None and other is not None and other.refused is not None and other.refused.retry_after > 0:
                verdict = other.refused  # the directory is down: not a mismatch
            elif verdict is None and (other is None or other.key != who.key):
                verdict = Verdict(False, "ntlm-user-mismatch")
        if verdict is not None:
            ids.end_attempt(who, ctx, held, verdict)
            return SipAttemptAnswer(None, verdict)
        token = secrets.token_urlsafe(24)
        with self._lock:
            self._open[token] = _Open(who, ctx, held, self.clock() + self.ttl)
        return SipAttemptAnswer(token, Verdict(True, "reserved", user=who.user), self.ttl)

    def settle(self, s: SipSettle) -> bool:
        """False: no such reservation (settled already, expired, or issued by another id service)."""
        with self._lock:
            o = self._open.pop(s.token, None)
        self.expire()
        if o is None:
            return False
        if s.outcome is SipOutcome.CONTINUED:
            self.ids.release_attempt(o.held)
        elif s.outcome is SipOutcome.SUCCESS:
            self.ids.end_attempt(o.who, o.ctx, o.held, Verdict(True, s.reason or "ok", user=o.who.user))
        elif s.outcome is SipOutcome.NOT_A_GUESS:
            self.ids.end_attempt(o.who, o.ctx, o.held, Verdict(False, _NOT_A_GUESS_REASON))
        else:
            reason = s.reason if s.reason != _NOT_A_GUESS_REASON else "registrar-refused"
            self.ids.end_attempt(o.who, o.ctx, o.held, Verdict(False, reason))
        return True

    def expire(self) -> int:
        """Settle the reservations past their time as failures (``sip-not-settled``)."""
        now = self.clock()
        with self._lock:
            gone = [(t, o) for t, o in self._open.items() if o.expires <= now]
            for t, _ in gone:
                del self._open[t]
        for _, o in gone:
            self.ids.end_attempt(o.who, o.ctx, o.held, Verdict(False, "sip-not-settled"))
        if gone:
            log.warning("SIP: %d reservation(s) never settled: charged as failures", len(gone))
        return len(gone)

    # --- the relay's interface -------------------------------------------------------------------
    async def begin_sip(self, req: SipAttemptRequest) -> SipAttemptAnswer:
        return await asyncio.to_thread(self.begin, req)

    async def settle_sip(self, s: SipSettle) -> None:
        await asyncio.to_thread(self.settle, s)

    async def check_account(self, name: str, ctx: AttemptContext) -> Verdict:
        return await self.ids.check_account(name, ctx)


__all__ = ["RESERVATION_TTL", "SipAttempts"]
