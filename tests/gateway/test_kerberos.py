"""Kerberos in the Samba AD lab: KCD to a real Kerberos-only front end (Apache httpd +
mod_auth_gssapi), Negotiate from clients (curl --negotiate with a kinit ticket), bad tickets,
KCD failures, and ``ucgate kerberos check`` (passing, then naming each broken piece).

Needs root, the Samba lab and scripts/install-kerberos-lab (installed on demand like the
Samba packages; skipped with the reason otherwise, failed in CI)."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import subprocess
import time

import httpx
import pytest

from ucgate.config import LockoutConfig, from_dict
from ucgate.gateway.connection import Identity
from ucgate.gateway.preauth import PreAuthenticator, PreAuthSettings
from ucgate.gateway.server import Gateway
from ucgate.gateway.tls import make_self_signed
from ucgate.id.directory import Directory
from ucgate.id.factory import open_services
from ucgate.protocols.sfb import Service

from ..lab.fixtures import _unavailable
from ..lab.kerberos import (
    DEAD_REALM,
    FE_ACCOUNT,
    FE_SPN,
    GW_ACCOUNT,
    GW_HOST,
    GW_PASSWORD,
    GW_SPN,
    REALM,
    KerberosLab,
    install_packages,
    kerberos_lab_available,
)
from ..support import gateway_config

pytestmark = pytest.mark.samba
UCWA = Service("ucwa", "/ucwa/")


@pytest.fixture(scope="module")
def klab(samba_lab, tmp_path_factory):
    reason = kerberos_lab_available()
    if reason and not os.environ.get("UCGATE_SAMBA_LAB_NO_INSTALL"):
        try:
            install_packages()
        except (subprocess.CalledProcessError, OSError) as e:
            _unavailable(f"scripts/install-kerberos-lab failed: {e}")
        reason = kerberos_lab_available()
    if reason:
        _unavailable(reason)
    lab = KerberosLab.create(samba_lab, tmp_path_factory.mktemp("krb"))
    yield lab
    lab.close()


@pytest.fixture(scope="module")
def apache(klab):
    with klab.apache() as fe:
        yield fe


@pytest.fixture(scope="module")
def gw_cert(tmp_path_factory):
    d = tmp_path_factory.mktemp("gwtls")
    cert, key = d / "gw.crt", d / "gw.key"
    make_self_signed(cert, key, [GW_HOST, "localhost", "127.0.0.1"])
    return cert, key


def _kcd(klab, **kw):
    from ucgate.gateway.kcd import KcdBackend

    kw.setdefault("timeout", 5.0)
    return KcdBackend(klab.gw_keytab, GW_ACCOUNT, REALM, FE_SPN, krb5_conf=klab.krb5_conf, **kw)


class Env:
    """The gateway (ASPs via Basic/NTLM, Kerberos via Negotiate) with ucwa on kcd -> Apache."""

    def __init__(self, lab, ids, gateway, loop_thread, cert):
        self.lab, self.ids, self.gateway, self.lt, self.cert = lab, ids, gateway, loop_thread, cert
        self.port = gateway.port
        self.url = f"https://{GW_HOST}:{self.port}"

    def user_with_asp(self):
        name = self.lab.new_user(groups=[self.lab.users_group])
        self.ids.users.add(name.lower(), upn=self.lab.upn(name), source="directory")
        return name, self.ids.asps.create(name.lower(), "phone")[1]

    def client(self, **kw):
        # gw.lab.ucgate.test is not in DNS: connect to 127.0.0.1, verify the name in the cert
        transport = httpx.HTTPTransport(verify=str(self.cert))
        return httpx.Client(transport=transport, timeout=20, **kw)

    def get(self, path="/ucwa/x", **kw):
        with httpx.Client(verify=_ctx(self.cert), timeout=20) as c:
            return c.get(f"https://127.0.0.1:{self.port}{path}", **kw)


def _ctx(cert):
    import ssl

    ctx = ssl.create_default_context(cafile=str(cert))
    ctx.check_hostname = False  # the name is checked by curl's tests; here the address is used
    return ctx


def _start(loop_thread, cfg, auth, backends):
    async def go():
        g = Gateway(cfg, auth, backends=backends)
        await g.start()
        return g

    return loop_thread.run(go())


@pytest.fixture(scope="module")
def env(klab, apache, samba_lab, loop_thread, gw_cert, tmp_path_factory):
    from ucgate.gateway.kerberos import KerberosAcceptor

    tmp = tmp_path_factory.mktemp("kenv")
    (tmp / "data").mkdir()
    (tmp / "keys").mkdir(mode=0o700)
    lab = samba_lab
    directory = Directory(
        url=lab.ldaps_url,
        bind_dn=lab.service_dn,
        bind_password=lab.service_password,
        base_dn=lab.base_dn,
        ca_file=str(lab.ca_cert),
        netbios_domain=lab.netbios_domain,
        timeout=2,
        cache_ttl=5,
    )
    ids = open_services(
        store_url=f"sqlite:///{tmp / 'data' / 'ucgate.db'}",
        key_file=tmp / "keys" / "k",
        audit_file=None,
        lockout=LockoutConfig(user_failures=5, ip_failures=100, window=900),
        netbios_domains=(lab.netbios_domain,),
        directory=directory,
        required_group=lab.users_group,
    )
    acceptor = KerberosAcceptor(klab.gw_keytab, GW_SPN, REALM, krb5_conf=klab.krb5_conf)
    auth = PreAuthenticator(
        ids.credentials, PreAuthSettings(netbios_domain=lab.netbios_domain, failure_floor=0.0), kerberos=acceptor
    )
    cfg = from_dict(gateway_config(*gw_cert, apache.port, services={"ucwa": {"backend": "kcd"}}))
    kcd = _kcd(klab)
    gw = _start(loop_thread, cfg, auth, {"kcd": kcd})
    e = Env(lab, ids, gw, loop_thread, gw_cert[0])
    e.kcd, e.acceptor = kcd, acceptor
    yield e
    loop_thread.run(gw.stop())
    kcd.close()
    ids.close()


# --- KCD ----------------------------------------------------------------------------------------


def test_kcd_backend_direct_to_apache(klab, apache):
    """KcdBackend.prepare() alone: Apache (mod_auth_gssapi, Kerberos only) sees the user."""
    kcd = _kcd(klab)
    try:
        t0 = time.monotonic()
        auth = asyncio.run(kcd.prepare(Identity("alice", "basic"), UCWA, None))
        first = time.monotonic() - t0
        ((name, value),) = auth.headers
        assert name == b"Authorization" and value.startswith(b"Negotiate ")
        r = httpx.get(apache.url + "/ucwa/x", headers={"Authorization": value.decode()})
        assert r.status_code == 200, apache.log_tail()
        assert r.headers["x-remote-user"] == f"alice@{REALM}"
        assert "user=alice@LAB.UCGATE.TEST" in r.text
        # without a ticket Apache refuses: it really is Kerberos-only
        assert httpx.get(apache.url + "/ucwa/x").status_code == 401
        # the impersonated credential is cached: the second token costs no KDC round trip
        t0 = time.monotonic()
        auth2 = asyncio.run(kcd.prepare(Identity("alice", "basic"), UCWA, None))
        second = time.monotonic() - t0
        assert auth2.headers[0][1] != value  # a fresh authenticator (Apache's replay cache)
        r = httpx.get(apache.url + "/", headers={"Authorization": auth2.headers[0][1].decode()})
        assert r.headers["x-remote-user"] == f"alice@{REALM}"
        assert first < 5 and second < first
    finally:
        kcd.close()


def test_gateway_kcd_user_with_asp_reaches_apache_as_themself(env):
    """Basic with an ASP to the gateway; the front end gets the user by KCD."""
    name, asp = env.user_with_asp()
    r = env.get(auth=(name, asp))
    assert r.status_code == 200, r.text
    assert f"user={name}@{REALM}" in r.text
    # another user on the same gateway: their own identity, not a cached one
    name2, asp2 = env.user_with_asp()
    r2 = env.get(auth=(name2, asp2))
    assert f"user={name2}@{REALM}" in r2.text


def test_gateway_kcd_user_with_asp_over_ntlm(env):
    import requests
    from requests_ntlm import HttpNtlmAuth

    name, asp = env.user_with_asp()
    r = requests.get(
        f"https://127.0.0.1:{env.port}/ucwa/x", auth=HttpNtlmAuth(f"LAB\\{name}", asp), timeout=20, verify=str(env.cert)
    )
    assert r.status_code == 200, r.text
    assert f"user={name}@{REALM}" in r.text


# --- Negotiate/Kerberos from clients --------------------------------------------------------------


def _curl(klab, env, ccache, path="/ucwa/x"):
    return subprocess.run(
        [
            "curl",
            "-sS",
            "--negotiate",
            "-u",
            ":",
            "--cacert",
            str(env.cert),
            "-D",
            "-",
            "--resolve",
            f"{GW_HOST}:{env.port}:127.0.0.1",
            f"{env.url}{path}",
        ],
        capture_output=True,
        text=True,
        env=klab.env(ccache),
        timeout=30,
    )


def test_curl_negotiate_with_kinit_ticket(env, klab, tmp_path):
    ccache = klab.kinit("alice", env.lab.default_password, tmp_path / "cc")
    t0 = time.monotonic()
    r = _curl(klab, env, ccache)
    took = time.monotonic() - t0
    assert r.returncode == 0, r.stderr
    head, _, body = r.stdout.rpartition("\r\n\r\n")
    assert "HTTP/1.1 200" in r.stdout, r.stdout
    # mutual authentication: the AP-REP came back in the 200
    final = [ln for ln in r.stdout.splitlines() if ln.lower().startswith("www-authenticate: negotiate ")]
    assert final, r.stdout
    # Kerberos in, KCD out: Apache sees alice
    assert f"user=alice@{REALM}" in r.stdout
    assert took < 10
    # klist shows the service ticket for the published name: curl asked for HTTP/gw...
    kl = subprocess.run(["klist"], capture_output=True, text=True, env=klab.env(ccache))
    assert f"HTTP/{GW_HOST}@{REALM}" in kl.stdout


def test_kerberos_ticket_of_a_disabled_account_is_refused(env, klab, tmp_path):
    """A ticket stays valid for hours after AD disables the account; the gateway reads the
    account state at sign-in and refuses it."""
    name = env.lab.new_user(groups=[env.lab.users_group])
    ccache = klab.kinit(name, env.lab.default_password, tmp_path / "cc")
    assert "HTTP/1.1 200" in _curl(klab, env, ccache).stdout
    env.lab.disable(name)
    r = _curl(klab, env, ccache)
    assert "HTTP/1.1 401" in r.stdout and "HTTP/1.1 200" not in r.stdout, r.stdout
    assert "disabled" in [e.reason for e in env.ids.audit.tail(200) if e.username == name.lower()]


def _token(klab, ccache, spn):
    """A Kerberos AP-REQ (SPNEGO-wrapped) for ``spn`` from a user's ccache, made in a child
    process (KRB5CCNAME is per process)."""
    code = (
        "import gssapi,base64,sys\n"
        f"n=gssapi.Name('{spn}@{REALM}', gssapi.NameType.kerberos_principal)\n"
        "c=gssapi.SecurityContext(name=n, usage='initiate', mech=gssapi.OID.from_int_seq('1.3.6.1.5.5.2'))\n"
        "sys.stdout.write(base64.b64encode(c.step()).decode())\n"
    )
    import sys

    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=klab.env(ccache), timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_bad_tickets_get_401_with_reason(env, klab, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="ucgate.gateway.auth")
    ccache = klab.kinit("bob", env.lab.default_password, tmp_path / "cc")
    # a good token once, then the same again: replay
    tok = _token(klab, ccache, GW_SPN)
    assert env.get(headers={"Authorization": f"Negotiate {tok}"}).status_code == 200
    r = env.get(headers={"Authorization": f"Negotiate {tok}"})
    assert r.status_code == 401
    assert "krb-replay" in caplog.text
    # a ticket for another SPN (the front end's): not for us
    wrong = _token(klab, ccache, FE_SPN)
    r = env.get(headers={"Authorization": f"Negotiate {wrong}"})
    assert r.status_code == 401
    assert "krb-wrong-principal" in caplog.text, caplog.text
    # garbage in a Kerberos wrapper
    from ucgate.protocols.spnego import KRB5_OID, encode_neg_token_init

    junk = base64.b64encode(encode_neg_token_init([KRB5_OID], mech_token=b"\x60\x03\x06\x01\x00")).decode()
    assert env.get(headers={"Authorization": f"Negotiate {junk}"}).status_code == 401


# --- KCD failures: 502 with the reason, quickly ----------------------------------------------------


def test_expired_ticket_is_refused_with_reason(env, klab, tmp_path):
    """A ticket past its end time: the acceptor runs with the clock 11 hours ahead (libfaketime;
    the lab's tickets live 10 h), so the ticket the KDC just issued is expired for it."""
    import shutil
    import sys

    if not shutil.which("faketime"):
        pytest.skip("faketime not installed (scripts/install-kerberos-lab installs it)")
    ccache = klab.kinit("bob", env.lab.default_password, tmp_path / "cc")
    tok = _token(klab, ccache, GW_SPN)
    code = (
        "import base64,sys\n"
        "from ucgate.gateway.kerberos import KerberosAcceptor, KerberosError\n"
        f"a=KerberosAcceptor({str(klab.gw_keytab)!r}, {GW_SPN!r}, {REALM!r}, krb5_conf={str(klab.krb5_conf)!r})\n"
        "try:\n"
        f"    a.accept(base64.b64decode({tok!r})); print('accepted')\n"
        "except KerberosError as e:\n"
        "    print(e.reason)\n"
    )
    r = subprocess.run(
        ["faketime", "-f", "+11h", sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env=klab.env(ccache),
    )
    assert r.stdout.strip() == "krb-ticket-expired", (r.stdout, r.stderr[-1000:])


def test_kcd_failures_502_quickly(klab, apache, loop_thread, gw_cert, caplog, tmp_path):
    from ucgate.gateway.backend import BackendError
    from ucgate.gateway.kcd import KcdBackend
    from ucgate.store.keytab import read_keytab, write_keytab

    dead_keytab = tmp_path / "dead.keytab"
    write_keytab(
        dead_keytab,
        [e.renamed(f"{GW_ACCOUNT}@{DEAD_REALM}") for e in read_keytab(klab.gw_keytab) if len(e.components) == 1],
    )

    from ..support import AllowAs

    caplog.set_level(logging.INFO)
    cfg = from_dict(gateway_config(*gw_cert, apache.port, services={"ucwa": {"backend": "kcd"}}))
    cases = [
        # not allowed to delegate to this SPN (the DC's HOST/ SPN is not in msDS-AllowedToDelegateTo)
        (
            KcdBackend(
                klab.gw_keytab, GW_ACCOUNT, REALM, "HOST/dc1.lab.ucgate.test", krb5_conf=klab.krb5_conf, timeout=5
            ),
            "kcd-not-trusted-for-delegation",
            5,
        ),
        # a realm whose KDC accepts connections and never answers
        (
            KcdBackend(
                dead_keytab, f"{GW_ACCOUNT}@{DEAD_REALM}", DEAD_REALM, FE_SPN, krb5_conf=klab.krb5_conf, timeout=3
            ),
            ("kcd-kdc-unreachable", "kcd-timeout"),
            4.5,
        ),
        # an account the keytab has no key for / the KDC does not know
        (
            KcdBackend(klab.gw_keytab, "nosuch-svc", REALM, FE_SPN, krb5_conf=klab.krb5_conf, timeout=5),
            ("kcd-tgt-failed", "kcd-keytab-rejected"),
            5,
        ),
    ]
    for kcd, reasons, limit in cases:
        reasons = (reasons,) if isinstance(reasons, str) else reasons
        with pytest.raises(BackendError) as ei:
            asyncio.run(kcd.prepare(Identity("alice", "basic"), UCWA, None))
        assert ei.value.reason in reasons, ei.value
        gw = _start(loop_thread, cfg, AllowAs("alice"), {"kcd": kcd})
        try:
            caplog.clear()
            t0 = time.monotonic()
            with httpx.Client(verify=_ctx(gw_cert[0]), timeout=30) as c:
                r = c.get(f"https://127.0.0.1:{gw.port}/ucwa/x")
            took = time.monotonic() - t0
            assert r.status_code == 502
            assert any(x in caplog.text for x in reasons), caplog.text
            assert took < limit, (reasons, took)
        finally:
            loop_thread.run(gw.stop())
            kcd.close()


# --- ucgate kerberos check ---------------------------------------------------------------------


def _check(klab, samba_lab, duplicate_on=None, **kw):
    from ucgate.cli.kerberos import kcd_probe
    from ucgate.id.kerberos_check import CheckSettings, ldap3_search, run_checks

    st = CheckSettings(
        realm=REALM,
        keytab=klab.gw_keytab,
        service_principal=GW_SPN,
        account=GW_ACCOUNT,
        front_end_spns=[FE_SPN],
        published_name=GW_HOST,
        krb5_conf=klab.krb5_conf,
        check_user="alice",
        **kw,
    )
    conn = samba_lab.admin_connection()
    real = ldap3_search(conn, samba_lab.base_dn)

    def search(filt, attrs):
        out = real(filt, attrs)
        if duplicate_on and filt == f"(servicePrincipalName={GW_SPN})":
            out += real(f"(sAMAccountName={duplicate_on})", attrs)
        return out

    try:
        return run_checks(
            st, search, s4u_probe=kcd_probe(), resolver=lambda name: ["127.0.0.1"] if name == GW_HOST else []
        )
    finally:
        conn.unbind()


def test_check_report_passes_then_names_each_broken_piece(klab, samba_lab, tmp_path):
    from ucgate.id.kerberos_check import render_html, render_text

    rep = _check(klab, samba_lab)
    assert rep.ok, render_text(rep)
    assert all(r.status == "pass" for r in rep.results), render_text(rep)
    html = render_html(rep)
    assert "All checks passed" in html and 'id="check-s4u"' in html

    # duplicate SPN. Samba 4.17 refuses to create one (samldb: "would cause a conflict", even
    # with the relax control), unlike AD where `Set-ADUser -Add` or an old setspn -A does it;
    # so the directory's answer gets a second holder, the front end's account, added.
    import ldap3

    with pytest.raises(ldap3.core.exceptions.LDAPConstraintViolationResult):
        klab.add_spn(GW_SPN, FE_ACCOUNT)
    rep = _check(klab, samba_lab, duplicate_on=FE_ACCOUNT)
    assert rep.failed == ["spn-unique"], render_text(rep)
    r = rep.result("spn-unique")
    assert "duplicate" in r.summary and FE_ACCOUNT in r.summary and "setspn -D" in r.fix

    # missing delegation
    klab.remove_delegation()
    try:
        rep = _check(klab, samba_lab)
        assert set(rep.failed) == {"delegation", "s4u"}, render_text(rep)
        assert "msDS-AllowedToDelegateTo" in rep.result("delegation").summary
        assert "add-service" in rep.result("delegation").fix
        assert "kcd-not-trusted-for-delegation" in rep.result("s4u").summary
    finally:
        klab.add_delegation()
    klab.protocol_transition(False)
    try:
        rep = _check(klab, samba_lab)
        assert "delegation" in rep.failed and "TRUSTED_TO_AUTH_FOR_DELEGATION" in rep.result("delegation").summary
    finally:
        klab.protocol_transition(True)

    # published name that does not resolve
    from ucgate.id.kerberos_check import CheckSettings  # noqa: F401

    # stale keytab: an admin resets the account's password after the export
    klab.reset_password(GW_ACCOUNT, "Gw-Lab-Pass-2!")
    try:
        rep = _check(klab, samba_lab)
        assert "keytab-kvno" in rep.failed and "s4u" in rep.failed, render_text(rep)
        assert "stale keytab" in rep.result("keytab-kvno").summary
        assert "kcd-keytab-rejected" in rep.result("s4u").summary
        text = render_text(rep)
        assert "FAIL  keytab-kvno" in text and "fix:" in text
    finally:
        klab.reset_password(GW_ACCOUNT, GW_PASSWORD)
        klab.export_keytab(GW_ACCOUNT, GW_SPN, klab.gw_keytab)
    rep = _check(klab, samba_lab)
    assert rep.ok, render_text(rep)


def test_check_cli_writes_html_and_text(klab, samba_lab, tmp_path, gw_cert, capsys):
    from ucgate.cli import main

    cfg = tmp_path / "ucgate.toml"
    cfg.write_text(f"""
[gateway]
listen = "127.0.0.1:0"
tls_cert = "{gw_cert[0]}"
tls_key = "{gw_cert[1]}"
published_name = "{GW_HOST}"
[upstreams.frontend]
url = "http://127.0.0.1:1"
[data]
dir = "{tmp_path}"
[store]
key_file = "{tmp_path / "k"}"
[directory]
url = "{samba_lab.ldaps_url}"
bind_dn = "{samba_lab.service_dn}"
bind_password = "{samba_lab.service_password}"
base_dn = "{samba_lab.base_dn}"
ca_file = "{samba_lab.ca_cert}"
[kerberos]
realm = "{REALM}"
keytab = "{klab.gw_keytab}"
account = "{GW_ACCOUNT}"
krb5_conf = "{klab.krb5_conf}"
front_end_spn = "{FE_SPN}"
check_user = "alice"
""")
    html = tmp_path / "report.html"
    rc = main(["kerberos", "check", "-c", str(cfg), "--html", str(html), "--resolve", f"{GW_HOST}:127.0.0.1"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "result: OK" in out and "PASS  s4u" in out
    assert "All checks passed" in html.read_text()
    # without --resolve the lab's published name does not resolve: named, with a fix
    rc = main(["kerberos", "check", "-c", str(cfg)])
    out = capsys.readouterr().out
    assert rc == 1 and "FAIL  published-name" in out and "DNS" in out
