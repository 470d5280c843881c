"""`gpucp submit --wait` while the control plane restarts ends with the tasks' real outcomes."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cluster import ROOT, _env, eventually
from gpucp.v1 import common_pb2


@pytest.mark.parametrize("stop", ["terminate", "kill"])
def test_submit_wait_rides_out_a_control_plane_restart(controlplane, start_agent, stop):
    start_agent("steady", "--slots", "3")
    waiting = subprocess.Popen(
        [sys.executable, "-m", "gpucp", "submit", "sleep", '{"seconds": 2}', "--count", "3", "--wait",
         "--server", controlplane.address],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=_env(),
    )
    try:
        with controlplane.client() as client:
            eventually(lambda: [t.state for t in client.list()] == [common_pb2.TASK_STATE_RUNNING] * 3, 30,
                       "the three tasks to run")
        getattr(controlplane, stop)()  # SIGTERM ends the watch with CANCELLED, SIGKILL with UNAVAILABLE
        controlplane.start()  # same port, same database
        out, err = waiting.communicate(timeout=120)
    finally:
        if waiting.poll() is None:
            waiting.kill()
            out, err = waiting.communicate()
            pytest.fail(f"gpucp submit --wait was still waiting 120 s after the control plane came back: {err}")
    assert waiting.returncode == 0, f"{out}\n{err}\n{controlplane.log()}"
    assert "3/3" in err and "succeeded 3" in err, err
    assert "Traceback" not in err
