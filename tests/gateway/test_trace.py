"""``[auth] trace`` through the running gateway: none / low / verbose, and never a secret.

Real sign-ins (pyspnego NTLM and Negotiate, httpx Basic) against the gateway with the id
service in process; the log records are captured and searched for the ASP, the wrong
password, the NT response and MIC bytes (hex and base64), the tokens sent and any base64 blob.
"""

from __future__ import annotations

import base64
import http.client
import logging
import re

import httpx
import pytest
import spnego

from ucgate.app import preauth_settings
from ucgate.config import ConfigError, LockoutConfig, from_dict
from ucgate.gateway.preauth import PreAuthenticator, PreAuthSettings
from ucgate.id.factory import open_services
from ucgate.protocols import spnego as spnego_proto
from ucgate.protocols.ntlm import AuthenticateMessage

from ..support import gateway_config, start_gateway
from .test_preauth import DOMAIN, _cbt

WRONG = "Wrong-Secret-Value-42"


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
    s.users.add("alice", upn="alice@lab.ucgate.test", sip_uri="sip:alice@lab.ucgate.test")
    yield s
    s.close()


@pytest.fixture
def asp(ids):
    return ids.asps.create("alice", "phone")[1]


@pytest.fixture
def gateway(loop_thread, tls_files, upstream, ids):
    started = []

    def start(trace: str):
        settings = PreAuthSettings(extended_protection="require", netbios_domain=DOMAIN, trace=trace, failure_floor=0)
        g = start_gateway(
            loop_thread, *tls_files, upstream.port, authenticator=PreAuthenticator(ids.credentials, settings)
        )
        started.append(g)
        return g

    yield start
    for g in started:
        g.stop()


def negotiate_sign_in(g, asp: str, protocol: str) -> list[tuple[str, bytes]]:
    """Sign in with pyspnego over one connection; returns the (scheme, token) legs sent."""
    scheme = "NTLM" if protocol == "ntlm" else "Negotiate"
    ctx = spnego.client(
        f"{DOMAIN}\\alice", asp, hostname="localhost", service="HTTP", protocol=protocol, channel_bindings=_cbt(g)
    )
    conn = http.client.HTTPSConnection("localhost", g.port, context=g.ssl_context())
    sent = []
    token = ctx.step()
    status = None
    for _ in range(3):
        sent.append((scheme, token))
        conn.request("GET", "/ucwa/trace", headers={"Authorization": f"{scheme} {base64.b64encode(token).decode()}"})
        r = conn.getresponse()
        r.read()
        status = r.status
        if status != 401:
            break
        token = ctx.step(base64.b64decode(r.getheader("WWW-Authenticate").split(" ", 1)[1]))
    conn.close()
    assert status == 200
    return sent


def basic_sign_ins(g, asp: str) -> None:
    with httpx.Client(verify=g.ssl_context()) as c:
        assert c.get(f"{g.url}/ucwa/basic", auth=("alice", asp)).status_code == 200
        assert c.get(f"{g.url}/ucwa/basic", auth=("alice", WRONG)).status_code == 401


def traces(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("auth trace:")]


def assert_no_secrets(log_text: str, asp: str, sent: list[tuple[str, bytes]]) -> None:
    for secret in (asp, asp.replace("-", ""), WRONG):
        assert secret not in log_text
    for _, token in sent:
        assert base64.b64encode(token).decode()[:16] not in log_text
        if token.startswith(b"NTLMSSP\x00\x03") or token[:1] == b"\xa1":
            raw = token if token.startswith(b"NTLMSSP") else spnego_proto.parse_negotiate_token(token).response_token
            if raw and raw.startswith(b"NTLMSSP\x00\x03"):
                msg = AuthenticateMessage.unpack(raw)
                for value in (
                    msg.nt_challenge_response[:16],
                    msg.nt_challenge_response[16:48],
                    msg.mic,
                    msg.encrypted_random_session_key,
                ):
                    if value:
                        assert value.hex() not in log_text.lower()
                        assert base64.b64encode(value).decode()[:12] not in log_text
    assert not re.search(r"[A-Za-z0-9+/]{32,}", log_text), "a base64 blob in the trace"
    assert not re.search(r"[0-9a-fA-F]{24,}", log_text), "a hex blob in the trace"


def test_none_logs_nothing_new(gateway, asp, caplog):
    caplog.set_level(logging.DEBUG, logger="ucgate")
    g = gateway("none")
    negotiate_sign_in(g, asp, "ntlm")
    basic_sign_ins(g, asp)
    assert traces(caplog) == []


def test_low_one_line_per_leg(gateway, asp, caplog):
    caplog.set_level(logging.INFO, logger="ucgate.gateway.auth")
    g = gateway("low")
    sent = negotiate_sign_in(g, asp, "ntlm")
    lines = traces(caplog)
    assert len(lines) == 3  # NEGOTIATE in, CHALLENGE out, AUTHENTICATE in
    assert lines[0].endswith('from client: scheme=NTLM message="NTLM NEGOTIATE"')
    assert lines[1].endswith('from gateway: scheme=NTLM message="NTLM CHALLENGE"')
    assert re.search(
        r'from client: scheme=NTLM message="NTLM AUTHENTICATE" user=alice domain=LAB workstation=\S+$', lines[2]
    )
    ntlm_lines = lines
    caplog.clear()
    basic_sign_ins(g, asp)
    lines = traces(caplog)
    assert [line.split(": ", 1)[1] for line in lines] == [
        f'client 127.0.0.1, from client: scheme=Basic message="Basic credentials" user=alice '
        f'password="<{n} characters>"'
        for n in (len(asp), len(WRONG))
    ]
    assert_no_secrets("\n".join(ntlm_lines + lines), asp, sent)


def test_verbose_full_fields_never_secrets(gateway, asp, caplog):
    caplog.set_level(logging.INFO, logger="ucgate.gateway.auth")
    g = gateway("verbose")
    sent = negotiate_sign_in(g, asp, "ntlm") + negotiate_sign_in(g, asp, "negotiate")
    basic_sign_ins(g, asp)
    text = "\n".join(traces(caplog))
    assert '"MsvAvTargetName":"HTTP/localhost"' in text
    assert '"MsvAvChannelBindings":"present"' in text
    assert '"mic":"present"' in text
    assert '"nt_response":{"kind":"NTLMv2"' in text
    assert "SPNEGO NegTokenInit > NTLM NEGOTIATE" in text
    assert "SPNEGO NegTokenResp > NTLM AUTHENTICATE" in text
    assert '"neg_state":"accept-completed (0)"' in text  # the final leg, with our mechListMIC
    assert '"password_length":' in text
    assert_no_secrets(text, asp, sent)
    # the whole log of the test, not only trace lines, stays clean too
    assert_no_secrets("\n".join(r.getMessage() for r in caplog.records), asp, sent)


def test_undecodable_header_is_one_line(gateway, asp, caplog):
    caplog.set_level(logging.INFO, logger="ucgate.gateway.auth")
    g = gateway("low")
    with httpx.Client(verify=g.ssl_context()) as c:
        c.get(f"{g.url}/ucwa/x", headers={"Authorization": "NTLM TlRMTVNTUAAJAAAA"})
        c.get(f"{g.url}/ucwa/x", headers={"Authorization": 'Digest username="alice"'})
    lines = traces(caplog)
    assert lines[0].endswith("undecodable (unexpected-message: unknown NTLM message type 9)")
    assert "undecodable (unsupported-scheme" in lines[1]


def test_config_trace_levels(tls_files):
    base = gateway_config(*tls_files, 1)
    assert from_dict(base).auth.trace == "none"
    config = from_dict(base | {"auth": {"trace": "verbose"}})
    assert preauth_settings(config).trace == "verbose"
    with pytest.raises(ConfigError, match="trace"):
        from_dict(base | {"auth": {"trace": "everything"}})
