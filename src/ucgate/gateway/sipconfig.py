"""``[sip]``: the SIP-over-TLS listener and the Access Edge it relays to (``gateway.sip``).

```toml
[sip]
enabled = true
listen = "0.0.0.0:5061"             # its own address and port
tls_cert = "/etc/ucgate/edge.crt"   # the published Edge certificate; default: [gateway] tls_cert
tls_key = "/etc/ucgate/edge.key"
edge = "sipedge.contoso.local:5061" # required: the Access Edge (its internal side), over TLS
server_name = "sipedge.contoso.local"  # the name its certificate must carry (default: edge's host)
ca_bundle = "/etc/ucgate/internal-ca.pem"  # default: the system store
verify = true                       # chain, expiry and name of the Edge's certificate
proxy_protocol = false              # PROXY header from [gateway] trusted_proxies (HAProxy send-proxy-v2)
devices = true                      # user/device partnerships on SIP (with [devices] enabled)
handshake_timeout = 10              # TLS handshake, then the first message
idle_timeout = 600                  # seconds without a byte from the client (keep-alives count)
message_timeout = 10                # a message must arrive whole this long after its first byte
edge_connect_timeout = 5
max_connections = 10000
max_message_bytes = 1048576         # limits of protocols/sip.py (their precedents are there)
max_head_bytes = 98304
max_line_bytes = 8192
max_header_count = 100
```
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import _parse_listen
from ..protocols import sip as sipproto


@dataclass(frozen=True)
class SipConfig:
    enabled: bool = False
    listen_host: str = "0.0.0.0"
    listen_port: int = 5061
    tls_cert: Path | None = None
    tls_key: Path | None = None
    edge_host: str = ""
    edge_port: int = 5061
    server_name: str | None = None
    ca_bundle: Path | None = None
    verify: bool = True
    proxy_protocol: bool = False
    devices: bool = True
    handshake_timeout: float = 10.0
    idle_timeout: float = 600.0
    message_timeout: float = 10.0
    edge_connect_timeout: float = 5.0
    max_connections: int = 10000
    limits: sipproto.Limits = field(default_factory=sipproto.Limits)


def parse_sip(top: Any, base: Path, gateway: Any) -> SipConfig:
    """The [sip] table (``top`` is config's ``_Section``; ``gateway`` the parsed GatewayConfig)."""
    sec = top.sub("sip")
    d = SipConfig()
    enabled = sec.get("enabled", bool, False)
    host, port = _parse_listen(sec, f"{d.listen_host}:{d.listen_port}")
    cert = sec.path("tls_cert", gateway.tls_cert, base)
    key = sec.path("tls_key", gateway.tls_key, base)
    edge = sec.get("edge", str, "")
    edge_host, edge_port = "", d.edge_port
    if edge:
        edge_host, sep, p = edge.rpartition(":")
        edge_host = edge_host.strip("[]")
        if not sep or not edge_host or not p.isdigit() or not 0 < int(p) < 65536:
            raise sec.fail("edge", f"expected host:port, got {edge!r}")
        edge_port = int(p)
    ca = sec.path("ca_bundle", None, base)
    if ca is not None and not ca.is_file():
        raise sec.fail("ca_bundle", f"no such file: {ca}")
    proxy_protocol = sec.get("proxy_protocol", bool, False)
    if enabled:
        if not edge_host:
            raise sec.fail("edge", "required: host:port of the Access Edge (TLS)")
        for k, p in (("tls_cert", cert), ("tls_key", key)):
            if p is None:
                raise sec.fail(k, "required (the published Edge certificate), or set [gateway] tls_cert/tls_key")
            if not p.is_file():
                raise sec.fail(k, f"no such file: {p}")
        if proxy_protocol and not gateway.trusted_proxies:
            raise sec.fail("proxy_protocol", "needs [gateway] trusted_proxies: the balancers whose "
                           "PROXY header is read")
    dl = d.limits
    limits = sipproto.Limits(
        max_message_bytes=sec.positive("max_message_bytes", int, dl.max_message_bytes),
        max_head_bytes=sec.positive("max_head_bytes", int, dl.max_head_bytes),
        max_line_bytes=sec.positive("max_line_bytes", int, dl.max_line_bytes),
        max_auth_line_bytes=sec.positive("max_auth_line_bytes", int, dl.max_auth_line_bytes),
        max_header_count=sec.positive("max_header_count", int, dl.max_header_count),
    )
    cfg = SipConfig(
        enabled=enabled, listen_host=host, listen_port=port, tls_cert=cert, tls_key=key,
        edge_host=edge_host, edge_port=edge_port, server_name=sec.get("server_name", str, None),
        ca_bundle=ca, verify=sec.get("verify", bool, True), proxy_protocol=proxy_protocol,
        devices=sec.get("devices", bool, True),
        handshake_timeout=sec.positive("handshake_timeout", float, d.handshake_timeout),
        idle_timeout=sec.positive("idle_timeout", float, d.idle_timeout),
        message_timeout=sec.positive("message_timeout", float, d.message_timeout),
        edge_connect_timeout=sec.positive("edge_connect_timeout", float, d.edge_connect_timeout),
        max_connections=sec.positive("max_connections", int, d.max_connections),
        limits=limits,
    )
    sec.finish()
    return cfg
