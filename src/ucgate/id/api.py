"""What the gateway asks the id service about credentials.

The gateway (DMZ) holds no directory credentials and no ASP secrets; it asks this interface.
It is implemented in-process by :class:`ucgate.id.service.IdService`, and across the network by
:class:`ucgate.gateway.idclient.RemoteCredentials`, which calls the id service's HTTP API
(:mod:`ucgate.id.http_api`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from ..protocols.ntlm import VerifyResult


class Method(StrEnum):
    """How a sign-in attempt presented its credential: the one list both sides of the id
    service's API use (``context.method``)."""

    BASIC = "basic"
    NTLM = "ntlm"
    NEGOTIATE = "negotiate"
    KERBEROS = "kerberos"
    OAUTH_PASSWORD = "oauth-password"  # the SfB mobile sign-in (POST /WebTicket/oauthtoken)
    PORTAL = "portal"  # the self-service portal's sign-in form (in-process only)
    SIP = "sip"  # a REGISTER's credentials, checked by the Access Edge (gateway.sip)


# Bounds of the context's free-text fields on the wire.
MAX_CONTEXT_NAME = 256
MAX_SERVICE = 64


@dataclass(frozen=True, slots=True)
class AttemptContext:
    """Facts about one sign-in attempt, for the failure budget and the audit log."""

    client_ip: str
    method: str  # "basic" | "ntlm" | "negotiate" | ...
    service: str
    device_id: str | None = None
    user_agent: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The API's ``context`` object (what :meth:`from_json` reads back)."""
        return {"client_ip": self.client_ip, "method": str(self.method), "service": self.service,
                "device_id": self.device_id, "user_agent": self.user_agent}

    @classmethod
    def from_json(cls, obj: Any) -> AttemptContext:
        """Raises ContextError (field, message) for anything the API does not accept."""
        import ipaddress

        if not isinstance(obj, dict):
            raise ContextError("context", "expected an object")

        def text(key: str, limit: int, required: bool) -> str | None:
            v = obj.get(key)
            if v is None and not required:
                return None
            if not isinstance(v, str) or (required and not v):
                raise ContextError(f"context.{key}", "expected a string" + (" (required)" if required else ""))
            if len(v) > limit:
                raise ContextError(f"context.{key}", f"at most {limit} characters")
            return v

        ip = text("client_ip", 64, True)
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            raise ContextError("context.client_ip", "not an IP address") from None
        method = text("method", 32, True)
        if method not in Method._value2member_map_:
            raise ContextError("context.method", f"expected one of {', '.join(m.value for m in Method)}")
        return cls(client_ip=str(ip), method=method, service=str(text("service", MAX_SERVICE, True)),
                   device_id=text("device_id", MAX_CONTEXT_NAME, False),
                   user_agent=text("user_agent", MAX_CONTEXT_NAME, False))


class ContextError(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True, slots=True)
class Verdict:
    """The answer to a sign-in attempt. ``reason`` is a code for logs/audit, never shown to
    the client in a way that tells unknown users from wrong passwords."""

    ok: bool
    reason: str
    user: str | None = None  # the canonical user name when ok
    credential_id: str | None = None
    retry_after: float = 0.0  # > 0 when throttled


@dataclass(frozen=True, slots=True)
class NtlmHandshake:
    """One NTLM exchange for the id service to verify, as the gateway ran it.

    The gateway runs the NEGOTIATE/CHALLENGE legs (and SPNEGO) itself and passes the three NTLM
    messages verbatim (the MIC covers the exact bytes) with what its acceptor was built from, so
    that the id service can rebuild it (``NtlmAcceptor.from_messages``). The gateway never sees
    an NT hash: an ASP's NT hash is a password equivalent and must not sit in the DMZ.
    """

    negotiate: bytes = field(repr=False)
    challenge: bytes = field(repr=False)
    authenticate: bytes = field(repr=False)
    server_challenge: bytes = field(repr=False)
    challenge_time: int  # FILETIME of the CHALLENGE's MsvAvTimestamp
    channel_binding_data: bytes | None  # tls-server-end-point of the gateway's cert; None on plain HTTP
    extended_protection: str = "require"  # "require" | "allow" | "off"
    max_clock_skew: int = 300


@dataclass(frozen=True, slots=True)
class NtlmVerdict:
    """The answer to :meth:`CredentialService.verify_ntlm`: the verdict and, when ok, the
    verified result whose ``flags`` and ``exported_session_key`` the gateway's acceptor adopts
    (``NtlmAcceptor.adopt``) for session security — the SPNEGO mechListMIC. Session keys are
    per connection and short-lived; they are what Netlogon pass-through returns to an IIS
    server too. ``result.session_base_key`` is not sent across the network (empty there)."""

    verdict: Verdict
    result: VerifyResult | None = field(default=None, repr=False)


class CredentialService(Protocol):
    async def verify_password(self, name: str, password: str, ctx: AttemptContext) -> Verdict:
        """Check a user name (as typed: user, DOMAIN\\user or UPN) and password (an ASP)."""
        ...

    async def verify_ntlm(self, handshake: NtlmHandshake, ctx: AttemptContext) -> NtlmVerdict:
        """Verify an NTLMv2 AUTHENTICATE against the user's usable ASPs (spellings, OTP window),
        with its timestamp, MIC and channel binding checks, and record the outcome (budget, last
        use, audit). Refusals before any check (throttled, directory unavailable) come back as a
        verdict with ``retry_after > 0``."""
        ...


# --- the SIP relay's attempts (gateway.sip ↔ id.sipattempts, POST /v1/sip/attempt|settle) ----------

MAX_SIP_TOKEN = 128
MAX_SIP_REASON = 64


class SipOutcome(StrEnum):
    """How the Access Edge's answer settles a reserved SIP credential leg."""

    SUCCESS = "success"  # 2xx: the budget's success (resets the account's bucket)
    FAILURE = "failure"  # 401/403/407 final, or never answered: the unit stays charged
    NOT_A_GUESS = "not-a-guess"  # 5xx: the Edge did not decide; the unit comes back, audited
    CONTINUED = "continued"  # a 401 that continues a Kerberos/TLS-DSK handshake: back, not audited


def _wire_text(obj: dict, key: str, limit: int, *, required: bool, prefix: str = "") -> str | None:
    v = obj.get(key)
    name = f"{prefix}{key}"
    if v is None:
        if required:
            raise ContextError(name, "required")
        return None
    if not isinstance(v, str) or (required and not v):
        raise ContextError(name, "expected a string" + (" (required)" if required else ""))
    if len(v) > limit or any(ord(c) < 0x20 or c == "\x7f" for c in v):
        raise ContextError(name, f"at most {limit} characters, no control characters")
    return v


@dataclass(frozen=True, slots=True)
class SipAttemptRequest:
    """``POST /v1/sip/attempt``: reserve one unit of the account's failure budget for a REGISTER
    credential leg the relay is about to forward, and decide what must not reach the Edge (a
    refused account, an NTLM user that is not the From's account)."""

    user: str  # the From's address as typed: "sip:alice@contoso.com"
    context: AttemptContext
    ntlm_user: str | None = None  # the NTLM Type 3's user and domain, when the leg is NTLM
    ntlm_domain: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"user": self.user, "ntlm_user": self.ntlm_user, "ntlm_domain": self.ntlm_domain,
                "context": self.context.to_json()}

    @classmethod
    def from_json(cls, obj: Any) -> SipAttemptRequest:
        """Raises ContextError (field, message)."""
        if not isinstance(obj, dict):
            raise ContextError("body", "expected an object")
        user = _wire_text(obj, "user", 2 * MAX_CONTEXT_NAME, required=True)
        nu = _wire_text(obj, "ntlm_user", MAX_CONTEXT_NAME, required=False)
        nd = _wire_text(obj, "ntlm_domain", MAX_CONTEXT_NAME, required=False)
        if nd is not None and nu is None:
            raise ContextError("ntlm_domain", "only with ntlm_user")
        if "context" not in obj or obj["context"] is None:
            raise ContextError("context", "required")
        ctx = AttemptContext.from_json(obj["context"])
        if ctx.method != Method.SIP:
            raise ContextError("context.method", "expected sip")
        return cls(str(user), ctx, nu, nd)


def verdict_to_json(v: Verdict) -> dict[str, Any]:
    return {"ok": v.ok, "reason": v.reason, "user": v.user, "credential_id": v.credential_id,
            "retry_after": v.retry_after}


def verdict_from_json(obj: Any) -> Verdict:
    """Raises ValueError for anything that is not a verdict."""
    if not isinstance(obj, dict) or not isinstance(obj.get("ok"), bool) or not isinstance(obj.get("reason"), str):
        raise ValueError("not a verdict")  # noqa: TRY004 - a bad answer, not a bug
    retry = obj.get("retry_after") or 0.0
    user, cred = obj.get("user"), obj.get("credential_id")
    if isinstance(retry, bool) or not isinstance(retry, (int, float)) or retry < 0 \
            or not isinstance(user, (str, type(None))) or not isinstance(cred, (str, type(None))):
        raise ValueError("not a verdict")
    return Verdict(obj["ok"], obj["reason"], user=user, credential_id=cred, retry_after=float(retry))


@dataclass(frozen=True, slots=True)
class SipAttemptAnswer:
    """The answer to :class:`SipAttemptRequest`: ``verdict.ok`` with ``token`` (the reservation,
    held on the id service that issued it until settled or ``expires_in`` seconds, then charged
    as a failure) and ``verdict.user`` the account; else the refusal — ``retry_after`` > 0:
    throttled or a dependency down (503 here), otherwise a refused account or
    ``ntlm-user-mismatch`` (403), already settled and audited by the id service."""

    token: str | None
    verdict: Verdict
    expires_in: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"token": self.token, "expires_in": self.expires_in, **verdict_to_json(self.verdict)}

    @classmethod
    def from_json(cls, obj: Any) -> SipAttemptAnswer:
        """Raises ValueError for an answer that does not hold together."""
        verdict = verdict_from_json(obj)
        token, expires = obj.get("token"), obj.get("expires_in") or 0.0
        if verdict.ok != isinstance(token, str) or (token is not None and not 0 < len(token) <= MAX_SIP_TOKEN) \
                or isinstance(expires, bool) or not isinstance(expires, (int, float)):
            raise ValueError("not a SIP attempt answer")
        return cls(token, verdict, float(expires))


@dataclass(frozen=True, slots=True)
class SipSettle:
    """``POST /v1/sip/settle``: the Edge's answer to a reserved leg. ``reason`` is the audit's
    (``ok``, ``wrong-password``, ``registrar-refused``, ``sip-no-answer``,
    ``registrar-unavailable``...)."""

    token: str
    outcome: SipOutcome
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"token": self.token, "outcome": str(self.outcome), "reason": self.reason}

    @classmethod
    def from_json(cls, obj: Any) -> SipSettle:
        """Raises ContextError (field, message)."""
        if not isinstance(obj, dict):
            raise ContextError("body", "expected an object")
        token = _wire_text(obj, "token", MAX_SIP_TOKEN, required=True)
        outcome = _wire_text(obj, "outcome", 32, required=True)
        if outcome not in SipOutcome._value2member_map_:
            raise ContextError("outcome", f"expected one of {', '.join(o.value for o in SipOutcome)}")
        reason = _wire_text(obj, "reason", MAX_SIP_REASON, required=True)
        return cls(str(token), SipOutcome(str(outcome)), str(reason))
