"""Keytab files on disk: read, written (mode 0600, replaced atomically), and the account
principal of one — the file I/O around the pure format of ``protocols.keytab``."""

from __future__ import annotations

import os
from pathlib import Path

from ..protocols.keytab import KeytabEntry, account_principal, pack_keytab, parse_keytab


def read_keytab(path: str | os.PathLike[str]) -> list[KeytabEntry]:
    """The entries of the keytab file ``path`` (ValueError naming it when it is not one)."""
    return parse_keytab(Path(path).read_bytes(), str(path))


def write_keytab(path: str | os.PathLike[str], entries: list[KeytabEntry]) -> None:
    """Write ``entries`` to ``path``: created 0600, replacing the old file in one rename."""
    p = Path(path)
    tmp = p.with_name(p.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pack_keytab(entries))
    os.replace(tmp, p)


def account_from_keytab(keytab: str | os.PathLike[str], realm: str) -> str:
    """The keytab file's one-component principal of ``realm`` (the account); ValueError when
    there is none."""
    return account_principal(read_keytab(keytab), realm, str(keytab))


__all__ = ["account_from_keytab", "read_keytab", "write_keytab"]
