"""The TLS profile ucgate's listeners offer: Mozilla's *intermediate* server-side profile
(guidelines 5.7, https://ssl-config.mozilla.org/guidelines/5.7.json): TLS 1.2 and 1.3; for
TLS 1.2 only the ECDHE AEAD suites (AES-GCM, ChaCha20-Poly1305) — no CBC, no RSA key exchange,
no SHA-1 MAC; the profile's DHE suites are left out, since no DH parameters are configured
(OpenSSL would not offer them anyway); TLS 1.3's three suites are OpenSSL's defaults; groups
X25519, prime256v1, secp384r1.

The gateway's listener (gateway/tls.py) and the uvicorn listeners of the web app and the id
service (web/app.py, app.py) use the same list.
"""

from __future__ import annotations

# Mozilla intermediate, TLS 1.2 (OpenSSL names), in the profile's order, without DHE (above).
INTERMEDIATE_TLS12_CIPHERS = ":".join(
    [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    ]
)
INTERMEDIATE_GROUPS = ("X25519", "prime256v1", "secp384r1")

__all__ = ["INTERMEDIATE_GROUPS", "INTERMEDIATE_TLS12_CIPHERS"]
