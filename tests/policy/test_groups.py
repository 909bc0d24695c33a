from hypothesis import given
from hypothesis import strategies as st

from ucgate.policy.groups import GroupPolicy, effective_policy

DEFAULTS = {"two_factor": "off", "trust_lifetime_hours": 24, "max_devices": 10}
POLICIES = [
    GroupPolicy("executives", "CN=execs,DC=x", {"two_factor": "device-approval", "max_devices": 3}),
    GroupPolicy("mobile", "ucgate-mobile", {"two_factor": "otp-appended"}),
]


def test_first_matching_group_wins_and_merges_defaults():
    p = effective_policy(POLICIES, lambda g: g in ("CN=execs,DC=x", "ucgate-mobile"), DEFAULTS)
    assert p.name == "executives"
    assert dict(p.settings) == {"two_factor": "device-approval", "trust_lifetime_hours": 24, "max_devices": 3}


def test_second_and_default():
    assert effective_policy(POLICIES, lambda g: g == "ucgate-mobile", DEFAULTS).get("two_factor") == "otp-appended"
    p = effective_policy(POLICIES, lambda g: False, DEFAULTS)
    assert p.name == "default" and dict(p.settings) == DEFAULTS


@given(st.lists(st.booleans(), min_size=2, max_size=2))
def test_order_is_priority(memberships):
    groups = {"CN=execs,DC=x": memberships[0], "ucgate-mobile": memberships[1]}
    p = effective_policy(POLICIES, groups.__getitem__, DEFAULTS)
    expected = "executives" if memberships[0] else "mobile" if memberships[1] else "default"
    assert p.name == expected
    # the result never mutates the defaults
    assert DEFAULTS == {"two_factor": "off", "trust_lifetime_hours": 24, "max_devices": 10}
