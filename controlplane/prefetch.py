"""Prefetch that tunes itself: each worker's depth from the runtimes of the queued work and the dispatch round trip.

Without prefetch a slot idles one dispatch round trip (place, commit, send, start) between a
task ending and the next one starting: nothing next to an hour-long task, most of the time next
to a millisecond one. So each worker may hold d tasks beyond its slots (its agent queues them),

    d = ceil(slots x round trip / runtime), at most MAX_DEPTH,

for the longest runtime the core predicts on that worker among the shapes queued (learned per
kind and GPU model). d is 0 while any queued shape's runtime is unknown there (nothing is
prefetched before a runtime is learned), and 0 for work so long that the round trip costs it
under NEGLIGIBLE (5%) of its time: hour-long tasks are never prefetched. The round trip is measured
on the tasks placed while their worker had no prefetch, from placement to the agent's start
report. Stealing moves prefetched tasks to idle workers as before, so none runs twice.
`gpucp serve --prefetch-depth N` fixes every worker's depth instead (0: off).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

from controlplane.core import Core, mono_ms
from controlplane.fleet import Fleet
from controlplane.timers import Alarm

log = logging.getLogger("gpucp.controlplane")

MAX_DEPTH = 32
NEGLIGIBLE = 0.05
RETUNE_MS = 250  # how often depths follow the queue: each look asks the core once per worker and shape
_RTT_WEIGHT = 0.2  # of each new round-trip sample in the running average


def depth_for(slots: int, round_trip_ms: float, runtime_ms: float) -> int:
    """The prefetch depth that keeps `slots` slots busy through one round trip between tasks of runtime_ms."""
    if runtime_ms * NEGLIGIBLE >= round_trip_ms:
        return 0
    return min(MAX_DEPTH, math.ceil(slots * round_trip_ms / max(runtime_ms, 0.01)))


class PrefetchTuner:
    def __init__(self, core: Core, wake: Callable[[], None]) -> None:
        self.core = core
        self.fleet: Fleet
        self.round_trip_ms: float | None = None
        self.depths: dict[int, int] = {}  # by worker handle; absent: 0
        self._due_ms = 0
        # A look put off by RETUNE_MS happens then: no other event may come to wake dispatch.
        self._alarm = Alarm(wake)

    def close(self) -> None:
        self._alarm.cancel()

    def depth(self, worker: int) -> int:
        return self.depths.get(worker, 0)

    def round_trip(self, ms: float) -> None:
        """A task placed on a worker without prefetch started `ms` after its placement."""
        rtt = self.round_trip_ms
        self.round_trip_ms = ms if rtt is None else rtt + _RTT_WEIGHT * (ms - rtt)

    def retune(self) -> None:
        """Set each worker's depth for the work queued now (at most every RETUNE_MS)."""
        if self.round_trip_ms is None:
            return
        now = mono_ms()
        if now < self._due_ms:
            self._alarm.arm(self._due_ms)
            return
        self._due_ms = now + RETUNE_MS
        shapes = self.core.queued_shapes()
        if not shapes:
            return  # nothing to place: depths wait for the next work to say what it is
        predict = self.core.scheduler.predict_runtime_ms
        depths = {}  # of the workers here now: those gone are forgotten
        for conn in self.fleet.workers.values():
            worker = conn.handle
            runtimes = [predict(shape, worker) for shape in shapes]
            known = [r for r in runtimes if r is not None]
            depth = 0
            if len(known) == len(runtimes):
                depth = depth_for(conn.register.slots or 1, self.round_trip_ms, max(known))
            if depth != self.depths.get(worker, 0):
                log.debug("worker %s prefetches %d (round trip %.1f ms)", conn.worker_id, depth, self.round_trip_ms)
                self.core.scheduler.set_prefetch_depth(worker, depth)
            if depth:
                depths[worker] = depth
        self.depths = depths
