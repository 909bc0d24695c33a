"""Notifiers against local sinks (aiosmtpd SMTP, an HTTP server) and the ``ucgate device`` CLI."""

from __future__ import annotations

import datetime as dt
import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

from aiosmtpd.controller import Controller

from ucgate.cli import main
from ucgate.id.notify import DeviceNotice, SmtpNotifier, WebhookNotifier

from ..support import free_port

NOTICE = DeviceNotice(
    event="device-quarantined",
    user="alice",
    device_id="appldev1",
    partnership_id=7,
    reason="new-device-quarantined",
    device_type="iPhone",
    user_agent="Apple-iPhone9C1/1402.100",
    client_address="203.0.113.9",
)


class Sink:
    def __init__(self):
        self.messages = []

    async def handle_DATA(self, server, session, envelope):
        self.messages.append(envelope)
        return "250 OK"


def test_smtp_notifier_delivers_to_a_local_sink():
    sink = Sink()
    port = free_port()
    ctl = Controller(sink, hostname="127.0.0.1", port=port)
    ctl.start()
    try:
        n = SmtpNotifier("127.0.0.1", port, "ucgate@contoso.com", lambda u: [f"{u}@contoso.com"])
        assert n.notify(NOTICE)
    finally:
        ctl.stop()
    env = sink.messages[0]
    assert env.rcpt_tos == ["alice@contoso.com"]
    text = env.content.decode()
    assert "Subject: Your device is waiting for approval" in text and "appldev1" in text


def test_smtp_notifier_down_is_false_not_an_exception():
    n = SmtpNotifier("127.0.0.1", free_port(), "ucgate@x", lambda u: ["a@x"], timeout=1)
    assert n.notify(NOTICE) is False


def test_webhook_notifier_posts_json():
    got = []

    class H(BaseHTTPRequestHandler):
        def do_POST(self):
            got.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *a):
            pass

    srv = HTTPServer(("127.0.0.1", 0), H)
    t = threading.Thread(target=srv.handle_request, daemon=True)
    t.start()
    try:
        assert WebhookNotifier(f"http://127.0.0.1:{srv.server_port}/hook").notify(NOTICE)
    finally:
        t.join(5)
        srv.server_close()
    assert got[0]["event"] == "device-quarantined" and got[0]["device_id"] == "appldev1"


def test_device_cli(tmp_path, capsys):
    from ucgate.id.devices import DeviceService
    from ucgate.store import PartnershipStore, open_repository

    (tmp_path / "keys").mkdir(mode=0o700)
    cfg = tmp_path / "ucgate.toml"
    cfg.write_text(
        f'[gateway]\nlisten="127.0.0.1:0"\nplain_http=true\n[upstreams.frontend]\n'
        f'url="http://127.0.0.1:1"\n[data]\ndir="{tmp_path / "data"}"\n'
        f'[store]\nkey_file="{tmp_path / "keys" / "k"}"\n'
    )
    repo = open_repository(f"sqlite:///{tmp_path / 'data' / 'ucgate.db'}")
    t0 = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    p = PartnershipStore(repo.engine).create(
        username="alice", device_id="ApplDEV1", state="quarantined", client_kind="eas", created_at=t0, last_seen=t0
    )
    repo.close()
    assert main(["device", "list", "-c", str(cfg)]) == 0
    assert "appldev1" in capsys.readouterr().out
    assert main(["device", "approve", str(p.id), "-c", str(cfg)]) == 0
    assert main(["device", "list", "--state", "allowed", "--json", "-c", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert json.loads(out[out.index("[") :])[0]["approved_by"].startswith("cli:")
    assert main(["device", "block", "999", "-c", str(cfg)]) == 1
    assert main(["device", "delete", str(p.id), "-c", str(cfg)]) == 0
    assert DeviceService  # imported for the service the CLI drives


def test_device_wipe_says_wipe(tmp_path, capsys):
    """Issue 13 item 10: `ucgate device wipe` printed "is quarantined" (the stored state)."""
    from ucgate.store import PartnershipStore, open_repository

    (tmp_path / "keys").mkdir(mode=0o700)
    cfg = tmp_path / "ucgate.toml"
    cfg.write_text(
        f'[gateway]\nlisten="127.0.0.1:0"\nplain_http=true\n[upstreams.frontend]\n'
        f'url="http://127.0.0.1:1"\n[data]\ndir="{tmp_path / "data"}"\n'
        f'[store]\nkey_file="{tmp_path / "keys" / "k"}"\n'
    )
    repo = open_repository(f"sqlite:///{tmp_path / 'data' / 'ucgate.db'}")
    t0 = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    p = PartnershipStore(repo.engine).create(
        username="alice", device_id="lost1", state="quarantined", client_kind="eas", created_at=t0, last_seen=t0
    )
    repo.close()
    assert main(["device", "wipe", str(p.id), "-c", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "is wipe pending (quarantined)" in out and "is quarantined" not in out
    assert main(["device", "list", "-c", str(cfg)]) == 0
    assert "wipe pending (quarantined)" in capsys.readouterr().out
