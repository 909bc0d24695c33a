"""Decode an authentication header value into its fields, for people — never its secrets.

``decode_header`` takes what follows ``Authorization:`` or ``WWW-Authenticate:`` (or a bare
base64 token) and returns a plain dict; ``render_text`` turns it into indented text, ``summary``
into the one-line form of the gateway's ``[auth] trace = "low"``, ``to_json`` into the compact
form of ``trace = "verbose"``. ``ucgate decode`` and the gateway's trace log use these alone.

What is decoded:

* NTLM NEGOTIATE / CHALLENGE / AUTHENTICATE (MS-NLMP 2.2.1.1-2.2.1.3), through
  :mod:`ucgate.protocols.ntlm`'s parsers: flags by name, domain, user, workstation, version,
  AV pairs (MS-NLMP 2.2.2.1: names, timestamp, MsvAvFlags, target name/SPN, whether channel
  bindings are present), NT response kind (v1/v2) and length, whether a MIC is present;
* SPNEGO NegTokenInit / NegTokenResp (RFC 4178 §4.2), through
  :func:`ucgate.protocols.spnego.parse_negotiate_token`: mechanism names, negState, the inner
  token decoded one level down (NTLM or Kerberos; SPNEGO never nests);
* Kerberos AP-REQ (RFC 4120 §5.5.1), inside the GSS-API framing of RFC 4121 §4.1 or raw:
  pvno, msg-type, ap-options, ticket realm, sname (the SPN), ticket enc-part etype and kvno,
  authenticator etype; AP-REP (§5.5.2) and KRB-ERROR (§5.9.1) briefly (etype; error code,
  realm, sname, e-text), as they come back in a NegTokenResp;
* Basic (RFC 7617): the user name, and the password's *length*;
* Bearer (RFC 6750): the token's kind (SfB web ticket ``cwt=``, JWT, opaque) and length;
* SIP's MS-SIPAE fields (``NTLM|Kerberos|TLS-DSK realm=..., targetname=...``, through
  :func:`ucgate.protocols.sipauth.parse_auth`): realm, targetname, version, opaque, qop,
  crand/cnum, srand/snum, sts-uri, the signatures by length only, gssapi-data decoded as above.

What is never in the output: passwords, NT/LM responses and NTProofStr, MICs and
mechListMICs, session keys, server and client challenges, Kerberos cipher texts, bearer tokens,
raw bytes or base64 of any kind. Only lengths and presence are shown for those.

Untrusted input: the header is capped at :data:`MAX_HEADER_SIZE` before base64 is decoded and
the token at :data:`MAX_TOKEN_SIZE` (the NTLM and SPNEGO parsers' own cap) before it is
parsed; the Kerberos reader is a fixed schema over SPNEGO's strict DER reader (no recursion
on the input's say-so), and a name has at most :data:`MAX_NAME_COMPONENTS` parts. Every text
field has control and format characters escaped (no forged log lines, no bidi tricks) and is
cut at :data:`MAX_TEXT` characters. The only exception raised for bad input is
:class:`DecodeError`.
"""

from __future__ import annotations

import base64
import binascii
import datetime as _dt
import json
import re
import struct
import textwrap
import unicodedata
from typing import Any

from ..errors import UcgateError
from . import ntlm, sipauth, spnego
from .ntlm import AvFlags, AvId, NegotiateFlags, NtlmError
from .sip import SipError

# _read_tlv is SPNEGO's DER reader: single-byte tags, minimal definite lengths, bounded by the
# container; Kerberos messages use single-byte tags too (APPLICATION 1..30, [0]..[12]).
from .spnego import SpnegoError, _decode_oid, _read_tlv

__all__ = [
    "MAX_HEADER_SIZE",
    "MAX_NAME_COMPONENTS",
    "MAX_TEXT",
    "MAX_TOKEN_SIZE",
    "DecodeError",
    "decode_header",
    "decode_token",
    "render_text",
    "summary",
    "to_json",
]

# --- limits -------------------------------------------------------------------------------
# The token cap is the NTLM/SPNEGO parsers' (64 KiB, above Windows' 48000-byte MaxTokenSize
# default for Kerberos); the header cap is its base64 plus room for a scheme name.
MAX_TOKEN_SIZE = spnego.MAX_TOKEN_SIZE
MAX_HEADER_SIZE = 4 * ((MAX_TOKEN_SIZE + 2) // 3) + 64
# SPNs have two or three components (HTTP/host, ldap/host/domain); 16 bounds the loop.
MAX_NAME_COMPONENTS = 16
# Longest text shown for one field (user, domain, SPN...); the rest is counted, not shown.
MAX_TEXT = 256
# A KerberosTime is 15 bytes; Int32/UInt32 fit in 5 bytes of DER. Anything longer is malformed.
_MAX_INTEGER_BYTES = 8

SCHEMES = {"ntlm": "NTLM", "negotiate": "Negotiate", "kerberos": "Kerberos", "basic": "Basic", "bearer": "Bearer"}
_HEADER_NAMES = (
    "authorization:",
    "proxy-authorization:",
    "www-authenticate:",
    "proxy-authenticate:",
    "authentication-info:",
    "proxy-authentication-info:",
)
# An MS-SIPAE field: a scheme, then ``name=value`` (base64 ends in "=" or "==", never "=x").
_SIPAE_RE = re.compile(r"(?i)(?:ntlm|kerberos|tls-dsk)[ \t]+[A-Za-z0-9\-]+[ \t]*=[ \t]*[^=\s]")

MECH_NAMES = {
    spnego.NTLM_OID: "NTLM",
    spnego.KRB5_OID: "Kerberos 5",
    spnego.MS_KRB5_OID: "Kerberos 5 (Microsoft OID)",
    spnego.NEGOEX_OID: "NEGOEX",
    spnego.SPNEGO_OID: "SPNEGO",
    "1.2.840.113554.1.2.2.3": "Kerberos 5 user-to-user",
    "1.3.6.1.5.2.5": "IAKERB",
}

# RFC 3961 §8 and the IANA "Kerberos Encryption Type Numbers" registry.
ETYPES = {
    1: "des-cbc-crc",
    2: "des-cbc-md4",
    3: "des-cbc-md5",
    16: "des3-cbc-sha1",
    17: "aes128-cts-hmac-sha1-96",
    18: "aes256-cts-hmac-sha1-96",
    19: "aes128-cts-hmac-sha256-128",
    20: "aes256-cts-hmac-sha384-192",
    23: "rc4-hmac",
    24: "rc4-hmac-exp",
    25: "camellia128-cts-cmac",
    26: "camellia256-cts-cmac",
}
# RFC 4120 §6.2, RFC 6806 §5, and Microsoft's negative values (MS-KILE 2.2.2 references).
NAME_TYPES = {
    0: "NT-UNKNOWN",
    1: "NT-PRINCIPAL",
    2: "NT-SRV-INST",
    3: "NT-SRV-HST",
    4: "NT-SRV-XHST",
    5: "NT-UID",
    6: "NT-X500-PRINCIPAL",
    7: "NT-SMTP-NAME",
    10: "NT-ENTERPRISE",
    -128: "NT-MS-PRINCIPAL",
    -129: "NT-MS-PRINCIPAL-AND-ID",
    -130: "NT-ENT-PRINCIPAL-AND-ID",
}
# APOptions bits, RFC 4120 §5.5.1 (bit 0 is reserved).
AP_OPTIONS = {0: "reserved", 1: "use-session-key", 2: "mutual-required"}
# RFC 4120 §7.5.9: the error codes an HTTP acceptor or its KDC answers with.
KRB_ERRORS = {
    6: "KDC_ERR_C_PRINCIPAL_UNKNOWN",
    7: "KDC_ERR_S_PRINCIPAL_UNKNOWN",
    14: "KDC_ERR_ETYPE_NOSUPP",
    24: "KDC_ERR_PREAUTH_FAILED",
    25: "KDC_ERR_PREAUTH_REQUIRED",
    31: "KRB_AP_ERR_BAD_INTEGRITY",
    32: "KRB_AP_ERR_TKT_EXPIRED",
    33: "KRB_AP_ERR_TKT_NYV",
    34: "KRB_AP_ERR_REPEAT",
    35: "KRB_AP_ERR_NOT_US",
    36: "KRB_AP_ERR_BADMATCH",
    37: "KRB_AP_ERR_SKEW",
    38: "KRB_AP_ERR_BADADDR",
    39: "KRB_AP_ERR_BADVERSION",
    40: "KRB_AP_ERR_MSG_TYPE",
    41: "KRB_AP_ERR_MODIFIED",
    44: "KRB_AP_ERR_BADKEYVER",
    45: "KRB_AP_ERR_NOKEY",
    60: "KRB_ERR_GENERIC",
    68: "KDC_ERR_WRONG_REALM",
}

# DER tags (RFC 4120 §5: APPLICATION n constructed = 0x60 | n, context [n] = 0xA0 | n).
_INTEGER, _BIT_STRING, _OCTET_STRING, _SEQUENCE = 0x02, 0x03, 0x04, 0x30
_GENERAL_STRING, _GENERALIZED_TIME = 0x1B, 0x18
_GSS_INITIAL = 0x60
_AP_REQ, _TICKET, _AP_REP, _KRB_ERROR = 0x6E, 0x61, 0x6F, 0x7E
# GSS-API krb5 TOK_ID (RFC 4121 §4.1) for each message, and the message's name.
_KRB_MESSAGES = {
    _AP_REQ: (b"\x01\x00", "AP-REQ"),
    _AP_REP: (b"\x02\x00", "AP-REP"),
    _KRB_ERROR: (b"\x03\x00", "KRB-ERROR"),
}
_NEGOEX_SIGNATURE = b"NEGOEXTS"


class DecodeError(UcgateError, ValueError):
    """A header value that cannot be decoded. ``reason``: ``too-large``, ``bad-base64``,
    ``empty``, ``unsupported-scheme``, ``unsupported-mech``, ``malformed`` or
    ``unexpected-message``. ``message`` says what is wrong and never quotes the input."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(reason, message, message=f"{reason}: {message}")
        self.message = message


def _malformed(message: str) -> DecodeError:
    return DecodeError("malformed", message)


# --- public API -----------------------------------------------------------------------------


def decode_header(value: str | bytes) -> dict[str, Any]:
    """Decode an ``Authorization``/``WWW-Authenticate`` value, or a bare base64 token.

    A leading header name (``Authorization:`` ...) is ignored, so a line copied from a trace
    works too.

    Returns:
        ``{"scheme": "NTLM"|"Negotiate"|"Kerberos"|"Basic"|"Bearer"|None, "length": <token
        bytes>, "message": {"kind": ..., ...}}`` (``scheme`` None for a bare token).

    Raises:
        DecodeError: and nothing else, whatever ``value`` holds.
    """
    if isinstance(value, (bytes, bytearray, memoryview)):
        if len(value) > MAX_HEADER_SIZE:
            raise DecodeError("too-large", f"header value is {len(value)} bytes, limit {MAX_HEADER_SIZE}")
        value = bytes(value).decode("latin-1")
    if not isinstance(value, str):
        raise DecodeError("malformed", "header value must be text or bytes")
    if len(value) > MAX_HEADER_SIZE:
        raise DecodeError("too-large", f"header value is {len(value)} characters, limit {MAX_HEADER_SIZE}")
    text = value.strip()
    field = None
    for name in _HEADER_NAMES:
        if text[: len(name)].lower() == name:
            text = text[len(name) :].strip()
            field = name[:-1]
            break
    if not text:
        raise DecodeError("empty", "nothing to decode")
    if _SIPAE_RE.match(text):
        return _sipae(text, field)
    word, _, param = text.partition(" ")
    scheme = SCHEMES.get(word.lower())
    if scheme is None:
        if param:
            raise DecodeError(
                "unsupported-scheme", f"scheme {_text(word[:32])!r} is not decoded (NTLM, Negotiate, Basic, Bearer)"
            )
        token = _b64decode(word)
        return {"scheme": None, "length": len(token), "message": decode_token(token)}
    param = param.strip()
    if not param:
        raise DecodeError("empty", f"no token after {scheme}")
    if scheme == "Bearer":
        return {"scheme": scheme, "length": len(param), "message": _bearer(param)}
    token = _b64decode(param)
    message = _basic(token) if scheme == "Basic" else decode_token(token)
    return {"scheme": scheme, "length": len(token), "message": message}


def decode_token(token: bytes) -> dict[str, Any]:
    """Decode a binary NTLM, SPNEGO, GSS-API Kerberos or raw Kerberos token.

    Raises:
        DecodeError: and nothing else, whatever ``token`` holds.
    """
    if not isinstance(token, (bytes, bytearray, memoryview)):
        raise DecodeError("malformed", "token must be bytes")
    if len(token) > MAX_TOKEN_SIZE:
        raise DecodeError("too-large", f"token is {len(token)} bytes, limit {MAX_TOKEN_SIZE}")
    token = bytes(token)
    if not token:
        raise DecodeError("empty", "empty token")
    try:
        if token.startswith(ntlm.SIGNATURE):
            return _ntlm(token)
        if token[0] in _KRB_MESSAGES:
            return _kerberos(token, 0, len(token), None)
        if token[0] == _GSS_INITIAL and _gss_mech(token) != spnego.SPNEGO_OID:
            return _gss(token)
        parsed = spnego.parse_negotiate_token(token)
        if isinstance(parsed, spnego.NegTokenInit):
            return _neg_token_init(parsed)
        if isinstance(parsed, spnego.NegTokenResp):
            return _neg_token_resp(parsed)
        raise _malformed("not an NTLM, SPNEGO or Kerberos token")  # RawNtlm/RawKerberos: above
    except (NtlmError, SpnegoError) as exc:
        raise DecodeError(exc.reason, exc.message) from None


def to_json(decoded: dict[str, Any]) -> str:
    """One line of JSON (the ``verbose`` trace); the strings are already escaped and bounded."""
    return json.dumps(decoded, ensure_ascii=False, separators=(",", ":"))


def summary(decoded: dict[str, Any]) -> str:
    """One line: scheme, message kinds (outer > inner) and who (the ``low`` trace)::

    scheme=Negotiate message="SPNEGO NegTokenResp > NTLM AUTHENTICATE" user=alice domain=LAB
    """
    parts = [("scheme", decoded.get("scheme") or "-")]
    kinds: list[str] = []
    message: dict[str, Any] | None = decoded.get("message")
    innermost: dict[str, Any] = {}
    while isinstance(message, dict):
        kinds.append(str(message.get("kind")))
        innermost = message
        message = message.get("mech_token") or message.get("response_token") or message.get("gssapi_data")
    parts.append(("message", " > ".join(kinds)))
    for key in ("user", "domain", "workstation", "error_code"):
        if innermost.get(key) is not None:
            parts.append((key, innermost[key]))
    ticket = innermost.get("ticket") or {}
    for key in ("sname", "realm"):
        value = ticket.get(key) or (innermost.get(key) if "error_code" in innermost else None)
        if value:
            parts.append(("spn" if key == "sname" else key, value))
    if ticket.get("enc_part"):
        parts.append(("etype", ticket["enc_part"]["etype"]))
    if "password_length" in innermost:
        parts.append(("password", f"<{innermost['password_length']} characters>"))
    return " ".join(f"{k}={_quote(str(v))}" for k, v in parts)


def render_text(decoded: dict[str, Any]) -> str:
    """Indented ``key: value`` lines, outermost first (what ``ucgate decode`` prints)."""
    scheme = decoded.get("scheme")
    message = decoded.get("message") or {}
    head = f"{message.get('kind', '?')}"
    head += f"  ({scheme} header, {decoded.get('length')} bytes)" if scheme else f"  ({decoded.get('length')} bytes)"
    lines = [head]
    _render(message, 1, lines, skip="kind")
    return "\n".join(lines) + "\n"


def _render(node: dict[str, Any], depth: int, lines: list[str], skip: str | None = None) -> None:
    pad = "  " * depth
    for key, value in node.items():
        if key == skip:
            continue
        label = key.replace("_", " ")
        if isinstance(value, dict):
            kind = value.get("kind")
            lines.append(f"{pad}{label}:" + (f" {kind}" if kind else ""))
            _render(value, depth + 1, lines, skip="kind")
        elif isinstance(value, list):
            joined = ", ".join(str(v) for v in value)
            if len(joined) + len(pad) + len(label) > 96:
                lines.append(f"{pad}{label}:")
                lines.extend(
                    textwrap.wrap(
                        joined,
                        96,
                        initial_indent=pad + "  ",
                        subsequent_indent=pad + "  ",
                        break_long_words=False,
                        break_on_hyphens=False,
                    )
                )
            else:
                lines.append(f"{pad}{label}: {joined or '(none)'}")
        elif isinstance(value, bool):
            lines.append(f"{pad}{label}: {'yes' if value else 'no'}")
        else:
            lines.append(f"{pad}{label}: {value}")


# --- text helpers -----------------------------------------------------------------------------


def _text(value: str) -> str:
    """Escape control/format/separator characters and lone surrogates; cut at MAX_TEXT."""
    out = []
    for ch in value[:MAX_TEXT]:
        if unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Zl", "Zp"):
            out.append(ch.encode("unicode_escape", "backslashreplace").decode("ascii"))
        else:
            out.append(ch)
    text = "".join(out)
    if len(value) > MAX_TEXT:
        text += f"...(+{len(value) - MAX_TEXT} characters)"
    return text


def _quote(value: str) -> str:
    if value and not any(c in value for c in ' "='):
        return value
    return json.dumps(value, ensure_ascii=False)


def _named(table: dict[int, str], number: int) -> str:
    return f"{table.get(number, 'unknown')} ({number})"


def _b64decode(text: str) -> bytes:
    compact = "".join(text.split())
    if len(compact) > MAX_HEADER_SIZE:
        raise DecodeError("too-large", "token too large")
    try:
        return base64.b64decode(compact.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise DecodeError("bad-base64", "the token is not valid base64") from None


def _filetime(value: int) -> str:
    """FILETIME as ISO 8601 UTC; out-of-range values as the raw number."""
    seconds, ticks = divmod(value - ntlm.FILETIME_UNIX_EPOCH, ntlm.FILETIME_TICKS_PER_SECOND)
    if not -62135596800 <= seconds <= 253402300799:  # years 1..9999
        return f"FILETIME {value} (out of range)"
    when = _dt.datetime(1970, 1, 1, tzinfo=_dt.UTC) + _dt.timedelta(seconds=seconds, microseconds=ticks // 10)
    return when.isoformat().replace("+00:00", "Z")


# --- NTLM (MS-NLMP 2.2.1) ---------------------------------------------------------------------


def _flag_names(value: int, flag_type: type[NegotiateFlags | AvFlags]) -> list[str]:
    names = [f.name for f in flag_type if value & f.value and f.name]
    known = sum(f.value for f in flag_type)
    names += [f"0x{bit:08x}" for bit in (1 << i for i in range(32)) if value & bit and not known & bit]
    return names


def _flags(value: int) -> dict[str, Any]:
    return {"flags_value": f"0x{value:08x}", "flags": _flag_names(value, NegotiateFlags)}


def _version(version: ntlm.Version | None) -> dict[str, Any]:
    if version is None:
        return {}
    return {"version": f"{version.major}.{version.minor}.{version.build} (NTLM revision {version.revision})"}


def _ntlm(token: bytes) -> dict[str, Any]:
    if len(token) < 12:
        raise _malformed("NTLM message shorter than its 12-byte header")
    (msg_type,) = struct.unpack_from("<I", token, 8)
    if msg_type == 1:
        return _ntlm_negotiate(ntlm.NegotiateMessage.unpack(token))
    if msg_type == 2:
        return _ntlm_challenge(ntlm.ChallengeMessage.unpack(token))
    if msg_type == 3:
        return _ntlm_authenticate(ntlm.AuthenticateMessage.unpack(token))
    raise DecodeError("unexpected-message", f"unknown NTLM message type {msg_type}")


def _ntlm_negotiate(m: ntlm.NegotiateMessage) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": "NTLM NEGOTIATE", **_flags(m.flags)}
    if m.domain_name:
        out["domain"] = _text(m.domain_name)
    if m.workstation:
        out["workstation"] = _text(m.workstation)
    return out | _version(m.version)


def _ntlm_challenge(m: ntlm.ChallengeMessage) -> dict[str, Any]:
    # The server challenge is a nonce, not a secret, but bytes: only its presence is implied.
    out: dict[str, Any] = {"kind": "NTLM CHALLENGE", **_flags(m.flags)}
    if m.target_name:
        out["target_name"] = _text(m.target_name)
    out |= _version(m.version)
    if m.target_info is not None:
        out["target_info"] = _av_pairs(m.target_info)
    return out


def _ntlm_authenticate(m: ntlm.AuthenticateMessage) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": "NTLM AUTHENTICATE", **_flags(m.flags)}
    out["domain"] = _text(m.domain_name)
    out["user"] = _text(m.user_name)
    out["workstation"] = _text(m.workstation)
    out |= _version(m.version)
    out["lm_response_length"] = len(m.lm_challenge_response)
    out["nt_response"] = _nt_response(m.nt_challenge_response)
    out["mic"] = "absent" if m.mic is None else "all zero" if not any(m.mic) else "present"
    out["encrypted_session_key"] = bool(m.encrypted_random_session_key)
    return out


def _nt_response(nt: bytes) -> dict[str, Any]:
    """Kind and length of an NtChallengeResponse (MS-NLMP 2.2.2.6 / 2.2.2.8), and the
    NTLMv2_CLIENT_CHALLENGE's timestamp and AV pairs; never NTProofStr or challenge bytes."""
    if not nt:
        return {"kind": "none (anonymous or LM only)", "length": 0}
    if len(nt) == 24:
        return {"kind": "NTLMv1", "length": 24}
    if len(nt) < 16 + 28 + 4:
        return {"kind": "unknown", "length": len(nt)}
    out: dict[str, Any] = {"kind": "NTLMv2", "length": len(nt)}
    try:
        blob = ntlm.NtlmV2ClientChallenge.unpack(nt[16:])
    except NtlmError as exc:
        out["error"] = exc.message
        return out
    out["client_timestamp"] = _filetime(blob.timestamp)
    out["av_pairs"] = _av_pairs(blob.av_pairs)
    return out


def _av_pairs(info: ntlm.TargetInfo) -> dict[str, Any]:
    """AV pairs by name (MS-NLMP 2.2.2.1); binary values by presence and length only."""
    out: dict[str, Any] = {}
    for pair in info.pairs:
        av_id = pair.av_id
        if av_id == AvId.MsvAvTimestamp:
            out["MsvAvTimestamp"] = _filetime(struct.unpack("<Q", pair.value)[0])
        elif av_id == AvId.MsvAvFlags:
            out["MsvAvFlags"] = _flag_names(struct.unpack("<I", pair.value)[0], AvFlags) or ["none"]
        elif av_id == AvId.MsvAvChannelBindings:
            out["MsvAvChannelBindings"] = "present" if any(pair.value) else "all zero (none)"
        elif av_id == AvId.MsvAvSingleHost:
            out["MsvAvSingleHost"] = f"present ({len(pair.value)} bytes)"
        elif isinstance(av_id, AvId):
            try:
                out[av_id.name] = _text(pair.text())
            except NtlmError:
                out[av_id.name] = f"not UTF-16LE ({len(pair.value)} bytes)"
        else:
            out[f"AvId 0x{av_id:04x}"] = f"{len(pair.value)} bytes"
    return out


# --- SPNEGO (RFC 4178 §4.2) -------------------------------------------------------------------


def _mech_name(oid: str) -> str:
    name = MECH_NAMES.get(oid)
    return f"{name} ({oid})" if name else oid


def _neg_token_init(t: spnego.NegTokenInit) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": "SPNEGO NegTokenInit", "mech_types": [_mech_name(m) for m in t.mech_types]}
    if t.mech_token is not None:
        out["mech_token"] = _inner(t.mech_token)
    out["mech_list_mic"] = t.mech_list_mic is not None
    return out


def _neg_token_resp(t: spnego.NegTokenResp) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": "SPNEGO NegTokenResp"}
    if t.neg_state is not None:
        out["neg_state"] = f"{spnego.NegState(t.neg_state).name.lower().replace('_', '-')} ({t.neg_state})"
    if t.supported_mech is not None:
        out["supported_mech"] = _mech_name(t.supported_mech)
    if t.response_token is not None:
        out["response_token"] = _inner(t.response_token)
    out["mech_list_mic"] = t.mech_list_mic is not None
    return out


def _inner(token: bytes) -> dict[str, Any]:
    """A mechanism token inside SPNEGO: NTLM or Kerberos, decoded; a broken one is reported in
    place (so the SPNEGO fields still show), never SPNEGO again (no nesting)."""
    try:
        if token.startswith(ntlm.SIGNATURE):
            return _ntlm(token)
        if token.startswith(_NEGOEX_SIGNATURE):
            return {"kind": "NEGOEX", "length": len(token)}
        if token and token[0] in _KRB_MESSAGES:
            return _kerberos(token, 0, len(token), None)
        if token and token[0] == _GSS_INITIAL and _gss_mech(token) != spnego.SPNEGO_OID:
            return _gss(token)
        return {"kind": "unknown", "length": len(token)}
    except (DecodeError, NtlmError, SpnegoError) as exc:
        return {"kind": "undecodable", "length": len(token), "error": f"{exc.reason}: {exc.message}"}


# --- GSS-API framing (RFC 2743 §3.1, RFC 4121 §4.1) -------------------------------------------


def _gss_mech(token: bytes) -> str:
    _, start, end = _read_tlv(token, 0, len(token))
    tag, oid_start, oid_end = _read_tlv(token, start, end)
    if tag != 0x06:
        raise _malformed("GSS-API InitialContextToken without a mechanism OID")
    return _decode_oid(token[oid_start:oid_end])


def _gss(token: bytes) -> dict[str, Any]:
    _, start, end = _read_tlv(token, 0, len(token))
    if end != len(token):
        raise _malformed("trailing bytes after the GSS-API token")
    _, oid_start, oid_end = _read_tlv(token, start, end)
    mech = _decode_oid(token[oid_start:oid_end])
    if mech not in (spnego.KRB5_OID, spnego.MS_KRB5_OID):
        raise DecodeError("unsupported-mech", f"GSS-API token of mechanism {_mech_name(mech)}")
    tok_id = token[oid_end : oid_end + 2]
    if len(tok_id) < 2 or oid_end + 2 >= end:
        raise _malformed("Kerberos GSS-API token without TOK_ID and message")
    return _kerberos(token, oid_end + 2, end, (tok_id, _mech_name(mech)))


# --- Kerberos (RFC 4120 §5) -------------------------------------------------------------------


def _kerberos(data: bytes, pos: int, end: int, gss: tuple[bytes, str] | None) -> dict[str, Any]:
    tag, start, stop = _read_tlv(data, pos, end)
    if stop != end:
        raise _malformed("trailing bytes after the Kerberos message")
    if tag not in _KRB_MESSAGES:
        raise DecodeError("unexpected-message", f"not a Kerberos AP-REQ, AP-REP or KRB-ERROR (tag 0x{tag:02x})")
    tok_id, name = _KRB_MESSAGES[tag]
    out: dict[str, Any] = {"kind": f"Kerberos {name}"}
    if gss is None:
        out["framing"] = "raw (no GSS-API header)"
    else:
        if gss[0] != tok_id:
            raise _malformed(f"GSS-API TOK_ID {gss[0].hex()} does not match a {name}")
        out["framing"] = f"GSS-API, mechanism {gss[1]}"
    body_start, body_end = _sequence(data, start, stop, name)
    if tag == _AP_REQ:
        return out | _ap_req(data, body_start, body_end)
    if tag == _AP_REP:
        return out | _ap_rep(data, body_start, body_end)
    return out | _krb_error(data, body_start, body_end)


def _sequence(data: bytes, start: int, end: int, what: str) -> tuple[int, int]:
    tag, s, e = _read_tlv(data, start, end)
    if tag != _SEQUENCE or e != end:
        raise _malformed(f"{what} is not one SEQUENCE")
    return s, e


def _fields(
    data: bytes, start: int, end: int, allowed: range, required: set[int], what: str
) -> dict[int, tuple[int, int]]:
    """The ``[n]`` fields of a SEQUENCE body, each strictly after the previous one."""
    fields: dict[int, tuple[int, int]] = {}
    last = -1
    pos = start
    while pos < end:
        tag, s, e = _read_tlv(data, pos, end)
        number = tag - 0xA0
        if number not in allowed or number <= last:
            raise _malformed(f"{what}: unexpected field tag 0x{tag:02x}")
        fields[number] = (s, e)
        last = number
        pos = e
    missing = required - fields.keys()
    if missing:
        raise _malformed(f"{what}: field [{min(missing)}] missing")
    return fields


def _only(data: bytes, span: tuple[int, int], tag: int, what: str) -> tuple[int, int]:
    found, s, e = _read_tlv(data, span[0], span[1])
    if found != tag or e != span[1]:
        raise _malformed(f"{what}: expected one element of tag 0x{tag:02x}")
    return s, e


def _int(data: bytes, span: tuple[int, int], what: str) -> int:
    s, e = _only(data, span, _INTEGER, what)
    if not 0 < e - s <= _MAX_INTEGER_BYTES:
        raise _malformed(f"{what}: INTEGER of {e - s} bytes")
    return int.from_bytes(data[s:e], "big", signed=True)


def _kstring(data: bytes, span: tuple[int, int], what: str) -> str:
    s, e = _only(data, span, _GENERAL_STRING, what)
    return _text(data[s:e].decode("utf-8", "backslashreplace"))


def _principal(data: bytes, span: tuple[int, int], what: str) -> tuple[str, str]:
    """PrincipalName (RFC 4120 §5.2.2) as ("comp1/comp2", "NT-SRV-INST (2)")."""
    s, e = _sequence(data, span[0], span[1], what)
    fields = _fields(data, s, e, range(2), {0, 1}, what)
    name_type = _int(data, fields[0], f"{what} name-type")
    ls, le = _only(data, fields[1], _SEQUENCE, f"{what} name-string")
    parts: list[str] = []
    pos = ls
    while pos < le:
        if len(parts) >= MAX_NAME_COMPONENTS:
            raise _malformed(f"{what}: more than {MAX_NAME_COMPONENTS} name components")
        tag, cs, ce = _read_tlv(data, pos, le)
        if tag != _GENERAL_STRING:
            raise _malformed(f"{what}: name component is not a KerberosString")
        parts.append(data[cs:ce].decode("utf-8", "backslashreplace"))
        pos = ce
    return _text("/".join(parts)), _named(NAME_TYPES, name_type)


def _encrypted_data(data: bytes, span: tuple[int, int], what: str) -> dict[str, Any]:
    """EncryptedData (RFC 4120 §5.2.9): etype and kvno; the cipher only by its length."""
    s, e = _sequence(data, span[0], span[1], what)
    fields = _fields(data, s, e, range(3), {0, 2}, what)
    out: dict[str, Any] = {"etype": _named(ETYPES, _int(data, fields[0], f"{what} etype"))}
    if 1 in fields:
        out["kvno"] = _int(data, fields[1], f"{what} kvno")
    cs, ce = _only(data, fields[2], _OCTET_STRING, f"{what} cipher")
    out["cipher_length"] = ce - cs
    return out


def _ap_options(data: bytes, span: tuple[int, int]) -> list[str]:
    s, e = _only(data, span, _BIT_STRING, "ap-options")
    if e - s < 1 or data[s] > 7:
        raise _malformed("ap-options: malformed BIT STRING")
    bits = data[s + 1 : e]
    names = []
    for index in range(min(len(bits) * 8, 32)):
        if bits[index // 8] & (0x80 >> (index % 8)):
            names.append(AP_OPTIONS.get(index, f"bit {index}"))
    return names


def _pvno_and_type(data: bytes, fields: dict[int, tuple[int, int]], expected: int, what: str) -> dict[str, Any]:
    pvno = _int(data, fields[0], "pvno")
    msg_type = _int(data, fields[1], "msg-type")
    if msg_type != expected:
        raise _malformed(f"{what} with msg-type {msg_type}, expected {expected}")
    return {"pvno": pvno, "msg_type": msg_type}


def _ap_req(data: bytes, start: int, end: int) -> dict[str, Any]:
    """AP-REQ, RFC 4120 §5.5.1; Ticket §5.3."""
    fields = _fields(data, start, end, range(5), {0, 1, 2, 3, 4}, "AP-REQ")
    out = _pvno_and_type(data, fields, 14, "AP-REQ")
    out["ap_options"] = _ap_options(data, fields[2])
    ts, te = _only(data, fields[3], _TICKET, "ticket")
    ts, te = _sequence(data, ts, te, "Ticket")
    tf = _fields(data, ts, te, range(4), {0, 1, 2, 3}, "Ticket")
    sname, name_type = _principal(data, tf[2], "sname")
    out["ticket"] = {
        "tkt_vno": _int(data, tf[0], "tkt-vno"),
        "realm": _kstring(data, tf[1], "realm"),
        "sname": sname,
        "sname_type": name_type,
        "enc_part": _encrypted_data(data, tf[3], "ticket enc-part"),
    }
    out["authenticator"] = _encrypted_data(data, fields[4], "authenticator")
    return out


def _ap_rep(data: bytes, start: int, end: int) -> dict[str, Any]:
    """AP-REP, RFC 4120 §5.5.2."""
    fields = _fields(data, start, end, range(3), {0, 1, 2}, "AP-REP")
    return _pvno_and_type(data, fields, 15, "AP-REP") | {"enc_part": _encrypted_data(data, fields[2], "enc-part")}


def _krb_error(data: bytes, start: int, end: int) -> dict[str, Any]:
    """KRB-ERROR, RFC 4120 §5.9.1: the error code and who answered; e-data by length only."""
    fields = _fields(data, start, end, range(13), {0, 1, 4, 5, 6, 9, 10}, "KRB-ERROR")
    out = _pvno_and_type(data, fields, 30, "KRB-ERROR")
    out["error_code"] = _named(KRB_ERRORS, _int(data, fields[6], "error-code"))
    ss, se = _only(data, fields[4], _GENERALIZED_TIME, "stime")
    out["stime"] = _text(data[ss:se].decode("ascii", "backslashreplace"))
    out["realm"] = _kstring(data, fields[9], "realm")
    out["sname"], out["sname_type"] = _principal(data, fields[10], "sname")
    if 11 in fields:
        out["e_text"] = _kstring(data, fields[11], "e-text")
    if 12 in fields:
        ds, de = _only(data, fields[12], _OCTET_STRING, "e-data")
        out["e_data_length"] = de - ds
    return out


# --- Basic and Bearer -------------------------------------------------------------------------


def _basic(raw: bytes) -> dict[str, Any]:
    """Basic credentials (RFC 7617 §2): the user id; the password by its length only."""
    user_b, colon, password_b = raw.partition(b":")
    if not colon:
        raise _malformed("Basic credentials without the ':' between user and password")
    try:
        user, password = user_b.decode("utf-8"), password_b.decode("utf-8")
    except UnicodeDecodeError:
        user, password = user_b.decode("latin-1"), password_b.decode("latin-1")
    return {"kind": "Basic credentials", "user": _text(user), "password_length": len(password)}


def _bearer(token: str) -> dict[str, Any]:
    """Bearer (RFC 6750 §2.1): what kind of token, and its length; never the token."""
    if token.startswith("cwt="):
        kind = "SfB web ticket (cwt)"
    elif token.count(".") == 2 and token.startswith("eyJ"):
        kind = "JWT"
    elif token.count(".") == 4 and token.startswith("eyJ"):
        kind = "JWE"
    else:
        kind = "opaque"
    return {"kind": f"Bearer token: {kind}", "length": len(token)}


# --- MS-SIPAE (SIP) -----------------------------------------------------------------------------


def _sipae(text: str, field: str | None) -> dict[str, Any]:
    """An MS-SIPAE field value: its parameters; signatures by length, gssapi-data decoded."""
    kinds = (
        [sipauth.AUTH_FIELD_KINDS[field]] if field in sipauth.AUTH_FIELD_KINDS else ["credentials", "info", "challenge"]
    )
    errors = []
    for kind in kinds:
        try:
            auth = sipauth.parse_auth(text, kind)
            break
        except SipError as exc:
            errors.append(exc.reason)
    else:
        raise DecodeError("malformed", f"MS-SIPAE field: {errors[0]}")
    out: dict[str, Any] = {"kind": f"MS-SIPAE {auth.scheme} {auth.kind}"}
    for name in ("realm", "targetname", "version", "opaque", "qop", "sts_uri", "crand", "cnum", "srand", "snum"):
        value = getattr(auth, name)
        if value is not None:
            out[name] = _text(value) if isinstance(value, str) else value
    for name in ("response", "rspauth"):
        if getattr(auth, name) is not None:
            out[name] = f"present ({len(getattr(auth, name))} hex digits)"
    if auth.other:
        out["other_params"] = [_text(n) for n in auth.other]
    if auth.gssapi_data is not None:
        token = auth.gssapi_data
        if not token:
            out["gssapi_data"] = {"kind": "empty"}
        elif auth.scheme == "TLS-DSK" and token[0] in (0x14, 0x15, 0x16, 0x17):
            out["gssapi_data"] = {"kind": "TLS records", "length": len(token)}  # TLS-DSK's handshake
        else:
            out["gssapi_data"] = _inner(token)
    return {"scheme": auth.scheme, "length": len(auth.gssapi_data or b""), "message": out}
