"""`gpucp get` tells the whole story of a task; a single-task --wait ends its output with a newline."""

from __future__ import annotations

import re

from cluster import eventually
from gpucp.v1 import common_pb2
from test_cli import gpucp


def test_get_shows_times_durations_owner_requirements_and_every_attempts_error(controlplane, start_agent):
    start_agent("get-box", "--gpus", "2xL4-24GB", "--allow-exec")
    failed = gpucp("submit", "exec", '{"argv": ["false"]}', "--gpus", "1", "--min-gpu-memory-mb", "16000",
                   "--tenant", "lab", "--priority", "high", "--max-retries", "1", "--timeout", "90", "--wait",
                   "--server", controlplane.address)
    assert failed.returncode == 1, failed.stderr
    task_id = failed.stdout.split()[0]
    shown = gpucp("get", task_id, "--server", controlplane.address)
    assert shown.returncode == 0, shown.stderr
    fields = dict(line.split(None, 1) for line in shown.stdout.splitlines() if line[:1].strip())
    assert fields["state"] == "failed"
    assert fields["tenant"] == "lab" and fields["priority"] == "high"
    assert fields["requires"] == "1 GPU, >= 16000 MB per GPU"
    assert fields["timeout"] == "1 min 30 s per attempt"
    for stamp in ("created", "started", "finished"):
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \(.+ ago\)", fields[stamp]), shown.stdout
    assert re.fullmatch(r"\d+(\.\d)? m?s", fields["waited"]) and re.fullmatch(r"\d+(\.\d)? m?s", fields["ran"])
    assert re.search(r"^attempts +attempt 1 on get-box: .*exit code 1", shown.stdout, re.M), shown.stdout
    assert "exit code 1" in fields["error"]


def test_submit_asks_for_a_share_and_a_runtime_and_get_shows_them(controlplane, start_agent):
    start_agent("share-box", "--gpus", "1xL4-24GB")
    done = gpucp("submit", "noop", "--gpu-milli", "250", "--gpu-memory-mb", "4000", "--expected-runtime", "90",
                 "--runtime-class", "short", "--wait", "--server", controlplane.address)
    assert done.returncode == 0, done.stderr
    shown = gpucp("get", done.stdout.split()[0], "--server", controlplane.address)
    fields = dict(line.split(None, 1) for line in shown.stdout.splitlines() if line[:1].strip())
    assert fields["requires"] == "250/1000 of a GPU with 4000 MB of its memory", shown.stdout
    assert fields["runtime"] == "expected 1 min 30 s, class short", shown.stdout
    assert fields["worker"] == "share-box (GPU 0, 250/1000 of it)", shown.stdout
    cases = {
        ("--gpu-milli", "1000"): "--gpu-milli 1000: give thousandths of a GPU (0: whole GPUs) from 0 to 999",
        ("--gpu-memory-mb", "-1"): "--gpu-memory-mb -1: give megabytes from 0",
        ("--expected-runtime", "-2"): "--expected-runtime -2: give seconds >= 0 (0: no estimate)",
        # The control plane's own check: a share is of one GPU.
        ("--gpu-milli", "500", "--gpus", "2"): "gpu_milli",
    }
    for flags, message in cases.items():
        bad = gpucp("submit", "noop", *flags, "--server", controlplane.address)
        assert bad.returncode == 1, f"{flags} was accepted"
        assert message in bad.stderr, f"{flags}: {bad.stderr}"


def test_get_shows_a_running_tasks_progress(controlplane, start_agent, client):
    # Needs the control plane to keep TaskUpdate.progress on the task (Task.progress).
    start_agent("busy-box", "--handler", "halfway=progress_handler:halfway")
    task_id = client.submit("halfway", '{"seconds": 60}')
    eventually(lambda: "progress  50%" in gpucp("get", task_id, "--server", controlplane.address).stdout, 30,
               "gpucp get to show the handler's progress")
    client.cancel(task_id)
    assert client.get(task_id).state == common_pb2.TASK_STATE_CANCELLED


def test_a_single_task_wait_ends_the_result_with_a_newline(controlplane, start_agent):
    start_agent("newline-box")
    one = gpucp("submit", "noop", "no newline of its own", "--wait", "--server", controlplane.address)
    assert one.returncode == 0, one.stderr
    assert one.stdout.endswith("succeeded\nno newline of its own\n")
