"""ActiveSync request decoding ([MS-ASHTTP] 2.2.1.1.1): plain and base64 queries."""

from __future__ import annotations

import base64
import os
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ucgate.protocols.activesync import (
    MAX_QUERY_CHARS,
    EasRequest,
    EasRequestError,
    encode_base64_query,
    parse_eas_request,
)

PATH = "/Microsoft-Server-ActiveSync"
# MS-ASHTTP 2.2.1.1.1.1 and 2.2.1.1.1 give this request twice, as equivalents:
#   POST /Microsoft-Server-ActiveSync?Cmd=Sync&User=rmjones&DeviceId=v140Device&DeviceType=SmartPhone
#   MS-ASProtocolVersion: 14.0
#   POST /Microsoft-Server-ActiveSync?jAAJBAp2MTQwRGV2aWNlAApTbWFydFBob25l
SPEC_BASE64 = "jAAJBAp2MTQwRGV2aWNlAApTbWFydFBob25l"


def reason_of(target: str, headers: dict | None = None, **kw) -> str:
    with pytest.raises(EasRequestError) as e:
        parse_eas_request(target, headers or {}, **kw)
    return e.value.reason


def test_spec_base64_example_decodes_to_the_documented_fields():
    assert base64.b64decode(SPEC_BASE64) == bytes.fromhex("8c000904 0a") + b"v140Device" + b"\x00\x0aSmartPhone"
    r = parse_eas_request(f"{PATH}?{SPEC_BASE64}", {})
    assert r == EasRequest(
        command="Sync",
        user=None,
        device_id="v140Device",
        device_type="SmartPhone",
        protocol_version="14.0",  # byte 140
        policy_key=None,  # policy key length 0
        locale=0x0409,  # en-US
        parameters={},
        encoding="base64",
    )


def test_spec_plain_example_is_the_same_request():
    r = parse_eas_request(
        f"{PATH}?Cmd=Sync&User=rmjones&DeviceId=v140Device&DeviceType=SmartPhone",
        {"MS-ASProtocolVersion": "14.0"},
    )
    b = parse_eas_request(f"{PATH}?{SPEC_BASE64}", {})
    assert (r.command, r.device_id, r.device_type, r.protocol_version) == (
        b.command,
        b.device_id,
        b.device_type,
        b.protocol_version,
    )
    assert r.user == "rmjones" and r.encoding == "plain" and r.locale is None


def test_encoder_reproduces_the_spec_example():
    q = encode_base64_query(command="Sync", device_id="v140Device", device_type="SmartPhone", protocol_version="14.0")
    assert q == SPEC_BASE64


def test_base64_with_policy_key_user_and_parameters():
    q = encode_base64_query(
        command="SmartReply",
        device_id="ApplF17XYZ",
        device_type="iPhone",
        protocol_version="16.1",
        policy_key=3942919513,
        parameters={"User": "alice@contoso.com", "ItemId": "5:12", "CollectionId": "1", "Options": 0x01},
    )
    r = parse_eas_request(f"{PATH}?{q}", {"X-MS-PolicyKey": "3942919513"})
    assert r.command == "SmartReply" and r.protocol_version == "16.1"
    assert r.policy_key == 3942919513 and r.user == "alice@contoso.com"
    assert dict(r.parameters) == {"ItemId": "5:12", "CollectionId": "1", "Options": "1", "SaveInSent": "T"}


def test_base64_percent_encoded_and_unpadded_forms():
    q = encode_base64_query(command="Provision", device_id="abc", device_type="WP")
    assert parse_eas_request(f"{PATH}?{q.rstrip('=')}", {}).command == "Provision"
    escaped = q.replace("+", "%2B").replace("/", "%2F").replace("=", "%3D")
    assert parse_eas_request(f"{PATH}?{escaped}", {}).device_id == "abc"


def test_binary_guid_device_id_is_refused_by_default_and_hex_when_allowed():
    guid = bytes.fromhex("CF3A8C57A751343AD2D14A1F789FEFAD")
    q = encode_base64_query(command="Sync", device_id=guid, device_type="WP8")
    assert reason_of(f"{PATH}?{q}") == "device-id-not-printable"
    r = parse_eas_request(f"{PATH}?{q}", {}, allow_binary_device_id=True)
    assert r.device_id == "CF3A8C57A751343AD2D14A1F789FEFAD" and r.device_id_binary


def test_plain_query_headers_and_parameters():
    r = parse_eas_request(
        f"{PATH}/default.eas?cmd=smartforward&User=CONTOSO%5Calice&DeviceId=androidc123&DeviceType=Android"
        "&ItemId=5%3A12&SaveInSent=T&AttachmentName=my+file.pdf",
        {"ms-asprotocolversion": "12.1", "x-ms-policykey": "0"},
    )
    assert r.command == "SmartForward" and r.user == "CONTOSO\\alice"
    assert r.protocol_version == "12.1" and r.policy_key == 0
    assert dict(r.parameters) == {"ItemId": "5:12", "SaveInSent": "T", "AttachmentName": "my file.pdf"}


@pytest.mark.parametrize(
    "query, headers, reason",
    [
        ("Cmd=Sync&User=a&DeviceId=X&DeviceType=T&cmd=Ping", {}, "duplicate-parameter"),
        ("Cmd=Sync&User=a&DeviceId=X&DeviceId=Y&DeviceType=T", {}, "duplicate-parameter"),
        ("User=a&DeviceId=X&DeviceType=T", {}, "missing-command"),
        ("Cmd=Hack&User=a&DeviceId=X&DeviceType=T", {}, "unknown-command"),
        ("Cmd=Sync&User=a&DeviceType=T", {}, "missing-device-id"),
        ("Cmd=Sync&User=a&DeviceId=&DeviceType=T", {}, "missing-device-id"),
        ("Cmd=Sync&User=a&DeviceId=" + "A" * 33 + "&DeviceType=T", {}, "device-id-too-long"),
        ("Cmd=Sync&User=a&DeviceId=AB%00CD&DeviceType=T", {}, "device-id-not-printable"),
        ("Cmd=Sync&User=a&DeviceId=AB%0D%0ACD&DeviceType=T", {}, "device-id-not-printable"),
        ("Cmd=Sync&User=a&DeviceId=AB-CD&DeviceType=T", {}, "device-id-bad-characters"),
        ("Cmd=Sync&User=a&DeviceId=%C3%A9&DeviceType=T", {}, "device-id-not-printable"),
        ("Cmd=Sync&User=a&DeviceId=X", {}, "missing-device-type"),
        ("Cmd=Sync&User=a&DeviceId=X&DeviceType=" + "T" * 65, {}, "bad-device-type"),
        ("Cmd=Sync&User=a%00b&DeviceId=X&DeviceType=T", {}, "bad-user"),
        ("Cmd=Sync&User=a&DeviceId=X&DeviceType=T&ItemId=%07", {}, "bad-parameter"),
        ("Cmd=Sync&User=a&DeviceId=X&DeviceType=T&Item-Id=1", {}, "bad-query"),
        ("Cmd=Sync&User=a&DeviceId=X&DeviceType=T&ItemId=%G1", {}, "bad-query"),
        ("Cmd=Sync&User=%FF&DeviceId=X&DeviceType=T", {}, "bad-query"),
        ("Cmd=Sync&&DeviceId=X&DeviceType=T", {}, "bad-query"),
        ("&".join(f"P{chr(65 + i)}=1" for i in range(17)), {}, "too-many-parameters"),
        ("Cmd=Sync&DeviceId=X&DeviceType=T", {"MS-ASProtocolVersion": "15.0"}, "bad-protocol-version"),
        ("Cmd=Sync&DeviceId=X&DeviceType=T", {"X-MS-PolicyKey": "12ab"}, "bad-policy-key"),
        ("Cmd=Sync&DeviceId=X&DeviceType=T", {"X-MS-PolicyKey": "4294967296"}, "bad-policy-key"),
    ],
)
def test_malformed_plain_queries(query, headers, reason):
    assert reason_of(f"{PATH}?{query}", headers) == reason


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


GOOD = bytes((141, 0, 9, 4, 3)) + b"abc" + b"\x00" + b"\x02WP"


@pytest.mark.parametrize(
    "raw, reason",
    [
        (b"", "missing-query"),
        (GOOD[:1], "truncated"),
        (GOOD[:3], "truncated"),
        (GOOD[:6], "truncated"),  # inside the device id
        (GOOD[:9], "truncated"),  # policy key length missing
        (GOOD[:-1], "truncated"),  # inside the device type
        (bytes((25,)) + GOOD[1:], "bad-protocol-version"),  # 2.5 has no binary form
        (bytes((141, 5)) + GOOD[2:], "unknown-command"),  # 5 is not a command code
        (bytes((141, 0, 9, 4, 0)) + b"\x00\x02WP", "missing-device-id"),
        (bytes((141, 0, 9, 4, 33)) + b"A" * 33 + b"\x00\x02WP", "device-id-too-long"),
        (bytes((141, 0, 9, 4, 3)) + b"a-c" + b"\x00\x02WP", "device-id-bad-characters"),
        (bytes((141, 0, 9, 4, 3)) + b"abc" + b"\x03\x01\x02\x03\x02WP", "bad-policy-key"),
        (bytes((141, 0, 9, 4, 3)) + b"abc" + b"\x04\x01\x02", "truncated"),
        (bytes((141, 0, 9, 4, 3)) + b"abc" + b"\x00\x00", "missing-device-type"),
        (bytes((141, 0, 9, 4, 3)) + b"abc" + b"\x00\x02W\x00", "bad-device-type"),
        (GOOD + b"\x02\x01x", "bad-parameter-tag"),  # tag 2 is unassigned
        (GOOD + b"\x08\x01a\x08\x01b", "bad-parameter-tag"),  # User twice
        (GOOD + b"\x08\x05ab", "truncated"),
        (GOOD + b"\x07\x02\x01\x01", "bad-parameter"),  # Options is one byte
        (GOOD + b"\x08\x02\xff\xfe", "bad-parameter"),  # User not UTF-8
        (GOOD + b"\x08\x02a\x01", "bad-user"),
    ],
)
def test_malformed_base64_queries(raw, reason):
    target = f"{PATH}?{_b64(raw)}" if raw else PATH
    assert reason_of(target) == reason


def test_other_refusals():
    assert reason_of("/ucwa/x?Cmd=Sync") == "not-activesync-path"
    assert reason_of(f"{PATH}?" + "A" * (MAX_QUERY_CHARS + 4)) == "query-too-long"
    assert reason_of(f"{PATH}?jAAJ*Ap2") == "bad-base64"
    assert reason_of(f"{PATH}?jAAJB") == "bad-base64"  # impossible length
    assert reason_of(f"{PATH}?jA%ZZ") == "bad-base64"
    q = encode_base64_query(command="Sync", device_id="abc", device_type="WP", policy_key=7)
    assert reason_of(f"{PATH}?{q}", {"X-MS-PolicyKey": "8"}) == "conflicting-policy-key"
    assert parse_eas_request(f"{PATH}?{q}", {"X-MS-PolicyKey": "7"}).policy_key == 7


_EXAMPLES = int(os.environ.get("UCGATE_FUZZ_EXAMPLES", "300"))


@settings(max_examples=_EXAMPLES, deadline=None)
@given(st.binary(max_size=400))
def test_fuzz_base64_decoder_raises_only_eas_request_error(raw):
    target = f"{PATH}?{_b64(raw)}"
    try:
        r = parse_eas_request(target, {}, allow_binary_device_id=bool(raw[:1] and raw[0] & 1))
    except EasRequestError as e:
        assert e.reason != "internal-error"
    else:
        assert r.encoding == "base64" and 0 < len(r.device_id) <= 32
        assert r.device_id.isascii() and r.device_id.isalnum()


@settings(max_examples=_EXAMPLES, deadline=None)
@given(
    version=st.sampled_from([121, 140, 141, 160, 161]),
    code=st.integers(0, 23),
    tail=st.binary(max_size=60),
)
def test_fuzz_structured_prefix(version, code, tail):
    # A valid prefix makes the fuzzer reach the later fields instead of stopping at byte 0.
    raw = bytes((version, code)) + b"\x09\x04\x03abc" + tail
    try:
        parse_eas_request(f"{PATH}?{_b64(raw)}", {})
    except EasRequestError as e:
        assert e.reason != "internal-error"


@settings(max_examples=_EXAMPLES, deadline=None)
@given(st.text(max_size=300))
def test_fuzz_any_query_text(query):
    try:
        parse_eas_request(f"{PATH}?{query}", {"X-MS-PolicyKey": "1"})
    except EasRequestError as e:
        assert e.reason != "internal-error"


def test_fuzzing_stays_bounded():
    start = time.monotonic()
    for n in range(2000):
        try:
            parse_eas_request(f"{PATH}?{_b64(os.urandom(n % 300))}", {})
        except EasRequestError:
            pass
    assert time.monotonic() - start < 5
