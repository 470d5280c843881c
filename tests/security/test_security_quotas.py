"""Per-tenant quotas and rates from the --auth file's [tenant.NAME] tables, against a real server
and real agents; each prints one row of the security report."""

from __future__ import annotations

import asyncio
import queue
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from google.rpc.error_details_pb2 import RetryInfo
from google.rpc.status_pb2 import Status

from cluster import ROOT, AgentProcess, ControlPlaneProcess, _env, eventually, wait_for_workers
from gpucp import Client
from gpucp.client import GpucpError
from gpucp.v1 import common_pb2, scheduler_pb2, workers_pb2, workers_pb2_grpc
from security.secured import RawAgent, client_as, code_of, metadata, probe, scheduler, start_secured, token

S = common_pb2


def agent_as(cp: ControlPlaneProcess, name: str, worker_id: str, *args: str) -> AgentProcess:
    return AgentProcess(cp.workdir, cp.address, worker_id, *args, env={"GPUCP_TOKEN": token(name)})


def test_a_tenant_at_max_running_gpus_waits_with_a_reason_while_others_run(tmp_path: Path) -> None:
    cp = start_secured(tmp_path, tenants="[tenant.team-a]\nmax_running_gpus = 2\n")
    agent = agent_as(cp, "agent-box", "box-gpu", "--gpus", "4xL4-24GB", "--slots", "4")
    try:
        with client_as(cp, "operator") as op, client_as(cp, "submitter-a") as a, client_as(cp, "submitter-b") as b:
            wait_for_workers(op, ["box-gpu"])
            a_ids = [a.submit("sleep", "60", gpus=1) for _ in range(3)]

            def running_a() -> list[str]:
                return [t for t in a_ids if a.get(t).state == S.TASK_STATE_RUNNING]

            running = eventually(lambda: len(running_a()) == 2 and running_a(), what="two of team-a's tasks running")
            [held] = [t for t in a_ids if t not in running]
            b_ids = [b.submit("sleep", "60", gpus=1) for _ in range(2)]
            eventually(lambda: all(b.get(t).state == S.TASK_STATE_RUNNING for t in b_ids),
                       what="team-b's tasks running beside team-a's")
            reason = a.get(held).pending_reason
            probe("a tenant at its max_running_gpus", "pending, says why",
                  "pending, says why" if a.get(held).state == S.TASK_STATE_PENDING
                  and "tenant team-a runs 2 of its 2 GPUs" in reason else reason)
            probe("another tenant's GPU tasks meanwhile", "RUNNING",
                  ",".join(sorted({S.TaskState.Name(b.get(t).state).removeprefix("TASK_STATE_") for t in b_ids})))
            a.cancel(running[0])
            eventually(lambda: a.get(held).state == S.TASK_STATE_RUNNING, what="the held task, its tenant freed a GPU")
            for t in [running[1], held]:
                a.cancel(t)
            for t in b_ids:
                b.cancel(t)
    finally:
        agent.stop()
        cp.kill()


def retry_delay(exc: grpc.RpcError) -> float | None:
    """The google.rpc.RetryInfo delay in a refusal's status details, as any gRPC client reads it."""
    for key, value in exc.trailing_metadata() or ():  # type: ignore[attr-defined]
        if key == "grpc-status-details-bin":
            status = Status.FromString(value)
            for detail in status.details:
                info = RetryInfo()
                if detail.Unpack(info):
                    return info.retry_delay.ToTimedelta().total_seconds()
    return None


def test_a_tenant_past_its_submit_rate_is_told_how_long_to_wait(tmp_path: Path) -> None:
    cp = start_secured(tmp_path, tenants="[tenant.team-a]\nsubmit_rate = 5\n")  # burst: 10
    try:
        stub = scheduler(cp)
        spec = S.TaskSpec(kind="noop")

        def submit(name: str, n: int = 1) -> scheduler_pb2.SubmitTasksResponse:
            request = scheduler_pb2.SubmitTasksRequest(specs=[spec] * n)
            return stub.SubmitTasks(request, metadata=metadata(name), timeout=10)

        submit("submitter-a", 10)  # the whole burst at once
        with pytest.raises(grpc.RpcError) as refused:
            submit("submitter-a")
        delay = retry_delay(refused.value)
        probe("a tenant past its submit_rate", "RESOURCE_EXHAUSTED, delay",
              code_of(refused.value) + (", delay" if delay is not None else ", no RetryInfo"))
        assert delay is not None and 0 < delay <= 0.2, delay  # one token at 5/s
        assert f"retry in {delay:.3f} s" in refused.value.details(), refused.value.details()
        probe("another tenant meanwhile", "OK", code_of(submit("submitter-b", 20)))
        with pytest.raises(grpc.RpcError) as too_big:
            submit("submitter-a", 11)
        probe("a batch larger than the tenant's burst", "RESOURCE_EXHAUSTED, burst",
              code_of(too_big.value) + (", burst" if "more than its burst of 10" in too_big.value.details()
                                        else f": {too_big.value.details()}"))
        time.sleep(delay)  # what a client does with the delay: then the same call passes
        probe("the same submission after the delay", "OK", code_of(submit("submitter-a")))
        with client_as(cp, "submitter-a") as a, pytest.raises(GpucpError) as sdk:
            a.submit_many([spec] * 10)
        probe("the SDK's error names the delay", "RESOURCE_EXHAUSTED, delay",
              sdk.value.code.name + (", delay" if "retry in" in sdk.value.message else ""))
    finally:
        cp.kill()


def burst_s(cp: ControlPlaneProcess, n: int = 500) -> float:
    """Seconds from submitting `n` noop tasks as team-a to all of them finished."""
    with client_as(cp, "submitter-a") as a:
        start = time.perf_counter()
        done = a.gather(a.submit_many([S.TaskSpec(kind="noop") for _ in range(n)]), timeout_s=120)
        took = time.perf_counter() - start
    assert {t.state for t in done} == {S.TASK_STATE_SUCCEEDED}
    return took


def test_watches_past_the_cap_are_refused_and_a_burst_goes_on(tmp_path: Path) -> None:
    cp = start_secured(tmp_path)  # --max-watchers 64
    agent = agent_as(cp, "agent-box", "box-burst", "--slots", "8")
    calls: list[grpc.Call] = []
    try:
        with client_as(cp, "operator") as op:
            wait_for_workers(op, ["box-burst"])
        burst_s(cp, 100)  # warm up
        before = burst_s(cp)
        stub = scheduler(cp)
        # One principal asks for 1,000 watches of every event (an operator's reach: the worst
        # case), and reads none of them.
        calls = [stub.WatchTasks(scheduler_pb2.WatchTasksRequest(), metadata=metadata("operator"))
                 for _ in range(1000)]
        for call in calls:
            call.initial_metadata()  # sent once a watch records, or with the refusal
        eventually(lambda: sum(call.done() for call in calls) >= 936, what="the watches past the cap refused")
        refused = [call for call in calls if call.done()]
        codes = {call.code().name for call in refused}
        probe("1,000 watches by one principal (cap 64)", "936 RESOURCE_EXHAUSTED",
              f"{len(refused)} {','.join(sorted(codes))}")
        assert "watches open, the most one caller may (--max-watchers)" in refused[0].details()
        with client_as(cp, "viewer-a") as viewer:
            viewer.watch().close()  # returns once the server records for it; a refusal raises
        probe("a watch by another principal meanwhile", "OK", "OK")
        during = burst_s(cp)
        print(f"\n500-task burst: {before:.2f} s with no watches, {during:.2f} s with 64 watches of every event "
              f"open ({during / before:.1f}x)")
    finally:
        for call in calls:
            call.cancel()
        agent.stop()
        cp.kill()


def test_an_agent_stream_that_never_registers_is_closed(tmp_path: Path) -> None:
    cp = start_secured(tmp_path, "--register-timeout", "0.5")
    try:
        channel = grpc.insecure_channel(cp.address)
        silent = workers_pb2_grpc.WorkersStub(channel).Connect(iter(queue.Queue().get, None),
                                                               metadata=metadata("agent-box"), timeout=30)
        with pytest.raises(grpc.RpcError) as closed:
            next(silent)
        probe("an agent stream that sends no Register", "INVALID_ARGUMENT, closed",
              code_of(closed.value) + (", closed" if "within 0.5 s" in closed.value.details() else ""))
        channel.close()
    finally:
        cp.kill()


def test_refused_credentials_are_counted_by_reason_and_logged(tmp_path: Path) -> None:
    cp = start_secured(tmp_path)
    try:
        stub = scheduler(cp)
        asks = [(None, ""), ("guess", ""), ("agent-box", ""), ("viewer-a", "team-b")]
        for name, tenant in asks:
            with pytest.raises(grpc.RpcError):
                meta = (("authorization", "Bearer nobody-knows"),) if name == "guess" else metadata(name)
                stub.ListTasks(scheduler_pb2.ListTasksRequest(tenant=tenant), metadata=meta, timeout=10)
        intruder = RawAgent(cp.address, "agent-other", workers_pb2.Register(worker_id="box-1", slots=1))
        assert code_of(intruder.first()) == "PERMISSION_DENIED"
        intruder.close()
        admin = RawAgent(cp.address, "admin", workers_pb2.Register(worker_id="admin-box", slots=1))
        assert admin.first().HasField("registered")  # type: ignore[union-attr]
        admin.close()
        scrape = urllib.request.Request(f"http://127.0.0.1:{cp.http_port}/metrics", headers=dict(metadata("operator")))
        with urllib.request.urlopen(scrape, timeout=10) as reply:
            text = reply.read().decode()
        counted = {reason: f'gpucp_auth_refused_total{{reason="{reason}"}} 1.0' in text
                   for reason in ("no_credential", "unknown_credential", "role", "tenant", "worker")}
        probe("refused credentials in /metrics", "counted by reason",
              "counted by reason" if all(counted.values()) else str(counted))
        log = cp.log(200_000)
        lines = [
            "refused read from an unknown caller",
            "refused read from agent-box",
            "refused read from viewer-a",
            "refused register as worker 'box-1' from agent-other",
            "admin (admin) connected as worker 'admin-box'",
        ]
        missing = [line for line in lines if line not in log]
        probe("audit lines name the principal", "logged", "logged" if not missing else f"missing {missing}")
    finally:
        cp.kill()


def rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))) / 1024


def test_pending_bytes_are_bounded_per_tenant_and_in_all(tmp_path: Path) -> None:
    # 1 MB payloads: team-a may hold 16 MiB of pending specs, the whole queue 64 MiB.
    cp = start_secured(tmp_path, "--max-queue-bytes", str(64 * 2**20),
                       tenants=f"[tenant.team-a]\nmax_pending_bytes = {16 * 2**20}\n")
    try:
        payload = b"x" * 1_000_000
        before = rss_mb(cp.pid)
        with client_as(cp, "submitter-a") as a, client_as(cp, "submitter-b") as b:

            def fill(client: Client) -> tuple[int, GpucpError]:
                accepted = 0
                while True:
                    try:
                        client.submit("noop", payload)  # no agent: they stay pending
                    except GpucpError as exc:
                        return accepted, exc
                    accepted += 1

            a_held, a_refused = fill(a)
            probe("a tenant past its max_pending_bytes", "16 ok, RESOURCE_EXHAUSTED",
                  f"{a_held} ok, {a_refused.code.name}")
            assert "max_pending_bytes" in a_refused.message, a_refused.message
            b_held, b_refused = fill(b)
            probe("all tenants past --max-queue-bytes", "51 ok, RESOURCE_EXHAUSTED",
                  f"{b_held} ok, {b_refused.code.name}")
            assert "--max-queue-bytes" in b_refused.message, b_refused.message
        print(f"\nserver RSS {before:.0f} MB before, {rss_mb(cp.pid):.0f} MB with {a_held + b_held} pending tasks "
              f"of 1 MB (the queue's bound: 64 MiB)")
    finally:
        cp.kill()


@pytest.mark.parametrize(
    ("flags", "sentence"),
    [
        (("--max-queue-bytes", "0"), "--max-queue-bytes 0: give a number of bytes >= 1"),
        (("--max-watchers", "-1"), "--max-watchers -1: give a number of watches >= 0 (0: no cap)"),
        (("--register-timeout", "0"), "--register-timeout 0: give seconds > 0"),
        (("--register-timeout", "nan"), "--register-timeout nan: give seconds > 0"),
    ],
)
def test_a_bad_limit_flag_stops_serve_with_a_sentence(tmp_path: Path, flags: tuple[str, str], sentence: str) -> None:
    db = tmp_path / "x.db"
    done = subprocess.run(
        [sys.executable, "-m", "gpucp", "serve", "--listen", "127.0.0.1:0", "--db", str(db), *flags],
        env=_env(), capture_output=True, text=True, timeout=60, cwd=ROOT,
    )
    assert done.returncode == 1 and sentence in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert not db.exists()


def test_streams_waiting_to_register_are_capped(tmp_path: Path) -> None:
    cp = start_secured(tmp_path)  # 1,024 streams may wait to register at once, for 30 s each

    async def crowd() -> list[str]:
        async with grpc.aio.insecure_channel(cp.address) as channel:
            stub = workers_pb2_grpc.WorkersStub(channel)
            never = asyncio.Event()

            async def silence() -> AsyncIterator[workers_pb2.AgentMessage]:
                await never.wait()
                yield workers_pb2.AgentMessage()  # never reached

            calls = [stub.Connect(silence(), metadata=metadata("agent-box")) for _ in range(1100)]
            while sum(call.done() for call in calls) < 1100 - 1024:
                await asyncio.sleep(0.05)
            refused = [(await call.code()).name for call in calls if call.done()]
            for call in calls:
                call.cancel()
            return refused

    try:
        refused = asyncio.run(crowd())
        probe("1,100 agent streams that never register", "76 RESOURCE_EXHAUSTED",
              f"{len(refused)} {','.join(sorted(set(refused)))}")
    finally:
        cp.kill()
