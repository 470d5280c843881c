"""`gpucp top`: the fleet and the queue, live in a terminal, redrawn every --interval seconds.

Into a pipe or a file it prints one frame, every worker, and ends (as `top -b -n 1`).

Keys: s sorts the workers by the next column (worker, busy, GPU use, failed, health), t shows
the next tenant's queue and tasks only (then every tenant again), r redraws now, q quits.

Each frame is three reads (GetClusterStats, ListWorkers, one page of ListTasks): what a watcher
costs the control plane does not grow with the queue, and the screen stays the same size at
10,000 workers (the table shows as many rows as fit).
"""

from __future__ import annotations

import contextlib
import select
import sys
import termios
import time
import tty
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from gpucp.client import Client
from gpucp.states import TaskState
from gpucp.text import duration, priority_name
from gpucp.v1 import admin_pb2, common_pb2

__all__ = ["SORTS", "Frame", "View", "render", "run"]

# The head of the queue (of the tenant in view) shown under the workers, next to run first.
TASK_ROWS = 8
# Lines of the screen that are not worker rows: the header, the tables' titles, heads and borders.
FIXED_LINES = 18


def _busy(w: admin_pb2.WorkerInfo) -> float:
    return (w.slots - w.slots_free) / w.slots if w.slots else 0.0


def _gpu_use(w: admin_pb2.WorkerInfo) -> float:
    return max((g.utilization for g in w.gpu_stats), default=0.0)


# Sort orders, cycled by `s`: a name for the header and a key (largest first, except worker ids).
SORTS: tuple[tuple[str, Callable[[admin_pb2.WorkerInfo], object], bool], ...] = (
    ("worker", lambda w: w.worker_id, False),
    ("busy", _busy, True),
    ("gpu use", _gpu_use, True),
    ("failed", lambda w: w.tasks_failed, True),
    ("health", lambda w: (w.health, w.worker_id), False),
)


@dataclass
class View:
    """What the person at the terminal chose: a sort order and a tenant (None: all)."""

    sort: int = 0
    tenant: str | None = None
    tenants: list[str] = field(default_factory=list)  # known from the last frame, for `t`

    def next_sort(self) -> None:
        self.sort = (self.sort + 1) % len(SORTS)

    def next_tenant(self) -> None:
        """All tenants, then each tenant with a queue in turn, then all again."""
        choices: list[str | None] = [None, *self.tenants]
        at = choices.index(self.tenant) if self.tenant in choices else 0
        self.tenant = choices[(at + 1) % len(choices)]


@dataclass
class Frame:
    """One read of the control plane."""

    stats: admin_pb2.ClusterStats
    workers: list[admin_pb2.WorkerInfo]
    tasks: list[common_pb2.Task]
    at: float


def read(client: Client, view: View) -> Frame:
    stats = client.stats()
    workers = client.workers()
    tasks, _ = client.list_page(state=TaskState.PENDING, tenant=view.tenant or "", limit=TASK_ROWS)
    view.tenants = sorted(stats.queue_depth_by_tenant)
    return Frame(stats, workers, tasks, time.time())


def render(frame: Frame, view: View, server: str, height: int) -> RenderableType:
    """The screen for `frame`: as many worker rows as fit in `height` lines, the rest counted."""
    stats = frame.stats
    name, key, reverse = SORTS[view.sort]
    header = Text.assemble(
        ("gpucp top", "bold"), f"  {server}  {time.strftime('%H:%M:%S', time.localtime(frame.at))}\n",
        f"workers {stats.workers}   slots {stats.slots_total - stats.slots_free} busy of {stats.slots_total}   "
        f"placements/s {stats.placements_per_second:.1f}\n",
        "tasks  " + ("   ".join(
            f"{TaskState(s).label} {stats.tasks_by_state[common_pb2.TaskState.Name(s)]}"
            for s in common_pb2.TaskState.values() if common_pb2.TaskState.Name(s) in stats.tasks_by_state
        ) or "none") + "\n",
        _queue_line(stats, view),
        ("\nkeys: s sort  t tenant  r refresh  q quit", "dim"),
    )
    shown = sorted(frame.workers, key=key, reverse=reverse)[: max(1, height - FIXED_LINES - len(frame.tasks))]  # type: ignore[arg-type]
    more = f", {len(frame.workers) - len(shown)} more below" if len(shown) < len(frame.workers) else ""
    workers = Table(title=f"workers (sorted by {name}{more})", title_justify="left", expand=True)
    # Ids are what a person types next (gpucp drain, gpucp get): other columns shrink before them.
    workers.add_column("WORKER", no_wrap=True, min_width=max((len(w.worker_id) for w in shown), default=6))
    for column in ("HEALTH", "BUSY", "GPUS", "GPU USE", "MEMORY", "TEMP", "OK", "FAILED", "UP"):
        workers.add_column(column, no_wrap=True)
    now_ms = int(frame.at * 1000)
    for w in shown:
        gpus = ",".join(sorted({g.name for g in w.gpus}))
        hot = max((g.temperature_c for g in w.gpu_stats), default=0.0)
        memory = sum(g.memory_used_mb for g in w.gpu_stats)
        health = Text(w.health, style="green" if w.health == "healthy" else "yellow")
        if any(not g.healthy for g in w.gpu_stats):
            health = Text("gpu unhealthy", style="red")
        workers.add_row(
            w.worker_id, health, f"{w.slots - w.slots_free}/{w.slots}", f"{len(w.gpus)}x {gpus}" if w.gpus else "-",
            f"{_gpu_use(w):.0f}%" if w.gpu_stats else "-", f"{memory} MB" if w.gpu_stats else "-",
            f"{hot:.0f}C" if w.gpu_stats else "-", str(w.tasks_succeeded), str(w.tasks_failed),
            duration(now_ms - w.connected_at_ms) if w.connected_at_ms else "-",
        )
    tasks = Table(title=f"next in the queue of {_whose(view)}", title_justify="left", expand=True)
    tasks.add_column("TASK", no_wrap=True, min_width=max((len(t.id) for t in frame.tasks), default=4))
    for column in ("KIND", "PRIORITY", "TENANT", "WAITING", "WHY"):
        tasks.add_column(column, no_wrap=True)
    for t in frame.tasks:
        tasks.add_row(
            t.id, t.spec.kind, priority_name(t.spec.priority), t.spec.tenant or "-",
            duration(now_ms - t.created_at_ms), t.pending_reason or "-",
        )
    return Group(header, workers, tasks)


def _whose(view: View) -> str:
    return "every tenant" if view.tenant is None else f"tenant {view.tenant}"


def _queue_line(stats: admin_pb2.ClusterStats, view: View) -> str:
    if view.tenant is not None:
        return f"queue of tenant {view.tenant}: {stats.queue_depth_by_tenant.get(view.tenant, 0)} pending"
    urgent_first = sorted((p for p in common_pb2.Priority.values() if p), reverse=True)
    parts = [f"{priority_name(p)} {stats.queue_depth_by_priority.get(common_pb2.Priority.Name(p), 0)}"
             for p in urgent_first]
    tenants = sorted(stats.queue_depth_by_tenant.items(), key=lambda kv: -kv[1])[:5]
    line = "queue  " + "   ".join(parts)
    if tenants:
        line += "   by tenant: " + ", ".join(f"{t} {n}" for t, n in tenants)
    return line


@contextlib.contextmanager
def _keys() -> Iterator[Callable[[float], str]]:
    """A function that waits up to its argument in seconds for a key press ("" for none): the
    terminal in cbreak mode meanwhile, restored after. Without a terminal it only waits."""
    if not sys.stdin.isatty():

        def wait(timeout: float) -> str:
            time.sleep(timeout)
            return ""

        yield wait
        return
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd)

    def key(timeout: float) -> str:
        ready, _, _ = select.select([fd], [], [], timeout)
        return sys.stdin.read(1) if ready else ""

    try:
        yield key
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def run(client: Client, interval_s: float) -> int:
    """Redraw every interval_s until q (or Ctrl-C); into a pipe or a file, print one frame and end."""
    view = View()
    console = Console()
    if not console.is_terminal:
        console.print(render(read(client, view), view, client.server, height=FIXED_LINES + 10_000))
        return 0
    with _keys() as key, Live(console=console, screen=True, auto_refresh=False) as live:
        while True:
            live.update(render(read(client, view), view, client.server, console.size.height), refresh=True)
            deadline = time.monotonic() + interval_s
            while (left := deadline - time.monotonic()) > 0:
                pressed = key(left).lower()
                if pressed == "q":
                    return 0
                if pressed in ("s", "t", "r"):
                    if pressed == "s":
                        view.next_sort()
                    elif pressed == "t":
                        view.next_tenant()
                    break
