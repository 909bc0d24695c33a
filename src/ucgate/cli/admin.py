"""Admin commands: ``ucgate user|asp|db|audit|key|otp ...``.

Mounted on the ``ucgate`` command line by :func:`register`. The commands read three settings
from the object ``load_settings(args)`` returns (by default ``ucgate.config.load(args.config)``;
``ucgate.id.components.Settings`` lists them) and work on ``ucgate.id.components.Components``.

Exit codes: 0 done; 1 not found or refused (the message says why); 2 usage (argparse, or a
malformed argument such as a user name). ``--json`` prints machine-readable output.
Every change is written to the audit log with the OS user as actor (``cli:<user>``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from ..config import load
from ..id.asp import AspLimit, UnknownUser
from ..id.audit import to_json
from ..id.components import Components, Settings
from ..id.keys import KeyFileError, Keyring
from ..id.otp import AlreadyEnrolled, NotEnrolled, OtpService
from ..id.users import InvalidUsername, current_os_user
from ..id.vault import VaultService
from ..store import DuplicateError, StoreError, migrate, sqlite_path
from .options import json_parent

OK, REFUSED, USAGE = 0, 1, 2


class _Refused(Exception):
    """Exit 1 with this message."""


class _Usage(Exception):
    """Exit 2 with this message."""


# --- output --------------------------------------------------------------------------------
def _when(t: datetime | None) -> str:
    return t.strftime("%Y-%m-%d %H:%M:%SZ") if t else "-"


def _table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    cells = [list(headers)] + [["-" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _emit(args: argparse.Namespace, data: Any, text: str) -> None:
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2, default=str))
    else:
        print(text)


def _user_json(u) -> dict[str, Any]:
    return {
        "username": u.username,
        "upn": u.upn,
        "sip_uri": u.sip_uri,
        "display_name": u.display_name,
        "enabled": u.enabled,
        "source": u.source,
        "created_at": u.created_at.isoformat(),
    }


def _asp_json(a) -> dict[str, Any]:
    return {
        "id": a.id,
        "username": a.username,
        "label": a.label,
        "device_id": a.device_id,
        "created_at": a.created_at.isoformat(),
        "last_used_at": a.last_used_at.isoformat() if a.last_used_at else None,
        "revoked_at": a.revoked_at.isoformat() if a.revoked_at else None,
    }


# --- commands ------------------------------------------------------------------------------
def _actor() -> str:
    return f"cli:{current_os_user()}"


def _user_add(args, c: Components) -> int:
    try:
        u = c.users.add(
            args.username, upn=args.upn, sip_uri=args.sip, display_name=args.display_name, source=args.source
        )
    except InvalidUsername as e:
        raise _Usage(str(e)) from None
    except DuplicateError:
        raise _Refused(f"user {args.username!r} (or UPN {args.upn!r}) already exists") from None
    c.audit.record("user.add", actor=_actor(), user=u.username, result="ok", source=u.source)
    _emit(args, _user_json(u), f"added user {u.username}")
    return OK


def _user_list(args, c: Components) -> int:
    users = c.users.list()
    rows = [
        (
            u.username,
            u.upn,
            u.sip_uri,
            u.display_name,
            "yes" if u.enabled else "DISABLED",
            u.source,
            _when(u.created_at),
        )
        for u in users
    ]
    _emit(
        args,
        [_user_json(u) for u in users],
        _table(rows, ["USER", "UPN", "SIP URI", "NAME", "ENABLED", "SOURCE", "CREATED"])
        if users
        else "no users (add one with `ucgate user add NAME`)",
    )
    return OK


def _user_sign_out(args: argparse.Namespace, c: Components) -> int:
    u = c.users.resolve(args.username)
    if u is None:
        raise _Refused(f"no user {args.username!r}")
    c.users.sign_out(u.username, actor=_actor())
    c.audit.record("user.sign-out", actor=_actor(), user=u.username, result="ok")
    _emit(
        args,
        {"username": u.username, "signed_out": True},
        f"signed out {u.username} (every gateway closes their live sessions)",
    )
    return OK


def _user_state(enable: bool) -> Callable[[argparse.Namespace, Components], int]:
    def run(args, c: Components) -> int:
        u = c.users.resolve(args.username)
        if u is None:
            raise _Refused(f"no user {args.username!r}")
        (c.users.enable if enable else c.users.disable)(u.username)
        action = "user.enable" if enable else "user.disable"
        c.audit.record(action, actor=_actor(), user=u.username, result="ok")
        _emit(
            args,
            {"username": u.username, "enabled": enable},
            f"{'enabled' if enable else 'disabled'} user {u.username}",
        )
        return OK

    return run


def _asp_create(args, c: Components) -> int:
    try:
        asp_id, plaintext = c.asps.create(args.username, args.label, args.device)
    except UnknownUser:
        raise _Refused(f"no user {args.username!r} (add it with `ucgate user add`)") from None
    except AspLimit as e:
        raise _Refused(str(e)) from None
    except ValueError as e:
        raise _Usage(str(e)) from None
    info = c.asps.get(asp_id)
    assert info is not None  # just created
    c.audit.record(
        "asp.create",
        actor=_actor(),
        user=info.username,
        device=args.device,
        result="ok",
        asp_id=asp_id,
        label=info.label,
    )
    print(
        "WARNING: this password is shown only now; ucgate cannot show it again. Give it to "
        f"{info.username} over a trusted channel.",
        file=sys.stderr,
    )
    _emit(
        args,
        {**_asp_json(info), "password": plaintext},
        f"ASP {asp_id} for {info.username} ({info.label}"
        f"{', device ' + args.device if args.device else ''}):\n\n    {plaintext}\n",
    )
    return OK


def _asp_list(args, c: Components) -> int:
    try:
        asps = c.asps.list(args.username, include_revoked=args.all)
    except UnknownUser:
        raise _Refused(f"no user {args.username!r}") from None
    rows = [
        (
            a.id,
            a.label,
            a.device_id or "any",
            _when(a.created_at),
            _when(a.last_used_at),
            "revoked " + _when(a.revoked_at) if a.revoked_at else "active",
        )
        for a in asps
    ]
    _emit(
        args,
        [_asp_json(a) for a in asps],
        _table(rows, ["ID", "LABEL", "DEVICE", "CREATED", "LAST USED", "STATE"])
        if asps
        else f"no {'' if args.all else 'active '}ASPs for {args.username}",
    )
    return OK


def _asp_revoke(args, c: Components) -> int:
    info = c.asps.get(args.asp_id)
    if info is None or not c.asps.revoke(args.asp_id):
        raise _Refused(f"no ASP with id {args.asp_id!r} (see `ucgate asp list USER`)")
    c.audit.record(
        "asp.revoke",
        actor=_actor(),
        user=info.username,
        device=info.device_id,
        result="ok",
        asp_id=info.id,
        label=info.label,
    )
    _emit(args, {"id": info.id, "revoked": True}, f"revoked ASP {info.id} ({info.label}) of {info.username}")
    return OK


def _audit_tail(args, c: Components) -> int:
    if args.n < 0:
        raise _Usage("-n must be >= 0")
    events = c.audit.tail(args.n)
    rows = [
        (_when(e.at), e.actor, e.action, e.username, e.device, e.service, e.client_address, e.result, e.reason)
        for e in events
    ]
    _emit(
        args,
        [to_json(e) for e in events],
        _table(rows, ["AT", "ACTOR", "ACTION", "USER", "DEVICE", "SERVICE", "CLIENT", "RESULT", "REASON"])
        if events
        else "the audit log is empty",
    )
    return OK


def _key_rotate(args, c: Components) -> int:
    c.keyring  # noqa: B018 - load (and validate) the current key file first
    new = Keyring.rotate(c.settings.key_file, data_path=sqlite_path(c.settings.store_url))
    c._keyring, c._asps = new, None
    n = c.asps.reencrypt_all()
    n += VaultService(c.repo, new, users=c.users).reencrypt_all()  # the vault's passwords too
    c.audit.record("key.rotate", actor=_actor(), result="ok", key_id=new.active, reencrypted=n)
    _emit(
        args,
        {"active_key_id": new.active, "reencrypted": n},
        f"key {new.active} is now active; re-encrypted {n} ASPs. Older keys stay in "
        f"{c.settings.key_file} until you delete their lines.",
    )
    return OK


# db commands work on the bare URL: no repository (which would migrate or refuse) is opened.
def _db_upgrade(args, settings: Settings) -> int:
    before = migrate.current(settings.store_url)
    after = migrate.upgrade(settings.store_url)
    _emit(
        args,
        {"from": before, "to": after},
        f"database at revision {after}" + ("" if before == after else f" (was {before or 'empty'})"),
    )
    return OK


def _db_current(args, settings: Settings) -> int:
    cur, head = migrate.current(settings.store_url), migrate.head()
    _emit(
        args,
        {"current": cur, "head": head},
        f"revision {cur or 'none'} (this ucgate: {head})" + ("" if cur == head else "; run `ucgate db upgrade`"),
    )
    return OK


# --- otp (TOTP second factor) ---------------------------------------------------------------
def _otp_service(c: Components):
    return OtpService(c.repo, c.keyring, users=c.users)


def _otp_user(c: Components, typed: str):
    u = c.users.resolve(typed)
    if u is None:
        raise _Refused(f"no user {typed!r} (add it with `ucgate user add`)")
    return u


def _print_recovery_codes(args, username: str, codes: list[str], data: dict[str, Any]) -> None:
    print(
        "WARNING: these recovery codes are shown only now; each works once. Give them to "
        f"{username} over a trusted channel.",
        file=sys.stderr,
    )
    _emit(
        args,
        {**data, "recovery_codes": codes},
        f"recovery codes for {username}:\n\n" + "\n".join(f"    {c}" for c in codes) + "\n",
    )


def _otp_confirm(args, c: Components, otp, username: str, code: str) -> int:
    codes = otp.confirm_enrolment(username, code)
    if not codes:
        c.audit.record("otp.confirm", actor=_actor(), user=username, result="deny", reason="otp-wrong")
        raise _Refused(
            f"the code does not match {username}'s pending enrolment (check the "
            "phone's clock; or start over with `ucgate otp enrol USER`)"
        )
    c.audit.record("otp.confirm", actor=_actor(), user=username, result="ok")
    print(f"TOTP is now active for {username}.", file=sys.stderr)
    _print_recovery_codes(args, username, codes, {"username": username, "state": "active"})
    return OK


def _otp_enrol(args, c: Components) -> int:
    u = _otp_user(c, args.username)
    otp = _otp_service(c)
    if args.code is not None:  # confirm the pending enrolment started earlier
        if otp.status(u.username).state != "pending":
            raise _Refused(
                f"{u.username} has no pending enrolment; start one with "
                f"`ucgate otp enrol {u.username}` (without --code)"
            )
        return _otp_confirm(args, c, otp, u.username, args.code)
    if args.force and otp.reset(u.username):
        c.audit.record("otp.reset", actor=_actor(), user=u.username, result="ok", forced=True)
    try:
        e = otp.begin_enrolment(u.username)
    except AlreadyEnrolled:
        raise _Refused(
            f"{u.username} already has an active TOTP secret; `ucgate otp reset {u.username}` first (or pass --force)"
        ) from None
    c.audit.record("otp.enrol", actor=_actor(), user=u.username, result="pending")
    if args.svg:
        Path(args.svg).write_text(e.qr_svg())
    print(
        "WARNING: this secret is shown only now. Scan it on the user's phone, or give it over a trusted channel.",
        file=sys.stderr,
    )
    text = (
        f"TOTP enrolment for {u.username} (pending until a code confirms it)\n\n"
        f"{'' if args.no_qr else e.qr_text()}\n"
        f"    {e.uri}\n\n    secret: {e.secret_b32}\n"
    )
    _emit(
        args,
        {"username": u.username, "state": "pending", "account": e.account, "secret": e.secret_b32, "uri": e.uri},
        text,
    )
    if args.json or not sys.stdin.isatty():
        print(f"confirm with: ucgate otp enrol {u.username} --code NNNNNN", file=sys.stderr)
        return OK
    code = input("code shown by the app: ").strip()
    return _otp_confirm(args, c, otp, u.username, code)


def _otp_status(args, c: Components) -> int:
    u = _otp_user(c, args.username)
    st = _otp_service(c).status(u.username)
    data = {
        "username": st.username,
        "state": st.state,
        "created_at": st.created_at.isoformat() if st.created_at else None,
        "confirmed_at": st.confirmed_at.isoformat() if st.confirmed_at else None,
        "last_used_at": st.last_used_at.isoformat() if st.last_used_at else None,
        "recovery_codes_left": st.recovery_codes_left,
    }
    text = {
        "none": f"{st.username}: no TOTP secret (enrol with `ucgate otp enrol {st.username}`)",
        "pending": f"{st.username}: enrolment pending since {_when(st.created_at)}",
        "active": f"{st.username}: active since {_when(st.confirmed_at)}, last code "
        f"{_when(st.last_used_at)}, {st.recovery_codes_left} recovery codes left",
    }
    _emit(args, data, text[st.state])
    return OK


def _otp_reset(args, c: Components) -> int:
    u = _otp_user(c, args.username)
    if not _otp_service(c).reset(u.username):
        raise _Refused(f"{u.username} has no TOTP secret")
    c.audit.record("otp.reset", actor=_actor(), user=u.username, result="ok")
    _emit(args, {"username": u.username, "state": "none"}, f"removed {u.username}'s TOTP secret and recovery codes")
    return OK


def _otp_recovery_codes(args, c: Components) -> int:
    u = _otp_user(c, args.username)
    try:
        codes = _otp_service(c).regenerate_recovery_codes(u.username)
    except NotEnrolled:
        raise _Refused(f"{u.username} has no active TOTP secret") from None
    c.audit.record("otp.recovery-codes", actor=_actor(), user=u.username, result="ok")
    _print_recovery_codes(args, u.username, codes, {"username": u.username})
    return OK


# --- wiring --------------------------------------------------------------------------------
def _default_settings(args: argparse.Namespace) -> Settings:
    path = getattr(args, "config", None)
    if path is None:
        raise _Usage("give the configuration file with -c/--config")
    return load(path)


@dataclass
class _Runner:
    """Runs one leaf command: settings, the components, and the exit code for each refusal.
    ``refused``: a command's own error types that mean "refused" (exit 1 with the message)."""

    handler: Callable[..., int]
    load_settings: Callable[[argparse.Namespace], Settings]
    needs_components: bool = True
    refused: tuple[type[Exception], ...] = ()

    def _refusals(self) -> tuple[type[Exception], ...]:
        return (_Refused, KeyFileError, StoreError, *self.refused)

    def __call__(self, args: argparse.Namespace) -> int:
        try:
            settings = self.load_settings(args)
            if not self.needs_components:
                return self.handler(args, settings)
            c = Components(settings)
            try:
                return self.handler(args, c)
            finally:
                c.close()
        except _Usage as e:
            print(f"ucgate: {e}", file=sys.stderr)
            return USAGE
        except self._refusals() as e:
            print(f"ucgate: {e}", file=sys.stderr)
            return REFUSED


def register(
    subparsers: argparse._SubParsersAction,
    common_parent: argparse.ArgumentParser,
    *,
    load_settings: Callable[[argparse.Namespace], Settings] | None = None,
) -> None:
    """Add ``user``, ``asp``, ``db``, ``audit`` and ``key`` to the ``ucgate`` command line.

    Each leaf command gets ``func(args) -> exit code``.

    Args:
        common_parent: options every command takes (e.g. ``-c/--config``), as an argparse parent.
        load_settings: ``args -> settings`` (see module docstring); default
            ``ucgate.config.load(args.config)``.
    """
    load = load_settings or _default_settings
    parents = [common_parent, json_parent()]

    def leaf(group, name: str, handler, help: str, *, components: bool = True):
        p = group.add_parser(name, parents=parents, help=help, description=help)
        p.set_defaults(func=_Runner(handler, load, components))
        return p

    def group(name: str, help: str):
        g = subparsers.add_parser(name, help=help, description=help)
        sub = g.add_subparsers(dest=f"{name}_command", metavar="COMMAND", required=True)
        return sub

    users = group("user", "manage users (directory accounts that get ASPs)")
    p = leaf(users, "add", _user_add, "add a user")
    p.add_argument("username", help="sAMAccountName, e.g. alice")
    p.add_argument("--upn", help="userPrincipalName, e.g. alice@contoso.com")
    p.add_argument("--sip", help="SIP URI, e.g. sip:alice@contoso.com")
    p.add_argument("--display-name")
    p.add_argument("--source", choices=["local", "directory"], default="local")
    leaf(users, "list", _user_list, "list users")
    for name, enable in (("disable", False), ("enable", True)):
        p = leaf(users, name, _user_state(enable), f"{name} a user (ASPs stop/start working)")
        p.add_argument("username")
    p = leaf(
        users, "sign-out", _user_sign_out, "close a user's live sessions on every gateway now (they may sign in again)"
    )
    p.add_argument("username")

    asps = group("asp", "manage application-specific passwords")
    p = leaf(asps, "create", _asp_create, "issue an ASP (printed once)")
    p.add_argument("username")
    p.add_argument("-l", "--label", required=True, help='what it is for, e.g. "iPhone mail"')
    p.add_argument("--device", metavar="DEVICE_ID", help="accept it only from this device id")
    p = leaf(asps, "list", _asp_list, "list a user's ASPs (never the passwords)")
    p.add_argument("username")
    p.add_argument("--all", action="store_true", help="include revoked ASPs")
    p = leaf(asps, "revoke", _asp_revoke, "revoke an ASP")
    p.add_argument("asp_id")

    db = group("db", "database schema")
    leaf(db, "upgrade", _db_upgrade, "create or upgrade the schema", components=False)
    leaf(db, "current", _db_current, "show the schema revision", components=False)

    audit = group("audit", "the audit log")
    p = leaf(audit, "tail", _audit_tail, "show the last events")
    p.add_argument("-n", type=int, default=20, help="how many (default 20)")

    key = group("key", "the master key")
    leaf(key, "rotate", _key_rotate, "add a new master key and re-encrypt every ASP with it")

    otp = group("otp", "TOTP second factor (authenticator app codes)")
    p = leaf(
        otp, "enrol", _otp_enrol, "start a TOTP enrolment (prints the secret and a QR code), or confirm it with --code"
    )
    p.add_argument("username")
    p.add_argument("--code", help="confirm the pending enrolment with the app's current code")
    p.add_argument("--force", action="store_true", help="replace an active secret")
    p.add_argument("--svg", metavar="FILE", help="also write the QR code as SVG to FILE")
    p.add_argument("--no-qr", action="store_true", help="do not print the terminal QR code")
    p = leaf(otp, "status", _otp_status, "show whether a user has TOTP (never the secret)")
    p.add_argument("username")
    p = leaf(otp, "reset", _otp_reset, "remove a user's TOTP secret and recovery codes")
    p.add_argument("username")
    p = leaf(
        otp, "recovery-codes", _otp_recovery_codes, "replace a user's recovery codes with 10 new ones (printed once)"
    )
    p.add_argument("username")
