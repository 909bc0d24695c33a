"""The web application: ``/admin`` (admin UI), ``/portal`` (self-service), ``/api/v1`` (REST),
``/static``. Built by :func:`create_web_app`; the id service mounts it beside its own API
(:func:`mount_routes`), ``ucgate serve`` runs it on its own listener (:func:`web_server`)."""

from __future__ import annotations

from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from ..config import LogFormat
from ..id.health import health_routes
from ..policy.tls import INTERMEDIATE_TLS12_CIPHERS
from . import admin, api, portal, signin
from .pages import HERE, WebContext, make_env, render
from .service import Console
from .sessions import SessionStore
from .settings import WebConfig
from .tokens import ApiTokens, tokens_for


def web_routes(ctx: WebContext) -> list[BaseRoute]:
    async def home(request: Request) -> Response:
        return RedirectResponse("/portal/", status_code=303)

    return [
        Route("/", home),
        Mount("/admin", routes=signin.routes(ctx, "admin") + admin.routes(ctx)),
        Mount("/portal", routes=signin.routes(ctx, "portal") + portal.routes(ctx)),
        Mount("/api/v1", routes=api.routes(ctx)),
        Mount("/static", app=StaticFiles(directory=HERE / "static"), name="static"),
    ]


def make_context(
    ids: Any,
    *,
    web: WebConfig | None = None,
    config: Any = None,
    devices: Any = None,
    live_users: Any = None,
    tokens: ApiTokens | None = None,
) -> WebContext:
    web = web or (getattr(config, "web", None) if config is not None else None) or WebConfig()
    if devices is None and config is not None and config.devices.enabled:
        from ..id.devices import open_device_service

        devices = open_device_service(config, ids)
    if tokens is None:
        if config is not None:
            tokens = tokens_for(config)
        elif web.api_tokens_file is not None:
            tokens = ApiTokens(web.api_tokens_file)
        else:  # Path(None) raised a TypeError here
            raise ValueError("[web] api_tokens_file is needed without a configuration")
    console = Console(ids, devices, web, config=config, live_users=live_users)
    sessions = SessionStore(idle_timeout=web.idle_timeout, lifetime=web.session_lifetime)
    return WebContext(console, sessions, web, tokens, make_env())


def exception_handlers(ctx: WebContext) -> dict:
    async def http_error(request: Request, exc: HTTPException) -> Response:
        if request.url.path.startswith(("/api/", "/v1/")):
            return JSONResponse(
                {"error": "not-found" if exc.status_code == 404 else "http-error", "message": str(exc.detail)},
                status_code=exc.status_code,
            )
        return render(
            ctx, request, None, "error.html", exc.status_code, title=str(exc.status_code), message=str(exc.detail)
        )

    async def server_error(request: Request, exc: Exception) -> Response:
        return JSONResponse({"error": "internal", "message": "internal error (see the server log)"}, status_code=500)

    return {HTTPException: http_error, 500: server_error}


def create_web_app(ctx: WebContext, *, readiness: Any = None) -> Starlette:
    """The web app on its own listener, with ``/healthz`` and ``/readyz`` (``readiness``: an
    async ``(ok, reason)`` check, ``ucgate.id.health``)."""
    app = Starlette(routes=health_routes(readiness) + web_routes(ctx), exception_handlers=exception_handlers(ctx))
    app.state.web = ctx
    return app


def mount_routes(app: Starlette, ctx: WebContext) -> None:
    """Add the web routes to an existing Starlette app (the id service's API)."""
    app.router.routes.extend(web_routes(ctx))
    app.state.web = ctx


def web_server(config: Any, app: Any):
    """A uvicorn server for the web app on [web] listen, TLS with [web] or the gateway's cert."""
    import uvicorn

    w = config.web
    cert = w.tls_cert or config.gateway.tls_cert
    key = w.tls_key or config.gateway.tls_key
    if cert is None or key is None:
        raise ValueError("[web] needs tls_cert and tls_key (or the gateway's): sessions use Secure cookies")
    # JSON logs: uvicorn's own logging configuration off, ours (ucgate.logs) formats its lines
    log_config = (
        None if getattr(config, "log_format", LogFormat.TEXT) == LogFormat.JSON else uvicorn.config.LOGGING_CONFIG
    )
    return uvicorn.Server(
        uvicorn.Config(
            app,
            host=w.listen_host,
            port=w.listen_port,
            ssl_certfile=str(cert),
            ssl_keyfile=str(key),
            ssl_ciphers=INTERMEDIATE_TLS12_CIPHERS,  # the gateway's profile (uvicorn's default: "TLSv1")
            log_level=config.log_level,
            lifespan="off",
            access_log=False,
            server_header=False,
            proxy_headers=False,
            timeout_graceful_shutdown=2,
            log_config=log_config,
        )
    )


def node_web_server(config: Any, ids: Any, *, devices: Any = None, live_users: Any = None, readiness: Any = None):
    """The web app of ``ucgate serve`` (in-process id service) on its own [web] listener, with
    request ids and ``/metrics`` (``ucgate.id.observe``)."""
    from ..id.observe import observe_app

    app = create_web_app(make_context(ids, config=config, devices=devices, live_users=live_users), readiness=readiness)
    observe_app(app, config.metrics)
    return web_server(config, app)
