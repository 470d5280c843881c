"""The core's fairness, policies, learning, prefetch/stealing and explanations through the binding."""

from __future__ import annotations

import pytest

from controlplane._core import InvalidArgument, Scheduler, UnknownHandle
from controlplane.config import SchedulerConfig

T4 = (16384, 7.5, "Tesla T4")
H100 = (81920, 9.0, "NVIDIA H100")


def test_config_fields_are_checked() -> None:
    Scheduler(SchedulerConfig(policy="round_robin", priority_weights=(1, 1, 1, 1), aging_ms=0, prefetch_depth=2))
    with pytest.raises(InvalidArgument, match="unknown policy"):
        Scheduler(SchedulerConfig(policy="fastest"))
    with pytest.raises(InvalidArgument, match="priority_weights"):
        Scheduler(SchedulerConfig(priority_weights=(1.0, 2.0)))  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="unknown priority mode 'fifo': use strict"):
        Scheduler(SchedulerConfig(priority_mode="fifo"))
    with pytest.raises(InvalidArgument, match="heartbeat_timeout_ms out of range: -1"):
        Scheduler(SchedulerConfig(heartbeat_timeout_ms=-1))
    with pytest.raises(InvalidArgument):
        Scheduler(SchedulerConfig(w_fit=-1.0))


def test_tenant_shares_follow_weights() -> None:
    s = Scheduler()
    shape = s.shape("k", 0, 0, [], "", [], 0.0)
    s.add_worker(1, [], "", [], [], 0)
    s.set_tenant_weight(1, 3.0)
    n = 40
    tasks = list(range(2 * n))
    s.push_many(
        tasks, [shape] * len(tasks), [1] * len(tasks), tasks, [0] * len(tasks), tenants=[1 + t % 2 for t in tasks]
    )
    first = []
    for _ in range(20):
        [(task, _, _)] = s.place(0, 1)
        first.append(task)
        s.finish(task, True, 1)
    heavy = sum(1 for t in first if t % 2 == 0)
    assert heavy == 15, f"weights 3:1 should give 15 of 20 placements to tenant 1, got {heavy}"


def test_aging_lifts_a_low_task_over_a_stream_of_urgent_work() -> None:
    s = Scheduler(SchedulerConfig(priority_weights=(1e-9, 1e-6, 1e-3, 1.0), aging_ms=100))
    shape = s.shape("k", 0, 0, [], "", [], 0.0)
    s.add_worker(1, [], "", [], [], 0)
    s.push(10_000, shape, 0, 0, 0, now_ms=0)
    now, handle = 0, 0
    while True:
        s.push_many([handle, handle + 1], [shape, shape], [3, 3], [handle, handle + 1], [0, 0], now_ms=now)
        handle += 2
        [(task, _, _)] = s.place(now, 1)
        s.finish(task, True, 10)
        if task == 10_000:
            break
        now += 10
        assert now <= 1_000, "the LOW task starved"
    assert now <= 3 * 100 + 20, f"LOW waited {now} ms with aging 100 ms"


def test_affinity_keeps_a_model_warm_and_explain_placement_says_why() -> None:
    s = Scheduler(SchedulerConfig(policy="affinity"))
    shape = s.shape("infer", 0, 0, [], "", [], 0.0)
    s.add_worker(4, [], "", [], [], 0)
    s.add_worker(4, [], "", [], [], 0)
    s.push(1, shape, 1, 1, 0, affinity=42)
    [(_, warm, _)] = s.place(0, 1)
    s.push(2, shape, 1, 2, 0, affinity=42)
    assert list(s.place(0, 1)) == [(2, warm, ())], "the warm worker keeps the model"
    why = s.explain_placement(2)
    assert (why.policy, why.worker, why.warm, why.affinity) == ("affinity", warm, True, 42), why
    with pytest.raises(UnknownHandle):
        s.explain_placement(999)


def test_kind_policy_cost_and_runtime_prediction() -> None:
    s = Scheduler(SchedulerConfig(policy="performance"))
    shape = s.shape("train", 1, 0, [], "", [], 0.0)
    cheap = s.add_worker(2, [T4, T4], "cuda", [], [], 0, cost_per_hour=0.5)
    fast = s.add_worker(2, [H100, H100], "cuda", [], [], 0, cost_per_hour=4.0)
    assert s.predict_runtime_ms(shape, fast) is None
    for task in range(6):
        worker = cheap if task % 2 == 0 else fast
        s.attach(task, worker, [0], shape, 0, 0)
        s.finish(task, True, 400 if worker == cheap else 100)
    h100, t4 = s.predict_runtime_ms(shape, fast), s.predict_runtime_ms(shape, cheap)
    assert h100 is not None and t4 is not None and h100 < t4
    s.push(10, shape, 1, 10, 0)
    assert s.place(0, 1)[0][1] == fast, "performance picks the H100"
    s.set_kind_policy("train", "cost")
    s.push(11, shape, 1, 11, 0)
    assert s.place(0, 1)[0][1] == cheap, "cost picks the cheaper $ per task"
    why = s.explain_placement(11)
    assert (why.policy, why.worker, why.terms[0]) == ("cost", cheap, ("cost_per_hour", 0.5)), why
    with pytest.raises(InvalidArgument):
        s.set_kind_policy("train", "nope")


def test_prefetch_and_steal_candidates() -> None:
    s = Scheduler(SchedulerConfig(prefetch_depth=1))
    shape = s.shape("k", 0, 0, [], "", [], 0.0)
    a = s.add_worker(1, [], "", [], [], 0)
    s.push_many([1, 2, 3], [shape] * 3, [1] * 3, [1, 2, 3], [0] * 3)
    assert [t for t, _, _ in s.place(0, 10)] == [1, 2], "1 slot + 1 prefetched"
    s.mark_started(1)
    with pytest.raises(InvalidArgument):
        s.mark_started(2)
    stats = s.worker_stats(a)
    assert (stats.held, stats.started, stats.prefetched) == (2, 1, 1)
    b = s.add_worker(1, [], "", [], [], 0)
    assert s.steal_candidates(10) == [(2, a, b)]
    s.release(2)
    s.push(2, shape, 1, 2, 0)
    placed = s.place(0, 10)
    assert (2, b, ()) in placed


def test_warming_gives_a_new_worker_one_slot_first() -> None:
    s = Scheduler(SchedulerConfig(warmup_successes=2))
    shape = s.shape("k", 0, 0, [], "", [], 0.0)
    w = s.add_worker(3, [], "", [], [], 0)
    s.push_many(list(range(6)), [shape] * 6, [1] * 6, list(range(6)), [0] * 6)
    assert len(s.place(0, 10)) == 1
    assert s.worker_stats(w).effective_slots == 1


def test_explain_gives_an_eta_once_runtimes_are_known() -> None:
    s = Scheduler()
    shape = s.shape("k", 0, 0, [], "", [], 0.0)
    s.add_worker(1, [], "", [], [], 0)
    s.push(1, shape, 1, 1, 0)
    s.place(0, 1)
    s.finish(1, True, 2_000)
    s.push(2, shape, 1, 2, 0)
    s.place(0, 1)
    s.push(3, shape, 1, 3, 0)
    why = s.explain(shape, 1)
    assert (why.runtime_ms, why.start_in_ms) == (2_000, 2_000), why
    assert why.reason == "the 1 worker that can run it is busy; no task of higher priority is queued", why
