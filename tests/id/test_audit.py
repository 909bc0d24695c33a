from __future__ import annotations

import json
import os
import secrets
import stat
from datetime import UTC, datetime, timedelta

import pytest

from tests.store.backends import postgres_database, postgres_url, repo, store_url  # noqa: F401
from ucgate.id.audit import AuditLog, is_secret_key, scrub

T0 = datetime(2025, 3, 1, tzinfo=UTC)


class Clock:
    def __init__(self):
        self.now = T0

    def __call__(self):
        self.now += timedelta(seconds=1)
        return self.now


@pytest.fixture
def log(repo, tmp_path):
    a = AuditLog(repo, tmp_path / "log" / "audit.jsonl", Clock())
    yield a
    a.close()


def lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_record_goes_to_table_and_file(log, tmp_path):
    ev = log.record(
        "signin",
        actor="gateway",
        user="alice",
        device="DEV1",
        service="eas",
        client_address="192.0.2.1",
        result="deny",
        reason="wrong-password",
        method="basic",
        attempt=3,
    )
    assert ev.id is not None
    [stored] = log.tail(5)
    assert stored == ev
    assert stored.details == {"method": "basic", "attempt": 3}
    [line] = lines(tmp_path / "log" / "audit.jsonl")
    assert line["id"] == ev.id and line["user"] == "alice" and line["reason"] == "wrong-password"
    assert line["at"] == "2025-03-01T00:00:01+00:00" and line["details"]["attempt"] == 3
    assert stat.S_IMODE(os.stat(tmp_path / "log" / "audit.jsonl").st_mode) == 0o640


def test_secrets_are_stripped(log, tmp_path):
    ev = log.record(
        "signin",
        actor="gateway",
        result="ok",
        user="alice",
        password="hunter2",
        asp="abcd-efgh-jkmn-pqrs",
        nt_hash="00ff",
        authorization="Basic x",
        cookie="c",
        nested={"Set-Cookie": "x", "ok": 1, "ticket": "t"},
        typed="abcdefghjkmnpqrs",
        header="Negotiate TlRMTVNTUAADAAAA",
        asp_id="3f9a",
        key_id=2,
        token_type="Bearer",
    )
    text = (tmp_path / "log" / "audit.jsonl").read_text()
    for secret in ("hunter2", "abcd-efgh", "00ff", "Basic x", "abcdefghjkmnpqrs", "TlRMTVNT"):
        assert secret not in text and secret not in json.dumps(ev.details)
    d = ev.details
    assert d["asp_id"] == "3f9a" and d["key_id"] == 2 and d["token_type"] == "Bearer"
    assert d["nested"] == {"ok": 1}
    assert set(d["redacted"]) >= {
        "password",
        "asp",
        "nt_hash",
        "authorization",
        "cookie",
        "nested.Set-Cookie",
        "nested.ticket",
        "typed",
        "header",
    }


@pytest.mark.parametrize(
    "key",
    [
        "password",
        "Password",
        "newPassword",
        "asp",
        "nt_hash",
        "hash",
        "X-Auth-Token",
        "access_token",
        "ticket",
        "Authorization",
        "cookie",
        "client_secret",
        "key",
        "api_key",
        "hashes",
    ],
)
def test_secret_keys(key):
    assert is_secret_key(key)


@pytest.mark.parametrize(
    "key",
    [
        "user",
        "device_id",
        "asp_id",
        "key_id",
        "token_type",
        "label",
        "method",
        "service",
        "reason",
        "attempt",
        "credential",
        "user_agent",
    ],
)
def test_non_secret_keys(key):
    assert not is_secret_key(key)


def test_asp_typed_as_user_name_is_redacted_but_device_ids_are_kept(log):
    ev = log.record(
        "signin",
        actor="gateway",
        result="deny",
        user="ABCD-EFGH-JKMN-PQRS",
        device="3F9A2B7C8D4E5F6A7B8C9D2E3F4A5B6C",
        ua="Outlook-iOS/2.0",
        other="aaaabbbbccccdddd",
        inside="ids 2345abcdefgh6789xyz ok",
    )
    assert ev.username == "[redacted]"
    assert ev.device == "3F9A2B7C8D4E5F6A7B8C9D2E3F4A5B6C"
    assert ev.details["ua"] == "Outlook-iOS/2.0" and ev.details["other"] == "[redacted]"
    assert ev.details["inside"] == "ids 2345abcdefgh6789xyz ok"


def test_identifiers_are_kept_whatever_their_letters_but_an_asp_in_one_is_not():
    # An ASP id is 16 hex digits; one in nine has no 0 or 1, so it is also 16 ASP symbols. It is
    # an identifier, and the audit must keep it (it once came out "[redacted]" at random).
    out, red = scrub(
        {
            "credential": "dc747239cd5ab275",
            "asp_id": "dc747239cd5ab275",
            "deviceIds": ["dc747239cd5ab275"],
            "other": "dc747239cd5ab275",
            "key_id": "ABCD-EFGH-JKMN-PQRS",
            "credential_id": "x basic dXNlcjpwYXNzd29yZA== y",
        }
    )
    assert out["credential"] == out["asp_id"] == "dc747239cd5ab275"
    assert out["deviceIds"] == ["dc747239cd5ab275"]
    assert out["other"] == out["key_id"] == out["credential_id"] == "[redacted]"
    assert sorted(red) == ["credential_id", "key_id", "other"]


def test_every_asp_id_is_kept_in_a_sign_in_event(log):
    for _ in range(200):
        asp_id = secrets.token_hex(8)
        ev = log.record("sign-in", actor="fred", result="allow", credential=asp_id)
        assert ev.details["credential"] == asp_id


def test_scrub_is_a_copy():
    d = {"a": {"password": "x"}}
    out, red = scrub(d)
    assert d == {"a": {"password": "x"}} and out == {"a": {}} and red == ["a.password"]


def test_file_is_reopened_after_rotation(log, tmp_path):
    path = tmp_path / "log" / "audit.jsonl"
    log.record("a", actor="t", result="ok")
    path.rename(path.with_suffix(".1"))
    log.record("b", actor="t", result="ok")
    assert [x["action"] for x in lines(path)] == ["b"]
    assert [x["action"] for x in lines(path.with_suffix(".1"))] == ["a"]


def test_no_file(repo):
    a = AuditLog(repo, None, Clock())
    a.record("x", actor="t", result="ok")
    assert [e.action for e in a.tail(1)] == ["x"]
    a.close()


def test_tail_order(log):
    for i in range(30):
        log.record(f"e{i}", actor="t", result="ok")
    assert [e.action for e in log.tail(3)] == ["e27", "e28", "e29"]
