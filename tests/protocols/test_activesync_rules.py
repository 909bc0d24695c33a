"""ActiveSync request decoding, rule by rule: both sides of every length limit, every refusal
reason of the module's table for the plain and the base64 form, the device-id rules that key
partnerships, and the encoder's bytes."""

from __future__ import annotations

import base64
import struct

import pytest

from ucgate.protocols import activesync
from ucgate.protocols.activesync import (
    BINARY_PROTOCOL_VERSIONS,
    COMMAND_CODES,
    HEADER_PROTOCOL_VERSIONS,
    MAX_DEVICE_ID_CHARS,
    MAX_DEVICE_TYPE_CHARS,
    MAX_PARAMETER_CHARS,
    MAX_PARAMETERS,
    MAX_QUERY_CHARS,
    MAX_USER_CHARS,
    PARAMETER_TAGS,
    EasRequestError,
    encode_base64_query,
    parse_eas_request,
)

PATH = "/Microsoft-Server-ActiveSync"
BASE = "Cmd=Sync&User=u&DeviceId=Dev1&DeviceType=iPhone"


def reason(target: str, headers=None, **kw) -> str:
    with pytest.raises(EasRequestError) as err:
        parse_eas_request(target, headers or {}, **kw)
    e = err.value
    assert str(e) == (f"{e.reason}: {e.message}" if e.message else e.reason)
    return e.reason


def plain(query: str, headers=None, **kw):
    return parse_eas_request(f"{PATH}?{query}", headers or {}, **kw)


def binary(raw: bytes, headers=None, **kw):
    return parse_eas_request(f"{PATH}?{base64.b64encode(raw).decode()}", headers or {}, **kw)


def binary_reason(raw: bytes, headers=None, **kw) -> str:
    return reason(f"{PATH}?{base64.b64encode(raw).decode()}", headers, **kw)


def raw_query(
    version=141,
    code=0,
    locale=0x0409,
    device_id=b"Dev1",
    key: bytes | None = None,
    device_type=b"iPhone",
    params: bytes = b"",
) -> bytes:
    out = bytes((version, code)) + struct.pack("<H", locale) + bytes((len(device_id),)) + device_id
    out += b"\x00" if key is None else bytes((len(key),)) + key
    return out + bytes((len(device_type),)) + device_type + params


# --- path and query ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        PATH,
        PATH + "/",
        PATH.lower(),
        PATH.upper(),
        PATH + "/default.eas",
        PATH + "/Default.EAS",
        PATH + "/default.eas/",
    ],
)
def test_activesync_paths(path):
    assert parse_eas_request(f"{path}?{BASE}", {}).command == "Sync"


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/Microsoft-Server-ActiveSyncX",
        "/Microsoft-Server-ActiveSync/x",
        "/ews/Microsoft-Server-ActiveSync",
        "Microsoft-Server-ActiveSync",
        PATH + "/default.eas/x",
    ],
)
def test_other_paths(path):
    assert reason(f"{path}?{BASE}") == "not-activesync-path"


def test_query_presence_and_length():
    assert reason(PATH) == "missing-query"
    assert reason(PATH + "?") == "missing-query"
    assert reason(b"/Microsoft-Server-ActiveSync?Cmd=Sync") == "bad-query"  # type: ignore[arg-type]
    at_limit = "A" * MAX_QUERY_CHARS
    assert reason(f"{PATH}?{at_limit}") != "query-too-long"
    assert reason(f"{PATH}?{at_limit}A") == "query-too-long"
    long_plain = BASE + "&ItemId=" + "x" * (MAX_QUERY_CHARS - len(BASE) - len("&ItemId="))
    assert len(long_plain) == MAX_QUERY_CHARS and reason(f"{PATH}?{long_plain}") == "bad-parameter"


def test_internal_errors_keep_the_contract(monkeypatch):
    def broken(*args):
        raise KeyError("boom")

    monkeypatch.setattr(activesync, "_parse", broken)
    with pytest.raises(EasRequestError) as err:
        parse_eas_request(f"{PATH}?{BASE}", {})
    assert err.value.reason == "internal-error" and "KeyError" in err.value.message


# --- which form -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "query, form",
    [
        ("a=b", "plain"),
        ("a%3Db", "plain"),
        ("a%3db", "plain"),
        ("jAAJ&x", "plain"),
        ("jAAJBAp2", "base64"),
        ("jAAJBA==", "base64"),
        ("jAAJBA%3D%3D", "base64"),
        ("jAAJBA%3d=", "base64"),
        ("jAAJBA%3D", "base64"),
    ],
)
def test_plain_or_base64(query, form):
    assert activesync._is_plain(query) is (form == "plain")


# --- plain form -------------------------------------------------------------------------------


def test_plain_fields():
    r = plain(
        "cmd=FOLDERSYNC&user=CONTOSO%5Cbob&deviceid=ABC123&devicetype=Windows+Mail&CollectionId=7",
        {"MS-ASProtocolVersion": " 16.1 ", "x-ms-PolicyKey": " 0042 "},
    )
    assert (r.command, r.user, r.device_id, r.device_type) == ("FolderSync", "CONTOSO\\bob", "ABC123", "Windows Mail")
    assert (r.protocol_version, r.policy_key, r.locale, r.encoding) == ("16.1", 42, None, "plain")
    assert dict(r.parameters) == {"CollectionId": "7"} and not r.device_id_binary
    with pytest.raises(TypeError):
        r.parameters["x"] = "y"  # type: ignore[index]
    r = plain("Cmd=GetHierarchy&DeviceId=X&DeviceType=T&User=")
    assert r.command == "GetHierarchy" and r.user is None
    assert r.protocol_version is None and r.policy_key is None


def test_parameter_count_boundary():
    extra = [f"P{chr(65 + i)}=1" for i in range(MAX_PARAMETERS - 4)]
    assert len(plain("&".join([BASE, *extra])).parameters) == 12
    assert reason(f"{PATH}?" + "&".join([BASE, *extra, "PZ=1"])) == "too-many-parameters"


@pytest.mark.parametrize(
    "field, limit, too_long",
    [
        ("DeviceId", MAX_DEVICE_ID_CHARS, "device-id-too-long"),
        ("DeviceType", MAX_DEVICE_TYPE_CHARS, "bad-device-type"),
        ("User", MAX_USER_CHARS, "bad-user"),
        ("ItemId", MAX_PARAMETER_CHARS, "bad-parameter"),
    ],
)
def test_plain_length_boundaries(field, limit, too_long):
    def query(value):
        fields = {"Cmd": "Sync", "User": "u", "DeviceId": "Dev1", "DeviceType": "iPhone", field: value}
        return "&".join(f"{k}={v}" for k, v in fields.items())

    r = plain(query("A" * limit))
    assert (
        {"DeviceId": r.device_id, "DeviceType": r.device_type, "User": r.user}.get(field) or r.parameters[field]
    ) == "A" * limit
    assert reason(f"{PATH}?{query('A' * (limit + 1))}") == too_long


@pytest.mark.parametrize(
    "query, expected",
    [
        ("Cmd=&DeviceId=X&DeviceType=T", "missing-command"),
        ("Cmd=Hack&DeviceId=X&DeviceType=T", "unknown-command"),
        ("Cmd=Sync&DeviceType=T", "missing-device-id"),
        ("Cmd=Sync&DeviceId=&DeviceType=T", "missing-device-id"),
        ("Cmd=Sync&DeviceId=A%20B&DeviceType=T", "device-id-not-printable"),
        ("Cmd=Sync&DeviceId=A%7FB&DeviceType=T", "device-id-not-printable"),
        ("Cmd=Sync&DeviceId=" + "A" * 40 + "%00&DeviceType=T", "device-id-not-printable"),  # before length
        ("Cmd=Sync&DeviceId=A~B&DeviceType=T", "device-id-bad-characters"),
        ("Cmd=Sync&DeviceId=A_B&DeviceType=T", "device-id-bad-characters"),
        ("Cmd=Sync&DeviceId=" + "-" * 33 + "&DeviceType=T", "device-id-too-long"),  # length before charset
        ("Cmd=Sync&DeviceId=X&DeviceType=", "missing-device-type"),
        ("Cmd=Sync&DeviceId=X&DeviceType=a%7Fb", "bad-device-type"),
        ("Cmd=Sync&DeviceId=X&DeviceType=a%1Fb", "bad-device-type"),
        ("Cmd=Sync&DeviceId=X&DeviceType=%C3%A9", "bad-device-type"),
        ("Cmd=Sync&DeviceId=X&DeviceType=T&User=a%1Fb", "bad-user"),
        ("Cmd=Sync&DeviceId=X&DeviceType=T&User=a%C2%9Fb", "bad-user"),
        ("Cmd=Sync&DeviceId=X&DeviceType=T&User=a%7Fb", "bad-user"),
        ("Cmd=Sync&DeviceId=X&DeviceType=T&ItemId=", "bad-parameter"),
        ("Cmd=Sync&DeviceId=X&DeviceType=T&ItemId=a%0Ab", "bad-parameter"),
        ("Cmd=Sync&DeviceId=X&DeviceType=T&ItemId=a%C2%80b", "bad-parameter"),
        ("Cmd=Sync&DeviceId=X&DeviceType=T&ItemId", "bad-query"),
        ("Cmd=Sync&DeviceId=X&DeviceType=T&Item2=1", "bad-query"),
        ("Cmd=Sync&DeviceId=X&DeviceType=T&=1", "bad-query"),
        ("Cmd=Sync&DeviceId=X&DeviceType=T&ItemId=%4", "bad-query"),
        ("Cmd=Sync&DeviceId=X&DeviceType=T&ItemId=a%", "bad-query"),
        ("Cmd=Sync&DeviceId=X&DeviceType=T&ItemId=%C3", "bad-query"),
        ("Cmd=Sync&DeviceId=X&DeviceType=T&deviceid=Y", "duplicate-parameter"),
        ("Cmd=Sync&DeviceId=X&DeviceType=T&ITEMID=1&itemid=1", "duplicate-parameter"),
    ],
)
def test_plain_refusals(query, expected):
    assert reason(f"{PATH}?{query}") == expected


def test_plain_values_that_pass():
    r = plain("Cmd=Sync&DeviceId=X&DeviceType=a%20b~&User=j%C3%B6rg%C2%A0x&ItemId=a%20b%C2%A0")
    assert (r.device_type, r.user, r.parameters["ItemId"]) == ("a b~", "jörg\xa0x", "a b\xa0")
    assert plain("Cmd=Sync&DeviceId=X&DeviceType=T&ItemId=%41%62").parameters["ItemId"] == "Ab"
    assert plain("Cmd=sync&DeviceId=azAZ09&DeviceType=T").device_id == "azAZ09"


@pytest.mark.parametrize("version", sorted(HEADER_PROTOCOL_VERSIONS))
def test_header_protocol_versions(version):
    assert plain(BASE, {"MS-ASProtocolVersion": version}).protocol_version == version


@pytest.mark.parametrize(
    "value, expected",
    [
        ("0", 0),
        ("4294967295", 2**32 - 1),
        ("0000000001", 1),
        (" 9 ", 9),
        ("4294967296", None),
        ("12345678901", None),
        ("", None),
        ("-1", None),
        ("0x10", None),
        ("1 2", None),
        ("١", None),
    ],
)
def test_policy_key_header(value, expected):
    headers = {"X-MS-PolicyKey": value}
    if expected is None:
        assert reason(f"{PATH}?{BASE}", headers) == "bad-policy-key"
    else:
        assert plain(BASE, headers).policy_key == expected


@pytest.mark.parametrize("value", ["15.0", "14", "", "14.1.0", "v14.1"])
def test_bad_protocol_version_header(value):
    assert reason(f"{PATH}?{BASE}", {"ms-asprotocolversion": value}) == "bad-protocol-version"


# --- base64 form -------------------------------------------------------------------------------


@pytest.mark.parametrize("byte, version", sorted(BINARY_PROTOCOL_VERSIONS.items()))
def test_binary_versions(byte, version):
    assert binary(raw_query(version=byte)).protocol_version == version


@pytest.mark.parametrize("byte", [0, 120, 25, 142, 162, 255])
def test_binary_bad_versions(byte):
    assert binary_reason(raw_query(version=byte)) == "bad-protocol-version"


def test_binary_command_codes():
    for code in range(256):
        if code in COMMAND_CODES:
            assert binary(raw_query(code=code)).command == COMMAND_CODES[code]
        elif code < 30:
            assert binary_reason(raw_query(code=code)) == "unknown-command", code


def test_binary_fields():
    r = binary(raw_query(locale=0x0407, key=struct.pack("<I", 0xDEADBEEF), device_id=b"a" * 32))
    assert (r.locale, r.policy_key, r.device_id, r.encoding) == (0x0407, 0xDEADBEEF, "a" * 32, "base64")
    assert r.user is None and dict(r.parameters) == {} and not r.device_id_binary


def test_binary_device_id_rules():
    assert binary_reason(raw_query(device_id=b"")) == "missing-device-id"
    assert binary_reason(raw_query(device_id=b"a" * 33)) == "device-id-too-long"
    assert binary_reason(raw_query(device_id=b"a-c")) == "device-id-bad-characters"
    assert binary_reason(raw_query(device_id=b"a~c")) == "device-id-bad-characters"
    assert binary_reason(raw_query(device_id=b"a c")) == "device-id-not-printable"
    assert binary_reason(raw_query(device_id=b"a\tc")) == "device-id-not-printable"
    assert binary_reason(raw_query(device_id=b"\xcf\x3a")) == "device-id-not-printable"
    guid = bytes(range(0xF0, 0x100))
    r = binary(raw_query(device_id=guid), allow_binary_device_id=True)
    assert (r.device_id, r.device_id_binary) == (guid.hex().upper(), True) and len(r.device_id) == 32
    assert binary_reason(raw_query(device_id=guid + b"\x01"), allow_binary_device_id=True) == "device-id-too-long"
    assert binary(raw_query(device_id=b"a-c"), allow_binary_device_id=True).device_id == "612D63"
    assert binary(raw_query(device_id=b"abc"), allow_binary_device_id=True).device_id_binary is False


def test_binary_policy_key_rules():
    for length in (1, 2, 3, 5, 255):
        assert binary_reason(raw_query(key=bytes(length))) == "bad-policy-key"
    assert binary(raw_query(key=None), {"X-MS-PolicyKey": "77"}).policy_key == 77
    assert binary(raw_query(key=struct.pack("<I", 77)), {"X-MS-PolicyKey": "77"}).policy_key == 77
    assert binary_reason(raw_query(key=struct.pack("<I", 77)), {"X-MS-PolicyKey": "78"}) == "conflicting-policy-key"
    assert binary_reason(raw_query(key=struct.pack("<I", 77)), {"X-MS-PolicyKey": "x"}) == "bad-policy-key"
    assert binary(raw_query(key=bytes(4))).policy_key == 0


def test_binary_device_type_rules():
    assert binary(raw_query(device_type=b"T" * MAX_DEVICE_TYPE_CHARS)).device_type == "T" * 64
    assert binary_reason(raw_query(device_type=b"T" * (MAX_DEVICE_TYPE_CHARS + 1))) == "bad-device-type"
    assert binary_reason(raw_query(device_type=b"")) == "missing-device-type"
    assert binary_reason(raw_query(device_type=b"\xe9")) == "bad-device-type"
    assert binary_reason(raw_query(device_type=b"a\x7f")) == "bad-device-type"
    assert binary(raw_query(device_type=b"Windows Mail")).device_type == "Windows Mail"


def param(tag: int, value: bytes) -> bytes:
    return bytes((tag, len(value))) + value


def test_binary_parameters():
    body = (
        param(0, b"file.pdf")
        + param(1, b"5")
        + param(3, "5:1é".encode())
        + param(4, b"RgAAAA")
        + param(6, b"2024")
        + param(8, b"alice@contoso.com")
    )
    r = binary(raw_query(params=body + param(7, b"\x03")))
    assert r.user == "alice@contoso.com"
    assert dict(r.parameters) == {
        "AttachmentName": "file.pdf",
        "CollectionId": "5",
        "ItemId": "5:1é",
        "LongId": "RgAAAA",
        "Occurrence": "2024",
        "Options": "3",
        "SaveInSent": "T",
    }
    assert dict(binary(raw_query(params=param(7, b"\x02"))).parameters) == {"Options": "2"}
    assert dict(binary(raw_query(params=param(7, b"\x01"))).parameters) == {"Options": "1", "SaveInSent": "T"}
    assert dict(binary(raw_query(params=param(7, b"\x00"))).parameters) == {"Options": "0"}
    assert binary(raw_query(params=param(8, b""))).user is None
    assert binary(raw_query(params=param(3, b"x" * 255))).parameters["ItemId"] == "x" * 255
    assert binary(raw_query(params=param(8, b"u" * 255))).user == "u" * 255


@pytest.mark.parametrize(
    "params, expected",
    [
        (param(2, b"x"), "bad-parameter-tag"),
        (param(5, b"x"), "bad-parameter-tag"),
        (param(9, b"x"), "bad-parameter-tag"),
        (param(255, b"x"), "bad-parameter-tag"),
        (param(1, b"1") + param(1, b"2"), "bad-parameter-tag"),
        (param(7, b"\x01") + param(7, b"\x01"), "bad-parameter-tag"),
        (param(7, b""), "bad-parameter"),
        (param(7, b"\x01\x00"), "bad-parameter"),
        (param(3, b"\xff"), "bad-parameter"),
        (param(3, b""), "bad-parameter"),
        (param(3, b"a\x00"), "bad-parameter"),
        (param(8, b"\xc3"), "bad-parameter"),
        (param(8, b"a\x1b"), "bad-user"),
        (b"\x03", "truncated"),
        (b"\x03\x05abcd", "truncated"),
    ],
)
def test_binary_parameter_refusals(params, expected):
    assert binary_reason(raw_query(params=params)) == expected


def test_truncation_at_every_byte():
    head = raw_query(key=bytes(4))
    full = head + param(1, b"12")
    for cut in range(1, len(full)):
        if cut == len(head):
            assert binary(full[:cut]).parameters == {}
            continue
        r = binary_reason(full[:cut])
        assert r in ("truncated", "missing-device-type", "bad-device-type"), (cut, r)
    assert binary(full).parameters["CollectionId"] == "12"


@pytest.mark.parametrize(
    "query, expected",
    [
        ("jAAJ-Ap2", "bad-base64"),
        ("jAAJ_Ap2", "bad-base64"),
        ("jAAJB", "bad-base64"),
        ("jAAJ%C3%A9", "bad-base64"),
        ("jA%ZZ", "bad-base64"),
        ("jAAJ===", "bad-base64"),
        ("", "missing-query"),
    ],
)
def test_bad_base64(query, expected):
    assert reason(f"{PATH}?{query}") == expected


def test_base64_padding_and_escapes():
    q = encode_base64_query(command="Ping", device_id="Dev1", device_type="T1")
    assert len(q) % 4 == 0
    for variant in (q, q.rstrip("="), q.replace("=", "%3D"), q.replace("/", "%2F").replace("+", "%2B")):
        assert parse_eas_request(f"{PATH}?{variant}", {}).command == "Ping"


# --- encoder -----------------------------------------------------------------------------------


def test_encoder_bytes():
    q = encode_base64_query(
        command="SmartForward",
        device_id="Dev1",
        device_type="iPhone",
        protocol_version="16.1",
        locale=0x0407,
        policy_key=0x01020304,
        parameters={"ItemId": "5:1", "Options": 3},
    )
    assert base64.b64decode(q) == raw_query(
        version=161, code=2, locale=0x0407, key=b"\x04\x03\x02\x01", params=param(3, b"5:1") + param(7, b"\x03")
    )
    assert base64.b64decode(encode_base64_query(command="Sync", device_id=b"\x01\x02", device_type="")) == (
        raw_query(version=141, device_id=b"\x01\x02", device_type=b"")
    )
    assert {v: k for k, v in PARAMETER_TAGS.items()}["User"] == 8


def test_encoder_limits():
    encode_base64_query(command="Sync", device_id="a" * 255, device_type="t" * 255)
    for kw in ({"device_id": ""}, {"device_id": "a" * 256}, {"device_type": "t" * 256}):
        args = dict(command="Sync", device_id="a", device_type="t")
        args.update(kw)
        with pytest.raises(ValueError):
            encode_base64_query(**args)
    encode_base64_query(command="Sync", device_id="a", device_type="t", parameters={"ItemId": "x" * 255})
    with pytest.raises(ValueError):
        encode_base64_query(command="Sync", device_id="a", device_type="t", parameters={"ItemId": "x" * 256})


def test_error_type():
    e = EasRequestError("bad-user")
    assert (str(e), e.reason, e.message) == ("bad-user", "bad-user", "")
    e = EasRequestError("bad-user", "why")
    assert (str(e), e.reason, e.message) == ("bad-user: why", "bad-user", "why")


# --- found by mutation testing ------------------------------------------------------------------


def test_plain_form_decided_by_an_inner_equals_sign():
    for query in ("a=b=", "a=b==", "ab=c%3D", "a=b%3D", "a=b%3d%3D", "x=1=%3D="):
        assert activesync._is_plain(query), query
    for query in ("ab=", "ab==", "ab%3D", "ab%3D%3D", "ab%3d="):
        assert not activesync._is_plain(query), query


def test_base64_with_one_padding_character():
    q = encode_base64_query(command="Ping", device_id="Dev1", device_type="T12")
    assert q.endswith("=") and not q.endswith("==")
    unpadded = q.rstrip("=")
    assert len(unpadded) % 4 == 3
    assert parse_eas_request(f"{PATH}?{unpadded}", {}).device_type == "T12"


def test_base64_padding_that_cannot_be_completed():
    for query in ("jAAJB==", "j==", "jAA=", "jAAJBA=="):
        r = reason(f"{PATH}?{query}")
        assert r in ("bad-base64", "truncated"), (query, r)
    assert reason(f"{PATH}?jAAJB==") == "bad-base64"
    assert reason(f"{PATH}?j==") == "bad-base64"


def test_plain_values_may_contain_equals_signs_and_lower_case_escapes():
    r = plain(BASE + "&ItemId=a=b&LongId=5%3a12%2f3")
    assert r.parameters["ItemId"] == "a=b" and r.parameters["LongId"] == "5:12/3"
