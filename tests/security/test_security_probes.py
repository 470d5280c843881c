"""The attacks of issue 16, replayed against real servers and agents; each prints one row of the report."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from cluster import ROOT, AgentProcess, ControlPlaneProcess, _env, eventually, sqlite_only, wait_for_workers
from gpucp.client import GpucpError
from gpucp.v1 import common_pb2, scheduler_pb2, workers_pb2
from security.secured import RawAgent, client_as, code_of, metadata, probe, scheduler, start_secured

S = common_pb2


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlaneProcess]:
    cp = start_secured(tmp_path_factory.mktemp("probes"))
    yield cp
    cp.kill()


def refusal(fn: object, *args: object, **kwargs: object) -> str:
    """The gRPC status name `fn(*args)` ends with ("OK" when it succeeds)."""
    try:
        fn(*args, **kwargs)  # type: ignore[operator]
    except GpucpError as exc:
        return exc.code.name
    except grpc.RpcError as exc:
        return code_of(exc)
    return "OK"


# ----- secure defaults ----------------------------------------------------------------------------


def test_a_default_agent_offers_no_exec(controlplane: ControlPlaneProcess, start_agent) -> None:  # type: ignore[no-untyped-def]
    start_agent("plain")
    with controlplane.client() as client:
        task_id = client.submit("exec", json.dumps({"argv": ["sh", "-c", "id"]}))
        reason = eventually(lambda: client.get(task_id).pending_reason, what="a pending reason")
        client.cancel(task_id)
    probe(
        "exec on a default agent",
        "pending, no exec worker",
        "pending, no exec worker" if "runs tasks of kind 'exec'" in reason else reason,
    )


def test_exec_sees_none_of_the_agents_secrets(controlplane: ControlPlaneProcess, start_agent) -> None:  # type: ignore[no-untyped-def]
    secrets = {"GPUCP_AGENT_TOKEN": "agent-secret", "RUNPOD_API_KEY": "cloud-secret", "GPUCP_TOKEN": "my-secret"}
    # The agent carries all three in its environment (the control plane has no agent token: any
    # agent's is fine to it).
    agent = AgentProcess(controlplane.workdir, controlplane.address, "leaky", "--allow-exec", env=secrets)
    try:
        with controlplane.client() as client:
            wait_for_workers(client, ["leaky"])
            task = client.run("exec", json.dumps({"argv": ["env"], "env": {"MINE": "1"}}), wait_s=30)
        output = json.loads(task.result)["stdout"]
        leaked = sorted(name for name, value in secrets.items() if name in output or value in output)
        probe("exec env: agent secrets", "none", ", ".join(leaked) or "none")
        probe("exec env: task's own and GPU variables", "present",
              "present" if "MINE=1" in output and "CUDA_VISIBLE_DEVICES=" in output else output[:200])
    finally:
        agent.stop()


def test_an_exec_allowlist_refuses_other_programs(controlplane: ControlPlaneProcess, start_agent) -> None:  # type: ignore[no-untyped-def]
    start_agent("listed", "--allow-exec=true,false")
    with controlplane.client() as client:
        fine = client.run("exec", json.dumps({"argv": ["true"]}), wait_s=30)
        refused = client.run("exec", json.dumps({"argv": ["sh", "-c", "id"]}), wait_s=30)
    probe("exec of a listed program", "SUCCEEDED", S.TaskState.Name(fine.state).removeprefix("TASK_STATE_"))
    probe(
        "exec of an unlisted program",
        "FAILED: not allowed",
        "FAILED: not allowed" if refused.state == S.TASK_STATE_FAILED and "not allowed" in refused.error
        else refused.error[:80],
    )


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("useradd") is None, reason="needs root and useradd")
def test_run_as_starts_tasks_as_the_unprivileged_user(controlplane: ControlPlaneProcess, start_agent) -> None:  # type: ignore[no-untyped-def]
    user = "gpucp-task"
    try:
        pwd.getpwnam(user)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", user], check=True)
    uid = pwd.getpwnam(user).pw_uid
    start_agent("unprivileged", "--allow-exec", "--run-as", user)
    with controlplane.client() as client:
        task = client.run("exec", json.dumps({"argv": ["id", "-u"], "cwd": "/"}), wait_s=60)
    assert task.state == common_pb2.TASK_STATE_SUCCEEDED, (
        f"the task as {user} ended {common_pb2.TaskState.Name(task.state)}: {task.error} {list(task.attempt_errors)}"
    )
    probe("exec with --run-as", f"uid {uid}", f"uid {json.loads(task.result)['stdout'].strip()}")


def test_a_network_listen_without_auth_needs_insecure(tmp_path: Path) -> None:
    refused = subprocess.run(
        [sys.executable, "-m", "gpucp", "serve", "--listen", "0.0.0.0:0", "--db", str(tmp_path / "a.db")],
        env=_env(), capture_output=True, text=True, timeout=60, cwd=ROOT,
    )
    probe("serve on 0.0.0.0 without --auth", "refused",
          "refused" if refused.returncode == 1 and "--insecure" in refused.stderr else refused.stderr[-200:])
    # The harness passes --listen 127.0.0.1:PORT first; the last --listen is the one taken.
    cp = ControlPlaneProcess(tmp_path, "--listen", "0.0.0.0:0", "--insecure").start()
    try:
        probe("serve on 0.0.0.0 --insecure", "starts, warns",
              "starts, warns" if "INSECURE" in cp.log() else cp.log()[-200:])
    finally:
        cp.kill()


# ----- principals, roles and tenants --------------------------------------------------------------


def test_tasks_of_another_tenant_are_not_found(secured: ControlPlaneProcess) -> None:
    with client_as(secured, "submitter-a") as a, client_as(secured, "submitter-b") as b:
        theirs = a.submit("noop", "a's payload")
        probe("GetTask of another tenant's task", "NOT_FOUND", refusal(b.get, theirs))
        probe("CancelTask of another tenant's task", "NOT_FOUND", refusal(b.cancel, theirs))
        probe("WaitTask of another tenant's task", "NOT_FOUND", refusal(b.wait, theirs, timeout_s=1))
        # The same words as for an id that does not exist: existence is not told.
        try:
            b.get(theirs)
        except GpucpError as exc:
            words = str(exc).replace(theirs, "ID")
        try:
            b.get("0" * len(theirs))
        except GpucpError as exc:
            missing = str(exc).replace("0" * len(theirs), "ID")
        probe("NOT_FOUND words, another's vs missing", "same", "same" if words == missing else f"{words} / {missing}")
        mine = b.submit("noop")
        listed = {t.id for t in b.list()}
        probe("ListTasks shows only own tenants", "own only",
              "own only" if mine in listed and theirs not in listed else "other tenants' too")
        probe("ListTasks of another tenant by name", "PERMISSION_DENIED",
              refusal(lambda: list(b.list(tenant="team-a"))))
        probe("the task's tenant is the caller's first", "team-b", b.get(mine).spec.tenant)
        probe("submit naming a tenant not held", "PERMISSION_DENIED", refusal(b.submit, "noop", tenant="team-a"))
        probe("submit naming a second held tenant", "OK", refusal(b.submit, "noop", tenant="team-b2"))


def test_a_watch_sees_only_its_tenants(secured: ControlPlaneProcess) -> None:
    with client_as(secured, "submitter-a") as a, client_as(secured, "submitter-b") as b:
        seen: list[str] = []
        events = b.watch()
        try:
            theirs = a.submit("noop")
            mine = b.submit("noop")  # announced after theirs: once it is seen, theirs would have been
            for event in events:
                seen.append(event.task_id)
                if event.task_id == mine:
                    break
        finally:
            events.close()
    probe("WatchTasks across tenants", "own events only", "own events only" if theirs not in seen else "leaked")


def test_watches_by_tenant_and_by_task_get_their_events_and_no_other_tenants(tmp_path: Path) -> None:
    cp = start_secured(tmp_path)
    try:
        with client_as(cp, "submitter-a") as a, client_as(cp, "submitter-b") as b, client_as(cp, "operator") as op:
            a1, a2 = a.submit("noop"), a.submit("noop")
            b1, b2 = b.submit("noop", tenant="team-b"), b.submit("noop", tenant="team-b2")
            # Each watch's last event comes after every event it must not get: had it got one,
            # it would have read it by then.
            watches = {
                "everything (operator)": (op.watch(), {a1, b1, a2, b2}, b2),
                "its tenants (submitter)": (b.watch(), {b1, b2}, b2),
                "one tenant": (b.watch(tenant="team-b2"), {b2}, b2),
                "task ids, one another tenant's": (b.watch(task_ids=[a1, b1]), {b1}, b1),
                "its task ids": (a.watch(task_ids=[a1, a2]), {a1, a2}, a2),
            }
            for task_id, client in ((a1, a), (b1, b), (a2, a), (b2, b)):
                client.cancel(task_id)
            for name, (events, expected, last) in watches.items():
                seen = set()
                for event in events:
                    if event.state == S.TASK_STATE_CANCELLED:
                        seen.add(event.task_id)
                        if event.task_id == last:
                            break
                events.close()
                probe(f"a watch of {name}", "its events only", "its events only" if seen == expected else
                      f"missing {sorted(expected - seen)}, extra {sorted(seen - expected)}")
    finally:
        cp.kill()


def test_idempotency_keys_are_per_tenant(secured: ControlPlaneProcess) -> None:
    with client_as(secured, "submitter-a") as a, client_as(secured, "submitter-b") as b:
        first = a.submit("noop", idempotency_key="order-17")
        again = a.submit("noop", idempotency_key="order-17")
        other = b.submit("noop", idempotency_key="order-17")
    probe("idempotency key reused in the same tenant", "same task", "same task" if again == first else "new task")
    probe("idempotency key reused by another tenant", "its own task", "its own task" if other != first else first)


def test_drain_needs_an_operator_and_is_audited(secured: ControlPlaneProcess) -> None:
    agent = RawAgent(secured.address, "agent-box", workers_pb2.Register(worker_id="box-drain", slots=1))
    try:
        assert agent.first().HasField("registered")  # type: ignore[union-attr]
        with client_as(secured, "submitter-a") as a, client_as(secured, "operator") as op:
            probe("DrainWorker as a submitter", "PERMISSION_DENIED", refusal(a.drain, "box-drain"))
            probe("DrainWorker as an operator", "OK", refusal(op.drain, "box-drain"))
            probe("UndrainWorker as an operator", "OK", refusal(op.undrain, "box-drain"))
        log = secured.log(100_000)
        probe("audit line for drain", "names operator",
              "names operator" if "operator (operator) drained worker 'box-drain'" in log else "missing")
    finally:
        agent.close()


def test_missing_and_wrong_credentials_are_refused_and_logged(secured: ControlPlaneProcess) -> None:
    with client_as(secured, None) as nobody, client_as(secured, "guess") as wrong:
        probe("ListTasks without a token", "UNAUTHENTICATED", refusal(lambda: list(nobody.list())))
        probe("ListTasks with an unknown token", "UNAUTHENTICATED", refusal(lambda: list(wrong.list())))
    log = secured.log(100_000)
    probe("audit line for a refused credential", "logged",
          "logged" if "refused read from an unknown caller" in log else "missing")


def test_the_cli_presents_gpucp_token(secured: ControlPlaneProcess, tmp_path: Path) -> None:
    def gpucp(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "gpucp", *args, "--server", secured.address],
                              env={**_env(), **env}, capture_output=True, text=True, timeout=60)

    with_env = gpucp("submit", "noop", "hi", env={"GPUCP_TOKEN": "token-submitter-a"})
    token_file = tmp_path / "token"
    token_file.write_text("token-submitter-a\n")
    with_file = gpucp("list", "--token-file", str(token_file), env={"GPUCP_TOKEN": ""})
    without = gpucp("list", env={"GPUCP_TOKEN": ""})
    probe("gpucp submit with GPUCP_TOKEN", "exit 0", f"exit {with_env.returncode}")
    probe("gpucp list --token-file", "exit 0", f"exit {with_file.returncode}")
    probe("gpucp list without a token", "exit 1, says GPUCP_TOKEN",
          f"exit {without.returncode}" + (", says GPUCP_TOKEN" if "GPUCP_TOKEN" in without.stderr else ""))


def test_one_tenant_filling_its_queue_refuses_only_that_tenant(tmp_path: Path) -> None:
    cp = start_secured(tmp_path, tenants='[tenant.team-a]\nmax_pending = 3\nweight = 2\n')
    try:
        with client_as(cp, "submitter-a") as a, client_as(cp, "submitter-b") as b:
            held = [a.submit("noop") for _ in range(3)]  # no agent: they stay pending
            probe("a tenant past its max_pending", "RESOURCE_EXHAUSTED", refusal(a.submit, "noop"))
            probe("another tenant meanwhile", "OK", refusal(b.submit, "noop"))
            a.cancel(held[0])
            probe("the tenant once one of its tasks left the queue", "OK", refusal(a.submit, "noop"))
    finally:
        cp.kill()


# ----- worker identity ----------------------------------------------------------------------------


def test_an_agent_registers_only_as_its_worker_ids(secured: ControlPlaneProcess) -> None:
    other = RawAgent(secured.address, "agent-other", workers_pb2.Register(worker_id="box-1", slots=1))
    try:
        probe("Register as a worker id not the principal's", "PERMISSION_DENIED", code_of(other.first()))
    finally:
        other.close()
    reader = RawAgent(secured.address, "viewer-a", workers_pb2.Register(worker_id="box-1", slots=1))
    try:
        probe("Connect as a viewer", "PERMISSION_DENIED", code_of(reader.first()))
    finally:
        reader.close()


def test_a_live_worker_is_not_taken_over_by_another_principal(secured: ControlPlaneProcess) -> None:
    real = workers_pb2.Register(worker_id="box-victim", slots=1, instance_id="victim-instance", kinds=["victim"])
    victim = RawAgent(secured.address, "agent-box", real)
    try:
        assert victim.first().HasField("registered")  # type: ignore[union-attr]
        with client_as(secured, "submitter-a") as a:
            task_id = a.submit("victim", "secret payload")  # a kind only the victim runs
            eventually(lambda: a.get(task_id).worker_id == "box-victim", what="the task on the victim")
        # The admin may connect as any worker id, but not as one another principal holds, even
        # when it copies the holder's instance id and claims its running task.
        forged = workers_pb2.Register(worker_id="box-victim", slots=1, instance_id="victim-instance",
                                      running=[workers_pb2.RunningTask(task_id=task_id, attempt=1)])
        impostor = RawAgent(secured.address, "admin", forged)
        try:
            probe("Register over a live worker by another principal", "ALREADY_EXISTS", code_of(impostor.first()))
        finally:
            impostor.close()
    finally:
        victim.close()


@pytest.mark.parametrize(
    ("what", "register"),
    [
        ("64 GPUs", workers_pb2.Register(worker_id="box-big", slots=1, gpus=[
            common_pb2.Gpu(index=i, memory_total_mb=80_000) for i in range(64)])),
        ("a GPU of 4 TiB", workers_pb2.Register(worker_id="box-big", slots=1, gpus=[
            common_pb2.Gpu(index=0, memory_total_mb=4 * 1024 * 1024)])),
        ("a 1 MB label", workers_pb2.Register(worker_id="box-big", slots=1, labels=["x" * 1_000_000])),
        ("10,000 kinds", workers_pb2.Register(worker_id="box-big", slots=1, kinds=[f"k{i}" for i in range(10_000)])),
        ("100,000 running tasks", workers_pb2.Register(worker_id="box-big", slots=1, running=[
            workers_pb2.RunningTask(task_id=f"t{i}", attempt=1) for i in range(100_000)])),
        ("a worker id with a newline", workers_pb2.Register(
            worker_id="box-1\n2026-01-01 00:00:00 INFO gpucp.controlplane: forged", slots=1)),
    ],
)
def test_a_register_beyond_physical_limits_is_refused(
    secured: ControlPlaneProcess, what: str, register: workers_pb2.Register
) -> None:
    fake = RawAgent(secured.address, "agent-box", register)
    try:
        probe(f"Register with {what}", "INVALID_ARGUMENT", code_of(fake.first()))
    finally:
        fake.close()
    forged = [line for line in secured.log(1_000_000).splitlines() if line.startswith("2026-01-01")]
    assert not forged, "a worker id started a log line of its own"


# ----- bounded input ------------------------------------------------------------------------------


def test_oversized_strings_and_unknown_fields_are_not_stored(secured: ControlPlaneProcess) -> None:
    stub = scheduler(secured)
    meta = metadata("submitter-a")

    def submit(spec: common_pb2.TaskSpec, name: str = "submitter-a") -> str:
        request = scheduler_pb2.SubmitTaskRequest(spec=spec)
        return refusal(stub.SubmitTask, request, metadata=metadata(name), timeout=10)

    probe("a 1 MB task label", "INVALID_ARGUMENT",
          submit(common_pb2.TaskSpec(kind="noop", labels={"x": "y" * 1_000_000})))
    # An admin acts in every tenant, so only validation stands between it and a forged tenant.
    probe("a tenant with a newline, as admin", "INVALID_ARGUMENT",
          submit(common_pb2.TaskSpec(kind="noop", tenant="a\nb"), "admin"))
    probe("a 1 MB idempotency key", "INVALID_ARGUMENT",
          submit(common_pb2.TaskSpec(kind="noop", idempotency_key="k" * 1_000_000)))
    spec = common_pb2.TaskSpec(kind="noop")
    # Field 999, length-delimited, 1 MB: what a newer or hostile client could send.
    spec.MergeFromString(b"\xba\x3e" + _varint(1_000_000) + b"u" * 1_000_000)
    reply = stub.SubmitTask(scheduler_pb2.SubmitTaskRequest(spec=spec), metadata=meta, timeout=10)
    stored = stub.GetTask(scheduler_pb2.GetTaskRequest(task_id=reply.task_id), metadata=meta, timeout=10)
    probe("a 1 MB unknown field", "dropped",
          "dropped" if stored.spec.ByteSize() < 1000 else f"{stored.spec.ByteSize()} B kept")
    long_id = "x" * 10_000
    with client_as(secured, "submitter-a") as a:
        try:
            a.get(long_id)
        except GpucpError as exc:
            probe("a 10 KB task id echoed in the error", "truncated", "truncated" if len(str(exc)) < 1000 else "whole")


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


# ----- data at rest -------------------------------------------------------------------------------


@sqlite_only
def test_the_database_and_its_companions_are_private(secured: ControlPlaneProcess) -> None:
    with client_as(secured, "submitter-a") as a:
        a.submit("noop", "payload in the database")
    for suffix in ("", "-wal", "-shm", ".lock"):
        path = Path(f"{secured.db}{suffix}")
        probe(f"mode of gpucp.db{suffix}", "0o600", oct(stat.S_IMODE(path.stat().st_mode)))
