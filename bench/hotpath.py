#!/usr/bin/env python3
"""CPU per request of the gateway's own Python request path, without sockets, TLS or nginx.

    .venv/bin/python bench/hotpath.py                 # 200k keep-alive requests, best of 5
    .venv/bin/python bench/hotpath.py --src /tmp/a/src --src /tmp/b/src   # A/B trees, interleaved

A client and an upstream connection are ``Stream``s over in-memory transports: each response
the gateway writes to the client feeds it the next request, and each request it writes to the
upstream is answered with nginx's response to proxy.py's load — both in the loop's next
iteration (``call_soon``), as a socket's data would arrive. The gateway thus serves one
keep-alive connection (parse, recognise, forward, response: the fast path of
``gateway/session.py`` for this anonymous GET) with no sockets and no waiting, so the time per
request is the Python path plus two loop callbacks, with little noise — what
``bench/proxy.py`` cannot separate from epoll, TLS and the machine's other load.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

REQUEST = (b"GET /Autodiscover/AutodiscoverService.svc/root HTTP/1.1\r\n"
           b"Host: 127.0.0.1:8443\r\n\r\n")
BODY = (b'{"_links":{"self":{"href":"https://lyncdiscover.contoso.com/Autodiscover/'
        b'AutodiscoverService.svc/root"}}}')
RESPONSE = (b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Wed, 25 Nov 2026 15:00:00 GMT\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\nConnection: keep-alive\r\n\r\n"
            % len(BODY)) + BODY


class Transport:
    """Enough of an asyncio transport for Stream: ``answer`` turns a write into the peer's reply,
    in the loop's next iteration."""

    def __init__(self, loop, answer, on_close=None) -> None:
        self.loop = loop
        self.answer = answer
        self.on_close = on_close
        self.closing = False

    def write(self, data: bytes) -> None:
        self.loop.call_soon(self.answer, data)

    def get_extra_info(self, name, default=None):
        return {"peername": ("127.0.0.1", 40000)}.get(name, default)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        if not self.closing and self.on_close is not None:
            self.on_close()
        self.closing = True

    abort = close

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def measure(n: int, rounds: int) -> float:
    """Best µs per request over ``rounds`` runs of ``n`` requests, in this interpreter."""
    import asyncio

    import uvloop

    from ucgate.config import from_dict
    from ucgate.gateway.server import Gateway
    from ucgate.gateway.stream import Stream
    from ucgate.gateway.upstream import UpstreamConnection

    config = from_dict({"gateway": {"listen": "127.0.0.1:0", "plain_http": True},
                        "upstreams": {"frontend": {"url": "http://127.0.0.1:9"}},
                        "auth": {"authenticator": "deny-all"}, "log": {"level": "warning"}})

    async def run() -> float:
        loop = asyncio.get_running_loop()
        gw = Gateway(config)
        upstream = Stream(loop, 1 << 17)
        upstream.connection_made(Transport(loop, lambda data: upstream.data_received(RESPONSE)))
        gw.pools["frontend"].release(UpstreamConnection(upstream))
        left = n
        done = loop.create_future()
        client = Stream(loop, gw.gw.limits.max_header_bytes, gw._on_connection_made)

        def next_request(data: bytes) -> None:
            nonlocal left
            assert data.endswith(BODY), data
            left -= 1
            if left > 0:
                client.data_received(REQUEST)
            else:
                client.eof_received()

        client.connection_made(Transport(loop, next_request, lambda: done.set_result(None)))
        t = time.process_time()
        client.data_received(REQUEST)
        await done
        assert gw.pools["frontend"].opened == 0  # every request went over the one pooled connection
        return (time.process_time() - t) / n * 1e6

    return min(uvloop.run(run()) for _ in range(rounds))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", action="append", default=[], help="a src/ tree to measure (repeatable)")
    ap.add_argument("-n", type=int, default=200_000, help="requests per run (200000)")
    ap.add_argument("--rounds", type=int, default=5, help="runs per tree, interleaved; the best counts")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(measure(args.n, 1))
        return
    trees = args.src or [os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))]
    best: dict[str, float] = {}
    for _ in range(args.rounds):
        for src in trees:  # a fresh interpreter per run and tree: no import or cache carry-over
            out = subprocess.run([sys.executable, __file__, "--child", "-n", str(args.n)], check=True,
                                 capture_output=True, text=True, env={**os.environ, "PYTHONPATH": src})
            us = float(out.stdout.strip().splitlines()[-1])
            best[src] = min(best.get(src, us), us)
    for src, us in best.items():
        print(f"{us:7.2f} us/request  {src}")


if __name__ == "__main__":
    main()
