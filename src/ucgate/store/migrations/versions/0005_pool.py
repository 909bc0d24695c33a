"""events (the outbox), budget_buckets, familiar_ips, live_sessions: the pool's shared state

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02

Written out (not imported from ucgate.store.schema), like 0001-0004.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from ucgate.store.schema import BigId, UtcDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("at", UtcDateTime(), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("username", sa.String(256), nullable=False),
        sa.Column("device_id", sa.String(256), nullable=True),
        sa.Column("credential", sa.String(64), nullable=True),
        sa.Column("reason", sa.String(128), nullable=False),
        sa.Column("signed_in_before", UtcDateTime(), nullable=True),
        sa.Column("actor", sa.String(256), nullable=True),
    )
    op.create_index("ix_events_at", "events", ["at"])
    op.create_table(
        "budget_buckets",
        sa.Column("bucket", sa.String(320), primary_key=True),
        sa.Column("level", sa.Float(precision=53), nullable=False),
        sa.Column("at", sa.Float(precision=53), nullable=False),
    )
    op.create_index("ix_budget_buckets_at", "budget_buckets", ["at"])
    op.create_table(
        "familiar_ips",
        sa.Column("account", sa.String(300), primary_key=True),
        sa.Column("ip", sa.String(64), primary_key=True),
        sa.Column("at", sa.Float(precision=53), nullable=False),
    )
    op.create_table(
        "live_sessions",
        sa.Column("gateway", sa.String(128), primary_key=True),
        sa.Column("username", sa.String(256), primary_key=True),
        sa.Column("signed_in_at", UtcDateTime(), nullable=False),
        sa.Column("reported_at", sa.Float(precision=53), nullable=False),
    )
    op.create_index("ix_live_sessions_reported_at", "live_sessions", ["reported_at"])


def downgrade() -> None:
    for t in ("live_sessions", "familiar_ips", "budget_buckets", "events"):
        op.drop_table(t)
