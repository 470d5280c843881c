"""Malformed, oversized and contradictory input at every RPC and at the agent stream.

Every answer must be OK or a status that names the caller's mistake, with a sentence; never
UNKNOWN or INTERNAL. Afterwards the server's books must still balance and a well-behaved agent
that was connected the whole time must still get and finish work.
"""

from __future__ import annotations

import itertools

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cluster import FAULT_REPORT, AgentProcess, ControlPlaneProcess, wait_for_workers
from faults.secured import PLAIN, Setup, with_auth
from gpucp import Client
from gpucp.v1 import common_pb2, scheduler_pb2, scheduler_pb2_grpc, workers_pb2, workers_pb2_grpc
from security.secured import metadata, token

EXPECTED = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.DEADLINE_EXCEEDED,  # WaitTask with a long timeout_ms outlives our short deadline
}
TRIED = {"server": itertools.count(), "secured_server": itertools.count()}  # inputs tried, by server

text = st.one_of(st.text(max_size=40), st.text(min_size=200, max_size=400), st.sampled_from(["noop", "", "exec"]))
u32 = st.one_of(st.integers(0, 8), st.integers(0, 2**32 - 1))
u64 = st.one_of(st.integers(0, 100_000), st.integers(0, 2**64 - 1))
f64 = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.floats(0, 12))

requirements = st.builds(
    common_pb2.Requirements, gpus=u32, min_gpu_memory_mb=u64, gpu_models=st.lists(text, max_size=3),
    backend=text, labels=st.lists(text, max_size=3), min_compute_capability=f64,
)
specs = st.builds(
    common_pb2.TaskSpec, kind=text, payload=st.binary(max_size=64), priority=st.integers(-5, 10),
    tenant=text, requirements=requirements, timeout_ms=u64, max_retries=st.one_of(st.none(), u32),
    idempotency_key=text, affinity_key=text, labels=st.dictionaries(text, text, max_size=3),
)
ids = st.one_of(text, st.just("0" * 32))


def serve(workdir, setup: Setup):  # type: ignore[no-untyped-def]
    cp = ControlPlaneProcess(workdir, "--max-queue", "300", *setup.serve).start()
    bystander = AgentProcess(workdir, cp.address, "box-bystander", "--slots", "2", env=setup.agent_env)
    with Client(cp.address, token=setup.client_token) as client:
        wait_for_workers(client, ["box-bystander"])
    channel = grpc.insecure_channel(cp.address)
    yield cp, scheduler_pb2_grpc.SchedulerStub(channel), workers_pb2_grpc.WorkersStub(channel)
    channel.close()
    bystander.stop()
    cp.kill()


@pytest.fixture(scope="module")
def server(tmp_path_factory):  # type: ignore[no-untyped-def]
    yield from serve(tmp_path_factory.mktemp("fuzz"), PLAIN)


@pytest.fixture(scope="module")
def secured_server(tmp_path_factory):  # type: ignore[no-untyped-def]
    workdir = tmp_path_factory.mktemp("fuzz-auth")
    yield from serve(workdir, with_auth(workdir))


def answered_well(call, expected=EXPECTED, server="server") -> None:  # type: ignore[no-untyped-def]
    next(TRIED[server])
    try:
        call()
    except grpc.RpcError as exc:
        assert exc.code() in expected, f"{exc.code()}: {exc.details()}"
        assert exc.details() and len(exc.details()) > 10, f"no sentence with {exc.code()}"


FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(spec=specs)
def test_submit_task(server, spec):
    _, scheduler, _ = server
    answered_well(lambda: scheduler.SubmitTask(scheduler_pb2.SubmitTaskRequest(spec=spec), timeout=10))


@FUZZ
@given(batch=st.lists(specs, max_size=5))
def test_submit_tasks(server, batch):
    _, scheduler, _ = server
    answered_well(lambda: scheduler.SubmitTasks(scheduler_pb2.SubmitTasksRequest(specs=batch), timeout=10))


@FUZZ
@given(task_id=ids, timeout_ms=u64, state=st.integers(-3, 12), tenant=text, limit=u32, token=text)
def test_queries(server, task_id, timeout_ms, state, tenant, limit, token):
    _, scheduler, _ = server
    answered_well(lambda: scheduler.GetTask(scheduler_pb2.GetTaskRequest(task_id=task_id), timeout=10))
    answered_well(lambda: scheduler.CancelTask(scheduler_pb2.CancelTaskRequest(task_id=task_id), timeout=10))
    answered_well(lambda: scheduler.WaitTask(
        scheduler_pb2.WaitTaskRequest(task_id=task_id, timeout_ms=timeout_ms % 200), timeout=10))
    answered_well(lambda: scheduler.ListTasks(scheduler_pb2.ListTasksRequest(
        state=state, tenant=tenant, limit=limit, page_token=token), timeout=10))


def indexed(gpus: list[common_pb2.Gpu]) -> list[common_pb2.Gpu]:
    for i, gpu in enumerate(gpus):
        gpu.index = i
    return gpus


gpu = st.builds(common_pb2.Gpu, index=u32, name=text, memory_total_mb=u64, compute_capability=f64)
# Half of them indexed 0..n-1 as registration requires, so the checks past that one get inputs too.
gpus = st.one_of(st.lists(gpu, max_size=3), st.lists(gpu, max_size=3).map(indexed))
agent_messages = st.one_of(
    st.builds(lambda r: workers_pb2.AgentMessage(register=r), st.builds(
        workers_pb2.Register, worker_id=text, slots=u32, gpus=gpus, backend=text, kinds=st.lists(text, max_size=3),
        cost_per_hour=f64, running=st.lists(st.builds(workers_pb2.RunningTask, task_id=ids, attempt=u32), max_size=3))),
    st.builds(lambda h: workers_pb2.AgentMessage(heartbeat=h), st.builds(
        workers_pb2.Heartbeat, active=u32, draining=st.booleans(),
        gpus=st.lists(st.builds(common_pb2.GpuStats, index=u32, healthy=st.booleans()), max_size=3))),
    st.builds(lambda u: workers_pb2.AgentMessage(update=u), st.builds(
        workers_pb2.TaskUpdate, task_id=ids, attempt=u32, state=st.integers(-2, 9), result=st.binary(max_size=32),
        error=text)),
    st.just(workers_pb2.AgentMessage()),
)


@FUZZ
@given(messages=st.lists(agent_messages, min_size=1, max_size=6))
def test_agent_stream(server, messages):
    _, _, workers = server

    def converse() -> None:
        call = workers.Connect(iter(messages), timeout=2)
        for _ in call:
            pass

    answered_well(converse)


# With --auth, a submitter naming a tenant it does not hold, or an agent a worker id its token
# does not cover, is also the caller's mistake.
SECURED = EXPECTED | {grpc.StatusCode.PERMISSION_DENIED}
SUBMITTER, AGENT = metadata("submitter-a"), metadata("agent-box")
FUZZ_AUTH = settings(FUZZ, max_examples=60)


@FUZZ_AUTH
@given(batch=st.lists(specs, max_size=5), task_id=ids)
def test_submit_and_query_with_auth(secured_server, batch, task_id):
    _, scheduler, _ = secured_server
    answered_well(lambda: scheduler.SubmitTasks(
        scheduler_pb2.SubmitTasksRequest(specs=batch), metadata=SUBMITTER, timeout=10), SECURED, "secured_server")
    answered_well(lambda: scheduler.CancelTask(
        scheduler_pb2.CancelTaskRequest(task_id=task_id), metadata=SUBMITTER, timeout=10), SECURED, "secured_server")


@FUZZ_AUTH
@given(messages=st.lists(agent_messages, min_size=1, max_size=6))
def test_agent_stream_with_auth(secured_server, messages):
    _, _, workers = secured_server

    def converse() -> None:
        for _ in workers.Connect(iter(messages), metadata=AGENT, timeout=2):
            pass

    answered_well(converse, SECURED, "secured_server")


@pytest.mark.parametrize("fixture", ["server", "secured_server"])
def test_after_the_fuzz_the_books_balance_and_work_flows(fixture, request):
    cp, _, _ = request.getfixturevalue(fixture)
    with Client(cp.address, token=token("operator") if fixture == "secured_server" else "") as client:
        stats = client.stats()
        listed = sum(1 for _ in client.list(limit=1000))
        assert sum(stats.tasks_by_state.values()) == listed, "task counts disagree with the store"
        assert "box-bystander" in {w.worker_id for w in client.workers()}, "the fuzz knocked out a good agent"
        # The queue may be full of fuzz tasks nobody can run; make room, then run one on the bystander.
        for task in client.list(state=common_pb2.TASK_STATE_PENDING, limit=1000):
            client.cancel(task.id)
        task = client.wait(client.submit("noop", "still here"), timeout_s=30)
        assert (task.state, task.result) == (common_pb2.TASK_STATE_SUCCEEDED, b"still here")
    tried = next(TRIED[fixture])
    auth = ", --auth" if fixture == "secured_server" else ""
    FAULT_REPORT.append({"trial": f"fuzz{auth}: {tried} inputs, 0 crashes", "trials": tried, "tasks": listed,
                         "lost": 0, "duplicated": 0})
