"""Scheduling quality of the real Rust core in a seeded discrete-event simulation.

A heterogeneous fleet (T4, L4, A10, A100, H100 workers with 1-4 GPUs, different speeds and
prices) runs a mixed workload (chat, embed, image and fine-tune tasks, each kind with a few
models; a model not in a worker's GPU memory costs a load first), arriving in bursts from four
tenants with different weights, with priorities, failures (retried elsewhere via avoid_worker)
and worker churn. The simulated agents hold prefetched tasks (prefetch_depth=2), start them when
a slot and the task's GPUs are free, report RUNNING (mark_started), and idle workers steal
prefetched work (steal_candidates). Time is simulated; every decision is the core's.

Per policy: makespan, utilisation of GPU time while work is queued, per-worker utilisation CV
and Gini, waits per priority (mean / p99), the longest LOW wait, and the share of tasks that
started on a cold model. Ratios are against round_robin. Each fleet also gets a work bound: no
policy can finish sooner than the GPU work of any set of kinds (expected runtimes, no model
loads, no retries) spread perfectly over the GPUs that can run those kinds; a makespan near it
leaves little for placement to win.

    python benches/simulate.py                        # 20, 200 and 1,000 workers, seed 1
    python benches/simulate.py --workers 200 --seeds 6 # and the spread over seeds 1-6
    python benches/simulate.py --workers 1000 --tasks 40000 --seed 7
    python benches/simulate.py --priority-mode shares  # classes share by weight instead
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import random
import statistics
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

from controlplane._core import Scheduler
from controlplane.config import SchedulerConfig

POLICIES = ["round_robin", "least_loaded", "performance", "cost", "affinity", "composite", "fragmentation"]
PRIORITIES = ["LOW", "NORMAL", "HIGH", "URGENT"]

# name, memory MB, compute capability, speed (T4 = 1), $/h, share of the fleet
GPU_MODELS = [
    ("Tesla T4", 16384, 7.5, 1.0, 0.35, 0.30),
    ("NVIDIA L4", 24576, 8.9, 1.6, 0.70, 0.20),
    ("NVIDIA A10", 24576, 8.6, 1.5, 0.75, 0.20),
    ("NVIDIA A100 80GB", 81920, 8.0, 3.0, 1.90, 0.20),
    ("NVIDIA H100", 81920, 9.0, 4.5, 3.50, 0.10),
]
# kind, GPUs, min GPU memory MB, base runtime ms on a T4, models, model load ms on a T4, share
KINDS = [
    ("chat", 1, 12_000, 1_500, 6, 8_000, 0.45),
    ("embed", 1, 4_000, 400, 3, 3_000, 0.30),
    ("image", 1, 20_000, 4_000, 4, 10_000, 0.20),
    ("finetune", 2, 40_000, 20_000, 2, 15_000, 0.05),
]
TENANT_WEIGHTS = {1: 4.0, 2: 2.0, 3: 1.0, 4: 1.0}
PRIORITY_MIX = [0.2, 0.5, 0.2, 0.1]
FAILURE_RATE = 0.01
TICK_MS = 250.0
# Models a worker keeps loaded (the core's affinity_memory default is the same).
MODEL_CACHE = 4
MAX_ATTEMPTS = 3


@dataclass
class Task:
    id: int
    kind: int
    model: int
    priority: int
    tenant: int
    arrival: float
    gpus_needed: int
    attempt: int = 0
    avoid: int | None = None
    start: float = -1.0
    worker: int = -1
    gpus: list[int] = field(default_factory=list)


@dataclass
class SimWorker:
    handle: int
    gpu: int
    ngpus: int
    joined: float
    left: float = math.inf
    queue: list[int] = field(default_factory=list)
    running: dict[int, list[int]] = field(default_factory=dict)
    cache: OrderedDict[int, None] = field(default_factory=OrderedDict)
    busy_gpu_ms: float = 0.0
    saturated_ms: float = 0.0


def pick(rng: random.Random, weights: list[float]) -> int:
    return rng.choices(range(len(weights)), weights=weights)[0]


class Simulation:
    def __init__(self, policy: str, workers: int, tasks: int, seed: int, priority_mode: str = "strict") -> None:
        self.rng = random.Random(seed)
        config = SchedulerConfig(
            policy=policy, priority_mode=priority_mode, prefetch_depth=2, aging_ms=30_000, warmup_successes=4
        )
        self.core = Scheduler(config)
        for tenant, weight in TENANT_WEIGHTS.items():
            self.core.set_tenant_weight(tenant, weight)
        self.shapes = [self.core.shape(k[0], k[1], k[2], [], "cuda", [], 0.0) for k in KINDS]
        self.workers: dict[int, SimWorker] = {}
        self.tasks: dict[int, Task] = {}
        self.events: list[tuple[float, int, str, int, int]] = []
        self.seq = 0
        self.now = 0.0
        self.cold = 0
        self.starts = 0
        self.done = 0
        self.retired: list[SimWorker] = []
        # GPU-ms available and busy while the queue holds at least one task per worker.
        self.saturated = False
        self.available_ms = 0.0
        self.busy_ms = 0.0
        for _ in range(workers):
            self.join()
        self.plan(tasks, workers)

    # -- setup
    def join(self, like: SimWorker | None = None) -> None:
        """A new worker; a replacement for a lost one has its GPUs (the autoscaler's job)."""
        g = like.gpu if like else pick(self.rng, [m[5] for m in GPU_MODELS])
        ngpus = like.ngpus if like else self.rng.choices([1, 2, 4], weights=[0.5, 0.3, 0.2])[0]
        name, mem, cc, _, price, _ = GPU_MODELS[g]
        handle = self.core.add_worker(
            ngpus, [(mem, cc, name)] * ngpus, "cuda", [], [], int(self.now), cost_per_hour=price * ngpus
        )
        self.workers[handle] = SimWorker(handle, g, ngpus, self.now)

    def plan(self, tasks: int, workers: int) -> None:
        # Work arrives faster than the fleet drains it: bursts every few seconds, sized so the
        # arrivals end around 60% of the ideal makespan.
        capacity = sum(GPU_MODELS[w.gpu][3] * w.ngpus for w in self.workers.values())
        mean_work = sum(k[3] * k[1] * k[6] for k in KINDS)
        ideal_ms = tasks * mean_work / capacity
        bursts = 20
        t = 0.0
        task_id = 0
        for b in range(bursts):
            n = tasks // bursts + (1 if b < tasks % bursts else 0)
            for _ in range(n):
                k = pick(self.rng, [k[6] for k in KINDS])
                model = self.rng.randrange(KINDS[k][4])
                task = Task(
                    task_id, k, 100 * k + model + 1, pick(self.rng, PRIORITY_MIX),
                    self.rng.randint(1, 4), t + self.rng.random() * 500, KINDS[k][1],
                )
                self.tasks[task_id] = task
                self.push_event(task.arrival, "arrive", task_id)
                task_id += 1
            t += 0.6 * ideal_ms / bursts
        for i in range(1, 11):
            self.push_event(i * ideal_ms / 10, "churn", 0)
        self.push_event(0.0, "tick", 0)

    def work_bound_s(self) -> float:
        """About the shortest makespan any placement could reach on this fleet (s).

        For each set of kinds: their expected GPU work (T4 GPU-ms) over the speed-weighted GPUs of
        the workers that can run at least one of them. Expected, not sampled, runtimes: a lucky run
        may beat it by a few percent. Churn replaces a worker with its like, so the fleet at the
        start stands for the whole run.
        """
        noise = math.exp(0.25**2 / 2)  # mean of the runtime's lognormal factor
        work = [0.0] * len(KINDS)
        for task in self.tasks.values():
            kind = KINDS[task.kind]
            work[task.kind] += kind[3] * kind[1] * noise

        def runs(w: SimWorker, k: int) -> bool:
            return w.ngpus >= KINDS[k][1] and GPU_MODELS[w.gpu][1] >= KINDS[k][2]

        best = 0.0
        for size in range(1, len(KINDS) + 1):
            for kinds in combinations(range(len(KINDS)), size):
                capacity = sum(
                    GPU_MODELS[w.gpu][3] * w.ngpus for w in self.workers.values() if any(runs(w, k) for k in kinds)
                )
                if capacity:
                    best = max(best, sum(work[k] for k in kinds) / capacity)
        return best / 1000

    def push_event(self, at: float, kind: str, a: int, b: int = 0) -> None:
        self.seq += 1
        heapq.heappush(self.events, (at, self.seq, kind, a, b))

    # -- the control plane's side
    def queue_task(self, task: Task) -> None:
        self.core.push(
            task.id, self.shapes[task.kind], task.priority, task.id, 0,
            avoid_worker=task.avoid, tenant=task.tenant, affinity=task.model, now_ms=int(task.arrival),
        )

    def dispatch(self) -> None:
        touched: set[int] = set()
        for _ in range(2):
            for task_id, worker, gpus in self.core.place(int(self.now), 1_000_000):
                task = self.tasks[task_id]
                task.worker, task.gpus = worker, list(gpus)
                self.workers[worker].queue.append(task_id)
                touched.add(worker)
            moves = self.core.steal_candidates(256)
            if not moves:
                break
            for task_id, frm, _ in moves:
                # Two-phase in a real control plane: revoke from the agent, then requeue.
                self.workers[frm].queue.remove(task_id)
                self.core.release(task_id)
                self.queue_task(self.tasks[task_id])
        for handle in touched:
            self.try_start(self.workers[handle])

    # -- the agent's side
    def try_start(self, w: SimWorker) -> None:
        busy = {g for gs in w.running.values() for g in gs}
        for task_id in list(w.queue):
            if len(w.running) >= w.ngpus:
                return
            task = self.tasks[task_id]
            if busy.intersection(task.gpus):
                continue
            w.queue.remove(task_id)
            self.core.mark_started(task_id)
            w.running[task_id] = task.gpus
            busy.update(task.gpus)
            task.start = self.now
            kind = KINDS[task.kind]
            speed = GPU_MODELS[w.gpu][3]
            runtime = kind[3] / speed * self.rng.lognormvariate(0, 0.25)
            self.starts += 1
            if task.model in w.cache:
                w.cache.move_to_end(task.model)
            else:
                self.cold += 1
                runtime += kind[5] / math.sqrt(speed)
                w.cache[task.model] = None
                while len(w.cache) > MODEL_CACHE:
                    w.cache.popitem(last=False)
            self.push_event(self.now + runtime, "finish", task_id, task.attempt)

    # -- events
    def run(self) -> dict[str, float | int | list[float]]:
        waits: dict[int, list[float]] = {p: [] for p in range(4)}
        while self.events:
            at, _, kind, a, b = heapq.heappop(self.events)
            self.advance(at)
            if kind == "arrive":
                self.queue_task(self.tasks[a])
            elif kind == "finish":
                task = self.tasks[a]
                if task.attempt != b or task.worker not in self.workers:
                    continue  # its worker left; the task was requeued
                w = self.workers[task.worker]
                del w.running[a]
                runtime = self.now - task.start
                ok = self.rng.random() >= FAILURE_RATE or task.attempt + 1 >= MAX_ATTEMPTS
                self.core.finish(a, ok, int(runtime))
                if ok:
                    self.done += 1
                    waits[task.priority].append(task.start - task.arrival)
                else:
                    task.attempt += 1
                    task.avoid = task.worker
                    self.queue_task(task)
                self.try_start(w)
            elif kind == "churn":
                self.churn()
            elif kind == "tick":
                # The control plane places in batches (every TICK_MS under load); the agents'
                # prefetch queues hide the wait, and the batch gives placement a choice.
                self.dispatch()
                self.saturated = self.core.pending() >= len(self.workers)
                if self.done < len(self.tasks):
                    self.push_event(self.now + TICK_MS, "tick", 0)
        return self.metrics(waits)

    def advance(self, at: float) -> None:
        dt = at - self.now
        if dt > 0 and self.saturated:
            for w in self.workers.values():
                busy = dt * sum(len(g) for g in w.running.values())
                w.busy_gpu_ms += busy
                w.saturated_ms += dt
                self.busy_ms += busy
                self.available_ms += dt * w.ngpus
        self.now = at

    def churn(self) -> None:
        handle = self.rng.choice(sorted(self.workers))
        w = self.workers.pop(handle)
        w.left = self.now
        self.retired.append(w)
        for task_id in self.core.remove_worker(handle):
            task = self.tasks[task_id]
            task.attempt += 1
            task.avoid = None
            self.queue_task(task)
        self.join(like=w)

    def metrics(self, waits: dict[int, list[float]]) -> dict[str, float | int | list[float]]:
        makespan = self.now
        everyone = list(self.workers.values()) + self.retired
        longest = max((w.saturated_ms for w in everyone), default=0.0)
        # Per-worker utilisation while saturated, for workers present for most of that time.
        per_worker = [
            w.busy_gpu_ms / (w.saturated_ms * w.ngpus)
            for w in everyone
            if w.saturated_ms >= 0.5 * longest and w.saturated_ms > 0
        ]
        mean = statistics.fmean(per_worker) if per_worker else 0.0
        cv = statistics.pstdev(per_worker) / mean if mean else 0.0
        out: dict[str, float | int | list[float]] = {
            "makespan_s": makespan / 1000,
            "utilisation": self.busy_ms / self.available_ms if self.available_ms else 0.0,
            "cv": cv,
            "gini": gini(per_worker),
            "cold_share": self.cold / max(1, self.starts),
            "completed": self.done,
            "max_low_wait_s": max(waits[0], default=0.0) / 1000,
        }
        for p, name in enumerate(PRIORITIES):
            ws = sorted(waits[p])
            out[f"wait_{name}_mean_s"] = statistics.fmean(ws) / 1000 if ws else 0.0
            out[f"wait_{name}_p99_s"] = ws[int(0.99 * (len(ws) - 1))] / 1000 if ws else 0.0
        return out


def gini(values: list[float]) -> float:
    if not values or sum(values) == 0:
        return 0.0
    xs = sorted(values)
    n = len(xs)
    weighted = sum((i + 1) * x for i, x in enumerate(xs))
    return (2 * weighted) / (n * sum(xs)) - (n + 1) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", default="20,200,1000", help="comma-separated fleet sizes")
    parser.add_argument("--tasks", type=int, default=0, help="tasks per run (default 25 per worker)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--seeds", type=int, default=1,
                        help="also run the next seeds and print each policy's makespan vs round_robin per seed")
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--priority-mode", default="strict", choices=("strict", "shares"),
                        help="priority classes within a tenant: strict order or shares by weight (default %(default)s)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "out"))
    args = parser.parse_args()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, dict[str, float | int | list[float]]]] = {}
    spread: dict[str, dict[str, list[float]]] = {}
    for workers in [int(x) for x in args.workers.split(",")]:
        tasks = args.tasks or 25 * workers
        rows = {}
        for policy in args.policies.split(","):
            t0 = time.perf_counter()
            sim = Simulation(policy, workers, tasks, args.seed, args.priority_mode)
            bound = sim.work_bound_s()
            rows[policy] = sim.run()
            rows[policy]["wall_s"] = time.perf_counter() - t0
            rows[policy]["work_bound_s"] = bound
        results[str(workers)] = rows
        print_table(workers, tasks, args.seed, rows, bound)
        if args.seeds > 1:
            seeds = range(args.seed, args.seed + args.seeds)
            spread[str(workers)] = seed_spread(workers, tasks, seeds, rows, args.policies, args.priority_mode)
    report = {**results, "seed_spread": spread} if spread else results
    (out_dir / "simulate.json").write_text(json.dumps(report, indent=2))
    plot(results, out_dir / "simulate.png")


def seed_spread(
    workers: int,
    tasks: int,
    seeds: range,
    first: dict[str, dict[str, float | int | list[float]]],
    policies: str,
    priority_mode: str,
) -> dict[str, list[float]]:
    """Makespan / round_robin's per policy and seed (the first seed's runs are `first`); printed."""
    makespans = {p: [float(first[p]["makespan_s"])] for p in policies.split(",")}  # type: ignore[arg-type]
    for seed in seeds[1:]:
        for policy in makespans:
            sim = Simulation(policy, workers, tasks, seed, priority_mode)
            makespans[policy].append(float(sim.run()["makespan_s"]))  # type: ignore[arg-type]
    base = makespans.get("round_robin", next(iter(makespans.values())))
    ratios = {p: [m / b for m, b in zip(ms, base, strict=True)] for p, ms in makespans.items()}
    print(f"makespan vs round_robin, seeds {seeds.start}-{seeds.stop - 1}:")
    for policy, rs in ratios.items():
        print(f"{policy:<13} mean {statistics.fmean(rs):.2f}  worst {max(rs):.2f}  " + " ".join(f"{r:.2f}" for r in rs))
    return ratios


def print_table(
    workers: int, tasks: int, seed: int, rows: dict[str, dict[str, float | int | list[float]]], bound_s: float
) -> None:
    base = float(rows.get("round_robin", next(iter(rows.values())))["makespan_s"])  # type: ignore[arg-type]
    print(f"\n{workers} workers, {tasks} tasks, seed {seed}; work bound {bound_s:.1f}s "
          f"(about the best any policy can do: {bound_s / base:.2f} of round_robin)")
    print(
        f"{'policy':<13} {'makespan':>9} {'vs rr':>6} {'/bound':>6} {'util':>6} {'CV':>6} {'Gini':>6} {'cold':>6} "
        f"{'max LOW wait':>13} {'done':>6}"
    )
    for policy, r in rows.items():
        m = float(r["makespan_s"])  # type: ignore[arg-type]
        print(
            f"{policy:<13} {m:>8.1f}s {m / base:>6.2f} {m / bound_s:>6.2f} "
            f"{float(r['utilisation']):>6.1%} {float(r['cv']):>6.1%} "  # type: ignore[arg-type]
            f"{float(r['gini']):>6.3f} {float(r['cold_share']):>6.1%} "  # type: ignore[arg-type]
            f"{float(r['max_low_wait_s']):>12.1f}s {r['completed']:>6}"  # type: ignore[arg-type]
        )
    print(f"{'waits (s)':<13} " + " ".join(f"{p + ' mean/p99':>17}" for p in reversed(PRIORITIES)))
    for policy, r in rows.items():
        cells = [
            f"{float(r[f'wait_{p}_mean_s']):>8.1f}/{float(r[f'wait_{p}_p99_s']):<8.1f}"  # type: ignore[arg-type]
            for p in reversed(PRIORITIES)
        ]
        print(f"{policy:<13} " + " ".join(cells))


def plot(results: dict[str, dict[str, dict[str, float | int | list[float]]]], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib not installed: no plot)")
        return
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / len(results)
    for i, (workers, rows) in enumerate(results.items()):
        policies = list(rows)
        base = float(rows.get("round_robin", rows[policies[0]])["makespan_s"])  # type: ignore[arg-type]
        xs = [j + i * width for j in range(len(policies))]
        ratios = [float(rows[p]["makespan_s"]) / base for p in policies]  # type: ignore[arg-type]
        axes[0].bar(xs, ratios, width=width, label=f"{workers} workers")
        axes[1].bar(xs, [float(rows[p]["cold_share"]) for p in policies], width=width, label=f"{workers} workers")  # type: ignore[arg-type]
        for ax in axes:
            ax.set_xticks([j + 0.4 - width / 2 for j in range(len(policies))], policies, rotation=30)
    axes[0].set_title("makespan / round_robin")
    axes[1].set_title("share of tasks started on a cold model")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path} and {path.with_suffix('.json')}")


if __name__ == "__main__":
    main()
