"""README, Leases: a dead agent's tasks run elsewhere within two heartbeat intervals, and a task
that loses its worker more than 5 times fails."""

from __future__ import annotations

import json
import time

from cluster import AgentProcess, ControlPlaneProcess, eventually, wait_for_workers
from gpucp.v1 import common_pb2

S = common_pb2
CRASH = ("--handler", "crash=claims_handlers:crash")


def test_a_killed_agents_task_runs_elsewhere_within_two_heartbeat_intervals(tmp_path):
    # Agents send two heartbeats per heartbeat timeout (README): a 4 s timeout is a 2 s interval,
    # long enough that the bound is about the reconnect grace, not about a busy machine.
    heartbeat_timeout_s = 4.0
    two_intervals_ms = 2 * heartbeat_timeout_s / 2 * 1000
    cp = ControlPlaneProcess(tmp_path, heartbeat_timeout=heartbeat_timeout_s).start()
    victim = AgentProcess(tmp_path, cp.address, "victim", "--slots", "1")
    rescuer = None
    try:
        with cp.client() as client:
            wait_for_workers(client, ["victim"])
            task_id = client.submit("sleep", json.dumps({"seconds": 60}))
            eventually(lambda: (t := client.get(task_id)).state == S.TASK_STATE_RUNNING and t.worker_id == "victim",
                       20, "the task to run on the victim")
            rescuer = AgentProcess(tmp_path, cp.address, "rescuer", "--slots", "1")
            wait_for_workers(client, ["rescuer"])
            killed_ms = time.time() * 1000  # taken before the kill: the measured time can only be longer
            victim.kill()
            moved = eventually(
                lambda: (t := client.get(task_id)).state == S.TASK_STATE_RUNNING and t.worker_id == "rescuer" and t,
                30, "the task to run on the rescuer",
            )
            took_ms = moved.started_at_ms - killed_ms
            assert moved.attempt == 2, f"the task moved as attempt {moved.attempt}, not as the next attempt (2)"
            assert took_ms <= two_intervals_ms, (
                f"the dead agent's task ran elsewhere {took_ms:.0f} ms after the kill, more than two heartbeat "
                f"intervals ({two_intervals_ms:.0f} ms)"
            )
    finally:
        victim.stop()
        if rescuer is not None:
            rescuer.stop()
        cp.kill()


def test_a_task_that_loses_its_worker_more_than_five_times_fails_as_what_may_crash_them(tmp_path):
    cp = ControlPlaneProcess(tmp_path, heartbeat_timeout=1.0).start()
    agents = [AgentProcess(tmp_path, cp.address, f"w{i}", "--slots", "1", *CRASH) for i in range(2)]
    try:
        with cp.client() as client:
            wait_for_workers(client, ["w0", "w1"])
            # No retries: losing a worker is not the task failing, so only the loss limit ends it.
            task_id = client.submit("crash", max_retries=0)
            deadline = time.monotonic() + 120
            while (task := client.get(task_id)).state != S.TASK_STATE_FAILED:
                assert task.state in (S.TASK_STATE_PENDING, S.TASK_STATE_ASSIGNED, S.TASK_STATE_RUNNING), task
                assert time.monotonic() < deadline, f"the task did not fail within 120 s: {task}"
                for agent in agents:
                    if agent.proc.poll() is not None:  # the task took it down: bring the machine back
                        agent.restart()
                time.sleep(0.1)
            assert task.attempt == 6 and len(task.attempt_errors) == 6, (
                f"expected the task to fail after its 6th lost worker, it ended at attempt {task.attempt}: "
                f"{list(task.attempt_errors)}"
            )
            assert "lost its worker 6 times" in task.error and "may be what crashes" in task.error, task.error
            for n, error in enumerate(task.attempt_errors, start=1):
                assert error.startswith(f"attempt {n} on w"), f"attempt {n}'s error does not say so: {error!r}"
    finally:
        for agent in agents:
            agent.stop()
        cp.kill()
