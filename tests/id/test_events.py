"""The event outbox: rows in the change's transaction, followers in other processes, and bad
input (unknown kinds, malformed NOTIFY payloads, malformed SSE data) never stopping anyone."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from sqlalchemy import text

from tests.store.backends import postgres_database, postgres_url, repo, store_url  # noqa: F401
from ucgate.id.events import (
    CredentialRevoked,
    DeviceBlocked,
    EventBus,
    EventFollower,
    Pending,
    UserBlocked,
    event_of,
    from_wire,
    to_wire,
)
from ucgate.store.outbox import NOTIFY_CHANNEL, Outbox


def _collect(bus: EventBus) -> tuple[list[object], threading.Event]:
    got: list[object] = []
    seen = threading.Event()

    def cb(e: object) -> None:
        got.append(e)
        seen.set()

    bus.subscribe(cb)
    return got, seen


def test_a_change_and_its_event_commit_together(repo):
    from ucgate.id.users import UserService

    bus = EventBus(Outbox(repo.engine))
    got, _ = _collect(bus)
    users = UserService(repo, bus=bus)
    users.add("alice")
    assert users.disable("alice", actor="cli:root")
    rows = bus.outbox.since(0)
    assert [(r.kind, r.username, r.reason, r.actor) for r in rows] == [
        ("user-blocked", "alice", "user-disabled", "cli:root")
    ]
    assert got == [UserBlocked("alice", "user-disabled")]  # delivered at once in this process
    # a change that does not happen writes no event
    assert not users.disable("nobody")
    assert len(bus.outbox.since(0)) == 1


def test_follower_in_another_process_sees_rows_within_a_second(repo, store_url):
    """A second process writes (as the CLI does); this process's follower delivers it."""
    bus = EventBus(Outbox(repo.engine))
    got, seen = _collect(bus)
    follower = EventFollower(bus, bus.outbox)
    follower.start()
    try:
        assert follower.caught_up.wait(5)
        child = textwrap.dedent("""
            import sys
            from ucgate.store import open_repository
            from ucgate.store.outbox import Outbox
            repo = open_repository(sys.argv[1], migrate_schema=False)
            Outbox(repo.engine).publish(kind="device-blocked", username="bob", device_id="PHONE9",
                                        reason="blocked by an administrator")
        """)
        subprocess.run([sys.executable, "-c", child, store_url], check=True, timeout=30)
        t0 = time.monotonic()
        assert seen.wait(3), "the follower did not deliver the other process's row"
        print(f"\nanother process's event delivered {time.monotonic() - t0:.3f} s after its commit")
        assert got == [DeviceBlocked("bob", "PHONE9", "blocked by an administrator")]
    finally:
        follower.stop()


def test_own_rows_are_not_delivered_twice(repo):
    bus = EventBus(Outbox(repo.engine))
    got, _ = _collect(bus)
    follower = EventFollower(bus, bus.outbox, fallback_poll=0.05)
    follower.start()
    try:
        assert follower.caught_up.wait(5)
        bus.publish(CredentialRevoked("alice", "a1b2", "asp-revoked"))
        time.sleep(0.5)
        assert got == [CredentialRevoked("alice", "a1b2", "asp-revoked")]
    finally:
        follower.stop()


def test_unknown_kind_is_logged_and_skipped_and_the_follower_goes_on(repo, caplog):
    bus = EventBus(Outbox(repo.engine))
    got, seen = _collect(bus)
    rows_seen: list[str] = []
    bus.subscribe_rows(lambda r: rows_seen.append(r.kind))
    follower = EventFollower(bus, bus.outbox, fallback_poll=0.05)
    follower.start()
    try:
        assert follower.caught_up.wait(5)
        other = Outbox(repo.engine)  # as another process would
        other.publish(kind="tenant-moved", username="carol", reason="a newer version's event")
        other.publish(kind="user-blocked", username="carol", reason="user-disabled")
        assert seen.wait(3)
        assert got == [UserBlocked("carol", "user-disabled")]
        assert rows_seen == ["tenant-moved", "user-blocked"]  # the SSE feed passes both on
        assert "unknown kind 'tenant-moved'" in caplog.text
    finally:
        follower.stop()


def test_malformed_notify_payloads_are_ignored(postgres_url):
    """NOTIFY is only a wake-up: garbage on the channel wakes the follower, which finds no new
    row and goes on; the next real row is delivered."""
    from ucgate.store import open_repository

    repo = open_repository(postgres_url)
    bus = EventBus(Outbox(repo.engine))
    got, seen = _collect(bus)
    follower = EventFollower(bus, bus.outbox, fallback_poll=5.0)
    follower.start()
    try:
        assert follower.caught_up.wait(5)
        time.sleep(0.3)  # LISTEN is in place
        with repo.engine.connect() as c:
            for junk in ("", "not-a-number", "9" * 40, "\x01\x02"):
                c.execute(text("SELECT pg_notify(:ch, :p)"), {"ch": NOTIFY_CHANNEL, "p": junk})
            c.commit()
        time.sleep(0.3)
        assert got == []
        Outbox(repo.engine).publish(kind="user-blocked", username="dave", reason="signed-out")
        t0 = time.monotonic()
        assert seen.wait(2), "NOTIFY did not wake the follower (fallback poll is 5 s)"
        assert time.monotonic() - t0 < 1.0
        assert got == [UserBlocked("dave", "signed-out")]
    finally:
        follower.stop()
        repo.close()


@pytest.mark.parametrize(
    "data",
    [
        "",
        "{",
        "[]",
        '{"user": 5}',
        '{"user": ""}',
        '{"user": "a", "signed_in_before": "yesterday"}',
        '{"user": "a", "signed_in_before": "2026-01-01T00:00:00"}',
        '{"user": "a", "device_id": 7}',
        '{"user": "a", "reason": 5}',
        '{"user": "a", "credential": []}',
        '{"user": "a", "at": 5}',  # a number is not a time, in any field
        '{"user": "a", "signed_in_before": 1700000000}',
        '{"user": "a", "at": "yesterday"}',
    ],
)
def test_malformed_sse_data_is_refused(data):
    with pytest.raises(ValueError):
        from_wire("12", "user-blocked", data)


def test_wire_round_trip():
    from ucgate.store.outbox import EventRow

    when = dt.datetime(2026, 12, 2, 8, 0, tzinfo=dt.UTC)
    row = EventRow(id=41, at=when, kind="user-blocked", username="erin", reason="signed-out", signed_in_before=when)
    back = from_wire("41", "user-blocked", to_wire(row))
    assert event_of(back) == UserBlocked("erin", "signed-out", when)
    assert back.id == 41
    p = Pending(DeviceBlocked("erin", "PHONE1", "blocked"), actor="admin:x")
    assert p.fields["device_id"] == "PHONE1" and p.fields["kind"] == "device-blocked"


def test_store_unreachable_is_503_store_unavailable_not_a_crash(tmp_path, caplog):
    """PostgreSQL behind a port nothing listens on: sign-ins are refused as store-unavailable
    with a Retry-After and a log line naming the store, never an exception."""
    from ucgate.id.api import AttemptContext
    from ucgate.id.service import IdService
    from ucgate.policy.lockout import BudgetConfig
    from ucgate.store.budget import StoreBudget
    from ucgate.store.engine import make_engine

    from ..support import free_port

    engine = make_engine(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/test?connect_timeout=1")

    class Users:
        def resolve(self, typed):
            from sqlalchemy.exc import OperationalError

            raise OperationalError("SELECT", {}, Exception("connection refused"))

    class Audit:
        records: list[dict] = []

        def record(self, action, **kw):
            self.records.append(kw)

    audit = Audit()
    svc = IdService(
        asps=None,
        users=Users(),
        budget=StoreBudget(engine, BudgetConfig()),
        audit=audit,
        store_name="postgresql+psycopg://postgres@127.0.0.1/test",
    )
    v = svc.verify_password_sync("alice", "x", AttemptContext("192.0.2.1", "basic", "ucwa"))
    assert (v.ok, v.reason) == (False, "store-unavailable") and v.retry_after > 0
    assert audit.records[-1]["reason"] == "store-unavailable"
    assert "store unavailable" in caplog.text and "postgresql+psycopg://postgres@127.0.0.1/test" in caplog.text


def test_every_kind_on_the_wire_is_what_the_document_says():
    """The SSE data of every kind validates against the id service document's Event schema
    (generated from ``ucgate.id.api.EventBody``, the model both sides use), and comes back as
    the same row; the kinds are the ones the document names."""
    import jsonschema

    from ucgate.id.api import EVENT_KINDS
    from ucgate.id.http_api import openapi_document
    from ucgate.store.outbox import EventRow

    doc = openapi_document()
    schema = {"$ref": "#/components/schemas/Event", "components": doc["components"]}
    check = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())
    assert doc["paths"]["/v1/events"]["get"]["summary"].endswith(", ".join(EVENT_KINDS))
    when = dt.datetime(2026, 12, 2, 8, 0, tzinfo=dt.UTC)
    rows = [
        EventRow(id=1, at=when, kind="user-blocked", username="erin", reason="user-disabled", signed_in_before=when),
        EventRow(
            id=2, at=when.replace(tzinfo=None), kind="device-blocked", username="erin", reason="blocked", device_id="P1"
        ),
        EventRow(id=3, at=when, kind="credential-revoked", username="erin", reason="asp-revoked", credential="asp-1"),
        EventRow(id=4, at=when, kind="credential-added", username="erin", reason="asp-created", credential="asp-2"),
        EventRow(id=5, at=when, kind="rules-changed", username="*", reason="rules-changed"),
    ]
    assert [r.kind for r in rows] == list(EVENT_KINDS)
    for row in rows:
        data = to_wire(row)
        check.validate(json.loads(data))
        back = from_wire(str(row.id), row.kind, data)
        assert (back.id, back.kind) == (row.id, row.kind)
        assert (back.username, back.reason, back.device_id, back.credential, back.signed_in_before, back.at) == (
            row.username,
            row.reason,
            row.device_id,
            row.credential,
            row.signed_in_before,
            when,
        )


def test_the_balancer_checks_answers_are_what_the_document_says():
    import jsonschema

    from ucgate.id.health import readiness_answer
    from ucgate.id.http_api import openapi_document

    doc = openapi_document()
    for path in ("/healthz", "/readyz"):
        for code, answer in doc["paths"][path]["get"]["responses"].items():
            schema = {**answer["content"]["application/json"]["schema"], "components": doc["components"]}
            check = jsonschema.Draft202012Validator(schema)
            if path == "/healthz":
                check.validate({"status": "ok"})
            else:
                check.validate(readiness_answer(code == "200", "store-unavailable")[1])
    assert set(doc["paths"]["/readyz"]["get"]["responses"]) == {"200", "503"}


def test_a_naive_time_from_the_store_goes_out_as_utc():
    """SQLite gives times back naive (they are UTC): an event written from such a row must not
    be one that every gateway refuses (a time without an offset), or the cut is lost."""
    from ucgate.store.outbox import EventRow

    naive = dt.datetime(2026, 12, 2, 8, 0)
    row = EventRow(id=9, at=naive, kind="user-blocked", username="erin", reason="signed-out", signed_in_before=naive)
    back = from_wire("9", "user-blocked", to_wire(row))
    assert back.signed_in_before == naive.replace(tzinfo=dt.UTC) and back.at == naive.replace(tzinfo=dt.UTC)
