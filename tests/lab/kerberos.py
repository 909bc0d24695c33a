"""The Kerberos half of the lab: service accounts, SPNs, keytabs, delegation, and Apache.

Built on a running :class:`tests.lab.samba.SambaLab` (nothing of this is in the template: it
takes about a second with samba-tool on the lab's own ``sam.ldb``)::

    klab = KerberosLab.create(samba_lab, workdir)
    klab.gw_keytab        # HTTP/gw.lab.ucgate.test + svc-ucgate-gw, the gateway pool's keytab
    klab.fe_keytab        # HTTP/fe.lab.ucgate.test + svc-ucgate-fe, the front end's
    klab.krb5_conf        # forwardable, no DNS, short KDC timeouts, + a DEAD realm
    with klab.apache() as fe:   # Apache httpd + mod_auth_gssapi requiring Kerberos
        fe.url                  # http://127.0.0.1:<port>/ echoes REMOTE_USER

Accounts (as an AD admin would set them up for a Lync/SfB-style pool):

* ``svc-ucgate-gw``: SPN ``HTTP/gw.lab.ucgate.test`` (the published name), trusted for
  constrained delegation *with protocol transition* (``samba-tool delegation for-any-protocol
  on``, i.e. TRUSTED_TO_AUTH_FOR_DELEGATION) to ``HTTP/fe.lab.ucgate.test``
  (``samba-tool delegation add-service``, i.e. msDS-AllowedToDelegateTo);
* ``svc-ucgate-fe``: SPN ``HTTP/fe.lab.ucgate.test`` (the front-end pool).

Keytabs are ``ktpass``-style: ``samba-tool domain exportkeytab --principal=<account>`` gives
the account's keys (AES256, AES128, RC4; exporting by SPN gives Samba 4.17 only RC4), and we
add the same keys under the SPN name (the KDC encrypts a ticket for the SPN with the account's
keys), with ``ucgate.store.keytab.write_keytab``.

Name resolution: none needed. The SPN host names (``gw``/``fe.lab.ucgate.test``) never have
to resolve: krb5.conf has ``dns_canonicalize_hostname = false`` and ``rdns = false``, the KCD
code names the target principal explicitly, Apache accepts any key of its keytab, and curl is
told ``--resolve gw.lab.ucgate.test:<port>:127.0.0.1`` (curl builds the SPN ``HTTP@<URL host>``
from the URL, and connects to 127.0.0.1). /etc/hosts is never touched.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from ucgate.store.keytab import read_keytab, write_keytab

from .samba import DNS_DOMAIN, REALM, SambaLab

GW_ACCOUNT = "svc-ucgate-gw"
GW_PASSWORD = "Gw-Lab-Pass-1!"
GW_HOST = f"gw.{DNS_DOMAIN}"
GW_SPN = f"HTTP/{GW_HOST}"
FE_ACCOUNT = "svc-ucgate-fe"
FE_PASSWORD = "Fe-Lab-Pass-1!"
FE_HOST = f"fe.{DNS_DOMAIN}"
FE_SPN = f"HTTP/{FE_HOST}"
DEAD_REALM = "DEAD.UCGATE.TEST"  # its "KDC" accepts TCP connections and never answers

APACHE_BIN = "/usr/sbin/apache2"
APACHE_MODULES = Path("/usr/lib/apache2/modules")
REQUIRED = ("kinit", "klist", APACHE_BIN, str(APACHE_MODULES / "mod_auth_gssapi.so"))


def kerberos_lab_available() -> str | None:
    """None when the Kerberos lab can run, else what is missing."""
    missing = [b for b in REQUIRED if not (shutil.which(b) or Path(b).exists())]
    try:
        import gssapi  # noqa: F401
    except ImportError:
        missing.append("python gssapi")
    if missing:
        return f"missing {', '.join(missing)}: run scripts/install-kerberos-lab"
    return None


def install_packages() -> None:
    script = Path(__file__).resolve().parents[2] / "scripts" / "install-kerberos-lab"
    subprocess.run([str(script)], check=True)


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass
class KerberosLab:
    samba: SambaLab
    workdir: Path
    blackhole: socket.socket | None = None
    timings: dict[str, float] = field(default_factory=dict)

    # ---- paths
    @property
    def krb5_conf(self) -> Path:
        return self.workdir / "krb5.conf"

    @property
    def gw_keytab(self) -> Path:
        return self.workdir / "gw.keytab"

    @property
    def fe_keytab(self) -> Path:
        return self.workdir / "fe.keytab"

    @property
    def realm(self) -> str:
        return REALM

    # ---- setup
    @classmethod
    def create(cls, samba: SambaLab, workdir: Path | None = None) -> KerberosLab:
        t0 = time.monotonic()
        workdir = Path(workdir or tempfile.mkdtemp(prefix="ucgate-krb-"))
        workdir.mkdir(parents=True, exist_ok=True)
        lab = cls(samba, workdir)
        lab.blackhole = socket.socket()
        lab.blackhole.bind(("127.0.0.1", 0))
        lab.blackhole.listen(64)  # connections complete in the kernel; nobody ever answers
        lab.write_krb5_conf()
        lab.ensure_accounts()
        lab.export_keytab(GW_ACCOUNT, GW_SPN, lab.gw_keytab)
        lab.export_keytab(FE_ACCOUNT, FE_SPN, lab.fe_keytab)
        lab.timings["setup"] = time.monotonic() - t0
        return lab

    def close(self) -> None:
        if self.blackhole is not None:
            self.blackhole.close()
            self.blackhole = None
        shutil.rmtree(self.workdir, ignore_errors=True)

    def write_krb5_conf(self, *, clockskew: int = 300) -> None:
        host = self.samba.host
        dead = self.blackhole.getsockname()[1] if self.blackhole else 1
        self.krb5_conf.write_text(
            "[libdefaults]\n"
            f"    default_realm = {REALM}\n"
            "    dns_lookup_kdc = false\n"
            "    dns_lookup_realm = false\n"
            "    dns_canonicalize_hostname = false\n"
            "    rdns = false\n"
            "    forwardable = true\n"  # S4U2Proxy needs a forwardable evidence ticket
            "    udp_preference_limit = 1\n"  # TCP: a dead KDC fails on connect/timeout
            "    kdc_timeout = 2000\n"  # ms per KDC attempt
            "    max_retries = 1\n"
            f"    clockskew = {clockskew}\n"
            "[realms]\n"
            f"    {REALM} = {{\n"
            f"        kdc = {host}\n"
            f"        admin_server = {host}\n"
            "    }\n"
            f"    {DEAD_REALM} = {{\n"
            f"        kdc = tcp/127.0.0.1:{dead}\n"
            "    }\n"
            "[domain_realm]\n"
            f"    .{DNS_DOMAIN} = {REALM}\n"
            f"    {DNS_DOMAIN} = {REALM}\n"
        )

    def samba_tool(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """samba-tool on the lab's sam.ldb (local ldb access; the running DC sees the changes)."""
        cmd = ["samba-tool", *args, "-s", str(self.samba.smb_conf)]
        if args[0] not in ("domain",):
            cmd += ["-H", str(self.samba.workdir / "private" / "sam.ldb")]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        if check and r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{r.stdout}\n{r.stderr}")
        return r

    def _exists(self, account: str) -> bool:
        import ldap3

        with self.samba._admin() as c:
            c.search(self.samba.base_dn, f"(sAMAccountName={account})", ldap3.SUBTREE, attributes=["cn"])
            return bool(c.entries)

    def ensure_accounts(self) -> None:
        """Create (idempotently) both service accounts, their SPNs and the delegation."""
        for account, password, spn in ((GW_ACCOUNT, GW_PASSWORD, GW_SPN), (FE_ACCOUNT, FE_PASSWORD, FE_SPN)):
            if not self._exists(account):
                self.samba_tool("user", "create", account, password)
                self.samba_tool("user", "setexpiry", account, "--noexpiry")
            spns = self.spns(account)
            if spn not in spns:
                self.samba_tool("spn", "add", spn, account)
            # AES only, as recommended (and as `ucgate kerberos check` wants it set explicitly)
            self.samba._modify(self.samba.user_dn(account), {"msDS-SupportedEncryptionTypes": "24"})
        self.add_delegation()

    def spns(self, account: str) -> list[str]:
        v = self.samba.read(account, ["servicePrincipalName"]).get("servicePrincipalName", [])
        return [x.decode() for x in v]

    def add_delegation(self, spn: str = FE_SPN, account: str = GW_ACCOUNT) -> None:
        self.samba_tool("delegation", "add-service", account, spn, check=False)  # "already" is fine
        self.protocol_transition(True, account)

    def remove_delegation(self, spn: str = FE_SPN, account: str = GW_ACCOUNT) -> None:
        self.samba_tool("delegation", "del-service", account, spn, check=False)

    def protocol_transition(self, on: bool, account: str = GW_ACCOUNT) -> None:
        r = self.samba_tool("delegation", "for-any-protocol", account, "on" if on else "off", check=False)
        if r.returncode != 0 and "already" not in r.stderr + r.stdout:
            raise RuntimeError(f"samba-tool delegation for-any-protocol failed: {r.stdout}{r.stderr}")

    def add_spn(self, spn: str, account: str) -> None:
        """Add an SPN over LDAP as Administrator: unlike samba-tool spn add / setspn -S, this
        does not refuse a duplicate (the check must find one)."""
        import ldap3

        with self.samba._admin() as c:
            c.modify(self.samba.user_dn(account), {"servicePrincipalName": [(ldap3.MODIFY_ADD, [spn])]})

    def delete_spn(self, spn: str, account: str) -> None:
        self.samba_tool("spn", "delete", spn, account)

    def reset_password(self, account: str, password: str) -> None:
        """An admin password reset: msDS-KeyVersionNumber goes up, exported keytabs go stale."""
        self.samba_tool("user", "setpassword", account, f"--newpassword={password}")

    def export_keytab(self, account: str, spn: str, path: Path) -> Path:
        """A ktpass-style keytab: the account's keys under the account and the SPN names."""
        raw = path.with_name(path.name + ".raw")
        raw.unlink(missing_ok=True)
        self.samba_tool("domain", "exportkeytab", str(raw), f"--principal={account}")
        entries = read_keytab(raw)
        raw.unlink()
        spn_principal = f"{spn}@{REALM}"
        write_keytab(path, entries + [e.renamed(spn_principal) for e in entries])
        return path

    # ---- clients
    def env(self, ccache: Path | str | None = None) -> dict[str, str]:
        env = {**os.environ, "KRB5_CONFIG": str(self.krb5_conf)}
        if ccache is not None:
            env["KRB5CCNAME"] = f"FILE:{ccache}"
        return env

    def kinit(self, user: str, password: str, ccache: Path, *, lifetime: str | None = None) -> Path:
        """A user's TGT into ``ccache`` (MIT kinit reads the password from stdin)."""
        cmd = ["kinit", "-f"]
        if lifetime:
            cmd += ["-l", lifetime]
        cmd.append(f"{user}@{REALM}")
        r = subprocess.run(cmd, input=password + "\n", capture_output=True, text=True, env=self.env(ccache), timeout=30)
        if r.returncode != 0:
            raise RuntimeError(f"kinit {user} failed: {r.stdout}{r.stderr}")
        return ccache

    @contextlib.contextmanager
    def apache(self, keytab: Path | None = None):
        fe = ApacheFrontEnd(keytab or self.fe_keytab, self.krb5_conf)
        fe.start()
        try:
            yield fe
        finally:
            fe.stop()


class ApacheFrontEnd:
    """Apache httpd with mod_auth_gssapi on 127.0.0.1:<port>, Kerberos required for every path;
    a CGI echoes ``REMOTE_USER`` (body ``user=<principal>``; also the ``X-Remote-User`` header).
    Its own config, pid file and logs in a temporary directory; no system service involved."""

    def __init__(self, keytab: Path, krb5_conf: Path, port: int | None = None) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="ucgate-apache-"))
        os.chmod(self.dir, 0o755)  # workers run as www-data
        self.port = port or _free_port()
        self.keytab = self.dir / "fe.keytab"
        shutil.copy(keytab, self.keytab)
        shutil.chown(self.keytab, "www-data", "www-data")
        os.chmod(self.keytab, 0o400)
        self.krb5_conf = self.dir / "krb5.conf"
        shutil.copy(krb5_conf, self.krb5_conf)
        os.chmod(self.krb5_conf, 0o644)
        self.proc: subprocess.Popen | None = None
        self.started_in = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _write_config(self) -> Path:
        d = self.dir
        (d / "run").mkdir(exist_ok=True)
        (d / "rcache").mkdir(exist_ok=True)
        shutil.chown(d / "rcache", "www-data", "www-data")
        cgi = d / "cgi"
        cgi.mkdir(exist_ok=True)
        script = cgi / "whoami"
        script.write_text(
            '#!/bin/sh\nprintf "Content-Type: text/plain\\r\\n\\r\\n'
            'user=%s\\nauth=%s\\npath=%s\\n" "$REMOTE_USER" "$AUTH_TYPE" "$REQUEST_URI"\n'
        )
        os.chmod(script, 0o755)
        os.chmod(cgi, 0o755)
        mods = [
            "mpm_prefork",
            "authn_core",
            "authz_core",
            "authz_user",
            "auth_gssapi",
            "headers",
            "cgi",
            "alias",
            "env",
        ]
        load = "\n".join(f"LoadModule {m}_module {APACHE_MODULES}/mod_{m}.so" for m in mods)
        conf = d / "httpd.conf"
        conf.write_text(f"""# ucgate Kerberos lab front end (tests/lab/kerberos.py)
ServerRoot "{d}"
ServerName {FE_HOST}
Listen 127.0.0.1:{self.port}
PidFile {d}/httpd.pid
DefaultRuntimeDir {d}/run
Mutex file:{d}/run default
ErrorLog {d}/error.log
LogLevel info auth_gssapi:debug
LogFormat "%h %u \\"%r\\" %>s" short
CustomLog {d}/access.log short
User www-data
Group www-data
{load}
StartServers 2
MinSpareServers 1
MaxSpareServers 4
KeepAlive On
PassEnv KRB5_CONFIG KRB5RCACHEDIR
ScriptAliasMatch "^/.*" "{script}"
<Directory "{cgi}">
    Options +ExecCGI
</Directory>
<Location />
    AuthType GSSAPI
    AuthName "ucgate lab front end"
    GssapiCredStore keytab:{self.keytab}
    GssapiAllowedMech krb5
    GssapiBasicAuth Off
    Require valid-user
    Header always set X-Remote-User "expr=%{{REMOTE_USER}}"
</Location>
""")
        return conf

    def start(self, timeout: float = 20.0) -> None:
        t0 = time.monotonic()
        conf = self._write_config()
        env = {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "KRB5_CONFIG": str(self.krb5_conf),
            "KRB5RCACHEDIR": str(self.dir / "rcache"),
            "LANG": "C",
        }
        with open(self.dir / "stdout.log", "ab") as out:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                [APACHE_BIN, "-f", str(conf), "-DFOREGROUND"],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                cwd=self.dir,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"apache2 exited ({self.proc.returncode}):\n{self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"apache2 not listening after {timeout}s:\n{self.log_tail()}")
            time.sleep(0.05)
        self.started_in = time.monotonic() - t0

    def log_tail(self, n: int = 30) -> str:
        lines: list[str] = []
        for f in ("stdout.log", "error.log"):
            with contextlib.suppress(OSError):
                lines += (self.dir / f).read_text(errors="replace").splitlines()[-n:]
        return "\n".join(lines)

    def access_log(self) -> str:
        with contextlib.suppress(OSError):
            return (self.dir / "access.log").read_text()
        return ""

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        shutil.rmtree(self.dir, ignore_errors=True)
