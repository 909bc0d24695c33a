"""The web listener's /healthz and /readyz (``ucgate serve`` with [web] enabled): the store's
readiness, no session or token needed."""

from __future__ import annotations

from starlette.testclient import TestClient

from ucgate.config import LockoutConfig
from ucgate.id.factory import open_services
from ucgate.id.health import StoreProbe
from ucgate.web.app import create_web_app, make_context
from ucgate.web.settings import WebConfig


def test_web_healthz_and_readyz(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "keys").mkdir(mode=0o700)
    ids = open_services(
        store_url=f"sqlite:///{tmp_path / 'data' / 'ucgate.db'}",
        key_file=tmp_path / "keys" / "ucgate.key",
        audit_file=None,
        lockout=LockoutConfig(user_failures=5, ip_failures=50, window=900),
    )
    try:
        ctx = make_context(ids, web=WebConfig(api_tokens_file=tmp_path / "api-tokens.json"))
        c = TestClient(
            create_web_app(ctx, readiness=StoreProbe(ids.components.repo.engine)), base_url="https://testserver"
        )
        assert c.get("/healthz").json() == {"status": "ok"}
        r = c.get("/readyz")
        assert r.status_code == 200 and r.json() == {"status": "ready"}

        async def down():
            return False, "store unreachable (OperationalError)"

        r = TestClient(create_web_app(ctx, readiness=down), base_url="https://testserver").get("/readyz")
        assert r.status_code == 503
        assert r.json() == {"status": "not-ready", "reason": "store unreachable (OperationalError)"}
    finally:
        ids.close()
