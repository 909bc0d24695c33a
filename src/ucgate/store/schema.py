"""The tables, as SQLAlchemy Core metadata (the migrations create them; this module describes them).

Names follow DESIGN.md's vocabulary. Two deliberate departures from the obvious column names:
``audit.username`` (not ``user``, a reserved word in PostgreSQL that every admin's ad-hoc SQL would
have to quote) and ``users.username`` holding the *canonical* (lower-case) sAMAccountName, which is
how "unique case-insensitively" is enforced on both SQLite and PostgreSQL by a plain UNIQUE.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.types import TypeDecorator

# Stable constraint names, so later migrations can refer to them on both databases.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)

# SQLite only auto-increments a column declared exactly INTEGER PRIMARY KEY.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class UtcDateTime(TypeDecorator):
    """A timezone-aware UTC datetime on both databases.

    PostgreSQL stores ``timestamptz``; SQLite has no time type, so we store naive UTC text and
    put the UTC zone back on read. Naive datetimes are refused on write: they are bugs.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime; pass an aware UTC datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


USER_SOURCES = ("local", "directory")

users = Table(
    "users",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    # canonical sAMAccountName: ucgate.id.users.normalise_username() (lower case)
    Column("username", String(256), nullable=False, unique=True),
    Column("upn", String(1024), nullable=True, unique=True),  # canonical (lower case) too
    Column("sip_uri", String(1024), nullable=True),
    Column("display_name", String(256), nullable=True),
    Column("enabled", Boolean(create_constraint=False), nullable=False),
    Column("source", String(16), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    CheckConstraint("source IN ('local', 'directory')", name="source"),
)

asps = Table(
    "asps",
    metadata,
    # opaque random id (hex); known before the insert so it can be bound into the ciphertext
    Column("id", String(32), primary_key=True),
    Column("user_id", BigId, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("label", String(128), nullable=False),
    # ucgate.id.keys format: 1 byte format version + 4 bytes key id + AES-GCM ciphertext and tag
    Column("ciphertext", LargeBinary(), nullable=False),
    Column("nonce", LargeBinary(), nullable=False),
    Column("device_id", String(256), nullable=True),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("last_used_at", UtcDateTime(), nullable=True),
    Column("revoked_at", UtcDateTime(), nullable=True),
    Index(None, "user_id"),
)

audit = Table(
    "audit",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("at", UtcDateTime(), nullable=False),
    Column("actor", String(256), nullable=False),
    Column("action", String(64), nullable=False),
    Column("username", String(256), nullable=True),
    Column("device", String(256), nullable=True),
    Column("service", String(64), nullable=True),
    Column("client_address", String(64), nullable=True),
    Column("result", String(32), nullable=False),
    Column("reason", Text(), nullable=True),
    Column("details", JSON(), nullable=True),
    Index(None, "at"),
    Index(None, "username", "at"),
)

# --- TOTP second factor (migration 0002) ---------------------------------------------------
otp_secrets = Table(
    "otp_secrets",
    metadata,
    # one TOTP secret per user: pending (confirmed_at NULL) until the user proves a code
    Column("user_id", BigId, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    # opaque random id of this enrolment, bound into the ciphertext (ucgate.id.otp.otp_aad)
    Column("id", String(32), nullable=False),
    # ucgate.id.keys sealed format of secret (20 bytes) ‖ recovery-code HMAC key (32 bytes)
    Column("ciphertext", LargeBinary(), nullable=False),
    Column("nonce", LargeBinary(), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("confirmed_at", UtcDateTime(), nullable=True),
    # RFC 6238 time step of the last accepted code: codes of this or an earlier step are replays
    Column("last_step", BigInteger(), nullable=True),
    Column("last_used_at", UtcDateTime(), nullable=True),
)

otp_recovery_codes = Table(
    "otp_recovery_codes",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("user_id", BigId, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    # HMAC-SHA256 of the code under the user's recovery key (sealed in otp_secrets)
    Column("code_hash", LargeBinary(), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("used_at", UtcDateTime(), nullable=True),
    Index(None, "user_id", "code_hash"),
)

# --- user/device partnerships (migration 0003) ----------------------------------------------
PARTNERSHIP_STATES = ("allowed", "quarantined", "blocked")

partnerships = Table(
    "partnerships",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    # canonical (lower-case) user name, as users.username; not a foreign key: directory users
    # may have a partnership before their first ASP gives them a users row
    Column("username", String(256), nullable=False),
    # ucgate.protocols.devices.normalise_device_id(), then lower-cased (EAS ids are compared
    # case-insensitively, as Exchange does)
    Column("device_id", String(64), nullable=False),
    Column("state", String(16), nullable=False),
    Column("state_reason", String(128), nullable=True),  # decision reason or admin action
    Column("rule", String(256), nullable=True),  # the rule that chose a new device's state
    Column("device_type", String(256), nullable=True),
    Column("model", String(256), nullable=True),
    Column("os", String(256), nullable=True),
    Column("user_agent", String(512), nullable=True),
    Column("client_kind", String(32), nullable=False),
    Column("source", String(32), nullable=True),  # where the id came from (eas-query, ...)
    Column("created_at", UtcDateTime(), nullable=False),
    Column("last_seen", UtcDateTime(), nullable=False),
    Column("trusted_until", UtcDateTime(), nullable=True),
    Column("wipe_requested_at", UtcDateTime(), nullable=True),
    Column("wiped_at", UtcDateTime(), nullable=True),  # the device acknowledged the wipe
    Column("approved_by", String(256), nullable=True),
    Column("approved_at", UtcDateTime(), nullable=True),
    CheckConstraint("state IN ('allowed', 'quarantined', 'blocked')", name="state"),
    UniqueConstraint("username", "device_id"),
    Index(None, "state"),
)

# --- the credential vault (migration 0004) ---------------------------------------------------
vault_secrets = Table(
    "vault_secrets",
    metadata,
    # one domain password per user, for the ``vault`` backend mode (ucgate.id.vault)
    Column("user_id", BigId, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    # opaque random id of this enrolment, bound into the ciphertext (ucgate.id.vault.vault_aad);
    # a new one each time the password is set
    Column("id", String(32), nullable=False),
    # ucgate.id.keys sealed format of the UTF-8 password
    Column("ciphertext", LargeBinary(), nullable=False),
    Column("nonce", LargeBinary(), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("updated_at", UtcDateTime(), nullable=False),
    Column("set_by", String(256), nullable=False),  # "cli:root", "portal:alice", ...
    Column("verified_at", UtcDateTime(), nullable=True),  # checked against the directory
    Column("last_used_at", UtcDateTime(), nullable=True),
)

# --- the pool's shared state (migration 0005) -------------------------------------------------
# The event outbox: every change that can cut someone off is a row here, written in the same
# transaction as the change (ucgate.store.outbox). Readers follow ``id``; NOTIFY (PostgreSQL) or
# ``PRAGMA data_version`` (SQLite) only wakes them: the table is the truth.
EVENT_KINDS = ("user-blocked", "device-blocked", "credential-revoked", "rules-changed")

events = Table(
    "events",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("at", UtcDateTime(), nullable=False),
    # not constrained to EVENT_KINDS: a newer version may write kinds this one skips
    Column("kind", String(32), nullable=False),
    Column("username", String(256), nullable=False),
    Column("device_id", String(256), nullable=True),
    Column("credential", String(64), nullable=True),  # an ASP id
    Column("reason", String(128), nullable=False),
    Column("signed_in_before", UtcDateTime(), nullable=True),
    Column("actor", String(256), nullable=True),
    Index(None, "at"),
)

# The failure budget's leaky buckets (ucgate.store.budget): "u0:<account>", "u1:<account>"
# (unfamiliar / familiar class) and "ip:<address or /64>"; level and time as epoch seconds.
budget_buckets = Table(
    "budget_buckets",
    metadata,
    Column("bucket", String(320), primary_key=True),
    Column("level", Float(precision=53), nullable=False),
    Column("at", Float(precision=53), nullable=False),
    Index(None, "at"),
)

# Familiar (account, IP) pairs: a successful sign-in from ``ip`` at ``at`` (epoch seconds).
familiar_ips = Table(
    "familiar_ips",
    metadata,
    Column("account", String(300), primary_key=True),
    Column("ip", String(64), primary_key=True),
    Column("at", Float(precision=53), nullable=False),
)

# Who is signed in where: each gateway's periodic report (ucgate.id.http_api.LiveSessions), so
# that every id service's account monitor sees every gateway's sessions.
live_sessions = Table(
    "live_sessions",
    metadata,
    Column("gateway", String(128), primary_key=True),
    Column("username", String(256), primary_key=True),
    Column("signed_in_at", UtcDateTime(), nullable=False),
    Column("reported_at", Float(precision=53), nullable=False),
    Index(None, "reported_at"),
)

# --- device rules and group policies, editable (migration 0006) -------------------------------
# Besides [[devices.rules]] and [[policy]] of the configuration file, which come first, in the
# file's order: these, in ``position`` order, edited from the admin UI, the REST API and the CLI
# (ucgate.store.rules). Each change writes a "rules-changed" event in its transaction, so every
# process reloads them (ucgate.id.devices).
DEVICE_RULE_ACTIONS = ("allowed", "quarantined", "blocked")

device_rules = Table(
    "device_rules",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("position", Integer(), nullable=False),  # 1..n, no gaps (rewritten on every change)
    Column("name", String(128), nullable=False),
    Column("action", String(16), nullable=False),
    # globs (ucgate.policy.devices.DeviceRule); NULL matches anything
    Column("device_type", String(256), nullable=True),
    Column("model", String(256), nullable=True),
    Column("os", String(256), nullable=True),
    Column("user_agent", String(256), nullable=True),
    Column("client_kind", String(256), nullable=True),
    Column("groups", JSON(), nullable=False),  # a list of group names or DNs; [] = every user
    Column("created_at", UtcDateTime(), nullable=False),
    Column("created_by", String(256), nullable=False),  # "cli:root", "web:alice", "api:<token>"
    CheckConstraint("action IN ('allowed', 'quarantined', 'blocked')", name="action"),
    Index(None, "position"),
)

group_policies = Table(
    "group_policies",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("position", Integer(), nullable=False),
    Column("name", String(128), nullable=False),
    Column("group_name", String(1024), nullable=False),  # a group name or DN ("group" is reserved)
    # keys of ucgate.id.devices.DEVICE_POLICY_KEYS
    Column("settings", JSON(), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("created_by", String(256), nullable=False),
    Index(None, "position"),
)
