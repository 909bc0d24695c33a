"""A minimal WBXML 1.3 encoder and decoder for the Exchange ActiveSync code pages (sans-I/O).

ActiveSync bodies are WBXML (WAP Binary XML, WAP-192) with the tag tables of [MS-ASWBXML]
section 2.1.2.1: each XML namespace of ActiveSync is one *code page* and each element name one
token in it. ActiveSync uses only a small part of WBXML: tags, inline strings (``STR_I``),
opaque data (``OPAQUE``), ``SWITCH_PAGE`` and ``END``; it never uses attributes, and servers
send an empty string table. This module knows the code pages the gateway and the lab simulator
need — AirSync (0), FolderHierarchy (7), Ping (13), Provision (14), AirSyncBase (17) and
Settings (18) — and refuses anything else rather than guessing.

Elements are named ``"Namespace:Name"`` (``"Provision:PolicyKey"``), the notation MS-ASCMD uses
for elements outside a command's own namespace. Every rejection raises :class:`WbxmlError`,
never another exception, whatever the input bytes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from ..errors import UcgateError

# --- limits -------------------------------------------------------------------------------
# The deepest ActiveSync document (Sync → Collections → Collection → Commands → Add →
# ApplicationData → airsyncbase:Body → Data) is 8 levels; 32 leaves room and stops a stack of
# nested tags from costing recursion or memory.
DEFAULT_MAX_DEPTH = 32
# Exchange's default MaxDocumentDataSize for an ActiveSync request is 10 MB, but the documents
# a gateway decodes (Provision, FolderSync, Settings) are a few kilobytes. 1 MiB is the default
# here; callers that decode Sync bodies pass a larger limit.
DEFAULT_MAX_BYTES = 1024 * 1024
# Elements per document: a bound on work independent of size (an END-less stream of empty tags
# costs one byte each).
DEFAULT_MAX_ELEMENTS = 100_000
# mb_u_int32 (WAP-192 §5.1): at most 5 bytes of 7 bits carry 32 bits.
_MB_UINT32_MAX_BYTES = 5

WBXML_VERSION_1_3 = 0x03
PUBLIC_ID_UNKNOWN = 0x01
CHARSET_UTF8 = 0x6A  # IANA MIBenum 106

# Global tokens (WAP-192 §7.1).
SWITCH_PAGE = 0x00
END = 0x01
ENTITY = 0x02
STR_I = 0x03
LITERAL = 0x04
EXT_I_0, EXT_I_1, EXT_I_2 = 0x40, 0x41, 0x42
PI = 0x43
LITERAL_C = 0x44
EXT_T_0, EXT_T_1, EXT_T_2 = 0x80, 0x81, 0x82
STR_T = 0x83
LITERAL_A = 0x84
EXT_0, EXT_1, EXT_2 = 0xC0, 0xC1, 0xC2
OPAQUE = 0xC3
LITERAL_AC = 0xC4

_TAG_HAS_CONTENT = 0x40
_TAG_HAS_ATTRIBUTES = 0x80


# [MS-ASWBXML] 2.1.2.1 code pages. Only the pages listed in the module docstring.
CODE_PAGES: dict[int, tuple[str, dict[int, str]]] = {
    0: (
        "AirSync",
        {
            0x05: "Sync",
            0x06: "Responses",
            0x07: "Add",
            0x08: "Change",
            0x09: "Delete",
            0x0A: "Fetch",
            0x0B: "SyncKey",
            0x0C: "ClientId",
            0x0D: "ServerId",
            0x0E: "Status",
            0x0F: "Collection",
            0x10: "Class",
            0x12: "CollectionId",
            0x13: "GetChanges",
            0x14: "MoreAvailable",
            0x15: "WindowSize",
            0x16: "Commands",
            0x17: "Options",
            0x18: "FilterType",
            0x1B: "Conflict",
            0x1C: "Collections",
            0x1D: "ApplicationData",
            0x1E: "DeletesAsMoves",
            0x20: "Supported",
            0x21: "SoftDelete",
            0x22: "MIMESupport",
            0x23: "MIMETruncation",
            0x24: "Wait",
            0x25: "Limit",
            0x26: "Partial",
            0x27: "ConversationMode",
            0x28: "MaxItems",
            0x29: "HeartbeatInterval",
        },
    ),
    7: (
        "FolderHierarchy",
        {
            0x07: "DisplayName",
            0x08: "ServerId",
            0x09: "ParentId",
            0x0A: "Type",
            0x0C: "Status",
            0x0E: "Changes",
            0x0F: "Add",
            0x10: "Delete",
            0x11: "Update",
            0x12: "SyncKey",
            0x13: "FolderCreate",
            0x14: "FolderDelete",
            0x15: "FolderUpdate",
            0x16: "FolderSync",
            0x17: "Count",
        },
    ),
    13: (
        "Ping",
        {
            0x05: "Ping",
            0x06: "AutdState",
            0x07: "Status",
            0x08: "HeartbeatInterval",
            0x09: "Folders",
            0x0A: "Folder",
            0x0B: "Id",
            0x0C: "Class",
            0x0D: "MaxFolders",
        },
    ),
    14: (
        "Provision",
        {
            0x05: "Provision",
            0x06: "Policies",
            0x07: "Policy",
            0x08: "PolicyType",
            0x09: "PolicyKey",
            0x0A: "Data",
            0x0B: "Status",
            0x0C: "RemoteWipe",
            0x0D: "EASProvisionDoc",
            0x0E: "DevicePasswordEnabled",
            0x0F: "AlphanumericDevicePasswordRequired",
            0x10: "RequireStorageCardEncryption",
            0x11: "PasswordRecoveryEnabled",
            0x13: "AttachmentsEnabled",
            0x14: "MinDevicePasswordLength",
            0x15: "MaxInactivityTimeDeviceLock",
            0x16: "MaxDevicePasswordFailedAttempts",
            0x17: "MaxAttachmentSize",
            0x18: "AllowSimpleDevicePassword",
            0x19: "DevicePasswordExpiration",
            0x1A: "DevicePasswordHistory",
            0x1B: "AllowStorageCard",
            0x1C: "AllowCamera",
            0x1D: "RequireDeviceEncryption",
            0x1E: "AllowUnsignedApplications",
            0x1F: "AllowUnsignedInstallationPackages",
            0x20: "MinDevicePasswordComplexCharacters",
            0x21: "AllowWiFi",
            0x22: "AllowTextMessaging",
            0x23: "AllowPOPIMAPEmail",
            0x24: "AllowBluetooth",
            0x25: "AllowIrDA",
            0x26: "RequireManualSyncWhenRoaming",
            0x27: "AllowDesktopSync",
            0x28: "MaxCalendarAgeFilter",
            0x29: "AllowHTMLEmail",
            0x2A: "MaxEmailAgeFilter",
            0x2B: "MaxEmailBodyTruncationSize",
            0x2C: "MaxEmailHTMLBodyTruncationSize",
            0x2D: "RequireSignedSMIMEMessages",
            0x2E: "RequireEncryptedSMIMEMessages",
            0x2F: "RequireSignedSMIMEAlgorithm",
            0x30: "RequireEncryptionSMIMEAlgorithm",
            0x31: "AllowSMIMEEncryptionAlgorithmNegotiation",
            0x32: "AllowSMIMESoftCerts",
            0x33: "AllowBrowser",
            0x34: "AllowConsumerEmail",
            0x35: "AllowRemoteDesktop",
            0x36: "AllowInternetSharing",
            0x37: "UnapprovedInROMApplicationList",
            0x38: "ApplicationName",
            0x39: "ApprovedApplicationList",
            0x3A: "Hash",
            0x3B: "AccountOnlyRemoteWipe",
        },
    ),
    17: (
        "AirSyncBase",
        {
            0x05: "BodyPreference",
            0x06: "Type",
            0x07: "TruncationSize",
            0x08: "AllOrNone",
            0x0A: "Body",
            0x0B: "Data",
            0x0C: "EstimatedDataSize",
            0x0D: "Truncated",
            0x0E: "Attachments",
            0x0F: "Attachment",
            0x10: "DisplayName",
            0x11: "FileReference",
            0x12: "Method",
            0x13: "ContentId",
            0x14: "ContentLocation",
            0x15: "IsInline",
            0x16: "NativeBodyType",
            0x17: "ContentType",
            0x18: "Preview",
            0x19: "BodyPartPreference",
            0x1A: "BodyPart",
            0x1B: "Status",
        },
    ),
    18: (
        "Settings",
        {
            0x05: "Settings",
            0x06: "Status",
            0x07: "Get",
            0x08: "Set",
            0x09: "Oof",
            0x0A: "OofState",
            0x0B: "StartTime",
            0x0C: "EndTime",
            0x0D: "OofMessage",
            0x0E: "AppliesToInternal",
            0x0F: "AppliesToExternalKnown",
            0x10: "AppliesToExternalUnknown",
            0x11: "Enabled",
            0x12: "ReplyMessage",
            0x13: "BodyType",
            0x14: "DevicePassword",
            0x15: "Password",
            0x16: "DeviceInformation",
            0x17: "Model",
            0x18: "IMEI",
            0x19: "FriendlyName",
            0x1A: "OS",
            0x1B: "OSLanguage",
            0x1C: "PhoneNumber",
            0x1D: "UserInformation",
            0x1E: "EmailAddresses",
            0x1F: "SmtpAddress",
            0x20: "UserAgent",
            0x21: "EnableOutboundSMS",
            0x22: "MobileOperator",
            0x23: "PrimarySmtpAddress",
            0x24: "Accounts",
            0x25: "Account",
            0x26: "AccountId",
            0x27: "AccountName",
            0x28: "UserDisplayName",
            0x29: "SendDisabled",
            0x2B: "RightsManagementInformation",
        },
    ),
}

# "Namespace:Name" → (page, token)
_TAG_TOKENS: dict[str, tuple[int, int]] = {
    f"{ns}:{name}": (page, token) for page, (ns, names) in CODE_PAGES.items() for token, name in names.items()
}


class WbxmlError(UcgateError):
    """A WBXML document we refuse to encode or decode. ``reason`` is a short code for logs."""

    def __init__(self, reason: str, message: str = "") -> None:
        super().__init__(reason, message)
        self.message = message


@dataclass(slots=True)
class Element:
    """One element: ``tag`` is ``"Namespace:Name"``; ``value`` is text (``STR_I``), bytes
    (``OPAQUE``) or None; ``children`` are elements. ActiveSync has no mixed content, so an
    element carries a value or children, not both."""

    tag: str
    value: str | bytes | None = None
    children: list[Element] = field(default_factory=list)

    @property
    def namespace(self) -> str:
        return self.tag.partition(":")[0]

    @property
    def name(self) -> str:
        return self.tag.partition(":")[2]

    def find(self, tag: str) -> Element | None:
        """The first direct child named ``tag`` (``"Ns:Name"``, or ``"Name"`` in this element's
        namespace), or None."""
        tag = tag if ":" in tag else f"{self.namespace}:{tag}"
        return next((c for c in self.children if c.tag == tag), None)

    def findall(self, tag: str) -> list[Element]:
        tag = tag if ":" in tag else f"{self.namespace}:{tag}"
        return [c for c in self.children if c.tag == tag]

    def text(self, tag: str | None = None, default: str | None = None) -> str | None:
        """The text of this element (``tag`` None) or of its first child ``tag``."""
        el = self if tag is None else self.find(tag)
        if el is None or not isinstance(el.value, str):
            return default
        return el.value

    def iter(self) -> Iterator[Element]:
        yield self
        for c in self.children:
            yield from c.iter()


def E(tag: str, *content: str | bytes | int | Element | None) -> Element:
    """Build an element: ``E("Provision:Status", "1")``, ``E("Provision:Policies", E(...))``.
    A child tag without a namespace takes its parent's; ints become text; None is skipped."""
    el = Element(tag)
    for c in content:
        if c is None:
            continue
        if isinstance(c, Element):
            if ":" in tag:
                _qualify(c, tag.partition(":")[0])
            el.children.append(c)
        elif isinstance(c, bool):  # an int to Python, but no WBXML value (encode() refused it too)
            raise WbxmlError("bad-value", f"{tag}: bool")
        elif isinstance(c, int):
            el.value = str(c)
        else:
            el.value = c
    return el


def _qualify(el: Element, ns: str) -> None:
    """Give ``el`` and its unqualified descendants the namespace ``ns``."""
    stack = [el]
    while stack:
        e = stack.pop()
        if ":" in e.tag:
            continue
        e.tag = f"{ns}:{e.tag}"
        stack.extend(e.children)


# --- encoding -----------------------------------------------------------------------------


def _mb_uint32(n: int) -> bytes:
    if not 0 <= n < 2**32:
        raise WbxmlError("integer-out-of-range", str(n))
    out = [n & 0x7F]
    n >>= 7
    while n:
        out.append(0x80 | (n & 0x7F))
        n >>= 7
    return bytes(reversed(out))


def encode(root: Element) -> bytes:
    """Encode ``root`` as an ActiveSync WBXML 1.3 document (UTF-8, empty string table).

    Raises:
        WbxmlError: unknown tag, text with NUL, an element with both value and children.
    """
    out = bytearray((WBXML_VERSION_1_3, PUBLIC_ID_UNKNOWN, CHARSET_UTF8, 0x00))
    page = 0
    # Iterative walk: (element, entering?, parent namespace). An unqualified tag takes its
    # parent's namespace, so children appended by hand need not repeat it.
    stack: list[tuple[Element, bool, str]] = [(root, True, "")]
    depth = 0
    while stack:
        el, entering, parent_ns = stack.pop()
        if not entering:
            out.append(END)
            depth -= 1
            continue
        tag = el.tag if ":" in el.tag else f"{parent_ns}:{el.tag}"
        try:
            el_page, token = _TAG_TOKENS[tag]
        except KeyError:
            raise WbxmlError("unknown-tag", tag) from None
        if el.value is not None and el.children:
            raise WbxmlError("mixed-content", el.tag)
        depth += 1
        if depth > DEFAULT_MAX_DEPTH:
            raise WbxmlError("too-deep", f"more than {DEFAULT_MAX_DEPTH} levels")
        if el_page != page:
            out += bytes((SWITCH_PAGE, el_page))
            page = el_page
        # An empty string encodes as an empty tag; empty opaque data stays OPAQUE 0.
        has_content = bool(el.children) or (el.value is not None and el.value != "")
        if not has_content:
            out.append(token)
            depth -= 1
            continue
        out.append(token | _TAG_HAS_CONTENT)
        if isinstance(el.value, str):
            data = el.value.encode("utf-8")
            if b"\x00" in data:
                raise WbxmlError("nul-in-string", el.tag)
            out.append(STR_I)
            out += data + b"\x00"
        elif isinstance(el.value, (bytes, bytearray)):
            out.append(OPAQUE)
            out += _mb_uint32(len(el.value)) + bytes(el.value)
        elif el.value is not None:
            raise WbxmlError("bad-value", f"{el.tag}: {type(el.value).__name__}")
        stack.append((el, False, ""))
        ns = tag.partition(":")[0]
        for c in reversed(el.children):
            stack.append((c, True, ns))
    return bytes(out)


# --- decoding -----------------------------------------------------------------------------


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def byte(self) -> int:
        if self.pos >= len(self.data):
            raise WbxmlError("truncated", f"unexpected end at byte {self.pos}")
        b = self.data[self.pos]
        self.pos += 1
        return b

    def mb_uint32(self) -> int:
        n = 0
        for _ in range(_MB_UINT32_MAX_BYTES):
            b = self.byte()
            n = (n << 7) | (b & 0x7F)
            if not b & 0x80:
                if n >= 2**32:
                    raise WbxmlError("integer-out-of-range", "mb_u_int32 above 2**32-1")
                return n
        raise WbxmlError("integer-too-long", "mb_u_int32 longer than 5 bytes")

    def take(self, n: int) -> bytes:
        if n > len(self.data) - self.pos:
            raise WbxmlError("truncated", f"{n} bytes announced, {len(self.data) - self.pos} left")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def termstr(self) -> bytes:
        end = self.data.find(b"\x00", self.pos)
        if end < 0:
            raise WbxmlError("truncated", "unterminated inline string")
        chunk = self.data[self.pos : end]
        self.pos = end + 1
        return chunk


def _utf8(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise WbxmlError("bad-utf8", str(e)) from None


def decode(
    data: bytes,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_elements: int = DEFAULT_MAX_ELEMENTS,
) -> Element:
    """Decode one ActiveSync WBXML document.

    Args:
        data: the whole request or response body.
        max_bytes, max_depth, max_elements: limits; exceeding one raises.

    Returns:
        The root element.

    Raises:
        WbxmlError: anything malformed, unsupported (attributes, literals, extensions,
        processing instructions, charsets other than UTF-8, unknown code pages or tags),
        truncated, trailing or over a limit.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise WbxmlError("not-bytes", type(data).__name__)
    data = bytes(data)
    if len(data) > max_bytes:
        raise WbxmlError("too-large", f"{len(data)} bytes, limit {max_bytes}")
    r = _Reader(data)
    version = r.byte()
    if version not in (0x01, 0x02, 0x03):
        raise WbxmlError("bad-version", f"WBXML version byte {version:#04x}")
    public_id = r.mb_uint32()
    if public_id == 0:
        r.mb_uint32()  # string table index of the public id; ActiveSync never uses it
    charset = r.mb_uint32()
    if charset != CHARSET_UTF8:
        raise WbxmlError("bad-charset", f"charset MIBenum {charset}, only UTF-8 (106)")
    strtbl = r.take(r.mb_uint32())

    page = 0
    stack: list[Element] = []
    root: Element | None = None
    count = 0
    while True:
        if root is not None and not stack:
            break
        tok = r.byte()
        if tok == SWITCH_PAGE:
            page = r.byte()
            if page not in CODE_PAGES:
                raise WbxmlError("unknown-code-page", str(page))
            continue
        if tok == END:
            if not stack:
                raise WbxmlError("unbalanced-end", f"END at byte {r.pos - 1}")
            stack.pop()
            continue
        if tok in (STR_I, STR_T, OPAQUE, ENTITY):
            if not stack:
                raise WbxmlError("content-outside-element", f"byte {r.pos - 1}")
            _add_content(stack[-1], tok, r, strtbl)
            continue
        if tok in (LITERAL, LITERAL_A, LITERAL_C, LITERAL_AC):
            raise WbxmlError("unsupported-literal", "literal tags are not used by ActiveSync")
        if tok in (EXT_I_0, EXT_I_1, EXT_I_2, EXT_T_0, EXT_T_1, EXT_T_2, EXT_0, EXT_1, EXT_2):
            raise WbxmlError("unsupported-extension", f"token {tok:#04x}")
        if tok == PI:
            raise WbxmlError("unsupported-pi", "processing instructions are not used")
        if tok & _TAG_HAS_ATTRIBUTES:
            raise WbxmlError("unsupported-attributes", "ActiveSync tags have no attributes")
        ns, names = CODE_PAGES[page]
        name = names.get(tok & 0x3F)
        if name is None:
            raise WbxmlError("unknown-tag", f"token {tok & 0x3F:#04x} in code page {page} ({ns})")
        if stack and stack[-1].value is not None:
            raise WbxmlError("mixed-content", stack[-1].tag)
        count += 1
        if count > max_elements:
            raise WbxmlError("too-many-elements", f"limit {max_elements}")
        el = Element(f"{ns}:{name}")
        if stack:
            stack[-1].children.append(el)
        elif root is None:
            root = el
        else:  # pragma: no cover - the loop ends when the root closes
            raise WbxmlError("multiple-roots")
        if tok & _TAG_HAS_CONTENT:
            if len(stack) + 1 > max_depth:
                raise WbxmlError("too-deep", f"more than {max_depth} levels")
            stack.append(el)
        if root is el and not stack:
            break  # an empty root element
    if r.pos != len(data):
        raise WbxmlError("trailing-data", f"{len(data) - r.pos} bytes after the root element")
    assert root is not None
    return root


def _add_content(el: Element, tok: int, r: _Reader, strtbl: bytes) -> None:
    if el.children:
        raise WbxmlError("mixed-content", el.tag)
    if tok == OPAQUE:
        chunk = r.take(r.mb_uint32())
        if el.value is None:
            el.value = chunk
        elif isinstance(el.value, bytes):
            el.value += chunk
        else:
            raise WbxmlError("mixed-content", f"{el.tag}: opaque data after text")
        return
    if tok == STR_I:
        text = _utf8(r.termstr())
    elif tok == STR_T:
        offset = r.mb_uint32()
        if offset >= len(strtbl):
            raise WbxmlError("bad-string-reference", f"offset {offset} outside the string table")
        end = strtbl.find(b"\x00", offset)
        if end < 0:
            raise WbxmlError("bad-string-reference", "unterminated string table entry")
        text = _utf8(strtbl[offset:end])
    else:  # ENTITY
        code = r.mb_uint32()
        if code > 0x10FFFF or 0xD800 <= code <= 0xDFFF or code == 0:
            raise WbxmlError("bad-entity", f"character {code:#x}")
        text = chr(code)
    if el.value is None:
        el.value = text
    elif isinstance(el.value, str):
        el.value += text
    else:
        raise WbxmlError("mixed-content", f"{el.tag}: text after opaque data")


def to_xml(el: Element, indent: str = "") -> str:
    """A readable XML rendering for logs and test failure messages (not canonical XML)."""
    from xml.sax.saxutils import escape

    if el.children:
        inner = "".join(to_xml(c, indent + "  ") for c in el.children)
        return f"{indent}<{el.tag}>\n{inner}{indent}</{el.tag}>\n"
    if el.value is None:
        return f"{indent}<{el.tag}/>\n"
    if isinstance(el.value, bytes):
        return f"{indent}<{el.tag}>[{len(el.value)} opaque bytes]</{el.tag}>\n"
    return f"{indent}<{el.tag}>{escape(el.value)}</{el.tag}>\n"
