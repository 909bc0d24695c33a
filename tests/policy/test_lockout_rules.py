"""The failure budget rule by rule (issue 14): boundaries, eviction order, which bucket a
success resets, reserve/settle, and a reference model as an oracle.

Every clock here starts at an epoch-like value (T0), as ``time.time`` and a long-running
``time.monotonic`` do: a check that adds times instead of subtracting them passes when the
clock starts at 0 and fails here.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ucgate.policy.lockout import (
    ALLOWED,
    BudgetConfig,
    BudgetDecision,
    FailureBudget,
    Outcome,
    Reservation,
    _Lru,
    drained,
    ip_bucket,
    ip_key,
    user_bucket,
    wait_for,
)

T0 = 1_780_000_000.0
HOME, OFFICE, ELSEWHERE, ATTACKER = "192.0.2.10", "192.0.2.20", "198.51.100.30", "203.0.113.66"
# 2 failures per 200 s: one drains every 100 s (rate 0.01 per second)
SMALL = BudgetConfig(user_failures=2, ip_failures=3, window=300.0, familiar_for=3600.0)


def fail_until_throttled(b: FailureBudget, user: str, ip: str, now: float, limit: int) -> None:
    for _ in range(limit):
        assert b.check(user, ip, now).allowed
        b.record_failure(user, ip, now)
    assert not b.check(user, ip, now).allowed


# --- configuration ---------------------------------------------------------------------------


def test_config_defaults_are_the_documented_ones():
    c = BudgetConfig()
    assert (c.user_failures, c.ip_failures, c.window, c.familiar_for, c.max_familiar_per_user, c.max_entries) == (
        5,
        20,
        900.0,
        30 * 86400.0,
        8,
        100_000,
    )


@pytest.mark.parametrize("name", ["user_failures", "ip_failures", "max_familiar_per_user", "max_entries"])
def test_config_counts_must_be_at_least_one(name):
    BudgetConfig(**{name: 1})  # the smallest value is accepted
    for bad in (0, -1):
        with pytest.raises(ValueError):
            BudgetConfig(**{name: bad})


@pytest.mark.parametrize(
    "window,familiar_for,ok",
    [
        (0.5, 0.0, True),
        (1.0, 0.5, True),
        (1e-3, 0.0, True),
        (900.0, 30 * 86400.0, True),
        (0.0, 0.0, False),
        (-1.0, 10.0, False),
        (10.0, -0.001, False),
        (0.0, -1.0, False),
        (-5.0, 3600.0, False),
    ],
)
def test_config_window_and_familiar_for(window, familiar_for, ok):
    if ok:
        BudgetConfig(window=window, familiar_for=familiar_for)
    else:
        with pytest.raises(ValueError):
            BudgetConfig(window=window, familiar_for=familiar_for)


def test_default_budget_when_no_config_is_given():
    b = FailureBudget()
    assert b.config == BudgetConfig()
    fail_until_throttled(b, "alice", ATTACKER, T0, 5)
    d = b.check("alice", ATTACKER, T0)
    assert d.retry_after == pytest.approx(900.0 / 5, abs=1e-3)


def test_a_given_config_is_used():
    b = FailureBudget(SMALL)
    assert b.config is SMALL
    fail_until_throttled(b, "alice", ATTACKER, T0, 2)


# --- the helpers the store shares -------------------------------------------------------------


@pytest.mark.parametrize(
    "level,at,now,rate,expected",
    [
        (5.0, T0, T0 + 10, 0.1, 4.0),  # drains 0.1 per second
        (5.0, T0, T0, 0.1, 5.0),  # no time passed
        (1.0, T0, T0 + 100, 0.1, 0.0),  # never below 0
        (5.0, T0 + 10, T0, 0.1, 5.0),  # a clock that went back drains nothing
        (2.0, 0.0, 5.0, 0.2, 1.0),
        (3.0, T0, T0 + 4, 0.5, 1.0),
    ],
)
def test_drained(level, at, now, rate, expected):
    assert drained(level, at, now, rate) == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize(
    "level,limit,rate,expected",
    [
        (0.0, 5, 0.1, 0.0),
        (3.9, 5, 0.1, 0.0),
        (4.0, 5, 0.1, 0.0),  # one more fits exactly: level + 1 == limit
        (4.5, 5, 0.5, 1.0 + 1e-6),  # half a unit over: 1 s at 0.5 per second
        (5.0, 5, 5 / 900, 180.0 + 1e-6),
        (7.0, 5, 1.0, 3.0 + 1e-6),
        (0.0, 1, 2.0, 0.0),
        (1.0, 1, 2.0, 0.5 + 1e-6),
    ],
)
def test_wait_for(level, limit, rate, expected):
    assert wait_for(level, limit, rate) == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_wait_for_is_positive_exactly_when_over():
    assert wait_for(4.0, 5, 0.01) == 0.0
    assert wait_for(4.0 + 1e-6, 5, 0.01) == pytest.approx(1e-4 + 1e-6, rel=1e-6)


def test_bucket_names():
    assert user_bucket("alice", False) == "u0:alice"
    assert user_bucket("alice", True) == "u1:alice"
    assert user_bucket("9f1c-guid", True) != user_bucket("9f1c-guid", False)
    assert ip_bucket("192.0.2.1") == "ip:192.0.2.1"
    assert ip_bucket("2001:db8:1:2:aaaa::1") == "ip:2001:db8:1:2::/64"
    assert ip_bucket("::ffff:192.0.2.1") == "ip:192.0.2.1"
    assert ip_bucket("host.example") == "ip:host.example"


@pytest.mark.parametrize(
    "ip,key",
    [
        ("192.0.2.1", "192.0.2.1"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:0db8:0001:0002:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),
        ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
        ("::ffff:198.51.100.7", "198.51.100.7"),
        ("::1", "::/64"),
        ("unknown", "unknown"),
        ("", ""),
        ("192.0.2.001", "192.0.2.001"),  # not an address to Python: kept as given
    ],
)
def test_ip_key(ip, key):
    assert ip_key(ip) == key


def test_decisions_and_outcomes():
    assert BudgetDecision(True, None, 0.0) == ALLOWED
    assert ALLOWED.allowed and ALLOWED.reason is None and ALLOWED.retry_after == 0.0
    assert [o.value for o in Outcome] == ["success", "failure", "not-a-guess"]
    assert Outcome("not-a-guess") is Outcome.NOT_A_GUESS


# --- the bounded tables -----------------------------------------------------------------------


def test_lru_evicts_the_least_recently_put():
    t: _Lru[str, int] = _Lru(3)
    for k in "abc":
        t.put(k, 1)
    assert len(t) == 3 and list(t.d) == ["a", "b", "c"]  # a table at its cap keeps everything
    t.put("a", 2)  # touching "a" makes "b" the oldest
    t.put("d", 1)
    assert list(t.d) == ["c", "a", "d"] and t.get("b") is None and t.get("a") == 2
    t.put("e", 1)
    assert list(t.d) == ["a", "d", "e"] and len(t) == 3
    t.pop("a")
    t.pop("never-there")  # not an error
    assert list(t.d) == ["d", "e"]
    assert t.get("d") == 1 and t.get("zzz") is None


def test_a_full_table_evicts_the_oldest_user_not_the_newest():
    """An attacker who fills the table makes the oldest entries go, never the one just written:
    a victim's (or the attacker's own) latest failures still count."""
    b = FailureBudget(BudgetConfig(user_failures=2, ip_failures=1000, max_entries=4))
    fail_until_throttled(b, "victim", ATTACKER, T0, 2)
    for i in range(3):  # the table is full now, nothing evicted yet
        fail_until_throttled(b, f"filler{i}", ATTACKER, T0 + 1 + i, 2)
    assert b.sizes()["users"] == 4
    assert not b.check("victim", ATTACKER, T0 + 5).allowed
    # a new key in a full table: the oldest (the victim's bucket) goes, the new one stays
    fail_until_throttled(b, "newcomer", ATTACKER, T0 + 6, 2)
    assert b.sizes()["users"] == 4
    assert [b.check(u, ATTACKER, T0 + 6).allowed for u in ("victim", "filler0", "filler1", "filler2")] == [
        True,
        False,
        False,
        False,
    ]
    # touching a key (a new failure) makes it the newest again: filler0 outlives filler1
    b.record_failure("filler0", ATTACKER, T0 + 7)
    b.record_failure("another", ATTACKER, T0 + 8)
    assert [b.check(u, ATTACKER, T0 + 8).allowed for u in ("filler0", "filler1", "filler2", "newcomer")] == [
        False,
        True,
        False,
        False,
    ]


def test_a_full_ip_table_keeps_the_latest_ip():
    b = FailureBudget(BudgetConfig(user_failures=1000, ip_failures=2, max_entries=2))
    b.record_failure("u", "198.51.100.1", T0)
    b.record_failure("u", "198.51.100.2", T0)
    b.record_failure("u", "198.51.100.3", T0 + 1)  # evicts .1
    b.record_failure("u", "198.51.100.3", T0 + 1)
    assert b.check("x", "198.51.100.3", T0 + 1).reason == "ip-throttled"
    assert b.sizes()["ips"] == 2


def test_familiar_table_is_bounded_and_keeps_the_latest_user():
    b = FailureBudget(BudgetConfig(max_entries=2))
    b.record_success("a", HOME, T0)
    b.record_success("b", HOME, T0 + 1)
    b.record_success("c", HOME, T0 + 2)
    assert b.sizes() == {"users": 0, "ips": 0, "familiar": 2}
    assert not b.familiar("a", HOME, T0 + 3)
    assert b.familiar("b", HOME, T0 + 3) and b.familiar("c", HOME, T0 + 3)


def test_sizes_names_every_table():
    b = FailureBudget(SMALL)
    assert b.sizes() == {"users": 0, "ips": 0, "familiar": 0}
    b.record_failure("alice", ATTACKER, T0)
    b.record_failure("bob", ATTACKER, T0)
    b.record_success("carol", HOME, T0)
    assert b.sizes() == {"users": 2, "ips": 1, "familiar": 1}


# --- familiarity ------------------------------------------------------------------------------


def test_familiar_on_an_epoch_clock():
    b = FailureBudget(SMALL)  # familiar_for 3600
    assert not b.familiar("alice", HOME, T0)  # nobody is familiar before a success
    b.record_success("alice", HOME, T0)
    assert b.familiar("alice", HOME, T0)
    assert b.familiar("alice", HOME, T0 + 1)
    assert b.familiar("alice", HOME, T0 + 3600)  # inclusive
    assert not b.familiar("alice", HOME, T0 + 3601)
    assert not b.familiar("alice", OFFICE, T0 + 1)  # another IP
    assert not b.familiar("bob", HOME, T0 + 1)  # another user


def test_familiar_for_zero_means_only_at_the_same_instant():
    b = FailureBudget(BudgetConfig(familiar_for=0.0))
    b.record_success("alice", HOME, T0)
    assert b.familiar("alice", HOME, T0)
    assert not b.familiar("alice", HOME, T0 + 1)


def test_every_recent_ip_of_a_user_is_familiar_up_to_the_cap():
    # every success rewrites the time here (familiar_refresh = 0); with the default, times are
    # kept to the minute, so IPs used within one minute of each other may be evicted in either order
    b = FailureBudget(BudgetConfig(max_familiar_per_user=2, familiar_refresh=0.0))
    b.record_success("alice", HOME, T0)
    b.record_success("alice", OFFICE, T0 + 1)
    assert b.familiar("alice", HOME, T0 + 2) and b.familiar("alice", OFFICE, T0 + 2)
    b.record_success("alice", HOME, T0 + 2)  # refreshed: OFFICE is now the oldest
    b.record_success("alice", ELSEWHERE, T0 + 3)
    assert b.familiar("alice", HOME, T0 + 4) and b.familiar("alice", ELSEWHERE, T0 + 4)
    assert not b.familiar("alice", OFFICE, T0 + 4)


def test_max_familiar_per_user_keeps_exactly_that_many():
    b = FailureBudget(BudgetConfig(max_familiar_per_user=3))
    ips = [f"192.0.2.{i}" for i in range(1, 6)]
    for i, ip in enumerate(ips):
        b.record_success("alice", ip, T0 + i)
    assert [b.familiar("alice", ip, T0 + 10) for ip in ips] == [False, False, True, True, True]


def test_one_familiar_ip_per_user_keeps_the_latest():
    b = FailureBudget(BudgetConfig(max_familiar_per_user=1))
    b.record_success("alice", HOME, T0)
    b.record_success("alice", OFFICE, T0 + 1)
    assert not b.familiar("alice", HOME, T0 + 2) and b.familiar("alice", OFFICE, T0 + 2)


# --- check / record ---------------------------------------------------------------------------


def test_a_fresh_budget_allows_and_says_nothing_else():
    d = FailureBudget(SMALL).check("alice", ATTACKER, T0)
    assert d == BudgetDecision(True, None, 0.0)


def test_user_throttle_reason_and_retry_after_on_an_epoch_clock():
    b = FailureBudget(SMALL)  # rate 2/300 per second: one failure drains in 150 s
    b.record_failure("alice", ATTACKER, T0)
    assert b.check("alice", ATTACKER, T0).allowed  # one fits: level 1 + 1 <= 2
    b.record_failure("alice", ATTACKER, T0)
    d = b.check("alice", ATTACKER, T0)
    assert (d.allowed, d.reason) == (False, "user-throttled")
    assert d.retry_after == pytest.approx(150.0, abs=1e-3)
    d = b.check("alice", ATTACKER, T0 + 149.5)  # under a second to go is still a refusal
    assert (d.allowed, d.reason) == (False, "user-throttled")
    assert d.retry_after == pytest.approx(0.5, abs=1e-3)
    assert b.check("alice", ATTACKER, T0 + 150.001).allowed


def test_failures_at_later_times_drain_from_the_latest_time():
    """The bucket's time moves forward with each failure: a second failure 50 s later leaves
    1.5 units at T0 + 50, not 1.5 units at T0."""
    b = FailureBudget(BudgetConfig(user_failures=2, ip_failures=1000, window=200.0))  # 0.01 / s
    b.record_failure("alice", ATTACKER, T0)
    b.record_failure("alice", ATTACKER, T0 + 50)  # level 0.5 + 1 = 1.5
    d = b.check("alice", ATTACKER, T0 + 50)
    assert not d.allowed and d.retry_after == pytest.approx(50.0, abs=1e-3)
    d = b.check("alice", ATTACKER, T0 + 90)
    assert not d.allowed and d.retry_after == pytest.approx(10.0, abs=1e-3)
    assert b.check("alice", ATTACKER, T0 + 100.001).allowed


def test_a_failure_stamped_before_the_bucket_keeps_the_bucket_time():
    b = FailureBudget(BudgetConfig(user_failures=2, ip_failures=1000, window=200.0))
    b.record_failure("alice", ATTACKER, T0 + 100)
    b.record_failure("alice", ATTACKER, T0)  # out of order: drains nothing, stays at T0 + 100
    d = b.check("alice", ATTACKER, T0 + 100)
    assert not d.allowed and d.retry_after == pytest.approx(100.0, abs=1e-3)


def test_ip_throttle_reason_and_retry_after():
    b = FailureBudget(SMALL)  # 3 per IP per 300 s: one drains in 100 s
    for i in range(3):
        b.record_failure(f"user{i}", ATTACKER, T0)
    d = b.check("someone", ATTACKER, T0 + 10)
    assert (d.allowed, d.reason) == (False, "ip-throttled")
    assert d.retry_after == pytest.approx(90.0, abs=1e-3)
    d = b.check("someone", ATTACKER, T0 + 99.5)  # under a second to go is still a refusal
    assert (d.allowed, d.reason) == (False, "ip-throttled")
    assert d.retry_after == pytest.approx(0.5, abs=1e-3)
    assert b.check("someone", ATTACKER, T0 + 100.001).allowed
    assert b.check("someone", ELSEWHERE, T0 + 10).allowed


def test_user_throttle_is_named_before_ip_throttle():
    b = FailureBudget(SMALL)
    for _ in range(3):
        b.record_failure("alice", ATTACKER, T0)
    assert b.check("alice", ATTACKER, T0).reason == "user-throttled"
    assert b.check("bob", ATTACKER, T0).reason == "ip-throttled"


def test_a_familiar_pair_is_exempt_from_the_ip_bucket():
    b = FailureBudget(SMALL)
    b.record_success("alice", HOME, T0)
    for i in range(3):  # a sprayer behind alice's NAT
        b.record_failure(f"user{i}", HOME, T0 + 1)
    assert b.check("mallory", HOME, T0 + 2).reason == "ip-throttled"
    assert b.check("alice", HOME, T0 + 2) == ALLOWED


def test_familiar_failures_do_not_fill_the_ip_bucket():
    b = FailureBudget(SMALL)
    b.record_success("alice", HOME, T0)
    for _ in range(10):
        b.record_failure("alice", HOME, T0 + 1)  # alice mistyping at home
    assert b.check("alice", HOME, T0 + 1).reason == "user-throttled"  # her familiar bucket
    assert b.check("bob", HOME, T0 + 1).allowed  # the IP's bucket is untouched
    assert b.check("alice", ATTACKER, T0 + 1).allowed  # and her unfamiliar one


def test_unfamiliar_failures_do_not_fill_the_familiar_bucket():
    b = FailureBudget(SMALL)
    b.record_success("alice", HOME, T0)
    for i in range(10):
        b.record_failure("alice", f"203.0.113.{i}", T0 + 1)
    assert b.check("alice", ATTACKER, T0 + 1).reason == "user-throttled"
    assert b.check("alice", HOME, T0 + 1).allowed


def test_failures_at_a_home_ip_past_familiar_for_count_as_unfamiliar():
    b = FailureBudget(SMALL)
    b.record_success("alice", HOME, T0)
    later = T0 + 3601
    b.record_failure("alice", HOME, later)
    b.record_failure("alice", HOME, later)
    assert b.check("alice", ATTACKER, later).reason == "user-throttled"  # the unfamiliar bucket
    assert b.check("bob", HOME, later).allowed  # 2 of the IP's 3


# --- success resets the bucket the attempt was counted in ------------------------------------


def test_success_at_a_familiar_ip_does_not_reset_the_unfamiliar_bucket():
    """Otherwise an attacker gets fresh guesses each time the real user signs in."""
    b = FailureBudget(SMALL)
    b.record_success("alice", HOME, T0)
    fail_until_throttled(b, "alice", ATTACKER, T0 + 1, 2)
    b.record_success("alice", HOME, T0 + 2)
    assert b.check("alice", ATTACKER, T0 + 2).reason == "user-throttled"
    assert b.check("alice", HOME, T0 + 2).allowed


def test_success_at_a_familiar_ip_resets_the_familiar_bucket():
    b = FailureBudget(SMALL)
    b.record_success("alice", HOME, T0)
    fail_until_throttled(b, "alice", HOME, T0 + 1, 2)
    b.record_success("alice", HOME, T0 + 2)
    assert b.check("alice", HOME, T0 + 2) == ALLOWED


def test_success_at_a_new_ip_resets_the_unfamiliar_bucket_and_makes_it_familiar():
    b = FailureBudget(SMALL)
    b.record_success("alice", HOME, T0)
    fail_until_throttled(b, "alice", HOME, T0 + 1, 2)  # the familiar bucket full
    b.record_failure("alice", OFFICE, T0 + 1)
    b.record_failure("alice", OFFICE, T0 + 1)
    b.record_success("alice", OFFICE, T0 + 2)  # counted unfamiliar: resets that one
    assert b.check("alice", ELSEWHERE, T0 + 2).allowed
    assert b.familiar("alice", OFFICE, T0 + 2)
    assert b.check("alice", OFFICE, T0 + 2).reason == "user-throttled"  # now the familiar one
    assert b.check("alice", HOME, T0 + 2).reason == "user-throttled"


def test_success_without_failures_is_harmless():
    b = FailureBudget(SMALL)
    b.record_success("alice", HOME, T0)
    b.record_success("alice", HOME, T0 + 1)
    assert b.sizes() == {"users": 0, "ips": 0, "familiar": 1}


def test_success_does_not_reset_the_ip_bucket_or_other_users():
    b = FailureBudget(SMALL)
    for i in range(3):
        b.record_failure(f"user{i}", ATTACKER, T0)
    b.record_failure("bob", ATTACKER, T0)
    b.record_failure("bob", ATTACKER, T0)
    b.record_success("alice", ATTACKER, T0 + 1)
    assert b.check("mallory", ATTACKER, T0 + 1).reason == "ip-throttled"
    assert b.check("bob", ELSEWHERE, T0 + 1).reason == "user-throttled"


# --- reserve / settle / charge ----------------------------------------------------------------


def test_reserve_returns_what_it_charged():
    b = FailureBudget(SMALL)
    assert b.reserve("alice", ATTACKER, T0) == Reservation("alice", ATTACKER, False, True)
    b.record_success("alice", HOME, T0)
    assert b.reserve("alice", HOME, T0 + 1) == Reservation("alice", HOME, True, False)


def test_reserve_charges_and_refuses_with_the_check_decision():
    b = FailureBudget(SMALL)
    assert isinstance(b.reserve("alice", ATTACKER, T0), Reservation)
    assert isinstance(b.reserve("alice", ATTACKER, T0), Reservation)
    d = b.reserve("alice", ATTACKER, T0)
    assert d == b.check("alice", ATTACKER, T0)
    assert isinstance(d, BudgetDecision) and (d.allowed, d.reason) == (False, "user-throttled")
    assert d.retry_after == pytest.approx(150.0, abs=1e-3)
    # a refusal charges nothing: the level is still 2 after many refusals
    for _ in range(5):
        b.reserve("alice", ATTACKER, T0)
    assert b.check("alice", ATTACKER, T0).retry_after == pytest.approx(150.0, abs=1e-3)


def test_reserve_charges_the_ip_unless_familiar():
    b = FailureBudget(SMALL)
    b.record_success("alice", HOME, T0)
    for _ in range(2):
        b.reserve("alice", HOME, T0 + 1)  # familiar: not the IP
    for i in range(3):
        assert isinstance(b.reserve(f"u{i}", HOME, T0 + 1), Reservation)
    d = b.reserve("u9", HOME, T0 + 1)
    assert isinstance(d, BudgetDecision) and d.reason == "ip-throttled"


def test_settle_failure_keeps_both_units():
    b = FailureBudget(SMALL)
    for user in ("alice", "alice", "bob"):
        b.settle(b.reserve(user, ATTACKER, T0), Outcome.FAILURE, T0)
    assert b.check("alice", ELSEWHERE, T0).reason == "user-throttled"
    assert b.check("carol", ATTACKER, T0).reason == "ip-throttled"


def test_settle_not_a_guess_gives_both_units_back():
    b = FailureBudget(SMALL)
    for _ in range(10):  # the directory is down: nothing is learnt, nothing is charged
        r = b.reserve("alice", ATTACKER, T0)
        assert isinstance(r, Reservation)
        b.settle(r, Outcome.NOT_A_GUESS, T0)
    assert b.check("alice", ATTACKER, T0) == ALLOWED
    assert not b.familiar("alice", ATTACKER, T0)
    # and exactly one unit each: the budget is whole again
    fail_until_throttled(b, "alice", ATTACKER, T0, 2)
    b2 = FailureBudget(SMALL)
    b2.settle(b2.reserve("x", ATTACKER, T0), Outcome.NOT_A_GUESS, T0)
    for i in range(3):
        assert isinstance(b2.reserve(f"u{i}", ATTACKER, T0), Reservation)
    assert b2.check("y", ATTACKER, T0).reason == "ip-throttled"


def test_settle_not_a_guess_takes_one_unit_only():
    b = FailureBudget(SMALL)
    r1 = b.reserve("alice", ATTACKER, T0)
    b.reserve("alice", ATTACKER, T0)
    b.settle(r1, Outcome.NOT_A_GUESS, T0)
    d = b.check("alice", ATTACKER, T0)
    assert d.allowed  # level 1
    b.record_failure("alice", ATTACKER, T0)
    assert b.check("alice", ATTACKER, T0).retry_after == pytest.approx(150.0, abs=1e-3)


def test_refund_never_goes_below_zero_and_keeps_the_bucket_time():
    b = FailureBudget(BudgetConfig(user_failures=2, ip_failures=1000, window=200.0))  # 0.01 / s
    r = b.reserve("alice", ATTACKER, T0)
    b.settle(r, Outcome.NOT_A_GUESS, T0 + 1000)  # drained long ago: the refund leaves 0, not -1
    for _ in range(2):
        assert isinstance(b.reserve("alice", ATTACKER, T0 + 1000), Reservation)
    assert not b.check("alice", ATTACKER, T0 + 1000).allowed
    # a refund stamps the bucket with the later time: level 1.5 at T0+1050 -> 0.5 at T0+1150
    b = FailureBudget(BudgetConfig(user_failures=2, ip_failures=1000, window=200.0))
    b.record_failure("alice", ATTACKER, T0)
    b.record_failure("alice", ATTACKER, T0)
    r = b.reserve("alice", ATTACKER, T0 + 100)  # level 1 + 1 = 2 at T0 + 100
    assert isinstance(r, Reservation)
    b.settle(r, Outcome.NOT_A_GUESS, T0 + 150)  # 1.5 - 1 = 0.5 at T0 + 150
    b.record_failure("alice", ATTACKER, T0 + 150)
    b.record_failure("alice", ATTACKER, T0 + 150)  # 2.5 at T0 + 150
    d = b.check("alice", ATTACKER, T0 + 150)
    assert d.retry_after == pytest.approx(150.0, abs=1e-3)


def test_settle_of_a_refund_on_a_pruned_bucket_is_harmless():
    b = FailureBudget(BudgetConfig(max_entries=1, ip_failures=1000))
    r = b.reserve("alice", ATTACKER, T0)
    b.record_failure("bob", ELSEWHERE, T0)  # evicts alice's bucket and the attacker IP's
    b.settle(r, Outcome.NOT_A_GUESS, T0)
    assert b.check("alice", ATTACKER, T0) == ALLOWED
    assert b.sizes()["users"] == 1


def test_settle_success_resets_gives_the_ip_unit_back_and_remembers():
    b = FailureBudget(SMALL)
    b.record_failure("alice", OFFICE, T0)
    r = b.reserve("alice", OFFICE, T0)
    b.settle(r, Outcome.SUCCESS, T0 + 1)
    assert b.familiar("alice", OFFICE, T0 + 1)
    assert b.check("alice", ELSEWHERE, T0 + 1) == ALLOWED  # the unfamiliar bucket was reset
    # the IP keeps the earlier failure, not the reserved unit: 1 of 3 used
    for i in range(2):
        assert isinstance(b.reserve(f"u{i}", OFFICE, T0 + 1), Reservation)
    assert b.check("u9", OFFICE, T0 + 1).reason == "ip-throttled"


def test_settle_success_on_a_familiar_reservation_resets_only_that_bucket():
    b = FailureBudget(SMALL)
    b.record_success("alice", HOME, T0)
    fail_until_throttled(b, "alice", ATTACKER, T0 + 1, 2)  # the attacker's bucket
    b.record_failure("alice", HOME, T0 + 1)
    r = b.reserve("alice", HOME, T0 + 1)
    assert r == Reservation("alice", HOME, True, False)
    b.settle(r, Outcome.SUCCESS, T0 + 2)
    assert b.check("alice", HOME, T0 + 2) == ALLOWED
    assert b.check("alice", ATTACKER, T0 + 2).reason == "user-throttled"


def test_settle_of_a_familiar_reservation_never_refunds_the_ip():
    b = FailureBudget(SMALL)
    b.record_success("alice", HOME, T0)
    for i in range(3):
        b.record_failure(f"user{i}", HOME, T0)
    for outcome in (Outcome.NOT_A_GUESS, Outcome.SUCCESS, Outcome.FAILURE):
        b.settle(b.reserve("alice", HOME, T0), outcome, T0)
        assert b.check("mallory", HOME, T0).reason == "ip-throttled"


def test_charge_is_unconditional():
    b = FailureBudget(SMALL)
    fail_until_throttled(b, "alice", ATTACKER, T0, 2)
    b.charge("alice", ATTACKER, T0)  # past the limit all the same
    assert b.check("alice", ATTACKER, T0).retry_after == pytest.approx(300.0, abs=1e-3)
    assert b.check("bob", ATTACKER, T0).reason == "ip-throttled"  # 3 of the IP's 3
    b.record_success("alice", HOME, T0)
    b.charge("alice", HOME, T0)
    b.charge("alice", HOME, T0)
    assert b.check("alice", HOME, T0).reason == "user-throttled"
    assert b.check("zed", ELSEWHERE, T0).allowed


# --- an oracle: a reference model written from the module's docstring -------------------------


class Model:
    """The documented model, naively: every failure and success kept as an event list."""

    def __init__(self, c: BudgetConfig) -> None:
        self.c = c
        self.buckets: dict[object, tuple[float, float]] = {}
        self.seen: dict[str, dict[str, float]] = {}

    def level(self, key, now, limit):
        lv, at = self.buckets.get(key, (0.0, now))
        return max(0.0, lv - max(0.0, now - at) * limit / self.c.window), at

    def fam(self, user, ip, now):
        at = self.seen.get(user, {}).get(ip)
        return at is not None and now - at <= self.c.familiar_for

    def allowed(self, user, ip, now):
        f = self.fam(user, ip, now)
        if self.level(("u", user, f), now, self.c.user_failures)[0] + 1 > self.c.user_failures + 1e-9:
            return "user-throttled"
        if not f and self.level(("ip", ip_key(ip)), now, self.c.ip_failures)[0] + 1 > self.c.ip_failures + 1e-9:
            return "ip-throttled"
        return None

    def add(self, key, now, limit, delta):
        lv, at = self.level(key, now, limit)
        if key in self.buckets or delta > 0:
            self.buckets[key] = (max(0.0, lv + delta), max(now, at))

    def fail(self, user, ip, now):
        f = self.fam(user, ip, now)
        self.add(("u", user, f), now, self.c.user_failures, 1.0)
        if not f:
            self.add(("ip", ip_key(ip)), now, self.c.ip_failures, 1.0)

    def success(self, user, ip, now):
        self.buckets.pop(("u", user, self.fam(user, ip, now)), None)
        seen = self.seen.setdefault(user, {})
        seen[ip] = now
        while len(seen) > self.c.max_familiar_per_user:
            del seen[min(seen, key=seen.__getitem__)]


_users = st.sampled_from(["alice", "bob"])
_ips = st.sampled_from([HOME, ATTACKER, "2001:db8::1", "2001:db8::2"])
_steps = st.lists(
    st.tuples(
        st.floats(0, 200, allow_nan=False),
        _users,
        _ips,
        st.sampled_from(["check", "fail", "success", "reserve-fail", "reserve-ok", "reserve-na"]),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(_steps, st.sampled_from([0.0, 1000.0, T0]))
def test_budget_agrees_with_the_reference_model(steps, start):
    cfg = BudgetConfig(user_failures=3, ip_failures=4, window=300.0, familiar_for=500.0, max_familiar_per_user=2)
    b, m = FailureBudget(cfg), Model(cfg)
    now = start
    for gap, user, ip, op in steps:
        now += gap
        d = b.check(user, ip, now)
        expected = m.allowed(user, ip, now)
        assert d.reason == expected and d.allowed == (expected is None) and (d.retry_after > 0) == (not d.allowed)
        assert b.familiar(user, ip, now) == m.fam(user, ip, now)
        if op == "fail":
            b.record_failure(user, ip, now)
            m.fail(user, ip, now)
        elif op == "success":
            b.record_success(user, ip, now)
            m.success(user, ip, now)
        elif op.startswith("reserve"):
            r = b.reserve(user, ip, now)
            if expected is not None:
                assert isinstance(r, BudgetDecision) and r.reason == expected
                continue
            f = m.fam(user, ip, now)
            assert r == Reservation(user, ip, f, not f)
            if op == "reserve-ok":
                b.settle(r, Outcome.SUCCESS, now)
                m.success(user, ip, now)
            elif op == "reserve-fail":
                b.settle(r, Outcome.FAILURE, now)
                m.fail(user, ip, now)
            else:
                b.settle(r, Outcome.NOT_A_GUESS, now)
