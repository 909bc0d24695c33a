"""TOTP second factor end to end through the gateway (otp-appended mode): curl Basic and
requests-ntlm with "ASP + code", replay, clock skew of one step, wrong codes, device trust.
Every test runs on SQLite and on PostgreSQL (skipped, with the reason, when no server answers)."""

from __future__ import annotations

import base64
import http.client
import shutil
import subprocess
import time

import pytest
import requests
from requests_ntlm import HttpNtlmAuth

from ucgate.config import LockoutConfig
from ucgate.gateway.preauth import PreAuthenticator, PreAuthSettings
from ucgate.id.factory import open_services
from ucgate.id.otp import OtpService, totp
from ucgate.id.twofactor import TwoFactorSettings
from ucgate.protocols.devices import device_from_request

from ..store.backends import postgres_database, postgres_url, store_url  # noqa: F401
from ..support import start_gateway

DOMAIN = "LAB"


def _device_id(req, service):
    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in req.headers}
    return device_from_request(service.name, req.method.decode(), req.target.decode(), headers).device_id


@pytest.fixture
def env(tmp_path, loop_thread, tls_files, upstream, store_url):
    (tmp_path / "data").mkdir()
    (tmp_path / "keys").mkdir(mode=0o700)
    if store_url.startswith("postgresql"):
        from ucgate.store.migrate import upgrade

        upgrade(store_url)  # `ucgate db upgrade`: PostgreSQL does not migrate itself
    ids = open_services(
        store_url=store_url,
        key_file=tmp_path / "keys" / "k",
        audit_file=None,
        lockout=LockoutConfig(user_failures=50, ip_failures=500, window=900),
        two_factor=TwoFactorSettings("otp-appended", (), 24.0),
    )
    auth = PreAuthenticator(
        ids.credentials, PreAuthSettings(netbios_domain=DOMAIN, failure_floor=0.05), device_id_of=_device_id
    )
    gw = start_gateway(loop_thread, *tls_files, upstream.port, authenticator=auth)
    otp = OtpService(ids.components.repo, ids.components.keyring, users=ids.users)
    yield ids, gw, otp
    gw.stop()
    ids.close()


def _fresh_step() -> int:
    """The current time step, waiting first if it is about to end (so a test's steps stay put)."""
    if time.time() % 30 > 20:
        time.sleep(30 - time.time() % 30 + 0.2)
    return int(time.time() // 30)


def enrol(ids, otp, name) -> tuple[str, bytes]:
    ids.users.add(name)
    asp = ids.asps.create(name, "phone")[1]
    e = otp.begin_enrolment(name)
    secret = base64.b32decode(e.secret_b32 + "=" * (-len(e.secret_b32) % 8))
    step = int(time.time() // 30)
    assert otp.confirm_enrolment(name, totp(secret, (step - 1) * 30))  # spends step T-1
    return asp, secret


def code(secret: bytes, step: int) -> str:
    return totp(secret, step * 30)


def basic(gw, user, pw, path="/ucwa/x") -> int:
    c = http.client.HTTPSConnection("localhost", gw.port, context=gw.ssl_context(), timeout=10)
    method = "POST" if path.startswith("/Microsoft-Server-ActiveSync") else "GET"  # EAS: OPTIONS, POST only
    c.request(method, path, headers={"Authorization": "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode()})
    r = c.getresponse()
    r.read()
    c.close()
    return r.status


def reasons(ids, user):
    return [e.reason for e in ids.audit.tail(500) if e.username == user and e.action == "sign-in"]


def test_basic_otp_appended_replay_skew_and_wrong(env):
    ids, gw, otp = env
    t = _fresh_step()
    asp, secret = enrol(ids, otp, "alice")
    assert basic(gw, "alice", asp) == 401  # the ASP alone is not enough
    assert basic(gw, "alice", asp + code(secret, t)) == 200
    assert basic(gw, "alice", asp + code(secret, t)) == 401  # replay on a new connection
    assert basic(gw, "alice", "wrong-wrong-wrong" + code(secret, t + 1)) == 401  # wrong ASP...
    assert basic(gw, "alice", asp + code(secret, t + 1)) == 200  # ...did not spend the step; +1 skew ok
    assert basic(gw, "alice", asp + code(secret, t + 3)) == 401  # outside the window
    window = {code(secret, s) for s in (t - 1, t, t + 1)}
    wrong = next(c for c in ("123456", "654321", "111111") if c not in window)
    assert basic(gw, "alice", asp + wrong) == 401
    got = reasons(ids, "alice")
    for r in ("otp-required", "ok-otp", "otp-replayed", "wrong-password", "otp-wrong"):
        assert r in got, (r, got)


def test_basic_with_curl(env):
    if not shutil.which("curl"):
        pytest.skip("curl not installed")
    ids, gw, otp = env
    t = _fresh_step()
    asp, secret = enrol(ids, otp, "carol")
    out = subprocess.run(
        [
            "curl",
            "-sS",
            "-u",
            f"carol:{asp}{code(secret, t)}",
            "--cacert",
            str(gw.cert),
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            f"https://localhost:{gw.port}/ucwa/x",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.stdout == "200", out.stderr


def test_the_enrolment_code_is_spent(env):
    ids, gw, otp = env
    _fresh_step()
    ids.users.add("dave")
    asp = ids.asps.create("dave", "phone")[1]
    e = otp.begin_enrolment("dave")
    secret = base64.b32decode(e.secret_b32 + "=" * (-len(e.secret_b32) % 8))
    t = int(time.time() // 30)
    assert otp.confirm_enrolment("dave", totp(secret, (t - 1) * 30), now=(t - 1) * 30 + 1)
    assert basic(gw, "dave", asp + code(secret, t - 1)) == 401  # replayed (spent at enrolment)
    assert basic(gw, "dave", asp + code(secret, t)) == 200


def _ntlm(gw, user, pw):
    s = requests.Session()
    s.trust_env = False
    s.verify = str(gw.cert)
    s.auth = HttpNtlmAuth(f"{DOMAIN}\\{user}", pw)
    try:
        return s.get(f"https://localhost:{gw.port}/ucwa/n").status_code
    finally:
        s.close()


def test_ntlm_with_asp_plus_code(env):
    ids, gw, otp = env
    t = _fresh_step()
    asp, secret = enrol(ids, otp, "bob")
    assert _ntlm(gw, "bob", asp) == 401
    assert _ntlm(gw, "bob", asp + code(secret, t)) == 200
    assert _ntlm(gw, "bob", asp + code(secret, t)) == 401  # replay
    assert _ntlm(gw, "bob", asp.replace("-", "").upper() + code(secret, t + 1)) == 200  # other spelling, +1
    got = reasons(ids, "bob")
    assert "ok-otp" in got and "otp-replayed" in got


def test_device_trust_keeps_saved_password_working_on_that_device_only(env):
    ids, gw, otp = env
    t = _fresh_step()
    asp, secret = enrol(ids, otp, "erin")
    saved = asp + code(secret, t)
    eas = "/Microsoft-Server-ActiveSync?Cmd=FolderSync&User=erin&DeviceId={}&DeviceType=iPhone"
    assert basic(gw, "erin", saved, eas.format("PHONE1")) == 200
    # the phone reconnects later with its saved password: trusted for otp_trust_hours
    assert basic(gw, "erin", saved, eas.format("PHONE1")) == 200
    assert basic(gw, "erin", saved, eas.format("PHONE1")) == 200
    # the same saved password from another device id is a replay
    assert basic(gw, "erin", saved, eas.format("STOLEN9")) == 401
    assert "2fa-trusted" in reasons(ids, "erin")


# --- issue 13 -----------------------------------------------------------------------------------


def enrol_with_codes(ids, otp, name) -> tuple[str, bytes, list[str]]:
    ids.users.add(name)
    asp = ids.asps.create(name, "phone")[1]
    e = otp.begin_enrolment(name)
    secret = base64.b32decode(e.secret_b32 + "=" * (-len(e.secret_b32) % 8))
    codes = otp.confirm_enrolment(name, totp(secret, (int(time.time() // 30) - 1) * 30))
    assert codes
    return asp, secret, codes


def test_recovery_code_after_the_asp_works_once_over_basic(env):
    """Issue 13 item 8: ASP + recovery code (with or without its dashes) was refused as
    wrong-password and spent the failure budget; now ok-recovery-code, once per code."""
    ids, gw, otp = env
    _fresh_step()
    asp, _, codes = enrol_with_codes(ids, otp, "rita")
    eas = "/Microsoft-Server-ActiveSync?Cmd=FolderSync&User=rita&DeviceId={}&DeviceType=iPhone"
    assert basic(gw, "rita", asp + codes[0], eas.format("PHONE1")) == 200  # dashed ASP and code
    assert basic(gw, "rita", asp + codes[0], eas.format("PHONE2")) == 401  # spent
    assert basic(gw, "rita", asp.replace("-", "") + codes[1].replace("-", "").upper()) == 200
    assert basic(gw, "rita", asp + codes[1]) == 401  # spent, without a trusted device
    assert basic(gw, "rita", "wrong-wrong-wrong-wron" + codes[2]) == 401  # a wrong ASP...
    assert basic(gw, "rita", asp + codes[2]) == 200  # ...did not spend the code
    # the phone's saved "ASP + code" keeps working from that device (trusted, as after a TOTP code)
    assert basic(gw, "rita", asp + codes[0], eas.format("PHONE1")) == 200
    got = reasons(ids, "rita")
    assert got.count("ok-recovery-code") == 3 and got.count("recovery-code-wrong") == 2
    assert "2fa-trusted" in got and got.count("wrong-password") == 1
    assert otp.status("rita").recovery_codes_left == 7


def test_ntlm_without_the_code_is_otp_required_like_basic(env):
    """Issue 13 item 10: NTLM with the ASP alone was logged wrong-password, Basic otp-required."""
    ids, gw, otp = env
    t = _fresh_step()
    asp, secret = enrol(ids, otp, "nick")
    assert _ntlm(gw, "nick", asp) == 401
    assert _ntlm(gw, "nick", asp.replace("-", "")) == 401
    assert basic(gw, "nick", asp) == 401
    assert reasons(ids, "nick") == ["otp-required"] * 3
    assert _ntlm(gw, "nick", "wrong-wrong-wrong-wron") == 401
    assert reasons(ids, "nick")[-1] == "wrong-password"
    assert _ntlm(gw, "nick", asp + code(secret, t)) == 200  # and ASP + code still signs in


def test_ntlm_cannot_take_a_recovery_code(env):
    """What the README says: a recovery code works with Basic and the OAuth grant, not NTLM
    (only keyed hashes of the codes are stored; NTLM sends a hash of what was typed)."""
    ids, gw, otp = env
    _fresh_step()
    asp, _, codes = enrol_with_codes(ids, otp, "nora")
    assert _ntlm(gw, "nora", asp + codes[0]) == 401
    assert otp.status("nora").recovery_codes_left == 10  # nothing was spent
    assert basic(gw, "nora", asp + codes[0]) == 200
