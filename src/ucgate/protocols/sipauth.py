"""MS-SIPAE authentication fields of SIP (NTLM, Kerberos, TLS-DSK), sans-I/O: parse, never verify.

The Access Edge challenges a REGISTER with one ``WWW-Authenticate`` (or ``Proxy-Authenticate``)
per scheme it offers::

    WWW-Authenticate: NTLM realm="SIP Communications Service", targetname="server.contoso.com", version=3

the client answers each leg with ``Authorization`` (or ``Proxy-Authorization``) carrying the
security token in ``gssapi-data`` (base64; for NTLM a connectionless exchange: an empty
gssapi-data, the server's CHALLENGE in ``gssapi-data`` of the second 401 with an ``opaque``
naming the security association, then the client's AUTHENTICATE), and once the association
exists every message is signed: ``crand``/``cnum``/``response`` from the client,
``srand``/``snum``/``rspauth`` in the server's ``Authentication-Info`` (MS-SIPAE 3.2.5.2,
3.3.5.2). This module reads those fields; it verifies no signature (the gateway relays signed
messages unchanged, so it never holds the association's keys).

Parsing is strict, as for the rest of SIP (``sip.py``): a scheme other than NTLM, Kerberos and
TLS-DSK is refused (``unknown-auth-scheme``: Digest and Basic are not what SfB speaks, and a
field the gateway cannot read is one it cannot police); parameters are RFC 3261 25.1 auth-params
(``token = ( token / quoted-string )``, comma separated), at most :data:`MAX_AUTH_PARAMS`, none
twice; each known parameter has its syntax (``version`` and ``cnum``/``snum`` decimal,
``crand``/``srand``/``opaque``/``response``/``rspauth`` hexadecimal, ``gssapi-data`` base64,
``qop`` ``auth``), belongs to one kind of field (a ``rspauth`` in an Authorization is refused),
and the signature triples come whole. Unknown parameters are kept, not refused (they are not
ambiguous, and a newer server may add some).

Who: :func:`ntlm_identity` reads the user, domain and workstation of an NTLM AUTHENTICATE in a
gssapi-data (through :mod:`ucgate.protocols.ntlm`'s parser, unverified) and
:func:`check_ntlm_user` compares them with the SIP user of the REGISTER — a structural
pre-check that refuses the obvious mismatch early; the authoritative check is the directory's
(the account whose password verified must own that SIP address). A Kerberos client principal is
known only to the acceptor that decrypts the ticket, a TLS-DSK one from its certificate: both
are left to the gateway's acceptors.

References: [MS-SIPAE] sections 2.2 (syntax), 3.2.5.2 and 3.3.5.2 (processing), 4.1 and 4.2
(examples); [MS-SIP] 4.2; RFC 3261 20.6, 20.7, 20.27, 20.28, 20.44, 25.1; [MS-NLMP] 2.2.1.3.
"""

from __future__ import annotations

import base64
import binascii
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from . import ntlm
from .ntlm import Identity, NtlmError
from .sip import SipError, SipMessage, SipUri, canonical_name, parse_sip_uri

__all__ = [
    "AUTH_FIELD_KINDS",
    "MAX_AUTH_PARAMS",
    "SCHEMES",
    "SipAuth",
    "auth_fields",
    "check_ntlm_user",
    "ntlm_identity",
    "parse_auth",
]

# --- limits -------------------------------------------------------------------------------
# MS-SIPAE fields carry at most ~9 parameters (qop, opaque, realm, targetname, gssapi-data,
# version, and a signature triple); 16 leaves room for additions and bounds the loop.
MAX_AUTH_PARAMS = 16
# gssapi-data: the NTLM/SPNEGO parsers' token cap (64 KiB, above Windows' 48000-byte Kerberos
# MaxTokenSize, KB 327825), in base64.
MAX_TOKEN_BYTES = ntlm.MAX_MESSAGE_SIZE
MAX_GSSAPI_DATA_CHARS = 4 * ((MAX_TOKEN_BYTES + 2) // 3)
# realm, targetname, sts-uri: names and one URL; a FQDN is at most 253 characters.
MAX_TEXT_PARAM_CHARS = 1024
# Signatures: NTLM's 16-byte MAC is 32 hex digits, TLS-DSK's HMAC-SHA1 40 (MS-PRES 4.14.3.1,
# MS-OCPSTN 4.7.2.1), a Kerberos MIC token (RFC 4121 4.2.6.1, 16 + 12 bytes) 56; 1024 bounds.
MAX_SIGNATURE_HEX = 1024
# crand/srand: 8 hexadecimal digits in every example (MS-PRES 4.14.3.1 "e8b69f85"); cnum/snum
# count messages of one association: 10 digits is a 32-bit counter. opaque names the
# association: 8 hex digits in every example ("0A9339AD"); 64 bounds it.
MAX_RAND_HEX = 16
MAX_NUM_DIGITS = 10
MAX_OPAQUE_HEX = 64

SCHEMES = {"ntlm": "NTLM", "kerberos": "Kerberos", "tls-dsk": "TLS-DSK"}
AUTH_FIELD_KINDS = {
    "www-authenticate": "challenge",
    "proxy-authenticate": "challenge",
    "authorization": "credentials",
    "proxy-authorization": "credentials",
    "authentication-info": "info",
    "proxy-authentication-info": "info",
}
# Which known parameter may appear in which kind of field (MS-SIPAE 2.2 and the examples).
_COMMON = frozenset({"realm", "targetname", "version", "opaque", "qop"})
_ALLOWED = {
    "challenge": _COMMON | {"gssapi-data", "sts-uri"},
    "credentials": _COMMON | {"gssapi-data", "crand", "cnum", "response"},
    "info": _COMMON | {"srand", "snum", "rspauth"},
}
_KNOWN = frozenset().union(*_ALLOWED.values())
_SIGNATURES = {"credentials": ("crand", "cnum", "response"), "info": ("srand", "snum", "rspauth")}

_TOKEN = r"[A-Za-z0-9\-.!%*_+`'~]+"
_PARAM_RE = re.compile(
    rf'[ \t]*({_TOKEN})[ \t]*=[ \t]*(?:"((?:[\t\x20\x21\x23-\x5b\x5d-\x7e\x80-\U0010ffff]|\\[\t\x20-\x7e\x80-\U0010ffff])*)"|({_TOKEN}))[ \t]*'
)
_UNESCAPE_RE = re.compile(r"\\(.)")
_HEX_RE = re.compile(r"[0-9A-Fa-f]+")
_DIGITS_RE = re.compile(r"[0-9]+")
_B64_RE = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")
_TEXT_RE = re.compile(r"[^\x00-\x08\x0a-\x1f\x7f]*")


@dataclass(frozen=True)
class SipAuth:
    """One MS-SIPAE field value: a challenge (WWW-/Proxy-Authenticate), credentials
    (Authorization, Proxy-Authorization) or a server signature ((Proxy-)Authentication-Info).

    ``params`` holds every parameter as sent, in order: (lower-case name, value without quotes
    or escapes). The typed attributes are the known ones, checked; ``gssapi_data`` is the
    decoded token (``b""`` for ``gssapi-data=""``, None when absent). ``other`` names the
    unknown parameters kept.
    """

    kind: str
    scheme: str
    params: tuple[tuple[str, str], ...]
    realm: str | None = None
    targetname: str | None = None
    version: int | None = None
    opaque: str | None = None
    qop: str | None = None
    sts_uri: str | None = None
    gssapi_data: bytes | None = field(default=None, repr=False)
    crand: str | None = None
    cnum: int | None = None
    response: str | None = field(default=None, repr=False)
    srand: str | None = None
    snum: int | None = None
    rspauth: str | None = field(default=None, repr=False)
    other: tuple[str, ...] = ()

    @property
    def signed(self) -> bool:
        """True when the field carries a message signature (crand/cnum/response or
        srand/snum/rspauth)."""
        return self.response is not None or self.rspauth is not None

    def security_association(self) -> tuple[str, str, str] | None:
        """(scheme, realm, targetname): what MS-SIPAE 3.2.5.2 looks an association up by."""
        if self.realm is None or self.targetname is None:
            return None
        return self.scheme, self.realm, self.targetname

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in self.params if k not in ("gssapi-data", "response", "rspauth"))
        token = "" if self.gssapi_data is None else f", gssapi-data=<{len(self.gssapi_data)} bytes>"
        return f"SipAuth({self.kind} {self.scheme} {shown}{token})"


def _bad(name: str, detail: str) -> SipError:
    return SipError("bad-auth-param", f"{name}: {detail}")


def _check_param(name: str, value: str) -> object:
    """The typed value of a known parameter (MS-SIPAE 2.2), or SipError("bad-auth-param")."""
    if name in ("realm", "targetname", "sts-uri"):
        if len(value) > MAX_TEXT_PARAM_CHARS or not value:
            raise _bad(name, "empty or too long")
        return value
    if name == "version" or name in ("cnum", "snum"):
        if not _DIGITS_RE.fullmatch(value) or len(value) > MAX_NUM_DIGITS:
            raise _bad(name, "not a decimal number")
        return int(value)
    if name in ("crand", "srand"):
        if not _HEX_RE.fullmatch(value) or len(value) > MAX_RAND_HEX:
            raise _bad(name, "not hexadecimal")
        return value
    if name == "opaque":
        if not _HEX_RE.fullmatch(value) or len(value) > MAX_OPAQUE_HEX:
            raise _bad(name, "not hexadecimal")
        return value
    if name in ("response", "rspauth"):
        if not _HEX_RE.fullmatch(value) or len(value) > MAX_SIGNATURE_HEX:
            raise _bad(name, "not hexadecimal")
        return value
    if name == "qop":
        if value.lower() != "auth":
            raise _bad(name, 'only "auth" (MS-SIPAE)')
        return value
    if name == "gssapi-data":
        if len(value) > MAX_GSSAPI_DATA_CHARS:
            raise SipError("gssapi-data-too-large", f"over {MAX_GSSAPI_DATA_CHARS} base64 characters", 513)
        if not _B64_RE.fullmatch(value):
            raise _bad(name, "not base64")
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise _bad(name, "not base64") from None
    raise AssertionError(name)  # pragma: no cover - only known names reach here


def parse_auth(value: str, kind: str) -> SipAuth:
    """Parse one MS-SIPAE field value of ``kind`` ("challenge", "credentials" or "info";
    :data:`AUTH_FIELD_KINDS` maps field names to kinds).

    Raises:
        SipError: "unknown-auth-scheme" (with the scheme in ``detail``), "bad-auth-param",
        "duplicate-auth-param", "unexpected-auth-param", "missing-auth-param" (realm and
        targetname are required: MS-SIPAE 3.3.5.1 matches on them), "incomplete-signature",
        "too-many-auth-params", "gssapi-data-too-large".
    """
    if kind not in _ALLOWED:
        raise ValueError(f"kind must be one of {sorted(_ALLOWED)}")
    if not isinstance(value, str) or not _TEXT_RE.fullmatch(value):
        raise SipError("bad-auth-param", "control character in an authentication field")
    text = value.strip(" \t")
    m = re.match(_TOKEN, text)
    if m is None:
        raise SipError("unknown-auth-scheme", "no scheme")
    scheme = SCHEMES.get(m.group(0).lower())
    if scheme is None:
        raise SipError("unknown-auth-scheme", f"{m.group(0)[:32]} (only NTLM, Kerberos, TLS-DSK)")
    pos = m.end()
    if pos < len(text) and text[pos] not in " \t":
        raise SipError("bad-auth-param", "no space after the scheme")
    params: list[tuple[str, str]] = []
    typed: dict[str, object] = {}
    other: list[str] = []
    while pos < len(text):
        if len(params) >= MAX_AUTH_PARAMS:
            raise SipError("too-many-auth-params", f"more than {MAX_AUTH_PARAMS} parameters")
        p = _PARAM_RE.match(text, pos)
        if p is None:
            raise SipError("bad-auth-param", f"at {text[pos : pos + 24]!r}")
        name = p.group(1).lower()
        raw = _UNESCAPE_RE.sub(r"\1", p.group(2)) if p.group(2) is not None else p.group(3)
        if any(k == name for k, _ in params):
            raise SipError("duplicate-auth-param", name)
        params.append((name, raw))
        if name in _KNOWN:
            if name not in _ALLOWED[kind]:
                raise SipError("unexpected-auth-param", f"{name} in a {kind} field")
            typed[name] = _check_param(name, raw)
        else:
            other.append(name)
        pos = p.end()
        if pos < len(text):
            if text[pos] != ",":
                raise SipError("bad-auth-param", f"expected ',' at {text[pos : pos + 24]!r}")
            pos += 1
            if pos == len(text):
                raise SipError("bad-auth-param", "a trailing ','")
    for name in ("realm", "targetname"):
        if name not in typed:
            raise SipError("missing-auth-param", f"no {name} (MS-SIPAE 3.3.5.1)")
    triple = _SIGNATURES.get(kind)
    if triple is not None and any(n in typed for n in triple) and not all(n in typed for n in triple):
        raise SipError("incomplete-signature", f"{'/'.join(triple)} come together")
    # each value is what _check_param made of its parameter: the type SipAuth declares for it
    t = cast(dict[str, Any], typed)
    return SipAuth(
        kind,
        scheme,
        tuple(params),
        realm=t.get("realm"),
        targetname=t.get("targetname"),
        version=t.get("version"),
        opaque=t.get("opaque"),
        qop=t.get("qop"),
        sts_uri=t.get("sts-uri"),
        gssapi_data=t.get("gssapi-data"),
        crand=t.get("crand"),
        cnum=t.get("cnum"),
        response=t.get("response"),
        srand=t.get("srand"),
        snum=t.get("snum"),
        rspauth=t.get("rspauth"),
        other=tuple(other),
    )


def auth_fields(message: SipMessage, name: str) -> list[SipAuth]:
    """Every ``name`` field of ``message`` parsed (e.g. ``"Authorization"``), in order.

    Raises:
        SipError: for the first field that does not parse; ValueError for a ``name`` that is
        not an authentication field.
    """
    kind = AUTH_FIELD_KINDS.get(canonical_name(name))
    if kind is None:
        raise ValueError(f"{name!r} is not an authentication field")
    return [parse_auth(v, kind) for v in message.get_all(name)]


# --- who ----------------------------------------------------------------------------------------


def ntlm_identity(auth: SipAuth) -> Identity | None:
    """The (unverified) user, domain and workstation of an NTLM AUTHENTICATE_MESSAGE
    (MS-NLMP 2.2.1.3) in the gssapi-data of NTLM credentials; None for any other field or leg
    (an empty gssapi-data, a NEGOTIATE).

    Raises:
        SipError("bad-gssapi-data"): a token that is not NTLM, or that ntlm.py refuses (its
        reason in ``detail``).
    """
    if auth.scheme != "NTLM" or auth.kind != "credentials" or not auth.gssapi_data:
        return None
    token = auth.gssapi_data
    if len(token) < 12 or not token.startswith(ntlm.SIGNATURE):
        raise SipError("bad-gssapi-data", "NTLM gssapi-data without the NTLMSSP signature")
    (message_type,) = struct.unpack_from("<I", token, 8)
    if message_type != 3:
        return None
    try:
        message = ntlm.AuthenticateMessage.unpack(token)
    except NtlmError as e:
        raise SipError("bad-gssapi-data", e.reason) from None
    return Identity(message.user_name, message.domain_name, message.workstation)


def check_ntlm_user(
    sip_user: SipUri | str, identity: Identity, netbios_domains: Mapping[str, str] | None = None
) -> str | None:
    """Whether the NTLM identity can be the SIP user: None when it can, else a reason code.

    ``sip_user`` is the REGISTER's user (``SipMessage.registered_user()``, or ``"sip:..."``).
    ``alice@contoso.com`` in the NTLM user name (a UPN logon; the domain is then empty) must
    equal the SIP address (case-insensitively); a down-level ``CONTOSO\\alice`` must have the
    SIP user's name, and, when ``netbios_domains`` maps the SIP domain (lower-case DNS name) to
    its NetBIOS name, that domain (the DNS name itself is accepted too).

    A structural pre-check only: the SIP address, the UPN and the sAMAccountName of one user
    need not agree (the directory decides); callers resolve both through the id service and
    compare accounts. Reasons: ``ntlm-anonymous``, ``ntlm-user-mismatch`` and
    ``ntlm-domain-mismatch`` (status 403 when the caller raises them), ``sip-domain-unknown``
    (``netbios_domains`` given without the SIP domain), ``not-a-sip-user``.
    """
    if isinstance(sip_user, str):
        try:
            sip_user = parse_sip_uri(sip_user)
        except SipError:
            return "not-a-sip-user"
    if sip_user.user is None:
        return "not-a-sip-user"
    user, domain = identity.user, identity.domain
    if not domain and "\\" in user:
        domain, _, user = user.partition("\\")
    if not user:
        return "ntlm-anonymous"
    if "@" in user:
        return None if user.casefold() == sip_user.aor.casefold() else "ntlm-user-mismatch"
    if user.casefold() != sip_user.user.casefold():
        return "ntlm-user-mismatch"
    if netbios_domains is not None:
        expected = netbios_domains.get(sip_user.host.lower())
        if expected is None:
            return "sip-domain-unknown"
        if domain.casefold() not in (expected.casefold(), sip_user.host.casefold()):
            return "ntlm-domain-mismatch"
    return None
