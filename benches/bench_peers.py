"""End to end against peers: gpucp, Ray and Dask distributed running the same no-op tasks on loopback.

Each system gets K workers x S GPU slots (simulated: nothing touches a GPU) and runs no-op tasks
that claim one GPU slot each:

- gpucp: a real `gpucp serve` on its defaults (temporary SQLite db, durable accept; `--prefetch-depth N`
  passes that flag) and K `python -m agents` processes with `--gpus SxA100-80GB --slots S`; tasks are
  `noop` with `gpus=1`. The client is `gpucp.Client` as a user has it: run() and submit_many() +
  gather() on its session stream; `--unary` measures the unary path instead (RunTask per task in
  the closed loop, SubmitTasks batches and the cluster counters in the burst).
- Ray: one local node declaring K*S GPUs (`ray.init(num_gpus=...)`), tasks
  `@ray.remote(num_gpus=1, num_cpus=0, max_calls=0)`. One node, not K: K raylets on two cores
  would measure contention, not Ray. `max_calls=0` keeps worker processes alive; Ray's default
  for GPU tasks (1) starts a fresh process per task, which is no-op-unfriendly by design.
- Dask: `LocalCluster` with K worker processes of S threads, each `resources={"GPU": S}`;
  tasks `client.submit(noop, resources={"GPU": 1}, pure=False)`.

- relay, relay-s: not schedulers but the floor under gpucp's closed loop, a bare gRPC relay making
  the same four hops with nothing between them (`relay.py`): how much of gpucp's latency is its
  layout (client -> control plane -> agent stream and back) rather than its work. `relay` makes
  a unary call per task (gpucp's --unary path), `relay-s` sends each on one session stream read
  by a thread of its own (gpucp.Client's default path). `relay-sd` is relay-s made as durable as a
  central scheduler must be and no more: three SQLite commits per task (the task before it goes
  anywhere, its assignment before it goes down an agent stream, its result before the caller hears
  it), with gpucp's pragmas, on the event loop. `relay-d` is Ray's layout instead: the
  caller's one round trip to the process that runs the task (Ray's driver pushes each task to a
  worker it leased once), answered by the relay itself.

Per system: closed loop (one client, submit -> result latency over N sequential tasks after a
warm-up) and burst (M tasks submitted as fast as the client can, tasks/s until all are done; not
for the relay, which has nothing to queue them in).
The systems run one after another, each in a fresh child process, on the same machine; compare
them by the ratios printed, not by absolute numbers from another run.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import (
    OUT_DIR,
    child_env,
    control_plane_loop,
    cpu_seconds,
    machine,
    percentile,
    print_profile,
    start_agents,
    start_control_plane,
    start_profiler,
    stop_processes,
    stop_profiler,
    submit_burst,
    wait_for_workers,
    write_json,
)
from peers_report import plot, report

SYSTEMS = ("gpucp", "relay", "relay-s", "relay-sd", "relay-d", "ray", "dask")
WARMUP_SEQUENTIAL = 50
WARMUP_BURST = 200
BURST_BATCH = 1000


def noop(*_: object) -> None:
    """The task every peer runs."""
    return None


def summarize(latencies_s: list[float], burst_n: int = 0, accept_s: float = 0.0, done_s: float = 0.0) -> dict[str, Any]:
    """Latency percentiles and burst rates; no burst (the relay's) has no rates."""
    ms = [x * 1000 for x in latencies_s]
    return {
        "p50_ms": percentile(ms, 50),
        "p99_ms": percentile(ms, 99),
        "mean_ms": sum(ms) / len(ms),
        "latency_tasks": len(ms),
        "burst_tasks": burst_n,
        "burst_accept_per_s": burst_n / accept_s if burst_n else None,
        "burst_done_per_s": burst_n / done_s if burst_n else None,
    }


# ----- gpucp ----------------------------------------------------------------------------------


def run_gpucp(args: argparse.Namespace) -> dict[str, Any]:
    from gpucp import Client, task_spec
    from gpucp.v1 import common_pb2

    succeeded = common_pb2.TASK_STATE_SUCCEEDED
    with tempfile.TemporaryDirectory(prefix="gpucp-bench-peers-") as tmp:
        workdir = Path(tmp)
        t0 = time.perf_counter()
        prefetch = () if args.prefetch_depth is None else ("--prefetch-depth", str(args.prefetch_depth))
        address, cp = start_control_plane(workdir, *prefetch)
        agents = start_agents(
            address, workdir, args.workers, "--gpus", f"{args.slots}xA100-80GB", "--slots", str(args.slots)
        )
        try:
            with Client(address, session=not args.unary) as client:
                wait_for_workers(client, args.workers)
                startup_s = time.perf_counter() - t0

                def one() -> float:
                    start = time.perf_counter()
                    task = client.run("noop", gpus=1, wait_s=30)  # submit and wait in one call
                    if task.state != succeeded:
                        raise RuntimeError(f"gpucp task ended {common_pb2.TaskState.Name(task.state)}: {task.error}")
                    return time.perf_counter() - start

                def burst(n: int) -> tuple[float, float]:
                    if args.unary:
                        return submit_burst(client, task_spec("noop", gpus=1), n)
                    start = time.perf_counter()
                    ids = []
                    for i in range(0, n, BURST_BATCH):
                        ids += client.submit_many([task_spec("noop", gpus=1)] * min(BURST_BATCH, n - i))
                    accepted = time.perf_counter() - start
                    tasks = client.gather(ids, timeout_s=600)
                    done = time.perf_counter() - start
                    failed = sum(t.state != succeeded for t in tasks)
                    if failed:
                        raise RuntimeError(f"burst: {failed} of {n} tasks did not succeed")
                    return accepted, done

                for _ in range(WARMUP_SEQUENTIAL):
                    one()
                burst(WARMUP_BURST)
                loop_cpu_before = cpu_seconds(cp.pid)
                latencies = [one() for _ in range(args.latency_tasks)]
                loop_cpu = cpu_seconds(cp.pid) - loop_cpu_before
                profiler = start_profiler(cp.pid, args.profile) if args.profile else None
                cpu_before = cpu_seconds(cp.pid)
                agents_before = sum(cpu_seconds(a.pid) for a in agents)
                accept_s, done_s = burst(args.burst_tasks)
                cp_cpu = cpu_seconds(cp.pid) - cpu_before
                agents_cpu = sum(cpu_seconds(a.pid) for a in agents) - agents_before
                hotspots = stop_profiler(profiler) if profiler else None
        finally:
            stop_processes(agents)
            stop_processes([cp])
    result = summarize(latencies, args.burst_tasks, accept_s, done_s)
    flags = "defaults" if args.prefetch_depth is None else f"--prefetch-depth {args.prefetch_depth}"
    result.update(
        setup=f"gpucp serve ({flags}, SQLite WAL, durable accept, {control_plane_loop()})"
        f" + {args.workers} agent processes, {'unary calls' if args.unary else 'session stream'}",
        startup_s=startup_s,
        burst_controlplane_cpu_s=cp_cpu,
        loop_controlplane_cpu_us=loop_cpu / args.latency_tasks * 1e6,
        burst_agents_cpu_s=agents_cpu,
        burst_wall_s=done_s,
    )
    if hotspots is not None:
        result["profile"] = hotspots
    return result


# ----- the relay ------------------------------------------------------------------------------


def run_relay(
    args: argparse.Namespace, session: bool = False, direct: bool = False, durable: bool = False
) -> dict[str, Any]:
    import grpc

    import relay

    script = Path(__file__).with_name("relay.py")
    with tempfile.TemporaryDirectory(prefix="gpucp-bench-relay-") as tmp:
        port_file = Path(tmp) / "port"
        db = ("--db", str(Path(tmp) / "relay.db")) if durable else ()
        server = subprocess.Popen(
            [sys.executable, str(script), "serve", "--port-file", str(port_file), *db], env=child_env()
        )
        agents: list[subprocess.Popen[bytes]] = []
        try:
            deadline = time.monotonic() + 30
            while not (port_file.exists() and port_file.read_text()):
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the relay did not start")
                time.sleep(0.05)
            address = f"127.0.0.1:{port_file.read_text()}"
            agents = [subprocess.Popen([sys.executable, str(script), "agent", "--server", address], env=child_env())
                      for _ in range(args.workers)]
            while True:  # until an agent stream is up; a call with none fails at once
                try:
                    relay.closed_loop(address, 1, 0)
                    break
                except grpc.RpcError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            time.sleep(1)  # the other agents
            if direct:
                latencies = relay.closed_loop(address, args.latency_tasks, WARMUP_SEQUENTIAL, "Echo")
            else:
                loop = relay.session_loop if session else relay.closed_loop
                latencies = loop(address, args.latency_tasks, WARMUP_SEQUENTIAL)
        finally:
            stop_processes([*agents, server])
    result = summarize(latencies)
    if direct:
        result["setup"] = f"bare grpc.aio server ({control_plane_loop()}) answering unary calls: Ray's two hops"
    else:
        result["setup"] = (
            f"bare grpc.aio relay ({control_plane_loop()}), {args.workers} agent streams, "
            f"{'a session stream' if session else 'unary calls'}: "
            + ("3 SQLite commits a task (WAL, synchronous=NORMAL), no queue or placement" if durable
               else "no store, queue or placement")
        )
    return result


# ----- Ray ------------------------------------------------------------------------------------


def run_ray(args: argparse.Namespace) -> dict[str, Any]:
    import ray

    t0 = time.perf_counter()
    ray.init(
        num_cpus=args.ray_cpus,
        num_gpus=args.workers * args.slots,
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.ERROR,
        object_store_memory=256 * 1024 * 1024,
    )
    try:
        task = ray.remote(num_gpus=1, num_cpus=0, max_calls=0)(noop)

        def one() -> float:
            start = time.perf_counter()
            ray.get(task.remote())
            return time.perf_counter() - start

        def burst(n: int) -> tuple[float, float]:
            start = time.perf_counter()
            refs = [task.remote() for _ in range(n)]
            accepted = time.perf_counter() - start
            ray.get(refs)
            return accepted, time.perf_counter() - start

        burst(WARMUP_BURST)  # start the worker processes before anything is timed
        startup_s = time.perf_counter() - t0
        for _ in range(WARMUP_SEQUENTIAL):
            one()
        latencies = [one() for _ in range(args.latency_tasks)]
        accept_s, done_s = burst(args.burst_tasks)
    finally:
        ray.shutdown()
    result = summarize(latencies, args.burst_tasks, accept_s, done_s)
    result.update(
        setup=(
            f"ray {ray.__version__}: 1 node, num_gpus={args.workers * args.slots}, "
            f"num_cpus={args.ray_cpus}, max_calls=0"
        ),
        startup_s=startup_s,
    )
    return result


# ----- Dask -----------------------------------------------------------------------------------


def run_dask(args: argparse.Namespace) -> dict[str, Any]:
    import distributed
    from distributed import Client, LocalCluster, wait

    t0 = time.perf_counter()
    cluster = LocalCluster(
        n_workers=args.workers,
        threads_per_worker=args.slots,
        processes=True,
        resources={"GPU": args.slots},
        dashboard_address=None,
        silence_logs=logging.ERROR,
    )
    client = Client(cluster)
    try:
        client.wait_for_workers(args.workers)

        def one() -> float:
            start = time.perf_counter()
            client.submit(noop, resources={"GPU": 1}, pure=False).result()
            return time.perf_counter() - start

        def burst(n: int) -> tuple[float, float]:
            start = time.perf_counter()
            futures = [client.submit(noop, i, resources={"GPU": 1}, pure=False) for i in range(n)]
            accepted = time.perf_counter() - start
            wait(futures)
            finished = time.perf_counter() - start
            errors = sum(f.status != "finished" for f in futures)
            if errors:
                raise RuntimeError(f"dask burst: {errors} of {n} tasks did not finish")
            return accepted, finished

        burst(WARMUP_BURST)
        startup_s = time.perf_counter() - t0
        for _ in range(WARMUP_SEQUENTIAL):
            one()
        latencies = [one() for _ in range(args.latency_tasks)]
        accept_s, done_s = burst(args.burst_tasks)
    finally:
        client.close()
        cluster.close()
    result = summarize(latencies, args.burst_tasks, accept_s, done_s)
    result.update(
        setup=(
            f"dask distributed {distributed.__version__}: LocalCluster {args.workers} processes "
            f"x {args.slots} threads, GPU={args.slots}"
        ),
        startup_s=startup_s,
    )
    return result


RUNNERS = {
    "gpucp": run_gpucp,
    "relay": run_relay,
    "relay-s": functools.partial(run_relay, session=True),
    "relay-sd": functools.partial(run_relay, session=True, durable=True),
    "relay-d": functools.partial(run_relay, direct=True),
    "ray": run_ray,
    "dask": run_dask,
}


# ----- orchestration --------------------------------------------------------------------------


def run_in_child(system: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Run one system in a fresh interpreter, so no peer's threads or processes outlive its turn."""
    result_file = workdir / f"{system}.json"
    cmd = [
        sys.executable, __file__, "--system", system, "--result-file", str(result_file),
        "--workers", str(args.workers), "--slots", str(args.slots),
        "--latency-tasks", str(args.latency_tasks), "--burst-tasks", str(args.burst_tasks),
        "--ray-cpus", str(args.ray_cpus),
    ]
    if args.prefetch_depth is not None:
        cmd += ["--prefetch-depth", str(args.prefetch_depth)]
    if args.unary:
        cmd.append("--unary")
    if args.profile and system == "gpucp":
        cmd += ["--profile", args.profile]
    started = time.perf_counter()
    with open(workdir / f"{system}.log", "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            proc.wait(args.timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    if proc.returncode != 0 or not result_file.exists():
        log_tail = (workdir / f"{system}.log").read_text(errors="replace")[-1500:]
        return {"error": f"exit {proc.returncode} after {time.perf_counter() - started:.0f} s: {log_tail}"}
    return json.loads(result_file.read_text())


def median_of(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in rounds if "error" not in r]
    if not ok:
        return rounds[-1]
    out = dict(ok[-1])
    for key, value in ok[-1].items():
        if isinstance(value, float):
            values = sorted(r[key] for r in ok)
            out[key] = values[len(values) // 2]
    out["rounds"] = len(ok)
    return out


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, default=4,
                   help="K workers (agents / Dask workers; Ray: one node) (default 4)")
    p.add_argument("--slots", type=int, default=4, help="GPU slots per worker (default 4)")
    p.add_argument("--latency-tasks", type=int, default=500,
                   help="N sequential tasks timed in the closed loop (default 500)")
    p.add_argument("--burst-tasks", type=int, default=10_000, help="M tasks in the burst (default 10000)")
    p.add_argument("--prefetch-depth", type=int,
                   help="pass gpucp serve --prefetch-depth N (tasks an agent may hold beyond its slots; "
                        "default: not passed, the server's default)")
    p.add_argument("--unary", action="store_true",
                   help="gpucp.Client(session=False): RunTask per task, SubmitTasks batches, no session stream")
    p.add_argument("--systems", default=",".join(SYSTEMS), help=f"comma-separated subset of {','.join(SYSTEMS)}")
    p.add_argument("--rounds", type=int, default=1, help="run the whole sequence this many times; report medians")
    p.add_argument("--ray-cpus", type=int, default=os.cpu_count() or 2, help="num_cpus given to ray.init")
    p.add_argument("--timeout", type=float, default=300, help="seconds one system may take before it is killed")
    p.add_argument("--profile", metavar="PATH",
                   help="py-spy record the control plane during the gpucp burst into PATH (collapsed stacks); "
                        "the top frames go into the JSON and the printout")
    p.add_argument("--system", choices=SYSTEMS, help=argparse.SUPPRESS)
    p.add_argument("--result-file", help=argparse.SUPPRESS)
    return p.parse_args()


def main() -> None:
    args = parse_args()
    if args.system:  # the child that runs one system
        result = RUNNERS[args.system](args)
        Path(args.result_file).write_text(json.dumps(result))
        return
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = set(systems) - set(SYSTEMS)
    if unknown:
        raise SystemExit(f"unknown systems {sorted(unknown)}; choose from {', '.join(SYSTEMS)}")
    info = machine()
    rounds: dict[str, list[dict[str, Any]]] = {s: [] for s in systems}
    with tempfile.TemporaryDirectory(prefix="gpucp-bench-peers-") as tmp:
        for n in range(args.rounds):
            for system in systems:
                print(f"round {n + 1}/{args.rounds}: {system} ...", file=sys.stderr, flush=True)
                rounds[system].append(run_in_child(system, args, Path(tmp)))
    results = {s: median_of(r) for s, r in rounds.items()}
    text = report(results, args, info)
    print(text)
    g = results.get("gpucp", {})
    if "profile" in g:
        print_profile(g["profile"], "control plane during the gpucp burst")
    kept_args = {k: v for k, v in vars(args).items() if k not in ("system", "result_file")}
    json_path = write_json("peers.json", {"machine": info, "args": kept_args,
                                          "results": results, "rounds": rounds, "table": text})
    png = plot(results, args)
    print(f"\nwrote {json_path.relative_to(OUT_DIR.parent.parent)} and {png.relative_to(OUT_DIR.parent.parent)}")


if __name__ == "__main__":
    main()
