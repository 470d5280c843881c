"""2,000 agents reconnect at once after a control-plane restart: every one gets back in."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time

import pytest

from cluster import FAULT_REPORT, ROOT, ControlPlaneProcess, _env, eventually


def registrations(log) -> dict[str, int]:  # type: ignore[no-untyped-def]
    counts: dict[str, int] = {}
    if log.exists():
        for line in log.read_text().splitlines():
            worker = line.split()[0]
            counts[worker] = counts.get(worker, 0) + 1
    return counts


def run(tmp_path, agents: int, processes: int) -> None:  # type: ignore[no-untyped-def]
    cp = ControlPlaneProcess(tmp_path, heartbeat_timeout=10.0).start()
    log = tmp_path / "registrations.log"
    env = {**_env(), "GPUCP_STORM_LOG": str(log)}
    per = agents // processes
    procs = []
    for p in range(processes):
        with open(tmp_path / f"storm-{p}.log", "wb") as err:
            procs.append(subprocess.Popen(
                [sys.executable, str(ROOT / "tests" / "storm_agents.py"), cp.address, f"s{p}", str(per)],
                env=env, stdout=subprocess.DEVNULL, stderr=err,
            ))
    try:
        with cp.client() as client:
            eventually(lambda: client.stats().workers == agents, 120, f"{agents} agents to register")
        cp.kill()
        restarted = time.monotonic()
        cp.start()
        with cp.client() as client:
            eventually(lambda: client.stats().workers == agents, 120, f"all {agents} agents to re-register")
            took = time.monotonic() - restarted

        def everyone_back() -> bool:
            # The server counts an agent before the agent has read its answer and logged it.
            counts = registrations(log)
            return len(counts) == agents and all(n >= 2 for n in counts.values())

        with contextlib.suppress(AssertionError):  # the report and the assertion below say who is missing
            eventually(everyone_back, 30, "every agent to see its re-registration")
        back = registrations(log)
        refused = sum(p.read_text().count("Traceback") for p in tmp_path.glob("storm-*.log"))
        FAULT_REPORT.append({"trial": f"reconnect storm, {agents} agents ({took:.1f} s)", "trials": 1,
                             "tasks": 0, "lost": agents - sum(1 for n in back.values() if n >= 2),
                             "duplicated": 0})
        assert len(back) == agents and all(n >= 2 for n in back.values()), "some agent did not get back in"
        assert refused == 0, "an agent process crashed during the storm"
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
        cp.kill()


def test_reconnect_storm_of_2000_agents(tmp_path):
    run(tmp_path, agents=2000, processes=4)


@pytest.mark.slow
def test_reconnect_storm_of_10000_agents(tmp_path):
    run(tmp_path, agents=10_000, processes=10)
