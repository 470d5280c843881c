"""The ControlView the autoscaler reads, built from a running ControlPlane.

This is the only module of the autoscaler that knows the ControlPlane; it uses its public
surface: `book` (its live tasks), `tasks`, `workers`, `views` (worker_infos, predict_runtime_s), `watch`/`unwatch` and
`drain`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

from controlplane.autoscaler.view import EventsMissed, TaskSnapshot, WorkerPrice, WorkerSnapshot
from controlplane.control import ControlPlane
from controlplane.errors import ControlError, ResourceExhausted
from gpucp.v1 import admin_pb2, common_pb2, scheduler_pb2

__all__ = ["ControlPlaneView"]


class ControlPlaneView:
    """A ControlView over a ControlPlane in the same process."""

    def __init__(self, control: ControlPlane) -> None:
        self._control = control

    def pending_specs(self) -> Iterator[common_pb2.TaskSpec]:
        for entry in self._control.book.live.values():  # unfinished tasks only, not the recent finished
            if entry.rec.state == common_pb2.TASK_STATE_PENDING:
                yield entry.rec.spec

    def connected_workers(self) -> Iterator[WorkerSnapshot]:
        for info in self._control.views.worker_infos():
            yield _snapshot(info)

    def worker_price(self, worker_id: str) -> WorkerPrice | None:
        conn = self._control.workers.get(worker_id)
        if conn is None:
            return None
        reg = conn.register
        return WorkerPrice(reg.cost_per_hour, len(reg.gpus), max(1, reg.slots))

    def predict_runtime_s(self, spec: common_pb2.TaskSpec, worker_id: str) -> float | None:
        return self._control.views.predict_runtime_s(spec, worker_id)

    def task(self, task_id: str) -> TaskSnapshot | None:
        rec = self._control.tasks.get(task_id)
        if rec is None:
            return None
        return TaskSnapshot(
            tenant=rec.tenant,
            state=rec.state,
            attempt=rec.attempt,
            gpus=gpus_held(rec.spec, len(rec.gpu_indices)),
            started_at_ms=rec.started_at_ms,
            finished_at_ms=rec.finished_at_ms,
            terminal=rec.terminal,
        )

    async def task_events(self) -> AsyncIterator[scheduler_pb2.TaskEvent]:
        watcher = self._control.watch([], "")
        try:
            async for event in watcher.events():
                yield event
        except ResourceExhausted as exc:
            raise EventsMissed(str(exc)) from None
        finally:
            self._control.unwatch(watcher)

    def drain(self, worker_id: str) -> bool:
        try:
            self._control.drain(worker_id)
        except ControlError:  # not connected (any more): nothing runs there
            return False
        return True


def _snapshot(info: admin_pb2.WorkerInfo) -> WorkerSnapshot:
    return WorkerSnapshot(
        worker_id=info.worker_id,
        provider=info.provider,
        labels=tuple(info.labels),
        gpus=len(info.gpus),
        slots=info.slots,
        busy_slots=info.slots - info.slots_free,
        finished=info.tasks_succeeded + info.tasks_failed,
        cost_per_hour=info.cost_per_hour,
    )


def gpus_held(spec: common_pb2.TaskSpec, gpus: int) -> float:
    """GPUs an attempt given `gpus` GPUs is charged for: a share of one GPU as its fraction."""
    milli = spec.requirements.gpu_milli
    return milli / 1000 if milli and gpus else float(gpus)
