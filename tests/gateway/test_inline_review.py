"""What the review of the inline stage chain (gateway/pipeline.py run_inline, gateway/session.py)
found, each as the request sequence that showed it: pipelined refusals answered inline (a loop,
not a recursion), the log context of inline stages and of upstream callbacks (their own request
id, not another connection's), a refusal logged before its body is drained, the device facts
released when an inline stage raises, and the device log field only once the decide stage named it."""

from __future__ import annotations

import logging
import socket
import struct
import time

import pytest

from ucgate.id.devices import DeviceCheck

from .test_fastpath import Client, env, scripted  # noqa: F401
from .test_fastpath_auth import EAS, UCWA, Lab, request
from .test_observability import json_log  # noqa: F401  (the fixture)

_EAS_HEADERS = [(b"MS-ASProtocolVersion", b"14.1"), (b"User-Agent", b"Apple-iPhone/1")]


def test_many_pipelined_refusals_are_all_answered(env, caplog):
    """600 pipelined 404s in one write: each answered inline, one after the other (a recursion
    per request ended in RecursionError after ~244)."""
    g, _ = env
    n = 600
    caplog.set_level(logging.INFO)
    c = Client(g)
    try:
        c.send(b"GET /nowhere/x HTTP/1.1\r\nHost: gw\r\n\r\n" * n)
        got = [c.response()[0] for _ in range(n)]
        assert c.get("/meet/ok")[0] == b"HTTP/1.1 200 OK"  # and the connection goes on
    finally:
        c.close()
    assert got == [b"HTTP/1.1 404 Not Found"] * n
    assert not [r for r in caplog.records if "internal error" in r.getMessage()]


@pytest.mark.parametrize("pipelined", [True, False])
def test_an_inline_stages_line_carries_its_own_request_id(loop_thread, tls_files, tmp_path, json_log, pipelined):
    """A: a Basic credential verified in a task; B after it: an NTLM token that is not base64,
    refused inline. B's authenticator line has B's request id (pipelined, it had A's; alone, none)."""
    lab = Lab(loop_thread, tls_files, tmp_path, gate=False)
    try:
        c = lab.connect()
        a = request("GET", UCWA, [(b"Authorization", lab.basic)])
        b = request("GET", UCWA, [(b"Authorization", b"NTLM !!!notbase64")])
        if pipelined:
            c.sock.sendall(a + b)
            first, second = c.exchange(b"")[0], c.exchange(b"")[0]
        else:
            first = c.exchange(a)[0]
            lab.sync()
            second = c.exchange(b)[0]
        lab.sync()
        assert (first, second) == (b"HTTP/1.1 200 OK", b"HTTP/1.1 400 Bad Request")
        lines = json_log()
        bad = [r for r in lines if "not base64" in r["message"]]
        refused = [
            r for r in lines if r["message"].startswith("refused request") and "token-bad-base64" in r["message"]
        ]
        assert bad and refused and bad[0].get("request_id") == refused[0]["request_id"]
        assert bad[0].get("service") == "ucwa"
    finally:
        lab.stop()


def test_an_upstream_failure_line_is_its_own_requests(env, json_log):
    """The pooled upstream connection was opened by connection A's task; B's request forwarded
    inline on it fails: B's error line has B's request id, not A's."""
    g, _ = env
    a, b = Client(g), Client(g)
    try:
        assert a.get("/meet/ok")[0] == b"HTTP/1.1 200 OK"
        assert b.get("/meet/garbage")[0] == b"HTTP/1.1 502 Bad Gateway"
    finally:
        a.close()
        b.close()
    lines = json_log()
    errors = [r for r in lines if r["level"] == "error"]
    assert errors and g.gateway.fast_requests >= 1
    ids = {r["request_id"] for r in errors}
    assert len(ids) == 1 and errors[0].get("service") == "meet"
    first = [r for r in lines if r["logger"] == "ucgate.access"]
    assert not first or first[0]["request_id"] not in ids


def test_a_refusal_is_logged_even_when_the_client_resets_while_its_body_drains(env, caplog):
    g, _ = env
    caplog.set_level(logging.INFO)
    c = Client(g)
    c.send(b"POST /nowhere/x HTTP/1.1\r\nHost: gw\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10)
    time.sleep(0.2)
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.sock.close()
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and not any(r.getMessage().startswith("refused request") for r in caplog.records):
        time.sleep(0.05)
    refused = [r.getMessage() for r in caplog.records if r.getMessage().startswith("refused request")]
    assert refused and "reason=not-published" in refused[0]


def test_a_raising_inline_stage_leaves_no_device_facts_behind(loop_thread, tls_files, tmp_path):
    lab = Lab(loop_thread, tls_files, tmp_path, gate=True)
    try:

        def boom(conn, req, service):
            raise RuntimeError("boom")

        lab.gateway.auth_now = boom
        c = lab.connect()
        try:  # the connection is closed: an internal error
            c.exchange(request("POST", EAS, [*_EAS_HEADERS, (b"Authorization", lab.basic)]))
        except (EOFError, OSError):
            pass
        lab.sync()
        assert lab.gate._pending == {}
    finally:
        lab.stop()


def test_the_device_field_only_once_the_decide_stage_named_it(loop_thread, tls_files, tmp_path, json_log):
    lab = Lab(loop_thread, tls_files, tmp_path, gate=True)
    try:

        async def deny(user, facts, **kw):
            return DeviceCheck("deny", "device-blocked", facts.device_id)

        lab.checker.check_async = deny
        c = lab.connect()
        c.exchange(request("POST", EAS, [*_EAS_HEADERS, (b"Authorization", lab.basic)]))
        lab.sync()
        refused = [r for r in json_log() if r["message"].startswith("refused")]
        assert refused and "device" not in refused[0] and refused[0]["user"]
    finally:
        lab.stop()
