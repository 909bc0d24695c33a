"""Events: "cut this user (or this device, or this credential) off now", for every process.

Every event is a row of the store's outbox (``ucgate.store.outbox``), written in the same
transaction as the change that caused it where there is one (a device block, a user disable,
an ASP revoke, an OTP reset), or on its own (an admin's sign-out, an AD lock seen by the account
monitor). Whoever writes it — the CLI, the REST API, the web UI, the portal, an id service, the
monitor — every running process acts on it:

* in the process that wrote it, :class:`EventBus` delivers it to the subscribers at once, after
  the commit;
* every other process with a store runs an :class:`EventFollower`, which follows the table by
  row id, woken by NOTIFY (PostgreSQL) or ``PRAGMA data_version`` (SQLite), and delivers each
  row it did not write itself;
* gateways in the DMZ, which hold no database connection, get the rows over the id services'
  Server-Sent Events (``GET /v1/events``, :mod:`ucgate.id.http_api`), the SSE id being the row
  id, so a gateway resumes with ``Last-Event-ID`` on any id service of the pool.

A row of a kind this version does not know (written by a newer one) is logged and skipped.
"""

from __future__ import annotations

import collections
import datetime as dt
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .. import metrics
from ..store.outbox import ChangeWatcher, EventRow, Outbox
from .api import EVENT_KINDS, EventBody, dump_wire, parse_wire

log = logging.getLogger("ucgate.id.events")

# The longest a follower sleeps without checking the table, whatever the wake-up says.
FALLBACK_POLL = 1.0
# Ids of rows this process delivered itself, so that its follower does not deliver them twice.
LOCAL_IDS_KEPT = 4096


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


@dataclass(frozen=True, slots=True)
class CredentialRevoked:
    """Close the live connections of ``user`` signed in with the ASP ``credential_id``."""

    user: str
    credential_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class CredentialAdded:
    """A new ASP for ``user``: cuts nothing; every process's sign-in cache forgets the user."""

    user: str
    credential_id: str
    reason: str


Event = UserBlocked | DeviceBlocked | CredentialRevoked | CredentialAdded
KINDS: dict[type, str] = {
    UserBlocked: "user-blocked",
    DeviceBlocked: "device-blocked",
    CredentialRevoked: "credential-revoked",
    CredentialAdded: "credential-added",
}
# Kinds that only tell caches to forget (row subscribers get them; event subscribers do not).
CACHE_ONLY_KINDS = frozenset({"credential-added"})
# Kinds with no Event class: "refresh what you read from the store", for row subscribers only
# (``EventBus.subscribe_rows``); username "*". ``rules-changed``: the device rules or group
# policies of the store changed (``ucgate.id.rules``); every DeviceService reloads them.
RULES_CHANGED = "rules-changed"
ROW_KINDS = frozenset({RULES_CHANGED})
assert set(KINDS.values()) | ROW_KINDS == set(EVENT_KINDS), "the kinds are the wire's (ucgate.id.api)"


def event_fields(event: Event, *, actor: str | None = None) -> dict[str, Any]:
    """The outbox columns of an event (``ucgate.store.outbox.append``'s keywords)."""
    out: dict[str, Any] = {"kind": KINDS[type(event)], "username": event.user, "reason": event.reason, "actor": actor}
    if isinstance(event, UserBlocked):
        out["signed_in_before"] = event.signed_in_before
    elif isinstance(event, DeviceBlocked):
        out["device_id"] = event.device_id
    else:
        out["credential"] = event.credential_id
    return out


def event_of(row: EventRow) -> Event | None:
    """The event a row stands for; None (logged) for a kind this version does not know."""
    if row.kind == "user-blocked":
        return UserBlocked(row.username, row.reason, row.signed_in_before)
    if row.kind == "device-blocked" and row.device_id:
        return DeviceBlocked(row.username, row.device_id, row.reason)
    if row.kind == "credential-revoked" and row.credential:
        return CredentialRevoked(row.username, row.credential, row.reason)
    if row.kind in CACHE_ONLY_KINDS:
        return None
    if row.kind in ROW_KINDS:
        return None  # known; only row subscribers act on it
    log.warning("skipping event %d of unknown kind %r (written by a newer ucgate?)", row.id, row.kind[:32])
    return None


# --- the wire (SSE data): ucgate.id.api.EventBody, for the id service and the gateway ---------
def to_wire(row: EventRow) -> str:
    """The SSE ``data`` of a row."""
    body = EventBody.build(
        user=row.username,
        reason=row.reason,
        device_id=row.device_id,
        credential=row.credential,
        signed_in_before=_aware(row.signed_in_before) if row.signed_in_before else None,
        at=_aware(row.at) if row.at else None,
    )
    return dump_wire(body).decode()


def _aware(at: dt.datetime) -> dt.datetime:
    """A row's time as stored (SQLite gives it back naive; it is UTC)."""
    return at if at.tzinfo is not None else at.replace(tzinfo=dt.UTC)


def from_wire(event_id: str | None, kind: str | None, data: str) -> EventRow:
    """An SSE event back into a row. Raises ValueError (a ContextError naming the field) for a
    malformed one."""
    body = parse_wire(EventBody, data)
    return EventRow(
        id=int(event_id) if event_id and event_id.isdigit() else 0,
        # the row's time in the store (older id services send none: now); only for the lag metric
        at=_aware(body.at) if body.at else dt.datetime.now(dt.UTC),
        kind=str(kind or "message")[:32],
        username=body.user[:256],
        reason=(body.reason or "blocked")[:128],
        device_id=body.device_id or None,
        credential=body.credential or None,
        signed_in_before=body.signed_in_before,
    )


# --- delivery -----------------------------------------------------------------------------------
class Pending:
    """An event to write inside a change's transaction (``ucgate.store`` methods take its
    ``fields``); after the commit, :meth:`EventBus.committed` delivers it in this process."""

    def __init__(self, event: Event, actor: str | None = None) -> None:
        self.event = event
        self.fields = event_fields(event, actor=actor)
        self.id: int | None = None  # set by the store when the row is written


class RowPending(Pending):
    """A row of a :data:`ROW_KINDS` kind to write inside a change's transaction; after the
    commit, :meth:`EventBus.committed` hands it to this process's row subscribers."""

    def __init__(self, kind: str, reason: str, actor: str | None = None) -> None:
        assert kind in ROW_KINDS, kind
        self.event = None  # type: ignore[assignment]
        self.fields = {"kind": kind, "username": "*", "reason": reason, "actor": actor}
        self.id = None


class EventBus:
    """Publishes events through the outbox and delivers them to this process's subscribers.

    Without an outbox (unit tests) events are delivered directly. Subscribers are called from
    the publishing thread or the follower's thread: they must be thread-safe (the gateway's
    wiring hops onto its event loop)."""

    def __init__(self, outbox: Outbox | None = None) -> None:
        self.outbox = outbox
        self._subscribers: list[Callable[[object], None]] = []
        self._row_subscribers: list[Callable[[EventRow], None]] = []
        self._local: collections.OrderedDict[int, None] = collections.OrderedDict()
        self._lock = threading.Lock()

    def subscribe(self, callback: Callable[[object], None]) -> None:
        self._subscribers.append(callback)

    def subscribe_rows(self, callback: Callable[[EventRow], None]) -> None:
        """Rows as written (the SSE feed), unknown kinds included."""
        self._row_subscribers.append(callback)

    def publish(self, event: Event, *, actor: str | None = None) -> None:
        """An event that goes with no change in the store (a sign-out, an AD lock)."""
        pending = Pending(event, actor)
        if self.outbox is not None:
            pending.id = self.outbox.publish(**pending.fields)
        self.committed(pending)

    def committed(self, pending: Pending) -> None:
        """Deliver, in this process, an event whose row was just committed."""
        row = EventRow(id=pending.id or 0, at=dt.datetime.now(dt.UTC), **pending.fields)
        if pending.id is not None:
            with self._lock:
                self._local[pending.id] = None
                while len(self._local) > LOCAL_IDS_KEPT:
                    self._local.popitem(last=False)
        self._deliver(row, None if row.kind in CACHE_ONLY_KINDS else pending.event, "local")

    def deliver_row(self, row: EventRow) -> None:
        """A row another process wrote (from the follower); rows this process wrote are skipped."""
        with self._lock:
            if row.id in self._local:
                del self._local[row.id]
                return
        self._deliver(row, event_of(row), "store")

    def _deliver(self, row: EventRow, event: Event | None, via: str = "local") -> None:
        """``via``: "local" (this process wrote the row), "store" (the follower read it): the
        label of ucgate_event_propagation_seconds, the row's ``at`` to now."""
        metrics.observe_event_lag(row.at, via)
        for rcb in self._row_subscribers:
            try:
                rcb(row)
            except Exception:  # one broken subscriber must not stop the others
                log.exception("event row subscriber failed for event %d", row.id)
        if event is None:
            return
        for cb in self._subscribers:
            try:
                cb(event)
            except Exception:
                log.exception("event subscriber failed for %r", event)


class EventFollower:
    """Follows the outbox from the row it starts at and hands each new row to ``bus``
    (:meth:`EventBus.deliver_row`), in a thread of its own."""

    def __init__(self, bus: EventBus, outbox: Outbox, *, fallback_poll: float = FALLBACK_POLL) -> None:
        self.bus = bus
        self.outbox = outbox
        self.fallback_poll = fallback_poll
        self.position = 0
        self._watcher = ChangeWatcher(outbox.engine)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.caught_up = threading.Event()

    def start(self) -> None:
        try:
            self.position = self.outbox.last_id()
        except Exception as e:  # noqa: BLE001 - the store is down: start from wherever it is later
            log.error("event follower: store unavailable at start (%s); will catch up", type(e).__name__)
            self.position = -1
        self._thread = threading.Thread(target=self._run, name="ucgate-events", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._follow()
        finally:
            self._watcher.release()  # its connections, closed by the thread that used them

    def _follow(self) -> None:
        failing = False
        while not self._stop.is_set():
            try:
                if self.position < 0:
                    self.position = self.outbox.last_id()
                while True:
                    rows = self.outbox.since(self.position)
                    for row in rows:
                        self.position = row.id
                        self.bus.deliver_row(row)
                    if len(rows) < 500:
                        break
                self.caught_up.set()
                if failing:
                    log.warning("event follower: store reachable again at event %d", self.position)
                failing = False
            except Exception as e:  # noqa: BLE001 - keep following; the table is the truth
                if not failing:
                    log.error(
                        "event follower: cannot read the outbox (%s): %s",
                        type(e).__name__,
                        " ".join(str(e).split())[:200],
                    )
                failing = True
                self._stop.wait(self.fallback_poll)
                continue
            self._watcher.wait(self.fallback_poll)

    def stop(self) -> None:
        self._stop.set()
        self._watcher.close()
        if self._thread is not None:
            self._thread.join(timeout=5)
