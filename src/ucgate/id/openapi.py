"""OpenAPI 3.1 documents built from a table of operations and the pydantic models of the bodies.

One generator for the id service's API (:mod:`ucgate.id.http_api`) and the REST API
(:mod:`ucgate.web.api`): no schema is written by hand, so a document cannot drift from the models
the servers validate requests with and build their answers from.

A body in the table is one of:

* ``None``: no body;
* a model class: ``application/json``, a ``$ref`` to its schema (with its example, if any);
* ``list[Model]``: ``application/json``, an array of them;
* a media type (a string with a ``/``, e.g. ``text/event-stream``): that type, a string;
* any other string: ``application/json`` of that JSON type (``"object"``);
* a dict ``{media type: body}``: each media type with its body as above.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple, get_args, get_origin

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema


class Operation(NamedTuple):
    """One operation of a document."""

    path: str
    method: str
    op_id: str
    summary: str
    description: str
    request: type[BaseModel] | None
    answer: tuple[str, str, Any]  # (status code, description, body)
    errors: tuple[int, ...]  # the error answers' status codes, each with the error model's body
    public: bool = False  # needs no credential
    parameters: tuple[dict[str, Any], ...] = ()
    more: tuple[tuple[str, str, Any], ...] = ()  # further answers, as ``answer``


def schema_name(model: type[BaseModel]) -> str:
    """The name of a model's schema in ``components.schemas``: its title."""
    return str(model.model_config.get("title") or model.__name__)


def component_schemas(models: list[type[BaseModel]]) -> tuple[dict[str, str], dict[str, Any]]:
    """The JSON Schemas of ``models`` and of what they use, for ``components.schemas``, each named
    by its title (``Context``, ``Verdict``...); and the name of each model's schema."""
    _, top = models_json_schema([(m, "validation") for m in models], ref_template="#/components/schemas/{model}")
    defs = top.get("$defs", {})
    rename = {key: schema.get("title", key) for key, schema in defs.items()}
    if len(set(rename.values())) != len(rename):
        raise ValueError(f"two models share a title: {sorted(rename.values())}")
    text = json.dumps(defs)
    for key, title in rename.items():
        text = text.replace(f'"#/components/schemas/{key}"', f'"#/components/schemas/{title}"')
    schemas = {rename[k]: v for k, v in json.loads(text).items()}
    return {m.__name__: schema_name(m) for m in models}, schemas


def _models(body: Any) -> list[type[BaseModel]]:
    if isinstance(body, type) and issubclass(body, BaseModel):
        return [body]
    if get_origin(body) is list:
        return _models(get_args(body)[0])
    if isinstance(body, dict):
        return [m for b in body.values() for m in _models(b)]
    return []


def document(
    *,
    title: str,
    description: str,
    operations: tuple[Operation, ...],
    security: str,
    error_model: type[BaseModel],
    error_text: dict[int, str],
    examples: dict[type, Any],
    models: tuple[type[BaseModel], ...] = (),
) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``operations``; every call needs the bearer credential named
    ``security`` but the public ones; ``examples``: one example body per model, where given;
    ``models``: more schemas for ``components`` (bodies no operation names, e.g. an event's)."""
    found = [
        m
        for op in operations
        for body in (op.request, op.answer[2], *(b for _, _, b in op.more))
        for m in _models(body)
    ]
    names, schemas = component_schemas(list(dict.fromkeys([*found, error_model, *models])))

    def schema(body: Any) -> dict[str, Any]:
        if get_origin(body) is list:
            return {"type": "array", "items": schema(get_args(body)[0])}
        if isinstance(body, type):
            return {"$ref": f"#/components/schemas/{names[body.__name__]}"}
        return {"type": body}

    def content(body: Any) -> dict[str, Any] | None:
        if body is None:
            return None
        if isinstance(body, dict):
            return {media: next(iter(content(b).values())) for media, b in body.items()}  # type: ignore[union-attr]
        if isinstance(body, str) and "/" in body:
            return {body: {"schema": {"type": "string"}}}
        media: dict[str, Any] = {"schema": schema(body)}
        if isinstance(body, type) and body in examples:
            media["example"] = examples[body]
        return {"application/json": media}

    def answer(code: str, desc: str, body: Any) -> dict[str, Any]:
        out: dict[str, Any] = {"description": desc}
        if body is not None:
            out["content"] = content(body)
        return {code: out}

    paths: dict[str, Any] = {}
    for op in operations:
        out: dict[str, Any] = {"summary": op.summary, "operationId": op.op_id}
        if op.description:
            out["description"] = op.description
        if op.public:
            out["security"] = []
        if op.parameters:
            out["parameters"] = list(op.parameters)
        if op.request is not None:
            out["requestBody"] = {"required": True, "content": content(op.request)}
        responses = answer(*op.answer)
        for more in op.more:
            responses.update(answer(*more))
        for c in op.errors:
            responses.update(answer(str(c), error_text[c], error_model))
        out["responses"] = responses
        paths.setdefault(op.path, {})[op.method] = out
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": "1", "description": description},
        "paths": paths,
        "components": {
            "securitySchemes": {security: {"type": "http", "scheme": "bearer"}},
            "schemas": schemas,
        },
        "security": [{security: []}],
    }
