"""Issue 13 item 11: what a closed connection leaves behind.

After a 2,000-idle-connection run the gateway's RSS stayed high once every connection was
closed. Measured (README, "Memory"): the resident size is glibc keeping freed memory for reuse
(``malloc_trim(0)`` gives it back; a second run reuses it and does not grow), but every closed
connection's objects — session, connection, stream, TLS transport, the ``SSLSocket`` with its
OpenSSL state — also stayed alive, in reference cycles, until the next cyclic garbage
collection. Here, with the cyclic collector off, nothing of a closed connection may remain.
"""

from __future__ import annotations

import gc
import socket
import ssl
import time

from ucgate.gateway.session import ClientSession
from ucgate.gateway.tlstransport import TLSTransport

from ..support import AllowAs, start_gateway

REQUESTS = [
    b"GET /meet/x HTTP/1.1\r\nHost: localhost\r\n\r\n",  # the fast path
    b"POST /ucwa/x HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\n\r\n{}",  # the pipeline
    b"GET /nosuch HTTP/1.1\r\nHost: localhost\r\n\r\n",  # refused (404)
    b"GET /meet/x HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
]


def _live(kind, gw=None):
    return [o for o in gc.get_objects() if isinstance(o, kind) and (gw is None or o.gw is gw)]


def test_closed_connections_are_freed_without_the_cyclic_gc(loop_thread, tls_files, upstream):
    gw = start_gateway(loop_thread, *tls_files, upstream.port, authenticator=AllowAs())
    ctx = ssl.create_default_context(cafile=str(tls_files[0]))
    try:
        gc.collect()
        transports_before = len(_live(TLSTransport))
        gc.disable()
        try:
            for i in range(20):
                s = ctx.wrap_socket(
                    socket.create_connection(("127.0.0.1", gw.port), timeout=5), server_hostname="localhost"
                )
                s.sendall(REQUESTS[i % len(REQUESTS)])
                buf = b""
                while b"\r\n\r\n" not in buf:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    buf += chunk
                assert buf.startswith(b"HTTP/1.1 "), buf[:40]
                s.close()
            deadline = time.monotonic() + 5
            while gw.gateway.connections and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.2)  # connection_lost runs via call_soon
            assert not gw.gateway.connections
            assert _live(ClientSession, gw.gateway) == []
            assert len(_live(TLSTransport)) == transports_before
        finally:
            gc.enable()
    finally:
        gw.stop()
