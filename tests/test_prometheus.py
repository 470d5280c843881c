"""Prometheus in the loop: deploy/prometheus's alert rules pass `promtool check rules` and their
unit tests, and a real Prometheus scrapes a running control plane and answers for its metrics."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from cluster import ROOT, eventually, wait_for_workers
from gpucp import task_spec
from gpucp.testing import stop_processes

DEPLOY = ROOT / "deploy" / "prometheus"


def promtool_run(promtool: str, *args: str) -> str:
    done = subprocess.run([promtool, *args], cwd=DEPLOY, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, f"promtool {' '.join(args)}: {done.stdout}{done.stderr}"
    return done.stdout


def test_alert_rules_are_valid_and_their_unit_tests_pass(promtool):
    out = promtool_run(promtool, "check", "rules", "gpucp-rules.yml")
    assert "SUCCESS: 8 rules found" in out, out
    promtool_run(promtool, "check", "config", "prometheus.yml")
    assert "SUCCESS" in promtool_run(promtool, "test", "rules", "gpucp-rules.test.yml")


def test_alert_rules_use_only_metrics_gpucp_exports():
    """Every gpucp_* name in the rules is one /metrics serves (a renamed metric would silence an alert)."""
    source = (ROOT / "controlplane" / "metrics.py").read_text()
    exported = set(re.findall(r'"(gpucp_[a-z_]+)"', source))
    rules = (DEPLOY / "gpucp-rules.yml").read_text()
    used = set(re.findall(r"\b(gpucp_[a-z_]+?)(?:_total)?\b", rules))
    assert used and used <= exported, f"not exported: {sorted(used - exported)}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def prometheus_api(port: int, path: str, **query: str) -> Any:
    """The `data` of a Prometheus HTTP API answer; None while it cannot answer yet."""
    url = f"http://127.0.0.1:{port}/api/v1/{path}?{urllib.parse.urlencode(query)}"
    try:
        with urllib.request.urlopen(url, timeout=10) as reply:
            body = json.load(reply)
    except (urllib.error.URLError, ConnectionError):
        return None
    assert body["status"] == "success", body
    return body["data"]


def test_a_real_prometheus_scrapes_gpucp_and_answers_for_its_tasks(tmp_path: Path, prometheus, controlplane,
                                                                   start_agent):
    for worker in ("w0", "w1"):
        start_agent(worker, "--gpus", "2xA100-80GB")
    # The shipped config and rules, with the target and intervals of this test.
    config = (DEPLOY / "prometheus.yml").read_text()
    config = config.replace("127.0.0.1:50052", f"127.0.0.1:{controlplane.http_port}").replace("15s", "1s")
    config = config.replace("gpucp-rules.yml", str(DEPLOY / "gpucp-rules.yml"))
    (tmp_path / "prometheus.yml").write_text(config)
    port = free_port()
    with open(tmp_path / "prometheus.log", "wb") as log:
        proc = subprocess.Popen(
            [prometheus, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=log, stderr=subprocess.STDOUT,
        )
    try:
        with controlplane.client() as client:
            wait_for_workers(client, ["w0", "w1"])
            ids = client.submit_many([task_spec("noop", tenant="acme") for _ in range(6)])
            for task_id in ids:
                client.wait(task_id, timeout_s=30)

        def finished() -> float:
            data = prometheus_api(port, "query", query='sum(gpucp_tasks_finished_total{state="succeeded"})')
            return float(data["result"][0]["value"][1]) if data and data["result"] else 0.0

        try:
            eventually(lambda: finished() == 6, 90, "Prometheus to report the 6 finished tasks")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; it counts {finished()}. Its log:\n"
                                 f"{(tmp_path / 'prometheus.log').read_text()[-3000:]}") from None
        targets = prometheus_api(port, "targets")["activeTargets"]
        assert [(t["labels"]["job"], t["health"]) for t in targets] == [("gpucp", "up")], targets
        connected = prometheus_api(port, "query", query='gpucp_workers{state="connected"}')["result"]
        assert [r["value"][1] for r in connected] == ["2"], connected

        # The shipped rules load and evaluate against the real series without errors.
        def evaluated() -> list[Any]:
            data = prometheus_api(port, "rules")
            rules = [r for g in data["groups"] for r in g["rules"]] if data else []
            return rules if len(rules) == 8 and all(r["health"] == "ok" for r in rules) else []

        eventually(evaluated, 30, "the 8 rules to load and evaluate without errors")
    finally:
        stop_processes([proc])
