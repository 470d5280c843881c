"""Defects of the control plane found by trying it from outside, each with the behaviour a user sees."""

from __future__ import annotations

import os
import signal
import time

import grpc
import pytest

from conftest import AgentFactory
from gpucp import Client
from gpucp.client import GpucpError
from gpucp.limits import MAX_MESSAGE_BYTES
from gpucp.testing import ControlPlaneProcess, eventually
from gpucp.v1 import common_pb2, scheduler_pb2

SUCCEEDED = common_pb2.TASK_STATE_SUCCEEDED
FAILED = common_pb2.TASK_STATE_FAILED
RUNNING = common_pb2.TASK_STATE_RUNNING


def worker(client: Client, worker_id: str):  # type: ignore[no-untyped-def]
    return next((w for w in client.workers() if w.worker_id == worker_id), None)


def test_a_handlers_progress_shows_in_get_and_in_watch_events(client: Client, start_agent: AgentFactory) -> None:
    start_agent("w1", "--handler", "halfway=progress_handler:halfway")
    watch = client.watch()
    task_id = client.submit("halfway", b'{"seconds": 4}')
    eventually(lambda: client.get(task_id).progress == 0.5, 30, "progress 0.5 on the task")
    assert [t.id for t in client.list(state=RUNNING)] == [task_id], "a running task is not listed as running"
    seen = []
    for event in watch:
        if event.task_id == task_id:
            seen.append((event.state, event.progress))
            if event.progress == 0.5:
                break
    watch.close()
    assert (RUNNING, 0.5) in seen, f"watch events {seen} never carried the progress"
    assert client.wait(task_id, 30).state == SUCCEEDED


@pytest.mark.parametrize("controlplane", [("--queue-timeout", "600")], indirect=True)
def test_lists_leave_payloads_out_unless_asked_and_every_page_fits_in_a_message(
    client: Client, start_agent: AgentFactory
) -> None:
    start_agent("w1")
    joined = worker(client, "w1")
    assert joined is not None
    payload = os.urandom(3 * 1024 * 1024)
    ids = [client.submit("nobody-runs-this", payload) for _ in range(12)]  # 36 MiB, more than one message
    basic = list(client.list(kind="nobody-runs-this"))
    assert [t.id for t in basic] == ids
    assert all(not t.spec.payload for t in basic), "a BASIC list carried payloads"
    pages, token = [], ""
    while True:
        tasks, token = client.list_page(kind="nobody-runs-this", full=True, limit=1000, page_token=token)
        pages.append(tasks)
        if not token:
            break
    assert [t.id for page in pages for t in page] == ids
    assert all(t.spec.payload == payload for page in pages for t in page), "a FULL page lost a payload"
    assert len(pages) > 1 and all(
        scheduler_pb2.ListTasksResponse(tasks=page).ByteSize() < MAX_MESSAGE_BYTES for page in pages
    )
    still = worker(client, "w1")
    assert still is not None and still.connected_at_ms == joined.connected_at_ms, "listing made a worker look dead"


@pytest.mark.parametrize("token", ["1180591620717411303424", "1_0", "\u0663", "-1", " 7", "abc"])
def test_a_page_token_the_server_never_issued_is_refused_with_a_sentence(client: Client, token: str) -> None:
    with pytest.raises(GpucpError) as refused:
        client.list_page(page_token=token)
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "next_page_token" in str(refused.value), str(refused.value)


def test_a_control_plane_that_was_held_still_sees_its_healthy_workers(
    controlplane: ControlPlaneProcess, client: Client, start_agent: AgentFactory
) -> None:
    """Heartbeats that arrived while the event loop was held are read before anyone is judged silent."""
    start_agent("w1")
    joined = worker(client, "w1")
    assert joined is not None
    os.kill(controlplane.pid, signal.SIGSTOP)  # every thread held, twice the heartbeat timeout
    time.sleep(4.0)
    os.kill(controlplane.pid, signal.SIGCONT)
    time.sleep(2.0)
    still = worker(client, "w1")
    assert still is not None and still.connected_at_ms == joined.connected_at_ms, (
        "a healthy worker was declared lost after the control plane was held: "
        + controlplane.log()[-1500:]
    )
    assert "w1 lost" not in controlplane.log()
    assert client.run("noop", b"", wait_s=30).state == SUCCEEDED
