"""Keep-alive connections to the front ends: a pool per upstream, one connection object each.

Shaped like httpcore: the pool hands out connections and takes them back (``async with
pool.connection() as up:``, returned on exit, or closed on an exception or when the connection
may not be reused: the response was not keep-alive, its body not read); a connection knows
whether it may be reused; idle connections are kept up to a limit and for at most
``keepalive_expiry`` seconds (a sweep every half of it: no clock read per request); every wait
has an explicit timeout. A pool also holds the
per-user pools of its upstream (``for_user``: front ends that authenticate the connection,
NTLM), and ``close`` closes them all (``Gateway.stop``).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections import OrderedDict, deque
from collections.abc import Callable

from ..config import Timeouts, Upstream
from ..errors import UcgateError
from .stream import Stream
from .tls import upstream_context

log = logging.getLogger("ucgate.gateway.upstream")

# Longest upstream response head line we accept, and the read buffer's pause threshold (x2).
_READ_LIMIT = 1 << 17
# An idle connection unused this long is closed rather than reused: front ends close idle
# keep-alive connections themselves (nginx after 75 s, IIS after 120 s), and a request with a
# body cannot be retried on a connection found dead.
KEEPALIVE_EXPIRY = 60.0
# Per-user pools (BackendAuth.pool_key: front ends that authenticate the connection, NTLM): at
# most this many per upstream (least recently used closed first), each keeping at most
# USER_POOL_IDLE_CONNECTIONS idle connections, and a pool unused this long is closed.
USER_POOLS_MAX = 1024
USER_POOL_IDLE_CONNECTIONS = 2
USER_POOL_IDLE_SECONDS = 300.0


class UpstreamError(UcgateError):
    """The upstream could not be reached or broke the exchange. ``reason`` goes to the log."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason, detail)


class UpstreamConnection:
    """One TCP/TLS connection to an upstream."""

    __slots__ = ("stream", "reusable", "requests", "reused", "stale")

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self.reusable = True
        self.requests = 0
        self.reused = False  # handed out by ``acquire`` from the idle ones (may have been closed since)
        self.stale = False  # idle when the pool last swept its idle connections

    def is_idle_usable(self) -> bool:
        # An idle connection the upstream closed shows EOF (or buffered bytes, which would be
        # a protocol error on an idle keep-alive connection): don't use it.
        s = self.stream
        return self.reusable and not s.is_closing() and not s.at_eof() and not s.buffered

    def close(self) -> None:
        self.reusable = False
        self.stream.close()


class UpstreamPool:
    """Idle keep-alive connections to one upstream (LIFO, so warm connections are reused), at
    most ``limit`` of them, each for at most ``keepalive_expiry`` seconds."""

    def __init__(
        self,
        upstream: Upstream,
        timeouts: Timeouts,
        *,
        limit: int,
        keepalive_expiry: float = KEEPALIVE_EXPIRY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.upstream = upstream
        self.timeouts = timeouts
        self.limit = limit
        self.keepalive_expiry = keepalive_expiry
        self.clock = clock  # for the per-user pools' idle time (tests pass theirs)
        self._idle: deque[UpstreamConnection] = deque()
        self._ssl: ssl.SSLContext | None = (
            upstream_context(upstream.verify, upstream.ca_bundle) if upstream.scheme == "https" else None
        )
        self.opened = 0
        # pool key -> (pool, last use): per-user connections, LRU-bounded (``for_user``)
        self.user_pools: OrderedDict[str, tuple[UpstreamPool, float]] = OrderedDict()
        self.closed = False
        self._sweeper: asyncio.TimerHandle | None = None  # the next keep-alive expiry sweep

    def connection(self, conn: UpstreamConnection | None = None) -> _Lease:
        """``async with pool.connection() as up:`` a connection (``up.reused``: from the idle
        ones), returned to the pool on exit, or closed on an exception or when it may not be
        reused. ``conn``: a connection already taken from this pool (the fast path's, handed
        to a task)."""
        return _Lease(self, conn)

    async def acquire(self) -> tuple[UpstreamConnection, bool]:
        """A connection and whether it was reused from the pool (a reused one may turn out
        to have been closed by the upstream; the caller may retry a safe request once)."""
        conn = self.take_idle()
        if conn is not None:
            conn.reused = True
            return conn, True
        return await self._connect(), False

    def take_idle(self) -> UpstreamConnection | None:
        """An idle usable connection without waiting, or None (``acquire`` would connect)."""
        idle = self._idle
        if not idle:
            return None
        while idle:
            conn = idle.pop()
            s = conn.stream  # is_idle_usable(), inlined (Stream's fields): this is on the fast path
            if conn.reusable and not s._eof and not s._buf and not s.is_closing():
                return conn
            conn.close()
        return None

    async def _connect(self) -> UpstreamConnection:
        if self.closed:
            raise UpstreamError("upstream-pool-closed", self.upstream.name)
        up = self.upstream
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.timeouts.upstream_connect):
                _, stream = await loop.create_connection(
                    lambda: Stream(loop, _READ_LIMIT),
                    up.host,
                    up.port,
                    ssl=self._ssl,
                    server_hostname=(up.server_name or up.host) if self._ssl else None,
                )
        except TimeoutError:
            raise UpstreamError("upstream-connect-timeout", f"{up.name} {up.host}:{up.port}") from None
        except ssl.SSLCertVerificationError as e:
            raise UpstreamError(
                "upstream-certificate-invalid", f"{up.name} {up.host}:{up.port}: {e.verify_message}"
            ) from None
        except (OSError, ssl.SSLError) as e:
            raise UpstreamError("upstream-connect-failed", f"{up.name} {up.host}:{up.port}: {e}") from None
        self.opened += 1
        return UpstreamConnection(stream)

    def release(self, conn: UpstreamConnection) -> None:
        """Give ``conn`` back: kept idle when it may be reused and there is room, else closed."""
        if conn.reusable and len(self._idle) < self.limit and not conn.stream.is_closing():
            conn.stale = False
            self._idle.append(conn)
            if self._sweeper is None:
                self._sweep_later()
        else:
            conn.close()

    def _sweep_later(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # given back outside a loop (tests): no expiry
            return
        self._sweeper = loop.call_later(self.keepalive_expiry / 2, self._sweep)

    def _sweep(self) -> None:
        """Keep-alive expiry without reading a clock per request: every half expiry, close the
        idle connections that were already idle at the previous sweep (so each is closed after
        between half and all of ``keepalive_expiry`` unused) and mark the others."""
        self._sweeper = None
        kept: deque[UpstreamConnection] = deque()
        for conn in self._idle:
            if conn.stale:
                conn.close()
            else:
                conn.stale = True
                kept.append(conn)
        self._idle = kept
        if kept and not self.closed:
            self._sweep_later()

    def for_user(self, key: str) -> UpstreamPool:
        """The per-user pool ``key`` of this upstream (LRU of USER_POOLS_MAX pools; pools idle
        for USER_POOL_IDLE_SECONDS are closed)."""
        now = self.clock()
        pools = self.user_pools
        while pools:  # oldest first: close the idle ones
            k, (p, last) = next(iter(pools.items()))
            if now - last < USER_POOL_IDLE_SECONDS and len(pools) < USER_POOLS_MAX:
                break
            pools.popitem(last=False)
            p.close()
        entry = pools.get(key)
        pool = (
            entry[0]
            if entry is not None
            else UpstreamPool(
                self.upstream, self.timeouts, limit=USER_POOL_IDLE_CONNECTIONS, keepalive_expiry=self.keepalive_expiry
            )
        )
        pools[key] = (pool, now)
        pools.move_to_end(key)
        return pool

    def close(self) -> None:
        """Close the idle connections and the per-user pools; connections handed out are
        closed when they come back."""
        self.closed = True
        self.limit = 0  # what comes back now is closed (``release``)
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        while self._idle:
            self._idle.pop().close()
        for pool, _ in self.user_pools.values():
            pool.close()
        self.user_pools.clear()


class _Lease:
    """``UpstreamPool.connection()``: the connection for one ``async with``."""

    __slots__ = ("pool", "conn")

    def __init__(self, pool: UpstreamPool, conn: UpstreamConnection | None) -> None:
        self.pool = pool
        self.conn = conn

    async def __aenter__(self) -> UpstreamConnection:
        if self.conn is None:
            self.conn, _ = await self.pool.acquire()
        return self.conn

    async def __aexit__(self, exc_type, exc, tb) -> None:
        conn = self.conn
        if conn is None:
            return
        if exc_type is not None:
            conn.close()
        else:
            self.pool.release(conn)
