"""The gRPC services: protobuf in, ControlPlane calls, protobuf out. No decisions live here."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable
from typing import TYPE_CHECKING, TypeVar

import grpc
from grpc.aio import ServicerContext

from controlplane.control import ControlPlane
from controlplane.errors import ControlError
from controlplane.fleet import WorkerConn
from gpucp.auth import token_problem
from gpucp.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    common_pb2,
    scheduler_pb2,
    scheduler_pb2_grpc,
    workers_pb2,
    workers_pb2_grpc,
)

if TYPE_CHECKING:
    from controlplane.autoscaler import Autoscaler

log = logging.getLogger("gpucp.controlplane")

REGISTER_TIMEOUT_S = 30.0
T = TypeVar("T")
Request = TypeVar("Request")
Response = TypeVar("Response")


async def answer(context: ServicerContext[Request, Response], call: Awaitable[T]) -> T:
    """Await `call`, turning a ControlError into the gRPC status it stands for."""
    try:
        return await call
    except ControlError as exc:
        await context.abort(exc.code, str(exc))  # raises: abort() never returns


class SchedulerService(scheduler_pb2_grpc.SchedulerServicer):
    def __init__(self, cp: ControlPlane) -> None:
        self.cp = cp

    async def SubmitTask(
        self,
        request: scheduler_pb2.SubmitTaskRequest,
        context: ServicerContext[scheduler_pb2.SubmitTaskRequest, scheduler_pb2.SubmitTaskResponse],
    ) -> scheduler_pb2.SubmitTaskResponse:
        [(task_id, duplicate)] = await answer(context, self.cp.submit([request.spec]))
        return scheduler_pb2.SubmitTaskResponse(task_id=task_id, duplicate=duplicate)

    async def SubmitTasks(
        self,
        request: scheduler_pb2.SubmitTasksRequest,
        context: ServicerContext[scheduler_pb2.SubmitTasksRequest, scheduler_pb2.SubmitTasksResponse],
    ) -> scheduler_pb2.SubmitTasksResponse:
        results = await answer(context, self.cp.submit(list(request.specs)))
        return scheduler_pb2.SubmitTasksResponse(task_ids=[task_id for task_id, _ in results])

    async def GetTask(
        self,
        request: scheduler_pb2.GetTaskRequest,
        context: ServicerContext[scheduler_pb2.GetTaskRequest, common_pb2.Task],
    ) -> common_pb2.Task:
        rec = await answer(context, self.cp.get(request.task_id))
        return self.cp.describe(rec)

    async def WaitTask(
        self,
        request: scheduler_pb2.WaitTaskRequest,
        context: ServicerContext[scheduler_pb2.WaitTaskRequest, common_pb2.Task],
    ) -> common_pb2.Task:
        rec = await answer(context, self.cp.wait(request.task_id, request.timeout_ms))
        return self.cp.describe(rec)

    async def RunTask(
        self,
        request: scheduler_pb2.RunTaskRequest,
        context: ServicerContext[scheduler_pb2.RunTaskRequest, common_pb2.Task],
    ) -> common_pb2.Task:
        rec = await answer(context, self.cp.run(request.spec, request.timeout_ms))
        return self.cp.describe(rec)

    async def CancelTask(
        self,
        request: scheduler_pb2.CancelTaskRequest,
        context: ServicerContext[scheduler_pb2.CancelTaskRequest, scheduler_pb2.CancelTaskResponse],
    ) -> scheduler_pb2.CancelTaskResponse:
        state = await answer(context, self.cp.cancel(request.task_id))
        return scheduler_pb2.CancelTaskResponse(state=state)

    async def ListTasks(
        self,
        request: scheduler_pb2.ListTasksRequest,
        context: ServicerContext[scheduler_pb2.ListTasksRequest, scheduler_pb2.ListTasksResponse],
    ) -> scheduler_pb2.ListTasksResponse:
        recs, token = await answer(
            context,
            self.cp.list(request.state, request.tenant, request.kind, request.limit, request.page_token),
        )
        full = request.view == scheduler_pb2.TASK_VIEW_FULL
        return scheduler_pb2.ListTasksResponse(
            tasks=[self.cp.describe(r, full=full) for r in recs], next_page_token=token
        )

    async def GetTaskEvents(
        self,
        request: scheduler_pb2.GetTaskEventsRequest,
        context: ServicerContext[scheduler_pb2.GetTaskEventsRequest, scheduler_pb2.GetTaskEventsResponse],
    ) -> scheduler_pb2.GetTaskEventsResponse:
        events, omitted = await answer(context, self.cp.events(request.task_id))
        return scheduler_pb2.GetTaskEventsResponse(events=events, omitted=omitted)

    async def WatchTasks(
        self,
        request: scheduler_pb2.WatchTasksRequest,
        context: ServicerContext[scheduler_pb2.WatchTasksRequest, scheduler_pb2.TaskEvent],
    ) -> AsyncIterator[scheduler_pb2.TaskEvent]:
        watcher = self.cp.watch(list(request.task_ids), request.tenant)
        try:
            # Headers go out once the watcher is recording: a client that waits for them
            # misses no event of what it submits next.
            await context.send_initial_metadata(())
            async for event in watcher.events():
                yield event
        except ControlError as exc:
            await context.abort(exc.code, str(exc))
        finally:
            self.cp.unwatch(watcher)


class WorkersService(workers_pb2_grpc.WorkersServicer):
    def __init__(self, cp: ControlPlane) -> None:
        self.cp = cp

    async def Connect(
        self,
        request_iterator: AsyncIterator[workers_pb2.AgentMessage],
        context: ServicerContext[workers_pb2.AgentMessage, workers_pb2.ControlMessage],
    ) -> AsyncIterator[workers_pb2.ControlMessage]:
        if self.cp.config.agent_token:
            problem = token_problem(context.invocation_metadata(), self.cp.config.agent_token)
            if problem is not None:
                log.warning("refused an agent from %s: %s", context.peer(), problem)
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, problem)
        requests = aiter(request_iterator)
        try:
            first = await asyncio.wait_for(anext(requests), REGISTER_TIMEOUT_S)
        except (StopAsyncIteration, TimeoutError):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"send register as the first message within {REGISTER_TIMEOUT_S:g} s",
            )
        if first.WhichOneof("msg") != "register":
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "the first message on Connect must be register, "
                f"not {first.WhichOneof('msg') or 'an empty message'}",
            )
        conn = await answer(context, self._register(first.register, context.peer()))
        reader = asyncio.create_task(self._read(conn, requests))
        try:
            while True:
                msg = await conn.outbox.get()
                if msg is None:
                    break
                yield msg
        finally:
            reader.cancel()
            self.cp.disconnected(conn, conn.lost_reason or "its stream closed")

    async def _register(self, reg: workers_pb2.Register, peer: str) -> WorkerConn:
        # async only so that answer() can map its ControlError like any other call's
        return self.cp.register(reg, peer)

    async def _read(self, conn: WorkerConn, requests: AsyncIterator[workers_pb2.AgentMessage]) -> None:
        try:
            async for msg in requests:
                kind = msg.WhichOneof("msg")
                try:
                    if kind == "heartbeat":
                        self.cp.heartbeat(conn, msg.heartbeat)
                    elif kind == "update":
                        self.cp.update(conn, msg.update)
                    elif kind == "updates":
                        for upd in msg.updates.updates:
                            self.cp.update(conn, upd)
                    else:
                        log.warning("worker %s sent %s after registering; ignored", conn.worker_id, kind)
                except Exception:
                    # One bad message must not take the worker (or the server) down.
                    log.exception("message from worker %s could not be applied", conn.worker_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.cp.disconnected(conn, f"its stream failed: {exc}")
            return
        # The end of a stream looks the same whether the agent left or died; disconnected()
        # tells them apart by whether it announced a drain.
        self.cp.disconnected(conn, "its stream closed")


class AdminService(admin_pb2_grpc.AdminServicer):
    # Set by the server when it runs with --autoscale.
    autoscaler: Autoscaler | None = None

    def __init__(self, cp: ControlPlane) -> None:
        self.cp = cp

    async def GetClusterStats(
        self,
        request: admin_pb2.GetClusterStatsRequest,
        context: ServicerContext[admin_pb2.GetClusterStatsRequest, admin_pb2.ClusterStats],
    ) -> admin_pb2.ClusterStats:
        return self.cp.views.cluster_stats()

    async def ListWorkers(
        self,
        request: admin_pb2.ListWorkersRequest,
        context: ServicerContext[admin_pb2.ListWorkersRequest, admin_pb2.ListWorkersResponse],
    ) -> admin_pb2.ListWorkersResponse:
        return admin_pb2.ListWorkersResponse(workers=self.cp.views.worker_infos())

    async def DrainWorker(
        self,
        request: admin_pb2.DrainWorkerRequest,
        context: ServicerContext[admin_pb2.DrainWorkerRequest, admin_pb2.DrainWorkerResponse],
    ) -> admin_pb2.DrainWorkerResponse:
        await answer(context, self._drain(request.worker_id))
        return admin_pb2.DrainWorkerResponse()

    async def _drain(self, worker_id: str) -> None:
        self.cp.drain(worker_id)

    async def UndrainWorker(
        self,
        request: admin_pb2.UndrainWorkerRequest,
        context: ServicerContext[admin_pb2.UndrainWorkerRequest, admin_pb2.UndrainWorkerResponse],
    ) -> admin_pb2.UndrainWorkerResponse:
        await answer(context, self._undrain(request.worker_id))
        return admin_pb2.UndrainWorkerResponse()

    async def _undrain(self, worker_id: str) -> None:
        self.cp.undrain(worker_id)

    async def GetCosts(
        self,
        request: admin_pb2.GetCostsRequest,
        context: ServicerContext[admin_pb2.GetCostsRequest, admin_pb2.CostReport],
    ) -> admin_pb2.CostReport:
        if self.autoscaler is None:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                "costs are tracked by the autoscaler, which is off: start gpucp serve with --autoscale CONFIG",
            )
        return self.autoscaler.cost_report()

    async def ListScalingEvents(
        self,
        request: admin_pb2.ListScalingEventsRequest,
        context: ServicerContext[admin_pb2.ListScalingEventsRequest, admin_pb2.ListScalingEventsResponse],
    ) -> admin_pb2.ListScalingEventsResponse:
        if self.autoscaler is None:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                "the autoscaler is off: start gpucp serve with --autoscale CONFIG",
            )
        events = self.autoscaler.scaling_events(request.limit, request.pool)
        return admin_pb2.ListScalingEventsResponse(events=events)
