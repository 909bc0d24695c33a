"""The uvicorn listeners (the web app, the id service's API) offer the gateway's TLS 1.2
suites (policy/tls.py), not uvicorn's default cipher string "TLSv1" (CBC and SHA-1 suites)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from ucgate.app import id_server
from ucgate.gateway.tls import make_self_signed
from ucgate.policy.tls import INTERMEDIATE_TLS12_CIPHERS
from ucgate.web.app import web_server


@pytest.fixture
def cert(tmp_path):
    c, k = tmp_path / "c.pem", tmp_path / "k.pem"
    make_self_signed(c, k, ["localhost"])
    return c, k


def _tls12_suites(server) -> set[str]:
    server.config.load()  # what uvicorn does before it listens: builds its SSLContext
    return {c["name"] for c in server.config.ssl.get_ciphers() if c["protocol"] == "TLSv1.2"}


def test_web_and_id_listeners_offer_only_the_profiles_tls12_suites(cert):
    allowed = set(INTERMEDIATE_TLS12_CIPHERS.split(":"))
    c, k = cert
    web = SimpleNamespace(tls_cert=c, tls_key=k, listen_host="127.0.0.1", listen_port=0)
    config = SimpleNamespace(web=web, gateway=SimpleNamespace(tls_cert=None, tls_key=None), log_level="warning")
    suites = _tls12_suites(web_server(config, lambda scope, receive, send: None))
    assert suites and suites <= allowed, suites - allowed
    ids = SimpleNamespace(tls_cert=c, tls_key=k, listen_host="127.0.0.1", listen_port=0)
    config = SimpleNamespace(id_service=ids, log_level="warning", log_format="text")
    suites = _tls12_suites(id_server(config, lambda scope, receive, send: None))  # type: ignore[arg-type]
    assert suites and suites <= allowed, suites - allowed
    assert not any("CBC" in s or s.endswith("-SHA") for s in suites)
