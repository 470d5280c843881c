"""The agent token: a control plane started with GPUCP_AGENT_TOKEN takes only agents that present it."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest

from cluster import AgentProcess, ControlPlaneProcess, wait_for_workers
from gpucp.v1 import workers_pb2, workers_pb2_grpc


@pytest.fixture
def guarded(tmp_path: Path):
    cp = ControlPlaneProcess(tmp_path, env={"GPUCP_AGENT_TOKEN": "s3cret"}).start()
    yield cp
    cp.kill()


def test_only_agents_with_the_token_register_and_get_work(guarded: ControlPlaneProcess, tmp_path: Path) -> None:
    without = AgentProcess(tmp_path, guarded.address, "no-token", env={"GPUCP_AGENT_TOKEN": ""})
    wrong = AgentProcess(tmp_path, guarded.address, "wrong-token", env={"GPUCP_AGENT_TOKEN": "guess"})
    right = AgentProcess(tmp_path, guarded.address, "with-token", env={"GPUCP_AGENT_TOKEN": "s3cret"})
    try:
        # A refused agent stops with a sentence instead of retrying forever.
        assert without.proc.wait(30) == 2, without.log()
        assert "only takes agents that present its token: start the agent with GPUCP_AGENT_TOKEN" in without.log()
        assert wrong.proc.wait(30) == 2, wrong.log()
        assert "the agent's GPUCP_AGENT_TOKEN is not the control plane's" in wrong.log()
        with guarded.client() as client:
            wait_for_workers(client, ["with-token"])
            assert [w.worker_id for w in client.workers()] == ["with-token"]
            assert client.run("noop", "hi", wait_s=20).worker_id == "with-token"
    finally:
        right.stop()


def test_a_raw_stream_without_the_token_is_unauthenticated_before_it_registers(guarded: ControlPlaneProcess) -> None:
    register = workers_pb2.AgentMessage(register=workers_pb2.Register(worker_id="sneaky", slots=1))
    with grpc.insecure_channel(guarded.address) as channel:
        replies = workers_pb2_grpc.WorkersStub(channel).Connect(iter([register]), timeout=10)
        with pytest.raises(grpc.RpcError) as refused:
            next(replies)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with guarded.client() as client:
        assert client.workers() == []


def test_an_autoscale_token_other_than_the_servers_stops_serve(tmp_path: Path) -> None:
    config = tmp_path / "autoscale.json"
    config.write_text(json.dumps({"agent_token": "pods", "pool": [{"name": "a", "gpu_type_id": "x", "image": "i"}]}))
    env = {"GPUCP_AGENT_TOKEN": "server", "RUNPOD_API_KEY": "k"}
    cp = ControlPlaneProcess(tmp_path, "--autoscale", str(config), env=env)
    refusal = "sets an agent_token other than GPUCP_AGENT_TOKEN: its pods would be refused"
    with pytest.raises(AssertionError, match=refusal):
        cp.start()
