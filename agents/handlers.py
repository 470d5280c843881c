"""Task handlers: the built-in kinds (noop, sleep; exec when the agent allows it) and user handlers loaded by name."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib
import inspect
import json
import logging
import math
import os
import pwd
import shutil
import signal
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Any

from gpucp.v1 import common_pb2

__all__ = [
    "BUILTIN_HANDLERS",
    "ExecError",
    "Handler",
    "TaskContext",
    "TaskError",
    "exec_handler",
    "load_handler",
    "make_exec_handler",
    "run_as_user",
    "task_environment",
    "noop_handler",
    "sleep_handler",
]

log = logging.getLogger("gpucp.agent")

# How much of each output stream an exec task keeps (the tail: that is where errors are).
OUTPUT_TAIL_BYTES = 64 * 1024
# How long a cancelled subprocess gets between SIGTERM and SIGKILL.
KILL_GRACE_S = 5.0
_ERROR_TAIL_CHARS = 500
# What a task's process inherits from the agent's environment: the basics a program needs, never
# the agent's secrets (GPUCP_TOKEN, GPUCP_AGENT_TOKEN, RUNPOD_API_KEY, cloud keys...).
BASE_ENV = ("PATH", "LANG", "LC_ALL", "TZ", "TMPDIR", "HOME", "USER", "LOGNAME")
_DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"


@dataclasses.dataclass(frozen=True)
class TaskContext:
    """What a handler knows about the attempt it runs, besides the task itself."""

    task_id: str
    attempt: int
    worker_id: str
    gpu_indices: tuple[int, ...]
    # Variables for the task's processes: CUDA_VISIBLE_DEVICES and the GPUCP_* names (for a GPU
    # task GPUCP_GPU_MILLI, its share of each GPU in thousandths: 1000 for whole GPUs, and
    # GPUCP_GPU_MEMORY_MB, the GPU memory a share reserved, when it did).
    env: Mapping[str, str]
    progress: Callable[[float], None] = dataclasses.field(default=lambda fraction: None, repr=False)

    @classmethod
    def for_task(
        cls,
        task: common_pb2.Task,
        worker_id: str,
        progress: Callable[[float], None] | None = None,
    ) -> TaskContext:
        """Return the context of one attempt; CPU tasks (no GPU indices) see no GPU at all."""
        indices = tuple(task.gpu_indices)
        env = {
            "CUDA_VISIBLE_DEVICES": ",".join(map(str, indices)),
            "GPUCP_TASK_ID": task.id,
            "GPUCP_ATTEMPT": str(task.attempt),
            "GPUCP_WORKER_ID": worker_id,
        }
        req = task.spec.requirements
        if indices:
            env["GPUCP_GPU_MILLI"] = str(req.gpu_milli or 1000)
            if req.gpu_memory_mb:
                env["GPUCP_GPU_MEMORY_MB"] = str(req.gpu_memory_mb)
        if progress is None:
            return cls(task.id, task.attempt, worker_id, indices, env)
        return cls(task.id, task.attempt, worker_id, indices, env, progress)

    def report_progress(self, fraction: float) -> None:
        """Tell the control plane how far the task is (0.0-1.0); best effort, never raises."""
        with contextlib.suppress(Exception):
            self.progress(min(1.0, max(0.0, float(fraction))))


Handler = Callable[[common_pb2.Task, TaskContext], Awaitable[bytes]]


class TaskError(Exception):
    """Raise it from a handler when the task itself is wrong (a payload it cannot parse, bad arguments).

    The task then fails at once with this message, without a retry elsewhere, and the worker is
    not blamed for it. Any other exception counts as this attempt failing: the task is retried.
    """


class ExecError(RuntimeError):
    """An exec task's process exited with a non-zero code."""


async def noop_handler(task: common_pb2.Task, ctx: TaskContext) -> bytes:
    """Return the payload unchanged."""
    return bytes(task.spec.payload)


async def sleep_handler(task: common_pb2.Task, ctx: TaskContext) -> bytes:
    """Sleep for the seconds the payload names ({"seconds": x} or a bare number)."""
    seconds = _parse_seconds(task.spec.payload)
    await asyncio.sleep(seconds)
    return b""


def _parse_seconds(payload: bytes) -> float:
    expected = 'the sleep payload must be JSON {"seconds": <number>} or a bare number such as 1.5'
    try:
        value: Any = json.loads(payload.decode("utf-8")) if payload.strip() else None
    except (UnicodeDecodeError, ValueError):
        raise TaskError(f"{expected}; got {payload[:100]!r}.") from None
    if isinstance(value, dict):
        value = value.get("seconds")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise TaskError(f"{expected} (a finite number of seconds >= 0); got {payload[:100]!r}.")
    return float(value)


@dataclasses.dataclass(frozen=True)
class _ExecRequest:
    argv: list[str]
    env: dict[str, str]
    cwd: str | None
    stdin: str | None


def _parse_exec_payload(payload: bytes) -> _ExecRequest:
    expected = (
        'the exec payload must be a JSON object {"argv": ["program", "arg", ...], '
        '"env": {"NAME": "value"} (optional), "cwd": "dir" (optional), "stdin": "text" (optional)}'
    )
    try:
        value: Any = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise TaskError(f"{expected}; got {payload[:100]!r}.") from None
    if not isinstance(value, dict):
        raise TaskError(f"{expected}; got {payload[:100]!r}.")
    argv = value.get("argv")
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
        raise TaskError(f"{expected}; argv must be a non-empty list of strings.")
    env = value.get("env") or {}
    if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise TaskError(f"{expected}; env must map strings to strings.")
    cwd = value.get("cwd")
    stdin = value.get("stdin")
    if cwd is not None and not isinstance(cwd, str):
        raise TaskError(f"{expected}; cwd must be a string.")
    if stdin is not None and not isinstance(stdin, str):
        raise TaskError(f"{expected}; stdin must be a string.")
    return _ExecRequest(argv, env, cwd, stdin)


async def _read_tail(stream: asyncio.StreamReader | None, limit: int) -> bytes:
    """Read a stream to its end, keeping only the last `limit` bytes."""
    if stream is None:
        return b""
    tail = bytearray()
    while chunk := await stream.read(64 * 1024):
        tail += chunk
        if len(tail) > limit:
            del tail[: len(tail) - limit]
    return bytes(tail)


async def _feed_stdin(process: asyncio.subprocess.Process, data: bytes | None) -> None:
    if process.stdin is None:
        return
    # The process may exit without reading its input; that is its business, not an error.
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        if data:
            process.stdin.write(data)
            await process.stdin.drain()
    process.stdin.close()


def _signal_group(process: asyncio.subprocess.Process, signum: int) -> None:
    # The process leads its own session, so its children (sh -c ...) get the signal too.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signum)


async def _terminate(process: asyncio.subprocess.Process, grace_s: float) -> None:
    """SIGTERM the process group, then SIGKILL it when it is still there after the grace."""
    if process.returncode is None:
        _signal_group(process, signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(process.wait()), grace_s)
        except TimeoutError:
            log.warning("process %d ignored SIGTERM for %.1f s; sending SIGKILL", process.pid, grace_s)
    # Also for an exited leader: children it left behind in its group must not outlive the task.
    _signal_group(process, signal.SIGKILL)
    await process.wait()


@dataclasses.dataclass(frozen=True)
class RunAs:
    """The unprivileged user task processes run as (`gpucp agent --run-as USER`)."""

    name: str
    uid: int
    gid: int
    home: str
    setpriv: str  # util-linux's setpriv, which switches to the user and then runs the program

    def command(self, argv: list[str]) -> list[str]:
        """`argv` run as this user. setpriv switches, not Python: a Popen that switches user itself
        must fork() rather than vfork(), and a plain fork of the agent runs gRPC's fork handlers
        in the child, which now and then crash it before it execs (exit code -11)."""
        return [self.setpriv, f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups", "--", *argv]


def run_as_user(name: str) -> RunAs:
    """Look up `name` for --run-as; ValueError unless it exists, is not root and this agent can switch to it."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise ValueError(f"--run-as {name!r}: no such user on this machine; create it (useradd) first") from None
    if entry.pw_uid == 0:
        raise ValueError(f"--run-as {name!r} is root: give an unprivileged user")
    if os.geteuid() not in (0, entry.pw_uid):
        raise ValueError(f"--run-as {name!r}: the agent must run as root to start processes as another user")
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        raise ValueError(f"--run-as {name!r} needs setpriv (Debian's util-linux package) on the PATH")
    return RunAs(name, entry.pw_uid, entry.pw_gid, entry.pw_dir, setpriv)


def task_environment(
    ctx_env: Mapping[str, str], own: Mapping[str, str], run_as: RunAs | None = None
) -> dict[str, str]:
    """A task process's environment: the basics of the agent's (BASE_ENV), the attempt's
    variables (CUDA_VISIBLE_DEVICES, GPUCP_*), then the task's own; nothing else of the agent's."""
    env = {name: os.environ[name] for name in BASE_ENV if name in os.environ}
    env.setdefault("PATH", _DEFAULT_PATH)
    if run_as is not None:
        env.update(HOME=run_as.home, USER=run_as.name, LOGNAME=run_as.name)
    return {**env, **ctx_env, **own}


def make_exec_handler(programs: Collection[str] = (), run_as: RunAs | None = None) -> Handler:
    """The exec handler: runs argv, only a program named in `programs` when any are given (exactly
    as listed: a bare name or an absolute path), as `run_as` when given."""
    allowed = frozenset(programs)

    async def exec_handler(task: common_pb2.Task, ctx: TaskContext) -> bytes:
        """Run a subprocess; return JSON {"exit_code", "stdout", "stderr"} (the last 64 KiB of each)."""
        request = _parse_exec_payload(task.spec.payload)
        if allowed and request.argv[0] not in allowed:
            raise TaskError(
                f"program {request.argv[0][:100]!r} is not allowed on this agent, which runs only "
                f"{', '.join(sorted(allowed))} (gpucp agent --allow-exec)"
            )
        argv = request.argv if run_as is None else run_as.command(request.argv)
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE if request.stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=request.cwd,
            env=task_environment(ctx.env, request.env, run_as),
            start_new_session=True,
        )
        return await _collect(process, request)

    return exec_handler


async def _collect(process: asyncio.subprocess.Process, request: _ExecRequest) -> bytes:
    """Feed the process its input, wait for it and return its result (it dies with a cancelled attempt)."""
    stdin_data = request.stdin.encode("utf-8") if request.stdin is not None else None
    stdout_reader = asyncio.create_task(_read_tail(process.stdout, OUTPUT_TAIL_BYTES))
    stderr_reader = asyncio.create_task(_read_tail(process.stderr, OUTPUT_TAIL_BYTES))
    stdin_writer = asyncio.create_task(_feed_stdin(process, stdin_data))
    io_tasks: list[asyncio.Task[Any]] = [stdout_reader, stderr_reader, stdin_writer]
    try:
        exit_code = await process.wait()
        stdout, stderr = await stdout_reader, await stderr_reader
        await stdin_writer
    except BaseException:
        # Cancelled (or failed): the process must not outlive the attempt.
        # Shielded so that a second cancel cannot leave the process running.
        await asyncio.shield(_terminate(process, KILL_GRACE_S))
        for io_task in io_tasks:
            io_task.cancel()
        await asyncio.gather(*io_tasks, return_exceptions=True)
        raise
    stdout_text = stdout.decode("utf-8", errors="replace")
    stderr_text = stderr.decode("utf-8", errors="replace")
    if exit_code != 0:
        tail = stderr_text[-_ERROR_TAIL_CHARS:].strip()
        raise ExecError(f"exit code {exit_code}: {tail}" if tail else f"exit code {exit_code}")
    return json.dumps({"exit_code": exit_code, "stdout": stdout_text, "stderr": stderr_text}).encode("utf-8")


# Any program, as the agent's user: what `gpucp agent --allow-exec` offers.
exec_handler = make_exec_handler()

# exec is not among them: an agent offers it only when started with --allow-exec.
BUILTIN_HANDLERS: dict[str, Handler] = {
    "noop": noop_handler,
    "sleep": sleep_handler,
}


def _as_bytes(value: object, name: str) -> bytes:
    if value is None:
        return b""
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"handler {name} returned {type(value).__name__}; it must return bytes, str or None.")


def load_handler(reference: str) -> Handler:
    """Import "module:function" and adapt `fn(payload: bytes, ctx) -> bytes | str | None` to a Handler.

    A sync function runs in a thread (asyncio.to_thread); an async one is awaited.
    Raises ValueError saying what could not be found.
    """
    module_name, sep, attr_path = reference.partition(":")
    if not sep or not module_name or not attr_path:
        raise ValueError(f"handler reference {reference!r} must look like 'package.module:function'.")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import module {module_name!r} for handler {reference!r}: {exc}") from exc
    fn: Any = module
    for part in attr_path.split("."):
        try:
            fn = getattr(fn, part)
        except AttributeError:
            raise ValueError(
                f"module {module_name!r} has no attribute {attr_path!r} (handler {reference!r})."
            ) from None
    if not callable(fn):
        raise ValueError(f"handler {reference!r} is a {type(fn).__name__}, not a callable.")

    if inspect.iscoroutinefunction(fn):

        async def run_async(task: common_pb2.Task, ctx: TaskContext) -> bytes:
            return _as_bytes(await fn(bytes(task.spec.payload), ctx), reference)

        return run_async

    async def run_sync(task: common_pb2.Task, ctx: TaskContext) -> bytes:
        # A cancelled attempt cannot stop a thread; its result is simply dropped.
        result = await asyncio.to_thread(fn, bytes(task.spec.payload), ctx)
        if inspect.isawaitable(result):
            result = await result
        return _as_bytes(result, reference)

    return run_sync
