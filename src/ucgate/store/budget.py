"""The failure budget's state in the store: one budget per account, shared by every process.

The model is ``ucgate.policy.lockout``'s (leaky buckets per account class and per IP, familiar
IPs exempt, reserve before the check, settle after). Here each bucket is a row of
``budget_buckets`` and each charge is **one atomic statement**: an upsert that adds the unit only
if it fits under the limit (``INSERT ... ON CONFLICT DO UPDATE ... WHERE drained + 1 <= limit
RETURNING``), so concurrent attempts on any node can never charge past the limit. The account's
and the IP's charges run in one transaction: if the IP's does not fit, the account's is rolled
back. PostgreSQL holds the row lock until commit (the second writer re-reads the committed
level); SQLite serialises writers (``BEGIN IMMEDIATE``).

Times are epoch seconds (``time.time``), not a monotonic clock: every process and restart must
agree. Rows whose level has drained to zero are deleted by :meth:`StoreBudget.prune`, which the
budget calls itself now and then, so the table holds at most what the IP budgets let through in
one window.
"""

from __future__ import annotations

import functools
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event
from sqlalchemy.exc import DBAPIError

from .. import metrics
from ..policy.lockout import (
    BudgetConfig,
    BudgetDecision,
    Outcome,
    Reservation,
    drained,
    user_bucket,
    wait_for,
)
from ..policy.lockout import ip_bucket as _ip_bucket
from .engine import Transactions, make_engine, sqlite_path

# An IP's bucket name (its /64 for IPv6) through ipaddress is ~10% of a sign-in's budget work; a
# pure function of the address, so remembered for the addresses seen last.
ip_bucket = functools.lru_cache(maxsize=4096)(_ip_bucket)

# Reservations between two prunes of drained rows.
PRUNE_EVERY = 1000
# Driver connections of the budget's own SQLite engine kept between transactions (see _checkout).
KEEP_CONNECTIONS = 8


def _normal_sync(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA synchronous = NORMAL")
    cur.close()


def _greatest(conn: _Tx) -> str:
    return "GREATEST" if conn.dialect.name == "postgresql" else "MAX"


class _Result:
    """What the budget's statements need of a result: ``first``, ``scalar_one``, ``rowcount``."""

    __slots__ = ("rows", "rowcount")

    def __init__(self, rows: list[Any] | None, rowcount: int) -> None:
        self.rows, self.rowcount = rows, rowcount

    def first(self) -> Any:
        return self.rows[0] if self.rows else None

    def scalar_one(self) -> Any:
        if not self.rows or len(self.rows) != 1:
            raise ValueError(f"expected one row, got {len(self.rows or [])}")
        return self.rows[0][0]


class _Tx:
    """One transaction of the budget on a pooled driver connection (see StoreBudget._tx)."""

    __slots__ = ("dialect", "cur")

    def __init__(self, dialect: Any, cur: Any) -> None:
        self.dialect, self.cur = dialect, cur


class _Refused(Exception):
    """Inside :meth:`StoreBudget.reserve`: a charge did not fit, roll the transaction back."""


class StoreBudget(Transactions):
    """The failure budget over the store (same interface as ``policy.lockout.FailureBudget``'s
    ``reserve`` / ``settle`` / ``familiar`` / ``charge``)."""

    atomic = True  # safe to call from many threads at once (no lock needed around it)

    def __init__(self, engine: Any, config: BudgetConfig) -> None:
        if engine.dialect.name == "sqlite" and sqlite_path(str(engine.url)) is not None:
            # Budget rows are not worth a disk flush per attempt: an engine of our own whose
            # commits are not fsync-ed (WAL + synchronous=NORMAL: a power loss may undo the last
            # charges, a crash of ucgate loses nothing, the file is never corrupted).
            engine = make_engine(engine.url.render_as_string(hide_password=False))
            event.listen(engine, "connect", _normal_sync)
            self._own_engine = True
        super().__init__(engine)
        # SQLite: an attempt's transaction holds the database's write lock from BEGIN IMMEDIATE
        # (every process's writers wait for it), so it may read its rows first and write only
        # what the outcome changes (see _attempt_locked); PostgreSQL: the conditional upserts.
        self.one_read = engine.dialect.name == "sqlite"
        # driver connections of the own engine between transactions: a pool checkout and
        # checkin (with its reset) is ~40 us of Python per transaction; ours end committed or
        # rolled back, and an SQLite file connection is never lost
        self._keep = getattr(self, "_own_engine", False)
        self._idle: list[Any] = []
        self._now_raw: Any = None  # attempt_now's connection (busy timeout 0), under _now_lock
        self._now_lock = threading.Lock()
        self._statements: dict[str, str] = {}
        self.config = config
        self._user_rate = config.user_failures / config.window
        self._ip_rate = config.ip_failures / config.window
        self._count = 0
        self._lock = threading.Lock()
        self._latency: dict[str, Any] = {}  # ucgate_store_statement_seconds children, by kind

    # --- statements ---------------------------------------------------------------------
    # --- transactions -------------------------------------------------------------------
    @contextmanager
    def _tx(self, write: bool, raw: Any = None) -> Iterator[_Tx]:
        """One transaction on a connection of the engine's pool, run on the driver itself (the
        budget's few statements run on every sign-in; SQLAlchemy's ``Connection`` — checkout,
        events, result objects — was ~2/3 of their cost, bench/README.md ntlm.py). SQLite:
        ``BEGIN IMMEDIATE`` for a write, as ``engine.make_engine``'s write transactions;
        PostgreSQL: the driver's implicit transaction. A driver error is raised as SQLAlchemy's
        (``DBAPIError.instance``: ``OperationalError`` ...), so callers see what they saw
        before (``store-unavailable``); a lost connection is invalidated, not returned to the pool.
        ``raw``: a driver connection of the caller's own (:meth:`attempt_now`'s), kept by it."""
        dialect = self.engine.dialect
        dbapi_error = dialect.loaded_dbapi.Error
        sqlite = dialect.name == "sqlite"
        stmt = "connect"
        own = raw is not None
        try:
            if not own:
                raw = self._checkout()
        except DBAPIError:
            raise
        except dbapi_error as e:
            raise DBAPIError.instance(stmt, {}, e, dbapi_error) from e
        cur = None
        done = False
        try:
            cur = raw.cursor()
            if sqlite:
                stmt = "BEGIN IMMEDIATE" if write else "BEGIN DEFERRED"
                self._run(cur, stmt, {})
            tx = _Tx(dialect, cur)
            yield tx
            stmt = "COMMIT"
            if sqlite:
                self._run(cur, stmt, {})
            else:
                t0 = time.perf_counter()
                raw.commit()
                self._observe("commit", t0)
            done = True
        except dbapi_error as e:
            self._rollback(raw, cur, e)
            raise DBAPIError.instance(getattr(e, "_ucgate_stmt", stmt), {}, e, dbapi_error) from e
        except BaseException as e:
            self._rollback(raw, cur, e)
            raise
        finally:
            if cur is not None:
                try:
                    cur.close()
                except dbapi_error:
                    pass
            if not own:
                self._checkin(raw, done)

    def _checkout(self) -> Any:
        if self._keep:
            try:
                return self._idle.pop()  # atomic: list.pop under the GIL
            except IndexError:
                pass
        return self.engine.raw_connection()

    def _checkin(self, raw: Any, committed: bool) -> None:
        """A committed transaction's connection is kept for the next (own SQLite engine, at
        most KEEP_CONNECTIONS); any other goes back to the pool, which resets it, unless it was
        invalidated."""
        if committed and self._keep and len(self._idle) < KEEP_CONNECTIONS:
            self._idle.append(raw)
            return
        raw.close()

    def _rollback(self, raw: Any, cur: Any, e: BaseException) -> None:
        dialect = self.engine.dialect
        try:
            if isinstance(e, dialect.loaded_dbapi.Error) and dialect.is_disconnect(e, raw.dbapi_connection, cur):
                raw.invalidate(e)
                return
            if dialect.name == "sqlite":
                if not raw.dbapi_connection.in_transaction:
                    return
                cur.execute("ROLLBACK")
            else:
                raw.rollback()
        except Exception:  # noqa: BLE001 - the connection is unusable: never back to the pool
            raw.invalidate(e)

    def _observe(self, kind: str, t0: float) -> None:
        child = self._latency.get(kind)
        if child is None:
            child = self._latency[kind] = metrics.STORE_LATENCY.labels(kind)
        child.observe(time.perf_counter() - t0)  # ucgate_store_statement_seconds, as instrument_engine

    def _run(self, cur: Any, sql: str, params: dict[str, Any]) -> None:
        t0 = time.perf_counter()
        cur.execute(sql, params)
        kind = sql.lstrip()[:8].split(None, 1)[0].lower()
        self._observe(kind if kind in metrics.STATEMENTS else "other", t0)

    def _sql(self, c: _Tx, sql: str, params: dict[str, Any]) -> _Result:
        """Run ``sql`` (``:name`` parameters) on the driver in the transaction ``c``."""
        drv = self._statements.get(sql)
        if drv is None:
            drv = sql if c.dialect.name == "sqlite" else re.sub(r":(\w+)", r"%(\1)s", sql)
            self._statements[sql] = drv
        try:
            self._run(c.cur, drv, params)
        except Exception as e:
            try:
                e._ucgate_stmt = drv  # type: ignore[attr-defined]  # any driver exception; named in the DBAPIError
            except AttributeError:
                pass
            raise
        cur = c.cur
        rows = cur.fetchall() if cur.description is not None else None
        return _Result(rows, cur.rowcount)

    @staticmethod
    def _level(c: _Tx, table: str = "budget_buckets.") -> str:
        """SQL for a bucket's drained level at ``:now`` (``policy.lockout.drained``)."""
        g = _greatest(c)
        return f"{g}(0.0, {table}level - {g}(0.0, :now - {table}at) * :rate)"

    def _charge(self, c: _Tx, bucket: str, limit: float, rate: float, now: float) -> bool:
        """Add one unit to ``bucket`` if it fits under ``limit``; whether it did."""
        g, level = _greatest(c), self._level(c)
        row = self._sql(
            c,
            (
                "INSERT INTO budget_buckets (bucket, level, at) VALUES (:bucket, 1.0, :now) "
                f"ON CONFLICT (bucket) DO UPDATE SET level = {level} + 1.0, at = {g}(:now, budget_buckets.at) "
                f"WHERE {level} + 1.0 <= :limit + 1e-9 RETURNING level"
            ),
            {"bucket": bucket, "now": now, "rate": rate, "limit": float(limit)},
        ).first()
        return row is not None

    def _add(self, c: _Tx, bucket: str, delta: float, rate: float, now: float) -> None:
        """Add ``delta`` to a bucket unconditionally (a refund when negative), never below 0."""
        g = _greatest(c)
        if delta > 0:
            self._sql(
                c,
                (
                    "INSERT INTO budget_buckets (bucket, level, at) VALUES (:bucket, :delta, :now) "
                    f"ON CONFLICT (bucket) DO UPDATE SET level = {self._level(c)} + :delta, "
                    f"at = {g}(:now, budget_buckets.at)"
                ),
                {"bucket": bucket, "now": now, "rate": rate, "delta": delta},
            )
        else:
            self._sql(
                c,
                (
                    f"UPDATE budget_buckets SET level = {g}(0.0, {self._level(c, '')} + :delta), "
                    f"at = {g}(:now, at) WHERE bucket = :bucket"
                ),
                {"bucket": bucket, "now": now, "rate": rate, "delta": delta},
            )

    def _relaxed(self, c: _Tx) -> None:
        """Budget rows are not worth a disk flush per attempt: on PostgreSQL the commit returns
        before its WAL record is flushed (``synchronous_commit = off``, this transaction only;
        a crash of the server loses at most the last ~0.2 s of charges, never consistency).
        SQLite's durability is per connection and stays ``FULL``."""
        if c.dialect.name == "postgresql":
            self._sql(c, "SET LOCAL synchronous_commit = off", {})

    def _wait(self, c: _Tx, bucket: str, limit: int, rate: float, now: float) -> float:
        row = self._sql(c, ("SELECT level, at FROM budget_buckets WHERE bucket = :b"), {"b": bucket}).first()
        if row is None:
            return 0.0
        return wait_for(drained(float(row[0]), float(row[1]), now, rate), limit, rate)

    def _familiar(self, c: _Tx, account: str, ip: str, now: float) -> bool:
        row = self._sql(
            c, ("SELECT at FROM familiar_ips WHERE account = :a AND ip = :ip"), {"a": account, "ip": ip}
        ).first()
        return row is not None and now - float(row[0]) <= self.config.familiar_for

    # --- the interface ------------------------------------------------------------------
    def familiar(self, account: str, ip: str, now: float) -> bool:
        with self._tx(write=False) as c:
            return self._familiar(c, account, ip, now)

    def check(self, account: str, ip: str, now: float) -> BudgetDecision:
        """Would an attempt fit now? (Read only; :meth:`reserve` is what counts.)"""
        cfg = self.config
        with self._tx(write=False) as c:
            fam = self._familiar(c, account, ip, now)
            w = self._wait(c, user_bucket(account, fam), cfg.user_failures, self._user_rate, now)
            if w > 0:
                return BudgetDecision(False, "user-throttled", w)
            if not fam:
                w = self._wait(c, ip_bucket(ip), cfg.ip_failures, self._ip_rate, now)
                if w > 0:
                    return BudgetDecision(False, "ip-throttled", w)
        return BudgetDecision(True)

    def reserve(self, account: str, ip: str, now: float) -> Reservation | BudgetDecision:
        """Charge one failure to the account (and the IP, unless the pair is familiar) before
        the credential is checked, or refuse (a :class:`BudgetDecision`) if it does not fit."""
        self._maybe_prune(now)
        try:
            with self._tx(write=True) as c:
                self._relaxed(c)
                r = self._reserve(c, account, ip, now)
                if isinstance(r, BudgetDecision):
                    raise _Refused(r)  # rolls the account's charge back with the transaction
        except _Refused as e:
            return e.args[0]
        return r

    def _reserve(self, c: _Tx, account: str, ip: str, now: float) -> Reservation | BudgetDecision:
        cfg = self.config
        fam = self._familiar(c, account, ip, now)
        ub = user_bucket(account, fam)
        if not self._charge(c, ub, cfg.user_failures, self._user_rate, now):
            wait = self._wait(c, ub, cfg.user_failures, self._user_rate, now)
            return BudgetDecision(False, "user-throttled", max(wait, 1e-6))
        if not fam and not self._charge(c, ip_bucket(ip), cfg.ip_failures, self._ip_rate, now):
            wait = self._wait(c, ip_bucket(ip), cfg.ip_failures, self._ip_rate, now)
            return BudgetDecision(False, "ip-throttled", max(wait, 1e-6))
        return Reservation(account, ip, fam, not fam)

    def attempt(self, account: str, ip: str, now: float, check: Callable[[], Outcome]) -> Reservation | BudgetDecision:
        """:meth:`reserve`, ``check()``, :meth:`settle` with its outcome, in **one** transaction:
        the same statements and the same result as the three calls, one BEGIN/COMMIT fewer (and
        on PostgreSQL one round trip set fewer). ``check`` runs only when the unit fitted, while
        the transaction holds the account's bucket (SQLite: the write lock), so it must be a
        computation — an ASP or an NTLM response compared in memory, which may *read* the store
        but never writes it or waits on the network (a directory bind, an OTP step goes through
        :meth:`reserve` / :meth:`settle`). When ``check`` raises, the unit stays charged (a
        failure, as the two-call path's ``finally`` settles it) and the exception is re-raised
        after the commit. If the transaction fails, nothing was charged and the caller answers
        ``store-unavailable`` (which says nothing about the credential)."""
        self._maybe_prune(now)
        error: Exception | None = None
        try:
            with self._tx(write=True) as c:
                if self.one_read:
                    r, error = self._attempt_locked(c, account, ip, now, check)
                    if isinstance(r, BudgetDecision):
                        return r  # nothing was written
                else:
                    self._relaxed(c)
                    r = self._reserve(c, account, ip, now)
                    if isinstance(r, BudgetDecision):
                        raise _Refused(r)
                    try:
                        outcome = check()
                    except Exception as e:  # noqa: BLE001 - re-raised below, after the charge is committed
                        error, outcome = e, Outcome.FAILURE
                    self._settle(c, r, outcome, now)
        except _Refused as e:
            return e.args[0]
        if error is not None:
            raise error
        return r

    def attempt_now(self, account: str, ip: str, now: float, outcome: Outcome) -> Reservation | BudgetDecision | None:
        """:meth:`attempt` of an outcome known already — an ASP or an NTLM response compared
        with the sign-in cache's records just before, a computation — for the event loop's
        thread: it **never waits**. The same transaction as :meth:`attempt`'s (the unit is
        reserved under the write lock and settled with ``outcome``; a full bucket refuses a
        right password too), on a driver connection of its own whose busy timeout is 0 — or,
        for the usual success (:meth:`_writes_nothing`: a familiar IP, no failures on the
        account), the one read that shows the transaction would write nothing. None —
        and nothing charged — when it would wait: another writer (a thread, another process)
        holds SQLite's write lock, the connection is in use or was lost, a prune is due, or the
        store is not SQLite's file (PostgreSQL is a network round trip). The caller then makes
        the attempt in a worker thread, from the start. The connection never runs a WAL
        checkpoint (``wal_autocheckpoint = 0``: the writers in threads do), so a commit on the
        loop is never a flush."""
        if not (self._keep and self.one_read) or (self._count + 1) % PRUNE_EVERY == 0:
            return None
        if not self._now_lock.acquire(blocking=False):
            return None
        try:
            raw = self._now_raw
            dbapi_error = self.engine.dialect.loaded_dbapi.Error
            try:
                if raw is None:
                    raw = self.engine.raw_connection()
                    raw.detach()  # never back to the pool: its busy timeout is 0
                    cur = raw.cursor()
                    cur.execute("PRAGMA busy_timeout = 0")
                    cur.execute("PRAGMA wal_autocheckpoint = 0")
                    cur.close()
                    self._now_raw = raw
                if outcome is Outcome.SUCCESS and self._writes_nothing(raw, account, ip, now):
                    r: Reservation | BudgetDecision = Reservation(account, ip, True, False)
                else:
                    with self._tx(write=True, raw=raw) as c:
                        r, _ = self._attempt_locked(c, account, ip, now, lambda: outcome)
            except (DBAPIError, dbapi_error):
                # busy (the usual case: rolled back, the connection kept) or worse (dropped)
                if raw is not None and (not raw.is_valid or raw.dbapi_connection.in_transaction):
                    self._now_raw = None
                    raw.close()
                return None
            with self._lock:
                self._count += 1
            return r
        finally:
            self._now_lock.release()

    def _attempt_locked(
        self, c: _Tx, account: str, ip: str, now: float, check: Callable[[], Outcome]
    ) -> tuple[Reservation | BudgetDecision, Exception | None]:
        """:meth:`attempt` in a transaction that holds the write lock from its start (SQLite's
        ``BEGIN IMMEDIATE``): the familiar pair and the buckets read in one statement, the
        fit decided from those rows with the arithmetic of :meth:`_charge`'s condition, and only
        what the outcome leaves written. The rows end as the charge-check-settle statements
        leave them: a success's charge and reset of the account's bucket is its DELETE (nothing
        when there was no row), a success's charge and refund of the IP's one statement with
        the same expressions; a failure's charges are :meth:`_charge`'s; any other outcome runs
        the charges and :meth:`_settle` as before. A refusal writes nothing (the charges it
        rolled back)."""
        cfg = self.config
        u0, u1, ipb = user_bucket(account, False), user_bucket(account, True), ip_bucket(ip)
        got = self._rows(c, account, ip)
        fam_at = got.get("f")
        fam = fam_at is not None and now - fam_at[0] <= cfg.familiar_for
        ub = u1 if fam else u0
        user_row, ip_row = got.get(ub), got.get(ipb)
        if user_row is not None and not self._fits(user_row, cfg.user_failures, self._user_rate, now):
            wait = wait_for(drained(user_row[0], user_row[1], now, self._user_rate), cfg.user_failures, self._user_rate)
            return BudgetDecision(False, "user-throttled", max(wait, 1e-6)), None
        if not fam and ip_row is not None and not self._fits(ip_row, cfg.ip_failures, self._ip_rate, now):
            wait = wait_for(drained(ip_row[0], ip_row[1], now, self._ip_rate), cfg.ip_failures, self._ip_rate)
            return BudgetDecision(False, "ip-throttled", max(wait, 1e-6)), None
        r = Reservation(account, ip, fam, not fam)
        error: Exception | None = None
        try:
            outcome = check()
        except Exception as e:  # noqa: BLE001 - re-raised by attempt, after the charge is committed
            error, outcome = e, Outcome.FAILURE
        if outcome is Outcome.SUCCESS:
            if user_row is not None:
                self._sql(c, "DELETE FROM budget_buckets WHERE bucket = :b", {"b": ub})
            if not fam:
                level = self._level(c)
                self._sql(
                    c,
                    (
                        "INSERT INTO budget_buckets (bucket, level, at) VALUES (:bucket, 0.0, :now) "
                        f"ON CONFLICT (bucket) DO UPDATE SET level = MAX(0.0, ({level} + 1.0) + -1.0), "
                        "at = MAX(:now, budget_buckets.at)"
                    ),
                    {"bucket": ipb, "now": now, "rate": self._ip_rate},
                )
            if not fam or fam_at is None or now - fam_at[0] >= cfg.familiar_refresh:  # (fam: fam_at was read)
                self._remember(c, account, ip, now, new=not fam)
            return r, error
        charged = self._charge(c, ub, cfg.user_failures, self._user_rate, now)
        if not fam:
            charged = self._charge(c, ipb, cfg.ip_failures, self._ip_rate, now) and charged
        assert charged, "a unit that fitted under the write lock was refused"
        self._settle(c, r, outcome, now)
        return r, error

    def _rows(self, c: _Tx, account: str, ip: str) -> dict[str, tuple[float, float]]:
        """The familiar pair's time (``"f"``) and the (level, at) of the account's two buckets
        and the IP's that have a row, in one statement."""
        rows = self._sql(
            c,
            (
                "SELECT 'f', at, 0.0 FROM familiar_ips WHERE account = :a AND ip = :ip "
                "UNION ALL SELECT bucket, level, at FROM budget_buckets WHERE bucket IN (:u0, :u1, :ipb)"
            ),
            {
                "a": account,
                "ip": ip,
                "u0": user_bucket(account, False),
                "u1": user_bucket(account, True),
                "ipb": ip_bucket(ip),
            },
        ).rows
        return {row[0]: (float(row[1]), float(row[2])) for row in rows or ()}

    def _writes_nothing(self, raw: Any, account: str, ip: str, now: float) -> bool:
        """Whether a success of ``account`` from ``ip`` now leaves every row as it is: the IP is
        familiar (no IP unit to charge and give back), its time needs no refresh, and the
        account's bucket for familiar IPs has no row (no failure to forget). Read in one
        SELECT outside a transaction of ours: a WAL reader never waits for a writer. Such a
        success is the charge-check-settle of :meth:`_attempt_locked` at the moment of the
        read (the bucket empty then: the unit fitted, the reset has nothing to delete); an
        attempt committed after the read is ordered after it, as under the write lock."""
        cur = raw.cursor()
        try:
            got = self._rows(_Tx(self.engine.dialect, cur), account, ip)
        finally:
            cur.close()
        fam_at = got.get("f")
        if fam_at is None:
            return False
        age = now - fam_at[0]
        return (
            age <= self.config.familiar_for
            and age < self.config.familiar_refresh
            and user_bucket(account, True) not in got
        )

    @staticmethod
    def _fits(row: tuple[float, float], limit: float, rate: float, now: float) -> bool:
        """:meth:`_charge`'s condition on a bucket's (level, at), in the same float arithmetic."""
        level, at = row
        return max(0.0, level - max(0.0, now - at) * rate) + 1.0 <= float(limit) + 1e-9

    def settle(self, r: Reservation, outcome: Outcome, now: float) -> None:
        """End a reserved attempt: a success resets the account's bucket of that class, gives
        the IP its unit back and makes the IP familiar; a failure keeps the units; an outcome
        that says nothing about the password gives both back."""
        if outcome is Outcome.FAILURE:
            return
        with self._tx(write=True) as c:
            self._relaxed(c)
            self._settle(c, r, outcome, now)

    def _settle(self, c: _Tx, r: Reservation, outcome: Outcome, now: float) -> None:
        if outcome is Outcome.FAILURE:
            return
        if r.charged_ip:
            self._add(c, ip_bucket(r.ip), -1.0, self._ip_rate, now)
        ub = user_bucket(r.account, r.familiar)
        if outcome is Outcome.SUCCESS:
            self._sql(c, ("DELETE FROM budget_buckets WHERE bucket = :b"), {"b": ub})
            self._remember(c, r.account, r.ip, now, new=not r.familiar)
        else:
            self._add(c, ub, -1.0, self._user_rate, now)

    def charge(self, account: str, ip: str, now: float) -> None:
        """A failure found after the fact (the gateway refused what the id service allowed):
        charged unconditionally."""
        with self._tx(write=True) as c:
            fam = self._familiar(c, account, ip, now)
            self._add(c, user_bucket(account, fam), 1.0, self._user_rate, now)
            if not fam:
                self._add(c, ip_bucket(ip), 1.0, self._ip_rate, now)

    def _remember(self, c: _Tx, account: str, ip: str, now: float, new: bool = True) -> None:
        """A success from ``ip``: the pair's time is now. A pair familiar at reserve (not
        ``new``) is rewritten only when its time is ``familiar_refresh`` old (as
        ``_attempt_locked``, which does not call this then, and ``FailureBudget``)."""
        # familiar at reserve: its time moves only when old enough, the account's count does not
        old_enough = "" if new else " WHERE :now - familiar_ips.at >= :refresh"
        self._sql(
            c,
            (
                "INSERT INTO familiar_ips (account, ip, at) VALUES (:a, :ip, :now) "
                "ON CONFLICT (account, ip) DO UPDATE SET at = :now" + old_enough
            ),
            {"a": account, "ip": ip, "now": now, "refresh": self.config.familiar_refresh},
        )
        if not new:
            return
        self._sql(
            c,
            (
                "DELETE FROM familiar_ips WHERE account = :a AND ip NOT IN "
                "(SELECT ip FROM familiar_ips WHERE account = :a ORDER BY at DESC LIMIT :n)"
            ),
            {"a": account, "n": self.config.max_familiar_per_user},
        )

    # --- housekeeping -------------------------------------------------------------------
    def _maybe_prune(self, now: float) -> None:
        with self._lock:
            self._count += 1
            due = self._count % PRUNE_EVERY == 0
        if due:
            self.prune(now)

    def prune(self, now: float) -> int:
        """Delete buckets that have drained to zero and familiar IPs past ``familiar_for``."""
        with self._tx(write=True) as c:
            # a bucket's level never exceeds its limit by more than the after-the-fact charges,
            # so one that was last touched two windows ago is empty
            n = (
                self._sql(c, ("DELETE FROM budget_buckets WHERE at < :t"), {"t": now - 2 * self.config.window}).rowcount
                or 0
            )
            self._sql(c, ("DELETE FROM familiar_ips WHERE at < :t"), {"t": now - self.config.familiar_for})
        return n

    def close(self) -> None:
        with self._now_lock:
            if self._now_raw is not None:
                self._now_raw.close()
                self._now_raw = None
        while self._idle:
            self._idle.pop().close()  # back to the pool, disposed with it below
        if getattr(self, "_own_engine", False):
            self.engine.dispose()

    def sizes(self) -> dict[str, int]:
        with self._tx(write=False) as c:
            buckets = int(self._sql(c, "SELECT count(*) FROM budget_buckets", {}).scalar_one())
            familiar = int(self._sql(c, "SELECT count(*) FROM familiar_ips", {}).scalar_one())
        return {"buckets": buckets, "familiar": familiar}
