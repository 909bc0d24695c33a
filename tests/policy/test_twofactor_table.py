"""Two-factor policy: the whole decision table against an independent statement of the rules,
no defaults on the arguments that decide, and the boundaries of the ASP‖code splitters and of
the NTLM candidate list."""

from __future__ import annotations

import inspect
import itertools

import pytest

from ucgate.policy.twofactor import (
    MAX_NTLM_CANDIDATES,
    OTP_DIGITS,
    REASONS,
    RECOVERY_CODE_SYMBOLS,
    Factor,
    Mode,
    Outcome,
    TwoFactorDecision,
    appended_candidates,
    candidate_id,
    decide,
    parse_candidate_id,
    resolve_mode,
    split_appended,
    split_recovery,
)

A, N, D = Outcome.ALLOW, Outcome.NEED_FACTOR, Outcome.DENY


def expected(mode: Mode, enrolled: bool, factor: Factor, trusted: bool, grace: bool) -> tuple[Outcome, str]:
    """The rules of the module docstring, written out case by case."""
    if mode is Mode.OFF:
        return A, "2fa-off"
    if trusted:
        return A, "2fa-trusted"
    if mode is Mode.DEVICE_APPROVAL:
        return {
            Factor.APPROVED: (A, "ok-device-approved"),
            Factor.APPROVAL_REFUSED: (D, "device-approval-refused"),
        }.get(factor, (N, "device-approval-pending"))
    if factor is Factor.RECOVERY_OK:
        return A, "ok-recovery-code"
    if not enrolled:
        return (A if grace else D), "otp-not-enrolled"
    return {
        Factor.OTP_OK: (A, "ok-otp"),
        Factor.OTP_WRONG: (D, "otp-wrong"),
        Factor.OTP_REPLAYED: (D, "otp-replayed"),
        Factor.RECOVERY_WRONG: (D, "recovery-code-wrong"),
    }.get(factor, (N, "otp-required"))


CASES = list(itertools.product(list(Mode), [False, True], list(Factor), [False, True], [False, True]))


@pytest.mark.parametrize("mode, enrolled, factor, trusted, grace", CASES)
def test_whole_decision_table(mode, enrolled, factor, trusted, grace):
    d = decide(mode.value, enrolled=enrolled, factor=factor, trusted=trusted, allow_unenrolled=grace)
    assert (d.outcome, d.reason) == expected(mode, enrolled, factor, trusted, grace)
    assert d.allowed is (d.outcome is A)
    assert d.reason in REASONS and isinstance(d, TwoFactorDecision)


def test_decide_arguments_have_no_defaults():
    params = inspect.signature(decide).parameters
    for name in ("enrolled", "factor", "trusted", "allow_unenrolled"):
        assert params[name].default is inspect.Parameter.empty and params[name].kind is inspect.Parameter.KEYWORD_ONLY
    assert inspect.signature(resolve_mode).parameters["default"].default is inspect.Parameter.empty
    with pytest.raises(TypeError):
        decide(Mode.OTP_APPENDED, enrolled=True, factor=Factor.OTP_OK, trusted=False)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        resolve_mode(None, [])  # type: ignore[call-arg]
    with pytest.raises(ValueError):
        decide("sms", enrolled=True, factor=Factor.NONE, trusted=False, allow_unenrolled=False)


def test_resolve_mode_precedence():
    for groups, default, want in [
        ([], "device-approval", Mode.DEVICE_APPROVAL),
        (["off"], "device-approval", Mode.OFF),
        (["device-approval", "off"], "otp-appended", Mode.DEVICE_APPROVAL),
        (["off", "device-approval", "otp-appended"], "off", Mode.OTP_APPENDED),
        (iter(["otp-appended"]), "off", Mode.OTP_APPENDED),
    ]:
        assert resolve_mode(None, groups, default) is want
    assert resolve_mode("device-approval", ["otp-appended"], "otp-appended") is Mode.DEVICE_APPROVAL
    for bad in (("x", [], "off"), (None, ["x"], "off"), (None, [], "x")):
        with pytest.raises(ValueError):
            resolve_mode(*bad)


# --- splitters --------------------------------------------------------------------------------


def test_split_appended_boundaries():
    assert OTP_DIGITS == 6
    assert split_appended("a123456") == ("a", "123456")
    assert split_appended("123456") is None
    assert split_appended("1234567") == ("1", "234567")
    assert split_appended("a12345") is None
    assert split_appended("ab12345x") is None
    assert split_appended("ab 123456") == ("ab ", "123456")
    assert split_appended("ab١٢٣٤٥٦") is None  # Arabic-Indic digits are digits but not ASCII


def test_split_recovery_boundaries():
    assert RECOVERY_CODE_SYMBOLS == 12
    code = "abcd-efgh-jkmn"
    assert split_recovery("x" + code) == ("x", code)
    assert split_recovery(code) is None  # nothing before the code
    assert split_recovery("abcdefghjkmn") is None
    assert split_recovery("abcdefghjkm") is None  # 11 symbols
    assert split_recovery("xabcdefghjkmn") == ("x", "abcdefghjkmn")
    assert split_recovery("asp- " + code) == ("asp", code)
    assert split_recovery("- -" + code) is None  # only separators before it
    assert split_recovery("a b-c" + "abcd efgh jkmn") == ("a b-c", "abcd efgh jkmn")
    assert split_recovery("k7mq-2xpa-h9dt-e4wn-" + code) == ("k7mq-2xpa-h9dt-e4wn", code)
    assert split_recovery("") is None
    assert split_recovery("-" * 20) is None


# --- NTLM candidates ---------------------------------------------------------------------------


def test_candidate_ids():
    assert candidate_id("a1", 7) == "a1@7" and candidate_id("a1", None) == "a1@" and candidate_id("a1", 0) == "a1@0"
    assert parse_candidate_id("a1@7") == ("a1", 7)
    assert parse_candidate_id("a1@0") == ("a1", 0)
    assert parse_candidate_id("a1@") == ("a1", None)
    assert parse_candidate_id("a@b@3") == ("a@b", 3)
    assert parse_candidate_id("a1@x") == ("a1@x", None)
    assert parse_candidate_id("a1@-3") == ("a1@-3", None)
    assert parse_candidate_id("a1") == ("a1", None)


WINDOW = [(10, "111111"), (9, "000000"), (11, "222222")]


def test_candidates_order_and_limit():
    spellings = [("a", "A1"), ("b", "B1"), ("b", "B2"), ("b", "B3"), ("a", "A2")]
    got = appended_candidates(spellings, WINDOW, limit=100)
    assert got == [
        (candidate_id(asp, step), s + code)
        for rank_spellings in (["A1", "B1"], ["A2", "B2"], ["B3"])
        for s in rank_spellings
        for step, code in WINDOW
        for asp in [s[0].lower()]
    ]
    assert len(got) == 15
    for limit in (0, 1, 3, 14, 15, 16):
        assert appended_candidates(spellings, WINDOW, limit=limit) == got[:limit]
    assert appended_candidates(spellings, WINDOW) == got  # default limit 32 > 15
    many = [(f"x{i}", f"s{i}") for i in range(20)]
    assert len(appended_candidates(many, WINDOW)) == MAX_NTLM_CANDIDATES == 32
    assert appended_candidates([], WINDOW) == [] and appended_candidates(spellings, []) == []
    assert appended_candidates([("a", "only")], [(5, "123456")]) == [("a@5", "only123456")]


def test_split_recovery_counts_every_letter():
    # only "-" and " " are separators: upper-case letters (X included) are symbols
    assert split_recovery("asp" + "abcdefghjkmX") == ("asp", "abcdefghjkmX")
    assert split_recovery("ASPX-ABCD-EFGH-JKMN") == ("ASPX", "ABCD-EFGH-JKMN")
    assert split_recovery("k7mqXX abcd efgh jkmn") == ("k7mqXX", "abcd efgh jkmn")
