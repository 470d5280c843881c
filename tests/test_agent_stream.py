"""The agent against a scripted control plane: a real grpc.aio Workers server on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest

from agents import Agent, TaskContext, TaskError, parse_gpus
from agents.handlers import BUILTIN_HANDLERS, exec_handler
from agents.runtime import Refused
from gpucp.limits import MAX_TASK_CONTENT_BYTES
from gpucp.v1 import common_pb2, workers_pb2, workers_pb2_grpc

REPO = Path(__file__).resolve().parents[1]
RUNNING = common_pb2.TASK_STATE_RUNNING
SUCCEEDED = common_pb2.TASK_STATE_SUCCEEDED
FAILED = common_pb2.TASK_STATE_FAILED
PENDING = common_pb2.TASK_STATE_PENDING
SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),  # as the control plane's
    # Compatible with the agent's 10 s keepalive pings.
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 5_000),
]
T = TypeVar("T")
Received = tuple[int, workers_pb2.AgentMessage]


def run(coro: Awaitable[T], timeout: float = 40.0) -> T:
    """Drive one test coroutine; a hang fails with a timeout instead of blocking the run."""

    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


class ScriptedControlPlane(workers_pb2_grpc.WorkersServicer):
    """A peer at the edge: records every AgentMessage, answers Register, sends what a test says."""

    def __init__(self, heartbeat_interval_ms: int = 50) -> None:
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.received: list[Received] = []
        self.batches: list[int] = []  # sizes of the `updates` messages received
        self.sessions: list[asyncio.Queue[workers_pb2.ControlMessage]] = []
        self._changed = asyncio.Condition()

    async def Connect(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> None:
        session = len(self.sessions)
        outgoing: asyncio.Queue[workers_pb2.ControlMessage] = asyncio.Queue()
        first = await context.read()
        if first is grpc.aio.EOF:
            return
        await self._record(session, first)
        await context.write(
            workers_pb2.ControlMessage(
                registered=workers_pb2.Registered(
                    worker_id=first.register.worker_id, heartbeat_interval_ms=self.heartbeat_interval_ms
                )
            )
        )
        self.sessions.append(outgoing)
        async with self._changed:
            self._changed.notify_all()

        async def pump() -> None:
            while True:
                await context.write(await outgoing.get())

        pumping = asyncio.create_task(pump())
        try:
            while (message := await context.read()) is not grpc.aio.EOF:
                await self._record(session, message)
        finally:
            pumping.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pumping

    async def _record(self, session: int, message: workers_pb2.AgentMessage) -> None:
        async with self._changed:
            if message.HasField("updates"):
                # Recorded one by one, like updates sent alone; the batch sizes are kept too.
                self.batches.append(len(message.updates.updates))
                self.received.extend(
                    (session, workers_pb2.AgentMessage(update=u)) for u in message.updates.updates
                )
            else:
                self.received.append((session, message))
            self._changed.notify_all()

    def send(self, message: workers_pb2.ControlMessage, session: int = -1) -> None:
        self.sessions[session].put_nowait(message)

    def assign(
        self, task_id: str, kind: str, payload: bytes = b"", attempt: int = 1, gpus: tuple[int, ...] = ()
    ) -> None:
        task = common_pb2.Task(
            id=task_id, spec=common_pb2.TaskSpec(kind=kind, payload=payload), attempt=attempt, gpu_indices=gpus
        )
        self.send(workers_pb2.ControlMessage(assign=workers_pb2.Assignment(task=task)))

    async def wait_for(
        self, predicate: Callable[[int, workers_pb2.AgentMessage], bool], what: str, timeout: float = 10.0
    ) -> Received:
        """Return the first received message matching `predicate`, waiting for it if needed."""

        def find() -> Received | None:
            return next(((s, m) for s, m in self.received if predicate(s, m)), None)

        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(lambda: find() is not None), timeout)
            except TimeoutError:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}; got {self.summary()}") from None
            found = find()
            assert found is not None
            return found

    async def wait_sessions(self, count: int, timeout: float = 10.0) -> None:
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(lambda: len(self.sessions) >= count), timeout)
            except TimeoutError:
                raise AssertionError(f"the agent did not register {count} time(s) within {timeout} s") from None

    async def wait_update(self, task_id: str, state: int, attempt: int = 1, timeout: float = 10.0) -> Received:
        return await self.wait_for(
            lambda _, m: m.HasField("update")
            and m.update.task_id == task_id
            and m.update.attempt == attempt
            and m.update.state == state,
            f"{common_pb2.TaskState.Name(state)} for {task_id}#{attempt}",
            timeout,
        )

    def updates(self, task_id: str) -> list[workers_pb2.TaskUpdate]:
        return [m.update for _, m in self.received if m.HasField("update") and m.update.task_id == task_id]

    def registrations(self) -> list[workers_pb2.Register]:
        return [m.register for _, m in self.received if m.HasField("register")]

    def summary(self) -> str:
        return "; ".join(
            f"[{s}] {m.WhichOneof('msg')}: {str(getattr(m, m.WhichOneof('msg') or 'register')).strip()[:80]!r}"
            for s, m in self.received[-15:]
        )


async def start_server(plane: ScriptedControlPlane, port: int = 0) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server(options=SERVER_OPTIONS)
    workers_pb2_grpc.add_WorkersServicer_to_server(plane, server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    return server, bound


class RefusingControlPlane(ScriptedControlPlane):
    """Reads each Register, then ends the stream with the next status of `refusals` while any are left."""

    def __init__(self, *refusals: tuple[grpc.StatusCode, str]) -> None:
        super().__init__()
        self.refusals = list(refusals)

    async def Connect(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> None:
        if not self.refusals:
            return await super().Connect(request_iterator, context)
        first = await context.read()
        if first is not grpc.aio.EOF:
            await self._record(-1, first)
        code, details = self.refusals.pop(0)
        await context.abort(code, details)


@contextlib.asynccontextmanager
async def control_plane(heartbeat_interval_ms: int = 50) -> AsyncIterator[tuple[ScriptedControlPlane, int]]:
    plane = ScriptedControlPlane(heartbeat_interval_ms)
    server, port = await start_server(plane)
    try:
        yield plane, port
    finally:
        await server.stop(None)


@contextlib.asynccontextmanager
async def running_agent(port: int, **config: Any) -> AsyncIterator[Agent]:
    config.setdefault("worker_id", "w-test")
    config.setdefault("reconnect_cap_s", 0.2)
    config.setdefault("flush_timeout_s", 2.0)
    # As `gpucp agent --allow-exec`: these tests run exec tasks.
    config.setdefault("handlers", {**BUILTIN_HANDLERS, "exec": exec_handler})
    agent = Agent(server=f"127.0.0.1:{port}", install_signal_handlers=False, **config)
    runner = asyncio.create_task(agent.run())
    try:
        yield agent
    finally:
        # Stop, and stop hard: a test that failed midway may leave blocked tasks behind.
        agent.request_stop()
        agent.request_stop()
        await asyncio.wait_for(runner, 15)


def test_registers_capabilities_and_runs_a_task() -> None:
    async def scenario() -> None:
        async def shout(task: common_pb2.Task, ctx: TaskContext) -> bytes:
            return task.spec.payload.upper()

        async with control_plane() as (plane, port):
            gpus = parse_gpus("2xA100-80GB,1xT4-16GB", "w-test")
            handlers = {**BUILTIN_HANDLERS, "exec": exec_handler, "shout": shout}
            async with running_agent(
                port,
                slots=3,
                gpus=gpus,
                backend="cuda",
                labels=["zone=a", "spot"],
                handlers=handlers,
                cost_per_hour=2.5,
            ):
                await plane.wait_sessions(1)
                register = plane.registrations()[0]
                assert register.worker_id == "w-test"
                assert register.slots == 3
                assert [g.name for g in register.gpus] == ["NVIDIA A100 80GB", "NVIDIA A100 80GB", "NVIDIA T4 16GB"]
                assert sorted(register.kinds) == ["exec", "noop", "shout", "sleep"]
                assert list(register.labels) == ["zone=a", "spot"]
                assert (register.backend, register.provider, register.cost_per_hour) == ("cuda", "local", 2.5)
                assert list(register.running) == []

                assert register.accepts_batches

                plane.assign("t1", "shout", b"hello", gpus=(1,))
                await plane.wait_update("t1", SUCCEEDED)
                states = [u.state for u in plane.updates("t1")]
                # The handler ended before RUNNING left: the final update alone says it all.
                assert states == [SUCCEEDED], f"expected only SUCCEEDED, got {states}"
                assert plane.updates("t1")[-1].result == b"HELLO"
                await plane.wait_for(
                    lambda _, m: m.HasField("heartbeat") and len(m.heartbeat.gpus) == 3 and m.heartbeat.active == 0,
                    "a heartbeat with the stats of 3 GPUs",
                )

    run(scenario())


def test_handler_exception_fails_the_task_with_its_message() -> None:
    async def scenario() -> None:
        async def broken(task: common_pb2.Task, ctx: TaskContext) -> bytes:
            raise RuntimeError("model weights not found at /models/x")

        async with control_plane() as (plane, port):
            async with running_agent(port, handlers={"broken": broken}):
                await plane.wait_sessions(1)
                plane.assign("t1", "broken", attempt=3)
                _, message = await plane.wait_update("t1", FAILED, attempt=3)
                assert message.update.error == "RuntimeError: model weights not found at /models/x"
                plane.assign("t2", "no-such-kind")
                _, message = await plane.wait_update("t2", FAILED)
                assert "no handler for kind 'no-such-kind'" in message.update.error

    run(scenario())


def test_a_task_error_says_the_task_is_wrong_and_other_failures_do_not() -> None:
    async def scenario() -> None:
        async def picky(task: common_pb2.Task, ctx: TaskContext) -> bytes:
            if task.spec.payload == b"unknown model":
                raise TaskError("model 'gpt-17' is not one this worker knows: use one of llama, mistral")
            raise RuntimeError("CUDA out of memory")

        async with control_plane() as (plane, port):
            async with running_agent(port, handlers={**BUILTIN_HANDLERS, "exec": exec_handler, "picky": picky}):
                await plane.wait_sessions(1)
                plane.assign("bad-exec", "exec", b'{"argv": "ls -l"}')
                plane.assign("bad-sleep", "sleep", b"soon")
                plane.assign("bad-model", "picky", b"unknown model")
                plane.assign("oom", "picky", b"")
                _, message = await plane.wait_update("bad-exec", FAILED)
                assert message.update.task_error, "a bad exec payload is the task's fault, not the worker's"
                assert message.update.error.startswith('the exec payload must be a JSON object {"argv"')
                assert "argv must be a non-empty list of strings" in message.update.error
                _, message = await plane.wait_update("bad-sleep", FAILED)
                assert message.update.task_error, "a bad sleep payload is the task's fault"
                _, message = await plane.wait_update("bad-model", FAILED)
                assert message.update.task_error
                assert message.update.error == "model 'gpt-17' is not one this worker knows: use one of llama, mistral"
                _, message = await plane.wait_update("oom", FAILED)
                assert not message.update.task_error, "any other exception may be the worker's: retried elsewhere"
                assert message.update.error == "RuntimeError: CUDA out of memory"

    run(scenario())


def test_never_runs_more_tasks_than_slots() -> None:
    async def scenario() -> None:
        now = 0
        peak = 0

        async def busy(task: common_pb2.Task, ctx: TaskContext) -> bytes:
            nonlocal now, peak
            now += 1
            peak = max(peak, now)
            try:
                await asyncio.sleep(0.05)
            finally:
                now -= 1
            return b""

        async with control_plane() as (plane, port):
            async with running_agent(port, slots=2, handlers={"busy": busy}):
                await plane.wait_sessions(1)
                for i in range(5):  # slots + 3
                    plane.assign(f"t{i}", "busy")
                for i in range(5):
                    await plane.wait_update(f"t{i}", SUCCEEDED)
        assert peak == 2, f"at most 2 tasks may run at once on a 2-slot agent, saw {peak}"

    run(scenario())


def test_two_tasks_queued_on_one_gpu_run_one_after_the_other() -> None:
    async def scenario() -> None:
        holders: dict[int, str] = {}
        overlaps: list[str] = []

        async def on_gpu(task: common_pb2.Task, ctx: TaskContext) -> bytes:
            for index in ctx.gpu_indices:
                if index in holders:
                    overlaps.append(f"{task.id} started on GPU {index} while {holders[index]} held it")
                holders[index] = task.id
            try:
                await asyncio.sleep(0.05)
            finally:
                for index in ctx.gpu_indices:
                    holders.pop(index, None)
            return b""

        async with control_plane() as (plane, port):
            # Free slots to spare: only the GPU may make a task wait (prefetch queues it there).
            async with running_agent(port, slots=4, gpus=[common_pb2.Gpu(index=i, name="L4") for i in range(2)],
                                     handlers={"gpu": on_gpu}):
                await plane.wait_sessions(1)
                for i, gpus in enumerate([(0,), (0,), (1,), (0, 1)]):
                    plane.assign(f"t{i}", "gpu", gpus=gpus)
                for i in range(4):
                    await plane.wait_update(f"t{i}", SUCCEEDED)
        assert not overlaps, overlaps

    run(scenario())


def test_progress_a_handler_reports_reaches_the_control_plane_as_running() -> None:
    async def scenario() -> None:
        async def halfway(task: common_pb2.Task, ctx: TaskContext) -> bytes:
            ctx.report_progress(0.5)
            await asyncio.sleep(0.3)  # long enough for the progress to leave before the outcome
            return b""

        async with control_plane() as (plane, port):
            async with running_agent(port, slots=1, handlers={"halfway": halfway}):
                await plane.wait_sessions(1)
                plane.assign("t", "halfway")
                await plane.wait_update("t", SUCCEEDED)
        assert [(u.state, u.progress) for u in plane.updates("t")] == [(RUNNING, 0.0), (RUNNING, 0.5), (SUCCEEDED, 0.0)]

    run(scenario())


def test_takes_assignments_in_one_message_and_answers_in_one() -> None:
    async def scenario() -> None:
        async def slow(task: common_pb2.Task, ctx: TaskContext) -> bytes:
            await asyncio.sleep(0.2)
            return task.spec.payload

        async with control_plane() as (plane, port):
            async with running_agent(port, slots=4, handlers={**BUILTIN_HANDLERS, "slow": slow}):
                await plane.wait_sessions(1)
                tasks = [
                    common_pb2.Task(id=f"t{i}", spec=common_pb2.TaskSpec(kind="noop", payload=b"%d" % i), attempt=1)
                    for i in range(3)
                ]
                tasks.append(common_pb2.Task(id="long", spec=common_pb2.TaskSpec(kind="slow", payload=b"z"), attempt=1))
                plane.send(
                    workers_pb2.ControlMessage(
                        assign_many=workers_pb2.Assignments(assignments=[workers_pb2.Assignment(task=t) for t in tasks])
                    )
                )
                for i in range(3):
                    _, message = await plane.wait_update(f"t{i}", SUCCEEDED)
                    assert message.update.result == b"%d" % i
                await plane.wait_update("long", SUCCEEDED)
                # Three no-op tasks that ended in one turn: one message with their three outcomes,
                # and a RUNNING only for the task still running when that message left.
                assert max(plane.batches, default=0) >= 3, (
                    f"expected the outcomes in one message, got batches {plane.batches}"
                )
                assert [u.state for u in plane.updates("t0")] == [SUCCEEDED]
                assert [u.state for u in plane.updates("long")] == [RUNNING, SUCCEEDED]

    run(scenario())


def test_big_results_that_end_together_still_fit_the_message_limit() -> None:
    async def scenario() -> None:
        async def big(task: common_pb2.Task, ctx: TaskContext) -> bytes:
            return task.spec.payload * (6 * 1024 * 1024)  # 6 MiB: three together would be over 16 MiB

        async with control_plane() as (plane, port):
            async with running_agent(port, slots=3, handlers={"big": big}):
                await plane.wait_sessions(1)
                plane.send(
                    workers_pb2.ControlMessage(
                        assign_many=workers_pb2.Assignments(
                            assignments=[
                                workers_pb2.Assignment(
                                    task=common_pb2.Task(
                                        id=f"b{i}", spec=common_pb2.TaskSpec(kind="big", payload=b"%d" % i), attempt=1
                                    )
                                )
                                for i in range(3)
                            ]
                        )
                    )
                )
                for i in range(3):
                    _, message = await plane.wait_update(f"b{i}", SUCCEEDED)
                    assert message.update.result == b"%d" % i * (6 * 1024 * 1024)
                assert len(plane.sessions) == 1, "the stream broke"

    run(scenario())


def test_a_result_that_would_not_fit_beside_its_spec_fails_with_the_sizes() -> None:
    async def scenario() -> None:
        async def echo_twice(task: common_pb2.Task, ctx: TaskContext) -> bytes:
            return task.spec.payload * 2

        async with control_plane() as (plane, port):
            async with running_agent(port, handlers={"echo2": echo_twice}):
                await plane.wait_sessions(1)
                # 6 MiB of spec and 12 MiB of result: each fits a message, the Task holding both would not.
                plane.assign("t1", "echo2", b"x" * (6 * 1024 * 1024))
                _, message = await plane.wait_update("t1", FAILED)
                assert f"result of {12 * 1024 * 1024} bytes does not fit" in message.update.error, message.update.error
                assert f"spec and result together at most {MAX_TASK_CONTENT_BYTES}" in message.update.error
                plane.assign("t2", "echo2", b"y" * (3 * 1024 * 1024))
                _, message = await plane.wait_update("t2", SUCCEEDED)
                assert len(message.update.result) == 6 * 1024 * 1024

    run(scenario())


async def _wait_file(path: Path, timeout: float = 10.0) -> str:
    async def poll() -> str:
        while not path.exists() or not path.read_text().strip():
            await asyncio.sleep(0.02)
        return path.read_text().strip()

    return await asyncio.wait_for(poll(), timeout)


async def _wait_process_gone(pid: int, timeout: float = 10.0) -> None:
    async def poll() -> None:
        while True:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            await asyncio.sleep(0.02)

    try:
        await asyncio.wait_for(poll(), timeout)
    except TimeoutError:
        raise AssertionError(f"process {pid} still exists {timeout} s after its task was cancelled") from None


def test_cancel_kills_the_exec_subprocess_and_sends_no_final_update(tmp_path: Path) -> None:
    async def scenario() -> None:
        pidfile = tmp_path / "pid"
        payload = json.dumps({"argv": ["sh", "-c", f"echo $$ > {pidfile}; exec sleep 30"]}).encode()
        async with control_plane() as (plane, port):
            async with running_agent(port):
                await plane.wait_sessions(1)
                plane.assign("t1", "exec", payload, attempt=2)
                await plane.wait_update("t1", RUNNING, attempt=2)
                pid = int(await _wait_file(pidfile))
                # A cancel for another attempt is not about this one.
                plane.send(workers_pb2.ControlMessage(cancel=workers_pb2.CancelAssignment(task_id="t1", attempt=1)))
                plane.send(workers_pb2.ControlMessage(cancel=workers_pb2.CancelAssignment(task_id="t1", attempt=2)))
                await _wait_process_gone(pid)
                # Everything sent before this noop's result has arrived by then.
                plane.assign("t2", "noop", b"x")
                await plane.wait_update("t2", SUCCEEDED)
                await plane.wait_for(
                    lambda _, m: m.HasField("heartbeat") and m.heartbeat.active == 0, "a heartbeat with 0 active"
                )
                states = [u.state for u in plane.updates("t1")]
                assert states == [RUNNING], f"a cancelled attempt must get no final update, got {states}"

    run(scenario())


def test_exec_sees_the_assigned_gpus_in_cuda_visible_devices() -> None:
    async def scenario() -> None:
        payload = json.dumps({"argv": ["sh", "-c", "echo $CUDA_VISIBLE_DEVICES"]}).encode()
        async with control_plane() as (plane, port):
            async with running_agent(port, slots=2, gpus=parse_gpus("4xH100-80GB", "w-test")):
                await plane.wait_sessions(1)
                plane.assign("gpu", "exec", payload, gpus=(1, 3))
                plane.assign("cpu", "exec", payload)
                _, gpu = await plane.wait_update("gpu", SUCCEEDED)
                _, cpu = await plane.wait_update("cpu", SUCCEEDED)
        assert json.loads(gpu.update.result)["stdout"] == "1,3\n"
        assert json.loads(cpu.update.result)["stdout"] == "\n", "a task without GPUs must see none"

    run(scenario())


def test_reconnects_reattaches_running_tasks_and_resends_final_updates() -> None:
    async def scenario() -> None:
        gates = {"early": asyncio.Event(), "late": asyncio.Event()}

        async def gated(task: common_pb2.Task, ctx: TaskContext) -> bytes:
            await gates[task.id].wait()
            return f"done {task.id}".encode()

        plane = ScriptedControlPlane()
        server, port = await start_server(plane)
        try:
            async with running_agent(port, slots=2, handlers={"gated": gated}, reconnect_base_s=0.05):
                await plane.wait_sessions(1)
                plane.assign("early", "gated", attempt=1)
                plane.assign("late", "gated", attempt=4)
                await plane.wait_update("early", RUNNING)
                await plane.wait_update("late", RUNNING, attempt=4)

                await server.stop(None)  # the control plane goes away while both tasks run
                gates["early"].set()  # ...and one of them finishes while nobody listens
                await asyncio.sleep(0)
                server, _ = await start_server(plane, port)

                await plane.wait_sessions(2)
                register = plane.registrations()[-1]
                running = {(r.task_id, r.attempt) for r in register.running}
                assert ("late", 4) in running, f"the re-registration must re-attach late#4, got {running}"
                session, _ = await plane.wait_update("early", SUCCEEDED, timeout=10)
                assert session == 1, "the final update produced while disconnected must arrive on the new stream"

                gates["late"].set()
                session, message = await plane.wait_update("late", SUCCEEDED, attempt=4)
                assert (session, message.update.result) == (1, b"done late")
        finally:
            await server.stop(None)

    run(scenario())


def test_reconnects_keep_the_instance_id_and_each_agent_has_its_own() -> None:
    async def scenario() -> None:
        plane = RefusingControlPlane((grpc.StatusCode.UNAVAILABLE, "restarting"))
        server, port = await start_server(plane)
        try:
            async with running_agent(port, reconnect_base_s=0.05) as agent:
                await plane.wait_sessions(1)
                first, second = plane.registrations()
                assert first.instance_id, "Register must carry the agent's instance id"
                assert first.instance_id == second.instance_id == agent.instance_id, (
                    "a reconnect of the same agent must present the same instance id"
                )
            assert Agent(worker_id="w-test").instance_id != agent.instance_id, "each agent needs its own instance id"
        finally:
            await server.stop(None)

    run(scenario())


HELD = "worker id 'w-test' is held by another agent process, connected since 12:00:00 (40 s ago)"


def test_a_worker_id_held_by_another_agent_stops_the_agent_without_retrying() -> None:
    async def scenario() -> None:
        plane = RefusingControlPlane((grpc.StatusCode.ALREADY_EXISTS, HELD))
        server, port = await start_server(plane)
        try:
            agent = Agent(server=f"127.0.0.1:{port}", worker_id="w-test", install_signal_handlers=False)
            with pytest.raises(Refused) as info:
                await asyncio.wait_for(agent.run(), 20)
            assert HELD in str(info.value), str(info.value)
            assert "'w-test'" in str(info.value)
            assert len(plane.registrations()) == 1, "a refused worker id must not be tried again and again"
        finally:
            await server.stop(None)

    run(scenario())


class Gated:
    """A handler that records each task it starts and finishes them all when `gate` is set."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.ran: list[str] = []

    async def __call__(self, task: common_pb2.Task, ctx: TaskContext) -> bytes:
        self.ran.append(task.id)
        await self.gate.wait()
        return b"done"


def test_a_prefetched_attempt_is_handed_back_only_if_it_has_not_started() -> None:
    async def scenario() -> None:
        gated = Gated()

        def revoke(task_id: str) -> workers_pb2.ControlMessage:
            return workers_pb2.ControlMessage(
                cancel=workers_pb2.CancelAssignment(task_id=task_id, attempt=1, if_not_started=True)
            )

        async with control_plane() as (plane, port):
            async with running_agent(port, slots=1, handlers={"gated": gated}):
                await plane.wait_sessions(1)
                plane.assign("first", "gated")
                plane.assign("queued", "gated")
                await plane.wait_update("first", RUNNING)
                plane.send(revoke("queued"))  # waiting for the slot: handed back
                plane.send(revoke("first"))  # started: the revoke is ignored
                await plane.wait_update("queued", PENDING)
                gated.gate.set()
                await plane.wait_update("first", SUCCEEDED)
                await asyncio.sleep(0.2)
                assert gated.ran == ["first"], f"a handed-back attempt ran: {gated.ran}"
                assert [u.state for u in plane.updates("queued")] == [PENDING]
                assert [u.state for u in plane.updates("first")] == [RUNNING, SUCCEEDED]

    run(scenario())


def test_attempts_waiting_for_a_slot_are_dropped_when_the_stream_breaks() -> None:
    async def scenario() -> None:
        gated = Gated()

        plane = ScriptedControlPlane()
        server, port = await start_server(plane)
        try:
            async with running_agent(port, slots=1, handlers={"gated": gated}, reconnect_base_s=0.05):
                await plane.wait_sessions(1)
                plane.assign("started", "gated")
                plane.assign("queued", "gated")
                await plane.wait_update("started", RUNNING)
                await server.stop(None)
                server, _ = await start_server(plane, port)
                await plane.wait_sessions(2)
                running = [(r.task_id, r.attempt) for r in plane.registrations()[-1].running]
                assert running == [("started", 1)], f"only the started attempt may be re-attached, got {running}"
                gated.gate.set()
                await plane.wait_update("started", SUCCEEDED)
                await asyncio.sleep(0.2)
                assert gated.ran == ["started"], f"an attempt dropped with its stream ran anyway: {gated.ran}"
        finally:
            await server.stop(None)

    run(scenario())


def test_bad_control_messages_are_ignored_and_drain_shows_in_heartbeats() -> None:
    async def scenario() -> None:
        async with control_plane() as (plane, port):
            async with running_agent(port):
                await plane.wait_sessions(1)
                plane.send(workers_pb2.ControlMessage())  # no content at all
                plane.send(workers_pb2.ControlMessage(assign=workers_pb2.Assignment()))  # no task id
                plane.send(workers_pb2.ControlMessage(cancel=workers_pb2.CancelAssignment(task_id="ghost", attempt=1)))
                plane.assign("t1", "noop", b"still alive")
                _, message = await plane.wait_update("t1", SUCCEEDED)
                assert message.update.result == b"still alive"

                plane.send(workers_pb2.ControlMessage(drain=workers_pb2.Drain()))
                await plane.wait_for(
                    lambda _, m: m.HasField("heartbeat") and m.heartbeat.draining, "a draining heartbeat"
                )
                plane.assign("t2", "noop", b"drained agents finish what they get")
                await plane.wait_update("t2", SUCCEEDED)
                assert len(plane.registrations()) == 1, "a bad message must not break the stream"

    run(scenario())


def _next_heartbeat(plane: ScriptedControlPlane) -> Awaitable[Received]:
    """Wait for a heartbeat sent after this call."""
    seen = {id(m) for _, m in plane.received}
    return plane.wait_for(lambda _, m: m.HasField("heartbeat") and id(m) not in seen, "a new heartbeat")


def test_undrain_ends_a_control_plane_drain_but_not_a_stop() -> None:
    async def scenario() -> None:
        async with control_plane() as (plane, port):
            async with running_agent(port) as agent:
                await plane.wait_sessions(1)
                plane.send(workers_pb2.ControlMessage(drain=workers_pb2.Drain()))
                await plane.wait_for(
                    lambda _, m: m.HasField("heartbeat") and m.heartbeat.draining, "a draining heartbeat"
                )
                plane.send(workers_pb2.ControlMessage(undrain=workers_pb2.Undrain()))
                await plane.wait_for(
                    lambda _, m: m.HasField("heartbeat") and not m.heartbeat.draining and agent.draining is False,
                    "a heartbeat saying the drain ended",
                )
                _, heartbeat = await _next_heartbeat(plane)
                assert not heartbeat.heartbeat.draining, "the agent went back to draining by itself"

                plane.assign("t1", "sleep", b"0.5")  # keeps the stopping agent alive a moment
                await plane.wait_update("t1", RUNNING)
                agent.request_stop()
                await plane.wait_for(
                    lambda _, m: m.HasField("heartbeat") and m.heartbeat.draining, "a draining heartbeat"
                )
                plane.send(workers_pb2.ControlMessage(undrain=workers_pb2.Undrain()))
                _, heartbeat = await _next_heartbeat(plane)
                _, heartbeat = await _next_heartbeat(plane)  # one sent after the Undrain arrived
                assert heartbeat.heartbeat.draining, "an agent that is stopping must stay draining after an Undrain"
                assert agent.draining
                await plane.wait_update("t1", SUCCEEDED)

    run(scenario())


def test_stop_waits_for_running_tasks_and_flushes_their_results() -> None:
    async def scenario() -> None:
        async with control_plane() as (plane, port):
            agent = Agent(server=f"127.0.0.1:{port}", worker_id="w-stop", install_signal_handlers=False)
            runner = asyncio.create_task(agent.run())
            await plane.wait_sessions(1)
            plane.assign("t1", "sleep", b"0.3")
            await plane.wait_update("t1", RUNNING)
            agent.request_stop()
            await plane.wait_for(
                lambda _, m: m.HasField("heartbeat") and m.heartbeat.draining, "a draining heartbeat"
            )
            await asyncio.wait_for(runner, 10)
            assert [u.state for u in plane.updates("t1")] == [RUNNING, SUCCEEDED]

    run(scenario())


# ----- the command line, as a separate process ---------------------------------------------------


async def _start_agent_process(port: int, *flags: str, pythonpath: str = "") -> asyncio.subprocess.Process:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), pythonpath) if p)}
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agents", "--server", f"127.0.0.1:{port}", "--log-level", "WARNING", *flags,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def _stop_process(process: asyncio.subprocess.Process) -> tuple[int, str]:
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
    _, stderr = await process.communicate()
    return process.returncode or 0, stderr.decode(errors="replace")


def test_cli_registers_simulated_gpus_and_runs_a_user_handler(tmp_path: Path) -> None:
    (tmp_path / "user_tasks.py").write_text(
        textwrap.dedent(
            """
            def reverse(payload, ctx):
                return payload[::-1].decode() + " on " + ctx.worker_id
            """
        )
    )

    async def scenario() -> None:
        async with control_plane() as (plane, port):
            process = await _start_agent_process(
                port, "--worker-id", "cli-1", "--gpus", "2xA100-80GB,1xL4-24GB", "--label", "zone=eu",
                "--handler", "reverse=user_tasks:reverse", "--allow-exec", pythonpath=str(tmp_path),
            )  # fmt: skip
            try:
                await plane.wait_sessions(1, timeout=20)
                register = plane.registrations()[0]
                assert register.worker_id == "cli-1"
                assert register.slots == 3, "slots default to the number of GPUs"
                assert register.backend == "cuda"
                assert [(g.index, g.memory_total_mb, g.compute_capability) for g in register.gpus] == [
                    (0, 81920, 8.0), (1, 81920, 8.0), (2, 24576, 8.9),
                ]  # fmt: skip
                assert register.gpus[2].uuid == "GPU-sim-cli-1-2"
                assert sorted(register.kinds) == ["exec", "noop", "reverse", "sleep"]
                assert list(register.labels) == ["zone=eu"]
                plane.assign("t1", "reverse", b"olleh")
                _, message = await plane.wait_update("t1", SUCCEEDED)
                assert message.update.result == b"hello on cli-1"
            finally:
                code, stderr = await _stop_process(process)
            assert "Traceback" not in stderr, stderr

    run(scenario())


def test_cli_rejects_a_bad_gpu_spec_with_the_expected_format() -> None:
    async def scenario() -> None:
        process = await _start_agent_process(1, "--gpus", "A100")
        _, stderr_bytes = await asyncio.wait_for(process.communicate(), 20)
        stderr = stderr_bytes.decode(errors="replace")
        assert process.returncode == 2, f"a bad --gpus spec must exit 2, got {process.returncode}: {stderr}"
        assert "[COUNTx]MODEL-MEMGB" in stderr, stderr

    run(scenario())


def test_cli_exits_2_with_the_reason_when_its_worker_id_is_held() -> None:
    async def scenario() -> None:
        plane = RefusingControlPlane((grpc.StatusCode.ALREADY_EXISTS, HELD))
        server, port = await start_server(plane)
        try:
            process = await _start_agent_process(port, "--worker-id", "w-test")
            try:
                await asyncio.wait_for(process.wait(), 30)
            finally:
                code, stderr = await _stop_process(process)
        finally:
            await server.stop(None)
        assert code == 2, f"an agent whose worker id is held must exit 2, got {code}: {stderr}"
        assert HELD in stderr, stderr
        assert "Traceback" not in stderr, stderr

    run(scenario())


def test_sigterm_drains_running_tasks_then_exits_zero() -> None:
    async def scenario() -> None:
        async with control_plane() as (plane, port):
            process = await _start_agent_process(port, "--worker-id", "cli-2", "--drain-timeout", "20")
            try:
                await plane.wait_sessions(1, timeout=20)
                plane.assign("t1", "sleep", json.dumps({"seconds": 1.0}).encode())
                await plane.wait_update("t1", RUNNING)
                process.send_signal(signal.SIGTERM)
                await plane.wait_for(
                    lambda _, m: m.HasField("heartbeat") and m.heartbeat.draining, "a draining heartbeat"
                )
                assert process.returncode is None, "the agent must not exit before its task finished"
                await plane.wait_update("t1", SUCCEEDED)
                code = await asyncio.wait_for(process.wait(), 15)
            finally:
                code, stderr = await _stop_process(process)
            assert code == 0, f"a drained agent exits 0, got {code}: {stderr}"
            assert "Traceback" not in stderr, stderr

    run(scenario())
