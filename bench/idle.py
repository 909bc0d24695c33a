#!/usr/bin/env python3
"""What an idle authenticated TLS keep-alive connection costs the gateway in memory.

    .venv/bin/python bench/idle.py                  # 10,000 connections, Basic (ASP) sign-in each
    .venv/bin/python bench/idle.py -n 2000 --auth ntlm
    .venv/bin/python bench/idle.py --auth bearer    # one OAuth grant per client process, then Bearer

What runs (in a temporary directory, removed afterwards): the gateway (``ucgate serve``, the same
configuration as bench/ntlm.py: TLS, local SQLite store, one user and ASP made with the admin CLI,
``max_connections`` and the ``idle`` timeout raised for the run), nginx as the upstream, and
``--clients`` client processes that each open their share of the connections one after another,
sign each in (Basic: one GET with the ASP; NTLM: the Type 1/401/Type 3 handshake with channel
binding; Bearer: one GET with a token from the OAuth grant), read the 200, and then leave it idle.

Measured: the gateway's resident memory (``VmRSS`` of /proc/<pid>/status, all threads) after a
warm-up (a few connections of the same kind opened, signed in and closed: imports, caches and the
first upstream connection are in the base), then with all N connections open and idle (after
``--settle`` seconds), then again after the clients closed them. Printed: KB per connection =
(open - base) / N. ``RLIMIT_NOFILE`` is raised to what N needs when the hard limit allows; else
N is lowered to fit, and the output says so.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import ntlm  # noqa: E402  (bench/ntlm.py: the gateway's configuration, the client, NTLM)
import proxy as common  # noqa: E402

GW_CORE, CLIENT_CORE = common.PROXY_CORE, common.LOAD_CORE


def _rss_kb(pid: int) -> tuple[int, int]:
    """(VmRSS, RssAnon) of ``pid`` in KiB."""
    rss = anon = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
        elif line.startswith("RssAnon:"):
            anon = int(line.split()[1])
    return rss, anon


# --- a client process --------------------------------------------------------------------
def worker(args) -> int:
    """Open ``args.count`` connections, sign each in, print "ready" and wait for stdin to close."""
    import ssl

    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    asp = os.environ["UCGATE_BENCH_ASP"]
    basic = "Basic " + base64.b64encode(f"{ntlm.USER}:{asp}".encode()).decode()
    credential = cbt = None
    if args.auth == "ntlm":
        import spnego.channel_bindings as cb
        from Crypto.Hash import MD4

        from ucgate.gateway.tls import certificate_der
        from ucgate.protocols.ntlm import tls_server_end_point

        cbt = cb.GssChannelBindings(application_data=tls_server_end_point(certificate_der(Path(args.cert))))
        credential = "0" * 32 + ":" + MD4.new(asp.encode("utf-16-le")).hexdigest()
    bearer = None
    if args.auth == "bearer":
        c = ntlm.Client(args.port, ctx)
        bearer = ntlm.bearer_token(c, asp)
        c.close()
    conns = []
    failed = 0
    for _ in range(args.count):
        try:
            c = ntlm.Client(args.port, ctx)
            if args.auth == "ntlm":
                ntlm.ntlm_handshake(c, credential, cbt)
            else:
                status, _, body = c.request(ntlm.AUTH_PATH, basic if args.auth == "basic" else bearer)
                if status != 200 or body != ntlm.BODY:
                    raise RuntimeError(f"expected 200, got {status} {body[:100]!r}")
            if c.buf:
                raise RuntimeError("bytes after the answer")
            conns.append(c)
        except Exception as e:  # counted and reported
            failed += 1
            if failed <= 3:
                print(f"client: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
    print(json.dumps({"open": len(conns), "failed": failed}), flush=True)
    sys.stdin.read()  # until the orchestrator closes our stdin
    for c in conns:
        c.close()
    return 0


# --- the orchestration ---------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("-n", "--connections", type=int, default=10_000, help="idle connections (10000)")
    ap.add_argument(
        "--auth", choices=("basic", "ntlm", "bearer"), default="basic", help="how each connection signs in (basic)"
    )
    ap.add_argument("--clients", type=int, default=4, help="client processes (4)")
    ap.add_argument("--warmup", type=int, default=20, help="connections opened and closed before the base (20)")
    ap.add_argument("--settle", type=float, default=3.0, help="seconds idle before reading the RSS (3)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--count", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--cert", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    common._ensure_ucgate_importable()
    if args.worker:
        return worker(args)
    for tool in ("nginx", "taskset"):
        if not __import__("shutil").which(tool):
            sys.exit(f"bench/idle.py: {tool} not found; run bench/install-deps (as root)")
    # descriptors: the gateway holds N client connections (+ its store, upstream, listeners);
    # each client process its share. Children inherit the raised limit.
    need = args.connections + 512
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    note = ""
    if soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            target = soft
        if target < need:
            n = max(100, target - 512)
            note = (
                f"RLIMIT_NOFILE allows {target} descriptors (hard limit {hard}): "
                f"{n} connections instead of {args.connections}"
            )
            args.connections = n
    work = Path(tempfile.mkdtemp(prefix="ucgate-bench-idle-"))
    work.chmod(0o755)
    procs = ntlm._Procs()
    return common.run_cleanly(work, procs, args.keep, lambda: _run(args, work, procs, note))


def _run(args, work: Path, procs, note: str) -> int:
    from ucgate.gateway.tls import make_self_signed

    cert, key = work / "cert.pem", work / "key.pem"
    make_self_signed(cert, key, ["localhost", "127.0.0.1"])
    cert.chmod(0o644)
    key.chmod(0o644)
    (work / "data").mkdir()
    (work / "keys").mkdir(mode=0o700)
    user = "user root;" if os.geteuid() == 0 else ""
    up_port, gw_port = common.free_port(), common.free_port()
    (work / "upstream").mkdir()
    (work / "upstream" / "nginx.conf").write_text(ntlm.nginx_upstream_conf(work / "upstream", up_port, user))
    up_log = work / "upstream" / "stderr.log"
    up = procs.start(
        [
            "taskset",
            "-c",
            CLIENT_CORE,
            "nginx",
            "-p",
            str(work / "upstream"),
            "-c",
            str(work / "upstream" / "nginx.conf"),
            "-e",
            str(work / "upstream" / "error.log"),
        ],
        up_log,
    )
    common.wait_port(up_port, up, up_log)

    cfg = work / "ucgate.toml"
    cfg.write_text(
        ntlm.gateway_conf(gw_port, up_port, cert, key, work)
        + f"""
[gateway.limits]
max_connections = {args.connections + 1000}

[gateway.timeouts]
idle = 3600
"""
    )
    ucgate = [sys.executable, "-m", "ucgate"]
    subprocess.run(
        [*ucgate, "user", "add", "-c", str(cfg), ntlm.USER, "--upn", f"{ntlm.USER}@bench.test"],
        check=True,
        capture_output=True,
    )
    r = subprocess.run(
        [*ucgate, "asp", "create", "-c", str(cfg), ntlm.USER, "-l", "bench", "--json"],
        check=True,
        capture_output=True,
        text=True,
    )
    asp = json.loads(r.stdout)["password"]
    gw_log = work / "gateway.log"
    gw = procs.start(["taskset", "-c", GW_CORE, *ucgate, "serve", "-c", str(cfg)], gw_log)
    common.wait_port(gw_port, gw, gw_log)
    env = dict(os.environ, UCGATE_BENCH_ASP=asp)

    def clients(total: int, parts: int) -> tuple[list[subprocess.Popen], int, int]:
        shares = [total // parts + (1 if i < total % parts else 0) for i in range(parts)]
        ps = []
        for share in (s for s in shares if s):
            err = work / f"client-{len(ps)}.err"
            with open(err, "ab") as ef:
                ps.append(
                    subprocess.Popen(
                        [
                            "taskset",
                            "-c",
                            CLIENT_CORE,
                            sys.executable,
                            str(Path(__file__).resolve()),
                            "--worker",
                            "--auth",
                            args.auth,
                            "--count",
                            str(share),
                            "--port",
                            str(gw_port),
                            "--cert",
                            str(cert),
                        ],
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        stderr=ef,
                        env=env,
                        text=True,
                        start_new_session=True,
                    )
                )
            procs.live.append(ps[-1])
        opened = failed = 0
        for p in ps:
            line = p.stdout.readline()
            if not line:
                raise RuntimeError(f"a client process failed:\n{(work / 'client-0.err').read_text()[-2000:]}")
            r = json.loads(line)
            opened += r["open"]
            failed += r["failed"]
        return ps, opened, failed

    def close(ps: list[subprocess.Popen]) -> None:
        for p in ps:
            p.stdin.close()
        for p in ps:
            p.wait(60)

    def settle_connections(target: int, timeout: float = 30.0) -> None:
        """Until the gateway holds ``target`` client connections (its fds, roughly)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(os.listdir(f"/proc/{gw.pid}/fd")) <= target:
                return
            time.sleep(0.1)

    print(
        f"ucgate bench/idle.py: {args.connections} idle TLS keep-alive connections signed in with "
        f"{args.auth}; {args.clients} client processes; source: {ntlm._git_state()}",
        flush=True,
    )
    if note:
        print(f"note: {note}", flush=True)
    fds0 = len(os.listdir(f"/proc/{gw.pid}/fd"))
    ps, _, _ = clients(args.warmup, 1)  # warm-up: imports, caches, the upstream connection
    close(ps)
    settle_connections(fds0 + 2)
    time.sleep(args.settle)
    base, base_anon = _rss_kb(gw.pid)
    t0 = time.monotonic()
    ps, opened, failed = clients(args.connections, args.clients)
    took = time.monotonic() - t0
    time.sleep(args.settle)
    full, full_anon = _rss_kb(gw.pid)
    held = len(os.listdir(f"/proc/{gw.pid}/fd")) - fds0
    close(ps)
    settle_connections(fds0 + 2)
    time.sleep(args.settle)
    after, _ = _rss_kb(gw.pid)
    if gw.poll() is not None:
        raise RuntimeError(f"the gateway exited ({gw.returncode}):\n{gw_log.read_text()[-2000:]}")
    per = (full - base) / max(opened, 1)
    per_anon = (full_anon - base_anon) / max(opened, 1)
    print(f"opened {opened} connections in {took:.1f} s ({failed} failed); the gateway held {held} more fds")
    print()
    print(f"{'gateway RSS':<28} {'KiB':>10}")
    print(f"{'base (after warm-up)':<28} {base:>10}")
    print(f"{'with the connections idle':<28} {full:>10}")
    print(f"{'after they closed':<28} {after:>10}")
    print()
    print(f"per idle connection: {per:.2f} KiB RSS ({per_anon:.2f} KiB anonymous memory)")
    if failed:
        print(f"warning: {failed} connections failed to open or sign in (see {work}/client-*.err with --keep)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
