"""PostgreSQL unreachable (behind a TCP proxy that is stopped): new sign-ins get 503 +
Retry-After and a log line naming the store, live sessions are untouched, and sign-ins work
again when it comes back, without a restart."""

from __future__ import annotations

import asyncio
import base64
import http.client
import time

from sqlalchemy.engine import make_url

from tests.store.backends import postgres_database, postgres_url  # noqa: F401
from ucgate.config import LockoutConfig
from ucgate.gateway.preauth import PreAuthenticator, PreAuthSettings
from ucgate.id.factory import open_services

from ..support import start_gateway


class TcpProxy:
    """Forwards 127.0.0.1:<port> to a target; ``stop`` closes the listener and every relayed
    connection (the database "goes away"), ``start`` listens again on the same port."""

    def __init__(self, lt, target_port: int) -> None:
        self.lt, self.target_port, self.port = lt, target_port, 0
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    async def _pipe(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while data := await r.read(65536):
                w.write(data)
                await w.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            w.close()

    async def _conn(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            ur, uw = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            w.close()
            return
        self.writers |= {w, uw}
        await asyncio.gather(self._pipe(r, uw), self._pipe(ur, w))

    def start(self) -> None:
        async def go():
            self.server = await asyncio.start_server(self._conn, "127.0.0.1", self.port)
            self.port = self.server.sockets[0].getsockname()[1]

        self.lt.run(go())

    def stop(self) -> None:
        async def go():
            self.server.close()
            for w in list(self.writers):
                w.transport.abort()
            self.writers.clear()

        self.lt.run(go())


def _basic(c: http.client.HTTPSConnection, user: str, pw: str) -> http.client.HTTPResponse:
    c.request(
        "GET", "/ucwa/x", headers={"Authorization": "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode()}
    )
    r = c.getresponse()
    r.read()
    return r


def test_store_down_is_503_live_sessions_kept_then_recovery(
    tmp_path, postgres_url, loop_thread, upstream, tls_files, caplog
):
    url = make_url(postgres_url)
    proxy = TcpProxy(loop_thread, url.port or 5432)
    proxy.start()
    (tmp_path / "keys").mkdir(mode=0o700)
    store = url.set(port=proxy.port, query={**url.query, "connect_timeout": "2"}).render_as_string(hide_password=False)
    from ucgate.store import open_repository

    open_repository(store).close()  # `ucgate db upgrade`
    ids = open_services(
        store_url=store,
        key_file=tmp_path / "keys" / "k",
        audit_file=None,
        lockout=LockoutConfig(user_failures=5, ip_failures=50, window=900),
    )
    ids.users.add("alice")
    _, asp = ids.asps.create("alice", "phone")
    gw = start_gateway(
        loop_thread, *tls_files, upstream.port, authenticator=PreAuthenticator(ids.credentials, PreAuthSettings())
    )
    try:
        live = http.client.HTTPSConnection("localhost", gw.port, context=gw.ssl_context(), timeout=15)
        assert _basic(live, "alice", asp).status == 200
        proxy.stop()
        fresh = http.client.HTTPSConnection("localhost", gw.port, context=gw.ssl_context(), timeout=15)
        r = _basic(fresh, "alice", asp)
        assert r.status == 503 and int(r.getheader("Retry-After")) > 0
        assert "store unavailable" in caplog.text and f"127.0.0.1:{proxy.port}" in caplog.text
        assert _basic(live, "alice", asp).status == 200  # the live session is untouched
        proxy.start()
        t0 = time.monotonic()
        while True:
            fresh = http.client.HTTPSConnection("localhost", gw.port, context=gw.ssl_context(), timeout=15)
            if _basic(fresh, "alice", asp).status == 200:
                break
            assert time.monotonic() - t0 < 10, "no recovery after the store came back"
            time.sleep(0.2)
        print(f"\nsign-ins back {time.monotonic() - t0:.2f} s after the store came back")
    finally:
        gw.stop()
        ids.close()
        proxy.stop()
