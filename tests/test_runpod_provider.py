"""The RunPod provider (the autoscaler's) and the pod identity (the agent's) on the real `runpod`
SDK, pointed at the fake API server."""

from __future__ import annotations

import argparse
import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from agents.runpod import apply_pod_identity, pod_identity
from controlplane.autoscaler.runpod import RunPodAuthError, RunPodInvalidRequest, RunPodProvider, RunPodUnavailable
from fake_runpod import FakeRunPod

A100 = "NVIDIA A100 80GB PCIe"


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeRunPod]:
    with FakeRunPod(tmp_path, start_agents=False) as server:
        for key, value in server.sdk_env().items():
            monkeypatch.setenv(key, value)
        yield server


def provider(fake: FakeRunPod, **kwargs: object) -> RunPodProvider:
    retries: list[str] = []
    p = RunPodProvider(fake.api_key, backoff_base_s=0.01, backoff_cap_s=0.05, on_retry=retries.append, **kwargs)  # type: ignore[arg-type]
    p.retries = retries  # type: ignore[attr-defined]
    return p


def test_pod_round_trip_create_get_list_stop_resume_terminate(fake: FakeRunPod) -> None:
    p = provider(fake)
    types = asyncio.run(p.list_gpu_types())
    assert A100 in {t.id for t in types}, f"GPU types listed: {[t.id for t in types]}"
    a100 = asyncio.run(p.gpu_type(A100, 2))
    assert (a100.memory_gb, a100.secure_price, a100.community_price) == (80, 1.64, 1.19)
    assert a100.price("SECURE") == 1.64 and a100.price("ALL") == 1.19

    env = {"GPUCP_SERVER": "cp.example.com:50051", "GPUCP_POOL": "a100"}
    pod = asyncio.run(p.create_pod("gpucp-a100-1", image="acme/agent:1", gpu_type_id=A100, gpu_count=2,
                                   cloud_type="SECURE", env=env))
    assert pod.id in fake.pods, "create_pod returned an id the API does not know"
    made = fake.pods[pod.id]
    assert (made.gpu_count, made.cloud_type, made.image) == (2, "SECURE", "acme/agent:1")
    assert made.env == env, "the pod did not get the env carrying the control plane address"

    got = asyncio.run(p.get_pod(pod.id))
    assert got is not None and got.cost_per_hr == pytest.approx(2 * 1.64)
    assert got.desired_status == "RUNNING" and got.env == env
    assert [x.id for x in asyncio.run(p.list_pods())] == [pod.id]

    asyncio.run(p.stop_pod(pod.id))
    assert fake.pods[pod.id].status == "EXITED"
    asyncio.run(p.resume_pod(pod.id, 2))
    assert fake.pods[pod.id].status == "RUNNING"
    asyncio.run(p.terminate_pod(pod.id))
    assert fake.pods[pod.id].status == "TERMINATED"
    assert asyncio.run(p.get_pod(pod.id)) is None
    assert asyncio.run(p.list_pods()) == []
    assert p.retries == []  # type: ignore[attr-defined]


def test_wrong_api_key_is_a_clear_error_and_not_retried(fake: FakeRunPod) -> None:
    p = RunPodProvider("not-the-key", backoff_base_s=0.01)
    with pytest.raises(RunPodAuthError, match="RUNPOD_API_KEY"):
        asyncio.run(p.list_pods())
    assert fake.count("list") == 1, "an authentication failure must not be retried"


def test_missing_api_key_fails_before_calling(fake: FakeRunPod, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RUNPOD_API_KEY")
    with pytest.raises(RunPodAuthError, match="no RunPod API key; set RUNPOD_API_KEY"):
        asyncio.run(RunPodProvider().list_pods())
    assert fake.requests == []


@pytest.mark.parametrize("mode", ["http500", "http502", "rate_limit", "graphql_transient"])
def test_transient_failures_are_retried(fake: FakeRunPod, mode: str) -> None:
    p = provider(fake)
    fake.fail_next("create", 2, mode)
    pod = asyncio.run(p.create_pod("gpucp-x-1", image="img", gpu_type_id=A100))
    assert pod.id in fake.pods
    assert fake.count("create") == 3, f"{mode}: expected 2 failed attempts and 1 success"
    assert len(p.retries) == 2 and "retry 1 of 3" in p.retries[0], p.retries  # type: ignore[attr-defined]


def test_retries_give_up_with_the_reason(fake: FakeRunPod) -> None:
    p = provider(fake, max_attempts=3)
    fake.fail_next("create", 5, "http500")
    with pytest.raises(RunPodUnavailable, match="other than JSON.*after 3 attempts"):
        asyncio.run(p.create_pod("gpucp-x-1", image="img", gpu_type_id=A100))
    assert fake.count("create") == 3 and fake.live_pods() == []


def test_invalid_request_is_not_retried(fake: FakeRunPod) -> None:
    p = provider(fake)
    fake.fail_next("create", 1, "invalid")
    with pytest.raises(RunPodInvalidRequest, match="gpuCount must be at most 8"):
        asyncio.run(p.create_pod("gpucp-x-1", image="img", gpu_type_id=A100, gpu_count=9))
    assert fake.count("create") == 1
    with pytest.raises(RunPodInvalidRequest, match="No GPU found"):
        asyncio.run(p.create_pod("gpucp-x-1", image="img", gpu_type_id="NVIDIA Imaginary 1TB"))
    with pytest.raises(RunPodInvalidRequest, match="quote"):
        asyncio.run(p.create_pod("gpucp-x-1", image="img", gpu_type_id=A100, env={"A": 'say "hi"'}))
    assert fake.count("create") == 1, "invalid requests must not reach RunPod again"


def test_unreachable_api_is_retried_then_reported(fake: FakeRunPod, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("RUNPOD_API_BASE_URL", f"http://127.0.0.1:{port}")
    p = provider(fake, max_attempts=2)
    with pytest.raises(RunPodUnavailable, match="cannot reach the RunPod API.*after 2 attempts"):
        asyncio.run(p.list_pods())
    assert len(p.retries) == 1  # type: ignore[attr-defined]


def test_agent_in_a_pod_registers_its_pod_id_and_price(fake: FakeRunPod) -> None:
    pod = asyncio.run(provider(fake).create_pod("gpucp-a100-1", image="img", gpu_type_id=A100, cloud_type="COMMUNITY",
                                               env={"GPUCP_POOL": "a100"}))
    env = {**fake.sdk_env(), "RUNPOD_POD_ID": pod.id, "GPUCP_POOL": "a100"}
    identity = pod_identity(env)
    assert identity.pod_id == pod.id and identity.cost_per_hour == pytest.approx(1.19)
    assert identity.labels == [f"pod={pod.id}", "pool=a100"]

    # Without an API key the price the provider put into the env is used.
    assert pod_identity({"RUNPOD_POD_ID": "p1", "GPUCP_COST_PER_HOUR": "0.5"}).cost_per_hour == 0.5
    with pytest.raises(ValueError, match="RUNPOD_POD_ID"):
        pod_identity({})

    args = argparse.Namespace(worker_id=None, provider=None, label=["zone=eu"], cost_per_hour=0.0)
    apply_pod_identity(args, {"RUNPOD_POD_ID": "p1", "GPUCP_COST_PER_HOUR": "0.5"})
    assert (args.worker_id, args.provider, args.cost_per_hour) == ("p1", "runpod", 0.5)
    assert args.label == ["zone=eu", "pod=p1"]
