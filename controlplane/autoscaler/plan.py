"""The autoscaler's decisions, as pure functions: what it knows and what it sees in, actions out.

`plan(state, seen, now)` is one evaluation. `state` is what the autoscaler keeps between
evaluations (its pools and their pods); `seen` is what it observed just now (the connected
RunPod workers and the pending demand). It returns the next state and the actions to carry out:
create a pod, drain a worker, terminate a pod, record an event. The driver (driver.py) does the
I/O and feeds outcomes back through `created`, `create_failed`, `terminated`, `terminate_failed`
and `adopted`, each also pure. Nothing here reads a clock, the network or the control plane.

The rules of one evaluation:
- Demand. Each pending shape goes to the first pool (in config order) whose pods could run it
  and that has room to grow, else to the first that could run it.
- Scale up when the pool's demand, less what its starting pods will absorb, reaches
  `scale_up_threshold`, and `scale_up_cooldown_s` has passed since the last scale-up. Pods
  requested but not registered yet count: they are capacity on the way.
- Scale down pods idle (no task, none finished) for `idle_timeout_s`, when the pool has no
  demand and `scale_down_cooldown_s` has passed since its last scaling action. A pod is drained
  first, then terminated once it runs nothing: a pod with running tasks is never terminated.
- Never below `min` (refilled without waiting for a cooldown, but not right after RunPod refused
  a pod), never above `max` (pods still draining count toward max: they are still billed).
- A pod that does not register within `register_timeout_s` of being created, or whose agent
  stays away that long, is terminated and reported.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from controlplane.autoscaler.config import PoolConfig
from controlplane.autoscaler.runpod import Pod
from controlplane.autoscaler.shapes import describe_need
from controlplane.autoscaler.view import WorkerSnapshot
from controlplane.core import ShapeKey

__all__ = [
    "Action", "Adopt", "Create", "Drain", "Observation", "PendingShape", "PodRecord", "PoolState", "Record",
    "ScalerState", "Terminate", "adopted", "create_failed", "created", "plan", "plan_adoption", "terminate_failed",
    "terminated",
]

CREATING, STARTING, RUNNING, DRAINING, TERMINATING = "creating", "starting", "running", "draining", "terminating"
LIVE = (CREATING, STARTING, RUNNING)
# Pods that count toward max: everything not being terminated.
SIZED = (CREATING, STARTING, RUNNING, DRAINING)


# -- what the autoscaler keeps ----------------------------------------------------------------


@dataclass(frozen=True)
class PodRecord:
    """One pod the autoscaler manages. `ref` names it before RunPod gives it an id."""

    ref: int
    pool: str
    requested_at: float  # monotonic: when it was asked for (created: when it was created)
    state: str = CREATING
    pod_id: str = ""
    worker_id: str = ""
    seen_at: float = 0.0  # monotonic: last time its agent was connected
    idle_since: float | None = None
    finished: int = -1  # tasks its worker had finished at the last look


@dataclass(frozen=True)
class PoolState:
    config: PoolConfig
    pods: tuple[PodRecord, ...] = ()
    last_up: float = -math.inf
    last_change: float = -math.inf
    last_failure: float = -math.inf  # RunPod refused a pod
    at_max_reported: bool = False
    demand: int = 0  # pending tasks given to this pool at the last evaluation
    demand_need: str = ""  # what they need, in words
    work_s: float | None = None  # their seconds of work at learned runtimes; None: none learned

    def count(self, *states: str) -> int:
        return sum(1 for p in self.pods if p.state in states)

    @property
    def size(self) -> int:
        return self.count(*SIZED)


@dataclass(frozen=True)
class ScalerState:
    pools: Mapping[str, PoolState]  # in config order
    next_ref: int = 1


# -- what it sees -----------------------------------------------------------------------------


@dataclass(frozen=True)
class PendingShape:
    """Pending tasks of one shape, and the pools (config order) whose pods could run them."""

    key: ShapeKey
    count: int
    pools: tuple[str, ...]
    runtime_s: Mapping[str, float] = field(default_factory=dict)  # learned, per pool, where known


@dataclass(frozen=True)
class Observation:
    workers: Mapping[str, WorkerSnapshot]  # connected RunPod workers by pod id
    pending: tuple[PendingShape, ...] = ()


# -- what it does -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Create:
    pool: str
    ref: int


@dataclass(frozen=True)
class Drain:
    pool: str
    ref: int
    worker_id: str


@dataclass(frozen=True)
class Terminate:
    pool: str
    ref: int
    pod_id: str


@dataclass(frozen=True)
class Adopt:
    """Take over a running pod an earlier run created (its name says which pool)."""

    pool: str
    pod: Pod


@dataclass(frozen=True)
class Record:
    """A decision or outcome for the scaling-event log."""

    pool: str
    action: str
    message: str
    from_pods: int = 0
    to_pods: int = 0
    pod_id: str = ""


Action = Create | Drain | Terminate | Adopt | Record
Step = tuple[ScalerState, list[Action]]


class _Draft:
    """The next state while a step builds it; the input state is never changed."""

    def __init__(self, state: ScalerState) -> None:
        self.pools = dict(state.pools)
        self.next_ref = state.next_ref
        self.actions: list[Action] = []

    def set_pool(self, name: str, **changes: object) -> PoolState:
        self.pools[name] = replace(self.pools[name], **changes)  # type: ignore[arg-type]
        return self.pools[name]

    def set_pod(self, pod: PodRecord, **changes: object) -> PodRecord:
        new = replace(pod, **changes)  # type: ignore[arg-type]
        pool = self.pools[pod.pool]
        self.pools[pod.pool] = replace(pool, pods=tuple(new if p.ref == pod.ref else p for p in pool.pods))
        return new

    def remove_pod(self, pod: PodRecord) -> None:
        pool = self.pools[pod.pool]
        self.pools[pod.pool] = replace(pool, pods=tuple(p for p in pool.pods if p.ref != pod.ref))

    def add_pod(self, pool: str, requested_at: float, **fields: object) -> PodRecord:
        pod = PodRecord(ref=self.next_ref, pool=pool, requested_at=requested_at, **fields)  # type: ignore[arg-type]
        self.next_ref += 1
        self.set_pool(pool, pods=(*self.pools[pool].pods, pod))
        return pod

    def find(self, pool: str, ref: int) -> PodRecord | None:
        return next((p for p in self.pools[pool].pods if p.ref == ref), None) if pool in self.pools else None

    def record(self, pool: str, action: str, message: str, **numbers: object) -> None:
        self.actions.append(Record(pool, action, message, **numbers))  # type: ignore[arg-type]

    def done(self) -> Step:
        return ScalerState(self.pools, self.next_ref), self.actions


# -- one evaluation ---------------------------------------------------------------------------


def plan(state: ScalerState, seen: Observation, now: float) -> Step:
    """One look at the pods and the queue: the next state and the actions it calls for."""
    d = _Draft(state)
    for name in d.pools:
        _observe(d, name, seen, now)
    _assign_demand(d, seen)
    for name in d.pools:
        _reap(d, name, seen, now)
        _finish_drains(d, name, seen)
        _scale(d, name, seen, now)
    return d.done()


def _observe(d: _Draft, name: str, seen: Observation, now: float) -> None:
    """Match connected workers to pods; note which pods are idle."""
    for pod in d.pools[name].pods:
        worker = seen.workers.get(pod.pod_id) if pod.pod_id else None
        if worker is None:
            continue
        state = pod.state
        if state == STARTING:
            state = RUNNING
            d.record(
                name, "registered",
                f"pod {pod.pod_id} of pool {name} registered as worker {worker.worker_id} "
                f"after {now - pod.requested_at:.1f} s",
                pod_id=pod.pod_id,
            )
        idle_since = pod.idle_since
        if worker.busy_slots > 0 or worker.finished != pod.finished:
            idle_since = None if worker.busy_slots > 0 else now
        elif idle_since is None:
            idle_since = now
        d.set_pod(pod, state=state, seen_at=now, worker_id=worker.worker_id, idle_since=idle_since,
                  finished=worker.finished)


def _assign_demand(d: _Draft, seen: Observation) -> None:
    """Give each pending shape to the pool that should grow for it."""
    demand: Counter[str] = Counter()
    work: dict[str, float] = {}
    needs: dict[str, Counter[ShapeKey]] = {name: Counter() for name in d.pools}
    for shape in seen.pending:
        candidates = [name for name in shape.pools if name in d.pools]
        if not candidates:
            continue
        roomy = [name for name in candidates if d.pools[name].size < d.pools[name].config.max]
        chosen = (roomy or candidates)[0]
        demand[chosen] += shape.count
        needs[chosen][shape.key] += shape.count
        runtime = shape.runtime_s.get(chosen)
        if runtime is not None:
            work[chosen] = work.get(chosen, 0.0) + shape.count * runtime
    for name, counter in needs.items():
        top = [f"{describe_need(k)} ({n})" if len(counter) > 1 else describe_need(k)
               for k, n in counter.most_common(2)]
        need = "; ".join(top) + ("; ..." if len(counter) > 2 else "")
        d.set_pool(name, demand=demand[name], demand_need=need, work_s=work.get(name))


def _reap(d: _Draft, name: str, seen: Observation, now: float) -> None:
    """Terminate pods whose agent never registered, or went away and did not come back."""
    timeout = d.pools[name].config.register_timeout_s
    for pod in d.pools[name].pods:
        if pod.state == STARTING and now - pod.requested_at > timeout:
            d.record(
                name, "register_timeout",
                f"pod {pod.pod_id} of pool {name} did not register within {timeout:g} s of being created; "
                "terminating it",
                pod_id=pod.pod_id,
            )
            _terminate(d, pod)
        elif pod.state in (RUNNING, DRAINING) and pod.pod_id not in seen.workers and now - pod.seen_at > timeout:
            d.record(
                name, "register_timeout",
                f"pod {pod.pod_id} of pool {name}: its agent has been away for more than {timeout:g} s; "
                "terminating it",
                pod_id=pod.pod_id,
            )
            _terminate(d, pod)


def _finish_drains(d: _Draft, name: str, seen: Observation) -> None:
    """Terminate draining pods that run nothing any more (a pod with running tasks is kept)."""
    for pod in d.pools[name].pods:
        worker = seen.workers.get(pod.pod_id)
        if pod.state == DRAINING and (worker is None or worker.busy_slots == 0):
            _terminate(d, pod)


def _terminate(d: _Draft, pod: PodRecord) -> None:
    d.set_pod(pod, state=TERMINATING)
    d.actions.append(Terminate(pod.pool, pod.ref, pod.pod_id))


def _scale(d: _Draft, name: str, seen: Observation, now: float) -> None:
    pool = d.pools[name]
    cfg = pool.config
    live = pool.count(*LIVE)
    if live < cfg.min:
        if now - pool.last_failure < cfg.scale_up_cooldown_s:
            return  # RunPod just refused a pod: do not hammer it
        add = min(cfg.min - live, cfg.max - pool.size)
        if add > 0:
            _scale_up(d, name, add, now, f"pool {name} is below its minimum of {cfg.min}")
        return
    starting = pool.count(CREATING, STARTING)
    # Starting pods are capacity on the way: a burst seen twice does not ask for pods twice.
    uncovered = pool.demand - starting * cfg.slots
    by_count = uncovered >= cfg.scale_up_threshold
    wait_s = None if pool.work_s is None else pool.work_s / max(1, live * cfg.slots)
    by_wait = cfg.scale_up_wait_s > 0 and wait_s is not None and wait_s > cfg.scale_up_wait_s
    if not (by_count or by_wait):
        if pool.demand == 0 and now - pool.last_change >= cfg.scale_down_cooldown_s:
            _shrink(d, name, seen, now)
        return
    if now - pool.last_up < cfg.scale_up_cooldown_s:
        return
    want = math.ceil(uncovered / cfg.absorb) if by_count else 0
    why = f"{pool.demand} pending tasks need {pool.demand_need}"
    if by_wait and pool.work_s is not None:
        want = max(want, math.ceil(pool.work_s / cfg.scale_up_wait_s / cfg.slots) - live)
        why += f" and would wait about {wait_s:.0f} s, over the {cfg.scale_up_wait_s:g} s target"
    if want <= 0:
        return
    add = min(want, cfg.max - pool.size)
    if add > 0:
        _scale_up(d, name, add, now, why + (f" ({starting} pods already starting)" if starting else ""))
    elif not pool.at_max_reported:
        d.set_pool(name, at_max_reported=True)
        d.record(
            name, "at_max",
            f"pool {name} is at its maximum of {cfg.max} pods"
            + (f" ({starting} still starting)" if starting else "")
            + f"; {pool.demand} pending tasks need {pool.demand_need} and wait",
            from_pods=pool.size, to_pods=pool.size,
        )


def _scale_up(d: _Draft, name: str, add: int, now: float, why: str) -> None:
    live = d.pools[name].count(*LIVE)
    d.set_pool(name, last_up=now, last_change=now, at_max_reported=False)
    d.record(name, "scale_up", f"scaled pool {name} from {live} to {live + add}: {why}",
             from_pods=live, to_pods=live + add)
    for _ in range(add):
        pod = d.add_pod(name, now)
        d.actions.append(Create(name, pod.ref))


def _shrink(d: _Draft, name: str, seen: Observation, now: float) -> None:
    pool = d.pools[name]
    cfg = pool.config
    live = pool.count(*LIVE)
    idle = sorted(
        (p for p in pool.pods
         if p.state == RUNNING and p.idle_since is not None and now - p.idle_since >= cfg.idle_timeout_s),
        key=lambda p: p.idle_since or 0.0,
    )
    remove = idle[: max(0, live - cfg.min)]  # never below min
    if not remove:
        return
    d.set_pool(name, last_change=now, at_max_reported=False)
    d.record(
        name, "scale_down",
        f"scaled pool {name} from {live} to {live - len(remove)}: {len(remove)} pod(s) idle for more "
        f"than {cfg.idle_timeout_s:g} s and no pending task needs the pool",
        from_pods=live, to_pods=live - len(remove),
    )
    for pod in remove:
        # Drained first, so nothing is placed on it between this look and its termination.
        d.set_pod(pod, state=DRAINING)
        d.actions.append(Drain(name, pod.ref, pod.worker_id))
    _finish_drains(d, name, seen)


# -- outcomes of the driver's calls -----------------------------------------------------------


def created(state: ScalerState, pool: str, ref: int, pod_id: str, now: float) -> ScalerState:
    """RunPod created the pod: it starts, and its register timeout counts from now."""
    d = _Draft(state)
    pod = d.find(pool, ref)
    if pod is not None:
        d.set_pod(pod, pod_id=pod_id, requested_at=now, state=STARTING if pod.state == CREATING else pod.state)
    return d.done()[0]


def create_failed(state: ScalerState, pool: str, ref: int, error: str, now: float) -> Step:
    """RunPod refused the pod: forget it, and try again after the scale-up cooldown if still needed."""
    d = _Draft(state)
    pod = d.find(pool, ref)
    if pod is None:
        return d.done()
    d.remove_pod(pod)
    cfg = d.set_pool(pool, last_failure=now).config
    live = d.pools[pool].count(*LIVE)
    d.record(
        pool, "create_failed",
        f"could not create a pod for pool {pool} (now {live} pods): {error}; "
        f"trying again after the scale-up cooldown ({cfg.scale_up_cooldown_s:g} s) if still needed",
        from_pods=live + 1, to_pods=live,
    )
    return d.done()


def terminated(state: ScalerState, pool: str, ref: int, uptime_s: float, cost: float) -> Step:
    d = _Draft(state)
    pod = d.find(pool, ref)
    if pod is None:
        return d.done()
    d.remove_pod(pod)
    live = d.pools[pool].count(*LIVE)
    d.record(
        pool, "terminated", f"terminated pod {pod.pod_id} of pool {pool} after {uptime_s:.0f} s (${cost:.4f})",
        pod_id=pod.pod_id, from_pods=live + 1, to_pods=live,
    )
    return d.done()


def terminate_failed(state: ScalerState, pool: str, ref: int, error: str) -> Step:
    """The terminate call failed: the pod is kept, draining, and terminated again at the next look."""
    d = _Draft(state)
    pod = d.find(pool, ref)
    if pod is None:
        return d.done()
    d.set_pod(pod, state=DRAINING)
    d.record(pool, "terminate_failed",
             f"could not terminate pod {pod.pod_id}: {error}; trying again at the next evaluation",
             pod_id=pod.pod_id)
    return d.done()


def plan_adoption(state: ScalerState, listed: Sequence[Pod]) -> list[Adopt]:
    """The running pods named `gpucp-<pool>-<hex>` for a configured pool that are not managed yet."""
    managed = {p.pod_id for pool in state.pools.values() for p in pool.pods}
    out = []
    for pod in listed:
        prefix, _, _ = pod.name.rpartition("-")
        pool = prefix.removeprefix("gpucp-")
        if (prefix.startswith("gpucp-") and pool in state.pools and pod.desired_status == "RUNNING"
                and pod.id not in managed):
            out.append(Adopt(pool, pod))
    return out


def adopted(state: ScalerState, adopt: Adopt, now: float) -> Step:
    """An adopted pod starts over: its agent has register_timeout_s to (re)register."""
    d = _Draft(state)
    d.add_pod(adopt.pool, now, state=STARTING, pod_id=adopt.pod.id)
    d.record(
        adopt.pool, "adopted",
        f"adopted running pod {adopt.pod.id} ({adopt.pod.name}) into pool {adopt.pool}; its cost is counted from now",
        pod_id=adopt.pod.id,
    )
    return d.done()
