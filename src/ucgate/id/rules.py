"""Device access rules and group policies kept in the store: validate, change, audit, announce.

The admin UI, the REST API (``/api/v1/rules``, ``/api/v1/policies``) and the CLI (``ucgate
device rules|policy ...``) all go through :class:`RuleService`. Each change is written with a
``rules-changed`` event in the same transaction (``ucgate.store.rules``), audited
(``rules.add|delete|move``, ``policy.add|delete|move``, with the acting account), and delivered
after the commit to this process's row subscribers; every other process's event follower
delivers it within a second. Each ``DeviceService`` reloads its lists on it.

**Which wins with the configuration file**: the file's ``[[devices.rules]]`` come first, in the
file's order, then the store's; likewise the file's ``[[policy]]`` entries, then the store's
(the first group the user is in wins). The file's entries are read-only here (edit the file and
reload); the store's are edited here. So a rule in the file cannot be overridden from the UI,
and configuration management keeps the last word over what it manages.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, overload

from ..policy import devices as policy
from ..policy.groups import GroupPolicy as GroupEntry
from ..store.rules import RULE_CRITERIA, RuleStore, StoredPolicy, StoredRule
from .events import RULES_CHANGED, RowPending

MAX_NAME = 128
MAX_GROUP = 1024
MAX_GROUPS = 64
ACTIONS = ("allowed", "quarantined", "blocked")
POLICY_KEYS = {
    "max_devices": int,
    "trust_lifetime_hours": float,
    "certprov": str,
    "default_action": str,
    "problem_action": str,
    "require_second_factor": bool,
}


class RuleError(ValueError):
    """Bad input; ``field`` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


class RuleNotFound(LookupError):
    pass


@overload
def _text(data: Mapping[str, Any], key: str, *, required: Literal[True], limit: int = 256) -> str: ...
@overload
def _text(data: Mapping[str, Any], key: str, *, required: bool = False, limit: int = 256) -> str | None: ...
def _text(data: Mapping[str, Any], key: str, *, required: bool = False, limit: int = 256) -> str | None:
    v = data.get(key)
    if v is None or v == "":
        if required:
            raise RuleError(key, "required")
        return None
    if not isinstance(v, str):
        raise RuleError(key, "expected a string")
    if len(v) > limit or any(ord(c) < 0x20 or ord(c) == 0x7F for c in v):
        raise RuleError(key, f"at most {limit} characters, no control characters")
    return v


def _position(v: Any) -> int | None:
    if v is None or v == "":
        return None
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 100_000:
        raise RuleError("position", "expected an integer from 1 (first)")
    return v


def validate_rule(data: Mapping[str, Any]) -> dict[str, Any]:
    """The columns of a rule from user input (a JSON object, a form, CLI options).

    Raises:
        RuleError: naming the field.
    """
    unknown = set(data) - {"name", "action", "groups", "position", *RULE_CRITERIA}
    if unknown:
        raise RuleError(sorted(unknown)[0], "unknown field")
    name = _text(data, "name", required=True, limit=MAX_NAME)
    action = _text(data, "action", required=True, limit=16)
    if action not in ACTIONS:
        raise RuleError("action", f"expected one of {', '.join(ACTIONS)}")
    groups = data.get("groups") or []
    if not isinstance(groups, (list, tuple)) or len(groups) > MAX_GROUPS:
        raise RuleError("groups", f"expected a list of at most {MAX_GROUPS} group names or DNs")
    clean_groups = []
    for g in groups:
        if not isinstance(g, str) or not g.strip() or len(g) > MAX_GROUP or any(ord(c) < 0x20 for c in g):
            raise RuleError("groups", "each group is a non-empty name or DN, no control characters")
        clean_groups.append(g.strip())
    criteria = {k: _text(data, k, limit=policy.MAX_PATTERN_CHARS) for k in RULE_CRITERIA}
    try:
        policy.DeviceRule(action=policy.PartnershipState(action), groups=frozenset(clean_groups), name=name, **criteria)
    except ValueError as e:
        raise RuleError("client_kind" if "client_kind" in str(e) else "action", str(e)) from None
    return {"name": name, "action": action, "groups": tuple(clean_groups), **criteria}


def validate_policy(data: Mapping[str, Any]) -> dict[str, Any]:
    """``{"group", "name"?, "settings": {...}}`` -> columns. Raises RuleError."""
    unknown = set(data) - {"group", "name", "settings", "position"}
    if unknown:
        raise RuleError(sorted(unknown)[0], "unknown field")
    group = _text(data, "group", required=True, limit=MAX_GROUP)
    name = _text(data, "name", limit=MAX_NAME) or group[:MAX_NAME]
    settings = data.get("settings") or {}
    if not isinstance(settings, Mapping):
        raise RuleError("settings", "expected an object")
    if not settings:
        raise RuleError("settings", f"set at least one of {', '.join(POLICY_KEYS)}")
    out: dict[str, Any] = {}
    for key, value in settings.items():
        kind = POLICY_KEYS.get(key)
        if kind is None:
            raise RuleError(f"settings.{key}", f"unknown setting; known: {', '.join(POLICY_KEYS)}")
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(value, bool) != (kind is bool) or not isinstance(value, kind):
            raise RuleError(f"settings.{key}", f"expected {kind.__name__}")
        if key in ("default_action", "problem_action") and value not in ACTIONS:
            raise RuleError(f"settings.{key}", f"expected one of {', '.join(ACTIONS)}")
        if key == "certprov" and value not in ("allowed-only", "deny"):
            raise RuleError(f"settings.{key}", 'expected "allowed-only" or "deny"')
        out[key] = value
    try:
        policy.GroupPolicy(**out)
    except ValueError as e:
        bad = next((k for k in out if k in str(e)), next(iter(out)))
        raise RuleError(f"settings.{bad}", str(e)) from None
    return {"group": group, "name": name, "settings": out}


def device_rule(rec: StoredRule) -> policy.DeviceRule:
    return policy.DeviceRule(
        action=policy.PartnershipState(rec.action),
        groups=frozenset(rec.groups),
        name=rec.name,
        **{k: getattr(rec, k) for k in RULE_CRITERIA},
    )


def group_entry(rec: StoredPolicy) -> GroupEntry:
    policy.GroupPolicy(**rec.settings)  # refuses a row this version cannot apply
    return GroupEntry(name=rec.name, group=rec.group, settings=dict(rec.settings))


class RuleService:
    """Args:
    store: the rows (``ucgate.store.rules.RuleStore``).
    audit: an ``AuditLog``.
    bus: an ``EventBus``: after the commit, this process's DeviceServices reload at once.
    """

    def __init__(self, store: RuleStore, audit: Any, bus: Any = None) -> None:
        self.store = store
        self.audit = audit
        self.bus = bus

    def rules(self) -> list[StoredRule]:
        return self.store.rules()

    def policies(self) -> list[StoredPolicy]:
        return self.store.policies()

    def _done(self, pending: RowPending, action: str, actor: str, **details: Any) -> None:
        self.audit.record(action, actor=actor, result="ok", **details)
        if self.bus is not None:
            self.bus.committed(pending)

    # --- device rules ----------------------------------------------------------------------
    def add_rule(self, data: Mapping[str, Any], *, actor: str) -> StoredRule:
        values = validate_rule(data)
        position = _position(data.get("position"))
        pending = RowPending(RULES_CHANGED, f"device rule added: {values['name']}"[:128], actor)
        rec = self.store.add_rule(position=position, created_by=actor, event=pending, **values)
        self._done(
            pending,
            "rules.add",
            actor,
            rule_id=rec.id,
            rule=rec.name,
            position=rec.position,
            rule_action=rec.action,
            **{k: v for k, v in values.items() if k in RULE_CRITERIA and v},
            groups=list(rec.groups),
        )
        return rec

    def delete_rule(self, rule_id: int, *, actor: str) -> StoredRule:
        rec = self._rule(rule_id)
        pending = RowPending(RULES_CHANGED, f"device rule deleted: {rec.name}"[:128], actor)
        if not self.store.delete_rule(rec.id, event=pending):
            raise RuleNotFound(f"no device rule with id {rule_id}")
        self._done(pending, "rules.delete", actor, rule_id=rec.id, rule=rec.name)
        return rec

    def move_rule(self, rule_id: int, position: Any, *, actor: str) -> StoredRule:
        pos = _position(position)
        if pos is None:
            raise RuleError("position", "required")
        rec = self._rule(rule_id)
        pending = RowPending(RULES_CHANGED, f"device rule moved: {rec.name}"[:128], actor)
        new = self.store.move_rule(rec.id, pos, event=pending)
        if new is None:
            raise RuleNotFound(f"no device rule with id {rule_id}")
        self._done(
            pending,
            "rules.move",
            actor,
            rule_id=rec.id,
            rule=rec.name,
            old_position=rec.position,
            position=new.position,
        )
        return new

    def _rule(self, rule_id: int) -> StoredRule:
        rec = self.store.rule(rule_id) if 0 < rule_id < 2**63 else None
        if rec is None:
            raise RuleNotFound(f"no device rule with id {rule_id}")
        return rec

    # --- group policies ----------------------------------------------------------------------
    def add_policy(self, data: Mapping[str, Any], *, actor: str) -> StoredPolicy:
        values = validate_policy(data)
        position = _position(data.get("position"))
        pending = RowPending(RULES_CHANGED, f"group policy added: {values['name']}"[:128], actor)
        rec = self.store.add_policy(position=position, created_by=actor, event=pending, **values)
        self._done(
            pending,
            "policy.add",
            actor,
            policy_id=rec.id,
            policy=rec.name,
            group=rec.group,
            position=rec.position,
            settings=dict(rec.settings),
        )
        return rec

    def delete_policy(self, policy_id: int, *, actor: str) -> StoredPolicy:
        rec = self._policy(policy_id)
        pending = RowPending(RULES_CHANGED, f"group policy deleted: {rec.name}"[:128], actor)
        if not self.store.delete_policy(rec.id, event=pending):
            raise RuleNotFound(f"no group policy with id {policy_id}")
        self._done(pending, "policy.delete", actor, policy_id=rec.id, policy=rec.name, group=rec.group)
        return rec

    def move_policy(self, policy_id: int, position: Any, *, actor: str) -> StoredPolicy:
        pos = _position(position)
        if pos is None:
            raise RuleError("position", "required")
        rec = self._policy(policy_id)
        pending = RowPending(RULES_CHANGED, f"group policy moved: {rec.name}"[:128], actor)
        new = self.store.move_policy(rec.id, pos, event=pending)
        if new is None:
            raise RuleNotFound(f"no group policy with id {policy_id}")
        self._done(
            pending,
            "policy.move",
            actor,
            policy_id=rec.id,
            policy=rec.name,
            old_position=rec.position,
            position=new.position,
        )
        return new

    def _policy(self, policy_id: int) -> StoredPolicy:
        rec = self.store.policy(policy_id) if 0 < policy_id < 2**63 else None
        if rec is None:
            raise RuleNotFound(f"no group policy with id {policy_id}")
        return rec
