"""Placement a user can see: fair shares between tenants, warm affinity, explained decisions."""

from __future__ import annotations

import json
import subprocess
import sys

import grpc
import pytest

from cluster import AgentProcess, ControlPlaneProcess, eventually, wait_for_workers
from gpucp import GpucpError, task_spec
from gpucp.v1 import common_pb2


def test_tenants_share_a_busy_fleet_by_weight(tmp_path):
    cp = ControlPlaneProcess(tmp_path, "--tenant-weight", "research=3", "--tenant-weight", "product=1").start()
    agent = AgentProcess(tmp_path, cp.address, "only", "--slots", "1")
    try:
        with cp.client() as client:
            # Queued before any worker exists, product first: arrival order alone would favour it.
            specs = [task_spec("noop", tenant="product") for _ in range(40)]
            specs += [task_spec("noop", tenant="research") for _ in range(40)]
            ids = client.submit_many(specs)
            wait_for_workers(client, ["only"])
            tasks = [client.wait(t, timeout_s=60) for t in ids]
            first = sorted(tasks, key=lambda t: (t.started_at_ms, t.finished_at_ms))[:40]
            research = sum(1 for t in first if t.spec.tenant == "research")
            assert 26 <= research <= 34, f"research got {research} of the first 40 slots with weight 3:1"
    finally:
        agent.stop()
        cp.kill()


def test_hard_affinity_keeps_a_model_on_its_warm_worker(controlplane, client, start_agent):
    start_agent("w0", "--slots", "2")
    start_agent("w1", "--slots", "2")
    first = client.wait(client.submit("noop", affinity_key="llama-70b"), timeout_s=20)
    warm = first.worker_id
    later = [client.wait(client.submit("noop", affinity_key="llama-70b", hard_affinity=True), timeout_s=20)
             for _ in range(8)]
    assert {t.worker_id for t in later} == {warm}, "the model left the worker that has it loaded"


def test_a_running_task_says_why_it_went_where_it_went(controlplane, client, start_agent):
    start_agent("explained", "--slots", "1")
    task_id = client.submit("sleep", json.dumps({"seconds": 2}))
    eventually(lambda: client.get(task_id).state == common_pb2.TASK_STATE_RUNNING, 20, "the task to run")
    placement = client.get(task_id).placement
    assert placement.startswith("placed on explained by fragmentation: it strands the fewest GPUs"), placement


INFER = ["--slots", "1", "--handler", "infer=model_handler:infer", "--kinds", "infer"]


def infer(client, model: str, run_s: float, load_s: float = 0.8):  # type: ignore[no-untyped-def]
    """Submit an `infer` task for `model`; returns its id."""
    payload = json.dumps({"model": model, "run_s": run_s, "load_s": load_s})
    return client.submit("infer", payload, affinity_key=model)


def test_a_task_waits_briefly_for_its_warm_worker_instead_of_loading_the_model_elsewhere(tmp_path):
    cp = ControlPlaneProcess(tmp_path, "--policy", "affinity", "--locality-wait", "3").start()
    agents = [AgentProcess(tmp_path, cp.address, "warm", *INFER)]
    try:
        with cp.client() as client:
            wait_for_workers(client, ["warm"])
            # Learn what a load costs: cold starts of three models, then warm runs of one.
            for model in ("m1", "m2", "m3", "m1", "m1", "m1", "m1"):
                assert client.wait(infer(client, model, 0.05), timeout_s=30).state == common_pb2.TASK_STATE_SUCCEEDED
            agents.append(AgentProcess(tmp_path, cp.address, "cold", *INFER))
            wait_for_workers(client, ["warm", "cold"])

            # The warm worker is busy for a moment, the cold one is free: waiting beats a load.
            busy = infer(client, "m1", 0.3)
            eventually(
                lambda: client.get(busy).state == common_pb2.TASK_STATE_RUNNING, 20, "m1 to run on the warm worker"
            )
            waited = client.wait(infer(client, "m1", 0.05), timeout_s=30)
            assert (waited.worker_id, waited.result) == ("warm", b"warm"), (
                f"the task went to {waited.worker_id} ({waited.result!r}) instead of waiting for the warm worker"
            )

            # The warm worker is busy for long: the wait is bounded (by the learned load time,
            # under a second here), then the task loads the model on the free worker. Nothing
            # else happens in the fleet meanwhile, so only the control plane's own timer can
            # send it there.
            long = infer(client, "m1", 8.0)
            eventually(lambda: client.get(long).state == common_pb2.TASK_STATE_RUNNING, 20, "the long m1 task to run")
            moved = client.wait(infer(client, "m1", 0.05), timeout_s=30)
            assert (moved.worker_id, moved.result) == ("cold", b"cold")
            assert moved.finished_at_ms < client.get(long).started_at_ms + 5_000, "it waited for the long task"
    finally:
        for agent in agents:
            agent.stop()
        cp.kill()


def started_in_order(tasks):  # type: ignore[no-untyped-def]
    return sorted(tasks, key=lambda t: (t.started_at_ms, t.finished_at_ms))


@pytest.mark.parametrize(
    "controlplane", [("--priority-mode", "shares", "--priority-weights", "1,1,1,1")], indirect=True
)
def test_priority_classes_share_by_the_configured_weights(controlplane, client, start_agent):
    # Equal shares: LOW gets as many of the first slots as URGENT, instead of 1 in 5.
    ids = client.submit_many([task_spec("noop", priority=p) for p in ("low", "urgent") for _ in range(30)])
    start_agent("only", "--slots", "1")
    first = started_in_order([client.wait(t, timeout_s=60) for t in ids])[:30]
    low = sum(1 for t in first if t.spec.priority == common_pb2.PRIORITY_LOW)
    assert 12 <= low <= 18, f"LOW got {low} of the first 30 slots with equal class weights"


@pytest.mark.parametrize("controlplane", [("--warmup", "3")], indirect=True)
def test_a_new_worker_warms_up_on_one_task_at_a_time(controlplane, client, start_agent):
    # --warmup 3 on a 3-slot worker: 1 slot until its first success, then 1 + 2 * 1 / 3 = 1,
    # then 2, then all 3; without warm-up the first three tasks would run together.
    start_agent("fresh", "--slots", "3")
    ids = client.submit_many([task_spec("sleep", json.dumps({"seconds": 0.4})) for _ in range(6)])
    tasks = started_in_order([client.wait(t, timeout_s=60) for t in ids])
    assert all(t.state == common_pb2.TASK_STATE_SUCCEEDED for t in tasks)
    first, second, third = tasks[:3]
    assert second.started_at_ms >= first.finished_at_ms, "a fresh worker ran two tasks at once"
    assert third.started_at_ms >= second.finished_at_ms, "one success was enough for a second slot"
    overlapping = [t for t in tasks[3:] if t.started_at_ms < third.finished_at_ms]
    assert overlapping, "the worker never got a second slot after two successes"


@pytest.mark.parametrize(
    "controlplane", [("--policy", "composite", "--weight", "availability=2", "--weight", "cost=0")], indirect=True
)
def test_composite_weights_show_in_the_placement(controlplane, client, start_agent):
    start_agent("weighed", "--slots", "1")
    task_id = client.submit("sleep", json.dumps({"seconds": 2}))
    eventually(lambda: client.get(task_id).state == common_pb2.TASK_STATE_RUNNING, 20, "the task to run")
    placement = client.get(task_id).placement
    # An idle worker's availability is 1, its cost term is weight / (1 + cost): 0 here.
    assert "availability 2.00" in placement and "cost 0.00" in placement, placement


def test_priority_skips_ahead_within_a_tenant(controlplane, client, start_agent):
    # The only slot is busy while five tasks queue. Priority means "skip ahead": every higher
    # class runs before a lower one, FIFO within a class (with shares by class, the order was
    # URGENT, HIGH, NORMAL, LOW, NORMAL).
    start_agent("only", "--slots", "1")
    busy = client.submit("sleep", json.dumps({"seconds": 1}))
    eventually(lambda: client.get(busy).state == common_pb2.TASK_STATE_RUNNING, 20, "the first task to run")
    order = ["low", "normal", "high", "urgent", "normal"]
    ids = client.submit_many([task_spec("noop", priority=p, task_labels={"n": str(i)}) for i, p in enumerate(order)])
    served = started_in_order([client.wait(t, timeout_s=60) for t in ids])
    names = [common_pb2.Priority.Name(t.spec.priority).removeprefix("PRIORITY_") for t in served]
    assert names == ["URGENT", "HIGH", "NORMAL", "NORMAL", "LOW"], f"served in the order {names}"
    normals = [t.spec.labels["n"] for t in served if t.spec.priority == common_pb2.PRIORITY_NORMAL]
    assert normals == ["1", "4"], "two NORMAL tasks ran out of their submission order"


def test_an_unknown_priority_mode_is_refused_before_listening(tmp_path):
    serve = subprocess.run(
        [sys.executable, "-m", "gpucp", "serve", "--listen", "127.0.0.1:0", "--db", str(tmp_path / "cp.db"),
         "--priority-mode", "fifo"],
        capture_output=True, text=True, timeout=60,
    )
    assert serve.returncode == 1, serve
    expected = "--priority-mode 'fifo': give strict (a higher class always goes first) or shares"
    assert expected in serve.stderr, serve.stderr


def test_a_gpu_model_names_whole_words_of_the_gpu_name(controlplane, client, start_agent):
    start_agent("big", "--slots", "1", "--gpus", "1xA100-80GB")  # "NVIDIA A100 80GB"
    # Queued first on a 1-slot worker: if "A10" matched the A100, it would run first.
    a10 = client.submit("noop", gpus=1, gpu_models=["A10"])
    a100 = client.wait(client.submit("noop", gpus=1, gpu_models=["a100 80gb"]), timeout_s=30)
    assert (a100.state, a100.worker_id) == (common_pb2.TASK_STATE_SUCCEEDED, "big"), a100
    waiting = client.get(a10)
    assert waiting.state == common_pb2.TASK_STATE_PENDING, f"a task asking for an A10 ran on {waiting.worker_id}"
    assert "'a10'" in waiting.pending_reason, waiting.pending_reason
    start_agent("small", "--slots", "1", "--gpus", "1xA10-24GB")
    done = client.wait(a10, timeout_s=30)
    assert (done.state, done.worker_id) == (common_pb2.TASK_STATE_SUCCEEDED, "small"), done


def test_shares_of_one_gpu_run_side_by_side_and_each_task_knows_its_share(controlplane, client, start_agent, tmp_path):
    start_agent("shared", "--slots", "3", "--gpus", "1xT4-16GB", "--allow-exec")
    met = tmp_path / "met"
    met.mkdir()
    # Each task waits until two have started: only shares that run side by side can finish.
    script = (
        f'touch {met}/$GPUCP_TASK_ID; while [ "$(ls {met} | wc -l)" -lt 2 ]; do sleep 0.05; done; '
        "echo $CUDA_VISIBLE_DEVICES $GPUCP_GPU_MILLI $GPUCP_GPU_MEMORY_MB"
    )
    payload = json.dumps({"argv": ["sh", "-c", script]})
    ids = [client.submit("exec", payload, gpu_milli=500, gpu_memory_mb=6000, timeout_ms=30_000) for _ in range(3)]
    tasks = [client.wait(t, timeout_s=60) for t in ids]
    for task in tasks:
        assert task.state == common_pb2.TASK_STATE_SUCCEEDED, f"{task.id}: {task.error}"
        assert json.loads(task.result)["stdout"] == "0 500 6000\n", "its GPU, its share, its memory"
    first, second, third = sorted(tasks, key=lambda t: t.started_at_ms)
    assert third.started_at_ms >= min(first.finished_at_ms, second.finished_at_ms), (
        "three halves of one GPU ran at once"
    )


def test_a_share_of_several_gpus_is_refused_with_a_reason(controlplane, client):
    for fields, reason in (
        ({"gpus": 2, "gpu_milli": 500}, "share of one GPU, but gpus is 2"),
        ({"gpu_milli": 1000}, "1 to 999 thousandths"),
        ({"gpus": 1, "gpu_memory_mb": 4000}, "set gpu_milli too"),
    ):
        with pytest.raises(GpucpError) as info:
            client.submit("noop", **fields)
        assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT, info.value
        assert reason in info.value.message, info.value.message


def test_a_waiting_task_estimates_from_what_its_submitter_expects(controlplane, client, start_agent):
    start_agent("one", "--slots", "1")
    busy = client.submit("sleep", json.dumps({"seconds": 30}))
    eventually(lambda: client.get(busy).state == common_pb2.TASK_STATE_RUNNING, 20, "the sleep to run")
    unknown = client.submit("noop")
    eventually(lambda: "busy" in client.get(unknown).pending_reason, 20, "the noop to wait")
    assert "no estimate yet" in client.get(unknown).pending_reason, client.get(unknown).pending_reason
    expected = client.submit("noop", runtime_class="batch", expected_runtime_ms=90_000)
    eventually(lambda: "take about" in client.get(expected).pending_reason, 20, "an estimate")
    assert "take about 90.0 s" in client.get(expected).pending_reason, client.get(expected).pending_reason
    client.cancel(busy)


def test_runtime_hints_out_of_bounds_are_refused_with_a_reason(controlplane, client):
    for fields, reason in (
        ({"expected_runtime_ms": 400 * 24 * 3600 * 1000}, "over a year"),
        ({"runtime_class": "has spaces"}, "is not a class name"),
    ):
        with pytest.raises(GpucpError) as info:
            client.submit("noop", **fields)
        assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT, info.value
        assert reason in info.value.message, info.value.message
