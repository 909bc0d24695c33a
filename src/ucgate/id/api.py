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
