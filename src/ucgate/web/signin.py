"""Sign-in, second factor and sign-out, for both areas.

Admin area: password (domain password by LDAP bind when a directory is configured, else an
ASP), an admin role, and a TOTP code — always: an account without TOTP cannot sign in to the
admin UI. Portal: the password, then the TOTP code when the user has enrolled one.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .pages import WebContext, client_ip, page, redirect, render, safe_next
from .settings import STAFF_ROLES


def routes(ctx: WebContext, area: str) -> list[Route]:
    tpl = "signin.html"

    def login(request: Request, s, form) -> Response:
        nxt = safe_next(request.query_params.get("next") or form.get("next"), area)
        if request.method == "GET":
            if s.signed_in:
                return redirect(ctx, nxt, s)
            return render(ctx, request, s, tpl, area=area, step="password", next=nxt, username="")
        username, password = form.get("username", "").strip(), form.get("password", "")
        errors = {}
        if not username:
            errors["username"] = "Enter your user name (alice, CONTOSO\\alice or alice@contoso.com)."
        elif len(username) > 256:
            errors["username"] = "At most 256 characters."
        if not password:
            errors["password"] = "Enter your password."
        if not errors:
            user, reason = ctx.console.check_password(username, password, client_ip(request))
            if user is None:
                errors["password"] = (
                    "Too many failed attempts; wait a few minutes."
                    if reason == "throttled"
                    else "Wrong user name or password."
                )
                ctx.console.audit.record(
                    f"web.{area}.sign-in",
                    actor=username[:64],
                    user=username[:64],
                    client_address=client_ip(request),
                    result="deny",
                    reason=reason,
                )
            else:
                role = ctx.console.role_of(user)
                has_totp = ctx.console.has_totp(user)
                if area == "admin" and role not in STAFF_ROLES:
                    errors["username"] = "This account has no administrator, helpdesk or auditor role."
                elif area == "admin" and not has_totp:
                    errors["username"] = (
                        "Administrator sign-in requires two-factor authentication: "
                        "enrol an authenticator app in the self-service portal first."
                    )
                else:
                    s.pending_user = user
                    if not has_totp:
                        return _finish(request, s, user, role, nxt)
                    return redirect(ctx, f"/{area}/login/otp?next={nxt}", s)
        return render(
            ctx,
            request,
            s,
            tpl,
            400 if errors else 200,
            area=area,
            step="password",
            next=nxt,
            username=username,
            errors=errors,
        )

    def otp(request: Request, s, form) -> Response:
        nxt = safe_next(request.query_params.get("next") or form.get("next"), area)
        if not s.pending_user:
            return redirect(ctx, f"/{area}/login", s)
        if request.method == "GET":
            return render(ctx, request, s, tpl, area=area, step="otp", next=nxt, username=s.pending_user)
        code = form.get("code", "").strip()
        errors = {}
        if not code:
            errors["code"] = "Enter the 6-digit code from your authenticator app (or a recovery code)."
        elif not ctx.console.verify_second_factor(s.pending_user, code):
            errors["code"] = "Wrong or already used code; wait for the next one."
            ctx.console.audit.record(
                f"web.{area}.sign-in",
                actor=s.pending_user,
                user=s.pending_user,
                client_address=client_ip(request),
                result="deny",
                reason="otp-wrong",
            )
        if errors:
            return render(
                ctx, request, s, tpl, 400, area=area, step="otp", next=nxt, username=s.pending_user, errors=errors
            )
        user = s.pending_user
        return _finish(request, s, user, ctx.console.role_of(user), nxt)

    def _finish(request: Request, s, user: str, role: str, nxt: str) -> Response:
        if area == "admin" and role not in STAFF_ROLES:
            return redirect(ctx, f"/{area}/login", s)
        ctx.sessions.rotate(s)
        s.user, s.role, s.pending_user = user, role, None
        ctx.console.audit.record(
            f"web.{area}.sign-in",
            actor=user,
            user=user,
            result="allow",
            client_address=client_ip(request),
            reason="ok",
            role=role,
        )
        return redirect(ctx, nxt, s)

    def logout(request: Request, s, form) -> Response:
        if s is not None:
            if s.user:
                ctx.console.audit.record(f"web.{area}.sign-out", actor=s.user, user=s.user, result="ok")
            ctx.sessions.drop(s)
        resp = redirect(ctx, f"/{area}/login")
        resp.delete_cookie(f"__Host-ucgate-{area}", path="/", secure=True, httponly=True, samesite="strict")
        return resp

    return [
        Route("/login", page(ctx, area, None, login), methods=["GET", "POST"]),
        Route("/login/otp", page(ctx, area, None, otp), methods=["GET", "POST"]),
        Route("/logout", page(ctx, area, None, logout), methods=["POST"]),
    ]
