"""Processes really die (SIGKILL, SIGSTOP): accepted work is never lost and finishes once."""

from __future__ import annotations

import collections
import json
import signal
import threading

import pytest

from cluster import eventually, wait_for_workers
from gpucp import task_spec
from gpucp.states import TERMINAL_STATES
from gpucp.v1 import common_pb2, scheduler_pb2

SUCCEEDED = common_pb2.TASK_STATE_SUCCEEDED


def watch_outcomes(client):  # type: ignore[no-untyped-def]
    """Count terminal events per task in a background thread, starting before any submission."""
    outcomes: collections.Counter[str] = collections.Counter()
    started = threading.Event()

    def follow() -> None:
        events = client.watch()
        started.set()
        for event in events:
            if event.state in TERMINAL_STATES:
                outcomes[event.task_id] += 1

    threading.Thread(target=follow, daemon=True).start()
    started.wait(5)
    return outcomes


def test_sigkill_of_an_agent_moves_its_tasks_to_other_workers_and_each_finishes_once(controlplane, client, start_agent):
    victim = start_agent("victim", "--gpus", "2xA100-80GB", "--slots", "4")
    start_agent("survivor-1", "--gpus", "1xA100-80GB", "--slots", "2")
    start_agent("survivor-2", "--gpus", "1xL4-24GB", "--slots", "2")
    outcomes = watch_outcomes(client)

    ids = client.submit_many([task_spec("sleep", json.dumps({"seconds": 0.4})) for _ in range(40)])

    def victim_busy() -> list[str]:
        return [
            t.id for t in map(client.get, ids) if t.worker_id == "victim" and t.state == common_pb2.TASK_STATE_RUNNING
        ]

    on_victim = eventually(victim_busy, 20, "the victim agent to run tasks")
    victim.kill()

    tasks = [client.wait(task_id, timeout_s=60) for task_id in ids]
    assert all(t.state == SUCCEEDED for t in tasks), [common_pb2.TaskState.Name(t.state) for t in tasks]
    for task_id in on_victim:
        task = client.get(task_id)
        assert task.worker_id != "victim", f"{task_id} was reported done by the dead worker"
        assert task.attempt >= 2, f"{task_id} was not re-run after its worker died"
    eventually(lambda: len(outcomes) == len(ids), 10, "every outcome to be watched")
    assert set(outcomes.values()) == {1}, "some task reached a terminal state twice"
    assert "victim" not in {w.worker_id for w in client.workers()}


# NORMAL commits on the event loop, FULL on a writer thread (each commit waits for an fsync).
@pytest.mark.parametrize("controlplane", [(), ("--sync", "full")], ids=["sync-normal", "sync-full"], indirect=True)
@pytest.mark.both_stores
def test_sigkill_of_the_control_plane_loses_no_accepted_task(controlplane, start_agent):
    client = controlplane.client()
    start_agent("steady-1", "--gpus", "2xT4-16GB", "--slots", "2")
    start_agent("steady-2", "--slots", "3")
    ids = client.submit_many(
        [task_spec("sleep", json.dumps({"seconds": 0.05}), gpus=i % 2) for i in range(300)]
    )
    # Some tasks are done, some running, most still queued when the process dies.
    eventually(lambda: client.stats().tasks_by_state.get("TASK_STATE_SUCCEEDED", 0) >= 5, 30, "first results")
    client.close()
    controlplane.kill()
    controlplane.start()

    with controlplane.client() as client:
        wait_for_workers(client, ["steady-1", "steady-2"])
        tasks = [client.wait(task_id, timeout_s=120) for task_id in ids]
        not_done = [t.id for t in tasks if t.state != SUCCEEDED]
        assert not not_done, f"{len(not_done)} accepted tasks did not complete after the restart"
        assert client.stats().tasks_by_state["TASK_STATE_SUCCEEDED"] == len(ids)


@pytest.mark.both_stores
def test_restart_reattaches_running_tasks_instead_of_rerunning_them(controlplane, start_agent):
    client = controlplane.client()
    start_agent("long-runner", "--slots", "2")
    task_id = client.submit("sleep", json.dumps({"seconds": 3}))
    eventually(lambda: client.get(task_id).state == common_pb2.TASK_STATE_RUNNING, 20, "the task to run")
    client.close()
    controlplane.kill()
    controlplane.start()
    with controlplane.client() as client:
        task = client.wait(task_id, timeout_s=30)
        assert task.state == SUCCEEDED
        assert task.attempt == 1, f"the task ran {task.attempt} times though its agent came back"


def test_frozen_agent_is_declared_lost_after_the_heartbeat_timeout(controlplane, client, start_agent):
    frozen = start_agent("frozen", "--slots", "1")
    task_id = client.submit("sleep", json.dumps({"seconds": 1}))
    eventually(lambda: client.get(task_id).worker_id == "frozen", 20, "the task to reach the frozen agent")
    frozen.signal(signal.SIGSTOP)
    try:
        start_agent("rescuer", "--slots", "1")
        task = client.wait(task_id, timeout_s=30)
        assert task.state == SUCCEEDED
        assert task.worker_id == "rescuer"
        assert "frozen" not in {w.worker_id for w in client.workers()}
    finally:
        frozen.signal(signal.SIGCONT)
    # Once awake it reconnects; its report about the superseded attempt is rejected as stale.
    eventually(lambda: "frozen" in {w.worker_id for w in client.workers()}, 20, "the frozen agent to reconnect")
    eventually(lambda: client.stats().stale_updates >= 1, 20, "the stale report to be rejected")
    task = client.get(task_id)
    assert (task.worker_id, task.attempt) == ("rescuer", 2)


@pytest.mark.both_stores
def test_idempotency_keys_survive_a_restart(controlplane):
    with controlplane.client() as client:
        first = client.submit("noop", idempotency_key="invoice-42", tenant="billing")
    controlplane.kill()
    controlplane.start()
    with controlplane.client() as client:
        again = client._scheduler.SubmitTask(  # the raw reply carries `duplicate`
            scheduler_pb2.SubmitTaskRequest(spec=task_spec("noop", idempotency_key="invoice-42", tenant="billing")),
            timeout=10,
        )
        assert (again.task_id, again.duplicate) == (first, True)
