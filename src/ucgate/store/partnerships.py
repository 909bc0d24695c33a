"""User/device partnerships in the store (SQLAlchemy Core, the engine of ``store.sql``).

One row per (user, device id): its state (``allowed``, ``quarantined``, ``blocked``), what the
device said about itself, when it was first and last seen, how long it is trusted, and whether
a remote wipe is pending. The rules that choose a state are pure (``ucgate.policy.devices``);
this module only stores and reads.

Device ids are stored lower-cased: EAS ids are compared case-insensitively (as Exchange and
``ucgate.id.asp`` do) and GUIDs are already lower-case after normalisation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from sqlalchemy import Row, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from ..policy.devices import Partnership, PartnershipState
from .engine import Transactions
from .outbox import append_pending
from .repository import DuplicateError
from .schema import PARTNERSHIP_STATES, partnerships

# Free-text columns are cut to their column size rather than refused: they come from devices.
_TEXT_LIMITS = {
    "device_type": 256,
    "model": 256,
    "os": 256,
    "user_agent": 512,
    "state_reason": 128,
    "rule": 256,
    "approved_by": 256,
    "source": 32,
    "client_kind": 32,
}


@dataclass(frozen=True)
class PartnershipRecord:
    id: int
    username: str
    device_id: str
    state: str
    client_kind: str
    created_at: datetime
    last_seen: datetime
    state_reason: str | None = None
    rule: str | None = None
    device_type: str | None = None
    model: str | None = None
    os: str | None = None
    user_agent: str | None = None
    source: str | None = None
    trusted_until: datetime | None = None
    wipe_requested_at: datetime | None = None
    wiped_at: datetime | None = None
    approved_by: str | None = None
    approved_at: datetime | None = None

    @property
    def wipe_pending(self) -> bool:
        return self.wipe_requested_at is not None and self.wiped_at is None

    def to_policy(self) -> Partnership:
        """The pure policy's view of this row."""
        return Partnership(
            user=self.username,
            device_id=self.device_id,
            state=PartnershipState(self.state),
            trusted_until=self.trusted_until,
            created_at=self.created_at,
            last_seen=self.last_seen,
            wiped=self.wipe_pending,
            device_type=self.device_type,
            model=self.model,
            os=self.os,
            user_agent=self.user_agent,
            client_kind=self.client_kind,
        )

    def as_dict(self) -> dict[str, Any]:
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = v.isoformat() if isinstance(v, datetime) else v
        return out


_COLUMNS = frozenset(f.name for f in fields(PartnershipRecord)) - {"id"}


def device_key(device_id: str) -> str:
    """The stored spelling of a (normalised) device id."""
    return device_id.lower()


def _record(row: Row) -> PartnershipRecord:
    return PartnershipRecord(**dict(row._mapping))


def _clean(values: dict[str, Any]) -> dict[str, Any]:
    unknown = set(values) - _COLUMNS
    if unknown:
        raise ValueError(f"unknown partnership field(s): {', '.join(sorted(unknown))}")
    if "state" in values:
        state = values["state"]
        values["state"] = state.value if isinstance(state, PartnershipState) else state
        if values["state"] not in PARTNERSHIP_STATES:
            raise ValueError(f"state must be one of {PARTNERSHIP_STATES}, got {state!r}")
    for key, limit in _TEXT_LIMITS.items():
        v = values.get(key)
        if isinstance(v, str) and len(v) > limit:
            values[key] = v[:limit]
    if "device_id" in values:
        values["device_id"] = device_key(values["device_id"])
    return values


class PartnershipStore(Transactions):
    """Partnership rows over an engine shared with ``SqlRepository`` (which migrates the
    schema). Thread-safe; one short transaction per call."""

    def create(self, **values: Any) -> PartnershipRecord:
        """Insert a partnership.

        Raises:
            DuplicateError: the user already has a partnership with this device.
        """
        values = _clean(values)
        try:
            with self._write() as c:
                key = c.execute(insert(partnerships).values(**values)).inserted_primary_key
                assert key is not None  # an INSERT's result has it
                new_id = key[0]
                row = c.execute(select(partnerships).where(partnerships.c.id == new_id)).one()
        except IntegrityError as e:
            raise DuplicateError(f"{values.get('username')} already has device {values.get('device_id')}") from e
        return _record(row)

    def get(self, username: str, device_id: str) -> PartnershipRecord | None:
        with self._read() as c:
            row = c.execute(
                select(partnerships).where(
                    partnerships.c.username == username, partnerships.c.device_id == device_key(device_id)
                )
            ).first()
        return _record(row) if row else None

    def get_by_id(self, partnership_id: int) -> PartnershipRecord | None:
        with self._read() as c:
            row = c.execute(select(partnerships).where(partnerships.c.id == partnership_id)).first()
        return _record(row) if row else None

    def list(
        self, *, username: str | None = None, state: str | None = None, limit: int = 10_000
    ) -> list[PartnershipRecord]:
        q = select(partnerships).order_by(partnerships.c.username, partnerships.c.id).limit(limit)
        if username is not None:
            q = q.where(partnerships.c.username == username)
        if state is not None:
            q = q.where(partnerships.c.state == state)
        with self._read() as c:
            return [_record(r) for r in c.execute(q)]

    def update(self, partnership_id: int, *, event: Any = None, **values: Any) -> PartnershipRecord | None:
        """Set ``values`` on one row; returns the row after, None when it does not exist.
        ``event``: an outbox event written in the same transaction (``outbox.append_pending``)."""
        values = _clean(values)
        with self._write() as c:
            n = c.execute(update(partnerships).where(partnerships.c.id == partnership_id).values(**values)).rowcount
            if not n:
                return None
            row = c.execute(select(partnerships).where(partnerships.c.id == partnership_id)).one()
            append_pending(c, event)
        return _record(row)

    def delete(self, partnership_id: int, *, event: Any = None) -> bool:
        with self._write() as c:
            n = c.execute(delete(partnerships).where(partnerships.c.id == partnership_id)).rowcount
            if n:
                append_pending(c, event)
            return bool(n)

    def delete_many(self, ids: Sequence[int]) -> int:
        if not ids:
            return 0
        with self._write() as c:
            return c.execute(delete(partnerships).where(partnerships.c.id.in_(list(ids)))).rowcount
