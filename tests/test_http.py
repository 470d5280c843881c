"""The HTTP listener: /metrics clean under promtool, health, and the JSON API against a real
control plane with agents; bounded pages, clear errors, no payloads."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from typing import Any

from cluster import AgentProcess, ControlPlaneProcess, eventually, wait_for_workers
from gpucp import Client, task_spec
from gpucp.v1 import common_pb2

FAIL_ON = ("--handler", "fail=claims_handlers:fail_on")


def get(cp: ControlPlaneProcess, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{cp.http_port}{path}", timeout=30) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def get_json(cp: ControlPlaneProcess, path: str, status: int = 200) -> Any:
    code, body = get(cp, path)
    assert code == status, f"GET {path}: {code} {body[:500]!r}"
    return json.loads(body)


def test_metrics_pass_promtool_and_count_what_happened(tmp_path, promtool):
    cp = ControlPlaneProcess(tmp_path, "--retry-base", "0.05").start()
    agents = [AgentProcess(tmp_path, cp.address, f"w{i}", "--gpus", "2xA100-80GB", *FAIL_ON) for i in range(2)]
    try:
        with cp.client() as client:
            wait_for_workers(client, ["w0", "w1"])
            ids = client.submit_many([task_spec("noop", tenant="acme") for _ in range(5)])
            retried = client.submit("fail", json.dumps({"workers": ["w0", "w1"]}), max_retries=1, tenant="beta")
            for task_id in [*ids, retried]:
                client.wait(task_id, timeout_s=30)
        code, body = get(cp, "/metrics")
        assert code == 200
        check = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, timeout=60)
        assert check.returncode == 0, f"promtool check metrics: {check.stdout!r} {check.stderr!r}"
        text = body.decode()
        for line in (
            'gpucp_tasks_submitted_total{priority="normal",tenant="acme"} 5.0',
            'gpucp_tasks_finished_total{state="succeeded",tenant="acme"} 5.0',
            'gpucp_tasks_finished_total{state="failed",tenant="beta"} 1.0',
            'gpucp_requeues_total{reason="retrying"} 1.0',
            "gpucp_placements_total 7.0",
            'gpucp_workers{state="connected"} 2.0',
            'gpucp_gpus{model="NVIDIA A100 80GB",state="healthy"} 4.0',
            'gpucp_gpu_temperature_celsius{gpu="1",worker="w1"}',
            'gpucp_task_run_seconds_count{kind="noop"} 5.0',
            'gpucp_task_wait_seconds_count{kind="fail"} 1.0',
            'gpucp_tasks_pending{priority="urgent"} 0.0',
            "gpucp_tasks_running 0.0",
            "gpucp_workers_lost_total 0.0",
            'gpucp_gpus_allocated{how="shared"} 0.0',
            "gpucp_gpu_shares_allocated 0.0",
        ):
            assert line in text, f"{line!r} not in /metrics:\n{text}"
        agents[1].kill()  # gone without draining: a loss, past the reconnect grace
        eventually(lambda: "gpucp_workers_lost_total 1.0" in get(cp, "/metrics")[1].decode(), 30,
                   "gpucp_workers_lost_total to count the killed agent")
    finally:
        for agent in agents:
            agent.stop()
        cp.kill()


def test_tenant_labels_stay_bounded(tmp_path):
    cp = ControlPlaneProcess(tmp_path).start()
    try:
        with cp.client() as client:
            client.submit_many([task_spec("noop", tenant=f"t{i}") for i in range(130)])
        text = get(cp, "/metrics")[1].decode()
        series = [line for line in text.splitlines() if line.startswith("gpucp_tasks_submitted_total{")]
        assert len(series) == 101, f"{len(series)} tenant series: the first 100 tenants and 'other' expected"
        assert 'gpucp_tasks_submitted_total{priority="normal",tenant="other"} 30.0' in series
    finally:
        cp.kill()


def test_health_and_the_json_api_against_a_real_cluster(tmp_path):
    cp = ControlPlaneProcess(tmp_path).start()
    agents = [AgentProcess(tmp_path, cp.address, f"w{i}") for i in range(3)]
    try:
        assert get_json(cp, "/healthz") == {"status": "ok"}
        assert get_json(cp, "/readyz") == {"status": "ready"}
        with cp.client() as client:
            wait_for_workers(client, ["w0", "w1", "w2"])
            done = [client.submit("noop", b"x" * 1000, tenant="acme") for _ in range(3)]
            for task_id in done:
                client.wait(task_id, timeout_s=30)
            waiting = client.submit("noop", gpus=8, tenant="beta")  # no worker has 8 GPUs

        stats = get_json(cp, "/api/v1/stats")
        assert stats["workers"] == 3 and stats["tasks_by_state"]["TASK_STATE_SUCCEEDED"] == "3", stats

        first = get_json(cp, "/api/v1/workers?limit=2")
        assert [w["worker_id"] for w in first["workers"]] == ["w0", "w1"] and first["next_after"] == "w1"
        rest = get_json(cp, "/api/v1/workers?limit=2&after=w1")
        assert [w["worker_id"] for w in rest["workers"]] == ["w2"] and rest["next_after"] == ""

        page = get_json(cp, "/api/v1/tasks?tenant=acme&limit=2")
        assert [t["id"] for t in page["tasks"]] == done[:2] and page["next_page_token"]
        for t in page["tasks"]:
            assert "payload" not in t["spec"] and "result" not in t, t
            assert t["payload_bytes"] == 1000
        more = get_json(cp, f"/api/v1/tasks?tenant=acme&limit=2&page_token={page['next_page_token']}")
        assert [t["id"] for t in more["tasks"]] == done[2:]
        pending = get_json(cp, "/api/v1/tasks?state=pending")["tasks"]
        assert [t["id"] for t in pending] == [waiting]
        assert pending[0]["pending_reason"], "a pending task's JSON does not say why it waits"
        assert get_json(cp, "/api/v1/tasks?kind=sleep")["tasks"] == []

        one = get_json(cp, f"/api/v1/tasks/{done[0]}")
        assert one["state"] == "TASK_STATE_SUCCEEDED" and one["worker_id"].startswith("w")
        events = get_json(cp, f"/api/v1/tasks/{done[0]}/events")
        assert [e["cause"] for e in events["events"]][0] == "submitted" and events["omitted"] == 0

        errors = {
            "/api/v1/tasks/nope": 404,
            "/api/v1/tasks/nope/events": 404,
            "/api/v1/tasks?state=done": 400,
            "/api/v1/tasks?limit=5000": 400,
            "/api/v1/tasks?page_token=xyz": 400,
            "/api/v1/workers?limit=-1": 400,
            "/api/v2/anything": 404,
        }
        for path, status in errors.items():
            body = get_json(cp, path, status)
            assert set(body) == {"error"} and len(body["error"]) > 20, f"{path}: {body}"
        assert "no task has id 'nope'" in get_json(cp, "/api/v1/tasks/nope", 404)["error"]
        assert "done" in get_json(cp, "/api/v1/tasks?state=done", 400)["error"]
    finally:
        for agent in agents:
            agent.stop()
        cp.kill()


def test_the_listener_can_be_turned_off_and_a_busy_port_is_named(tmp_path, controlplane):
    (tmp_path / "off").mkdir()
    off = ControlPlaneProcess(tmp_path / "off", "--http", "").start()
    try:
        assert off.http_port == 0, "--http '' still listened"
        busy = subprocess.run(
            [sys.executable, "-m", "gpucp", "serve", "--listen", "127.0.0.1:0",
             "--http", f"127.0.0.1:{controlplane.http_port}", "--db", str(tmp_path / "busy.db")],
            capture_output=True, text=True, timeout=60, check=False,
        )
        assert busy.returncode == 1, busy
        assert f"port {controlplane.http_port} is already in use" in busy.stderr, busy.stderr
        assert "--http ''" in busy.stderr and not (tmp_path / "busy.db").exists()
        bad = subprocess.run(
            [sys.executable, "-m", "gpucp", "serve", "--listen", "127.0.0.1:0", "--http", "nowhere",
             "--db", str(tmp_path / "bad.db")],
            capture_output=True, text=True, timeout=60, check=False,
        )
        assert bad.returncode == 1 and "--http 'nowhere': give HOST:PORT" in bad.stderr, bad.stderr
    finally:
        off.kill()


def test_readyz_turns_503_when_shutdown_begins(tmp_path):
    """SIGTERM with a task running: load balancers see 503 on /readyz before the process is gone.

    The task is submitted with RunTask, whose call stays open until the task ends: the server
    gives in-flight calls their grace (5 s) before it exits, so the shutdown lasts long enough
    to be seen on any machine."""
    cp = ControlPlaneProcess(tmp_path).start()
    agent = AgentProcess(tmp_path, cp.address, "w0")
    outcome: list[BaseException | common_pb2.Task] = []

    def run() -> None:
        try:
            # Unary: a session would ride out the shutdown, waiting for the control plane to return.
            with Client(cp.address, session=False) as client:
                outcome.append(client.run("sleep", json.dumps({"seconds": 60}), wait_s=120))
        except Exception as exc:  # cut off by the shutdown, as expected
            outcome.append(exc)

    runner = threading.Thread(target=run, daemon=True)
    try:
        with cp.client() as client:
            wait_for_workers(client, ["w0"])
            runner.start()
            eventually(lambda: client.list_page(state=common_pb2.TASK_STATE_RUNNING)[0], 30, "the task to run")
        assert get_json(cp, "/readyz") == {"status": "ready"}
        cp.process.send_signal(signal.SIGTERM)
        seen = []
        while cp.process.poll() is None:
            try:
                seen.append(get(cp, "/readyz"))
            except (urllib.error.URLError, ConnectionError):
                break  # the listener closed: the process is on its way out
            time.sleep(0.05)
        assert cp.process.wait(30) == 0, cp.log()
        codes = [code for code, _ in seen]
        assert 503 in codes, f"/readyz never answered 503 during shutdown: {codes}"
        assert 200 not in codes[codes.index(503):], f"ready again after a 503: {codes}"
        body = json.loads(next(body for code, body in seen if code == 503))
        assert body == {"error": "the control plane is shutting down: send traffic to another replica"}, body
        runner.join(30)
        assert outcome and not isinstance(outcome[0], common_pb2.Task), "the 60 s task finished during shutdown?"
    finally:
        agent.stop()
        cp.stop()
