"""The adapter to the Rust core: configuration in, names interned to handles, typed results out.

The core knows tasks, workers, tenants, affinity keys and requirement shapes only as integers;
this module hands those out and keeps the maps, so the rest of the control plane speaks in
records and names.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Sequence

from controlplane._core import CoreError, PendingReason, PlacementExplanation, Scheduler
from controlplane.config import ServerConfig
from controlplane.record import TaskRecord
from gpucp.v1 import common_pb2


def mono_ms() -> int:
    """The clock the core's deadlines run on: never jumps with the wall clock."""
    return int(time.monotonic() * 1000)


def core_priority(priority: int) -> int:
    """Proto Priority (UNSPECIFIED=NORMAL, LOW..URGENT = 1..4) to the core's classes 0..3."""
    return 1 if priority == common_pb2.PRIORITY_UNSPECIFIED else priority - 1


# What the core tells tasks apart by: kind, GPUs, min GPU memory (MiB), GPU models, backend,
# labels, min compute capability, GPU share (thousandths, 0 = whole GPUs), GPU memory it reserves,
# runtime class (runtimes are learned per kind and class).
ShapeKey = tuple[str, int, int, tuple[str, ...], str, tuple[str, ...], float, int, int, str]


def shape_key(spec: common_pb2.TaskSpec) -> ShapeKey:
    req = spec.requirements
    return (
        spec.kind,
        req.gpus,
        req.min_gpu_memory_mb,
        tuple(req.gpu_models),
        req.backend,
        tuple(req.labels),
        req.min_compute_capability,
        req.gpu_milli,
        req.gpu_memory_mb,
        spec.runtime_class,
    )


def core_shape(scheduler: Scheduler, key: ShapeKey) -> int:
    """The core's handle for a shape (the core interns it: the same key gives the same handle)."""
    kind, gpus, memory_mb, models, backend, labels, cc, milli, reserve_mb, runtime_class = key
    return scheduler.shape(
        kind, gpus, memory_mb, list(models), backend, list(labels), cc,
        gpu_milli=milli, gpu_memory_mb=reserve_mb, runtime_class=runtime_class,
    )


class Core:
    """The control plane's one `Scheduler`, and the handles it names things by."""

    def __init__(self, config: ServerConfig, worker_name: Callable[[int], str | None]) -> None:
        self.config = config
        self.scheduler = Scheduler(config.scheduler)
        for kind, policy in config.kind_policies:
            self.scheduler.set_kind_policy(kind, policy)
        self._worker_name = worker_name
        self._tenant_weights = dict(config.tenant_weights)
        self._tenant_max_gpus = dict(config.tenant_max_running_gpus)
        self._tenants: dict[str, int] = {}
        self._affinities: dict[str, int] = {"": 0}
        self._shapes: dict[ShapeKey, int] = {}
        self._queued: collections.Counter[int] = collections.Counter()  # tasks in the core's queue by shape

    # -- interning ------------------------------------------------------------------------------

    def shape(self, spec: common_pb2.TaskSpec) -> int:
        key = shape_key(spec)
        shape = self._shapes.get(key)
        if shape is None:
            shape = self._shapes[key] = core_shape(self.scheduler, key)
        return shape

    def tenant(self, name: str) -> int:
        tenant = self._tenants.get(name)
        if tenant is None:
            tenant = self._tenants[name] = len(self._tenants) + 1
            weight = self._tenant_weights.get(name)
            if weight is not None:
                self.scheduler.set_tenant_weight(tenant, weight)
            max_gpus = self._tenant_max_gpus.get(name)
            if max_gpus is not None:
                self.scheduler.set_tenant_max_gpus(tenant, max_gpus)
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
        shapes = [self.shape(r.spec) for r in recs]
        self._queued.update(shapes)
        for r, shape in zip(recs, shapes, strict=True):
            if r.spec.expected_runtime_ms:
                self.scheduler.expect_runtime(shape, r.spec.expected_runtime_ms)
        self.scheduler.push_many(
            [r.handle for r in recs],
            shapes,
            [core_priority(r.spec.priority) for r in recs],
            [r.handle for r in recs],  # FIFO by arrival; a retried task keeps its place
            [self.timeout_ms(r) for r in recs],
            avoid_workers=[avoid_worker] * len(recs),
            tenants=[self.tenant(r.tenant) for r in recs],
            affinities=[self.affinity(r.spec.affinity_key) for r in recs],
            hard_affinities=[r.spec.hard_affinity for r in recs],
            now_ms=mono_ms(),
        )


    def remove(self, rec: TaskRecord) -> None:
        """Take a queued task out of the queue."""
        if self.scheduler.remove(rec.handle):
            self.unqueued(rec)

    def unqueued(self, rec: TaskRecord) -> None:
        """A task left the core's queue (removed, or placed)."""
        shape = self.shape(rec.spec)
        left = self._queued[shape] - 1
        if left > 0:
            self._queued[shape] = left
        else:
            del self._queued[shape]

    def queued_shapes(self) -> list[int]:
        """The shapes of the tasks in the queue."""
        return list(self._queued)
    def attach(self, rec: TaskRecord, worker: int) -> None:
        """Hold a task that an agent still runs on `worker` (re-attached, not placed); CoreError if it cannot."""
        self.scheduler.attach(
            rec.handle, worker, rec.gpu_indices, self.shape(rec.spec), self.timeout_ms(rec), mono_ms()
        )
        self.scheduler.charge_tenant(rec.handle, self.tenant(rec.tenant))

    # -- explanations ---------------------------------------------------------------------------

    def _name(self, worker: int) -> str:
        name = self._worker_name(worker)
        return name if name is not None else f"worker {worker}"  # gone since the core decided

    def why_pending(self, rec: TaskRecord) -> str:
        if rec.spec.requirements.gpus:
            running, cap = self.scheduler.tenant_gpus(self.tenant(rec.tenant))
            if cap is not None and running + rec.spec.requirements.gpus > cap:
                return (
                    f"tenant {rec.tenant} runs {running} of its {cap} GPUs (max_running_gpus): "
                    "it waits for the tenant's running tasks to free GPUs"
                )
        why = self.scheduler.explain(self.shape(rec.spec), core_priority(rec.spec.priority))
        return pending_sentence(why, rec.spec.kind, self._name)

    def why_placed(self, rec: TaskRecord) -> str:
        try:
            why = self.scheduler.explain_placement(rec.handle)
        except CoreError:
            return ""  # re-attached rather than placed, or its decision aged out of the core's memory
        return placement_sentence(why, rec.spec.affinity_key, self._name)


def duration(ms: float) -> str:
    """A wait or a runtime for a person: "850 ms", "3.6 s", "12 min"."""
    if ms < 1000:
        return f"{ms:.0f} ms"
    if ms < 120_000:
        return f"{ms / 1000:.1f} s"
    return f"{ms / 60_000:.0f} min"


def pending_sentence(why: PendingReason, kind: str, name: Callable[[int], str]) -> str:
    """The core's reason a task of `kind` waits, with its estimate and reservation, naming workers by `name`."""
    text = why.reason
    if why.runtime_ms is not None and why.start_in_ms is not None:
        text += (
            f"; tasks of kind '{kind}' take about {duration(why.runtime_ms)} here, "
            f"so it should start in about {duration(why.start_in_ms)}"
        )
    elif why.no_estimate:
        text += f"; no estimate yet of when: no task of kind '{kind}' has finished, and none gave expected_runtime_ms"
    if why.reserved_worker is not None:
        free = (
            f"free in about {duration(why.reserved_free_in_ms)}" if why.reserved_free_in_ms is not None
            else "no estimate yet of when they free"
        )
        text += (
            f"; {name(why.reserved_worker)} is reserved for it (GPUs {why.reserved_gpus}), "
            f"{free}; shorter tasks fill the gap"
        )
    return text


# How the runner-up's score reads after "next best NAME", by policy (round_robin, affinity and fragmentation have none).
_RUNNER_UP_SCORE = {"composite": " at {:.2f}", "least_loaded": " with {:.0%} free", "performance": " at {:.2f}x",
                    "cost": " at {:.3f}"}


def placement_sentence(why: PlacementExplanation, affinity_key: str, name: Callable[[int], str]) -> str:
    """One sentence: the policy, why the winner, and the next best, naming workers by `name`."""
    terms = dict(why.terms)
    key = f"affinity key {affinity_key!r}"
    match why.policy:
        case "composite":
            reason = ", ".join(f"{term} {value:.2f}" for term, value in why.terms) + f" = {why.score:.2f}"
        case "least_loaded":
            reason = f"{terms['availability']:.0%} of its capacity free"
        case "performance":
            reason = f"speed {terms['speed']:.2f}x the fleet at kind '{why.kind}'"
        case "cost":
            reason = (
                f"${terms['cost_per_hour']:.2f}/h x {terms['share']:.2f} of the worker at speed {terms['speed']:.2f}x "
                f"= {why.score:.3f} $/h per unit of speed"
            )
        case "affinity" if why.warm:
            reason = f"{key} is warm there"
        case "affinity":
            reason = f"no warm worker for {key}; least loaded ({terms['availability']:.0%} free)"
        case "fragmentation" if why.warm:
            reason = f"{key} is warm there"
        case "fragmentation":
            reason = "it strands the fewest GPUs the recent mix of tasks could use, then keeps the fewest free"
        case _:
            reason = "it had gone longest without new work"  # round_robin
    text = f"placed on {name(why.worker)} by {why.policy}: {reason}"
    if why.hard_affinity:
        text += " (hard affinity)"
    elif why.policy not in ("affinity", "fragmentation") and why.warm:
        text += f" ({key} warm)"
    if why.runner_up is None:
        return text + "; no other worker could take it"
    score = "" if why.runner_up_score is None else _RUNNER_UP_SCORE[why.policy].format(why.runner_up_score)
    return text + f"; next best {name(why.runner_up)}{score}"
