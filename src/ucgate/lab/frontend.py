"""The lab's simulated Skype for Business front end and Exchange ActiveSync endpoint.

``ucgate demo`` runs the gateway in front of this app and integration tests use it as the
upstream, so it answers with the shapes, headers, content types and status codes of a real
SfB Server 2015/2019 pool and Exchange 2016/2019 (ActiveSync in :mod:`ucgate.lab.eas`):

- ``/Autodiscover/AutodiscoverService.svc/root`` (anonymous, JSON or XML), ``root/oauth/user``
  (Bearer ``cwt=`` token, else 401 with the Bearer and MsRtcOAuth challenges), ``root/user``,
  ``/Autodiscover/XFrame/XFrame.html``;
- ``/WebTicket/oauthtoken`` (password, ``urn:microsoft.rtc:windows`` and anonmeeting grants),
  ``/WebTicket/WebTicketService.svc`` (WS-Trust RSTR with a fake web ticket);
- UCWA ``/ucwa/oauth/v1/applications`` and a few of its resources;
- ``/CertProv/CertProvisioningService.svc`` (a real self-signed 180-day certificate),
  ``/Mcx/McxService.svc``, and small answers for meet, dialin, lwa, Reach, abs,
  GroupExpansion, RgsClients, PersistentChat, Scheduler, passiveauth;
- ``/ucgate-lab/health`` for readiness checks.

The gateway in front is trusted: it forwards ``X-Forwarded-Proto/Host/For`` and, after it has
authenticated the user, ``X-Ucgate-User``. Only the gateway can reach this app, so that header
stands for Windows authentication wherever SfB would use NTLM/Kerberos. Paths match
case-insensitively, as IIS does. All state (tokens, applications, devices) is in memory.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
import secrets
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeGuard
from urllib.parse import parse_qsl, quote
from xml.sax.saxutils import escape, quoteattr

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import Route

from .eas import ActiveSyncSimulator, read_body

IDENTITY_HEADER = "X-Ucgate-User"
AUTODISCOVER_JSON = "application/vnd.microsoft.rtc.autodiscover+json; v=1"
AUTODISCOVER_XML = "application/vnd.microsoft.rtc.autodiscover+xml; v=1"
JSON_UTF8 = "application/json; charset=utf-8"
SOAP12 = "application/soap+xml; charset=utf-8"
SOAP11 = "text/xml; charset=utf-8"
# SfB's OAuth resource id ("Skype for Business Online"/on-premises, the same constant).
SFB_CLIENT_ID = "00000004-0000-0ff1-ce00-000000000000"
GRANT_TYPES = "urn:microsoft.rtc:windows,urn:microsoft.rtc:anonmeeting,password"
MAX_FORM_BYTES = 16 * 1024
MAX_JSON_BYTES = 64 * 1024
MAX_SOAP_BYTES = 256 * 1024
MAX_TOKENS = 100_000
CERT_VALIDITY_DAYS = 180  # CertProv default (Set-CsWebServiceConfiguration DefaultValidityPeriodHours 4320)
_HOST_RE = re.compile(r"[A-Za-z0-9.-]+(?::\d{1,5})?|\[[0-9A-Fa-f:.]+\](?::\d{1,5})?")
_PROTO = ("http", "https")
_ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"]


def _short_text(v: Any) -> TypeGuard[str]:
    """A string of 1 to 256 characters (a UCWA application's userAgent, endpointId, culture)."""
    return isinstance(v, str) and 0 < len(v) <= 256


def normalize_user(name: str) -> str:
    """The account name part of ``alice``, ``alice@contoso.com``, ``CONTOSO\\alice`` or
    ``sip:alice@contoso.com``, lower-cased (AD compares sAMAccountName case-insensitively)."""
    name = name.strip()
    if name.lower().startswith("sip:"):
        name = name[4:]
    name = name.rpartition("\\")[2]
    return name.partition("@")[0].lower()


@dataclass
class Token:
    user: str
    expires: float
    scope: str = "local"


@dataclass
class Application:
    id: str
    user: str
    user_agent: str
    endpoint_id: str
    culture: str
    etag: str = field(default_factory=lambda: str(secrets.randbelow(10**10)))
    event_ack: int = 1


class LabFrontend:
    """State and request handlers of the simulated SfB front end."""

    def __init__(
        self,
        users: Mapping[str, str],
        sip_domain: str,
        token_lifetime: int,
        redirects: Mapping[str, str],
        clock: Callable[[], float],
    ) -> None:
        self.passwords = {normalize_user(u): p for u, p in users.items()}
        self.sip_domain = sip_domain.lower()
        self.token_lifetime = token_lifetime
        self.redirects = {normalize_user(u): b.rstrip("/") for u, b in redirects.items()}
        self.clock = clock
        self.tokens: dict[str, Token] = {}
        self.applications: dict[str, Application] = {}
        self.fqdn = f"fe01.{self.sip_domain}"
        self.eas = ActiveSyncSimulator(IDENTITY_HEADER, self.sip_domain)

    # --- helpers --------------------------------------------------------------------------

    def base_url(self, request: Request) -> str:
        proto = request.headers.get("x-forwarded-proto", "").strip().lower()
        host = request.headers.get("x-forwarded-host", "").split(",")[0].strip()
        if proto not in _PROTO:
            proto = request.url.scheme
        if not host or not _HOST_RE.fullmatch(host):
            host = request.url.netloc
        return f"{proto}://{host}"

    def trusted_user(self, request: Request) -> str | None:
        value = request.headers.get(IDENTITY_HEADER, "").strip()
        return normalize_user(value) if value else None

    def bearer_user(self, request: Request) -> tuple[str | None, bool]:
        """(user, presented): the user of a valid ``Authorization: Bearer cwt=…`` token, and
        whether a Bearer token was presented at all."""
        auth = request.headers.get("authorization", "")
        scheme, _, value = auth.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            return None, False
        token = self.tokens.get(value.strip())
        if token is None or token.expires <= self.clock():
            return None, True
        return token.user, True

    def sip_uri(self, user: str) -> str:
        return f"sip:{user}@{self.sip_domain}"

    def issue_token(self, user: str, scope: str = "local") -> str:
        now = self.clock()
        if len(self.tokens) >= MAX_TOKENS:
            self.tokens = {k: t for k, t in self.tokens.items() if t.expires > now}
            while len(self.tokens) >= MAX_TOKENS:
                self.tokens.pop(next(iter(self.tokens)))
        # Real cwt tokens are base64 of a binary blob ("cwt=AAEBHAEFAAAAAAAFFQAAA…").
        token = "cwt=" + base64.b64encode(b"\x00\x01\x01\x1c" + secrets.token_bytes(92)).decode()
        self.tokens[token] = Token(user, now + self.token_lifetime, scope)
        return token

    def common_headers(self) -> dict[str, str]:
        return {"X-MS-Server-Fqdn": self.fqdn, "Cache-Control": "no-cache"}

    def oauth_challenge(self, request: Request, invalid: bool = False) -> Response:
        base = self.base_url(request)
        headers = self.common_headers()
        if invalid:
            headers["X-Ms-diagnostics"] = (
                f'28055;source="{self.fqdn}";reason="The OAuth token is invalid.";faultcode="wsse:FailedAuthentication"'
            )
        response = Response(b"", status_code=401, headers=headers)
        response.headers.append("WWW-Authenticate", f'Bearer trusted_issuers="", client_id="{SFB_CLIENT_ID}"')
        response.headers.append(
            "WWW-Authenticate",
            f'MsRtcOAuth href="{base}/WebTicket/oauthtoken",grant_type="{GRANT_TYPES}"',
        )
        return response

    def windows_challenge(self) -> Response:
        """IIS Windows authentication's 401: Negotiate and NTLM offered."""
        response = Response(b"", status_code=401, headers=self.common_headers())
        response.headers.append("WWW-Authenticate", "Negotiate")
        response.headers.append("WWW-Authenticate", "NTLM")
        return response

    def json(
        self, data: object, status: int = 200, media_type: str = JSON_UTF8, headers: dict[str, str] | None = None
    ) -> Response:
        h = self.common_headers()
        h.update(headers or {})
        body = json.dumps(data, separators=(",", ":")).encode()
        return Response(body, status_code=status, media_type=media_type, headers=h)

    # --- dispatch -------------------------------------------------------------------------

    async def dispatch(self, request: Request) -> Response:
        path = request.url.path
        lpath = path.lower()
        seg = lpath.split("/")[1] if "/" in lpath else ""
        if lpath == "/ucgate-lab/health":
            return PlainTextResponse("ok")
        if seg == "autodiscover":
            return await self.autodiscover(request, lpath)
        if seg == "webticket":
            return await self.webticket(request, lpath)
        if seg == "ucwa":
            return await self.ucwa(request, path)
        if seg == "microsoft-server-activesync":
            rest = lpath[len("/microsoft-server-activesync") :]
            if rest not in ("", "/", "/default.eas"):
                return not_found()
            return await self.eas.handle(request, self.trusted_user(request))
        if seg == "certprov":
            return await self.certprov(request, lpath)
        if seg == "mcx":
            return await self.mcx(request, lpath)
        if seg in ("meet", "dialin", "lwa"):
            return self.meeting_page(request, seg)
        if seg in ("reach", "abs", "groupexpansion", "rgsclients", "persistentchat", "scheduler", "passiveauth"):
            return self.small_service(request, seg, path)
        return not_found()

    # --- autodiscover ---------------------------------------------------------------------

    async def autodiscover(self, request: Request, lpath: str) -> Response:
        if lpath == "/autodiscover/xframe/xframe.html":
            if request.method not in ("GET", "HEAD"):
                return method_not_allowed("GET")
            return HTMLResponse(XFRAME_HTML, headers=self.common_headers())
        root = "/autodiscover/autodiscoverservice.svc/root"
        if lpath.rstrip("/") == root:
            if request.method not in ("GET", "HEAD"):
                return method_not_allowed("GET")
            return self.autodiscover_root(request)
        if lpath.rstrip("/") in (root + "/oauth/user", root + "/user"):
            if request.method not in ("GET", "HEAD"):
                return method_not_allowed("GET")
            oauth = "/oauth/" in lpath
            user, presented = self.bearer_user(request)
            if user is None and not oauth:
                user = self.trusted_user(request)  # root/user: Windows auth / web ticket
            if user is None:
                if oauth:
                    return self.oauth_challenge(request, invalid=presented)
                return self.windows_challenge()
            return self.autodiscover_user(request, user, oauth)
        return not_found()

    def _wants_xml(self, request: Request) -> bool:
        accept = request.headers.get("accept", "").lower()
        return "autodiscover+xml" in accept or ("xml" in accept and "json" not in accept)

    def _original_domain(self, request: Request) -> str:
        domain = request.query_params.get("originalDomain", "")
        return domain if re.fullmatch(r"[A-Za-z0-9.-]{1,253}", domain) else self.sip_domain

    def autodiscover_root(self, request: Request) -> Response:
        base = self.base_url(request)
        svc = f"{base}/Autodiscover/AutodiscoverService.svc/root"
        q = f"?originalDomain={quote(self._original_domain(request))}"
        xframe = f"{base}/Autodiscover/XFrame/XFrame.html"
        if self._wants_xml(request):
            links = [
                ("Domain", f"{svc}/domain{q}"),
                ("User", f"{svc}/user{q}"),
                ("Self", f"{svc}{q}"),
                ("OAuth", f"{svc}/oauth/user{q}"),
                ("External/XFrame", xframe),
                ("Internal/XFrame", xframe),
                ("XFrame", xframe),
            ]
            return self._xml_root(links)
        doc = {
            "_links": {
                "self": {"href": f"{svc}{q}"},
                "user": {"href": f"{svc}/oauth/user{q}"},
                "xframe": {"href": xframe},
            }
        }
        return self.json(doc, media_type=AUTODISCOVER_JSON)

    def _xml_root(self, links: list[tuple[str, str]], inner: str = "", elem: str = "Root") -> Response:
        body = "".join(f"<Link token={quoteattr(t)} href={quoteattr(h)} />" for t, h in links)
        xml = (
            '<?xml version="1.0" encoding="utf-8"?>'
            '<AutodiscoverResponse xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
            'xmlns:xsd="http://www.w3.org/2001/XMLSchema" AccessLocation="External">'
            f"<{elem}>{inner}{body}</{elem}></AutodiscoverResponse>"
        )
        return Response(xml.encode(), media_type=AUTODISCOVER_XML, headers=self.common_headers())

    def autodiscover_user(self, request: Request, user: str, oauth: bool) -> Response:
        base = self.base_url(request)
        q = f"?originalDomain={quote(self._original_domain(request))}"
        svc_path = "/Autodiscover/AutodiscoverService.svc/root/" + ("oauth/user" if oauth else "user")
        redirect = self.redirects.get(user)
        if self._wants_xml(request):
            if redirect:
                return self._xml_root([("Redirect", f"{redirect}{svc_path}{q}")])
            xml_links = [
                ("Internal/Autodiscover", f"{base}/Autodiscover/AutodiscoverService.svc/root"),
                ("External/Autodiscover", f"{base}/Autodiscover/AutodiscoverService.svc/root"),
                ("Internal/AuthBroker", f"{base}/Reach/sip.svc"),
                ("External/AuthBroker", f"{base}/Reach/sip.svc"),
                ("Internal/WebScheduler", f"{base}/Scheduler"),
                ("External/WebScheduler", f"{base}/Scheduler"),
                ("Internal/Mcx", f"{base}/Mcx/McxService.svc"),
                ("External/Mcx", f"{base}/Mcx/McxService.svc"),
                ("Ucwa", f"{base}/ucwa/v1/applications"),
                ("Internal/Ucwa", f"{base}/ucwa/v1/applications"),
                ("External/Ucwa", f"{base}/ucwa/v1/applications"),
                ("Internal/XFrame", f"{base}/Autodiscover/XFrame/XFrame.html"),
                ("External/XFrame", f"{base}/Autodiscover/XFrame/XFrame.html"),
            ]
            sip = f"sip.{self.sip_domain}"
            inner = (
                f'<SipServerInternalAccess fqdn="{self.fqdn}" port="5061" />'
                f'<SipClientInternalAccess fqdn="{self.fqdn}" port="5061" />'
                f'<SipServerExternalAccess fqdn="{sip}" port="5061" />'
                f'<SipClientExternalAccess fqdn="{sip}" port="443" />'
            )
            return self._xml_root(xml_links, inner, elem="User")
        links: dict[str, dict[str, str]] = {"self": {"href": f"{base}{svc_path}{q}"}}
        if redirect:
            # Another pool homes this user: only self and redirect, as SfB answers.
            links["redirect"] = {"href": f"{redirect}{svc_path}{q}"}
        else:
            links["applications"] = {"href": f"{base}/ucwa/oauth/v1/applications"}
            links["xframe"] = {"href": f"{base}/Autodiscover/XFrame/XFrame.html"}
        return self.json({"_links": links}, media_type=AUTODISCOVER_JSON)

    # --- web ticket / OAuth token ---------------------------------------------------------

    async def webticket(self, request: Request, lpath: str) -> Response:
        if lpath.rstrip("/") == "/webticket/oauthtoken":
            if request.method != "POST":
                return method_not_allowed("POST")
            return await self.oauth_token(request)
        if lpath.startswith("/webticket/webticketservice.svc"):
            return await self.webticket_service(request)
        return not_found()

    def token_error(self, error: str, status: int = 400) -> Response:
        return self.json({"error": error}, status=status, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})

    async def oauth_token(self, request: Request) -> Response:
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/x-www-form-urlencoded":
            return self.token_error("invalid_request")
        body = await read_body(request, MAX_FORM_BYTES)
        if body is None:
            return self.token_error("invalid_request", 413)
        try:
            form = dict(
                parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(body), max_num_fields=20)
            )
        except (UnicodeDecodeError, ValueError):
            return self.token_error("invalid_request")
        grant = form.get("grant_type")
        trusted = self.trusted_user(request)
        scope = "local"
        if not grant:
            return self.token_error("invalid_request")
        if grant == "password":
            username, password = form.get("username"), form.get("password")
            if not username or password is None:
                return self.token_error("invalid_request")
            if trusted is not None:
                user = trusted  # the gateway has checked the credentials (or swapped them)
            else:
                user = normalize_user(username)
                expected = self.passwords.get(user)
                if expected is None or not secrets.compare_digest(expected.encode(), password.encode()):
                    return self.token_error("invalid_grant")
        elif grant == "urn:microsoft.rtc:windows":
            if trusted is None:
                return self.windows_challenge()
            user = trusted
        elif grant == "urn:microsoft.rtc:anonmeeting":
            if not form.get("ms_rtc_conferenceuri"):
                return self.token_error("invalid_request")
            user, scope = "anonymous-" + secrets.token_hex(4), "anonymous"
        else:
            return self.token_error("unsupported_grant_type")
        token = self.issue_token(user, scope)
        return self.json(
            {
                "access_token": token,
                "expires_in": self.token_lifetime,
                "ms_rtc_identityscope": scope,
                "token_type": "Bearer",
            },
            headers={"Cache-Control": "no-store", "Pragma": "no-cache"},
        )

    async def webticket_service(self, request: Request) -> Response:
        if request.method in ("GET", "HEAD"):
            return HTMLResponse(
                "<html><head><title>WebTicketService Service</title></head><body>"
                "<h1>WebTicketService Service</h1><p>You have created a service.</p>"
                "</body></html>",
                headers=self.common_headers(),
            )
        if request.method != "POST":
            return method_not_allowed("GET, POST")
        user = self.trusted_user(request)
        if user is None:
            return self.windows_challenge()
        body = await read_body(request, MAX_SOAP_BYTES)
        if body is None:
            return Response(b"", status_code=413)
        soap12 = request.headers.get("content-type", "").lower().startswith("application/soap+xml")
        if not soap12 and not request.headers.get("content-type", "").lower().startswith("text/xml"):
            return Response(b"", status_code=415, headers=self.common_headers())
        token = self.issue_token(user)
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        expires = now + dt.timedelta(seconds=self.token_lifetime)
        relates = _message_id(body)
        env_ns = "http://www.w3.org/2003/05/soap-envelope" if soap12 else "http://schemas.xmlsoap.org/soap/envelope/"
        wsu = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd"
        xml = (
            f'<s:Envelope xmlns:s="{env_ns}" xmlns:a="http://www.w3.org/2005/08/addressing" '
            f'xmlns:u="{wsu}"><s:Header>'
            '<a:Action s:mustUnderstand="1">'
            "http://docs.oasis-open.org/ws-sx/ws-trust/200512/RSTRC/IssueFinal</a:Action>"
            + (f"<a:RelatesTo>{escape(relates)}</a:RelatesTo>" if relates else "")
            + "</s:Header><s:Body>"
            '<RequestSecurityTokenResponseCollection xmlns="http://docs.oasis-open.org/ws-sx/ws-trust/200512">'
            "<RequestSecurityTokenResponse>"
            "<TokenType>urn:component:Microsoft.Rtc.WebAuthentication.2010:user-cwt-1</TokenType>"
            "<RequestedSecurityToken>"
            f'<UserToken xmlns="http://schemas.microsoft.com/2008/09/rtc/webauthentication" '
            f'Id="{uuid.uuid4()}" ValidTo="{expires.isoformat().replace("+00:00", "Z")}">'
            f"{escape(token)}</UserToken></RequestedSecurityToken>"
            f"<Lifetime><u:Created>{now.isoformat().replace('+00:00', 'Z')}</u:Created>"
            f"<u:Expires>{expires.isoformat().replace('+00:00', 'Z')}</u:Expires></Lifetime>"
            '<AppliesTo xmlns="http://schemas.xmlsoap.org/ws/2004/09/policy">'
            f"<a:EndpointReference><a:Address>{escape(self.base_url(request))}/</a:Address>"
            "</a:EndpointReference></AppliesTo>"
            "</RequestSecurityTokenResponse></RequestSecurityTokenResponseCollection>"
            "</s:Body></s:Envelope>"
        )
        return Response(xml.encode(), media_type=SOAP12 if soap12 else SOAP11, headers=self.common_headers())

    # --- UCWA -----------------------------------------------------------------------------

    async def ucwa(self, request: Request, path: str) -> Response:
        parts = path.split("/")  # "", "ucwa", "oauth", "v1", "applications", id, ...
        lparts = [p.lower() for p in parts]
        if lparts[2:4] == ["oauth", "v1"]:
            prefix, rest = "/ucwa/oauth/v1", parts[4:]
        elif lparts[2:3] == ["v1"]:
            prefix, rest = "/ucwa/v1", parts[3:]
        else:
            return not_found()
        if not rest or rest[0].lower() != "applications":
            return not_found()
        user, presented = self.bearer_user(request)
        if user is None and not presented:
            # the gateway authenticated the user and swapped the credentials (issue 7's
            # backend modes): its identity header stands for the token
            user = self.trusted_user(request)
        if user is None:
            return self.oauth_challenge(request, invalid=presented)
        if len(rest) == 1:
            if request.method != "POST":
                return method_not_allowed("POST")
            return await self.create_application(request, user, prefix)
        app = self.applications.get(rest[1])
        if app is None or app.user != user:
            return self.ucwa_error(404, "NotFound", "The requested resource was not found.")
        app_href = f"{prefix}/applications/{app.id}"
        sub = [p.lower() for p in rest[2:] if p]
        if not sub:
            if request.method == "DELETE":
                del self.applications[app.id]
                return Response(b"", status_code=204, headers=self.common_headers())
            if request.method != "GET":
                return method_not_allowed("GET, DELETE")
            return self.json(self.application_resource(app, app_href))
        if request.method != "GET":
            if sub == ["me", "makemeavailable"] and request.method == "POST":
                return Response(b"", status_code=204, headers=self.common_headers())
            return method_not_allowed("GET")
        if sub == ["me"]:
            return self.json(self.me_resource(app, app_href))
        if sub[0] == "people":
            href = app_href + "/" + "/".join(rest[2:])
            data: dict[str, object] = {"_links": {"self": {"href": href}}, "rel": sub[-1]}
            if sub[-1] == "search":
                data["_embedded"] = {"contact": []}
            return self.json(data)
        if sub == ["events"]:
            ack = app.event_ack
            app.event_ack += 1
            return self.json(
                {
                    "_links": {
                        "self": {"href": f"{app_href}/events?ack={ack}"},
                        "next": {"href": f"{app_href}/events?ack={ack + 1}"},
                    },
                    "sender": [],
                }
            )
        if sub[0] in ("onlinemeetings", "communication", "policies", "batch"):
            href = app_href + "/" + "/".join(rest[2:])
            return self.json({"_links": {"self": {"href": href}}, "rel": sub[-1]})
        return self.ucwa_error(404, "NotFound", "The requested resource was not found.")

    def ucwa_error(self, status: int, code: str, message: str, subcode: str | None = None) -> Response:
        body: dict[str, str] = {"code": code, "message": message}
        if subcode:
            body["subcode"] = subcode
        return self.json(body, status=status)

    async def create_application(self, request: Request, user: str, prefix: str) -> Response:
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype not in ("application/json", "application/vnd.microsoft.com.ucwa+json"):
            return self.ucwa_error(415, "UnsupportedMediaType", "Use application/json.")
        body = await read_body(request, MAX_JSON_BYTES)
        if body is None:
            return self.ucwa_error(413, "BadRequest", "The request body is too large.")
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return self.ucwa_error(400, "BadRequest", "The request body is not valid JSON.", "InvalidRequestBody")
        if not isinstance(data, dict):
            return self.ucwa_error(400, "BadRequest", "Expected a JSON object.", "InvalidRequestBody")
        # ASP.NET model binding is case-insensitive: clients send userAgent or UserAgent.
        fields = {str(k).lower(): v for k, v in data.items()}
        user_agent, endpoint_id = fields.get("useragent"), fields.get("endpointid")
        culture = fields.get("culture", "en-US")
        if not (_short_text(user_agent) and _short_text(endpoint_id) and _short_text(culture)):
            return self.ucwa_error(
                400,
                "BadRequest",
                "userAgent, endpointId and culture are required strings.",
                "ParameterValidationFailure",
            )
        for app in self.applications.values():
            if app.user == user and app.endpoint_id.lower() == endpoint_id.lower():
                # The same endpoint gets its existing application back.
                href = f"{prefix}/applications/{app.id}"
                return self.json(self.application_resource(app, href), status=200)
        app_id = "101" + str(secrets.randbelow(10**12)).zfill(12)
        app = Application(app_id, user, user_agent, endpoint_id, culture)
        self.applications[app_id] = app
        href = f"{prefix}/applications/{app_id}"
        response = self.json(self.application_resource(app, href), status=201)
        response.headers["Location"] = href
        return response

    def me_resource(self, app: Application, app_href: str) -> dict:
        me = f"{app_href}/me"
        return {
            "name": app.user.capitalize(),
            "uri": self.sip_uri(app.user),
            "emailAddresses": [f"{app.user}@{self.sip_domain}"],
            "_links": {
                "self": {"href": me},
                "makeMeAvailable": {"href": f"{me}/makeMeAvailable"},
                "callForwardingSettings": {"href": f"{me}/callForwardingSettings"},
                "phones": {"href": f"{me}/phones"},
                "photo": {"href": f"{app_href}/photos/{app.user}@{self.sip_domain}"},
            },
            "rel": "me",
        }

    def application_resource(self, app: Application, href: str) -> dict:
        people = f"{href}/people"
        meetings = f"{href}/onlineMeetings"
        comm = f"{href}/communication"
        return {
            "culture": app.culture,
            "userAgent": app.user_agent,
            "type": "Browser",
            "endpointId": app.endpoint_id,
            "instanceId": uuid.uuid5(uuid.NAMESPACE_URL, app.id).hex,
            "_links": {
                "self": {"href": href},
                "policies": {"href": f"{href}/policies"},
                "batch": {"href": f"{href}/batch"},
                "events": {"href": f"{href}/events?ack=1"},
            },
            "_embedded": {
                "me": self.me_resource(app, href),
                "people": {
                    "_links": {
                        "self": {"href": people},
                        "presenceSubscriptions": {"href": f"{people}/presenceSubscriptions"},
                        "subscribedContacts": {"href": f"{people}/subscribedContacts"},
                        "presenceSubscriptionMemberships": {"href": f"{people}/presenceSubscriptionMemberships"},
                        "myGroups": {"href": f"{people}/groups"},
                        "myGroupMemberships": {"href": f"{people}/groupMemberships"},
                        "myContacts": {"href": f"{people}/contacts"},
                        "search": {"href": f"{people}/search"},
                    },
                    "rel": "people",
                },
                "onlineMeetings": {
                    "_links": {
                        "self": {"href": meetings},
                        "myOnlineMeetings": {"href": f"{meetings}/myOnlineMeetings"},
                        "onlineMeetingDefaultValues": {"href": f"{meetings}/defaultValues"},
                        "onlineMeetingEligibleValues": {"href": f"{meetings}/eligibleValues"},
                        "onlineMeetingPolicies": {"href": f"{meetings}/policies"},
                        "phoneDialInInformation": {"href": f"{meetings}/phoneDialInInformation"},
                    },
                    "rel": "onlineMeetings",
                },
                "communication": {
                    str(uuid.uuid5(uuid.NAMESPACE_OID, app.id)): "please pass this in a PUT request",
                    "supportedModalities": [],
                    "supportedMessageFormats": ["Plain"],
                    "_links": {
                        "self": {"href": comm},
                        "conversations": {"href": f"{comm}/conversations?filter=active"},
                        "startMessaging": {"href": f"{comm}/messagingInvitations"},
                        "startOnlineMeeting": {"href": f"{comm}/onlineMeetingInvitations?onlineMeetingUri=adhoc"},
                        "joinOnlineMeeting": {"href": f"{comm}/onlineMeetingInvitations"},
                    },
                    "rel": "communication",
                    "etag": app.etag,
                },
            },
            "rel": "application",
        }

    # --- certificate provisioning, MCX ----------------------------------------------------

    async def certprov(self, request: Request, lpath: str) -> Response:
        if not lpath.startswith("/certprov/certprovisioningservice.svc"):
            return not_found()
        if request.method != "POST":
            return method_not_allowed("POST")
        user = self.trusted_user(request)
        if user is None:
            return self.windows_challenge()
        body = await read_body(request, MAX_SOAP_BYTES)
        if body is None:
            return Response(b"", status_code=413)
        cert = base64.b64encode(self.make_client_certificate(user)).decode()
        xml = (
            '<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope" '
            'xmlns:a="http://www.w3.org/2005/08/addressing"><s:Header>'
            '<a:Action s:mustUnderstand="1">http://tempuri.org/ICertProvisioningService/'
            "GetAndPublishCertResponse</a:Action></s:Header><s:Body>"
            '<GetAndPublishCertResponse xmlns="http://schemas.microsoft.com/OCS/AuthWebServices/">'
            '<RequestSecurityTokenResponse xmlns="http://docs.oasis-open.org/ws-sx/ws-trust/200512">'
            "<TokenType>http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-x509-token-profile-1.0#X509v3</TokenType>"
            "<RequestedSecurityToken>"
            '<BinarySecurityToken xmlns="http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd" '
            'ValueType="http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-x509-token-profile-1.0#X509v3" '
            'EncodingType="http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-soap-message-security-1.0#Base64Binary">'
            f"{cert}</BinarySecurityToken></RequestedSecurityToken>"
            "</RequestSecurityTokenResponse></GetAndPublishCertResponse></s:Body></s:Envelope>"
        )
        return Response(xml.encode(), media_type=SOAP12, headers=self.common_headers())

    def make_client_certificate(self, user: str) -> bytes:
        """A self-signed certificate shaped like the SfB client certificate (subject the SIP
        URI, 180 days); DER. EC P-256 to keep it fast — real ones are RSA 2048."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, self.sip_uri(user))])
        issuer = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Communications Server")])
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=CERT_VALIDITY_DAYS))
            .sign(key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.DER)

    async def mcx(self, request: Request, lpath: str) -> Response:
        if not lpath.startswith("/mcx/mcxservice.svc"):
            return not_found()
        if request.method in ("GET", "HEAD"):
            return HTMLResponse(
                "<html><head><title>McxService Service</title></head><body><h1>McxService Service</h1></body></html>",
                headers=self.common_headers(),
            )
        if request.method != "POST":
            return method_not_allowed("GET, POST")
        if self.trusted_user(request) is None:
            return self.windows_challenge()
        if await read_body(request, MAX_SOAP_BYTES) is None:
            return Response(b"", status_code=413)
        xml = (
            '<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body>'
            '<ExecResponse xmlns="http://schemas.microsoft.com/Lync/2010/Mcx">'
            "<ExecResult>&lt;responses /&gt;</ExecResult></ExecResponse></s:Body></s:Envelope>"
        )
        return Response(xml.encode(), media_type=SOAP11, headers=self.common_headers())

    # --- meetings and small services ------------------------------------------------------

    def meeting_page(self, request: Request, seg: str) -> Response:
        if request.method not in ("GET", "HEAD"):
            return method_not_allowed("GET")
        title = {
            "meet": "Skype Meeting",
            "dialin": "Dial-in Conferencing Settings",
            "lwa": "Skype for Business Web App",
        }[seg]
        return HTMLResponse(
            f"<!DOCTYPE html><html><head><title>{title}</title></head>"
            f"<body><h1>{title}</h1><p>Simulated by ucgate lab.</p></body></html>",
            headers=self.common_headers(),
        )

    def small_service(self, request: Request, seg: str, path: str) -> Response:
        if self.trusted_user(request) is None and self.bearer_user(request)[0] is None:
            return self.windows_challenge()
        if seg == "abs":
            return Response(b"", status_code=200, media_type="application/octet-stream", headers=self.common_headers())
        if seg in ("groupexpansion", "rgsclients", "persistentchat"):
            return Response(
                b'<?xml version="1.0" encoding="utf-8"?><response status="ok" />',
                media_type="text/xml; charset=utf-8",
                headers=self.common_headers(),
            )
        title = {
            "reach": "Skype for Business Web App",
            "scheduler": "Skype Meeting Scheduler",
            "passiveauth": "Passive Authentication",
        }[seg]
        return HTMLResponse(
            f"<!DOCTYPE html><html><head><title>{title}</title></head><body><h1>{title}</h1></body></html>",
            headers=self.common_headers(),
        )


XFRAME_HTML = (
    "<!DOCTYPE html><html><head><title>XFrame</title>"
    '<meta http-equiv="X-UA-Compatible" content="IE=edge" /></head>'
    "<body><script>/* cross-domain request proxy for UCWA web clients (simulated) */</script>"
    "</body></html>"
)


def not_found() -> Response:
    return HTMLResponse(
        "<!DOCTYPE html><html><head><title>404 - File or directory not found.</title></head>"
        "<body><h2>404 - File or directory not found.</h2></body></html>",
        status_code=404,
    )


def method_not_allowed(allow: str) -> Response:
    return Response(b"", status_code=405, headers={"Allow": allow})


def _message_id(body: bytes) -> str | None:
    m = re.search(rb"<(?:\w+:)?MessageID[^>]*>([^<]{1,200})<", body)
    return m.group(1).decode("utf-8", "replace") if m else None


def create_app(
    *,
    users: dict[str, str] | None = None,
    sip_domain: str = "contoso.com",
    token_lifetime: int = 28800,
    redirects: Mapping[str, str] | None = None,
    clock: Callable[[], float] = time.time,
) -> Starlette:
    """The simulated SfB front end and Exchange ActiveSync endpoint as a Starlette app.

    Args:
        users: account name (``alice``, ``alice@contoso.com`` or ``CONTOSO\\alice``) →
            password, for the OAuth password grant when no trusted identity header is present.
        sip_domain: the SIP domain of users (``sip:alice@contoso.com``).
        token_lifetime: seconds an OAuth ``cwt=`` token is valid (``expires_in``).
        redirects: user → base URL of another pool; the user autodiscover document then has a
            ``redirect`` link instead of ``applications``, as for a user homed elsewhere.
        clock: the time source for token expiry (tests pass a fake).

    The app keeps its state on ``app.state.lab`` (a :class:`LabFrontend`).
    """
    lab = LabFrontend(users or {}, sip_domain, token_lifetime, redirects or {}, clock)
    app = Starlette(routes=[Route("/{path:path}", lab.dispatch, methods=_ALL_METHODS)])
    app.state.lab = lab
    return app
