"""partnerships (user/device pairs: allowed, quarantined, blocked; trust; wipe)

Revision ID: 0003
Revises: 0002
Create Date: 2025-01-03

Written out (not imported from ucgate.store.schema), like 0001 and 0002.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from ucgate.store.schema import BigId, UtcDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "partnerships",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("username", sa.String(256), nullable=False),
        sa.Column("device_id", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("state_reason", sa.String(128), nullable=True),
        sa.Column("rule", sa.String(256), nullable=True),
        sa.Column("device_type", sa.String(256), nullable=True),
        sa.Column("model", sa.String(256), nullable=True),
        sa.Column("os", sa.String(256), nullable=True),
        sa.Column("user_agent", sa.String(512), nullable=True),
        sa.Column("client_kind", sa.String(32), nullable=False),
        sa.Column("source", sa.String(32), nullable=True),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("last_seen", UtcDateTime(), nullable=False),
        sa.Column("trusted_until", UtcDateTime(), nullable=True),
        sa.Column("wipe_requested_at", UtcDateTime(), nullable=True),
        sa.Column("wiped_at", UtcDateTime(), nullable=True),
        sa.Column("approved_by", sa.String(256), nullable=True),
        sa.Column("approved_at", UtcDateTime(), nullable=True),
        sa.CheckConstraint("state IN ('allowed', 'quarantined', 'blocked')", name="state"),
        sa.UniqueConstraint("username", "device_id"),
    )
    op.create_index("ix_partnerships_state", "partnerships", ["state"])


def downgrade() -> None:
    op.drop_table("partnerships")
