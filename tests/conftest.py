from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import cluster
from cluster import ControlPlaneProcess
from gpucp import Client
from gpucp.testdb import PostgresServer
from gpucp.testing import AgentProcess, LocalCluster

if cluster.TEST_DB not in cluster.STORES:
    raise pytest.UsageError(f"GPUCP_TEST_DB={cluster.TEST_DB!r}: give one of {', '.join(cluster.STORES)}")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "both_stores: run the test on SQLite and on PostgreSQL")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if metafunc.definition.get_closest_marker("both_stores") and cluster.TEST_DB == "sqlite":
        metafunc.parametrize("store_kind", cluster.STORES, indirect=True)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the session (started by the first test that needs it); each test
    gets databases of its own. fsync off: tests kill control planes, never the machine."""
    with PostgresServer(durable=False) as server:
        yield server


@pytest.fixture(autouse=True)
def store_kind(request: pytest.FixtureRequest) -> Iterator[str]:
    """The store of the control planes this test starts (tests/cluster.py): SQLite in their working
    directories, or a PostgreSQL database each, dropped after the test."""
    kind: str = getattr(request, "param", cluster.TEST_DB)
    if kind == "sqlite":
        yield kind
        return
    server: PostgresServer = request.getfixturevalue("postgres")
    databases: dict[Path, str] = {}

    def database(workdir: Path) -> str:
        if workdir not in databases:
            databases[workdir] = server.database()
        return databases[workdir]

    cluster.POSTGRES_DATABASE = database
    try:
        yield kind
    finally:
        cluster.POSTGRES_DATABASE = None
        for url in databases.values():
            server.drop(url)


@pytest.fixture
def controlplane(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[ControlPlaneProcess]:
    # Extra `gpucp serve` flags via indirect parametrization, e.g. ("--sync", "full").
    cp = ControlPlaneProcess(tmp_path, *getattr(request, "param", ())).start()
    yield cp
    if cp.process.poll() is None:
        cp.kill()


@pytest.fixture
def client(controlplane: ControlPlaneProcess) -> Iterator[Client]:
    with controlplane.client() as c:
        yield c


def prometheus_tool(name: str) -> str:
    """A binary of Debian's prometheus package, installed when missing (CI starts from scratch)."""
    found = shutil.which(name)
    if found:
        return found
    steps = (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "prometheus"])
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True, timeout=600, check=False)
        if done.returncode != 0:
            pytest.skip(f"{name} is missing and `{' '.join(step)}` failed: {done.stderr[-500:]}")
    found = shutil.which(name)
    if not found:
        pytest.skip(f"the prometheus package installed no {name}")
    return found


@pytest.fixture(scope="session")
def promtool() -> str:
    return prometheus_tool("promtool")


@pytest.fixture(scope="session")
def prometheus() -> str:
    return prometheus_tool("prometheus")


AgentFactory = Callable[..., AgentProcess]


@pytest.fixture
def start_agent(controlplane: ControlPlaneProcess) -> Iterator[AgentFactory]:
    """start_agent("w1", "--gpus", "2xA100-80GB", wait=True) starts an agent process."""
    cluster = LocalCluster(controlplane)
    agents: list[AgentProcess] = []  # every one started, also when a test starts a worker id twice

    def start(worker_id: str, *args: str, wait: bool = True) -> AgentProcess:
        agents.append(cluster.add_agent(worker_id, *args, wait_s=30 if wait else None))
        return agents[-1]

    yield start
    for agent in agents:
        agent.stop()


def pytest_terminal_summary(terminalreporter) -> None:  # type: ignore[no-untyped-def]
    """Print the fault-injection figures (trials, tasks, lost, duplicated, requeue times) and the
    security probes (probe, expected, observed)."""
    from cluster import FAULT_REPORT, SECURITY_REPORT

    write = terminalreporter.write_line
    if SECURITY_REPORT:
        write("")
        write(f"{'security probe':<64}{'expected':<28}observed")
        for probe in SECURITY_REPORT:
            write(f"{probe['probe']:<64}{probe['expected']:<28}{probe['observed']}")
    if not FAULT_REPORT:
        return
    write("")
    write(f"{'fault trial':<34}{'trials':>7}{'tasks':>7}{'lost':>6}{'dup':>5}{'re-run':>8}"
          f"{'requeue p50':>13}{'p99':>9}{'failover p50':>14}{'p99':>9}")
    for row in FAULT_REPORT:
        p50, p99 = row.get("requeue_p50_ms"), row.get("requeue_p99_ms")
        f50, f99 = row.get("failover_p50_ms"), row.get("failover_p99_ms")
        write(
            f"{row['trial']:<34}{row['trials']:>7}{row['tasks']:>7}{row['lost']:>6}{row['duplicated']:>5}"
            f"{row.get('rerun', '-')!s:>8}{(f'{p50:.0f} ms' if p50 is not None else '-'):>13}"
            f"{(f'{p99:.0f} ms' if p99 is not None else '-'):>9}"
            f"{(f'{f50:.0f} ms' if f50 is not None else '-'):>14}{(f'{f99:.0f} ms' if f99 is not None else '-'):>9}"
        )
