from __future__ import annotations

import os
import stat

import pytest

from ucgate.id.keys import DecryptError, KeyFileError, Keyring, asp_aad


def test_created_on_first_use_private(tmp_path):
    path = tmp_path / "etc" / "ucgate" / "ucgate.key"
    k1 = Keyring.load_or_create(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    k2 = Keyring.load_or_create(path)  # same key on the second load
    nonce, sealed = k1.encrypt(b"secret", b"ctx")
    assert k2.decrypt(nonce, sealed, b"ctx") == b"secret"
    assert "secret" not in repr(k1) and k1.key_ids == [1]


def test_refused_when_too_open(tmp_path):
    path = tmp_path / "k" / "ucgate.key"
    Keyring.load_or_create(path)
    os.chmod(path, 0o644)
    with pytest.raises(KeyFileError, match=r"chmod 600 .*ucgate.key"):
        Keyring.load_or_create(path)


def test_refused_next_to_the_data(tmp_path):
    db = tmp_path / "data" / "ucgate.db"
    with pytest.raises(KeyFileError, match="database's directory") as e:
        Keyring.load_or_create(tmp_path / "data" / "ucgate.key", data_path=db)
    assert str(tmp_path / "data" / "ucgate.key") in str(e.value)
    with pytest.raises(KeyFileError):
        Keyring.load_or_create(tmp_path / "data" / "keys" / "ucgate.key", data_path=db)
    assert not (tmp_path / "data").exists()  # refused before creating anything
    Keyring.load_or_create(tmp_path / "keys" / "ucgate.key", data_path=db)


def test_symlink_refused(tmp_path):
    real = tmp_path / "real.key"
    Keyring.load_or_create(real)
    link = tmp_path / "link.key"
    link.symlink_to(real)
    with pytest.raises(KeyFileError, match="symlink"):
        Keyring.load_or_create(link)


def test_garbage_key_file(tmp_path):
    path = tmp_path / "bad.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"1 not-base64!!\n")
    os.close(fd)
    with pytest.raises(KeyFileError, match="bad.key:1"):
        Keyring.load_or_create(path)


def test_fresh_nonce_per_encryption(tmp_path):
    k = Keyring.load_or_create(tmp_path / "k.key")
    n1, c1 = k.encrypt(b"same", b"a")
    n2, c2 = k.encrypt(b"same", b"a")
    assert len(n1) == 12 and n1 != n2 and c1 != c2


def test_ciphertext_bound_to_its_row(tmp_path):
    k = Keyring.load_or_create(tmp_path / "k.key")
    nonce, sealed = k.encrypt(b"abcd", asp_aad(1, "aa"))
    for aad in (asp_aad(2, "aa"), asp_aad(1, "ab"), b""):
        with pytest.raises(DecryptError):
            k.decrypt(nonce, sealed, aad)
    tampered = sealed[:-1] + bytes([sealed[-1] ^ 1])
    with pytest.raises(DecryptError):
        k.decrypt(nonce, tampered, asp_aad(1, "aa"))
    header_swapped = bytes([1, 0, 0, 0, 2]) + sealed[5:]
    with pytest.raises(DecryptError, match="key 2"):
        k.decrypt(nonce, header_swapped, asp_aad(1, "aa"))


def test_rotation_keeps_old_secrets_readable(tmp_path):
    path = tmp_path / "k.key"
    k1 = Keyring.load_or_create(path)
    nonce, old = k1.encrypt(b"old", b"x")
    k2 = Keyring.rotate(path)
    assert k2.active == 2 and k2.key_ids == [1, 2]
    assert Keyring.load_or_create(path).active == 2
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert k2.decrypt(nonce, old, b"x") == b"old"
    n2, new = k2.encrypt(b"new", b"x")
    assert Keyring.key_id_of(new) == 2
    with pytest.raises(DecryptError):
        k1.decrypt(n2, new, b"x")
