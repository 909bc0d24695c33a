"""The self-service portal: own devices (approve with TOTP, block), ASPs, TOTP enrolment.

Secrets (a new ASP, the TOTP secret, recovery codes) appear only in the response to the POST
that created them — never stored for a later page, never in a redirect.
"""

from __future__ import annotations

from markupsafe import Markup
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .pages import WebContext, page, redirect, render
from .service import FieldError, Forbidden, NotFound


def routes(ctx: WebContext) -> list[Route]:
    c = ctx.console

    def home_page(request: Request, s, status: int = 200, errors: dict | None = None, **extra) -> Response:
        d = c.user_detail(s.user)
        return render(
            ctx, request, s, "portal/home.html", status, title="My devices", u=d, errors=errors or {}, **extra
        )

    def home(request: Request, s, form) -> Response:
        return home_page(request, s)

    def device(request: Request, s, form) -> Response:
        pid, op = request.path_params["id"], request.path_params["op"]
        try:
            if op == "approve":
                rec = c.approve_own_device(s.user, pid, form.get("code", ""))
            elif op == "block":
                rec = c.device_action(pid, "block", actor=f"portal:{s.user}", owner=s.user)
            else:
                raise NotFound("no such operation")
        except FieldError as e:
            return home_page(request, s, 400, {f"{e.field}-{pid}": e.message})
        except (NotFound, Forbidden) as e:
            return render(ctx, request, s, "error.html", 404, title="Not found", message=str(e))
        s.flash.append(("ok", f"{rec.device_id}: {'approved' if op == 'approve' else 'blocked'}"))
        return redirect(ctx, "/portal/", s)

    def asp_create(request: Request, s, form) -> Response:
        try:
            info, plain = c.create_asp(s.user, form.get("label", ""), actor=f"portal:{s.user}")
        except FieldError as e:
            return home_page(request, s, 400, {f"asp-{e.field}": e.message}, label=form.get("label", ""))
        return render(
            ctx,
            request,
            s,
            "portal/secret.html",
            title="New app password",
            kind="asp",
            info=info,
            secret=plain,
            codes=[],
        )

    def asp_revoke(request: Request, s, form) -> Response:
        try:
            c.revoke_asp(request.path_params["asp_id"], actor=f"portal:{s.user}", owner=s.user)
        except (NotFound, Forbidden) as e:
            return render(ctx, request, s, "error.html", 404, title="Not found", message=str(e))
        s.flash.append(("ok", "app password revoked"))
        return redirect(ctx, "/portal/", s)

    def otp_begin(request: Request, s, form) -> Response:
        try:
            e = c.begin_totp(s.user, actor=f"portal:{s.user}")
        except FieldError as err:
            return home_page(request, s, 400, {"otp": err.message})
        return render(
            ctx,
            request,
            s,
            "portal/enrol.html",
            title="Authenticator app",
            qr=Markup(e.qr_svg(scale=5)),
            secret=e.secret_b32,
            account=e.account,
        )

    def otp_confirm(request: Request, s, form) -> Response:
        code = form.get("code", "").strip()
        try:
            if not code:
                raise FieldError("code", "Enter the 6-digit code the app shows.")
            codes = c.confirm_totp(s.user, code, actor=f"portal:{s.user}")
        except FieldError as e:
            return render(
                ctx,
                request,
                s,
                "portal/enrol.html",
                400,
                title="Authenticator app",
                qr=None,
                secret=None,
                account=s.user,
                errors={"code": e.message},
            )
        return render(
            ctx,
            request,
            s,
            "portal/secret.html",
            title="Recovery codes",
            kind="recovery",
            info=None,
            secret=None,
            codes=codes,
        )

    def otp_codes(request: Request, s, form) -> Response:
        try:
            codes = c.new_recovery_codes(s.user, actor=f"portal:{s.user}")
        except FieldError as e:
            return home_page(request, s, 400, {"otp": e.message})
        return render(
            ctx,
            request,
            s,
            "portal/secret.html",
            title="Recovery codes",
            kind="recovery",
            info=None,
            secret=None,
            codes=codes,
        )

    return [
        Route("/", page(ctx, "portal", "portal", home)),
        Route("/devices/{id:int}/{op}", page(ctx, "portal", "portal", device), methods=["POST"]),
        Route("/asps", page(ctx, "portal", "portal", asp_create), methods=["POST"]),
        Route("/asps/{asp_id}/revoke", page(ctx, "portal", "portal", asp_revoke), methods=["POST"]),
        Route("/otp", page(ctx, "portal", "portal", otp_begin), methods=["POST"]),
        Route("/otp/confirm", page(ctx, "portal", "portal", otp_confirm), methods=["POST"]),
        Route("/otp/recovery-codes", page(ctx, "portal", "portal", otp_codes), methods=["POST"]),
    ]
