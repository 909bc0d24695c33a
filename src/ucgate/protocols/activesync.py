"""Exchange ActiveSync request decoding (sans-I/O): which command, user and device a request is.

An ActiveSync request is ``POST /Microsoft-Server-ActiveSync?<query>`` where the query is either
the plain text form ([MS-ASHTTP] 2.2.1.1.1.2, ``Cmd=Sync&User=…&DeviceId=…&DeviceType=…``) or
the base64-encoded binary form ([MS-ASHTTP] 2.2.1.1.1.1, e.g. ``?jAAJBAp2MTQwRGV2aWNlAApTbWFydFBob25l``)
that packs the protocol version, command code, locale, device id, policy key, device type and
command parameters into bytes. With the plain form the protocol version and policy key come
from the ``MS-ASProtocolVersion`` and ``X-MS-PolicyKey`` headers.

The device id is what a gateway keys device partnerships on, so this decoder is strict: the
gateway and Exchange must never disagree about which device, user or command a request is.
Duplicate parameters (ASP.NET would join them with a comma), a policy key given twice with two
values, unknown command codes, over-long or non-printable fields are all refused with
:class:`EasRequestError`. Its ``reason`` is a stable code the caller can map to a decision:

===========================  ==================================================================
reason                        meaning
===========================  ==================================================================
not-activesync-path           the path is not ``/Microsoft-Server-ActiveSync``
query-too-long                query over :data:`MAX_QUERY_CHARS`
missing-query                 no query at all
bad-query                     plain query not ``name=value&…``, bad escapes or control chars
duplicate-parameter           the same parameter twice (names compare case-insensitively)
too-many-parameters           more than :data:`MAX_PARAMETERS`
missing-command               no ``Cmd``
unknown-command               ``Cmd`` or command code not an ActiveSync command
missing-device-id             no device id, or an empty one
device-id-too-long            device id over 32 characters (MS-ASHTTP ``1*32(ALPHA / DIGIT)``)
device-id-not-printable       device id with control, non-ASCII or binary bytes
device-id-bad-characters      printable device id with characters other than letters and digits
missing-device-type           no device type
bad-device-type               device type too long or not printable
bad-user                      user too long or not printable
bad-parameter                 another parameter too long or not printable
bad-protocol-version          unknown protocol version (header or byte)
bad-policy-key                policy key not a uint32 (header) or length not 0/4 (binary)
conflicting-policy-key        binary policy key and ``X-MS-PolicyKey`` header disagree
bad-base64                    the binary query is not valid base64
truncated                     the binary query ends inside a field
bad-parameter-tag             unknown or repeated command parameter tag (binary)
===========================  ==================================================================
"""

from __future__ import annotations

import base64
import binascii
import re
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal
from urllib.parse import unquote, unquote_plus

from ..errors import UcgateError

# --- limits -------------------------------------------------------------------------------
# IIS's default maxQueryString is 2048; real ActiveSync queries are < 200 characters (the
# longest plain ones carry an ItemId/LongId). 1024 refuses nothing real and bounds all work.
MAX_QUERY_CHARS = 1024
# MS-ASHTTP 2.2.1.1.1.2: device-id = 1*32(ALPHA / DIGIT). The binary form carries "a string or
# a GUID" (16 bytes) whose details are those of the plain form, so 32 bounds both.
MAX_DEVICE_ID_CHARS = 32
# No maximum in the spec (device-type = 1*VCHAR; the binary length byte allows 255). Real types
# are short: "iPhone", "Android", "WindowsMail", "Outlook", "SAMSUNGSMG991B". Exchange shows
# them in EAC; 64 is generous.
MAX_DEVICE_TYPE_CHARS = 64
# user-name = 1*VCHAR; a UPN is at most 1024 characters in AD but the query is bounded anyway.
MAX_USER_CHARS = 256
# Other parameters (ItemId, LongId, AttachmentName...): the binary Length byte allows 255.
MAX_PARAMETER_CHARS = 255
# Plain form: Cmd, User, DeviceId, DeviceType plus at most a handful of command parameters.
MAX_PARAMETERS = 16

ACTIVESYNC_PATH = "/microsoft-server-activesync"

# [MS-ASHTTP] 2.2.1.1.1.1.2 Command Codes.
COMMAND_CODES: dict[int, str] = {
    0: "Sync",
    1: "SendMail",
    2: "SmartForward",
    3: "SmartReply",
    4: "GetAttachment",
    9: "FolderSync",
    10: "FolderCreate",
    11: "FolderDelete",
    12: "FolderUpdate",
    13: "MoveItems",
    14: "GetItemEstimate",
    15: "MeetingResponse",
    16: "Search",
    17: "Settings",
    18: "Ping",
    19: "ItemOperations",
    20: "Provision",
    21: "ResolveRecipients",
    22: "ValidateCert",
    23: "Find",
}
# Commands a plain query may name: the binary table plus the protocol 2.x commands that
# Exchange still lists in MS-ASProtocolCommands (they have no binary code).
PLAIN_COMMANDS: dict[str, str] = {
    name.lower(): name
    for name in (
        *COMMAND_CODES.values(),
        "GetHierarchy",
        "CreateCollection",
        "DeleteCollection",
        "MoveCollection",
    )
}

# [MS-ASHTTP] 2.2.1.1.1.1.3 Command Parameters (binary tags).
PARAMETER_TAGS: dict[int, str] = {
    0: "AttachmentName",
    1: "CollectionId",
    3: "ItemId",
    4: "LongId",
    6: "Occurrence",
    7: "Options",
    8: "User",
}
OPTION_SAVE_IN_SENT = 0x01
OPTION_ACCEPT_MULTIPART = 0x02

# Protocol version byte (MS-ASHTTP 2.2.1.1.1.1: "SHOULD be 141, 160 or 161 ... MAY be 140 or
# 121"; 2.5 and 12.0 have no binary form) and the MS-ASProtocolVersion header values (2.2.1.1.2.6).
BINARY_PROTOCOL_VERSIONS: dict[int, str] = {
    121: "12.1",
    140: "14.0",
    141: "14.1",
    160: "16.0",
    161: "16.1",
}
HEADER_PROTOCOL_VERSIONS = frozenset({"2.0", "2.1", "2.5", "12.0", "12.1", "14.0", "14.1", "16.0", "16.1"})

_DEVICE_ID_RE = re.compile(r"[A-Za-z0-9]+")
_PARAM_NAME_RE = re.compile(r"[A-Za-z]+")
_VCHAR_SET = frozenset(chr(c) for c in range(0x21, 0x7F))
_BASE64_RE = re.compile(r"[A-Za-z0-9+/]+={0,2}")
_POLICY_KEY_RE = re.compile(r"[0-9]{1,10}")


class EasRequestError(UcgateError):
    """A request line we refuse. ``reason`` is a stable code (see the module docstring)."""

    def __init__(self, reason: str, message: str = "") -> None:
        super().__init__(reason, message)
        self.message = message


@dataclass(frozen=True, slots=True)
class EasRequest:
    """What an ActiveSync request says about itself.

    ``parameters`` holds the command parameters other than Cmd/User/DeviceId/DeviceType, by
    their plain-form names; from a binary query the Options bitmask appears as ``Options``
    (decimal) and, when its SaveInSent bit is set, as ``SaveInSent=T`` as in the plain form.
    ``device_id_binary`` is True when the binary query carried the id as raw bytes (a GUID) and
    ``device_id`` is their upper-case hex (only with ``allow_binary_device_id``).
    """

    command: str
    user: str | None
    device_id: str
    device_type: str
    protocol_version: str | None
    policy_key: int | None
    locale: int | None
    parameters: Mapping[str, str] = field(default_factory=dict)
    encoding: Literal["plain", "base64"] = "plain"
    device_id_binary: bool = False


def parse_eas_request(
    target: str,
    headers: Mapping[str, str],
    *,
    allow_binary_device_id: bool = False,
) -> EasRequest:
    """Decode an ActiveSync request from its target (path and query) and headers.

    Args:
        target: the origin-form request target, e.g.
            ``/Microsoft-Server-ActiveSync?Cmd=Sync&User=a&DeviceId=X1&DeviceType=iPhone``.
        headers: request headers; names are compared case-insensitively.
        allow_binary_device_id: accept a binary query whose device id is raw bytes (Windows
            Phone sends a 16-byte GUID) and report it as upper-case hex, the spelling the same
            device uses in a plain query. Off by default: such ids are refused as
            ``device-id-not-printable``.

    Returns:
        The decoded :class:`EasRequest`.

    Raises:
        EasRequestError: for anything malformed, ambiguous or over a limit — never another
        exception.
    """
    try:
        return _parse(target, headers, allow_binary_device_id)
    except EasRequestError:
        raise
    except Exception as e:  # noqa: BLE001  # pragma: no cover - a bug; keep the contract for callers
        raise EasRequestError("internal-error", f"{type(e).__name__}: {e}") from None


def _parse(target: str, headers: Mapping[str, str], allow_binary: bool) -> EasRequest:
    if not isinstance(target, str):
        raise EasRequestError("bad-query", "target is not a string")
    path, sep, query = target.partition("?")
    lpath = path.lower().rstrip("/")
    if lpath not in (ACTIVESYNC_PATH, ACTIVESYNC_PATH + "/default.eas"):
        raise EasRequestError("not-activesync-path", path[:100])
    if len(query) > MAX_QUERY_CHARS:
        raise EasRequestError("query-too-long", f"{len(query)} characters, limit {MAX_QUERY_CHARS}")
    if not query:
        raise EasRequestError("missing-query", "no Cmd/User/DeviceId/DeviceType")
    hdrs = {str(k).lower(): str(v) for k, v in headers.items()}
    if _is_plain(query):
        return _parse_plain(query, hdrs)
    return _parse_base64(query, hdrs, allow_binary)


def _is_plain(query: str) -> bool:
    """Plain queries are ``name=value`` pairs; a base64 query has "=" only as trailing padding
    (possibly percent-encoded as %3D)."""
    if "&" in query:
        return True
    bare = query
    while bare.endswith("=") or bare.upper().endswith("%3D"):
        bare = bare[:-1] if bare.endswith("=") else bare[:-3]
    return "=" in bare or "%3d" in bare.lower()


# --- plain text query ---------------------------------------------------------------------


def _printable(value: str) -> bool:
    """Text a log line and a database can hold: no C0/C1 controls, DEL or NUL. Spaces are
    allowed once decoded (``AttachmentName=my%20file.pdf``); non-ASCII too (UTF-8 user names)."""
    return bool(value) and not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in value)


def _parse_plain(query: str, hdrs: dict[str, str]) -> EasRequest:
    pairs: dict[str, tuple[str, str]] = {}
    items = query.split("&")
    if len(items) > MAX_PARAMETERS:
        raise EasRequestError("too-many-parameters", f"{len(items)}, limit {MAX_PARAMETERS}")
    for item in items:
        name, eq, raw = item.partition("=")
        if not eq or not _PARAM_NAME_RE.fullmatch(name):
            raise EasRequestError("bad-query", f"not name=value: {item[:40]!r}")
        if "%" in raw and not re.fullmatch(r"(?:[^%]|%[0-9A-Fa-f]{2})*", raw):
            raise EasRequestError("bad-query", f"bad percent-escape in {name}")
        try:
            # ASP.NET (HttpUtility.UrlDecode) reads "+" as a space, so we do too.
            value = unquote_plus(raw, encoding="utf-8", errors="strict")
        except UnicodeDecodeError:
            raise EasRequestError("bad-query", f"{name} is not UTF-8") from None
        key = name.lower()
        if key in pairs:
            raise EasRequestError("duplicate-parameter", name)
        pairs[key] = (name, value)

    def take(key: str) -> str | None:
        got = pairs.pop(key, None)
        return None if got is None else got[1]

    command_raw = take("cmd")
    if not command_raw:
        raise EasRequestError("missing-command", "no Cmd parameter")
    command = PLAIN_COMMANDS.get(command_raw.lower())
    if command is None:
        raise EasRequestError("unknown-command", command_raw[:40])
    user = _check_user(take("user"))
    device_id = _check_text_device_id(take("deviceid"))
    device_type = _check_device_type(take("devicetype"))
    parameters = {}
    for name, value in pairs.values():
        parameters[name] = _check_parameter(name, value)
    return EasRequest(
        command=command,
        user=user,
        device_id=device_id,
        device_type=device_type,
        protocol_version=_header_protocol_version(hdrs),
        policy_key=_header_policy_key(hdrs),
        locale=None,
        parameters=MappingProxyType(parameters),
        encoding="plain",
    )


def _check_user(user: str | None) -> str | None:
    if user is None or user == "":
        return None
    if len(user) > MAX_USER_CHARS or not _printable(user):
        raise EasRequestError("bad-user", "user too long or not printable")
    return user


def _check_text_device_id(device_id: str | None) -> str:
    if not device_id:
        raise EasRequestError("missing-device-id", "no DeviceId")
    if not all(c in _VCHAR_SET for c in device_id):
        raise EasRequestError("device-id-not-printable", repr(device_id[:40]))
    if len(device_id) > MAX_DEVICE_ID_CHARS:
        raise EasRequestError("device-id-too-long", f"{len(device_id)} characters, limit {MAX_DEVICE_ID_CHARS}")
    if not _DEVICE_ID_RE.fullmatch(device_id):
        raise EasRequestError("device-id-bad-characters", "device ids are letters and digits")
    return device_id


def _check_device_type(device_type: str | None) -> str:
    if not device_type:
        raise EasRequestError("missing-device-type", "no DeviceType")
    if len(device_type) > MAX_DEVICE_TYPE_CHARS or not all(" " <= c <= "~" for c in device_type):
        raise EasRequestError("bad-device-type", "device type too long or not printable ASCII")
    return device_type


def _check_parameter(name: str, value: str) -> str:
    if len(value) > MAX_PARAMETER_CHARS or not _printable(value):
        raise EasRequestError("bad-parameter", f"{name} too long or not printable")
    return value


def _header_protocol_version(hdrs: dict[str, str]) -> str | None:
    value = hdrs.get("ms-asprotocolversion")
    if value is None:
        return None
    value = value.strip()
    if value not in HEADER_PROTOCOL_VERSIONS:
        raise EasRequestError("bad-protocol-version", value[:20])
    return value


def _header_policy_key(hdrs: dict[str, str]) -> int | None:
    value = hdrs.get("x-ms-policykey")
    if value is None:
        return None
    value = value.strip()
    if not _POLICY_KEY_RE.fullmatch(value) or int(value) >= 2**32:
        # MS-ASPROV 2.2.2.42: "SHOULD be a string representation of a 32-bit unsigned
        # integer"; Exchange issues only such keys, so anything else is not one of ours.
        raise EasRequestError("bad-policy-key", "X-MS-PolicyKey is not a uint32")
    return int(value)


# --- base64 binary query ------------------------------------------------------------------


class _Bytes:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int, what: str) -> bytes:
        if n > len(self.data) - self.pos:
            raise EasRequestError("truncated", f"query ends inside {what}")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    @property
    def left(self) -> int:
        return len(self.data) - self.pos


def _decode_base64(query: str) -> bytes:
    # Clients may percent-encode "+", "/" and "="; "+" is a base64 digit here, never a space.
    text = unquote(query, encoding="ascii", errors="strict") if "%" in query else query
    if not _BASE64_RE.fullmatch(text):
        raise EasRequestError("bad-base64", "not base64 (RFC 2045 alphabet)")
    if len(text) % 4 == 1:
        raise EasRequestError("bad-base64", "impossible base64 length")
    text += "=" * (-len(text) % 4)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise EasRequestError("bad-base64", "not base64") from None


def _parse_base64(query: str, hdrs: dict[str, str], allow_binary: bool) -> EasRequest:
    try:
        data = _decode_base64(query)
    except UnicodeDecodeError:
        raise EasRequestError("bad-base64", "non-ASCII escape") from None
    r = _Bytes(data)
    version_byte = r.u8("protocol version")
    version = BINARY_PROTOCOL_VERSIONS.get(version_byte)
    if version is None:
        raise EasRequestError("bad-protocol-version", f"version byte {version_byte}")
    code = r.u8("command code")
    command = COMMAND_CODES.get(code)
    if command is None:
        raise EasRequestError("unknown-command", f"command code {code}")
    locale = int.from_bytes(r.take(2, "locale"), "little")

    id_len = r.u8("device id length")
    if id_len == 0:
        raise EasRequestError("missing-device-id", "device id length 0")
    if id_len > MAX_DEVICE_ID_CHARS:
        raise EasRequestError("device-id-too-long", f"{id_len} bytes, limit {MAX_DEVICE_ID_CHARS}")
    raw_id = r.take(id_len, "device id")
    device_id, device_id_binary = _binary_device_id(raw_id, allow_binary)

    key_len = r.u8("policy key length")
    if key_len not in (0, 4):
        raise EasRequestError("bad-policy-key", f"policy key length {key_len} (only 0 or 4)")
    policy_key = int.from_bytes(r.take(4, "policy key"), "little") if key_len == 4 else None
    header_key = _header_policy_key(hdrs)
    if header_key is not None:
        if policy_key is None:
            policy_key = header_key
        elif header_key != policy_key:
            raise EasRequestError("conflicting-policy-key", "query and X-MS-PolicyKey differ")

    type_len = r.u8("device type length")
    raw_type = r.take(type_len, "device type")
    try:
        device_type = raw_type.decode("ascii")
    except UnicodeDecodeError:
        raise EasRequestError("bad-device-type", "device type is not ASCII") from None
    device_type = _check_device_type(device_type)

    user: str | None = None
    parameters: dict[str, str] = {}
    seen: set[int] = set()
    while r.left:
        tag = r.u8("parameter tag")
        name = PARAMETER_TAGS.get(tag)
        if name is None or tag in seen:
            raise EasRequestError("bad-parameter-tag", f"tag {tag}")
        seen.add(tag)
        value = r.take(r.u8(f"{name} length"), f"{name} value")
        if name == "Options":
            if len(value) != 1:
                raise EasRequestError("bad-parameter", "Options is one byte")
            parameters["Options"] = str(value[0])
            if value[0] & OPTION_SAVE_IN_SENT:
                parameters["SaveInSent"] = "T"
            continue
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError:
            raise EasRequestError("bad-parameter", f"{name} is not UTF-8") from None
        if name == "User":
            user = _check_user(text)
        else:
            parameters[name] = _check_parameter(name, text)

    return EasRequest(
        command=command,
        user=user,
        device_id=device_id,
        device_type=device_type,
        protocol_version=version,
        policy_key=policy_key,
        locale=locale,
        parameters=MappingProxyType(parameters),
        encoding="base64",
        device_id_binary=device_id_binary,
    )


_PRINTABLE_ASCII = frozenset(string.printable.encode()) - frozenset(b"\t\n\r\x0b\x0c ")


def _binary_device_id(raw: bytes, allow_binary: bool) -> tuple[str, bool]:
    text = raw.decode("latin-1")
    if _DEVICE_ID_RE.fullmatch(text):
        return text, False
    if allow_binary:
        if len(raw) * 2 > MAX_DEVICE_ID_CHARS:
            raise EasRequestError("device-id-too-long", f"{len(raw)}-byte binary device id")
        return raw.hex().upper(), True
    if all(b in _PRINTABLE_ASCII for b in raw):
        raise EasRequestError("device-id-bad-characters", "device ids are letters and digits")
    raise EasRequestError("device-id-not-printable", f"{len(raw)}-byte binary device id {raw.hex()[:64]}")


def encode_base64_query(
    *,
    command: str,
    device_id: str | bytes,
    device_type: str,
    protocol_version: str = "14.1",
    locale: int = 0x0409,
    policy_key: int | None = None,
    parameters: Mapping[str, str | int] | None = None,
) -> str:
    """Build a base64 query value (MS-ASHTTP 2.2.1.1.1.1), as a client would; for tests and
    the lab. ``parameters`` use the tag names of :data:`PARAMETER_TAGS` (``Options`` an int).

    Raises:
        ValueError: a value that does not fit its field.
    """
    versions = {v: k for k, v in BINARY_PROTOCOL_VERSIONS.items()}
    codes = {v: k for k, v in COMMAND_CODES.items()}
    tags = {v: k for k, v in PARAMETER_TAGS.items()}
    raw_id = device_id.encode("ascii") if isinstance(device_id, str) else device_id
    raw_type = device_type.encode("ascii")
    if not 0 < len(raw_id) < 256 or len(raw_type) > 255:
        raise ValueError("device id or type does not fit a length byte")
    out = bytearray((versions[protocol_version], codes[command]))
    out += locale.to_bytes(2, "little")
    out += bytes((len(raw_id),)) + raw_id
    out += b"\x00" if policy_key is None else b"\x04" + policy_key.to_bytes(4, "little")
    out += bytes((len(raw_type),)) + raw_type
    for name, value in (parameters or {}).items():
        raw = bytes((value,)) if isinstance(value, int) else value.encode("utf-8")
        if len(raw) > 255:
            raise ValueError(f"{name} does not fit a length byte")
        out += bytes((tags[name], len(raw))) + raw
    return base64.b64encode(bytes(out)).decode("ascii")
