"""``ucgate api-token create|list|revoke``: the REST API's tokens (``ucgate.web.tokens``)."""

from __future__ import annotations

import argparse
import json
import sys

from ..config import load
from ..web.tokens import tokens_for
from .options import json_parent


def _run(args) -> int:
    tokens = tokens_for(load(args.config))
    if args.token_command == "create":
        try:
            tok, plain = tokens.create(args.role, args.label)
        except ValueError as e:
            print(f"ucgate: {e}", file=sys.stderr)
            return 2
        print("WARNING: this token is shown only now; ucgate keeps only its hash.", file=sys.stderr)
        if args.json:
            print(json.dumps({**tok.public(), "token": plain}, indent=2))
        else:
            print(f"API token {tok.id} ({tok.role}, {tok.label}):\n\n    {plain}\n")
        return 0
    if args.token_command == "list":
        rows = [t.public() for t in tokens.list()]
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            for t in rows:
                print(f"{t['id']}  {t['role']:<9} {'revoked' if t['revoked_at'] else 'active '}  {t['label']}")
        return 0
    if not tokens.revoke(args.id):
        print(f"ucgate: no API token {args.id!r} (see `ucgate api-token list`)", file=sys.stderr)
        return 1
    print(f"revoked API token {args.id}")
    return 0


def register(subparsers: argparse._SubParsersAction, common_parent: argparse.ArgumentParser) -> None:
    """Add ``api-token create|list|revoke`` to the ``ucgate`` command line."""
    out = json_parent()
    g = subparsers.add_parser(
        "api-token", help="REST API tokens for automation", description="REST API tokens for automation (/api/v1)"
    )
    sub = g.add_subparsers(dest="token_command", metavar="COMMAND", required=True)
    p = sub.add_parser("create", parents=[common_parent, out], help="create a token (printed once)")
    p.add_argument("--role", required=True, choices=["admin", "helpdesk", "auditor"])
    p.add_argument("-l", "--label", required=True, help='what it is for, e.g. "MDM sync"')
    p.set_defaults(func=_run)
    p = sub.add_parser("list", parents=[common_parent, out], help="list tokens (never the secrets)")
    p.set_defaults(func=_run)
    p = sub.add_parser("revoke", parents=[common_parent, out], help="revoke a token")
    p.add_argument("id")
    p.set_defaults(func=_run)
