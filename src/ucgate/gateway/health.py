"""The gateway's health listener (``[gateway] health_listen``): ``/healthz``, ``/readyz`` and
``/metrics`` (Prometheus, for the peers in ``[metrics] allow``; ``ucgate.metrics``).

A listener of its own, plain HTTP, not the gateway's: on the client listener every path is a
front-end path (or a 404), so a balancer's check can never be mistaken for one, nor a client's
request for a check; and the listener can be bound to an address only the balancers reach. One
request per connection (HAProxy's ``option httpchk`` closes after the answer), bounded by the
header_read timeout and a small head. The answers are ``ucgate.id.health``'s.

A scrape is rendered from memory on the loop (no I/O, a few milliseconds at most); writing it
to a scraper that does not read is bounded by the same timeout and only ever waits in this
connection's own task, so a hung scrape cannot slow the proxy.
"""

from __future__ import annotations

import asyncio
import json
import logging

from .. import metrics
from ..id.health import Readiness, always_ready, check, readiness_answer
from ..protocols import http1
from ..protocols.http1 import HttpError
from ..protocols.http1conn import NEED_DATA, SERVER, Connection, Request

log = logging.getLogger("ucgate.gateway.health")

# A check is one short GET: HAProxy sends "GET /readyz HTTP/1.0" and maybe a Host line.
MAX_HEAD_BYTES = 8 * 1024
READ_BYTES = 4096
_LIMITS = http1.Limits(max_header_bytes=MAX_HEAD_BYTES, max_header_count=32, max_target_bytes=1024)


class HealthListener:
    """``GET``/``HEAD`` ``/healthz`` (alive: 200) and ``/readyz`` (``readiness()``: 200 or 503
    with the reason) on ``host:port``, ``GET /metrics`` for peers in ``metrics_allow`` (403 for
    others; 404 when None: metrics off); anything else 404 or 405."""

    def __init__(
        self,
        host: str,
        port: int,
        readiness: Readiness | None = None,
        *,
        timeout: float = 10.0,
        metrics_allow: tuple | None = None,
    ) -> None:
        self.metrics_allow = metrics_allow
        self.host, self.requested_port = host, port
        self.readiness = readiness or always_ready
        self.timeout = timeout
        self._server: asyncio.Server | None = None
        self._was_ready: bool | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.requested_port, limit=MAX_HEAD_BYTES)
        log.info(
            "health checks on http://%s:%d (/healthz, /readyz%s)",
            self.host,
            self.port,
            ", /metrics" if self.metrics_allow is not None else "",
        )

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            conn = Connection(SERVER, _LIMITS)  # the request's head; its body is never read
            try:
                async with asyncio.timeout(self.timeout):
                    while (event := conn.next_event()) is NEED_DATA:
                        conn.receive_data(await reader.read(READ_BYTES))
            except (TimeoutError, ConnectionError):
                return
            except HttpError as e:
                if e.reason != "incomplete-head":  # not a peer that just went away
                    writer.write(_answer(400, {"status": "bad-request"}, head_only=False))
                return
            if not isinstance(event, Request):  # closed before a request
                return
            req = event.head
            path = req.target.split(b"?", 1)[0]
            head_only = req.method == b"HEAD"
            if path == b"/metrics" and self.metrics_allow is not None:
                writer.write(self._metrics(req, writer))
                async with asyncio.timeout(self.timeout):  # a scraper that does not read
                    await writer.drain()
                return
            if path not in (b"/healthz", b"/readyz"):
                status, body = 404, {"status": "not-found"}
            elif req.method not in (b"GET", b"HEAD"):
                status, body = 405, {"status": "method-not-allowed"}
            elif path == b"/healthz":
                status, body = 200, {"status": "ok"}
            else:
                ok, reason = await check(self.readiness)
                status, body = readiness_answer(ok, reason)
                if ok != self._was_ready:  # a log line per change, not per check
                    (log.info if ok else log.warning)("readiness: %s", "ready" if ok else f"not ready: {reason}")
                    self._was_ready = ok
            writer.write(_answer(status, body, head_only=head_only))
            await writer.drain()
        except (ConnectionError, TimeoutError):
            pass
        finally:
            writer.close()

    def _metrics(self, req: http1.RequestHead, writer: asyncio.StreamWriter) -> bytes:
        peer = writer.get_extra_info("peername") or ("", 0)
        if req.method not in (b"GET", b"HEAD"):
            return _answer(405, {"status": "method-not-allowed"}, head_only=False)
        if not metrics.allowed_scraper(peer[0], self.metrics_allow or ()):
            log.warning("refused /metrics to %s: not in [metrics] allow", peer[0])
            return _answer(403, {"status": "forbidden"}, head_only=req.method == b"HEAD")
        data = metrics.render()
        head = http1.serialize_head(
            b"HTTP/1.1 200 OK",
            [
                (b"Content-Type", metrics.CONTENT_TYPE_LATEST.encode()),
                (b"Content-Length", b"%d" % len(data)),
                (b"Cache-Control", b"no-store"),
                (b"Connection", b"close"),
            ],
        )
        return head if req.method == b"HEAD" else head + data


def _answer(status: int, body: dict[str, str], *, head_only: bool) -> bytes:
    data = json.dumps(body).encode()
    head = http1.serialize_head(
        b"HTTP/1.1 %d %b" % (status, http1.REASONS.get(status, b"")),
        [
            (b"Content-Type", b"application/json"),
            (b"Content-Length", b"%d" % len(data)),
            (b"Cache-Control", b"no-store"),
            (b"Connection", b"close"),
        ],
    )
    return head if head_only else head + data
