"""The task store as its table grows: a task's three writes, and the sweep that deletes old tasks.

Two stores (the real `Store`, SQLite WAL, group commit) are filled side by side in batches of
1,000 tasks, each inserted, saved as assigned and saved as finished, one commit per step as the
control plane makes them: one with time-ordered task ids (UUIDv7, what the control plane uses)
and one with random ids (UUIDv4), so the cost of an id landing on a random page of the id index
shows as a ratio from the same run. Then the sweep's two reads and its deletes on the v7 store:
a sweep that finds nothing, and deleting the older half in batches of 500.

    python benches/bench_store.py             # 1,000,000 tasks per store
    python benches/bench_store.py --tasks 200000
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from common import machine, pyplot, save_figure, write_json
from controlplane.control import SWEEP_BATCH
from controlplane.record import TaskRecord, new_task_id
from controlplane.store import SqliteStore as Store
from gpucp import task_spec
from gpucp.v1 import common_pb2

BATCH = 1_000
# Submission times are spaced 1 ms apart from here, so a cutoff splits the table where it says.
T0_MS = 1_700_000_000_000


async def fill(store: Store, new_id: Callable[[], str], first: int) -> float:
    """Store one batch through its life (insert, assigned, finished); us per task."""
    spec = task_spec("noop", b"x" * 100)
    recs = [
        TaskRecord(handle=h, id=new_id(), tenant="default", spec=spec, created_at_ms=T0_MS + h)
        for h in range(first, first + BATCH)
    ]
    start = time.perf_counter()
    await store.insert(recs)
    for rec in recs:
        rec.state, rec.attempt, rec.worker_id, rec.gpu_indices = common_pb2.TASK_STATE_ASSIGNED, 1, "w", [0]
    await store.save(recs)
    for rec in recs:
        rec.state, rec.result, rec.finished_at_ms = common_pb2.TASK_STATE_SUCCEEDED, b"r" * 50, rec.created_at_ms + 50
    await store.save(recs)
    return (time.perf_counter() - start) / BATCH * 1e6


async def sweep(store: Store, cutoff_ms: int) -> dict[str, float]:
    """What the control plane's sweep costs: a read that finds nothing, then deleting up to cutoff."""
    start = time.perf_counter()
    assert not await store.expired(T0_MS, SWEEP_BATCH)
    idle_ms = (time.perf_counter() - start) * 1000
    commits: list[float] = []
    deleted = 0
    start = time.perf_counter()
    while expired := await store.expired(cutoff_ms, SWEEP_BATCH):
        done = store.delete([handle for handle, *_ in expired])
        began = time.perf_counter()
        await done  # with synchronous=NORMAL the commit runs on the loop: this is how long it holds it
        commits.append((time.perf_counter() - began) * 1000)
        deleted += len(expired)
    elapsed = time.perf_counter() - start
    return {
        "idle_sweep_ms": idle_ms,
        "deleted": float(deleted),
        "deleted_per_s": deleted / elapsed,
        "commit_p50_ms": statistics.median(commits),
        "commit_max_ms": max(commits),
    }


async def run(tasks: int, every: int) -> tuple[list[dict[str, float]], dict[str, float]]:
    with tempfile.TemporaryDirectory(prefix="gpucp-bench-store-") as tmp:
        stores = {"v7": Store(str(Path(tmp) / "v7.db")), "v4": Store(str(Path(tmp) / "v4.db"))}
        ids = {"v7": new_task_id, "v4": lambda: uuid.uuid4().hex}
        rows: list[dict[str, float]] = []
        window: dict[str, list[float]] = {"v7": [], "v4": []}
        try:
            for first in range(1, tasks + 1, BATCH):
                for name in ("v7", "v4"):  # interleaved: both see the same moments of the machine
                    window[name].append(await fill(stores[name], ids[name], first))
                stored = first + BATCH - 1
                if stored % every == 0 or stored == BATCH:
                    rows.append({"stored": stored, **{n: statistics.median(w) for n, w in window.items()}})
                    window = {"v7": [], "v4": []}
            swept = await sweep(stores["v7"], T0_MS + tasks // 2)
        finally:
            for store in stores.values():
                store.close()
    return rows, swept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=1_000_000, help="tasks stored in each store")
    args = parser.parse_args()
    every = max(BATCH, args.tasks // 4 // BATCH * BATCH)
    rows, s = asyncio.run(run(args.tasks, every))
    print("a task's three writes (insert, assigned, finished), us per task, median of the batches since the last row")
    print(f"{'stored':>10} {'v7 ids':>8} {'v4 ids':>8} {'v4 / v7':>8}")
    for r in rows:
        print(f"{r['stored']:>10,} {r['v7']:>8.1f} {r['v4']:>8.1f} {r['v4'] / r['v7']:>7.2f}x")
    print(f"sweep on {args.tasks:,} finished tasks: one that finds nothing {s['idle_sweep_ms']:.1f} ms; deleted "
          f"{s['deleted']:,.0f} at {s['deleted_per_s']:,.0f}/s, a commit of {SWEEP_BATCH} holds the loop "
          f"{s['commit_p50_ms']:.1f} ms (median), {s['commit_max_ms']:.1f} ms (max)")
    path = write_json("store.json", {"machine": machine(), "tasks": args.tasks, "rows": rows, "sweep": s})
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name in ("v7", "v4"):
        ax.plot([r["stored"] for r in rows], [r[name] for r in rows], marker="o", label=f"{name} ids")
    ax.set_xlabel("tasks stored")
    ax.set_ylabel("us per task (3 writes)")
    ax.legend()
    png = save_figure(fig, "store.png")
    print(f"wrote {path} and {png}")


if __name__ == "__main__":
    main()
