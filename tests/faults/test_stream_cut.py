"""An agent that keeps running while its stream is cut: its work moves on, its late results are stale."""

from __future__ import annotations

import json
import time

from cluster import FAULT_REPORT, AgentProcess, ControlPlaneProcess, eventually, wait_for_workers
from faults.proxy import Proxy
from faults.watch import EventLog, percentile
from gpucp.v1 import common_pb2

S = common_pb2
TRIALS = 5


def test_cut_stream_moves_tasks_and_rejects_late_results(tmp_path):
    cp = ControlPlaneProcess(tmp_path, heartbeat_timeout=1.0).start()  # heartbeats every 0.5 s
    proxy = Proxy(cp.port)
    cut_agent = AgentProcess(tmp_path, f"127.0.0.1:{proxy.port}", "behind-proxy", "--slots", "1")
    rescuer = None
    moved_ms: list[float] = []
    outcomes: dict[str, common_pb2.Task] = {}
    try:
        with cp.client() as client:
            wait_for_workers(client, ["behind-proxy"])
            log = EventLog(cp.address)  # every outcome the control plane announces, per task
            for trial in range(TRIALS):
                task_id = client.submit("sleep", json.dumps({"seconds": 1.5}))
                # The lambdas take this trial's values as defaults rather than read the loop's variables when called.
                eventually(lambda t=task_id: client.get(t).state == S.TASK_STATE_RUNNING, 20, "the task to run")
                # A fresh rescuer per trial, started once the task runs behind the proxy.
                name = f"rescuer-{trial}"
                rescuer = AgentProcess(tmp_path, cp.address, name, "--slots", "1")
                wait_for_workers(client, [name])
                stale_before = client.stats().stale_updates
                cut_at = time.time() * 1000
                proxy.cut(hold=True)
                moved = eventually(lambda t=task_id, n=name: (task := client.get(t)).worker_id == n and task, 20,
                                   "the task to move to the rescuer")
                moved_ms.append(moved.started_at_ms - cut_at)
                proxy.release()
                # Back through the proxy, the agent's report about attempt 1 changes nothing.
                eventually(lambda n=stale_before: client.stats().stale_updates > n, 20, "its stale report")
                done = outcomes[task_id] = client.wait(task_id, timeout_s=30)
                assert (done.worker_id, done.attempt) == (name, 2), f"the rescuer did not finish attempt 2: {done}"
                rescuer.stop()
                rescuer = None
                eventually(lambda n=name: n not in {w.worker_id for w in client.workers()}, 20, "the rescuer to leave")
                wait_for_workers(client, ["behind-proxy"])
            # Lost: did not succeed, or no outcome was announced; duplicated: announced more than once.
            deadline = time.monotonic() + 10  # a missing outcome counts as lost, it does not stop the count
            while not all(log.terminal[t] for t in outcomes) and time.monotonic() < deadline:
                time.sleep(0.05)
            lost = [t for t, done in outcomes.items() if done.state != S.TASK_STATE_SUCCEEDED or not log.terminal[t]]
            duplicated = [t for t in outcomes if log.terminal[t] > 1]
        FAULT_REPORT.append({
            "trial": "stream cut by a loopback proxy", "trials": TRIALS, "tasks": TRIALS, "lost": len(lost),
            "duplicated": len(duplicated), "requeue_p50_ms": percentile(moved_ms, 0.5),
            "requeue_p99_ms": percentile(moved_ms, 0.99),
        })
        assert not lost, f"{len(lost)} tasks did not succeed or announced no outcome: {[outcomes[t] for t in lost]}"
        assert not duplicated, f"{len(duplicated)} tasks announced two outcomes: the late result was not ignored"
    finally:
        cut_agent.stop()
        if rescuer is not None:
            rescuer.stop()
        cp.kill()
