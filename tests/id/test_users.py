from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.store.backends import postgres_database, postgres_url, repo, store_url  # noqa: F401
from ucgate.id.users import (
    InvalidUsername,
    LoginName,
    UserService,
    normalise_upn,
    normalise_username,
    resolve_login_name,
    split_login_name,
)
from ucgate.store import DuplicateError

UPNS = {"alice.smith@contoso.com": "asmith"}


@pytest.mark.parametrize(
    "typed,expected",
    [
        ("alice", LoginName("plain", "alice", None)),
        ("CONTOSO\\Alice", LoginName("downlevel", "Alice", "contoso")),
        ("alice@Contoso.COM", LoginName("upn", "alice", "contoso.com")),
        ("  bob  ", LoginName("plain", "bob", None)),
    ],
)
def test_split(typed, expected):
    assert split_login_name(typed) == expected


@pytest.mark.parametrize(
    "typed,expected",
    [
        ("Alice", "alice"),
        ("CONTOSO\\ASmith", "asmith"),
        ("contoso\\asmith", "asmith"),
        ("FABRIKAM\\asmith", None),  # not our domain
        ("Alice.Smith@contoso.com", "asmith"),  # UPN prefix is not the sAMAccountName
        ("alice@contoso.com", None),  # unknown UPN: never guessed from the prefix
        ("\\alice", None),
        ("alice@", None),
        ("", None),
        ("ali ce\x00", None),
    ],
)
def test_resolve(typed, expected):
    assert resolve_login_name(typed, netbios_domains=["CONTOSO"], lookup_upn=UPNS.get) == expected


def test_any_domain_when_none_configured():
    assert resolve_login_name("WHATEVER\\Bob") == "bob"


@pytest.mark.parametrize("bad", ["", " ", "a\\b", "a@b", "a/b", "x" * 257, "dot.", "tab\there"])
def test_invalid_usernames(bad):
    with pytest.raises(InvalidUsername):
        normalise_username(bad)


def test_upn():
    assert normalise_upn(" Alice@Contoso.com ") == "alice@contoso.com"
    with pytest.raises(InvalidUsername):
        normalise_upn("alice")


@given(st.text(max_size=40))
def test_resolve_never_raises_and_is_canonical(typed):
    r = resolve_login_name(typed)
    assert r is None or r == normalise_username(r)


def test_user_service(repo):
    now = datetime(2025, 1, 1, tzinfo=UTC)
    svc = UserService(repo, lambda: now, netbios_domains=["CONTOSO"])
    u = svc.add("ASmith", upn="Alice.Smith@contoso.com", sip_uri="alice.smith@contoso.com", display_name="Alice Smith")
    assert (u.username, u.upn, u.sip_uri) == ("asmith", "alice.smith@contoso.com", "sip:alice.smith@contoso.com")
    with pytest.raises(DuplicateError):
        svc.add("asmith")
    assert svc.resolve("CONTOSO\\asmith") == u
    assert svc.resolve("alice.smith@CONTOSO.com") == u
    assert svc.get("ASMITH") == u
    assert svc.disable("alice.smith@contoso.com") and not svc.get("asmith").enabled
    assert svc.enable("asmith") and svc.get("asmith").enabled
    assert not svc.disable("nobody")
    assert [x.username for x in svc.list()] == ["asmith"]
