"""What the gateway asks the id service about credentials.

The gateway (DMZ) holds no directory credentials and no ASP secrets; it asks this interface.
It is implemented in-process by :class:`ucgate.id.service.IdService`, and across the network by
:class:`ucgate.gateway.idclient.RemoteCredentials`, which calls the id service's HTTP API
(:mod:`ucgate.id.http_api`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from ..protocols.ntlm import VerifyResult


@dataclass(frozen=True, slots=True)
class AttemptContext:
    """Facts about one sign-in attempt, for the failure budget and the audit log."""

    client_ip: str
    method: str  # "basic" | "ntlm" | "negotiate" | ...
    service: str
    device_id: str | None = None
    user_agent: str | None = None


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
