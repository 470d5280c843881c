"""Pending payloads are held in the store, not in the control plane's memory: a real server, real
agents; the probe prints one row of the security report."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import urllib.request
from pathlib import Path

import pytest

from cluster import AgentProcess, ControlPlaneProcess, eventually, wait_for_workers
from gpucp import Client, task_spec
from gpucp.v1 import common_pb2
from security.secured import probe
from security.test_security_quotas import rss_mb

S = common_pb2
TASKS = 100
PAYLOAD_BYTES = 1_000_000


def payload(i: int) -> bytes:
    return bytes([i]) * PAYLOAD_BYTES  # each task's own, so a mix-up shows


def test_pending_payloads_stay_in_the_store_and_reach_every_attempt(tmp_path: Path) -> None:
    cp = ControlPlaneProcess(tmp_path, "--http", "127.0.0.1:0", "--retry-base", "0.05").start()
    agent = None
    try:
        with Client(cp.address, timeout_s=30) as client:
            before = rss_mb(cp.pid)
            ids = [client.submit_spec(task_spec("digest", payload(i), max_retries=1)) for i in range(TASKS)]
            after = rss_mb(cp.pid)
            growth_mb = after - before
            payload_mb = TASKS * PAYLOAD_BYTES / 2**20
            print(f"\nserver RSS {before:.0f} MB before, {after:.0f} MB with {TASKS} pending tasks of 1 MB "
                  f"({payload_mb:.0f} MB of payloads): +{growth_mb:.0f} MB")
            share = growth_mb / payload_mb
            probe(f"{TASKS} pending tasks of 1 MB: RSS growth", "< 25% of their bytes",
                  "< 25% of their bytes" if share < 0.25 else f"{share:.0%} of their bytes")

            # Every view that shows a payload reads it back; the web API gives its size.
            assert client.get(ids[3]).spec.payload == payload(3)
            listed, _ = client.list_page(state=S.TASK_STATE_PENDING, full=True, limit=10)
            assert [t.spec.payload for t in listed] == [payload(i) for i in range(10)]
            basic, _ = client.list_page(state=S.TASK_STATE_PENDING, limit=10)
            assert [t.spec.payload for t in basic] == [b""] * 10
            url = f"http://127.0.0.1:{cp.http_port}/api/v1/tasks/{ids[5]}"
            with urllib.request.urlopen(url, timeout=10) as response:
                assert json.load(response)["payload_bytes"] == PAYLOAD_BYTES

            # Each task's first attempt fails and its retry succeeds: both were sent its payload.
            agent = AgentProcess(tmp_path, cp.address, "w1", "--slots", "4",
                                 "--handler", "digest=security.digest_handler:digest")
            wait_for_workers(client, ["w1"])
            done = client.gather(ids, timeout_s=120)
            assert [t.state for t in done] == [S.TASK_STATE_SUCCEEDED] * TASKS
            assert [t.result for t in done] == [hashlib.sha256(payload(i)).hexdigest().encode() for i in range(TASKS)]
            assert all(t.attempt == 2 for t in done)
            assert client.wait(ids[7]).spec.payload == payload(7)  # a finished task's payload too
    finally:
        if agent is not None:
            agent.stop()
        cp.kill()


def test_a_payload_the_store_cannot_give_back_requeues_its_task_until_it_can(tmp_path: Path) -> None:
    """The task's row is taken out of the database under the running server (as a store that
    cannot be read), then put back: the task waits with a reason, is not failed, and then runs."""
    cp = ControlPlaneProcess(tmp_path).start()
    if not isinstance(cp.db, Path):
        cp.kill()
        pytest.skip("the row is moved aside with SQLite")
    agent = None
    try:
        with Client(cp.address, timeout_s=30) as client:
            task_id = client.submit("noop", payload(9)[:100_000])
            db = sqlite3.connect(cp.db, isolation_level=None)
            db.execute("CREATE TABLE aside AS SELECT * FROM tasks WHERE id = ?", (task_id,))
            db.execute("DELETE FROM tasks WHERE id = ?", (task_id,))
            agent = AgentProcess(tmp_path, cp.address, "w1")
            reason = "waiting to be placed again: its payload could not be read from the store"
            eventually(lambda: client.get(task_id).pending_reason == reason, what="the task held with a reason")
            db.execute("INSERT INTO tasks SELECT * FROM aside")
            db.close()
            done = client.wait(task_id, timeout_s=60)
            assert (done.state, done.result) == (S.TASK_STATE_SUCCEEDED, payload(9)[:100_000])
            causes = [event.cause for event in client.events(task_id)[0]]
            assert "requeued_store_failed" in causes and causes[-1] == "finished", causes
    finally:
        if agent is not None:
            agent.stop()
        cp.kill()


def test_a_restart_reloads_pending_tasks_without_their_payloads_and_still_sends_them(tmp_path: Path) -> None:
    cp = ControlPlaneProcess(tmp_path).start()
    agent = None
    try:
        with Client(cp.address, timeout_s=30) as client:
            ids = [client.submit("noop", payload(i)) for i in range(3)]
        cp = cp.restart(kill=True)
        with Client(cp.address, timeout_s=30) as client:
            assert client.get(ids[1]).spec.payload == payload(1)
            agent = AgentProcess(tmp_path, cp.address, "w1")
            assert [t.result for t in client.gather(ids, timeout_s=60)] == [payload(i) for i in range(3)]
    finally:
        if agent is not None:
            agent.stop()
        cp.kill()
