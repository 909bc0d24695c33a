"""The audit log: every decision and every admin action, with who, what device, where from, why.

Each event goes to the ``audit`` table (the record of truth, committed before ``record``
returns) and, optionally, to a JSON-lines file for log shippers (one JSON object per line).

JSON-lines durability: each line is written with one ``write`` to a file opened ``O_APPEND``
(so concurrent writers, even other processes, never interleave within a line) and reaches the
OS before ``record`` returns: a crash of ucgate loses nothing. It is ``fsync``-ed at most once
per ``fsync_interval`` seconds (default 1 s) and on ``close``, so a power loss can lose up to
that last second of *file* lines, never the table's rows. ``fsync_interval=0`` fsyncs every line.
The file is reopened when it is renamed or deleted (logrotate without copytruncate).

Each event, as written to the file (:func:`to_json`), follows the JSON Schema in
``docs/audit-event.schema.json`` (``schema_version`` :data:`SCHEMA_VERSION`). With a ``syslog``
sink (``[audit.syslog]``, :mod:`ucgate.id.audit_syslog`) the same object also goes to a syslog
receiver, from a bounded queue in a background thread: a slow or absent receiver never delays
``record`` (events it cannot take are dropped and counted in ``syslog.dropped``).

Secrets never enter the log: ``details`` keys naming a secret (password, asp, hash, token,
ticket, authorization, cookie, secret, key, ...) are dropped, values that look like an ASP or a
credential header are replaced, and the event notes which keys were redacted. Identifiers are
allowed (``asp_id``, ``key_id``, ``token_type``).
"""

from __future__ import annotations

import functools
import json
import os
import re
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..store import AuditRecord, Repository
from .asp import ALPHABET

SECRET_WORDS = frozenset(
    {
        "password",
        "passwd",
        "pwd",
        "passphrase",
        "asp",
        "hash",
        "nthash",
        "token",
        "ticket",
        "authorization",
        "authenticate",
        "cookie",
        "secret",
        "key",
        "otp",
        "pin",
        "plaintext",
        "ciphertext",
        "nonce",
        "passwords",
        "asps",
        "hashes",
        "tokens",
        "tickets",
        "cookies",
        "secrets",
        "keys",
        "otps",
    }
)
# A key whose last word is one of these names a thing, not the secret itself.
SAFE_LAST_WORDS = frozenset({"id", "ids", "label", "type", "count", "kind", "expires", "len", "version"})
REDACTED = "[redacted]"
# The version of docs/audit-event.schema.json the events follow: bumped only when a field is
# removed, renamed or changes type or meaning.
SCHEMA_VERSION = 1
MAX_FIELD = 1024
_A = re.escape(ALPHABET)
# An ASP as shown (with dashes) anywhere in a value, or a whole value that is one without them.
# (Undashed 16-symbol runs inside longer values are too common in device ids and hex to redact.)
_DASHED = rf"(?<![{_A}])[{_A}]{{4}}(-[{_A}]{{4}}){{3}}(?![{_A}])"
_ASP_DASHED = re.compile(rf"(?i){_DASHED}")
_ASP_LIKE = re.compile(rf"(?i){_DASHED}|^\s*[{_A}]{{16}}\s*$")
# Keys whose values are identifiers the code wrote (an ASP id is 16 hex digits, and one in nine
# has no 0 or 1, so it is also 16 ASP symbols): only a dashed ASP or a credential header is
# redacted there, never a whole value for its alphabet.
ID_LAST_WORDS = frozenset({"id", "ids"})
ID_KEYS = frozenset({"credential", "credentials"})
_CRED_LIKE = re.compile(r"(?i)\b(basic|bearer|ntlm|negotiate)\s+[a-z0-9+/=._~-]{8,}|cwt=")
_WORDS = re.compile(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])")


@functools.lru_cache(maxsize=1024)  # a pure function of the key; events repeat their few keys
def is_secret_key(key: str) -> bool:
    """``password``, ``nt_hash``, ``X-Auth-Token``, ``sessionCookie``: True;
    ``asp_id``, ``key_id``, ``token_type``: False."""
    words = [w.lower() for w in _WORDS.findall(key)]
    if not words:
        return False
    if words[-1] in SAFE_LAST_WORDS and len(words) > 1:
        return False
    return any(w in SECRET_WORDS for w in words) or key.lower() in SECRET_WORDS


@functools.lru_cache(maxsize=1024)
def is_identifier_key(key: str) -> bool:
    """``credential``, ``asp_id``, ``deviceIds``: True; ``user``, ``other``: False."""
    if key.lower() in ID_KEYS:
        return True
    words = _WORDS.findall(key)
    return len(words) > 1 and words[-1].lower() in ID_LAST_WORDS


def scrub(details: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """A copy of ``details`` without secrets, and the dotted paths of what was redacted."""
    redacted: list[str] = []

    def walk(v: Any, path: str, ident: bool = False) -> Any:
        if isinstance(v, dict):
            out = {}
            for k, x in v.items():
                k = str(k)
                p = f"{path}.{k}" if path else k
                if is_secret_key(k):
                    redacted.append(p)
                    continue
                out[k] = walk(x, p, is_identifier_key(k))
            return out
        if isinstance(v, (list, tuple)):
            return [walk(x, f"{path}[{i}]", ident) for i, x in enumerate(v)]
        if isinstance(v, str):
            if (_ASP_DASHED if ident else _ASP_LIKE).search(v) or _CRED_LIKE.search(v):
                redacted.append(path)
                return REDACTED
            return v[:MAX_FIELD]
        if v is None or isinstance(v, (bool, int, float)):
            return v
        return str(v)[:MAX_FIELD]

    return walk(details, ""), redacted


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _clip(v: str | None) -> str | None:
    return None if v is None else str(v)[:256]


def _field(v: str | None) -> str | None:
    if v is None:
        return None
    v = str(v)
    return REDACTED if _ASP_LIKE.search(v) or _CRED_LIKE.search(v) else v[:256]


class AuditLog:
    def __init__(
        self,
        repo: Repository,
        jsonl_path: Path | None = None,
        clock: Callable[[], datetime] = _utcnow,
        *,
        fsync_interval: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
        syslog: Any = None,
    ) -> None:
        self.repo = repo
        self.syslog = syslog  # an audit_syslog.SyslogSink, or None
        self.path = Path(jsonl_path) if jsonl_path else None
        self.clock = clock
        self.fsync_interval = fsync_interval
        self.monotonic = monotonic
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._ino: tuple[int, int] | None = None
        self._last_fsync = 0.0
        self.writer: Any = None  # ucgate.id.writer.SignInWriter for record_later, or None
        self._emitter = _Emitter(self)  # what record_later hands the writer: _emit, and a batch's

    def record(
        self,
        action: str,
        *,
        actor: str,
        result: str,
        user: str | None = None,
        device: str | None = None,
        service: str | None = None,
        client_address: str | None = None,
        reason: str | None = None,
        **details: Any,
    ) -> AuditRecord:
        """Append one event (table, then file). Returns the stored event (with its id)."""
        ev = self._event(
            action,
            actor=actor,
            result=result,
            user=user,
            device=device,
            service=service,
            client_address=client_address,
            reason=reason,
            **details,
        )
        return self._emit(with_id(ev, self.repo.add_audit(ev)))

    def record_later(
        self,
        action: str,
        *,
        actor: str,
        result: str,
        user: str | None = None,
        device: str | None = None,
        service: str | None = None,
        client_address: str | None = None,
        reason: str | None = None,
        asp_used: tuple[str, datetime] | None = None,
        wait: bool = True,
        **details: Any,
    ) -> None:
        """Append one event through the sign-in writer (``writer``, ``ucgate.id.writer``): in the
        table within its ``max_delay`` (group commit), then in the file and syslog. Without a
        writer, as :meth:`record`. ``asp_used``: the ASP's last use ``(asp_id, at)`` that the
        sign-in makes, stored with the event (without a writer: after it). ``wait=False``:
        ``WriterBusy`` when the writer's queue is full now (see ``SignInWriter.audit``)."""
        ev = self._event(
            action,
            actor=actor,
            result=result,
            user=user,
            device=device,
            service=service,
            client_address=client_address,
            reason=reason,
            **details,
        )
        if self.writer is None:
            self._emit(with_id(ev, self.repo.add_audit(ev)))
            if asp_used is not None:
                self.repo.mark_asp_used(*asp_used)
        else:
            self.writer.audit(ev, self._emitter, asp_used, wait=wait)

    def _event(
        self,
        action: str,
        *,
        actor: str,
        result: str,
        user: str | None,
        device: str | None,
        service: str | None,
        client_address: str | None,
        reason: str | None,
        **details: Any,
    ) -> AuditRecord:
        clean, redacted = scrub(details)
        if redacted:
            clean["redacted"] = redacted
        return AuditRecord(
            id=None,
            at=self.clock(),
            actor=_field(actor) or "?",
            action=action,
            result=result,
            username=_field(user),
            device=_clip(device),
            service=service,
            client_address=client_address,
            reason=_field(reason),
            details=clean or None,
        )

    def _emit(self, ev: AuditRecord) -> AuditRecord:
        """A stored event (with its id) to the file and the syslog sink."""
        if self.path is not None or self.syslog is not None:
            event = to_json(ev)
            if self.path is not None:
                self._append(event)
            if self.syslog is not None:
                self.syslog.submit(event)
        return ev

    def _emit_many(self, evs: list[AuditRecord]) -> None:
        """Stored events (with their ids), in order, to the file and the syslog sink: as
        :meth:`_emit` for each, but the file gets the batch's lines in one ``write`` (whole
        lines, ``O_APPEND``: still never interleaved within a line) after one rotation check."""
        if self.path is None and self.syslog is None:
            return
        events = [to_json(ev) for ev in evs]
        if self.path is not None:
            self._append_lines(events)
        if self.syslog is not None:
            for event in events:
                self.syslog.submit(event)

    def tail(self, n: int = 20) -> list[AuditRecord]:
        if self.writer is not None:  # what this process acknowledged is in the table first
            self.writer.flush()
        return self.repo.tail_audit(n)

    # --- the JSON-lines file ----------------------------------------------------------
    def _open(self) -> int:
        assert self.path is not None
        if self._fd is not None:
            try:
                st = os.stat(self.path)
                if (st.st_dev, st.st_ino) == self._ino:
                    return self._fd
            except FileNotFoundError:
                pass
            os.close(self._fd)  # rotated away: continue in a new file
            self._fd = None
        self.path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        st = os.fstat(fd)
        self._fd, self._ino = fd, (st.st_dev, st.st_ino)
        return fd

    def _append(self, event: dict[str, Any]) -> None:
        self._append_lines([event])

    def _append_lines(self, events: list[dict[str, Any]]) -> None:
        line = "".join(json.dumps(e, ensure_ascii=False, separators=(",", ":")) + "\n" for e in events).encode()
        with self._lock:
            fd = self._open()
            os.write(fd, line)
            now = self.monotonic()
            if now - self._last_fsync >= self.fsync_interval:
                os.fsync(fd)
                self._last_fsync = now

    def close(self) -> None:
        if self.syslog is not None:
            self.syslog.close()
        with self._lock:
            if self._fd is not None:
                os.fsync(self._fd)
                os.close(self._fd)
                self._fd = None


class _Emitter:
    """``AuditLog._emit`` for the sign-in writer, which calls ``many`` with a committed batch."""

    __slots__ = ("log",)

    def __init__(self, log: AuditLog) -> None:
        self.log = log

    def __call__(self, ev: AuditRecord) -> AuditRecord:
        return self.log._emit(ev)

    def many(self, evs: list[AuditRecord]) -> None:
        self.log._emit_many(evs)


def with_id(ev: AuditRecord, ev_id: int) -> AuditRecord:
    return AuditRecord(**{**{f: getattr(ev, f) for f in ev.__slots__}, "id": ev_id})


def to_json(ev: AuditRecord) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "id": ev.id,
        "at": ev.at.isoformat(),
        "actor": ev.actor,
        "action": ev.action,
        "user": ev.username,
        "device": ev.device,
        "service": ev.service,
        "client_address": ev.client_address,
        "result": ev.result,
        "reason": ev.reason,
        "details": ev.details or {},
    }
