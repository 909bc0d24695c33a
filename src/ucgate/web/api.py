"""``/api/v1``: the REST API for automation — everything the admin UI does.

``Authorization: Bearer ucg_<id>_<secret>`` (``ucgate api-token create --role ...``); the
token's role limits it as in the UI. Errors are JSON: 400 ``{"error": "bad-request", "field",
"message"}``, 401 (no or bad token), 403 (role), 404. ``GET /api/v1/openapi.json`` needs no token.

The request bodies are the models below, the answers those of :mod:`ucgate.web.answers` (each
answer is checked against its model before it is sent); the OpenAPI document is generated from
:data:`OPERATIONS` and those models by :mod:`ucgate.id.openapi`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from pydantic import ConfigDict, Field, StrictBool, StrictInt, StrictStr
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..id.api import ContextError, ErrorBody, Wire, parse_wire, text_field
from ..id.openapi import Operation, document
from ..id.rules import MAX_GROUP, MAX_GROUPS
from ..id.rules import MAX_NAME as RULE_NAME
from ..policy.devices import MAX_PATTERN_CHARS
from . import answers
from .pages import PERMISSIONS, WebContext
from .service import DEVICE_ACTIONS, DEVICE_STATES, FieldError, Forbidden, NotFound, device_json

MAX_BODY = 16 * 1024
log = logging.getLogger("ucgate.web.api")


def _error(status: int, error: str, message: str, **extra: Any) -> JSONResponse:
    headers = (
        {"WWW-Authenticate": 'Bearer realm="ucgate-api"', "Cache-Control": "no-store"}
        if status == 401
        else {"Cache-Control": "no-store"}
    )
    return JSONResponse({"error": error, **extra, "message": message}, status_code=status, headers=headers)


# --- request bodies ------------------------------------------------------------------------


class Body(Wire):
    """A request body of the REST API. Unknown fields are ignored, as they were; a rule's or a
    policy's are refused (``unknown field``), as ``ucgate.id.rules`` does."""


class StrictBody(Body):
    model_config = ConfigDict(extra="forbid")


class UserState(Body):
    """``PUT /users/{username}/state``."""

    enabled: StrictBool


class AspRequest(Body):
    """``POST /users/{username}/asps``."""

    label: Annotated[StrictStr, text_field(128, required=True)]
    device_id: Annotated[StrictStr, text_field(256)] | None = None


Position = Annotated[StrictInt, Field(ge=1, le=100_000, description="1: first of the store's list")]


class Move(Body):
    """``POST /rules/{id}/move``, ``POST /policies/{id}/move``."""

    position: Position


_Glob = Annotated[
    StrictStr, Field(max_length=MAX_PATTERN_CHARS, pattern=r"^[^\x00-\x1f]*$", description="a glob, case-insensitive")
]
_Action = answers.State


class NewRule(StrictBody):
    """``POST /rules``: a device rule for the store's list (``ucgate.id.rules`` checks the rest)."""

    name: Annotated[StrictStr, text_field(RULE_NAME, required=True)]
    action: _Action
    device_type: _Glob | None = None
    model: _Glob | None = None
    os: _Glob | None = None
    user_agent: _Glob | None = None
    client_kind: _Glob | None = None
    groups: (
        Annotated[list[Annotated[StrictStr, Field(min_length=1, max_length=MAX_GROUP)]], Field(max_length=MAX_GROUPS)]
        | None
    ) = None
    position: Position | None = None


class NewPolicy(StrictBody):
    """``POST /policies``: a group policy for the store's list."""

    group: Annotated[StrictStr, text_field(MAX_GROUP, required=True)]
    name: Annotated[StrictStr, text_field(RULE_NAME)] | None = None
    settings: answers.PolicySettings
    position: Position | None = None


B = TypeVar("B", bound=Body)


def _parse(model: type[B], raw: bytes | None) -> B:
    if raw is None:
        raise FieldError("body", f"at most {MAX_BODY} bytes")
    try:
        return parse_wire(model, raw or b"{}")
    except ContextError as e:
        raise FieldError(e.field, e.message) from None


async def _read(request: Request) -> bytes | None:
    """The body, or None past :data:`MAX_BODY` bytes."""
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY:
            return None
    return raw


def _ok(kind: Any, data: Any, status: int = 200, headers: dict[str, str] | None = None) -> JSONResponse:
    """The answer, checked against its model (``ucgate.web.answers``; the document's schema)."""
    return JSONResponse(answers.checked(kind, data), status_code=status, headers=headers)


def _query(request: Request, key: str, max_len: int = 256) -> str:
    v = request.query_params.get(key, "")
    if len(v) > max_len or any(ord(ch) < 0x20 for ch in v):
        raise FieldError(key, f"at most {max_len} characters, no control characters")
    return v


def routes(ctx: WebContext) -> list[Route]:
    c = ctx.console

    def endpoint(perm: str | None, handler: Callable[..., Response], body: type[Body] | None = None):
        """The handler (synchronous: the store is) runs in the thread pool, never on the event
        loop; the token is checked first — before a byte of the body is read; ``body``: the
        request body's model, handed to the handler."""

        def check(request: Request) -> Response | None:
            """None when the request's API token allows ``perm``, else the 401/403 answer."""
            auth = request.headers.get("authorization", "")
            tok = ctx.tokens.verify(auth[7:].strip()) if auth[:7].lower() == "bearer " else None
            if tok is None:
                return _error(401, "unauthorized", "missing or invalid API token (ucgate api-token create)")
            if perm not in PERMISSIONS[tok.role]:
                return _error(403, "forbidden", f"the token's role ({tok.role}) does not allow this")
            request.state.actor = f"api:{tok.id}"
            return None

        def call(request: Request, raw: bytes | None) -> Response:
            try:
                return handler(request) if body is None else handler(request, _parse(body, raw))
            except FieldError as e:
                return _error(400, "bad-request", e.message, field=e.field)
            except NotFound as e:
                return _error(404, "not-found", str(e))
            except Forbidden as e:
                return _error(403, "forbidden", str(e))
            except answers.AnswerMismatch as e:  # a bug; such an answer is never sent
                log.error(
                    "%s %s: the answer does not match its model (%s); answering 500",
                    request.method,
                    request.url.path[:200],
                    e,
                )
                return _error(500, "internal", "the answer did not match the API's document; see the log")

        async def wrapped(request: Request) -> Response:
            if perm is not None:
                denied = await run_in_threadpool(check, request)
                if denied is not None:
                    return denied
            raw = await _read(request) if body is not None else b""
            return await run_in_threadpool(call, request, raw)

        return wrapped

    def dashboard(request: Request) -> Response:
        return _ok(answers.Dashboard, c.dashboard())

    def users(request: Request) -> Response:
        return _ok(list[answers.UserSummary], c.list_users(_query(request, "q")))

    def user(request: Request) -> Response:
        return _ok(answers.User, c.user_detail(request.path_params["username"]))

    def user_state(request: Request, body: UserState) -> Response:
        c.set_user_enabled(request.path_params["username"], body.enabled, actor=request.state.actor)
        return _ok(answers.User, c.user_detail(request.path_params["username"]))

    def user_sign_out(request: Request) -> Response:
        c.sign_out(request.path_params["username"], actor=request.state.actor)
        return _ok(answers.User, c.user_detail(request.path_params["username"]))

    def asp_create(request: Request, body: AspRequest) -> Response:
        info, plain = c.create_asp(
            request.path_params["username"], body.label, body.device_id or "", actor=request.state.actor
        )
        return _ok(answers.NewAsp, {**info, "password": plain}, 201, headers={"Cache-Control": "no-store"})

    def asp_revoke(request: Request) -> Response:
        return _ok(answers.Asp, c.revoke_asp(request.path_params["asp_id"], actor=request.state.actor))

    def otp_reset(request: Request) -> Response:
        name = request.path_params["username"]
        c.user_detail(name)  # 404 for an unknown user
        return _ok(answers.OtpReset, {"username": name, "reset": c.reset_totp(name, actor=request.state.actor)})

    def devices(request: Request) -> Response:
        rows = c.list_devices(
            user=_query(request, "user"), state=_query(request, "state"), device_type=_query(request, "type")
        )
        return _ok(list[answers.Device], [device_json(r) for r in rows])

    def device(request: Request) -> Response:
        return _ok(answers.Device, device_json(c.device(request.path_params["id"])))

    def device_action(request: Request) -> Response:
        action = request.path_params["action"]
        if action not in DEVICE_ACTIONS or action == "delete":
            raise NotFound(f"no action {action!r}")
        return _ok(
            answers.Device, device_json(c.device_action(request.path_params["id"], action, actor=request.state.actor))
        )

    def device_delete(request: Request) -> Response:
        c.device_action(request.path_params["id"], "delete", actor=request.state.actor)
        return Response(status_code=204)

    def audit(request: Request) -> Response:
        limit = _query(request, "limit") or "200"
        if not limit.isdigit():
            raise FieldError("limit", "expected an integer 1..5000")
        events = c.audit_events(
            user=_query(request, "user"),
            action=_query(request, "action"),
            result=_query(request, "result"),
            q=_query(request, "q"),
            limit=int(limit),
        )
        if _query(request, "format") == "csv":
            return Response(c.audit_csv(events), media_type="text/csv")
        return _ok(list[answers.AuditEvent], events)

    def rules(request: Request) -> Response:
        return _ok(answers.Rules, c.rules())

    def rule_add(request: Request, body: NewRule) -> Response:
        return _ok(answers.Rule, c.add_rule(body.model_dump(exclude_unset=True), actor=request.state.actor), 201)

    def rule_delete(request: Request) -> Response:
        c.delete_rule(request.path_params["id"], actor=request.state.actor)
        return Response(status_code=204)

    def rule_move(request: Request, body: Move) -> Response:
        return _ok(answers.Rule, c.move_rule(request.path_params["id"], body.position, actor=request.state.actor))

    def policies(request: Request) -> Response:
        return _ok(list[answers.Policy], c.rules()["group_policies"])

    def policy_add(request: Request, body: NewPolicy) -> Response:
        return _ok(answers.Policy, c.add_policy(body.model_dump(exclude_unset=True), actor=request.state.actor), 201)

    def policy_delete(request: Request) -> Response:
        c.delete_policy(request.path_params["id"], actor=request.state.actor)
        return Response(status_code=204)

    def policy_move(request: Request, body: Move) -> Response:
        return _ok(answers.Policy, c.move_policy(request.path_params["id"], body.position, actor=request.state.actor))

    def settings(request: Request) -> Response:
        return JSONResponse(c.settings())

    def openapi(request: Request) -> Response:
        return JSONResponse(OPENAPI)

    return [
        Route("/dashboard", endpoint("view", dashboard)),
        Route("/users", endpoint("view", users)),
        Route("/users/{username}", endpoint("view", user)),
        Route("/users/{username}/state", endpoint("users", user_state, UserState), methods=["PUT"]),
        Route("/users/{username}/asps", endpoint("users", asp_create, AspRequest), methods=["POST"]),
        Route("/users/{username}/otp", endpoint("users", otp_reset), methods=["DELETE"]),
        Route("/users/{username}/sign-out", endpoint("users", user_sign_out), methods=["POST"]),
        Route("/asps/{asp_id}", endpoint("users", asp_revoke), methods=["DELETE"]),
        Route("/devices", endpoint("view", devices)),
        Route("/devices/{id:int}", endpoint("view", device)),
        Route("/devices/{id:int}", endpoint("devices", device_delete), methods=["DELETE"]),
        Route("/devices/{id:int}/{action}", endpoint("devices", device_action), methods=["POST"]),
        Route("/audit", endpoint("view", audit)),
        Route("/rules", endpoint("view", rules)),
        Route("/rules", endpoint("policy", rule_add, NewRule), methods=["POST"]),
        Route("/rules/{id:int}", endpoint("policy", rule_delete), methods=["DELETE"]),
        Route("/rules/{id:int}/move", endpoint("policy", rule_move, Move), methods=["POST"]),
        Route("/policies", endpoint("view", policies)),
        Route("/policies", endpoint("policy", policy_add, NewPolicy), methods=["POST"]),
        Route("/policies/{id:int}", endpoint("policy", policy_delete), methods=["DELETE"]),
        Route("/policies/{id:int}/move", endpoint("policy", policy_move, Move), methods=["POST"]),
        Route("/settings", endpoint("settings", settings)),
        Route("/openapi.json", endpoint(None, openapi)),
    ]


# --- the OpenAPI document: the operations in a table, every schema from the models -------------
_USER = {"name": "username", "in": "path", "required": True, "schema": {"type": "string"}}
_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "integer", "format": "int64"}}


def _q(name: str, **schema: Any) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": {"type": "string", **schema}}


_ACTION = {
    "name": "action",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "enum": [a for a in DEVICE_ACTIONS if a != "delete"]},
}
_ERROR_TEXT = {
    400: "Bad input; `field` names it",
    401: "No or invalid API token",
    403: "The token's role does not allow this",
    404: "No such object",
}
_DELETED = ("204", "Deleted", None)
# One example per request body, in the document and validated by the tests.
EXAMPLES: dict[type, dict[str, Any]] = {
    UserState: {"enabled": False},
    AspRequest: {"label": "iPhone mail", "device_id": "ApplDEV1"},
    Move: {"position": 1},
    NewRule: {"name": "no-android", "action": "quarantined", "client_kind": "android", "position": 1},
    NewPolicy: {"group": "ucgate-executives", "settings": {"max_devices": 1, "certprov": "deny"}},
    ErrorBody: {"error": "bad-request", "field": "label", "message": "at most 128 characters"},
}


def _op(path: str, method: str, op_id: str, answer: Any, errors: tuple[int, ...], **kw: Any) -> Operation:
    """An operation of ``/api/v1``: ``answer`` is the 200's body, or a (code, description, body)."""
    return Operation(
        path="/api/v1" + path,
        method=method,
        op_id=op_id,
        summary=kw.pop("summary", ""),
        description=kw.pop("description", ""),
        request=kw.pop("request", None),
        answer=answer if isinstance(answer, tuple) else ("200", "OK", answer),
        errors=errors,
        **kw,
    )


OPERATIONS: tuple[Operation, ...] = (
    _op("/dashboard", "get", "dashboard", answers.Dashboard, (401, 403), summary="Live sessions, activity, quarantine"),
    _op("/users", "get", "listUsers", list[answers.UserSummary], (400, 401, 403), parameters=(_q("q", maxLength=256),)),
    _op("/users/{username}", "get", "getUser", answers.User, (401, 403, 404), parameters=(_USER,)),
    _op(
        "/users/{username}/state",
        "put",
        "setUserEnabled",
        answers.User,
        (400, 401, 403, 404),
        parameters=(_USER,),
        request=UserState,
    ),
    _op(
        "/users/{username}/asps",
        "post",
        "createAsp",
        ("201", "Created", answers.NewAsp),
        (400, 401, 403, 404),
        summary="Issue an ASP; the password is in this answer only",
        parameters=(_USER,),
        request=AspRequest,
    ),
    _op("/users/{username}/otp", "delete", "resetOtp", answers.OtpReset, (401, 403, 404), parameters=(_USER,)),
    _op(
        "/users/{username}/sign-out",
        "post",
        "signOutUser",
        answers.User,
        (401, 403, 404),
        summary="Close the user's live sessions on every gateway now",
        parameters=(_USER,),
    ),
    _op(
        "/asps/{asp_id}",
        "delete",
        "revokeAsp",
        answers.Asp,
        (401, 403, 404),
        parameters=({"name": "asp_id", "in": "path", "required": True, "schema": {"type": "string"}},),
    ),
    _op(
        "/devices",
        "get",
        "listDevices",
        list[answers.Device],
        (400, 401, 403),
        parameters=(_q("user", maxLength=256), _q("type", maxLength=256), _q("state", enum=list(DEVICE_STATES))),
    ),
    _op("/devices/{id}", "get", "getDevice", answers.Device, (401, 403, 404), parameters=(_ID,)),
    _op("/devices/{id}", "delete", "deleteDevice", _DELETED, (401, 403, 404), parameters=(_ID,)),
    _op("/devices/{id}/{action}", "post", "deviceAction", answers.Device, (401, 403, 404), parameters=(_ID, _ACTION)),
    _op(
        "/audit",
        "get",
        "audit",
        ("200", "Events, newest first", {"application/json": list[answers.AuditEvent], "text/csv": "text/csv"}),
        (400, 401, 403),
        parameters=(
            _q("user", maxLength=256),
            _q("action", maxLength=256),
            _q("result", maxLength=256),
            _q("q", maxLength=256),
            _q("limit", pattern="^[0-9]{1,4}$"),
            _q("format", enum=["json", "csv"]),
        ),
    ),
    _op(
        "/rules",
        "get",
        "rules",
        answers.Rules,
        (401, 403),
        summary="Device rules and group policies in force: the "
        "configuration file's (source file, read-only) first, then the store's",
    ),
    _op(
        "/rules",
        "post",
        "addRule",
        ("201", "Created", answers.Rule),
        (400, 401, 403),
        summary="Add a device rule to the store's list; in force on every node within a second",
        request=NewRule,
    ),
    _op("/rules/{id}", "delete", "deleteRule", _DELETED, (401, 403, 404), parameters=(_ID,)),
    _op("/rules/{id}/move", "post", "moveRule", answers.Rule, (400, 401, 403, 404), parameters=(_ID,), request=Move),
    _op(
        "/policies",
        "get",
        "policies",
        list[answers.Policy],
        (401, 403),
        summary="Group policies, the file's first, then the store's",
    ),
    _op(
        "/policies",
        "post",
        "addPolicy",
        ("201", "Created", answers.Policy),
        (400, 401, 403),
        summary="Add a group policy to the store's list",
        request=NewPolicy,
    ),
    _op("/policies/{id}", "delete", "deletePolicy", _DELETED, (401, 403, 404), parameters=(_ID,)),
    _op(
        "/policies/{id}/move",
        "post",
        "movePolicy",
        answers.Policy,
        (400, 401, 403, 404),
        parameters=(_ID,),
        request=Move,
    ),
    _op(
        "/settings",
        "get",
        "settings",
        "object",
        (401, 403),
        summary="Effective configuration, as the configuration file's tables; secrets masked",
    ),
    _op("/openapi.json", "get", "openapi", ("200", "OpenAPI 3.1", "object"), (), summary="This document", public=True),
)

OPENAPI: dict[str, Any] = document(
    title="ucgate admin API",
    description="Everything the admin UI does. `Authorization: Bearer <token>` from "
    "`ucgate api-token create --role admin|helpdesk|auditor`.",
    operations=OPERATIONS,
    security="apiToken",
    error_model=ErrorBody,
    error_text=_ERROR_TEXT,
    examples=EXAMPLES,
)
