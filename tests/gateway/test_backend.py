"""Backend credentials (issue 7): what the front end gets after pre-authentication, per mode.

- ``passthrough``: the client's own Basic header (recording upstream, h11).
- ``vault`` Basic: against **Apache httpd** (Debian ``apache2``) with ``mod_authnz_ldap``
  validating Basic credentials by an LDAP bind to the **Samba AD lab DC** — a real peer; the
  user must be the one Apache sees (``REMOTE_USER``, echoed in a header).
- ``vault`` NTLM: no practical real NTLM peer validates against the lab DC without joining a
  machine to the domain (IIS, or Apache + winbind), so the NTLM front end here is a **small
  pyspnego-based NTLM server** (:class:`NtlmFrontend`, clearly a test double) whose credential
  file holds the password *after the DC verified it out of band* (an LDAP bind as the user). It
  authenticates the connection, as IIS does, and shows the per-user upstream pool at work.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from pathlib import Path

import h11
import httpx
import pytest
import requests
from requests_ntlm import HttpNtlmAuth

import ucgate.gateway.upstream as upstream_mod
from ucgate.config import LockoutConfig, from_dict
from ucgate.gateway.backend import BackendError, PassthroughBackend, VaultBackend
from ucgate.gateway.connection import Identity
from ucgate.gateway.preauth import PreAuthenticator, PreAuthSettings
from ucgate.gateway.server import Gateway
from ucgate.id.factory import open_services
from ucgate.id.vault import VaultError, VaultService
from ucgate.protocols.http1 import Framing, RequestHead
from ucgate.protocols.sfb import Service

from ..support import RecordingUpstream, free_port, gateway_config


@pytest.fixture
def ids(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "keys").mkdir(mode=0o700)
    s = open_services(
        store_url=f"sqlite:///{tmp_path / 'data' / 'ucgate.db'}",
        key_file=tmp_path / "keys" / "ucgate.key",
        audit_file=None,
        lockout=LockoutConfig(user_failures=50, ip_failures=500, window=900),
    )
    for u in ("alice", "bob"):
        s.users.add(u, upn=f"{u}@lab.ucgate.test")
    yield s
    s.close()


@pytest.fixture
def vault(ids):
    return VaultService(ids.components.repo, ids.components.keyring, users=ids.users, audit=ids.audit)


class Gw:
    def __init__(self, lt, tls_files, port, ids, services, backends):
        cfg = from_dict(gateway_config(*tls_files, port, services=services))
        auth = PreAuthenticator(ids.credentials, PreAuthSettings(netbios_domain="LAB", failure_floor=0))

        async def start():
            g = Gateway(cfg, auth, backends=backends)
            await g.start()
            return g

        self.lt, self.cert = lt, tls_files[0]
        self.gateway = lt.run(start())
        self.url = f"https://127.0.0.1:{self.gateway.port}"

    def client(self, user=None, password=None) -> httpx.Client:
        return httpx.Client(
            base_url=self.url,
            verify=ssl.create_default_context(cafile=str(self.cert)),
            trust_env=False,
            timeout=10,
            auth=(user, password) if user else None,
        )

    def stop(self):
        self.lt.run(self.gateway.stop())


@pytest.fixture
def make_gw(loop_thread, tls_files):
    made = []

    def make(port, ids, services, backends=None):
        g = Gw(loop_thread, tls_files, port, ids, services, backends)
        made.append(g)
        return g

    yield make
    for g in made:
        g.stop()


def _req(authz: bytes | None = None) -> RequestHead:
    headers = [(b"Host", b"x")] + ([(b"Authorization", authz)] if authz else [])
    return RequestHead(b"GET", b"/ucwa/x", (1, 1), headers, Framing("none"), b"x", True)


# --- the mechanisms on their own ------------------------------------------------------------


def test_passthrough_forwards_only_per_request_schemes():
    pt, svc = PassthroughBackend(), Service("ucwa", "/ucwa/", backend="passthrough")
    run = asyncio.run
    assert run(pt.prepare(Identity("alice", "basic"), svc, _req(b"Basic YTpi"))).headers == [
        (b"Authorization", b"Basic YTpi")
    ]
    with pytest.raises(BackendError) as e:
        run(pt.prepare(Identity("alice", "ntlm"), svc, _req()))
    assert e.value.reason == "passthrough-connection-auth"
    with pytest.raises(BackendError):
        run(pt.prepare(Identity("alice", "negotiate"), svc, _req(b"Negotiate TlRMTVNTUAAB")))


def test_unknown_backend_is_refused_at_start(tls_files, ids):
    cfg = from_dict(gateway_config(*tls_files, 1, services={"ucwa": {"backend": "kcd"}}))
    with pytest.raises(ValueError, match="backend 'kcd' is not available"):
        Gateway(cfg, None)


# --- passthrough and vault Basic through the gateway (recording upstream) --------------------


def test_passthrough_basic(upstream, ids, make_gw):
    g = make_gw(upstream.port, ids, {"ucwa": {"backend": "passthrough"}})
    asp = ids.asps.create("alice", "phone")[1]
    with g.client("alice", asp) as c:
        assert c.get("/ucwa/x").status_code == 200
    seen = upstream.received[-1]
    assert seen.header("Authorization") == "Basic " + base64.b64encode(f"alice:{asp}".encode()).decode()
    assert seen.header("X-Ucgate-User") == "alice"
    # other services keep the default: the credentials stop at the gateway
    with g.client("alice", asp) as c:
        assert c.get("/abs/x").status_code == 200
    assert upstream.received[-1].header("Authorization") is None


def test_passthrough_refuses_ntlm_with_502(upstream, ids, make_gw):
    g = make_gw(upstream.port, ids, {"ucwa": {"backend": "passthrough"}})
    asp = ids.asps.create("alice", "phone")[1]
    s = requests.Session()
    s.trust_env, s.verify = False, str(g.cert)
    s.auth = HttpNtlmAuth("LAB\\alice", asp)
    r = s.get(f"https://localhost:{g.gateway.port}/ucwa/x", timeout=10)
    assert r.status_code == 502
    assert not upstream.received


def test_vault_basic_header_and_missing_secret(upstream, ids, vault, make_gw):
    g = make_gw(
        upstream.port, ids, {"ucwa": {"backend": "vault", "backend_scheme": "basic"}}, {"vault": VaultBackend(vault)}
    )
    asp = ids.asps.create("alice", "phone")[1]
    with g.client("alice", asp) as c:
        r = c.get("/ucwa/x")
        assert r.status_code == 403  # no domain password enrolled: refused, nothing forwarded
        assert not upstream.received
        vault.set_password("alice", "D0main-Pass", actor="test")
        assert c.get("/ucwa/x").status_code == 200
    assert upstream.received[-1].header("Authorization") == "Basic " + base64.b64encode(b"alice:D0main-Pass").decode()


class Broken:
    name = "vault"

    async def password(self, user):
        raise OSError("store down")


def test_vault_failure_is_502_not_a_hang(upstream, ids, make_gw):
    g = make_gw(
        upstream.port, ids, {"ucwa": {"backend": "vault", "backend_scheme": "basic"}}, {"vault": VaultBackend(Broken())}
    )
    asp = ids.asps.create("alice", "phone")[1]
    with g.client("alice", asp) as c:
        r = c.get("/ucwa/x")
    assert r.status_code == 502 and not upstream.received


# --- vault NTLM: a pyspnego NTLM front end, per-user upstream connections ------------------------


class NtlmFrontend:
    """TEST DOUBLE, not a real front end: an HTTP/1.1 server (h11) that requires NTLM per
    connection, verified by pyspnego's NTLM acceptor against ``NTLM_USER_FILE``."""

    def __init__(self) -> None:
        self.handshakes: list[str] = []  # the user of each completed handshake
        self.requests: list[tuple[int, str, str]] = []  # (connection no., user, target)
        self.connections = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._conn, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self.server.close()

    async def _conn(self, reader, writer) -> None:
        import spnego

        self.connections += 1
        n = self.connections
        conn = h11.Connection(h11.SERVER)
        ctx, user = None, None
        try:
            while True:
                ev = await self._next(conn, reader)
                if not isinstance(ev, h11.Request):
                    return
                while not isinstance(await self._next(conn, reader), h11.EndOfMessage):
                    pass
                authz = dict((k.lower(), v) for k, v in ev.headers).get(b"authorization", b"")
                status, hdrs, body = 200, [], b""
                if user is None:
                    if authz[:5].lower() == b"ntlm ":
                        token = base64.b64decode(authz[5:])
                        if token[8:9] == b"\x01":
                            ctx = spnego.server(protocol="ntlm", options=spnego.NegotiateOptions.use_ntlm)
                        try:
                            out = ctx.step(token) if ctx else None
                        except Exception:
                            out, ctx = None, None
                            status, hdrs = 401, [(b"WWW-Authenticate", b"NTLM")]
                        if ctx is not None and ctx.complete:
                            user = ctx.client_principal
                            self.handshakes.append(user)
                        elif out:
                            status, hdrs = 401, [(b"WWW-Authenticate", b"NTLM " + base64.b64encode(out))]
                    else:
                        status, hdrs = 401, [(b"WWW-Authenticate", b"NTLM")]
                if status == 200:
                    self.requests.append((n, user, ev.target.decode()))
                    body = json.dumps({"user": user, "connection": n}).encode()
                hdrs += [(b"Content-Length", str(len(body)).encode()), (b"Content-Type", b"application/json")]
                writer.write(conn.send(h11.Response(status_code=status, headers=hdrs)))
                writer.write(conn.send(h11.Data(data=body)) if body else b"")
                writer.write(conn.send(h11.EndOfMessage()))
                await writer.drain()
                if conn.our_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
        except (h11.RemoteProtocolError, ConnectionError):
            return
        finally:
            writer.close()

    _next = staticmethod(RecordingUpstream._next)  # the next h11 event, reading as needed


@pytest.fixture
def ntlm_frontend(loop_thread, tmp_path, monkeypatch):
    fe = NtlmFrontend()
    loop_thread.run(fe.start())
    users = tmp_path / "ntlm-users"
    monkeypatch.setenv("NTLM_USER_FILE", str(users))
    fe.user_file = users
    yield fe
    loop_thread.run(fe.stop())


def test_vault_ntlm_per_user_connections(ntlm_frontend, ids, vault, make_gw, monkeypatch):
    fe = ntlm_frontend
    fe.user_file.write_text("LAB:alice:Alice-D0main!\nLAB:bob:Bob-D0main!\n")
    vault.set_password("alice", "Alice-D0main!", actor="test")
    vault.set_password("bob", "Bob-D0main!", actor="test")
    g = make_gw(fe.port, ids, {"ucwa": {"backend": "vault"}}, {"vault": VaultBackend(vault, domain="LAB")})
    asp_a, asp_b = ids.asps.create("alice", "phone")[1], ids.asps.create("bob", "phone")[1]
    with g.client("alice", asp_a) as c:
        for i in range(3):
            r = c.get(f"/ucwa/a{i}")
            assert r.status_code == 200 and r.json()["user"] == "LAB\\alice"
        # a request with a body goes on the authenticated connection too
        assert c.post("/ucwa/post", content=b"x" * 5000).json()["user"] == "LAB\\alice"
    with g.client("bob", asp_b) as c:
        assert c.get("/ucwa/b").json()["user"] == "LAB\\bob"
    assert fe.handshakes == ["LAB\\alice", "LAB\\bob"]  # once per user connection
    alice_conns = {n for n, u, _ in fe.requests if u == "LAB\\alice"}
    bob_conns = {n for n, u, _ in fe.requests if u == "LAB\\bob"}
    assert len(alice_conns) == 1 and not alice_conns & bob_conns
    # bounded: with room for one per-user pool, bob's evicts alice's (closed), she reconnects
    monkeypatch.setattr(upstream_mod, "USER_POOLS_MAX", 1)
    with g.client("alice", asp_a) as c:
        assert c.get("/ucwa/again").json()["user"] == "LAB\\alice"
    assert fe.handshakes[-1] == "LAB\\alice" and len(g.gateway.pools["frontend"].user_pools) == 1


def test_vault_ntlm_wrong_password_is_502(ntlm_frontend, ids, vault, make_gw):
    ntlm_frontend.user_file.write_text("LAB:alice:Alice-D0main!\n")
    vault.set_password("alice", "stale-password", actor="test")
    g = make_gw(ntlm_frontend.port, ids, {"ucwa": {"backend": "vault"}}, {"vault": VaultBackend(vault, domain="LAB")})
    asp = ids.asps.create("alice", "phone")[1]
    with g.client("alice", asp) as c:
        r = c.get("/ucwa/x")
    assert r.status_code == 502
    assert not ntlm_frontend.requests


# --- against the Samba AD lab DC ----------------------------------------------------------------

APACHE_MODULES = (
    "mpm_event",
    "authz_core",
    "authz_user",
    "authn_core",
    "auth_basic",
    "ldap",
    "authnz_ldap",
    "headers",
    "alias",
)


@pytest.fixture
def apache_ldap_frontend(samba_lab):
    """Apache httpd requiring Basic, checked by mod_authnz_ldap against the lab DC (LDAPS)."""
    if shutil.which("apache2") is None:
        pytest.skip("apache2 not installed (apt-get install apache2)")
    d = Path(tempfile.mkdtemp(prefix="ucgate-apache-"))
    os.chmod(d, 0o755)
    (d / "www").mkdir()
    (d / "www" / "ok.txt").write_text("hello from the front end\n")
    os.chmod(d / "www", 0o755)
    os.chmod(d / "www" / "ok.txt", 0o644)
    shutil.copy(samba_lab.ca_cert, d / "dc-ca.pem")  # readable by the www-data workers
    os.chmod(d / "dc-ca.pem", 0o644)
    port = free_port()
    mods = "\n".join(f"LoadModule {m}_module /usr/lib/apache2/modules/mod_{m}.so" for m in APACHE_MODULES)
    (d / "httpd.conf").write_text(f"""
{mods}
ServerName fe01.lab.ucgate.test
ServerRoot {d}
Listen 127.0.0.1:{port}
PidFile {d}/httpd.pid
DefaultRuntimeDir {d}
ErrorLog {d}/error.log
LogLevel warn authnz_ldap:info
User www-data
Group www-data
DocumentRoot {d}/www
LDAPTrustedGlobalCert CA_BASE64 {d}/dc-ca.pem
LDAPVerifyServerCert On
AliasMatch "^/.*" "{d}/www/ok.txt"
<Location />
  AuthType Basic
  AuthName "front end"
  AuthBasicProvider ldap
  AuthLDAPURL "{samba_lab.ldaps_url}/CN=Users,{samba_lab.base_dn}?sAMAccountName?sub?(objectClass=user)"
  AuthLDAPBindDN "{samba_lab.service_dn}"
  AuthLDAPBindPassword "{samba_lab.service_password}"
  Require valid-user
  Header always set X-Remote-User "expr=%{{REMOTE_USER}}"
</Location>
""")
    proc = subprocess.Popen(["apache2", "-f", str(d / "httpd.conf"), "-DFOREGROUND"], start_new_session=True)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError("apache2 exited: " + (d / "error.log").read_text()[-2000:]) from None
                time.sleep(0.05)
        yield port, d
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)
        shutil.rmtree(d, ignore_errors=True)


@pytest.mark.samba
def test_vault_basic_against_apache_ldap_on_the_dc(samba_lab, apache_ldap_frontend, ids, vault, make_gw):
    port, d = apache_ldap_frontend
    user = samba_lab.new_user("vb")
    ids.users.add(user)
    # the front end is real: without credentials it refuses, with the domain password it admits
    assert httpx.get(f"http://127.0.0.1:{port}/x", trust_env=False).status_code == 401
    direct = httpx.get(f"http://127.0.0.1:{port}/x", auth=(user, samba_lab.default_password), trust_env=False)
    assert direct.status_code == 200, (d / "error.log").read_text()[-2000:]
    assert direct.headers["x-remote-user"] == user
    vault.set_password(
        user, samba_lab.default_password, actor="test", verify=lambda u, pw: samba_lab.can_bind(u, pw)
    )  # the DC checks it first
    g = make_gw(port, ids, {"ucwa": {"backend": "vault", "backend_scheme": "basic"}}, {"vault": VaultBackend(vault)})
    asp = ids.asps.create(user, "phone")[1]
    with g.client(user, asp) as c:
        r = c.get("/ucwa/oauth/v1/applications")
    assert r.status_code == 200, (d / "error.log").read_text()[-2000:]
    assert r.headers["x-remote-user"] == user and r.text == "hello from the front end\n"
    # a vault password the DC does not accept: Apache refuses it
    other = samba_lab.new_user("vb")
    ids.users.add(other)
    vault.set_password(other, "Not-The-Passw0rd", actor="test")
    with pytest.raises(VaultError):
        vault.set_password(other, "Not-The-Passw0rd", actor="test", verify=lambda u, pw: samba_lab.can_bind(u, pw))
    asp2 = ids.asps.create(other, "phone")[1]
    with g.client(other, asp2) as c:
        assert c.get("/ucwa/x").status_code == 401


@pytest.mark.samba
def test_vault_ntlm_with_a_dc_verified_password(samba_lab, ntlm_frontend, ids, vault, make_gw):
    """The NTLM front end is the pyspnego test double (see the module docstring); the password
    it holds is the one the DC accepted by an LDAP bind, and the vault is enrolled with the DC
    check, so the chain is: DC-verified domain password → vault → NTLM handshake as the user."""
    user = samba_lab.new_user("vn")
    ids.users.add(user)
    assert samba_lab.can_bind(user, samba_lab.default_password)
    ntlm_frontend.user_file.write_text(f"LAB:{user}:{samba_lab.default_password}\n")
    vault.set_password(user, samba_lab.default_password, actor="test", verify=lambda u, pw: samba_lab.can_bind(u, pw))
    g = make_gw(
        ntlm_frontend.port,
        ids,
        {"ucwa": {"backend": "vault"}},
        {"vault": VaultBackend(vault, domain=samba_lab.netbios_domain)},
    )
    asp = ids.asps.create(user, "phone")[1]
    with g.client(user, asp) as c:
        r = c.get("/ucwa/x")
    assert r.status_code == 200 and r.json()["user"] == f"LAB\\{user}"
