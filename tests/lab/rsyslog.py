"""Debian's rsyslog as the SIEM's syslog receiver, for the audit delivery tests
(``rsyslog`` and ``rsyslog-gnutls``, installed by ``scripts/bootstrap --test``).

:class:`RsyslogLab` writes a configuration into a temporary directory and runs
``rsyslogd -n -f <cfg> -i <pid file>`` (foreground, nothing of the system's rsyslog: no
``/dev/log``, no system pid file) with one ``imtcp`` input on a loopback port — plain TCP, or
TLS with the ``gtls`` driver (``authmode`` ``anon``: the client verifies the server; or
``x509/certvalid``: the server also wants a client certificate from the CA) — and writes every
message it receives as one JSON object per line (the RFC 5424 fields rsyslog parsed, and MSG)
to ``received.jsonl``. :func:`make_ca` makes a throwaway CA and leaf certificates.

rsyslog missing: the tests are skipped with the reason, except in CI (``CI=true``), where that is
a failure (as the Samba lab, ``tests/lab/fixtures.py``). Failing to start is always a failure.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from ..support import free_port
from .fixtures import _in_ci

RSYSLOGD = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"
GTLS_MODULE = Path("/usr/lib/x86_64-linux-gnu/rsyslog/lmnsd_gtls.so")


def require_rsyslog(tls: bool = False) -> None:
    missing = []
    if not Path(RSYSLOGD).exists():
        missing.append("rsyslog")
    if tls and not any(Path("/usr/lib").glob("*/rsyslog/lmnsd_gtls.so")) and not GTLS_MODULE.exists():
        missing.append("rsyslog-gnutls")
    if missing:
        reason = f"{' and '.join(missing)} not installed (scripts/bootstrap --test installs it)"
        if _in_ci():
            pytest.fail(f"syslog receiver unavailable in CI: {reason}", pytrace=False)
        pytest.skip(reason)


def make_ca(d: Path, leaves: dict[str, list[str]]) -> dict[str, tuple[Path, Path]]:
    """A CA (``ca.pem``) and one leaf per name (``<name>.pem``, ``<name>.key``) for the given
    DNS names / IP addresses. Returns {name: (cert, key)}, with "ca" for the CA itself."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.UTC)

    def pem_key(k) -> bytes:
        return k.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ucgate test syslog CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
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
    out = {"ca": (d / "ca.pem", d / "ca.key")}
    out["ca"][0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    out["ca"][1].write_bytes(pem_key(ca_key))
    for name, sans in leaves.items():
        key = ec.generate_private_key(ec.SECP256R1())
        alt = []
        for s in sans:
            try:
                alt.append(x509.IPAddress(ipaddress.ip_address(s)))
            except ValueError:
                alt.append(x509.DNSName(s))
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, sans[0] if sans else name)]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        out[name] = (d / f"{name}.pem", d / f"{name}.key")
        out[name][0].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        out[name][1].write_bytes(pem_key(key))
        out[name][1].chmod(0o600)
    return out


class RsyslogLab:
    """One rsyslogd receiving on ``127.0.0.1:<port>`` (see the module docstring)."""

    def __init__(
        self,
        *,
        tls: bool = False,
        authmode: str = "anon",
        ca: Path | None = None,
        cert: Path | None = None,
        key: Path | None = None,
        port: int | None = None,
    ) -> None:
        require_rsyslog(tls)
        self.tls, self.authmode, self.ca, self.cert, self.key = tls, authmode, ca, cert, key
        self.dir = Path(tempfile.mkdtemp(prefix="ucgate-rsyslog-"))
        self.port = port or free_port()
        self.cfg = self.dir / "rsyslog.conf"
        self.out = self.dir / "received.jsonl"
        self.stderr = self.dir / "rsyslogd.stderr"
        self.proc: subprocess.Popen | None = None

    def config(self) -> str:
        glob = f'workDirectory="{self.dir}" maxMessageSize="64k"'
        if self.tls:
            glob += (
                f' defaultNetstreamDriver="gtls" defaultNetstreamDriverCAFile="{self.ca}"'
                f' defaultNetstreamDriverCertFile="{self.cert}" defaultNetstreamDriverKeyFile="{self.key}"'
            )
            imtcp = (
                f'module(load="imtcp" streamDriver.name="gtls" streamDriver.mode="1" '
                f'streamDriver.authMode="{self.authmode}")'
            )
        else:
            imtcp = 'module(load="imtcp")'
        fields = [
            ("pri", "pri"),
            ("protocol", "protocol-version"),
            ("timestamp", "timereported"),
            ("hostname", "hostname"),
            ("app_name", "app-name"),
            ("procid", "procid"),
            ("msgid", "msgid"),
            ("structured_data", "structured-data"),
            ("msg", "msg"),
        ]
        props = "\n".join(
            f'  property(outname="{o}" name="{n}" format="jsonf"'
            + (' dateFormat="rfc3339"' if n == "timereported" else "")
            + ")"
            for o, n in fields
        )
        return f"""\
global({glob})
{imtcp}
input(type="imtcp" address="127.0.0.1" port="{self.port}")
template(name="ucgate_json" type="list" option.jsonf="on") {{
{props}
}}
action(type="omfile" file="{self.out}" template="ucgate_json" asyncWriting="off" flushOnTXEnd="on")
"""

    def start(self) -> RsyslogLab:
        self.cfg.write_text(self.config())
        check = subprocess.run([RSYSLOGD, "-N1", "-f", str(self.cfg)], capture_output=True, text=True)
        if check.returncode != 0:
            raise AssertionError(f"rsyslogd -N1 refused the configuration:\n{check.stderr}\n{self.config()}")
        with open(self.stderr, "ab") as err:
            self.proc = subprocess.Popen(
                [RSYSLOGD, "-n", "-f", str(self.cfg), "-i", str(self.dir / "pid")], stdout=err, stderr=err
            )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"rsyslogd exited ({self.proc.returncode}): {self.stderr.read_text()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"rsyslogd does not listen on {self.port}: {self.stderr.read_text()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def received(self) -> list[dict]:
        """The messages received so far: rsyslog's parsed fields, MSG in ``msg``."""
        if not self.out.exists():
            return []
        # option.jsonf writes one object per message, one per line
        return [json.loads(line) for line in self.out.read_text().splitlines() if line.strip()]

    def wait_for(self, n: int, timeout: float = 10.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.received()
            if len(got) >= n:
                return got
            time.sleep(0.05)
        raise AssertionError(
            f"rsyslog received {len(self.received())} of {n} messages within {timeout} s; "
            f"stderr: {self.stderr.read_text() if self.stderr.exists() else ''}"
        )
