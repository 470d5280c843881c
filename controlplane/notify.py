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


class Announced:
    """One event as every watch that wants it holds it: the message, and its bytes on the wire
    made once, by the first watch that writes it, for all of them."""

    __slots__ = ("event", "_wire")

    def __init__(self, event: scheduler_pb2.TaskEvent) -> None:
        self.event = event
        self._wire: bytes | None = None

    def wire(self) -> bytes:
        if self._wire is None:
            self._wire = self.event.SerializeToString()
        return self._wire


@dataclass(eq=False)
class Watcher:
    task_ids: frozenset[str]
    tenant: str
    # The tenants the watching principal may see; None: every tenant.
    allowed: frozenset[str] | None = None
    # The principal that watches, whose open watches are capped.
    owner: str = ""
    # Events not yet read. A deque and a flag rather than an asyncio.Queue: an event is put on
    # every watch that wants it, so the put is the cost an open watch adds to each event.
    _queued: collections.deque[Announced] = field(default_factory=collections.deque)
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _ended: bool = False
    overflowed: bool = False

    def offer(self, item: Announced) -> None:
        if self._ended:
            return
        if len(self._queued) >= WATCH_BUFFER:
            self.overflowed = True
            self._queued.clear()  # nothing more goes out: the watch ends with the error
            self.end()
            return
        self._queued.append(item)
        self._wake.set()

    def end(self) -> None:
        """The watch ends once what is queued is read."""
        self._ended = True
        self._wake.set()

    async def take(self) -> list[Announced]:
        """Every event queued since the last take (waiting for one), in order; [] once the watch
        ended, ResourceExhausted if it fell too far behind. A batch per wake-up, so a watch that
        keeps up costs a wake-up per burst of events rather than per event."""
        while not self._queued and not self._ended:
            self._wake.clear()
            await self._wake.wait()
        batch = list(self._queued)
        self._queued.clear()
        if not batch and self.overflowed:
            raise ResourceExhausted(f"this watcher fell more than {WATCH_BUFFER} events behind; watch again")
        return batch

    async def events(self) -> AsyncIterator[scheduler_pb2.TaskEvent]:
        while batch := await self.take():
            for item in batch:
                yield item.event

    def wants(self, rec: TaskRecord) -> bool:
        if self.task_ids and rec.id not in self.task_ids:
            return False
        if self.allowed is not None and rec.tenant not in self.allowed:
            return False
        return not self.tenant or rec.tenant == self.tenant

    def keys(self) -> tuple[str, frozenset[str]]:
        """Where the notifier files this watch: ("task", its ids), ("tenant", the tenants it can
        see events of), or ("all", nothing)."""
        if self.task_ids:
            return "task", self.task_ids
        if self.tenant:
            return "tenant", frozenset((self.tenant,))
        if self.allowed is not None:
            return "tenant", self.allowed
        return "all", frozenset()


class Follower(Protocol):
    """A session stream that follows tasks by id."""

    def heard(self, rec: TaskRecord, event: Event) -> None: ...


class Notifier:
    def __init__(self, max_watchers: int = 0) -> None:
        self._watchers: set[Watcher] = set()
        # Watches filed by what they follow, so an event is offered only to those that may want
        # it: by task id, by tenant, and those of every task. A watch of every task still costs
        # each event a put and a write: each principal may hold this many (0 = no cap).
        self._by_task: dict[str, set[Watcher]] = {}
        self._by_tenant: dict[str, set[Watcher]] = {}
        self._everything: set[Watcher] = set()
        self._max_watchers = max_watchers
        self._watching: collections.Counter[str] = collections.Counter()
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        # By task id: a lookup per change, where a watcher costs a test per change.
        self._followers: dict[str, list[Follower]] = {}

    def announce(self, rec: TaskRecord, event: Event) -> None:
        """A task changed (a finished one: durably): tell its watchers, and its waiters if it ended."""
        if self._watchers:
            self._emit(rec, event)
        followers = self._followers.get(rec.id)
        if followers:
            for follower in list(followers):  # a follower unfollows a task it hears finish
                follower.heard(rec, event)
        if rec.terminal:
            for waiter in self._waiters.pop(rec.id, []):
                if not waiter.done():
                    waiter.set_result(None)

    def _emit(self, rec: TaskRecord, event: Event) -> None:
        item: Announced | None = None
        for group in (self._everything, self._by_tenant.get(rec.tenant), self._by_task.get(rec.id)):
            for watcher in group or ():
                if watcher.wants(rec):
                    item = item or Announced(event.proto(rec.id))
                    watcher.offer(item)

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
        kind, keys = watcher.keys()
        if kind == "all":
            self._everything.add(watcher)
        for key in keys:
            (self._by_task if kind == "task" else self._by_tenant).setdefault(key, set()).add(watcher)
        return watcher

    def unwatch(self, watcher: Watcher) -> None:
        if watcher not in self._watchers:
            return
        self._watchers.remove(watcher)
        self._watching[watcher.owner] -= 1
        if not self._watching[watcher.owner]:
            del self._watching[watcher.owner]
        kind, keys = watcher.keys()
        self._everything.discard(watcher)
        index = self._by_task if kind == "task" else self._by_tenant
        for key in keys:
            group = index.get(key)
            if group is not None:
                group.discard(watcher)
                if not group:
                    del index[key]

    def close(self) -> None:
        """The server stops: end every watch."""
        for watcher in self._watchers:
            watcher.end()
