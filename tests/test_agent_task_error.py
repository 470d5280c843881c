"""A task that is wrong fails once, with its reason, and no worker is blamed for it."""

from __future__ import annotations

from collections.abc import Callable

from cluster import AgentProcess, eventually
from gpucp import Client
from gpucp.v1 import common_pb2


def test_a_bad_exec_payload_fails_once_and_leaves_the_workers_success_rates_alone(
    client: Client, start_agent: Callable[..., AgentProcess]
) -> None:
    # Before: 4 attempts on 3 workers, and an innocent worker's success rate went down.
    for worker_id in ("w1", "w2", "w3"):
        start_agent(worker_id, "--allow-exec")
    before = {w.worker_id: (w.success_rate, w.tasks_failed) for w in client.workers()}
    task_id = client.submit("exec", b'{"argv": "ls -l"}', max_retries=3)
    task = client.wait(task_id, 30)
    assert task.state == common_pb2.TASK_STATE_FAILED, common_pb2.TaskState.Name(task.state)
    assert task.attempt == 1, f"a wrong task must not be retried: {list(task.attempt_errors)}"
    assert len(task.attempt_errors) == 1, list(task.attempt_errors)
    assert "the exec payload must be a JSON object" in task.error, task.error
    assert "argv must be a non-empty list of strings" in task.error, task.error
    # The workers still take work: none was quarantined for the task's fault.
    assert client.run("noop", b"", wait_s=30).state == common_pb2.TASK_STATE_SUCCEEDED
    after = eventually(
        lambda: {w.worker_id: (w.success_rate, w.tasks_failed) for w in client.workers()}, 10, "the worker list"
    )
    assert {w: failed for w, (_, failed) in after.items()} == {w: failed for w, (_, failed) in before.items()}, (
        f"a worker was charged with the task's own error: before {before}, after {after}"
    )
    for worker_id, (rate, _) in after.items():
        assert rate >= before[worker_id][0], f"{worker_id}'s success rate fell: before {before}, after {after}"
