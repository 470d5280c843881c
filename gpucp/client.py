"""`gpucp.Client`: submit and follow tasks over the generated Scheduler and Admin stubs."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence

import grpc

from gpucp.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    common_pb2,
    scheduler_pb2,
    scheduler_pb2_grpc,
)

DEFAULT_SERVER = "127.0.0.1:50051"

CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    ("grpc.max_send_message_length", 16 * 1024 * 1024),
]


class GpucpError(Exception):
    """A call the control plane refused; `code` is the gRPC status, the message says why."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


def priority_value(priority: int | str) -> int:
    """Accept 2, "high", "HIGH" or "PRIORITY_HIGH"; raise ValueError for anything else."""
    if isinstance(priority, int):
        if priority not in common_pb2.Priority.values():
            raise ValueError(f"priority {priority} is not one of {common_pb2.Priority.keys()}")
        return priority
    name = priority.upper()
    if not name.startswith("PRIORITY_"):
        name = "PRIORITY_" + name
    if name not in common_pb2.Priority.keys():
        names = ", ".join(
            k.removeprefix("PRIORITY_").lower()
            for k in common_pb2.Priority.keys()
            if k != "PRIORITY_UNSPECIFIED"
        )
        raise ValueError(f"priority {priority!r} is not one of {names}")
    return common_pb2.Priority.Value(name)


def task_spec(
    kind: str,
    payload: bytes | str = b"",
    *,
    priority: int | str = common_pb2.PRIORITY_NORMAL,
    tenant: str = "",
    gpus: int = 0,
    min_gpu_memory_mb: int = 0,
    gpu_models: Sequence[str] = (),
    backend: str = "",
    labels: Sequence[str] = (),
    min_compute_capability: float = 0.0,
    timeout_ms: int = 0,
    max_retries: int | None = None,
    idempotency_key: str = "",
    affinity_key: str = "",
    hard_affinity: bool = False,
    task_labels: Mapping[str, str] | None = None,
) -> common_pb2.TaskSpec:
    """Build a TaskSpec from keyword arguments (`labels` are worker labels the task requires)."""
    spec = common_pb2.TaskSpec(
        kind=kind,
        payload=payload.encode() if isinstance(payload, str) else payload,
        priority=priority_value(priority),  # type: ignore[arg-type]
        tenant=tenant,
        requirements=common_pb2.Requirements(
            gpus=gpus,
            min_gpu_memory_mb=min_gpu_memory_mb,
            gpu_models=gpu_models,
            backend=backend,
            labels=labels,
            min_compute_capability=min_compute_capability,
        ),
        timeout_ms=timeout_ms,
        idempotency_key=idempotency_key,
        affinity_key=affinity_key,
        hard_affinity=hard_affinity,
        labels=task_labels or {},
    )
    if max_retries is not None:
        spec.max_retries = max_retries
    return spec


class Client:
    """A blocking client of one control plane. Use as a context manager or call close()."""

    def __init__(self, server: str = DEFAULT_SERVER, *, timeout_s: float = 30.0) -> None:
        self.server = server
        self.timeout_s = timeout_s
        self._channel = grpc.insecure_channel(server, options=CHANNEL_OPTIONS)
        self._scheduler = scheduler_pb2_grpc.SchedulerStub(self._channel)
        self._admin = admin_pb2_grpc.AdminStub(self._channel)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _call(self, method, request, timeout_s: float | None = None):  # type: ignore[no-untyped-def]
        try:
            return method(request, timeout=timeout_s or self.timeout_s)
        except grpc.RpcError as exc:
            raise GpucpError(exc.code(), exc.details() or "") from None

    def submit(self, kind: str, payload: bytes | str = b"", **spec_fields: object) -> str:
        """Submit one task; returns its id once it is durably stored. See task_spec() for fields."""
        return self.submit_spec(task_spec(kind, payload, **spec_fields))  # type: ignore[arg-type]

    def submit_spec(self, spec: common_pb2.TaskSpec) -> str:
        reply = self._call(self._scheduler.SubmitTask, scheduler_pb2.SubmitTaskRequest(spec=spec))
        return str(reply.task_id)

    def submit_many(self, specs: Iterable[common_pb2.TaskSpec]) -> list[str]:
        """Submit a batch: all are stored, or none (the first bad spec is named in the error)."""
        reply = self._call(
            self._scheduler.SubmitTasks, scheduler_pb2.SubmitTasksRequest(specs=list(specs))
        )
        return list(reply.task_ids)

    def get(self, task_id: str) -> common_pb2.Task:
        return self._call(self._scheduler.GetTask, scheduler_pb2.GetTaskRequest(task_id=task_id))

    def wait(self, task_id: str, timeout_s: float = 60.0) -> common_pb2.Task:
        """Block until the task is finished, or return it as it is after timeout_s."""
        request = scheduler_pb2.WaitTaskRequest(task_id=task_id, timeout_ms=int(timeout_s * 1000))
        return self._call(self._scheduler.WaitTask, request, timeout_s=timeout_s + 10)

    def run(self, kind: str, payload: bytes | str = b"", *, wait_s: float = 60.0, **spec_fields: object) -> common_pb2.Task:
        """Submit one task and wait for it in one call (RunTask); returns it terminal, or as it
        is after wait_s (it keeps running: follow it with wait(task.id)). Errors as submit()'s."""
        spec = task_spec(kind, payload, **spec_fields)  # type: ignore[arg-type]
        request = scheduler_pb2.RunTaskRequest(spec=spec, timeout_ms=int(wait_s * 1000))
        return self._call(self._scheduler.RunTask, request, timeout_s=wait_s + 10)

    def cancel(self, task_id: str) -> int:
        reply = self._call(
            self._scheduler.CancelTask, scheduler_pb2.CancelTaskRequest(task_id=task_id)
        )
        return int(reply.state)

    def list(
        self, *, state: int = 0, tenant: str = "", limit: int = 100
    ) -> Iterator[common_pb2.Task]:
        """Every matching task, fetched a page at a time."""
        token = ""
        while True:
            request = scheduler_pb2.ListTasksRequest(
                state=state,  # type: ignore[arg-type]
                tenant=tenant,
                limit=limit,
                page_token=token,
            )
            reply = self._call(self._scheduler.ListTasks, request)
            yield from reply.tasks
            token = reply.next_page_token
            if not token:
                return

    def watch(
        self, task_ids: Sequence[str] = (), tenant: str = ""
    ) -> Iterator[scheduler_pb2.TaskEvent]:
        """Task state changes from now on (all tasks when neither filter is given).

        Returns once the server records events for this watch, so nothing submitted after the
        call is missed.
        """
        request = scheduler_pb2.WatchTasksRequest(task_ids=task_ids, tenant=tenant)
        call = self._scheduler.WatchTasks(request)
        try:
            call.initial_metadata()
        except grpc.RpcError as exc:
            raise GpucpError(exc.code(), exc.details() or "") from None
        return _events(call)

    def stats(self) -> admin_pb2.ClusterStats:
        return self._call(self._admin.GetClusterStats, admin_pb2.GetClusterStatsRequest())

    def workers(self) -> list[admin_pb2.WorkerInfo]:
        return list(self._call(self._admin.ListWorkers, admin_pb2.ListWorkersRequest()).workers)

    def drain(self, worker_id: str) -> None:
        self._call(self._admin.DrainWorker, admin_pb2.DrainWorkerRequest(worker_id=worker_id))

    def costs(self) -> admin_pb2.CostReport:
        """Spend per pod, pool and tenant (FAILED_PRECONDITION when the autoscaler is off)."""
        return self._call(self._admin.GetCosts, admin_pb2.GetCostsRequest())

    def scaling_events(self, limit: int = 0, pool: str = "") -> list[admin_pb2.ScalingEvent]:
        """The autoscaler's decisions, newest last (limit 0: all that are kept)."""
        request = admin_pb2.ListScalingEventsRequest(limit=limit, pool=pool)
        return list(self._call(self._admin.ListScalingEvents, request).events)


def _events(call) -> Iterator[scheduler_pb2.TaskEvent]:  # type: ignore[no-untyped-def]
    try:
        yield from call
    except grpc.RpcError as exc:
        if exc.code() != grpc.StatusCode.CANCELLED:
            raise GpucpError(exc.code(), exc.details() or "") from None
