"""The core's operational hooks through the Python binding: GPU health, quarantine, avoid_worker."""

from __future__ import annotations

import pytest

from controlplane._core import InvalidArgument, Scheduler, UnknownHandle

A10 = (24576, 8.6, "NVIDIA A10")


def test_unhealthy_gpu_is_never_given_but_cpu_work_still_runs() -> None:
    s = Scheduler()
    w = s.add_worker(4, [A10, A10], "cuda", [], [], 0)
    one_gpu = s.shape("infer", 1, 0, [], "", [], 0.0)
    cpu = s.shape("etl", 0, 0, [], "", [], 0.0)
    s.set_gpu_healthy(w, 0, False)
    s.set_gpu_healthy(w, 1, False)
    s.push(1, one_gpu, 1, 1, 0)
    s.push(2, cpu, 1, 2, 0)
    assert list(s.place(0, 10)) == [(2, w, ())], "only the CPU task may run"
    assert "healthy GPUs" in s.explain(one_gpu, 1).reason
    assert s.worker_stats(w).unhealthy_gpus == 2
    s.set_gpu_healthy(w, 1, True)
    assert list(s.place(0, 10)) == [(1, w, (1,))]
    with pytest.raises(InvalidArgument):
        s.set_gpu_healthy(w, 5, False)


def test_worker_stats_are_named_read_only_and_printable() -> None:
    s = Scheduler()
    w = s.add_worker(2, [A10], "cuda", [], [], 0, cost_per_hour=0.75)
    shape = s.shape("k", 0, 0, [], "", [], 0.0)
    s.push(1, shape, 1, 1, 0)
    s.place(0, 10)
    s.finish(1, False, 5)
    stats = s.worker_stats(w)
    assert (stats.slots, stats.free_slots, stats.succeeded, stats.failed) == (2, 2, 0, 1)
    assert stats.success_rate < 1.0, "a failure lowers the success rate"
    assert stats.cost_per_hour == 0.75
    with pytest.raises(AttributeError):
        stats.slots = 5  # type: ignore[misc]
    assert repr(stats).startswith("WorkerStats(slots=2, free_slots=2, success_rate=0.")
    assert "draining=False" in repr(stats) and "cost_per_hour=0.75)" in repr(stats)
    with pytest.raises(UnknownHandle):
        s.worker_stats(w + 1)


def test_quarantine_does_not_undo_a_drain_and_shows_in_worker_stats() -> None:
    s = Scheduler()
    w = s.add_worker(2, [], "", [], [], 0)
    shape = s.shape("k", 0, 0, [], "", [], 0.0)
    s.set_draining(w, True)
    s.set_quarantined(w, True)
    s.set_draining(w, False)
    s.push(1, shape, 1, 1, 0)
    assert list(s.place(0, 10)) == [], "still quarantined after the drain ended"
    assert s.explain(shape, 1).reason == "the 1 worker that can run it is quarantined"
    stats = s.worker_stats(w)
    assert (stats.quarantined, stats.draining) == (True, False)
    assert s.slots() == (0, 0)
    s.set_quarantined(w, False)
    assert list(s.place(0, 10)) == [(1, w, ())]


def test_avoid_worker_waits_for_another_eligible_worker() -> None:
    s = Scheduler()
    shape = s.shape("k", 0, 0, [], "", [], 0.0)
    a = s.add_worker(1, [], "", [], [], 0)
    s.push(1, shape, 1, 1, 0, avoid_worker=a)
    assert list(s.place(0, 10)) == [(1, a, ())], "the only worker is used even when avoided"
    s.finish(1, False, 5)
    b = s.add_worker(1, [], "", [], [], 0)
    s.push_many([3, 4], [shape, shape], [1, 1], [3, 4], [0, 0], avoid_workers=[b, a])
    placed = sorted(s.place(0, 10))
    assert placed == [(3, a, ()), (4, b, ())], "each task avoids the worker it was told to"
    s.push(5, shape, 1, 5, 0, avoid_worker=b)
    s.finish(4, True, 5)
    assert list(s.place(0, 10)) == [], "task 5 waits for a rather than run on b"
    with pytest.raises(InvalidArgument):
        s.push_many([6], [shape], [1], [6], [0], avoid_workers=[])
    s.push_many([6, 7], [shape, shape], [1, 1], [6, 7], [0, 0], avoid_workers=[None, b])
    assert list(s.place(0, 10)) == [(6, b, ())], "a None entry avoids no worker; task 7 waits for a, as 5 does"


def test_a_negative_handle_or_time_is_refused_not_read_as_none() -> None:
    s = Scheduler()
    shape = s.shape("k", 0, 0, [], "", [], 0.0)
    with pytest.raises(InvalidArgument, match="avoid_worker out of range: -1"):
        s.push(1, shape, 1, 1, 0, avoid_worker=-1)
    with pytest.raises(InvalidArgument, match="now_ms out of range: -5"):
        s.push_many([1], [shape], [1], [1], [0], now_ms=-5)
    s.add_worker(1, [], "", [], [], 0)
    s.push(1, shape, 1, 1, 0, avoid_worker=None, now_ms=None)
    s.place(0, 10)
    with pytest.raises(InvalidArgument, match="now_ms out of range: -1"):
        s.mark_started(1, now_ms=-1)
    s.mark_started(1, now_ms=None)


def test_a_batch_gives_each_placement_its_own_gpus_as_a_tuple() -> None:
    """A batch read in order gives every task its own GPUs, as a tuple: never two tasks one GPU,
    nor a task GPUs of another worker."""
    s = Scheduler()
    workers = [s.add_worker(4, [A10] * 4, "cuda", [], [], 0) for _ in range(3)]
    one, two = s.shape("infer", 1, 0, [], "", [], 0.0), s.shape("train", 2, 0, [], "", [], 0.0)
    tasks = list(range(1, 10))
    s.push_many(tasks, [one] * 6 + [two] * 3, [1] * 9, tasks, [0] * 9)
    placed = s.place(0, 100)
    assert sorted(task for task, _, _ in placed) == tasks, "12 GPUs hold 6 tasks of one and 3 of two"
    given = [(worker, gpu) for _, worker, gpus in placed for gpu in gpus]
    assert len(given) == len(set(given)) == 12, "no GPU is given twice"
    assert {worker for worker, _ in given} <= set(workers)
    assert all(type(gpus) is tuple and len(gpus) == (1 if task <= 6 else 2) for task, _, gpus in placed)


def test_a_batch_reads_like_a_list_by_index_from_the_end_and_in_order_again() -> None:
    """place() hands back one Placements object; reading it is what turns placements into tuples,
    so every way a caller reads a list must give the same placements."""
    s = Scheduler()
    w = s.add_worker(4, [A10] * 4, "cuda", [], [], 0)
    one = s.shape("infer", 1, 0, [], "", [], 0.0)
    s.push_many([1, 2, 3], [one] * 3, [1] * 3, [1, 2, 3], [0] * 3)
    placed = s.place(0, 10)
    assert len(placed) == 3 and placed
    in_order = list(placed)
    assert [task for task, _, _ in in_order] == [1, 2, 3], "FIFO within one class"
    assert list(placed) == in_order, "read again, the same placements"
    assert [placed[0], placed[1], placed[-1]] == [in_order[0], in_order[1], in_order[2]]
    assert (2, w, in_order[1][2]) in placed
    with pytest.raises(IndexError, match="placement index 3 out of range: this round placed 3"):
        placed[3]
    with pytest.raises(IndexError, match="index -4"):
        placed[-4]
    assert not s.place(0, 10), "an empty round is falsy, like an empty list"
