"""Each task's event history: durable with the task, bounded, read back by GetTaskEvents.

The task book makes an event for every transition; this module stores it in the same group
commit as the task's own write, so the history never says more than the task row does. A task
keeps its first FIRST_EVENTS events and its latest LAST_EVENTS: one retried a hundred times (four
events an attempt) keeps how it began and how it ended, and costs at most
FIRST_EVENTS + LAST_EVENTS rows. Rows go when their task is deleted (a trigger in the store).

The submission is not stored as an event: the task's own row, committed before anybody hears
of the task, already says it (its creation time); GetTaskEvents makes the event from it. That
spares a third of the history's writes on the hot path (a noop makes three events).
"""

from __future__ import annotations

from controlplane.book import PENDING, Cause, Entry, Event, TaskBook
from controlplane.record import TaskRecord
from controlplane.store import Store
from gpucp.v1 import scheduler_pb2

SUBMITTED = str(Cause.SUBMITTED)  # also the reason of every submission event
FIRST_EVENTS = 20
LAST_EVENTS = 100


class History:
    def __init__(self, book: TaskBook, store: Store) -> None:
        self.book = book
        self.store = store
        book.journal(self.record)

    def resume(self, entries: list[Entry]) -> None:
        """Tasks read back at start-up continue their histories where they stopped."""
        seqs = self.store.last_event_seqs()
        for entry in entries:
            entry.events = seqs.get(entry.rec.handle, 1)  # 1: its submission, which is not stored

    def record(self, rec: TaskRecord, event: Event) -> None:
        if event.cause == SUBMITTED:
            return  # the task's row says it (see above)
        self.store.add_event(rec.handle, event)
        if event.seq > FIRST_EVENTS + LAST_EVENTS:
            # The newest LAST_EVENTS stay; the one that just left them goes, unless it is one of the first.
            self.store.trim_event(rec.handle, event.seq - LAST_EVENTS)

    async def events(self, rec: TaskRecord) -> tuple[list[scheduler_pb2.TaskEvent], int]:
        """The task's stored events, oldest first, and how many were dropped between the first and the latest."""
        await self.store.flush()  # what happened so far is in the answer
        submitted = Event(1, rec.created_at_ms, PENDING, 0, "", Cause.SUBMITTED, SUBMITTED, "", 0.0)
        stored = await self.store.events(rec.handle)
        events = [submitted.proto(rec.id), *(Event(*row).proto(rec.id) for row in stored)]
        omitted = events[-1].seq - len(events)
        return events, omitted
