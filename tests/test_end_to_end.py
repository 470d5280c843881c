"""A whole fleet over real loopback gRPC: mixed GPUs, priorities and requirements."""

from __future__ import annotations

import json
import random

import pytest

from cluster import wait_for_workers
from gpucp import task_spec
from gpucp.v1 import common_pb2

FLEET = {
    "a100-box": ["--gpus", "2xA100-80GB", "--slots", "3", "--label", "zone=us"],
    "t4-box": ["--gpus", "2xT4-16GB", "--slots", "3"],
    "h100-box": ["--gpus", "1xH100-80GB", "--slots", "2"],
    "cpu-box": ["--slots", "4"],
}

# (weight, requirements) of the workload mix
MIX = [
    (40, {}),
    (20, {"gpus": 1}),
    (15, {"gpus": 1, "min_gpu_memory_mb": 40_000}),
    (10, {"gpus": 1, "gpu_models": ["H100"]}),
    (10, {"gpus": 2}),
    (5, {"gpus": 1, "labels": ["zone=us"], "min_compute_capability": 8.0}),
]


def satisfies(task: common_pb2.Task, worker) -> str:  # type: ignore[no-untyped-def]
    """Empty if `worker` meets the task's requirements with the GPUs it gave it, else why not."""
    req = task.spec.requirements
    gpus = {g.index: g for g in worker.gpus}
    if len(task.gpu_indices) != req.gpus:
        return f"given {len(task.gpu_indices)} GPUs, asked for {req.gpus}"
    for i in task.gpu_indices:
        gpu = gpus[i]
        if gpu.memory_total_mb < req.min_gpu_memory_mb:
            return f"GPU {i} has {gpu.memory_total_mb} MB < {req.min_gpu_memory_mb}"
        if req.gpu_models and not any(m.lower() in gpu.name.lower() for m in req.gpu_models):
            return f"GPU {i} is {gpu.name}, not any of {list(req.gpu_models)}"
        if gpu.compute_capability < req.min_compute_capability:
            return f"GPU {i} has compute capability {gpu.compute_capability}"
    missing = set(req.labels) - set(worker.labels)
    return f"worker lacks labels {missing}" if missing else ""


def max_overlap(intervals: list[tuple[int, int]]) -> int:
    # An end and a start in the same millisecond: the slot was freed before it was reused.
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    return peak


# A task's started_at_ms is when it was placed: with prefetch a task is placed on its worker before
# a slot frees, so these timestamps could not show how many ran at once. Prefetch off.
@pytest.mark.parametrize("controlplane", [("--prefetch-depth", "0")], indirect=True)
def test_thousand_mixed_tasks_all_succeed_on_fitting_workers_within_slots(controlplane, client, start_agent):
    for worker_id, args in FLEET.items():
        start_agent(worker_id, *args, wait=False)
    wait_for_workers(client, list(FLEET))
    workers = {w.worker_id: w for w in client.workers()}

    rng = random.Random(7)
    weights, reqs = zip(*MIX, strict=True)
    specs = []
    for _ in range(1000):
        req = rng.choices(reqs, weights)[0]
        specs.append(
            task_spec(
                "sleep",
                json.dumps({"seconds": rng.choice([0, 0.002, 0.01, 0.02])}),
                priority=rng.choice(["low", "normal", "high", "urgent"]),
                tenant=rng.choice(["vision", "speech"]),
                **req,
            )
        )
    ids = []
    for i in range(0, len(specs), 250):
        ids.extend(client.submit_many(specs[i : i + 250]))
    assert len(set(ids)) == 1000

    tasks = [client.wait(task_id, timeout_s=120) for task_id in ids]
    states = {common_pb2.TaskState.Name(t.state) for t in tasks}
    failed = [t for t in tasks if t.state != common_pb2.TASK_STATE_SUCCEEDED]
    assert not failed, f"{len(failed)} tasks did not succeed ({states}); first: {failed[0]}"

    by_worker: dict[str, list[common_pb2.Task]] = {}
    for task in tasks:
        problem = satisfies(task, workers[task.worker_id])
        assert not problem, f"task {task.id} ran on {task.worker_id}: {problem}"
        by_worker.setdefault(task.worker_id, []).append(task)

    for worker_id, ran in by_worker.items():
        slots = workers[worker_id].slots
        peak = max_overlap([(t.started_at_ms, t.finished_at_ms) for t in ran])
        assert peak <= slots, f"{worker_id} ran {peak} tasks at once with {slots} slots"
        for index in {i for t in ran for i in t.gpu_indices}:
            on_gpu = [(t.started_at_ms, t.finished_at_ms) for t in ran if index in t.gpu_indices]
            assert max_overlap(on_gpu) <= 1, f"{worker_id} GPU {index} was given to two tasks at once"
    assert set(by_worker) == set(FLEET), f"some workers ran nothing: {sorted(by_worker)}"

    stats = client.stats()
    assert stats.tasks_by_state["TASK_STATE_SUCCEEDED"] == 1000
    assert sum(stats.queue_depth_by_priority.values()) == 0


def test_a_backlog_of_big_payloads_reaches_an_agent_in_messages_under_the_size_limit(controlplane, client, start_agent):
    # Six 3 MiB payloads queued before the agent comes: one dispatch round places them all on
    # it, 18 MiB in all, more than one gRPC message may carry (16 MiB).
    payloads = [bytes([65 + i]) * (3 * 1024 * 1024) for i in range(6)]
    ids = [client.submit("noop", p) for p in payloads]
    start_agent("roomy", "--slots", "6")
    tasks = [client.wait(task_id, timeout_s=60) for task_id in ids]
    assert [t.state for t in tasks] == [common_pb2.TASK_STATE_SUCCEEDED] * 6
    assert [t.result for t in tasks] == payloads
    assert {t.attempt for t in tasks} == {1}, "the agent's stream broke and the tasks were assigned again"
