"""Real control-plane and agent processes on loopback, for tests that kill and restart them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, TypeVar

from gpucp import Client

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")


def eventually(check: Callable[[], T], timeout_s: float = 20.0, what: str = "condition") -> T:
    """Poll `check` until it returns something truthy; fail with `what` after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.05)


# Rows of the fault-injection report, printed at the end of the test session.
FAULT_REPORT: list[dict[str, object]] = []


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join((str(ROOT), str(ROOT / "tests"), env.get("PYTHONPATH", "")))
    env["PYTHONUNBUFFERED"] = "1"
    return env


class ControlPlaneProcess:
    """`gpucp serve` in a subprocess; keeps its port across restarts so agents can come back."""

    def __init__(
        self, workdir: Path, *extra: str, heartbeat_timeout: float = 2.0, env: Mapping[str, str] | None = None
    ) -> None:
        self.workdir = workdir
        self.env = dict(env or {})
        self.db = workdir / "gpucp.db"
        self.extra = list(extra)
        self.heartbeat_timeout = heartbeat_timeout
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> ControlPlaneProcess:
        ready = self.workdir / f"ready-{self.starts}"
        with open(self.workdir / f"controlplane-{self.starts}.log", "wb") as log:
            self.proc = self._spawn(ready, log)
        self.starts += 1

        def bound() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"control plane exited with {self.proc.returncode}: {self.log()}")
            return ready.exists() and ready.read_text() != ""

        eventually(bound, 30, "the control plane to listen")
        self.port = int(ready.read_text())
        return self

    def _spawn(self, ready: Path, log: IO[bytes]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [
                sys.executable, "-m", "gpucp", "serve",
                "--listen", f"127.0.0.1:{self.port}",
                "--db", str(self.db),
                "--heartbeat-timeout", str(self.heartbeat_timeout),
                "--ready-file", str(ready),
                "--log-level", "INFO",
                *self.extra,
            ],
            stdout=log, stderr=subprocess.STDOUT, env={**_env(), **self.env}, cwd=self.workdir,
        )

    def log(self) -> str:
        return "".join(p.read_text(errors="replace")[-4000:] for p in sorted(self.workdir.glob("controlplane-*.log")))

    def kill(self) -> None:
        """SIGKILL: no chance to flush or say goodbye."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def terminate(self, timeout_s: float = 20) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout_s)

    def client(self) -> Client:
        return Client(self.address)


class AgentProcess:
    """`python -m agents` with a simulated GPU inventory; `env` adds variables to its environment."""

    def __init__(
        self, workdir: Path, server: str, worker_id: str, *args: str, env: Mapping[str, str] | None = None
    ) -> None:
        self.worker_id = worker_id
        self.log_path = workdir / f"agent-{worker_id}.log"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "agents", "--server", server, "--worker-id", worker_id, *args],
                stdout=log, stderr=subprocess.STDOUT, env={**_env(), **(env or {})}, cwd=workdir,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def wait_for_workers(client: Client, worker_ids: Sequence[str], timeout_s: float = 30) -> None:
    def registered() -> bool:
        return set(worker_ids) <= {w.worker_id for w in client.workers()}

    eventually(registered, timeout_s, f"workers {sorted(worker_ids)} to register")
