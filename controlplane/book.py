"""The task book: where every task the control plane tracks is, changed in one place.

A task's proto state (PENDING, ASSIGNED, RUNNING, terminal) does not say everything the control
plane must know about it: a PENDING task may sit in the core's queue or wait out a retry
backoff, a RUNNING one may be held by the core on a worker or be an orphan of a restart whose
agent has not re-attached it, a finished one may still be committing. `Hold` names those places,
and `TaskBook.move` is the only function that changes a task's state or place: counts,
side indexes and observers follow from it.

Every move (and `note`, for what happens without one: a submission, a progress report) makes one
Event with its time, attempt, worker, cause and reason: a plain tuple, made into a TaskEvent
message only for those who ask (watchers, GetTaskEvents), since every task makes four. Journal observers (the durable
event history, logs, metrics) hear every event as it happens; announce observers (watchers and
waiters) hear the events meant for them, a finished task's only once its outcome is durable.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

from controlplane.record import TaskRecord
from gpucp.v1 import common_pb2, scheduler_pb2

PENDING = common_pb2.TASK_STATE_PENDING
ASSIGNED = common_pb2.TASK_STATE_ASSIGNED
RUNNING = common_pb2.TASK_STATE_RUNNING
SUCCEEDED = common_pb2.TASK_STATE_SUCCEEDED
FAILED = common_pb2.TASK_STATE_FAILED
CANCELLED = common_pb2.TASK_STATE_CANCELLED
TIMED_OUT = common_pb2.TASK_STATE_TIMED_OUT

# Finished tasks kept in memory after they end (older ones are read back from the store).
RECENT_TERMINAL = 50_000
# An event's reason is cut to this many characters: a lost worker's reason quotes a stream error,
# and a task's whole history must fit in one response.
MAX_REASON_CHARS = 1000


class Cause(enum.StrEnum):
    """What made a task's event: a stable word (TaskEvent.cause, a metric label, a log field)."""

    SUBMITTED = "submitted"
    QUEUED = "queued"  # back in the queue after a retry backoff
    ASSIGNED = "assigned"
    STARTED = "started"
    PROGRESS = "progress"
    RETRYING = "retrying"  # an attempt failed or timed out; the task waits out a backoff
    REQUEUED_WORKER_LOST = "requeued_worker_lost"
    REQUEUED_HANDED_BACK = "requeued_handed_back"  # its worker gave back an attempt asked back for a steal
    REQUEUED_ORPHAN = "requeued_orphan"  # running before a restart; its agent did not re-attach it
    REQUEUED_STORE_FAILED = "requeued_store_failed"  # its assignment could not be made durable, or its payload read
    REATTACHED = "reattached"
    FINISHED = "finished"


class Event(NamedTuple):
    """One thing that happened to a task; its fields are TaskEvent's but the task id."""

    seq: int
    at_ms: int
    state: common_pb2.TaskState
    attempt: int
    worker_id: str
    cause: str
    reason: str
    error: str
    progress: float

    def proto(self, task_id: str) -> scheduler_pb2.TaskEvent:
        return scheduler_pb2.TaskEvent(task_id=task_id, **self._asdict())


Observer = Callable[[TaskRecord, Event], None]


# The reasons of the events the history derives from a task's row rather than stores (history.py).
def assigned_reason(worker_id: str, gpus: Iterable[int]) -> str:
    shown = ", ".join(map(str, gpus))
    return f"assigned to {worker_id}" + (f" (GPUs {shown})" if shown else "")


def succeeded_reason(worker_id: str) -> str:
    return f"succeeded on {worker_id}"


class Hold(enum.Enum):
    """Where a task is, beyond its proto state."""

    QUEUED = "in the core's queue"
    BACKOFF = "waiting out a retry backoff"
    ORPHANED = "running before a restart, its agent not back yet"
    PLACED = "held by the core on a worker"
    SETTLING = "finished, its outcome being committed"
    DONE = "finished and stored"


@dataclass(eq=False, slots=True)
class Entry:
    """What the control plane keeps about one unfinished task beside its record."""

    rec: TaskRecord
    hold: Hold
    retry_timer: asyncio.TimerHandle | None = None
    queued_at: float = 0.0  # time.monotonic() when it last entered the queue
    failed_on: list[str] = field(default_factory=list)  # workers its attempts failed on
    # Work stealing: the attempt asked back from its worker and the idle worker that will take it.
    revoke: tuple[int, int] | None = None
    events: int = 0  # events recorded so far: the next one's seq is this plus one
    outcome: Event | None = None  # a finished task's event, announced once durable
    # Monotonic ms of its placement on a worker without prefetch, until it starts (0: not measured).
    placed_ms: int = 0


class TaskBook:
    """Every unfinished task and the recently finished ones, by id and by core handle."""

    def __init__(self) -> None:
        self.tasks: dict[str, TaskRecord] = {}  # every unfinished task and the recent finished
        self.live: dict[int, Entry] = {}  # unfinished tasks by core handle
        self.orphans: dict[int, Entry] = {}  # the live entries held ORPHANED
        self.revoking: dict[int, Entry] = {}  # the live entries with a steal in flight
        self.settling: set[str] = set()  # ids of finished tasks whose outcome is not yet durable
        self.counts: collections.Counter[int] = collections.Counter()  # tasks by proto state
        self.pending_by_tenant: collections.Counter[str] = collections.Counter()  # for max_pending quotas
        # Bytes of the specs of pending tasks, all and by tenant: --max-queue-bytes, max_pending_bytes.
        self.pending_bytes = 0
        self.pending_bytes_by_tenant: collections.Counter[str] = collections.Counter()
        self._idempotency: dict[tuple[str, str], str] = {}
        self._recent_terminal: collections.deque[str] = collections.deque()
        self._observers: list[Observer] = []
        self._journal: list[Observer] = []

    def observe(self, observer: Observer) -> None:
        """Call `observer` with the record and its event after every change watchers are told of."""
        self._observers.append(observer)

    def journal(self, observer: Observer) -> None:
        """Call `observer` with the record and its event after every event, as it happens."""
        self._journal.append(observer)

    def announce(self, rec: TaskRecord, event: Event) -> None:
        for observer in self._observers:
            observer(rec, event)

    def note(self, entry: Entry, cause: Cause, reason: str, at_ms: int = 0) -> None:
        """Record and announce an event that changes neither state nor place (a submission, progress),
        stamped `at_ms` as in `move`."""
        self.announce(entry.rec, self._record(entry, cause, reason, at_ms))

    def _record(self, entry: Entry, cause: Cause, reason: str, at_ms: int = 0) -> Event:
        rec = entry.rec
        entry.events += 1
        if len(reason) > MAX_REASON_CHARS:
            reason = reason[: MAX_REASON_CHARS - 3] + "..."
        # The cause as a plain str: an enum member hashes and compares in Python, and every
        # observer looks at it.
        event = Event(
            entry.events, at_ms or int(time.time() * 1000), rec.state, rec.attempt, rec.worker_id, str(cause), reason,
            rec.error, rec.progress,
        )
        for observer in self._journal:
            observer(rec, event)
        return event

    # -- admission ------------------------------------------------------------------------------

    def add(self, rec: TaskRecord, hold: Hold, *, counted: bool = True) -> Entry | None:
        """Track a task that is new or was read back from the store; counted: add it to counts."""
        self.tasks[rec.id] = rec
        if counted:
            self.counts[rec.state] += 1
            if rec.state == PENDING:
                self._count_pending(rec, 1)
        if rec.spec.idempotency_key:
            self._idempotency[(rec.tenant, rec.spec.idempotency_key)] = rec.id
        if rec.terminal:
            return None
        entry = self.live[rec.handle] = Entry(rec, hold)
        if hold is Hold.ORPHANED:
            self.orphans[rec.handle] = entry
        return entry

    def _count_pending(self, rec: TaskRecord, sign: int) -> None:
        self.pending_by_tenant[rec.tenant] += sign
        self.pending_bytes += sign * rec.spec_bytes
        self.pending_bytes_by_tenant[rec.tenant] += sign * rec.spec_bytes

    def idempotent(self, tenant: str, key: str) -> str | None:
        return self._idempotency.get((tenant, key))

    def claim_key(self, tenant: str, key: str, task_id: str) -> None:
        self._idempotency[(tenant, key)] = task_id

    def release_key(self, tenant: str, key: str, task_id: str) -> None:
        if self._idempotency.get((tenant, key)) == task_id:
            del self._idempotency[(tenant, key)]

    def forget(self, task_id: str, tenant: str, key: str, state: common_pb2.TaskState) -> None:
        """A finished task was deleted from the store."""
        self.counts[state] -= 1
        self.tasks.pop(task_id, None)
        if key:
            self.release_key(tenant, key, task_id)

    # -- the one transition ---------------------------------------------------------------------

    def move(
        self, entry: Entry, state: common_pb2.TaskState, hold: Hold, cause: Cause, reason: str, *,
        announce: bool = True, at_ms: int = 0,
    ) -> None:
        """Put a live task in `state` and `hold` because of `cause` (`reason` in words): the only place
        either changes.

        A task that was backing off has its retry timer cancelled; one leaving ASSIGNED has its
        steal request forgotten (it started, was handed back, requeued or finished); a finished
        task leaves the live set (SETTLING until its outcome is durable, then `settled`).
        Observers hear of the change unless `announce` is False (a finished task is announced
        only once it is durable: see `settled`). The event is stamped `at_ms` when given (0: now):
        the time the record itself keeps for it, so the history can derive it from the record.
        """
        rec = entry.rec
        if entry.retry_timer is not None:  # any move ends a backoff; a new one sets its timer after
            entry.retry_timer.cancel()
            entry.retry_timer = None
        if entry.hold is Hold.ORPHANED and hold is not Hold.ORPHANED:
            del self.orphans[rec.handle]
        elif hold is Hold.ORPHANED and entry.hold is not Hold.ORPHANED:
            self.orphans[rec.handle] = entry
        if state != ASSIGNED and entry.revoke is not None:
            entry.revoke = None
            del self.revoking[rec.handle]
        self.counts[rec.state] -= 1
        self.counts[state] += 1
        if (rec.state == PENDING) != (state == PENDING):
            self._count_pending(rec, 1 if state == PENDING else -1)
        rec.state = state
        entry.hold = hold
        event = self._record(entry, cause, reason, at_ms)
        if hold is Hold.SETTLING:
            entry.outcome = event
            self._retire(entry)
        elif announce:
            self.announce(rec, event)

    def ask_back(self, entry: Entry, thief: int) -> None:
        """Record a steal request for the entry's current attempt."""
        entry.revoke = (entry.rec.attempt, thief)
        self.revoking[entry.rec.handle] = entry

    def _retire(self, entry: Entry) -> None:
        rec = entry.rec
        del self.live[rec.handle]
        self.settling.add(rec.id)
        self._recent_terminal.append(rec.id)
        while len(self._recent_terminal) > RECENT_TERMINAL:
            old = self.tasks.pop(self._recent_terminal.popleft(), None)
            if old is not None and old.spec.idempotency_key:
                self.release_key(old.tenant, old.spec.idempotency_key, old.id)

    def settled(self, entry: Entry) -> None:
        """The finished task's outcome is durable (or failed to be): announce it."""
        entry.hold = Hold.DONE
        self.settling.discard(entry.rec.id)
        assert entry.outcome is not None  # set by the move to SETTLING
        self.announce(entry.rec, entry.outcome)

    # -- lookups --------------------------------------------------------------------------------

    def entry(self, task_id: str) -> Entry | None:
        """The live entry of an unfinished task, by id."""
        rec = self.tasks.get(task_id)
        return None if rec is None or rec.terminal else self.live.get(rec.handle)

    def orphans_of(self, worker_id: str) -> Iterator[Entry]:
        return (e for e in list(self.orphans.values()) if e.rec.worker_id == worker_id)

    def entries(self, handles: Iterable[int]) -> Iterator[Entry]:
        """The live entries among `handles`."""
        for handle in handles:
            entry = self.live.get(handle)
            if entry is not None:
                yield entry
