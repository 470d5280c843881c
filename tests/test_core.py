"""Delay scheduling through the binding: a task waits a bounded time for its warm worker."""

from __future__ import annotations

import pytest

from controlplane._core import InvalidArgument, Scheduler
from controlplane.config import SchedulerConfig


def learned(locality_wait_ms: int = 3_000) -> tuple[Scheduler, int, int, int]:
    """Two 1-slot workers; "infer" learned as 1 s warm, 9 s cold; model 7 warm on the first."""
    s = Scheduler(SchedulerConfig(policy="affinity", locality_wait_ms=locality_wait_ms))
    shape = s.shape("infer", 0, 0, [], "", [], 0.0)
    warm = s.add_worker(1, [], "", [], [], 0)
    cold = s.add_worker(1, [], "", [], [], 0)
    for task, runtime_ms in [(1, 9_000), (2, 1_000)]:
        s.push(task, shape, 1, task, 0, affinity=7)
        assert list(s.place(0, 1)) == [(task, warm, ())]
        s.finish(task, True, runtime_ms)
    return s, shape, warm, cold


def test_a_task_waits_for_its_warm_worker_then_goes_anywhere() -> None:
    s, shape, warm, cold = learned()
    s.push(3, shape, 1, 3, 0, affinity=7)
    s.push(4, shape, 1, 4, 0, affinity=7)
    assert list(s.place(10_000, 10)) == [(3, warm, ())]
    assert s.next_locality_ms() == 13_000, "task 4 waits up to locality_wait_ms for the warm worker"
    assert list(s.place(12_000, 10)) == [], "the free worker is cold for model 7"
    assert list(s.place(13_000, 10)) == [(4, cold, ())], "after the wait it takes any worker"
    assert s.next_locality_ms() is None


def test_locality_wait_zero_never_waits() -> None:
    s, shape, warm, cold = learned(locality_wait_ms=0)
    s.push(3, shape, 1, 3, 0, affinity=7)
    s.push(4, shape, 1, 4, 0, affinity=7)
    assert list(s.place(10_000, 10)) == [(3, warm, ()), (4, cold, ())]
    with pytest.raises(InvalidArgument, match="locality_wait_ms"):
        Scheduler(SchedulerConfig(locality_wait_ms=-1))
