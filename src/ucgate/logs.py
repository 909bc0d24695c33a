"""Log output: today's text lines, or one JSON object per line (``[log] format = "json"``), and
the request context (request id, client address, service, user, device, reason) that goes with
a request's log lines.

Every request the gateway handles gets a request id (:func:`new_request_id`: 64 random bits as
16 hex digits). It is in the gateway's log lines for that request and is sent to the front end
as ``X-Ucgate-Request-Id`` (a client's own field of that name is dropped, never forwarded).

Where the fields come from, for each record: the record's own attributes (``extra={...}`` at the
call site), else the request context of the task that logs (:data:`request_context`, set by the
gateway's pipeline for the request it runs; tasks and worker threads started from it inherit it).
"""

from __future__ import annotations

import contextvars
import datetime as dt
import json
import logging
import random
import sys
from typing import Any

# the context fields of a JSON line, in order
FIELDS = ("request_id", "client", "service", "user", "device", "reason")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
REQUEST_ID_HEADER = b"X-Ucgate-Request-Id"

# the request being handled by this task: a dict of FIELDS (mutable, so later stages fill it in)
request_context: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("ucgate_request", default=None)

_rng = random.Random()  # seeded from os.urandom; a correlation id, not a secret


def new_request_id() -> bytes:
    """16 lower-case hex digits (64 random bits), as bytes (it goes into a header)."""
    return b"%016x" % _rng.getrandbits(64)


def begin_request(request_id: bytes, client: str) -> dict[str, Any]:
    """Set this task's request context; returns it for later stages to fill in."""
    ctx: dict[str, Any] = {"request_id": request_id.decode("ascii"), "client": client}
    request_context.set(ctx)
    return ctx


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, and the request
    context fields that are known; ``exception`` with a traceback when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        ctx = request_context.get()
        own = getattr(record, "request_id", None)
        if ctx is not None and own is not None and ctx.get("request_id") != own:
            ctx = None  # the line is about another request than the task's (a pipelined one)
        for name in FIELDS:
            value = getattr(record, name, None)
            if value is None and ctx is not None:
                value = ctx.get(name)
            if value is not None:
                obj[name] = value if isinstance(value, (str, int, float, bool)) else str(value)
        if record.exc_info:
            obj["exception"] = self.formatException(record.exc_info)
        elif record.stack_info:
            obj["stack"] = self.formatStack(record.stack_info)
        return json.dumps(obj, ensure_ascii=False)


def setup_logging(level: str, fmt: str = "text") -> None:
    """Log to stderr at ``level`` in ``fmt`` ("text" or "json"); called again (a reload), it
    replaces the handler it installed before."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_ucgate", False):
            root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler._ucgate = True  # type: ignore[attr-defined]
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))
    logging.getLogger("alembic").setLevel(logging.WARNING)
