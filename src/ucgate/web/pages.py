"""What every page handler shares: templates, the session cookie, forms, CSRF, permissions.

A handler is wrapped by :func:`page`: it gets the request and the session (signed in with the
permission it needs, else it never runs), and on POST the parsed form after the CSRF check.
Forms are ``application/x-www-form-urlencoded`` (parsed here: no multipart dependency).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

import jinja2
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from .service import Console
from .sessions import Session, SessionStore, csrf_ok
from .settings import WebConfig
from .tokens import ApiTokens

log = logging.getLogger("ucgate.web")

HERE = Path(__file__).parent
MAX_FORM = 16 * 1024
PERMISSIONS = {
    # "policy": edit the store's device rules and group policies (ucgate.id.rules)
    "admin": frozenset({"view", "devices", "users", "settings", "policy"}),
    "helpdesk": frozenset({"view", "devices", "users"}),
    "auditor": frozenset({"view", "settings"}),
    "user": frozenset(),
}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; "
    "base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
}


@dataclass
class WebContext:
    console: Console
    sessions: SessionStore
    web: WebConfig
    tokens: ApiTokens
    env: jinja2.Environment


def make_env() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True)
    env.filters["when"] = lambda v: (str(v)[:19].replace("T", " ") + "Z") if v else "–"
    return env


def cookie_name(area: str) -> str:
    return f"__Host-ucgate-{area}"


def render(
    ctx: WebContext, request: Request, session: Session | None, template: str, status: int = 200, **values: Any
) -> HTMLResponse:
    flash = list(session.flash) if session else []
    if session:
        session.flash.clear()
    html = ctx.env.get_template(template).render(
        session=session,
        csrf=session.csrf if session else "",
        flash=flash,
        can=lambda perm: bool(session and session.role and perm in PERMISSIONS[session.role]),
        path=request.url.path,
        errors=values.pop("errors", {}),
        **values,
    )
    resp = HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)
    if session:
        set_cookie(ctx, resp, session)
    return resp


def set_cookie(ctx: WebContext, resp: Response, session: Session) -> None:
    resp.set_cookie(
        cookie_name(session.area), session.id, path="/", secure=True, httponly=True, samesite="strict", max_age=None
    )


def redirect(ctx: WebContext, url: str, session: Session | None = None) -> Response:
    resp = RedirectResponse(url, status_code=303, headers=SECURITY_HEADERS)
    if session:
        set_cookie(ctx, resp, session)
    return resp


def session_of(ctx: WebContext, request: Request, area: str, *, create: bool = False) -> Session | None:
    s = ctx.sessions.get(request.cookies.get(cookie_name(area)), area)
    if s is None and create:
        s = ctx.sessions.new(area)
    return s


async def read_form(request: Request) -> dict[str, str]:
    """The urlencoded body as {name: last value}; oversized or other bodies give {}."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM:
            return {}
    if ctype != "application/x-www-form-urlencoded":
        return {}
    parsed = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True, max_num_fields=100)
    return {k: v[-1] for k, v in parsed.items()}


def client_ip(request: Request) -> str:
    return request.client.host if request.client else "0.0.0.0"


Handler = Callable[..., Response]


def page(ctx: WebContext, area: str, perm: str | None, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """Wrap a handler ``(request, session, form) -> Response``.

    The handler is synchronous and runs in the thread pool (the store, the directory and the
    templates are synchronous): never on the event loop, which also serves the id service's API
    and the gateway's sign-ins in one process. ``perm`` None: the page works signed out (sign-in pages). Otherwise: signed out → the
    sign-in page (with ``next``); signed in without ``perm`` → 403. POST needs the CSRF token.
    """
    login = f"/{area}/login"

    async def endpoint(request: Request) -> Response:
        s = session_of(ctx, request, area, create=perm is None)
        form: dict[str, str] = {}
        if request.method == "POST":
            form = await read_form(request)
            if not csrf_ok(s, form.get("csrf")):
                log.warning("web: refused %s %s: CSRF token missing or wrong", request.method, request.url.path)
                return render(
                    ctx,
                    request,
                    s,
                    "error.html",
                    403,
                    title="Refused",
                    message="This form was refused: its security token (CSRF) is missing, "
                    "wrong or expired. Reload the page and try again.",
                )
        if perm is not None:
            if s is None or not s.signed_in:
                target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                return redirect(ctx, f"{login}?next={quote(target)}")
            if area == "admin" and perm not in PERMISSIONS[s.role or "user"]:
                return render(
                    ctx,
                    request,
                    s,
                    "error.html",
                    403,
                    title="Not allowed",
                    message=f"Your role ({s.role}) does not give access to this page.",
                )
        return await run_in_threadpool(handler, request, s, form)

    return endpoint


def safe_next(value: str | None, area: str) -> str:
    """Only same-site paths of the area (no //evil.example, no scheme)."""
    if value and value.startswith(f"/{area}") and not value.startswith("//") and "\\" not in value:
        return value
    return f"/{area}/"
