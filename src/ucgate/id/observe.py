"""Request ids, request metrics and ``GET /metrics`` for the Starlette apps: the id service's
API (with the admin UI, portal and REST API mounted on it) and the web listener.

* every request gets a request id (``ucgate.logs``): this task's log lines carry it, and the
  answer has it in ``X-Ucgate-Request-Id``. On the id service's API (``/v1/``), a gateway's
  own id (16 hex digits, what ``RemoteCredentials`` sends) is kept, so one id follows a sign-in
  from the gateway's log into the id service's; anything else in that field is ignored;
* ``ucgate_requests_total{service, code}``, ``service`` being the part of the app
  (``ucgate.metrics.APP_PARTS``: id-api, rest-api, admin, portal, static, health, metrics, other);
* ``GET /metrics`` answers the peers in ``[metrics] allow`` (loopback by default), 403 others.
  The address, not a secret: Prometheus would otherwise hold the id service's shared secret,
  which lets its holder check passwords.
"""

from __future__ import annotations

import re
from typing import Any

from .. import metrics
from ..logs import begin_request, new_request_id

_RID = re.compile(rb"[0-9a-f]{16}")


class RequestObserver:
    """ASGI middleware: request id and context, and the request count by part and status."""

    def __init__(self, app: Any, *, trust_request_ids: bool = False) -> None:
        self.app = app
        self.trust_request_ids = trust_request_ids

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        part = metrics.app_part(path)
        rid = None
        if self.trust_request_ids and part == "id-api":
            for k, v in scope.get("headers", ()):
                if k == b"x-ucgate-request-id" and _RID.fullmatch(v):
                    rid = v
                    break
        rid = rid or new_request_id()
        client = scope.get("client") or ("", 0)
        begin_request(rid, client[0])["service"] = part
        status = 500

        async def observed_send(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", ()), (b"x-ucgate-request-id", rid)]}
            await send(message)

        try:
            await self.app(scope, receive, observed_send)
        finally:
            metrics.count_request(part, status)


def metrics_route(allow: tuple) -> Any:
    """``GET /metrics`` for peers in ``allow`` (a tuple of ip networks)."""
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    async def endpoint(request: Request) -> Response:
        host = request.client.host if request.client else None
        if not metrics.allowed_scraper(host, allow):
            return JSONResponse({"error": "forbidden", "message": "not in [metrics] allow"}, status_code=403)
        return Response(metrics.render(), media_type=metrics.CONTENT_TYPE_LATEST, headers={"Cache-Control": "no-store"})

    return Route("/metrics", endpoint, methods=["GET", "HEAD"])


def observe_app(app: Any, metrics_config: Any, *, trust_request_ids: bool = False) -> None:
    """Add the middleware and, unless ``[metrics] enabled = false``, ``/metrics`` to ``app``."""
    if metrics_config is not None and metrics_config.enabled:
        app.router.routes.insert(0, metrics_route(metrics_config.allow))
    app.add_middleware(RequestObserver, trust_request_ids=trust_request_ids)
