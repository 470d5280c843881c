"""Timers of the control plane: one-shot alarms on the core's clock, and a heap of due times.

Dispatch is event-driven; timers exist only for deadlines (heartbeats, task timeouts, the queue
timeout), retry backoff and delay scheduling.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from collections.abc import Callable

from controlplane.core import mono_ms


class Alarm:
    """One timer on the mono_ms() clock for "call back at the earliest of these times"."""

    def __init__(self, callback: Callable[[], object]) -> None:
        self._callback = callback
        self._timer: asyncio.TimerHandle | None = None
        self._at = 0
        self._expected = 0  # when the loop should run the callback: at_ms, or at once if that has passed

    def arm(self, at_ms: int | None) -> None:
        """Fire at at_ms, unless already set to fire earlier; None leaves it as it is."""
        if at_ms is None or (self._timer is not None and self._at <= at_ms):
            return
        self.cancel()
        self._at = at_ms
        now = mono_ms()
        self._expected = max(at_ms, now)
        self._timer = asyncio.get_running_loop().call_later(max(0.0, (at_ms - now) / 1000), self._fire)

    def late_ms(self) -> int:
        """From inside the callback: how much later than it should have the loop ran it."""
        return mono_ms() - self._expected

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _fire(self) -> None:
        self._timer = None
        self._callback()


class DueHeap:
    """Handles due at monotonic times; `on_due` gets each handle whose time has come, in order."""

    def __init__(self, on_due: Callable[[int, float], None]) -> None:
        self._on_due = on_due
        self._heap: list[tuple[float, int]] = []
        self._timer: asyncio.TimerHandle | None = None

    def add(self, due: float, handle: int) -> None:
        heapq.heappush(self._heap, (due, handle))
        self._arm()

    def _arm(self) -> None:
        if self._timer is None and self._heap:
            delay = max(0.0, self._heap[0][0] - time.monotonic())
            self._timer = asyncio.get_running_loop().call_later(delay, self._fire)

    def _fire(self) -> None:
        self._timer = None
        now = time.monotonic()
        while self._heap and self._heap[0][0] <= now:
            _, handle = heapq.heappop(self._heap)
            self._on_due(handle, now)
        self._arm()

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
