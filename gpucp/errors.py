"""What `gpucp.Client` and `gpucp.AsyncClient` raise: one exception class per gRPC status, under GpucpError.

Catch GpucpError for any refusal, or the class of the status you can act on:

    try:
        client.submit("train", payload)
    except gpucp.ResourceExhausted as exc:
        time.sleep(exc.retry_after or 1.0)

Every error keeps `code` (the grpc.StatusCode) and `message` (the server's sentence).
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from google.protobuf.message import DecodeError
from google.rpc.error_details_pb2 import RetryInfo
from google.rpc.status_pb2 import Status

from gpucp.states import TaskState
from gpucp.v1 import common_pb2

__all__ = [
    "AlreadyExists",
    "Cancelled",
    "DeadlineExceeded",
    "FailedPrecondition",
    "GpucpError",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "Timeout",
    "Unauthenticated",
    "Unavailable",
    "Unfinished",
    "Unimplemented",
    "Unreachable",
    "error_for",
    "rpc_error",
    "went_away",
]

# The trailing metadata key under which a server sends a google.rpc.Status with details (RetryInfo).
STATUS_DETAILS_KEY = "grpc-status-details-bin"
# How grpc words an UNAVAILABLE it made up itself, without reaching any server; UNAVAILABLE
# from the control plane (e.g. "shutting down") keeps its own sentence.
_TRANSPORT_FAILURES = (
    "failed to connect", "errors resolving", "dns resolution failed", "socket closed", "connection reset",
    "connection refused", "broken pipe", "goaway", "empty address list", "recvmsg", "connections to all backends",
)


class GpucpError(Exception):
    """A call the control plane refused; `code` is the gRPC status, the message says why."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


class Cancelled(GpucpError):
    """The call was cancelled before it finished (by the caller, or by a server shutting down)."""


class InvalidArgument(GpucpError):
    """The request is wrong as sent (a bad spec, a bad filter); the message names the field."""


class DeadlineExceeded(GpucpError):
    """The call took longer than its deadline."""


class NotFound(GpucpError):
    """No such task or worker (a finished task is deleted after `gpucp serve --keep-finished`)."""


class AlreadyExists(GpucpError):
    """Something with that name exists already (e.g. a worker id that is connected)."""


class PermissionDenied(GpucpError):
    """The caller's token is known but may not do this (another tenant's task, an admin call)."""


class ResourceExhausted(GpucpError):
    """A limit was reached (queue full, a tenant's quota, a rate). `retry_after`: the seconds the
    server asked the caller to wait before trying again, when it said (RetryInfo), else None."""

    def __init__(self, code: grpc.StatusCode, message: str, retry_after: float | None = None) -> None:
        super().__init__(code, message)
        self.retry_after = retry_after


class FailedPrecondition(GpucpError):
    """The system is not in a state for this call (e.g. costs without an autoscaler)."""


class Unimplemented(GpucpError):
    """The server does not offer this call (an older control plane)."""


class Internal(GpucpError):
    """The server failed; its log says more."""


class Unavailable(GpucpError):
    """The control plane cannot answer now (shutting down, its store failing); try again."""


class Unauthenticated(GpucpError):
    """No token, or one the control plane does not know (GPUCP_TOKEN, --token-file)."""


class Unreachable(Unavailable):
    """No control plane answers at the address (none running, wrong address, network down)."""

    def __init__(self, server: str) -> None:
        message = f"no gpucp control plane answers at {server} (is `gpucp serve` running?)"
        super().__init__(grpc.StatusCode.UNAVAILABLE, message)
        self.args = (message,)  # str() is the sentence alone: "UNAVAILABLE" adds nothing here
        self.server = server


class Unfinished(DeadlineExceeded):
    """gather() or as_completed() ran out of time; `unfinished` holds the ids still not finished."""

    def __init__(self, unfinished: Sequence[str], total: int, timeout_s: float) -> None:
        noun = "task is" if total == 1 else "tasks are"
        message = (
            f"{len(unfinished)} of {total} {noun} still unfinished after {timeout_s:g} s; "
            "they keep running: wait again, or look at them with gpucp get"
        )
        super().__init__(grpc.StatusCode.DEADLINE_EXCEEDED, message)
        self.unfinished = list(unfinished)


class Timeout(DeadlineExceeded):
    """wait(raise_on_timeout=True) ran out of time; `task` is the task as it was then (it keeps running)."""

    def __init__(self, task: common_pb2.Task, timeout_s: float) -> None:
        message = (
            f"task {task.id} is still {TaskState(task.state).label} after {timeout_s:g} s; it keeps running: "
            "wait again, or cancel it"
        )
        super().__init__(grpc.StatusCode.DEADLINE_EXCEEDED, message)
        self.task = task


_BY_CODE: dict[grpc.StatusCode, type[GpucpError]] = {
    grpc.StatusCode.CANCELLED: Cancelled,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.UNIMPLEMENTED: Unimplemented,
    grpc.StatusCode.INTERNAL: Internal,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
}


def error_for(code: grpc.StatusCode, message: str) -> GpucpError:
    """The GpucpError subclass for `code` (GpucpError itself for codes without one)."""
    return _BY_CODE.get(code, GpucpError)(code, message)


def rpc_error(exc: grpc.RpcError, server: str) -> GpucpError:
    """The GpucpError for a failed call to `server`, from a blocking or an asyncio channel alike."""
    call: grpc.Call = exc  # type: ignore[assignment]  # every RpcError grpc raises for a call is also its Call
    code, details = call.code(), call.details() or ""
    if code == grpc.StatusCode.UNAVAILABLE and details.lower().startswith(_TRANSPORT_FAILURES):
        return Unreachable(server)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return ResourceExhausted(code, details, retry_after(call.trailing_metadata() or ()))
    return error_for(code, details)


def cut_loose(exc: grpc.RpcError) -> None:
    """Let a blocking stream that ended in error be freed as soon as it is let go of.

    Such a call raises itself, and its traceback's frames refer back to it: a cycle only the
    collector frees, perhaps at interpreter exit, where grpc's finaliser of the call can wait
    forever on a lock held by one of grpc's daemon threads already stopped (the process then
    never exits). Without the traceback, it goes with its last reference."""
    exc.__traceback__ = None


def went_away(server: str, give_up_s: float) -> Unavailable:
    """What a watch raises when the control plane it followed did not come back."""
    return Unavailable(
        grpc.StatusCode.UNAVAILABLE,
        f"the control plane at {server} went away and did not come back within {give_up_s:g} s; the tasks "
        "are kept in its database: look at them with gpucp get once it is back",
    )


def retry_after(metadata: Sequence[tuple[str, str | bytes]]) -> float | None:
    """The delay of a google.rpc.RetryInfo in the call's status details, None when there is none."""
    for key, value in metadata:
        if key != STATUS_DETAILS_KEY or not isinstance(value, bytes):
            continue
        status = Status()
        try:
            status.ParseFromString(value)
        except DecodeError:
            return None  # not ours to judge: the status code and message still say what happened
        for detail in status.details:
            info = RetryInfo()
            if detail.Unpack(info):
                return info.retry_delay.ToTimedelta().total_seconds()
    return None
