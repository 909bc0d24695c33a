"""``[audit.syslog]``'s settings: the receiver, TLS, the facility (RFC 5424), the queue. The
sink that sends the events is ``ucgate.id.audit_syslog``; the settings live here so that the
configuration does not import the id service."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

FACILITIES = {
    "kern": 0,
    "user": 1,
    "mail": 2,
    "daemon": 3,
    "auth": 4,
    "syslog": 5,
    "lpr": 6,
    "news": 7,
    "uucp": 8,
    "cron": 9,
    "authpriv": 10,
    "ftp": 11,
    "ntp": 12,
    "security": 13,
    "console": 14,
    "solaris-cron": 15,
    **{f"local{i}": 16 + i for i in range(8)},
}


@dataclass(frozen=True)
class SyslogConfig:
    """``[audit.syslog]``: where audit events go besides the store and the JSON-lines file."""

    host: str
    port: int
    tls: bool = True  # RFC 5425; false: plain TCP (only on a link you trust)
    ca_file: Path | None = None  # verifies the receiver's certificate (default: the system store)
    cert_file: Path | None = None  # a client certificate, for receivers that ask for one
    key_file: Path | None = None
    server_name: str | None = None  # the name checked in the receiver's certificate (default: host)
    facility: str = "authpriv"
    app_name: str = "ucgate"
    hostname: str | None = None  # HOSTNAME of the messages (default: this machine's name)
    queue_size: int = 10000  # events held while the receiver is slow or away; then dropped
    timeout: float = 10.0  # connect and send timeout, seconds


def tls_context(cfg: SyslogConfig) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(cfg.ca_file) if cfg.ca_file else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cfg.cert_file is not None:
        ctx.load_cert_chain(str(cfg.cert_file), str(cfg.key_file) if cfg.key_file else None)
    return ctx
