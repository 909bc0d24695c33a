"""The id service, in-process: who may sign in, with what credentials, and the audit trail.

Implements :class:`ucgate.id.api.CredentialService` for the gateway:

1. the user is resolved — from Active Directory when a directory is configured (every
   sign-in reads the account state fresh: disabled, locked, expired, password must change,
   and the group gate; these are searches by the service account, which never touch the
   user's bad-password count), else from the local user table;
2. one failure is *reserved* in the failure budget (``policy.lockout``; in the store for a
   pool, ``store.budget``), keyed by the resolved account — the directory's objectGUID (or
   SID), the local user's id; a name that resolves to nothing by its normalised form — so
   every name form of one account shares one budget, and N concurrent attempts can never
   let more than the budget through to the check below;
3. the credential is checked against the user's ASPs (and, only when allowed, the domain
   password by an LDAP bind — never more often than the budget lets through);
4. the outcome settles the reservation (a success gives it back) and is audited; the ASP's
   last use is recorded.

The store and the directory are blocking, so each call runs in a worker thread. A store that
cannot be reached refuses the sign-in as ``store-unavailable`` (503 + Retry-After, fail closed).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from .. import metrics
from ..errors import UcgateError
from ..policy.account import check_sign_in
from ..policy.lockout import BudgetDecision, Outcome, Reservation, ip_key
from ..policy.twofactor import Mode
from ..protocols import ntlm as ntlm_proto
from ..store import DuplicateError
from .api import AttemptContext, NtlmHandshake, NtlmVerdict, Verdict
from .directory import DirectoryError
from .users import resolve_login_name
from .writer import WriterBusy

log = logging.getLogger("ucgate.id")

DIRECTORY_RETRY_AFTER = 30.0
# How long an attempt waits for units held by other attempts in flight (see IdService._reserve).
IN_FLIGHT_WAIT = 2.0
STORE_RETRY_AFTER = 5.0
# Reasons that say nothing about the password: they do not count against the budget.
_NOT_A_GUESS = frozenset(
    {"throttled", "directory-unavailable", "store-unavailable", "registrar-unavailable"}
)  # the last: SIP, the Access Edge did not decide


def _outcome(verdict: Verdict) -> Outcome:
    if verdict.ok:
        return Outcome.SUCCESS
    return Outcome.NOT_A_GUESS if verdict.reason in _NOT_A_GUESS else Outcome.FAILURE


# one-transaction attempts (StoreBudget.attempt) at once per process: each may hold two pooled
# connections; 6 x 2 leaves the pool's 15 room for the sign-in writer and the event follower
_ATTEMPT_SLOTS = threading.BoundedSemaphore(6)


class StoreUnavailable(UcgateError):
    """The store could not be reached (or failed) during a sign-in."""

    def __init__(self, detail: str = "") -> None:
        super().__init__("store-unavailable", detail, message=detail or "store-unavailable")


@dataclass(frozen=True, slots=True)
class NtlmCandidates:
    """NT hashes the NTLM verifier may try for a user, or a refusal before trying any."""

    user: str | None  # canonical name, None for an unknown user (candidates are then decoys)
    candidates: list[tuple[str, bytes]] = field(default_factory=list, repr=False)
    refused: Verdict | None = None
    reservation: Reservation | None = None  # the unit of budget this attempt holds


@dataclass(frozen=True, slots=True)
class Resolved:
    """A name as typed, resolved: the budget key of the account, and why it is refused (if)."""

    key: str  # "g:<objectGUID>", "s:<SID>", "l:<local id>", or "n:<normalised name>"
    user: str | None  # canonical (lower-case) sAMAccountName
    refused: Verdict | None = None
    directory_user: Any = None


def budget_key(typed: str) -> str:
    """The budget key of a name that resolves to no account: its normalised form (``DOMAIN\\user``,
    ``user@upn``, ``sip:user@domain`` and ``user`` all give the account part, lower-cased)."""
    name = typed.strip()
    if name[:4].lower() == "sip:":
        name = name[4:]
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
        budget: the failure budget: ``store.budget.StoreBudget`` (a pool) or
            ``policy.lockout.FailureBudget`` (one process), keyed by account.
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
        budget: Any,
        audit: Any,
        directory: Any = None,
        required_group: str | None = None,
        allow_domain_passwords: bool = False,
        second_factor: Any = None,
        clock: Callable[[], float] = time.time,
        store_name: str = "the store",
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
        self.store_name = store_name
        # the in-memory budget needs a lock; the store's statements are atomic by themselves
        self._lock: Any = threading.Lock() if not getattr(budget, "atomic", False) else contextlib.nullcontext()
        # units of budget held by attempts in flight in this process, by bucket (see _reserve)
        self._inflight: dict[str, int] = {}
        self._inflight_cv = threading.Condition()

    # --- steps ---------------------------------------------------------------------------
    def _resolve(self, typed: str) -> Resolved:
        """The account a typed name refers to, its budget key, and why it is refused (if)."""
        if self.directory is None:
            rec = self._local_user(typed)
            if rec is None:
                return Resolved(f"n:{budget_key(typed)}", None, Verdict(False, "unknown-user"))
            key = f"l:{rec.id}"
            if not rec.enabled:
                return Resolved(key, rec.username, Verdict(False, "user-disabled"))
            return Resolved(key, rec.username)
        try:
            du = self.directory.resolve(typed)
            if du is None:
                return Resolved(f"n:{budget_key(typed)}", None, Verdict(False, "unknown-user"))
            state = self.directory.account_state(du)  # fresh: never cached
            in_group = self.directory.is_member(du, self.required_group) if self.required_group else True
        except DirectoryError as e:
            if e.reason in ("invalid-name", "ambiguous"):
                return Resolved(f"n:{budget_key(typed)}", None, Verdict(False, e.reason))
            log.error("directory unavailable for a sign-in: %s", e.reason)
            return Resolved(
                f"n:{budget_key(typed)}",
                None,
                Verdict(False, "directory-unavailable", retry_after=DIRECTORY_RETRY_AFTER),
            )
        sam = du.sam_account_name.lower()
        key = f"g:{du.object_guid.lower()}" if du.object_guid else f"s:{du.object_sid}" if du.object_sid else f"n:{sam}"
        decision = check_sign_in(state, in_required_group=in_group)
        if not decision.allowed:
            return Resolved(key, sam, Verdict(False, decision.reason), du)
        rec = self.users.get(sam)
        if rec is None:
            try:
                rec = self.users.add(
                    sam, upn=du.upn, sip_uri=du.sip_uri, display_name=du.display_name, source="directory"
                )
            except DuplicateError:  # a concurrent first sign-in (any node) made the row
                rec = self.users.get(sam)
                if rec is None:
                    raise
        if not rec.enabled:  # blocked in ucgate without touching AD
            return Resolved(key, sam, Verdict(False, "user-disabled"), du)
        return Resolved(key, sam, None, du)

    def _local_user(self, typed: str) -> Any:
        """The local user ``typed`` names: from the sign-in cache (``ucgate.id.cache``, the entry
        the ASP check reads next; dropped by every event about the user, a disable included)
        when it holds an enabled record for a plain or ``DOMAIN\\user`` name, else from the
        store (a UPN or SIP address, an uncached or disabled user: refusals are read fresh,
        as the ASP check's are). Saves the sign-in's one store read (~140 us)."""
        rec = self._cached_user(typed)
        return rec if rec is not None else self.users.resolve(typed)

    def _cached_user(self, typed: str) -> Any:
        """:meth:`_local_user`'s answer from the sign-in cache: an enabled record, or None."""
        cache = getattr(self.asps, "cache", None)
        domains = getattr(self.users, "netbios_domains", None)
        if cache is not None and domains is not None and typed.strip()[:4].lower() != "sip:":
            sam = resolve_login_name(typed, netbios_domains=domains)  # a UPN gives None here
            if sam is not None:
                rec = cache.peek_user(sam)
                if rec is not None and rec.enabled and rec.username == sam:
                    return rec
        return None

    def _held(self, r: Reservation) -> tuple[str, ...]:
        return (f"u:{r.account}", f"ip:{ip_key(r.ip)}") if r.charged_ip else (f"u:{r.account}",)

    def _reserve(
        self, who: Resolved, ctx: AttemptContext, check: Callable[[], Outcome] | None = None
    ) -> Reservation | Verdict:
        """Hold one failure for this attempt before any check that can reach the directory.

        With ``check`` (a computation, see :meth:`_at_once`): the budget's ``attempt`` reserves,
        runs it and settles with its outcome in one transaction; the unit is never in flight.

        A bucket that is full only of *other attempts in flight* in this process (say six
        devices of one user signing in at once after a failover, or many users behind one NAT)
        is waited for, up to :data:`IN_FLIGHT_WAIT`: those units come back when their checks
        succeed. A bucket full of failures is refused at once."""
        deadline = time.monotonic() + IN_FLIGHT_WAIT
        while True:
            with self._lock:  # the in-memory budget is not thread-safe; the store one is atomic
                if check is not None:
                    # the attempt holds a pooled connection while check() may take another (a
                    # refusal re-read, a cache miss): bounded so that they can never exhaust the
                    # engine's pool (5 + 10 overflow) and wait on each other
                    with _ATTEMPT_SLOTS:
                        r = self.budget.attempt(who.key, ctx.client_ip, self.clock(), check)
                else:
                    r = self.budget.reserve(who.key, ctx.client_ip, self.clock())
            if check is not None and not isinstance(r, BudgetDecision):
                return r
            if not isinstance(r, BudgetDecision):
                with self._inflight_cv:
                    for k in self._held(r):
                        self._inflight[k] = self._inflight.get(k, 0) + 1
                return r
            bucket = f"u:{who.key}" if r.reason == "user-throttled" else f"ip:{ip_key(ctx.client_ip)}"
            with self._inflight_cv:
                left = deadline - time.monotonic()
                if not self._inflight.get(bucket) or left <= 0:
                    break
                self._inflight_cv.wait(min(left, 0.25))
        metrics.count_throttle(r.reason)  # ucgate_budget_throttles_total
        return Verdict(False, "throttled", retry_after=max(r.retry_after, 1.0))

    def _settle(self, reservation: Reservation | None, verdict: Verdict) -> None:
        if reservation is None:
            return
        try:
            with self._lock:
                self.budget.settle(reservation, _outcome(verdict), self.clock())
        finally:
            with self._inflight_cv:
                for k in self._held(reservation):
                    n = self._inflight.get(k, 0) - 1
                    if n > 0:
                        self._inflight[k] = n
                    else:
                        self._inflight.pop(k, None)
                self._inflight_cv.notify_all()

    def _audit(
        self,
        user: str,
        ctx: AttemptContext,
        verdict: Verdict,
        used: tuple[str, dt.datetime] | None = None,
        wait: bool = True,
    ) -> None:
        # through the sign-in writer (group commit, ucgate.id.writer) where there is one; with it
        # the ASP's last use (``used``, given only then); ``wait=False``: WriterBusy at once
        # when its queue is full (the sign-ins answered on the event loop, see _now)
        extra: dict[str, Any] = {} if used is None else {"asp_used": used}
        if not wait:
            extra["wait"] = False
        getattr(self.audit, "record_later", self.audit.record)(
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
            **extra,
        )
        # counted once audited (queued): a sign-in the loop hands back to the thread is counted there
        metrics.count_id_sign_in(str(ctx.method), verdict.ok, verdict.reason)  # ucgate_id_sign_ins_total

    def _record(
        self, who: Resolved | str, ctx: AttemptContext, verdict: Verdict, reservation: Reservation | None
    ) -> None:
        self._settle(reservation, verdict)
        self._note(who, ctx, verdict)

    def _note(self, who: Resolved | str, ctx: AttemptContext, verdict: Verdict, wait: bool = True) -> None:
        """What follows a settled attempt: the audit event, the ASP's last use (with a sign-in
        writer, both in one hand-off to it)."""
        name = who if isinstance(who, str) else (who.user or who.key[2:])
        if not (verdict.ok and verdict.credential_id and verdict.credential_id != "domain-password"):
            self._audit(name, ctx, verdict, wait=wait)
        elif getattr(self.audit, "writer", None) is not None:
            at = dt.datetime.fromtimestamp(self.clock(), dt.UTC)
            self._audit(name, ctx, verdict, (verdict.credential_id, at), wait)
        else:
            self._audit(name, ctx, verdict)
            self.asps.mark_used(verdict.credential_id, self.clock())

    def _store_down(self, what: str, ctx: AttemptContext, e: Exception) -> Verdict:
        log.error(
            "store unavailable during a %s sign-in from %s (%s): %s",
            what,
            ctx.client_ip,
            self.store_name,
            " ".join(str(getattr(e, "orig", e) or e).split())[:200],
        )
        return Verdict(False, "store-unavailable", retry_after=STORE_RETRY_AFTER)

    # --- an attempt in two halves (the portal's sign-in checks the password itself) -----------
    def begin_attempt(self, typed: str, ctx: AttemptContext) -> tuple[Resolved, Reservation | Verdict]:
        """Resolve ``typed`` and reserve its unit of budget; a Verdict when refused already
        (throttled, directory or store unavailable)."""
        try:
            who = self._resolve(typed)
        except (SQLAlchemyError, WriterBusy) as e:
            return Resolved(f"n:{budget_key(typed)}", None), self._store_down(ctx.method, ctx, e)
        return who, self._reserve_or_verdict(who, ctx)

    def _reserve_or_verdict(self, who: Resolved, ctx: AttemptContext) -> Reservation | Verdict:
        """begin_attempt's second half: the unit, or why there is none."""
        try:
            if who.refused is not None and who.refused.reason == "directory-unavailable":
                return who.refused
            return self._reserve(who, ctx)
        except (SQLAlchemyError, WriterBusy) as e:
            return self._store_down(ctx.method, ctx, e)

    def end_attempt(self, who: Resolved, ctx: AttemptContext, reservation: Reservation, verdict: Verdict) -> None:
        """Settle and audit an attempt begun with :meth:`begin_attempt`."""
        try:
            self._record(who, ctx, verdict, reservation)
        except (SQLAlchemyError, WriterBusy) as e:
            self._store_down(ctx.method, ctx, e)

    def release_attempt(self, reservation: Reservation) -> None:
        """Give back the unit an attempt begun with :meth:`begin_attempt` held when it turned
        out not to be a guess (a SIP handshake leg the Access Edge continued); not audited."""
        try:
            self._settle(reservation, Verdict(False, "throttled"))  # settles as NOT_A_GUESS
        except SQLAlchemyError as e:
            log.error("store unavailable while releasing a reservation (%s): %s", self.store_name, type(e).__name__)

    def resolve_account(self, typed: str) -> Resolved:
        """The account a typed name refers to (its budget key, why it is refused), touching no
        budget and auditing nothing: the SIP relay compares the NTLM user with the From's."""
        return self._resolve(typed)

    # --- CredentialService (blocking halves) -------------------------------------------------
    def verify_password_sync(self, name: str, password: str, ctx: AttemptContext) -> Verdict:
        try:
            return self._verify_password(name, password, ctx)
        except (SQLAlchemyError, WriterBusy) as e:
            return self._store_down(ctx.method, ctx, e)

    def _at_once(self, user: str | None) -> bool:
        """Whether an attempt's check is a computation that may run inside the budget's
        transaction (``attempt``: reserve, check, settle at once): local users only (no
        directory bind), no second factor that writes (an OTP step), a budget that offers it."""
        if self.directory is not None or getattr(self.budget, "attempt", None) is None:
            return False
        return self.second_factor is None or user is None or self.second_factor.mode(user, None) is Mode.OFF

    def _attempt(
        self,
        who: Resolved,
        ctx: AttemptContext,
        check: Callable[[], Verdict],
        audit_as: Callable[[], str] | None = None,
    ) -> Verdict:
        """Reserve, ``check()``, settle in one transaction of the budget (see :meth:`_at_once`),
        then audit: the same outcomes as begin_attempt / check / _record."""
        box: dict[str, Any] = {}

        def run() -> Outcome:
            box["checked"] = True
            try:
                verdict = box["verdict"] = check()
            except Exception as e:  # noqa: BLE001 - re-raised once the attempt is committed
                box["error"] = e  # the unit stays charged, as the two-call path's finally does
                return Outcome.FAILURE
            return _outcome(verdict)

        try:
            r = self._reserve(who, ctx, run)
        except (SQLAlchemyError, WriterBusy) as e:
            # the transaction was rolled back: nothing charged, nothing learnt (fail closed)
            verdict = self._store_down(ctx.method, ctx, e)
            self._audit(who.user or who.key[2:], ctx, verdict)
            return verdict
        if isinstance(r, Verdict):  # throttled
            self._audit(who.user or who.key[2:], ctx, r)
            return r
        actor: Resolved | str = audit_as() if audit_as is not None else who
        if "error" in box:
            self._note(actor, ctx, Verdict(False, "wrong-password"))
            raise box["error"]
        verdict = box["verdict"]
        self._note(actor, ctx, verdict)
        return verdict

    def _verify_password(self, name: str, password: str, ctx: AttemptContext) -> Verdict:
        if self._at_once(None):
            try:
                who = self._resolve(name)
            except (SQLAlchemyError, WriterBusy) as e:
                who = Resolved(f"n:{budget_key(name)}", None)
                verdict = self._store_down(ctx.method, ctx, e)
                self._audit(who.user or who.key[2:], ctx, verdict)
                return verdict
            if who.user is None or self._at_once(who.user):
                return self._attempt(who, ctx, lambda: self._check_password(who, password, ctx))
            held = self._reserve_or_verdict(who, ctx)
        else:
            who, held = self.begin_attempt(name, ctx)
        if isinstance(held, Verdict):
            self._audit(who.user or who.key[2:], ctx, held)
            return held
        verdict = Verdict(False, "wrong-password")
        try:
            verdict = self._check_password(who, password, ctx)
        except DirectoryError as e:  # the domain-password bind could not be made
            log.error("directory unavailable for a sign-in: %s", e.reason)
            verdict = Verdict(False, "directory-unavailable", retry_after=DIRECTORY_RETRY_AFTER)
        finally:
            self._record(who, ctx, verdict, held)
        return verdict

    def _check_password(self, who: Resolved, password: str, ctx: AttemptContext) -> Verdict:
        if who.refused is not None:
            # Same work for an unknown or refused user as for a wrong ASP, so that response
            # times do not tell them apart.
            _decoy_work(password)
            return who.refused
        user, du = who.user, who.directory_user
        assert user is not None
        mode = self.second_factor.mode(user, du) if self.second_factor else Mode.OFF
        if mode is Mode.OTP_APPENDED:
            return self.second_factor.check_password(user, password, ctx.device_id, self.asps, mode)
        match = self.asps.verify_password(user, password, ctx.device_id)
        if match is not None:
            return Verdict(True, "ok", user=user, credential_id=str(match.asp_id))
        if self.allow_domain_passwords and du is not None and self.directory.verify_password(du, password):
            return Verdict(True, "ok-domain-password", user=user, credential_id="domain-password")
        return Verdict(False, "wrong-password")

    def ntlm_candidates_sync(self, name: str, domain: str, ctx: AttemptContext) -> NtlmCandidates:
        if not name:
            return NtlmCandidates(None, refused=Verdict(False, "anonymous"))
        typed = f"{domain}\\{name}" if domain else name
        who, held = self.begin_attempt(typed, ctx)
        if isinstance(held, Verdict):
            self._audit(who.user or who.key[2:], ctx, held)
            return NtlmCandidates(None, refused=held)
        return self._ntlm_candidates(who, held, ctx)

    def _ntlm_candidates(self, who: Resolved, held: Reservation | None, ctx: AttemptContext) -> NtlmCandidates:
        if who.refused is not None:
            # Decoys: the verifier does the same HMACs as for a real user, then fails; the
            # refusal reason is recorded by ntlm_result.
            return NtlmCandidates(
                None, [(f"decoy:{who.refused.reason}", os.urandom(16)) for _ in range(4)], reservation=held
            )
        user, du = who.user, who.directory_user
        assert user is not None
        if self.second_factor and self.second_factor.mode(user, du) is Mode.OTP_APPENDED:
            cands = self.second_factor.ntlm_candidates(user, ctx.device_id, self.asps)
            if not cands:
                return NtlmCandidates(None, [("decoy:otp-not-enrolled", os.urandom(16))], reservation=held)
            return NtlmCandidates(user, cands, reservation=held)
        cands = [(str(asp_id), h) for asp_id, h in self.asps.nt_hash_candidates(user, ctx.device_id)]
        return NtlmCandidates(user, cands or [("decoy:no-asp", os.urandom(16))], reservation=held)

    def ntlm_result_sync(
        self, name: str, ctx: AttemptContext, candidates: NtlmCandidates, matched: str | None, reason: str
    ) -> Verdict:
        verdict = self._ntlm_verdict(ctx, candidates, matched, reason)
        self._record(candidates.user or budget_key(name), ctx, verdict, candidates.reservation)
        return verdict

    def _ntlm_verdict(
        self, ctx: AttemptContext, candidates: NtlmCandidates, matched: str | None, reason: str
    ) -> Verdict:
        decoy = next((cid for cid, _ in candidates.candidates if cid.startswith("decoy:")), None)
        if candidates.user is None:
            verdict = Verdict(False, decoy.split(":", 1)[1] if decoy else "unknown-user")
        elif matched is None or matched.startswith("decoy:"):
            verdict = Verdict(False, reason if reason not in ("ok", "") else "wrong-password")
        elif "@" in matched and self.second_factor:  # "<asp id>@<time step>": ASP + TOTP code
            verdict = self.second_factor.ntlm_matched(candidates.user, matched, ctx.device_id)
        else:
            verdict = Verdict(True, "ok", user=candidates.user, credential_id=matched)
        return verdict

    def verify_ntlm_sync(self, handshake: NtlmHandshake, ctx: AttemptContext) -> NtlmVerdict:
        try:
            return self._verify_ntlm(handshake, ctx)
        except (SQLAlchemyError, WriterBusy) as e:
            return NtlmVerdict(self._store_down(ctx.method, ctx, e))

    def _verify_ntlm(self, handshake: NtlmHandshake, ctx: AttemptContext) -> NtlmVerdict:
        """Rebuild the gateway's acceptor from the messages, verify against the candidates,
        record the outcome."""
        h = handshake
        try:
            acceptor = _acceptor(h)
            who = acceptor.identify(h.authenticate)
        except ntlm_proto.NtlmError as e:
            # The gateway makes the same structural checks first, so this is a gateway bug or
            # a forged call: refused, not counted as a guess for anyone.
            log.warning("NTLM handshake from %s refused before lookup: %s", ctx.client_ip, e.reason)
            return NtlmVerdict(Verdict(False, f"ntlm-{e.reason}"))
        if who.user and self._at_once(None):
            return self._verify_ntlm_at_once(acceptor, who.user, who.domain, ctx)
        cands = self.ntlm_candidates_sync(who.user, who.domain, ctx)
        if cands.refused is not None:
            return NtlmVerdict(cands.refused)
        return self._ntlm_verify(acceptor, who.user, ctx, cands)

    def _verify_ntlm_at_once(self, acceptor: Any, name: str, domain: str, ctx: AttemptContext) -> NtlmVerdict:
        """:meth:`_verify_ntlm` for a local user: the candidates and the verification (HMACs
        in memory) run inside the budget's one transaction (:meth:`_attempt`)."""
        typed = f"{domain}\\{name}" if domain else name
        try:
            who = self._resolve(typed)
        except (SQLAlchemyError, WriterBusy) as e:
            verdict = self._store_down(ctx.method, ctx, e)
            self._audit(budget_key(typed), ctx, verdict)
            return NtlmVerdict(verdict)
        if who.user is not None and not self._at_once(who.user):  # an OTP user: the two-call path
            cands = self._ntlm_candidates_reserved(who, ctx)
            if cands.refused is not None:
                return NtlmVerdict(cands.refused)
            return self._ntlm_verify(acceptor, name, ctx, cands)
        box: dict[str, Any] = {}

        def check() -> Verdict:
            cands = self._ntlm_candidates(who, None, ctx)
            box["user"] = cands.user
            matched, reason, result = None, "ok", None
            try:
                result = acceptor.verify([hsh for _, hsh in cands.candidates], ntlm_proto.filetime(self.clock()))
                matched = cands.candidates[result.candidate_index][0]
            except ntlm_proto.NtlmError as e:
                reason = e.reason
            verdict = self._ntlm_verdict(ctx, cands, matched, reason)
            box["result"] = result if verdict.ok else None
            return verdict

        verdict = self._attempt(who, ctx, check, audit_as=lambda: box.get("user") or budget_key(name))
        return NtlmVerdict(verdict, box.get("result") if verdict.ok else None)

    def _ntlm_candidates_reserved(self, who: Resolved, ctx: AttemptContext) -> NtlmCandidates:
        held = self._reserve_or_verdict(who, ctx)
        if isinstance(held, Verdict):
            self._audit(who.user or who.key[2:], ctx, held)
            return NtlmCandidates(None, refused=held)
        return self._ntlm_candidates(who, held, ctx)

    def _ntlm_verify(self, acceptor: Any, name: str, ctx: AttemptContext, cands: NtlmCandidates) -> NtlmVerdict:
        matched: str | None = None
        reason = "ok"
        result = None
        try:
            result = acceptor.verify([hsh for _, hsh in cands.candidates], ntlm_proto.filetime(self.clock()))
            matched = cands.candidates[result.candidate_index][0]
        except ntlm_proto.NtlmError as e:
            reason = e.reason
        verdict = self.ntlm_result_sync(name, ctx, cands, matched, reason)
        return NtlmVerdict(verdict, result if verdict.ok else None)

    def check_account_sync(self, name: str, ctx: AttemptContext) -> Verdict:
        """A sign-in whose credential was verified elsewhere (a Kerberos ticket, which outlives
        a disable or lock in AD by up to its lifetime): the account must still be usable and in
        the group, read fresh from the directory. Audited like any sign-in; no password was
        guessed, so the failure budget is not touched."""
        try:
            who = self._resolve(name)
            verdict = who.refused or Verdict(True, "ok", user=who.user)
            self._audit(who.user or who.key[2:], ctx, verdict)
            return verdict
        except (SQLAlchemyError, WriterBusy) as e:
            return self._store_down(ctx.method, ctx, e)

    def record_refusal_sync(self, user: str, ctx: AttemptContext, reason: str) -> None:
        """The gateway refused a sign-in this service had allowed: a failure, charged after the fact."""
        try:
            who = self._resolve(user)
            with self._lock:
                self.budget.charge(who.key, ctx.client_ip, self.clock())
            self._audit(who.user or user, ctx, Verdict(False, reason))
        except (SQLAlchemyError, WriterBusy) as e:
            self._store_down(ctx.method, ctx, e)

    # --- sign-ins answered on the event loop ------------------------------------------------
    def _now_ready(self) -> Any:
        """The budget's ``attempt_now`` when a sign-in may be answered without waiting: local
        users (no directory bind), a budget that offers it (SQLite's file), a sign-in writer
        with room for the audit event now; else None."""
        attempt_now = getattr(self.budget, "attempt_now", None)
        writer = getattr(self.audit, "writer", None)
        if attempt_now is None or writer is None or not writer.has_room() or not self._at_once(None):
            return None
        return attempt_now

    def _now(self, attempt_now: Any, who: Resolved, ctx: AttemptContext, verdict: Verdict) -> bool:
        """The attempt of a success found in the sign-in cache, without waiting: the budget's
        unit reserved and settled in one transaction (a full bucket refuses it: False, nothing
        charged, and the worker thread's attempt then answers "throttled" with its in-flight
        wait), then the audit event and the ASP's last use queued for the writer. False — and
        nothing that the worker thread's attempt, made from the start, would not make again —
        whenever something would wait: SQLite's lock, the writer's queue filled by a thread in
        the meantime (a success's budget transaction is idempotent: the account's bucket
        emptied, the IP made familiar), a store error."""
        r = attempt_now(who.key, ctx.client_ip, self.clock(), Outcome.SUCCESS)
        if not isinstance(r, Reservation):
            return False
        try:
            self._note(who, ctx, verdict, wait=False)
        except WriterBusy:
            return False
        return True

    def verify_password_now(self, name: str, password: str, ctx: AttemptContext) -> Verdict | None:
        """:meth:`verify_password`'s verdict when it is a success that needs no waiting: a local
        user and an ASP that the sign-in cache holds (a refusal is only ever made from a fresh
        read, in the worker thread), no second factor for the user, and :meth:`_now`. None —
        and nothing charged, audited or counted — for anything else (the caller then awaits
        :meth:`verify_password`). Called on the gateway's event loop: no store read, no wait."""
        attempt_now = self._now_ready()
        if attempt_now is None:
            return None
        rec = self._cached_user(name)
        if rec is None or not self._at_once(rec.username):
            return None
        match = self.asps.verify_password(rec.username, password, ctx.device_id, only_cached=True)
        if match is None:
            return None
        verdict = Verdict(True, "ok", user=rec.username, credential_id=str(match.asp_id))
        return verdict if self._now(attempt_now, Resolved(f"l:{rec.id}", rec.username), ctx, verdict) else None

    def verify_ntlm_now(self, handshake: NtlmHandshake, ctx: AttemptContext) -> NtlmVerdict | None:
        """:meth:`verify_ntlm`'s answer when it is a success that needs no waiting, as
        :meth:`verify_password_now`: the NTLMv2 response verified against the NT hashes of the
        ASPs the sign-in cache holds (on an acceptor rebuilt from the messages, as the worker
        thread's attempt does). None — nothing charged, audited or counted — for anything else."""
        attempt_now = self._now_ready()
        if attempt_now is None:
            return None
        h = handshake
        if not isinstance(h.parsed, ntlm_proto.Parsed):  # a remote gateway's: parsed in the worker thread
            return None
        try:
            acceptor = _acceptor(h)
            ident = acceptor.identify(h.authenticate)
        except ntlm_proto.NtlmError:
            return None  # refused in the worker thread, with its log line
        if not ident.user:
            return None
        rec = self._cached_user(f"{ident.domain}\\{ident.user}" if ident.domain else ident.user)
        if rec is None or not self._at_once(rec.username):
            return None
        cands = self.asps.nt_hash_candidates(rec.username, ctx.device_id, only_cached=True)
        if not cands:
            return None
        try:
            result = acceptor.verify([hsh for _, hsh in cands], ntlm_proto.filetime(self.clock()))
        except ntlm_proto.NtlmError:
            return None  # a refusal: the worker thread's attempt makes it (charged, audited)
        verdict = Verdict(True, "ok", user=rec.username, credential_id=str(cands[result.candidate_index][0]))
        if not self._now(attempt_now, Resolved(f"l:{rec.id}", rec.username), ctx, verdict):
            return None
        return NtlmVerdict(verdict, result)

    # --- CredentialService (async) -------------------------------------------------------
    async def verify_password(self, name: str, password: str, ctx: AttemptContext) -> Verdict:
        return await asyncio.to_thread(self.verify_password_sync, name, password, ctx)

    async def record_refusal(self, user: str, ctx: AttemptContext, reason: str) -> None:
        """The gateway refused a sign-in this service had allowed (e.g. a SPNEGO mechListMIC
        that did not verify with the session key): record the denial too."""
        await asyncio.to_thread(self.record_refusal_sync, user, ctx, reason)

    async def check_account(self, name: str, ctx: AttemptContext) -> Verdict:
        return await asyncio.to_thread(self.check_account_sync, name, ctx)

    async def verify_ntlm(self, handshake: NtlmHandshake, ctx: AttemptContext) -> NtlmVerdict:
        return await asyncio.to_thread(self.verify_ntlm_sync, handshake, ctx)


def _acceptor(h: NtlmHandshake) -> ntlm_proto.NtlmAcceptor:
    """The gateway's acceptor rebuilt from the handshake's messages (with the gateway's parse
    when an in-process gateway handed it over)."""
    return ntlm_proto.NtlmAcceptor.from_messages(
        negotiate=h.negotiate,
        challenge=h.challenge,
        server_challenge=h.server_challenge,
        challenge_time=h.challenge_time,
        channel_binding_data=h.channel_binding_data,
        extended_protection=h.extended_protection,
        max_clock_skew=h.max_clock_skew,
        parsed=h.parsed if isinstance(h.parsed, ntlm_proto.Parsed) else None,
    )


def _decoy_work(password: str) -> None:
    # About what comparing against a user's ASPs costs (a few AES-GCM decryptions).
    hashlib.pbkdf2_hmac("sha256", password.encode("utf-8", "replace"), b"ucgate-decoy", 8)
