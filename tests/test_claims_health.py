"""README: standard gRPC health checking, NOT_SERVING during shutdown, as a load balancer sees it."""

from __future__ import annotations

import json
import signal

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cluster import AgentProcess, ControlPlaneProcess, eventually, wait_for_workers
from gpucp.v1 import common_pb2

Health = health_pb2.HealthCheckResponse


def test_a_client_watching_health_sees_not_serving_once_shutdown_begins(tmp_path):
    cp = ControlPlaneProcess(tmp_path).start()
    agent = AgentProcess(tmp_path, cp.address, "busy", "--slots", "1")
    channel = grpc.insecure_channel(cp.address)
    try:
        with cp.client() as client:
            wait_for_workers(client, ["busy"])
            # Work in flight, so the server has something to drain while it says NOT_SERVING.
            task_id = client.submit("sleep", json.dumps({"seconds": 30}))
            eventually(lambda: client.get(task_id).state == common_pb2.TASK_STATE_RUNNING, 20, "the task to run")
        stub = health_pb2_grpc.HealthStub(channel)
        watches = {name: stub.Watch(health_pb2.HealthCheckRequest(service=name), timeout=60)
                   for name in ("", "gpucp.v1.Scheduler", "gpucp.v1.Workers")}
        for name, watch in watches.items():
            assert next(watch).status == Health.SERVING, f"service {name!r} is not SERVING before shutdown"
        cp.process.send_signal(signal.SIGTERM)
        for name, watch in watches.items():
            status = next(watch).status
            assert status == Health.NOT_SERVING, (
                f"service {name!r} went {Health.ServingStatus.Name(status)} at shutdown, not NOT_SERVING"
            )
        assert cp.process.poll() is None, "the server exited before its health watchers could be told"
        channel.close()  # the watches end, so the server's drain does not wait on them
        assert cp.process.wait(30) == 0, cp.log()
    finally:
        channel.close()
        agent.stop()
        if cp.process.poll() is None:
            cp.kill()
