"""Waiting for a batch: Client.gather (one watch, reads as tasks finish) against Client.wait per task.

Starts `gpucp serve` and agents with default flags on loopback, submits a batch of no-op tasks
and waits for all of them each way; prints the time from the first submission to the last
outcome in hand and the RPCs the client made, counted by a client interceptor.
"""

from __future__ import annotations

import argparse
import collections
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from common import start_agents, start_control_plane, stop_processes, wait_for_workers
from gpucp import Client
from gpucp.v1 import common_pb2, scheduler_pb2_grpc


class CountCalls(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Counts every call by method name, unary and streaming."""

    def __init__(self) -> None:
        self.calls: collections.Counter[str] = collections.Counter()

    def _count(self, details: grpc.ClientCallDetails) -> None:
        self.calls[str(details.method).rsplit("/", 1)[-1]] += 1

    def intercept_unary_unary(self, continuation: Callable[..., Any], details: grpc.ClientCallDetails,
                              request: Any) -> Any:
        self._count(details)
        return continuation(details, request)

    def intercept_unary_stream(self, continuation: Callable[..., Any], details: grpc.ClientCallDetails,
                               request: Any) -> Any:
        self._count(details)
        return continuation(details, request)


def counted(client: Client) -> CountCalls:
    """Route the client's Scheduler calls through a counter (the bench's view of the client's traffic)."""
    counter = CountCalls()
    client._scheduler = scheduler_pb2_grpc.SchedulerStub(grpc.intercept_channel(client._channel, counter))
    return counter


def submit(client: Client, spec: common_pb2.TaskSpec, n: int) -> list[str]:
    ids: list[str] = []
    for i in range(0, n, 1000):
        ids += client.submit_many([spec] * min(1000, n - i))
    return ids


def by_gather(client: Client, spec: common_pb2.TaskSpec, n: int) -> list[common_pb2.Task]:
    return client.gather(submit(client, spec, n), timeout_s=600)


def by_wait(client: Client, spec: common_pb2.TaskSpec, n: int) -> list[common_pb2.Task]:
    return [client.wait(task_id, timeout_s=600) for task_id in submit(client, spec, n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--agents", type=int, default=4)
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sleep", type=float, default=0.0,
                        help="sleep tasks of this many seconds instead of no-ops (most unfinished when gather starts)")
    args = parser.parse_args()
    spec = common_pb2.TaskSpec(kind="sleep", payload=str(args.sleep).encode()) if args.sleep else common_pb2.TaskSpec(
        kind="noop"
    )
    what = f"sleep {args.sleep:g} s" if args.sleep else "no-op"
    ways = {"gather": by_gather, "wait per task": by_wait}
    with tempfile.TemporaryDirectory(prefix="gpucp-bench-") as tmp:
        address, cp = start_control_plane(Path(tmp))
        agents = start_agents(address, Path(tmp), args.agents)
        try:
            with Client(address) as client:
                wait_for_workers(client, args.agents)
                by_gather(client, common_pb2.TaskSpec(kind="noop"), 100)  # warm up connections and caches
                print(f"{args.tasks} {what} tasks, {args.agents} agents, default flags: submit -> all outcomes in hand")
                for r in range(args.rounds):
                    for name, way in ways.items():
                        counter = counted(client)
                        start = time.perf_counter()
                        tasks = way(client, spec, args.tasks)
                        seconds = time.perf_counter() - start
                        assert all(t.state == common_pb2.TASK_STATE_SUCCEEDED for t in tasks), name
                        calls = ", ".join(f"{m} {c}" for m, c in sorted(counter.calls.items()))
                        total = sum(counter.calls.values())
                        print(f"  round {r + 1} {name:<14} {seconds:6.2f} s  {total:5d} RPCs ({calls})")
        finally:
            stop_processes(agents)
            stop_processes([cp])


if __name__ == "__main__":
    main()
