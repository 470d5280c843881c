"""The SDK as a service uses it: errors by status under GpucpError, states by name, typed spec
fields and wait() that can raise, from the blocking Client and the AsyncClient alike."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from google.rpc.error_details_pb2 import RetryInfo
from google.rpc.status_pb2 import Status

import gpucp
from cluster import ControlPlaneProcess
from gpucp import AsyncClient, Client, TaskState
from gpucp.v1 import common_pb2, scheduler_pb2_grpc

# name -> (role, tenants); each principal's token is "token-<name>".
PRINCIPALS = {"viewer": ("viewer", ["lab"]), "submitter": ("submitter", ["lab"])}


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlaneProcess]:
    """A control plane with principals, where tenant "lab" may hold one pending task."""
    workdir = tmp_path_factory.mktemp("guarded")
    lines = []
    for name, (role, tenants) in PRINCIPALS.items():
        digest = hashlib.sha256(f"token-{name}".encode()).hexdigest()
        lines += ["[[principal]]", f'name = "{name}"', f'token_sha256 = "{digest}"', f'role = "{role}"',
                  f'tenants = ["{tenants[0]}"]']
    (workdir / "auth.toml").write_text("\n".join(lines) + "\n[tenant.lab]\nmax_pending = 1\n")
    cp = ControlPlaneProcess(workdir, "--auth", str(workdir / "auth.toml")).start()
    yield cp
    cp.kill()


def test_every_refusal_raises_the_class_of_its_status_under_gpucp_error(guarded: ControlPlaneProcess) -> None:
    with (
        Client(guarded.address, token="") as anonymous,
        Client(guarded.address, token="token-viewer") as viewer,
        Client(guarded.address, token="token-submitter") as submitter,
    ):
        with pytest.raises(gpucp.Unauthenticated, match="token"):
            anonymous.submit("noop", tenant="lab")
        with pytest.raises(gpucp.PermissionDenied):
            viewer.submit("noop", tenant="lab")
        with pytest.raises(gpucp.NotFound, match="no-such-task"):
            submitter.get("no-such-task")
        with pytest.raises(gpucp.InvalidArgument, match="not a handler name"):
            submitter.submit("bad kind!", tenant="lab")
        held = submitter.submit("noop", tenant="lab")  # no agent: it stays pending
        with pytest.raises(gpucp.ResourceExhausted, match="max_pending") as full:
            submitter.submit("noop", tenant="lab")
        assert full.value.retry_after is None  # the control plane gives no delay for a quota
        assert full.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert submitter.cancel(held) is TaskState.CANCELLED
    with pytest.raises(gpucp.Unreachable) as gone, Client("127.0.0.1:1", timeout_s=5) as nobody:
        nobody.stats()
    # Callers that catch the base class or the status family keep working.
    assert isinstance(gone.value, gpucp.Unavailable) and isinstance(gone.value, gpucp.GpucpError)


def test_the_async_client_raises_the_same_classes(guarded: ControlPlaneProcess) -> None:
    async def refusals() -> list[type[gpucp.GpucpError]]:
        seen: list[type[gpucp.GpucpError]] = []
        async with AsyncClient(guarded.address, token="token-viewer") as viewer:
            for call in (viewer.submit("noop", tenant="lab"), viewer.get("no-such-task"), viewer.costs()):
                try:
                    await call
                except gpucp.GpucpError as exc:
                    seen.append(type(exc))
        return seen

    # costs() needs an operator: a viewer is refused before the missing autoscaler matters.
    assert asyncio.run(refusals()) == [gpucp.PermissionDenied, gpucp.NotFound, gpucp.PermissionDenied]


def test_costs_without_an_autoscaler_is_a_failed_precondition(client: Client) -> None:
    with pytest.raises(gpucp.FailedPrecondition, match="autoscal"):
        client.costs()


def test_wait_raises_timeout_with_the_task_when_asked_and_returns_it_otherwise(client: Client) -> None:
    task_id = client.submit("noop")  # no agent: it stays pending
    assert TaskState(client.wait(task_id, timeout_s=0.2).state) is TaskState.PENDING
    with pytest.raises(gpucp.Timeout, match=f"task {task_id} is still pending after 0.2 s") as raised:
        client.wait(task_id, timeout_s=0.2, raise_on_timeout=True)
    assert raised.value.task.id == task_id
    assert isinstance(raised.value, gpucp.DeadlineExceeded)

    async def async_wait() -> gpucp.Timeout:
        async with AsyncClient(client.server) as aclient:
            with pytest.raises(gpucp.Timeout) as raised:
                await aclient.wait(task_id, timeout_s=0.2, raise_on_timeout=True)
            return raised.value

    assert asyncio.run(async_wait()).task.state == common_pb2.TASK_STATE_PENDING
    with pytest.raises(ValueError, match="timeout_s -1: give seconds >= 0"):
        client.wait(task_id, timeout_s=-1)


def test_typed_spec_fields_reach_the_stored_task(client: Client) -> None:
    task_id = client.submit(
        "noop", b"x", priority="high", tenant="lab", gpus=1, min_gpu_memory_mb=16_000, gpu_models=["A100"],
        timeout_ms=5000, max_retries=2, idempotency_key="k1", affinity_key="model-7", task_labels={"team": "ml"},
    )
    spec = client.get(task_id).spec
    assert (spec.priority, spec.tenant, spec.requirements.gpus, spec.requirements.min_gpu_memory_mb) == (
        common_pb2.PRIORITY_HIGH, "lab", 1, 16_000
    )
    assert (list(spec.requirements.gpu_models), spec.timeout_ms, spec.max_retries) == (["A100"], 5000, 2)
    assert (spec.affinity_key, dict(spec.labels)) == ("model-7", {"team": "ml"})
    assert client.submit("noop", b"x", tenant="lab", idempotency_key="k1") == task_id


def test_states_have_names_and_filter_listings(client: Client, start_agent) -> None:  # type: ignore[no-untyped-def]
    assert {s.value for s in TaskState} == set(common_pb2.TaskState.values())  # one name per contract value
    assert TaskState.TIMED_OUT.label == "timed_out" and TaskState.FAILED.terminal and not TaskState.RUNNING.terminal
    start_agent("w1")
    done = client.run("noop", wait_s=30)
    assert TaskState(done.state) is TaskState.SUCCEEDED and done.state == TaskState.SUCCEEDED
    cancelled = client.submit("sleep", "60", labels=["nowhere"])  # no worker has the label: it stays pending
    assert client.cancel(cancelled) is TaskState.CANCELLED
    assert [t.id for t in client.list(state=TaskState.CANCELLED)] == [cancelled]
    assert [t.id for t in client.list(state="succeeded")] == [done.id]
    with pytest.raises(ValueError, match="state 'finished' is not one of pending, assigned, running"):
        client.list_page(state="finished")


class _RateLimited(scheduler_pb2_grpc.SchedulerServicer):
    """A server that refuses every submission with a retry delay, as a rate limit in front of a
    control plane does: the wire format of google.rpc.RetryInfo is what the client must read."""

    def SubmitTask(self, request: object, context: grpc.ServicerContext) -> None:
        status = Status(code=grpc.StatusCode.RESOURCE_EXHAUSTED.value[0], message="slow down")
        detail = status.details.add()
        detail.Pack(RetryInfo(retry_delay=Duration(seconds=1, nanos=500_000_000)))
        context.set_trailing_metadata((("grpc-status-details-bin", status.SerializeToString()),))
        context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "slow down")


def test_a_batch_over_one_message_is_refused_with_a_sentence_and_the_session_goes_on(client: Client) -> None:
    """Ten specs of 2 MB do not fit in one 16 MiB message: refused at once, on the session stream,
    on unary calls and by the AsyncClient alike, and the session still takes the next submit."""
    big = [gpucp.task_spec("noop", b"x" * (2 << 20), tenant="oversize") for _ in range(10)]
    with pytest.raises(gpucp.InvalidArgument, match="smaller batches"):
        client.submit_many(big)
    with Client(client.server, session=False) as unary, pytest.raises(gpucp.InvalidArgument, match="smaller batches"):
        unary.submit_many(big)

    async def from_async() -> None:
        async with AsyncClient(client.server) as aio:
            await aio.submit_many(big)

    with pytest.raises(gpucp.InvalidArgument, match="smaller batches"):
        asyncio.run(from_async())
    ids = client.submit_many([gpucp.task_spec("noop", tenant="oversize")] * 2)
    assert len(ids) == 2
    assert {t.id for t in client.list(tenant="oversize")} == set(ids)  # none of the big ones was stored


def test_resource_exhausted_carries_the_retry_delay_the_server_sent() -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    scheduler_pb2_grpc.add_SchedulerServicer_to_server(_RateLimited(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with Client(f"127.0.0.1:{port}", token="") as client, pytest.raises(gpucp.ResourceExhausted) as raised:
            client.submit("noop")
        assert (raised.value.retry_after, raised.value.message) == (1.5, "slow down")

        async def async_submit() -> float | None:
            async with AsyncClient(f"127.0.0.1:{port}", token="") as aclient:
                with pytest.raises(gpucp.ResourceExhausted) as raised:
                    await aclient.submit("noop")
                return raised.value.retry_after

        assert asyncio.run(async_submit()) == 1.5
    finally:
        server.stop(None)


def test_the_old_import_paths_still_work() -> None:
    from gpucp.client import GpucpError, Unfinished, task_spec

    assert GpucpError is gpucp.GpucpError and issubclass(Unfinished, gpucp.DeadlineExceeded)
    assert task_spec("noop", tenant="t").tenant == "t"
