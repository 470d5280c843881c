"""Placement quality of the real Rust core on a production GPU trace (Alibaba openb).

shared/traces/openb: 1,213 nodes with 6,212 GPUs of seven models, 8,152 tasks of 0-8 GPUs. Every
placement is the core's (controlplane._core.Scheduler, driven as benches/simulate.py drives it);
time is simulated. Two experiments per trace variant (default, gpuspec33 with GPU-model
constraints on a third of the tasks, multigpu50 with more multi-GPU tasks) and per policy:

- Time replay on a seeded sample of the nodes (--fractions) with arrivals compressed until the
  offered load is --load (the GPU-seconds the tasks ask for over the sample's GPU-seconds during the
  arrivals; the full trace keeps only about 17 GPUs busy on average, so queues form only on a
  subset and with compressed arrivals): tasks arrive at their creation time, run for deletion -
  scheduled time, and wait in the core's queue until it places them. Mean and p99 wait overall
  and by GPU count, and GPU utilisation while some task waits. multigpu50 has no times: its task
  i takes default task i's arrival and runtime. The --hinted policies run again ("+hints") with
  each task's submitter naming its runtime's order of magnitude as its runtime class ("1e3s")
  and expecting the decade's middle: the core learns runtimes per class instead of one mean for
  the trace's single kind, which times reservations and backfill.
- Saturation on the whole cluster (as in the FGD paper): tasks arrive in trace order (then again,
  shuffled, until the end), none leave; the GPUs requested when the core first cannot place the
  arriving task, as a share of the cluster's GPUs; beside it the bound no policy can pass (when
  the tasks that accept only some GPU models ask for more GPUs than those models have).
- Saturation with shares (as FGD measures fragmentation): the same arrivals, the 1-GPU tasks that
  ask for part of a GPU placed as shares of one (gpu_milli), a task no node can take now refused
  and the next one tried, until the arrivals have asked for all of the cluster's GPUs; the GPUs
  left unallocated then (the cluster's GPUs less the GPUs and shares placed), against best fit's,
  and beside it what the same placed shares leave packed offline, all known at once (see
  offline_packing), and the floor any packing of them leaves (see packing_floor).

Beside the policies, the time replay prints two references no placement policy can be given: the
sample's GPUs as one pool, with the waiting tasks served in arrival order with backfill
("(pool, fifo)": perfect packing under the core's FIFO order), smallest first ("(pool, small
1st)") or shortest runtime first ("(pool, short 1st)", clairvoyant). Where a policy is near the
first, what is left of its wait is decided by the order of service, not by placement. The pool
knows no GPU models, so on gpuspec33 it is no reference.

One node sample can flatter or wrong a policy (which nodes of a scarce GPU model it holds, how many
8-GPU nodes): --seeds N replays samples 1..N and sums, per variant and fraction, each policy's
mean waits over the samples against round-robin's, beside the worst sample's ratio.

Tasks without GPUs are left out (they use no GPU, so no GPU placement decides them), as are tasks
no node of the sample could ever run (counted in the table's header). In the time replay and the
first saturation a share of a GPU is placed as a whole GPU. Ratios are against round_robin.

    python benches/replay.py                          # all variants, 5%, 10%, 15% and 20% of the nodes
    python benches/replay.py --variants gpuspec33 --fractions 0.1 --policies round_robin,fragmentation
    python benches/replay.py --tasks 3000 --no-saturation   # a quicker look
    python benches/replay.py --seeds 5 --no-saturation      # node samples 1-5: per sample and summed
"""

from __future__ import annotations

import argparse
import bisect
import csv
import heapq
import json
import math
import random
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controlplane._core import Scheduler
from controlplane.config import SchedulerConfig
from replay_report import (
    GPU_BUCKETS,
    plot,
    print_replay,
    print_samples,
    print_saturation,
    print_shares,
    print_summary,
    summarise,
)

TRACE = Path(__file__).resolve().parent.parent.parent / "shared" / "traces" / "openb"
VARIANTS = ("default", "gpuspec33", "multigpu50")
# name -> the scheduler config it runs with; best_fit is composite weighing fit alone.
POLICIES: dict[str, SchedulerConfig] = {
    "round_robin": SchedulerConfig(policy="round_robin"),
    "least_loaded": SchedulerConfig(policy="least_loaded"),
    "composite": SchedulerConfig(policy="composite"),
    "best_fit": SchedulerConfig(
        policy="composite", w_availability=0, w_success=0, w_speed=0, w_affinity=0, w_fit=1, w_cost=0
    ),
    "fragmentation": SchedulerConfig(policy="fragmentation"),
    "default": SchedulerConfig(),
}
# A GPU's compute in thousandths, as the core counts shares.
WHOLE_MILLI = 1000
# GPU memory by model (MB); the trace names the models only. Tasks ask for no memory, so this
# only makes the workers look like GPU servers.
MEMORY_MB = {"V100M32": 32768, "A10": 24576}


@dataclass(frozen=True)
class Node:
    gpus: int
    model: str


@dataclass(frozen=True)
class Task:
    gpus: int
    models: tuple[str, ...]
    arrival_s: float
    runtime_s: float
    # Thousandths of its one GPU a task asks for when it asks for part of one; 0 = whole GPUs.
    milli: int = 0

    def asks(self, shares: bool) -> float:
        """GPUs it asks for: its share of one when shares are placed as such."""
        return self.milli / 1000 if shares and self.milli else float(self.gpus)


def load_nodes(trace: Path) -> list[Node]:
    with open(trace / "openb_node_list_gpu_node.csv") as f:
        return [Node(int(r["gpu"]), r["model"]) for r in csv.DictReader(f)]


def load_tasks(trace: Path, variant: str) -> list[Task]:
    """The variant's GPU tasks, in arrival order."""
    with open(trace / "openb_pod_list_default.csv") as f:
        timed = list(csv.DictReader(f))
    with open(trace / f"openb_pod_list_{variant}.csv") as f:
        rows = list(csv.DictReader(f))
    # Tasks still running at the trace's end run to its end.
    end = max(int(r["deletion_time"]) for r in timed if r["deletion_time"])
    tasks = []
    for i, row in enumerate(rows):
        gpus = int(row["num_gpu"])
        if gpus == 0:
            continue
        times = row if row.get("creation_time") else timed[i % len(timed)]
        start = int(times["scheduled_time"] or times["creation_time"])
        runtime = (int(times["deletion_time"]) if times["deletion_time"] else end) - start
        models = tuple(m for m in row.get("gpu_spec", "").split("|") if m)
        milli = int(row["gpu_milli"]) if gpus == 1 and int(row["gpu_milli"]) < 1000 else 0
        tasks.append(Task(gpus, models, float(times["creation_time"]), float(max(runtime, 1)), milli))
    tasks.sort(key=lambda t: t.arrival_s)
    return tasks


class Cluster:
    """The core with one worker per node (slots = GPUs, or room for every share with `shares`)
    and one shape per (GPUs, models, share)."""

    def __init__(self, config: SchedulerConfig, nodes: list[Node], shares: bool = False, hints: bool = False) -> None:
        self.core = Scheduler(config)
        self.hints = hints
        self.gpus = sum(n.gpus for n in nodes)
        self.nodes = nodes
        self.shares = shares
        for n in nodes:
            gpu = (MEMORY_MB.get(n.model, 16384), 7.0, n.model)
            # The smallest share in the trace is 50 thousandths: 20 of them fit a GPU.
            self.core.add_worker(n.gpus * (20 if shares else 1), [gpu] * n.gpus, "cuda", [], [], 0)
        self.shapes: dict[tuple[int, tuple[str, ...], int, int], int] = {}

    def shape(self, task: Task) -> int:
        milli = task.milli if self.shares else 0
        decade = runtime_decade(task) if self.hints else -1
        key = (task.gpus, task.models, milli, decade)
        if key not in self.shapes:
            runtime_class = f"1e{decade}s" if self.hints else ""
            self.shapes[key] = self.core.shape(
                "openb", task.gpus, 0, list(task.models), "cuda", [], 0.0, gpu_milli=milli, runtime_class=runtime_class
            )
            if self.hints:
                # The submitter knows the order of magnitude: it expects the decade's middle.
                self.core.expect_runtime(self.shapes[key], int(1000 * 10 ** (decade + 0.5)))
        return self.shapes[key]

    def could_run(self, task: Task) -> bool:
        """Some node has the GPUs, of a model the task accepts."""
        return any(n.gpus >= task.gpus and (not task.models or n.model in task.models) for n in self.nodes)


def runtime_decade(task: Task) -> int:
    """The order of magnitude of the task's runtime in seconds: its runtime class with --hints."""
    return int(math.log10(task.runtime_s))


def replay(
    config: SchedulerConfig, nodes: list[Node], tasks: list[Task], compress: float, hints: bool = False
) -> dict[str, Any]:
    """Time replay: waits and utilisation."""
    cluster = Cluster(config, nodes, hints=hints)
    core = cluster.core
    events: list[tuple[float, int, int]] = []  # (time s, 0 = finish / 1 = arrive, task)
    for i, t in enumerate(tasks):
        heapq.heappush(events, (t.arrival_s / compress, 1, i))
    arrived: dict[int, float] = {}
    waits: list[tuple[int, float]] = []
    busy = 0
    now = 0.0
    waited_s = busy_gpu_s = 0.0
    while events:
        at, kind, i = heapq.heappop(events)
        if arrived:
            # GPU time while at least one task waits: what placement could have used.
            waited_s += at - now
            busy_gpu_s += busy * (at - now)
        now = at
        if kind == 1:
            core.push(i, cluster.shape(tasks[i]), 1, i, 0, now_ms=int(now * 1000))
            arrived[i] = now
        else:
            core.finish(i, True, int(tasks[i].runtime_s * 1000))
            busy -= tasks[i].gpus
        if events and events[0][0] == now:
            continue  # place once per instant
        for task, _, _ in core.place(int(now * 1000), 1_000_000):
            core.mark_started(task)
            waits.append((tasks[task].gpus, now - arrived.pop(task)))
            busy += tasks[task].gpus
            heapq.heappush(events, (now + tasks[task].runtime_s, 0, task))
    if arrived:
        raise RuntimeError(f"{len(arrived)} tasks never placed although some node could run each")
    out: dict[str, Any] = {"utilisation": busy_gpu_s / (waited_s * cluster.gpus) if waited_s else 0.0}
    out.update(wait_stats("all", [w for _, w in waits]))
    for b in GPU_BUCKETS:
        out.update(wait_stats(f"{b}gpu", [w for g, w in waits if g == b]))
    return out


# The pool's orders of service: arrival order, the fewest GPUs first, the shortest runtime first
# (which only a clairvoyant scheduler could follow).
POOL_ORDERS: dict[str, Callable[[Task], float] | None] = {
    "(pool, fifo)": None,
    "(pool, small 1st)": lambda t: t.gpus,
    "(pool, short 1st)": lambda t: t.runtime_s,
}


def pooled(gpus: int, tasks: list[Task], compress: float, order: Callable[[Task], float] | None) -> dict[str, Any]:
    """A reference no placement policy can be given: the sample's GPUs as one pool (no node
    boundaries, no GPU models), so a task starts whenever enough GPUs are free anywhere. Waiting
    tasks start in `order` (None: arrival order), skipping those that do not fit (greedy
    backfill); what remains is what the order of service decides."""
    events = [(t.arrival_s / compress, 1, i) for i, t in enumerate(tasks)]
    heapq.heapify(events)
    free, queue, waits = gpus, [], []
    while events:
        now, kind, i = heapq.heappop(events)
        if kind == 1:
            queue.append(i)
        else:
            free += tasks[i].gpus
        if events and events[0][0] == now:
            continue
        if order is not None:
            queue.sort(key=lambda j: order(tasks[j]))
        waiting = []
        for j in queue:
            if free >= tasks[j].gpus:
                free -= tasks[j].gpus
                waits.append((tasks[j].gpus, now - tasks[j].arrival_s / compress))
                heapq.heappush(events, (now + tasks[j].runtime_s, 0, j))
            else:
                waiting.append(j)
        queue = waiting
    out: dict[str, Any] = {"utilisation": float("nan")}
    out.update(wait_stats("all", [w for _, w in waits]))
    for b in GPU_BUCKETS:
        out.update(wait_stats(f"{b}gpu", [w for g, w in waits if g == b]))
    return out


def wait_stats(name: str, ws: list[float]) -> dict[str, float | int]:
    ws = sorted(ws)
    return {
        f"{name}_n": len(ws),
        f"{name}_mean_s": statistics.fmean(ws) if ws else 0.0,
        f"{name}_p99_s": ws[int(0.99 * (len(ws) - 1))] if ws else 0.0,
    }


def arrivals(tasks: list[Task], seed: int) -> Iterator[Task]:
    """The saturation experiment's arrivals: the trace in order, then shuffled rounds of it."""
    rng = random.Random(seed)
    order = list(tasks)
    while True:
        yield from order
        rng.shuffle(order)


def saturate(config: SchedulerConfig, nodes: list[Node], tasks: list[Task], seed: int) -> dict[str, Any]:
    """Tasks arrive and never leave: the GPUs requested when one first cannot be placed."""
    cluster = Cluster(config, nodes)
    requested = placed = 0
    for task in arrivals(tasks, seed):
        requested += task.gpus
        cluster.core.push(placed, cluster.shape(task), 1, placed, 0, now_ms=0)
        if not cluster.core.place(0, 1):
            break
        placed += 1
    return {"requested_share": requested / cluster.gpus, "placed_tasks": placed}


def saturate_shares(config: SchedulerConfig, nodes: list[Node], tasks: list[Task], seed: int) -> dict[str, Any]:
    """Tasks arrive and never leave, shares placed as shares; one no node can take now is refused
    and the next tried, until the arrivals have asked for the cluster's GPUs: what is left
    unallocated then."""
    cluster = Cluster(config, nodes, shares=True)
    requested = allocated = 0.0
    refused = 0
    placed: list[int] = []
    for i, task in enumerate(arrivals(tasks, seed)):
        if requested >= cluster.gpus:
            break
        requested += task.asks(True)
        cluster.core.push(i, cluster.shape(task), 1, i, 0, now_ms=0)
        if cluster.core.place(0, 1):
            allocated += task.asks(True)
            placed.append(task.milli)
        else:
            cluster.core.remove(i)
            refused += 1
    whole, split, _ = cluster.core.gpu_allocation()
    shares = [m for m in placed if m]
    floor = packing_floor(shares)
    return {
        "unallocated_share": 1 - allocated / cluster.gpus,
        "offline_share": offline_packing(shares) / cluster.gpus,
        "packing_floor_share": None if floor is None else floor / cluster.gpus,
        "refused_tasks": refused,
        "gpus_split": split,
        "gpus_whole": whole,
    }


def offline_packing(shares: list[int]) -> float:
    """GPUs left unallocated on the GPUs these shares split when all of them are known at once:
    best fit decreasing (each share, largest first, on the GPU it leaves least room on), within
    a few percent of the best packing; what an online policy cannot know is the difference. GPU
    models are ignored here and in packing_floor, which can only lower both."""
    rests: list[int] = []  # the split GPUs' free thousandths, sorted
    for m in sorted(shares, reverse=True):
        i = bisect.bisect_left(rests, m)
        if i == len(rests):
            bisect.insort(rests, WHOLE_MILLI - m)
        else:
            bisect.insort(rests, rests.pop(i) - m)
    return sum(rests) / WHOLE_MILLI


def packing_floor(shares: list[int]) -> float | None:
    """GPUs any packing of these shares leaves unallocated on the GPUs they split, at least: the
    GPUs bin packing needs by its linear relaxation (the cutting-stock LP, solved by column
    generation: a new GPU's worth of shares priced by a knapsack over the LP's duals), rounded
    up, less the GPUs the shares use. None without scipy."""
    try:
        from scipy.optimize import linprog
    except ImportError:
        return None
    if not shares:
        return 0.0
    count: dict[int, int] = {}
    for m in shares:
        count[m] = count.get(m, 0) + 1
    sizes = sorted(count)
    need = [float(count[m]) for m in sizes]
    # Start from one size per GPU, as many as fit.
    patterns = [[WHOLE_MILLI // m if j == i else 0 for j in range(len(sizes))] for i, m in enumerate(sizes)]
    while True:
        columns = [[-float(p[i]) for p in patterns] for i in range(len(sizes))]
        lp = linprog([1.0] * len(patterns), A_ub=columns, b_ub=[-n for n in need], method="highs")
        duals = [-y for y in lp.ineqlin.marginals]
        value, pattern = knapsack(sizes, duals)
        if value <= 1 + 1e-6:  # no GPU's worth of shares is worth more than a GPU: the LP is solved
            break
        patterns.append(pattern)
    # Farley's bound: the GPUs the LP needs are at least its value over the best pattern's, so
    # the tolerance cannot lift the floor above the truth.
    return math.ceil(lp.fun / max(value, 1.0) - 1e-9) - sum(shares) / WHOLE_MILLI


def knapsack(sizes: list[int], values: list[float]) -> tuple[float, list[int]]:
    """The most value one GPU holds, shares of `sizes` (thousandths) worth `values` each, any
    number of each, and how many of each."""
    best = [0.0] * (WHOLE_MILLI + 1)
    last = [-1] * (WHOLE_MILLI + 1)
    for room in range(1, WHOLE_MILLI + 1):
        best[room], last[room] = best[room - 1], -1
        for i, m in enumerate(sizes):
            if m <= room and best[room - m] + values[i] > best[room] + 1e-12:
                best[room], last[room] = best[room - m] + values[i], i
    pattern = [0] * len(sizes)
    room = WHOLE_MILLI
    while room > 0:
        if last[room] < 0:
            room -= 1
        else:
            pattern[last[room]] += 1
            room -= sizes[last[room]]
    return best[WHOLE_MILLI], pattern


def saturation_bound(nodes: list[Node], tasks: list[Task], seed: int) -> dict[str, Any]:
    """Where any policy must refuse by: the first arrival after which the tasks accepting only some
    set of GPU models ask for more GPUs than those models have (Hall's condition on GPU counts;
    node sizes ignored, so a policy may have to refuse sooner)."""
    models = sorted({n.model for n in nodes})
    supply = [sum(n.gpus for n in nodes if mask >> models.index(n.model) & 1) for mask in range(1 << len(models))]
    need = [0] * len(supply)
    requested = placed = 0
    for task in arrivals(tasks, seed):
        requested += task.gpus
        allowed = sum(1 << i for i, m in enumerate(models) if not task.models or m in task.models)
        over = False
        for mask in range(len(need)):
            if mask & allowed == allowed:
                need[mask] += task.gpus
                over = over or need[mask] > supply[mask]
        if over:
            break
        placed += 1
    return {"requested_share": requested / supply[-1], "placed_tasks": placed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trace", default=str(TRACE))
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--fractions", default="0.05,0.1,0.15,0.2", help="shares of the nodes the time replay runs on")
    parser.add_argument("--load", type=float, default=1.2, help="offered load of the time replay (see above)")
    parser.add_argument("--tasks", type=int, default=0, help="replay only the first N GPU tasks (0 = all)")
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument(
        "--hinted",
        default="default",
        help="policies also replayed with runtime hints (the runtime's decade as runtime class)",
    )
    parser.add_argument("--seed", type=int, default=1, help="node sample and saturation order")
    parser.add_argument(
        "--seeds",
        type=int,
        default=0,
        help="replay node samples 1..N and summarise the ratios over them (saturation keeps --seed)",
    )
    parser.add_argument("--no-saturation", action="store_true")
    parser.add_argument("--out", default=str(Path(__file__).parent / "out"))
    args = parser.parse_args()
    trace = Path(args.trace)
    policies = {p: POLICIES[p] for p in args.policies.split(",")}
    hinted = [p for p in args.hinted.split(",") if p]
    policies.update({p: POLICIES[p] for p in hinted})
    if args.seeds and "round_robin" not in policies:
        parser.error("--seeds summarises ratios against round_robin: add it to --policies")
    nodes = load_nodes(trace)
    seeds = list(range(1, args.seeds + 1)) if args.seeds else [args.seed]
    report: dict[str, Any] = {"load": args.load, "compress": {}, "seed": args.seed, "replay": {}, "saturation": {}}
    samples: dict[int, dict[str, dict[str, dict[str, Any]]]] = {seed: {} for seed in seeds}
    compress: dict[int, dict[str, float]] = {seed: {} for seed in seeds}
    for variant in args.variants.split(","):
        tasks = load_tasks(trace, variant)
        if args.tasks:
            tasks = tasks[: args.tasks]
        for fraction in [float(x) for x in args.fractions.split(",")]:
            key = f"{variant}@{fraction:g}"
            for seed in seeds:
                title = f"{key} (sample {seed})" if args.seeds else key
                run = replay_sample(nodes, tasks, fraction, seed, policies, hinted, args.load, title)
                samples[seed][key], compress[seed][key] = run
        if not args.no_saturation:
            rows = {name: saturate(config, nodes, tasks, args.seed) for name, config in policies.items()}
            rows["(bound)"] = saturation_bound(nodes, tasks, args.seed)
            report["saturation"][variant] = rows
            print_saturation(variant, len(nodes), sum(n.gpus for n in nodes), rows)
            rows = {name: saturate_shares(config, nodes, tasks, args.seed) for name, config in policies.items()}
            report.setdefault("shares", {})[variant] = rows
            print_shares(variant, rows)
    if args.seeds:
        report["samples"] = samples
        report["compress"] = compress
        report["summary"] = summarise(samples)
        print_samples(samples)
        print_summary(seeds, report["summary"])
    else:
        report["replay"] = samples[args.seed]
        report["compress"] = compress[args.seed]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "replay.json").write_text(json.dumps(report, indent=2))
    print(f"\nwrote {out / 'replay.json'}")
    if not args.seeds:
        plot(report, out / "replay.png")


def replay_sample(
    nodes: list[Node],
    tasks: list[Task],
    fraction: float,
    seed: int,
    policies: dict[str, SchedulerConfig],
    hinted: list[str],
    load: float,
    title: str,
) -> tuple[dict[str, dict[str, Any]], float]:
    """The time replay of every policy and pool order on the seed's sample of the nodes, and the
    arrivals' compression."""
    sample = random.Random(seed).sample(nodes, max(1, round(fraction * len(nodes))))
    probe = Cluster(policies[next(iter(policies))], sample)
    runnable = [t for t in tasks if probe.could_run(t)]
    span = runnable[-1].arrival_s - runnable[0].arrival_s
    compress = load * probe.gpus * span / sum(t.gpus * t.runtime_s for t in runnable)
    rows = {}
    runs = [(name, config, False) for name, config in policies.items()]
    runs += [(f"{name}+hints", policies[name], True) for name in hinted]
    for name, config, hints in runs:
        t0 = time.perf_counter()
        rows[name] = replay(config, sample, runnable, compress, hints)
        rows[name]["wall_s"] = time.perf_counter() - t0
    for name, order in POOL_ORDERS.items():
        t0 = time.perf_counter()
        rows[name] = pooled(probe.gpus, runnable, compress, order)
        rows[name]["wall_s"] = time.perf_counter() - t0
    print_replay(title, len(sample), probe.gpus, len(runnable), len(tasks), compress, rows)
    return rows, compress


if __name__ == "__main__":
    main()
