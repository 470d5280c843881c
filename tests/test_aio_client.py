"""gpucp.AsyncClient against a real control plane and agents: the methods of Client, awaited."""

from __future__ import annotations

import asyncio

import pytest

from cluster import ControlPlaneProcess
from gpucp import AsyncClient, FailedPrecondition, TaskState, Unfinished
from gpucp.v1 import common_pb2

SUCCEEDED = common_pb2.TASK_STATE_SUCCEEDED


def sleep_spec(seconds: float) -> common_pb2.TaskSpec:
    return common_pb2.TaskSpec(kind="sleep", payload=str(seconds).encode())


def test_submit_run_wait_get_list_events_and_cancel(controlplane: ControlPlaneProcess, start_agent) -> None:  # type: ignore[no-untyped-def]
    start_agent("w1", "--slots", "2")

    async def session() -> None:
        async with AsyncClient(controlplane.address) as client:
            ran = await client.run("noop", "hello", wait_s=30, tenant="lab")
            assert (ran.state, ran.result, ran.worker_id) == (SUCCEEDED, b"hello", "w1")
            task_id = await client.submit("noop", b"again", priority="urgent")
            waited = await client.wait(task_id, timeout_s=30, raise_on_timeout=True)
            assert waited.state == SUCCEEDED and (await client.get(task_id)).result == b"again"
            events, omitted = await client.events(task_id)
            assert [TaskState(e.state) for e in events][-1] is TaskState.SUCCEEDED and omitted == 0
            stuck = await client.submit("noop", labels=["nowhere"])  # no worker has the label
            assert await client.cancel(stuck) is TaskState.CANCELLED
            with pytest.raises(FailedPrecondition, match="already succeeded"):
                await client.cancel(task_id)
            assert [t.id async for t in client.list(state="cancelled")] == [stuck]
            page, token = await client.list_page(limit=2)
            assert len(page) == 2 and token
            assert [t.spec.tenant async for t in client.list(tenant="lab")] == ["lab"]
            assert [t.id async for t in client.get_many([stuck, "no-such-task"])] == [stuck]

    asyncio.run(session())


def test_admin_calls(controlplane: ControlPlaneProcess, start_agent) -> None:  # type: ignore[no-untyped-def]
    start_agent("w1", "--gpus", "2xA100-80GB")

    async def session() -> None:
        async with AsyncClient(controlplane.address) as client:
            assert [w.worker_id for w in await client.workers()] == ["w1"]
            assert (await client.stats()).workers == 1
            await client.drain("w1")
            assert (await client.workers())[0].health == "draining"
            await client.undrain("w1")
            # The drain ends once the agent, which echoed it, confirms the undrain.
            for _ in range(200):
                if (await client.workers())[0].health == "healthy":
                    break
                await asyncio.sleep(0.05)
            assert (await client.workers())[0].health == "healthy"

    asyncio.run(session())


def test_gather_and_as_completed_follow_finishing_order(controlplane: ControlPlaneProcess, start_agent) -> None:  # type: ignore[no-untyped-def]
    start_agent("w1", "--slots", "3")

    async def session() -> tuple[list[str], list[str], list[str]]:
        async with AsyncClient(controlplane.address) as client:
            ids = await client.submit_many([sleep_spec(3), sleep_spec(0), sleep_spec(1.5)])
            finished = [t.id async for t in client.as_completed([*ids, ids[1]])]  # a repeated id counts once
            gathered = [t.id for t in await client.gather(ids)]
            return ids, finished, gathered

    ids, finished, gathered = asyncio.run(session())
    assert finished == [ids[1], ids[2], ids[0]]
    assert gathered == ids


def test_gather_times_out_naming_the_unfinished(controlplane: ControlPlaneProcess) -> None:
    async def session() -> Unfinished:
        async with AsyncClient(controlplane.address) as client:
            ids = await client.submit_many([sleep_spec(0), sleep_spec(0)])  # no agent runs them
            with pytest.raises(Unfinished, match="2 of 2 tasks are still unfinished after 0.5 s") as raised:
                await client.gather(ids, timeout_s=0.5)
            assert raised.value.unfinished == ids
            return raised.value

    asyncio.run(session())


def test_a_watch_sees_events_as_they_happen_and_rides_out_a_restart(
    controlplane: ControlPlaneProcess, start_agent  # type: ignore[no-untyped-def]
) -> None:
    start_agent("w1")

    async def session() -> list[TaskState]:
        async with AsyncClient(controlplane.address) as client:
            watch = await client.watch(tenant="lab")  # subscribed first: no event of the task is missed
            watch.track([await client.submit("sleep", "3", tenant="lab")])
            states: list[TaskState] = []
            async for event in watch:
                states.append(TaskState(event.state))
                if states.count(TaskState.RUNNING) == 1 and states[-1] is TaskState.RUNNING:
                    # The control plane goes away while the task runs; its outcome still arrives.
                    await asyncio.to_thread(controlplane.restart)
                if TaskState(event.state).terminal:
                    watch.close()
            return states

    states = asyncio.run(session())
    assert states[-1] is TaskState.SUCCEEDED, states
    assert TaskState.RUNNING in states
