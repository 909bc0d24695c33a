"""Device decisions at their boundaries: trust expiry to the microsecond, the device limit on both
sides, every refusal with its exact reason, that the security-deciding arguments have no
defaults (a forgotten one is an error, not a silent outcome), and rule/policy validation."""

from __future__ import annotations

import datetime as dt
import inspect
from dataclasses import replace

import pytest

from ucgate.policy import devices as policy
from ucgate.policy.devices import (
    MAX_PATTERN_CHARS,
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
NOW = dt.datetime(2031, 11, 17, 3, 14, 15, 926535, tzinfo=dt.UTC)  # not a round time
US = dt.timedelta(microseconds=1)
H = dt.timedelta(hours=1)
PHONE = DeviceFacts("Dev42", "iPhone", "iPhone15,2", "iOS 17.1", "Apple-iPhone15C2/2102.1", "eas", "eas-query", None)


def p(device_id="Dev42", state=A, trusted_until=NOW + H, wiped=False, **kw) -> Partnership:
    return Partnership("erin", device_id, state, trusted_until, NOW - 90 * H, NOW - H, wiped=wiped, **kw)


def run(
    facts=PHONE,
    existing=None,
    others=(),
    rules=(),
    pol=GroupPolicy(),
    groups=frozenset(),
    second_factor_ok=False,
    service="eas",
    possible=True,
) -> DeviceDecision:
    return decide(
        facts=facts,
        existing=existing,
        user_devices=list(others) + ([existing] if existing else []),
        rules=rules,
        policy=pol,
        user_groups=frozenset(groups),
        now=NOW,
        second_factor_ok=second_factor_ok,
        service=service,
        second_factor_possible=possible,
    )


def full(d: DeviceDecision) -> tuple:
    return d.outcome, d.reason, d.new_state, d.wipe, d.trusted_until, d.rule


# --- no fail-open defaults ---------------------------------------------------------------------------


def test_security_arguments_have_no_defaults():
    for name, param in inspect.signature(decide).parameters.items():
        assert param.default is inspect.Parameter.empty, name
        assert param.kind is inspect.Parameter.KEYWORD_ONLY, name
    assert inspect.signature(evaluate_rules).parameters["default"].default is inspect.Parameter.empty
    kwargs = dict(
        facts=PHONE,
        existing=None,
        user_devices=[],
        rules=[],
        policy=GroupPolicy(),
        user_groups=frozenset(),
        now=NOW,
        second_factor_ok=False,
        service="eas",
        second_factor_possible=True,
    )
    for missing in ("second_factor_ok", "service", "policy", "now", "second_factor_possible"):
        with pytest.raises(TypeError):
            decide(**{k: v for k, v in kwargs.items() if k != missing})
    with pytest.raises(TypeError):
        evaluate_rules([], PHONE, frozenset())  # type: ignore[call-arg]


def test_group_policy_defaults_are_the_closed_ones():
    g = GroupPolicy()
    assert (g.max_devices, g.trust_lifetime_hours, g.certprov) == (10, 24.0, "allowed-only")
    assert g.default_action is Q and g.problem_action is Q and g.require_second_factor is True
    assert g.trust_lifetime == dt.timedelta(hours=24)
    assert GroupPolicy(trust_lifetime_hours=0.5).trust_lifetime == dt.timedelta(minutes=30)


# --- trust lifetime to the microsecond -------------------------------------------------------------


@pytest.mark.parametrize(
    "until, sf, expected",
    [
        (NOW + US, False, ("allow", "device-trusted", None, False, NOW + US, "")),
        (NOW, False, ("challenge", "trust-expired", None, False, None, "")),
        (NOW - US, False, ("challenge", "trust-expired", None, False, None, "")),
        (None, False, ("challenge", "trust-expired", None, False, None, "")),
        (NOW, True, ("allow", "trust-renewed", A, False, NOW + 24 * H, "")),
        (None, True, ("allow", "trust-renewed", A, False, NOW + 24 * H, "")),
        (NOW + US, True, ("allow", "device-trusted", None, False, NOW + US, "")),  # still trusted: not renewed
    ],
)
def test_trust_expiry_boundary(until, sf, expected):
    assert full(run(existing=p(trusted_until=until), second_factor_ok=sf)) == expected


def test_trusted_at():
    assert p(trusted_until=NOW + US).trusted_at(NOW)
    assert not p(trusted_until=NOW).trusted_at(NOW)
    assert not p(trusted_until=None).trusted_at(NOW)


def test_second_factor_not_required_renews_without_it():
    d = run(existing=p(trusted_until=NOW - H), pol=GroupPolicy(require_second_factor=False, trust_lifetime_hours=2))
    assert full(d) == ("allow", "trust-renewed", A, False, NOW + 2 * H, "")
    assert d.allowed


# --- existing partnerships: refusals with their reasons ------------------------------------------------


@pytest.mark.parametrize(
    "existing, expected",
    [
        (p(wiped=True), ("deny", "device-wipe-pending", None, True, None, "")),
        (p(state=Q, wiped=True), ("deny", "device-wipe-pending", None, True, None, "")),
        (p(state=B), ("deny", "device-blocked", None, False, None, "")),
        (p(state=B, trusted_until=NOW + 100 * H), ("deny", "device-blocked", None, False, None, "")),
        (p(state=Q), ("quarantine", "device-quarantined", None, False, None, "")),
        (p(state=Q, trusted_until=NOW + 100 * H), ("quarantine", "device-quarantined", None, False, None, "")),
    ],
)
def test_existing_refusals_whatever_the_second_factor_and_rules(existing, expected):
    for sf in (False, True):
        for rules in ((), (DeviceRule(A),)):
            d = run(
                existing=existing,
                second_factor_ok=sf,
                rules=rules,
                pol=GroupPolicy(require_second_factor=False, default_action=A),
            )
            assert full(d) == expected
            assert not d.allowed


# --- new devices ----------------------------------------------------------------------------------


def test_device_limit_boundary():
    rules = (DeviceRule(A, name="all"),)
    two = [p("d1"), p("d2", Q)]
    assert full(run(others=two, rules=rules, pol=GroupPolicy(max_devices=3), second_factor_ok=True)) == (
        "allow",
        "new-device-allowed",
        A,
        False,
        NOW + 24 * H,
        "all",
    )
    assert full(run(others=two, rules=rules, pol=GroupPolicy(max_devices=2), second_factor_ok=True)) == (
        "deny",
        "device-limit",
        None,
        False,
        None,
        "all",
    )
    # blocked partnerships and a stale entry for this very device do not count
    others = [p("d1"), p("d2", B), p("Dev42", B)]
    assert run(others=others, rules=rules, pol=GroupPolicy(max_devices=2), second_factor_ok=True).outcome == "allow"
    assert (
        run(others=[p("d1"), p("d1")], rules=rules, pol=GroupPolicy(max_devices=2), second_factor_ok=True).outcome
        == "allow"
    )  # ids, not rows
    assert run(pol=GroupPolicy(max_devices=0)).reason == "device-limit"
    assert run(others=[p("d1")], pol=GroupPolicy(max_devices=1)).reason == "device-limit"


def test_new_device_outcomes_and_rule_names():
    assert full(run()) == ("quarantine", "new-device-quarantined", Q, False, None, "")
    assert full(run(rules=(DeviceRule(A, name="ok"),))) == (
        "challenge",
        "new-device-second-factor",
        A,
        False,
        None,
        "ok",
    )
    assert full(run(rules=(DeviceRule(A),), second_factor_ok=True)) == (
        "allow",
        "new-device-allowed",
        A,
        False,
        NOW + 24 * H,
        "#0",
    )
    assert full(run(rules=(DeviceRule(Q, device_type="x"), DeviceRule(B, name="no")))) == (
        "deny",
        "new-device-blocked",
        None,
        False,
        None,
        "no",
    )
    assert full(run(rules=(DeviceRule(Q, name="wait"),), second_factor_ok=True)) == (
        "quarantine",
        "new-device-quarantined",
        Q,
        False,
        None,
        "wait",
    )
    assert full(run(pol=GroupPolicy(default_action=A), second_factor_ok=True)) == (
        "allow",
        "new-device-allowed",
        A,
        False,
        NOW + 24 * H,
        "",
    )
    assert full(run(pol=GroupPolicy(default_action=A, require_second_factor=False))) == (
        "allow",
        "new-device-allowed",
        A,
        False,
        NOW + 24 * H,
        "",
    )
    # blocked by a rule: nothing stored even over the limit (the rule decides first)
    assert full(run(pol=GroupPolicy(max_devices=0, default_action=B))) == (
        "deny",
        "new-device-blocked",
        None,
        False,
        None,
        "",
    )


def test_problem_facts():
    for problem, reason in ((None, "device-id-absent"), ("too-long", "device-id-too-long")):
        facts = replace(PHONE, device_id=None, problem=problem)
        for state, outcome in ((Q, "quarantine"), (B, "deny"), (A, "allow")):
            d = run(
                facts=facts,
                pol=GroupPolicy(problem_action=state),
                second_factor_ok=True,
                existing=None,
                rules=(DeviceRule(B),),
            )
            assert full(d) == (outcome, reason, None, False, None, "")
    # a problem with an id present still counts as a problem
    d = run(facts=replace(PHONE, problem="not-printable"), existing=p())
    assert full(d) == ("quarantine", "device-id-not-printable", None, False, None, "")


# --- certprov -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw, expected",
    [
        ({"existing": p()}, ("allow", "device-trusted", None, False, NOW + H, "")),
        (
            {"existing": p(), "pol": GroupPolicy(certprov="deny")},
            ("deny", "certprov-denied-by-policy", None, False, NOW + H, ""),
        ),
        ({"existing": p(trusted_until=NOW)}, ("deny", "certprov-not-trusted", None, False, None, "")),
        (
            {"existing": p(trusted_until=NOW), "second_factor_ok": True},
            ("allow", "trust-renewed", A, False, NOW + 24 * H, ""),
        ),
        (
            {"existing": p(trusted_until=NOW), "second_factor_ok": True, "pol": GroupPolicy(certprov="deny")},
            ("deny", "certprov-denied-by-policy", A, False, NOW + 24 * H, ""),
        ),
        ({"existing": p(state=B)}, ("deny", "device-blocked", None, False, None, "")),
        ({"existing": p(wiped=True)}, ("deny", "device-wipe-pending", None, True, None, "")),
        (
            {"existing": p(wiped=True), "pol": GroupPolicy(certprov="deny")},
            ("deny", "certprov-denied-by-policy", None, True, None, ""),
        ),
        ({"existing": p(state=Q)}, ("deny", "certprov-not-trusted", None, False, None, "")),
        (
            {"rules": (DeviceRule(A, name="r"),), "second_factor_ok": True},
            ("allow", "new-device-allowed", A, False, NOW + 24 * H, "r"),
        ),
        ({"rules": (DeviceRule(A, name="r"),)}, ("deny", "certprov-not-trusted", A, False, None, "r")),
        ({"rules": (DeviceRule(B, name="r"),)}, ("deny", "new-device-blocked", None, False, None, "r")),
        (
            {"facts": replace(PHONE, device_id=None, problem="absent"), "pol": GroupPolicy(problem_action=A)},
            ("deny", "certprov-not-trusted", None, False, None, ""),
        ),
    ],
)
def test_certprov_table(kw, expected):
    assert full(run(service="certprov", **kw)) == expected


def test_only_certprov_is_gated():
    for service in ("eas", "ucwa", "CertProv", "certprov "):
        assert run(existing=p(trusted_until=NOW), service=service).outcome == "challenge"
        assert run(existing=p(), service=service, pol=GroupPolicy(certprov="deny")).outcome == "allow"


# --- rules -----------------------------------------------------------------------------------------


def test_rule_matching_details():
    assert DeviceRule(A, device_type="IPHONE").matches(PHONE, frozenset())
    assert DeviceRule(A, device_type="i?hone", os="ios 17*").matches(PHONE, frozenset())
    assert not DeviceRule(A, device_type="iPhone", os="iOS 16*").matches(PHONE, frozenset())
    assert not DeviceRule(A, user_agent="Apple").matches(PHONE, frozenset())  # whole-string globs
    assert DeviceRule(A, user_agent="Apple*").matches(PHONE, frozenset())
    assert not DeviceRule(A, os="*").matches(replace(PHONE, os=None), frozenset())
    assert DeviceRule(A, client_kind="e*").matches(PHONE, frozenset())
    assert DeviceRule(A, groups=frozenset({"Sales"})).matches(PHONE, frozenset({"SALES"}))
    assert DeviceRule(A, groups=frozenset({"sales", "hr"})).matches(PHONE, frozenset({"hr"}))
    assert not DeviceRule(A, groups=frozenset({"sales"}), device_type="iPhone").matches(PHONE, frozenset({"hr"}))
    assert DeviceRule(A, groups=frozenset({"ß"})).groups == frozenset({"ss"})  # casefold, not lower
    assert evaluate_rules([DeviceRule(B, os="x"), DeviceRule(Q)], PHONE, frozenset(), default=A) == (Q, "rule:#1")
    assert evaluate_rules([], PHONE, frozenset(), default=B) == (B, "default")


def test_rule_validation():
    assert DeviceRule(A, model="x" * MAX_PATTERN_CHARS).model == "x" * 256
    for attr in ("device_type", "model", "os", "user_agent"):
        with pytest.raises(ValueError, match=attr):
            DeviceRule(A, **{attr: "x" * (MAX_PATTERN_CHARS + 1)})
        with pytest.raises(ValueError, match=attr):
            DeviceRule(A, **{attr: 7})
    with pytest.raises(ValueError, match="named-rule"):
        DeviceRule(A, model=3, name="named-rule")
    with pytest.raises(ValueError, match="client_kind"):
        DeviceRule(A, client_kind="x" * 300)
    with pytest.raises(ValueError, match="'fridge'"):
        DeviceRule(A, client_kind="fridge", name="r")
    assert DeviceRule(A, client_kind="*").client_kind == "*"
    assert DeviceRule(A, client_kind="EAS").matches(PHONE, frozenset())
    assert DeviceRule("quarantined").action is Q


def test_policy_validation():
    assert GroupPolicy(max_devices=0).max_devices == 0
    with pytest.raises(ValueError, match="max_devices"):
        GroupPolicy(max_devices=-1)
    assert GroupPolicy(trust_lifetime_hours=0.001).trust_lifetime_hours == 0.001
    for bad in (0, -1, float("nan")):
        with pytest.raises(ValueError, match="trust_lifetime_hours"):
            GroupPolicy(trust_lifetime_hours=bad)
    with pytest.raises(ValueError, match="certprov"):
        GroupPolicy(certprov="allowed")  # type: ignore[arg-type]
    assert GroupPolicy(certprov="deny").certprov == "deny"
    assert GroupPolicy(problem_action="blocked").problem_action is B  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        GroupPolicy(problem_action="maybe")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        GroupPolicy(default_action="maybe")  # type: ignore[arg-type]


def test_decision_allowed_property():
    assert DeviceDecision("allow", "x").allowed
    for outcome in ("quarantine", "deny", "challenge"):
        assert not DeviceDecision(outcome, "x").allowed
    assert policy._OUTCOME_OF_STATE == {A: "allow", Q: "quarantine", B: "deny"}


# --- a challenge only for users who can answer it ---------------------------------------------------


@pytest.mark.parametrize(
    "kw, expected",
    [
        ({"rules": (DeviceRule(A, name="r"),)}, ("quarantine", "new-device-approval-required", Q, False, None, "r")),
        ({"existing": p(trusted_until=NOW)}, ("quarantine", "trust-expired-approval-required", Q, False, None, "")),
        ({"existing": p(trusted_until=None)}, ("quarantine", "trust-expired-approval-required", Q, False, None, "")),
        # only challenges change: everything else is as with a possible second factor
        ({"existing": p()}, ("allow", "device-trusted", None, False, NOW + H, "")),
        (
            {"existing": p(trusted_until=NOW), "second_factor_ok": True},
            ("allow", "trust-renewed", A, False, NOW + 24 * H, ""),
        ),
        ({}, ("quarantine", "new-device-quarantined", Q, False, None, "")),
        ({"existing": p(state=B)}, ("deny", "device-blocked", None, False, None, "")),
        (
            {"rules": (DeviceRule(A, name="r"),), "service": "certprov"},
            ("deny", "certprov-not-trusted", Q, False, None, "r"),
        ),
    ],
)
def test_second_factor_not_possible(kw, expected):
    assert full(run(possible=False, **kw)) == expected
    if expected[1].endswith("approval-required"):
        assert run(possible=True, **kw).outcome == "challenge"


def test_certprov_refusals_keep_the_rule_name():
    d = run(
        rules=(DeviceRule(A, name="phones"),),
        service="certprov",
        pol=GroupPolicy(certprov="deny"),
        second_factor_ok=True,
    )
    assert full(d) == ("deny", "certprov-denied-by-policy", A, False, NOW + 24 * H, "phones")
    d = run(rules=(DeviceRule(Q, name="wait"),), service="certprov")
    assert full(d) == ("deny", "certprov-not-trusted", Q, False, None, "wait")
