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

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, PlainValidator, ValidationError, ValidationInfo, model_validator

from . import Bool, File, Listen, ListenAddr, PosFloat, RelPath, _Bad, _Model, config_error


class Role(StrEnum):
    """Highest first (web.service ranks them in this order)."""

    ADMIN = "admin"
    HELPDESK = "helpdesk"
    AUDITOR = "auditor"
    USER = "user"


ROLES = tuple(r.value for r in Role)
STAFF_ROLES = (Role.ADMIN.value, Role.HELPDESK.value, Role.AUDITOR.value)


def _roles(lower: bool) -> PlainValidator:
    """A [web.users] / [web.groups] table: name -> role (user names compared in lower case)."""

    def check(v: Any) -> dict[str, str]:
        if not isinstance(v, dict):
            raise ValueError(f"expected dict, got {type(v).__name__} {v!r}")
        out = {}
        for who, role in v.items():
            if not isinstance(role, str):
                raise _Bad(who, f"expected str, got {type(role).__name__} {role!r}")
            if role not in ROLES:
                raise _Bad(who, f"expected one of {', '.join(ROLES)}, got {role!r}")
            out[who.lower() if lower else who] = role
        return out

    return PlainValidator(check)


class WebConfig(_Model):
    """``[web]``; ``users`` and ``groups`` are read as ``user_roles`` and ``group_roles``."""

    _derived = frozenset({"listen_host", "listen_port"})

    enabled: Bool = False
    listen: ListenAddr = Listen("127.0.0.1", 8444)
    tls_cert: File | None = None  # default: the gateway's certificate and key
    tls_key: File | None = None
    idle_timeout: PosFloat = 900.0
    session_lifetime: PosFloat = 12 * 3600.0
    api_tokens_file: RelPath | None = None  # default: <data dir>/api-tokens.json
    user_roles: Annotated[dict[str, str], _roles(lower=True)] = Field(default_factory=dict, alias="users")
    group_roles: Annotated[dict[str, str], _roles(lower=False)] = Field(default_factory=dict, alias="groups")
    listen_host: str = "127.0.0.1"
    listen_port: int = 8444

    @model_validator(mode="after")
    def _derive(self, info: ValidationInfo) -> WebConfig:
        if "listen" in self.model_fields_set:
            self._set(listen_host=self.listen.host, listen_port=self.listen.port)
        data_dir = (info.context or {}).get("data_dir")
        if self.api_tokens_file is None and data_dir is not None:
            self._set(api_tokens_file=data_dir / "api-tokens.json")
        return self


def parse_web(raw: dict[str, Any], file: str, base: Path, data_dir: Path) -> WebConfig:
    """The [web] table of a configuration file (``raw``: the table)."""
    try:
        return WebConfig.model_validate(raw, context={"base": base, "data_dir": data_dir})
    except ValidationError as e:
        raise config_error(file, e, within=("web",)) from None
