"""``SIGHUP``: re-read the configuration of ``ucgate serve`` and apply what can change live.

Applied without a restart:

* the gateway's TLS certificate and key (``[gateway] tls_cert``/``tls_key``, re-read even when
  the paths are the same: a renewal replaces the files): new connections are handshaken with
  the new certificate, open ones keep theirs (and their NTLM channel binding);
* the device policy (``[devices]`` defaults, ``[[devices.rules]]``, ``[[policy]]`` and
  ``[[devices.user_agents]]``): decisions from then on use it (an *allowed* decision cached on a
  live connection holds until its re-check, at most a minute, ``gateway.devices``);
* ``[log] level`` (unless ``--log-level`` was given) and ``format``.

A configuration that does not validate — the file's own errors, or a certificate or key that
does not load — is refused whole: the log names the file and the key, and the running
configuration stays in force. Any other change (listeners, upstreams, services, auth, the store,
the directory...) is named in a warning and waits for a restart; the running value stays.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import ssl
from typing import Any

from . import metrics
from .config import Config, ConfigError, load
from .gateway.tls import certificate_der, server_context
from .id.devices import DeviceService
from .logs import setup_logging
from .protocols.devices import compile_ua_rules

log = logging.getLogger("ucgate.reload")

# Config fields this module applies (the rest is compared, and a change waits for a restart)
_LIVE = frozenset({"path", "gateway", "devices", "log_level", "log_format"})


@dataclasses.dataclass
class _Plan:
    config: Config
    tls: tuple[ssl.SSLContext, bytes] | None = None
    applied: list[str] = dataclasses.field(default_factory=list)
    restart: list[str] = dataclasses.field(default_factory=list)


class Reloader:
    """Reloads ``node``'s configuration (an ``app.Node``) from ``config.path``."""

    def __init__(self, node: Any, config: Config, *, log_level_override: str | None = None) -> None:
        self.node = node
        self.running = config  # what is in force
        self.log_level_override = log_level_override
        self._task: asyncio.Task | None = None
        self._again = False

    def request(self) -> None:
        """The signal handler: one reload at a time; a signal during one runs another after it."""
        if self._task is not None and not self._task.done():
            self._again = True
            return
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            self._again = False
            try:
                await self.reload()
            except Exception:  # a reload must never take the gateway down (logged with its traceback)
                log.exception("configuration reload failed; the running configuration stays in force")
                metrics.CONFIG_RELOADS.labels("refused").inc()
            if not self._again:
                return

    async def reload(self) -> bool:
        """Re-read and apply; False (logged) when the new configuration is refused."""
        path = self.running.path
        assert path is not None  # installed only for a configuration read from a file (app.serve); load() keeps it
        log.info("SIGHUP: re-reading %s", path)
        try:
            new = await asyncio.to_thread(load, path)  # file reads off the loop
            plan = await asyncio.to_thread(self._prepare, new)
        except ConfigError as e:
            log.error(
                "configuration reload refused, the running configuration stays in force: %s",
                e,
                extra={"reason": "config-refused"},
            )
            metrics.CONFIG_RELOADS.labels("refused").inc()
            return False
        self._apply(plan)
        for name in plan.restart:
            log.warning(
                "configuration reload: %s changed in %s: needs a restart; the running value stays until then",
                name,
                path,
            )
        log.info(
            "configuration reloaded from %s: %s", path, ", ".join(plan.applied) or "nothing that applies live changed"
        )
        metrics.CONFIG_RELOADS.labels("ok").inc()
        return True

    # --- validation (in a worker thread: certificate files are read) -------------------------
    def _prepare(self, new: Config) -> _Plan:
        old = self.running
        plan = _Plan(old)
        gw_old, gw_new = old.gateway, new.gateway
        if not gw_new.plain_http and not gw_old.plain_http:
            plan.tls = _load_tls(new)
            plan.applied.append("gateway.tls_cert")
        if _without_tls(gw_old) != _without_tls(gw_new):
            plan.restart.extend(
                f"gateway.{f.name}"
                for f in dataclasses.fields(gw_old)
                if f.name not in ("tls_cert", "tls_key") and getattr(gw_old, f.name) != getattr(gw_new, f.name)
            )
        gateway = (
            dataclasses.replace(gw_old, tls_cert=gw_new.tls_cert, tls_key=gw_new.tls_key)
            if plan.tls is not None
            else gw_old
        )
        devices = old.devices
        dv_old, dv_new = old.devices, new.devices
        if _policy_of(dv_old) != _policy_of(dv_new) and dv_old.enabled and dv_new.enabled:
            self._check_devices(new)
            devices = dv_old.model_copy(update=_policy_of(dv_new))
            plan.applied.append("devices (rules, defaults, policy, user_agents)")
        if dv_old != dv_new.model_copy(update=_policy_of(dv_old)):
            plan.restart.append("devices (enabled, services, notify)")
        log_level = new.log_level if self.log_level_override is None else old.log_level
        if (log_level, new.log_format) != (old.log_level, old.log_format):
            plan.applied.append("log")
        for f in dataclasses.fields(Config):
            if f.name not in _LIVE and getattr(old, f.name) != getattr(new, f.name):
                plan.restart.append(f.name)
        plan.config = dataclasses.replace(
            old, gateway=gateway, devices=devices, log_level=log_level, log_format=new.log_format
        )
        return plan

    def _check_devices(self, new: Config) -> None:
        file = str(new.path)
        try:
            compile_ua_rules(new.devices.user_agents)
        except ValueError as e:
            raise ConfigError(f"{file}: devices.user_agents: {e}") from None
        service = self._device_service()
        if service is not None:
            try:  # the same checks DeviceService makes at start, on a throwaway instance
                DeviceService(
                    service.store,
                    service.audit,
                    rules=new.devices.rules,
                    defaults=new.devices.defaults,
                    group_policies=new.devices.policies,
                )
            except (TypeError, ValueError) as e:
                raise ConfigError(f"{file}: devices: {e}") from None

    def _device_service(self) -> Any:
        gate = getattr(self.node.gateway, "devices", None)
        checker = getattr(gate, "checker", None)
        return checker if checker is not None and hasattr(checker, "set_policy") else None

    # --- applying (on the loop) -------------------------------------------------------------------
    def _apply(self, plan: _Plan) -> None:
        gateway = self.node.gateway
        if plan.tls is not None:
            gateway.set_tls(*plan.tls)
        new, old = plan.config, self.running
        if new.devices is not old.devices:
            gate = getattr(gateway, "devices", None)
            if gate is not None:
                gate.extra_ua_rules = tuple(new.devices.user_agents)
            service = self._device_service()
            if service is not None:  # the in-process id service's policy (remote: the id service's)
                service.set_policy(
                    rules=new.devices.rules, defaults=new.devices.defaults, group_policies=new.devices.policies
                )
        if (new.log_level, new.log_format) != (old.log_level, old.log_format):
            setup_logging(self.log_level_override or new.log_level, new.log_format)
        self.running = new


def _without_tls(gw: Any) -> Any:
    return dataclasses.replace(gw, tls_cert=None, tls_key=None)


def _policy_of(dc: Any) -> dict[str, Any]:
    return {"rules": dc.rules, "defaults": dc.defaults, "policies": dc.policies, "user_agents": dc.user_agents}


def _load_tls(config: Config) -> tuple[ssl.SSLContext, bytes]:
    gw = config.gateway
    assert gw.tls_cert is not None and gw.tls_key is not None
    try:
        return server_context(gw.tls_cert, gw.tls_key), certificate_der(gw.tls_cert)
    except (OSError, ssl.SSLError, ValueError) as e:
        raise ConfigError(
            f"{config.path}: gateway.tls_cert: cannot load {gw.tls_cert} with its key {gw.tls_key}: {e}"
        ) from None
