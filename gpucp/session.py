"""The client side of Scheduler.Session: a Client's one stream for submits and outcomes.

Client.run(), submit(), submit_many(), gather() and as_completed() go through it when the server
offers it. A task's outcome comes down the stream the moment it is durable: no call per task,
no watch to fall behind. The stream is reopened after a reconnect (a control plane restart
included): the submits not yet answered are sent again (the server's session idempotency keys
make that safe) and the tasks still awaited are followed again, so no outcome is lost; each
awaited outcome is handed out once, whatever the server sends again.
"""

from __future__ import annotations

import builtins
import functools
import itertools
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Protocol

import grpc

# client.py imports this module only when a Client first needs its session.
from gpucp import hops, tracing
from gpucp.client import Client, GpucpError, Unfinished, rpc_error
from gpucp.errors import cut_loose, error_for
from gpucp.requests import batch
from gpucp.v1 import common_pb2, scheduler_pb2
from gpucp.watch import RESUBSCRIBE_MAX_DELAY_S, RESUMABLE

Waiter = Callable[[common_pb2.Task | GpucpError], None]
# Ids in one Follow: 10,000 ids are about 400 kB, far under a message's limit.
FOLLOW_CHUNK = 10_000
# The client span of a submit on the stream (a unary submit's is named after its method).
SESSION_SPAN = "gpucp.v1.Scheduler/Session"
# How long close() waits for the reader thread to end (it ends at once unless a call hangs).
CLOSE_WAIT_S = 5.0
# How long a run's answer may wait on the server to come with its outcome, one message instead of
# two: a task done sooner (a short one) saves a write and a read on the path the caller waits on;
# a longer one's answer comes alone once this passes, as it would without.
RUN_ANSWER_HOLD_S = 0.1
_CODES = {code.value[0]: code for code in grpc.StatusCode}


class _Call(Protocol):
    """What the Session stub returns: the responses as an iterator that is also the call."""

    def __next__(self) -> scheduler_pb2.SessionResponse: ...

    def __iter__(self) -> Iterator[scheduler_pb2.SessionResponse]: ...

    def cancel(self) -> bool: ...


def _requests(outbox: queue.Queue[scheduler_pb2.SessionRequest | None]) -> Iterator[scheduler_pb2.SessionRequest]:
    while (request := outbox.get()) is not None:
        hops.mark("c.send")
        yield request


class Session:
    """One Scheduler.Session stream, reopened after a reconnect until give_up_s without a server."""

    def __init__(self, client: Client, give_up_s: float = 60.0) -> None:
        self._client = client
        self.give_up_s = give_up_s
        self.session_id = ""
        self._lock = threading.Lock()
        self._seq = itertools.count(1)
        # Requests not yet answered, for a resend after a reconnect, with what to do on the answer.
        self._unacked: dict[int, tuple[scheduler_pb2.SessionRequest, Future[builtins.list[str]]]] = {}
        self._waiters: dict[str, builtins.list[Waiter]] = {}  # awaited outcomes by task id
        self._outbox: queue.Queue[scheduler_pb2.SessionRequest | None] = queue.Queue()
        self._call: _Call | None = None
        self._failure: GpucpError | None = None
        self._closed = False
        self._reader: threading.Thread | None = None
        self._ready: grpc.Future[None] | None = None  # the wait for the channel while reconnecting

    def open(self) -> bool:
        """Open the stream; False when the server has no Session (it predates it)."""
        try:
            self._connect()
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                return False
            raise rpc_error(exc, self._client.server) from None
        self._reader = threading.Thread(target=self._read, name="gpucp-session", daemon=True)
        self._reader.start()
        return True

    def _closed_now(self) -> bool:
        return self._closed  # read again: a loop that checked it before may have been overtaken

    def close(self) -> None:
        """End the stream and its reader, before the client closes the channel under them."""
        with self._lock:
            self._closed = True
            ready = self._ready
        if ready is not None:
            ready.cancel()  # stops grpc's own connectivity polling, which a closed channel would crash
        self._outbox.put(None)
        if self._call is not None:
            self._call.cancel()
        reader = self._reader
        if reader is not None and reader is not threading.current_thread():
            reader.join(CLOSE_WAIT_S)
        # This session and its client refer to each other: let go of here, the call is finalised
        # now, while grpc's threads run, not by the collector at exit (see cut_loose).
        self._call = None

    # -- calls ----------------------------------------------------------------------------------

    def submit(
        self, specs: Sequence[common_pb2.TaskSpec], on_outcome: Waiter | None = None, answer_hold_s: float = 0.0
    ) -> builtins.list[str]:
        """Submit a batch (all stored or none); its ids once durable. With on_outcome, each
        task's outcome is handed to it as it finishes; with answer_hold_s too (one spec), the ids
        may come with the outcome, if it comes within that time."""
        specs = batch(specs)  # one too big would break the stream, and be sent again on the next
        ack: Future[builtins.list[str]] = Future()
        if on_outcome is not None:
            # Registered by the reader thread as the ack arrives, before any outcome it precedes.
            ack.add_done_callback(functools.partial(self._accepted, on_outcome))
        with tracing.client_span(SESSION_SPAN) as trace_context:
            follow = on_outcome is not None
            submit = scheduler_pb2.SessionSubmit(
                specs=specs,
                follow=follow,
                trace_context=trace_context,
                answer_with_outcome_ms=round(answer_hold_s * 1000),
            )
            self._send(ack, lambda seq: scheduler_pb2.SessionRequest(submit=submit), submit)
            return self._answer(ack)

    def _follow(self, task_ids: Sequence[str], waiter: Waiter) -> Future[builtins.list[str]]:
        ack: Future[builtins.list[str]] = Future()
        self._await(task_ids, waiter)  # before the follow goes out: its outcomes may come at once
        follow = scheduler_pb2.SessionFollow(task_ids=task_ids)
        self._send(ack, lambda seq: scheduler_pb2.SessionRequest(follow=follow), follow)
        return ack

    def run(self, spec: common_pb2.TaskSpec, wait_s: float) -> common_pb2.Task:
        """Submit one task and wait for it: terminal, or as it is after wait_s."""
        outcome: Future[common_pb2.Task | GpucpError] = Future()
        hops.mark("c.run")
        [task_id] = self.submit([spec], outcome.set_result, min(wait_s, RUN_ANSWER_HOLD_S))
        try:
            result = outcome.result(timeout=wait_s)
            hops.mark("c.woken")
        except FutureTimeout:
            self._forget([task_id], outcome.set_result)
            return self._client.get(task_id)
        if isinstance(result, common_pb2.Task):
            return result
        raise result

    def completions(self, task_ids: Sequence[str], timeout_s: float | None) -> Iterator[common_pb2.Task]:
        """Each task, terminal, in finishing order (see Client.as_completed)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        finished: queue.Queue[common_pb2.Task | GpucpError] = queue.Queue()
        pending = set(task_ids)
        try:
            for i in range(0, len(task_ids), FOLLOW_CHUNK):
                ack = self._follow(task_ids[i : i + FOLLOW_CHUNK], finished.put)
                ack.add_done_callback(lambda f: _refused(f, finished.put))
            while pending:
                try:
                    item = finished.get(timeout=None if deadline is None else max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    raise Unfinished([t for t in task_ids if t in pending], len(task_ids), timeout_s or 0.0) from None
                if isinstance(item, GpucpError):
                    raise item
                if item.id in pending:
                    pending.discard(item.id)
                    yield item
        finally:
            self._forget(pending, finished.put)

    # -- the stream -----------------------------------------------------------------------------

    def _send(
        self,
        ack: Future[builtins.list[str]],
        wrap: Callable[[int], scheduler_pb2.SessionRequest],
        body: scheduler_pb2.SessionSubmit | scheduler_pb2.SessionFollow,
    ) -> None:
        """Number the request (`body`, sent as wrap() makes it) and send it; its answer fulfils `ack`."""
        with self._lock:
            if self._failure is not None:
                raise self._failure
            body.seq = next(self._seq)
            request = wrap(body.seq)
            self._unacked[body.seq] = (request, ack)
            self._outbox.put(request)

    def _answer(self, ack: Future[builtins.list[str]]) -> builtins.list[str]:
        try:
            return ack.result(timeout=self._client.timeout_s + self.give_up_s)
        except FutureTimeout:
            raise GpucpError(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"the control plane at {self._client.server} did not answer a submit within "
                f"{self._client.timeout_s + self.give_up_s:g} s",
            ) from None

    def _accepted(self, waiter: Waiter, ack: Future[builtins.list[str]]) -> None:
        if ack.exception() is None:
            self._await(ack.result(), waiter)

    def _await(self, task_ids: Sequence[str], waiter: Waiter) -> None:
        with self._lock:
            for task_id in task_ids:
                self._waiters.setdefault(task_id, []).append(waiter)

    def _forget(self, task_ids: Iterator[str] | Sequence[str] | set[str], waiter: Waiter) -> None:
        with self._lock:
            for task_id in task_ids:
                waiters = self._waiters.get(task_id)
                if waiters and waiter in waiters:
                    waiters.remove(waiter)
                    if not waiters:
                        del self._waiters[task_id]

    def _connect(self) -> None:
        """Open a stream (resuming the session if it has an id), and send again what is unanswered."""
        outbox: queue.Queue[scheduler_pb2.SessionRequest | None] = queue.Queue()
        outbox.put(scheduler_pb2.SessionRequest(open=scheduler_pb2.SessionOpen(session_id=self.session_id)))
        with self._lock:
            for seq in sorted(self._unacked):
                request = self._unacked[seq][0]
                if request.HasField("submit"):
                    request.submit.resend = True
                outbox.put(request)
            owed = builtins.list(self._waiters)
            for i in range(0, len(owed), FOLLOW_CHUNK):
                chunk = owed[i : i + FOLLOW_CHUNK]
                ack: Future[builtins.list[str]] = Future()
                ack.add_done_callback(functools.partial(self._lost, chunk))
                seq = next(self._seq)
                request = scheduler_pb2.SessionRequest(follow=scheduler_pb2.SessionFollow(seq=seq, task_ids=chunk))
                self._unacked[seq] = (request, ack)
                outbox.put(request)
            old, self._outbox = self._outbox, outbox
        old.put(None)
        call: _Call = self._client._scheduler.Session(_requests(outbox))
        first = next(call)
        self.session_id = first.opened.session_id
        self._call = call

    def _read(self) -> None:
        while True:
            assert self._call is not None
            try:
                for response in self._call:
                    self._handle(response)
            except grpc.RpcError as exc:
                cut_loose(exc)
                if self._closed:
                    return
                if exc.code() not in RESUMABLE:
                    self._fail(rpc_error(exc, self._client.server))
                    return
            if self._closed:
                return
            try:
                self._reconnect()
            except GpucpError as exc:
                self._fail(exc)
                return
            except ValueError:
                # grpc refuses a call on a closed channel, and only Client.close() closes it, after
                # closing this session: the client went while this thread reconnected.
                return

    def _reconnect(self) -> None:
        deadline = time.monotonic() + self.give_up_s
        delay = 0.1
        while not self._closed:
            remaining = deadline - time.monotonic()
            try:
                if remaining <= 0:
                    raise grpc.FutureTimeoutError()
                with self._lock:  # close() cancels the wait it sees: none may start after it
                    ready = self._ready = grpc.channel_ready_future(self._client._raw_channel)
                    if self._closed_now():
                        ready.cancel()
                ready.result(timeout=remaining)
                self._connect()
                return
            except grpc.FutureCancelledError:
                return  # close() ended the wait
            except grpc.FutureTimeoutError:
                raise GpucpError(
                    grpc.StatusCode.UNAVAILABLE,
                    f"the control plane at {self._client.server} went away and did not come back within "
                    f"{self.give_up_s:g} s; the tasks are kept in its database: look at them with gpucp get "
                    "once it is back",
                ) from None
            except grpc.RpcError as exc:
                if exc.code() not in RESUMABLE:
                    raise rpc_error(exc, self._client.server) from None
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, RESUBSCRIBE_MAX_DELAY_S)

    def _handle(self, response: scheduler_pb2.SessionResponse) -> None:
        kind = response.WhichOneof("msg")
        hops.mark(f"c.read.{kind}")
        if kind == "outcomes":
            for accepted in response.outcomes.accepted:
                self._acknowledge(accepted)  # its callback awaits the task before its outcome is handed out
            tasks = response.outcomes.tasks
            with self._lock:
                awaited = [(task, self._waiters.pop(task.id, [])) for task in tasks]
            for task, waiters in awaited:
                for waiter in waiters:
                    waiter(task)
        elif kind == "accepted":
            self._acknowledge(response.accepted)
        elif kind == "rejected":
            with self._lock:
                _, ack = self._unacked.pop(response.rejected.seq, (None, None))
            if ack is not None:
                code = _CODES.get(response.rejected.code, grpc.StatusCode.UNKNOWN)
                ack.set_exception(error_for(code, response.rejected.message))

    def _acknowledge(self, accepted: scheduler_pb2.SessionAccepted) -> None:
        with self._lock:
            _, ack = self._unacked.pop(accepted.seq, (None, None))
        if ack is not None:
            ack.set_result(builtins.list(accepted.task_ids))

    def _lost(self, task_ids: Sequence[str], ack: Future[builtins.list[str]]) -> None:
        """A resumed follow was refused (a task deleted meanwhile): its waiters hear why."""
        error = ack.exception()
        if not isinstance(error, GpucpError):
            return
        with self._lock:
            waiters = [(t, w) for t in task_ids for w in self._waiters.pop(t, [])]
        for _, waiter in waiters:
            waiter(error)

    def _fail(self, error: GpucpError) -> None:
        """The stream cannot go on: every pending call and awaited outcome hears why."""
        with self._lock:
            self._failure = error
            acks = [ack for _, ack in self._unacked.values()]
            self._unacked.clear()
            waiters = [w for ws in self._waiters.values() for w in ws]
            self._waiters.clear()
        for ack in acks:
            ack.set_exception(error)
        for waiter in dict.fromkeys(waiters):
            waiter(error)


def _refused(ack: Future[builtins.list[str]], put: Waiter) -> None:
    """Hand a refused follow's error to the one waiting for its outcomes."""
    error = ack.exception()
    if isinstance(error, GpucpError):
        put(error)
