"""One TOML configuration file, validated at start with errors that name the file and the key.

Every setting has a default that is safe at the edge of a network (TLS on, upstream
certificates verified, limits and timeouts set); see the README's configuration reference.
"""

from __future__ import annotations

import ipaddress
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .protocols import http1
from .protocols.sfb import SERVICE_NAMES


class ConfigError(Exception):
    """A configuration problem; the message names the file and the key."""


@dataclass(frozen=True)
class Limits:
    max_header_bytes: int = http1.DEFAULT_MAX_HEADER_BYTES
    max_header_count: int = http1.DEFAULT_MAX_HEADER_COUNT
    max_target_bytes: int = http1.DEFAULT_MAX_TARGET_BYTES
    # Exchange's EAS maxRequestLength is tens of MB (attachments); SfB services need far less.
    max_body_bytes: int = 32 * 1024 * 1024
    # A request we refuse (401 during an NTLM handshake) may carry a body; we read and drop up
    # to this much to keep the connection (NTLM needs it), otherwise we close.
    max_drain_bytes: int = 64 * 1024
    max_connections: int = 10000


@dataclass(frozen=True)
class Timeouts:
    header_read: float = 10.0  # a new connection's first request head (slowloris)
    idle: float = 120.0  # between requests on a keep-alive connection (IIS connectionTimeout)
    body_read: float = 60.0  # a pause while the client sends a body
    upstream_connect: float = 5.0
    # UCWA's event channel long-polls for up to 180 s (the "timeout" parameter of events).
    upstream_read: float = 200.0


@dataclass(frozen=True)
class Upstream:
    name: str
    url: str
    scheme: str
    host: str
    port: int
    verify: bool = True
    ca_bundle: Path | None = None
    server_name: str | None = None
    max_idle: int = 32


@dataclass(frozen=True)
class GatewayConfig:
    listen_host: str = "0.0.0.0"
    listen_port: int = 443
    tls_cert: Path | None = None
    tls_key: Path | None = None
    plain_http: bool = False
    published_name: str | None = None
    identity_header: str = "X-Ucgate-User"
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    # connections from trusted_proxies start with a PROXY header (HAProxy send-proxy[-v2])
    proxy_protocol: bool = False
    # (host, port) of the /healthz and /readyz listener (plain HTTP), or None
    health_listen: tuple[str, int] | None = None
    limits: Limits = field(default_factory=Limits)
    timeouts: Timeouts = field(default_factory=Timeouts)


@dataclass(frozen=True)
class AuthConfig:
    authenticator: str = "preauth"
    methods: tuple[str, ...] = ("negotiate", "ntlm", "basic")
    extended_protection: str = "require"
    allow_domain_passwords: bool = False
    realm: str = "ucgate"
    netbios_domain: str = "UCGATE"
    dns_domain: str = "ucgate.local"
    netbios_computer: str = "UCGATE-GW"
    max_clock_skew: int = 300
    failure_floor: float = 0.25
    two_factor: str = "off"  # off | otp-appended | device-approval
    two_factor_groups: tuple[tuple[str, str], ...] = ()  # (group, mode); the strictest applies
    otp_trust_hours: float = 24.0
    # Auth header trace in the gateway log (protocols/decode.py): "none", "low" (one line per
    # leg: scheme, message, user/domain/workstation) or "verbose" (all decoded fields). Never secrets.
    trace: str = "none"


@dataclass(frozen=True)
class LockoutConfig:
    user_failures: int = 5
    ip_failures: int = 20
    window: float = 900.0


@dataclass(frozen=True)
class DirectoryConfig:
    urls: tuple[str, ...]
    bind_dn: str
    bind_password: str = field(repr=False)
    base_dn: str
    ca_file: Path | None = None
    start_tls: bool = False
    timeout: float = 5.0
    cache_ttl: float = 30.0
    required_group: str | None = None
    recheck_interval: float = 30.0
    outage_grace: float = 300.0


@dataclass(frozen=True)
class IdServiceConfig:
    """``[id_service]``: the gateway's link to a remote id service (``url``, ``ca_file``,
    ``secret_file``) and the id service's own listener (``listen``, ``tls_cert``, ``tls_key``,
    ``secret_file``). Without ``url`` the gateway runs the id service in-process."""

    secret: bytes = field(default=b"", repr=False)
    secret_file: Path | None = None
    url: str | None = None  # the first of ``urls``
    urls: tuple[str, ...] = ()  # every id service of the pool, in failover order
    ca_file: Path | None = None
    timeout: float = 8.0
    outage_grace: float = 300.0
    listen_host: str = "0.0.0.0"
    listen_port: int = 8444
    tls_cert: Path | None = None
    tls_key: Path | None = None


@dataclass(frozen=True)
class StoreConfig:
    url: str
    key_file: Path
    audit_file: Path | None


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
    log_level: str = "info"
    log_format: str = "text"  # [log] format: "text" or "json" (one object per line)
    metrics: MetricsConfig = field(default_factory=lambda: MetricsConfig())  # [metrics]: /metrics
    id_service: IdServiceConfig | None = None
    devices: DevicesConfig = field(default_factory=lambda: DevicesConfig())
    web: Any = None  # ucgate.web.settings.WebConfig ([web]: admin UI, portal, REST API)
    kerberos: KerberosConfig | None = None  # [kerberos]: Negotiate from clients, kcd, the check
    audit: AuditConfig = field(default_factory=lambda: AuditConfig())  # [audit]: syslog delivery
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


class _Section:
    """Reads typed values from one TOML table and reports unknown keys."""

    def __init__(self, file: str, prefix: str, table: Any) -> None:
        if not isinstance(table, dict):
            raise ConfigError(f"{file}: [{prefix}] must be a table")
        self.file, self.prefix, self.table = file, prefix, table
        self.used: set[str] = set()

    def _key(self, key: str) -> str:
        return f"{self.prefix}.{key}" if self.prefix else key

    def fail(self, key: str, msg: str) -> ConfigError:
        return ConfigError(f"{self.file}: {self._key(key)}: {msg}")

    def get(self, key: str, kind: type | tuple, default: Any) -> Any:
        self.used.add(key)
        if key not in self.table:
            return default
        v = self.table[key]
        if kind in (int, float) and isinstance(v, bool):
            raise self.fail(key, f"expected {kind.__name__}, got a boolean")
        if kind is float and isinstance(v, int):
            v = float(v)
        if not isinstance(v, kind):
            want = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
            raise self.fail(key, f"expected {want}, got {type(v).__name__} {v!r}")
        return v

    def positive(self, key: str, kind: type, default: Any) -> Any:
        v = self.get(key, kind, default)
        if v <= 0:
            raise self.fail(key, f"must be greater than 0, got {v}")
        return v

    def path(self, key: str, default: Path | None, base: Path) -> Path | None:
        v = self.get(key, str, None)
        if v is None:
            return default
        p = Path(v).expanduser()
        return p if p.is_absolute() else base / p

    def sub(self, key: str) -> _Section:
        self.used.add(key)
        return _Section(self.file, self._key(key), self.table.get(key, {}))

    def finish(self) -> None:
        unknown = sorted(set(self.table) - self.used)
        if unknown:
            raise self.fail(unknown[0], "unknown setting (check the spelling; see README)")


def _parse_listen(sec: _Section, default: str = "0.0.0.0:443", key: str = "listen") -> tuple[str, int]:
    listen = sec.get(key, str, default)
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not (0 <= int(port) < 65536):
        raise sec.fail(key, f"expected host:port, got {listen!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def _parse_upstream(file: str, name: str, table: Any, base: Path) -> Upstream:
    sec = _Section(file, f"upstreams.{name}", table)
    url = sec.get("url", str, None)
    if url is None:
        raise sec.fail("url", "required (e.g. https://fe01.contoso.local:4443)")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise sec.fail("url", f"expected http(s)://host[:port], got {url!r}")
    if parts.path not in ("", "/") or parts.query:
        raise sec.fail("url", "must not have a path or query; paths are forwarded unchanged")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise sec.fail("url", f"bad port in {url!r}") from None
    ca = sec.path("ca_bundle", None, base)
    if ca is not None and not ca.is_file():
        raise sec.fail("ca_bundle", f"no such file: {ca}")
    up = Upstream(
        name=name,
        url=url,
        scheme=parts.scheme,
        host=parts.hostname,
        port=port,
        verify=sec.get("verify", bool, True),
        ca_bundle=ca,
        server_name=sec.get("server_name", str, None),
        max_idle=sec.positive("max_idle", int, 32),
    )
    sec.finish()
    return up


BACKEND_MODES = ("none", "passthrough", "vault", "kcd")


def _parse_service(file: str, name: str, table: Any, upstreams: dict[str, Upstream]) -> dict:
    sec = _Section(file, f"services.{name}", table)
    out: dict[str, Any] = {}
    for key, kind in (("anonymous", bool), ("enabled", bool), ("upstream", str)):
        v = sec.get(key, kind, None)
        if v is not None:
            out[key] = v
    mb = sec.get("max_body_bytes", int, None)
    if mb is not None:
        if mb < 0:
            raise sec.fail("max_body_bytes", "must be >= 0")
        out["max_body_bytes"] = mb
    if "upstream" in out and out["upstream"] not in upstreams:
        raise sec.fail("upstream", f"no [upstreams.{out['upstream']}] is defined")
    backend = sec.get("backend", str, None)  # issue 7: backend credentials (gateway.backend)
    if backend is not None:
        if backend not in BACKEND_MODES:
            raise sec.fail("backend", f"must be one of {', '.join(BACKEND_MODES)}, got {backend!r}")
        out["backend"] = backend
    scheme = sec.get("backend_scheme", str, None)
    if scheme is not None:
        if scheme not in ("ntlm", "basic"):
            raise sec.fail("backend_scheme", f"must be ntlm or basic, got {scheme!r}")
        out["backend_scheme"] = scheme
    methods = sec.get("methods", list, None)  # issue 13: the methods its clients use
    if methods is not None:
        if not methods:
            raise sec.fail("methods", "must name at least one method")
        for i, m in enumerate(methods):
            if not isinstance(m, str) or not m.isascii() or not http1._TOKEN_RE.fullmatch(m.encode()):
                raise sec.fail(f"methods[{i}]", f"not a method name: {m!r}")
            if m != m.upper():  # methods are case-sensitive; clients send them in upper case
                raise sec.fail(f"methods[{i}]", f"write methods in upper case: {m!r}")
        out["methods"] = tuple(dict.fromkeys(methods))
    sec.finish()
    return out


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
    top = _Section(file, "", raw)

    gw = top.sub("gateway")
    host, port = _parse_listen(gw)
    plain = gw.get("plain_http", bool, False)
    cert = gw.path("tls_cert", None, base)
    key = gw.path("tls_key", None, base)
    if not plain and role != "id-service":
        for k, p in (("tls_cert", cert), ("tls_key", key)):
            if p is None:
                raise gw.fail(k, "required unless plain_http = true (labs only)")
            if not p.is_file():
                raise gw.fail(k, f"no such file: {p}")
    proxies = []
    for i, cidr in enumerate(gw.get("trusted_proxies", list, [])):
        try:
            proxies.append(ipaddress.ip_network(cidr, strict=False))
        except (ValueError, TypeError):
            raise gw.fail(f"trusted_proxies[{i}]", f"not an address or CIDR: {cidr!r}") from None
    proxy_protocol = gw.get("proxy_protocol", bool, False)
    if proxy_protocol and not proxies:
        raise gw.fail("proxy_protocol", "needs trusted_proxies: the balancers' addresses, the only "
                      "peers whose PROXY header is read")
    health_listen = _parse_listen(gw, key="health_listen") if gw.get("health_listen", str, "") else None
    ident = gw.get("identity_header", str, "X-Ucgate-User")
    if not ident or not all(c.isalnum() or c == "-" for c in ident):
        raise gw.fail("identity_header", "must be a header name (letters, digits, '-')")

    lim = gw.sub("limits")
    d = Limits()
    limits = Limits(
        max_header_bytes=lim.positive("max_header_bytes", int, d.max_header_bytes),
        max_header_count=lim.positive("max_header_count", int, d.max_header_count),
        max_target_bytes=lim.positive("max_target_bytes", int, d.max_target_bytes),
        max_body_bytes=lim.positive("max_body_bytes", int, d.max_body_bytes),
        max_drain_bytes=lim.positive("max_drain_bytes", int, d.max_drain_bytes),
        max_connections=lim.positive("max_connections", int, d.max_connections),
    )
    lim.finish()
    to = gw.sub("timeouts")
    t = Timeouts()
    timeouts = Timeouts(
        header_read=to.positive("header_read", float, t.header_read),
        idle=to.positive("idle", float, t.idle),
        body_read=to.positive("body_read", float, t.body_read),
        upstream_connect=to.positive("upstream_connect", float, t.upstream_connect),
        upstream_read=to.positive("upstream_read", float, t.upstream_read),
    )
    to.finish()
    gateway = GatewayConfig(
        listen_host=host,
        listen_port=port,
        tls_cert=cert,
        tls_key=key,
        plain_http=plain,
        published_name=gw.get("published_name", str, None),
        identity_header=ident,
        trusted_proxies=tuple(proxies),
        proxy_protocol=proxy_protocol,
        health_listen=health_listen,
        limits=limits,
        timeouts=timeouts,
    )
    gw.finish()

    ups_raw = top.get("upstreams", dict, {})
    upstreams = {n: _parse_upstream(file, n, t, base) for n, t in ups_raw.items()}
    if not upstreams and role != "id-service":
        raise top.fail("upstreams", "define at least [upstreams.frontend] with a url")

    svc_raw = top.get("services", dict, {})
    for n in svc_raw:
        if n not in SERVICE_NAMES:
            raise ConfigError(
                f"{file}: services.{n}: unknown service; known: {', '.join(sorted(SERVICE_NAMES))}"
            )
    services = {n: _parse_service(file, n, t, upstreams) for n, t in svc_raw.items()}

    au = top.sub("auth")
    a = AuthConfig()
    authn = au.get("authenticator", str, a.authenticator)
    if authn not in AUTHENTICATORS:
        raise au.fail("authenticator", f"expected one of {', '.join(AUTHENTICATORS)}, got {authn!r}")
    methods = au.get("methods", list, list(a.methods))
    for i, m in enumerate(methods):
        if m not in ("negotiate", "ntlm", "basic"):
            raise au.fail(f"methods[{i}]", f"expected negotiate, ntlm or basic, got {m!r}")
    ep = au.get("extended_protection", str, a.extended_protection)
    if ep not in ("require", "allow", "off"):
        raise au.fail("extended_protection", f"expected require, allow or off, got {ep!r}")
    trace = au.get("trace", str, a.trace)
    if trace not in TRACE_LEVELS:
        raise au.fail("trace", f"expected none, low or verbose, got {trace!r}")
    auth = AuthConfig(
        authenticator=authn,
        methods=tuple(methods),
        extended_protection=ep,
        allow_domain_passwords=au.get("allow_domain_passwords", bool, a.allow_domain_passwords),
        realm=au.get("realm", str, a.realm),
        netbios_domain=au.get("netbios_domain", str, a.netbios_domain).upper(),
        dns_domain=au.get("dns_domain", str, a.dns_domain),
        netbios_computer=au.get("netbios_computer", str, a.netbios_computer).upper(),
        max_clock_skew=au.positive("max_clock_skew", int, a.max_clock_skew),
        failure_floor=au.get("failure_floor", float, a.failure_floor),
        two_factor=_two_factor_mode(au, "two_factor", au.get("two_factor", str, a.two_factor)),
        two_factor_groups=tuple(
            (g, _two_factor_mode(au, f"two_factor_groups.{g}", m))
            for g, m in au.get("two_factor_groups", dict, {}).items()
        ),
        otp_trust_hours=au.positive("otp_trust_hours", float, a.otp_trust_hours),
        trace=trace,
    )
    au.finish()

    lo = top.sub("lockout")
    lk = LockoutConfig()
    lockout = LockoutConfig(
        user_failures=lo.positive("user_failures", int, lk.user_failures),
        ip_failures=lo.positive("ip_failures", int, lk.ip_failures),
        window=lo.positive("window", float, lk.window),
    )
    lo.finish()

    data = top.sub("data")
    data_dir = data.path("dir", Path("/var/lib/ucgate"), base)
    data.finish()

    st = top.sub("store")
    url = st.get("url", str, None) or f"sqlite:///{data_dir / 'ucgate.db'}"
    if not url.startswith(("sqlite:", "postgresql")):
        raise st.fail("url", f"expected sqlite:///path or postgresql+psycopg://..., got {url!r}")
    # The key that encrypts stored secrets must not sit next to the data it protects.
    key_file = st.path("key_file", Path("/etc/ucgate/ucgate.key"), base)
    audit_file = st.path("audit_file", data_dir / "audit.jsonl", base)
    store = StoreConfig(url=url, key_file=key_file, audit_file=audit_file)
    st.finish()
    directory = _parse_directory(top, base)
    id_service = _parse_id_service(top, base, role)
    devices = _parse_devices(top)
    from .web.settings import parse_web

    web = parse_web(top, base, data_dir)
    kerberos = _parse_kerberos(top, base, gateway.published_name)
    audit_cfg = _parse_audit(top, base)
    from .gateway.sipconfig import parse_sip

    sip_cfg = parse_sip(top, base, gateway)

    lg = top.sub("log")
    level = lg.get("level", str, "info").lower()
    if level not in ("debug", "info", "warning", "error"):
        raise lg.fail("level", "expected debug, info, warning or error")
    log_format = lg.get("format", str, "text")
    if log_format not in ("text", "json"):
        raise lg.fail("format", f'expected "text" or "json", got {log_format!r}')
    lg.finish()
    metrics_cfg = _parse_metrics(top)
    top.finish()
    return Config(
        path=path,
        gateway=gateway,
        upstreams=upstreams,
        services=services,
        auth=auth,
        data_dir=data_dir,
        store=store,
        lockout=lockout,
        directory=directory,
        log_level=level,
        log_format=log_format,
        metrics=metrics_cfg,
        id_service=id_service,
        devices=devices,
        web=web,
        kerberos=kerberos,
        audit=audit_cfg,
        sip=sip_cfg,
    )


def _two_factor_mode(sec: _Section, key: str, mode: object) -> str:
    if mode not in ("off", "otp-appended", "device-approval"):
        raise sec.fail(key, f"expected off, otp-appended or device-approval, got {mode!r}")
    return mode  # type: ignore[return-value]


def _parse_directory(top: _Section, base: Path) -> DirectoryConfig | None:
    if "directory" not in top.table:
        top.used.add("directory")
        return None
    d = top.sub("directory")
    urls = d.get("url", (str, list), None)
    if urls is None:
        raise d.fail("url", "required: ldaps://dc1.contoso.local (or a list of DCs)")
    urls = [urls] if isinstance(urls, str) else urls
    for i, u in enumerate(urls):
        if not isinstance(u, str) or not u.startswith(("ldap://", "ldaps://")):
            raise d.fail(f"url[{i}]" if len(urls) > 1 else "url", f"expected ldaps://host or ldap://host, got {u!r}")
    bind_dn = d.get("bind_dn", str, None)
    if not bind_dn:
        raise d.fail("bind_dn", "required: the service account's DN")
    base_dn = d.get("base_dn", str, None)
    if not base_dn:
        raise d.fail("base_dn", "required, e.g. DC=contoso,DC=local")
    pw_file = d.path("bind_password_file", None, base)
    pw = d.get("bind_password", str, None)
    if pw_file is not None:
        try:
            pw = pw_file.read_text().strip()
        except OSError as e:
            raise d.fail("bind_password_file", f"cannot read {pw_file}: {e.strerror}") from None
    if not pw:
        raise d.fail("bind_password_file", "required (a file readable only by ucgate)")
    ca = d.path("ca_file", None, base)
    if ca is not None and not ca.is_file():
        raise d.fail("ca_file", f"no such file: {ca}")
    start_tls = d.get("start_tls", bool, False)
    if any(u.startswith("ldap://") for u in urls) and not start_tls:
        raise d.fail("start_tls", "plain ldap:// needs start_tls = true (passwords cross this link)")
    cfg = DirectoryConfig(
        urls=tuple(urls), bind_dn=bind_dn, bind_password=pw, base_dn=base_dn, ca_file=ca,
        start_tls=start_tls,
        timeout=d.positive("timeout", float, 5.0),
        cache_ttl=d.positive("cache_ttl", float, 30.0),
        required_group=d.get("required_group", str, None),
        recheck_interval=d.positive("recheck_interval", float, 30.0),
        outage_grace=d.positive("outage_grace", float, 300.0),
    )
    d.finish()
    return cfg


AUTHENTICATORS = ("preauth", "deny-all")


# --- [metrics] (issue 17): who may read /metrics ---------------------------------------------
@dataclass(frozen=True)
class MetricsConfig:
    """``[metrics]``: ``GET /metrics`` on the gateway's health listener, the id service's and the
    web listener, for peers in ``allow`` (CIDRs; default loopback); others get 403."""

    enabled: bool = True
    allow: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = (
        ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


def _parse_metrics(top: _Section) -> MetricsConfig:
    sec = top.sub("metrics")
    d = MetricsConfig()
    allow = []
    raw = sec.get("allow", list, None)
    for i, cidr in enumerate(raw if raw is not None else []):
        try:
            allow.append(ipaddress.ip_network(cidr, strict=False))
        except (ValueError, TypeError):
            raise sec.fail(f"allow[{i}]", f"not an address or CIDR: {cidr!r}") from None
    cfg = MetricsConfig(enabled=sec.get("enabled", bool, d.enabled),
                        allow=tuple(allow) if raw is not None else d.allow)
    sec.finish()
    return cfg


# --- [kerberos] (issue 7) --------------------------------------------------------------------
@dataclass(frozen=True)
class KerberosConfig:
    """``[kerberos]``: the pool's service account and keytab (``HTTP/<published name>``).

    ``accept_negotiate``: verify Kerberos tickets from clients in ``Negotiate``.
    ``account``: the principal the gateway gets its TGT as for ``kcd`` (the service account's
    sAMAccountName; AD issues no TGT to an SPN). ``front_end_spns``: the front end's SPN per
    service name (``"*"``: every other service), for ``kcd`` and ``ucgate kerberos check``.
    """

    realm: str
    keytab: Path
    service_principal: str
    account: str | None = None
    krb5_conf: Path | None = None
    accept_negotiate: bool = True
    front_end_spns: tuple[tuple[str, str], ...] = ()
    kcd_timeout: float = 10.0
    kcd_mech: str = "spnego"
    published_name: str | None = None
    check_user: str | None = None  # a user for the check's S4U round trip


def _parse_kerberos(top: _Section, base: Path, published_name: str | None) -> KerberosConfig | None:
    if "kerberos" not in top.table:
        top.used.add("kerberos")
        return None
    k = top.sub("kerberos")
    realm = k.get("realm", str, None)
    if not realm:
        raise k.fail("realm", "required: the AD realm in upper case, e.g. CONTOSO.LOCAL")
    if realm != realm.upper():
        raise k.fail("realm", f"Kerberos realms of AD are upper case: {realm.upper()!r}, got {realm!r}")
    keytab = k.path("keytab", None, base)
    if keytab is None:
        raise k.fail("keytab", "required: the pool's keytab (HTTP/<published name>)")
    if not keytab.is_file():
        raise k.fail("keytab", f"no such file: {keytab}")
    spn = k.get("service_principal", str, None)
    if spn is None and published_name:
        spn = f"HTTP/{published_name}"
    if not spn or "/" not in spn:
        raise k.fail("service_principal", "required: HTTP/<published name> (or set [gateway] published_name)")
    krb5_conf = k.path("krb5_conf", None, base)
    if krb5_conf is not None and not krb5_conf.is_file():
        raise k.fail("krb5_conf", f"no such file: {krb5_conf}")
    spns = k.get("front_end_spn", (str, dict), None)
    if isinstance(spns, str):
        spns = {"*": spns}
    spns = spns or {}
    for name, v in spns.items():
        if name != "*" and name not in SERVICE_NAMES:
            raise k.fail(f"front_end_spn.{name}", "unknown service")
        if not isinstance(v, str) or "/" not in v:
            raise k.fail(f"front_end_spn.{name}", f"expected an SPN like HTTP/fe.contoso.local, got {v!r}")
    mech = k.get("kcd_mech", str, "spnego")
    if mech not in ("spnego", "krb5"):
        raise k.fail("kcd_mech", f"expected spnego or krb5, got {mech!r}")
    cfg = KerberosConfig(
        realm=realm, keytab=keytab, service_principal=spn,
        account=k.get("account", str, None), krb5_conf=krb5_conf,
        accept_negotiate=k.get("accept_negotiate", bool, True),
        front_end_spns=tuple(spns.items()),
        kcd_timeout=k.positive("kcd_timeout", float, 10.0), kcd_mech=mech,
        published_name=k.get("published_name", str, None) or published_name,
        check_user=k.get("check_user", str, None),
    )
    k.finish()
    return cfg
TRACE_LEVELS = ("none", "low", "verbose")


# --- [devices], [[devices.rules]], [[policy]] (issue 6) -----------------------------------
DEVICE_ACTIONS = ("allowed", "quarantined", "blocked")
_DEVICE_RULE_KEYS = ("device_type", "model", "os", "user_agent", "client_kind")


@dataclass(frozen=True)
class DevicesConfig:
    """User/device partnerships. ``defaults`` and each policy's ``settings`` hold the keys of
    ``ucgate.id.devices.DEVICE_POLICY_KEYS``; ``rules`` are ``policy.devices.DeviceRule``;
    ``policies`` are ``policy.groups.GroupPolicy``; ``user_agents`` (regex, client kind)."""

    enabled: bool = True
    services: tuple[str, ...] = ("eas", "ucwa", "certprov")
    defaults: dict[str, Any] = field(default_factory=dict)
    rules: tuple[Any, ...] = ()
    policies: tuple[Any, ...] = ()
    user_agents: tuple[tuple[str, str], ...] = ()
    notify: dict[str, Any] = field(default_factory=dict)


def _device_settings(sec: _Section) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ("default_action", "problem_action"):
        v = sec.get(key, str, None)
        if v is not None:
            if v not in DEVICE_ACTIONS:
                raise sec.fail(key, f"expected one of {', '.join(DEVICE_ACTIONS)}, got {v!r}")
            out[key] = v
    v = sec.get("max_devices", int, None)
    if v is not None:
        if v < 0:
            raise sec.fail("max_devices", f"must be at least 0, got {v}")
        out["max_devices"] = v
    v = sec.get("trust_lifetime_hours", float, None)
    if v is not None:
        if v <= 0:
            raise sec.fail("trust_lifetime_hours", f"must be greater than 0, got {v}")
        out["trust_lifetime_hours"] = v
    v = sec.get("certprov", str, None)
    if v is not None:
        if v not in ("allowed-only", "deny"):
            raise sec.fail("certprov", f'expected "allowed-only" or "deny", got {v!r}')
        out["certprov"] = v
    v = sec.get("require_second_factor", bool, None)
    if v is not None:
        out["require_second_factor"] = v
    return out


def _parse_devices(top: _Section) -> DevicesConfig:
    from .policy.devices import DeviceRule
    from .policy.groups import GroupPolicy
    from .protocols.devices import compile_ua_rules

    sec = top.sub("devices")
    defaults = _device_settings(sec)
    enabled = sec.get("enabled", bool, True)
    services = sec.get("services", list, ["eas", "ucwa", "certprov"])
    for i, n in enumerate(services):
        if n not in SERVICE_NAMES:
            raise sec.fail(f"services[{i}]", f"unknown service {n!r}")
    rules = []
    for i, raw in enumerate(sec.get("rules", list, [])):
        r = _Section(sec.file, f"devices.rules[{i}]", raw)
        action = r.get("action", str, None)
        if action not in DEVICE_ACTIONS:
            raise r.fail("action", f"required: one of {', '.join(DEVICE_ACTIONS)}, got {action!r}")
        kw = {k: r.get(k, str, None) for k in _DEVICE_RULE_KEYS}
        groups = r.get("groups", list, [])
        if not all(isinstance(g, str) and g for g in groups):
            raise r.fail("groups", "expected a list of group names or DNs")
        name = r.get("name", str, f"#{i}")
        r.finish()
        try:
            rules.append(DeviceRule(action=action, groups=frozenset(groups), name=name, **kw))
        except ValueError as e:
            raise r.fail("client_kind" if "client_kind" in str(e) else "action", str(e)) from None
    uas = []
    for i, raw in enumerate(sec.get("user_agents", list, [])):
        u = _Section(sec.file, f"devices.user_agents[{i}]", raw)
        pattern, kind = u.get("match", str, None), u.get("client_kind", str, None)
        if not pattern or not kind:
            raise u.fail("match", "each entry needs match (a regex) and client_kind")
        u.finish()
        uas.append((pattern, kind))
    try:
        compile_ua_rules(uas)
    except ValueError as e:
        raise sec.fail("user_agents", str(e)) from None
    notify = sec.get("notify", dict, {})
    n = _Section(sec.file, "devices.notify", notify)
    for key, kind in (("smtp_host", str), ("smtp_port", int), ("smtp_from", str), ("smtp_starttls", bool),
                      ("smtp_domain", str), ("webhook_url", str)):
        n.get(key, kind, None)
    n.finish()
    sec.finish()
    policies = []
    for i, raw in enumerate(top.get("policy", list, [])):
        p = _Section(top.file, f"policy[{i}]", raw)
        group = p.get("group", str, None)
        if not group:
            raise p.fail("group", "required: the directory group (name or DN) this policy is for")
        name = p.get("name", str, group)
        settings = _device_settings(p)
        p.finish()
        policies.append(GroupPolicy(name=name, group=group, settings=settings))
    return DevicesConfig(enabled=enabled, services=tuple(services), defaults=defaults,
                         rules=tuple(rules), policies=tuple(policies), user_agents=tuple(uas),
                         notify=dict(notify))


# A bearer secret of 32 random bytes, base64 or hex: `openssl rand -base64 32 > id.secret`.
MIN_SECRET_LENGTH = 32


def _read_secret(sec: _Section, p: Path) -> bytes:
    try:
        st = p.stat()
        raw = p.read_bytes().strip()
    except OSError as e:
        raise sec.fail("secret_file", f"cannot read {p}: {e.strerror}") from None
    if st.st_mode & 0o077:
        raise sec.fail("secret_file", f"{p} is readable by group or others (chmod 600 {p})")
    if len(raw) < MIN_SECRET_LENGTH or not all(0x21 <= b < 0x7F for b in raw):
        raise sec.fail("secret_file", f"{p}: expected at least {MIN_SECRET_LENGTH} printable ASCII "
                                      "characters without spaces (openssl rand -base64 32)")
    return raw


def _parse_id_service(top: _Section, base: Path, role: str) -> IdServiceConfig | None:
    if "id_service" not in top.table:
        top.used.add("id_service")
        if role == "id-service":
            raise top.fail("id_service", "required: [id_service] listen, tls_cert, tls_key, secret_file")
        return None
    sec = top.sub("id_service")
    d = IdServiceConfig()
    raw = sec.get("url", (str, list), None)
    urls: tuple[str, ...] = ()
    if raw is not None:  # one id service, or the pool's list (the gateway fails over in order)
        urls = (raw,) if isinstance(raw, str) else tuple(raw)
        if not urls:
            raise sec.fail("url", "an empty list: give at least one https://host[:port]")
    for u in urls:
        if not isinstance(u, str):
            raise sec.fail("url", f"expected https://host[:port] strings, got {u!r}")
        parts = urlsplit(u)
        if parts.scheme != "https" or not parts.hostname:
            raise sec.fail("url", f"expected https://host[:port] (the secret crosses this link), got {u!r}")
        try:
            parts.port
        except ValueError:
            raise sec.fail("url", f"bad port in {u!r}") from None
    url = urls[0] if urls else None
    ca = sec.path("ca_file", None, base)
    if ca is not None and not ca.is_file():
        raise sec.fail("ca_file", f"no such file: {ca}")
    host, port = _parse_listen(sec, f"{d.listen_host}:{d.listen_port}")
    cert = sec.path("tls_cert", None, base)
    key = sec.path("tls_key", None, base)
    if role == "id-service":
        for k, p in (("tls_cert", cert), ("tls_key", key)):
            if p is None:
                raise sec.fail(k, "required: the id service listens with TLS only")
    for k, p in (("tls_cert", cert), ("tls_key", key)):
        if p is not None and not p.is_file():
            raise sec.fail(k, f"no such file: {p}")
    secret_file = sec.path("secret_file", None, base)
    secret = b""
    if secret_file is not None:
        secret = _read_secret(sec, secret_file)
    elif url is not None or role == "id-service":
        raise sec.fail("secret_file", "required: the shared secret of the gateways and the id service")
    cfg = IdServiceConfig(
        secret=secret, secret_file=secret_file, url=url, urls=urls, ca_file=ca,
        timeout=sec.positive("timeout", float, d.timeout),
        outage_grace=sec.positive("outage_grace", float, d.outage_grace),
        listen_host=host, listen_port=port, tls_cert=cert, tls_key=key,
    )
    sec.finish()
    return cfg


# --- [audit] (issue 17): audit events to a syslog receiver -------------------------------------
@dataclass(frozen=True)
class AuditConfig:
    """``[audit]``; ``syslog`` is a ``ucgate.id.audit_syslog.SyslogConfig`` or None."""

    syslog: Any = None


def _parse_audit(top: _Section, base: Path) -> AuditConfig:
    from .id.audit_syslog import FACILITIES, SyslogConfig

    sec = top.sub("audit")
    if "syslog" not in sec.table:
        sec.used.add("syslog")
        sec.finish()
        return AuditConfig()
    s = sec.sub("syslog")
    address = s.get("address", str, None)
    if not address:
        raise s.fail("address", "required: host:port of the syslog receiver (TCP; 6514 for TLS)")
    host, sep, port = address.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise s.fail("address", f"expected host:port, got {address!r}")
    files = {}
    for key in ("ca_file", "cert_file", "key_file"):
        p = s.path(key, None, base)
        if p is not None and not p.is_file():
            raise s.fail(key, f"no such file: {p}")
        files[key] = p
    tls = s.get("tls", bool, True)
    if not tls and any(files.values()):
        raise s.fail("tls", "ca_file, cert_file and key_file need tls = true")
    if files["key_file"] is not None and files["cert_file"] is None:
        raise s.fail("cert_file", "key_file without cert_file")
    facility = s.get("facility", str, "authpriv")
    if facility not in FACILITIES:
        raise s.fail("facility", f"expected one of {', '.join(FACILITIES)}, got {facility!r}")
    cfg = SyslogConfig(
        host=host, port=int(port), tls=tls, **files,
        server_name=s.get("server_name", str, None), facility=facility,
        app_name=s.get("app_name", str, "ucgate"), hostname=s.get("hostname", str, None),
        queue_size=s.positive("queue_size", int, 10000), timeout=s.positive("timeout", float, 10.0),
    )
    s.finish()
    if tls:
        import ssl

        from .id.audit_syslog import tls_context

        try:
            tls_context(cfg)  # an unreadable CA or a key that does not fit: now, not at the first event
        except (OSError, ssl.SSLError) as e:
            raise s.fail("cert_file" if cfg.cert_file else "ca_file", f"cannot load: {e}") from None
    sec.finish()
    return AuditConfig(syslog=cfg)
