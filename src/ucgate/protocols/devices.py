"""Which device a request comes from (sans-I/O): device id, type, model, OS and client kind.

A *partnership* is keyed on (user, device id) (DESIGN.md, "Vocabulary"). This module reads what
each client puts on the wire about itself and turns it into :class:`DeviceFacts`. It never
raises on request data: an id that is absent, oversized, non-printable or otherwise unusable
comes back with ``device_id=None`` and ``problem`` saying why, and the policy decides (default:
quarantine). ``detail`` carries a stable, safe code for the audit log (never the raw bytes).

Where each client carries its identity
======================================

=================================  =====================================================  ===============
client                             device id                                              ``source``
=================================  =====================================================  ===============
ActiveSync (any EAS client)        ``DeviceId`` of the plain or base64 query               eas-query /
                                   ([MS-ASHTTP] 2.2.1.1.1), on *every* request             eas-base64
SfB/Lync 2013+ mobile (UCWA)       ``endpointId`` of ``POST …/ucwa/oauth/v1/applications`` ucwa-endpoint
                                   (JSON, or UCWA XML ``<property name="endpointId">``);
                                   later requests carry only the application id in the
                                   path, which the gateway must map back (see
                                   :func:`ucwa_application_id`)
CertProv (desktop and mobile)      ``DeviceId="{GUID}"`` attribute of the SOAP body's      certprov
                                   ``<GetAndPublishCert>`` ([MS-OCAUTHWS] 3.1.4.1), with
                                   ``Entity="sip:…"``; only in the *body*, so see
                                   :func:`device_from_certprov_body`
Lync 2010 mobile (MCX)             nothing known: no public description of the MCX        user-agent
                                   request format names a device id; classified by
                                   User-Agent only, ``problem="absent"``
Lync/SfB desktop (PC, Mac)         nothing per install on WebTicket/autodiscover/ABS/...   user-agent
                                   requests; the User-Agent
                                   (``UCCAPI/16.0.4849.1000 OC/16.0.4849.1000 (Skype for
                                   Business)``) names the product and version, not the
                                   machine
=================================  =====================================================  ===============

What identifies a PC, honestly: the desktop client sends no per-install identifier on its
HTTP requests except the ``DeviceId`` GUID of its CertProv request (once per certificate, i.e.
at most every 180 days by default) and, when it signs in with TLS-DSK afterwards, the client
certificate that request obtained. A gateway that wants per-PC partnerships must therefore
*bind* one: record the CertProv ``DeviceId`` and the certificate it issued, or set a long-lived
device cookie on the first successful sign-in (the desktop client keeps cookies poorly; treat
this as best effort), or issue per-device ASPs. The User-Agent alone distinguishes products and
versions, never two installs of the same version, and is trivially forged: rules on it are a
convenience for honest clients, not a security boundary. The same is true of every device id
here: a client chooses its own id, so a partnership proves "the same client that was approved
before said the same id again", which is exactly what Exchange ActiveSync device access gives.

Normalisation (:func:`normalise_device_id`): surrounding whitespace is stripped; a GUID (with
or without braces) loses its braces, so ``{A917C6F4-…}`` from CertProv and ``a917c6f4-…`` from
UCWA name the same device; every id is lower-cased — EAS ids are compared case-insensitively,
as Exchange does — so the store, the audit log, the trust table and the events all see the
same spelling (the request itself goes to the front end as the client sent it). At most :data:`MAX_DEVICE_ID_CHARS` printable ASCII
characters, without space, quotes, backslash, ``<>``, `````, ``%``, ``&`` or braces (outside a
braced GUID).

``problem`` values: ``absent``, ``too-long``, ``not-printable``, ``bad-characters``, and
``malformed`` (the carrier itself — query, JSON, XML — is unreadable or ambiguous).
"""

from __future__ import annotations

import json
import re
import xml.parsers.expat
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from . import wbxml
from .activesync import EasRequestError, parse_eas_request

# --- limits -------------------------------------------------------------------------------
# Real ids are short: EAS caps them at 32 ([MS-ASHTTP] 2.2.1.1.1.2), GUIDs are 36 (38 with
# braces). UCWA allows endpointId up to 100 characters (learn.microsoft.com skype-sdk/ucwa/
# applications_ref) but SfB clients send GUIDs; 64 keeps keys and log lines small.
MAX_DEVICE_ID_CHARS = 64
# UCWA: userAgent, endpointId and culture are each at most 100 characters (applications_ref);
# the whole body is a few hundred bytes. 16 KiB refuses nothing real and bounds the parser.
MAX_UCWA_BODY_BYTES = 16 * 1024
# The application body is one flat object; allow a little nesting for extensions.
MAX_JSON_DEPTH = 8
# CertProv GetAndPublishCert: a PKCS#10 request (RSA 2048, ~1.5 KB base64) in a SOAP envelope,
# with an optional WS-Security header carrying a web ticket (a few KB). 64 KiB is generous.
MAX_CERTPROV_BODY_BYTES = 64 * 1024
MAX_XML_DEPTH = 16
# EAS Settings/Provision bodies carrying DeviceInformation are < 2 KB.
MAX_EAS_SETTINGS_BODY_BYTES = 64 * 1024
# User-Agent header: IIS logs cut at 512 in practice; longer is not a real client. We bound
# what the classifier reads (regex work) and what we store.
MAX_USER_AGENT_CHARS = 512
# Model, OS and other free text we keep.
MAX_TEXT_CHARS = 256

ClientKind = Literal["pc-internal", "pc-external", "ios", "android", "windows-phone", "lwa", "eas", "mac", "unknown"]
CLIENT_KINDS: frozenset[str] = frozenset(ClientKind.__args__)  # type: ignore[attr-defined]
Source = Literal["eas-query", "eas-base64", "ucwa-endpoint", "mcx", "certprov", "user-agent", "none"]
Problem = Literal["absent", "too-long", "not-printable", "bad-characters", "malformed"]

CERTPROV_NS = "http://schemas.microsoft.com/OCS/AuthWebServices/"
UCWA_JSON_TYPES = frozenset({"application/json", "application/vnd.microsoft.com.ucwa+json"})
UCWA_XML_TYPES = frozenset({"application/xml", "text/xml", "application/vnd.microsoft.com.ucwa+xml"})


@dataclass(frozen=True, slots=True)
class DeviceFacts:
    """What a request says about the device it comes from.

    ``device_id`` is normalised, or None when ``problem`` is set. ``claimed_user`` is the user
    the *request* names (EAS ``User=``, CertProv ``Entity``): the caller must check it against
    the authenticated user. ``command`` is the EAS command (``Provision``…) or the SOAP
    operation (``GetAndPublishCert``). ``detail`` is a short code for the audit log.
    """

    device_id: str | None
    device_type: str | None
    model: str | None
    os: str | None
    user_agent: str | None
    client_kind: str
    source: str
    problem: str | None
    claimed_user: str | None = None
    command: str | None = None
    detail: str = ""


# --- normalisation ------------------------------------------------------------------------

_GUID_RE = re.compile(r"\{?([0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12})\}?")
_ID_FORBIDDEN = frozenset(" \"'\\<>`%&{}")


def normalise_device_id(raw: object) -> tuple[str | None, str | None]:
    """Normalise a device id as the module docstring says.

    Returns:
        ``(device_id, None)`` or ``(None, problem)``; never raises.
    """
    if not isinstance(raw, str):
        return None, ("absent" if raw is None else "malformed")
    value = raw.strip(" \t\r\n")
    if not value:
        return None, "absent"
    if not all(0x20 <= ord(c) < 0x7F for c in value):
        return None, "not-printable"
    m = _GUID_RE.fullmatch(value)
    if m and (value.startswith("{") == value.endswith("}")):
        return m.group(1).lower(), None
    if len(value) > MAX_DEVICE_ID_CHARS:
        return None, "too-long"
    if any(c in _ID_FORBIDDEN for c in value):
        return None, "bad-characters"
    return value.lower(), None


def _clean_text(value: object, limit: int = MAX_TEXT_CHARS) -> str | None:
    """Free text we keep (model, OS, user agent): str, stripped, printable, bounded; else None."""
    if not isinstance(value, str):
        return None
    value = value.strip()
    if not value or len(value) > limit:
        return None
    if any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in value):
        return None
    return value


def _header(headers: Mapping[str, str], name: str) -> str | None:
    try:
        for k, v in headers.items():
            if str(k).lower() == name:
                return v if isinstance(v, str) else None
    except Exception:  # noqa: BLE001 - a hostile Mapping; headers from our parser never fail
        return None
    return None


# --- user-agent classification ------------------------------------------------------------

# Ordered: the first match wins. Sources for the strings:
# - SfB/Lync mobile products are named iPhoneLync, iPadLync, AndroidLync, WPLync, NokiaLync in
#   the Lync client version policy and the monitoring database's user-agent types (Lync Server
#   docs, "Client version policy"; CDR UserAgentDef); Microsoft Graph callRecords examples show
#   the header "RTCC/7.0.0.0 UCWA/7.0.0.0 AndroidLync/6.25.0.27 (SM-G930U Android 8.0.0)".
# - Desktop: "UCCAPI/<v> OC/<v> (Microsoft Lync 2010|Microsoft Lync|Skype for Business)".
# - EAS: "Apple-iPhone9C1/1402.100" (iOS Mail), "Outlook-iOS/2.0" / "Outlook-Android/2.0"
#   (Exchange docs, "Outlook for iOS and Android in Exchange Online"), "Android-Mail/…"
#   (Gmail), "Android-SAMSUNG-SM-A515F/101.10", "MSFT-WIN-3/10.0.17134" (Windows Mail).
# Windows Phone comes first: its browser UA also says "Android" and "iPhone".
DEFAULT_UA_RULES: tuple[tuple[str, str], ...] = (
    (r"\bWPLync\b|Windows Phone|^MSFT-WP", "windows-phone"),
    (
        r"^Apple-(?:iPhone|iPad|iPod)|^Outlook-(?:iOS|Android)/|^Android-Mail/|^Android/"
        r"|^Android-SAMSUNG-|^SAMSUNG-|^MSFT-WIN-\d|^TouchDown|^Nine/|^Microsoft-Server-ActiveSync",
        "eas",
    ),
    (r"\bLWA/|Lync Web App|\bLWA\b", "lwa"),
    (r"\b(?:MacLync|LyncForMac)\b|(?:Lync|Skype for Business) for Mac", "mac"),
    (r"\b(?:iPhone|iPad)Lync/", "ios"),
    (r"\bAndroidLync/", "android"),
    (r"^UCCAPI/\d|\bOC/\d|Microsoft Lync|Microsoft Office Communicator|\(Skype for Business\)", "pc-external"),
    (r"\biPhone\b|\biPad\b|\biOS\b", "ios"),
    (r"\bAndroid\b", "android"),
    (r"\bMacintosh\b|\bMac OS X\b", "mac"),
)
_COMPILED_DEFAULT = tuple((re.compile(p), k) for p, k in DEFAULT_UA_RULES)

# The product token Microsoft's own client-version policy uses, as our device type for SfB.
_PRODUCT_RE = re.compile(r"\b(iPhoneLync|iPadLync|AndroidLync|WPLync|NokiaLync|MacLync|LyncForMac)\b")
_KIND_DEVICE_TYPE = {"pc-external": "OC", "pc-internal": "OC", "lwa": "LWA", "mac": "MacLync"}
# "(SM-G930U Android 8.0.0)", "(iPhone iOS 12.1.2)": model then OS and version.
_MODEL_OS_RE = re.compile(
    r"\(([^()]{1,64}?)\s+(Android|iOS|iPhone OS|iPadOS|Windows Phone)\s+([0-9][0-9A-Za-z._]{0,31})\)"
)


def compile_ua_rules(rules: Sequence[tuple[str, str]]) -> tuple[tuple[re.Pattern[str], str], ...]:
    """Validate and compile configured ``(regex, kind)`` rules.

    Raises:
        ValueError: a bad regex or an unknown kind (a configuration error, named).
    """
    out = []
    for i, (pattern, kind) in enumerate(rules):
        if kind not in CLIENT_KINDS:
            raise ValueError(f"user-agent rule {i}: unknown client kind {kind!r}")
        try:
            out.append((re.compile(pattern), kind))
        except re.error as e:
            raise ValueError(f"user-agent rule {i}: bad regex {pattern!r}: {e}") from None
    return tuple(out)


def classify_user_agent(ua: str | None, extra_rules: Sequence[tuple[str, str]] = ()) -> str:
    """The client kind for a User-Agent: ``extra_rules`` (from configuration) first, then
    :data:`DEFAULT_UA_RULES`; ``"unknown"`` when nothing matches or ``ua`` is unusable.

    Desktop clients are ``pc-external``: everything reaching the gateway comes from outside;
    a caller that knows a client is on an internal network may re-label it ``pc-internal``.

    Raises:
        ValueError: only for bad ``extra_rules`` (see :func:`compile_ua_rules`), never for ``ua``.
    """
    compiled = compile_ua_rules(extra_rules) if extra_rules else ()
    if not isinstance(ua, str) or not ua:
        return "unknown"
    text = ua[:MAX_USER_AGENT_CHARS]
    for rx, kind in (*compiled, *_COMPILED_DEFAULT):
        if rx.search(text):
            return kind
    return "unknown"


def _ua_facts(
    ua_raw: str | None, extra_rules: Sequence[tuple[str, str]] = ()
) -> tuple[str | None, str, str | None, str | None, str | None]:
    """(user_agent, kind, device_type, model, os) from a User-Agent."""
    ua = _clean_text(ua_raw, MAX_USER_AGENT_CHARS)
    kind = classify_user_agent(ua, extra_rules)
    if ua is None:
        return None, kind, None, None, None
    product = _PRODUCT_RE.search(ua)
    device_type = product.group(1) if product else _KIND_DEVICE_TYPE.get(kind)
    model = os_name = None
    m = _MODEL_OS_RE.search(ua)
    if m:
        model = _clean_text(m.group(1))
        os_name = f"{m.group(2)} {m.group(3)}"
    return ua, kind, device_type, model, os_name


# --- ActiveSync ---------------------------------------------------------------------------

_EAS_PROBLEMS = {
    "missing-device-id": "absent",
    "device-id-too-long": "too-long",
    "device-id-not-printable": "not-printable",
    "device-id-bad-characters": "bad-characters",
}


def device_from_eas(target: str, headers: Mapping[str, str]) -> DeviceFacts:
    """Device facts from an ActiveSync request line (plain or base64 query) and headers.

    The EAS device type is ``device_type``; model and OS come only from the body (see
    :func:`device_settings_from_eas_body`). A binary (GUID) device id from Windows Phone is
    accepted and reported as upper-case hex, the spelling the same device uses in a plain query.
    Never raises: a malformed query gives ``problem`` (``malformed`` unless it is the id
    itself that is wrong) and ``detail`` the :class:`EasRequestError` reason.
    """
    ua, _, _, _, _ = _ua_facts(_header(headers, "user-agent"))
    try:
        req = parse_eas_request(target, headers, allow_binary_device_id=True)
    except EasRequestError as e:
        return DeviceFacts(
            None,
            None,
            None,
            None,
            ua,
            "eas",
            "none",
            _EAS_PROBLEMS.get(e.reason, "malformed"),
            detail=f"eas:{e.reason}",
        )
    except Exception as e:  # noqa: BLE001  # pragma: no cover - parse_eas_request promises not to
        return DeviceFacts(
            None, None, None, None, ua, "eas", "none", "malformed", detail=f"eas:internal-error:{type(e).__name__}"
        )
    device_id, problem = normalise_device_id(req.device_id)
    source = "eas-base64" if req.encoding == "base64" else "eas-query"
    return DeviceFacts(
        device_id,
        req.device_type,
        None,
        None,
        ua,
        "eas",
        source,
        problem,
        claimed_user=req.user,
        command=req.command,
        detail="" if problem is None else f"eas:device-id-{problem}",
    )


def device_settings_from_eas_body(body: bytes) -> dict[str, str]:
    """Model, OS, user agent and friendly name from the ``settings:DeviceInformation`` of an EAS
    ``Settings`` or ``Provision`` request body (WBXML, [MS-ASCMD] 2.2.3.45 and 2.2.3.136).

    Returns:
        A dict with any of ``model``, ``os``, ``user_agent``, ``friendly_name``; empty when the
        body is not WBXML, has no DeviceInformation, or is over a limit. Never raises.
    """
    try:
        root = wbxml.decode(body, max_bytes=MAX_EAS_SETTINGS_BODY_BYTES, max_elements=2000)
    except wbxml.WbxmlError:
        return {}
    except Exception:  # noqa: BLE001  # pragma: no cover - wbxml.decode promises WbxmlError only
        return {}
    info = next((el for el in root.iter() if el.tag == "Settings:DeviceInformation"), None)
    target = info.find("Settings:Set") if info is not None else None
    if target is None:
        return {}
    out: dict[str, str] = {}
    for tag, key in (("Model", "model"), ("OS", "os"), ("UserAgent", "user_agent"), ("FriendlyName", "friendly_name")):
        value = _clean_text(target.text(f"Settings:{tag}"))
        if value is not None:
            out[key] = value
    return out


def with_eas_settings(facts: DeviceFacts, settings: Mapping[str, str]) -> DeviceFacts:
    """``facts`` completed with what :func:`device_settings_from_eas_body` found (the query
    stays authoritative for the id and type)."""
    return replace(
        facts,
        model=settings.get("model", facts.model),
        os=settings.get("os", facts.os),
        user_agent=facts.user_agent or settings.get("user_agent"),
    )


# --- UCWA application creation ------------------------------------------------------------

_UCWA_APPS_RE = re.compile(r"/ucwa/(?:oauth/|anonymous/)?v1/applications(?:/([^/?#]+))?", re.I)


def is_ucwa_application_create(method: str, target: str) -> bool:
    """True for ``POST /ucwa/[oauth/]v1/applications`` (the request whose body names the device)."""
    path = target.partition("?")[0].rstrip("/")
    m = _UCWA_APPS_RE.fullmatch(path)
    return method.upper() == "POST" and m is not None and m.group(1) is None


def ucwa_application_id(target: str) -> str | None:
    """The application id of a UCWA request path (``…/applications/101234567890/me``), which
    the gateway maps back to the endpointId it saw at creation; None if there is none."""
    path = target.partition("?")[0]
    m = _UCWA_APPS_RE.match(path)
    if m is None or m.group(1) is None:
        return None
    app_id = m.group(1)
    return app_id if len(app_id) <= 64 and app_id.isascii() and app_id.isalnum() else None


class _Malformed(Exception):
    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


def _json_depth_ok(text: str, limit: int) -> bool:
    """Nesting of ``[`` / ``{`` outside strings stays within ``limit`` (checked before
    json.loads, whose C scanner recurses)."""
    depth = 0
    in_string = escaped = False
    for c in text:
        if in_string:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
        elif c in "[{":
            depth += 1
            if depth > limit:
                return False
        elif c in "]}":
            depth -= 1
    return True


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    # ASP.NET model binding matches names case-insensitively, so "endpointId" and "EndpointId"
    # in one object would be read differently by us and by the front end: refuse.
    out: dict[str, object] = {}
    for k, v in pairs:
        key = k.lower()
        if key in out:
            raise _Malformed("ucwa:duplicate-key")
        out[key] = v
    return out


def _refuse_constant(name: str) -> object:
    raise _Malformed("ucwa:non-finite-number")


def _ucwa_fields_json(body: bytes) -> dict[str, object]:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise _Malformed("ucwa:not-utf8") from None
    if text.startswith("\ufeff"):
        text = text[1:]
    if not _json_depth_ok(text, MAX_JSON_DEPTH):
        raise _Malformed("ucwa:json-too-deep")
    try:
        data = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_refuse_constant)
    except _Malformed:
        raise
    except (ValueError, RecursionError):
        raise _Malformed("ucwa:not-json") from None
    if not isinstance(data, dict):
        raise _Malformed("ucwa:not-an-object")
    return data


def _safe_expat(prefix: str, namespace_separator: str | None = None) -> xml.parsers.expat.XMLParserType:
    """An expat parser that refuses any DTD (so no entity can be declared or expanded) and
    never reads external resources."""
    p = xml.parsers.expat.ParserCreate("UTF-8", namespace_separator)

    def refuse(*_args: object) -> None:
        raise _Malformed(f"{prefix}:dtd-refused")

    p.StartDoctypeDeclHandler = refuse
    p.EntityDeclHandler = refuse
    p.ExternalEntityRefHandler = refuse  # type: ignore[assignment]
    p.SetParamEntityParsing(xml.parsers.expat.XML_PARAM_ENTITY_PARSING_NEVER)
    return p


def _parse_xml(
    body: bytes,
    on_start: Callable[[str, dict[str, str]], None],
    on_end: Callable[[str], None] | None = None,
    on_text: Callable[[str], None] | None = None,
    prefix: str = "xml",
) -> None:
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        raise _Malformed(f"{prefix}:not-utf8") from None
    p = _safe_expat(prefix, " ")
    depth = [0]

    def start(name: str, attrs: dict[str, str]) -> None:
        depth[0] += 1
        if depth[0] > MAX_XML_DEPTH:
            raise _Malformed(f"{prefix}:xml-too-deep")
        on_start(name, attrs)

    def end(name: str) -> None:
        depth[0] -= 1
        if on_end is not None:
            on_end(name)

    p.StartElementHandler = start
    p.EndElementHandler = end
    if on_text is not None:
        p.CharacterDataHandler = on_text
    try:
        p.Parse(body, True)
    except _Malformed:
        raise
    except (xml.parsers.expat.ExpatError, ValueError, RecursionError):
        raise _Malformed(f"{prefix}:not-xml") from None


def _ucwa_fields_xml(body: bytes) -> dict[str, object]:
    # <input xmlns="http://schemas.microsoft.com/rtc/2012/03/ucwa">
    #   <property name="endpointId">…</property> …</input>
    out: dict[str, object] = {}
    current: list[str | None] = [None]
    buf: list[str] = []

    def start(name: str, attrs: dict[str, str]) -> None:
        local = name.rpartition(" ")[2]
        if local == "property" and "name" in attrs:
            current[0] = attrs["name"].lower()
            buf.clear()

    def text(data: str) -> None:
        if current[0] is not None and sum(map(len, buf)) < 4096:
            buf.append(data)

    def end(name: str) -> None:
        key = current[0]
        if key is not None and name.rpartition(" ")[2] == "property":
            if key in out:
                raise _Malformed("ucwa:duplicate-key")
            out[key] = "".join(buf)
            current[0] = None

    _parse_xml(body, start, end, text, prefix="ucwa")
    return out


def device_from_ucwa_application(body: bytes, content_type: str | None, user_agent: str | None) -> DeviceFacts:
    """Device facts from the body of ``POST …/ucwa/oauth/v1/applications``.

    Args:
        body: the whole request body (the caller buffers at most :data:`MAX_UCWA_BODY_BYTES`
            + 1 bytes of it).
        content_type: the Content-Type header; JSON (``application/json``,
            ``application/vnd.microsoft.com.ucwa+json``, or absent) or UCWA XML.
        user_agent: the User-Agent header (the body's ``userAgent`` is preferred when usable).

    Returns:
        Facts with ``source="ucwa-endpoint"``; ``endpointId`` is the device id. Never raises.
    """
    header_ua = user_agent
    try:
        if not isinstance(body, (bytes, bytearray, memoryview)):
            raise _Malformed("ucwa:not-bytes")
        body = bytes(body)
        if len(body) > MAX_UCWA_BODY_BYTES:
            raise _Malformed("ucwa:body-too-large")
        ctype = (content_type or "application/json").split(";")[0].strip().lower()
        if ctype in UCWA_JSON_TYPES:
            fields = _ucwa_fields_json(body)
        elif ctype in UCWA_XML_TYPES:
            fields = _ucwa_fields_xml(body)
        else:
            raise _Malformed("ucwa:unsupported-content-type")
    except _Malformed as e:
        ua, kind, dtype, model, os_name = _ua_facts(header_ua)
        return DeviceFacts(None, dtype, model, os_name, ua, kind, "ucwa-endpoint", "malformed", detail=e.detail)
    body_ua = _clean_text(fields.get("useragent"), MAX_USER_AGENT_CHARS)
    ua, kind, dtype, model, os_name = _ua_facts(body_ua or header_ua)
    device_id, problem = normalise_device_id(fields.get("endpointid"))
    return DeviceFacts(
        device_id,
        dtype,
        model,
        os_name,
        ua,
        kind,
        "ucwa-endpoint",
        problem,
        command="CreateApplication",
        detail="" if problem is None else f"ucwa:endpoint-id-{problem}",
    )


# --- CertProv -----------------------------------------------------------------------------


def device_from_certprov_body(body: bytes, user_agent: str | None = None) -> DeviceFacts:
    """Device facts from a CertProv ``GetAndPublishCert`` SOAP request body.

    [MS-OCAUTHWS] 3.1.4.1: the client asks for its certificate with
    ``<GetAndPublishCert xmlns="http://schemas.microsoft.com/OCS/AuthWebServices/"
    DeviceId="{GUID}" Entity="sip:user@example.com">`` around a WS-Trust RequestSecurityToken
    carrying a PKCS#10 request (pidgin-sipe's sipe-svc.c builds the same element as the Lync
    client). ``Entity`` is returned as ``claimed_user``: the caller must check that it is the
    authenticated user's SIP URI. A DTD is refused; the body is bounded. Never raises.
    """
    found: dict[str, str] = {}
    seen = [0]

    def start(name: str, attrs: dict[str, str]) -> None:
        ns, _, local = name.rpartition(" ")
        if local == "GetAndPublishCert" and ns == CERTPROV_NS:
            seen[0] += 1
            if seen[0] > 1:
                raise _Malformed("certprov:repeated-request")
            for k, v in attrs.items():
                found[k.rpartition(" ")[2]] = v

    ua, kind, dtype, model, os_name = _ua_facts(user_agent)
    try:
        if not isinstance(body, (bytes, bytearray, memoryview)):
            raise _Malformed("certprov:not-bytes")
        body = bytes(body)
        if len(body) > MAX_CERTPROV_BODY_BYTES:
            raise _Malformed("certprov:body-too-large")
        _parse_xml(body, start, prefix="certprov")
        if not seen[0]:
            raise _Malformed("certprov:no-getandpublishcert")
    except _Malformed as e:
        return DeviceFacts(
            None, dtype, model, os_name, ua, kind, "certprov", "malformed", command="GetAndPublishCert", detail=e.detail
        )
    device_id, problem = normalise_device_id(found.get("DeviceId"))
    entity = _clean_text(found.get("Entity"))
    return DeviceFacts(
        device_id,
        dtype,
        model,
        os_name,
        ua,
        kind,
        "certprov",
        problem,
        claimed_user=entity,
        command="GetAndPublishCert",
        detail="" if problem is None else f"certprov:device-id-{problem}",
    )


# --- any request --------------------------------------------------------------------------

_BROWSER_SERVICES = frozenset({"lwa", "meet", "reach", "dialin"})
_NO_ID_DETAIL = {
    "ucwa": "ucwa:id-bound-to-application",
    "certprov": "certprov:id-in-body",
    "mcx": "mcx:no-device-id-on-wire",
}


def device_from_request(
    service_name: str,
    method: str,
    target: str,
    headers: Mapping[str, str],
    *,
    extra_ua_rules: Sequence[tuple[str, str]] = (),
) -> DeviceFacts:
    """Device facts from a request head alone (everything but the UCWA and CertProv bodies).

    ``eas`` → :func:`device_from_eas`. Every other service is classified by User-Agent, with
    ``problem="absent"``: the id is in the body (UCWA application creation, CertProv), bound
    to a UCWA application id, or not on the wire at all (MCX, desktop clients) — ``detail``
    says which. Browser services (lwa, meet, reach, dialin) with an unrecognised browser UA are
    ``lwa``. Never raises for request data.
    """
    if service_name == "eas":
        return device_from_eas(target, headers)
    ua, kind, dtype, model, os_name = _ua_facts(_header(headers, "user-agent"), extra_ua_rules)
    if kind == "unknown" and service_name in _BROWSER_SERVICES and ua and ua.startswith("Mozilla/"):
        kind, dtype = "lwa", "LWA"
    if (
        service_name == "ucwa"
        and isinstance(method, str)
        and isinstance(target, str)
        and is_ucwa_application_create(method, target)
    ):
        detail = "ucwa:id-in-application-body"
    else:
        detail = _NO_ID_DETAIL.get(service_name, "no-device-id-on-wire")
    return DeviceFacts(None, dtype, model, os_name, ua, kind, "user-agent" if ua else "none", "absent", detail=detail)
