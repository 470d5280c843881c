"""Placements per second of the Rust core at 1,000 and 10,000 workers, driven from Python, and
the same algorithm written in pure Python.

Each round queues a batch of tasks of mixed shapes, places them with one `place()` call (full
filtering and composite scoring), then finishes them so the next round starts from a free fleet.
Only `place()` is timed; it hands back the core's own list as one `Placements` object, and each
placement becomes a tuple when the untimed loop that finishes it reads it. A second measure times
one placement per call, as the control plane makes it when a single task arrives on an idle
fleet. Both are measured again at 10,000 workers
while an 8-GPU task waits for GPUs that a long task on every H100 worker keeps from it, so
every `place()` plans (or keeps) its reservation first; with and without it measured in turn,
three times, for the ratios. The third runs the same placement (hard
filters, then the composite score of availability, success, speed and fit, best worker wins)
over a list of worker dicts in pure Python, on the same fleet and tasks, twice: as a scan of
every worker per task (what a script would do), and with the core's own structure, a per-shape
heap of ready workers (`PyIndex`; the same decisions, checked). The ratio to the scan mixes the
language with the algorithm; the ratio to PyIndex is the language's alone, and flatters Python,
since PyIndex leaves out the core's fair queue, warm keys and explanations.

    python benches/bench_core.py            # table; JSON and PNG into benches/out/
    cargo bench -p gpucp-core --bench placement && python benches/bench_core.py --criterion
                                            # also tabulate the criterion results into out/
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import random
import statistics
import time
from pathlib import Path

from controlplane._core import Scheduler

GPU_KINDS = [
    (81920, 8.0, "NVIDIA A100 80GB"),
    (16384, 7.5, "Tesla T4"),
    (81920, 9.0, "NVIDIA H100"),
    (24576, 8.9, "NVIDIA L4"),
]


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


GANG = 10**9  # the blocked gang's task handle, apart from every round's


def block_a_gang(sched: Scheduler, workers: int) -> None:
    """Queue an 8-GPU H100 task that no worker can take: a long task pinned to one GPU of every
    H100 worker. Every place() then finds it first and plans its reservation."""
    pin = sched.shape("pin", 1, 0, ["h100"], "cuda", [], 0.0)
    for i in range(workers):
        if i % 5 != 4 and GPU_KINDS[i % len(GPU_KINDS)][2] == "NVIDIA H100":
            sched.attach(GANG + 1 + i, i, [0], pin, 0, 0)
    sched.push(GANG, sched.shape("train", 8, 0, ["h100"], "cuda", [], 0.0), 3, 0, 0)


def placements_per_second(workers: int, batch: int, rounds: int, gang: bool = False) -> float:
    rng = random.Random(workers)
    sched = Scheduler()
    fleet(sched, workers, rng)
    kinds = shapes(sched)
    if gang:
        block_a_gang(sched, workers)
    handle = 0
    placed = 0
    spent = 0.0
    for _ in range(rounds):
        tasks = list(range(handle, handle + batch))
        handle += batch
        chosen, priorities = [rng.choice(kinds) for _ in tasks], [rng.randrange(4) for _ in tasks]
        sched.push_many(tasks, chosen, priorities, tasks, [0] * batch)
        t0 = time.perf_counter()
        result = sched.place(1, batch)
        spent += time.perf_counter() - t0
        placed += len(result)
        for task, _, _ in result:
            sched.finish(task, True, 10)
        for task in tasks:
            sched.remove(task)
    return placed / spent


def single_placement_us(workers: int, iterations: int, gang: bool = False) -> tuple[float, float]:
    sched = Scheduler()
    fleet(sched, workers, random.Random(1))
    if gang:
        block_a_gang(sched, workers)
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


def blocked_against_free(reps: int) -> dict[str, float]:
    """At 10,000 workers, with an 8-GPU task blocked (see block_a_gang) and without, measured in
    turn so both see the same machine: medians over `reps`, and blocked / free."""
    runs: dict[bool, list[tuple[float, float, float]]] = {False: [], True: []}
    for _ in range(reps):
        for gang in (False, True):
            rate = placements_per_second(10_000, batch=20_000, rounds=5, gang=gang)
            runs[gang].append((rate, *single_placement_us(10_000, 2_000, gang=gang)))
    free, blocked = ([statistics.median(r[i] for r in runs[g]) for i in range(3)] for g in (False, True))
    return {
        "workers": 10_000,
        "placements_per_s": blocked[0],
        "single_p50_us": blocked[1],
        "single_p99_us": blocked[2],
        "free_placements_per_s": free[0],
        "free_single_p50_us": free[1],
        "free_single_p99_us": free[2],
        "batch_ratio": blocked[0] / free[0],
        "single_p50_ratio": blocked[1] / free[1],
        "single_p99_ratio": blocked[2] / free[2],
    }


# -- the same algorithm in pure Python ---------------------------------------------------------

SHAPES = [
    ("infer", 1, 40_000, (), "", (), 0.0),
    ("infer", 1, 0, (), "", (), 0.0),
    ("batch", 0, 0, (), "", (), 0.0),
    ("train", 2, 0, ("h100", "a100"), "cuda", (), 8.0),
    ("eval", 1, 0, (), "cuda", ("zone=eu",), 0.0),
]


def py_fleet(workers: int) -> list[dict]:
    fleet = []
    for i in range(workers):
        if i % 5 == 4:
            cpu = {"slots": 8, "free": 8, "gpus": [], "backend": "cpu", "labels": {"zone=eu"}}
            fleet.append({**cpu, "success": 1.0, "speed": 1.0})
        else:
            mb, cc, name = GPU_KINDS[i % len(GPU_KINDS)]
            gpus = [{"mb": mb, "cc": cc, "name": name.lower(), "busy": False} for _ in range(8)]
            labels = {"zone=eu"} if i % 2 else {"zone=us"}
            fleet.append(
                {"slots": 8, "free": 8, "gpus": gpus, "backend": "cuda", "labels": labels, "success": 1.0, "speed": 1.0}
            )
    return fleet


def py_static_fit(w: dict, shape: tuple) -> tuple[list[int], float] | None:
    """The hard filters: (qualifying GPUs, fit) if the worker could ever run the shape, else None."""
    _kind, ngpus, min_mb, models, backend, labels, min_cc = shape
    if (backend and w["backend"] != backend) or not set(labels) <= w["labels"]:
        return None
    qualifying = [
        g for g, gpu in enumerate(w["gpus"])
        if gpu["mb"] >= min_mb and (min_cc <= 0 or gpu["cc"] >= min_cc)
        and (not models or any(m in gpu["name"] for m in models))
    ]
    if len(qualifying) < ngpus:
        return None
    if ngpus == 0:
        return qualifying, 1.0 / (1.0 + len(w["gpus"]))
    mem = min(w["gpus"][g]["mb"] for g in qualifying)
    spare_mem = min(1.0, max(0.0, math.log2(mem / max(min_mb, 4096)) / 6.0))
    return qualifying, 1.0 - 0.5 * (len(w["gpus"]) - ngpus) / len(w["gpus"]) - 0.5 * spare_mem


def py_free_gpus(w: dict, qualifying: list[int], ngpus: int) -> list[int] | None:
    """The GPUs a task would get now, or None if the worker cannot take it."""
    free = [g for g in qualifying if not w["gpus"][g]["busy"]][:ngpus]
    return free if w["free"] > 0 and len(free) == ngpus else None


def py_score(w: dict, fit: float) -> float:
    return 0.5 * w["free"] / w["slots"] + 0.3 * w["success"] + 0.2 * min(w["speed"], 2.0) / 2.0 + 0.2 * fit + 0.1


def py_take(w: dict, gpus: list[int]) -> None:
    w["free"] -= 1
    for g in gpus:
        w["gpus"][g]["busy"] = True


def py_place_one(fleet: list[dict], shape: tuple) -> tuple[int, list[int]] | None:
    """Hard filters, then the composite score over every worker; the best one wins."""
    best, best_score, best_gpus = -1, -1.0, []
    for i, w in enumerate(fleet):
        if w["free"] == 0:
            continue
        fits = py_static_fit(w, shape)
        if fits is None:
            continue
        gpus = py_free_gpus(w, fits[0], shape[1])
        if gpus is None:
            continue
        score = py_score(w, fits[1])
        if score > best_score:
            best, best_score, best_gpus = i, score, gpus
    if best < 0:
        return None
    py_take(fleet[best], best_gpus)
    return best, best_gpus


class PyIndex:
    """py_place_one's decisions from the core's structure: per shape, its statically eligible
    workers (filtered once) and a heap of the ready ones by score. A placement re-scores its worker
    in the heaps of every shape it fits, leaving the old entries behind (skipped when met, by a
    version number), so a lookup is O(log W) instead of a scan."""

    def __init__(self, fleet: list[dict], shapes: list[tuple]) -> None:
        self.fleet = fleet
        self.version = [0] * len(fleet)
        self.members: dict[tuple, dict[int, tuple[list[int], float]]] = {}
        self.heaps: dict[tuple, list[tuple[float, int, int]]] = {}
        self.shapes_of: list[list[tuple]] = [[] for _ in fleet]
        for shape in dict.fromkeys(shapes):
            members = {i: fits for i, w in enumerate(fleet) if (fits := py_static_fit(w, shape)) is not None}
            self.members[shape] = members
            for i in members:
                self.shapes_of[i].append(shape)
            self.heaps[shape] = [entry for i in members if (entry := self.entry(i, shape))]
            heapq.heapify(self.heaps[shape])

    def entry(self, i: int, shape: tuple) -> tuple[float, int, int] | None:
        w = self.fleet[i]
        qualifying, fit = self.members[shape][i]
        if py_free_gpus(w, qualifying, shape[1]) is None:
            return None
        return (-py_score(w, fit), i, self.version[i])

    def place(self, shape: tuple) -> tuple[int, list[int]] | None:
        heap = self.heaps[shape]
        while heap:
            _, i, version = heapq.heappop(heap)
            if version != self.version[i]:
                continue
            w = self.fleet[i]
            gpus = py_free_gpus(w, self.members[shape][i][0], shape[1])
            assert gpus is not None, "a current entry's worker can take the task"
            py_take(w, gpus)
            self.version[i] += 1
            for other in self.shapes_of[i]:
                if entry := self.entry(i, other):
                    heapq.heappush(self.heaps[other], entry)
            return i, gpus
        return None


def py_placements_per_second(workers: int, tasks: int) -> tuple[float, float]:
    """Placements/s of the scan and of PyIndex (index built untimed) on the same tasks; both
    make the same decisions, which is checked."""
    rng = random.Random(workers)
    shapes = [rng.choice(SHAPES) for _ in range(tasks)]
    scanned = py_fleet(workers)
    scan_n = max(50, 400_000 // workers)
    t0 = time.perf_counter()
    by_scan = [py_place_one(scanned, shape) for shape in shapes[:scan_n]]
    scan_rate = sum(1 for p in by_scan if p is not None) / (time.perf_counter() - t0)
    index = PyIndex(py_fleet(workers), shapes)
    t0 = time.perf_counter()
    by_index = [index.place(shape) for shape in shapes]
    index_rate = sum(1 for p in by_index if p is not None) / (time.perf_counter() - t0)
    if by_index[:scan_n] != by_scan:
        raise AssertionError("the indexed pure-Python placement decided differently from the scan")
    return scan_rate, index_rate


def plot(rows: list[dict], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib not installed: no plot)")
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    xs = [f"{r['workers']:,}" for r in rows]
    ax.bar([x + " core" for x in xs], [r["placements_per_s"] for r in rows], label="Rust core via Python")
    ax.bar([x + " py index" for x in xs], [r["pure_python_indexed_per_s"] for r in rows], label="pure Python, indexed")
    ax.bar([x + " py scan" for x in xs], [r["pure_python_per_s"] for r in rows], label="pure Python, scan")
    ax.tick_params(axis="x", rotation=30)
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
        scan_rate, index_rate = py_placements_per_second(workers, tasks=min(workers * 8, 20_000))
        rows.append({
            "workers": workers, "placements_per_s": rate, "single_p50_us": p50, "single_p99_us": p99,
            "pure_python_per_s": scan_rate, "ratio": rate / scan_rate,
            "pure_python_indexed_per_s": index_rate, "ratio_indexed": rate / index_rate,
        })
    gang = blocked_against_free(reps=3)
    print(f"{'':>8}  {'Rust core, from Python':^49}  {'pure Python, placements/s':^27}  {'core / pure Python':^20}")
    print(f"{'workers':>8}  {'placements/s (batch)':>21}  {'one p50':>11}  {'p99':>11}  {'scan':>12}  {'indexed':>12}"
          f"  {'scan':>9}  {'indexed':>9}")
    for r in rows:
        print(
            f"{r['workers']:>8}  {r['placements_per_s']:>21,.0f}  "
            f"{r['single_p50_us']:>8.1f} us  {r['single_p99_us']:>8.1f} us"
            f"  {r['pure_python_per_s']:>12,.0f}  {r['pure_python_indexed_per_s']:>12,.0f}"
            f"  {r['ratio']:>8,.0f}x  {r['ratio_indexed']:>8,.1f}x"
        )
    print(
        f"{'+ gang':>8}  {gang['placements_per_s']:>21,.0f}  {gang['single_p50_us']:>8.1f} us"
        f"  {gang['single_p99_us']:>8.1f} us   (10,000 workers, an 8-GPU task blocked on every round)"
    )
    print(
        f"{'':>8}  blocked / free, measured in turn: batch {gang['batch_ratio']:.2f}x the rate,"
        f" one placement {gang['single_p50_ratio']:.2f}x the p50 and {gang['single_p99_ratio']:.2f}x the p99"
    )
    print("scan: every worker filtered and scored per task; indexed: PyIndex, the core's per-shape heap of ready")
    print("workers in Python (same decisions, index built untimed, no fair queue, no warm keys, no explanations)")
    print(f"(median of rates: {statistics.median(r['placements_per_s'] for r in rows):,.0f}/s)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_core.json").write_text(json.dumps({"rows": rows, "blocked_gang": gang}, indent=2))
    plot(rows, out / "bench_core.png")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "blocked_gang": gang}, indent=2))
    print(f"wrote {out / 'bench_core.json'} and {out / 'bench_core.png'}")


if __name__ == "__main__":
    main()
