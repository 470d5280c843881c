"""End-to-end on loopback: submit -> result latency (closed loop) and burst throughput, of empty
tasks and of tasks with 1 MB payloads (which the control plane reads back from its store to
dispatch them).

A real control plane (`gpucp serve`, SQLite, durable accept) and real agent processes running
the `noop` handler, each task claiming one slot. The control plane runs on uvloop; run the bench
again with GPUCP_EVENT_LOOP=asyncio to see it on Python's own loop.

With --observers ROUNDS it measures instead what task events, metrics and task log lines cost: a
burst's completions/s and the control plane's CPU time per task (utime + stime from /proc, less
noisy than completions/s on a shared machine) with the task book's journal observers off
(benches/serve_unobserved.py), on at --log-level WARNING (events and metrics), and on at INFO, the
default (and every task event a log line), the three in turn in each round; medians.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from common import (
    control_plane_loop,
    cpu_seconds,
    start_agents,
    start_control_plane,
    stop_processes,
    submit_burst,
    wait_for_workers,
)
from gpucp import Client, task_spec
from gpucp.testing import make_pki
from gpucp.tls import channel_credentials
from gpucp.v1 import common_pb2

LARGE_PAYLOAD = 1_000_000


def closed_loop(client: Client, n: int, *, one_call: bool) -> list[float]:
    """Sequential submit -> result latencies (ms): RunTask, or SubmitTask then WaitTask."""
    latencies = []
    for _ in range(n):
        t0 = time.perf_counter()
        task = client.run("noop", wait_s=30) if one_call else client.wait(client.submit("noop"), timeout_s=30)
        latencies.append((time.perf_counter() - t0) * 1000)
        assert task.state == common_pb2.TASK_STATE_SUCCEEDED, task
    return sorted(latencies)


def round_trips(client: Client, n: int) -> list[float]:
    """Latencies (ms) of a bare unary call (GetClusterStats): the floor under every RunTask,
    which makes one such call plus one round trip to an agent over its stream."""
    latencies = []
    for _ in range(n):
        t0 = time.perf_counter()
        client.stats()
        latencies.append((time.perf_counter() - t0) * 1000)
    return sorted(latencies)


def burst(client: Client, n: int) -> tuple[float, float]:
    """(accepted tasks/s, completed tasks/s) for n tasks submitted as fast as possible."""
    accepted, done = submit_burst(client, task_spec("noop"), n)
    return n / accepted, n / done


def large_burst(client: Client, n: int) -> tuple[float, float]:
    """burst() of tasks with 1 MB payloads, which the control plane keeps in its store and reads back
    to dispatch (noop answers with the payload: each also carries a 1 MB result back)."""
    accepted, done = submit_burst(client, task_spec("noop", b"x" * LARGE_PAYLOAD), n, batch=4)
    return n / accepted, n / done


# The control planes --observers compares: (what runs, the module run as `-m MODULE serve`, --log-level).
OBSERVER_CASES = (
    ("no events, metrics or logs", "benches.serve_unobserved", "WARNING"),
    ("events + metrics", "gpucp", "WARNING"),
    ("events + metrics + INFO logs", "gpucp", "INFO"),
)


def observed_burst(args: argparse.Namespace, module: str, log_level: str) -> tuple[float, float]:
    """(control-plane CPU us per task, completed tasks/s) over a burst, on a control plane of its own."""
    with tempfile.TemporaryDirectory(prefix="gpucp-bench-") as tmp:
        address, cp = start_control_plane(Path(tmp), "--max-queue", "1000000", "--prefetch-depth",
                                          str(args.prefetch_depth), log_level=log_level, module=module)
        agents = start_agents(address, Path(tmp), args.agents, "--slots", str(args.slots))
        try:
            with Client(address) as client:
                wait_for_workers(client, args.agents)
                burst(client, 1000)  # warm up connections, caches and the store
                cpu = cpu_seconds(cp.pid)
                _, done_rate = burst(client, args.burst_tasks)
                cpu = cpu_seconds(cp.pid) - cpu
        finally:
            stop_processes(agents)
            stop_processes([cp])
    return cpu / args.burst_tasks * 1e6, done_rate


def observers(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """OBSERVER_CASES in turn, args.observers rounds (each round starting one case later).

    Each case is compared with the first within a round, as a ratio: the machine's load drifts
    over a run more than between three neighbouring bursts. The medians of those ratios are printed
    beside the medians of the values.
    """
    runs: dict[str, list[tuple[float, float]]] = {label: [] for label, _, _ in OBSERVER_CASES}
    for r in range(args.observers):
        for label, module, level in OBSERVER_CASES[r % 3 :] + OBSERVER_CASES[: r % 3]:
            runs[label].append(observed_burst(args, module, level))
    print(f"what task events, metrics and logs cost: {args.agents} agents x {args.slots} slots, bursts of "
          f"{args.burst_tasks:,} noop tasks after 1,000 to warm up, control plane on {control_plane_loop()}, "
          f"{args.observers} interleaved rounds: medians, and medians of each round's ratio to the first row")
    print(f"  {'':<30} {'CPU us/task':>11} {'vs none':>8} {'done/s':>8} {'vs none':>8}")
    none = runs[OBSERVER_CASES[0][0]]
    out: dict[str, dict[str, Any]] = {}
    for label, values in runs.items():
        cpu, done = statistics.median(v[0] for v in values), statistics.median(v[1] for v in values)
        cpu_ratio = statistics.median(v[0] / n[0] for v, n in zip(values, none, strict=True))
        done_ratio = statistics.median(v[1] / n[1] for v, n in zip(values, none, strict=True))
        print(f"  {label:<30} {cpu:>11.1f} {100 * (cpu_ratio - 1):>+7.1f}% "
              f"{done:>8,.0f} {100 * (done_ratio - 1):>+7.1f}%")
        out[label] = {"cpu_us_per_task": cpu, "done_per_s": done, "cpu_vs_none": cpu_ratio, "done_vs_none": done_ratio,
                      "runs": [{"cpu_us_per_task": c, "done_per_s": d} for c, d in values]}
    return out


def auth_file(workdir: Path) -> Path:
    """An --auth file with one admin (the bench's client) and one agent principal (its agents)."""
    path = workdir / "auth.toml"
    rows = [("bench-admin", "admin", ""), ("bench-agent", "agent", 'workers = ["bench-*"]')]
    path.write_text("".join(
        f'[[principal]]\nname = "{name}"\ntoken_sha256 = "{hashlib.sha256(name.encode()).hexdigest()}"\n'
        f'role = "{role}"\n{extra}\n'
        for name, role, extra in rows
    ))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--agents", type=int, default=4)
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--latency-tasks", type=int, default=500)
    parser.add_argument("--burst-tasks", type=int, default=10_000)
    parser.add_argument("--large-tasks", type=int, default=300, help="a burst of tasks with 1 MB payloads")
    parser.add_argument("--prefetch-depth", type=int, default=0, help="passed to gpucp serve (default: off)")
    parser.add_argument("--auth", action="store_true",
                        help="serve with --auth: the client presents an admin token, agents an agent token")
    parser.add_argument("--tls", action="store_true", help="serve TLS with a test CA's certificate")
    parser.add_argument("--observers", type=int, default=0, metavar="ROUNDS",
                        help="measure only what task events, metrics and logs cost, over this many rounds")
    parser.add_argument("--json")
    args = parser.parse_args()
    if args.observers:
        cost = observers(args)
        if args.json:
            Path(args.json).write_text(json.dumps(cost))
        return
    with tempfile.TemporaryDirectory(prefix="gpucp-bench-") as tmp:
        flags = ["--auth", str(auth_file(Path(tmp)))] if args.auth else []
        agent_flags = []
        if args.tls:
            make_pki(Path(tmp))
            flags += ["--tls-cert", str(Path(tmp) / "server.pem"), "--tls-key", str(Path(tmp) / "server.key")]
            agent_flags = ["--tls-ca", str(Path(tmp) / "ca.pem")]
        address, cp = start_control_plane(
            Path(tmp), "--max-queue", "1000000", "--prefetch-depth", str(args.prefetch_depth), *flags
        )
        agent_env = {"GPUCP_TOKEN": "bench-agent"} if args.auth else None
        agents = start_agents(address, Path(tmp), args.agents, "--slots", str(args.slots), *agent_flags, env=agent_env)
        tls = channel_credentials(str(Path(tmp) / "ca.pem")) if args.tls else None
        try:
            with Client(address, token="bench-admin" if args.auth else "", tls=tls) as client:
                wait_for_workers(client, args.agents)
                closed_loop(client, 50, one_call=True)  # warm up connections and caches
                lat = {
                    "RunTask": closed_loop(client, args.latency_tasks, one_call=True),
                    "SubmitTask + WaitTask": closed_loop(client, args.latency_tasks, one_call=False),
                    "GetClusterStats alone": round_trips(client, args.latency_tasks),
                }
                accept_rate, done_rate = burst(client, args.burst_tasks)
                large_accept, large_done = large_burst(client, args.large_tasks)
        finally:
            stop_processes(agents)
            stop_processes([cp])
    print(f"end to end, {args.agents} agents x {args.slots} slots, prefetch depth {args.prefetch_depth}, "
          f"noop tasks, SQLite WAL durable accept, control plane on {control_plane_loop()}, "
          f"{'--auth with tokens' if args.auth else 'no --auth'}, {'TLS' if args.tls else 'plaintext'}")
    out: dict[str, float] = {
        "accept_per_s": accept_rate, "done_per_s": done_rate,
        "large_accept_per_s": large_accept, "large_done_per_s": large_done,
    }
    for how, xs in lat.items():
        p50, p99 = xs[len(xs) // 2], xs[int(len(xs) * 0.99)]
        what = "one unary call" if how == "GetClusterStats alone" else "submit -> result"
        print(f"  {what:<16} {how:<22} p50 {p50:.2f} ms   p99 {p99:.2f} ms   ({args.latency_tasks} sequential calls)")
        key = {"RunTask": "run", "SubmitTask + WaitTask": "submit_wait"}.get(how, "unary_call")
        out.update({f"{key}_p50_ms": p50, f"{key}_p99_ms": p99})
    print(f"  burst of {args.burst_tasks}: accepted {accept_rate:,.0f} tasks/s, completed {done_rate:,.0f} tasks/s")
    print(f"  burst of {args.large_tasks} with 1 MB payloads: accepted {large_accept:,.0f} tasks/s, "
          f"completed {large_done:,.0f} tasks/s")
    if args.json:
        Path(args.json).write_text(json.dumps(out))


if __name__ == "__main__":
    main()
