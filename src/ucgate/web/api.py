"""``/api/v1``: the REST API for automation — everything the admin UI does.

``Authorization: Bearer ucg_<id>_<secret>`` (``ucgate api-token create --role ...``); the
token's role limits it as in the UI. Errors are JSON: 400 ``{"error": "bad-request", "field",
"message"}``, 401 (no or bad token), 403 (role), 404. ``GET /api/v1/openapi.json`` needs no token.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal, TypeVar

from pydantic import ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..id.api import ContextError, Wire, parse_wire, text_field
from ..id.http_api import component_schemas
from ..id.rules import MAX_GROUP, MAX_GROUPS
from ..id.rules import MAX_NAME as RULE_NAME
from ..policy.devices import MAX_PATTERN_CHARS
from .pages import PERMISSIONS, WebContext
from .service import DEVICE_ACTIONS, DEVICE_STATES, FieldError, Forbidden, NotFound, device_json

MAX_BODY = 16 * 1024


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
_Action = Literal["allowed", "quarantined", "blocked"]


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


class PolicySettings(StrictBody):
    max_devices: Annotated[StrictInt, Field(ge=0)] | None = None
    trust_lifetime_hours: Annotated[StrictFloat, Field(gt=0)] | None = None
    certprov: Literal["allowed-only", "deny"] | None = None
    default_action: _Action | None = None
    problem_action: _Action | None = None
    require_second_factor: StrictBool | None = None


class NewPolicy(StrictBody):
    """``POST /policies``: a group policy for the store's list."""

    group: Annotated[StrictStr, text_field(MAX_GROUP, required=True)]
    name: Annotated[StrictStr, text_field(RULE_NAME)] | None = None
    settings: PolicySettings
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

        async def wrapped(request: Request) -> Response:
            if perm is not None:
                denied = await run_in_threadpool(check, request)
                if denied is not None:
                    return denied
            raw = await _read(request) if body is not None else b""
            return await run_in_threadpool(call, request, raw)

        return wrapped

    def dashboard(request: Request) -> Response:
        return JSONResponse(c.dashboard())

    def users(request: Request) -> Response:
        return JSONResponse(c.list_users(_query(request, "q")))

    def user(request: Request) -> Response:
        return JSONResponse(c.user_detail(request.path_params["username"]))

    def user_state(request: Request, body: UserState) -> Response:
        c.set_user_enabled(request.path_params["username"], body.enabled, actor=request.state.actor)
        return JSONResponse(c.user_detail(request.path_params["username"]))

    def user_sign_out(request: Request) -> Response:
        c.sign_out(request.path_params["username"], actor=request.state.actor)
        return JSONResponse(c.user_detail(request.path_params["username"]))

    def asp_create(request: Request, body: AspRequest) -> Response:
        info, plain = c.create_asp(
            request.path_params["username"], body.label, body.device_id or "", actor=request.state.actor
        )
        return JSONResponse({**info, "password": plain}, status_code=201, headers={"Cache-Control": "no-store"})

    def asp_revoke(request: Request) -> Response:
        return JSONResponse(c.revoke_asp(request.path_params["asp_id"], actor=request.state.actor))

    def otp_reset(request: Request) -> Response:
        name = request.path_params["username"]
        c.user_detail(name)  # 404 for an unknown user
        return JSONResponse({"username": name, "reset": c.reset_totp(name, actor=request.state.actor)})

    def devices(request: Request) -> Response:
        rows = c.list_devices(
            user=_query(request, "user"), state=_query(request, "state"), device_type=_query(request, "type")
        )
        return JSONResponse([device_json(r) for r in rows])

    def device(request: Request) -> Response:
        return JSONResponse(device_json(c.device(request.path_params["id"])))

    def device_action(request: Request) -> Response:
        action = request.path_params["action"]
        if action not in DEVICE_ACTIONS or action == "delete":
            raise NotFound(f"no action {action!r}")
        return JSONResponse(device_json(c.device_action(request.path_params["id"], action, actor=request.state.actor)))

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
        return JSONResponse(events)

    def rules(request: Request) -> Response:
        return JSONResponse(c.rules())

    def rule_add(request: Request, body: NewRule) -> Response:
        return JSONResponse(c.add_rule(body.model_dump(exclude_unset=True), actor=request.state.actor), status_code=201)

    def rule_delete(request: Request) -> Response:
        c.delete_rule(request.path_params["id"], actor=request.state.actor)
        return Response(status_code=204)

    def rule_move(request: Request, body: Move) -> Response:
        return JSONResponse(c.move_rule(request.path_params["id"], body.position, actor=request.state.actor))

    def policies(request: Request) -> Response:
        return JSONResponse(c.rules()["group_policies"])

    def policy_add(request: Request, body: NewPolicy) -> Response:
        return JSONResponse(
            c.add_policy(body.model_dump(exclude_unset=True), actor=request.state.actor), status_code=201
        )

    def policy_delete(request: Request) -> Response:
        c.delete_policy(request.path_params["id"], actor=request.state.actor)
        return Response(status_code=204)

    def policy_move(request: Request, body: Move) -> Response:
        return JSONResponse(c.move_policy(request.path_params["id"], body.position, actor=request.state.actor))

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


# --- the OpenAPI document ----------------------------------------------------------------------
_ERR = {"$ref": "#/components/schemas/Error"}


def _json(schema: dict) -> dict:
    return {"application/json": {"schema": schema}}


def _errs(*codes: int) -> dict:
    text = {
        400: "Bad input; `field` names it",
        401: "No or invalid API token",
        403: "The token's role does not allow this",
        404: "No such object",
    }
    return {str(c): {"description": text[c], "content": _json(_ERR)} for c in codes}


def _ok(schema: dict, desc: str = "OK", code: str = "200") -> dict:
    return {code: {"description": desc, "content": _json(schema)}}


_USER = {"name": "username", "in": "path", "required": True, "schema": {"type": "string"}}
_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "integer", "format": "int64"}}
_Q = lambda n, **s: {"name": n, "in": "query", "required": False, "schema": {"type": "string", **s}}  # noqa: E731
_OBJ = {"type": "object"}
_DEV = {"$ref": "#/components/schemas/Device"}
_RULE = {"$ref": "#/components/schemas/Rule"}
_POLICY = {"$ref": "#/components/schemas/Policy"}
_NULL_INT = {"anyOf": [{"type": "integer"}, {"type": "null"}]}
_GLOB = {"type": "string", "maxLength": 256, "description": "a glob, case-insensitive"}
_RULE_FIELDS = {
    "name": {"type": "string", "minLength": 1, "maxLength": 128},
    "action": {"type": "string", "enum": ["allowed", "quarantined", "blocked"]},
    "device_type": _GLOB,
    "model": _GLOB,
    "os": _GLOB,
    "user_agent": _GLOB,
    "client_kind": _GLOB,
    "groups": {"type": "array", "maxItems": 64, "items": {"type": "string", "maxLength": 1024}},
}
_POLICY_SETTINGS = {"$ref": "#/components/schemas/PolicySettings"}
# The request bodies' schemas come from the models above; the answers' are written here.
_MODEL_NAMES, _MODEL_SCHEMAS = component_schemas([UserState, AspRequest, Move, NewRule, NewPolicy])
# One example per request body, in the document and validated by the tests.
EXAMPLES: dict[type[Body], dict[str, Any]] = {
    UserState: {"enabled": False},
    AspRequest: {"label": "iPhone mail", "device_id": "ApplDEV1"},
    Move: {"position": 1},
    NewRule: {"name": "no-android", "action": "quarantined", "client_kind": "android", "position": 1},
    NewPolicy: {"group": "ucgate-executives", "settings": {"max_devices": 1, "certprov": "deny"}},
}


def _request(model: type[Body]) -> dict[str, Any]:
    return {
        "required": True,
        "content": {
            "application/json": {
                "schema": {"$ref": f"#/components/schemas/{_MODEL_NAMES[model.__name__]}"},
                "example": EXAMPLES[model],
            }
        },
    }


OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "ucgate admin API",
        "version": "1",
        "description": "Everything the admin UI does. `Authorization: Bearer <token>` from "
        "`ucgate api-token create --role admin|helpdesk|auditor`.",
    },
    "paths": {
        "/api/v1/dashboard": {
            "get": {
                "operationId": "dashboard",
                "summary": "Live sessions, activity, quarantine",
                "responses": {**_ok(_OBJ), **_errs(401, 403)},
            }
        },
        "/api/v1/users": {
            "get": {
                "operationId": "listUsers",
                "parameters": [_Q("q", maxLength=256)],
                "responses": {**_ok({"type": "array", "items": _OBJ}), **_errs(400, 401, 403)},
            }
        },
        "/api/v1/users/{username}": {
            "get": {"operationId": "getUser", "parameters": [_USER], "responses": {**_ok(_OBJ), **_errs(401, 403, 404)}}
        },
        "/api/v1/users/{username}/state": {
            "put": {
                "operationId": "setUserEnabled",
                "parameters": [_USER],
                "requestBody": _request(UserState),
                "responses": {**_ok(_OBJ), **_errs(400, 401, 403, 404)},
            }
        },
        "/api/v1/users/{username}/asps": {
            "post": {
                "operationId": "createAsp",
                "summary": "Issue an ASP; the password is in this answer only",
                "parameters": [_USER],
                "requestBody": _request(AspRequest),
                "responses": {
                    **_ok({"$ref": "#/components/schemas/NewAsp"}, "Created", "201"),
                    **_errs(400, 401, 403, 404),
                },
            }
        },
        "/api/v1/users/{username}/otp": {
            "delete": {
                "operationId": "resetOtp",
                "parameters": [_USER],
                "responses": {**_ok(_OBJ), **_errs(401, 403, 404)},
            }
        },
        "/api/v1/users/{username}/sign-out": {
            "post": {
                "operationId": "signOutUser",
                "summary": "Close the user's live sessions on every gateway now",
                "parameters": [_USER],
                "responses": {**_ok(_OBJ), **_errs(401, 403, 404)},
            }
        },
        "/api/v1/asps/{asp_id}": {
            "delete": {
                "operationId": "revokeAsp",
                "parameters": [{"name": "asp_id", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {**_ok(_OBJ), **_errs(401, 403, 404)},
            }
        },
        "/api/v1/devices": {
            "get": {
                "operationId": "listDevices",
                "parameters": [
                    _Q("user", maxLength=256),
                    _Q("type", maxLength=256),
                    _Q("state", enum=list(DEVICE_STATES)),
                ],
                "responses": {**_ok({"type": "array", "items": _DEV}), **_errs(400, 401, 403)},
            }
        },
        "/api/v1/devices/{id}": {
            "get": {
                "operationId": "getDevice",
                "parameters": [_ID],
                "responses": {**_ok(_DEV), **_errs(401, 403, 404)},
            },
            "delete": {
                "operationId": "deleteDevice",
                "parameters": [_ID],
                "responses": {"204": {"description": "Deleted"}, **_errs(401, 403, 404)},
            },
        },
        "/api/v1/devices/{id}/{action}": {
            "post": {
                "operationId": "deviceAction",
                "parameters": [
                    _ID,
                    {
                        "name": "action",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "enum": ["approve", "block", "unblock", "wipe"]},
                    },
                ],
                "responses": {**_ok(_DEV), **_errs(401, 403, 404)},
            }
        },
        "/api/v1/audit": {
            "get": {
                "operationId": "audit",
                "parameters": [
                    _Q("user", maxLength=256),
                    _Q("action", maxLength=256),
                    _Q("result", maxLength=256),
                    _Q("q", maxLength=256),
                    _Q("limit", pattern="^[0-9]{1,4}$"),
                    _Q("format", enum=["json", "csv"]),
                ],
                "responses": {
                    "200": {
                        "description": "Events, newest first",
                        "content": {
                            "application/json": {"schema": {"type": "array", "items": _OBJ}},
                            "text/csv": {"schema": {"type": "string"}},
                        },
                    },
                    **_errs(400, 401, 403),
                },
            }
        },
        "/api/v1/rules": {
            "get": {
                "operationId": "rules",
                "summary": "Device rules and group policies in force: the "
                "configuration file's (source file, read-only) first, then the store's",
                "responses": {**_ok({"$ref": "#/components/schemas/Rules"}), **_errs(401, 403)},
            },
            "post": {
                "operationId": "addRule",
                "summary": "Add a device rule to the store's list; in force on every node within a second",
                "requestBody": _request(NewRule),
                "responses": {**_ok(_RULE, "Created", "201"), **_errs(400, 401, 403)},
            },
        },
        "/api/v1/rules/{id}": {
            "delete": {
                "operationId": "deleteRule",
                "parameters": [_ID],
                "responses": {"204": {"description": "Deleted"}, **_errs(401, 403, 404)},
            }
        },
        "/api/v1/rules/{id}/move": {
            "post": {
                "operationId": "moveRule",
                "parameters": [_ID],
                "requestBody": _request(Move),
                "responses": {**_ok(_RULE), **_errs(400, 401, 403, 404)},
            }
        },
        "/api/v1/policies": {
            "get": {
                "operationId": "policies",
                "summary": "Group policies, the file's first, then the store's",
                "responses": {**_ok({"type": "array", "items": _POLICY}), **_errs(401, 403)},
            },
            "post": {
                "operationId": "addPolicy",
                "summary": "Add a group policy to the store's list",
                "requestBody": _request(NewPolicy),
                "responses": {**_ok(_POLICY, "Created", "201"), **_errs(400, 401, 403)},
            },
        },
        "/api/v1/policies/{id}": {
            "delete": {
                "operationId": "deletePolicy",
                "parameters": [_ID],
                "responses": {"204": {"description": "Deleted"}, **_errs(401, 403, 404)},
            }
        },
        "/api/v1/policies/{id}/move": {
            "post": {
                "operationId": "movePolicy",
                "parameters": [_ID],
                "requestBody": _request(Move),
                "responses": {**_ok(_POLICY), **_errs(400, 401, 403, 404)},
            }
        },
        "/api/v1/settings": {
            "get": {
                "operationId": "settings",
                "summary": "Effective configuration, secrets masked",
                "responses": {**_ok(_OBJ), **_errs(401, 403)},
            }
        },
        "/api/v1/openapi.json": {"get": {"operationId": "openapi", "security": [], "responses": _ok(_OBJ)}},
    },
    "components": {
        "securitySchemes": {"apiToken": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            **_MODEL_SCHEMAS,
            "Device": {
                "type": "object",
                "required": ["id", "username", "device_id", "state"],
                "properties": {
                    "id": {"type": "integer"},
                    "username": {"type": "string"},
                    "device_id": {"type": "string"},
                    "state": {"type": "string", "enum": list(DEVICE_STATES)},
                    "client_kind": {"type": "string"},
                    "wipe_pending": {"type": "boolean"},
                },
            },
            "Rule": {
                "type": "object",
                "required": ["source", "id", "position", "name", "action"],
                "properties": {
                    "source": {"type": "string", "enum": ["file", "store"]},
                    "id": {**_NULL_INT, "description": "null for the file's rules"},
                    "position": {"type": "integer"},
                    **_RULE_FIELDS,
                },
            },
            "Policy": {
                "type": "object",
                "required": ["source", "id", "position", "group", "settings"],
                "properties": {
                    "source": {"type": "string", "enum": ["file", "store"]},
                    "id": _NULL_INT,
                    "position": {"type": "integer"},
                    "name": {"type": "string"},
                    "group": {"type": "string"},
                    "settings": _POLICY_SETTINGS,
                },
            },
            "Rules": {
                "type": "object",
                "properties": {
                    "device_rules": {"type": "array", "items": _RULE},
                    "group_policies": {"type": "array", "items": _POLICY},
                    "defaults": _OBJ,
                    "two_factor": {"type": ["object", "null"]},
                },
            },
            "NewAsp": {
                "type": "object",
                "required": ["id", "password"],
                "properties": {"id": {"type": "string"}, "label": {"type": "string"}, "password": {"type": "string"}},
            },
            "Error": {
                "type": "object",
                "required": ["error", "message"],
                "properties": {"error": {"type": "string"}, "field": {"type": "string"}, "message": {"type": "string"}},
            },
        },
    },
    "security": [{"apiToken": []}],
}
