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

from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, ValidationInfo, model_validator

from ..protocols import sip as sipproto
from . import Bool, File, Listen, ListenAddr, PosFloat, PosInt, RelPath, Str, _Bad, _Model, config_error, host_port

_L = sipproto.Limits()
_LIMITS = ("max_message_bytes", "max_head_bytes", "max_line_bytes", "max_auth_line_bytes", "max_header_count")


class SipConfig(_Model):
    """``[sip]``. From a file, ``listen`` and ``edge`` give ``listen_host``/``listen_port`` and
    ``edge_host``/``edge_port``, the ``max_*`` keys ``limits``; code may pass those directly."""

    _derived = frozenset({"listen_host", "listen_port", "edge_host", "edge_port", "limits"})

    enabled: Bool = False
    listen: ListenAddr = Listen("0.0.0.0", 5061)
    tls_cert: RelPath | None = None  # default: [gateway] tls_cert
    tls_key: RelPath | None = None
    edge: Str = ""  # host:port of the Access Edge
    server_name: Str | None = None
    ca_bundle: File | None = None
    verify: Bool = True
    proxy_protocol: Bool = False
    devices: Bool = True
    handshake_timeout: PosFloat = 10.0
    idle_timeout: PosFloat = 600.0
    message_timeout: PosFloat = 10.0
    edge_connect_timeout: PosFloat = 5.0
    max_connections: PosInt = 10000
    max_message_bytes: PosInt = _L.max_message_bytes
    max_head_bytes: PosInt = _L.max_head_bytes
    max_line_bytes: PosInt = _L.max_line_bytes
    max_auth_line_bytes: PosInt = _L.max_auth_line_bytes
    max_header_count: PosInt = _L.max_header_count
    listen_host: str = "0.0.0.0"
    listen_port: int = 5061
    edge_host: str = ""
    edge_port: int = 5061
    limits: sipproto.Limits = Field(default_factory=sipproto.Limits)

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo) -> SipConfig:
        given = self.model_fields_set
        if "listen" in given:
            self._set(listen_host=self.listen.host, listen_port=self.listen.port)
        if self.edge:
            hp = host_port(self.edge)
            if hp is None:
                raise _Bad("edge", f"expected host:port, got {self.edge!r}")
            self._set(edge_host=hp[0], edge_port=hp[1])
        if given & set(_LIMITS) or "limits" not in given:
            self._set(limits=sipproto.Limits(**{k: getattr(self, k) for k in _LIMITS}))
        gateway = (info.context or {}).get("gateway")
        if gateway is None:  # constructed by code
            return self
        self._set(tls_cert=self.tls_cert or gateway.tls_cert, tls_key=self.tls_key or gateway.tls_key)
        if self.enabled:
            if not self.edge_host:
                raise _Bad("edge", "required: host:port of the Access Edge (TLS)")
            for k, path in (("tls_cert", self.tls_cert), ("tls_key", self.tls_key)):
                if path is None:
                    raise _Bad(k, "required (the published Edge certificate), or set [gateway] tls_cert/tls_key")
                if not path.is_file():
                    raise _Bad(k, f"no such file: {path}")
            if self.proxy_protocol and not gateway.trusted_proxies:
                raise _Bad(
                    "proxy_protocol", "needs [gateway] trusted_proxies: the balancers whose PROXY header is read"
                )
        return self


def parse_sip(raw: dict[str, Any], file: str, base: Path, gateway: Any) -> SipConfig:
    """The [sip] table of a configuration file (``raw``; ``gateway`` the validated GatewayConfig)."""
    try:
        return SipConfig.model_validate(raw, context={"base": base, "gateway": gateway})
    except ValidationError as e:
        raise config_error(file, e, within=("sip",)) from None
