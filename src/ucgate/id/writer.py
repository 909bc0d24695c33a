"""The sign-in writer: audit events and ASP "last used" times of sign-ins, group-committed.

A sign-in used to make two durable commits of its own after the check (the audit row, the
ASP's last use), from whichever worker thread ran it, racing for SQLite's writer lock. Now the
sign-in hands both to this writer and answers; one thread commits everything that arrived
within :data:`MAX_DELAY` in **one transaction** (group commit, as databases do with their WAL).

Guarantees:

* **Bounded loss.** A sign-in's audit event is committed at most ``max_delay`` (50 ms) plus
  two commits after the sign-in was answered (the batch being committed when it arrived, then
  its own): the queue holds at most one batch (``max_queue`` defaults to ``max_batch``), so a
  backlog never builds up behind the writer — sign-ins wait for room instead. ``kill -9`` loses
  at most that window (measured in ``tests/id/test_writer.py``). A clean shutdown
  (:meth:`close`) commits everything first. :meth:`flush` waits until everything submitted so
  far is committed (``AuditLog.tail`` calls it, so a process reads its own writes).
* **Back-pressure, not memory.** The queue holds at most ``max_queue`` items; when it is full a
  sign-in waits up to ``max_wait`` for room, then :class:`WriterBusy` is raised, which the
  credential service answers as ``store-unavailable`` (503 + Retry-After).
* **Store errors are retried, never dropped.** A failed batch is logged and retried with a
  growing pause (while the queue fills and back-pressure begins); it is only written to the
  JSON-lines file and syslog after the table has it (with its id).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from ..errors import UcgateError
from ..store import AuditRecord
from .audit import with_id

log = logging.getLogger("ucgate.id.writer")

MAX_DELAY = 0.05  # seconds an item may wait for its batch's commit
MAX_BATCH = 512
MAX_WAIT = 2.0  # how long a sign-in waits for room in a full queue
RETRY_MIN, RETRY_MAX = 0.05, 2.0


class WriterBusy(UcgateError):
    """The queue stayed full for ``max_wait``: the store cannot keep up (or is down)."""

    def __init__(self, detail: str = "") -> None:
        super().__init__("store-unavailable", detail, message=detail or "store-unavailable")


class SignInWriter:
    def __init__(
        self,
        repo: Any,
        *,
        max_delay: float = MAX_DELAY,
        max_batch: int = MAX_BATCH,
        max_queue: int | None = None,  # default max_batch: never more than one batch behind
        max_wait: float = MAX_WAIT,
    ) -> None:
        self.repo = repo
        self.max_delay, self.max_batch, self.max_wait = max_delay, max_batch, max_wait
        self._q: queue.Queue[tuple[str, Any, Any] | None] = queue.Queue(max_batch if max_queue is None else max_queue)
        self._submitted = 0
        self._committed = 0
        self._cv = threading.Condition()
        self._closed = False
        # ends the batch window early: a full batch, or close (see _gather)
        self._wake = threading.Event()
        self.batches = 0  # committed transactions (for the tests and metrics)
        self.failures = 0  # failed attempts to commit a batch
        self._thread = threading.Thread(target=self._run, name="ucgate-signin-writer", daemon=True)
        self._thread.start()

    # --- producers ------------------------------------------------------------------------
    def _put(self, item: tuple[str, Any, Any], wait: bool = True) -> None:
        if self._closed:
            raise WriterBusy("the writer is closed")
        try:
            if wait:
                self._q.put(item, timeout=self.max_wait)
            else:
                self._q.put_nowait(item)
        except queue.Full:
            raise WriterBusy(f"the sign-in writer's queue stayed full for {self.max_wait:.0f} s") from None
        with self._cv:
            self._submitted += 1
        if self._q.qsize() >= self.max_batch:
            self._wake.set()  # a full batch: commit it now rather than at the window's end

    def audit(
        self,
        event: AuditRecord,
        then: Callable[[AuditRecord], Any],
        used: tuple[str, datetime] | None = None,
        *,
        wait: bool = True,
    ) -> None:
        """Store ``event``; ``then(event with its id)`` after the commit (file, syslog). ``used``:
        an ASP's last use ``(asp_id, at)`` stored with it — a sign-in's two rows in one hand-off
        (one queue item: one lock round and wake-up fewer than :meth:`used` after this).
        ``wait=False`` (the event loop's thread): :class:`WriterBusy` at once when the queue is
        full, instead of waiting for room."""
        self._put(("audit", event, then) if used is None else ("audit+used", event, (then, used)), wait)

    def has_room(self) -> bool:
        """Whether an item can be queued now without waiting (a hint: threads may fill it)."""
        return not self._closed and not self._q.full()

    def used(self, asp_id: str, at: datetime) -> None:
        self._put(("used", asp_id, at))

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything submitted before this call is committed."""
        with self._cv:
            target = self._submitted
            return self._cv.wait_for(lambda: self._committed >= target, timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Commit what is queued, then stop."""
        if self._closed:
            return
        self._closed = True
        self._q.put(None)
        self._wake.set()
        self._thread.join(timeout)

    # --- the thread -----------------------------------------------------------------------
    def _gather(self) -> tuple[list[tuple[str, Any, Any]], bool]:
        first = self._q.get()
        if first is None:
            return [], True
        batch = [first]
        stop = False
        if self.max_batch > 1:
            # The window: sleep through it, then take what arrived. (A get() per item would wake
            # this thread for every sign-in — a futex and a GIL hand-off each, at ~1,000/s.)
            if self._q.qsize() < self.max_batch - 1:
                self._wake.wait(self.max_delay)
            self._wake.clear()
        while len(batch) < self.max_batch:
            try:
                item = self._q.get_nowait()
            except queue.Empty:
                break
            if item is None:
                stop = True
                break
            batch.append(item)
        return batch, stop

    def _commit(self, batch: list[tuple[str, Any, Any]]) -> None:
        events: list[tuple[AuditRecord, Any]] = []
        used: list[tuple[str, datetime]] = []
        for kind, a, b in batch:
            if kind == "audit":
                events.append((a, b))
            elif kind == "used":
                used.append((a, b))
            else:  # "audit+used": a sign-in's event and its ASP's last use
                events.append((a, b[0]))
                used.append(b[1])
        pause = RETRY_MIN
        while True:
            try:
                ids = self.repo.write_batch([ev for ev, _ in events], used)
                break
            except Exception as e:  # noqa: BLE001 - keep the batch; retry until the store is back
                self.failures += 1
                log.error(
                    "sign-in writer: a batch of %d could not be committed (%s: %s); retrying",
                    len(batch),
                    type(e).__name__,
                    " ".join(str(e).split())[:200],
                )
                time.sleep(pause)
                pause = min(pause * 2, RETRY_MAX)
        self.batches += 1
        # the file and syslog, in commit order; consecutive events with the same ``then`` that
        # takes a batch (``then.many``: AuditLog's) go in one call (one write for the file)
        i = 0
        while i < len(events):
            then = events[i][1]
            many = getattr(then, "many", None)
            j = i + 1
            if many is not None:
                while j < len(events) and events[j][1] is then:
                    j += 1
            stored = [with_id(ev, ev_id) for (ev, _), ev_id in zip(events[i:j], ids[i:j], strict=False)]
            try:
                if many is not None:
                    many(stored)
                else:
                    then(stored[0])
            except Exception:  # the table has it; a file or syslog problem is logged
                log.exception(
                    "sign-in writer: could not write audit event(s) %s to the file/syslog",
                    ", ".join(str(ev.id) for ev in stored),
                )
            i = j

    def _run(self) -> None:
        stop = False
        while not stop:
            batch, stop = self._gather()
            if batch:
                self._commit(batch)
            with self._cv:
                self._committed += len(batch)
                self._cv.notify_all()
        # closing: whatever is still queued
        rest: list[tuple[str, Any, Any]] = []
        while True:
            try:
                item = self._q.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                rest.append(item)
        if rest:
            self._commit(rest)
        with self._cv:
            self._committed += len(rest)
            self._cv.notify_all()
