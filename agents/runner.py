"""The attempts assigned to an agent: each waits for a slot and its GPUs, runs its handler, ends in a final update."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence

from agents.handlers import Handler, TaskContext, TaskError
from agents.stream import Running, TaskKey, update_message
from gpucp import tracing
from gpucp.limits import MAX_ERROR_BYTES, MAX_MESSAGE_BYTES, MAX_TASK_CONTENT_BYTES
from gpucp.v1 import common_pb2, workers_pb2

__all__ = ["Attempt", "Runner", "TaskEnvSource", "format_error"]

log = logging.getLogger("gpucp.agent")

# Extra environment for a task given these GPU indices (e.g. MIG instance UUIDs in CUDA_VISIBLE_DEVICES).
TaskEnvSource = Callable[[Sequence[int]], Mapping[str, str]]


def format_error(exc: BaseException) -> str:
    """Return "<ExceptionType>: <message>" (a TaskError's message alone), cut to at most 4 KiB of UTF-8."""
    message = str(exc)
    if isinstance(exc, TaskError) and message:
        text = message  # written for the submitter; the type adds nothing
    else:
        text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    encoded = text.encode("utf-8")
    if len(encoded) <= MAX_ERROR_BYTES:
        return text
    return encoded[: MAX_ERROR_BYTES - 3].decode("utf-8", errors="ignore") + "..."


@dataclasses.dataclass
class Attempt:
    """One attempt accepted by this agent and not finished yet."""

    task: common_pb2.Task
    runner: asyncio.Task[None] | None = None
    # The control plane's trace context for this attempt (gpucp.tracing); empty when not traced.
    trace: dict[str, str] = dataclasses.field(default_factory=dict)
    # Set once the handler got its slot; until then the attempt is prefetched and may be handed back.
    started: bool = False


class Runner:
    """Runs the attempts the control plane assigns, at most `slots` at once and each GPU whole by one.

    What it has to say goes out through two callbacks: `send` for what may be lost with a stream
    (RUNNING, progress, a hand-back), `finish` for an attempt's final update, which must arrive.
    """

    def __init__(
        self,
        *,
        worker_id: str,
        slots: int,
        handlers: Mapping[str, Handler],
        kinds: Sequence[str],
        task_env: TaskEnvSource | None,
        send: Callable[[workers_pb2.AgentMessage | Running], None],
        finish: Callable[[TaskKey, workers_pb2.AgentMessage], None],
    ) -> None:
        self._worker_id = worker_id
        self._slots = slots
        self._handlers = handlers
        self._kinds = kinds
        self._task_env = task_env
        self._send = send
        self._finish = finish
        self.attempts: dict[TaskKey, Attempt] = {}
        # Attempts holding a slot, the GPUs they hold whole (each by one attempt at most), and per
        # GPU the attempts running side by side on it with a share of it (gpu_milli).
        self._executing = 0
        self._busy_gpus: set[int] = set()
        self._shared_gpus: collections.Counter[int] = collections.Counter()
        # Set (and replaced) when a slot frees while attempts wait for one; they look again.
        self._slot_freed = asyncio.Event()
        self._slot_waiters = 0

    def gpus_in_use(self) -> set[int]:
        """The GPU indices running attempts hold, whole or in part."""
        return self._busy_gpus | set(+self._shared_gpus)

    def assign(self, assignment: workers_pb2.Assignment) -> None:
        """Accept an assignment and start its attempt; a repeat is ignored, an older attempt of its task cancelled."""
        task = assignment.task
        if not task.id:
            log.warning("ignoring assignment without a task id: %s", assignment)
            return
        key = (task.id, task.attempt)
        if key in self.attempts:
            log.info("task %s attempt %d is already running here; ignoring the repeat", task.id, task.attempt)
            return
        # A newer attempt of the same task fences the older ones: their results would be ignored.
        # Only a retry (attempt 2 or later) can find one here.
        for old_key, old in list(self.attempts.items()) if task.attempt > 1 else ():
            if old_key[0] == task.id and old_key[1] < task.attempt and old.runner is not None:
                log.info(
                    "task %s attempt %d superseded by attempt %d; cancelling it", task.id, old_key[1], task.attempt
                )
                old.runner.cancel()
        attempt = Attempt(task=task, trace=dict(assignment.trace_context))
        self.attempts[key] = attempt
        attempt.runner = asyncio.create_task(self._execute(key, attempt), name=f"task-{task.id}#{task.attempt}")
        attempt.runner.add_done_callback(lambda _: self._forget(key, attempt))

    def cancel(self, cancel: workers_pb2.CancelAssignment) -> None:
        """Cancel an attempt, or with `if_not_started` hand it back (PENDING) unless it already started."""
        key = (cancel.task_id, cancel.attempt)
        attempt = self.attempts.get(key)
        if attempt is None or attempt.runner is None:
            log.debug("ignoring cancel of %s attempt %d: not running here", cancel.task_id, cancel.attempt)
            return
        if cancel.if_not_started:
            if attempt.started:
                log.info("keeping task %s attempt %d: it started before the revoke came", *key)
                return
            log.info("handing task %s attempt %d back before it started", *key)
            self._hand_back(key, attempt)
            self._send(update_message(key, common_pb2.TASK_STATE_PENDING))
            return
        log.info("cancelling task %s attempt %d", cancel.task_id, cancel.attempt)
        attempt.runner.cancel()

    def drop_unstarted(self) -> None:
        """Drop the attempts still waiting for a slot: the stream that delivered them broke.

        Only started attempts are re-attached (Register.running), so a prefetched attempt lives
        on exactly one stream. A revoke of it (work stealing) therefore either reaches this agent
        on that stream, which hands the attempt back or answers that it started, or the stream
        broke first and the attempt is gone here before the control plane requeues it: it never
        runs twice. Re-attaching such attempts instead would count them as started (the core's
        attach) and could lose a revoke sent on the old stream while the attempt lived on.
        """
        for key, attempt in list(self.attempts.items()):
            if not attempt.started:
                self._hand_back(key, attempt)

    async def cancel_all(self) -> None:
        """Cancel every attempt still here and wait until their handlers have ended."""
        runners = [a.runner for a in self.attempts.values() if a.runner is not None and not a.runner.done()]
        for runner in runners:
            runner.cancel()
        if runners:
            await asyncio.gather(*runners, return_exceptions=True)

    def _hand_back(self, key: TaskKey, attempt: Attempt) -> None:
        """Forget an attempt that has not started; its handler never runs (no await in between)."""
        del self.attempts[key]
        if attempt.runner is not None:
            attempt.runner.cancel()

    def _forget(self, key: TaskKey, attempt: Attempt) -> None:
        if self.attempts.get(key) is attempt:
            del self.attempts[key]

    async def _execute(self, key: TaskKey, attempt: Attempt) -> None:
        task = attempt.task
        final: workers_pb2.AgentMessage
        try:
            handler = self._handlers.get(task.spec.kind)
            if handler is None:
                raise LookupError(f"this worker has no handler for kind {task.spec.kind!r} (it runs {self._kinds})")
            ctx = TaskContext.for_task(task, self._worker_id, progress=lambda p: self._report_progress(key, p))
            if self._task_env is not None and ctx.gpu_indices:
                ctx = dataclasses.replace(ctx, env={**ctx.env, **self._task_env(ctx.gpu_indices)})
            while not self._can_start(attempt):
                self._slot_waiters += 1
                try:
                    await self._slot_freed.wait()
                finally:
                    self._slot_waiters -= 1
            # RUNNING means "holds a slot": until now the attempt could be handed back.
            attempt.started = True
            self._executing += 1
            shared = bool(task.spec.requirements.gpu_milli)
            if shared:
                self._shared_gpus.update(ctx.gpu_indices)
            else:
                self._busy_gpus.update(ctx.gpu_indices)
            self._send(Running(key))
            try:
                attributes: dict[str, str | int] = {
                    "gpucp.task_id": task.id, "gpucp.attempt": task.attempt, "gpucp.worker_id": self._worker_id,
                    "gpucp.kind": task.spec.kind,
                }
                with tracing.span("gpucp.run", attempt.trace, "CONSUMER", attributes):
                    result = await handler(task, ctx)
            finally:
                self._executing -= 1
                if shared:
                    self._shared_gpus.subtract(ctx.gpu_indices)
                else:
                    self._busy_gpus.difference_update(ctx.gpu_indices)
                if self._slot_waiters:
                    freed, self._slot_freed = self._slot_freed, asyncio.Event()
                    freed.set()
            if not isinstance(result, (bytes, bytearray, memoryview)):
                raise TypeError(f"handler for {task.spec.kind!r} returned {type(result).__name__}, not bytes")
            # The Task that will carry the result carries the spec too, and must fit in one message.
            room = MAX_TASK_CONTENT_BYTES - task.spec.ByteSize()
            if len(result) > room:
                raise ValueError(
                    f"result of {len(result)} bytes does not fit: beside the task's spec it may be {room} bytes "
                    f"(spec and result together at most {MAX_TASK_CONTENT_BYTES}, to fit a "
                    f"{MAX_MESSAGE_BYTES}-byte message)"
                )
            final = update_message(key, common_pb2.TASK_STATE_SUCCEEDED, result=bytes(result))
            log.info("task %s attempt %d succeeded", *key)
        except asyncio.CancelledError:
            log.info("task %s attempt %d cancelled", *key)
            raise
        except TaskError as exc:
            log.info("task %s attempt %d is wrong: %s", key[0], key[1], exc)
            final = update_message(key, common_pb2.TASK_STATE_FAILED, error=format_error(exc), task_error=True)
        except Exception as exc:
            log.info("task %s attempt %d failed: %s", key[0], key[1], exc)
            final = update_message(key, common_pb2.TASK_STATE_FAILED, error=format_error(exc))
        # No await from here on: the attempt leaves `attempts` and its final update is handed over at once.
        self._forget(key, attempt)
        self._finish(key, final)

    def _can_start(self, attempt: Attempt) -> bool:
        """A slot is free and none of the attempt's GPUs is used whole by a running attempt; for an
        attempt that uses its GPUs whole, none runs a share either.

        With prefetch the control plane may queue two tasks on one GPU; they run one after the other.
        Shares of one GPU (gpu_milli) run side by side: the control plane keeps them within the GPU.
        """
        indices = attempt.task.gpu_indices
        if self._executing >= self._slots or not self._busy_gpus.isdisjoint(indices):
            return False
        return bool(attempt.task.spec.requirements.gpu_milli) or not any(self._shared_gpus[i] for i in indices)

    def _report_progress(self, key: TaskKey, fraction: float) -> None:
        if key in self.attempts:
            self._send(Running(key, fraction))
