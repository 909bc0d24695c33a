"""The SQL implementation of :class:`~ucgate.store.repository.Repository` (SQLAlchemy Core).

One engine, one short transaction per call. A write is acknowledged (the method returns) only
after COMMIT returned, and both databases are configured so a returned COMMIT is durable
(see ``ucgate.store.engine``): an acknowledged write survives ``kill -9`` of the process.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row, delete, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from .. import metrics
from . import migrate
from .engine import StoreError, Transactions, make_engine
from .outbox import append_pending
from .repository import (
    AspRecord,
    AuditRecord,
    DuplicateError,
    NewAsp,
    NewOtpSecret,
    NotFoundError,
    OtpRecord,
    UserRecord,
)
from .schema import USER_SOURCES, asps, audit, otp_recovery_codes, otp_secrets, users

_AUDIT_INSERT = insert(audit).returning(audit.c.id, sort_by_parameter_order=True)
_AUDIT_COLUMNS = (
    "at",
    "actor",
    "action",
    "result",
    "username",
    "device",
    "service",
    "client_address",
    "reason",
    "details",
)
_SQLITE_AUDIT_INSERT = (
    f"INSERT INTO audit ({', '.join(_AUDIT_COLUMNS)}) VALUES ({', '.join('?' * len(_AUDIT_COLUMNS))})"
)


def _user(row: Row) -> UserRecord:
    m = row._mapping
    return UserRecord(
        id=m["id"],
        username=m["username"],
        upn=m["upn"],
        sip_uri=m["sip_uri"],
        display_name=m["display_name"],
        enabled=bool(m["enabled"]),
        source=m["source"],
        created_at=m["created_at"],
    )


def _asp(row: Row) -> AspRecord:
    m = row._mapping
    return AspRecord(
        id=m["id"],
        user_id=m["user_id"],
        label=m["label"],
        ciphertext=bytes(m["ciphertext"]),
        nonce=bytes(m["nonce"]),
        device_id=m["device_id"],
        created_at=m["created_at"],
        last_used_at=m["last_used_at"],
        revoked_at=m["revoked_at"],
    )


def _audit(row: Row) -> AuditRecord:
    m = row._mapping
    return AuditRecord(
        id=m["id"],
        at=m["at"],
        actor=m["actor"],
        action=m["action"],
        result=m["result"],
        username=m["username"],
        device=m["device"],
        service=m["service"],
        client_address=m["client_address"],
        reason=m["reason"],
        details=m["details"],
    )


def _otp(row: Row) -> OtpRecord:
    m = row._mapping
    return OtpRecord(
        id=m["id"],
        user_id=m["user_id"],
        ciphertext=bytes(m["ciphertext"]),
        nonce=bytes(m["nonce"]),
        created_at=m["created_at"],
        confirmed_at=m["confirmed_at"],
        last_step=m["last_step"],
        last_used_at=m["last_used_at"],
    )


class SqlRepository(Transactions):
    """SQLite or PostgreSQL storage. Thread-safe (the engine pools connections)."""

    @classmethod
    def open(cls, url: str, *, migrate_schema: bool = True) -> SqlRepository:
        """Open the database at ``url``.

        Args:
            migrate_schema: bring the schema to the newest revision first (the default, right
                for SQLite on one node). A cluster may prefer ``ucgate db upgrade`` run once.
        Raises:
            StoreError: when the schema is not current and ``migrate_schema`` is False.
        """
        engine = make_engine(url)
        if migrate_schema:
            migrate.upgrade(engine)
        else:
            have, want = migrate.current(engine), migrate.head()
            if have != want:
                engine.dispose()
                raise StoreError(
                    f"the database schema is at revision {have or 'none'}, this ucgate needs "
                    f"{want}: run `ucgate db upgrade`"
                )
        return cls(engine)

    def close(self) -> None:
        self.engine.dispose()

    # --- users ------------------------------------------------------------------------
    def add_user(
        self,
        username: str,
        *,
        upn: str | None,
        sip_uri: str | None,
        display_name: str | None,
        source: str,
        created_at: datetime,
        enabled: bool = True,
    ) -> UserRecord:
        if source not in USER_SOURCES:
            raise ValueError(f"source must be one of {USER_SOURCES}, got {source!r}")
        values = dict(
            username=username,
            upn=upn,
            sip_uri=sip_uri,
            display_name=display_name,
            enabled=enabled,
            source=source,
            created_at=created_at,
        )
        try:
            with self._write() as c:
                user_id = c.execute(insert(users).values(**values).returning(users.c.id)).scalar_one()
        except IntegrityError as e:
            raise DuplicateError(f"a user named {username!r} (or with UPN {upn!r}) exists") from e
        return UserRecord(
            id=user_id,
            username=username,
            upn=upn,
            sip_uri=sip_uri,
            display_name=display_name,
            enabled=enabled,
            source=source,
            created_at=created_at,
        )

    def _one_user(self, where: Any) -> UserRecord | None:
        with self._read() as c:
            row = c.execute(select(users).where(where)).first()
        return _user(row) if row else None

    def get_user(self, username: str) -> UserRecord | None:
        return self._one_user(users.c.username == username)

    def get_user_by_id(self, user_id: int) -> UserRecord | None:
        return self._one_user(users.c.id == user_id)

    def get_user_by_upn(self, upn: str) -> UserRecord | None:
        return self._one_user(users.c.upn == upn)

    def list_users(self) -> list[UserRecord]:
        with self._read() as c:
            return [_user(r) for r in c.execute(select(users).order_by(users.c.username))]

    def set_user_enabled(self, username: str, enabled: bool, *, event: Any = None) -> bool:
        """``event``: an outbox event written in the same transaction (``outbox.append_pending``)."""
        with self._write() as c:
            n = c.execute(update(users).where(users.c.username == username).values(enabled=enabled)).rowcount
            if n == 1:
                append_pending(c, event)
        return n == 1

    # --- ASPs -------------------------------------------------------------------------
    def add_asp(self, asp: NewAsp, *, event: Any = None) -> None:
        try:
            with self._write() as c:
                if c.execute(select(users.c.id).where(users.c.id == asp.user_id)).first() is None:
                    raise NotFoundError(f"no user with id {asp.user_id}")
                c.execute(
                    insert(asps).values(
                        id=asp.id,
                        user_id=asp.user_id,
                        label=asp.label,
                        ciphertext=asp.ciphertext,
                        nonce=asp.nonce,
                        device_id=asp.device_id,
                        created_at=asp.created_at,
                    )
                )
                append_pending(c, event)
        except IntegrityError as e:
            raise DuplicateError(f"an ASP with id {asp.id!r} exists") from e

    def get_asp(self, asp_id: str) -> AspRecord | None:
        with self._read() as c:
            row = c.execute(select(asps).where(asps.c.id == asp_id)).first()
        return _asp(row) if row else None

    def list_asps(self, user_id: int, *, include_revoked: bool = True) -> list[AspRecord]:
        q = select(asps).where(asps.c.user_id == user_id)
        if not include_revoked:
            q = q.where(asps.c.revoked_at.is_(None))
        with self._read() as c:
            return [_asp(r) for r in c.execute(q.order_by(asps.c.created_at, asps.c.id))]

    def revoke_asp(self, asp_id: str, at: datetime, *, event: Any = None) -> bool:
        with self._write() as c:
            if c.execute(select(asps.c.id).where(asps.c.id == asp_id)).first() is None:
                return False
            c.execute(update(asps).where(asps.c.id == asp_id, asps.c.revoked_at.is_(None)).values(revoked_at=at))
            append_pending(c, event)
        return True

    def mark_asp_used(self, asp_id: str, at: datetime) -> bool:
        with self._write() as c:
            n = c.execute(update(asps).where(asps.c.id == asp_id).values(last_used_at=at)).rowcount
        return n == 1

    def replace_asp_ciphertext(self, asp_id: str, ciphertext: bytes, nonce: bytes) -> bool:
        with self._write() as c:
            n = c.execute(update(asps).where(asps.c.id == asp_id).values(ciphertext=ciphertext, nonce=nonce)).rowcount
        return n == 1

    def all_asp_ids(self) -> Sequence[str]:
        with self._read() as c:
            return list(c.execute(select(asps.c.id).order_by(asps.c.id)).scalars())

    # --- audit ------------------------------------------------------------------------
    def add_audit(self, event: AuditRecord) -> int:
        with self._write() as c:
            return c.execute(
                insert(audit)
                .values(
                    at=event.at,
                    actor=event.actor,
                    action=event.action,
                    result=event.result,
                    username=event.username,
                    device=event.device,
                    service=event.service,
                    client_address=event.client_address,
                    reason=event.reason,
                    details=event.details,
                )
                .returning(audit.c.id)
            ).scalar_one()

    def write_batch(self, events: Sequence[AuditRecord], used: Sequence[tuple[str, datetime]]) -> list[int]:
        """Audit events and ASP "last used" times in one transaction (the sign-in writer's group
        commit, ``ucgate.id.writer``); returns the events' ids in order."""
        ids: list[int] = []
        with self._write() as c:
            if events and c.dialect.name == "sqlite":
                ids = self._insert_audit_sqlite(c, events)
            elif events:
                # one executemany ("insertmanyvalues": a few multi-row INSERTs, ids returned in
                # the parameters' order) instead of one compiled INSERT per event: ~10x less CPU
                # per event in the writer thread (bench/README.md, ntlm.py)
                rows = c.execute(
                    _AUDIT_INSERT,
                    [
                        {
                            "at": ev.at,
                            "actor": ev.actor,
                            "action": ev.action,
                            "result": ev.result,
                            "username": ev.username,
                            "device": ev.device,
                            "service": ev.service,
                            "client_address": ev.client_address,
                            "reason": ev.reason,
                            "details": ev.details,
                        }
                        for ev in events
                    ],
                )
                ids = [r[0] for r in rows]
                if len(ids) != len(events):
                    raise StoreError(f"audit batch: {len(ids)} ids for {len(events)} events")
            latest: dict[str, datetime] = {}
            for asp_id, at in used:
                if asp_id not in latest or at > latest[asp_id]:
                    latest[asp_id] = at
            for asp_id, at in latest.items():
                c.execute(update(asps).where(asps.c.id == asp_id).values(last_used_at=at))
        return ids

    def _insert_audit_sqlite(self, c: Connection, events: Sequence[AuditRecord]) -> list[int]:
        """The batch's rows on the driver's cursor, in ``c``'s transaction: SQLAlchemy's
        insertmanyvalues runs one statement per row on SQLite for ids in the parameters' order
        (RETURNING over a multi-row VALUES has no defined order), each through the execution
        context and the statement-timing listener — most of the writer thread's CPU per event
        (bench/README.md). Here each row is one driver ``execute`` and its id the cursor's
        ``lastrowid``; values are bound by the columns' own bind processors (UtcDateTime, JSON),
        so the rows are the ones SQLAlchemy writes (tests/store/test_sql_audit_batch.py). The
        batch is timed as one ``insert`` in ``ucgate_store_statement_seconds``."""
        d = c.dialect
        procs = [audit.c[name].type.dialect_impl(d).bind_processor(d) for name in _AUDIT_COLUMNS]
        cur = c.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        ids: list[int] = []
        t0 = time.perf_counter()
        try:
            for ev in events:
                raw = (
                    ev.at,
                    ev.actor,
                    ev.action,
                    ev.result,
                    ev.username,
                    ev.device,
                    ev.service,
                    ev.client_address,
                    ev.reason,
                    ev.details,
                )
                cur.execute(_SQLITE_AUDIT_INSERT, [v if p is None else p(v) for p, v in zip(procs, raw, strict=True)])
                ids.append(int(cur.lastrowid))
        finally:
            cur.close()
        metrics.STORE_LATENCY.labels("insert").observe(time.perf_counter() - t0)
        return ids

    def tail_audit(self, n: int) -> list[AuditRecord]:
        if n <= 0:
            return []
        with self._read() as c:
            rows = c.execute(select(audit).order_by(audit.c.id.desc()).limit(n)).all()
        return [_audit(r) for r in reversed(rows)]

    # --- TOTP second factor ------------------------------------------------------------
    def begin_otp(self, secret: NewOtpSecret) -> None:
        uid = secret.user_id
        try:
            with self._write() as c:
                if c.execute(select(users.c.id).where(users.c.id == uid)).first() is None:
                    raise NotFoundError(f"no user with id {uid}")
                row = c.execute(select(otp_secrets.c.confirmed_at).where(otp_secrets.c.user_id == uid)).first()
                if row is not None and row.confirmed_at is not None:
                    raise DuplicateError(f"user id {uid} has an active TOTP secret; reset it first")
                c.execute(delete(otp_recovery_codes).where(otp_recovery_codes.c.user_id == uid))
                c.execute(delete(otp_secrets).where(otp_secrets.c.user_id == uid))
                c.execute(
                    insert(otp_secrets).values(
                        user_id=uid,
                        id=secret.id,
                        ciphertext=secret.ciphertext,
                        nonce=secret.nonce,
                        created_at=secret.created_at,
                    )
                )
        except IntegrityError as e:  # a concurrent begin for the same user won
            raise DuplicateError(f"a TOTP enrolment for user id {uid} was stored concurrently") from e

    def get_otp(self, user_id: int) -> OtpRecord | None:
        with self._read() as c:
            row = c.execute(select(otp_secrets).where(otp_secrets.c.user_id == user_id)).first()
        return _otp(row) if row else None

    def confirm_otp(self, user_id: int, otp_id: str, step: int, at: datetime, recovery_hashes: Sequence[bytes]) -> bool:
        with self._write() as c:
            n = c.execute(
                update(otp_secrets)
                .where(
                    otp_secrets.c.user_id == user_id,
                    otp_secrets.c.id == otp_id,
                    otp_secrets.c.confirmed_at.is_(None),
                )
                .values(confirmed_at=at, last_step=step, last_used_at=at)
            ).rowcount
            if n != 1:
                return False
            self._put_recovery_codes(c, user_id, recovery_hashes, at)
        return True

    def advance_otp_step(self, user_id: int, step: int, at: datetime) -> bool:
        # One conditional UPDATE: the row lock (PostgreSQL) or the database write lock (SQLite,
        # BEGIN IMMEDIATE) makes "compare and set" atomic, so of two sign-ins racing with the
        # same code exactly one gets rowcount 1.
        with self._write() as c:
            n = c.execute(
                update(otp_secrets)
                .where(
                    otp_secrets.c.user_id == user_id,
                    otp_secrets.c.confirmed_at.is_not(None),
                    or_(otp_secrets.c.last_step.is_(None), otp_secrets.c.last_step < step),
                )
                .values(last_step=step, last_used_at=at)
            ).rowcount
        return n == 1

    def delete_otp(self, user_id: int, *, event: Any = None) -> bool:
        with self._write() as c:
            c.execute(delete(otp_recovery_codes).where(otp_recovery_codes.c.user_id == user_id))
            n = c.execute(delete(otp_secrets).where(otp_secrets.c.user_id == user_id)).rowcount
            if n == 1:
                append_pending(c, event)
        return n == 1

    def replace_otp_ciphertext(self, user_id: int, ciphertext: bytes, nonce: bytes) -> bool:
        with self._write() as c:
            n = c.execute(
                update(otp_secrets).where(otp_secrets.c.user_id == user_id).values(ciphertext=ciphertext, nonce=nonce)
            ).rowcount
        return n == 1

    def all_otp_user_ids(self) -> Sequence[int]:
        with self._read() as c:
            return list(c.execute(select(otp_secrets.c.user_id).order_by(otp_secrets.c.user_id)).scalars())

    @staticmethod
    def _put_recovery_codes(c: Connection, user_id: int, hashes: Sequence[bytes], at: datetime) -> None:
        c.execute(delete(otp_recovery_codes).where(otp_recovery_codes.c.user_id == user_id))
        if hashes:
            c.execute(insert(otp_recovery_codes), [dict(user_id=user_id, code_hash=h, created_at=at) for h in hashes])

    def replace_recovery_codes(self, user_id: int, hashes: Sequence[bytes], at: datetime) -> None:
        with self._write() as c:
            if c.execute(select(users.c.id).where(users.c.id == user_id)).first() is None:
                raise NotFoundError(f"no user with id {user_id}")
            self._put_recovery_codes(c, user_id, hashes, at)

    def use_recovery_code(self, user_id: int, code_hash: bytes, at: datetime) -> bool:
        with self._write() as c:
            row = c.execute(
                select(otp_recovery_codes.c.id)
                .where(
                    otp_recovery_codes.c.user_id == user_id,
                    otp_recovery_codes.c.code_hash == code_hash,
                    otp_recovery_codes.c.used_at.is_(None),
                )
                .limit(1)
            ).first()
            if row is None:
                return False
            n = c.execute(
                update(otp_recovery_codes)
                .where(
                    otp_recovery_codes.c.id == row.id,
                    otp_recovery_codes.c.used_at.is_(None),
                )
                .values(used_at=at)
            ).rowcount
        return n == 1

    def count_recovery_codes(self, user_id: int) -> int:
        with self._read() as c:
            return c.execute(
                select(func.count())
                .select_from(otp_recovery_codes)
                .where(otp_recovery_codes.c.user_id == user_id, otp_recovery_codes.c.used_at.is_(None))
            ).scalar_one()
