"""A throwaway Samba Active Directory domain controller on a loopback address.

Used by the integration tests (see ``tests/lab/fixtures.py``) and by hand::

    python -m tests.lab.samba up       # start one in the background, print its settings
    python -m tests.lab.samba status
    python -m tests.lab.samba down

How it works
------------
* ``samba-tool domain provision --dns-backend=NONE`` builds a domain into its own
  directory (own smb.conf, private/, state/, cache/). No DNS server: the tests
  reach LDAP and the KDC by IP address, and the client-side ``krb5.conf`` we write
  names the KDC explicitly, so Samba's internal DNS would only add a listener.
* Provisioning plus seeding (schema extension, users, groups, password policy, TLS
  certificate) takes some seconds, so the result is cached as a *template* under
  ``/var/tmp/ucgate-samba-lab/template-<samba version>-f<LAB_FORMAT>`` and each run
  copies it into a fresh temporary directory.
* The server binds one loopback address (``127.0.0.2`` unless its ports are taken;
  then the next free ``127.0.0.x``) with ``bind interfaces only``, so it never
  collides with services on 127.0.0.1 or 0.0.0.0 port 389/88.
* TLS: we generate our own CA and a server certificate whose subjectAltName holds
  the DC's DNS name and the loopback addresses, so clients can verify chain *and*
  host name (Samba's own auto-generated ``private/tls/ca.pem``/``cert.pem`` carry
  no IP SAN). ``SambaLab.ca_cert`` is the CA file to trust.
* The Lync/SfB attribute ``msRTCSIP-PrimaryUserAddress`` is not in Samba's stock
  schema; the template extends the schema with it (and ``msRTCSIP-UserEnabled``)
  using the attributeIDs the Lync schema prep uses, and adds both to the
  ``user`` class' mayContain, as a Lync-prepared forest has them.

Everything here is test tooling: the passwords are fixed and public.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import datetime as _dt
import fcntl
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

LAB_FORMAT = 3  # bump whenever the template content changes

REALM = "LAB.UCGATE.TEST"
DNS_DOMAIN = "lab.ucgate.test"
NETBIOS_DOMAIN = "LAB"
BASE_DN = "DC=lab,DC=ucgate,DC=test"
DC_HOSTNAME = "dc1"
DC_FQDN = f"{DC_HOSTNAME}.{DNS_DOMAIN}"
ADMIN_PASSWORD = "Adm1n-Lab-Pass!"
SERVICE_ACCOUNT = "svc-ucgate"
SERVICE_PASSWORD = "Svc-Lab-Pass-1!"
DEFAULT_PASSWORD = "Passw0rd-Lab!"
LOCKOUT_THRESHOLD = 5
LOCKOUT_MINUTES = 1
SIP_DOMAIN = DNS_DOMAIN
USERS_GROUP = "ucgate-users"
NESTED_GROUP = "ucgate-mobile"  # member of ucgate-users

CACHE_ROOT = Path(os.environ.get("UCGATE_SAMBA_LAB_CACHE", "/var/tmp/ucgate-samba-lab"))
CANDIDATE_HOSTS = [f"127.0.0.{n}" for n in range(2, 31)]
PORTS = (88, 389, 636)
LDAP_ATTR_SIP = "msRTCSIP-PrimaryUserAddress"

UF_ACCOUNTDISABLE = 0x2
UF_NORMAL_ACCOUNT = 0x200
UF_DONT_EXPIRE_PASSWD = 0x10000

REQUIRED_BINARIES = ("samba", "samba-tool")


# Labs started by this process and not stopped yet: killed at interpreter exit so a
# crashed test run or script does not leave samba behind (the CLI's "up" detaches
# its lab on purpose by dropping it from here).
_LIVE: dict[int, tuple[subprocess.Popen, Path, bool]] = {}


@atexit.register
def _kill_leftovers() -> None:
    for proc, workdir, keep in list(_LIVE.values()):
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    _LIVE.clear()


class LabError(RuntimeError):
    """The lab could not be built or started."""


@dataclass(frozen=True)
class SeedUser:
    name: str
    display_name: str
    groups: tuple[str, ...] = ()
    disabled: bool = False
    sip: str | None = None  # msRTCSIP-PrimaryUserAddress
    mail: str | None = None
    proxy_addresses: tuple[str, ...] = ()


# The fixed population of every lab (the template holds it).
SEED_USERS: tuple[SeedUser, ...] = (
    SeedUser(
        "alice",
        "Alice Example",
        (USERS_GROUP,),
        sip="sip:alice@lab.ucgate.test",
        mail="alice@lab.ucgate.test",
        proxy_addresses=("SMTP:alice@lab.ucgate.test", "SIP:alice@lab.ucgate.test"),
    ),
    # bob's SIP URI and mail differ from his UPN (bob@lab.ucgate.test)
    SeedUser(
        "bob",
        "Bob Builder",
        (USERS_GROUP,),
        sip="sip:robert@sip.ucgate.test",
        mail="robert.b@ucgate.test",
        proxy_addresses=("SMTP:robert.b@ucgate.test", "smtp:bob@lab.ucgate.test", "SIP:robert@sip.ucgate.test"),
    ),
    SeedUser("carol", "Carol NotMember", (), sip="sip:carol@lab.ucgate.test", mail="carol@lab.ucgate.test"),
    SeedUser(
        "dave",
        "Dave Disabled",
        (USERS_GROUP,),
        disabled=True,
        sip="sip:dave@lab.ucgate.test",
        mail="dave@lab.ucgate.test",
    ),
    # erin is in ucgate-users only through the nested group ucgate-mobile
    SeedUser("erin", "Erin Nested", (NESTED_GROUP,), sip="sip:erin@lab.ucgate.test", mail="erin@lab.ucgate.test"),
    # frank has no msRTCSIP attribute: his SIP address is only a proxyAddresses entry
    SeedUser(
        "frank",
        "Frank Proxy",
        (USERS_GROUP,),
        sip=None,
        mail="frank.mail@ucgate.test",
        proxy_addresses=("SMTP:frank.mail@ucgate.test", "SIP:frank@lab.ucgate.test"),
    ),
)


# --------------------------------------------------------------------------- helpers


def filetime(when: _dt.datetime) -> int:
    """datetime -> Windows FILETIME (100 ns since 1601-01-01 UTC)."""
    epoch = _dt.datetime(1601, 1, 1, tzinfo=_dt.UTC)
    return int((when - epoch).total_seconds() * 10_000_000)


def samba_version() -> str:
    out = subprocess.run(["samba", "-V"], capture_output=True, text=True, check=True).stdout
    return out.strip().split()[-1]


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def pick_host() -> str:
    for host in CANDIDATE_HOSTS:
        if all(_port_free(host, p) for p in PORTS):
            return host
    raise LabError("no free 127.0.0.x address for ports 88/389/636")


def _tcp_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def lab_available() -> str | None:
    """None when the lab can run here, else the reason it cannot."""
    if os.geteuid() != 0:
        return "the Samba AD lab needs root (it binds ports 88/389/636)"
    missing = [b for b in REQUIRED_BINARIES if shutil.which(b) is None]
    if missing:
        return f"missing {', '.join(missing)}: run scripts/install-samba-lab"
    return None


def install_packages() -> None:
    """Run scripts/install-samba-lab (idempotent)."""
    script = Path(__file__).resolve().parents[2] / "scripts" / "install-samba-lab"
    subprocess.run([str(script)], check=True)


def _make_tls(dirpath: Path) -> None:
    """A CA and a server certificate for the DC, SAN = DC names + 127.0.0.2-30."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = _dt.datetime.now(_dt.UTC) - _dt.timedelta(days=1)
    until = now + _dt.timedelta(days=3650)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ucgate Samba lab CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.DNSName(DC_FQDN), x509.DNSName(DNS_DOMAIN), x509.DNSName("localhost")]
    sans += [x509.IPAddress(ipaddress.ip_address(h)) for h in CANDIDATE_HOSTS]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, DC_FQDN)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    dirpath.mkdir(parents=True, exist_ok=True)
    pem = serialization.Encoding.PEM
    (dirpath / "ca.pem").write_bytes(ca.public_bytes(pem))
    (dirpath / "cert.pem").write_bytes(cert.public_bytes(pem))
    keyfile = dirpath / "key.pem"
    keyfile.write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    os.chmod(keyfile, 0o600)  # samba refuses a key file others can read


SCHEMA_DN = f"CN=Schema,CN=Configuration,{BASE_DN}"

# attributeIDs as in the Lync Server schema prep (Lync/SfB extends every forest it is
# deployed in with these; values taken from the published Lync schema).
LYNC_ATTRIBUTES = (
    # (cn / lDAPDisplayName, attributeID, attributeSyntax, oMSyntax, single-valued, searchFlags)
    ("msRTCSIP-PrimaryUserAddress", "1.2.840.113556.1.6.24.1.1", "2.5.5.12", 64, True, 1),
    ("msRTCSIP-UserEnabled", "1.2.840.113556.1.6.24.1.6", "2.5.5.8", 1, True, 0),
)


# --------------------------------------------------------------------------- the lab


@dataclass
class SambaLab:
    """One running (or stopped) lab domain controller.

    ``SambaLab.create()`` copies (building first if needed) the cached template into
    a temporary directory and starts samba; ``close()`` stops it and removes the
    directory. ``stop()``/``start()`` keep the data (for directory-down tests).
    """

    workdir: Path
    host: str
    proc: subprocess.Popen | None = None
    keep: bool = False
    timings: dict[str, float] = field(default_factory=dict)

    # ---- settings the tests use
    realm: str = REALM
    dns_domain: str = DNS_DOMAIN
    netbios_domain: str = NETBIOS_DOMAIN
    base_dn: str = BASE_DN
    admin_password: str = ADMIN_PASSWORD
    service_account: str = SERVICE_ACCOUNT
    service_password: str = SERVICE_PASSWORD
    default_password: str = DEFAULT_PASSWORD
    lockout_threshold: int = LOCKOUT_THRESHOLD
    users_group: str = USERS_GROUP
    nested_group: str = NESTED_GROUP
    seed_users: tuple[SeedUser, ...] = SEED_USERS

    @property
    def admin_dn(self) -> str:
        return f"CN=Administrator,CN=Users,{BASE_DN}"

    @property
    def service_dn(self) -> str:
        return self.user_dn(SERVICE_ACCOUNT)

    @property
    def ldap_url(self) -> str:
        return f"ldap://{self.host}:389"

    @property
    def ldaps_url(self) -> str:
        return f"ldaps://{self.host}:636"

    @property
    def kdc(self) -> str:
        return self.host

    @property
    def ca_cert(self) -> Path:
        return self.workdir / "private" / "tls-lab" / "ca.pem"

    @property
    def samba_generated_ca(self) -> Path:
        """Where Samba itself would write its self-signed CA (unused: no IP SAN)."""
        return self.workdir / "private" / "tls" / "ca.pem"

    @property
    def krb5_conf(self) -> Path:
        return self.workdir / "krb5.conf"

    @property
    def smb_conf(self) -> Path:
        return self.workdir / "etc" / "smb.conf"

    @property
    def log_file(self) -> Path:
        return self.workdir / "log" / "samba.log"

    def user_dn(self, name: str) -> str:
        return f"CN={name},CN=Users,{BASE_DN}"

    def group_dn(self, name: str) -> str:
        return f"CN={name},CN=Users,{BASE_DN}"

    def upn(self, name: str) -> str:
        return f"{name}@{DNS_DOMAIN}"

    def settings(self) -> dict[str, str]:
        return {
            "ldap_url": self.ldap_url,
            "ldaps_url": self.ldaps_url,
            "ca_cert": str(self.ca_cert),
            "base_dn": self.base_dn,
            "realm": self.realm,
            "netbios_domain": self.netbios_domain,
            "kdc": self.kdc,
            "krb5_conf": str(self.krb5_conf),
            "admin_dn": self.admin_dn,
            "admin_password": self.admin_password,
            "service_dn": self.service_dn,
            "service_password": self.service_password,
            "default_password": self.default_password,
            "workdir": str(self.workdir),
            "pid": str(self.proc.pid if self.proc else ""),
        }

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    def create(cls, *, host: str | None = None, workdir: Path | None = None, start: bool = True) -> SambaLab:
        reason = lab_available()
        if reason:
            raise LabError(reason)
        t0 = time.monotonic()
        template = ensure_template()
        t1 = time.monotonic()
        if workdir is None:
            workdir = Path(tempfile.mkdtemp(prefix="ucgate-samba-"))
        else:
            workdir.mkdir(parents=True, exist_ok=True)
        # copy the template (33 MB of ldb/tdb files), then our own config for this dir
        for child in template.iterdir():
            dst = workdir / child.name
            if child.is_dir():
                shutil.copytree(child, dst, symlinks=True, ignore=_ignore_sockets)
            else:
                shutil.copy2(child, dst)
        lab = cls(workdir=workdir, host=host or pick_host())
        lab.timings["template"] = t1 - t0
        lab.timings["copy"] = time.monotonic() - t1
        lab._write_config()
        if start:
            lab.start()
        return lab

    def _write_config(self, *, schema_updates: bool = False) -> None:
        _write_smb_conf(self.workdir, self.host, schema_updates=schema_updates)
        self.krb5_conf.write_text(
            "[libdefaults]\n"
            f"    default_realm = {REALM}\n"
            "    dns_lookup_kdc = false\n"
            "    dns_lookup_realm = false\n"
            "    rdns = false\n"
            "[realms]\n"
            f"    {REALM} = {{\n"
            f"        kdc = {self.host}\n"
            f"        admin_server = {self.host}\n"
            f"        kpasswd_server = {self.host}\n"
            "    }\n"
            "[domain_realm]\n"
            f"    .{DNS_DOMAIN} = {REALM}\n"
            f"    {DNS_DOMAIN} = {REALM}\n"
        )

    def start(self, timeout: float = 60.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        t0 = time.monotonic()
        for p in PORTS:
            if not _port_free(self.host, p):
                raise LabError(f"{self.host}:{p} is already in use")
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.workdir / "log" / "stdout.log", "ab") as out:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                ["samba", "-s", str(self.smb_conf), "--foreground", "--no-process-group"],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group: stop() kills the whole tree
                cwd=self.workdir,
            )
        _LIVE[id(self)] = (self.proc, self.workdir, self.keep)
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        self.timings["start"] = time.monotonic() - t0

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc is None or self.proc.poll() is not None:
                raise LabError(f"samba exited (rc={self.proc and self.proc.returncode}):\n" + self.log_tail())
            if all(_tcp_open(self.host, p) for p in PORTS) and self._ldaps_answers():
                return
            if time.monotonic() > deadline:
                raise LabError(f"samba not ready after {timeout}s:\n" + self.log_tail())
            time.sleep(0.1)

    def _ldaps_answers(self) -> bool:
        try:
            conn = self.admin_connection(timeout=2)
            conn.unbind()
            return True
        except Exception:
            return False

    def stop(self, timeout: float = 15.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        _LIVE.pop(id(self), None)
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        # children of the group may outlive the parent for a moment
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not all(_port_free(self.host, p) for p in PORTS):
            time.sleep(0.05)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def close(self) -> None:
        self.stop()
        if not self.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> SambaLab:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def log_tail(self, n: int = 40) -> str:
        lines: list[str] = []
        for f in (self.workdir / "log" / "stdout.log", self.log_file):
            with contextlib.suppress(OSError):
                lines += f.read_text(errors="replace").splitlines()[-n:]
        return "\n".join(lines[-n:])

    # ------------------------------------------------------------------ LDAP admin

    def _tls(self):
        """ldap3 Tls verifying chain and host name with OpenSSL (ldap3's own host
        name check relies on the deprecated ssl.match_hostname)."""
        import ldap3

        ctx = ssl.create_default_context(cafile=str(self.ca_cert))
        host = self.host

        class _Tls(ldap3.Tls):
            def wrap_socket(self, connection, do_handshake=False):
                connection.socket = ctx.wrap_socket(
                    connection.socket, server_hostname=host, do_handshake_on_connect=do_handshake
                )

        return _Tls(validate=ssl.CERT_REQUIRED)

    def connection(self, bind_dn: str, password: str, *, timeout: float = 5, check_names: bool = True):
        """A bound LDAPS ldap3 connection (raises ldap3 exceptions on failure)."""
        import ldap3

        server = ldap3.Server(
            self.host, port=636, use_ssl=True, tls=self._tls(), get_info=ldap3.NONE, connect_timeout=timeout
        )
        conn = ldap3.Connection(
            server,
            user=bind_dn,
            password=password,
            authentication=ldap3.SIMPLE,
            receive_timeout=timeout,
            raise_exceptions=True,
            check_names=check_names,
        )
        conn.bind()
        return conn

    def admin_connection(self, *, timeout: float = 5, check_names: bool = True):
        return self.connection(self.admin_dn, ADMIN_PASSWORD, timeout=timeout, check_names=check_names)

    @contextlib.contextmanager
    def _admin(self, check_names: bool = True):
        conn = self.admin_connection(check_names=check_names)
        try:
            yield conn
        finally:
            conn.unbind()

    def _modify(self, dn: str, changes: dict) -> None:
        import ldap3

        with self._admin() as c:
            c.modify(dn, {k: [(ldap3.MODIFY_REPLACE, v if isinstance(v, list) else [v])] for k, v in changes.items()})

    def read(self, name_or_dn: str, attrs: list[str]) -> dict:
        """Raw attribute values of an entry (for assertions in tests)."""
        import ldap3

        dn = name_or_dn if "=" in name_or_dn else self.user_dn(name_or_dn)
        with self._admin() as c:
            c.search(dn, "(objectClass=*)", search_scope=ldap3.BASE, attributes=attrs)
            return {k: v for k, v in c.response[0]["raw_attributes"].items()}

    def add_user(
        self,
        name: str,
        password: str = DEFAULT_PASSWORD,
        *,
        groups: tuple[str, ...] | list[str] = (),
        disabled: bool = False,
        upn: str | None = None,
        mail: str | None = None,
        sip: str | None = None,
        display_name: str | None = None,
        proxy_addresses: tuple[str, ...] | list[str] = (),
        password_never_expires: bool = False,
        **attrs,
    ) -> str:
        """Create a user under CN=Users; extra LDAP attributes as keyword arguments
        (use the LDAP name; ``msRTCSIP_PrimaryUserAddress`` style names get ``-``)."""
        dn = self.user_dn(name)
        uac = UF_NORMAL_ACCOUNT | (UF_ACCOUNTDISABLE if disabled else 0)
        if password_never_expires:
            uac |= UF_DONT_EXPIRE_PASSWD
        entry: dict[str, object] = {
            "sAMAccountName": name,
            "userPrincipalName": upn or self.upn(name),
            "displayName": display_name or name,
            "unicodePwd": f'"{password}"'.encode("utf-16-le"),
            "userAccountControl": str(uac),
        }
        if mail:
            entry["mail"] = mail
        if sip:
            entry[LDAP_ATTR_SIP] = sip
            entry["msRTCSIP-UserEnabled"] = "TRUE"
        if proxy_addresses:
            entry["proxyAddresses"] = list(proxy_addresses)
        for k, v in attrs.items():
            entry[k.replace("_", "-") if k.startswith("msRTCSIP_") else k] = v
        with self._admin() as c:
            c.add(dn, ["top", "person", "organizationalPerson", "user"], entry)
        for g in groups:
            self.add_member(g, dn)
        return dn

    def new_user(self, prefix: str = "t", **kwargs) -> str:
        """Create a user with a unique name (for tests that change account state);
        keyword arguments as for add_user. Returns the sAMAccountName."""
        import secrets

        name = f"{prefix}{secrets.token_hex(4)}"[:20]
        self.add_user(name, kwargs.pop("password", DEFAULT_PASSWORD), **kwargs)
        return name

    def add_group(self, name: str, members: tuple[str, ...] | list[str] = ()) -> str:
        dn = self.group_dn(name)
        with self._admin() as c:
            # -2147483646 = global security group
            c.add(dn, ["top", "group"], {"sAMAccountName": name, "groupType": "-2147483646"})
        for m in members:
            self.add_member(name, m)
        return dn

    def add_member(self, group: str, member: str) -> None:
        import ldap3

        gdn = group if "=" in group else self.group_dn(group)
        mdn = member if "=" in member else self.user_dn(member)
        with self._admin() as c:
            c.modify(gdn, {"member": [(ldap3.MODIFY_ADD, [mdn])]})

    def remove_member(self, group: str, member: str) -> None:
        import ldap3

        gdn = group if "=" in group else self.group_dn(group)
        mdn = member if "=" in member else self.user_dn(member)
        with self._admin() as c:
            c.modify(gdn, {"member": [(ldap3.MODIFY_DELETE, [mdn])]})

    def delete(self, name_or_dn: str) -> None:
        dn = name_or_dn if "=" in name_or_dn else self.user_dn(name_or_dn)
        with self._admin() as c:
            c.delete(dn)

    def _uac(self, name: str) -> int:
        return int(self.read(name, ["userAccountControl"])["userAccountControl"][0])

    def disable(self, name: str) -> None:
        self._modify(self.user_dn(name), {"userAccountControl": str(self._uac(name) | UF_ACCOUNTDISABLE)})

    def enable(self, name: str) -> None:
        self._modify(self.user_dn(name), {"userAccountControl": str(self._uac(name) & ~UF_ACCOUNTDISABLE)})

    def set_password(self, name: str, password: str) -> None:
        """Administrative reset (as Administrator, over LDAPS)."""
        self._modify(self.user_dn(name), {"unicodePwd": f'"{password}"'.encode("utf-16-le")})

    def expire(self, name: str, when: _dt.datetime | None = None) -> None:
        """Set accountExpires (default: one hour ago)."""
        when = when or _dt.datetime.now(_dt.UTC) - _dt.timedelta(hours=1)
        self._modify(self.user_dn(name), {"accountExpires": str(filetime(when))})

    def unexpire(self, name: str) -> None:
        self._modify(self.user_dn(name), {"accountExpires": "0"})

    def require_password_change(self, name: str) -> None:
        self._modify(self.user_dn(name), {"pwdLastSet": "0"})

    def clear_password_change(self, name: str) -> None:
        self._modify(self.user_dn(name), {"pwdLastSet": "-1"})  # -1 = "now"

    def lock_by_bad_binds(self, name: str, attempts: int | None = None) -> int:
        """Bind as ``name`` with a wrong password until the DC locks the account.
        Returns the number of failed binds made."""
        import ldap3

        n = attempts or self.lockout_threshold
        for i in range(n):
            try:
                self.connection(self.user_dn(name), f"wrong-{i}-{time.monotonic_ns()}").unbind()
            except (ldap3.core.exceptions.LDAPBindError, ldap3.core.exceptions.LDAPInvalidCredentialsResult):
                pass
            else:
                raise LabError(f"a wrong password bound as {name}")
        return n

    def unlock(self, name: str) -> None:
        self._modify(self.user_dn(name), {"lockoutTime": "0"})

    def is_locked(self, name: str) -> bool:
        v = self.read(name, ["msDS-User-Account-Control-Computed"])
        return bool(int(v["msDS-User-Account-Control-Computed"][0]) & 0x10)

    def can_bind(self, name: str, password: str | None = None) -> bool:
        import ldap3

        try:
            self.connection(self.user_dn(name), password or DEFAULT_PASSWORD).unbind()
            return True
        except (ldap3.core.exceptions.LDAPBindError, ldap3.core.exceptions.LDAPInvalidCredentialsResult):
            return False


# --------------------------------------------------------------------------- config + template


def _write_smb_conf(d: Path, host: str, *, schema_updates: bool = False) -> None:
    for sub in ("etc", "private", "state", "cache", "lock", "run", "log", "bind-dns"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    tls = d / "private" / "tls-lab"
    (d / "etc" / "smb.conf").write_text(f"""# ucgate Samba AD lab (generated by tests/lab/samba.py)
[global]
    netbios name = {DC_HOSTNAME.upper()}
    workgroup = {NETBIOS_DOMAIN}
    realm = {REALM}
    server role = active directory domain controller
    server services = ldap, cldap, kdc, rpc
    interfaces = {host}/8
    bind interfaces only = yes
    private dir = {d}/private
    state directory = {d}/state
    cache directory = {d}/cache
    lock directory = {d}/lock
    pid directory = {d}/run
    ncalrpc dir = {d}/run/ncalrpc
    ntp signd socket directory = {d}/run/ntp_signd
    winbindd socket directory = {d}/run/winbindd
    binddns dir = {d}/bind-dns
    log file = {d}/log/samba.log
    log level = 1
    max log size = 0
    panic action =
    idmap_ldb:use rfc2307 = yes
    tls enabled = yes
    tls keyfile = {tls}/key.pem
    tls certfile = {tls}/cert.pem
    tls cafile = {tls}/ca.pem
    tls priority = NORMAL:-VERS-SSL3.0:-VERS-TLS1.0:-VERS-TLS1.1
    ldap server require strong auth = yes
    dsdb:schema update allowed = {"yes" if schema_updates else "no"}
    nsupdate command = /bin/true
    spn update command = /bin/true
    dns update command = /bin/true

[sysvol]
    path = {d}/state/sysvol
    read only = no

[netlogon]
    path = {d}/state/sysvol/{DNS_DOMAIN}/scripts
    read only = no
""")


def _ignore_sockets(src: str, names: list[str]) -> set[str]:
    import stat

    return {n for n in names if stat.S_ISSOCK(os.lstat(os.path.join(src, n)).st_mode)}


def _remove_sockets(d: Path) -> None:
    for p in d.rglob("*"):
        if p.is_socket():
            p.unlink()


def template_dir() -> Path:
    return CACHE_ROOT / f"template-{samba_version()}-f{LAB_FORMAT}"


def ensure_template() -> Path:
    """Return the cached provisioned template, building it (under a lock) if needed."""
    tdir = template_dir()
    if (tdir / ".complete").exists():
        return tdir
    CACHE_ROOT.mkdir(parents=True, exist_ok=True)
    with open(CACHE_ROOT / ".lock", "w") as lockf:
        fcntl.flock(lockf, fcntl.LOCK_EX)
        if (tdir / ".complete").exists():
            return tdir
        build = Path(tempfile.mkdtemp(prefix="build-", dir=CACHE_ROOT))
        try:
            _build_template(build)
            shutil.rmtree(tdir, ignore_errors=True)
            os.rename(build, tdir)
        except BaseException:
            shutil.rmtree(build, ignore_errors=True)
            raise
    return tdir


def _build_template(build: Path) -> None:
    t0 = time.monotonic()
    empty_conf = build / "provision-empty.conf"
    empty_conf.write_text("[global]\n")  # keep /etc/samba/smb.conf out of it
    cmd = [
        "samba-tool",
        "domain",
        "provision",
        f"--configfile={empty_conf}",
        f"--targetdir={build}",
        f"--realm={REALM}",
        f"--domain={NETBIOS_DOMAIN}",
        "--server-role=dc",
        "--dns-backend=NONE",
        "--use-rfc2307",
        f"--adminpass={ADMIN_PASSWORD}",
        f"--host-name={DC_HOSTNAME}",
        "--host-ip=127.0.0.2",
        "--option=interfaces=127.0.0.2",
        "--option=bind interfaces only=yes",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise LabError(f"samba-tool domain provision failed:\n{r.stdout}\n{r.stderr}")
    empty_conf.unlink()
    # Provision leaves its own smb.conf and krb5.conf: replaced per run.
    _make_tls(build / "private" / "tls-lab")
    t_prov = time.monotonic() - t0

    # Seed through LDAP against a temporarily running copy (schema updates allowed).
    lab = SambaLab(workdir=build, host=pick_host(), keep=True)
    lab._write_config(schema_updates=True)
    lab.start()
    try:
        _seed(lab)
    finally:
        lab.stop()
    _write_smb_conf(build, "127.0.0.2")  # placeholder; each run rewrites it
    for junk in ("log", "run", "lock", "cache"):
        shutil.rmtree(build / junk, ignore_errors=True)
    _remove_sockets(build)
    (build / ".complete").write_text(
        json.dumps(
            {
                "samba": samba_version(),
                "format": LAB_FORMAT,
                "provision_seconds": round(t_prov, 2),
                "total_seconds": round(time.monotonic() - t0, 2),
                "built": _dt.datetime.now(_dt.UTC).isoformat(),
            }
        )
    )


def _seed(lab: SambaLab) -> None:
    import ldap3

    with lab._admin(check_names=False) as c:  # check_names=False: allow the rootDSE ("") DN
        # -- schema: the Lync attributes, then the user class may contain them
        for cn, oid, syntax, om, single, flags in LYNC_ATTRIBUTES:
            c.add(
                f"CN={cn},{SCHEMA_DN}",
                ["top", "attributeSchema"],
                {
                    "attributeID": oid,
                    "attributeSyntax": syntax,
                    "oMSyntax": str(om),
                    "isSingleValued": "TRUE" if single else "FALSE",
                    "lDAPDisplayName": cn,
                    "adminDisplayName": cn,
                    "searchFlags": str(flags),
                    "isMemberOfPartialAttributeSet": "TRUE",
                },
            )
        c.modify("", {"schemaUpdateNow": [(ldap3.MODIFY_REPLACE, ["1"])]})
        c.modify(f"CN=User,{SCHEMA_DN}", {"mayContain": [(ldap3.MODIFY_ADD, [a[0] for a in LYNC_ATTRIBUTES])]})
        c.modify(f"CN=Contact,{SCHEMA_DN}", {"mayContain": [(ldap3.MODIFY_ADD, [a[0] for a in LYNC_ATTRIBUTES])]})
        c.modify("", {"schemaUpdateNow": [(ldap3.MODIFY_REPLACE, ["1"])]})
        # -- password and lockout policy (durations are negative 100 ns intervals)
        minutes = str(-LOCKOUT_MINUTES * 60 * 10_000_000)
        c.modify(
            BASE_DN,
            {
                "lockoutThreshold": [(ldap3.MODIFY_REPLACE, [str(LOCKOUT_THRESHOLD)])],
                "lockoutDuration": [(ldap3.MODIFY_REPLACE, [minutes])],
                "lockOutObservationWindow": [(ldap3.MODIFY_REPLACE, [minutes])],
                "pwdProperties": [(ldap3.MODIFY_REPLACE, ["0"])],  # no complexity rule
                "minPwdAge": [(ldap3.MODIFY_REPLACE, ["0"])],
                "minPwdLength": [(ldap3.MODIFY_REPLACE, ["7"])],
                "pwdHistoryLength": [(ldap3.MODIFY_REPLACE, ["0"])],
            },
        )
    lab.add_group(USERS_GROUP)
    lab.add_group(NESTED_GROUP)
    lab.add_member(USERS_GROUP, lab.group_dn(NESTED_GROUP))
    lab.add_user(SERVICE_ACCOUNT, SERVICE_PASSWORD, display_name="ucgate service account", password_never_expires=True)
    for u in SEED_USERS:
        lab.add_user(
            u.name,
            DEFAULT_PASSWORD,
            groups=u.groups,
            disabled=u.disabled,
            sip=u.sip,
            mail=u.mail,
            display_name=u.display_name,
            proxy_addresses=u.proxy_addresses,
        )


# --------------------------------------------------------------------------- CLI

STATE_FILE = CACHE_ROOT / "cli-lab.json"


def _cli_up(args) -> int:
    if STATE_FILE.exists():
        st = json.loads(STATE_FILE.read_text())
        if _pid_alive(int(st.get("pid") or 0)):
            print(f"already running: {json.dumps(st, indent=2)}")
            return 0
    t0 = time.monotonic()
    lab = SambaLab.create(host=args.host)
    lab.keep = True
    st = lab.settings()
    STATE_FILE.write_text(json.dumps(st, indent=2))
    print(json.dumps(st, indent=2))
    print(
        f"# up in {time.monotonic() - t0:.1f}s; KRB5_CONFIG={lab.krb5_conf}; stop with: python -m tests.lab.samba down",
        file=sys.stderr,
    )
    # leave samba running: detach (it has its own session) and do not reap it
    _LIVE.pop(id(lab), None)
    lab.proc = None
    return 0


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _cli_down(args) -> int:
    if not STATE_FILE.exists():
        print("not running")
        return 0
    st = json.loads(STATE_FILE.read_text())
    pid = int(st.get("pid") or 0)
    if _pid_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        for _ in range(100):
            if not _pid_alive(pid):
                break
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    shutil.rmtree(st["workdir"], ignore_errors=True)
    STATE_FILE.unlink()
    print("stopped")
    return 0


def _cli_status(args) -> int:
    if not STATE_FILE.exists():
        print("not running")
        return 1
    st = json.loads(STATE_FILE.read_text())
    alive = _pid_alive(int(st.get("pid") or 0))
    host = st["ldap_url"].split("//")[1].split(":")[0]
    ports = {p: _tcp_open(host, p) for p in PORTS}
    print(json.dumps({**st, "alive": alive, "ports": ports}, indent=2))
    return 0 if alive and all(ports.values()) else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.lab.samba", description="Throwaway Samba AD DC on loopback")
    sub = p.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="start a lab in the background")
    up.add_argument("--host", help="loopback address (default: first free 127.0.0.x)")
    sub.add_parser("down", help="stop it and remove its directory")
    sub.add_parser("status", help="show settings and whether it answers")
    sub.add_parser("rebuild", help="drop the cached template (next start provisions again)")
    args = p.parse_args(argv)
    if args.cmd == "rebuild":
        shutil.rmtree(template_dir(), ignore_errors=True)
        print(f"removed {template_dir()}")
        return 0
    return {"up": _cli_up, "down": _cli_down, "status": _cli_status}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
