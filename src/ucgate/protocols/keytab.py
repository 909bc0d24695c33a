"""Kerberos keytabs and principal names, without gssapi or sockets (pure).

The MIT/Heimdal keytab file format (version 0x502: ``krb5_kt_*``'s FILE type) as bytes:
:func:`parse_keytab` and :func:`pack_keytab` (the files themselves are read and written by
``store.keytab``); principal names (:func:`split_principal`); enctype numbers and the
msDS-SupportedEncryptionTypes bits (MS-KILE 2.2.7). The gateway's acceptor and KCD backend
(``gateway.kerberos``, ``gateway.kcd``) and ``ucgate kerberos check`` (``id.kerberos_check``)
use them; the lab builds ``ktpass``-style keytabs (SPN names, account keys) with them.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

# enctype numbers (RFC 3961 8, RFC 8009) -> the names krb5.conf and klist use
ENCTYPES = {
    1: "des-cbc-crc",
    3: "des-cbc-md5",
    17: "aes128-cts-hmac-sha1-96",
    18: "aes256-cts-hmac-sha1-96",
    19: "aes128-cts-hmac-sha256-128",
    20: "aes256-cts-hmac-sha384-192",
    23: "arcfour-hmac",
}
# msDS-SupportedEncryptionTypes bits (MS-KILE 2.2.7) -> enctype numbers
SUPPORTED_ETYPE_BITS = {0x1: 1, 0x2: 3, 0x4: 23, 0x8: 17, 0x10: 18}


def split_principal(principal: str) -> tuple[str, str]:
    """``user@REALM`` -> (``user``, ``REALM``); honours ``\\@`` escapes in the name part."""
    i = len(principal)
    while True:
        i = principal.rfind("@", 0, i)
        if i <= 0 or principal[i - 1] != "\\":
            break
    if i <= 0:
        return principal, ""
    return principal[:i], principal[i + 1 :]


# --- keytab file format (MIT/Heimdal version 0x502) ----------------------------------------------


@dataclass(frozen=True)
class KeytabEntry:
    components: tuple[str, ...]
    realm: str
    name_type: int
    timestamp: int
    kvno: int
    enctype: int
    key: bytes

    @property
    def principal(self) -> str:
        return "/".join(self.components) + "@" + self.realm

    @property
    def enctype_name(self) -> str:
        return ENCTYPES.get(self.enctype, f"enctype-{self.enctype}")

    def renamed(self, principal: str) -> KeytabEntry:
        name, realm = split_principal(principal)
        return KeytabEntry(
            tuple(name.split("/")), realm or self.realm, 1, self.timestamp, self.kvno, self.enctype, self.key
        )


def parse_keytab(data: bytes, source: str = "keytab") -> list[KeytabEntry]:
    """The entries of a keytab's bytes; ValueError naming ``source`` (the file) when they are
    not a version 0x502 keytab or are truncated."""
    if len(data) < 2 or data[0] != 5 or data[1] != 2:
        raise ValueError(f"{source}: not a version 0x502 keytab")
    pos, out = 2, []

    def take(n: int) -> bytes:
        nonlocal pos
        if pos + n > len(data):
            raise ValueError(f"{source}: truncated keytab")
        b = data[pos : pos + n]
        pos += n
        return b

    while pos + 4 <= len(data):
        (size,) = struct.unpack(">i", take(4))
        if size == 0:
            break
        if size < 0:  # a hole left by a deleted entry
            take(-size)
            continue
        end = pos + size
        if end > len(data):
            raise ValueError(f"{source}: truncated keytab")
        (ncomp,) = struct.unpack(">H", take(2))
        (rlen,) = struct.unpack(">H", take(2))
        realm = take(rlen).decode()
        comps = []
        for _ in range(ncomp):
            (clen,) = struct.unpack(">H", take(2))
            comps.append(take(clen).decode())
        name_type, timestamp, kvno8, enctype, klen = struct.unpack(">IIBHH", take(13))
        key = take(klen)
        kvno = kvno8
        if end - pos >= 4:  # the 32-bit kvno extension
            (kvno32,) = struct.unpack(">I", data[pos : pos + 4])
            if kvno32:
                kvno = kvno32
        pos = end
        out.append(KeytabEntry(tuple(comps), realm, name_type, timestamp, kvno, enctype, key))
    return out


def pack_keytab(entries: list[KeytabEntry]) -> bytes:
    """The keytab file's bytes for ``entries`` (each with the 32-bit kvno extension)."""
    body = bytearray(b"\x05\x02")
    for e in entries:
        rec = bytearray()
        rec += struct.pack(">H", len(e.components))
        realm = e.realm.encode()
        rec += struct.pack(">H", len(realm)) + realm
        for c in e.components:
            cb = c.encode()
            rec += struct.pack(">H", len(cb)) + cb
        rec += struct.pack(">IIBHH", e.name_type, e.timestamp, e.kvno & 0xFF, e.enctype, len(e.key))
        rec += e.key
        rec += struct.pack(">I", e.kvno)
        body += struct.pack(">i", len(rec)) + rec
    return bytes(body)


def account_principal(entries: list[KeytabEntry], realm: str, source: str = "the keytab") -> str:
    """The one-component principal of ``realm`` among a keytab's ``entries`` (the account, as
    ktpass/exportkeytab write it next to the SPN); ValueError when there is none."""
    for e in entries:
        if len(e.components) == 1 and e.realm.upper() == realm.upper():
            return e.principal
    raise ValueError(
        f"[kerberos] account is not set and {source} holds no account principal "
        '(only SPNs): set account = "<sAMAccountName>"'
    )
