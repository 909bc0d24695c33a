#!/usr/bin/env python3
"""CPU per request of the gateway's own Python request path, without sockets, TLS or nginx.

    .venv/bin/python bench/hotpath.py                 # 200k keep-alive requests, best of 5
    .venv/bin/python bench/hotpath.py --src /tmp/a/src --src /tmp/b/src   # A/B trees, interleaved
    .venv/bin/python bench/hotpath.py --auth anon --auth ntlm --auth basic --auth bearer
    .venv/bin/python bench/hotpath.py --instructions --src /tmp/a/src --src /tmp/b/src   # callgrind

A client and an upstream connection are ``Stream``s over in-memory transports: each response
the gateway writes to the client feeds it the next request, and each request it writes to the
upstream is answered with nginx's response to proxy.py's load — both in the loop's next
iteration (``call_soon``), as a socket's data would arrive. The gateway thus serves one
keep-alive connection (parse, recognise, forward, response: the fast path of
``gateway/session.py`` for this anonymous GET) with no sockets and no waiting, so the time per
request is the Python path plus two loop callbacks, with little noise — what
``bench/proxy.py`` cannot separate from epoll, TLS and the machine's other load.

``--auth`` (repeatable) measures an authenticated keep-alive request instead: ``GET /ucwa/...``
on a connection already signed in by NTLM (no ``Authorization``), with the Basic header its memo
holds, or with a Bearer token in the gateway's token map (bench/ntlm.py's ntlm-ka, basic-ka,
bearer-ka without sockets); ``anon`` is the default request above.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

REQUEST = b"GET /Autodiscover/AutodiscoverService.svc/root HTTP/1.1\r\nHost: 127.0.0.1:8443\r\n\r\n"
BODY = b'{"_links":{"self":{"href":"https://lyncdiscover.contoso.com/Autodiscover/AutodiscoverService.svc/root"}}}'
AUTH_TARGET = b"/ucwa/oauth/v1/applications"
BASIC = b"Basic YmVuY2g6YWJjZC1lZmdoLWlqa2wtbW5vcC1xcnN0"  # bench:<an ASP-shaped password>
BEARER = b"Bearer cwt=AAEBHAEFAAAAAAAFFQAAAEgS9N1ZVm5xTdhw2w9EAAAB"


def request_for(auth: str) -> bytes:
    if auth == "anon":
        return REQUEST
    extra = {
        "ntlm": b"",
        "basic": b"Authorization: " + BASIC + b"\r\n",
        "bearer": b"Authorization: " + BEARER + b"\r\n",
    }[auth]
    return (
        b"GET " + AUTH_TARGET + b" HTTP/1.1\r\nHost: 127.0.0.1:8443\r\nUser-Agent: ucgate-bench\r\n" + extra + b"\r\n"
    )


RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Wed, 25 Nov 2026 15:00:00 GMT\r\n"
    b"Content-Type: application/json\r\nContent-Length: %d\r\nConnection: keep-alive\r\n\r\n" % len(BODY)
) + BODY


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


def measure(n: int, rounds: int, auth: str = "anon") -> float:
    """Best µs per request over ``rounds`` runs of ``n`` requests, in this interpreter."""
    import asyncio

    import uvloop

    from ucgate.config import from_dict
    from ucgate.gateway.server import Gateway
    from ucgate.gateway.stream import Stream
    from ucgate.gateway.upstream import UpstreamConnection

    config = from_dict(
        {
            "gateway": {"listen": "127.0.0.1:0", "plain_http": True},
            "upstreams": {"frontend": {"url": "http://127.0.0.1:9"}},
            "auth": {"authenticator": "deny-all"},
            "log": {"level": "warning"},
        }
    )

    request = request_for(auth)

    def gateway():
        if auth == "anon":
            return Gateway(config)
        import datetime as dt

        from ucgate.gateway.oauth import OAuthGrants, TokenRecord
        from ucgate.gateway.preauth import PreAuthenticator, PreAuthSettings

        # the credentials are never asked: every connection is signed in already
        pre = PreAuthenticator(object(), PreAuthSettings(failure_floor=0))  # type: ignore[arg-type]
        oauth = OAuthGrants(object())  # type: ignore[arg-type]
        oauth.tokens.add(BEARER[7:], TokenRecord("bench", "s1", time.time() + 3600, dt.datetime.now(dt.UTC)))
        g = Gateway(config, pre, oauth=oauth)
        g._bench_pre = pre
        return g

    def sign_in(gw) -> None:
        from ucgate.gateway.connection import Identity
        from ucgate.gateway.preauth import _BasicMemo

        (conn,) = gw.connections
        conn.tls = True  # Basic is refused on plain HTTP; the transport here is in memory
        if auth == "ntlm":
            conn.identity = conn.principal = Identity("bench", "ntlm")
        elif auth == "basic":
            ident = Identity("bench", "basic")
            conn.auth_state = _BasicMemo(gw._bench_pre._memo_digest(BASIC[6:]), ident)

    async def run() -> float:
        loop = asyncio.get_running_loop()
        gw = gateway()
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
                client.data_received(request)
            else:
                client.eof_received()

        client.connection_made(Transport(loop, next_request, lambda: done.set_result(None)))
        if auth != "anon":
            sign_in(gw)
        t = time.process_time()
        client.data_received(request)
        await done
        assert gw.pools["frontend"].opened == 0  # every request went over the one pooled connection
        assert gw.fast_requests == n, f"{n - gw.fast_requests} requests took the pipeline"
        return (time.process_time() - t) / n * 1e6

    return min(uvloop.run(run()) for _ in range(rounds))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", action="append", default=[], help="a src/ tree to measure (repeatable)")
    ap.add_argument("-n", type=int, default=200_000, help="requests per run (200000)")
    ap.add_argument("--rounds", type=int, default=5, help="runs per tree, interleaved; the best counts")
    ap.add_argument(
        "--auth",
        action="append",
        choices=("anon", "ntlm", "basic", "bearer"),
        help="the request: anonymous (default), or on an NTLM / Basic / Bearer connection (repeatable)",
    )
    ap.add_argument(
        "--instructions",
        action="store_true",
        help="count instructions with valgrind's callgrind instead of timing: (Ir at 3n - Ir at n) / 2n per "
        "request, the same whatever else the machine does (n defaults to 1000 here; ~1 min per run)",
    )
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    modes = args.auth or ["anon"]
    if args.child:
        print(measure(args.n, 1, modes[0]))
        return
    trees = args.src or [os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))]
    if args.instructions:
        n = args.n if args.n != ap.get_default("n") else 1000
        for src in trees:
            for mode in modes:
                a, b = (_instructions(src, mode, k) for k in (n, 3 * n))
                print(f"{(b - a) / (2 * n):9.0f} instructions/request  {mode:<6} {src}")
        return
    best: dict[tuple[str, str], float] = {}
    for _ in range(args.rounds):
        for src in trees:  # a fresh interpreter per run and tree: no import or cache carry-over
            for mode in modes:
                out = subprocess.run(
                    [sys.executable, __file__, "--child", "-n", str(args.n), "--auth", mode],
                    check=True,
                    capture_output=True,
                    text=True,
                    env={**os.environ, "PYTHONPATH": src},
                )
                us = float(out.stdout.strip().splitlines()[-1])
                best[src, mode] = min(best.get((src, mode), us), us)
    for (src, mode), us in best.items():
        print(f"{us:7.2f} us/request  {mode:<6} {src}")


def _instructions(src: str, mode: str, n: int) -> int:
    """Instructions callgrind counts for a child serving ``n`` requests (start-up included)."""
    import re
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={tmp}/cg.out",
                sys.executable,
                __file__,
                "--child",
                "-n",
                str(n),
                "--auth",
                mode,
            ],
            check=True,
            capture_output=True,
            text=True,
            # one hash seed: str hashes (dict and set probing) no longer differ from run to run
            env={**os.environ, "PYTHONPATH": src, "PYTHONHASHSEED": "0"},
        )
    m = re.search(r"Collected : (\d+)", out.stderr)
    if m is None:
        sys.exit(f"callgrind printed no total:\n{out.stderr[-2000:]}")
    return int(m.group(1))


if __name__ == "__main__":
    main()
