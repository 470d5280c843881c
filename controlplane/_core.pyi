"""Placement core of gpucp (Rust, PyO3): the queue, the worker table, placement and deadlines.

Every identifier crossing this boundary is an integer handle chosen by the caller (tasks) or by
the core (workers). The core makes decisions only; it never does I/O.

Priorities are 0..3 = LOW, NORMAL, HIGH, URGENT. Times are milliseconds on the caller's clock.
"""

from typing import final

__version__: str

class CoreError(Exception):
    """Base class of every error the core raises."""

class UnknownHandle(CoreError):
    """A task or worker handle the core does not know."""

class InvalidArgument(CoreError):
    """An argument outside its range (e.g. a priority above 3, a weight below 0)."""

@final
class Scheduler:
    def __init__(
        self,
        *,
        heartbeat_timeout_ms: int = 10_000,
        w_availability: float = 0.5,
        w_success: float = 0.3,
        w_speed: float = 0.2,
    ) -> None: ...

    # -- shapes: a task's requirements plus its kind, interned once and reused by many tasks
    def shape(
        self,
        kind: str,
        gpus: int,
        min_gpu_memory_mb: int,
        gpu_models: list[str],
        backend: str,
        labels: list[str],
        min_compute_capability: float,
    ) -> int:
        """Intern a requirement shape and return its id (the same inputs give the same id)."""

    # -- the queue
    def push(self, task: int, shape: int, priority: int, seq: int, timeout_ms: int) -> None:
        """Queue a task. Order: higher priority first, then lower seq. timeout_ms 0 = none."""
    def push_many(
        self,
        tasks: list[int],
        shapes: list[int],
        priorities: list[int],
        seqs: list[int],
        timeouts_ms: list[int],
    ) -> None:
        """push() for many tasks in one call."""
    def remove(self, task: int) -> bool:
        """Drop a pending task from the queue; False if it was not pending."""
    def pending(self) -> int: ...
    def pending_by_priority(self) -> list[int]:
        """Queue depth for LOW, NORMAL, HIGH, URGENT."""

    # -- workers
    def add_worker(
        self,
        slots: int,
        gpus: list[tuple[int, float, str]],
        backend: str,
        labels: list[str],
        kinds: list[str],
        now_ms: int,
    ) -> int:
        """Register a worker; gpus are (memory_total_mb, compute_capability, name) by index."""
    def remove_worker(self, worker: int) -> list[int]:
        """Forget a worker; returns the tasks that were placed on it (no longer tracked)."""
    def heartbeat(self, worker: int, now_ms: int) -> None:
        """Push the worker's liveness deadline to now_ms + heartbeat_timeout_ms."""
    def set_draining(self, worker: int, draining: bool) -> None:
        """A draining worker keeps its tasks but receives no new ones."""
    def worker_stats(self, worker: int) -> tuple[int, int, float, float, int, int]:
        """(slots, free_slots, success_rate, speed, succeeded, failed)."""
    def workers(self) -> int: ...
    def slots(self) -> tuple[int, int]:
        """(total, free) over live, non-draining workers."""

    # -- placement
    def place(self, now_ms: int, max_tasks: int) -> list[tuple[int, int, list[int]]]:
        """Place up to max_tasks queued tasks: [(task, worker, gpu_indices)]. Releases the GIL."""
    def attach(self, task: int, worker: int, gpu_indices: list[int], shape: int, timeout_ms: int, now_ms: int) -> None:
        """Record a task already running on a worker (re-attached after a reconnect or restart)."""
    def finish(self, task: int, succeeded: bool, runtime_ms: int) -> int:
        """A placed task ended: free its slot and GPUs, learn from it; returns its worker."""
    def release(self, task: int) -> int:
        """A placed task left its worker without an outcome (cancelled, lost); returns the worker."""
    def explain(self, shape: int, priority: int) -> str:
        """Why a pending task of this shape and priority is not running, in words."""

    # -- deadlines
    def next_deadline_ms(self) -> int | None:
        """The earliest heartbeat or task deadline, or None when nothing is tracked."""
    def expired(self, now_ms: int) -> tuple[list[int], list[int]]:
        """(workers whose heartbeats stopped, placed tasks past their timeout) as of now_ms.

        Each is reported once. Expired workers are not removed: call remove_worker().
        """
