"""The sign-in cache (user + ASP records between sign-ins): dropped by every event, from this
process at once and from others through the outbox, so a revoked ASP is refused on the next
sign-in on every node, not after a TTL; an ASP created elsewhere works at once."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import pytest

from tests.store.backends import postgres_database, postgres_url, store_url  # noqa: F401
from ucgate.config import LockoutConfig
from ucgate.id.api import AttemptContext
from ucgate.id.events import EventFollower
from ucgate.id.factory import open_services

CTX = AttemptContext("192.0.2.10", "basic", "ucwa")


@pytest.fixture
def node(tmp_path, store_url):
    """One node's id services with its follower, as `ucgate serve` runs them."""
    (tmp_path / "keys").mkdir(mode=0o700, exist_ok=True)
    from ucgate.store import open_repository

    open_repository(store_url).close()
    ids = open_services(
        store_url=store_url,
        key_file=tmp_path / "keys" / "k",
        audit_file=None,
        lockout=LockoutConfig(user_failures=50, ip_failures=500, window=900),
    )
    follower = EventFollower(ids.bus, ids.bus.outbox, fallback_poll=1.0)
    follower.start()
    assert follower.caught_up.wait(5)
    yield ids
    follower.stop()
    ids.close()


def _other_process(store_url: str, key: str, code: str) -> str:
    prog = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from ucgate.config import LockoutConfig
        from ucgate.id.factory import open_services
        ids = open_services(store_url=sys.argv[1], key_file=Path(sys.argv[2]), audit_file=None,
                            lockout=LockoutConfig(user_failures=5, ip_failures=50, window=900))
        {code}
        ids.close()
    """)
    return subprocess.run(
        [sys.executable, "-c", prog, store_url, key], check=True, capture_output=True, text=True, timeout=60
    ).stdout


def test_cache_serves_successes_and_local_revoke_drops_it(node):
    node.users.add("alice")
    asp_id, asp = node.asps.create("alice", "phone")
    assert node.credentials.verify_password_sync("alice", asp, CTX).ok
    hits = node.asps.cache.hits
    assert node.credentials.verify_password_sync("alice", asp, CTX).ok
    assert node.asps.cache.hits == hits + 1  # the second sign-in read no ASP from the store
    node.asps.revoke(asp_id)
    assert node.credentials.verify_password_sync("alice", asp, CTX).reason == "wrong-password"


def test_revoke_in_another_process_is_refused_on_the_next_sign_in(node, store_url, tmp_path):
    node.users.add("bob")
    asp_id, asp = node.asps.create("bob", "phone")
    assert node.credentials.verify_password_sync("bob", asp, CTX).ok  # cached now
    _other_process(store_url, str(tmp_path / "keys" / "k"), f"ids.asps.revoke({asp_id!r})")
    t0 = time.monotonic()
    while node.credentials.verify_password_sync("bob", asp, CTX).ok:  # the follower's propagation
        assert time.monotonic() - t0 < 1.0, "a revoked ASP still signed in after 1 s"
        time.sleep(0.01)
    print(f"\nrevoked elsewhere: refused here {(time.monotonic() - t0) * 1000:.0f} ms after the revoke returned")


def test_an_asp_created_in_another_process_works_at_once(node, store_url, tmp_path):
    node.users.add("carol")
    _, first = node.asps.create("carol", "phone")
    assert node.credentials.verify_password_sync("carol", first, CTX).ok  # cached: one ASP
    out = _other_process(store_url, str(tmp_path / "keys" / "k"), 'print(ids.asps.create("carol", "tablet")[1])')
    new = out.split()[-1]
    assert node.credentials.verify_password_sync("carol", new, CTX).ok


def _refused_within_a_second(node, user: str, asp: str, reason: str) -> None:
    """The next sign-ins of ``user`` are refused with ``reason`` within 1 s of a change made in
    another process; on SQLite the loop's answer (verify_password_now) stops first."""
    c = node.credentials
    t0 = time.monotonic()
    while c.verify_password_now(user, asp, CTX) is not None:  # the follower drops the cached entry
        assert time.monotonic() - t0 < 1.0, "the loop still answered a success after 1 s"
        time.sleep(0.01)
    while (v := c.verify_password_sync(user, asp, CTX)).ok:  # PostgreSQL: the thread's attempt
        assert time.monotonic() - t0 < 1.0, "still signed in after 1 s"
        time.sleep(0.01)
    assert v.reason == reason
    assert c.verify_password_now(user, asp, CTX) is None


def test_a_revoke_or_a_disable_elsewhere_stops_the_loops_answer_too(node, store_url, tmp_path):
    node.users.add("dora")
    node.users.add("emil")
    d_id, d_asp = node.asps.create("dora", "phone")
    _, e_asp = node.asps.create("emil", "phone")
    sqlite = store_url.startswith("sqlite")
    for user, asp in (("dora", d_asp), ("emil", e_asp)):
        assert node.credentials.verify_password_sync(user, asp, CTX).ok  # cached now
        assert (node.credentials.verify_password_now(user, asp, CTX) is not None) is sqlite
    key = str(tmp_path / "keys" / "k")
    _other_process(store_url, key, f"ids.asps.revoke({d_id!r})")
    _refused_within_a_second(node, "dora", d_asp, "wrong-password")
    _other_process(store_url, key, 'ids.users.disable("emil")')
    _refused_within_a_second(node, "emil", e_asp, "user-disabled")
