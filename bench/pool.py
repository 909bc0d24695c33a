"""What the pool's shared state costs: the failure budget in the store, and event propagation.

    .venv/bin/python bench/pool.py [--postgres URL] [--n 2000] [--events 100]

1. **Budget**: one sign-in's reserve + settle (a failure: one conditional upsert for the
   account and one for the IP in one transaction) in the store (SQLite file, and PostgreSQL if
   given), against the in-memory model (``policy.lockout.FailureBudget``) in the same run:
   CPU and wall time per attempt.
2. **Propagation**: ``--events`` device blocks written to the outbox by this process (as the
   CLI does), followed by two other processes (as two gateways' followers do): the time from
   the writer's commit to each follower's delivery, p50 / p99 / max.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from ucgate.policy.lockout import BudgetConfig, FailureBudget, Outcome, Reservation
from ucgate.store import open_repository
from ucgate.store.budget import StoreBudget
from ucgate.store.outbox import Outbox

CFG = BudgetConfig(user_failures=5, ip_failures=20, window=900)


def bench_budget(budget, n: int) -> tuple[float, float]:
    """(CPU us, wall us) per reserve + settle(FAILURE), spread over many accounts and IPs."""
    t0, c0 = time.perf_counter(), time.process_time()
    now = time.time()
    for i in range(n):
        r = budget.reserve(f"g:bench-{i % 500}", f"10.{i % 7}.{i % 251}.1", now + i * 0.001)
        if isinstance(r, Reservation):
            budget.settle(r, Outcome.FAILURE, now + i * 0.001)
    return (time.process_time() - c0) / n * 1e6, (time.perf_counter() - t0) / n * 1e6


FOLLOWER = textwrap.dedent("""
    import json, sys, time, threading
    from ucgate.store import open_repository
    from ucgate.store.outbox import Outbox
    from ucgate.id.events import EventBus, EventFollower
    repo = open_repository(sys.argv[1], migrate_schema=False)
    bus = EventBus(Outbox(repo.engine))
    lat, done = [], threading.Event()
    want = int(sys.argv[2])
    def on_row(row):
        lat.append(time.time() - row.at.timestamp())
        if len(lat) >= want:
            done.set()
    bus.subscribe_rows(on_row)
    f = EventFollower(bus, bus.outbox)
    f.start(); f.caught_up.wait(10)
    print("ready", flush=True)
    done.wait(120)
    f.stop()
    print(json.dumps(lat), flush=True)
""")


def bench_propagation(url: str, n: int) -> list[float]:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", FOLLOWER, url, str(n)],
            stdout=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parents[1] / "src",
        )
        for _ in range(2)
    ]
    for p in procs:
        assert p.stdout.readline().strip() == "ready"
    repo = open_repository(url, migrate_schema=False)
    out = Outbox(repo.engine)
    for i in range(n):
        out.publish(kind="device-blocked", username=f"user{i}", device_id=f"DEV{i}", reason="bench")
        time.sleep(0.02)
    lat: list[float] = []
    for p in procs:
        lat += json.loads(p.stdout.readline())
        p.wait(30)
    repo.close()
    return sorted(lat)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--postgres", help="postgresql+psycopg://... (an empty database or schema)")
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--events", type=int, default=100)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        stores = {"sqlite": f"sqlite:///{d}/bench.db"}
        if a.postgres:
            stores["postgresql"] = a.postgres
        mem_cpu, mem_wall = bench_budget(FailureBudget(CFG), a.n)
        print(f"{'budget':12} {'CPU us/attempt':>15} {'wall us/attempt':>16} {'vs memory (CPU)':>16}")
        print(f"{'memory':12} {mem_cpu:15.1f} {mem_wall:16.1f} {1.0:15.1f}x")
        for name, url in stores.items():
            repo = open_repository(url)
            cpu, wall = bench_budget(StoreBudget(repo.engine, CFG), a.n)
            print(f"{name:12} {cpu:15.1f} {wall:16.1f} {cpu / mem_cpu:15.1f}x")
            repo.close()
        print(f"\npropagation of {a.events} device blocks to 2 follower processes (ms after commit)")
        for name, url in stores.items():
            lat = bench_propagation(url, a.events)
            q = statistics.quantiles(lat, n=100)
            print(
                f"{name:12} p50 {q[49] * 1e3:7.1f}  p99 {q[98] * 1e3:7.1f}  max {lat[-1] * 1e3:7.1f}  "
                f"({len(lat)} deliveries)"
            )


if __name__ == "__main__":
    main()
