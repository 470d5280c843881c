"""Prefetch and work stealing with real processes: agents queue work, idle agents steal it, nothing runs twice."""

from __future__ import annotations

import collections
import json
import random
import time
from pathlib import Path

from cluster import FAULT_REPORT, AgentProcess, ControlPlaneProcess, eventually, wait_for_workers
from gpucp import Client, task_spec
from gpucp.v1 import common_pb2

S = common_pb2
RECORD = ["--handler", "record=fault_handlers:record", "--kinds", "record"]


def record_spec(seconds: float) -> common_pb2.TaskSpec:
    return task_spec("record", json.dumps({"seconds": seconds}), max_retries=0)


def executions(exec_log: Path) -> list[tuple[str, int, str]]:
    """(task_id, attempt, worker_id) per handler run, in the order they started."""
    return [(t, int(a), w) for t, a, w in (line.split() for line in exec_log.read_text().splitlines())]


def states(client: Client, ids: list[str]) -> collections.Counter[int]:
    return collections.Counter(client.get(t).state for t in ids)


def assert_each_ran_once(exec_log: Path, ids: list[str]) -> None:
    runs = collections.Counter(t for t, _, _ in executions(exec_log))
    twice = {t: n for t, n in runs.items() if n > 1}
    assert not twice, f"{len(twice)} tasks ran more than once: {twice}"
    assert set(runs) == set(ids), f"{len(set(ids) - set(runs))} tasks never ran"


def test_a_one_slot_agent_holds_one_running_and_two_prefetched_tasks_and_runs_them_in_order(tmp_path):
    cp = ControlPlaneProcess(tmp_path, "--prefetch-depth", "2").start()
    exec_log = tmp_path / "executions.log"
    agent = AgentProcess(tmp_path, cp.address, "solo", "--slots", "1", *RECORD, env={"GPUCP_EXEC_LOG": str(exec_log)})
    try:
        with cp.client() as client:
            wait_for_workers(client, ["solo"])
            ids = client.submit_many([record_spec(0.4) for _ in range(6)])
            want = {S.TASK_STATE_RUNNING: 1, S.TASK_STATE_ASSIGNED: 2, S.TASK_STATE_PENDING: 3}
            eventually(lambda: states(client, ids) == want, 20, f"1 running, 2 prefetched, 3 queued ({want})")
            tasks = [client.wait(t, timeout_s=30) for t in ids]
        assert all(t.state == S.TASK_STATE_SUCCEEDED for t in tasks), [t.state for t in tasks]
        assert [t for t, _, _ in executions(exec_log)] == ids, "the prefetched tasks did not run in FIFO order"
        assert all(t.attempt == 1 for t in tasks), "a task was assigned twice though nobody could steal it"
    finally:
        agent.stop()
        cp.kill()


def test_an_idle_agent_steals_prefetched_tasks_and_none_runs_twice(tmp_path):
    cp = ControlPlaneProcess(tmp_path, "--prefetch-depth", "2").start()
    exec_log = tmp_path / "executions.log"
    env = {"GPUCP_EXEC_LOG": str(exec_log)}
    slow = AgentProcess(tmp_path, cp.address, "slow", "--slots", "1", *RECORD, env=env)
    fast: AgentProcess | None = None
    try:
        with cp.client() as client:
            wait_for_workers(client, ["slow"])
            ids = client.submit_many([record_spec(0.3) for _ in range(30)])
            eventually(lambda: states(client, ids)[S.TASK_STATE_ASSIGNED] == 2, 20, "slow to prefetch 2 tasks")
            # Once the queue is empty, the 4-slot agent runs dry first and steals from the 1-slot one.
            fast = AgentProcess(tmp_path, cp.address, "fast", "--slots", "4", *RECORD, env=env)
            tasks = [client.wait(t, timeout_s=60) for t in ids]
        failed = [t for t in tasks if t.state != S.TASK_STATE_SUCCEEDED]
        assert not failed, f"{len(failed)} tasks did not succeed: {failed[0]}"
        stolen = [t for t in tasks if t.worker_id == "fast" and t.attempt >= 2 and not t.attempt_errors]
        assert stolen, "no task prefetched by slow was handed to fast: stealing never happened"
        assert_each_ran_once(exec_log, ids)
        first = {t: (a, w) for t, a, w in reversed(executions(exec_log))}
        assert all(first[t.id] == (t.attempt, "fast") for t in stolen), "a stolen task ran under another attempt"
    finally:
        slow.stop()
        if fast is not None:
            fast.stop()
        cp.kill()


def test_revokes_racing_starts_under_churn_never_run_a_task_twice(tmp_path):
    cp = ControlPlaneProcess(tmp_path, "--prefetch-depth", "2").start()
    exec_log = tmp_path / "executions.log"
    env = {"GPUCP_EXEC_LOG": str(exec_log)}
    agents = [AgentProcess(tmp_path, cp.address, f"w{i}", "--slots", str(i + 1), *RECORD, env=env) for i in range(2)]
    rng = random.Random(7)
    ids: list[str] = []
    try:
        with cp.client() as client:
            wait_for_workers(client, ["w0", "w1"])
            # Small waves: the queue keeps running dry, so idle agents keep stealing while the
            # victims' slots free up and start the very tasks being asked back.
            for _ in range(60):
                batch = rng.randint(3, 12)
                ids += client.submit_many([record_spec(rng.choice([0.0, 0.0, 0.002, 0.01])) for _ in range(batch)])
                time.sleep(rng.uniform(0.0, 0.05))
            tasks = [client.wait(t, timeout_s=60) for t in ids]
        failed = [t for t in tasks if t.state != S.TASK_STATE_SUCCEEDED]
        assert not failed, f"{len(failed)} tasks did not succeed: {failed[0]}"
        assert_each_ran_once(exec_log, ids)
        stolen = sum(1 for t in tasks if t.attempt >= 2)
        assert all(not t.attempt_errors for t in tasks), "an attempt failed or was lost in a healthy fleet"
        logs = "".join(a.log_path.read_text(errors="replace") for a in agents)
        # Revokes answered by a hand-back, and revokes that lost the race to a start (both happen).
        revokes = logs.count("handing task") + logs.count("keeping task")
        FAULT_REPORT.append({"trial": "work stealing under churn", "trials": revokes,
                             "tasks": len(ids), "lost": 0, "duplicated": 0, "rerun": 0})
        assert stolen, "no task was stolen: the race was not exercised"
    finally:
        for agent in agents:
            agent.stop()
        cp.kill()


# Two kinds on the same handler: `slow` holds the slot, `quick` is what gets prefetched (or not).
TWO_KINDS = ["--handler", "quick=fault_handlers:record", "--handler", "slow=fault_handlers:record",
             "--kinds", "quick,slow"]


def kind_spec(kind: str, seconds: float) -> common_pb2.TaskSpec:
    return task_spec(kind, json.dumps({"seconds": seconds}), max_retries=0)


def test_by_default_short_tasks_are_prefetched_once_learned_and_an_idle_agent_steals_them_once(tmp_path):
    cp = ControlPlaneProcess(tmp_path).start()  # no --prefetch-depth: tuned
    exec_log = tmp_path / "executions.log"
    env = {"GPUCP_EXEC_LOG": str(exec_log)}
    solo = AgentProcess(tmp_path, cp.address, "solo", "--slots", "1", *TWO_KINDS, env=env)
    thief: AgentProcess | None = None
    try:
        with cp.client() as client:
            wait_for_workers(client, ["solo"])
            # quick's runtime is unknown: nothing is prefetched behind the slow task.
            slow, *quick = client.submit_many([kind_spec("slow", 2), *(kind_spec("quick", 0) for _ in range(4))])
            eventually(lambda: client.get(slow).state == S.TASK_STATE_RUNNING, 20, "the slow task to start")
            time.sleep(0.5)  # several retunes (every 250 ms) while it runs
            assert states(client, quick) == {S.TASK_STATE_PENDING: 4}, "a task of unknown runtime was prefetched"
            client.gather([slow, *quick], timeout_s=60)
            # Learned: a quick task is over in a dispatch round trip, so it waits on the agent instead.
            # The slow task outlasts any start of the thief (seconds on a loaded machine): the quick
            # ones can only finish before it by being handed to the thief.
            slow, *quick = client.submit_many([kind_spec("slow", 60), *(kind_spec("quick", 0) for _ in range(6))])
            eventually(lambda: states(client, quick)[S.TASK_STATE_ASSIGNED] >= 1, 20, "quick tasks prefetched by solo")
            thief = AgentProcess(tmp_path, cp.address, "thief", "--slots", "1", *TWO_KINDS, env=env)
            tasks = client.gather(quick, timeout_s=60)
            assert client.get(slow).state == S.TASK_STATE_RUNNING, "the quick tasks waited for the slow one"
            client.cancel(slow)
        assert all(t.state == S.TASK_STATE_SUCCEEDED for t in tasks)
        stolen = [t for t in tasks if t.worker_id == "thief" and t.attempt >= 2]
        assert stolen, "no task prefetched by solo was handed to the idle thief"
        runs = collections.Counter(t for t, _, _ in executions(exec_log))
        assert set(quick) <= set(runs) and max(runs.values()) == 1, f"a task ran more than once: {runs}"
    finally:
        solo.stop()
        if thief is not None:
            thief.stop()
        cp.kill()


def test_by_default_long_tasks_are_not_prefetched(tmp_path):
    cp = ControlPlaneProcess(tmp_path).start()
    exec_log = tmp_path / "executions.log"
    solo = AgentProcess(tmp_path, cp.address, "solo", "--slots", "1", *TWO_KINDS,
                        env={"GPUCP_EXEC_LOG": str(exec_log)})
    try:
        with cp.client() as client:
            wait_for_workers(client, ["solo"])
            client.gather(client.submit_many([kind_spec("slow", 4)]), timeout_s=60)  # learned: 4 s
            first, *rest = client.submit_many([kind_spec("slow", 4) for _ in range(3)])
            eventually(lambda: client.get(first).state == S.TASK_STATE_RUNNING, 20, "the first to start")
            time.sleep(1)  # retunes every 250 ms while it runs
            assert states(client, rest) == {S.TASK_STATE_PENDING: 2}, "a 4 s task was prefetched"
            for task_id in [first, *rest]:
                client.cancel(task_id)
    finally:
        solo.stop()
        cp.kill()
