"""Device identity extraction: EAS queries, UCWA bodies, CertProv bodies, user agents."""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ucgate.protocols.activesync import encode_base64_query
from ucgate.protocols.devices import (
    CLIENT_KINDS,
    MAX_UCWA_BODY_BYTES,
    DeviceFacts,
    classify_user_agent,
    device_from_certprov_body,
    device_from_eas,
    device_from_request,
    device_from_ucwa_application,
    device_settings_from_eas_body,
    is_ucwa_application_create,
    normalise_device_id,
    ucwa_application_id,
    with_eas_settings,
)
from ucgate.protocols.wbxml import E, encode

EAS = "/Microsoft-Server-ActiveSync"
GUID = "a917c6f4-976c-4cf3-847d-cdfffa28ccdf"
SFB_PC = "UCCAPI/16.0.4849.1000 OC/16.0.4849.1000 (Skype for Business)"
ANDROID_SFB = "AndroidLync/6.25.0.27 (SM-G930U Android 8.0.0)"
PROBLEMS = {None, "absent", "too-long", "not-printable", "bad-characters", "malformed"}
SOURCES = {"eas-query", "eas-base64", "ucwa-endpoint", "mcx", "certprov", "user-agent", "none"}


def ucwa(body: dict | bytes, ctype: str | None = "application/json", ua: str | None = None):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return device_from_ucwa_application(raw, ctype, ua)


def certprov_body(attrs: str, inner: str = "") -> bytes:
    # The shape pidgin-sipe's sipe-svc.c sends (after the Lync client), [MS-OCAUTHWS] 3.1.4.1.
    return (
        '<?xml version="1.0"?>\r\n<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"'
        ' xmlns:wsse="http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd">'
        '<soap:Body><GetAndPublishCert xmlns="http://schemas.microsoft.com/OCS/AuthWebServices/"'
        ' xmlns:wst="http://docs.oasis-open.org/ws-sx/ws-trust/200512/"'
        f" {attrs}><wst:RequestSecurityToken>"
        "<wst:TokenType>http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-x509-token-profile-1.0#X509v3</wst:TokenType>"
        "<wst:RequestType>http://docs.oasis-open.org/ws-sx/ws-trust/200512/Issue</wst:RequestType>"
        '<wsse:BinarySecurityToken ValueType="http://schemas.microsoft.com/OCS/AuthWebServices.xsd#PKCS10">'
        f"MIICvDCCAaQCAQAw{inner}</wsse:BinarySecurityToken></wst:RequestSecurityToken>"
        "</GetAndPublishCert></soap:Body></soap:Envelope>"
    ).encode()


def assert_well_formed(f: DeviceFacts) -> None:
    assert f.client_kind in CLIENT_KINDS
    assert f.source in SOURCES
    assert f.problem in PROBLEMS
    assert (f.device_id is None) == (f.problem is not None)
    if f.device_id is not None:
        assert 0 < len(f.device_id) <= 64 and f.device_id.isascii() and f.device_id.isprintable()
        assert " " not in f.device_id
    assert f.detail.isascii()


# --- normalisation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (GUID, (GUID, None)),
        ("{A917C6F4-976C-4CF3-847D-CDFFFA28CCDF}", (GUID, None)),
        ("  A917C6F4-976C-4CF3-847D-CDFFFA28CCDF\r\n", (GUID, None)),
        ("ApplF17XXXXXXXXX", ("applf17xxxxxxxxx", None)),  # every id is lower-cased (issue 13)
        ("{A917C6F4-976C-4CF3-847D-CDFFFA28CCDF", (None, "bad-characters")),  # unbalanced brace
        (None, (None, "absent")),
        ("", (None, "absent")),
        ("   ", (None, "absent")),
        ("x" * 64, ("x" * 64, None)),
        ("x" * 65, (None, "too-long")),
        ("dev\x00ice", (None, "not-printable")),
        ("dévice", (None, "not-printable")),
        ("dev ice", (None, "bad-characters")),
        ("dev<script>", (None, "bad-characters")),
        ("a%0d", (None, "bad-characters")),
        (12345, (None, "malformed")),
        (["x"], (None, "malformed")),
    ],
)
def test_normalise_device_id(raw, expected):
    assert normalise_device_id(raw) == expected


# --- ActiveSync ---------------------------------------------------------------------------


def test_eas_plain_query():
    f = device_from_eas(
        f"{EAS}?Cmd=Sync&User=alice%40example.com&DeviceId=ApplF17XXXXXXXXX&DeviceType=iPhone",
        {"User-Agent": "Apple-iPhone9C1/1402.100", "MS-ASProtocolVersion": "14.1"},
    )
    assert f == DeviceFacts(
        "applf17xxxxxxxxx",
        "iPhone",
        None,
        None,
        "Apple-iPhone9C1/1402.100",
        "eas",
        "eas-query",
        None,
        claimed_user="alice@example.com",
        command="Sync",
    )


def test_eas_base64_query():
    q = encode_base64_query(
        command="Provision", device_id="SEC1234567890", device_type="SAMSUNGSMG991B", parameters={"User": "bob"}
    )
    f = device_from_eas(f"{EAS}?{q}", {"User-Agent": "Android-SAMSUNG-SM-A515F/101.10"})
    assert (f.device_id, f.device_type, f.source, f.command, f.claimed_user) == (
        "sec1234567890",
        "SAMSUNGSMG991B",
        "eas-base64",
        "Provision",
        "bob",
    )
    assert f.client_kind == "eas" and f.problem is None


def test_eas_base64_binary_guid_device_id_is_hex():
    raw = bytes.fromhex("3a1b2c3d4e5f60718293a4b5c6d7e8f9")
    q = encode_base64_query(command="Sync", device_id=raw, device_type="WP8")
    f = device_from_eas(f"{EAS}?{q}", {})
    assert f.device_id == "3a1b2c3d4e5f60718293a4b5c6d7e8f9" and f.source == "eas-base64"


@pytest.mark.parametrize(
    ("query", "problem", "detail"),
    [
        ("Cmd=Sync&User=a&DeviceType=iPhone", "absent", "eas:missing-device-id"),
        ("Cmd=Sync&User=a&DeviceId=" + "A" * 33 + "&DeviceType=iPhone", "too-long", "eas:device-id-too-long"),
        ("Cmd=Sync&User=a&DeviceId=ab%01c&DeviceType=iPhone", "not-printable", "eas:device-id-not-printable"),
        ("Cmd=Sync&User=a&DeviceId=ab-c&DeviceType=iPhone", "bad-characters", "eas:device-id-bad-characters"),
        ("Cmd=Sync&User=a&DeviceId=x&DeviceId=y&DeviceType=iPhone", "malformed", "eas:duplicate-parameter"),
        ("Cmd=Nope&User=a&DeviceId=x&DeviceType=iPhone", "malformed", "eas:unknown-command"),
        ("", "malformed", "eas:missing-query"),
        ("jA%ZZ", "malformed", "eas:bad-base64"),
    ],
)
def test_eas_malformed_gives_problem_never_raises(query, problem, detail):
    f = device_from_eas(f"{EAS}?{query}", {"User-Agent": "Outlook-iOS/2.0"})
    assert (f.device_id, f.problem, f.detail, f.client_kind) == (None, problem, detail, "eas")
    assert f.user_agent == "Outlook-iOS/2.0"


def test_eas_settings_body_fills_model_and_os():
    # Provision with DeviceInformation as Gmail for Android sends it (EAS 14.1+).
    body = encode(
        E(
            "Provision:Provision",
            E(
                "Settings:DeviceInformation",
                E(
                    "Set",
                    E("Model", "SM-M215F"),
                    E("FriendlyName", "SM-M215F"),
                    E("OS", "Android 10"),
                    E("UserAgent", "Android-Mail/2020.11.29.346182102.Release"),
                ),
            ),
            E("Policies", E("Policy", E("PolicyType", "MS-EAS-Provisioning-WBXML"))),
        )
    )
    settings_ = device_settings_from_eas_body(body)
    assert settings_ == {
        "model": "SM-M215F",
        "os": "Android 10",
        "friendly_name": "SM-M215F",
        "user_agent": "Android-Mail/2020.11.29.346182102.Release",
    }
    f = device_from_eas(f"{EAS}?Cmd=Provision&User=a&DeviceId=androidc1&DeviceType=Android", {})
    g = with_eas_settings(f, settings_)
    assert (g.model, g.os, g.user_agent, g.device_id) == (
        "SM-M215F",
        "Android 10",
        "Android-Mail/2020.11.29.346182102.Release",
        "androidc1",
    )
    assert device_settings_from_eas_body(b"not wbxml") == {}
    assert device_settings_from_eas_body(encode(E("FolderHierarchy:FolderSync", E("SyncKey", "0")))) == {}


# --- UCWA ---------------------------------------------------------------------------------


def test_ucwa_application_body():
    f = ucwa(
        {"userAgent": ANDROID_SFB, "endpointId": "{A917C6F4-976C-4CF3-847D-CDFFFA28CCDF}", "culture": "en-US"},
        ua="Dalvik/2.1.0",
    )
    assert f == DeviceFacts(
        GUID,
        "AndroidLync",
        "SM-G930U",
        "Android 8.0.0",
        ANDROID_SFB,
        "android",
        "ucwa-endpoint",
        None,
        command="CreateApplication",
    )


def test_ucwa_names_are_case_insensitive_like_asp_net_binding():
    f = ucwa(
        {"UserAgent": "iPhoneLync/6.0 (iPhone iOS 12.1.2)", "EndpointId": GUID, "Culture": "de-DE"},
        ctype="application/vnd.microsoft.com.ucwa+json; charset=utf-8",
    )
    assert (f.device_id, f.client_kind, f.device_type, f.model, f.os) == (
        GUID,
        "ios",
        "iPhoneLync",
        "iPhone",
        "iOS 12.1.2",
    )


def test_ucwa_xml_body():
    body = (
        b'<?xml version="1.0" encoding="utf-8"?><input xmlns="http://schemas.microsoft.com/rtc/2012/03/ucwa">'
        b'<property name="culture">en-US</property><property name="endpointId">'
        + GUID.upper().encode()
        + b'</property><property name="userAgent">WPLync/5.0</property></input>'
    )
    f = ucwa(body, ctype="application/vnd.microsoft.com.ucwa+xml")
    assert (f.device_id, f.client_kind, f.device_type) == (GUID, "windows-phone", "WPLync")


def test_ucwa_header_user_agent_when_body_has_none():
    f = ucwa({"endpointId": "e1", "culture": "en-US"}, ua=ANDROID_SFB)
    assert f.device_id == "e1" and f.client_kind == "android" and f.user_agent == ANDROID_SFB


@pytest.mark.parametrize(
    ("body", "ctype", "problem", "detail"),
    [
        ({"culture": "en-US"}, "application/json", "absent", "ucwa:endpoint-id-absent"),
        ({"endpointId": "", "culture": "en-US"}, "application/json", "absent", "ucwa:endpoint-id-absent"),
        ({"endpointId": "x" * 100}, "application/json", "too-long", "ucwa:endpoint-id-too-long"),
        ({"endpointId": "dev\u0007"}, "application/json", "not-printable", "ucwa:endpoint-id-not-printable"),
        ({"endpointId": "ünïcode"}, "application/json", "not-printable", "ucwa:endpoint-id-not-printable"),
        ({"endpointId": "a b"}, "application/json", "bad-characters", "ucwa:endpoint-id-bad-characters"),
        ({"endpointId": 42}, "application/json", "malformed", "ucwa:endpoint-id-malformed"),
        ({"endpointId": {"x": 1}}, "application/json", "malformed", "ucwa:endpoint-id-malformed"),
        (b'{"endpointId":"a","EndpointId":"b"}', "application/json", "malformed", "ucwa:duplicate-key"),
        (b"not json", "application/json", "malformed", "ucwa:not-json"),
        (b"", "application/json", "malformed", "ucwa:not-json"),
        (b"[1,2]", "application/json", "malformed", "ucwa:not-an-object"),
        (b'{"endpointId": NaN}', "application/json", "malformed", "ucwa:non-finite-number"),
        (b"\xff\xfe{}", "application/json", "malformed", "ucwa:not-utf8"),
        (b"[" * 10_000, "application/json", "malformed", "ucwa:json-too-deep"),
        (b'{"a":' * 2_000 + b"1" + b"}" * 2_000, "application/json", "malformed", "ucwa:json-too-deep"),
        (
            b'{"endpointId":"' + b"9" * 20 + b'","n":' + b"9" * 5000 + b"}",
            "application/json",
            "malformed",
            "ucwa:not-json",
        ),  # int() digit limit
        (b"x=1", "application/x-www-form-urlencoded", "malformed", "ucwa:unsupported-content-type"),
        (b"<input><property name='endpointId'>x</property>", "application/xml", "malformed", "ucwa:not-xml"),
        (
            b'<!DOCTYPE l [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]><input>&b;</input>',
            "application/xml",
            "malformed",
            "ucwa:dtd-refused",
        ),
        (b"<a>" * 100 + b"</a>" * 100, "application/xml", "malformed", "ucwa:xml-too-deep"),
    ],
)
def test_ucwa_bad_bodies_give_problem_never_raise(body, ctype, problem, detail):
    f = ucwa(body, ctype=ctype, ua=ANDROID_SFB)
    assert (f.device_id, f.problem, f.detail) == (None, problem, detail)
    assert f.source == "ucwa-endpoint" and f.client_kind == "android"  # the header still counts
    assert_well_formed(f)


def test_ucwa_huge_body_refused_before_parsing():
    body = json.dumps({"endpointId": GUID, "pad": "x" * MAX_UCWA_BODY_BYTES}).encode()
    f = ucwa(body)
    assert (f.problem, f.detail) == ("malformed", "ucwa:body-too-large")
    assert ucwa({"endpointId": GUID, "pad": "x" * 15_000}).device_id == GUID


def test_ucwa_paths():
    assert is_ucwa_application_create("POST", "/ucwa/oauth/v1/applications")
    assert is_ucwa_application_create("post", "/ucwa/v1/applications/")
    assert not is_ucwa_application_create("GET", "/ucwa/oauth/v1/applications")
    assert not is_ucwa_application_create("POST", "/ucwa/oauth/v1/applications/101234/me")
    assert ucwa_application_id("/ucwa/oauth/v1/applications/101234567890/people/search?q=a") == "101234567890"
    assert ucwa_application_id("/ucwa/oauth/v1/applications") is None
    assert ucwa_application_id("/ucwa/oauth/v1/applications/a%2fb/me") is None


# --- CertProv -----------------------------------------------------------------------------


def test_certprov_body_device_id_and_entity():
    body = certprov_body('DeviceId="{AB12CD34-0000-1111-2222-333344445555}" Entity="sip:alice@example.com"')
    f = device_from_certprov_body(body, SFB_PC)
    assert f == DeviceFacts(
        "ab12cd34-0000-1111-2222-333344445555",
        "OC",
        None,
        None,
        SFB_PC,
        "pc-external",
        "certprov",
        None,
        claimed_user="sip:alice@example.com",
        command="GetAndPublishCert",
    )


@pytest.mark.parametrize(
    ("body", "problem", "detail"),
    [
        (certprov_body('Entity="sip:a@b"'), "absent", "certprov:device-id-absent"),
        (certprov_body('DeviceId="' + "x" * 80 + '" Entity="sip:a@b"'), "too-long", "certprov:device-id-too-long"),
        (certprov_body('DeviceId="a&amp;b"'), "bad-characters", "certprov:device-id-bad-characters"),
        (certprov_body('DeviceId="a&#1;b"'), "malformed", "certprov:not-xml"),  # XML 1.0 forbids it
        (certprov_body('DeviceId="a&#xE9;b"'), "not-printable", "certprov:device-id-not-printable"),
        (b"<Envelope/>", "malformed", "certprov:no-getandpublishcert"),
        (b"<GetAndPublishCert DeviceId='x'/>", "malformed", "certprov:no-getandpublishcert"),  # no ns
        (b"garbage", "malformed", "certprov:not-xml"),
        (b'<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><x>&e;</x>', "malformed", "certprov:dtd-refused"),
        (b"<x>" + b" " * 70_000 + b"</x>", "malformed", "certprov:body-too-large"),
        (
            b'<B xmlns="http://schemas.microsoft.com/OCS/AuthWebServices/"><GetAndPublishCert DeviceId="a"/>'
            b'<GetAndPublishCert DeviceId="b"/></B>',
            "malformed",
            "certprov:repeated-request",
        ),
    ],
)
def test_certprov_bad_bodies(body, problem, detail):
    f = device_from_certprov_body(body)
    assert (f.device_id, f.problem, f.detail) == (None, problem, detail)
    assert_well_formed(f)


# --- any request and user agents ----------------------------------------------------------


@pytest.mark.parametrize(
    ("ua", "kind"),
    [
        # Lync/SfB desktop (UCCAPI ... OC ...), as IIS and the monitoring reports show them.
        (SFB_PC, "pc-external"),
        ("UCCAPI/15.0.4420.1017 OC/15.0.4420.1017 (Microsoft Lync)", "pc-external"),
        ("UCCAPI/4.0.7577.0 OC/4.0.7577.0 (Microsoft Lync 2010)", "pc-external"),
        ("UCCAPI/16.0.6965.5308 OC/16.0.6965.2117", "pc-external"),
        # SfB/Lync mobile (product tokens of the Lync client version policy).
        ("RTCC/7.0.0.0 UCWA/7.0.0.0 AndroidLync/6.25.0.27 (SM-G930U Android 8.0.0)", "android"),
        ("iPhoneLync/6.11.1.310 (iPhone iOS 10.2)", "ios"),
        ("iPadLync/6.11.1.310 (iPad iOS 10.2)", "ios"),
        ("WPLync/5.0.1234.0 (Lumia 930 Windows Phone 8.1)", "windows-phone"),
        ("MacLync/14.0.11", "mac"),
        # ActiveSync clients.
        ("Apple-iPhone9C1/1402.100", "eas"),
        ("Apple-iPad7C3/1705.36", "eas"),
        ("Outlook-iOS/2.0", "eas"),
        ("Outlook-Android/2.0", "eas"),
        ("Android-Mail/2020.11.29.346182102.Release", "eas"),
        ("Android-SAMSUNG-SM-A515F/101.10", "eas"),
        ("MSFT-WIN-3/10.0.17134", "eas"),
        # Browsers (Lync Web App runs in one) and nonsense.
        ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_2 like Mac OS X) AppleWebKit/605.1.15", "ios"),
        (
            "Mozilla/5.0 (Mobile; Windows Phone 8.1; Android 4.0; ARM; Trident/7.0; like iPhone OS 7_0_3)",
            "windows-phone",
        ),
        ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/120.0 Safari/537.36", "unknown"),
        ("", "unknown"),
        (None, "unknown"),
        ("\x00\xff", "unknown"),
    ],
)
def test_classify_user_agent(ua, kind):
    assert classify_user_agent(ua) == kind


def test_classify_extra_rules_come_first_and_are_validated():
    assert classify_user_agent(SFB_PC, [(r"OC/16\.0\.4849", "pc-internal")]) == "pc-internal"
    assert classify_user_agent("MyCorpPhone/1", [(r"^MyCorpPhone/", "android")]) == "android"
    with pytest.raises(ValueError, match="unknown client kind"):
        classify_user_agent("x", [("x", "toaster")])
    with pytest.raises(ValueError, match="bad regex"):
        classify_user_agent("x", [("(", "ios")])


@pytest.mark.parametrize(
    ("service", "method", "target", "ua", "kind", "detail"),
    [
        ("webticket", "POST", "/WebTicket/WebTicketService.svc", SFB_PC, "pc-external", "no-device-id-on-wire"),
        ("mcx", "POST", "/Mcx/McxService.svc", "iPhoneLync/4.0 (iPhone iOS 5.1)", "ios", "mcx:no-device-id-on-wire"),
        ("certprov", "POST", "/CertProv/CertProvisioningService.svc", SFB_PC, "pc-external", "certprov:id-in-body"),
        ("ucwa", "POST", "/ucwa/oauth/v1/applications", ANDROID_SFB, "android", "ucwa:id-in-application-body"),
        ("ucwa", "GET", "/ucwa/oauth/v1/applications/1012/me", ANDROID_SFB, "android", "ucwa:id-bound-to-application"),
        (
            "lwa",
            "GET",
            "/lwa/WebPages/LwaClient.aspx",
            "Mozilla/5.0 (Windows NT 10.0) Chrome/120",
            "lwa",
            "no-device-id-on-wire",
        ),
        ("abs", "GET", "/abs/handler/x.lsabs", None, "unknown", "no-device-id-on-wire"),
    ],
)
def test_device_from_request_without_id(service, method, target, ua, kind, detail):
    headers = {"User-Agent": ua} if ua is not None else {}
    f = device_from_request(service, method, target, headers)
    assert (f.device_id, f.problem, f.client_kind, f.detail) == (None, "absent", kind, detail)
    assert f.source == ("user-agent" if ua else "none")


def test_device_from_request_eas_and_header_case():
    f = device_from_request(
        "eas", "POST", f"{EAS}?Cmd=Ping&User=a&DeviceId=X1&DeviceType=Outlook", {"user-agent": "Outlook-iOS/2.0"}
    )
    assert (f.device_id, f.device_type, f.client_kind, f.source) == ("x1", "Outlook", "eas", "eas-query")


def test_oversized_user_agent_is_not_kept():
    f = device_from_request("webticket", "POST", "/WebTicket/x", {"User-Agent": "UCCAPI/1 " + "x" * 600})
    assert f.user_agent is None and f.source == "none"


# --- fuzzing: nothing escapes ------------------------------------------------------------

_EXAMPLES = int(os.environ.get("UCGATE_FUZZ_EXAMPLES", "100"))
_text = st.text(max_size=200)
_json_value = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=80),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=_EXAMPLES, deadline=None)
@given(
    st.binary(max_size=600),
    st.sampled_from([None, "application/json", "application/vnd.microsoft.com.ucwa+xml", "text/plain", ""]),
    _text,
)
def test_fuzz_ucwa_bytes(body, ctype, ua):
    assert_well_formed(device_from_ucwa_application(body, ctype, ua))


@settings(max_examples=_EXAMPLES, deadline=None)
@given(
    st.dictionaries(st.sampled_from(["userAgent", "endpointId", "culture", "EndpointID", "x"]), _json_value, max_size=5)
)
def test_fuzz_ucwa_json_objects(obj):
    f = device_from_ucwa_application(json.dumps(obj).encode(), "application/json", None)
    assert_well_formed(f)


@settings(max_examples=_EXAMPLES, deadline=None)
@given(st.binary(max_size=600), st.one_of(st.none(), _text))
def test_fuzz_certprov_bytes(body, ua):
    assert_well_formed(device_from_certprov_body(body, ua))


@settings(max_examples=_EXAMPLES, deadline=None)
@given(_text, _text)
def test_fuzz_certprov_attributes(device_id, entity):
    from xml.sax.saxutils import quoteattr

    body = certprov_body(f"DeviceId={quoteattr(device_id)} Entity={quoteattr(entity)}")
    assert_well_formed(device_from_certprov_body(body))


@settings(max_examples=_EXAMPLES, deadline=None)
@given(
    st.sampled_from(["eas", "ucwa", "mcx", "certprov", "webticket", "lwa", "nope"]),
    st.sampled_from(["GET", "POST", ""]),
    _text,
    st.dictionaries(
        st.sampled_from(["User-Agent", "user-agent", "X-MS-PolicyKey", "MS-ASProtocolVersion"]), _text, max_size=4
    ),
)
def test_fuzz_device_from_request(service, method, query, headers):
    target = f"{EAS}?{query}" if service == "eas" else f"/{service}/{query}"
    assert_well_formed(device_from_request(service, method, target, headers))


@settings(max_examples=_EXAMPLES, deadline=None)
@given(_text)
def test_fuzz_classify_and_normalise(text):
    assert classify_user_agent(text) in CLIENT_KINDS
    device_id, problem = normalise_device_id(text)
    assert (device_id is None) != (problem is None)


@settings(max_examples=_EXAMPLES, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_eas_settings_body(body):
    assert isinstance(device_settings_from_eas_body(b"\x03\x01\x6a\x00" + body), dict)


def test_device_ids_are_lower_cased_everywhere():
    """Issue 13 item 10: the store lower-cased EAS ids, the audit log and the trust table did
    not; the one normalisation now lower-cases every id."""
    f = device_from_eas(f"{EAS}?Cmd=Sync&User=alice&DeviceId=ApplF17XYZ&DeviceType=iPhone", {})
    assert f.device_id == "applf17xyz"
    assert normalise_device_id(" ApplF17XYZ ") == ("applf17xyz", None)
    assert normalise_device_id("{A917C6F4-1F1B-4E2B-9C6B-5A1B2C3D4E5F}")[0] == "a917c6f4-1f1b-4e2b-9c6b-5a1b2c3d4e5f"
