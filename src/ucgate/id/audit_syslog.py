"""Audit events to a syslog receiver (a SIEM): RFC 5424 messages over TCP with octet-counting
framing (RFC 6587 section 3.4.1), optionally inside TLS (RFC 5425).

Delivery never blocks a sign-in: :meth:`SyslogSink.submit` only puts the event on a bounded
queue (``queue_size``) and a background thread formats and sends it. While the receiver is
unreachable the thread keeps the event it holds and reconnects with a backoff (1 s doubling to
30 s); once the queue is full, new events are **dropped and counted** (:attr:`SyslogSink.dropped`,
a plain ``int`` that metrics can read) with a warning in the log (at most one every 10 s). The
store's audit table and the JSON-lines file still have every event: syslog is a copy for the
SIEM, not the record of truth.

A message::

    <86>1 2025-03-01T09:00:01.123456Z gw1 ucgate 4242 sign-in - {"schema_version":1,"id":17,...}

PRI is ``facility * 8 + severity`` (severity: warning for deny, error and unavailable, notice for
quarantine and challenge, info otherwise), MSGID is the event's action, there is no structured
data (``-``) and MSG is the event as JSON, the object ``docs/audit-event.schema.json`` describes
(the same line as the JSON-lines file).

TCP gives no acknowledgement: an event sent just before the receiver goes away can be lost
without an error (RFC 6587 section 3.4 and rsyslog's own warning). The thread checks, before
each send, whether the receiver closed the connection (a readable socket that reads EOF), which
catches a restarted receiver; the ``id`` field lets the SIEM spot a gap.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import queue
import select
import socket
import ssl
import threading
import time
from typing import Any

from ..config.syslog import FACILITIES, SyslogConfig, tls_context

log = logging.getLogger("ucgate.audit.syslog")

__all__ = ["FACILITIES", "SyslogConfig", "SyslogSink", "format_message", "frame", "open_sink", "tls_context"]

WARNING, NOTICE, INFO = 4, 5, 6
_SEVERITY = {"deny": WARNING, "error": WARNING, "unavailable": WARNING, "quarantine": NOTICE, "challenge": NOTICE}
BACKOFF_FIRST, BACKOFF_MAX = 1.0, 30.0
DROP_LOG_INTERVAL = 10.0  # seconds between two "dropped" warnings


def _printable(value: str, limit: int) -> str:
    """RFC 5424 header fields are PRINTUSASCII (33..126), non-empty; '-' when nothing is left."""
    out = "".join(c for c in value if 33 <= ord(c) <= 126)[:limit]
    return out or "-"


def _timestamp(at: Any) -> str:
    try:
        t = dt.datetime.fromisoformat(str(at))
    except ValueError:
        return "-"
    if t.tzinfo is None:
        return "-"
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def format_message(event: dict[str, Any], *, facility: int, hostname: str, app_name: str, procid: int | str) -> bytes:
    """One RFC 5424 SYSLOG-MSG (without framing) for an audit event (``audit.to_json``)."""
    severity = _SEVERITY.get(str(event.get("result")), INFO)
    header = " ".join(
        (
            f"<{facility * 8 + severity}>1",
            _timestamp(event.get("at")),
            _printable(hostname, 255),
            _printable(app_name, 48),
            _printable(str(procid), 128),
            _printable(str(event.get("action") or "-"), 32),
            "-",
        )
    )
    body = json.dumps(event, ensure_ascii=False, separators=(",", ":"), default=str)
    return f"{header} {body}".encode()


def frame(message: bytes) -> bytes:
    """RFC 6587 octet counting: ``MSG-LEN SP SYSLOG-MSG``."""
    return b"%d %s" % (len(message), message)


class SyslogSink:
    """A background sender of audit events to one syslog receiver (see the module docstring).

    Attributes (plain values, read them from any thread): ``dropped`` — events not delivered
    because the queue was full or the sink was closed before it could send them; ``sent`` —
    events written to a connection; ``connected`` — a connection is open now.
    """

    def __init__(self, cfg: SyslogConfig) -> None:
        self.cfg = cfg
        self.dropped = 0
        self.sent = 0
        self.connected = False
        self._facility = FACILITIES[cfg.facility]
        self._hostname = cfg.hostname or socket.gethostname()
        self._procid = os.getpid()
        self._ctx = tls_context(cfg) if cfg.tls else None
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=cfg.queue_size)
        self._lock = threading.Lock()
        self._closing = threading.Event()  # deliver what is queued, then stop
        self._stop = threading.Event()  # stop now
        self._sock: socket.socket | None = None
        self._pending: bytes | None = None  # the framed event being sent
        self._left_counted = False
        self._last_drop_log = -DROP_LOG_INTERVAL
        self._thread = threading.Thread(target=self._run, name="ucgate-audit-syslog", daemon=True)
        self._thread.start()

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    @property
    def target(self) -> str:
        return f"{'tls' if self.cfg.tls else 'tcp'}://{self.cfg.host}:{self.cfg.port}"

    def submit(self, event: dict[str, Any]) -> bool:
        """Queue one event; never blocks. False (and counted in ``dropped``) when it is full."""
        if self._closing.is_set():
            self._drop(1, "the audit log is closing")
            return False
        try:
            self._queue.put_nowait(event)
            return True
        except queue.Full:
            self._drop(1, f"the queue is full ({self.cfg.queue_size} events)")
            return False

    def _drop(self, n: int, why: str) -> None:
        with self._lock:
            self.dropped += n
            total = self.dropped
            now = time.monotonic()
            say = now - self._last_drop_log >= DROP_LOG_INTERVAL
            if say:
                self._last_drop_log = now
        if say:
            log.warning(
                "audit syslog %s: %s: %d event(s) dropped so far (the store and the JSON-lines file still have them)",
                self.target,
                why,
                total,
            )

    # --- the sender thread --------------------------------------------------------------------
    def _connect(self) -> socket.socket:
        sock = socket.create_connection((self.cfg.host, self.cfg.port), timeout=self.cfg.timeout)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            if self._ctx is not None:
                sock = self._ctx.wrap_socket(sock, server_hostname=self.cfg.server_name or self.cfg.host)
        except BaseException:
            sock.close()
            raise
        return sock

    def _peer_closed(self, sock: socket.socket) -> bool:
        """The receiver closed the connection (or sent something we do not expect)."""
        try:
            readable, _, _ = select.select([sock], [], [], 0)
            if not readable:
                return False
            if isinstance(sock, ssl.SSLSocket):
                sock.setblocking(False)
                try:
                    data = sock.recv(1)
                except ssl.SSLWantReadError:
                    return False  # a TLS record without application data (a ticket, say)
                finally:
                    sock.setblocking(True)
                    sock.settimeout(self.cfg.timeout)
            else:
                data = sock.recv(1, socket.MSG_DONTWAIT)
            return data == b""  # syslog receivers send nothing; EOF means gone
        except (OSError, ValueError):
            return True

    def _close_sock(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
        self._sock = None
        self.connected = False

    def _run(self) -> None:
        self._pending = pending = None
        backoff, next_try, failing = BACKOFF_FIRST, 0.0, False
        while not self._stop.is_set():
            if pending is None:
                try:
                    event = self._queue.get(timeout=0.2)
                except queue.Empty:
                    if self._closing.is_set():
                        break
                    continue
                try:
                    self._pending = pending = frame(
                        format_message(
                            event,
                            facility=self._facility,
                            hostname=self._hostname,
                            app_name=self.cfg.app_name,
                            procid=self._procid,
                        )
                    )
                except Exception:
                    log.exception("audit syslog: cannot format an event; dropped")
                    self._drop(1, "an event could not be formatted")
                    continue
            if self._sock is not None and self._peer_closed(self._sock):
                self._close_sock()
            if self._sock is None:
                wait = next_try - time.monotonic()
                if wait > 0:
                    if self._closing.is_set():
                        break  # closing while the receiver is away: do not wait for it
                    self._stop.wait(wait)
                    continue
                try:
                    self._sock = self._connect()
                except (OSError, ssl.SSLError) as e:
                    if not failing:
                        log.error(
                            "audit syslog %s: cannot connect (%s: %s); events wait in the queue "
                            "and are sent on reconnection",
                            self.target,
                            type(e).__name__,
                            e,
                        )
                    failing = True
                    next_try = time.monotonic() + backoff
                    backoff = min(backoff * 2, BACKOFF_MAX)
                    if self._closing.is_set():
                        break
                    continue
                self.connected = True
                if failing:
                    log.warning("audit syslog %s: connected again", self.target)
                failing, backoff = False, BACKOFF_FIRST
            try:
                self._sock.sendall(pending)
            except (OSError, ssl.SSLError) as e:
                log.warning("audit syslog %s: send failed (%s); reconnecting", self.target, type(e).__name__)
                self._close_sock()  # the event is sent again on the next connection
                continue
            self.sent += 1
            self._pending = pending = None
        self._count_left()
        self._close_sock()

    def _count_left(self) -> None:
        with self._lock:
            if self._left_counted:
                return
            self._left_counted = True
            left = self._queue.qsize() + (self._pending is not None)
        if left:
            self._drop(left, "closed before they could be sent")

    def close(self, timeout: float = 2.0) -> None:
        """Send what is queued (for at most ``timeout`` seconds), then stop; a sender still
        blocked on the receiver after that is left behind (a daemon thread) and what it still
        holds is counted as dropped."""
        self._closing.set()
        self._thread.join(timeout)
        self._stop.set()
        self._thread.join(0.5)
        if self._thread.is_alive():
            self._count_left()


def open_sink(cfg: SyslogConfig | None) -> SyslogSink | None:
    return SyslogSink(cfg) if cfg is not None else None
