"""Two replicas on one PostgreSQL database under load: kill -9 the leader, freeze it and resume it,
cut it from PostgreSQL with a loopback proxy, restart PostgreSQL. Nothing accepted may be lost,
no task may finish twice, and a replica serves again within seconds (failover, printed)."""

from __future__ import annotations

import collections
import json
import random
import signal
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cluster import FAULT_REPORT, PYTHONPATH, AgentProcess, eventually, wait_for_workers
from faults.proxy import Proxy
from faults.watch import EventLog
from gpucp import Client, GpucpError, Unavailable, task_spec
from gpucp.testdb import PostgresServer
from gpucp.testing import ControlPlaneProcess
from gpucp.v1 import common_pb2

pytestmark = pytest.mark.parametrize("store_kind", ["postgresql"], indirect=True)


@pytest.fixture(scope="module")
def own_postgres() -> Iterator[PostgresServer]:
    """A server of this module's own: a trial restarts it."""
    with PostgresServer(durable=False) as server:
        yield server


def serving(cp: ControlPlaneProcess) -> bool:
    try:
        with grpc.insecure_channel(cp.address) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
    except grpc.RpcError:
        return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


class Replicas:
    """Two `gpucp serve` on one database (one of them, optionally, through a proxy), four agents
    given both addresses, and the tasks submitted to them."""

    def __init__(self, tmp_path: Path, db: str, proxied_db: str | None = None, heartbeat_timeout: float = 2.0) -> None:
        self.replicas = []
        for name, url in (("a", proxied_db or db), ("b", db)):
            (tmp_path / name).mkdir()
            # The agents' re-attach window after a takeover; 2 s heartbeats judge the rest.
            self.replicas.append(ControlPlaneProcess(tmp_path / name, "--reconnect-grace", "20", db=url,
                                                     heartbeat_timeout=heartbeat_timeout, pythonpath=PYTHONPATH))
        self.replicas[0].start()
        eventually(lambda: serving(self.replicas[0]), 30, "the first replica to lead")
        self.replicas[1].start()
        self.servers = ",".join(cp.address for cp in self.replicas)
        self.exec_log = tmp_path / "executions.log"
        handler = ["--slots", "8", "--handler", "record=fault_handlers:record", "--kinds", "record"]
        self.fleet = [AgentProcess(tmp_path, self.servers, f"box-{i}", *handler,
                                   env={"GPUCP_EXEC_LOG": str(self.exec_log)}) for i in range(4)]
        self.ids: list[str] = []
        with Client(self.servers) as client:
            wait_for_workers(client, [a.worker_id for a in self.fleet])
        self.outcomes = EventLog(self.servers)

    def leader(self) -> ControlPlaneProcess:
        return eventually(lambda: next((cp for cp in self.replicas if serving(cp)), None), 30, "a leader")

    def submit(self, tasks: int, rng: random.Random) -> None:
        specs = [task_spec("record", json.dumps({"seconds": rng.choice([0.005, 0.02, 0.05])}), max_retries=0)
                 for _ in range(tasks)]
        with Client(self.servers) as client:
            for i in range(0, tasks, 500):
                self.ids.extend(client.submit_many(specs[i : i + 500]))

    def report(self, trial: str, trials: int, failovers: list[float]) -> None:
        with Client(self.servers) as client:
            eventually(lambda: _succeeded(client) >= len(self.ids), 240, "every accepted task to finish")
            finished = [client.get(t) for t in self.ids]
        lost = [t.id for t in finished if t.state != common_pb2.TASK_STATE_SUCCEEDED]
        runs = collections.Counter(line.split()[0] for line in self.exec_log.read_text().splitlines())
        rerun = {t: n for t, n in runs.items() if n > 1}
        duplicated = [t for t, n in self.outcomes.terminal.items() if n > 1]
        ms = sorted(s * 1000 for s in failovers)
        FAULT_REPORT.append({
            "trial": trial, "trials": trials, "tasks": len(self.ids), "lost": len(lost),
            "duplicated": len(duplicated), "rerun": len(rerun),
            "failover_p50_ms": statistics.median(ms), "failover_p99_ms": ms[min(len(ms) - 1, int(len(ms) * 0.99))],
        })
        assert not lost, f"{len(lost)} accepted tasks did not complete"
        assert not duplicated, f"{len(duplicated)} tasks reached a terminal state twice"
        assert set(runs) == set(self.ids), "some task never ran, or something ran that was not submitted"
        # A task runs twice only if its agent did not re-attach it in time; a re-attached one never reruns.
        by_id = {t.id: t for t in finished}
        unexplained = [t for t in rerun if not any("did not re-attach" in e for e in by_id[t].attempt_errors)]
        assert not unexplained, f"{len(unexplained)} tasks ran twice though no attempt of theirs was lost"

    def close(self) -> None:
        for agent in self.fleet:
            agent.stop()
        for cp in self.replicas:
            if cp.proc is not None:
                cp.proc.send_signal(signal.SIGCONT)
            cp.stop()


def failover(replicas: Replicas, fault: Callable[[ControlPlaneProcess], None],
             heal: Callable[[], None] = lambda: None, exits: int = 1) -> float:
    """Seconds from `fault` on the leader to the other replica serving; once it has stopped (with
    `exits`, if it was still running), `heal` and the faulted one is started again as a standby."""
    old = replicas.leader()
    other = next(cp for cp in replicas.replicas if cp is not old)
    began = time.monotonic()
    fault(old)
    eventually(lambda: serving(other), 30, "the standby to take over")
    took = time.monotonic() - began
    if old.process.poll() is None:
        old.process.send_signal(signal.SIGCONT)
        assert old.process.wait(30) == exits, "the replaced leader did not stop as it should"
        if exits:
            assert "; stopping" in old.log(10**7), old.log()
    heal()
    old.start()
    return took


def run_kills(tmp_path: Path, db: str, tasks: int, kills: int) -> None:
    replicas = Replicas(tmp_path, db)
    rng = random.Random(18)
    try:
        replicas.submit(tasks, rng)
        times = []
        for _ in range(kills):
            time.sleep(rng.uniform(0.3, 1.0))  # mid-flight: between commits, sends and results
            times.append(failover(replicas, lambda cp: cp.kill()))
        replicas.report(f"leader kill -9 x{kills}", kills, times)
    finally:
        replicas.close()


def test_killed_leaders_lose_nothing(tmp_path, own_postgres):
    run_kills(tmp_path, own_postgres.database(), tasks=1000, kills=2)


@pytest.mark.slow
def test_killed_leaders_lose_nothing_ten_times(tmp_path, own_postgres):
    run_kills(tmp_path, own_postgres.database(), tasks=5000, kills=10)


def signal_the_leader(tmp_path: Path, db: str, sig: signal.Signals, seed: int, row: str, exits: int = 1) -> None:
    """A standby takes over from a leader sent `sig` under load; the leader then exits with `exits`."""
    replicas = Replicas(tmp_path, db)
    try:
        replicas.submit(1000, random.Random(seed))
        time.sleep(0.5)
        took = failover(replicas, lambda cp: cp.process.send_signal(sig), exits=exits)
        replicas.report(row, 1, [took])
    finally:
        replicas.close()


def test_a_leader_stopped_by_sigterm_hands_over_without_waiting_for_its_lease(tmp_path, own_postgres):
    signal_the_leader(tmp_path, own_postgres.database(), signal.SIGTERM, 22, "leader SIGTERM (handover)", exits=0)


def test_a_frozen_leader_is_replaced_and_on_resuming_stops(tmp_path, own_postgres):
    signal_the_leader(tmp_path, own_postgres.database(), signal.SIGSTOP, 19, "leader SIGSTOP, resumed")


def test_a_leader_cut_from_postgresql_stops_and_a_standby_takes_over(tmp_path, own_postgres):
    db = own_postgres.database()
    proxy = Proxy(own_postgres.port)
    replicas = Replicas(tmp_path, db, proxied_db=db.replace(f":{own_postgres.port}/", f":{proxy.port}/"),
                        heartbeat_timeout=8.0)
    try:
        replicas.submit(1000, random.Random(20))
        time.sleep(0.5)
        cut = replicas.replicas[0]
        assert serving(cut)
        took = failover(replicas, lambda cp: proxy.cut(hold=True), heal=proxy.release)
        # The old leader gave up by itself (failover saw it exit 1) and placed nothing after the cut:
        # every task ran once, as report checks.
        assert "its lease ran out" in cut.log(10**7), cut.log()
        replicas.report("leader cut from PostgreSQL", 1, [took])
    finally:
        replicas.close()


def test_restarting_postgresql_under_load_loses_nothing(tmp_path, own_postgres):
    replicas = Replicas(tmp_path, own_postgres.database())
    try:
        replicas.submit(1000, random.Random(21))
        time.sleep(0.5)
        began = time.monotonic()
        own_postgres.restart()
        with Client(replicas.servers) as client:
            probe = task_spec("record", "{}", max_retries=0)
            replicas.ids.append(eventually(lambda: _submitted(client, probe), 30, "a replica to accept a task again"))
        replicas.report("PostgreSQL restart", 1, [time.monotonic() - began])
    finally:
        replicas.close()


def _succeeded(client: Client) -> int:
    """Tasks succeeded so far; 0 while no replica serves (a leader re-taking its lease after a fault)."""
    try:
        return client.stats().tasks_by_state.get("TASK_STATE_SUCCEEDED", 0)
    except Unavailable:
        return 0


def _submitted(client: Client, spec: common_pb2.TaskSpec) -> str | None:
    try:
        (task_id,) = client.submit_many([spec])
    except GpucpError:
        return None  # no replica serves yet
    return task_id
