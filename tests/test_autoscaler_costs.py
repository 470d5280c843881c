"""Charging tenants for GPU time: a multi-GPU pod's price is split by the share each task held."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from controlplane.autoscaler.control_view import gpus_held
from controlplane.autoscaler.costs import CostTracker
from controlplane.autoscaler.view import TaskSnapshot, WorkerPrice, WorkerSnapshot
from gpucp.v1 import common_pb2, scheduler_pb2

ASSIGNED = common_pb2.TASK_STATE_ASSIGNED
RUNNING = common_pb2.TASK_STATE_RUNNING
SUCCEEDED = common_pb2.TASK_STATE_SUCCEEDED
HOUR_MS = 3_600_000


class StubView:
    """A ControlView holding one 4-GPU pod at $8/hour (4 slots) and the tasks given to it."""

    def __init__(self) -> None:
        self.prices = {"pod1": WorkerPrice(cost_per_hour=8.0, gpus=4, slots=4)}
        self.tasks: dict[str, TaskSnapshot] = {}

    def task(self, task_id: str) -> TaskSnapshot | None:
        return self.tasks.get(task_id)

    def worker_price(self, worker_id: str) -> WorkerPrice | None:
        return self.prices.get(worker_id)

    def pending_specs(self) -> Iterator[common_pb2.TaskSpec]:
        return iter(())

    def connected_workers(self) -> Iterator[WorkerSnapshot]:
        return iter(())

    def predict_runtime_s(self, spec: common_pb2.TaskSpec, worker_id: str) -> float | None:
        return None

    async def task_events(self) -> AsyncIterator[scheduler_pb2.TaskEvent]:
        return
        yield  # an async generator that ends at once

    def drain(self, worker_id: str) -> bool:
        return False


def give(view: StubView, tracker: CostTracker, task_id: str, tenant: str, gpus: float) -> None:
    view.tasks[task_id] = TaskSnapshot(tenant=tenant, state=ASSIGNED, attempt=1, gpus=gpus, started_at_ms=0,
                                       finished_at_ms=0, terminal=False)
    tracker.on_event(scheduler_pb2.TaskEvent(task_id=task_id, state=ASSIGNED, attempt=1, worker_id="pod1", at_ms=0))


def finish(tracker: CostTracker, task_id: str, at_ms: int) -> None:
    tracker.on_event(scheduler_pb2.TaskEvent(task_id=task_id, state=SUCCEEDED, attempt=1, worker_id="pod1",
                                             at_ms=at_ms))


def test_a_multi_gpu_pods_cost_is_split_between_tenants_by_their_gpu_share() -> None:
    view = StubView()
    tracker = CostTracker(view)
    give(view, tracker, "t1", "research", gpus=3)  # 3 of the pod's 4 GPUs
    give(view, tracker, "t2", "web", gpus=1)  # the 4th
    tracker.on_event(scheduler_pb2.TaskEvent(task_id="t1", state=RUNNING, attempt=1, worker_id="pod1", at_ms=5))
    finish(tracker, "t1", HOUR_MS)
    finish(tracker, "t2", HOUR_MS)
    tenants = {t.tenant: t for t in tracker.report().tenants}
    assert tenants["research"].cost == pytest.approx(6.0), "3 of 4 GPUs for an hour of an $8/h pod"
    assert tenants["web"].cost == pytest.approx(2.0), "1 of 4 GPUs for an hour of an $8/h pod"
    assert tenants["research"].gpu_seconds == pytest.approx(3 * 3600)
    assert tenants["web"].gpu_seconds == pytest.approx(3600)
    assert (tenants["research"].attempts, tenants["web"].attempts) == (1, 1), "RUNNING after ASSIGNED is one attempt"


def test_a_share_of_a_gpu_is_charged_its_share() -> None:
    view = StubView()
    tracker = CostTracker(view)
    quarter = common_pb2.TaskSpec(kind="infer", requirements=common_pb2.Requirements(gpu_milli=250))
    give(view, tracker, "t1", "web", gpus=gpus_held(quarter, 1))
    give(view, tracker, "t2", "research", gpus=gpus_held(common_pb2.TaskSpec(kind="x"), 1))
    finish(tracker, "t1", HOUR_MS)
    finish(tracker, "t2", HOUR_MS)
    tenants = {t.tenant: t for t in tracker.report().tenants}
    assert tenants["web"].cost == pytest.approx(0.5), "a quarter of one of 4 GPUs for an hour of an $8/h pod"
    assert tenants["web"].gpu_seconds == pytest.approx(900)
    assert tenants["research"].cost == pytest.approx(2.0), "a whole GPU"


def test_a_task_without_gpus_is_charged_one_slot() -> None:
    view = StubView()
    tracker = CostTracker(view)
    give(view, tracker, "cpu", "batch", gpus=0)
    finish(tracker, "cpu", HOUR_MS // 2)
    [batch] = tracker.report().tenants
    assert batch.cost == pytest.approx(8.0 / 4 / 2), "one slot of four for half an hour"


def test_an_attempt_whose_end_was_missed_is_closed_from_the_task() -> None:
    view = StubView()
    tracker = CostTracker(view)
    give(view, tracker, "t1", "research", gpus=2)
    view.tasks["t1"] = TaskSnapshot(tenant="research", state=SUCCEEDED, attempt=1, gpus=2, started_at_ms=0,
                                    finished_at_ms=HOUR_MS, terminal=True)
    tracker.sweep()
    [research] = tracker.report().tenants
    assert research.cost == pytest.approx(4.0), "2 of 4 GPUs for the hour the task record says it ran"
