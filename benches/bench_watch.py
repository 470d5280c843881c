"""What open watches cost a burst: the same burst of no-op tasks with no watches, with N watches of
every event, and with N watches of another tenant's tasks, all in one run.

Starts `gpucp serve` (--max-watchers 0) and one agent on loopback. Each scenario times a burst of
`--tasks` no-op tasks in tenant "burst", submit to all ended (benches/common.submit_burst), `--rounds`
times, and prints the medians of its time and of the control plane's CPU seconds (less at the
mercy of other load on the machine), and their ratios to the burst without watches. Watches either read
nothing (an attacker holding streams open: the server's writes stop at the flow-control window and
events queue up) or are read by one thread each (`--read`). `--profile` records the control plane
with py-spy during the bursts under watches of every event.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc

from common import (
    cpu_seconds,
    print_profile,
    start_agents,
    start_control_plane,
    start_profiler,
    stop_processes,
    stop_profiler,
    submit_burst,
    wait_for_workers,
)
from gpucp import Client
from gpucp.client import CHANNEL_OPTIONS
from gpucp.v1 import common_pb2, scheduler_pb2, scheduler_pb2_grpc


@contextmanager
def watches(address: str, n: int, tenant: str, read: bool) -> Iterator[list[int]]:
    """`n` open WatchTasks streams (of `tenant`'s tasks, "" every task); yields the events each read."""
    channel = grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
    stub = scheduler_pb2_grpc.SchedulerStub(channel)
    calls = [stub.WatchTasks(scheduler_pb2.WatchTasksRequest(tenant=tenant)) for _ in range(n)]
    counts = [0] * n
    for call in calls:
        call.initial_metadata()  # the server records for the watch once its headers are out

    def drain(i: int, call: grpc.Call) -> None:
        try:
            for _ in call:  # type: ignore[attr-defined]
                counts[i] += 1
        except grpc.RpcError:
            pass  # cancelled at the end

    readers = [threading.Thread(target=drain, args=(i, call), daemon=True) for i, call in enumerate(calls)] if read \
        else []
    for reader in readers:
        reader.start()
    try:
        yield counts
    finally:
        for call in calls:
            call.cancel()  # type: ignore[attr-defined]
        for reader in readers:
            reader.join(timeout=10)
        channel.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=500)
    parser.add_argument("--watches", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--read", action="store_true", help="read every watch (one thread each)")
    parser.add_argument("--profile", action="store_true", help="py-spy the control plane under watches of everything")
    args = parser.parse_args()
    spec = common_pb2.TaskSpec(kind="noop", tenant="burst")
    with tempfile.TemporaryDirectory(prefix="gpucp-bench-") as tmp:
        address, cp = start_control_plane(Path(tmp), "--max-watchers", "0")
        agents = start_agents(address, Path(tmp), 1, "--slots", str(args.slots))
        try:
            with Client(address) as client:
                wait_for_workers(client, 1)
                submit_burst(client, spec, 200)  # warm up connections and caches

                def burst() -> tuple[float, float]:
                    """Seconds to all ended, and the control plane's CPU seconds meanwhile."""
                    cpu = cpu_seconds(cp.pid)
                    took = submit_burst(client, spec, args.tasks)[1]
                    return took, cpu_seconds(cp.pid) - cpu

                scenarios = [("no watches", 0, ""), (f"{args.watches} watches of every event", args.watches, ""),
                             (f"{args.watches} watches of another tenant", args.watches, "other")]
                times: dict[str, list[tuple[float, float]]] = {name: [] for name, _, _ in scenarios}
                for _ in range(args.rounds):
                    for name, n, tenant in scenarios:
                        with watches(address, n, tenant, args.read) as counts:
                            times[name].append(burst())
                        if args.read and n and not tenant:
                            assert min(counts) > 0, "a watch of every event read nothing"
                profile = None
                if args.profile:  # one more burst, apart from the timed ones
                    with watches(address, args.watches, "", args.read):
                        profiler = start_profiler(cp.pid, f"{tmp}/watch.prof")
                        burst()
                        profile = stop_profiler(profiler)
            mode = "read by one thread each" if args.read else "never read"
            print(f"{args.tasks}-task no-op burst, 1 agent x {args.slots} slots, watches {mode}, "
                  f"median of {args.rounds} rounds (interleaved):")
            print(f"  {'':<34} {'burst':>8} {'':>6}  {'server CPU':>10} {'':>6}   runs (burst s / CPU s)")
            base = [statistics.median(t[i] for t in times["no watches"]) for i in (0, 1)]
            for name, _, _ in scenarios:
                took, cpu = (statistics.median(t[i] for t in times[name]) for i in (0, 1))
                runs = " ".join(f"{t:.2f}/{c:.2f}" for t, c in times[name])
                print(f"  {name:<34} {took:6.2f} s {took / base[0]:5.1f}x  {cpu:8.2f} s {cpu / base[1]:5.1f}x   {runs}")
            if profile is not None:
                print_profile(profile, f"control plane during bursts under {args.watches} watches of every event")
        finally:
            stop_processes(agents)
            stop_processes([cp])


if __name__ == "__main__":
    main()
