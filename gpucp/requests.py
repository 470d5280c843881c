"""What `gpucp.Client` and `gpucp.AsyncClient` send and how they read the answers: one place for both.

Each client makes the calls its own way (blocking or awaited); the requests they send, the checks
made before sending, and the values they return are built here, so the two cannot drift apart.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import TypedDict

import grpc

from gpucp.errors import InvalidArgument, Timeout
from gpucp.limits import MAX_MESSAGE_BYTES
from gpucp.states import TERMINAL_STATES, TaskState
from gpucp.v1 import common_pb2, scheduler_pb2

__all__ = [
    "SpecFields",
    "batch",
    "cancel_request",
    "cancelled_state",
    "events_of",
    "list_request",
    "page_of",
    "priority_value",
    "run_request",
    "state_value",
    "task_spec",
    "wait_request",
    "waited",
]

# A call that waits on the server (WaitTask, RunTask) gets this long beyond its wait before its
# deadline, so the server's answer "still running" arrives instead of DEADLINE_EXCEEDED.
WAIT_GRACE_S = 10.0
# What a submit message carries besides its specs (a sequence number, flags, trace context),
# with room to spare: the specs of one submit get the rest of a message.
SUBMIT_ENVELOPE_BYTES = 64 * 1024


class SpecFields(TypedDict, total=False):
    """TaskSpec fields as keyword arguments of submit() and run() (see task_spec)."""

    priority: int | str
    tenant: str
    gpus: int
    min_gpu_memory_mb: int
    gpu_models: Sequence[str]
    backend: str
    labels: Sequence[str]
    min_compute_capability: float
    gpu_milli: int
    gpu_memory_mb: int
    timeout_ms: int
    expected_runtime_ms: int
    runtime_class: str
    max_retries: int | None
    idempotency_key: str
    affinity_key: str
    hard_affinity: bool
    task_labels: Mapping[str, str] | None


def priority_value(priority: int | str) -> int:
    """Accept 2, "high", "HIGH" or "PRIORITY_HIGH"; raise ValueError for anything else."""
    if isinstance(priority, int):
        if priority not in common_pb2.Priority.values():
            raise ValueError(f"priority {priority} is not one of {common_pb2.Priority.keys()}")
        return priority
    name = priority.upper()
    if not name.startswith("PRIORITY_"):
        name = "PRIORITY_" + name
    known = common_pb2.Priority.keys()  # an enum wrapper: `in` and iteration need the list
    if name not in known:
        names = ", ".join(k.removeprefix("PRIORITY_").lower() for k in known if k != "PRIORITY_UNSPECIFIED")
        raise ValueError(f"priority {priority!r} is not one of {names}")
    return common_pb2.Priority.Value(name)


def state_value(state: TaskState | int | str) -> TaskState:
    """Accept TaskState.FAILED, 5, "failed" or "TASK_STATE_FAILED"; 0 or "" means any state.
    ValueError names the states there are."""
    if isinstance(state, str):
        name = state.upper().removeprefix("TASK_STATE_") or "UNSPECIFIED"
        if name not in TaskState.__members__:
            names = ", ".join(s.label for s in TaskState if s is not TaskState.UNSPECIFIED)
            raise ValueError(f"state {state!r} is not one of {names}")
        return TaskState[name]
    try:
        return TaskState(state)
    except ValueError:
        raise ValueError(f"state {state} is not one of {[int(s) for s in TaskState]}") from None


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
    gpu_milli: int = 0,
    gpu_memory_mb: int = 0,
    timeout_ms: int = 0,
    expected_runtime_ms: int = 0,
    runtime_class: str = "",
    max_retries: int | None = None,
    idempotency_key: str = "",
    affinity_key: str = "",
    hard_affinity: bool = False,
    task_labels: Mapping[str, str] | None = None,
) -> common_pb2.TaskSpec:
    """Build a TaskSpec from keyword arguments (`labels` are worker labels the task requires;
    `gpu_milli` asks for a share of one GPU in thousandths, with `gpu_memory_mb` of its memory)."""
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
            gpu_milli=gpu_milli,
            gpu_memory_mb=gpu_memory_mb,
        ),
        timeout_ms=timeout_ms,
        expected_runtime_ms=expected_runtime_ms,
        runtime_class=runtime_class,
        idempotency_key=idempotency_key,
        affinity_key=affinity_key,
        hard_affinity=hard_affinity,
        labels=task_labels or {},
    )
    if max_retries is not None:
        spec.max_retries = max_retries
    return spec


def batch(specs: Iterable[common_pb2.TaskSpec]) -> list[common_pb2.TaskSpec]:
    """The specs of one submit, refused here when together they are more than one message may
    carry: sent, gRPC would refuse the message in words about lengths, and on a session stream
    the stream would break and the same message be sent again until the deadline."""
    specs = list(specs)
    size = sum(spec.ByteSize() for spec in specs)
    if size > MAX_MESSAGE_BYTES - SUBMIT_ENVELOPE_BYTES:
        raise InvalidArgument(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"these {len(specs)} spec(s) are {size} bytes serialized, over the "
            f"{MAX_MESSAGE_BYTES - SUBMIT_ENVELOPE_BYTES} bytes one submit may carry: submit them in "
            "smaller batches (each batch is stored whole or not at all)",
        )
    return specs


def _wait_ms(seconds: float, name: str) -> int:
    if not (seconds >= 0 and math.isfinite(seconds)):  # also refuses nan
        raise ValueError(f"{name} {seconds!r}: give seconds >= 0")
    return int(seconds * 1000)


def wait_request(task_id: str, timeout_s: float) -> scheduler_pb2.WaitTaskRequest:
    return scheduler_pb2.WaitTaskRequest(task_id=task_id, timeout_ms=_wait_ms(timeout_s, "timeout_s"))


def run_request(spec: common_pb2.TaskSpec, wait_s: float) -> scheduler_pb2.RunTaskRequest:
    return scheduler_pb2.RunTaskRequest(spec=spec, timeout_ms=_wait_ms(wait_s, "wait_s"))


def waited(task: common_pb2.Task, timeout_s: float, raise_on_timeout: bool) -> common_pb2.Task:
    """What wait() returns: the task, or Timeout when it is unfinished and the caller asked for that."""
    if raise_on_timeout and task.state not in TERMINAL_STATES:
        raise Timeout(task, timeout_s)
    return task


def cancel_request(task_id: str) -> scheduler_pb2.CancelTaskRequest:
    return scheduler_pb2.CancelTaskRequest(task_id=task_id)


def cancelled_state(reply: scheduler_pb2.CancelTaskResponse) -> TaskState:
    """The task's state after CancelTask, by name."""
    return TaskState(reply.state)


def events_of(reply: scheduler_pb2.GetTaskEventsResponse) -> tuple[list[scheduler_pb2.TaskEvent], int]:
    return list(reply.events), int(reply.omitted)


def list_request(
    *, state: TaskState | int | str = 0, tenant: str = "", kind: str = "", full: bool = False, limit: int = 100,
    page_token: str = "",
) -> scheduler_pb2.ListTasksRequest:
    return scheduler_pb2.ListTasksRequest(
        state=state_value(state).value,
        tenant=tenant,
        kind=kind,
        view=scheduler_pb2.TASK_VIEW_FULL if full else scheduler_pb2.TASK_VIEW_BASIC,
        limit=limit,
        page_token=page_token,
    )


def page_of(reply: scheduler_pb2.ListTasksResponse) -> tuple[list[common_pb2.Task], str]:
    return list(reply.tasks), str(reply.next_page_token)

