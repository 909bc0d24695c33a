"""``ucgate init``: a commented starter configuration for one published name and one front-end
pool (``ucgate init --published-name lyncext.contoso.com --front-end
https://fepool.contoso.local:4443 -o ucgate.toml``).

The file runs everything in one process (gateway, id service, store) and says, section by
section, what to change for the usual cases: a directory, Kerberos, a pool behind HAProxy, the
id service on the LAN. ``examples/ucgate.toml`` is this output for Contoso (a test keeps them
the same), and ``ucgate check-config`` accepts it once the certificate files exist.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

import tomli_w

_NAME = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$", re.IGNORECASE)


class InitError(ValueError):
    pass


def _toml(value: str) -> str:
    """``value`` as a TOML string (tomli_w's quoting: a path with a quote or a backslash stays
    valid). The file is a commented template, so only the values are written by tomli_w."""
    return tomli_w.dumps({"v": value})[len("v = ") : -1]


def _url(value: str, option: str) -> str:
    parts = urlsplit(value)
    try:
        _ = parts.port
    except ValueError:
        raise InitError(f"{option}: bad port in {value!r}") from None
    if (
        parts.scheme not in ("https", "http")
        or not parts.hostname
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
        or parts.username
    ):
        raise InitError(f"{option}: expected https://host[:port] (no path), got {value!r}")
    return value.rstrip("/")


def starter_config(
    *,
    published_name: str,
    front_end: str,
    exchange: str | None = None,
    etc_dir: Path = Path("/etc/ucgate"),
    data_dir: Path = Path("/var/lib/ucgate"),
) -> str:
    """The text of the starter configuration.

    Raises:
        InitError: a published name or URL that cannot work (the message names the option).
    """
    if not _NAME.match(published_name):
        raise InitError(f"--published-name: expected a DNS name such as lyncext.contoso.com, got {published_name!r}")
    published_name = published_name.lower()
    front_end = _url(front_end, "--front-end")
    exchange = _url(exchange, "--exchange") if exchange else None
    fe_host = urlsplit(front_end).hostname
    dns_domain = published_name.split(".", 1)[1]
    netbios = dns_domain.split(".")[0].upper()[:15]
    etc, data = str(etc_dir).rstrip("/"), str(data_dir).rstrip("/")
    if exchange:
        eas = f"""[upstreams.exchange]                 # Exchange ActiveSync (/Microsoft-Server-ActiveSync)
url = {_toml(exchange)}
"""
    else:
        eas = """# [upstreams.exchange]               # Exchange ActiveSync: give its URL and remove [services.eas]
# url = "https://mail.contoso.local"
[services.eas]
enabled = false                      # no [upstreams.exchange]: ActiveSync requests get 404
"""
    return f"""\
# ucgate configuration for {published_name}, written by `ucgate init`.
#
# One process runs everything here: the gateway, the id service and the store (SQLite). Check
# it with `ucgate check-config -c <this file>`; run it with `ucgate serve -c <this file>` or the
# systemd unit examples/systemd/ucgate-gateway.service. docs/deployment.md says where each file
# comes from; the README's "Configuration reference" lists every key. Relative paths are
# relative to this file.

[gateway]
listen = "0.0.0.0:443"
published_name = {_toml(published_name)}
# The certificate clients see (and NTLM's channel binding): {published_name} and the other
# published names of the pool (lyncdiscover., meet., dialin., ...); PEM, leaf first, then the
# intermediates. The key: readable by the ucgate user only.
tls_cert = {_toml(f"{etc}/gateway.crt")}
tls_key = {_toml(f"{etc}/gateway.key")}
# Behind HAProxy in TCP mode (examples/haproxy/): the balancers' addresses, their PROXY header,
# and the health listener its checks use.
# trusted_proxies = ["10.0.1.5/32", "10.0.1.6/32"]
# proxy_protocol = true
# health_listen = "10.0.1.11:8081"

[upstreams.frontend]                 # the Skype for Business front-end pool (its external web services)
url = {_toml(front_end)}
verify = true                        # chain, expiry and host name of the front end's certificate
# ca_bundle = "{etc}/internal-ca.pem"  # the internal CA that issued it (default: the system store)
# server_name = "{fe_host}"  # the name to verify, if not the URL's host

{eas}
[auth]
methods = ["negotiate", "ntlm", "basic"]
extended_protection = "require"      # NTLM channel binding; "allow" for clients that send none (curl)
netbios_domain = {_toml(netbios)}  # the NetBIOS domain (DOMAIN\\user must match): check it
dns_domain = {_toml(dns_domain)}
two_factor = "off"                   # off | otp-appended | device-approval
# two_factor_groups = {{ "ucgate-mobile" = "otp-appended" }}

[lockout]                            # the failure budget: keep user_failures below AD's lockout threshold
user_failures = 5
ip_failures = 20
window = 900

# Users from Active Directory (without this section: local users, `ucgate user add`). The bind
# account needs read access only; the file holds its password alone (chmod 600).
# [directory]
# url = ["ldaps://dc1.{dns_domain}", "ldaps://dc2.{dns_domain}"]
# bind_dn = "CN=svc-ucgate,OU=Service Accounts,DC={dns_domain.replace(".", ",DC=")}"
# bind_password_file = "{etc}/ldap.secret"
# base_dn = "DC={dns_domain.replace(".", ",DC=")}"
# ca_file = "{etc}/internal-ca.pem"
# required_group = "ucgate-users"

# Kerberos: Negotiate from domain PCs and constrained delegation to the front end
# (`ucgate kerberos check` tests the setup; docs/deployment.md, "Kerberos").
# [kerberos]
# realm = "{dns_domain.upper()}"
# keytab = "{etc}/http.keytab"  # HTTP/{published_name} of the pool's service account
# account = "svc-ucgate-gw"
# front_end_spn = "HTTP/{fe_host}"

# The id service on the LAN, the gateway in the DMZ holding no store or directory credentials
# (docs/deployment.md, "DMZ and LAN"): on the gateway, uncomment url, ca_file and secret_file;
# the id service's own file has listen, tls_cert, tls_key and secret_file.
# [id_service]
# url = ["https://ucgate-id1.{dns_domain}:9443", "https://ucgate-id2.{dns_domain}:9443"]
# ca_file = "{etc}/internal-ca.pem"
# secret_file = "{etc}/id-service.secret"   # openssl rand -base64 32; chmod 600; the same on both sides

[devices]                            # user/device partnerships
default_action = "quarantined"       # a new device waits for an approval (admin UI, portal, `ucgate device approve`)
max_devices = 10
# true: an approved device must pass the second factor again every trust_lifetime_hours, which
# needs [auth] two_factor = "otp-appended" (or a two_factor_groups entry) and enrolled users
require_second_factor = false
trust_lifetime_hours = 24
# Device rules (first match wins) and [[policy]] per group can be written here; rules and group
# policies can also be edited in the admin UI, the REST API and `ucgate device rules|policy`:
# those come after the ones in this file.
# [[devices.rules]]
# name = "no old Android"
# action = "blocked"
# client_kind = "android"
# os = "Android 4*"

[web]                                # the admin UI (/admin), the portal (/portal), the REST API (/api/v1)
enabled = false                      # true: served by `ucgate serve` on listen (TLS: the gateway's certificate)
listen = "127.0.0.1:8444"
# [web.users]
# alice = "admin"                    # admin | helpdesk | auditor; admins need TOTP

[data]
dir = {_toml(data)}

[store]
# url = "postgresql+psycopg://ucgate@db.{dns_domain}/ucgate"   # a pool; default: SQLite in [data] dir
key_file = {_toml(f"{etc}/private/ucgate.key")}   # encrypts stored secrets; created on first use; never inside [data] dir
audit_file = {_toml(f"{data}/audit.jsonl")}    # one JSON object per line (docs/audit-event.schema.json)

# Audit events to the SIEM as well: RFC 5424 syslog over TLS (RFC 5425) or TCP.
# [audit.syslog]
# address = "siem.{dns_domain}:6514"
# ca_file = "{etc}/internal-ca.pem"

[log]
level = "info"                       # debug | info | warning | error
"""
