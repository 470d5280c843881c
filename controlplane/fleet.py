"""The fleet: connected agents, their registration, heartbeats, loss, drain and quarantine.

A worker is one agent stream. This module admits it (and hands the tasks it still runs to the
task life cycle for re-attachment), keeps its heartbeats and GPU health, notices it is gone (a
closed stream gets a reconnect grace; silence past the heartbeat timeout does not), drains it,
and quarantines it when it keeps failing tasks that others complete.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from controlplane.auth import printable
from controlplane.config import ServerConfig
from controlplane.core import Core, mono_ms
from controlplane.errors import AlreadyExists, ControlError, FailedPrecondition, NotFound, Unavailable
from controlplane.notify import wall_ms
from controlplane.reputation import Reputation
from controlplane.validation import validate_register
from gpucp.batching import by_size
from gpucp.v1 import common_pb2, workers_pb2

if TYPE_CHECKING:
    from controlplane.lifecycle import Lifecycle

log = logging.getLogger("gpucp.controlplane")
LOST_KEPT = 100  # recently lost workers remembered for the dashboard


@dataclass(eq=False)
class WorkerConn:
    """One connected agent stream."""

    worker_id: str
    handle: int
    register: workers_pb2.Register
    connected_at_ms: int
    peer: str = ""  # the stream's remote address, as gRPC names it
    principal: str = ""  # who registered it (controlplane.auth): only they may replace it
    outbox: asyncio.Queue[workers_pb2.ControlMessage | None] = field(
        default_factory=asyncio.Queue
    )
    last_heartbeat_ms: int = 0
    gpu_stats: Sequence[common_pb2.GpuStats] = ()
    # Draining: an operator asked (DrainWorker, until UndrainWorker), or the agent says it is
    # (it is leaving, or it echoes the operator's drain) in its heartbeats.
    drained_by_operator: bool = False
    agent_draining: bool = False
    lost_reason: str = ""
    grace_timer: asyncio.TimerHandle | None = None
    gpu_health: dict[int, bool] = field(default_factory=dict)  # GPUs last reported unhealthy: False

    @property
    def draining(self) -> bool:
        return self.drained_by_operator or self.agent_draining

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

    def cancel(self, task_id: str, attempt: int, *, if_not_started: bool = False) -> None:
        self.send(
            workers_pb2.ControlMessage(
                cancel=workers_pb2.CancelAssignment(task_id=task_id, attempt=attempt, if_not_started=if_not_started)
            )
        )

    def close(self, reason: str) -> None:
        self.lost_reason = reason
        self.outbox.put_nowait(None)


class Fleet:
    def __init__(
        self, config: ServerConfig, core: Core, wake: Callable[[], None], arm_deadline: Callable[[], None]
    ) -> None:
        self.config = config
        self.core = core
        self.wake = wake
        self.arm_deadline = arm_deadline  # the core has a new heartbeat deadline
        self.workers: dict[str, WorkerConn] = {}
        self.by_handle: dict[int, WorkerConn] = {}
        self.reputation = Reputation(
            threshold=config.quarantine_after,
            window_s=config.blame_window_s,
            cooling_s=config.quarantine_cooling_s,
            max_cooling_s=config.quarantine_max_cooling_s,
        )
        self.accepting = True
        self.lost_total = 0  # workers lost without draining, since start (gpucp_workers_lost_total)
        # The latest losses (worker id, reason, wall ms): a lost worker leaves `workers`, and the
        # dashboard still shows it as lost rather than letting it vanish.
        self.lost_recently: collections.deque[tuple[str, str, int]] = collections.deque(maxlen=LOST_KEPT)
        self.tasks: Lifecycle  # set by the control plane: the two call each other

    def name(self, handle: int) -> str | None:
        conn = self.by_handle.get(handle)
        return None if conn is None else conn.worker_id

    # -- joining and leaving --------------------------------------------------------------------

    def register(self, reg: workers_pb2.Register, peer: str = "", principal: str = "") -> WorkerConn:
        """Admit an agent: validate what it says it has, then re-attach its running tasks.

        A worker id held by a live stream is not taken over: only a reconnect of the same agent
        process (the same instance id) replaces that stream. A holder whose stream already
        closed (waiting out its reconnect grace) is replaced by whoever registers as the same
        principal; another principal never gets its tasks.
        """
        reg.DiscardUnknownFields()  # kept for as long as the worker is: only what is known and bounded
        try:
            validate_register(reg)
            if not self.accepting:
                raise Unavailable("the control plane is shutting down")
            old = self.workers.get(reg.worker_id)
            if old is not None and old.principal != principal:
                raise AlreadyExists(self._held(old))
            if old is not None and not old.lost_reason and (
                not reg.instance_id or reg.instance_id != old.register.instance_id
            ):
                raise AlreadyExists(self._held(old))
        except ControlError as exc:
            log.warning("refused agent %s%s: %s", printable(reg.worker_id), f" from {peer}" if peer else "", exc)
            raise
        if old is not None and not old.lost_reason:
            log.info("worker %s reconnected; its new stream replaces the old one", printable(reg.worker_id))
        # The tasks of the connection this one replaces: re-attached if the agent still runs them.
        carried = set(self._retire(old, "replaced by a new connection")) if old is not None else set()
        gpus = sorted(reg.gpus, key=lambda g: g.index)
        handle = self.core.scheduler.add_worker(
            reg.slots,
            [(g.memory_total_mb, g.compute_capability, g.name) for g in gpus],
            reg.backend,
            list(reg.labels),
            list(reg.kinds),
            mono_ms(),
            cost_per_hour=reg.cost_per_hour,
        )
        conn = WorkerConn(reg.worker_id, handle, reg, connected_at_ms=wall_ms(), peer=peer, principal=principal)
        if self.reputation.quarantined(reg.worker_id, time.monotonic()):
            self.core.scheduler.set_quarantined(handle, True)  # reconnecting does not end a quarantine
        conn.last_heartbeat_ms = conn.connected_at_ms
        self.workers[reg.worker_id] = conn
        self.by_handle[handle] = conn
        conn.send(
            workers_pb2.ControlMessage(
                registered=workers_pb2.Registered(
                    worker_id=reg.worker_id,
                    heartbeat_interval_ms=self.config.heartbeat_interval_ms,
                )
            )
        )
        self.tasks.reattach(conn, reg.running, carried)
        self.arm_deadline()
        self.wake()
        log.info("worker %s joined: %d slots, %d GPUs", printable(reg.worker_id), reg.slots, len(gpus))
        return conn

    @staticmethod
    def _held(holder: WorkerConn) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(holder.connected_at_ms / 1000))
        age_s = max(0.0, (wall_ms() - holder.connected_at_ms) / 1000)
        where = f" from {holder.peer}" if holder.peer else ""
        return (
            f"worker id {holder.worker_id!r} is held by another agent connected{where} since {since} "
            f"({age_s:.0f} s ago); give this agent its own --worker-id, or stop the other one first"
        )

    def _retire(self, conn: WorkerConn, reason: str) -> list[int]:
        """Forget a connection; returns the handles of the tasks it held (not yet requeued)."""
        del self.workers[conn.worker_id]
        del self.by_handle[conn.handle]
        if conn.grace_timer is not None:
            conn.grace_timer.cancel()
        conn.close(reason)
        return self.core.scheduler.remove_worker(conn.handle)

    def disconnected(self, conn: WorkerConn, reason: str) -> None:
        """A stream ended: give the agent the reconnect grace before its tasks move elsewhere."""
        if self.workers.get(conn.worker_id) is not conn or conn.grace_timer is not None:
            return
        if not self.accepting or conn.draining or self.config.grace_s <= 0:
            # Shutting down, or a draining agent that left on purpose: nobody to wait for.
            self.lost(conn, reason)
            return
        conn.lost_reason = reason
        self.core.scheduler.set_draining(conn.handle, True)  # no new work while it is away
        conn.grace_timer = asyncio.get_running_loop().call_later(
            self.config.grace_s, self.lost, conn, f"{reason}, and it did not reconnect"
        )

    def lost(self, conn: WorkerConn, reason: str) -> None:
        """Drop a worker; every task it held is requeued at once."""
        if self.workers.get(conn.worker_id) is not conn:
            return
        handles = self._retire(conn, reason)
        if not self.accepting:
            # Shutting down: its tasks stay assigned in the store and re-attach after the restart.
            return
        if conn.draining:
            # It drained (by request or on its own SIGTERM) and left: what it was asked to do.
            log.info("worker %s left after draining (%s)", conn.worker_id, reason)
        else:
            self.lost_total += 1
            self.lost_recently.append((conn.worker_id, reason, wall_ms()))
            log.warning("worker %s lost: %s", conn.worker_id, reason)
        self.tasks.requeue_lost(handles, f"worker {conn.worker_id} was lost ({reason})")
        self.wake()

    def overdue(self, handles: Sequence[int]) -> None:
        """Workers the core found silent past the heartbeat timeout."""
        for handle in handles:
            conn = self.by_handle.get(handle)
            if conn is not None:
                self.lost(conn, f"no heartbeat for {self.config.heartbeat_timeout_s:g} s")

    def close(self) -> None:
        self.accepting = False
        for conn in list(self.workers.values()):
            conn.close("the control plane is shutting down")

    # -- while connected ------------------------------------------------------------------------

    def heartbeat(self, conn: WorkerConn, hb: workers_pb2.Heartbeat) -> None:
        if conn.lost_reason:
            return
        conn.last_heartbeat_ms = wall_ms()
        conn.gpu_stats = list(hb.gpus)
        self.core.scheduler.heartbeat(conn.handle, mono_ms())
        registered = len(conn.register.gpus)
        for stats in hb.gpus:
            if stats.index >= registered:
                continue  # not a GPU it registered: there is nothing to mark
            if conn.gpu_health.get(stats.index, True) != stats.healthy:
                conn.gpu_health[stats.index] = stats.healthy
                self.core.scheduler.set_gpu_healthy(conn.handle, stats.index, stats.healthy)
                state = "healthy again" if stats.healthy else "unhealthy: no new tasks get it"
                log.warning("worker %s GPU %d is %s", conn.worker_id, stats.index, state)
        if hb.draining != conn.agent_draining:
            was = conn.draining
            conn.agent_draining = hb.draining
            if conn.draining != was:
                self.core.scheduler.set_draining(conn.handle, conn.draining)
                log.info("worker %s %s", conn.worker_id, "is draining" if conn.draining else "takes new tasks again")
                if not conn.draining:
                    self.wake()

    def send_cancel(self, worker_id: str, task_id: str, attempt: int) -> None:
        """Tell the worker running an attempt to stop it, if that worker is connected."""
        conn = self.workers.get(worker_id)
        if conn is not None:
            conn.cancel(task_id, attempt)

    def drain(self, worker_id: str) -> None:
        conn = self.workers.get(worker_id)
        if conn is None:
            raise NotFound(f"no connected worker has id {printable(worker_id, 64)}")
        conn.drained_by_operator = True
        self.core.scheduler.set_draining(conn.handle, True)
        conn.send(workers_pb2.ControlMessage(drain=workers_pb2.Drain()))
        log.info("worker %s drained by request: it takes no new tasks", worker_id)

    def undrain(self, worker_id: str) -> None:
        """End an operator's drain: the worker takes new tasks again (an agent that is leaving stays drained)."""
        conn = self.workers.get(worker_id)
        if conn is None:
            raise NotFound(f"no connected worker has id {printable(worker_id, 64)}")
        if conn.lost_reason:
            raise FailedPrecondition(
                f"worker {worker_id!r} is disconnected ({conn.lost_reason}); undrain it once it is back"
            )
        conn.drained_by_operator = False
        conn.send(workers_pb2.ControlMessage(undrain=workers_pb2.Undrain()))
        if conn.agent_draining:
            # It echoed the drain: its next heartbeat ends it, unless the agent itself is leaving.
            log.info("worker %s undrained: it takes new tasks once its agent confirms", worker_id)
            return
        self.core.scheduler.set_draining(conn.handle, False)
        log.info("worker %s undrained: it takes new tasks again", worker_id)
        self.wake()

    # -- reputation -----------------------------------------------------------------------------

    def judge(self, worker_id: str, succeeded: bool, fixed_after: Sequence[str] = ()) -> None:
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
            self.core.scheduler.set_quarantined(conn.handle, True)
        asyncio.get_running_loop().call_later(cooling_s, self._end_quarantine, worker_id)

    def _end_quarantine(self, worker_id: str) -> None:
        self.reputation.release(worker_id)
        conn = self.workers.get(worker_id)
        if conn is not None:
            self.core.scheduler.set_quarantined(conn.handle, False)
            self.wake()

    def state(self, conn: WorkerConn, now: float) -> str:
        """The worker's state: connected, draining, quarantined or disconnected (gone, within the
        reconnect grace); `now` is time.monotonic(), read once by callers that ask for many workers."""
        if conn.lost_reason:
            return "disconnected"
        if conn.draining:
            return "draining"
        if self.reputation.quarantined(conn.worker_id, now):
            return "quarantined"
        return "connected"

    def health(self, conn: WorkerConn) -> str:
        if conn.draining:
            return "draining"
        health = self.reputation.health(conn.worker_id, time.monotonic())
        sick = sorted(i for i, ok in conn.gpu_health.items() if not ok)
        return f"{health}; unhealthy GPUs {sick}" if sick else health
