"""The upstream pool's lifecycle (gateway/upstream.py): the idle limit, keep-alive expiry,
``async with pool.connection()`` (returned on exit, closed on an exception or when it may not
be reused), the per-user pools inside it, and ``close``."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

import ucgate.gateway.upstream as upstream_mod
from ucgate.gateway.stream import Stream
from ucgate.gateway.upstream import UpstreamConnection, UpstreamError, UpstreamPool


class Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.closed = False

    def write(self, data) -> None:
        pass

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name, default=None):
        return default


def connection(loop) -> UpstreamConnection:
    s = Stream(loop, 1 << 17)
    s.connection_made(Transport())
    return UpstreamConnection(s)


def pool(port: int = 1, **kw) -> UpstreamPool:
    # what the pool reads of the configuration's Upstream and Timeouts
    up = SimpleNamespace(
        name="frontend", host="127.0.0.1", port=port, scheme="http", verify=True, ca_bundle=None, server_name=None
    )
    timeouts = SimpleNamespace(upstream_connect=5.0)
    return UpstreamPool(up, timeouts, limit=kw.pop("limit", 2), **kw)  # type: ignore[arg-type]


def run(coro):
    return asyncio.run(coro)


def test_idle_limit_and_lifo():
    async def main():
        loop = asyncio.get_running_loop()
        p = pool(limit=2)
        a, b, c = connection(loop), connection(loop), connection(loop)
        for x in (a, b, c):
            p.release(x)
        assert c.stream.is_closing() and not a.stream.is_closing()  # over the limit: closed
        got = p.take_idle()
        assert got is b
        assert p.take_idle() is a and p.take_idle() is None

    run(main())


def test_not_reusable_or_closed_is_not_kept():
    async def main():
        loop = asyncio.get_running_loop()
        p = pool()
        a = connection(loop)
        a.reusable = False
        p.release(a)
        assert a.stream.is_closing() and p.take_idle() is None
        b = connection(loop)
        p.release(b)
        b.stream.eof_received()  # the upstream closed it while idle
        assert p.take_idle() is None and b.stream.is_closing()

    run(main())


def test_keepalive_expiry():
    async def main():
        loop = asyncio.get_running_loop()
        p = pool(keepalive_expiry=0.2)
        a, b = connection(loop), connection(loop)
        p.release(a)
        p.release(b)
        await asyncio.sleep(0.13)  # one sweep: both marked
        assert p.take_idle() is b  # used: unmarked when it comes back
        p.release(b)
        await asyncio.sleep(0.1)  # the next sweep: a was idle since the last one
        assert a.stream.is_closing() and not b.stream.is_closing()
        await asyncio.sleep(0.1)
        assert b.stream.is_closing() and p.take_idle() is None  # idle too long: closed, not used
        assert p._sweeper is None  # nothing idle: no timer
        p.release(connection(loop))
        p.close()
        assert p._sweeper is None

    run(main())


def test_lease_returns_or_closes():
    async def main():
        loop = asyncio.get_running_loop()
        p = pool()
        a = connection(loop)
        p.release(a)
        async with p.connection() as up:
            assert up is a and up.reused
        assert p.take_idle() is a  # returned on a normal exit
        with pytest.raises(RuntimeError):
            async with p.connection(a):
                raise RuntimeError("boom")
        assert a.stream.is_closing() and p.take_idle() is None  # closed on an exception
        b = connection(loop)
        async with p.connection(b) as up:
            up.reusable = False  # the response was not keep-alive
        assert b.stream.is_closing() and p.take_idle() is None

    run(main())


def test_lease_connects_and_reports_failure():
    async def main():
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        p = pool(port)
        async with p.connection() as up:
            assert not up.reused and p.opened == 1
        assert p.take_idle() is up
        server.close()
        await server.wait_closed()
        up.close()
        p.close()
        with pytest.raises(UpstreamError) as e:
            async with p.connection():
                pass
        assert e.value.reason == "upstream-pool-closed"

    run(main())


def test_close_closes_idle_and_user_pools_and_what_comes_back():
    async def main():
        loop = asyncio.get_running_loop()
        p = pool()
        a, b, c = connection(loop), connection(loop), connection(loop)
        p.release(a)
        alice = p.for_user("alice")
        alice.release(b)
        p.close()
        assert a.stream.is_closing() and b.stream.is_closing() and not p.user_pools
        p.release(c)  # handed out before the close, given back after
        assert c.stream.is_closing()

    run(main())


def test_user_pools_lru_and_idle(monkeypatch):
    async def main():
        loop = asyncio.get_running_loop()
        now = [0.0]
        p = pool(clock=lambda: now[0])
        alice = p.for_user("alice")
        assert p.for_user("alice") is alice and alice.limit == upstream_mod.USER_POOL_IDLE_CONNECTIONS
        a = connection(loop)
        alice.release(a)
        monkeypatch.setattr(upstream_mod, "USER_POOLS_MAX", 1)
        bob = p.for_user("bob")  # room for one: alice's is closed
        assert list(p.user_pools) == ["bob"] and a.stream.is_closing()
        now[0] += upstream_mod.USER_POOL_IDLE_SECONDS
        monkeypatch.setattr(upstream_mod, "USER_POOLS_MAX", 10)
        assert p.for_user("carol") is not bob and list(p.user_pools) == ["carol"]  # bob idle: closed

    run(main())
