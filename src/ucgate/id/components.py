"""The id service's parts over one store, for the admin commands (``ucgate.cli.admin``) and
anything else that needs them in one process (``id.factory``).

``settings`` is any object with three attributes (by default ``ucgate.config.load(...)``'s):

- ``store_url: str`` — ``sqlite:///path`` or ``postgresql+psycopg://...``
- ``key_file: Path`` — the master key (created on first use)
- ``audit_file: Path | None`` — the JSON-lines audit file, if any
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from ..store import SqlRepository, open_repository, sqlite_path
from ..store.outbox import Outbox
from .asp import AspService
from .audit import AuditLog
from .audit_syslog import open_sink
from .events import EventBus
from .keys import Keyring
from .users import UserService


class Settings(Protocol):
    # read-only members: a frozen configuration (ucgate.config.Config) is one
    @property
    def store_url(self) -> str: ...
    @property
    def key_file(self) -> Path: ...
    @property
    def audit_file(self) -> Path | None: ...


class Components:
    """The id service's parts over one store, for admin commands (and anything else that needs
    them in one process). The keyring is loaded (or created) only when first used."""

    def __init__(self, settings: Settings, *, migrate_schema: bool | None = None) -> None:
        self.settings = settings
        if migrate_schema is None:  # SQLite (one node) migrates itself; a cluster runs db upgrade
            migrate_schema = sqlite_path(settings.store_url) is not None
        self.repo: SqlRepository = open_repository(settings.store_url, migrate_schema=migrate_schema)
        # every change that cuts someone off goes through the outbox, so a command run beside a
        # running gateway reaches it (ucgate.id.events)
        self.bus = EventBus(Outbox(self.repo.engine))
        self.users = UserService(self.repo, bus=self.bus)
        self.audit = AuditLog(self.repo, settings.audit_file, syslog=open_sink(getattr(settings, "audit_syslog", None)))
        self._keyring: Keyring | None = None
        self._asps: AspService | None = None

    @property
    def keyring(self) -> Keyring:
        if self._keyring is None:
            self._keyring = Keyring.load_or_create(
                self.settings.key_file, data_path=sqlite_path(self.settings.store_url)
            )
        return self._keyring

    @property
    def asps(self) -> AspService:
        if self._asps is None:
            self._asps = AspService(self.repo, self.keyring, users=self.users)
        return self._asps

    def close(self) -> None:
        self.audit.close()
        self.repo.close()
