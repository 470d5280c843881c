"""How gpucp writes values for people: states, priorities, times, spans, money, tables."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

from gpucp.states import TaskState
from gpucp.v1 import common_pb2


def state_name(state: int) -> str:
    return TaskState(state).label


def priority_name(priority: int) -> str:
    return str(common_pb2.Priority.Name(priority)).removeprefix("PRIORITY_").lower()


def message_dict(message: Message) -> dict[str, Any]:
    """A message as JSON-ready values: field names as in the contract, zeros shown."""
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def print_json(value: object) -> None:
    print(json.dumps(value, indent=2))


def clock_ms(at_ms: int) -> str:
    """A timestamp in local time, to the millisecond: events of one task come close together."""
    return f"{clock(at_ms)}.{at_ms % 1000:03d}"


def requirements(req: common_pb2.Requirements) -> str:
    """What a task needs of its worker, in words ("any worker" when nothing)."""
    parts = []
    if req.gpu_milli:
        memory = f" with {req.gpu_memory_mb} MB of its memory" if req.gpu_memory_mb else ""
        parts.append(f"{req.gpu_milli}/1000 of a GPU{memory}")
    elif req.gpus:
        parts.append(f"{req.gpus} GPU" + ("s" if req.gpus > 1 else ""))
    if req.min_gpu_memory_mb:
        parts.append(f">= {req.min_gpu_memory_mb} MB per GPU")
    if req.gpu_models:
        parts.append("model " + " or ".join(req.gpu_models))
    if req.min_compute_capability:
        parts.append(f"compute capability >= {req.min_compute_capability:g}")
    if req.backend:
        parts.append(f"backend {req.backend}")
    if req.labels:
        parts.append("labels " + ", ".join(req.labels))
    return ", ".join(parts) or "any worker"


def expected_runtime(spec: common_pb2.TaskSpec) -> str:
    """The submitter's runtime estimate and the class its runtimes are learned under."""
    estimate = f"expected {duration(spec.expected_runtime_ms)}" if spec.expected_runtime_ms else "no estimate given"
    return estimate + (f", class {spec.runtime_class}" if spec.runtime_class else "")


def clock(at_ms: int) -> str:
    """A timestamp in local time, to the second."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at_ms / 1000)) if at_ms else "-"


def when(at_ms: int, now_ms: int) -> str:
    return f"{clock(at_ms)} ({duration(now_ms - at_ms)} ago)"


def duration(ms: int) -> str:
    """A span for a person: 850 ms, 12.3 s, 4 min 5 s, 2 h 3 min, 3 d 4 h."""
    ms = max(ms, 0)
    if ms < 1000:
        return f"{ms} ms"
    if ms < 60_000:
        return f"{ms / 1000:.1f} s"
    s = ms // 1000
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    if s < 86_400:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86_400} d {s % 86_400 // 3600} h"


def money(dollars: float) -> str:
    return f"${dollars:.2f}" if dollars >= 1 or dollars == 0 else f"${dollars:.4f}"


def print_table(rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
