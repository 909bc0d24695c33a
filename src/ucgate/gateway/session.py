"""One client connection's driver: request heads in, the stages run inline in protocol
callbacks, and the upstream exchange of a request forwarded from there.

Why inline. The request pipeline (gateway/pipeline.py, ``STAGES``: recognise → OAuth
intercept → device facts → authenticate → decide → backend credentials → forward) may wait for
the id service, the directory or a KDC, and streams bodies of any size, so each stage has a
coroutine. Run for every request, a coroutine costs task wake-ups, futures and frames that
dominated the proxy's CPU per request (bench/README.md). Most requests need none of that, and
every stage also has a synchronous form (``Stage.now``) that answers without waiting or says
``WAIT``. This driver runs the chain inline (``pipeline.run_inline``) from the head arriving:

- every stage went on and the forward stage's ``now`` is this driver's :meth:`forward_now`:
  with no body, nothing to observe in the response and an idle pooled upstream connection, the
  request is written upstream here (``INLINE``) and the response is read in ``Stream`` callbacks;
- a stage answered ``WAIT``: a task goes on from that stage with its coroutine
  (``pipeline.resume``) — nothing runs twice;
- a stage refused: answered here (``Gateway.refuse_now``), or in a task when a body must be
  drained first (``pipeline.refuse``).

After an inline forward, the response goes back from here when it is small and complete (a
Content-Length body that arrived with its head); else ``Gateway.deliver`` streams it in a task.
When the pooled connection turns out to be dead before a response head arrived, the request
(bodiless, so safe to repeat, as the pipeline does) is forwarded again in a task.

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
from ..logs import REQUEST_ID_HEADER, new_request_id, request_context
from ..protocols import http1
from ..protocols.http1 import HttpError, RequestHead
from . import pipeline
from .body import RequestBody
from .connection import ClientConnection
from .exchange import INLINE, WAIT, Exchange, Refusal
from .stream import Stream
from .upstream import UpstreamConnection, UpstreamError

if TYPE_CHECKING:
    from .server import Gateway

log = logging.getLogger("ucgate.gateway")
access_log = logging.getLogger("ucgate.access")

_NO_DEADLINE = float("inf")
_RID = b"\r\n" + REQUEST_ID_HEADER + b": "  # after X-Forwarded-Host, as Gateway.request_head adds it
# A response body up to this size is written with its head in one write when it came with it.
SMALL_BODY = 64 * 1024


class ClientSession:
    """Drives one client ``Stream``: callback mode between requests and for requests that
    every stage answers inline, a task (``stream.task``) for those that wait."""

    __slots__ = (
        "gw",
        "stream",
        "conn",
        "loop",
        # the request forwarded inline and its upstream connection (None when there is none),
        # and the head of the request being served as received
        "ex",
        "up",
        "head",
        # loop.time() when the inline request was written upstream (ucgate_upstream_response_seconds)
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
        self.ex: Exchange | None = None
        self.up: UpstreamConnection | None = None
        self.head = b""
        self.sent = 0.0
        self.forwarded: bytes | None = None
        self.ident_user: str | None = None
        self.ident_line = b""
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
        """Data or EOF arrived between requests: take each complete head and serve it — in a
        loop, not by recursion, while requests are answered inline (pipelined refusals)."""
        s = self.stream
        try:
            while True:
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
                req = http1.common_request(head, gw.limits, gw.request_specials)
                if req is None:
                    try:
                        req = http1.parse_request_head(head, gw.limits)
                    except HttpError as e:
                        self._refuse_now(e)
                        return
                keep = self._serve(req, head)
                if keep is None:  # in flight (upstream, or in a task)
                    return
                # answered inline: the next request (buffered already: this loop), or close
                if not keep or self.conn.closed_reason is not None:
                    s.close()
                    return
                if not self._listen_next():
                    return  # the next head arrives through the callback
        except Exception:  # noqa: BLE001 - never let one connection take the process (or the loop) down
            self._internal_error()

    def _serve(self, req: RequestHead, head: bytes) -> bool | None:
        """Run ``req``'s stages inline, then go on as the first one that did not go on says.
        Returns whether to keep the connection when the request was answered here, None when
        it is in flight (written upstream from here, or handed to a task)."""
        gw = self.gw
        if not gw.fast_path:  # every request in a task (tests hold both paths to one result)
            self._run(gw.handle(self.conn, req, self.stream))
            return None
        # the request's log context is made when a line may be logged (Exchange.context: by
        # the stages that log, the refusals, a task going on from here), not for every request
        ex = pipeline.begin(gw, self.conn, req, self.stream, driver=self)
        self.head = head
        try:
            i, outcome = pipeline.run_inline(gw, ex)
        except BaseException:
            if ex.gate is not None:  # the device facts taken for this request
                ex.gate.done(req)
            raise
        if outcome is INLINE:
            return None
        if outcome is WAIT:
            self._run(pipeline.resume(gw, ex, i))
            return None
        assert isinstance(outcome, Refusal), outcome
        keep = gw.refuse_now(ex, outcome)
        if keep is None:  # a body to drain first
            self._run(pipeline.refuse(gw, ex, outcome))
            return None
        if ex.gate is not None:
            ex.gate.done(req)
        return keep

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
        ex = self.ex
        token = request_context.set(ex.context() if ex is not None else request_context.get())
        try:
            log.exception("internal error on connection %d from %s", self.conn.id, self.conn.peer_host)
        finally:
            request_context.reset(token)
        if self.up is not None:
            self._release_upstream(close=True)
        self.stream.close()

    def _after(self, keep: bool) -> None:
        """The request was answered: wait for the next one, or close."""
        s = self.stream
        if keep and self.conn.closed_reason is None:
            # as _resume and _listen_next, without their frames: every request comes here
            if s.writing_paused:
                self._run(self._drain_then_resume())
            elif s.listen(self._on_client_data, self.loop.time() + self.gw.gw.timeouts.idle):
                self.on_client_data()
        else:
            s.close()

    def _resume(self) -> None:
        """The request was answered and the connection stays: back to callback mode, with the
        idle timeout, and serve a pipelined head that may already be buffered."""
        if self._listen_next():
            self.on_client_data()

    def _listen_next(self) -> bool:
        """Wait for the next request head (the idle timeout); True when one may be buffered
        already (the caller serves it now). A client not reading its answers is waited for first."""
        s = self.stream
        if s.writing_paused:
            self._run(self._drain_then_resume())
            return False
        return s.listen(self._on_client_data, self.loop.time() + self.gw.gw.timeouts.idle)

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

    # --- the forward stage, inline --------------------------------------------------------
    def forward_now(self, ex: Exchange) -> object:
        """The forward stage's synchronous form (``pipeline.forward_now``): write the request
        upstream from here and answer INLINE, or WAIT (nothing done) when the coroutine must
        do it: a body (to stream, or read by a stage), a response to observe or add headers
        to, backend credentials of a per-user connection, no idle upstream connection."""
        req = ex.req
        if req.prefix is None and req.framing.kind != "none":
            return WAIT  # a body to stream
        body = ex.body_source  # (ex.body_data without the property's frame)
        if (body is not None and body.data is not None) or ex.observe is not None or ex.response_headers:
            return WAIT
        auth = ex.auth
        if auth is not None and (auth.pool_key is not None or auth.handshake is not None):
            return WAIT
        pool = ex.pool
        assert pool is not None  # set by the recognise stage
        up = pool.take_idle()
        if up is None:
            return WAIT  # connecting waits: the coroutine does it
        # committed: from here on this request is answered by this session
        gw = self.gw
        gw.fast_requests += 1
        if ex.gate is not None:
            ex.gate.done(req)
            ex.gate = None
        self.ex, self.up = ex, up
        conn, identity = ex.conn, ex.identity
        us = up.stream
        us.on_data = self._on_upstream_data
        us.on_deadline = self._on_upstream_deadline
        us.on_lost = self._on_upstream_lost
        us.set_deadline(self.loop.time() + gw.gw.timeouts.upstream_read)
        backend = auth.headers if auth is not None else None
        prefix = req.prefix
        if prefix is not None:  # the common route: its head as sent, less Connection, plus what request_head adds
            if self.forwarded is None:
                self.forwarded = b"X-Forwarded-For: %b\r\nX-Forwarded-Proto: %b\r\nX-Forwarded-Host: " % (
                    conn.peer_host.encode(),
                    gw.proto,
                )
            rid = conn.request_id
            if identity is None:
                us.write(prefix + self.forwarded + req.host + _RID + rid + b"\r\n\r\n")
            else:  # Authorization dropped; the identity header, then the backend's (a Bearer token)
                if self.ident_user is not identity.user:
                    self.ident_user = identity.user
                    self.ident_line = b"\r\n" + gw.identity_header + b": " + identity.user.encode("utf-8")
                line = prefix if req.authorization is None else req.prefix_authenticated
                assert line is not None  # set whenever the common route kept an Authorization
                extra = auth.lines() if auth is not None else b""
                us.write(b"".join((line, self.forwarded, req.host, _RID, rid, self.ident_line, extra, b"\r\n\r\n")))
        else:
            us.write(
                gw.request_head(
                    conn,
                    req,
                    identity,
                    backend,
                    {
                        "service": ex.service.name if ex.service is not None else None,
                        "user": identity.user if identity is not None else None,
                        "device": ex.device,
                    },
                )
            )
        self.sent = self.loop.time()
        return INLINE

    def on_upstream_data(self) -> None:
        # (the upstream connection's callbacks run in the context of whoever opened it, maybe
        # another connection's task: the lines logged from here — _upstream_failed,
        # _internal_error — set this request's context themselves; tasks set theirs)
        try:
            self._upstream_data()
        except Exception:  # noqa: BLE001 - never let one connection take the process (or the loop) down
            self._internal_error()

    def _upstream_data(self) -> None:
        up, ex = self.up, self.ex
        assert up is not None and ex is not None
        req = ex.req
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
        if data is None:  # a body to stream: the pipeline's deliver does it in a task
            self._answered(resp.status)
            self._run(self._deliver(ex, resp, self._release_upstream(close=False)))
            return
        head_out, keep = gw.response_head(req, resp, [])
        self._answered(resp.status)
        self._answer(resp.keep_alive, head_out + data if data else head_out, keep)

    def _answer_simple(self, resp: http1.ResponseHead) -> bool:
        """Send a response in the common shape (``http1.common_response``) whose body is
        buffered already; False (nothing done) when it is not."""
        up, ex, length, prefix = self.up, self.ex, resp.length, resp.prefix
        assert up is not None and ex is not None and length is not None and prefix is not None
        data = up.stream.take_buffered(length)
        if data is None:
            return False
        req = ex.req
        keep = req.keep_alive and req.version >= (1, 1)  # as Gateway.response_head
        self._answered(resp.status)
        self._answer(resp.keep_alive, prefix + (b"\r\n" if keep else b"Connection: close\r\n\r\n") + data, keep)
        return True

    def _answer(self, upstream_keeps: bool, out: bytes, keep: bool) -> None:
        """The whole answer was read: give the upstream connection back to its pool, write
        ``out`` to the client, then wait for the next request or close (``keep``)."""
        ex = self.ex
        assert ex is not None and ex.pool is not None
        up = self._release_upstream(close=False)
        up.requests += 1
        if not upstream_keeps:
            up.reusable = False
        ex.pool.release(up)
        if ex.started is not None:  # before the write: the line is there when the client has its answer
            pipeline.log_access(self.gw, ex)
        self.stream.write(out)
        self._after(keep)

    def _answered(self, status: int) -> None:
        """The response head of the inline request arrived: its metrics."""
        ex = self.ex
        assert ex is not None and ex.pool is not None
        metrics.UPSTREAM_LATENCY.observe(ex.pool.upstream.name, self.loop.time() - self.sent)
        metrics.count_request(ex.service.name if ex.service else None, status)

    async def _deliver(self, ex: Exchange, resp: http1.ResponseHead, up: UpstreamConnection) -> bool:
        pipeline.task_context(ex)
        assert ex.pool is not None
        keep = await self.gw.deliver(ex.req, resp, up, ex.pool, self.stream, [])
        pipeline.log_access(self.gw, ex)
        return keep

    def on_upstream_deadline(self) -> None:
        """No response head within ``upstream_read``: 504, as the pipeline answers."""
        ex = self.ex
        assert ex is not None and ex.pool is not None
        token = request_context.set(ex.context())
        try:
            self._upstream_failed(UpstreamError("upstream-read-timeout", ex.pool.upstream.name), status=504)
        finally:
            request_context.reset(token)

    def on_upstream_lost(self, exc: BaseException | None) -> None:
        if self.up is not None:
            token = request_context.set(self.ex.context() if self.ex is not None else None)
            try:
                self._upstream_gone()
            finally:
                request_context.reset(token)

    def _upstream_gone(self) -> None:
        """The pooled connection closed before a response head: forward the request again on
        another connection (the pipeline retries a bodiless request the same way)."""
        ex = self.ex
        assert ex is not None
        self._release_upstream(close=True)
        self._run(self._forward_again(ex))

    async def _forward_again(self, ex: Exchange) -> bool:
        gw = self.gw
        pipeline.task_context(ex)
        if ex.req.prefix is not None:  # the common route's head: the pipeline reads every field
            req = ex.req = http1.parse_request_head(self.head, gw.limits)
            ex.body = RequestBody(req, self.stream, gw.gw.timeouts.body_read)
        keep = await gw.forward(ex)  # the earlier stages (backend credentials included) ran inline
        pipeline.log_access(gw, ex)
        return keep

    def _upstream_failed(self, err: UpstreamError, status: int = 502) -> None:
        ex = self.ex
        assert ex is not None and ex.service is not None
        self._release_upstream(close=True)
        token = request_context.set(ex.context())  # the error line is this request's
        try:
            keep = self.gw.upstream_failed_now(ex.req, self.stream, ex.service, err, True, status)
        finally:
            request_context.reset(token)
        self._after(keep)

    def _release_upstream(self, *, close: bool) -> UpstreamConnection:
        """End the inline request's hold on its upstream connection (no more callbacks or
        deadline) and forget the request; ``close`` also closes the connection."""
        up = self.up
        assert up is not None
        us = up.stream
        us.on_data = us.on_deadline = us.on_lost = None
        us.set_deadline(_NO_DEADLINE)
        self.up = self.ex = None
        if close:
            up.close()
        return up
