"""gpucp.testing with the test suite's defaults: the work tree and tests/ importable by every child.

Tests import from here so that handler modules in tests/ (fault_handlers, model_handler, ...)
load in agents, and so that the control plane notices a lost agent within 2 s unless told otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from gpucp import testing
from gpucp.testing import eventually, wait_for_workers

__all__ = [
    "FAULT_REPORT", "ROOT", "SECURITY_REPORT", "AgentProcess", "ControlPlaneProcess", "_env", "eventually",
    "wait_for_workers",
]

ROOT = Path(__file__).resolve().parent.parent
PYTHONPATH = (ROOT, ROOT / "tests")

# Rows of the fault-injection report, printed at the end of the test session.
FAULT_REPORT: list[dict[str, object]] = []
# Rows of the security report (tests/security): probe, expected, observed.
SECURITY_REPORT: list[dict[str, str]] = []


def _env() -> dict[str, str]:
    """The environment of a child process started by a test."""
    return testing.child_env(PYTHONPATH)


class ControlPlaneProcess(testing.ControlPlaneProcess):
    def __init__(
        self, workdir: Path, *extra: str, heartbeat_timeout: float = 2.0, env: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(workdir, *extra, heartbeat_timeout=heartbeat_timeout, env=env, pythonpath=PYTHONPATH)


class AgentProcess(testing.AgentProcess):
    def __init__(
        self, workdir: Path, server: str, worker_id: str, *args: str, env: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(workdir, server, worker_id, *args, env=env, pythonpath=PYTHONPATH)
