"""One TOML configuration file, validated at start with errors that name the file and the key.

Every setting has a default that is safe at the edge of a network (TLS on, upstream
certificates verified, limits and timeouts set); see the README's configuration reference
(``tests/test_config_reference.py`` holds the two in step).

Each table is a pydantic v2 model (frozen, ``extra="forbid"``: an unknown key is an error, as
a misspelt setting must not be ignored); the tables read on the request path ([gateway], its
limits and timeouts) are pydantic dataclasses, validated the same way, because a BaseModel's
``__getattr__`` keeps CPython from specialising attribute reads (~25 ns instead of ~7 ns).
pydantic rather than msgspec: it is already in the stack (the id service API's bodies,
id/api.py, are pydantic models; openapi-spec-validator of the test tools depends on it) and
msgspec is not installed; its errors carry the location of the bad value (``loc``), which
:func:`config_error` turns into the dotted key of our messages (``<file>:
gateway.limits.max_header_bytes: ...``); its field and model validators hold the checks a
type cannot say (``host:port``, files that must exist, secrets readable only by ucgate, paths
relative to the configuration file).
Checks across tables (a service's upstream, the role of the process, [kerberos]'s defaults
from [gateway]) are in :func:`from_dict`. ``[web]`` and ``[sip]``'s models are in their modules
(``config.web.WebConfig``, ``config.sip.SipConfig``: config/__init__.py does not import
upwards at import time), validated by :func:`from_dict` with the same conversion of errors.

Closed sets of values are StrEnums (a member compares equal to its string): defined here
unless a lower layer compares against them (``protocols.ntlm.ExtendedProtection``,
``policy.twofactor.Mode``, ``policy.devices.PartnershipState``).
"""

from __future__ import annotations

import ipaddress
import tomllib
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, NamedTuple
from urllib.parse import urlsplit

from annotated_types import Ge, Gt
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    Strict,
    StrictBool,
    StrictStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.dataclasses import dataclass as pydantic_dataclass

from ..policy.devices import DeviceRule, PartnershipState
from ..policy.twofactor import Mode as TwoFactorMode
from ..protocols import http1
from ..protocols.ntlm import ExtendedProtection
from ..protocols.sfb import SERVICE_NAMES

__all__ = [
    "AuthConfig",
    "AuthMethod",
    "Authenticator",
    "BackendMode",
    "BackendScheme",
    "Config",
    "ConfigError",
    "DevicesConfig",
    "DirectoryConfig",
    "ExtendedProtection",
    "GatewayConfig",
    "IdServiceConfig",
    "KcdMech",
    "KerberosConfig",
    "Limits",
    "LockoutConfig",
    "LogFormat",
    "LogLevel",
    "MetricsConfig",
    "StoreConfig",
    "Timeouts",
    "TraceLevel",
    "TwoFactorMode",
    "Upstream",
    "from_dict",
    "load",
]


class ConfigError(Exception):
    """A configuration problem; the message names the file and the key."""


# --- closed sets of values ---------------------------------------------------------------------
class Authenticator(StrEnum):
    PREAUTH = "preauth"
    DENY_ALL = "deny-all"


class AuthMethod(StrEnum):
    NEGOTIATE = "negotiate"
    NTLM = "ntlm"
    BASIC = "basic"


class TraceLevel(StrEnum):
    """[auth] trace: the auth header trace of protocols/decode.py."""

    NONE = "none"
    LOW = "low"  # one line per leg: scheme, message, user/domain/workstation
    VERBOSE = "verbose"  # every decoded field; never secrets


class BackendMode(StrEnum):
    """[services.<name>] backend: the credentials sent to the front end (gateway.backend)."""

    NONE = "none"
    PASSTHROUGH = "passthrough"
    VAULT = "vault"
    KCD = "kcd"


class BackendScheme(StrEnum):
    NTLM = "ntlm"
    BASIC = "basic"


class KcdMech(StrEnum):
    SPNEGO = "spnego"
    KRB5 = "krb5"


class LogLevel(StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class LogFormat(StrEnum):
    TEXT = "text"
    JSON = "json"  # one object per line


class Certprov(StrEnum):
    ALLOWED_ONLY = "allowed-only"
    DENY = "deny"


# the names older code imports
AUTHENTICATORS = tuple(Authenticator)
BACKEND_MODES = tuple(BackendMode)
TRACE_LEVELS = tuple(TraceLevel)
DEVICE_ACTIONS = tuple(s.value for s in PartnershipState)
# A bearer secret of 32 random bytes, base64 or hex: `openssl rand -base64 32 > id.secret`.
MIN_SECRET_LENGTH = 32
UNKNOWN_SETTING = "unknown setting (check the spelling; see README)"


# --- value types and their messages ------------------------------------------------------------
class _Bad(ValueError):
    """A validator's error for ``key`` below the place pydantic reports (``"[1]"``, ``"url"``)."""

    def __init__(self, key: str, msg: str) -> None:
        super().__init__(msg)
        self.key = key


def _got(v: Any) -> str:
    return f"{type(v).__name__} {v!r}"


def _want(kind: type, v: object) -> None:
    if kind in (int, float) and isinstance(v, bool):
        raise ValueError(f"expected {kind.__name__}, got a boolean")
    if not isinstance(v, kind):
        raise ValueError(f"expected {kind.__name__}, got {_got(v)}")


def _one_of(enum: type[StrEnum], fmt: str, *, plain: bool = False, lower: bool = False) -> PlainValidator:
    """``Annotated[enum, _one_of(enum, fmt)]``: ``enum``'s values only; ``fmt`` is the message
    ({got}: the value given). ``plain``: the value as a str (for the dicts other modules read
    and print with !r)."""
    values = {e.value: e for e in enum}

    def check(v: Any) -> Any:
        _want(str, v)
        if (v.lower() if lower else v) in values:
            m = values[v.lower() if lower else v]
            return m.value if plain else m
        raise ValueError(fmt.format(got=repr(v)))

    return PlainValidator(check)


def _float(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        _want(float, v)
    return float(v)


Bool = StrictBool
Str = StrictStr
Int = Annotated[int, Strict()]
PosInt = Annotated[int, Strict(), Gt(0)]
Float = Annotated[float, BeforeValidator(_float)]
PosFloat = Annotated[float, BeforeValidator(_float), Gt(0)]


def _path(v: Any, info: ValidationInfo) -> Path:
    """A path; relative ones are relative to the configuration file's directory."""
    if isinstance(v, Path):
        return v
    _want(str, v)
    p = Path(v).expanduser()
    return p if p.is_absolute() else (info.context or {}).get("base", Path.cwd()) / p


def _is_file(p: Path) -> Path:
    if not p.is_file():
        raise ValueError(f"no such file: {p}")
    return p


RelPath = Annotated[Path, BeforeValidator(_path)]
File = Annotated[Path, BeforeValidator(_path), AfterValidator(_is_file)]


class Listen(NamedTuple):
    host: str
    port: int


def host_port(v: str, *, listen: bool = False) -> tuple[str, int] | None:
    """``host:port`` (an IPv6 host in brackets) as (host, port), or None when it is not one.
    ``listen``: a listener's — the host may be empty (every address) and the port 0 (any)."""
    host, sep, port = v.rpartition(":")
    host = host.strip("[]")
    if not sep or not port.isdigit() or not (listen or host):
        return None
    n = int(port)
    if not (0 if listen else 1) <= n < 65536:
        return None
    return host, n


def _listen(v: Any) -> Listen:
    if isinstance(v, tuple):
        return Listen(*v)
    _want(str, v)
    hp = host_port(v, listen=True)
    if hp is None:
        raise ValueError(f"expected host:port, got {v!r}")
    return Listen(hp[0] or "0.0.0.0", hp[1])


ListenAddr = Annotated[Listen, PlainValidator(_listen)]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _networks(v: Any) -> tuple[Network, ...]:
    if isinstance(v, tuple):
        return v
    _want(list, v)
    out = []
    for i, cidr in enumerate(v):
        try:
            out.append(ipaddress.ip_network(cidr, strict=False))
        except (ValueError, TypeError):
            raise _Bad(f"[{i}]", f"not an address or CIDR: {cidr!r}") from None
    return tuple(out)


Networks = Annotated[tuple[Network, ...], PlainValidator(_networks)]


def _upper(v: str) -> str:
    return v.upper()


class _Model(BaseModel):
    """A table: frozen, unknown keys refused. ``_derived`` are attributes computed from other
    keys (set by the model's validators) and fields with an alias are read by the alias (the
    key of the file): from a file (a validation context with ``base``) those names are unknown
    keys; code may pass them (``WebConfig(user_roles=...)``)."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True, populate_by_name=True)
    _derived: ClassVar[frozenset[str]] = frozenset()

    @model_validator(mode="before")
    @classmethod
    def _no_derived_keys(cls, data: Any, info: ValidationInfo) -> Any:
        if isinstance(data, dict) and "base" in (info.context or {}):
            not_keys = cls._derived | {n for n, f in cls.model_fields.items() if f.alias and f.alias != n}
            for k in sorted(not_keys & data.keys()):
                raise _Bad(k, UNKNOWN_SETTING)
        return data

    def _set(self, **kw: Any) -> None:
        for k, v in kw.items():
            object.__setattr__(self, k, v)


def toml_keys(model: type) -> dict[str, Any]:
    """The keys of a table's model (a BaseModel or a pydantic dataclass): key -> its field
    (tests/test_config_reference.py)."""
    derived: frozenset[str] = getattr(model, "_derived", frozenset())
    if issubclass(model, BaseModel):
        fields = model.model_fields
    else:  # a pydantic dataclass
        fields = model.__pydantic_fields__  # type: ignore[attr-defined]  # set by pydantic.dataclasses, not declared
    return {f.alias or name: f for name, f in fields.items() if name not in derived}


# --- [gateway] -----------------------------------------------------------------------------------
# Limits and Timeouts are pydantic dataclasses, not models: they are read on the request path
# (session deadlines), and a BaseModel's __getattr__ keeps CPython from specialising attribute
# reads on its instances (~25 ns a read instead of ~7 ns).
@pydantic_dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class Limits:
    max_header_bytes: PosInt = http1.DEFAULT_MAX_HEADER_BYTES
    max_header_count: PosInt = http1.DEFAULT_MAX_HEADER_COUNT
    max_target_bytes: PosInt = http1.DEFAULT_MAX_TARGET_BYTES
    # Exchange's EAS maxRequestLength is tens of MB (attachments); SfB services need far less.
    max_body_bytes: PosInt = 32 * 1024 * 1024
    # A request we refuse (401 during an NTLM handshake) may carry a body; we read and drop up
    # to this much to keep the connection (NTLM needs it), otherwise we close.
    max_drain_bytes: PosInt = 64 * 1024
    max_connections: PosInt = 10000


@pydantic_dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class Timeouts:
    header_read: PosFloat = 10.0  # a new connection's first request head (slowloris)
    idle: PosFloat = 120.0  # between requests on a keep-alive connection (IIS connectionTimeout)
    body_read: PosFloat = 60.0  # a pause while the client sends a body
    upstream_connect: PosFloat = 5.0
    # UCWA's event channel long-polls for up to 180 s (the "timeout" parameter of events).
    upstream_read: PosFloat = 200.0


def _health_listen(v: Any) -> Listen | None:
    if v is None:
        return None
    if not isinstance(v, tuple):
        _want(str, v)
    return _listen(v) if v else None


@pydantic_dataclass(frozen=True, config=ConfigDict(extra="forbid", arbitrary_types_allowed=True))
class GatewayConfig:
    """``[gateway]`` (a pydantic dataclass, as Limits and Timeouts: read on the request path).
    Its certificate (required unless plain_http or the id service) and proxy_protocol's
    trusted_proxies are checked by :func:`from_dict`, so that ``dataclasses.replace`` works."""

    _derived: ClassVar[frozenset[str]] = frozenset({"listen_host", "listen_port"})

    listen: ListenAddr = Listen("0.0.0.0", 443)
    tls_cert: RelPath | None = None
    tls_key: RelPath | None = None
    plain_http: Bool = False
    published_name: Str | None = None
    identity_header: Str = "X-Ucgate-User"
    trusted_proxies: Networks = ()
    # connections from trusted_proxies start with a PROXY header (HAProxy send-proxy[-v2])
    proxy_protocol: Bool = False
    # (host, port) of the /healthz and /readyz listener (plain HTTP), or None
    health_listen: Annotated[tuple[str, int] | None, PlainValidator(_health_listen)] = None
    limits: Limits = field(default_factory=Limits)
    timeouts: Timeouts = field(default_factory=Timeouts)
    listen_host: str = "0.0.0.0"  # of listen
    listen_port: int = 443

    @field_validator("identity_header")
    @classmethod
    def _header_name(cls, v: str) -> str:
        if not v or not all(c.isalnum() or c == "-" for c in v):
            raise ValueError("must be a header name (letters, digits, '-')")
        return v

    @model_validator(mode="before")
    @classmethod
    def _no_derived_keys(cls, data: Any, info: ValidationInfo) -> Any:
        if isinstance(data, dict) and "base" in (info.context or {}):
            for k in sorted(cls._derived & data.keys()):
                raise _Bad(k, UNKNOWN_SETTING)
        return data

    @model_validator(mode="after")
    def _derive(self) -> GatewayConfig:
        object.__setattr__(self, "listen_host", self.listen.host)
        object.__setattr__(self, "listen_port", self.listen.port)
        return self


# --- [upstreams.<name>], [services.<name>] ------------------------------------------------------
class Upstream(_Model):
    _derived = frozenset({"name", "scheme", "host", "port"})

    url: Str | None = None
    verify: Bool = True
    ca_bundle: File | None = None
    server_name: Str | None = None
    max_idle: PosInt = 32
    name: str = ""  # the table's name
    scheme: str = ""  # of url
    host: str = ""
    port: int = 0

    @model_validator(mode="after")
    def _check(self) -> Upstream:
        url = self.url
        if url is None:
            raise _Bad("url", "required (e.g. https://fe01.contoso.local:4443)")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise _Bad("url", f"expected http(s)://host[:port], got {url!r}")
        if parts.path not in ("", "/") or parts.query:
            raise _Bad("url", "must not have a path or query; paths are forwarded unchanged")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise _Bad("url", f"bad port in {url!r}") from None
        self._set(scheme=parts.scheme, host=parts.hostname, port=port)
        return self


def _methods(v: Any) -> tuple[str, ...]:
    _want(list, v)
    if not v:
        raise ValueError("must name at least one method")
    for i, m in enumerate(v):
        if not isinstance(m, str) or not m.isascii() or not http1._TOKEN_RE.fullmatch(m.encode()):
            raise _Bad(f"[{i}]", f"not a method name: {m!r}")
        if m != m.upper():  # methods are case-sensitive; clients send them in upper case
            raise _Bad(f"[{i}]", f"write methods in upper case: {m!r}")
    return tuple(dict.fromkeys(v))


class ServiceConfig(_Model):
    """``[services.<name>]``; the gateway reads it as a dict of the keys given."""

    anonymous: Bool | None = None
    enabled: Bool | None = None
    upstream: Str | None = None
    max_body_bytes: Annotated[int, Strict(), Ge(0)] | None = None
    # issue 7: backend credentials (gateway.backend)
    backend: (
        Annotated[
            BackendMode, _one_of(BackendMode, "must be one of none, passthrough, vault, kcd, got {got}", plain=True)
        ]
        | None
    ) = None
    backend_scheme: (
        Annotated[BackendScheme, _one_of(BackendScheme, "must be ntlm or basic, got {got}", plain=True)] | None
    ) = None
    # issue 13: the methods its clients use
    methods: Annotated[tuple[str, ...], PlainValidator(_methods)] | None = None


# --- [auth], [lockout] ---------------------------------------------------------------------------
def _auth_methods(v: Any) -> tuple[AuthMethod, ...]:
    if isinstance(v, tuple):
        v = list(v)
    _want(list, v)
    out = []
    for i, m in enumerate(v):
        if m not in tuple(AuthMethod):
            raise _Bad(f"[{i}]", f"expected negotiate, ntlm or basic, got {m!r}")
        out.append(AuthMethod(m))
    return tuple(out)


_TWO_FACTOR = "expected off, otp-appended or device-approval, got {got}"


def _two_factor_groups(v: Any) -> tuple[tuple[str, TwoFactorMode], ...]:
    if isinstance(v, tuple):
        return v
    _want(dict, v)
    out = []
    for g, m in v.items():
        if m not in tuple(TwoFactorMode):
            raise _Bad(g, _TWO_FACTOR.format(got=repr(m)))
        out.append((g, TwoFactorMode(m)))
    return tuple(out)


class AuthConfig(_Model):
    authenticator: Annotated[Authenticator, _one_of(Authenticator, "expected one of preauth, deny-all, got {got}")] = (
        Authenticator.PREAUTH
    )
    methods: Annotated[tuple[AuthMethod, ...], PlainValidator(_auth_methods)] = tuple(AuthMethod)
    extended_protection: Annotated[
        ExtendedProtection, _one_of(ExtendedProtection, "expected require, allow or off, got {got}")
    ] = ExtendedProtection.REQUIRE
    allow_domain_passwords: Bool = False
    realm: Str = "ucgate"
    netbios_domain: Annotated[Str, AfterValidator(_upper)] = "UCGATE"
    dns_domain: Str = "ucgate.local"
    netbios_computer: Annotated[Str, AfterValidator(_upper)] = "UCGATE-GW"
    max_clock_skew: PosInt = 300
    failure_floor: Float = 0.25
    two_factor: Annotated[TwoFactorMode, _one_of(TwoFactorMode, _TWO_FACTOR)] = TwoFactorMode.OFF
    # (group, mode); the strictest applies
    two_factor_groups: Annotated[tuple[tuple[str, TwoFactorMode], ...], PlainValidator(_two_factor_groups)] = ()
    otp_trust_hours: PosFloat = 24.0
    # Auth header trace in the gateway log (protocols/decode.py): "none", "low" (one line per
    # leg: scheme, message, user/domain/workstation) or "verbose" (all decoded fields). Never secrets.
    trace: Annotated[TraceLevel, _one_of(TraceLevel, "expected none, low or verbose, got {got}")] = TraceLevel.NONE


class LockoutConfig(_Model):
    user_failures: PosInt = 5
    ip_failures: PosInt = 20
    window: PosFloat = 900.0


class DataConfig(_Model):
    dir: RelPath = Path("/var/lib/ucgate")


class StoreConfig(_Model):
    url: Str = ""  # default: sqlite:///<data dir>/ucgate.db
    # The key that encrypts stored secrets must not sit next to the data it protects.
    key_file: RelPath = Path("/etc/ucgate/ucgate.key")
    audit_file: RelPath | None = None  # default: <data dir>/audit.jsonl

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if v and not v.startswith(("sqlite:", "postgresql")):
            raise ValueError(f"expected sqlite:///path or postgresql+psycopg://..., got {v!r}")
        return v


class LogConfig(_Model):
    level: Annotated[LogLevel, _one_of(LogLevel, "expected debug, info, warning or error", lower=True)] = LogLevel.INFO
    format: Annotated[LogFormat, _one_of(LogFormat, 'expected "text" or "json", got {got}')] = LogFormat.TEXT


# --- [directory] ---------------------------------------------------------------------------------
def _ldap_urls(v: Any) -> tuple[str, ...]:
    if isinstance(v, tuple):
        return v
    if not isinstance(v, (str, list)):
        raise ValueError(f"expected str/list, got {_got(v)}")
    urls = [v] if isinstance(v, str) else v
    for i, u in enumerate(urls):
        if not isinstance(u, str) or not u.startswith(("ldap://", "ldaps://")):
            msg = f"expected ldaps://host or ldap://host, got {u!r}"
            raise _Bad(f"[{i}]", msg) if len(urls) > 1 else ValueError(msg)
    return tuple(urls)


class DirectoryConfig(_Model):
    urls: Annotated[tuple[str, ...], PlainValidator(_ldap_urls)] = Field((), alias="url")
    bind_dn: Str = ""
    bind_password: Str = Field("", repr=False)
    bind_password_file: RelPath | None = None
    base_dn: Str = ""
    ca_file: File | None = None
    start_tls: Bool = False
    timeout: PosFloat = 5.0
    cache_ttl: PosFloat = 30.0
    required_group: Str | None = None
    recheck_interval: PosFloat = 30.0
    outage_grace: PosFloat = 300.0

    @model_validator(mode="after")
    def _check(self) -> DirectoryConfig:
        if not self.urls:
            raise _Bad("url", "required: ldaps://dc1.contoso.local (or a list of DCs)")
        if not self.bind_dn:
            raise _Bad("bind_dn", "required: the service account's DN")
        if not self.base_dn:
            raise _Bad("base_dn", "required, e.g. DC=contoso,DC=local")
        if self.bind_password_file is not None:
            try:
                self._set(bind_password=self.bind_password_file.read_text().strip())
            except OSError as e:
                raise _Bad("bind_password_file", f"cannot read {self.bind_password_file}: {e.strerror}") from None
        if not self.bind_password:
            raise _Bad("bind_password_file", "required (a file readable only by ucgate)")
        if any(u.startswith("ldap://") for u in self.urls) and not self.start_tls:
            raise _Bad("start_tls", "plain ldap:// needs start_tls = true (passwords cross this link)")
        return self


# --- [metrics] (issue 17): who may read /metrics --------------------------------------------
class MetricsConfig(_Model):
    """``[metrics]``: ``GET /metrics`` on the gateway's health listener, the id service's and the
    web listener, for peers in ``allow`` (CIDRs; default loopback); others get 403."""

    enabled: Bool = True
    allow: Networks = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


# --- [kerberos] (issue 7) ------------------------------------------------------------------------
def _front_end_spns(v: Any) -> tuple[tuple[str, str], ...]:
    if isinstance(v, tuple):
        return v
    if not isinstance(v, (str, dict)):
        raise ValueError(f"expected str/dict, got {_got(v)}")
    spns = {"*": v} if isinstance(v, str) else v
    for name, spn in spns.items():
        if name != "*" and name not in SERVICE_NAMES:
            raise _Bad(name, "unknown service")
        if not isinstance(spn, str) or "/" not in spn:
            raise _Bad(name, f"expected an SPN like HTTP/fe.contoso.local, got {spn!r}")
    return tuple(spns.items())


class KerberosConfig(_Model):
    """``[kerberos]``: the pool's service account and keytab (``HTTP/<published name>``).

    ``accept_negotiate``: verify Kerberos tickets from clients in ``Negotiate``.
    ``account``: the principal the gateway gets its TGT as for ``kcd`` (the service account's
    sAMAccountName; AD issues no TGT to an SPN). ``front_end_spn``: the front end's SPN per
    service name (``"*"``: every other service), for ``kcd`` and ``ucgate kerberos check``.
    ``service_principal`` defaults to ``HTTP/<published_name>``, ``published_name`` to
    [gateway]'s (set by :func:`from_dict`).
    """

    realm: Str = ""
    keytab: RelPath | None = None
    service_principal: Str | None = None
    account: Str | None = None
    krb5_conf: File | None = None
    accept_negotiate: Bool = True
    front_end_spns: Annotated[tuple[tuple[str, str], ...], PlainValidator(_front_end_spns)] = Field(
        (), alias="front_end_spn"
    )
    kcd_timeout: PosFloat = 10.0
    kcd_mech: Annotated[KcdMech, _one_of(KcdMech, "expected spnego or krb5, got {got}")] = KcdMech.SPNEGO
    published_name: Str | None = None
    check_user: Str | None = None  # a user for the check's S4U round trip

    @model_validator(mode="after")
    def _check(self) -> KerberosConfig:
        if not self.realm:
            raise _Bad("realm", "required: the AD realm in upper case, e.g. CONTOSO.LOCAL")
        if self.realm != self.realm.upper():
            raise _Bad("realm", f"Kerberos realms of AD are upper case: {self.realm.upper()!r}, got {self.realm!r}")
        if self.keytab is None:
            raise _Bad("keytab", "required: the pool's keytab (HTTP/<published name>)")
        if not self.keytab.is_file():
            raise _Bad("keytab", f"no such file: {self.keytab}")
        return self


# --- [devices], [[devices.rules]], [[policy]] (issue 6) -----------------------------------------
_ACTION = "expected one of allowed, quarantined, blocked, got {got}"


class _DeviceSettings(_Model):
    """The device policy keys of [devices] and of each [[policy]] (``id.devices.DEVICE_POLICY_KEYS``)."""

    _SETTINGS: ClassVar[tuple[str, ...]] = (
        "default_action",
        "problem_action",
        "max_devices",
        "trust_lifetime_hours",
        "certprov",
        "require_second_factor",
    )
    default_action: Annotated[PartnershipState, _one_of(PartnershipState, _ACTION, plain=True)] | None = None
    problem_action: Annotated[PartnershipState, _one_of(PartnershipState, _ACTION, plain=True)] | None = None
    max_devices: Annotated[int, Strict(), Ge(0)] | None = None
    trust_lifetime_hours: PosFloat | None = None
    certprov: (
        Annotated[Certprov, _one_of(Certprov, 'expected "allowed-only" or "deny", got {got}', plain=True)] | None
    ) = None
    require_second_factor: Bool | None = None

    def settings(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self._SETTINGS if getattr(self, k) is not None}


class DeviceRuleConfig(_Model):
    """One ``[[devices.rules]]`` entry (a ``policy.devices.DeviceRule``)."""

    action: (
        Annotated[
            PartnershipState, _one_of(PartnershipState, "required: one of allowed, quarantined, blocked, got {got}")
        ]
        | None
    ) = None
    device_type: Str | None = None
    model: Str | None = None
    os: Str | None = None
    user_agent: Str | None = None
    client_kind: Str | None = None
    groups: tuple[Str, ...] = ()
    name: Str | None = None

    @field_validator("groups", mode="before")
    @classmethod
    def _groups(cls, v: Any) -> Any:
        if not isinstance(v, list) or not all(isinstance(g, str) and g for g in v):
            raise ValueError("expected a list of group names or DNs")
        return v

    @model_validator(mode="after")
    def _check(self) -> DeviceRuleConfig:
        if self.action is None:
            raise _Bad("action", "required: one of allowed, quarantined, blocked, got None")
        return self


def _rules(rules: tuple[DeviceRuleConfig, ...]) -> tuple[DeviceRule, ...]:
    out = []
    for i, r in enumerate(rules):
        try:
            assert r.action is not None  # DeviceRuleConfig._check
            out.append(
                DeviceRule(
                    action=r.action,
                    groups=frozenset(r.groups),
                    name=r.name or f"#{i}",
                    device_type=r.device_type,
                    model=r.model,
                    os=r.os,
                    user_agent=r.user_agent,
                    client_kind=r.client_kind,
                )
            )
        except ValueError as e:
            raise _Bad(f"[{i}].{'client_kind' if 'client_kind' in str(e) else 'action'}", str(e)) from None
    return tuple(out)


class UserAgentConfig(_Model):
    """One ``[[devices.user_agents]]`` entry: a regex and the client kind it means."""

    match: Str | None = None
    client_kind: Str | None = None

    @model_validator(mode="after")
    def _check(self) -> UserAgentConfig:
        if not self.match or not self.client_kind:
            raise _Bad("match", "each entry needs match (a regex) and client_kind")
        return self


def _user_agents(t: tuple[UserAgentConfig, ...]) -> Any:
    return tuple((u.match, u.client_kind) for u in t)


def _notify(n: NotifyConfig) -> Any:
    return n.model_dump(exclude_unset=True)


class NotifyConfig(_Model):
    """``[devices.notify]``: who hears of a new device (``id.notify``)."""

    smtp_host: Str | None = None
    smtp_port: Int | None = None
    smtp_from: Str | None = None
    smtp_starttls: Bool | None = None
    smtp_domain: Str | None = None
    webhook_url: Str | None = None


# [devices] rules, user_agents and notify are read as the tables' models and kept as what the
# id service reads: DeviceRules, (match, client_kind) pairs and a dict of the keys given
if TYPE_CHECKING:
    _Rules = tuple[DeviceRule, ...]
    _UserAgents = tuple[tuple[str, str], ...]
    _Notify = dict[str, Any]
else:
    _Rules = Annotated[tuple[DeviceRuleConfig, ...], AfterValidator(_rules)]
    _UserAgents = Annotated[tuple[UserAgentConfig, ...], AfterValidator(_user_agents)]
    _Notify = Annotated[NotifyConfig, AfterValidator(_notify)]


class DevicesConfig(_DeviceSettings):
    """User/device partnerships. ``defaults`` and each policy's ``settings`` hold the keys of
    ``ucgate.id.devices.DEVICE_POLICY_KEYS``; ``rules`` are ``policy.devices.DeviceRule``;
    ``policies`` are ``policy.groups.GroupPolicy`` (from ``[[policy]]``); ``user_agents``
    (regex, client kind); ``notify`` the keys of ``[devices.notify]`` given."""

    _derived = frozenset({"defaults", "policies"})

    enabled: Bool = True
    services: tuple[Str, ...] = ("eas", "ucwa", "certprov")
    rules: _Rules = ()
    user_agents: _UserAgents = ()
    notify: _Notify = Field(default_factory=dict)
    defaults: dict[str, Any] = Field(default_factory=dict)
    policies: tuple[Any, ...] = ()

    @field_validator("services")
    @classmethod
    def _services(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for i, n in enumerate(v):
            if n not in SERVICE_NAMES:
                raise _Bad(f"[{i}]", f"unknown service {n!r}")
        return v

    @model_validator(mode="after")
    def _check(self) -> DevicesConfig:
        from ..protocols.devices import compile_ua_rules

        try:
            compile_ua_rules(self.user_agents)
        except ValueError as e:
            raise _Bad("user_agents", str(e)) from None
        self._set(defaults=self.settings())
        return self


class PolicyConfig(_DeviceSettings):
    """One ``[[policy]]`` entry: a directory group's device settings (``policy.groups.GroupPolicy``)."""

    group: Str | None = None
    name: Str | None = None

    @model_validator(mode="after")
    def _check(self) -> PolicyConfig:
        if not self.group:
            raise _Bad("group", "required: the directory group (name or DN) this policy is for")
        return self


# --- [id_service] --------------------------------------------------------------------------------
def _id_urls(v: Any) -> tuple[str, ...]:
    if isinstance(v, tuple):
        return v
    if not isinstance(v, (str, list)):
        raise ValueError(f"expected str/list, got {_got(v)}")
    urls = (v,) if isinstance(v, str) else tuple(v)
    if not urls:
        raise ValueError("an empty list: give at least one https://host[:port]")
    for u in urls:
        if not isinstance(u, str):
            raise ValueError(f"expected https://host[:port] strings, got {u!r}")
        parts = urlsplit(u)
        if parts.scheme != "https" or not parts.hostname:
            raise ValueError(f"expected https://host[:port] (the secret crosses this link), got {u!r}")
        try:
            _ = parts.port
        except ValueError:
            raise ValueError(f"bad port in {u!r}") from None
    return urls


def _read_secret(p: Path) -> bytes:
    try:
        st = p.stat()
        raw = p.read_bytes().strip()
    except OSError as e:
        raise _Bad("secret_file", f"cannot read {p}: {e.strerror}") from None
    if st.st_mode & 0o077:
        raise _Bad("secret_file", f"{p} is readable by group or others (chmod 600 {p})")
    if len(raw) < MIN_SECRET_LENGTH or not all(0x21 <= b < 0x7F for b in raw):
        raise _Bad(
            "secret_file",
            f"{p}: expected at least {MIN_SECRET_LENGTH} printable ASCII "
            "characters without spaces (openssl rand -base64 32)",
        )
    return raw


class IdServiceConfig(_Model):
    """``[id_service]``: the gateway's link to a remote id service (``url``, ``ca_file``,
    ``secret_file``) and the id service's own listener (``listen``, ``tls_cert``, ``tls_key``,
    ``secret_file``). Without ``url`` the gateway runs the id service in-process."""

    _derived = frozenset({"secret", "listen_host", "listen_port"})

    # every id service of the pool, in failover order (``url``: one, or the list)
    urls: Annotated[tuple[str, ...], PlainValidator(_id_urls)] = Field((), alias="url")
    ca_file: File | None = None
    timeout: PosFloat = 8.0
    outage_grace: PosFloat = 300.0
    listen: ListenAddr = Listen("0.0.0.0", 8444)
    tls_cert: RelPath | None = None
    tls_key: RelPath | None = None
    secret_file: RelPath | None = None
    secret: bytes = Field(b"", repr=False)
    listen_host: str = "0.0.0.0"
    listen_port: int = 8444

    @property
    def url(self) -> str | None:
        """The first of ``urls``."""
        return self.urls[0] if self.urls else None

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo) -> IdServiceConfig:
        role = (info.context or {}).get("role", "gateway")
        if "listen" in self.model_fields_set:
            self._set(listen_host=self.listen.host, listen_port=self.listen.port)
        if role == "id-service":
            for k, p in (("tls_cert", self.tls_cert), ("tls_key", self.tls_key)):
                if p is None:
                    raise _Bad(k, "required: the id service listens with TLS only")
        for k, p in (("tls_cert", self.tls_cert), ("tls_key", self.tls_key)):
            if p is not None and not p.is_file():
                raise _Bad(k, f"no such file: {p}")
        if self.secret_file is not None:
            self._set(secret=_read_secret(self.secret_file))
        elif self.urls or role == "id-service":
            raise _Bad("secret_file", "required: the shared secret of the gateways and the id service")
        return self


# --- [audit] (issue 17): audit events to a syslog receiver ---------------------------------------
class SyslogTable(_Model):
    """``[audit.syslog]``, read into a ``ucgate.id.audit_syslog.SyslogConfig``."""

    address: Str | None = None  # host:port of the receiver
    tls: Bool = True
    ca_file: File | None = None
    cert_file: File | None = None
    key_file: File | None = None
    server_name: Str | None = None
    facility: Str = "authpriv"
    app_name: Str = "ucgate"
    hostname: Str | None = None
    queue_size: PosInt = 10000
    timeout: PosFloat = 10.0

    @model_validator(mode="after")
    def _check(self) -> SyslogTable:
        from .syslog import FACILITIES

        if not self.address:
            raise _Bad("address", "required: host:port of the syslog receiver (TCP; 6514 for TLS)")
        if host_port(self.address) is None:
            raise _Bad("address", f"expected host:port, got {self.address!r}")
        if not self.tls and (self.ca_file or self.cert_file or self.key_file):
            raise _Bad("tls", "ca_file, cert_file and key_file need tls = true")
        if self.key_file is not None and self.cert_file is None:
            raise _Bad("cert_file", "key_file without cert_file")
        if self.facility not in FACILITIES:
            raise _Bad("facility", f"expected one of {', '.join(FACILITIES)}, got {self.facility!r}")
        return self


def _syslog(t: SyslogTable | None) -> Any:
    if t is None:
        return None
    import ssl

    from .syslog import SyslogConfig, tls_context

    hp = host_port(t.address or "")
    assert hp is not None  # checked by SyslogTable
    cfg = SyslogConfig(
        host=hp[0],
        port=hp[1],
        tls=t.tls,
        ca_file=t.ca_file,
        cert_file=t.cert_file,
        key_file=t.key_file,
        server_name=t.server_name,
        facility=t.facility,
        app_name=t.app_name,
        hostname=t.hostname,
        queue_size=t.queue_size,
        timeout=t.timeout,
    )
    if cfg.tls:
        try:
            tls_context(cfg)  # an unreadable CA or a key that does not fit: now, not at the first event
        except (OSError, ssl.SSLError) as e:
            raise _Bad("cert_file" if cfg.cert_file else "ca_file", f"cannot load: {e}") from None
    return cfg


class AuditConfig(_Model):
    """``[audit]``; ``syslog`` is a ``ucgate.id.audit_syslog.SyslogConfig`` or None."""

    syslog: Annotated[SyslogTable | None, AfterValidator(_syslog)] = None


# --- the file ------------------------------------------------------------------------------------
def _table(v: Any) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise ValueError("must be a table")
    return v


class ConfigFile(_Model):
    """The file's top level: every table and its model."""

    gateway: GatewayConfig = Field(default_factory=GatewayConfig)
    upstreams: dict[str, Upstream] = Field(default_factory=dict)
    services: dict[str, ServiceConfig] = Field(default_factory=dict)
    auth: AuthConfig = AuthConfig()
    lockout: LockoutConfig = LockoutConfig()
    data: DataConfig = DataConfig()
    store: StoreConfig = StoreConfig()
    directory: DirectoryConfig | None = None
    id_service: IdServiceConfig | None = None
    devices: DevicesConfig = Field(default_factory=DevicesConfig)
    policy: tuple[PolicyConfig, ...] = ()
    kerberos: KerberosConfig | None = None
    audit: AuditConfig = AuditConfig()
    log: LogConfig = LogConfig()
    metrics: MetricsConfig = MetricsConfig()
    web: Annotated[dict[str, Any], PlainValidator(_table)] = Field(default_factory=dict)  # web.settings.WebConfig
    sip: Annotated[dict[str, Any], PlainValidator(_table)] = Field(default_factory=dict)  # gateway.sipconfig

    @field_validator("services", mode="before")
    @classmethod
    def _service_names(cls, v: Any) -> Any:
        for n in v if isinstance(v, dict) else ():
            if n not in SERVICE_NAMES:
                raise _Bad(n, f"unknown service; known: {', '.join(sorted(SERVICE_NAMES))}")
        return v


@dataclass(frozen=True)
class Config:
    path: Path | None
    gateway: GatewayConfig
    upstreams: dict[str, Upstream]
    services: dict[str, dict[str, Any]]
    auth: AuthConfig
    data_dir: Path
    store: StoreConfig
    lockout: LockoutConfig = field(default_factory=LockoutConfig)
    directory: DirectoryConfig | None = None
    log_level: str = LogLevel.INFO
    log_format: str = LogFormat.TEXT  # [log] format: "text" or "json" (one object per line)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)  # [metrics]: /metrics
    id_service: IdServiceConfig | None = None
    devices: DevicesConfig = field(default_factory=DevicesConfig)
    web: Any = None  # ucgate.web.settings.WebConfig ([web]: admin UI, portal, REST API)
    kerberos: KerberosConfig | None = None  # [kerberos]: Negotiate from clients, kcd, the check
    audit: AuditConfig = field(default_factory=AuditConfig)  # [audit]: syslog delivery
    sip: Any = None  # ucgate.gateway.sipconfig.SipConfig ([sip]: the SIP relay to the Access Edge)

    # the attributes the id service's CLI commands read (ucgate.id.admin_cli)
    @property
    def store_url(self) -> str:
        return self.store.url

    @property
    def key_file(self) -> Path:
        return self.store.key_file

    @property
    def audit_file(self) -> Path | None:
        return self.store.audit_file

    @property
    def audit_syslog(self) -> Any:
        return self.audit.syslog


# --- pydantic's errors as ours -------------------------------------------------------------------
_TYPE_NAMES = {
    "int_type": "int",
    "int_from_float": "int",
    "int_parsing": "int",
    "float_type": "float",
    "float_parsing": "float",
    "string_type": "str",
    "bool_type": "bool",
    "bool_parsing": "bool",
    "dict_type": "dict",
    "list_type": "list",
    "tuple_type": "list",
    "bytes_type": "str",
}


def _dotted(loc: tuple[str | int, ...] | list[str | int]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.startswith("["):
            out += part
        else:
            out += f".{part}" if out else part
    return out


def config_error(file: str, e: ValidationError, within: tuple[str, ...] = ()) -> ConfigError:
    """``<file>: <dotted.key>: <problem>`` for the first of pydantic's errors (``within``: the
    table that was validated, when not the whole file)."""
    err = e.errors(include_url=False)[0]
    loc = [*within, *err["loc"]]
    kind, v, ctx = err["type"], err.get("input"), err.get("ctx") or {}
    exc = ctx.get("error")
    if isinstance(exc, _Bad):
        loc += [p for p in exc.key.replace("[", ".[").split(".") if p]
        msg = str(exc)
    elif kind in ("value_error", "assertion_error"):
        msg = str(exc)
    elif kind in ("extra_forbidden", "unexpected_keyword_argument"):
        msg = UNKNOWN_SETTING
    elif kind == "missing":
        msg = "required"
    elif kind == "greater_than":
        msg = f"must be greater than {ctx['gt']}, got {v}"
    elif kind == "greater_than_equal":
        msg = f"must be at least {ctx['ge']}, got {v}"
    elif kind in ("model_type", "model_attributes_type", "dataclass_type", "dataclass_args_type"):
        return ConfigError(f"{file}: [{_dotted(loc)}] must be a table")
    elif kind in _TYPE_NAMES:
        want = _TYPE_NAMES[kind]
        msg = (
            f"expected {want}, got a boolean"
            if isinstance(v, bool) and want in ("int", "float")
            else f"expected {want}, got {_got(v)}"
        )
    else:
        msg = err["msg"]
    return ConfigError(f"{file}: {_dotted(loc)}: {msg}")


# --- reading a file ------------------------------------------------------------------------------
def load(path: Path | str, *, role: str = "gateway") -> Config:
    """Read and validate a configuration file.

    ``role`` "id-service" (``ucgate id-service``) needs no [gateway] certificate and no
    upstreams, but the [id_service] listener.

    Raises:
        ConfigError: with ``<file>: <key>: <problem>``.
    """
    path = Path(path)
    try:
        with path.open("rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    return from_dict(raw, path=path, role=role)


def from_dict(raw: dict[str, Any], *, path: Path | None = None, role: str = "gateway") -> Config:
    file = str(path) if path else "<config>"
    base = path.parent.resolve() if path else Path.cwd()
    try:
        f = ConfigFile.model_validate(raw, context={"base": base, "role": role})
    except ValidationError as e:
        raise config_error(file, e) from None

    def fail(key: str, msg: str) -> ConfigError:
        return ConfigError(f"{file}: {key}: {msg}")

    gw = f.gateway
    if not gw.plain_http and role != "id-service":
        for k, p in (("tls_cert", gw.tls_cert), ("tls_key", gw.tls_key)):
            if p is None:
                raise fail(f"gateway.{k}", "required unless plain_http = true (labs only)")
            if not p.is_file():
                raise fail(f"gateway.{k}", f"no such file: {p}")
    if gw.proxy_protocol and not gw.trusted_proxies:
        raise fail(
            "gateway.proxy_protocol",
            "needs trusted_proxies: the balancers' addresses, the only peers whose PROXY header is read",
        )
    for n, up in f.upstreams.items():
        up._set(name=n)
    if not f.upstreams and role != "id-service":
        raise fail("upstreams", "define at least [upstreams.frontend] with a url")
    services = {}
    for n, s in f.services.items():
        if s.upstream is not None and s.upstream not in f.upstreams:
            raise fail(f"services.{n}.upstream", f"no [upstreams.{s.upstream}] is defined")
        services[n] = {k: getattr(s, k) for k in s.model_fields_set}
    if f.id_service is None and role == "id-service":
        raise fail("id_service", "required: [id_service] listen, tls_cert, tls_key, secret_file")

    data_dir = f.data.dir
    st = f.store
    store = st.model_copy(
        update={
            "url": st.url or f"sqlite:///{data_dir / 'ucgate.db'}",
            "audit_file": st.audit_file or data_dir / "audit.jsonl",
        }
    )
    kerberos = f.kerberos
    if kerberos is not None:
        published = kerberos.published_name or f.gateway.published_name
        spn = kerberos.service_principal or (f"HTTP/{published}" if published else None)
        if not spn or "/" not in spn:
            raise fail(
                "kerberos.service_principal", "required: HTTP/<published name> (or set [gateway] published_name)"
            )
        kerberos._set(service_principal=spn, published_name=published)

    from ..policy.groups import GroupPolicy

    f.devices._set(
        policies=tuple(
            GroupPolicy(name=p.name or p.group or "", group=p.group, settings=p.settings()) for p in f.policy
        )
    )
    from .web import parse_web

    web = parse_web(f.web, file, base, data_dir)
    from .sip import parse_sip

    sip_cfg = parse_sip(f.sip, file, base, f.gateway)
    return Config(
        path=path,
        gateway=f.gateway,
        upstreams=f.upstreams,
        services=services,
        auth=f.auth,
        data_dir=data_dir,
        store=store,
        lockout=f.lockout,
        directory=f.directory,
        log_level=f.log.level,
        log_format=f.log.format,
        metrics=f.metrics,
        id_service=f.id_service,
        devices=f.devices,
        web=web,
        kerberos=kerberos,
        audit=f.audit,
        sip=sip_cfg,
    )
