"""Issue 13 item 6: what the gateway's TLS listener offers (Mozilla's intermediate profile), read
off the real listener by offering it one suite or one group at a time, and the demo's
self-signed certificate (a server leaf, not a CA)."""

from __future__ import annotations

import datetime as dt
import shutil
import socket
import ssl
import subprocess
import warnings

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ucgate.gateway.tls import is_proper_leaf, make_self_signed
from ucgate.lab.demo import ensure_demo_certificate

from ..support import start_gateway

# https://ssl-config.mozilla.org/guidelines/5.7.json, "intermediate" (ciphers.openssl), without
# the DHE suites (the gateway configures no DH parameters)
INTERMEDIATE_ECDSA = {"ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-ECDSA-CHACHA20-POLY1305"}
INTERMEDIATE_RSA = {"ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-RSA-AES256-GCM-SHA384", "ECDHE-RSA-CHACHA20-POLY1305"}
INTERMEDIATE_GROUPS = ("X25519", "prime256v1", "secp384r1")
OTHER_GROUPS = ("X448", "secp521r1")  # in OpenSSL's default list, not in the profile


def _rsa_cert(d):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    (d / "rsa.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / "rsa.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return d / "rsa.crt", d / "rsa.key"


def _client(tls12: bool) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls12:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    else:
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    return ctx


def _handshake(port: int, ctx: ssl.SSLContext) -> tuple[str, str] | None:
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            ctx.wrap_socket(raw, server_hostname="localhost") as s,
        ):
            name, version, _ = s.cipher()
            return name, version
    except (ssl.SSLError, ConnectionError):
        return None


def _tls12_suites_offered(port: int) -> set[str]:
    """Every TLS 1.2 suite this OpenSSL knows, offered alone: the ones the listener takes."""
    probe = _client(True)
    probe.set_ciphers("ALL:COMPLEMENTOFALL:@SECLEVEL=0")
    names = {c["name"] for c in probe.get_ciphers() if c["protocol"] != "TLSv1.3"}
    taken = set()
    for name in sorted(names):
        ctx = _client(True)
        try:
            ctx.set_ciphers(name + ":@SECLEVEL=0")
        except ssl.SSLError:
            continue
        got = _handshake(port, ctx)
        if got is not None:
            assert got == (name, "TLSv1.2")
            taken.add(name)
    return taken


def _groups_offered(port: int, tls12: bool) -> set[str]:
    taken = set()
    for group in INTERMEDIATE_GROUPS + OTHER_GROUPS:
        ctx = _client(tls12)
        ctx.set_ecdh_curve(group)  # the client's supported_groups: this one only
        if _handshake(port, ctx) is not None:
            taken.add(group)
    return taken


@pytest.fixture
def rsa_files(tmp_path):
    return _rsa_cert(tmp_path)


@pytest.mark.parametrize("kind", ["ecdsa", "rsa"])
def test_listener_offers_mozilla_intermediate(loop_thread, tls_files, rsa_files, upstream, kind):
    cert, key = tls_files if kind == "ecdsa" else rsa_files
    gw = start_gateway(loop_thread, cert, key, upstream.port)
    try:
        suites = _tls12_suites_offered(gw.port)
        assert suites == (INTERMEDIATE_ECDSA if kind == "ecdsa" else INTERMEDIATE_RSA)
        assert all("-GCM-" in s or "CHACHA20" in s for s in suites)  # AEAD only: no CBC
        # groups: TLS 1.3 key shares; TLS 1.2 ECDHE with the RSA certificate only (with an ECDSA
        # one, TLS 1.2's supported_groups also names the curves the certificate may be on)
        for tls12 in (False, True) if kind == "rsa" else (False,):
            assert _groups_offered(gw.port, tls12) == set(INTERMEDIATE_GROUPS), tls12
        # TLS 1.3: the three standard suites; TLS 1.1 and older: refused
        assert _handshake(gw.port, _client(False))[1] == "TLSv1.3"
        old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        old.check_hostname, old.verify_mode = False, ssl.CERT_NONE
        old.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            old.maximum_version = ssl.TLSVersion.TLSv1_1
        old.set_ciphers("ALL:@SECLEVEL=0")
        assert _handshake(gw.port, old) is None
        if shutil.which("openssl"):  # the same from another client: s_client, one group each
            taken = set()
            for group in INTERMEDIATE_GROUPS + OTHER_GROUPS:
                out = subprocess.run(
                    ["openssl", "s_client", "-connect", f"127.0.0.1:{gw.port}", "-tls1_3", "-groups", group],
                    input=b"",
                    capture_output=True,
                    timeout=20,
                )
                if b"Server Temp Key" in out.stdout:
                    taken.add(group)
            assert taken == set(INTERMEDIATE_GROUPS)
    finally:
        gw.stop()


def test_self_signed_certificate_is_a_server_leaf(tmp_path):
    make_self_signed(tmp_path / "c.pem", tmp_path / "k.pem", ["localhost", "127.0.0.1"])
    cert = x509.load_pem_x509_certificate((tmp_path / "c.pem").read_bytes())
    ext = cert.extensions
    assert ext.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert ext.get_extension_for_class(x509.BasicConstraints).critical
    assert list(ext.get_extension_for_class(x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.SERVER_AUTH]
    ku = ext.get_extension_for_class(x509.KeyUsage).value
    assert ku.digital_signature and not ku.key_cert_sign and not ku.crl_sign
    assert cert.not_valid_after_utc - cert.not_valid_before_utc <= dt.timedelta(days=397, minutes=5)
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert is_proper_leaf(tmp_path / "c.pem")
    # still trusted by pinning it (what the tests and the demo's curl --cacert do)
    ssl.create_default_context(cafile=str(tmp_path / "c.pem"))


def test_demo_replaces_an_old_ca_certificate(tmp_path):
    """A demo directory from before holds a CA:TRUE certificate valid 825 days: replaced."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    old = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=825))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    (tmp_path / "gateway.crt").write_bytes(old.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "gateway.key").write_bytes(b"old")
    assert not is_proper_leaf(tmp_path / "gateway.crt")
    cert, _ = ensure_demo_certificate(tmp_path)
    assert is_proper_leaf(cert)
    before = cert.read_bytes()
    ensure_demo_certificate(tmp_path)  # a proper one is kept
    assert cert.read_bytes() == before
