"""Worker ids: unique by default, and never shared by two live agents."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from agents.runtime import default_worker_id
from cluster import AgentProcess, ControlPlaneProcess
from gpucp import Client
from gpucp.v1 import common_pb2


def test_default_ids_differ_for_agents_that_are_pid_1_on_one_host(monkeypatch: pytest.MonkeyPatch) -> None:
    # Containers on the host's network share its hostname, and each agent in them is PID 1.
    monkeypatch.setattr(os, "getpid", lambda: 1)
    monkeypatch.setattr(socket, "gethostname", lambda: "gpu-node-7")
    first, second = default_worker_id(), default_worker_id()
    assert first != second, f"two agents would both register as {first!r} and knock each other off"
    assert first.startswith("gpu-node-7-") and second.startswith("gpu-node-7-"), (first, second)


def test_a_second_agent_with_a_live_worker_id_exits_2_and_the_first_keeps_working(
    tmp_path: Path, controlplane: ControlPlaneProcess, client: Client, start_agent: Callable[..., AgentProcess]
) -> None:
    # Before: the two knocked each other off about ten times a second, forever.
    first = start_agent("dup")
    workdir = tmp_path / "second"  # its own log file
    workdir.mkdir()
    second = AgentProcess(workdir, controlplane.address, "dup")
    try:
        code = second.proc.wait(30)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the second agent kept running with a worker id another holds: {second.log()}") from None
    finally:
        second.stop()
    log = second.log()
    assert code == 2, f"the second agent must exit 2, got {code}: {log}"
    assert "refused worker id 'dup'" in log, log
    assert "Traceback" not in log, log
    assert first.proc.poll() is None, f"the first agent stopped: {first.log()}"
    task = client.run("noop", b"still mine", wait_s=30)
    assert task.state == common_pb2.TASK_STATE_SUCCEEDED, task.error
    assert (task.worker_id, task.attempt, task.result) == ("dup", 1, b"still mine")
    assert [w.worker_id for w in client.workers()] == ["dup"]
    assert first.log().count("registered with") == 1, f"the first agent was knocked off: {first.log()}"
