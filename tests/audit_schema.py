"""The audit event schema (docs/audit-event.schema.json) as a validator, and the hook that
checks every event the test suite records (installed by tests/conftest.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "docs" / "audit-event.schema.json"
SCHEMA = json.loads(SCHEMA_PATH.read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA, format_checker=jsonschema.FormatChecker())


def problems(event: dict[str, Any]) -> list[str]:
    """What is wrong with one event ([] when it follows the schema)."""
    return [f"{'/'.join(map(str, e.absolute_path)) or '<event>'}: {e.message}" for e in VALIDATOR.iter_errors(event)]


class AuditSchemaHook:
    """Wraps ``AuditLog._emit`` (every stored event passes there, with its id, whether written
    at once by ``record`` or by the sign-in writer for ``record_later``): each event is
    validated; bad ones are kept in ``self.bad`` (the per-test fixture fails the test that
    wrote them)."""

    def __init__(self) -> None:
        self.bad: list[tuple[dict[str, Any], list[str]]] = []
        self.checked = 0

    def install(self, mp) -> None:
        from ucgate.id import audit

        original = audit.AuditLog._emit
        hook = self

        def record(self, *args: Any, **kw: Any):
            ev = original(self, *args, **kw)
            event = audit.to_json(ev)
            hook.checked += 1
            found = problems(event)
            if found:
                hook.bad.append((event, found))
            return ev

        mp.setattr(audit.AuditLog, "_emit", record)
