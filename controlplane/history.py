"""Each task's event history: durable with the task, bounded, read back by GetTaskEvents.

The task book makes an event for every transition; this module stores it in the same group
commit as the task's own write, so the history never says more than the task row does. A task
keeps its first FIRST_EVENTS events and its latest LAST_EVENTS: one retried a hundred times (four
events an attempt) keeps how it began and how it ended, and costs at most
FIRST_EVENTS + LAST_EVENTS rows. Rows go when their task is deleted (a trigger in the store).

An event the task's row already says is not stored; GetTaskEvents makes it from the row, with
the same fields. The row says three of the four events of a task that ran once and succeeded,
which spares most of the history's writes on the hot path (`benches/bench_e2e.py`):
- its submission (seq 1): the row's creation time;
- its first assignment (seq 2): the row's first attempt, worker, GPUs and placement time
  (started_at_ms), as long as the row is on its first attempt. It is stored when the task is
  assigned again, before the row takes the next attempt's worker;
- its success (the last event): the row's final state, worker and finished_at_ms, when the
  event carries no error and no progress (which the row does not keep).
What happens between (a start, whose time the row lacks, progress, retries, requeues with their
reasons) is stored as it happens. Every other event is stored too: only an event equal to the
one its row would give is left out.
"""

from __future__ import annotations

from controlplane.book import (
    ASSIGNED,
    PENDING,
    SUCCEEDED,
    Cause,
    Entry,
    Event,
    TaskBook,
    assigned_reason,
    succeeded_reason,
)
from controlplane.record import TaskRecord
from controlplane.store import Store
from gpucp.v1 import scheduler_pb2

SUBMITTED = str(Cause.SUBMITTED)  # also the reason of every submission event
FIRST_EVENTS = 20
LAST_EVENTS = 100
_ASSIGNED = str(Cause.ASSIGNED)
_FINISHED = str(Cause.FINISHED)


def submitted_event(rec: TaskRecord) -> Event:
    return Event(1, rec.created_at_ms, PENDING, 0, "", SUBMITTED, SUBMITTED, "", 0.0)


def assigned_event(rec: TaskRecord) -> Event:
    """The first assignment, as a row on its first attempt says it."""
    return Event(2, rec.started_at_ms, ASSIGNED, 1, rec.worker_id, _ASSIGNED,
                 assigned_reason(rec.worker_id, rec.gpu_indices), "", 0.0)


def succeeded_event(rec: TaskRecord, seq: int) -> Event:
    """The success of a task whose row says it succeeded."""
    return Event(seq, rec.finished_at_ms, SUCCEEDED, rec.attempt, rec.worker_id, _FINISHED,
                 succeeded_reason(rec.worker_id), "", 0.0)


class History:
    def __init__(self, book: TaskBook, store: Store) -> None:
        self.book = book
        self.store = store
        # Live tasks on their first attempt whose assignment is not stored, by handle: stored if
        # they are assigned again (the row then loses it), forgotten when they finish.
        self.unstored: dict[int, Event] = {}
        book.journal(self.record)

    def resume(self, entries: list[Entry]) -> None:
        """Tasks read back at start-up continue their histories where they stopped."""
        seqs = self.store.event_seqs()
        for entry in entries:
            rec = entry.rec
            first, last = seqs.get(rec.handle, (0, 1))  # 1: its submission, which is not stored
            entry.events = last
            if rec.attempt == 1 and first != 2:
                self.unstored[rec.handle] = assigned_event(rec)
                entry.events = max(last, 2)

    def record(self, rec: TaskRecord, event: Event) -> None:
        cause = event.cause
        if cause == SUBMITTED:
            return  # the task's row says it (see above)
        if cause == _ASSIGNED:
            first = self.unstored.pop(rec.handle, None)
            if first is not None:
                self.store.add_event(rec.handle, first)
            elif event.seq == 2 and event == assigned_event(rec):
                self.unstored[rec.handle] = event
                return
        elif cause == _FINISHED:
            self.unstored.pop(rec.handle, None)  # the final row is on the first attempt: it says it
            if rec.state == SUCCEEDED and event == succeeded_event(rec, event.seq):
                self._trim(rec, event)
                return
        self.store.add_event(rec.handle, event)
        self._trim(rec, event)

    def _trim(self, rec: TaskRecord, event: Event) -> None:
        if event.seq > FIRST_EVENTS + LAST_EVENTS:
            # The newest LAST_EVENTS stay; the one that just left them goes, unless it is one of the first.
            self.store.trim_event(rec.handle, event.seq - LAST_EVENTS)

    async def events(self, rec: TaskRecord) -> tuple[list[scheduler_pb2.TaskEvent], int]:
        """The task's events, oldest first, and how many were dropped between the first and the latest."""
        await self.store.flush()  # what happened so far is in the answer
        stored = [Event(*row) for row in await self.store.events(rec.handle)]
        derived = [submitted_event(rec)]
        if rec.attempt >= 1 and (not stored or stored[0].seq != 2):
            derived.append(assigned_event(rec))
        events = [*derived, *stored]
        if rec.state == SUCCEEDED and events[-1].cause != _FINISHED:
            events.append(succeeded_event(rec, events[-1].seq + 1))
        omitted = events[-1].seq - len(events)
        return [event.proto(rec.id) for event in events], omitted
