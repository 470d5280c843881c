"""The gRPC services: protobuf in, ControlPlane calls, protobuf out. No decisions live here."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable
from typing import TYPE_CHECKING, TypeVar

import grpc
from grpc.aio import ServicerContext

from controlplane.auth import (
    ANONYMOUS,
    Authority,
    Denied,
    Permission,
    Principal,
    Refusal,
    authorize,
    listed_tenants,
    local_peer,
    printable,
)
from controlplane.control import ControlPlane
from controlplane.errors import ControlError, Unavailable
from controlplane.fleet import WorkerConn
from controlplane.rates import status_details
from controlplane.record import TaskRecord
from controlplane.session import SessionStream
from gpucp import hops
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
audit = logging.getLogger("gpucp.audit")

T = TypeVar("T")
Request = TypeVar("Request")
Response = TypeVar("Response")


async def answer(context: ServicerContext[Request, Response], call: Awaitable[T]) -> T:
    """Await `call`, turning a ControlError into the gRPC status it stands for."""
    try:
        return await call
    except ControlError as exc:
        await context.abort(exc.code, str(exc), status_details(exc))  # raises: abort() never returns


async def caller(
    authority: Authority,
    context: ServicerContext[Request, Response],
    permission: Permission,
    *,
    connect: bool = False,
) -> Principal:
    """Who makes this call, if they may do `permission`; else abort UNAUTHENTICATED or
    PERMISSION_DENIED, with an audit line naming them."""
    principal = None
    names = list(context.auth_context().get("x509_common_name", ())) if authority.by_cn else []
    try:
        principal = authority.from_metadata(
            context.invocation_metadata(),
            connect=connect,
            cert_cn=names[0].decode(errors="replace") if names else None,
            remote=not local_peer(context.peer()),
        )
        authorize(principal, permission)
    except Denied as exc:
        authority.refuse(exc, permission.value, principal, context.peer())
        await context.abort(exc.code, str(exc))
    return principal


class SchedulerService(scheduler_pb2_grpc.SchedulerServicer):
    def __init__(self, cp: ControlPlane, authority: Authority) -> None:
        self.cp = cp
        self.authority = authority

    async def _visible(
        self, context: ServicerContext[Request, Response], principal: Principal, task_id: str
    ) -> TaskRecord:
        """The task, or NOT_FOUND in the same words for another tenant's as for one not here."""
        rec = await answer(context, self.cp.get(task_id))
        if not principal.sees(rec.tenant):
            await context.abort(grpc.StatusCode.NOT_FOUND, str(self.cp.not_found(task_id)))
        return rec

    async def _own(
        self, context: ServicerContext[Request, Response], principal: Principal, specs: list[common_pb2.TaskSpec]
    ) -> None:
        """Put each spec in the caller's tenant (its first when the spec names none); abort
        PERMISSION_DENIED for a tenant it does not hold."""
        if principal is ANONYMOUS:
            return
        for spec in specs:
            try:
                spec.tenant = principal.tenant_for(spec.tenant)
            except Denied as exc:
                self.authority.refuse(exc, Permission.SUBMIT.value, principal, context.peer())
                await context.abort(exc.code, str(exc))

    async def SubmitTask(
        self,
        request: scheduler_pb2.SubmitTaskRequest,
        context: ServicerContext[scheduler_pb2.SubmitTaskRequest, scheduler_pb2.SubmitTaskResponse],
    ) -> scheduler_pb2.SubmitTaskResponse:
        principal = await caller(self.authority, context, Permission.SUBMIT)
        await self._own(context, principal, [request.spec])
        [(task_id, duplicate)] = await answer(context, self.cp.submit([request.spec]))
        return scheduler_pb2.SubmitTaskResponse(task_id=task_id, duplicate=duplicate)

    async def SubmitTasks(
        self,
        request: scheduler_pb2.SubmitTasksRequest,
        context: ServicerContext[scheduler_pb2.SubmitTasksRequest, scheduler_pb2.SubmitTasksResponse],
    ) -> scheduler_pb2.SubmitTasksResponse:
        principal = await caller(self.authority, context, Permission.SUBMIT)
        specs = list(request.specs)
        await self._own(context, principal, specs)
        results = await answer(context, self.cp.submit(specs))
        return scheduler_pb2.SubmitTasksResponse(task_ids=[task_id for task_id, _ in results])

    async def GetTask(
        self,
        request: scheduler_pb2.GetTaskRequest,
        context: ServicerContext[scheduler_pb2.GetTaskRequest, common_pb2.Task],
    ) -> common_pb2.Task:
        principal = await caller(self.authority, context, Permission.READ)
        [task] = await answer(context, self.cp.describe([await self._visible(context, principal, request.task_id)]))
        return task

    async def WaitTask(
        self,
        request: scheduler_pb2.WaitTaskRequest,
        context: ServicerContext[scheduler_pb2.WaitTaskRequest, common_pb2.Task],
    ) -> common_pb2.Task:
        principal = await caller(self.authority, context, Permission.READ)
        await self._visible(context, principal, request.task_id)
        rec = await answer(context, self.cp.wait(request.task_id, request.timeout_ms))
        [task] = await answer(context, self.cp.describe([rec]))
        return task

    async def RunTask(
        self,
        request: scheduler_pb2.RunTaskRequest,
        context: ServicerContext[scheduler_pb2.RunTaskRequest, common_pb2.Task],
    ) -> common_pb2.Task:
        principal = await caller(self.authority, context, Permission.SUBMIT)
        await self._own(context, principal, [request.spec])
        rec = await answer(context, self.cp.run(request.spec, request.timeout_ms))
        [task] = await answer(context, self.cp.describe([rec]))
        return task

    async def CancelTask(
        self,
        request: scheduler_pb2.CancelTaskRequest,
        context: ServicerContext[scheduler_pb2.CancelTaskRequest, scheduler_pb2.CancelTaskResponse],
    ) -> scheduler_pb2.CancelTaskResponse:
        principal = await caller(self.authority, context, Permission.SUBMIT)
        await self._visible(context, principal, request.task_id)
        state = await answer(context, self.cp.cancel(request.task_id))
        if principal.all_tenants and principal is not ANONYMOUS:
            audit.info("%s (%s) cancelled task %s", principal.name, principal.role, printable(request.task_id, 64))
        return scheduler_pb2.CancelTaskResponse(state=state)

    async def ListTasks(
        self,
        request: scheduler_pb2.ListTasksRequest,
        context: ServicerContext[scheduler_pb2.ListTasksRequest, scheduler_pb2.ListTasksResponse],
    ) -> scheduler_pb2.ListTasksResponse:
        principal = await caller(self.authority, context, Permission.READ)
        tenants = await self._tenants(context, principal, request.tenant)
        recs, token = await answer(
            context,
            self.cp.list(request.state, tenants, request.kind, request.limit, request.page_token),
        )
        full = request.view == scheduler_pb2.TASK_VIEW_FULL
        tasks = await answer(context, self.cp.describe(recs, full=full))
        return scheduler_pb2.ListTasksResponse(tasks=tasks, next_page_token=token)

    async def GetTaskEvents(
        self,
        request: scheduler_pb2.GetTaskEventsRequest,
        context: ServicerContext[scheduler_pb2.GetTaskEventsRequest, scheduler_pb2.GetTaskEventsResponse],
    ) -> scheduler_pb2.GetTaskEventsResponse:
        principal = await caller(self.authority, context, Permission.READ)
        await self._visible(context, principal, request.task_id)
        events, omitted = await answer(context, self.cp.events(request.task_id))
        return scheduler_pb2.GetTaskEventsResponse(events=events, omitted=omitted)

    async def WatchTasks(
        self,
        request: scheduler_pb2.WatchTasksRequest,
        context: ServicerContext[scheduler_pb2.WatchTasksRequest, scheduler_pb2.TaskEvent],
    ) -> AsyncIterator[bytes]:
        """TaskEvents, serialised once for every watch that wants them (add_scheduler writes them as they are)."""
        principal = await caller(self.authority, context, Permission.READ)
        allowed = None if principal.all_tenants else frozenset(await self._tenants(context, principal, request.tenant))
        try:
            watcher = self.cp.watch(list(request.task_ids), request.tenant, allowed, principal.name)
        except ControlError as exc:
            await context.abort(exc.code, str(exc))
        try:
            # Headers go out once the watcher is recording: a client that waits for them
            # misses no event of what it submits next.
            await context.send_initial_metadata(())
            while batch := await watcher.take():
                for item in batch:
                    yield item.wire()
        except ControlError as exc:
            await context.abort(exc.code, str(exc))
        finally:
            self.cp.unwatch(watcher)

    async def Session(
        self,
        request_iterator: AsyncIterator[scheduler_pb2.SessionRequest],
        context: ServicerContext[scheduler_pb2.SessionRequest, scheduler_pb2.SessionResponse],
    ) -> AsyncIterator[scheduler_pb2.SessionResponse]:
        # Following tasks is reading them; each submit on the stream is checked for SUBMIT.
        principal = await caller(self.authority, context, Permission.READ)
        try:
            peer = context.peer()

            def refused(exc: Denied) -> None:
                self.authority.refuse(exc, "session submit", principal, peer)

            async for response in SessionStream(self.cp, principal, refused).run(request_iterator):
                yield response
        except ControlError as exc:
            await context.abort(exc.code, str(exc))

    async def _tenants(
        self, context: ServicerContext[Request, Response], principal: Principal, asked: str
    ) -> tuple[str, ...]:
        """The tenants a list or watch covers (auth.listed_tenants); abort for a tenant the caller
        does not hold."""
        try:
            return listed_tenants(principal, asked)
        except Denied as exc:
            self.authority.refuse(exc, Permission.READ.value, principal, context.peer())
            await context.abort(exc.code, str(exc))


class _WatchWritesBytes:
    """The server as add_SchedulerServicer_to_server sees it: it takes the generated handlers and
    adds them with WatchTasks' serializer taken out, since SchedulerService.WatchTasks yields bytes."""

    def __init__(self, server: grpc.aio.Server, service: SchedulerService) -> None:
        self._server = server
        self._service = service

    def add_generic_rpc_handlers(self, handlers: object) -> None:
        """Nothing: the same handlers come next, by name, and are added there."""

    def add_registered_method_handlers(
        self, name: str, handlers: dict[str, grpc.RpcMethodHandler[object, object]]
    ) -> None:
        handlers = dict(handlers)
        handlers["WatchTasks"] = grpc.unary_stream_rpc_method_handler(
            self._service.WatchTasks, request_deserializer=scheduler_pb2.WatchTasksRequest.FromString
        )
        self._server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, handlers),))
        self._server.add_registered_method_handlers(name, handlers)


def add_scheduler(service: SchedulerService, server: grpc.aio.Server) -> None:
    """Serve Scheduler on `server`."""
    scheduler_pb2_grpc.add_SchedulerServicer_to_server(service, _WatchWritesBytes(server, service))


class WorkersService(workers_pb2_grpc.WorkersServicer):
    def __init__(self, cp: ControlPlane, authority: Authority) -> None:
        self.cp = cp
        self.authority = authority
        # Connect streams open but not yet registered (capped: config.max_unregistered).
        self._unregistered = 0

    async def Connect(
        self,
        request_iterator: AsyncIterator[workers_pb2.AgentMessage],
        context: ServicerContext[workers_pb2.AgentMessage, workers_pb2.ControlMessage],
    ) -> AsyncIterator[workers_pb2.ControlMessage]:
        principal = await caller(self.authority, context, Permission.CONNECT, connect=True)
        config = self.cp.config
        if self._unregistered >= config.max_unregistered:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{self._unregistered} agent streams are waiting to register, the most this control plane "
                "takes at once: retry in a few seconds",
            )
        requests = aiter(request_iterator)
        self._unregistered += 1
        try:
            first = await asyncio.wait_for(anext(requests), config.register_timeout_s)
        except (StopAsyncIteration, TimeoutError):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"send register as the first message within {config.register_timeout_s:g} s",
            )
        finally:
            self._unregistered -= 1
        if first.WhichOneof("msg") != "register":
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "the first message on Connect must be register, "
                f"not {first.WhichOneof('msg') or 'an empty message'}",
            )
        conn = await answer(context, self._register(first.register, context.peer(), principal))
        reader = asyncio.create_task(self._read(conn, requests))
        try:
            while True:
                msg = await conn.outbox.get()
                if msg is None:
                    break
                hops.mark("s.write.assign")
                yield msg
                hops.mark("s.written.assign")
        finally:
            reader.cancel()
            self.cp.disconnected(conn, conn.lost_reason or "its stream closed")

    async def _register(self, reg: workers_pb2.Register, peer: str, principal: Principal) -> WorkerConn:
        # async only so that answer() can map its ControlError like any other call's
        if principal.role == "agent" and not principal.workers:
            # A pod's credential before its pod id is known (autoscaler.credentials): soon, not never.
            raise Unavailable(
                f"{principal.name}'s credential is not bound to a worker id yet (its pod is being created "
                "or adopted): retry in a few seconds"
            )
        if not principal.may_be_worker(reg.worker_id):
            denied = Denied(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{principal.name} may not register as worker {printable(reg.worker_id, 64)}: "
                f"its worker ids are {', '.join(principal.workers)}",
                Refusal.WORKER,
            )
            self.authority.refuse(denied, f"register as worker {printable(reg.worker_id, 64)}", principal, peer)
            raise denied
        if principal.role != "agent" and principal is not ANONYMOUS:
            audit.info("%s (%s) connected as worker %s", principal.name, principal.role, printable(reg.worker_id, 64))
        return self.cp.register(reg, peer, principal.name)

    async def _read(self, conn: WorkerConn, requests: AsyncIterator[workers_pb2.AgentMessage]) -> None:
        try:
            async for msg in requests:
                kind = msg.WhichOneof("msg")
                if kind != "heartbeat":
                    hops.mark("s.read.update")
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

    def __init__(self, cp: ControlPlane, authority: Authority) -> None:
        self.cp = cp
        self.authority = authority

    async def GetClusterStats(
        self,
        request: admin_pb2.GetClusterStatsRequest,
        context: ServicerContext[admin_pb2.GetClusterStatsRequest, admin_pb2.ClusterStats],
    ) -> admin_pb2.ClusterStats:
        await caller(self.authority, context, Permission.ADMIN_READ)
        return self.cp.views.cluster_stats()

    async def ListWorkers(
        self,
        request: admin_pb2.ListWorkersRequest,
        context: ServicerContext[admin_pb2.ListWorkersRequest, admin_pb2.ListWorkersResponse],
    ) -> admin_pb2.ListWorkersResponse:
        await caller(self.authority, context, Permission.ADMIN_READ)
        return admin_pb2.ListWorkersResponse(workers=self.cp.views.worker_infos())

    async def DrainWorker(
        self,
        request: admin_pb2.DrainWorkerRequest,
        context: ServicerContext[admin_pb2.DrainWorkerRequest, admin_pb2.DrainWorkerResponse],
    ) -> admin_pb2.DrainWorkerResponse:
        principal = await caller(self.authority, context, Permission.DRAIN)
        await answer(context, self._drain(request.worker_id))
        audit.info("%s (%s) drained worker %s", principal.name, principal.role, printable(request.worker_id, 64))
        return admin_pb2.DrainWorkerResponse()

    async def _drain(self, worker_id: str) -> None:
        self.cp.drain(worker_id)

    async def UndrainWorker(
        self,
        request: admin_pb2.UndrainWorkerRequest,
        context: ServicerContext[admin_pb2.UndrainWorkerRequest, admin_pb2.UndrainWorkerResponse],
    ) -> admin_pb2.UndrainWorkerResponse:
        principal = await caller(self.authority, context, Permission.DRAIN)
        await answer(context, self._undrain(request.worker_id))
        audit.info("%s (%s) undrained worker %s", principal.name, principal.role, printable(request.worker_id, 64))
        return admin_pb2.UndrainWorkerResponse()

    async def _undrain(self, worker_id: str) -> None:
        self.cp.undrain(worker_id)

    async def GetCosts(
        self,
        request: admin_pb2.GetCostsRequest,
        context: ServicerContext[admin_pb2.GetCostsRequest, admin_pb2.CostReport],
    ) -> admin_pb2.CostReport:
        await caller(self.authority, context, Permission.ADMIN_READ)
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
        await caller(self.authority, context, Permission.ADMIN_READ)
        if self.autoscaler is None:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                "the autoscaler is off: start gpucp serve with --autoscale CONFIG",
            )
        events = self.autoscaler.scaling_events(request.limit, request.pool)
        return admin_pb2.ListScalingEventsResponse(events=events)
