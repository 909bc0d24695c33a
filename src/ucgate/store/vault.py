"""Vault rows in the store (SQLAlchemy Core, the engine of ``store.sql``): one encrypted domain
password per user. Encryption is the caller's (``ucgate.id.vault``); this module stores bytes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import Row, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from .engine import Transactions
from .repository import NotFoundError
from .schema import vault_secrets


@dataclass(frozen=True, slots=True)
class VaultRecord:
    user_id: int
    id: str
    ciphertext: bytes = field(repr=False)
    nonce: bytes = field(repr=False)
    created_at: datetime
    updated_at: datetime
    set_by: str
    verified_at: datetime | None = None
    last_used_at: datetime | None = None


def _record(row: Row) -> VaultRecord:
    m = dict(row._mapping)
    m["ciphertext"], m["nonce"] = bytes(m["ciphertext"]), bytes(m["nonce"])
    return VaultRecord(**m)


class VaultStore(Transactions):
    """Thread-safe; one short transaction per call."""

    def put(
        self,
        *,
        user_id: int,
        id: str,
        ciphertext: bytes,
        nonce: bytes,
        at: datetime,
        set_by: str,
        verified_at: datetime | None,
    ) -> None:
        """Insert or replace the user's row. Raises NotFoundError (no such user)."""
        values = dict(
            id=id,
            ciphertext=ciphertext,
            nonce=nonce,
            updated_at=at,
            set_by=set_by,
            verified_at=verified_at,
            last_used_at=None,
        )
        try:
            with self._write() as c:
                n = c.execute(update(vault_secrets).where(vault_secrets.c.user_id == user_id).values(**values)).rowcount
                if not n:
                    c.execute(insert(vault_secrets).values(user_id=user_id, created_at=at, **values))
        except IntegrityError as e:
            raise NotFoundError(f"no user with id {user_id}") from e

    def get(self, user_id: int) -> VaultRecord | None:
        with self._read() as c:
            row = c.execute(select(vault_secrets).where(vault_secrets.c.user_id == user_id)).first()
        return _record(row) if row else None

    def delete(self, user_id: int) -> bool:
        with self._write() as c:
            return bool(c.execute(delete(vault_secrets).where(vault_secrets.c.user_id == user_id)).rowcount)

    def mark_used(self, user_id: int, at: datetime) -> None:
        with self._write() as c:
            c.execute(update(vault_secrets).where(vault_secrets.c.user_id == user_id).values(last_used_at=at))

    def replace_ciphertext(self, user_id: int, row_id: str, ciphertext: bytes, nonce: bytes) -> bool:
        """For key rotation: the same secret re-encrypted, only if the row is still ``row_id``."""
        with self._write() as c:
            return bool(
                c.execute(
                    update(vault_secrets)
                    .where(vault_secrets.c.user_id == user_id, vault_secrets.c.id == row_id)
                    .values(ciphertext=ciphertext, nonce=nonce)
                ).rowcount
            )

    def user_ids(self) -> Sequence[int]:
        with self._read() as c:
            return [r[0] for r in c.execute(select(vault_secrets.c.user_id).order_by(vault_secrets.c.user_id))]
