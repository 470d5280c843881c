"""`-o json` on every listing, and `gpucp watch` following tasks live."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from cluster import ROOT
from gpucp.v1 import common_pb2

S = common_pb2


def gpucp(*args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "gpucp", *args], capture_output=True, text=True, timeout=120,
                          cwd=ROOT, env=dict(os.environ), check=False)
    assert done.returncode == 0, f"gpucp {' '.join(args)}: {done.stderr}"
    return done


def test_listings_print_json_with_o_json(controlplane, client, start_agent):
    start_agent("w0", "--gpus", "1xL4-24GB")
    task_id = client.submit("noop", "hi", tenant="acme")
    client.wait(task_id, timeout_s=30)
    server = ("--server", controlplane.address)

    listed = json.loads(gpucp("list", "-o", "json", *server).stdout)
    assert [t["id"] for t in listed["tasks"]] == [task_id] and listed["next_page_token"] == ""
    assert listed["tasks"][0]["state"] == "TASK_STATE_SUCCEEDED" and listed["tasks"][0]["spec"]["tenant"] == "acme"

    got = json.loads(gpucp("get", task_id, "--output", "json", *server).stdout)
    assert (got["id"], got["worker_id"], got["attempt"]) == (task_id, "w0", 1)

    events = json.loads(gpucp("events", task_id, "-o", "json", *server).stdout)
    assert events["events"][0]["cause"] == "submitted" and events["events"][-1]["cause"] == "finished"
    assert events["omitted"] == 0

    status = json.loads(gpucp("status", "-o", "json", *server).stdout)
    assert status["stats"]["workers"] == 1 and [w["worker_id"] for w in status["workers"]] == ["w0"]
    assert status["costs"] is None  # no autoscaler


def test_watch_follows_named_tasks_to_their_end(controlplane, client, start_agent):
    start_agent("w0")
    server = ("--server", controlplane.address)
    running = client.submit("sleep", json.dumps({"seconds": 1}))
    watch = subprocess.Popen([sys.executable, "-m", "gpucp", "watch", running, "-o", "json", *server],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    out, err = watch.communicate(timeout=60)  # it ends by itself once the task has finished
    assert watch.returncode == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert lines[0]["task_id"] == running and lines[0]["now"] is True, lines[0]
    assert lines[-1]["cause"] == "finished" and lines[-1]["state"] == "TASK_STATE_SUCCEEDED", lines
    assert lines[-1]["reason"] == "succeeded on w0"

    # A task already finished: one line saying so, and the watch ends at once.
    text = gpucp("watch", running, *server).stdout
    assert text.strip() == f"{running} succeeded attempt 1 w0 (now)", text
