from __future__ import annotations

import argparse
import json
import re
from types import SimpleNamespace

import pytest

from tests.store.backends import postgres_database, postgres_url, store_url  # noqa: F401
from ucgate.cli.admin import register
from ucgate.id.components import Components
from ucgate.store import migrate


@pytest.fixture
def settings(store_url, tmp_path):
    return SimpleNamespace(
        store_url=store_url, key_file=tmp_path / "keys" / "ucgate.key", audit_file=tmp_path / "audit.jsonl"
    )


@pytest.fixture
def cli(settings, capsys):
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-c", "--config")
    parser = argparse.ArgumentParser(prog="ucgate")
    register(parser.add_subparsers(dest="command"), common, load_settings=lambda args: settings)

    def run(*argv: str) -> tuple[int, str, str]:
        try:
            args = parser.parse_args(list(argv))
            code = args.func(args)
        except SystemExit as e:
            code = e.code
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


def test_db_upgrade_and_current(cli):
    assert cli("db", "current")[1].startswith("revision none")
    code, out, _ = cli("db", "upgrade")
    head = migrate.head()
    assert code == 0 and head in out
    code, out, _ = cli("db", "current", "--json")
    assert json.loads(out) == {"current": head, "head": head}


@pytest.fixture
def db(cli):
    assert cli("db", "upgrade")[0] == 0


def test_user_lifecycle(cli, db):
    assert cli("user", "add", "Alice", "--upn", "alice@contoso.com", "--display-name", "Alice A")[0] == 0
    code, _, err = cli("user", "add", "alice")
    assert code == 1 and "already exists" in err
    code, _, err = cli("user", "add", "CONTOSO\\bob")
    assert code == 2 and "sAMAccountName" in err
    code, out, _ = cli("user", "list")
    assert code == 0 and "alice@contoso.com" in out and "USER" in out
    assert cli("user", "disable", "alice@contoso.com")[0] == 0
    users = json.loads(cli("user", "list", "--json")[1])
    assert users[0]["username"] == "alice" and users[0]["enabled"] is False
    assert cli("user", "enable", "alice")[0] == 0
    assert cli("user", "disable", "nobody")[0] == 1


def test_asp_lifecycle(cli, db, settings):
    cli("user", "add", "alice")
    code, out, err = cli("asp", "create", "alice", "-l", "iPhone mail", "--device", "APPL1")
    assert code == 0 and "shown only now" in err
    plain = re.search(r"\b([a-z2-9]{4}-){3}[a-z2-9]{4}\b", out).group(0)
    code, out, _ = cli("asp", "create", "alice", "-l", "laptop", "--json")
    data = json.loads(out)
    assert re.fullmatch(r"([a-z2-9]{4}-){3}[a-z2-9]{4}", data["password"])

    listing = json.loads(cli("asp", "list", "alice", "--json")[1])
    assert [a["label"] for a in listing] == ["iPhone mail", "laptop"]
    table = cli("asp", "list", "alice")[1]
    assert plain not in table and data["password"] not in table and "APPL1" in table

    c = Components(settings)
    assert c.asps.verify_password("alice", plain, "APPL1") is not None
    c.close()

    assert cli("asp", "revoke", data["id"])[0] == 0
    assert cli("asp", "revoke", "nope")[0] == 1
    assert len(json.loads(cli("asp", "list", "alice", "--json")[1])) == 1
    assert len(json.loads(cli("asp", "list", "alice", "--all", "--json")[1])) == 2
    assert cli("asp", "create", "nobody", "-l", "x")[0] == 1
    assert cli("asp", "create", "alice")[0] == 2  # --label is required

    events = json.loads(cli("audit", "tail", "-n", "10", "--json")[1])
    assert [e["action"] for e in events] == ["user.add", "asp.create", "asp.create", "asp.revoke"]
    assert all(e["actor"].startswith("cli:") for e in events)
    text = settings.audit_file.read_text()
    assert plain not in text and data["password"] not in text
    assert "asp.revoke" in cli("audit", "tail")[1]


def test_key_rotate(cli, db, settings):
    cli("user", "add", "alice")
    plain = json.loads(cli("asp", "create", "alice", "-l", "x", "--json")[1])["password"]
    code, out, _ = cli("key", "rotate", "--json")
    assert code == 0 and json.loads(out) == {"active_key_id": 2, "reencrypted": 1}
    c = Components(settings)
    assert c.keyring.active == 2 and c.asps.verify_password("alice", plain) is not None
    c.close()


def test_key_next_to_database_refused(tmp_path, capsys):
    settings = SimpleNamespace(
        store_url=f"sqlite:///{tmp_path / 'data' / 'ucgate.db'}",
        key_file=tmp_path / "data" / "ucgate.key",
        audit_file=None,
    )
    parser = argparse.ArgumentParser(prog="ucgate")
    register(parser.add_subparsers(), argparse.ArgumentParser(add_help=False), load_settings=lambda args: settings)
    for argv in (["user", "add", "alice"], ["asp", "create", "alice", "-l", "x"]):
        args = parser.parse_args(argv)
        code = args.func(args)
    assert code == 1 and "database's directory" in capsys.readouterr().err
    assert not settings.key_file.exists()


def test_usage_errors_exit_2(cli):
    assert cli("user")[0] == 2
    assert cli("asp", "frobnicate")[0] == 2
    assert cli("audit", "tail", "-n", "x")[0] == 2
