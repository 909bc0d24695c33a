"""Alembic migrations, kept inside the package: no alembic.ini is needed at runtime.

Use :func:`ucgate.store.migrate.upgrade` (``ucgate db upgrade``). To write a new revision
during development::

    .venv/bin/python -m ucgate.store.migrate revision -m "add devices"
"""
