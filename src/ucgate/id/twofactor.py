"""The second factor at sign-in: which mode applies to a user, and the otp-appended checks.

``otp-appended``: the user types the ASP immediately followed by the current 6-digit TOTP code
in the password field, so clients that cannot do passive (web) sign-in still give a second
factor. Basic splits the two; NTLM (which only proves knowledge of a hash) tries the NT hashes
of "ASP + code" for the codes of the window, and of the ASP alone (so that a missing code is
``otp-required``, as with Basic, not a wrong password). A code's time step is accepted once
(replay protection in the store).

A **recovery code** takes the TOTP code's place after the ASP (Basic, and the OAuth password
grant, which verifies like Basic), with or without its dashes; each works once. Not with NTLM:
the store keeps only keyed hashes of the codes, and an NTLM client sends a hash of what was
typed, which can only be matched by recomputing it from known plaintexts (the TOTP window has
3 codes; recovery codes are 60-bit secrets nobody can enumerate). A device that signed in with
a recovery code over Basic is trusted as after a TOTP code.

Clients save the password and send it again on every new connection, so after a successful
second factor the (user, device) pair is trusted for ``trust_hours``: the saved "ASP + code"
keeps working from *that device id* until then. The trust is kept in memory (a restart asks for
a fresh code); without a device id (UCWA before application creation, desktop clients) there
is no trust and each new connection needs a fresh code. The ``device-approval`` mode is decided
by the device partnership (a new device waits for approval), not here.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..policy.twofactor import (
    MAX_NTLM_CANDIDATES,
    Factor,
    Mode,
    appended_candidates,
    candidate_id,
    decide,
    parse_candidate_id,
    resolve_mode,
    split_appended,
    split_recovery,
)
from ..protocols.ntlm import nt_hash
from .api import Verdict

STEP_SECONDS = 30
MAX_TRUSTED = 100_000  # bound the in-memory trust table
# The "step" a trust from a recovery code is kept under: no TOTP code belongs to it.
RECOVERY_STEP = -1


@dataclass(frozen=True)
class TwoFactorSettings:
    default_mode: str = "off"
    group_modes: tuple[tuple[str, str], ...] = ()  # (group DN or name, mode), any order
    trust_hours: float = 24.0


class SecondFactor:
    def __init__(
        self, otp: Any, settings: TwoFactorSettings, *, directory: Any = None, clock: Callable[[], float]
    ) -> None:
        self.otp = otp
        self.settings = settings
        self.directory = directory
        self.clock = clock
        self._trust: dict[tuple[str, str], tuple[int, float]] = {}  # (user, device) -> (step, until)
        self._lock = threading.Lock()

    # --- mode and trust ----------------------------------------------------------------------
    def mode(self, user: str, directory_user: Any = None) -> Mode:
        groups = []
        if self.settings.group_modes and directory_user is not None and self.directory is not None:
            groups = [m for g, m in self.settings.group_modes if self.directory.is_member(directory_user, g)]
        return resolve_mode(None, groups, self.settings.default_mode)

    def _trusted_step(self, user: str, device_id: str | None) -> int | None:
        if not device_id:
            return None
        with self._lock:
            hit = self._trust.get((user, device_id))
        if hit is None or hit[1] < self.clock():
            return None
        return hit[0]

    def _trust_device(self, user: str, device_id: str | None, step: int) -> None:
        if not device_id:
            return
        with self._lock:
            if len(self._trust) >= MAX_TRUSTED:
                now = self.clock()
                for k in [k for k, (_, until) in self._trust.items() if until < now]:
                    del self._trust[k]
                if len(self._trust) >= MAX_TRUSTED:
                    self._trust.pop(next(iter(self._trust)))
            self._trust[(user, device_id)] = (step, self.clock() + self.settings.trust_hours * 3600)

    # --- Basic ------------------------------------------------------------------------------
    def check_password(self, user: str, password: str, device_id: str | None, asps: Any, mode: Mode) -> Verdict:
        """Verify ``password`` (ASP, or ASP + code) for an otp-appended user."""
        trusted = self._trusted_step(user, device_id)
        enrolled = self.otp.is_enrolled(user)
        parts = split_appended(password)
        match = asps.verify_password(user, parts[0], device_id) if parts else None
        if parts and match is not None:  # the ASP before the code, so a wrong ASP never spends a step
            if trusted is not None:
                return Verdict(True, "2fa-trusted", user=user, credential_id=str(match.asp_id))
            r = self.otp.verify(user, parts[1], self.clock())
            d = decide(mode, enrolled=enrolled, factor=r.factor, trusted=False, allow_unenrolled=False)
            if d.allowed:
                self._trust_device(user, device_id, r.step if r.step is not None else 0)
                return Verdict(True, d.reason, user=user, credential_id=str(match.asp_id))
            return Verdict(False, d.reason)
        recovery = split_recovery(password)
        match = asps.verify_password(user, recovery[0], device_id) if recovery else None
        if recovery and match is not None:  # the ASP before a recovery code: spent only after the ASP matched
            if trusted is not None:
                return Verdict(True, "2fa-trusted", user=user, credential_id=str(match.asp_id))
            r = self.otp.use_recovery_code(user, recovery[1])
            d = decide(mode, enrolled=enrolled, factor=r.factor, trusted=False, allow_unenrolled=False)
            if d.allowed:
                self._trust_device(user, device_id, RECOVERY_STEP)
                return Verdict(True, d.reason, user=user, credential_id=str(match.asp_id))
            return Verdict(False, d.reason)
        whole = asps.verify_password(user, password, device_id)
        if whole is not None:  # the ASP alone (or an ASP that ends in six digits)
            d = decide(mode, enrolled=enrolled, factor=Factor.NONE, trusted=trusted is not None, allow_unenrolled=False)
            if d.allowed:
                return Verdict(True, d.reason, user=user, credential_id=str(whole.asp_id))
            return Verdict(False, d.reason)
        return Verdict(False, "wrong-password")

    # --- NTLM -------------------------------------------------------------------------------
    def ntlm_candidates(self, user: str, device_id: str | None, asps: Any) -> list[tuple[str, bytes]]:
        """NT hashes of ASP spellings + the window's codes (and the trusted step's code), then
        of the ASP spellings alone (a match says ``otp-required``, or ``2fa-trusted`` from a
        trusted device, as for Basic). Two plain spellings per ASP (shown, canonical) are kept
        within the acceptor's limit; the upper-case ones only if there is room."""
        codes = self.otp.window_codes(user, self.clock())
        if not codes:
            return []
        trusted = self._trusted_step(user, device_id)
        if trusted is not None and trusted >= 0 and trusted not in {s for s, _ in codes}:
            codes = self.otp.window_codes(user, trusted * STEP_SECONDS + 1)[:1] + codes
        spellings: Sequence[tuple[str, str]] = asps.usable_spellings(user, device_id)
        by_rank: dict[str, int] = {}
        plain: list[tuple[int, str, str]] = []
        for asp_id, spelling in spellings:
            rank = by_rank[asp_id] = by_rank.get(asp_id, -1) + 1
            plain.append((rank, candidate_id(asp_id, None), spelling))
        plain.sort(key=lambda t: t[0])  # stable: by spelling rank, then ASP
        reserve = sum(1 for rank, _, _ in plain if rank < 2)
        out = appended_candidates(spellings, codes, limit=MAX_NTLM_CANDIDATES - reserve)
        out += [(cid, pw) for _, cid, pw in plain][: MAX_NTLM_CANDIDATES - len(out)]
        return [(cid, nt_hash(pw)) for cid, pw in out]

    def ntlm_matched(self, user: str, candidate_id: str, device_id: str | None) -> Verdict:
        """A candidate matched: accept its time step once (or the device's trusted step)."""
        asp_id, step = parse_candidate_id(candidate_id)
        if step is None:  # the ASP alone: enough only from a device trusted by a second factor
            if self._trusted_step(user, device_id) is not None:
                return Verdict(True, "2fa-trusted", user=user, credential_id=asp_id)
            return Verdict(False, "otp-required")
        if step == self._trusted_step(user, device_id):
            return Verdict(True, "2fa-trusted", user=user, credential_id=asp_id)
        r = self.otp.accept_step(user, step)
        if not r.ok:
            return Verdict(False, r.reason)
        self._trust_device(user, device_id, step)
        return Verdict(True, "ok-otp", user=user, credential_id=asp_id)
