"""Account-state policy (pure): may this directory account sign in, or keep its session?

A client that holds a valid web ticket or a 180-day certificate never touches AD again, so the
gateway itself must notice when AD locks, disables or expires the account, or when the password
changed after the session began (DESIGN.md, "Protocol facts").
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Protocol


class AccountFacts(Protocol):
    """What the directory says about an account (``ucgate.id.directory.AccountState``)."""

    password_last_set: dt.datetime | None

    def blocked_reason(self) -> str | None: ...


@dataclass(frozen=True, slots=True)
class AccountDecision:
    allowed: bool
    reason: str  # "ok" or why not: disabled, locked, expired, password-must-change,
    #              password-changed, deleted, not-in-group, directory-unavailable


ALLOW = AccountDecision(True, "ok")


def check_sign_in(state: AccountFacts, *, in_required_group: bool = True) -> AccountDecision:
    """A new sign-in: the account must be usable and, if a group gate is set, a member."""
    reason = state.blocked_reason()
    if reason is not None:
        return AccountDecision(False, reason)
    if not in_required_group:
        return AccountDecision(False, "not-in-group")
    return ALLOW


def check_session(state: AccountFacts, signed_in_at: dt.datetime) -> AccountDecision:
    """A live session: as for a sign-in, and the password must not have changed since.

    Args:
        state: fresh account state.
        signed_in_at: when the session signed in (timezone-aware UTC).
    """
    reason = state.blocked_reason()
    if reason is not None:
        return AccountDecision(False, reason)
    pls = state.password_last_set
    if pls is not None and pls > signed_in_at:
        return AccountDecision(False, "password-changed")
    return ALLOW


def keep_during_outage(last_ok: float | None, now: float, grace: float) -> bool:
    """While the directory cannot be reached, live sessions stay for ``grace`` seconds after the
    last successful check (new sign-ins fail closed at once)."""
    return last_ok is not None and now - last_ok <= grace
