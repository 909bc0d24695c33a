"""HAProxy in front of gateways, for the pool tests (Debian's ``haproxy``, installed by
``scripts/bootstrap --test``).

:class:`HAProxyLab` writes a configuration into a temporary directory and runs
``haproxy -f <cfg> -db`` (foreground) on a loopback port: TCP mode (NTLM authenticates a
connection, so a connection stays on one gateway), ``send-proxy-v2`` to every gateway (the
PROXY header before the TLS ClientHello), health checks ``option httpchk GET /readyz`` against
each gateway's health listener (``check port``; those checks carry no PROXY header), fast
check timings so a test sees a node leave and rejoin within a second, and ``option redispatch``
with ``retries`` so a connection refused by a dead node is retried on another at once, as in
``examples/haproxy/haproxy.cfg``. The admin socket (``show stat``) says which servers are UP.

Use the fixture::

    from tests.lab.haproxy import haproxy_lab  # noqa: F401

    def test_x(haproxy_lab):
        lb = haproxy_lab([Backend("gw1", port, health_port), ...])

HAProxy missing: the tests are skipped with the reason, except in CI (``CI=true``), where that is
a failure (as the Samba lab, ``tests/lab/fixtures.py``). Failing to start is always a failure.
"""

from __future__ import annotations

import csv
import io
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from ..support import free_port
from .fixtures import _in_ci

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"  # /usr/sbin is not on every PATH


@dataclass(frozen=True)
class Backend:
    """One gateway: its client port and, for ``option httpchk``, its health listener's port
    (None: a plain TCP check on the client port)."""

    name: str
    port: int
    health_port: int | None = None
    host: str = "127.0.0.1"


class HAProxyLab:
    """One haproxy process balancing ``backends`` from ``127.0.0.1:<port>``."""

    def __init__(self, backends: list[Backend], *, send_proxy: str = "send-proxy-v2", inter_ms: int = 200) -> None:
        self.backends = backends
        self.send_proxy = send_proxy
        self.inter_ms = inter_ms
        self.dir = Path(tempfile.mkdtemp(prefix="ucgate-haproxy-"))
        self.port = free_port()
        self.cfg = self.dir / "haproxy.cfg"
        self.admin = self.dir / "admin.sock"
        self.log = self.dir / "haproxy.log"
        self.proc: subprocess.Popen | None = None

    def config(self) -> str:
        servers = []
        for b in self.backends:
            check = f"check port {b.health_port}" if b.health_port is not None else "check"
            servers.append(f"    server {b.name} {b.host}:{b.port} {self.send_proxy} {check}")
        httpchk = "    option httpchk GET /readyz\n" if any(b.health_port for b in self.backends) else ""
        return (
            f"""\
global
    maxconn 256
    stats socket {self.admin} mode 600 level admin
    log stdout format raw local0 info

defaults
    mode tcp
    log global
    option tcplog
    timeout connect 1s
    timeout client 30s
    timeout server 30s
    timeout check 1s
    retries 3
    option redispatch 1

frontend gateways
    bind 127.0.0.1:{self.port}
    default_backend gateways

backend gateways
    balance roundrobin
{httpchk}    default-server inter {self.inter_ms}ms fastinter {self.inter_ms}ms fall 2 rise 1
"""
            + "\n".join(servers)
            + "\n"
        )

    def start(self, timeout: float = 10.0) -> None:
        self.cfg.write_text(self.config())
        check = subprocess.run([HAPROXY, "-c", "-q", "-f", str(self.cfg)], capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"haproxy -c refused {self.cfg}:\n{check.stdout}{check.stderr}")
        logf = self.log.open("wb")
        self.proc = subprocess.Popen(
            [HAPROXY, "-f", str(self.cfg), "-db"], stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        logf.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"haproxy exited ({self.proc.returncode}):\n{self.log.read_text()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                if self.admin.exists():
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"haproxy did not listen within {timeout}s:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)

    # --- the admin socket ---------------------------------------------------------------------
    def command(self, line: str) -> str:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(str(self.admin))
            s.sendall(line.encode() + b"\n")
            out = b""
            while chunk := s.recv(65536):
                out += chunk
        return out.decode()

    def status(self) -> dict[str, str]:
        """{server name: "UP" | "DOWN" | ...} of the gateways backend."""
        text = self.command("show stat").lstrip("# ")
        rows = csv.DictReader(io.StringIO(text))
        return {
            r["svname"]: r["status"]
            for r in rows
            if r["pxname"] == "gateways" and r["svname"] not in ("BACKEND", "FRONTEND")
        }

    def wait_status(self, want: dict[str, str], timeout: float = 10.0) -> None:
        """Until each named server has its status (HAProxy's checks run every ``inter_ms``)."""
        deadline = time.monotonic() + timeout
        while True:
            now = self.status()
            if all(now.get(k, "").startswith(v) for k, v in want.items()):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"haproxy servers {now}, wanted {want}\n{self.log.read_text()[-3000:]}")
            time.sleep(0.05)


def _unavailable(reason: str) -> None:
    if _in_ci():
        pytest.fail(f"HAProxy unavailable in CI: {reason}", pytrace=False)
    pytest.skip(f"HAProxy unavailable: {reason}")


@pytest.fixture
def haproxy_lab():
    """A factory: ``haproxy_lab(backends, **options)`` starts an :class:`HAProxyLab` (stopped
    after the test)."""
    if not Path(HAPROXY).is_file():
        _unavailable("the haproxy binary is not installed (scripts/bootstrap --test installs it)")
    labs: list[HAProxyLab] = []

    def start(backends: list[Backend], **options) -> HAProxyLab:
        lab = HAProxyLab(backends, **options)
        labs.append(lab)
        lab.start()
        return lab

    yield start
    for lab in labs:
        lab.stop()
