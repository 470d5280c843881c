"""gpucp: the contract (gpucp.v1) and a small client for services that submit GPU work."""

from importlib.metadata import PackageNotFoundError, version

from gpucp.channels import server_address
from gpucp.client import (
    Client,
    GpucpError,
    TaskWatch,
    Unfinished,
    Unreachable,
    priority_value,
    task_spec,
)
from gpucp.states import TERMINAL_STATES

try:
    __version__ = version("gpucp")  # one source: Cargo.toml, through maturin's package metadata
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "TERMINAL_STATES",
    "Client",
    "GpucpError",
    "TaskWatch",
    "Unfinished",
    "Unreachable",
    "__version__",
    "priority_value",
    "server_address",
    "task_spec",
]
