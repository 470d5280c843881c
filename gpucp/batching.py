"""Grouping protobuf messages into batches that stay well under gRPC's message size limit."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Protocol, TypeVar


class _Sized(Protocol):
    def ByteSize(self) -> int: ...


M = TypeVar("M", bound=_Sized)

# A batch (Assignments, TaskUpdates) holds at most this many encoded bytes, unless a single
# message is bigger (it then goes alone, as it would unbatched): far under the 16 MiB limit.
BATCH_MAX_BYTES = 1024 * 1024


def by_size(messages: Iterable[M], max_bytes: int = BATCH_MAX_BYTES) -> Iterator[list[M]]:
    """Consecutive runs of `messages`, in order, each of at most `max_bytes` encoded bytes."""
    run: list[M] = []
    size = 0
    for message in messages:
        n = message.ByteSize()
        if run and size + n > max_bytes:
            yield run
            run, size = [], 0
        run.append(message)
        size += n
    if run:
        yield run
