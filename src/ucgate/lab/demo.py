"""``ucgate demo``: the gateway in front of the built-in simulated front end, in one process."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import sys
from pathlib import Path

import tomli_w

from ..app import build_node, wait_for_signal
from ..config import load
from ..gateway.tls import is_proper_leaf, make_self_signed
from .frontend import create_app
from .registrar import Account, start_registrar

log = logging.getLogger("ucgate.demo")


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


async def start_frontend(host: str = "127.0.0.1", port: int = 0, **app_args):
    """Start the simulated SfB/Exchange front end with uvicorn; returns (server, task, port)."""
    import uvicorn

    port = port or _free_port(host)
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(**app_args), host=host, port=port, log_level="warning", lifespan="off", access_log=False
        )
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.02)
    return server, task, port


def demo_config(data_dir: Path, host: str, port: int, fe_port: int, edge_port: int = 0) -> dict:
    # The key that encrypts ASPs lives beside, not inside, the data directory.
    return {
        "gateway": {
            "listen": f"{host}:{port}",
            "tls_cert": str(data_dir / "gateway.crt"),
            "tls_key": str(data_dir / "gateway.key"),
            "published_name": "localhost",
        },
        "upstreams": {
            "frontend": {"url": f"http://127.0.0.1:{fe_port}"},
            "exchange": {"url": f"http://127.0.0.1:{fe_port}"},
        },
        "auth": {"netbios_domain": "CONTOSO", "dns_domain": "contoso.com"},
        "data": {"dir": str(data_dir / "data")},
        "store": {"key_file": str(data_dir / "keys" / "ucgate.key")},
        "log": {"level": "info"},
        # the admin UI, portal and REST API on their own listener, TLS with the gateway's cert
        "web": {"enabled": True, "listen": f"{host}:{port + 1 if port else 0}", "users": {"alice": "admin"}},
        # the SIP relay in front of the simulated Access Edge (lab/registrar.py), same certificate
        **(
            {
                "sip": {
                    "enabled": True,
                    "listen": f"{host}:{port + 2 if port else 0}",
                    "edge": f"127.0.0.1:{edge_port}",
                    "server_name": "localhost",
                    "ca_bundle": str(data_dir / "gateway.crt"),
                }
            }
            if edge_port
            else {}
        ),
    }


def ucgate_command() -> str:
    """How to run the CLI as printed: the ``ucgate`` next to this Python (the venv's, which is
    not on PATH after ``scripts/demo``), else ``python -m ucgate``."""
    exe = Path(sys.executable).with_name("ucgate")
    if exe.is_file() and os.access(exe, os.X_OK):
        return str(exe)
    found = shutil.which("ucgate")
    return found or f"{sys.executable} -m ucgate"


def demo_user(node) -> str:
    """Make sure the demo user exists and give it a fresh ASP (shown once, so a new one each
    run; older demo ASPs are revoked)."""
    users, asps = node.ids.users, node.ids.asps
    if users.get("alice") is None:
        users.add("alice", upn="alice@contoso.com", sip_uri="sip:alice@contoso.com", display_name="Alice Demo")
    for info in asps.list("alice", include_revoked=False):
        if info.label == "demo":
            asps.revoke(info.id)
    return asps.create("alice", "demo")[1]


def ensure_demo_certificate(data_dir: Path) -> tuple[Path, Path]:
    """The demo's self-signed server certificate and key, (re)generated when missing, when
    not a proper leaf (earlier versions wrote a CA:TRUE certificate valid 825 days) or when
    it expires within 30 days."""
    cert, key = data_dir / "gateway.crt", data_dir / "gateway.key"
    if not cert.exists() or not key.exists() or not is_proper_leaf(cert):
        make_self_signed(cert, key, ["localhost", "127.0.0.1"])
        log.info("generated a self-signed certificate in %s", data_dir)
    return cert, key


async def run_demo(data_dir: Path, host: str, port: int) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "data").mkdir(exist_ok=True)
    (data_dir / "keys").mkdir(mode=0o700, exist_ok=True)
    cert, key = ensure_demo_certificate(data_dir)
    fe, fe_task, fe_port = await start_frontend(users={"alice": "Passw0rd!"})
    edge = await start_registrar(cert, key, [Account("alice", "Passw0rd!", "alice@contoso.com")], record=False)
    # Written to a file so that the admin CLI can be pointed at the running demo (-c).
    config_path = data_dir / "ucgate.toml"
    # tomli_w writes every TOML type as TOML (lists as arrays, nested tables), not as strings.
    config_path.write_text(
        "# written by `ucgate demo` on each start\n"
        + tomli_w.dumps(demo_config(data_dir, host, port, fe_port, edge.port))
    )
    config = load(config_path)
    node = build_node(config)
    asp = demo_user(node)
    await node.start()
    gateway = node.gateway
    base = f"https://{host}:{gateway.port}"
    ucgate = ucgate_command()
    print(
        f"""
ucgate demo is running: gateway {base}  →  simulated SfB/Exchange front end http://127.0.0.1:{fe_port}
(self-signed certificate: {cert}; pass --cacert to curl, or -k)

Try:
  # anonymous autodiscover passes through to the front end
  curl --cacert {cert} '{base}/Autodiscover/AutodiscoverService.svc/root?originalDomain=contoso.com'
  # protected services are refused before anything reaches the front end
  curl --cacert {cert} -i {base}/ucwa/oauth/v1/applications
  # ... and pass with alice's application-specific password (Basic over TLS) — shown once:
  #     alice's ASP for this run: {asp}
  curl --cacert {cert} -u 'alice:{asp}' -X OPTIONS -i {base}/Microsoft-Server-ActiveSync
  # the SfB mobile sign-in: the gateway checks the ASP in the OAuth password grant itself
  curl --cacert {cert} -d 'grant_type=password&username=alice@contoso.com&password={asp}' \\
       {base}/WebTicket/oauthtoken
  # a wrong password gets 401; five of them in 15 minutes get 429 (the failure budget)
  curl --cacert {cert} -u 'alice:wrong' -i {base}/ucwa/oauth/v1/applications
  # NTLM is refused here because curl's NTLM sends no channel binding and Extended
  # Protection is required over TLS (clients that bind, e.g. requests-ntlm, pass):
  curl --cacert {cert} --ntlm -u 'CONTOSO\\alice:{asp}' -i {base}/ucwa/oauth/v1/applications
  # a smuggling attempt gets 400 and the connection is closed
  printf 'POST /ucwa/x HTTP/1.1\\r\\nHost: a\\r\\nContent-Length: 4\\r\\nTransfer-Encoding: chunked\\r\\n\\r\\n0\\r\\n\\r\\n' | openssl s_client -quiet -connect {host}:{gateway.port} 2>/dev/null

  # a phone's first ActiveSync request: the new device is quarantined (EAS status 129)
  curl --cacert {cert} -u 'alice:{asp}' -X POST -H 'MS-ASProtocolVersion: 14.1' \\
       '{base}/Microsoft-Server-ActiveSync?Cmd=FolderSync&User=alice&DeviceId=DEMOPHONE1&DeviceType=iPhone'
  # ... until an administrator approves it (then the same request is forwarded):
  {ucgate} device list -c {config_path}
  {ucgate} device approve -c {config_path} <id from the list>

SIP (the desktop client's sign-in) on {host}:{node.sip.port}, TLS  →  simulated Access Edge 127.0.0.1:{edge.port}
  # a PC signs in with NTLM (pyspnego's initiator; `pip install pyspnego`); a new PC is quarantined (403 +
  # ms-diagnostics) until approved, like the phone above; run it again after `ucgate device approve`:
  {sys.executable} -m ucgate.lab.sipclient --port {node.sip.port} --ca {cert} --aor alice@contoso.com \\
       --login 'CONTOSO\\alice' --password 'Passw0rd!' --epid 0a1b2c3d4e
  # a REGISTER with a second Content-Length is refused and closed before the Edge sees it
  printf 'REGISTER sip:contoso.com SIP/2.0\\r\\nVia: SIP/2.0/TLS x;branch=z9hG4bK1\\r\\nFrom: <sip:alice@contoso.com>;tag=1\\r\\nTo: <sip:alice@contoso.com>\\r\\nCall-ID: 1\\r\\nCSeq: 1 REGISTER\\r\\nContent-Length: 0\\r\\nl: 0\\r\\n\\r\\n' | openssl s_client -quiet -connect {host}:{node.sip.port} 2>/dev/null

Admin UI https://{host}:{port + 1}/admin/  ·  portal https://{host}:{port + 1}/portal/  (alice is an admin:
  sign in to the portal with the ASP above, enrol an authenticator app, then use the admin UI)
Audit log: {config.store.audit_file}   Admin CLI: {ucgate} -h (pass -c {config_path})
Press Ctrl-C to stop.
""",
        flush=True,
    )
    try:
        await wait_for_signal()
    finally:
        await node.stop()
        await edge.stop()
        fe.should_exit = True
        await fe_task
