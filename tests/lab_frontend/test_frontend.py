"""The lab front end answers as SfB 2015/2019 and Exchange 2016/2019 do, driven with httpx."""

from __future__ import annotations

import asyncio
import base64

import httpx

from ucgate.lab.frontend import create_app
from ucgate.protocols.activesync import encode_base64_query
from ucgate.protocols.wbxml import E, decode, encode

FWD = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "lyncweb.contoso.com", "X-Forwarded-For": "203.0.113.7"}
BASE = "https://lyncweb.contoso.com"
WBXML = "application/vnd.ms-sync.wbxml"


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def run(flow, **app_args):
    async def main():
        app = create_app(**{"users": {"alice@contoso.com": "Passw0rd!"}, **app_args})
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8081", headers=FWD) as client:
            await flow(client)

    asyncio.run(main())


def test_sfb_mobile_sign_in_flow():
    async def flow(c: httpx.AsyncClient):
        # 1. lyncdiscover: anonymous root document, links built from X-Forwarded-*
        r = await c.get(
            "/autodiscover/autodiscoverservice.svc/root?originalDomain=contoso.com",
            headers={"Accept": "application/vnd.microsoft.rtc.autodiscover+json"},
        )
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("application/vnd.microsoft.rtc.autodiscover+json")
        links = r.json()["_links"]
        assert set(links) == {"self", "user", "xframe"}
        user_url = links["user"]["href"]
        assert user_url == f"{BASE}/Autodiscover/AutodiscoverService.svc/root/oauth/user?originalDomain=contoso.com"
        assert links["xframe"]["href"] == f"{BASE}/Autodiscover/XFrame/XFrame.html"
        assert (await c.get("/Autodiscover/XFrame/XFrame.html")).headers["content-type"].startswith("text/html")

        # 2. the user document without a token: 401 with both challenges SfB sends
        r = await c.get(user_url)
        assert r.status_code == 401
        challenges = r.headers.get_list("www-authenticate")
        assert challenges == [
            'Bearer trusted_issuers="", client_id="00000004-0000-0ff1-ce00-000000000000"',
            f'MsRtcOAuth href="{BASE}/WebTicket/oauthtoken",grant_type='
            '"urn:microsoft.rtc:windows,urn:microsoft.rtc:anonmeeting,password"',
        ]

        # 3. password grant (DOMAIN\user form, name compared case-insensitively)
        r = await c.post(
            "/WebTicket/oauthtoken",
            data={"grant_type": "password", "username": "CONTOSO\\Alice", "password": "Passw0rd!"},
        )
        assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
        grant = r.json()
        assert set(grant) == {"access_token", "expires_in", "ms_rtc_identityscope", "token_type"}
        assert grant["access_token"].startswith("cwt=") and grant["token_type"] == "Bearer"
        assert grant["expires_in"] == 28800 and grant["ms_rtc_identityscope"] == "local"
        base64.b64decode(grant["access_token"][4:], validate=True)
        auth = {"Authorization": f"Bearer {grant['access_token']}"}

        # 4. the user document with the token: the applications link
        r = await c.get(user_url, headers=auth)
        assert r.status_code == 200
        links = r.json()["_links"]
        assert links["applications"]["href"] == f"{BASE}/ucwa/oauth/v1/applications"
        assert links["self"]["href"] == user_url

        # 5. create the UCWA application
        body = {"userAgent": "UCWA Samples", "endpointId": "a917c6f4-976c-4cf3-847d-cdfffa28ccdf", "culture": "en-US"}
        r = await c.post("/ucwa/oauth/v1/applications", json=body, headers=auth)
        assert r.status_code == 201 and r.headers["content-type"].startswith("application/json")
        app = r.json()
        href = app["_links"]["self"]["href"]
        assert r.headers["location"] == href and href.startswith("/ucwa/oauth/v1/applications/")
        assert app["rel"] == "application" and app["endpointId"] == body["endpointId"]
        assert {"me", "people", "onlineMeetings", "communication"} <= set(app["_embedded"])
        assert app["_embedded"]["me"]["uri"] == "sip:alice@contoso.com"
        assert app["_links"]["events"]["href"].startswith(href + "/events")
        assert (await c.get(href, headers=auth)).json()["_links"]["self"]["href"] == href
        assert (await c.get(href + "/me", headers=auth)).json()["rel"] == "me"
        assert (await c.get(href + "/people/search?query=bob", headers=auth)).status_code == 200
        # the same endpoint id gets the same application back
        r = await c.post("/ucwa/oauth/v1/applications", json=body, headers=auth)
        assert r.status_code == 200 and r.json()["_links"]["self"]["href"] == href

    run(flow)


def test_token_and_ucwa_errors():
    clock = Clock()

    async def flow(c: httpx.AsyncClient):
        bad = await c.post(
            "/WebTicket/oauthtoken", data={"grant_type": "password", "username": "alice", "password": "nope"}
        )
        assert bad.status_code == 400 and bad.json() == {"error": "invalid_grant"}
        r = await c.post("/WebTicket/oauthtoken", data={"grant_type": "client_credentials"})
        assert r.status_code == 400 and r.json() == {"error": "unsupported_grant_type"}
        r = await c.post("/WebTicket/oauthtoken", data={"grant_type": "password"})
        assert r.json() == {"error": "invalid_request"}
        # Windows grant: trusted from the gateway's identity header, else IIS's challenge
        r = await c.post("/WebTicket/oauthtoken", data={"grant_type": "urn:microsoft.rtc:windows"})
        assert r.status_code == 401 and r.headers.get_list("www-authenticate") == ["Negotiate", "NTLM"]
        r = await c.post(
            "/WebTicket/oauthtoken",
            data={"grant_type": "urn:microsoft.rtc:windows"},
            headers={"X-Ucgate-User": "bob@contoso.com"},
        )
        token = r.json()["access_token"]
        auth = {"Authorization": f"Bearer {token}"}
        # the gateway's identity wins over the form's password check
        r = await c.post(
            "/WebTicket/oauthtoken",
            headers={"X-Ucgate-User": "bob"},
            data={"grant_type": "password", "username": "bob", "password": "x"},
        )
        assert r.status_code == 200

        r = await c.post("/ucwa/oauth/v1/applications", json={"userAgent": "x"})
        assert r.status_code == 401 and "MsRtcOAuth" in r.headers.get_list("www-authenticate")[1]
        r = await c.post(
            "/ucwa/oauth/v1/applications", content=b"{not json", headers={**auth, "Content-Type": "application/json"}
        )
        assert r.status_code == 400 and r.json()["code"] == "BadRequest"
        r = await c.post("/ucwa/oauth/v1/applications", json={"userAgent": "x"}, headers=auth)
        assert r.status_code == 400
        r = await c.post(
            "/ucwa/oauth/v1/applications", headers=auth, json={"UserAgent": "x", "EndpointId": "e", "Culture": "en-US"}
        )
        assert r.status_code == 201
        # expiry
        clock.now += 28801
        r = await c.get("/Autodiscover/AutodiscoverService.svc/root/oauth/user", headers=auth)
        assert r.status_code == 401 and "28055" in r.headers["x-ms-diagnostics"]

    run(flow, clock=clock)


def test_autodiscover_xml_redirect_and_misc_services():
    async def flow(c: httpx.AsyncClient):
        r = await c.get(
            "/AUTODISCOVER/AutodiscoverService.svc/root",
            headers={"Accept": "application/vnd.microsoft.rtc.autodiscover+xml"},
        )
        assert r.headers["content-type"].startswith("application/vnd.microsoft.rtc.autodiscover+xml")
        assert '<Link token="OAuth" href="https://lyncweb.contoso.com/Autodiscover/' in r.text
        r = await c.post(
            "/WebTicket/oauthtoken",
            headers={"X-Ucgate-User": "carol"},
            data={"grant_type": "urn:microsoft.rtc:windows"},
        )
        auth = {"Authorization": "Bearer " + r.json()["access_token"]}
        r = await c.get("/Autodiscover/AutodiscoverService.svc/root/oauth/user", headers=auth)
        assert set(r.json()["_links"]) == {"self", "redirect"}
        assert r.json()["_links"]["redirect"]["href"].startswith("https://pool2.contoso.com/Autodiscover/")

        user = {"X-Ucgate-User": "alice"}
        r = await c.post(
            "/WebTicket/WebTicketService.svc/Auth",
            content=b"<s:Envelope/>",
            headers={**user, "Content-Type": "application/soap+xml; charset=utf-8"},
        )
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/soap+xml")
        assert "RequestSecurityTokenResponse" in r.text and "cwt=" in r.text
        assert (await c.post("/WebTicket/WebTicketService.svc", content=b"x")).status_code == 401
        r = await c.post(
            "/CertProv/CertProvisioningService.svc",
            content=b"<s:Envelope/>",
            headers={**user, "Content-Type": "application/soap+xml"},
        )
        assert r.status_code == 200 and "BinarySecurityToken" in r.text
        r = await c.post("/Mcx/McxService.svc", content=b"<s:Envelope/>", headers={**user, "Content-Type": "text/xml"})
        assert r.status_code == 200
        for path in ("/meet/alice/ABC123", "/dialin", "/lwa/WebPages/LwaClient.aspx"):
            r = await c.get(path)
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        for path in (
            "/abs/handler/D-0000-0000.lsabs",
            "/GroupExpansion/service.svc",
            "/RgsClients/Tab.aspx",
            "/PersistentChat/RM",
            "/Scheduler",
            "/passiveauth/",
            "/Reach/Client/WebPages/ReachJoin.aspx",
        ):
            assert (await c.get(path)).status_code == 401, path
            assert (await c.get(path, headers=user)).status_code == 200, path
        assert (await c.get("/nothing/here")).status_code == 404
        assert (await c.get("/ucgate-lab/health")).text == "ok"

    run(flow, redirects={"carol": "https://pool2.contoso.com"})


def test_activesync_options_provision_foldersync():
    async def flow(c: httpx.AsyncClient):
        user = {"X-Ucgate-User": "alice"}
        r = await c.options("/Microsoft-Server-ActiveSync")
        assert r.status_code == 401 and r.headers["www-authenticate"] == 'Basic realm="lyncweb.contoso.com"'

        r = await c.options("/Microsoft-Server-ActiveSync", headers=user)
        assert r.status_code == 200
        assert r.headers["ms-asprotocolversions"] == "2.0,2.1,2.5,12.0,12.1,14.0,14.1,16.0,16.1"
        assert "Provision" in r.headers["ms-asprotocolcommands"].split(",")
        assert r.headers["ms-server-activesync"] == "15.20"

        q = "?Cmd={}&User=alice&DeviceId=ApplF17ABC123&DeviceType=iPhone"
        h = {**user, "MS-ASProtocolVersion": "14.1", "Content-Type": WBXML}
        folder_sync = encode(E("FolderHierarchy:FolderSync", E("SyncKey", "0")))

        # before provisioning, 14.1: status 142 in the FolderSync response
        r = await c.post("/Microsoft-Server-ActiveSync" + q.format("FolderSync"), content=folder_sync, headers=h)
        assert r.status_code == 200 and decode(r.content).text("Status") == "142"

        # phase 1: the policy and a temporary key
        initial = E(
            "Provision:Provision",
            E("Settings:DeviceInformation", E("Set", E("Model", "iPhone"))),
            E("Policies", E("Policy", E("PolicyType", "MS-EAS-Provisioning-WBXML"))),
        )
        r = await c.post("/Microsoft-Server-ActiveSync" + q.format("Provision"), content=encode(initial), headers=h)
        assert r.status_code == 200 and r.headers["content-type"] == WBXML
        doc = decode(r.content)
        assert doc.text("Status") == "1"
        assert doc.find("Settings:DeviceInformation").text("Status") == "1"
        policy = doc.find("Policies").find("Policy")
        assert policy.text("Status") == "1" and policy.find("Data").find("EASProvisionDoc") is not None
        temporary = policy.text("PolicyKey")

        # phase 2: acknowledge; the final key
        ack = E(
            "Provision:Provision",
            E(
                "Policies",
                E("Policy", E("PolicyType", "MS-EAS-Provisioning-WBXML"), E("PolicyKey", temporary), E("Status", "1")),
            ),
        )
        r = await c.post(
            "/Microsoft-Server-ActiveSync" + q.format("Provision"),
            content=encode(ack),
            headers={**h, "X-MS-PolicyKey": temporary},
        )
        policy = decode(r.content).find("Policies").find("Policy")
        final = policy.text("PolicyKey")
        assert policy.text("Status") == "1" and policy.find("Data") is None and final != temporary

        # the temporary key is not the policy key: 144 (14.x) / 449 (12.1)
        r = await c.post(
            "/Microsoft-Server-ActiveSync" + q.format("FolderSync"),
            content=folder_sync,
            headers={**h, "X-MS-PolicyKey": temporary},
        )
        assert decode(r.content).text("Status") == "144"
        r = await c.post(
            "/Microsoft-Server-ActiveSync" + q.format("FolderSync"),
            content=folder_sync,
            headers={**h, "MS-ASProtocolVersion": "12.1", "X-MS-PolicyKey": temporary},
        )
        assert r.status_code == 449

        # FolderSync with the final key
        r = await c.post(
            "/Microsoft-Server-ActiveSync" + q.format("FolderSync"),
            content=folder_sync,
            headers={**h, "X-MS-PolicyKey": final},
        )
        doc = decode(r.content)
        assert doc.tag == "FolderHierarchy:FolderSync" and doc.text("Status") == "1"
        changes = doc.find("Changes")
        assert int(changes.text("Count")) == len(changes.findall("Add")) >= 5
        inbox = next(a for a in changes.findall("Add") if a.text("Type") == "2")
        assert inbox.text("DisplayName") == "Inbox"

        # Sync of the inbox, the same device through the base64 query form
        b64 = encode_base64_query(
            command="Sync",
            device_id="ApplF17ABC123",
            device_type="iPhone",
            protocol_version="14.1",
            policy_key=int(final),
            parameters={"User": "alice"},
        )
        sync = E(
            "AirSync:Sync",
            E("Collections", E("Collection", E("SyncKey", "0"), E("CollectionId", inbox.text("ServerId")))),
        )
        r = await c.post(
            f"/Microsoft-Server-ActiveSync?{b64}", content=encode(sync), headers={**user, "Content-Type": WBXML}
        )
        collection = decode(r.content).find("Collections").find("Collection")
        assert collection.text("Status") == "1" and collection.text("SyncKey") == "1"

        # malformed requests: 400
        r = await c.post("/Microsoft-Server-ActiveSync?Cmd=Sync&DeviceId=a-b&DeviceType=x", headers=user)
        assert r.status_code == 400
        r = await c.post(
            "/Microsoft-Server-ActiveSync" + q.format("FolderSync"),
            content=b"\x03\x01\x6a\x00\xff",
            headers={**h, "X-MS-PolicyKey": final},
        )
        assert r.status_code == 400

    run(flow)
