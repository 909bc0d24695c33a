"""Alembic environment: always online, on the connection passed by ucgate.store.migrate."""

from __future__ import annotations

from alembic import context

from ucgate.store.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through ucgate.store.migrate (ucgate db upgrade)")

context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=True,  # SQLite cannot ALTER most things; batch mode copies the table
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
