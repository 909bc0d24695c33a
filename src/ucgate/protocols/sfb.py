"""Which published service a request targets, from its path (sans-I/O).

The map follows the Skype for Business external web services and Exchange ActiveSync as a
reverse proxy publishes them (DESIGN.md, "Protocol facts"). IIS matches paths
case-insensitively, so we do too. Before matching, the path is checked for the tricks that
make a proxy and the server behind it disagree about which resource is meant — dot segments,
encoded slashes and backslashes, NUL, double encoding — and such a request is refused rather
than repaired: otherwise ``/Autodiscover/AutodiscoverService.svc/root/..%2f..%2fucwa`` could
ride through as "anonymous autodiscover" and reach UCWA.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import unquote_to_bytes

from .http1 import HttpError

# Percent-escapes that would let a path mean something else after the server decodes it:
# "." (2E) and "/" (2F) form dot segments and extra separators, "\" (5C) is a separator to
# IIS, "%" (25) is double encoding, NUL and other controls end or corrupt strings.
_DANGEROUS_ESCAPE_RE = re.compile(r"%(?:2[eEfF5]|5[cC]|[01][0-9a-fA-F]|7[fF])")
_ESCAPE_RE = re.compile(r"%(?![0-9a-fA-F]{2})")
# A segment a lenient server reads as "." or "..": dots only, once what such servers strip is
# gone — a path parameter (";jsessionid=..."; Tomcat, Jetty), an NTFS stream name ("::$DATA";
# IIS on Windows), trailing dots and whitespace (Windows), leading whitespace (frameworks that
# trim). Matched on the raw path (no whitespace there) and, when it has escapes, the decoded one.
_DOT_SEGMENT_RE = re.compile(r"/(?=\s*\.)[.\s]*+(?:[;:][^/]*)?(?=/|$)")  # possessive: linear time
# Characters NFKC does not fold to ASCII that a server still reads as "." or a separator:
# ideographic full stops (IDNA maps them to "."), and slash/backslash look-alikes that Windows'
# best-fit code page conversion maps to "/" and "\".
_LOOKALIKES = frozenset("\u3002\uff61\u2215\u2044\u29f8\u2216\u29f5\u29f9")
_LOOKALIKE_ASCII = frozenset("./\\%")

# ServiceMap.route remembers the routes of this many request targets (then starts again), each
# at most this long: keep-alive clients ask for the same few, and an attacker's unique targets
# only cost the memo its hits (it holds at most ~1 MiB)
ROUTE_MEMO_ENTRIES = 1024
ROUTE_MEMO_TARGET_BYTES = 256


# Request methods per service (``[services.X] methods``). SfB's web services and pages are read
# with GET/HEAD, posted to (SOAP, forms, the OAuth grant) and preflighted with OPTIONS; UCWA
# also updates and deletes resources; an ActiveSync client only sends OPTIONS (the protocol
# versions) and POST (commands; Exchange answers a GET with 501). Everything else — CONNECT,
# TRACE/TRACK, WebDAV, method names in other letter cases — is refused before authentication.
DEFAULT_METHODS = (b"GET", b"HEAD", b"POST", b"OPTIONS")
UCWA_METHODS = (b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS")
EAS_METHODS = (b"OPTIONS", b"POST")


@dataclass(frozen=True, slots=True)
class Service:
    """A published service. ``anonymous`` services pass without authentication."""

    name: str
    prefix: str  # lower-case path prefix, e.g. "/ucwa/"; exact paths have no trailing slash
    anonymous: bool = False
    exact: bool = False
    upstream: str = "frontend"
    max_body_bytes: int | None = None  # None: the gateway-wide default
    enabled: bool = True
    description: str = ""
    # How the gateway presents the user to the front end after pre-authentication
    # (``ucgate.gateway.backend``): "none" (identity header only), "passthrough", "vault", "kcd".
    backend: str = "none"
    # vault only: answer the front end with "ntlm" (per-user connection) or "basic"
    backend_scheme: str = "ntlm"
    # the request methods its clients use (case-sensitive); any other gets 405 + Allow, before
    # authentication
    methods: tuple[bytes, ...] = DEFAULT_METHODS


# Order matters: the first match wins, so exact anonymous paths come before their protected
# parent prefixes.
DEFAULT_SERVICES: tuple[Service, ...] = (
    Service(
        "autodiscover",
        "/autodiscover/autodiscoverservice.svc/root",
        anonymous=True,
        exact=True,
        description="Lync/SfB autodiscover root document (anonymous; lyncdiscover.<domain>)",
    ),
    Service(
        "autodiscover-xframe",
        "/autodiscover/xframe/",
        anonymous=True,
        description="autodiscover XFrame page used by web clients (static, anonymous)",
    ),
    Service(
        "autodiscover",
        "/autodiscover/autodiscoverservice.svc/",
        description="autodiscover user document (root/oauth/user, root/user): needs a token",
    ),
    Service("oauth", "/webticket/oauthtoken", exact=True, description="OAuth token endpoint"),
    Service("webticket", "/webticket/", description="WebTicket service (SOAP, NTLM/Kerberos/cert)"),
    Service("ucwa", "/ucwa/", description="Unified Communications Web API", methods=UCWA_METHODS),
    Service("mcx", "/mcx/", description="Lync 2010 mobility service (MCX)"),
    Service(
        "certprov",
        "/certprov/",
        description="certificate provisioning (issues the 180-day client certificate)",
    ),
    Service("meet", "/meet/", anonymous=True, description="meeting join page (anonymous)"),
    Service("dialin", "/dialin/", anonymous=True, description="dial-in conferencing page"),
    Service("lwa", "/lwa/", anonymous=True, description="Lync Web App (meeting client)"),
    Service("reach", "/reach/", description="Lync Web App/meeting service back end"),
    Service("abs", "/abs/", description="address book service"),
    Service("groupexpansion", "/groupexpansion/", description="distribution group expansion"),
    Service("rgs", "/rgsclients/", description="response group clients"),
    Service("persistentchat", "/persistentchat/", description="persistent chat"),
    Service("scheduler", "/scheduler/", description="web scheduler"),
    Service("passiveauth", "/passiveauth/", description="passive (web) authentication"),
    Service(
        "eas",
        "/microsoft-server-activesync",
        upstream="exchange",
        description="Exchange ActiveSync",
        methods=EAS_METHODS,
    ),
)

SERVICE_NAMES = frozenset(s.name for s in DEFAULT_SERVICES)


def split_target(target: str) -> tuple[str, str]:
    """Split an origin-form request target into (path, query) and refuse ambiguous paths.

    Raises:
        HttpError(400, ...): absolute-form or asterisk-form targets, fragments, dot segments
        (also as a lenient server reads them: with a ";" parameter or ":" stream name, more
        dots, whitespace), empty segments, backslashes, malformed or dangerous percent-escapes,
        escapes that are not UTF-8 (overlong forms of "." and "/"), and Unicode look-alikes of
        "." "/" "\\" "%".
    """
    if not target.startswith("/"):
        raise HttpError(400, "bad-request-target", "only origin-form targets are accepted")
    path, _, query = target.partition("?")
    if "#" in target:
        raise HttpError(400, "fragment-in-target")
    if "\\" in path:
        raise HttpError(400, "backslash-in-path")
    if "%" in path:
        if _ESCAPE_RE.search(path):
            raise HttpError(400, "bad-percent-escape")
        if _DANGEROUS_ESCAPE_RE.search(path):
            raise HttpError(400, "encoded-separator-or-dot", "percent-encoded . / \\ % or control in path")
        _check_decoded(path)
    if "/." in path and _DOT_SEGMENT_RE.search(path):  # a segment of dots, anywhere
        raise HttpError(400, "dot-segment-in-path")
    if "//" in path:  # an empty segment that is not the last one
        raise HttpError(400, "empty-path-segment")
    return path, query


def _check_decoded(path: str) -> None:
    """The checks a path with escapes needs after decoding, as the front end decodes it: UTF-8
    only (IIS once decoded the overlong %c0%ae to "."; Python's decoder refuses overlong forms,
    surrogates and stray bytes), no character that NFKC or a best-fit conversion turns into "."
    "/" "\\" "%" (fullwidth forms, dot leaders, division slash...), no segment of dots and
    whitespace ("..%20", "%20..")."""
    try:
        text = unquote_to_bytes(path).decode("utf-8")
    except UnicodeDecodeError:
        raise HttpError(400, "bad-utf8-in-path", "percent-encoded bytes that are not UTF-8") from None
    if not text.isascii():
        for ch in set(text):
            if ord(ch) < 0x80:
                continue
            nfkc = unicodedata.normalize("NFKC", ch)
            if ch in _LOOKALIKES or nfkc in _LOOKALIKES or not _LOOKALIKE_ASCII.isdisjoint(nfkc):
                raise HttpError(400, "unicode-lookalike-in-path", f"U+{ord(ch):04X} reads as . / \\ or %")
    if _DOT_SEGMENT_RE.search(text):
        raise HttpError(400, "dot-segment-in-path", "a segment of dots and whitespace")


class ServiceMap:
    """Recognise a request's service from its path.

    Args:
        services: the services in match order (defaults plus configured overrides).
    """

    def __init__(self, services: tuple[Service, ...] = DEFAULT_SERVICES) -> None:
        self._services = services
        # the services a path can match, by its first segment (every rule's prefix starts with
        # a whole segment), in match order: a protected service deep in the list is found in
        # one dict lookup instead of a scan (the keep-alive fast path recognises every request)
        by_segment: dict[str, list[Service]] = {}
        for svc in services:
            by_segment.setdefault(svc.prefix.lower()[1:].partition("/")[0], []).append(svc)
        self._by_segment = {k: tuple(v) for k, v in by_segment.items()}
        self._indexed = "" not in by_segment and all(svc.prefix.startswith("/") for svc in services)
        self._routes: dict[bytes, tuple[str, str, Service | None]] = {}  # route's memo

    @classmethod
    def with_overrides(cls, overrides: dict[str, dict[str, Any]]) -> ServiceMap:
        """Apply per-service settings (``anonymous``, ``upstream``, ``max_body_bytes``,
        ``enabled``, ``methods``...) from configuration to every rule of that service name."""
        unknown = set(overrides) - SERVICE_NAMES
        if unknown:
            raise ValueError(f"unknown service(s): {', '.join(sorted(unknown))}")
        out = []
        for s in DEFAULT_SERVICES:
            o = overrides.get(s.name)
            if o:
                # An override of "anonymous" applies to the service's main rule; the protected
                # autodiscover user document stays protected unless named separately.
                fields = dict(o)
                if s.name == "autodiscover" and not s.exact:
                    fields.pop("anonymous", None)
                if "methods" in fields:  # names as configured (str) -> as on the request line
                    fields["methods"] = tuple(m.encode("ascii") if isinstance(m, str) else m for m in fields["methods"])
                s = replace(s, **fields)
            out.append(s)
        return cls(tuple(out))

    @property
    def services(self) -> tuple[Service, ...]:
        return self._services

    def route(self, target: bytes) -> tuple[str, str, Service | None]:
        """A raw origin-form request target's (path, query, service): :func:`split_target` of
        its ASCII text, then :meth:`recognise` — remembered for the targets seen last (both are
        pure functions of the target). Raises what they raise (``HttpError``, and
        ``UnicodeDecodeError`` for a byte that is not ASCII); a refused target is not kept."""
        found = self._routes.get(target)
        if found is not None:
            return found
        path, query = split_target(target.decode("ascii"))
        found = (path, query, self.recognise(path))
        if len(target) <= ROUTE_MEMO_TARGET_BYTES:
            routes = self._routes
            if len(routes) >= ROUTE_MEMO_ENTRIES:
                routes.clear()
            routes[target] = found
        return found

    def recognise(self, path: str) -> Service | None:
        """The service for ``path`` (already checked by :func:`split_target`), or None."""
        lpath = path.lower()
        candidates = self._services
        if self._indexed:
            candidates = self._by_segment.get(lpath[1:].partition("/")[0], ())
        for s in candidates:
            if s.exact:
                if lpath == s.prefix or lpath == s.prefix + "/":
                    return s
            elif s.prefix.endswith("/"):
                if lpath.startswith(s.prefix) or lpath == s.prefix[:-1]:
                    return s
            elif lpath == s.prefix or lpath.startswith(s.prefix + "/"):
                return s
        return None
