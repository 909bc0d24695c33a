"""The authenticate step of the request pipeline: a small interface and its implementations."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from ..protocols.http1 import RequestHead
from ..protocols.sfb import Service
from .connection import ClientConnection, Identity


@dataclass(slots=True)
class AuthOutcome:
    """What the authenticator concluded for one request.

    ``identity`` set: the request may go on. Otherwise answer ``status`` with ``headers``
    (a challenge such as ``WWW-Authenticate``); ``reason`` is a short code for the log and the
    audit trail; ``close`` asks to close the connection after answering.
    """

    identity: Identity | None
    status: int = 401
    reason: str = ""
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    close: bool = False

    @property
    def allowed(self) -> bool:
        return self.identity is not None


class Authenticator(Protocol):
    async def authenticate(self, conn: ClientConnection, request: RequestHead, service: Service) -> AuthOutcome:
        """Decide who sent ``request`` on ``conn`` for a protected ``service``."""
        ...


class DenyAll:
    """Refuses every protected request: the safe default until an authenticator is set."""

    async def authenticate(self, conn: ClientConnection, request: RequestHead, service: Service) -> AuthOutcome:
        return AuthOutcome(
            identity=None,
            status=401,
            reason="no-authenticator",
            headers=[(b"WWW-Authenticate", b'Basic realm="ucgate"')],
        )
