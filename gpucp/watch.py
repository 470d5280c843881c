"""Following tasks to their outcome over WatchTasks and GetTask: `TaskWatch`, and `completions`
behind Client.as_completed and Client.gather when no session stream is used."""

from __future__ import annotations

import builtins
import queue
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Protocol

import grpc

from gpucp.errors import GpucpError, Unfinished, cut_loose, rpc_error, went_away
from gpucp.states import TERMINAL_STATES
from gpucp.v1 import common_pb2, scheduler_pb2

if TYPE_CHECKING:
    from gpucp.client import Client

__all__ = [
    "READ_WINDOW",
    "RESUBSCRIBE_MAX_DELAY_S",
    "RESUMABLE",
    "WATCH_IDS_MAX",
    "TaskWatch",
    "completions",
    "event_of",
]

# A watch that ends with these re-subscribes: the control plane went away (UNAVAILABLE, or
# CANCELLED and a clean end when it shuts down) or dropped this watch for falling behind.
RESUMABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.RESOURCE_EXHAUSTED})
RESUBSCRIBE_MAX_DELAY_S = 2.0


class _EventCall(Protocol):
    """What WatchTasks returns: the events as an iterator that is also the call."""

    def __next__(self) -> scheduler_pb2.TaskEvent: ...

    def initial_metadata(self) -> object: ...

    def cancel(self) -> bool: ...


class TaskWatch(Iterator[scheduler_pb2.TaskEvent]):
    """Task events from one WatchTasks subscription, resumed across control plane restarts.

    Events that happen while the control plane is away are not replayed; instead, after
    re-subscribing, the watch reads the current state of every tracked task that has not yet
    shown a terminal event and yields it as an event. A tracked task's outcome is never missed.
    """

    def __init__(self, client: Client, request: scheduler_pb2.WatchTasksRequest, give_up_s: float) -> None:
        self._client = client
        self._request = request
        self.give_up_s = give_up_s
        self._lock = threading.Lock()  # track() may run in another thread than the iteration
        self._unsettled: set[str] = set(request.task_ids)
        self._backlog: deque[scheduler_pb2.TaskEvent] = deque()
        self._closed = False
        try:
            self._call = self._subscribe()
        except grpc.RpcError as exc:
            raise rpc_error(exc, client.server) from None

    def track(self, task_ids: Iterable[str]) -> None:
        """Also re-read these tasks after a reconnect (for a watch of a tenant or of all tasks)."""
        with self._lock:
            self._unsettled.update(task_ids)

    def untrack(self, task_ids: Iterable[str]) -> None:
        """No longer re-read these tasks after a reconnect (their outcome is known some other way)."""
        with self._lock:
            self._unsettled.difference_update(task_ids)

    def close(self) -> None:
        """End the watch; iteration stops."""
        self._closed = True
        self._call.cancel()

    def __iter__(self) -> TaskWatch:
        return self

    def __next__(self) -> scheduler_pb2.TaskEvent:
        while True:
            if self._backlog:
                return self._seen(self._backlog.popleft())
            try:
                return self._seen(next(self._call))
            except StopIteration:
                if self._ended():
                    raise
            except grpc.RpcError as exc:
                cut_loose(exc)
                if self._ended():
                    raise StopIteration from None
                if exc.code() not in RESUMABLE:
                    raise rpc_error(exc, self._client.server) from None
            self._resume()

    def _ended(self) -> bool:
        return self._closed or self._client.closed

    def _seen(self, event: scheduler_pb2.TaskEvent) -> scheduler_pb2.TaskEvent:
        if event.state in TERMINAL_STATES:
            with self._lock:
                self._unsettled.discard(event.task_id)
        return event

    def _subscribe(self) -> _EventCall:
        call: _EventCall = self._client._scheduler.WatchTasks(self._request)
        call.initial_metadata()  # the server sends headers once it records events for this watch
        return call

    def _resume(self) -> None:
        """Re-subscribe with backoff, then queue the current state of every unsettled tracked task.

        A control plane that is still shutting down may take the new subscription or refuse the
        reads: either way, start over until one that stays up answers both.
        """
        deadline = time.monotonic() + self.give_up_s
        delay = 0.1
        while True:
            remaining = deadline - time.monotonic()
            try:
                if remaining <= 0:
                    raise grpc.FutureTimeoutError()
                grpc.channel_ready_future(self._client._raw_channel).result(timeout=remaining)
                self._call.cancel()  # the ended or half-made subscription this one replaces
                self._call = self._subscribe()
                with self._lock:
                    unsettled = sorted(self._unsettled)
                self._backlog.extend(event_of(task) for task in self._client.get_many(unsettled))
                return
            except grpc.FutureTimeoutError:
                raise went_away(self._client.server, self.give_up_s) from None
            except (grpc.RpcError, GpucpError) as exc:
                error = exc if isinstance(exc, GpucpError) else rpc_error(exc, self._client.server)
                if error.code not in RESUMABLE:
                    raise error from None
                self._backlog.clear()
                time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
                delay = min(delay * 2, RESUBSCRIBE_MAX_DELAY_S)


def event_of(task: common_pb2.Task) -> scheduler_pb2.TaskEvent:
    """A task's current state as the event that would have announced it."""
    return scheduler_pb2.TaskEvent(
        task_id=task.id,
        state=task.state,
        attempt=task.attempt,
        worker_id=task.worker_id,
        at_ms=task.finished_at_ms or task.started_at_ms or task.created_at_ms,
        progress=task.progress,
        error=task.error,
    )


# A watch request names at most this many ids (under 4 MB of them); a longer wait watches every
# task it may see and picks its own from the stream.
WATCH_IDS_MAX = 100_000
# GetTask calls in flight at once while reading many tasks.
READ_WINDOW = 256


def completions(client: Client, ids: builtins.list[str], timeout_s: float | None) -> Iterator[common_pb2.Task]:
    """Each task, terminal, as it finishes, over one watch and batched reads (see Client.as_completed)."""
    if not ids:
        return  # an empty watch request would follow every task
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    wanted = set(ids)
    # Subscribed before the first read: a task finishing between the read and the watch is in the stream.
    watch = client.watch(ids if len(ids) <= WATCH_IDS_MAX else ())
    watch.track(ids)
    finishing: queue.Queue[str | GpucpError] = queue.Queue()

    def follow() -> None:
        try:
            for event in watch:
                if event.state in TERMINAL_STATES and event.task_id in wanted:
                    finishing.put(event.task_id)
        except GpucpError as exc:
            finishing.put(exc)

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    try:
        done: set[str] = set()
        for task in _read(client, ids, watch.give_up_s):
            if task.state in TERMINAL_STATES:
                done.add(task.id)
                watch.untrack([task.id])  # finished before the watch began: a reconnect need not read it again
                yield task
        while len(done) < len(ids):
            # Everything that finished since the last round is read in one window of calls.
            finished = [_next_finished(finishing, deadline, ids, done, timeout_s)]
            while len(finished) < READ_WINDOW and not finishing.empty():
                finished.append(_next_finished(finishing, deadline, ids, done, timeout_s))
            for task in _read(client, [t for t in dict.fromkeys(finished) if t not in done], watch.give_up_s):
                done.add(task.id)  # terminal states are final: its read shows the outcome its event announced
                yield task
    finally:
        watch.close()


def _next_finished(
    finishing: queue.Queue[str | GpucpError],
    deadline: float | None,
    ids: Sequence[str],
    done: set[str],
    timeout_s: float | None,
) -> str:
    try:
        item = finishing.get(timeout=None if deadline is None else max(0.0, deadline - time.monotonic()))
    except queue.Empty:
        raise Unfinished([t for t in ids if t not in done], len(ids), timeout_s or 0.0) from None
    if isinstance(item, GpucpError):
        raise item
    return item


def _read(client: Client, ids: Sequence[str], give_up_s: float) -> Iterator[common_pb2.Task]:
    """The tasks, `READ_WINDOW` GetTask calls in flight; a read the control plane could not answer
    because it is restarting is made again until it is back or give_up_s passes."""
    for i in range(0, len(ids), READ_WINDOW):
        window = ids[i : i + READ_WINDOW]
        calls = [
            client._scheduler.GetTask.future(scheduler_pb2.GetTaskRequest(task_id=t), timeout=client.timeout_s)
            for t in window
        ]
        for task_id, call in zip(window, calls, strict=True):
            try:
                yield call.result()
            except grpc.RpcError as exc:
                if exc.code() not in RESUMABLE:
                    raise rpc_error(exc, client.server) from None
                yield _read_again(client, task_id, give_up_s)


def _read_again(client: Client, task_id: str, give_up_s: float) -> common_pb2.Task:
    deadline = time.monotonic() + give_up_s
    delay = 0.1
    while True:
        try:
            task: common_pb2.Task = client._scheduler.GetTask(
                scheduler_pb2.GetTaskRequest(task_id=task_id), timeout=client.timeout_s, wait_for_ready=True
            )
            return task
        except grpc.RpcError as exc:
            if exc.code() not in RESUMABLE or time.monotonic() + delay > deadline:
                raise rpc_error(exc, client.server) from None
        time.sleep(delay)
        delay = min(delay * 2, RESUBSCRIBE_MAX_DELAY_S)
