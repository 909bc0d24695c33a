"""The event outbox: every change that can cut someone off, as a row, in the change's transaction.

A device block, a user disable, an ASP revoke, an OTP reset, an admin's "sign out", an account
lock seen by the monitor: whoever makes the change (the CLI, the REST API, the web UI, the
portal, an id service, the monitor) writes an ``events`` row *in the same transaction as the
change* (:func:`append` on the change's connection), so a change is never committed without its
event, nor an event without its change. Every running process follows the table by ``id``
(:meth:`Outbox.since`) and acts on each row once; DMZ gateways, which hold no database
connection, get the same rows over the id services' SSE stream, resumed by row id.

Readers are woken, not told: on PostgreSQL the writer's transaction issues ``NOTIFY`` (delivered
at commit) and a :class:`ChangeWatcher` LISTENs; on SQLite the watcher polls
``PRAGMA data_version`` on its own connection, which changes whenever another connection
commits (a read of the shared WAL index, no query). A lost or malformed notification costs at
most one fallback poll interval: the table is the truth.
"""

from __future__ import annotations

import datetime as dt
import logging
import sqlite3
import threading
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, delete, func, insert, select, text

from .engine import Transactions, sqlite_path
from .schema import events

log = logging.getLogger("ucgate.store.outbox")

# The NOTIFY channel; the payload is the new row's id (only a hint: readers query the table).
NOTIFY_CHANNEL = "ucgate_events"
# How often a watcher polls SQLite's data_version (seconds): the propagation latency bound.
SQLITE_POLL = 0.05
# Rows returned by one ``since`` call; a reader calls again until it has caught up.
MAX_BATCH = 500


@dataclass(frozen=True, slots=True)
class EventRow:
    id: int
    at: dt.datetime
    kind: str
    username: str
    reason: str
    device_id: str | None = None
    credential: str | None = None
    signed_in_before: dt.datetime | None = None
    actor: str | None = None


def append(
    conn: Connection,
    *,
    kind: str,
    username: str,
    reason: str,
    at: dt.datetime | None = None,
    device_id: str | None = None,
    credential: str | None = None,
    signed_in_before: dt.datetime | None = None,
    actor: str | None = None,
) -> int:
    """Write one event row on ``conn``, inside the caller's transaction; returns its id."""
    values: dict[str, Any] = dict(
        at=at or dt.datetime.now(dt.UTC),
        kind=kind,
        username=username,
        reason=reason[:128],
        device_id=device_id,
        credential=credential,
        signed_in_before=signed_in_before,
        actor=actor[:256] if actor else None,
    )
    event_id = int(conn.execute(insert(events).values(**values).returning(events.c.id)).scalar_one())
    if conn.dialect.name == "postgresql":
        conn.execute(
            text("SELECT pg_notify(:channel, :payload)"), {"channel": NOTIFY_CHANNEL, "payload": str(event_id)}
        )
    return event_id


def append_pending(conn: Connection, pending: Any) -> None:
    """Write ``pending.fields`` (an ``ucgate.id.events.Pending``) on ``conn`` and set
    ``pending.id``; nothing for None. Store methods that make a change take one of these."""
    if pending is not None:
        pending.id = append(conn, **pending.fields)


def _row(r: Any) -> EventRow:
    m = r._mapping
    return EventRow(
        id=int(m["id"]),
        at=m["at"],
        kind=m["kind"],
        username=m["username"],
        reason=m["reason"],
        device_id=m["device_id"],
        credential=m["credential"],
        signed_in_before=m["signed_in_before"],
        actor=m["actor"],
    )


class Outbox(Transactions):
    """Read and write the outbox over a shared engine."""

    def publish(self, **fields: Any) -> int:
        """An event on its own (no change in the store goes with it: a sign-out, an AD lock)."""
        with self._write() as c:
            return append(c, **fields)

    def since(self, after_id: int, limit: int = MAX_BATCH) -> list[EventRow]:
        """Rows with an id above ``after_id``, oldest first."""
        with self._read() as c:
            rows = c.execute(select(events).where(events.c.id > after_id).order_by(events.c.id).limit(limit)).all()
        return [_row(r) for r in rows]

    def last_id(self) -> int:
        with self._read() as c:
            return int(c.execute(select(func.coalesce(func.max(events.c.id), 0))).scalar_one())

    def prune(self, before: dt.datetime) -> int:
        """Delete rows older than ``before`` (readers resume within minutes; a week is plenty)."""
        with self._write() as c:
            return c.execute(delete(events).where(events.c.at < before)).rowcount or 0


class ChangeWatcher:
    """Blocks until the outbox may have changed (see the module docstring). ``wait`` and
    ``release`` are called from one thread; ``close`` from any."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._closed = threading.Event()
        self._kind = engine.dialect.name
        self._pg: Any = None
        self._sqlite: sqlite3.Connection | None = None
        self._version: int | None = None

    # -- PostgreSQL: LISTEN on a connection of its own (autocommit, outside the pool)
    def _pg_conn(self) -> Any:
        if self._pg is None:
            import psycopg

            url = self.engine.url.set(drivername="postgresql")
            self._pg = psycopg.connect(url.render_as_string(hide_password=False), autocommit=True, connect_timeout=5)
            self._pg.execute(f"LISTEN {NOTIFY_CHANNEL}")
        return self._pg

    def _wait_pg(self, timeout: float) -> bool:
        try:
            conn = self._pg_conn()
            woke = False
            for n in conn.notifies(timeout=timeout, stop_after=1):
                woke = True
                if not n.payload.isdigit():  # only a hint; the table is the truth
                    log.debug("ignoring a malformed NOTIFY payload on %s", NOTIFY_CHANNEL)
            return woke
        except Exception as e:  # noqa: BLE001 - the database is down: fall back to polling
            log.debug("outbox LISTEN connection failed: %s", e)
            self._drop_pg()
            self._closed.wait(min(timeout, 1.0))
            return True

    def _drop_pg(self) -> None:
        if self._pg is not None:
            try:
                self._pg.close()
            except Exception:  # noqa: BLE001
                pass
            self._pg = None

    # -- SQLite: PRAGMA data_version on a connection of its own
    def _wait_sqlite(self, timeout: float) -> bool:
        path = sqlite_path(str(self.engine.url))
        if path is None:  # in-memory: one process; poll
            self._closed.wait(min(timeout, SQLITE_POLL))
            return True
        deadline = time.monotonic() + timeout
        while not self._closed.is_set():
            try:
                if self._sqlite is None:
                    self._sqlite = sqlite3.connect(str(path), check_same_thread=False, timeout=5)
                v = int(self._sqlite.execute("PRAGMA data_version").fetchone()[0])
            except sqlite3.Error as e:
                log.debug("outbox data_version check failed: %s", e)
                self._sqlite = None
                v = -1
            if self._version is None:
                self._version = v
            elif v != self._version:
                self._version = v
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._closed.wait(min(SQLITE_POLL, left))
        return False

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a possible change; True if woken early."""
        if self._closed.is_set():
            return False
        if self._kind == "postgresql":
            return self._wait_pg(timeout)
        return self._wait_sqlite(timeout)

    def close(self) -> None:
        """Make :meth:`wait` return (from any thread). The connections are closed by
        :meth:`release`, from the thread that waits, once it no longer does: closing a
        connection another thread is using can crash the process."""
        self._closed.set()

    def release(self) -> None:
        self._closed.set()
        self._drop_pg()
        if self._sqlite is not None:
            try:
                self._sqlite.close()
            except sqlite3.Error:
                pass
            self._sqlite = None
