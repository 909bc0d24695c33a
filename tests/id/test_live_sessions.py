"""The gateways' live-session reports live in the store: every id service of the pool (and so
every account monitor) sees every gateway's report, and stale reports expire."""

from __future__ import annotations

import datetime as dt

from tests.store.backends import postgres_database, postgres_url, repo, store_url  # noqa: F401
from ucgate.id.http_api import LiveSessions
from ucgate.store import open_repository

T = dt.datetime(2026, 12, 2, 7, 0, tzinfo=dt.UTC)


def test_reports_to_one_id_service_are_seen_by_another(repo, store_url):
    now = [1_780_000_000.0]
    clock = lambda: now[0]  # noqa: E731
    other = open_repository(store_url)
    try:
        a, b = LiveSessions(repo.engine, ttl=120, clock=clock), LiveSessions(other.engine, ttl=120, clock=clock)
        a.report("gw-1", {"alice": T, "bob": T})
        b.report("gw-2", {"alice": T - dt.timedelta(hours=1)})
        assert b.live_users() == a.live_users() == {"alice": T - dt.timedelta(hours=1), "bob": T}
        a.report("gw-1", {"bob": T})  # a new report replaces that gateway's old one
        assert set(b.live_users()) == {"alice", "bob"}
        now[0] += 121  # gw-2 stopped reporting: its users are no longer live
        a.report("gw-1", {"bob": T})
        assert b.live_users() == {"bob": T}
    finally:
        other.close()
