"""Application-specific passwords (ASPs): issue, list, revoke, verify (Basic) and NTLM hashes.

An ASP is 16 symbols from a 32-symbol alphabet without look-alikes (no ``0 o 1 l``), shown as
``abcd-efgh-jkmn-pqrs``: 16 × 5 = 80 bits. Users may type it with or without the dashes and in
either case. It is stored encrypted (``ucgate.id.keys``), bound to its row, never in clear and
never logged; the plaintext is returned once, by :meth:`AspService.create`.

Verification decrypts the user's active ASPs only when a sign-in needs them (nothing is cached
in clear). Cost: one AES-GCM decryption per ASP (about a microsecond) plus, for NTLM, four MD4
hashes per ASP (one per spelling); with 5 ASPs ``nt_hash_candidates`` is dominated by its one
database query (see the report in tests/id/test_asp.py::test_nt_hash_candidates_cost).
"""

from __future__ import annotations

import builtins
import hmac
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from Crypto.Hash import MD4

from ..store import AspRecord, NewAsp, Repository, UserRecord
from .cache import SignInCache
from .events import CredentialAdded, CredentialRevoked, Pending
from .keys import DecryptError, Keyring, asp_aad
from .users import UnknownUser, UserSecretService, UserService  # noqa: F401 (UnknownUser re-exported)

log = logging.getLogger("ucgate.id.asp")

ALPHABET = "abcdefghijkmnpqrstuvwxyz23456789"  # 32 symbols: a–z without l o, 2–9
assert len(ALPHABET) == 32 and len(set(ALPHABET)) == 32
ASP_SYMBOLS = 16  # 80 bits
GROUP = 4
# Bounds the work of one sign-in (each active ASP is decrypted and, for NTLM, tried 4 times).
MAX_ACTIVE_ASPS = 25
MAX_LABEL = 128
_ALPHABET_SET = frozenset(ALPHABET)


def generate_asp(rand: Callable[[int], bytes]) -> str:
    """A new ASP, e.g. ``k7mq-2xpa-h9dt-e4wn``.

    Args:
        rand: ``n -> n random bytes`` (``secrets.token_bytes`` in production). Each symbol is a
            byte's low 5 bits: 256 is a multiple of 32, so every symbol is equally likely.
    """
    raw = rand(ASP_SYMBOLS)
    if len(raw) != ASP_SYMBOLS:
        raise ValueError("rand returned the wrong number of bytes")
    return format_asp("".join(ALPHABET[b & 31] for b in raw))


def format_asp(canonical: str) -> str:
    return "-".join(canonical[i : i + GROUP] for i in range(0, len(canonical), GROUP))


def canonical_asp(typed: str) -> str | None:
    """The 16 lower-case symbols of a typed ASP (dashes and spaces dropped), None if it cannot
    be an ASP."""
    c = typed.replace("-", "").replace(" ", "").lower()
    if len(c) != ASP_SYMBOLS or not set(c) <= _ALPHABET_SET:
        return None
    return c


def nt_hash(password: str) -> bytes:
    """NTOWFv1 (MS-NLMP 3.3.1): MD4 of the UTF-16LE password."""
    return MD4.MD4Hash(password.encode("utf-16-le")).digest()  # MD4.new makes two hash objects


def spellings(canonical: str) -> list[str]:
    """How a user may type an ASP into an NTLM client, which hashes exactly what was typed:
    with dashes or without, lower or upper case."""
    shown = format_asp(canonical)
    return [shown, canonical, shown.upper(), canonical.upper()]


@dataclass(frozen=True, slots=True)
class AspMatch:
    asp_id: str
    user_id: int
    username: str
    label: str
    device_id: str | None


@dataclass(frozen=True, slots=True)
class AspInfo:
    """What may be shown about an ASP: everything but the secret."""

    id: str
    username: str
    label: str
    device_id: str | None
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


class AspLimit(Exception):
    pass


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _device_matches(bound: str | None, device_id: str | None) -> bool:
    # EAS device ids are compared case-insensitively (clients vary the case between versions).
    return bound is None or (device_id is not None and bound.lower() == device_id.lower())


class AspService(UserSecretService):
    def __init__(
        self,
        repo: Repository,
        keyring: Keyring,
        clock: Callable[[], datetime] = _utcnow,
        *,
        rand: Callable[[int], bytes] = secrets.token_bytes,
        users: UserService | None = None,
    ) -> None:
        super().__init__(repo, keyring, clock, rand, users=users)
        self.cache: SignInCache | None = None  # the sign-in cache (ucgate.id.cache), if any

    # --- administration ---------------------------------------------------------------
    def create(self, username: str, label: str, device_id: str | None = None) -> tuple[str, str]:
        """Issue an ASP. Returns ``(asp_id, plaintext)``; the plaintext is never available again.

        Raises:
            UnknownUser; ValueError for a bad label; AspLimit when the user has
            MAX_ACTIVE_ASPS active ASPs.
        """
        user = self._user(username)
        label = " ".join(label.split())
        if not label or len(label) > MAX_LABEL or not label.isprintable():
            raise ValueError(f"a label is 1 to {MAX_LABEL} printable characters")
        if len(self.repo.list_asps(user.id, include_revoked=False)) >= MAX_ACTIVE_ASPS:
            raise AspLimit(f"{user.username} has {MAX_ACTIVE_ASPS} active ASPs; revoke one first")
        plaintext = generate_asp(self.rand)
        asp_id = self.rand(8).hex()
        canonical = canonical_asp(plaintext)
        assert canonical is not None  # generate_asp spells an ASP
        nonce, sealed = self.keyring.encrypt(canonical.encode(), asp_aad(user.id, asp_id))
        # a cache-only event: every process's sign-in cache forgets the user's ASP list
        pending = Pending(CredentialAdded(user.username, asp_id, "asp-created"))
        self.repo.add_asp(
            NewAsp(
                id=asp_id,
                user_id=user.id,
                label=label,
                ciphertext=sealed,
                nonce=nonce,
                device_id=device_id or None,
                created_at=self.clock(),
            ),
            event=pending,
        )
        if self.users.bus is not None:
            self.users.bus.committed(pending)
        elif self.cache is not None:
            self.cache.drop(user.username)
        return asp_id, plaintext

    def list(self, username: str, *, include_revoked: bool = True) -> list[AspInfo]:
        user = self._user(username)
        return [
            AspInfo(a.id, user.username, a.label, a.device_id, a.created_at, a.last_used_at, a.revoked_at)
            for a in self.repo.list_asps(user.id, include_revoked=include_revoked)
        ]

    def get(self, asp_id: str) -> AspInfo | None:
        a = self.repo.get_asp(asp_id)
        if a is None:
            return None
        u = self.repo.get_user_by_id(a.user_id)
        return AspInfo(a.id, u.username if u else "?", a.label, a.device_id, a.created_at, a.last_used_at, a.revoked_at)

    def revoke(self, asp_id: str, *, actor: str | None = None) -> bool:
        """False when there is no such ASP (revoking twice is fine). Every process closes the
        connections signed in with it (an event in the same transaction)."""
        a = self.repo.get_asp(asp_id)
        if a is None:
            return False
        u = self.repo.get_user_by_id(a.user_id)
        pending = Pending(CredentialRevoked(u.username if u else "?", asp_id, "asp-revoked"), actor)
        ok = self.repo.revoke_asp(asp_id, self.clock(), event=pending)
        if ok and self.users.bus is not None:
            self.users.bus.committed(pending)
        return ok

    def mark_used(self, asp_id: str, at: datetime | float | None = None) -> None:
        """Record a successful sign-in with the ASP; ``at`` is a datetime or POSIX seconds."""
        if isinstance(at, (int, float)):
            at = datetime.fromtimestamp(at, UTC)
        self.repo.mark_asp_used(asp_id, at or self.clock())

    def reencrypt_all(self) -> int:
        """Re-encrypt every ASP under the keyring's active key (after a key rotation)."""
        n = 0
        for asp_id in self.repo.all_asp_ids():
            a = self.repo.get_asp(asp_id)
            if a is None or Keyring.key_id_of(a.ciphertext) == self.keyring.active:
                continue
            aad = asp_aad(a.user_id, a.id)
            nonce, sealed = self.keyring.encrypt(self.keyring.decrypt(a.nonce, a.ciphertext, aad), aad)
            self.repo.replace_asp_ciphertext(a.id, sealed, nonce)
            n += 1
        return n

    # --- verification -----------------------------------------------------------------
    # (``builtins.list`` below: in the class body, ``list`` is the method above)
    def _records(
        self, username: str, fresh: bool, only_cached: bool = False
    ) -> tuple[UserRecord | None, builtins.list[AspRecord], bool]:
        """The user, their unrevoked ASPs, and whether both came from the sign-in cache (never
        when ``fresh``; ``only_cached``: only from it — no user on a miss, nothing read)."""
        cache = self.cache
        if cache is not None and not fresh:
            got = cache.get(username)
            if got is not None:
                return got[0], got[1], True
        if only_cached:
            return None, [], False
        user = self.users.resolve(username)
        records = self.repo.list_asps(user.id, include_revoked=False) if user is not None else []
        if cache is not None and user is not None:
            cache.put(username, user, records)
        return user, records, False

    def _usable(
        self, username: str, device_id: str | None, *, fresh: bool = False, only_cached: bool = False
    ) -> tuple[UserRecord | None, builtins.list[tuple[AspRecord, bytes]], bool]:
        user, records, cached = self._records(username, fresh, only_cached)
        if user is None or not user.enabled:
            return None, [], cached
        out: builtins.list[tuple[AspRecord, bytes]] = []
        for a in records:
            if not _device_matches(a.device_id, device_id):
                continue
            try:
                secret = self.keyring.decrypt(a.nonce, a.ciphertext, asp_aad(user.id, a.id))
            except DecryptError as e:
                log.warning("ASP %s of %s does not decrypt (skipped): %s", a.id, user.username, e)
                continue
            out.append((a, secret))
        return user, out, cached

    def verify_password(
        self, username: str, password: str, device_id: str | None = None, *, only_cached: bool = False
    ) -> AspMatch | None:
        """The ASP ``password`` is, for Basic sign-in; None for a wrong, revoked or other
        device's ASP, a disabled or unknown user.

        Every usable ASP of the user is compared, in constant time, whatever matches first.
        ``only_cached``: from the sign-in cache alone, reading nothing (None also on a miss, and
        for a refusal, which only a fresh read may make).
        """
        typed = (canonical_asp(password) or "\x00" * ASP_SYMBOLS).encode()
        for fresh in (False,) if only_cached else (False, True):  # a refusal is read fresh
            user, usable, cached = self._usable(username, device_id, fresh=fresh, only_cached=only_cached)
            found = None
            for a, secret in usable:
                if hmac.compare_digest(secret, typed) and found is None:
                    found = a
            if found is not None or not cached:  # a refusal from a fresh read stands
                break
        if user is None or found is None:
            return None
        return AspMatch(found.id, user.id, user.username, found.label, found.device_id)

    def usable_spellings(self, username: str, device_id: str | None = None) -> builtins.list[tuple[str, str]]:
        """(asp_id, spelling) of every usable ASP, for the otp-appended NTLM candidates."""
        _, usable, _ = self._usable(username, device_id)
        return [(a.id, sp) for a, secret in usable for sp in spellings(secret.decode())]

    def nt_hash_candidates(
        self, username: str, device_id: str | None = None, *, only_cached: bool = False
    ) -> builtins.list[tuple[str, bytes]]:
        """``(asp_id, NT hash)`` for each usable ASP and each spelling (see :func:`spellings`);
        empty for an unknown or disabled user (``only_cached``: and on a cache miss, reading
        nothing)."""
        _, usable, _ = self._usable(username, device_id, only_cached=only_cached)
        return [(a.id, nt_hash(s)) for a, secret in usable for s in spellings(secret.decode())]
