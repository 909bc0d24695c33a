#!/usr/bin/env python3
"""What authentication costs the gateway: NTLM handshakes, Basic with an ASP, keep-alive.

    .venv/bin/python bench/ntlm.py              # 10 s per scenario, 6 client processes
    .venv/bin/python bench/ntlm.py --quick      # 3 s per scenario
    .venv/bin/python bench/ntlm.py --profile ntlm-new   # then py-spy the gateway in that scenario
    .venv/bin/python bench/ntlm.py --quick --rounds 3 --variant before=/tmp/base/src   # A/B, same run

What runs (all in a temporary directory, removed afterwards):

    subject   ``ucgate serve -c <generated toml>`` pinned to core 0: TLS listener (self-signed
              EC P-256 certificate), local SQLite store + key file, ``[log] level = "warning"``,
              extended protection "require"; a user ``bench`` and an ASP made with the admin CLI
              (``ucgate user add``, ``ucgate asp create``)
    upstream  nginx, 1 worker, pinned to core 1: ``return 200`` with a fixed ~100-byte body
    clients   N Python processes pinned to core 1 (raw ssl sockets, pyspnego for NTLM with
              channel binding), all started before the measured window opens

Scenarios (each measured over the same window by every client; see bench/README.md):

    tls-new     new TLS connection + one anonymous GET (the TLS handshake alone, as reference)
    ntlm-new    new TLS connection + NTLM Type 1 -> 401 + Type 2 -> Type 3 -> 200 (channel binding)
    basic-new   new TLS connection + one GET with Basic (ASP): store lookup + decrypt each time
    anon-ka     keep-alive: GET /Autodiscover/AutodiscoverService.svc/root, no credentials
    ntlm-ka     keep-alive after one NTLM handshake: GET /ucwa/... without Authorization
    basic-ka    keep-alive: GET /ucwa/... with the same Basic header every time (memoised)
    bearer-ka   keep-alive: one OAuth password grant (POST /WebTicket/oauthtoken, the ASP), then
                GET /ucwa/... with ``Authorization: Bearer cwt=...`` (the token the gateway issued)

The gateway's CPU comes from /proc/<pid>/stat (utime + stime, all threads) over the window.
It prints a table and exits 0; every process it starts is killed on exit, error or signal.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import proxy as common  # noqa: E402  (bench/proxy.py: processes, /proc accounting, nginx config)

REPO = common.REPO
ANON_PATH = common.PATH  # /Autodiscover/AutodiscoverService.svc/root (anonymous)
AUTH_PATH = "/ucwa/oauth/v1/applications"  # a protected SfB path (service "ucwa")
BODY = common.BODY.encode()
GW_CORE, CLIENT_CORE = common.PROXY_CORE, common.LOAD_CORE
DOMAIN = "BENCH"
USER = "bench"

SCENARIOS = {
    # name: (new connection per operation?, what one operation is)
    "tls-new": (True, "TLS handshake + 1 anonymous GET"),
    "ntlm-new": (True, "TLS + NTLM Type1/401/Type3/200 (CBT)"),
    "basic-new": (True, "TLS + 1 GET with Basic (ASP)"),
    "anon-ka": (False, "anonymous GET, keep-alive"),
    "ntlm-ka": (False, "GET after NTLM, no Authorization"),
    "basic-ka": (False, "GET with Basic (memoised)"),
    "bearer-ka": (False, "GET with Bearer (OAuth grant once)"),
}
TOKEN_PATH = "/WebTicket/oauthtoken"  # the OAuth password grant the gateway intercepts


# --- the client (runs in worker processes) -------------------------------------------------
class Client:
    """A minimal HTTP/1.1 client over one TLS socket: enough for fixed-size answers."""

    def __init__(self, port: int, ctx: ssl.SSLContext) -> None:
        raw = socket.create_connection(("127.0.0.1", port), timeout=30)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = ctx.wrap_socket(raw, server_hostname="localhost")
        self.buf = b""

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def request(
        self, path: str, authz: str | None = None, form: bytes | None = None
    ) -> tuple[int, dict[bytes, bytes], bytes]:
        extra = f"Authorization: {authz}\r\n" if authz else ""
        if form is None:
            self.sock.sendall(
                f"GET {path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: ucgate-bench\r\n{extra}\r\n".encode()
            )
        else:
            self.sock.sendall(
                f"POST {path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: ucgate-bench\r\n"
                f"Content-Type: application/x-www-form-urlencoded\r\n"
                f"Content-Length: {len(form)}\r\n{extra}\r\n".encode()
                + form
            )
        while (i := self.buf.find(b"\r\n\r\n")) < 0:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("server closed the connection")
            self.buf += chunk
        head, self.buf = self.buf[:i], self.buf[i + 4 :]
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        headers: dict[bytes, bytes] = {}
        for line in lines[1:]:
            k, _, v = line.partition(b":")
            k = k.strip().lower()
            headers[k] = headers[k] + b", " + v.strip() if k in headers else v.strip()
        n = int(headers.get(b"content-length", b"0"))
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("server closed the connection mid-body")
            self.buf += chunk
        body, self.buf = self.buf[:n], self.buf[n:]
        return status, headers, body


def _ntlm_token(headers: dict[bytes, bytes]) -> bytes:
    for part in headers.get(b"www-authenticate", b"").split(b","):
        scheme, _, tok = part.strip().partition(b" ")
        if scheme.lower() == b"ntlm" and tok:
            return base64.b64decode(tok)
    raise RuntimeError(f"no NTLM challenge in {headers.get(b'www-authenticate')!r}")


def ntlm_handshake(c: Client, credential: str, cbt) -> None:
    """Type 1 -> 401 + Type 2 -> Type 3 -> 200, on the client's connection."""
    import spnego

    ctx = spnego.client(f"{DOMAIN}\\{USER}", credential, protocol="ntlm", channel_bindings=cbt)
    t1 = ctx.step()
    assert t1 is not None  # an NTLM client's first step has its Type 1
    status, headers, _ = c.request(AUTH_PATH, "NTLM " + base64.b64encode(t1).decode())
    if status != 401:
        raise RuntimeError(f"NTLM Type 1: expected 401, got {status}")
    t3 = ctx.step(_ntlm_token(headers))
    assert t3 is not None  # and its second, the Type 3
    status, _, body = c.request(AUTH_PATH, "NTLM " + base64.b64encode(t3).decode())
    if status != 200 or body != BODY:
        raise RuntimeError(f"NTLM Type 3: expected 200 and the upstream body, got {status} {body[:100]!r}")


def bearer_token(c: Client, asp: str) -> str:
    """The OAuth password grant with the ASP (verified by the gateway; the upstream nginx
    answers the token request with a fresh ``cwt=`` token): the Authorization value to send."""
    from urllib.parse import urlencode

    form = urlencode({"grant_type": "password", "username": USER, "password": asp}).encode()
    status, _, body = c.request(TOKEN_PATH, form=form)
    if status != 200:
        raise RuntimeError(f"OAuth grant: expected 200, got {status} {body[:200]!r}")
    return "Bearer " + json.loads(body)["access_token"]


@dataclass(frozen=True)
class Credentials:
    """What a client signs in with: its TLS context, the channel binding of the gateway's
    certificate, the ASP as pyspnego's "LM:NT" hash pair and as a Basic header."""

    ctx: ssl.SSLContext
    cbt: Any
    ntlm: str
    basic: str


def client_credentials(cert: Path, asp: str) -> Credentials:
    import spnego.channel_bindings as cb
    from Crypto.Hash import MD4

    from ucgate.gateway.tls import certificate_der
    from ucgate.protocols.ntlm import tls_server_end_point

    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    cbt = cb.GssChannelBindings(application_data=tls_server_end_point(certificate_der(cert)))
    # pyspnego accepts "LM:NT" hashes instead of a password: skips its pure-Python MD4 (client CPU)
    ntlm = "0" * 32 + ":" + MD4.new(asp.encode("utf-16-le")).hexdigest()
    basic = "Basic " + base64.b64encode(f"{USER}:{asp}".encode()).decode()
    return Credentials(ctx, cbt, ntlm, basic)


def one_new(scen: str, port: int, creds: Credentials) -> None:
    """One operation of a new-connection scenario (tls-new, basic-new, ntlm-new)."""
    c = Client(port, creds.ctx)
    try:
        if scen == "tls-new":
            status, _, body = c.request(ANON_PATH)
        elif scen == "basic-new":
            status, _, body = c.request(AUTH_PATH, creds.basic)
        else:
            ntlm_handshake(c, creds.ntlm, creds.cbt)
            return
        if status != 200 or body != BODY:
            raise RuntimeError(f"{scen}: expected 200, got {status} {body[:100]!r}")
    finally:
        c.close()


def worker(args) -> int:
    """One client process: wait for the window, run the scenario, report JSON on stdout."""
    asp = os.environ["UCGATE_BENCH_ASP"]
    creds = client_credentials(Path(args.cert), asp)
    ctx, cbt, credential, basic = creds.ctx, creds.cbt, creds.ntlm, creds.basic
    scen = args.worker
    new_conn = SCENARIOS[scen][0]

    conn: Client | None = None
    path, authz = (ANON_PATH, None) if scen == "anon-ka" else (AUTH_PATH, basic if scen == "basic-ka" else None)

    def sign_in() -> None:  # on a new keep-alive connection
        nonlocal authz
        assert conn is not None  # the keep-alive scenarios open it first
        if scen == "ntlm-ka":
            ntlm_handshake(conn, credential, cbt)
        elif scen == "bearer-ka":
            authz = bearer_token(conn, asp)

    def one_ka() -> None:
        assert conn is not None
        status, _, body = conn.request(path, authz)
        if status != 200 or body != BODY:
            raise RuntimeError(f"{scen}: expected 200, got {status} {body[:100]!r}")

    if new_conn:

        def op() -> None:
            one_new(scen, args.port, creds)

        op()  # warm: imports, first handshake
    else:
        conn = Client(args.port, ctx)
        sign_in()
        one_ka()
        op = one_ka

    start, end = args.start, args.end
    while time.monotonic() < start:
        time.sleep(min(0.01, max(0.0, start - time.monotonic())))
    lat: list[float] = []
    errors = 0
    first_error = ""
    cpu0 = time.process_time()
    now = time.monotonic()
    while now < end:
        t0 = now
        try:
            op()
        except Exception as e:  # counted and reported
            errors += 1
            first_error = first_error or f"{type(e).__name__}: {e}"
            if not new_conn:  # the connection is gone: open a new one (and sign in again)
                try:
                    assert conn is not None
                    conn.close()
                    conn = Client(args.port, ctx)
                    sign_in()
                except Exception:
                    time.sleep(0.05)
        now = time.monotonic()
        if now <= end:
            lat.append(now - t0)
    cpu = time.process_time() - cpu0
    if conn is not None:
        conn.close()
    json.dump({"lat": lat, "errors": errors, "first_error": first_error, "cpu": cpu}, sys.stdout)
    return 0


# --- the orchestration ---------------------------------------------------------------------
def nginx_upstream_conf(prefix: Path, port: int, user: str) -> str:
    """bench/proxy.py's upstream (``return 200`` with the fixed body), plus the front end's
    token endpoint for ``bearer-ka``: the OAuth grant the gateway forwards (its password
    blanked, backend ``none``) gets a JSON ``access_token``, a new one per grant."""
    conf = common.nginx_upstream_conf(prefix, port, user)
    token = f"""\
        location = {TOKEN_PATH} {{
            default_type application/json;
            return 200 '{{"access_token":"cwt=$request_id","token_type":"Bearer","expires_in":28800}}';
        }}
"""
    at = conf.index("        location / {")
    return conf[:at] + token + conf[at:]


def gateway_conf(port: int, up_port: int, cert: Path, key: Path, work: Path) -> str:
    return f"""\
[gateway]
listen = "127.0.0.1:{port}"
tls_cert = "{cert}"
tls_key = "{key}"
published_name = "localhost"

[upstreams.frontend]
url = "http://127.0.0.1:{up_port}"

[upstreams.exchange]
url = "http://127.0.0.1:{up_port}"

[auth]
netbios_domain = "{DOMAIN}"
extended_protection = "require"

# What is measured is authentication; the device partnership (which would hold the benchmark's
# made-up clients in quarantine) is measured by none of these scenarios.
[devices]
enabled = false

[data]
dir = "{work / "data"}"

[store]
key_file = "{work / "keys" / "ucgate.key"}"

[log]
level = "warning"
"""


@dataclass
class Result:
    scenario: str
    ops: int
    seconds: float
    lat: list[float]
    errors: int
    first_error: str
    gw_cpu: float  # gateway CPU seconds in the window
    gw_sys: float  # of which in the kernel (stime)
    client_cpu: float  # all clients' CPU seconds in the window
    others: float  # cores used by processes not part of the benchmark

    @property
    def rate(self) -> float:
        return self.ops / self.seconds

    @property
    def us_per_op(self) -> float:
        return 1e6 * self.gw_cpu / self.ops if self.ops else float("nan")

    def pct(self, q: float) -> float:
        if not self.lat:
            return float("nan")
        s = sorted(self.lat)
        return 1000 * s[min(len(s) - 1, int(q * len(s)))]


def run_scenario(
    scen: str,
    args,
    port: int,
    cert: Path,
    env: dict,
    procs: common.Procs,
    gw_pid: int,
    up_pid: int,
    work: Path,
    seconds: float,
) -> Result:
    lead = 1.5 + 0.15 * args.clients  # time for the workers to start, import and warm up
    start = time.monotonic() + lead
    end = start + seconds
    outs, workers = [], []
    for i in range(args.clients):
        out = work / f"{scen}-{i}.json"
        outs.append(out)
        workers.append(
            procs.start(
                [
                    "taskset",
                    "-c",
                    CLIENT_CORE,
                    sys.executable,
                    str(Path(__file__).resolve()),
                    "--worker",
                    scen,
                    "--port",
                    str(port),
                    "--cert",
                    str(cert),
                    "--start",
                    repr(start),
                    "--end",
                    repr(end),
                ],
                out,
                env=env,
                stdout_only=True,
            )
        )
    while time.monotonic() < start:
        time.sleep(0.005)
    mine = sorted(set(common._tree_pids(gw_pid)) | set(common._tree_pids(up_pid)))
    g0, m0, b0, t0 = _cpu(gw_pid), common.cpu_seconds(mine), common.busy_seconds(), time.monotonic()
    while time.monotonic() < end:
        time.sleep(min(0.05, max(0.0, end - time.monotonic())))
    g1, m1, b1, t1 = _cpu(gw_pid), common.cpu_seconds(mine), common.busy_seconds(), time.monotonic()
    lat, errors, first_error, client_cpu = [], 0, "", 0.0
    for p, out in zip(workers, outs, strict=True):
        try:
            p.wait(seconds + 60)
        except subprocess.TimeoutExpired:
            pass
        procs.stop(p)
        try:
            r = json.loads(out.read_text())
        except (OSError, ValueError):
            raise RuntimeError(f"{scen}: a client failed:\n{(out.with_suffix('.err')).read_text()[-2000:]}") from None
        lat += r["lat"]
        errors += r["errors"]
        first_error = first_error or r["first_error"]
        client_cpu += r["cpu"]
    wall = t1 - t0
    others = max(0.0, ((b1 - b0) - (m1 - m0) - client_cpu) / wall)
    return Result(
        scen, len(lat), end - start, lat, errors, first_error, g1[0] - g0[0], g1[1] - g0[1], client_cpu, others
    )


def _cpu(pid: int) -> tuple[float, float]:
    """(utime + stime, stime) of a process, all its threads, in seconds."""
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / common._TICK, int(f[12]) / common._TICK


def profile(gw_pid: int, seconds: float, out: Path) -> subprocess.Popen | None:
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(pyspy).exists():
        print("py-spy not found (bench/install-deps installs it); no profile", file=sys.stderr)
        return None
    return subprocess.Popen(
        [
            "taskset",
            "-c",
            CLIENT_CORE,
            pyspy,
            "record",
            "--pid",
            str(gw_pid),
            "--rate",
            "250",
            "--duration",
            f"{int(seconds)}",
            "--format",
            "raw",
            "--output",
            str(out),
            "--nonblocking",
            "--threads",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def summarize_profile(raw: Path, top: int = 25) -> str:
    import collections
    import re

    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        frames = [re.sub(r"\s*\(([^)]*/)?([^/):]+)(:\d+)?\)$", r" (\2)", f) for f in stack.split(";")]
        thread = frames[0] if frames and frames[0].startswith("thread") else ""
        frames = [f for f in frames if not f.startswith(("<module>", "thread", "process"))]
        if not frames:
            continue
        total += n
        own[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
        incl[
            "[worker thread] " if "MainThread" not in thread and "main" not in thread.lower() else "[main thread]"
        ] += n
    if not total:
        return "py-spy recorded no samples\n"
    lines = [f"py-spy: {total} samples of the gateway's busy time (all threads, idle excluded)", "", "top by own time:"]
    lines += [f"  {100 * n / total:5.1f}%  {f}" for f, n in own.most_common(top)]
    lines += ["", "top by inclusive time:"]
    lines += [f"  {100 * n / total:5.1f}%  {f}" for f, n in incl.most_common(top + 10)]
    return "\n".join(lines) + "\n"


class _Procs(common.Procs):
    """Procs whose ``start`` can send stdout to the log and stderr to ``<log>.err``."""

    def start(self, argv, log: Path, stdout_only: bool = False, **kw):
        if not stdout_only:
            return super().start(argv, log, **kw)
        with open(log, "wb") as out, open(log.with_suffix(".err"), "wb") as err:
            p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True, **kw)
        self.live.append(p)
        return p


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per scenario (10)")
    ap.add_argument("--clients", type=int, default=6, help="client processes, all on core 1 (6)")
    ap.add_argument("--quick", action="store_true", help="3 s per scenario")
    ap.add_argument(
        "--only",
        action="append",
        choices=list(SCENARIOS),
        metavar="SCENARIO",
        help=f"run only these scenarios (repeatable): {', '.join(SCENARIOS)}",
    )
    ap.add_argument("--rounds", type=int, default=1, help="run every scenario N times, interleaved; medians")
    ap.add_argument(
        "--profile",
        choices=list(SCENARIOS),
        metavar="SCENARIO",
        help="afterwards, py-spy the gateway (all threads) while SCENARIO runs again",
    )
    ap.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="also measure the gateway of another src/ tree (DIR/ucgate/__init__.py), in the same run: its own "
        "store, user and ASP; every scenario runs against each gateway in turn (repeatable)",
    )
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (config, logs, db)")
    # internal: a client process
    ap.add_argument("--worker", choices=list(SCENARIOS), help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--cert", help=argparse.SUPPRESS)
    ap.add_argument("--start", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--end", type=float, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    common._ensure_ucgate_importable()
    if args.worker:
        return worker(args)
    if args.quick:
        args.duration = 3.0
    for tool in ("nginx", "taskset"):
        if not shutil.which(tool):
            sys.exit(f"bench/ntlm.py: {tool} not found; run bench/install-deps (as root)")
    if (os.cpu_count() or 1) < 2:
        print("warning: fewer than 2 CPUs; gateway and clients share a core", file=sys.stderr)

    work = Path(tempfile.mkdtemp(prefix="ucgate-bench-ntlm-"))
    work.chmod(0o755)
    procs = _Procs()

    return common.run_cleanly(work, procs, args.keep, lambda: _run(args, work, procs))


def _run(args, work: Path, procs: _Procs) -> int:
    from ucgate.gateway.tls import make_self_signed

    cert, key = work / "cert.pem", work / "key.pem"
    make_self_signed(cert, key, ["localhost", "127.0.0.1"])
    cert.chmod(0o644)
    key.chmod(0o644)
    user = "user root;" if os.geteuid() == 0 else ""

    up_port = common.free_port()
    (work / "upstream").mkdir()
    (work / "upstream" / "nginx.conf").write_text(nginx_upstream_conf(work / "upstream", up_port, user))
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

    # the gateways: this tree's, then each --variant's (name, source dir), each with its own store
    targets: list[tuple[str, str | None]] = [("ucgate", None)]
    for v in args.variant:
        name, sep, src = v.partition("=")
        if not sep or not (Path(src) / "ucgate" / "__init__.py").is_file():
            sys.exit(f"--variant {v!r}: expected NAME=DIR with DIR/ucgate/__init__.py")
        if name in (n for n, _ in targets):
            sys.exit(f"--variant {v!r}: the name {name!r} is taken")
        targets.append((name, str(Path(src).resolve())))
    gws: dict[str, tuple[subprocess.Popen, int, dict]] = {}  # name -> (process, port, the clients' env)
    for name, src in targets:
        gws[name] = _start_gateway(name, src, work, up_port, cert, key, procs)
    gw, gw_port, env = gws["ucgate"]

    scenarios = args.only or list(SCENARIOS)
    import ucgate as pkg

    print(
        f"ucgate {getattr(pkg, '__version__', '?')} (Python {sys.version.split()[0]}, uvloop); "
        f"{args.clients} client processes x {args.duration:g}s per scenario"
    )
    print(
        f"gateway on core {GW_CORE}; clients (Python, pyspnego) and the upstream nginx on core {CLIENT_CORE}; "
        f"SQLite store in {work} ({_fstype(work)}); source: {_git_state()}",
        flush=True,
    )

    results: dict[tuple[str, str], list[Result]] = {(n, s): [] for s in scenarios for n, _ in targets}
    for rnd in range(args.rounds):
        for scen in scenarios:
            for name, _ in targets:  # interleaved: each gateway in turn, scenario by scenario
                p, port, cenv = gws[name]
                tag = f" round {rnd + 1}/{args.rounds}" if args.rounds > 1 else ""
                who = f" on {name}" if len(targets) > 1 else ""
                print(f"running {scen}{who}{tag} ({args.duration:g}s)", file=sys.stderr, flush=True)
                res = run_scenario(scen, args, port, cert, cenv, procs, p.pid, up.pid, work, args.duration)
                results[name, scen].append(res)
                if p.poll() is not None:
                    glog = work / name / "gateway.log"
                    raise RuntimeError(f"the gateway {name} exited ({p.returncode}):\n{glog.read_text()[-2000:]}")

    def med(scen: str, name: str = "ucgate") -> Result:
        rs = results[name, scen]
        if len(rs) == 1:
            return rs[0]
        best = sorted(rs, key=lambda r: r.us_per_op)[len(rs) // 2]  # the median round by CPU/op
        return best

    names = [n for n, _ in targets]
    gww = max(len(n) for n in names)
    col = (lambda n: f"{n:<{gww}} ") if len(names) > 1 else (lambda n: "")
    print()
    hdr = (
        f"{col('gateway')}{'scenario':<10} {'one operation':<37} {'ops/s':>7} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'gw CPU':>6} {'us/op':>7} {'sys%':>4} {'clients':>7} {'errors':>6} {'others':>6}"
    )
    print(hdr)
    print("-" * len(hdr))
    for scen in scenarios:
        for name in names:
            r = med(scen, name)
            print(
                f"{col(name)}{scen:<10} {SCENARIOS[scen][1]:<37} {r.rate:>7.0f} {r.pct(0.5):>7.2f} "
                f"{r.pct(0.99):>7.2f} {r.gw_cpu / r.seconds:>6.2f} {r.us_per_op:>7.1f} "
                f"{100 * r.gw_sys / max(r.gw_cpu, 1e-9):>4.0f} {r.client_cpu / r.seconds:>7.2f} "
                f"{r.errors:>6d} {r.others:>6.2f}"
            )
    for name in names:
        m = {s: med(s, name) for s in scenarios}
        who = f"{name}: " if len(names) > 1 else ""
        lines = []
        if "ntlm-new" in m and "tls-new" in m:
            d = m["ntlm-new"].us_per_op - m["tls-new"].us_per_op
            lines.append(
                f"{who}NTLM handshake on a new connection: {m['ntlm-new'].us_per_op:.0f} us gateway CPU, of which "
                f"{m['tls-new'].us_per_op:.0f} is TLS + one proxied request; the NTLM legs add {d:.0f} us "
                f"({m['ntlm-new'].us_per_op / m['tls-new'].us_per_op:.2f}x tls-new)"
            )
        if "basic-new" in m and "tls-new" in m:
            d = m["basic-new"].us_per_op - m["tls-new"].us_per_op
            lines.append(
                f"{who}Basic (ASP) on a new connection: {m['basic-new'].us_per_op:.0f} us; verifying it adds "
                f"{d:.0f} us ({m['basic-new'].us_per_op / m['tls-new'].us_per_op:.2f}x tls-new)"
            )
        for s in ("ntlm-ka", "basic-ka", "bearer-ka"):
            if s in m and "anon-ka" in m:
                d = m[s].us_per_op - m["anon-ka"].us_per_op
                lines.append(
                    f"{who}{s}: {m[s].us_per_op:.1f} us/request vs anonymous {m['anon-ka'].us_per_op:.1f} "
                    f"({m[s].us_per_op / m['anon-ka'].us_per_op:.2f}x) -> authentication adds {d:+.1f} us/request "
                    "on an authenticated keep-alive connection"
                )
        if lines:
            print()
            print("\n".join(lines))
    if len(names) > 1:  # this tree against each variant, scenario by scenario (CPU per operation)
        print()
        for name in names[1:]:
            for scen in scenarios:
                a, b = med(scen), med(scen, name)
                print(
                    f"{scen:<10} ucgate {a.us_per_op:8.1f} us/op vs {name} {b.us_per_op:8.1f}: "
                    f"{100 * (a.us_per_op - b.us_per_op) / b.us_per_op:+6.1f} %"
                )
    m = {f"{name} {s}": med(s, name) for s in scenarios for name in names}
    for s, r in m.items():
        if r.gw_cpu / r.seconds < 0.85:
            print(
                f"note: {s}: the gateway used {r.gw_cpu / r.seconds:.2f} of its core: not CPU-bound "
                f"(clients {r.client_cpu / r.seconds:.2f} cores, or waiting on I/O); us/op still holds"
            )
    if any(r.others > 0.15 for r in m.values()):
        print(
            "warning: other processes used CPU during the run ('others', in cores): the machine was "
            "not quiet, throughput is noisy (prefer us/op, or use --rounds 3)"
        )
    errs = {s: r for s, r in m.items() if r.errors}
    for s, r in errs.items():
        print(f"warning: {s}: {r.errors} failed operations, first: {r.first_error}")

    if args.profile:
        raw = work / "profile.txt"
        print(f"\nprofiling the gateway during {args.profile} ({args.duration:g}s)", file=sys.stderr)
        rec = profile(gw.pid, args.duration, raw)
        if rec is not None:
            try:
                time.sleep(0.5)
                run_scenario(args.profile, args, gw_port, cert, env, procs, gw.pid, up.pid, work, args.duration)
                _, err = rec.communicate(timeout=args.duration + 30)
            finally:
                if rec.poll() is None:
                    os.killpg(rec.pid, signal.SIGKILL)
                    rec.wait()
            print()
            print(summarize_profile(raw) if raw.exists() else f"py-spy failed: {err.strip()[-500:]}", end="")
    return 0


def provision(cfg: Path, env: dict[str, str]) -> str:
    """The benchmark's user and its ASP, made with the admin CLI of ``env``'s tree (as an
    operator would): the ASP."""
    ucgate = [sys.executable, "-m", "ucgate"]
    subprocess.run(
        [*ucgate, "user", "add", "-c", str(cfg), USER, "--upn", f"{USER}@bench.test"],
        check=True,
        capture_output=True,
        env=env,
    )
    created = subprocess.run(
        [*ucgate, "asp", "create", "-c", str(cfg), USER, "-l", "bench", "--json"],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    return json.loads(created.stdout)["password"]


def _start_gateway(
    name: str, src: str | None, work: Path, up_port: int, cert: Path, key: Path, procs: _Procs
) -> tuple[subprocess.Popen, int, dict]:
    """``name``'s gateway (``src``: its source tree, else this one) with its own directory,
    store, user and ASP, made with its own admin CLI; returns the process, its port and the
    clients' environment (this tree's, with that ASP)."""
    d = work / name
    (d / "data").mkdir(parents=True)
    (d / "keys").mkdir(mode=0o700)
    env = dict(os.environ)
    if src:
        env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    port = common.free_port()
    cfg = d / "ucgate.toml"
    cfg.write_text(gateway_conf(port, up_port, cert, key, d))
    ucgate = [sys.executable, "-m", "ucgate"]
    asp = provision(cfg, env)
    log = d / "gateway.log"
    gw = procs.start(["taskset", "-c", GW_CORE, *ucgate, "serve", "-c", str(cfg)], log, env=env)
    common.wait_port(port, gw, log)
    return gw, port, dict(os.environ, UCGATE_BENCH_ASP=asp)


def _git_state() -> str:
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--", "src"], capture_output=True, text=True, timeout=5
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"
    return f"{head or '?'}{' + uncommitted changes in src/' if dirty else ''}"


def _fstype(path: Path) -> str:
    best, fs = "", "?"
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            _, mnt, typ, *_ = line.split()
            if str(path).startswith(mnt) and len(mnt) > len(best):
                best, fs = mnt, typ
    except OSError:
        pass
    return fs


if __name__ == "__main__":
    sys.exit(main())
