"""API tokens for automation: ``ucg_<id>_<secret>``, SHA-256 hashed at rest, one role each.

The token is shown once, by :meth:`ApiTokens.create` (``ucgate api-token create --role ...``).
The file (JSON, mode 0600) holds ``id, role, label, sha256(secret), created_at, revoked_at``:
a copy of it cannot be used to call the API. 256-bit secrets need no slow hash; lookup is by id
and the hash is compared in constant time.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import hmac
import json
import os
import secrets
import sys
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

from .settings import ROLES

PREFIX = "ucg_"


@dataclass(frozen=True)
class ApiToken:
    id: str
    role: str
    label: str
    created_at: str
    revoked_at: str | None = None
    sha256: str = ""

    def public(self) -> dict:
        d = asdict(self)
        d.pop("sha256")
        return d


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class ApiTokens:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    def _load(self) -> dict[str, ApiToken]:
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        return {t["id"]: ApiToken(**t) for t in raw.get("tokens", [])}

    def _save(self, tokens: dict[str, ApiToken]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"tokens": [asdict(t) for t in tokens.values()]}, f, indent=1)
        os.replace(tmp, self.path)

    def create(self, role: str, label: str) -> tuple[ApiToken, str]:
        """Returns (token info, the token itself — shown once)."""
        if role not in ROLES or role == "user":
            raise ValueError(f"role: expected admin, helpdesk or auditor, got {role!r}")
        label = " ".join(label.split())[:128]
        if not label:
            raise ValueError("label: required (what the token is for)")
        tid, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
        tok = ApiToken(tid, role, label, dt.datetime.now(dt.timezone.utc).isoformat(),
                       sha256=_hash(secret))
        with self._lock:
            tokens = self._load()
            tokens[tid] = tok
            self._save(tokens)
        return tok, f"{PREFIX}{tid}_{secret}"

    def list(self) -> list[ApiToken]:
        return list(self._load().values())

    def revoke(self, tid: str) -> bool:
        with self._lock:
            tokens = self._load()
            t = tokens.get(tid)
            if t is None:
                return False
            tokens[tid] = ApiToken(**{**asdict(t), "revoked_at": dt.datetime.now(dt.timezone.utc).isoformat()})
            self._save(tokens)
        return True

    def verify(self, presented: str) -> ApiToken | None:
        """The active token ``presented`` is, or None."""
        if not presented.startswith(PREFIX):
            return None
        tid, _, secret = presented[len(PREFIX):].partition("_")
        tok = self._load().get(tid)
        want = tok.sha256 if tok else _hash("decoy")
        ok = hmac.compare_digest(want, _hash(secret))
        return tok if ok and tok is not None and tok.revoked_at is None else None


# --- ucgate api-token ... ---------------------------------------------------------------------

def tokens_for(config) -> ApiTokens:
    web = getattr(config, "web", None)
    path = web.api_tokens_file if web and web.api_tokens_file else config.data_dir / "api-tokens.json"
    return ApiTokens(path)


def _run(args) -> int:
    from ..config import load

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
    out = argparse.ArgumentParser(add_help=False)
    out.add_argument("--json", action="store_true", help="machine-readable output")
    g = subparsers.add_parser("api-token", help="REST API tokens for automation",
                              description="REST API tokens for automation (/api/v1)")
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
