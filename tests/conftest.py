from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cluster import AgentProcess, ControlPlaneProcess, wait_for_workers
from gpucp import Client


@pytest.fixture
def controlplane(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[ControlPlaneProcess]:
    # Extra `gpucp serve` flags via indirect parametrization, e.g. ("--sync", "full").
    cp = ControlPlaneProcess(tmp_path, *getattr(request, "param", ())).start()
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


def pytest_terminal_summary(terminalreporter) -> None:  # type: ignore[no-untyped-def]
    """Print the fault-injection figures (trials, tasks, lost, duplicated, requeue times)."""
    from cluster import FAULT_REPORT

    if not FAULT_REPORT:
        return
    write = terminalreporter.write_line
    write("")
    write(f"{'fault trial':<34}{'trials':>7}{'tasks':>7}{'lost':>6}{'dup':>5}{'re-run':>8}{'requeue p50':>13}{'p99':>9}")
    for row in FAULT_REPORT:
        p50, p99 = row.get("requeue_p50_ms"), row.get("requeue_p99_ms")
        write(
            f"{row['trial']:<34}{row['trials']:>7}{row['tasks']:>7}{row['lost']:>6}{row['duplicated']:>5}"
            f"{row.get('rerun', '-')!s:>8}{(f'{p50:.0f} ms' if p50 is not None else '-'):>13}"
            f"{(f'{p99:.0f} ms' if p99 is not None else '-'):>9}"
        )
