"""``ucgate decode``: an authentication header value's fields, without its secrets."""

from __future__ import annotations

import argparse
import sys

from ..protocols.decode import MAX_HEADER_SIZE, DecodeError, decode_header, render_text, to_json


def _cmd_decode(args: argparse.Namespace) -> int:
    if args.token == ["-"]:
        value = sys.stdin.read(MAX_HEADER_SIZE + 1)
    else:
        value = " ".join(args.token)
    try:
        decoded = decode_header(value)
    except DecodeError as e:
        print(f"ucgate decode: {e.reason}: {e.message}", file=sys.stderr)
        return 1
    sys.stdout.write(to_json(decoded) + "\n" if args.json else render_text(decoded))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    dc = sub.add_parser(
        "decode",
        help="decode an NTLM/Negotiate/Kerberos/Basic/Bearer header value (no secrets shown)",
        description="Decode an Authorization or WWW-Authenticate value ('NTLM TlRMTVNT...', "
        "'Negotiate YII...', 'Basic ...', 'Bearer ...') or a bare base64 token into its "
        "fields. Passwords, responses, MICs, keys and cipher texts are never shown.",
    )
    dc.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    dc.add_argument(
        "token",
        nargs="+",
        metavar="TOKEN",
        help="the header value (quoted, or as separate words), or - to read it from stdin",
    )
    dc.set_defaults(func=_cmd_decode)
