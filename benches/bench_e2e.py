"""End-to-end on loopback: submit -> result latency (closed loop) and burst throughput.

A real control plane (`gpucp serve`, SQLite, durable accept) and real agent processes running
the `noop` handler, each task claiming one slot.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gpucp import Client, task_spec
from gpucp.v1 import common_pb2

ROOT = Path(__file__).resolve().parent.parent


def start(workdir: Path, agents: int, slots: int) -> tuple[str, list[subprocess.Popen[bytes]]]:
    ready = workdir / "ready"
    procs = [subprocess.Popen(
        [sys.executable, "-m", "gpucp", "serve", "--listen", "127.0.0.1:0", "--db", str(workdir / "bench.db"),
         "--ready-file", str(ready), "--log-level", "WARNING", "--max-queue", "1000000"],
        cwd=ROOT, stdout=open(workdir / "cp.log", "wb"), stderr=subprocess.STDOUT,
    )]
    while not (ready.exists() and ready.read_text()):
        time.sleep(0.05)
    address = f"127.0.0.1:{ready.read_text()}"
    for i in range(agents):
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "agents", "--server", address, "--worker-id", f"bench-{i}",
             "--slots", str(slots), "--log-level", "WARNING"],
            cwd=ROOT, stdout=open(workdir / f"agent-{i}.log", "wb"), stderr=subprocess.STDOUT,
        ))
    with Client(address) as client:
        while len(client.workers()) < agents:
            time.sleep(0.05)
    return address, procs


def closed_loop(client: Client, n: int) -> list[float]:
    latencies = []
    for _ in range(n):
        t0 = time.perf_counter()
        task = client.wait(client.submit("noop"), timeout_s=30)
        latencies.append((time.perf_counter() - t0) * 1000)
        assert task.state == common_pb2.TASK_STATE_SUCCEEDED, task
    return sorted(latencies)


def burst(client: Client, n: int) -> tuple[float, float]:
    """(accepted tasks/s, completed tasks/s) for n tasks submitted as fast as possible."""
    done = 0
    events = client.watch()
    t0 = time.perf_counter()
    spec = task_spec("noop")
    for i in range(0, n, 1000):
        client.submit_many([spec] * min(1000, n - i))
    accepted = time.perf_counter() - t0
    for event in events:
        if event.state == common_pb2.TASK_STATE_SUCCEEDED:
            done += 1
            if done == n:
                break
    return n / accepted, n / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--agents", type=int, default=4)
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--latency-tasks", type=int, default=500)
    parser.add_argument("--burst-tasks", type=int, default=10_000)
    parser.add_argument("--json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gpucp-bench-") as tmp:
        address, procs = start(Path(tmp), args.agents, args.slots)
        try:
            with Client(address) as client:
                closed_loop(client, 50)  # warm up connections and caches
                lat = closed_loop(client, args.latency_tasks)
                accept_rate, done_rate = burst(client, args.burst_tasks)
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait()
    p50, p99 = lat[len(lat) // 2], lat[int(len(lat) * 0.99)]
    print(f"end to end, {args.agents} agents x {args.slots} slots, noop tasks, SQLite WAL durable accept")
    print(f"  submit -> result   p50 {p50:.2f} ms   p99 {p99:.2f} ms   ({args.latency_tasks} sequential tasks)")
    print(f"  burst of {args.burst_tasks}: accepted {accept_rate:,.0f} tasks/s, completed {done_rate:,.0f} tasks/s")
    if args.json:
        Path(args.json).write_text(json.dumps({"p50_ms": p50, "p99_ms": p99, "accept_per_s": accept_rate, "done_per_s": done_rate}))


if __name__ == "__main__":
    main()
