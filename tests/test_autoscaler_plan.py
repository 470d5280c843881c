"""The autoscaler's decisions as plain unit tests: plan() and its outcome functions are pure, so
each rule the README states is shown on made-up pools, pods and queues, with no clock or cloud."""

from __future__ import annotations

from typing import Any

from controlplane.autoscaler.config import PoolConfig
from controlplane.autoscaler.plan import (
    DRAINING,
    RUNNING,
    STARTING,
    TERMINATING,
    Action,
    Create,
    Drain,
    Observation,
    PendingShape,
    PodRecord,
    PoolState,
    Record,
    ScalerState,
    Terminate,
    adopted,
    create_failed,
    created,
    plan,
    plan_adoption,
    terminate_failed,
)
from controlplane.autoscaler.runpod import Pod
from controlplane.autoscaler.view import WorkerSnapshot
from controlplane.core import shape_key
from gpucp.client import task_spec

GPU_TASK = shape_key(task_spec("sleep", gpus=1))


def pool(**overrides: Any) -> PoolConfig:
    values: dict[str, Any] = {"name": "a100", "gpu_type_id": "NVIDIA A100 80GB PCIe", "image": "i", "max": 10,
                              "idle_timeout_s": 60, "scale_up_cooldown_s": 0, "scale_down_cooldown_s": 0}
    return PoolConfig(**{**values, **overrides})


def running(ref: int, idle_since: float | None = 0.0) -> PodRecord:
    """A registered pod of pool a100, its worker idle since `idle_since` with nothing finished."""
    return PodRecord(ref=ref, pool="a100", requested_at=0.0, state=RUNNING, pod_id=f"pod{ref}",
                     worker_id=f"pod{ref}", seen_at=0.0, idle_since=idle_since, finished=0)


def worker(pod_id: str, busy: int = 0, finished: int = 0) -> WorkerSnapshot:
    return WorkerSnapshot(worker_id=pod_id, provider="runpod", labels=(f"pod={pod_id}",), gpus=1, slots=1,
                          busy_slots=busy, finished=finished)


def fleet(config: PoolConfig, *pods: PodRecord, **pool_fields: Any) -> ScalerState:
    return ScalerState({config.name: PoolState(config, tuple(pods), **pool_fields)}, next_ref=100)


def seeing(state: ScalerState, pending: int = 0, busy: frozenset[str] = frozenset()) -> Observation:
    """Every pod with an id connected (busy ones running a task), and `pending` 1-GPU tasks for a100."""
    pods = [p for pool in state.pools.values() for p in pool.pods if p.pod_id and p.state != STARTING]
    shapes = (PendingShape(GPU_TASK, pending, ("a100",)),) if pending else ()
    return Observation({p.pod_id: worker(p.pod_id, busy=int(p.pod_id in busy)) for p in pods}, shapes)


def of(kind: type, actions: list[Action]) -> list[Any]:
    return [a for a in actions if isinstance(a, kind)]


def records(actions: list[Action], action: str) -> list[Record]:
    return [a for a in of(Record, actions) if a.action == action]


# -- scale down -------------------------------------------------------------------------------


def test_scale_down_never_goes_below_min() -> None:
    state = fleet(pool(min=2), *(running(i) for i in range(1, 5)))
    state, actions = plan(state, seeing(state), now=1000.0)
    drained = of(Drain, actions)
    assert len(drained) == 2, f"4 idle pods with min 2: expected 2 drained, got {drained}"
    assert {a.pod_id for a in of(Terminate, actions)} == {"pod1", "pod2"}, "the longest idle go first"
    assert "from 4 to 2" in records(actions, "scale_down")[0].message
    live = [p for p in state.pools["a100"].pods if p.state == RUNNING]
    assert len(live) == 2

    # Idle for ever after: still two.
    for now in (2000.0, 3000.0):
        state, actions = plan(state, seeing(state), now=now)
        assert not of(Drain, actions) and not of(Terminate, actions), f"went below min at {now}: {actions}"


def test_min_zero_scales_down_every_idle_pod_but_not_a_busy_one() -> None:
    state = fleet(pool(min=0), running(1), running(2))
    state, actions = plan(state, seeing(state, busy=frozenset({"pod2"})), now=1000.0)
    assert [a.pod_id for a in of(Terminate, actions)] == ["pod1"], "the pod running a task must stay"


def test_scale_down_waits_for_the_cooldown_after_the_last_change() -> None:
    state = fleet(pool(scale_down_cooldown_s=120), running(1), running(2), last_change=950.0)
    _, actions = plan(state, seeing(state), now=1000.0)
    assert not of(Drain, actions), "scaled down 50 s after the last change, inside the 120 s cooldown"
    _, actions = plan(state, seeing(state), now=1069.0)
    assert not of(Drain, actions), "scaled down 119 s after the last change"
    _, actions = plan(state, seeing(state), now=1070.0)
    assert len(of(Drain, actions)) == 2, "the cooldown has passed: both idle pods go"


def test_one_scale_down_starts_the_cooldown_for_the_next() -> None:
    config = pool(scale_down_cooldown_s=120, idle_timeout_s=60)
    state = fleet(config, running(1, idle_since=0.0), running(2, idle_since=950.0))
    state, actions = plan(state, seeing(state), now=1000.0)
    assert [a.pod_id for a in of(Terminate, actions)] == ["pod1"], "pod2 has been idle only 50 s"
    _, actions = plan(state, seeing(state), now=1100.0)
    assert not of(Drain, actions), "pod2 is idle long enough, but the last scale-down was 100 s ago"
    _, actions = plan(state, seeing(state), now=1120.0)
    assert [a.pod_id for a in of(Terminate, actions)] == ["pod2"]


def test_a_pod_that_finished_a_task_is_not_idle() -> None:
    state = fleet(pool(), running(1))
    seen = Observation({"pod1": worker("pod1", finished=3)})  # it finished tasks since the last look
    state, actions = plan(state, seen, now=1000.0)
    assert not of(Drain, actions)
    assert state.pools["a100"].pods[0].idle_since == 1000.0, "idle time counts from its last finished task"


# -- scale up ---------------------------------------------------------------------------------


def test_starting_pods_count_as_capacity_so_a_burst_does_not_over_provision() -> None:
    state = fleet(pool(max=10))
    state, actions = plan(state, seeing(state, pending=6), now=0.0)
    assert len(of(Create, actions)) == 6, actions
    # The same 6 tasks still pending at the next looks, while the pods are created and start.
    for now in (1.0, 2.0):
        state, actions = plan(state, seeing(state, pending=6), now=now)
        assert not of(Create, actions), f"asked for more pods for the same burst at {now}: {actions}"
    for i, pod in enumerate(state.pools["a100"].pods):
        state = created(state, "a100", pod.ref, f"new{i}", now=3.0)
    state, actions = plan(state, seeing(state, pending=6), now=4.0)
    assert not of(Create, actions), "created pods that have not registered yet are capacity on the way"
    # Two more tasks arrive: two more pods, and the record says why the others do not count.
    state, actions = plan(state, seeing(state, pending=8), now=5.0)
    assert len(of(Create, actions)) == 2
    assert "(6 pods already starting)" in records(actions, "scale_up")[0].message


def test_scale_up_stops_at_max_and_says_so_once() -> None:
    state = fleet(pool(max=3))
    state, actions = plan(state, seeing(state, pending=30), now=0.0)
    assert len(of(Create, actions)) == 3
    for now in (1.0, 2.0):
        state, actions = plan(state, seeing(state, pending=40), now=now)
        assert not of(Create, actions)
        assert len(records(actions, "at_max")) == (1 if now == 1.0 else 0), actions


def test_scale_up_honours_its_cooldown() -> None:
    state = fleet(pool(max=10, scale_up_cooldown_s=60), running(1, idle_since=None), last_up=0.0)
    seen = Observation({"pod1": worker("pod1", busy=1)}, (PendingShape(GPU_TASK, 3, ("a100",)),))
    _, actions = plan(state, seen, now=59.0)
    assert not of(Create, actions), "scaled up inside the cooldown"
    _, actions = plan(state, seen, now=60.0)
    assert len(of(Create, actions)) == 3


def test_below_min_is_refilled_but_not_right_after_runpod_refused_a_pod() -> None:
    state = fleet(pool(min=2, scale_up_cooldown_s=30))
    state, actions = plan(state, seeing(state), now=0.0)
    creates = of(Create, actions)
    assert len(creates) == 2 and "below its minimum of 2" in records(actions, "scale_up")[0].message
    state, actions = create_failed(state, "a100", creates[0].ref, "RunPod has no A100 left", now=1.0)
    refused = records(actions, "create_failed")[0].message
    assert "could not create a pod for pool a100 (now 1 pods): RunPod has no A100 left" in refused
    _, actions = plan(state, seeing(state), now=20.0)
    assert not of(Create, actions), "asked RunPod again 19 s after it refused, inside the 30 s cooldown"
    _, actions = plan(state, seeing(state), now=31.0)
    assert len(of(Create, actions)) == 1


def test_demand_goes_to_the_first_pool_with_room() -> None:
    small, big = pool(name="small", max=1), pool(name="big", max=5)
    state = ScalerState({"small": PoolState(small), "big": PoolState(big)})
    seen = Observation({}, (PendingShape(GPU_TASK, 4, ("small", "big")),))
    state, actions = plan(state, seen, now=0.0)
    assert [a.pool for a in of(Create, actions)] == ["small"], "small comes first and has room for one pod"
    assert state.pools["small"].demand == 4
    state, actions = plan(state, seen, now=1.0)
    assert state.pools["big"].demand == 4, "small is full: the next look gives the demand to big"
    assert [a.pool for a in of(Create, actions)] == ["big"] * 4


# -- pods that do not come, or will not go ---------------------------------------------------


def test_a_pod_that_never_registers_is_terminated() -> None:
    config = pool(register_timeout_s=600, min=1)
    starting = PodRecord(ref=1, pool="a100", requested_at=0.0, state=STARTING, pod_id="silent")
    state = fleet(config, starting)
    _, actions = plan(state, seeing(state), now=600.0)
    assert not of(Terminate, actions)
    state, actions = plan(state, seeing(state), now=601.0)
    assert [a.pod_id for a in of(Terminate, actions)] == ["silent"]
    assert "did not register within 600 s" in records(actions, "register_timeout")[0].message
    assert len(of(Create, actions)) == 1, "the pool is refilled to its minimum at once"


def test_a_failed_terminate_keeps_the_pod_and_tries_again() -> None:
    state = fleet(pool(max=1), running(1))
    state, actions = plan(state, seeing(state), now=1000.0)
    [terminate] = of(Terminate, actions)
    state, actions = terminate_failed(state, "a100", terminate.ref, "RunPod answered 500")
    [pod] = state.pools["a100"].pods
    assert pod.pod_id == "pod1" and pod.state == DRAINING, "the pod was forgotten after a failed terminate"
    assert "could not terminate pod pod1: RunPod answered 500" in records(actions, "terminate_failed")[0].message
    # The next look tries again, and keeps the pod (and its bill) until a terminate succeeds.
    state, actions = plan(state, seeing(state), now=1001.0)
    assert [a.pod_id for a in of(Terminate, actions)] == ["pod1"], "the terminate was not tried again"
    assert [(p.pod_id, p.state) for p in state.pools["a100"].pods] == [("pod1", TERMINATING)]


# -- adoption after a restart -----------------------------------------------------------------


def test_running_pods_of_a_pool_are_adopted_after_a_restart() -> None:
    config = pool(min=1, max=2)
    other = pool(name="a100-big")
    state = ScalerState({"a100": PoolState(config), "a100-big": PoolState(other)})
    listed = [
        Pod("p1", name="gpucp-a100-0a1b2c3d", desired_status="RUNNING", gpu_count=1, cost_per_hr=1.64),
        Pod("p2", name="gpucp-a100-big-0a1b2c3d", desired_status="RUNNING", gpu_count=1),
        Pod("p3", name="gpucp-a100-deadbeef", desired_status="EXITED"),
        Pod("p4", name="someone-elses-pod", desired_status="RUNNING"),
        Pod("p5", name="gpucp-h100-0a1b2c3d", desired_status="RUNNING"),
    ]
    adopts = plan_adoption(state, listed)
    assert [(a.pool, a.pod.id) for a in adopts] == [("a100", "p1"), ("a100-big", "p2")]
    for adopt in adopts:
        state, actions = adopted(state, adopt, now=0.0)
        assert "its cost is counted from now" in records(actions, "adopted")[0].message
    assert plan_adoption(state, listed) == [], "a pod already managed is adopted twice"

    # The adopted pod counts toward min: no new pod is created for it, and its agent registers.
    state, actions = plan(state, Observation({}), now=1.0)
    assert not of(Create, actions), f"created a pod although an adopted one fills the minimum: {actions}"
    state, actions = plan(state, Observation({"p1": worker("p1")}), now=2.0)
    assert records(actions, "registered") and state.pools["a100"].pods[0].state == RUNNING


def test_plan_does_not_change_the_state_it_is_given() -> None:
    state = fleet(pool(min=1), running(1))
    before = repr(state)
    plan(state, seeing(state, pending=5), now=1000.0)
    assert repr(state) == before
