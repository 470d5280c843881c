"""gpucp: the contract (gpucp.v1) and a small client for services that submit GPU work."""

from gpucp.client import Client, GpucpError, priority_value, task_spec

__all__ = ["Client", "GpucpError", "priority_value", "task_spec"]
