"""What the gateway asks the id service about credentials.

The gateway (DMZ) holds no directory credentials and no ASP secrets; it asks this interface.
Today it is implemented in-process by :class:`ucgate.id.service.IdService`; the id service's
HTTP API (issue 5) implements the same interface across the network.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


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
class NtlmCandidates:
    """NT hashes the NTLM verifier may try for a user, or a refusal before trying any."""

    user: str | None  # canonical name, None for an unknown user (candidates are then decoys)
    candidates: list[tuple[str, bytes]] = field(default_factory=list, repr=False)
    refused: Verdict | None = None


class CredentialService(Protocol):
    async def verify_password(self, name: str, password: str, ctx: AttemptContext) -> Verdict:
        """Check a user name (as typed: user, DOMAIN\\user or UPN) and password (an ASP)."""
        ...

    async def ntlm_candidates(self, name: str, domain: str, ctx: AttemptContext) -> NtlmCandidates:
        """The NT hashes of the user's usable ASPs (spellings included)."""
        ...

    async def ntlm_result(
        self, name: str, ctx: AttemptContext, candidates: NtlmCandidates, matched: str | None, reason: str
    ) -> Verdict:
        """Record how an NTLM verification ended (budget, last use, audit)."""
        ...
