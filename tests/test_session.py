"""Scheduler.Session: submits and outcomes on one stream, flow control, resumption across a restart."""

from __future__ import annotations

import gc
import queue
import threading
import weakref
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest

from cluster import ControlPlaneProcess, eventually
from gpucp import Client, GpucpError
from gpucp.client import CHANNEL_OPTIONS
from gpucp.v1 import common_pb2, scheduler_pb2, scheduler_pb2_grpc

SUCCEEDED = common_pb2.TASK_STATE_SUCCEEDED


def sleep_spec(seconds: float) -> common_pb2.TaskSpec:
    return common_pb2.TaskSpec(kind="sleep", payload=str(seconds).encode())


class RawSession:
    """A Session stream driven message by message, as a client in another language would."""

    def __init__(self, address: str, session_id: str = "", events: bool = False) -> None:
        self.channel = grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
        self.requests: queue.Queue[scheduler_pb2.SessionRequest | None] = queue.Queue()
        self.responses: queue.Queue[scheduler_pb2.SessionResponse | grpc.RpcError] = queue.Queue()
        self.send(open=scheduler_pb2.SessionOpen(session_id=session_id, events=events))
        self.call = scheduler_pb2_grpc.SchedulerStub(self.channel).Session(self._requests())
        threading.Thread(target=self._read, daemon=True).start()
        opened = self.next("opened").opened
        self.session_id, self.max_outstanding = opened.session_id, opened.max_outstanding

    def _requests(self) -> Iterator[scheduler_pb2.SessionRequest]:
        while (request := self.requests.get()) is not None:
            yield request

    def _read(self) -> None:
        try:
            for response in self.call:
                self.responses.put(response)
        except grpc.RpcError as exc:
            self.responses.put(exc)

    def send(self, **msg: object) -> None:
        self.requests.put(scheduler_pb2.SessionRequest(**msg))  # type: ignore[arg-type]

    def submit(
        self, seq: int, specs: list[common_pb2.TaskSpec], *, follow: bool = True, resend: bool = False, hold_ms: int = 0
    ) -> None:
        submit = scheduler_pb2.SessionSubmit(
            seq=seq, specs=specs, follow=follow, resend=resend, answer_with_outcome_ms=hold_ms
        )
        self.send(submit=submit)

    def next(self, kind: str | None = None, timeout_s: float = 60) -> scheduler_pb2.SessionResponse:
        response = self.responses.get(timeout=timeout_s)
        if isinstance(response, grpc.RpcError):
            raise response
        assert kind is None or response.WhichOneof("msg") == kind, response
        return response

    def outcomes(self, n: int) -> list[common_pb2.Task]:
        """The next n outcomes, however many messages carry them."""
        tasks: list[common_pb2.Task] = []
        while len(tasks) < n:
            tasks += self.next("outcomes").outcomes.tasks
        assert len(tasks) == n, f"{len(tasks) - n} outcomes more than awaited"
        return tasks

    def close(self) -> None:
        self.requests.put(None)
        self.call.cancel()
        self.channel.close()


def test_run_submit_and_gather_go_through_one_session_stream(client, start_agent):
    start_agent("w1", "--slots", "2")
    task = client.run("noop", "hello")
    assert (task.state, task.result) == (SUCCEEDED, b"hello")
    ids = client.submit_many(common_pb2.TaskSpec(kind="noop", payload=f"{i}".encode()) for i in range(50))
    assert [t.result for t in client.gather(ids)] == [f"{i}".encode() for i in range(50)]
    session = client._session_obj
    assert session is not None and session.session_id, "the client fell back to unary calls"
    # A spec without an idempotency key gets the session's, which makes a resend safe.
    assert client.get(ids[0]).spec.idempotency_key.startswith(f"session:{session.session_id}:")


def test_closing_a_client_ends_its_stream_then_and_not_when_the_process_exits(controlplane, start_agent):
    # A stream left for the collector is ended by grpc's finaliser at interpreter exit, where it can
    # wait forever on a lock a stopped grpc thread holds: `gpucp submit --wait` then never exits.
    start_agent("close-box")
    client = Client(controlplane.address)
    assert client.run("noop", "x").state == SUCCEEDED
    session = client._session_obj
    assert session is not None and session._call is not None, "the client fell back to unary calls"
    stream = weakref.ref(session._call)
    gc.disable()  # the collector must not be what ends it
    try:
        client.close()
        assert stream() is None, "the closed client's stream is left for the collector to end"
    finally:
        gc.enable()


def test_a_bad_submit_is_refused_by_its_seq_and_the_session_goes_on(controlplane, start_agent):
    start_agent("w1")
    raw = RawSession(controlplane.address)
    try:
        raw.submit(1, [common_pb2.TaskSpec(kind="")])
        rejected = raw.next("rejected").rejected
        assert rejected.seq == 1 and rejected.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert "kind" in rejected.message
        raw.send(follow=scheduler_pb2.SessionFollow(seq=2, task_ids=["no-such-task"]))
        rejected = raw.next("rejected").rejected
        assert (rejected.seq, rejected.code) == (2, grpc.StatusCode.NOT_FOUND.value[0])
        raw.submit(3, [common_pb2.TaskSpec(kind="noop", payload=b"x")])
        assert raw.next("accepted").accepted.seq == 3
        assert raw.outcomes(1)[0].result == b"x"
    finally:
        raw.close()
    with Client(controlplane.address) as client:
        with pytest.raises(GpucpError) as raised:
            client.submit("")
        assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_outcomes_carry_the_payloads_the_control_plane_left_to_the_store(controlplane, start_agent):
    # Payloads over a few KiB are not held in memory once stored: dispatch and the outcomes read them back.
    start_agent("w1", "--slots", "4")
    payloads = [bytes([i]) * 100_000 for i in range(20)]
    raw = RawSession(controlplane.address)
    try:
        raw.submit(1, [common_pb2.TaskSpec(kind="noop", payload=p) for p in payloads])
        ids = raw.next("accepted").accepted.task_ids
        by_id = {task.id: task for task in raw.outcomes(len(ids))}
        assert [by_id[i].spec.payload for i in ids] == payloads
        assert [by_id[i].result for i in ids] == payloads  # noop answers with the payload it was sent
    finally:
        raw.close()


def test_a_run_is_answered_with_no_worker_to_place_it_and_when_sent_again(controlplane, start_agent):
    # A single followed submit is answered after the dispatch round that may place it: a round
    # that places nothing, and a resend that queues nothing, answer it all the same.
    raw = RawSession(controlplane.address)
    try:
        raw.submit(1, [common_pb2.TaskSpec(kind="noop", payload=b"x")])
        [task_id] = raw.next("accepted").accepted.task_ids
        raw.submit(1, [common_pb2.TaskSpec(kind="noop", payload=b"x")], resend=True)
        assert list(raw.next("accepted").accepted.task_ids) == [task_id]
        start_agent("w1")
        [outcome] = raw.outcomes(1)
        assert (outcome.id, outcome.state, outcome.result) == (task_id, SUCCEEDED, b"x")
    finally:
        raw.close()


def test_a_runs_answer_comes_alone_once_its_hold_passes_and_rides_with_an_outcome_ready_before(
    controlplane, start_agent
):
    raw = RawSession(controlplane.address)
    try:
        # No worker: the task cannot finish within the hold, so its answer comes alone.
        raw.submit(1, [common_pb2.TaskSpec(kind="noop", payload=b"x")], hold_ms=50)
        accepted = raw.next("accepted").accepted
        assert accepted.seq == 1
        start_agent("w1")
        response = raw.next("outcomes")
        assert [t.id for t in response.outcomes.tasks] == list(accepted.task_ids)
        assert not response.outcomes.accepted, "a submit was answered twice"
        # Sent again, the task has finished: its answer and its outcome are one message.
        raw.submit(1, [common_pb2.TaskSpec(kind="noop", payload=b"x")], resend=True, hold_ms=1000)
        outcomes = raw.next("outcomes").outcomes
        assert [(a.seq, list(a.task_ids)) for a in outcomes.accepted] == [(1, list(accepted.task_ids))]
        assert [(t.id, t.result) for t in outcomes.tasks] == [(accepted.task_ids[0], b"x")]
    finally:
        raw.close()


def test_a_held_answer_is_refused_for_a_batch_an_unfollowed_submit_or_a_hold_past_a_second(controlplane):
    raw = RawSession(controlplane.address)
    try:
        noop = common_pb2.TaskSpec(kind="noop")
        raw.submit(1, [noop, noop], hold_ms=100)
        raw.submit(2, [noop], follow=False, hold_ms=100)
        raw.submit(3, [noop], hold_ms=5000)
        for seq, words in [(1, "of 2 spec(s)"), (2, "without follow"), (3, "at most 1000")]:
            rejected = raw.next("rejected").rejected
            assert (rejected.seq, rejected.code) == (seq, grpc.StatusCode.INVALID_ARGUMENT.value[0])
            assert "answer_with_outcome_ms" in rejected.message and words in rejected.message, rejected.message
    finally:
        raw.close()
    with Client(controlplane.address, session=False) as client:
        assert not list(client.list()), "a refused submit stored a task"


def test_a_run_sent_again_after_kill_9_during_its_hold_makes_one_task_answered_once(
    controlplane: ControlPlaneProcess, start_agent
):
    raw = RawSession(controlplane.address)
    raw.submit(1, [common_pb2.TaskSpec(kind="noop", payload=b"x")], hold_ms=1000)
    controlplane.kill()  # before or after its insert commits: no answer yet, or one lost with the stream
    with pytest.raises(grpc.RpcError):
        while True:
            raw.next(timeout_s=30)
    raw.close()
    controlplane.start()
    resumed = RawSession(controlplane.address, session_id=raw.session_id)
    try:
        resumed.submit(1, [common_pb2.TaskSpec(kind="noop", payload=b"x")], resend=True, hold_ms=1000)
        start_agent("w1")
        answers: list[list[str]] = []
        outcomes: list[common_pb2.Task] = []
        while not outcomes:
            response = resumed.next()
            if response.WhichOneof("msg") == "accepted":
                answers.append(list(response.accepted.task_ids))
            else:
                answers += [list(a.task_ids) for a in response.outcomes.accepted]
                outcomes += response.outcomes.tasks
        assert answers == [[outcomes[0].id]] and outcomes[0].result == b"x"
    finally:
        resumed.close()
    with Client(controlplane.address, session=False) as client:
        assert [t.id for t in client.list()] == [outcomes[0].id], "the run's task was made twice"


def test_events_are_sent_when_asked_and_the_outcome_last(controlplane, start_agent):
    start_agent("w1")
    raw = RawSession(controlplane.address, events=True)
    try:
        raw.submit(1, [sleep_spec(0.2)])
        [task_id] = raw.next("accepted").accepted.task_ids
        causes = []
        while (response := raw.next()).WhichOneof("msg") == "event":
            assert response.event.task_id == task_id
            causes.append(response.event.cause)
        [outcome] = response.outcomes.tasks
        assert outcome.id == task_id and outcome.state == SUCCEEDED
        assert causes[0] == "assigned" and causes[-1] == "finished", causes
    finally:
        raw.close()


def test_the_server_stops_reading_submits_while_too_many_outcomes_are_owed(controlplane):
    """No agent: the followed tasks stay queued and their outcomes owed. At max_outstanding the
    server reads no further submit until an outcome is delivered (here: a task is cancelled)."""
    raw = RawSession(controlplane.address)
    try:
        seq, owed = 0, 0
        ids: list[str] = []
        while owed < raw.max_outstanding:
            seq += 1
            n = min(1000, raw.max_outstanding - owed)
            raw.submit(seq, [sleep_spec(0)] * n)
            ids += raw.next("accepted").accepted.task_ids
            owed += n
        raw.submit(seq + 1, [sleep_spec(0)])
        with pytest.raises(queue.Empty):
            raw.next(timeout_s=1.5)  # not read, so not answered
        with Client(controlplane.address, session=False) as client:
            client.cancel(ids[0])
        [cancelled] = raw.outcomes(1)
        assert (cancelled.id, cancelled.state) == (ids[0], common_pb2.TASK_STATE_CANCELLED)
        assert raw.next("accepted").accepted.seq == seq + 1
    finally:
        raw.close()


@pytest.mark.parametrize("stop", ["terminate", "kill"])
def test_a_session_resumes_across_a_control_plane_restart_with_no_outcome_lost_or_repeated(
    controlplane: ControlPlaneProcess, start_agent, stop
):
    start_agent("steady", "--slots", "3")
    raw = RawSession(controlplane.address)
    # Three run through the restart; three wait for a slot and finish after it.
    specs = [sleep_spec(s) for s in (2, 2.5, 3, 0, 0.5, 1)]
    raw.submit(1, specs)
    ids = list(raw.next("accepted").accepted.task_ids)
    with controlplane.client() as probe:
        eventually(lambda: probe.get(ids[0]).state == common_pb2.TASK_STATE_RUNNING, 30, "the first task to run")
    getattr(controlplane, stop)()
    with pytest.raises(grpc.RpcError):
        raw.next(timeout_s=30)
    raw.close()
    controlplane.start()  # same port, same database
    resumed = RawSession(controlplane.address, session_id=raw.session_id)
    try:
        assert resumed.session_id == raw.session_id
        # The submit's answer could have been lost with the stream: sent again, it makes no new task.
        resumed.submit(1, specs, follow=False, resend=True)
        assert list(resumed.next("accepted").accepted.task_ids) == ids
        resumed.send(follow=scheduler_pb2.SessionFollow(seq=2, task_ids=ids))
        assert resumed.next("accepted").accepted.seq == 2
        seen = resumed.outcomes(len(ids))
        assert sorted(t.id for t in seen) == sorted(ids), "an outcome was lost or delivered twice"
        assert [t.state for t in seen] == [SUCCEEDED] * len(ids)
        resumed.requests.put(None)  # done sending: the server ends the stream, owing nothing
        with pytest.raises(queue.Empty):
            resumed.next(timeout_s=1)
    finally:
        resumed.close()
    with Client(controlplane.address, session=False) as client:
        assert len(list(client.list(full=False))) == len(ids), "a resent submit made tasks twice"


@pytest.mark.parametrize("stop", ["terminate", "kill"])
def test_client_run_and_gather_ride_out_a_restart_on_their_session(controlplane, start_agent, stop):
    start_agent("steady", "--slots", "4")
    with Client(controlplane.address) as client:
        ids = client.submit_many([sleep_spec(s) for s in (2, 2.5, 0, 0.5)])
        ran: list[common_pb2.Task] = []
        gathered: list[common_pb2.Task] = []
        failed: list[BaseException] = []

        def run() -> None:
            try:
                ran.append(client.run("sleep", "3", wait_s=120))
                gathered.extend(client.gather(ids, timeout_s=120))
            except BaseException as exc:  # for the test thread to report
                failed.append(exc)

        waiter = threading.Thread(target=run)
        waiter.start()
        eventually(lambda: client.stats().tasks_by_state.get("TASK_STATE_RUNNING", 0) >= 3, 30, "three running")
        getattr(controlplane, stop)()
        controlplane.start()
        waiter.join(150)
        assert not waiter.is_alive() and not failed, f"{failed}\n{controlplane.log()}"
        assert ran[0].state == SUCCEEDED
        assert [t.id for t in gathered] == ids and [t.state for t in gathered] == [SUCCEEDED] * 4


def test_a_client_falls_back_to_unary_calls_on_a_server_without_sessions():
    """A server of an earlier version answers Session UNIMPLEMENTED: the client submits by SubmitTask."""

    class Older(scheduler_pb2_grpc.SchedulerServicer):
        def SubmitTask(self, request, context):  # type: ignore[no-untyped-def]
            return scheduler_pb2.SubmitTaskResponse(task_id="from-unary")

    server = grpc.server(futures.ThreadPoolExecutor(2))
    scheduler_pb2_grpc.add_SchedulerServicer_to_server(Older(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with Client(f"127.0.0.1:{port}") as client:
            assert client.submit("noop") == "from-unary"
            assert client._session_obj is None
    finally:
        server.stop(None)
