"""Where one task's time goes: the closed loop of bench_peers.py with a timestamp at every hop.

Starts `gpucp serve` on its defaults and K agents (as bench_peers.py does), runs N sequential
`client.run("noop", gpus=1)` on the session stream, with GPUCP_HOPS set so that the client, the
control plane and the agents note when each touches the task (gpucp/hops.py: one monotonic
clock for all of them). Tasks run one at a time, so a task's marks are those between its c.run
and the next. Printed: for the order of marks most tasks followed, the median time of each mark
after c.run and the median step from the mark before, with what the step is, and beside it the
mean of that step over the slowest 1% of those tasks (where the tail's time goes). Marks cost a
little themselves (a line written per mark): compare steps with each other, and the total with
bench_peers.py's p50 measured without them.

    python benches/bench_hops.py [--tasks 1000] [--workers 4] [--slots 4]
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

# Before gpucp is imported: gpucp.hops reads it once, and the children inherit it. The client is
# this checkout's, as the children's code is, whatever gpucp the interpreter has installed.
HOPS_DIR = tempfile.mkdtemp(prefix="gpucp-bench-hops-")
os.environ["GPUCP_HOPS"] = HOPS_DIR
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import start_agents, start_control_plane, stop_processes, wait_for_workers  # noqa: E402
from gpucp import Client  # noqa: E402

WARMUP = 100
# What the step that ends at each mark is (the mark's place in the code: grep for its name).
STEPS = {
    "c.run": "the caller starts run()",
    "c.send": "client: the stream's request thread takes the submit from the caller",
    "s.read": "gRPC: the submit crosses to the control plane and is read",
    "s.commit": "control plane: the end of a loop turn, its writes committed from here",
    "s.submitted": "control plane: the task is durable and queued",
    "s.placed": "control plane: the dispatcher placed it",
    "s.assignment_committed": "control plane: the assignment is durable",
    "s.write.assign": "control plane: the assignment's write starts",
    "s.written.assign": "control plane: the assignment's write returned",
    "s.write.accepted": "control plane: the accepted answer's write starts",
    "s.written": "control plane: a session write returned",
    "c.read.accepted": "client: the reader thread has the accepted answer",
    "a.read.assign": "agent: the assignment is read",
    "a.final": "agent: the task ran, its final update is queued",
    "a.write.update": "agent: the update's write starts",
    "s.read.update": "gRPC: the update crosses to the control plane and is read",
    "s.outcome_committed": "control plane: the outcome is durable",
    "s.write.outcomes": "control plane: the outcome's write starts",
    "c.read.outcomes": "client: the reader thread has the outcome",
    "c.woken": "client: the caller has it",
}


def marks(directory: str) -> list[tuple[int, str]]:
    out = []
    for path in Path(directory).iterdir():
        for line in path.read_text().splitlines():
            ns, name = line.split()
            out.append((int(ns), name))
    return sorted(out)


def by_task(all_marks: list[tuple[int, str]]) -> list[list[tuple[int, str]]]:
    """The marks of each run(), from its c.run to the next one's."""
    tasks: list[list[tuple[int, str]]] = []
    for ns, name in all_marks:
        if name == "c.run":
            tasks.append([])
        if tasks:
            tasks[-1].append((ns, name))
    return tasks


def report(tasks: list[list[tuple[int, str]]]) -> str:
    orders = collections.Counter(tuple(name for _, name in task) for task in tasks)
    order, count = orders.most_common(1)[0]
    same = [task for task in tasks if tuple(name for _, name in task) == order]
    # The tail: the slowest 1% of those tasks (at least one), each step's mean over them.
    slow = sorted(same, key=lambda task: task[-1][0] - task[0][0])[-max(1, len(same) // 100) :]
    lines = [
        f"{len(tasks)} sequential tasks; the order of marks most of them followed ({count} tasks):",
        "",
        f"{'mark':<24} {'at us':>7} {'step us':>8} {'slow 1%':>8}  the step that ends there",
    ]
    for i, name in enumerate(order):
        at = statistics.median((task[i][0] - task[0][0]) / 1000 for task in same)
        step = statistics.median((task[i][0] - task[i - 1][0]) / 1000 for task in same) if i else 0.0
        tail = statistics.mean((task[i][0] - task[i - 1][0]) / 1000 for task in slow) if i else 0.0
        lines.append(f"{name:<24} {at:>7.0f} {step:>8.0f} {tail:>8.0f}  {STEPS.get(name, '')}")
    lines.append("")
    lines.append("other orders (how many tasks): " + "; ".join(
        f"{n}: {' '.join(o)}" for o, n in orders.most_common(3)[1:]
    ))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=1000, help="sequential tasks marked (default 1000)")
    parser.add_argument("--workers", type=int, default=4, help="agents (default 4)")
    parser.add_argument("--slots", type=int, default=4, help="GPU slots per agent (default 4)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gpucp-bench-hops-db-") as tmp:
        address, cp = start_control_plane(Path(tmp))
        agents = start_agents(address, Path(tmp), args.workers, "--gpus", f"{args.slots}xA100-80GB",
                              "--slots", str(args.slots))
        try:
            with Client(address) as client:
                wait_for_workers(client, args.workers)
                for _ in range(WARMUP):
                    client.run("noop", gpus=1)
                start = time.perf_counter()
                for _ in range(args.tasks):
                    client.run("noop", gpus=1)
                per_task_us = (time.perf_counter() - start) / args.tasks * 1e6
        finally:
            stop_processes(agents)
            stop_processes([cp])
    tasks = by_task(marks(HOPS_DIR))[-args.tasks:]
    for path in Path(HOPS_DIR).iterdir():
        path.unlink()
    os.rmdir(HOPS_DIR)
    print(f"closed loop with marks: {per_task_us:.0f} us a task (mean, marks included)")
    print(report(tasks))


if __name__ == "__main__":
    main()
