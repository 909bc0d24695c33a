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

State is per process (not shared between the gateways of a pool, not kept across restarts):
each gateway enforces the budget on its own, so a pool of N allows up to N times the rate.
The budget does not touch Active Directory: failures here never reach AD's lockout counter.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from dataclasses import dataclass
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
    max_entries: int = 100_000  # per table (users, IPs, familiar sets)

    def __post_init__(self) -> None:
        for name in ("user_failures", "ip_failures", "max_familiar_per_user", "max_entries"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.window <= 0 or self.familiar_for < 0:
            raise ValueError("window must be > 0 and familiar_for >= 0")


@dataclass(frozen=True, slots=True)
class BudgetDecision:
    allowed: bool
    reason: str | None = None  # "user-throttled" | "ip-throttled"
    retry_after: float = 0.0  # seconds; > 0 exactly when not allowed


ALLOWED = BudgetDecision(True)


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
        return max(0.0, self.level - max(0.0, now - self.at) * rate)


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
        excess = bucket.level_at(now, rate) + 1.0 - limit
        return excess / rate + 1e-6 if excess > 1e-9 else 0.0

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
    def _add(self, table: _Lru, key, rate: float, now: float) -> None:
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
        self._users.pop((user, self.familiar(user, ip, now)))
        seen = dict(self._familiar.get(user) or {})
        seen[ip] = now
        if len(seen) > self.config.max_familiar_per_user:
            for old in sorted(seen, key=seen.__getitem__)[: len(seen) - self.config.max_familiar_per_user]:
                del seen[old]
        self._familiar.put(user, seen)

    def sizes(self) -> dict[str, int]:
        """How many entries each table holds (for metrics and the memory-bound tests)."""
        return {"users": len(self._users), "ips": len(self._ips), "familiar": len(self._familiar)}
