"""Built-in task handlers (noop, sleep, exec) and user handlers loaded by name."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import textwrap
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from agents import TaskContext, load_handler
from agents import handlers as handlers_module
from agents.handlers import ExecError, TaskError, exec_handler, noop_handler, sleep_handler
from agents.runner import format_error
from gpucp.v1 import common_pb2

T = TypeVar("T")


def run(coro: Awaitable[T], timeout: float = 20.0) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


def make_task(kind: str, payload: Any, gpus: tuple[int, ...] = ()) -> common_pb2.Task:
    if not isinstance(payload, bytes):
        payload = json.dumps(payload).encode()
    return common_pb2.Task(id="t1", attempt=1, spec=common_pb2.TaskSpec(kind=kind, payload=payload), gpu_indices=gpus)


def call(handler: Any, task: common_pb2.Task) -> bytes:
    result: bytes = run(handler(task, TaskContext.for_task(task, "w1")))
    return result


def test_context_exposes_assigned_gpus_and_hides_them_from_cpu_tasks() -> None:
    gpu_ctx = TaskContext.for_task(make_task("noop", b"", gpus=(0, 2)), "w1")
    assert gpu_ctx.gpu_indices == (0, 2)
    assert gpu_ctx.env["CUDA_VISIBLE_DEVICES"] == "0,2"
    assert TaskContext.for_task(make_task("noop", b""), "w1").env["CUDA_VISIBLE_DEVICES"] == ""


def test_noop_returns_the_payload() -> None:
    assert call(noop_handler, make_task("noop", b"\x00payload")) == b"\x00payload"


@pytest.mark.parametrize("payload", [b"0.01", b'{"seconds": 0.01}', b"0"])
def test_sleep_accepts_a_number_or_an_object(payload: bytes) -> None:
    assert call(sleep_handler, make_task("sleep", payload)) == b""


@pytest.mark.parametrize("payload", [b"", b"soon", b'{"secs": 1}', b"-1", b"true", b'"1"'])
def test_sleep_rejects_a_bad_payload_saying_what_is_expected(payload: bytes) -> None:
    # A TaskError: the task is wrong, and running it elsewhere would not help.
    with pytest.raises(TaskError, match=r'JSON \{"seconds": <number>\} or a bare number'):
        call(sleep_handler, make_task("sleep", payload))


def test_exec_returns_exit_code_and_output(tmp_path: Path) -> None:
    script = (
        "import os, sys; print(os.getcwd(), os.environ['GREETING'], sys.stdin.read()); print('warn', file=sys.stderr)"
    )
    task = make_task(
        "exec",
        {
            "argv": [sys.executable, "-c", script],
            "env": {"GREETING": "hi"},
            "cwd": str(tmp_path),
            "stdin": "from stdin",
        },
    )
    result = json.loads(call(exec_handler, task))
    assert result == {"exit_code": 0, "stdout": f"{tmp_path} hi from stdin\n", "stderr": "warn\n"}


def test_exec_non_zero_exit_fails_with_the_stderr_tail() -> None:
    script = "import sys; sys.stderr.write('x' * 2000 + 'CUDA out of memory'); sys.exit(3)"
    task = make_task("exec", {"argv": [sys.executable, "-c", script]})
    with pytest.raises(ExecError) as raised:
        call(exec_handler, task)
    message = str(raised.value)
    assert message.startswith("exit code 3: ")
    assert message.endswith("CUDA out of memory")
    assert len(message) <= len("exit code 3: ") + 500
    assert format_error(raised.value).startswith("ExecError: exit code 3: ")


def test_exec_keeps_only_the_last_64_kib_of_output() -> None:
    script = "import sys; sys.stdout.write('a' * 100000 + 'END')"
    result = json.loads(call(exec_handler, make_task("exec", {"argv": [sys.executable, "-c", script]})))
    assert len(result["stdout"]) == 64 * 1024
    assert result["stdout"].endswith("aEND")


@pytest.mark.parametrize(
    "payload",
    [
        b"ls",
        b"[]",
        b'{"argv": []}',
        b'{"argv": "ls -l"}',
        b'{"argv": ["ls"], "env": {"A": 1}}',
        b'{"argv": ["ls"], "cwd": 3}',
    ],
)
def test_exec_rejects_a_bad_payload_saying_what_is_expected(payload: bytes) -> None:
    with pytest.raises(TaskError, match=r'the exec payload must be a JSON object \{"argv"'):
        call(exec_handler, make_task("exec", payload))


def test_cancelled_exec_kills_a_process_that_ignores_sigterm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(handlers_module, "KILL_GRACE_S", 0.2)
    pidfile = tmp_path / "pid"
    # The child traps SIGTERM, so only the SIGKILL after the grace ends it.
    script = f"trap '' TERM; echo $$ > {pidfile}; while true; do sleep 0.05; done"
    task = make_task("exec", {"argv": ["sh", "-c", script]})

    async def scenario() -> int:
        running = asyncio.create_task(exec_handler(task, TaskContext.for_task(task, "w1")))
        while not pidfile.exists() or not pidfile.read_text().strip():
            await asyncio.sleep(0.02)
        pid = int(pidfile.read_text())
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
        return pid

    pid = run(scenario())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_load_handler_adapts_sync_and_async_functions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "my_handlers.py").write_text(
        textwrap.dedent(
            """
            import asyncio

            def upper(payload, ctx):
                return payload.decode().upper()

            async def gpus(payload, ctx):
                await asyncio.sleep(0)
                return ctx.env["CUDA_VISIBLE_DEVICES"].encode()

            def nothing(payload, ctx):
                return None

            def wrong(payload, ctx):
                return 42
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert call(load_handler("my_handlers:upper"), make_task("upper", b"abc")) == b"ABC"
    assert call(load_handler("my_handlers:gpus"), make_task("gpus", b"", gpus=(3,))) == b"3"
    assert call(load_handler("my_handlers:nothing"), make_task("nothing", b"")) == b""
    with pytest.raises(TypeError, match="must return bytes, str or None"):
        call(load_handler("my_handlers:wrong"), make_task("wrong", b""))


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        ("no_colon", "must look like 'package.module:function'"),
        ("surely_not_a_module_xyz:fn", "cannot import module 'surely_not_a_module_xyz'"),
        ("json:no_such_function", "module 'json' has no attribute 'no_such_function'"),
        ("json:__doc__", "not a callable"),
    ],
)
def test_load_handler_says_what_could_not_be_found(reference: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_handler(reference)


def test_format_error_keeps_errors_short() -> None:
    assert format_error(ValueError("bad")) == "ValueError: bad"
    assert format_error(KeyError()) == "KeyError"
    assert len(format_error(RuntimeError("é" * 10_000)).encode()) <= 4096
    # A TaskError's message is written for the submitter: it goes without the type's name.
    assert format_error(TaskError("argv must be a list")) == "argv must be a list"
    assert len(format_error(TaskError("x" * 10_000)).encode()) <= 4096
