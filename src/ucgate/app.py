"""Wire the parts together from a configuration (the composition root)."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from .config import Config, ConfigError
from .gateway.auth import Authenticator, DenyAll
from .gateway.backend import VaultBackend
from .gateway.devices import DeviceGate
from .gateway.idclient import RemoteCredentials, RemoteDeviceChecker
from .gateway.kcd import kcd_from_config
from .gateway.kerberos import acceptor_from_config
from .gateway.oauth import OAuthGrants, OAuthSettings
from .gateway.preauth import PreAuthenticator, PreAuthSettings
from .gateway.server import Gateway
from .gateway.sip import relay_from_config
from .id.devices import open_device_service
from .id.directory import Directory
from .id.events import EventFollower
from .id.factory import open_services
from .id.health import StoreProbe
from .id.http_api import LiveSessions, create_id_api
from .id.monitor import AccountMonitor
from .id.observe import observe_app
from .id.twofactor import TwoFactorSettings
from .id.vault import VaultService
from .logs import setup_logging as setup
from .policy.tls import INTERMEDIATE_TLS12_CIPHERS
from .reload import Reloader
from .web.app import make_context, mount_routes, node_web_server

log = logging.getLogger("ucgate")
T = TypeVar("T")


def setup_logging(level: str, fmt: str = "text") -> None:
    """stderr at ``level``, as text lines or JSON objects (``[log] format``, ``ucgate.logs``)."""
    setup(level, fmt)


def open_directory(config: Config):
    if config.directory is None:
        return None
    d = config.directory
    return Directory(
        url=list(d.urls),
        bind_dn=d.bind_dn,
        bind_password=d.bind_password,
        base_dn=d.base_dn,
        ca_file=str(d.ca_file) if d.ca_file else None,
        start_tls=d.start_tls,
        timeout=d.timeout,
        netbios_domain=config.auth.netbios_domain,
        cache_ttl=d.cache_ttl,
    )


def open_id_services(config: Config):
    return open_services(
        store_url=config.store.url,
        key_file=config.store.key_file,
        audit_file=config.store.audit_file,
        lockout=config.lockout,
        netbios_domains=(config.auth.netbios_domain,),
        directory=open_directory(config),
        required_group=config.directory.required_group if config.directory else None,
        allow_domain_passwords=config.auth.allow_domain_passwords,
        two_factor=TwoFactorSettings(
            config.auth.two_factor, config.auth.two_factor_groups, config.auth.otp_trust_hours
        ),
        audit_syslog=config.audit.syslog,
    )


def preauth_settings(config: Config) -> PreAuthSettings:
    a = config.auth
    return PreAuthSettings.of(a, config.gateway.published_name or f"{a.netbios_computer.lower()}.{a.dns_domain}")


def device_gate(config: Config, ids: Any):
    """The decide stage (user/device partnerships) over in-process id services, or None when
    ``[devices] enabled = false``."""
    if not config.devices.enabled:
        return None
    return DeviceGate(
        open_device_service(config, ids),
        services=config.devices.services,
        extra_ua_rules=config.devices.user_agents,
        realm=config.auth.realm,
    )


def remote_device_gate(config: Config, remote: Any):
    """The decide stage of a gateway whose id service runs elsewhere (``[id_service] url``), or
    None when ``[devices] enabled = false`` here.

    Split of ``[devices]``: the gateway reads ``enabled``, ``services`` (which requests are
    decided) and ``user_agents`` (how a client kind is recognised: extraction happens here);
    the policy — ``default_action`` and the other defaults, ``[[devices.rules]]``,
    ``[[policy]]``, ``[devices.notify]`` — is the id service's configuration, applied by its
    ``POST /v1/devices/check``. Set here, those keys are ignored (with a warning)."""
    dc = config.devices
    if not dc.enabled:
        return None
    ignored = [
        name
        for name, value in (
            ("defaults", dc.defaults),
            ("rules", dc.rules),
            ("policy", dc.policies),
            ("notify", dc.notify),
        )
        if value
    ]
    if ignored:
        log.warning(
            "[id_service] url is set: the device policy (%s) is the id service's; "
            "these [devices] settings are ignored on the gateway",
            ", ".join(ignored),
        )
    return DeviceGate(
        RemoteDeviceChecker(remote), services=dc.services, extra_ua_rules=dc.user_agents, realm=config.auth.realm
    )


def kcd_backend(config: Config):
    """HOOK (issue 7, Kerberos half): the ``kcd`` backend mechanism built from ``[kerberos]``
    (``gateway.kcd.KcdBackend``). Called only when a service has ``backend = "kcd"``."""
    if config.kerberos is None:
        raise ConfigError(
            f'{config.path}: services: a service has backend = "kcd": configure '
            "[kerberos] (realm, keytab, account, front_end_spn)"
        )
    return kcd_from_config(config.kerberos)


def kerberos_acceptor(config: Config):
    """Kerberos tickets from clients in ``Negotiate`` (``[kerberos]``), or None."""
    if config.kerberos is None or "negotiate" not in config.auth.methods:
        return None
    return acceptor_from_config(config.kerberos)


def gateway_backends(config: Config, ids: Any = None) -> dict[str, Any]:
    """The backend credential mechanisms the services' ``backend`` modes need (besides
    ``none`` and ``passthrough``, which the gateway always has): ``vault`` reads the in-process
    id service's vault (not available with a remote id service), ``kcd`` is :func:`kcd_backend`."""
    modes = {str(t.get("backend", "none")) for t in config.services.values()}
    out: dict[str, Any] = {}
    if "vault" in modes:
        if ids is None:
            raise ConfigError(
                f'{config.path}: services: backend = "vault" needs the id service in '
                "this process: vault secrets are not served to a gateway over "
                "[id_service] url (use kcd)"
            )
        out["vault"] = VaultBackend(
            vault_service(ids), domain=config.auth.netbios_domain, workstation=config.auth.netbios_computer
        )
    if "kcd" in modes:
        out["kcd"] = kcd_backend(config)
    return out


def vault_service(ids: Any):
    """The credential vault over the in-process id services (one per IdServices)."""
    svc = getattr(ids, "_vault", None)
    if svc is None:
        svc = VaultService(ids.components.repo, ids.components.keyring, users=ids.users, audit=ids.audit)
        ids.bus.subscribe(svc.on_event)
        ids._vault = svc
    return svc


def oauth_grants(config: Config, credentials: Any, ids: Any = None):
    """The OAuth password grant interception (``gateway.oauth``)."""
    modes = {str(t.get("backend", "none")) for t in config.services.values()}
    vault = vault_service(ids) if ids is not None and "vault" in modes else None
    return OAuthGrants(
        credentials,
        settings=OAuthSettings(
            netbios_domain=config.auth.netbios_domain,
            failure_floor=config.auth.failure_floor,
            published_name=config.gateway.published_name,
        ),
        vault=vault,
    )


def store_readiness(ids: Any):
    """``/readyz`` over the in-process store: ``SELECT 1``, bounded, cached (``id.health``)."""
    return StoreProbe(ids.components.repo.engine)


def id_service_readiness(remote: Any):
    """HOOK (issue 12, id service failover): the gateway's ``/readyz`` with ``[id_service] url``.

    Ready while an id service answers: today, while the event stream to it is connected (the
    id service sends a heartbeat every 15 s and the stream is dropped after 45 s of silence, so
    a connected stream is an id service that answered recently). With a list of id services,
    give ``RemoteCredentials`` a ``ready() -> (ok, reason)`` meaning "at least one id service
    answered its health check recently": it is used here as soon as it exists."""

    async def ready() -> tuple[bool, str]:
        own = getattr(remote, "ready", None)
        if own is not None:
            return own()
        if remote.events_connected.is_set():
            return True, "ok"
        return False, f"id service {remote.url}: unreachable (event stream not connected)"

    return ready


@dataclass
class Node:
    """Everything one process runs: the gateway, the id service, the account monitor."""

    gateway: Gateway
    ids: Any = None
    monitor: Any = None
    remote: Any = None  # RemoteCredentials when the id service runs elsewhere
    web: Any = None  # the admin UI / portal / REST API server ([web] enabled), a uvicorn.Server
    follower: Any = None  # the store's event follower (ucgate.id.events), with an in-process store
    sip: Any = None  # the SIP relay ([sip] enabled), a gateway.sip.SipRelay
    # with ``remote``: what the id service's events reach and whose users are reported (the
    # gateway's and the SIP relay's); None: the gateway's
    on_event: Any = None
    live_users: Any = None
    _web_task: Any = None

    async def start(self) -> None:
        await self.gateway.start()
        if self.sip is not None:
            await self.sip.start()
        if self.follower is not None:
            self.follower.start()
        if self.web is not None:
            self._web_task = asyncio.create_task(self.web.serve())
            while not self.web.started and not self._web_task.done():
                await asyncio.sleep(0.02)
            if self._web_task.done():
                self._web_task.result()  # raise the listener's error (address in use...)
        if self.remote is not None:
            self.remote.start(self.on_event or self.gateway.on_event, self.live_users or self.gateway.live_users)
        if self.monitor is not None:
            self.monitor.start()

    async def stop(self) -> None:
        if self.monitor is not None:
            await self.monitor.stop()
        if self.follower is not None:
            await asyncio.to_thread(self.follower.stop)
        if self._web_task is not None:
            self.web.should_exit = True
            await self._web_task
        if self.sip is not None:
            await self.sip.stop()
        await self.gateway.stop()
        if self.remote is not None:
            await self.remote.aclose()
        if self.ids is not None:
            self.ids.close()


def build_node(config: Config, *, authenticator: Authenticator | None = None) -> Node:
    if authenticator is None and config.auth.authenticator == "deny-all":
        authenticator = DenyAll()
    if authenticator is not None:
        return Node(Gateway(config, authenticator))
    ic = config.id_service
    if ic is not None and ic.url:
        # The id service runs on the LAN: no store, keys or directory credentials here.
        remote = RemoteCredentials(
            list(ic.urls) or [ic.url],
            secret=ic.secret,
            ca_file=ic.ca_file,
            timeout=ic.timeout,
            outage_grace=ic.outage_grace,
        )
        gate = remote_device_gate(config, remote)
        gateway = Gateway(
            config,
            PreAuthenticator(
                remote,
                preauth_settings(config),
                device_id_of=gate.device_id_of if gate else None,
                kerberos=kerberos_acceptor(config),
            ),
            devices=gate,
            backends=gateway_backends(config),
            oauth=oauth_grants(config, remote),
            readiness=id_service_readiness(remote),
        )
        if config.sip is not None and config.sip.enabled:
            # the SIP relay over the id service's API: the budget (POST /v1/sip/attempt|settle),
            # the account of a signed REGISTER (/v1/auth/account), devices (/v1/devices/check);
            # the event stream cuts its connections too, and its users are reported
            relay = relay_from_config(config, None, gate.checker if gate else None, remote=remote)
            return Node(
                gateway,
                remote=remote,
                sip=relay,
                on_event=_fan_out(gateway.on_event, relay.on_event),
                live_users=_merged_live_users(gateway.live_users, relay.live_users),
            )
        return Node(gateway, remote=remote)
    ids = open_id_services(config)
    gate = device_gate(config, ids)
    gateway = Gateway(
        config,
        PreAuthenticator(
            ids.credentials,
            preauth_settings(config),
            device_id_of=gate.device_id_of if gate else None,
            kerberos=kerberos_acceptor(config),
        ),
        devices=gate,
        backends=gateway_backends(config, ids),
        oauth=oauth_grants(config, ids.credentials, ids),
        readiness=store_readiness(ids),
    )
    ids.bus.subscribe(gateway.post_event)
    sip, live_users = None, gateway.live_users
    if config.sip is not None and config.sip.enabled:  # the SIP relay: same budget, devices, events
        sip = relay_from_config(config, ids, gate.checker if gate else None)
        ids.bus.subscribe(sip.post_event)
        live_users = _merged_live_users(gateway.live_users, sip.live_users)
    monitor = None
    if ids.directory is not None:
        assert config.directory is not None  # ids.directory was opened from it (open_directory)
        monitor = AccountMonitor(
            ids.directory,
            live_users,
            ids.bus,
            ids.audit,
            interval=config.directory.recheck_interval,
            outage_grace=config.directory.outage_grace,
        )
    node = Node(gateway, ids, monitor, follower=event_follower(ids), sip=sip)
    if config.web is not None and config.web.enabled:
        node.web = node_web_server(
            config, ids, devices=gate.checker if gate else None, live_users=live_users, readiness=store_readiness(ids)
        )
    return node


def _fan_out(*handlers: Callable[[object], None]) -> Callable[[object], None]:
    """One event to several listeners (the gateway's and the SIP relay's ``on_event``)."""

    def on_event(event: object) -> None:
        for handler in handlers:
            try:
                handler(event)
            except Exception:  # one listener's bug must not keep the event from the other
                log.exception("an event handler failed")

    return on_event


def _merged_live_users(*sources: Callable[[], dict]) -> Callable[[], dict]:
    """{user: earliest sign-in} over several listeners (the gateway's and the SIP relay's)."""

    def live_users() -> dict:
        out: dict = {}
        for source in sources:
            for user, at in source().items():
                if user not in out or at < out[user]:
                    out[user] = at
        return out

    return live_users


@dataclass
class IdNode:
    """The id service on its own (``ucgate id-service``): the HTTP API and the account monitor."""

    ids: Any
    app: Any
    sessions: Any
    monitor: Any = None
    follower: Any = None


def build_id_node(config: Config) -> IdNode:
    if config.id_service is None or not config.id_service.secret:
        raise ConfigError(f"{config.path}: id_service.secret_file: required to run the id service")
    ids = open_id_services(config)
    # the gateways' session reports, in the store: every id service's monitor sees every gateway
    sessions = LiveSessions(ids.components.repo.engine)
    devices = None
    if config.devices.enabled:  # the gateways' POST /v1/devices/check (their decide stage)
        devices = open_device_service(config, ids)
    app = create_id_api(
        ids.credentials,
        secret=config.id_service.secret,
        bus=ids.bus,
        sessions=sessions,
        devices=devices,
        readiness=store_readiness(ids),
    )
    # the admin UI, portal and REST API (/admin, /portal, /api/v1) on the id service's listener,
    # over the same DeviceService as the API
    mount_routes(app, make_context(ids, config=config, devices=devices, live_users=sessions.live_users))
    observe_app(app, config.metrics, trust_request_ids=True)  # request ids, /metrics
    monitor = None
    if ids.directory is not None:
        assert config.directory is not None  # ids.directory was opened from it (open_directory)
        monitor = AccountMonitor(
            ids.directory,
            sessions.live_users,
            ids.bus,
            ids.audit,
            interval=config.directory.recheck_interval,
            outage_grace=config.directory.outage_grace,
        )
    return IdNode(ids, app, sessions, monitor, follower=event_follower(ids))


def id_server(config: Config, app: Any):
    """A uvicorn server for the id service's API: TLS 1.2+, no access log of request bodies."""
    import uvicorn
    from uvicorn.config import LOGGING_CONFIG

    ic = config.id_service
    assert ic is not None and ic.tls_cert and ic.tls_key
    uc = uvicorn.Config(
        app,
        host=ic.listen_host,
        port=ic.listen_port,
        ssl_certfile=str(ic.tls_cert),
        ssl_keyfile=str(ic.tls_key),
        ssl_ciphers=INTERMEDIATE_TLS12_CIPHERS,  # the gateway's profile (uvicorn's default: "TLSv1")
        log_level=config.log_level,
        lifespan="off",
        timeout_graceful_shutdown=2,
        server_header=False,
        proxy_headers=False,
        # uvicorn's lines as JSON too (through our root handler)
        log_config=None if config.log_format == "json" else LOGGING_CONFIG,
    )
    return uvicorn.Server(uc)


async def serve_id_service(config: Config) -> None:
    node = build_id_node(config)
    server = id_server(config, node.app)
    node.follower.start()
    if node.monitor is not None:
        node.monitor.start()
    try:
        await server.serve()  # handles SIGINT/SIGTERM itself
    finally:
        log.info("shutting down")
        if node.monitor is not None:
            await node.monitor.stop()
        await asyncio.to_thread(node.follower.stop)
        node.ids.close()


def event_follower(ids: Any):
    """Follows the store's event outbox, so changes made by other processes (the CLI, another
    node) reach this one within a second (``ucgate.id.events``)."""
    return EventFollower(ids.bus, ids.bus.outbox)


def run(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
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


async def serve(config: Config, *, log_level: str | None = None) -> None:
    """``ucgate serve``: run until SIGINT/SIGTERM; SIGHUP reloads the configuration
    (``ucgate.reload``). ``log_level``: the command line's, kept over [log] level on reload."""
    node = build_node(config)
    await node.start()
    if config.path is not None:
        asyncio.get_running_loop().add_signal_handler(
            signal.SIGHUP, Reloader(node, config, log_level_override=log_level).request
        )
    try:
        await wait_for_signal()
    finally:
        log.info("shutting down")
        await node.stop()
