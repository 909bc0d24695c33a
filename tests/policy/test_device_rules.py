"""Device access rules and partnership decisions: every branch, then properties."""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ucgate.policy.devices import (
    DeviceDecision,
    DeviceRule,
    GroupPolicy,
    Partnership,
    PartnershipState,
    decide,
    evaluate_rules,
)
from ucgate.protocols.devices import DeviceFacts

A, Q, B = PartnershipState.ALLOWED, PartnershipState.QUARANTINED, PartnershipState.BLOCKED
NOW = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC)
H = dt.timedelta(hours=1)
IPHONE = DeviceFacts(
    "ApplF17X", "iPhone", "iPhone15,2", "iOS 17.1", "Apple-iPhone15C2/2102.1", "eas", "eas-query", None
)
ANDROID = DeviceFacts(
    "a917c6f4-976c-4cf3-847d-cdfffa28ccdf",
    "AndroidLync",
    "SM-G930U",
    "Android 8.0.0",
    "AndroidLync/6.25.0.27 (SM-G930U Android 8.0.0)",
    "android",
    "ucwa-endpoint",
    None,
)
NO_ID = DeviceFacts(
    None,
    "OC",
    None,
    None,
    "UCCAPI/16.0.4849.1000 OC/16.0.4849.1000 (Skype for Business)",
    "pc-external",
    "user-agent",
    "absent",
)


def partnership(
    device_id: str = "ApplF17X",
    state: PartnershipState = A,
    *,
    trusted_until: dt.datetime | None = NOW + H,
    wiped: bool = False,
) -> Partnership:
    return Partnership("alice", device_id, state, trusted_until, NOW - 100 * H, NOW - H, wiped=wiped)


def run(
    facts: DeviceFacts = IPHONE,
    existing: Partnership | None = None,
    *,
    others=(),
    rules=(),
    policy: GroupPolicy = GroupPolicy(),
    groups=frozenset(),
    second_factor_ok=False,
    service="eas",
) -> DeviceDecision:
    devices = list(others) + ([existing] if existing else [])
    return decide(
        facts=facts,
        existing=existing,
        user_devices=devices,
        rules=rules,
        policy=policy,
        user_groups=frozenset(groups),
        now=NOW,
        second_factor_ok=second_factor_ok,
        service=service,
        second_factor_possible=True,
    )


def outcome(d: DeviceDecision) -> tuple:
    return d.outcome, d.reason, d.new_state, d.wipe, d.trusted_until


# --- rules --------------------------------------------------------------------------------


def test_first_matching_rule_wins_like_exchange_device_access_rules():
    rules = [
        DeviceRule(B, device_type="iPhone", os="iOS 15*", name="old-ios"),
        DeviceRule(A, device_type="iphone", name="iphones"),  # globs are case-insensitive
        DeviceRule(B, client_kind="eas", name="all-eas"),
    ]
    assert evaluate_rules(rules, IPHONE, frozenset(), default=Q) == (A, "rule:iphones")
    assert evaluate_rules(rules, replace(IPHONE, os="iOS 15.7"), frozenset(), default=Q) == (B, "rule:old-ios")
    assert evaluate_rules(rules, replace(IPHONE, device_type="Outlook"), frozenset(), default=Q) == (B, "rule:all-eas")
    assert evaluate_rules(rules, ANDROID, frozenset(), default=Q) == (Q, "default")
    assert evaluate_rules(rules, ANDROID, frozenset(), default=A) == (A, "default")
    assert evaluate_rules([DeviceRule(A)], ANDROID, frozenset(), default=Q) == (A, "rule:#0")  # catch-all


def test_rule_criteria():
    r = DeviceRule(A, model="SM-*", user_agent="*AndroidLync/6.*", client_kind="android")
    assert r.matches(ANDROID, frozenset())
    assert not r.matches(replace(ANDROID, model=None), frozenset())  # a given criterion needs the fact
    assert not r.matches(replace(ANDROID, client_kind="ios"), frozenset())
    g = DeviceRule(A, groups=frozenset({"Mobile-Users"}))
    assert g.matches(ANDROID, frozenset({"mobile-users", "staff"}))
    assert not g.matches(ANDROID, frozenset({"staff"}))
    assert not g.matches(ANDROID, frozenset())


def test_rule_and_policy_validation():
    with pytest.raises(ValueError, match="client_kind"):
        DeviceRule(A, client_kind="toaster")
    with pytest.raises(ValueError, match="glob"):
        DeviceRule(A, model="x" * 300)
    assert DeviceRule("blocked").action is B  # from configuration strings
    with pytest.raises(ValueError):
        DeviceRule("maybe")
    with pytest.raises(ValueError, match="certprov"):
        GroupPolicy(certprov="sometimes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="trust_lifetime_hours"):
        GroupPolicy(trust_lifetime_hours=0)
    with pytest.raises(ValueError, match="max_devices"):
        GroupPolicy(max_devices=-1)
    assert GroupPolicy(default_action="allowed").default_action is A  # type: ignore[arg-type]


# --- decisions: every branch --------------------------------------------------------------

ALLOW_IPHONE = (DeviceRule(A, device_type="iPhone", name="iphones"),)
LIFETIME = dt.timedelta(hours=24)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        # A new device: state from the rules, else the group's default (quarantine).
        ({}, ("quarantine", "new-device-quarantined", Q, False, None)),
        ({"policy": GroupPolicy(default_action=B)}, ("deny", "new-device-blocked", None, False, None)),
        ({"rules": ALLOW_IPHONE}, ("challenge", "new-device-second-factor", A, False, None)),
        ({"rules": ALLOW_IPHONE, "second_factor_ok": True}, ("allow", "new-device-allowed", A, False, NOW + LIFETIME)),
        (
            {"rules": ALLOW_IPHONE, "policy": GroupPolicy(require_second_factor=False)},
            ("allow", "new-device-allowed", A, False, NOW + LIFETIME),
        ),
        ({"rules": (DeviceRule(B, os="iOS 17*"), *ALLOW_IPHONE)}, ("deny", "new-device-blocked", None, False, None)),
        # Over the limit: denied and nothing stored; blocked partnerships do not count.
        (
            {
                "rules": ALLOW_IPHONE,
                "second_factor_ok": True,
                "policy": GroupPolicy(max_devices=2),
                "others": [partnership("d1"), partnership("d2", Q)],
            },
            ("deny", "device-limit", None, False, None),
        ),
        (
            {"policy": GroupPolicy(max_devices=2), "others": [partnership("d1"), partnership("d2", B)]},
            ("quarantine", "new-device-quarantined", Q, False, None),
        ),
        ({"policy": GroupPolicy(max_devices=0)}, ("deny", "device-limit", None, False, None)),
        # Existing partnerships.
        (
            {"existing": partnership(state=B), "rules": (DeviceRule(A),), "second_factor_ok": True},
            ("deny", "device-blocked", None, False, None),
        ),
        ({"existing": partnership(wiped=True)}, ("deny", "device-wipe-pending", None, True, None)),
        ({"existing": partnership(state=B, wiped=True)}, ("deny", "device-wipe-pending", None, True, None)),
        (
            {"existing": partnership(state=Q), "second_factor_ok": True},
            ("quarantine", "device-quarantined", None, False, None),
        ),
        ({"existing": partnership()}, ("allow", "device-trusted", None, False, NOW + H)),
        ({"existing": partnership(trusted_until=NOW - H)}, ("challenge", "trust-expired", None, False, None)),
        ({"existing": partnership(trusted_until=NOW)}, ("challenge", "trust-expired", None, False, None)),
        ({"existing": partnership(trusted_until=None)}, ("challenge", "trust-expired", None, False, None)),
        (
            {"existing": partnership(trusted_until=NOW - H), "second_factor_ok": True},
            ("allow", "trust-renewed", A, False, NOW + LIFETIME),
        ),
        (
            {
                "existing": partnership(trusted_until=NOW - H),
                "policy": GroupPolicy(trust_lifetime_hours=8),
                "second_factor_ok": True,
            },
            ("allow", "trust-renewed", A, False, NOW + 8 * H),
        ),
        (
            {"existing": partnership(trusted_until=NOW - H), "policy": GroupPolicy(require_second_factor=False)},
            ("allow", "trust-renewed", A, False, NOW + LIFETIME),
        ),
        # The request could not name its device: the group's problem_action, nothing stored.
        ({"facts": NO_ID}, ("quarantine", "device-id-absent", None, False, None)),
        ({"facts": replace(NO_ID, problem="too-long")}, ("quarantine", "device-id-too-long", None, False, None)),
        (
            {"facts": replace(NO_ID, problem="not-printable"), "policy": GroupPolicy(problem_action=B)},
            ("deny", "device-id-not-printable", None, False, None),
        ),
        (
            {"facts": NO_ID, "policy": GroupPolicy(problem_action=A), "rules": (DeviceRule(B),)},
            ("allow", "device-id-absent", None, False, None),
        ),
    ],
)
def test_decide(kwargs, expected):
    assert outcome(run(**kwargs)) == expected


def test_rule_name_is_reported():
    assert run(rules=ALLOW_IPHONE).rule == "iphones"
    assert run().rule == ""


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"existing": partnership()}, ("allow", "device-trusted", None, False, NOW + H)),
        (
            {"existing": partnership(), "policy": GroupPolicy(certprov="deny")},
            ("deny", "certprov-denied-by-policy", None, False, NOW + H),
        ),
        ({"existing": partnership(trusted_until=NOW - H)}, ("deny", "certprov-not-trusted", None, False, None)),
        # Renewing the trust with the second factor in this very request is enough.
        (
            {"existing": partnership(trusted_until=NOW - H), "second_factor_ok": True},
            ("allow", "trust-renewed", A, False, NOW + LIFETIME),
        ),
        ({"existing": partnership(state=Q)}, ("deny", "certprov-not-trusted", None, False, None)),
        ({"existing": partnership(state=B)}, ("deny", "device-blocked", None, False, None)),
        ({"existing": partnership(wiped=True)}, ("deny", "device-wipe-pending", None, True, None)),
        # A new device is recorded (quarantined, waiting for approval) but gets no certificate.
        ({}, ("deny", "certprov-not-trusted", Q, False, None)),
        ({"rules": ALLOW_IPHONE}, ("deny", "certprov-not-trusted", A, False, None)),
        (
            {"facts": NO_ID, "policy": GroupPolicy(problem_action=A)},
            ("deny", "certprov-not-trusted", None, False, None),
        ),
    ],
)
def test_certprov(kwargs, expected):
    assert outcome(run(service="certprov", **kwargs)) == expected


# --- properties ---------------------------------------------------------------------------

_EXAMPLES = int(os.environ.get("UCGATE_FUZZ_EXAMPLES", "100"))
_ids = st.sampled_from(["d1", "d2", "d3", "d4", "ApplF17X"])
_states = st.sampled_from([A, Q, B])
_glob = st.one_of(
    st.none(), st.sampled_from(["*", "i*", "iPhone", "Android*", "*Lync*", "SM-*", "iOS 1?.*", "Outlook", "[ai]*"])
)
_facts = st.builds(
    DeviceFacts,
    device_id=_ids,
    device_type=st.sampled_from([None, "iPhone", "Android", "AndroidLync", "Outlook", "OC"]),
    model=st.sampled_from([None, "SM-G930U", "iPhone15,2"]),
    os=st.sampled_from([None, "iOS 17.1", "Android 8.0.0"]),
    user_agent=st.sampled_from([None, "Outlook-iOS/2.0", "AndroidLync/6.25"]),
    client_kind=st.sampled_from(["eas", "ios", "android", "pc-external", "unknown"]),
    source=st.just("eas-query"),
    problem=st.just(None),
)
_facts_any = st.one_of(_facts, _facts.map(lambda f: replace(f, device_id=None, problem="absent")))
_rules = st.lists(
    st.builds(
        DeviceRule,
        action=_states,
        device_type=_glob,
        model=_glob,
        os=_glob,
        user_agent=_glob,
        client_kind=st.sampled_from([None, "eas", "ios", "android", "*"]),
        groups=st.sampled_from([frozenset(), frozenset({"mobile"}), frozenset({"staff", "vip"})]),
        name=st.sampled_from(["", "r"]),
    ),
    max_size=5,
)
_when = st.one_of(st.none(), st.integers(-72, 72).map(lambda h: NOW + h * H))
_partnership = st.builds(
    Partnership,
    user=st.just("alice"),
    device_id=_ids,
    state=_states,
    trusted_until=_when,
    created_at=st.just(NOW - 200 * H),
    last_seen=st.just(NOW - H),
    wiped=st.booleans(),
)
_policy = st.builds(
    GroupPolicy,
    max_devices=st.integers(0, 4),
    trust_lifetime_hours=st.sampled_from([1.0, 24.0, 720.0]),
    certprov=st.sampled_from(["allowed-only", "deny"]),
    default_action=_states,
    problem_action=_states,
    require_second_factor=st.booleans(),
)
_groups = st.sampled_from([frozenset(), frozenset({"mobile"}), frozenset({"staff"})])
_service = st.sampled_from(["eas", "ucwa", "certprov", "webticket"])


@st.composite
def scenarios(draw):
    facts = draw(_facts_any)
    others = draw(st.lists(_partnership, max_size=6, unique_by=lambda p: p.device_id))
    existing = next((p for p in others if p.device_id == facts.device_id), None)
    return dict(
        facts=facts,
        existing=existing,
        user_devices=others,
        rules=draw(_rules),
        policy=draw(_policy),
        user_groups=draw(_groups),
        now=NOW,
        second_factor_ok=draw(st.booleans()),
        service=draw(_service),
        second_factor_possible=draw(st.booleans()),
    )


@settings(max_examples=_EXAMPLES, deadline=None)
@given(scenarios())
def test_decisions_are_deterministic_and_well_formed(s):
    d = decide(**s)
    assert d == decide(**s)
    assert d.outcome in ("allow", "quarantine", "deny", "challenge") and d.reason
    if d.wipe:
        assert d.outcome == "deny"
    if d.trusted_until is not None:
        assert d.trusted_until > NOW
    if s["facts"].device_id is None:
        assert d.new_state is None  # no key, nothing stored


@settings(max_examples=_EXAMPLES, deadline=None)
@given(scenarios())
def test_a_blocked_partnership_is_never_allowed_whatever_the_rules(s):
    if s["existing"] is None:
        return
    s["existing"] = replace(s["existing"], state=B)
    s["user_devices"] = [s["existing"] if p.device_id == s["existing"].device_id else p for p in s["user_devices"]]
    s["rules"] = [DeviceRule(A), *s["rules"]]
    d = decide(**s)
    assert d.outcome == "deny" and d.new_state is None


@settings(max_examples=_EXAMPLES, deadline=None)
@given(_rules, _facts, _groups)
def test_the_first_matching_rule_wins(rules, facts, groups):
    first = next(((i, r) for i, r in enumerate(rules) if r.matches(facts, groups)), None)
    state, reason = evaluate_rules(rules, facts, groups, default=Q)
    if first is None:
        assert (state, reason) == (Q, "default")
    else:
        i, r = first
        assert state is r.action and reason == f"rule:{r.name or f'#{i}'}"


@settings(max_examples=_EXAMPLES, deadline=None)
@given(scenarios(), _rules)
def test_a_rule_after_a_matching_one_never_changes_the_outcome(s, extra):
    if not any(r.matches(s["facts"], s["user_groups"]) for r in s["rules"]):
        return
    assert decide(**s) == decide(**{**s, "rules": [*s["rules"], *extra]})


@settings(max_examples=_EXAMPLES, deadline=None)
@given(scenarios())
def test_over_the_limit_never_creates_a_partnership(s):
    if s["existing"] is not None or s["facts"].device_id is None:
        return
    live = {p.device_id for p in s["user_devices"] if p.state is not B}
    if len(live) < s["policy"].max_devices:
        return
    d = decide(**s)
    assert d.new_state is None and d.outcome in ("deny",)


@settings(max_examples=_EXAMPLES, deadline=None)
@given(scenarios())
def test_certprov_never_for_a_non_allowed_or_expired_partnership(s):
    s["service"] = "certprov"
    d = decide(**s)
    if d.outcome != "allow":
        assert d.outcome == "deny"
        return
    policy, existing = s["policy"], s["existing"]
    assert policy.certprov != "deny"
    assert d.trusted_until is not None and d.trusted_until > NOW
    assert s["facts"].device_id is not None
    if existing is not None:
        assert existing.state is A and not existing.wiped
        assert existing.trusted_at(NOW) or s["second_factor_ok"] or not policy.require_second_factor
    else:
        state, _ = evaluate_rules(s["rules"], s["facts"], s["user_groups"], default=policy.default_action)
        assert state is A and (s["second_factor_ok"] or not policy.require_second_factor)


@settings(max_examples=_EXAMPLES, deadline=None)
@given(scenarios())
def test_quarantined_and_wiped_stay_so_whatever_the_second_factor(s):
    e = s["existing"]
    if e is None or s["facts"].device_id is None:
        return
    for sf in (False, True):
        d = decide(**{**s, "second_factor_ok": sf})
        if e.wiped:
            assert d.outcome == "deny" and d.wipe
        elif e.state is Q:
            assert d.outcome in ("quarantine", "deny") and d.new_state is None
