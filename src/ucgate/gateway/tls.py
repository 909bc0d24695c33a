"""TLS contexts for the listener and the upstreams, and the lab's self-signed certificate.

The listener follows Mozilla's *intermediate* server-side TLS profile (policy/tls.py) (guidelines 5.7,
https://ssl-config.mozilla.org/guidelines/5.7.json): TLS 1.2 and 1.3; for TLS 1.2 only the
ECDHE AEAD suites (AES-GCM, ChaCha20-Poly1305) — no CBC, no RSA key exchange, no SHA-1 MAC;
the profile's DHE suites are left out, since no DH parameters are configured (OpenSSL would
not offer them anyway); TLS 1.3's three suites are OpenSSL's defaults; groups X25519,
prime256v1, secp384r1 (OpenSSL's default list adds X448, secp521r1 and the FFDHE groups); the
client's cipher preference (the profile's ``prefer_server_ciphers off``: every suite left is
strong); no compression, no renegotiation.
"""

from __future__ import annotations

import ctypes
import datetime as dt
import ipaddress
import logging
import os
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ..policy.tls import INTERMEDIATE_GROUPS, INTERMEDIATE_TLS12_CIPHERS

log = logging.getLogger("ucgate.gateway.tls")

# The demo/test certificate: at most the CA/Browser Forum's 398 days for a server certificate.
SELF_SIGNED_DAYS = 397
_SSL_CTRL_SET_GROUPS_LIST = 92  # SSL_CTX_set1_groups_list() is this SSL_CTX_ctrl (ssl.h)


def set_groups(ctx: ssl.SSLContext, groups: tuple[str, ...] = INTERMEDIATE_GROUPS) -> bool:
    """Limit the key-exchange groups of ``ctx`` (the ``supported_groups`` it accepts and its
    TLS 1.3 key shares). Python 3.11 has no API for a list (``set_ecdh_curve`` takes one), so
    this calls OpenSSL's ``SSL_CTX_set1_groups_list`` on the context's ``SSL_CTX``, found where
    CPython keeps it (right after the object header of ``_ssl._SSLContext``) and accepted only
    if OpenSSL reads back the same options as Python does for that pointer. Returns False
    (after ``set_ecdh_curve("prime256v1")``: one group, still within the profile) when that
    cannot be done."""
    setter = getattr(ctx, "set_groups", None)  # newer Pythons
    if setter is not None:
        setter(":".join(groups))
        return True
    try:
        import _ssl

        lib = ctypes.CDLL(_ssl.__file__)  # its symbols and those of the libssl it uses
        get_options = lib.SSL_CTX_get_options
        get_options.argtypes, get_options.restype = [ctypes.c_void_p], ctypes.c_uint64
        ctrl = lib.SSL_CTX_ctrl
        ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_char_p]
        ctrl.restype = ctypes.c_long
        ptr = ctypes.c_void_p.from_address(id(ctx) + object.__basicsize__).value
        if (
            ptr
            and get_options(ptr) == int(ctx.options)
            and ctrl(ptr, _SSL_CTRL_SET_GROUPS_LIST, 0, ":".join(groups).encode()) == 1
        ):
            return True
    except (OSError, AttributeError, ValueError) as e:
        log.debug("SSL_CTX_set1_groups_list not reachable: %r", e)
    log.warning("TLS groups: cannot set %s here; offering prime256v1 only", ", ".join(groups))
    ctx.set_ecdh_curve("prime256v1")
    return False


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """Listener context: Mozilla's intermediate profile (module docstring)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_COMPRESSION
    ctx.options |= getattr(ssl, "OP_NO_RENEGOTIATION", 0)
    ctx.set_ciphers(INTERMEDIATE_TLS12_CIPHERS)  # TLS 1.2 only; 1.3 suites stay the defaults
    set_groups(ctx)
    ctx.set_alpn_protocols(["http/1.1"])
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


def upstream_context(verify: bool, ca_bundle: Path | None) -> ssl.SSLContext:
    """Upstream context: full verification (chain, expiry, host name) unless turned off."""
    if ca_bundle is not None:
        ctx = ssl.create_default_context(cafile=str(ca_bundle))
    else:
        ctx = ssl.create_default_context()
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def certificate_der(cert_path: Path) -> bytes:
    """The DER of the first certificate in a PEM file (our leaf, for channel binding)."""
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    return cert.public_bytes(serialization.Encoding.DER)


def make_self_signed(cert_path: Path, key_path: Path, names: list[str], *, days: int = SELF_SIGNED_DAYS) -> None:
    """Write a self-signed *server* certificate and key for the demo and tests (key file 0600):
    a leaf (CA:FALSE, keyUsage digitalSignature, extendedKeyUsage serverAuth) that clients
    trust by pinning it as their CA file; it can sign nothing else."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    sans: list[x509.GeneralName] = []
    for n in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            sans.append(x509.DNSName(n))
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    key_bytes = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key_bytes)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def is_proper_leaf(cert_path: Path, *, min_days_left: int = 30) -> bool:
    """Is the certificate in ``cert_path`` a server leaf as :func:`make_self_signed` writes it
    now (not a CA, serverAuth, valid at most 398 days) with ``min_days_left`` to go? The demo
    replaces one that is not (older versions wrote a CA:TRUE certificate valid 825 days)."""
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except (OSError, ValueError, x509.ExtensionNotFound):
        return False
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    left = end - dt.datetime.now(dt.UTC)
    return (
        not bc.ca
        and ExtendedKeyUsageOID.SERVER_AUTH in eku
        and end - start <= dt.timedelta(days=398)
        and left >= dt.timedelta(days=min_days_left)
    )
