"""Server-side sessions for the admin UI and the portal; CSRF tokens.

The cookie (``__Host-`` prefix: Secure, Path=/, no Domain; HttpOnly; SameSite=Strict) holds
only a random id; the session lives in memory here (one node: the id service), so logging out
or an idle timeout ends it for good. Each session has its own CSRF token, which every form
posts back (``csrf``) and every POST must match, compared in constant time. A session is
created before sign-in too, so that the sign-in form is protected like the others.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

MAX_SESSIONS = 10_000  # bounds memory under a flood of anonymous GETs (oldest dropped first)


@dataclass
class Session:
    id: str
    area: str  # "admin" | "portal"
    csrf: str
    created: float
    last_seen: float
    user: str | None = None  # signed in (fully) as
    role: str | None = None
    pending_user: str | None = None  # password ok, waiting for the TOTP code
    flash: list[tuple[str, str]] = field(default_factory=list)  # (kind, message), shown once

    @property
    def signed_in(self) -> bool:
        return self.user is not None


class SessionStore:
    def __init__(self, *, idle_timeout: float, lifetime: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.idle_timeout, self.lifetime, self.clock = idle_timeout, lifetime, clock
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def new(self, area: str) -> Session:
        now = self.clock()
        s = Session(secrets.token_urlsafe(32), area, secrets.token_urlsafe(32), now, now)
        with self._lock:
            if len(self._sessions) >= MAX_SESSIONS:
                oldest = min(self._sessions.values(), key=lambda x: x.last_seen)
                self._sessions.pop(oldest.id, None)
            self._sessions[s.id] = s
        return s

    def get(self, sid: str | None, area: str) -> Session | None:
        """The live session ``sid`` of ``area``, touched; None when unknown or expired."""
        if not sid:
            return None
        now = self.clock()
        with self._lock:
            s = self._sessions.get(sid)
            if s is None or s.area != area:
                return None
            if now - s.last_seen > self.idle_timeout or now - s.created > self.lifetime:
                del self._sessions[sid]
                return None
            s.last_seen = now
            return s

    def rotate(self, s: Session) -> Session:
        """A new id (and CSRF token) for the same session: at sign-in, against fixation."""
        with self._lock:
            self._sessions.pop(s.id, None)
            s.id, s.csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
            self._sessions[s.id] = s
        return s

    def drop(self, s: Session) -> None:
        with self._lock:
            self._sessions.pop(s.id, None)

    def drop_user(self, user: str) -> None:
        with self._lock:
            for sid in [k for k, v in self._sessions.items() if v.user == user]:
                del self._sessions[sid]


def csrf_ok(session: Session | None, presented: str | None) -> bool:
    return (
        session is not None and bool(presented) and hmac.compare_digest(session.csrf.encode(), str(presented).encode())
    )
