"""The SIP relay against the Samba AD lab (issue 18): a password spray over SIP locks no AD
account while the real user keeps signing in, and AD's account state — disabled, locked,
expired, password changed — closes live SIP registrations and refuses new ones.

The lab registrar checks NTLM itself (it knows the lab's passwords) and reports every check to
AD as the Edge's pass-through to a DC would: a failed check is a failed bind as that user
(``badPwdCount`` + 1), a good one a successful bind (which resets it). So AD sees exactly the
guesses the relay let through to the Edge."""

from __future__ import annotations

import threading
import time
from collections import Counter

import ldap3
import pytest

from ucgate.config import LockoutConfig
from ucgate.gateway.sip import SipRelay
from ucgate.gateway.sipconfig import SipConfig
from ucgate.id.directory import Directory
from ucgate.id.factory import open_services
from ucgate.id.monitor import AccountMonitor
from ucgate.lab.registrar import Account, LabRegistrar
from ucgate.lab.sipclient import SipClient

pytestmark = [pytest.mark.samba, pytest.mark.slow]
SPRAYERS = [f"127.0.2.{i}" for i in range(1, 6)]
REAL = "127.0.2.99"
USER_FAILURES = 3  # below the lab's AD lockout threshold (5)
ATTEMPTS = 200


class Env:
    def __init__(
        self, tmp_path, lab, loop_thread, tls_files, users: list[str], *, allow_domain_passwords: bool = False
    ) -> None:
        self.lab, self.lt = lab, loop_thread
        self.cert, key = tls_files
        (tmp_path / "data").mkdir()
        (tmp_path / "keys").mkdir(mode=0o700)
        self.directory = Directory(
            url=lab.ldaps_url,
            bind_dn=lab.service_dn,
            bind_password=lab.service_password,
            base_dn=lab.base_dn,
            ca_file=str(lab.ca_cert),
            netbios_domain=lab.netbios_domain,
            timeout=5,
            cache_ttl=30,
        )
        self.ids = open_services(
            store_url=f"sqlite:///{tmp_path / 'data' / 'ucgate.db'}",
            key_file=tmp_path / "keys" / "k",
            audit_file=None,
            lockout=LockoutConfig(user_failures=USER_FAILURES, ip_failures=20, window=900),
            netbios_domains=(lab.netbios_domain,),
            directory=self.directory,
            required_group=lab.users_group,
            allow_domain_passwords=allow_domain_passwords,
        )
        self.ad_binds = Counter()
        self.registrar = LabRegistrar(
            self.cert,
            key,
            [Account(u, lab.default_password, self.aor(u)) for u in users],
            targetname="edge.lab.ucgate.test",
            netbios_domain=lab.netbios_domain,
            dns_domain=lab.dns_domain,
            on_ntlm=self._to_ad,
        )
        loop_thread.run(self.registrar.start())
        s = SipConfig(
            enabled=True,
            listen_host="127.0.0.1",
            listen_port=0,
            tls_cert=self.cert,
            tls_key=key,
            edge_host="127.0.0.1",
            edge_port=self.registrar.port,
            server_name="localhost",
            ca_bundle=self.cert,
        )
        self.relay = SipRelay(s, self.ids.credentials, self.ids.audit, failure_floor=0.0)
        self.ids.bus.subscribe(self.relay.post_event)
        loop_thread.run(self.relay.start())

    def aor(self, user: str) -> str:
        return f"{user}@{self.lab.dns_domain}"

    def _to_ad(self, user: str, ok: bool) -> None:
        """The Edge's pass-through: AD sees the check (runs on the registrar's loop; short)."""
        self.ad_binds[(user, ok)] += 1
        password = self.lab.default_password if ok else f"wrong-{time.monotonic_ns()}"
        try:
            self.lab.connection(self.lab.user_dn(user), password).unbind()
        except (ldap3.core.exceptions.LDAPBindError, ldap3.core.exceptions.LDAPInvalidCredentialsResult):
            pass

    def client(self, user: str, password: str | None = None, source: str | None = None, **kw) -> SipClient:
        return SipClient(
            "127.0.0.1",
            self.relay.port,
            aor=self.aor(user),
            ca_file=str(self.cert),
            login=f"{self.lab.netbios_domain}\\{user}",
            password=password or self.lab.default_password,
            source=source,
            **kw,
        ).connect()

    def close(self) -> None:
        self.lt.run(self.relay.stop())
        self.lt.run(self.registrar.stop())
        self.ids.close()


def _users(lab, n: int) -> list[str]:
    import secrets

    out = []
    for _ in range(n):
        name = f"s{secrets.token_hex(4)}"
        lab.add_user(name, groups=[lab.users_group], sip=f"sip:{name}@{lab.dns_domain}")
        out.append(name)
    return out


def test_a_sip_spray_locks_no_ad_account_while_the_real_user_signs_in(tmp_path, samba_lab, loop_thread, tls_files):
    users = _users(samba_lab, 5)
    env = Env(tmp_path, samba_lab, loop_thread, tls_files, users)
    real = users[0]
    try:
        # the real user's PC signs in from its usual address first (a familiar address from then on)
        with env.client(real, source=REAL) as c:
            assert c.register().status == 200
        results: Counter = Counter()
        real_results: list[int] = []
        stop = threading.Event()

        def real_user() -> None:
            while not stop.is_set():
                with env.client(real, source=REAL) as c:
                    answer = c.register()
                    real_results.append(answer.status if answer else 0)
                time.sleep(0.2)

        def sprayer(ip: str, n: int) -> None:
            for i in range(n):
                target = users[i % len(users)]
                with env.client(target, password=f"Spring2025-{i}!", source=ip) as c:
                    answer = c.register()
                    results[answer.status if answer else 0] += 1

        started = time.monotonic()
        t_real = threading.Thread(target=real_user)
        t_real.start()
        threads = [threading.Thread(target=sprayer, args=(ip, ATTEMPTS // len(SPRAYERS))) for ip in SPRAYERS]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        stop.set()
        t_real.join(30)
        elapsed = time.monotonic() - started
        assert sum(results.values()) == ATTEMPTS
        locked = [u for u in users if samba_lab.is_locked(u)]
        guesses = Counter(u for (u, ok), n in env.ad_binds.items() if not ok for _ in range(n))
        print(
            f"\nSIP spray: {ATTEMPTS} attempts over {len(users)} users from {len(SPRAYERS)} addresses in "
            f"{elapsed:.1f}s; answers {dict(results)}; wrong passwords that reached AD per user "
            f"{dict(guesses)}; real user {Counter(real_results)}; locked: {locked}"
        )
        assert locked == []
        assert real_results and all(s == 200 for s in real_results)
        assert max(guesses.values()) <= USER_FAILURES
        assert results[503] >= ATTEMPTS - len(users) * USER_FAILURES  # the rest never left the relay
        throttled = [e for e in env.ids.audit.tail(1000) if e.action == "sign-in" and e.reason == "throttled"]
        assert {e.client_address for e in throttled} <= set(SPRAYERS) and throttled
    finally:
        env.close()


@pytest.mark.parametrize("change", ["disable", "lock", "expire", "password"])
def test_ad_account_state_closes_sip_and_refuses_new_registrations(tmp_path, samba_lab, loop_thread, tls_files, change):
    [user] = _users(samba_lab, 1)
    env = Env(tmp_path, samba_lab, loop_thread, tls_files, [user])
    try:
        c = env.client(user)
        assert c.register().status == 200
        monitor = AccountMonitor(env.directory, env.relay.live_users, env.ids.bus, env.ids.audit, interval=3600)
        assert loop_thread.run(monitor.check_once()) == 0
        time.sleep(1.1)  # pwdLastSet has a resolution of its own: after the sign-in
        if change == "disable":
            samba_lab.disable(user)
        elif change == "lock":
            samba_lab.lock_by_bad_binds(user)
        elif change == "expire":
            samba_lab.expire(user)
        else:
            samba_lab.set_password(user, "N3w-Passw0rd-Lab!")
        assert loop_thread.run(monitor.check_once()) == 1
        assert c.is_closed_by_server(1.5)
        c.close()
        if change == "password":
            return  # a new sign-in with the new password is the Edge's business
        checks = len(env.registrar.ntlm_checks)
        with env.client(user) as again:
            answer = again.register()
            assert answer.status == 403 and "sign-in refused" in answer.get("ms-diagnostics")
        assert len(env.registrar.ntlm_checks) == checks  # refused before the Edge
    finally:
        env.close()


def test_without_the_relay_the_same_guesses_lock_the_account(tmp_path, samba_lab, loop_thread, tls_files):
    """The control: straight to the lab Edge, AD's threshold of wrong passwords locks the account,
    so the spray above is a real one."""
    [user] = _users(samba_lab, 1)
    env = Env(tmp_path, samba_lab, loop_thread, tls_files, [user])
    try:
        for i in range(samba_lab.lockout_threshold):
            with SipClient(
                "127.0.0.1",
                env.registrar.port,
                aor=env.aor(user),
                ca_file=str(env.cert),
                login=f"{samba_lab.netbios_domain}\\{user}",
                password=f"guess-{i}",
            ) as c:
                assert c.register().status == 401
        assert samba_lab.is_locked(user)
    finally:
        samba_lab.unlock(user)
        env.close()


def test_a_spray_over_sip_and_the_web_at_once_locks_no_account(tmp_path, samba_lab, loop_thread, tls_files, upstream):
    """One failure budget for every channel: wrong domain passwords over SIP REGISTER and over
    Basic on the web side, at the same time, for the same accounts: together they reach AD at
    most user_failures times per account; the real user signs in on both channels throughout."""
    import httpx

    from ucgate.gateway.preauth import PreAuthenticator, PreAuthSettings

    from ..support import start_gateway

    users = _users(samba_lab, 5)
    env = Env(tmp_path, samba_lab, loop_thread, tls_files, users, allow_domain_passwords=True)
    gw = start_gateway(
        loop_thread,
        *tls_files,
        upstream.port,
        authenticator=PreAuthenticator(env.ids.credentials, PreAuthSettings(netbios_domain=samba_lab.netbios_domain)),
    )
    real = users[0]
    verify = gw.ssl_context()
    try:
        with env.client(real, source=REAL) as c:  # both channels' familiar address
            assert c.register().status == 200
        with httpx.Client(transport=httpx.HTTPTransport(local_address=REAL, verify=verify), timeout=30) as w:
            assert w.get(f"{gw.url}/ucwa/x", auth=(real, samba_lab.default_password)).status_code == 200
        results: Counter = Counter()
        real_results: list[int] = []
        stop = threading.Event()

        def real_user() -> None:
            with httpx.Client(
                transport=httpx.HTTPTransport(local_address=REAL, verify=verify),
                timeout=30,
                headers={"Connection": "close"},
            ) as w:
                while not stop.is_set():
                    with env.client(real, source=REAL) as c:
                        answer = c.register()
                        real_results.append(answer.status if answer else 0)
                    real_results.append(w.get(f"{gw.url}/ucwa/x", auth=(real, samba_lab.default_password)).status_code)
                    time.sleep(0.2)

        def sip_sprayer(ip: str, n: int) -> None:
            for i in range(n):
                with env.client(users[i % len(users)], password=f"Spring2025-{i}!", source=ip) as c:
                    answer = c.register()
                    results["sip", answer.status if answer else 0] += 1

        def web_sprayer(ip: str, n: int) -> None:
            with httpx.Client(transport=httpx.HTTPTransport(local_address=ip, verify=verify), timeout=30) as w:
                for i in range(n):
                    code = w.get(f"{gw.url}/ucwa/x", auth=(users[(i + 2) % len(users)], f"Summer2025-{i}!")).status_code
                    results["web", code] += 1

        t_real = threading.Thread(target=real_user)
        t_real.start()
        per = ATTEMPTS // (2 * len(SPRAYERS))
        threads = [threading.Thread(target=sip_sprayer, args=(ip, per)) for ip in SPRAYERS] + [
            threading.Thread(target=web_sprayer, args=(ip, per)) for ip in SPRAYERS
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        stop.set()
        t_real.join(30)
        locked = [u for u in users if samba_lab.is_locked(u)]
        bad = {u: int((samba_lab.read(u, ["badPwdCount"]).get("badPwdCount") or [b"0"])[0]) for u in users}
        print(
            f"\nSIP + web spray: {dict(results)}; AD badPwdCount {bad}; real user {Counter(real_results)}; "
            f"locked: {locked}"
        )
        assert sum(results.values()) == 2 * per * len(SPRAYERS)
        assert locked == [] and max(bad.values()) <= USER_FAILURES
        assert real_results and all(s == 200 for s in real_results), real_results
    finally:
        gw.stop()
        env.close()
