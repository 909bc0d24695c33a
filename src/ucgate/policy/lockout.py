"""The failure budget: slow down password guessing without letting anyone lock users out.

Pure: no clock, no I/O; the caller passes ``now`` (seconds, any monotonic origin) to every call.

The model (a "smart lockout", like Entra ID's and AD FS's extranet smart lockout):

- **Leaky buckets.** Each counter holds a failure level that drains linearly, ``limit`` failures
  per ``window`` seconds. A failure adds 1. While the level is at or above ``limit`` the key is
  throttled, for ``retry_after`` = the time until the level falls below ``limit`` again. So a
  guesser gets at most ``limit`` guesses at once, then one every ``window / limit`` seconds
  (defaults: 5, then one per 3 minutes: 480 a day per user against 2^80 ASPs).
- **Per user and per client IP.** ``user_failures`` per user per window; ``ip_failures`` per IP
  per window (an IPv6 client counts by its /64, which one host usually owns whole).
- **Familiar IPs.** An IP from which the user signed in successfully in the last
  ``familiar_for`` seconds is *familiar* for that user. A user's failures are counted in two
  buckets, one for attempts from familiar IPs and one for all other IPs, so an attacker failing
  from elsewhere fills only the "unfamiliar" bucket and the real user, at a familiar IP, is
  still let in. A familiar (user, IP) pair is also exempt from that IP's bucket, so a password
  sprayer behind the user's own NAT does not lock the user out either. The real user mistyping
  at a familiar IP still fills the familiar bucket (so a stolen laptop cannot guess freely).
- A success resets the bucket the attempt was counted in and makes the IP familiar.
- **Bounded memory.** Each table holds at most ``max_entries`` keys; the least recently
  touched are evicted first. An attacker spraying random names from many IPs can thus reset
  old counters, but cannot grow memory; each IP's own bucket still limits its spraying.

- **Reserve, then settle.** A sign-in *reserves* one failure (``reserve``) before any check
  that could reach Active Directory, and settles it afterwards (``settle``): a success gives the
  reservation back (and resets the bucket), a failure keeps it, an outcome that says nothing
  about the password (the directory was down) gives it back. So N concurrent attempts can never
  let more than the budget through: each one holds its unit while it runs.
- **Keyed by the account**, not the name as typed: the caller passes the resolved account
  (objectGUID for a directory user, the local user id), so ``sq11``, ``sip:sq11@...``, the UPN
  and ``LAB\\sq11`` share one budget; names that resolve to nothing are keyed by their
  normalised form.

:class:`FailureBudget` keeps the state in memory (one process; tests and tools). A pool uses
``ucgate.store.budget.StoreBudget``, the same model with the state in the store, one atomic
statement per charge, shared by every process and kept across restarts.
The budget does not touch Active Directory: failures here never reach AD's lockout counter.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from dataclasses import dataclass
from enum import StrEnum
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


@dataclass(frozen=True)
class BudgetConfig:
    user_failures: int = 5  # per user (per familiar/unfamiliar class) per window
    ip_failures: int = 20  # per client IP (IPv6: per /64) per window
    window: float = 900.0  # seconds (15 minutes)
    familiar_for: float = 30 * 86400.0  # a successful sign-in makes an IP familiar this long
    max_familiar_per_user: int = 8  # the user's most recent IPs
    # a success from a familiar IP rewrites the pair's time only when it is at least this old
    # (seconds): the steady state — a device signing in again and again from where it always
    # does — writes nothing to the store; familiarity may end up to this much earlier
    familiar_refresh: float = 60.0
    max_entries: int = 100_000  # per table (users, IPs, familiar sets)

    def __post_init__(self) -> None:
        for name in ("user_failures", "ip_failures", "max_familiar_per_user", "max_entries"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.window <= 0 or self.familiar_for < 0:
            raise ValueError("window must be > 0 and familiar_for >= 0")
        if self.familiar_refresh < 0:
            raise ValueError("familiar_refresh must be >= 0")


@dataclass(frozen=True, slots=True)
class BudgetDecision:
    allowed: bool
    reason: str | None = None  # "user-throttled" | "ip-throttled"
    retry_after: float = 0.0  # seconds; > 0 exactly when not allowed


ALLOWED = BudgetDecision(True)


class Outcome(StrEnum):
    """How a reserved attempt ended."""

    SUCCESS = "success"  # the credential was right: give the unit back, reset, make the IP familiar
    FAILURE = "failure"  # a guess that failed: the unit stays charged
    NOT_A_GUESS = "not-a-guess"  # nothing was learnt about the password (a dependency was down)


@dataclass(frozen=True, slots=True)
class Reservation:
    """One failure held for an attempt in progress (see :meth:`FailureBudget.reserve`)."""

    account: str  # the budget key of the account
    ip: str
    familiar: bool  # which of the account's two buckets holds the unit
    charged_ip: bool  # whether the IP's bucket holds one too (not for a familiar pair)


def drained(level: float, at: float, now: float, rate: float) -> float:
    """A leaky bucket's level at ``now``: ``level`` at time ``at``, draining ``rate`` per second."""
    return max(0.0, level - max(0.0, now - at) * rate)


def wait_for(level_now: float, limit: int, rate: float) -> float:
    """Seconds until one more failure fits under ``limit`` (0: it fits now)."""
    excess = level_now + 1.0 - limit
    return excess / rate + 1e-6 if excess > 1e-9 else 0.0


def user_bucket(account: str, familiar: bool) -> str:
    """The store's name of an account's bucket (familiar or unfamiliar class)."""
    return f"u{int(familiar)}:{account}"


def ip_bucket(ip: str) -> str:
    """The store's name of an IP's bucket (IPv6: its /64)."""
    return f"ip:{ip_key(ip)}"


class _Lru(Generic[K, V]):
    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.d: OrderedDict[K, V] = OrderedDict()

    def get(self, k: K) -> V | None:
        return self.d.get(k)

    def put(self, k: K, v: V) -> None:
        self.d[k] = v
        self.d.move_to_end(k)
        while len(self.d) > self.cap:
            self.d.popitem(last=False)

    def pop(self, k: K) -> None:
        self.d.pop(k, None)

    def __len__(self) -> int:
        return len(self.d)


@dataclass(slots=True)
class _Bucket:
    level: float
    at: float

    def level_at(self, now: float, rate: float) -> float:
        return drained(self.level, self.at, now, rate)


def ip_key(ip: str) -> str:
    """The unit an IP budget counts: the address, or its /64 for IPv6."""
    try:
        a = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if isinstance(a, ipaddress.IPv6Address):
        if a.ipv4_mapped:
            return str(a.ipv4_mapped)
        return str(ipaddress.IPv6Network((a, 64), strict=False))
    return str(a)


class FailureBudget:
    def __init__(self, config: BudgetConfig | None = None) -> None:
        self.config = c = config or BudgetConfig()
        self._user_rate = c.user_failures / c.window
        self._ip_rate = c.ip_failures / c.window
        self._users: _Lru[tuple[str, bool], _Bucket] = _Lru(c.max_entries)
        self._ips: _Lru[str, _Bucket] = _Lru(c.max_entries)
        self._familiar: _Lru[str, dict[str, float]] = _Lru(c.max_entries)

    # --- queries ----------------------------------------------------------------------
    def familiar(self, user: str, ip: str, now: float) -> bool:
        seen = self._familiar.get(user)
        at = seen.get(ip) if seen else None
        return at is not None and now - at <= self.config.familiar_for

    def _wait(self, bucket: _Bucket | None, limit: int, rate: float, now: float) -> float:
        if bucket is None:
            return 0.0
        # allowed while one more failure fits: level + 1 <= limit
        return wait_for(bucket.level_at(now, rate), limit, rate)

    def check(self, user: str, ip: str, now: float) -> BudgetDecision:
        """May ``user`` try a password from ``ip`` now?"""
        c = self.config
        fam = self.familiar(user, ip, now)
        wait = self._wait(self._users.get((user, fam)), c.user_failures, self._user_rate, now)
        if wait > 0:
            return BudgetDecision(False, "user-throttled", wait)
        if not fam:
            wait = self._wait(self._ips.get(ip_key(ip)), c.ip_failures, self._ip_rate, now)
            if wait > 0:
                return BudgetDecision(False, "ip-throttled", wait)
        return ALLOWED

    # --- updates ----------------------------------------------------------------------
    def _add(self, table: _Lru[K, _Bucket], key: K, rate: float, now: float) -> None:
        b = table.get(key)
        level = b.level_at(now, rate) if b else 0.0
        table.put(key, _Bucket(level + 1.0, max(now, b.at) if b else now))

    def record_failure(self, user: str, ip: str, now: float) -> None:
        """A wrong password (or unknown user): count it against the user and the IP."""
        fam = self.familiar(user, ip, now)
        self._add(self._users, (user, fam), self._user_rate, now)
        if not fam:
            self._add(self._ips, ip_key(ip), self._ip_rate, now)

    def record_success(self, user: str, ip: str, now: float) -> None:
        """A correct password: forgive the user's failures of this class, remember the IP."""
        fam = self.familiar(user, ip, now)
        self._users.pop((user, fam))
        if not fam or not self._fresh(user, ip, now):
            self._remember(user, ip, now)

    # --- reserve / settle (what the id service uses) -------------------------------------
    def reserve(self, account: str, ip: str, now: float) -> Reservation | BudgetDecision:
        """Charge one failure to ``account`` (and ``ip``, unless the pair is familiar) before
        the credential is checked; a refusal (a :class:`BudgetDecision`) when it does not fit."""
        d = self.check(account, ip, now)
        if not d.allowed:
            return d
        fam = self.familiar(account, ip, now)
        self.record_failure(account, ip, now)
        return Reservation(account, ip, fam, not fam)

    def charge(self, account: str, ip: str, now: float) -> None:
        """A failure found after the fact: charged unconditionally."""
        self.record_failure(account, ip, now)

    def _refund(self, table: _Lru[K, _Bucket], key: K, rate: float, now: float) -> None:
        b = table.get(key)
        if b is not None:
            table.put(key, _Bucket(max(0.0, b.level_at(now, rate) - 1.0), max(now, b.at)))

    def settle(self, r: Reservation, outcome: Outcome, now: float) -> None:
        """End a reserved attempt (see :class:`Outcome`)."""
        if outcome is Outcome.FAILURE:
            return
        if r.charged_ip:
            self._refund(self._ips, ip_key(r.ip), self._ip_rate, now)
        if outcome is Outcome.SUCCESS:
            self._users.pop((r.account, r.familiar))
            if not r.familiar or not self._fresh(r.account, r.ip, now):
                self._remember(r.account, r.ip, now)
        else:
            self._refund(self._users, (r.account, r.familiar), self._user_rate, now)

    def _fresh(self, user: str, ip: str, now: float) -> bool:
        """The pair's time needs no rewrite (``familiar_refresh``)."""
        seen = self._familiar.get(user)
        at = seen.get(ip) if seen else None
        return at is not None and now - at < self.config.familiar_refresh

    def _remember(self, user: str, ip: str, now: float) -> None:
        seen = dict(self._familiar.get(user) or {})
        seen[ip] = now
        if len(seen) > self.config.max_familiar_per_user:
            for old in sorted(seen, key=seen.__getitem__)[: len(seen) - self.config.max_familiar_per_user]:
                del seen[old]
        self._familiar.put(user, seen)

    def sizes(self) -> dict[str, int]:
        """How many entries each table holds (for metrics and the memory-bound tests)."""
        return {"users": len(self._users), "ips": len(self._ips), "familiar": len(self._familiar)}
