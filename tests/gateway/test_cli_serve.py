"""``ucgate`` as a user runs it: the CLI, config errors, and a real ``ucgate serve`` process
streaming a 50 MB body with bounded memory."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from ..support import free_port

UCGATE = [sys.executable, "-m", "ucgate"]


def run(*args, **kw):
    return subprocess.run([*UCGATE, *args], capture_output=True, text=True, timeout=60, **kw)


def test_version():
    r = run("--version")
    assert r.returncode == 0 and r.stdout.startswith("ucgate ")


def write_config(tmp_path: Path, tls_files, upstream_port: int, port: int, extra: str = "") -> Path:
    cert, key = tls_files
    cfg = tmp_path / "ucgate.toml"
    cfg.write_text(
        f"""
[gateway]
listen = "127.0.0.1:{port}"
tls_cert = "{cert}"
tls_key = "{key}"

[upstreams.frontend]
url = "http://127.0.0.1:{upstream_port}"

[data]
dir = "{tmp_path / "data"}"

[store]
key_file = "{tmp_path / "keys" / "ucgate.key"}"

[services.meet]
max_body_bytes = 104857600
{extra}
"""
    )
    return cfg


def test_check_config_ok(tmp_path, tls_files):
    cfg = write_config(tmp_path, tls_files, 9, 0)
    r = run("check-config", "-c", str(cfg))
    assert r.returncode == 0, r.stderr
    assert "OK" in r.stdout


@pytest.mark.parametrize(
    "extra,needle",
    [
        ("[gateway.limits]\nmax_header_bytes = -1", "gateway.limits.max_header_bytes: must be greater than 0"),
        ('[gateway.timeouts]\nidle = "long"', "gateway.timeouts.idle: expected float"),
        ("[services.nosuch]\nanonymous = true", "services.nosuch: unknown service"),
        ('[services.eas]\nupstream = "exchange"', "services.eas.upstream: no [upstreams.exchange] is defined"),
        ('[auth]\nauthenticator = "magic"', "auth.authenticator: expected one of"),
        ("[gateway.limitz]\nx = 1", "gateway.limitz: unknown setting"),
    ],
)
def test_check_config_names_file_and_key(tmp_path, tls_files, extra, needle):
    cfg = write_config(tmp_path, tls_files, 9, 0, extra)
    r = run("check-config", "-c", str(cfg))
    assert r.returncode == 2
    assert str(cfg) in r.stderr and needle in r.stderr, r.stderr


def test_check_config_missing_cert(tmp_path):
    cfg = tmp_path / "u.toml"
    cfg.write_text(
        '[gateway]\nlisten="127.0.0.1:1"\ntls_cert="nope.crt"\ntls_key="nope.key"\n[upstreams.frontend]\nurl="http://x"\n'
    )
    r = run("check-config", "-c", str(cfg))
    assert r.returncode == 2 and "gateway.tls_cert: no such file" in r.stderr


def test_bad_toml(tmp_path):
    cfg = tmp_path / "u.toml"
    cfg.write_text("[gateway\n")
    r = run("check-config", "-c", str(cfg))
    assert r.returncode == 2 and "not valid TOML" in r.stderr


def _vm_hwm_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def _wait_port(port: int, proc: subprocess.Popen, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"ucgate serve exited: {proc.stderr.read()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("ucgate serve did not listen")


@pytest.mark.slow
def test_serve_streams_50mb_with_bounded_memory(tmp_path, tls_files, upstream):
    port = free_port()
    cfg = write_config(tmp_path, tls_files, upstream.port, port, '[log]\nlevel = "warning"')
    proc = subprocess.Popen([*UCGATE, "serve", "-c", str(cfg)], stderr=subprocess.PIPE, text=True)
    try:
        _wait_port(port, proc)
        ctx = __import__("ssl").create_default_context(cafile=str(tls_files[0]))
        with httpx.Client(base_url=f"https://127.0.0.1:{port}", verify=ctx, timeout=120) as c:
            assert c.get("/Autodiscover/AutodiscoverService.svc/root").status_code == 200
            baseline = _vm_hwm_kib(proc.pid)
            size = 50 * 1024 * 1024
            block = os.urandom(1024 * 1024)

            def body():
                for _ in range(50):
                    yield block

            r = c.post("/meet/upload", content=body(), headers={"Content-Length": str(size)})
            assert r.status_code == 200
            assert r.json()["body_len"] == size
            # and 50 MB down (chunked from the upstream)
            got = 0
            with c.stream("GET", f"/meet/download?n={size}") as resp:
                for chunk in resp.iter_raw():
                    got += len(chunk)
            assert got == size
            grown = _vm_hwm_kib(proc.pid) - baseline
        print(f"gateway peak RSS grew by {grown} KiB while streaming 2 x 50 MB")
        assert grown < 16 * 1024, f"peak RSS grew by {grown} KiB: bodies are being buffered"
        # over the limit: refused before the body is read

        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost") as s:
                s.sendall(b"POST /meet/x HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % (200 * 1024 * 1024))
                assert s.recv(100).startswith(b"HTTP/1.1 413 ")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
    assert proc.returncode == 0, proc.stderr.read()


# --- issue 13 -------------------------------------------------------------------------------------


def test_check_config_refuses_allowed_devices_nobody_can_trust(tmp_path, tls_files):
    """Issue 13 item 9: default_action = "allowed" with require_second_factor (the default)
    and no second factor for anyone ([auth] two_factor = "off") allowed no device at all."""
    cfg = write_config(tmp_path, tls_files, 9, 0, '[devices]\ndefault_action = "allowed"\n')
    r = run("check-config", "-c", str(cfg))
    assert r.returncode == 2 and "OK" not in r.stdout
    assert "ERROR" in r.stderr and 'default_action = "allowed"' in r.stderr
    assert "require_second_factor = false" in r.stderr and "ucgate otp enrol" in r.stderr  # what to do
    for fixed in (
        '[devices]\ndefault_action = "allowed"\nrequire_second_factor = false\n',
        '[auth]\ntwo_factor = "otp-appended"\n[devices]\ndefault_action = "allowed"\n',
    ):
        cfg = write_config(tmp_path, tls_files, 9, 0, fixed)
        r = run("check-config", "-c", str(cfg))
        assert r.returncode == 0 and "OK" in r.stdout and "WARNING" not in r.stderr, r.stderr
    # some users have a second factor: a warning naming who does not
    cfg = write_config(
        tmp_path,
        tls_files,
        9,
        0,
        '[auth]\ntwo_factor_groups = { "mobile" = "otp-appended" }\n[devices]\ndefault_action = "allowed"\n',
    )
    r = run("check-config", "-c", str(cfg))
    assert r.returncode == 0 and "WARNING" in r.stderr and "users outside mobile" in r.stderr
    # the defaults (quarantined, require_second_factor, two_factor off): approved devices
    # are quarantined again after the trust lifetime; said, not refused
    cfg = write_config(tmp_path, tls_files, 9, 0)
    r = run("check-config", "-c", str(cfg))
    assert r.returncode == 0 and "WARNING" in r.stderr and "every" not in r.stdout
    assert "trusted 24 h and then quarantined" in r.stderr


def test_check_config_on_plain_http_says_what_applies(tmp_path):
    """Issue 13 item 10: check-config printed "extended protection require" on plain_http,
    where there is no channel to bind (and Basic is refused)."""
    cfg = tmp_path / "u.toml"
    cfg.write_text(
        f'[gateway]\nlisten = "127.0.0.1:0"\nplain_http = true\n[upstreams.frontend]\n'
        f'url = "http://127.0.0.1:9"\n[data]\ndir = "{tmp_path / "data"}"\n'
        f'[store]\nkey_file = "{tmp_path / "keys" / "k"}"\n[devices]\nenabled = false\n'
    )
    (tmp_path / "keys").mkdir(mode=0o700)
    r = run("check-config", "-c", str(cfg))
    assert r.returncode == 0, r.stderr
    assert "extended protection require" not in r.stdout
    assert "extended protection off (plain HTTP" in r.stdout and "basic (refused: plain HTTP)" in r.stdout


def test_kerberos_check_without_a_kerberos_section(tmp_path, tls_files):
    """Issue 13 item 10: a traceback; now one line saying what is missing, exit 2."""
    cfg = write_config(tmp_path, tls_files, 9, 0)
    r = run("kerberos", "check", "-c", str(cfg))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "no [kerberos] section" in r.stderr and str(cfg) in r.stderr
