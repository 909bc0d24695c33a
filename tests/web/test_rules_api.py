"""Device rules edited while the gateway runs: ``ucgate serve``'s composition (``build_node``:
gateway, in-process id service, admin web listener with the REST API) from a configuration file,
a real ActiveSync client, rules added, moved and deleted through ``/api/v1/rules`` and from the
CLI in another process; the decision for the next new device follows at once (this process) or
within a second (the CLI's change, through the store's event outbox)."""

from __future__ import annotations

import ssl
import subprocess
import sys
import time

import httpx
import pytest

from ucgate.app import build_node
from ucgate.config import load
from ucgate.web.tokens import tokens_for

from ..gateway.test_devices import eas, eas_status, frontend  # noqa: F401  (fixture)
from ..support import free_port


@pytest.fixture
def running(tmp_path, loop_thread, tls_files, frontend):
    cert, key = tls_files
    (tmp_path / "keys").mkdir(mode=0o700)
    web_port = free_port()
    cfg_path = tmp_path / "ucgate.toml"
    cfg_path.write_text(f"""
[gateway]
listen = "127.0.0.1:0"
tls_cert = "{cert}"
tls_key = "{key}"
[upstreams.frontend]
url = "http://127.0.0.1:{frontend}"
[upstreams.exchange]
url = "http://127.0.0.1:{frontend}"
[auth]
netbios_domain = "CONTOSO"
failure_floor = 0
[data]
dir = "{tmp_path / "data"}"
[store]
key_file = "{tmp_path / "keys" / "ucgate.key"}"
[devices]
default_action = "allowed"
require_second_factor = false
[[devices.rules]]
name = "file-no-windows-phone"
action = "blocked"
device_type = "WP*"
[web]
enabled = true
listen = "127.0.0.1:{web_port}"
[web.users]
alice = "admin"
""")
    config = load(cfg_path)
    node = build_node(config)
    loop_thread.run(node.start())
    node.ids.users.add("alice", upn="alice@contoso.com", sip_uri="sip:alice@contoso.com")
    verify = ssl.create_default_context(cafile=str(cert))
    gw = httpx.Client(base_url=f"https://127.0.0.1:{node.gateway.port}", verify=verify, trust_env=False, timeout=10)
    token = tokens_for(config).create("admin", "rules test")[1]
    api = httpx.Client(
        base_url=f"https://127.0.0.1:{web_port}/api/v1",
        verify=verify,
        trust_env=False,
        timeout=10,
        headers={"Authorization": f"Bearer {token}"},
    )
    try:
        yield node, cfg_path, gw, api
    finally:
        gw.close()
        api.close()
        loop_thread.run(node.stop())


def new_device(gw, asp, n: int, dtype: str) -> tuple[int | None, str]:
    r = eas(gw, asp, device=f"dev{dtype.lower()}{n}", dtype=dtype)
    return eas_status(r), r.headers.get("x-ucgate-reason", "forwarded")


def test_a_rule_edited_through_the_rest_api_decides_the_next_new_device_on_the_running_gateway(running):
    node, cfg_path, gw, api = running
    asp = node.ids.asps.create("alice", "phone")[1]
    assert new_device(gw, asp, 1, "Android") == (142, "forwarded")  # allowed: the front end answered
    assert new_device(gw, asp, 1, "WP8")[1] == "new-device-blocked"  # the file's rule

    r = api.post("/rules", json={"name": "no-android", "action": "blocked", "device_type": "Android*"})
    assert r.status_code == 201, r.text
    rule = r.json()
    assert (rule["source"], rule["position"], rule["created_by"]) == ("store", 1, rule["created_by"])
    assert rule["created_by"].startswith("api:")
    status, reason = new_device(gw, asp, 2, "Android")
    assert (status, reason) == (129, "new-device-blocked")  # at once: same process
    assert any(e.action == "device-check" and e.details.get("rule") == "no-android" for e in node.ids.audit.tail(20))

    # the file's rules come first: a store rule cannot allow what the file blocks
    r = api.post("/rules", json={"name": "allow-wp", "action": "allowed", "device_type": "WP*", "position": 1})
    assert r.status_code == 201 and r.json()["position"] == 1
    assert new_device(gw, asp, 2, "WP8")[1] == "new-device-blocked"
    listed = api.get("/rules").json()["device_rules"]
    assert [(x["source"], x["name"]) for x in listed] == [
        ("file", "file-no-windows-phone"),
        ("store", "allow-wp"),
        ("store", "no-android"),
    ]
    r = api.post(f"/rules/{rule['id']}/move", json={"position": 1})
    assert r.status_code == 200 and r.json()["position"] == 1
    assert [x["name"] for x in api.get("/rules").json()["device_rules"]][1:] == ["no-android", "allow-wp"]

    # bad input: 400 naming the field, nothing changed
    r = api.post("/rules", json={"name": "x", "action": "blocked", "client_kind": "toaster"})
    assert r.status_code == 400 and r.json()["field"] == "client_kind"
    assert api.post(f"/rules/{rule['id']}/move", json={"position": 0}).json()["field"] == "position"
    assert api.delete("/rules/999999").status_code == 404

    # a change from the CLI, another process: in force here within a second
    t0 = time.monotonic()
    cli = subprocess.run(
        [
            sys.executable,
            "-m",
            "ucgate",
            "device",
            "rules",
            "add",
            "--name",
            "hold-ipads",
            "--action",
            "quarantined",
            "--device-type",
            "iPad",
            "-c",
            str(cfg_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cli.returncode == 0, cli.stderr
    committed = time.monotonic()
    n = 0
    while new_device(gw, asp, n, "iPad")[1] != "new-device-quarantined":
        assert time.monotonic() - committed < 1.0, "the CLI's rule is not in force within a second"
        n += 1
        time.sleep(0.05)
    print(
        f"CLI rule in force {time.monotonic() - committed:.3f} s after the CLI returned "
        f"({committed - t0:.2f} s to run it)"
    )

    # deleted through the API: the next new Android device is allowed again
    assert api.delete(f"/rules/{rule['id']}").status_code == 204
    assert new_device(gw, asp, 3, "Android") == (142, "forwarded")
    actions = [(e.action, e.actor[:4]) for e in node.ids.audit.tail(200) if e.action.startswith("rules.")]
    assert actions == [
        ("rules.add", "api:"),
        ("rules.add", "api:"),
        ("rules.move", "api:"),
        ("rules.add", "cli:"),
        ("rules.delete", "api:"),
    ]


def test_group_policies_through_the_rest_api_and_roles(running, tmp_path):
    node, cfg_path, gw, api = running
    r = api.post("/policies", json={"group": "ucgate-executives", "settings": {"max_devices": 1, "certprov": "deny"}})
    assert r.status_code == 201, r.text
    pol = r.json()
    assert (pol["name"], pol["settings"]) == ("ucgate-executives", {"max_devices": 1, "certprov": "deny"})
    assert [p["source"] for p in api.get("/policies").json()] == ["store"]
    r = api.post("/policies", json={"group": "x", "settings": {"max_devices": -1}})
    assert r.status_code == 400 and r.json()["field"] == "settings.max_devices"
    # a helpdesk token may look, not edit
    hd = tokens_for(load(cfg_path)).create("helpdesk", "hd")[1]
    h = {"Authorization": f"Bearer {hd}"}
    assert api.get("/rules", headers=h).status_code == 200
    assert api.post("/rules", json={"name": "x", "action": "blocked"}, headers=h).status_code == 403
    assert api.delete(f"/policies/{pol['id']}", headers=h).status_code == 403
    assert api.delete(f"/policies/{pol['id']}").status_code == 204
    assert api.get("/policies").json() == []
