"""Retries avoid the worker that failed, bad workers are quarantined, cancels race safely."""

from __future__ import annotations

import json
import random
import threading
from concurrent.futures import ThreadPoolExecutor

from cluster import FAULT_REPORT, AgentProcess, ControlPlaneProcess, eventually, wait_for_workers
from gpucp import GpucpError, task_spec
from gpucp.v1 import common_pb2

S = common_pb2
# Fails only on the worker named "bad": the task is fine, that worker is not.
FAILS_ON_BAD = json.dumps({"argv": ["sh", "-c", 'test "$GPUCP_WORKER_ID" != bad']})


def test_a_retry_goes_to_another_worker_and_a_bad_worker_is_quarantined(tmp_path):
    cp = ControlPlaneProcess(tmp_path, "--retry-base", "0.05", "--quarantine-after", "3",
                             "--quarantine-cooling", "2").start()
    bad = AgentProcess(tmp_path, cp.address, "bad", "--slots", "2", "--allow-exec")
    good = AgentProcess(tmp_path, cp.address, "good", "--slots", "2", "--allow-exec")
    try:
        with cp.client() as client:
            wait_for_workers(client, ["bad", "good"])
            ids = client.submit_many([task_spec("exec", FAILS_ON_BAD, max_retries=1) for _ in range(20)])
            tasks = [client.wait(t, timeout_s=60) for t in ids]
            failed = [t for t in tasks if t.state != S.TASK_STATE_SUCCEEDED]
            assert not failed, f"a retry went back to the failing worker: {failed[0].attempt_errors}"
            retried = [t for t in tasks if t.attempt == 2]
            assert retried, "no task failed on the bad worker first: the test proved nothing"
            assert all(t.worker_id == "good" for t in retried)

            health = {w.worker_id: w.health for w in client.workers()}
            assert health["bad"].startswith("quarantined"), health
            assert health["good"] == "healthy"
            # While quarantined it gets nothing, even when the good worker is busy.
            more = client.submit_many([task_spec("noop") for _ in range(10)])
            assert {client.wait(t, timeout_s=30).worker_id for t in more} == {"good"}
            # After the cooling period it is probed back in.
            eventually(lambda: {w.worker_id: w.health for w in client.workers()}["bad"] == "probation", 20,
                       "the quarantine to end")
    finally:
        bad.stop()
        good.stop()
        cp.kill()


def test_cancel_racing_completion_ends_in_exactly_one_terminal_state(tmp_path):
    cp = ControlPlaneProcess(tmp_path).start()
    agents = [AgentProcess(tmp_path, cp.address, f"w{i}", "--slots", "8") for i in range(2)]
    rounds = 1000
    try:
        with cp.client() as client:
            wait_for_workers(client, ["w0", "w1"])
            terminal: dict[str, list[int]] = {}
            events = client.watch()

            def follow() -> None:
                for event in events:
                    if event.state in (S.TASK_STATE_SUCCEEDED, S.TASK_STATE_CANCELLED, S.TASK_STATE_FAILED):
                        terminal.setdefault(event.task_id, []).append(event.state)

            threading.Thread(target=follow, daemon=True).start()
            ids = client.submit_many([task_spec("noop") for _ in range(rounds)])
            order = ids[:]
            random.Random(9).shuffle(order)

            def cancel(task_id: str) -> int | str:
                try:
                    return client.cancel(task_id)
                except GpucpError as exc:  # it finished first: FAILED_PRECONDITION
                    return str(exc)

            # Cancels land before, during and after the tasks' runs, from 8 threads at once.
            with ThreadPoolExecutor(8) as pool:
                answers = dict(zip(order, pool.map(cancel, order), strict=True))
            final = {t: client.wait(t, timeout_s=30) for t in ids}
            eventually(lambda: len(terminal) == rounds, 20, "every terminal event")
            doubled = [t for t, states in terminal.items() if len(states) != 1]
            ended = (S.TASK_STATE_SUCCEEDED, S.TASK_STATE_CANCELLED)
            lost = [t for t, task in final.items() if task.state not in ended]
            cancelled = sum(1 for t in final.values() if t.state == S.TASK_STATE_CANCELLED)
            FAULT_REPORT.append({"trial": "cancel racing completion", "trials": rounds, "tasks": rounds,
                                 "lost": len(lost), "duplicated": len(doubled)})
            assert not lost, f"{len(lost)} tasks neither succeeded nor were cancelled, e.g. {final[lost[0]]}"
            assert not doubled, f"{len(doubled)} tasks reached two terminal states"
            for task_id, task in final.items():
                answer = answers[task_id]
                if task.state == S.TASK_STATE_CANCELLED:
                    assert answer == S.TASK_STATE_CANCELLED
                else:
                    assert task.state == S.TASK_STATE_SUCCEEDED and "FAILED_PRECONDITION" in str(answer)
            assert 0 < cancelled < rounds, f"{cancelled} cancelled: the race was not exercised"
    finally:
        for agent in agents:
            agent.stop()
        cp.kill()


def test_a_task_nobody_can_run_fails_after_the_queue_timeout_but_a_busy_fleet_does_not(tmp_path):
    cp = ControlPlaneProcess(tmp_path, "--queue-timeout", "1").start()
    agent = AgentProcess(tmp_path, cp.address, "cpu-only", "--slots", "1")
    try:
        with cp.client() as client:
            wait_for_workers(client, ["cpu-only"])
            impossible = client.submit("noop", gpus=1, min_gpu_memory_mb=81920)
            blocker = client.submit("sleep", json.dumps({"seconds": 3}))
            waiting = client.submit("noop", "waited")  # runnable, queued behind the blocker for 3 s
            task = client.wait(impossible, timeout_s=30)
            assert task.state == S.TASK_STATE_FAILED
            assert "queue timeout of 1 s" in task.error and "no connected worker has 1 GPU" in task.error
            assert client.wait(blocker, timeout_s=30).state == S.TASK_STATE_SUCCEEDED
            done = client.wait(waiting, timeout_s=30)
            assert (done.state, done.result) == (S.TASK_STATE_SUCCEEDED, b"waited")
    finally:
        agent.stop()
        cp.kill()
