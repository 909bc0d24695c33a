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

import re
import threading
from typing import Any

from sqlalchemy import Connection, event

from ..policy.lockout import (
    BudgetConfig,
    BudgetDecision,
    Outcome,
    Reservation,
    drained,
    ip_bucket,
    user_bucket,
    wait_for,
)
from .engine import WRITE, Transactions, make_engine, sqlite_path

# Reservations between two prunes of drained rows.
PRUNE_EVERY = 1000


def _normal_sync(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA synchronous = NORMAL")
    cur.close()


def _greatest(conn: Connection) -> str:
    return "GREATEST" if conn.dialect.name == "postgresql" else "MAX"


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
        self._statements: dict[str, str] = {}
        self.config = config
        self._user_rate = config.user_failures / config.window
        self._ip_rate = config.ip_failures / config.window
        self._count = 0
        self._lock = threading.Lock()

    # --- statements ---------------------------------------------------------------------
    def _sql(self, c: Connection, sql: str, params: dict[str, Any]) -> Any:
        """Run ``sql`` (``:name`` parameters) straight on the driver: the budget's few statements
        run on every sign-in, and SQLAlchemy's per-statement compilation is most of their cost."""
        drv = self._statements.get(sql)
        if drv is None:
            drv = sql if c.dialect.name == "sqlite" else re.sub(r":(\w+)", r"%(\1)s", sql)
            self._statements[sql] = drv
        return c.exec_driver_sql(drv, params)

    @staticmethod
    def _level(c: Connection, table: str = "budget_buckets.") -> str:
        """SQL for a bucket's drained level at ``:now`` (``policy.lockout.drained``)."""
        g = _greatest(c)
        return f"{g}(0.0, {table}level - {g}(0.0, :now - {table}at) * :rate)"

    def _charge(self, c: Connection, bucket: str, limit: float, rate: float, now: float) -> bool:
        """Add one unit to ``bucket`` if it fits under ``limit``; whether it did."""
        g, level = _greatest(c), self._level(c)
        row = self._sql(c, (
            "INSERT INTO budget_buckets (bucket, level, at) VALUES (:bucket, 1.0, :now) "
            f"ON CONFLICT (bucket) DO UPDATE SET level = {level} + 1.0, at = {g}(:now, budget_buckets.at) "
            f"WHERE {level} + 1.0 <= :limit + 1e-9 RETURNING level"
        ), {"bucket": bucket, "now": now, "rate": rate, "limit": float(limit)}).first()
        return row is not None

    def _add(self, c: Connection, bucket: str, delta: float, rate: float, now: float) -> None:
        """Add ``delta`` to a bucket unconditionally (a refund when negative), never below 0."""
        g = _greatest(c)
        if delta > 0:
            self._sql(c, (
                "INSERT INTO budget_buckets (bucket, level, at) VALUES (:bucket, :delta, :now) "
                f"ON CONFLICT (bucket) DO UPDATE SET level = {self._level(c)} + :delta, "
                f"at = {g}(:now, budget_buckets.at)"
            ), {"bucket": bucket, "now": now, "rate": rate, "delta": delta})
        else:
            self._sql(c, (
                f"UPDATE budget_buckets SET level = {g}(0.0, {self._level(c, '')} + :delta), "
                f"at = {g}(:now, at) WHERE bucket = :bucket"
            ), {"bucket": bucket, "now": now, "rate": rate, "delta": delta})

    def _relaxed(self, c: Connection) -> None:
        """Budget rows are not worth a disk flush per attempt: on PostgreSQL the commit returns
        before its WAL record is flushed (``synchronous_commit = off``, this transaction only;
        a crash of the server loses at most the last ~0.2 s of charges, never consistency).
        SQLite's durability is per connection and stays ``FULL``."""
        if c.dialect.name == "postgresql":
            self._sql(c, "SET LOCAL synchronous_commit = off", {})

    def _wait(self, c: Connection, bucket: str, limit: int, rate: float, now: float) -> float:
        row = self._sql(c, ("SELECT level, at FROM budget_buckets WHERE bucket = :b"),
                        {"b": bucket}).first()
        if row is None:
            return 0.0
        return wait_for(drained(float(row[0]), float(row[1]), now, rate), limit, rate)

    def _familiar(self, c: Connection, account: str, ip: str, now: float) -> bool:
        row = self._sql(c, ("SELECT at FROM familiar_ips WHERE account = :a AND ip = :ip"),
                        {"a": account, "ip": ip}).first()
        return row is not None and now - float(row[0]) <= self.config.familiar_for

    # --- the interface ------------------------------------------------------------------
    def familiar(self, account: str, ip: str, now: float) -> bool:
        with self._read() as c:
            return self._familiar(c, account, ip, now)

    def check(self, account: str, ip: str, now: float) -> BudgetDecision:
        """Would an attempt fit now? (Read only; :meth:`reserve` is what counts.)"""
        cfg = self.config
        with self._read() as c:
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
        cfg = self.config
        self._maybe_prune(now)
        with self.engine.connect().execution_options(**{WRITE: True}) as c:
            tx = c.begin()
            try:
                self._relaxed(c)
                fam = self._familiar(c, account, ip, now)
                ub = user_bucket(account, fam)
                if not self._charge(c, ub, cfg.user_failures, self._user_rate, now):
                    wait = self._wait(c, ub, cfg.user_failures, self._user_rate, now)
                    tx.rollback()
                    return BudgetDecision(False, "user-throttled", max(wait, 1e-6))
                if not fam and not self._charge(c, ip_bucket(ip), cfg.ip_failures, self._ip_rate, now):
                    wait = self._wait(c, ip_bucket(ip), cfg.ip_failures, self._ip_rate, now)
                    tx.rollback()
                    return BudgetDecision(False, "ip-throttled", max(wait, 1e-6))
                tx.commit()
            except BaseException:
                if tx.is_active:
                    tx.rollback()
                raise
        return Reservation(account, ip, fam, not fam)

    def settle(self, r: Reservation, outcome: Outcome, now: float) -> None:
        """End a reserved attempt: a success resets the account's bucket of that class, gives
        the IP its unit back and makes the IP familiar; a failure keeps the units; an outcome
        that says nothing about the password gives both back."""
        if outcome is Outcome.FAILURE:
            return
        with self._write() as c:
            self._relaxed(c)
            if r.charged_ip:
                self._add(c, ip_bucket(r.ip), -1.0, self._ip_rate, now)
            ub = user_bucket(r.account, r.familiar)
            if outcome is Outcome.SUCCESS:
                self._sql(c, ("DELETE FROM budget_buckets WHERE bucket = :b"), {"b": ub})
                self._remember(c, r.account, r.ip, now)
            else:
                self._add(c, ub, -1.0, self._user_rate, now)

    def charge(self, account: str, ip: str, now: float) -> None:
        """A failure found after the fact (the gateway refused what the id service allowed):
        charged unconditionally."""
        with self._write() as c:
            fam = self._familiar(c, account, ip, now)
            self._add(c, user_bucket(account, fam), 1.0, self._user_rate, now)
            if not fam:
                self._add(c, ip_bucket(ip), 1.0, self._ip_rate, now)

    def _remember(self, c: Connection, account: str, ip: str, now: float) -> None:
        self._sql(c, (
            "INSERT INTO familiar_ips (account, ip, at) VALUES (:a, :ip, :now) "
            "ON CONFLICT (account, ip) DO UPDATE SET at = :now"
        ), {"a": account, "ip": ip, "now": now})
        self._sql(c, (
            "DELETE FROM familiar_ips WHERE account = :a AND ip NOT IN "
            "(SELECT ip FROM familiar_ips WHERE account = :a ORDER BY at DESC LIMIT :n)"
        ), {"a": account, "n": self.config.max_familiar_per_user})

    # --- housekeeping -------------------------------------------------------------------
    def _maybe_prune(self, now: float) -> None:
        with self._lock:
            self._count += 1
            due = self._count % PRUNE_EVERY == 0
        if due:
            self.prune(now)

    def prune(self, now: float) -> int:
        """Delete buckets that have drained to zero and familiar IPs past ``familiar_for``."""
        with self._write() as c:
            # a bucket's level never exceeds its limit by more than the after-the-fact charges,
            # so one that was last touched two windows ago is empty
            n = self._sql(c, ("DELETE FROM budget_buckets WHERE at < :t"),
                          {"t": now - 2 * self.config.window}).rowcount or 0
            self._sql(c, ("DELETE FROM familiar_ips WHERE at < :t"),
                      {"t": now - self.config.familiar_for})
        return n

    def close(self) -> None:
        if getattr(self, "_own_engine", False):
            self.engine.dispose()

    def sizes(self) -> dict[str, int]:
        with self._read() as c:
            buckets = int(self._sql(c, "SELECT count(*) FROM budget_buckets", {}).scalar_one())
            familiar = int(self._sql(c, "SELECT count(*) FROM familiar_ips", {}).scalar_one())
        return {"buckets": buckets, "familiar": familiar}
