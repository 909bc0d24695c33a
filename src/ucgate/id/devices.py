"""Device partnerships in the id service: decide, store, audit, notify; admin operations.

:meth:`DeviceService.check` is what the gateway asks once per (connection, device): given the
signed-in user, the request's :class:`~ucgate.protocols.devices.DeviceFacts`, the service and
whether a second factor came with the request, it runs the pure
:func:`ucgate.policy.devices.decide` with the user's per-group policy
(:mod:`ucgate.policy.groups`: the first listed group the user is in wins), stores the outcome
(a new partnership, last seen, renewed trust), writes one audit event and, for a newly
quarantined device, notifies the user.

Before the rules, two checks that are about *who* rather than *which device*:

- ``claimed_user``: a request that names a user (EAS ``User=``, CertProv ``Entity``) must name
  the signed-in one; otherwise it is denied (``device-user-mismatch``) and nothing is stored.
- an ASP bound to a device (``asp create --device``) is only good from that device: from any
  other id it is denied (``asp-bound-to-other-device``). The gateway's authenticator already
  refuses it where the device id is in the request head (EAS); this catches the rest (UCWA's
  ``endpointId`` and CertProv's ``DeviceId`` are in the body, read after authentication).

Admin operations (:meth:`approve`, :meth:`block`, :meth:`unblock`, :meth:`wipe`,
:meth:`delete`) are audited; block, wipe and delete publish :class:`DeviceBlocked` so that
every gateway closes that device's live connections at once.

Blocking (the store) runs in the caller's thread; :meth:`check_async` is for the event loop.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..policy import devices as policy
from ..policy.groups import GroupPolicy as GroupEntry
from ..policy.groups import effective_policy
from ..policy.twofactor import Mode
from ..protocols.devices import DeviceFacts
from ..store.partnerships import PartnershipRecord, PartnershipStore, device_key
from ..store.repository import DuplicateError
from ..store.rules import RuleStore
from .events import RULES_CHANGED, DeviceBlocked, Pending
from .notify import DeviceNotice, MultiNotifier, Notifier, NullNotifier, SmtpNotifier, WebhookNotifier
from .rules import device_rule, group_entry

log = logging.getLogger("ucgate.id.devices")

# Keys of a [[policy]] entry / [devices] that become a policy.devices.GroupPolicy.
DEVICE_POLICY_KEYS = (
    "max_devices",
    "trust_lifetime_hours",
    "certprov",
    "default_action",
    "problem_action",
    "require_second_factor",
)
# last_seen is written at most this often per partnership (a busy device must not write on
# every connection).
LAST_SEEN_GRANULARITY = dt.timedelta(minutes=1)


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class DeviceError(Exception):
    """An admin operation that cannot be done (unknown partnership...)."""


@dataclass(frozen=True)
class DeviceCheck:
    """The gateway's answer for one device: ``outcome`` (allow, quarantine, deny, challenge;
    ``unavailable`` only from a remote checker that could not reach the id service),
    ``reason`` (audit code), ``wipe`` (answer the EAS remote wipe), ``device_id`` (normalised,
    None when the request gave none), ``trusted_until`` (cache an allow no longer than this)."""

    outcome: str
    reason: str
    device_id: str | None
    wipe: bool = False
    trusted_until: dt.datetime | None = None
    partnership_id: int | None = None
    rule: str = ""  # the device rule that decided, if any (audit, the remote API)
    # > 0 with outcome "unavailable": the id service could not be asked (a remote gateway's
    # RemoteDeviceChecker); the gate answers 503 with Retry-After, never forwards.
    retry_after: float = 0.0

    @property
    def allowed(self) -> bool:
        return self.outcome == "allow"


def _same_user(claimed: str, user: str, aliases: Iterable[str]) -> bool:
    """Does ``claimed`` (``alice``, ``DOMAIN\\alice``, ``alice@x``, ``sip:alice@x``) name the
    signed-in ``user``? Compared with the user's known names (UPN, SIP URI) when given, else
    by the account part."""
    c = claimed.strip().lower()
    if c.startswith("sip:"):
        c = c[4:]
    known = {a.lower().removeprefix("sip:") for a in aliases if a}
    if c in known:
        return True
    account = c.rpartition("\\")[2]
    if "@" in account:
        # a full address must be one of the user's; the account part alone is not enough
        return not known and account.partition("@")[0] == user.lower()
    return account == user.lower()


class DeviceService:
    """Partnerships: the gateway's check and the admin operations.

    Args:
        store: the partnership rows.
        audit: an ``AuditLog``.
        bus: an ``EventBus`` (DeviceBlocked goes there).
        rules: device access rules, in order.
        defaults: the [devices] settings (keys of :data:`DEVICE_POLICY_KEYS`).
        group_policies: [[policy]] entries, in priority order (first group the user is in wins).
        is_member: (user, group) -> bool; nested membership is the callable's business.
        user_aliases: user -> the user's other names (UPN, SIP URI) for the claimed-user check.
        asp_device: ASP id -> the device it is bound to (None: unbound or unknown).
        notifier: where quarantine notices go.
        clock: aware UTC now (tests pass a fake).
        second_factor_available: user -> can the user give a second factor at sign-in
            (otp-appended with an enrolled authenticator)? When not, a device that would be
            challenged is quarantined for approval instead (``policy.devices``). None: yes.
        rule_store: the store's device rules and group policies (``ucgate.store.rules``), in
            force after ``rules`` and ``group_policies`` (the configuration file's); reloaded on
            a ``rules-changed`` event (:meth:`on_event_row`, ``ucgate.id.rules``). None: the
            file's only.
    """

    def __init__(
        self,
        store: PartnershipStore,
        audit: Any,
        bus: Any = None,
        *,
        rules: Sequence[policy.DeviceRule] = (),
        defaults: Mapping[str, Any] | None = None,
        group_policies: Sequence[GroupEntry] = (),
        is_member: Callable[[str, str], bool] | None = None,
        user_aliases: Callable[[str], Iterable[str]] | None = None,
        asp_device: Callable[[str], str | None] | None = None,
        notifier: Notifier | None = None,
        clock: Callable[[], dt.datetime] = _utcnow,
        second_factor_available: Callable[[str], bool] | None = None,
        rule_store: Any = None,
    ) -> None:
        # the store's rules and group policies (ucgate.id.rules), after the file's
        self.rule_store = rule_store
        self._store_rules: tuple[policy.DeviceRule, ...] = ()
        self._store_policies: tuple[GroupEntry, ...] = ()
        self._reload_after: float | None = None  # a failed reload is retried from then on
        self.second_factor_available = second_factor_available or (lambda user: True)
        self.store = store
        self.audit = audit
        self.bus = bus
        self.rules = tuple(rules)
        self.defaults = dict(defaults or {})
        self.group_policies = tuple(group_policies)
        self.is_member = is_member or (lambda user, group: False)
        self.user_aliases = user_aliases or (lambda user: ())
        self.asp_device = asp_device or (lambda asp_id: None)
        self.notifier: Notifier = notifier or NullNotifier()
        self.clock = clock
        self._rule_groups = frozenset(g for r in self.rules for g in r.groups)
        for entry in (self.defaults, *(p.settings for p in self.group_policies)):
            self._policy_from(entry)  # fail at start, not at the first sign-in
        if rule_store is not None:
            self.reload_store_rules()

    # --- the rules in force: the configuration file's, then the store's (ucgate.id.rules) ----
    @property
    def rules(self) -> tuple[policy.DeviceRule, ...]:
        return self._file_rules + self._store_rules

    @rules.setter
    def rules(self, value: Sequence[policy.DeviceRule]) -> None:
        """Sets the configuration file's rules (the store's stay)."""
        self._file_rules = tuple(value)

    @property
    def group_policies(self) -> tuple[GroupEntry, ...]:
        return self._file_policies + self._store_policies

    @group_policies.setter
    def group_policies(self, value: Sequence[GroupEntry]) -> None:
        """Sets the configuration file's [[policy]] entries (the store's stay)."""
        self._file_policies = tuple(value)

    @property
    def file_rules(self) -> tuple[policy.DeviceRule, ...]:
        return self._file_rules

    @property
    def file_policies(self) -> tuple[GroupEntry, ...]:
        return self._file_policies

    @property
    def _rule_groups(self) -> frozenset[str]:
        return frozenset(g for r in self.rules for g in r.groups)

    @_rule_groups.setter
    def _rule_groups(self, value: frozenset[str]) -> None:
        pass  # derived from the rules in force

    def reload_store_rules(self) -> bool:
        """Read the store's rules and group policies again (a ``rules-changed`` event, start).
        A row this version cannot apply is skipped with an error in the log; the store down:
        the lists in force stay, and the next decision tries again (at most once a second)."""
        if self.rule_store is None:
            return True
        try:
            stored_rules, stored_policies = self.rule_store.rules(), self.rule_store.policies()
        except Exception as e:  # noqa: BLE001 - the store is down: keep what is in force
            log.error(
                "device rules: cannot read the store's rules (%s); the rules in force stay until it answers",
                type(e).__name__,
            )
            self._reload_after = time.monotonic() + 1.0
            return False
        rules, policies = [], []
        for r in stored_rules:
            try:
                rules.append(device_rule(r))
            except ValueError as e:
                log.error("device rule %d (%s) in the store is skipped: %s", r.id, r.name, e)
        for p in stored_policies:
            try:
                policies.append(group_entry(p))
            except (ValueError, TypeError) as e:
                log.error("group policy %d (%s) in the store is skipped: %s", p.id, p.name, e)
        self._store_rules, self._store_policies = tuple(rules), tuple(policies)
        self._reload_after = None
        log.info(
            "device rules: %d from the configuration, %d from the store; group policies: %d + %d",
            len(self._file_rules),
            len(rules),
            len(self._file_policies),
            len(policies),
        )
        return True

    def on_event_row(self, row: Any) -> None:
        """``EventBus.subscribe_rows``: reload on ``rules-changed``."""
        if row.kind == RULES_CHANGED:
            self.reload_store_rules()

    def set_policy(
        self,
        *,
        rules: Sequence[policy.DeviceRule],
        defaults: Mapping[str, Any] | None,
        group_policies: Sequence[GroupEntry],
    ) -> None:
        """Replace the [devices] rules, defaults and [[policy]] (a reload, ``ucgate.reload``):
        validated first (ValueError), then swapped; decisions from then on use them."""
        rules, defaults, group_policies = tuple(rules), dict(defaults or {}), tuple(group_policies)
        for entry in (defaults, *(p.settings for p in group_policies)):
            self._policy_from(entry)
        self.rules, self.defaults, self.group_policies = rules, defaults, group_policies
        self._rule_groups = frozenset(g for r in rules for g in r.groups)

    # --- policy ----------------------------------------------------------------------
    @staticmethod
    def _policy_from(settings: Mapping[str, Any]) -> policy.GroupPolicy:
        return policy.GroupPolicy(**{k: v for k, v in settings.items() if k in DEVICE_POLICY_KEYS})

    def policy_for(self, user: str) -> tuple[policy.GroupPolicy, frozenset[str], str]:
        """(device policy, the user's groups that rules name, the policy's name)."""
        eff = effective_policy(self.group_policies, lambda g: self.is_member(user, g), self.defaults)
        groups = frozenset(g for g in self._rule_groups if self.is_member(user, g))
        return self._policy_from(eff.settings), groups, eff.name

    # --- the gateway's question ------------------------------------------------------------
    def check(
        self,
        user: str,
        facts: DeviceFacts,
        *,
        service: str,
        second_factor_ok: bool = False,
        credential_id: str | None = None,
        client_address: str | None = None,
    ) -> DeviceCheck:
        now = self.clock()
        if self._reload_after is not None and time.monotonic() >= self._reload_after:
            self.reload_store_rules()  # the last reload failed: the store's rules may be stale
        refusal = self._who_checks(user, facts, credential_id)
        if refusal is not None:
            self._audit(user, facts, service, client_address, refusal, "")
            return refusal
        pol, groups, pol_name = self.policy_for(user)
        existing = self.store.get(user, facts.device_id) if facts.device_id else None
        user_devices: list[PartnershipRecord] = []
        if facts.device_id and existing is None:
            user_devices = self.store.list(username=user)
        current = existing.to_policy() if existing else None
        others = [p.to_policy() for p in user_devices]

        def decide(second_factor_possible: bool) -> policy.DeviceDecision:
            return policy.decide(
                facts=facts,
                existing=current,
                user_devices=others,
                rules=self.rules,
                policy=pol,
                user_groups=groups,
                now=now,
                second_factor_ok=second_factor_ok,
                service=service,
                second_factor_possible=second_factor_possible,
            )

        decision = decide(True)
        if decision.outcome == "challenge" and not self.second_factor_available(user):
            # a challenge this user cannot answer: wait for an approval instead
            decision = decide(False)
        record, created = self._persist(user, facts, existing, decision, now)
        result = DeviceCheck(
            decision.outcome,
            decision.reason,
            facts.device_id,
            decision.wipe,
            decision.trusted_until if decision.outcome == "allow" else None,
            record.id if record else None,
            decision.rule or "",
        )
        self._audit(user, facts, service, client_address, result, decision.rule, policy=pol_name)
        if (
            record is not None
            and record.state == "quarantined"
            and (created or (existing is not None and existing.state != "quarantined"))
        ):
            self._notify("device-quarantined", record, decision.reason, service, client_address)
        return result

    async def check_async(self, user: str, facts: DeviceFacts, **kw: Any) -> DeviceCheck:
        return await asyncio.to_thread(self.check, user, facts, **kw)

    def _who_checks(self, user: str, facts: DeviceFacts, credential_id: str | None) -> DeviceCheck | None:
        if facts.claimed_user is not None:
            try:
                aliases = list(self.user_aliases(user))
            except Exception:  # noqa: BLE001 - an alias lookup failure: compare by name only
                aliases = []
            if not _same_user(facts.claimed_user, user, aliases):
                return DeviceCheck("deny", "device-user-mismatch", facts.device_id)
        if credential_id:
            bound = self.asp_device(credential_id)
            if bound is not None and (facts.device_id is None or device_key(bound) != device_key(facts.device_id)):
                return DeviceCheck("deny", "asp-bound-to-other-device", facts.device_id)
        return None

    def _persist(
        self,
        user: str,
        facts: DeviceFacts,
        existing: PartnershipRecord | None,
        decision: policy.DeviceDecision,
        now: dt.datetime,
    ) -> tuple[PartnershipRecord | None, bool]:
        if facts.device_id is None:
            return None, False
        if existing is None:
            if decision.new_state is None:
                return None, False  # blocked by a rule, over the limit: nothing stored
            try:
                rec = self.store.create(
                    username=user,
                    device_id=facts.device_id,
                    state=decision.new_state,
                    state_reason=decision.reason,
                    rule=decision.rule or None,
                    device_type=facts.device_type,
                    model=facts.model,
                    os=facts.os,
                    user_agent=facts.user_agent,
                    client_kind=facts.client_kind,
                    source=facts.source,
                    created_at=now,
                    last_seen=now,
                    trusted_until=decision.trusted_until,
                )
                return rec, True
            except DuplicateError:  # a concurrent first request from the same device
                return self.store.get(user, facts.device_id), False
        changes: dict[str, Any] = {}
        if decision.new_state is not None:
            changes.update(state=decision.new_state, state_reason=decision.reason, trusted_until=decision.trusted_until)
        if now - existing.last_seen >= LAST_SEEN_GRANULARITY:
            changes["last_seen"] = now
        for attr in ("model", "os", "user_agent", "device_type"):
            v = getattr(facts, attr)
            if v is not None and v != getattr(existing, attr):
                changes[attr] = v
        if not changes:
            return existing, False
        return self.store.update(existing.id, **changes) or existing, False

    def _audit(
        self,
        user: str,
        facts: DeviceFacts,
        service: str,
        client_address: str | None,
        result: DeviceCheck,
        rule: str,
        **extra: Any,
    ) -> None:
        self.audit.record(
            "device-check",
            actor=user,
            user=user,
            device=facts.device_id,
            service=service,
            client_address=client_address,
            result=result.outcome,
            reason=result.reason,
            rule=rule or None,
            device_type=facts.device_type,
            client_kind=facts.client_kind,
            source=facts.source,
            problem=facts.problem,
            detail=facts.detail or None,
            **extra,
        )

    def _notify(
        self, event: str, rec: PartnershipRecord, reason: str, service: str | None, client_address: str | None
    ) -> None:
        notice = DeviceNotice(
            event=event,
            user=rec.username,
            device_id=rec.device_id,
            partnership_id=rec.id,
            reason=reason,
            device_type=rec.device_type,
            model=rec.model,
            user_agent=rec.user_agent,
            client_kind=rec.client_kind,
            service=service,
            client_address=client_address,
        )
        try:
            ok = self.notifier.notify(notice)
        except Exception:
            log.exception("notifier failed")
            ok = False
        self.audit.record(
            "device-notify",
            actor="ucgate",
            user=rec.username,
            device=rec.device_id,
            result="ok" if ok else "error",
            reason=event,
        )

    # --- admin operations --------------------------------------------------------------
    def list(self, *, user: str | None = None, state: str | None = None) -> list[PartnershipRecord]:
        return self.store.list(username=user.lower() if user else None, state=state)

    def get(self, partnership_id: int) -> PartnershipRecord:
        rec = self.store.get_by_id(partnership_id)
        if rec is None:
            raise DeviceError(f"no device partnership with id {partnership_id}")
        return rec

    def _admin(
        self, action: str, partnership_id: int, actor: str, reason: str | None, cut: str | None = None, **changes: Any
    ) -> PartnershipRecord:
        """Change one partnership; with ``cut``, a DeviceBlocked event (that reason) is written
        in the same transaction and every process closes the device's live connections."""
        rec = self.get(partnership_id)
        pending = Pending(DeviceBlocked(rec.username, rec.device_id, cut), actor) if cut else None
        new = self.store.update(rec.id, event=pending, **changes) if changes else rec
        if new is None:
            raise DeviceError(f"no device partnership with id {partnership_id}")
        self.audit.record(
            f"device.{action}",
            actor=actor,
            user=rec.username,
            device=rec.device_id,
            result="ok",
            reason=reason,
            partnership=rec.id,
            state=new.state,
        )
        self._committed(pending)
        return new

    def _committed(self, pending: Pending | None) -> None:
        if pending is not None and self.bus is not None:
            self.bus.committed(pending)

    def approve(self, partnership_id: int, *, actor: str, renew_trust: bool = True) -> PartnershipRecord:
        """Allow a quarantined (or blocked) device. With ``renew_trust`` the approval counts as
        the second factor (an admin, or the user in the portal after 2FA): trusted for the
        user's trust lifetime from now."""
        rec = self.get(partnership_id)
        now = self.clock()
        pol, _, _ = self.policy_for(rec.username)
        changes: dict[str, Any] = dict(state="allowed", state_reason="approved", approved_by=actor, approved_at=now)
        if renew_trust:
            changes["trusted_until"] = now + pol.trust_lifetime
        return self._admin("approve", partnership_id, actor, "approved", **changes)

    def block(
        self, partnership_id: int, *, actor: str, reason: str = "blocked by an administrator"
    ) -> PartnershipRecord:
        return self._admin(
            "block",
            partnership_id,
            actor,
            reason,
            cut=reason,
            state="blocked",
            state_reason="blocked",
            trusted_until=None,
        )

    def unblock(self, partnership_id: int, *, actor: str) -> PartnershipRecord:
        """Back to allowed, untrusted: the next request asks for the second factor (if the
        policy requires one)."""
        return self._admin(
            "unblock",
            partnership_id,
            actor,
            "unblocked",
            state="allowed",
            state_reason="unblocked",
            trusted_until=None,
            wipe_requested_at=None,
            wiped_at=None,
        )

    def wipe(self, partnership_id: int, *, actor: str) -> PartnershipRecord:
        """Flag a remote wipe: ActiveSync devices get the wipe directive on their next request;
        every request from the device is refused meanwhile."""
        return self._admin(
            "wipe",
            partnership_id,
            actor,
            "wipe requested",
            cut="remote wipe requested",
            wipe_requested_at=self.clock(),
            wiped_at=None,
            trusted_until=None,
        )

    def wipe_acknowledged(self, user: str, device_id: str, *, ok: bool) -> None:
        """The device reported the wipe (MS-ASPROV RemoteWipe Status): it stays blocked."""
        rec = self.store.get(user, device_id)
        if rec is None or not rec.wipe_pending:
            return
        self.store.update(rec.id, wiped_at=self.clock(), state="blocked", state_reason="wiped")
        self.audit.record(
            "device.wiped",
            actor=user,
            user=user,
            device=rec.device_id,
            result="ok" if ok else "error",
            reason="wipe-acknowledged",
        )

    def delete(self, partnership_id: int, *, actor: str) -> PartnershipRecord:
        """Forget the partnership: the device is a new device next time (the rules apply)."""
        rec = self.get(partnership_id)
        pending = Pending(DeviceBlocked(rec.username, rec.device_id, "device partnership deleted"), actor)
        self.store.delete(rec.id, event=pending)
        self.audit.record(
            "device.delete", actor=actor, user=rec.username, device=rec.device_id, result="ok", partnership=rec.id
        )
        self._committed(pending)
        return rec


def rule_from_settings(settings: Mapping[str, Any], index: int) -> policy.DeviceRule:
    """A :class:`~ucgate.policy.devices.DeviceRule` from a [[devices.rules]] table.

    Raises:
        ValueError: a bad value (the config loader names the key).
    """
    kw = dict(settings)
    groups = kw.pop("groups", ())
    return policy.DeviceRule(groups=frozenset(groups), **kw)


def open_device_service(config: Any, ids: Any, *, clock: Callable[[], dt.datetime] = _utcnow) -> DeviceService:
    """A :class:`DeviceService` for ``ucgate serve`` from the configuration's [devices] and
    [[policy]], over the id services' store, audit log, bus, directory and ASPs."""
    dc = config.devices
    directory = getattr(ids, "directory", None)
    users = ids.users

    def is_member(user: str, group: str) -> bool:
        if directory is None:
            return False
        du = directory.resolve(user)
        return du is not None and directory.is_member(du, group)

    def aliases(user: str) -> list[str]:
        rec = users.get(user)
        return [a for a in ((rec.upn, rec.sip_uri) if rec else ()) if a]

    def asp_device(asp_id: str) -> str | None:
        info = ids.asps.get(asp_id)
        return info.device_id if info is not None else None

    notifiers: list[Notifier] = []
    n = dc.notify
    if n.get("smtp_host"):
        domain = n.get("smtp_domain")

        def recipients(user: str) -> list[str]:
            rec = users.get(user)
            if rec is not None and rec.upn:
                return [rec.upn]
            return [f"{user}@{domain}"] if domain else []

        notifiers.append(
            SmtpNotifier(
                n["smtp_host"],
                n.get("smtp_port", 25),
                n.get("smtp_from", "ucgate@localhost"),
                recipients,
                starttls=n.get("smtp_starttls", False),
            )
        )
    if n.get("webhook_url"):
        notifiers.append(WebhookNotifier(n["webhook_url"]))
    second = getattr(getattr(ids, "credentials", None), "second_factor", None)

    def second_factor_available(user: str) -> bool:
        """otp-appended (for this user's groups) and an authenticator enrolled: the only
        second factor a sign-in can carry (device-approval's factor is the approval itself)."""
        if second is None:
            return False
        du = None
        if directory is not None and second.settings.group_modes:
            try:
                du = directory.resolve(user)
            except Exception:  # noqa: BLE001 - directory down: the default mode decides
                du = None
        return second.mode(user, du) is Mode.OTP_APPENDED and second.otp.is_enrolled(user)

    store = PartnershipStore(ids.components.repo.engine)
    svc = DeviceService(
        store,
        ids.audit,
        ids.bus,
        rules=dc.rules,
        defaults=dc.defaults,
        group_policies=dc.policies,
        is_member=is_member,
        user_aliases=aliases,
        asp_device=asp_device,
        notifier=MultiNotifier(notifiers),
        clock=clock,
        second_factor_available=second_factor_available,
        rule_store=RuleStore(ids.components.repo.engine),
    )
    # a rules-changed row (this process, or any other through the event follower): reload
    ids.bus.subscribe_rows(svc.on_event_row)
    return svc
