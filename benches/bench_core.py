"""Placements per second of the Rust core at 1,000 and 10,000 workers, driven from Python.

Each round queues a batch of tasks of mixed shapes, places them with one `place()` call (full
filtering and scoring), then finishes them so the next round starts from a free fleet. Only
`place()` is timed. A second measure times one placement per call, as the control plane makes
it when a single task arrives on an idle fleet.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time

from controlplane._core import Scheduler

GPU_KINDS = [(81920, 8.0, "NVIDIA A100 80GB"), (16384, 7.5, "Tesla T4"), (81920, 9.0, "NVIDIA H100"), (24576, 8.9, "NVIDIA L4")]


def fleet(sched: Scheduler, workers: int, rng: random.Random) -> None:
    for i in range(workers):
        if i % 5 == 4:
            sched.add_worker(8, [], "cpu", ["zone=eu"], [], 0)
        else:
            gpu = GPU_KINDS[i % len(GPU_KINDS)]
            labels = ["zone=eu"] if i % 2 else ["zone=us"]
            sched.add_worker(8, [gpu] * 8, "cuda", labels, [], 0)


def shapes(sched: Scheduler) -> list[int]:
    return [
        sched.shape("infer", 1, 40_000, [], "", [], 0.0),
        sched.shape("infer", 1, 0, [], "", [], 0.0),
        sched.shape("batch", 0, 0, [], "", [], 0.0),
        sched.shape("train", 2, 0, ["h100", "a100"], "cuda", [], 8.0),
        sched.shape("eval", 1, 0, [], "cuda", ["zone=eu"], 0.0),
    ]


def placements_per_second(workers: int, batch: int, rounds: int) -> float:
    rng = random.Random(workers)
    sched = Scheduler()
    fleet(sched, workers, rng)
    kinds = shapes(sched)
    handle = 0
    placed = 0
    spent = 0.0
    for _ in range(rounds):
        tasks = list(range(handle, handle + batch))
        handle += batch
        sched.push_many(tasks, [rng.choice(kinds) for _ in tasks], [rng.randrange(4) for _ in tasks], tasks, [0] * batch)
        t0 = time.perf_counter()
        result = sched.place(1, batch)
        spent += time.perf_counter() - t0
        placed += len(result)
        for task, _, _ in result:
            sched.finish(task, True, 10)
        for task in tasks:
            sched.remove(task)
    return placed / spent


def single_placement_us(workers: int, iterations: int) -> tuple[float, float]:
    sched = Scheduler()
    fleet(sched, workers, random.Random(1))
    shape = sched.shape("infer", 1, 40_000, [], "", [], 0.0)
    samples = []
    for task in range(iterations):
        sched.push(task, shape, 1, task, 0)
        t0 = time.perf_counter_ns()
        [(placed, _, _)] = sched.place(1, 1)
        samples.append((time.perf_counter_ns() - t0) / 1000)
        sched.finish(placed, True, 10)
    samples.sort()
    return samples[len(samples) // 2], samples[int(len(samples) * 0.99)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    rows = []
    for workers in (1_000, 10_000):
        rate = placements_per_second(workers, batch=min(workers * 8, 20_000), rounds=5)
        p50, p99 = single_placement_us(workers, 2_000)
        rows.append({"workers": workers, "placements_per_s": rate, "single_p50_us": p50, "single_p99_us": p99})
    print(f"{'workers':>8}  {'placements/s (batch)':>21}  {'one placement p50':>18}  {'p99':>8}")
    for r in rows:
        print(f"{r['workers']:>8}  {r['placements_per_s']:>21,.0f}  {r['single_p50_us']:>15.1f} us  {r['single_p99_us']:>5.1f} us")
    print(f"(median of rates: {statistics.median(r['placements_per_s'] for r in rows):,.0f}/s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
