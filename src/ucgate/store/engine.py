"""Engines for the two supported databases, configured for durability.

SQLite (the default, one node): WAL journal, ``synchronous=FULL`` (a committed transaction
survives power loss, not only a killed process), foreign keys on, a busy timeout so concurrent
writers wait instead of failing, and ``BEGIN IMMEDIATE`` for write transactions so two writers
never deadlock upgrading a read lock. PostgreSQL (a cluster of gateways): its defaults
(``synchronous_commit=on``) already make a returned COMMIT durable; we add pool pre-ping so a
restarted server does not surface as an error on the next request.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url

from ..metrics import instrument_engine  # ucgate_store_statement_seconds

# How long an SQLite writer waits for another writer's lock before failing (milliseconds).
SQLITE_BUSY_TIMEOUT_MS = 10_000
# The execution option that makes a transaction a write transaction (BEGIN IMMEDIATE on SQLite).
WRITE = "ucgate_write"


class StoreError(Exception):
    """A storage problem an admin can act on (the message says what to do)."""


def sqlite_path(url: str) -> Path | None:
    """The database file of an SQLite URL, None for other databases or in-memory SQLite."""
    u = make_url(url)
    if u.get_backend_name() != "sqlite" or not u.database or u.database == ":memory:":
        return None
    return Path(u.database).expanduser().resolve()


def make_engine(url: str) -> Engine:
    """Create an engine for ``sqlite:///path`` or ``postgresql+psycopg://...``.

    For SQLite the database's directory is created (mode 0700) and the file is created with
    mode 0600 if missing: it holds user names, device ids and encrypted secrets.

    Raises:
        StoreError: for an unsupported URL.
    """
    u = make_url(url)
    backend = u.get_backend_name()
    if backend == "sqlite":
        engine = _sqlite_engine(url)
        instrument_engine(engine)
        return engine
    if backend == "postgresql":
        if u.get_driver_name() not in ("psycopg",):
            raise StoreError(f"use postgresql+psycopg://... (psycopg 3), got {u.drivername!r}")
        engine = create_engine(u, pool_pre_ping=True, future=True)
        instrument_engine(engine)
        return engine
    raise StoreError(
        f"unsupported database URL {u.render_as_string(hide_password=True)!r}; "
        "expected sqlite:///path or postgresql+psycopg://user@host/db"
    )


def _sqlite_engine(url: str) -> Engine:
    path = sqlite_path(url)
    if path is not None:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            pass
    engine = create_engine(url, future=True)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record) -> None:
        # Let SQLAlchemy's "begin" event below emit BEGIN itself (pysqlite's implicit
        # transactions would defer it and could not say IMMEDIATE).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        if path is not None:
            cur.execute("PRAGMA journal_mode = WAL")
        cur.execute("PRAGMA synchronous = FULL")
        cur.execute("PRAGMA foreign_keys = ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn) -> None:
        mode = "IMMEDIATE" if conn.get_execution_options().get(WRITE) else "DEFERRED"
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine


class Transactions:
    """A store over a shared engine, one short transaction per call (thread-safe): ``_write()``
    marks its connection as a writer, so that SQLite takes the write lock at BEGIN (see
    ``make_engine``) instead of failing to upgrade a read lock; ``_read()`` does not."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with self.engine.connect().execution_options(**{WRITE: True}) as conn, conn.begin():
            yield conn

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn, conn.begin():
            yield conn
