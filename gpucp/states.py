"""Task states as both sides read them: which ones are final."""

from __future__ import annotations

from gpucp.v1 import common_pb2

__all__ = ["TERMINAL_STATES"]

# A task in one of these states never changes again.
TERMINAL_STATES: frozenset[common_pb2.TaskState] = frozenset(
    {
        common_pb2.TASK_STATE_SUCCEEDED,
        common_pb2.TASK_STATE_FAILED,
        common_pb2.TASK_STATE_CANCELLED,
        common_pb2.TASK_STATE_TIMED_OUT,
    }
)
