"""Scheduler.Session: one stream on which a service submits and hears the outcome of each task it follows.

A unary submit and a wait are two calls and two hops per task; a session carries both on a stream
that is already open, and the outcome comes to the client as soon as it is durable (the notifier
announces a finished task only after its commit).

Flow control: a stream stops reading requests while MAX_OUTSTANDING followed tasks await delivery
or MAX_QUEUED_BYTES of outcomes wait to be written; gRPC's own flow control holds the writes of a
client that does not read. Resumption needs no state on the server: the client follows again the
ids it still awaits (finished ones are read back from the store) and resends the submits it has no
answer for; the idempotency key each spec gets from the session id and the submit's seq makes a
resend return the first send's tasks.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import re
import uuid
from collections.abc import AsyncIterator, Callable, Iterable

from controlplane.auth import ANONYMOUS, Denied, Permission, Principal, authorize, printable
from controlplane.book import Event
from controlplane.control import ControlPlane
from controlplane.errors import ControlError, InvalidArgument
from controlplane.record import TaskRecord
from controlplane.store import next_read
from controlplane.tracing import parent_of
from gpucp import hops, tracing
from gpucp.v1 import common_pb2, scheduler_pb2

log = logging.getLogger("gpucp.controlplane")

OPEN_TIMEOUT_S = 30.0
MAX_OUTSTANDING = 10_000
MAX_QUEUED_BYTES = 64 * 1024 * 1024
# Outcomes ready together go out in one message up to this size: a write per outcome would cost
# more than the rest of the task's trip through the control plane.
OUTCOMES_BYTES = 4 * 1024 * 1024
# Submits and follows handled at once on one stream: single-task submits from many threads of
# one client share the store's group commits instead of waiting for one each.
MAX_IN_FLIGHT = 256
# The longest a run's Accepted may wait to ride with its outcome (SessionSubmit.answer_with_outcome_ms).
MAX_ANSWER_HOLD_MS = 1000
SESSION_METHOD = "/gpucp.v1.Scheduler/Session"
_SESSION_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def session_key(session_id: str, seq: int, index: int) -> str:
    """The idempotency key a session gives a spec that has none."""
    return f"session:{session_id}:{seq}:{index}"


class SessionStream:
    """One Session call: reads requests, handles them, queues what goes back."""

    def __init__(self, cp: ControlPlane, principal: Principal, refused: Callable[[Denied], None]) -> None:
        self.cp = cp
        self.principal = principal
        self.refused = refused  # counts and audits a submit the principal may not make
        self.session_id = ""
        self.events = False
        self.waiting: set[str] = set()  # followed tasks whose outcome this stream has not queued yet
        self._owing = 0  # tasks read in requests not yet handled: counted as waiting from their read on
        # Responses, and outcomes (Tasks) to be sent together: with the bytes each counts against the budget.
        self._outbox: collections.deque[tuple[scheduler_pb2.SessionResponse | common_pb2.Task, int]] = (
            collections.deque()
        )
        self._queued_bytes = 0
        self._wake = asyncio.Event()  # something to write, or the reader ended
        self._room = asyncio.Event()  # the reader may read the next request
        self._room.set()
        self._slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        self._handlers: set[asyncio.Task[None]] = set()
        # Outcomes whose payloads were left to the store, in the order they finished, and the one
        # reader that reads them back a run at a time (those finishing meanwhile go in its next
        # run); why a read failed.
        self._unread: collections.deque[TaskRecord] = collections.deque()
        self._reading: asyncio.Task[None] | None = None
        self._failed: BaseException | None = None
        # Accepteds held to ride with their task's outcome (answer_with_outcome_ms), by task id: the
        # submit's seq and the timer that sends it alone; then, once the outcome is queued, the seq.
        self._held: dict[str, tuple[int, asyncio.TimerHandle]] = {}
        self._riding: dict[str, int] = {}

    async def run(self, requests: AsyncIterator[scheduler_pb2.SessionRequest]) -> AsyncIterator[
        scheduler_pb2.SessionResponse
    ]:
        """The responses; ends once the client closed its side and every followed outcome is written."""
        requests = aiter(requests)
        yield await self._open(requests)
        reader = asyncio.create_task(self._read(requests))
        reader.add_done_callback(lambda _: self._wake.set())
        try:
            while True:
                if self._failed is not None:
                    raise self._failed
                if self._outbox:
                    response = self._next_response()
                    if hops.ENABLED:
                        hops.mark(f"s.write.{response.WhichOneof('msg')}")
                    yield response
                    hops.mark("s.written")
                    continue
                if reader.done():
                    reader.result()  # its error ends the call
                    if not self.waiting and not self._handlers and self._reading is None:
                        return
                self._wake.clear()
                await self._wake.wait()
        finally:
            reader.cancel()
            for handler in self._handlers:
                handler.cancel()
            for _, timer in self._held.values():
                timer.cancel()
            if self._reading is not None:
                self._reading.cancel()
            for task_id in self.waiting:
                self.cp.notifier.unfollow(task_id, self)
            self.waiting.clear()

    def _next_response(self) -> scheduler_pb2.SessionResponse:
        """The first response queued, or the outcomes queued first, as many as fit OUTCOMES_BYTES."""
        item, size = self._outbox.popleft()
        if isinstance(item, scheduler_pb2.SessionResponse):
            self._queued_bytes -= size
            self._update_room()
            return item
        response = scheduler_pb2.SessionResponse()
        self._add_outcome(response.outcomes, item)
        total = size
        while self._outbox and isinstance(self._outbox[0][0], common_pb2.Task):
            if total + self._outbox[0][1] > OUTCOMES_BYTES:
                break
            task, size = self._outbox.popleft()
            self._add_outcome(response.outcomes, task)  # type: ignore[arg-type]
            total += size
        self._queued_bytes -= total
        self._update_room()
        return response

    def _add_outcome(self, outcomes: scheduler_pb2.SessionOutcomes, task: common_pb2.Task) -> None:
        outcomes.tasks.append(task)
        seq = self._riding.pop(task.id, None)
        if seq is not None:
            outcomes.accepted.add(seq=seq, task_ids=[task.id])

    async def _open(self, requests: AsyncIterator[scheduler_pb2.SessionRequest]) -> scheduler_pb2.SessionResponse:
        try:
            first = await asyncio.wait_for(anext(requests), OPEN_TIMEOUT_S)
        except (StopAsyncIteration, TimeoutError):
            raise InvalidArgument(f"send open as the first message within {OPEN_TIMEOUT_S:g} s") from None
        if first.WhichOneof("msg") != "open":
            raise InvalidArgument(
                f"the first message on Session must be open, not {first.WhichOneof('msg') or 'an empty message'}"
            )
        asked = first.open.session_id
        if asked and not _SESSION_ID.fullmatch(asked):
            raise InvalidArgument(
                f"session_id {printable(asked, 64)} is not one this server issued: resume with the id "
                "SessionOpened gave, or leave it empty for a new session"
            )
        self.session_id = asked or uuid.uuid4().hex
        self.events = first.open.events
        opened = scheduler_pb2.SessionOpened(session_id=self.session_id, max_outstanding=MAX_OUTSTANDING)
        return scheduler_pb2.SessionResponse(opened=opened)

    async def _read(self, requests: AsyncIterator[scheduler_pb2.SessionRequest]) -> None:
        while True:
            await self._room.wait()
            await self._slots.acquire()
            try:
                msg = await anext(requests)
            except StopAsyncIteration:
                self._slots.release()
                return
            kind = msg.WhichOneof("msg")
            hops.mark("s.read")
            if kind == "submit":
                owing = len(msg.submit.specs) if msg.submit.follow else 0
                handler = asyncio.create_task(self._submit(msg.submit))
            elif kind == "follow":
                owing = len(msg.follow.task_ids)
                handler = asyncio.create_task(self._follow(msg.follow))
            else:
                self._slots.release()
                raise InvalidArgument(f"{kind or 'an empty message'} after open: send submit or follow")
            # Counted before the next read: the room it takes is gone before the handler runs.
            self._owing += owing
            self._update_room()
            self._handlers.add(handler)
            handler.add_done_callback(functools.partial(self._handled, owing))

    def _handled(self, owing: int, handler: asyncio.Task[None]) -> None:
        self._owing -= owing
        self._update_room()
        self._handlers.discard(handler)
        self._slots.release()
        self._wake.set()
        if not handler.cancelled() and handler.exception() is not None:
            log.error("a session request failed", exc_info=handler.exception())

    # -- requests -------------------------------------------------------------------------------

    async def _submit(self, request: scheduler_pb2.SessionSubmit) -> None:
        specs = list(request.specs)
        try:
            authorize(self.principal, Permission.SUBMIT)
            hold_ms = request.answer_with_outcome_ms
            if hold_ms and (not request.follow or len(specs) != 1):
                raise InvalidArgument(
                    f"answer_with_outcome_ms is for a followed submit of one spec, not of {len(specs)} "
                    f"spec(s){'' if request.follow else ' without follow'}: set follow and send one spec, or 0"
                )
            if hold_ms > MAX_ANSWER_HOLD_MS:
                raise InvalidArgument(f"answer_with_outcome_ms is at most {MAX_ANSWER_HOLD_MS}, not {hold_ms}")
            if self.principal is not ANONYMOUS:
                for spec in specs:
                    spec.tenant = self.principal.tenant_for(spec.tenant)
            keys = [session_key(self.session_id, request.seq, i) for i in range(len(specs))]
            # A traced submit runs in a gpucp.submit span, as a unary one does (controlplane.tracing).
            parent = parent_of(request.trace_context.items())
            with tracing.span("gpucp.submit", parent, "SERVER", {"rpc.method": SESSION_METHOD}):
                results = await self.cp.submit(specs, session_keys=keys, resend=request.resend)
        except ControlError as exc:
            if isinstance(exc, Denied):
                self.refused(exc)
            self._reject(request.seq, exc)
            return
        ids = [task_id for task_id, _ in results]
        hops.mark("s.submitted")
        held = bool(hold_ms) and ids[0] not in self._held and ids[0] not in self._riding
        if held:
            # No answer to write now: the task's way to a worker has the event loop to itself, and
            # the outcome, usually soon, carries the answer (a resend's finished task's at once).
            timer = asyncio.get_running_loop().call_later(hold_ms / 1000, self._answer_alone, ids[0])
            self._held[ids[0]] = (request.seq, timer)
        elif request.follow and len(specs) == 1 and not self.events:
            # A run(): what its caller waits for is the outcome, so the task's assignment leaves
            # first. Written before it, the answer would hold the event loop the assignment
            # needs for its commit and its write (bench_hops.py: 0.1 to 0.2 ms). Not on a stream
            # that asked for events: its task is followed from the answer on, and the assignment's
            # event would go unheard.
            await self.cp.dispatcher.after_next_round()
        if not held:
            self._put(self._accepted(request.seq, ids))
        if request.follow:
            # A task that finished meanwhile (a resent submit's, or a run() awaited a round) is
            # delivered from the book or the store; one settling is followed until it is durable.
            await self._track(dict.fromkeys(ids), {})

    @staticmethod
    def _accepted(seq: int, ids: list[str]) -> scheduler_pb2.SessionResponse:
        return scheduler_pb2.SessionResponse(accepted=scheduler_pb2.SessionAccepted(seq=seq, task_ids=ids))

    def _answer_alone(self, task_id: str) -> None:
        """A held Accepted whose task has not finished within the hold goes out alone."""
        seq, _ = self._held.pop(task_id)
        self._put(self._accepted(seq, [task_id]))

    async def _follow(self, request: scheduler_pb2.SessionFollow) -> None:
        ids = list(dict.fromkeys(request.task_ids))
        try:
            stored = await self._read_back(ids)
        except ControlError as exc:
            self._reject(request.seq, exc)
            return
        self._put(scheduler_pb2.SessionResponse(accepted=scheduler_pb2.SessionAccepted(seq=request.seq)))
        await self._track(ids, stored)

    async def _read_back(self, ids: list[str]) -> dict[str, TaskRecord]:
        """The followed tasks no longer held in memory, from the store; NotFound (in the words
        GetTask uses) for one that is not there or not the caller's to see."""
        stored: dict[str, TaskRecord] = {}
        for task_id in ids:
            rec = self.cp.book.tasks.get(task_id)
            if rec is None:
                rec = stored[task_id] = await self.cp.get(task_id)  # InvalidArgument for an empty id
            if not self.principal.sees(rec.tenant):
                raise self.cp.not_found(task_id)
        return stored

    async def _track(self, ids: Iterable[str], stored: dict[str, TaskRecord]) -> None:
        """Queue the outcome of each finished task now; follow the others until they finish."""
        late = []
        for task_id in ids:
            if task_id in self.waiting:
                continue
            rec = self.cp.book.tasks.get(task_id) or stored.get(task_id)
            if rec is None:
                late.append(task_id)  # finished and left memory while the store was read
            elif rec.terminal and task_id not in self.cp.book.settling:
                self._deliver(rec)
            else:
                self.waiting.add(task_id)
                self.cp.notifier.follow(task_id, self)
        for task_id in late:
            self._deliver(await self.cp.get(task_id))
        self._update_room()

    # -- outcomes -------------------------------------------------------------------------------

    def heard(self, rec: TaskRecord, event: Event) -> None:
        """The notifier's call for a followed task's event (a finished task's once durable)."""
        if rec.id not in self.waiting:
            return
        if self.events:
            response = scheduler_pb2.SessionResponse(event=event.proto(rec.id))
            self._put(response, response.ByteSize())
        if rec.terminal:
            self.waiting.discard(rec.id)
            self.cp.notifier.unfollow(rec.id, self)
            self._deliver(rec)

    def _deliver(self, rec: TaskRecord) -> None:
        if rec.stored_payload:
            self._unread.append(rec)
            if self._reading is None:
                self._reading = asyncio.create_task(self._deliver_stored())
                self._reading.add_done_callback(self._read_back_done)
            return
        self._queue_outcome(self.cp.views.describe(rec))

    async def _deliver_stored(self) -> None:
        """Outcomes whose payloads were left to the store, queued in runs read back in one read
        each (Store.payloads, at most READ_BYTES of payloads a read)."""
        try:
            while self._unread:
                for task in await self.cp.describe(next_read(self._unread, lambda rec: rec.stored_payload)):
                    self._queue_outcome(task)
        finally:
            self._reading = None  # with no await since the queue was seen empty: nothing is left behind

    def _read_back_done(self, reading: asyncio.Task[None]) -> None:
        self._wake.set()
        if not reading.cancelled() and reading.exception() is not None:
            self._failed = reading.exception()  # the call ends with it; the client resumes and follows again

    def _queue_outcome(self, task: common_pb2.Task) -> None:
        held = self._held.pop(task.id, None)
        if held is not None:
            held[1].cancel()
            self._riding[task.id] = held[0]
        size = task.ByteSize()
        self._outbox.append((task, size))
        self._queued_bytes += size
        self._update_room()
        self._wake.set()

    def _reject(self, seq: int, exc: ControlError) -> None:
        rejected = scheduler_pb2.SessionRejected(seq=seq, code=exc.code.value[0], message=str(exc))
        self._put(scheduler_pb2.SessionResponse(rejected=rejected))

    def _put(self, response: scheduler_pb2.SessionResponse, size: int = 0) -> None:
        """Queue a response; `size` counts it against the byte budget (answers are not: a stream
        has at most MAX_IN_FLIGHT requests unanswered)."""
        self._outbox.append((response, size))
        self._queued_bytes += size
        self._update_room()
        self._wake.set()

    def _update_room(self) -> None:
        if len(self.waiting) + self._owing < MAX_OUTSTANDING and self._queued_bytes < MAX_QUEUED_BYTES:
            self._room.set()
        else:
            self._room.clear()
