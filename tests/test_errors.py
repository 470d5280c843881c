"""Every bad input gets the right status and a sentence that says what to do; nothing breaks."""

from __future__ import annotations

import os
import subprocess
import sys

import grpc
import pytest

from cluster import ROOT, ControlPlaneProcess
from gpucp import GpucpError, task_spec
from gpucp.v1 import common_pb2, scheduler_pb2, scheduler_pb2_grpc, workers_pb2, workers_pb2_grpc

INVALID = grpc.StatusCode.INVALID_ARGUMENT


def refused(call, code: grpc.StatusCode, *words: str) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(GpucpError) as info:
        call()
    assert info.value.code == code, f"expected {code.name}, got {info.value}"
    for word in words:
        assert word.lower() in info.value.message.lower(), f"{word!r} not in {info.value.message!r}"
    return info.value.message


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"kind": ""}, ["kind is empty", "handler"]),
        ({"kind": "bad kind!"}, ["not a handler name"]),
        ({"kind": "noop\n"}, ["not a handler name", "'noop\\n'"]),
        ({"payload": b"x" * (4 * 1024 * 1024 + 1)}, ["payload", "limit"]),
        ({"gpus": 1000}, ["gpus", "1000"]),
        ({"gpus": 1, "min_gpu_memory_mb": 80 * 1024**3}, ["MiB, not bytes"]),
        ({"gpus": 1, "min_compute_capability": -1.0}, ["compute capability"]),
        ({"min_gpu_memory_mb": 16_000}, ["gpus is 0"]),
        ({"gpus": 2, "backend": "cpu"}, ["cpu", "has none"]),
        ({"backend": "tpu"}, ["backend", "cuda"]),
        ({"timeout_ms": 30 * 24 * 3600 * 1000}, ["timeout_ms", "7 days"]),
        ({"max_retries": 1000}, ["max_retries"]),
        ({"gpus": 1, "gpu_models": ["--"]}, ["gpu_models", "names no model"]),
    ],
)
def test_bad_specs_are_invalid_argument_with_a_reason(client, fields, words):
    kind = fields.pop("kind", "noop")
    refused(lambda: client.submit(kind, **fields), INVALID, *words)


def test_unknown_priority_is_invalid_argument(controlplane):
    stub = scheduler_pb2_grpc.SchedulerStub(grpc.insecure_channel(controlplane.address))
    spec = common_pb2.TaskSpec(kind="noop", priority=9)  # type: ignore[arg-type]
    with pytest.raises(grpc.RpcError) as info:
        stub.SubmitTask(scheduler_pb2.SubmitTaskRequest(spec=spec), timeout=10)
    assert info.value.code() == INVALID
    assert "priority 9 is not one of" in info.value.details()


def test_a_batch_with_one_bad_spec_stores_nothing(client):
    specs = [task_spec("noop"), task_spec("noop"), task_spec("")]
    message = refused(lambda: client.submit_many(specs), INVALID, "specs[2]", "kind is empty")
    assert "specs[2]" in message
    assert list(client.list()) == [], "a rejected batch left tasks behind"
    refused(lambda: client.submit_many([]), INVALID, "at least one")


def test_unknown_task_is_not_found(client):
    refused(lambda: client.get("no-such-task"), grpc.StatusCode.NOT_FOUND, "no-such-task")
    refused(lambda: client.cancel("no-such-task"), grpc.StatusCode.NOT_FOUND)
    refused(lambda: client.wait("no-such-task", 1), grpc.StatusCode.NOT_FOUND)
    refused(lambda: client.get(""), INVALID, "task_id is empty")


def test_cancelling_a_finished_task_is_failed_precondition(client):
    task_id = client.submit("noop")
    client.cancel(task_id)
    refused(lambda: client.cancel(task_id), grpc.StatusCode.FAILED_PRECONDITION, "already CANCELLED")


def test_bad_page_token_is_invalid_argument(controlplane):
    stub = scheduler_pb2_grpc.SchedulerStub(grpc.insecure_channel(controlplane.address))
    with pytest.raises(grpc.RpcError) as info:
        stub.ListTasks(scheduler_pb2.ListTasksRequest(page_token="zz"), timeout=10)
    assert info.value.code() == INVALID
    assert "page_token 'zz' is not one this server issued" in info.value.details()


def test_full_queue_is_resource_exhausted_and_keeps_what_it_accepted(tmp_path):
    cp = ControlPlaneProcess(tmp_path, "--max-queue", "5").start()
    try:
        with cp.client() as client:
            accepted = client.submit_many([task_spec("noop") for _ in range(5)])
            refused(lambda: client.submit("noop"), grpc.StatusCode.RESOURCE_EXHAUSTED, "queue is full", "--max-queue")
            assert [client.get(t).state for t in accepted] == [common_pb2.TASK_STATE_PENDING] * 5
    finally:
        cp.kill()


def test_a_second_server_on_a_busy_port_refuses_naming_the_port(controlplane, tmp_path):
    # grpc's default SO_REUSEPORT let a second server share the port and half the traffic.
    second = subprocess.run(
        [sys.executable, "-m", "gpucp", "serve", "--listen", controlplane.address, "--db", str(tmp_path / "second.db")],
        capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=tmp_path,
    )  # fmt: skip
    assert second.returncode != 0, f"the second server must refuse to start: {second.stdout}{second.stderr}"
    assert "listening" not in second.stdout, second.stdout
    assert f"port {controlplane.port} is already in use" in second.stderr, second.stderr
    assert not (tmp_path / "second.db").exists(), "a server that cannot listen must not create its database"
    with controlplane.client() as client:
        assert client.get(client.submit("noop")).state == common_pb2.TASK_STATE_PENDING, "the first server stopped"


def _connect(address: str, *messages: workers_pb2.AgentMessage) -> grpc.RpcError:
    stub = workers_pb2_grpc.WorkersStub(grpc.insecure_channel(address))
    with pytest.raises(grpc.RpcError) as info:
        for _ in stub.Connect(iter(messages), timeout=10):
            pass
    return info.value


def test_a_stream_that_does_not_register_first_is_refused(controlplane):
    hb = workers_pb2.AgentMessage(heartbeat=workers_pb2.Heartbeat())
    error = _connect(controlplane.address, hb)
    assert error.code() == INVALID and "first message on Connect must be register" in error.details()


@pytest.mark.parametrize(
    ("register", "words"),
    [
        (workers_pb2.Register(worker_id="w", slots=0), "slots is 0"),
        (workers_pb2.Register(worker_id="", slots=1), "worker_id"),
        (workers_pb2.Register(worker_id="w", slots=1, gpus=[common_pb2.Gpu(index=3)]), "indexed 0..n-1"),
        (workers_pb2.Register(worker_id="w", slots=1, cost_per_hour=-1), "cost_per_hour is -1"),
        (workers_pb2.Register(worker_id="w", slots=1, cost_per_hour=float("inf")), "cost_per_hour is inf"),
        (workers_pb2.Register(worker_id="w", slots=1, gpus=[common_pb2.Gpu(index=0, compute_capability=float("nan"))]),
         "gpus[0].compute_capability is nan"),
        (workers_pb2.Register(worker_id="w", slots=1, gpus=[common_pb2.Gpu(index=0, memory_total_mb=2**63)]),
         "gpus[0].memory_total_mb is 9223372036854775808: more than any GPU has"),
    ],
)
def test_bad_registrations_are_refused_and_the_server_keeps_serving(controlplane, client, register, words):
    error = _connect(controlplane.address, workers_pb2.AgentMessage(register=register))
    assert error.code() == INVALID and words in error.details()
    assert client.stats().workers == 0
    assert client.get(client.submit("noop")).state == common_pb2.TASK_STATE_PENDING
