from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cluster import AgentProcess, ControlPlaneProcess, wait_for_workers
from gpucp import Client


@pytest.fixture
def controlplane(tmp_path: Path) -> Iterator[ControlPlaneProcess]:
    cp = ControlPlaneProcess(tmp_path).start()
    yield cp
    if cp.proc is not None and cp.proc.poll() is None:
        cp.proc.kill()
        cp.proc.wait()


@pytest.fixture
def client(controlplane: ControlPlaneProcess) -> Iterator[Client]:
    with controlplane.client() as c:
        yield c


AgentFactory = Callable[..., AgentProcess]


@pytest.fixture
def start_agent(tmp_path: Path, controlplane: ControlPlaneProcess) -> Iterator[AgentFactory]:
    """start_agent("w1", "--gpus", "2xA100-80GB", wait=True) starts an agent process."""
    agents: list[AgentProcess] = []

    def start(worker_id: str, *args: str, wait: bool = True) -> AgentProcess:
        agent = AgentProcess(tmp_path, controlplane.address, worker_id, *args)
        agents.append(agent)
        if wait:
            with controlplane.client() as c:
                wait_for_workers(c, [worker_id])
        return agent

    yield start
    for agent in agents:
        agent.stop()
