"""``[web]``: the admin UI, the self-service portal and the REST API.

```toml
[web]
enabled = true                 # serve them from `ucgate serve` on their own listener
listen = "127.0.0.1:8444"      # (the id service mounts them on its own listener instead)
tls_cert = "web.crt"           # default: the gateway's certificate and key
tls_key = "web.key"
idle_timeout = 900             # seconds without a request before a session ends
session_lifetime = 43200       # absolute limit, seconds
api_tokens_file = "/var/lib/ucgate/api-tokens.json"   # default: <data dir>/api-tokens.json

[web.users]                    # local mapping: user -> role
alice = "admin"
[web.groups]                   # directory groups -> roles (the highest role wins)
"UCGate Admins" = "admin"
"Helpdesk" = "helpdesk"
```

Roles: ``admin`` (everything), ``helpdesk`` (devices and users, no settings), ``auditor``
(read-only, settings included, secrets masked), ``user`` (the portal only). Every account
known to ucgate is a ``user``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any


class Role(StrEnum):
    """Highest first (web.service ranks them in this order)."""

    ADMIN = "admin"
    HELPDESK = "helpdesk"
    AUDITOR = "auditor"
    USER = "user"


ROLES = tuple(r.value for r in Role)
STAFF_ROLES = (Role.ADMIN.value, Role.HELPDESK.value, Role.AUDITOR.value)


@dataclass(frozen=True)
class WebConfig:
    enabled: bool = False
    listen_host: str = "127.0.0.1"
    listen_port: int = 8444
    tls_cert: Path | None = None
    tls_key: Path | None = None
    idle_timeout: float = 900.0
    session_lifetime: float = 12 * 3600.0
    api_tokens_file: Path | None = None
    user_roles: dict[str, str] = field(default_factory=dict)
    group_roles: dict[str, str] = field(default_factory=dict)


def parse_web(top: Any, base: Path, data_dir: Path) -> WebConfig:
    """The [web] table of a configuration (``top`` is config's ``_Section``)."""
    from ..config import _parse_listen

    sec = top.sub("web")
    d = WebConfig()
    host, port = _parse_listen(sec, f"{d.listen_host}:{d.listen_port}")
    cert, key = sec.path("tls_cert", None, base), sec.path("tls_key", None, base)
    for k, p in (("tls_cert", cert), ("tls_key", key)):
        if p is not None and not p.is_file():
            raise sec.fail(k, f"no such file: {p}")

    def roles(name: str) -> dict[str, str]:
        sub = sec.sub(name)
        out = {}
        for who in list(sub.table):
            role = sub.get(who, str, None)
            if role not in ROLES:
                raise sub.fail(who, f"expected one of {', '.join(ROLES)}, got {role!r}")
            out[who.lower() if name == "users" else who] = role
        sub.finish()
        return out

    cfg = WebConfig(
        enabled=sec.get("enabled", bool, d.enabled),
        listen_host=host, listen_port=port, tls_cert=cert, tls_key=key,
        idle_timeout=sec.positive("idle_timeout", float, d.idle_timeout),
        session_lifetime=sec.positive("session_lifetime", float, d.session_lifetime),
        api_tokens_file=sec.path("api_tokens_file", data_dir / "api-tokens.json", base),
        user_roles=roles("users"), group_roles=roles("groups"),
    )
    sec.finish()
    return cfg
