"""The `gpucp` command as an operator types it."""

from __future__ import annotations

import os
import subprocess
import sys

from cluster import ROOT, sqlite_only
from gpucp.v1 import common_pb2


def gpucp(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gpucp", *args], capture_output=True, text=True, timeout=120, cwd=ROOT,
        env={**os.environ, **(env or {})},
    )


def test_submit_wait_and_status(controlplane, start_agent):
    start_agent("cli-box", "--gpus", "2xL4-24GB", "--slots", "2")
    one = gpucp("submit", "noop", "hello", "--gpus", "1", "--wait", "--server", controlplane.address)
    assert one.returncode == 0, one.stderr
    assert "succeeded" in one.stdout and one.stdout.rstrip().endswith("hello")

    many = gpucp("submit", "noop", "--count", "50", "--priority", "high", "--wait", "--server", controlplane.address)
    assert many.returncode == 0, many.stderr
    assert "50/50" in many.stderr and "succeeded 50" in many.stderr

    status = gpucp("status", "--server", controlplane.address)
    assert status.returncode == 0, status.stderr
    assert "succeeded 51" in status.stdout
    row = next(line for line in status.stdout.splitlines() if line.startswith("cli-box"))
    assert "2x NVIDIA L4" in row and "healthy" in row


def test_failed_tasks_make_submit_exit_nonzero(controlplane, start_agent):
    start_agent("cli-box", "--slots", "1", "--allow-exec")
    failing = gpucp("submit", "exec", '{"argv": ["false"]}', "--max-retries", "0", "--wait",
                    "--server", controlplane.address)
    assert failing.returncode == 1
    assert "failed" in failing.stderr and "exit code 1" in failing.stderr


def test_bad_input_is_explained_without_a_traceback(controlplane):
    bad = gpucp("submit", "noop", "--priority", "asap", "--server", controlplane.address)
    assert bad.returncode == 1
    assert "priority 'asap' is not one of low, normal, high, urgent" in bad.stderr
    assert "Traceback" not in bad.stderr
    refused = gpucp("submit", "noop", "--gpus", "1000", "--server", controlplane.address)
    assert refused.returncode == 1 and "INVALID_ARGUMENT" in refused.stderr


# On PostgreSQL a second control plane is a standby instead (tests/test_leader.py).
@sqlite_only
def test_a_second_control_plane_on_the_same_db_is_refused(controlplane, client):
    # Both would place the same tasks: the second must not start, and the first keeps serving.
    second = gpucp("serve", "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0", "--db", str(controlplane.db))
    assert second.returncode == 1
    assert f"{controlplane.db} is in use by another control plane (pid {controlplane.proc.pid})" in second.stderr
    assert "Traceback" not in second.stderr
    task_id = client.submit("noop")
    assert client.get(task_id).state == common_pb2.TASK_STATE_PENDING


def test_a_bad_agent_flag_stops_the_agent_before_it_connects():
    agent = gpucp("agent", "--server", "127.0.0.1:9", "--cost-per-hour", "-1")
    assert agent.returncode == 2
    assert "--cost-per-hour must be a price of 0 or more, got -1.0." in agent.stderr
    assert "Traceback" not in agent.stderr


def test_an_unknown_event_loop_stops_the_control_plane_before_it_listens(tmp_path):
    serve = gpucp("serve", "--listen", "127.0.0.1:0", "--db", str(tmp_path / "x.db"), env={"GPUCP_EVENT_LOOP": "tokio"})
    assert serve.returncode == 1
    assert "GPUCP_EVENT_LOOP='tokio' is not one of uvloop, asyncio" in serve.stderr
    assert "Traceback" not in serve.stderr and not (tmp_path / "x.db").exists()


def test_a_negative_keep_finished_stops_the_control_plane_before_it_listens(tmp_path):
    serve = gpucp("serve", "--listen", "127.0.0.1:0", "--db", str(tmp_path / "x.db"), "--keep-finished", "-5")
    assert serve.returncode == 1
    assert "--keep-finished -5: give seconds >= 0 (0 keeps finished tasks forever)" in serve.stderr
    assert "Traceback" not in serve.stderr and not (tmp_path / "x.db").exists()


def test_bad_scheduling_flags_stop_the_control_plane_before_it_listens(tmp_path):
    db = tmp_path / "x.db"
    cases = {
        ("--weight", "speedy=1"): "--weight 'speedy=1': the term must be one of availability, success, speed, "
                                  "affinity, fit, cost",
        ("--weight", "fit=-0.5"): "--weight 'fit=-0.5': give a weight >= 0",
        ("--priority-weights", "1,2,3"): "--priority-weights '1,2,3': give four shares, LOW,NORMAL,HIGH,URGENT",
        ("--priority-weights", "1,0,3,4"): "--priority-weights '1,0,3,4': give shares > 0",
        ("--aging", "-1"): "--aging -1: give seconds >= 0",
        ("--aging", "inf"): "--aging inf: give seconds >= 0",
        ("--warmup", "-2"): "--warmup -2: give a number of successes from 0 (all slots at once) to 4294967295",
        ("--warmup", "4294967296"): "--warmup 4294967296: give a number of successes from 0",
    }
    for flags, message in cases.items():
        serve = gpucp("serve", "--listen", "127.0.0.1:0", "--db", str(db), *flags)
        assert serve.returncode == 1, f"{flags} was accepted"
        assert message in serve.stderr, f"{flags}: {serve.stderr}"
        assert "Traceback" not in serve.stderr and not db.exists()
