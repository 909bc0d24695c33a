"""Schema migrations, run programmatically (``ucgate db upgrade``); no alembic.ini needed.

Several gateways sharing one PostgreSQL may start at once: ``upgrade`` takes a transaction-level
advisory lock there so only one runs the migrations and the others then find nothing to do.
"""

from __future__ import annotations

import sys
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, text

from .engine import make_engine

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# pg_advisory_xact_lock key: any constant unique to ucgate ("ucgt" in ASCII)
_PG_LOCK_KEY = 0x75636774


def _config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("path_separator", "os")
    return cfg


def head() -> str:
    """The newest revision this version of ucgate knows."""
    rev = ScriptDirectory.from_config(_config()).get_current_head()
    assert rev is not None
    return rev


def _engine(url_or_engine: str | Engine) -> tuple[Engine, bool]:
    if isinstance(url_or_engine, Engine):
        return url_or_engine, False
    return make_engine(url_or_engine), True


def current(url_or_engine: str | Engine) -> str | None:
    """The database's schema revision, None for a database ucgate never migrated."""
    engine, owned = _engine(url_or_engine)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        if owned:
            engine.dispose()


def upgrade(url_or_engine: str | Engine, revision: str = "head") -> str | None:
    """Bring the schema to ``revision`` (default: the newest); returns the revision reached."""
    return _run(url_or_engine, command.upgrade, revision)


def downgrade(url_or_engine: str | Engine, revision: str) -> str | None:
    """Take the schema back to ``revision`` ("base": drop everything). For development."""
    return _run(url_or_engine, command.downgrade, revision)


def _run(url_or_engine: str | Engine, step, revision: str) -> str | None:
    engine, owned = _engine(url_or_engine)
    try:
        with engine.connect().execution_options(ucgate_write=True) as conn, conn.begin():
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK_KEY})
            cfg = _config()
            cfg.attributes["connection"] = conn
            step(cfg, revision)
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        if owned:
            engine.dispose()


def _main(argv: list[str]) -> int:  # development helper: new revisions
    if argv[:1] == ["revision"]:
        import argparse

        p = argparse.ArgumentParser(prog="python -m ucgate.store.migrate revision")
        p.add_argument("-m", "--message", required=True)
        p.add_argument("--url", default="sqlite:///:memory:")
        a = p.parse_args(argv[1:])
        engine = make_engine(a.url)
        with engine.begin() as conn:
            cfg = _config()
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
            command.revision(cfg, message=a.message, autogenerate=True)
        return 0
    print("usage: python -m ucgate.store.migrate revision -m MESSAGE", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
