"""The `gpucp` command: serve, agent, submit, status, get, cancel."""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import threading
import time
from collections.abc import Sequence

import grpc

from gpucp.auth import AGENT_TOKEN_ENV
from gpucp.client import DEFAULT_SERVER, Client, GpucpError, task_spec
from gpucp.v1 import admin_pb2, common_pb2

POLICIES = ("composite", "round_robin", "least_loaded", "performance", "affinity", "cost")
# The composite score's terms, each weighted by ServerConfig's w_<term>.
SCORE_TERMS = ("availability", "success", "speed", "affinity", "fit", "cost")
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

    serve = sub.add_parser("serve", help="run the control plane")
    serve.add_argument("--listen", default="127.0.0.1:50051", help="HOST:PORT (default %(default)s)")
    serve.add_argument("--db", default="gpucp.db", help="SQLite file (default %(default)s)")
    serve.add_argument("--heartbeat-timeout", type=float, default=10.0, metavar="SECONDS",
                       help="a worker silent this long is lost (default %(default)s)")
    serve.add_argument("--max-queue", type=int, default=100_000, metavar="N",
                       help="pending tasks before submissions are refused (default %(default)s)")
    serve.add_argument("--max-payload", type=int, default=4 * 1024 * 1024, metavar="BYTES")
    serve.add_argument("--default-timeout", type=float, default=3600.0, metavar="SECONDS",
                       help="execution limit of tasks that set none (default %(default)s)")
    serve.add_argument("--default-retries", type=int, default=3, metavar="N")
    serve.add_argument("--retry-base", type=float, default=0.5, metavar="SECONDS",
                       help="first retry backoff, doubled per failure with jitter (default %(default)s)")
    serve.add_argument("--retry-cap", type=float, default=30.0, metavar="SECONDS",
                       help="longest retry backoff (default %(default)s)")
    serve.add_argument("--reconnect-grace", type=float, metavar="SECONDS",
                       help="how long a disconnected worker keeps its tasks (default: one heartbeat interval)")
    serve.add_argument("--queue-timeout", type=float, default=3600.0, metavar="SECONDS",
                       help="a task no connected worker can run fails after this long (default %(default)s)")
    serve.add_argument("--quarantine-after", type=int, default=3, metavar="N",
                       help="quarantine a worker after N failures other workers fixed (default %(default)s)")
    serve.add_argument("--quarantine-cooling", type=float, default=60.0, metavar="SECONDS",
                       help="first quarantine length, doubled on relapse (default %(default)s)")
    serve.add_argument("--policy", default="composite", choices=POLICIES,
                       help="how a task's worker is chosen among those that can run it (default %(default)s)")
    serve.add_argument("--kind-policy", action="append", default=[], metavar="KIND=POLICY",
                       help="another policy for one task kind (repeatable)")
    serve.add_argument("--tenant-weight", action="append", default=[], metavar="TENANT=WEIGHT",
                       help="a tenant's fair share of the fleet, default 1 (repeatable)")
    serve.add_argument("--weight", action="append", default=[], metavar="TERM=WEIGHT",
                       help="weight of one term of the composite score (repeatable): availability (default 0.5), "
                       "success (0.3), speed (0.2), affinity (0.3), fit (0.2), cost (0.1)")
    serve.add_argument("--priority-weights", default="1,2,3,4", metavar="LOW,NORMAL,HIGH,URGENT",
                       help="shares of the priority classes within a tenant (default %(default)s)")
    serve.add_argument("--aging", type=float, default=60.0, metavar="SECONDS",
                       help="a pending task moves up one priority class per this long waiting (default 60; 0: never)")
    serve.add_argument("--warmup", type=int, default=0, metavar="N",
                       help="a new or recovered worker ramps from 1 slot to all of them over N successes "
                       "(default 0: all at once)")
    serve.add_argument("--prefetch-depth", type=int, default=0, metavar="N",
                       help="tasks a worker may queue beyond its slots; idle workers steal those "
                            "not yet started (default %(default)s: off)")
    serve.add_argument("--locality-wait", type=float, default=3.0, metavar="SECONDS",
                       help="longest a task waits for a busy worker with its model warm instead of "
                            "loading it on a free one; never longer than the learned load time "
                            "(default %(default)s; 0: never wait)")
    serve.add_argument("--keep-finished", type=float, default=7 * 24 * 3600, metavar="SECONDS",
                       help="delete finished tasks and their results this long after they end "
                            "(default %(default)s: a week; 0: keep them forever)")
    serve.add_argument("--sync", choices=("normal", "full"), default="normal",
                       help="full: also survive power loss, one fsync per group commit")
    serve.add_argument("--autoscale", metavar="CONFIG", default="",
                       help="scale RunPod pools from the queue as this TOML/JSON file says "
                            "(needs RUNPOD_API_KEY in the environment)")
    serve.add_argument("--ready-file", help="write the bound port here once serving")
    serve.add_argument("--log-level", default="INFO")
    serve.set_defaults(run=run_serve)

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


def run_serve(args: argparse.Namespace) -> int:
    from controlplane import ServerConfig, run

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.keep_finished >= 0:
        raise ValueError(f"--keep-finished {args.keep_finished:g}: give seconds >= 0 (0 keeps finished tasks forever)")
    if not (math.isfinite(args.aging) and args.aging >= 0):
        raise ValueError(f"--aging {args.aging:g}: give seconds >= 0 (0: tasks never move up a class)")
    if not 0 <= args.warmup < 2**32:
        raise ValueError(f"--warmup {args.warmup}: give a number of successes from 0 (all slots at once) to {2**32 - 1}")
    config = ServerConfig(
        listen=args.listen,
        db=args.db,
        db_synchronous=args.sync.upper(),
        heartbeat_timeout_s=args.heartbeat_timeout,
        max_queue=args.max_queue,
        max_payload_bytes=args.max_payload,
        default_timeout_ms=int(args.default_timeout * 1000),
        default_max_retries=args.default_retries,
        retry_base_s=args.retry_base,
        retry_cap_s=args.retry_cap,
        reconnect_grace_s=args.reconnect_grace,
        queue_timeout_s=args.queue_timeout,
        policy=args.policy,
        prefetch_depth=args.prefetch_depth,
        locality_wait_s=args.locality_wait,
        kind_policies=tuple(kind_policy(p) for p in args.kind_policy),
        tenant_weights=tuple((k, float(v)) for k, v in (split_pair(w, "--tenant-weight") for w in args.tenant_weight)),
        priority_weights=priority_weights(args.priority_weights),
        aging_s=args.aging,
        warmup_successes=args.warmup,
        **{f"w_{term}": weight for term, weight in score_weights(args.weight).items()},
        quarantine_after=args.quarantine_after,
        quarantine_cooling_s=args.quarantine_cooling,
        autoscale=args.autoscale,
        keep_finished_s=args.keep_finished,
        agent_token=os.environ.get(AGENT_TOKEN_ENV, ""),
    )
    run(config, ready_file=args.ready_file)
    return 0


def split_pair(text: str, flag: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key or not value:
        raise ValueError(f"{flag} takes NAME=VALUE, got {text!r}")
    return key, value


def score_weights(texts: Sequence[str]) -> dict[str, float]:
    """--weight TERM=WEIGHT flags as {term: weight}, each term one of SCORE_TERMS."""
    weights = {}
    for text in texts:
        term, value = split_pair(text, "--weight")
        if term not in SCORE_TERMS:
            raise ValueError(f"--weight {text!r}: the term must be one of {', '.join(SCORE_TERMS)}")
        weights[term] = number(value, f"--weight {text!r}", low=0.0, what="a weight >= 0")
    return weights


def priority_weights(text: str) -> tuple[float, float, float, float]:
    """--priority-weights LOW,NORMAL,HIGH,URGENT: four shares > 0."""
    flag = f"--priority-weights {text!r}"
    parts = text.split(",")
    if len(parts) != 4:
        raise ValueError(f"{flag}: give four shares, LOW,NORMAL,HIGH,URGENT (e.g. 1,2,3,4)")
    low, normal, high, urgent = (number(p, flag, low=0.0, what="shares > 0", strict=True) for p in parts)
    return low, normal, high, urgent


def number(text: str, flag: str, *, low: float, what: str, strict: bool = False) -> float:
    """A finite number above `low` (or equal to it unless strict), else a ValueError naming the flag."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < low or (strict and value == low):
        raise ValueError(f"{flag}: give {what}")
    return value


def kind_policy(text: str) -> tuple[str, str]:
    kind, policy = split_pair(text, "--kind-policy")
    if policy not in POLICIES:
        raise ValueError(f"--kind-policy {text!r}: the policy must be one of {', '.join(POLICIES)}")
    return kind, policy


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
