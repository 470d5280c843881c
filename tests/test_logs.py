"""Logs worth reading: one startup line, every task event a line with its task, tenant, kind, worker
and attempt, JSON on request, and drains and refusals logged as what they are."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys

from cluster import AgentProcess, ControlPlaneProcess, eventually, wait_for_workers
from controlplane.book import Event
from controlplane.logs import FIELDS, TEXT_FORMAT, WRITE_AFTER_S, BatchHandler, Formatter, JsonFormatter, message
from controlplane.record import TaskRecord
from gpucp import __version__
from gpucp.v1 import common_pb2


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


def test_records_go_out_when_their_turn_ends_task_lines_once_due_and_lines_off_the_loop_at_once(
    tmp_path, monkeypatch
):
    path = tmp_path / "stderr"
    stderr = open(path, "w")  # noqa: SIM115 (the handler writes to its file until the test ends)
    monkeypatch.setattr(sys, "stderr", stderr)
    handler = BatchHandler(Formatter(TEXT_FORMAT))
    rec = TaskRecord(1, "0" * 32, "acme", common_pb2.TaskSpec(kind="noop"))
    event = Event(1, 0, common_pb2.TASK_STATE_PENDING, 0, "", "submitted", "submitted", "", 0.0)

    def line(text: str) -> None:
        handler.handle(logging.LogRecord("gpucp.controlplane", logging.INFO, "", 0, text, (), None))

    async def turn(text: str) -> None:
        line(text)
        line(text)
        assert path.read_text().count(text) == 0, "written before the turn ended"
        await asyncio.sleep(0)
        assert path.read_text().count(text) == 2, "a record's line not written once its turn ended"
        before = path.read_text().count(rec.id)
        handler.task_line(rec, event)
        await asyncio.sleep(0)
        handler.task_line(rec, event)  # a later turn's task line joins the write due
        assert path.read_text().count(rec.id) == before, "a task line written before its write was due"
        await asyncio.sleep(WRITE_AFTER_S)
        assert path.read_text().count(rec.id) == before + 2, "task lines not written once due"

    asyncio.run(turn("first loop"))
    asyncio.run(turn("second loop"))  # a later loop writes its lines too
    line("no loop")
    assert path.read_text().endswith("no loop\n")
    stderr.close()


def test_a_task_line_reads_as_logging_would_write_it_and_a_reason_cannot_break_it():
    # Task lines skip logging's records; text and JSON must still read as its formatters write them.
    rec = TaskRecord(1, "0" * 32, "acme", common_pb2.TaskSpec(kind="train"))
    fields = {"task": rec.id, "tenant": "acme", "kind": "train", "worker": "w0", "attempt": 1, "state": "assigned",
              "cause": "assigned"}

    def record(msg: str) -> logging.LogRecord:  # what log_event logged through logging
        made = logging.LogRecord("gpucp.tasks", logging.INFO, "", 0, msg, (), None)
        made.__dict__.update(fields)
        return made

    forged = "lost: stream reset\n2026-01-01 00:00:00,000 INFO forged\x1b[2J"
    for reason, shown in (("assigned to w0 (GPUs 0, 1)", "assigned to w0 (GPUs 0, 1)"),
                          (forged, r"lost: stream reset\n2026-01-01 00:00:00,000 INFO forged\x1b[2J")):
        event = Event(2, 0, common_pb2.TASK_STATE_ASSIGNED, 1, "w0", "assigned", reason, "", 0.0)
        text = Formatter(TEXT_FORMAT).task_line(rec, event)
        theirs = logging.Formatter(TEXT_FORMAT).format(record(message(rec, event, True)))
        assert text.count("\n") == 1 and text.endswith("\n"), f"one line a task event: {text!r}"
        assert text[23:] == theirs[23:] + "\n", "all but the time as logging writes it"  # the time: 23 characters
        assert f"assigned: {shown} (tenant" in text, text

        ours = JsonFormatter().task_line(rec, event)
        theirs = JsonFormatter().format(record(message(rec, event, False)))
        assert list(json.loads(ours)) == list(json.loads(theirs)) == ["time", "level", "logger", "message", *FIELDS]
        assert {**json.loads(ours), "time": ""} == {**json.loads(theirs), "time": ""}
        assert reason in json.loads(ours)["message"], "JSON keeps the reason as it is"
