"""The `gpucp` commands as a new user meets them: addresses, errors, Ctrl-C, payloads, lists, drains."""

from __future__ import annotations

import importlib.metadata
import re
import signal
import subprocess
import sys

import pytest

from cluster import ROOT, _env, eventually
from gpucp import Client
from gpucp.v1 import common_pb2
from test_cli import gpucp


def test_every_command_and_the_client_read_gpucp_server(controlplane, start_agent, monkeypatch):
    start_agent("env-box")
    env = {"GPUCP_SERVER": controlplane.address}
    submitted = gpucp("submit", "noop", "from the environment", env=env)
    assert submitted.returncode == 0, submitted.stderr
    task_id = submitted.stdout.strip()
    assert gpucp("status", env=env).returncode == 0
    assert task_id in gpucp("list", env=env).stdout
    eventually(lambda: "succeeded" in gpucp("get", task_id, env=env).stdout, 30, "the task to succeed")
    monkeypatch.setenv("GPUCP_SERVER", controlplane.address)
    with Client() as client:
        assert client.get(task_id).result == b"from the environment"


def test_a_server_without_a_port_means_port_50051_and_an_unreachable_one_gets_a_sentence():
    # Nothing listens on 127.0.0.2:50051; without a port grpc alone would have tried 443.
    status = gpucp("status", "--server", "127.0.0.2")
    assert status.returncode == 1
    assert "gpucp: no gpucp control plane answers at 127.0.0.2:50051 (is `gpucp serve` running?)" in status.stderr
    assert "failed to connect" not in status.stderr and "Traceback" not in status.stderr
    assert Client("10.1.2.3").server == "10.1.2.3:50051"
    bad_port = gpucp("status", "--server", "127.0.0.1:http")
    assert bad_port.returncode == 1
    assert "server address '127.0.0.1:http': the port must be a number from 1 to 65535" in bad_port.stderr


def test_an_agent_given_a_server_without_a_port_dials_port_50051():
    from agents.cli import build_agent, parser

    assert build_agent(parser().parse_args(["--server", "127.0.0.1"]), None).server == "127.0.0.1:50051"


def test_ctrl_c_during_submit_wait_prints_the_ids_and_how_to_cancel_them(controlplane, client):
    # No agent: the tasks stay pending, and Ctrl-C leaves them behind on the control plane.
    waiting = subprocess.Popen(
        [sys.executable, "-m", "gpucp", "submit", "noop", "--count", "2", "--wait", "--server", controlplane.address],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=_env(),
    )
    pending = eventually(lambda: [t.id for t in client.list()] if len(list(client.list())) == 2 else None, 30,
                         "the two tasks to be submitted")
    waiting.send_signal(signal.SIGINT)
    out, err = waiting.communicate(timeout=30)
    assert waiting.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert sorted(out.split()) == sorted(pending)
    assert "2 submitted tasks keep running" in err
    command = re.search(r"cancel with: (gpucp cancel .*)", err)
    assert command is not None, err
    cancelled = gpucp(*command.group(1).split()[1:])
    assert cancelled.returncode == 0, cancelled.stderr
    assert all(client.get(t).state == common_pb2.TASK_STATE_CANCELLED for t in pending)


def test_payloads_come_from_a_file_or_standard_input(controlplane, start_agent, tmp_path):
    start_agent("payload-box")
    path = tmp_path / "payload.json"
    path.write_bytes(b'{"from": "a file"}')
    from_file = gpucp("submit", "noop", f"@{path}", "--wait", "--server", controlplane.address)
    assert from_file.returncode == 0, from_file.stderr
    assert from_file.stdout.endswith('{"from": "a file"}\n')
    from_stdin = subprocess.run(
        [sys.executable, "-m", "gpucp", "submit", "noop", "-", "--wait", "--server", controlplane.address],
        input="piped in", capture_output=True, text=True, timeout=120, cwd=ROOT, env=_env(),
    )
    assert from_stdin.returncode == 0, from_stdin.stderr
    assert from_stdin.stdout.endswith("piped in\n")
    missing = gpucp("submit", "noop", f"@{tmp_path / 'nope.json'}", "--server", controlplane.address)
    assert missing.returncode == 1 and "cannot read" in missing.stderr and "No such file" in missing.stderr


def test_version_is_the_package_version():
    version = gpucp("--version")
    assert version.returncode == 0
    assert version.stdout.strip() == f"gpucp {importlib.metadata.version('gpucp')}"


def test_status_is_sorted_and_the_same_on_every_call(controlplane, client):
    for priority, tenant in (("low", "lab"), ("urgent", "ops"), ("normal", "lab"), ("high", "ops"), ("low", "lab")):
        client.submit("noop", priority=priority, tenant=tenant)
    first = gpucp("status", "--server", controlplane.address)
    assert first.returncode == 0, first.stderr
    assert "queue: urgent 1, high 1, normal 1, low 2" in first.stdout
    assert "queue by tenant: lab 3, ops 2" in first.stdout
    for _ in range(3):
        assert gpucp("status", "--server", controlplane.address).stdout == first.stdout


def test_a_reader_that_leaves_early_gets_no_traceback(controlplane, client):
    # More rows than a pipe buffer holds, so gpucp is still writing when `head` has gone.
    client.submit_many([common_pb2.TaskSpec(kind="noop")] * 2000)
    listing = subprocess.Popen(
        [sys.executable, "-m", "gpucp", "list", "--all", "--limit", "500", "--server", controlplane.address],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT, env=_env(),
    )
    assert listing.stdout is not None and listing.stderr is not None
    assert listing.stdout.readline().startswith(b"ID")
    listing.stdout.close()
    err = listing.stderr.read().decode()
    listing.stderr.close()
    listing.wait(timeout=60)
    assert err == "", err


def test_list_filters_by_state_and_tenant_and_pages(controlplane, client, start_agent):
    ids = {t: client.submit("noop", tenant=t) for t in ("alpha", "beta", "gamma")}
    only_beta = gpucp("list", "--tenant", "beta", "--server", controlplane.address)
    assert only_beta.returncode == 0, only_beta.stderr
    assert ids["beta"] in only_beta.stdout and ids["alpha"] not in only_beta.stdout
    pending = gpucp("list", "--state", "pending", "--server", controlplane.address)
    assert all(i in pending.stdout for i in ids.values())
    assert gpucp("list", "--state", "succeeded", "--server", controlplane.address).stdout.count("\n") == 1  # header
    bad = gpucp("list", "--state", "finished", "--server", controlplane.address)
    assert bad.returncode == 1 and "--state finished: give one of pending, assigned, running" in bad.stderr

    first = gpucp("list", "--limit", "2", "--server", controlplane.address)
    more = re.search(r"more: add --page (\S+)", first.stderr)
    assert more is not None, first.stderr
    rest = gpucp("list", "--limit", "2", "--page", more.group(1), "--server", controlplane.address)
    shown = [line.split()[0] for out in (first.stdout, rest.stdout) for line in out.splitlines()[1:]]
    assert sorted(shown) == sorted(ids.values())

    start_agent("list-box")
    eventually(lambda: client.get(ids["alpha"]).state == common_pb2.TASK_STATE_SUCCEEDED, 30, "the tasks to run")
    full = gpucp("list", "--tenant", "alpha", "--full", "--server", controlplane.address)
    assert full.stdout.splitlines()[0].split()[-1] == "RESULT"


def test_list_filters_by_kind(controlplane, client):
    # Needs ListTasksRequest.kind on the server.
    noop = client.submit("noop")
    sleep = client.submit("sleep", "1")
    sleeps = gpucp("list", "--kind", "sleep", "--server", controlplane.address)
    assert sleeps.returncode == 0, sleeps.stderr
    assert sleep in sleeps.stdout and noop not in sleeps.stdout


def test_drain_and_undrain_a_worker(controlplane, client, start_agent):
    # Needs Admin.UndrainWorker on the server.
    start_agent("drain-box")
    drained = gpucp("drain", "drain-box", "--server", controlplane.address)
    assert drained.returncode == 0, drained.stderr
    assert "worker drain-box drains" in drained.stdout
    task_id = client.submit("noop")
    with pytest.raises(subprocess.TimeoutExpired):  # drained: the task waits
        subprocess.run([sys.executable, "-m", "gpucp", "submit", "noop", "--wait", "--server", controlplane.address],
                       capture_output=True, timeout=3, cwd=ROOT, env=_env())
    assert client.get(task_id).state == common_pb2.TASK_STATE_PENDING
    undrained = gpucp("undrain", "drain-box", "--server", controlplane.address)
    assert undrained.returncode == 0, undrained.stderr
    assert "worker drain-box takes new tasks again" in undrained.stdout
    eventually(lambda: client.get(task_id).state == common_pb2.TASK_STATE_SUCCEEDED, 30, "the task to run")
    unknown = gpucp("undrain", "no-such-box", "--server", controlplane.address)
    assert unknown.returncode == 1 and "no-such-box" in unknown.stderr


def test_flag_errors_name_the_flag_and_its_unit_as_typed(controlplane):
    cases = {
        ("--timeout", "-5"): "--timeout -5: give seconds >= 0",
        ("--timeout", "nan"): "--timeout nan: give seconds >= 0",
        ("--gpus", "-1"): "--gpus -1: give a number of GPUs from 0 to 4294967295",
        ("--min-gpu-memory-mb", "-8"): "--min-gpu-memory-mb -8: give megabytes from 0",
        ("--max-retries", "-1"): "--max-retries -1: give retries from 0",
        ("--count", "0"): "--count 0: give a number of copies from 1",
    }
    for flags, message in cases.items():
        bad = gpucp("submit", "noop", *flags, "--server", controlplane.address)
        assert bad.returncode == 1, f"{flags} was accepted"
        assert message in bad.stderr, f"{flags}: {bad.stderr}"
        assert "5000" not in bad.stderr, f"{flags} speaks in milliseconds: {bad.stderr}"
