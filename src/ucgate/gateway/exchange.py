"""What travels through the request pipeline (gateway/pipeline.py): one ``Exchange`` per
request, and the ``Refusal`` a stage answers with instead of going on.

Plain objects with slots and no behaviour of their own beyond their constructors, so that the
stages can be tested without sockets (tests/gateway/test_pipeline.py) and the gateway answers
every refusal in one place (``Gateway.answer``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from ..protocols.http1 import HttpError, RequestHead, ResponseHead
from ..protocols.sfb import Service
from .body import ClientBodyError, RequestBody
from .connection import ClientConnection, Identity

if TYPE_CHECKING:
    from ..protocols.devices import DeviceFacts
    from .backend import BackendAuth
    from .devices import DeviceGate
    from .stream import Stream
    from .upstream import UpstreamPool


class _Sentinel:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


# A stage's synchronous form (``Stage.now``, gateway/pipeline.py) answers WAIT when it cannot
# decide without waiting (the id service, a KDC, a body to read, a connection to open); it has
# then done nothing, and the stage's coroutine (``Stage.run``) takes over from there.
WAIT = _Sentinel("WAIT")
# The forward stage's synchronous form answers INLINE when the request went upstream from the
# protocol callbacks (gateway/session.py): the connection's driver answers it from there.
INLINE = _Sentinel("INLINE")


class Driver(Protocol):
    """What drives a connection from protocol callbacks (gateway/session.py's ClientSession):
    the forward stage's synchronous form sends the request from there."""

    def forward_now(self, ex: Exchange) -> object: ...


class Refusal:
    """A stage's answer instead of forwarding: ``status``, the ``reason`` logged and counted,
    the ``body`` and ``headers`` sent, and whether to ``close`` the connection. ``error``: a
    protocol error (malformed or too large), logged as rejected and always closed, its body
    the status and reason."""

    __slots__ = ("status", "reason", "body", "headers", "close", "error")

    def __init__(
        self,
        status: int,
        reason: str,
        body: bytes = b"",
        headers: list[tuple[bytes, bytes]] | None = None,
        *,
        close: bool = False,
        error: HttpError | None = None,
    ) -> None:
        self.status = status
        self.reason = reason
        self.body = body
        self.headers = headers if headers is not None else []
        self.close = close
        self.error = error

    @classmethod
    def protocol(cls, err: HttpError) -> Refusal:
        return cls(err.status, err.reason, close=True, error=err)

    def __repr__(self) -> str:
        return f"Refusal({self.status}, {self.reason!r}{', close' if self.close else ''})"


class Exchange:
    """One request on its way through the stages: the connection and its stream (``client``),
    the parsed head, and what each stage learns (the service and its pool, the device facts,
    the identity, the backend credentials, the headers to add to the response)."""

    __slots__ = (
        "conn",
        "req",
        "client",
        "path",
        "query",
        "service",
        "pool",
        "max_body",
        "gate",
        "facts",
        "body_source",
        "body_timeout",
        "identity",
        "response_headers",
        "observe",
        "auth",
        "use_backend",
        "ctx",
        "started",
        "driver",
        "device",
    )

    def __init__(
        self,
        conn: ClientConnection,
        req: RequestHead,
        client: Stream,
        body_timeout: float,
        body: RequestBody | None = None,
        ctx: dict | None = None,
        started: float | None = None,
        driver: Driver | None = None,
    ) -> None:
        self.conn = conn
        self.req = req
        self.client = client
        self.path: str | None = None
        self.query: str | None = None
        self.service: Service | None = None
        self.pool: UpstreamPool | None = None
        self.max_body = 0
        self.gate: DeviceGate | None = None  # the one that applies, once it has the facts
        self.facts: DeviceFacts | None = None
        # the body source (gateway/body.py) once made, else None (``body`` makes it on first
        # use: most requests have none): read whole by a stage that needs it before forwarding
        # (the OAuth form, the device facts), else copied upstream as it comes
        self.body_source = body
        self.body_timeout = body_timeout  # each read of it waits at most this
        self.identity: Identity | None = None
        self.response_headers: list[tuple[bytes, bytes]] = []
        # sees the response head (and a small body) before it is sent (gateway.devices, oauth)
        self.observe: Callable[[ResponseHead, bytes | None], bytes | None] | None = None
        self.auth: BackendAuth | None = None
        self.use_backend = True
        self.ctx = ctx  # this request's log context (ucgate.logs)
        self.started = started  # clock() at the start when the access log is on, else None
        # the connection's callback driver while the stages run inline (``Stage.now``), else None
        self.driver = driver
        self.device: str | None = None  # the device the decide stage named (its log field)

    @property
    def body(self) -> RequestBody:
        """The request's body source (gateway/body.py), made on first use."""
        body = self.body_source
        if body is None:
            body = self.body_source = RequestBody(self.req, self.client, self.body_timeout)
        return body

    @body.setter
    def body(self, body: RequestBody) -> None:
        self.body_source = body

    @property
    def body_data(self) -> bytes | None:
        """``body.data`` (the body a stage read whole, or its replacement), without making the
        body source when nobody asked for it."""
        body = self.body_source
        return None if body is None else body.data

    @property
    def request_id(self) -> bytes:
        return self.conn.request_id

    def context(self) -> dict:
        """This exchange's log context (``ctx``), made from what the stages learnt when it has
        none yet (the inline path makes it only when a line may be logged)."""
        ctx = self.ctx
        if ctx is None:
            ctx = self.ctx = self.log_fields()
        return ctx

    def log_fields(self) -> dict[str, str]:
        """The request context of this exchange's log lines (ucgate.logs): its ``ctx`` (what
        the stages filled in), or the same made from what they learnt."""
        if self.ctx is not None:
            return self.ctx
        conn = self.conn
        fields = {"request_id": conn.request_id.decode(), "client": conn.peer_host}
        if self.service is not None:
            fields["service"] = self.service.name
        if self.identity is not None:
            fields["user"] = self.identity.user
        if self.device is not None:
            fields["device"] = self.device
        return fields


__all__ = ["INLINE", "WAIT", "ClientBodyError", "Driver", "Exchange", "Refusal", "RequestBody"]
