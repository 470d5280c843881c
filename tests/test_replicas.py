"""Several control plane addresses: clients, the CLI and agents go to the replica that serves."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from cluster import PYTHONPATH, eventually, wait_for_workers
from gpucp import Client, GpucpError, server_address
from gpucp.testing import AgentProcess, ControlPlaneProcess, make_pki
from gpucp.tls import channel_credentials
from gpucp.v1 import common_pb2
from test_cli import gpucp


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def replica(workdir: Path, db: Path, port: int = 0) -> ControlPlaneProcess:
    """A `gpucp serve` on `db`; a replica taking over waits long for agents to re-attach their tasks."""
    workdir.mkdir()
    cp = ControlPlaneProcess(workdir, "--reconnect-grace", "60", db=db, pythonpath=PYTHONPATH)
    cp.port = port
    return cp


class Standby:
    """A standby as a replica that does not lead answers: health NOT_SERVING, and every gpucp call
    UNAVAILABLE naming the leader. It counts the gpucp calls that reach it."""

    def __init__(self, leader: str) -> None:
        self.calls = 0
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        servicer = health.HealthServicer()
        servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(servicer, self.server)
        self.server.add_generic_rpc_handlers((self._Refuse(self, leader),))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    class _Refuse(grpc.GenericRpcHandler):
        def __init__(self, standby: Standby, leader: str) -> None:
            self.standby, self.leader = standby, leader

        def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
            if not details.method.startswith("/gpucp."):  # type: ignore[attr-defined]
                return None

            def refuse(request: bytes, context: grpc.ServicerContext) -> bytes:
                self.standby.calls += 1
                context.abort(grpc.StatusCode.UNAVAILABLE, f"this replica is a standby; the leader is {self.leader}")

            return grpc.stream_stream_rpc_method_handler(lambda requests, context: refuse(b"", context))

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


@pytest.fixture
def standby_of(controlplane: ControlPlaneProcess) -> Iterator[Standby]:
    standby = Standby(controlplane.address)
    yield standby
    standby.server.stop(None)


def test_a_list_of_addresses_is_kept_in_order_with_default_ports():
    assert server_address("a.example,10.0.0.2:6000, [::1]") == "a.example:50051,10.0.0.2:6000,[::1]:50051"
    assert server_address("dns:///gpucp.ns.svc:50051") == "dns:///gpucp.ns.svc:50051"


@pytest.mark.parametrize(("text", "says"), [
    ("a:1,,b:2", "an empty address between commas"),
    ("a:1,dns:///b:2", "give a grpc URI such as dns:///name:50051 alone"),
    ("a:1,b:99999", "the port must be a number from 1 to 65535"),
    (",".join(f"h{i}" for i in range(17)), "give at most 16"),
])
def test_a_bad_list_of_addresses_is_refused_with_a_sentence(text, says):
    with pytest.raises(ValueError, match=says):
        server_address(text)
    refused = gpucp("status", "--server", text)
    assert refused.returncode == 1 and says in refused.stderr


def test_an_agent_whose_replicas_do_not_resolve_says_so_and_keeps_trying(tmp_path):
    agent = AgentProcess(tmp_path, "gpucp-a.invalid,gpucp-b.invalid", "lost", pythonpath=PYTHONPATH)
    try:
        eventually(lambda: agent.log().count("none of them resolves") >= 2, 30, "two attempts that say why they failed")
        assert agent.proc.poll() is None, agent.log()
        assert "Traceback" not in agent.log()
    finally:
        agent.stop()


def test_calls_and_agents_go_to_the_serving_replica_not_the_standby_listed_first(controlplane, standby_of):
    servers = f"{standby_of.address},{controlplane.address}"
    agent = AgentProcess(controlplane.workdir, servers, "behind-standby", pythonpath=PYTHONPATH)
    try:
        with Client(servers) as client:
            wait_for_workers(client, ["behind-standby"])
            task = client.run("noop", "through the list")
            assert (task.state, task.result) == (common_pb2.TASK_STATE_SUCCEEDED, b"through the list")
        status = gpucp("status", env={"GPUCP_SERVER": servers})
        assert status.returncode == 0 and "behind-standby" in status.stdout, status.stderr
        assert standby_of.calls == 0, "a call went to the standby, whose health says NOT_SERVING"
        # Named alone, the standby is reached and its refusal names the leader.
        with Client(standby_of.address) as alone, pytest.raises(GpucpError, match="the leader is"):
            alone.stats()
    finally:
        agent.stop()


def test_after_the_leader_dies_client_cli_and_agent_follow_its_database_to_the_next_replica(tmp_path):
    db = tmp_path / "gpucp.db"
    first, second = replica(tmp_path / "a", db), replica(tmp_path / "b", db, free_port())
    first.start()
    servers = f"{first.address},{second.address}"  # the second is not up yet: a dead address
    release, runs = tmp_path / "release", tmp_path / "runs"
    script = f'echo run >> {runs}; while [ ! -e {release} ]; do sleep 0.05; done; echo finished'
    agent = AgentProcess(tmp_path, servers, "follower", "--allow-exec", pythonpath=PYTHONPATH)
    try:
        with Client(servers) as client:
            wait_for_workers(client, ["follower"])
            task_id = client.submit("exec", json.dumps({"argv": ["sh", "-c", script]}), max_retries=0)
            eventually(lambda: client.get(task_id).state == common_pb2.TASK_STATE_RUNNING, 30, "the task to run")
            first.kill()  # the leader dies mid-task; the next replica takes over its database
            second.start()
            release.touch()
            # The same client and agent, no new addresses: the task finishes through the second replica.
            (done,) = client.gather([task_id], timeout_s=60)
            assert (done.state, done.worker_id, done.attempt) == (common_pb2.TASK_STATE_SUCCEEDED, "follower", 1), done
            assert json.loads(done.result)["stdout"] == "finished\n"
            assert runs.read_text() == "run\n", "the re-attached task ran again"
        later = gpucp("submit", "noop", "after the failover", "--wait", "--server", servers)
        assert later.returncode == 0 and "succeeded" in later.stdout, later.stderr + second.log()
    finally:
        agent.stop()
        first.stop()
        second.stop()


def test_under_tls_a_list_verifies_the_replicas_certificate_against_the_first_name(tmp_path):
    make_pki(tmp_path)  # the server certificate names 127.0.0.1 and localhost
    cp = ControlPlaneProcess(tmp_path, "--tls-cert", str(tmp_path / "server.pem"), "--tls-key",
                             str(tmp_path / "server.key"), pythonpath=PYTHONPATH).start()
    try:
        # A dead address first; the channel's calls reach the replica that serves, over TLS.
        servers = f"localhost:{free_port()},{cp.address}"
        with Client(servers, tls=channel_credentials(str(tmp_path / "ca.pem"))) as client:
            assert client.stats().workers == 0
    finally:
        cp.stop()


def test_a_dns_name_is_followed_across_a_restart(tmp_path):
    cp = replica(tmp_path / "cp", tmp_path / "gpucp.db").start()
    server = f"dns:///localhost:{cp.port}"
    agent = AgentProcess(tmp_path, server, "by-name", pythonpath=PYTHONPATH)
    try:
        with Client(server) as client:
            wait_for_workers(client, ["by-name"])
            assert client.run("noop").state == common_pb2.TASK_STATE_SUCCEEDED
            cp.restart(kill=True)
            task_id = eventually(lambda: _submitted(client), 30, "the restarted control plane to take a task")
            (done,) = client.gather([task_id], timeout_s=60)
            assert (done.state, done.worker_id) == (common_pb2.TASK_STATE_SUCCEEDED, "by-name")
    finally:
        agent.stop()
        cp.stop()


def _submitted(client: Client) -> str | None:
    try:
        return client.submit("noop")
    except GpucpError:
        return None  # not serving yet
