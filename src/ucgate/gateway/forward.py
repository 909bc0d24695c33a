"""Forwarding: the heads the gateway sends (the request upstream with our own and the
backend's headers, the response to the client), the backend credentials, the exchange with the
upstream (its handshake for per-user connections, retries on a dead pooled connection, the
response streamed back), and the answers of our own (a refusal, a protocol error, an upstream
failure).

The pipeline's last stages (gateway/pipeline.py: backend credentials, forward) and the fast
path (gateway/session.py) use it through the gateway's names (``Gateway.forward``,
``request_head``, ``response_head``, ``deliver``...).
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import ssl
from collections.abc import Callable, Mapping

from .. import metrics
from ..config import GatewayConfig
from ..errors import reason_of
from ..logs import REQUEST_ID_HEADER
from ..protocols import http1
from ..protocols.http1 import HttpError, RequestHead, ResponseHead
from ..protocols.ntlm import tls_server_end_point
from ..protocols.sfb import Service
from .backend import BackendAuth, BackendCredentials, BackendError
from .body import COPY_CHUNK, DISCARD, ClientBodyError, copy_chunked, copy_exact, copy_until_close
from .connection import ClientConnection, Identity
from .exchange import WAIT, Exchange, Refusal
from .stream import Stream
from .upstream import UpstreamConnection, UpstreamError, UpstreamPool

log = logging.getLogger("ucgate.gateway")


class Forwarder:
    """What forwarding needs of the configuration (``settings``: ``[gateway]``), the parse
    ``limits`` and the backend credential mechanisms by mode name."""

    def __init__(
        self, settings: GatewayConfig, limits: http1.Limits, backends: Mapping[str, BackendCredentials]
    ) -> None:
        gw = self.gw = settings
        self.limits = limits
        self.backends = backends
        ident = gw.identity_header.lower().encode()
        # Headers a client must never be able to set: our identity assertion and anything
        # we add ourselves.
        # Expect: the gateway answers 100-continue itself (and re-frames the body); forwarded, it
        # would have the front end wait for, or answer, an expectation that is already met.
        self._drop_request = frozenset(
            {
                ident,
                b"x-forwarded-for",
                b"x-forwarded-proto",
                b"x-forwarded-host",
                b"forwarded",
                b"expect",
                b"x-ucgate-request-id",
            }
        )
        self._drop_authenticated = self._drop_request | {b"authorization"}
        # the same, plus what is never forwarded (hop-by-hop, our own framing), precomputed
        self._skip_request = http1.not_forwarded(self._drop_request)
        self._skip_authenticated = http1.not_forwarded(self._drop_authenticated)
        self._skip_response = http1.not_forwarded()
        # ...and every spelling a front end maps to the same variable (X_Ucgate_User, x.forwarded.for;
        # protocols/http1.py, OwnedFields), plus the routing/override fields front ends act on
        self._owned = http1.OwnedFields((ident, b"x-ucgate-request-id", *http1.OWNED_FIELDS))
        self._owned_identity = http1.OwnedFields((ident,))
        self.request_specials = http1.request_special_re(self._drop_request, self._owned)
        self.identity_header = gw.identity_header.encode()
        self.proto = b"http" if gw.plain_http else b"https"

    async def answer(self, ex: Exchange, refusal: Refusal) -> bool:
        """Answer a stage's refusal (the one place): a protocol error is logged as rejected
        and closes the connection; any other refusal is logged, counted and keeps the
        connection when it can (its body read and dropped). Returns whether to keep the
        connection."""
        keep = self.refuse_now(ex, refusal)
        if keep is None:  # a body to drain first: logged and counted before (the client may go)
            self._log_refusal(ex, refusal)
            keep = await ex.body.discard(self.gw.limits.max_drain_bytes)
            self._write_refusal(ex, refusal, keep)
        await _drain_quietly(ex.client)
        return keep

    def refuse_now(self, ex: Exchange, refusal: Refusal) -> bool | None:
        """:meth:`answer` without waiting: the refusal written (the write buffer not waited
        for) and whether to keep the connection; None (nothing done) when the request's body
        must be drained first to keep it."""
        if refusal.error is not None:
            err = refusal.error
            self.log_rejected(ex.conn, err, ex.path, ex.log_fields())
            metrics.count_request(ex.service.name if ex.service else None, err.status)
            self.answer_now(
                ex.client,
                err.status,
                f"{err.status} {err.reason}\n".encode(),
                close=True,
                head_only=ex.req.method == b"HEAD",
            )
            return False
        req = ex.req
        keep = req.keep_alive and not refusal.close
        if keep and req.framing.kind != "none":
            if not req.expect_continue:
                return None  # NTLM's handshake needs the same connection: drain, then answer
            keep = False  # the client has not sent the body; we cannot tell if it will
        self._log_refusal(ex, refusal)
        self._write_refusal(ex, refusal, keep)
        return keep

    def _log_refusal(self, ex: Exchange, refusal: Refusal) -> None:
        """Log and count a refusal (not a protocol error)."""
        conn, req, service = ex.conn, ex.req, ex.service
        fields = ex.log_fields()
        log.info(
            "refused request from %s: status=%d reason=%s service=%s method=%s path=%s request_id=%s",
            conn.peer_host,
            refusal.status,
            refusal.reason,
            service.name if service else "-",
            req.method.decode(),
            ex.path,
            fields["request_id"],
            extra={**fields, "reason": refusal.reason},
        )
        metrics.count_request(service.name if service else None, refusal.status)

    def _write_refusal(self, ex: Exchange, refusal: Refusal, keep: bool) -> None:
        self.answer_now(
            ex.client,
            refusal.status,
            refusal.body,
            refusal.headers,
            close=not keep,
            head_only=ex.req.method == b"HEAD",
        )

    # --- answering ourselves ----------------------------------------------------------
    @staticmethod
    def answer_now(
        client: Stream,
        status: int,
        body: bytes,
        headers: list[tuple[bytes, bytes]] | None = None,
        *,
        close: bool,
        head_only: bool = False,
    ) -> None:
        """Write an answer of our own (without waiting for the write buffer). ``headers`` may
        bring the body's own ``Content-Type`` (WBXML, JSON); else text/plain. ``head_only``:
        the answer to a HEAD request — the Content-Length the body would have, and no body
        (RFC 9110 §9.3.2; a body there would be read as the next response)."""
        hs = list(headers or [])
        if not any(k.lower() == b"content-type" for k, _ in hs):
            hs.append((b"Content-Type", b"text/plain; charset=utf-8"))
        hs += [
            (b"Content-Length", b"%d" % len(body)),
            (b"Cache-Control", b"no-store"),
        ]
        if close:
            hs.append((b"Connection", b"close"))
        reason = http1.REASONS.get(status, b"Error")
        head = http1.serialize_head(b"HTTP/1.1 %d %b" % (status, reason), hs)
        client.write(head if head_only else head + body)

    @staticmethod
    def log_rejected(
        conn: ClientConnection, err: HttpError, path: str | None = None, fields: dict[str, str] | None = None
    ) -> None:
        log.warning(
            "rejected request from %s: status=%d reason=%s request_id=%s%s%s",
            conn.peer_host,
            err.status,
            err.reason,
            conn.request_id.decode(),
            f" detail={err.detail}" if err.detail else "",
            f" path={path}" if path else "",
            extra={
                "request_id": conn.request_id.decode(),
                "client": conn.peer_host,
                **(fields or {}),
                "reason": err.reason,
            },
        )

    # --- forwarding -------------------------------------------------------------------
    def request_head(
        self,
        conn: ClientConnection,
        req: RequestHead,
        identity: Identity | None,
        backend_headers: list[tuple[bytes, bytes]] | None = None,
        log_fields: dict | None = None,
    ) -> bytes:
        # Credentials the gateway verified are not passed on: the front end learns the user
        # from the identity header and the route's backend credentials (``backend_headers``,
        # gateway.backend).
        skip = self._skip_request if identity is None else self._skip_authenticated
        # A client could also hide a header to drop by naming it in Connection (it is then
        # hop-by-hop and dropped) — fine: we only ever remove, never trust.
        xff = conn.peer_host.encode()
        trusted = bool(self.gw.trusted_proxies) and self.is_trusted_proxy(conn.peer_host)
        if trusted:
            prior = req.get_all(b"x-forwarded-for")
            if prior:
                xff = b", ".join(prior) + b", " + xff
        owned = self._owned
        dropped = [name for name, _ in req.headers if name in owned]
        if dropped:  # any spelling of ours (protocols/http1.py, OwnedFields): never forwarded
            skip = skip | {name.lower() for name in dropped}
            self._log_dropped(conn, req, dropped, trusted, log_fields)
        added = [
            (b"X-Forwarded-For", xff),
            (b"X-Forwarded-Proto", self.proto),
            (b"X-Forwarded-Host", req.host),
            (REQUEST_ID_HEADER, conn.request_id),
        ]
        if identity is not None:
            added.append((self.identity_header, identity.user.encode("utf-8")))
        if backend_headers:
            added += backend_headers
        if req.framing.kind == "length":
            added.append((b"Content-Length", b"%d" % req.framing.length))
        elif req.framing.kind == "chunked":
            added.append((b"Transfer-Encoding", b"chunked"))
        start_line = req.method + b" " + req.target + b" HTTP/1.1"
        return http1.serialize_forwarded(start_line, req.headers, req.connection_tokens, skip, added)

    def _log_dropped(
        self,
        conn: ClientConnection,
        req: RequestHead,
        dropped: list[bytes],
        trusted: bool,
        log_fields: dict | None = None,
    ) -> None:
        """Log the client fields dropped as the gateway's own (names only, never values): a
        warning when one spells the identity header, else info (proxies on the client's side
        add X-Forwarded-For and friends in good faith); a trusted proxy's X-Forwarded-For is
        expected and not logged. ``log_fields``: the service, user and device of a request
        handled outside a pipeline task (which has them in its log context)."""
        if trusted:
            dropped = [n for n in dropped if n.lower() != b"x-forwarded-for"]
            if not dropped:
                return
        identity = any(n in self._owned_identity for n in dropped)
        log.log(
            logging.WARNING if identity else logging.INFO,
            "dropped client header(s) from %s: reason=client-header-dropped names=%s method=%s target=%s",
            conn.peer_host,
            ",".join(n.decode("ascii", "replace") for n in dropped),
            req.method.decode("ascii", "replace"),
            req.target[:200].decode("ascii", "replace"),
            extra={
                "request_id": conn.request_id.decode(),
                "client": conn.peer_host,
                "reason": "client-header-dropped",
                **(log_fields or {}),
            },
        )

    def is_trusted_proxy(self, host: str) -> bool:
        try:
            addr = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(addr in net for net in self.gw.trusted_proxies)

    def prepare_backend_now(self, ex: Exchange) -> object:
        """:meth:`prepare_backend` when it needs no waiting: a Bearer token the gateway issued
        goes on as it is (the front end validates its own token), mode ``none`` adds nothing;
        WAIT for a mode that prepares credentials."""
        identity = ex.identity
        if identity is None:
            return None
        if identity.method == "bearer":
            authz = ex.req.get(b"authorization")
            conn = ex.conn
            auth = conn.backend  # the token last sent for this connection: kept-alive requests repeat it
            if auth is None or not authz or not hmac.compare_digest(auth.headers[0][1], authz):
                auth = BackendAuth([(b"Authorization", authz)] if authz else [])
                if authz:
                    conn.backend = auth
            ex.auth = auth
            return None
        service = ex.service
        assert service is not None  # set by the recognise stage
        if ex.use_backend and service.backend != "none":
            return WAIT
        return None

    async def prepare_backend(self, ex: Exchange) -> Refusal | None:
        """Backend credentials (issue 7): :meth:`prepare_backend_now`, else the route's mode
        prepares them, and a mode that authenticates the connection (NTLM) gets a per-user pool."""
        if self.prepare_backend_now(ex) is not WAIT:
            return None
        identity, service, req = ex.identity, ex.service, ex.req
        assert identity is not None and service is not None and ex.pool is not None  # recognised
        try:
            auth = ex.auth = await self.backends[service.backend].prepare(identity, service, req)
        except BackendError as e:
            log.error("backend %s failed for %s (service %s): %s", service.backend, identity.user, service.name, e)
            return Refusal(e.status, e.reason, b"upstream credentials unavailable\n")
        if auth.pool_key is not None:
            ex.pool = ex.pool.for_user(auth.pool_key)
        return None

    async def forward(self, ex: Exchange) -> bool:
        """Send the request (head, then its body: what a stage read, or copied from the client) to
        the upstream and the response back. Returns whether to keep the client connection."""
        conn, req, service, pool = ex.conn, ex.req, ex.service, ex.pool
        identity, client, max_body, auth = ex.identity, ex.client, ex.max_body, ex.auth
        assert service is not None and pool is not None  # set by the recognise stage
        prebody, observe, response_headers = ex.body_data, ex.observe, ex.response_headers
        if prebody is not None:  # read by a stage (the OAuth form, the device facts)
            req.framing = http1.Framing("length", len(prebody))
        head = self.request_head(conn, req, identity, auth.headers if auth is not None else None)
        if prebody is not None:
            head += prebody
            req.framing = http1.Framing("none")
        has_body = req.framing.kind != "none"
        attempts = 1 if has_body else 2
        body_done = not has_body
        for attempt in range(attempts):
            try:
                # returned to the pool on leaving (or closed: an exception, a connection that
                # may not be reused, the response not keep-alive)
                async with pool.connection() as up:
                    if not up.reused and auth is not None and auth.handshake is not None:
                        try:
                            await self._upstream_handshake(up, req, auth, service, conn.request_id)
                        except (
                            BackendError,
                            UpstreamError,
                            HttpError,
                            TimeoutError,
                            ConnectionError,
                            asyncio.IncompleteReadError,
                            ssl.SSLError,
                        ) as e:
                            up.close()
                            reason = reason_of(e, getattr(e, "reason", None))  # ssl.SSLError: OpenSSL's reason
                            log.error(
                                "backend %s handshake with %s failed for %s: %s",
                                service.backend,
                                pool.upstream.name,
                                identity.user if identity else "-",
                                e,
                            )
                            status = e.status if isinstance(e, BackendError) else 502
                            return await self.answer(ex, Refusal(status, reason, b"upstream credentials refused\n"))
                    try:
                        sent = up.stream.loop.time()
                        up.stream.write(head)
                        if has_body:
                            await ex.body.copy_to(up.stream, max_body)  # answers 100-continue first
                            body_done = True
                        resp = await self._read_response_head(up, req.method)
                        metrics.UPSTREAM_LATENCY.observe(pool.upstream.name, up.stream.loop.time() - sent)
                    except ClientBodyError as e:
                        up.close()
                        return await self.answer(ex, Refusal.protocol(HttpError(e.status, e.reason)))
                    except TimeoutError:
                        up.close()
                        return await self._upstream_failed(
                            conn,
                            req,
                            client,
                            service,
                            UpstreamError("upstream-read-timeout", pool.upstream.name),
                            body_done,
                            status=504,
                        )
                    except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError) as e:
                        up.close()
                        if up.reused and attempt + 1 < attempts:
                            continue  # a pooled connection the upstream had closed; retry on a new one
                        return await self._upstream_failed(
                            conn,
                            req,
                            client,
                            service,
                            UpstreamError("upstream-connection-lost", f"{pool.upstream.name}: {e!r}"),
                            body_done,
                        )
                    except HttpError as e:
                        up.close()
                        return await self._upstream_failed(
                            conn, req, client, service, UpstreamError(e.reason, e.detail), body_done
                        )
                    metrics.count_request(service.name, resp.status)
                    return await self._deliver_on(req, resp, up, pool, client, response_headers, observe)
            except UpstreamError as e:  # no connection (the lease's acquire)
                return await self._upstream_failed(conn, req, client, service, e, body_done)
        raise AssertionError("unreachable: the last attempt answers")

    async def deliver(
        self,
        req: RequestHead,
        resp: ResponseHead,
        up: UpstreamConnection,
        pool: UpstreamPool,
        client: Stream,
        response_headers: list[tuple[bytes, bytes]],
        observe: Callable[[ResponseHead, bytes | None], bytes | None] | None = None,
    ) -> bool:
        """Send the response whose head was read from ``up`` (taken from ``pool``: the fast
        path's) to the client, then give ``up`` back to ``pool`` (or close it). Returns whether
        to keep the client connection."""
        async with pool.connection(up):
            return await self._deliver_on(req, resp, up, pool, client, response_headers, observe)

    async def _deliver_on(
        self,
        req: RequestHead,
        resp: ResponseHead,
        up: UpstreamConnection,
        pool: UpstreamPool,
        client: Stream,
        response_headers: list[tuple[bytes, bytes]],
        observe: Callable[[ResponseHead, bytes | None], bytes | None] | None = None,
    ) -> bool:
        """``deliver`` inside the caller's lease of ``up``, which gives it back (or closes it)."""
        up.requests += 1
        try:
            keep = await self._send_response(req, resp, up, client, response_headers, observe)
        except UpstreamError as e:
            up.close()
            log.warning("upstream %s broke off the response: %s", pool.upstream.name, e)
            return False
        if not resp.keep_alive:
            up.reusable = False
        return keep

    async def _upstream_handshake(
        self, up: UpstreamConnection, req: RequestHead, auth: BackendAuth, service: Service, request_id: bytes
    ) -> None:
        """Authenticate a new per-user upstream connection (NTLM: Type 1 → 401 Type 2 →
        Type 3) with bodiless GETs of the request's target, with the request's id; the request
        itself follows on the authenticated connection. Raises BackendError when the front end
        refuses."""
        assert auth.handshake is not None
        cb = None
        sslobj = up.stream.get_extra_info("ssl_object")
        if sslobj is not None:
            der = sslobj.getpeercert(binary_form=True)
            cb = tls_server_end_point(der) if der else None
        hs = auth.handshake(cb)
        value: bytes | None = hs.first()
        for _ in range(3):
            if value is None:
                return
            head = http1.serialize_head(
                b"GET " + req.target + b" HTTP/1.1",
                [
                    (b"Host", req.host),
                    (b"Authorization", value),
                    (b"Content-Length", b"0"),
                    (b"X-Forwarded-Proto", self.proto),
                    (b"X-Forwarded-Host", req.host),
                    (REQUEST_ID_HEADER, request_id),
                ],
            )
            up.stream.write(head)
            resp = await self._read_response_head(up, b"GET")
            await self._drain_response(up, resp)
            if not resp.keep_alive:
                raise BackendError(
                    "backend-handshake-closed",
                    f"{service.name}: the front end closed the connection during the handshake",
                )
            if resp.status != 401:
                return  # the connection is authenticated
            challenges = [v for k, v in resp.headers if k.lower() == b"www-authenticate"]
            if not any(c.split(b" ", 1)[0].lower() == hs.scheme.lower() and b" " in c.strip() for c in challenges):
                raise BackendError(
                    "backend-credentials-refused",
                    f"{service.name}: the front end refused the {hs.scheme.decode()} credentials",
                )
            value = hs.next(challenges)
        raise BackendError("backend-handshake-too-long", service.name)

    async def _drain_response(self, up: UpstreamConnection, resp: ResponseHead) -> None:
        timeout = self.gw.timeouts.upstream_read
        if resp.framing.kind == "length":
            if resp.framing.length > self.gw.limits.max_drain_bytes:
                raise BackendError("backend-handshake-body-too-large")
            await copy_exact(up.stream, DISCARD, resp.framing.length, timeout)
        elif resp.framing.kind == "chunked":
            await copy_chunked(up.stream, DISCARD, self.gw.limits.max_drain_bytes, timeout, reencode=False)
        elif resp.framing.kind != "none":
            raise BackendError("backend-handshake-close-delimited")

    async def _upstream_failed(
        self,
        conn: ClientConnection,
        req: RequestHead,
        client: Stream,
        service: Service,
        err: UpstreamError,
        body_done: bool,
        status: int = 502,
    ) -> bool:
        keep = self.upstream_failed_now(req, client, service, err, body_done, status)
        await _drain_quietly(client)
        return keep

    @staticmethod
    def upstream_failed_now(
        req: RequestHead, client: Stream, service: Service, err: UpstreamError, body_done: bool, status: int = 502
    ) -> bool:
        log.error(
            "upstream failure for %s %s (service %s): %s",
            req.method.decode(),
            service.name,
            service.upstream,
            err,
            extra={"reason": err.reason, "service": service.name},
        )
        metrics.count_request(service.name, status)
        keep = body_done and req.keep_alive
        Forwarder.answer_now(client, status, b"upstream unavailable\n", close=not keep, head_only=req.method == b"HEAD")
        return keep

    async def _read_response_head(self, up: UpstreamConnection, method: bytes) -> ResponseHead:
        """The final response head; TimeoutError after upstream_read for all of it."""
        rd = up.stream
        until = rd.loop.time() + self.gw.timeouts.upstream_read
        while True:
            try:
                raw = await rd.read_head(until)
            except asyncio.LimitOverrunError:
                raise HttpError(502, "upstream-header-too-large") from None
            except HttpError as e:  # a bare CR or LF: 502 now, not at upstream_read
                raise HttpError(502, "bad-upstream-response", e.reason) from None
            resp = http1.parse_response_head(raw, method, self.limits)
            if resp.status == 101:
                raise HttpError(502, "upstream-protocol-switch")
            if resp.status >= 200:
                return resp
            # 1xx interim responses (100, 103) are dropped: we already answered 100 ourselves.

    def response_head(
        self, req: RequestHead, resp: ResponseHead, extra_headers: list[tuple[bytes, bytes]]
    ) -> tuple[bytes, bool]:
        """The head we send the client, and whether to keep the client connection."""
        headers = list(extra_headers)
        client_11 = req.version >= (1, 1)
        keep = req.keep_alive and client_11
        kind = resp.framing.kind
        if kind == "none":
            cl = resp.get(b"content-length")
            if cl is not None and (req.method == b"HEAD" or resp.status == 304):
                headers.append((b"Content-Length", cl))
            elif resp.status not in (204, 304) and resp.status >= 200:
                headers.append((b"Content-Length", b"0"))
        elif kind == "length":
            headers.append((b"Content-Length", b"%d" % resp.framing.length))
        elif client_11:  # chunked or close-delimited: we (re-)chunk for HTTP/1.1 clients
            headers.append((b"Transfer-Encoding", b"chunked"))
        else:
            keep = False
        if not keep:
            headers.append((b"Connection", b"close"))
        status_line = b"HTTP/1.1 %d %b" % (resp.status, resp.reason or http1.REASONS.get(resp.status, b""))
        head = http1.serialize_forwarded(
            status_line, resp.headers, resp.connection_tokens, self._skip_response, headers
        )
        return head, keep

    async def _send_response(
        self,
        req: RequestHead,
        resp: ResponseHead,
        up: UpstreamConnection,
        client: Stream,
        extra_headers: list[tuple[bytes, bytes]],
        observe: Callable[[ResponseHead, bytes | None], bytes | None] | None = None,
    ) -> bool:
        """Stream the upstream's response to the client. Returns whether to keep the client
        connection. Raises UpstreamError when the upstream breaks off mid-body. ``observe``
        sees the head and, when it fits in one read, the body (the decide stage learns UCWA
        application ids from it), before anything is sent; when it returns bytes, those are
        sent instead (a whole answer of ours: the OAuth grant refuses a token answer it cannot
        read) and the client connection is closed."""
        head, keep = self.response_head(req, resp, extra_headers)
        client_11 = req.version >= (1, 1)
        kind = resp.framing.kind
        rd = up.stream
        timeout = self.gw.timeouts.upstream_read
        if observe is not None and not (kind == "length" and resp.framing.length <= COPY_CHUNK):
            instead = observe(resp, None)  # a body we do not hold in one piece
            observe = None
            if instead is not None:
                up.reusable = False  # its body is not read
                client.write(instead)
                await _drain_quietly(client)
                return False
        try:
            if kind == "none":
                client.write(head)
            elif kind == "length":
                n = resp.framing.length
                if n <= COPY_CHUNK:  # the common case: one write, usually no wait
                    data = rd.take_buffered(n)  # usually it came with the head
                    if data is None:
                        data = await rd.readexactly(n, rd.loop.time() + timeout)
                    if observe is not None:
                        instead = observe(resp, data)
                        observe = None
                        if instead is not None:
                            client.write(instead)
                            await _drain_quietly(client)
                            return False
                    client.write(head + data)
                else:
                    client.write(head)
                    await copy_exact(rd, client, n, timeout)
            elif kind == "chunked":
                client.write(head)
                await copy_chunked(rd, client, 1 << 62, timeout, reencode=client_11)
            else:  # close-delimited
                client.write(head)
                await copy_until_close(rd, client, timeout, reencode=client_11)
                up.reusable = False
        except (asyncio.IncompleteReadError, ConnectionResetError, TimeoutError) as e:
            raise UpstreamError("upstream-body-truncated", repr(e)) from None
        except HttpError as e:
            raise UpstreamError("bad-upstream-chunk", e.reason) from None
        await client.drain()
        return keep


async def _drain_quietly(client: Stream) -> None:
    """Wait for our own answer to be written; a client that left is not an error here."""
    try:
        await client.drain()
    except ConnectionError:
        pass
