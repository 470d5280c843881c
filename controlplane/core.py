"""The adapter to the Rust core: configuration in, names interned to handles, typed results out.

The core knows tasks, workers, tenants, affinity keys and requirement shapes only as integers;
this module hands those out and keeps the maps, so the rest of the control plane speaks in
records and names.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence

from controlplane._core import CoreError, Scheduler
from controlplane.config import ServerConfig
from controlplane.store import TaskRecord
from gpucp.v1 import common_pb2

_WORKER_HANDLE = re.compile(r"\bworker (\d+)\b")  # how the core names workers in its explanations


def mono_ms() -> int:
    """The clock the core's deadlines run on: never jumps with the wall clock."""
    return int(time.monotonic() * 1000)


def core_priority(priority: int) -> int:
    """Proto Priority (UNSPECIFIED=NORMAL, LOW..URGENT = 1..4) to the core's classes 0..3."""
    return 1 if priority == common_pb2.PRIORITY_UNSPECIFIED else priority - 1


class Core:
    """The control plane's one `Scheduler`, and the handles it names things by."""

    def __init__(self, config: ServerConfig, worker_name: Callable[[int], str | None]) -> None:
        self.config = config
        self.scheduler = Scheduler(config.scheduler)
        for kind, policy in config.kind_policies:
            self.scheduler.set_kind_policy(kind, policy)
        self._worker_name = worker_name
        self._tenant_weights = dict(config.tenant_weights)
        self._tenants: dict[str, int] = {}
        self._affinities: dict[str, int] = {"": 0}
        self._shapes: dict[tuple[object, ...], int] = {}

    # -- interning ------------------------------------------------------------------------------

    def shape(self, spec: common_pb2.TaskSpec) -> int:
        req = spec.requirements
        key = (
            spec.kind,
            req.gpus,
            req.min_gpu_memory_mb,
            tuple(req.gpu_models),
            req.backend,
            tuple(req.labels),
            req.min_compute_capability,
        )
        shape = self._shapes.get(key)
        if shape is None:
            shape = self._shapes[key] = self.scheduler.shape(
                spec.kind,
                req.gpus,
                req.min_gpu_memory_mb,
                list(req.gpu_models),
                req.backend,
                list(req.labels),
                req.min_compute_capability,
            )
        return shape

    def tenant(self, name: str) -> int:
        tenant = self._tenants.get(name)
        if tenant is None:
            tenant = self._tenants[name] = len(self._tenants) + 1
            weight = self._tenant_weights.get(name)
            if weight is not None:
                self.scheduler.set_tenant_weight(tenant, weight)
        return tenant

    def affinity(self, key: str) -> int:
        affinity = self._affinities.get(key)
        if affinity is None:
            affinity = self._affinities[key] = len(self._affinities)
        return affinity

    # -- tasks ----------------------------------------------------------------------------------

    def timeout_ms(self, rec: TaskRecord) -> int:
        return rec.spec.timeout_ms or self.config.default_timeout_ms

    def push(self, recs: Sequence[TaskRecord], avoid_worker: int | None = None) -> None:
        """Queue tasks; `avoid_worker` (a retry's last worker) is used only if nobody else can."""
        self.scheduler.push_many(
            [r.handle for r in recs],
            [self.shape(r.spec) for r in recs],
            [core_priority(r.spec.priority) for r in recs],
            [r.handle for r in recs],  # FIFO by arrival; a retried task keeps its place
            [self.timeout_ms(r) for r in recs],
            avoid_workers=[avoid_worker] * len(recs),
            tenants=[self.tenant(r.tenant) for r in recs],
            affinities=[self.affinity(r.spec.affinity_key) for r in recs],
            hard_affinities=[r.spec.hard_affinity for r in recs],
            now_ms=mono_ms(),
        )

    def attach(self, rec: TaskRecord, worker: int) -> None:
        """Hold a task that an agent still runs on `worker` (re-attached, not placed); CoreError if it cannot."""
        self.scheduler.attach(
            rec.handle, worker, rec.gpu_indices, self.shape(rec.spec), self.timeout_ms(rec), mono_ms()
        )

    # -- explanations ---------------------------------------------------------------------------

    def _named(self, text: str) -> str:
        def name(match: re.Match[str]) -> str:
            found = self._worker_name(int(match.group(1)))
            return found if found is not None else match.group(0)

        return _WORKER_HANDLE.sub(name, text)

    def why_pending(self, rec: TaskRecord) -> str:
        return self.scheduler.explain(self.shape(rec.spec), core_priority(rec.spec.priority))

    def why_placed(self, rec: TaskRecord) -> str:
        try:
            return self._named(self.scheduler.explain_placement(rec.handle))
        except CoreError:
            return ""  # re-attached rather than placed, or its decision aged out of the core's memory
