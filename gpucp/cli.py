"""The `gpucp` command: serve, agent, submit, status, get, cancel."""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Sequence

import grpc

from gpucp.client import DEFAULT_SERVER, Client, GpucpError, task_spec
from gpucp.v1 import admin_pb2, common_pb2

TERMINAL = {
    common_pb2.TASK_STATE_SUCCEEDED,
    common_pb2.TASK_STATE_FAILED,
    common_pb2.TASK_STATE_CANCELLED,
    common_pb2.TASK_STATE_TIMED_OUT,
}


def state_name(state: int) -> str:
    return common_pb2.TaskState.Name(state).removeprefix("TASK_STATE_").lower()  # type: ignore[arg-type]


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "agent":
        from agents.cli import main as agent_main  # agents are optional for a pure client

        return agent_main(argv[1:])
    if argv and argv[0] == "serve":
        from controlplane.cli import main as serve_main  # the control plane is optional for a pure client

        return serve_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args.run(args))
    except GpucpError as exc:
        print(f"gpucp: {exc}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:
        print(f"gpucp: {exc}", file=sys.stderr)
        return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gpucp", description="A control plane for GPU work.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    sub.add_parser("serve", help="run the control plane (see gpucp serve --help)", add_help=False)

    sub.add_parser("agent", help="run an agent (see gpucp agent --help)", add_help=False)

    submit = sub.add_parser("submit", help="submit tasks")
    submit.add_argument("kind", help="handler to run: noop, sleep, exec or a registered one")
    submit.add_argument("payload", nargs="?", default="", help="payload text (e.g. JSON)")
    submit.add_argument("--server", default=DEFAULT_SERVER)
    submit.add_argument("--priority", default="normal", help="low, normal, high or urgent")
    submit.add_argument("--tenant", default="")
    submit.add_argument("--gpus", type=int, default=0)
    submit.add_argument("--min-gpu-memory-mb", type=int, default=0)
    submit.add_argument("--gpu-model", action="append", default=[], help="any of (repeatable)")
    submit.add_argument("--backend", default="")
    submit.add_argument("--label", action="append", default=[], help="worker label required (repeatable)")
    submit.add_argument("--timeout", type=float, default=0, metavar="SECONDS")
    submit.add_argument("--max-retries", type=int)
    submit.add_argument("--idempotency-key", default="")
    submit.add_argument("--count", type=int, default=1, help="submit this many copies")
    submit.add_argument("--wait", action="store_true", help="wait for the results, with progress")
    submit.set_defaults(run=run_submit)

    status = sub.add_parser("status", help="cluster statistics and workers")
    status.add_argument("--server", default=DEFAULT_SERVER)
    status.set_defaults(run=run_status)

    costs = sub.add_parser("costs", help="what the autoscaled pods cost, per pod, pool and tenant")
    costs.add_argument("--server", default=DEFAULT_SERVER)
    costs.add_argument("--events", type=int, default=10, metavar="N",
                       help="also show the last N scaling decisions (default %(default)s, 0: none)")
    costs.set_defaults(run=run_costs)

    get = sub.add_parser("get", help="show one task")
    get.add_argument("task_id")
    get.add_argument("--server", default=DEFAULT_SERVER)
    get.set_defaults(run=run_get)

    cancel = sub.add_parser("cancel", help="cancel a task")
    cancel.add_argument("task_id")
    cancel.add_argument("--server", default=DEFAULT_SERVER)
    cancel.set_defaults(run=run_cancel)
    return parser


def run_submit(args: argparse.Namespace) -> int:
    if args.count < 1:
        raise ValueError("--count must be at least 1")
    spec = task_spec(
        args.kind,
        args.payload,
        priority=args.priority,
        tenant=args.tenant,
        gpus=args.gpus,
        min_gpu_memory_mb=args.min_gpu_memory_mb,
        gpu_models=args.gpu_model,
        backend=args.backend,
        labels=args.label,
        timeout_ms=int(args.timeout * 1000),
        max_retries=args.max_retries,
        idempotency_key=args.idempotency_key,
    )
    with Client(args.server) as client:
        if not args.wait:
            ids = submit_in_batches(client, [spec] * args.count)
            print("\n".join(ids))
            return 0
        return submit_and_follow(client, [spec] * args.count)


def submit_in_batches(client: Client, specs: list[common_pb2.TaskSpec], batch: int = 1000) -> list[str]:
    ids: list[str] = []
    for i in range(0, len(specs), batch):
        ids.extend(client.submit_many(specs[i : i + batch]))
    return ids


def submit_and_follow(client: Client, specs: list[common_pb2.TaskSpec]) -> int:
    """Submit, then show progress until every task is finished; exit 1 if any did not succeed."""
    finished: dict[str, int] = {}
    lock = threading.Lock()
    events = client.watch()  # recording before the first submission: no outcome is missed

    def follow() -> None:
        for event in events:
            if event.state in TERMINAL:
                with lock:
                    finished[event.task_id] = event.state

    threading.Thread(target=follow, daemon=True).start()
    ids = submit_in_batches(client, specs)
    mine = set(ids)
    while True:
        with lock:
            done = {t: s for t, s in finished.items() if t in mine}
        if len(done) == len(mine):
            break
        progress(len(done), len(mine), done.values())
        time.sleep(0.2)
    progress(len(done), len(mine), done.values(), final=True)
    failed = [t for t, s in done.items() if s != common_pb2.TASK_STATE_SUCCEEDED]
    for task_id in failed[:10]:
        task = client.get(task_id)
        print(f"{task_id} {state_name(task.state)}: {task.error}", file=sys.stderr)
    if len(ids) == 1:
        task = client.get(ids[0])
        print(f"{ids[0]} {state_name(task.state)}")
        sys.stdout.buffer.write(task.result)
    return 1 if failed else 0


def progress(done: int, total: int, states: object, final: bool = False) -> None:
    counts: dict[str, int] = {}
    for s in states:  # type: ignore[attr-defined]
        counts[state_name(s)] = counts.get(state_name(s), 0) + 1
    width = 30
    filled = int(width * done / total) if total else width
    detail = " ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    line = f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {detail}"
    if sys.stderr.isatty():
        print("\r" + line, end="\n" if final else "", file=sys.stderr, flush=True)
    elif final:
        print(line, file=sys.stderr)


def run_status(args: argparse.Namespace) -> int:
    with Client(args.server) as client:
        stats = client.stats()
        workers = client.workers()
        report = cost_report(client)
    print(f"workers {stats.workers}   slots {stats.slots_free} free of {stats.slots_total}   "
          f"placements/s {stats.placements_per_second:.1f}   stale updates {stats.stale_updates}")
    states = ", ".join(f"{k.removeprefix('TASK_STATE_').lower()} {v}" for k, v in sorted(stats.tasks_by_state.items()))
    queue = ", ".join(f"{k.removeprefix('PRIORITY_').lower()} {v}" for k, v in stats.queue_depth_by_priority.items())
    print(f"tasks: {states or 'none'}")
    print(f"queue: {queue}")
    rows = [("WORKER", "PROVIDER", "SLOTS", "GPUS", "HEALTH", "OK", "FAILED", "SUCCESS", "SPEED", "$/H")]
    for w in workers:
        gpus = ",".join(sorted({g.name for g in w.gpus})) or "-"
        rows.append((
            w.worker_id, w.provider, f"{w.slots - w.slots_free}/{w.slots}", f"{len(w.gpus)}x {gpus}",
            w.health, str(w.tasks_succeeded), str(w.tasks_failed), f"{w.success_rate:.2f}",
            f"{w.speed:.2f}", f"{w.cost_per_hour:.2f}",
        ))
    print_table(rows)
    if report is not None:
        print(f"cost: {money(report.total_cost)} so far, {money(report.total_cost_per_hour)}/h now, "
              f"{sum(p.pods for p in report.pools)} pods in {len(report.pools)} pools (gpucp costs for more)")
    return 0


def money(dollars: float) -> str:
    return f"${dollars:.2f}" if dollars >= 1 or dollars == 0 else f"${dollars:.4f}"


def print_table(rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


def cost_report(client: Client) -> admin_pb2.CostReport | None:
    """The cost report, or None when the control plane runs without an autoscaler."""
    try:
        return client.costs()
    except GpucpError as exc:
        if exc.code == grpc.StatusCode.FAILED_PRECONDITION:
            return None
        raise


def run_costs(args: argparse.Namespace) -> int:
    with Client(args.server) as client:
        report = cost_report(client)
        if report is None:
            print("gpucp: the control plane runs without an autoscaler (gpucp serve --autoscale CONFIG)",
                  file=sys.stderr)
            return 1
        events = client.scaling_events(limit=args.events) if args.events > 0 else []
    print(f"total ${report.total_cost:.4f}   now ${report.total_cost_per_hour:.2f}/h   "
          f"attributed to tenants ${report.attributed_cost:.4f}   "
          f"idle/cold start ${report.total_cost - report.attributed_cost:.4f}")
    rows: list[tuple[str, ...]] = [("POOL", "GPU", "PODS", "STARTING", "MIN-MAX", "DEMAND", "$/H", "COST")]
    for p in report.pools:
        rows.append((p.pool, p.gpu_type_id, str(p.pods), str(p.pods_starting), f"{p.min_pods}-{p.max_pods}",
                     str(p.pending_demand), f"{p.cost_per_hour:.2f}", f"{p.cost:.4f}"))
    print_table(rows)
    if report.pods:
        print()
        rows = [("POD", "POOL", "STATE", "WORKER", "GPUS", "$/H", "UPTIME", "COST")]
        for pod in report.pods:
            rows.append((pod.pod_id, pod.pool, pod.state, pod.worker_id or "-",
                         f"{pod.gpu_count}x {pod.gpu_type_id}", f"{pod.cost_per_hour:.2f}",
                         f"{pod.uptime_s:.0f}s", f"{pod.cost:.4f}"))
        print_table(rows)
    if report.tenants:
        print()
        rows = [("TENANT", "ATTEMPTS", "GPU-SECONDS", "COST")]
        for t in report.tenants:
            rows.append((t.tenant, str(t.attempts), f"{t.gpu_seconds:.1f}", f"{t.cost:.4f}"))
        print_table(rows)
    if events:
        print()
        for e in events:
            at = time.strftime("%H:%M:%S", time.localtime(e.at_ms / 1000))
            print(f"{at} {e.action:<16} {e.message}")
    return 0


def run_get(args: argparse.Namespace) -> int:
    with Client(args.server) as client:
        task = client.get(args.task_id)
    print(f"id        {task.id}\nkind      {task.spec.kind}\nstate     {state_name(task.state)}")
    print(f"attempt   {task.attempt}\nworker    {task.worker_id or '-'}")
    if task.pending_reason:
        print(f"pending   {task.pending_reason}")
    if task.placement:
        print(f"placement {task.placement}")
    if task.error:
        print(f"error     {task.error}")
    if task.result:
        print(f"result    {task.result.decode(errors='replace')[:2000]}")
    return 0


def run_cancel(args: argparse.Namespace) -> int:
    with Client(args.server) as client:
        print(state_name(client.cancel(args.task_id)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
