"""The usual paths with --auth on: real agents presenting GPUCP_TOKEN, clients in their tenants, an operator."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster import AgentProcess, ControlPlaneProcess, wait_for_workers
from gpucp.v1 import common_pb2
from security.secured import client_as, probe, start_secured, token

S = common_pb2


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[ControlPlaneProcess]:
    cp = start_secured(tmp_path, "--retry-base", "0.05")
    yield cp
    cp.kill()


def agent_as(cp: ControlPlaneProcess, name: str, worker_id: str, *args: str) -> AgentProcess:
    return AgentProcess(cp.workdir, cp.address, worker_id, *args, env={"GPUCP_TOKEN": token(name)})


def test_agents_with_their_tokens_run_each_tenants_tasks(secured: ControlPlaneProcess) -> None:
    agents = [agent_as(secured, "agent-box", f"box-{i}", "--slots", "4", "--allow-exec") for i in range(2)]
    try:
        with client_as(secured, "operator") as op:
            wait_for_workers(op, ["box-0", "box-1"])
            with client_as(secured, "submitter-a") as a, client_as(secured, "submitter-b") as b:
                ids_a = a.submit_many([common_pb2.TaskSpec(kind="noop", payload=b"a") for _ in range(50)])
                ids_b = b.submit_many([common_pb2.TaskSpec(kind="noop", payload=b"b") for _ in range(50)])
                done_a = [a.wait(t, timeout_s=60) for t in ids_a]
                done_b = [b.wait(t, timeout_s=60) for t in ids_b]
                ran = a.run("exec", json.dumps({"argv": ["echo", "hello"]}), wait_s=30)
        states = {S.TaskState.Name(t.state).removeprefix("TASK_STATE_") for t in done_a + done_b}
        probe("100 tasks of 2 tenants on 2 token agents", "SUCCEEDED", ",".join(sorted(states)))
        assert {t.spec.tenant for t in done_a} == {"team-a"} and {t.spec.tenant for t in done_b} == {"team-b"}
        assert json.loads(ran.result)["stdout"] == "hello\n"
    finally:
        for agent in agents:
            agent.stop()


def test_an_agent_outside_its_worker_ids_stops_with_a_sentence(secured: ControlPlaneProcess) -> None:
    agent = agent_as(secured, "agent-other", "box-9")
    code = agent.proc.wait(30)
    probe("gpucp agent as a worker id its token does not cover", "exit 2, says why",
          f"exit {code}" + (", says why" if "may not register as worker 'box-9'" in agent.log() else ""))


def test_a_worker_that_reconnects_with_its_own_token_keeps_its_work(secured: ControlPlaneProcess) -> None:
    agent = agent_as(secured, "agent-box", "box-back", "--slots", "1")
    try:
        with client_as(secured, "submitter-a") as a, client_as(secured, "operator") as op:
            wait_for_workers(op, ["box-back"])
            first = a.submit("sleep", json.dumps({"seconds": 0.2}))
            assert a.wait(first, timeout_s=30).state == S.TASK_STATE_SUCCEEDED
            agent.restart()
            wait_for_workers(op, ["box-back"])
            again = a.run("noop", "x", wait_s=30)
        probe("the same principal re-registers its worker id", "SUCCEEDED",
              S.TaskState.Name(again.state).removeprefix("TASK_STATE_"))
    finally:
        agent.stop()
