"""``ucgate vault set | status | delete USER`` (admin commands for the credential vault).

``set`` reads the domain password from a prompt (twice, not echoed) or, when stdin is not a
terminal, from the first line of stdin — never from the command line, where ``ps`` and the
shell history would show it. With ``[directory]`` configured the password is checked by an LDAP
bind as the user first (``--no-verify`` skips that).
"""

from __future__ import annotations

import argparse
import getpass
import sys

from ..config import load
from ..id.components import Components
from ..id.users import UnknownUser
from ..id.vault import VaultError, VaultService
from .admin import OK, REFUSED, _actor, _default_settings, _emit, _Runner, _when
from .options import json_parent


def _service(c: Components) -> VaultService:
    return VaultService(c.repo, c.keyring, users=c.users, audit=c.audit)


def _read_password(user: str) -> str:
    if sys.stdin.isatty():
        first = getpass.getpass(f"domain password of {user}: ")
        if getpass.getpass("again: ") != first:
            raise VaultError("the two passwords differ")
        return first
    line = sys.stdin.readline()
    return line.removesuffix("\n")


def _verifier(args):
    if args.no_verify:
        return None
    config = load(args.config)
    if config.directory is None:
        return None
    # lazy: ucgate.app and gateway/ take ~0.1 s to import; only this command needs them
    from ..app import open_directory

    directory = open_directory(config)

    def verify(user: str, password: str) -> bool:
        du = directory.resolve(user)
        return du is not None and directory.verify_password(du, password)

    return verify


def _set(args, c: Components) -> int:
    svc = _service(c)
    user = c.users.resolve(args.username)
    if user is None:
        raise UnknownUser(f"no user {args.username!r} (add it with `ucgate user add`)")
    password = _read_password(user.username)
    st = svc.set_password(user.username, password, actor=_actor(), verify=_verifier(args))
    _emit(
        args,
        {"username": st.username, "enrolled": True, "verified": st.verified_at is not None},
        f"vault: the domain password of {st.username} is stored"
        + (" (verified against the directory)" if st.verified_at else " (not verified)"),
    )
    return OK


def _status(args, c: Components) -> int:
    st = _service(c).status(args.username)
    _emit(
        args,
        {
            "username": st.username,
            "enrolled": st.enrolled,
            "updated_at": st.updated_at.isoformat() if st.updated_at else None,
            "set_by": st.set_by,
            "verified_at": st.verified_at.isoformat() if st.verified_at else None,
            "last_used_at": st.last_used_at.isoformat() if st.last_used_at else None,
        },
        f"{st.username}: "
        + (
            f"enrolled {_when(st.updated_at)} by {st.set_by}, verified "
            f"{_when(st.verified_at)}, last used {_when(st.last_used_at)}"
            if st.enrolled
            else "no domain password in the vault"
        ),
    )
    return OK


def _delete(args, c: Components) -> int:
    if not _service(c).delete(args.username, actor=_actor()):
        print(f"ucgate: {args.username} has no domain password in the vault", file=sys.stderr)
        return REFUSED
    _emit(args, {"username": args.username, "deleted": True}, f"vault: removed {args.username}")
    return OK


def _Run(handler) -> _Runner:
    return _Runner(handler, _default_settings, refused=(UnknownUser, VaultError))


def register(subparsers: argparse._SubParsersAction, common_parent: argparse.ArgumentParser) -> None:
    """Add ``vault`` to the ``ucgate`` command line."""
    out = json_parent()
    g = subparsers.add_parser(
        "vault",
        help="users' domain passwords for the vault backend mode",
        description="users' domain passwords for the vault backend mode",
    )
    sub = g.add_subparsers(dest="vault_command", metavar="COMMAND", required=True)
    p = sub.add_parser(
        "set",
        parents=[common_parent, out],
        help="store a user's domain password (read from a prompt or stdin)",
        description="store a user's domain password, read from a prompt (twice) or, "
        "when stdin is not a terminal, from its first line: never from "
        "the command line",
    )
    p.add_argument("username")
    p.add_argument("--no-verify", action="store_true", help="do not check the password against the directory first")
    p.set_defaults(func=_Run(_set))
    p = sub.add_parser("status", parents=[common_parent, out], help="is a password enrolled (never shown)")
    p.add_argument("username")
    p.set_defaults(func=_Run(_status))
    p = sub.add_parser("delete", parents=[common_parent, out], help="remove a user's domain password")
    p.add_argument("username")
    p.set_defaults(func=_Run(_delete))
