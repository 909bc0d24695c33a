"""Readiness of the store (StoreProbe: SELECT 1 off the loop, bounded, cached) and the id
service's /healthz and /readyz (no secret needed; 503 with the reason while the store is down)."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest
from sqlalchemy import create_engine

from ucgate.config import LockoutConfig
from ucgate.id.factory import open_services
from ucgate.id.health import StoreProbe
from ucgate.id.http_api import create_id_api

SECRET = b"s3cret-" + b"x" * 40


@pytest.fixture
def ids(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "keys").mkdir(mode=0o700)
    s = open_services(
        store_url=f"sqlite:///{tmp_path / 'data' / 'ucgate.db'}",
        key_file=tmp_path / "keys" / "ucgate.key",
        audit_file=None,
        lockout=LockoutConfig(user_failures=5, ip_failures=50, window=900),
    )
    yield s
    s.close()


def test_store_probe_on_sqlite(ids):
    probe = StoreProbe(ids.components.repo.engine)
    assert asyncio.run(probe()) == (True, "ok")


def test_store_probe_unreachable_postgresql_names_the_failure_not_the_url():
    engine = create_engine("postgresql+psycopg://ucgate:hunter2@127.0.0.1:1/nowhere")
    ok, reason = asyncio.run(StoreProbe(engine, timeout=5)())
    assert not ok and reason == "store unreachable (OperationalError)"


class _Engine:
    """A stand-in engine whose connect() blocks until released (a hung database)."""

    def __init__(self, hang: bool) -> None:
        self.calls = 0
        self.hang = hang
        self.release = threading.Event()

    def connect(self):
        self.calls += 1
        if self.hang:
            self.release.wait(10)
        raise OSError("down")


def test_store_probe_is_cached_for_its_ttl():
    now = [0.0]
    engine = _Engine(hang=False)
    probe = StoreProbe(engine, ttl=1.0, clock=lambda: now[0])

    async def go():
        a = await probe()
        b = await probe()
        now[0] = 1.5
        c = await probe()
        return a, b, c

    a, b, c = asyncio.run(go())
    assert a == b == c == (False, "store unreachable (OSError)")
    assert engine.calls == 2  # once, then once again after the ttl


def test_store_probe_bounded_and_never_piles_up_threads():
    engine = _Engine(hang=True)
    probe = StoreProbe(engine, timeout=0.2, ttl=0.0)

    async def go():
        started = time.monotonic()
        answers = [await probe() for _ in range(3)]
        took = time.monotonic() - started
        engine.release.set()  # before asyncio.run waits for its worker threads
        return answers, took

    try:
        answers, took = asyncio.run(go())
    finally:
        engine.release.set()
    assert all(a == (False, "store: no answer within 0.2s") for a in answers)
    assert took < 2 and engine.calls == 1  # one query in flight, however many checks


def test_id_api_healthz_and_readyz(ids):
    answers = iter([(True, "ok"), (False, "store unreachable (OperationalError)")])

    async def readiness():
        return next(answers)

    app = create_id_api(ids.credentials, secret=SECRET, bus=ids.bus, readiness=readiness)

    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://id") as c:
            return [await c.get(p) for p in ("/healthz", "/readyz", "/readyz")]

    alive, ready, down = asyncio.run(go())  # no Authorization header: the checks need no secret
    assert alive.status_code == 200 and alive.json() == {"status": "ok"}
    assert ready.status_code == 200 and ready.json() == {"status": "ready"}
    assert down.status_code == 503
    assert down.json() == {"status": "not-ready", "reason": "store unreachable (OperationalError)"}
