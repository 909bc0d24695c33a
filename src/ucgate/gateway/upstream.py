"""Keep-alive connections to the front ends: a pool per upstream, one connection object each.

Shaped like httpcore: the pool hands out connections and takes them back; a connection knows
whether it may be reused; every wait has an explicit timeout.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections import deque

from ..config import Timeouts, Upstream
from .stream import Stream
from .tls import upstream_context

log = logging.getLogger("ucgate.gateway.upstream")

# Longest upstream response head line we accept, and the read buffer's pause threshold (x2).
_READ_LIMIT = 1 << 17


class UpstreamError(Exception):
    """The upstream could not be reached or broke the exchange. ``reason`` goes to the log."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class UpstreamConnection:
    """One TCP/TLS connection to an upstream."""

    __slots__ = ("stream", "reusable", "requests")

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self.reusable = True
        self.requests = 0

    def is_idle_usable(self) -> bool:
        # An idle connection the upstream closed shows EOF (or buffered bytes, which would be
        # a protocol error on an idle keep-alive connection): don't use it.
        s = self.stream
        return self.reusable and not s.is_closing() and not s.at_eof() and not s.buffered

    def close(self) -> None:
        self.reusable = False
        self.stream.close()


class UpstreamPool:
    """Idle keep-alive connections to one upstream (LIFO, so warm connections are reused)."""

    def __init__(self, upstream: Upstream, timeouts: Timeouts, *, limit: int) -> None:
        self.upstream = upstream
        self.timeouts = timeouts
        self.limit = limit
        self._idle: deque[UpstreamConnection] = deque()
        self._ssl: ssl.SSLContext | None = (
            upstream_context(upstream.verify, upstream.ca_bundle)
            if upstream.scheme == "https"
            else None
        )
        self.opened = 0

    async def acquire(self) -> tuple[UpstreamConnection, bool]:
        """A connection and whether it was reused from the pool (a reused one may turn out
        to have been closed by the upstream; the caller may retry a safe request once)."""
        while self._idle:
            conn = self._idle.pop()
            if conn.is_idle_usable():
                return conn, True
            conn.close()
        return await self._connect(), False

    def take_idle(self) -> UpstreamConnection | None:
        """An idle usable connection without waiting, or None (``acquire`` would connect)."""
        idle = self._idle
        while idle:
            conn = idle.pop()
            s = conn.stream  # is_idle_usable(), inlined: this is on the fast path
            if conn.reusable and not s._eof and not s._buf and not s.is_closing():
                return conn
            conn.close()
        return None

    async def _connect(self) -> UpstreamConnection:
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
        if conn.reusable and len(self._idle) < self.limit and not conn.stream.is_closing():
            self._idle.append(conn)
        else:
            conn.close()

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()
