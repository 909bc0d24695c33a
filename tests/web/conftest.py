"""Fixtures for the web tests: Debian's Chromium driven by Playwright (never a downloaded
browser), a real gateway in front of the lab front end (as tests/gateway/test_devices.py),
and the web app over TLS on its own uvicorn listener, sharing the gateway's DeviceService."""

from __future__ import annotations

import asyncio
import base64
import os
import time
from pathlib import Path

import pytest
import uvicorn

from ucgate.id.otp import totp
from ucgate.web.app import create_web_app, make_context
from ucgate.web.settings import WebConfig

from ..gateway.test_devices import Lab, frontend, ids  # noqa: F401  (fixtures)
from ..support import free_port

CHROMIUM = "/usr/bin/chromium"
LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"


def _no_browser(reason: str):
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{reason} (CI is set: run scripts/install-browser)")
    pytest.skip(f"{reason}: run scripts/install-browser (Debian chromium + the playwright package)")


@pytest.fixture(scope="session")
def browser():
    if not Path(CHROMIUM).exists():
        _no_browser(f"{CHROMIUM} is not installed")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _no_browser("the playwright Python package is not installed")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    ctx = browser.new_context(ignore_https_errors=True, viewport={"width": 1280, "height": 860})
    pg = ctx.new_page()
    pg.set_default_timeout(10_000)
    yield pg
    ctx.close()


def shot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


class WebLab:
    """A gateway lab plus the web app at ``self.url``; alice is an admin, hd helpdesk, bob a user."""

    def __init__(self, lab: Lab, loop_thread, tls_files, tmp_path: Path) -> None:
        self.lab = lab
        web = WebConfig(
            user_roles={"alice": "admin", "hd": "helpdesk", "audrey": "auditor"},
            api_tokens_file=tmp_path / "api-tokens.json",
        )
        self.ctx = make_context(lab.ids, web=web, devices=lab.devices, live_users=lab.gateway.live_users)
        port = free_port()
        self.server = uvicorn.Server(
            uvicorn.Config(
                create_web_app(self.ctx),
                host="127.0.0.1",
                port=port,
                log_level="warning",
                lifespan="off",
                ssl_certfile=str(tls_files[0]),
                ssl_keyfile=str(tls_files[1]),
                access_log=False,
            )
        )
        self.lt = loop_thread

        async def start():
            task = asyncio.ensure_future(self.server.serve())
            for _ in range(300):
                if self.server.started:
                    return task
                await asyncio.sleep(0.01)
            raise RuntimeError("web app did not start")

        loop_thread.run(start())
        self.url = f"https://127.0.0.1:{port}"
        self.secrets: dict[str, bytes] = {}

    def user(self, name: str, *, totp_enrolled: bool = False) -> str:
        """Make sure ``name`` exists; returns a fresh ASP (its sign-in password here)."""
        ids = self.lab.ids
        if ids.users.get(name) is None:
            ids.users.add(name, upn=f"{name}@contoso.com", sip_uri=f"sip:{name}@contoso.com")
        if totp_enrolled and name not in self.secrets:
            otp = self.ctx.console.otp
            e = otp.begin_enrolment(name)
            secret = base64.b32decode(e.secret_b32 + "=" * (-len(e.secret_b32) % 8))
            assert otp.confirm_enrolment(name, totp(secret, time.time() - 30))
            self.secrets[name] = secret
        return ids.asps.create(name, "web sign-in")[1]

    def code(self, name: str, offset: int = 0) -> str:
        return totp(self.secrets[name], time.time() + 30 * offset)

    def stop(self) -> None:
        self.server.should_exit = True
        time.sleep(0.3)


@pytest.fixture
def make_web(loop_thread, tls_files, frontend, ids, tmp_path):
    made = []

    def make(**policy):
        lab = Lab(loop_thread, tls_files, frontend, ids, **policy)
        w = WebLab(lab, loop_thread, tls_files, tmp_path)
        made.append(w)
        return w

    yield make
    for w in made:
        w.stop()
        w.lab.stop()
