"""Two-factor policy: which mode applies to a user, and whether a sign-in may proceed.

Pure: facts in, a :class:`TwoFactorDecision` out. No clocks, stores or secrets here; the id
service (``ucgate.id.otp``) checks codes and passes the outcome as a :class:`Factor`.

Modes (per user, else per group, else the configured default):

``off``
    The ASP alone signs in.
``otp-appended``
    The user types the ASP **immediately followed by** the 6-digit TOTP code in the password
    field, with no separator: ``k7mq-2xpa-h9dt-e4wn123456`` or ``k7mq2xpah9dte4wn123456``.
    No separator because NTLM clients hash exactly what was typed, and every accepted variant
    costs NTLM candidates (see :func:`appended_candidates`); "the six digits come last" is also
    the rule that needs no explaining. The ASP's own spellings (dashes or not, either case) are
    kept. The split is unambiguous: the code is the last 6 characters and must be ASCII digits.
``device-approval``
    The second factor is an approval of the device (partnership) by the user or an admin;
    the sign-in waits (is challenged) until then.

A partnership that passed the second factor within its trust lifetime is ``trusted``: then the
second factor is not asked again (see DESIGN.md, "trust lifetime").
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum

# What authenticator apps implement (RFC 6238 defaults as used by Google Authenticator & co).
OTP_DIGITS = 6
# The NTLM acceptor's limit on candidate NT hashes (ucgate.protocols.ntlm.MAX_CANDIDATES).
MAX_NTLM_CANDIDATES = 32
# Separates ASP id and time step in a candidate id: "<asp id>@<step>".
_STEP_SEP = "@"
# Symbols of a recovery code (``ucgate.id.otp.RECOVERY_SYMBOLS``; shown as abcd-efgh-jkmn).
RECOVERY_CODE_SYMBOLS = 12


class Mode(StrEnum):
    OFF = "off"
    OTP_APPENDED = "otp-appended"
    DEVICE_APPROVAL = "device-approval"


class Factor(StrEnum):
    """What is known about the second factor of this sign-in."""

    NONE = "none"  # nothing presented (no code appended, no approval asked yet)
    OTP_OK = "otp-ok"
    OTP_WRONG = "otp-wrong"
    OTP_REPLAYED = "otp-replayed"
    RECOVERY_OK = "recovery-ok"
    RECOVERY_WRONG = "recovery-wrong"
    APPROVED = "approved"
    APPROVAL_PENDING = "approval-pending"
    APPROVAL_REFUSED = "approval-refused"


class Outcome(StrEnum):
    ALLOW = "allow"
    NEED_FACTOR = "need-factor"  # challenge: the sign-in may succeed once the factor is given
    DENY = "deny"


@dataclass(frozen=True, slots=True)
class TwoFactorDecision:
    outcome: Outcome
    reason: str

    @property
    def allowed(self) -> bool:
        return self.outcome is Outcome.ALLOW


# Reason codes (audit log, UI). Refusals never tell the client which part was wrong.
REASONS = {
    "2fa-off": "the user's mode is off: the ASP alone signs in",
    "2fa-trusted": "the device passed the second factor within its trust lifetime",
    "ok-otp": "a valid, unused TOTP code was given",
    "ok-recovery-code": "an unused recovery code was given (it is now spent)",
    "ok-device-approved": "the device is approved",
    "otp-required": "otp-appended mode and no code was given",
    "otp-wrong": "the code matches no time step of the window",
    "otp-replayed": "the code's time step was already used",
    "otp-not-enrolled": "otp-appended mode and the user has no active TOTP secret",
    "recovery-code-wrong": "no unused recovery code matches",
    "device-approval-pending": "waiting for the device to be approved",
    "device-approval-refused": "the device was refused",
}

_MODE_PRECEDENCE = (Mode.OTP_APPENDED, Mode.DEVICE_APPROVAL, Mode.OFF)


def resolve_mode(user_mode: str | None, group_modes: Iterable[str], default: str) -> Mode:
    """The mode that applies: the user's own setting, else the strictest of its groups'
    (``otp-appended`` > ``device-approval`` > ``off``: a group saying ``off`` does not relax
    another group), else ``default`` (the configured default mode; no default of its own, so
    a caller that forgets it does not silently get ``off``).

    Raises:
        ValueError: an unknown mode name.
    """
    if user_mode is not None:
        return Mode(user_mode)
    modes = {Mode(m) for m in group_modes}
    for m in _MODE_PRECEDENCE:
        if m in modes:
            return m
    return Mode(default)


def decide(
    mode: Mode | str, *, enrolled: bool, factor: Factor, trusted: bool, allow_unenrolled: bool
) -> TwoFactorDecision:
    """Whether a sign-in whose first factor (the ASP) already verified may proceed.

    Every argument is required: each one decides the outcome, and a default is one mistyped
    call away from failing open.

    Args:
        mode: the user's mode (:func:`resolve_mode`).
        enrolled: the user has an active (confirmed) TOTP secret.
        factor: what the second factor gave.
        trusted: the partnership passed the second factor within its trust lifetime.
        allow_unenrolled: roll-out grace: let ``otp-appended`` users without a secret in with
            the ASP alone (reason ``otp-not-enrolled``, audited) instead of refusing them.
    """
    mode = Mode(mode)
    if mode is Mode.OFF:
        return TwoFactorDecision(Outcome.ALLOW, "2fa-off")
    if trusted:
        return TwoFactorDecision(Outcome.ALLOW, "2fa-trusted")
    if mode is Mode.DEVICE_APPROVAL:
        return _device_approval(factor)
    if factor is Factor.RECOVERY_OK:  # valid even after a lost phone, hence before "enrolled"
        return TwoFactorDecision(Outcome.ALLOW, "ok-recovery-code")
    if not enrolled:
        return TwoFactorDecision(Outcome.ALLOW if allow_unenrolled else Outcome.DENY, "otp-not-enrolled")
    return {
        Factor.OTP_OK: TwoFactorDecision(Outcome.ALLOW, "ok-otp"),
        Factor.OTP_WRONG: TwoFactorDecision(Outcome.DENY, "otp-wrong"),
        Factor.OTP_REPLAYED: TwoFactorDecision(Outcome.DENY, "otp-replayed"),
        Factor.RECOVERY_WRONG: TwoFactorDecision(Outcome.DENY, "recovery-code-wrong"),
    }.get(factor, TwoFactorDecision(Outcome.NEED_FACTOR, "otp-required"))


def _device_approval(factor: Factor) -> TwoFactorDecision:
    if factor is Factor.APPROVED:
        return TwoFactorDecision(Outcome.ALLOW, "ok-device-approved")
    if factor is Factor.APPROVAL_REFUSED:
        return TwoFactorDecision(Outcome.DENY, "device-approval-refused")
    return TwoFactorDecision(Outcome.NEED_FACTOR, "device-approval-pending")


# --- otp-appended: Basic (the password is known) -------------------------------------------
def split_appended(password: str) -> tuple[str, str] | None:
    """Split ``ASP‖code`` as typed into ``(asp_part, code)``; None when the password does not
    end in 6 ASCII digits after at least one other character. The ASP part is returned as typed
    (``ucgate.id.asp.canonical_asp`` then accepts dashes and either case).

    >>> split_appended("k7mq-2xpa-h9dt-e4wn123456")
    ('k7mq-2xpa-h9dt-e4wn', '123456')
    """
    if len(password) <= OTP_DIGITS:
        return None
    head, code = password[:-OTP_DIGITS], password[-OTP_DIGITS:]
    if not (code.isascii() and code.isdigit()):
        return None
    return head, code


def split_recovery(password: str) -> tuple[str, str] | None:
    """Split ``ASP‖recovery code`` as typed into ``(asp_part, code_part)``: the code is the
    last :data:`RECOVERY_CODE_SYMBOLS` symbols, dashes and spaces not counted (so
    ``k7mq-2xpa-h9dt-e4wnabcd-efgh-jkmn`` and ``k7mq2xpah9dte4wnabcdefghjkmn`` both split);
    None when there is nothing before them. The parts are checked by the ASP and recovery-code
    canonicalisation, which drop the dashes.

    >>> split_recovery("k7mq-2xpa-h9dt-e4wnabcd-efgh-jkmn")
    ('k7mq-2xpa-h9dt-e4wn', 'abcd-efgh-jkmn')
    """
    n = 0
    for i in range(len(password) - 1, -1, -1):
        if password[i] not in "- ":
            n += 1
            if n == RECOVERY_CODE_SYMBOLS:
                head = password[:i].rstrip("- ")
                return (head, password[i:]) if head else None
    return None


# --- otp-appended: NTLM (only a hash of what was typed reaches us) -------------------------
# Recovery codes cannot be NTLM candidates: the store keeps only keyed hashes of them (the
# plaintext is shown once), and an NTLM client sends a hash of ASP‖code, which can only be
# checked by recomputing it from a known plaintext — enumerating 2^60 codes is not an option.
def candidate_id(asp_id: str, step: int | None) -> str:
    """The id of an NTLM candidate in otp-appended mode: ``"<asp id>@<step>"`` for ASP+code,
    ``"<asp id>@"`` for the ASP alone (so that it is told apart: ``otp-required``)."""
    return f"{asp_id}{_STEP_SEP}{'' if step is None else step}"


def parse_candidate_id(cid: str) -> tuple[str, int | None]:
    """``(asp id, time step)`` of a candidate id; step None for a plain (no code) candidate."""
    asp_id, sep, step = cid.rpartition(_STEP_SEP)
    if sep and not step:
        return asp_id, None
    if not sep or not step.isdigit():
        return cid, None
    return asp_id, int(step)


def appended_candidates(
    asp_spellings: Sequence[tuple[str, str]],
    codes_in_window: Sequence[tuple[int, str]],
    *,
    limit: int = MAX_NTLM_CANDIDATES,
) -> list[tuple[str, str]]:
    """The passwords an NTLM client may have hashed in otp-appended mode, each with its id.

    Args:
        asp_spellings: ``(asp id, spelling)`` in preference order, e.g. for each usable ASP
            ``ucgate.id.asp.spellings(canonical)`` (shown, canonical, SHOWN, CANONICAL).
        codes_in_window: ``(time step, code)`` in preference order, e.g.
            ``OtpService.window_codes`` (current, previous, next).
        limit: at most this many are returned (the NTLM acceptor's MAX_CANDIDATES).
    Returns:
        ``[(candidate_id(asp_id, step), spelling + code)]``. Each spelling rank is emitted for
        every ASP and code before the next rank, so when ``limit`` cuts, it drops the least
        likely spellings (upper case) of the extra ASPs, never a time step of the window: one
        ASP gives 4 × 3 = 12 candidates, two give 24, a third fits with its 2 lower-case
        spellings. Hash each password with ``ucgate.protocols.ntlm.nt_hash``; after a match,
        :func:`parse_candidate_id` gives the ASP id and the step to mark used.
    """
    by_asp: dict[str, list[str]] = {}
    for asp_id, spelling in asp_spellings:
        by_asp.setdefault(asp_id, []).append(spelling)
    out: list[tuple[str, str]] = []
    depth = max((len(v) for v in by_asp.values()), default=0)
    for rank in range(depth):
        for asp_id, spells in by_asp.items():
            if rank >= len(spells):
                continue
            for step, code in codes_in_window:
                if len(out) >= limit:
                    return out
                out.append((candidate_id(asp_id, step), spells[rank] + code))
    return out
