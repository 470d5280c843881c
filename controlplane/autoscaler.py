"""The RunPod autoscaler: keeps each pool of pods between its min and max, following the queue.

Every `interval_s` it looks at the pending tasks and the pods:

- Demand. Each pending task goes to the first pool (in config order) whose pods could run it
  and that has room to grow, else to the first that could run it. "Could run" is decided by the
  placement core itself: each pool has a private core with one worker shaped like its pods.
  A task pending at all means no connected worker could take it just now: dispatch is
  event-driven, so anything placeable was placed.
- Scale up when the pool's demand, less what its cold-starting pods will absorb, reaches
  `scale_up_threshold`, and `scale_up_cooldown_s` has passed since the last scale-up. Pods that
  were requested but have not registered yet count: they are capacity on the way.
- Scale down pods idle (no task, no task finished) for `idle_timeout_s`, when the pool has no
  demand and `scale_down_cooldown_s` has passed since the last scaling action. A pod is drained
  first (no new work), then terminated once it runs nothing: a pod with running tasks is never
  terminated.
- Never below `min` (refilled without waiting for a cooldown), never above `max` (pods still
  draining count toward max: they are still billed).
- A pod that does not register within `register_timeout_s` of being created, or whose agent
  stays away that long, is terminated and reported.

Every decision goes to a bounded in-memory log (ListScalingEvents) and to the server log.
Pods are named `gpucp-<pool>-<hex>`; on start the autoscaler adopts running pods of that name,
so a control-plane restart does not leak them. Stopping the control plane leaves pods running.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import math
import os
import secrets
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agents.inventory import COMPUTE_CAPABILITY
from agents.runpod import ENV_COST, ENV_POOL, ENV_SERVER, RunPodError, RunPodProvider
from controlplane._core import Scheduler
from controlplane.control import PENDING, ControlPlane, WorkerConn
from controlplane.costs import CostTracker, PodBill, cancel_quietly
from controlplane.errors import ControlError
from gpucp.auth import AGENT_TOKEN_ENV
from gpucp.v1 import admin_pb2

log = logging.getLogger("gpucp.autoscaler")

CLOUD_TYPES = ("ALL", "SECURE", "COMMUNITY")
ShapeKey = tuple[str, int, int, tuple[str, ...], str, tuple[str, ...], float]


# -- configuration ----------------------------------------------------------------------------


@dataclass(frozen=True)
class PoolConfig:
    """One pool: pods of one GPU type and count, between min and max."""

    name: str
    gpu_type_id: str
    image: str
    gpu_count: int = 1
    min: int = 0
    max: int = 1
    cloud_type: str = "ALL"
    idle_timeout_s: float = 300.0
    scale_up_cooldown_s: float = 60.0
    scale_down_cooldown_s: float = 120.0
    # Pending tasks (beyond what cold-starting pods absorb) that trigger a scale-up.
    scale_up_threshold: int = 1
    # Also scale up when the pool's pending tasks would wait longer than this, at the runtime the
    # core has learned for them on the pool's pods (0 = off). Grows to the size that meets it.
    scale_up_wait_s: float = 0.0
    # Pending tasks one new pod is expected to absorb; 0 = its slots.
    tasks_per_pod: int = 0
    # Slots the pod's agent registers; 0 = gpu_count (the agent's default).
    slots_per_pod: int = 0
    register_timeout_s: float = 600.0
    docker_args: str = ""
    container_disk_gb: int = 20
    volume_gb: int = 0
    env: dict[str, str] = field(default_factory=dict)
    # What the pod's agent will register, for matching tasks to the pool before any pod exists.
    gpu_name: str = ""  # default: the GPU type id (e.g. "NVIDIA A100 80GB PCIe")
    gpu_memory_gb: int = 0  # default: RunPod's memoryInGb for the GPU type
    compute_capability: float = 0.0  # default: from the model in the GPU name
    backend: str = "cuda"
    labels: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ()  # empty: any kind

    @property
    def slots(self) -> int:
        return self.slots_per_pod or max(1, self.gpu_count)

    @property
    def absorb(self) -> int:
        return self.tasks_per_pod or self.slots


@dataclass(frozen=True)
class AutoscaleConfig:
    pools: tuple[PoolConfig, ...]
    interval_s: float = 1.0
    # The address pods dial; default: the address the control plane listens on.
    server_address: str = ""
    agent_token: str = ""
    max_events: int = 1000
    api_max_attempts: int = 4
    api_backoff_base_s: float = 0.5
    api_backoff_cap_s: float = 10.0


_POOL_FIELDS = {f for f in PoolConfig.__dataclass_fields__}
_TOP_FIELDS = {f for f in AutoscaleConfig.__dataclass_fields__} - {"pools"} | {"pool", "api"}


def load_config(path: str | Path) -> AutoscaleConfig:
    """Read an autoscaler config (TOML, or JSON for a .json file); ValueError says what is wrong."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ValueError(f"cannot read the autoscaler config {path}: {exc.strerror}") from None
    try:
        raw = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"{path} is not valid {'JSON' if path.suffix == '.json' else 'TOML'}: {exc}") from None
    return parse_config(raw, str(path))


def parse_config(raw: dict[str, Any], where: str = "the autoscaler config") -> AutoscaleConfig:
    unknown = set(raw) - _TOP_FIELDS
    if unknown:
        raise ValueError(f"{where}: unknown settings {sorted(unknown)}; known: {sorted(_TOP_FIELDS)}")
    pools_raw = raw.get("pool") or []
    if not isinstance(pools_raw, list) or not pools_raw:
        raise ValueError(f"{where}: define at least one [[pool]] with name, gpu_type_id and image")
    pools = []
    for i, p in enumerate(pools_raw):
        pools.append(_parse_pool(p, f"{where}: pool {i + 1}"))
    names = [p.name for p in pools]
    if len(set(names)) != len(names):
        raise ValueError(f"{where}: pool names must be unique, got {names}")
    api = raw.get("api") or {}
    top = {k: v for k, v in raw.items() if k not in ("pool", "api")}
    try:
        config = AutoscaleConfig(
            pools=tuple(pools),
            api_max_attempts=int(api.get("max_attempts", 4)),
            api_backoff_base_s=float(api.get("backoff_base_s", 0.5)),
            api_backoff_cap_s=float(api.get("backoff_cap_s", 10.0)),
            **top,
        )
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: {exc}") from None
    if config.interval_s <= 0:
        raise ValueError(f"{where}: interval_s must be above 0")
    if config.api_max_attempts < 1:
        raise ValueError(f"{where}: api.max_attempts must be at least 1")
    return config


def _parse_pool(p: Any, where: str) -> PoolConfig:
    if not isinstance(p, dict):
        raise ValueError(f"{where} must be a table")
    unknown = set(p) - _POOL_FIELDS
    if unknown:
        raise ValueError(f"{where}: unknown settings {sorted(unknown)}; known: {sorted(_POOL_FIELDS)}")
    missing = [k for k in ("name", "gpu_type_id", "image") if not p.get(k)]
    if missing:
        raise ValueError(f"{where}: {', '.join(missing)} must be set")
    values = dict(p)
    for key in ("labels", "kinds"):
        if key in values:
            values[key] = tuple(str(v) for v in values[key])
    values["env"] = {str(k): str(v) for k, v in (values.get("env") or {}).items()}
    try:
        pool = PoolConfig(**values)
    except TypeError as exc:
        raise ValueError(f"{where}: {exc}") from None
    where = f"pool {pool.name!r}"
    if pool.cloud_type not in CLOUD_TYPES:
        raise ValueError(f"{where}: cloud_type {pool.cloud_type!r} must be one of {', '.join(CLOUD_TYPES)}")
    if pool.gpu_count < 1:
        raise ValueError(f"{where}: gpu_count must be at least 1")
    if not 0 <= pool.min <= pool.max or pool.max < 1:
        raise ValueError(f"{where}: need 0 <= min <= max and max >= 1, got min {pool.min}, max {pool.max}")
    for key in ("idle_timeout_s", "scale_up_cooldown_s", "scale_down_cooldown_s", "register_timeout_s",
                "scale_up_wait_s"):
        if getattr(pool, key) < 0:
            raise ValueError(f"{where}: {key} must be 0 or more")
    if pool.scale_up_threshold < 1:
        raise ValueError(f"{where}: scale_up_threshold must be at least 1")
    return pool


def compute_capability_of(gpu_name: str) -> float:
    """The compute capability of the model named in a GPU name ("NVIDIA A100 80GB" -> 8.0)."""
    squashed = gpu_name.upper().replace(" ", "").replace("-", "")
    matches = [m for m in COMPUTE_CAPABILITY if m.upper() in squashed]
    return COMPUTE_CAPABILITY[max(matches, key=len)] if matches else 0.0


def describe_need(key: ShapeKey) -> str:
    """A shape's requirements in words: "1 GPU with >= 40 GB"."""
    kind, gpus, mem_mb, models, backend, labels, cc = key
    words = f"{gpus} GPU{'s' if gpus != 1 else ''}" if gpus else "no GPU"
    if mem_mb:
        words += f" with >= {mem_mb / 1024:g} GB"
    if models:
        words += f" of model {' or '.join(models)}"
    if cc:
        words += f", compute capability >= {cc:g}"
    if backend:
        words += f", backend {backend}"
    if labels:
        words += f", labels {','.join(labels)}"
    return words


def shape_key(spec: Any) -> ShapeKey:
    req = spec.requirements
    return (
        spec.kind,
        req.gpus,
        req.min_gpu_memory_mb,
        tuple(req.gpu_models),
        req.backend,
        tuple(req.labels),
        req.min_compute_capability,
    )


# -- state ------------------------------------------------------------------------------------

CREATING, STARTING, RUNNING, DRAINING, TERMINATING, TERMINATED = (
    "creating", "starting", "running", "draining", "terminating", "terminated",
)
LIVE = (CREATING, STARTING, RUNNING)


@dataclass(eq=False)
class ManagedPod:
    pool: str
    requested_at: float  # monotonic
    bill: PodBill | None = None
    pod_id: str = ""
    state: str = CREATING
    worker_id: str = ""
    seen_at: float = 0.0  # monotonic: last time its agent was connected
    idle_since: float | None = None
    finished: int = -1  # tasks the worker has finished, at the last look
    terminate_after_drain: str = ""

    def set_state(self, state: str) -> None:
        self.state = state
        if self.bill is not None:
            self.bill.state = state


@dataclass(eq=False)
class Pool:
    config: PoolConfig
    provider: RunPodProvider
    pods: list[ManagedPod] = field(default_factory=list)
    last_up: float = -math.inf
    last_change: float = -math.inf
    demand: int = 0
    demand_need: str = ""
    # Seconds of pending work on the pool at its learned runtimes; None until one is learned.
    work_s: float | None = None
    gpu_memory_gb: int = 0
    price_per_gpu: float = 0.0
    probe: Scheduler | None = None
    fits: dict[ShapeKey, bool] = field(default_factory=dict)
    at_max_reported: bool = False
    last_failure: float = -math.inf
    lookup_started: bool = False

    def count(self, *states: str) -> int:
        return sum(1 for p in self.pods if p.state in states)


class Autoscaler:
    """Scales RunPod pools from the queue and keeps their bills. start() runs it; stop() ends it."""

    def __init__(
        self,
        control: ControlPlane,
        config: AutoscaleConfig,
        *,
        server_address: str,
        agent_token: str = "",
        api_key: str | None = None,
    ) -> None:
        self.control = control
        self.config = config
        self.server_address = config.server_address or server_address
        # The token the control plane asks agents for (see server.start), handed to every pod.
        self.agent_token = agent_token
        self.api_key = api_key if api_key is not None else os.environ.get("RUNPOD_API_KEY", "")
        self.costs = CostTracker(control)
        self.events: collections.deque[admin_pb2.ScalingEvent] = collections.deque(maxlen=config.max_events)
        self.pools = {p.name: Pool(p, self._provider(p.name)) for p in config.pools}
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._costs_task: asyncio.Task[None] | None = None
        self._probe_seq = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    def _provider(self, pool: str) -> RunPodProvider:
        def on_retry(message: str) -> None:  # called from the SDK call's thread
            if self._loop is not None:
                self._loop.call_soon_threadsafe(self._record, pool, "api_retry", f"pool {pool}: {message}")

        return RunPodProvider(
            self.api_key,
            max_attempts=self.config.api_max_attempts,
            backoff_base_s=self.config.api_backoff_base_s,
            backoff_cap_s=self.config.api_backoff_cap_s,
            on_retry=on_retry,
        )

    # -- life cycle -------------------------------------------------------------------------

    async def start(self) -> None:
        if not self.api_key:
            raise ValueError("--autoscale needs RUNPOD_API_KEY in the environment")
        self._loop = asyncio.get_running_loop()
        host = self.server_address.rpartition(":")[0]
        if host in ("127.0.0.1", "localhost", "[::1]", "0.0.0.0", "[::]", ""):
            log.warning(
                "pods will dial %s, which a RunPod pod cannot reach; set server_address in the "
                "autoscaler config to this control plane's public HOST:PORT",
                self.server_address,
            )
        self._costs_task = asyncio.create_task(self.costs.run(), name="gpucp-costs")
        for pool in self.pools.values():
            # GPU memory (for matching) and price (for the pods' env), looked up before work arrives.
            pool.lookup_started = True
            self._spawn(self._lookup_gpu(pool), f"gpucp-lookup-{pool.config.name}")
        self._loop_task = asyncio.create_task(self._run(), name="gpucp-autoscaler")
        log.info(
            "autoscaler: %d pool(s) (%s), every %g s; pods dial %s",
            len(self.pools),
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

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- the decision log -------------------------------------------------------------------

    def _record(
        self, pool: str, action: str, message: str, *, from_pods: int = 0, to_pods: int = 0, pod_id: str = ""
    ) -> None:
        self.events.append(
            admin_pb2.ScalingEvent(
                at_ms=int(time.time() * 1000),
                pool=pool,
                action=action,
                from_pods=from_pods,
                to_pods=to_pods,
                pod_id=pod_id,
                message=message,
            )
        )
        level = logging.WARNING if action.endswith(("failed", "timeout", "retry")) else logging.INFO
        log.log(level, "%s", message)

    def scaling_events(self, limit: int = 0, pool: str = "") -> list[admin_pb2.ScalingEvent]:
        events = [e for e in self.events if not pool or e.pool == pool]
        return events[-limit:] if limit else events

    # -- evaluation -------------------------------------------------------------------------

    def evaluate(self) -> None:
        """One look at the queue and the pods; starts whatever API calls that calls for."""
        now = time.monotonic()
        self._observe(now)
        self._assign_demand()
        for pool in self.pools.values():
            self._reap(pool, now)
            self._finish_drains(pool)
            self._scale(pool, now)
        self.costs.sweep()

    def _observe(self, now: float) -> None:
        """Match connected runpod workers to pods; note which pods are idle."""
        by_pod: dict[str, WorkerConn] = {}
        for conn in self.control.workers.values():
            reg = conn.register
            if reg.provider != "runpod" or conn.lost_reason:
                continue
            pod_id = next((label[4:] for label in reg.labels if label.startswith("pod=")), reg.worker_id)
            by_pod[pod_id] = conn
        for pool in self.pools.values():
            for pod in pool.pods:
                found = by_pod.get(pod.pod_id) if pod.pod_id else None
                if found is None:
                    continue
                conn = found
                pod.seen_at = now
                pod.worker_id = conn.worker_id
                if pod.bill is not None:
                    pod.bill.worker_id = conn.worker_id
                    if not pod.bill.cost_per_hour and conn.register.cost_per_hour:
                        pod.bill.cost_per_hour = conn.register.cost_per_hour
                if pod.state == STARTING:
                    pod.set_state(RUNNING)
                    waited = now - pod.requested_at
                    self._record(
                        pool.config.name, "registered",
                        f"pod {pod.pod_id} of pool {pool.config.name} registered as worker "
                        f"{conn.worker_id} after {waited:.1f} s",
                        pod_id=pod.pod_id,
                    )
                slots, free, _, _, ok, failed = self.control.core.worker_stats(conn.handle)
                finished = ok + failed
                if slots - free > 0 or finished != pod.finished:
                    pod.idle_since = None if slots - free > 0 else now
                elif pod.idle_since is None:
                    pod.idle_since = now
                pod.finished = finished

    def _connection(self, pod: ManagedPod) -> WorkerConn | None:
        conn = self.control.workers.get(pod.worker_id) if pod.worker_id else None
        return conn if conn is not None and not conn.lost_reason else None

    def _fits(self, pool: Pool, key: ShapeKey) -> bool:
        """Could a pod of this pool run a task of this shape? Asks a private placement core."""
        known = pool.fits.get(key)
        if known is not None:
            return known
        cfg = pool.config
        if pool.probe is None:
            memory_gb = cfg.gpu_memory_gb or pool.gpu_memory_gb
            name = cfg.gpu_name or cfg.gpu_type_id
            cc = cfg.compute_capability or compute_capability_of(name)
            probe = Scheduler()
            probe.add_worker(
                max(cfg.slots, cfg.gpu_count),
                [(memory_gb * 1024, cc, name)] * cfg.gpu_count,
                cfg.backend,
                [*cfg.labels, f"pool={cfg.name}"],
                list(cfg.kinds),
                0,
            )
            pool.probe = probe
        self._probe_seq += 1
        task = self._probe_seq
        kind, gpus, mem, models, backend, labels, cc = key
        shape = pool.probe.shape(kind, gpus, mem, list(models), backend, list(labels), cc)
        pool.probe.push(task, shape, 1, task, 0)
        fits = bool(pool.probe.place(0, 1))
        if fits:
            pool.probe.release(task)
        else:
            pool.probe.remove(task)
        pool.fits[key] = fits
        return fits

    def _assign_demand(self) -> None:
        """Give each pending task to the pool that should grow for it."""
        shapes: collections.Counter[ShapeKey] = collections.Counter()
        examples: dict[ShapeKey, Any] = {}
        for rec in self.control.live.values():
            if rec.state == PENDING:
                key = shape_key(rec.spec)
                shapes[key] += 1
                examples.setdefault(key, rec.spec)
        for pool in self.pools.values():
            pool.demand = 0
            pool.work_s = None
        needs: dict[str, collections.Counter[ShapeKey]] = {name: collections.Counter() for name in self.pools}
        for key, n in shapes.items():
            candidates = [p for p in self.pools.values() if self._memory_known(p) and self._fits(p, key)]
            if not candidates:
                continue
            roomy = [p for p in candidates if self._size(p) < p.config.max]
            chosen = (roomy or candidates)[0]
            chosen.demand += n
            needs[chosen.config.name][key] += n
            runtime = self._runtime_s(chosen, examples[key])
            if runtime is not None:
                chosen.work_s = (chosen.work_s or 0.0) + n * runtime
        for name, counter in needs.items():
            top = [f"{describe_need(k)} ({n})" if len(counter) > 1 else describe_need(k) for k, n in counter.most_common(2)]
            self.pools[name].demand_need = "; ".join(top) + ("; ..." if len(counter) > 2 else "")

    def _runtime_s(self, pool: Pool, spec: Any) -> float | None:
        """What the core predicts one such task takes on this pool's pods (None: not learned)."""
        for pod in pool.pods:
            conn = self._connection(pod) if pod.state == RUNNING else None
            if conn is not None:
                return self.control.predict_runtime_s(spec, conn.worker_id)
        return None

    def _predicted_wait_s(self, pool: Pool) -> float | None:
        """How long the pool's pending work would take on the pods it has and is starting."""
        if pool.work_s is None:
            return None
        return pool.work_s / max(1, pool.count(*LIVE) * pool.config.slots)

    def _memory_known(self, pool: Pool) -> bool:
        """A pool is matched against tasks once its GPU memory is known (config or RunPod)."""
        if pool.config.gpu_memory_gb or pool.gpu_memory_gb:
            return True
        if not pool.lookup_started:
            pool.lookup_started = True
            self._spawn(self._lookup_gpu(pool), f"gpucp-lookup-{pool.config.name}")
        return False

    async def _lookup_gpu(self, pool: Pool) -> None:
        cfg = pool.config
        try:
            gpu = await pool.provider.gpu_type(cfg.gpu_type_id, cfg.gpu_count)
        except RunPodError as exc:
            self._record(cfg.name, "lookup_failed", f"pool {cfg.name}: cannot look up its GPU type: {exc}")
            await asyncio.sleep(max(5.0, self.config.interval_s))
            pool.lookup_started = False
            return
        pool.gpu_memory_gb = gpu.memory_gb
        pool.price_per_gpu = gpu.price(cfg.cloud_type)
        log.info("pool %s: %s, %d GB, $%.2f/GPU-hour", cfg.name, gpu.display_name, gpu.memory_gb, pool.price_per_gpu)

    def _size(self, pool: Pool) -> int:
        """Pods that count toward max: everything not terminating or gone."""
        return pool.count(CREATING, STARTING, RUNNING, DRAINING)

    # -- scaling ----------------------------------------------------------------------------

    def _scale(self, pool: Pool, now: float) -> None:
        cfg = pool.config
        live = pool.count(*LIVE)
        size = self._size(pool)
        if live < cfg.min:
            if now - pool.last_failure < cfg.scale_up_cooldown_s:
                return  # RunPod just refused a pod: do not hammer it
            add = min(cfg.min - live, cfg.max - size)
            if add > 0:
                self._scale_up(pool, add, now, f"pool {cfg.name} is below its minimum of {cfg.min}")
            return
        starting = pool.count(CREATING, STARTING)
        uncovered = pool.demand - starting * cfg.slots
        by_count = uncovered >= cfg.scale_up_threshold
        wait_s = self._predicted_wait_s(pool)
        by_wait = cfg.scale_up_wait_s > 0 and wait_s is not None and wait_s > cfg.scale_up_wait_s
        if by_count or by_wait:
            if now - pool.last_up < cfg.scale_up_cooldown_s:
                return
            want = math.ceil(uncovered / cfg.absorb) if by_count else 0
            if by_wait and pool.work_s is not None:
                enough = math.ceil(pool.work_s / cfg.scale_up_wait_s / cfg.slots)
                want = max(want, enough - live)
            if want <= 0:
                return
            add = min(want, cfg.max - size)
            if add <= 0:
                if not pool.at_max_reported:
                    pool.at_max_reported = True
                    self._record(
                        cfg.name, "at_max",
                        f"pool {cfg.name} is at its maximum of {cfg.max} pods"
                        + (f" ({starting} still starting)" if starting else "")
                        + f"; {pool.demand} pending tasks need {pool.demand_need} and wait",
                        from_pods=size, to_pods=size,
                    )
                return
            why = f"{pool.demand} pending tasks need {pool.demand_need}"
            if by_wait and wait_s is not None:
                why += f" and would wait about {wait_s:.0f} s, over the {cfg.scale_up_wait_s:g} s target"
            if starting:
                why += f" ({starting} pods already starting)"
            self._scale_up(pool, add, now, why)
            return
        if pool.demand > 0 or now - pool.last_change < cfg.scale_down_cooldown_s:
            return
        idle = sorted(
            (p for p in pool.pods if p.state == RUNNING and p.idle_since is not None
             and now - p.idle_since >= cfg.idle_timeout_s),
            key=lambda p: p.idle_since or 0.0,
        )
        remove = idle[: max(0, live - cfg.min)]
        if not remove:
            return
        pool.last_change = now
        pool.at_max_reported = False
        self._record(
            cfg.name, "scale_down",
            f"scaled pool {cfg.name} from {live} to {live - len(remove)}: {len(remove)} pod(s) idle for more "
            f"than {cfg.idle_timeout_s:g} s and no pending task needs the pool",
            from_pods=live, to_pods=live - len(remove),
        )
        for pod in remove:
            self._drain_then_terminate(pool, pod, f"idle for {now - (pod.idle_since or now):.0f} s")

    def _scale_up(self, pool: Pool, add: int, now: float, why: str) -> None:
        cfg = pool.config
        live = pool.count(*LIVE)
        pool.last_up = pool.last_change = now
        pool.at_max_reported = False
        self._record(
            cfg.name, "scale_up", f"scaled pool {cfg.name} from {live} to {live + add}: {why}",
            from_pods=live, to_pods=live + add,
        )
        for _ in range(add):
            pod = ManagedPod(pool=cfg.name, requested_at=now)
            pool.pods.append(pod)
            self._spawn(self._create(pool, pod), f"gpucp-create-{cfg.name}")

    async def _create(self, pool: Pool, pod: ManagedPod) -> None:
        cfg = pool.config
        name = f"gpucp-{cfg.name}-{secrets.token_hex(4)}"
        env = {**cfg.env, ENV_SERVER: self.server_address, ENV_POOL: cfg.name}
        if self.agent_token:
            env[AGENT_TOKEN_ENV] = self.agent_token
        if pool.price_per_gpu:
            env[ENV_COST] = f"{pool.price_per_gpu * cfg.gpu_count:.4f}"
        try:
            created = await pool.provider.create_pod(
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
            pool.pods.remove(pod)
            pool.last_failure = time.monotonic()
            live = pool.count(*LIVE)
            self._record(
                cfg.name, "create_failed",
                f"could not create a pod for pool {cfg.name} (now {live} pods): {exc}; "
                f"trying again after the scale-up cooldown ({cfg.scale_up_cooldown_s:g} s) if still needed",
                from_pods=live + 1, to_pods=live,
            )
            return
        created_at = time.time()
        pod.pod_id = created.id
        pod.bill = PodBill(
            pod_id=created.id,
            pool=cfg.name,
            gpu_type_id=cfg.gpu_type_id,
            gpu_count=cfg.gpu_count,
            cost_per_hour=pool.price_per_gpu * cfg.gpu_count,
            created_at=created_at,
        )
        self.costs.pods[created.id] = pod.bill
        pod.requested_at = time.monotonic()
        if pod.state == CREATING:
            pod.set_state(STARTING)
        log.info("pool %s: created pod %s (%s)", cfg.name, created.id, name)
        try:
            described = await pool.provider.get_pod(created.id)
        except RunPodError as exc:
            log.warning("pool %s: cannot read pod %s's price yet: %s", cfg.name, created.id, exc)
            return
        if described is not None and described.cost_per_hr:
            pod.bill.cost_per_hour = described.cost_per_hr

    def _reap(self, pool: Pool, now: float) -> None:
        """Terminate pods whose agent never registered, or went away and did not come back."""
        cfg = pool.config
        for pod in pool.pods:
            if pod.state == STARTING and now - pod.requested_at > cfg.register_timeout_s:
                self._record(
                    cfg.name, "register_timeout",
                    f"pod {pod.pod_id} of pool {cfg.name} did not register within "
                    f"{cfg.register_timeout_s:g} s of being created; terminating it",
                    pod_id=pod.pod_id,
                )
                self._terminate(pool, pod)
            elif pod.state in (RUNNING, DRAINING) and self._connection(pod) is None and now - pod.seen_at > cfg.register_timeout_s:
                self._record(
                    cfg.name, "register_timeout",
                    f"pod {pod.pod_id} of pool {cfg.name}: its agent has been away for more than "
                    f"{cfg.register_timeout_s:g} s; terminating it",
                    pod_id=pod.pod_id,
                )
                self._terminate(pool, pod)

    def _drain_then_terminate(self, pool: Pool, pod: ManagedPod, why: str) -> None:
        pod.set_state(DRAINING)
        pod.terminate_after_drain = why
        try:
            self.control.drain(pod.worker_id)
        except ControlError:
            pass  # gone already: nothing runs there
        self._finish_drains(pool)

    def _finish_drains(self, pool: Pool) -> None:
        for pod in pool.pods:
            if pod.state != DRAINING:
                continue
            conn = self.control.workers.get(pod.worker_id)
            if conn is not None:
                slots, free, *_ = self.control.core.worker_stats(conn.handle)
                if slots - free > 0:
                    continue
            self._terminate(pool, pod)

    def _terminate(self, pool: Pool, pod: ManagedPod) -> None:
        pod.set_state(TERMINATING)
        self._spawn(self._terminate_call(pool, pod), f"gpucp-terminate-{pod.pod_id}")

    async def _terminate_call(self, pool: Pool, pod: ManagedPod) -> None:
        cfg = pool.config
        try:
            await pool.provider.terminate_pod(pod.pod_id)
        except RunPodError as exc:
            pod.set_state(DRAINING)  # tried again at the next evaluation
            self._record(cfg.name, "terminate_failed", f"could not terminate pod {pod.pod_id}: {exc}", pod_id=pod.pod_id)
            return
        if pod.bill is not None:
            pod.bill.terminated_at = time.time()
        pod.set_state(TERMINATED)
        pool.pods.remove(pod)
        cost = pod.bill.cost(time.time()) if pod.bill is not None else 0.0
        uptime = pod.bill.uptime_s(time.time()) if pod.bill is not None else 0.0
        self._record(
            cfg.name, "terminated",
            f"terminated pod {pod.pod_id} of pool {cfg.name} after {uptime:.0f} s (${cost:.4f})",
            pod_id=pod.pod_id, from_pods=pool.count(*LIVE) + 1, to_pods=pool.count(*LIVE),
        )

    async def _adopt(self) -> None:
        """Take over running pods this autoscaler (or an earlier run of it) created."""
        try:
            pods = await next(iter(self.pools.values())).provider.list_pods()
        except RunPodError as exc:
            log.warning("cannot list existing pods to adopt them: %s", exc)
            return
        now = time.monotonic()
        for existing in pods:
            for pool in self.pools.values():
                cfg = pool.config
                if not existing.name.startswith(f"gpucp-{cfg.name}-") or existing.desired_status != "RUNNING":
                    continue
                pod = ManagedPod(pool=cfg.name, requested_at=now, pod_id=existing.id, state=STARTING)
                pod.bill = PodBill(
                    existing.id, cfg.name, cfg.gpu_type_id, existing.gpu_count or cfg.gpu_count,
                    existing.cost_per_hr, created_at=time.time(), state=STARTING,
                )
                self.costs.pods[existing.id] = pod.bill
                pool.pods.append(pod)
                self._record(
                    cfg.name, "adopted",
                    f"adopted running pod {existing.id} ({existing.name}) into pool {cfg.name}; "
                    "its cost is counted from now",
                    pod_id=existing.id,
                )

    # -- reports ----------------------------------------------------------------------------

    def cost_report(self) -> admin_pb2.CostReport:
        now = time.time()
        pools = []
        for pool in self.pools.values():
            cfg = pool.config
            bills = [b for b in self.costs.pods.values() if b.pool == cfg.name]
            pools.append(
                admin_pb2.PoolCost(
                    pool=cfg.name,
                    gpu_type_id=cfg.gpu_type_id,
                    min_pods=cfg.min,
                    max_pods=cfg.max,
                    pods=self._size(pool),
                    pods_starting=pool.count(CREATING, STARTING),
                    pending_demand=pool.demand,
                    cost=sum(b.cost(now) for b in bills),
                    cost_per_hour=sum(b.cost_per_hour for b in bills if not b.terminated_at),
                )
            )
        return self.costs.report(pools)

