"""The dashboard in headless Chromium: screenshots with 4 agents and with 1,000 simulated workers,
and how long the page takes to load at that scale.

Two runs, each on a fresh `gpucp serve` (SQLite):
- 4 real agents (2 simulated A100s each) running sleep tasks for --busy-s, so the hour charts
  hold a few samples (one every 10 s), a task waits for 8 GPUs no worker has, a worker drains;
- --workers simulated workers (bench_scale's stream drivers: 4 A100s each, heartbeats with GPU
  stats) after --tasks noop tasks went through them, with --pending tasks left waiting.

An open page's cost: the control plane's CPU over --cpu-s with the page open, then without.

Load time: from navigation start until the page shows its first summary, its first page of
workers and of tasks (the page records it in body[data-loaded-ms]); median and max of --loads
loads. Also timed from Python: the JSON the page reads (a page of workers, a filtered page of
tasks) and the first summary of the live stream.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import multiprocessing
import multiprocessing.connection
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench_scale import ask, cpu_percent, driver_main
from common import OUT_DIR, ROOT, machine, start_agents, start_control_plane, stop_processes, write_json
from gpucp import Client, task_spec

if TYPE_CHECKING:
    from browser import Browser, Page


def http_port(workdir: Path) -> int:
    return int((workdir / "ready-0.http").read_text())


def timed_get(port: int, path: str, first_line_only: bool = False) -> float:
    """Seconds to answer GET `path` (to its first event, for a stream)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    start = time.perf_counter()
    conn.request("GET", path, headers={"Connection": "close"})
    reply = conn.getresponse()
    if reply.status != 200:
        raise RuntimeError(f"GET {path}: {reply.status} {reply.read()[:300]!r}")
    if first_line_only:
        line = b"-"
        while line and not line.startswith(b"data:"):
            line = reply.readline()
    else:
        reply.read()
    elapsed = time.perf_counter() - start
    reply.close()
    conn.close()
    return elapsed


def load_times(page: Page, url: str, loads: int) -> list[float]:
    """Milliseconds from navigation start until the page shows its data, per load."""
    out = []
    for _ in range(loads):
        page.goto("about:blank")
        page.goto(url)
        out.append(float(page.wait_for("document.body.dataset.loadedMs", 120, "the page to show its data")))
    return out


def api_times(port: int, repeat: int = 5) -> dict[str, float]:
    paths = {
        "workers page (100)": "/api/v1/dashboard/workers?limit=100",
        "workers filtered (state=connected, q=-3)": "/api/v1/dashboard/workers?state=connected&q=-3&limit=100",
        "tasks page (100)": "/api/v1/tasks?limit=100",
        "tasks filtered (state=pending)": "/api/v1/tasks?state=pending&limit=100",
    }
    out = {name: statistics.median(timed_get(port, path) for _ in range(repeat)) * 1000 for name, path in paths.items()}
    streams = []
    for _ in range(repeat):
        streams.append(timed_get(port, "/api/v1/dashboard/stream", first_line_only=True))
        time.sleep(0.3)  # the server notices a closed stream within 0.1 s; it counts toward a cap of 4 until then
    out["stream: first event (the hour of history)"] = statistics.median(streams) * 1000
    return out


def run_agents(args: argparse.Namespace, browser: Browser, shots: Path) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="gpucp-bench-dash-") as tmp:
        workdir = Path(tmp)
        address, cp = start_control_plane(workdir)
        agents = start_agents(address, workdir, 4, "--gpus", "2xA100-80GB")
        try:
            with Client(address) as client:
                wait = time.monotonic() + 60
                while client.stats().workers < 4 and time.monotonic() < wait:
                    time.sleep(0.1)
                client.submit("noop", gpus=8, tenant="research")  # waits: no worker has 8 GPUs
                end = time.monotonic() + args.busy_s
                tenants = ("research", "prod", "batch")
                i = 0
                while time.monotonic() < end:
                    client.submit_many([task_spec("sleep", b'{"seconds": 2}', gpus=1, tenant=tenants[(i + j) % 3])
                                        for j in range(6)])
                    i += 1
                    time.sleep(1)
                client.drain("bench-3")
                time.sleep(2)
            port = http_port(workdir)
            page = browser.page()
            times = load_times(page, f"http://127.0.0.1:{port}/", args.loads)
            png = page.screenshot(shots / "dashboard-4-agents.png", full_page=False)
            page.screenshot(shots / "dashboard-4-agents-full.png")
            page.close()
            return {"workers": 4, "load_ms": times, "screenshot": str(png)}
        finally:
            stop_processes([*agents, cp])


def run_fleet(args: argparse.Namespace, browser: Browser, shots: Path) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="gpucp-bench-dash-") as tmp:
        workdir = Path(tmp)
        address, cp = start_control_plane(workdir, "--max-queue", "1000000")
        pipes: list[multiprocessing.connection.Connection] = []
        drivers = []
        try:
            per = [args.workers // 4 + (i < args.workers % 4) for i in range(4)]
            for i, n in enumerate(per):
                ours, theirs = ctx.Pipe()
                proc = ctx.Process(target=driver_main, daemon=True, args=(theirs, address, f"sim-{i}-", n, 10, 1000))
                proc.start()
                drivers.append(proc)
                pipes.append(ours)
            for pipe in pipes:
                pipe.send("connect")
            ask(pipes, "wait_registered")
            with Client(address) as client:
                start = time.monotonic()
                tenants = [f"team-{t}" for t in range(8)]
                for i in range(0, args.tasks, 1000):
                    client.submit_many([task_spec("noop", tenant=tenants[(i // 1000) % 8])
                                        for _ in range(min(1000, args.tasks - i))])
                while client.stats().tasks_by_state.get("TASK_STATE_SUCCEEDED", 0) < args.tasks:
                    time.sleep(0.2)
                through_s = time.monotonic() - start
                client.submit_many([task_spec("noop", gpus=8, tenant=tenants[i % 8]) for i in range(args.pending)])
                print(f"  {args.tasks:,} tasks through {args.workers:,} workers in {through_s:.1f} s", file=sys.stderr)
            port = http_port(workdir)
            page = browser.page()
            times = load_times(page, f"http://127.0.0.1:{port}/", args.loads)
            png = page.screenshot(shots / f"dashboard-{args.workers}-workers.png", full_page=False)
            page.screenshot(shots / f"dashboard-{args.workers}-workers-full.png")
            shown = page.evaluate("document.querySelectorAll('#workers tbody tr').length")
            # What an open page costs the control plane: its CPU with the page open, then without,
            # each over --cpu-s (the fleet's heartbeats run through both).
            cpu_open = cpu_percent(cp.pid, args.cpu_s)
            page.goto("about:blank")
            cpu_closed = cpu_percent(cp.pid, args.cpu_s)
            page.close()
            return {"workers": args.workers, "tasks": args.tasks + args.pending, "load_ms": times,
                    "cpu_percent_page_open": cpu_open, "cpu_percent_no_page": cpu_closed,
                    "worker_rows_shown": shown, "api_ms": api_times(port), "screenshot": str(png)}
        finally:
            with contextlib.suppress(RuntimeError, OSError, EOFError):
                ask(pipes, "stop", 60)
            for proc in drivers:
                proc.join(10)
            stop_processes([cp])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, default=1000, help="simulated workers of the second run (default 1000)")
    p.add_argument("--tasks", type=int, default=100_000, help="noop tasks run through them first (default 100000)")
    p.add_argument("--pending", type=int, default=500, help="tasks left waiting (default 500)")
    p.add_argument("--busy-s", type=float, default=35.0, help="seconds of sleep tasks on the 4 agents (default 35)")
    p.add_argument("--loads", type=int, default=5, help="page loads timed per run (default 5)")
    p.add_argument("--cpu-s", type=float, default=10.0, help="seconds the control plane's CPU is read, with the page "
                   "open and without (default 10)")
    args = p.parse_args()
    shots = OUT_DIR / "dashboard"
    shots.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(ROOT / "tests"))  # the tests' Chromium driver, shared with this bench
    from browser import Browser, find_chromium

    binary = find_chromium()
    if binary is None:
        raise SystemExit("no chromium: apt-get install chromium")
    with Browser(binary) as browser:
        print("4 agents ...", file=sys.stderr, flush=True)
        small = run_agents(args, browser, shots)
        print(f"{args.workers:,} simulated workers ...", file=sys.stderr, flush=True)
        large = run_fleet(args, browser, shots)
    lines = ["run                     load median   load max   screenshot"]
    for name, r in (("4 agents", small), (f"{args.workers:,} workers", large)):
        lines.append(f"{name:<22}  {statistics.median(r['load_ms']):8.0f} ms  {max(r['load_ms']):6.0f} ms   "
                     f"{r['screenshot']}")
    lines.append(f"\nat {args.workers:,} workers and {large['tasks']:,} tasks, server time of what the page reads "
                 f"(median of 5):")
    for name, ms in large["api_ms"].items():
        lines.append(f"  {name:<42} {ms:7.1f} ms")
    lines.append(f"control plane CPU with the page open {large['cpu_percent_page_open']:.1f}% of a core, without "
                 f"{large['cpu_percent_no_page']:.1f}% (heartbeats of {args.workers:,} workers in both)")
    text = "\n".join(lines)
    print(text)
    path = write_json("dashboard.json", {"machine": machine(), "args": vars(args), "small": small, "large": large,
                                         "table": text})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
