"""One client connection's driver: request heads in, and the fast path that proxies the common
request inside protocol callbacks.

Why two paths. The request pipeline (gateway/pipeline.py, ``STAGES``: recognise → OAuth
intercept → device facts → authenticate → decide → backend credentials → forward) is a
coroutine, because authentication, the device gate and the backend mode may wait
for the id service, the directory or a KDC, and bodies of any size are streamed. Run for every
request, a coroutine costs task wake-ups, futures and frames that dominated the proxy's CPU per
request (bench/README.md). Most requests need none of that: no body, a service that is
anonymous or a request whose sender is already known, an idle pooled upstream connection, and a
small response with a Content-Length that arrives in one piece. "Already known" is what the
authenticator can answer without waiting (``authenticate_now``): an NTLM- or Kerberos-
authenticated connection, the Basic header this connection verified last, a Bearer token the
gateway issued; with the device gate, an allowed verdict cached on the connection
(``DeviceGate.decide_now``); and backend mode ``none`` (or a Bearer token, forwarded as it is). Those are handled here, in ``Stream`` callbacks, from the head arriving
to the response written — with the same parse, recognise, head-building and error rules as the
pipeline, by calling the same functions. Everything else is handed to the pipeline in a task
at the point where the fast path stops being sure:

- before anything is sent upstream (a body, an unknown service, a method the service refuses,
  the OAuth grant, credentials to verify or to challenge for, a device decision to ask for, a
  backend mode that prepares credentials, no idle upstream connection): ``Gateway.handle``
  runs the request from the top — the checks made here have no side effects;
- after the request went upstream, when the response is not a small complete one (chunked,
  close-delimited, large, or its body still on the way): ``Gateway.deliver`` streams it;
- when the pooled connection turns out to be dead before a response head arrived: the request
  (bodiless, so safe to repeat, as the pipeline does) is forwarded again by ``pipeline.send``.

One request at a time per connection: while one is in flight, further (pipelined) bytes only
accumulate in the buffer (with the stream's back-pressure) and are read when it is answered.

Timeouts are the pipeline's: ``header_read`` for the first head, ``idle`` between requests,
``upstream_read`` for the response head (then 504), each a deadline on the stream concerned.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import TYPE_CHECKING

from .. import metrics
from ..logs import REQUEST_ID_HEADER, begin_request, new_request_id
from ..protocols import http1
from ..protocols.http1 import HttpError, RequestHead
from ..protocols.sfb import Service, split_target
from . import pipeline
from .body import RequestBody
from .connection import ClientConnection, Identity
from .exchange import Exchange
from .stream import Stream
from .upstream import UpstreamConnection, UpstreamError, UpstreamPool

if TYPE_CHECKING:
    from .server import Gateway

log = logging.getLogger("ucgate.gateway")
access_log = logging.getLogger("ucgate.access")

_NO_DEADLINE = float("inf")
_RID = b"\r\n" + REQUEST_ID_HEADER + b": "  # after X-Forwarded-Host, as Gateway.request_head adds it
# A response body up to this size is written with its head in one write when it came with it.
SMALL_BODY = 64 * 1024


class ClientSession:
    """Drives one client ``Stream``: callback mode between requests and for fast requests, a
    task (``stream.task``) for requests that take the pipeline."""

    __slots__ = (
        "gw",
        "stream",
        "conn",
        "loop",
        # the fast request in flight (None when there is none), and its head as received
        "req",
        "up",
        "pool",
        "service",
        "path",
        "started",
        "head",
        # who sent it (None: an anonymous service), and its device when the device gate decided
        "identity",
        "device",
        # loop.time() when the fast request was written upstream (ucgate_upstream_response_seconds)
        "sent",
        # this connection's X-Forwarded-For/-Proto fields and the X-Forwarded-Host name, made once;
        # the identity header's line for the user last forwarded
        "forwarded",
        "ident_user",
        "ident_line",
        # bound methods, made once per connection instead of once per request
        "_on_client_data",
        "_on_upstream_data",
        "_on_upstream_deadline",
        "_on_upstream_lost",
    )

    def __init__(self, gw: Gateway, stream: Stream, conn: ClientConnection) -> None:
        self.gw = gw
        self.stream = stream
        self.conn = conn
        self.loop = stream.loop
        self.req: RequestHead | None = None
        self.head = b""
        self.forwarded: bytes | None = None
        self.ident_user: str | None = None
        self.ident_line = b""
        self.up: UpstreamConnection | None = None
        self.pool: UpstreamPool | None = None
        self.service: Service | None = None
        self.identity: Identity | None = None
        self.device: str | None = None
        self.path = ""
        self.started: float | None = None  # clock() at the request, when access logging is on
        self.sent = 0.0
        self._on_client_data = self.on_client_data
        self._on_upstream_data = self.on_upstream_data
        self._on_upstream_deadline = self.on_upstream_deadline
        self._on_upstream_lost = self.on_upstream_lost
        stream.on_deadline = self.on_client_deadline
        stream.on_lost = self.on_client_lost

    def start(self) -> None:
        """Wait for the first request head (``header_read``)."""
        s = self.stream
        if s.listen(self._on_client_data, self.loop.time() + self.gw.gw.timeouts.header_read):
            # what came with a PROXY header (gateway/preamble.py)
            self.on_client_data()

    # --- client side ------------------------------------------------------------------
    def on_client_data(self) -> None:
        """Data or EOF arrived between requests: take a complete head and serve it."""
        s = self.stream
        try:
            if self.conn.closed_reason is not None:
                return
            try:
                head = s.take_head()
            except asyncio.LimitOverrunError:
                self._refuse_now(HttpError(431, "header-too-large"))
                return
            except HttpError as e:  # a bare CR or LF: refused now, not at the header timeout
                self._refuse_now(e)
                return
            if head is None:
                if s.eof:
                    if s.peek().strip():
                        log.warning("client %s: closed mid-request head", self.conn.peer_host)
                    s.close()
                return
            # a request: no more callbacks or idle deadline until it is answered
            s.on_data = None
            s.set_deadline(_NO_DEADLINE)
            gw = self.gw
            simple = http1.common_request(head, gw.limits, gw.request_specials)
            if simple is not None and self._forward_fast(simple, head):
                return
            try:
                req = http1.parse_request_head(head, gw.limits)
            except HttpError as e:
                self._refuse_now(e)
                return
            if not self._forward_fast(req, head):
                self._run(gw.handle(self.conn, req, s))
        except Exception:  # noqa: BLE001 - never let one connection take the process (or the loop) down
            self._internal_error()

    def on_client_deadline(self) -> None:
        """No (complete) request head in time: 408 on a new connection, else just close."""
        conn = self.conn
        if conn.requests == 0:
            timeouts = self.gw.gw.timeouts
            log.info("client %s: no request head within %ss", conn.peer_host, timeouts.header_read)
            metrics.count_request(None, 408)
            self.gw.answer_now(self.stream, 408, b"request head not received in time\n", close=True)
        self.stream.close()

    def on_client_lost(self, exc: BaseException | None) -> None:
        self.gw.connections.discard(self.conn)
        if self.up is not None:  # the answer has nowhere to go: drop the upstream exchange
            self._release_upstream(close=True)
        # the bound methods kept in the slots refer to this session: a cycle that would keep
        # the session, its connection and stream (and the TLS object) until a cyclic GC
        self._on_client_data = self._on_upstream_data = None  # type: ignore[assignment]
        self._on_upstream_deadline = self._on_upstream_lost = None  # type: ignore[assignment]

    def _refuse_now(self, err: HttpError) -> None:
        """A protocol error before the pipeline: log, answer with its status and close."""
        self.conn.request_id = new_request_id()  # a request too, if a malformed one
        metrics.count_request(None, err.status)
        self.gw.log_rejected(self.conn, err)
        self.gw.answer_now(self.stream, err.status, f"{err.status} {err.reason}\n".encode(), close=True)
        self.stream.close()

    def _internal_error(self) -> None:
        log.exception("internal error on connection %d from %s", self.conn.id, self.conn.peer_host)
        if self.up is not None:
            self._release_upstream(close=True)
        self.stream.close()

    def _resume(self) -> None:
        """The request was answered and the connection stays: back to callback mode, with the
        idle timeout, and serve a pipelined head that may already be buffered."""
        s = self.stream
        if s.writing_paused:  # the client is not reading its answers: wait before the next
            self._run(self._drain_then_resume())
            return
        if s.listen(self._on_client_data, self.loop.time() + self.gw.gw.timeouts.idle):
            self.on_client_data()

    async def _drain_then_resume(self) -> bool:
        await self.stream.drain()
        return True

    # --- the pipeline, in a task ----------------------------------------------------------
    def _run(self, work) -> None:
        """Run ``work`` (a coroutine returning whether to keep the connection) as the stream's
        task, then resume callback mode or close."""
        self.stream.task = self.loop.create_task(self._task(work))

    async def _task(self, work) -> None:
        s = self.stream
        keep = False
        try:
            keep = await work
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, TimeoutError):
            pass
        except Exception:  # never let one connection take the process down
            log.exception("internal error on connection %d from %s", self.conn.id, self.conn.peer_host)
        finally:
            s.task = None
        if keep and self.conn.closed_reason is None and not s.is_closing():
            try:
                self._resume()
            except Exception:  # noqa: BLE001 - as in on_client_data: a 500 for this connection only
                self._internal_error()
        else:
            s.close()

    # --- the fast path --------------------------------------------------------------------
    def _forward_fast(self, req: RequestHead, head: bytes) -> bool:
        """Send ``req`` (parsed from ``head``) upstream from here if it needs nothing the
        pipeline waits for; False (nothing done) otherwise. Every check is
        the pipeline's (gateway/pipeline.py), in its order, made by the same functions."""
        simple = req.prefix is not None  # the common route (http1.common_request)
        if not simple and req.framing.kind != "none":
            return False
        gw = self.gw
        if not gw.fast_path:
            return False
        try:
            path, query = split_target(req.target.decode("ascii"))
        except (HttpError, UnicodeDecodeError):
            return False  # the pipeline answers it
        service = gw.service_map.recognise(path)
        if service is None or not service.enabled:
            return False
        if req.method not in service.methods or not req.host:  # 405, or HTTP/1.0 without Host
            return False
        pool = gw.pools.get(service.upstream)
        if pool is None:
            return False
        if gw.oauth is not None and gw.oauth.intercepts(service, req):
            return False
        conn = self.conn
        identity: Identity | None = None
        authz: bytes | None = None
        decided = False
        if not service.anonymous:
            # authenticate, decide: only what is known already (no side effects until committed)
            now = gw.authenticate_now
            if now is None:
                return False
            gate = gw.devices
            if gate is not None and gate.applies(service, req):
                if simple:
                    return False  # the device's facts need every field: parsed, then back here
                facts = gate.facts_for(conn, req, path, query, service, None)
                try:
                    identity = now(conn, req, service)
                    verdict = None if identity is None else gate.decide_now(conn, req, service, identity, facts)
                finally:
                    gate.done(req)
                if verdict is None or verdict.identity is None:
                    return False
                decided = True
            else:
                identity = now(conn, req, service)
                if identity is None:
                    return False
            authz = req.authorization if simple else req.get(b"authorization")
            # forward: a Bearer token goes on as it is; any backend mode but none prepares
            if identity.method != "bearer" and service.backend != "none":
                return False
        up = pool.take_idle()
        if up is None:
            return False  # connecting waits: the pipeline does it
        # committed: from here on this request is answered by this session
        conn.requests += 1
        gw.fast_requests += 1
        rid = conn.request_id = new_request_id()
        if identity is not None:  # the authenticate and decide stages' bookkeeping
            conn.principal = identity
            if authz is not None:  # credentials presented (not a request riding an NTLM connection)
                metrics.count_auth(identity.method, "allow", "ok")
            if decided:
                metrics.count_device(service.name, "allow")
                identity = verdict.identity  # type: ignore[union-attr]
                gw.adopt(conn, req, identity)  # type: ignore[arg-type]
        self.req, self.up, self.pool, self.service, self.path = req, up, pool, service, path
        self.identity = identity
        self.device = identity.device_id if decided else None  # type: ignore[union-attr]
        self.head = head
        self.started = gw.clock() if access_log.isEnabledFor(logging.INFO) else None
        us = up.stream
        us.on_data = self._on_upstream_data
        us.on_deadline = self._on_upstream_deadline
        us.on_lost = self._on_upstream_lost
        us.set_deadline(self.loop.time() + gw.gw.timeouts.upstream_read)
        bearer = identity is not None and identity.method == "bearer"
        prefix = req.prefix
        if (
            prefix is not None
        ):  # the common route: its head as sent, less Connection, plus what Gateway.request_head adds
            if self.forwarded is None:
                self.forwarded = b"X-Forwarded-For: %b\r\nX-Forwarded-Proto: %b\r\nX-Forwarded-Host: " % (
                    conn.peer_host.encode(),
                    gw.proto,
                )
            if identity is None:
                us.write(prefix + self.forwarded + req.host + _RID + rid + b"\r\n\r\n")
            else:  # Authorization dropped; the identity header, then a Bearer token's backend header
                if self.ident_user is not identity.user:
                    self.ident_user = identity.user
                    self.ident_line = b"\r\n" + gw.identity_header + b": " + identity.user.encode("utf-8")
                line = prefix if authz is None else req.prefix_authenticated
                assert line is not None  # set whenever the common route kept an Authorization
                us.write(
                    b"".join(
                        (
                            line,
                            self.forwarded,
                            req.host,
                            _RID,
                            rid,
                            self.ident_line,
                            b"\r\nAuthorization: " + authz if bearer and authz else b"",
                            b"\r\n\r\n",
                        )
                    )
                )
        else:
            us.write(
                gw.request_head(
                    conn,
                    req,
                    identity,
                    [(b"Authorization", authz)] if bearer and authz else None,
                    {
                        "service": service.name,
                        "user": identity.user if identity is not None else None,
                        "device": self.device,
                    },
                )
            )
        self.sent = self.loop.time()
        return True

    def on_upstream_data(self) -> None:
        try:
            self._upstream_data()
        except Exception:  # noqa: BLE001 - never let one connection take the process (or the loop) down
            self._internal_error()

    def _upstream_data(self) -> None:
        up, req = self.up, self.req
        assert up is not None and req is not None
        us = up.stream
        gw = self.gw
        while True:
            try:
                head = us.take_head()
            except asyncio.LimitOverrunError:
                self._upstream_failed(UpstreamError("upstream-header-too-large"))
                return
            except HttpError as e:  # a bare CR or LF: 502 now, not at upstream_read
                self._upstream_failed(UpstreamError("bad-upstream-response", e.reason))
                return
            if head is None:
                if us.eof:
                    self._upstream_gone()
                return
            simple = http1.common_response(head, req.method, gw.limits)
            if (
                simple is not None
                and simple.length is not None
                and simple.length <= SMALL_BODY
                and self._answer_simple(simple)
            ):
                return
            try:
                # the common route's head as it is (bigger body, or not buffered yet); else the full route
                resp = (
                    simple if simple is not None else http1.parse_response_head(head, req.method, gw.limits, full=True)
                )
            except HttpError as e:
                self._upstream_failed(UpstreamError(e.reason, e.detail))
                return
            if resp.status == 101:
                self._upstream_failed(UpstreamError("upstream-protocol-switch"))
                return
            if resp.status >= 200:
                break
            # 1xx interim responses (100, 103) are dropped, as in the pipeline
        framing = resp.framing
        data: bytes | None
        if framing.kind == "none":
            data = b""
        elif framing.kind == "length" and framing.length <= SMALL_BODY:
            data = us.take_buffered(framing.length)
        else:
            data = None
        pool, service = self.pool, self.service
        assert pool is not None and service is not None
        if data is None:  # a body to stream: the pipeline's _deliver does it in a task
            self._answered(pool, service, resp.status)
            self._run(self._deliver(req, resp, self._release_upstream(close=False), pool, service))
            return
        head_out, keep = gw.response_head(req, resp, [])
        self._answered(pool, service, resp.status)
        self._answer(resp.keep_alive, head_out + data if data else head_out, keep)

    def _answer_simple(self, resp: http1.ResponseHead) -> bool:
        """Send a response in the common shape (``http1.common_response``) whose body is
        buffered already; False (nothing done) when it is not."""
        up, req, length, prefix = self.up, self.req, resp.length, resp.prefix
        assert up is not None and req is not None and length is not None and prefix is not None
        data = up.stream.take_buffered(length)
        if data is None:
            return False
        keep = req.keep_alive and req.version >= (1, 1)  # as Gateway.response_head
        assert self.pool is not None
        self._answered(self.pool, self.service, resp.status)
        self._answer(resp.keep_alive, prefix + (b"\r\n" if keep else b"Connection: close\r\n\r\n") + data, keep)
        return True

    def _answer(self, upstream_keeps: bool, out: bytes, keep: bool) -> None:
        """The whole answer was read: give the upstream connection back to its pool, write
        ``out`` to the client, then wait for the next request or close (``keep``)."""
        req, pool, service = self.req, self.pool, self.service
        assert req is not None and pool is not None and service is not None
        up = self._release_upstream(close=False)
        up.requests += 1
        if not upstream_keeps:
            up.reusable = False
        pool.release(up)
        if self.started is not None:  # before the write: the line is there when the client has its answer
            self._log_access(req, service)
        self.stream.write(out)
        if keep and self.conn.closed_reason is None:
            self._resume()
        else:
            self.stream.close()

    def _answered(self, pool: UpstreamPool, service: Service | None, status: int) -> None:
        """The response head of the fast request arrived: its metrics."""
        metrics.UPSTREAM_LATENCY.observe(pool.upstream.name, self.loop.time() - self.sent)
        metrics.count_request(service.name if service else None, status)

    def _task_context(self, service: Service) -> None:
        """This task's log context (ucgate.logs), as ``pipeline.run`` sets it."""
        ctx = begin_request(self.conn.request_id, self.conn.peer_host)
        ctx["service"] = service.name
        if self.identity is not None:
            ctx["user"] = self.identity.user
        if self.device:
            ctx["device"] = self.device

    async def _deliver(self, req, resp, up, pool, service) -> bool:
        self._task_context(service)
        keep = await self.gw.deliver(req, resp, up, pool, self.stream, [])
        if self.started is not None:
            self._log_access(req, service)
        return keep

    def on_upstream_deadline(self) -> None:
        """No response head within ``upstream_read``: 504, as the pipeline answers."""
        assert self.pool is not None
        self._upstream_failed(UpstreamError("upstream-read-timeout", self.pool.upstream.name), status=504)

    def on_upstream_lost(self, exc: BaseException | None) -> None:
        if self.up is not None:
            self._upstream_gone()

    def _upstream_gone(self) -> None:
        """The pooled connection closed before a response head: forward the request again on
        another connection (the pipeline retries a bodiless request the same way)."""
        req, pool, service = self.req, self.pool, self.service
        assert req is not None and pool is not None and service is not None
        self._release_upstream(close=True)
        self._run(self._forward_again(req, pool, service, self.identity))

    async def _forward_again(
        self, req: RequestHead, pool: UpstreamPool, service: Service, identity: Identity | None
    ) -> bool:
        gw = self.gw
        self._task_context(service)
        if req.prefix is not None:  # the common route's head: the pipeline reads every field
            req = http1.parse_request_head(self.head, gw.limits)
        ex = Exchange(self.conn, req, self.stream, RequestBody(req, self.stream, gw.gw.timeouts.body_read))
        ex.path, ex.service, ex.pool, ex.identity = self.path, service, pool, identity
        ex.max_body = gw.max_body_of(service)
        keep = await pipeline.send(gw, ex)
        if self.started is not None:
            self._log_access(req, service)
        return keep

    def _upstream_failed(self, err: UpstreamError, status: int = 502) -> None:
        req, service = self.req, self.service
        assert req is not None and service is not None
        self._release_upstream(close=True)
        keep = self.gw.upstream_failed_now(req, self.stream, service, err, True, status)
        if keep and self.conn.closed_reason is None:
            self._resume()
        else:
            self.stream.close()

    def _release_upstream(self, *, close: bool) -> UpstreamConnection:
        """End the fast request's hold on its upstream connection (no more callbacks or
        deadline) and forget the request; ``close`` also closes the connection."""
        up = self.up
        assert up is not None
        us = up.stream
        us.on_data = us.on_deadline = us.on_lost = None
        us.set_deadline(_NO_DEADLINE)
        self.req = self.up = None
        if close:
            up.close()
        return up

    def _log_access(self, req: RequestHead, service: Service) -> None:
        conn = self.conn
        rid = conn.request_id.decode()
        access_log.info(
            "client=%s conn=%d request_id=%s method=%s path=%s service=%s user=%s ms=%.1f",
            conn.peer_host,
            conn.id,
            rid,
            req.method.decode(),
            self.path,
            service.name,
            self.identity.user if self.identity is not None else "-",
            (self.gw.clock() - self.started) * 1000,  # type: ignore[operator]
            extra={
                "request_id": rid,
                "client": conn.peer_host,
                "service": service.name,
                "user": self.identity.user if self.identity is not None else None,
                "device": self.device or None,
            },
        )
        self.started = None
