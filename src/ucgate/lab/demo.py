"""``ucgate demo``: the gateway in front of the built-in simulated front end, in one process."""

from __future__ import annotations

import asyncio
import logging
import socket
from pathlib import Path

from ..config import from_dict
from ..gateway.tls import make_self_signed

log = logging.getLogger("ucgate.demo")


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


async def start_frontend(host: str = "127.0.0.1", port: int = 0, **app_args):
    """Start the simulated SfB/Exchange front end with uvicorn; returns (server, task, port)."""
    import uvicorn

    from .frontend import create_app

    port = port or _free_port(host)
    server = uvicorn.Server(
        uvicorn.Config(create_app(**app_args), host=host, port=port, log_level="warning",
                       lifespan="off", access_log=False)
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.02)
    return server, task, port


def demo_config(data_dir: Path, host: str, port: int, fe_port: int) -> dict:
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
        "data": {"dir": str(data_dir)},
    }


async def run_demo(data_dir: Path, host: str, port: int) -> None:
    from ..app import build_gateway, wait_for_signal

    data_dir.mkdir(parents=True, exist_ok=True)
    cert, key = data_dir / "gateway.crt", data_dir / "gateway.key"
    if not cert.exists() or not key.exists():
        make_self_signed(cert, key, ["localhost", "127.0.0.1"])
        log.info("generated a self-signed certificate in %s", data_dir)
    fe, fe_task, fe_port = await start_frontend(users={"alice": "Passw0rd!"})
    config = from_dict(demo_config(data_dir, host, port, fe_port))
    gateway = build_gateway(config)
    await gateway.start()
    base = f"https://{host}:{gateway.port}"
    print(
        f"""
ucgate demo is running: gateway {base}  →  simulated SfB/Exchange front end http://127.0.0.1:{fe_port}
(self-signed certificate: {cert}; pass --cacert to curl, or -k)

Try:
  # anonymous autodiscover passes through to the front end
  curl --cacert {cert} '{base}/Autodiscover/AutodiscoverService.svc/root?originalDomain=contoso.com'
  # protected services are refused before anything reaches the front end
  curl --cacert {cert} -i {base}/ucwa/oauth/v1/applications
  curl --cacert {cert} -i '{base}/Microsoft-Server-ActiveSync?Cmd=Sync&User=alice&DeviceId=ABC123&DeviceType=iPhone' -X POST
  # a smuggling attempt gets 400 and the connection is closed
  printf 'POST /ucwa/x HTTP/1.1\\r\\nHost: a\\r\\nContent-Length: 4\\r\\nTransfer-Encoding: chunked\\r\\n\\r\\n0\\r\\n\\r\\n' | openssl s_client -quiet -connect {host}:{gateway.port} 2>/dev/null

Press Ctrl-C to stop.
""",
        flush=True,
    )
    try:
        await wait_for_signal()
    finally:
        await gateway.stop()
        fe.should_exit = True
        await fe_task
