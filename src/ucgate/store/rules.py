"""Device access rules and per-group device policies in the store (SQLAlchemy Core).

Two ordered lists, ``device_rules`` and ``group_policies`` (``schema.py``, migration 0006), each
row at a ``position`` 1..n without gaps. Every change (add, delete, move) rewrites the positions
and writes its outbox event (``event``: a ``ucgate.id.events`` pending row) **in the same
transaction**, so that every process reloads the lists within a second (``ucgate.id.devices``).
What a rule or a policy means, and its validation, is ``ucgate.id.rules``' business; this
module only stores and orders.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Table, delete, func, insert, select, update

from .engine import Transactions
from .outbox import append_pending
from .schema import device_rules, group_policies

RULE_CRITERIA = ("device_type", "model", "os", "user_agent", "client_kind")


@dataclass(frozen=True)
class StoredRule:
    id: int
    position: int
    name: str
    action: str
    groups: tuple[str, ...] = ()
    device_type: str | None = None
    model: str | None = None
    os: str | None = None
    user_agent: str | None = None
    client_kind: str | None = None
    created_at: datetime | None = None
    created_by: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "position": self.position,
            "name": self.name,
            "action": self.action,
            **{k: getattr(self, k) for k in RULE_CRITERIA},
            "groups": list(self.groups),
            "created_at": self.created_at.isoformat() if self.created_at else None,
            "created_by": self.created_by,
        }


@dataclass(frozen=True)
class StoredPolicy:
    id: int
    position: int
    name: str
    group: str
    settings: dict[str, Any] = field(default_factory=dict)
    created_at: datetime | None = None
    created_by: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "position": self.position,
            "name": self.name,
            "group": self.group,
            "settings": dict(self.settings),
            "created_at": self.created_at.isoformat() if self.created_at else None,
            "created_by": self.created_by,
        }


def _rule(row: Any) -> StoredRule:
    m = dict(row._mapping)
    m["groups"] = tuple(m.get("groups") or ())
    return StoredRule(**m)


def _policy(row: Any) -> StoredPolicy:
    m = dict(row._mapping)
    return StoredPolicy(
        id=m["id"],
        position=m["position"],
        name=m["name"],
        group=m["group_name"],
        settings=dict(m["settings"] or {}),
        created_at=m["created_at"],
        created_by=m["created_by"],
    )


class RuleStore(Transactions):
    """The two lists over an engine shared with ``SqlRepository`` (which migrates the schema).
    Thread-safe; one short transaction per call."""

    # --- reading -------------------------------------------------------------------------
    def rules(self) -> list[StoredRule]:
        with self._read() as c:
            return [
                _rule(r) for r in c.execute(select(device_rules).order_by(device_rules.c.position, device_rules.c.id))
            ]

    def policies(self) -> list[StoredPolicy]:
        with self._read() as c:
            return [
                _policy(r)
                for r in c.execute(select(group_policies).order_by(group_policies.c.position, group_policies.c.id))
            ]

    def rule(self, rule_id: int) -> StoredRule | None:
        with self._read() as c:
            row = c.execute(select(device_rules).where(device_rules.c.id == rule_id)).first()
        return _rule(row) if row else None

    def policy(self, policy_id: int) -> StoredPolicy | None:
        with self._read() as c:
            row = c.execute(select(group_policies).where(group_policies.c.id == policy_id)).first()
        return _policy(row) if row else None

    # --- writing -------------------------------------------------------------------------
    def add_rule(
        self,
        *,
        name: str,
        action: str,
        groups: tuple[str, ...] = (),
        position: int | None = None,
        created_by: str,
        event: Any = None,
        **criteria: str | None,
    ) -> StoredRule:
        """Insert a rule at ``position`` (1 = first; None or past the end: last)."""
        unknown = set(criteria) - set(RULE_CRITERIA)
        if unknown:
            raise ValueError(f"unknown rule field(s): {', '.join(sorted(unknown))}")
        values = dict(
            name=name,
            action=action,
            groups=list(groups),
            created_by=created_by,
            created_at=datetime.now(UTC),
            **criteria,
        )
        new_id = self._insert(device_rules, values, position, event)
        rec = self.rule(new_id)
        assert rec is not None
        return rec

    def add_policy(
        self,
        *,
        name: str,
        group: str,
        settings: dict[str, Any],
        position: int | None = None,
        created_by: str,
        event: Any = None,
    ) -> StoredPolicy:
        values = dict(
            name=name, group_name=group, settings=dict(settings), created_by=created_by, created_at=datetime.now(UTC)
        )
        new_id = self._insert(group_policies, values, position, event)
        rec = self.policy(new_id)
        assert rec is not None
        return rec

    def delete_rule(self, rule_id: int, *, event: Any = None) -> bool:
        return self._delete(device_rules, rule_id, event)

    def delete_policy(self, policy_id: int, *, event: Any = None) -> bool:
        return self._delete(group_policies, policy_id, event)

    def move_rule(self, rule_id: int, position: int, *, event: Any = None) -> StoredRule | None:
        if not self._move(device_rules, rule_id, position, event):
            return None
        return self.rule(rule_id)

    def move_policy(self, policy_id: int, position: int, *, event: Any = None) -> StoredPolicy | None:
        if not self._move(group_policies, policy_id, position, event):
            return None
        return self.policy(policy_id)

    # --- the ordered list, generically ------------------------------------------------------
    @staticmethod
    def _order(c: Connection, table: Table) -> list[int]:
        return [int(r[0]) for r in c.execute(select(table.c.id).order_by(table.c.position, table.c.id))]

    @staticmethod
    def _renumber(c: Connection, table: Table, ids: list[int]) -> None:
        for i, row_id in enumerate(ids, start=1):
            c.execute(update(table).where(table.c.id == row_id, table.c.position != i).values(position=i))

    def _insert(self, table: Table, values: dict[str, Any], position: int | None, event: Any) -> int:
        with self._write() as c:
            count = int(c.execute(select(func.count()).select_from(table)).scalar_one())
            new_id = int(
                c.execute(insert(table).values(position=count + 1, **values).returning(table.c.id)).scalar_one()
            )
            if position is not None and 1 <= position <= count:
                ids = [i for i in self._order(c, table) if i != new_id]
                ids.insert(position - 1, new_id)
                self._renumber(c, table, ids)
            append_pending(c, event)
        return new_id

    def _delete(self, table: Table, row_id: int, event: Any) -> bool:
        with self._write() as c:
            if not c.execute(delete(table).where(table.c.id == row_id)).rowcount:
                return False
            self._renumber(c, table, self._order(c, table))
            append_pending(c, event)
        return True

    def _move(self, table: Table, row_id: int, position: int, event: Any) -> bool:
        with self._write() as c:
            ids = self._order(c, table)
            if row_id not in ids:
                return False
            ids.remove(row_id)
            ids.insert(max(0, min(position - 1, len(ids))), row_id)
            self._renumber(c, table, ids)
            append_pending(c, event)
        return True
