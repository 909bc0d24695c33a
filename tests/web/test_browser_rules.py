"""The admin UI's rules page in a real browser (Debian's Chromium via Playwright): an admin adds,
moves and deletes device rules, a bad one is refused next to its field, and the gateway's
decision for the next new device follows each change."""

from __future__ import annotations

import re

from ucgate.store.rules import RuleStore

from ..gateway.test_devices import eas, eas_status
from .conftest import shot
from .test_browser import admin_sign_in


def test_admin_edits_device_rules_and_the_gateway_follows(make_web, page):
    w = make_web(default_action="allowed", require_second_factor=False)
    devices = w.lab.devices  # the gateway's DeviceService: follow the store's rules like ucgate serve
    devices.rule_store = RuleStore(w.lab.ids.components.repo.engine)
    w.lab.ids.bus.subscribe_rows(devices.on_event_row)
    asp = w.lab.asp("alice")
    with w.lab.client() as c:
        assert eas_status(eas(c, asp, device="andr1", dtype="Android")) == 142  # allowed, forwarded

    admin_sign_in(page, w)
    page.goto(f"{w.url}/admin/rules")
    page.fill("#r-name", "no-android")
    page.select_option("#r-action", "blocked")
    page.fill("#r-device_type", "Android*")
    page.click("#add-rule-submit")
    page.wait_for_url(re.compile(r"/admin/rules$"))
    assert "added rule “no-android” at position 1" in page.locator(".flash").inner_text()
    row = page.locator("tr[data-rule=no-android]")
    assert "store" in row.inner_text() and "blocked" in row.inner_text()
    with w.lab.client() as c:
        r = eas(c, asp, device="andr2", dtype="Android")
        assert eas_status(r) == 129 and r.headers["x-ucgate-reason"] == "new-device-blocked"

    # a bad rule: refused next to its field, the form keeps what was typed
    page.fill("#r-name", "toasters")
    page.fill("#r-client_kind", "toaster")
    page.click("#add-rule-submit")
    assert "matches none of" in page.locator("#client_kind-error").inner_text()
    assert page.input_value("#r-name") == "toasters"
    shot(page, "admin-rules-error")

    page.goto(f"{w.url}/admin/rules")
    page.fill("#r-name", "allow-android-tablets")
    page.select_option("#r-action", "allowed")
    page.fill("#r-device_type", "Android*")
    page.fill("#r-model", "*Tab*")
    page.click("#add-rule-submit")
    page.wait_for_url(re.compile(r"/admin/rules$"))
    with w.lab.client() as c:  # second: the blocking rule still matches first
        assert eas_status(eas(c, asp, device="tab1", dtype="Android")) == 129
    tablet = page.locator("tr[data-rule=allow-android-tablets]")
    tablet.locator("input[name=position]").fill("1")
    tablet.locator("text=Move").click()
    page.wait_for_url(re.compile(r"/admin/rules$"))
    assert "to position 1" in page.locator(".flash").inner_text()
    names = page.locator("#rules tr[data-source=store]").evaluate_all("rows => rows.map(r => r.dataset.rule)")
    assert names == ["allow-android-tablets", "no-android"]
    shot(page, "admin-rules")

    page.once("dialog", lambda d: d.accept())  # "Delete the rule “no-android”?"
    page.locator("tr[data-rule=no-android]").locator("text=Delete").click()
    page.wait_for_selector(".flash")
    assert page.locator("tr[data-rule=no-android]").count() == 0
    with w.lab.client() as c:
        assert eas_status(eas(c, asp, device="andr3", dtype="Android")) == 142  # allowed again
    acts = [(e.action, e.actor) for e in w.lab.ids.audit.tail(100) if e.action.startswith("rules.")]
    assert acts == [
        ("rules.add", "web:alice"),
        ("rules.add", "web:alice"),
        ("rules.move", "web:alice"),
        ("rules.delete", "web:alice"),
    ]
