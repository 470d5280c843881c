"""`gpucp agent --nvidia` processes over the fake libnvidia-ml.so.1, against a recording Workers
server or the real control plane."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest

import fake_nvml
from cluster import ROOT, AgentProcess, ControlPlaneProcess, _env, wait_for_workers
from fake_nvml import FakeBox, FakeGpu
from gpucp import Client
from gpucp.v1 import common_pb2, workers_pb2, workers_pb2_grpc

pytest.importorskip("pynvml")

T = TypeVar("T")
NO_DRIVER = (
    "NVIDIA driver not found: libnvidia-ml.so.1 could not be loaded; "
    "install the driver, or run with --cpu-fallback to serve CPU tasks"
)


@pytest.fixture(scope="module")
def library_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fake_nvml.build(tmp_path_factory.mktemp("fake-nvml")).parent


@pytest.fixture
def box(tmp_path: Path) -> FakeBox:
    return fake_nvml.mixed_box(tmp_path / "nvml.cfg")


@pytest.fixture
def agents(tmp_path: Path) -> Iterator[list[AgentProcess]]:
    started: list[AgentProcess] = []
    yield started
    for agent in started:
        agent.stop()


def run(coro: Awaitable[T], timeout: float = 60.0) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


class RecordingWorkers(workers_pb2_grpc.WorkersServicer):
    """The control plane's side of the stream, reduced to recording what the agent sends."""

    def __init__(self) -> None:
        self.received: list[workers_pb2.AgentMessage] = []
        self.outgoing: asyncio.Queue[workers_pb2.ControlMessage] = asyncio.Queue()

    async def Connect(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> None:
        first = await context.read()
        if first is grpc.aio.EOF:
            return
        self.received.append(first)
        await context.write(
            workers_pb2.ControlMessage(
                registered=workers_pb2.Registered(worker_id=first.register.worker_id, heartbeat_interval_ms=100)
            )
        )

        async def pump() -> None:
            while True:
                await context.write(await self.outgoing.get())

        pumping = asyncio.create_task(pump())
        try:
            while (message := await context.read()) is not grpc.aio.EOF:
                self.received.append(message)
        finally:
            pumping.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pumping

    def heartbeats(self) -> list[workers_pb2.Heartbeat]:
        return [m.heartbeat for m in self.received if m.HasField("heartbeat")]

    async def wait_for(self, find: Callable[[], T], what: str, agent: AgentProcess, timeout: float = 20.0) -> T:
        deadline = time.monotonic() + timeout
        while not (found := find()):
            if agent.proc.poll() is not None:
                raise AssertionError(
                    f"the agent exited with {agent.proc.returncode} while waiting for {what}: {agent.log()}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}; agent log: {agent.log()}")
            await asyncio.sleep(0.02)
        return found

    async def register(self, agent: AgentProcess) -> workers_pb2.Register:
        return await self.wait_for(
            lambda: next((m.register for m in self.received if m.HasField("register")), None), "Register", agent
        )

    async def healthy_after(self, since: int, agent: AgentProcess, expected: list[bool]) -> workers_pb2.Heartbeat:
        """The first heartbeat after the first `since` whose per-GPU health is `expected`."""
        return await self.wait_for(
            lambda: next((h for h in self.heartbeats()[since:] if [g.healthy for g in h.gpus] == expected), None),
            f"a heartbeat with GPU health {expected}",
            agent,
        )


@contextlib.asynccontextmanager
async def recording_server() -> AsyncIterator[tuple[RecordingWorkers, str]]:
    workers = RecordingWorkers()
    server = grpc.aio.server(options=[("grpc.keepalive_permit_without_calls", 1)])
    workers_pb2_grpc.add_WorkersServicer_to_server(workers, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield workers, f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


def start_nvidia_agent(
    agents: list[AgentProcess], tmp_path: Path, server: str, box: FakeBox, library_dir: Path, *args: str
) -> AgentProcess:
    agent = AgentProcess(tmp_path, server, "gpu-box", "--nvidia", "--allow-exec", *args, env=box.env(library_dir))
    agents.append(agent)
    return agent


def exec_payload(script: str) -> str:
    return json.dumps({"argv": ["sh", "-c", script]})


def test_mixed_box_registers_its_gpus_driver_and_cuda(
    tmp_path: Path, box: FakeBox, library_dir: Path, agents: list[AgentProcess]
) -> None:
    async def scenario() -> None:
        async with recording_server() as (workers, server):
            agent = start_nvidia_agent(agents, tmp_path, server, box, library_dir, "--label", "zone=a")
            register = await workers.register(agent)
            assert [(g.index, g.name, g.uuid, g.memory_total_mb, g.compute_capability) for g in register.gpus] == [
                (0, "NVIDIA A100-SXM4-80GB", "GPU-a100-0000", 81920, 8.0),
                (1, "NVIDIA A100-SXM4-80GB", "GPU-a100-0001", 81920, 8.0),
                (2, "Tesla T4", "GPU-t4-0002", 15360, 7.5),
            ]
            assert (register.provider, register.backend, register.slots) == ("nvidia", "cuda", 3)
            assert list(register.labels) == ["zone=a", "driver=550.54.15", "cuda=12.4"]
            beat = await workers.wait_for(
                lambda: next((h for h in workers.heartbeats() if len(h.gpus) == 3), None), "a heartbeat", agent
            )
            assert [(g.power_w, g.memory_used_mb, g.healthy) for g in beat.gpus] == [
                (95.0, 1024, True),
                (60.0, 0, True),
                (0.0, 0, True),  # the T4 has no power reading and no ECC counters: defaults, still healthy
            ]

    run(scenario())


def test_ecc_error_marks_that_gpu_unhealthy_in_the_next_heartbeats(
    tmp_path: Path, box: FakeBox, library_dir: Path, agents: list[AgentProcess]
) -> None:
    async def scenario() -> None:
        async with recording_server() as (workers, server):
            agent = start_nvidia_agent(agents, tmp_path, server, box, library_dir)
            await workers.healthy_after(0, agent, [True, True, True])
            box.gpus[1].ecc_uncorrected = 1
            box.write()
            injected = len(workers.heartbeats())
            await workers.healthy_after(injected, agent, [True, False, True])
            # It stays unhealthy: every heartbeat from then on says so.
            settled = len(workers.heartbeats())
            await workers.wait_for(lambda: len(workers.heartbeats()) >= settled + 3, "3 more heartbeats", agent)
            assert all(not h.gpus[1].healthy for h in workers.heartbeats()[settled:])
            assert "GPU 1 is unhealthy: 1 uncorrected ECC error(s)" in agent.log()

    run(scenario())


def test_gpu_falling_off_the_bus_is_unhealthy_and_the_agent_keeps_working(
    tmp_path: Path, box: FakeBox, library_dir: Path, agents: list[AgentProcess]
) -> None:
    async def scenario() -> None:
        async with recording_server() as (workers, server):
            agent = start_nvidia_agent(agents, tmp_path, server, box, library_dir)
            await workers.healthy_after(0, agent, [True, True, True])
            box.gpus[0].lost = True
            box.write()
            await workers.healthy_after(len(workers.heartbeats()), agent, [False, True, True])
            assert "GPU 0 is unhealthy: fell off the bus" in agent.log()
            task = common_pb2.Task(
                id="t1",
                attempt=1,
                gpu_indices=[2],
                spec=common_pb2.TaskSpec(kind="exec", payload=exec_payload("echo $CUDA_VISIBLE_DEVICES").encode()),
            )
            workers.outgoing.put_nowait(workers_pb2.ControlMessage(assign=workers_pb2.Assignment(task=task)))
            update = await workers.wait_for(
                lambda: next(
                    (m.update for m in workers.received
                     if m.HasField("update") and m.update.state == common_pb2.TASK_STATE_SUCCEEDED),
                    None,
                ),
                "task t1 to succeed on GPU 2",
                agent,
            )
            assert json.loads(update.result)["stdout"].strip() == "2"
            beats = len(workers.heartbeats())
            await workers.wait_for(lambda: len(workers.heartbeats()) >= beats + 3, "heartbeats to go on", agent)
            assert agent.proc.poll() is None, "the agent must survive a lost GPU"

    run(scenario())


def test_mig_gpu_task_sees_its_mig_instances(
    tmp_path: Path, box: FakeBox, library_dir: Path, agents: list[AgentProcess]
) -> None:
    box.gpus[0] = FakeGpu(
        "NVIDIA A100-SXM4-80GB", "GPU-a100-mig", 81920, "8.0", mig=1, mig_uuids=["MIG-one", "MIG-two"]
    )
    box.write()

    async def scenario() -> None:
        async with recording_server() as (workers, server):
            agent = start_nvidia_agent(agents, tmp_path, server, box, library_dir)
            register = await workers.register(agent)
            assert [g.mig for g in register.gpus] == [True, False, False]
            task = common_pb2.Task(
                id="t1",
                attempt=1,
                gpu_indices=[0, 1],
                spec=common_pb2.TaskSpec(kind="exec", payload=exec_payload("echo $CUDA_VISIBLE_DEVICES").encode()),
            )
            workers.outgoing.put_nowait(workers_pb2.ControlMessage(assign=workers_pb2.Assignment(task=task)))
            update = await workers.wait_for(
                lambda: next((m.update for m in workers.received if m.HasField("update") and m.update.result), None),
                "the task's result",
                agent,
            )
            assert json.loads(update.result)["stdout"].strip() == "MIG-one,MIG-two,1"

    run(scenario())


def run_agent_command(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gpucp", "agent", "--server", "127.0.0.1:9", "--nvidia", *args],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=60,
    )


def test_no_driver_fails_fast_with_exit_2_naming_what_is_missing(tmp_path: Path) -> None:
    env = _env()
    env["LD_LIBRARY_PATH"] = str(tmp_path)  # an empty directory: no libnvidia-ml.so.1 anywhere we point to
    env.pop(fake_nvml.CONFIG_ENV, None)
    load = "import ctypes; ctypes.CDLL('libnvidia-ml.so.1')"
    probe = subprocess.run([sys.executable, "-c", load], env=env, check=False)
    if probe.returncode == 0:
        pytest.skip("this machine has a real NVIDIA driver, so 'no driver' cannot be shown here")
    started = time.monotonic()
    done = run_agent_command(env)
    assert done.returncode == 2, f"expected exit 2, got {done.returncode}: {done.stderr}"
    assert NO_DRIVER in done.stderr
    assert time.monotonic() - started < 30, "a missing driver must fail fast, not after retrying"


def test_driver_not_loaded_fails_fast_with_exit_2(tmp_path: Path, box: FakeBox, library_dir: Path) -> None:
    box.init_error = fake_nvml.DRIVER_NOT_LOADED
    box.write()
    done = run_agent_command({**_env(), **box.env(library_dir)})
    assert done.returncode == 2, f"expected exit 2, got {done.returncode}: {done.stderr}"
    assert "NVIDIA driver not loaded" in done.stderr and "--cpu-fallback" in done.stderr


def test_cpu_fallback_registers_a_cpu_only_worker(
    tmp_path: Path, box: FakeBox, library_dir: Path, agents: list[AgentProcess]
) -> None:
    box.init_error = fake_nvml.DRIVER_NOT_LOADED
    box.write()

    async def scenario() -> None:
        async with recording_server() as (workers, server):
            agent = start_nvidia_agent(agents, tmp_path, server, box, library_dir, "--cpu-fallback")
            register = await workers.register(agent)
            assert (len(register.gpus), register.backend, register.slots, register.provider) == (0, "cpu", 1, "local")
            assert "WARNING" in agent.log() and "registering as a CPU-only worker" in agent.log()

    run(scenario())


# ----- against the real control plane ------------------------------------------------------------


def start_on_controlplane(
    agents: list[AgentProcess], tmp_path: Path, cp: ControlPlaneProcess, box: FakeBox, library_dir: Path
) -> AgentProcess:
    agent = AgentProcess(tmp_path, cp.address, "gpu-box", "--nvidia", "--allow-exec", env=box.env(library_dir))
    agents.append(agent)
    with cp.client() as c:
        wait_for_workers(c, ["gpu-box"])
    return agent


def test_two_gpu_task_sees_exactly_two_gpus(
    tmp_path: Path, controlplane: ControlPlaneProcess, client: Client, box: FakeBox, library_dir: Path,
    agents: list[AgentProcess],
) -> None:
    start_on_controlplane(agents, tmp_path, controlplane, box, library_dir)
    task_id = client.submit("exec", exec_payload("echo $CUDA_VISIBLE_DEVICES"), gpus=2)
    task = client.wait(task_id, timeout_s=30)
    assert task.state == common_pb2.TASK_STATE_SUCCEEDED, f"task ended {task.state}: {task.error}"
    visible = json.loads(task.result)["stdout"].strip().split(",")
    assert len(visible) == 2 and visible == [str(i) for i in task.gpu_indices], (
        f"a 2-GPU task must see exactly its 2 GPUs {list(task.gpu_indices)}, saw CUDA_VISIBLE_DEVICES={visible}"
    )


def test_gpu_with_ecc_errors_gets_no_new_tasks(
    tmp_path: Path, controlplane: ControlPlaneProcess, client: Client, box: FakeBox, library_dir: Path,
    agents: list[AgentProcess],
) -> None:
    agent = start_on_controlplane(agents, tmp_path, controlplane, box, library_dir)
    box.gpus[1].ecc_uncorrected = 1
    box.write()
    # The agent reports it at its next heartbeat; the operator sees it in ListWorkers.
    deadline = time.monotonic() + 20
    while "unhealthy GPUs [1]" not in " ".join(w.health for w in client.workers()):
        assert time.monotonic() < deadline, f"the control plane never heard of the ECC error: {agent.log()}"
        time.sleep(0.1)
    # Held GPUs force the placement to spread: 9 concurrent 1-GPU tasks over 3 slots.
    ids = [client.submit("exec", exec_payload("echo $CUDA_VISIBLE_DEVICES; sleep 0.2"), gpus=1) for _ in range(9)]
    used = []
    for task_id in ids:
        task = client.wait(task_id, timeout_s=60)
        assert task.state == common_pb2.TASK_STATE_SUCCEEDED, f"task ended {task.state}: {task.error}"
        used.append(json.loads(task.result)["stdout"].strip())
    assert "1" not in used, f"GPU 1 reported uncorrected ECC errors but was given tasks: {used}"
