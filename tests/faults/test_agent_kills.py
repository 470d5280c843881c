"""kill -9 a random agent every few hundred ms while 2,000 tasks run on 8 agents."""

from __future__ import annotations

import json
import random
import time

import pytest

from cluster import FAULT_REPORT, AgentProcess, ControlPlaneProcess, wait_for_workers
from faults.secured import PLAIN, Setup, with_auth
from faults.watch import EventLog, percentile
from gpucp import Client, task_spec
from gpucp.v1 import common_pb2

ASSIGNED = common_pb2.TASK_STATE_ASSIGNED
RUNNING = common_pb2.TASK_STATE_RUNNING


def requeue_times(events, kills: list[tuple[float, str]]) -> list[float]:  # type: ignore[no-untyped-def]
    """Per task caught on a killed agent: ms from the kill to its next assignment elsewhere."""
    out = []
    for killed_at_ms, worker in kills:
        held: dict[str, int] = {}
        for e in events:
            if e.at_ms > killed_at_ms:
                break
            if e.state in (ASSIGNED, RUNNING) and e.worker_id == worker:
                held[e.task_id] = e.attempt
            elif e.task_id in held and (e.worker_id != worker or e.state not in (ASSIGNED, RUNNING)):
                del held[e.task_id]
        for e in events:
            if e.at_ms > killed_at_ms and e.task_id in held and e.state == ASSIGNED and e.attempt > held[e.task_id]:
                out.append(e.at_ms - killed_at_ms)
                del held[e.task_id]
    return out


def run(tmp_path, tasks: int, rounds: int, agents: int = 8, setup: Setup = PLAIN) -> None:  # type: ignore[no-untyped-def]
    cp = ControlPlaneProcess(tmp_path, *setup.serve, heartbeat_timeout=1.0).start()

    def agent(name: str) -> AgentProcess:
        return AgentProcess(tmp_path, cp.address, name, "--slots", "4", env=setup.agent_env)

    fleet = {f"box-{i}": agent(f"box-{i}") for i in range(agents)}
    try:
        with Client(cp.address, token=setup.client_token) as client:
            wait_for_workers(client, list(fleet))
            log = EventLog(cp.address, setup.client_token)
            rng = random.Random(3)
            specs = [task_spec("sleep", json.dumps({"seconds": rng.choice([0.02, 0.05, 0.1])}), max_retries=0)
                     for _ in range(tasks)]
            ids = []
            for i in range(0, tasks, 500):
                batch = client.submit_many(specs[i : i + 500])
                log.wait_for(batch)  # the watch keeps up, so it sees every task end
                ids.extend(batch)
            kills = []
            for _ in range(rounds):
                time.sleep(0.3)
                victim = rng.choice(list(fleet))
                kills.append((time.time() * 1000, victim))
                fleet[victim].kill()
                fleet[victim] = agent(victim)
            finished = [client.wait(t, timeout_s=120) for t in ids]
            lost = [t.id for t in finished if t.state != common_pb2.TASK_STATE_SUCCEEDED]
            time.sleep(0.5)  # the last events reach the watcher
            duplicated = [t for t, n in log.terminal.items() if n > 1]
            times = requeue_times(log.snapshot(), kills)
            FAULT_REPORT.append({
                "trial": f"agent kill -9 x{rounds}, {agents} agents{', --auth' if setup.serve else ''}",
                "trials": rounds, "tasks": tasks,
                "lost": len(lost), "duplicated": len(duplicated),
                "requeue_p50_ms": percentile(times, 0.5), "requeue_p99_ms": percentile(times, 0.99),
            })
            assert not lost, f"{len(lost)} tasks did not succeed, e.g. {client.get(lost[0])}"
            assert not duplicated, f"{len(duplicated)} tasks reached a terminal state twice"
            assert len(log.terminal) == tasks
            assert times, "no task was caught on a killed agent: the trial proved nothing"
    finally:
        for agent in fleet.values():
            agent.stop()
        cp.kill()


def test_agent_kills_lose_and_duplicate_nothing(tmp_path):
    run(tmp_path, tasks=2000, rounds=20)


def test_agent_kills_with_auth_lose_and_duplicate_nothing(tmp_path):
    """Killed agents come back with their tokens, as the same principal, on the same worker ids."""
    run(tmp_path, tasks=500, rounds=5, setup=with_auth(tmp_path))


@pytest.mark.slow
def test_agent_kills_soak(tmp_path):
    run(tmp_path, tasks=20_000, rounds=200)
