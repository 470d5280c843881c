"""`gpucp.Client`: submit and follow tasks over the generated Scheduler and Admin stubs."""

from __future__ import annotations

import builtins  # Client.list shadows the built-in in the class body
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, TypeVar, Unpack

import grpc

from gpucp.auth import read_token, with_token
from gpucp.channels import DEFAULT_SERVER, SERVER_ENV, open_channel, server_address
from gpucp.errors import GpucpError, Unfinished, Unreachable, rpc_error
from gpucp.limits import MAX_MESSAGE_BYTES
from gpucp.requests import (
    WAIT_GRACE_S,
    SpecFields,
    batch,
    cancel_request,
    cancelled_state,
    events_of,
    list_request,
    page_of,
    priority_value,
    run_request,
    task_spec,
    wait_request,
    waited,
)
from gpucp.states import TaskState
from gpucp.tls import channel_credentials
from gpucp.tracing import traced_channel
from gpucp.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    common_pb2,
    scheduler_pb2,
    scheduler_pb2_grpc,
)
from gpucp.watch import TaskWatch, completions

__all__ = [
    "CHANNEL_OPTIONS",
    "DEFAULT_SERVER",
    "SERVER_ENV",
    "Client",
    "GpucpError",
    "TaskWatch",
    "Unfinished",
    "Unreachable",
    "priority_value",
    "rpc_error",
    "server_address",
    "task_spec",
]

if TYPE_CHECKING:
    from gpucp.session import Session

Request = TypeVar("Request")
Reply = TypeVar("Reply")

CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    # grpc's default reconnect backoff grows to 120 s: a watch would then notice a restarted
    # control plane minutes late. Two seconds is still no storm for one client.
    ("grpc.max_reconnect_backoff_ms", 2000),
    # grpc shares connections between channels to one address in a process, backoff included:
    # a Client made just after a control plane restart would fail at once because another
    # channel's connection attempt failed a moment before. Each Client connects for itself.
    ("grpc.use_local_subchannel_pool", 1),
]


class Client:
    """A blocking client of one control plane. Use as a context manager or call close().

    `server` is HOST[:PORT] (port 50051 when left out), several joined by commas (the replicas of
    one control plane: calls go to the one that serves) or a grpc URI such as dns:///name:50051;
    None reads $GPUCP_SERVER, else 127.0.0.1:50051 (gpucp.channels).
    `token` is the bearer token presented on every call; None reads $GPUCP_TOKEN. `tls`: TLS
    credentials (gpucp.tls.channel_credentials); None reads $GPUCP_TLS_CA, plaintext without it.
    `session`: submit, run and wait on one Scheduler.Session stream when the server offers it
    (gpucp.session); False: one unary call per submit or run, and a watch per wait.
    """

    def __init__(
        self,
        server: str | None = None,
        *,
        timeout_s: float = 30.0,
        token: str | None = None,
        tls: grpc.ChannelCredentials | None = None,
        session: bool = True,
    ) -> None:
        self.server = server_address(server)
        self.timeout_s = timeout_s
        self.closed = False
        tls = tls or channel_credentials()
        self._raw_channel = open_channel(self.server, tls, CHANNEL_OPTIONS)
        self._channel = traced_channel(with_token(self._raw_channel, read_token() if token is None else token))
        self._scheduler = scheduler_pb2_grpc.SchedulerStub(self._channel)
        self._admin = admin_pb2_grpc.AdminStub(self._channel)
        self._use_session = session
        self._session_obj: Session | None = None
        self._session_lock = threading.Lock()

    def _session(self) -> Session | None:
        """The session stream, opened on first use; None without one (refused, or an older server)."""
        if not self._use_session:
            return None
        with self._session_lock:
            if self._session_obj is None:
                from gpucp.session import Session  # it builds on this module

                session = Session(self)
                if not session.open():
                    self._use_session = False
                    return None
                self._session_obj = session
            return self._session_obj

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.closed = True
        if self._session_obj is not None:
            self._session_obj.close()
        self._raw_channel.close()

    def _call(
        self, method: grpc.UnaryUnaryMultiCallable[Request, Reply], request: Request, timeout_s: float | None = None
    ) -> Reply:
        # The generated stubs carry no types, so Reply is whatever the caller declares it gets.
        try:
            return method(request, timeout=timeout_s or self.timeout_s)
        except grpc.RpcError as exc:
            raise rpc_error(exc, self.server) from None

    def submit(self, kind: str, payload: bytes | str = b"", **spec_fields: Unpack[SpecFields]) -> str:
        """Submit one task; returns its id once it is durably stored. See task_spec() for fields."""
        return self.submit_spec(task_spec(kind, payload, **spec_fields))

    def submit_spec(self, spec: common_pb2.TaskSpec) -> str:
        session = self._session()
        if session is not None:
            return session.submit([spec])[0]
        reply = self._call(self._scheduler.SubmitTask, scheduler_pb2.SubmitTaskRequest(spec=spec))
        return str(reply.task_id)

    def submit_many(self, specs: Iterable[common_pb2.TaskSpec]) -> builtins.list[str]:
        """Submit a batch: all are stored, or none (the first bad spec is named in the error)."""
        session = self._session()
        if session is not None:
            return session.submit(list(specs))
        reply = self._call(
            self._scheduler.SubmitTasks, scheduler_pb2.SubmitTasksRequest(specs=batch(specs))
        )
        return list(reply.task_ids)

    def get(self, task_id: str) -> common_pb2.Task:
        task: common_pb2.Task = self._call(self._scheduler.GetTask, scheduler_pb2.GetTaskRequest(task_id=task_id))
        return task

    def get_many(self, task_ids: Sequence[str], window: int = 256) -> Iterator[common_pb2.Task]:
        """The tasks, `window` GetTask calls in flight at a time; ids the server does not know are skipped."""
        for i in range(0, len(task_ids), window):
            calls = [
                self._scheduler.GetTask.future(scheduler_pb2.GetTaskRequest(task_id=t), timeout=self.timeout_s)
                for t in task_ids[i : i + window]
            ]
            for call in calls:
                try:
                    yield call.result()
                except grpc.RpcError as exc:
                    if exc.code() != grpc.StatusCode.NOT_FOUND:  # deleted after --keep-finished
                        raise rpc_error(exc, self.server) from None

    def wait(self, task_id: str, timeout_s: float = 60.0, *, raise_on_timeout: bool = False) -> common_pb2.Task:
        """Block until the task is finished, or return it as it is after timeout_s (with
        raise_on_timeout, raise gpucp.Timeout instead, holding the task as it was)."""
        request = wait_request(task_id, timeout_s)
        task: common_pb2.Task = self._call(self._scheduler.WaitTask, request, timeout_s=timeout_s + WAIT_GRACE_S)
        return waited(task, timeout_s, raise_on_timeout)

    def as_completed(self, task_ids: Iterable[str], timeout_s: float | None = None) -> Iterator[common_pb2.Task]:
        """Each task, terminal, as it finishes: those finished already at once, the rest in finishing order.

        One watch follows them all. Each task is read once after the watch began (what is
        finished is yielded then) and, if it was unfinished, once more when its terminal event
        arrives, the reads of tasks finishing together in flight at once. Rides out a control
        plane restart (see watch()). Raises Unfinished after timeout_s (None: no limit),
        GpucpError NOT_FOUND for an id the server does not know. On a session (see Client),
        the outcomes come down its stream instead, with no read per task.
        """
        ids = builtins.list(dict.fromkeys(task_ids))
        session = self._session()
        if session is not None:
            return session.completions(ids, timeout_s)
        return completions(self, ids, timeout_s)

    def gather(self, task_ids: Sequence[str], timeout_s: float | None = None) -> builtins.list[common_pb2.Task]:
        """The tasks once all are finished, in the order of `task_ids` (see as_completed)."""
        finished = {task.id: task for task in self.as_completed(task_ids, timeout_s)}
        return [finished[task_id] for task_id in task_ids]

    def run(
        self, kind: str, payload: bytes | str = b"", *, wait_s: float = 60.0, **spec_fields: Unpack[SpecFields]
    ) -> common_pb2.Task:
        """Submit one task and wait for it in one call (RunTask); returns it terminal, or as it
        is after wait_s (it keeps running: follow it with wait(task.id)). Errors as submit()'s."""
        spec = task_spec(kind, payload, **spec_fields)
        request = run_request(spec, wait_s)  # checks wait_s on either path
        session = self._session()
        if session is not None:
            return session.run(spec, wait_s)
        task: common_pb2.Task = self._call(self._scheduler.RunTask, request, timeout_s=wait_s + WAIT_GRACE_S)
        return task

    def cancel(self, task_id: str) -> TaskState:
        """Cancel an unfinished task; returns its state (CANCELLED). FailedPrecondition for a finished one."""
        return cancelled_state(self._call(self._scheduler.CancelTask, cancel_request(task_id)))

    def events(self, task_id: str) -> tuple[builtins.list[scheduler_pb2.TaskEvent], int]:
        """The task's history, oldest first, and how many events were dropped from its middle
        (a task keeps its first 20 and its latest 100)."""
        return events_of(self._call(self._scheduler.GetTaskEvents, scheduler_pb2.GetTaskEventsRequest(task_id=task_id)))

    def list_page(
        self, *, state: TaskState | int | str = 0, tenant: str = "", kind: str = "", full: bool = False,
        limit: int = 100, page_token: str = "",
    ) -> tuple[builtins.list[common_pb2.Task], str]:
        """One page of matching tasks and the token of the next ("" after the last page).

        `state`: TaskState.FAILED, "failed" or 5 (0: any). Without `full` the tasks carry no
        payload and no result (ListTasks view BASIC).
        """
        request = list_request(state=state, tenant=tenant, kind=kind, full=full, limit=limit, page_token=page_token)
        return page_of(self._call(self._scheduler.ListTasks, request))

    def list(
        self, *, state: TaskState | int | str = 0, tenant: str = "", kind: str = "", full: bool = False,
        limit: int = 100,
    ) -> Iterator[common_pb2.Task]:
        """Every matching task, fetched a page at a time (see list_page)."""
        token = ""
        while True:
            tasks, token = self.list_page(
                state=state, tenant=tenant, kind=kind, full=full, limit=limit, page_token=token
            )
            yield from tasks
            if not token:
                return

    def watch(self, task_ids: Sequence[str] = (), tenant: str = "", *, give_up_s: float = 60.0) -> TaskWatch:
        """Task state changes from now on (all tasks when neither filter is given), as a TaskWatch.

        Returns once the server records events for this watch, so nothing submitted after the
        call is missed. When the control plane restarts, the watch re-subscribes and re-reads
        the tasks it tracks (`task_ids`, and those given to TaskWatch.track), so their outcomes
        are not lost; after `give_up_s` without a control plane it raises GpucpError.
        """
        return TaskWatch(self, scheduler_pb2.WatchTasksRequest(task_ids=task_ids, tenant=tenant), give_up_s)

    def stats(self) -> admin_pb2.ClusterStats:
        stats: admin_pb2.ClusterStats = self._call(self._admin.GetClusterStats, admin_pb2.GetClusterStatsRequest())
        return stats

    def workers(self) -> builtins.list[admin_pb2.WorkerInfo]:
        return list(self._call(self._admin.ListWorkers, admin_pb2.ListWorkersRequest()).workers)

    def drain(self, worker_id: str) -> None:
        """Stop placing tasks on the worker; those it runs finish."""
        self._call(self._admin.DrainWorker, admin_pb2.DrainWorkerRequest(worker_id=worker_id))

    def undrain(self, worker_id: str) -> None:
        """End a drain(): the worker takes new tasks again."""
        self._call(self._admin.UndrainWorker, admin_pb2.UndrainWorkerRequest(worker_id=worker_id))

    def costs(self) -> admin_pb2.CostReport:
        """Spend per pod, pool and tenant (FAILED_PRECONDITION when the autoscaler is off)."""
        report: admin_pb2.CostReport = self._call(self._admin.GetCosts, admin_pb2.GetCostsRequest())
        return report

    def scaling_events(self, limit: int = 0, pool: str = "") -> builtins.list[admin_pb2.ScalingEvent]:
        """The autoscaler's decisions, newest last (limit 0: all that are kept)."""
        request = admin_pb2.ListScalingEventsRequest(limit=limit, pool=pool)
        return list(self._call(self._admin.ListScalingEvents, request).events)
