"""Byte limits that the control plane, its clients and its agents share.

One place for them: a message one side may build must be one the other side accepts, and a task
spec the control plane admits must fit in every message that later carries it.
"""

from __future__ import annotations

__all__ = ["MAX_ERROR_BYTES", "MAX_MESSAGE_BYTES", "MAX_TASK_CONTENT_BYTES", "TASK_ENVELOPE_BYTES"]

# Every gRPC message in either direction: Scheduler and Admin calls and the agents' stream alike.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
# One attempt's error text, as an agent sends it and as the control plane keeps it.
MAX_ERROR_BYTES = 4096
# What a Task carries besides its spec and result, with the message around it (Assignment,
# response, list page): ids, the worker id, one error per attempt (at most about 110 of
# MAX_ERROR_BYTES: 101 attempts and a few lost workers), the pending reason and the placement
# text. Under half a megabyte at worst; the rest is margin.
TASK_ENVELOPE_BYTES = 1024 * 1024
# What the serialized spec and the result of one task may weigh together: so that the Task,
# an Assignment of it and a page holding it each fit in one message.
MAX_TASK_CONTENT_BYTES = MAX_MESSAGE_BYTES - TASK_ENVELOPE_BYTES
