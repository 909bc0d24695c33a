"""device_rules, group_policies: device access rules and per-group device policy, editable

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02

Written out (not imported from ucgate.store.schema), like 0001-0005.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from ucgate.store.schema import BigId, UtcDateTime

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "device_rules",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("device_type", sa.String(256), nullable=True),
        sa.Column("model", sa.String(256), nullable=True),
        sa.Column("os", sa.String(256), nullable=True),
        sa.Column("user_agent", sa.String(256), nullable=True),
        sa.Column("client_kind", sa.String(256), nullable=True),
        sa.Column("groups", sa.JSON(), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("created_by", sa.String(256), nullable=False),
        sa.CheckConstraint("action IN ('allowed', 'quarantined', 'blocked')", name="action"),
    )
    op.create_index("ix_device_rules_position", "device_rules", ["position"])
    op.create_table(
        "group_policies",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("group_name", sa.String(1024), nullable=False),
        sa.Column("settings", sa.JSON(), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("created_by", sa.String(256), nullable=False),
    )
    op.create_index("ix_group_policies_position", "group_policies", ["position"])


def downgrade() -> None:
    for t in ("group_policies", "device_rules"):
        op.drop_table(t)
