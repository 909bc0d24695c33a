"""Build the id service's parts for one process (``ucgate serve``, the demo, tests)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from ..policy.lockout import BudgetConfig
from ..store.budget import StoreBudget
from .cache import SignInCache
from .components import Components
from .events import EventBus
from .otp import OtpService
from .service import IdService
from .twofactor import SecondFactor
from .writer import SignInWriter


@dataclass
class IdServices:
    components: Components
    credentials: IdService
    bus: EventBus
    directory: Any = None
    extra_closers: list = field(default_factory=list)

    @property
    def users(self):
        return self.components.users

    @property
    def asps(self):
        return self.components.asps

    @property
    def audit(self):
        return self.components.audit

    def close(self) -> None:
        for c in self.extra_closers:
            c()
        if self.components.audit.writer is not None:
            self.components.audit.writer.close()
        closer = getattr(self.credentials.budget, "close", None)
        if closer is not None:
            closer()
        if self.directory is not None:
            self.directory.close()
        self.components.close()


def open_services(
    *,
    store_url: str,
    key_file: Path,
    audit_file: Path | None,
    lockout: Any,
    netbios_domains: tuple[str, ...] = (),
    directory: Any = None,
    required_group: str | None = None,
    allow_domain_passwords: bool = False,
    two_factor: Any = None,
    audit_syslog: Any = None,
) -> IdServices:
    """Open the store, the keyring, the audit log and the credential service.

    Args:
        lockout: a ``LockoutConfig`` (user_failures, ip_failures, window).
        directory: a ``ucgate.id.directory.Directory``, or None for local users only.
        two_factor: a ``TwoFactorSettings`` (None: second factor off).
        audit_syslog: an ``audit_syslog.SyslogConfig`` ([audit.syslog]), or None.
    """
    settings = SimpleNamespace(store_url=store_url, key_file=key_file, audit_file=audit_file, audit_syslog=audit_syslog)
    comp = Components(settings)
    comp.users.netbios_domains = tuple(d.upper() for d in netbios_domains)
    _ = comp.keyring  # load or create the key now: a bad key file fails at start, not at first sign-in
    # sign-ins' audit events and ASP last-use times: group-committed (ucgate.id.writer)
    comp.audit.writer = SignInWriter(comp.repo)
    # the user and ASP records a sign-in reads, between sign-ins; events drop them (ucgate.id.cache)
    comp.asps.cache = SignInCache()
    comp.bus.subscribe_rows(comp.asps.cache.on_row)
    # the budget lives in the store: one per account for every process of the pool
    budget = StoreBudget(
        comp.repo.engine,
        BudgetConfig(user_failures=lockout.user_failures, ip_failures=lockout.ip_failures, window=lockout.window),
    )
    bus = comp.bus
    second = None
    if two_factor is not None and (two_factor.default_mode != "off" or two_factor.group_modes):
        second = SecondFactor(
            OtpService(comp.repo, comp.keyring, users=comp.users), two_factor, directory=directory, clock=time.time
        )
    creds = IdService(
        second_factor=second,
        asps=comp.asps,
        users=comp.users,
        budget=budget,
        audit=comp.audit,
        directory=directory,
        required_group=required_group,
        allow_domain_passwords=allow_domain_passwords,
        store_name=comp.repo.engine.url.render_as_string(hide_password=True),
    )
    return IdServices(comp, creds, bus, directory)
