"""The two databases every repository test runs on.

``store_url`` is parametrised over SQLite (a fresh file per test) and PostgreSQL (a fresh schema
per test, in a database created for this test run and dropped at its end). PostgreSQL is found at
``UCGATE_TEST_POSTGRES_URL`` (default ``postgresql+psycopg://postgres@127.0.0.1:5432/test``);
when it is not reachable its tests are SKIPPED with the reason (shown by ``pytest -ra``).

Other test packages use these fixtures with ``from tests.store.backends import *``.
"""

from __future__ import annotations

import os
import secrets

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

POSTGRES_URL = os.environ.get("UCGATE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@pytest.fixture(scope="session")
def postgres_database():
    """A database created for this run (URL), dropped afterwards; skips when unreachable."""
    admin_url = make_url(POSTGRES_URL)
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})
    try:
        with admin.connect() as c:
            c.execute(text("SELECT 1"))
    except Exception as e:
        admin.dispose()
        if os.environ.get("CI"):  # CI has a server: its absence is a failure, not a skip
            pytest.fail(
                f"CI=true but PostgreSQL is not reachable at {admin_url.render_as_string(hide_password=True)}: {e}"
            )
        pytest.skip(
            f"PostgreSQL not reachable at {admin_url.render_as_string(hide_password=True)} "
            f"(set UCGATE_TEST_POSTGRES_URL): {' '.join(str(getattr(e, 'orig', e)).split())[:160]}"
        )
    name = f"ucgate_test_{os.getpid()}_{secrets.token_hex(4)}"
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin_url.set(database=name)
    finally:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def postgres_url(postgres_database):
    """A fresh, empty schema in the run's database, as a URL whose search_path selects it."""
    schema = f"t_{secrets.token_hex(6)}"
    eng = create_engine(postgres_database, isolation_level="AUTOCOMMIT")
    with eng.connect() as c:
        c.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = postgres_database.update_query_dict({"options": f"-csearch_path={schema}"})
    yield url.render_as_string(hide_password=False)
    with eng.connect() as c:
        c.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    eng.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    """An empty database: SQLite file or PostgreSQL schema."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'data' / 'ucgate.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def repo(store_url):
    from ucgate.store import open_repository

    r = open_repository(store_url)
    yield r
    r.close()


__all__ = ["postgres_database", "postgres_url", "store_url", "repo", "POSTGRES_URL"]
