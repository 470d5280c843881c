"""What GPU time costs: pod bills (uptime x price) and per-tenant attribution of task attempts.

Pods are billed from the moment their create call returns until their terminate call returns
(RunPod bills a pod from deployment to termination, cold start and idle time included). Tenants
are charged for the attempts of their tasks on priced workers: the attempt's duration times the
worker's price per second times the share of the worker it held (its GPUs out of the worker's
GPUs; one slot out of the worker's slots for a task that asked for no GPU). Failed and lost
attempts are charged too: the GPU time was spent. The difference between the pods' total and
the tenants' total is idle and cold-start time.

Attribution follows the control plane's task events (ControlView.task_events): an attempt opens
when its task is assigned and closes at the task's next state change. A stream that falls behind
is replaced, and attempts whose closing event was missed are closed by sweep() from the task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

from controlplane.autoscaler.view import ControlView, EventsMissed, WorkerPrice
from gpucp.v1 import admin_pb2, common_pb2, scheduler_pb2

log = logging.getLogger("gpucp.costs")

ASSIGNED = common_pb2.TASK_STATE_ASSIGNED
RUNNING = common_pb2.TASK_STATE_RUNNING
# Worker prices remembered after the worker left, so late closing events can still be charged.
MAX_REMEMBERED_WORKERS = 100_000


@dataclass
class PodBill:
    """One pod's bill: price and the wall-clock interval it is billed for."""

    pod_id: str
    pool: str
    gpu_type_id: str
    gpu_count: int
    cost_per_hour: float
    created_at: float  # wall-clock seconds
    terminated_at: float = 0.0
    worker_id: str = ""
    state: str = "starting"

    def uptime_s(self, now: float) -> float:
        end = self.terminated_at or now
        return max(0.0, end - self.created_at)

    def cost(self, now: float) -> float:
        return self.uptime_s(now) * self.cost_per_hour / 3600.0

    def to_proto(self, now: float) -> admin_pb2.PodCost:
        return admin_pb2.PodCost(
            pod_id=self.pod_id,
            pool=self.pool,
            worker_id=self.worker_id,
            gpu_type_id=self.gpu_type_id,
            gpu_count=self.gpu_count,
            cost_per_hour=self.cost_per_hour,
            uptime_s=self.uptime_s(now),
            cost=self.cost(now),
            state=self.state,
            created_at_ms=int(self.created_at * 1000),
            terminated_at_ms=int(self.terminated_at * 1000),
        )


@dataclass
class TenantUsage:
    gpu_seconds: float = 0.0
    cost: float = 0.0
    attempts: int = 0


@dataclass
class _OpenAttempt:
    attempt: int
    tenant: str
    started_ms: int
    price: WorkerPrice
    gpus: float


class CostTracker:
    """Pod bills and per-tenant charges; run() follows the control plane's task events."""

    def __init__(self, view: ControlView) -> None:
        self.view = view
        self.pods: dict[str, PodBill] = {}
        self.tenants: dict[str, TenantUsage] = {}
        self._open: dict[str, _OpenAttempt] = {}
        self._prices: dict[str, WorkerPrice] = {}
        self.missed_events = 0

    # -- tenants ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Follow task events until cancelled; a stream that fell behind is replaced."""
        while True:
            try:
                async for event in self.view.task_events():
                    self.on_event(event)
                return
            except EventsMissed:
                self.missed_events += 1
                log.warning("cost attribution fell behind the task events; sweeping from task records")
                self.sweep()

    def price_of(self, worker_id: str) -> WorkerPrice | None:
        price = self.view.worker_price(worker_id)
        if price is not None:
            if len(self._prices) >= MAX_REMEMBERED_WORKERS and worker_id not in self._prices:
                self._prices.pop(next(iter(self._prices)))
            self._prices[worker_id] = price
            return price
        return self._prices.get(worker_id)

    def on_event(self, event: scheduler_pb2.TaskEvent) -> None:
        opened = self._open.get(event.task_id)
        if opened is not None and (event.state not in (ASSIGNED, RUNNING) or event.attempt != opened.attempt):
            self._close(event.task_id, event.at_ms)
            opened = None
        if opened is None and event.state in (ASSIGNED, RUNNING):
            self._start(event.task_id, event.attempt, event.worker_id, event.at_ms)

    def _start(self, task_id: str, attempt: int, worker_id: str, at_ms: int) -> None:
        price = self.price_of(worker_id)
        rec = self.view.task(task_id)
        if price is None or price.cost_per_hour <= 0 or rec is None:
            return
        gpus = rec.gpus if rec.attempt == attempt else 0
        started = rec.started_at_ms if rec.attempt == attempt and rec.started_at_ms else at_ms
        self._open[task_id] = _OpenAttempt(attempt, rec.tenant, started, price, gpus)

    def _close(self, task_id: str, at_ms: int) -> None:
        opened = self._open.pop(task_id)
        seconds = max(0, at_ms - opened.started_ms) / 1000
        price = opened.price
        if opened.gpus and price.gpus:
            share, gpu_seconds = min(1.0, opened.gpus / price.gpus), seconds * opened.gpus
        else:
            share = 1 / price.slots
            gpu_seconds = seconds * price.gpus / price.slots
        usage = self.tenants.setdefault(opened.tenant, TenantUsage())
        usage.gpu_seconds += gpu_seconds
        usage.cost += seconds * price.cost_per_hour / 3600 * share
        usage.attempts += 1

    def sweep(self) -> None:
        """Close attempts whose closing event was missed, from the task records."""
        now_ms = int(time.time() * 1000)
        for task_id, opened in list(self._open.items()):
            rec = self.view.task(task_id)
            if rec is None:
                self._close(task_id, now_ms)
            elif rec.attempt != opened.attempt or rec.state not in (ASSIGNED, RUNNING):
                self._close(task_id, rec.finished_at_ms if rec.terminal and rec.finished_at_ms else now_ms)

    # -- the report -------------------------------------------------------------------------

    def report(self, pools: list[admin_pb2.PoolCost] | None = None) -> admin_pb2.CostReport:
        now = time.time()
        pods = [bill.to_proto(now) for bill in self.pods.values()]
        tenants = [
            admin_pb2.TenantCost(tenant=t, gpu_seconds=u.gpu_seconds, cost=u.cost, attempts=u.attempts)
            for t, u in sorted(self.tenants.items())
        ]
        return admin_pb2.CostReport(
            pods=pods,
            pools=pools or [],
            tenants=tenants,
            total_cost=sum(p.cost for p in pods),
            total_cost_per_hour=sum(b.cost_per_hour for b in self.pods.values() if not b.terminated_at),
            attributed_cost=sum(t.cost for t in tenants),
            at_ms=int(now * 1000),
        )


async def cancel_quietly(task: asyncio.Task[None] | None) -> None:
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
