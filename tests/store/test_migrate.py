from __future__ import annotations

import os
import stat

from sqlalchemy import inspect

from ucgate.store import make_engine, migrate, sqlite_path


def test_upgrade_from_empty_and_current(store_url):
    assert migrate.current(store_url) is None
    head = migrate.head()
    assert migrate.upgrade(store_url) == head
    assert migrate.current(store_url) == head
    assert migrate.upgrade(store_url) == head  # idempotent
    engine = make_engine(store_url)
    tables = set(inspect(engine).get_table_names())
    engine.dispose()
    assert {"users", "asps", "audit", "otp_secrets", "otp_recovery_codes", "alembic_version"} <= tables


def test_downgrade_then_upgrade(store_url):
    migrate.upgrade(store_url)
    assert migrate.downgrade(store_url, "base") is None
    assert migrate.current(store_url) is None
    assert migrate.upgrade(store_url) == migrate.head()


def test_sqlite_file_is_private_and_in_wal_mode(tmp_path):
    url = f"sqlite:///{tmp_path / 'new' / 'ucgate.db'}"
    migrate.upgrade(url)
    path = sqlite_path(url)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    engine = make_engine(url)
    with engine.connect() as c:
        assert c.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert c.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
        assert c.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    engine.dispose()


def test_migrations_match_schema_module(store_url):
    """The hand-written first revision and ucgate.store.schema describe the same tables."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from ucgate.store.schema import metadata

    migrate.upgrade(store_url)
    engine = make_engine(store_url)
    with engine.connect() as c:
        diff = compare_metadata(MigrationContext.configure(c), metadata)
    engine.dispose()
    assert diff == []
