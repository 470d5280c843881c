"""A task as the control plane tracks it, and the row it is stored as.

The store writes `row()` at submission and `state_row()` at every later change, and reads a row
back with `record_from_row`; the services show `to_proto()`.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TypedDict

from gpucp.states import TERMINAL_STATES
from gpucp.v1 import common_pb2

# A stored task's payload larger than this is not held in memory: it is read back from the store
# when the task is dispatched or shown. A smaller one costs less to keep than to read.
KEEP_PAYLOAD_BYTES = 4096


def new_task_id() -> str:
    """A new task's id: a UUIDv7 (RFC 9562) in 32 hex digits.

    Its first 48 bits are the creation time in milliseconds, so ids sort by when their tasks were
    submitted and each new one lands at the end of the id index. A random id (UUIDv4) lands on a
    random page of that index instead, which makes every write cost more as the table grows: at a
    million stored tasks a task's three writes cost 1.7 times what they do with time-ordered ids
    (`benches/bench_store.py`). The other 74 bits are random.
    """
    rand = int.from_bytes(os.urandom(10))
    value = (
        (time.time_ns() // 1_000_000) << 80
        | 0x7 << 76  # version
        | (rand >> 62 & 0xFFF) << 64
        | 0b10 << 62  # variant
        | rand & ((1 << 62) - 1)
    )
    return f"{value:032x}"


class TaskFields(TypedDict):
    """The Task message's fields, as TaskRecord.proto_fields() gives them."""

    id: str
    spec: common_pb2.TaskSpec
    state: common_pb2.TaskState
    attempt: int
    worker_id: str
    result: bytes
    error: str
    pending_reason: str
    created_at_ms: int
    started_at_ms: int
    finished_at_ms: int
    gpu_indices: list[int]
    attempt_errors: list[str]
    progress: float


@dataclass(slots=True, eq=False)
class TaskRecord:
    """A task as the control plane tracks it; the row it is stored as mirrors these fields."""

    handle: int
    id: str
    tenant: str
    spec: common_pb2.TaskSpec
    state: common_pb2.TaskState = common_pb2.TASK_STATE_PENDING
    attempt: int = 0
    worker_id: str = ""
    gpu_indices: list[int] = field(default_factory=list)
    result: bytes = b""
    error: str = ""
    errors: list[str] = field(default_factory=list)
    lost_count: int = 0
    created_at_ms: int = 0
    started_at_ms: int = 0
    finished_at_ms: int = 0
    # The handler's latest progress report (0 to 1) for the current attempt. Kept in memory only:
    # the agent reports again, and a restart loses at most one report's worth.
    progress: float = 0.0
    # The spec's serialized size, known from its validation (or its row): a result must fit
    # beside it, and the spec is not serialized again to check that.
    spec_bytes: int = 0
    # The size of the payload left to the store by `drop_payload` (0: the payload is in `spec`).
    stored_payload: int = 0
    # The trace context of the call that submitted it (gpucp.tracing), None when it was not traced.
    # In memory only: after a restart the task's later spans start a trace of their own.
    trace: dict[str, str] | None = None

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    @property
    def payload_bytes(self) -> int:
        return self.stored_payload or len(self.spec.payload)

    def drop_payload(self) -> None:
        """Once the task is stored, keep a large payload there only: pending tasks then hold a
        few hundred bytes each in memory, not their payloads.

        The spec is copied without it: protobuf keeps a message's bytes in an arena that a cleared
        field does not give back, while the copy's arena holds the rest only.
        """
        size = len(self.spec.payload)
        if size <= KEEP_PAYLOAD_BYTES:
            return
        self.spec.ClearField("payload")
        spec = common_pb2.TaskSpec()
        spec.CopyFrom(self.spec)
        self.spec, self.stored_payload = spec, size

    def to_proto(self, pending_reason: str = "", *, full: bool = True) -> common_pb2.Task:
        """The Task message; without `full`, the spec's payload and the result are left out. A
        payload left to the store is not in it either: the caller reads it (`Store.payloads`)."""
        task = common_pb2.Task(**self.proto_fields(pending_reason))
        if not full:
            task.spec.ClearField("payload")
            task.ClearField("result")
        return task

    def proto_fields(self, pending_reason: str = "") -> TaskFields:
        """The Task message's fields: a message field given as a dict is built in place, where a
        Task given to an enclosing message (an Assignment) would be built, then copied."""
        return {
            "id": self.id,
            "spec": self.spec,
            "state": self.state,
            "attempt": self.attempt,
            "worker_id": self.worker_id,
            "result": self.result,
            "error": self.error,
            "pending_reason": pending_reason,
            "created_at_ms": self.created_at_ms,
            "started_at_ms": self.started_at_ms,
            "finished_at_ms": self.finished_at_ms,
            "gpu_indices": self.gpu_indices,
            "attempt_errors": self.errors,
            "progress": self.progress,
        }

    def state_row(self) -> tuple[object, ...]:
        """The columns a task's life changes, for _UPDATE; the spec is written once, at insert."""
        return (
            self.state,
            self.attempt,
            self.worker_id,
            _json_ints(self.gpu_indices),
            self.result,
            self.error,
            _json_strings(self.errors),
            self.lost_count,
            self.started_at_ms,
            self.finished_at_ms,
            self.handle,
        )

    def row(self) -> tuple[object, ...]:
        """All columns, in _INSERT's order: what never changes, then state_row() but its handle."""
        fixed = (self.handle, self.id, self.tenant, self.spec.idempotency_key, self.spec.SerializeToString())
        return (*fixed, self.created_at_ms, *self.state_row()[:-1], self.spec.kind)


def _json_ints(items: list[int]) -> str:
    """`json.dumps(items)` at a quarter of its cost: every assignment writes its GPU indices."""
    return f"[{', '.join(map(str, items))}]"


def _json_strings(items: list[str]) -> str:
    return json.dumps(items) if items else "[]"  # most tasks have no errors: skip the encoder


def _json_list(text: str) -> list[Any]:
    # A pending task has no GPUs and no errors: a restart reading a million of them skips the decoder.
    return [] if text == "[]" else json.loads(text)


def record_from_row(row: Sequence[object]) -> TaskRecord:
    spec = common_pb2.TaskSpec()
    blob: bytes = row[4]  # type: ignore[assignment]
    spec.ParseFromString(blob)
    return TaskRecord(
        spec_bytes=len(blob),
        handle=row[0],  # type: ignore[arg-type]
        id=row[1],  # type: ignore[arg-type]
        tenant=row[2],  # type: ignore[arg-type]
        spec=spec,
        state=row[5],  # type: ignore[arg-type]
        attempt=row[6],  # type: ignore[arg-type]
        worker_id=row[7],  # type: ignore[arg-type]
        gpu_indices=_json_list(row[8]),  # type: ignore[arg-type]
        result=row[9],  # type: ignore[arg-type]
        error=row[10],  # type: ignore[arg-type]
        errors=_json_list(row[11]),  # type: ignore[arg-type]
        lost_count=row[12],  # type: ignore[arg-type]
        created_at_ms=row[13],  # type: ignore[arg-type]
        started_at_ms=row[14],  # type: ignore[arg-type]
        finished_at_ms=row[15],  # type: ignore[arg-type]
    )
