"""Account-state enforcement for live sessions.

Every ``interval`` seconds the monitor reads, fresh from the directory, the state of every user
who has a live authenticated session on the gateway, and publishes :class:`UserBlocked` for any
account that AD has locked, disabled or expired, or whose password changed after the session
signed in. The gateway closes those connections at once. While the directory cannot be reached,
sessions stay for ``outage_grace`` seconds after the last good check, then are closed too.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable
from typing import Any

from ..policy.account import check_session, keep_during_outage
from .directory import AccountState, DirectoryError
from .events import EventBus, UserBlocked

log = logging.getLogger("ucgate.id.monitor")


class AccountMonitor:
    """Args:
    directory: a ``Directory`` (``account_state(name)``; blocking, run in a thread).
    live_users: returns {user: earliest sign-in time (aware UTC)} of live sessions.
    bus: where :class:`UserBlocked` goes.
    audit: an ``AuditLog`` (``record``).
    """

    def __init__(
        self,
        directory: Any,
        live_users: Callable[[], dict[str, dt.datetime]],
        bus: EventBus,
        audit: Any,
        *,
        interval: float = 30.0,
        outage_grace: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.directory = directory
        self.live_users = live_users
        self.bus = bus
        self.audit = audit
        self.interval = interval
        self.outage_grace = outage_grace
        self.clock = clock
        self.last_ok: float | None = clock()
        self.checks = 0
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="ucgate-account-monitor")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.check_once()
            except Exception:
                log.exception("account check failed")

    async def check_once(self) -> int:
        """Check every live user once; returns how many were cut off."""
        users = self.live_users()
        self.checks += 1
        cut = 0
        unavailable = False
        for user, signed_in_at in users.items():
            try:
                state = await asyncio.to_thread(self._fresh_state, user)
            except DirectoryError as e:
                if e.reason == "unavailable" or e.reason in ("tls-error", "service-bind-failed"):
                    unavailable = True
                    break
                log.warning("account check for %s failed: %s", user, e.reason)
                continue
            decision = check_session(state, signed_in_at)
            if not decision.allowed:
                cut += 1
                self._block(
                    user, decision.reason, state.password_last_set if decision.reason == "password-changed" else None
                )
        now = self.clock()
        if unavailable:
            if not keep_during_outage(self.last_ok, now, self.outage_grace):
                for user in users:
                    cut += 1
                    self._block(user, "directory-unavailable", None)
            else:
                log.warning(
                    "directory unavailable; keeping %d live user(s) for up to %.0fs",
                    len(users),
                    self.outage_grace - (now - (self.last_ok or now)),
                )
        else:
            self.last_ok = now
        return cut

    def _fresh_state(self, user: str):
        du = self.directory.resolve(user)  # cached: it only maps the name to the account's GUID
        if du is None:
            return AccountState(exists=False)
        return self.directory.account_state(du)  # never cached

    def _block(self, user: str, reason: str, before: dt.datetime | None) -> None:
        log.warning("cutting off %s: %s", user, reason)
        self.audit.record(
            "session-cut",
            actor="account-monitor",
            user=user,
            device=None,
            service=None,
            client_address=None,
            result="deny",
            reason=reason,
        )
        self.bus.publish(UserBlocked(user, reason, before))
