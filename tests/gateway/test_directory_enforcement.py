"""Users from a real Active Directory (the Samba AD lab), and account-state enforcement:
a user that AD disables or locks is cut off within the re-check interval, on a keep-alive
connection that is already authenticated; a directory outage fails new sign-ins closed."""

from __future__ import annotations

import http.client
import statistics
import time

import httpx
import pytest
import requests
from requests_ntlm import HttpNtlmAuth

from ucgate.config import LockoutConfig
from ucgate.gateway.preauth import PreAuthenticator, PreAuthSettings
from ucgate.id.directory import Directory
from ucgate.id.factory import open_services
from ucgate.id.monitor import AccountMonitor

from ..support import start_gateway

pytestmark = pytest.mark.samba
RECHECK = 0.5


class Env:
    def __init__(self, lab, ids, gw, monitor, loop_thread):
        self.lab, self.ids, self.gw, self.monitor, self.lt = lab, ids, gw, monitor, loop_thread

    def new_user_with_asp(self, **kw):
        name = self.lab.new_user(groups=[self.lab.users_group], **kw)
        self.ids.users.add(name.lower(), upn=self.lab.upn(name), source="directory")
        return name, self.ids.asps.create(name.lower(), "phone")[1]

    def conn(self):
        return http.client.HTTPSConnection("localhost", self.gw.port, context=self.gw.ssl_context(), timeout=10)

    def basic_get(self, conn, user, pw, path="/ucwa/x"):
        import base64

        conn.request(
            "GET", path, headers={"Authorization": "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode()}
        )
        r = conn.getresponse()
        r.read()
        return r.status

    def reasons(self, user):
        return [e.reason for e in self.ids.audit.tail(2000) if e.username == user.lower()]


def _make_env(
    tmp_path,
    lab,
    loop_thread,
    upstream,
    tls_files,
    *,
    allow_domain_passwords=False,
    outage_grace=300.0,
    user_failures=3,
):
    (tmp_path / "data").mkdir()
    (tmp_path / "keys").mkdir(mode=0o700)
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
        store_url=f"sqlite:///{tmp_path / 'data' / 'ucgate.db'}",
        key_file=tmp_path / "keys" / "k",
        audit_file=None,
        lockout=LockoutConfig(user_failures=user_failures, ip_failures=100, window=900),
        netbios_domains=(lab.netbios_domain,),
        directory=directory,
        required_group=lab.users_group,
        allow_domain_passwords=allow_domain_passwords,
    )
    auth = PreAuthenticator(ids.credentials, PreAuthSettings(netbios_domain=lab.netbios_domain))
    gw = start_gateway(loop_thread, *tls_files, upstream.port, authenticator=auth)
    ids.bus.subscribe(gw.gateway.on_event)

    async def start_monitor():
        m = AccountMonitor(
            directory, gw.gateway.live_users, ids.bus, ids.audit, interval=RECHECK, outage_grace=outage_grace
        )
        m.start()
        return m

    monitor = loop_thread.run(start_monitor())
    return Env(lab, ids, gw, monitor, loop_thread)


@pytest.fixture
def env(tmp_path, samba_lab, loop_thread, upstream, tls_files):
    e = _make_env(tmp_path, samba_lab, loop_thread, upstream, tls_files)
    yield e
    loop_thread.run(e.monitor.stop())
    e.gw.stop()
    e.ids.close()


def _closed(conn, env, user, pw) -> bool:
    try:
        env.basic_get(conn, user, pw)
    except (http.client.RemoteDisconnected, ConnectionError, OSError, http.client.BadStatusLine):
        return True
    return False


def _wait_cut(conn, env, user, pw, limit):
    """Probe the live connection; returns seconds until the gateway closed it."""
    t0 = time.monotonic()
    deadline = t0 + limit
    while time.monotonic() < deadline:
        if conn.sock is None:
            return time.monotonic() - t0
        # a closed keep-alive connection shows as EOF on the next request
        time.sleep(0.05)
        if env.gw.gateway.live_users().get(user.lower()) is None:
            return time.monotonic() - t0
    return None


@pytest.mark.parametrize("name_form", ["sam", "domain", "upn"])
def test_sign_in_by_each_name_form(env, name_form):
    name, asp = env.new_user_with_asp()
    typed = {"sam": name, "domain": f"{env.lab.netbios_domain}\\{name}", "upn": env.lab.upn(name)}[name_form]
    c = env.conn()
    assert env.basic_get(c, typed, asp) == 200


def test_group_gate_and_nested_groups(env):
    lab = env.lab
    outsider = lab.new_user()  # not in ucgate-users
    env.ids.users.add(outsider.lower(), source="directory")
    asp = env.ids.asps.create(outsider.lower(), "x")[1]
    assert env.basic_get(env.conn(), outsider, asp) == 401
    assert "not-in-group" in env.reasons(outsider)
    nested = lab.new_user(groups=[lab.nested_group])  # member through the nested group only
    env.ids.users.add(nested.lower(), source="directory")
    asp2 = env.ids.asps.create(nested.lower(), "x")[1]
    assert env.basic_get(env.conn(), nested, asp2) == 200


def test_disable_in_ad_cuts_live_keepalive_connection(env):
    name, asp = env.new_user_with_asp()
    c = env.conn()
    assert env.basic_get(c, name, asp) == 200
    assert env.basic_get(c, name, asp) == 200  # same connection
    env.lab.disable(name)
    t0 = time.monotonic()
    waited = _wait_cut(c, env, name, asp, limit=RECHECK * 6)
    assert waited is not None, "live connection not cut"
    assert time.monotonic() - t0 <= RECHECK * 2 + 1.5
    assert _closed(c, env, name, asp), "the authenticated keep-alive connection still answers"
    assert env.basic_get(env.conn(), name, asp) == 401  # a new sign-in is refused too
    assert "disabled" in env.reasons(name)
    env.lab.enable(name)
    assert env.basic_get(env.conn(), name, asp) == 200  # re-enabled: works again


def test_lock_by_bad_binds_cuts_ntlm_connection(env):
    name, asp = env.new_user_with_asp()
    s = requests.Session()
    s.trust_env = False
    s.verify = str(env.gw.cert)
    s.auth = HttpNtlmAuth(f"{env.lab.netbios_domain}\\{name}", asp)
    assert s.get(f"https://localhost:{env.gw.port}/ucwa/a").status_code == 200
    assert name.lower() in env.gw.gateway.live_users()
    env.lab.lock_by_bad_binds(name)
    deadline = time.monotonic() + RECHECK * 6
    while name.lower() in env.gw.gateway.live_users() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert name.lower() not in env.gw.gateway.live_users(), "NTLM session survived the AD lockout"
    assert "locked" in env.reasons(name)
    # a new NTLM handshake is refused while AD says locked
    assert s.get(f"https://localhost:{env.gw.port}/ucwa/b").status_code == 401
    env.lab.unlock(name)
    assert s.get(f"https://localhost:{env.gw.port}/ucwa/c").status_code == 200
    s.close()


def test_password_change_after_sign_in_cuts_session(env):
    name, asp = env.new_user_with_asp()
    c = env.conn()
    assert env.basic_get(c, name, asp) == 200
    time.sleep(1.1)  # pwdLastSet has second resolution
    env.lab.set_password(name, "An0ther-Lab-Pass!")
    assert _wait_cut(c, env, name, asp, limit=RECHECK * 6) is not None
    assert "password-changed" in [e.reason for e in env.ids.audit.tail(200) if e.action == "session-cut"]


def test_unknown_user_and_wrong_password_take_the_same_time(env):
    name, asp = env.new_user_with_asp()

    def timed(user, pw):
        c = env.conn()
        c.connect()
        t = time.monotonic()
        assert env.basic_get(c, user, pw) == 401
        return time.monotonic() - t

    # fresh budget keys each time: vary the IP-independent user part only for the unknown ones
    wrong = [timed(name, f"wrong-{i}") for i in range(2)]
    unknown = [timed(f"nosuch{i}x", "whatever") for i in range(4)]
    assert abs(statistics.median(wrong) - statistics.median(unknown)) < 0.06, (wrong, unknown)


@pytest.mark.parametrize("bad", ["*", "ali*", "a)(objectClass=*", "x\x00y", "a" * 300, "(|(cn=*))"])
def test_ldap_injection_in_user_names(env, bad):
    c = env.conn()
    status = env.basic_get(c, bad.replace("\x00", "\\0") if "\x00" in bad else bad, "irrelevant-pw")
    assert status in (400, 401)


def test_directory_down_fails_closed_then_recovers(tmp_path, samba_lab, loop_thread, upstream, tls_files):
    e = _make_env(tmp_path, samba_lab, loop_thread, upstream, tls_files, outage_grace=1.5)
    try:
        name, asp = e.new_user_with_asp()
        live = e.conn()
        assert e.basic_get(live, name, asp) == 200
        samba_lab.stop()
        try:
            t = time.monotonic()
            r = httpx.get(f"{e.gw.url}/ucwa/x", auth=(f"other-{name}", "pw"), verify=e.gw.ssl_context(), timeout=30)
            assert r.status_code == 503 and "Retry-After" in r.headers
            assert time.monotonic() - t < 8
            # the live session survives the grace period, then is cut
            deadline = time.monotonic() + 10
            while name.lower() in e.gw.gateway.live_users() and time.monotonic() < deadline:
                time.sleep(0.1)
            assert name.lower() not in e.gw.gateway.live_users()
            assert "directory-unavailable" in [x.reason for x in e.ids.audit.tail(200) if x.action == "session-cut"]
        finally:
            samba_lab.start()
        # recovery is automatic
        deadline = time.monotonic() + 20
        status = None
        while time.monotonic() < deadline:
            status = e.basic_get(e.conn(), name, asp)
            if status == 200:
                break
            time.sleep(0.5)
        assert status == 200
    finally:
        _close(e, loop_thread)


def test_domain_password_allowed_without_locking_ad(tmp_path, samba_lab, loop_thread, upstream, tls_files):
    e = _make_env(tmp_path, samba_lab, loop_thread, upstream, tls_files, allow_domain_passwords=True, user_failures=3)
    try:
        name = samba_lab.new_user(groups=[samba_lab.users_group])
        with httpx.Client(verify=e.gw.ssl_context(), timeout=30) as c:
            assert c.get(f"{e.gw.url}/ucwa/x", auth=(name, samba_lab.default_password)).status_code == 200
            codes = [c.get(f"{e.gw.url}/ucwa/x", auth=(name, f"bad-{i}")).status_code for i in range(10)]
        assert codes.count(401) == 3 and codes.count(429) == 7
        # the gateway's budget (3) stopped the spray before AD's lockout threshold (5)
        assert not samba_lab.is_locked(name)
    finally:
        _close(e, loop_thread)


def _close(e: Env, loop_thread) -> None:
    loop_thread.run(e.monitor.stop())
    e.gw.stop()
    e.ids.close()


def _bad_pwd_count(lab, name: str) -> int:
    raw = lab.read(name, ["badPwdCount"]).get("badPwdCount") or [b"0"]
    return int(raw[0])


def _spray(url: str, ctx, names: list[str], rounds: int, workers: int = 30) -> list[int]:
    """Wrong Basic passwords, ``workers`` at a time, one fresh connection each."""
    from concurrent.futures import ThreadPoolExecutor

    jobs = [(n, f"bad-{i}-{k}") for i in range(rounds) for k, n in enumerate(names)]

    def one(job):
        with httpx.Client(verify=ctx, timeout=30) as c:
            return c.get(f"{url}/ucwa/x", auth=job).status_code

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, jobs))


def test_concurrent_wrong_passwords_never_pass_the_budget(tmp_path, samba_lab, loop_thread, upstream, tls_files):
    """(a) 30 concurrent wrong domain passwords for one fresh AD user: at most user_failures
    binds reach AD (the budget is reserved before the bind), the account is not locked."""
    e = _make_env(tmp_path, samba_lab, loop_thread, upstream, tls_files, allow_domain_passwords=True, user_failures=3)
    try:
        name = samba_lab.new_user(groups=[samba_lab.users_group])
        codes = _spray(e.gw.url, e.gw.ssl_context(), [name], 30)
        bad = _bad_pwd_count(samba_lab, name)
        print(
            f"\n30 concurrent wrong passwords: {codes.count(401)} x 401, {codes.count(429)} x 429, AD badPwdCount {bad}"
        )
        assert codes.count(401) == 3 and codes.count(429) == 27, codes
        assert bad <= 3 and not samba_lab.is_locked(name)
    finally:
        _close(e, loop_thread)


def test_every_name_form_shares_one_budget(tmp_path, samba_lab, loop_thread, upstream, tls_files):
    """(c) 6 wrong passwords in each of sAMAccountName, sip: URI, UPN and DOMAIN\\name: one
    budget for the account (keyed by its objectGUID), not four."""
    e = _make_env(tmp_path, samba_lab, loop_thread, upstream, tls_files, allow_domain_passwords=True, user_failures=3)
    try:
        name = samba_lab.new_user(groups=[samba_lab.users_group])
        samba_lab._modify(
            samba_lab.user_dn(name),
            {"msRTCSIP-PrimaryUserAddress": f"sip:{name}@{samba_lab.dns_domain}", "msRTCSIP-UserEnabled": "TRUE"},
        )
        forms = [name, f"sip:{name}@{samba_lab.dns_domain}", samba_lab.upn(name), f"{samba_lab.netbios_domain}\\{name}"]
        codes: list[int] = []
        with httpx.Client(verify=e.gw.ssl_context(), timeout=30) as c:
            for form in forms:
                if form.startswith("sip:"):
                    # Basic cannot carry a "sip:" name (its colon ends the user part); the OAuth
                    # password grant can, and makes exactly this call with the name as typed
                    from ucgate.id.api import AttemptContext

                    ctx = AttemptContext(client_ip="127.0.0.1", method="oauth-password", service="oauth")
                    verdicts = [e.ids.credentials.verify_password_sync(form, f"bad-{i}", ctx) for i in range(6)]
                    codes += [429 if v.reason == "throttled" else 401 for v in verdicts]
                    continue
                codes += [c.get(f"{e.gw.url}/ucwa/x", auth=(form, f"bad-{i}")).status_code for i in range(6)]
        bad = _bad_pwd_count(samba_lab, name)
        print(f"\n4 name forms x 6 wrong passwords: {codes.count(401)} x 401, AD badPwdCount {bad}")
        assert codes.count(401) == 3 and codes.count(429) == 21, codes
        assert bad <= 3 and not samba_lab.is_locked(name)
    finally:
        _close(e, loop_thread)


def test_two_gateways_on_one_store_share_the_budget(tmp_path, samba_lab, loop_thread, upstream, tls_files):
    """(b) the same 30 concurrent attempts split over two gateways, each with its own id service
    (its own engine and budget object) on one store: still one budget."""
    (tmp_path / "a").mkdir()
    a = _make_env(
        tmp_path / "a", samba_lab, loop_thread, upstream, tls_files, allow_domain_passwords=True, user_failures=3
    )
    (tmp_path / "b").mkdir()
    # the second node: its own services over the first one's database file
    directory = Directory(
        url=samba_lab.ldaps_url,
        bind_dn=samba_lab.service_dn,
        bind_password=samba_lab.service_password,
        base_dn=samba_lab.base_dn,
        ca_file=str(samba_lab.ca_cert),
        netbios_domain=samba_lab.netbios_domain,
        timeout=2,
    )
    ids_b = open_services(
        store_url=f"sqlite:///{tmp_path / 'a' / 'data' / 'ucgate.db'}",
        key_file=tmp_path / "a" / "keys" / "k",
        audit_file=None,
        lockout=LockoutConfig(user_failures=3, ip_failures=100, window=900),
        netbios_domains=(samba_lab.netbios_domain,),
        directory=directory,
        required_group=samba_lab.users_group,
        allow_domain_passwords=True,
    )
    gw_b = start_gateway(
        loop_thread,
        *tls_files,
        upstream.port,
        authenticator=PreAuthenticator(ids_b.credentials, PreAuthSettings(netbios_domain=samba_lab.netbios_domain)),
    )
    try:
        name = samba_lab.new_user(groups=[samba_lab.users_group])
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(2) as pool:
            halves = list(pool.map(lambda g: _spray(g.url, g.ssl_context(), [name], 15, 15), [a.gw, gw_b]))
        codes = halves[0] + halves[1]
        bad = _bad_pwd_count(samba_lab, name)
        print(f"\n2 gateways x 15 concurrent: {codes.count(401)} x 401, AD badPwdCount {bad}")
        assert codes.count(401) == 3, codes
        assert bad <= 3 and not samba_lab.is_locked(name)
    finally:
        gw_b.stop()
        ids_b.close()
        loop_thread.run(a.monitor.stop())
        a.gw.stop()
        a.ids.close()


def test_concurrent_first_sign_ins_make_one_row_and_both_are_answered(
    tmp_path, samba_lab, loop_thread, upstream, tls_files
):
    """Two first sign-ins of a new AD user at the same moment: one users row, both 200 (the
    second insert's DuplicateError is the first one's row, not an unanswered connection)."""
    e = _make_env(tmp_path, samba_lab, loop_thread, upstream, tls_files, allow_domain_passwords=True)
    try:
        from concurrent.futures import ThreadPoolExecutor

        for _ in range(3):
            name = samba_lab.new_user(groups=[samba_lab.users_group])

            def one(_, name=name):
                with httpx.Client(verify=e.gw.ssl_context(), timeout=30) as c:
                    return c.get(f"{e.gw.url}/ucwa/x", auth=(name, samba_lab.default_password)).status_code

            with ThreadPoolExecutor(8) as pool:
                codes = list(pool.map(one, range(8)))
            assert codes == [200] * 8, codes
            assert [u.username for u in e.ids.users.list()].count(name.lower()) == 1
    finally:
        _close(e, loop_thread)
