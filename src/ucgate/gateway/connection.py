"""Per-connection state: who is on the other end, over what, and how far authentication got.

NTLM authenticates a *connection*, not a request (Type 1 → 401 + Type 2 → Type 3 on one
connection, then every later request on it is that user's, as with IIS). The handshake state
and the resulting identity therefore live here, and die with the connection.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .devices import DeviceState

_ids = itertools.count(1)


@dataclass(frozen=True, slots=True)
class Identity:
    """An authenticated principal: the user and how they proved it."""

    user: str
    method: str  # "ntlm" | "basic" | "negotiate" | "bearer" | ...
    device_id: str | None = None
    credential_id: str | None = None  # e.g. which ASP matched
    # the request carried a second factor (an ASP with the one-time code appended); renews trust
    second_factor: bool = False
    signed_in_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))


@dataclass(eq=False, slots=True)
class ClientConnection:
    peer_host: str
    peer_port: int
    tls: bool
    # RFC 5929 tls-server-end-point application data of our certificate, for NTLM channel
    # binding (Extended Protection); None on plain HTTP.
    channel_binding: bytes | None
    created_at: float
    id: int = field(default_factory=lambda: next(_ids))
    identity: Identity | None = None  # set by connection-based auth (NTLM): authorises later requests
    principal: Identity | None = None  # who last authenticated on it, by any method (for cut-off)
    auth_state: Any = None  # an authenticator's handshake in progress (e.g. NTLM after Type 1)
    known: Any = None  # the authenticator's answer for ``identity``, made once (gateway/preauth.py)
    bearer: Any = None  # the Bearer token last verified on it, to know it again (gateway/oauth.py)
    backend: Any = None  # the backend credentials last made for it (a Bearer token's: gateway/forward.py)
    device: DeviceState | None = None  # the decide stage's per-connection state (gateway.devices)
    requests: int = 0
    # the request id (ucgate.logs) of the request in flight, or the last one: one at a time
    request_id: bytes = b""
    writer: asyncio.StreamWriter | None = None
    closed_reason: str | None = None

    def cut_off(self, reason: str) -> None:
        """Close the connection now (account locked, device blocked...)."""
        self.closed_reason = reason
        if self.writer is not None:
            # abort, not close: a graceful TLS close waits for the client's close_notify, and
            # an idle client would keep the session open meanwhile.
            transport = getattr(self.writer, "transport", None)
            if transport is not None:
                transport.abort()
            elif not self.writer.is_closing():
                self.writer.close()


def call_on_loop(loop: asyncio.AbstractEventLoop | None, callback: Callable[[object], None], arg: object) -> None:
    """``callback(arg)`` on ``loop``: at once when called from it (or when it is not running
    yet or any more), else handed over thread-safely (events arrive from the store's follower
    thread)."""
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if loop is None or running is loop or loop.is_closed():
        callback(arg)
    else:
        loop.call_soon_threadsafe(callback, arg)
