"""What the end-to-end benches share: real gpucp processes on loopback, /proc readings, output files.

Load only ever targets 127.0.0.1. Every process a bench starts here is one it also stops.
"""

from __future__ import annotations

import collections
import json
import math
import os
import platform
import re
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from gpucp import Client, testing
from gpucp.testing import stop_processes as stop_processes
from gpucp.v1 import common_pb2

ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = ROOT / "benches" / "out"
PYTHONPATH = (ROOT,)
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def child_env() -> dict[str, str]:
    """The environment for gpucp children: the work tree importable, output unbuffered."""
    return testing.child_env(PYTHONPATH)


def control_plane_loop() -> str:
    """The event loop `gpucp serve` runs on in this environment (see GPUCP_EVENT_LOOP)."""
    from controlplane.server import loop_factory

    return "asyncio" if loop_factory() is None else "uvloop"


def start_control_plane(
    workdir: Path, *extra: str, log_level: str = "WARNING", db: str | None = None, module: str = "gpucp"
) -> tuple[str, subprocess.Popen[bytes]]:
    """Start `gpucp serve` (`python -m MODULE serve`) on a free loopback port with `db` (default: an
    SQLite file in workdir); return (address, process)."""
    cp = testing.ControlPlaneProcess(workdir, *extra, db=db or workdir / "bench.db", log_level=log_level,
                                     pythonpath=PYTHONPATH, module=module).start()
    return cp.address, cp.process


def start_agents(
    address: str, workdir: Path, count: int, *agent_args: str, env: Mapping[str, str] | None = None
) -> list[subprocess.Popen[bytes]]:
    """Start `count` agent processes (`python -m agents`) named bench-0.. with the given flags."""
    return [
        testing.AgentProcess(workdir, address, f"bench-{i}", "--log-level", "WARNING", *agent_args,
                             env=env, pythonpath=PYTHONPATH).proc
        for i in range(count)
    ]


def wait_for_workers(client: Client, count: int, timeout_s: float = 60) -> None:
    """Block until the control plane counts `count` connected workers."""
    testing.wait_for_workers(client, count, timeout_s)


def submit_burst(client: Client, spec: common_pb2.TaskSpec, n: int, batch: int = 1000) -> tuple[float, float]:
    """Submit n copies of spec in batches as fast as possible; return (seconds to accept, seconds until all ended).

    Completion is read from the cluster counters: a WatchTasks stream carries four events per
    task and falls behind (and is cut off) while the client is busy submitting.
    """

    def ended() -> tuple[int, int]:
        counts = client.stats().tasks_by_state
        bad = sum(counts.get(f"TASK_STATE_{s}", 0) for s in ("FAILED", "CANCELLED", "TIMED_OUT"))
        return counts.get("TASK_STATE_SUCCEEDED", 0), bad

    ok0, bad0 = ended()
    start = time.perf_counter()
    for i in range(0, n, batch):
        client.submit_many([spec] * min(batch, n - i))
    accepted = time.perf_counter() - start
    deadline = start + 600
    while True:
        ok, bad = ended()
        if ok - ok0 + bad - bad0 >= n or time.perf_counter() > deadline:
            break
        time.sleep(0.02)  # 50 polls/s: cheap next to the burst itself
    done = time.perf_counter() - start
    if ok - ok0 != n:
        raise RuntimeError(f"burst: {ok - ok0} of {n} tasks succeeded, {bad - bad0} ended otherwise")
    return accepted, done


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) of values, nearest rank; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[rank]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS  # utime, stime (fields 14 and 15)


def rss_bytes(pid: int) -> int:
    """Resident memory of a process, from /proc."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def raise_fd_limit() -> int:
    """Raise this process's open-file limit to its hard limit (children inherit it); return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def machine() -> dict[str, Any]:
    """What the numbers were measured on: they mean little without it."""
    return {
        "cores": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def write_json(name: str, data: dict[str, Any]) -> Path:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    path = OUT_DIR / name
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def pyplot():  # type: ignore[no-untyped-def]
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, name: str) -> Path:  # type: ignore[no-untyped-def]
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    path = OUT_DIR / name
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def start_profiler(pid: int, path: str) -> tuple[subprocess.Popen[bytes], Path]:
    """py-spy record of a process (collapsed stacks) until stop_profiler()."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("py-spy")), "record", "--pid", str(pid), "--format", "raw",
         "--rate", "250", "--nonblocking", "--output", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    time.sleep(1.0)  # py-spy attaches before the measured part starts
    return proc, out


def stop_profiler(profiler: tuple[subprocess.Popen[bytes], Path], top: int = 15) -> dict[str, Any]:
    """Stop py-spy; return the top frames by own samples and by inclusive samples (our and grpc frames)."""
    proc, out = profiler
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    if not out.exists():
        return {"error": f"py-spy wrote nothing: {err.decode(errors='replace')[-500:]}"}
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    split: collections.Counter[str] = collections.Counter()
    total = 0
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        # One entry per function: py-spy names frames "func (file:line)".
        frames = [re.sub(r":\d+\)$", ")", frame) for frame in stack.split(";")]
        own[frames[-1]] += n
        split[cpu_part(frames)] += n
        for frame in set(frames):
            if "controlplane/" in frame or "grpc/" in frame:
                inclusive[frame] += n

    def share(counts: collections.Counter[str]) -> list[tuple[str, float]]:
        return [(frame, round(100 * n / total, 1)) for frame, n in counts.most_common(top)]

    split_pct = [(part, round(100 * n / total, 1)) for part, n in split.most_common()]
    return {"samples": total, "stacks_file": str(out), "self_pct": share(own), "inclusive_pct": share(inclusive),
            "split_pct": split_pct}


# Where a sample's own time goes, by the innermost frame that says: py-spy without --native shows
# time in C (SQLite, the Rust core, upb, gRPC's core) as the Python line that called it.
_PARTS = (
    ("store (SQLite)", ("controlplane/store", "sqlite3")),
    ("core (Rust placement)", ("controlplane/core.py", "_core", "dispatch.py")),
    ("protobuf", ("google/protobuf", "_pb2", "controlplane/record.py", "controlplane/views.py")),
    ("gRPC", ("grpc/", "grpc_")),
    ("event loop", ("asyncio/", "uvloop")),
)


def cpu_part(frames: list[str]) -> str:
    """The part of the control plane a stack's own time belongs to (see _PARTS)."""
    for frame in reversed(frames):
        for part, marks in _PARTS:
            if any(mark in frame for mark in marks):
                return part
        if "controlplane/" in frame:
            return "control plane (Python)"
    return "other"


def print_profile(profile: dict[str, Any], what: str) -> None:
    if "error" in profile:
        print(f"\nprofile: {profile['error']}")
        return
    print(f"\n{what}, py-spy, {profile['samples']} samples ({profile['stacks_file']}):")
    print("  self time:")
    for frame, pct in profile["self_pct"]:
        print(f"    {pct:5.1f}%  {frame}")
    print("  inclusive (controlplane and grpc frames):")
    for frame, pct in profile["inclusive_pct"]:
        print(f"    {pct:5.1f}%  {frame}")
    print("  by part (innermost frame that names one):")
    for part, pct in profile.get("split_pct", []):
        print(f"    {pct:5.1f}%  {part}")
