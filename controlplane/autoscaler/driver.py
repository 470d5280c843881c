"""The autoscaler's I/O: every `interval_s` it observes the control plane, asks plan.py what to
do, and does it (RunPod calls, drains, the decision log, the bills).

Every decision goes to a bounded in-memory log (ListScalingEvents) and to the server log.
Pods are named `gpucp-<pool>-<hex>`; on start the autoscaler adopts running pods of that name,
so a control-plane restart does not leak them. Stopping the control plane leaves pods running.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import secrets
import time
from collections.abc import Coroutine
from typing import Any

from controlplane.autoscaler import plan as planning
from controlplane.autoscaler.config import AutoscaleConfig
from controlplane.autoscaler.costs import CostTracker, PodBill, cancel_quietly
from controlplane.autoscaler.credentials import PodCredentials
from controlplane.autoscaler.plan import (
    Action,
    Adopt,
    Create,
    Drain,
    Observation,
    PendingShape,
    Record,
    ScalerState,
    Terminate,
)
from controlplane.autoscaler.runpod import GpuType, RunPodError, RunPodProvider
from controlplane.autoscaler.shapes import PoolProbe
from controlplane.autoscaler.view import ControlView, WorkerSnapshot
from controlplane.core import ShapeKey, shape_key
from gpucp.auth import AGENT_TOKEN_ENV, TOKEN_ENV
from gpucp.client import SERVER_ENV
from gpucp.pods import POD_COST_ENV, POD_POOL_ENV
from gpucp.v1 import admin_pb2, common_pb2

log = logging.getLogger("gpucp.autoscaler")

__all__ = ["Autoscaler"]


class Autoscaler:
    """Scales RunPod pools from the queue and keeps their bills. start() runs it; stop() ends it."""

    def __init__(
        self,
        view: ControlView,
        config: AutoscaleConfig,
        *,
        server_address: str,
        agent_token: str = "",
        credentials: PodCredentials | None = None,
    ) -> None:
        self.view = view
        self.config = config
        self.server_address = config.server_address or server_address
        # With principals (--auth), each pod gets a token of its own, bound to its worker id;
        # without, the token the control plane asks agents for (see server.start) goes to every pod.
        self.credentials = credentials
        self.agent_token = agent_token
        self.costs = CostTracker(view)
        self.events: collections.deque[admin_pb2.ScalingEvent] = collections.deque(maxlen=config.max_events)
        self.state = ScalerState({p.name: planning.PoolState(p) for p in config.pools})
        self.providers = {p.name: self._provider(p.name) for p in config.pools}
        self.gpus: dict[str, GpuType] = {}  # per pool, once looked up
        self._probes: dict[str, PoolProbe] = {}
        self._lookups: set[str] = set()  # pools whose GPU type lookup is under way
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._costs_task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _provider(self, pool: str) -> RunPodProvider:
        def on_retry(message: str) -> None:  # called from the SDK call's thread
            if self._loop is not None:
                self._loop.call_soon_threadsafe(self._record, Record(pool, "api_retry", f"pool {pool}: {message}"))

        return RunPodProvider(
            self.config.api_key,
            max_attempts=self.config.api_max_attempts,
            backoff_base_s=self.config.api_backoff_base_s,
            backoff_cap_s=self.config.api_backoff_cap_s,
            on_retry=on_retry,
        )

    # -- life cycle -------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        host = self.server_address.rpartition(":")[0]
        if host in ("127.0.0.1", "localhost", "[::1]", "0.0.0.0", "[::]", ""):
            log.warning(
                "pods will dial %s, which a RunPod pod cannot reach; set server_address in the "
                "autoscaler config to this control plane's public HOST:PORT",
                self.server_address,
            )
        self._costs_task = asyncio.create_task(self.costs.run(), name="gpucp-costs")
        for name in self.state.pools:
            # GPU memory (for matching) and price (for the pods' env), looked up before work arrives.
            self._start_lookup(name)
        self._loop_task = asyncio.create_task(self._run(), name="gpucp-autoscaler")
        log.info(
            "autoscaler: %d pool(s) (%s), every %g s; pods dial %s",
            len(self.config.pools),
            ", ".join(f"{p.name} {p.min}-{p.max}x {p.gpu_count}x {p.gpu_type_id}" for p in self.config.pools),
            self.config.interval_s,
            self.server_address,
        )

    async def stop(self) -> None:
        """Stop deciding. Pods keep running (a restarted control plane adopts them)."""
        await cancel_quietly(self._loop_task)
        await cancel_quietly(self._costs_task)
        for task in list(self._tasks):
            await cancel_quietly(task)

    async def _run(self) -> None:
        await self._adopt()
        while True:
            try:
                self.evaluate()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("autoscaler evaluation failed; it runs again in %g s", self.config.interval_s)
            await asyncio.sleep(self.config.interval_s)

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- the decision log -------------------------------------------------------------------

    def _record(self, record: Record) -> None:
        self.events.append(
            admin_pb2.ScalingEvent(
                at_ms=int(time.time() * 1000),
                pool=record.pool,
                action=record.action,
                from_pods=record.from_pods,
                to_pods=record.to_pods,
                pod_id=record.pod_id,
                message=record.message,
            )
        )
        level = logging.WARNING if record.action.endswith(("failed", "timeout", "retry")) else logging.INFO
        log.log(level, "%s", record.message)

    def scaling_events(self, limit: int = 0, pool: str = "") -> list[admin_pb2.ScalingEvent]:
        events = [e for e in self.events if not pool or e.pool == pool]
        return events[-limit:] if limit else events

    # -- one evaluation ---------------------------------------------------------------------

    def evaluate(self) -> None:
        """One look at the queue and the pods; starts whatever API calls that calls for."""
        seen = self.observe()
        self._apply(planning.plan(self.state, seen, time.monotonic()))
        self._update_bills(seen)
        self.costs.sweep()

    def observe(self) -> Observation:
        """What plan() needs: the connected RunPod workers and the pending shapes each pool could run."""
        workers = {w.pod_id: w for w in self.view.connected_workers() if w.provider == "runpod"}
        shapes: collections.Counter[ShapeKey] = collections.Counter()
        examples: dict[ShapeKey, common_pb2.TaskSpec] = {}
        for spec in self.view.pending_specs():
            key = shape_key(spec)
            shapes[key] += 1
            examples.setdefault(key, spec)
        pending = []
        for key, count in shapes.items():
            pools = tuple(name for name in self.state.pools if self._fits(name, key))
            runtime = {}
            for name in pools:
                worker_id = self._a_worker_of(name, workers)
                learned = self.view.predict_runtime_s(examples[key], worker_id) if worker_id else None
                if learned is not None:
                    runtime[name] = learned
            pending.append(PendingShape(key, count, pools, runtime))
        return Observation(workers, tuple(pending))

    def _a_worker_of(self, pool: str, workers: dict[str, WorkerSnapshot]) -> str:
        """A connected worker of the pool, to ask the core what it learned about the pool's pods."""
        for pod in self.state.pools[pool].pods:
            if pod.state in (planning.STARTING, planning.RUNNING) and pod.pod_id in workers:
                return workers[pod.pod_id].worker_id
        return ""

    def _fits(self, pool: str, key: ShapeKey) -> bool:
        """Could the pool's pods run this shape? Unknown until the pool's GPU memory is known."""
        probe = self._probes.get(pool)
        if probe is None:
            cfg = self.state.pools[pool].config
            memory_gb = cfg.gpu_memory_gb or (self.gpus[pool].memory_gb if pool in self.gpus else 0)
            if not memory_gb:
                self._start_lookup(pool)
                return False
            probe = self._probes[pool] = PoolProbe(cfg, memory_gb)
        return probe.fits(key)

    def _apply(self, step: tuple[ScalerState, list[Action]]) -> None:
        self.state, actions = step
        for action in actions:
            if isinstance(action, Record):
                self._record(action)
            elif isinstance(action, Create):
                self._spawn(self._create(action), f"gpucp-create-{action.pool}")
            elif isinstance(action, Drain):
                self.view.drain(action.worker_id)  # False: gone already, so nothing runs there
            elif isinstance(action, Terminate):
                self._spawn(self._terminate(action), f"gpucp-terminate-{action.pod_id}")
            elif isinstance(action, Adopt):
                self._adopt_one(action)

    def _update_bills(self, seen: Observation) -> None:
        """Bills follow their pods' states and workers; a price the agent registered fills a gap."""
        for pool in self.state.pools.values():
            for pod in pool.pods:
                bill = self.costs.pods.get(pod.pod_id) if pod.pod_id else None
                if bill is None:
                    continue
                bill.state = pod.state
                bill.worker_id = pod.worker_id or bill.worker_id
                worker = seen.workers.get(pod.pod_id)
                if not bill.cost_per_hour and worker is not None:
                    bill.cost_per_hour = worker.cost_per_hour

    # -- RunPod calls -----------------------------------------------------------------------

    def _start_lookup(self, pool: str) -> None:
        if pool not in self._lookups and pool not in self.gpus:
            self._lookups.add(pool)
            self._spawn(self._lookup_gpu(pool), f"gpucp-lookup-{pool}")

    async def _lookup_gpu(self, pool: str) -> None:
        cfg = self.state.pools[pool].config
        try:
            gpu = await self.providers[pool].gpu_type(cfg.gpu_type_id, cfg.gpu_count)
        except RunPodError as exc:
            self._record(Record(pool, "lookup_failed", f"pool {pool}: cannot look up its GPU type: {exc}"))
            await asyncio.sleep(max(5.0, self.config.interval_s))
            self._lookups.discard(pool)  # the next evaluation that needs it asks again
            return
        self.gpus[pool] = gpu
        self._lookups.discard(pool)
        log.info("pool %s: %s, %d GB, $%.2f/GPU-hour", pool, gpu.display_name, gpu.memory_gb,
                 gpu.price(cfg.cloud_type))

    def _price_per_gpu(self, pool: str) -> float:
        gpu = self.gpus.get(pool)
        return gpu.price(self.state.pools[pool].config.cloud_type) if gpu is not None else 0.0

    async def _create(self, action: Create) -> None:
        cfg = self.state.pools[action.pool].config
        name = f"gpucp-{cfg.name}-{secrets.token_hex(4)}"
        env = {**cfg.env, SERVER_ENV: self.server_address, POD_POOL_ENV: cfg.name}
        if self.credentials is not None:
            env[TOKEN_ENV] = self.credentials.token(name)
        elif self.agent_token:
            env[AGENT_TOKEN_ENV] = self.agent_token
        price = self._price_per_gpu(cfg.name) * cfg.gpu_count
        if price:
            env[POD_COST_ENV] = f"{price:.4f}"
        provider = self.providers[cfg.name]
        try:
            pod = await provider.create_pod(
                name,
                image=cfg.image,
                gpu_type_id=cfg.gpu_type_id,
                gpu_count=cfg.gpu_count,
                cloud_type=cfg.cloud_type,
                env=env,
                docker_args=cfg.docker_args,
                container_disk_gb=cfg.container_disk_gb,
                volume_gb=cfg.volume_gb,
            )
        except RunPodError as exc:
            if self.credentials is not None:
                self.credentials.revoke(name)
            self._apply(planning.create_failed(self.state, cfg.name, action.ref, str(exc), time.monotonic()))
            return
        if self.credentials is not None:
            self.credentials.bind(name, pod.id)
        bill = PodBill(pod.id, cfg.name, cfg.gpu_type_id, cfg.gpu_count, price, created_at=time.time())
        self.costs.pods[pod.id] = bill
        self.state = planning.created(self.state, cfg.name, action.ref, pod.id, time.monotonic())
        log.info("pool %s: created pod %s (%s)", cfg.name, pod.id, name)
        try:
            described = await provider.get_pod(pod.id)
        except RunPodError as exc:
            log.warning("pool %s: cannot read pod %s's price yet: %s", cfg.name, pod.id, exc)
            return
        if described is not None and described.cost_per_hr:
            bill.cost_per_hour = described.cost_per_hr

    async def _terminate(self, action: Terminate) -> None:
        try:
            await self.providers[action.pool].terminate_pod(action.pod_id)
        except RunPodError as exc:
            self._apply(planning.terminate_failed(self.state, action.pool, action.ref, str(exc)))
            return
        if self.credentials is not None:
            self.credentials.revoke(pod_id=action.pod_id)
        now = time.time()
        bill = self.costs.pods.get(action.pod_id)
        if bill is not None:
            bill.terminated_at = now
            bill.state = "terminated"
        uptime, cost = (bill.uptime_s(now), bill.cost(now)) if bill is not None else (0.0, 0.0)
        self._apply(planning.terminated(self.state, action.pool, action.ref, uptime, cost))

    async def _adopt(self) -> None:
        """Take over running pods this autoscaler (or an earlier run of it) created."""
        try:
            listed = await next(iter(self.providers.values())).list_pods()
        except RunPodError as exc:
            log.warning("cannot list existing pods to adopt them: %s", exc)
            return
        self._apply((self.state, list(planning.plan_adoption(self.state, listed))))

    def _adopt_one(self, action: Adopt) -> None:
        cfg = self.state.pools[action.pool].config
        pod = action.pod
        if self.credentials is not None:
            self.credentials.bind(pod.name, pod.id)  # the same token its pod was created with
        self.costs.pods[pod.id] = PodBill(
            pod.id, cfg.name, cfg.gpu_type_id, pod.gpu_count or cfg.gpu_count, pod.cost_per_hr, created_at=time.time()
        )
        self._apply(planning.adopted(self.state, action, time.monotonic()))

    # -- reports ----------------------------------------------------------------------------

    def cost_report(self) -> admin_pb2.CostReport:
        now = time.time()
        pools = []
        for pool in self.state.pools.values():
            cfg = pool.config
            bills = [b for b in self.costs.pods.values() if b.pool == cfg.name]
            pools.append(
                admin_pb2.PoolCost(
                    pool=cfg.name,
                    gpu_type_id=cfg.gpu_type_id,
                    min_pods=cfg.min,
                    max_pods=cfg.max,
                    pods=pool.size,
                    pods_starting=pool.count(planning.CREATING, planning.STARTING),
                    pending_demand=pool.demand,
                    cost=sum(b.cost(now) for b in bills),
                    cost_per_hour=sum(b.cost_per_hour for b in bills if not b.terminated_at),
                )
            )
        return self.costs.report(pools)
