"""Users: the accounts ASPs are issued to, and how a typed login name finds one.

A user is a directory account: its key is the sAMAccountName, compared case-insensitively (as
Active Directory does), so the store keeps it in canonical lower case. Clients type names in
three forms; only :func:`resolve_login_name` turns them into a sAMAccountName, explicitly:

- ``alice`` → ``alice``;
- ``CONTOSO\\alice`` (down-level logon name) → ``alice``, if ``CONTOSO`` is one of our domains;
- ``alice@contoso.com`` (a UPN) → whatever account has that UPN (the UPN prefix is *not*
  necessarily the sAMAccountName), looked up through a function the caller passes.
"""

from __future__ import annotations

import os
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from ..store import DuplicateError, Repository, UserRecord
from .events import EventBus, Pending, UserBlocked

# AD limits sAMAccountName to 20 characters for users (MS-ADTS 3.1.1.5.2.4 / "Naming
# Properties"); we accept longer names (service accounts, other directories) up to this.
MAX_USERNAME = 256
# Characters AD forbids in sAMAccountName, plus the separators of the other two forms.
_FORBIDDEN = set('"/\\[]:;|=,+*?<>@')


class InvalidUsername(ValueError):
    """A name that cannot be a sAMAccountName."""


def normalise_username(name: str) -> str:
    """The canonical form of a sAMAccountName: NFC, stripped, lower case.

    Raises:
        InvalidUsername: empty, too long, control characters, or a character AD forbids
            (including ``\\`` and ``@``: use :func:`resolve_login_name` for those forms).
    """
    n = unicodedata.normalize("NFC", name).strip().lower()
    if not n:
        raise InvalidUsername("empty user name")
    if len(n) > MAX_USERNAME:
        raise InvalidUsername(f"user name longer than {MAX_USERNAME} characters")
    bad = sorted({c for c in n if c in _FORBIDDEN or unicodedata.category(c)[0] == "C"})
    if bad:
        raise InvalidUsername(
            f"user name {name!r} contains {' '.join(repr(c) for c in bad)}; "
            "give the sAMAccountName (not DOMAIN\\user or user@domain)"
        )
    if n.endswith("."):
        raise InvalidUsername("a sAMAccountName cannot end with '.'")
    return n


def normalise_upn(upn: str) -> str:
    """UPNs compare case-insensitively too: ``alice@contoso.com``."""
    u = unicodedata.normalize("NFC", upn).strip().lower()
    local, at, domain = u.rpartition("@")
    if not at or not local or not domain or any(unicodedata.category(c)[0] in "CZ" for c in u):
        raise InvalidUsername(f"not a UPN (user@domain): {upn!r}")
    return u


@dataclass(frozen=True, slots=True)
class LoginName:
    """A login name as typed, split into its parts (no lookup)."""

    form: str  # "plain" | "downlevel" | "upn"
    account: str  # the part before '@' or after '\'
    domain: str | None  # NetBIOS domain (downlevel) or DNS suffix (upn)


def split_login_name(typed: str) -> LoginName:
    """Split ``user``, ``DOMAIN\\user`` or ``user@domain``. Pure; raises InvalidUsername."""
    t = unicodedata.normalize("NFC", typed).strip()
    if "\\" in t:
        domain, _, account = t.partition("\\")
        if not domain or not account:
            raise InvalidUsername(f"expected DOMAIN\\user, got {typed!r}")
        return LoginName("downlevel", account, domain.lower())
    if "@" in t:
        account, _, domain = t.rpartition("@")
        if not account or not domain:
            raise InvalidUsername(f"expected user@domain, got {typed!r}")
        return LoginName("upn", account, domain.lower())
    return LoginName("plain", t, None)


def resolve_login_name(
    typed: str,
    *,
    netbios_domains: Iterable[str] = (),
    lookup_upn: Callable[[str], str | None] = lambda upn: None,
) -> str | None:
    """The canonical sAMAccountName a typed login name refers to, or None.

    Args:
        netbios_domains: the domains a ``DOMAIN\\user`` may name (case-insensitive); empty
            means "any" (one-domain deployments where clients type arbitrary prefixes).
        lookup_upn: canonical UPN → sAMAccountName, or None when no account has it.
    Returns None for a name that is malformed, in a foreign domain, or an unknown UPN.
    """
    try:
        name = split_login_name(typed)
        if name.form == "plain":
            return normalise_username(name.account)
        if name.form == "downlevel":
            allowed = {d.lower() for d in netbios_domains}
            if allowed and name.domain not in allowed:
                return None
            return normalise_username(name.account)
        sam = lookup_upn(normalise_upn(typed))
        return normalise_username(sam) if sam is not None else None
    except InvalidUsername:
        return None


def _utcnow() -> datetime:
    return datetime.now(UTC)


class UserService:
    """Add, find, list, enable and disable users."""

    def __init__(
        self,
        repo: Repository,
        clock: Callable[[], datetime] = _utcnow,
        netbios_domains: Iterable[str] = (),
        bus: EventBus | None = None,
    ) -> None:
        self.repo = repo
        self.clock = clock
        self.netbios_domains = tuple(netbios_domains)
        self.bus = bus  # disable / sign-out events (ucgate.id.events)

    def add(
        self,
        username: str,
        *,
        upn: str | None = None,
        sip_uri: str | None = None,
        display_name: str | None = None,
        source: str = "local",
    ) -> UserRecord:
        """Raises InvalidUsername, or DuplicateError when the name or UPN is taken."""
        sam = normalise_username(username)
        if sip_uri is not None and not sip_uri.lower().startswith("sip:"):
            sip_uri = f"sip:{sip_uri}"
        return self.repo.add_user(
            sam,
            upn=normalise_upn(upn) if upn else None,
            sip_uri=sip_uri,
            display_name=display_name,
            source=source,
            created_at=self.clock(),
        )

    def resolve(self, typed: str) -> UserRecord | None:
        """The user a typed login name (any of the three forms) refers to."""

        def by_upn(upn: str) -> str | None:
            u = self.repo.get_user_by_upn(upn)
            return u.username if u else None

        if typed.strip()[:4].lower() == "sip:":
            # a SIP address of record (the SIP relay): the local user whose SIP URI it is, found
            # by the UPN of the same address (local users have no SIP-only lookup)
            uri = typed.strip()
            try:
                rec = self.repo.get_user_by_upn(normalise_upn(uri[4:]))
            except InvalidUsername:
                return None
            if rec is None or (rec.sip_uri and rec.sip_uri.lower() != uri.lower()):
                return None
            return rec
        sam = resolve_login_name(typed, netbios_domains=self.netbios_domains, lookup_upn=by_upn)
        return self.repo.get_user(sam) if sam else None

    def get(self, username: str) -> UserRecord | None:
        return self.resolve(username)

    def list(self) -> list[UserRecord]:
        return self.repo.list_users()

    def disable(self, username: str, *, actor: str | None = None) -> bool:
        """Disable the user; every process closes their live sessions (an event in the same
        transaction)."""
        u = self.resolve(username)
        if u is None:
            return False
        pending = Pending(UserBlocked(u.username, "user-disabled"), actor)
        ok = self.repo.set_user_enabled(u.username, False, event=pending)
        if ok and self.bus is not None:
            self.bus.committed(pending)
        return ok

    def sign_out(self, username: str, *, actor: str | None = None, reason: str = "signed-out") -> bool:
        """Close the user's live sessions on every gateway (they may sign in again)."""
        u = self.resolve(username)
        name = u.username if u is not None else normalise_username(username)
        event = UserBlocked(name, reason, signed_in_before=self.clock())
        if self.bus is not None:
            self.bus.publish(event, actor=actor)
        return u is not None

    def enable(self, username: str) -> bool:
        u = self.resolve(username)
        return u is not None and self.repo.set_user_enabled(u.username, True)


def current_os_user() -> str:
    """Who runs an admin command (the audit log's actor for CLI actions)."""
    try:
        import pwd

        return pwd.getpwuid(os.getuid()).pw_name
    except (ImportError, KeyError):
        return os.environ.get("USER") or os.environ.get("USERNAME") or "unknown"


__all__ = [
    "DuplicateError",
    "InvalidUsername",
    "LoginName",
    "UserService",
    "normalise_upn",
    "normalise_username",
    "resolve_login_name",
    "split_login_name",
]


class UnknownUser(LookupError):
    """No user by that name (ASP and TOTP administration)."""


class UserSecretService:
    """Base of the services that keep encrypted secrets per user (ASPs, TOTP): the store, the
    keyring, the clock and randomness they are given, and the user lookup they share."""

    def __init__(
        self,
        repo: Repository,
        keyring,
        clock: Callable[[], datetime] = _utcnow,
        rand: Callable[[int], bytes] | None = None,
        *,
        users: UserService | None = None,
    ) -> None:
        import secrets

        self.repo = repo
        self.keyring = keyring
        self.clock = clock
        self.rand = rand or secrets.token_bytes
        self.users = users or UserService(repo, clock)

    def _user(self, username: str) -> UserRecord:
        u = self.users.resolve(username)
        if u is None:
            raise UnknownUser(f"no user {username!r}")
        return u
