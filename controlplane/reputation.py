"""Worker reputation: a worker that keeps failing tasks other workers complete is quarantined.

A worker is blamed when a task that failed on it later succeeds on another worker: the task was
fine, the worker was not. `threshold` blames within `window_s` quarantine it (no new work) for a
cooling period; then it is probed: its next outcome either clears it or quarantines it again for
twice as long (up to `max_cooling_s`). State is kept by worker id, so reconnecting does not clear it.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field


@dataclass
class Standing:
    blames: collections.deque[float] = field(default_factory=collections.deque)
    quarantined_until: float = 0.0
    cooling_s: float = 0.0
    probation: bool = False


class Reputation:
    def __init__(self, *, threshold: int, window_s: float, cooling_s: float, max_cooling_s: float) -> None:
        self.threshold = threshold
        self.window_s = window_s
        self.cooling_s = cooling_s
        self.max_cooling_s = max_cooling_s
        self._workers: dict[str, Standing] = {}

    def blame(self, worker_id: str, now: float) -> float | None:
        """Count a failure another worker fixed; returns the cooling period if it now quarantines."""
        standing = self._workers.setdefault(worker_id, Standing())
        standing.blames.append(now)
        while standing.blames and standing.blames[0] < now - self.window_s:
            standing.blames.popleft()
        if len(standing.blames) < self.threshold or self.quarantined(worker_id, now):
            return None
        return self._quarantine(standing, now, self.cooling_s)

    def outcome(self, worker_id: str, succeeded: bool, now: float) -> float | None:
        """A probed worker's next outcome; returns the new cooling period if it fails again."""
        standing = self._workers.get(worker_id)
        if standing is None or not standing.probation:
            return None
        if succeeded:
            del self._workers[worker_id]
            return None
        return self._quarantine(standing, now, min(self.max_cooling_s, standing.cooling_s * 2))

    def _quarantine(self, standing: Standing, now: float, cooling_s: float) -> float:
        standing.blames.clear()
        standing.cooling_s = cooling_s
        standing.quarantined_until = now + cooling_s
        standing.probation = False
        return cooling_s

    def release(self, worker_id: str) -> None:
        """The cooling period is over: let work in again, on probation."""
        standing = self._workers.get(worker_id)
        if standing is not None:
            standing.probation = True

    def quarantined(self, worker_id: str, now: float) -> bool:
        standing = self._workers.get(worker_id)
        return standing is not None and now < standing.quarantined_until

    def health(self, worker_id: str, now: float) -> str:
        standing = self._workers.get(worker_id)
        if standing is None:
            return "healthy"
        if now < standing.quarantined_until:
            left = standing.quarantined_until - now
            return f"quarantined for {left:.0f} s more: it failed tasks other workers completed"
        return "probation" if standing.probation else "healthy"
