"""Backend credentials: how the front end learns who the pre-authenticated user is.

The client's own credentials (an ASP, NTLM to the gateway) stop at the gateway. What the front
end then sees depends on the route's mode, ``[services.<name>] backend = ...``:

``none`` (default)
    Only the identity header (``[gateway] identity_header``, ``X-Ucgate-User``): for front ends
    that trust the gateway (the lab front end, an IIS rewrite rule, a header-auth module).
``passthrough``
    The client's own ``Authorization`` header is forwarded (domain-password setups, where the
    front end must verify the same credentials itself).
``vault``
    The user's domain password from the vault (``ucgate.id.vault``), enrolled once by an admin
    or in the portal: ``Authorization: Basic`` per request, or an NTLM handshake the gateway runs
    as the client on a per-user upstream connection (``backend_scheme = "ntlm" | "basic"``).
``kcd``
    Kerberos constrained delegation: ``Authorization: Negotiate`` with a service ticket for the
    front end obtained by S4U2Self + S4U2Proxy (``ucgate.gateway.kcd``, configured in
    ``[kerberos]``).

A mechanism implements :class:`BackendCredentials`. It returns the headers to add and,
optionally, a ``pool_key``: requests with a pool key go on upstream connections of their own
(a bounded LRU of small pools, see ``Gateway``), for front ends that authenticate the
*connection* (NTLM). A mechanism that needs a handshake on such a connection sets
``BackendAuth.handshake`` (called once per new connection, before the first request).

Failures raise :class:`BackendError`: the gateway answers 502 (or ``status``) at once with the
reason in its log, and never waits on a broken mechanism longer than its timeouts.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from ..config import BackendMode
from ..errors import UcgateError
from ..protocols.http1 import RequestHead
from ..protocols.sfb import Service
from .connection import Identity

log = logging.getLogger("ucgate.gateway.backend")

MODES = tuple(m.value for m in BackendMode)


class BackendError(UcgateError):
    """Backend credentials could not be obtained. ``reason`` goes to the log (never to the
    client); ``status`` is what the client gets (502 unless the mechanism says otherwise)."""

    def __init__(self, reason: str, detail: str = "", *, status: int = 502) -> None:
        super().__init__(reason, detail)
        self.status = status


class ConnectionHandshake(Protocol):
    """A connection-based handshake the gateway runs as the client (NTLM): ``first()`` gives
    the first ``Authorization`` value; ``next(challenges)`` gets the upstream's
    ``WWW-Authenticate`` values of its 401 and returns the next ``Authorization`` value, or
    None when there is nothing more to send. Raises BackendError."""

    scheme: bytes

    def first(self) -> bytes: ...

    def next(self, challenges: list[bytes]) -> bytes | None: ...


@dataclass
class BackendAuth:
    """What to add to one forwarded request.

    ``headers``: extra request headers (e.g. ``Authorization``). ``pool_key``: a key for a
    per-user upstream pool (None: the shared pool). ``handshake``: for a new connection of that
    pool, a factory of the handshake to run before the request (``channel_binding`` is the
    ``tls-server-end-point`` data of the upstream's certificate, None on plain HTTP).
    """

    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    pool_key: str | None = None
    handshake: Callable[[bytes | None], ConnectionHandshake] | None = None
    # ``headers`` as header lines (each ``\r\n`` + name + ``: `` + value), made once
    wire: bytes | None = field(default=None, repr=False, compare=False)

    def lines(self) -> bytes:
        """``headers`` as the lines to append to a request head (each with its leading CRLF)."""
        wire = self.wire
        if wire is None:
            wire = self.wire = b"".join(b"\r\n" + k + b": " + v for k, v in self.headers)
        return wire


@runtime_checkable
class BackendCredentials(Protocol):
    name: str  # "kcd" | "vault" | "passthrough" | "none"

    async def prepare(self, identity: Identity, service: Service, req: RequestHead) -> BackendAuth: ...


class NoBackend:
    """``none``: the identity header only (the gateway adds it for every mode)."""

    name = "none"

    async def prepare(self, identity: Identity, service: Service, req: RequestHead) -> BackendAuth:
        return BackendAuth()


class PassthroughBackend:
    """``passthrough``: forward the client's own ``Authorization`` (domain-password setups).

    Only a per-request scheme can be forwarded: Basic, or a Bearer token. An NTLM or Negotiate
    handshake authenticated the client's connection *to the gateway*; its messages mean
    nothing to the front end (and the gateway may not relay them: that is the NTLM relay
    attack Extended Protection exists to stop), so such a request gets 502 with a reason.
    """

    name = "passthrough"
    FORWARDABLE = (b"basic", b"bearer")

    async def prepare(self, identity: Identity, service: Service, req: RequestHead) -> BackendAuth:
        authz = req.get(b"authorization")
        if authz is None:
            if identity.method in ("ntlm", "negotiate"):
                raise BackendError(
                    "passthrough-connection-auth",
                    f"{identity.user} authenticated the connection with {identity.method}; nothing to pass through",
                )
            return BackendAuth()
        scheme = authz.partition(b" ")[0].lower()
        if scheme not in self.FORWARDABLE:
            raise BackendError("passthrough-scheme", f"{scheme.decode('latin-1')} cannot be passed through")
        return BackendAuth([(b"Authorization", authz)])


class VaultBackend:
    """``vault``: the user's domain password from the vault answers the front end.

    Args:
        secrets: ``async password(user) -> str | None`` (``ucgate.id.vault.VaultService`` or a
            remote client); None means no password enrolled (403, the user must enrol one).
        domain: the NetBIOS domain for NTLM and for ``DOMAIN\\user`` in Basic (empty: the bare
            sAMAccountName, as Apache's LDAP Basic expects).
        basic_domain: put ``domain`` in front of the Basic user name.
        workstation: the NTLM workstation name the gateway announces.
    """

    name = "vault"

    def __init__(
        self, secrets: Any, *, domain: str = "", basic_domain: bool = False, workstation: str = "UCGATE-GW"
    ) -> None:
        self.secrets = secrets
        self.domain = domain
        self.basic_domain = basic_domain
        self.workstation = workstation

    async def _password(self, user: str) -> str:
        try:
            pw = await self.secrets.password(user)
        except BackendError:
            raise
        except Exception as e:  # noqa: BLE001 - a store or id-service failure: 502, not a hang or a 500
            raise BackendError("vault-unavailable", f"{user}: {e!r}") from None
        if pw is None:
            raise BackendError("vault-no-password", f"{user} has no domain password in the vault", status=403)
        return pw

    async def prepare(self, identity: Identity, service: Service, req: RequestHead) -> BackendAuth:
        user = identity.user
        password = await self._password(user)
        if service.backend_scheme == "basic":
            name = f"{self.domain}\\{user}" if self.basic_domain and self.domain else user
            value = base64.b64encode(f"{name}:{password}".encode())
            return BackendAuth([(b"Authorization", b"Basic " + value)])
        domain, workstation = self.domain, self.workstation
        return BackendAuth(
            pool_key=f"vault-ntlm:{user}",
            handshake=lambda cb: NtlmClientHandshake(user, password, domain, workstation, cb),
        )


class NtlmClientHandshake:
    """The NTLM client side (pyspnego's own NTLM implementation, no system GSSAPI needed),
    with the upstream certificate's channel binding when the upstream is HTTPS."""

    scheme = b"NTLM"

    def __init__(self, user: str, password: str, domain: str, workstation: str, channel_binding: bytes | None) -> None:
        import spnego
        from spnego.channel_bindings import GssChannelBindings

        cbt = GssChannelBindings(application_data=channel_binding) if channel_binding else None
        username = f"{domain}\\{user}" if domain else user
        self._ctx = spnego.client(
            username, password, protocol="ntlm", options=spnego.NegotiateOptions.use_ntlm, channel_bindings=cbt
        )
        self._sent = 0

    def first(self) -> bytes:
        self._sent = 1
        return b"NTLM " + base64.b64encode(self._ctx.step() or b"")

    def next(self, challenges: list[bytes]) -> bytes | None:
        if self._sent != 1:
            return None
        token = None
        for c in challenges:
            scheme, _, param = c.strip().partition(b" ")
            if scheme.lower() == b"ntlm" and param.strip():
                token = param.strip()
                break
        if token is None:
            raise BackendError("vault-ntlm-no-challenge", "the front end sent no NTLM challenge")
        try:
            out = self._ctx.step(base64.b64decode(token, validate=True))
        except Exception as e:  # noqa: BLE001 - whatever pyspnego raises on a bad challenge: 502
            raise BackendError("vault-ntlm-bad-challenge", repr(e)) from None
        self._sent = 2
        return b"NTLM " + base64.b64encode(out or b"")


# Mechanisms by mode name; the composition root (``ucgate.app.backends``) fills in the
# ones that need configuration (vault: the vault; kcd: the ``[kerberos]`` section).
def default_backends() -> dict[str, BackendCredentials]:
    return {"none": NoBackend(), "passthrough": PassthroughBackend()}
