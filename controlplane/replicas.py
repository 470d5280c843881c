"""Replicas on one PostgreSQL database: one leads, the others wait as hot standbys.

A replica starts as a standby: it listens, its health says NOT_SERVING and `Gate` refuses every
gpucp call UNAVAILABLE, naming the leader, so clients and agents (which follow health) go to the
leader. It asks the database every POLL_S whether it may lead (`PostgresStore.lead`: the lock is
free, or the leader's lease expired); once it does, it renews its lease, loads the state as a
restart does and serves. A leader whose lease lapses (it cannot reach the database) stops placing
and serving at once; it serves again if it renews in time, and stops itself if it has not renewed
for a whole lease longer, by which time a standby has taken over.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc

if TYPE_CHECKING:
    from controlplane.pgstore import PostgresStore

log = logging.getLogger("gpucp.controlplane")

# Seconds between a standby's looks at the leader row, and a leader's checks of its lease.
POLL_S = 0.2


class Gate(grpc.aio.ServerInterceptor):
    """Refuses every gpucp call while `refusal` says why; health and reflection always pass."""

    def __init__(self) -> None:
        self.refusal = "this control plane is starting"
        # Streaming both ways fits a call of any kind: it aborts before reading a request.
        self._refuse: grpc.RpcMethodHandler[Any, Any] = grpc.stream_stream_rpc_method_handler(self._abort)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        method: str = handler_call_details.method
        if self.refusal and method.startswith("/gpucp."):
            return self._refuse
        return await continuation(handler_call_details)

    async def _abort(self, requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await context.abort(grpc.StatusCode.UNAVAILABLE, self.refusal)


class Replica:
    """This control plane's part in leading `store`'s database, reached by others at `address`."""

    def __init__(self, store: PostgresStore, address: str, gate: Gate) -> None:
        self.store = store
        self.address = address
        self.gate = gate
        self.leader = ""  # who leads, while this one does not ("" until known)
        self.settled = asyncio.Event()  # set once this replica serves, or knows it stands by

    async def run(self, begin: Callable[[], Awaitable[None]], serving: Callable[[bool], Awaitable[None]]) -> None:
        """Wait to lead, then `begin` (load and serve); call `serving` when the lease lapses or
        is renewed again. Runs until cancelled, or until this control plane is deposed."""
        await self._take_over()
        self.gate.refusal = f"this control plane at {self.address} is taking over: try again in a moment"
        self.store.start_renewing()
        await begin()
        self.gate.refusal = ""
        self.settled.set()
        leading = True
        while True:
            await asyncio.sleep(POLL_S)
            now = self.store.leading()
            if now != leading:
                leading = now
                if now:
                    log.warning("renewed the lease: placing and serving again")
                    self.gate.refusal = ""
                else:
                    log.error("the lease on %s ran out: not placing or serving until it is renewed", self.store.where)
                    self.gate.refusal = (
                        f"this control plane at {self.address} cannot reach its database; another replica may "
                        "lead: try the others"
                    )
                await serving(now)
            overdue = self.store.lease_overdue_s()
            if not now and overdue > self.store.lease_s:
                self.store.depose(f"its lease ran out {overdue:.1f} s ago, not renewed; another replica may lead")

    async def _take_over(self) -> None:
        while True:
            try:
                who = await asyncio.to_thread(self.store.lead, self.address)
            except (*self.store.errors, OSError) as exc:
                who = f"not known ({self.store.where} cannot be read: {exc})"
            if not who:
                log.info("leading %s as %s (epoch %d)", self.store.where, self.address, self.store.epoch)
                return
            if who != self.leader:
                log.info("standby: the leader of %s is %s", self.store.where, who)
                self.leader = who
                self.gate.refusal = f"this control plane at {self.address} is a standby; the leader is {who}"
                self.settled.set()
            await asyncio.sleep(POLL_S)
