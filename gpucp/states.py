"""Task states as both sides read them: their names, and which ones are final."""

from __future__ import annotations

import enum

from gpucp.v1 import common_pb2

__all__ = ["TERMINAL_STATES", "TaskState"]


class TaskState(enum.IntEnum):
    """A task's state by name. An int (the contract's value), so it compares equal to `task.state`:

        if gpucp.TaskState(task.state) is gpucp.TaskState.FAILED: ...
    """

    UNSPECIFIED = common_pb2.TASK_STATE_UNSPECIFIED
    PENDING = common_pb2.TASK_STATE_PENDING
    ASSIGNED = common_pb2.TASK_STATE_ASSIGNED
    RUNNING = common_pb2.TASK_STATE_RUNNING
    SUCCEEDED = common_pb2.TASK_STATE_SUCCEEDED
    FAILED = common_pb2.TASK_STATE_FAILED
    CANCELLED = common_pb2.TASK_STATE_CANCELLED
    TIMED_OUT = common_pb2.TASK_STATE_TIMED_OUT

    @property
    def label(self) -> str:
        """The name as people and the CLI write it: "pending", "timed_out"."""
        return self.name.lower()

    @property
    def terminal(self) -> bool:
        """Whether a task in this state never changes again."""
        return self.value in TERMINAL_STATES


# A task in one of these states never changes again. Plain contract values, not TaskState members:
# stores pass them to database drivers, some of which write an enum member as its name.
TERMINAL_STATES: frozenset[common_pb2.TaskState] = frozenset(
    {
        common_pb2.TASK_STATE_SUCCEEDED,
        common_pb2.TASK_STATE_FAILED,
        common_pb2.TASK_STATE_CANCELLED,
        common_pb2.TASK_STATE_TIMED_OUT,
    }
)
