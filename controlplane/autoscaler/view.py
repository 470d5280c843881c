"""What the autoscaler and its cost tracker read of the control plane, and nothing more.

ControlView is the whole of it: the specs of pending tasks, the connected workers as plain
snapshots, a worker's price, one learned runtime, one task's current attempt, and the stream
of task events. The
autoscaler never touches the control plane's records, connections or core; `drain` is the one
thing it asks the control plane to do. control_view.py builds this view from a ControlPlane.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Protocol

from gpucp.v1 import common_pb2, scheduler_pb2

__all__ = ["ControlView", "EventsMissed", "TaskSnapshot", "WorkerPrice", "WorkerSnapshot"]


class EventsMissed(Exception):
    """The task event stream fell behind and dropped events; read task records to catch up."""


@dataclass(frozen=True)
class WorkerSnapshot:
    """A connected worker as the autoscaler sees it."""

    worker_id: str
    provider: str
    labels: tuple[str, ...] = ()
    gpus: int = 0
    slots: int = 1
    busy_slots: int = 0
    finished: int = 0  # tasks it has finished (succeeded or failed) since it registered
    cost_per_hour: float = 0.0

    @property
    def pod_id(self) -> str:
        """The RunPod pod it runs in: its pod= label (set by the agent in a pod), else its id."""
        return next((label[4:] for label in self.labels if label.startswith("pod=")), self.worker_id)


@dataclass(frozen=True)
class WorkerPrice:
    """What a worker costs and how it divides: by GPUs, or by slots for tasks that use no GPU."""

    cost_per_hour: float
    gpus: int
    slots: int


@dataclass(frozen=True)
class TaskSnapshot:
    """A task's current attempt, for charging it to its tenant."""

    tenant: str
    state: int  # a common_pb2.TaskState
    attempt: int
    gpus: float  # GPUs the current attempt holds; a share of one GPU as its fraction (gpu_milli / 1000)
    started_at_ms: int
    finished_at_ms: int
    terminal: bool


class ControlView(Protocol):
    """The read-only view of the control plane the autoscaler works from."""

    def pending_specs(self) -> Iterable[common_pb2.TaskSpec]:
        """The spec of every task waiting to be placed (not in a retry backoff or running)."""
        ...

    def connected_workers(self) -> Iterable[WorkerSnapshot]:
        """Every worker whose stream is connected and not declared lost."""
        ...

    def worker_price(self, worker_id: str) -> WorkerPrice | None:
        """A connected worker's price and size as it registered them, or None."""
        ...

    def predict_runtime_s(self, spec: common_pb2.TaskSpec, worker_id: str) -> float | None:
        """What the core has learned a task like `spec` takes on this worker (None: not yet)."""
        ...

    def task(self, task_id: str) -> TaskSnapshot | None:
        """A task the control plane still holds in memory, or None."""
        ...

    def task_events(self) -> AsyncIterator[scheduler_pb2.TaskEvent]:
        """Every task's state changes from now on; raises EventsMissed if it falls behind."""
        ...

    def drain(self, worker_id: str) -> bool:
        """Give the worker no new work; False when no such worker is connected."""
        ...
