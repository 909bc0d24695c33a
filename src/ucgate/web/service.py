"""What the admin UI, the portal and the REST API do, over the id service's parts.

One class, :class:`Console`, used by the three front ends (pages, portal, ``/api/v1``); it
calls the same services the CLI does (``UserService``, ``AspService``, ``OtpService``,
``DeviceService``, ``AuditLog``) and audits every change with the acting account
(``web:alice``, ``portal:bob``, ``api:<token id>``). Handlers only parse input and render.

Validation errors are :class:`FieldError` (the form shows the message next to the field, the
API answers 400 with ``field``); a missing object is :class:`NotFound`; an operation on
someone else's device from the portal is :class:`Forbidden`.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import io
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from ..id.api import AttemptContext, Verdict
from ..id.asp import AspLimit
from ..id.audit import is_secret_key, to_json
from ..id.devices import DeviceError, DeviceService
from ..id.otp import AlreadyEnrolled, NotEnrolled, OtpService
from ..id.rules import RuleError, RuleNotFound, RuleService
from ..policy.devices import PartnershipState
from ..store.partnerships import PartnershipRecord, PartnershipStore
from ..store.rules import RuleStore
from .settings import ROLES, Role, WebConfig

DEVICE_ACTIONS = ("approve", "block", "unblock", "wipe", "delete")
DEVICE_STATES = tuple(s.value for s in PartnershipState)
AUDIT_SCAN = 5000  # events read for a filtered audit view or export
MASK = "••••••••"
_RANK = {r: i for i, r in enumerate(ROLES)}  # lower is more powerful


class FieldError(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field, self.message = field, message


class NotFound(LookupError):
    pass


class Forbidden(PermissionError):
    pass


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def device_json(r: PartnershipRecord) -> dict[str, Any]:
    return {**r.as_dict(), "wipe_pending": r.wipe_pending}


def asp_json(a) -> dict[str, Any]:
    return {
        "id": a.id,
        "username": a.username,
        "label": a.label,
        "device_id": a.device_id,
        "created_at": a.created_at.isoformat(),
        "last_used_at": a.last_used_at.isoformat() if a.last_used_at else None,
        "revoked_at": a.revoked_at.isoformat() if a.revoked_at else None,
        "active": a.active,
    }


def masked(value: Any, key: str = "") -> Any:
    """A config value for display: secrets (by key name) replaced, paths as strings."""
    if key and is_secret_key(key) and not isinstance(value, Path) and value not in (None, "", b""):
        return MASK
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: masked(getattr(value, f.name), f.name) for f in dataclasses.fields(value)}
    if isinstance(value, BaseModel):  # a table of the configuration (ucgate.config)
        return {name: masked(getattr(value, name), name) for name in type(value).model_fields}
    if isinstance(value, dict):
        return {str(k): masked(v, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple, frozenset, set)):
        return [masked(v) for v in value]
    if isinstance(value, (Path, dt.timedelta)) or not isinstance(value, (str, int, float, bool, type(None))):
        return str(value)
    return value


class Console:
    """Args:
    ids: ``ucgate.id.factory.IdServices``.
    devices: the ``DeviceService`` the gateway uses (its bus cuts live connections); one
        over the same store is made when None.
    web: the [web] settings (roles).
    config: the effective ``Config`` (settings and rules views), or None.
    live_users: ``() -> {user: signed in since}`` of the gateway(s), or None.
    """

    def __init__(
        self,
        ids: Any,
        devices: DeviceService | None,
        web: WebConfig,
        *,
        config: Any = None,
        live_users: Callable[[], dict] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ids = ids
        self.web = web
        self.config = config
        self.live_users = live_users
        self.clock = clock
        self.devices = devices or DeviceService(
            PartnershipStore(ids.components.repo.engine), ids.audit, getattr(ids, "bus", None)
        )
        self.otp = OtpService(ids.components.repo, ids.components.keyring, users=ids.users)
        self.rule_admin = RuleService(RuleStore(ids.components.repo.engine), ids.audit, getattr(ids, "bus", None))
        self.directory = getattr(ids, "directory", None)
        self._budget_lock = threading.Lock()

    @property
    def audit(self):
        return self.ids.audit

    # --- accounts and roles ---------------------------------------------------------------
    def canonical_user(self, typed: str) -> str | None:
        rec = self.ids.users.resolve(typed)
        if rec is not None:
            return rec.username
        if self.directory is not None:
            try:
                du = self.directory.resolve(typed)
            except Exception:  # noqa: BLE001 - directory down or bad name: unknown here
                return None
            return du.sam_account_name.lower() if du else None
        return None

    def role_of(self, username: str) -> str:
        """The most powerful role the account has: the [web.users] mapping, then directory
        groups ([web.groups]); every other account is a ``user``."""
        best = self.web.user_roles.get(username.lower(), Role.USER.value)
        if self.web.group_roles and self.directory is not None:
            try:
                du = self.directory.resolve(username)
                for group, role in self.web.group_roles.items():
                    if du is not None and _RANK[role] < _RANK[best] and self.directory.is_member(du, group):
                        best = role
            except Exception:  # noqa: BLE001 - the directory is down: the local mapping only
                pass
        return best

    def check_password(self, typed: str, password: str, client_ip: str) -> tuple[str | None, str]:
        """(canonical user, "ok") or (None, reason). The domain password (LDAP bind) when a
        directory is configured, else (or as well) an ASP; the gateway's failure budget
        throttles guessing here too."""
        creds = self.ids.credentials
        ctx = AttemptContext(client_ip=client_ip, method="portal", service="web")
        who, held = creds.begin_attempt(typed, ctx)
        if isinstance(held, Verdict):  # throttled, or the directory or store is down
            return None, held.reason
        user, ok = self.canonical_user(typed), False
        if user is not None and password:
            rec = self.ids.users.get(user)
            if rec is not None and not rec.enabled:
                user = None
            elif self.directory is not None:
                try:
                    ok = self.directory.verify_password(user, password)
                except Exception:  # noqa: BLE001 - treat an outage as a refusal
                    ok = False
            if user is not None and not ok and rec is not None:
                ok = self.ids.asps.verify_password(user, password) is not None
        creds.end_attempt(who, ctx, held, Verdict(True, "ok", user=user) if ok else Verdict(False, "bad-credentials"))
        return (user, "ok") if ok else (None, "bad-credentials")

    def has_totp(self, user: str) -> bool:
        return self.otp.is_enrolled(user)

    def verify_second_factor(self, user: str, code: str) -> bool:
        """A TOTP code, or (12 symbols) a recovery code."""
        code = code.strip()
        if len(code.replace("-", "").replace(" ", "")) == 12:
            return self.otp.use_recovery_code(user, code).ok
        return self.otp.verify(user, code).ok

    # --- users -------------------------------------------------------------------------------
    def list_users(self, q: str = "") -> list[dict[str, Any]]:
        q = q.strip().lower()
        devices = self.devices.list()
        out = []
        for u in self.ids.users.list():
            if q and q not in u.username and q not in (u.upn or "") and q not in (u.display_name or "").lower():
                continue
            out.append(
                {
                    "username": u.username,
                    "upn": u.upn,
                    "display_name": u.display_name,
                    "enabled": u.enabled,
                    "source": u.source,
                    "devices": sum(1 for d in devices if d.username == u.username),
                    "totp": self.otp.status(u.username).state,
                    "role": self.web.user_roles.get(u.username, Role.USER.value),
                }
            )
        return out

    def user_detail(self, username: str) -> dict[str, Any]:
        rec = self.ids.users.get(username)
        if rec is None:
            raise NotFound(f"no user {username!r}")
        st = self.otp.status(rec.username)
        detail: dict[str, Any] = {
            "username": rec.username,
            "upn": rec.upn,
            "sip_uri": rec.sip_uri,
            "display_name": rec.display_name,
            "enabled": rec.enabled,
            "source": rec.source,
            "role": self.role_of(rec.username),
            "totp": {
                "state": st.state,
                "confirmed_at": st.confirmed_at.isoformat() if st.confirmed_at else None,
                "last_used_at": st.last_used_at.isoformat() if st.last_used_at else None,
                "recovery_codes_left": st.recovery_codes_left,
            },
            "devices": [device_json(d) for d in self.devices.list(user=rec.username)],
            "asps": [asp_json(a) for a in self.ids.asps.list(rec.username)],
            "directory": None,
        }
        if self.directory is not None:
            try:
                du = self.directory.resolve(rec.username)
            except Exception as e:  # noqa: BLE001
                detail["directory"] = {"error": str(e)}
            else:
                if du is not None:
                    detail["directory"] = {
                        "dn": du.dn,
                        "groups": sorted(du.groups),
                        "blocked_reason": du.state.blocked_reason(),
                        "state": masked(du.state),
                    }
        return detail

    def set_user_enabled(self, username: str, enabled: bool, *, actor: str) -> None:
        rec = self.ids.users.get(username)
        if rec is None:
            raise NotFound(f"no user {username!r}")
        if enabled:
            self.ids.users.enable(rec.username)
        else:
            self.ids.users.disable(rec.username, actor=actor)
        self.audit.record("user.enable" if enabled else "user.disable", actor=actor, user=rec.username, result="ok")

    def sign_out(self, username: str, *, actor: str) -> None:
        """Close the user's live sessions on every gateway of the pool."""
        rec = self.ids.users.get(username)
        if rec is None:
            raise NotFound(f"no user {username!r}")
        self.ids.users.sign_out(rec.username, actor=actor)
        self.audit.record("user.sign-out", actor=actor, user=rec.username, result="ok")

    # --- devices -------------------------------------------------------------------------------
    def list_devices(self, *, user: str = "", state: str = "", device_type: str = "") -> list[PartnershipRecord]:
        if state and state not in DEVICE_STATES:
            raise FieldError("state", f"expected one of {', '.join(DEVICE_STATES)}")
        rows = self.devices.list(user=user.strip() or None, state=state or None)
        t = device_type.strip().lower()
        return [r for r in rows if not t or t in (r.device_type or "").lower() or t in r.client_kind]

    def device(self, partnership_id: int) -> PartnershipRecord:
        if not 0 < partnership_id < 2**63:  # what the store's integer column can hold
            raise NotFound(f"no device partnership with id {partnership_id}")
        try:
            return self.devices.get(partnership_id)
        except DeviceError as e:
            raise NotFound(str(e)) from None

    def device_action(
        self, partnership_id: int, action: str, *, actor: str, owner: str | None = None
    ) -> PartnershipRecord:
        """approve / block / unblock / wipe / delete (audited by the DeviceService). With
        ``owner`` (the portal) the device must be that user's."""
        if action not in DEVICE_ACTIONS:
            raise FieldError("action", f"expected one of {', '.join(DEVICE_ACTIONS)}")
        rec = self.device(partnership_id)
        if owner is not None and rec.username != owner:
            raise Forbidden("not your device")
        return getattr(self.devices, action)(rec.id, actor=actor)

    def approve_own_device(self, user: str, partnership_id: int, code: str) -> PartnershipRecord:
        """The portal's device approval: the user's own quarantined device, with a TOTP code
        (the ``device-approval`` second factor)."""
        rec = self.device(partnership_id)
        if rec.username != user:
            raise Forbidden("not your device")
        if not code.strip():
            raise FieldError("code", "enter the 6-digit code from your authenticator app")
        if not self.has_totp(user):
            raise FieldError("code", "enrol an authenticator app first (Two-factor below)")
        if not self.otp.verify(user, code).ok:
            self.audit.record(
                "device.approve",
                actor=f"portal:{user}",
                user=user,
                device=rec.device_id,
                result="deny",
                reason="otp-wrong",
            )
            raise FieldError("code", "wrong or already used code; wait for the next one")
        return self.devices.approve(rec.id, actor=f"portal:{user}")

    # --- ASPs -------------------------------------------------------------------------------------
    def create_asp(self, user: str, label: str, device_id: str = "", *, actor: str) -> tuple[dict, str]:
        if not label.strip():
            raise FieldError("label", "required: what the password is for, e.g. “iPhone mail”")
        try:
            asp_id, plain = self.ids.asps.create(user, label, device_id.strip() or None)
        except AspLimit as e:
            raise FieldError("label", str(e)) from None
        except LookupError:
            raise NotFound(f"no user {user!r}") from None
        except ValueError as e:
            raise FieldError("label", str(e)) from None
        info = self.ids.asps.get(asp_id)
        self.audit.record(
            "asp.create",
            actor=actor,
            user=info.username,
            device=info.device_id,
            result="ok",
            asp_id=asp_id,
            label=info.label,
        )
        return asp_json(info), plain

    def revoke_asp(self, asp_id: str, *, actor: str, owner: str | None = None) -> dict:
        info = self.ids.asps.get(asp_id)
        if info is None:
            raise NotFound(f"no ASP {asp_id!r}")
        if owner is not None and info.username != owner:
            raise Forbidden("not your password")
        self.ids.asps.revoke(asp_id)
        self.audit.record(
            "asp.revoke",
            actor=actor,
            user=info.username,
            device=info.device_id,
            result="ok",
            asp_id=info.id,
            label=info.label,
        )
        return asp_json(self.ids.asps.get(asp_id))

    # --- TOTP ----------------------------------------------------------------------------------
    def begin_totp(self, user: str, *, actor: str):
        try:
            e = self.otp.begin_enrolment(user)
        except AlreadyEnrolled:
            raise FieldError("code", "an authenticator app is already enrolled; reset it first") from None
        self.audit.record("otp.enrol", actor=actor, user=user, result="pending")
        return e

    def confirm_totp(self, user: str, code: str, *, actor: str) -> list[str]:
        codes = self.otp.confirm_enrolment(user, code)
        self.audit.record(
            "otp.confirm",
            actor=actor,
            user=user,
            result="ok" if codes else "deny",
            reason=None if codes else "otp-wrong",
        )
        if not codes:
            raise FieldError("code", "that code does not match; check the phone's clock and try the next one")
        return codes

    def new_recovery_codes(self, user: str, *, actor: str) -> list[str]:
        try:
            codes = self.otp.regenerate_recovery_codes(user)
        except NotEnrolled:
            raise FieldError("code", "no authenticator app enrolled") from None
        self.audit.record("otp.recovery-codes", actor=actor, user=user, result="ok")
        return codes

    def reset_totp(self, user: str, *, actor: str) -> bool:
        ok = self.otp.reset(user)
        self.audit.record("otp.reset", actor=actor, user=user, result="ok" if ok else "none")
        return ok

    # --- audit ------------------------------------------------------------------------------------
    def audit_events(
        self, *, user: str = "", action: str = "", result: str = "", q: str = "", limit: int = 200
    ) -> list[dict[str, Any]]:
        if not 1 <= limit <= AUDIT_SCAN:
            raise FieldError("limit", f"expected 1..{AUDIT_SCAN}")
        out = []
        for e in reversed(self.audit.tail(AUDIT_SCAN)):
            j = to_json(e)
            if user and (e.username or "") != user.strip().lower():
                continue
            if action and not e.action.startswith(action.strip()):
                continue
            if result and e.result != result.strip():
                continue
            if q and q.lower() not in " ".join(str(v) for v in j.values()).lower():
                continue
            out.append(j)
            if len(out) >= limit:
                break
        return out

    @staticmethod
    def audit_csv(events: list[dict[str, Any]]) -> str:
        buf = io.StringIO()
        cols = ["id", "at", "actor", "action", "user", "device", "service", "client_address", "result", "reason"]
        w = csv.writer(buf)
        w.writerow(cols + ["details"])
        for e in events:
            # cells starting with = + - @ would be formulas in a spreadsheet
            row = [("'" + str(e[c])) if str(e[c] or "")[:1] in "=+-@" and e[c] else e[c] for c in cols]
            w.writerow(row + [json.dumps(e["details"], ensure_ascii=False, sort_keys=True) if e["details"] else ""])
        return buf.getvalue()

    # --- dashboard, rules, settings -----------------------------------------------------------
    def activity(self, hours: int = 24) -> list[dict[str, Any]]:
        """Sign-ins and denials per hour over the last ``hours`` (from the audit log)."""
        now = dt.datetime.fromtimestamp(self.clock(), dt.UTC).replace(minute=0, second=0, microsecond=0)
        start = now - dt.timedelta(hours=hours - 1)
        buckets: list[dict[str, Any]] = [
            {"hour": (start + dt.timedelta(hours=i)).isoformat(), "sign_ins": 0, "denials": 0} for i in range(hours)
        ]
        for e in self.audit.tail(AUDIT_SCAN):
            if e.action not in ("sign-in", "device-check") or e.at < start:
                continue
            i = int((e.at - start).total_seconds() // 3600)
            if 0 <= i < hours:
                if e.action == "sign-in" and e.result == "allow":
                    buckets[i]["sign_ins"] += 1
                elif e.result in ("deny", "quarantine"):
                    buckets[i]["denials"] += 1
        return buckets

    def dashboard(self) -> dict[str, Any]:
        live = None
        if self.live_users is not None:
            try:
                live = {u: s.isoformat() for u, s in self.live_users().items()}
            except Exception:  # noqa: BLE001 - a node that cannot be reached: shown as unknown
                live = None
        return {
            "live_sessions": live,
            "activity": self.activity(),
            "quarantined": [device_json(d) for d in self.devices.list(state=PartnershipState.QUARANTINED)],
            "users": len(self.ids.users.list()),
        }

    def rules(self) -> dict[str, Any]:
        """The rules and group policies in force: the configuration file's first (read-only,
        ``source`` "file"), then the store's (``source`` "store", with the ``id`` to edit them
        by), each list in the order it is evaluated. Read from the store, not from a cache."""
        d = self.devices
        cfg = self.config
        file_rules = getattr(d, "file_rules", d.rules)
        file_policies = getattr(d, "file_policies", d.group_policies)
        rules = [{"source": "file", "id": None, "position": i, **masked(r)} for i, r in enumerate(file_rules, start=1)]
        rules += [{"source": "store", **r.as_dict()} for r in self.rule_admin.rules()]
        policies = [
            {
                "source": "file",
                "id": None,
                "position": i,
                "name": p.name,
                "group": getattr(p, "group", None),
                "settings": masked(dict(p.settings)),
            }
            for i, p in enumerate(file_policies, start=1)
        ]
        policies += [{"source": "store", **p.as_dict()} for p in self.rule_admin.policies()]
        return {
            "device_rules": rules,
            "defaults": masked(d.defaults),
            "group_policies": policies,
            "two_factor": None
            if cfg is None
            else {
                "default": cfg.auth.two_factor,
                "groups": dict(cfg.auth.two_factor_groups),
                "otp_trust_hours": cfg.auth.otp_trust_hours,
            },
        }

    def settings(self) -> dict[str, Any]:
        return {} if self.config is None else masked(self.config)

    # --- editing the store's rules and group policies (ucgate.id.rules) ---------------------
    def _rules_call(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        try:
            return fn(*args, **kw)
        except RuleError as e:
            raise FieldError(e.field, e.message) from None
        except RuleNotFound as e:
            raise NotFound(str(e)) from None

    def add_rule(self, data: dict[str, Any], *, actor: str) -> dict[str, Any]:
        return {"source": "store", **self._rules_call(self.rule_admin.add_rule, data, actor=actor).as_dict()}

    def delete_rule(self, rule_id: int, *, actor: str) -> None:
        self._rules_call(self.rule_admin.delete_rule, rule_id, actor=actor)

    def move_rule(self, rule_id: int, position: Any, *, actor: str) -> dict[str, Any]:
        return {
            "source": "store",
            **self._rules_call(self.rule_admin.move_rule, rule_id, position, actor=actor).as_dict(),
        }

    def add_policy(self, data: dict[str, Any], *, actor: str) -> dict[str, Any]:
        return {"source": "store", **self._rules_call(self.rule_admin.add_policy, data, actor=actor).as_dict()}

    def delete_policy(self, policy_id: int, *, actor: str) -> None:
        self._rules_call(self.rule_admin.delete_policy, policy_id, actor=actor)

    def move_policy(self, policy_id: int, position: Any, *, actor: str) -> dict[str, Any]:
        return {
            "source": "store",
            **self._rules_call(self.rule_admin.move_policy, policy_id, position, actor=actor).as_dict(),
        }
