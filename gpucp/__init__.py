"""gpucp: the contract (gpucp.v1) and clients for services that submit GPU work: `Client` (blocking)
and `AsyncClient` (asyncio), the same methods on both, errors by status under `GpucpError`."""

from importlib.metadata import PackageNotFoundError, version

from gpucp.aio import AsyncClient, AsyncTaskWatch
from gpucp.channels import server_address
from gpucp.client import Client
from gpucp.errors import (
    AlreadyExists,
    Cancelled,
    DeadlineExceeded,
    FailedPrecondition,
    GpucpError,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Timeout,
    Unauthenticated,
    Unavailable,
    Unfinished,
    Unimplemented,
    Unreachable,
)
from gpucp.requests import SpecFields, priority_value, task_spec
from gpucp.states import TERMINAL_STATES, TaskState
from gpucp.watch import TaskWatch

try:
    __version__ = version("gpucp")  # one source: Cargo.toml, through maturin's package metadata
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "TERMINAL_STATES",
    "AlreadyExists",
    "AsyncClient",
    "AsyncTaskWatch",
    "Cancelled",
    "Client",
    "DeadlineExceeded",
    "FailedPrecondition",
    "GpucpError",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "SpecFields",
    "TaskState",
    "TaskWatch",
    "Timeout",
    "Unauthenticated",
    "Unavailable",
    "Unfinished",
    "Unimplemented",
    "Unreachable",
    "__version__",
    "priority_value",
    "server_address",
    "task_spec",
]
