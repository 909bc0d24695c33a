"""The one storage interface the id service uses, and the records it returns.

Everything above this module (ASPs, users, audit) talks to a :class:`Repository`; the only
implementation is :class:`ucgate.store.sql.SqlRepository` (SQLite or PostgreSQL). Calls are
synchronous and block on I/O: asyncio callers use ``asyncio.to_thread``. Every write method
returns only after its transaction is committed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol


class DuplicateError(Exception):
    """A row with the same unique key (user name, UPN, ASP id) exists."""


class NotFoundError(Exception):
    """The row a write refers to does not exist."""


@dataclass(frozen=True, slots=True)
class UserRecord:
    id: int
    username: str  # canonical (lower-case) sAMAccountName
    upn: str | None
    sip_uri: str | None
    display_name: str | None
    enabled: bool
    source: str  # "local" | "directory"
    created_at: datetime


@dataclass(frozen=True, slots=True)
class NewAsp:
    """An ASP row to insert; the id is chosen by the caller (it is bound into the ciphertext)."""

    id: str
    user_id: int
    label: str
    ciphertext: bytes = field(repr=False)
    nonce: bytes = field(repr=False)
    device_id: str | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class AspRecord:
    id: str
    user_id: int
    label: str
    ciphertext: bytes = field(repr=False)
    nonce: bytes = field(repr=False)
    device_id: str | None
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


@dataclass(frozen=True, slots=True)
class AuditRecord:
    id: int | None  # None until stored
    at: datetime
    actor: str
    action: str
    result: str
    username: str | None = None
    device: str | None = None
    service: str | None = None
    client_address: str | None = None
    reason: str | None = None
    details: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class NewOtpSecret:
    """A pending TOTP enrolment to store; ``id`` is chosen by the caller (bound into the
    ciphertext, see ``ucgate.id.otp.otp_aad``)."""

    id: str
    user_id: int
    ciphertext: bytes = field(repr=False)
    nonce: bytes = field(repr=False)
    created_at: datetime


@dataclass(frozen=True, slots=True)
class OtpRecord:
    id: str
    user_id: int
    ciphertext: bytes = field(repr=False)
    nonce: bytes = field(repr=False)
    created_at: datetime
    confirmed_at: datetime | None
    last_step: int | None  # RFC 6238 time step of the last accepted code
    last_used_at: datetime | None

    @property
    def active(self) -> bool:
        return self.confirmed_at is not None


class Repository(Protocol):
    # --- users ------------------------------------------------------------------------
    def add_user(
        self,
        username: str,
        *,
        upn: str | None,
        sip_uri: str | None,
        display_name: str | None,
        source: str,
        created_at: datetime,
        enabled: bool = True,
    ) -> UserRecord:
        """Insert a user (``username``/``upn`` already canonical). Raises DuplicateError."""
        ...

    def get_user(self, username: str) -> UserRecord | None: ...

    def get_user_by_id(self, user_id: int) -> UserRecord | None: ...

    def get_user_by_upn(self, upn: str) -> UserRecord | None: ...

    def list_users(self) -> list[UserRecord]:
        """All users, ordered by user name."""
        ...

    def set_user_enabled(self, username: str, enabled: bool, *, event: Any = None) -> bool:
        """False when there is no such user. ``event``: an outbox event (an
        ``ucgate.id.events.Pending``) written in the same transaction, here and below."""
        ...

    # --- ASPs -------------------------------------------------------------------------
    def add_asp(self, asp: NewAsp, *, event: Any = None) -> None:
        """Raises DuplicateError (same id) or NotFoundError (no such user)."""
        ...

    def get_asp(self, asp_id: str) -> AspRecord | None: ...

    def list_asps(self, user_id: int, *, include_revoked: bool = True) -> list[AspRecord]:
        """The user's ASPs, oldest first."""
        ...

    def revoke_asp(self, asp_id: str, at: datetime, *, event: Any = None) -> bool:
        """Mark revoked (idempotent: an already revoked ASP keeps its first time). False when
        there is no such ASP."""
        ...

    def mark_asp_used(self, asp_id: str, at: datetime) -> bool: ...

    def replace_asp_ciphertext(self, asp_id: str, ciphertext: bytes, nonce: bytes) -> bool:
        """For key rotation: re-encrypted secret, same row."""
        ...

    def all_asp_ids(self) -> Sequence[str]: ...

    # --- audit ------------------------------------------------------------------------
    def add_audit(self, event: AuditRecord) -> int:
        """Append an event; returns its id."""
        ...

    def tail_audit(self, n: int) -> list[AuditRecord]:
        """The last ``n`` events, oldest first."""
        ...

    # --- TOTP second factor ------------------------------------------------------------
    def begin_otp(self, secret: NewOtpSecret) -> None:
        """Store a pending enrolment, replacing an earlier pending one (and its recovery codes).

        Raises:
            DuplicateError: the user has an active (confirmed) secret; delete it first.
            NotFoundError: no such user.
        """
        ...

    def get_otp(self, user_id: int) -> OtpRecord | None: ...

    def confirm_otp(self, user_id: int, otp_id: str, step: int, at: datetime, recovery_hashes: Sequence[bytes]) -> bool:
        """Activate the pending enrolment ``otp_id`` (the confirming code's ``step`` becomes
        ``last_step``) and store its recovery codes, in one transaction. False when that pending
        enrolment is gone (reset, replaced, or already confirmed)."""
        ...

    def advance_otp_step(self, user_id: int, step: int, at: datetime) -> bool:
        """Atomically accept time step ``step``: True only when the user has an active secret
        whose ``last_step`` is NULL or lower (then it becomes ``step``). False means a replay
        (or no active secret). Safe across threads, processes and gateways sharing the store."""
        ...

    def delete_otp(self, user_id: int, *, event: Any = None) -> bool:
        """Remove the secret (pending or active) and all recovery codes; False when none."""
        ...

    def replace_otp_ciphertext(self, user_id: int, ciphertext: bytes, nonce: bytes) -> bool:
        """For key rotation: re-encrypted secret, same row."""
        ...

    def all_otp_user_ids(self) -> Sequence[int]: ...

    def replace_recovery_codes(self, user_id: int, hashes: Sequence[bytes], at: datetime) -> None:
        """Drop the user's recovery codes (used or not) and store these."""
        ...

    def use_recovery_code(self, user_id: int, code_hash: bytes, at: datetime) -> bool:
        """Atomically mark an unused code used; False when there is none with this hash."""
        ...

    def count_recovery_codes(self, user_id: int) -> int:
        """How many unused recovery codes the user has."""
        ...

    def close(self) -> None: ...
