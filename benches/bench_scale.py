"""Scale: thousands of agent streams on one control plane.

For each stream count (default 1,000 then 10,000) a fresh `gpucp serve` (SQLite, durable accept)
is started and a few driver processes open that many Workers.Connect streams to it. A driver is a
lean simulated agent written for this bench: it speaks the real protocol through the generated
stubs (Register with 4 simulated A100s and 4 slots, heartbeats with GPU stats at the interval the
control plane asks for, RUNNING then SUCCEEDED for every assignment), but keeps one coroutine per
stream instead of the full agent (agents.Agent), so that 10,000 of them fit on two cores next to
the control plane. Several streams share one HTTP/2 connection (--streams-per-connection).

Measured, for the control-plane process only:
- registration: time from the first connect until every stream got `registered`;
- heartbeat CPU: its CPU % over a quiet window (no tasks) with every stream heartbeating;
- dispatch: submit -> assign latency (the task's payload carries the submit time, the driver reads
  CLOCK_MONOTONIC on arrival) for tasks submitted at a steady rate, and for one batch;
- memory: its RSS before any stream, after registration, and at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import multiprocessing.connection
import os
import random
import sys
import tempfile
import time
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

from common import (
    OUT_DIR,
    cpu_seconds,
    machine,
    percentile,
    print_profile,
    pyplot,
    raise_fd_limit,
    rss_bytes,
    save_figure,
    start_control_plane,
    start_profiler,
    stop_processes,
    stop_profiler,
    write_json,
)
from gpucp.v1 import common_pb2

SLOTS = 4
GPU_SPEC = f"{SLOTS}xA100-80GB"


# ----- the driver: many simulated agents in one process ---------------------------------------

STATS_SETS = 16


def working_gpu_stats(gpus: Sequence[common_pb2.Gpu], rng: random.Random) -> list[common_pb2.GpuStats]:
    """Readings of GPUs at work: about one in four idle, the others 35-99% busy, with the memory,
    temperature and power that go with it."""
    stats = []
    for gpu in gpus:
        busy = 0.0 if rng.random() < 0.25 else rng.uniform(35, 99)
        memory = rng.uniform(0.3, 0.95) if busy else 0.01
        stats.append(common_pb2.GpuStats(
            index=gpu.index, utilization=round(busy, 1), memory_used_mb=int(gpu.memory_total_mb * memory),
            temperature_c=round(34 + busy * 0.45 + rng.uniform(-2, 2), 1), power_w=round(60 + busy * 3.2, 1),
            healthy=True,
        ))
    return stats


class StreamDriver:
    """Holds `count` Workers.Connect streams named `{prefix}{i}`; answers commands from the bench."""

    def __init__(self, address: str, prefix: str, count: int, per_connection: int, connect_concurrency: int) -> None:
        self.address = address
        self.prefix = prefix
        self.count = count
        self.per_connection = per_connection
        self.connect_concurrency = connect_concurrency
        self.registered_at: list[float] = []
        self.failures: list[str] = []
        self.latencies_ns: list[int] = []
        self.heartbeats = 0
        self.assigned = 0
        self.interval_ms = 0
        self.retries = 0
        self.register_failed = 0
        self.retry_codes: dict[str, int] = {}
        self.all_registered = asyncio.Event()

    async def run(self, pipe: multiprocessing.connection.Connection) -> None:
        from agents.inventory import parse_gpus
        from agents.stream import CHANNEL_OPTIONS
        from gpucp.v1 import workers_pb2_grpc

        self._gpus = parse_gpus(GPU_SPEC, "sim")
        # A few sets of readings made once, each stream heartbeating one: a heartbeat costs what one
        # shared message did, and a dashboard over these workers shows a fleet at work.
        self._stats = [working_gpu_stats(self._gpus, random.Random(k)) for k in range(STATS_SETS)]
        channels = [
            grpc.aio.insecure_channel(self.address, options=[*CHANNEL_OPTIONS, ("grpc.use_local_subchannel_pool", 1)])
            for _ in range((self.count + self.per_connection - 1) // self.per_connection)
        ]
        stubs = [workers_pb2_grpc.WorkersStub(ch) for ch in channels]
        gate = asyncio.Semaphore(self.connect_concurrency)
        loop = asyncio.get_running_loop()
        command = await loop.run_in_executor(None, pipe.recv)
        assert command == "connect", command
        self.started = time.monotonic()
        streams = [
            asyncio.create_task(self._stream(stubs[i // self.per_connection], f"{self.prefix}{i}", gate))
            for i in range(self.count)
        ]
        while True:
            command = await loop.run_in_executor(None, pipe.recv)
            if command == "wait_registered":
                await asyncio.wait_for(self._registered_or_failed(), 600)
                pipe.send({"started": self.started, "registered_at": self.registered_at, "failures": self.failures[:5],
                           "failed": self.register_failed, "interval_ms": self.interval_ms,
                           "retries": self.retries, "retry_codes": self.retry_codes})
            elif command == "counters":
                pipe.send({"heartbeats": self.heartbeats, "assigned": self.assigned, "failed": len(self.failures),
                           "failures": self.failures[:5]})
            elif command == "latencies":
                pipe.send(self.latencies_ns)
                self.latencies_ns = []
            elif command == "stop":
                for task in streams:
                    task.cancel()
                await asyncio.gather(*streams, return_exceptions=True)
                await asyncio.gather(*(ch.close() for ch in channels), return_exceptions=True)
                pipe.send("stopped")
                return

    async def _registered_or_failed(self) -> None:
        while len(self.registered_at) + self.register_failed < self.count:
            await asyncio.sleep(0.05)

    async def _register(self, stub: Any, worker_id: str, gate: asyncio.Semaphore) -> Any:
        """Open the stream and register, retrying as agents do (jittered exponential backoff)."""
        from gpucp.v1 import workers_pb2

        register = workers_pb2.AgentMessage(register=workers_pb2.Register(
            worker_id=worker_id, provider="sim", slots=SLOTS, gpus=self._gpus, backend="cuda", kinds=["noop"],
        ))
        backoff = 0.1
        for _ in range(20):
            # The gate bounds registrations in flight: past grpc's server-side pending-request
            # limit (grpc.server.max_pending_requests, 1,000 by default) new calls are cancelled.
            async with gate:
                call = stub.Connect()
                try:
                    await call.write(register)
                    first = await call.read()
                except grpc.aio.AioRpcError as exc:
                    self.retries += 1
                    self.retry_codes[exc.code().name] = self.retry_codes.get(exc.code().name, 0) + 1
                    first = None
            if first is not None:
                if first is grpc.aio.EOF or first.WhichOneof("msg") != "registered":
                    self.failures.append(f"{worker_id}: first message was {first!r}")
                    self.register_failed += 1
                    return None
                self.interval_ms = first.registered.heartbeat_interval_ms
                return call
            await asyncio.sleep(random.uniform(0.5, 1.0) * backoff)
            backoff = min(backoff * 2, 5.0)
        self.failures.append(f"{worker_id}: not registered after 20 attempts")
        self.register_failed += 1
        return None

    async def _stream(self, stub: Any, worker_id: str, gate: asyncio.Semaphore) -> None:
        from gpucp.v1 import common_pb2, workers_pb2

        try:
            call = await self._register(stub, worker_id, gate)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.failures.append(f"{worker_id}: {type(exc).__name__}: {str(exc)[:200]}")
            self.register_failed += 1
            return
        if call is None:
            return
        self.registered_at.append(time.monotonic())
        try:
            lock = asyncio.Lock()  # one write at a time on a stream
            stats = self._stats[zlib.crc32(worker_id.encode()) % STATS_SETS]
            heartbeat = workers_pb2.AgentMessage(heartbeat=workers_pb2.Heartbeat(gpus=stats, active=0))

            async def beat() -> None:
                interval = max(self.interval_ms, 10) / 1000
                await asyncio.sleep(random.uniform(0, interval))  # agents do not start in lockstep
                while True:
                    async with lock:
                        await call.write(heartbeat)
                    self.heartbeats += 1
                    await asyncio.sleep(interval)

            beating = asyncio.create_task(beat())
            try:
                while True:
                    msg = await call.read()
                    if msg is grpc.aio.EOF:
                        self.failures.append(f"{worker_id}: the control plane ended the stream")
                        return
                    if msg.WhichOneof("msg") != "assign":
                        continue
                    arrived = time.monotonic_ns()
                    task = msg.assign.task
                    self.assigned += 1
                    if task.spec.payload:
                        self.latencies_ns.append(arrived - int(task.spec.payload))
                    async with lock:
                        for state in (common_pb2.TASK_STATE_RUNNING, common_pb2.TASK_STATE_SUCCEEDED):
                            await call.write(workers_pb2.AgentMessage(update=workers_pb2.TaskUpdate(
                                task_id=task.id, attempt=task.attempt, state=state)))
            finally:
                beating.cancel()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a stream that breaks is counted, never fatal to the others
            self.failures.append(f"{worker_id}: {type(exc).__name__}: {str(exc)[:200]}")


def driver_main(pipe: multiprocessing.connection.Connection, address: str, prefix: str, count: int,
                per_connection: int, connect_concurrency: int) -> None:
    raise_fd_limit()
    asyncio.run(StreamDriver(address, prefix, count, per_connection, connect_concurrency).run(pipe))


# ----- the bench ------------------------------------------------------------------------------


def cpu_percent(pid: int, seconds: float) -> float:
    before, t0 = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    return 100 * (cpu_seconds(pid) - before) / (time.monotonic() - t0)


def ask(pipes: list[multiprocessing.connection.Connection], command: str, timeout_s: float = 600) -> list[Any]:
    for pipe in pipes:
        pipe.send(command)
    out = []
    for pipe in pipes:
        if not pipe.poll(timeout_s):
            raise RuntimeError(f"a driver did not answer {command!r} within {timeout_s:g} s")
        out.append(pipe.recv())
    return out


def measure(streams: int, args: argparse.Namespace) -> dict[str, Any]:
    from gpucp import Client, task_spec

    ctx = multiprocessing.get_context("spawn")
    processes = max(1, min(args.processes, streams // 100 or 1))
    with tempfile.TemporaryDirectory(prefix="gpucp-bench-scale-") as tmp:
        workdir = Path(tmp)
        if args.keep_logs:
            workdir = Path(args.keep_logs) / f"streams-{streams}"
            workdir.mkdir(parents=True, exist_ok=True)
        extra = ["--max-queue", "1000000", "--heartbeat-timeout", str(args.heartbeat_timeout)]
        address, cp = start_control_plane(workdir, *extra, log_level=args.log_level)
        drivers: list[multiprocessing.process.BaseProcess] = []
        pipes: list[multiprocessing.connection.Connection] = []
        try:
            with Client(address) as client:
                client.stats()
                time.sleep(1.0)
                idle_cpu = cpu_percent(cp.pid, 2.0)
                rss_idle = rss_bytes(cp.pid)
                per = [streams // processes + (i < streams % processes) for i in range(processes)]
                for i, n in enumerate(per):
                    ours, theirs = ctx.Pipe()
                    proc = ctx.Process(target=driver_main, daemon=True,
                                       args=(theirs, address, f"scale-{i}-", n, args.streams_per_connection,
                                             args.connect_concurrency))
                    proc.start()
                    drivers.append(proc)
                    pipes.append(ours)
                time.sleep(0.5)
                # Every driver imports grpc and builds its channels before the clock starts.
                cpu0 = cpu_seconds(cp.pid)
                ask_start = time.monotonic()
                for pipe in pipes:
                    pipe.send("connect")
                reg = ask(pipes, "wait_registered")
                registered = sum(len(r["registered_at"]) for r in reg)
                failed = sum(r["failed"] for r in reg)
                retries = sum(r["retries"] for r in reg)
                retry_codes: dict[str, int] = {}
                for r in reg:
                    for code, n in r["retry_codes"].items():
                        retry_codes[code] = retry_codes.get(code, 0) + n
                start = min(r["started"] for r in reg)
                last = max((t for r in reg for t in r["registered_at"]), default=start)
                registration_s = last - start
                registration_cpu_s = cpu_seconds(cp.pid) - cpu0
                interval_ms = max(r["interval_ms"] for r in reg)
                server_workers = client.stats().workers
                rss_registered = rss_bytes(cp.pid)

                # Quiet window: let the staggered first heartbeats settle, then only heartbeats flow.
                time.sleep(min(interval_ms / 1000, 5.0))
                hb0 = sum(c["heartbeats"] for c in ask(pipes, "counters"))
                profiler = None
                if args.profile and streams == max(int(x) for x in args.streams.split(",") if x.strip()):
                    profiler = start_profiler(cp.pid, args.profile)
                t0, c0 = time.monotonic(), cpu_seconds(cp.pid)
                time.sleep(args.quiet_s)
                hb1 = sum(c["heartbeats"] for c in ask(pipes, "counters"))
                profile = stop_profiler(profiler) if profiler else None
                quiet_wall = time.monotonic() - t0
                quiet_cpu = cpu_seconds(cp.pid) - c0
                heartbeats_per_s = (hb1 - hb0) / quiet_wall

                # Dispatch at a steady rate, one SubmitTask per task.
                ask(pipes, "latencies")
                gap = 1.0 / args.dispatch_rate
                t_start = time.monotonic()
                for i in range(args.dispatch_tasks):
                    delay = t_start + i * gap - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    client.submit("noop", str(time.monotonic_ns()), gpus=1)
                steady = collect(pipes, args.dispatch_tasks)

                # One batch: every task in a single SubmitTasks call, timed from before the call.
                stamp = str(time.monotonic_ns())
                client.submit_many([task_spec("noop", stamp, gpus=1)] * args.batch_tasks)
                batch = collect(pipes, args.batch_tasks)

                counters = ask(pipes, "counters")
                end_workers = client.stats().workers
                rss_end = rss_bytes(cp.pid)
            ask(pipes, "stop", 120)
        finally:
            for proc in drivers:
                proc.join(10)
                if proc.is_alive():
                    proc.kill()
                    proc.join()
            stop_processes([cp], timeout_s=60)
        broken = sum(c["failed"] for c in counters)
        failures = [f for c in counters for f in c["failures"]][:3]
    return {
        "streams": streams,
        "driver_processes": processes,
        "connections": sum((n + args.streams_per_connection - 1) // args.streams_per_connection for n in per),
        "registered": registered,
        "register_failed": failed,
        "register_retries": retries,
        "register_retry_codes": retry_codes,
        "server_workers_after_registration": server_workers,
        "server_workers_at_end": end_workers,
        "streams_broken_at_end": broken,
        "failure_examples": failures,
        "registration_s": registration_s,
        "registrations_per_s": registered / registration_s if registration_s else float("nan"),
        "registration_cpu_s": registration_cpu_s,
        "heartbeat_interval_ms": interval_ms,
        "heartbeats_per_s": heartbeats_per_s,
        "idle_cpu_pct_no_streams": idle_cpu,
        "heartbeat_cpu_pct": 100 * quiet_cpu / quiet_wall,
        "cpu_us_per_heartbeat": 1e6 * quiet_cpu / (hb1 - hb0) if hb1 > hb0 else float("nan"),
        "steady": steady,
        "steady_rate_per_s": args.dispatch_rate,
        "batch": batch,
        "rss_mb_no_streams": rss_idle / 2**20,
        "rss_mb_registered": rss_registered / 2**20,
        "rss_mb_end": rss_end / 2**20,
        "rss_kb_per_stream": (rss_registered - rss_idle) / 1024 / streams,
        "connect_concurrency": args.connect_concurrency,
        **({"profile": profile} if profile else {}),
        "since_connect_command_s": time.monotonic() - ask_start,
    }


def collect(pipes: list[multiprocessing.connection.Connection], n: int, timeout_s: float = 60) -> dict[str, Any]:
    """Gather n submit -> assign latencies from the drivers (ms percentiles)."""
    got: list[int] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < n and time.monotonic() < deadline:
        for chunk in ask(pipes, "latencies"):
            got.extend(chunk)
        if len(got) < n:
            time.sleep(0.1)
    ms = [x / 1e6 for x in got]
    return {"tasks": n, "assigned": len(ms), "p50_ms": percentile(ms, 50), "p99_ms": percentile(ms, 99),
            "max_ms": max(ms) if ms else float("nan")}


def report(results: list[dict[str, Any]], args: argparse.Namespace, info: dict[str, Any]) -> str:
    lines = [
        f"scale: agent streams on one control plane ({info['cores']} cores, "
        f"load avg {info['load_average_1m']} at start; drivers share the cores), "
        f"{SLOTS} slots + {GPU_SPEC} per stream, {args.streams_per_connection} streams per connection",
        "",
        f"{'streams':>8} {'registered':>11} {'retries':>8} {'reg s':>7} {'reg/s':>7} {'hb/s':>7} "
        f"{'hb CPU %':>9} {'us/hb':>7} {'steady p50':>11} {'steady p99':>11} {'batch p50':>10} "
        f"{'batch p99':>10} {'RSS MB':>7} {'KB/stream':>10} {'lost':>5}",
    ]
    for r in results:
        if "error" in r:
            lines.append(f"{r['streams']:>8} FAILED: {r['error']}")
            continue
        lost = r["streams"] - r["server_workers_at_end"]
        lines.append(
            f"{r['streams']:>8,} {r['registered']:>11,} {r['register_retries']:>8,} "
            f"{r['registration_s']:>7.2f} {r['registrations_per_s']:>7,.0f} "
            f"{r['heartbeats_per_s']:>7,.0f} {r['heartbeat_cpu_pct']:>9.1f} {r['cpu_us_per_heartbeat']:>7.0f} "
            f"{r['steady']['p50_ms']:>9.2f}ms {r['steady']['p99_ms']:>9.2f}ms {r['batch']['p50_ms']:>8.1f}ms "
            f"{r['batch']['p99_ms']:>8.1f}ms {r['rss_mb_registered']:>7.0f} {r['rss_kb_per_stream']:>10.1f} {lost:>5}"
        )
    lines += [
        "",
        "retries: registrations the server cancelled (retried with backoff); "
        "reg s: first connect -> last `registered`; hb CPU %: control-plane CPU over a "
        f"{args.quiet_s:g} s quiet window at the heartbeat interval the server asks for "
        f"({results[0].get('heartbeat_interval_ms', '?')} ms, --heartbeat-timeout {args.heartbeat_timeout:g} s);",
        f"steady: {args.dispatch_tasks} tasks at {args.dispatch_rate:g}/s, submit -> assign; "
        f"batch: {args.batch_tasks} tasks in one "
        "SubmitTasks, each timed from before the call; RSS after registration; lost: streams the server no longer "
        "counts at the end",
    ]
    for r in results:
        if "error" not in r:
            failed = f", {r['register_failed']} registrations failed: {r['failure_examples']}"
            lines.append(
                f"  {r['streams']:,} streams: idle CPU with no streams {r['idle_cpu_pct_no_streams']:.1f} %, "
                f"RSS {r['rss_mb_no_streams']:.0f} MB -> {r['rss_mb_registered']:.0f} MB -> "
                f"{r['rss_mb_end']:.0f} MB at end, "
                f"registration used {r['registration_cpu_s']:.1f} s control-plane CPU, "
                f"{r['driver_processes']} driver processes / {r['connections']} connections"
                + (failed if r["register_failed"] else "")
            )
    return "\n".join(lines)


def plot(results: list[dict[str, Any]]) -> Path:
    plt = pyplot()
    ok = [r for r in results if "error" not in r]
    labels = [f"{r['streams']:,}" for r in ok]
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.6))
    panels = [
        ("registration, s", [r["registration_s"] for r in ok]),
        ("heartbeat CPU, % of a core", [r["heartbeat_cpu_pct"] for r in ok]),
        ("control-plane RSS, MB", [r["rss_mb_registered"] for r in ok]),
    ]
    for ax, (title, values) in zip([axes[0], axes[1], axes[3]], panels, strict=True):
        ax.bar(labels, values, color="tab:blue")
        ax.set_title(title)
        ax.set_xlabel("agent streams")
    x = range(len(ok))
    axes[2].bar([i - 0.2 for i in x], [r["steady"]["p99_ms"] for r in ok], 0.4, label="steady p99")
    axes[2].bar([i + 0.2 for i in x], [r["batch"]["p99_ms"] for r in ok], 0.4, label="batch p99")
    axes[2].set_xticks(list(x), labels)
    axes[2].set_title("dispatch submit -> assign, ms")
    axes[2].set_xlabel("agent streams")
    axes[2].legend()
    fig.suptitle(f"gpucp scale: one control-plane process, {os.cpu_count()} cores")
    return save_figure(fig, "scale.png")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--streams", default="1000,10000",
                   help="comma-separated stream counts, one fresh control plane each (default 1000,10000)")
    p.add_argument("--processes", type=int, default=4, help="driver processes the streams are spread over (default 4)")
    p.add_argument("--streams-per-connection", type=int, default=10,
                   help="streams sharing one HTTP/2 connection "
                        "(1 = one connection per agent, as real agents do; default 10)")
    p.add_argument("--connect-concurrency", type=int, default=1000,
                   help="registrations in flight per driver process (default 1000; the server raises grpc's "
                        "pending-request limits, so a storm is not cancelled: the retries column shows it)")
    p.add_argument("--heartbeat-timeout", type=float, default=10.0,
                   help="the server's --heartbeat-timeout; it asks agents to heartbeat twice per timeout (default 10)")
    p.add_argument("--quiet-s", type=float, default=10.0,
                   help="quiet window for the heartbeat CPU measure (default 10)")
    p.add_argument("--dispatch-tasks", type=int, default=300,
                   help="tasks submitted one by one at --dispatch-rate (default 300)")
    p.add_argument("--dispatch-rate", type=float, default=100.0, help="tasks/s of the steady submissions (default 100)")
    p.add_argument("--batch-tasks", type=int, default=1000,
                   help="tasks submitted in one SubmitTasks call (default 1000)")
    p.add_argument("--profile", metavar="PATH", help="py-spy record the control plane during the quiet (heartbeat) "
                   "window of the largest stream count into PATH; the top frames are printed")
    p.add_argument("--keep-logs", metavar="DIR",
                   help="run the control planes in DIR/streams-N and keep their logs and db")
    p.add_argument("--log-level", default="WARNING", help="the control plane's --log-level (default WARNING)")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    counts = [int(x) for x in args.streams.split(",") if x.strip()]
    limit = raise_fd_limit()
    needed = max(counts) // args.streams_per_connection + 1000
    if needed > limit:
        raise SystemExit(
            f"{needed} file descriptors needed but the hard limit is {limit}: raise --streams-per-connection"
        )
    info = machine()
    results = []
    for n in counts:
        print(f"{n} streams ...", file=sys.stderr, flush=True)
        started = time.monotonic()
        try:
            result = measure(n, args)
        except Exception as exc:  # one scale failing still reports the others
            result = {"streams": n, "error": f"{type(exc).__name__}: {exc}"}
        result["bench_wall_s"] = time.monotonic() - started
        results.append(result)
    text = report(results, args, info)
    print(text)
    for r in results:
        if "profile" in r:
            print_profile(r["profile"], f"control plane, heartbeats only, {r['streams']:,} streams")
    json_path = write_json("scale.json", {"machine": info, "args": vars(args), "results": results, "table": text})
    png = plot(results)
    print(f"\nwrote {json_path.relative_to(OUT_DIR.parent.parent)} and {png.relative_to(OUT_DIR.parent.parent)}")


if __name__ == "__main__":
    main()
