#!/usr/bin/env python3
"""Instructions per keep-alive request of the whole gateway process — sockets, the loop, TLS —
counted by valgrind's callgrind: the same figure whatever else the machine is doing.

    .venv/bin/python bench/instructions.py                                  # this tree, TLS and plain
    .venv/bin/python bench/instructions.py --src /tmp/base/src --src src    # A/B source trees
    .venv/bin/python bench/instructions.py --mode tls -n 5000

``bench/proxy.py`` measures the gateway's CPU per request under wrk's load against nginx: the
right question, but on a shared VM the same code moves by ±10 % between runs, more than the 5 %
a change may cost (issue 15). This asks the same question of the same process
(``ucgate serve`` with proxy.py's configuration, anonymous ``GET`` of the autodiscover root)
with one client that sends each request after the previous answer, so that every request is
one wake-up of the loop whatever the timing: after a warm-up of 300 requests the counters are
zeroed (``callgrind_control -z``), ``-n`` requests are sent, the counters dumped. The upstream is
a thread of this process answering nginx's response of proxy.py (not counted). Every thread of
the gateway is counted; the kernel is not (the system calls per request are the same two reads
and two writes in both trees, ``strace -c``). Each run takes about a minute (the gateway starts
under valgrind). Both gateways get one hash seed (``PYTHONHASHSEED=0``), as hotpath.py's children.

``--scenario`` asks issue 16's sign-in questions the same way, with ``bench/ntlm.py``'s gateway
(in-process id service on SQLite, a user with an ASP made by the admin CLI, channel binding
required) and its client: ``tls-new`` (a new TLS connection and one anonymous GET per
operation), ``basic-new`` (a new connection and one GET with Basic and the ASP), ``ntlm-new`` (a
new connection, NTLM Type 1 / 401 / Type 3 / 200 with channel binding); ``ka`` is the keep-alive
GET above. The sign-ins' ratios to ``tls-new`` are printed: ntlm.py's CPU ratios move by 0.4
between runs of one tree because ``tls-new`` is bound by the clients, these do not. The id
service's writer thread (the audit's group commit) is counted with the rest; the kernel's work
(the handshake's extra system calls) is not.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import ntlm as signin  # noqa: E402  (bench/ntlm.py: the sign-in gateway's configuration, its client)
import proxy as common  # noqa: E402  (bench/proxy.py: the gateway's configuration, ports)

BODY = common.BODY.encode()
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Thu, 03 Dec 2026 14:00:00 GMT\r\n"
    b"Content-Type: application/json\r\nContent-Length: %d\r\nConnection: keep-alive\r\n\r\n%b" % (len(BODY), BODY)
)
REQUEST = f"GET {common.PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
WARMUP = 300
SIGN_IN_WARMUP = 30  # operations before the counters are zeroed, for the new-connection scenarios
SCENARIOS = ("ka", "tls-new", "basic-new", "ntlm-new")
START_TIMEOUT = 300.0  # seconds for the gateway to listen under valgrind


def _upstream(listener: socket.socket) -> None:
    """Answer every request head on every connection with RESPONSE (keep-alive)."""

    def serve(c: socket.socket) -> None:
        buf = b""
        with c:
            while True:
                data = c.recv(65536)
                if not data:
                    return
                buf += data
                while b"\r\n\r\n" in buf:
                    buf = buf.partition(b"\r\n\r\n")[2]
                    c.sendall(RESPONSE)

    while True:
        try:
            c, _ = listener.accept()
        except OSError:
            return
        threading.Thread(target=serve, args=(c,), daemon=True).start()


def _signin_gateway(src: str, d: Path, port: int, up_port: int, cert: Path, key: Path) -> tuple[Path, str]:
    """ntlm.py's gateway configuration in ``d``, its user and ASP made with the admin CLI of
    ``src``: the configuration file and the ASP."""
    (d / "data").mkdir()
    (d / "keys").mkdir(mode=0o700)
    cfg = d / "ucgate.toml"
    cfg.write_text(signin.gateway_conf(port, up_port, cert, key, d))
    return cfg, signin.provision(cfg, dict(os.environ, PYTHONPATH=src))


def _operation(scenario: str, port: int, cert: Path, asp: str) -> Callable[[], None]:
    """One operation of a new-connection scenario, with ntlm.py's client."""
    creds = signin.client_credentials(cert, asp)
    return lambda: signin.one_new(scenario, port, creds)


def measure(src: str, mode: str, n: int, up_port: int, work: Path, scenario: str = "ka") -> int:
    """Instructions the gateway of ``src`` spends on ``n`` operations of ``scenario`` (``ka``:
    keep-alive requests over ``mode``; else a new TLS connection each, see the docstring)."""
    from ucgate.gateway.tls import make_self_signed

    d = Path(tempfile.mkdtemp(prefix=f"{scenario}-{mode}-", dir=work))
    cert, key = d / "cert.pem", d / "key.pem"
    make_self_signed(cert, key, ["localhost", "127.0.0.1"])
    port = common.free_port()
    if scenario == "ka":
        cfg = d / "ucgate.toml"
        cfg.write_text(common.ucgate_conf(port, up_port, cert, key, d, mode == "plain"))
        asp = ""
    else:
        cfg, asp = _signin_gateway(src, d, port, up_port, cert, key)
    out = d / "callgrind.out"
    err = d / "stderr.log"
    env = dict(os.environ, PYTHONPATH=src, PYTHONHASHSEED="0")
    argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, "-m", "ucgate"]
    with open(err, "wb") as log:
        gw = subprocess.Popen([*argv, "serve", "-c", str(cfg)], env=env, stdout=log, stderr=log, start_new_session=True)
    try:
        common.wait_port(port, gw, err, timeout=START_TIMEOUT)
        if scenario == "ka":
            one, warmup, conn = _keep_alive(port, mode, err)
        else:
            one, warmup, conn = _operation(scenario, port, cert, asp), SIGN_IN_WARMUP, None
        try:
            for _ in range(warmup):
                one()
            subprocess.run(["callgrind_control", "-z", str(gw.pid)], check=True, capture_output=True)
            for _ in range(n):
                one()
            subprocess.run(["callgrind_control", "-d", str(gw.pid)], check=True, capture_output=True)
        finally:
            if conn is not None:
                conn.close()
    finally:
        os.killpg(gw.pid, 15)
        gw.wait(60)
    # the dump asked for is the file numbered 1 (the final one at exit holds the rest)
    for f in sorted(glob.glob(f"{out}.*")):
        if f.endswith(".1") or re.search(r"\.1-\d+$", f):
            m = re.search(r"^(?:summary|totals): (\d+)", Path(f).read_text(), re.M)
            if m:
                return int(m.group(1))
    sys.exit(f"no callgrind dump of the measured requests in {d}")


def _keep_alive(port: int, mode: str, err: Path) -> tuple[Callable[[], None], int, socket.socket]:
    """One keep-alive GET per call on one connection (TLS or plain)."""
    s = socket.create_connection(("127.0.0.1", port))
    if mode == "tls":
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        s = ctx.wrap_socket(s, server_hostname="localhost")

    def one() -> None:
        s.sendall(REQUEST)
        buf = b""
        while not buf.endswith(BODY):
            data = s.recv(65536)
            if not data:
                raise RuntimeError(f"the gateway closed the connection:\n{err.read_text()[-2000:]}")
            buf += data
        if not buf.startswith(b"HTTP/1.1 200 "):
            raise RuntimeError(f"expected 200, got {buf[:100]!r}")

    return one, WARMUP, s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", action="append", default=[], help="a src/ tree to measure (repeatable; default: this one)")
    ap.add_argument("--mode", action="append", choices=("tls", "plain"), help="TLS or plain HTTP (repeatable; both)")
    ap.add_argument("-n", type=int, help="operations measured per run (2000 keep-alive requests; 200 sign-ins)")
    ap.add_argument(
        "--scenario",
        action="append",
        choices=SCENARIOS,
        help="ka (keep-alive GET, the default) or a new-connection scenario of ntlm.py (repeatable)",
    )
    ap.add_argument("--keep", action="store_true", help="keep the callgrind dumps (for callgrind_annotate)")
    args = ap.parse_args()
    for tool in ("valgrind", "callgrind_control"):
        if not shutil.which(tool):
            sys.exit(f"bench/instructions.py: {tool} not found (Debian: apt-get install valgrind)")
    common._ensure_ucgate_importable()
    trees = [str(Path(t).resolve()) for t in args.src] or [str(HERE.parent / "src")]
    for t in trees:
        if not (Path(t) / "ucgate" / "__init__.py").is_file():
            sys.exit(f"--src {t}: expected DIR/ucgate/__init__.py")
    scenarios = args.scenario or ["ka"]
    modes = args.mode or ["tls", "plain"]
    runs = [(sc, m) for sc in scenarios for m in (modes if sc == "ka" else ["tls"])]
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    threading.Thread(target=_upstream, args=(listener,), daemon=True).start()
    work = Path(tempfile.mkdtemp(prefix="ucgate-bench-instructions-"))
    try:
        results: dict[tuple[str, str, str], float] = {}
        for sc, mode in runs:
            n = args.n or (2000 if sc == "ka" else 200)
            for t in trees:
                total = measure(t, mode, n, listener.getsockname()[1], work, sc)
                results[t, sc, mode] = total / n
                unit = "request" if sc == "ka" else "operation"
                print(f"{results[t, sc, mode]:11.0f} instructions/{unit}  {sc:<9} {mode:<5} {t}", flush=True)
        for t in trees:
            base = results.get((t, "tls-new", "tls"))
            for sc in ("ntlm-new", "basic-new"):
                if base and (t, sc, "tls") in results:
                    print(f"{sc} / tls-new: {results[t, sc, 'tls'] / base:.2f}x  {t}")
        if len(trees) > 1:
            for sc, mode in runs:
                base = results[trees[0], sc, mode]
                for t in trees[1:]:
                    change = 100 * (results[t, sc, mode] - base) / base
                    print(f"{sc:<9} {mode:<5} {t} against {trees[0]}: {change:+.1f} %")
    finally:
        listener.close()
        if args.keep:
            print(f"kept {work} (callgrind_annotate --inclusive=yes {work}/*/callgrind.out.*.1)")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
