"""Pre-authentication: NTLMv2 (with Extended Protection), Negotiate-wrapped NTLM, Basic over TLS.

The protocol work is in ``ucgate.protocols.ntlm``/``spnego`` (sans-I/O); the credentials are
the id service's (``ucgate.id.api.CredentialService``). This module is the glue: it reads the
``Authorization`` header, keeps the NTLM handshake on the connection, and turns results into
401 challenges or an :class:`Identity`.

NTLM authenticates the connection, as IIS does: after a successful Type 3, later requests on
the same connection need no header. A new connection starts over. Basic is verified per request
(a connection remembers the last header it verified, so keep-alive costs nothing).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..config import AuthConfig, AuthMethod, ExtendedProtection, TraceLevel
from ..id.api import AttemptContext, CredentialService, NtlmHandshake, NtlmVerdict, Verdict
from ..protocols import decode as decode_proto
from ..protocols import ntlm as ntlm_proto
from ..protocols import spnego as spnego_proto
from ..protocols.http1 import RequestHead
from ..protocols.sfb import Service
from .auth import AuthOutcome
from .connection import ClientConnection, Identity
from .kerberos import KerberosAcceptor, KerberosError

log = logging.getLogger("ucgate.gateway.auth")

# An NTLM AUTHENTICATE message with a long user name and full AV pairs is < 2 KiB; SPNEGO adds
# little. 16 KiB of base64 is generous and keeps a hostile header from costing us.
MAX_NTLM_HEADER = 16 * 1024
MAX_BASIC_HEADER = 4 * 1024
# Kerberos AP-REQs with a big PAC (many groups) reach 48-64 KiB (MaxTokenSize).
MAX_KERBEROS_HEADER = 96 * 1024
# Verdict reasons that mean a second factor was given (or is within its trust lifetime): the
# device partnership may then be trusted or renewed (policy.devices.decide second_factor_ok).
SECOND_FACTOR_REASONS = frozenset({"ok-otp", "ok-recovery-code", "2fa-trusted"})
# Refusals that say the credentials could not be checked at all (503, fail closed): the
# directory (from the id service) or the id service itself (from the remote client).
UNAVAILABLE_REASONS = frozenset({"directory-unavailable", "id-service-unavailable", "store-unavailable"})


class PreAuthSettings(AuthConfig):
    """[auth] as the authenticator reads it (``config.AuthConfig``) and the gateway's DNS name
    (``dns_computer``: the NTLM challenge's). ``failure_floor``: a refused credential is
    answered no sooner than this after it arrived, so that an unknown user, a refused account
    and a wrong password take the same time (directory lookups differ by tens of ms) and
    guessing is slower; successes are not delayed. ``trace``: each auth leg logged through
    protocols/decode.py, never secrets."""

    dns_computer: str = "ucgate-gw.ucgate.local"

    @classmethod
    def of(cls, auth: AuthConfig, dns_computer: str) -> PreAuthSettings:
        """``auth`` (validated already) with ``dns_computer``."""
        return cls.model_construct(**dict(auth), dns_computer=dns_computer)


@dataclass
class _NtlmHandshake:
    scheme: bytes  # b"ntlm" or b"negotiate"
    acceptor: ntlm_proto.NtlmAcceptor | spnego_proto.SpnegoNtlmAcceptor
    started: float


@dataclass(slots=True)
class _BasicMemo:
    digest: bytes
    identity: Identity
    # the answer for a request the memo knows, made once (never changed: it is shared)
    outcome: AuthOutcome = field(init=False)

    def __post_init__(self) -> None:
        self.outcome = AuthOutcome(identity=self.identity)


@dataclass(slots=True)
class _NtlmPending:
    """An AUTHENTICATE that :meth:`PreAuthenticator.answer_now` took off the handshake but could
    not answer without waiting (kept in ``conn.auth_state`` for this very request): the task's
    :meth:`PreAuthenticator.authenticate` goes on from here, with the id service's answer when
    it was given already (a success the acceptor then refused)."""

    req: RequestHead
    scheme: bytes
    leg: tuple[ntlm_proto.NtlmAcceptor | spnego_proto.SpnegoNtlmAcceptor, ntlm_proto.NtlmAcceptor, ntlm_proto.Identity]
    ctx: AttemptContext
    started: float
    answer: NtlmVerdict | None = None  # the id service's success ...
    refused: Verdict | None = None  # ... that the acceptor refused (the SPNEGO mechListMIC)


@dataclass(slots=True)
class _BasicLogin:
    """A Basic credential that passed the checks that need no store: for the id service."""

    user: str
    password: str = field(repr=False)
    digest: bytes = field(repr=False)
    device: str | None


class PreAuthenticator:
    """The gateway's authenticator for protected services."""

    def __init__(
        self,
        credentials: CredentialService,
        settings: PreAuthSettings,
        *,
        rand: Callable[[int], bytes] = os.urandom,
        wallclock: Callable[[], float] = time.time,
        device_id_of: Callable[[RequestHead, Service], str | None] | None = None,
        kerberos: KerberosAcceptor | None = None,
    ) -> None:
        self.credentials = credentials
        # Kerberos AP-REQs in Negotiate (raw or in SPNEGO), verified with the pool's keytab
        # (gateway.kerberos); None: Negotiate means NTLM only and Kerberos tokens are refused.
        self.kerberos = kerberos
        self.settings = settings
        self.rand = rand
        self.wallclock = wallclock
        self.device_id_of = device_id_of or (lambda req, service: None)
        self._memo_key = rand(32)
        # an in-process id service answers a success found in its sign-in cache on the loop
        # (IdService.verify_password_now / verify_ntlm_now: None when it would wait)
        self._password_now: Callable[[str, str, AttemptContext], Verdict | None] | None = getattr(
            credentials, "verify_password_now", None
        )
        self._ntlm_now: Callable[[NtlmHandshake, AttemptContext], NtlmVerdict | None] | None = getattr(
            credentials, "verify_ntlm_now", None
        )
        realm = settings.realm.replace('"', "")
        self._basic_challenge = (b"WWW-Authenticate", b'Basic realm="%s", charset="UTF-8"' % realm.encode())

    # --- challenges -------------------------------------------------------------------
    def _challenges(self, conn: ClientConnection) -> list[tuple[bytes, bytes]]:
        out = []
        for m in self.settings.methods:
            if m == AuthMethod.NEGOTIATE:
                out.append((b"WWW-Authenticate", b"Negotiate"))
            elif m == AuthMethod.NTLM:
                out.append((b"WWW-Authenticate", b"NTLM"))
            elif m == AuthMethod.BASIC and conn.tls:
                out.append(self._basic_challenge)
        return out

    def _deny(
        self,
        conn: ClientConnection,
        reason: str,
        *,
        status: int = 401,
        extra: list[tuple[bytes, bytes]] | None = None,
        close: bool = False,
    ) -> AuthOutcome:
        headers = self._challenges(conn) if status == 401 else []
        return AuthOutcome(identity=None, status=status, reason=reason, headers=headers + (extra or []), close=close)

    def _throttled(self, conn: ClientConnection, verdict: Verdict) -> AuthOutcome:
        """A refusal that is not about the credentials: 429 while the failure budget is spent,
        503 while the directory or the id service cannot be reached (new sign-ins fail closed)."""
        retry = max(1, int(verdict.retry_after + 0.999))
        status = 503 if verdict.reason in UNAVAILABLE_REASONS else 429
        return AuthOutcome(
            identity=None, status=status, reason=verdict.reason, headers=[(b"Retry-After", b"%d" % retry)]
        )

    def _ctx(self, conn: ClientConnection, req: RequestHead, service: Service, method: str) -> AttemptContext:
        ua = req.get(b"user-agent")
        return AttemptContext(
            client_ip=conn.peer_host,
            method=method,
            service=service.name,
            device_id=self.device_id_of(req, service),
            user_agent=ua.decode("latin-1")[:256] if ua else None,
        )

    def _trace(self, conn: ClientConnection, sender: str, value: bytes) -> None:
        """Log one auth leg (``sender`` "client" or "gateway") at the configured trace level,
        through the decoder, which never yields secrets or token bytes; never raises."""
        level = self.settings.trace
        if level == TraceLevel.NONE:
            return
        try:
            decoded = decode_proto.decode_header(value)
        except decode_proto.DecodeError as e:
            log.info(
                "auth trace: client %s, from %s: undecodable (%s: %s)", conn.peer_host, sender, e.reason, e.message
            )
            return
        if level == TraceLevel.VERBOSE:
            log.info(
                "auth trace: client %s, from %s: %s %s",
                conn.peer_host,
                sender,
                decode_proto.summary(decoded),
                decode_proto.to_json(decoded),
            )
        else:
            log.info("auth trace: client %s, from %s: %s", conn.peer_host, sender, decode_proto.summary(decoded))

    async def _pad(self, started: float) -> None:
        left = self.settings.failure_floor - (time.monotonic() - started)
        if left > 0:
            await asyncio.sleep(left)

    # --- entry point ------------------------------------------------------------------
    async def authenticate(self, conn: ClientConnection, req: RequestHead, service: Service) -> AuthOutcome:
        pending = conn.auth_state
        if type(pending) is _NtlmPending:
            conn.auth_state = None
            if pending.req is req:  # answer_now took this AUTHENTICATE off the handshake
                return await self._ntlm(conn, req, service, pending.scheme, *pending.leg, pending=pending)
        authz = req.get(b"authorization")
        if authz is None:
            return self._without_credentials(conn)
        self._trace(conn, "client", authz)
        scheme, param = _scheme_and_param(authz)
        if scheme == b"basic" and "basic" in self.settings.methods:
            checked = self._basic_check(conn, req, service, param)
            if isinstance(checked, AuthOutcome):
                return self._basic_answered(conn, checked)
            return await self._basic(conn, req, service, checked)
        if scheme in (b"ntlm", b"negotiate") and scheme.decode() in self.settings.methods:
            if scheme == b"negotiate" and self.kerberos is not None:
                token = _kerberos_token(param)
                if token is not None:
                    return await self._kerberos(conn, req, service, token)
            leg = self._ntlm_leg(conn, scheme, param)
            if isinstance(leg, AuthOutcome):
                return leg
            return await self._ntlm(conn, req, service, scheme, *leg)
        return self._deny(conn, "unsupported-scheme")

    def answer_now(self, conn: ClientConnection, req: RequestHead, service: Service) -> AuthOutcome | None:
        """What ``await authenticate(conn, req, service)`` returns, with the same effects on
        ``conn`` and the same log lines (the auth trace included), when it needs no waiting:
        the identity of an NTLM/Kerberos-authenticated connection, the 401 without credentials,
        the Basic memo's identity, the CHALLENGE legs of NTLM and Negotiate, and the refusals
        that need no store (bad base64, oversize or malformed tokens, Basic without TLS, an
        unsupported scheme, a refused NEGOTIATE). None — and nothing done — for what must wait:
        a Basic credential to verify, an NTLM AUTHENTICATE, a Kerberos ticket (and so any
        refusal :meth:`authenticate` pads to the failure floor). ``req`` is a ``RequestHead`` of
        either route (the fast path's has ``prefix`` set, gateway/session.py).

        A credential the id service answers on the loop (an in-process one, a success found in
        its sign-in cache: ``verify_password_now`` / ``verify_ntlm_now``) is answered here too.
        An NTLM AUTHENTICATE it cannot answer so is left for :meth:`authenticate` in
        ``conn.auth_state`` (:class:`_NtlmPending`), with its log line made already."""
        authz = req.get(b"authorization")
        if authz is None:
            return self._without_credentials(conn)
        scheme, param = _scheme_and_param(authz)
        if scheme == b"basic" and "basic" in self.settings.methods:
            checked = self._basic_check(conn, req, service, param)
            if not isinstance(checked, AuthOutcome):
                verify = self._password_now
                if verify is None:
                    return None  # the id service verifies it
                verdict = verify(checked.user, checked.password, self._ctx(conn, req, service, "basic"))
                if verdict is None or not verdict.ok:
                    return None  # it must wait: answered by authenticate, from the start
                self._trace(conn, "client", authz)
                return self._basic_allowed(conn, checked, verdict)
            self._trace(conn, "client", authz)
            return self._basic_answered(conn, checked)
        if scheme in (b"ntlm", b"negotiate") and scheme.decode() in self.settings.methods:
            if scheme == b"negotiate" and self.kerberos is not None and _kerberos_token(param) is not None:
                return None  # a ticket: verified in a worker thread
            if self._ntlm_authenticate_leg(conn, scheme, param):
                if self._ntlm_now is None:
                    return None  # the id service verifies it
                self._trace(conn, "client", authz)
                leg = self._ntlm_leg(conn, scheme, param)
                if isinstance(leg, AuthOutcome):  # identify refused it (no padding, as authenticate)
                    return leg
                return self._ntlm_answer_now(conn, req, service, scheme, leg)
            self._trace(conn, "client", authz)
            leg = self._ntlm_leg(conn, scheme, param)
            assert isinstance(leg, AuthOutcome)  # every leg but the AUTHENTICATE answers at once
            return leg
        self._trace(conn, "client", authz)
        return self._deny(conn, "unsupported-scheme")

    def known_now(self, conn: ClientConnection, req: RequestHead, service: Service) -> AuthOutcome | None:
        """:meth:`answer_now`'s answer when it is an identity known already and nothing is
        logged: an NTLM/Kerberos connection's (a request without ``Authorization``), the Basic
        memo's (tracing off); else None. Nothing done either way: the common keep-alive request
        is answered without making its log context (gateway/pipeline.py)."""
        # the common route found the one Authorization field already (req.get, without its frame)
        authz = req.authorization if req.prefix is not None else req.get(b"authorization")
        if authz is None:
            return self._without_credentials(conn) if conn.identity is not None else None
        memo = conn.auth_state
        s = self.settings
        if type(memo) is not _BasicMemo or s.trace != TraceLevel.NONE or not conn.tls or "basic" not in s.methods:
            return None
        scheme, param = _scheme_and_param(authz)
        if scheme != b"basic" or len(param) > MAX_BASIC_HEADER:
            return None
        return memo.outcome if self._memoised(memo, param, req, service) is not None else None

    def _without_credentials(self, conn: ClientConnection) -> AuthOutcome:
        identity = conn.identity
        if identity is not None:  # an NTLM/Kerberos connection: the answer made once per identity
            known = conn.known
            if known is None or known.identity is not identity:
                known = conn.known = AuthOutcome(identity=identity)
            return known
        return self._deny(conn, "no-credentials")

    def _memo_digest(self, param: bytes) -> bytes:
        """What the memo keeps of a Basic credential: a MAC under a key of this process (keyed
        BLAKE2b, a sixth of HMAC-SHA256's cost here; never the credential itself)."""
        return hashlib.blake2b(param, key=self._memo_key, digest_size=32).digest()

    def _memoised(self, memo: _BasicMemo, param: bytes, req, service: Service) -> Identity | None:
        """The memo's identity when ``param`` is the Basic credential it was made for and the
        request's device is the memo's."""
        digest = self._memo_digest(param)
        if hmac.compare_digest(memo.digest, digest) and memo.identity.device_id == self.device_id_of(req, service):
            return memo.identity
        return None

    # --- Basic ------------------------------------------------------------------------
    def _basic_check(
        self, conn: ClientConnection, req: RequestHead, service: Service, param: bytes
    ) -> AuthOutcome | _BasicLogin:
        """The checks of a Basic credential that need no store, without side effects (the log
        line of a refusal is :meth:`_basic_answered`'s): the answer, or what to verify."""
        if not conn.tls:
            # RFC 7617 §4: Basic sends the password in clear. Never accept it without TLS.
            return AuthOutcome(identity=None, status=403, reason="basic-requires-tls")
        if len(param) > MAX_BASIC_HEADER:
            return self._deny(conn, "basic-too-large", status=400, close=True)
        memo = conn.auth_state if isinstance(conn.auth_state, _BasicMemo) else None
        if memo is not None:
            known = self._memoised(memo, param, req, service)
            if known is not None:
                return memo.outcome
        digest = self._memo_digest(param)
        device = self.device_id_of(req, service)
        try:
            raw = base64.b64decode(param, validate=True)
        except (binascii.Error, ValueError):
            return self._deny(conn, "basic-bad-base64", status=400, close=True)
        user_b, colon, pw_b = raw.partition(b":")
        if not colon or not user_b:
            return self._deny(conn, "basic-malformed", status=400, close=True)
        try:
            user, password = user_b.decode("utf-8"), pw_b.decode("utf-8")
        except UnicodeDecodeError:
            user, password = user_b.decode("latin-1"), pw_b.decode("latin-1")
        if any(ord(c) < 0x20 or c == "\x7f" for c in user) or len(user) > 256 or len(password) > 256:
            return self._deny(conn, "basic-malformed", status=400, close=True)
        return _BasicLogin(user, password, digest, device)

    @staticmethod
    def _basic_answered(conn: ClientConnection, outcome: AuthOutcome) -> AuthOutcome:
        """A Basic answer given without the id service, with its log line."""
        if outcome.reason == "basic-bad-base64":
            log.info("client %s: malformed Basic credentials (bad base64)", conn.peer_host)
        return outcome

    async def _basic(
        self, conn: ClientConnection, req: RequestHead, service: Service, login: _BasicLogin
    ) -> AuthOutcome:
        started = time.monotonic()
        verdict = await self.credentials.verify_password(
            login.user, login.password, self._ctx(conn, req, service, "basic")
        )
        if verdict.retry_after > 0:
            return self._throttled(conn, verdict)
        if not verdict.ok:
            await self._pad(started)
            return self._deny(conn, verdict.reason)
        return self._basic_allowed(conn, login, verdict)

    @staticmethod
    def _basic_allowed(conn: ClientConnection, login: _BasicLogin, verdict: Verdict) -> AuthOutcome:
        """The identity of a Basic credential the id service allowed, kept in the memo."""
        identity = Identity(
            verdict.user or login.user,
            "basic",
            device_id=login.device,
            credential_id=verdict.credential_id,
            second_factor=verdict.reason in SECOND_FACTOR_REASONS,
        )
        conn.auth_state = _BasicMemo(login.digest, identity)
        return AuthOutcome(identity=identity)

    # --- NTLM / Negotiate -------------------------------------------------------------
    def _extended_protection(self, conn: ClientConnection) -> str:
        return self.settings.extended_protection if conn.tls else ExtendedProtection.OFF

    def _new_acceptor(
        self, conn: ClientConnection, scheme: bytes
    ) -> ntlm_proto.NtlmAcceptor | spnego_proto.SpnegoNtlmAcceptor:
        s = self.settings
        ep = self._extended_protection(conn)
        acceptor = ntlm_proto.NtlmAcceptor(
            server_challenge=self.rand(8),
            now=ntlm_proto.filetime(self.wallclock()),
            netbios_domain=s.netbios_domain,
            netbios_computer=s.netbios_computer,
            dns_domain=s.dns_domain,
            dns_computer=s.dns_computer,
            channel_binding_data=conn.channel_binding if conn.tls else None,
            extended_protection=ep,
            max_clock_skew=s.max_clock_skew,
        )
        if scheme == b"negotiate":
            return spnego_proto.SpnegoNtlmAcceptor(acceptor)
        return acceptor

    def _ntlm_authenticate_leg(self, conn: ClientConnection, scheme: bytes, param: bytes) -> bool:
        """Whether :meth:`_ntlm_leg` would take ``param`` as the AUTHENTICATE of the handshake on
        ``conn`` (which the id service verifies); no side effects."""
        if len(param) > MAX_NTLM_HEADER:
            return False
        try:
            token = base64.b64decode(param, validate=True)
        except (binascii.Error, ValueError):
            return False
        hs = conn.auth_state if isinstance(conn.auth_state, _NtlmHandshake) else None
        if hs is None or hs.scheme != scheme or _is_ntlm_type(token, 1) or _is_negotiate_init(token):
            return False
        acceptor = hs.acceptor
        inner = acceptor.ntlm if isinstance(acceptor, spnego_proto.SpnegoNtlmAcceptor) else acceptor
        return inner.state == "challenged"

    def _ntlm_leg(
        self, conn: ClientConnection, scheme: bytes, param: bytes
    ) -> (
        AuthOutcome
        | tuple[ntlm_proto.NtlmAcceptor | spnego_proto.SpnegoNtlmAcceptor, ntlm_proto.NtlmAcceptor, ntlm_proto.Identity]
    ):
        """One NTLM/Negotiate leg up to what needs the id service: the answer (a CHALLENGE, a
        refusal), or the acceptor, its NTLM acceptor and the identity of an AUTHENTICATE."""
        name = "NTLM" if scheme == b"ntlm" else "Negotiate"
        name_b = name.encode()
        if len(param) > MAX_NTLM_HEADER:
            conn.auth_state = None
            log.info("client %s: oversize %s token (%d bytes)", conn.peer_host, name, len(param))
            return self._deny(conn, "token-too-large", status=400, close=True)
        try:
            token = base64.b64decode(param, validate=True)
        except (binascii.Error, ValueError):
            conn.auth_state = None
            log.info("client %s: %s token is not base64", conn.peer_host, name)
            return self._deny(conn, "token-bad-base64", status=400, close=True)
        hs = conn.auth_state if isinstance(conn.auth_state, _NtlmHandshake) else None
        try:
            if hs is None or hs.scheme != scheme or _is_ntlm_type(token, 1) or _is_negotiate_init(token):
                # NEGOTIATE (Type 1): a new handshake on this connection, even on an
                # authenticated one (IIS re-authenticates the connection the same way).
                conn.identity = None
                hs = _NtlmHandshake(scheme, self._new_acceptor(conn, scheme), self.wallclock())
                conn.auth_state = hs
            acceptor = hs.acceptor
            inner = acceptor.ntlm if isinstance(acceptor, spnego_proto.SpnegoNtlmAcceptor) else acceptor
            if inner.state != "challenged":
                # CHALLENGE leg (twice under SPNEGO when NTLM was not the client's first mech)
                if isinstance(acceptor, spnego_proto.SpnegoNtlmAcceptor):
                    out = acceptor.step(token)
                else:
                    out = acceptor.challenge(token)
                challenge_header = name_b + b" " + base64.b64encode(out)
                self._trace(conn, "gateway", challenge_header)
                return AuthOutcome(
                    identity=None,
                    status=401,
                    reason="ntlm-challenge",
                    headers=[(b"WWW-Authenticate", challenge_header)],
                )
            # AUTHENTICATE (Type 3)
            conn.auth_state = None
            who = acceptor.identify(token)
        except (ntlm_proto.NtlmError, spnego_proto.SpnegoError) as e:
            conn.auth_state = None
            log.info("client %s: %s handshake refused: %s", conn.peer_host, name, e.reason)
            return self._deny(conn, f"ntlm-{e.reason}")
        return acceptor, inner, who

    async def _ntlm(
        self,
        conn: ClientConnection,
        req: RequestHead,
        service: Service,
        scheme: bytes,
        acceptor: ntlm_proto.NtlmAcceptor | spnego_proto.SpnegoNtlmAcceptor,
        inner: ntlm_proto.NtlmAcceptor,
        who: ntlm_proto.Identity,
        pending: _NtlmPending | None = None,
    ) -> AuthOutcome:
        """The AUTHENTICATE leg: the id service verifies, the acceptor adopts its result.
        ``pending``: the leg as :meth:`answer_now` left it (its context, its start, perhaps
        the id service's answer)."""
        if pending is None:
            ctx, started, answer = self._ctx(conn, req, service, scheme.decode()), time.monotonic(), None
        else:
            ctx, started, answer = pending.ctx, pending.started, pending.answer
        if answer is None:
            answer = await self.credentials.verify_ntlm(self._handshake(conn, inner), ctx)
        verdict = answer.verdict
        if verdict.retry_after > 0:
            return self._throttled(conn, verdict)
        if pending is not None and pending.refused is not None:
            got: AuthOutcome | Verdict = pending.refused
        else:
            got = self._ntlm_accepted(conn, scheme, acceptor, who, answer, ctx)
        if isinstance(got, AuthOutcome):
            return got
        if verdict.ok:  # verified by the id service (which recorded an allow), refused here
            record = getattr(self.credentials, "record_refusal", None)
            if record is not None:  # correct the audit trail (in-process id service)
                await record(verdict.user or who.user, ctx, got.reason)
        await self._pad(started)
        return self._deny(conn, got.reason)

    def _handshake(self, conn: ClientConnection, inner: ntlm_proto.NtlmAcceptor) -> NtlmHandshake:
        """What the id service verifies of the handshake on ``conn``."""
        negotiate, challenge, authenticate = inner.messages()
        return NtlmHandshake(
            negotiate=negotiate,
            challenge=challenge,
            authenticate=authenticate,
            server_challenge=inner.server_challenge,
            challenge_time=inner.challenge_time,
            channel_binding_data=conn.channel_binding if conn.tls else None,
            extended_protection=self._extended_protection(conn),
            max_clock_skew=self.settings.max_clock_skew,
            parsed=inner.parsed(),
        )

    def _ntlm_answer_now(
        self,
        conn: ClientConnection,
        req: RequestHead,
        service: Service,
        scheme: bytes,
        leg: tuple[
            ntlm_proto.NtlmAcceptor | spnego_proto.SpnegoNtlmAcceptor, ntlm_proto.NtlmAcceptor, ntlm_proto.Identity
        ],
    ) -> AuthOutcome | None:
        """The AUTHENTICATE's answer when the id service gives it on the loop (a success) and
        the acceptor takes it; else None, with the leg kept for :meth:`authenticate`."""
        verify = self._ntlm_now
        assert verify is not None  # answer_now's condition
        acceptor, inner, who = leg
        ctx, started = self._ctx(conn, req, service, scheme.decode()), time.monotonic()
        answer = verify(self._handshake(conn, inner), ctx)
        refused = None
        if answer is not None and answer.verdict.ok:
            got = self._ntlm_accepted(conn, scheme, acceptor, who, answer, ctx)
            if isinstance(got, AuthOutcome):
                return got
            refused = got  # recorded and padded by authenticate
        else:
            answer = None  # the worker thread's attempt makes it, from the start
        conn.auth_state = _NtlmPending(req, scheme, leg, ctx, started, answer, refused)
        return None

    def _ntlm_accepted(
        self,
        conn: ClientConnection,
        scheme: bytes,
        acceptor: ntlm_proto.NtlmAcceptor | spnego_proto.SpnegoNtlmAcceptor,
        who: ntlm_proto.Identity,
        answer: NtlmVerdict,
        ctx: AttemptContext,
    ) -> AuthOutcome | Verdict:
        """The id service's ``answer`` taken: the connection's identity (the acceptor adopts the
        session key; Negotiate's final token), or the refusal to answer (padded, by the caller)."""
        verdict = answer.verdict
        if not verdict.ok:
            return verdict
        final: bytes | None = None
        try:
            if answer.result is None:
                raise ntlm_proto.NtlmError("bad-argument", "verdict without a session key")
            acceptor.adopt(answer.result)
            if isinstance(acceptor, spnego_proto.SpnegoNtlmAcceptor):
                final = acceptor.final_token()
        except (ntlm_proto.NtlmError, spnego_proto.SpnegoError) as e:
            # the SPNEGO mechListMIC did not verify with the session key
            name = "NTLM" if scheme == b"ntlm" else "Negotiate"
            log.warning(
                "client %s: %s verified for %s but refused here: %s", conn.peer_host, name, verdict.user, e.reason
            )
            return Verdict(False, f"ntlm-{e.reason}")
        identity = Identity(
            verdict.user or who.user,
            scheme.decode(),
            device_id=ctx.device_id,
            second_factor=verdict.reason in SECOND_FACTOR_REASONS,
            credential_id=verdict.credential_id,
        )
        conn.identity = identity
        headers = []
        if final:
            headers.append((b"WWW-Authenticate", b"Negotiate " + base64.b64encode(final)))
            self._trace(conn, "gateway", headers[-1][1])
        return AuthOutcome(identity=identity, headers=headers)

    # --- Kerberos (Negotiate) -----------------------------------------------------------
    async def _kerberos(self, conn: ClientConnection, req: RequestHead, service: Service, token: bytes) -> AuthOutcome:
        """One-leg Kerberos: verify the AP-REQ with the pool's keytab, answer the AP-REP."""
        assert self.kerberos is not None
        conn.auth_state = None
        started = time.monotonic()
        try:
            res = await asyncio.to_thread(self.kerberos.accept, token)
        except KerberosError as e:
            log.info("client %s: Kerberos ticket refused: %s (%s)", conn.peer_host, e.reason, e.detail)
            await self._pad(started)
            return self._deny(conn, e.reason)
        device = self.device_id_of(req, service)
        # Account state: a ticket outlives a disable/lock in AD by up to its lifetime (10 h).
        # When the id service offers an account check, ask it (and the account monitor
        # re-checks live sessions either way).
        check = getattr(self.credentials, "check_account", None)
        verdict: Verdict | None = None
        if check is not None:
            verdict = await check(res.user, self._ctx(conn, req, service, "kerberos"))
            if verdict.retry_after > 0:
                return self._throttled(conn, verdict)
            if not verdict.ok:
                log.info("client %s: Kerberos user %s refused: %s", conn.peer_host, res.user, verdict.reason)
                await self._pad(started)
                return self._deny(conn, verdict.reason)
        identity = Identity((verdict.user if verdict and verdict.user else res.user), "kerberos", device_id=device)
        conn.identity = identity  # like IIS: the connection stays authenticated
        headers = []
        if res.token:
            headers.append((b"WWW-Authenticate", b"Negotiate " + base64.b64encode(res.token)))
        return AuthOutcome(identity=identity, headers=headers)


def _scheme_and_param(authz: bytes) -> tuple[bytes, bytes]:
    """An Authorization value's scheme (lower case) and its parameter."""
    scheme, _, param = authz.partition(b" ")
    return scheme.lower(), param.strip(b" ")


def _kerberos_token(param: bytes) -> bytes | None:
    """The decoded Negotiate token when it is Kerberos (a raw krb5 GSS token, or SPNEGO whose
    preferred mechanism is Kerberos and which carries its optimistic token), else None (NTLM,
    or not decodable: the NTLM path answers those)."""
    if len(param) > MAX_KERBEROS_HEADER:
        return None
    try:
        token = base64.b64decode(param, validate=True)
        parsed = spnego_proto.parse_negotiate_token(token)
    except (binascii.Error, ValueError):
        return None
    krb5 = (spnego_proto.KRB5_OID, spnego_proto.MS_KRB5_OID)
    if isinstance(parsed, spnego_proto.RawKerberos):
        return token
    if (
        isinstance(parsed, spnego_proto.NegTokenInit)
        and parsed.mech_token
        and parsed.mech_types
        and parsed.mech_types[0] in krb5
    ):
        return token
    return None


def _is_ntlm_type(token: bytes, kind: int) -> bool:
    return len(token) >= 12 and token[:8] == b"NTLMSSP\x00" and token[8] == kind and token[9:12] == b"\0\0\0"


def _is_negotiate_init(token: bytes) -> bool:
    # GSS-API InitialContextToken ([APPLICATION 0], 0x60) starts a SPNEGO exchange.
    return token[:1] == b"\x60"
