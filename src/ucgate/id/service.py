"""The id service, in-process: who may sign in, with what credentials, and the audit trail.

Implements :class:`ucgate.id.api.CredentialService` for the gateway:

1. the failure budget is checked first, keyed by the name as typed, so that a spray costs
   neither directory queries nor AD lockouts (smart lockout, ``policy.lockout``);
2. the user is resolved — from Active Directory when a directory is configured (every
   sign-in reads the account state fresh: disabled, locked, expired, password must change,
   and the group gate), else from the local user table;
3. the credential is checked against the user's ASPs (and, only when allowed, the domain
   password by an LDAP bind — never more often than the budget lets through);
4. the outcome is recorded: budget, last use of the ASP, audit event.

The store and the directory are blocking, so each call runs in a worker thread. The failure
budget is pure and in memory (one node; shared across nodes with issue 5).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..policy.account import check_sign_in
from ..policy.lockout import FailureBudget
from ..policy.twofactor import Mode
from ..protocols import ntlm as ntlm_proto
from .api import AttemptContext, NtlmHandshake, NtlmVerdict, Verdict
from .directory import DirectoryError

log = logging.getLogger("ucgate.id")

DIRECTORY_RETRY_AFTER = 30.0
# Reasons that say nothing about the password: they do not count against the budget.
_NOT_A_GUESS = frozenset({"throttled", "directory-unavailable"})


@dataclass(frozen=True, slots=True)
class NtlmCandidates:
    """NT hashes the NTLM verifier may try for a user, or a refusal before trying any."""

    user: str | None  # canonical name, None for an unknown user (candidates are then decoys)
    candidates: list[tuple[str, bytes]] = field(default_factory=list, repr=False)
    refused: Verdict | None = None


def budget_key(typed: str) -> str:
    """A cheap, stable key for the failure budget from a name as typed (``DOMAIN\\user``,
    ``user@upn`` or ``user``): the account part, lower-cased. Resolution happens later."""
    name = typed.strip()
    if "\\" in name:
        name = name.split("\\", 1)[1]
    elif "@" in name:
        name = name.split("@", 1)[0]
    return name.lower()[:256]


class IdService:
    """Credential checks for the gateway.

    Args:
        asps: an ``AspService``.
        users: a ``UserService`` (local users; directory users get a local row on first use so
            that ASPs can hang off it).
        budget: the failure budget.
        audit: an ``AuditLog``.
        directory: a ``Directory`` or None (local users only).
        required_group: only members (nested) of this group may use the gateway.
        allow_domain_passwords: accept the directory password (Basic only: NTLM cannot be
            verified by an LDAP bind).
    """

    def __init__(
        self,
        *,
        asps: Any,
        users: Any,
        budget: FailureBudget,
        audit: Any,
        directory: Any = None,
        required_group: str | None = None,
        allow_domain_passwords: bool = False,
        second_factor: Any = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.asps = asps
        self.users = users
        self.budget = budget
        self.audit = audit
        self.directory = directory
        self.required_group = required_group
        self.allow_domain_passwords = allow_domain_passwords and directory is not None
        self.clock = clock
        self.second_factor = second_factor  # id.twofactor.SecondFactor, or None (2FA off)
        self._lock = threading.Lock()

    # --- steps ---------------------------------------------------------------------------
    def _budget_check(self, key: str, ctx: AttemptContext) -> Verdict | None:
        with self._lock:
            d = self.budget.check(key, ctx.client_ip, self.clock())
        if d.allowed:
            return None
        return Verdict(False, "throttled", retry_after=max(d.retry_after, 1.0))

    def _resolve(self, typed: str) -> tuple[str | None, Verdict | None, Any]:
        """(canonical user, refusal or None, directory user or None)."""
        if self.directory is None:
            rec = self.users.resolve(typed)
            if rec is None:
                return None, Verdict(False, "unknown-user"), None
            if not rec.enabled:
                return rec.username, Verdict(False, "user-disabled"), None
            return rec.username, None, None
        try:
            du = self.directory.resolve(typed)
            if du is None:
                return None, Verdict(False, "unknown-user"), None
            state = self.directory.account_state(du)  # fresh: never cached
            in_group = (self.directory.is_member(du, self.required_group)
                        if self.required_group else True)
        except DirectoryError as e:
            if e.reason in ("invalid-name", "ambiguous"):
                return None, Verdict(False, e.reason), None
            log.error("directory unavailable for a sign-in: %s", e.reason)
            return None, Verdict(False, "directory-unavailable", retry_after=DIRECTORY_RETRY_AFTER), None
        sam = du.sam_account_name.lower()
        decision = check_sign_in(state, in_required_group=in_group)
        if not decision.allowed:
            return sam, Verdict(False, decision.reason), du
        rec = self.users.get(sam)
        if rec is None:
            rec = self.users.add(sam, upn=du.upn, sip_uri=du.sip_uri, display_name=du.display_name,
                                 source="directory")
        elif not rec.enabled:  # blocked in ucgate without touching AD
            return sam, Verdict(False, "user-disabled"), du
        return sam, None, du

    def _record(self, user: str, ctx: AttemptContext, verdict: Verdict, key: str) -> None:
        if verdict.reason not in _NOT_A_GUESS:
            with self._lock:
                if verdict.ok:
                    self.budget.record_success(key, ctx.client_ip, self.clock())
                else:
                    self.budget.record_failure(key, ctx.client_ip, self.clock())
        self.audit.record(
            "sign-in",
            actor=user,
            user=user,
            device=ctx.device_id,
            service=ctx.service,
            client_address=ctx.client_ip,
            result="allow" if verdict.ok else "deny",
            reason=verdict.reason,
            method=ctx.method,
            credential=verdict.credential_id,
            user_agent=ctx.user_agent,
        )
        if verdict.ok and verdict.credential_id and verdict.credential_id != "domain-password":
            self.asps.mark_used(verdict.credential_id, self.clock())

    # --- CredentialService (blocking halves) -------------------------------------------------
    def verify_password_sync(self, name: str, password: str, ctx: AttemptContext) -> Verdict:
        key = budget_key(name)
        refused = self._budget_check(key, ctx)
        if refused is not None:
            self._record(key, ctx, refused, key)
            return refused
        user, refused, du = self._resolve(name)
        if refused is not None:
            # Same work for an unknown or refused user as for a wrong ASP, so that response
            # times do not tell them apart.
            _decoy_work(password)
            self._record(user or key, ctx, refused, key)
            return refused
        assert user is not None
        mode = self.second_factor.mode(user, du) if self.second_factor else Mode.OFF
        if mode is Mode.OTP_APPENDED:
            verdict = self.second_factor.check_password(user, password, ctx.device_id, self.asps, mode)
            self._record(user, ctx, verdict, key)
            return verdict
        match = self.asps.verify_password(user, password, ctx.device_id)
        if match is not None:
            verdict = Verdict(True, "ok", user=user, credential_id=str(match.asp_id))
        elif self.allow_domain_passwords and du is not None and self.directory.verify_password(du, password):
            verdict = Verdict(True, "ok-domain-password", user=user, credential_id="domain-password")
        else:
            verdict = Verdict(False, "wrong-password")
        self._record(user, ctx, verdict, key)
        return verdict

    def ntlm_candidates_sync(self, name: str, domain: str, ctx: AttemptContext) -> NtlmCandidates:
        if not name:
            return NtlmCandidates(None, refused=Verdict(False, "anonymous"))
        typed = f"{domain}\\{name}" if domain else name
        key = budget_key(typed)
        refused = self._budget_check(key, ctx)
        if refused is not None:
            self._record(key, ctx, refused, key)
            return NtlmCandidates(None, refused=refused)
        user, refused, du = self._resolve(typed)
        if refused is not None and refused.reason == "directory-unavailable":
            self._record(key, ctx, refused, key)
            return NtlmCandidates(None, refused=refused)
        if refused is not None:
            # Decoys: the verifier does the same HMACs as for a real user, then fails; the
            # refusal reason is recorded by ntlm_result.
            return NtlmCandidates(None, [(f"decoy:{refused.reason}", os.urandom(16)) for _ in range(4)])
        assert user is not None
        if self.second_factor and self.second_factor.mode(user, du) is Mode.OTP_APPENDED:
            cands = self.second_factor.ntlm_candidates(user, ctx.device_id, self.asps)
            if not cands:
                return NtlmCandidates(None, [("decoy:otp-not-enrolled", os.urandom(16))])
            return NtlmCandidates(user, cands)
        cands = [(str(asp_id), h) for asp_id, h in self.asps.nt_hash_candidates(user, ctx.device_id)]
        return NtlmCandidates(user, cands or [("decoy:no-asp", os.urandom(16))])

    def ntlm_result_sync(self, name: str, ctx: AttemptContext, candidates: NtlmCandidates,
                         matched: str | None, reason: str) -> Verdict:
        key = budget_key(name)
        decoy = next((cid for cid, _ in candidates.candidates if cid.startswith("decoy:")), None)
        if candidates.user is None:
            verdict = Verdict(False, decoy.split(":", 1)[1] if decoy else "unknown-user")
        elif matched is None or matched.startswith("decoy:"):
            verdict = Verdict(False, reason if reason not in ("ok", "") else "wrong-password")
        elif "@" in matched and self.second_factor:  # "<asp id>@<time step>": ASP + TOTP code
            verdict = self.second_factor.ntlm_matched(candidates.user, matched, ctx.device_id)
        else:
            verdict = Verdict(True, "ok", user=candidates.user, credential_id=matched)
        self._record(candidates.user or key, ctx, verdict, key)
        return verdict

    def verify_ntlm_sync(self, handshake: NtlmHandshake, ctx: AttemptContext) -> NtlmVerdict:
        """Rebuild the gateway's acceptor from the messages, verify against the candidates,
        record the outcome."""
        h = handshake
        try:
            acceptor = ntlm_proto.NtlmAcceptor.from_messages(
                negotiate=h.negotiate, challenge=h.challenge, server_challenge=h.server_challenge,
                challenge_time=h.challenge_time, channel_binding_data=h.channel_binding_data,
                extended_protection=h.extended_protection, max_clock_skew=h.max_clock_skew,
            )
            who = acceptor.identify(h.authenticate)
        except ntlm_proto.NtlmError as e:
            # The gateway makes the same structural checks first, so this is a gateway bug or
            # a forged call: refused, not counted as a guess for anyone.
            log.warning("NTLM handshake from %s refused before lookup: %s", ctx.client_ip, e.reason)
            return NtlmVerdict(Verdict(False, f"ntlm-{e.reason}"))
        cands = self.ntlm_candidates_sync(who.user, who.domain, ctx)
        if cands.refused is not None:
            return NtlmVerdict(cands.refused)
        matched: str | None = None
        reason = "ok"
        result = None
        try:
            result = acceptor.verify([hsh for _, hsh in cands.candidates], ntlm_proto.filetime(self.clock()))
            matched = cands.candidates[result.candidate_index][0]
        except ntlm_proto.NtlmError as e:
            reason = e.reason
        verdict = self.ntlm_result_sync(who.user, ctx, cands, matched, reason)
        return NtlmVerdict(verdict, result if verdict.ok else None)

    def check_account_sync(self, name: str, ctx: AttemptContext) -> Verdict:
        """A sign-in whose credential was verified elsewhere (a Kerberos ticket, which outlives
        a disable or lock in AD by up to its lifetime): the account must still be usable and in
        the group, read fresh from the directory. Audited like any sign-in."""
        key = budget_key(name)
        user, refused, _ = self._resolve(name)
        verdict = refused or Verdict(True, "ok", user=user)
        self._record(user or key, ctx, verdict, key)
        return verdict

    # --- CredentialService (async) -------------------------------------------------------
    async def verify_password(self, name: str, password: str, ctx: AttemptContext) -> Verdict:
        return await asyncio.to_thread(self.verify_password_sync, name, password, ctx)

    async def record_refusal(self, user: str, ctx: AttemptContext, reason: str) -> None:
        """The gateway refused a sign-in this service had allowed (e.g. a SPNEGO mechListMIC
        that did not verify with the session key): record the denial too."""
        await asyncio.to_thread(self._record, user, ctx, Verdict(False, reason), budget_key(user))

    async def check_account(self, name: str, ctx: AttemptContext) -> Verdict:
        return await asyncio.to_thread(self.check_account_sync, name, ctx)

    async def verify_ntlm(self, handshake: NtlmHandshake, ctx: AttemptContext) -> NtlmVerdict:
        return await asyncio.to_thread(self.verify_ntlm_sync, handshake, ctx)


def _decoy_work(password: str) -> None:
    # About what comparing against a user's ASPs costs (a few AES-GCM decryptions).
    hashlib.pbkdf2_hmac("sha256", password.encode("utf-8", "replace"), b"ucgate-decoy", 8)
