"""vault_secrets (the users' domain passwords for the vault backend mode, encrypted)

Revision ID: 0004
Revises: 0003
Create Date: 2025-01-04

Written out (not imported from ucgate.store.schema), like 0001-0003.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from ucgate.store.schema import BigId, UtcDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "vault_secrets",
        sa.Column("user_id", BigId, sa.ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("ciphertext", sa.LargeBinary(), nullable=False),
        sa.Column("nonce", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.Column("set_by", sa.String(256), nullable=False),
        sa.Column("verified_at", UtcDateTime(), nullable=True),
        sa.Column("last_used_at", UtcDateTime(), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("vault_secrets")
