"""Client.watch() across a control plane restart: it resumes, and no tracked outcome is lost."""

from __future__ import annotations

import pytest

from gpucp import Client, GpucpError
from gpucp.v1 import common_pb2


@pytest.mark.both_stores
def test_a_watch_resumes_after_a_restart_and_reports_an_outcome_reached_in_the_gap(controlplane, start_agent):
    # The task is pending (no agent) when the control plane dies; it succeeds after the restart,
    # maybe before the watch is back: the watch must still report it, not end quietly.
    with Client(controlplane.address) as client:
        task_id = client.submit("noop", "through the gap")
        watch = client.watch([task_id])
        controlplane.kill()
        controlplane.start()
        start_agent("after-restart")
        outcome = next(e for e in watch if e.state == common_pb2.TASK_STATE_SUCCEEDED)
        assert outcome.task_id == task_id
        watch.close()


def test_a_watch_tracks_tasks_it_was_told_of_after_it_started(controlplane, start_agent):
    # `gpucp submit --wait` watches everything, then tracks what it submitted.
    with Client(controlplane.address) as client:
        watch = client.watch()
        task_id = client.submit("noop")
        watch.track([task_id])
        controlplane.terminate()
        controlplane.start()
        start_agent("after-restart")
        outcome = next(e for e in watch if e.task_id == task_id and e.state == common_pb2.TASK_STATE_SUCCEEDED)
        assert outcome.attempt == 1
        watch.close()


def test_a_watch_gives_up_with_a_sentence_when_the_control_plane_stays_away(controlplane):
    with Client(controlplane.address) as client:
        task_id = client.submit("noop")
        watch = client.watch([task_id], give_up_s=3)
        controlplane.kill()
        with pytest.raises(GpucpError, match=f"the control plane at {controlplane.address} went away and did not "
                                             "come back within 3 s"):
            next(watch)
