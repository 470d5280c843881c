"""Task lifecycle and dispatch: the state machine between the gRPC services, the store and the core.

All of it runs on the server's one event loop. The Rust core decides (which task goes where, which
worker or task is overdue); this module carries the decisions out: it persists them, tells agents,
and wakes waiters. Dispatch is event-driven: a task arriving, a slot freeing or a worker joining
sets `_wake`; one pump coroutine places, persists and sends. Timers exist only for deadlines and
retry backoff.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import heapq
import logging
import random
import re
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

from controlplane._core import CoreError, Scheduler
from controlplane.config import ServerConfig
from controlplane.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from controlplane.reputation import Reputation
from controlplane.store import Store, StoreError, TaskRecord, new_task_id
from controlplane.validation import validate_register, validate_spec
from gpucp.batching import by_size
from gpucp.v1 import admin_pb2, common_pb2, scheduler_pb2, workers_pb2

log = logging.getLogger("gpucp.controlplane")

PENDING = common_pb2.TASK_STATE_PENDING
ASSIGNED = common_pb2.TASK_STATE_ASSIGNED
RUNNING = common_pb2.TASK_STATE_RUNNING
SUCCEEDED = common_pb2.TASK_STATE_SUCCEEDED
FAILED = common_pb2.TASK_STATE_FAILED
CANCELLED = common_pb2.TASK_STATE_CANCELLED
TIMED_OUT = common_pb2.TASK_STATE_TIMED_OUT

MAX_BATCH = 10_000
RECENT_TERMINAL = 50_000
WATCH_BUFFER = 10_000
PLACE_BATCH = 4096
STEAL_BATCH = 256
SWEEP_BATCH = 500  # finished tasks deleted per commit: each batch holds the loop a few ms
_WORKER_HANDLE = re.compile(r"\bworker (\d+)\b")  # how the core names workers in its explanations


def wall_ms() -> int:
    return int(time.time() * 1000)


def mono_ms() -> int:
    """The clock the core's deadlines run on: never jumps with the wall clock."""
    return int(time.monotonic() * 1000)


def core_priority(priority: int) -> int:
    """Proto Priority (UNSPECIFIED=NORMAL, LOW..URGENT = 1..4) to the core's classes 0..3."""
    return 1 if priority == common_pb2.PRIORITY_UNSPECIFIED else priority - 1


class Alarm:
    """One timer on the mono_ms() clock for "call back at the earliest of these times"."""

    def __init__(self, callback: Callable[[], object]) -> None:
        self._callback = callback
        self._timer: asyncio.TimerHandle | None = None
        self._at = 0

    def arm(self, at_ms: int | None) -> None:
        """Fire at at_ms, unless already set to fire earlier; None leaves it as it is."""
        if at_ms is None or (self._timer is not None and self._at <= at_ms):
            return
        self.cancel()
        self._at = at_ms
        self._timer = asyncio.get_running_loop().call_later(max(0.0, (at_ms - mono_ms()) / 1000), self._fire)

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _fire(self) -> None:
        self._timer = None
        self._callback()


@dataclass(eq=False)
class WorkerConn:
    """One connected agent stream."""

    worker_id: str
    handle: int
    register: workers_pb2.Register
    connected_at_ms: int
    outbox: asyncio.Queue[workers_pb2.ControlMessage | None] = field(
        default_factory=asyncio.Queue
    )
    last_heartbeat_ms: int = 0
    gpu_stats: Sequence[common_pb2.GpuStats] = ()
    draining: bool = False
    lost_reason: str = ""
    grace_timer: asyncio.TimerHandle | None = None
    gpu_health: dict[int, bool] = field(default_factory=dict)  # GPUs last reported unhealthy: False

    def send(self, msg: workers_pb2.ControlMessage) -> None:
        self.outbox.put_nowait(msg)

    def assign(self, assignments: list[workers_pb2.Assignment]) -> None:
        """Send assignments: in a few messages if the agent accepts batches, else one by one."""
        if not self.register.accepts_batches:
            for assignment in assignments:
                self.send(workers_pb2.ControlMessage(assign=assignment))
            return
        for run in by_size(assignments):
            if len(run) == 1:
                self.send(workers_pb2.ControlMessage(assign=run[0]))
            else:
                self.send(workers_pb2.ControlMessage(assign_many=workers_pb2.Assignments(assignments=run)))

    def close(self, reason: str) -> None:
        self.lost_reason = reason
        self.outbox.put_nowait(None)


@dataclass(eq=False)
class Watcher:
    task_ids: frozenset[str]
    tenant: str
    queue: asyncio.Queue[scheduler_pb2.TaskEvent | None] = field(
        default_factory=lambda: asyncio.Queue(WATCH_BUFFER)
    )
    overflowed: bool = False

    async def events(self) -> AsyncIterator[scheduler_pb2.TaskEvent]:
        while True:
            event = await self.queue.get()
            if event is None:
                if self.overflowed:
                    raise ResourceExhausted(
                        f"this watcher fell more than {WATCH_BUFFER} events behind; watch again"
                    )
                return
            yield event

    def wants(self, rec: TaskRecord) -> bool:
        if self.task_ids and rec.id not in self.task_ids:
            return False
        return not self.tenant or rec.tenant == self.tenant


class ControlPlane:
    def __init__(self, config: ServerConfig, store: Store) -> None:
        self.config = config
        self.store = store
        self.core = Scheduler(
            heartbeat_timeout_ms=int(config.heartbeat_timeout_s * 1000),
            w_availability=config.w_availability,
            w_success=config.w_success,
            w_speed=config.w_speed,
            w_affinity=config.w_affinity,
            w_fit=config.w_fit,
            w_cost=config.w_cost,
            policy=config.policy,
            priority_weights=list(config.priority_weights),
            aging_ms=int(config.aging_s * 1000),
            prefetch_depth=config.prefetch_depth,
            warmup_successes=config.warmup_successes,
            locality_wait_ms=int(config.locality_wait_s * 1000),
        )
        for kind, policy in config.kind_policies:
            self.core.set_kind_policy(kind, policy)
        self._tenants: dict[str, int] = {}
        self._affinities: dict[str, int] = {"": 0}
        self.tasks: dict[str, TaskRecord] = {}  # every unfinished task and the recent finished
        self.live: dict[int, TaskRecord] = {}  # unfinished tasks by core handle
        self._recent_terminal: collections.deque[str] = collections.deque()
        self._idempotency: dict[tuple[str, str], str] = {}
        self._shapes: dict[tuple[object, ...], int] = {}
        self.workers: dict[str, WorkerConn] = {}
        self._worker_by_handle: dict[int, WorkerConn] = {}
        self._retry_timers: dict[int, asyncio.TimerHandle] = {}
        self._orphans: dict[int, TaskRecord] = {}  # running before a restart, agent not back yet
        self._attached_now: set[int] = set()  # scratch of register(): tasks its agent kept
        self._failed_on: dict[int, list[str]] = {}  # workers each unfinished task failed on
        # Work stealing: prefetched tasks asked back from their worker, task -> (attempt, thief).
        # An entry lives while the task stays ASSIGNED (see _set_state), so no task is asked twice.
        self._revoking: dict[int, tuple[int, int]] = {}
        # Queue timeout: when each pending task was queued, and a heap of (deadline, task).
        self._queued_at: dict[int, float] = {}
        self._queue_deadlines: list[tuple[float, int]] = []
        self._queue_timer: asyncio.TimerHandle | None = None
        self.reputation = Reputation(
            threshold=config.quarantine_after,
            window_s=config.blame_window_s,
            cooling_s=config.quarantine_cooling_s,
            max_cooling_s=config.quarantine_max_cooling_s,
        )
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        # Tasks whose outcome is being committed: terminal in memory, not yet to anyone else.
        self._settling: set[str] = set()
        self._watchers: set[Watcher] = set()
        self.state_counts: collections.Counter[int] = collections.Counter()
        self.stale_updates = 0
        self._placements: collections.deque[tuple[float, int]] = collections.deque()
        self._next_handle = 1
        self._wake = asyncio.Event()
        self._pump_task: asyncio.Task[None] | None = None
        self._sweep_task: asyncio.Task[None] | None = None
        # Heartbeat and task deadlines the core keeps.
        self._deadline_alarm = Alarm(self._on_deadline)
        # Wakes the dispatcher when a task waiting for a warm worker may take any worker: a
        # quiet fleet has no other event that would.
        self._locality_alarm = Alarm(self._wake.set)
        self.accepting = True

    # -- life cycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Reload every unfinished task from the store and start dispatching."""
        self._next_handle = self.store.max_handle() + 1
        self.state_counts.update(self.store.count_by_state())
        loop = asyncio.get_running_loop()
        pending: list[TaskRecord] = []
        for rec in self.store.load_unfinished():
            self._track(rec)
            if rec.state == PENDING:
                pending.append(rec)
            else:
                self._orphans[rec.handle] = rec
        self._push(pending)
        if self._orphans:
            log.info(
                "%d tasks were running before the restart; waiting %.1f s for their agents",
                len(self._orphans),
                self.config.heartbeat_timeout_s,
            )
            loop.call_later(self.config.heartbeat_timeout_s, self._requeue_orphans)
        self._pump_task = asyncio.create_task(self._pump(), name="gpucp-dispatch")
        if self.config.keep_finished_s > 0:
            self._sweep_task = asyncio.create_task(self._sweep(), name="gpucp-sweep")
        self._wake.set()

    async def stop(self) -> None:
        self.accepting = False
        for task in (self._pump_task, self._sweep_task):
            if task is not None:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
        for timer in (*self._retry_timers.values(), self._queue_timer):
            if timer is not None:
                timer.cancel()
        self._deadline_alarm.cancel()
        self._locality_alarm.cancel()
        for conn in list(self.workers.values()):
            conn.close("the control plane is shutting down")
        for watcher in self._watchers:
            watcher.queue.put_nowait(None)
        await self.store.flush()

    async def _sweep(self) -> None:
        """Now and then, delete the tasks that finished more than keep_finished_s ago."""
        keep_ms = int(self.config.keep_finished_s * 1000)
        every_s = min(60.0, max(1.0, self.config.keep_finished_s / 10))
        while True:
            await asyncio.sleep(every_s)
            try:
                deleted = await self._delete_finished_before(wall_ms() - keep_ms)
            except Exception:
                log.exception("deleting old finished tasks failed; tried again in %.0f s", every_s)
                continue
            if deleted:
                log.info("deleted %d tasks that finished more than %.0f s ago", deleted, keep_ms / 1000)

    async def _delete_finished_before(self, cutoff_ms: int) -> int:
        """Delete the tasks that finished before cutoff_ms, a batch per commit; how many."""
        deleted = 0
        while True:
            expired = await self.store.expired(cutoff_ms, SWEEP_BATCH)
            if not expired:
                return deleted
            await self.store.delete([handle for handle, *_ in expired])
            for _, task_id, tenant, key, state in expired:
                self.state_counts[state] -= 1
                self.tasks.pop(task_id, None)
                if key and self._idempotency.get((tenant, key)) == task_id:
                    del self._idempotency[(tenant, key)]
            deleted += len(expired)

    # -- bookkeeping ----------------------------------------------------------------------------

    def _track(self, rec: TaskRecord) -> None:
        self.tasks[rec.id] = rec
        if not rec.terminal:
            self.live[rec.handle] = rec
        if rec.spec.idempotency_key:
            self._idempotency[(rec.tenant, rec.spec.idempotency_key)] = rec.id

    def _set_state(self, rec: TaskRecord, state: int, *, emit: bool = True) -> None:
        self.state_counts[rec.state] -= 1
        self.state_counts[state] += 1
        rec.state = state
        if self._revoking and state != ASSIGNED:
            self._revoking.pop(rec.handle, None)  # started, handed back, requeued or finished
        if emit:
            self._emit(rec)

    def _shape(self, spec: common_pb2.TaskSpec) -> int:
        req = spec.requirements
        key = (
            spec.kind,
            req.gpus,
            req.min_gpu_memory_mb,
            tuple(req.gpu_models),
            req.backend,
            tuple(req.labels),
            req.min_compute_capability,
        )
        shape = self._shapes.get(key)
        if shape is None:
            shape = self.core.shape(
                spec.kind,
                req.gpus,
                req.min_gpu_memory_mb,
                list(req.gpu_models),
                req.backend,
                list(req.labels),
                req.min_compute_capability,
            )
            self._shapes[key] = shape
        return shape

    def _timeout_ms(self, rec: TaskRecord) -> int:
        return rec.spec.timeout_ms or self.config.default_timeout_ms

    def _push(self, recs: Sequence[TaskRecord], avoid_worker: str = "") -> None:
        """Queue tasks; `avoid_worker` (a retry's last worker) is used only if nobody else can."""
        if not recs:
            return
        avoid = self.workers.get(avoid_worker) if avoid_worker else None
        self.core.push_many(
            [r.handle for r in recs],
            [self._shape(r.spec) for r in recs],
            [core_priority(r.spec.priority) for r in recs],
            [r.handle for r in recs],  # FIFO by arrival; a retried task keeps its place
            [self._timeout_ms(r) for r in recs],
            avoid_workers=None if avoid is None else [avoid.handle] * len(recs),
            tenants=[self._tenant(r.tenant) for r in recs],
            affinities=[self._affinity(r.spec.affinity_key) for r in recs],
            hard_affinities=[r.spec.hard_affinity for r in recs],
            now_ms=mono_ms(),
        )
        now = time.monotonic()
        for rec in recs:
            self._queued_at[rec.handle] = now
            heapq.heappush(self._queue_deadlines, (now + self.config.queue_timeout_s, rec.handle))
        self._arm_queue_timer()
        self._wake.set()

    def _arm_queue_timer(self) -> None:
        if self._queue_timer is None and self._queue_deadlines:
            delay = max(0.0, self._queue_deadlines[0][0] - time.monotonic())
            self._queue_timer = asyncio.get_running_loop().call_later(delay, self._on_queue_deadline)

    def _on_queue_deadline(self) -> None:
        """Fail tasks queued for the queue timeout that no connected worker could ever run.

        A task that some worker could run is only waiting its turn: it is checked again one
        queue timeout later, never failed for a busy fleet.
        """
        self._queue_timer = None
        now = time.monotonic()
        timeout = self.config.queue_timeout_s
        while self._queue_deadlines and self._queue_deadlines[0][0] <= now:
            _, handle = heapq.heappop(self._queue_deadlines)
            rec = self.live.get(handle)
            queued_at = self._queued_at.get(handle)
            if rec is None or rec.state != PENDING or queued_at is None or handle in self._retry_timers:
                continue
            if now - queued_at < timeout:
                continue  # requeued since this deadline was set; a later entry covers it
            shape = self._shape(rec.spec)
            if self.core.can_run(shape):
                heapq.heappush(self._queue_deadlines, (now + timeout, handle))
                continue
            reason = self.core.explain(shape, core_priority(rec.spec.priority))
            self.core.remove(handle)
            rec.error = f"no connected worker could run it within the queue timeout of {timeout:g} s: {reason}"
            rec.errors.append(rec.error)
            self._finish(rec, FAILED)
        self._arm_queue_timer()

    def _tenant(self, name: str) -> int:
        tenant = self._tenants.get(name)
        if tenant is None:
            tenant = self._tenants[name] = len(self._tenants) + 1
            weight = dict(self.config.tenant_weights).get(name)
            if weight is not None:
                self.core.set_tenant_weight(tenant, weight)
        return tenant

    def _affinity(self, key: str) -> int:
        affinity = self._affinities.get(key)
        if affinity is None:
            affinity = self._affinities[key] = len(self._affinities)
        return affinity

    def _emit(self, rec: TaskRecord) -> None:
        if not self._watchers:
            return
        event = scheduler_pb2.TaskEvent(
            task_id=rec.id,
            state=rec.state,  # type: ignore[arg-type]
            attempt=rec.attempt,
            worker_id=rec.worker_id,
            at_ms=wall_ms(),
        )
        for watcher in self._watchers:
            if watcher.overflowed or not watcher.wants(rec):
                continue
            try:
                watcher.queue.put_nowait(event)
            except asyncio.QueueFull:
                watcher.overflowed = True
                watcher.queue.get_nowait()
                watcher.queue.put_nowait(None)

    def _finish(self, rec: TaskRecord, state: int) -> None:
        """Make `rec` terminal: persist it, then wake whoever waits for it."""
        rec.finished_at_ms = wall_ms()
        self._set_state(rec, state, emit=False)
        self.live.pop(rec.handle, None)
        self._failed_on.pop(rec.handle, None)
        self._queued_at.pop(rec.handle, None)
        self._recent_terminal.append(rec.id)
        while len(self._recent_terminal) > RECENT_TERMINAL:
            old = self.tasks.pop(self._recent_terminal.popleft(), None)
            if old is not None and old.spec.idempotency_key:
                self._idempotency.pop((old.tenant, old.spec.idempotency_key), None)
        # Waiters and watchers hear of an outcome only once it is durable: one a crash could
        # still undo must not be seen.
        self._settling.add(rec.id)
        self.store.save([rec]).add_done_callback(lambda fut: self._settled(fut, rec))

    def _settled(self, fut: asyncio.Future[None], rec: TaskRecord) -> None:
        if not fut.cancelled() and fut.exception() is not None:
            log.error("the outcome of task %s could not be stored: %s", rec.id, fut.exception())
        self._settling.discard(rec.id)
        self._emit(rec)
        for waiter in self._waiters.pop(rec.id, []):
            if not waiter.done():
                waiter.set_result(None)

    # -- submission ---------------------------------------------------------------------------

    async def submit(self, specs: Sequence[common_pb2.TaskSpec]) -> list[tuple[str, bool]]:
        """Store new tasks (all or none); returns (task_id, duplicate) per spec."""
        if not self.accepting:
            raise Unavailable("the control plane is shutting down; submit to another replica")
        if not specs:
            raise InvalidArgument("specs is empty: send at least one TaskSpec")
        if len(specs) > MAX_BATCH:
            raise InvalidArgument(f"{len(specs)} specs in one batch; the limit is {MAX_BATCH}")
        for i, spec in enumerate(specs):
            try:
                validate_spec(spec, max_payload_bytes=self.config.max_payload_bytes)
            except InvalidArgument as exc:
                raise InvalidArgument(f"specs[{i}]: {exc}" if len(specs) > 1 else str(exc)) from None
        queued = self.state_counts[PENDING]
        if queued + len(specs) > self.config.max_queue:
            raise ResourceExhausted(
                f"the queue is full ({queued} tasks pending, limit {self.config.max_queue}): "
                "retry later, or raise --max-queue"
            )
        known = await self._find_idempotent(specs)
        out: list[tuple[str, bool]] = []
        new: list[TaskRecord] = []
        now = wall_ms()
        for spec in specs:
            tenant = spec.tenant or "default"
            key = (tenant, spec.idempotency_key)
            existing = self._idempotency.get(key) or known.get(key)
            if spec.idempotency_key and existing:
                out.append((existing, True))
                continue
            rec = TaskRecord(
                handle=self._next_handle,
                id=new_task_id(),
                tenant=tenant,
                spec=spec,
                created_at_ms=now,
            )
            self._next_handle += 1
            if spec.idempotency_key:
                self._idempotency[key] = rec.id
            new.append(rec)
            out.append((rec.id, False))
        if not new:
            return out
        try:
            await self.store.insert(new)
        except StoreError as exc:
            for rec in new:
                if rec.spec.idempotency_key:
                    self._idempotency.pop((rec.tenant, rec.spec.idempotency_key), None)
            raise Unavailable(f"the task could not be stored, nothing was accepted: {exc}") from None
        for rec in new:
            self._track(rec)
            self.state_counts[PENDING] += 1
            self._emit(rec)
        self._push(new)
        return out

    async def _find_idempotent(
        self, specs: Sequence[common_pb2.TaskSpec]
    ) -> dict[tuple[str, str], str]:
        """Earlier tasks with the specs' idempotency keys that are no longer held in memory."""
        found: dict[tuple[str, str], str] = {}
        for spec in specs:
            key = (spec.tenant or "default", spec.idempotency_key)
            if spec.idempotency_key and key not in self._idempotency and key not in found:
                task_id = await self.store.find_idempotent(*key)
                if task_id is not None:
                    found[key] = task_id
        return found

    # -- dispatch -----------------------------------------------------------------------------

    async def _pump(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                self._dispatch()
            except Exception:
                log.exception("dispatch failed; it runs again on the next event")

    def _dispatch(self) -> None:
        """Place what can be placed now; each batch goes to its agents once it is committed.

        Placing does not wait for the commit: the next batch is placed while the last one is
        being written, and a group commit carries both.
        """
        while True:
            placements = self.core.place(mono_ms(), PLACE_BATCH)
            if not placements:
                if self.config.prefetch_depth:
                    self._steal()
                self._locality_alarm.arm(self.core.next_locality_ms())
                return
            self._arm_deadline()
            now = wall_ms()
            assigned: list[tuple[TaskRecord, WorkerConn, int]] = []
            for task, worker, gpus in placements:
                rec = self.live[task]
                conn = self._worker_by_handle[worker]
                self._queued_at.pop(task, None)
                rec.attempt += 1
                rec.worker_id = conn.worker_id
                rec.gpu_indices = gpus
                rec.started_at_ms = now
                rec.error = ""
                self._set_state(rec, ASSIGNED)
                assigned.append((rec, conn, rec.attempt))
            self._count_placements(len(assigned))
            # The assignment is durable before any agent hears of it, so after a restart no
            # attempt number can be handed out twice.
            self.store.save([rec for rec, _, _ in assigned]).add_done_callback(
                functools.partial(self._assignments_stored, assigned)
            )

    def _assignments_stored(
        self, assigned: list[tuple[TaskRecord, WorkerConn, int]], fut: asyncio.Future[None]
    ) -> None:
        # While the write was in flight a task may have been cancelled, lost with its worker, or
        # placed again: only attempts that are still current go out (or back to the queue).
        current = [
            (rec, conn) for rec, conn, attempt in assigned if rec.state == ASSIGNED and rec.attempt == attempt
        ]
        if fut.cancelled() or fut.exception() is not None:
            log.error("could not persist %d assignments (%s); requeueing them", len(assigned), fut.exception())
            for rec, _ in current:
                self.core.release(rec.handle)
                rec.attempt -= 1
                self._set_state(rec, PENDING)
                self._push([rec])
            return
        batches: dict[WorkerConn, list[workers_pb2.Assignment]] = {}
        for rec, conn in current:
            if not conn.lost_reason:
                batches.setdefault(conn, []).append(workers_pb2.Assignment(task=rec.proto_fields()))
        for conn, batch in batches.items():
            conn.assign(batch)

    def _steal(self) -> None:
        """Ask backlogged workers for prefetched tasks that idle workers could run now.

        Two-phase: the revoke is only a request. The agent hands the attempt back (PENDING) if it
        has not started, and the task is queued again; if it started, RUNNING arrives instead and
        the revoke simply failed. The agent decides, so the task runs exactly once either way.
        """
        busy_thieves = {thief for _, thief in self._revoking.values()}
        for task, victim, thief in self.core.steal_candidates(STEAL_BATCH):
            rec = self.live.get(task)
            conn = self._worker_by_handle.get(victim)
            if (
                rec is None
                or conn is None
                or conn.lost_reason
                or rec.state != ASSIGNED
                or task in self._revoking
                or thief in busy_thieves  # one steal in flight per idle worker is enough
            ):
                continue
            self._revoking[task] = (rec.attempt, thief)
            busy_thieves.add(thief)
            conn.send(
                workers_pb2.ControlMessage(
                    cancel=workers_pb2.CancelAssignment(
                        task_id=rec.id, attempt=rec.attempt, if_not_started=True
                    )
                )
            )

    def _handed_back(self, rec: TaskRecord) -> None:
        """The agent gave back a prefetched attempt it never started: queue the task again."""
        self.core.release(rec.handle)
        self._set_state(rec, PENDING)
        self.store.save([rec])
        self._push([rec])  # its next assignment gets attempt + 1, which fences this one

    def _count_placements(self, n: int) -> None:
        now = time.monotonic()
        self._placements.append((now, n))
        while self._placements and self._placements[0][0] < now - 10:
            self._placements.popleft()

    def placements_per_second(self) -> float:
        now = time.monotonic()
        return sum(n for t, n in self._placements if t >= now - 10) / 10.0

    # -- deadlines ----------------------------------------------------------------------------

    def _arm_deadline(self) -> None:
        self._deadline_alarm.arm(self.core.next_deadline_ms())

    def _on_deadline(self) -> None:
        workers, tasks = self.core.expired(mono_ms())
        for handle in workers:
            conn = self._worker_by_handle.get(handle)
            if conn is not None:
                timeout = self.config.heartbeat_timeout_s
                self.worker_lost(conn, f"no heartbeat for {timeout:g} s")
        for handle in tasks:
            rec = self.live.get(handle)
            if rec is None:
                continue
            self._stop_on_worker(rec)
            self.core.release(handle)
            self._attempt_failed(rec, f"timed out after {self._timeout_ms(rec)} ms", TIMED_OUT)
        self._arm_deadline()

    # -- outcomes -----------------------------------------------------------------------------

    def _stop_on_worker(self, rec: TaskRecord) -> None:
        conn = self.workers.get(rec.worker_id)
        if conn is not None:
            conn.send(
                workers_pb2.ControlMessage(
                    cancel=workers_pb2.CancelAssignment(task_id=rec.id, attempt=rec.attempt)
                )
            )

    def _retries_allowed(self, rec: TaskRecord) -> int:
        spec = rec.spec
        return spec.max_retries if spec.HasField("max_retries") else self.config.default_max_retries

    def _attempt_failed(self, rec: TaskRecord, error: str, final_state: int) -> None:
        """An attempt failed or timed out: retry with backoff while the budget lasts."""
        rec.error = error
        rec.errors.append(f"attempt {rec.attempt} on {rec.worker_id}: {error}")
        self._failed_on.setdefault(rec.handle, []).append(rec.worker_id)
        self._judge(rec.worker_id, succeeded=False)
        failures = rec.attempt - rec.lost_count
        if failures > self._retries_allowed(rec):
            self._finish(rec, final_state)
            self._wake.set()
            return
        self._set_state(rec, PENDING)
        self.store.save([rec])
        delay = min(self.config.retry_cap_s, self.config.retry_base_s * 2 ** (failures - 1))
        delay *= random.uniform(0.5, 1.0)  # jitter: failures of a burst do not retry in lockstep
        self._retry_timers[rec.handle] = asyncio.get_running_loop().call_later(
            delay, self._retry, rec
        )
        self._wake.set()

    def _retry(self, rec: TaskRecord) -> None:
        del self._retry_timers[rec.handle]
        self._push([rec], avoid_worker=rec.worker_id)

    # -- reputation ---------------------------------------------------------------------------

    def _judge(self, worker_id: str, succeeded: bool, fixed_after: Sequence[str] = ()) -> None:
        """Learn from an outcome on `worker_id`; `fixed_after` are workers this task failed on."""
        now = time.monotonic()
        cooling = self.reputation.outcome(worker_id, succeeded, now)
        if cooling is not None:
            self._quarantine(worker_id, cooling)
        for failed in set(fixed_after) - {worker_id}:
            cooling = self.reputation.blame(failed, now)
            if cooling is not None:
                self._quarantine(failed, cooling)

    def _quarantine(self, worker_id: str, cooling_s: float) -> None:
        log.warning("worker %s quarantined for %.0f s: it fails tasks others complete", worker_id, cooling_s)
        conn = self.workers.get(worker_id)
        if conn is not None:
            self.core.set_quarantined(conn.handle, True)
        asyncio.get_running_loop().call_later(cooling_s, self._end_quarantine, worker_id)

    def _end_quarantine(self, worker_id: str) -> None:
        self.reputation.release(worker_id)
        conn = self.workers.get(worker_id)
        if conn is not None:
            self.core.set_quarantined(conn.handle, False)
            self._wake.set()

    def _requeue_lost(self, rec: TaskRecord, reason: str) -> None:
        rec.lost_count += 1
        rec.error = reason
        rec.errors.append(f"attempt {rec.attempt} on {rec.worker_id}: {reason}")
        if rec.lost_count > self.config.max_worker_losses:
            rec.error = (
                f"lost its worker {rec.lost_count} times; the task may be what crashes its "
                f"workers (last: {reason})"
            )
            self._finish(rec, FAILED)
            return
        self._set_state(rec, PENDING)
        self.store.save([rec])
        self._push([rec])

    def _requeue_orphans(self, handles: Sequence[int] | None = None) -> None:
        """Requeue tasks that were running before a restart and whose agent did not re-attach them."""
        for handle in list(self._orphans) if handles is None else handles:
            rec = self._orphans.pop(handle, None)
            if rec is not None:
                self._requeue_lost(rec, "its worker did not re-attach it after a control-plane restart")

    # -- agents -------------------------------------------------------------------------------

    def register(self, reg: workers_pb2.Register) -> WorkerConn:
        """Admit an agent: validate what it says it has, then re-attach its running tasks."""
        validate_register(reg)
        if not self.accepting:
            raise Unavailable("the control plane is shutting down")
        old = self.workers.get(reg.worker_id)
        # The tasks of the connection this one replaces: re-attached if the agent still runs them.
        carried = set(self._retire(old, "replaced by a new connection")) if old is not None else set()
        gpus = sorted(reg.gpus, key=lambda g: g.index)
        handle = self.core.add_worker(
            reg.slots,
            [(g.memory_total_mb, g.compute_capability, g.name) for g in gpus],
            reg.backend,
            list(reg.labels),
            list(reg.kinds),
            mono_ms(),
            cost_per_hour=reg.cost_per_hour,
        )
        conn = WorkerConn(reg.worker_id, handle, reg, connected_at_ms=wall_ms())
        if self.reputation.quarantined(reg.worker_id, time.monotonic()):
            self.core.set_quarantined(handle, True)  # reconnecting does not end a quarantine
        conn.last_heartbeat_ms = conn.connected_at_ms
        self.workers[reg.worker_id] = conn
        self._worker_by_handle[handle] = conn
        conn.send(
            workers_pb2.ControlMessage(
                registered=workers_pb2.Registered(
                    worker_id=reg.worker_id,
                    heartbeat_interval_ms=self.config.heartbeat_interval_ms,
                )
            )
        )
        for running in reg.running:
            self._reattach(conn, running.task_id, running.attempt, carried)
        for handle in carried:
            rec = self.live.get(handle)
            if rec is not None and rec.handle not in self._attached_now:
                self._requeue_lost(rec, f"worker {reg.worker_id} came back without it")
        left = [h for h, r in self._orphans.items() if r.worker_id == reg.worker_id and h not in self._attached_now]
        if left:
            # It came back without these; give the outcomes it resends on reconnect a moment first.
            asyncio.get_running_loop().call_later(
                self.config.heartbeat_interval_ms / 1000, self._requeue_orphans, left
            )
        self._attached_now.clear()
        self._arm_deadline()
        self._wake.set()
        log.info("worker %s joined: %d slots, %d GPUs", reg.worker_id, reg.slots, len(gpus))
        return conn

    def _reattach(self, conn: WorkerConn, task_id: str, attempt: int, carried: set[int]) -> None:
        """Keep a task the agent still runs, if that attempt is still the task's current one."""
        rec = self.tasks.get(task_id)
        current = (
            rec is not None
            and not rec.terminal
            and rec.attempt == attempt
            and rec.worker_id == conn.worker_id
            and (rec.state == PENDING or rec.handle in self._orphans or rec.handle in carried)
        )
        if not current or rec is None:
            self.stale_updates += 1
            conn.send(
                workers_pb2.ControlMessage(
                    cancel=workers_pb2.CancelAssignment(task_id=task_id, attempt=attempt)
                )
            )
            return
        timer = self._retry_timers.pop(rec.handle, None)
        if timer is not None:
            timer.cancel()
        try:
            self.core.attach(
                rec.handle,
                conn.handle,
                rec.gpu_indices,
                self._shape(rec.spec),
                self._timeout_ms(rec),
                mono_ms(),
            )
        except CoreError as exc:
            log.warning("cannot re-attach %s to %s: %s", task_id, conn.worker_id, exc)
            if timer is not None:
                self._push([rec])
            conn.send(
                workers_pb2.ControlMessage(
                    cancel=workers_pb2.CancelAssignment(task_id=task_id, attempt=attempt)
                )
            )
            return
        self._orphans.pop(rec.handle, None)
        self._attached_now.add(rec.handle)
        if rec.state == PENDING and rec.lost_count > 0 and rec.errors:
            # The loss that requeued it did not happen after all: the same attempt runs on.
            rec.lost_count -= 1
            rec.errors.pop()
        rec.error = ""
        self._set_state(rec, RUNNING)
        self.store.save([rec])

    def heartbeat(self, conn: WorkerConn, hb: workers_pb2.Heartbeat) -> None:
        if conn.lost_reason:
            return
        conn.last_heartbeat_ms = wall_ms()
        conn.gpu_stats = list(hb.gpus)
        self.core.heartbeat(conn.handle, mono_ms())
        registered = len(conn.register.gpus)
        for stats in hb.gpus:
            if stats.index >= registered:
                continue  # not a GPU it registered: there is nothing to mark
            if conn.gpu_health.get(stats.index, True) != stats.healthy:
                conn.gpu_health[stats.index] = stats.healthy
                self.core.set_gpu_healthy(conn.handle, stats.index, stats.healthy)
                state = "healthy again" if stats.healthy else "unhealthy: no new tasks get it"
                log.warning("worker %s GPU %d is %s", conn.worker_id, stats.index, state)
        if hb.draining and not conn.draining:
            conn.draining = True
            self.core.set_draining(conn.handle, True)
            log.info("worker %s is draining", conn.worker_id)

    def update(self, conn: WorkerConn, upd: workers_pb2.TaskUpdate) -> None:
        """Apply an agent's report about one attempt; reports about other attempts are stale."""
        rec = self.tasks.get(upd.task_id)
        if (
            rec is None
            or rec.terminal
            or rec.attempt != upd.attempt
            or rec.worker_id != conn.worker_id
            or conn.lost_reason
        ):
            self.stale_updates += 1
            return
        if upd.state == PENDING:
            revoke = self._revoking.get(rec.handle)
            if rec.state != ASSIGNED or revoke is None or revoke[0] != upd.attempt:
                self.stale_updates += 1
                log.info("worker %s handed back task %s, which is no longer asked back", conn.worker_id, rec.id)
                return
            self._handed_back(rec)
            return
        if upd.state == RUNNING:
            if rec.state == ASSIGNED and rec.handle not in self._orphans:
                # Not persisted: after a restart ASSIGNED and RUNNING are the same (wait for the
                # agent to re-attach), so the write would buy nothing on the hot path.
                self._set_state(rec, RUNNING)  # a revoke in flight has failed
                try:
                    self.core.mark_started(rec.handle, now_ms=mono_ms())
                except CoreError as exc:
                    # More started tasks than slots, or two on one GPU: the agent broke its contract.
                    log.error("worker %s started task %s, which the core refuses: %s", conn.worker_id, rec.id, exc)
                if self.config.prefetch_depth:
                    self._wake.set()  # a worker whose prefetched work all started may steal
            return
        if upd.state not in (SUCCEEDED, FAILED):
            self.stale_updates += 1
            log.warning("worker %s sent an update with state %d", conn.worker_id, upd.state)
            return
        if self._orphans.pop(rec.handle, None) is not None:
            pass  # finished while the control plane was down; the outcome was resent on reconnect
        elif rec.state == PENDING:
            # The agent finished while it was disconnected and its task was waiting to rerun.
            timer = self._retry_timers.pop(rec.handle, None)
            if timer is not None:
                timer.cancel()
            else:
                self.core.remove(rec.handle)
        else:
            runtime = max(0, wall_ms() - rec.started_at_ms)
            self.core.finish(rec.handle, upd.state == SUCCEEDED, runtime)
        self._wake.set()
        if upd.state == SUCCEEDED:
            rec.result = upd.result
            rec.error = ""
            self._judge(conn.worker_id, succeeded=True, fixed_after=self._failed_on.pop(rec.handle, ()))
            self._finish(rec, SUCCEEDED)
        else:
            self._attempt_failed(rec, upd.error or "the handler failed without a message", FAILED)

    def _retire(self, conn: WorkerConn, reason: str) -> list[int]:
        """Forget a connection; returns the handles of the tasks it held (not yet requeued)."""
        del self.workers[conn.worker_id]
        del self._worker_by_handle[conn.handle]
        if conn.grace_timer is not None:
            conn.grace_timer.cancel()
        conn.close(reason)
        return self.core.remove_worker(conn.handle)

    def disconnected(self, conn: WorkerConn, reason: str) -> None:
        """A stream ended: give the agent the reconnect grace before its tasks move elsewhere."""
        if self.workers.get(conn.worker_id) is not conn or conn.grace_timer is not None:
            return
        if not self.accepting or conn.draining or self.config.grace_s <= 0:
            # Shutting down, or a draining agent that left on purpose: nobody to wait for.
            self.worker_lost(conn, reason)
            return
        conn.lost_reason = reason
        self.core.set_draining(conn.handle, True)  # no new work while it is away
        conn.grace_timer = asyncio.get_running_loop().call_later(
            self.config.grace_s, self.worker_lost, conn, f"{reason}, and it did not reconnect"
        )

    def worker_lost(self, conn: WorkerConn, reason: str) -> None:
        """Drop a worker; every task it held is requeued at once."""
        if self.workers.get(conn.worker_id) is not conn:
            return
        handles = self._retire(conn, reason)
        if not self.accepting:
            # Shutting down: its tasks stay assigned in the store and re-attach after the restart.
            return
        log.warning("worker %s lost: %s", conn.worker_id, reason)
        for handle in handles:
            rec = self.live.get(handle)
            if rec is not None:
                self._requeue_lost(rec, f"worker {conn.worker_id} was lost ({reason})")
        self._wake.set()

    # -- queries and commands -----------------------------------------------------------------

    async def get(self, task_id: str) -> TaskRecord:
        if not task_id:
            raise InvalidArgument("task_id is empty")
        rec = self.tasks.get(task_id) or await self.store.get(task_id)
        if rec is None:
            kept = self.config.keep_finished_s
            raise NotFound(
                f"no task has id {task_id!r}"
                + (f": if it was submitted here, it finished more than {kept:g} s ago and was deleted" if kept else "")
            )
        return rec

    def _worker_name(self, match: re.Match[str]) -> str:
        conn = self._worker_by_handle.get(int(match.group(1)))
        return conn.worker_id if conn is not None else match.group(0)

    def predict_runtime_s(self, spec: common_pb2.TaskSpec, worker_id: str) -> float | None:
        """What the core has learned a task like `spec` takes on this worker (None: not yet)."""
        conn = self.workers.get(worker_id)
        if conn is None:
            return None
        ms = self.core.predict_runtime_ms(self._shape(spec), conn.handle)
        return None if ms is None else ms / 1000

    def pending_reason(self, rec: TaskRecord) -> str:
        if rec.state != PENDING:
            return ""
        if rec.handle in self._retry_timers:
            return f"waiting to retry after attempt {rec.attempt} failed: {rec.error}"
        return self.core.explain(self._shape(rec.spec), core_priority(rec.spec.priority))

    def describe(self, rec: TaskRecord) -> common_pb2.Task:
        if rec.handle in self._orphans:
            reason = f"waiting for worker {rec.worker_id} to re-attach after a control-plane restart"
            return rec.to_proto(reason)
        task = rec.to_proto(self.pending_reason(rec) if rec.id in self.tasks else "")
        if rec.state in (ASSIGNED, RUNNING) and rec.id in self.tasks:
            try:
                decision = self.core.explain_placement(rec.handle)
            except CoreError:
                decision = ""  # re-attached rather than placed, or its decision aged out of the core's memory
            task.placement = _WORKER_HANDLE.sub(self._worker_name, decision)
        return task

    async def run(self, spec: common_pb2.TaskSpec, timeout_ms: int) -> TaskRecord:
        """Submit one task and wait for it (RunTask)."""
        [(task_id, _)] = await self.submit([spec])
        return await self.wait(task_id, timeout_ms)

    async def wait(self, task_id: str, timeout_ms: int) -> TaskRecord:
        rec = await self.get(task_id)
        if rec.terminal and rec.id not in self._settling:
            return rec
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(task_id, []).append(fut)
        try:
            await asyncio.wait_for(fut, timeout_ms / 1000 if timeout_ms else None)
        except TimeoutError:
            pass
        finally:
            waiters = self._waiters.get(task_id)
            if waiters and fut in waiters:
                waiters.remove(fut)
                if not waiters:
                    del self._waiters[task_id]
        return self.tasks.get(task_id, rec)

    async def cancel(self, task_id: str) -> int:
        rec = await self.get(task_id)
        if rec.terminal:
            name = common_pb2.TaskState.Name(rec.state).removeprefix("TASK_STATE_").lower()
            raise FailedPrecondition(
                f"task {task_id} is already {name}; only unfinished tasks can be cancelled"
            )
        if rec.state == PENDING:
            timer = self._retry_timers.pop(rec.handle, None)
            if timer is not None:
                timer.cancel()
            else:
                self.core.remove(rec.handle)
        elif self._orphans.pop(rec.handle, None) is None:
            self._stop_on_worker(rec)
            self.core.release(rec.handle)
            self._wake.set()
        rec.error = "cancelled"
        self._finish(rec, CANCELLED)
        await self.store.flush()
        return CANCELLED

    async def list(
        self, state: int, tenant: str, limit: int, page_token: str
    ) -> tuple[list[TaskRecord], str]:
        if state not in common_pb2.TaskState.values():
            raise InvalidArgument(f"state {state} is not a TaskState")
        try:
            after = int(page_token) if page_token else 0
        except ValueError:
            raise InvalidArgument(
                f"page_token {page_token[:40]!r} is not one this server issued"
            ) from None
        limit = min(limit or 100, 1000)
        await self.store.flush()  # the page reflects every transition made so far
        rows = await self.store.page(state, tenant, after, limit)
        recs = [self.tasks.get(r.id, r) for r in rows]
        token = str(rows[-1].handle) if len(rows) == limit else ""
        return recs, token

    def watch(self, task_ids: Sequence[str], tenant: str) -> Watcher:
        """Start recording events for a watcher; call unwatch() when done with it."""
        watcher = Watcher(frozenset(task_ids), tenant)
        self._watchers.add(watcher)
        return watcher

    def unwatch(self, watcher: Watcher) -> None:
        self._watchers.discard(watcher)

    def drain(self, worker_id: str) -> None:
        conn = self.workers.get(worker_id)
        if conn is None:
            raise NotFound(f"no connected worker has id {worker_id!r}")
        conn.draining = True
        self.core.set_draining(conn.handle, True)
        conn.send(workers_pb2.ControlMessage(drain=workers_pb2.Drain()))

    def cluster_stats(self) -> admin_pb2.ClusterStats:
        total, free = self.core.slots()
        by_prio = self.core.pending_by_priority()
        return admin_pb2.ClusterStats(
            workers=len(self.workers),
            slots_total=total,
            slots_free=free,
            tasks_by_state={
                common_pb2.TaskState.Name(s): n for s, n in self.state_counts.items() if n > 0
            },
            queue_depth_by_priority={
                common_pb2.Priority.Name(i + 1): n for i, n in enumerate(by_prio)
            },
            placements_per_second=self.placements_per_second(),
            stale_updates=self.stale_updates,
        )

    def _health(self, conn: WorkerConn) -> str:
        if conn.draining:
            return "draining"
        health = self.reputation.health(conn.worker_id, time.monotonic())
        sick = sorted(i for i, ok in conn.gpu_health.items() if not ok)
        return f"{health}; unhealthy GPUs {sick}" if sick else health

    def worker_infos(self) -> list[admin_pb2.WorkerInfo]:
        out = []
        for conn in self.workers.values():
            slots, free, success, speed, ok, failed = self.core.worker_stats(conn.handle)
            reg = conn.register
            out.append(
                admin_pb2.WorkerInfo(
                    worker_id=conn.worker_id,
                    provider=reg.provider,
                    slots=slots,
                    slots_free=free,
                    gpus=reg.gpus,
                    backend=reg.backend,
                    labels=reg.labels,
                    kinds=reg.kinds,
                    cost_per_hour=reg.cost_per_hour,
                    health=self._health(conn),
                    success_rate=success,
                    speed=speed,
                    tasks_succeeded=ok,
                    tasks_failed=failed,
                    connected_at_ms=conn.connected_at_ms,
                    last_heartbeat_ms=conn.last_heartbeat_ms,
                    gpu_stats=conn.gpu_stats,
                )
            )
        return out
