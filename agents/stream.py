"""One registered Workers.Connect stream: what is queued for it, and the writer that batches it into messages."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeAlias

import grpc

from gpucp import hops
from gpucp.batching import by_size
from gpucp.limits import MAX_MESSAGE_BYTES
from gpucp.v1 import common_pb2, workers_pb2

if TYPE_CHECKING:
    # Subscripted only for the type checker: grpc's classes are not generic at run time.
    ConnectCall: TypeAlias = grpc.aio.StreamStreamCall[workers_pb2.AgentMessage, workers_pb2.ControlMessage]

__all__ = [
    "CHANNEL_OPTIONS",
    "CLOSE",
    "Outgoing",
    "Running",
    "Stream",
    "TaskKey",
    "heartbeat_seconds",
    "update_message",
    "write_loop",
]

CHANNEL_OPTIONS: list[tuple[str, int]] = [
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
]
_DEFAULT_HEARTBEAT_MS = 5_000
_MIN_HEARTBEAT_MS = 10
# A final update written on a stream counts as delivered once that stream stayed up this long
# afterwards: long enough for keepalive (10 s + 5 s) to have noticed a dead peer.
_DELIVERY_CONFIRM_S = 15.0

TaskKey = tuple[str, int]


def heartbeat_seconds(interval_ms: int) -> float:
    """The heartbeat interval the control plane asked for (`registered`), in seconds; its default when unset."""
    if interval_ms <= 0:
        return _DEFAULT_HEARTBEAT_MS / 1000
    return max(interval_ms, _MIN_HEARTBEAT_MS) / 1000


def update_message(key: TaskKey, state: int, **fields: object) -> workers_pb2.AgentMessage:
    """An AgentMessage carrying one TaskUpdate of attempt `key`."""
    return workers_pb2.AgentMessage(
        update=workers_pb2.TaskUpdate(
            task_id=key[0], attempt=key[1], state=state, **fields  # type: ignore[arg-type]
        )
    )


@dataclasses.dataclass(eq=False)
class Outgoing:
    """A final update that must reach the control plane, whatever happens to the stream."""

    message: workers_pb2.AgentMessage
    written_on: int | None = None
    written_at: float = 0.0


@dataclasses.dataclass(slots=True)
class Running:
    """An attempt got its slot, or reports progress. The writer turns it into a RUNNING update
    unless the attempt's final update leaves in the same batch (which says everything RUNNING
    would have)."""

    key: TaskKey
    progress: float = 0.0


# Queued last when the agent stops: the writer writes what came before it, then half-closes.
CLOSE = object()


class Stream:
    """The live, registered stream: a generation number and the queue its writer drains."""

    def __init__(self, generation: int, heartbeat_s: float) -> None:
        self.generation = generation
        self.heartbeat_s = heartbeat_s
        self.queue: asyncio.Queue[object] = asyncio.Queue()
        self.closed_cleanly = False


async def write_loop(
    call: ConnectCall, stream: Stream, outbox: dict[TaskKey, Outgoing], on_written: Callable[[], None]
) -> None:
    """Drain the stream's queue onto the call until CLOSE; `on_written` runs whenever final updates were written.

    A heartbeat written on the stream is the moment to drop from `outbox` the final updates this
    stream carried long enough ago to count as delivered.
    """
    while True:
        items = [await stream.queue.get()]
        # Everything produced while the last write was in flight leaves in one go.
        while not stream.queue.empty():
            items.append(stream.queue.get_nowait())
        closing = CLOSE in items
        if closing:
            items = items[: items.index(CLOSE)]
        await _write_batch(call, stream, items, outbox, on_written)
        if closing:
            await call.done_writing()
            # Keep the session alive until the server ends the stream (the reader sees EOF).
            await asyncio.Future()


async def _write_batch(
    call: ConnectCall,
    stream: Stream,
    items: list[object],
    outbox: dict[TaskKey, Outgoing],
    on_written: Callable[[], None],
) -> None:
    """Write queued items in order; consecutive task updates go as one `updates` message.

    A RUNNING update followed in the same batch by its attempt's final update is left out: the
    task already ended, and the final update says everything RUNNING would have.
    """
    ended = {
        (item.message.update.task_id, item.message.update.attempt)
        for item in items
        if isinstance(item, Outgoing)
    }
    updates: list[workers_pb2.TaskUpdate] = []
    finals: list[Outgoing] = []
    batched: set[Outgoing] = set()

    async def flush() -> None:
        for run in by_size(updates):
            hops.mark("a.write.update")
            if len(run) == 1:
                await call.write(workers_pb2.AgentMessage(update=run[0]))
            else:
                await call.write(workers_pb2.AgentMessage(updates=workers_pb2.TaskUpdates(updates=run)))
        now = time.monotonic()
        for item in finals:
            item.written_on = stream.generation
            item.written_at = now
        if finals:
            on_written()
        updates.clear()
        finals.clear()

    for item in items:
        if isinstance(item, Outgoing):
            if item.written_on == stream.generation or item in batched:
                continue  # queued twice (produced while registering); once is enough
            updates.append(item.message.update)
            finals.append(item)
            batched.add(item)
        elif isinstance(item, Running):
            if item.key not in ended:
                task_id, attempt = item.key
                updates.append(
                    workers_pb2.TaskUpdate(
                        task_id=task_id,
                        attempt=attempt,
                        state=common_pb2.TASK_STATE_RUNNING,
                        progress=item.progress,
                    )
                )
        elif isinstance(item, workers_pb2.AgentMessage) and item.WhichOneof("msg") == "update":
            updates.append(item.update)
        elif isinstance(item, workers_pb2.AgentMessage):
            await flush()
            await call.write(item)
            if item.WhichOneof("msg") == "heartbeat":
                _forget_delivered(outbox, stream)
    await flush()


def _forget_delivered(outbox: dict[TaskKey, Outgoing], stream: Stream) -> None:
    confirm_after = max(_DELIVERY_CONFIRM_S, 2 * stream.heartbeat_s)
    cutoff = time.monotonic() - confirm_after
    for key, item in list(outbox.items()):
        if item.written_on == stream.generation and item.written_at <= cutoff:
            del outbox[key]
