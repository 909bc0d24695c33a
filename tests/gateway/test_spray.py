"""A password spray against the Samba AD lab through HAProxy in front of two gateways (each with
its own id service, sharing one store): Basic, NTLM and the OAuth password grant mixed, from 20
loopback addresses, over 50 AD users — while the real user signs in every 2 s from its familiar
address. No AD account may be locked; the real user must never fail; the audit must show the
sprayers' own addresses (PROXY protocol), not HAProxy's. Prints the figures."""

from __future__ import annotations

import ssl
import threading
import time
from collections import Counter
from urllib.parse import urlencode

import httpx
import pytest
import requests
from requests.adapters import HTTPAdapter
from requests_ntlm import HttpNtlmAuth

from ucgate.app import oauth_grants
from ucgate.config import LockoutConfig, from_dict
from ucgate.gateway.preauth import PreAuthenticator, PreAuthSettings
from ucgate.gateway.server import Gateway
from ucgate.id.directory import Directory
from ucgate.id.factory import open_services

from ..lab.haproxy import Backend, haproxy_lab  # noqa: F401
from ..support import gateway_config

pytestmark = [pytest.mark.samba, pytest.mark.slow]
SPRAYERS = [f"127.0.1.{i}" for i in range(1, 21)]
REAL = "127.0.0.99"
USER_FAILURES = 3  # below the lab's AD lockout threshold (5)
ATTEMPTS = 5000


class _SourceAdapter(HTTPAdapter):
    """requests from a given source address, verifying with the test CA's context."""

    def __init__(self, source: str, context: ssl.SSLContext, **kw) -> None:
        self.source, self.context = source, context
        super().__init__(**kw)

    def init_poolmanager(self, *a, **kw):
        kw["source_address"] = (self.source, 0)
        kw["ssl_context"] = self.context
        return super().init_poolmanager(*a, **kw)


def _node(tmp_path, lab, loop_thread, upstream, tls_files, store: str):
    directory = Directory(
        url=lab.ldaps_url,
        bind_dn=lab.service_dn,
        bind_password=lab.service_password,
        base_dn=lab.base_dn,
        ca_file=str(lab.ca_cert),
        netbios_domain=lab.netbios_domain,
        timeout=5,
        cache_ttl=30,
    )
    ids = open_services(
        store_url=store,
        key_file=tmp_path / "keys" / "k",
        audit_file=None,
        lockout=LockoutConfig(user_failures=USER_FAILURES, ip_failures=20, window=900),
        netbios_domains=(lab.netbios_domain,),
        directory=directory,
        required_group=lab.users_group,
        allow_domain_passwords=True,
    )
    cfg = from_dict(
        gateway_config(
            *tls_files,
            upstream.port,
            proxy_protocol=True,
            trusted_proxies=["127.0.0.1/32"],
            health_listen="127.0.0.1:0",
            published_name="localhost",
        )
    )
    auth = PreAuthenticator(
        ids.credentials, PreAuthSettings(netbios_domain=lab.netbios_domain, extended_protection="allow")
    )

    async def start():
        g = Gateway(cfg, auth, oauth=oauth_grants(cfg, ids.credentials, ids))
        await g.start()
        return g

    return ids, loop_thread.run(start())


def test_spray_through_haproxy_locks_no_account(tmp_path, samba_lab, loop_thread, upstream, tls_files, haproxy_lab):
    (tmp_path / "data").mkdir()
    (tmp_path / "keys").mkdir(mode=0o700)
    store = f"sqlite:///{tmp_path / 'data' / 'ucgate.db'}"
    nodes = [_node(tmp_path, samba_lab, loop_thread, upstream, tls_files, store) for _ in range(2)]
    lb = haproxy_lab([Backend(f"gw{i + 1}", g.port, g.health.port) for i, (_, g) in enumerate(nodes)])
    lb.wait_status({"gw1": "UP", "gw2": "UP"})
    users = [samba_lab.new_user("sp", groups=[samba_lab.users_group]) for _ in range(50)]
    real = users[0]
    base = f"https://localhost:{lb.port}"
    verify = ssl.create_default_context(cafile=str(tls_files[0]))
    stop = threading.Event()
    real_codes: list[int] = []

    def real_user() -> None:
        with httpx.Client(
            transport=httpx.HTTPTransport(local_address=REAL, verify=verify),
            timeout=30,
            headers={"Connection": "close"},
        ) as c:
            while not stop.is_set():
                real_codes.append(c.get(f"{base}/ucwa/x", auth=(real, samba_lab.default_password)).status_code)
                stop.wait(2.0)

    codes: Counter[tuple[str, int]] = Counter()
    lock = threading.Lock()

    def sprayer(k: int, ip: str) -> None:
        n = ATTEMPTS // len(SPRAYERS)
        sess = requests.Session()
        sess.mount("https://", _SourceAdapter(ip, verify))
        with httpx.Client(transport=httpx.HTTPTransport(local_address=ip, verify=verify), timeout=30) as c:
            for i in range(n):
                user = users[(k * 7 + i) % len(users)]
                kind = ("basic", "oauth", "basic", "ntlm", "oauth")[i % 5]
                if kind == "basic":
                    status = c.get(f"{base}/ucwa/x", auth=(user, f"Spring{i}!")).status_code
                elif kind == "oauth":
                    status = c.post(
                        f"{base}/WebTicket/oauthtoken",
                        content=urlencode({"grant_type": "password", "username": user, "password": f"Summer{i}!"}),
                        headers={"Content-Type": "application/x-www-form-urlencoded"},
                    ).status_code
                else:
                    status = sess.get(
                        f"{base}/ucwa/x", auth=HttpNtlmAuth(f"LAB\\{user}", f"Winter{i}!"), timeout=30
                    ).status_code
                with lock:
                    codes[(kind, status)] += 1

    rt = threading.Thread(target=real_user)
    rt.start()
    time.sleep(1.0)  # the real user's first sign-in makes its address familiar
    t0 = time.monotonic()
    threads = [threading.Thread(target=sprayer, args=(k, ip)) for k, ip in enumerate(SPRAYERS)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(600)
        elapsed = time.monotonic() - t0
    finally:
        stop.set()
        rt.join(30)
    try:
        locked = [u for u in users if samba_lab.is_locked(u)]
        bad = {u: int((samba_lab.read(u, ["badPwdCount"]).get("badPwdCount") or [b"0"])[0]) for u in users}
        ids = nodes[0][0]
        denials = [e for e in ids.audit.tail(20000) if e.action == "sign-in" and e.result == "deny"]
        addresses = Counter(e.client_address for e in denials)
        total = sum(codes.values())
        print(
            f"\nspray: {total} attempts in {elapsed:.1f} s from {len(SPRAYERS)} addresses over "
            f"{len(users)} AD users: {dict(sorted(codes.items()))}"
        )
        print(
            f"AD badPwdCount max {max(bad.values())}, locked accounts {len(locked)}; real user "
            f"{len(real_codes)} sign-ins, {sum(c != 200 for c in real_codes)} failures; audit "
            f"denials by address: {len(addresses)} addresses, HAProxy's 127.0.0.1: {addresses.get('127.0.0.1', 0)}"
        )
        assert total >= ATTEMPTS
        assert locked == [] and max(bad.values()) <= USER_FAILURES
        assert real_codes and all(c == 200 for c in real_codes), real_codes
        assert set(addresses) <= set(SPRAYERS) and len(addresses) == len(SPRAYERS)
    finally:
        lb.stop()
        for ids, g in nodes:
            loop_thread.run(g.stop())
            ids.close()
