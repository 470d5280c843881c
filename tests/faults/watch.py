"""Records every task event from WatchTasks in a background thread."""

from __future__ import annotations

import collections
import threading
import time

from gpucp import Client, GpucpError
from gpucp.states import TERMINAL_STATES
from gpucp.v1 import scheduler_pb2


class EventLog:
    """All events seen, and terminal events per task. Reconnects when the control plane restarts."""

    def __init__(self, address: str, token: str = "") -> None:
        self.address = address
        self.token = token
        self.events: list[scheduler_pb2.TaskEvent] = []
        self.terminal: collections.Counter[str] = collections.Counter()
        self.seen: set[str] = set()
        self._lock = threading.Lock()
        self._ready = threading.Event()
        threading.Thread(target=self._follow, daemon=True).start()
        self._ready.wait(10)

    def _follow(self) -> None:
        while True:
            try:
                with Client(self.address, token=self.token) as client:
                    events = client.watch()
                    self._ready.set()
                    for event in events:
                        with self._lock:
                            self.events.append(event)
                            self.seen.add(event.task_id)
                            if event.state in TERMINAL_STATES:
                                self.terminal[event.task_id] += 1
            except GpucpError:
                time.sleep(0.05)  # the control plane went away; watch again once it is back

    def wait_for(self, task_ids: list[str], timeout_s: float = 60.0) -> None:
        """Block until the watch has shown an event of each task.

        A test that submits faster than this thread reads would have the control plane cut the
        watch off (it keeps 10,000 events per watcher), and the events in between are gone.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            with self._lock:
                missing = [t for t in task_ids if t not in self.seen]
            if not missing:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"the watch showed nothing of {len(missing)} tasks within {timeout_s:g} s")
            time.sleep(0.01)

    def snapshot(self) -> list[scheduler_pb2.TaskEvent]:
        with self._lock:
            return list(self.events)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
