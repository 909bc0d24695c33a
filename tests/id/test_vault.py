"""The credential vault (issue 7): domain passwords sealed with the keyring, bound to their row,
never in a dump of the database; ``ucgate vault set`` reads the password from stdin, not argv.
Runs on SQLite and PostgreSQL (skipped, with the reason, when no server answers)."""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select, text, update

from ucgate.id.keys import Keyring
from ucgate.id.users import UnknownUser, UserService
from ucgate.id.vault import VaultError, VaultService
from ucgate.store import migrate, open_repository
from ucgate.store.schema import vault_secrets

from ..store.backends import postgres_database, postgres_url, store_url  # noqa: F401

SECRET = "Correct-Horse-Battery-42!"


@pytest.fixture
def env(store_url, tmp_path):
    (tmp_path / "keys").mkdir(mode=0o700)
    if store_url.startswith("postgresql"):
        migrate.upgrade(store_url)
    repo = open_repository(store_url, migrate_schema=store_url.startswith("sqlite"))
    keyring = Keyring.load_or_create(tmp_path / "keys" / "k")
    users = UserService(repo)
    users.add("alice")
    users.add("bob")
    yield repo, keyring, users, tmp_path
    repo.close()


def test_set_read_delete(env):
    repo, keyring, users, _ = env
    v = VaultService(repo, keyring, users=users)
    assert v.password_sync("alice") is None and not v.status("alice").enrolled
    st = v.set_password("alice", SECRET, actor="cli:test")
    assert st.enrolled and st.set_by == "cli:test" and st.verified_at is None
    assert v.password_sync("alice") == SECRET
    assert VaultService(repo, keyring, users=users).password_sync("alice") == SECRET  # no cache
    assert VaultService(repo, keyring, users=users).status("alice").last_used_at is not None
    v.set_password("alice", SECRET + "2", actor="cli:test")  # replaces, and drops the cache
    assert v.password_sync("alice") == SECRET + "2"
    assert v.delete("alice", actor="cli:test") and v.password_sync("alice") is None
    with pytest.raises(UnknownUser):
        v.set_password("mallory", SECRET, actor="t")
    for bad in ("", "x" * 257, "a\x00b"):
        with pytest.raises(VaultError):
            v.set_password("alice", bad, actor="t")
    with pytest.raises(VaultError):
        v.set_password("alice", SECRET, actor="t", verify=lambda u, p: False)
    assert v.set_password("alice", SECRET, actor="t", verify=lambda u, p: p == SECRET).verified_at
    users.disable("alice")
    assert VaultService(repo, keyring, users=users).password_sync("alice") is None


def test_encrypted_at_rest_and_bound_to_the_row(env):
    repo, keyring, users, tmp_path = env
    v = VaultService(repo, keyring, users=users)
    v.set_password("alice", SECRET, actor="t")
    v.set_password("bob", "Bob-" + SECRET, actor="t")
    # a dump of every row of every table holds no plaintext
    with repo.engine.connect() as c:
        tables = [
            r[0]
            for r in c.execute(
                text(
                    "SELECT name FROM sqlite_master WHERE type='table'"
                    if repo.engine.dialect.name == "sqlite"
                    else "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
                )
            )
        ]
        dump = b"".join(repr(tuple(row)).encode() for t in tables for row in c.execute(text(f'SELECT * FROM "{t}"')))
    assert b"Correct-Horse" not in dump and SECRET.encode().hex().encode() not in dump
    if repo.engine.dialect.name == "sqlite":
        db_file = repo.engine.url.database
        for f in (Path(db_file), Path(db_file + "-wal")):
            assert not f.exists() or b"Correct-Horse" not in f.read_bytes()
    # alice's ciphertext copied into bob's row does not decrypt as bob's password
    with repo.engine.begin() as c:
        a = c.execute(select(vault_secrets).where(vault_secrets.c.user_id == users.get("alice").id)).one()
        c.execute(
            update(vault_secrets)
            .where(vault_secrets.c.user_id == users.get("bob").id)
            .values(ciphertext=a.ciphertext, nonce=a.nonce)
        )
    assert VaultService(repo, keyring, users=users).password_sync("bob") is None
    # and a key file without the key decrypts nothing
    other = Keyring.load_or_create(tmp_path / "keys" / "other")
    assert VaultService(repo, other, users=users).password_sync("alice") is None


def test_key_rotation_reencrypts(env):
    repo, keyring, users, tmp_path = env
    VaultService(repo, keyring, users=users).set_password("alice", SECRET, actor="t")
    new = Keyring.rotate(tmp_path / "keys" / "k")
    assert VaultService(repo, new, users=users).reencrypt_all() == 1
    rec = VaultService(repo, new, users=users).store.get(users.get("alice").id)
    assert Keyring.key_id_of(rec.ciphertext) == new.active
    assert VaultService(repo, new, users=users).password_sync("alice") == SECRET


def test_cli_reads_the_password_from_stdin_not_argv(tmp_path, monkeypatch, capsys):
    """``ucgate vault set USER`` has no password argument at all; it reads stdin."""
    from types import SimpleNamespace

    from ucgate.cli import vault as vault_cli
    from ucgate.id.components import Components

    (tmp_path / "data").mkdir()
    (tmp_path / "keys").mkdir(mode=0o700)
    settings = SimpleNamespace(
        store_url=f"sqlite:///{tmp_path / 'data' / 'u.db'}", key_file=tmp_path / "keys" / "k", audit_file=None
    )
    c = Components(settings)
    c.users.add("alice")
    c.close()
    monkeypatch.setattr(vault_cli, "_default_settings", lambda args: settings)
    monkeypatch.setattr(vault_cli, "_verifier", lambda args: None)
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-c", "--config")
    vault_cli.register(sub, common)
    with pytest.raises(SystemExit):  # a password on the command line is a usage error
        parser.parse_args(["vault", "set", "alice", SECRET])
    args = parser.parse_args(["vault", "set", "alice"])
    monkeypatch.setattr(sys, "stdin", io.StringIO(SECRET + "\n"))
    assert args.func(args) == 0
    assert SECRET not in capsys.readouterr().out
    c = Components(settings)
    try:
        v = VaultService(c.repo, c.keyring, users=c.users)
        assert v.password_sync("alice") == SECRET
        assert any(e.action == "vault.set" for e in c.audit.tail(10))
    finally:
        c.close()
    args = parser.parse_args(["vault", "status", "alice", "--json"])
    assert args.func(args) == 0 and '"enrolled": true' in capsys.readouterr().out
    args = parser.parse_args(["vault", "delete", "alice"])
    assert args.func(args) == 0


def test_cli_help_lists_vault():
    out = subprocess.run(
        [sys.executable, "-m", "ucgate", "vault", "set", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "stdin" in out or "prompt" in out
