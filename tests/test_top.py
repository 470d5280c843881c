"""`gpucp top` driven in a real pseudo-terminal (tmux): what a person at the screen sees and presses."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest

from cluster import ROOT, ControlPlaneProcess, eventually
from gpucp import Client, TaskState


def tmux_binary() -> str:
    """Debian's tmux, installed when missing (CI starts from a fresh machine)."""
    found = shutil.which("tmux")
    if found:
        return found
    for step in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "tmux"]):
        done = subprocess.run(step, capture_output=True, text=True, timeout=600, check=False)
        if done.returncode != 0:
            pytest.skip(f"tmux is missing and `{' '.join(step)}` failed: {done.stderr[-500:]}")
    found = shutil.which("tmux")
    if not found:
        pytest.skip("the tmux package installed no tmux")
    return found


class Terminal:
    """A detached tmux server of its own (its own socket: other tmux users are untouched)."""

    def __init__(self, command: str) -> None:
        self.tmux = [tmux_binary(), "-L", f"gpucp-top-{uuid.uuid4().hex[:8]}"]
        self.run("new-session", "-d", "-s", "top", "-x", "160", "-y", "45", "-e", f"PYTHONPATH={ROOT}", command)

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        # COLUMNS and LINES (pytest may set them) would fix the size rich draws at, whatever the pane's.
        env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
        return subprocess.run([*self.tmux, *args], capture_output=True, text=True, timeout=30, check=False, env=env)

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", "top").stdout

    def press(self, key: str) -> None:
        self.run("send-keys", "-t", "top", key)

    def shows(self, *texts: str, timeout_s: float = 20.0) -> str:
        """The screen once it shows every one of `texts`; fails with the last screen otherwise."""
        last = [""]

        def check() -> str:
            last[0] = self.screen()
            return last[0] if all(t in last[0] for t in texts) else ""

        try:
            return eventually(check, timeout_s, f"{texts} on the screen")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; the screen:\n{last[0]}") from None

    def alive(self) -> bool:
        return self.run("has-session", "-t", "top").returncode == 0

    def close(self) -> None:
        self.run("kill-server")


@pytest.fixture
def terminal(controlplane: ControlPlaneProcess) -> Iterator[Terminal]:
    term = Terminal(f"{sys.executable} -m gpucp top --server {controlplane.address} --interval 0.3")
    yield term
    term.close()


def test_top_shows_the_fleet_and_the_queue_live_and_sorts_and_filters_by_key(
    controlplane: ControlPlaneProcess, start_agent, terminal: Terminal, client: Client  # type: ignore[no-untyped-def]
) -> None:
    start_agent("alpha", "--slots", "1", "--gpus", "1xA100-80GB")
    start_agent("beta", "--slots", "1")
    screen = terminal.shows("alpha", "beta", "workers 2", "normal 0")
    assert screen.index("alpha") < screen.index("beta")  # sorted by worker id first

    held = [client.submit("noop", tenant="lab", labels=["nowhere"]) for _ in range(3)]  # no worker fits: queued
    client.submit("noop", tenant="other", labels=["nowhere"])
    terminal.shows("normal 4", "by tenant: lab 3, other 1", held[0])

    terminal.press("t")  # the first tenant with a queue
    screen = terminal.shows("queue of tenant lab: 3 pending", "next in the queue of tenant lab")
    assert held[2] in screen
    client.cancel(held[0])
    terminal.shows("queue of tenant lab: 2 pending")  # live: the count follows the queue

    # beta runs a task and alpha idles: sorted by how busy they are, beta comes first.
    busy = client.submit("sleep", "60", labels=[])
    eventually(lambda: client.get(busy).state == TaskState.RUNNING, 20, "the sleep to run")
    runs_on = client.get(busy).worker_id
    idle = "alpha" if runs_on == "beta" else "beta"
    terminal.press("s")
    screen = terminal.shows("sorted by busy", "1/1")
    rows = [line for line in screen.splitlines() if line.startswith("│ ")]
    assert [r.split()[1] for r in rows[:2]] == [runs_on, idle], screen

    terminal.press("q")
    eventually(lambda: not terminal.alive(), 10, "gpucp top to exit on q")


def test_top_into_a_pipe_prints_one_frame_and_ends(controlplane: ControlPlaneProcess, start_agent) -> None:  # type: ignore[no-untyped-def]
    start_agent("w1")
    done = subprocess.run(
        [sys.executable, "-m", "gpucp", "top", "--server", controlplane.address], capture_output=True, text=True,
        timeout=60, cwd=ROOT, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "workers 1" in done.stdout and "w1" in done.stdout and "healthy" in done.stdout


def test_top_refuses_a_bad_interval_with_a_sentence() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gpucp", "top", "--interval", "0"], capture_output=True, text=True, timeout=60,
        cwd=ROOT, check=False,
    )
    assert done.returncode == 1 and "--interval 0: give seconds from 0.1 to 3600" in done.stderr, done.stderr
