"""Replicas on one PostgreSQL database: one leads, the others stand by and take over when it stops,
dies or freezes; clients and agents given every replica's address follow the leader."""

from __future__ import annotations

import json
import signal
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cluster import PYTHONPATH, eventually, run_sql, wait_for_workers
from gpucp import Client, GpucpError
from gpucp.testdb import PostgresServer
from gpucp.testing import AgentProcess, ControlPlaneProcess
from gpucp.v1 import common_pb2

pytestmark = pytest.mark.parametrize("store_kind", ["postgresql"], indirect=True)


@pytest.fixture
def database(postgres: PostgresServer) -> Iterator[str]:
    url = postgres.database()
    yield url
    postgres.drop(url)


def replica(workdir: Path, db: str) -> ControlPlaneProcess:
    """A `gpucp serve` on `db`; a replica taking over waits long for agents to re-attach their tasks."""
    workdir.mkdir()
    return ControlPlaneProcess(workdir, "--reconnect-grace", "60", db=db, pythonpath=PYTHONPATH).start()


def health(cp: ControlPlaneProcess) -> str:
    with grpc.insecure_channel(cp.address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def readyz(cp: ControlPlaneProcess) -> tuple[int, str]:
    return http_get(cp, "/readyz")


def http_get(cp: ControlPlaneProcess, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{cp.http_port}{path}", timeout=10) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def leads(cp: ControlPlaneProcess) -> bool:
    return health(cp) == "SERVING"


def test_a_standby_refuses_naming_the_leader_and_takes_over_at_once_when_the_leader_stops(tmp_path, database):
    first = replica(tmp_path / "a", database)
    second = replica(tmp_path / "b", database)
    try:
        eventually(lambda: leads(first), 30, "the first replica to lead")
        assert health(second) == "NOT_SERVING"
        code, body = readyz(second)
        assert code == 503 and "a standby" in body, body
        code, body = http_get(second, "/api/v1/stats")
        assert code == 503 and "is a standby" in body, body
        with Client(second.address) as alone, pytest.raises(GpucpError, match=f"the leader is {first.address}") as err:
            alone.stats()
        assert err.value.code == grpc.StatusCode.UNAVAILABLE
        servers = f"{second.address},{first.address}"
        with Client(servers) as client:
            before = client.submit("noop", "accepted by the first")
            assert first.terminate() == 0  # the handover: drain, release, and the standby takes over
            eventually(lambda: leads(second), 10, "the standby to take over")
            assert readyz(second)[0] == 200
            # Not placed yet (no agent), it was accepted by the first and is kept by the second.
            assert client.get(before).state == common_pb2.TASK_STATE_PENDING
            assert client.submit("noop", "accepted by the second")
        assert "leading postgresql://" in second.log(), second.log()
        assert run_sql(database, "SELECT epoch FROM leader") == [(2,)]
        # A standby that is stopped has nothing to persist: it just exits.
        third = replica(tmp_path / "c", database)
        assert third.terminate() == 0, third.log()
        assert leads(second)
    finally:
        first.stop()
        second.stop()


def test_a_killed_leaders_running_task_is_reattached_by_the_standby_and_not_run_again(tmp_path, database):
    first = replica(tmp_path / "a", database)
    eventually(lambda: leads(first), 30, "the first replica to lead")
    second = replica(tmp_path / "b", database)
    servers = f"{first.address},{second.address}"
    release, runs = tmp_path / "release", tmp_path / "runs"
    script = f'echo run >> {runs}; while [ ! -e {release} ]; do sleep 0.05; done; echo finished'
    agent = AgentProcess(tmp_path, servers, "follower", "--allow-exec", pythonpath=PYTHONPATH)
    try:
        with Client(servers) as client:
            wait_for_workers(client, ["follower"])
            task_id = client.submit("exec", json.dumps({"argv": ["sh", "-c", script]}), max_retries=0)
            eventually(lambda: client.get(task_id).state == common_pb2.TASK_STATE_RUNNING, 30, "the task to run")
            first.kill()
            eventually(lambda: leads(second), 10, "the standby to take over from a killed leader")
            release.touch()
            (done,) = client.gather([task_id], timeout_s=60)
            assert (done.state, done.worker_id, done.attempt) == (common_pb2.TASK_STATE_SUCCEEDED, "follower", 1), done
            assert runs.read_text() == "run\n", "the re-attached task ran again"
    finally:
        agent.stop()
        first.stop()
        second.stop()


def test_a_frozen_leader_is_replaced_when_its_lease_expires_and_on_resuming_writes_nothing_and_stops(
    tmp_path, database
):
    first = replica(tmp_path / "a", database)
    eventually(lambda: leads(first), 30, "the first replica to lead")
    second = replica(tmp_path / "b", database)
    try:
        with Client(first.address) as client:
            client.submit("noop", tenant="before")
        first.process.send_signal(signal.SIGSTOP)
        eventually(lambda: leads(second), 20, "the standby to take over a frozen leader's expired lease")
        assert "expired: ending its session and taking over" in second.log()
        first.process.send_signal(signal.SIGCONT)
        assert first.process.wait(30) == 1, "the replaced leader did not stop"
        # Which write finds it out first varies: the renewal (a new epoch) or a commit (its session ended).
        assert "; stopping" in first.log(10**7), first.log()
        with Client(second.address) as client:
            client.submit("noop", tenant="after")
        assert run_sql(database, "SELECT tenant FROM tasks ORDER BY tenant") == [("after",), ("before",)]
    finally:
        first.process.send_signal(signal.SIGCONT)
        first.stop()
        second.stop()
