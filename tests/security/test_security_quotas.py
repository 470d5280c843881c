"""Per-tenant quotas and rates from the --auth file's [tenant.NAME] tables, against a real server
and real agents; each prints one row of the security report."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest
from google.rpc.error_details_pb2 import RetryInfo
from google.rpc.status_pb2 import Status

from cluster import AgentProcess, ControlPlaneProcess, eventually, wait_for_workers
from gpucp.client import GpucpError
from gpucp.v1 import common_pb2, scheduler_pb2
from security.secured import client_as, code_of, metadata, probe, scheduler, start_secured, token

S = common_pb2


def agent_as(cp: ControlPlaneProcess, name: str, worker_id: str, *args: str) -> AgentProcess:
    return AgentProcess(cp.workdir, cp.address, worker_id, *args, env={"GPUCP_TOKEN": token(name)})


def test_a_tenant_at_max_running_gpus_waits_with_a_reason_while_others_run(tmp_path: Path) -> None:
    cp = start_secured(tmp_path, tenants="[tenant.team-a]\nmax_running_gpus = 2\n")
    agent = agent_as(cp, "agent-box", "box-gpu", "--gpus", "4xL4-24GB", "--slots", "4")
    try:
        with client_as(cp, "operator") as op, client_as(cp, "submitter-a") as a, client_as(cp, "submitter-b") as b:
            wait_for_workers(op, ["box-gpu"])
            a_ids = [a.submit("sleep", "60", gpus=1) for _ in range(3)]

            def running_a() -> list[str]:
                return [t for t in a_ids if a.get(t).state == S.TASK_STATE_RUNNING]

            running = eventually(lambda: len(running_a()) == 2 and running_a(), what="two of team-a's tasks running")
            [held] = [t for t in a_ids if t not in running]
            b_ids = [b.submit("sleep", "60", gpus=1) for _ in range(2)]
            eventually(lambda: all(b.get(t).state == S.TASK_STATE_RUNNING for t in b_ids),
                       what="team-b's tasks running beside team-a's")
            reason = a.get(held).pending_reason
            probe("a tenant at its max_running_gpus", "pending, says why",
                  "pending, says why" if a.get(held).state == S.TASK_STATE_PENDING
                  and "tenant team-a runs 2 of its 2 GPUs" in reason else reason)
            probe("another tenant's GPU tasks meanwhile", "RUNNING",
                  ",".join(sorted({S.TaskState.Name(b.get(t).state).removeprefix("TASK_STATE_") for t in b_ids})))
            a.cancel(running[0])
            eventually(lambda: a.get(held).state == S.TASK_STATE_RUNNING, what="the held task, its tenant freed a GPU")
            for t in [running[1], held]:
                a.cancel(t)
            for t in b_ids:
                b.cancel(t)
    finally:
        agent.stop()
        cp.kill()


def retry_delay(exc: grpc.RpcError) -> float | None:
    """The google.rpc.RetryInfo delay in a refusal's status details, as any gRPC client reads it."""
    for key, value in exc.trailing_metadata() or ():  # type: ignore[attr-defined]
        if key == "grpc-status-details-bin":
            status = Status.FromString(value)
            for detail in status.details:
                info = RetryInfo()
                if detail.Unpack(info):
                    return info.retry_delay.ToTimedelta().total_seconds()
    return None


def test_a_tenant_past_its_submit_rate_is_told_how_long_to_wait(tmp_path: Path) -> None:
    cp = start_secured(tmp_path, tenants="[tenant.team-a]\nsubmit_rate = 5\n")  # burst: 10
    try:
        stub = scheduler(cp)
        spec = S.TaskSpec(kind="noop")

        def submit(name: str, n: int = 1) -> scheduler_pb2.SubmitTasksResponse:
            request = scheduler_pb2.SubmitTasksRequest(specs=[spec] * n)
            return stub.SubmitTasks(request, metadata=metadata(name), timeout=10)

        submit("submitter-a", 10)  # the whole burst at once
        with pytest.raises(grpc.RpcError) as refused:
            submit("submitter-a")
        delay = retry_delay(refused.value)
        probe("a tenant past its submit_rate", "RESOURCE_EXHAUSTED, delay",
              code_of(refused.value) + (", delay" if delay is not None else ", no RetryInfo"))
        assert delay is not None and 0 < delay <= 0.2, delay  # one token at 5/s
        assert f"retry in {delay:.3f} s" in refused.value.details(), refused.value.details()
        probe("another tenant meanwhile", "OK", code_of(submit("submitter-b", 20)))
        with pytest.raises(grpc.RpcError) as too_big:
            submit("submitter-a", 11)
        probe("a batch larger than the tenant's burst", "RESOURCE_EXHAUSTED, burst",
              code_of(too_big.value) + (", burst" if "more than its burst of 10" in too_big.value.details()
                                        else f": {too_big.value.details()}"))
        time.sleep(delay)  # what a client does with the delay: then the same call passes
        probe("the same submission after the delay", "OK", code_of(submit("submitter-a")))
        with client_as(cp, "submitter-a") as a, pytest.raises(GpucpError) as sdk:
            a.submit_many([spec] * 10)
        probe("the SDK's error names the delay", "RESOURCE_EXHAUSTED, delay",
              sdk.value.code.name + (", delay" if "retry in" in sdk.value.message else ""))
    finally:
        cp.kill()
