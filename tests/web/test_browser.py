"""The admin UI and the portal in a real browser (Debian's Chromium, headless, via Playwright),
against a real gateway in front of the lab front end."""

from __future__ import annotations

import base64
import http.client
import re
import ssl
import time

import httpx

from ..gateway.test_devices import eas, eas_status, eas_target
from .conftest import shot


def admin_sign_in(page, w, user="alice", *, otp_offset=0):
    asp = w.user(user, totp_enrolled=True)
    page.goto(f"{w.url}/admin/")
    assert "/admin/login" in page.url  # signed out: the sign-in page
    page.fill("#username", user)
    page.fill("#password", asp)
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r"/admin/login/otp"))
    page.fill("#code", w.code(user, otp_offset))
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r"/admin/$"))


def portal_sign_in(page, w, user, asp):
    page.goto(f"{w.url}/portal/")
    page.fill("#username", user)
    page.fill("#password", asp)
    page.click("button[type=submit]")


def test_admin_with_totp_approves_a_quarantined_device_which_then_gets_through(make_web, page):
    w = make_web()  # default policy: a new device is quarantined
    asp = w.lab.asp("alice")
    with w.lab.client() as c:
        r = eas(c, asp, device="applphone1")
        assert eas_status(r) == 129 and r.headers["x-ucgate-reason"] == "new-device-quarantined"

    # a bad sign-in first: the message sits next to the field
    page.goto(f"{w.url}/admin/login")
    page.fill("#username", "alice")
    page.click("button[type=submit]")
    assert page.locator("#password-error").inner_text() == "Enter your password."
    shot(page, "admin-login-error")

    admin_sign_in(page, w)
    assert page.locator("#quarantined-count").inner_text() == "1"
    assert page.locator("svg.chart").count() == 1
    shot(page, "admin-dashboard")
    page.click("text=Devices")
    page.wait_for_url(re.compile(r"/admin/devices"))
    page.fill("#f-user", "alice")
    page.select_option("#f-state", "quarantined")
    page.click("text=Filter")
    shot(page, "admin-devices")
    row = page.locator("tr[data-device=applphone1]")
    assert "quarantined" in row.inner_text()
    shot(page, "admin-devices")
    row.locator("text=Approve").click()
    shot(page, "admin-confirm-approve")
    page.click("#confirm")
    page.wait_for_url(re.compile(r"/admin/devices$"))
    assert "approve: device applphone1 of alice" in page.locator(".flash").inner_text()

    p = w.lab.partnership("alice", "applphone1")
    assert p.state == "allowed" and p.approved_by == "web:alice"
    with w.lab.client() as c:
        r = eas(c, asp, device="applphone1")
        assert r.status_code == 200 and eas_status(r) in (1, 142)  # the front end answered
    assert any(e.action == "device.approve" and e.actor == "web:alice" for e in w.lab.ids.audit.tail(100))

    for name, path in (
        ("admin-users", "/admin/users"),
        ("admin-user", "/admin/users/alice"),
        ("admin-rules", "/admin/rules"),
        ("admin-audit", "/admin/audit"),
        ("admin-settings", "/admin/settings"),
    ):
        page.goto(w.url + path)
        shot(page, name)
    assert "device.approve" in page.goto(f"{w.url}/admin/audit?action=device").text()


def _open_phone(w, asp, user, device):
    conn = http.client.HTTPSConnection(
        "127.0.0.1", w.lab.gateway.port, timeout=5, context=ssl.create_default_context(cafile=str(w.lab.cert))
    )
    hdrs = {
        "Authorization": "Basic " + base64.b64encode(f"{user}:{asp}".encode()).decode(),
        "MS-ASProtocolVersion": "14.1",
    }
    conn.request("POST", eas_target(device=device, user=user), headers=hdrs, body=b"")
    r = conn.getresponse()
    r.read()
    assert r.status == 200
    return conn


def test_user_blocks_own_phone_in_the_portal_and_its_open_connection_is_refused(make_web, page):
    w = make_web(default_action="allowed", require_second_factor=False)
    asp = w.user("bob")
    phone = _open_phone(w, asp, "bob", "applbobphone")
    portal_sign_in(page, w, "bob", asp)
    page.wait_for_url(re.compile(r"/portal/$"))
    row = page.locator("tr[data-device=applbobphone]")
    assert "allowed" in row.inner_text()
    shot(page, "portal-home")
    page.once("dialog", lambda d: d.accept())  # "Block applbobphone? ..."
    started = time.monotonic()
    row.locator("text=Block (lost phone)").click()
    page.wait_for_selector(".flash")
    assert "blocked" in page.locator("tr[data-device=applbobphone]").inner_text()
    phone.sock.settimeout(2.0)
    try:
        closed = phone.sock.recv(1) == b""
    except (ConnectionError, ssl.SSLError):
        closed = True
    assert closed and time.monotonic() - started < 3.0  # the open connection was cut
    phone.close()
    with httpx.Client(
        base_url=w.lab.url, verify=ssl.create_default_context(cafile=str(w.lab.cert)), trust_env=False
    ) as c:
        r = eas(c, asp, user="bob", device="applbobphone")
        assert eas_status(r) == 129 and r.headers["x-ucgate-reason"] == "device-blocked"
    assert w.lab.partnership("bob", "applbobphone").approved_by is None
    assert any(e.action == "device.block" and e.actor == "portal:bob" for e in w.lab.ids.audit.tail(100))


def test_portal_enrol_totp_then_approve_quarantined_device_with_a_code(make_web, page):
    w = make_web()  # quarantine new devices; the user approves with TOTP (device-approval)
    asp = w.user("carol")
    with w.lab.client() as c:
        assert eas_status(eas(c, asp, user="carol", device="applcarol")) == 129
    portal_sign_in(page, w, "carol", asp)
    page.wait_for_url(re.compile(r"/portal/$"))
    page.click("#enrol")
    assert page.locator(".qr svg").count() == 1
    secret_b32 = page.locator("#totp-secret").inner_text()
    shot(page, "portal-enrol-totp")
    from ucgate.id.otp import totp

    secret = base64.b32decode(secret_b32 + "=" * (-len(secret_b32) % 8))
    page.fill("#code", "000000" if totp(secret, time.time()) != "000000" else "111111")
    page.click("text=Confirm")
    assert page.locator("#code-error").is_visible()  # wrong code: the message is at the field
    page.fill("#code", totp(secret, time.time()))
    page.click("text=Confirm")
    codes = page.locator("#recovery-codes li").all_inner_texts()
    assert len(codes) == 10
    shot(page, "portal-recovery-codes")
    page.click("text=Done")
    html = page.content()
    assert secret_b32 not in html and not any(code in html for code in codes)  # never shown again

    row = page.locator("tr[data-device=applcarol]")
    row.locator("input[name=code]").fill("12345")
    row.locator("text=Approve").click()
    assert "wrong or already used" in page.locator("tr[data-device=applcarol] .field-error").inner_text()
    page.locator("tr[data-device=applcarol] input[name=code]").fill(totp(secret, time.time() + 30))
    page.locator("tr[data-device=applcarol]").locator("text=Approve").click()
    page.wait_for_selector(".flash")
    assert w.lab.partnership("carol", "applcarol").approved_by == "portal:carol"
    with w.lab.client() as c:
        assert eas(c, asp, user="carol", device="applcarol").status_code == 200

    page.fill("#asp-label", "")
    page.click("form[action='/portal/asps'] button")
    assert "required" in page.locator("#asp-label-error").inner_text()
    page.fill("#asp-label", "iPad mail")
    page.click("form[action='/portal/asps'] button")
    new_asp = page.locator("#secret").inner_text()
    assert re.fullmatch(r"[a-z2-9]{4}(-[a-z2-9]{4}){3}", new_asp)
    shot(page, "portal-new-asp")
    page.goto(f"{w.url}/portal/")
    assert new_asp not in page.content()


def test_helpdesk_cannot_reach_settings(make_web, page):
    w = make_web()
    admin_sign_in(page, w, "hd")
    assert page.locator("nav >> text=Settings").count() == 0
    resp = page.goto(f"{w.url}/admin/settings")
    assert resp.status == 403 and "does not give access" in page.locator("#error-message").inner_text()
    shot(page, "helpdesk-settings-refused")
    assert page.goto(f"{w.url}/admin/devices").status == 200  # devices: yes


def test_auditor_is_read_only(make_web, page):
    w = make_web()
    admin_sign_in(page, w, "audrey")
    assert page.goto(f"{w.url}/admin/settings").status == 200
    assert page.goto(f"{w.url}/admin/devices/1/block").status == 403


def test_a_user_without_an_admin_role_or_without_totp_cannot_sign_in_to_admin(make_web, page):
    w = make_web()
    asp = w.user("bob", totp_enrolled=True)
    page.goto(f"{w.url}/admin/login")
    page.fill("#username", "bob")
    page.fill("#password", asp)
    page.click("button[type=submit]")
    assert "no administrator" in page.locator("#username-error").inner_text()
    asp = w.user("alice")  # an admin, but without TOTP
    page.fill("#username", "alice")
    page.fill("#password", asp)
    page.click("button[type=submit]")
    assert "requires two-factor" in page.locator("#username-error").inner_text()


def test_form_without_csrf_token_is_refused(make_web, page):
    w = make_web()
    asp = w.user("bob")
    portal_sign_in(page, w, "bob", asp)
    page.wait_for_url(re.compile(r"/portal/$"))
    page.fill("#asp-label", "forged")
    page.evaluate(
        "document.querySelectorAll('form[action=\"/portal/asps\"] input[name=csrf]').forEach(e => e.remove())"
    )
    with page.expect_navigation() as nav:
        page.click("form[action='/portal/asps'] button")
    assert nav.value.status == 403
    assert "CSRF" in page.locator("#error-message").inner_text()
    shot(page, "csrf-refused")
    assert all(a.label != "forged" for a in w.lab.ids.asps.list("bob"))


def test_logout_ends_the_session(make_web, page):
    w = make_web()
    admin_sign_in(page, w)
    page.click("text=Sign out")
    page.wait_for_url(re.compile(r"/admin/login"))
    page.goto(f"{w.url}/admin/devices")
    assert "/admin/login" in page.url
