"""Liveness and readiness, for a balancer's checks (HAProxy ``option httpchk GET /readyz``).

Every process answers two paths, without a secret and without touching anything slow:

* ``GET /healthz`` — alive: 200 ``{"status": "ok"}`` while the process serves requests;
* ``GET /readyz`` — ready: 200 ``{"status": "ready"}``, or 503 ``{"status": "not-ready",
  "reason": ...}`` while a dependency it cannot work without is unreachable (the store; on a
  gateway with ``[id_service] url``, every id service). A balancer takes a node that is not
  ready out of the pool and puts it back when it is.

A readiness check is an async callable returning ``(ok, reason)``. :class:`StoreProbe` is the
store's: ``SELECT 1`` off the event loop, bounded, cached. :func:`health_routes` serves both
paths in a Starlette app (the id service, the web listener); the gateway has its own small
listener (``gateway/health.py``).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

Readiness = Callable[[], Awaitable[tuple[bool, str]]]

# A balancer checks every 1-2 s (HAProxy's default inter is 2 s); a probe's answer is reused
# for this long, so several balancers (or a check storm) cost the store one query per second.
PROBE_TTL = 1.0
# HAProxy's default check timeout is its "timeout connect" (often 5 s); answer well before.
PROBE_TIMEOUT = 2.0


async def always_ready() -> tuple[bool, str]:
    return True, "ok"


def readiness_answer(ok: bool, reason: str) -> tuple[int, dict[str, str]]:
    """The status code and JSON body of ``/readyz``."""
    if ok:
        return 200, {"status": "ready"}
    return 503, {"status": "not-ready", "reason": reason}


async def check(readiness: Readiness, timeout: float = PROBE_TIMEOUT) -> tuple[bool, str]:
    """Run ``readiness``, bounded by ``timeout``; a check that fails is a reason, not a 500."""
    try:
        async with asyncio.timeout(timeout):
            return await readiness()
    except TimeoutError:
        return False, f"readiness check: no answer within {timeout:g}s"
    except Exception as e:  # noqa: BLE001 - a broken check means not ready, with its name
        return False, f"readiness check failed ({type(e).__name__})"


class StoreProbe:
    """Readiness of the store behind ``engine`` (a SQLAlchemy engine): ``SELECT 1`` in a worker
    thread, answered within ``timeout``, the result cached for ``ttl`` seconds. At most one
    query is in flight: a hung database does not pile up threads (a check that comes while one
    is still running waits for it, up to its own timeout). The reason names the exception's
    type only (its message may hold the database URL)."""

    def __init__(
        self,
        engine: Any,
        *,
        timeout: float = PROBE_TIMEOUT,
        ttl: float = PROBE_TTL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self.timeout = timeout
        self.ttl = ttl
        self.clock = clock
        self._answer: tuple[bool, str] = (False, "store: not checked yet")
        self._at = -math.inf
        self._running: asyncio.Future[tuple[bool, str]] | None = None

    def _ping(self) -> tuple[bool, str]:
        from sqlalchemy import text

        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception as e:  # noqa: BLE001 - any failure means the store is unreachable
            return False, f"store unreachable ({type(e).__name__})"
        return True, "ok"

    async def __call__(self) -> tuple[bool, str]:
        if self.clock() - self._at < self.ttl:
            return self._answer
        if self._running is None or self._running.done():
            self._running = asyncio.ensure_future(asyncio.to_thread(self._ping))
        try:
            answer = await asyncio.wait_for(asyncio.shield(self._running), self.timeout)
        except TimeoutError:
            answer = (False, f"store: no answer within {self.timeout:g}s")
        self._answer, self._at = answer, self.clock()
        return answer


def health_routes(readiness: Readiness | None = None) -> list:
    """``/healthz`` and ``/readyz`` as Starlette routes (no secret needed)."""
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    ready = readiness or always_ready

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"}, headers={"Cache-Control": "no-store"})

    async def readyz(request: Request) -> Response:
        status, body = readiness_answer(*await check(ready))
        return JSONResponse(body, status_code=status, headers={"Cache-Control": "no-store"})

    return [Route("/healthz", healthz, methods=["GET", "HEAD"]), Route("/readyz", readyz, methods=["GET", "HEAD"])]
