"""Logs worth reading: one startup line, every task event a line with its task, tenant, kind, worker
and attempt, JSON on request, and drains and refusals logged as what they are."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys

from cluster import AgentProcess, ControlPlaneProcess, eventually, wait_for_workers
from controlplane.logs import TEXT_FORMAT, Formatter, TurnHandler
from gpucp import __version__


def test_json_logs_carry_every_task_event_with_its_fields(tmp_path):
    cp = ControlPlaneProcess(tmp_path, "--log-format", "json").start()
    agent = AgentProcess(tmp_path, cp.address, "w0")
    try:
        with cp.client() as client:
            wait_for_workers(client, ["w0"])
            task_id = client.submit("noop", tenant="acme")
            client.wait(task_id, timeout_s=30)
        eventually(lambda: f'"task": "{task_id}"' in cp.log(200_000) and "finished" in cp.log(200_000), 10,
                   "the task's log lines")
        lines = [line for line in cp.log(200_000).splitlines() if line.startswith("{")]
        records = [json.loads(line) for line in lines]
        start = [r for r in records if r["message"].startswith(f"gpucp {__version__} serving gRPC on ")]
        assert len(start) == 1, "no single startup line"
        assert "policy fragmentation" in start[0]["message"] and f"db {cp.db}" in start[0]["message"], start[0]
        mine = [r for r in records if r.get("task") == task_id]
        assert [r["cause"] for r in mine if r["cause"] != "started"] == ["submitted", "assigned", "finished"], mine
        finished = mine[-1]
        assert finished["level"] == "INFO" and finished["logger"] == "gpucp.tasks"
        assert (finished["tenant"], finished["kind"], finished["worker"], finished["attempt"], finished["state"]) == (
            "acme", "noop", "w0", 1, "succeeded"
        ), finished
        assert finished["time"].endswith("Z")
    finally:
        agent.stop()
        cp.kill()


def test_drains_and_refusals_are_logged_as_what_they_are(tmp_path):
    cp = ControlPlaneProcess(tmp_path).start()
    first = AgentProcess(tmp_path, cp.address, "w0")
    leaving = AgentProcess(tmp_path, cp.address, "w1")
    twin = None
    try:
        with cp.client() as client:
            wait_for_workers(client, ["w0", "w1"])
            client.drain("w0")
            twin = AgentProcess(tmp_path, cp.address, "w0")  # a second agent with a held id
            leaving.signal(signal.SIGTERM)  # drains, then leaves
            eventually(lambda: "w1" not in {w.worker_id for w in client.workers()}, 30, "w1 to leave")
        eventually(lambda: "refused agent 'w0'" in cp.log(100_000), 30, "the refusal to be logged")
        log = cp.log(100_000)
        assert "worker w0 drained by request" in log, log
        assert "worker w1 left after draining" in log, log
        assert "worker w1 lost" not in log, f"a drained worker that left was logged as lost:\n{log}"
        refusal = next(line for line in log.splitlines() if "refused agent 'w0'" in line)
        assert "WARNING" in refusal and "is held by another agent" in refusal, refusal
    finally:
        for agent in (first, leaving, twin):
            if agent is not None:
                agent.stop()
        cp.kill()


def test_line_times_are_those_logging_would_write_across_seconds():
    # The time to the second is made once a second: lines within it, after it and (a record
    # made on another thread) before it must still read as logging's own formatter writes them.
    ours, theirs = Formatter(TEXT_FORMAT), logging.Formatter(TEXT_FORMAT)
    for created in (1_800_000_000.001, 1_800_000_000.999, 1_800_000_001.5, 1_799_999_999.25, 1_800_000_001.75):
        record = logging.LogRecord("gpucp.tasks", logging.INFO, "", 0, "task %s", ("t1",), None)
        record.created, record.msecs = created, (created - int(created)) * 1000
        assert ours.format(record) == theirs.format(record)


def test_lines_of_a_loop_turn_are_written_when_it_ends_and_off_the_loop_at_once(tmp_path, monkeypatch):
    path = tmp_path / "stderr"
    stderr = open(path, "w")  # noqa: SIM115 (the handler writes to its file until the test ends)
    monkeypatch.setattr(sys, "stderr", stderr)
    handler = TurnHandler()

    def line(text: str) -> None:
        handler.handle(logging.LogRecord("gpucp.tasks", logging.INFO, "", 0, text, (), None))

    async def turn(text: str) -> None:
        line(text)
        line(text)
        assert path.read_text().count(text) == 0, "written before the turn ended"
        await asyncio.sleep(0)
        assert path.read_text().count(text) == 2, "not written once the turn ended"

    asyncio.run(turn("first loop"))
    asyncio.run(turn("second loop"))  # a later loop writes its lines too
    line("no loop")
    assert path.read_text().endswith("no loop\n")
    stderr.close()
