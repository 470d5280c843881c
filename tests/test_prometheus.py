"""Prometheus in the loop: deploy/prometheus's alert rules pass `promtool check rules` and their
unit tests, and a real Prometheus scrapes a running control plane and answers for its metrics."""

from __future__ import annotations

import re
import subprocess

from cluster import ROOT

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
