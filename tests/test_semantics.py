"""What a service sees: idempotency, cancel, retries, timeouts, pending reasons, fencing, drain."""

from __future__ import annotations

import json
import queue
import signal
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from cluster import eventually, on_postgres, run_sql
from gpucp import Client, GpucpError, task_spec
from gpucp.v1 import common_pb2, scheduler_pb2, scheduler_pb2_grpc, workers_pb2, workers_pb2_grpc

S = common_pb2


class RawAgent:
    """A hand-driven agent stream, to send exactly the messages a test needs."""

    def __init__(self, address: str, worker_id: str, **register: object) -> None:
        self._out: queue.Queue[workers_pb2.AgentMessage | None] = queue.Queue()
        self._out.put(workers_pb2.AgentMessage(register=workers_pb2.Register(worker_id=worker_id, **register)))
        stub = workers_pb2_grpc.WorkersStub(grpc.insecure_channel(address))
        self._in = stub.Connect(iter(self._out.get, None))

    def recv(self) -> workers_pb2.ControlMessage:
        return next(self._in)

    def send(self, message: workers_pb2.AgentMessage) -> None:
        self._out.put(message)

    def update(self, task_id: str, attempt: int, state: int, result: bytes = b"") -> None:
        self._out.put(workers_pb2.AgentMessage(update=workers_pb2.TaskUpdate(
            task_id=task_id, attempt=attempt, state=state, result=result)))  # type: ignore[arg-type]

    def close(self) -> None:
        self._out.put(None)


@pytest.mark.both_stores
def test_same_idempotency_key_returns_the_first_task(controlplane):
    first = scheduler_pb2_grpc.SchedulerStub(grpc.insecure_channel(controlplane.address)).SubmitTask
    spec = task_spec("noop", "x", idempotency_key="order-17", tenant="shop")
    a = first(scheduler_pb2.SubmitTaskRequest(spec=spec), timeout=10)
    b = first(scheduler_pb2.SubmitTaskRequest(spec=spec), timeout=10)
    assert (b.task_id, b.duplicate, a.duplicate) == (a.task_id, True, False)
    other_tenant = task_spec("noop", "x", idempotency_key="order-17", tenant="bank")
    assert first(scheduler_pb2.SubmitTaskRequest(spec=other_tenant), timeout=10).task_id != a.task_id


def test_task_ids_sort_by_submission_time(client):
    ids = []
    for _ in range(3):
        ids.append(client.submit("noop"))
        time.sleep(0.002)  # ids order by millisecond
    assert ids == sorted(ids) and len(set(ids)) == 3
    assert {uuid.UUID(i).version for i in ids} == {7}


@pytest.mark.parametrize("controlplane", [("--keep-finished", "1")], indirect=True)
@pytest.mark.both_stores
def test_finished_tasks_are_deleted_once_kept_long_enough_and_unfinished_ones_stay(controlplane, client, start_agent):
    start_agent("w", "--slots", "1")
    done = client.run("noop", "old", idempotency_key="nightly-1", wait_s=20)
    waiting = client.submit("noop", gpus=1)  # no worker has a GPU: it stays pending

    def deleted(c: Client) -> bool:
        try:
            c.get(done.id)
        except GpucpError as exc:
            assert exc.code == grpc.StatusCode.NOT_FOUND and "finished more than 1 s ago and was deleted" in exc.message
            return True
        return False

    eventually(lambda: deleted(client), 20, "the finished task to be deleted")
    time.sleep(1.5)  # another sweep: an unfinished task is never deleted, however old
    assert client.get(waiting).state == S.TASK_STATE_PENDING
    assert client.stats().tasks_by_state.get("TASK_STATE_SUCCEEDED", 0) == 0
    assert client.submit("noop", idempotency_key="nightly-1") != done.id, "the key went with its task"
    assert controlplane.terminate() == 0
    controlplane.start()
    with controlplane.client() as again:
        assert deleted(again) and again.get(waiting).state == S.TASK_STATE_PENDING


def test_run_task_submits_and_answers_with_the_outcome(client, start_agent):
    start_agent("w", "--slots", "1")
    task = client.run("noop", "ping", wait_s=20)
    assert (task.state, task.result, task.worker_id) == (S.TASK_STATE_SUCCEEDED, b"ping", "w")
    # Past its wait the call answers with the task as it is; the task keeps running.
    slow = client.run("sleep", json.dumps({"seconds": 1}), wait_s=0.2)
    assert slow.state in (S.TASK_STATE_ASSIGNED, S.TASK_STATE_RUNNING) and slow.id
    assert client.wait(slow.id, timeout_s=20).state == S.TASK_STATE_SUCCEEDED
    with pytest.raises(GpucpError) as bad:
        client.run("", wait_s=5)
    assert bad.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_a_task_no_worker_can_run_says_why(client, start_agent):
    start_agent("small", "--gpus", "1xT4-16GB")
    task_id = client.submit("noop", gpus=1, min_gpu_memory_mb=81920)
    task = client.get(task_id)
    assert task.state == S.TASK_STATE_PENDING
    assert "81920" in task.pending_reason and "no connected worker" in task.pending_reason
    client.cancel(task_id)


def test_cancel_pending_and_running(client, start_agent):
    pending = client.submit("noop")  # no agent yet: stays pending
    assert client.cancel(pending) == S.TASK_STATE_CANCELLED
    assert client.get(pending).state == S.TASK_STATE_CANCELLED

    agent = start_agent("runner", "--slots", "1", "--allow-exec")
    running = client.submit("exec", json.dumps({"argv": ["sleep", "30"]}))
    eventually(lambda: client.get(running).state == S.TASK_STATE_RUNNING, 20, "the exec task to run")
    assert client.cancel(running) == S.TASK_STATE_CANCELLED
    # The slot is free again: the next task runs at once on the same single-slot agent.
    follow_up = client.wait(client.submit("noop", "after"), timeout_s=20)
    assert follow_up.state == S.TASK_STATE_SUCCEEDED and follow_up.worker_id == "runner"
    assert client.get(running).state == S.TASK_STATE_CANCELLED
    assert agent.proc.poll() is None


def test_failing_task_is_retried_then_fails_with_every_error(client, start_agent):
    start_agent("worker", "--slots", "2", "--allow-exec")
    task_id = client.submit(
        "exec", json.dumps({"argv": [sys.executable, "-c", "import sys; sys.exit('disk full')"]}), max_retries=2
    )
    task = client.wait(task_id, timeout_s=60)
    assert task.state == S.TASK_STATE_FAILED
    assert task.attempt == 3, f"expected 1 try + 2 retries, got {task.attempt} attempts"
    assert "disk full" in task.error


def test_task_past_its_timeout_is_stopped_and_timed_out(client, start_agent):
    start_agent("worker", "--slots", "1")
    task_id = client.submit("sleep", json.dumps({"seconds": 30}), timeout_ms=300, max_retries=0)
    task = client.wait(task_id, timeout_s=30)
    assert task.state == S.TASK_STATE_TIMED_OUT
    assert "timed out after 300 ms" in task.error
    assert client.wait(client.submit("noop"), timeout_s=20).state == S.TASK_STATE_SUCCEEDED


def test_results_of_an_old_attempt_are_ignored(controlplane, client):
    agent = RawAgent(controlplane.address, "raw", slots=1, kinds=["noop"])
    assert agent.recv().WhichOneof("msg") == "registered"
    task_id = client.submit("noop")
    assignment = agent.recv().assign.task
    assert (assignment.id, assignment.attempt) == (task_id, 1)

    agent.update(task_id, 2, S.TASK_STATE_SUCCEEDED, b"forged")
    agent.update("no-such-task", 1, S.TASK_STATE_SUCCEEDED)
    eventually(lambda: client.stats().stale_updates >= 2, 10, "the stale updates to be counted")
    assert client.get(task_id).state == S.TASK_STATE_ASSIGNED

    agent.update(task_id, 1, S.TASK_STATE_SUCCEEDED, b"real")
    task = client.wait(task_id, timeout_s=10)
    assert (task.state, task.result) == (S.TASK_STATE_SUCCEEDED, b"real")
    agent.update(task_id, 1, S.TASK_STATE_FAILED)  # a resend after the fact changes nothing
    eventually(lambda: client.stats().stale_updates >= 3, 10, "the resend to be ignored")
    assert client.get(task_id).state == S.TASK_STATE_SUCCEEDED
    agent.close()


@pytest.mark.both_stores
def test_a_task_the_database_refuses_is_not_accepted_and_never_reaches_an_agent(controlplane, client):
    """A refused write answers UNAVAILABLE and leaves no trace; tasks committed beside it are fine."""
    agent = RawAgent(controlplane.address, "raw", slots=64, kinds=["noop"])
    assert agent.recv().WhichOneof("msg") == "registered"
    # The disk refuses one tenant's rows.
    if on_postgres(controlplane.db):
        run_sql(controlplane.db, "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
                " IF NEW.tenant = 'doomed' THEN RAISE EXCEPTION 'disk quota exceeded'; END IF; RETURN NEW; END $$")
        run_sql(controlplane.db, "CREATE TRIGGER refuse BEFORE INSERT ON tasks FOR EACH ROW EXECUTE FUNCTION refuse()")
    else:
        run_sql(controlplane.db, "CREATE TRIGGER refuse BEFORE INSERT ON tasks WHEN NEW.tenant = 'doomed'"
                " BEGIN SELECT RAISE(ABORT, 'disk quota exceeded'); END")

    def submit(tenant: str) -> str | GpucpError:
        try:
            return client.submit("noop", tenant=tenant)
        except GpucpError as exc:
            return exc

    # Concurrent submissions share group commits: the refused ones must fail alone.
    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(submit, ["doomed", "fine"] * 16))
    refused = [o for o in outcomes[0::2] if isinstance(o, GpucpError)]
    accepted = outcomes[1::2]
    assert len(refused) == 16 and all(isinstance(t, str) for t in accepted), outcomes
    why = "the task could not be stored, nothing was accepted: the database refused the write: disk quota exceeded"
    assert {(e.code, e.message) for e in refused} == {(grpc.StatusCode.UNAVAILABLE, why)}

    assigned = {agent.recv().assign.task.id for _ in accepted}
    assert assigned == set(accepted), "the agent got tasks other than the accepted ones"
    stats = client.stats()
    assert dict(stats.tasks_by_state) == {"TASK_STATE_ASSIGNED": 16}
    assert stats.slots_free == 64 - 16
    assert list(client.list(tenant="doomed")) == []

    run_sql(controlplane.db, "DROP TRIGGER refuse ON tasks" if on_postgres(controlplane.db) else "DROP TRIGGER refuse")
    again = client.submit("noop", tenant="doomed")
    assert agent.recv().assign.task.id == again
    agent.close()


def test_a_heartbeat_about_a_gpu_the_worker_does_not_have_changes_nothing_else(controlplane, client):
    agent = RawAgent(controlplane.address, "raw", slots=1, gpus=[common_pb2.Gpu(index=0, name="L4")])
    assert agent.recv().WhichOneof("msg") == "registered"
    agent.send(workers_pb2.AgentMessage(heartbeat=workers_pb2.Heartbeat(
        gpus=[common_pb2.GpuStats(index=7, healthy=False), common_pb2.GpuStats(index=0, healthy=False)])))
    eventually(lambda: "unhealthy" in {w.worker_id: w.health for w in client.workers()}["raw"], 10,
               "the heartbeat to apply")
    assert {w.worker_id: w.health for w in client.workers()}["raw"] == "healthy; unhealthy GPUs [0]"
    agent.close()


def test_drained_worker_gets_no_new_work(client, start_agent):
    start_agent("old", "--slots", "2")
    client.drain("old")
    assert {w.worker_id: w.health for w in client.workers()}["old"] == "draining"
    task_id = client.submit("noop")
    assert "busy" in client.get(task_id).pending_reason or "draining" in client.get(task_id).pending_reason
    start_agent("new", "--slots", "2")
    assert client.wait(task_id, timeout_s=20).worker_id == "new"


def test_sigterm_on_an_agent_lets_its_task_finish(client, start_agent):
    agent = start_agent("leaving", "--slots", "1")
    task_id = client.submit("sleep", json.dumps({"seconds": 1}))
    eventually(lambda: client.get(task_id).state == S.TASK_STATE_RUNNING, 20, "the task to run")
    agent.signal(signal.SIGTERM)
    assert client.wait(task_id, timeout_s=20).state == S.TASK_STATE_SUCCEEDED
    assert agent.proc.wait(20) == 0


@pytest.mark.both_stores
def test_sigterm_on_the_control_plane_flips_health_and_keeps_tasks(controlplane, client):
    health = health_pb2_grpc.HealthStub(grpc.insecure_channel(controlplane.address))
    reply = health.Check(health_pb2.HealthCheckRequest(service="gpucp.v1.Scheduler"), timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    task_id = client.submit("noop", "kept")
    assert controlplane.terminate() == 0
    controlplane.start()
    with controlplane.client() as again:
        assert again.get(task_id).state == S.TASK_STATE_PENDING


def test_watch_reports_each_transition(client, start_agent):
    start_agent("w", "--slots", "1")
    events = client.watch()
    task_id = client.submit("noop")
    seen = []
    for event in events:
        if event.task_id == task_id:
            seen.append(event.state)
            if event.state == S.TASK_STATE_SUCCEEDED:
                break
    assert seen[0] == S.TASK_STATE_PENDING and seen[-1] == S.TASK_STATE_SUCCEEDED
    assert S.TASK_STATE_ASSIGNED in seen


def test_reflection_lists_the_services(controlplane):
    stub = reflection_pb2_grpc.ServerReflectionStub(grpc.insecure_channel(controlplane.address))
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    [reply] = list(stub.ServerReflectionInfo(iter([request]), timeout=10))
    names = {s.name for s in reply.list_services_response.service}
    assert {"gpucp.v1.Scheduler", "gpucp.v1.Workers", "gpucp.v1.Admin", "grpc.health.v1.Health"} <= names
