"""Dispatch: one coroutine that places what can run, commits the assignments and sends them.

Dispatch is event-driven: a task arriving, a slot freeing or a worker joining calls `wake`; the
pump places, persists and sends. The core's deadlines (heartbeats, task timeouts) and delay
scheduling are alarms on its clock, not polling loops.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import time

from controlplane.book import ASSIGNED, Entry, TaskBook
from controlplane.config import ServerConfig
from controlplane.core import Core, mono_ms
from controlplane.fleet import Fleet, WorkerConn
from controlplane.lifecycle import Lifecycle
from controlplane.prefetch import PrefetchTuner
from controlplane.record import TaskRecord
from controlplane.store import Store, next_read
from controlplane.timers import Alarm
from gpucp import hops, tracing
from gpucp.v1 import workers_pb2

log = logging.getLogger("gpucp.controlplane")

PLACE_BATCH = 4096
STEAL_BATCH = 256
# While a slot is free and placed tasks wait, stealing looks again this often: a prefetched task
# whose affinity key is warm where it waits may go to a cold idle worker only after its locality
# wait, and nothing else may happen in the fleet meanwhile.
STEAL_AGAIN_MS = 250
# A task whose payload could not be read back is placed again after this long.
UNREAD_RETRY_S = 1.0


class Dispatcher:
    def __init__(self, config: ServerConfig, store: Store, book: TaskBook, core: Core) -> None:
        self.config = config
        self.store = store
        self.book = book
        self.core = core
        self._event = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._placements: collections.deque[tuple[float, int]] = collections.deque()
        # Heartbeat and task deadlines the core keeps.
        self._deadline_alarm = Alarm(self._on_deadline)
        self._judge_after_ms = 0  # after the loop was held, no deadline is judged before this
        # Wakes the dispatcher when a task waiting for a warm worker may take any worker: a
        # quiet fleet has no other event that would.
        self._locality_alarm = Alarm(self.wake)
        self._steal_alarm = Alarm(self.wake)
        # Per-worker prefetch depths tuned to the queued work, unless --prefetch-depth fixes them.
        self.prefetch = PrefetchTuner(core, self.wake) if config.adaptive_prefetch else None
        # Assigned tasks whose payloads are to be read back from the store (handle: attempt), those
        # not read yet in the order they were placed, and the one reader that reads and sends them.
        # One reader for every round: at most READ_BYTES of payloads are read and not yet handed to
        # the agents' streams, however many rounds placed large tasks meanwhile.
        self._reading: dict[int, int] = {}
        self._unread: collections.deque[tuple[Entry, WorkerConn, int]] = collections.deque()
        self._reader: asyncio.Task[None] | None = None
        # Who waits for the next round's assignments to be on their streams (after_next_round).
        self._round_waiters: list[asyncio.Future[None]] = []
        self.fleet: Fleet
        self.tasks: Lifecycle

    def wake(self) -> None:
        self._event.set()

    def after_next_round(self) -> asyncio.Future[None]:
        """Resolved once the next dispatch round has handed what it placed to the agents' streams
        (at the round's end if it placed nothing; at once when no round is to come). The round is
        asked for: nothing else may be about to wake the dispatcher (a resent submit queues nothing)."""
        fut = asyncio.get_running_loop().create_future()
        if self._task is None or self._task.done():
            fut.set_result(None)
        else:
            self._round_waiters.append(fut)
            self.wake()
        return fut

    def start(self) -> None:
        self._task = asyncio.create_task(self._pump(), name="gpucp-dispatch")
        self.wake()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._reader is not None:
            self._reader.cancel()
        self._deadline_alarm.cancel()
        self._locality_alarm.cancel()
        self._steal_alarm.cancel()
        if self.prefetch is not None:
            self.prefetch.close()
        _resolve(self._round_waiters)

    async def _pump(self) -> None:
        while True:
            await self._event.wait()
            self._event.clear()
            waiters, self._round_waiters = self._round_waiters, []
            stored = None
            try:
                stored = self._dispatch()
            except Exception:
                log.exception("dispatch failed; it runs again on the next event")
            if stored is None:
                _resolve(waiters)
            else:
                # After the assignments' own callback: they are on their streams by then.
                stored.add_done_callback(functools.partial(_resolve, waiters))

    def _dispatch(self) -> asyncio.Future[None] | None:
        """Place what can be placed now; each batch goes to its agents once it is committed.
        Returns the commit of the last batch (None: nothing placed).

        Placing does not wait for the commit: the next batch is placed while the last one is
        being written, and a group commit carries both. Nothing is placed on a lease past due
        (PostgreSQL replicas): a standby may be taking over; a renewal wakes this again.
        """
        if not self.store.leading():
            return None
        stored = None
        while True:
            if self.prefetch is not None:
                self.prefetch.retune()
            placements = self.core.scheduler.place(mono_ms(), PLACE_BATCH)
            if not placements:
                if self.config.prefetching:
                    self._steal()
                    if self.core.scheduler.slots()[1] and self.book.counts[ASSIGNED]:
                        self._steal_alarm.arm(mono_ms() + STEAL_AGAIN_MS)
                self._locality_alarm.arm(self.core.scheduler.next_locality_ms())
                return stored
            hops.mark("s.placed")
            self.arm_deadline()
            assigned = self.tasks.assigned(placements)
            self._count_placements(len(assigned))
            # The assignment is durable before any agent hears of it, so after a restart no
            # attempt number can be handed out twice.
            stored = self.store.save([entry.rec for entry, _, _ in assigned])
            stored.add_done_callback(functools.partial(self._assignments_stored, assigned))

    def _assignments_stored(
        self, assigned: list[tuple[Entry, WorkerConn, int]], fut: asyncio.Future[None]
    ) -> None:
        hops.mark("s.assignment_committed")
        # While the write was in flight a task may have been cancelled, lost with its worker, or
        # placed again: only attempts that are still current go out (or back to the queue).
        current = [(entry, conn, attempt) for entry, conn, attempt in assigned if _current(entry, attempt)]
        if fut.cancelled() or fut.exception() is not None:
            log.error("could not persist %d assignments (%s)", len(assigned), fut.exception())
            self._unsent([entry for entry, _, _ in current])
            return
        stored = [item for item in current if item[0].rec.stored_payload]
        self._send([(entry, conn, b"") for entry, conn, _ in current if not entry.rec.stored_payload])
        if stored:
            for entry, _, attempt in stored:
                self._reading[entry.rec.handle] = attempt
            self._unread.extend(stored)
            if self._reader is None:
                self._reader = asyncio.create_task(self._send_stored())
                self._reader.add_done_callback(self._read)

    async def _send_stored(self) -> None:
        """Send the assignments whose payloads were left to the store, read back a run of at most
        READ_BYTES at a time (those placed while one run is read go in the next).

        After each read the attempt must still be current: the task may have been cancelled or
        lost with its worker meanwhile. One whose payload cannot be read goes back to the queue
        with the reason: an accepted task is never failed for the store's trouble.
        """
        try:
            while self._unread:
                await self._send_read(next_read(self._unread, lambda item: item[0].rec.stored_payload))
        finally:
            self._reader = None  # with no await since the queue was seen empty: nothing is left behind

    async def _send_read(self, chunk: list[tuple[Entry, WorkerConn, int]]) -> None:
        why = "its payload is not in the store"
        try:
            payloads = await self.store.payloads([entry.rec.handle for entry, _, _ in chunk])
        except self.store.errors as exc:
            payloads, why = {}, f"its payload could not be read from the store ({exc})"
        ready, unread = [], []
        for entry, conn, attempt in chunk:
            if self._reading.get(entry.rec.handle) == attempt:  # not a later attempt's read
                del self._reading[entry.rec.handle]
            if not _current(entry, attempt):
                continue
            payload = payloads.get(entry.rec.handle)
            if payload is None:
                unread.append(entry)
            else:
                ready.append((entry, conn, payload))
        if unread:
            log.error("%d assigned tasks go back to the queue: %s", len(unread), why)
            self.store.save([entry.rec for entry in self._unsent(unread, why, UNREAD_RETRY_S)])
        self._send(ready)

    def _unsent(
        self, entries: list[Entry], why: str = "its assignment could not be stored", retry_in_s: float = 0.0
    ) -> list[Entry]:
        """Assignments no agent will hear of go back to the queue, unless the server is stopping:
        then their workers are already retired (the core holds no placement of theirs to release)
        and each task stays as the store has it, read back by the next start."""
        if not self.fleet.accepting:
            return []
        return self.tasks.store_failed(entries, why, retry_in_s)

    def _read(self, reading: asyncio.Task[None]) -> None:
        if not reading.cancelled() and reading.exception() is not None:
            # Its run stays assigned unsent until the deadlines requeue it (those after it go with
            # the next reader): say why.
            log.error("sending assignments read back from the store failed", exc_info=reading.exception())

    def _send(self, ready: list[tuple[Entry, WorkerConn, bytes]]) -> None:
        """Send each agent its assignments in one message; `bytes`: a payload read back from the store."""
        batches: dict[WorkerConn, list[workers_pb2.Assignment]] = {}
        for entry, conn, payload in ready:
            if not conn.lost_reason:
                assignment = self._assignment(entry.rec, conn.worker_id)
                if payload:
                    assignment.task.spec.payload = payload
                batches.setdefault(conn, []).append(assignment)
        for conn, batch in batches.items():
            conn.assign(batch)

    @staticmethod
    def _assignment(rec: TaskRecord, worker_id: str) -> workers_pb2.Assignment:
        """The Assignment of the task's current attempt; a traced task's carries the context of
        a gpucp.queue span, from its submission (or, for a later attempt, now) to this dispatch."""
        assignment = workers_pb2.Assignment(task=rec.proto_fields())
        if rec.trace:
            start_ns = rec.created_at_ms * 1_000_000 if rec.attempt == 1 else None
            attributes: dict[str, str | int] = {
                "gpucp.task_id": rec.id, "gpucp.attempt": rec.attempt, "gpucp.worker_id": worker_id
            }
            with tracing.span("gpucp.queue", rec.trace, attributes=attributes, start_ns=start_ns):
                assignment.trace_context.update(tracing.current())
        return assignment

    def _steal(self) -> None:
        """Ask backlogged workers for prefetched tasks that idle workers could run now.

        Two-phase: the revoke is only a request. The agent hands the attempt back (PENDING) if it
        has not started, and the task is queued again; if it started, RUNNING arrives instead and
        the revoke simply failed. The agent decides, so the task runs exactly once either way.
        """
        busy_thieves = {e.revoke[1] for e in self.book.revoking.values() if e.revoke is not None}
        for task, victim, thief in self.core.scheduler.steal_candidates(STEAL_BATCH):
            entry = self.book.live.get(task)
            conn = self.fleet.by_handle.get(victim)
            if (
                entry is None
                or task in self._reading  # its assignment is not sent yet: there is nothing to ask back
                or conn is None
                or conn.lost_reason
                or entry.rec.state != ASSIGNED
                or entry.revoke is not None
                or thief in busy_thieves  # one steal in flight per idle worker is enough
            ):
                continue
            self.book.ask_back(entry, thief)
            busy_thieves.add(thief)
            conn.cancel(entry.rec.id, entry.rec.attempt, if_not_started=True)

    def _count_placements(self, n: int) -> None:
        now = time.monotonic()
        self._placements.append((now, n))
        while self._placements and self._placements[0][0] < now - 10:
            self._placements.popleft()

    def placements_per_second(self) -> float:
        now = time.monotonic()
        return sum(n for t, n in self._placements if t >= now - 10) / 10.0

    # -- deadlines ------------------------------------------------------------------------------

    def arm_deadline(self) -> None:
        at = self.core.scheduler.next_deadline_ms()
        self._deadline_alarm.arm(None if at is None else max(at, self._judge_after_ms))

    def _on_deadline(self) -> None:
        late_ms = self._deadline_alarm.late_ms()
        if late_ms > self.config.heartbeat_interval_ms / 2:
            # The event loop was held (a long call, a swap storm): the heartbeats that arrived
            # meanwhile are still unread, so every worker would look silent. Look again once the
            # readers have caught up: only a deadline met on time judges a worker.
            log.warning("the event loop was held for %d ms; deadlines are checked again shortly", late_ms)
            self._judge_after_ms = mono_ms() + self.config.heartbeat_interval_ms // 4
            self.arm_deadline()
            return
        workers, tasks = self.core.scheduler.expired(mono_ms())
        self.fleet.overdue(workers)
        self.tasks.timed_out(tasks)
        self.arm_deadline()


def _current(entry: Entry, attempt: int) -> bool:
    """Whether `attempt` is still the task's assigned one (not cancelled, lost or placed again)."""
    return entry.rec.state == ASSIGNED and entry.rec.attempt == attempt


def _resolve(waiters: list[asyncio.Future[None]], _: object = None) -> None:
    """Wake each waiter (`_`: the commit whose callback this is)."""
    for fut in waiters:
        if not fut.done():
            fut.set_result(None)
    waiters.clear()
