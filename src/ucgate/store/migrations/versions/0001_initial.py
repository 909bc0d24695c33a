"""users, asps, audit

Revision ID: 0001
Revises:
Create Date: 2025-01-01

The tables are written out here (not imported from ucgate.store.schema) so that this revision
keeps creating exactly these tables when the schema module changes later.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from ucgate.store.schema import BigId, UtcDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("username", sa.String(256), nullable=False),
        sa.Column("upn", sa.String(1024), nullable=True),
        sa.Column("sip_uri", sa.String(1024), nullable=True),
        sa.Column("display_name", sa.String(256), nullable=True),
        sa.Column("enabled", sa.Boolean(create_constraint=False), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.CheckConstraint("source IN ('local', 'directory')", name="source"),
        sa.UniqueConstraint("username"),
        sa.UniqueConstraint("upn"),
    )
    op.create_table(
        "asps",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("user_id", BigId, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("label", sa.String(128), nullable=False),
        sa.Column("ciphertext", sa.LargeBinary(), nullable=False),
        sa.Column("nonce", sa.LargeBinary(), nullable=False),
        sa.Column("device_id", sa.String(256), nullable=True),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("last_used_at", UtcDateTime(), nullable=True),
        sa.Column("revoked_at", UtcDateTime(), nullable=True),
    )
    op.create_index("ix_asps_user_id", "asps", ["user_id"])
    op.create_table(
        "audit",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("at", UtcDateTime(), nullable=False),
        sa.Column("actor", sa.String(256), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("username", sa.String(256), nullable=True),
        sa.Column("device", sa.String(256), nullable=True),
        sa.Column("service", sa.String(64), nullable=True),
        sa.Column("client_address", sa.String(64), nullable=True),
        sa.Column("result", sa.String(32), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("details", sa.JSON(), nullable=True),
    )
    op.create_index("ix_audit_at", "audit", ["at"])
    op.create_index("ix_audit_username_at", "audit", ["username", "at"])


def downgrade() -> None:
    op.drop_table("audit")
    op.drop_table("asps")
    op.drop_table("users")
