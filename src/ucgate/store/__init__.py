"""Persistence behind one interface: SQLite (default, one node) or PostgreSQL (a cluster).

    repo = open_repository("sqlite:////var/lib/ucgate/ucgate.db")   # migrates the schema

SQLAlchemy Core (no ORM), synchronous: asyncio callers use ``asyncio.to_thread``.
"""

from .engine import StoreError, make_engine, sqlite_path
from .partnerships import PartnershipRecord, PartnershipStore
from .repository import (
    AspRecord,
    AuditRecord,
    DuplicateError,
    NewAsp,
    NewOtpSecret,
    NotFoundError,
    OtpRecord,
    Repository,
    UserRecord,
)
from .sql import SqlRepository


def open_repository(url: str, *, migrate_schema: bool = True) -> SqlRepository:
    """Open the store at ``url`` (``sqlite:///path`` or ``postgresql+psycopg://...``)."""
    return SqlRepository.open(url, migrate_schema=migrate_schema)


__all__ = [
    "AspRecord",
    "AuditRecord",
    "DuplicateError",
    "NewAsp",
    "NewOtpSecret",
    "NotFoundError",
    "OtpRecord",
    "PartnershipRecord",
    "PartnershipStore",
    "Repository",
    "SqlRepository",
    "StoreError",
    "UserRecord",
    "make_engine",
    "open_repository",
    "sqlite_path",
]
