"""README, Retries and Reputation: backoff grows with jitter, every attempt keeps its error, and a
quarantined worker that relapses cools down twice as long."""

from __future__ import annotations

import itertools
import json
import re
import statistics
from collections import defaultdict

from cluster import AgentProcess, ControlPlaneProcess, eventually, wait_for_workers
from faults.watch import EventLog
from gpucp import task_spec
from gpucp.v1 import common_pb2

S = common_pb2
FAIL_ON = ("--handler", "fail=claims_handlers:fail_on")


def test_retry_delays_double_with_jitter_and_every_attempt_keeps_its_error(tmp_path):
    base_s, retries, tasks = 0.4, 3, 8
    cp = ControlPlaneProcess(tmp_path, "--retry-base", str(base_s), "--retry-cap", "30").start()
    agents = [AgentProcess(tmp_path, cp.address, f"w{i}", "--slots", "4", *FAIL_ON) for i in range(2)]
    try:
        with cp.client() as client:
            wait_for_workers(client, ["w0", "w1"])
            log = EventLog(cp.address)
            always = json.dumps({"workers": ["w0", "w1"]})
            ids = client.submit_many([task_spec("fail", always, max_retries=retries) for _ in range(tasks)])
            done = [client.wait(t, timeout_s=60) for t in ids]
            for task in done:
                assert (task.state, task.attempt) == (S.TASK_STATE_FAILED, retries + 1), task
                assert len(task.attempt_errors) == retries + 1, f"not every attempt kept its error: {task}"
                for n, error in enumerate(task.attempt_errors, start=1):
                    assert re.match(rf"attempt {n} on w[01]: .*refused on w[01]", error), error
            eventually(lambda: all(log.terminal[t] for t in ids), 10, "every task's last event")

            # Delay before attempt n+1: from the event that requeued attempt n to the next assignment.
            requeued: dict[tuple[str, int], int] = {}
            delays: dict[int, list[float]] = defaultdict(list)  # by failures so far, in seconds
            for e in log.snapshot():
                if e.task_id not in ids:
                    continue
                if e.state == S.TASK_STATE_PENDING and e.attempt > 0:
                    requeued[(e.task_id, e.attempt)] = e.at_ms
                elif e.state == S.TASK_STATE_ASSIGNED and (e.task_id, e.attempt - 1) in requeued:
                    delays[e.attempt - 1].append((e.at_ms - requeued[(e.task_id, e.attempt - 1)]) / 1000)
            assert sorted(delays) == list(range(1, retries + 1)), f"retries seen: {dict(delays)}"
            ratios = []
            for failures, seen in sorted(delays.items()):
                nominal = base_s * 2 ** (failures - 1)  # README: exponential, from --retry-base
                assert len(seen) == tasks, f"after failure {failures}: {len(seen)} retries seen of {tasks}"
                # Jitter may shorten a delay to half its nominal length, never more; a busy machine
                # may lengthen it, hence a generous upper bound.
                assert min(seen) >= 0.5 * nominal - 0.01, f"a retry came early after failure {failures}: {seen}"
                assert max(seen) <= nominal + 1.5, f"a retry came late after failure {failures}: {seen}"
                ratios += [d / nominal for d in seen]
            means = [statistics.mean(delays[f]) for f in sorted(delays)]
            assert all(b > 1.3 * a for a, b in itertools.pairwise(means)), f"mean delays do not grow: {means}"
            # Without jitter every delay would be its nominal length or more.
            assert min(ratios) < 0.75 and max(ratios) - min(ratios) > 0.2, f"no jitter in {sorted(ratios)}"
    finally:
        for agent in agents:
            agent.stop()
        cp.kill()


def quarantine_left_s(client, worker_id: str) -> int | None:  # type: ignore[no-untyped-def]
    """The seconds of quarantine `gpucp status` shows for a worker, None when it is not quarantined."""
    health = {w.worker_id: w.health for w in client.workers()}[worker_id]
    found = re.match(r"quarantined for (\d+) s more", health)
    return int(found.group(1)) if found else None


def test_a_quarantined_worker_that_fails_on_probation_cools_down_twice_as_long(tmp_path):
    cooling_s = 2
    cp = ControlPlaneProcess(tmp_path, "--retry-base", "0.05", "--quarantine-after", "1",
                             "--quarantine-cooling", str(cooling_s)).start()
    bad = AgentProcess(tmp_path, cp.address, "bad", "--slots", "1", *FAIL_ON)
    good = AgentProcess(tmp_path, cp.address, "good", "--slots", "1", *FAIL_ON)
    fails_on_bad = json.dumps({"workers": ["bad"]})
    try:
        with cp.client() as client:
            wait_for_workers(client, ["bad", "good"])
            # Tasks that fail on "bad" and succeed on "good": one blame quarantines it.
            ids = client.submit_many([task_spec("fail", fails_on_bad, max_retries=3) for _ in range(6)])
            first = eventually(lambda: quarantine_left_s(client, "bad"), 30, "the bad worker's quarantine")
            assert first <= cooling_s, f"the first quarantine is {first} s, more than --quarantine-cooling {cooling_s}"
            assert all(client.wait(t, timeout_s=30).state == S.TASK_STATE_SUCCEEDED for t in ids)
            eventually(lambda: {w.worker_id: w.health for w in client.workers()}["bad"] == "probation", 20,
                       "the quarantine to end in probation")

            # Only the worker on probation is left to run the next task; it fails it again.
            good.kill()
            eventually(lambda: "good" not in {w.worker_id for w in client.workers()}, 20, "the good worker to leave")
            relapse = client.submit("fail", fails_on_bad, max_retries=0)
            assert client.wait(relapse, timeout_s=30).state == S.TASK_STATE_FAILED
            again = quarantine_left_s(client, "bad")
            # Twice the cooling is 4 s; a slow read may see 3 s left, but never the first 2 s.
            assert again is not None and again > cooling_s, (
                f"after a relapse the quarantine is {again} s, not twice the first ({2 * cooling_s} s)"
            )
    finally:
        bad.stop()
        good.stop()
        cp.kill()
