"""Who hears of task changes: watchers (WatchTasks streams) and waiters (WaitTask, RunTask).

Both hear a finished task only once its outcome is durable: the task book announces an outcome
after its commit, never before, so nobody learns of one that a crash could still undo.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from controlplane.book import Event
from controlplane.errors import ResourceExhausted
from controlplane.record import TaskRecord
from gpucp.v1 import scheduler_pb2

WATCH_BUFFER = 10_000


def wall_ms() -> int:
    return int(time.time() * 1000)


@dataclass(eq=False)
class Watcher:
    task_ids: frozenset[str]
    tenant: str
    # The tenants the watching principal may see; None: every tenant.
    allowed: frozenset[str] | None = None
    # The principal that watches, whose open watches are capped.
    owner: str = ""
    queue: asyncio.Queue[scheduler_pb2.TaskEvent | None] = field(
        default_factory=lambda: asyncio.Queue(WATCH_BUFFER)
    )
    overflowed: bool = False

    async def events(self) -> AsyncIterator[scheduler_pb2.TaskEvent]:
        while True:
            event = await self.queue.get()
            if event is None:
                if self.overflowed:
                    raise ResourceExhausted(
                        f"this watcher fell more than {WATCH_BUFFER} events behind; watch again"
                    )
                return
            yield event

    def wants(self, rec: TaskRecord) -> bool:
        if self.task_ids and rec.id not in self.task_ids:
            return False
        if self.allowed is not None and rec.tenant not in self.allowed:
            return False
        return not self.tenant or rec.tenant == self.tenant


class Follower(Protocol):
    """A session stream that follows tasks by id."""

    def heard(self, rec: TaskRecord, event: Event) -> None: ...


class Notifier:
    def __init__(self, max_watchers: int = 0) -> None:
        self._watchers: set[Watcher] = set()
        # Every event is offered to every watcher, so open watches are what an event costs: each
        # principal may hold this many (0 = no cap).
        self._max_watchers = max_watchers
        self._watching: collections.Counter[str] = collections.Counter()
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        # By task id: a lookup per change, where a watcher costs a test per change.
        self._followers: dict[str, list[Follower]] = {}

    def announce(self, rec: TaskRecord, event: Event) -> None:
        """A task changed (a finished one: durably): tell its watchers, and its waiters if it ended."""
        if self._watchers:
            self._emit(rec, event.proto(rec.id))
        followers = self._followers.get(rec.id)
        if followers:
            for follower in list(followers):  # a follower unfollows a task it hears finish
                follower.heard(rec, event)
        if rec.terminal:
            for waiter in self._waiters.pop(rec.id, []):
                if not waiter.done():
                    waiter.set_result(None)

    def _emit(self, rec: TaskRecord, event: scheduler_pb2.TaskEvent) -> None:
        for watcher in self._watchers:
            if watcher.overflowed or not watcher.wants(rec):
                continue
            try:
                watcher.queue.put_nowait(event)
            except asyncio.QueueFull:
                watcher.overflowed = True
                watcher.queue.get_nowait()
                watcher.queue.put_nowait(None)

    async def wait(self, task_id: str, timeout_ms: int) -> None:
        """Until the task's outcome is announced, or timeout_ms (0: no limit) passes."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(task_id, []).append(fut)
        try:
            await asyncio.wait_for(fut, timeout_ms / 1000 if timeout_ms else None)
        except TimeoutError:
            pass
        finally:
            waiters = self._waiters.get(task_id)
            if waiters and fut in waiters:
                waiters.remove(fut)
                if not waiters:
                    del self._waiters[task_id]

    def follow(self, task_id: str, follower: Follower) -> None:
        """Tell `follower` of the task's events until unfollow()."""
        self._followers.setdefault(task_id, []).append(follower)

    def unfollow(self, task_id: str, follower: Follower) -> None:
        followers = self._followers.get(task_id)
        if followers and follower in followers:
            followers.remove(follower)
            if not followers:
                del self._followers[task_id]

    def watch(
        self, task_ids: Sequence[str], tenant: str, allowed: frozenset[str] | None = None, owner: str = ""
    ) -> Watcher:
        """Start recording events for a watcher; call unwatch() when done with it. ResourceExhausted
        when `owner` already holds its cap of open watches."""
        if self._max_watchers and self._watching[owner] >= self._max_watchers:
            raise ResourceExhausted(
                f"{owner or 'this caller'} already has {self._watching[owner]} watches open, the most one caller "
                "may (--max-watchers): close some, or watch many tasks with one watch (task_ids, or a tenant)"
            )
        watcher = Watcher(frozenset(task_ids), tenant, allowed, owner)
        self._watchers.add(watcher)
        self._watching[owner] += 1
        return watcher

    def unwatch(self, watcher: Watcher) -> None:
        if watcher in self._watchers:
            self._watchers.remove(watcher)
            self._watching[watcher.owner] -= 1
            if not self._watching[watcher.owner]:
                del self._watching[watcher.owner]

    def close(self) -> None:
        """The server stops: end every watch."""
        for watcher in self._watchers:
            watcher.queue.put_nowait(None)
