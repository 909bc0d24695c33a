import datetime as dt

from ucgate.id.directory import AccountState
from ucgate.policy.account import check_session, check_sign_in, keep_during_outage

T0 = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)


def test_sign_in():
    assert check_sign_in(AccountState()).allowed
    assert check_sign_in(AccountState(disabled=True)).reason == "disabled"
    assert check_sign_in(AccountState(locked=True)).reason == "locked"
    assert check_sign_in(AccountState(expired=True)).reason == "expired"
    assert check_sign_in(AccountState(password_must_change=True)).reason == "password-must-change"
    assert check_sign_in(AccountState(exists=False)).reason == "deleted"
    assert check_sign_in(AccountState(), in_required_group=False).reason == "not-in-group"
    # account state wins over the group
    assert check_sign_in(AccountState(locked=True), in_required_group=False).reason == "locked"


def test_session_password_changed_after_sign_in():
    before = AccountState(password_last_set=T0 - dt.timedelta(days=1))
    after = AccountState(password_last_set=T0 + dt.timedelta(seconds=1))
    assert check_session(before, T0).allowed
    assert check_session(after, T0).reason == "password-changed"
    assert check_session(AccountState(disabled=True, password_last_set=None), T0).reason == "disabled"


def test_outage_grace():
    assert keep_during_outage(100.0, 150.0, 60)
    assert not keep_during_outage(100.0, 161.0, 60)
    assert not keep_during_outage(None, 1.0, 60)
