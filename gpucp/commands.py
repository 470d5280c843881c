"""What each `gpucp` command does once its arguments are parsed (gpucp.cli parses them)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import grpc

from gpucp.auth import read_token
from gpucp.client import Client, GpucpError, task_spec
from gpucp.states import TERMINAL_STATES
from gpucp.text import (
    clock,
    clock_ms,
    duration,
    expected_runtime,
    message_dict,
    money,
    print_json,
    print_table,
    priority_name,
    requirements,
    state_name,
    when,
)
from gpucp.tls import channel_credentials
from gpucp.v1 import admin_pb2, common_pb2, scheduler_pb2

UINT32_MAX = 2**32 - 1
UINT64_MAX = 2**64 - 1
# Exit codes a shell gives a process killed by SIGINT and SIGPIPE.
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141
# Up to this many ids, an interrupted submit prints the whole cancel command.
CANCEL_COMMAND_IDS = 20


def connect(args: argparse.Namespace) -> Client:
    """A Client for --server with the token and TLS files the flags (or the environment) give."""
    tls = channel_credentials(args.tls_ca, args.tls_cert, args.tls_key)
    return Client(args.server, token=read_token(args.token_file), tls=tls)


# State names for --state, in the contract's order.
STATES = tuple(state_name(s) for s in common_pb2.TaskState.values() if s != common_pb2.TASK_STATE_UNSPECIFIED)


def count_flag(value: int, flag: str, what: str, low: int = 0, high: int = UINT32_MAX) -> int:
    """`value` if low <= value <= high, else a ValueError naming the flag, as typed, and its unit."""
    if not low <= value <= high:
        raise ValueError(f"{flag} {value}: give {what} from {low} to {high}")
    return value


def seconds_flag(value: float, flag: str, what: str) -> int:
    """`value` seconds as whole milliseconds, or a ValueError naming the flag in seconds, as typed."""
    if not 0 <= value <= UINT64_MAX / 1000:  # also refuses nan and inf
        raise ValueError(f"{flag} {value:g}: give seconds >= 0 ({what})")
    return int(value * 1000)


def payload_bytes(text: str) -> bytes:
    """The payload argument: text, @FILE for the file's bytes, or - for standard input."""
    if text == "-":
        return sys.stdin.buffer.read()
    if text.startswith("@"):
        try:
            return Path(text[1:]).read_bytes()
        except OSError as exc:
            raise ValueError(f"payload {text}: cannot read {text[1:]!r}: {exc.strerror}") from None
    return text.encode()


def run_submit(args: argparse.Namespace) -> int:
    count = count_flag(args.count, "--count", "a number of copies", low=1, high=1_000_000)
    spec = task_spec(
        args.kind,
        payload_bytes(args.payload),
        priority=args.priority,
        tenant=args.tenant,
        gpus=count_flag(args.gpus, "--gpus", "a number of GPUs"),
        min_gpu_memory_mb=count_flag(args.min_gpu_memory_mb, "--min-gpu-memory-mb", "megabytes", high=UINT64_MAX),
        gpu_models=args.gpu_model,
        backend=args.backend,
        labels=args.label,
        gpu_milli=count_flag(args.gpu_milli, "--gpu-milli", "thousandths of a GPU (0: whole GPUs)", high=999),
        gpu_memory_mb=count_flag(args.gpu_memory_mb, "--gpu-memory-mb", "megabytes", high=UINT64_MAX),
        timeout_ms=seconds_flag(args.timeout, "--timeout", "0: the control plane's default"),
        expected_runtime_ms=seconds_flag(args.expected_runtime, "--expected-runtime", "0: no estimate"),
        runtime_class=args.runtime_class,
        max_retries=None if args.max_retries is None else count_flag(args.max_retries, "--max-retries", "retries"),
        idempotency_key=args.idempotency_key,
    )
    submitted: list[str] = []
    with connect(args) as client:
        try:
            if not args.wait:
                submit_in_batches(client, [spec] * count, submitted)
                print("\n".join(submitted))
                return 0
            return submit_and_follow(client, [spec] * count, submitted)
        except KeyboardInterrupt:
            left_behind(submitted, client.server, "interrupted")
            return EXIT_INTERRUPTED
        except GpucpError:
            left_behind(submitted, client.server, "stopped waiting")
            raise


def left_behind(ids: Sequence[str], server: str, why: str) -> None:
    """Tell the user which submitted tasks carry on without us, and how to cancel them."""
    if not ids:
        return
    print("\n".join(ids), flush=True)
    noun = "task keeps" if len(ids) == 1 else "tasks keep"
    print(f"gpucp: {why}; {len(ids)} submitted {noun} running (ids above).", file=sys.stderr)
    if len(ids) <= CANCEL_COMMAND_IDS:
        print(f"cancel with: gpucp cancel --server {server} {' '.join(ids)}", file=sys.stderr)
    else:
        print(f"cancel by piping the ids to: xargs gpucp cancel --server {server}", file=sys.stderr)


def submit_in_batches(
    client: Client, specs: list[common_pb2.TaskSpec], submitted: list[str], batch: int = 1000
) -> None:
    """Submit `specs` a batch at a time, appending ids to `submitted` as each batch is stored."""
    for i in range(0, len(specs), batch):
        submitted.extend(client.submit_many(specs[i : i + batch]))


def submit_and_follow(client: Client, specs: list[common_pb2.TaskSpec], submitted: list[str]) -> int:
    """Submit, then show progress until every task is finished; exit 1 if any did not succeed."""
    submit_in_batches(client, specs, submitted)
    finished: dict[str, common_pb2.Task] = {}
    shown = 0.0
    for task in client.as_completed(submitted):
        finished[task.id] = task
        if time.monotonic() - shown >= 0.2:  # a redraw per task would cost more than the wait
            progress(len(finished), len(submitted), (t.state for t in finished.values()))
            shown = time.monotonic()
    progress(len(finished), len(submitted), (t.state for t in finished.values()), final=True)
    failed = [t for t in finished.values() if t.state != common_pb2.TASK_STATE_SUCCEEDED]
    for task in failed[:10]:
        print(f"{task.id} {state_name(task.state)}: {task.error}", file=sys.stderr)
    if len(submitted) == 1:
        task = finished[submitted[0]]
        print(f"{task.id} {state_name(task.state)}", flush=True)
        sys.stdout.buffer.write(task.result)
        if not task.result.endswith(b"\n"):
            sys.stdout.buffer.write(b"\n")  # the shell prompt starts on its own line
    return 1 if failed else 0


def progress(done: int, total: int, states: Iterable[int], final: bool = False) -> None:
    counts: dict[str, int] = {}
    for s in states:
        counts[state_name(s)] = counts.get(state_name(s), 0) + 1
    width = 30
    filled = int(width * done / total) if total else width
    detail = " ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    line = f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {detail}"
    if sys.stderr.isatty():
        print("\r" + line, end="\n" if final else "", file=sys.stderr, flush=True)
    elif final:
        print(line, file=sys.stderr)


def run_list(args: argparse.Namespace) -> int:
    state = 0
    if args.state is not None:
        if args.state.lower() not in STATES:
            raise ValueError(f"--state {args.state}: give one of {', '.join(STATES)}")
        state = common_pb2.TaskState.Value("TASK_STATE_" + args.state.upper())
    limit = count_flag(args.limit, "--limit", "a number of tasks per page", low=1, high=10_000)
    rows: list[tuple[str, ...]] = [("ID", "KIND", "STATE", "PRIORITY", "TENANT", "ATTEMPT", "WORKER", "CREATED")]
    if args.full:
        rows[0] += ("RESULT",)
    filters = {"state": state, "tenant": args.tenant, "kind": args.kind, "full": args.full, "limit": limit}
    with connect(args) as client:
        if args.all:
            tasks, token = list(client.list(**filters)), ""
        else:
            tasks, token = client.list_page(**filters, page_token=args.page)
    if args.output == "json":
        print_json({"tasks": [message_dict(t) for t in tasks], "next_page_token": token})
        return 0
    for t in tasks:
        row: tuple[str, ...] = (
            t.id, t.spec.kind, state_name(t.state), priority_name(t.spec.priority), t.spec.tenant or "-",
            str(t.attempt), t.worker_id or "-", clock(t.created_at_ms),
        )
        if args.full:
            row += (t.result[:40].decode(errors="replace").splitlines()[0] if t.result.strip() else "-",)
        rows.append(row)
    print_table(rows)
    if token:
        print(f"more: add --page {token}", file=sys.stderr)
    return 0


def run_get(args: argparse.Namespace) -> int:
    with connect(args) as client:
        task = client.get(args.task_id)
    if args.output == "json":
        print_json(message_dict(task))
        return 0
    now_ms = int(time.time() * 1000)
    spec = task.spec
    lines = [
        ("id", task.id),
        ("kind", spec.kind),
        ("state", state_name(task.state)),
        ("tenant", spec.tenant or "-"),
        ("priority", priority_name(spec.priority)),
        ("requires", requirements(spec.requirements)),
        ("timeout", f"{duration(spec.timeout_ms)} per attempt" if spec.timeout_ms else "the control plane's default"),
        ("runtime", expected_runtime(spec)),
        ("created", when(task.created_at_ms, now_ms)),
    ]
    if task.started_at_ms:
        lines.append(("started", when(task.started_at_ms, now_ms)))
    if task.finished_at_ms:
        lines.append(("finished", when(task.finished_at_ms, now_ms)))
    # Waited: from submission to the current attempt's start (or until now, while pending).
    # Ran: the current attempt, until it finished (or until now, while it runs).
    waited_until = task.started_at_ms or (task.finished_at_ms if task.state in TERMINAL_STATES else now_ms)
    lines.append(("waited", duration(waited_until - task.created_at_ms)))
    if task.started_at_ms:
        lines.append(("ran", duration((task.finished_at_ms or now_ms) - task.started_at_ms)))
    lines.append(("attempt", str(task.attempt)))
    worker = task.worker_id or "-"
    if task.gpu_indices:
        share = f", {spec.requirements.gpu_milli}/1000 of it" if spec.requirements.gpu_milli else ""
        worker += f" (GPU {', '.join(str(i) for i in task.gpu_indices)}{share})"
    lines.append(("worker", worker))
    if task.state == common_pb2.TASK_STATE_RUNNING or task.progress:
        lines.append(("progress", f"{task.progress:.0%}"))
    if task.pending_reason:
        lines.append(("pending", task.pending_reason))
    if task.placement:
        lines.append(("placement", task.placement))
    lines.extend(("attempts" if i == 0 else "", e) for i, e in enumerate(task.attempt_errors))
    if task.error:
        lines.append(("error", task.error))
    if task.result:
        lines.append(("result", task.result.decode(errors="replace")[:2000]))
    for label, value in lines:
        print(f"{label:<10}{value}")
    return 0


def run_events(args: argparse.Namespace) -> int:
    with connect(args) as client:
        events, omitted = client.events(args.task_id)
    if args.output == "json":
        print_json({"events": [message_dict(e) for e in events], "omitted": omitted})
        return 0
    rows = [("#", "TIME", "STATE", "ATTEMPT", "WORKER", "WHAT")]
    last_seq = 0
    for e in events:
        if e.seq > last_seq + 1 and last_seq:
            left_out = f"({e.seq - last_seq - 1} events left out: a task keeps its first and its latest)"
            rows.append(("", "", "", "", "", left_out))
        last_seq = e.seq
        rows.append((str(e.seq), clock_ms(e.at_ms), state_name(e.state), str(e.attempt), e.worker_id or "-", what(e)))
    print_table(rows)
    if omitted:
        print(f"{omitted} events were left out of this history", file=sys.stderr)
    return 0


def what(event: scheduler_pb2.TaskEvent) -> str:
    """An event's reason, and its error when the reason does not already say it."""
    return f"{event.reason}: {event.error}" if event.error and event.error not in event.reason else event.reason


def run_watch(args: argparse.Namespace) -> int:
    """Print task events as they happen (one line, or one JSON object, each); resumes across restarts."""
    as_json = args.output == "json"
    unfinished = set(args.task_ids)
    with connect(args) as client:
        watch = client.watch(args.task_ids, args.tenant)
        # Subscribed first, then read: a task that ends in between shows in one or the other.
        for task in client.get_many(args.task_ids):
            if task.state in TERMINAL_STATES:
                unfinished.discard(task.id)
            line = {"task_id": task.id, "state": state_name(task.state), "attempt": task.attempt,
                    "worker_id": task.worker_id, "now": True}
            text = f"{task.id} {state_name(task.state)} attempt {task.attempt} {task.worker_id or '-'} (now)"
            print(json.dumps(line) if as_json else text, flush=True)
        if args.task_ids and not unfinished:
            return 0
        for event in watch:
            if as_json:
                print(json.dumps(message_dict(event)), flush=True)
            else:
                print(f"{clock_ms(event.at_ms)} {event.task_id} {state_name(event.state)} attempt {event.attempt} "
                      f"{event.worker_id or '-'}: {what(event) or state_name(event.state)}", flush=True)
            if event.state in TERMINAL_STATES:
                unfinished.discard(event.task_id)
                if args.task_ids and not unfinished:
                    watch.close()
                    return 0
    return 0









def run_cancel(args: argparse.Namespace) -> int:
    """Cancel each task; one that cannot be cancelled is reported and the others still are."""
    code = 0
    with connect(args) as client:
        for task_id in args.task_ids:
            try:
                print(f"{task_id} {state_name(client.cancel(task_id))}")
            except GpucpError as exc:
                print(f"gpucp: {task_id}: {exc}", file=sys.stderr)
                code = 1
    return code


def run_top(args: argparse.Namespace) -> int:
    if not 0.1 <= args.interval <= 3600:  # also refuses nan
        raise ValueError(f"--interval {args.interval:g}: give seconds from 0.1 to 3600")
    from gpucp import top  # rich is imported only by the command that draws with it

    with connect(args) as client:
        return top.run(client, args.interval)


def run_drain(args: argparse.Namespace) -> int:
    return admin_call(args, Client.drain, "drains: it takes no new tasks, and those it runs finish "
                      "(gpucp undrain WORKER to end it)")


def run_undrain(args: argparse.Namespace) -> int:
    return admin_call(args, Client.undrain, "takes new tasks again")


def admin_call(args: argparse.Namespace, call: Callable[[Client, str], None], outcome: str) -> int:
    with connect(args) as client:
        call(client, args.worker_id)
    print(f"worker {args.worker_id} {outcome}")
    return 0


def run_status(args: argparse.Namespace) -> int:
    with connect(args) as client:
        stats = client.stats()
        workers = client.workers()
        report = cost_report(client)
    if args.output == "json":
        print_json({"stats": message_dict(stats), "workers": [message_dict(w) for w in workers],
                    "costs": message_dict(report) if report is not None else None})
        return 0
    print(f"workers {stats.workers}   slots {stats.slots_free} free of {stats.slots_total}   "
          f"placements/s {stats.placements_per_second:.1f}   stale updates {stats.stale_updates}")
    # The maps come in no fixed order: show states in their lifecycle order and every priority
    # class from urgent down, so two calls print the same lines.
    states = ", ".join(f"{state_name(s)} {stats.tasks_by_state[common_pb2.TaskState.Name(s)]}"
                       for s in common_pb2.TaskState.values() if common_pb2.TaskState.Name(s) in stats.tasks_by_state)
    priorities = sorted((p for p in common_pb2.Priority.values() if p != common_pb2.PRIORITY_UNSPECIFIED), reverse=True)
    queue = ", ".join(f"{priority_name(p)} {stats.queue_depth_by_priority.get(common_pb2.Priority.Name(p), 0)}"
                      for p in priorities)
    print(f"tasks: {states or 'none'}")
    print(f"queue: {queue}")
    if stats.queue_depth_by_tenant:  # the deepest first; ties by name, so two calls print the same line
        tenants = sorted(stats.queue_depth_by_tenant.items(), key=lambda item: (-item[1], item[0]))
        print("queue by tenant: " + ", ".join(f"{tenant} {depth}" for tenant, depth in tenants))
    rows = [("WORKER", "PROVIDER", "SLOTS", "GPUS", "HEALTH", "OK", "FAILED", "SUCCESS", "SPEED", "$/H")]
    for w in sorted(workers, key=lambda w: w.worker_id):
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


def cost_report(client: Client) -> admin_pb2.CostReport | None:
    """The cost report, or None when the control plane runs without an autoscaler."""
    try:
        return client.costs()
    except GpucpError as exc:
        if exc.code == grpc.StatusCode.FAILED_PRECONDITION:
            return None
        raise


def run_costs(args: argparse.Namespace) -> int:
    with connect(args) as client:
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

