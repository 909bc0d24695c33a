"""API tokens for automation: ``ucg_<id>_<secret>``, SHA-256 hashed at rest, one role each.

The token is shown once, by :meth:`ApiTokens.create` (``ucgate api-token create --role ...``).
The file (JSON, mode 0600) holds ``id, role, label, sha256(secret), created_at, revoked_at``:
a copy of it cannot be used to call the API. 256-bit secrets need no slow hash; lookup is by id
and the hash is compared in constant time.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import os
import secrets
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

from .settings import ROLES, Role

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
        if role not in ROLES or role == Role.USER:
            raise ValueError(f"role: expected admin, helpdesk or auditor, got {role!r}")
        label = " ".join(label.split())[:128]
        if not label:
            raise ValueError("label: required (what the token is for)")
        tid, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
        tok = ApiToken(tid, role, label, dt.datetime.now(dt.UTC).isoformat(), sha256=_hash(secret))
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
            tokens[tid] = ApiToken(**{**asdict(t), "revoked_at": dt.datetime.now(dt.UTC).isoformat()})
            self._save(tokens)
        return True

    def verify(self, presented: str) -> ApiToken | None:
        """The active token ``presented`` is, or None."""
        if not presented.startswith(PREFIX):
            return None
        tid, _, secret = presented[len(PREFIX) :].partition("_")
        tok = self._load().get(tid)
        want = tok.sha256 if tok else _hash("decoy")
        ok = hmac.compare_digest(want, _hash(secret))
        return tok if ok and tok is not None and tok.revoked_at is None else None


def tokens_for(config) -> ApiTokens:
    web = getattr(config, "web", None)
    path = web.api_tokens_file if web and web.api_tokens_file else config.data_dir / "api-tokens.json"
    return ApiTokens(path)
