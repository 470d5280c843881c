"""Task events: every transition with its time, worker, attempt and reason, durable with the task,
bounded per task, deleted with it; `gpucp events`, GetTaskEvents and WatchTasks carry them."""

from __future__ import annotations

import json
import subprocess
import sys

import grpc
import pytest

from cluster import AgentProcess, ControlPlaneProcess, eventually, run_sql, wait_for_workers
from gpucp import GpucpError, task_spec
from gpucp.v1 import common_pb2

pytestmark = pytest.mark.both_stores
S = common_pb2
FAIL_ON = ("--handler", "fail=claims_handlers:fail_on")


def causes(events) -> list[str]:  # type: ignore[no-untyped-def]
    return [e.cause for e in events]


def test_a_retried_task_tells_its_whole_story_and_keeps_it_across_a_restart(tmp_path):
    cp = ControlPlaneProcess(tmp_path, "--retry-base", "0.05").start()
    agent = AgentProcess(tmp_path, cp.address, "w0", *FAIL_ON)
    try:
        with cp.client() as client:
            wait_for_workers(client, ["w0"])
            task_id = client.submit("fail", json.dumps({"workers": ["w0"]}), max_retries=1)
            assert client.wait(task_id, timeout_s=30).state == S.TASK_STATE_FAILED
            events, omitted = client.events(task_id)
        assert causes(events) == [
            "submitted", "assigned", "started", "retrying", "queued", "assigned", "started", "finished",
        ], events
        assert omitted == 0
        assert [e.seq for e in events] == list(range(1, 9))
        assert [e.attempt for e in events] == [0, 1, 1, 1, 1, 2, 2, 2]
        assert all(e.worker_id == "w0" for e in events[1:]), events
        assert all(a.at_ms <= b.at_ms for a, b in zip(events, events[1:], strict=False)), "events out of time order"
        retrying = events[3]
        assert retrying.state == S.TASK_STATE_PENDING
        assert "refused on w0" in retrying.error, retrying
        assert retrying.reason.startswith("attempt 1 failed on w0; retry 1 of 1 in "), retrying.reason
        assert events[1].reason == "assigned to w0"
        assert events[-1].state == S.TASK_STATE_FAILED and "its last attempt" in events[-1].reason

        cp.restart()
        with cp.client() as client:
            again, _ = client.events(task_id)
        assert again == events, "the history changed across a restart"

        out = subprocess.run(
            [sys.executable, "-m", "gpucp", "events", task_id, "--server", cp.address],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout
        lines = out.splitlines()
        assert lines[0].split() == ["#", "TIME", "STATE", "ATTEMPT", "WORKER", "WHAT"], out
        assert len(lines) == 9 and "refused on w0" in lines[4] and "retry 1 of 1" in lines[4], out
    finally:
        agent.stop()
        cp.kill()


def test_a_task_that_ran_once_is_told_from_its_row_as_it_was_announced(tmp_path):
    # Its assignment and its success are not stored (the row says them): the history made from
    # the row must be the very events watchers were told, before and after a restart.
    cp = ControlPlaneProcess(tmp_path).start()
    agent = AgentProcess(tmp_path, cp.address, "w0")
    try:
        with cp.client() as client:
            wait_for_workers(client, ["w0"])
            watch = client.watch()
            task_id = client.submit("sleep", json.dumps({"seconds": 0.2}))
            told = []
            for event in watch:
                if event.task_id == task_id:
                    told.append(event)
                    if event.cause == "finished":
                        break
            watch.close()
            events, _ = client.events(task_id)
        assert causes(events) == ["submitted", "assigned", "started", "finished"], events
        assert events == told, "the history and the watchers tell it differently"
        assert events[-1].reason == "succeeded on w0" and events[-1].state == S.TASK_STATE_SUCCEEDED
        assert run_sql(cp.db, "SELECT seq, cause FROM task_events") == [(3, "started")]

        cp.restart()
        with cp.client() as client:
            again, _ = client.events(task_id)
        assert again == events, "the history changed across a restart"
    finally:
        agent.stop()
        cp.kill()


def test_a_first_attempt_running_across_a_crash_keeps_its_assignment_when_it_runs_again(tmp_path):
    # The row says the first assignment only while it is on its first attempt: once the orphan
    # is placed again, that event must have been stored.
    cp = ControlPlaneProcess(tmp_path, "--heartbeat-timeout", "1").start()
    first = AgentProcess(tmp_path, cp.address, "first", "--slots", "1")
    second = None
    try:
        with cp.client() as client:
            wait_for_workers(client, ["first"])
            task_id = client.submit("sleep", json.dumps({"seconds": 60}))
            # Read back, so durable: the store has committed what it was given before it answers.
            eventually(lambda: "started" in causes(client.events(task_id)[0]), 20, "the task to start")
        first.kill()
        cp.restart(kill=True)
        second = AgentProcess(tmp_path, cp.address, "second", "--slots", "1")
        with cp.client() as client:
            eventually(lambda: client.get(task_id).worker_id == "second", 30, "the orphan to run again")
            events, _ = client.events(task_id)
        assert causes(events)[:5] == ["submitted", "assigned", "started", "requeued_orphan", "assigned"], events
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        assert (events[1].worker_id, events[1].attempt, events[1].reason) == ("first", 1, "assigned to first")
        assert (events[4].worker_id, events[4].attempt) == ("second", 2)
    finally:
        first.stop()
        if second is not None:
            second.stop()
        cp.kill()


def test_a_task_retried_many_times_keeps_its_first_and_latest_events(tmp_path):
    retries = 60  # four events an attempt: 2 + 4 * 61 = 246 events, over the 120 kept
    cp = ControlPlaneProcess(tmp_path, "--retry-base", "0.001", "--retry-cap", "0.002").start()
    agent = AgentProcess(tmp_path, cp.address, "w0", "--slots", "1", *FAIL_ON)
    try:
        with cp.client() as client:
            wait_for_workers(client, ["w0"])
            task_id = client.submit("fail", json.dumps({"workers": ["w0"]}), max_retries=retries)
            task = client.wait(task_id, timeout_s=120)
            assert task.attempt == retries + 1, task
            events, omitted = client.events(task_id)
        total = 1 + 4 * (retries + 1) - 1  # the last attempt ends in "finished", not "retrying" and "queued"
        assert len(events) == 120, f"{len(events)} events kept"
        assert [e.seq for e in events] == [*range(1, 21), *range(total - 99, total + 1)]
        assert omitted == total - 120
        assert events[0].cause == "submitted" and events[-1].cause == "finished"
    finally:
        agent.stop()
        cp.kill()


def test_a_lost_worker_requeue_says_why_in_the_history_and_to_watchers(tmp_path):
    cp = ControlPlaneProcess(tmp_path, "--heartbeat-timeout", "2").start()
    doomed = AgentProcess(tmp_path, cp.address, "doomed", "--slots", "1")
    try:
        with cp.client() as client:
            wait_for_workers(client, ["doomed"])
            watch = client.watch()
            task_id = client.submit("sleep", json.dumps({"seconds": 60}))
            eventually(lambda: client.get(task_id).state == S.TASK_STATE_RUNNING, 20, "the task to start")
            doomed.kill()
            requeued = next(e for e in watch if e.task_id == task_id and e.cause.startswith("requeued"))
            watch.close()
            assert requeued.cause == "requeued_worker_lost", requeued
            assert requeued.reason.startswith("requeued: worker doomed was lost ("), requeued.reason
            assert requeued.state == S.TASK_STATE_PENDING and requeued.worker_id == "doomed"
            events, _ = client.events(task_id)
            assert causes(events) == ["submitted", "assigned", "started", "requeued_worker_lost"], events
            assert events[-1] == requeued, "the watcher and the history tell it differently"
    finally:
        doomed.stop()
        cp.kill()


def test_events_go_with_their_task_and_an_unknown_task_is_not_found(tmp_path):
    cp = ControlPlaneProcess(tmp_path, "--keep-finished", "1").start()
    agent = AgentProcess(tmp_path, cp.address, "w0")
    try:
        with cp.client() as client:
            wait_for_workers(client, ["w0"])
            task_id = client.submit("noop")
            client.wait(task_id, timeout_s=30)
            # A task this quick may finish before its agent reports it started: "started" is optional.
            seen = [c for c in causes(client.events(task_id)[0]) if c != "started"]
            assert seen == ["submitted", "assigned", "finished"]

            def deleted() -> bool:
                try:
                    client.events(task_id)
                except GpucpError as exc:
                    assert exc.code == grpc.StatusCode.NOT_FOUND, exc
                    return True
                return False

            eventually(deleted, 30, "the finished task to be deleted")
            with pytest.raises(GpucpError, match="no task has id 'nope'"):
                client.events("nope")
        assert run_sql(cp.db, "SELECT COUNT(*) FROM task_events") == [(0,)], "events outlived their task"
    finally:
        agent.stop()
        cp.kill()


def test_progress_reports_are_events(tmp_path):
    cp = ControlPlaneProcess(tmp_path).start()
    agent = AgentProcess(tmp_path, cp.address, "w0", "--handler", "halfway=progress_handler:halfway")
    try:
        with cp.client() as client:
            wait_for_workers(client, ["w0"])
            task_id = client.submit_spec(task_spec("halfway", json.dumps({"seconds": 0.5})))
            assert client.wait(task_id, timeout_s=30).state == S.TASK_STATE_SUCCEEDED, agent.log()
            events, _ = client.events(task_id)
        progress = [e for e in events if e.cause == "progress"]
        assert progress, f"no progress events in {causes(events)}"
        assert [(e.reason, e.state, e.progress) for e in progress] == [("progress 50%", S.TASK_STATE_RUNNING, 0.5)]
    finally:
        agent.stop()
        cp.kill()
