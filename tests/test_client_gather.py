"""Client.gather() and as_completed(): many tasks waited on through one watch, across a restart."""

from __future__ import annotations

import threading

import grpc
import pytest

import gpucp.watch
from gpucp import Client, GpucpError, Unfinished
from gpucp.testing import eventually
from gpucp.v1 import common_pb2

SUCCEEDED = common_pb2.TASK_STATE_SUCCEEDED


def sleep_spec(seconds: float) -> common_pb2.TaskSpec:
    return common_pb2.TaskSpec(kind="sleep", payload=str(seconds).encode())


def test_gather_returns_every_task_of_a_batch_terminal_in_the_order_of_the_ids(client, start_agent):
    start_agent("w1", "--slots", "2")
    ids = client.submit_many(common_pb2.TaskSpec(kind="noop", payload=f"task {i}".encode()) for i in range(20))
    tasks = client.gather(ids)
    assert [t.id for t in tasks] == ids
    assert [t.state for t in tasks] == [SUCCEEDED] * 20
    assert [t.result for t in tasks] == [f"task {i}".encode() for i in range(20)]
    assert client.gather([]) == []


def test_as_completed_yields_each_task_once_in_the_order_they_finish(client, start_agent):
    start_agent("w1", "--slots", "3")
    slow, quick, middle = client.submit_many([sleep_spec(4), sleep_spec(0), sleep_spec(2)])
    finished = [t.id for t in client.as_completed([slow, quick, middle, quick])]  # a repeated id is waited on once
    assert finished == [quick, middle, slow]


def test_tasks_finished_before_the_call_come_back_without_waiting_for_the_rest(client, start_agent):
    agent = start_agent("w1")
    done = client.submit_many([sleep_spec(0), sleep_spec(0)])
    client.gather(done)
    agent.stop()
    never = client.submit("noop")  # no agent is left to run it
    completions = client.as_completed([never, *done], timeout_s=30)
    # Their terminal events are long past: only the first read can report them.
    assert {next(completions).id, next(completions).id} == set(done)
    completions.close()


def test_a_timeout_names_how_many_tasks_are_still_unfinished(client):
    ids = client.submit_many([sleep_spec(0), sleep_spec(0)])  # no agent runs them
    with pytest.raises(Unfinished, match="2 of 2 tasks are still unfinished after 0.5 s") as raised:
        client.gather(ids, timeout_s=0.5)
    assert raised.value.unfinished == ids
    assert raised.value.code == grpc.StatusCode.DEADLINE_EXCEEDED


def test_an_unknown_id_is_refused_by_name(client):
    with pytest.raises(GpucpError) as raised:
        client.gather(["no-such-task"], timeout_s=5)
    assert raised.value.code == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("stop", ["terminate", "kill"])
def test_gather_across_a_control_plane_restart_loses_no_outcome_and_repeats_none(controlplane, start_agent, stop):
    start_agent("steady", "--slots", "3")
    with Client(controlplane.address) as client:
        # Three run through the restart; three more wait for a slot and finish after it.
        ids = client.submit_many([sleep_spec(s) for s in (2, 2.5, 3, 0, 0.5, 1)])
        seen: list[common_pb2.Task] = []
        failed: list[BaseException] = []

        def collect() -> None:
            try:
                seen.extend(client.as_completed(ids, timeout_s=120))
            except BaseException as exc:  # for the test thread to report
                failed.append(exc)

        waiter = threading.Thread(target=collect)
        waiter.start()
        with controlplane.client() as probe:
            eventually(lambda: probe.get(ids[0]).state == common_pb2.TASK_STATE_RUNNING, 30, "the first task to run")
        getattr(controlplane, stop)()
        controlplane.start()  # same port, same database
        waiter.join(150)
        assert not waiter.is_alive() and not failed, f"{failed}\n{controlplane.log()}"
        assert sorted(t.id for t in seen) == sorted(ids)
        assert [t.state for t in seen] == [SUCCEEDED] * 6
        assert [t.id for t in client.gather(ids)] == ids


def test_a_wait_for_more_ids_than_a_watch_request_names_watches_everything_and_picks_its_own(
    client, start_agent, monkeypatch
):
    monkeypatch.setattr(gpucp.watch, "WATCH_IDS_MAX", 2)
    start_agent("w1", "--slots", "2")
    client.submit_many([sleep_spec(0)] * 3)  # others' events are in the stream too
    ids = client.submit_many([sleep_spec(0.2)] * 3)
    assert [t.id for t in client.gather(ids)] == ids
