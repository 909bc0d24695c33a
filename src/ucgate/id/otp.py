"""TOTP second factor (RFC 6238): enrolment, verification with replay protection, recovery codes.

Algorithm
    HOTP (RFC 4226 §5) over the time step ``T = floor(unix time / 30)`` (RFC 6238 §4), HMAC-SHA-1,
    6 digits: what every authenticator app does with an ``otpauth://totp/`` URI. A code is
    accepted for steps T-1, T and T+1 (RFC 6238 §5.2 recommends at most one step of network
    delay / clock skew); ±2 is refused.

Replay
    The step of the last accepted code is stored per user (``otp_secrets.last_step``), and a code
    is accepted only for a *later* step, by one conditional UPDATE in the store
    (``Repository.advance_otp_step``): it survives restarts and holds across processes and
    gateways sharing PostgreSQL (RFC 6238 §5.2: "the verifier MUST NOT accept the second
    attempt of the OTP after the successful validation has been issued for the first OTP").

Storage
    The 160-bit secret (RFC 4226 §4 R6 recommends 160 bits) and a 256-bit per-user recovery key
    are sealed together with the keyring (``ucgate.id.keys``), bound to the row by
    :func:`otp_aad`. Recovery codes (10, each 12 symbols of the ASP alphabet = 60 bits, shown
    once as ``abcd-efgh-jkmn``) are stored as HMAC-SHA-256 under that recovery key: a copy of
    the database without the key file reveals neither the secret nor the codes.

Enrolment
    :meth:`OtpService.begin_enrolment` stores a *pending* secret and returns it once (base32,
    ``otpauth://`` URI, QR code); nothing changes for sign-ins until
    :meth:`OtpService.confirm_enrolment` receives a valid code, which activates the secret and
    returns the recovery codes (once). A user with an active secret must be reset first.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import quote, urlencode

from ..policy.twofactor import OTP_DIGITS, Factor
from ..store import DuplicateError, NewOtpSecret, OtpRecord, UserRecord
from .asp import ALPHABET
from .events import Pending, UserBlocked
from .keys import DecryptError, Keyring
from .users import UnknownUser, UserSecretService, UserService  # noqa: F401 (UnknownUser re-exported)

log = logging.getLogger("ucgate.id.otp")

STEP_SECONDS = 30  # RFC 6238 §4.1 X, the default every app uses
WINDOW = 1  # steps accepted either side of the current one (RFC 6238 §5.2)
SECRET_BYTES = 20  # 160 bits, RFC 4226 §4 R6; the HMAC-SHA-1 block-size-friendly length
RECOVERY_KEY_BYTES = 32
RECOVERY_CODES = 10
RECOVERY_SYMBOLS = 12  # 12 × 5 = 60 bits each
ISSUER = "ucgate"

_ALPHABET_SET = frozenset(ALPHABET)


class NotEnrolled(Exception):
    """The user has no active TOTP secret (or no pending enrolment to confirm)."""


class AlreadyEnrolled(Exception):
    """The user has an active TOTP secret; reset it before enrolling again."""


def otp_aad(user_id: int, otp_id: str) -> bytes:
    """The associated data binding a TOTP secret's ciphertext to its row."""
    return b"otp:%d:%s" % (user_id, otp_id.encode())


# --- RFC 4226 / 6238 ----------------------------------------------------------------------
def hotp(secret: bytes, counter: int, *, digits: int = OTP_DIGITS, digest: str = "sha1") -> str:
    """HOTP value (RFC 4226 §5.3): dynamic truncation of HMAC(secret, counter as 8 bytes)."""
    mac = hmac.new(secret, struct.pack(">Q", counter), digest).digest()
    offset = mac[-1] & 0x0F
    binary = struct.unpack_from(">I", mac, offset)[0] & 0x7FFFFFFF
    return str(binary % 10**digits).zfill(digits)


def time_step(unix_seconds: float, *, period: int = STEP_SECONDS) -> int:
    """RFC 6238 §4.2: T = floor((now - T0) / X) with T0 = 0."""
    return int(unix_seconds // period)


def totp(
    secret: bytes, unix_seconds: float, *, digits: int = OTP_DIGITS, digest: str = "sha1", period: int = STEP_SECONDS
) -> str:
    return hotp(secret, time_step(unix_seconds, period=period), digits=digits, digest=digest)


def otpauth_uri(secret: bytes, account: str, *, issuer: str = ISSUER) -> str:
    """The Key Uri Format authenticator apps scan: ``otpauth://totp/ISSUER:ACCOUNT?secret=…``."""
    label = f"{quote(issuer, safe='')}:{quote(account, safe='@')}"
    query = urlencode(
        {"secret": b32(secret), "issuer": issuer, "algorithm": "SHA1", "digits": OTP_DIGITS, "period": STEP_SECONDS}
    )
    return f"otpauth://totp/{label}?{query}"


def b32(secret: bytes) -> str:
    return base64.b32encode(secret).decode().rstrip("=")


def _seconds(t: datetime | float) -> float:
    return t.timestamp() if isinstance(t, datetime) else float(t)


def _clean_code(code: str) -> str | None:
    c = code.replace(" ", "")
    return c if len(c) == OTP_DIGITS and c.isascii() and c.isdigit() else None


# --- recovery codes -----------------------------------------------------------------------
def generate_recovery_code(rand: Callable[[int], bytes]) -> str:
    raw = rand(RECOVERY_SYMBOLS)
    c = "".join(ALPHABET[b & 31] for b in raw)  # 256 is a multiple of 32: unbiased
    return "-".join(c[i : i + 4] for i in range(0, len(c), 4))


def canonical_recovery_code(typed: str) -> str | None:
    c = typed.replace("-", "").replace(" ", "").lower()
    if len(c) != RECOVERY_SYMBOLS or not set(c) <= _ALPHABET_SET:
        return None
    return c


def _recovery_hash(key: bytes, user_id: int, canonical: str) -> bytes:
    return hmac.new(key, b"recovery:%d:%s" % (user_id, canonical.encode()), hashlib.sha256).digest()


def _new_code_hash(key: bytes, user_id: int, code: str) -> bytes:
    """The stored hash of a code from :func:`generate_recovery_code`."""
    canonical = canonical_recovery_code(code)
    assert canonical is not None  # generated: RECOVERY_SYMBOLS symbols of ALPHABET
    return _recovery_hash(key, user_id, canonical)


# --- results ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Enrolment:
    """A pending enrolment, shown once. The QR code is rendered on demand (needs ``segno``)."""

    username: str
    account: str  # what the app shows under "ucgate": the UPN, else the user name
    secret_b32: str = field(repr=False)
    uri: str = field(repr=False)

    def qr_svg(self, *, scale: int = 4) -> str:
        """The otpauth URI as an SVG QR code (a complete ``<svg>`` element)."""
        return _qr(self.uri).svg_inline(scale=scale)

    def qr_text(self) -> str:
        """The QR code for a terminal: Unicode half blocks, 2 rows per line, quiet zone
        included. Scan it from a dark-on-light terminal (or use the URI)."""
        import io

        buf = io.StringIO()
        _qr(self.uri).terminal(out=buf, compact=True)
        return buf.getvalue()


def _qr(uri: str):
    try:
        import segno
    except ImportError:  # pragma: no cover - segno is a dependency
        raise RuntimeError("QR codes need the segno package (pip install segno)") from None
    return segno.make(uri, error="m", micro=False)


@dataclass(frozen=True, slots=True)
class OtpResult:
    """The outcome of checking a second factor. ``factor`` feeds ``policy.twofactor.decide``."""

    ok: bool
    reason: str  # "ok" | "otp-wrong" | "otp-replayed" | "otp-not-enrolled" | "recovery-code-wrong"
    factor: Factor
    step: int | None = None  # the accepted (or replayed) time step


@dataclass(frozen=True, slots=True)
class OtpStatus:
    username: str
    state: str  # "none" | "pending" | "active"
    created_at: datetime | None = None
    confirmed_at: datetime | None = None
    last_used_at: datetime | None = None
    recovery_codes_left: int = 0


def _utcnow() -> datetime:
    return datetime.now(UTC)


_NOT_ENROLLED = OtpResult(False, "otp-not-enrolled", Factor.NONE)


class OtpService(UserSecretService):
    """TOTP for the users of one store.

    Args:
        repo: the store.
        keyring: seals the secrets.
        clock: ``() -> aware UTC datetime``.
        rand: ``n -> n random bytes`` (``secrets.token_bytes`` in production).
        users: a ``UserService`` (resolves typed names: user, DOMAIN\\user, UPN).
    """

    def _open(self, user_id: int, rec: OtpRecord) -> tuple[bytes, bytes] | None:
        """(secret, recovery key), None when the ciphertext does not decrypt."""
        try:
            plain = self.keyring.decrypt(rec.nonce, rec.ciphertext, otp_aad(user_id, rec.id))
        except DecryptError as e:
            log.warning("TOTP secret of user id %d does not decrypt: %s", user_id, e)
            return None
        return plain[:SECRET_BYTES], plain[SECRET_BYTES:]

    def _active(self, username: str) -> tuple[UserRecord, OtpRecord, bytes, bytes] | None:
        u = self.users.resolve(username)
        if u is None:
            return None
        rec = self.repo.get_otp(u.id)
        if rec is None or not rec.active:
            return None
        opened = self._open(u.id, rec)
        return None if opened is None else (u, rec, *opened)

    # --- enrolment --------------------------------------------------------------------
    def begin_enrolment(self, username: str) -> Enrolment:
        """Create a pending secret (replacing an earlier pending one) and return it, once.

        Raises:
            UnknownUser; AlreadyEnrolled when the user has an active secret (reset it first).
        """
        u = self._user(username)
        existing = self.repo.get_otp(u.id)
        if existing is not None and existing.active:
            raise AlreadyEnrolled(f"{u.username} already has an active TOTP secret; reset it first")
        secret, recovery_key = self.rand(SECRET_BYTES), self.rand(RECOVERY_KEY_BYTES)
        otp_id = self.rand(8).hex()
        nonce, sealed = self.keyring.encrypt(secret + recovery_key, otp_aad(u.id, otp_id))
        try:
            self.repo.begin_otp(
                NewOtpSecret(id=otp_id, user_id=u.id, ciphertext=sealed, nonce=nonce, created_at=self.clock())
            )
        except DuplicateError as e:
            raise AlreadyEnrolled(str(e)) from None
        account = u.upn or u.username
        return Enrolment(u.username, account, b32(secret), otpauth_uri(secret, account))

    def confirm_enrolment(self, username: str, code: str, now: datetime | float | None = None) -> list[str] | None:
        """Activate the pending secret if ``code`` is valid for it (window ±1).

        Returns:
            The 10 recovery codes (shown once; a non-empty list, so truthy) when activated;
            None (falsy) for a wrong code or when there is no pending enrolment. The
            confirming code's step counts as used: it cannot sign in afterwards.
        """
        u = self.users.resolve(username)
        rec = self.repo.get_otp(u.id) if u else None
        if u is None or rec is None or rec.active:
            return None
        opened = self._open(u.id, rec)
        if opened is None:
            return None
        secret, recovery_key = opened
        step = self._match(secret, code, now)
        if step is None:
            return None
        codes = [generate_recovery_code(self.rand) for _ in range(RECOVERY_CODES)]
        hashes = [_new_code_hash(recovery_key, u.id, c) for c in codes]
        if not self.repo.confirm_otp(u.id, rec.id, step, self.clock(), hashes):
            return None  # reset or replaced meanwhile
        return codes

    # --- verification -----------------------------------------------------------------
    def _steps(self, now: datetime | float | None) -> list[int]:
        """The window's steps in preference order: current, previous, next."""
        t = time_step(_seconds(self.clock() if now is None else now))
        return [t] + [t + d for k in range(1, WINDOW + 1) for d in (-k, k)]

    def _match(self, secret: bytes, code: str, now: datetime | float | None) -> int | None:
        typed = (_clean_code(code) or "x" * OTP_DIGITS).encode()
        found = None
        for step in self._steps(now):  # compare every step, in constant time
            if hmac.compare_digest(hotp(secret, step).encode(), typed) and found is None:
                found = step
        return found

    def verify(self, username: str, code: str, now: datetime | float | None = None) -> OtpResult:
        """Check a 6-digit code (spaces ignored) and, if valid and unused, mark its step used.

        Returns an OtpResult: ``ok`` / ``otp-wrong`` / ``otp-replayed`` (the code's step is not
        later than the last accepted one) / ``otp-not-enrolled`` (no active secret).
        """
        active = self._active(username)
        if active is None:
            return _NOT_ENROLLED
        u, _, secret, _ = active
        step = self._match(secret, code, now)
        if step is None:
            return OtpResult(False, "otp-wrong", Factor.OTP_WRONG)
        return self.accept_step(u.username, step)

    def accept_step(self, username: str, step: int) -> OtpResult:
        """Mark time ``step`` used for the user, atomically (for NTLM, after a candidate built
        from that step's code matched). ``otp-replayed`` when it (or a later one) was used."""
        u = self.users.resolve(username)
        if u is None:
            return _NOT_ENROLLED
        if self.repo.advance_otp_step(u.id, step, self.clock()):
            return OtpResult(True, "ok", Factor.OTP_OK, step)
        rec = self.repo.get_otp(u.id)
        if rec is None or not rec.active:
            return _NOT_ENROLLED
        return OtpResult(False, "otp-replayed", Factor.OTP_REPLAYED, step)

    def window_codes(self, username: str, now: datetime | float | None = None) -> list[tuple[int, str]]:
        """``(step, code)`` for the current, previous and next step, for NTLM candidates
        (``policy.twofactor.appended_candidates``); empty when the user has no active secret.
        Steps already used are included on purpose: a match on one is then reported as
        ``otp-replayed`` by :meth:`accept_step` instead of as a wrong password."""
        active = self._active(username)
        if active is None:
            return []
        secret = active[2]
        return [(s, hotp(secret, s)) for s in self._steps(now)]

    def is_enrolled(self, username: str) -> bool:
        u = self.users.resolve(username)
        rec = self.repo.get_otp(u.id) if u else None
        return rec is not None and rec.active

    # --- recovery codes ---------------------------------------------------------------
    def use_recovery_code(self, username: str, code: str) -> OtpResult:
        """Spend a recovery code (each works once)."""
        active = self._active(username)
        if active is None:
            return _NOT_ENROLLED
        u, _, _, recovery_key = active
        canonical = canonical_recovery_code(code)
        if canonical is not None and self.repo.use_recovery_code(
            u.id, _recovery_hash(recovery_key, u.id, canonical), self.clock()
        ):
            return OtpResult(True, "ok", Factor.RECOVERY_OK)
        return OtpResult(False, "recovery-code-wrong", Factor.RECOVERY_WRONG)

    def regenerate_recovery_codes(self, username: str) -> list[str]:
        """Replace all the user's recovery codes with 10 new ones (shown once).

        Raises:
            UnknownUser; NotEnrolled when there is no active secret.
        """
        self._user(username)
        active = self._active(username)
        if active is None:
            raise NotEnrolled(f"{username} has no active TOTP secret")
        u, _, _, recovery_key = active
        codes = [generate_recovery_code(self.rand) for _ in range(RECOVERY_CODES)]
        self.repo.replace_recovery_codes(u.id, [_new_code_hash(recovery_key, u.id, c) for c in codes], self.clock())
        return codes

    # --- administration ---------------------------------------------------------------
    def reset(self, username: str) -> bool:
        """Remove the secret (pending or active) and the recovery codes. False when there was
        none. Raises UnknownUser."""
        u = self._user(username)
        pending = Pending(UserBlocked(u.username, "otp-reset"))
        ok = self.repo.delete_otp(u.id, event=pending)
        if ok and self.users.bus is not None:  # sessions that passed the old second factor end
            self.users.bus.committed(pending)
        return ok

    def status(self, username: str) -> OtpStatus:
        """Raises UnknownUser."""
        u = self._user(username)
        rec = self.repo.get_otp(u.id)
        if rec is None:
            return OtpStatus(u.username, "none")
        return OtpStatus(
            u.username,
            "active" if rec.active else "pending",
            rec.created_at,
            rec.confirmed_at,
            rec.last_used_at,
            self.repo.count_recovery_codes(u.id) if rec.active else 0,
        )

    def reencrypt_all(self) -> int:
        """Re-encrypt every TOTP secret under the keyring's active key (after a rotation)."""
        n = 0
        for user_id in self.repo.all_otp_user_ids():
            rec = self.repo.get_otp(user_id)
            if rec is None or Keyring.key_id_of(rec.ciphertext) == self.keyring.active:
                continue
            aad = otp_aad(user_id, rec.id)
            nonce, sealed = self.keyring.encrypt(self.keyring.decrypt(rec.nonce, rec.ciphertext, aad), aad)
            self.repo.replace_otp_ciphertext(user_id, sealed, nonce)
            n += 1
        return n
