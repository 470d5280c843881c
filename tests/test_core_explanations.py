"""The core explains with data; the control plane words it, naming workers by their names, never by handle."""

from __future__ import annotations

from collections.abc import Callable

from controlplane._core import Scheduler
from controlplane.config import SchedulerConfig
from controlplane.core import duration, pending_sentence, placement_sentence

A100 = (81920, 8.0, "NVIDIA A100 80GB")


def namer(names: dict[int, str]) -> Callable[[int], str]:
    """Name workers as Core does: by name while connected, by handle once gone."""
    return lambda handle: names.get(handle, f"worker {handle}")


def test_a_composite_placement_names_the_winner_its_terms_and_the_runner_up() -> None:
    s = Scheduler(SchedulerConfig(policy="composite"))
    shape = s.shape("k", 0, 0, [], "", [], 0.0)
    a = s.add_worker(2, [], "", [], [], 0)
    b = s.add_worker(2, [], "", [], [], 0)
    s.push(1, shape, 1, 1, 0)
    s.place(0, 1)
    why = s.explain_placement(1)
    assert (why.worker, why.runner_up) == (a, b)
    assert placement_sentence(why, "", namer({a: "gpu-a", b: "gpu-b"})) == (
        "placed on gpu-a by composite: availability 0.50, success 0.30, speed 0.10, fit 0.20, cost 0.10, "
        "affinity 0.00 = 1.20; next best gpu-b at 1.20"
    )
    assert placement_sentence(why, "", namer({a: "gpu-a"})).endswith("; next best worker 1 at 1.20"), (
        "a worker gone since the decision is named by its handle"
    )


def test_a_fragmentation_placement_says_it_strands_the_fewest_gpus() -> None:
    s = Scheduler()
    shape = s.shape("k", 1, 0, [], "", [], 0.0)
    big = s.add_worker(8, [A100] * 8, "", [], [], 0)
    small = s.add_worker(2, [A100] * 2, "", [], [], 0)
    s.push(1, shape, 1, 1, 0)
    s.place(0, 1)
    why = s.explain_placement(1)
    assert (why.policy, why.worker, why.runner_up) == ("fragmentation", small, big), why
    assert placement_sentence(why, "", namer({small: "gpu-s", big: "gpu-b"})) == (
        "placed on gpu-s by fragmentation: it strands the fewest GPUs the recent mix of tasks could use, "
        "then keeps the fewest free; next best gpu-b"
    )


def test_an_affinity_placement_names_the_key_not_its_handle() -> None:
    s = Scheduler(SchedulerConfig(policy="affinity"))
    shape = s.shape("infer", 0, 0, [], "", [], 0.0)
    a = s.add_worker(4, [], "", [], [], 0)
    b = s.add_worker(4, [], "", [], [], 0)
    for task in (1, 2):
        s.push(task, shape, 1, task, 0, affinity=7)
        s.place(0, 1)
    names = namer({a: "gpu-a", b: "gpu-b"})
    assert placement_sentence(s.explain_placement(1), "llama-70b", names) == (
        "placed on gpu-a by affinity: no warm worker for affinity key 'llama-70b'; least loaded (100% free); "
        "next best gpu-b"
    )
    assert placement_sentence(s.explain_placement(2), "llama-70b", names) == (
        "placed on gpu-a by affinity: affinity key 'llama-70b' is warm there; next best gpu-b"
    )


def test_a_pending_gang_names_the_worker_reserved_for_it() -> None:
    s = Scheduler()
    big = s.add_worker(2, [A100, A100], "", [], [], 0)
    gang = s.shape("gang", 2, 0, [], "", [], 0.0)
    long = s.shape("long", 1, 0, [], "", [], 0.0)
    for task, shape, gpus, ms in ((1000, gang, [0, 1], 1_000), (1001, long, [0], 20_000)):
        s.attach(task, big, gpus, shape, 0, 0)
        s.finish(task, True, ms)
    s.push(1, long, 1, 1, 0)
    s.push(2, gang, 1, 2, 0)
    assert list(s.place(0, 10)) == [(1, big, (0,))]
    why = s.explain(gang, 1)
    assert (why.reserved_worker, why.reserved_gpus, why.reserved_free_in_ms) == (big, [0, 1], 20_000)
    assert pending_sentence(why, "gang", namer({big: "gpu-big"})) == (
        "the 1 worker that can run it is busy; no task of higher priority is queued; tasks of kind 'gang' take "
        "about 1.0 s here, so it should start in about 1.0 s; gpu-big is reserved for it (GPUs [0, 1]), free in "
        "about 20.0 s; shorter tasks fill the gap"
    )


def test_a_gang_behind_tasks_nobody_can_time_says_there_is_no_estimate_yet() -> None:
    s = Scheduler()
    big = s.add_worker(2, [A100, A100], "", [], [], 0)
    gang = s.shape("gang", 2, 0, [], "", [], 0.0)
    unknown = s.shape("unknown", 1, 0, [], "", [], 0.0)
    s.push(1, unknown, 1, 1, 0)
    s.push(2, gang, 1, 2, 0)
    assert list(s.place(0, 10)) == [(1, big, (0,))]
    why = s.explain(gang, 1)
    assert (why.runtime_ms, why.no_estimate, why.reserved_free_in_ms) == (None, True, None)
    assert pending_sentence(why, "gang", namer({big: "gpu-big"})) == (
        "the 1 worker that can run it is busy; no task of higher priority is queued; no estimate yet of when: "
        "no task of kind 'gang' has finished, and none gave expected_runtime_ms; gpu-big is reserved for it "
        "(GPUs [0, 1]), no estimate yet of when they free; shorter tasks fill the gap"
    )
    # What the submitters expect stands in until runs are learned.
    s.expect_runtime(gang, 90_000)
    s.expect_runtime(unknown, 30_000)
    s.place(0, 10)
    why = s.explain(gang, 1)
    assert (why.runtime_ms, why.no_estimate, why.reserved_free_in_ms) == (90_000, False, 30_000)


def test_a_pending_task_without_an_estimate_or_reservation_reads_as_the_core_says() -> None:
    s = Scheduler()
    shape = s.shape("render", 0, 0, [], "", [], 0.0)
    why = s.explain(shape, 1)
    assert (why.runtime_ms, why.start_in_ms, why.reserved_worker, why.reserved_gpus) == (None, None, None, [])
    assert pending_sentence(why, "render", namer({})) == "no worker is connected"


def test_durations_read_in_the_unit_a_person_would_use() -> None:
    assert [duration(ms) for ms in (850, 3_600, 119_000, 720_000)] == ["850 ms", "3.6 s", "119.0 s", "12 min"]
