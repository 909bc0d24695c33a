"""Web handlers never block the event loop: in one process the loop also serves the id
service's API (the gateways' sign-ins), so a slow store call behind a dashboard must not stall it."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from ucgate.id.events import EventBus
from ucgate.id.http_api import create_id_api
from ucgate.web.app import mount_routes
from ucgate.web.pages import page

from .test_api import bearer, web  # noqa: F401  (fixture)

SECRET = b"s" * 32


def test_a_slow_dashboard_does_not_stall_the_id_service_api(web, loop_thread):
    ctx, _ = web
    app = create_id_api(ctx.console.ids.credentials, secret=SECRET, bus=EventBus())
    mount_routes(app, ctx)  # one app, one loop: as `ucgate id-service` serves the web UI too
    dashboard = ctx.console.dashboard

    def slow_dashboard():
        time.sleep(1.0)  # a slow store query
        return dashboard()

    ctx.console.dashboard = slow_dashboard
    headers = bearer(ctx, "admin")

    async def run():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="https://id.test") as c:
            slow = asyncio.create_task(c.get("/api/v1/dashboard", headers=headers))
            await asyncio.sleep(0.1)  # the dashboard call is in its store query now
            t0 = time.monotonic()
            health = await c.get("/v1/health")
            api = await c.get("/v1/openapi.json", headers={"Authorization": "Bearer " + SECRET.decode()})
            took = time.monotonic() - t0
            pending = not slow.done()
            return health, api, took, pending, await slow

    health, api, took, pending, slow = loop_thread.run(run())  # its own loop (a browser test may hold this thread's)
    assert health.status_code == 200 and api.status_code == 200
    assert pending and took < 0.2, took
    assert slow.status_code == 200 and "activity" in slow.json()


def test_page_handlers_run_in_the_thread_pool(web):
    ctx, _ = web
    seen = {}

    def handler(request, s, form):
        seen["thread"] = threading.current_thread()
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/admin/login", page(ctx, "admin", None, handler))])
    assert TestClient(app, base_url="https://testserver").get("/admin/login").text == "ok"
    assert seen["thread"] is not threading.main_thread()
    assert seen["thread"].name.startswith(("AnyIO", "asyncio", "ThreadPool")), seen["thread"].name
