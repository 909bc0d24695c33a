#!/usr/bin/env python3
"""Benchmark the SIP relay against HAProxy (TCP mode, TLS on both sides), in the same run.

    .venv/bin/python bench/sip.py                # 5 s per run, 2 interleaved rounds, 4 connections
    .venv/bin/python bench/sip.py --quick        # 2 s, 1 round
    .venv/bin/python bench/sip.py --connections 8 --window 32 --duration 10 --rounds 3

What runs (each its own process group, killed on exit; configs in a temporary directory):

    edge       the lab registrar (ucgate.lab.registrar) in benchmark mode: a real NTLM sign-in,
               then every message on the connection answered with a canned 200 without parsing
               (its cost stays off the measured processes); pinned to core 1
    subject    the SIP relay (ucgate.gateway.sip, uvloop) with the id service and device
               partnerships in-process (SQLite), TLS listener → verified TLS to the edge; core 0
    reference  HAProxy, TCP mode, ``bind ... ssl crt`` → ``server ... ssl verify required``: the
               same two TLS legs, no SIP inspection; core 0
    load       N client processes (core 1): each signs in through the proxy under test (REGISTER,
               NTLM with pyspnego), then keeps ``window`` signed-looking MESSAGEs in flight on its
               registered keep-alive connection, in batches (one write per window)

Printed: messages/s, the proxy's CPU (1.00 = one core busy), CPU per message (the most robust
figure on a shared machine), and the ratios relay/HAProxy. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
from proxy import Procs, _tree_pids, busy_seconds, cpu_seconds, free_port, wait_port  # noqa: E402

PASSWORD = "Bench-Passw0rd!"
CANNED = (
    b"SIP/2.0 200 OK\r\nVia: SIP/2.0/TLS 127.0.0.1:5061;branch=z9hG4bK1\r\n"
    b"From: <sip:u0@contoso.com>;tag=1\r\nTo: <sip:bob@contoso.com>;tag=2\r\nCall-ID: bench\r\n"
    b"CSeq: 1 MESSAGE\r\nContent-Length: 0\r\n\r\n"
)
PROXY_CORE, LOAD_CORE = "0", "1"


def _users(n: int) -> list[str]:
    return [f"u{i}" for i in range(n)]


# --- roles (each runs in its own process) ----------------------------------------------------------
def role_edge(a) -> None:
    from ucgate.lab.registrar import Account, LabRegistrar
    from ucgate.protocols.sip import KeepAlive, SipFramer

    class BenchEdge(LabRegistrar):
        async def _conn(self, reader, writer) -> None:
            framer, sas, cid, fast = SipFramer(), {}, next(self._conn_ids), False
            try:
                while data := await reader.read(65536):
                    if fast:
                        writer.write(CANNED * data.count(b"\r\n\r\n"))  # no body, no message split a CRLFCRLF
                        await writer.drain()
                        continue
                    framer.feed(data)
                    while (ev := framer.next_event()) is not None:
                        if isinstance(ev, KeepAlive):
                            continue
                        for out in self._handle(ev, sas, cid):
                            writer.write(out)
                            fast = fast or (ev.method == "REGISTER" and out.startswith(b"SIP/2.0 200"))
                    await writer.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                writer.close()

    async def main() -> None:
        edge = BenchEdge(
            Path(a.cert),
            Path(a.key),
            [Account(u, PASSWORD, f"{u}@contoso.com") for u in _users(64)],
            record=False,
            check_signatures=False,
        )
        await edge.start("127.0.0.1", a.port)
        await asyncio.Event().wait()

    asyncio.run(main())


def role_relay(a) -> None:
    import logging

    from ucgate.app import run
    from ucgate.config import LockoutConfig
    from ucgate.gateway.sip import SipRelay
    from ucgate.gateway.sipconfig import SipConfig
    from ucgate.id.devices import DeviceService
    from ucgate.id.factory import open_services
    from ucgate.store import PartnershipStore

    logging.basicConfig(level=logging.WARNING)
    work = Path(a.work)
    (work / "data").mkdir(exist_ok=True)
    (work / "keys").mkdir(mode=0o700, exist_ok=True)
    ids = open_services(
        store_url=f"sqlite:///{work / 'data' / 'ucgate.db'}",
        key_file=work / "keys" / "k",
        audit_file=None,
        lockout=LockoutConfig(),
        netbios_domains=("CONTOSO",),
    )
    for u in _users(64):
        ids.users.add(u, upn=f"{u}@contoso.com", sip_uri=f"sip:{u}@contoso.com")
    devices = DeviceService(
        PartnershipStore(ids.components.repo.engine),
        ids.audit,
        ids.bus,
        defaults={"default_action": "allowed", "require_second_factor": False},
    )
    s = SipConfig(
        enabled=True,
        listen_host="127.0.0.1",
        listen_port=a.port,
        tls_cert=Path(a.cert),
        tls_key=Path(a.key),
        edge_host="127.0.0.1",
        edge_port=a.edge_port,
        server_name="localhost",
        ca_bundle=Path(a.cert),
    )
    relay = SipRelay(s, ids.credentials, ids.audit, devices=devices, failure_floor=0.0)

    async def main() -> None:
        await relay.start()
        await asyncio.Event().wait()

    run(main)


def role_load(a) -> None:
    from ucgate.lab.sipclient import SipClient

    c = SipClient(
        "127.0.0.1", a.port, aor=f"{a.user}@contoso.com", ca_file=a.cert, login=f"CONTOSO\\{a.user}", password=PASSWORD
    ).connect()
    answer = c.register()
    if answer is None or answer.status != 200:
        print(json.dumps({"error": f"REGISTER: {answer.start_line.decode() if answer else 'closed'}"}), flush=True)
        return
    auth = (
        f'Authorization: NTLM qop="auth", opaque="{c.sa.opaque}", realm="SIP Communications Service", '
        f'targetname="{c.sa.targetname}", crand="{c.sa.crand}", cnum="1", response="{"0" * 32}"'
    )
    one = c.build(
        "MESSAGE",
        "sip:bob@contoso.com",
        to="sip:bob@contoso.com",
        auth=auth,
        headers=["Content-Type: text/plain"],
        cseq=1000,
    )
    batch = one * a.window
    sock = c.sock
    assert sock is not None
    sock.settimeout(10)
    print(json.dumps({"ready": True}), flush=True)
    start_at = float(sys.stdin.readline())  # the coordinator's go (wall clock)
    stop_at = start_at + a.duration
    while time.time() < start_at:
        time.sleep(0.001)
    done, tail = 0, b""
    while time.time() < stop_at:
        sock.sendall(batch)
        want = done + a.window
        while done < want:
            data = sock.recv(262144)
            if not data:
                print(json.dumps({"error": "closed", "messages": done}), flush=True)
                return
            buf = tail + data
            done += buf.count(b"SIP/2.0 ")
            tail = buf[-7:]
    print(json.dumps({"messages": done}), flush=True)


# --- the coordinator ---------------------------------------------------------------------------------
def haproxy_conf(port: int, edge_port: int, pem: Path, cert: Path) -> str:
    return f"""global
    maxconn 1000
    nbthread 1
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
listen sip
    bind 127.0.0.1:{port} ssl crt {pem}
    server edge 127.0.0.1:{edge_port} ssl verify required ca-file {cert} verifyhost localhost sni str(localhost)
"""


def measure(procs: Procs, work: Path, name: str, port: int, subject_pid: int, a, cert: Path) -> dict:
    loads = []
    for i in range(a.connections):
        argv = [
            "taskset",
            "-c",
            LOAD_CORE,
            sys.executable,
            __file__,
            "--role",
            "load",
            "--port",
            str(port),
            "--cert",
            str(cert),
            "--user",
            f"u{i}",
            "--window",
            str(a.window),
            "--duration",
            str(a.duration),
        ]
        loads.append(
            subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True)
        )
    for p in loads:
        line = p.stdout.readline()
        if "ready" not in line:
            raise RuntimeError(f"{name}: a load client failed: {line or p.stderr}")
    start_at = time.time() + 0.3
    for p in loads:
        p.stdin.write(f"{start_at}\n")
        p.stdin.flush()
    while time.time() < start_at:
        time.sleep(0.001)
    pids = _tree_pids(subject_pid)
    c0, b0, t0 = cpu_seconds(pids), busy_seconds(), time.monotonic()
    time.sleep(a.duration)
    c1, b1, t1 = cpu_seconds(pids), busy_seconds(), time.monotonic()
    total, errors = 0, []
    for p in loads:
        out, _ = p.communicate(timeout=30)
        r = json.loads(out.strip().splitlines()[-1])
        total += r.get("messages", 0)
        if "error" in r:
            errors.append(r["error"])
    wall = t1 - t0
    cpu = (c1 - c0) / wall
    return {
        "name": name,
        "mps": total / a.duration,
        "cpu": cpu,
        "us": 1e6 * (c1 - c0) / total if total else float("nan"),
        "machine": (b1 - b0) / wall,
        "errors": errors,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--role", choices=["edge", "relay", "load"])
    p.add_argument("--port", type=int)
    p.add_argument("--edge-port", type=int)
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--work")
    p.add_argument("--user")
    p.add_argument("--connections", type=int, default=4)
    p.add_argument("--window", type=int, default=16)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--keep", action="store_true")
    a = p.parse_args(argv)
    if a.role == "edge":
        role_edge(a)
        return 0
    if a.role == "relay":
        role_relay(a)
        return 0
    if a.role == "load":
        role_load(a)
        return 0
    if a.quick:
        a.duration, a.rounds = 2.0, 1
    from ucgate.gateway.tls import make_self_signed

    work = Path(tempfile.mkdtemp(prefix="ucgate-bench-sip-"))
    procs = Procs()
    try:
        cert, key = work / "cert.pem", work / "key.pem"
        make_self_signed(cert, key, ["localhost", "127.0.0.1"])
        pem = work / "haproxy.pem"
        pem.write_bytes(cert.read_bytes() + key.read_bytes())
        edge_port, relay_port, hap_port = free_port(), free_port(), free_port()
        py = sys.executable
        edge = procs.start(
            [
                "taskset",
                "-c",
                LOAD_CORE,
                py,
                __file__,
                "--role",
                "edge",
                "--port",
                str(edge_port),
                "--cert",
                str(cert),
                "--key",
                str(key),
            ],
            work / "edge.log",
        )
        wait_port(edge_port, edge, work / "edge.log")
        relay = procs.start(
            [
                "taskset",
                "-c",
                PROXY_CORE,
                py,
                __file__,
                "--role",
                "relay",
                "--port",
                str(relay_port),
                "--edge-port",
                str(edge_port),
                "--cert",
                str(cert),
                "--key",
                str(key),
                "--work",
                str(work),
            ],
            work / "relay.log",
        )
        wait_port(relay_port, relay, work / "relay.log", timeout=60)
        (work / "haproxy.cfg").write_text(haproxy_conf(hap_port, edge_port, pem, cert))
        haproxy = procs.start(
            ["taskset", "-c", PROXY_CORE, "haproxy", "-f", str(work / "haproxy.cfg"), "-db"], work / "haproxy.log"
        )
        wait_port(hap_port, haproxy, work / "haproxy.log")
        results: dict[str, list[dict]] = {"ucgate relay": [], "haproxy tcp": []}
        for r in range(a.rounds):
            for name, port, pid in (("ucgate relay", relay_port, relay.pid), ("haproxy tcp", hap_port, haproxy.pid)):
                res = measure(procs, work, name, port, pid, a, cert)
                results[name].append(res)
                print(
                    f"round {r + 1} {name:13s} {res['mps']:9.0f} msg/s  proxy CPU {res['cpu']:.2f}  "
                    f"{res['us']:7.1f} us/msg  machine busy {res['machine']:.2f}"
                    + (f"  errors {res['errors']}" if res["errors"] else ""),
                    flush=True,
                )
        med = {n: {k: statistics.median(x[k] for x in rs) for k in ("mps", "cpu", "us")} for n, rs in results.items()}
        u, h = med["ucgate relay"], med["haproxy tcp"]
        print(
            f"\n{a.connections} registered connections x {a.window} MESSAGEs in flight, {a.duration:.0f} s, "
            f"{a.rounds} round(s), medians; TLS on both legs of both proxies"
        )
        print(f"{'':14s}{'msg/s':>10s}{'proxy CPU':>11s}{'us/msg':>9s}")
        for n, m in med.items():
            print(f"{n:14s}{m['mps']:10.0f}{m['cpu']:11.2f}{m['us']:9.1f}")
        print(
            f"ratio relay/haproxy: throughput {u['mps'] / h['mps']:.2f}x, CPU per message {u['us'] / h['us']:.2f}x "
            f"(CPU-normalised throughput {h['us'] / u['us']:.2f}x)"
        )
        return 0
    finally:
        procs.stop_all()
        if not a.keep:
            import shutil

            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept {work}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
