"""Two-factor policy: modes, the decision table, and the otp-appended helpers (pure)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ucgate.policy.twofactor import (
    MAX_NTLM_CANDIDATES,
    REASONS,
    Factor,
    Mode,
    Outcome,
    appended_candidates,
    candidate_id,
    decide,
    parse_candidate_id,
    resolve_mode,
    split_appended,
)


# --- modes ----------------------------------------------------------------------------------
def test_resolve_mode():
    assert resolve_mode(None, [], "off") is Mode.OFF
    assert resolve_mode(None, [], "otp-appended") is Mode.OTP_APPENDED
    assert resolve_mode(None, ["off", "otp-appended", "device-approval"], "off") is Mode.OTP_APPENDED
    assert resolve_mode(None, ["off", "device-approval"], "off") is Mode.DEVICE_APPROVAL
    assert resolve_mode(None, ["off"], "otp-appended") is Mode.OFF
    assert resolve_mode("off", ["otp-appended"], "otp-appended") is Mode.OFF  # the user's own setting wins
    with pytest.raises(ValueError):
        resolve_mode("sms", [], "off")


# --- the decision table ---------------------------------------------------------------------
A, N, D = Outcome.ALLOW, Outcome.NEED_FACTOR, Outcome.DENY


@pytest.mark.parametrize(
    "mode, enrolled, factor, trusted, outcome, reason",
    [
        ("off", False, Factor.NONE, False, A, "2fa-off"),
        ("off", True, Factor.OTP_WRONG, False, A, "2fa-off"),
        ("otp-appended", True, Factor.NONE, True, A, "2fa-trusted"),
        ("otp-appended", True, Factor.NONE, False, N, "otp-required"),
        ("otp-appended", True, Factor.OTP_OK, False, A, "ok-otp"),
        ("otp-appended", True, Factor.OTP_WRONG, False, D, "otp-wrong"),
        ("otp-appended", True, Factor.OTP_REPLAYED, False, D, "otp-replayed"),
        ("otp-appended", True, Factor.RECOVERY_OK, False, A, "ok-recovery-code"),
        ("otp-appended", True, Factor.RECOVERY_WRONG, False, D, "recovery-code-wrong"),
        ("otp-appended", False, Factor.NONE, False, D, "otp-not-enrolled"),
        ("otp-appended", False, Factor.OTP_WRONG, False, D, "otp-not-enrolled"),
        ("device-approval", False, Factor.NONE, False, N, "device-approval-pending"),
        ("device-approval", False, Factor.APPROVAL_PENDING, False, N, "device-approval-pending"),
        ("device-approval", False, Factor.APPROVED, False, A, "ok-device-approved"),
        ("device-approval", False, Factor.APPROVAL_REFUSED, False, D, "device-approval-refused"),
        ("device-approval", False, Factor.NONE, True, A, "2fa-trusted"),
    ],
)
def test_decide(mode, enrolled, factor, trusted, outcome, reason):
    d = decide(mode, enrolled=enrolled, factor=factor, trusted=trusted, allow_unenrolled=False)
    assert (d.outcome, d.reason) == (outcome, reason)
    assert d.allowed == (outcome is A)
    assert reason in REASONS


def test_unenrolled_grace_is_explicit():
    d = decide(Mode.OTP_APPENDED, enrolled=False, factor=Factor.NONE, trusted=False, allow_unenrolled=True)
    assert d.allowed and d.reason == "otp-not-enrolled"


@given(st.sampled_from(list(Mode)), st.booleans(), st.sampled_from(list(Factor)), st.booleans())
def test_decide_is_total_and_refusals_never_allow(mode, enrolled, factor, trusted):
    d = decide(mode, enrolled=enrolled, factor=factor, trusted=trusted, allow_unenrolled=False)
    assert d.reason in REASONS
    if (
        mode is not Mode.OFF
        and not trusted
        and factor in (Factor.OTP_WRONG, Factor.OTP_REPLAYED, Factor.RECOVERY_WRONG, Factor.APPROVAL_REFUSED)
    ):
        assert not d.allowed


# --- splitting ASP‖code ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "typed, expected",
    [
        ("k7mq-2xpa-h9dt-e4wn123456", ("k7mq-2xpa-h9dt-e4wn", "123456")),
        ("k7mq2xpah9dte4wn000001", ("k7mq2xpah9dte4wn", "000001")),
        ("K7MQ-2XPA-H9DT-E4W9123456", ("K7MQ-2XPA-H9DT-E4W9", "123456")),  # ASP ends in a digit
        ("k7mq-2xpa-h9dt-e4wn", None),  # no code
        ("k7mq-2xpa-h9dt-e4wn12345", None),  # 5 digits: the last six are not all digits
        ("k7mq-2xpa-h9dt-e4wn12345x", None),
        ("123456", None),  # a code alone
        ("", None),
        ("k7mq-2xpa-h9dt-e4wn１２３４５６", None),  # full-width digits are not ASCII
    ],
)
def test_split_appended(typed, expected):
    assert split_appended(typed) == expected


# --- NTLM candidates ------------------------------------------------------------------------
WINDOW = [(100, "111111"), (99, "000000"), (101, "222222")]


def spell(asp_id, s):
    return [(asp_id, s), (asp_id, s.replace("-", "")), (asp_id, s.upper()), (asp_id, s.replace("-", "").upper())]


def test_candidates_one_asp():
    c = appended_candidates(spell("a1", "abcd-efgh"), WINDOW)
    assert len(c) == 12
    assert c[:3] == [("a1@100", "abcd-efgh111111"), ("a1@99", "abcd-efgh000000"), ("a1@101", "abcd-efgh222222")]
    assert {pw for _, pw in c} == {s + code for _, s in spell("a1", "abcd-efgh") for _, code in WINDOW}


def test_candidates_are_capped_dropping_rare_spellings_first():
    asps = [x for i in range(4) for x in spell(f"a{i}", f"abc{i}-defg")]
    c = appended_candidates(asps, WINDOW)
    assert len(c) == MAX_NTLM_CANDIDATES
    assert all(any(pw == f"abc{i}-defg" + code for _, pw in c) for i in range(4) for _, code in WINDOW)
    assert not any(pw.isupper() and "-" not in pw for _, pw in c)  # the rarest rank went first
    assert appended_candidates([], WINDOW) == [] and appended_candidates(asps, []) == []
    assert len(appended_candidates(asps, WINDOW, limit=5)) == 5


def test_candidate_ids_round_trip():
    assert parse_candidate_id(candidate_id("9f3a0c", 58027680)) == ("9f3a0c", 58027680)
    assert parse_candidate_id("9f3a0c") == ("9f3a0c", None)  # a plain ASP candidate
    assert parse_candidate_id("decoy:no-asp") == ("decoy:no-asp", None)


# --- issue 13: recovery codes after the ASP; the ASP alone as an NTLM candidate -----------------
@pytest.mark.parametrize(
    "typed, expected",
    [
        ("k7mq-2xpa-h9dt-e4wnabcd-efgh-jkmn", ("k7mq-2xpa-h9dt-e4wn", "abcd-efgh-jkmn")),
        ("k7mq2xpah9dte4wnabcdefghjkmn", ("k7mq2xpah9dte4wn", "abcdefghjkmn")),
        ("k7mq-2xpa-h9dt-e4wn-abcd-efgh-jkmn", ("k7mq-2xpa-h9dt-e4wn", "abcd-efgh-jkmn")),
        ("abcd-efgh-jkmn", None),  # nothing before the code
        ("short", None),
    ],
)
def test_split_recovery(typed, expected):
    from ucgate.policy.twofactor import split_recovery

    assert split_recovery(typed) == expected


def test_recovery_code_length_matches_the_otp_service():
    from ucgate.id.otp import RECOVERY_SYMBOLS
    from ucgate.policy.twofactor import RECOVERY_CODE_SYMBOLS

    assert RECOVERY_CODE_SYMBOLS == RECOVERY_SYMBOLS


def test_plain_candidate_id_has_no_step():
    assert parse_candidate_id(candidate_id("a1", None)) == ("a1", None)
    assert parse_candidate_id(candidate_id("a1", 7)) == ("a1", 7)
    assert parse_candidate_id("a1") == ("a1", None)
