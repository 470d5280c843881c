"""`gpucp.AsyncClient`: the methods of `gpucp.Client`, awaited, over a grpc.aio channel.

    async with gpucp.AsyncClient("cp.example:50051") as client:
        task_id = await client.submit("train", payload, gpus=1, tenant="research")
        task = await client.wait(task_id, timeout_s=600, raise_on_timeout=True)
        async for done in client.as_completed(more_ids):
            ...

Requests, checks and answers are built by gpucp.requests, as for Client; errors are the same
gpucp.errors classes. Make it inside the event loop that uses it (grpc.aio binds a channel to it).
"""

from __future__ import annotations

import asyncio
import builtins  # AsyncClient.list shadows the built-in in the class body
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar, Unpack

import grpc
import grpc.aio

from gpucp.auth import read_token, token_metadata
from gpucp.channels import channel_target, open_aio_channel, server_address
from gpucp.client import CHANNEL_OPTIONS
from gpucp.errors import GpucpError, NotFound, Unfinished, rpc_error, went_away
from gpucp.requests import (
    WAIT_GRACE_S,
    SpecFields,
    batch,
    cancel_request,
    cancelled_state,
    events_of,
    list_request,
    page_of,
    run_request,
    task_spec,
    wait_request,
    waited,
)
from gpucp.states import TERMINAL_STATES, TaskState
from gpucp.tls import channel_credentials
from gpucp.tracing import client_interceptors
from gpucp.v1 import admin_pb2, admin_pb2_grpc, common_pb2, scheduler_pb2, scheduler_pb2_grpc
from gpucp.watch import READ_WINDOW, RESUBSCRIBE_MAX_DELAY_S, RESUMABLE, WATCH_IDS_MAX, event_of

__all__ = ["AsyncClient", "AsyncTaskWatch"]

Reply = TypeVar("Reply")
T = TypeVar("T")


class AsyncClient:
    """An asyncio client of one control plane: `async with AsyncClient(...)`, or await close().

    Arguments as Client's: `server` HOST[:PORT] (None: $GPUCP_SERVER, else 127.0.0.1:50051),
    `token` (None: $GPUCP_TOKEN), `tls` (None: $GPUCP_TLS_CA, plaintext without it).
    """

    def __init__(
        self,
        server: str | None = None,
        *,
        timeout_s: float = 30.0,
        token: str | None = None,
        tls: grpc.ChannelCredentials | None = None,
    ) -> None:
        self.server = server_address(server)
        self.timeout_s = timeout_s
        self.closed = False
        tls = tls or channel_credentials()
        # A comma list is resolved here, once, as Client does: construct the client before the
        # loop is busy, or in a thread, when its names may be slow to resolve.
        self._channel = open_aio_channel(channel_target(self.server), tls, CHANNEL_OPTIONS, client_interceptors())
        self._metadata = token_metadata(read_token() if token is None else token)
        self._scheduler = scheduler_pb2_grpc.SchedulerStub(self._channel)
        self._admin = admin_pb2_grpc.AdminStub(self._channel)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        self.closed = True
        await self._channel.close()

    async def _call(
        self, method: Callable[..., Awaitable[Reply]], request: Any, timeout_s: float | None = None
    ) -> Reply:
        try:
            return await method(request, timeout=timeout_s or self.timeout_s, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise rpc_error(exc, self.server) from None

    async def submit(self, kind: str, payload: bytes | str = b"", **spec_fields: Unpack[SpecFields]) -> str:
        """Submit one task; returns its id once it is durably stored. See task_spec() for fields."""
        return await self.submit_spec(task_spec(kind, payload, **spec_fields))

    async def submit_spec(self, spec: common_pb2.TaskSpec) -> str:
        reply = await self._call(self._scheduler.SubmitTask, scheduler_pb2.SubmitTaskRequest(spec=spec))
        return str(reply.task_id)

    async def submit_many(self, specs: Iterable[common_pb2.TaskSpec]) -> builtins.list[str]:
        """Submit a batch: all are stored, or none (the first bad spec is named in the error)."""
        reply = await self._call(self._scheduler.SubmitTasks, scheduler_pb2.SubmitTasksRequest(specs=batch(specs)))
        return list(reply.task_ids)

    async def get(self, task_id: str) -> common_pb2.Task:
        task: common_pb2.Task = await self._call(self._scheduler.GetTask, scheduler_pb2.GetTaskRequest(task_id=task_id))
        return task

    async def get_many(self, task_ids: Sequence[str], window: int = READ_WINDOW) -> AsyncIterator[common_pb2.Task]:
        """The tasks, `window` GetTask calls in flight at a time; ids the server does not know are skipped."""
        for i in range(0, len(task_ids), window):
            found = await asyncio.gather(*(self._found(t) for t in task_ids[i : i + window]))
            for task in found:
                if task is not None:
                    yield task

    async def _found(self, task_id: str) -> common_pb2.Task | None:
        try:
            return await self.get(task_id)
        except NotFound:  # deleted after --keep-finished
            return None

    async def wait(self, task_id: str, timeout_s: float = 60.0, *, raise_on_timeout: bool = False) -> common_pb2.Task:
        """The task once finished, or as it is after timeout_s (with raise_on_timeout, gpucp.Timeout instead)."""
        request = wait_request(task_id, timeout_s)
        task: common_pb2.Task = await self._call(
            self._scheduler.WaitTask, request, timeout_s=timeout_s + WAIT_GRACE_S
        )
        return waited(task, timeout_s, raise_on_timeout)

    async def run(
        self, kind: str, payload: bytes | str = b"", *, wait_s: float = 60.0, **spec_fields: Unpack[SpecFields]
    ) -> common_pb2.Task:
        """Submit one task and wait for it in one call (RunTask); see Client.run."""
        request = run_request(task_spec(kind, payload, **spec_fields), wait_s)
        task: common_pb2.Task = await self._call(self._scheduler.RunTask, request, timeout_s=wait_s + WAIT_GRACE_S)
        return task

    async def as_completed(
        self, task_ids: Iterable[str], timeout_s: float | None = None
    ) -> AsyncIterator[common_pb2.Task]:
        """Each task, terminal, as it finishes (see Client.as_completed): Unfinished after timeout_s,
        NotFound for an id the server does not know; rides out a control plane restart."""
        ids = builtins.list(dict.fromkeys(task_ids))
        if not ids:
            return  # an empty watch request would follow every task
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        # Subscribed before the first read: a task finishing between the read and the watch is in the stream.
        watch = await self.watch(ids if len(ids) <= WATCH_IDS_MAX else ())
        watch.track(ids)
        unfinished = set(ids)
        try:
            for i in range(0, len(ids), READ_WINDOW):
                for task in await asyncio.gather(*(self._read(t, watch.give_up_s) for t in ids[i : i + READ_WINDOW])):
                    if task.state in TERMINAL_STATES and task.id in unfinished:
                        unfinished.discard(task.id)
                        watch.untrack([task.id])
                        yield task
            while unfinished:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                try:
                    event = await asyncio.wait_for(anext(watch), left)
                except TimeoutError:
                    raise Unfinished([t for t in ids if t in unfinished], len(ids), timeout_s or 0.0) from None
                if event.state in TERMINAL_STATES and event.task_id in unfinished:
                    unfinished.discard(event.task_id)
                    # Terminal states are final: the read shows the outcome the event announced.
                    yield await self._read(event.task_id, watch.give_up_s)
        finally:
            watch.close()

    async def gather(self, task_ids: Sequence[str], timeout_s: float | None = None) -> builtins.list[common_pb2.Task]:
        """The tasks once all are finished, in the order of `task_ids` (see as_completed)."""
        finished = {task.id: task async for task in self.as_completed(task_ids, timeout_s)}
        return [finished[task_id] for task_id in task_ids]

    async def _read(self, task_id: str, give_up_s: float) -> common_pb2.Task:
        """GetTask, made again while the control plane restarts, until give_up_s passes."""
        deadline = time.monotonic() + give_up_s
        delay = 0.1
        while True:
            try:
                task: common_pb2.Task = await self._scheduler.GetTask(
                    scheduler_pb2.GetTaskRequest(task_id=task_id), timeout=self.timeout_s, metadata=self._metadata,
                    wait_for_ready=True,
                )
                return task
            except grpc.RpcError as exc:
                if exc.code() not in RESUMABLE or time.monotonic() + delay > deadline:
                    raise rpc_error(exc, self.server) from None
            await asyncio.sleep(delay)
            delay = min(delay * 2, RESUBSCRIBE_MAX_DELAY_S)

    async def cancel(self, task_id: str) -> TaskState:
        """Cancel an unfinished task; returns its state (CANCELLED). FailedPrecondition for a finished one."""
        return cancelled_state(await self._call(self._scheduler.CancelTask, cancel_request(task_id)))

    async def events(self, task_id: str) -> tuple[builtins.list[scheduler_pb2.TaskEvent], int]:
        """The task's history, oldest first, and how many events were dropped from its middle."""
        request = scheduler_pb2.GetTaskEventsRequest(task_id=task_id)
        return events_of(await self._call(self._scheduler.GetTaskEvents, request))

    async def list_page(
        self, *, state: TaskState | int | str = 0, tenant: str = "", kind: str = "", full: bool = False,
        limit: int = 100, page_token: str = "",
    ) -> tuple[builtins.list[common_pb2.Task], str]:
        """One page of matching tasks and the token of the next ("" after the last page); see Client.list_page."""
        request = list_request(state=state, tenant=tenant, kind=kind, full=full, limit=limit, page_token=page_token)
        return page_of(await self._call(self._scheduler.ListTasks, request))

    async def list(
        self, *, state: TaskState | int | str = 0, tenant: str = "", kind: str = "", full: bool = False,
        limit: int = 100,
    ) -> AsyncIterator[common_pb2.Task]:
        """Every matching task, fetched a page at a time (see list_page)."""
        token = ""
        while True:
            tasks, token = await self.list_page(
                state=state, tenant=tenant, kind=kind, full=full, limit=limit, page_token=token
            )
            for task in tasks:
                yield task
            if not token:
                return

    async def watch(self, task_ids: Sequence[str] = (), tenant: str = "", *, give_up_s: float = 60.0) -> AsyncTaskWatch:
        """Task state changes from now on, as an AsyncTaskWatch (see Client.watch): returns once the
        server records events for it, and resumes across control plane restarts."""
        watch = AsyncTaskWatch(self, scheduler_pb2.WatchTasksRequest(task_ids=task_ids, tenant=tenant), give_up_s)
        try:
            await watch._subscribe()
        except grpc.RpcError as exc:
            raise rpc_error(exc, self.server) from None
        return watch

    async def stats(self) -> admin_pb2.ClusterStats:
        request = admin_pb2.GetClusterStatsRequest()
        stats: admin_pb2.ClusterStats = await self._call(self._admin.GetClusterStats, request)
        return stats

    async def workers(self) -> builtins.list[admin_pb2.WorkerInfo]:
        return list((await self._call(self._admin.ListWorkers, admin_pb2.ListWorkersRequest())).workers)

    async def drain(self, worker_id: str) -> None:
        """Stop placing tasks on the worker; those it runs finish."""
        await self._call(self._admin.DrainWorker, admin_pb2.DrainWorkerRequest(worker_id=worker_id))

    async def undrain(self, worker_id: str) -> None:
        """End a drain(): the worker takes new tasks again."""
        await self._call(self._admin.UndrainWorker, admin_pb2.UndrainWorkerRequest(worker_id=worker_id))

    async def costs(self) -> admin_pb2.CostReport:
        """Spend per pod, pool and tenant (FailedPrecondition when the autoscaler is off)."""
        report: admin_pb2.CostReport = await self._call(self._admin.GetCosts, admin_pb2.GetCostsRequest())
        return report

    async def scaling_events(self, limit: int = 0, pool: str = "") -> builtins.list[admin_pb2.ScalingEvent]:
        """The autoscaler's decisions, newest last (limit 0: all that are kept)."""
        request = admin_pb2.ListScalingEventsRequest(limit=limit, pool=pool)
        return list((await self._call(self._admin.ListScalingEvents, request)).events)


class AsyncTaskWatch:
    """Task events from one WatchTasks subscription, resumed across control plane restarts, as
    TaskWatch: after re-subscribing it yields the current state of every tracked task that had not
    shown a terminal event, so a tracked task's outcome is never missed."""

    def __init__(self, client: AsyncClient, request: scheduler_pb2.WatchTasksRequest, give_up_s: float) -> None:
        self._client = client
        self._request = request
        self.give_up_s = give_up_s
        self._unsettled: set[str] = set(request.task_ids)
        self._backlog: deque[scheduler_pb2.TaskEvent] = deque()
        self._closed = False
        self._call: Any = None  # the current grpc.aio stream call

    async def _subscribe(self) -> None:
        call = self._client._scheduler.WatchTasks(self._request, metadata=self._client._metadata)
        await call.initial_metadata()  # the server sends headers once it records events for this watch
        self._call = call

    def track(self, task_ids: Iterable[str]) -> None:
        """Also re-read these tasks after a reconnect (for a watch of a tenant or of all tasks)."""
        self._unsettled.update(task_ids)

    def untrack(self, task_ids: Iterable[str]) -> None:
        """No longer re-read these tasks after a reconnect."""
        self._unsettled.difference_update(task_ids)

    def close(self) -> None:
        """End the watch; iteration stops."""
        self._closed = True
        if self._call is not None:
            self._call.cancel()

    def __aiter__(self) -> AsyncTaskWatch:
        return self

    async def __anext__(self) -> scheduler_pb2.TaskEvent:
        while True:
            if self._backlog:
                return self._seen(self._backlog.popleft())
            try:
                event = await self._call.read()
                if event is not grpc.aio.EOF:
                    return self._seen(event)
                if self._ended():
                    raise StopAsyncIteration
            except grpc.RpcError as exc:
                if self._ended():
                    raise StopAsyncIteration from None
                if exc.code() not in RESUMABLE:
                    raise rpc_error(exc, self._client.server) from None
            except asyncio.CancelledError:
                if self._ended():  # close() cancelled the read
                    raise StopAsyncIteration from None
                raise
            await self._resume()

    def _ended(self) -> bool:
        return self._closed or self._client.closed

    def _seen(self, event: scheduler_pb2.TaskEvent) -> scheduler_pb2.TaskEvent:
        if event.state in TERMINAL_STATES:
            self._unsettled.discard(event.task_id)
        return event

    async def _resume(self) -> None:
        """Re-subscribe with backoff, then queue the current state of every unsettled tracked task."""
        deadline = time.monotonic() + self.give_up_s
        delay = 0.1
        while True:
            try:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError
                await asyncio.wait_for(self._client._channel.channel_ready(), remaining)
                self._call.cancel()  # the ended or half-made subscription this one replaces
                await self._subscribe()
                tasks = [t async for t in self._client.get_many(sorted(self._unsettled))]
                self._backlog.extend(event_of(task) for task in tasks)
                return
            except TimeoutError:
                raise went_away(self._client.server, self.give_up_s) from None
            except (grpc.RpcError, GpucpError) as exc:
                error = exc if isinstance(exc, GpucpError) else rpc_error(exc, self._client.server)
                if error.code not in RESUMABLE:
                    raise error from None
                self._backlog.clear()
                await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
                delay = min(delay * 2, RESUBSCRIBE_MAX_DELAY_S)
