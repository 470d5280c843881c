"""The agent: holds its Workers.Connect stream across reconnects, follows control messages, drains and stops."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import secrets
import signal
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

import grpc

from agents.handlers import BUILTIN_HANDLERS, Handler
from agents.inventory import simulated_gpu_stats
from agents.runner import Runner, TaskEnvSource
from agents.stream import CHANNEL_OPTIONS, CLOSE, Outgoing, Running, Stream, TaskKey, heartbeat_seconds, write_loop
from gpucp import hops
from gpucp.auth import token_metadata
from gpucp.channels import channel_target, open_aio_channel
from gpucp.v1 import common_pb2, workers_pb2, workers_pb2_grpc

if TYPE_CHECKING:
    from agents.stream import ConnectCall

__all__ = ["Agent", "Refused", "default_worker_id"]

log = logging.getLogger("gpucp.agent")

GpuStatsSource = Callable[[Sequence[common_pb2.Gpu], Iterable[int]], list[common_pb2.GpuStats]]


class Refused(Exception):
    """The control plane will not take this agent as it is (its token, a worker id its token does
    not cover, or one another agent holds): retrying cannot help."""


def default_worker_id() -> str:
    """Return "<hostname>-<random>", a new id on each call.

    Not the pid: agents in containers are all PID 1, and containers sharing the host's network
    share its hostname too. Six random hex digits make two such agents collide once in millions.
    """
    return f"{socket.gethostname()}-{secrets.token_hex(3)}"


@dataclasses.dataclass
class Agent:
    """A worker agent: registers its capabilities and runs the tasks the control plane assigns."""

    server: str = "127.0.0.1:50051"
    worker_id: str = dataclasses.field(default_factory=default_worker_id)
    provider: str = "local"
    slots: int = 1
    gpus: list[common_pb2.Gpu] = dataclasses.field(default_factory=list)
    backend: str = "cpu"
    labels: list[str] = dataclasses.field(default_factory=list)
    # Kinds announced to the control plane; None announces every handler.
    kinds: list[str] | None = None
    cost_per_hour: float = 0.0
    # Presented on Connect; the control plane may require it (GPUCP_AGENT_TOKEN).
    token: str = ""
    # TLS to the control plane (gpucp.tls.channel_credentials); None: plaintext.
    tls: grpc.ChannelCredentials | None = None
    handlers: dict[str, Handler] = dataclasses.field(default_factory=lambda: dict(BUILTIN_HANDLERS))
    reconnect_base_s: float = 0.1
    reconnect_cap_s: float = 5.0
    drain_timeout_s: float = 60.0
    # How long a stopping agent tries to deliver final updates it still holds.
    flush_timeout_s: float = 10.0
    # How long the server may take to answer Register before the agent tries again.
    register_timeout_s: float = 30.0
    install_signal_handlers: bool = True
    gpu_stats: GpuStatsSource = simulated_gpu_stats
    # None: CUDA_VISIBLE_DEVICES lists the GPU indices as given.
    task_env: TaskEnvSource | None = None

    def __post_init__(self) -> None:
        if self.slots < 1:
            raise ValueError(f"slots must be at least 1, got {self.slots}.")
        if self.kinds is None:
            self.kinds = sorted(self.handlers)
        missing = [kind for kind in self.kinds if kind not in self.handlers]
        if missing:
            raise ValueError(f"no handler for kinds {missing}; handlers exist for {sorted(self.handlers)}.")
        # The attempts and the slots and GPUs they hold, configured once from the fields above.
        self._runner = Runner(
            worker_id=self.worker_id,
            slots=self.slots,
            handlers=self.handlers,
            kinds=self.kinds,
            task_env=self.task_env,
            send=self._send,
            finish=self._finish,
        )
        self._outbox: dict[TaskKey, Outgoing] = {}
        self._stream: Stream | None = None
        self._generation = 0
        # Sent with every Register: the control plane lets a reconnect of this agent replace its
        # old stream, and refuses another agent process that claims the same worker id.
        self._instance_id = secrets.token_hex(8)
        # Draining because the control plane said so (Drain; Undrain ends it) or because this
        # agent is stopping (SIGTERM, request_stop; nothing ends that).
        self._drained_by_control_plane = False
        self._stopping = False
        self._closing = False
        self._stop_requested: asyncio.Event | None = None
        self._force_stop: asyncio.Event | None = None
        self._progress_made: asyncio.Event | None = None

    # ----- public -----------------------------------------------------------------------------

    @property
    def draining(self) -> bool:
        """True while the agent takes no new work: told to drain (Drain message, until an Undrain),
        or stopping (SIGTERM or request_stop)."""
        return self._drained_by_control_plane or self._stopping

    @property
    def instance_id(self) -> str:
        """Random per Agent, the same across its reconnects: tells its own old stream from another agent's."""
        return self._instance_id

    @property
    def active(self) -> int:
        """Attempts accepted and not finished, including those waiting for a slot."""
        return len(self._runner.attempts)

    def request_stop(self) -> None:
        """Drain and exit, as SIGTERM does; a second call cancels running tasks at once."""
        if self._stop_requested is None or self._force_stop is None:
            return
        if self._stop_requested.is_set() and self._runner.attempts:
            log.warning("second stop request: cancelling %d running task(s)", len(self._runner.attempts))
            self._force_stop.set()
        self._stop_requested.set()

    async def run(self) -> None:
        """Serve until stopped: hold the stream (reconnecting as needed), then drain and return."""
        self._stop_requested = asyncio.Event()
        self._force_stop = asyncio.Event()
        self._progress_made = asyncio.Event()
        loop = asyncio.get_running_loop()
        installed: list[signal.Signals] = []
        if self.install_signal_handlers:
            for signum in (signal.SIGTERM, signal.SIGINT):
                try:
                    loop.add_signal_handler(signum, self.request_stop)
                    installed.append(signum)
                except (NotImplementedError, RuntimeError, ValueError):
                    log.debug("cannot handle signal %s here", signum)
        connection = asyncio.create_task(self._connection_loop(), name=f"gpucp-agent-{self.worker_id}")
        try:
            stopping = asyncio.create_task(self._stop_requested.wait())
            await asyncio.wait({connection, stopping}, return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            if connection.done():
                connection.result()  # the loop only ends by raising; surface it
            await self._shutdown(connection)
        finally:
            for signum in installed:
                loop.remove_signal_handler(signum)
            connection.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await connection
            await self._runner.cancel_all()

    # ----- shutdown ---------------------------------------------------------------------------

    async def _shutdown(self, connection: asyncio.Task[None]) -> None:
        assert self._force_stop is not None
        log.info("draining: %d task(s) running, waiting up to %.0f s", len(self._runner.attempts), self.drain_timeout_s)
        self._stopping = True
        self._send(self._heartbeat_message())
        deadline = time.monotonic() + self.drain_timeout_s
        force = asyncio.create_task(self._force_stop.wait())
        try:
            # Tasks assigned while draining (before the server saw it) run too, so look again each time.
            while self._runner.attempts and not force.done():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                runners = {a.runner for a in self._runner.attempts.values() if a.runner is not None}
                await asyncio.wait({*runners, force}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
        finally:
            force.cancel()
        if self._runner.attempts:
            log.warning("drain ended with %d task(s) still running; cancelling them", len(self._runner.attempts))
            await self._runner.cancel_all()
        await self._flush_outbox()
        self._closing = True
        stream = self._stream
        if stream is not None:
            stream.queue.put_nowait(CLOSE)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(connection), 5.0)
            if stream.closed_cleanly:
                self._outbox.clear()
        if self._outbox:
            log.error(
                "exiting with %d final update(s) the control plane may not have received: %s",
                len(self._outbox),
                ", ".join(f"{task_id}#{attempt}" for task_id, attempt in self._outbox),
            )

    async def _flush_outbox(self) -> None:
        """Wait until every final update was written on the live stream, or the flush timeout passes."""
        assert self._progress_made is not None
        deadline = time.monotonic() + self.flush_timeout_s
        while not self._outbox_written():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                log.warning(
                    "could not deliver %d final update(s) within %.0f s", len(self._outbox), self.flush_timeout_s
                )
                return
            self._progress_made.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._progress_made.wait(), remaining)

    def _outbox_written(self) -> bool:
        stream = self._stream
        if stream is None:
            return not self._outbox
        return all(item.written_on == stream.generation for item in self._outbox.values())

    # ----- connection -------------------------------------------------------------------------

    async def _connection_loop(self) -> None:
        failures = 0
        while not self._closing:
            registered = False
            try:
                registered = await self._session()
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as exc:
                # Refused for who it is (no or another's token, a worker id its token does not cover).
                if exc.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                    raise Refused(f"the control plane at {self.server} refused this agent: {exc.details()}") from None
                if exc.code() == grpc.StatusCode.ALREADY_EXISTS:
                    # Another agent process holds this worker id: retrying would knock it off, or be
                    # refused forever. Exit and let a person pick another --worker-id.
                    raise Refused(
                        f"the control plane at {self.server} refused worker id {self.worker_id!r}: {exc.details()}"
                    ) from None
                log.warning("stream to %s failed: %s %s", self.server, exc.code().name, exc.details())
            except TimeoutError:
                log.warning("%s did not answer Register within %.0f s", self.server, self.register_timeout_s)
            except Exception:
                log.exception("stream to %s failed", self.server)
            if self._closing:
                # mypy keeps `while not self._closing` narrowed across the awaits above, during which close() may run.
                return  # type: ignore[unreachable]
            failures = 0 if registered else failures
            # Full jitter: a restarted control plane is not hit by every agent at once.
            delay = random.uniform(0.0, min(self.reconnect_cap_s, self.reconnect_base_s * 2**failures))
            failures = min(failures + 1, 32)
            log.info("reconnecting to %s in %.2f s", self.server, delay)
            await asyncio.sleep(delay)

    def _register_message(self) -> workers_pb2.AgentMessage:
        return workers_pb2.AgentMessage(
            register=workers_pb2.Register(
                worker_id=self.worker_id,
                provider=self.provider,
                slots=self.slots,
                gpus=self.gpus,
                backend=self.backend,
                labels=self.labels,
                kinds=self.kinds,
                cost_per_hour=self.cost_per_hour,
                running=[
                    workers_pb2.RunningTask(task_id=task_id, attempt=attempt)
                    for task_id, attempt in self._runner.attempts
                ],
                accepts_batches=True,
                instance_id=self._instance_id,
            )
        )

    async def _session(self) -> bool:
        """Hold one stream until it ends; return whether it got as far as `registered`."""
        # A new channel each session: the names of several replicas are resolved again.
        try:
            target = await asyncio.to_thread(channel_target, self.server)
        except ValueError as exc:  # no replica's name resolves now: as with dead addresses, try again later
            log.warning("%s", exc)
            return False
        channel = open_aio_channel(target, self.tls, CHANNEL_OPTIONS)
        async with channel:
            call = workers_pb2_grpc.WorkersStub(channel).Connect(metadata=token_metadata(self.token))
            try:
                return await self._converse(call)
            finally:
                self._stream = None
                call.cancel()
                self._runner.drop_unstarted()

    async def _converse(self, call: ConnectCall) -> bool:
        await call.write(self._register_message())
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for returns the read's result and drops
        # a cancellation that arrives as the read completes, and a stopped agent then ran on.
        async with asyncio.timeout(self.register_timeout_s):
            first = await call.read()
        if self._closing:  # stopped while registering: nothing of this stream is wanted any more
            return False
        if not isinstance(first, workers_pb2.ControlMessage):  # grpc.aio.EOF
            log.warning("control plane at %s closed the stream before registering", self.server)
            return False
        if first.WhichOneof("msg") != "registered":
            log.warning("expected `registered` first, got %r; reconnecting", first.WhichOneof("msg"))
            return False
        self._generation += 1
        stream = Stream(self._generation, heartbeat_seconds(first.registered.heartbeat_interval_ms))
        log.info(
            "registered with %s as %s (%d running, %d final update(s) to resend)",
            self.server,
            first.registered.worker_id or self.worker_id,
            len(self._runner.attempts),
            len(self._outbox),
        )
        self._stream = stream
        # Everything final that may not have arrived goes again; the control plane ignores repeats.
        for item in self._outbox.values():
            stream.queue.put_nowait(item)
        stream.queue.put_nowait(self._heartbeat_message())
        self._notify_progress()
        workers = [
            asyncio.create_task(self._read_loop(call, stream)),
            asyncio.create_task(write_loop(call, stream, self._outbox, self._notify_progress)),
            asyncio.create_task(self._heartbeat_loop(stream)),
        ]
        try:
            done, _ = await asyncio.wait(workers, return_when=asyncio.FIRST_COMPLETED)
            for finished in done:
                finished.result()  # raise what broke the stream
        finally:
            for worker in workers:
                worker.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
        return True

    async def _read_loop(self, call: ConnectCall, stream: Stream) -> None:
        while True:
            message = await call.read()
            if not isinstance(message, workers_pb2.ControlMessage):  # grpc.aio.EOF
                if self._closing:
                    stream.closed_cleanly = True
                else:
                    log.warning("control plane at %s ended the stream", self.server)
                return
            try:
                self._dispatch(message, stream)
            except Exception:
                log.exception("ignoring control message that could not be handled: %s", message)

    async def _heartbeat_loop(self, stream: Stream) -> None:
        while True:
            await asyncio.sleep(stream.heartbeat_s)
            stream.queue.put_nowait(self._heartbeat_message())

    def _notify_progress(self) -> None:
        if self._progress_made is not None:
            self._progress_made.set()

    def _heartbeat_message(self) -> workers_pb2.AgentMessage:
        try:
            stats = self.gpu_stats(self.gpus, self._runner.gpus_in_use()) if self.gpus else []
        except Exception:
            log.exception("cannot read GPU stats; sending the heartbeat without them")
            stats = []
        return workers_pb2.AgentMessage(
            heartbeat=workers_pb2.Heartbeat(gpus=stats, active=len(self._runner.attempts), draining=self.draining)
        )

    def _send(self, message: workers_pb2.AgentMessage | Running) -> None:
        """Send a non-final message on the live stream; without one it is dropped (Register covers it)."""
        if self._stream is not None:
            self._stream.queue.put_nowait(message)

    def _finish(self, key: TaskKey, final: workers_pb2.AgentMessage) -> None:
        """Hold an attempt's final update until it is known delivered, and queue it on the live stream."""
        outgoing = Outgoing(final)
        hops.mark("a.final")
        self._outbox[key] = outgoing
        if self._stream is not None:
            self._stream.queue.put_nowait(outgoing)

    def _drain_for_control_plane(self, draining: bool) -> None:
        """Follow a Drain (True) or an Undrain (False); the heartbeat tells the control plane at once."""
        self._drained_by_control_plane = draining
        self._send(self._heartbeat_message())

    # ----- control messages -------------------------------------------------------------------

    def _dispatch(self, message: workers_pb2.ControlMessage, stream: Stream) -> None:
        kind = message.WhichOneof("msg")
        if kind == "assign":
            hops.mark("a.read.assign")
            self._runner.assign(message.assign)
        elif kind == "assign_many":
            for assignment in message.assign_many.assignments:
                self._runner.assign(assignment)
        elif kind == "cancel":
            self._runner.cancel(message.cancel)
        elif kind == "drain":
            log.info("control plane asked this agent to drain")
            self._drain_for_control_plane(True)
        elif kind == "undrain":
            stays = "; this agent is stopping, so it stays draining" if self._stopping else ""
            log.info("control plane ended the drain%s", stays)
            self._drain_for_control_plane(False)
        elif kind == "registered":
            stream.heartbeat_s = heartbeat_seconds(message.registered.heartbeat_interval_ms)
        else:
            log.warning("ignoring control message with no known content: %s", message)
