"""The master key and the encryption of stored secrets (ASPs) with it.

Key file
    A text file holding one or more 256-bit keys, one per line as ``<key id> <base64 key>``;
    the **last** line is the active key (new secrets are encrypted with it), earlier lines are
    kept so secrets written under them still decrypt. It is created on first use with
    ``os.open(O_CREAT | O_EXCL, 0600)`` in a directory created 0700, and refused when:

    - its permissions let the group or others read or write it (``chmod 600 <path>``), or it is
      not a regular file (a symlink is not followed);
    - it lives in the SQLite database's directory, or below it: a copy or backup of the data
      directory must not carry the key that decrypts it ("not next to the data").

Sealed format (the ``asps.ciphertext`` column; the 96-bit nonce is stored in ``asps.nonce``)
    ``0x01`` (format version) ‖ key id (4 bytes, big endian) ‖ AES-256-GCM ciphertext ‖ tag.
    The associated data authenticated with it is that 5-byte header ‖ a context string naming
    the row (``asp_aad(user_id, asp_id)``): a ciphertext copied into another row, or given
    another header, fails to decrypt.

Rotation
    ``Keyring.rotate(path)`` appends a new key (id + 1) and makes it active;
    ``ucgate key rotate`` then re-encrypts every ASP with it (``AspService.reencrypt_all``). Retiring
    an old key (deleting its line) is a manual step once nothing uses it.
"""

from __future__ import annotations

import base64
import os
import stat
import struct
from collections.abc import Callable
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_BYTES = 32  # AES-256
NONCE_BYTES = 12  # 96 bits: GCM's native nonce size (NIST SP 800-38D §8.2.2, random nonces)
FORMAT_V1 = 1
_HEADER = struct.Struct(">BI")  # format version, key id
_FILE_COMMENT = (
    "# ucgate master key: decrypts stored secrets (ASPs). Keep it 0600, out of the data\n"
    "# directory and out of its backups. One key per line, '<id> <base64>'; the last is active.\n"
)


class KeyFileError(Exception):
    """The key file is unsafe or unreadable; the message names the path and the fix."""


class DecryptError(Exception):
    """A sealed secret does not decrypt: wrong row, wrong key, or tampered."""


def asp_aad(user_id: int, asp_id: str) -> bytes:
    """The associated data binding an ASP's ciphertext to its row."""
    return b"asp:%d:%s" % (user_id, asp_id.encode())


class Keyring:
    """Keys by id, one of them active. Encrypts with the active key, decrypts with any."""

    def __init__(self, keys: dict[int, bytes], active: int, *, rand: Callable[[int], bytes] = os.urandom) -> None:
        if active not in keys:
            raise ValueError("the active key id must be one of the keys")
        for kid, key in keys.items():
            if len(key) != KEY_BYTES or not 0 < kid < 2**32:
                raise ValueError(f"key {kid}: a key is {KEY_BYTES} bytes with an id in 1..2^32-1")
        self._aead = {kid: AESGCM(k) for kid, k in keys.items()}
        self.active = active
        self.rand = rand

    def __repr__(self) -> str:
        return f"Keyring(key_ids={sorted(self._aead)}, active={self.active})"

    @property
    def key_ids(self) -> list[int]:
        return sorted(self._aead)

    def encrypt(self, plaintext: bytes, aad: bytes) -> tuple[bytes, bytes]:
        """Returns ``(nonce, sealed)``: a fresh random nonce and the sealed format above."""
        nonce = self.rand(NONCE_BYTES)
        header = _HEADER.pack(FORMAT_V1, self.active)
        return nonce, header + self._aead[self.active].encrypt(nonce, plaintext, header + aad)

    def decrypt(self, nonce: bytes, sealed: bytes, aad: bytes) -> bytes:
        """Raises DecryptError for a wrong row (``aad``), an unknown key or tampering."""
        if len(sealed) < _HEADER.size + 16 or len(nonce) != NONCE_BYTES:
            raise DecryptError("malformed ciphertext")
        version, kid = _HEADER.unpack_from(sealed)
        if version != FORMAT_V1:
            raise DecryptError(f"unknown ciphertext format {version}")
        aead = self._aead.get(kid)
        if aead is None:
            raise DecryptError(f"encrypted with key {kid}, which is not in the key file")
        try:
            return aead.decrypt(nonce, sealed[_HEADER.size :], sealed[: _HEADER.size] + aad)
        except InvalidTag:
            raise DecryptError("ciphertext does not authenticate (wrong row, key or tampered)") from None

    @staticmethod
    def key_id_of(sealed: bytes) -> int:
        return _HEADER.unpack_from(sealed)[1]

    # --- the key file -----------------------------------------------------------------
    @classmethod
    def load_or_create(
        cls, path: Path, *, data_path: Path | None = None, rand: Callable[[int], bytes] = os.urandom
    ) -> Keyring:
        """Read the key file at ``path``, creating it (one new key) if it does not exist.

        Args:
            data_path: the SQLite database file, if any: the key must not live beside it.
        Raises:
            KeyFileError: unsafe location or permissions, or unreadable content.
        """
        path = Path(path).expanduser().absolute()
        _check_location(path, data_path)
        if not path.exists() and not path.is_symlink():
            try:
                _create(path, rand)
            except FileExistsError:
                pass  # another process created it first: read theirs
        return cls(*_read(path), rand=rand)

    @classmethod
    def rotate(cls, path: Path, *, data_path: Path | None = None, rand: Callable[[int], bytes] = os.urandom) -> Keyring:
        """Append a new key to the key file and make it active. Returns the new keyring."""
        path = Path(path).expanduser().absolute()
        _check_location(path, data_path)
        keys, active = _read(path)
        new_id = max(keys) + 1
        keys[new_id] = rand(KEY_BYTES)
        tmp = path.with_name(path.name + ".new")
        tmp.unlink(missing_ok=True)  # left by an interrupted rotation
        _write_exclusive(tmp, keys)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        return cls(keys, new_id, rand=rand)


def _check_location(path: Path, data_path: Path | None) -> None:
    if data_path is None:
        return
    key_dir = path.parent.resolve()
    data_dir = Path(data_path).expanduser().resolve().parent
    if key_dir == data_dir or data_dir in key_dir.parents:
        raise KeyFileError(
            f"{path}: the key file is in the database's directory {data_dir}; put it elsewhere "
            "(e.g. /etc/ucgate/ucgate.key) so a copy of the data does not carry its key "
            "(store.key_file in the configuration)"
        )


def _format(keys: dict[int, bytes]) -> bytes:
    lines = [f"{kid} {base64.b64encode(k).decode()}\n" for kid, k in sorted(keys.items())]
    return (_FILE_COMMENT + "".join(lines)).encode()


def _write_exclusive(path: Path, keys: dict[int, bytes]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, _format(keys))
        os.fsync(fd)
    finally:
        os.close(fd)


def _create(path: Path, rand: Callable[[int], bytes]) -> None:
    if not path.parent.exists():
        path.parent.mkdir(mode=0o700, parents=True)
    _write_exclusive(path, {1: rand(KEY_BYTES)})
    _fsync_dir(path.parent)


def _fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read(path: Path) -> tuple[dict[int, bytes], int]:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise KeyFileError(f"{path}: no such key file") from None
    except OSError as e:
        raise KeyFileError(
            f"{path}: cannot open the key file ({e.strerror}); it must be a regular file, not a symlink"
        ) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(f"{path}: the key file must be a regular file")
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            raise KeyFileError(
                f"{path}: permissions {mode:04o} are too open; the key file must "
                f"be readable by its owner only: chmod 600 {path}"
            )
        with os.fdopen(fd, "rb", closefd=False) as f:
            text = f.read(64 * 1024).decode("ascii", "replace")
    finally:
        os.close(fd)
    keys: dict[int, bytes] = {}
    last = None
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            kid_s, b64 = line.split()
            kid, key = int(kid_s), base64.b64decode(b64, validate=True)
        except ValueError:
            raise KeyFileError(f"{path}:{n}: expected '<key id> <base64 key>'") from None
        if len(key) != KEY_BYTES or not 0 < kid < 2**32 or kid in keys:
            raise KeyFileError(f"{path}:{n}: a key is {KEY_BYTES} bytes with a unique id 1..2^32-1")
        keys[kid] = key
        last = kid
    if last is None:
        raise KeyFileError(f"{path}: the key file holds no key")
    return keys, last
