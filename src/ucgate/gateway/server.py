"""The gateway: an asyncio TLS-terminating reverse proxy that pre-authenticates every request.

The request pipeline, one stage per step, is gateway/pipeline.py (its order in ``STAGES``):

    parse (protocols.http1) → recognise (protocols.sfb) → OAuth intercept (oauth) → device
    facts (devices) → authenticate (auth.Authenticator) → decide (devices) → backend
    credentials (backend) → forward (upstream pool)

Parsing and recognising are pure functions; this module owns the I/O around them: sockets,
timeouts, body streaming and the upstream connections. A request that is malformed or
ambiguous is answered with a 4xx and the connection is closed; it is never forwarded.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import ssl
import time
import weakref
from collections.abc import Callable, Mapping

from .. import metrics
from ..config import Config
from ..id.health import Readiness
from ..protocols import http1
from ..protocols.http1 import RequestHead
from ..protocols.ntlm import tls_server_end_point
from ..protocols.sfb import ServiceMap
from . import pipeline
from .auth import Authenticator, AuthOutcome, DenyAll
from .backend import BackendCredentials, default_backends
from .connection import ClientConnection, Identity, call_on_loop
from .devices import DeviceGate
from .forward import Forwarder
from .health import HealthListener
from .preamble import StreamPreamble
from .session import ClientSession
from .stream import Stream
from .tls import certificate_der, server_context
from .tlstransport import TLSServer, start_tls_server
from .upstream import UpstreamPool

log = logging.getLogger("ucgate.gateway")
access_log = logging.getLogger("ucgate.access")


def _auth_now(authenticator: Authenticator, name: str = "answer_now") -> Callable[..., AuthOutcome | None] | None:
    """The authenticator's ``answer_now`` (or ``known_now``), looked up on the class, so that a
    wrapper delegating attributes never lends its inner authenticator's; None: it has none."""
    answer = getattr(type(authenticator), name, None)
    return None if answer is None else answer.__get__(authenticator)


class Gateway:
    """One listener, its upstream pools and its live connections.

    Args:
        config: the validated configuration.
        authenticator: decides who sent a request for a protected service.
        clock: monotonic seconds (passed in for tests).
        devices: the decide stage (``gateway.devices.DeviceGate``); None decides nothing.
        backends: backend credential mechanisms by mode name (``gateway.backend``; "none" and
            "passthrough" are always there); every service's ``backend`` must be one of them.
        oauth: the OAuth password grant interception (``gateway.oauth.OAuthGrants``); it also
            wraps ``authenticator`` to accept the Bearer tokens it issued. None: OAuth requests
            are forwarded like any other.
        readiness: what ``/readyz`` on the health listener (``[gateway] health_listen``) asks:
            an async callable returning ``(ok, reason)`` (``ucgate.id.health``); None: ready.
    """

    def __init__(
        self,
        config: Config,
        authenticator: Authenticator | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        devices: DeviceGate | None = None,
        backends: Mapping[str, BackendCredentials] | None = None,
        oauth=None,
        readiness: Readiness | None = None,
    ) -> None:
        self.config = config
        self.readiness = readiness
        self.health: HealthListener | None = None
        self.devices = devices
        self.oauth = oauth
        self.backends: dict[str, BackendCredentials] = {**default_backends(), **(backends or {})}
        gw = config.gateway
        self.gw = gw
        self.authenticator: Authenticator = authenticator or DenyAll()
        if oauth is not None:
            self.authenticator = oauth.wrap(self.authenticator)
        # the authenticator's synchronous answer (``answer_now``: what ``authenticate`` would
        # answer when that needs no waiting, e.g. an NTLM connection, the Basic memo, a Bearer
        # token we issued, the NTLM challenge), which lets the authenticate stage answer inline
        # (gateway/pipeline.py)
        self.auth_now: Callable[..., AuthOutcome | None] | None = _auth_now(self.authenticator)
        # ...and the part of it that is an identity known already and logs nothing (``known_now``)
        self.auth_known: Callable[..., AuthOutcome | None] | None = _auth_now(self.authenticator, "known_now")
        self.clock = clock
        self.service_map = ServiceMap.with_overrides(config.services)
        for svc in self.service_map.services:
            if svc.backend not in self.backends:
                raise ValueError(
                    f"services.{svc.name}: backend {str(svc.backend)!r} is not available "
                    f"(configured: {', '.join(sorted(self.backends))})"
                )
        self.limits = http1.Limits(
            max_header_bytes=gw.limits.max_header_bytes,
            max_header_count=gw.limits.max_header_count,
            max_target_bytes=gw.limits.max_target_bytes,
        )
        self.pools = {
            name: UpstreamPool(up, gw.timeouts, limit=up.max_idle, clock=clock) for name, up in config.upstreams.items()
        }
        self.ssl: ssl.SSLContext | None = None
        self.certificate_der: bytes | None = None
        if not gw.plain_http:
            assert gw.tls_cert and gw.tls_key
            self.ssl = server_context(gw.tls_cert, gw.tls_key)
            self.certificate_der = certificate_der(gw.tls_cert)
        # RFC 5929 tls-server-end-point of our certificate: what NTLM clients bind to (EPA).
        self.channel_binding: bytes | None = (
            tls_server_end_point(self.certificate_der) if self.certificate_der else None
        )
        # the binding of each certificate still in use by a connection after a reload (set_tls)
        self._bindings: weakref.WeakKeyDictionary[ssl.SSLContext, bytes | None] = weakref.WeakKeyDictionary()
        if self.ssl is not None:
            self._bindings[self.ssl] = self.channel_binding
        self.connections: set[ClientConnection] = set()
        # requests proxied entirely in protocol callbacks (gateway/session.py's fast path), and
        # whether that path is on (tests turn it off to hold both paths to the same results)
        self.fast_requests = 0
        self.fast_path = True
        self.stage_plans: dict = {}  # the inline chain's stages per service (pipeline.plan)
        self.max_body_bytes = gw.limits.max_body_bytes  # a service's own max_body_bytes overrides it
        self._server: asyncio.Server | TLSServer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # answers of our own, the forwarded heads, backend credentials, upstream exchanges
        # (gateway/forward.py); the stages and the session reach them through these names
        fw = self.forwarder = Forwarder(gw, self.limits, self.backends)
        self.request_specials = self._request_specials = fw.request_specials
        self.identity_header, self.proto = fw.identity_header, fw.proto
        self.answer, self.answer_now, self.log_rejected = fw.answer, fw.answer_now, fw.log_rejected
        self.prepare_backend, self.forward, self.deliver = fw.prepare_backend, fw.forward, fw.deliver
        self.prepare_backend_now, self.refuse_now = fw.prepare_backend_now, fw.refuse_now
        self.request_head, self.response_head = fw.request_head, fw.response_head
        self.upstream_failed_now = fw.upstream_failed_now
        self._is_trusted_proxy = fw.is_trusted_proxy
        # the Host of a forwarded HTTP/1.0 request that had none
        self.default_host: bytes | None = gw.published_name.encode("idna") if gw.published_name else None
        metrics.watch_gateway(self)  # ucgate_connections, ucgate_signed_in_* at scrape time

    # --- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        limit = self.gw.limits.max_header_bytes

        def protocol() -> Stream:
            return Stream(loop, limit, self._on_connection_made)

        if self.ssl is not None:
            # OpenSSL on the socket itself instead of the loop's memory-BIO TLS: less CPU per
            # request (gateway/tlstransport.py, bench/README.md)
            self._server = await start_tls_server(
                loop,
                protocol,
                self.gw.listen_host,
                self.gw.listen_port,
                self.ssl,
                backlog=1024,
                handshake_timeout=self.gw.timeouts.header_read,
                proxy_from=self._is_trusted_proxy if self.gw.proxy_protocol else None,
            )
        else:
            self._server = await loop.create_server(protocol, self.gw.listen_host, self.gw.listen_port, backlog=1024)
        log.info(
            "gateway listening on %s://%s:%d%s",
            self.proto.decode(),
            self.gw.listen_host,
            self.port,
            " (PROXY protocol from trusted_proxies)" if self.gw.proxy_protocol else "",
        )
        if self.gw.health_listen is not None:
            mc = self.config.metrics
            self.health = HealthListener(
                *self.gw.health_listen,
                self.readiness,
                timeout=self.gw.timeouts.header_read,
                metrics_allow=mc.allow if mc.enabled else None,
            )
            await self.health.start()

    def set_tls(self, context: ssl.SSLContext, der: bytes) -> None:
        """A new certificate (``SIGHUP``, ``ucgate.reload``): new connections are handshaken with
        ``context``; open ones keep theirs, and their channel binding (NTLM EPA) stays that of
        the certificate they were handshaken with."""
        self.ssl = context
        self.certificate_der = der
        self.channel_binding = tls_server_end_point(der)
        self._bindings[context] = self.channel_binding
        if isinstance(self._server, TLSServer):
            self._server.set_ssl_context(context)

    def _binding_of(self, client: Stream) -> bytes | None:
        """The tls-server-end-point binding of the certificate ``client`` was handshaken with."""
        if self.ssl is None:
            return None
        ctx = client.get_extra_info("sslcontext")
        if ctx is None or ctx is self.ssl:
            return self.channel_binding
        return self._bindings.get(ctx, self.channel_binding)

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        if self.health is not None:
            await self.health.stop()
        for conn in list(self.connections):
            conn.cut_off("shutdown")
        for pool in self.pools.values():
            pool.close()  # its per-user pools too
        if self._server is not None:
            try:
                async with asyncio.timeout(5):
                    await self._server.wait_closed()
            except TimeoutError:
                pass

    def cut_off(self, predicate: Callable[[ClientConnection], bool], reason: str) -> int:
        """Close every live connection matching ``predicate``; returns how many."""
        n = 0
        for conn in list(self.connections):
            if predicate(conn):
                conn.cut_off(reason)
                n += 1
        if n:
            log.warning("closed %d live connection(s): %s", n, reason)
        return n

    def live_users(self) -> dict[str, dt.datetime]:
        """{user: earliest sign-in time} of the connections authenticated right now."""
        out: dict[str, dt.datetime] = {}
        for conn in self.connections:
            ident = conn.principal
            if ident is not None and (ident.user not in out or ident.signed_in_at < out[ident.user]):
                out[ident.user] = ident.signed_in_at
        if self.oauth is not None:  # holders of a Bearer token are signed in too
            for user, at in self.oauth.tokens.live_users().items():
                if user not in out or at < out[user]:
                    out[user] = at
        return out

    def post_event(self, event: object) -> None:
        """:meth:`on_event` from any thread (the store's event follower runs in its own)."""
        call_on_loop(self._loop, self.on_event, event)

    def on_event(self, event: object) -> None:
        """Handle an event (``ucgate.id.events``): ``UserBlocked`` closes that user's live
        sessions, ``DeviceBlocked`` only those from that device, ``CredentialRevoked`` only
        those signed in with that ASP."""
        user = getattr(event, "user", None)
        if user is None:
            return
        if self.oauth is not None:  # their Bearer tokens stop working too
            self.oauth.tokens.on_event(event)
        credential = getattr(event, "credential_id", None)
        if credential is not None:
            self.cut_off(
                lambda c: (
                    c.principal is not None and c.principal.user == user and c.principal.credential_id == credential
                ),
                f"{user} credential {credential}: {getattr(event, 'reason', 'revoked')}",
            )
            return
        device_id = getattr(event, "device_id", None)
        if device_id is not None:
            device = device_id.lower()

            def on_device(conn: ClientConnection) -> bool:
                ident = conn.principal
                return (
                    ident is not None
                    and ident.user == user
                    and ident.device_id is not None
                    and ident.device_id.lower() == device
                )

            self.cut_off(on_device, f"{user} device {device_id}: {getattr(event, 'reason', 'blocked')}")
            return
        before = getattr(event, "signed_in_before", None)

        def match(conn: ClientConnection) -> bool:
            ident = conn.principal
            return ident is not None and ident.user == user and (before is None or ident.signed_in_at < before)

        self.cut_off(match, f"{user}: {getattr(event, 'reason', 'blocked')}")

    # --- per connection -----------------------------------------------------------------
    def _on_connection_made(self, client: Stream) -> None:
        """A client connected (after the TLS handshake and, over TLS, its PROXY header: then
        ``peername`` is the client's): register it and let its session wait for the first
        request head. Plain HTTP with ``proxy_protocol``: the PROXY header first."""
        peer = client.get_extra_info("peername") or ("?", 0)
        if len(self.connections) >= self.gw.limits.max_connections:
            log.warning("connection from %s refused: max_connections reached", peer[0])
            client.close()
            return
        if self.gw.proxy_protocol and self.ssl is None:
            StreamPreamble(
                client,
                peer,
                self._is_trusted_proxy(peer[0]),
                self.gw.timeouts.header_read,
                lambda addr: self._register(client, addr),
            )
            return
        self._register(client, peer)

    def _register(self, client: Stream, peer: tuple) -> None:
        conn = ClientConnection(
            peer_host=peer[0],
            peer_port=peer[1],
            tls=self.ssl is not None,
            channel_binding=self._binding_of(client),
            created_at=self.clock(),
            writer=client,  # type: ignore[arg-type]  # has close()/is_closing(), all cut_off needs
        )
        self.connections.add(conn)
        ClientSession(self, client, conn).start()

    async def handle(self, conn: ClientConnection, req: RequestHead, client: Stream) -> bool:
        """Run one request through the pipeline (gateway/pipeline.py). Returns whether to keep
        the connection."""
        return await pipeline.run(self, conn, req, client)

    def adopt(self, conn: ClientConnection, req: RequestHead, identity: Identity) -> None:
        """The decide stage's identity (with its device id) is the connection's principal; a
        Bearer token is bound to that device, to be revoked with it (DeviceBlocked)."""
        conn.principal = identity
        if self.oauth is not None and identity.method == "bearer" and identity.device_id is not None:
            token = req.get(b"authorization")
            if token is not None:
                self.oauth.tokens.bind_device(token[7:], identity.device_id)
