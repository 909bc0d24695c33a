"""The failure budget, by example and by property (Hypothesis)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ucgate.policy.lockout import BudgetConfig, FailureBudget, Outcome, ip_key

CFG = BudgetConfig(user_failures=5, ip_failures=20, window=900.0)
RATE = CFG.user_failures / CFG.window


def test_five_failures_then_throttled_with_retry_after():
    b = FailureBudget(CFG)
    for i in range(5):
        assert b.check("alice", "203.0.113.9", i).allowed
        b.record_failure("alice", "203.0.113.9", i)
    d = b.check("alice", "203.0.113.9", 5)
    assert not d.allowed and d.reason == "user-throttled"
    assert d.retry_after == pytest.approx(180 - 5, abs=0.01)  # one failure drains in 180 s; 5 s passed
    assert b.check("alice", "203.0.113.9", 5 + d.retry_after).allowed
    assert b.check("bob", "203.0.113.9", 5).allowed  # other users are not affected


def test_ip_throttled_when_spraying_users():
    b = FailureBudget(CFG)
    for i in range(20):
        b.record_failure(f"user{i}", "198.51.100.7", 0)
    d = b.check("someone", "198.51.100.7", 1)
    assert not d.allowed and d.reason == "ip-throttled" and d.retry_after > 0
    assert b.check("someone", "198.51.100.8", 1).allowed


def test_ipv6_counts_per_64():
    assert ip_key("2001:db8:1:2:aaaa::1") == ip_key("2001:db8:1:2:bbbb::2") == "2001:db8:1:2::/64"
    assert ip_key("::ffff:192.0.2.1") == "192.0.2.1"
    assert ip_key("not-an-ip") == "not-an-ip"


def test_familiar_ip_not_locked_out_by_attacker():
    b = FailureBudget(CFG)
    b.record_success("alice", "192.0.2.10", 0)  # alice's office
    for i in range(50):  # attacker elsewhere
        if b.check("alice", "203.0.113.66", 10 + i).allowed:
            b.record_failure("alice", "203.0.113.66", 10 + i)
    assert not b.check("alice", "203.0.113.66", 100).allowed
    assert b.check("alice", "192.0.2.10", 100).allowed


def test_familiar_ip_still_limited_for_its_own_failures():
    b = FailureBudget(CFG)
    b.record_success("alice", "192.0.2.10", 0)
    for _ in range(5):
        b.record_failure("alice", "192.0.2.10", 1)
    assert b.check("alice", "192.0.2.10", 2).reason == "user-throttled"
    b.record_success("alice", "192.0.2.10", 1000)  # forgives that class
    assert b.check("alice", "192.0.2.10", 1000).allowed


def test_familiarity_expires():
    cfg = BudgetConfig(familiar_for=3600)
    b = FailureBudget(cfg)
    b.record_success("alice", "192.0.2.10", 0)
    assert b.familiar("alice", "192.0.2.10", 3600)
    assert not b.familiar("alice", "192.0.2.10", 3601)


def test_a_familiar_time_is_rewritten_only_when_familiar_refresh_old():
    """A device signing in again and again from its usual IP writes nothing: the pair's time
    moves only once it is ``familiar_refresh`` old, so familiarity ends at most that early."""
    cfg = BudgetConfig(familiar_for=3600, familiar_refresh=60)
    for settle in (False, True):
        b = FailureBudget(cfg)
        b.record_success("alice", "192.0.2.10", 0)
        for now in (30, 59.5):
            if settle:
                r = b.reserve("alice", "192.0.2.10", now)
                b.settle(r, Outcome.SUCCESS, now)  # type: ignore[arg-type]
            else:
                b.record_success("alice", "192.0.2.10", now)
        assert not b.familiar("alice", "192.0.2.10", 3601)  # still the time of the first success
        if settle:
            b.settle(b.reserve("alice", "192.0.2.10", 60), Outcome.SUCCESS, 60)  # type: ignore[arg-type]
        else:
            b.record_success("alice", "192.0.2.10", 60)
        assert b.familiar("alice", "192.0.2.10", 3660) and not b.familiar("alice", "192.0.2.10", 3661)
        b.record_success("alice", "198.51.100.1", 100)  # a new IP is remembered at once
        assert b.familiar("alice", "198.51.100.1", 101)


def test_config_validation():
    with pytest.raises(ValueError):
        BudgetConfig(familiar_refresh=-1)
    with pytest.raises(ValueError):
        BudgetConfig(user_failures=0)
    with pytest.raises(ValueError):
        BudgetConfig(window=0)


# --- properties ---------------------------------------------------------------------------
users = st.sampled_from(["alice", "bob", "carol"])
ips = st.sampled_from(["203.0.113.1", "203.0.113.2", "198.51.100.3", "2001:db8::1"])
gaps = st.floats(min_value=0, max_value=400, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(gaps, users, ips), max_size=200))
def test_guess_rate_is_bounded(events):
    """A guesser who tries whenever allowed gets at most limit + L·rate failures recorded
    in any interval of length L, per user."""
    b = FailureBudget(CFG)
    now = 0.0
    accepted: dict[str, list[float]] = {}
    for gap, user, ip in events:
        now += gap
        d = b.check(user, ip, now)
        assert d.allowed == (d.retry_after == 0)
        if d.allowed:
            b.record_failure(user, ip, now)
            accepted.setdefault(user, []).append(now)
    for times in accepted.values():
        for i in range(len(times)):
            for j in range(i, len(times)):
                n = j - i + 1
                assert n <= CFG.user_failures + (times[j] - times[i]) * RATE + 1e-6


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(gaps, ips, st.booleans()), max_size=150), st.floats(0, 1000))
def test_familiar_user_never_blocked_by_unfamiliar_failures(events, start):
    """However many failures come from other IPs (for alice and others), alice at her familiar
    IP, with no failures of her own there, is always allowed."""
    b = FailureBudget(CFG)
    home = "192.0.2.200"
    b.record_success("alice", home, start)
    now = start
    for gap, ip, for_alice in events:
        now += gap
        b.record_failure("alice" if for_alice else "mallory", ip, now)
        b.record_failure("alice", ip, now)  # even without checking first
        assert b.check("alice", home, now).allowed


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(gaps, users, ips), min_size=1, max_size=100))
def test_waiting_retry_after_or_a_window_lets_you_in(events):
    b = FailureBudget(BudgetConfig(user_failures=5, ip_failures=1000, window=900))
    now = 0.0
    for gap, user, ip in events:
        now += gap
        d = b.check(user, ip, now)
        if d.allowed:
            b.record_failure(user, ip, now)
        else:
            assert d.retry_after > 0
            assert b.check(user, ip, now + d.retry_after).allowed
    for user in ("alice", "bob", "carol"):
        assert b.check(user, "203.0.113.1", now + 900 + 1e-3).allowed


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.text(min_size=1, max_size=12), st.integers(0, 2**32 - 1), st.booleans()), max_size=300))
def test_memory_is_bounded_under_spraying(events):
    cfg = BudgetConfig(max_entries=16, max_familiar_per_user=3)
    b = FailureBudget(cfg)
    for i, (name, addr, ok) in enumerate(events):
        ip = ".".join(str((addr >> s) & 255) for s in (24, 16, 8, 0))
        (b.record_success if ok else b.record_failure)(name, ip, float(i))
        sizes = b.sizes()
        assert all(v <= 16 for v in sizes.values())
    for seen in b._familiar.d.values():
        assert len(seen) <= 3
