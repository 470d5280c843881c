"""A task's life after it is accepted: queued, placed, started, retried, requeued, finished.

Every change of a task's state goes through `TaskBook.move`; this module decides which change an
event makes (an agent's update, a lost worker, a timeout, a cancel, a re-attach after a
reconnect or a restart) and carries it out in the core and the store. A finished task is
announced to watchers and waiters only once its outcome is committed.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from collections.abc import Callable, Iterable, Sequence

from controlplane._core import CoreError
from controlplane.book import (
    ASSIGNED,
    CANCELLED,
    FAILED,
    PENDING,
    RUNNING,
    SUCCEEDED,
    TIMED_OUT,
    Cause,
    Entry,
    Hold,
    TaskBook,
    assigned_reason,
    succeeded_reason,
)
from controlplane.config import ServerConfig
from controlplane.core import Core, mono_ms
from controlplane.fleet import Fleet, WorkerConn
from controlplane.notify import wall_ms
from controlplane.prefetch import PrefetchTuner
from controlplane.store import Store
from controlplane.timers import DueHeap
from gpucp import hops
from gpucp.limits import MAX_ERROR_BYTES, MAX_TASK_CONTENT_BYTES
from gpucp.v1 import common_pb2, workers_pb2

log = logging.getLogger("gpucp.controlplane")


def cut_error(text: str) -> str:
    """An agent's error text, cut to MAX_ERROR_BYTES of UTF-8: every attempt's error is kept with the task."""
    encoded = text.encode()
    if len(encoded) <= MAX_ERROR_BYTES:
        return text
    return encoded[: MAX_ERROR_BYTES - 3].decode(errors="ignore") + "..."


class Lifecycle:
    def __init__(
        self,
        config: ServerConfig,
        store: Store,
        book: TaskBook,
        core: Core,
        fleet: Fleet,
        wake: Callable[[], None],
    ) -> None:
        self.config = config
        self.store = store
        self.book = book
        self.core = core
        self.fleet = fleet
        self.wake = wake
        self.prefetch: PrefetchTuner | None = None  # set by the control plane with the dispatcher's
        self.stale_updates = 0
        self._queue_due = DueHeap(self._on_queue_due)

    def close(self) -> None:
        self._queue_due.cancel()
        for entry in self.book.live.values():
            if entry.retry_timer is not None:
                entry.retry_timer.cancel()

    # -- queueing -------------------------------------------------------------------------------

    def queue(self, entries: Sequence[Entry], avoid_worker: str = "") -> None:
        """Put pending tasks in the core's queue; `avoid_worker` (a retry's last worker) only if nobody else can."""
        if not entries:
            return
        avoid = self.fleet.workers.get(avoid_worker) if avoid_worker else None
        self.core.push([e.rec for e in entries], None if avoid is None else avoid.handle)
        now = time.monotonic()
        for entry in entries:
            if entry.hold is not Hold.QUEUED:
                # Only from a backoff (every other way back to the queue moved it first): still
                # PENDING, so watchers have nothing to hear; the history keeps it.
                self.book.move(entry, PENDING, Hold.QUEUED, Cause.QUEUED, "queued again after its retry backoff",
                               announce=False)
            entry.queued_at = now
            self._queue_due.add(now + self.config.queue_timeout_s, entry.rec.handle)
        self.wake()

    def _on_queue_due(self, handle: int, now: float) -> None:
        """Fail a task queued for the queue timeout that no connected worker could ever run.

        A task that some worker could run is only waiting its turn: it is checked again one
        queue timeout later, never failed for a busy fleet.
        """
        entry = self.book.live.get(handle)
        timeout = self.config.queue_timeout_s
        if entry is None or entry.hold is not Hold.QUEUED or now - entry.queued_at < timeout:
            return  # placed, finished, or requeued since this time was set; a later one covers it
        rec = entry.rec
        if self.core.scheduler.can_run(self.core.shape(rec.spec)):
            self._queue_due.add(now + timeout, handle)
            return
        reason = self.core.why_pending(rec)
        self.core.remove(rec)
        rec.error = f"no connected worker could run it within the queue timeout of {timeout:g} s: {reason}"
        rec.errors.append(rec.error)
        self.finish(entry, FAILED, "failed: no connected worker could run it")

    # -- placement ------------------------------------------------------------------------------

    def assigned(self, placements: Iterable[tuple[int, int, tuple[int, ...]]]) -> list[tuple[Entry, WorkerConn, int]]:
        """The core placed these tasks: each gets its next attempt, on its worker."""
        now = wall_ms()
        placed_ms = mono_ms()
        out: list[tuple[Entry, WorkerConn, int]] = []
        for task, worker, gpus in placements:
            entry = self.book.live[task]
            conn = self.fleet.by_handle[worker]
            rec = entry.rec
            self.core.unqueued(rec)
            # A worker without prefetch takes a task only into a free slot: from here to its
            # start is the dispatch round trip the prefetch depth is tuned to.
            tuned = self.prefetch is not None and self.prefetch.depth(worker) == 0
            entry.placed_ms = placed_ms if tuned else 0
            rec.attempt += 1
            rec.worker_id = conn.worker_id
            rec.gpu_indices = list(gpus)
            rec.started_at_ms = now
            rec.error = ""
            rec.progress = 0.0
            self.book.move(
                entry, ASSIGNED, Hold.PLACED, Cause.ASSIGNED,
                assigned_reason(conn.worker_id, gpus), at_ms=now,
            )
            out.append((entry, conn, rec.attempt))
        return out

    def _round_trip(self, entry: Entry) -> None:
        if entry.placed_ms and self.prefetch is not None:
            self.prefetch.round_trip(mono_ms() - entry.placed_ms)
        entry.placed_ms = 0

    def store_failed(
        self, entries: Iterable[Entry], why: str = "its assignment could not be stored", retry_in_s: float = 0.0
    ) -> list[Entry]:
        """Assignments that could not be made durable (or whose payloads could not be read back
        from the store) go back to the queue: no agent heard of them, so their attempts are unused.
        With `retry_in_s` they wait that long first, so a store that cannot be read is not asked
        again at once, round after round."""
        back = []
        for entry in entries:
            self.core.scheduler.release(entry.rec.handle)
            entry.rec.attempt -= 1
            reason = f"requeued: {why}, so no worker heard of it"
            if retry_in_s:
                self.book.move(entry, PENDING, Hold.BACKOFF, Cause.REQUEUED_STORE_FAILED, reason)
                entry.retry_timer = asyncio.get_running_loop().call_later(retry_in_s, self._requeue, entry)
            else:
                self.book.move(entry, PENDING, Hold.QUEUED, Cause.REQUEUED_STORE_FAILED, reason)
            back.append(entry)
        if not retry_in_s:
            self.queue(back)
        return back

    def _requeue(self, entry: Entry) -> None:
        entry.retry_timer = None
        self.queue([entry])

    def handed_back(self, entry: Entry) -> None:
        """The agent gave back a prefetched attempt it never started: queue the task again."""
        self.core.scheduler.release(entry.rec.handle)
        self.book.move(
            entry, PENDING, Hold.QUEUED, Cause.REQUEUED_HANDED_BACK,
            f"requeued: {entry.rec.worker_id} handed it back unstarted, for an idle worker to take",
        )
        self.store.save([entry.rec])
        self.queue([entry])  # its next assignment gets attempt + 1, which fences this one

    # -- what agents report ---------------------------------------------------------------------

    def update(self, conn: WorkerConn, upd: workers_pb2.TaskUpdate) -> None:
        """Apply an agent's report about one attempt; reports about other attempts are stale."""
        entry = self.book.entry(upd.task_id)
        if (
            entry is None
            or entry.rec.attempt != upd.attempt
            or entry.rec.worker_id != conn.worker_id
            or conn.lost_reason
        ):
            self.stale_updates += 1
            return
        rec = entry.rec
        if upd.state == PENDING:
            if rec.state != ASSIGNED or entry.revoke is None or entry.revoke[0] != upd.attempt:
                self.stale_updates += 1
                log.info("worker %s handed back task %s, which is no longer asked back", conn.worker_id, rec.id)
                return
            self.handed_back(entry)
            return
        if upd.state == RUNNING:
            if upd.progress != rec.progress and rec.state == RUNNING:
                rec.progress = upd.progress
                self.book.note(entry, Cause.PROGRESS, f"progress {upd.progress:.0%}")  # news, not a change of state
                return
            if rec.state == ASSIGNED and entry.hold is Hold.PLACED:
                rec.progress = upd.progress
                # Not persisted: after a restart ASSIGNED and RUNNING are the same (wait for the
                # agent to re-attach), so the write would buy nothing on the hot path.
                self.book.move(entry, RUNNING, Hold.PLACED, Cause.STARTED, f"started on {conn.worker_id}")
                self._round_trip(entry)
                # (a revoke in flight has failed)
                try:
                    self.core.scheduler.mark_started(rec.handle, now_ms=mono_ms())
                except CoreError as exc:
                    # More started tasks than slots, or two on one GPU: the agent broke its contract.
                    log.error("worker %s started task %s, which the core refuses: %s", conn.worker_id, rec.id, exc)
                if self.config.prefetching:
                    self.wake()  # a worker whose prefetched work all started may steal
            return
        if upd.state not in (SUCCEEDED, FAILED):
            self.stale_updates += 1
            log.warning("worker %s sent an update with state %d", conn.worker_id, upd.state)
            return
        succeeded, wrong, error = upd.state == SUCCEEDED, upd.state == FAILED and upd.task_error, cut_error(upd.error)
        if succeeded and len(upd.result) + rec.spec_bytes > MAX_TASK_CONTENT_BYTES:
            # The Task carrying both could not be read back in one message: the result is refused.
            succeeded, wrong = False, True
            error = (
                f"its result of {len(upd.result)} bytes does not fit beside its spec in one message "
                f"(together at most {MAX_TASK_CONTENT_BYTES} bytes); "
                "return less, or store it elsewhere and return where"
            )
        if self._withdraw(entry):
            pass
        elif wrong:
            self.core.scheduler.release(rec.handle)  # the worker did its part: nothing to learn of it
        else:
            self.core.scheduler.finish(rec.handle, succeeded, max(0, wall_ms() - rec.started_at_ms))
            self._round_trip(entry)  # an agent reports no start of a task that ended at once
        self.wake()
        if wrong:
            # The task itself is wrong (its payload, its arguments, its result): another attempt or
            # another worker would fail the same way, and this worker is not to blame.
            rec.error = error or "the handler refused the task without a message"
            rec.errors.append(f"attempt {rec.attempt} on {rec.worker_id}: {rec.error} (not retried: the task is wrong)")
            self.finish(entry, FAILED, f"failed on {rec.worker_id}, not retried: the task is wrong")
        elif succeeded:
            rec.result = upd.result
            rec.error = ""
            self.fleet.judge(conn.worker_id, succeeded=True, fixed_after=entry.failed_on)
            self.finish(entry, SUCCEEDED, succeeded_reason(rec.worker_id))
        else:
            self.attempt_failed(entry, error or "the handler failed without a message", FAILED)

    def _withdraw(self, entry: Entry) -> bool:
        """Take a task that is not on a worker out of where it waits; False when the core holds it on one.

        Queued: out of the core's queue. Backing off: its timer is cancelled by the next move. Orphaned:
        it finished while the control plane was down, or the cancel comes before its agent did.
        """
        if entry.hold is Hold.QUEUED:
            self.core.remove(entry.rec)
        return entry.hold is not Hold.PLACED

    # -- outcomes -------------------------------------------------------------------------------

    def finish(self, entry: Entry, state: common_pb2.TaskState, reason: str) -> None:
        """Make a task terminal: persist it, then announce it to whoever waits for it."""
        entry.rec.finished_at_ms = wall_ms()
        self.book.move(entry, state, Hold.SETTLING, Cause.FINISHED, reason, at_ms=entry.rec.finished_at_ms)
        self.store.save([entry.rec]).add_done_callback(functools.partial(self._settled, entry))

    def _settled(self, entry: Entry, fut: asyncio.Future[None]) -> None:
        hops.mark("s.outcome_committed")
        if not fut.cancelled() and fut.exception() is not None:
            if not self.store.leading():
                # Cut from the database or replaced: the replica that leads next settles it (its agent
                # reports it again there), and watchers must not hear of this outcome twice.
                log.error("the outcome of task %s could not be stored (%s); not announced: this control plane "
                          "no longer leads", entry.rec.id, fut.exception())
                return
            log.error("the outcome of task %s could not be stored: %s", entry.rec.id, fut.exception())
        self.book.settled(entry)

    def _retries_allowed(self, entry: Entry) -> int:
        spec = entry.rec.spec
        return spec.max_retries if spec.HasField("max_retries") else self.config.default_max_retries

    def attempt_failed(self, entry: Entry, error: str, final_state: common_pb2.TaskState) -> None:
        """An attempt failed or timed out: retry with backoff while the budget lasts."""
        rec = entry.rec
        rec.error = error
        rec.errors.append(f"attempt {rec.attempt} on {rec.worker_id}: {error}")
        entry.failed_on.append(rec.worker_id)
        self.fleet.judge(rec.worker_id, succeeded=False)
        failures = rec.attempt - rec.lost_count
        allowed = self._retries_allowed(entry)
        outcome = "timed out" if final_state == TIMED_OUT else "failed"
        if failures > allowed:
            self.finish(entry, final_state, f"{outcome} on {rec.worker_id}, its last attempt ({failures} failed)")
            self.wake()
            return
        delay = min(self.config.retry_cap_s, self.config.retry_base_s * 2 ** (failures - 1))
        delay *= random.uniform(0.5, 1.0)  # jitter: failures of a burst do not retry in lockstep
        self.book.move(
            entry, PENDING, Hold.BACKOFF, Cause.RETRYING,
            f"attempt {rec.attempt} {outcome} on {rec.worker_id}; retry {failures} of {allowed} in {delay:.1f} s",
        )
        self.store.save([rec])
        entry.retry_timer = asyncio.get_running_loop().call_later(delay, self._retry, entry)
        self.wake()

    def _retry(self, entry: Entry) -> None:
        entry.retry_timer = None
        self.queue([entry], avoid_worker=entry.rec.worker_id)

    def timed_out(self, handles: Sequence[int]) -> None:
        """Tasks the core found past their timeout: stop them where they run, retry or fail."""
        for entry in self.book.entries(handles):
            self.fleet.send_cancel(entry.rec.worker_id, entry.rec.id, entry.rec.attempt)
            self.core.scheduler.release(entry.rec.handle)
            self.attempt_failed(entry, f"timed out after {self.core.timeout_ms(entry.rec)} ms", TIMED_OUT)

    def requeue_lost(self, handles: Iterable[int], reason: str) -> None:
        for entry in self.book.entries(handles):
            self._requeue_lost(entry, reason, Cause.REQUEUED_WORKER_LOST)

    def _requeue_lost(self, entry: Entry, reason: str, cause: Cause) -> None:
        rec = entry.rec
        rec.lost_count += 1
        rec.error = reason
        rec.errors.append(f"attempt {rec.attempt} on {rec.worker_id}: {reason}")
        if rec.lost_count > self.config.max_worker_losses:
            rec.error = (
                f"lost its worker {rec.lost_count} times; the task may be what crashes its "
                f"workers (last: {reason})"
            )
            self.finish(entry, FAILED, f"failed: lost its worker {rec.lost_count} times")
            return
        self.book.move(entry, PENDING, Hold.QUEUED, cause, f"requeued: {reason}")
        self.store.save([rec])
        self.queue([entry])

    def cancel(self, entry: Entry) -> None:
        if not self._withdraw(entry):
            self.fleet.send_cancel(entry.rec.worker_id, entry.rec.id, entry.rec.attempt)
            self.core.scheduler.release(entry.rec.handle)
            self.wake()
        entry.rec.error = "cancelled"
        self.finish(entry, CANCELLED, "cancelled by request")

    # -- re-attachment --------------------------------------------------------------------------

    def requeue_orphans(self, entries: Iterable[Entry]) -> None:
        """Requeue tasks that were running before a restart and whose agent did not re-attach them."""
        for entry in entries:
            if entry.hold is Hold.ORPHANED:
                self._requeue_lost(
                    entry, "its worker did not re-attach it after a control-plane restart", Cause.REQUEUED_ORPHAN
                )

    def reattach(self, conn: WorkerConn, running: Sequence[workers_pb2.RunningTask], carried: set[int]) -> None:
        """A worker (re)joined: keep the tasks it still runs; requeue those it came back without.

        `carried` are the tasks its previous connection held.
        """
        attached: set[int] = set()
        for task in running:
            entry = self._reattach_one(conn, task.task_id, task.attempt, carried)
            if entry is not None:
                attached.add(entry.rec.handle)
        self.requeue_lost(
            (h for h in carried if h not in attached), f"worker {conn.worker_id} came back without it"
        )
        left = [e for e in self.book.orphans_of(conn.worker_id) if e.rec.handle not in attached]
        if left:
            # It came back without these; give the outcomes it resends on reconnect a moment first.
            asyncio.get_running_loop().call_later(
                self.config.heartbeat_interval_ms / 1000, self.requeue_orphans, left
            )

    def _reattach_one(self, conn: WorkerConn, task_id: str, attempt: int, carried: set[int]) -> Entry | None:
        """Keep a task the agent still runs, if that attempt is still the task's current one."""
        entry = self.book.entry(task_id)
        if (
            entry is None
            or entry.rec.attempt != attempt
            or entry.rec.worker_id != conn.worker_id
            or not (entry.rec.state == PENDING or entry.hold is Hold.ORPHANED or entry.rec.handle in carried)
        ):
            self.stale_updates += 1
            conn.cancel(task_id, attempt)
            return None
        rec = entry.rec
        try:
            self.core.attach(rec, conn.handle)
        except CoreError as exc:
            log.warning("cannot re-attach %s to %s: %s", task_id, conn.worker_id, exc)
            conn.cancel(task_id, attempt)
            return None
        if rec.state == PENDING and rec.lost_count > 0 and rec.errors:
            # The loss that requeued it did not happen after all: the same attempt runs on.
            rec.lost_count -= 1
            rec.errors.pop()
        rec.error = ""
        self.book.move(entry, RUNNING, Hold.PLACED, Cause.REATTACHED, f"re-attached: {conn.worker_id} still runs it")
        self.store.save([rec])
        return entry
