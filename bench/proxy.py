#!/usr/bin/env python3
"""Benchmark the gateway's proxy hot path against nginx, in the same run, on the same machine.

    bench/install-deps                       # once: nginx, wrk, taskset (and py-spy)
    .venv/bin/python bench/proxy.py          # 10 s per configuration, 32 connections
    .venv/bin/python bench/proxy.py --quick  # 3 s per configuration
    .venv/bin/python bench/proxy.py --warmup 2 --rounds 3 --profile

What runs (each with its own prefix and config in a temporary directory, never /etc/nginx):

    upstream   nginx, 1 worker, pinned to core 1: ``return 200`` with a fixed ~100-byte body
    reference  nginx, 1 worker, pinned to core 0: TLS (and plain) reverse proxy to the upstream
               with upstream keep-alive (proxy_http_version 1.1, Connection "", keepalive 32)
    subject    ``ucgate serve -c <generated toml>``, pinned to core 0, [log] level = "warning";
               one process with a TLS listener, one with ``plain_http = true``
    load       wrk over keep-alive connections, pinned to core 1, against each proxy in turn,
               GET /Autodiscover/AutodiscoverService.svc/root (an anonymous SfB path)

It prints req/s, p50, p99, the proxy's CPU use (1.00 = one core busy) and the ratio ucgate/nginx
of throughput, for TLS and plain HTTP, and exits 0. See bench/README.md.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import resource
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PATH = "/Autodiscover/AutodiscoverService.svc/root"
# ~100 bytes, fixed: what the upstream answers to every request.
BODY = '{"_links":{"self":{"href":"https://lyncdiscover.contoso.com/Autodiscover/AutodiscoverService.svc/root"}}}'

PROXY_CORE = "0"
LOAD_CORE = "1"  # wrk and the upstream share the other core


def _ensure_ucgate_importable() -> None:
    """Re-run under the repo's .venv when started with an interpreter that lacks ucgate."""
    try:
        import ucgate  # noqa: F401
    except ImportError:
        venv_py = REPO / ".venv" / "bin" / "python"
        if venv_py.exists() and Path(sys.executable).resolve() != venv_py.resolve():
            os.execv(str(venv_py), [str(venv_py), *sys.argv])
        sys.exit("bench/proxy.py: ucgate is not importable; run it with .venv/bin/python")


# --- processes ----------------------------------------------------------------------------
class Procs:
    """Every process we start, each in its own session (process group), so that stopping
    one also stops its children (nginx workers) and nothing outlives the benchmark."""

    def __init__(self) -> None:
        self.live: list[subprocess.Popen] = []

    def start(self, argv: list[str], log: Path, **kw) -> subprocess.Popen:
        with open(log, "wb") as f:  # the child has its own copy of the descriptor
            p = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=f,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                **kw,
            )
        self.live.append(p)
        return p

    def stop(self, p: subprocess.Popen, grace: float = 5.0) -> None:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                p.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        # the group may still hold children (nginx workers) even if the leader is gone
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            p.wait(2)
        except subprocess.TimeoutExpired:
            pass
        if p in self.live:
            self.live.remove(p)

    def stop_all(self) -> None:
        for p in reversed(list(self.live)):
            self.stop(p)


def _tree_pids(root: int) -> list[int]:
    children: dict[int, list[int]] = collections.defaultdict(list)
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children[ppid].append(int(d))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime + stime
    return total / _TICK


def busy_seconds() -> float:
    """CPU seconds spent busy (user + nice + system) by the whole machine so far."""
    f = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    return (int(f[1]) + int(f[2]) + int(f[3])) / _TICK


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited ({proc.returncode}):\n{log.read_text()[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port} after {timeout}s:\n{log.read_text()[-2000:]}")


def get_once(port: int, tls: bool) -> tuple[int, bytes, str]:
    """One request as a sanity check: status, body, negotiated TLS version/cipher."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    info = "-"
    if tls:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        raw = ctx.wrap_socket(raw, server_hostname="localhost")
        info = f"{raw.version()} {raw.cipher()[0]}"
    with raw:
        raw.sendall(f"GET {PATH} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := raw.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body, info


# --- configurations -----------------------------------------------------------------------
NGINX_COMMON = """\
worker_processes 1;
daemon off;
master_process on;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
{user}
events {{ worker_connections 4096; multi_accept on; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    server_tokens off;
"""


def nginx_upstream_conf(prefix: Path, port: int, user: str) -> str:
    return (
        NGINX_COMMON.format(prefix=prefix, user=user)
        + f"""\
    server {{
        listen 127.0.0.1:{port} reuseport backlog=4096;
        location / {{
            default_type application/json;
            return 200 '{BODY}';
        }}
    }}
}}
"""
    )


def nginx_proxy_conf(
    prefix: Path, tls_port: int, plain_port: int, up_port: int, cert: Path, key: Path, user: str
) -> str:
    return (
        NGINX_COMMON.format(prefix=prefix, user=user)
        + f"""\
    upstream frontend {{
        server 127.0.0.1:{up_port};
        keepalive 32;
    }}
    server {{
        listen 127.0.0.1:{tls_port} ssl backlog=4096;
        listen 127.0.0.1:{plain_port} backlog=4096;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        location / {{
            proxy_pass http://frontend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            # the same forwarding headers the gateway adds
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $host;
        }}
    }}
}}
"""
    )


def ucgate_conf(port: int, up_port: int, cert: Path, key: Path, data_dir: Path, plain: bool) -> str:
    tls = "plain_http = true" if plain else f'tls_cert = "{cert}"\ntls_key = "{key}"'
    return f"""\
[gateway]
listen = "127.0.0.1:{port}"
{tls}

[upstreams.frontend]
url = "http://127.0.0.1:{up_port}"

[auth]
authenticator = "deny-all"  # the benchmarked path is anonymous

[data]
dir = "{data_dir}"

[log]
level = "warning"
"""


# --- wrk ----------------------------------------------------------------------------------
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not m:
        raise ValueError(f"unparsable wrk latency {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


@dataclass
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    non2xx: int = 0
    socket_errors: int = 0
    cpu: float = 0.0  # proxy CPU seconds per wall second (1.0 = one core)
    others: float = 0.0  # CPU used by processes not in the benchmark, per wall second
    raw: str = field(default="", repr=False)


def parse_wrk(out: str) -> WrkResult:
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", out, re.M)
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    n = re.search(r"^\s+(\d+) requests in", out, re.M)
    if not (rps and p50 and p99 and n):
        raise RuntimeError(f"could not parse wrk output:\n{out}")
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errs = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return WrkResult(
        rps=float(rps.group(1)),
        p50_ms=_ms(p50.group(1)),
        p99_ms=_ms(p99.group(1)),
        requests=int(n.group(1)),
        non2xx=int(non2xx.group(1)) if non2xx else 0,
        socket_errors=sum(int(x) for x in errs.groups()) if errs else 0,
        raw=out,
    )


def run_wrk(
    url: str, seconds: float, connections: int, threads: int, proxy_pid: int, ours: list[int] = ()
) -> WrkResult:
    argv = [
        "taskset",
        "-c",
        LOAD_CORE,
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{seconds:g}s",
        "--latency",
        "--timeout",
        "5s",
        url,
    ]
    pids = _tree_pids(proxy_pid)
    # everything of ours that burns CPU: the proxy, the upstream (and wrk, counted from its exit)
    mine = sorted({p for root in ours for p in _tree_pids(root)} | set(pids))
    w0 = _children_cpu()  # wrk's CPU, once it has been waited for
    c0, m0, b0, t0 = cpu_seconds(pids), cpu_seconds(mine), busy_seconds(), time.monotonic()
    wrk = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = wrk.communicate(timeout=seconds + 60)
    finally:  # interrupted or timed out: take wrk down too, and reap it
        if wrk.poll() is None:
            os.killpg(wrk.pid, signal.SIGKILL)
            wrk.wait()
    r = subprocess.CompletedProcess(argv, wrk.returncode, out, err)
    c1, m1, b1, t1 = cpu_seconds(pids), cpu_seconds(mine), busy_seconds(), time.monotonic()
    wrk_cpu = _children_cpu() - w0
    if r.returncode != 0:
        raise RuntimeError(f"wrk failed ({r.returncode}): {r.stderr or r.stdout}")
    res = parse_wrk(r.stdout)
    res.cpu = (c1 - c0) / (t1 - t0)
    res.others = max(0.0, ((b1 - b0) - (m1 - m0) - wrk_cpu) / (t1 - t0))
    return res


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


# --- profiling ----------------------------------------------------------------------------
def profile_ucgate(
    pid: int,
    url: str,
    seconds: float,
    connections: int,
    threads: int,
    out_dir: Path,
    native: bool = False,
    ours: list[int] = (),
) -> str:
    """Sample the gateway with py-spy while wrk loads it; return a text summary of the top
    functions by own time and by inclusive time."""
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(pyspy).exists():
        return "py-spy not found (bench/install-deps installs it into .venv); no profile\n"
    raw = out_dir / "profile.txt"
    # py-spy runs on the load core so that the proxy's core only runs the proxy
    rec = subprocess.Popen(
        [
            "taskset",
            "-c",
            LOAD_CORE,
            pyspy,
            "record",
            "--pid",
            str(pid),
            "--rate",
            "250",
            "--duration",
            f"{int(seconds)}",
            "--format",
            "raw",
            "--output",
            str(raw),
            # --native must pause the process to unwind C stacks; otherwise sample without pausing
            *(["--native"] if native else ["--nonblocking"]),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        time.sleep(0.5)
        run_wrk(url, seconds, connections, threads, pid, ours)
        _, err = rec.communicate(timeout=seconds + 30)
    finally:
        if rec.poll() is None:
            os.killpg(rec.pid, signal.SIGKILL)
            rec.wait()
    if not raw.exists():
        return f"py-spy failed: {err.strip()[-500:]}\n"
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        total += n
        # "func (path/file.py:123)" -> "func (file.py)": aggregate per function, not per line
        frames = [re.sub(r"\s*\(([^)]*/)?([^/):]+)(:\d+)?\)$", r" (\2)", f) for f in stack.split(";")]
        frames = [f for f in frames if not f.startswith("<module>")]
        if not frames:
            continue
        own[frames[-1]] += n
        for f in set(frames):  # a recursive frame counts once
            incl[f] += n
    if not total:
        return "py-spy recorded no samples\n"
    lines = [f"py-spy: {total} samples of the gateway's busy time (idle excluded)", "", "top by own time:"]
    lines += [f"  {100 * n / total:5.1f}%  {f}" for f, n in own.most_common(15)]
    lines += ["", "top by inclusive time:"]
    lines += [f"  {100 * n / total:5.1f}%  {f}" for f, n in incl.most_common(25)]
    return "\n".join(lines) + "\n"


# --- the run ------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per measured run (10)")
    ap.add_argument("--connections", "-c", type=int, default=32, help="wrk connections (32)")
    ap.add_argument("--threads", "-t", type=int, default=1, help="wrk threads (1)")
    ap.add_argument("--quick", action="store_true", help="3 s runs")
    ap.add_argument(
        "--warmup",
        type=float,
        nargs="?",
        const=2.0,
        default=0.0,
        metavar="SECS",
        help="first load each proxy for SECS (2 if no value) and discard the result",
    )
    ap.add_argument(
        "--rounds", type=int, default=1, help="measure every configuration N times, interleaved; report the median"
    )
    ap.add_argument("--only", choices=("tls", "plain"), help="run only the TLS or plain-HTTP pair")
    ap.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=SRC",
        help="also measure ucgate from another source tree (its src/ directory, put "
        "first on PYTHONPATH), e.g. an optimised scratch copy; repeatable",
    )
    ap.add_argument(
        "--profile", action="store_true", help="afterwards, profile ucgate (TLS) with py-spy under the same load"
    )
    ap.add_argument(
        "--native",
        action="store_true",
        help="with --profile: include C frames (OpenSSL, uvloop, CPython) in the profile",
    )
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (configs, logs)")
    ap.add_argument("--verbose", "-v", action="store_true", help="print wrk's raw output")
    args = ap.parse_args(argv)
    if args.quick:
        args.duration = 3.0
    for tool in ("nginx", "wrk", "taskset"):
        if not shutil.which(tool):
            sys.exit(f"bench/proxy.py: {tool} not found; run bench/install-deps (as root)")
    if (os.cpu_count() or 1) < 2:
        print("warning: fewer than 2 CPUs; proxy and load share a core", file=sys.stderr)
    _ensure_ucgate_importable()
    from ucgate.gateway.tls import make_self_signed

    work = Path(tempfile.mkdtemp(prefix="ucgate-bench-"))
    work.chmod(0o755)  # nginx workers may run as an unprivileged user
    procs = Procs()

    return run_cleanly(work, procs, args.keep, lambda: _run(args, work, procs, make_self_signed))


def run_cleanly(work: Path, procs, keep: bool, body) -> int:
    """Run ``body()`` with SIGINT/SIGTERM/SIGHUP turned into KeyboardInterrupt; afterwards (also
    on errors and signals) stop every process started and remove ``work`` unless ``keep``."""

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    # SIGINT too: a shell may start a background job with SIGINT ignored
    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        return body()
    except KeyboardInterrupt:
        print("\ninterrupted; cleaning up", file=sys.stderr)
        return 130
    finally:
        procs.stop_all()
        for s, h in old.items():
            signal.signal(s, h)
        if keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


def _run(args, work: Path, procs: Procs, make_self_signed) -> int:
    cert, key = work / "cert.pem", work / "key.pem"
    make_self_signed(cert, key, ["localhost", "127.0.0.1"])
    cert.chmod(0o644)
    key.chmod(0o644)  # a throwaway key; nginx may read it after dropping privileges
    user = "user root;" if os.geteuid() == 0 else ""  # keep it simple: workers as root, as the master

    ports = {name: free_port() for name in ("up", "ngx_tls", "ngx_plain")}

    def start_nginx(name: str, conf: str, core: str, port: int) -> subprocess.Popen:
        prefix = work / name
        prefix.mkdir()
        (prefix / "nginx.conf").write_text(conf)
        log = prefix / "stderr.log"
        p = procs.start(
            [
                "taskset",
                "-c",
                core,
                "nginx",
                "-p",
                str(prefix),
                "-c",
                str(prefix / "nginx.conf"),
                "-e",
                str(prefix / "error.log"),
            ],
            log,
        )
        wait_port(port, p, log)
        return p

    up = start_nginx("upstream", nginx_upstream_conf(work / "upstream", ports["up"], user), LOAD_CORE, ports["up"])
    ngx = start_nginx(
        "nginx-proxy",
        nginx_proxy_conf(work / "nginx-proxy", ports["ngx_tls"], ports["ngx_plain"], ports["up"], cert, key, user),
        PROXY_CORE,
        ports["ngx_tls"],
    )
    # the gateways: (name, source dir or None for the installed one) x (TLS, plain)
    variants: list[tuple[str, str | None]] = [("ucgate", None)]
    for v in args.variant:
        name, sep, src = v.partition("=")
        if not sep or not (Path(src) / "ucgate" / "__init__.py").is_file():
            sys.exit(f"--variant {v!r}: expected NAME=DIR with DIR/ucgate/__init__.py")
        variants.append((name, str(Path(src).resolve())))
    width = max(len(n) for n, _ in variants)
    kinds = [k for k in ("https", "http") if not args.only or args.only == ("tls" if k == "https" else "plain")]
    ucg: dict[tuple[str, str], subprocess.Popen] = {}
    gw_ports: dict[tuple[str, str], int] = {}
    for name, src in variants:
        env = dict(os.environ)
        if src:
            env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
        for kind in kinds:
            plain = kind == "http"
            d = work / f"{name}-{kind}"
            d.mkdir()
            port = free_port()
            cfg = d / "ucgate.toml"
            cfg.write_text(ucgate_conf(port, ports["up"], cert, key, d, plain))
            log = d / "stderr.log"
            p = procs.start(
                ["taskset", "-c", PROXY_CORE, sys.executable, "-m", "ucgate", "serve", "-c", str(cfg)], log, env=env
            )
            wait_port(port, p, log)
            ucg[name, kind], gw_ports[name, kind] = p, port

    # (label, port, tls, pid of the proxy process tree)
    configs = []
    for kind in kinds:
        plain = kind == "http"
        configs.append((f"{'nginx':<{width}} {kind}", ports["ngx_plain" if plain else "ngx_tls"], not plain, ngx.pid))
        for name, _ in variants:
            configs.append((f"{name:<{width}} {kind}", gw_ports[name, kind], not plain, ucg[name, kind].pid))

    # sanity: every proxy answers 200 with the upstream's body
    tls_info = "-"
    for label, port, tls, _ in configs:
        status, body, info = get_once(port, tls)
        if status != 200 or body != BODY.encode():
            raise RuntimeError(f"{label}: expected 200 and the upstream body, got {status} {body[:200]!r}")
        if tls:
            tls_info = info if tls_info in ("-", info) else f"{tls_info} / {info}"

    ver = subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip().split("/")[-1]
    import ucgate

    print(
        f"ucgate {getattr(ucgate, '__version__', '?')} (Python {sys.version.split()[0]}, uvloop) vs nginx {ver}; "
        f"wrk -t{args.threads} -c{args.connections} -d{args.duration:g}s, keep-alive, GET {PATH}"
    )
    print(f"proxies on core {PROXY_CORE}; wrk and the upstream nginx on core {LOAD_CORE}; TLS: {tls_info}", flush=True)

    def url(port: int, tls: bool) -> str:
        return f"{'https' if tls else 'http'}://127.0.0.1:{port}{PATH}"

    if args.warmup:
        for label, port, tls, pid in configs:
            print(f"warm-up {label} ({args.warmup:g}s)", file=sys.stderr)
            run_wrk(url(port, tls), args.warmup, args.connections, args.threads, pid, [up.pid])

    results: dict[str, list[WrkResult]] = {label: [] for label, *_ in configs}
    for rnd in range(args.rounds):
        for label, port, tls, pid in configs:
            tag = f" round {rnd + 1}/{args.rounds}" if args.rounds > 1 else ""
            print(f"running {label}{tag} ({args.duration:g}s)", file=sys.stderr)
            res = run_wrk(url(port, tls), args.duration, args.connections, args.threads, pid, [up.pid])
            if args.verbose:
                print(res.raw, file=sys.stderr)
            results[label].append(res)
        for p in (up, ngx, *ucg.values()):
            if p.poll() is not None:
                raise RuntimeError(f"{p.args} exited during the run ({p.returncode})")

    def med(label: str) -> WrkResult:
        rs = results[label]
        if len(rs) == 1:
            return rs[0]
        return WrkResult(
            rps=statistics.median(r.rps for r in rs),
            p50_ms=statistics.median(r.p50_ms for r in rs),
            p99_ms=statistics.median(r.p99_ms for r in rs),
            requests=sum(r.requests for r in rs),
            non2xx=sum(r.non2xx for r in rs),
            socket_errors=sum(r.socket_errors for r in rs),
            cpu=statistics.median(r.cpu for r in rs),
            others=statistics.median(r.others for r in rs),
        )

    print()
    lw = max(len(label) for label, *_ in configs)
    hdr = f"{'config':<{lw}} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'proxy CPU':>9} {'us/req':>7} {'errors':>7} {'others':>6} {'vs nginx':>9} {'CPU-norm':>8}"
    print(hdr, flush=True)
    print("-" * len(hdr))
    ratios, norms = {}, {}
    for label, *_ in configs:
        r = med(label)
        name, kind = label.split()
        base = med(f"{'nginx':<{width}} {kind}")
        ratio = r.rps / base.rps if base.rps else float("nan")
        # proxy CPU per request; nginx's over ours = the throughput ratio if both had a full core
        us = 1e6 * r.cpu / r.rps if r.rps else float("nan")
        norm = (1e6 * base.cpu / base.rps) / us if base.rps and us else float("nan")
        if name != "nginx":
            ratios[name, kind] = ratio
            norms[name, kind] = norm
        print(
            f"{label:<{lw}} {r.rps:>9.0f} {r.p50_ms:>8.2f} {r.p99_ms:>8.2f} {r.cpu:>9.2f} {us:>7.1f} "
            f"{r.non2xx + r.socket_errors:>7d} {r.others:>6.2f} {ratio:>8.2f}x {norm:>7.2f}x"
        )
    print()
    for (name, kind), ratio in ratios.items():
        print(
            f"throughput {name}/nginx over {'TLS' if kind == 'https' else 'plain HTTP'}: {ratio:.2f}x "
            f"(per core of CPU: {norms[name, kind]:.2f}x)"
        )
    if len(kinds) == 2:
        for name in ["nginx"] + [n for n, _ in variants]:
            t, p = med(f"{name:<{width}} https"), med(f"{name:<{width}} http")
            # proxy CPU per request; the difference between TLS and plain is TLS's share
            ct = 1e6 * t.cpu / t.rps
            cp = 1e6 * p.cpu / p.rps
            print(
                f"{name}: {ct:.1f} us proxy CPU/request over TLS, {cp:.1f} plain "
                f"-> TLS is {100 * (ct - cp) / ct:.0f}% of the per-request cost"
            )
    if any(med(label).others > 0.15 for label, *_ in configs):
        print(
            "warning: other processes used CPU during the run ('others', in cores): the machine "
            "was not quiet, the numbers are noisy (use --rounds 3 or rerun when idle)"
        )
    if any(med(label).non2xx or med(label).socket_errors for label, *_ in configs):
        print("warning: some requests failed (errors column): those numbers are not comparable")
    if args.profile and ("ucgate", "https") in ucg:
        print()
        print(
            profile_ucgate(
                ucg["ucgate", "https"].pid,
                url(gw_ports["ucgate", "https"], True),
                args.duration,
                args.connections,
                args.threads,
                work,
                args.native,
                [up.pid],
            ),
            end="",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
