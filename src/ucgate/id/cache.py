"""What a sign-in reads, kept between sign-ins: a user's record and usable ASPs (ciphertexts).

Filled on first use, dropped by every event about the user (``ucgate.id.events``: a disable,
an ASP revoke, an OTP reset, a device block — from this process at once, from the others
within the follower's propagation, p99 ~60 ms in ``bench/pool.py``), by this process's own
changes that write no event (an ASP created), and after ``ttl`` seconds whatever happens. A
wrong password checked against a cached entry is checked again against the store before it
is refused, so an ASP created in another process (which writes no event) is never refused
for the cache's sake — refusals cost one read, successes none. Decrypted secrets are never
cached.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from ..store import AspRecord, UserRecord

TTL = 30.0  # seconds; events drop entries at once, this bounds anything missed
MAX_ENTRIES = 10_000


class SignInCache:
    def __init__(
        self, *, ttl: float = TTL, max_entries: int = MAX_ENTRIES, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl, self.max_entries, self.clock = ttl, max_entries, clock
        self._d: OrderedDict[str, tuple[float, UserRecord, list[AspRecord]]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, username: str) -> tuple[UserRecord, list[AspRecord]] | None:
        key = username.lower()
        with self._lock:
            got = self._d.get(key)
            if got is None or self.clock() - got[0] > self.ttl:
                self._d.pop(key, None)
                self.misses += 1
                return None
            self.hits += 1
            return got[1], got[2]

    def peek_user(self, username: str) -> UserRecord | None:
        """The cached user record, or None (absent or past ``ttl``); counts no hit or miss (the
        sign-in's resolve step: the ASP check that follows counts the sign-in's lookup)."""
        with self._lock:
            got = self._d.get(username.lower())
        if got is None or self.clock() - got[0] > self.ttl:
            return None
        return got[1]

    def put(self, username: str, user: UserRecord, asps: list[AspRecord]) -> None:
        with self._lock:
            self._d[username.lower()] = (self.clock(), user, list(asps))
            self._d.move_to_end(username.lower())
            while len(self._d) > self.max_entries:
                self._d.popitem(last=False)

    def drop(self, username: str) -> None:
        with self._lock:
            self._d.pop(username.lower(), None)

    def clear(self) -> None:
        with self._lock:
            self._d.clear()

    def on_row(self, row: Any) -> None:
        """An outbox row (any kind, known or not): forget that user (``*``: everyone)."""
        if row.username == "*":
            self.clear()
        else:
            self.drop(row.username)
