"""The admin UI's pages: dashboard, users, devices, rules, audit log, settings."""

from __future__ import annotations

import json

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from . import chart
from .pages import SECURITY_HEADERS, WebContext, page, redirect, render
from .service import DEVICE_ACTIONS, DEVICE_STATES, FieldError, Forbidden, NotFound

ACTION_TEXT = {
    "approve": "Allow this device (trusted for the user's trust lifetime from now).",
    "block": "Block this device. Its open connections are closed at once.",
    "unblock": "Allow this blocked device again; it asks for the second factor again if the policy requires one.",
    "wipe": "Flag a remote wipe: an ActiveSync device erases itself on its next request. Every request is refused meanwhile.",
    "delete": "Forget this partnership: the device counts as new next time (the rules apply again).",
}


def _actor(s) -> str:
    return f"web:{s.user}"


def _int(text: str) -> int | str:
    """A form's number, or the text itself (the service then names the field)."""
    t = text.strip()
    return int(t) if t.isdigit() and len(t) < 10 else t


def routes(ctx: WebContext) -> list[Route]:
    c = ctx.console

    def dashboard(request: Request, s, form) -> Response:
        d = c.dashboard()
        return render(
            ctx, request, s, "admin/dashboard.html", title="Dashboard", d=d, svg=chart.activity_svg(d["activity"])
        )

    def users(request: Request, s, form) -> Response:
        q = request.query_params.get("q", "")
        return render(ctx, request, s, "admin/users.html", title="Users", users=c.list_users(q), q=q)

    def user(request: Request, s, form) -> Response:
        try:
            u = c.user_detail(request.path_params["username"])
        except NotFound as e:
            return render(ctx, request, s, "error.html", 404, title="Not found", message=str(e))
        return render(ctx, request, s, "admin/user.html", title=u["username"], u=u)

    def user_change(request: Request, s, form) -> Response:
        name, op = request.path_params["username"], request.path_params["op"]
        try:
            if op in ("enable", "disable"):
                c.set_user_enabled(name, op == "enable", actor=_actor(s))
            elif op == "otp-reset":
                c.reset_totp(name, actor=_actor(s))
            elif op == "asp-revoke":
                c.revoke_asp(form.get("asp_id", ""), actor=_actor(s))
            else:
                return render(ctx, request, s, "error.html", 404, title="Not found", message="no such operation")
        except NotFound as e:
            return render(ctx, request, s, "error.html", 404, title="Not found", message=str(e))
        s.flash.append(("ok", f"{op}: done for {name}"))
        return redirect(ctx, f"/admin/users/{name}", s)

    def devices(request: Request, s, form) -> Response:
        qp = request.query_params
        f = {"user": qp.get("user", ""), "type": qp.get("type", ""), "state": qp.get("state", "")}
        errors = {}
        try:
            rows = c.list_devices(user=f["user"], state=f["state"], device_type=f["type"])
        except FieldError as e:
            errors[e.field], rows = e.message, []
        return render(
            ctx,
            request,
            s,
            "admin/devices.html",
            400 if errors else 200,
            title="Devices",
            rows=rows,
            f=f,
            states=DEVICE_STATES,
            errors=errors,
        )

    def device_confirm(request: Request, s, form) -> Response:
        action = request.path_params["action"]
        try:
            rec = c.device(request.path_params["id"])
        except NotFound as e:
            return render(ctx, request, s, "error.html", 404, title="Not found", message=str(e))
        if action not in DEVICE_ACTIONS:
            return render(ctx, request, s, "error.html", 404, title="Not found", message="no such action")
        if request.method == "GET":
            return render(
                ctx,
                request,
                s,
                "admin/confirm.html",
                title=f"{action.title()} device",
                d=rec,
                action=action,
                text=ACTION_TEXT[action],
            )
        try:
            c.device_action(rec.id, action, actor=_actor(s))
        except (NotFound, Forbidden, FieldError) as e:
            return render(ctx, request, s, "error.html", 400, title="Refused", message=str(e))
        s.flash.append(("ok", f"{action}: device {rec.device_id} of {rec.username} — done"))
        return redirect(ctx, "/admin/devices", s)

    def rules(
        request: Request, s, form, status: int = 200, errors: dict | None = None, values: dict | None = None
    ) -> Response:
        r = c.rules()
        return render(
            ctx,
            request,
            s,
            "admin/rules.html",
            status,
            title="Rules",
            r=r,
            pretty=json.dumps(r, indent=2, default=str),
            errors=errors or {},
            v=values or {},
            actions=DEVICE_STATES,
        )

    def _rule_form(form: dict) -> dict:
        data: dict = {
            k: form.get(k, "").strip()
            for k in ("name", "action", "device_type", "model", "os", "user_agent", "client_kind")
        }
        data["groups"] = [g.strip() for g in form.get("groups", "").split(",") if g.strip()]
        if form.get("position", "").strip():
            data["position"] = _int(form["position"])
        return data

    def _policy_form(form: dict) -> dict:
        settings: dict = {}
        for key in ("default_action", "problem_action", "certprov"):
            if form.get(key):
                settings[key] = form[key]
        if form.get("max_devices", "").strip():
            settings["max_devices"] = _int(form["max_devices"])
        if form.get("trust_lifetime_hours", "").strip():
            try:
                settings["trust_lifetime_hours"] = float(form["trust_lifetime_hours"])
            except ValueError:
                settings["trust_lifetime_hours"] = form["trust_lifetime_hours"]
        if form.get("require_second_factor") in ("yes", "no"):
            settings["require_second_factor"] = form["require_second_factor"] == "yes"
        data: dict = {
            "group": form.get("group", "").strip(),
            "name": form.get("name", "").strip(),
            "settings": settings,
        }
        if form.get("position", "").strip():
            data["position"] = _int(form["position"])
        return data

    def rule_change(kind: str):
        def handler(request: Request, s, form) -> Response:
            return _rule_change(kind, request, s, form)

        return handler

    def _rule_change(kind: str, request: Request, s, form) -> Response:
        """POST /admin/rules/add | /admin/rules/{id}/delete | /admin/rules/{id}/move, and the
        same under /admin/policies: the store's lists (the file's are read-only)."""
        op = request.path_params["op"]
        item = request.path_params.get("id")
        what = "rule" if kind == "rules" else "policy"
        try:
            if op == "add" and item is None:
                data = _rule_form(form) if kind == "rules" else _policy_form(form)
                rec = (c.add_rule if kind == "rules" else c.add_policy)(data, actor=_actor(s))
                msg = f"added {what} “{rec['name']}” at position {rec['position']}"
            elif op == "delete" and item is not None:
                (c.delete_rule if kind == "rules" else c.delete_policy)(item, actor=_actor(s))
                msg = f"deleted {what} {item}"
            elif op == "move" and item is not None:
                rec = (c.move_rule if kind == "rules" else c.move_policy)(
                    item, _int(form.get("position", "")), actor=_actor(s)
                )
                msg = f"moved {what} “{rec['name']}” to position {rec['position']}"
            else:
                return render(ctx, request, s, "error.html", 404, title="Not found", message="no such operation")
        except FieldError as e:
            prefix = "" if kind == "rules" else "p-"
            return rules(
                request, s, form, 400, {prefix + e.field.removeprefix("settings."): e.message}, {"kind": kind, **form}
            )
        except NotFound as e:
            return render(ctx, request, s, "error.html", 404, title="Not found", message=str(e))
        s.flash.append(("ok", f"{msg} — in force on every node within a second"))
        return redirect(ctx, "/admin/rules", s)

    def audit(request: Request, s, form) -> Response:
        qp = request.query_params
        f = {k: qp.get(k, "") for k in ("user", "action", "result", "q")}
        errors, events = {}, []
        limit = qp.get("limit", "200")
        try:
            if not limit.isdigit():
                raise FieldError("limit", "a number, 1 to 5000")
            events = c.audit_events(user=f["user"], action=f["action"], result=f["result"], q=f["q"], limit=int(limit))
        except FieldError as e:
            errors[e.field] = e.message
        fmt = qp.get("format", "")
        if fmt == "csv" and not errors:
            return Response(
                c.audit_csv(events),
                media_type="text/csv",
                headers={**SECURITY_HEADERS, "Content-Disposition": 'attachment; filename="ucgate-audit.csv"'},
            )
        if fmt == "json" and not errors:
            return Response(
                json.dumps(events, indent=1),
                media_type="application/json",
                headers={**SECURITY_HEADERS, "Content-Disposition": 'attachment; filename="ucgate-audit.json"'},
            )
        return render(
            ctx,
            request,
            s,
            "admin/audit.html",
            400 if errors else 200,
            title="Audit log",
            events=events,
            f=f,
            limit=limit,
            errors=errors,
            query=request.url.query,
        )

    def settings(request: Request, s, form) -> Response:
        return render(
            ctx,
            request,
            s,
            "admin/settings.html",
            title="Settings",
            pretty=json.dumps(c.settings(), indent=2, default=str),
        )

    def root(request: Request, s, form) -> Response:
        return redirect(ctx, "/admin/", s)

    return [
        Route("/", page(ctx, "admin", "view", dashboard)),
        Route("/users", page(ctx, "admin", "view", users)),
        Route("/users/{username}", page(ctx, "admin", "view", user)),
        Route("/users/{username}/{op}", page(ctx, "admin", "users", user_change), methods=["POST"]),
        Route("/devices", page(ctx, "admin", "view", devices)),
        Route("/devices/{id:int}/{action}", page(ctx, "admin", "devices", device_confirm), methods=["GET", "POST"]),
        Route("/rules", page(ctx, "admin", "view", rules)),
        *(
            Route(path, page(ctx, "admin", "policy", rule_change(kind)), methods=["POST"])
            for kind in ("rules", "policies")
            for path in (f"/{kind}/{{op:str}}", f"/{kind}/{{id:int}}/{{op:str}}")
        ),
        Route("/audit", page(ctx, "admin", "view", audit)),
        Route("/settings", page(ctx, "admin", "settings", settings)),
    ]
