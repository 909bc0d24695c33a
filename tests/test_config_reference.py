"""The README's configuration reference and the configuration's models hold the same keys, and a
wrong value for any of them is a ConfigError naming the file and the key (issue 15)."""

from __future__ import annotations

import re
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from ucgate import config
from ucgate.config import ConfigError, from_dict
from ucgate.gateway import sipconfig
from ucgate.web import settings as web_settings

ROOT = Path(__file__).resolve().parents[1]
# tables whose names are the user's: [upstreams.<name>], [services.<name>]
NAMED = {"upstreams", "services"}
# lists of tables: [[devices.rules]], [[policy]]
LISTS = {"devices.rules", "devices.user_agents", "policy"}
_KEY = re.compile(r'^(?:#\s*)?([A-Za-z_][\w-]*|"[^"]+")\s*=')
_HEADER = re.compile(r"^(?:#\s*)?\[\[?([\w.\-\"]+)\]\]?")


def _block(text: str, start: str) -> list[str]:
    i = text.index(start)
    body = text[text.index("```toml", i) + len("```toml") :]
    return body[: body.index("```")].splitlines()


def _documented(lines: list[str]) -> dict[str, set[str]]:
    """table -> keys written in the block, assignments and commented-out ones (``# key = ...``)."""
    out: dict[str, set[str]] = {"": set()}
    table = ""
    for line in lines:
        line = line.strip()
        if m := _HEADER.match(line):
            parts = m.group(1).split(".")
            if parts[0] in NAMED and len(parts) > 1:
                parts[1] = "*"
            table = ".".join(parts)
            out.setdefault(table, set())
            for i, key in enumerate(parts):  # a table is itself a key of its parent
                if key != "*":
                    out.setdefault(".".join(parts[:i]), set()).add(key)
        elif m := _KEY.match(line):
            out[table].add(m.group(1).strip('"'))
    return out


def _models_of(annotation: object) -> list[tuple[type[BaseModel], str]]:
    """The table models in a field's type: (model, how its tables are named: "", "*" or "[]")."""
    if isinstance(annotation, type) and (
        issubclass(annotation, BaseModel) or hasattr(annotation, "__pydantic_fields__")
    ):
        return [(annotation, "")]
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is dict and len(args) == 2:
        return [(m, "*") for m, _ in _models_of(args[1])]
    if origin is tuple and args and args[-1] is Ellipsis:
        return [(m, "[]") for m, _ in _models_of(args[0])]
    return [m for a in args for m in _models_of(a)]


def model_keys(model: type[BaseModel] = config.ConfigFile, table: str = "") -> dict[str, set[str]]:
    """table -> its keys, walking the models from the top of the file."""
    out: dict[str, set[str]] = {table: set()}
    for key, f in config.toml_keys(model).items():
        out[table].add(key)
        for sub, how in _models_of(f.annotation):
            name = f"{table}.{key}" if table else key
            out.update(model_keys(sub, f"{name}.*" if how == "*" else name))
    return out


def all_keys() -> dict[str, set[str]]:
    keys = model_keys()
    keys.update(model_keys(web_settings.WebConfig, "web"))
    keys.update(model_keys(sipconfig.SipConfig, "sip"))
    # [web.users] and [web.groups] are maps of the user's names
    keys["web.users"] = keys["web.groups"] = set()
    return keys


def readme_keys() -> dict[str, set[str]]:
    doc = _documented(_block((ROOT / "README.md").read_text(), "## Configuration reference"))
    doc["web.users"] = doc["web.groups"] = set()
    return doc


def test_every_key_of_the_models_is_in_the_reference():
    keys, doc = all_keys(), readme_keys()
    missing = sorted(f"{t}.{k}" if t else k for t, ks in keys.items() for k in ks - doc.get(t, set()))
    assert not missing, f"README's configuration reference lacks: {', '.join(missing)}"


def test_every_key_in_the_reference_exists():
    keys, doc = all_keys(), readme_keys()
    unknown = sorted(f"{t}.{k}" if t else k for t, ks in doc.items() for k in ks - keys.get(t, set()))
    assert not unknown, f"README documents keys no model reads: {', '.join(unknown)}"


def _documented_keys() -> list[tuple[str, str]]:
    return sorted((t, k) for t, ks in readme_keys().items() for k in ks)


def _with(table: str, key: str, value: object) -> tuple[dict, str]:
    """A valid configuration with ``value`` at ``table.key``, and the dotted key of the error."""
    raw: dict = {"gateway": {"plain_http": True}, "upstreams": {"frontend": {"url": "http://127.0.0.1:1"}}}
    node, dotted = raw, []
    for part in table.split(".") if table else []:
        if part == "*":
            part = "frontend" if dotted == ["upstreams"] else "eas"
        if ".".join(dotted + [part]) in LISTS:
            node = node.setdefault(part, [{}])[0]
            dotted.append(f"{part}[0]")
        else:
            node = node.setdefault(part, {})
            dotted.append(part)
    node[key] = value
    return raw, ".".join(dotted + [key]).replace(".[", "[")


@pytest.mark.parametrize(("table", "key"), _documented_keys())
def test_a_wrong_value_names_the_file_and_the_key(tmp_path, table, key):
    path = tmp_path / "ucgate.toml"
    # 5 is wrong for every key but a number's; "x" for those
    errors = []
    for value in (5, "x"):
        raw, dotted = _with(table, key, value)
        try:
            from_dict(raw, path=path)
        except ConfigError as e:
            msg = str(e)
            if msg.startswith(f"{path}: {dotted}: ") or msg == f"{path}: [{dotted}] must be a table":
                return
            errors.append(msg)
    pytest.fail(f"{table}.{key}: neither 5 nor 'x' was refused with the key named: {errors}")
