"""Debian's SIPp against the SIP relay (issue 18): valid REGISTERs reach the lab Edge and its
challenge comes back; malformed and oversized messages get a local answer or a close, never a
crash, and nothing malformed reaches the Edge.

Debian builds SIPp without TLS, so it talks plain TCP to a local HAProxy that opens a verified
TLS connection to the relay (``server ... ssl verify required``) — HAProxy is a byte pipe here;
SIPp's bytes are what the relay frames. SIPp joins a scenario's lines with CRLF after trimming
each one, so a folded line arrives as a line without a colon (the folding itself is tested with
raw bytes in ``test_sip_relay.py``); NUL cannot be written in a scenario either (same)."""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest

from ucgate.protocols.sip import Limits, parse_message

from ..lab.fixtures import _in_ci
from ..lab.haproxy import HAPROXY
from ..support import free_port
from .test_sip_relay import _wait, make_lab  # noqa: F401  (the fixture)

SIPP = shutil.which("sipp")

_HEAD = """REGISTER sip:contoso.com SIP/2.0
Via: SIP/2.0/TCP [local_ip]:[local_port];branch=[branch]
From: <sip:alice@contoso.com>;tag=[call_number];epid=0a1b2c3d4e
To: <sip:alice@contoso.com>
Call-ID: [call_id]
CSeq: 1 REGISTER
Max-Forwards: 70
User-Agent: sipp
"""
_CONTACT = 'Contact: <sip:[local_ip]:[local_port];transport=tcp>;+sip.instance="<urn:uuid:4b1682a8-f968-5701-83fc-7c6741dc6697>"\n'


def _scenario(message: str, expect: str | None) -> str:
    recv = f'  <recv response="{expect}"/>\n' if expect else '  <pause milliseconds="400"/>\n'
    return f"""<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="ucgate">
  <send><![CDATA[
{message}
  ]]></send>
{recv}</scenario>
"""


# name: (message, the relay's answer SIPp must get, or None: closed without one; the reason logged)
CASES = {
    "second-content-length": (_HEAD + "Content-Length: 0\nl: 0\n", None, "duplicate-content-length"),
    "missing-content-length": (_HEAD, None, "missing-content-length"),
    "folded-header": (_HEAD + "Subject: one\n two\nContent-Length: 0\n", None, "bad-header-name"),
    "oversized-message": (_HEAD + "Content-Length: 2000000\n", None, "message-too-large"),
    "oversized-line": (_HEAD + "X-Pad: " + "a" * 9000 + "\nContent-Length: 0\n", None, "line-too-long"),
    "oversized-head": (_HEAD + ("X-Pad: " + "b" * 7000 + "\n") * 6 + "Content-Length: 0\n", None, "head-too-large"),
    "sip-3.0": (_HEAD.replace("SIP/2.0\n", "SIP/3.0\n", 1) + "Content-Length: 0\n", None, "unsupported-version"),
    "bad-request-line": (
        "REGISTER  sip:contoso.com SIP/2.0\n" + _HEAD.split("\n", 1)[1] + "Content-Length: 0\n",
        None,
        "bad-request-line",
    ),
    "duplicate-from": (_HEAD + "f: <sip:bob@contoso.com>;tag=2\nContent-Length: 0\n", None, "duplicate-from"),
    "digest-credentials": (
        _HEAD + 'Authorization: Digest username="alice", realm="x", nonce="1", uri="sip:x", '
        'response="ab"\nContent-Length: 0\n',
        "400",
        "unknown-auth-scheme",
    ),
    "from-to-mismatch": (
        _HEAD.replace("To: <sip:alice@", "To: <sip:bob@") + "Content-Length: 0\n",
        "403",
        "register-from-to-mismatch",
    ),
    "message-before-register": (
        _HEAD.replace("REGISTER sip:contoso.com", "MESSAGE sip:bob@contoso.com").replace(
            "CSeq: 1 REGISTER", "CSeq: 1 MESSAGE"
        )
        + "Content-Length: 0\n",
        "403",
        "not-registered",
    ),
}
VALID = _HEAD + _CONTACT + "Content-Length: 0\n"


@pytest.fixture
def sipp_path():
    if SIPP is None:
        if _in_ci():
            pytest.fail("sipp missing in CI (scripts/bootstrap --test installs Debian's sip-tester)", pytrace=False)
        pytest.skip("sipp missing (Debian package sip-tester; scripts/bootstrap --test installs it)")
    return SIPP


class TlsPipe:
    """HAProxy: plain TCP in, verified TLS out to the relay."""

    def __init__(self, tmp_path, relay_port: int, ca_file) -> None:
        self.port = free_port()
        cfg = tmp_path / "haproxy.cfg"
        cfg.write_text(f"""global
    maxconn 256
defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s
listen sip
    bind 127.0.0.1:{self.port}
    server relay 127.0.0.1:{relay_port} ssl verify required ca-file {ca_file} verifyhost localhost sni str(localhost)
""")
        self.proc = subprocess.Popen(
            [HAPROXY, "-f", str(cfg), "-db"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + 10
        import socket

        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"haproxy failed: {self.proc.stderr.read().decode()[-500:]}") from None
                time.sleep(0.05)
        raise RuntimeError("haproxy did not listen")

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(5)


def _sipp(sipp: str, tmp_path, name: str, scenario: str, port: int, calls: int = 1) -> subprocess.CompletedProcess:
    f = tmp_path / f"{name}.xml"
    f.write_text(scenario)
    return subprocess.run(
        [
            sipp,
            "-sf",
            str(f),
            "-t",
            "tn",
            "-m",
            str(calls),
            "-r",
            "50",
            "-l",
            "10",
            "-nostdin",
            "-max_socket",
            "100",
            "-timeout",
            "20",
            "-recv_timeout",
            "5000",
            "-i",
            "127.0.0.1",
            "-p",
            str(free_port()),
            f"127.0.0.1:{port}",
        ],
        cwd=tmp_path,
        capture_output=True,
        timeout=60,
        check=False,
    )


def test_sipp_against_the_relay(make_lab, sipp_path, tmp_path):
    # SIPp sends at most 64 KiB per message: a head limit below that (protocols/sip.py's is 96 KiB)
    lab = make_lab(limits=Limits(max_head_bytes=32 * 1024))
    pipe = TlsPipe(tmp_path, lab.relay.port, lab.cert)
    try:
        ok = _sipp(sipp_path, tmp_path, "valid", _scenario(VALID, "401"), pipe.port, calls=20)
        assert ok.returncode == 0, (ok.stdout + ok.stderr).decode()[-2000:]
        valid = list(lab.registrar.received)
        assert len(valid) == 20
        for name, (message, expect, reason) in sorted(CASES.items()):
            run = _sipp(sipp_path, tmp_path, name, _scenario(message, expect), pipe.port)
            if expect is not None:  # a local answer, then the close
                assert run.returncode == 0, (name, (run.stdout + run.stderr).decode()[-1500:])
            assert _wait(lambda reason=reason: reason in [e.reason for e in lab.audit("sip-refused")]), (
                name,
                [e.reason for e in lab.audit("sip-refused")],
                (run.stdout + run.stderr).decode()[-800:],
            )
        # never a crash: the relay still serves, and nothing malformed reached the Edge
        again = _sipp(sipp_path, tmp_path, "again", _scenario(VALID, "401"), pipe.port, calls=5)
        assert again.returncode == 0, (again.stdout + again.stderr).decode()[-2000:]
        assert len(lab.registrar.received) == 25
        for raw in lab.registrar.received:
            m = parse_message(raw)
            assert m.method == "REGISTER" and m.get("authorization") is None and m.get("contact")
    finally:
        pipe.close()
