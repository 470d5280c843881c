"""The task store: a task's three writes as the table grows, the sweep, durable throughput on
SQLite and PostgreSQL, and a million pending tasks.

Two stores (the real `Store`, SQLite WAL, group commit) are filled side by side in batches of
1,000 tasks, each inserted, saved as assigned and saved as finished, one commit per step as the
control plane makes them: one with time-ordered task ids (UUIDv7, what the control plane uses)
and one with random ids (UUIDv4), so the cost of an id landing on a random page of the id index
shows as a ratio from the same run. Then the sweep's two reads and its deletes on the v7 store:
a sweep that finds nothing, and deleting the older half in batches of 500.

Then end to end on loopback (`gpucp serve`, agents running `noop`), the same burst against each
store in turn: SQLite with --sync normal (a commit survives the process, not the machine), SQLite
with --sync full and PostgreSQL (a server of Debian's packages started here, fsync and
synchronous_commit on): both of these fsync every group commit, so what they accept survives a
power loss. Accepted/s is submissions answered (each one committed), done/s until all finished.

Last, `--pending` tasks submitted to a control plane with no agents, on each store: its resident
memory with them queued, and the time a restart after SIGKILL takes until it serves them all again
(beside the time an empty control plane takes to start).

    python benches/bench_store.py             # 1,000,000 tasks per store, a burst of 20,000, 1,000,000 pending
    python benches/bench_store.py --tasks 0 --burst 20000 --pending 0
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
from typing import Any

from common import (
    PYTHONPATH,
    machine,
    pyplot,
    rss_bytes,
    save_figure,
    start_agents,
    start_control_plane,
    stop_processes,
    submit_burst,
    wait_for_workers,
    write_json,
)
from controlplane.control import SWEEP_BATCH
from controlplane.record import TaskRecord, new_task_id
from controlplane.sqlitestore import SqliteStore as Store
from gpucp import Client, task_spec, testdb, testing
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


def durable_burst(n: int, agents: int, slots: int, postgres: testdb.PostgresServer) -> list[dict[str, Any]]:
    """Accepted/s and done/s of a burst of n noop tasks, per store (one control plane each, in turn)."""
    rows: list[dict[str, Any]] = []
    stores: list[tuple[str, list[str], str | None]] = [
        ("SQLite --sync normal", ["--sync", "normal"], None),
        ("SQLite --sync full", ["--sync", "full"], None),
        ("PostgreSQL", [], postgres.database()),
    ]
    for name, flags, db in stores:
        with tempfile.TemporaryDirectory(prefix="gpucp-bench-burst-") as tmp:
            address, cp = start_control_plane(Path(tmp), "--max-queue", str(n), *flags, db=db)
            procs = start_agents(address, Path(tmp), agents, "--slots", str(slots))
            try:
                with Client(address) as client:
                    wait_for_workers(client, agents)
                    client.run("noop", wait_s=30)  # connections and caches warm
                    accepted, done = submit_burst(client, task_spec("noop"), n)
            finally:
                stop_processes(procs)
                stop_processes([cp])
        rows.append({"store": name, "accept_per_s": n / accepted, "done_per_s": n / done})
    return rows


def pending(n: int, postgres: testdb.PostgresServer) -> list[dict[str, Any]]:
    """Per store: RSS with n tasks pending, and the start time of a restart after SIGKILL with them
    (and of the first, empty, start)."""
    rows: list[dict[str, Any]] = []
    spec = task_spec("noop")
    for name, db in (("SQLite", None), ("PostgreSQL", postgres.database())):
        with tempfile.TemporaryDirectory(prefix="gpucp-bench-pending-") as tmp:
            cp = testing.ControlPlaneProcess(
                Path(tmp), "--max-queue", str(n), db=db or Path(tmp) / "bench.db", log_level="WARNING",
                pythonpath=PYTHONPATH,
            )
            try:
                start = time.perf_counter()
                cp.start(timeout_s=600)
                empty_s = time.perf_counter() - start
                empty_rss = rss_bytes(cp.pid)
                start = time.perf_counter()
                with cp.client() as client:
                    for i in range(0, n, BATCH):
                        client.submit_many([spec] * min(BATCH, n - i))
                submit_s = time.perf_counter() - start
                full_rss = rss_bytes(cp.pid)
                cp.kill()
                start = time.perf_counter()
                cp.start(timeout_s=600)
                restart_s = time.perf_counter() - start
                with cp.client() as client:
                    queued = client.stats().tasks_by_state.get("TASK_STATE_PENDING", 0)
                if queued != n:
                    raise RuntimeError(f"{name}: {queued} of {n} pending tasks came back after the restart")
                rows.append({
                    "store": name, "empty_start_s": empty_s, "empty_rss_mb": empty_rss / 2**20,
                    "accept_per_s": n / submit_s, "rss_mb": full_rss / 2**20, "restart_s": restart_s,
                    "restart_rss_mb": rss_bytes(cp.pid) / 2**20,
                })
            finally:
                cp.stop()
    return rows


def table(tasks: int) -> dict[str, Any]:
    """The three writes as the table grows, and the sweep; printed, plotted, returned."""
    every = max(BATCH, tasks // 4 // BATCH * BATCH)
    rows, s = asyncio.run(run(tasks, every))
    print("a task's three writes (insert, assigned, finished), us per task, median of the batches since the last row")
    print(f"{'stored':>10} {'v7 ids':>8} {'v4 ids':>8} {'v4 / v7':>8}")
    for r in rows:
        print(f"{r['stored']:>10,} {r['v7']:>8.1f} {r['v4']:>8.1f} {r['v4'] / r['v7']:>7.2f}x")
    print(f"sweep on {tasks:,} finished tasks: one that finds nothing {s['idle_sweep_ms']:.1f} ms; deleted "
          f"{s['deleted']:,.0f} at {s['deleted_per_s']:,.0f}/s, a commit of {SWEEP_BATCH} holds the loop "
          f"{s['commit_p50_ms']:.1f} ms (median), {s['commit_max_ms']:.1f} ms (max)")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name in ("v7", "v4"):
        ax.plot([r["stored"] for r in rows], [r[name] for r in rows], marker="o", label=f"{name} ids")
    ax.set_xlabel("tasks stored")
    ax.set_ylabel("us per task (3 writes)")
    ax.legend()
    print(f"wrote {save_figure(fig, 'store.png')}")
    return {"tasks": tasks, "rows": rows, "sweep": s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=1_000_000, help="tasks stored in each store (0: skip)")
    parser.add_argument("--burst", type=int, default=20_000, help="tasks of the durable burst per store (0: skip)")
    parser.add_argument("--agents", type=int, default=4, help="agents running the burst")
    parser.add_argument("--slots", type=int, default=4, help="slots per agent")
    parser.add_argument("--pending", type=int, default=1_000_000, help="pending tasks per store (0: skip)")
    args = parser.parse_args()
    out: dict[str, Any] = {"machine": machine()}
    if args.tasks:
        out["table"] = table(args.tasks)
    if args.burst or args.pending:
        with testdb.PostgresServer(durable=True) as postgres:
            if args.burst:
                out["burst"] = durable_burst(args.burst, args.agents, args.slots, postgres)
                print(f"burst of {args.burst:,} noop tasks, end to end on loopback, {args.agents} agents x "
                      f"{args.slots} slots, one control plane per store in turn")
                print(f"{'store':<22} {'accepted/s':>11} {'done/s':>9}")
                for r in out["burst"]:
                    print(f"{r['store']:<22} {r['accept_per_s']:>11,.0f} {r['done_per_s']:>9,.0f}")
            if args.pending:
                out["pending"] = pending(args.pending, postgres)
                print(f"{args.pending:,} pending tasks on one control plane (no agents), restart after SIGKILL")
                print(f"{'store':<11} {'accepted/s':>11} {'RSS MB':>8} {'restart s':>10} {'RSS after':>10} "
                      f"{'empty start s':>14} {'empty RSS MB':>13}")
                for r in out["pending"]:
                    print(f"{r['store']:<11} {r['accept_per_s']:>11,.0f} {r['rss_mb']:>8,.0f} {r['restart_s']:>10.1f} "
                          f"{r['restart_rss_mb']:>10,.0f} {r['empty_start_s']:>14.1f} {r['empty_rss_mb']:>13,.0f}")
    print(f"wrote {write_json('store.json', out)}")


if __name__ == "__main__":
    main()
