"""The credential vault: a user's domain password, for the ``vault`` backend mode.

Some front ends only take Windows credentials (NTLM, Basic) and Kerberos delegation is not
available. Then the gateway can answer the front end *as the user* with the user's domain
password, which the user (self-service portal) or an admin (``ucgate vault set USER``, reading
the password from a prompt or stdin, never from argv) enrols once. The device keeps only its
ASP; the domain password never leaves the LAN side of the gateway except to the front end.

Storage
    One row per user (``vault_secrets``, migration 0004), the UTF-8 password sealed with the
    keyring (``ucgate.id.keys``: AES-256-GCM, key id in the header) under the associated data
    :func:`vault_aad` — the user's id and a random row id chosen at each enrolment — so a
    ciphertext copied to another user's row, or back over a newer enrolment, does not decrypt.
    A copy of the database without the key file reveals nothing; ``ucgate key rotate``
    re-encrypts vault secrets with the new key (:meth:`VaultService.reencrypt_all`).

Verification
    When a directory is configured, an enrolment is checked by an LDAP bind as the user first
    (:meth:`VaultService.set_password` ``verify=``), so a typo does not lock the account later.
    A password changed in AD makes the vault entry stale: the front end refuses it and the
    gateway logs ``backend-credentials-refused``; the user enrols the new one.

Remote id service
    The gateway reads vault secrets in-process only for now: with ``[id_service] url`` (the id
    service on the LAN, no store in the DMZ) the ``vault`` mode is not available, by design of
    that split (the DMZ holds no credentials). KCD is the mode for that deployment.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ..store.vault import VaultStore
from .keys import DecryptError
from .users import UserSecretService

log = logging.getLogger("ucgate.id.vault")

MAX_PASSWORD = 256  # AD's limit is 256 characters (127 for some clients)
CACHE_SECONDS = 60.0  # decrypted secrets kept in memory this long (the gateway's hot path)


class VaultError(ValueError):
    """A password was refused for the vault (empty, too long, not the domain password)."""


def vault_aad(user_id: int, row_id: str) -> bytes:
    """The associated data binding a vault ciphertext to its row."""
    return b"vault:%d:%s" % (user_id, row_id.encode())


@dataclass(frozen=True)
class VaultStatus:
    username: str
    enrolled: bool
    updated_at: datetime | None = None
    set_by: str | None = None
    verified_at: datetime | None = None
    last_used_at: datetime | None = None


class VaultService(UserSecretService):
    """Enrol, read and remove vaulted domain passwords.

    Args:
        repo: the ``SqlRepository`` (its engine holds ``vault_secrets``).
        keyring: the ``Keyring``.
        audit: an ``AuditLog`` (set/delete are recorded, reads are not: they happen per request).
    """

    def __init__(
        self,
        repo: Any,
        keyring: Any,
        *,
        users: Any = None,
        audit: Any = None,
        clock: Callable[[], datetime] | None = None,
        rand: Callable[[int], bytes] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(repo, keyring, clock or (lambda: datetime.now(UTC)), rand, users=users)
        self.store = VaultStore(repo.engine)
        self.audit = audit
        self.monotonic = monotonic
        self._cache: dict[str, tuple[float, str]] = {}

    # --- administration -----------------------------------------------------------------
    def set_password(
        self, username: str, password: str, *, actor: str, verify: Callable[[str, str], bool] | None = None
    ) -> VaultStatus:
        """Store ``password`` as ``username``'s domain password (replacing any earlier one).

        Args:
            verify: ``(username, password) -> bool``, e.g. an LDAP bind; False refuses it.
        Raises:
            UnknownUser; VaultError.
        """
        user = self._user(username)
        if not password or len(password) > MAX_PASSWORD or "\x00" in password:
            raise VaultError(f"a domain password is 1 to {MAX_PASSWORD} characters")
        verified = None
        if verify is not None:
            if not verify(user.username, password):
                self._audit("vault.set", actor, user.username, "deny", "not-the-domain-password")
                raise VaultError(f"the directory refused this password for {user.username}")
            verified = self.clock()
        row_id = self.rand(16).hex()
        nonce, sealed = self.keyring.encrypt(password.encode("utf-8"), vault_aad(user.id, row_id))
        self.store.put(
            user_id=user.id,
            id=row_id,
            ciphertext=sealed,
            nonce=nonce,
            at=self.clock(),
            set_by=actor,
            verified_at=verified,
        )
        self._cache.pop(user.username, None)
        self._audit("vault.set", actor, user.username, "ok", "verified" if verified else "unverified")
        return self.status(user.username)

    def delete(self, username: str, *, actor: str) -> bool:
        user = self._user(username)
        gone = self.store.delete(user.id)
        self._cache.pop(user.username, None)
        if gone:
            self._audit("vault.delete", actor, user.username, "ok", None)
        return gone

    def status(self, username: str) -> VaultStatus:
        user = self._user(username)
        rec = self.store.get(user.id)
        if rec is None:
            return VaultStatus(user.username, False)
        return VaultStatus(user.username, True, rec.updated_at, rec.set_by, rec.verified_at, rec.last_used_at)

    def reencrypt_all(self) -> int:
        """Re-encrypt every vault secret with the keyring's active key (``ucgate key rotate``)."""
        n = 0
        for user_id in self.store.user_ids():
            rec = self.store.get(user_id)
            if rec is None or self.keyring.key_id_of(rec.ciphertext) == self.keyring.active:
                continue
            aad = vault_aad(user_id, rec.id)
            plain = self.keyring.decrypt(rec.nonce, rec.ciphertext, aad)
            nonce, sealed = self.keyring.encrypt(plain, aad)
            if self.store.replace_ciphertext(user_id, rec.id, sealed, nonce):
                n += 1
        return n

    # --- for the gateway ----------------------------------------------------------------
    def password_sync(self, username: str) -> str | None:
        """The user's domain password, or None when none is enrolled (or it does not decrypt:
        logged, treated as absent)."""
        now = self.monotonic()
        hit = self._cache.get(username)
        if hit is not None and now - hit[0] < CACHE_SECONDS:
            return hit[1]
        user = self.users.resolve(username)
        if user is None or not user.enabled:
            return None
        rec = self.store.get(user.id)
        if rec is None:
            return None
        try:
            plain = self.keyring.decrypt(rec.nonce, rec.ciphertext, vault_aad(user.id, rec.id)).decode("utf-8")
        except (DecryptError, UnicodeDecodeError) as e:
            log.error("vault secret of %s does not decrypt: %s", user.username, e)
            return None
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[username] = (now, plain)
        self.store.mark_used(user.id, self.clock())
        return plain

    async def password(self, username: str) -> str | None:
        return await asyncio.to_thread(self.password_sync, username)

    def forget(self, username: str | None = None) -> None:
        """Drop cached plaintext (one user's, or all)."""
        if username is None:
            self._cache.clear()
        else:
            self._cache.pop(username, None)

    def on_event(self, event: object) -> None:
        """A cut-off user's decrypted password leaves memory at once."""
        user = getattr(event, "user", None)
        if (
            user is not None
            and getattr(event, "device_id", None) is None
            and getattr(event, "credential_id", None) is None
        ):
            self.forget(user)

    def _audit(self, action: str, actor: str, user: str, result: str, reason: str | None) -> None:
        if self.audit is not None:
            self.audit.record(action, actor=actor, user=user, result=result, reason=reason)
