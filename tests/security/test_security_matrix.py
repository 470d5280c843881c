"""Every RPC of Scheduler, Admin and Workers against each role and a stranger, on a server with --auth.

A cell passes when the call is refused with the status the role deserves (UNAUTHENTICATED for
no credential, PERMISSION_DENIED for a role without the right) or, for a role that holds it,
gets past authorization (any other status: a reply, NOT_FOUND, FAILED_PRECONDITION...).
"""

from __future__ import annotations

import itertools
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator

import grpc
import pytest

from cluster import ControlPlaneProcess
from gpucp.client import CHANNEL_OPTIONS
from gpucp.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    common_pb2,
    scheduler_pb2,
    scheduler_pb2_grpc,
    workers_pb2,
)
from security.secured import RawAgent, code_of, metadata, probe, start_secured

ROLES = ("viewer-a", "submitter-a", "operator", "admin", "agent-box", None)  # None: a stranger, no token
READ = {"viewer-a", "submitter-a", "operator", "admin"}
SUBMIT = {"submitter-a", "operator", "admin"}
OPERATE = {"operator", "admin"}
CONNECT = {"agent-box", "admin"}
# Who may call each RPC; every RPC of the three services must be here.
ALLOWED = {
    "gpucp.v1.Scheduler/SubmitTask": SUBMIT,
    "gpucp.v1.Scheduler/SubmitTasks": SUBMIT,
    "gpucp.v1.Scheduler/RunTask": SUBMIT,
    "gpucp.v1.Scheduler/CancelTask": SUBMIT,
    "gpucp.v1.Scheduler/GetTask": READ,
    "gpucp.v1.Scheduler/WaitTask": READ,
    "gpucp.v1.Scheduler/ListTasks": READ,
    "gpucp.v1.Scheduler/WatchTasks": READ,
    "gpucp.v1.Scheduler/GetTaskEvents": READ,
    "gpucp.v1.Scheduler/Session": READ,  # its submits need SUBMIT: test_security_session.py
    "gpucp.v1.Admin/GetClusterStats": OPERATE,
    "gpucp.v1.Admin/ListWorkers": OPERATE,
    "gpucp.v1.Admin/GetCosts": OPERATE,
    "gpucp.v1.Admin/ListScalingEvents": OPERATE,
    "gpucp.v1.Admin/DrainWorker": OPERATE,
    "gpucp.v1.Admin/UndrainWorker": OPERATE,
    "gpucp.v1.Workers/Connect": CONNECT,
}
WORKER_IDS = (f"box-matrix-{i}" for i in itertools.count())


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlaneProcess]:
    cp = start_secured(tmp_path_factory.mktemp("matrix"))
    yield cp
    cp.kill()


def test_the_matrix_names_every_rpc_of_every_service() -> None:
    services = [common_pb2, scheduler_pb2, admin_pb2, workers_pb2]
    rpcs = {
        f"{service.full_name}/{method.name}"
        for module in services
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    }
    assert rpcs == set(ALLOWED), "a new RPC needs its row in the role matrix (and its check in services.py)"


def call(cp: ControlPlaneProcess, rpc: str, name: str | None) -> str:
    """Make `rpc` as `name`; the status code it ends with."""
    channel = grpc.insecure_channel(cp.address, options=CHANNEL_OPTIONS)
    meta = metadata(name)
    spec = common_pb2.TaskSpec(kind="noop")
    try:
        if rpc.endswith("/Connect"):
            agent = RawAgent(cp.address, name, workers_pb2.Register(worker_id=next(WORKER_IDS), slots=1))
            try:
                return code_of(agent.first())
            finally:
                agent.close()
        if rpc.endswith("/WatchTasks"):
            watch = scheduler_pb2_grpc.SchedulerStub(channel).WatchTasks(
                scheduler_pb2.WatchTasksRequest(), metadata=meta, timeout=10
            )
            try:
                watch.initial_metadata()  # sent once the watch records, or returned when it was refused
                return code_of(watch.code()) if watch.done() else "OK"
            finally:
                watch.cancel()
        scheduler = scheduler_pb2_grpc.SchedulerStub(channel)
        if rpc.endswith("/Session"):
            opening = scheduler_pb2.SessionRequest(open=scheduler_pb2.SessionOpen())
            session = scheduler.Session(iter([opening]), metadata=meta, timeout=10)
            try:
                next(session)  # SessionOpened, or the refusal
            except grpc.RpcError as exc:
                return code_of(exc)
            finally:
                session.cancel()
            return "OK"
        admin = admin_pb2_grpc.AdminStub(channel)
        calls: dict[str, Callable[[], object]] = {
            "SubmitTask": lambda: scheduler.SubmitTask(scheduler_pb2.SubmitTaskRequest(spec=spec), metadata=meta),
            "SubmitTasks": lambda: scheduler.SubmitTasks(scheduler_pb2.SubmitTasksRequest(specs=[spec]), metadata=meta),
            "RunTask": lambda: scheduler.RunTask(scheduler_pb2.RunTaskRequest(spec=spec, timeout_ms=1), metadata=meta),
            "CancelTask": lambda: scheduler.CancelTask(scheduler_pb2.CancelTaskRequest(task_id="none"), metadata=meta),
            "GetTask": lambda: scheduler.GetTask(scheduler_pb2.GetTaskRequest(task_id="none"), metadata=meta),
            "WaitTask": lambda: scheduler.WaitTask(scheduler_pb2.WaitTaskRequest(task_id="none"), metadata=meta),
            "ListTasks": lambda: scheduler.ListTasks(scheduler_pb2.ListTasksRequest(), metadata=meta),
            "GetTaskEvents": lambda: scheduler.GetTaskEvents(
                scheduler_pb2.GetTaskEventsRequest(task_id="none"), metadata=meta
            ),
            "GetClusterStats": lambda: admin.GetClusterStats(admin_pb2.GetClusterStatsRequest(), metadata=meta),
            "ListWorkers": lambda: admin.ListWorkers(admin_pb2.ListWorkersRequest(), metadata=meta),
            "GetCosts": lambda: admin.GetCosts(admin_pb2.GetCostsRequest(), metadata=meta),
            "ListScalingEvents": lambda: admin.ListScalingEvents(admin_pb2.ListScalingEventsRequest(), metadata=meta),
            "DrainWorker": lambda: admin.DrainWorker(admin_pb2.DrainWorkerRequest(worker_id="none"), metadata=meta),
            "UndrainWorker": lambda: admin.UndrainWorker(
                admin_pb2.UndrainWorkerRequest(worker_id="none"), metadata=meta
            ),
        }
        try:
            calls[rpc.rpartition("/")[2]]()
        except grpc.RpcError as exc:
            return code_of(exc)
        return "OK"
    finally:
        channel.close()


@pytest.mark.parametrize("rpc", sorted(ALLOWED))
def test_each_role_gets_exactly_its_rights_on_each_rpc(secured: ControlPlaneProcess, rpc: str) -> None:
    for name in ROLES:
        observed = call(secured, rpc, name)
        if name is None:
            expected = "UNAUTHENTICATED"
        elif name in ALLOWED[rpc]:
            expected = "allowed"
            if observed not in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
                observed = "allowed"
        else:
            expected = "PERMISSION_DENIED"
        probe(f"{rpc.removeprefix('gpucp.v1.')} as {name or 'stranger'}", expected, observed)


# Who may read each HTTP endpoint: the same rights as the gRPC calls behind it.
HTTP_ALLOWED = {
    "/metrics": OPERATE,
    "/api/v1/stats": OPERATE,
    "/api/v1/workers": OPERATE,
    "/api/v1/tasks": READ,
    "/api/v1/tasks/none": READ,
    "/api/v1/tasks/none/events": READ,
    "/healthz": {*READ, "agent-box", None},  # probes carry no token and learn nothing
    "/readyz": {*READ, "agent-box", None},
}


@pytest.mark.parametrize("path", sorted(HTTP_ALLOWED))
def test_each_role_gets_exactly_its_rights_on_each_http_endpoint(secured: ControlPlaneProcess, path: str) -> None:
    for name in ROLES:
        request = urllib.request.Request(f"http://127.0.0.1:{secured.http_port}{path}", headers=dict(metadata(name)))
        try:
            with urllib.request.urlopen(request, timeout=10) as reply:
                status = reply.status
        except urllib.error.HTTPError as exc:
            status = exc.code
        observed = {401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED"}.get(status, "allowed")
        if name in HTTP_ALLOWED[path]:
            expected = "allowed"
        else:
            expected = "UNAUTHENTICATED" if name is None else "PERMISSION_DENIED"
        probe(f"HTTP {path} as {name or 'stranger'}", expected, observed)
