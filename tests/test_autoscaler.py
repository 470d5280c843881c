"""The autoscaler end to end: a real control plane with --autoscale, the real `runpod` SDK
talking to the fake RunPod API, and agents (started by the fake, one per pod) that register
and run the tasks."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest

from cluster import PYTHONPATH, ControlPlaneProcess, eventually
from fake_runpod import FakeRunPod
from gpucp import Client
from gpucp.client import task_spec
from gpucp.testing import child_env
from gpucp.v1 import admin_pb2, admin_pb2_grpc, common_pb2

A100 = "NVIDIA A100 80GB PCIe"
A100_SECURE_PRICE = 1.64
# Every autoscaled control plane here asks agents for this token, which it hands to its pods.
POD_TOKEN = "pod-token-1"
# Our bill starts when the create call returns and ends when the terminate call returns; the
# fake's starts and ends while it handles those calls. The gap is one loopback HTTP response
# (milliseconds) plus thread scheduling on a busy 2-core machine: 0.5 s is generous.
UPTIME_TOLERANCE_S = 0.5


def pool(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": "a100",
        "gpu_type_id": A100,
        "gpu_count": 1,
        "image": "acme/gpucp-agent:test",
        "cloud_type": "SECURE",
        "min": 0,
        "max": 3,
        "idle_timeout_s": 60,
        "scale_up_cooldown_s": 0,
        "scale_down_cooldown_s": 0.5,
        "register_timeout_s": 60,
    }
    return {**base, **overrides}


class Admin:
    def __init__(self, address: str) -> None:
        self._channel = grpc.insecure_channel(address)
        self._stub = admin_pb2_grpc.AdminStub(self._channel)

    def costs(self) -> admin_pb2.CostReport:
        return self._stub.GetCosts(admin_pb2.GetCostsRequest(), timeout=10)

    def events(self, action: str = "") -> list[admin_pb2.ScalingEvent]:
        events = self._stub.ListScalingEvents(admin_pb2.ListScalingEventsRequest(), timeout=10).events
        return [e for e in events if not action or e.action == action]

    def log(self) -> str:
        return "\n".join(f"{e.action}: {e.message}" for e in self.events())

    def close(self) -> None:
        self._channel.close()


@contextmanager
def autoscaled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pools: list[dict[str, Any]], before_start: Any = None,
    **fake_options: Any,
) -> Iterator[tuple[FakeRunPod, ControlPlaneProcess, Client, Admin]]:
    with FakeRunPod(tmp_path, **fake_options) as fake:
        for key, value in fake.sdk_env().items():
            monkeypatch.setenv(key, value)
        config = tmp_path / "autoscale.json"
        config.write_text(json.dumps({
            "interval_s": 0.2,
            "agent_token": POD_TOKEN,
            "api": {"max_attempts": 3, "backoff_base_s": 0.05, "backoff_cap_s": 0.2},
            "pool": pools,
        }))
        if before_start is not None:
            before_start(fake)
        cp = ControlPlaneProcess(tmp_path, "--autoscale", str(config))
        cp.start()
        client, admin = cp.client(), Admin(cp.address)
        try:
            yield fake, cp, client, admin
        except BaseException:
            print("control plane log:\n", cp.log())
            for pod_id in fake.pods:
                print(f"agent of pod {pod_id}:\n", fake.agent_log(pod_id))
            raise
        finally:
            client.close()
            admin.close()
            if cp.proc is not None and cp.proc.poll() is None:
                cp.proc.kill()
                cp.proc.wait()


def gpu_task(tenant: str, seconds: float) -> common_pb2.TaskSpec:
    return task_spec("sleep", json.dumps({"seconds": seconds}), tenant=tenant, gpus=1,
                     min_gpu_memory_mb=40 * 1024, max_retries=0)


def test_burst_scales_up_runs_on_pods_scales_down_and_bills(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with autoscaled(tmp_path, monkeypatch, [pool(max=3, idle_timeout_s=1.5)]) as (fake, cp, client, admin):
        assert fake.live_pods() == [], "min is 0: no pod before there is work"
        specs = [gpu_task("alice", 1.0)] * 4 + [gpu_task("bob", 1.0)] * 2
        ids = client.submit_many(specs)

        # 1. The burst scales the pool up through the SDK; the pods' agents register and run it all.
        ups = eventually(lambda: admin.events("scale_up"), 10, "a scale-up decision")
        assert "scaled pool a100 from 0 to 3: 6 pending tasks need 1 GPU with >= 40 GB" in ups[0].message, admin.log()
        tasks = [client.wait(t, timeout_s=60) for t in ids]
        assert [t.state for t in tasks] == [common_pb2.TASK_STATE_SUCCEEDED] * 6, [t.error for t in tasks]
        pods = {p.id: p for p in fake.pods.values()}
        assert len(pods) == 3 and fake.peak_live_pods == 3, f"expected 3 pods, the fake has {len(pods)}"
        assert {t.worker_id for t in tasks} <= set(pods), "tasks ran somewhere other than the pods"
        workers = {w.worker_id: w for w in client.workers()}
        for pod_id in pods:
            w = workers[pod_id]
            assert w.provider == "runpod" and f"pod={pod_id}" in w.labels and "pool=a100" in w.labels
            assert w.cost_per_hour == pytest.approx(A100_SECURE_PRICE), "the agent did not register the pod's price"
        assert all(p.env["GPUCP_SERVER"] == cp.address for p in pods.values())
        assert all(p.env["GPUCP_AGENT_TOKEN"] == POD_TOKEN for p in pods.values()), "pods registered without the token?"

        # 2. Idle past the timeout: back to min (0), every pod terminated at RunPod.
        eventually(lambda: all(p.status == "TERMINATED" for p in fake.pods.values()), 20,
                   "the idle pods to be terminated")
        downs = admin.events("scale_down")
        assert downs and "idle for more than 1.5 s" in downs[0].message, admin.log()
        assert len(admin.events("terminated")) == 3
        eventually(lambda: admin.costs().pools[0].pods == 0, 5, "the pool to report 0 pods")

        # 5. The bill matches the fake's prices x uptimes, and the tenants' shares add up.
        report = admin.costs()
        assert {p.pod_id for p in report.pods} == set(pods)
        for billed in report.pods:
            real = fake.pods[billed.pod_id]
            assert billed.state == "terminated" and billed.cost_per_hour == pytest.approx(real.cost_per_hr)
            assert abs(billed.uptime_s - real.uptime_s()) < UPTIME_TOLERANCE_S, (billed.uptime_s, real.uptime_s())
            assert abs(billed.cost - real.billed()) <= real.cost_per_hr * UPTIME_TOLERANCE_S / 3600
        assert report.total_cost == pytest.approx(sum(p.cost for p in report.pods))
        assert report.pools[0].cost == pytest.approx(report.total_cost)
        assert report.total_cost_per_hour == 0, "no pod is running any more"

        tenants = {t.tenant: t for t in report.tenants}
        assert set(tenants) == {"alice", "bob"}
        for tenant, mine in (("alice", tasks[:4]), ("bob", tasks[4:])):
            seconds = sum((t.finished_at_ms - t.started_at_ms) / 1000 for t in mine)
            # Each attempt is charged from its assignment to its outcome event: the same clock
            # readings the task record keeps, to the millisecond.
            assert tenants[tenant].attempts == len(mine)
            assert tenants[tenant].gpu_seconds == pytest.approx(seconds, abs=0.01 * len(mine))
            assert tenants[tenant].cost == pytest.approx(seconds * A100_SECURE_PRICE / 3600, rel=0.02)
        assert report.attributed_cost == pytest.approx(sum(t.cost for t in tenants.values()))
        assert report.attributed_cost < report.total_cost, "tenants cannot be charged more than the pods cost"

        # 6. `gpucp costs` shows the same report to a person: pool, pods, tenants, and the decisions.
        out = gpucp_costs(cp.address)
        assert out.startswith(f"total ${report.total_cost:.4f}   now $0.00/h   "
                              f"attributed to tenants ${report.attributed_cost:.4f}"), out
        assert row(out, "a100") == ["a100", "NVIDIA", "A100", "80GB", "PCIe", "0", "0", "0-3", "0", "0.00",
                                    f"{report.pools[0].cost:.4f}"], out
        for billed in report.pods:
            assert row(out, billed.pod_id)[:4] == [billed.pod_id, "a100", "terminated", billed.worker_id], out
        for tenant, attempts in (("alice", "4"), ("bob", "2")):
            assert row(out, tenant) == [tenant, attempts, f"{tenants[tenant].gpu_seconds:.1f}",
                                        f"{tenants[tenant].cost:.4f}"], out
        assert " scale_up " in out and "scaled pool a100 from 0 to 3" in out, out


def gpucp_costs(address: str) -> str:
    """`gpucp costs` as a person runs it; its output."""
    done = subprocess.run([sys.executable, "-m", "gpucp", "costs", "--server", address], capture_output=True,
                          text=True, timeout=60, env=child_env(PYTHONPATH))
    assert done.returncode == 0, f"gpucp costs exited with {done.returncode}: {done.stderr}"
    return done.stdout


def row(table: str, first: str) -> list[str]:
    """The cells of the line of `table` whose first cell is `first`."""
    found = [line.split() for line in table.splitlines() if line.split()[:1] == [first]]
    assert len(found) == 1, f"expected one row for {first!r} in:\n{table}"
    return found[0]


def test_min_max_and_cooldown_hold(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = pool(min=1, max=3, scale_up_cooldown_s=3)
    with autoscaled(tmp_path, monkeypatch, [config]) as (fake, cp, client, admin):
        first = eventually(lambda: admin.events("scale_up"), 10, "the pool to be filled to its minimum")[0]
        assert "from 0 to 1: pool a100 is below its minimum of 1" in first.message, admin.log()
        client.submit_many([gpu_task("t", 4.0)] * 30)

        second = eventually(lambda: admin.events("scale_up")[1:], 15, "a second scale-up")[0]
        waited = (second.at_ms - first.at_ms) / 1000
        assert waited >= 3 - 0.05, f"scaled up again {waited:.2f} s after the last scale-up, inside the 3 s cooldown"
        assert (second.from_pods, second.to_pods) == (1, 3), f"max is 3: {second.message}"
        at_max = eventually(lambda: admin.events("at_max"), 5, "the pool to report it is at its maximum")
        assert "at its maximum of 3 pods" in at_max[0].message
        time.sleep(1.5)  # a huge backlog, several evaluations: still no fourth pod
        assert fake.count("create") == 3 and fake.peak_live_pods == 3, f"created {fake.count('create')} pods"
        assert len(admin.events("scale_up")) == 2, admin.log()
        # What GpucpAutoscalerAtMax (deploy/prometheus) alerts on: every pod it may have, tasks still waiting.
        with urllib.request.urlopen(f"http://127.0.0.1:{cp.http_port}/metrics", timeout=30) as reply:
            text = reply.read().decode()
        assert 'gpucp_pool_pods{pool="a100"} 3.0' in text and 'gpucp_pool_max_pods{pool="a100"} 3.0' in text, text
        assert re.search(r'gpucp_pool_pending_demand\{pool="a100"\} [1-9]', text), text


def test_a_predicted_wait_over_the_target_scales_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The count trigger is out of reach (100 tasks): only the predicted wait can grow the pool.
    config = pool(min=1, max=3, scale_up_threshold=100, scale_up_wait_s=2)
    with autoscaled(tmp_path, monkeypatch, [config]) as (fake, cp, client, admin):
        eventually(lambda: admin.events("registered"), 20, "the minimum pod to register")
        # One task teaches the core how long such a task takes on the pool's pods.
        first = client.wait(client.submit_spec(gpu_task("t", 1.0)), timeout_s=30)
        assert first.state == common_pb2.TASK_STATE_SUCCEEDED, first.error
        assert not [e for e in admin.events("scale_up") if e.to_pods > 1], admin.log()
        client.submit_many([gpu_task("t", 1.0)] * 8)  # about 8 s of work on 1 slot: over 2 s
        up = eventually(lambda: [e for e in admin.events("scale_up") if "would wait" in e.message], 15,
                        "a scale-up for the predicted wait")[0]
        assert (up.from_pods, up.to_pods) == (1, 3), up.message
        assert "over the 2 s target" in up.message


def test_create_failure_is_retried_and_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # 3 attempts per create: the first create fails all 3 (reported), the next succeeds on its 2nd.
    config = pool(min=1, max=1, scale_up_cooldown_s=1)
    with autoscaled(tmp_path, monkeypatch, [config], before_start=lambda f: f.fail_next("create", 4, "http500")) as (
        fake, cp, client, admin,
    ):
        failed = eventually(lambda: admin.events("create_failed"), 15, "the failed create to be reported")
        assert "could not create a pod for pool a100" in failed[0].message
        assert "after 3 attempts" in failed[0].message and "other than JSON" in failed[0].message, failed[0].message
        eventually(lambda: fake.live_pods(), 15, "the create to be tried again and succeed")
        retries = admin.events("api_retry")
        assert len(retries) == 3 and "retry 1 of 2" in retries[0].message, admin.log()
        assert failed[0].at_ms <= admin.events("scale_up")[1].at_ms - 1000 + 50, "retried inside the cooldown"
        pod = fake.live_pods()[0]
        eventually(lambda: admin.events("registered"), 20, f"pod {pod.id}'s agent to register")
        assert len(fake.pods) == 1 and fake.count("create") == 5


def test_pod_that_never_registers_is_terminated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = pool(min=1, max=1, register_timeout_s=1.5)
    with autoscaled(tmp_path, monkeypatch, [config], before_start=lambda f: f.next_pods_never_register(1)) as (
        fake, cp, client, admin,
    ):
        timeouts = eventually(lambda: admin.events("register_timeout"), 15, "the silent pod to time out")
        silent = timeouts[0].pod_id
        assert "did not register within 1.5 s" in timeouts[0].message
        eventually(lambda: fake.pods[silent].status == "TERMINATED", 5, f"silent pod {silent} to be terminated")
        # The pool is refilled to its minimum with a pod that does come up.
        eventually(lambda: admin.events("registered"), 20, "a replacement pod to register")
        assert len(fake.live_pods()) == 1 and fake.live_pods()[0].id != silent


def test_a_pod_running_a_task_is_not_scaled_down(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = pool(max=1, idle_timeout_s=0.3, scale_down_cooldown_s=0)
    with autoscaled(tmp_path, monkeypatch, [config]) as (fake, cp, client, admin):
        task_id = client.submit_spec(gpu_task("t", 2.5))
        task = client.wait(task_id, timeout_s=60)
        assert task.state == common_pb2.TASK_STATE_SUCCEEDED and task.attempt == 1, (
            f"the task was disturbed on its pod: attempt {task.attempt}, {task.error}"
        )
        downs = eventually(lambda: admin.events("terminated"), 10, "the pod to be terminated once idle")
        assert downs[0].at_ms >= task.finished_at_ms, "the pod was terminated while its task ran"
        assert fake.pods[task.worker_id].status == "TERMINATED"


def test_costs_without_autoscaler_say_how_to_turn_it_on(controlplane: ControlPlaneProcess) -> None:
    admin = Admin(controlplane.address)
    try:
        with pytest.raises(grpc.RpcError) as err:
            admin.costs()
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "--autoscale" in (err.value.details() or "")
    finally:
        admin.close()


def test_a_failed_terminate_is_retried_and_the_pod_not_forgotten(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each API call makes 3 attempts: the first terminate fails all 3, the next evaluation's succeeds.
    config = pool(max=1, idle_timeout_s=0.3, scale_down_cooldown_s=0)
    with autoscaled(tmp_path, monkeypatch, [config], before_start=lambda f: f.fail_next("terminate", 3, "http500")) as (
        fake, cp, client, admin,
    ):
        task = client.wait(client.submit_spec(gpu_task("t", 0.2)), timeout_s=60)
        assert task.state == common_pb2.TASK_STATE_SUCCEEDED, task.error
        failed = eventually(lambda: admin.events("terminate_failed"), 20, "the failed terminate to be reported")
        assert failed[0].pod_id == task.worker_id and "after 3 attempts" in failed[0].message, failed[0].message
        eventually(lambda: fake.pods[task.worker_id].status == "TERMINATED", 20, "the terminate to be tried again")
        assert fake.count("terminate") == 4, f"{fake.count('terminate')} terminate calls, expected 3 failed + 1"
        [billed] = eventually(lambda: [p for p in admin.costs().pods if p.state == "terminated"], 5,
                              "the pod's bill to close")
        assert billed.pod_id == task.worker_id
        assert abs(billed.uptime_s - fake.pods[billed.pod_id].uptime_s()) < UPTIME_TOLERANCE_S, (
            "billed until the terminate that succeeded, not the one that failed"
        )


def test_running_pods_are_adopted_after_a_restart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with autoscaled(tmp_path, monkeypatch, [pool(min=1, max=2)]) as (fake, cp, client, admin):
        registered = eventually(lambda: admin.events("registered"), 30, "the minimum pod to register")
        pod_id = registered[0].pod_id
        admin.close()
        assert cp.terminate() == 0, cp.log()
        assert fake.pods[pod_id].status == "RUNNING", "stopping the control plane must leave its pods running"

        cp.start()  # same port, same config: the pod's agent dials it again
        admin = Admin(cp.address)
        try:
            adopted = eventually(lambda: admin.events("adopted"), 20, "the running pod to be adopted")
            assert adopted[0].pod_id == pod_id and "into pool a100" in adopted[0].message
            again = eventually(lambda: admin.events("registered"), 30, "the adopted pod's agent to register again")
            assert again[0].pod_id == pod_id
            assert fake.count("create") == 1 and len(fake.live_pods()) == 1, (
                "the adopted pod fills the minimum: no second pod may be created"
            )
            assert [p.pod_id for p in admin.costs().pods] == [pod_id], "the adopted pod is billed"
        finally:
            admin.close()
