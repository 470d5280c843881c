"""Scheduler.Session with --auth: a stranger is refused, submits need SUBMIT in the caller's tenants,
and another tenant's tasks cannot be followed (NOT_FOUND, in the words of an unknown id)."""

from __future__ import annotations

import queue
from collections.abc import Iterator

import grpc
import pytest

from cluster import ControlPlaneProcess
from gpucp import GpucpError
from gpucp.v1 import common_pb2, scheduler_pb2
from security.secured import client_as, metadata, probe, scheduler, start_secured

CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlaneProcess]:
    cp = start_secured(tmp_path_factory.mktemp("session"))
    yield cp
    cp.kill()


class Stream:
    """A Session stream as `name`, one request and one answer at a time."""

    def __init__(self, cp: ControlPlaneProcess, name: str | None) -> None:
        self._out: queue.Queue[scheduler_pb2.SessionRequest | None] = queue.Queue()
        self._out.put(scheduler_pb2.SessionRequest(open=scheduler_pb2.SessionOpen()))
        self._call = scheduler(cp).Session(iter(self._out.get, None), metadata=metadata(name), timeout=30)

    def answer(self, **msg: object) -> scheduler_pb2.SessionResponse:
        if msg:
            self._out.put(scheduler_pb2.SessionRequest(**msg))  # type: ignore[arg-type]
        response: scheduler_pb2.SessionResponse = next(self._call)
        return response

    def close(self) -> None:
        self._out.put(None)
        self._call.cancel()


def submit(stream: Stream, tenant: str) -> scheduler_pb2.SessionResponse:
    spec = common_pb2.TaskSpec(kind="noop", tenant=tenant)
    return stream.answer(submit=scheduler_pb2.SessionSubmit(seq=1, specs=[spec]))


def test_a_stranger_cannot_open_a_session(secured: ControlPlaneProcess) -> None:
    stream = Stream(secured, None)
    with pytest.raises(grpc.RpcError) as raised:
        stream.answer()
    stream.close()
    probe("Session open as stranger", "UNAUTHENTICATED", raised.value.code().name)


def test_a_viewer_may_follow_but_not_submit(secured: ControlPlaneProcess) -> None:
    with client_as(secured, "submitter-a") as submitter:
        task_id = submitter.submit("noop")
    stream = Stream(secured, "viewer-a")
    try:
        assert stream.answer().WhichOneof("msg") == "opened"
        refused = submit(stream, "team-a").rejected
        probe("Session submit as viewer-a", "PERMISSION_DENIED", CODE_NAMES[refused.code])
        assert "may not submit" in refused.message
        followed = stream.answer(follow=scheduler_pb2.SessionFollow(seq=2, task_ids=[task_id]))
        assert followed.WhichOneof("msg") == "accepted"
    finally:
        stream.close()


def test_a_submitter_submits_in_its_tenants_only_and_cannot_follow_anothers_task(secured: ControlPlaneProcess) -> None:
    with client_as(secured, "submitter-b") as other:
        theirs = other.submit("noop")
    with client_as(secured, "submitter-a") as mine:
        with pytest.raises(GpucpError) as raised:
            mine.submit("noop", tenant="team-b")
        probe("Session submit to another tenant", "PERMISSION_DENIED", raised.value.code.name)
        mine_id = mine.submit("noop")
        assert mine.get(mine_id).spec.tenant == "team-a"
        with pytest.raises(GpucpError) as hidden:
            mine.gather([theirs], timeout_s=10)
        with pytest.raises(GpucpError) as unknown:
            mine.gather(["no-such-task"], timeout_s=10)
    probe("Session follow of another tenant's task", "NOT_FOUND", hidden.value.code.name)
    assert hidden.value.message == unknown.value.message.replace("no-such-task", theirs)
