"""Events from the id service to the gateway(s): "cut this user (or this device) off now".

In one process the bus calls subscribers directly; to gateways elsewhere the id service streams
the same events over Server-Sent Events (``GET /v1/events``, replayed after a reconnect), so a
gateway in the DMZ never needs a connection to the database.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("ucgate.id.events")


@dataclass(frozen=True, slots=True)
class UserBlocked:
    """Close ``user``'s live sessions (those signed in before ``signed_in_before``, if set)."""

    user: str
    reason: str
    signed_in_before: dt.datetime | None = None


@dataclass(frozen=True, slots=True)
class DeviceBlocked:
    """Close the live connections of ``user`` from ``device_id`` (blocked, wiped or deleted);
    the user's other devices keep theirs."""

    user: str
    device_id: str
    reason: str


class EventBus:
    def __init__(self) -> None:
        self._subscribers: list[Callable[[object], None]] = []

    def subscribe(self, callback: Callable[[object], None]) -> None:
        self._subscribers.append(callback)

    def publish(self, event: object) -> None:
        for cb in self._subscribers:
            try:
                cb(event)
            except Exception:  # one broken subscriber must not stop the others
                log.exception("event subscriber failed for %r", event)
