"""protocols.keytab: the MIT keytab file format (0x502) and principal names, without gssapi; store.keytab:
the files."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ucgate.protocols.keytab import KeytabEntry, account_principal, pack_keytab, parse_keytab, split_principal
from ucgate.store.keytab import account_from_keytab, read_keytab, write_keytab

SPN = KeytabEntry(("HTTP", "gw.contoso.com"), "CONTOSO.COM", 1, 1700000000, 300, 18, b"k" * 32)
ACCOUNT = KeytabEntry(("svc-gw",), "CONTOSO.COM", 1, 1700000000, 300, 17, b"a" * 16)


def test_written_entries_read_back_with_a_32_bit_kvno(tmp_path):
    path = tmp_path / "gw.keytab"
    write_keytab(path, [SPN, ACCOUNT])
    assert path.stat().st_mode & 0o777 == 0o600
    assert read_keytab(path) == [SPN, ACCOUNT]  # kvno 300 does not fit the 8-bit field
    assert [e.principal for e in read_keytab(path)] == ["HTTP/gw.contoso.com@CONTOSO.COM", "svc-gw@CONTOSO.COM"]
    assert SPN.enctype_name == "aes256-cts-hmac-sha1-96"


def test_a_hole_left_by_a_deleted_entry_is_skipped(tmp_path):
    path = tmp_path / "gw.keytab"
    write_keytab(path, [SPN])
    data = path.read_bytes()
    hole = struct.pack(">i", -8) + b"\0" * 8
    path.write_bytes(data[:2] + hole + data[2:])
    assert read_keytab(path) == [SPN]


@pytest.mark.parametrize(
    "data, message",
    [
        (b"\x05\x01", "not a version 0x502 keytab"),
        (b"", "not a version 0x502 keytab"),
        (b"\x05\x02\x00\x00\x00\x40\x00\x01", "truncated keytab"),
    ],
)
def test_not_a_keytab_is_a_value_error(tmp_path, data, message):
    path = tmp_path / "bad.keytab"
    path.write_bytes(data)
    with pytest.raises(ValueError, match=message):
        read_keytab(path)


def test_split_principal_honours_escaped_at():
    assert split_principal("alice@CONTOSO.COM") == ("alice", "CONTOSO.COM")
    assert split_principal("HTTP/gw.contoso.com") == ("HTTP/gw.contoso.com", "")
    assert split_principal("a\\@b@REALM") == ("a\\@b", "REALM")
    assert split_principal("@REALM") == ("@REALM", "")


def test_account_from_keytab_is_the_one_component_principal_of_the_realm(tmp_path):
    path = tmp_path / "gw.keytab"
    write_keytab(path, [SPN, ACCOUNT])
    assert account_from_keytab(path, "contoso.com") == "svc-gw@CONTOSO.COM"
    write_keytab(path, [SPN])
    with pytest.raises(ValueError, match="account is not set"):
        account_from_keytab(path, "CONTOSO.COM")
    assert SPN.renamed("svc@OTHER.TEST").principal == "svc@OTHER.TEST"


def test_the_format_is_bytes_in_bytes_out():
    data = pack_keytab([SPN, ACCOUNT])
    assert data[:2] == b"\x05\x02" and parse_keytab(data) == [SPN, ACCOUNT]
    assert account_principal(parse_keytab(data), "CONTOSO.COM") == "svc-gw@CONTOSO.COM"
    with pytest.raises(ValueError, match="^upload: truncated keytab"):
        parse_keytab(data[:-3], "upload")
    with pytest.raises(ValueError, match="account is not set and upload holds"):
        account_principal([SPN], "CONTOSO.COM", "upload")


def test_the_protocol_module_does_no_io():
    import ucgate.protocols.keytab as pure

    source = Path(pure.__file__).read_text()
    assert "import os" not in source and "pathlib" not in source and "open(" not in source


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.integers(min_value=0, max_value=80))
def test_any_bytes_are_entries_or_a_value_error(noise, cut):
    """Untrusted bytes (a file an operator uploaded): entries or ValueError, nothing else."""
    for data in (noise, b"\x05\x02" + noise, pack_keytab([SPN, ACCOUNT])[:cut] + noise):
        try:
            entries = parse_keytab(data, "f")
        except ValueError as e:
            assert str(e).startswith("f: ") or isinstance(e, UnicodeDecodeError)
        else:
            assert all(isinstance(x, KeytabEntry) for x in entries)
