"""Device partnerships and device access rules (pure): may this device be used, now?

Pure: no clock, no I/O. The caller passes the request's :class:`~ucgate.protocols.devices.
DeviceFacts`, the stored partnership (if any) and the user's others, the rules and the group
policy, and ``now``; :func:`decide` returns a :class:`DeviceDecision` — an outcome, a reason
code for the audit log and UI, and what to store.

The model follows Exchange ActiveSync device access (``New-ActiveSyncDeviceAccessRule``,
quarantine and the organisation's default access level), extended with a *trust lifetime*:

- A **new device** gets its state from the first matching :class:`DeviceRule` (rules are
  ordered, first match wins), else the group's ``default_action`` (default: quarantined,
  waiting for an administrator or the user's approval in the portal).
- **Allowed** partnerships are *trusted* until ``trusted_until``. After that the user must pass
  the second factor again (``challenge``); a request that carries it (``second_factor_ok``)
  is let in and extends the trust by ``trust_lifetime_hours`` (cf. the SfB web service's
  ``DefaultValidityPeriodHours``). ``trusted_until=None`` means trust was never established.
- A challenge is only made to a user who *can* answer it (``second_factor_possible``: the
  user signs in with ASP + one-time code). For anyone else (two-factor mode ``off`` or
  ``device-approval``, no authenticator enrolled) the only trust left is an approval, so the
  device is **quarantined** instead (``new-device-approval-required``,
  ``trust-expired-approval-required``): it waits for an administrator (or the portal), and
  the user is told so — never a challenge nobody can pass.
- **Quarantined** stays quarantined until approved; **blocked** is denied whatever the rules
  (rules only choose the state of *new* devices); a pending **wipe** is denied with
  ``wipe=True`` so the EAS layer answers the Provision/wipe status.
- A user has at most ``max_devices`` partnerships that are not blocked; a new device beyond
  that is denied and nothing is stored. A new device blocked by a rule is not stored either
  (the audit log has it), so random ids cannot grow the store.
- **CertProv** issues a certificate valid 180 days by default, far longer than the trust: it is
  allowed only for an allowed partnership that is trusted (or renews its trust with this very
  request), and never when the group's ``certprov`` is ``"deny"``.
- A device id the request could not give (``facts.problem``) gets ``problem_action`` and
  nothing is stored: there is no key to store it under.

Reason codes: ``device-id-<problem>``, ``device-wipe-pending``, ``device-blocked``,
``device-quarantined``, ``device-trusted``, ``trust-renewed``, ``trust-expired``,
``new-device-allowed``, ``new-device-second-factor``, ``new-device-quarantined``,
``new-device-approval-required``, ``trust-expired-approval-required``,
``new-device-blocked``, ``device-limit``, ``certprov-denied-by-policy``,
``certprov-not-trusted``; rule matches are named in ``rule``.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from ..protocols.devices import CLIENT_KINDS, DeviceFacts

# A rule pattern is a glob an administrator types; bound its size (and fnmatch's work).
MAX_PATTERN_CHARS = 256


class PartnershipState(StrEnum):
    ALLOWED = "allowed"
    QUARANTINED = "quarantined"
    BLOCKED = "blocked"


Outcome = Literal["allow", "quarantine", "deny", "challenge"]


@dataclass(frozen=True)
class DeviceRule:
    """One device access rule. Every given criterion must match (globs, case-insensitive; a
    criterion that is None matches anything, but a given one never matches a missing fact).
    ``groups`` limits the rule to users in any of those groups (empty: every user)."""

    action: PartnershipState
    device_type: str | None = None
    model: str | None = None
    os: str | None = None
    user_agent: str | None = None
    client_kind: str | None = None
    groups: frozenset[str] = frozenset()
    name: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "action", PartnershipState(self.action))
        object.__setattr__(self, "groups", frozenset(g.casefold() for g in self.groups))
        for attr in ("device_type", "model", "os", "user_agent", "client_kind"):
            value = getattr(self, attr)
            if value is not None and (not isinstance(value, str) or len(value) > MAX_PATTERN_CHARS):
                raise ValueError(
                    f"device rule {self.name or '?'}: {attr} must be a glob of at most {MAX_PATTERN_CHARS} characters"
                )
        if self.client_kind is not None and not any(
            fnmatch.fnmatchcase(k, self.client_kind.casefold()) for k in CLIENT_KINDS
        ):
            raise ValueError(
                f"device rule {self.name or '?'}: client_kind {self.client_kind!r} "
                f"matches none of {', '.join(sorted(CLIENT_KINDS))}"
            )

    def matches(self, facts: DeviceFacts, user_groups: frozenset[str]) -> bool:
        if self.groups and not self.groups & {g.casefold() for g in user_groups}:
            return False
        for attr in ("device_type", "model", "os", "user_agent", "client_kind"):
            pattern = getattr(self, attr)
            if pattern is None:
                continue
            value = getattr(facts, attr)
            if value is None or not fnmatch.fnmatchcase(value.casefold(), pattern.casefold()):
                return False
        return True


@dataclass(frozen=True)
class GroupPolicy:
    """Device settings of the user's group (the caller picks the group's policy)."""

    max_devices: int = 10
    trust_lifetime_hours: float = 24.0
    certprov: Literal["allowed-only", "deny"] = "allowed-only"
    default_action: PartnershipState = PartnershipState.QUARANTINED
    problem_action: PartnershipState = PartnershipState.QUARANTINED
    # False: allowed devices need no second factor; trust is renewed on every allowed request.
    require_second_factor: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "default_action", PartnershipState(self.default_action))
        object.__setattr__(self, "problem_action", PartnershipState(self.problem_action))
        if self.max_devices < 0:
            raise ValueError("max_devices must be at least 0")
        if not self.trust_lifetime_hours > 0:
            raise ValueError("trust_lifetime_hours must be greater than 0")
        if self.certprov not in ("allowed-only", "deny"):
            raise ValueError('certprov must be "allowed-only" or "deny"')

    @property
    def trust_lifetime(self) -> dt.timedelta:
        return dt.timedelta(hours=self.trust_lifetime_hours)


@dataclass(frozen=True)
class Partnership:
    """A stored user–device pair (times timezone-aware UTC)."""

    user: str
    device_id: str
    state: PartnershipState
    trusted_until: dt.datetime | None
    created_at: dt.datetime
    last_seen: dt.datetime
    wiped: bool = False
    device_type: str | None = None
    model: str | None = None
    os: str | None = None
    user_agent: str | None = None
    client_kind: str = "unknown"

    def trusted_at(self, now: dt.datetime) -> bool:
        return self.trusted_until is not None and now < self.trusted_until


@dataclass(frozen=True)
class DeviceDecision:
    """What to do with the request and what to store.

    ``new_state`` is set when a partnership is to be created or its state/trust changed;
    ``trusted_until`` is then the trust to store. ``rule`` names the rule that chose the
    state of a new device ("" when the default applied)."""

    outcome: Outcome
    reason: str
    new_state: PartnershipState | None = None
    wipe: bool = False
    trusted_until: dt.datetime | None = None
    rule: str = ""

    @property
    def allowed(self) -> bool:
        return self.outcome == "allow"


def evaluate_rules(
    rules: Sequence[DeviceRule],
    facts: DeviceFacts,
    user_groups: frozenset[str],
    *,
    default: PartnershipState,
) -> tuple[PartnershipState, str]:
    """The first matching rule's action and ``"rule:<name or #index>"``; ``(default,
    "default")`` when none matches. ``default`` has no default: the caller passes the group's
    ``default_action``, so a rule-less device never gets a state nobody chose."""
    for i, rule in enumerate(rules):
        if rule.matches(facts, user_groups):
            return rule.action, f"rule:{rule.name or f'#{i}'}"
    return default, "default"


_OUTCOME_OF_STATE: dict[PartnershipState, Outcome] = {
    PartnershipState.ALLOWED: "allow",
    PartnershipState.QUARANTINED: "quarantine",
    PartnershipState.BLOCKED: "deny",
}


def decide(
    *,
    facts: DeviceFacts,
    existing: Partnership | None,
    user_devices: Sequence[Partnership],
    rules: Sequence[DeviceRule],
    policy: GroupPolicy,
    user_groups: frozenset[str],
    now: dt.datetime,
    second_factor_ok: bool,
    service: str,
    second_factor_possible: bool,
) -> DeviceDecision:
    """Decide a request from a device (see the module docstring for the semantics).

    Args:
        facts: what the request says about the device.
        existing: the stored partnership of (user, ``facts.device_id``), or None.
        user_devices: all the user's stored partnerships (may include ``existing``).
        rules: device access rules, in order.
        policy: the user's group policy.
        user_groups: the user's group names (for group-limited rules).
        now: the current time (timezone-aware UTC, like the stored times).
        second_factor_ok: the request carried a valid second factor. Required, like every
            argument that decides the outcome: no default can fail open.
        service: the service name (``"certprov"`` is gated, see the module docstring).
        second_factor_possible: the user could give a second factor at sign-in; when not, a
            challenge becomes a quarantine (the module docstring). Required like the others
            (it also decides what is stored: an untrusted allowed partnership or a quarantined one).
    """
    decision = _decide(facts, existing, user_devices, rules, policy, user_groups, now, second_factor_ok)
    if decision.outcome == "challenge" and not second_factor_possible:
        reason = {
            "new-device-second-factor": "new-device-approval-required",
            "trust-expired": "trust-expired-approval-required",
        }[decision.reason]
        decision = DeviceDecision("quarantine", reason, PartnershipState.QUARANTINED, rule=decision.rule)
    if service != "certprov":
        return decision
    if policy.certprov == "deny":
        return DeviceDecision(
            "deny",
            "certprov-denied-by-policy",
            decision.new_state,
            decision.wipe,
            decision.trusted_until,
            decision.rule,
        )
    if decision.outcome != "allow" or decision.trusted_until is None:
        # Anything short of an allowed, trusted partnership: no 180-day certificate. What
        # the decision would store (a new quarantined device, say) is still stored.
        reason = decision.reason if decision.outcome == "deny" else "certprov-not-trusted"
        return DeviceDecision("deny", reason, decision.new_state, decision.wipe, decision.trusted_until, decision.rule)
    return decision


def _decide(
    facts: DeviceFacts,
    existing: Partnership | None,
    user_devices: Sequence[Partnership],
    rules: Sequence[DeviceRule],
    policy: GroupPolicy,
    user_groups: frozenset[str],
    now: dt.datetime,
    second_factor_ok: bool,
) -> DeviceDecision:
    if facts.problem is not None or facts.device_id is None:
        # No key to store a partnership under: the group's problem_action, as it is.
        return DeviceDecision(_OUTCOME_OF_STATE[policy.problem_action], f"device-id-{facts.problem or 'absent'}")
    if existing is not None:
        return _decide_existing(existing, policy, now, second_factor_ok)
    return _decide_new(facts, user_devices, rules, policy, user_groups, now, second_factor_ok)


def _renewed(policy: GroupPolicy, now: dt.datetime) -> dt.datetime:
    return now + policy.trust_lifetime


def _decide_existing(p: Partnership, policy: GroupPolicy, now: dt.datetime, second_factor_ok: bool) -> DeviceDecision:
    if p.wiped:
        return DeviceDecision("deny", "device-wipe-pending", wipe=True)
    if p.state is PartnershipState.BLOCKED:
        return DeviceDecision("deny", "device-blocked")
    if p.state is PartnershipState.QUARANTINED:
        return DeviceDecision("quarantine", "device-quarantined")
    if p.trusted_at(now):
        return DeviceDecision("allow", "device-trusted", trusted_until=p.trusted_until)
    if second_factor_ok or not policy.require_second_factor:
        until = _renewed(policy, now)
        return DeviceDecision("allow", "trust-renewed", PartnershipState.ALLOWED, trusted_until=until)
    return DeviceDecision("challenge", "trust-expired")


def _decide_new(
    facts: DeviceFacts,
    user_devices: Sequence[Partnership],
    rules: Sequence[DeviceRule],
    policy: GroupPolicy,
    user_groups: frozenset[str],
    now: dt.datetime,
    second_factor_ok: bool,
) -> DeviceDecision:
    state, matched = evaluate_rules(rules, facts, user_groups, default=policy.default_action)
    rule = matched.removeprefix("rule:") if matched.startswith("rule:") else ""
    if state is PartnershipState.BLOCKED:
        return DeviceDecision("deny", "new-device-blocked", rule=rule)
    others = {
        p.device_id for p in user_devices if p.state is not PartnershipState.BLOCKED and p.device_id != facts.device_id
    }
    if len(others) >= policy.max_devices:
        return DeviceDecision("deny", "device-limit", rule=rule)
    if state is PartnershipState.QUARANTINED:
        return DeviceDecision("quarantine", "new-device-quarantined", PartnershipState.QUARANTINED, rule=rule)
    if second_factor_ok or not policy.require_second_factor:
        return DeviceDecision(
            "allow", "new-device-allowed", PartnershipState.ALLOWED, trusted_until=_renewed(policy, now), rule=rule
        )
    # Allowed by the rules, but trust needs the second factor: store it untrusted and ask.
    return DeviceDecision("challenge", "new-device-second-factor", PartnershipState.ALLOWED, rule=rule)
