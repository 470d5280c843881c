"""Per-tenant quotas and rates from the --auth file's [tenant.NAME] tables, against a real server
and real agents; each prints one row of the security report."""

from __future__ import annotations

from pathlib import Path

from cluster import AgentProcess, ControlPlaneProcess, eventually, wait_for_workers
from gpucp.v1 import common_pb2
from security.secured import client_as, probe, start_secured, token

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
