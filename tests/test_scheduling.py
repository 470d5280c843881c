"""Placement a user can see: fair shares between tenants, warm affinity, explained decisions."""

from __future__ import annotations

import json

from cluster import AgentProcess, ControlPlaneProcess, eventually, wait_for_workers
from gpucp import task_spec
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
    assert placement.startswith("placed on explained by composite") and "availability" in placement, placement
