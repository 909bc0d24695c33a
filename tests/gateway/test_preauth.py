"""Pre-authentication through the running gateway, with real clients nobody here wrote:
curl --ntlm / --basic, requests-ntlm (pyspnego) with and without channel bindings, impacket's
NTLM code, pyspnego's Negotiate, httpx Basic."""

from __future__ import annotations

import base64
import http.client
import json
import shutil
import subprocess

import httpx
import pytest
import requests
from requests_ntlm import HttpNtlmAuth

from ucgate.config import LockoutConfig
from ucgate.gateway.preauth import PreAuthenticator, PreAuthSettings
from ucgate.id.factory import open_services

from ..support import start_gateway

DOMAIN = "LAB"


@pytest.fixture
def ids(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "keys").mkdir(mode=0o700)
    s = open_services(
        store_url=f"sqlite:///{tmp_path / 'data' / 'ucgate.db'}",
        key_file=tmp_path / "keys" / "ucgate.key",
        audit_file=tmp_path / "data" / "audit.jsonl",
        lockout=LockoutConfig(user_failures=5, ip_failures=50, window=900),
    )
    s.users.add("alice", upn="alice@lab.ucgate.test", sip_uri="sip:alice@lab.ucgate.test", display_name="Alice")
    s.users.add("bob", upn="bob@lab.ucgate.test")
    yield s
    s.close()


def make_gateway(loop_thread, tls_files, upstream, ids, ep="require", plain=False, **settings):
    auth = PreAuthenticator(ids.credentials, PreAuthSettings(extended_protection=ep, netbios_domain=DOMAIN, **settings))
    if plain:
        return start_gateway(loop_thread, None, None, upstream.port, authenticator=auth)
    return start_gateway(loop_thread, *tls_files, upstream.port, authenticator=auth)


@pytest.fixture
def gw(loop_thread, tls_files, upstream, ids):
    g = make_gateway(loop_thread, tls_files, upstream, ids)
    yield g
    g.stop()


@pytest.fixture
def asp(ids):
    _, plaintext = ids.asps.create("alice", "phone")
    return plaintext


def sign_ins(ids, result="allow"):
    return [e for e in ids.audit.tail(1000) if e.action == "sign-in" and e.result == result]


# --- NTLM with real clients -------------------------------------------------------------------


def requests_session(g, user, password, send_cbt=True):
    s = requests.Session()
    s.trust_env = False  # REQUESTS_CA_BUNDLE would override the session's verify
    s.verify = str(g.cert)
    s.auth = HttpNtlmAuth(user, password, send_cbt=send_cbt)
    return s


def test_requests_ntlm_with_channel_binding(gw, upstream, ids, asp):
    with requests_session(gw, f"{DOMAIN}\\alice", asp) as s:
        r = s.get(f"https://localhost:{gw.port}/ucwa/oauth/v1/applications")
    assert r.status_code == 200, r.text
    seen = upstream.received[-1]
    assert seen.header("X-Ucgate-User") == "alice"
    assert seen.header("Authorization") is None
    assert len(upstream.received) == 1  # the handshake legs never reached the front end


def test_requests_ntlm_without_channel_binding(loop_thread, tls_files, upstream, ids, asp):
    g = make_gateway(loop_thread, tls_files, upstream, ids, ep="require")
    try:
        with requests_session(g, f"{DOMAIN}\\alice", asp, send_cbt=False) as s:
            assert s.get(f"https://localhost:{g.port}/ucwa/x").status_code == 401
    finally:
        g.stop()
    assert any(e.reason == "channel-binding-missing" for e in sign_ins(ids, "deny"))
    g = make_gateway(loop_thread, tls_files, upstream, ids, ep="allow")
    try:
        with requests_session(g, f"{DOMAIN}\\alice", asp, send_cbt=False) as s:
            assert s.get(f"https://localhost:{g.port}/ucwa/x").status_code == 200
    finally:
        g.stop()


def test_wrong_and_revoked_asp(gw, ids, asp):
    with requests_session(gw, f"{DOMAIN}\\alice", "wrong-asp-1234") as s:
        assert s.get(f"https://localhost:{gw.port}/ucwa/x").status_code == 401
    asp_id = ids.asps.list("alice")[0].id
    ids.asps.revoke(asp_id)
    with requests_session(gw, f"{DOMAIN}\\alice", asp) as s:
        assert s.get(f"https://localhost:{gw.port}/ucwa/x").status_code == 401
    reasons = [e.reason for e in sign_ins(ids, "deny")]
    assert reasons.count("wrong-password") == 2


def test_unknown_user_and_other_users_asp(gw, ids, asp):
    with requests_session(gw, f"{DOMAIN}\\mallory", asp) as s:
        assert s.get(f"https://localhost:{gw.port}/ucwa/x").status_code == 401
    with requests_session(gw, f"{DOMAIN}\\bob", asp) as s:  # alice's ASP is not bob's
        assert s.get(f"https://localhost:{gw.port}/ucwa/x").status_code == 401


def test_one_handshake_per_connection_and_again_on_a_new_one(gw, upstream, ids, asp):
    with requests_session(gw, f"{DOMAIN}\\alice", asp) as s:
        for i in range(10):
            assert s.get(f"https://localhost:{gw.port}/ucwa/r{i}").status_code == 200
    assert len(sign_ins(ids)) == 1
    assert len(upstream.received) == 10
    with requests_session(gw, f"{DOMAIN}\\alice", asp) as s:  # second connection
        assert s.get(f"https://localhost:{gw.port}/ucwa/again").status_code == 200
    assert len(sign_ins(ids)) == 2


def test_authenticated_connection_needs_no_header(gw, upstream, ids, asp):
    """After Type 3, requests on the same connection carry no Authorization (IIS behaviour)."""
    import spnego

    conn = http.client.HTTPSConnection("localhost", gw.port, context=gw.ssl_context())
    ctx = spnego.client("alice", asp, protocol="ntlm", channel_bindings=_cbt(gw))
    conn.request("GET", "/ucwa/a", headers={"Authorization": "NTLM " + base64.b64encode(ctx.step()).decode()})
    r = conn.getresponse()
    r.read()
    assert r.status == 401
    challenge = r.getheader("WWW-Authenticate").split(" ", 1)[1]
    conn.request(
        "GET",
        "/ucwa/b",
        headers={"Authorization": "NTLM " + base64.b64encode(ctx.step(base64.b64decode(challenge))).decode()},
    )
    r = conn.getresponse()
    r.read()
    assert r.status == 200
    for i in range(5):
        conn.request("GET", f"/ucwa/c{i}")
        r = conn.getresponse()
        r.read()
        assert r.status == 200
    conn.close()
    # a new connection without credentials is refused
    c2 = http.client.HTTPSConnection("localhost", gw.port, context=gw.ssl_context())
    c2.request("GET", "/ucwa/d")
    assert c2.getresponse().status == 401
    c2.close()


def _cbt(g):
    import spnego.channel_bindings as cb

    from ucgate.gateway.tls import certificate_der
    from ucgate.protocols.ntlm import tls_server_end_point

    return cb.GssChannelBindings(application_data=tls_server_end_point(certificate_der(g.cert)))


def test_pyspnego_negotiate_wrapping_ntlm(gw, upstream, asp):
    import spnego

    ctx = spnego.client(
        "alice",
        asp,
        hostname="localhost",
        service="HTTP",
        protocol="negotiate",
        channel_bindings=_cbt(gw),
        options=spnego.NegotiateOptions.use_ntlm,
    )
    conn = http.client.HTTPSConnection("localhost", gw.port, context=gw.ssl_context())
    token = ctx.step()
    status = None
    for _ in range(3):
        conn.request("GET", "/ucwa/neg", headers={"Authorization": "Negotiate " + base64.b64encode(token).decode()})
        r = conn.getresponse()
        r.read()
        status = r.status
        hdr = r.getheader("WWW-Authenticate")
        if status != 401:
            if hdr and hdr.startswith("Negotiate "):
                ctx.step(base64.b64decode(hdr.split(" ", 1)[1]))
            break
        token = ctx.step(base64.b64decode(hdr.split(" ", 1)[1]))
    assert status == 200
    assert ctx.complete
    assert upstream.received[-1].header("X-Ucgate-User") == "alice"
    conn.close()


def test_impacket_ntlm_client(gw, upstream, asp):
    from impacket import ntlm

    conn = http.client.HTTPSConnection("localhost", gw.port, context=gw.ssl_context())
    t1 = ntlm.getNTLMSSPType1("", "", signingRequired=True)
    conn.request(
        "GET", "/Mcx/McxService.svc", headers={"Authorization": "NTLM " + base64.b64encode(t1.getData()).decode()}
    )
    r = conn.getresponse()
    r.read()
    assert r.status == 401
    t2 = base64.b64decode(r.getheader("WWW-Authenticate").split(" ", 1)[1])
    kwargs = {}
    import inspect

    if "channel_binding_value" in inspect.signature(ntlm.getNTLMSSPType3).parameters:
        from ucgate.gateway.tls import certificate_der
        from ucgate.protocols.ntlm import channel_bindings_hash, tls_server_end_point

        kwargs["channel_binding_value"] = channel_bindings_hash(tls_server_end_point(certificate_der(gw.cert)))
    t3, _ = ntlm.getNTLMSSPType3(t1, t2, "alice", asp, DOMAIN, use_ntlmv2=True, **kwargs)
    conn.request(
        "GET", "/Mcx/McxService.svc", headers={"Authorization": "NTLM " + base64.b64encode(t3.getData()).decode()}
    )
    r = conn.getresponse()
    r.read()
    assert r.status == 200, "impacket NTLMv2 with channel binding"
    assert upstream.received[-1].header("X-Ucgate-User") == "alice"
    conn.close()


def test_impacket_ntlmv1_refused(loop_thread, tls_files, upstream, ids, asp):
    from impacket import ntlm

    g = make_gateway(loop_thread, tls_files, upstream, ids, ep="off")
    try:
        conn = http.client.HTTPSConnection("localhost", g.port, context=g.ssl_context())
        t1 = ntlm.getNTLMSSPType1("", "")
        conn.request("GET", "/ucwa/x", headers={"Authorization": "NTLM " + base64.b64encode(t1.getData()).decode()})
        r = conn.getresponse()
        r.read()
        t2 = base64.b64decode(r.getheader("WWW-Authenticate").split(" ", 1)[1])
        t3, _ = ntlm.getNTLMSSPType3(t1, t2, "alice", asp, DOMAIN, use_ntlmv2=False)
        conn.request("GET", "/ucwa/x", headers={"Authorization": "NTLM " + base64.b64encode(t3.getData()).decode()})
        r = conn.getresponse()
        r.read()
        assert r.status == 401
        conn.close()
    finally:
        g.stop()
    assert upstream.received == []


def test_curl_ntlm(loop_thread, tls_files, upstream, ids, asp):
    if not shutil.which("curl"):
        pytest.skip("curl not installed")
    # curl's own NTLM code sends no channel binding (MsvAvChannelBindings): it works with
    # extended_protection = "allow" and is refused under "require".
    for ep, want in (("allow", "200"), ("require", "401")):
        g = make_gateway(loop_thread, tls_files, upstream, ids, ep=ep)
        try:
            out = subprocess.run(
                [
                    "curl",
                    "-sS",
                    "--ntlm",
                    "-u",
                    f"{DOMAIN}\\alice:{asp}",
                    "--cacert",
                    str(g.cert),
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    f"https://localhost:{g.port}/ucwa/curl",
                ],
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert out.stdout == want, (ep, out.stdout, out.stderr)
        finally:
            g.stop()


# --- Basic ----------------------------------------------------------------------------------


def test_basic_with_curl_and_httpx(gw, upstream, ids, asp):
    if shutil.which("curl"):
        codes = []
        for pw in (asp, "nope"):
            out = subprocess.run(
                [
                    "curl",
                    "-sS",
                    "-u",
                    f"alice:{pw}",
                    "--cacert",
                    str(gw.cert),
                    "-o",
                    "/dev/null",
                    "-d",
                    "",
                    "-w",
                    "%{http_code}",
                    f"https://localhost:{gw.port}/Microsoft-Server-ActiveSync?Cmd=Sync",
                ],
                capture_output=True,
                text=True,
                timeout=30,
            )
            codes.append(out.stdout)
        assert codes == ["200", "401"]
    with httpx.Client(verify=gw.ssl_context()) as c:
        # the ASP may be typed without dashes and in upper case
        for user, pw, want in (
            ("alice@lab.ucgate.test", asp.replace("-", "").upper(), 200),
            ("LAB\\alice", asp, 200),
            ("alice", asp[:-1], 401),
            ("bob", asp, 401),
        ):
            r = c.get(f"{gw.url}/ucwa/basic", auth=(user, pw))
            assert r.status_code == want, (user, r.status_code)
    assert upstream.received[-1].header("X-Ucgate-User") == "alice"


def test_basic_refused_on_plain_http(loop_thread, tls_files, upstream, ids, asp):
    g = make_gateway(loop_thread, tls_files, upstream, ids, plain=True)
    try:
        with httpx.Client() as c:
            r = c.get(f"{g.url}/ucwa/x", auth=("alice", asp))
            assert r.status_code == 403
            assert "Basic" not in r.headers.get("WWW-Authenticate", "")
            r = c.get(f"{g.url}/ucwa/x")
            assert r.status_code == 401
            assert all(not v.startswith("Basic") for v in r.headers.get_list("WWW-Authenticate"))
    finally:
        g.stop()
    assert upstream.received == []


def test_brute_force_is_throttled(gw, ids, asp):
    with httpx.Client(verify=gw.ssl_context()) as c:
        codes = [c.get(f"{gw.url}/ucwa/x", auth=("alice", f"wrong-{i}")).status_code for i in range(8)]
        assert codes[:5] == [401] * 5
        assert codes[5:] == [429] * 3
        r = c.get(f"{gw.url}/ucwa/x", auth=("alice", asp))
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1


# --- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header,status",
    [
        ("NTLM !!!notbase64", 400),
        ("NTLM " + "A" * 20000, 400),
        ("NTLM " + base64.b64encode(b"NTLMSSP\x00\x01\x00\x00\x00").decode(), 401),  # truncated Type 1
        ("NTLM " + base64.b64encode(b"garbage" * 10).decode(), 401),
        ("Negotiate " + base64.b64encode(b"\x60\x82\xff\xff").decode(), 401),
        ("NTLM " + base64.b64encode(b"NTLMSSP\x00\x03\x00\x00\x00" + b"\xff" * 80).decode(), 401),
        ("Basic !!!", 400),
        ("Basic " + base64.b64encode(b"no-colon").decode(), 400),
        ("Basic " + base64.b64encode(b"a\x00b:c").decode(), 400),
        ("Digest username=x", 401),
    ],
)
def test_malformed_credentials(gw, upstream, header, status):
    with httpx.Client(verify=gw.ssl_context()) as c:
        r = c.get(f"{gw.url}/ucwa/x", headers={"Authorization": header})
        assert r.status_code == status
        # and the gateway is still fine
        assert c.get(f"{gw.url}/Autodiscover/AutodiscoverService.svc/root").status_code == 200
    assert all(rec.target != "/ucwa/x" for rec in upstream.received)


def test_audit_has_no_secrets(gw, ids, asp, tmp_path):
    with httpx.Client(verify=gw.ssl_context()) as c:
        c.get(f"{gw.url}/ucwa/x", auth=("alice", asp))
        c.get(f"{gw.url}/ucwa/x", auth=("alice", "wrong-secret-value"))
    text = (tmp_path / "data" / "audit.jsonl").read_text()
    assert asp not in text and asp.replace("-", "") not in text and "wrong-secret-value" not in text
    events = [json.loads(line) for line in text.splitlines()]
    assert {e["result"] for e in events} >= {"allow", "deny"}
    assert all(e["client_address"] == "127.0.0.1" for e in events)


def tampered_mech_list_mic(g, user: str, asp: str) -> int:
    """A Negotiate-wrapped NTLM sign-in whose AUTHENTICATE leg carries a mechListMIC with one bit
    flipped; the status of the answer to it."""
    import spnego

    ctx = spnego.client(
        user,
        asp,
        hostname="localhost",
        service="HTTP",
        protocol="negotiate",
        channel_bindings=_cbt(g),
        options=spnego.NegotiateOptions.use_negotiate,
    )
    conn = http.client.HTTPSConnection("localhost", g.port, context=g.ssl_context())
    token = ctx.step()
    for _ in range(3):
        conn.request("GET", "/ucwa/neg", headers={"Authorization": "Negotiate " + base64.b64encode(token).decode()})
        r = conn.getresponse()
        r.read()
        challenge = base64.b64decode(r.getheader("WWW-Authenticate").split(" ", 1)[1])
        token = ctx.step(challenge)
        if b"NTLMSSP\x00\x03" in token:  # the AUTHENTICATE leg: its mechListMIC is the last field
            break
    assert b"NTLMSSP\x00\x03" in token
    from ucgate.protocols.spnego import NegTokenResp, encode_neg_token_resp, parse_negotiate_token

    resp = parse_negotiate_token(token)
    assert isinstance(resp, NegTokenResp) and resp.mech_list_mic, "pyspnego sends a mechListMIC"
    mic = resp.mech_list_mic[:-1] + bytes([resp.mech_list_mic[-1] ^ 0x01])
    tampered = encode_neg_token_resp(resp.neg_state, resp.supported_mech, resp.response_token, mic)
    conn.request("GET", "/ucwa/neg", headers={"Authorization": "Negotiate " + base64.b64encode(tampered).decode()})
    r = conn.getresponse()
    r.read()
    conn.close()
    return r.status


def test_tampered_spnego_mech_list_mic_is_refused_and_audited(gw, upstream, ids, asp):
    """The mechListMIC (MS-SPNG 3.1.5.1) protects the mechanism list against downgrade; a
    wrong one is refused even though the NTLM exchange itself verified, and the audit trail
    says deny."""
    assert tampered_mech_list_mic(gw, "alice", asp) == 401
    assert all(rec.target != "/ucwa/neg" for rec in upstream.received)
    denied = [e.reason for e in sign_ins(ids, "deny")]
    assert any("mic" in r for r in denied), denied
    assert any(e.reason == "ok" for e in sign_ins(ids)), "the NTLM exchange itself verified"
