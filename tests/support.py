"""Test support: an event loop in a thread, a recording upstream (h11), a gateway runner.

The upstream is written with h11, an HTTP implementation we did not write, so the tests see
what a real server parses from what the gateway forwards.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h11

from ucgate.config import from_dict
from ucgate.gateway.auth import AuthOutcome
from ucgate.gateway.connection import Identity
from ucgate.gateway.server import Gateway


class LoopThread:
    """An asyncio event loop running in a daemon thread; ``run`` executes a coroutine on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@dataclass
class Received:
    method: str
    target: str
    headers: list[tuple[str, str]]
    body_len: int
    body_sha256: str

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None


@dataclass
class RecordingUpstream:
    """An HTTP/1.1 server (h11) that records every request it gets and answers with JSON
    describing it. ``GET .../download?n=BYTES`` streams BYTES bytes (chunked)."""

    received: list[Received] = field(default_factory=list)
    raw_connections: int = 0
    server: asyncio.Server | None = None
    port: int = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._conn, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server:
            self.server.close()

    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.raw_connections += 1
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=128 * 1024)
        try:
            while True:
                req = await self._next(conn, reader)
                if req is None or isinstance(req, h11.ConnectionClosed):
                    return
                assert isinstance(req, h11.Request)
                h = hashlib.sha256()
                n = 0
                while True:
                    ev = await self._next(conn, reader)
                    if isinstance(ev, h11.Data):
                        h.update(ev.data)
                        n += len(ev.data)
                    elif isinstance(ev, h11.EndOfMessage):
                        break
                    else:
                        return
                rec = Received(
                    req.method.decode(),
                    req.target.decode(),
                    [(k.decode(), v.decode("latin-1")) for k, v in req.headers],
                    n,
                    h.hexdigest(),
                )
                self.received.append(rec)
                target = rec.target
                if "/download" in target:
                    size = int(target.rsplit("n=", 1)[1])
                    writer.write(
                        conn.send(
                            h11.Response(
                                status_code=200,
                                headers=[
                                    ("Content-Type", "application/octet-stream"),
                                    ("Transfer-Encoding", "chunked"),
                                ],
                            )
                        )
                    )
                    block = b"x" * 65536
                    left = size
                    while left:
                        piece = block[: min(left, len(block))]
                        left -= len(piece)
                        writer.write(conn.send(h11.Data(data=piece)))
                        await writer.drain()
                    writer.write(conn.send(h11.EndOfMessage()))
                else:
                    body = json.dumps(rec.__dict__).encode()
                    writer.write(
                        conn.send(
                            h11.Response(
                                status_code=200,
                                headers=[
                                    ("Content-Type", "application/json"),
                                    ("Content-Length", str(len(body))),
                                    ("Connection", "keep-alive"),
                                    ("Keep-Alive", "timeout=5"),
                                    ("X-Upstream", "h11"),
                                ],
                            )
                        )
                    )
                    writer.write(conn.send(h11.Data(data=body)))
                    writer.write(conn.send(h11.EndOfMessage()))
                await writer.drain()
                if conn.our_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
        except (h11.RemoteProtocolError, ConnectionError):
            return
        finally:
            writer.close()

    @staticmethod
    async def _next(conn: h11.Connection, reader: asyncio.StreamReader):
        while True:
            ev = conn.next_event()
            if ev is h11.NEED_DATA:
                data = await reader.read(65536)
                conn.receive_data(data)
                continue
            return ev


class AllowAs:
    """Test authenticator: every protected request is ``user``'s (to test forwarding)."""

    def __init__(self, user: str = "tester") -> None:
        self.user = user

    async def authenticate(self, conn, request, service) -> AuthOutcome:
        return AuthOutcome(identity=Identity(self.user, "test"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gateway_config(cert: Path | None, key: Path | None, upstream_port: int, **gateway_overrides: Any) -> dict:
    services = gateway_overrides.pop("services", {})
    limits = gateway_overrides.pop("limits", {})
    timeouts = gateway_overrides.pop("timeouts", {})
    gw: dict[str, Any] = {"listen": "127.0.0.1:0"}
    if cert is None:
        gw["plain_http"] = True
    else:
        gw["tls_cert"], gw["tls_key"] = str(cert), str(key)
    gw.update(gateway_overrides)
    if limits:
        gw["limits"] = limits
    if timeouts:
        gw["timeouts"] = timeouts
    return {
        "gateway": gw,
        "upstreams": {
            "frontend": {"url": f"http://127.0.0.1:{upstream_port}"},
            "exchange": {"url": f"http://127.0.0.1:{upstream_port}"},
        },
        "services": services,
    }


class RunningGateway:
    def __init__(self, lt: LoopThread, gateway: Gateway, cert: Path | None) -> None:
        self.lt, self.gateway, self.cert = lt, gateway, cert
        self.port = gateway.port
        scheme = "http" if cert is None else "https"
        self.url = f"{scheme}://127.0.0.1:{self.port}"

    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.cert))
        return ctx

    def raw(self, data: bytes, *, read_timeout: float = 5.0) -> bytes:
        """Send raw bytes on a fresh TLS connection and read until the server closes."""
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=read_timeout)
        if self.cert is not None:
            sock = self.ssl_context().wrap_socket(sock, server_hostname="localhost")
        try:
            sock.sendall(data)
            out = b""
            deadline = time.monotonic() + read_timeout
            while time.monotonic() < deadline:
                try:
                    chunk = sock.recv(65536)
                except TimeoutError:
                    break
                except (ConnectionResetError, ssl.SSLError):
                    break
                if not chunk:
                    break
                out += chunk
            return out
        finally:
            sock.close()

    def stop(self) -> None:
        self.lt.run(self.gateway.stop())


def start_gateway(lt: LoopThread, cert, key, upstream_port: int, authenticator=None, **overrides) -> RunningGateway:
    cfg = from_dict(gateway_config(cert, key, upstream_port, **overrides))

    async def _start() -> Gateway:
        g = Gateway(cfg, authenticator)
        await g.start()
        return g

    return RunningGateway(lt, lt.run(_start()), cert)
