"""`make run`: a control plane on SQLite, four simulated agents, a mixed workload, a summary.

Everything runs as real processes on loopback, as in production: `gpucp serve`, then
`gpucp agent` per simulated machine, then the workload through `gpucp.Client`.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import TypedDict

from gpucp import Client, task_spec
from gpucp.states import TERMINAL_STATES
from gpucp.testing import ControlPlaneProcess, LocalCluster, wait_for_workers
from gpucp.v1 import common_pb2

FLEET = {
    # The EU test suite's exec tasks run this Python, the one program this agent allows.
    "a100-node": ["--gpus", "4xA100-80GB", "--slots", "4", "--label", "zone=eu", "--cost-per-hour", "7.2",
                  f"--allow-exec={sys.executable}"],
    "h100-node": ["--gpus", "2xH100-80GB", "--slots", "2", "--cost-per-hour", "6.0"],
    "t4-node": ["--gpus", "4xT4-16GB", "--slots", "6", "--cost-per-hour", "1.4"],
    "cpu-node": ["--slots", "8", "--backend", "cpu"],
}



class Needs(TypedDict, total=False):
    """What a part of the workload asks of a worker: task_spec()'s keyword arguments."""

    gpus: int
    min_gpu_memory_mb: int
    gpu_models: list[str]
    min_compute_capability: float
    labels: list[str]


# (share of the workload, description, task kind, what it needs)
WORKLOAD: list[tuple[float, str, str, Needs]] = [
    (0.30, "batch scoring on CPU", "sleep", {"gpus": 0}),
    (0.25, "inference on any GPU", "sleep", {"gpus": 1}),
    (0.20, "LLM inference, >= 40 GB", "sleep", {"gpus": 1, "min_gpu_memory_mb": 40_000}),
    (0.10, "video generation on H100", "sleep", {"gpus": 1, "gpu_models": ["H100"]}),
    (0.10, "fine-tune on 2 GPUs", "sleep", {"gpus": 2, "min_compute_capability": 8.0}),
    (0.05, "EU-only test suite", "exec", {"gpus": 0, "labels": ["zone=eu"]}),
]
PRIORITIES = ["low", "normal", "high", "urgent"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=600)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="gpucp-demo-"))
    try:
        with LocalCluster(ControlPlaneProcess(workdir, heartbeat_timeout=3)) as cluster:
            print(f"control plane on {cluster.address}, database {cluster.controlplane.db}")
            for worker_id, flags in FLEET.items():
                cluster.add_agent(worker_id, *flags, wait_s=None)
            with cluster.client() as client:
                wait_for_fleet(client)
                return run_workload(client, args.tasks, random.Random(args.seed))
    finally:
        print(f"logs in {workdir}")


def wait_for_fleet(client: Client) -> None:
    try:
        wait_for_workers(client, list(FLEET), timeout_s=30)
    except AssertionError:
        raise SystemExit("the agents did not register within 30 s") from None
    print(f"{len(FLEET)} agents registered:")
    for w in sorted(client.workers(), key=lambda w: w.worker_id):
        gpus = f"{len(w.gpus)}x {w.gpus[0].name}" if w.gpus else "no GPU"
        print(f"  {w.worker_id:<10} {gpus:<22} {w.slots} slots")


def make_workload(n: int, rng: random.Random) -> list[tuple[str, common_pb2.TaskSpec]]:
    shares = [share for share, _, _, _ in WORKLOAD]
    out = []
    for i in range(n):
        _, what, kind, needs = rng.choices(WORKLOAD, shares)[0]
        payload = (
            json.dumps({"argv": [sys.executable, "-c", "print('ok')"]})
            if kind == "exec"
            else json.dumps({"seconds": round(rng.uniform(0.02, 0.25), 3)})
        )
        spec = task_spec(kind, payload, priority=rng.choice(PRIORITIES), tenant=rng.choice(["research", "product"]),
                         idempotency_key=f"demo-{i}", **needs)
        out.append((what, spec))
    return out


def run_workload(client: Client, n: int, rng: random.Random) -> int:
    workload = make_workload(n, rng)
    done: dict[str, int] = {}
    events = client.watch()

    def follow() -> None:
        for event in events:
            if event.state in TERMINAL_STATES:
                done[event.task_id] = event.state

    threading.Thread(target=follow, daemon=True).start()
    t0 = time.monotonic()
    ids: list[str] = []
    for i in range(0, n, 100):
        ids.extend(client.submit_many([spec for _, spec in workload[i : i + 100]]))
    print(f"submitted {n} tasks in {time.monotonic() - t0:.2f} s (each durably stored before the reply)")
    tty = sys.stdout.isatty()
    start, end = ("\r", "") if tty else ("", "\n")
    shown = -1
    while (finished := sum(1 for t in ids if t in done)) < n:
        if tty or finished * 4 // n != shown:  # a redrawn bar, or a line per quarter in a log
            shown = finished * 4 // n
            bar = "#" * (40 * finished // n)
            print(f"{start}  [{bar:<40}] {finished}/{n}", end=end, flush=True)
        if time.monotonic() - t0 > 300:
            print("\nthe workload did not finish within 300 s")
            return 1
        time.sleep(0.1)
    elapsed = time.monotonic() - t0
    print(f"{start}  [{'#' * 40}] {n}/{n}")
    tasks = {t.id: t for t in (client.get(task_id) for task_id in ids)}
    return summarize(tasks, [what for what, _ in workload], ids, elapsed)


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summarize(tasks: dict[str, common_pb2.Task], whats: list[str], ids: list[str], elapsed: float) -> int:
    states = Counter(common_pb2.TaskState.Name(t.state).removeprefix("TASK_STATE_").lower() for t in tasks.values())
    print(f"\nfinished {len(tasks)} tasks in {elapsed:.2f} s ({len(tasks) / elapsed:.0f} tasks/s): "
          + ", ".join(f"{k} {v}" for k, v in sorted(states.items())))
    per_worker: dict[str, Counter[str]] = defaultdict(Counter)
    for task_id, what in zip(ids, whats, strict=True):
        per_worker[tasks[task_id].worker_id][what] += 1
    print("\nper worker:")
    for worker, counts in sorted(per_worker.items()):
        detail = ", ".join(f"{v} {k}" for k, v in counts.most_common())
        print(f"  {worker:<10} {sum(counts.values()):>4} tasks: {detail}")
    latency = [(t.finished_at_ms - t.created_at_ms) for t in tasks.values()]
    print(f"\nsubmit -> result (ms): p50 {percentile(latency, .5):.0f}  p90 {percentile(latency, .9):.0f}  "
          f"p99 {percentile(latency, .99):.0f}  max {max(latency):.0f}")
    print("queue wait by priority (ms):")
    waits: dict[int, list[float]] = defaultdict(list)
    for t in tasks.values():
        waits[t.spec.priority].append(t.started_at_ms - t.created_at_ms)
    for prio in sorted(waits, reverse=True):
        name = common_pb2.Priority.Name(prio).removeprefix("PRIORITY_").lower()
        w = waits[prio]
        print(f"  {name:<7} mean {statistics.mean(w):>7.0f}  p99 {percentile(w, .99):>7.0f}  ({len(w)} tasks)")
    return 0 if states.get("succeeded", 0) == len(tasks) else 1


if __name__ == "__main__":
    sys.exit(main())
