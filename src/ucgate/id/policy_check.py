"""Settings that each look fine but contradict one another (``ucgate check-config``).

The one checked here: ``[devices] require_second_factor = true`` (the default) means an
allowed device's trust comes from a second factor at sign-in, and the only one a sign-in can
carry is ``otp-appended`` (ASP + one-time code, with an enrolled authenticator). Users who sign
in without one (``[auth] two_factor = "off"`` or ``"device-approval"``, outside every
``otp-appended`` group) can never renew a device's trust themselves: the id service then
quarantines such a device for an approval (``policy.devices``, ``*-approval-required``) instead
of challenging them for a code they cannot give. That is safe, but rarely what was meant:

* ``default_action = "allowed"`` (or a rule allowing devices) then allows nothing by itself for
  those users — an **error** when it holds for every user (no ``otp-appended`` anywhere);
* approved devices of those users are quarantined again every ``trust_lifetime_hours`` — a
  **warning**.

Each finding says what to change. With ``[id_service] url`` the device policy and the
second-factor settings are the id service's, so a gateway's configuration is not checked.
"""

from __future__ import annotations

from typing import Any

from ..policy.devices import PartnershipState
from ..policy.twofactor import Mode


def device_policy_findings(config: Any) -> list[tuple[str, str]]:
    """``[(level, message)]`` with level ``"error"`` or ``"warning"``; empty when consistent."""
    dc = config.devices
    if not dc.enabled or (config.id_service is not None and config.id_service.url):
        return []
    a = config.auth
    if a.two_factor == Mode.OTP_APPENDED:
        return []  # every user gives a code (a group saying "off" does not relax it)
    otp_groups = [g for g, m in a.two_factor_groups if m == Mode.OTP_APPENDED]
    nobody = not otp_groups
    if nobody:
        who = f'no user can ([auth] two_factor = "{a.two_factor}" and no two_factor_groups entry is "otp-appended")'
    else:
        who = f'users outside {", ".join(otp_groups)} cannot ([auth] two_factor = "{a.two_factor}")'
    fix_sf = (
        'set [auth] two_factor = "otp-appended" (or a two_factor_groups entry for them) and '
        "enrol them (ucgate otp enrol USER)"
    )
    allowing_rules = [r.name for r in dc.rules if r.action == PartnershipState.ALLOWED]
    entries = [("[devices]", dict(dc.defaults))]
    entries += [(f'[[policy]] group "{p.group}"', {**dc.defaults, **p.settings}) for p in dc.policies]
    out: list[tuple[str, str]] = []
    for where, s in entries:
        if not s.get("require_second_factor", True):
            continue
        hours = float(s.get("trust_lifetime_hours", 24.0))
        fix_rsf = f"set require_second_factor = false in {where}"
        allowed = s.get("default_action", PartnershipState.QUARANTINED) == PartnershipState.ALLOWED
        if allowed or allowing_rules:
            what = 'default_action = "allowed"' if allowed else f"device rules that allow ({', '.join(allowing_rules)})"
            out.append(
                (
                    "error" if nobody and allowed else "warning",
                    f"{where}: {what} with require_second_factor = true, but a device's trust "
                    f"needs a second factor at sign-in (ASP + one-time code), which {who}: "
                    f"their new devices are quarantined for an administrator's approval "
                    f"(new-device-approval-required), and approved ones again every "
                    f"{hours:g} h (trust-expired-approval-required). To let them in, "
                    f"{fix_rsf}; to keep the second factor, {fix_sf}.",
                )
            )
        else:
            out.append(
                (
                    "warning",
                    f"{where}: require_second_factor = true, but {who} give a second factor at "
                    f"sign-in: their devices, once approved, are trusted {hours:g} h and then "
                    f"quarantined for a new approval (trust-expired-approval-required). "
                    f"To keep them approved, {fix_rsf}; to let them renew the trust "
                    f"themselves, {fix_sf}.",
                )
            )
    return out
