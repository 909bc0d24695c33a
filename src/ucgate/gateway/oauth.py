"""The SfB OAuth password grant, intercepted; Bearer ``cwt=`` tokens accepted for what we issued.

Skype for Business mobile clients sign in like this (DESIGN.md, "Protocol facts"):

1. ``GET …/Autodiscover/AutodiscoverService.svc/root/oauth/user`` → 401 with
   ``WWW-Authenticate: MsRtcOAuth href="https://<host>/WebTicket/oauthtoken",grant_type="…"``;
2. ``POST /WebTicket/oauthtoken`` form ``grant_type=password&username=…&password=…`` →
   ``{"access_token":"cwt=…","token_type":"Bearer","expires_in":…}``;
3. every later request carries ``Authorization: Bearer cwt=…``.

Here step 2 never reaches the front end with the user's typed password: :class:`OAuthGrants`
reads the form (at most :data:`MAX_FORM_BYTES`, before authentication), verifies the user name
and password *itself* through the id service (ASP, ASP + one-time code for otp-appended users,
the failure budget and the audit log, as for Basic), then asks the front end for the real token
according to the route's backend mode (``[services.oauth] backend``):

======================  ========================================================================
``none`` (default)      the form with the password blanked, plus the identity header (a front
                        end that trusts the gateway, like the lab's)
``vault``               the password replaced by the user's vaulted domain password
``kcd``                 ``grant_type=urn:microsoft.rtc:windows`` with ``Authorization: Negotiate``
                        from the KCD backend
``passthrough``         the form as the client sent it (domain-password setups)
======================  ========================================================================

The token in the front end's answer is remembered (SHA-256 of it, never the token) →
(user, session, device, expiry) in a bounded in-memory :class:`TokenMap`, and the answer goes
back to the client unchanged; a 200 whose ``access_token`` cannot be read (none, not JSON,
streamed) is answered 502 instead, with the reason in the log. The grant is refused (403,
``password-grant-requires-tls``) on a plain-HTTP listener, as Basic is. :class:`BearerAuthenticator` then accepts ``Bearer`` only for
tokens in that map: a token the gateway never issued (or one it dropped) gets 401 with the
``Bearer`` and ``MsRtcOAuth`` challenges, as SfB answers. The ``Bearer`` header itself is
forwarded (the front end validates its own token). An account cut-off (``UserBlocked``) or a
device block (``DeviceBlocked``) drops that user's / device's tokens (``TokenMap.on_event``).

Tokens are per gateway process: behind a balancer without affinity, or after a restart, a client
gets the MsRtcOAuth 401 and signs in again — which is what SfB clients do with an expired token.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import hmac
import json
import logging
import os
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qsl, urlencode

from .. import metrics
from ..id.api import AttemptContext, CredentialService, Method
from ..protocols import http1
from ..protocols.http1 import RequestHead, ResponseHead
from ..protocols.sfb import Service
from . import pipeline
from .auth import Authenticator, AuthOutcome
from .backend import BackendError
from .body import ClientBodyError
from .connection import ClientConnection, Identity
from .exchange import Exchange
from .preauth import SECOND_FACTOR_REASONS, UNAVAILABLE_REASONS

if TYPE_CHECKING:
    from .server import Gateway
    from .stream import Stream

log = logging.getLogger("ucgate.gateway.oauth")


class PasswordVault(Protocol):
    """The ``vault`` mode's source of domain passwords (``ucgate.id.vault.VaultService`` or a
    remote client); None: no password enrolled for ``user``."""

    async def password(self, user: str, /) -> str | None: ...


MAX_FORM_BYTES = 8 * 1024
MAX_TOKENS = 100_000
MAX_TOKEN_LIFETIME = 24 * 3600.0  # never trust a token longer than this, whatever expires_in says
DEFAULT_TOKEN_LIFETIME = 8 * 3600.0  # SfB's default OAuth token lifetime (8 h)
GRANT_TYPES = b"urn:microsoft.rtc:windows,urn:microsoft.rtc:anonmeeting,password"
SFB_CLIENT_ID = b"00000004-0000-0ff1-ce00-000000000000"
# services where a Bearer cwt= token is a credential (SfB web services; not ActiveSync)
BEARER_SERVICES = frozenset(
    {
        "autodiscover",
        "ucwa",
        "webticket",
        "mcx",
        "certprov",
        "reach",
        "abs",
        "groupexpansion",
        "rgs",
        "persistentchat",
        "scheduler",
        "passiveauth",
    }
)
# where an unauthenticated request also gets the MsRtcOAuth challenge (how clients find the
# token endpoint)
CHALLENGE_SERVICES = frozenset({"autodiscover", "ucwa"})
_HOST_RE = re.compile(rb"[A-Za-z0-9.-]{1,253}(?::\d{1,5})?|\[[0-9A-Fa-f:.]{2,45}\](?::\d{1,5})?")
_FORM = b"application/x-www-form-urlencoded"
_JSON_HEADERS = [
    (b"Content-Type", b"application/json; charset=utf-8"),
    (b"Cache-Control", b"no-store"),
    (b"Pragma", b"no-cache"),
]


def token_key(value: bytes) -> str:
    """The map key of a token (the ``Bearer`` parameter, ``cwt=…``): its SHA-256, as the
    device gate keys its token bindings (``gateway.devices._bearer_key``)."""
    return hashlib.sha256(value.strip()).hexdigest()


def bearer_of(req: RequestHead) -> bytes | None:
    return bearer_token(req.get(b"authorization"))


def bearer_token(authz: bytes | None) -> bytes | None:
    """The token of an ``Authorization: Bearer <token>`` value, else None."""
    if authz is None or authz[:7].lower() != b"bearer ":
        return None
    v = authz[7:].strip()
    return v or None


@dataclass
class TokenRecord:
    user: str
    session: str  # random id of this sign-in, for the log
    expires: float  # wall clock seconds
    signed_in_at: dt.datetime
    device_id: str | None = None
    credential_id: str | None = None
    second_factor: bool = False
    _identity: Identity | None = field(default=None, repr=False, compare=False)
    _outcome: AuthOutcome | None = field(default=None, repr=False, compare=False)

    def outcome(self) -> AuthOutcome:
        """The authenticator's answer to a request with this token: its :meth:`identity`
        allowed (made once per identity, as the NTLM connection's ``known``)."""
        out = self._outcome
        ident = self.identity()
        if out is None or out.identity is not ident:
            out = self._outcome = AuthOutcome(identity=ident)
        return out

    def identity(self) -> Identity:
        """The principal of a request with this token (made once; again when a device was bound)."""
        ident = self._identity
        if ident is None or ident.device_id != self.device_id:
            ident = self._identity = Identity(
                self.user,
                "bearer",
                device_id=self.device_id,
                credential_id=self.credential_id,
                second_factor=self.second_factor,
                signed_in_at=self.signed_in_at,
            )
        return ident


class TokenMap:
    """Tokens the gateway obtained for its users: key → :class:`TokenRecord`, LRU-bounded."""

    def __init__(self, *, limit: int = MAX_TOKENS, clock: Callable[[], float] = time.time) -> None:
        self._d: OrderedDict[str, TokenRecord] = OrderedDict()
        self.limit = limit
        self.clock = clock

    def __len__(self) -> int:
        return len(self._d)

    def add(self, token: bytes, rec: TokenRecord) -> None:
        key = token_key(token)
        self._d[key] = rec
        self._d.move_to_end(key)
        while len(self._d) > self.limit:
            self._d.popitem(last=False)

    def get(self, token: bytes) -> TokenRecord | None:
        return self.get_key(token_key(token))

    def get_key(self, key: str) -> TokenRecord | None:
        """:meth:`get` by the token's map key (``token_key``)."""
        rec = self._d.get(key)
        if rec is None:
            return None
        if rec.expires <= self.clock():
            del self._d[key]
            return None
        self._d.move_to_end(key)
        return rec

    def holds(self, key: str, rec: TokenRecord) -> bool:
        """Whether ``rec`` is still the live record of ``key`` (not dropped by an event, not
        replaced, not expired): what :meth:`get_key` would answer, without the lookup's result."""
        return self.get_key(key) is rec

    def bind_device(self, token: bytes, device_id: str) -> None:
        rec = self._d.get(token_key(token))
        if rec is not None and rec.device_id is None:
            rec.device_id = device_id

    def drop(self, match: Callable[[TokenRecord], bool]) -> int:
        gone = [k for k, r in self._d.items() if match(r)]
        for k in gone:
            del self._d[k]
        return len(gone)

    def on_event(self, event: object) -> int:
        """``UserBlocked``: drop the user's tokens (issued before ``signed_in_before``, if set);
        ``DeviceBlocked``: drop the tokens bound to that device."""
        user = getattr(event, "user", None)
        if user is None:
            return 0
        device = getattr(event, "device_id", None)
        credential = getattr(event, "credential_id", None)
        if device is not None:
            d = device.lower()
            n = self.drop(lambda r: r.user == user and r.device_id is not None and r.device_id.lower() == d)
        elif credential is not None:  # CredentialRevoked: the tokens obtained with that ASP
            n = self.drop(lambda r: r.user == user and r.credential_id == credential)
        else:
            before = getattr(event, "signed_in_before", None)
            n = self.drop(lambda r: r.user == user and (before is None or r.signed_in_at < before))
        if n:
            log.warning("dropped %d OAuth token(s) of %s: %s", n, user, getattr(event, "reason", "blocked"))
        return n

    def live_users(self) -> dict[str, dt.datetime]:
        """{user: earliest sign-in} of unexpired tokens (for the account monitor)."""
        now = self.clock()
        out: dict[str, dt.datetime] = {}
        for r in self._d.values():
            if r.expires > now and (r.user not in out or r.signed_in_at < out[r.user]):
                out[r.user] = r.signed_in_at
        return out


def _token_endpoint(req: RequestHead, published_name: str | None) -> bytes:
    """Where the client finds the token endpoint: the published name (else the request's
    Host), on the port the client came in on. ``published_name`` is a host name; the port
    comes from the request's ``Host`` unless the name carries one — a client told
    ``https://name/`` would go to 443 while it reached us elsewhere (the demo's 8443)."""
    valid = req.host if req.host and _HOST_RE.fullmatch(req.host) else None
    host = published_name.encode() if published_name else (valid or b"localhost")
    if published_name and valid is not None and not _has_port(host):
        port = valid.rpartition(b":")[2] if _has_port(valid) else b""
        if port and port != b"443":
            host += b":" + port
    return b"https://" + host + b"/WebTicket/oauthtoken"


def _has_port(host: bytes) -> bool:
    return host.rpartition(b"]")[2].count(b":") == 1 if host.startswith(b"[") else b":" in host


def oauth_challenges(req: RequestHead, published_name: str | None) -> list[tuple[bytes, bytes]]:
    """The two challenges of an SfB front end's 401 for OAuth-capable clients."""
    href = _token_endpoint(req, published_name)
    return [
        (b"WWW-Authenticate", b'Bearer trusted_issuers="", client_id="%s"' % SFB_CLIENT_ID),
        (b"WWW-Authenticate", b'MsRtcOAuth href="%s",grant_type="%s"' % (href, GRANT_TYPES)),
    ]


class _BearerSeen:
    """The Bearer token last found on a connection (``ClientConnection.bearer``): the
    ``Authorization`` value as sent, its map key and the record it found."""

    __slots__ = ("authz", "key", "record")

    def __init__(self, authz: bytes, key: str, record: TokenRecord) -> None:
        self.authz = authz
        self.key = key
        self.record = record


class BearerAuthenticator:
    """Wraps the gateway's authenticator: ``Bearer`` tokens are checked against the
    :class:`TokenMap`; everything else goes to ``inner``, whose 401s on UCWA/autodiscover get
    the MsRtcOAuth challenge added (besides Negotiate/NTLM/Basic)."""

    def __init__(self, inner: Authenticator, tokens: TokenMap, *, published_name: str | None = None) -> None:
        self.inner = inner
        self.tokens = tokens
        self.published_name = published_name
        # the inner authenticator's synchronous answer, looked up on its class (never through
        # a __getattr__ that would lend another object's)
        answer = getattr(type(inner), "answer_now", None)
        self._inner_answer = answer.__get__(inner) if answer is not None else None
        known = getattr(type(inner), "known_now", None)
        self._inner_known = known.__get__(inner) if known is not None else None

    def __getattr__(self, name: str) -> Any:  # e.g. the preauth settings, for whoever asks
        return getattr(self.inner, name)

    def answer_now(self, conn: ClientConnection, req: RequestHead, service: Service) -> AuthOutcome | None:
        """What ``await authenticate(...)`` returns, when it needs no waiting
        (``PreAuthenticator.answer_now``): a Bearer token's answer (in the map or not), else the
        inner authenticator's own synchronous answer with the same OAuth challenges added; None
        when that one must wait or the inner authenticator has no synchronous answer."""
        token = bearer_of(req) if service.name in BEARER_SERVICES else None
        if token is not None:
            return self._bearer(req, token)
        inner = self._inner_answer
        if inner is None:
            return None
        outcome = inner(conn, req, service)
        return None if outcome is None else self._challenged(outcome, req, service)

    def known_now(self, conn: ClientConnection, req: RequestHead, service: Service) -> AuthOutcome | None:
        """:meth:`answer_now`'s answer when it is an identity known already and nothing is
        logged (``PreAuthenticator.known_now``): a Bearer token in the map, else the inner
        authenticator's known identity. The token last found on the connection is kept there
        (``conn.bearer``: the header, the map key, the record), so that the keep-alive requests
        that repeat it are answered without hashing it again — while the map still holds that
        very record (an event that drops it, or its expiry, is seen on the next request)."""
        if service.name in BEARER_SERVICES:
            # the common route found the one Authorization field already (req.get, without its frame)
            authz = req.authorization if req.prefix is not None else req.get(b"authorization")
            if authz is not None:
                seen = conn.bearer  # (a non-Bearer header never equals the Bearer one kept)
                if (
                    type(seen) is _BearerSeen
                    and hmac.compare_digest(seen.authz, authz)
                    and self.tokens.holds(seen.key, seen.record)
                ):
                    return seen.record.outcome()
                token = bearer_token(authz)
                if token is not None:
                    key = token_key(token)
                    rec = self.tokens.get_key(key)
                    if rec is None:
                        return None
                    conn.bearer = _BearerSeen(authz, key, rec)
                    return rec.outcome()
        inner = self._inner_known
        return None if inner is None else inner(conn, req, service)

    async def authenticate(self, conn: ClientConnection, req: RequestHead, service: Service) -> AuthOutcome:
        token = bearer_of(req) if service.name in BEARER_SERVICES else None
        if token is not None:
            return self._bearer(req, token)
        return self._challenged(await self.inner.authenticate(conn, req, service), req, service)

    def _bearer(self, req: RequestHead, token: bytes) -> AuthOutcome:
        rec = self.tokens.get(token)
        if rec is None:
            headers = oauth_challenges(req, self.published_name) + [
                (
                    b"X-Ms-diagnostics",
                    b'28055;reason="The OAuth token is invalid.";faultcode="wsse:FailedAuthentication"',
                )
            ]
            return AuthOutcome(identity=None, status=401, reason="bearer-unknown", headers=headers)
        return rec.outcome()

    def _challenged(self, outcome: AuthOutcome, req: RequestHead, service: Service) -> AuthOutcome:
        """The inner authenticator's answer; its 401s on UCWA/autodiscover with the OAuth challenges."""
        if (
            outcome.identity is None
            and outcome.status == 401
            and service.name in CHALLENGE_SERVICES
            and outcome.reason != "ntlm-challenge"
        ):
            outcome.headers = list(outcome.headers) + oauth_challenges(req, self.published_name)
        return outcome


@dataclass
class OAuthSettings:
    netbios_domain: str = ""  # "DOMAIN\\user" in the vault mode's form ("" = bare user name)
    failure_floor: float = 0.25  # as PreAuthSettings.failure_floor
    published_name: str | None = None
    max_form_bytes: int = MAX_FORM_BYTES


class OAuthGrants:
    """Intercepts ``POST /WebTicket/oauthtoken`` with ``grant_type=password`` (see module doc).

    Args:
        credentials: the id service (``verify_password``).
        tokens: where issued tokens are remembered.
        vault: ``async password(user) -> str | None`` for the ``vault`` mode (None: that mode
            answers 502 ``vault-not-configured``).
    """

    def __init__(
        self,
        credentials: CredentialService,
        tokens: TokenMap | None = None,
        *,
        settings: OAuthSettings | None = None,
        vault: PasswordVault | None = None,
        rand: Callable[[int], bytes] = os.urandom,
        wallclock: Callable[[], float] = time.time,
    ) -> None:
        self.credentials = credentials
        self.tokens = tokens or TokenMap(clock=wallclock)
        self.settings = settings or OAuthSettings()
        self.vault = vault
        self.rand = rand
        self.wallclock = wallclock

    def wrap(self, authenticator: Authenticator) -> BearerAuthenticator:
        return BearerAuthenticator(authenticator, self.tokens, published_name=self.settings.published_name)

    @staticmethod
    def intercepts(service: Service, req: RequestHead) -> bool:
        return OAuthGrants.applies(service) and req.method == b"POST"

    @staticmethod
    def applies(service: Service) -> bool:
        """Whether any request to ``service`` may be intercepted (the pipeline's stage plan)."""
        return service.name == "oauth"

    # --- the answers we give ourselves --------------------------------------------------
    @staticmethod
    def _json_answer(status: int, doc: dict, *, keep: bool, extra: list[tuple[bytes, bytes]] | None = None) -> bytes:
        body = json.dumps(doc, separators=(",", ":")).encode()
        hs = _JSON_HEADERS + (extra or []) + [(b"Content-Length", b"%d" % len(body))]
        if not keep:
            hs.append((b"Connection", b"close"))
        reason = http1.REASONS.get(status, b"Error")
        return http1.serialize_head(b"HTTP/1.1 %d %b" % (status, reason), hs) + body

    @classmethod
    async def _json(
        cls,
        gw: Gateway,
        client: Stream,
        status: int,
        doc: dict,
        *,
        keep: bool,
        extra: list[tuple[bytes, bytes]] | None = None,
    ) -> bool:
        metrics.count_request("oauth", status)  # the grant's own answers (forwarded ones: Gateway.forward)
        client.write(cls._json_answer(status, doc, keep=keep, extra=extra))
        try:
            await client.drain()
        except ConnectionError:
            pass
        return keep

    async def _pad(self, started: float) -> None:
        left = self.settings.failure_floor - (time.monotonic() - started)
        if left > 0:
            await asyncio.sleep(left)

    # --- the grant ----------------------------------------------------------------------
    async def handle(self, gw: Gateway, ex: Exchange) -> bool | None:
        """Whether to keep the connection when answered here; None to go on through the
        normal pipeline with the body already read (``ex.body.data``; other grant types:
        Windows auth to the gateway)."""
        conn, req, client, service, max_body = ex.conn, ex.req, ex.client, ex.service, ex.max_body
        assert service is not None  # set by the recognise stage (pipeline.py)
        limit = min(self.settings.max_form_bytes, max_body)
        if req.framing.kind == "length" and req.framing.length > limit:
            log.info("client %s: OAuth form of %d bytes refused", conn.peer_host, req.framing.length)
            return await self._json(gw, client, 413, {"error": "invalid_request"}, keep=False)
        body = b""
        if ex.body.pending:
            try:
                body = await ex.body.read(limit)
            except ClientBodyError as e:
                log.info("client %s: OAuth form refused: %s", conn.peer_host, e.reason)
                return await self._json(gw, client, e.status, {"error": "invalid_request"}, keep=False)
        ctype = (req.get(b"content-type") or b"").split(b";")[0].strip().lower()
        if ctype != _FORM:
            return None
        try:
            form = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(body), max_num_fields=20)
        except (UnicodeDecodeError, ValueError):
            return await self._json(gw, client, 400, {"error": "invalid_request"}, keep=req.keep_alive)
        fields = dict(form)
        if fields.get("grant_type") != "password":
            return None
        if not conn.tls:
            # As Basic (RFC 7617 §4; RFC 6749 §3.2: the token endpoint MUST use TLS): the
            # password came in clear, so it is not checked (no budget, nothing forwarded).
            log.warning("client %s: OAuth password grant refused: password-grant-requires-tls", conn.peer_host)
            return await self._json(
                gw,
                client,
                403,
                {"error": "invalid_request", "error_description": "the password grant needs TLS"},
                keep=req.keep_alive,
                extra=[(b"X-Ucgate-Reason", b"password-grant-requires-tls")],
            )
        username, password = fields.get("username"), fields.get("password")
        if (
            not username
            or password is None
            or len(username) > 256
            or len(password) > 256
            or any(ord(c) < 0x20 or c == "\x7f" for c in username)
        ):
            return await self._json(gw, client, 400, {"error": "invalid_request"}, keep=req.keep_alive)
        ua = req.get(b"user-agent")
        ctx = AttemptContext(
            client_ip=conn.peer_host,
            method=Method.OAUTH_PASSWORD,
            service=service.name,
            device_id=None,
            user_agent=ua.decode("latin-1")[:256] if ua else None,
        )
        started = time.monotonic()
        verdict = await self.credentials.verify_password(username, password, ctx)
        keep = req.keep_alive
        if verdict.retry_after > 0:
            status = 503 if verdict.reason in UNAVAILABLE_REASONS else 429
            metrics.count_auth("oauth-password", metrics.auth_result(status, verdict.reason), verdict.reason)
            log.info("client %s: OAuth grant for %r refused: %s", conn.peer_host, username, verdict.reason)
            return await self._json(
                gw,
                client,
                status,
                {"error": "temporarily_unavailable"},
                keep=keep,
                extra=[(b"Retry-After", b"%d" % max(1, int(verdict.retry_after + 0.999)))],
            )
        if not verdict.ok:
            metrics.count_auth("oauth-password", "deny", verdict.reason)
            await self._pad(started)
            log.info("client %s: OAuth grant for %r refused: %s", conn.peer_host, username, verdict.reason)
            # what the front end answers for a wrong password (lab.frontend.token_error)
            return await self._json(gw, client, 400, {"error": "invalid_grant"}, keep=keep)
        metrics.count_auth("oauth-password", "allow", "ok")
        user = verdict.user or username
        identity = Identity(
            user,
            "oauth-password",
            credential_id=verdict.credential_id,
            second_factor=verdict.reason in SECOND_FACTOR_REASONS,
        )
        conn.principal = identity
        try:
            upstream_form = await self._upstream_form(service, form, user)
        except BackendError as e:
            log.error("OAuth grant for %s: backend %s failed: %s", user, service.backend, e)
            return await self._json(gw, client, e.status, {"error": "server_error"}, keep=keep)
        session = self.rand(8).hex()
        # the token must be readable in the front end's answer: no compression
        req.headers = [(k, v) for k, v in req.headers if k.lower() != b"accept-encoding"]

        def record(resp: ResponseHead, data: bytes | None) -> bytes | None:
            return self._record(resp, data, identity, session)

        ex.identity, ex.observe = identity, record
        ex.body.replace(upstream_form)
        ex.use_backend = service.backend == "kcd"
        return await pipeline.send(gw, ex)

    async def _upstream_form(self, service: Service, form: list[tuple[str, str]], user: str) -> bytes:
        mode = service.backend
        if mode == "passthrough":
            return urlencode(form).encode()
        if mode == "kcd":
            rest = [(k, v) for k, v in form if k not in ("grant_type", "username", "password")]
            return urlencode([("grant_type", "urn:microsoft.rtc:windows")] + rest).encode()
        if mode == "vault":
            if self.vault is None:
                raise BackendError("vault-not-configured")
            try:
                secret = await self.vault.password(user)
            except Exception as e:  # noqa: BLE001 - any vault failure (its client, the network) is a 502
                raise BackendError("vault-unavailable", repr(e)) from None
            if secret is None:
                raise BackendError("vault-no-password", f"{user} has no domain password in the vault", status=403)
            dom = self.settings.netbios_domain
            name = f"{dom}\\{user}" if dom else user
            return urlencode(
                [(k, name if k == "username" else secret if k == "password" else v) for k, v in form]
            ).encode()
        # none: the front end trusts the identity header; it never sees the ASP
        return urlencode([(k, "" if k == "password" else user if k == "username" else v) for k, v in form]).encode()

    def _record(self, resp: ResponseHead, data: bytes | None, identity: Identity, session: str) -> bytes | None:
        """Remember the token of a 200 answer; None passes the answer on. A 200 whose token
        we cannot read is not passed on (the client would hold a token we refuse, or whatever
        else the front end said): 502 instead, logged with the reason."""
        if resp.status != 200:
            log.warning("OAuth grant for %s: the front end answered %d", identity.user, resp.status)
            return None
        reason = None
        token: Any = None
        lifetime = DEFAULT_TOKEN_LIFETIME
        if not data:
            reason = "oauth-token-unreadable"  # streamed, or empty
        else:
            try:
                doc = json.loads(data)
                token = doc["access_token"]
                lifetime = float(doc.get("expires_in", DEFAULT_TOKEN_LIFETIME))
            except (ValueError, KeyError, TypeError):
                reason = "oauth-no-access-token"
            else:
                if not isinstance(token, str) or not token or len(token) > 8192 or lifetime != lifetime:
                    reason = "oauth-bad-access-token"
        if reason is not None:
            log.error(
                "OAuth grant for %s: the front end's 200 answer has no usable access_token (%s); answered 502",
                identity.user,
                reason,
            )
            return self._json_answer(
                502, {"error": "server_error"}, keep=False, extra=[(b"X-Ucgate-Reason", reason.encode())]
            )
        lifetime = max(0.0, min(lifetime, MAX_TOKEN_LIFETIME))
        self.tokens.add(
            token.encode("latin-1", "replace"),
            TokenRecord(
                user=identity.user,
                session=session,
                expires=self.wallclock() + lifetime,
                signed_in_at=identity.signed_in_at,
                credential_id=identity.credential_id,
                second_factor=identity.second_factor,
            ),
        )
        log.info("OAuth token issued to %s (session %s, %ds)", identity.user, session, int(lifetime))
        return None
