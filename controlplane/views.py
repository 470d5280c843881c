"""Read views: what the control plane shows of its tasks and workers, built without changing them."""

from __future__ import annotations

from collections.abc import Iterable

from controlplane.book import ASSIGNED, PENDING, RUNNING, Hold, TaskBook
from controlplane.core import Core
from controlplane.dispatch import Dispatcher
from controlplane.fleet import Fleet
from controlplane.lifecycle import Lifecycle
from controlplane.record import TaskRecord
from gpucp.v1 import admin_pb2, common_pb2

# ClusterStats names at most this many tenants' queues (the deepest), whatever the number of tenants.
QUEUE_TENANTS_SHOWN = 100


class Views:
    def __init__(self, book: TaskBook, core: Core, fleet: Fleet, tasks: Lifecycle, dispatcher: Dispatcher) -> None:
        self.book = book
        self.core = core
        self.fleet = fleet
        self.tasks = tasks
        self.dispatcher = dispatcher

    def pending_reason(self, rec: TaskRecord) -> str:
        entry = self.book.live.get(rec.handle)
        if entry is None or entry.rec is not rec:
            return ""  # finished, or a stored copy read back after it left memory
        if entry.hold is Hold.ORPHANED:
            return f"waiting for worker {rec.worker_id} to re-attach after a control-plane restart"
        if rec.state != PENDING:
            return ""
        if entry.hold is Hold.BACKOFF and not rec.error:  # no attempt failed: Lifecycle.store_failed held it
            return "waiting to be placed again: its payload could not be read from the store"
        if entry.hold is Hold.BACKOFF:
            return f"waiting to retry after attempt {rec.attempt} failed: {rec.error}"
        return self.core.why_pending(rec)

    def describe(self, rec: TaskRecord, *, full: bool = True) -> common_pb2.Task:
        """The Task as services show it; without `full`, no payload and no result (list views)."""
        task = rec.to_proto(self.pending_reason(rec), full=full)
        entry = self.book.live.get(rec.handle)
        if rec.state in (ASSIGNED, RUNNING) and entry is not None and entry.hold is Hold.PLACED:
            task.placement = self.core.why_placed(rec)
        return task

    def predict_runtime_s(self, spec: common_pb2.TaskSpec, worker_id: str) -> float | None:
        """What the core has learned a task like `spec` takes on this worker (None: not yet)."""
        conn = self.fleet.workers.get(worker_id)
        if conn is None:
            return None
        ms = self.core.scheduler.predict_runtime_ms(self.core.shape(spec), conn.handle)
        return None if ms is None else ms / 1000

    def cluster_stats(self) -> admin_pb2.ClusterStats:
        total, free = self.core.scheduler.slots()
        by_prio = self.core.scheduler.pending_by_priority()
        return admin_pb2.ClusterStats(
            workers=len(self.fleet.workers),
            slots_total=total,
            slots_free=free,
            tasks_by_state={
                common_pb2.TaskState.Name(s): n for s, n in self.book.counts.items() if n > 0
            },
            queue_depth_by_priority={
                common_pb2.Priority.Name(i + 1): n for i, n in enumerate(by_prio)
            },
            placements_per_second=self.dispatcher.placements_per_second(),
            stale_updates=self.tasks.stale_updates,
            queue_depth_by_tenant={
                t: n for t, n in self.book.pending_by_tenant.most_common(QUEUE_TENANTS_SHOWN) if n > 0
            },
        )

    def worker_infos(self, ids: Iterable[str] | None = None) -> list[admin_pb2.WorkerInfo]:
        """Every connected worker, or those of `ids` that are connected."""
        workers = self.fleet.workers
        conns = workers.values() if ids is None else (workers[i] for i in ids if i in workers)
        out = []
        for conn in conns:
            stats = self.core.scheduler.worker_stats(conn.handle)
            reg = conn.register
            out.append(
                admin_pb2.WorkerInfo(
                    worker_id=conn.worker_id,
                    provider=reg.provider,
                    slots=stats.slots,
                    slots_free=stats.free_slots,
                    gpus=reg.gpus,
                    backend=reg.backend,
                    labels=reg.labels,
                    kinds=reg.kinds,
                    cost_per_hour=reg.cost_per_hour,
                    health=self.fleet.health(conn),
                    success_rate=stats.success_rate,
                    speed=stats.speed,
                    tasks_succeeded=stats.succeeded,
                    tasks_failed=stats.failed,
                    connected_at_ms=conn.connected_at_ms,
                    last_heartbeat_ms=conn.last_heartbeat_ms,
                    gpu_stats=conn.gpu_stats,
                )
            )
        return out
