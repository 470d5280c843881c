"""Placements per second of the Rust core at 1,000 and 10,000 workers, driven from Python, and
the same algorithm written in pure Python.

Each round queues a batch of tasks of mixed shapes, places them with one `place()` call (full
filtering and composite scoring), then finishes them so the next round starts from a free fleet.
Only `place()` is timed. A second measure times one placement per call, as the control plane
makes it when a single task arrives on an idle fleet. The third runs the same placement (hard
filters, then the composite score of availability, success, speed and fit, best worker wins)
over a list of worker dicts in pure Python, on the same fleet and tasks, and prints the ratio.

    python benches/bench_core.py            # table; JSON and PNG into benches/out/
    cargo bench -p gpucp-core --bench placement && python benches/bench_core.py --criterion
                                            # also tabulate the criterion results into out/
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import time
from pathlib import Path

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


# -- the same algorithm in pure Python ---------------------------------------------------------

SHAPES = [
    ("infer", 1, 40_000, [], "", [], 0.0),
    ("infer", 1, 0, [], "", [], 0.0),
    ("batch", 0, 0, [], "", [], 0.0),
    ("train", 2, 0, ["h100", "a100"], "cuda", [], 8.0),
    ("eval", 1, 0, [], "cuda", ["zone=eu"], 0.0),
]


def py_fleet(workers: int) -> list[dict]:
    fleet = []
    for i in range(workers):
        if i % 5 == 4:
            fleet.append({"slots": 8, "free": 8, "gpus": [], "backend": "cpu", "labels": {"zone=eu"}, "success": 1.0, "speed": 1.0})
        else:
            mb, cc, name = GPU_KINDS[i % len(GPU_KINDS)]
            gpus = [{"mb": mb, "cc": cc, "name": name.lower(), "busy": False} for _ in range(8)]
            labels = {"zone=eu"} if i % 2 else {"zone=us"}
            fleet.append({"slots": 8, "free": 8, "gpus": gpus, "backend": "cuda", "labels": labels, "success": 1.0, "speed": 1.0})
    return fleet


def py_place_one(fleet: list[dict], shape: tuple) -> tuple[int, list[int]] | None:
    """Hard filters, then the composite score over every worker; the best one wins."""
    _kind, ngpus, min_mb, models, backend, labels, min_cc = shape
    best, best_score, best_gpus = -1, -1.0, []
    for i, w in enumerate(fleet):
        if w["free"] == 0 or (backend and w["backend"] != backend) or not set(labels) <= w["labels"]:
            continue
        qualifying = [
            g for g, gpu in enumerate(w["gpus"])
            if gpu["mb"] >= min_mb and (min_cc <= 0 or gpu["cc"] >= min_cc)
            and (not models or any(m in gpu["name"] for m in models))
        ]
        if len(qualifying) < ngpus:
            continue
        free = [g for g in qualifying if not w["gpus"][g]["busy"]][:ngpus]
        if len(free) < ngpus:
            continue
        if ngpus == 0:
            fit = 1.0 / (1.0 + len(w["gpus"]))
        else:
            mem = min(w["gpus"][g]["mb"] for g in qualifying)
            spare_mem = min(1.0, max(0.0, math.log2(mem / max(min_mb, 4096)) / 6.0))
            fit = 1.0 - 0.5 * (len(w["gpus"]) - ngpus) / len(w["gpus"]) - 0.5 * spare_mem
        score = 0.5 * w["free"] / w["slots"] + 0.3 * w["success"] + 0.2 * min(w["speed"], 2.0) / 2.0 + 0.2 * fit + 0.1
        if score > best_score:
            best, best_score, best_gpus = i, score, free
    if best < 0:
        return None
    w = fleet[best]
    w["free"] -= 1
    for g in best_gpus:
        w["gpus"][g]["busy"] = True
    return best, best_gpus


def py_placements_per_second(workers: int, tasks: int) -> float:
    rng = random.Random(workers)
    fleet = py_fleet(workers)
    shapes = [rng.choice(SHAPES) for _ in range(tasks)]
    t0 = time.perf_counter()
    placed = sum(1 for shape in shapes if py_place_one(fleet, shape) is not None)
    return placed / (time.perf_counter() - t0)


def plot(rows: list[dict], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib not installed: no plot)")
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    xs = [str(r["workers"]) for r in rows]
    ax.bar([x + " core" for x in xs], [r["placements_per_s"] for r in rows], label="Rust core via Python")
    ax.bar([x + " python" for x in xs], [r["pure_python_per_s"] for r in rows], label="pure Python")
    ax.set_yscale("log")
    ax.set_ylabel("placements/s (log)")
    ax.set_title("placement rate by fleet size")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def criterion_table(target: Path, out: Path) -> None:
    """Collect criterion's estimates (target/criterion/*/*/new/estimates.json) into one table."""
    rows = []
    source = (Path(__file__).parent.parent / "core_rs" / "benches" / "placement.rs").read_text()
    for est in sorted(target.glob("**/new/estimates.json")):
        bench = est.parent.parent.relative_to(target).as_posix()
        if f'"{bench.split("/")[1]}"' not in source:
            continue  # left over from a bench that no longer exists
        bench_json = json.loads((est.parent / "benchmark.json").read_text())
        elements = (bench_json.get("throughput") or {}).get("Elements", 1)
        ns = json.loads(est.read_text())["median"]["point_estimate"]
        rows.append({"bench": bench, "median_ms": ns / 1e6, "elements_per_s": elements / (ns / 1e9)})
    if not rows:
        print(f"no criterion results under {target}: run cargo bench -p gpucp-core --bench placement")
        return
    print(f"\n{'criterion bench':<52} {'median':>10} {'elements/s':>14}")
    for r in rows:
        print(f"{r['bench']:<52} {r['median_ms']:>8.2f}ms {r['elements_per_s']:>14,.0f}")
    (out / "criterion.json").write_text(json.dumps(rows, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=str(Path(__file__).parent / "out"), help="JSON and PNG go here")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--criterion", action="store_true", help="only tabulate target/criterion into out/")
    args = parser.parse_args()
    if args.criterion:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        criterion_table(Path(__file__).parent.parent / "target" / "criterion", out)
        return
    rows = []
    for workers in (1_000, 10_000):
        rate = placements_per_second(workers, batch=min(workers * 8, 20_000), rounds=5)
        p50, p99 = single_placement_us(workers, 2_000)
        py_rate = py_placements_per_second(workers, tasks=max(50, 400_000 // workers))
        rows.append({
            "workers": workers, "placements_per_s": rate, "single_p50_us": p50, "single_p99_us": p99,
            "pure_python_per_s": py_rate, "ratio": rate / py_rate,
        })
    print(f"{'workers':>8}  {'placements/s (batch)':>21}  {'one placement p50':>18}  {'p99':>8}  {'pure Python/s':>14}  {'core/pure':>10}")
    for r in rows:
        print(
            f"{r['workers']:>8}  {r['placements_per_s']:>21,.0f}  {r['single_p50_us']:>15.1f} us  {r['single_p99_us']:>5.1f} us"
            f"  {r['pure_python_per_s']:>14,.0f}  {r['ratio']:>9,.0f}x"
        )
    print(f"(median of rates: {statistics.median(r['placements_per_s'] for r in rows):,.0f}/s)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_core.json").write_text(json.dumps(rows, indent=2))
    plot(rows, out / "bench_core.png")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    print(f"wrote {out / 'bench_core.json'} and {out / 'bench_core.png'}")


if __name__ == "__main__":
    main()
