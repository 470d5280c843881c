"""Per-pod credentials: a control plane with --auth and --autoscale gives each RunPod pod (the
fake RunPod API, real SDK, real agents) a token of its own, bound to that pod's worker id and
refused once the pod is terminated."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cluster import eventually
from controlplane.auth import Authority
from controlplane.autoscaler.credentials import PodCredentials
from fake_runpod import FakeRunPod
from gpucp.client import task_spec
from gpucp.v1 import common_pb2, workers_pb2
from security.secured import RawAgent, client_as, code_of, probe, start_secured


def test_each_pod_gets_its_own_token_bound_to_its_worker_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with FakeRunPod(tmp_path) as fake:
        for key, value in fake.sdk_env().items():
            monkeypatch.setenv(key, value)
        config = tmp_path / "autoscale.json"
        config.write_text(json.dumps({
            "interval_s": 0.2,
            "api": {"max_attempts": 3, "backoff_base_s": 0.05, "backoff_cap_s": 0.2},
            "pool": [{"name": "a100", "gpu_type_id": "NVIDIA A100 80GB PCIe", "gpu_count": 1,
                      "image": "acme/gpucp-agent:test", "cloud_type": "SECURE", "min": 0, "max": 2,
                      "idle_timeout_s": 1.5, "scale_up_cooldown_s": 0, "scale_down_cooldown_s": 0.5,
                      "register_timeout_s": 60}],
        }))
        cp = start_secured(tmp_path, "--autoscale", str(config))
        try:
            with client_as(cp, "submitter-a") as a:
                spec = task_spec("sleep", json.dumps({"seconds": 1.0}), gpus=1, min_gpu_memory_mb=40 * 1024,
                                 max_retries=0)
                done = [a.wait(t, timeout_s=60) for t in a.submit_many([spec, spec])]
            states = {common_pb2.TaskState.Name(t.state).removeprefix("TASK_STATE_") for t in done}
            probe("tasks on autoscaled pods under --auth", "SUCCEEDED", ",".join(sorted(states)))
            pods = list(fake.pods.values())
            tokens = [pod.env.get("GPUCP_TOKEN", "") for pod in pods]
            own = (all(t.startswith("gpucp-pod.") for t in tokens) and len(set(tokens)) == len(pods)
                   and not any("GPUCP_AGENT_TOKEN" in pod.env for pod in pods))
            probe("a pod's environment", "own token, no fleet secret", "own token, no fleet secret" if own
                  else str([sorted(pod.env) for pod in pods]))
            pod = pods[0]

            def register_with_pod_token(worker_id: str) -> str:
                raw = RawAgent(cp.address, None, workers_pb2.Register(worker_id=worker_id, slots=1),
                               token=pod.env["GPUCP_TOKEN"])
                try:
                    return code_of(raw.first())
                finally:
                    raw.close()

            probe("a pod's token as another worker id", "PERMISSION_DENIED", register_with_pod_token("box-1"))
            forged = pod.env["GPUCP_TOKEN"].rpartition(".")[0] + "." + "0" * 64
            raw = RawAgent(cp.address, None, workers_pb2.Register(worker_id=pod.id, slots=1), token=forged)
            probe("a pod token with a forged signature", "UNAUTHENTICATED", code_of(raw.first()))
            raw.close()
            # A token the control plane made for a pod whose id it does not know yet (being created,
            # or not adopted yet after a restart): retry later, not a refusal for good.
            early = PodCredentials(Authority({}, enabled=True), fake.api_key).token("gpucp-a100-0badc0de")
            raw = RawAgent(cp.address, None, workers_pb2.Register(worker_id="anything", slots=1), token=early)
            probe("a pod token before its pod id is known", "UNAVAILABLE", code_of(raw.first()))
            raw.close()
            eventually(lambda: all(p.status == "TERMINATED" for p in fake.pods.values()), 30,
                       "the idle pods to be terminated")
            # Its agent is gone with it; its token, if someone kept it, is refused from now on.
            eventually(lambda: register_with_pod_token(pod.id) == "UNAUTHENTICATED", 10,
                       "the token refused once its pod is terminated")
            probe("a terminated pod's token", "UNAUTHENTICATED", register_with_pod_token(pod.id))
        finally:
            cp.kill()
