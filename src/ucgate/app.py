"""Wire the parts together from a configuration (the composition root)."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from .config import Config
from .gateway.auth import Authenticator, DenyAll
from .gateway.preauth import PreAuthenticator, PreAuthSettings
from .gateway.server import Gateway

log = logging.getLogger("ucgate")


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)


def open_directory(config: Config):
    if config.directory is None:
        return None
    from .id.directory import Directory

    d = config.directory
    return Directory(
        url=list(d.urls), bind_dn=d.bind_dn, bind_password=d.bind_password, base_dn=d.base_dn,
        ca_file=str(d.ca_file) if d.ca_file else None, start_tls=d.start_tls, timeout=d.timeout,
        netbios_domain=config.auth.netbios_domain, cache_ttl=d.cache_ttl,
    )


def open_id_services(config: Config):
    from .id.factory import open_services

    return open_services(
        store_url=config.store.url,
        key_file=config.store.key_file,
        audit_file=config.store.audit_file,
        lockout=config.lockout,
        netbios_domains=(config.auth.netbios_domain,),
        directory=open_directory(config),
        required_group=config.directory.required_group if config.directory else None,
        allow_domain_passwords=config.auth.allow_domain_passwords,
    )


def preauth_settings(config: Config) -> PreAuthSettings:
    a = config.auth
    return PreAuthSettings(
        methods=a.methods,
        extended_protection=a.extended_protection,
        realm=a.realm,
        netbios_domain=a.netbios_domain,
        dns_domain=a.dns_domain,
        netbios_computer=a.netbios_computer,
        dns_computer=(config.gateway.published_name or f"{a.netbios_computer.lower()}.{a.dns_domain}"),
        max_clock_skew=a.max_clock_skew,
        failure_floor=a.failure_floor,
    )


@dataclass
class Node:
    """Everything one process runs: the gateway, the id service, the account monitor."""

    gateway: Gateway
    ids: Any = None
    monitor: Any = None

    async def start(self) -> None:
        await self.gateway.start()
        if self.monitor is not None:
            self.monitor.start()

    async def stop(self) -> None:
        if self.monitor is not None:
            await self.monitor.stop()
        await self.gateway.stop()
        if self.ids is not None:
            self.ids.close()


def build_node(config: Config, *, authenticator: Authenticator | None = None) -> Node:
    if authenticator is None and config.auth.authenticator == "deny-all":
        authenticator = DenyAll()
    if authenticator is not None:
        return Node(Gateway(config, authenticator))
    ids = open_id_services(config)
    gateway = Gateway(config, PreAuthenticator(ids.credentials, preauth_settings(config)))
    ids.bus.subscribe(gateway.on_event)
    monitor = None
    if ids.directory is not None:
        from .id.monitor import AccountMonitor

        monitor = AccountMonitor(
            ids.directory, gateway.live_users, ids.bus, ids.audit,
            interval=config.directory.recheck_interval, outage_grace=config.directory.outage_grace,
        )
    return Node(gateway, ids, monitor)


def run(main: Callable[[], Awaitable[Any]]) -> Any:
    """Run ``main`` on uvloop where available (a third faster on the proxy hot path)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
        return asyncio.run(main())
    return uvloop.run(main())


async def wait_for_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def serve(config: Config) -> None:
    node = build_node(config)
    await node.start()
    try:
        await wait_for_signal()
    finally:
        log.info("shutting down")
        await node.stop()
