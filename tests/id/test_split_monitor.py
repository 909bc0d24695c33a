"""Split mode with the Samba AD lab: the gateway reports its sessions to the id service (into
the store), the id service's account monitor re-checks them, and an AD disable closes the
gateway's live connection within recheck_interval + 1 s."""

from __future__ import annotations

import base64
import http.client
import time

import pytest

from ucgate.config import LockoutConfig
from ucgate.id.directory import Directory
from ucgate.id.factory import open_services
from ucgate.id.http_api import LiveSessions, create_id_api
from ucgate.id.monitor import AccountMonitor

from ..support import free_port
from .test_http_api import SECRET, IdServer, RemoteGateway

pytestmark = pytest.mark.samba
RECHECK = 0.5


def test_ad_disable_cuts_a_split_gateway_within_recheck_interval(tmp_path, samba_lab, loop_thread, upstream, tls_files):
    (tmp_path / "data").mkdir()
    (tmp_path / "keys").mkdir(mode=0o700)
    lab = samba_lab
    directory = Directory(
        url=lab.ldaps_url,
        bind_dn=lab.service_dn,
        bind_password=lab.service_password,
        base_dn=lab.base_dn,
        ca_file=str(lab.ca_cert),
        netbios_domain=lab.netbios_domain,
        timeout=2,
        cache_ttl=1,
    )
    ids = open_services(
        store_url=f"sqlite:///{tmp_path / 'data' / 'ucgate.db'}",
        key_file=tmp_path / "keys" / "k",
        audit_file=None,
        lockout=LockoutConfig(user_failures=3, ip_failures=100, window=900),
        netbios_domains=(lab.netbios_domain,),
        directory=directory,
        required_group=lab.users_group,
    )
    name = lab.new_user(groups=[lab.users_group])
    ids.users.add(name.lower(), upn=lab.upn(name), source="directory")
    asp = ids.asps.create(name.lower(), "phone")[1]
    sessions = LiveSessions(ids.components.repo.engine)
    srv = IdServer(ids, *tls_files, free_port())
    srv.app = create_id_api(ids.credentials, secret=SECRET, bus=ids.bus, heartbeat=2.0, sessions=sessions)
    srv.start()
    gw = RemoteGateway(loop_thread, tls_files, upstream, srv, report_interval=0.2)

    async def start_monitor():
        m = AccountMonitor(directory, sessions.live_users, ids.bus, ids.audit, interval=RECHECK)
        m.start()
        return m

    monitor = loop_thread.run(start_monitor())
    try:
        gw.wait_events()
        conn = http.client.HTTPSConnection("localhost", gw.gw.port, context=gw.gw.ssl_context(), timeout=5)
        hdr = {"Authorization": "Basic " + base64.b64encode(f"{name}:{asp}".encode()).decode()}
        conn.request("GET", "/ucwa/x", headers=hdr)
        assert conn.getresponse().read() is not None
        deadline = time.monotonic() + 5
        while name.lower() not in sessions.live_users():  # the gateway's report reached the store
            assert time.monotonic() < deadline
            time.sleep(0.05)
        lab.disable(name)
        t0 = time.monotonic()
        while name.lower() in gw.gw.gateway.live_users():
            assert time.monotonic() - t0 < RECHECK + 1.0, "not cut within recheck_interval + 1 s"
            time.sleep(0.02)
        print(
            f"\nAD disable cut the split gateway's connection after {time.monotonic() - t0:.2f} s "
            f"(recheck_interval {RECHECK} s)"
        )
    finally:
        loop_thread.run(monitor.stop())
        gw.close()
        srv.close()
        ids.close()
